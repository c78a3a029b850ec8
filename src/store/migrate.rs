//! Schema 1 → 2, on the JSON before it is typed: the network moves into the attachment key (in
//! the allocations and in the shared-ENI pool's owners), the bare `ipv4` becomes a pod address
//! (`ip/32` behind a veth, no gateway of its own) and each allocation records its datapath
//! (veth in VPC mode, veth + policy routing in shared ENI mode; the ENI's route table is filled in
//! by the daemon when it starts).

use serde_json::{Map, Value, json};
use std::collections::HashMap;

pub fn from_schema1(mut v: Value) -> Result<Value, String> {
    let top = v
        .as_object_mut()
        .ok_or("schema-1 state is not a JSON object")?;
    let shared_eni = top.get("eni").is_some_and(|e| !e.is_null());
    let pool_enis = top
        .get("eni")
        .and_then(|e| e.pointer("/pool/enis"))
        .and_then(Value::as_array);
    // Which ENI holds each address (shared ENI mode).
    let mut eni_of_ip: HashMap<String, String> = HashMap::new();
    if let Some(enis) = pool_enis {
        for eni in enis {
            let id = eni.get("id").and_then(Value::as_str).unwrap_or_default();
            for ip in eni
                .get("ips")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                if let Some(addr) = ip.get("ip").and_then(Value::as_str) {
                    eni_of_ip.insert(addr.to_string(), id.to_string());
                }
            }
        }
    }
    let mut network_of: HashMap<(String, String), String> = HashMap::new();
    let allocations = top
        .get_mut("allocations")
        .and_then(Value::as_array_mut)
        .map(std::mem::take)
        .unwrap_or_default();
    let mut migrated = Vec::with_capacity(allocations.len());
    for a in allocations {
        let Value::Object(mut a) = a else {
            return Err("an allocation is not a JSON object".into());
        };
        let network = a
            .remove("network")
            .and_then(|n| n.as_str().map(String::from))
            .ok_or("an allocation has no network")?;
        let ipv4 = a
            .remove("ipv4")
            .and_then(|n| n.as_str().map(String::from))
            .ok_or("an allocation has no ipv4")?;
        let key = a
            .get_mut("key")
            .and_then(Value::as_object_mut)
            .ok_or("an allocation has no key")?;
        let id = |k: &Map<String, Value>, f: &str| {
            k.get(f)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        network_of.insert(
            (id(key, "container_id"), id(key, "ifname")),
            network.clone(),
        );
        key.insert("network".into(), json!(network));
        let datapath = if shared_eni {
            json!({
                "kind": "veth_policy",
                "table": 0,
                "eni_id": eni_of_ip.get(&ipv4).cloned().unwrap_or_default(),
            })
        } else {
            json!({"kind": "veth"})
        };
        a.insert(
            "address".into(),
            json!({"ipv4": {"addr": format!("{ipv4}/32"), "gateway": null}}),
        );
        a.insert("datapath".into(), datapath);
        migrated.push(Value::Object(a));
    }
    top.insert("allocations".into(), Value::Array(migrated));
    // Pool owners: the same keys, with the network of their allocation (an owner without one is
    // released by the daemon at start; its network does not matter).
    if let Some(enis) = top
        .get_mut("eni")
        .and_then(|e| e.pointer_mut("/pool/enis"))
        .and_then(Value::as_array_mut)
    {
        for ip in enis
            .iter_mut()
            .filter_map(|e| e.get_mut("ips").and_then(Value::as_array_mut))
            .flatten()
        {
            if let Some(owner) = ip.get_mut("owner").and_then(Value::as_object_mut) {
                let k = (
                    owner
                        .get("container_id")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_string(),
                    owner
                        .get("ifname")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_string(),
                );
                let network = network_of.get(&k).cloned().unwrap_or_default();
                owner.insert("network".into(), json!(network));
            }
        }
    }
    top.insert("schema".into(), json!(2));
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{AttachKey, Datapath, PodAddress};
    use crate::store::State;

    const VPC: &str = include_str!("../../tests/fixtures/state-schema1-vpc.json");
    const SHARED_ENI: &str = include_str!("../../tests/fixtures/state-schema1-shared-eni.json");

    fn migrate(text: &str) -> State {
        let v: Value = serde_json::from_str(text).unwrap();
        serde_json::from_value(from_schema1(v).unwrap()).unwrap()
    }

    #[test]
    fn a_vpc_mode_file_written_by_schema_1_keeps_every_allocation() {
        let s = migrate(VPC);
        assert_eq!(s.schema, 2);
        assert_eq!(s.allocations.len(), 3);
        let a = &s.allocations[0];
        assert_eq!(a.key, AttachKey::new("terway", "web-1", "eth0"));
        assert_eq!(
            a.address,
            PodAddress::v4("10.244.1.2".parse().unwrap(), 32, None)
        );
        assert_eq!(a.datapath, Datapath::Veth);
        assert_eq!(a.pod.name, "web-1");
        assert_eq!(s.vpc.unwrap().cursor, Some("10.244.1.4".parse().unwrap()));
    }

    #[test]
    fn a_shared_eni_file_written_by_schema_1_keeps_allocations_and_pool_owners() {
        let v = from_schema1(serde_json::from_str(SHARED_ENI).unwrap()).unwrap();
        let s: State = serde_json::from_value(v.clone()).unwrap();
        assert_eq!(s.allocations.len(), 3);
        assert!(s.eni.is_some());
        let enis = v.pointer("/eni/pool/enis").unwrap().as_array().unwrap();
        let ips = || {
            enis.iter()
                .flat_map(|e| e["ips"].as_array().unwrap().iter().map(move |i| (e, i)))
        };
        for a in &s.allocations {
            assert_eq!(a.key.network, "terway");
            let ip = a.address.ipv4_addr().unwrap().to_string();
            let Datapath::VethPolicy { eni_id, .. } = &a.datapath else {
                panic!("{:?}", a.datapath)
            };
            let (eni, held) = ips().find(|(_, i)| i["ip"] == ip.as_str()).unwrap();
            assert_eq!(eni["id"], eni_id.as_str());
            let owner: AttachKey = serde_json::from_value(held["owner"].clone()).unwrap();
            assert_eq!(owner, a.key, "pool owner and allocation agree");
        }
        assert!(
            ips().any(|(_, i)| i.get("owner").is_none()),
            "idle addresses stay idle"
        );
    }

    #[test]
    fn broken_schema_1_files_are_refused_not_guessed() {
        for bad in [
            json!([]),
            json!({"schema": 1, "allocations": [1]}),
            json!({"schema": 1, "allocations": [{"key": {}, "ipv4": "10.0.0.1"}]}),
            json!({"schema": 1, "allocations": [{"network": "n", "ipv4": "10.0.0.1"}]}),
        ] {
            assert!(from_schema1(bad.clone()).is_err(), "{bad}");
        }
    }
}
