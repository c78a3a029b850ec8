//! Actions about the region itself: instance types, instances (ECS), vSwitches and route entries (VPC).

use crate::emulate::api::{Page, Paging, eni_json};
use crate::emulate::errors::{self, ApiError};
use crate::emulate::model::{Model, Ms};
use crate::emulate::params::{Params, decode_token, encode_token};
use serde_json::{Value, json};

pub fn dispatch(m: &mut Model, action: &str, p: &Params, now: Ms) -> Result<Value, ApiError> {
    match action {
        "DescribeInstanceTypes" => instance_types(m, p),
        "DescribeInstances" => instances(m, p, now),
        "DescribeVSwitches" => vswitches(m, p, now),
        "CreateRouteEntry" => {
            let table = p.req("RouteTableId")?;
            let dest = p.req("DestinationCidrBlock")?;
            let hop_type = p.opt("NextHopType").unwrap_or("Instance");
            let hop = p.req("NextHopId")?;
            let name = p.opt("RouteEntryName").unwrap_or_default();
            if name.len() > 128 || name.starts_with("http://") || name.starts_with("https://") {
                return Err(errors::invalid("RouteEntryName"));
            }
            let id = m.create_route(table, dest, hop_type, hop, now)?;
            if let Some(r) = m.routes.iter_mut().find(|r| r.id == id) {
                r.name = name.to_string();
            }
            Ok(json!({"RouteEntryId": id}))
        }
        "DeleteRouteEntry" => {
            let entry = p.opt("RouteEntryId");
            let dest = p.opt("DestinationCidrBlock");
            if entry.is_none() && dest.is_none() {
                return Err(errors::missing("RouteEntryId"));
            }
            let table = match (p.opt("RouteTableId"), entry) {
                (Some(t), _) => t.to_string(),
                (None, Some(_)) => m.route_table_id.clone(),
                (None, None) => return Err(errors::missing("RouteTableId")),
            };
            m.delete_route(&table, entry, dest, p.opt("NextHopId"), now)?;
            Ok(json!({}))
        }
        "DescribeRouteEntryList" => routes(m, p, now),
        "DescribeRouteTableList" => route_tables(m, p, now),
        _ => Err(errors::unknown_action()),
    }
}

fn instance_types(m: &Model, p: &Params) -> Result<Value, ApiError> {
    let wanted = p.list("InstanceTypes", 10)?;
    let all: Vec<Value> = m
        .instance_types
        .iter()
        .filter(|t| wanted.is_empty() || wanted.contains(&t.id))
        .map(|t| {
            let family = t.id.rsplit_once('.').map_or(t.id.as_str(), |(f, _)| f);
            json!({
                "InstanceTypeId": t.id,
                "InstanceTypeFamily": family,
                "CpuCoreCount": t.cpu,
                "MemorySize": f64::from(t.memory_gib),
                "EniQuantity": t.eni_quantity,
                "EniPrivateIpAddressQuantity": t.eni_private_ip_address_quantity,
                "EniIpv6AddressQuantity": t.eni_ipv6_address_quantity,
                "EniTotalQuantity": t.eni_total_quantity,
                "EniTrunkSupported": t.eni_trunk_supported,
                "PrimaryEniQueueNumber": 1,
                "SecondaryEniQueueNumber": 1,
            })
        })
        .collect();
    let rule = Paging {
        default: 100,
        max_results: (1, 1600),
        max_page_size: 1600,
    };
    let page = Page::from_params(p, all.len(), rule)?;
    Ok(json!({
        "NextToken": page.next_token.clone().unwrap_or_default(),
        "InstanceTypes": {"InstanceType": all[page.start..page.end]},
    }))
}

fn instances(m: &mut Model, p: &Params, now: Ms) -> Result<Value, ApiError> {
    m.advance(now);
    let ids: Vec<String> = match p.opt("InstanceIds") {
        Some(s) => serde_json::from_str(s).map_err(|_| errors::invalid("InstanceIds"))?,
        None => Vec::new(),
    };
    let list: Vec<Value> = m
        .instances
        .values()
        .filter(|i| ids.is_empty() || ids.contains(&i.id))
        .filter(|i| p.opt("ZoneId").is_none_or(|z| z == i.zone_id))
        .map(|i| {
            let enis: Vec<Value> = m
                .enis
                .iter()
                .filter(|e| e.instance_id.as_deref() == Some(&i.id))
                .map(|e| {
                    let v = eni_json(m, e);
                    json!({
                        "NetworkInterfaceId": v["NetworkInterfaceId"],
                        "MacAddress": v["MacAddress"],
                        "PrimaryIpAddress": v["PrivateIpAddress"],
                        "Type": v["Type"],
                    })
                })
                .collect();
            let primary = m
                .eni(&i.primary_eni_id)
                .map(|e| e.primary_ip.to_string())
                .unwrap_or_default();
            json!({
                "InstanceId": i.id,
                "InstanceType": i.instance_type,
                "ZoneId": i.zone_id,
                "RegionId": m.region_id,
                "Status": i.status,
                "InstanceNetworkType": "vpc",
                "VpcAttributes": {
                    "VpcId": m.vpc_id,
                    "VSwitchId": i.vswitch_id,
                    "PrivateIpAddress": {"IpAddress": [primary]},
                },
                "NetworkInterfaces": {"NetworkInterface": enis},
            })
        })
        .collect();
    // MaxResults 10..=100, values outside clamped, default 10 (the API reference).
    let rule = Paging {
        default: 10,
        max_results: (10, 100),
        max_page_size: 100,
    };
    let page = Page::from_params(p, list.len(), rule)?;
    let mut v = page.json();
    v["Instances"] = json!({"Instance": list[page.start..page.end]});
    Ok(v)
}

fn vswitches(m: &mut Model, p: &Params, now: Ms) -> Result<Value, ApiError> {
    m.advance(now);
    if let Some(vpc) = p.opt("VpcId")
        && vpc != m.vpc_id
    {
        return Err(ApiError::new(
            404,
            "InvalidVpcId.NotFound",
            "The specified VPC does not exist.",
        ));
    }
    let list: Vec<Value> = m
        .vswitches
        .values()
        .filter(|v| p.opt("VSwitchId").is_none_or(|id| id == v.id))
        .filter(|v| p.opt("ZoneId").is_none_or(|z| z == v.zone_id))
        .map(|v| {
            json!({
                "VSwitchId": v.id,
                "VpcId": m.vpc_id,
                "Status": "Available",
                "CidrBlock": v.cidr.to_string(),
                "Ipv6CidrBlock": v.ipv6_cidr.map(|c| c.to_string()).unwrap_or_default(),
                "ZoneId": v.zone_id,
                "AvailableIpAddressCount": v.available(),
                "Description": "",
                "VSwitchName": v.id,
                "IsDefault": false,
                "ResourceGroupId": "",
                "RouteTable": {"RouteTableId": m.route_table_id, "RouteTableType": "System"},
                "Tags": {"Tag": []},
            })
        })
        .collect();
    // PageNumber/PageSize only (at most 50, default 10); no NextToken in or out.
    let page = Page::numbered(p, list.len(), 10, 50)?;
    let mut v = page.numbered_json();
    v["VSwitches"] = json!({"VSwitch": list[page.start..page.end]});
    Ok(v)
}

fn routes(m: &mut Model, p: &Params, now: Ms) -> Result<Value, ApiError> {
    let table = p.req("RouteTableId")?.to_string();
    let kind = p.opt("RouteEntryType");
    if kind.is_some_and(|k| !["System", "Custom", "BGP"].contains(&k)) {
        return Err(errors::invalid("RouteEntryType"));
    }
    let dest = p.opt("DestinationCidrBlock");
    let hop_type = p.opt("NextHopType");
    let hop = p.opt("NextHopId");
    let list: Vec<Value> = m
        .list_routes(&table, now)?
        .into_iter()
        .filter(|r| kind.is_none_or(|k| k == r.kind))
        .filter(|r| dest.is_none_or(|d| d == r.destination))
        .filter(|r| hop_type.is_none_or(|t| t == r.next_hop_type))
        .filter(|r| hop.is_none_or(|h| h == r.next_hop_id))
        .map(|r| {
            json!({
                "RouteEntryId": r.id,
                "RouteTableId": table,
                "DestinationCidrBlock": r.destination,
                "Type": r.kind,
                "Status": "Available",
                "IpVersion": if r.destination.contains(':') { "ipv6" } else { "ipv4" },
                "RouteEntryName": r.name,
                "Description": "",
                "NextHops": {"NextHop": [{
                    "NextHopType": r.next_hop_type,
                    "NextHopId": r.next_hop_id,
                    "Enabled": 1,
                    "Weight": 0,
                }]},
            })
        })
        .collect();
    // This action pages with the singular `MaxResult` (1..=100, default 10).
    let size = p.num("MaxResult", 100)?.unwrap_or(10).max(1) as usize;
    let start = match p.opt("NextToken") {
        Some(t) => decode_token(t)?.min(list.len()),
        None => 0,
    };
    let end = start.saturating_add(size).min(list.len());
    let next = if end < list.len() {
        encode_token(end)
    } else {
        String::new()
    };
    Ok(json!({
        "NextToken": next,
        "RouteEntrys": {"RouteEntry": list[start..end]},
    }))
}

/// The VPC's route tables: the emulated VPC has one, its system table, used by every vSwitch.
fn route_tables(m: &mut Model, p: &Params, now: Ms) -> Result<Value, ApiError> {
    m.advance(now);
    if p.opt("RouterType")
        .is_some_and(|t| t != "VRouter" && t != "VBR")
    {
        return Err(errors::invalid("RouterType"));
    }
    if let Some(vpc) = p.opt("VpcId")
        && vpc != m.vpc_id
    {
        return Err(ApiError::new(
            404,
            "InvalidVpcId.NotFound",
            "The specified VPC does not exist.",
        ));
    }
    let router_id = format!("vrt-{}", m.vpc_id.trim_start_matches("vpc-"));
    let wanted = p.opt("RouterType").is_none_or(|t| t == "VRouter")
        && p.opt("RouterId").is_none_or(|r| r == router_id)
        && p.opt("RouteTableId").is_none_or(|t| t == m.route_table_id)
        && p.opt("RouteTableName").is_none_or(str::is_empty);
    let all: Vec<Value> = wanted
        .then(|| {
            json!({
                "VpcId": m.vpc_id,
                "RouterType": "VRouter",
                "RouterId": router_id,
                "RouteTableId": m.route_table_id,
                "RouteTableName": "",
                "RouteTableType": "System",
                "AssociateType": "VSwitch",
                "Description": "",
                "ResourceGroupId": "",
                "CreationTime": "",
                "Status": "Available",
                "OwnerId": 0,
                "VSwitchIds": {"VSwitchId": m.vswitches.keys().collect::<Vec<_>>()},
                "GatewayIds": {"GatewayIds": []},
                "Tags": {"Tag": []},
            })
        })
        .into_iter()
        .collect();
    // Pages by number only (PageSize at most 50, default 10).
    let size = p.num("PageSize", 50)?.unwrap_or(10).max(1) as usize;
    let number = p.num("PageNumber", u32::MAX as u64)?.unwrap_or(1).max(1) as usize;
    let start = (number - 1).saturating_mul(size).min(all.len());
    let end = start.saturating_add(size).min(all.len());
    // The response model of the API (as the official SDKs carry it) has no Success, Code or
    // Message: only the page fields and the list.
    Ok(json!({
        "PageNumber": number,
        "PageSize": size,
        "TotalCount": all.len(),
        "RouterTableList": {"RouterTableListType": all[start..end]},
    }))
}
