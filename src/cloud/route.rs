//! Typed VPC (2016-04-28) route-table actions, for VPC mode: the route entry that sends a node's
//! pod CIDR to its instance. `CreateRouteEntry`, `DeleteRouteEntry`, `DescribeRouteEntryList`
//! and `DescribeRouteTableList`, on top of the VPC client of [`Ecs`].

use crate::cloud::ecs::Ecs;
use crate::cloud::error::CloudError;
use crate::cloud::parse::{at, items, text};
use serde_json::Value;

/// `DescribeRouteEntryList` takes 20..=100 entries per page (`MaxResult`).
const ENTRIES_PER_PAGE: u32 = 100;
/// `DescribeRouteTableList` takes at most 50 per page.
const TABLES_PER_PAGE: u64 = 50;
/// Guards against a NextToken that never ends (a table holds at most a few hundred entries).
const MAX_PAGES: usize = 1000;

/// One entry of a route table, as `DescribeRouteEntryList` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteEntryInfo {
    pub id: String,
    pub route_table_id: String,
    /// As the cloud spells it (IPv4 or IPv6 CIDR).
    pub destination: String,
    /// `System`, `Custom` or `BGP`.
    pub kind: String,
    /// `Creating`, `Available`, `Deleting` (creating and deleting are asynchronous).
    pub status: String,
    /// (`NextHopType`, `NextHopId`): one, or several for ECMP; `local` for system routes.
    pub next_hops: Vec<(String, String)>,
}

/// One route table of a VPC, as `DescribeRouteTableList` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteTableInfo {
    pub id: String,
    /// `System` or `Custom`.
    pub kind: String,
    pub vswitch_ids: Vec<String>,
}

/// Filters of `DescribeRouteEntryList`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteEntryFilter {
    pub destination: Option<String>,
    /// `System`, `Custom` or `BGP`.
    pub kind: Option<String>,
    pub next_hop_id: Option<String>,
}

/// `RouteEntrys.RouteEntry[]` (the API's spelling) and `NextToken`.
pub fn route_entries(v: &Value) -> (Vec<RouteEntryInfo>, Option<String>) {
    let list = items(v, &["RouteEntrys", "RouteEntry"])
        .into_iter()
        .map(|e| {
            let mut next_hops: Vec<(String, String)> = items(e, &["NextHops", "NextHop"])
                .into_iter()
                .map(|h| (text(h, "NextHopType"), text(h, "NextHopId")))
                .collect();
            // Older answers carry a single next hop at the top level.
            if next_hops.is_empty() && !text(e, "NextHopType").is_empty() {
                next_hops.push((text(e, "NextHopType"), text(e, "InstanceId")));
            }
            RouteEntryInfo {
                id: text(e, "RouteEntryId"),
                route_table_id: text(e, "RouteTableId"),
                destination: text(e, "DestinationCidrBlock"),
                kind: text(e, "Type"),
                status: text(e, "Status"),
                next_hops,
            }
        })
        .collect();
    let next = Some(text(v, "NextToken")).filter(|t| !t.is_empty());
    (list, next)
}

/// `RouterTableList.RouterTableListType[]` (the API's spelling) and `TotalCount`.
pub fn route_tables(v: &Value) -> (Vec<RouteTableInfo>, u64) {
    let list = items(v, &["RouterTableList", "RouterTableListType"])
        .into_iter()
        .map(|t| RouteTableInfo {
            id: text(t, "RouteTableId"),
            kind: text(t, "RouteTableType"),
            vswitch_ids: items(t, &["VSwitchIds", "VSwitchId"])
                .into_iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect(),
        })
        .collect();
    let total = at(v, &["TotalCount"])
        .and_then(|t| t.as_u64().or_else(|| t.as_str()?.parse().ok()))
        .unwrap_or(0);
    (list, total)
}

impl Ecs {
    /// Adds `destination → instance` (NextHopType `Instance`) to `route_table_id`; returns the
    /// entry id. Asynchronous in the cloud (the entry is `Creating` for a while). The caller
    /// makes `client_token` once and reuses it when it retries the call itself.
    pub fn create_route_entry(
        &self,
        route_table_id: &str,
        destination: &str,
        instance_id: &str,
        name: &str,
        client_token: &str,
    ) -> Result<String, CloudError> {
        const A: &str = "CreateRouteEntry";
        let mut p: Vec<(&str, String)> = vec![
            ("RouteTableId", route_table_id.to_string()),
            ("DestinationCidrBlock", destination.to_string()),
            ("NextHopType", "Instance".to_string()),
            ("NextHopId", instance_id.to_string()),
        ];
        if !name.is_empty() {
            p.push(("RouteEntryName", name.to_string()));
        }
        if !client_token.is_empty() {
            p.push(("ClientToken", client_token.to_string()));
        }
        let v = self.vpc_api().call(A, &p)?;
        let id = text(&v, "RouteEntryId");
        if id.is_empty() {
            return Err(CloudError::decode(A, "no RouteEntryId in the answer"));
        }
        Ok(id)
    }

    /// Removes the entry for `destination` whose next hop is `instance_id` (only that one: an
    /// entry for the same CIDR pointing elsewhere is not ours to remove). An entry that is gone
    /// already answers `InvalidRouteEntry.NotFound`.
    pub fn delete_route_entry(
        &self,
        route_table_id: &str,
        destination: &str,
        instance_id: &str,
    ) -> Result<(), CloudError> {
        let p: Vec<(&str, String)> = vec![
            ("RouteTableId", route_table_id.to_string()),
            ("DestinationCidrBlock", destination.to_string()),
            ("NextHopId", instance_id.to_string()),
        ];
        self.vpc_api().call("DeleteRouteEntry", &p).map(drop)
    }

    /// The entries of a route table matching `filter`, every page.
    pub fn describe_route_entries(
        &self,
        route_table_id: &str,
        filter: &RouteEntryFilter,
    ) -> Result<Vec<RouteEntryInfo>, CloudError> {
        const A: &str = "DescribeRouteEntryList";
        let mut base: Vec<(&str, String)> = vec![
            ("RouteTableId", route_table_id.to_string()),
            ("MaxResult", ENTRIES_PER_PAGE.to_string()),
        ];
        if let Some(d) = &filter.destination {
            base.push(("DestinationCidrBlock", d.clone()));
        }
        if let Some(k) = &filter.kind {
            base.push(("RouteEntryType", k.clone()));
        }
        if let Some(h) = &filter.next_hop_id {
            base.push(("NextHopId", h.clone()));
        }
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        for _ in 0..MAX_PAGES {
            let mut p = base.clone();
            if let Some(t) = &token {
                p.push(("NextToken", t.clone()));
            }
            let v = self.vpc_api().call(A, &p)?;
            let (list, next) = route_entries(&v);
            out.extend(list);
            if next.is_none() || next == token {
                return Ok(out);
            }
            token = next;
        }
        Err(CloudError::decode(
            A,
            format!("more than {MAX_PAGES} pages"),
        ))
    }

    /// The route tables of a VPC (vRouter tables), every page.
    pub fn describe_route_tables(&self, vpc_id: &str) -> Result<Vec<RouteTableInfo>, CloudError> {
        const A: &str = "DescribeRouteTableList";
        let mut out = Vec::new();
        for page in 1..=MAX_PAGES as u64 {
            let p: Vec<(&str, String)> = vec![
                ("VpcId", vpc_id.to_string()),
                ("PageSize", TABLES_PER_PAGE.to_string()),
                ("PageNumber", page.to_string()),
            ];
            let v = self.vpc_api().call(A, &p)?;
            let (list, total) = route_tables(&v);
            let empty = list.is_empty();
            out.extend(list);
            if empty || page * TABLES_PER_PAGE >= total {
                return Ok(out);
            }
        }
        Err(CloudError::decode(
            A,
            format!("more than {MAX_PAGES} pages"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn route_entries_parse_with_both_next_hop_shapes() {
        let v = json!({"NextToken": "t2", "RouteEntrys": {"RouteEntry": [
            {"RouteEntryId": "rte-1", "RouteTableId": "vtb-1", "DestinationCidrBlock": "10.244.1.0/24",
             "Type": "Custom", "Status": "Available",
             "NextHops": {"NextHop": [{"NextHopType": "Instance", "NextHopId": "i-a", "Enabled": 1}]}},
            {"RouteEntryId": "rte-2", "DestinationCidrBlock": "10.244.2.0/24", "Type": "Custom",
             "Status": "Creating", "NextHopType": "Instance", "InstanceId": "i-b"},
            {"RouteEntryId": "rte-s", "DestinationCidrBlock": "172.16.0.0/24", "Type": "System",
             "NextHops": {"NextHop": {"NextHopType": "local", "NextHopId": ""}}}
        ]}});
        let (list, next) = route_entries(&v);
        assert_eq!(next.as_deref(), Some("t2"));
        assert_eq!(list.len(), 3);
        assert_eq!(list[0].next_hops, [("Instance".into(), "i-a".into())]);
        assert_eq!(list[0].route_table_id, "vtb-1");
        assert_eq!(list[1].next_hops, [("Instance".into(), "i-b".into())]);
        assert_eq!(list[1].status, "Creating");
        assert_eq!(list[2].next_hops, [("local".into(), String::new())]);
        let (none, next) = route_entries(&json!({"NextToken": "", "RouteEntrys": {}}));
        assert!(none.is_empty() && next.is_none());
    }

    #[test]
    fn route_tables_parse() {
        let v = json!({"TotalCount": "2", "RouterTableList": {"RouterTableListType": [
            {"RouteTableId": "vtb-1", "RouteTableType": "System",
             "VSwitchIds": {"VSwitchId": ["vsw-a", "vsw-b"]}},
            {"RouteTableId": "vtb-2", "RouteTableType": "Custom", "VSwitchIds": {"VSwitchId": []}}
        ]}});
        let (list, total) = route_tables(&v);
        assert_eq!(total, 2);
        assert_eq!(list[0].vswitch_ids, ["vsw-a", "vsw-b"]);
        assert_eq!(list[1].kind, "Custom");
    }
}
