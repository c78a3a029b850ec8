//! Table-style tests of the pure model (no I/O, time driven by hand).

use crate::emulate::config::EmuConfig;
use crate::emulate::model::{Cidr4, EniStatus, EniType, Model};
use crate::emulate::model_eni::{CreateEni, EniFilter};
use std::net::Ipv4Addr;

const A: &str = "i-emu000000000000000a";
const B: &str = "i-emu000000000000000b";
const VSW_A: &str = "vsw-emu0000000000000000a";
const VSW_B: &str = "vsw-emu0000000000000000b";
const SG: &str = "sg-emu00000000000000001";

fn model() -> Model {
    Model::new(&EmuConfig::embedded().unwrap(), 1_000).unwrap()
}

fn req(vsw: &str, secondary: usize) -> CreateEni {
    CreateEni {
        vswitch_id: vsw.into(),
        security_group_ids: vec![SG.into()],
        eni_type: EniType::Secondary,
        primary_ip: None,
        secondary_count: secondary,
        secondary_ips: vec![],
        ipv6_count: 0,
        tags: vec![("creator".into(), "terway".into())],
        description: String::new(),
        name: String::new(),
    }
}

#[test]
fn vswitch_reserves_first_and_last_three_and_gateway_is_253() {
    let c = Cidr4::parse("172.16.0.0/24").unwrap();
    assert_eq!(c.gateway(), Ipv4Addr::new(172, 16, 0, 253));
    let (lo, hi) = c.usable();
    assert_eq!(
        (Ipv4Addr::from(lo), Ipv4Addr::from(hi)),
        (
            "172.16.0.1".parse().unwrap(),
            "172.16.0.252".parse().unwrap()
        )
    );
    assert!(Cidr4::parse("172.16.0.1/24").is_none());
    let m = model();
    // Two primaries are on vsw a at start: 252 usable - 2.
    assert_eq!(m.vswitches[VSW_A].available(), 250);
    assert_eq!(m.vswitches[VSW_B].available(), 60);
    let a = &m.enis[0];
    assert_eq!(a.eni_type, EniType::Primary);
    assert!(a.id.starts_with("eni-") && a.id.len() == 24, "{}", a.id);
    assert!(a.mac.starts_with("00:16:3e:"));
}

#[test]
fn create_eni_allocates_and_exhaustion_names_the_vswitch() {
    let mut m = model();
    let id = m.create_eni(&req(VSW_B, 9), 2_000).unwrap();
    let e = m.eni(&id).unwrap();
    assert_eq!(e.status, EniStatus::Available);
    assert_eq!(e.ipv4_count(), 10);
    assert_eq!(e.primary_ip, Ipv4Addr::new(172, 16, 1, 1));
    assert_eq!(m.vswitches[VSW_B].available(), 50);
    m.create_eni(&req(VSW_B, 45), 2_000).unwrap();
    let err = m.create_eni(&req(VSW_B, 4), 2_000).unwrap_err();
    assert_eq!(err.code, "InvalidVSwitchId.IpNotEnough");
    assert_eq!(
        err.message,
        format!("The specified VSwitch \"{VSW_B}\" has not enough IpAddress.")
    );
    // All or nothing: the failed create took no address.
    assert_eq!(m.vswitches[VSW_B].available(), 4);
    assert_eq!(
        m.create_eni(&req(VSW_B, 50), 0).unwrap_err().code,
        "InvalidOperation.Ipv4CountExceeded"
    );
    assert_eq!(
        m.create_eni(&req("vsw-nope", 1), 0).unwrap_err().code,
        "InvalidVSwitchId.NotFound"
    );
    let mut r = req(VSW_A, 0);
    r.security_group_ids = vec!["sg-nope".into()];
    assert_eq!(
        m.create_eni(&r, 0).unwrap_err().code,
        "InvalidSecurityGroupId.NotFound"
    );
    let mut r = req(VSW_A, 0);
    r.primary_ip = Some(Ipv4Addr::new(172, 16, 0, 253));
    assert_eq!(
        m.create_eni(&r, 0).unwrap_err().code,
        "InvalidVSwitchId.IpInvalid"
    );
}

#[test]
fn attach_is_asynchronous_and_quota_bound() {
    let mut m = model();
    m.timing.attach_delay_ms = 500;
    m.timing.detach_delay_ms = 300;
    let id = m.create_eni(&req(VSW_A, 0), 1_000).unwrap();
    m.attach_eni(B, &id, None, 1_000).unwrap();
    assert_eq!(m.eni(&id).unwrap().status, EniStatus::Attaching);
    assert_eq!(
        m.attach_eni(B, &id, None, 1_100).unwrap_err().code,
        "InvalidOperation.InvalidEniState"
    );
    m.advance(1_499);
    assert_eq!(m.eni(&id).unwrap().status, EniStatus::Attaching);
    m.advance(1_500);
    assert_eq!(m.eni(&id).unwrap().status, EniStatus::InUse);
    assert_eq!(m.eni(&id).unwrap().device_index, Some(1));
    // ecs.g7.large: 3 ENIs including the primary.
    let id2 = m.create_eni(&req(VSW_A, 0), 2_000).unwrap();
    m.attach_eni(B, &id2, None, 2_000).unwrap();
    let id3 = m.create_eni(&req(VSW_A, 0), 2_000).unwrap();
    assert_eq!(
        m.attach_eni(B, &id3, None, 2_000).unwrap_err().code,
        "EniPerInstanceLimitExceeded"
    );
    // Per-ENI quota of ecs.g7.large is 6 addresses once attached.
    assert_eq!(m.assign_ips(&id, 5, &[], 3_000).unwrap().len(), 5);
    assert_eq!(
        m.assign_ips(&id, 1, &[], 3_000).unwrap_err().code,
        "InvalidOperation.Ipv4CountExceeded"
    );
    assert_eq!(
        m.delete_eni(&id, 3_000).unwrap_err().code,
        "InvalidOperation.InvalidEniState"
    );
    let primary = m.instances[B].primary_eni_id.clone();
    assert_eq!(
        m.detach_eni(B, &primary, 3_000).unwrap_err().code,
        "InvalidOperation.DetachPrimaryEniNotAllowed"
    );
    assert_eq!(
        m.detach_eni(A, &id, 3_000).unwrap_err().code,
        "InvalidOperation.InvalidEniState"
    );
    assert_eq!(
        m.detach_eni("i-nope", &id, 3_000).unwrap_err().code,
        "InvalidEcsId.NotFound"
    );
    m.detach_eni(B, &id, 3_000).unwrap();
    assert_eq!(m.eni(&id).unwrap().status, EniStatus::Detaching);
    m.advance(3_300);
    let e = m.eni(&id).unwrap();
    assert_eq!(
        (e.status, e.instance_id.clone()),
        (EniStatus::Available, None)
    );
    // Deleting is asynchronous: `Deleting` (addresses still held, a second delete accepted,
    // nothing else), then gone with its addresses freed.
    m.timing.delete_delay_ms = 200;
    let before = m.vswitches[VSW_A].available();
    m.delete_eni(&id, 3_400).unwrap();
    assert_eq!(m.eni(&id).unwrap().status, EniStatus::Deleting);
    assert_eq!(m.vswitches[VSW_A].available(), before);
    m.delete_eni(&id, 3_500).unwrap();
    assert_eq!(
        m.attach_eni(B, &id, None, 3_500).unwrap_err().code,
        "InvalidOperation.InvalidEniState"
    );
    assert_eq!(
        m.assign_ips(&id, 1, &[], 3_500).unwrap_err().code,
        "InvalidOperation.InvalidEniState"
    );
    m.advance(3_599);
    assert!(m.eni(&id).is_ok());
    m.advance(3_600);
    assert_eq!(m.vswitches[VSW_A].available(), before + 6);
    assert_eq!(
        m.delete_eni(&id, 3_600).unwrap_err().code,
        "InvalidEniId.NotFound"
    );
}

#[test]
fn assign_and_unassign_explicit_addresses() {
    let mut m = model();
    let id = m.create_eni(&req(VSW_A, 0), 0).unwrap();
    let ip = Ipv4Addr::new(172, 16, 0, 100);
    assert_eq!(m.assign_ips(&id, 0, &[ip], 0).unwrap(), vec![ip]);
    assert_eq!(
        m.assign_ips(&id, 0, &[ip], 0).unwrap_err().code,
        "InvalidIp.IpAssigned"
    );
    assert_eq!(
        m.assign_ips(&id, 0, &[Ipv4Addr::new(10, 0, 0, 1)], 0)
            .unwrap_err()
            .code,
        "InvalidVSwitchId.IpInvalid"
    );
    let other = Ipv4Addr::new(172, 16, 0, 101);
    assert_eq!(
        m.unassign_ips(&id, &[ip, other], 0).unwrap_err().code,
        "InvalidIp.IpUnassigned"
    );
    assert_eq!(
        m.eni(&id).unwrap().ipv4_count(),
        2,
        "failed unassign changed nothing"
    );
    m.unassign_ips(&id, &[ip], 0).unwrap();
    assert_eq!(m.eni(&id).unwrap().ipv4_count(), 1);
    assert_eq!(m.assign_ipv6(&id, 2, &[], 0).unwrap().len(), 2);
    let v6: Vec<_> = m.eni(&id).unwrap().live_ipv6().collect();
    m.unassign_ipv6(&id, &v6[..1], 0).unwrap();
    assert_eq!(m.eni(&id).unwrap().live_ipv6().count(), 1);
}

#[test]
fn free_cap_forces_exhaustion_and_is_refilled_by_releases() {
    let mut m = model();
    m.set_free_cap(VSW_A, Some(2)).unwrap();
    assert_eq!(m.vswitches[VSW_A].available(), 2);
    let id = m.create_eni(&req(VSW_A, 1), 0).unwrap();
    assert_eq!(m.vswitches[VSW_A].available(), 0);
    let e = m.assign_ips(&id, 1, &[], 0).unwrap_err();
    assert_eq!(e.code, "InvalidVSwitchId.IpNotEnough");
    let sec: Vec<_> = m.eni(&id).unwrap().live_secondary().collect();
    m.unassign_ips(&id, &sec, 0).unwrap();
    assert_eq!(m.vswitches[VSW_A].available(), 1);
    m.set_free_cap(VSW_A, None).unwrap();
    assert!(m.vswitches[VSW_A].available() > 200);
}

#[test]
fn describe_filters_and_client_tokens() {
    let mut m = model();
    let id = m.create_eni(&req(VSW_A, 0), 0).unwrap();
    let f = EniFilter {
        instance_id: Some(A.into()),
        ..EniFilter::default()
    };
    assert_eq!(m.describe_enis(&f, 0).len(), 1);
    let f = EniFilter {
        tags: vec![("creator".into(), "terway".into())],
        ..EniFilter::default()
    };
    assert_eq!(m.describe_enis(&f, 0)[0].id, id);
    let f = EniFilter {
        status: Some("Available".into()),
        ..EniFilter::default()
    };
    assert_eq!(m.describe_enis(&f, 0).len(), 1);
    assert_eq!(
        m.token_lookup("CreateNetworkInterface", "t1", "fp")
            .unwrap(),
        None
    );
    m.token_store(
        "CreateNetworkInterface",
        "t1",
        "fp",
        serde_json::json!({"NetworkInterfaceId": id}),
    );
    assert!(
        m.token_lookup("CreateNetworkInterface", "t1", "fp")
            .unwrap()
            .is_some()
    );
    assert_eq!(
        m.token_lookup("CreateNetworkInterface", "t1", "other")
            .unwrap_err()
            .code,
        "IdempotentParameterMismatch"
    );
}

#[test]
fn trunk_members_count_against_total_quantity() {
    let mut m = model();
    m.timing.attach_delay_ms = 0;
    let mut r = req(VSW_A, 0);
    r.eni_type = EniType::Trunk;
    let trunk = m.create_eni(&r, 0).unwrap();
    assert_eq!(
        m.attach_eni(B, &trunk, None, 0).unwrap_err().code,
        "InvalidOperation.InvalidEniType"
    );
    m.attach_eni(A, &trunk, None, 0).unwrap();
    assert_eq!(m.eni(&trunk).unwrap().status, EniStatus::InUse);
    let member = m.create_eni(&req(VSW_A, 0), 0).unwrap();
    m.attach_eni(A, &member, Some(&trunk), 0).unwrap();
    let e = m.eni(&member).unwrap();
    assert_eq!(
        (e.eni_type, e.trunk_eni_id.as_deref()),
        (EniType::Member, Some(trunk.as_str()))
    );
    assert_eq!(
        m.detach_eni(A, &trunk, 0).unwrap_err().code,
        "InvalidOperation.InvalidEniState"
    );
}

#[test]
fn routes() {
    let mut m = model();
    let rt = m.route_table_id.clone();
    let id = m
        .create_route(&rt, "10.10.0.0/24", "Instance", A, 0)
        .unwrap();
    assert!(id.starts_with("rte-"));
    assert_eq!(
        m.create_route(&rt, "10.10.0.0/24", "Instance", B, 0)
            .unwrap_err()
            .code,
        "InvalidCIDRBlock.Duplicate"
    );
    assert_eq!(
        m.create_route(&rt, "10.10.1.0/33", "Instance", B, 0)
            .unwrap_err()
            .code,
        "InvalidParameter"
    );
    assert_eq!(
        m.create_route("vtb-x", "10.10.1.0/24", "Instance", B, 0)
            .unwrap_err()
            .code,
        "InvalidRouteTableId.NotFound"
    );
    assert_eq!(
        m.create_route(&rt, "10.10.1.0/24", "Instance", "i-x", 0)
            .unwrap_err()
            .code,
        "InvalidInstanceId.NotFound"
    );
    assert_eq!(m.instance_by_ip(Ipv4Addr::new(10, 10, 0, 7)), Some(A));
    assert_eq!(m.instance_by_ip(Ipv4Addr::new(10, 11, 0, 7)), None);
    let list = m.list_routes(&rt, 0).unwrap();
    assert_eq!(list.iter().filter(|r| r.kind == "Custom").count(), 1);
    // Both vSwitches have IPv6: a system entry per /32 CIDR and per /64.
    assert_eq!(list.iter().filter(|r| r.kind == "System").count(), 4);
    m.delete_route(&rt, None, Some("10.10.0.0/24"), None, 0)
        .unwrap();
    // IPv6 destinations (a VPC-mode pod_cidr_v6), spelled canonically.
    let v6 = m
        .create_route(&rt, "2408:4005:3c4:af00:0::/64", "Instance", B, 0)
        .unwrap();
    assert_eq!(
        m.create_route(&rt, "2408:4005:3c4:af00::/64", "Instance", A, 0)
            .unwrap_err()
            .code,
        "InvalidCIDRBlock.Duplicate"
    );
    for (bad, code) in [
        ("2408:4005:3c4:af01::1/64", "InvalidParameter"),
        ("2408:4005:3c4:a00::/64", "InvalidCIDRBlock.Duplicate"),
    ] {
        assert_eq!(
            m.create_route(&rt, bad, "Instance", A, 0).unwrap_err().code,
            code,
            "{bad}"
        );
    }
    let list = m.list_routes(&rt, 0).unwrap();
    let e = list.iter().find(|r| r.id == v6).unwrap();
    assert_eq!(e.destination, "2408:4005:3c4:af00::/64");
    m.delete_route(&rt, None, Some("2408:4005:3c4:af00::/64"), Some(B), 0)
        .unwrap();
    assert_eq!(
        m.delete_route(&rt, Some(&id), None, None, 0)
            .unwrap_err()
            .code,
        "InvalidRouteEntry.NotFound"
    );
}
