//! Hardening of the plugin, as root, black-box (the real binary and daemon): an address belongs
//! to exactly one pod, and a plugin call touches only its own pod's objects — whatever the
//! runtime (or an attacker posing as one) passes and however calls interleave.

mod common;

use common::*;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::process::{Command, Stdio};

/// Addresses the daemon holds, per container id, from the state it saved.
fn recorded(node: &Node) -> BTreeMap<String, String> {
    let state: Value = node.stored_state();
    let mut out = BTreeMap::new();
    for a in state["allocations"].as_array().unwrap() {
        let id = a["key"]["container_id"].as_str().unwrap().to_string();
        let addr = a["address"]["ipv4"]["addr"].as_str().unwrap();
        let ip = addr.split('/').next().unwrap().to_string();
        assert!(out.insert(id.clone(), ip).is_none(), "{id} recorded twice");
    }
    out
}

/// Whether `f` holds within a few seconds (the daemon's teardown after a DEL).
fn settled(f: impl FnMut() -> bool) -> bool {
    wait_until(std::time::Duration::from_secs(5), f)
}

fn in_use(node: &Node) -> u64 {
    let out = node.cli(&["pool", "--json"]);
    assert!(out.status.success(), "{out:?}");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["in_use"].as_u64().unwrap()
}

/// The IPv4 address on `eth0` inside a pod namespace, if it has one.
fn pod_eth0_ip(pod: &Netns) -> Option<String> {
    let out = pod.exec(&["ip", "-4", "-o", "addr", "show", "dev", "eth0"]);
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let word = text
        .split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)?;
    Some(word.split('/').next()?.to_string())
}

fn default_route(ns: &str) -> String {
    sh_ok(&["ip", "-n", ns, "route", "show", "default"])
}

/// A default route of the node's own, through a veth whose both ends stay in the node.
fn give_node_a_default_route(node: &Node) {
    let ns = &node.ns.name;
    sh_ok(&[
        "ip", "-n", ns, "link", "add", "twgw0", "type", "veth", "peer", "name", "twgw1",
    ]);
    sh_ok(&["ip", "-n", ns, "link", "set", "twgw0", "up"]);
    sh_ok(&[
        "ip",
        "-n",
        ns,
        "route",
        "add",
        "default",
        "via",
        "10.99.0.1",
        "dev",
        "twgw0",
        "onlink",
    ]);
}

#[test]
fn overlapping_adds_of_one_attachment_never_share_or_lose_its_address() {
    require_root();
    let mut node = Node::new(60);
    node.start_daemon();
    let conf = node.netconf("1.0.0");
    let mut pods = Vec::new();
    for round in 0..12 {
        let pod = Netns::new("twpod");
        let id = format!("dup-{round}");
        // A runtime retrying ADD while its first call still runs.
        let results: Vec<CniOutcome> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..2)
                .map(|_| s.spawn(|| node.cni("ADD", &id, &pod.path(), &conf)))
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let ok: Vec<&CniOutcome> = results.iter().filter(|r| r.ok).collect();
        assert!(
            !ok.is_empty(),
            "round {round}: both ADDs failed: {results:?}"
        );
        let ip = ok[0].ip();
        for r in &ok {
            assert_eq!(r.ip(), ip, "round {round}: one attachment, two addresses");
        }
        // The attachment still holds its address and its wiring is whole.
        let check = node.cni("CHECK", &id, &pod.path(), &conf);
        assert!(check.ok, "round {round}: {check:?}");
        assert_eq!(recorded(&node).get(&id), Some(&ip), "round {round}");
        assert_eq!(pod_eth0_ip(&pod).as_deref(), Some(ip.as_str()));
        pods.push((id, pod, ip));
    }
    // Later pods never get an address a live pod uses.
    let live: HashSet<String> = pods.iter().map(|p| p.2.clone()).collect();
    for i in 0..4 {
        let pod = Netns::new("twpod");
        let r = node.cni("ADD", &format!("later-{i}"), &pod.path(), &conf);
        r.assert_ok();
        assert!(!live.contains(&r.ip()), "{} handed out twice", r.ip());
        node.cni("DEL", &format!("later-{i}"), &pod.path(), &conf)
            .assert_ok();
    }
    for (id, pod, _) in &pods {
        assert!(pod.ping(&node.node_ip), "{id} lost its network");
        node.cni("DEL", id, &pod.path(), &conf).assert_ok();
    }
    assert!(settled(|| in_use(&node) == 0), "{} in use", in_use(&node));
}

#[test]
fn the_nodes_own_namespace_is_never_a_pods() {
    require_root();
    let mut node = Node::new(61);
    node.start_daemon();
    give_node_a_default_route(&node);
    let before = default_route(&node.ns.name);
    let conf = node.netconf("1.0.0");
    // Every path that names the node's namespace: the plugin's own, and the named mount.
    for netns in [
        "/proc/self/ns/net",
        "/proc/thread-self/ns/net",
        &node.ns.path(),
    ] {
        let r = cni_in(
            &node.ns.name,
            "ADD",
            "own-ns",
            netns,
            &conf,
            &[("CNI_IFNAME", "net1")],
        );
        assert!(!r.ok, "{netns}: {r:?}");
        assert_eq!(r.code(), 4, "{netns}: {}", r.json);
        assert!(
            r.json["details"]
                .as_str()
                .unwrap()
                .contains("node's own network namespace"),
            "{}",
            r.json
        );
        let del = cni_in(
            &node.ns.name,
            "DEL",
            "own-ns",
            netns,
            &conf,
            &[("CNI_IFNAME", "net1")],
        );
        assert!(del.ok, "{del:?}");
    }
    assert_eq!(
        default_route(&node.ns.name),
        before,
        "the node's default route changed"
    );
    assert!(!link_exists(&node.ns.name, "net1"));
    assert_eq!(in_use(&node), 0, "a refused ADD took an address");
}

#[test]
fn add_never_replaces_a_route_it_did_not_make() {
    require_root();
    let mut node = Node::with_cidr(62, "10.250.62.0/29");
    node.start_daemon();
    give_node_a_default_route(&node);
    let conf = node.netconf("1.0.0");
    // Somebody else's routes to every address the pod could get.
    let theirs: Vec<String> = (2..=6).map(|i| format!("10.250.62.{i}")).collect();
    for ip in &theirs {
        sh_ok(&[
            "ip",
            "-n",
            &node.ns.name,
            "route",
            "add",
            &format!("{ip}/32"),
            "dev",
            "twgw0",
        ]);
    }
    let pod = Netns::new("twpod");
    let r = node.cni("ADD", "clash", &pod.path(), &conf);
    assert!(!r.ok, "{r:?}");
    assert_eq!(r.code(), 102, "{}", r.json);
    assert!(
        r.json["details"]
            .as_str()
            .unwrap()
            .contains("refusing to replace"),
        "{}",
        r.json
    );
    for ip in &theirs {
        let route = sh_ok(&[
            "ip",
            "-n",
            &node.ns.name,
            "route",
            "show",
            &format!("{ip}/32"),
        ]);
        assert!(route.contains("twgw0"), "{ip}: {route}");
    }
    assert_eq!(in_use(&node), 0, "the failed ADD kept its address");
}

#[test]
fn del_touches_only_its_own_attachment_whatever_prev_result_says() {
    require_root();
    let mut node = Node::new(63);
    node.start_daemon();
    let conf = node.netconf("1.0.0");
    let (pod_a, pod_b, pod_c) = (
        Netns::new("twpod"),
        Netns::new("twpod"),
        Netns::new("twpod"),
    );
    let a = node.cni("ADD", "victim", &pod_a.path(), &conf);
    a.assert_ok();
    let b = node.cni("ADD", "liar", &pod_b.path(), &conf);
    b.assert_ok();
    let c = node.cni("ADD", "clumsy", &pod_c.path(), &conf);
    c.assert_ok();
    let victim_veth = a.json["interfaces"][0]["name"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(link_exists(&node.ns.name, &victim_veth));

    // B's DEL claims A's host veth and A's address.
    let mut lie = b.json.clone();
    lie["interfaces"][0]["name"] = json!(victim_veth);
    lie["ips"][0]["address"] = a.json["ips"][0]["address"].clone();
    let mut with_lie = conf.clone();
    with_lie["prevResult"] = lie;
    node.cni("DEL", "liar", &pod_b.path(), &with_lie)
        .assert_ok();
    assert!(
        link_exists(&node.ns.name, &victim_veth),
        "DEL removed another pod's veth"
    );
    assert!(pod_a.ping(&node.node_ip), "pod A lost its network");
    assert_eq!(recorded(&node).get("victim"), Some(&a.ip()));
    // The daemon frees a DEL'd address once it has removed the veth, just after DEL returned.
    assert!(
        settled(|| !recorded(&node).contains_key("liar")),
        "B's address was not released"
    );

    // Names that are not interface names at all never stop the release.
    let mut junk = c.json.clone();
    junk["interfaces"] = json!([
        {"name": "tw/../x"},
        {"name": "tw0123456789abcdefXYZ"},
        {"name": c.json["interfaces"][0]["name"].clone()},
        {"name": "eth0", "sandbox": pod_c.path()},
    ]);
    let mut with_junk = conf.clone();
    with_junk["prevResult"] = junk;
    node.cni("DEL", "clumsy", &pod_c.path(), &with_junk)
        .assert_ok();
    assert!(
        settled(|| !recorded(&node).contains_key("clumsy")),
        "C's address was not released"
    );
    assert!(pod_a.ping(&node.node_ip), "pod A lost its network");
    assert_eq!(in_use(&node), 1);
    node.cni("DEL", "victim", &pod_a.path(), &conf).assert_ok();
    assert!(settled(|| in_use(&node) == 0), "{} in use", in_use(&node));
}

#[test]
fn non_utf8_environment_is_named_not_called_missing() {
    require_root();
    let node = Node::new(64);
    let out = Command::new("ip")
        .args(["netns", "exec", &node.ns.name, BIN])
        .env_clear()
        .env("CNI_COMMAND", "ADD")
        .env("CNI_CONTAINERID", "utf8")
        .env("CNI_IFNAME", "eth0")
        .env("CNI_NETNS", OsStr::from_bytes(b"/run/netns/\xff\xfe"))
        .env("CNI_PATH", "/opt/cni/bin")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["code"], 4, "{v}");
    assert!(
        v["details"]
            .as_str()
            .unwrap()
            .contains("CNI_NETNS is not valid UTF-8"),
        "{v}"
    );
}

#[test]
fn the_plugin_exits_0_or_1_even_when_stdout_is_closed() {
    for (command, stdin) in [("ADD", &b"{not json"[..]), ("VERSION", &b"{}"[..])] {
        let mut child = Command::new(BIN)
            .env_clear()
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", "pipe")
            .env("CNI_IFNAME", "eth0")
            .env("CNI_NETNS", "/proc/self/ns/net")
            .env("CNI_PATH", "/opt/cni/bin")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take()); // the runtime went away
        use std::io::Write;
        let _ = child.stdin.take().unwrap().write_all(stdin);
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        let want = if command == "ADD" { 1 } else { 0 };
        assert_eq!(out.status.code(), Some(want), "{command}: {stderr}");
        assert!(!stderr.contains("panicked"), "{command}: {stderr}");
    }
}

/// Many parallel ADD, DEL and CHECK calls on a few overlapping attachments (the same container
/// id several times at once). Afterwards every pod that has an address has it recorded, exactly
/// once, for its own attachment, and no two pods share one.
#[test]
fn concurrent_calls_on_overlapping_attachments_keep_one_owner_per_address() {
    require_root();
    let mut node = Node::new(65);
    node.start_daemon();
    let conf = node.netconf("1.0.0");
    let ids: Vec<String> = (0..6).map(|i| format!("mix-{i}")).collect();
    let pods: Vec<Netns> = ids.iter().map(|_| Netns::new("twpod")).collect();
    let calls = std::sync::atomic::AtomicU32::new(0);
    std::thread::scope(|s| {
        for worker in 0..6u64 {
            let (node, conf, ids, pods, calls) = (&node, &conf, &ids, &pods, &calls);
            s.spawn(move || {
                // A fixed xorshift per worker: reproducible op sequences.
                let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ (worker + 1);
                for _ in 0..25 {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let i = (x % ids.len() as u64) as usize;
                    let op = ["ADD", "ADD", "DEL", "CHECK"][((x >> 8) % 4) as usize];
                    node.cni(op, &ids[i], &pods[i].path(), conf);
                    calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            });
        }
    });
    assert_eq!(calls.into_inner(), 150);
    // A DEL among the last calls may still have its veth removed by the daemon (it frees the
    // address after): wait until every pod with an eth0 is recorded and every recorded one
    // that lost it is gone, then hold the state to the invariants.
    settled(|| {
        let rec = recorded(&node);
        ids.iter()
            .zip(&pods)
            .all(|(id, pod)| pod_eth0_ip(pod).is_some() == rec.contains_key(id))
    });
    let rec = recorded(&node);
    let mut owners: HashMap<String, String> = HashMap::new();
    for (id, ip) in &rec {
        if let Some(other) = owners.insert(ip.clone(), id.clone()) {
            panic!("{ip} recorded for {other} and {id}");
        }
    }
    let mut seen: HashMap<String, String> = HashMap::new();
    for (id, pod) in ids.iter().zip(&pods) {
        let Some(ip) = pod_eth0_ip(pod) else { continue };
        assert_eq!(
            rec.get(id),
            Some(&ip),
            "{id} uses {ip} but the daemon records {:?}",
            rec.get(id)
        );
        if let Some(other) = seen.insert(ip.clone(), id.clone()) {
            panic!("{ip} is used by {other} and {id}");
        }
        let check = node.cni("CHECK", id, &pod.path(), &conf);
        assert!(check.ok, "{id}: {check:?}");
    }
    for (id, pod) in ids.iter().zip(&pods) {
        node.cni("DEL", id, &pod.path(), &conf).assert_ok();
    }
    assert!(settled(|| in_use(&node) == 0), "{} in use", in_use(&node));
}
