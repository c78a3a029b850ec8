//! Typed views of the ECS/VPC answers, parsed from the real field names and nesting. Lenient
//! where the cloud is inconsistent (numbers sometimes strings, absent empty lists), strict where
//! a wrong value would hurt (addresses, CIDRs): those fail with a `Decode` error, never a panic.

use crate::cloud::error::CloudError;
use serde_json::Value;
use std::net::{Ipv4Addr, Ipv6Addr};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EniInfo {
    pub id: String,
    pub status: String,
    /// `Primary`, `Secondary`, `Trunk`, `Member`.
    pub eni_type: String,
    pub mac: String,
    pub vswitch_id: String,
    pub zone_id: String,
    pub primary_ip: Ipv4Addr,
    /// Private IPv4 addresses other than the primary.
    pub secondary_ips: Vec<Ipv4Addr>,
    /// IPv6 addresses (`Ipv6Sets.Ipv6Set[].Ipv6Address`); empty when the ENI has none.
    pub ipv6: Vec<Ipv6Addr>,
    pub instance_id: Option<String>,
    pub tags: Vec<(String, String)>,
    /// `CreationTime` as Unix seconds, when the answer has one.
    pub creation_time: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceTypeLimits {
    pub id: String,
    pub eni_quantity: u32,
    pub eni_private_ip_quantity: u32,
    pub eni_ipv6_quantity: u32,
    pub eni_total_quantity: u32,
    pub trunk_supported: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VSwitchInfo {
    pub id: String,
    pub zone_id: String,
    pub cidr: ipnetwork::Ipv4Network,
    /// `Ipv6CidrBlock` (a /64 on Alibaba Cloud); `None` when IPv6 is not enabled on the vSwitch.
    pub ipv6_cidr: Option<ipnetwork::Ipv6Network>,
    pub available_ips: u64,
    pub vpc_id: String,
    /// `RouteTable.RouteTableId`: the route table the vSwitch uses (empty when not reported).
    pub route_table_id: String,
}

/// `v.a.b.c` by names.
pub fn at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(v, |v, k| v.get(k))
}

/// A string field; numbers are accepted and rendered.
pub fn text(v: &Value, key: &str) -> String {
    match v.get(key) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        Some(Value::Bool(b)) => b.to_string(),
        _ => String::new(),
    }
}

fn num(v: &Value, key: &str) -> u64 {
    match v.get(key) {
        Some(Value::Number(n)) => n.as_u64().unwrap_or(0),
        Some(Value::String(s)) => s.trim().parse().unwrap_or(0),
        _ => 0,
    }
}

fn num32(v: &Value, key: &str) -> u32 {
    u32::try_from(num(v, key)).unwrap_or(u32::MAX)
}

fn flag(v: &Value, key: &str) -> bool {
    match v.get(key) {
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) => s.eq_ignore_ascii_case("true"),
        Some(Value::Number(n)) => n.as_u64().is_some_and(|x| x != 0),
        _ => false,
    }
}

/// The array at `path` (e.g. `["PrivateIpSets", "PrivateIpSet"]`); absent or null is empty.
/// The XML-to-JSON heritage sometimes yields a single object instead of a one-element array.
pub fn items<'a>(v: &'a Value, path: &[&str]) -> Vec<&'a Value> {
    match at(v, path) {
        Some(Value::Array(a)) => a.iter().collect(),
        Some(Value::Null) | None => Vec::new(),
        Some(other) => vec![other],
    }
}

fn ipv4(action: &str, what: &str, s: &str) -> Result<Ipv4Addr, CloudError> {
    s.trim()
        .parse()
        .map_err(|_| CloudError::decode(action, format!("{what}: not an IPv4 address: {s:?}")))
}

fn ipv6(action: &str, what: &str, s: &str) -> Result<Ipv6Addr, CloudError> {
    s.trim()
        .parse()
        .map_err(|_| CloudError::decode(action, format!("{what}: not an IPv6 address: {s:?}")))
}

/// One ENI from `CreateNetworkInterface` or `NetworkInterfaceSets.NetworkInterfaceSet[]`.
pub fn eni(action: &str, v: &Value) -> Result<EniInfo, CloudError> {
    let id = text(v, "NetworkInterfaceId");
    if id.is_empty() {
        return Err(CloudError::decode(
            action,
            "an ENI without NetworkInterfaceId",
        ));
    }
    let primary_text = text(v, "PrivateIpAddress");
    let mut primary = None;
    let mut secondary_ips = Vec::new();
    for s in items(v, &["PrivateIpSets", "PrivateIpSet"]) {
        let ip = ipv4(
            action,
            &format!("{id} PrivateIpSet"),
            &text(s, "PrivateIpAddress"),
        )?;
        if flag(s, "Primary") {
            primary = Some(ip);
        } else {
            secondary_ips.push(ip);
        }
    }
    let primary_ip = match primary {
        Some(p) => p,
        None => ipv4(action, &format!("{id} PrivateIpAddress"), &primary_text)?,
    };
    secondary_ips.retain(|ip| *ip != primary_ip);
    let ipv6 = items(v, &["Ipv6Sets", "Ipv6Set"])
        .into_iter()
        .map(|s| ipv6(action, &format!("{id} Ipv6Set"), &text(s, "Ipv6Address")))
        .collect::<Result<Vec<_>, _>>()?;
    let tags = items(v, &["Tags", "Tag"])
        .into_iter()
        .map(|t| {
            let k = text(t, "TagKey");
            if k.is_empty() {
                (text(t, "Key"), text(t, "Value"))
            } else {
                (k, text(t, "TagValue"))
            }
        })
        .collect();
    let instance = text(v, "InstanceId");
    let instance = if instance.is_empty() {
        at(v, &["Attachment", "InstanceId"])
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    } else {
        instance
    };
    Ok(EniInfo {
        id,
        status: text(v, "Status"),
        eni_type: text(v, "Type"),
        mac: text(v, "MacAddress").to_ascii_lowercase(),
        vswitch_id: text(v, "VSwitchId"),
        zone_id: text(v, "ZoneId"),
        primary_ip,
        secondary_ips,
        ipv6,
        instance_id: (!instance.is_empty()).then_some(instance),
        tags,
        creation_time: timestamp(&text(v, "CreationTime")),
    })
}

/// `YYYY-MM-DDThh:mm:ssZ`, or `YYYY-MM-DDThh:mmZ` as some ECS answers write it (UTC).
pub fn timestamp(s: &str) -> Option<u64> {
    let s = s.trim();
    match s.len() {
        17 => crate::cloud::sign::parse_timestamp(&format!("{}:00Z", &s.get(..16)?)),
        _ => crate::cloud::sign::parse_timestamp(s),
    }
}

/// A `DescribeNetworkInterfaces` page: the ENIs and the `NextToken` (`None` on the last page).
pub fn eni_page(action: &str, v: &Value) -> Result<(Vec<EniInfo>, Option<String>), CloudError> {
    let list = items(v, &["NetworkInterfaceSets", "NetworkInterfaceSet"])
        .into_iter()
        .map(|e| eni(action, e))
        .collect::<Result<Vec<_>, _>>()?;
    let next = text(v, "NextToken");
    Ok((list, (!next.is_empty()).then_some(next)))
}

/// `AssignedPrivateIpAddressesSet.PrivateIpSet.PrivateIpAddress[]`.
pub fn assigned_ips(action: &str, v: &Value) -> Result<Vec<Ipv4Addr>, CloudError> {
    let path = [
        "AssignedPrivateIpAddressesSet",
        "PrivateIpSet",
        "PrivateIpAddress",
    ];
    if at(v, &path).is_none() {
        return Err(CloudError::decode(
            action,
            "no AssignedPrivateIpAddressesSet.PrivateIpSet.PrivateIpAddress in the answer",
        ));
    }
    items(v, &path)
        .into_iter()
        .map(|s| ipv4(action, "PrivateIpAddress", s.as_str().unwrap_or_default()))
        .collect()
}

/// `Ipv6Sets.Ipv6Address[]` of an `AssignIpv6Addresses` answer.
pub fn assigned_ipv6(action: &str, v: &Value) -> Result<Vec<Ipv6Addr>, CloudError> {
    let path = ["Ipv6Sets", "Ipv6Address"];
    if at(v, &path).is_none() {
        return Err(CloudError::decode(
            action,
            "no Ipv6Sets.Ipv6Address in the answer",
        ));
    }
    items(v, &path)
        .into_iter()
        .map(|s| ipv6(action, "Ipv6Address", s.as_str().unwrap_or_default()))
        .collect()
}

/// `InstanceTypes.InstanceType[]` and the `NextToken`.
pub fn instance_types(v: &Value) -> (Vec<InstanceTypeLimits>, Option<String>) {
    let list = items(v, &["InstanceTypes", "InstanceType"])
        .into_iter()
        .map(|t| InstanceTypeLimits {
            id: text(t, "InstanceTypeId"),
            eni_quantity: num32(t, "EniQuantity"),
            eni_private_ip_quantity: num32(t, "EniPrivateIpAddressQuantity"),
            eni_ipv6_quantity: num32(t, "EniIpv6AddressQuantity"),
            eni_total_quantity: num32(t, "EniTotalQuantity"),
            trunk_supported: flag(t, "EniTrunkSupported"),
        })
        .collect();
    let next = text(v, "NextToken");
    (list, (!next.is_empty()).then_some(next))
}

/// `VSwitches.VSwitch[]` and `TotalCount`.
pub fn vswitches(action: &str, v: &Value) -> Result<(Vec<VSwitchInfo>, u64), CloudError> {
    vswitches_where(action, v, |_| true).map(|(list, total, _)| (list, total))
}

/// The `VSwitches.VSwitch[]` whose id is `wanted` (the others are not decoded, so one that does
/// not decode cannot fail the call), `TotalCount`, and how many the page held in all.
pub fn vswitches_where(
    action: &str,
    v: &Value,
    wanted: impl Fn(&str) -> bool,
) -> Result<(Vec<VSwitchInfo>, u64, usize), CloudError> {
    let all = items(v, &["VSwitches", "VSwitch"]);
    let on_page = all.len();
    let list = all
        .into_iter()
        .filter(|s| wanted(&text(s, "VSwitchId")))
        .map(|s| {
            let id = text(s, "VSwitchId");
            let cidr_text = text(s, "CidrBlock");
            let cidr = cidr_text.parse().map_err(|_| {
                CloudError::decode(
                    action,
                    format!("{id} CidrBlock: not an IPv4 CIDR: {cidr_text:?}"),
                )
            })?;
            let v6_text = text(s, "Ipv6CidrBlock");
            let ipv6_cidr = match v6_text.trim() {
                "" => None,
                t => Some(t.parse().map_err(|_| {
                    CloudError::decode(
                        action,
                        format!("{id} Ipv6CidrBlock: not an IPv6 CIDR: {v6_text:?}"),
                    )
                })?),
            };
            Ok(VSwitchInfo {
                zone_id: text(s, "ZoneId"),
                cidr,
                ipv6_cidr,
                available_ips: num(s, "AvailableIpAddressCount"),
                vpc_id: text(s, "VpcId"),
                route_table_id: at(s, &["RouteTable"])
                    .map(|t| text(t, "RouteTableId"))
                    .unwrap_or_default(),
                id,
            })
        })
        .collect::<Result<Vec<_>, CloudError>>()?;
    Ok((list, num(v, "TotalCount"), on_page))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn describe_page() -> Value {
        json!({
            "RequestId": "R",
            "NextToken": "tok-2",
            "TotalCount": 3,
            "NetworkInterfaceSets": {"NetworkInterfaceSet": [{
                "NetworkInterfaceId": "eni-1",
                "Status": "InUse",
                "Type": "Secondary",
                "MacAddress": "00:16:3E:00:00:01",
                "VSwitchId": "vsw-a",
                "ZoneId": "cn-hangzhou-k",
                "PrivateIpAddress": "172.16.0.10",
                "InstanceId": "i-1",
                "PrivateIpSets": {"PrivateIpSet": [
                    {"PrivateIpAddress": "172.16.0.10", "Primary": true},
                    {"PrivateIpAddress": "172.16.0.11", "Primary": false},
                    {"PrivateIpAddress": "172.16.0.12", "Primary": false}
                ]},
                "Ipv6Sets": {"Ipv6Set": [
                    {"Ipv6Address": "2408:4005:3c4:a00::1000"},
                    {"Ipv6Address": "2408:4005:3c4:a00::1001"}
                ]},
                "Tags": {"Tag": [{"TagKey": "creator", "TagValue": "terway"}]},
                "CreationTime": "2023-10-26T10:22:32Z"
            }, {
                "NetworkInterfaceId": "eni-2",
                "Status": "Available",
                "Type": "Secondary",
                "MacAddress": "00:16:3e:00:00:02",
                "PrivateIpAddress": "172.16.0.20",
                "InstanceId": "",
                "PrivateIpSets": {"PrivateIpSet": {"PrivateIpAddress": "172.16.0.20", "Primary": "true"}}
            }]}
        })
    }

    #[test]
    fn describe_network_interfaces_shape() {
        let (list, next) = eni_page("DescribeNetworkInterfaces", &describe_page()).unwrap();
        assert_eq!(next.as_deref(), Some("tok-2"));
        assert_eq!(list.len(), 2);
        let a = &list[0];
        assert_eq!(
            (a.id.as_str(), a.status.as_str(), a.mac.as_str()),
            ("eni-1", "InUse", "00:16:3e:00:00:01")
        );
        assert_eq!(a.primary_ip, Ipv4Addr::new(172, 16, 0, 10));
        assert_eq!(
            a.secondary_ips,
            vec![Ipv4Addr::new(172, 16, 0, 11), Ipv4Addr::new(172, 16, 0, 12)]
        );
        assert_eq!(a.instance_id.as_deref(), Some("i-1"));
        assert_eq!(
            a.ipv6,
            vec![
                "2408:4005:3c4:a00::1000".parse::<Ipv6Addr>().unwrap(),
                "2408:4005:3c4:a00::1001".parse().unwrap()
            ]
        );
        assert_eq!(a.tags, vec![("creator".to_string(), "terway".to_string())]);
        assert_eq!(a.creation_time, Some(1_698_315_752));
        let b = &list[1];
        assert_eq!((b.instance_id.clone(), b.secondary_ips.len()), (None, 0));
        assert_eq!(b.creation_time, None);
        assert!(b.ipv6.is_empty(), "no Ipv6Sets: no IPv6");
        assert_eq!(b.primary_ip, Ipv4Addr::new(172, 16, 0, 20));
        let (empty, none) = eni_page("D", &json!({"NextToken": ""})).unwrap();
        assert!(empty.is_empty() && none.is_none());
    }

    #[test]
    fn creation_times_with_and_without_seconds() {
        assert_eq!(timestamp("2023-10-26T10:22:32Z"), Some(1_698_315_752));
        assert_eq!(timestamp("2023-10-26T10:22Z"), Some(1_698_315_720));
        for bad in [
            "",
            "2023-10-26",
            "2023-10-26T10:22:32",
            "x023-10-26T10:22Z",
            "2023-10-26T1é:22Z",
        ] {
            assert_eq!(timestamp(bad), None, "{bad}");
        }
    }

    #[test]
    fn bad_addresses_are_decode_errors() {
        let mut v = describe_page();
        v["NetworkInterfaceSets"]["NetworkInterfaceSet"][0]["PrivateIpSets"]["PrivateIpSet"][1]["PrivateIpAddress"] =
            json!("172.16.0.300");
        let e = eni_page("DescribeNetworkInterfaces", &v).unwrap_err();
        assert_eq!(e.code, "Decode");
        assert!(e.message.contains("eni-1"), "{e}");
        let mut v = describe_page();
        v["NetworkInterfaceSets"]["NetworkInterfaceSet"][0]["Ipv6Sets"]["Ipv6Set"][0]["Ipv6Address"] =
            json!("172.16.0.1");
        let e = eni_page("DescribeNetworkInterfaces", &v).unwrap_err();
        assert!(
            e.message.contains("eni-1 Ipv6Set") && e.message.contains("not an IPv6"),
            "{e}"
        );
        assert!(eni("X", &json!({"Status": "InUse"})).is_err());
        assert!(eni("X", &json!({"NetworkInterfaceId": "eni-1"})).is_err());
    }

    #[test]
    fn create_answer_shape() {
        let v = json!({
            "RequestId": "R", "NetworkInterfaceId": "eni-9", "Status": "Available",
            "Type": "Secondary", "MacAddress": "00:16:3e:00:00:09", "PrivateIpAddress": "172.16.0.9",
            "VSwitchId": "vsw-a", "VpcId": "vpc-1", "ZoneId": "z",
            "PrivateIpSets": {"PrivateIpSet": [
                {"PrivateIpAddress": "172.16.0.9", "Primary": true},
                {"PrivateIpAddress": "172.16.0.8", "Primary": false}]},
            "Tags": {"Tag": [{"Key": "k", "Value": "v"}]}
        });
        let e = eni("CreateNetworkInterface", &v).unwrap();
        assert_eq!(e.secondary_ips, vec![Ipv4Addr::new(172, 16, 0, 8)]);
        assert_eq!(e.tags, vec![("k".to_string(), "v".to_string())]);
        assert_eq!(e.instance_id, None);
    }

    #[test]
    fn assign_answer_shape() {
        let v = json!({"RequestId": "R", "AssignedPrivateIpAddressesSet": {
            "NetworkInterfaceId": "eni-1",
            "PrivateIpSet": {"PrivateIpAddress": ["172.16.0.5", "172.16.0.6"]}}});
        assert_eq!(
            assigned_ips("AssignPrivateIpAddresses", &v).unwrap(),
            vec![Ipv4Addr::new(172, 16, 0, 5), Ipv4Addr::new(172, 16, 0, 6)]
        );
        assert_eq!(assigned_ips("A", &json!({})).unwrap_err().code, "Decode");
        let bad =
            json!({"AssignedPrivateIpAddressesSet": {"PrivateIpSet": {"PrivateIpAddress": [5]}}});
        assert!(assigned_ips("A", &bad).is_err());
    }

    #[test]
    fn assign_ipv6_answer_shape() {
        let v = json!({"RequestId": "R", "NetworkInterfaceId": "eni-1",
            "Ipv6Sets": {"Ipv6Address": ["2408:4005:3c4:a00::1000", "2408:4005:3c4:a00::1001"]}});
        let got = assigned_ipv6("AssignIpv6Addresses", &v).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(
            got[1],
            "2408:4005:3c4:a00::1001".parse::<Ipv6Addr>().unwrap()
        );
        let one = json!({"Ipv6Sets": {"Ipv6Address": "2408::1"}});
        assert_eq!(assigned_ipv6("A", &one).unwrap().len(), 1);
        assert_eq!(assigned_ipv6("A", &json!({})).unwrap_err().code, "Decode");
        let bad = json!({"Ipv6Sets": {"Ipv6Address": ["10.0.0.1"]}});
        assert!(
            assigned_ipv6("A", &bad)
                .unwrap_err()
                .message
                .contains("not an IPv6")
        );
    }

    #[test]
    fn instance_types_and_vswitches_shapes() {
        let v = json!({"NextToken": "", "InstanceTypes": {"InstanceType": [{
            "InstanceTypeId": "ecs.g7.4xlarge", "EniQuantity": 8, "EniPrivateIpAddressQuantity": 30,
            "EniIpv6AddressQuantity": 30, "EniTotalQuantity": 50, "EniTrunkSupported": true}]}});
        let (t, next) = instance_types(&v);
        assert_eq!(next, None);
        assert_eq!(
            t,
            vec![InstanceTypeLimits {
                id: "ecs.g7.4xlarge".into(),
                eni_quantity: 8,
                eni_private_ip_quantity: 30,
                eni_ipv6_quantity: 30,
                eni_total_quantity: 50,
                trunk_supported: true,
            }]
        );
        let v = json!({"TotalCount": 1, "PageNumber": 1, "VSwitches": {"VSwitch": [{
            "VSwitchId": "vsw-a", "ZoneId": "cn-hangzhou-k", "CidrBlock": "172.16.0.0/24",
            "Ipv6CidrBlock": "", "AvailableIpAddressCount": 249, "VpcId": "vpc-1",
            "RouteTable": {"RouteTableId": "vtb-1", "RouteTableType": "System"}}]}});
        let (s, total) = vswitches("DescribeVSwitches", &v).unwrap();
        assert_eq!(total, 1);
        assert_eq!(s[0].cidr, "172.16.0.0/24".parse().unwrap());
        assert_eq!(s[0].available_ips, 249);
        assert_eq!(s[0].ipv6_cidr, None, "an empty Ipv6CidrBlock: no IPv6");
        assert_eq!(
            (s[0].vpc_id.as_str(), s[0].route_table_id.as_str()),
            ("vpc-1", "vtb-1")
        );
        let mut bad = v.clone();
        bad["VSwitches"]["VSwitch"][0]["CidrBlock"] = json!("x");
        assert!(vswitches("DescribeVSwitches", &bad).is_err());
        // A listing decodes only the vSwitches asked for: another's bad CIDR does not matter.
        let (s, total, on_page) =
            vswitches_where("DescribeVSwitches", &bad, |id| id == "vsw-b").unwrap();
        assert_eq!((s.len(), total, on_page), (0, 1, 1));
        assert!(vswitches_where("DescribeVSwitches", &bad, |id| id == "vsw-a").is_err());
        let mut v6 = v.clone();
        v6["VSwitches"]["VSwitch"][0]["Ipv6CidrBlock"] = json!("2408:4005:3c4:a00::/64");
        let (s, _) = vswitches("DescribeVSwitches", &v6).unwrap();
        assert_eq!(
            s[0].ipv6_cidr,
            Some("2408:4005:3c4:a00::/64".parse().unwrap())
        );
        v6["VSwitches"]["VSwitch"][0]["Ipv6CidrBlock"] = json!("172.16.0.0/24");
        let e = vswitches("DescribeVSwitches", &v6).unwrap_err();
        assert!(e.message.contains("vsw-a Ipv6CidrBlock"), "{e}");
    }
}
