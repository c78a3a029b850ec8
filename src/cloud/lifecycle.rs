//! Cloud calls of a node's lifecycle (`terway node cleanup`, `terway eni list|delete`): the tags
//! that mark what terway created, instances (do they still exist), the VPC's route tables and
//! their entries. Free functions over [`Ecs`]'s two API clients, kept apart from the daemon's
//! typed actions in `ecs.rs`.

use crate::cloud::codes;
use crate::cloud::ecs::{Ecs, EniFilter};
use crate::cloud::error::{CloudError, TIMEOUT};
use crate::cloud::parse::{items, text};
use serde_json::Value;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

/// Tag on every ENI terway creates.
pub const TAG_CREATOR: (&str, &str) = ("creator", "terway");
/// Tag naming the instance an ENI was created for.
pub const TAG_NODE: &str = "terway.node";

/// `DescribeInstances` takes at most 100 ids per call.
const MAX_INSTANCE_IDS: usize = 100;
/// Guards against paging that never ends.
const MAX_PAGES: usize = 1000;

/// An instance as `DescribeInstances` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceInfo {
    pub id: String,
    pub status: String,
    pub instance_type: String,
    pub zone_id: String,
    pub vpc_id: String,
    pub vswitch_id: String,
}

/// A route entry as `DescribeRouteEntryList` shows it (one per next hop: ECMP entries list
/// several).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteEntryInfo {
    pub id: String,
    pub route_table_id: String,
    pub destination: String,
    /// `System`, `Custom`, `BGP`.
    pub kind: String,
    /// (NextHopType, NextHopId) pairs.
    pub next_hops: Vec<(String, String)>,
}

impl RouteEntryInfo {
    /// Whether the entry sends its destination to `instance_id`.
    pub fn points_at(&self, instance_id: &str) -> bool {
        self.next_hops
            .iter()
            .any(|(t, id)| t == "Instance" && id == instance_id)
    }
}

/// The tags marking an ENI created by terway for `instance_id` (every one must match).
pub fn node_tags(instance_id: &str) -> Vec<(String, String)> {
    vec![
        (TAG_CREATOR.0.to_string(), TAG_CREATOR.1.to_string()),
        (TAG_NODE.to_string(), instance_id.to_string()),
    ]
}

/// The value of tag `key`, if the list has it.
pub fn tag<'a>(tags: &'a [(String, String)], key: &str) -> Option<&'a str> {
    tags.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

/// Whether the tags say terway created the resource.
pub fn created_by_terway(tags: &[(String, String)]) -> bool {
    tag(tags, TAG_CREATOR.0) == Some(TAG_CREATOR.1)
}

/// The instances among `ids` that exist (any state); ids the cloud does not know are left out.
pub fn describe_instances(ecs: &Ecs, ids: &[String]) -> Result<Vec<InstanceInfo>, CloudError> {
    const A: &str = "DescribeInstances";
    let mut out = Vec::new();
    for chunk in ids.chunks(MAX_INSTANCE_IDS) {
        let list = serde_json::to_string(chunk)
            .map_err(|e| CloudError::decode(A, format!("encode InstanceIds: {e}")))?;
        for page in 1..=MAX_PAGES {
            let p = [
                ("InstanceIds", list.clone()),
                ("PageSize", MAX_INSTANCE_IDS.to_string()),
                ("PageNumber", page.to_string()),
            ];
            let v = ecs.ecs_api().call(A, &p)?;
            let got = instances(&v);
            let done = got.is_empty() || (page * MAX_INSTANCE_IDS) as u64 >= total(&v);
            out.extend(got);
            if done {
                break;
            }
        }
    }
    Ok(out)
}

fn total(v: &Value) -> u64 {
    match v.get("TotalCount") {
        Some(Value::Number(n)) => n.as_u64().unwrap_or(0),
        Some(Value::String(s)) => s.trim().parse().unwrap_or(0),
        _ => 0,
    }
}

/// `Instances.Instance[]`.
pub fn instances(v: &Value) -> Vec<InstanceInfo> {
    items(v, &["Instances", "Instance"])
        .into_iter()
        .map(|i| {
            let vpc = i.get("VpcAttributes").cloned().unwrap_or(Value::Null);
            InstanceInfo {
                id: text(i, "InstanceId"),
                status: text(i, "Status"),
                instance_type: text(i, "InstanceType"),
                zone_id: text(i, "ZoneId"),
                vpc_id: text(&vpc, "VpcId"),
                vswitch_id: text(&vpc, "VSwitchId"),
            }
        })
        .filter(|i| !i.id.is_empty())
        .collect()
}

/// The route tables of the region's vSwitches (of `vpc_id` when given), each once.
pub fn route_table_ids(ecs: &Ecs, vpc_id: Option<&str>) -> Result<Vec<String>, CloudError> {
    const A: &str = "DescribeVSwitches";
    let mut out = BTreeSet::new();
    for page in 1..=MAX_PAGES {
        let mut p = vec![
            ("PageSize", "50".to_string()),
            ("PageNumber", page.to_string()),
        ];
        if let Some(vpc) = vpc_id {
            p.push(("VpcId", vpc.to_string()));
        }
        let v = ecs.vpc_api().call(A, &p)?;
        let list = items(&v, &["VSwitches", "VSwitch"]);
        for s in &list {
            let t = s
                .get("RouteTable")
                .map(|r| text(r, "RouteTableId"))
                .unwrap_or_default();
            if !t.is_empty() {
                out.insert(t);
            }
        }
        if list.is_empty() || (page * 50) as u64 >= total(&v) {
            break;
        }
    }
    Ok(out.into_iter().collect())
}

/// The custom route entries of a route table, every page.
pub fn describe_route_entries(
    ecs: &Ecs,
    route_table_id: &str,
) -> Result<Vec<RouteEntryInfo>, CloudError> {
    const A: &str = "DescribeRouteEntryList";
    let mut out = Vec::new();
    let mut token: Option<String> = None;
    for _ in 0..MAX_PAGES {
        let mut p = vec![
            ("RouteTableId", route_table_id.to_string()),
            ("RouteEntryType", "Custom".to_string()),
            // This action pages with the singular `MaxResult` (20..=100).
            ("MaxResult", "100".to_string()),
        ];
        if let Some(t) = &token {
            p.push(("NextToken", t.clone()));
        }
        let v = ecs.vpc_api().call(A, &p)?;
        out.extend(route_entries(route_table_id, &v));
        let next = text(&v, "NextToken");
        if next.is_empty() || token.as_deref() == Some(next.as_str()) {
            return Ok(out);
        }
        token = Some(next);
    }
    Err(CloudError::decode(
        A,
        format!("more than {MAX_PAGES} pages"),
    ))
}

/// `RouteEntrys.RouteEntry[]` (sic); next hops from `NextHops.NextHop[]`, or the older flat
/// `NextHopType`/`InstanceId` fields.
pub fn route_entries(route_table_id: &str, v: &Value) -> Vec<RouteEntryInfo> {
    items(v, &["RouteEntrys", "RouteEntry"])
        .into_iter()
        .map(|r| {
            let mut next_hops: Vec<(String, String)> = items(r, &["NextHops", "NextHop"])
                .into_iter()
                .map(|h| (text(h, "NextHopType"), text(h, "NextHopId")))
                .collect();
            if next_hops.is_empty() {
                let id = match text(r, "NextHopId") {
                    s if s.is_empty() => text(r, "InstanceId"),
                    s => s,
                };
                next_hops.push((text(r, "NextHopType"), id));
            }
            let table = text(r, "RouteTableId");
            RouteEntryInfo {
                id: text(r, "RouteEntryId"),
                route_table_id: if table.is_empty() {
                    route_table_id.to_string()
                } else {
                    table
                },
                destination: text(r, "DestinationCidrBlock"),
                kind: text(r, "Type"),
                next_hops,
            }
        })
        .collect()
}

/// Deletes one route entry (asynchronous in the cloud: it may show `Deleting` for a while).
pub fn delete_route_entry(ecs: &Ecs, entry: &RouteEntryInfo) -> Result<(), CloudError> {
    let mut p = vec![("RouteTableId", entry.route_table_id.clone())];
    if entry.id.is_empty() {
        p.push(("DestinationCidrBlock", entry.destination.clone()));
    } else {
        p.push(("RouteEntryId", entry.id.clone()));
    }
    ecs.vpc_api().call("DeleteRouteEntry", &p).map(drop)
}

/// Polls until the ENI no longer exists (DeleteNetworkInterface is asynchronous in the cloud:
/// the ENI shows `Deleting` for a while). Timeout → CloudError code "Timeout".
pub fn wait_eni_gone(ecs: &Ecs, eni_id: &str, timeout: Duration) -> Result<(), CloudError> {
    let start = Instant::now();
    let mut delay = Duration::from_millis(200);
    let filter = EniFilter {
        eni_ids: vec![eni_id.to_string()],
        ..EniFilter::default()
    };
    loop {
        let found = match ecs.describe_enis(&filter) {
            Ok(list) => list.into_iter().find(|e| e.id == eni_id),
            Err(e) if e.code == codes::ENI_NOT_FOUND => None,
            Err(e) => return Err(e),
        };
        let Some(eni) = found else {
            return Ok(());
        };
        let elapsed = start.elapsed();
        if elapsed >= timeout {
            return Err(CloudError::new(
                "DescribeNetworkInterfaces",
                TIMEOUT,
                format!(
                    "ENI {eni_id} is still {} after {:.1}s, want it gone",
                    eni.status,
                    elapsed.as_secs_f64()
                ),
            ));
        }
        std::thread::sleep(delay.min(timeout - elapsed));
        delay = (delay * 3 / 2).min(Duration::from_secs(2));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn instances_shape() {
        let v = json!({"TotalCount": 1, "Instances": {"Instance": [{
            "InstanceId": "i-1", "Status": "Running", "InstanceType": "ecs.g7.large",
            "ZoneId": "z", "VpcAttributes": {"VpcId": "vpc-1", "VSwitchId": "vsw-1"}}, {}]}});
        assert_eq!(
            instances(&v),
            vec![InstanceInfo {
                id: "i-1".into(),
                status: "Running".into(),
                instance_type: "ecs.g7.large".into(),
                zone_id: "z".into(),
                vpc_id: "vpc-1".into(),
                vswitch_id: "vsw-1".into(),
            }]
        );
        assert!(instances(&json!({"Instances": {"Instance": []}})).is_empty());
        assert_eq!(total(&json!({"TotalCount": "3"})), 3);
    }

    #[test]
    fn route_entries_shapes() {
        let v = json!({"NextToken": "", "RouteEntrys": {"RouteEntry": [{
            "RouteEntryId": "rte-1", "RouteTableId": "vtb-1", "DestinationCidrBlock": "10.244.1.0/24",
            "Type": "Custom", "NextHops": {"NextHop": [{"NextHopType": "Instance", "NextHopId": "i-1"}]}
        }, {
            "RouteEntryId": "rte-2", "DestinationCidrBlock": "10.244.2.0/24", "Type": "Custom",
            "NextHopType": "Instance", "InstanceId": "i-2"
        }]}});
        let r = route_entries("vtb-x", &v);
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].route_table_id, "vtb-1");
        assert!(r[0].points_at("i-1") && !r[0].points_at("i-2"));
        assert_eq!(r[1].route_table_id, "vtb-x");
        assert!(r[1].points_at("i-2"));
    }

    #[test]
    fn tags() {
        let t = node_tags("i-1");
        assert!(created_by_terway(&t));
        assert_eq!(tag(&t, TAG_NODE), Some("i-1"));
        assert!(!created_by_terway(&[("creator".into(), "someone".into())]));
    }
}
