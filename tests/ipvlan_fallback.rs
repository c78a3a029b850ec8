//! `eniip_virtual_type: ipvlan` in shared ENI mode, as root, on the emulator's netns topology.
//! On a kernel without ipvlan (the build machines') the daemon says so once at start and wires
//! pods with veth and policy routing; `terway pool` shows ipvlan configured and veth in effect.
//! On a kernel with ipvlan the same tests check the ipvlan datapath instead (pods are ipvlan
//! slaves of their ENI with the vSwitch prefix). Either way a pod keeps the datapath it was
//! wired with across daemon restarts and config changes (it is recorded with the allocation).

mod common;
#[path = "common/netns_util.rs"]
mod netns_util;

use common::cloud::{Cloud, CloudSpec, EniNode};
use common::*;
use netns_util::TestNs;
use nix::sys::signal::Signal;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;
use terway::datapath::ipvlan::{self, IpvlanSpec, IpvlanTeardown};
use terway::netns::NetNs;

const NO_IPVLAN: &str = "ipvlan not supported by this kernel: using veth policy routing";
const SERVICE_CIDR: &str = "10.96.0.0/12";
/// A "service" address on the node's lo: reachable only through the node's stack.
const SERVICE_IP: &str = "10.96.0.10";

/// Whether this kernel can make an ipvlan (in a throwaway namespace).
fn kernel_has_ipvlan() -> bool {
    let ns = Netns::new("twprobe");
    sh_ok(&[
        "ip", "-n", &ns.name, "link", "add", "twp0", "type", "veth", "peer", "name", "twp1",
    ]);
    sh(&[
        "ip", "-n", &ns.name, "link", "add", "twp2", "link", "twp0", "type", "ipvlan", "mode", "l2",
    ])
    .status
    .success()
}

/// What new pods get on this kernel with ipvlan configured: (pool's effective, state's kind).
fn expected() -> (&'static str, &'static str) {
    if kernel_has_ipvlan() {
        ("ipvlan", "ipvlan")
    } else {
        ("veth", "veth_policy")
    }
}

fn ipvlan_extra() -> Value {
    json!({"eniip_virtual_type": "ipvlan", "service_cidr": SERVICE_CIDR})
}

fn add_pod(node: &EniNode, id: &str) -> (Netns, String) {
    let pod = Netns::new("twpod");
    let r = node.cni("ADD", id, &pod.path());
    r.assert_ok();
    let ip = r.ip();
    (pod, ip)
}

/// The pod interface's kind (veth, ipvlan) and its IPv4 address with prefix.
fn pod_link(pod: &Netns) -> (String, String) {
    let link =
        String::from_utf8_lossy(&pod.exec(&["ip", "-d", "-o", "link", "show", "eth0"]).stdout)
            .into_owned();
    let kind = if link.contains(" ipvlan ") {
        "ipvlan"
    } else if link.contains(" veth ") {
        "veth"
    } else {
        panic!("eth0 is neither a veth nor an ipvlan: {link}")
    };
    let addr =
        String::from_utf8_lossy(&pod.exec(&["ip", "-4", "-o", "addr", "show", "eth0"]).stdout)
            .into_owned();
    let cidr = addr
        .split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .unwrap_or_else(|| panic!("no IPv4 on eth0: {addr}"))
        .to_string();
    (kind.to_string(), cidr)
}

/// Datapath kind per container id, as the saved state (file and log) records it.
fn recorded_kinds(node: &EniNode) -> BTreeMap<String, String> {
    let state: Value = node.stored_state();
    state["allocations"]
        .as_array()
        .expect("allocations in the state file")
        .iter()
        .map(|a| {
            (
                a["key"]["container_id"].as_str().unwrap().to_string(),
                a["datapath"]["kind"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// The node still routes or rules anything for `ip` (after DEL: nothing may be left).
fn node_leftovers(node: &EniNode, ip: &str) -> String {
    let routes = sh_ok(&["ip", "-n", &node.ns, "-4", "route", "show", "table", "all"]);
    let rules = sh_ok(&["ip", "-n", &node.ns, "-4", "rule", "show"]);
    let neigh = sh_ok(&["ip", "-n", &node.ns, "-4", "neigh", "show"]);
    routes
        .lines()
        .chain(rules.lines())
        .chain(neigh.lines())
        .filter(|l| {
            l.split(|c: char| c.is_whitespace() || c == '/')
                .any(|w| w == ip)
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn check_ok(node: &EniNode, id: &str, pod: &Netns) {
    let r = node.cni("CHECK", id, &pod.path());
    assert!(r.ok, "CHECK {id}: {} {}", r.json, r.stderr);
}

fn assert_datapath_view(node: &EniNode, effective: &str) {
    let pool = node.pool();
    assert_eq!(pool["datapath"]["configured"], "ipvlan", "{pool}");
    assert_eq!(pool["datapath"]["effective"], effective, "{pool}");
    let text = node.cli(&["pool"]);
    let text = String::from_utf8_lossy(&text.stdout);
    let line = text
        .lines()
        .find(|l| l.starts_with("datapath:"))
        .unwrap_or_else(|| panic!("no datapath line: {text}"));
    if effective == "ipvlan" {
        assert_eq!(line, "datapath:   ipvlan (as configured)");
    } else {
        assert_eq!(
            line,
            format!("datapath:   veth (configured ipvlan: {NO_IPVLAN})")
        );
    }
}

#[test]
fn ipvlan_configured_pods_get_what_this_kernel_can_do_and_keep_it_across_a_restart() {
    let (effective, kind) = expected();
    let cloud = Cloud::start(CloudSpec {
        node_extra: ipvlan_extra(),
        ..CloudSpec::default()
    });
    let mut a = cloud.node(0);
    let mut b = cloud.node(1);
    a.start_daemon();
    b.start_daemon();
    let said = if effective == "veth" { 1 } else { 0 };
    for n in [&a, &b] {
        let log = n.log();
        assert_eq!(log.matches(NO_IPVLAN).count(), said, "{log}");
        assert_datapath_view(n, effective);
    }
    a.add_lo_address(SERVICE_IP);
    let (pa0, ip_a0) = add_pod(&a, "a0");
    let (pa1, ip_a1) = add_pod(&a, "a1");
    let (pb0, ip_b0) = add_pod(&b, "b0");
    let (node_a, node_b) = (a.node_ip(), b.node_ip());

    for (pod, ip) in [(&pa0, &ip_a0), (&pa1, &ip_a1), (&pb0, &ip_b0)] {
        let (k, cidr) = pod_link(pod);
        assert_eq!(k, effective, "pod {ip}");
        if effective == "veth" {
            assert_eq!(cidr, format!("{ip}/32"));
        } else {
            assert!(!cidr.ends_with("/32"), "the vSwitch prefix: {cidr}");
        }
    }
    let kinds = recorded_kinds(&a);
    assert_eq!(kinds["a0"], kind, "{kinds:?}");
    assert_eq!(kinds["a1"], kind, "{kinds:?}");
    if effective == "veth" {
        let rules = sh_ok(&["ip", "-n", &a.ns, "rule", "show"]);
        assert!(
            rules.contains(&format!("from {ip_a0} lookup 10")),
            "policy routing: {rules}"
        );
    }

    assert!(pa0.ping(&ip_b0), "pod on A -> pod on B");
    assert!(pb0.ping(&ip_a1), "pod on B -> pod on A");
    assert!(pa0.ping(&ip_a1), "pod -> pod on the same node");
    assert!(pa0.ping(&node_a), "pod -> its node");
    assert!(pa1.ping(&node_b), "pod -> the other node");
    assert!(
        pa0.ping(SERVICE_IP),
        "pod -> a service address in its node's stack"
    );
    assert!(
        sh(&["ip", "netns", "exec", &a.ns, "ping", "-c1", "-W2", &ip_a0])
            .status
            .success(),
        "node -> its pod"
    );
    check_ok(&a, "a0", &pa0);

    // Restart: said once again, every pod keeps its datapath, and new pods get the same.
    a.stop_daemon(Signal::SIGTERM);
    a.start_daemon();
    let log = a.log();
    assert_eq!(log.matches(NO_IPVLAN).count(), said, "{log}");
    assert_datapath_view(&a, effective);
    let kinds = recorded_kinds(&a);
    assert_eq!(kinds["a0"], kind, "kept across the restart: {kinds:?}");
    check_ok(&a, "a0", &pa0);
    check_ok(&a, "a1", &pa1);
    let (pa2, ip_a2) = add_pod(&a, "a2");
    assert_eq!(recorded_kinds(&a)["a2"], kind);
    assert!(pa2.ping(&ip_b0), "new pod on A -> pod on B");
    assert!(
        pa0.ping(&ip_b0),
        "old pod on A -> pod on B after the restart"
    );
    assert!(pa2.ping(SERVICE_IP), "new pod -> service address");

    // DEL, and DEL again: nothing of the pods is left on the node.
    for (id, pod) in [("a0", &pa0), ("a1", &pa1), ("a2", &pa2)] {
        a.cni("DEL", id, &pod.path()).assert_ok();
        a.cni("DEL", id, &pod.path()).assert_ok();
    }
    b.cni("DEL", "b0", &pb0.path()).assert_ok();
    // A veth pod's DEL returns before the daemon has removed its veth and rules.
    for ip in [&ip_a0, &ip_a1, &ip_a2] {
        wait_until(Duration::from_secs(5), || node_leftovers(&a, ip).is_empty());
        let left = node_leftovers(&a, ip);
        assert!(left.is_empty(), "left on the node for {ip}:\n{left}");
    }
    assert!(!pa0.ping(&ip_b0), "cut off after DEL");
    assert!(
        recorded_kinds(&a).is_empty(),
        "every address released: {:?}",
        recorded_kinds(&a)
    );
}

#[test]
fn a_veth_pod_keeps_veth_when_the_node_switches_to_ipvlan() {
    let (effective, kind) = expected();
    let cloud = Cloud::start(CloudSpec::default());
    let mut a = cloud.node(0);
    let b = cloud.node(1);
    a.start_daemon();
    let pool = a.pool();
    assert_eq!(pool["datapath"]["configured"], "veth", "{pool}");
    assert_eq!(pool["datapath"]["effective"], "veth", "{pool}");
    assert!(
        !a.log().contains(NO_IPVLAN),
        "veth configured: no probe, nothing to say"
    );
    let (p0, _ip0) = add_pod(&a, "old");
    assert_eq!(recorded_kinds(&a)["old"], "veth_policy");

    a.stop_daemon(Signal::SIGTERM);
    cloud.edit_node_config(0, |v| {
        for (k, x) in ipvlan_extra().as_object().unwrap() {
            v[k] = x.clone();
        }
    });
    a.start_daemon();
    assert_datapath_view(&a, effective);
    assert_eq!(
        recorded_kinds(&a)["old"],
        "veth_policy",
        "wired with veth, kept"
    );
    check_ok(&a, "old", &p0);
    assert_eq!(pod_link(&p0).0, "veth");
    let (p1, _ip1) = add_pod(&a, "new");
    assert_eq!(recorded_kinds(&a)["new"], kind);
    assert_eq!(pod_link(&p1).0, effective);
    let node_b = b.node_ip();
    assert!(p0.ping(&node_b), "the veth pod still reaches the VPC");
    assert!(p1.ping(&node_b), "the new pod reaches the VPC");
    assert!(p0.ping(&a.node_ip()), "the veth pod still reaches its node");
    a.cni("DEL", "old", &p0.path()).assert_ok();
    a.cni("DEL", "new", &p1.path()).assert_ok();
    // The veth pod's address is freed once the daemon has removed its veth, just after DEL.
    assert!(
        wait_until(Duration::from_secs(5), || recorded_kinds(&a).is_empty()),
        "{:?}",
        recorded_kinds(&a)
    );
}

const LAB_MAC: [u8; 6] = [0x02, 0x00, 0x0a, 0xf1, 0x00, 0x0a];
const LAB_POD_IP: &str = "10.241.0.10";
const LAB_GW: &str = "10.241.0.253";
const LAB_NODE_IP: &str = "10.241.9.1";

/// Runs `f` with the lab pod's ipvlan spec on a thread inside `node`.
fn with_lab_spec<T: Send + 'static>(
    node: &TestNs,
    pod: PathBuf,
    f: impl FnOnce(&IpvlanSpec) -> terway::Result<T> + Send + 'static,
) -> terway::Result<T> {
    node.run(move || {
        let ns = NetNs::open(&pod)?;
        f(&IpvlanSpec {
            netns: &ns,
            ifname: "eth0",
            alias: "terway:lab",
            mac: LAB_MAC,
            ip: format!("{LAB_POD_IP}/24").parse().unwrap(),
            gateway: LAB_GW.parse().unwrap(),
            ipv6: None,
            mtu: 1500,
            service_cidr: Some(SERVICE_CIDR.parse().unwrap()),
            node_ips: vec![LAB_NODE_IP.parse().unwrap()],
        })
    })
}

/// The datapath itself in throwaway namespaces: a node with an emulated ENI (a veth whose far
/// end, in a "vpc" namespace, holds the vSwitch gateway). Without ipvlan in the kernel setup
/// fails, names ipvlan and leaves nothing behind; with it the pod reaches the gateway, its node
/// and a service address in the node's stack, the node reaches the pod, and teardown leaves
/// nothing of the pod on the node. Either way a node route that is not through a host slave is
/// never removed.
#[test]
fn the_ipvlan_datapath_in_namespaces() {
    netns_util::require_root_and_tools();
    let has_ipvlan = kernel_has_ipvlan();
    let node = TestNs::new("ipvnode").with_node_addr(&format!("{LAB_NODE_IP}/32"));
    node.ip(&format!("addr add {SERVICE_IP}/32 dev lo"));
    let vpc = TestNs::new("ipvvpc");
    node.ip(&format!(
        "link add eth1 address 02:00:0a:f1:00:0a type veth peer name vpc0 netns {}",
        vpc.name
    ));
    vpc.ip("link set lo up");
    vpc.ip(&format!("addr add {LAB_GW}/24 dev vpc0"));
    vpc.ip("link set vpc0 up");
    let pod = TestNs::new("ipvpod");
    pod.ip("link set lo up");

    let setup = with_lab_spec(&node, pod.path(), ipvlan::setup);
    let pod_links = || pod.ip("-o link show").lines().count();
    if !has_ipvlan {
        let e = setup.expect_err("no ipvlan in this kernel");
        assert!(e.msg.contains("ipvlan"), "{}", e.msg);
        assert_eq!(pod_links(), 1, "only lo in the pod: {}", pod.ip("link"));
        assert!(
            !node.ip("-d link show").contains("ipvl_"),
            "{}",
            node.ip("link")
        );
        assert!(
            node.ip(&format!("route show {LAB_POD_IP}"))
                .trim()
                .is_empty()
        );
    } else {
        let info = setup.expect("setup");
        assert!(info.host_slave.starts_with("ipvl_"), "{info:?}");
        with_lab_spec(&node, pod.path(), ipvlan::check).expect("check");
        assert!(pod.ip("-d link show eth0").contains("ipvlan"));
        assert!(pod.ping(LAB_GW), "pod -> vSwitch gateway through the ENI");
        assert!(vpc.ping(LAB_POD_IP), "VPC -> pod");
        assert!(pod.ping(LAB_NODE_IP), "pod -> its node");
        assert!(
            pod.ping(SERVICE_IP),
            "pod -> service address in the node's stack"
        );
        assert!(node.ping(LAB_POD_IP), "node -> pod");
        for _ in 0..2 {
            let pod_path = pod.path();
            node.run(move || {
                let ns = NetNs::open(&pod_path)?;
                ipvlan::teardown(&IpvlanTeardown {
                    netns: Some(&ns),
                    ifname: "eth0",
                    alias: "terway:lab",
                    ip: Some(LAB_POD_IP.parse().unwrap()),
                    ip6: None,
                })
            })
            .expect("teardown, twice");
        }
        assert_eq!(pod_links(), 1, "only lo in the pod: {}", pod.ip("link"));
        assert!(
            node.ip(&format!("route show {LAB_POD_IP}"))
                .trim()
                .is_empty()
        );
        assert!(
            node.ip(&format!("neigh show {LAB_POD_IP}"))
                .trim()
                .is_empty()
        );
    }
    // Not through a host slave: not the ipvlan datapath's, left alone.
    node.ip("link set eth1 up");
    node.ip("route add 10.241.0.77/32 dev eth1");
    node.run(|| {
        let mut nl = terway::netlink::Netlink::open()?;
        ipvlan::remove_host_side(&mut nl, "10.241.0.77".parse().unwrap())
    })
    .expect("remove_host_side");
    assert!(
        node.ip("route show 10.241.0.77").contains("dev eth1"),
        "{}",
        node.ip("route")
    );
}
