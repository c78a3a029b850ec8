//! Shared ENI mode (ENIMultiIP) end to end, as root, on the emulator's netns topology: the real
//! daemon per instance namespace speaks the signed OpenAPI and metadata of `terway emulate`,
//! pods are wired by the real plugin, and packets cross the emulated VPC, whose strict
//! reverse-path filter drops anything leaving through an ENI that does not own its source.

mod common;

use common::cloud::{Cloud, CloudSpec, EniNode};
use common::*;
use nix::sys::signal::Signal;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::time::Duration;

/// Runs ADD for `n` pods in parallel on `node`; returns (pod namespaces, their IPs).
fn add_pods(node: &EniNode, prefix: &str, n: usize) -> (Vec<Netns>, Vec<String>) {
    let pods: Vec<Netns> = (0..n).map(|_| Netns::new("twpod")).collect();
    let ips = std::thread::scope(|s| {
        let hs: Vec<_> = pods
            .iter()
            .enumerate()
            .map(|(i, p)| {
                s.spawn(move || {
                    let r = node.cni("ADD", &format!("{prefix}-{i}"), &p.path());
                    r.assert_ok();
                    r.ip()
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    (pods, ips)
}

fn del_pods(node: &EniNode, prefix: &str, pods: &[Netns]) {
    for (i, p) in pods.iter().enumerate() {
        node.cni("DEL", &format!("{prefix}-{i}"), &p.path())
            .assert_ok();
    }
}

/// Every address the cloud has on the instance's secondary ENIs, and the ENIs it has for it.
fn cloud_view(cloud: &Cloud, instance: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let model = cloud.admin("GET", "/admin/model", None);
    let mut ips = BTreeSet::new();
    let mut enis = BTreeSet::new();
    for e in model["enis"].as_array().expect("model has enis") {
        let tagged_for_node = e["tags"]
            .as_array()
            .is_some_and(|t| t.iter().any(|kv| kv[1] == instance));
        // A `Deleting` ENI is on its way out (DeleteNetworkInterface is asynchronous).
        if e["eni_type"] == "Primary" || !tagged_for_node || e["status"] == "Deleting" {
            continue;
        }
        enis.insert(e["id"].as_str().unwrap().to_string());
        ips.insert(e["primary_ip"].as_str().unwrap().to_string());
        for s in e["secondary"].as_array().into_iter().flatten() {
            if s["removed"].is_null() {
                ips.insert(s["ip"].as_str().unwrap().to_string());
            }
        }
    }
    (ips, enis)
}

/// [`assert_no_leaks`] once the operations still in flight are done: a call retried after
/// throttling may wait out its back-off (up to 20 s) before its delete or unassign goes out.
fn assert_no_leaks_once_settled(cloud: &Cloud, node: &EniNode) {
    wait_until(Duration::from_secs(30), || {
        let (daemon_ips, daemon_enis) = daemon_view(node);
        (daemon_ips, daemon_enis) == cloud_view(cloud, &node.ns)
    });
    assert_no_leaks(cloud, node);
}

/// Every address and ENI the daemon's pool has.
fn daemon_view(node: &EniNode) -> (BTreeSet<String>, BTreeSet<String>) {
    let pool = node.pool();
    let mut daemon_ips = BTreeSet::new();
    let mut daemon_enis = BTreeSet::new();
    for e in pool["eni"]["enis"].as_array().unwrap() {
        daemon_enis.insert(e["id"].as_str().unwrap().to_string());
        for ip in e["ips"].as_array().unwrap() {
            daemon_ips.insert(ip["ip"].as_str().unwrap().to_string());
        }
    }
    (daemon_ips, daemon_enis)
}

/// The daemon's pool and the cloud agree exactly: no leaked ENI or address, none missing.
fn assert_no_leaks(cloud: &Cloud, node: &EniNode) {
    let (daemon_ips, daemon_enis) = daemon_view(node);
    let (cloud_ips, cloud_enis) = cloud_view(cloud, &node.ns);
    assert_eq!(daemon_enis, cloud_enis, "ENIs: daemon vs cloud");
    assert_eq!(daemon_ips, cloud_ips, "addresses: daemon vs cloud");
}

#[test]
fn pods_on_two_nodes_reach_each_other_through_the_vpc() {
    let cloud = Cloud::start(CloudSpec::default());
    let mut a = cloud.node(0);
    let mut b = cloud.node(1);
    a.start_daemon();
    b.start_daemon();
    let (pods_a, ips_a) = add_pods(&a, "x", 3);
    let (pods_b, ips_b) = add_pods(&b, "y", 3);
    let (node_a, node_b) = (a.node_ip(), b.node_ip());
    for ip in ips_a.iter().chain(&ips_b) {
        assert!(ip.starts_with("172.16."), "a VPC address: {ip}");
    }
    // Across nodes the packets leave through the ENI that owns the pod address: the VPC's
    // strict reverse-path filter drops them otherwise.
    for (p, ip) in pods_a.iter().zip(&ips_b) {
        assert!(p.ping(ip), "pod on A -> pod {ip} on B");
    }
    assert!(pods_b[0].ping(&ips_a[2]), "pod on B -> pod on A");
    assert!(pods_a[0].ping(&ips_a[1]), "pod -> pod on the same node");
    assert!(pods_a[0].ping(&node_a), "pod -> its node");
    assert!(pods_b[1].ping(&node_a), "pod on B -> node A");
    assert!(
        sh(&[
            "ip", "netns", "exec", &a.ns, "ping", "-c1", "-W2", &ips_a[0]
        ])
        .status
        .success()
    );
    assert!(pods_a[2].ping(&node_b), "pod on A -> node B");

    let mapping = a.cli(&["mapping"]);
    let text = String::from_utf8_lossy(&mapping.stdout);
    assert!(
        mapping.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&mapping.stderr)
    );
    assert_eq!(text.matches("Normal").count(), 3, "{text}");
    assert!(text.contains("default/pod-x-0"), "{text}");
    let meta = a.cli(&["metadata"]);
    let mtext = String::from_utf8_lossy(&meta.stdout);
    assert!(meta.status.success(), "every ENI has a device: {mtext}");
    assert!(mtext.contains("device eth1"), "{mtext}");
    // Never the primary ENI for pods.
    let pool = a.pool();
    assert!(
        pool["eni"]["enis"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["primary_ip"] != node_a.as_str())
    );
    del_pods(&a, "x", &pods_a);
    del_pods(&b, "y", &pods_b);
    assert!(!pods_a[0].ping(&ips_b[0]), "cut off after DEL");
    assert_no_leaks(&cloud, &a);
    // An ENI whose device is not on the node is flagged by `terway metadata`. (Moved away, not
    // deleted: the emulated VPC, like the hardware, brings a deleted ENI device back.)
    let away = Netns::new("twaway");
    sh_ok(&[
        "ip", "-n", &a.ns, "link", "set", "eth1", "netns", &away.name,
    ]);
    let meta = a.cli(&["metadata"]);
    let mtext = String::from_utf8_lossy(&meta.stdout);
    assert!(!meta.status.success(), "{mtext}");
    assert!(mtext.contains("NO LINUX DEVICE"), "{mtext}");
}

#[test]
fn cold_node_burst_of_40_pods() {
    let cloud = Cloud::start(CloudSpec {
        attach_ms: 1000,
        ..CloudSpec::default()
    });
    let mut a = cloud.node(0);
    a.start_daemon();
    let t = std::time::Instant::now();
    let (pods, ips) = add_pods(&a, "burst", 40);
    let elapsed = t.elapsed();
    let distinct: HashSet<&String> = ips.iter().collect();
    assert_eq!(distinct.len(), 40, "{ips:?}");
    assert!(pods[0].ping(&ips[39]));
    let calls = cloud.admin("GET", "/admin/calls", None);
    eprintln!("40 pods ready in {elapsed:?}; calls: {calls}");
    let created = calls["CreateNetworkInterface"]["ok"].as_u64().unwrap_or(0);
    assert!(created <= 2, "40 pods fit in 2 ENIs of 30: {calls}");
    del_pods(&a, "burst", &pods);
    assert_no_leaks(&cloud, &a);
}

#[test]
fn a_cold_add_builds_its_veth_while_the_daemon_waits_for_an_eni() {
    let cloud = Cloud::start(CloudSpec {
        attach_ms: 1500,
        ..CloudSpec::default()
    });
    let mut a = cloud.node(0);
    a.start_daemon();
    let hint = terway::rpc::hint::path(std::path::Path::new(&a.socket));
    assert_eq!(std::fs::read_to_string(&hint).unwrap(), "veth_policy\n");
    let pod = Netns::new("twpod");
    let host_veth = terway::datapath::host_veth_name("early", "eth0");
    let r = std::thread::scope(|s| {
        let add = s.spawn(|| a.cni("ADD", "early", &pod.path()));
        // The pool is empty: the daemon waits for an ENI while the plugin builds the pair.
        assert!(
            wait_until(Duration::from_secs(10), || link_exists(&a.ns, &host_veth)),
            "the pair is built while the daemon allocates"
        );
        assert!(!add.is_finished(), "the ADD still waits for its address");
        let eth0 = pod.exec(&["ip", "-o", "addr", "show", "eth0"]);
        let eth0 = String::from_utf8_lossy(&eth0.stdout).to_string();
        assert!(
            !eth0.contains("inet "),
            "no address before the daemon's answer: {eth0}"
        );
        add.join().unwrap()
    });
    r.assert_ok();
    assert!(pod.ping(&a.node_ip()), "pod -> its node");
    a.cni("DEL", "early", &pod.path()).assert_ok();
    assert_no_leaks(&cloud, &a);
}

#[test]
fn pool_stays_within_watermarks_under_churn() {
    let cloud = Cloud::start(CloudSpec {
        node_extra: json!({"min_pool_size": 2, "max_pool_size": 5, "idle_ip_reclaim_after": "1s",
            "ip_pool_sync_period": "500ms"}),
        ..CloudSpec::default()
    });
    let mut a = cloud.node(0);
    a.start_daemon();
    let idle = |n: &EniNode| n.pool()["idle"].as_u64().unwrap();
    assert!(
        wait_until(Duration::from_secs(20), || idle(&a) >= 2),
        "warm pool reaches min_pool_size: {}",
        a.pool()
    );
    let pods: Vec<Netns> = (0..8).map(|_| Netns::new("twpod")).collect();
    let mut live = vec![false; pods.len()];
    let mut x: u64 = 0x9e3779b97f4a7c15;
    for round in 0..40 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let i = (x % pods.len() as u64) as usize;
        let cmd = if live[i] { "DEL" } else { "ADD" };
        a.cni(cmd, &format!("churn-{i}"), &pods[i].path())
            .assert_ok();
        live[i] = !live[i];
        if round % 10 == 9 {
            std::thread::sleep(Duration::from_millis(300));
        }
    }
    // Settled: idle back between the watermarks.
    assert!(
        wait_until(Duration::from_secs(20), || (2..=5).contains(&idle(&a))),
        "idle within [2, 5] after churn: {}",
        a.pool()
    );
    // (A DEL's address is freed once the daemon's teardown is done.)
    let alive = live.iter().filter(|l| **l).count() as u64;
    let in_use = || a.pool()["in_use"].as_u64().unwrap();
    wait_until(Duration::from_secs(5), || in_use() == alive);
    assert_eq!(in_use(), alive);
    for (i, p) in pods.iter().enumerate() {
        if live[i] {
            a.cni("DEL", &format!("churn-{i}"), &p.path()).assert_ok();
        }
    }
    assert!(wait_until(Duration::from_secs(20), || idle(&a) <= 5));
    assert_no_leaks(&cloud, &a);
}

#[test]
fn vswitch_exhaustion_fails_fast_and_a_new_vswitch_recovers() {
    let cloud = Cloud::start(CloudSpec::default());
    let vsw_a = cloud.vswitches[0].clone();
    let vsw_b = cloud.vswitches[1].clone();
    let zone: String = {
        let v: Value =
            serde_json::from_slice(&std::fs::read(cloud.node_config(0)).unwrap()).unwrap();
        v["vswitches"]
            .as_object()
            .unwrap()
            .keys()
            .next()
            .unwrap()
            .clone()
    };
    cloud.edit_node_config(0, |v| v["vswitches"] = json!({ zone.clone(): [vsw_a] }));
    cloud.admin(
        "PUT",
        "/admin/faults",
        Some(&json!({"vswitch_free_cap": { vsw_a.as_str(): 0 }})),
    );
    let mut a = cloud.node(0);
    a.start_daemon();
    let pod = Netns::new("twpod");
    let t = std::time::Instant::now();
    let r = a.cni("ADD", "exh-0", &pod.path());
    assert!(!r.ok, "{}", r.json);
    assert_eq!(r.code(), 11, "{}", r.json);
    let details = r.json["details"].as_str().unwrap();
    let expected = format!("The specified VSwitch \"{vsw_a}\" has not enough IpAddress.");
    assert!(details.contains(&expected), "{details}");
    assert!(
        t.elapsed() < Duration::from_secs(30),
        "fails fast, not after the wait timeout"
    );
    assert!(
        a.log().contains(&expected),
        "the node log names the vSwitch"
    );
    let pool = a.pool();
    assert_eq!(
        pool["eni"]["blocked_vswitches"][0]["id"],
        vsw_a.as_str(),
        "{pool}"
    );

    // The seed's fix: add another vSwitch of the zone, reload, pods start.
    cloud.edit_node_config(0, |v| {
        v["vswitches"] = json!({ zone.clone(): [vsw_a, vsw_b] })
    });
    nix::sys::signal::kill(a.daemon.as_ref().unwrap().pid(), Signal::SIGHUP).unwrap();
    assert!(wait_until(Duration::from_secs(5), || a
        .log()
        .contains("reload")));
    let r = a.cni("ADD", "exh-0", &pod.path());
    r.assert_ok();
    assert!(
        r.ip().starts_with("172.16.1."),
        "an address of {vsw_b}: {}",
        r.ip()
    );
    a.cni("DEL", "exh-0", &pod.path()).assert_ok();
}

#[test]
fn throttling_and_injected_errors_still_serve_every_pod_without_leaks() {
    // Small watermarks and a quick reclaim make the daemon call the cloud a lot: creates,
    // assigns, unassigns and deletes all meet the injected faults.
    let cloud = Cloud::start(CloudSpec {
        node_extra: json!({"min_pool_size": 0, "max_pool_size": 1, "idle_ip_reclaim_after": "300ms",
            "ip_pool_sync_period": "500ms"}),
        ..CloudSpec::default()
    });
    cloud.admin(
        "PUT",
        "/admin/faults",
        Some(&json!({"error_rate": 0.2, "lost_answer_rate": 0.1, "conflict_rate": 0.1,
            "rate_limits": {"AssignPrivateIpAddresses": 3,
            "CreateNetworkInterface": 2, "UnassignPrivateIpAddresses": 3, "DescribeNetworkInterfaces": 1}})),
    );
    let mut a = cloud.node(0);
    a.start_daemon();
    for wave in 0..3 {
        let prefix = format!("flaky{wave}");
        let (pods, ips) = add_pods(&a, &prefix, 12);
        assert_eq!(ips.iter().collect::<HashSet<_>>().len(), 12);
        assert!(pods[0].ping(&ips[11]));
        del_pods(&a, &prefix, &pods);
        std::thread::sleep(Duration::from_millis(800));
    }
    let calls = cloud.admin("GET", "/admin/calls", None);
    eprintln!("calls under faults: {calls}");
    let errors: u64 = calls
        .as_object()
        .unwrap()
        .values()
        .map(|c| c["total"].as_u64().unwrap_or(0) - c["ok"].as_u64().unwrap_or(0))
        .sum();
    assert!(errors >= 3, "the faults must actually have hit: {calls}");
    assert!(
        calls.to_string().contains("Throttling"),
        "throttling must have hit too: {calls}"
    );
    // Faults off, the pool settles (idle above max_pool_size is released), then the cloud and
    // the daemon must agree exactly.
    cloud.admin("PUT", "/admin/faults", Some(&json!({})));
    assert!(
        wait_until(Duration::from_secs(30), || a.pool()["idle"].as_u64()
            <= Some(1)
            && a.pool()["eni"]["pending_ips"] == 0),
        "settles: {}",
        a.pool()
    );
    assert_no_leaks_once_settled(&cloud, &a);
}

#[test]
fn sigkill_mid_burst_loses_and_duplicates_nothing() {
    let cloud = Cloud::start(CloudSpec {
        attach_ms: 2000,
        ..CloudSpec::default()
    });
    let mut a = cloud.node(0);
    a.start_daemon();
    let pods: Vec<Netns> = (0..20).map(|_| Netns::new("twpod")).collect();
    let pid = a.daemon.as_ref().unwrap().pid();
    let first: Vec<Option<String>> = std::thread::scope(|s| {
        let hs: Vec<_> = pods
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let a = &a;
                s.spawn(move || {
                    let r = a.cni("ADD", &format!("kill-{i}"), &p.path());
                    r.ok.then(|| r.ip())
                })
            })
            .collect();
        // Mid-burst: the first ENI is still attaching.
        std::thread::sleep(Duration::from_millis(1000));
        nix::sys::signal::kill(pid, Signal::SIGKILL).unwrap();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    a.stop_daemon(Signal::SIGKILL);
    let failed = first.iter().filter(|f| f.is_none()).count();
    assert!(failed > 0, "the kill must have hit pods still waiting");
    a.start_daemon();
    // The runtime retries every failed ADD; a succeeded one keeps its address.
    let mut ips: BTreeMap<usize, String> = BTreeMap::new();
    for (i, p) in pods.iter().enumerate() {
        let r = a.cni("ADD", &format!("kill-{i}"), &p.path());
        r.assert_ok();
        if let Some(old) = &first[i] {
            assert_eq!(&r.ip(), old, "pod {i} kept its address across the crash");
        }
        ips.insert(i, r.ip());
    }
    let distinct: HashSet<&String> = ips.values().collect();
    assert_eq!(distinct.len(), 20, "no address handed out twice: {ips:?}");
    assert!(pods[3].ping(&ips[&17]));
    del_pods(&a, "kill", &pods);
    assert_no_leaks_once_settled(&cloud, &a);
}

/// DeleteNetworkInterface is asynchronous: the daemon deletes an ENI leaked for its node once,
/// and leaves one that is already `Deleting` to finish, however many resyncs it lasts.
#[test]
fn leaked_enis_are_deleted_once_and_deleting_ones_are_left_alone() {
    let cloud = Cloud::start(CloudSpec {
        node_extra: json!({"ip_pool_sync_period": "500ms"}),
        region: Box::new(|r| r["timing"]["delete_delay_ms"] = json!(3000)),
        ..CloudSpec::default()
    });
    let mut a = cloud.node(0);
    let ecs = cloud.operator(0);
    let v: Value = serde_json::from_slice(&std::fs::read(cloud.node_config(0)).unwrap()).unwrap();
    let sgs = vec![v["security_group"].as_str().unwrap().to_string()];
    let tags = vec![
        ("creator".to_string(), "terway".to_string()),
        ("terway.node".to_string(), a.ns.clone()),
    ];
    let vsw = &cloud.vswitches[0];
    let leaked = ecs.create_eni(vsw, &sgs, 1, &tags, "", "").unwrap();
    let dying = ecs.create_eni(vsw, &sgs, 0, &tags, "", "").unwrap();
    ecs.delete_eni(&dying.id).unwrap();
    cloud.admin("DELETE", "/admin/calls", None);
    a.start_daemon();
    let status = |id: &str| {
        let f = terway::cloud::ecs::EniFilter {
            eni_ids: vec![id.to_string()],
            ..Default::default()
        };
        ecs.describe_enis(&f)
            .unwrap()
            .first()
            .map(|e| e.status.clone())
    };
    assert!(
        wait_until(Duration::from_secs(10), || status(&leaked.id).as_deref()
            != Some("Available")),
        "the leaked ENI is deleted: {}",
        a.log()
    );
    // Several resyncs while the other one is still `Deleting`.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(status(&dying.id).as_deref(), Some("Deleting"));
    let calls = cloud.admin("GET", "/admin/calls", None);
    assert_eq!(
        calls["DeleteNetworkInterface"]["total"], 1,
        "one delete, of the leaked ENI only: {calls}"
    );
    assert!(
        wait_until(Duration::from_secs(10), || status(&dying.id).is_none()
            && status(&leaked.id).is_none()),
        "both gone"
    );
    assert_no_leaks(&cloud, &a);
}

#[test]
fn a_start_lists_the_nodes_enis_once() {
    Cloud::start(CloudSpec::default()).assert_a_start_lists_once_and_deletes_the_leak();
}

#[test]
fn restart_reconciles_with_the_cloud_and_mapping_reports_the_difference() {
    let cloud = Cloud::start(CloudSpec::default());
    let mut a = cloud.node(0);
    a.start_daemon();
    let (pods, ips) = add_pods(&a, "rec", 2);
    a.stop_daemon(Signal::SIGTERM);
    let eni_id = cloud_view(&cloud, &a.ns)
        .1
        .into_iter()
        .next()
        .expect("one ENI");
    let ecs = cloud.operator(0);
    // Behind the daemon's back: a pod's address is taken away, and one more is added. (An
    // ENI's primary IP cannot be unassigned: take the other pod's.)
    let primary = pool_primary(&a);
    let victim = if ips[1] != primary { 1 } else { 0 };
    let survivor = 1 - victim;
    let lost: std::net::Ipv4Addr = ips[victim].parse().unwrap();
    // Assign first: the cloud would hand the just-unassigned address straight back.
    let extra = ecs.assign_ips(&eni_id, 1).unwrap()[0].to_string();
    ecs.unassign_ips(&eni_id, &[lost]).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    a.start_daemon();
    assert!(
        a.log().contains(&format!("the cloud no longer has {lost}")),
        "{}",
        a.log()
    );
    let mapping = a.cli(&["mapping"]);
    let text = String::from_utf8_lossy(&mapping.stdout).into_owned();
    assert!(
        !mapping.status.success(),
        "an error row makes mapping fail: {text}"
    );
    let row = text
        .lines()
        .find(|l| l.contains(&format!(".{lost} ")))
        .unwrap_or("");
    assert!(row.starts_with("Error"), "{text}");
    assert!(
        row.contains(&format!("pod-rec-{victim}")),
        "the pod is named: {text}"
    );
    let idle = text
        .lines()
        .find(|l| l.contains(&format!(".{extra} ")))
        .unwrap_or("");
    assert!(idle.starts_with("Idle"), "adopted as idle: {text}");
    // The other pod keeps working.
    assert!(pods[survivor].ping(&a.node_ip()));
    del_pods(&a, "rec", &pods);
    std::thread::sleep(Duration::from_millis(500));
    assert_no_leaks(&cloud, &a);
}

/// The first ENI's primary address as the saved pool recorded it.
fn pool_primary(node: &EniNode) -> String {
    let state: Value = node.stored_state();
    state["eni"]["pool"]["enis"][0]["primary_ip"]
        .as_str()
        .expect("the saved pool names its ENI's primary IP")
        .to_string()
}

#[test]
fn addresses_of_pods_from_before_a_reboot_return_to_the_pool() {
    let cloud = Cloud::start(CloudSpec::default());
    let mut a = cloud.node(0);
    a.start_daemon();
    let (_pods, _ips) = add_pods(&a, "boot", 2);
    let before = a.pool();
    a.stop_daemon(Signal::SIGTERM);
    let mut state: Value = serde_json::from_slice(&std::fs::read(&a.state).unwrap()).unwrap();
    state["boot_id"] = json!("00000000-0000-0000-0000-000000000000");
    std::fs::write(&a.state, serde_json::to_vec(&state).unwrap()).unwrap();
    a.start_daemon();
    let after = a.pool();
    assert_eq!(after["in_use"], 0, "{after}");
    assert_eq!(
        after["idle"].as_u64().unwrap(),
        before["idle"].as_u64().unwrap() + 2,
        "the two addresses are idle again, not held for ever: {before} -> {after}"
    );
    assert_no_leaks(&cloud, &a);
}

/// Deleting an idle ENI while DescribeNetworkInterfaces fails: the status check's failure is a
/// failed delete (retried), never "the ENI is gone" — that would drop an attached ENI from the
/// pool (a leak until the next resync found it again).
#[test]
fn a_failed_status_check_never_drops_an_attached_eni() {
    let cloud = Cloud::start(CloudSpec {
        node_extra: json!({"min_pool_size": 0, "max_pool_size": 0,
            "idle_ip_reclaim_after": "1s", "ip_pool_sync_period": "500ms"}),
        ..CloudSpec::default()
    });
    let mut a = cloud.node(0);
    a.start_daemon();
    let pod = Netns::new("twpod");
    a.cni("ADD", "idle", &pod.path()).assert_ok();
    let eni = a.pool()["eni"]["enis"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    cloud.admin(
        "PUT",
        "/admin/faults",
        Some(&json!({"error_rate": 1.0, "error_actions": ["DescribeNetworkInterfaces"]})),
    );
    a.cni("DEL", "idle", &pod.path()).assert_ok();
    let in_pool = |a: &EniNode| {
        a.pool()["eni"]["enis"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["id"] == eni.as_str())
    };
    // The address goes idle, the release plans the ENI's delete, whose status check fails
    // (after the client's retries): the op fails, or (the defect) the ENI leaves the pool.
    let settled = wait_until(Duration::from_secs(60), || {
        a.log().contains("cloud: InternalError")
            || a.log().contains("cloud: ServiceUnavailable")
            || !in_pool(&a)
    });
    assert!(settled, "{}", a.log());
    assert!(cloud_view(&cloud, &a.ns).1.contains(&eni), "still attached");
    assert!(
        in_pool(&a),
        "the pool must keep an ENI the cloud still has: {}",
        a.pool()
    );
    // Once the cloud answers again the delete goes through and nothing is left.
    cloud.admin("PUT", "/admin/faults", Some(&json!({})));
    assert!(
        wait_until(Duration::from_secs(30), || !in_pool(&a)
            && !cloud_view(&cloud, &a.ns).1.contains(&eni)),
        "{}",
        a.pool()
    );
    assert_no_leaks(&cloud, &a);
}
