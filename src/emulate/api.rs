//! OpenAPI actions: parameters in, JSON out (without `RequestId`, which the HTTP layer adds).
//! ENI actions here; vSwitches, instance types, instances and routes in `api_vpc.rs`.

use crate::cloud::sign::format_timestamp;
use crate::emulate::api_vpc;
use crate::emulate::errors::{self, ApiError};
use crate::emulate::model::{Eni, EniStatus, EniType, Model, Ms};
use crate::emulate::model_eni::{CreateEni, EniFilter};
use crate::emulate::params::{Params, decode_token, encode_token};
use serde_json::{Value, json};
use std::net::{Ipv4Addr, Ipv6Addr};

pub const ECS_VERSION: &str = "2014-05-26";
pub const VPC_VERSION: &str = "2016-04-28";

/// Which API product an action belongs to: `Some("Ecs")`, `Some("Vpc")` or `None` when unknown.
pub fn product(action: &str) -> Option<&'static str> {
    match action {
        "CreateNetworkInterface"
        | "AttachNetworkInterface"
        | "DetachNetworkInterface"
        | "DeleteNetworkInterface"
        | "DescribeNetworkInterfaces"
        | "AssignPrivateIpAddresses"
        | "UnassignPrivateIpAddresses"
        | "AssignIpv6Addresses"
        | "UnassignIpv6Addresses"
        | "DescribeInstanceTypes"
        | "DescribeInstances" => Some("Ecs"),
        "DescribeVSwitches"
        | "CreateRouteEntry"
        | "DeleteRouteEntry"
        | "DescribeRouteEntryList"
        | "DescribeRouteTableList" => Some("Vpc"),
        _ => None,
    }
}

pub fn version_of(product: &str) -> &'static str {
    if product == "Vpc" {
        VPC_VERSION
    } else {
        ECS_VERSION
    }
}

/// Actions whose `ClientToken` makes a retry return the first answer.
const IDEMPOTENT: &[&str] = &[
    "CreateNetworkInterface",
    "AssignPrivateIpAddresses",
    "AssignIpv6Addresses",
    "CreateRouteEntry",
];

/// How an action takes `RegionId`, as its API reference documents it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegionParam {
    /// Required (the ENI actions, DescribeInstances, DescribeRouteEntryList).
    Required,
    /// Optional: the endpoint names the region (CreateRouteEntry, DeleteRouteEntry).
    Optional,
    /// `RegionId` or `VpcId`, at least one (DescribeVSwitches).
    OrVpcId,
    /// Not a parameter of the action (DescribeInstanceTypes): ignored, as the cloud does.
    None,
}

pub fn region_param(action: &str) -> RegionParam {
    match action {
        "DescribeInstanceTypes" => RegionParam::None,
        "DescribeVSwitches" => RegionParam::OrVpcId,
        "CreateRouteEntry" | "DeleteRouteEntry" => RegionParam::Optional,
        _ => RegionParam::Required,
    }
}

fn check_region(m: &Model, action: &str, p: &Params) -> Result<(), ApiError> {
    let rule = region_param(action);
    let region = match rule {
        RegionParam::None => return Ok(()),
        RegionParam::Required => Some(p.req("RegionId")?),
        RegionParam::OrVpcId if p.opt("VpcId").is_none() => Some(p.req("RegionId")?),
        RegionParam::OrVpcId | RegionParam::Optional => p.opt("RegionId"),
    };
    match region {
        Some(r) if r != m.region_id => Err(errors::region_not_found()),
        _ => Ok(()),
    }
}

/// Runs one action against the model. The action and version were checked by the caller.
pub fn handle(m: &mut Model, action: &str, p: &Params, now: Ms) -> Result<Value, ApiError> {
    check_region(m, action, p)?;
    let token = p
        .opt("ClientToken")
        .filter(|_| IDEMPOTENT.contains(&action));
    if let Some(t) = token {
        if t.len() > 64 || !t.is_ascii() {
            return Err(errors::invalid("ClientToken"));
        }
        if let Some(v) = m.token_lookup(action, t, &p.fingerprint())? {
            return Ok(v);
        }
    }
    let out = dispatch(m, action, p, now)?;
    if let Some(t) = token {
        m.token_store(action, t, &p.fingerprint(), out.clone());
    }
    Ok(out)
}

fn dispatch(m: &mut Model, action: &str, p: &Params, now: Ms) -> Result<Value, ApiError> {
    match action {
        "CreateNetworkInterface" => create(m, p, now),
        "AttachNetworkInterface" => {
            let inst = p.req("InstanceId")?;
            let eni = p.req("NetworkInterfaceId")?;
            m.attach_eni(inst, eni, p.opt("TrunkNetworkInstanceId"), now)?;
            Ok(json!({}))
        }
        "DetachNetworkInterface" => {
            let inst = p.req("InstanceId")?;
            let eni = p.req("NetworkInterfaceId")?;
            m.detach_eni(inst, eni, now)?;
            Ok(json!({}))
        }
        "DeleteNetworkInterface" => {
            m.delete_eni(p.req("NetworkInterfaceId")?, now)?;
            Ok(json!({}))
        }
        "DescribeNetworkInterfaces" => describe(m, p, now),
        "AssignPrivateIpAddresses" => {
            let eni = p.req("NetworkInterfaceId")?.to_string();
            let (count, ips) = count_or_list(
                p,
                "SecondaryPrivateIpAddressCount",
                "PrivateIpAddress",
                parse_v4,
            )?;
            let got = m.assign_ips(&eni, count, &ips, now)?;
            Ok(json!({"AssignedPrivateIpAddressesSet": {
                "NetworkInterfaceId": eni,
                "PrivateIpSet": {"PrivateIpAddress": got.iter().map(|i| i.to_string()).collect::<Vec<_>>()},
            }}))
        }
        "UnassignPrivateIpAddresses" => {
            let eni = p.req("NetworkInterfaceId")?.to_string();
            let ips = addr_list(p, "PrivateIpAddress", parse_v4)?;
            m.unassign_ips(&eni, &ips, now)?;
            Ok(json!({}))
        }
        "AssignIpv6Addresses" => {
            let eni = p.req("NetworkInterfaceId")?.to_string();
            let (count, ips) = count_or_list(p, "Ipv6AddressCount", "Ipv6Address", parse_v6)?;
            let got = m.assign_ipv6(&eni, count, &ips, now)?;
            Ok(json!({
                "NetworkInterfaceId": eni,
                "Ipv6Sets": {"Ipv6Address": got.iter().map(|i| i.to_string()).collect::<Vec<_>>()},
            }))
        }
        "UnassignIpv6Addresses" => {
            let eni = p.req("NetworkInterfaceId")?.to_string();
            let ips = addr_list(p, "Ipv6Address", parse_v6)?;
            m.unassign_ipv6(&eni, &ips, now)?;
            Ok(json!({}))
        }
        _ => api_vpc::dispatch(m, action, p, now),
    }
}

fn parse_v4(s: &str) -> Option<Ipv4Addr> {
    s.parse().ok()
}

fn parse_v6(s: &str) -> Option<Ipv6Addr> {
    s.parse().ok()
}

/// Addresses to assign come either as a count or as a list, never both (at most 10 per call).
fn count_or_list<A>(
    p: &Params,
    count_name: &str,
    list_name: &str,
    parse: fn(&str) -> Option<A>,
) -> Result<(usize, Vec<A>), ApiError> {
    let count = p.num(count_name, 10)?;
    let list = p.list(list_name, 10)?;
    match (count, list.is_empty()) {
        (Some(_), false) => Err(errors::invalid(count_name)),
        (None, true) => Err(errors::missing(count_name)),
        (Some(0), true) => Err(errors::invalid(count_name)),
        (Some(n), true) => Ok((n as usize, Vec::new())),
        (None, false) => Ok((0, parse_all(&list, list_name, parse)?)),
    }
}

fn addr_list<A>(p: &Params, name: &str, parse: fn(&str) -> Option<A>) -> Result<Vec<A>, ApiError> {
    let list = p.list(name, 10)?;
    if list.is_empty() {
        return Err(errors::missing(&format!("{name}.1")));
    }
    parse_all(&list, name, parse)
}

fn parse_all<A>(
    list: &[String],
    name: &str,
    parse: fn(&str) -> Option<A>,
) -> Result<Vec<A>, ApiError> {
    list.iter()
        .enumerate()
        .map(|(i, s)| parse(s).ok_or_else(|| errors::invalid(&format!("{name}.{}", i + 1))))
        .collect()
}

fn create(m: &mut Model, p: &Params, now: Ms) -> Result<Value, ApiError> {
    let vswitch_id = p.req("VSwitchId")?.to_string();
    let mut sgs = p.list("SecurityGroupIds", 5)?;
    if let Some(sg) = p.opt("SecurityGroupId") {
        sgs.insert(0, sg.to_string());
    }
    if sgs.is_empty() {
        return Err(errors::missing("SecurityGroupId"));
    }
    let eni_type = match p.opt("InstanceType") {
        None | Some("Secondary") => EniType::Secondary,
        Some("Trunk") => EniType::Trunk,
        Some(_) => return Err(errors::invalid("InstanceType")),
    };
    let primary_ip = match p.opt("PrimaryIpAddress") {
        Some(s) => Some(parse_v4(s).ok_or_else(|| errors::invalid("PrimaryIpAddress"))?),
        None => None,
    };
    let secondary_count = p.num("SecondaryPrivateIpAddressCount", 49)?.unwrap_or(0) as usize;
    let secondary_ips = parse_all(
        &p.list("PrivateIpAddress", 49)?,
        "PrivateIpAddress",
        parse_v4,
    )?;
    if secondary_count > 0 && !secondary_ips.is_empty() {
        return Err(errors::invalid("SecondaryPrivateIpAddressCount"));
    }
    let ipv6_count = p.num("Ipv6AddressCount", 10)?.unwrap_or(0) as usize;
    let req = CreateEni {
        vswitch_id,
        security_group_ids: sgs,
        eni_type,
        primary_ip,
        secondary_count,
        secondary_ips,
        ipv6_count,
        tags: p.tags("Tag")?,
        description: p.opt("Description").unwrap_or_default().to_string(),
        name: p
            .opt("NetworkInterfaceName")
            .unwrap_or_default()
            .to_string(),
    };
    let id = m.create_eni(&req, now)?;
    let eni = m.eni(&id)?;
    let mut v = eni_json(m, eni);
    // CreateNetworkInterface answers without the attachment-only fields and the creation time.
    if let Some(o) = v.as_object_mut() {
        o.remove("Attachment");
        o.remove("InstanceId");
        o.remove("CreationTime");
    }
    Ok(v)
}

fn describe(m: &mut Model, p: &Params, now: Ms) -> Result<Value, ApiError> {
    let status = p.opt("Status").map(str::to_string);
    if let Some(s) = &status
        && ![
            "Available",
            "Attaching",
            "InUse",
            "Detaching",
            "Deleting",
            "CreateFailed",
        ]
        .contains(&s.as_str())
    {
        return Err(errors::invalid("Status"));
    }
    let eni_type = p.opt("Type").map(str::to_string);
    if let Some(t) = &eni_type
        && !["Primary", "Secondary", "Trunk", "Member"].contains(&t.as_str())
    {
        return Err(errors::invalid("Type"));
    }
    let filter = EniFilter {
        instance_id: p.opt("InstanceId").map(str::to_string),
        eni_ids: p.list("NetworkInterfaceId", 100)?,
        status,
        eni_type,
        vswitch_id: p.opt("VSwitchId").map(str::to_string),
        tags: p.tags("Tag")?,
    };
    let all = m.describe_enis(&filter, now);
    // MaxResults 10..=500, values outside clamped, default 10 (the API reference).
    let rule = Paging {
        default: 10,
        max_results: (10, 500),
        max_page_size: 1000,
    };
    let page = Page::from_params(p, all.len(), rule)?;
    let items: Vec<Value> = all[page.start..page.end]
        .iter()
        .map(|e| eni_json(m, e))
        .collect();
    let mut v = page.json();
    v["NetworkInterfaceSets"] = json!({"NetworkInterfaceSet": items});
    Ok(v)
}

/// A window of a result list, by `NextToken`/`MaxResults` or `PageNumber`/`PageSize`.
pub struct Page {
    pub start: usize,
    pub end: usize,
    pub number: usize,
    pub size: usize,
    pub total: usize,
    pub next_token: Option<String>,
}

/// An action's paging rules, from its API reference.
#[derive(Debug, Clone, Copy)]
pub struct Paging {
    /// Entries per page when neither `MaxResults` nor `PageSize` is given.
    pub default: u64,
    /// `MaxResults` outside this range is clamped into it, not refused.
    pub max_results: (u64, u64),
    /// `PageSize` above this is refused.
    pub max_page_size: u64,
}

impl Page {
    /// By `NextToken`/`MaxResults` when either is given, else by `PageNumber`/`PageSize`.
    pub fn from_params(p: &Params, total: usize, rule: Paging) -> Result<Page, ApiError> {
        let token = p.opt("NextToken");
        let max_results = p.num("MaxResults", u64::from(u32::MAX))?;
        if token.is_some() || max_results.is_some() {
            let (lo, hi) = rule.max_results;
            let size = max_results.unwrap_or(rule.default).clamp(lo.max(1), hi) as usize;
            let start = match token {
                Some(t) => decode_token(t)?,
                None => 0,
            };
            if start > total {
                return Err(errors::invalid("NextToken"));
            }
            return Ok(Page::window(start, size, total, (start / size) + 1));
        }
        Page::numbered(p, total, rule.default, rule.max_page_size)
    }

    /// `PageNumber`/`PageSize` only (`PageSize` at most `max`, `default` when absent).
    pub fn numbered(p: &Params, total: usize, default: u64, max: u64) -> Result<Page, ApiError> {
        let size = p.num("PageSize", max)?.unwrap_or(default).max(1) as usize;
        let number = p.num("PageNumber", u32::MAX as u64)?.unwrap_or(1).max(1) as usize;
        let start = (number - 1).saturating_mul(size).min(total);
        Ok(Page::window(start, size, total, number))
    }

    fn window(start: usize, size: usize, total: usize, number: usize) -> Page {
        let end = start.saturating_add(size).min(total);
        Page {
            start,
            end,
            number,
            size,
            total,
            next_token: (end < total).then(|| encode_token(end)),
        }
    }

    pub fn json(&self) -> Value {
        let mut v = self.numbered_json();
        v["NextToken"] = json!(self.next_token.clone().unwrap_or_default());
        v
    }

    /// The page fields of an action without `NextToken` (DescribeVSwitches).
    pub fn numbered_json(&self) -> Value {
        json!({
            "TotalCount": self.total,
            "PageNumber": self.number,
            "PageSize": self.size,
        })
    }
}

/// One ENI as DescribeNetworkInterfaces / CreateNetworkInterface show it.
pub fn eni_json(m: &Model, e: &Eni) -> Value {
    let mut ips = vec![json!({"PrivateIpAddress": e.primary_ip.to_string(), "Primary": true})];
    ips.extend(
        e.live_secondary()
            .map(|ip| json!({"PrivateIpAddress": ip.to_string(), "Primary": false})),
    );
    let v6: Vec<Value> = e
        .live_ipv6()
        .map(|ip| json!({"Ipv6Address": ip.to_string()}))
        .collect();
    let tags: Vec<Value> = e
        .tags
        .iter()
        .map(|(k, v)| json!({"TagKey": k, "TagValue": v}))
        .collect();
    let mut v = json!({
        "NetworkInterfaceId": e.id,
        "NetworkInterfaceName": e.name,
        "Description": e.description,
        "Status": e.status.as_str(),
        "Type": e.eni_type.as_str(),
        "VpcId": m.vpc_id,
        "VSwitchId": e.vswitch_id,
        "ZoneId": e.zone_id,
        "MacAddress": e.mac,
        "PrivateIpAddress": e.primary_ip.to_string(),
        "InstanceId": e.instance_id.clone().unwrap_or_default(),
        "CreationTime": format_timestamp(e.created_at / 1000),
        "ResourceGroupId": "",
        "ServiceManaged": false,
        "SecurityGroupIds": {"SecurityGroupId": e.security_group_ids},
        "PrivateIpSets": {"PrivateIpSet": ips},
        "Ipv6Sets": {"Ipv6Set": v6},
        "Tags": {"Tag": tags},
    });
    if e.instance_id.is_some() && e.status != EniStatus::Available {
        v["Attachment"] = json!({
            "InstanceId": e.instance_id.clone().unwrap_or_default(),
            "TrunkNetworkInterfaceId": e.trunk_eni_id.clone().unwrap_or_default(),
            "DeviceIndex": e.device_index.unwrap_or(0),
        });
    }
    v
}
