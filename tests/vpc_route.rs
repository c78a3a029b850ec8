//! VPC mode with `vpc_route: true`, as root, on the emulator's netns topology: each node's daemon
//! keeps the VPC route entry `pod_cidr → its instance` through the signed VPC API, so pods wired
//! by the real plugin reach each other across nodes with no hand-made route; an entry removed
//! behind the daemon's back comes back at the next resync; a node whose pod CIDR another
//! instance already owns refuses to start and says why.

mod common;

use common::cloud::{Cloud, CloudSpec, EniNode};
use common::*;
use nix::sys::signal::Signal;
use serde_json::json;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const CIDR_A: &str = "10.244.1.0/24";
const CIDR_B: &str = "10.244.2.0/24";

/// Two VPC-mode nodes keeping their own route (resync every 500 ms), pod CIDRs `a` and `b`.
fn vpc_cloud(a: &str, b: &str) -> Cloud {
    let cloud = Cloud::start(CloudSpec {
        node_extra: json!({"daemon_mode": "VPC", "vpc_route": true,
            "ip_pool_sync_period": "500ms"}),
        ..CloudSpec::default()
    });
    for (i, cidr) in [a, b].into_iter().enumerate() {
        cloud.edit_node_config(i, |v| v["pod_cidr"] = cidr.into());
    }
    cloud
}

/// The custom route entries of the emulated VPC: (destination, next hop instance, id).
fn routes(cloud: &Cloud) -> Vec<(String, String, String)> {
    let model = cloud.admin("GET", "/admin/model", None);
    let mut out: Vec<(String, String, String)> = model["routes"]
        .as_array()
        .expect("model has routes")
        .iter()
        .map(|r| {
            let s = |k: &str| r[k].as_str().unwrap_or_default().to_string();
            (s("destination"), s("next_hop_id"), s("id"))
        })
        .collect();
    out.sort();
    out
}

fn route_to(cloud: &Cloud, cidr: &str) -> Option<String> {
    routes(cloud).into_iter().find(|r| r.0 == cidr).map(|r| r.1)
}

fn add_pod(node: &EniNode, id: &str) -> (Netns, String) {
    let pod = Netns::new("twpod");
    let r = node.cni("ADD", id, &pod.path());
    r.assert_ok();
    let ip = r.ip();
    (pod, ip)
}

/// Runs a daemon that must not come up: its exit status and what it said.
fn daemon_refuses(node: &EniNode) -> String {
    let mut child = Command::new("ip")
        .args(["netns", "exec", &node.ns, BIN, "daemon", "--config"])
        .arg(&node.config)
        .env("TERWAY_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the daemon did not refuse to start within 60 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(!status.success(), "the daemon must refuse to start: {err}");
    err
}

#[test]
fn daemons_route_their_pod_cidrs_and_repair_a_removed_route() {
    let cloud = vpc_cloud(CIDR_A, CIDR_B);
    assert!(
        routes(&cloud).is_empty(),
        "no route entry before the daemons"
    );
    let mut a = cloud.node(0);
    let mut b = cloud.node(1);
    a.start_daemon();
    b.start_daemon();
    let (ia, ib) = (a.ns.clone(), b.ns.clone());
    assert_eq!(route_to(&cloud, CIDR_A).as_deref(), Some(ia.as_str()));
    assert_eq!(route_to(&cloud, CIDR_B).as_deref(), Some(ib.as_str()));
    assert_eq!(routes(&cloud).len(), 2, "{:?}", routes(&cloud));

    let (pod_a, ip_a) = add_pod(&a, "ra");
    let (pod_b, ip_b) = add_pod(&b, "rb");
    assert!(ip_a.starts_with("10.244.1.") && ip_b.starts_with("10.244.2."));
    assert!(pod_a.ping(&ip_b), "pod on A -> pod {ip_b} on B");
    assert!(pod_b.ping(&ip_a), "pod on B -> pod {ip_a} on A");

    // `terway pool` shows the route: table, CIDR, next hop, state.
    let model = cloud.admin("GET", "/admin/model", None);
    let table = model["route_table_id"].as_str().unwrap().to_string();
    let pool = a.pool();
    let r = &pool["vpc_route"];
    assert_eq!(r["route_table_id"], table.as_str(), "{pool}");
    assert_eq!(r["destination"], CIDR_A);
    assert_eq!(r["next_hop_type"], "Instance");
    assert_eq!(r["next_hop_id"], ia.as_str());
    assert_eq!(r["state"], "present", "{pool}");
    assert_eq!(pool["instance_id"], ia.as_str());
    let text = a.cli(&["pool"]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains(&format!(
            "VPC route:  {CIDR_A} -> Instance {ia} in route table {table}"
        )) && text.contains("route:      present: rte-")
            && text.contains(" (Available), checked "),
        "{text}"
    );

    // Behind the daemons' back: B's entry goes. The next resync puts it back.
    let before = routes(&cloud);
    cloud
        .operator(0)
        .delete_route_entry(&table, CIDR_B, &ib)
        .unwrap();
    assert_eq!(route_to(&cloud, CIDR_B), None);
    assert!(
        wait_until(Duration::from_secs(15), || route_to(&cloud, CIDR_B)
            .as_deref()
            == Some(ib.as_str())),
        "B's route is not back: {:?}\n{}",
        routes(&cloud),
        b.log()
    );
    assert_ne!(routes(&cloud), before, "a new entry, not the old one");
    assert!(pod_a.ping(&ip_b), "pod on A -> pod {ip_b} on B again");
    assert!(pod_b.ping(&ip_a), "pod on B -> pod {ip_a} on A again");
    assert!(
        wait_until(Duration::from_secs(5), || b.pool()["vpc_route"]["repairs"]
            == 1),
        "{}",
        b.pool()
    );
    assert!(
        b.log().contains(&format!(
            "{CIDR_B} -> {ib} was missing from {table}: created it again"
        )),
        "{}",
        b.log()
    );
    // A's entry was left alone, and nothing else appeared.
    assert_eq!(routes(&cloud).len(), 2, "{:?}", routes(&cloud));

    for (node, id, pod) in [(&a, "ra", &pod_a), (&b, "rb", &pod_b)] {
        node.cni("DEL", id, &pod.path()).assert_ok();
    }
    // Stopping keeps the route: the node's pods (if any) still need it.
    assert!(a.stop_daemon(Signal::SIGTERM).success());
    assert_eq!(route_to(&cloud, CIDR_A).as_deref(), Some(ia.as_str()));
    b.stop_daemon(Signal::SIGTERM);
}

#[test]
fn a_pod_cidr_another_instance_owns_is_refused_and_a_released_one_taken() {
    const SHARED: &str = "10.244.7.0/24";
    let cloud = vpc_cloud(SHARED, SHARED);
    let mut a = cloud.node(0);
    let mut b = cloud.node(1);
    let (ia, ib) = (a.ns.clone(), b.ns.clone());
    a.start_daemon();
    assert_eq!(route_to(&cloud, SHARED).as_deref(), Some(ia.as_str()));
    let table = a.pool()["vpc_route"]["route_table_id"]
        .as_str()
        .unwrap()
        .to_string();

    let err = daemon_refuses(&b);
    for part in [
        "refusing to start",
        &format!(
            "pod_cidr {SHARED} is already routed to Instance {ia} in route table {table} (route entry rte-"
        ),
        "another node owns it",
    ] {
        assert!(err.contains(part), "{part}: {err}");
    }
    assert_eq!(
        route_to(&cloud, SHARED).as_deref(),
        Some(ia.as_str()),
        "the refusing node touched nothing"
    );
    assert_eq!(routes(&cloud).len(), 1);

    // A moves to another pod CIDR (restart with a new config): its old entry goes, and B can
    // take the CIDR.
    assert!(a.stop_daemon(Signal::SIGTERM).success());
    cloud.edit_node_config(0, |v| v["pod_cidr"] = CIDR_A.into());
    a.start_daemon();
    assert_eq!(route_to(&cloud, CIDR_A).as_deref(), Some(ia.as_str()));
    assert_eq!(route_to(&cloud, SHARED), None, "{}", a.log());
    assert!(
        a.log().contains(&format!(
            "removed the route entry of the previous pod CIDR {SHARED} -> {ia}"
        )),
        "{}",
        a.log()
    );
    b.start_daemon();
    assert_eq!(route_to(&cloud, SHARED).as_deref(), Some(ib.as_str()));
    let (pod_a, ip_a) = add_pod(&a, "ca");
    let (pod_b, ip_b) = add_pod(&b, "cb");
    assert!(ip_b.starts_with("10.244.7."), "{ip_b}");
    assert!(pod_a.ping(&ip_b) && pod_b.ping(&ip_a), "{ip_a} <-> {ip_b}");
    a.cni("DEL", "ca", &pod_a.path()).assert_ok();
    b.cni("DEL", "cb", &pod_b.path()).assert_ok();
}
