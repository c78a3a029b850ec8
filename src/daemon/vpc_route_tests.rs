use super::*;
use crate::cloud::credentials::{CredentialProvider, CredentialSource};
use crate::cloud::ecs::CloudConfig;

const ME: &str = "i-me";

fn cidr(s: &str) -> IpNetwork {
    s.parse().unwrap()
}

fn entry(id: &str, dst: &str, kind: &str, hops: &[(&str, &str)]) -> RouteEntryInfo {
    RouteEntryInfo {
        id: id.into(),
        route_table_id: "vtb-1".into(),
        destination: dst.into(),
        kind: kind.into(),
        status: "Available".into(),
        next_hops: hops
            .iter()
            .map(|(t, i)| (t.to_string(), i.to_string()))
            .collect(),
    }
}

fn custom(id: &str, dst: &str, instance: &str) -> RouteEntryInfo {
    entry(id, dst, "Custom", &[("Instance", instance)])
}

fn system(id: &str, dst: &str) -> RouteEntryInfo {
    entry(id, dst, "System", &[("local", "")])
}

fn conflict_of(check: RouteCheck) -> Conflict {
    match check {
        RouteCheck::Conflict(c) => c,
        other => panic!("expected a conflict, got {other:?}"),
    }
}

#[test]
fn an_ipv6_prefix_is_decided_on_ipv6_entries_only() {
    let mine = cidr("fd00:1::/64");
    // An IPv4 entry never conflicts with an IPv6 prefix; an IPv6 one inside it does.
    let v4 = entry("rte-4", "10.0.0.0/8", "Custom", &[("Instance", "i-other")]);
    assert!(matches!(
        decide(std::slice::from_ref(&v4), mine, ME),
        RouteCheck::Missing
    ));
    let inside = entry("rte-6", "fd00:1::/80", "Custom", &[("Instance", "i-other")]);
    assert!(matches!(
        decide(&[v4, inside], mine, ME),
        RouteCheck::Conflict(_)
    ));
    let ours = entry("rte-7", "fd00:1::/64", "Custom", &[("Instance", ME)]);
    assert!(matches!(
        decide(&[ours], mine, ME),
        RouteCheck::Present { .. }
    ));
}

#[test]
fn our_entry_is_present_absent_is_missing() {
    let pod = cidr("10.244.1.0/24");
    let table = [
        system("rte-s", "172.16.0.0/24"),
        custom("rte-other", "10.244.2.0/24", "i-other"),
        custom("rte-mine", "10.244.1.0/24", ME),
    ];
    assert_eq!(
        decide(&table, pod, ME),
        RouteCheck::Present {
            entry_id: "rte-mine".into(),
            status: "Available".into()
        }
    );
    assert_eq!(decide(&table[..2], pod, ME), RouteCheck::Missing);
    assert_eq!(decide(&[], pod, ME), RouteCheck::Missing);
    // The next hop type is compared as the cloud may spell it.
    let lower = [entry(
        "rte-l",
        "10.244.1.0/24",
        "Custom",
        &[("instance", ME)],
    )];
    assert!(matches!(
        decide(&lower, pod, ME),
        RouteCheck::Present { .. }
    ));
}

#[test]
fn another_instance_owning_the_cidr_is_a_conflict_naming_everything() {
    let pod = cidr("10.244.1.0/24");
    let c = conflict_of(decide(
        &[custom("rte-x", "10.244.1.0/24", "i-other")],
        pod,
        ME,
    ));
    assert_eq!(c.entry_id, "rte-x");
    let msg = c.describe(pod, "vtb-1");
    for part in ["10.244.1.0/24", "vtb-1", "Instance i-other", "rte-x"] {
        assert!(msg.contains(part), "{part}: {msg}");
    }
    assert!(
        msg.starts_with(
            "pod_cidr 10.244.1.0/24 is already routed to Instance i-other in route table vtb-1 (route entry rte-x): another node owns it"
        ),
        "{msg}"
    );
    // ECMP over us and another: not ours alone.
    let ecmp = [entry(
        "rte-e",
        "10.244.1.0/24",
        "Custom",
        &[("Instance", ME), ("Instance", "i-other")],
    )];
    let msg = conflict_of(decide(&ecmp, pod, ME)).describe(pod, "vtb-1");
    assert!(msg.contains("Instance i-me and Instance i-other"), "{msg}");
    // Another kind of next hop (a NAT instance's ENI, a VPN gateway…) is not ours either.
    let eni = [entry(
        "rte-n",
        "10.244.1.0/24",
        "Custom",
        &[("NetworkInterface", "eni-1")],
    )];
    assert!(matches!(decide(&eni, pod, ME), RouteCheck::Conflict(_)));
}

#[test]
fn more_specific_entries_inside_the_cidr_must_be_ours_covering_ones_do_not_matter() {
    let pod = cidr("10.244.1.0/24");
    // Part of our CIDR goes elsewhere: the more specific route wins in the VPC.
    let part = [
        custom("rte-mine", "10.244.1.0/24", ME),
        custom("rte-part", "10.244.1.128/25", "i-other"),
    ];
    let c = conflict_of(decide(&part, pod, ME));
    assert_eq!(c.entry_id, "rte-part");
    assert!(
        c.describe(pod, "vtb-1").contains(
            "10.244.1.128/25 (part of pod_cidr 10.244.1.0/24) is already routed to Instance i-other"
        ),
        "{}",
        c.describe(pod, "vtb-1")
    );
    // A more specific one pointing at us is harmless.
    let ours = [custom("rte-sub", "10.244.1.0/25", ME)];
    assert_eq!(decide(&ours, pod, ME), RouteCheck::Missing);
    // A covering route (another cluster's /16 elsewhere, a default route) loses to ours.
    let covering = [
        custom("rte-16", "10.244.0.0/16", "i-other"),
        custom("rte-0", "0.0.0.0/0", "i-nat"),
    ];
    assert_eq!(decide(&covering, pod, ME), RouteCheck::Missing);
    // Neighbours and IPv6 entries do not matter.
    let others = [
        custom("rte-n", "10.244.2.0/24", "i-other"),
        custom("rte-6", "2408:4005::/64", "i-other"),
        custom("rte-bad", "not a cidr", "i-other"),
    ];
    assert_eq!(decide(&others, pod, ME), RouteCheck::Missing);
}

#[test]
fn a_vswitch_overlapping_the_cidr_is_a_conflict() {
    let pod = cidr("172.16.0.0/16");
    let c = conflict_of(decide(&[system("rte-s", "172.16.1.0/24")], pod, ME));
    let msg = c.describe(pod, "vtb-1");
    assert!(
        msg.starts_with("pod_cidr 172.16.0.0/16 overlaps the vSwitch CIDR 172.16.1.0/24 (system route rte-s in route table vtb-1)"),
        "{msg}"
    );
    let c = conflict_of(decide(
        &[system("rte-s", "172.16.0.0/12")],
        cidr("172.17.0.0/24"),
        ME,
    ));
    assert_eq!(c.kind, "System");
}

#[test]
fn the_route_table_is_the_vswitch_one_else_the_one_listing_it_else_the_system_one() {
    let t = |id: &str, kind: &str, vsw: &[&str]| RouteTableInfo {
        id: id.into(),
        kind: kind.into(),
        vswitch_ids: vsw.iter().map(|s| s.to_string()).collect(),
    };
    let tables = [
        t("vtb-sys", "System", &["vsw-a"]),
        t("vtb-custom", "Custom", &["vsw-b"]),
    ];
    assert_eq!(pick_table("vtb-own", &tables, "vsw-b").unwrap(), "vtb-own");
    assert_eq!(pick_table("", &tables, "vsw-b").unwrap(), "vtb-custom");
    assert_eq!(pick_table("", &tables, "vsw-c").unwrap(), "vtb-sys");
    assert_eq!(pick_table("", &tables[1..], "vsw-c"), None);
}

fn keeper(every: &str) -> RouteKeeper {
    let creds = Arc::new(CredentialProvider::new(
        CredentialSource::Static {
            access_key: "k".into(),
            access_secret: "s".into(),
        },
        None,
    ));
    let cfg = CloudConfig {
        ecs_endpoint: "http://127.0.0.1:9".into(),
        vpc_endpoint: "http://127.0.0.1:9".into(),
        ..CloudConfig::new("cn-hangzhou")
    };
    let client = Arc::new(RouteClient {
        ecs: Arc::new(Ecs::new(cfg, creds).unwrap()),
        table_id: "vtb-1".into(),
        instance_id: ME.into(),
    });
    let config = Config::parse(&format!(
        r#"{{"daemon_mode":"VPC","pod_cidr":"10.244.1.0/24","vpc_route":true,"ip_pool_sync_period":"{every}"}}"#
    ))
    .unwrap();
    let first = Ensured::Created {
        entry_id: "rte-1".into(),
        status: "Creating".into(),
    };
    RouteKeeper::new(client, &config, cidr("10.244.1.0/24"), &first, 1_000)
}

fn done(c: &str, result: std::result::Result<Ensured, String>) -> RouteDone {
    RouteDone {
        cidr: cidr(c),
        stale: None,
        result,
    }
}

#[test]
fn the_keeper_checks_every_period_one_check_at_a_time() {
    let mut k = keeper("2s");
    let v = k.view(1_000);
    assert_eq!(
        (v.state.as_str(), v.detail.as_str()),
        ("present", "rte-1 (Creating)")
    );
    assert_eq!(v.repairs, 0, "created at start is not a repair");
    assert_eq!(k.next_deadline(), Some(3_000));
    assert!(k.plan(2_999).is_none());
    assert!(k.plan(3_000).is_some());
    assert!(k.plan(10_000).is_none(), "one check at a time");
    assert_eq!(k.next_deadline(), None);
    let present = Ensured::Present {
        entry_id: "rte-1".into(),
        status: "Available".into(),
    };
    k.apply(done("10.244.1.0/24", Ok(present)), 3_500);
    assert_eq!(k.next_deadline(), Some(5_000));
    let v = k.view(6_500);
    assert_eq!(v.detail, "rte-1 (Available)");
    assert_eq!(v.checked_seconds_ago, Some(3));
}

#[test]
fn the_keeper_counts_repairs_and_reports_conflicts_and_errors() {
    let mut k = keeper("1s");
    assert!(k.plan(2_000).is_some());
    k.apply(
        done(
            "10.244.1.0/24",
            Ok(Ensured::Created {
                entry_id: "rte-2".into(),
                status: "Available".into(),
            }),
        ),
        2_100,
    );
    let v = k.view(2_100);
    assert_eq!((v.state.as_str(), v.repairs), ("present", 1));
    assert_eq!(v.detail, "rte-2 (Available)");
    assert!(k.plan(3_100).is_some());
    k.apply(
        done(
            "10.244.1.0/24",
            Ok(Ensured::Conflict(
                "pod_cidr … is routed to Instance i-x".into(),
            )),
        ),
        3_200,
    );
    assert_eq!(k.view(3_200).state, "conflict");
    assert!(k.plan(4_200).is_some());
    k.apply(
        done("10.244.1.0/24", Err("Throttling.User: slow down".into())),
        4_300,
    );
    let v = k.view(4_300);
    assert_eq!(
        (v.state.as_str(), v.detail.as_str()),
        ("error", "Throttling.User: slow down")
    );
    // Still checked on schedule.
    assert_eq!(k.next_deadline(), Some(5_200));
}

#[test]
fn a_new_pod_cidr_is_checked_at_once_and_the_old_entry_goes() {
    let mut k = keeper("60s");
    let config = Config::parse(
        r#"{"daemon_mode":"VPC","pod_cidr":"10.244.9.0/24","vpc_route":true,"ip_pool_sync_period":"60s"}"#,
    )
    .unwrap();
    // A check of the old CIDR is running when the reload comes.
    assert!(k.plan(61_000).is_some());
    k.reload(&config, cidr("10.244.9.0/24"), 0);
    assert_eq!(k.view(61_000).state, "unchecked");
    assert_eq!(k.view(61_000).destination, "10.244.9.0/24");
    let old = Ensured::Present {
        entry_id: "rte-1".into(),
        status: "Available".into(),
    };
    k.apply(done("10.244.1.0/24", Ok(old)), 61_500);
    assert_eq!(
        k.view(61_500).state,
        "unchecked",
        "a stale answer is not taken"
    );
    assert_eq!(
        k.next_deadline(),
        Some(61_500),
        "the new CIDR is checked at once"
    );
    assert!(k.plan(61_500).is_some());
    assert_eq!(k.stale, Some(cidr("10.244.1.0/24")));
    let created = Ensured::Created {
        entry_id: "rte-9".into(),
        status: "Creating".into(),
    };
    k.apply(
        RouteDone {
            cidr: cidr("10.244.9.0/24"),
            stale: Some(cidr("10.244.1.0/24")),
            result: Ok(created),
        },
        62_000,
    );
    assert_eq!(k.stale, None, "the old entry is gone");
    assert_eq!(k.view(62_000).state, "present");
}
