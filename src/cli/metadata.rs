//! `terway metadata` and the metadata half of `terway mapping`: what the instance metadata
//! service says is attached, compared with what the daemon holds and what the kernel shows.

use crate::cloud::metadata::{MetaEni, Metadata};
use crate::netlink::{self, Netlink};
use crate::rpc::MappingRow;
use crate::{Error, Kind, Result};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};

#[derive(Debug, Clone, Serialize)]
pub struct MetaView {
    pub instance_id: String,
    pub instance_type: String,
    pub zone_id: String,
    pub primary_mac: String,
    /// vSwitch id -> ENIs in it.
    pub vswitches: BTreeMap<String, Vec<MetaEniView>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct MetaEniView {
    pub eni_id: String,
    pub mac: String,
    pub primary: bool,
    pub primary_ip: String,
    pub gateway: String,
    pub vswitch_cidr: String,
    pub ips: Vec<String>,
    /// The Linux device with this MAC in this namespace, if any.
    pub device: Option<String>,
}

fn meta_err(endpoint: &str, e: impl std::fmt::Display) -> Error {
    Error::new(Kind::Cloud, format!("metadata at {endpoint}: {e}"))
}

fn eni_view(m: MetaEni, primary_mac: &str, devices: &BTreeMap<String, String>) -> MetaEniView {
    let mac = m.mac.to_ascii_lowercase();
    MetaEniView {
        eni_id: m.eni_id,
        primary: mac == primary_mac,
        device: devices.get(&mac).cloned(),
        mac,
        primary_ip: m.primary_ip.to_string(),
        gateway: m.gateway.to_string(),
        vswitch_cidr: m.vswitch_cidr.to_string(),
        ips: m.private_ipv4s.iter().map(|i| i.to_string()).collect(),
    }
}

/// Reads the whole per-MAC tree of the instance.
pub fn read(endpoint: &str) -> Result<MetaView> {
    let meta = Metadata::new(endpoint);
    let e = |x| meta_err(endpoint, x);
    let primary_mac = meta.primary_mac().map_err(e)?.to_ascii_lowercase();
    let devices: BTreeMap<String, String> = match Netlink::open().and_then(|mut nl| nl.links()) {
        Ok(links) => links
            .into_iter()
            .filter_map(|l| Some((netlink::format_mac(&l.mac?), l.name)))
            .collect(),
        Err(_) => BTreeMap::new(),
    };
    let mut vswitches: BTreeMap<String, Vec<MetaEniView>> = BTreeMap::new();
    for mac in meta.macs().map_err(e)? {
        let eni = meta.eni(&mac).map_err(e)?;
        let vsw = eni.vswitch_id.clone();
        vswitches
            .entry(vsw)
            .or_default()
            .push(eni_view(eni, &primary_mac, &devices));
    }
    Ok(MetaView {
        instance_id: meta.instance_id().map_err(e)?,
        instance_type: meta.instance_type().map_err(e)?,
        zone_id: meta.zone_id().map_err(e)?,
        primary_mac,
        vswitches,
    })
}

pub fn render(v: &MetaView) -> String {
    let mut out = format!(
        "instance {} ({}), zone {}\n",
        v.instance_id, v.instance_type, v.zone_id
    );
    for (vsw, enis) in &v.vswitches {
        let cidr = enis.first().map(|e| e.vswitch_cidr.as_str()).unwrap_or("");
        out.push_str(&format!("vSwitch {vsw} ({cidr})\n"));
        for e in enis {
            let role = if e.primary { " primary ENI" } else { "" };
            let device = match &e.device {
                Some(d) => format!("device {d}"),
                None => "NO LINUX DEVICE".into(),
            };
            out.push_str(&format!(
                "  {} {}{role}, gateway {}, {device}\n",
                e.eni_id, e.mac, e.gateway
            ));
            for ip in &e.ips {
                let tag = if *ip == e.primary_ip {
                    " (primary)"
                } else {
                    ""
                };
                out.push_str(&format!("    {ip}{tag}\n"));
            }
        }
    }
    out
}

/// Adds error rows for every disagreement between the daemon's rows and metadata, on the ENIs
/// the daemon manages (the primary ENI belongs to the node).
pub fn compare(rows: &mut Vec<MappingRow>, view: &MetaView) {
    let daemon: BTreeSet<String> = rows.iter().map(|r| r.res_id.clone()).collect();
    // Res ID is "<mac>.<ip>"; a MAC is 17 characters.
    let mac_of = |res: &str| res.get(..17).map(str::to_string);
    let managed_macs: BTreeSet<String> = rows.iter().filter_map(|r| mac_of(&r.res_id)).collect();
    let mut cloud = BTreeSet::new();
    for e in view.vswitches.values().flatten().filter(|e| !e.primary) {
        for ip in &e.ips {
            cloud.insert(format!("{}.{ip}", e.mac));
        }
    }
    for r in rows.iter_mut() {
        let known_eni = mac_of(&r.res_id).is_some_and(|m| managed_macs.contains(&m));
        if known_eni && !cloud.contains(&r.res_id) && !r.status.starts_with("Error") {
            r.status = "Error: not in metadata".into();
            r.factory_res_id = "-".into();
        }
    }
    for res in cloud.difference(&daemon) {
        rows.push(MappingRow {
            ipv6: None,
            status: "Error: in metadata, unknown to the daemon".into(),
            pod: String::new(),
            res_id: "-".into(),
            factory_res_id: res.clone(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(status: &str, res: &str) -> MappingRow {
        MappingRow {
            status: status.into(),
            pod: String::new(),
            res_id: res.into(),
            factory_res_id: res.into(),
            ipv6: None,
        }
    }

    #[test]
    fn disagreements_become_error_rows() {
        let mac = "00:16:3e:00:00:01";
        let view = MetaView {
            instance_id: "i-1".into(),
            instance_type: "t".into(),
            zone_id: "z".into(),
            primary_mac: "00:16:3e:00:00:00".into(),
            vswitches: BTreeMap::from([(
                "vsw-1".to_string(),
                vec![MetaEniView {
                    eni_id: "eni-1".into(),
                    mac: mac.into(),
                    primary: false,
                    primary_ip: "10.0.0.2".into(),
                    gateway: "10.0.0.253".into(),
                    vswitch_cidr: "10.0.0.0/24".into(),
                    ips: vec!["10.0.0.2".into(), "10.0.0.3".into()],
                    device: Some("eth1".into()),
                }],
            )]),
        };
        let mut rows = vec![
            row("Normal", &format!("{mac}.10.0.0.2")),
            row("Idle", &format!("{mac}.10.0.0.9")),
        ];
        compare(&mut rows, &view);
        assert_eq!(rows[0].status, "Normal");
        assert_eq!(rows[1].status, "Error: not in metadata");
        assert_eq!(rows[2].factory_res_id, format!("{mac}.10.0.0.3"));
        assert!(rows[2].status.starts_with("Error"));
    }
}
