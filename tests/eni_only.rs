//! Exclusive ENI mode (ENIOnly) end to end, as root, on the emulator's netns VPC: a pod takes a
//! whole ENI, whose device becomes its `eth0`, plus `veth1` to its node for the service CIDR and
//! node traffic. The real daemon per instance namespace, the real plugin, real packets.

mod common;

use common::cloud::{Cloud, CloudSpec, EniNode};
use common::*;
use nix::sys::signal::Signal;
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::time::Duration;

const SERVICE_CIDR: &str = "10.96.0.0/16";
const SERVICE_IP: &str = "10.96.0.10";

fn spec(extra: Value) -> CloudSpec {
    let mut node_extra = json!({
        "daemon_mode": "ENIOnly",
        "service_cidr": SERVICE_CIDR,
        "ip_pool_sync_period": "500ms",
        "orphan_grace_period": "0s",
    });
    for (k, v) in extra.as_object().unwrap() {
        node_extra[k] = v.clone();
    }
    CloudSpec {
        node_extra,
        ..CloudSpec::default()
    }
}

fn add(node: &EniNode, id: &str) -> (Netns, CniOutcome) {
    let pod = Netns::new("twpod");
    let r = node.cni("ADD", id, &pod.path());
    (pod, r)
}

/// The ENIs the emulator has for the node (terway's, not yet deleted) and the ENIs its pool has.
fn enis(cloud: &Cloud, node: &EniNode) -> (BTreeSet<String>, BTreeSet<String>) {
    let model = cloud.admin("GET", "/admin/model", None);
    let in_cloud = model["enis"]
        .as_array()
        .unwrap()
        .iter()
        // A `Deleting` ENI is on its way out (DeleteNetworkInterface is asynchronous).
        .filter(|e| e["eni_type"] != "Primary" && e["status"] != "Deleting")
        .filter(|e| {
            // Tagged by terway for this node (a user's own ENI is not the pool's).
            e["tags"]
                .as_array()
                .is_some_and(|t| t.iter().any(|kv| kv[1] == node.ns.as_str()))
        })
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect();
    let in_pool = node.pool()["eni"]["enis"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect();
    (in_cloud, in_pool)
}

fn owned(node: &EniNode) -> usize {
    node.pool()["in_use"].as_u64().unwrap() as usize
}

#[test]
fn pods_get_whole_enis_and_reach_each_other_their_node_and_services() {
    let cloud = Cloud::start(spec(json!({})));
    let mut a = cloud.node(0);
    let mut b = cloud.node(1);
    a.start_daemon();
    b.start_daemon();
    a.add_lo_address(SERVICE_IP);
    let (pa, ra) = add(&a, "xa");
    ra.assert_ok();
    let (pb, rb) = add(&b, "xb");
    rb.assert_ok();
    let (pa2, ra2) = add(&a, "xa2");
    ra2.assert_ok();
    // The ENI's primary IP with the vSwitch prefix and gateway, on the ENI's own device.
    let addr = ra.json["ips"][0]["address"].as_str().unwrap();
    assert!(
        addr.starts_with("172.16.") && addr.ends_with("/24"),
        "{}",
        ra.json
    );
    assert_eq!(ra.json["ips"][0]["gateway"], "172.16.0.253", "{}", ra.json);
    let pool = a.pool();
    let eni = pool["eni"]["enis"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["primary_ip"] == ra.ip().as_str())
        .unwrap_or_else(|| panic!("{pool}"))
        .clone();
    let eth0 = pa.exec(&["ip", "-o", "link", "show", "eth0"]);
    let eth0 = String::from_utf8_lossy(&eth0.stdout).to_string();
    assert!(
        eth0.contains(eni["mac"].as_str().unwrap()),
        "{eth0} vs {eni}"
    );
    assert!(
        pa.exec(&["ip", "link", "show", "veth1"]).status.success(),
        "veth1 to the node"
    );
    assert_eq!(pool["mode"], "ENIOnly");
    assert_eq!(pool["capacity"], 7, "ecs.g7.4xlarge: EniQuantity - 1");

    assert!(pa.ping(&rb.ip()), "pod on A -> pod on B through the VPC");
    assert!(pb.ping(&ra.ip()), "pod on B -> pod on A");
    assert!(pa.ping(&ra2.ip()), "pod -> pod on the same node");
    assert!(pa.ping(&a.node_ip()), "pod -> its node (veth1)");
    assert!(
        pa.ping(SERVICE_IP),
        "pod -> the service CIDR in the node's stack (veth1)"
    );
    assert!(
        sh(&["ip", "netns", "exec", &a.ns, "ping", "-c1", "-W2", &ra.ip()])
            .status
            .success(),
        "node -> its pod"
    );
    let mapping = a.cli(&["mapping"]);
    let text = String::from_utf8_lossy(&mapping.stdout);
    assert_eq!(text.matches("Normal").count(), 2, "{text}");
    assert!(text.contains("default/pod-xa"), "{text}");

    // DEL, DEL again: the ENI is parked on the node and idle in the pool.
    a.cni("DEL", "xa", &pa.path()).assert_ok();
    a.cni("DEL", "xa", &pa.path()).assert_ok();
    assert!(!pa.exec(&["ip", "link", "show", "eth0"]).status.success());
    assert_eq!(owned(&a), 1);
    let parked = format!("eni{}", eni["mac"].as_str().unwrap().replace(':', ""));
    assert!(link_exists(&a.ns, &parked), "parked as {parked}");
    assert!(!pb.ping(&ra.ip()), "cut off after DEL");
    // The next pod gets the idle ENI and works.
    let (pc, rc) = add(&a, "xc");
    rc.assert_ok();
    assert_eq!(rc.ip(), ra.ip(), "the idle ENI is reused");
    assert!(pc.ping(&rb.ip()));
    for (n, id, p) in [(&a, "xa2", &pa2), (&a, "xc", &pc), (&b, "xb", &pb)] {
        n.cni("DEL", id, &p.path()).assert_ok();
    }
    let (in_cloud, in_pool) = enis(&cloud, &a);
    assert_eq!(in_cloud, in_pool, "the daemon and the cloud agree");
}

#[test]
fn del_after_the_pod_namespace_is_gone_returns_the_eni_to_the_pool() {
    let cloud = Cloud::start(spec(json!({})));
    let mut a = cloud.node(0);
    a.start_daemon();
    let (pod, r) = add(&a, "gone");
    r.assert_ok();
    let path = pod.path();
    drop(pod); // the namespace dies; the ENI's device returns to the node, as a NIC would
    let res = a.cni("DEL", "gone", &path);
    assert!(res.ok, "{res:?}");
    assert_eq!(owned(&a), 0, "the ENI is back in the pool");
    // The same ENI serves the next pod, wherever the kernel put its device.
    let (next, r2) = add(&a, "next");
    r2.assert_ok();
    assert_eq!(r2.ip(), r.ip());
    assert!(next.ping(&a.node_ip()));
    a.cni("DEL", "next", &next.path()).assert_ok();
}

#[test]
fn a_stale_veth_hint_costs_an_eni_pod_nothing() {
    let cloud = Cloud::start(spec(json!({})));
    let mut a = cloud.node(0);
    a.start_daemon();
    let hint = terway::rpc::hint::path(std::path::Path::new(&a.socket));
    assert_eq!(
        std::fs::read_to_string(&hint).unwrap(),
        "exclusive_eni\n",
        "the daemon says how its pods are wired"
    );
    // Left by a daemon of another mode: the plugin builds a veth pair while the daemon
    // allocates, then removes it for the ENI's own datapath.
    std::fs::write(&hint, "veth\n").unwrap();
    let (pod, r) = add(&a, "hinted");
    r.assert_ok();
    let pool = a.pool();
    let eni = pool["eni"]["enis"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["primary_ip"] == r.ip().as_str())
        .unwrap_or_else(|| panic!("{pool}"))
        .clone();
    let eth0 = pod.exec(&["ip", "-o", "link", "show", "eth0"]);
    let eth0 = String::from_utf8_lossy(&eth0.stdout).to_string();
    assert!(
        eth0.contains(eni["mac"].as_str().unwrap()),
        "eth0 is the ENI's device: {eth0} vs {eni}"
    );
    assert!(pod.exec(&["ip", "link", "show", "veth1"]).status.success());
    assert!(pod.ping(&a.node_ip()), "pod -> its node (veth1)");
    a.cni("DEL", "hinted", &pod.path()).assert_ok();
    assert!(!pod.exec(&["ip", "link", "show", "eth0"]).status.success());
    assert!(!pod.exec(&["ip", "link", "show", "veth1"]).status.success());
    a.stop_daemon(nix::sys::signal::Signal::SIGTERM);
    assert!(!hint.exists(), "a clean stop removes the hint");
}

#[test]
fn a_start_lists_the_nodes_enis_once() {
    Cloud::start(spec(json!({}))).assert_a_start_lists_once_and_deletes_the_leak();
}

#[test]
fn resyncs_reuse_vswitch_counts_and_ask_again_after_a_reload_under_most() {
    // Free counts matter to the `most` policy only and are reused for 10 min; a reload with
    // other vSwitches has the next resync ask (`VSwitchRefresh`, unit-tested in eni_source).
    for (policy, asks_after_reload) in [("ordered", false), ("most", true)] {
        let cloud = Cloud::start(spec(json!({ "vswitch_selection_policy": policy })));
        let mut a = cloud.node(0);
        a.start_daemon();
        let calls = |action: &str| {
            cloud.admin("GET", "/admin/calls", None)[action]["total"]
                .as_u64()
                .unwrap_or(0)
        };
        let resyncs = |n: u64| {
            let listings = calls("DescribeNetworkInterfaces");
            assert!(
                wait_until(Duration::from_secs(15), || calls(
                    "DescribeNetworkInterfaces"
                ) >= listings + n),
                "{n} resyncs (every 500 ms): {}",
                a.log()
            );
        };
        let at_start = calls("DescribeVSwitches");
        // The node's vSwitches come from one listing of its VPC's zone, not a call each.
        assert!(cloud.vswitches.len() >= 2, "{:?}", cloud.vswitches);
        assert_eq!(at_start, 1, "{policy}: {} vSwitches", cloud.vswitches.len());
        resyncs(3);
        assert_eq!(calls("DescribeVSwitches"), at_start, "{policy}: reused");
        let first = cloud.vswitches[0].clone();
        cloud.edit_node_config(0, |v| {
            let zone = v["vswitches"]
                .as_object()
                .unwrap()
                .keys()
                .next()
                .unwrap()
                .clone();
            v["vswitches"] = json!({ zone: [first] });
        });
        nix::sys::signal::kill(a.daemon.as_ref().unwrap().pid(), Signal::SIGHUP).unwrap();
        resyncs(3);
        assert_eq!(
            calls("DescribeVSwitches") > at_start,
            asks_after_reload,
            "{policy}: after a reload to one vSwitch: {}",
            a.log()
        );
    }
}

#[test]
fn sigkill_with_enis_in_pods_loses_and_duplicates_nothing() {
    let cloud = Cloud::start(spec(json!({})));
    let mut a = cloud.node(0);
    a.start_daemon();
    let mut pods = Vec::new();
    for i in 0..3 {
        let (p, r) = add(&a, &format!("k{i}"));
        r.assert_ok();
        pods.push((format!("k{i}"), p, r.ip()));
    }
    a.stop_daemon(Signal::SIGKILL);
    a.start_daemon();
    for i in 3..5 {
        let (p, r) = add(&a, &format!("k{i}"));
        r.assert_ok();
        pods.push((format!("k{i}"), p, r.ip()));
    }
    let ips: BTreeSet<&String> = pods.iter().map(|p| &p.2).collect();
    assert_eq!(
        ips.len(),
        5,
        "an ENI handed out twice: {pods:?}",
        pods = ips
    );
    assert_eq!(owned(&a), 5);
    for (id, p, _) in &pods[..3] {
        assert!(
            p.ping(&a.node_ip()),
            "{id} kept its network across the restart"
        );
        // A retried ADD of a pod from before the restart keeps its ENI.
        assert_eq!(
            a.cni("ADD", id, &p.path()).ip(),
            pods.iter().find(|x| &x.0 == id).unwrap().2
        );
    }
    let (in_cloud, in_pool) = enis(&cloud, &a);
    assert_eq!(in_cloud, in_pool);
    for (id, p, _) in &pods {
        a.cni("DEL", id, &p.path()).assert_ok();
    }
    assert_eq!(owned(&a), 0);
}

#[test]
fn eni_quota_exhausted_fails_fast_with_the_clouds_words() {
    // ecs.g7.large: 3 ENIs, so 2 for pods; a user's own ENI takes one of them.
    let cloud = Cloud::start(CloudSpec {
        region: Box::new(|r: &mut Value| {
            for i in r["instances"].as_array_mut().unwrap() {
                i["instance_type"] = json!("ecs.g7.large");
            }
        }),
        ..spec(json!({}))
    });
    let mut a = cloud.node(0);
    let foreign = attach_foreign_eni(&cloud, &a);
    a.start_daemon();
    let (p1, r1) = add(&a, "q1");
    r1.assert_ok();
    let (_p2, r2) = add(&a, "q2");
    assert!(!r2.ok, "{r2:?}");
    assert_eq!(r2.code(), 11, "{}", r2.json);
    let details = r2.json["details"].as_str().unwrap();
    assert!(details.contains("EniPerInstanceLimitExceeded"), "{details}");
    assert!(
        a.log().contains("EniPerInstanceLimitExceeded"),
        "{}",
        a.log()
    );
    assert_eq!(owned(&a), 1);
    a.cni("DEL", "q1", &p1.path()).assert_ok();
    let model = cloud.admin("GET", "/admin/model", None);
    let theirs = model["enis"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["id"] == foreign.as_str())
        .unwrap()
        .clone();
    assert_eq!(
        theirs["status"], "InUse",
        "the user's ENI is never touched: {theirs}"
    );
}

/// Creates an ENI (not terway's) and attaches it to the node's instance through the API.
fn attach_foreign_eni(cloud: &Cloud, node: &EniNode) -> String {
    use terway::cloud::{CloudConfig, CredentialProvider, CredentialSource, Ecs};
    let cfg: Value = serde_json::from_slice(&std::fs::read(&node.config).unwrap()).unwrap();
    let mut cc = CloudConfig::new(cfg["region_id"].as_str().unwrap());
    cc.ecs_endpoint = format!("http://{}", cloud.addr);
    cc.vpc_endpoint = cc.ecs_endpoint.clone();
    let creds = CredentialProvider::new(
        CredentialSource::Static {
            access_key: cfg["access_key"].as_str().unwrap().into(),
            access_secret: cfg["access_secret"].as_str().unwrap().into(),
        },
        None,
    );
    let ecs = Ecs::new(cc, std::sync::Arc::new(creds)).unwrap();
    let sg = cfg["security_group"].as_str().unwrap().to_string();
    let eni = ecs
        .create_eni(&cloud.vswitches[0], &[sg], 0, &[], "the user's own", "")
        .unwrap();
    ecs.attach_eni(&node.ns, &eni.id).unwrap();
    ecs.wait_eni_status(&eni.id, "InUse", Duration::from_secs(20))
        .unwrap();
    eni.id
}

#[test]
fn churn_stays_within_the_watermarks() {
    let cloud = Cloud::start(spec(json!({
        "min_pool_size": 1,
        "max_pool_size": 2,
        "idle_ip_reclaim_after": "1s",
    })));
    let mut a = cloud.node(0);
    a.start_daemon();
    for round in 0..3 {
        let pods: Vec<(String, Netns, CniOutcome)> = (0..4)
            .map(|i| {
                let id = format!("c{round}-{i}");
                let (p, r) = add(&a, &id);
                r.assert_ok();
                (id, p, r)
            })
            .collect();
        for (id, p, _) in &pods {
            a.cni("DEL", id, &p.path()).assert_ok();
        }
    }
    // Idle above max_pool_size is deleted after the reclaim delay; min_pool_size is kept.
    assert!(
        wait_until(Duration::from_secs(20), || {
            let p = a.pool();
            let idle = p["idle"].as_u64().unwrap();
            (1..=2).contains(&idle) && p["eni"]["enis"].as_array().unwrap().len() as u64 == idle
        }),
        "{}",
        a.pool()
    );
    let (in_cloud, in_pool) = enis(&cloud, &a);
    assert_eq!(in_cloud, in_pool);
}
