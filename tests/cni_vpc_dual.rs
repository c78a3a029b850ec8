//! VPC mode with `ip_stack: dual` end to end, as root: the real plugin binary exec'd like a
//! runtime does, the real daemon in a node namespace, pods in their own namespaces. Every pod
//! gets an IPv4 and an IPv6, both usable the moment ADD returns.

mod common;

use common::*;
use nix::sys::signal::Signal;
use serde_json::json;

fn ip6_of(out: &CniOutcome) -> String {
    let addr = out.json["ips"][1]["address"]
        .as_str()
        .unwrap_or_else(|| panic!("no second ip in {}", out.json));
    addr.split('/').next().unwrap().to_string()
}

fn v6_routes(ns: &str) -> String {
    let out = sh(&["ip", "-n", ns, "-6", "route", "show"]);
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn dual_lifecycle(version: &str, index: u8) {
    require_root();
    let mut node = Node::new(index);
    node.configure(json!({"ip_stack": "dual", "pod_cidr_v6": format!("fd00:250:{index}::/64")}));
    let node_v6 = format!("fd00:192:168::{index}");
    sh_ok(&[
        "ip",
        "-n",
        &node.ns.name,
        "-6",
        "addr",
        "add",
        &format!("{node_v6}/128"),
        "dev",
        "lo",
    ]);
    node.start_daemon();
    let conf = node.netconf(version);
    let pod_a = Netns::new("twpod");
    let pod_b = Netns::new("twpod");
    let a = node.cni("ADD", "ctr-a", &pod_a.path(), &conf);
    a.assert_ok();
    let b = node.cni("ADD", "ctr-b", &pod_b.path(), &conf);
    b.assert_ok();

    // The result carries both addresses and both default routes.
    let ips = a.json["ips"].as_array().unwrap();
    assert_eq!(ips.len(), 2, "{}", a.json);
    assert_eq!(ips[1]["gateway"], "fe80::1", "{}", a.json);
    assert_eq!(
        ips[1].get("version").is_some(),
        version.starts_with("0."),
        "{}",
        a.json
    );
    let routes = a.json["routes"].as_array().unwrap();
    assert!(
        routes.contains(&json!({"dst": "::/0", "gw": "fe80::1"})),
        "{}",
        a.json
    );
    let (ip6_a, ip6_b) = (ip6_of(&a), ip6_of(&b));
    assert!(ip6_a.starts_with(&format!("fd00:250:{index}::")), "{ip6_a}");
    assert_ne!(ip6_a, ip6_b);
    let shown = pod_a.exec(&["ip", "-6", "addr", "show", "dev", "eth0"]);
    let shown = String::from_utf8_lossy(&shown.stdout);
    assert!(shown.contains(&format!("{ip6_a}/128")), "{shown}");
    assert!(!shown.contains("tentative"), "usable at once: {shown}");

    // Right away, no DAD wait.
    assert!(pod_a.ping(&ip6_b), "pod a -> pod b {ip6_b}");
    assert!(pod_b.ping(&ip6_a), "pod b -> pod a {ip6_a}");
    assert!(pod_a.ping(&node_v6), "pod a -> node over IPv6");
    assert!(node.ns.ping(&ip6_a), "node -> pod a over IPv6");
    assert!(pod_a.ping(&b.ip()), "pod a -> pod b over IPv4");

    let mut with_prev = conf.clone();
    with_prev["prevResult"] = a.json.clone();
    if version != "0.3.0" && version != "0.3.1" {
        node.cni("CHECK", "ctr-a", &pod_a.path(), &with_prev)
            .assert_ok();
    }
    node.cni("DEL", "ctr-a", &pod_a.path(), &with_prev)
        .assert_ok();
    // (DEL returns before the daemon's teardown has removed the veth.)
    wait_until(std::time::Duration::from_secs(5), || {
        !v6_routes(&node.ns.name).contains(&ip6_a)
    });
    assert!(
        !v6_routes(&node.ns.name).contains(&ip6_a),
        "no IPv6 route to pod a left"
    );
    assert!(!pod_b.ping(&ip6_a), "pod a is gone after DEL");

    // DEL while the daemon is down: the node's routes say what pod b held, both families go.
    node.kill_daemon(Signal::SIGTERM);
    let r = node.cni("DEL", "ctr-b", &pod_b.path(), &conf);
    r.assert_ok();
    assert!(
        !v6_routes(&node.ns.name).contains(&ip6_b),
        "no IPv6 route to pod b left"
    );
}

#[test]
fn dual_stack_cni_0_4_0() {
    dual_lifecycle("0.4.0", 90);
}

#[test]
fn dual_stack_cni_1_1_0() {
    dual_lifecycle("1.1.0", 91);
}
