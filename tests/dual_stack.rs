//! Dual stack (`ip_stack: dual`) end to end, as root, on the emulator's netns VPC: in every mode
//! pods get an IPv4 and an IPv6 VPC address, reach each other and the nodes in both families
//! across nodes, cannot send from an IPv6 their ENI does not own, and give both back on DEL; a
//! crash in a burst loses and duplicates nothing of either family; reconcile notices an IPv6
//! removed behind the daemon's back; a type with unequal IPv4/IPv6 counts is refused.

mod common;

use common::cloud::{Cloud, CloudSpec, EniNode};
use common::*;
use nix::sys::signal::Signal;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv6Addr;
use std::time::Duration;

fn dual_cloud(extra: Value) -> Cloud {
    let mut node_extra = json!({"ip_stack": "dual", "ip_pool_sync_period": "500ms",
        "orphan_grace_period": "0s"});
    for (k, v) in extra.as_object().unwrap() {
        node_extra[k] = v.clone();
    }
    Cloud::start(CloudSpec {
        node_extra,
        ..CloudSpec::default()
    })
}

fn add(node: &EniNode, id: &str) -> (Netns, CniOutcome) {
    let pod = Netns::new("twpod");
    let r = node.cni("ADD", id, &pod.path());
    r.assert_ok();
    (pod, r)
}

/// Pings `ip` (either family) from `pod` with source `from`.
fn ping_from(pod: &Netns, from: &str, ip: &str) -> bool {
    pod.exec(&["ping", "-c", "1", "-W", "2", "-I", from, ip])
        .status
        .success()
}

/// Every live address (IPv4 and IPv6) of each of the node's terway ENIs in the emulator.
fn cloud_addresses(cloud: &Cloud, instance: &str) -> PerEni {
    let model = cloud.admin("GET", "/admin/model", None);
    let mut out = BTreeMap::new();
    for e in model["enis"].as_array().expect("model has enis") {
        let ours = e["tags"]
            .as_array()
            .is_some_and(|t| t.iter().any(|kv| kv[1] == instance));
        if e["eni_type"] == "Primary" || !ours || e["status"] == "Deleting" {
            continue;
        }
        let mut ips = BTreeSet::from([e["primary_ip"].as_str().unwrap().to_string()]);
        for rec in e["secondary"].as_array().into_iter().flatten() {
            if rec["removed"].is_null() {
                ips.insert(rec["ip"].as_str().unwrap().to_string());
            }
        }
        for rec in e["ipv6"].as_array().into_iter().flatten() {
            if rec["removed"].is_null() {
                ips.insert(rec["ip"].as_str().unwrap().to_string());
            }
        }
        out.insert(e["id"].as_str().unwrap().to_string(), ips);
    }
    out
}

/// Addresses per ENI id.
type PerEni = BTreeMap<String, BTreeSet<String>>;

/// The daemon's pool per ENI: every address it holds (IPv4s and their IPv6 partners), and the
/// pairs pods own.
fn pool_addresses(node: &EniNode) -> (PerEni, Vec<(String, String)>) {
    let pool = node.pool();
    let mut per_eni = BTreeMap::new();
    let mut owned = Vec::new();
    for e in pool["eni"]["enis"].as_array().unwrap() {
        let mut ips = BTreeSet::new();
        for ip in e["ips"].as_array().unwrap() {
            let v4 = ip["ip"].as_str().unwrap().to_string();
            let v6 = ip["ip6"].as_str().map(str::to_string);
            ips.insert(v4.clone());
            if let Some(v6) = &v6 {
                ips.insert(v6.clone());
            }
            if !ip["owner"].is_null() {
                owned.push((
                    v4,
                    v6.unwrap_or_else(|| panic!("an owned IPv4 without IPv6: {ip}")),
                ));
            }
        }
        per_eni.insert(e["id"].as_str().unwrap().to_string(), ips);
    }
    (per_eni, owned)
}

/// Both families, audited: the pool holds exactly what the cloud has on each ENI (spares
/// aside, which the pool gives back), every pod's pair is on one ENI, nothing twice.
fn assert_families_in_step(cloud: &Cloud, node: &EniNode) {
    let ok = wait_until(Duration::from_secs(10), || {
        pool_addresses(node).0 == cloud_addresses(cloud, &node.ns)
    });
    let (pool, owned) = pool_addresses(node);
    assert!(
        ok,
        "pool {pool:?} vs cloud {:?}",
        cloud_addresses(cloud, &node.ns)
    );
    let mut seen = BTreeSet::new();
    for (v4, v6) in &owned {
        assert!(
            seen.insert(v4.clone()) && seen.insert(v6.clone()),
            "{v4}/{v6} twice"
        );
        assert!(
            pool.values()
                .any(|ips| ips.contains(v4) && ips.contains(v6)),
            "{v4} and {v6} on different ENIs: {pool:?}"
        );
    }
}

#[test]
fn shared_eni_pods_get_both_families_and_reach_each_other_and_the_nodes() {
    let cloud = dual_cloud(json!({"daemon_mode": "ENIMultiIP"}));
    let mut a = cloud.node(0);
    let mut b = cloud.node(1);
    a.start_daemon();
    b.start_daemon();
    let (pa, ra) = add(&a, "da");
    let (pb, rb) = add(&b, "db");
    let (pa2, ra2) = add(&a, "da2");
    // Both addresses (and both gateways) in the result; the IPv6 is a VPC one.
    let ips = ra.json["ips"].as_array().unwrap();
    assert_eq!(ips.len(), 2, "{}", ra.json);
    let v6: Ipv6Addr = ra.ip6().parse().unwrap();
    assert_eq!(v6.segments()[..3], [0x2408, 0x4005, 0x3c4], "{v6}");
    assert!(ips.iter().any(|i| i["gateway"] == "fe80::1"), "{}", ra.json);
    let (node_a6, node_b6) = (a.node_ip6(), b.node_ip6());
    for (from, to, what) in [
        (&pa, rb.ip(), "pod A -> pod B (IPv4)"),
        (&pa, rb.ip6(), "pod A -> pod B (IPv6)"),
        (&pb, ra.ip6(), "pod B -> pod A (IPv6)"),
        (&pa, ra2.ip6(), "pod -> pod on the same node (IPv6)"),
        (&pa, node_a6.clone(), "pod -> its node (IPv6)"),
        (&pa, node_b6.clone(), "pod A -> node B (IPv6)"),
        (&pb, node_a6.clone(), "pod B -> node A (IPv6)"),
    ] {
        assert!(from.ping(&to), "{what}: {to}");
    }
    let node_to_pod = sh(&[
        "ip",
        "netns",
        "exec",
        &a.ns,
        "ping",
        "-c1",
        "-W2",
        &ra.ip6(),
    ]);
    assert!(node_to_pod.status.success(), "node A -> its pod (IPv6)");

    // A source the pod's ENI does not own never leaves the VPC: B's pod address, spoofed.
    pa.exec(&[
        "ip",
        "-6",
        "addr",
        "add",
        &format!("{}/128", rb.ip6()),
        "dev",
        "eth0",
        "nodad",
    ]);
    assert!(
        !ping_from(&pa, &rb.ip6(), &node_b6),
        "spoofed IPv6 source dropped"
    );
    assert!(ping_from(&pa, &ra.ip6(), &node_b6), "its own source passes");

    // mapping and pool show both families.
    let text = String::from_utf8_lossy(&a.cli(&["mapping"]).stdout).to_string();
    assert!(text.contains("IPv6") && text.contains(&ra.ip6()), "{text}");
    assert_families_in_step(&cloud, &a);

    // DEL gives both back: the pair is idle again, the pod cut off in both families.
    // (DEL returns at once; the daemon removes the veth, then frees the pair.)
    a.cni("DEL", "da2", &pa2.path()).assert_ok();
    a.cni("DEL", "da2", &pa2.path()).assert_ok();
    let held = vec![(ra.ip(), ra.ip6())];
    let freed = wait_until(Duration::from_secs(5), || pool_addresses(&a).1 == held);
    assert!(freed, "only da's pair is held: {:?}", pool_addresses(&a).1);
    assert!(!pa.ping(&ra2.ip6()), "cut off after DEL");
    for (node, pod, id) in [(&a, &pa, "da"), (&b, &pb, "db")] {
        node.cni("DEL", id, &pod.path()).assert_ok();
    }
    assert!(wait_until(Duration::from_secs(5), || pool_addresses(&a)
        .1
        .is_empty()));
    assert_families_in_step(&cloud, &a);
}

#[test]
fn reconcile_notices_an_ipv6_removed_behind_the_daemons_back() {
    let cloud = dual_cloud(json!({"daemon_mode": "ENIMultiIP"}));
    let mut a = cloud.node(0);
    a.start_daemon();
    let (_p, r) = add(&a, "gone6");
    let pool = a.pool();
    let eni = pool["eni"]["enis"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| {
            e["ips"]
                .as_array()
                .unwrap()
                .iter()
                .any(|i| i["ip"] == r.ip().as_str())
        })
        .unwrap_or_else(|| panic!("{pool}"))["id"]
        .as_str()
        .unwrap()
        .to_string();
    let v6: Ipv6Addr = r.ip6().parse().unwrap();
    cloud.operator(0).unassign_ipv6(&eni, &[v6]).unwrap();
    let lost = || {
        a.pool()["eni"]["enis"].as_array().unwrap().iter().any(|e| {
            e["ips"]
                .as_array()
                .unwrap()
                .iter()
                .any(|i| i["ip"] == r.ip().as_str() && i["lost"] == true)
        })
    };
    assert!(wait_until(Duration::from_secs(10), lost), "{}", a.pool());
    assert!(
        a.log()
            .contains(&format!("no longer has the IPv6 address(es) {v6}")),
        "{}",
        a.log()
    );
    let text = String::from_utf8_lossy(&a.cli(&["mapping"]).stdout).to_string();
    assert!(
        text.contains("Error: the cloud no longer has this address"),
        "{text}"
    );
}

#[test]
fn sigkill_during_a_dual_stack_burst_loses_and_duplicates_nothing() {
    let cloud = Cloud::start(CloudSpec {
        attach_ms: 1500,
        node_extra: json!({"ip_stack": "dual", "daemon_mode": "ENIMultiIP",
            "ip_pool_sync_period": "500ms"}),
        ..CloudSpec::default()
    });
    let mut a = cloud.node(0);
    a.start_daemon();
    let pods: Vec<Netns> = (0..12).map(|_| Netns::new("twpod")).collect();
    let pid = a.daemon.as_ref().unwrap().pid();
    let first: Vec<Option<(String, String)>> = std::thread::scope(|s| {
        let hs: Vec<_> = pods
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let a = &a;
                s.spawn(move || {
                    let r = a.cni("ADD", &format!("burst-{i}"), &p.path());
                    r.ok.then(|| (r.ip(), r.ip6()))
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(800));
        nix::sys::signal::kill(pid, Signal::SIGKILL).unwrap();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    a.stop_daemon(Signal::SIGKILL);
    assert!(
        first.iter().any(Option::is_none),
        "the kill must have hit pods still waiting"
    );
    a.start_daemon();
    let mut all = BTreeSet::new();
    for (i, p) in pods.iter().enumerate() {
        let r = a.cni("ADD", &format!("burst-{i}"), &p.path());
        r.assert_ok();
        let pair = (r.ip(), r.ip6());
        if let Some(old) = &first[i] {
            assert_eq!(&pair, old, "pod {i} kept both addresses across the crash");
        }
        assert!(
            all.insert(pair.0.clone()) && all.insert(pair.1.clone()),
            "{pair:?} twice"
        );
    }
    assert_families_in_step(&cloud, &a);
    for (i, p) in pods.iter().enumerate() {
        a.cni("DEL", &format!("burst-{i}"), &p.path()).assert_ok();
    }
    assert!(wait_until(Duration::from_secs(10), || pool_addresses(&a)
        .1
        .is_empty()));
    assert_families_in_step(&cloud, &a);
}

#[test]
fn a_type_with_unequal_ipv4_and_ipv6_counts_is_refused_in_shared_eni_mode() {
    let cloud = Cloud::start(CloudSpec {
        node_extra: json!({"ip_stack": "dual", "daemon_mode": "ENIMultiIP"}),
        region: Box::new(|r: &mut Value| {
            r["instances"][0]["instance_type"] = json!("ecs.c6-v6unequal.large");
        }),
        ..CloudSpec::default()
    });
    let node = cloud.node(0);
    let out = sh(&[
        "ip",
        "netns",
        "exec",
        &node.ns,
        BIN,
        "daemon",
        "--config",
        node.config.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains(
            "instance type ecs.c6-v6unequal.large supports 6 IPv4 and 1 IPv6 addresses per ENI"
        ) && err.contains("IPv4 and IPv6 counts per ENI are the same"),
        "{err}"
    );
}

#[test]
fn exclusive_eni_pods_carry_their_enis_ipv6() {
    let cloud = dual_cloud(json!({"daemon_mode": "ENIOnly"}));
    let mut a = cloud.node(0);
    let mut b = cloud.node(1);
    a.start_daemon();
    b.start_daemon();
    let (pa, ra) = add(&a, "xa");
    let (pb, rb) = add(&b, "xb");
    let v6 = ra.json["ips"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["address"].as_str().unwrap().contains(':'))
        .unwrap_or_else(|| panic!("{}", ra.json))
        .clone();
    assert!(v6["address"].as_str().unwrap().ends_with("/64"), "{v6}");
    assert!(pa.ping(&rb.ip6()), "pod A -> pod B (IPv6)");
    assert!(pb.ping(&ra.ip6()), "pod B -> pod A (IPv6)");
    assert!(pa.ping(&rb.ip()), "pod A -> pod B (IPv4)");
    let pool = a.pool();
    let eni = &pool["eni"]["enis"][0]["ips"][0];
    assert_eq!(eni["ip6"], ra.ip6().as_str(), "{pool}");
    a.cni("DEL", "xa", &pa.path()).assert_ok();
    b.cni("DEL", "xb", &pb.path()).assert_ok();
    assert!(wait_until(Duration::from_secs(5), || a.pool()["in_use"] == 0));
}

#[test]
fn vpc_mode_pods_get_the_ipv6_prefixs_address_and_the_daemon_routes_it() {
    let cidrs = [
        ("10.244.1.0/24", "fd00:244:1::/64"),
        ("10.244.2.0/24", "fd00:244:2::/64"),
    ];
    let cloud = dual_cloud(json!({"daemon_mode": "VPC", "vpc_route": true}));
    for (i, (c4, c6)) in cidrs.iter().enumerate() {
        cloud.edit_node_config(i, |v| {
            v["pod_cidr"] = json!(c4);
            v["pod_cidr_v6"] = json!(c6);
        });
    }
    let mut a = cloud.node(0);
    let mut b = cloud.node(1);
    a.start_daemon();
    b.start_daemon();
    let (pa, ra) = add(&a, "va");
    let (pb, rb) = add(&b, "vb");
    assert_eq!(
        (ra.ip(), ra.ip6()),
        ("10.244.1.2".into(), "fd00:244:1::2".into())
    );
    assert!(rb.ip6().starts_with("fd00:244:2::"), "{}", rb.json);
    let pool = a.pool();
    assert_eq!(pool["pod_cidr_v6"], "fd00:244:1::/64", "{pool}");
    assert_eq!(pool["vpc_route_v6"]["state"], "present", "{pool}");
    assert!(
        pa.ping(&rb.ip6()),
        "pod A -> pod B (IPv6) through the VPC route entry"
    );
    assert!(pb.ping(&ra.ip6()), "pod B -> pod A (IPv6)");
    assert!(pa.ping(&rb.ip()), "pod A -> pod B (IPv4)");
    assert!(pa.ping(&a.node_ip6()), "pod -> its node (IPv6)");
    a.cni("DEL", "va", &pa.path()).assert_ok();
    assert!(wait_until(Duration::from_secs(5), || a.pool()["in_use"] == 0));
    assert!(!pb.ping(&ra.ip6()), "cut off after DEL");
}
