//! VPC mode end to end, as root: the real plugin binary exec'd like a runtime does, the real
//! daemon in a node namespace, pods in their own namespaces, pings through the kernel.

mod common;

use common::*;
use nix::sys::signal::Signal;
use serde_json::json;
use std::collections::HashSet;

fn add_ping_check_del(version: &str, index: u8) {
    require_root();
    let mut node = Node::new(index);
    node.start_daemon();
    let conf = node.netconf(version);
    let pod_a = Netns::new("twpod");
    let pod_b = Netns::new("twpod");
    let a = node.cni("ADD", "ctr-a", &pod_a.path(), &conf);
    a.assert_ok();
    let b = node.cni("ADD", "ctr-b", &pod_b.path(), &conf);
    b.assert_ok();
    assert_eq!(a.json["cniVersion"], version);
    let carries_version = version.starts_with("0.");
    assert_eq!(
        a.json["ips"][0].get("version").is_some(),
        carries_version,
        "{}",
        a.json
    );
    assert_eq!(a.json["interfaces"][1]["sandbox"], pod_a.path());
    let (ip_a, ip_b) = (a.ip(), b.ip());
    assert_ne!(ip_a, ip_b);
    assert!(ip_a.starts_with(&format!("10.250.{index}.")), "{ip_a}");

    assert!(pod_a.ping(&ip_b), "pod a -> pod b {ip_b}");
    assert!(pod_b.ping(&ip_a), "pod b -> pod a {ip_a}");
    assert!(pod_a.ping(&node.node_ip), "pod a -> node");
    assert!(node.ns.ping(&ip_a), "node -> pod a");

    let mut with_prev = conf.clone();
    with_prev["prevResult"] = a.json.clone();
    if version != "0.3.0" && version != "0.3.1" {
        node.cni("CHECK", "ctr-a", &pod_a.path(), &with_prev)
            .assert_ok();
    } else {
        let r = node.cni("CHECK", "ctr-a", &pod_a.path(), &with_prev);
        assert_eq!(
            r.code(),
            1,
            "CHECK before 0.4.0 is an incompatible version: {}",
            r.json
        );
    }
    let mapping = node.cli(&["mapping"]);
    let text = String::from_utf8_lossy(&mapping.stdout);
    assert!(mapping.status.success(), "{text}");
    assert!(text.contains("Status | Pod Name"), "{text}");
    assert!(
        text.contains("default/pod-ctr-a") && text.contains(&ip_a),
        "{text}"
    );

    node.cni("DEL", "ctr-a", &pod_a.path(), &with_prev)
        .assert_ok();
    // The daemon removes the veth after answering DEL and frees the address only then.
    wait_in_use(&node, 1);
    assert!(!pod_a.ping(&ip_b), "pod a must be cut off after DEL");
    node.cni("DEL", "ctr-a", &pod_a.path(), &with_prev)
        .assert_ok();
    node.cni("DEL", "ctr-a", "", &with_prev).assert_ok();
    if version != "0.3.0" && version != "0.3.1" {
        let r = node.cni("CHECK", "ctr-a", &pod_a.path(), &with_prev);
        assert!(!r.ok && r.code() == 3, "CHECK after DEL: {}", r.json);
    }
    node.cni("DEL", "ctr-b", &pod_b.path(), &conf).assert_ok();
    wait_in_use(&node, 0);
}

/// Waits (bounded) until the daemon holds `n` addresses: a DEL's address is freed once the
/// daemon has removed the veth, shortly after DEL returned.
fn wait_in_use(node: &Node, n: u64) {
    let in_use = || -> serde_json::Value {
        serde_json::from_slice::<serde_json::Value>(&node.cli(&["pool", "--json"]).stdout).unwrap()
            ["in_use"]
            .clone()
    };
    assert!(
        wait_until(std::time::Duration::from_secs(5), || in_use() == n),
        "the daemon still holds {} address(es), want {n}",
        in_use()
    );
}

#[test]
fn lifecycle_cni_0_3_0() {
    add_ping_check_del("0.3.0", 10);
}

#[test]
fn lifecycle_cni_0_3_1() {
    add_ping_check_del("0.3.1", 11);
}

#[test]
fn lifecycle_cni_0_4_0() {
    add_ping_check_del("0.4.0", 12);
}

#[test]
fn lifecycle_cni_1_0_0() {
    add_ping_check_del("1.0.0", 13);
}

#[test]
fn lifecycle_cni_1_1_0() {
    add_ping_check_del("1.1.0", 14);
}

#[test]
fn fifty_parallel_adds_get_distinct_addresses() {
    require_root();
    let mut node = Node::new(20);
    node.start_daemon();
    let conf = node.netconf("1.0.0");
    let pods: Vec<Netns> = (0..50).map(|_| Netns::new("twpod")).collect();
    let ips: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = pods
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let (node, conf) = (&node, &conf);
                s.spawn(move || {
                    let r = node.cni("ADD", &format!("par-{i}"), &p.path(), conf);
                    r.assert_ok();
                    r.ip()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let distinct: HashSet<&String> = ips.iter().collect();
    assert_eq!(distinct.len(), 50, "{ips:?}");
    assert!(pods[0].ping(&ips[49]), "pod 0 -> pod 49");
    let state = node.stored_state();
    assert_eq!(state["allocations"].as_array().unwrap().len(), 50);
    for (i, p) in pods.iter().enumerate() {
        node.cni("DEL", &format!("par-{i}"), &p.path(), &conf)
            .assert_ok();
    }
}

#[test]
fn sigkill_between_adds_keeps_every_allocation() {
    require_root();
    let mut node = Node::new(21);
    node.start_daemon();
    let conf = node.netconf("1.0.0");
    let pods: Vec<Netns> = (0..3).map(|_| Netns::new("twpod")).collect();
    let first = node.cni("ADD", "k-0", &pods[0].path(), &conf);
    first.assert_ok();
    node.kill_daemon(Signal::SIGKILL);
    node.start_daemon();
    let second = node.cni("ADD", "k-1", &pods[1].path(), &conf);
    second.assert_ok();
    node.kill_daemon(Signal::SIGKILL);
    node.start_daemon();
    let third = node.cni("ADD", "k-2", &pods[2].path(), &conf);
    third.assert_ok();
    let ips: HashSet<String> = [first.ip(), second.ip(), third.ip()].into();
    assert_eq!(
        ips.len(),
        3,
        "a restart handed out an address twice: {ips:?}"
    );
    // A retried ADD of the first pod gets its old address back.
    assert_eq!(
        node.cni("ADD", "k-0", &pods[0].path(), &conf).ip(),
        first.ip()
    );
    let mapping = String::from_utf8_lossy(&node.cli(&["mapping"]).stdout).into_owned();
    for ip in &ips {
        assert!(
            mapping.contains(ip.as_str()),
            "{ip} missing from\n{mapping}"
        );
    }
    assert!(pods[2].ping(&first.ip()));
}

#[test]
fn del_with_daemon_down_succeeds_and_gc_reclaims() {
    require_root();
    let mut node = Node::new(22);
    node.configure(json!({"orphan_grace_period": "0s"}));
    node.start_daemon();
    let conf = node.netconf("1.1.0");
    let (pod_a, pod_b) = (Netns::new("twpod"), Netns::new("twpod"));
    let a = node.cni("ADD", "gc-a", &pod_a.path(), &conf);
    a.assert_ok();
    node.cni("ADD", "gc-b", &pod_b.path(), &conf).assert_ok();
    let host_if = a.json["interfaces"][0]["name"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(link_exists(&node.ns.name, &host_if));

    assert!(
        node.kill_daemon(Signal::SIGTERM).success(),
        "TERM must exit 0"
    );
    let mut with_prev = conf.clone();
    with_prev["prevResult"] = a.json.clone();
    let del = node.cni("DEL", "gc-a", &pod_a.path(), &with_prev);
    del.assert_ok();
    assert!(
        del.stderr.contains("reclaimed later by GC"),
        "{}",
        del.stderr
    );
    assert!(
        !link_exists(&node.ns.name, &host_if),
        "veth must go even with the daemon down"
    );

    let status = node.cni("STATUS", "", "", &conf);
    assert_eq!(
        status.code(),
        50,
        "STATUS with the daemon down: {}",
        status.json
    );

    node.start_daemon();
    node.cni("STATUS", "", "", &conf).assert_ok();
    let pool = |node: &Node| -> serde_json::Value {
        serde_json::from_slice(&node.cli(&["pool", "--json"]).stdout).unwrap()
    };
    assert_eq!(pool(&node)["in_use"], 2, "the address stays held until GC");
    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "gc-b", "ifname": "eth0"}]);
    node.cni("GC", "", "", &gc).assert_ok();
    assert_eq!(pool(&node)["in_use"], 1);
    assert!(
        pod_b.ping(&node.node_ip),
        "GC must not touch valid attachments"
    );
}

#[test]
fn status_reports_exhaustion() {
    require_root();
    let mut node = Node::with_cidr(23, "10.250.23.0/30");
    node.start_daemon();
    let conf = node.netconf("1.1.0");
    node.cni("STATUS", "", "", &conf).assert_ok();
    let pod = Netns::new("twpod");
    node.cni("ADD", "only", &pod.path(), &conf).assert_ok();
    let status = node.cni("STATUS", "", "", &conf);
    assert_eq!(status.code(), 50, "{}", status.json);
    // The daemon tells the plugin its pods get veths: the plugin builds the pair while the
    // daemon allocates, and removes it when no address comes.
    let hint = terway::rpc::hint::path(std::path::Path::new(&node.socket()));
    assert_eq!(std::fs::read_to_string(&hint).unwrap(), "veth\n");
    let pod2 = Netns::new("twpod");
    let full = node.cni("ADD", "second", &pod2.path(), &conf);
    assert!(!full.ok);
    assert_eq!(full.code(), 103, "{}", full.json);
    assert!(
        full.json["details"]
            .as_str()
            .unwrap()
            .contains("10.250.23.0/30")
    );
    let links = sh_ok(&["ip", "-n", &node.ns.name, "-o", "link"]);
    assert_eq!(
        links.matches(": tw").count(),
        1,
        "only the first pod's veth: {links}"
    );
    let in_pod = sh_ok(&["ip", "-n", &pod2.name, "-o", "link"]);
    assert!(!in_pod.contains("eth0"), "{in_pod}");
}

#[test]
fn bad_input_gets_the_right_error_code() {
    require_root();
    let mut node = Node::new(24);
    node.start_daemon();
    let conf = node.netconf("1.0.0");
    let pod = Netns::new("twpod");
    let ns = node.ns.name.clone();

    let r = cni_raw(&ns, "ADD", "bad-1", &pod.path(), b"{not json", &[]);
    assert_eq!((r.ok, r.code()), (false, 6), "{}", r.json);

    let r = cni_in(
        &ns,
        "ADD",
        "bad-2",
        &pod.path(),
        &conf,
        &[("CNI_IFNAME", "")],
    );
    assert_eq!(r.code(), 4, "{}", r.json);
    assert!(r.json["details"].as_str().unwrap().contains("CNI_IFNAME"));

    let r = cni_in(
        &ns,
        "ADD",
        "bad-3",
        &pod.path(),
        &node.netconf("0.2.0"),
        &[],
    );
    assert_eq!(r.code(), 1, "{}", r.json);

    let file = node.dir.0.join("not-a-netns");
    std::fs::write(&file, b"x").unwrap();
    let r = node.cni("ADD", "bad-4", file.to_str().unwrap(), &conf);
    assert_eq!(r.code(), 4, "{}", r.json);
    assert!(
        r.json["details"].as_str().unwrap().contains("not-a-netns"),
        "{}",
        r.json
    );

    let r = node.cni("ADD", "bad-5", "/run/netns/does-not-exist-terway", &conf);
    assert_eq!(r.code(), 4, "{}", r.json);

    let r = cni_in(&ns, "FROB", "bad-6", &pod.path(), &conf, &[]);
    assert_eq!(r.code(), 4, "{}", r.json);

    let mut bad_mtu = conf.clone();
    bad_mtu["mtu"] = json!(12);
    let r = node.cni("ADD", "bad-7", &pod.path(), &bad_mtu);
    assert_eq!(r.code(), 7, "{}", r.json);

    // None of the failures may have taken an address.
    let pool: serde_json::Value =
        serde_json::from_slice(&node.cli(&["pool", "--json"]).stdout).unwrap();
    assert_eq!(pool["in_use"], 0, "{pool}");

    // A vanished netns: ADD fails cleanly, DEL still succeeds.
    let gone = Netns::new("twpod");
    let path = gone.path();
    drop(gone);
    assert_eq!(node.cni("ADD", "bad-8", &path, &conf).code(), 4);
    node.cni("DEL", "bad-8", &path, &conf).assert_ok();

    let v = cni_in(&ns, "VERSION", "", "", &json!({"cniVersion": "1.1.0"}), &[]);
    assert!(v.ok && v.json["supportedVersions"].as_array().unwrap().len() >= 4);
}

#[test]
fn daemon_refuses_a_bad_config_and_a_corrupt_state_file() {
    require_root();
    let node = Node::new(25);
    node.configure(json!({"pod_cidr": "10.250.300.0/24"}));
    let check = sh(&[BIN, "config", "check", node.config_path().to_str().unwrap()]);
    assert!(!check.status.success());
    let text = String::from_utf8_lossy(&check.stdout);
    assert!(
        text.contains("key \"pod_cidr\"") && text.contains("10.250.300.0/24"),
        "{text}"
    );
    let run = node.ns.exec(&[
        BIN,
        "daemon",
        "--config",
        node.config_path().to_str().unwrap(),
    ]);
    assert!(!run.status.success());
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(err.contains("pod_cidr"), "{err}");

    let mut node = Node::new(26);
    node.start_daemon();
    let pod = Netns::new("twpod");
    node.cni("ADD", "st-1", &pod.path(), &node.netconf("1.0.0"))
        .assert_ok();
    node.kill_daemon(Signal::SIGTERM);
    std::fs::write(node.state_path(), b"{\"schema\":1,\"allocations\":[").unwrap();
    let run = node.ns.exec(&[
        BIN,
        "daemon",
        "--config",
        node.config_path().to_str().unwrap(),
    ]);
    assert!(!run.status.success());
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(
        err.contains("state.json is corrupt") && err.contains("state.json.prev"),
        "{err}"
    );
}

#[test]
fn non_root_clients_are_refused() {
    require_root();
    use std::os::unix::process::CommandExt;
    let mut node = Node::new(27);
    node.start_daemon();
    let mode = std::fs::metadata(node.socket()).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(mode.permissions().mode() & 0o777, 0o600);
    // Let "nobody" reach the directory and the socket, so the daemon's own check must refuse.
    std::fs::set_permissions(&node.dir.0, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(node.socket(), std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = std::process::Command::new(BIN)
        .args(["pool", "--socket", &node.socket()])
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("only root may talk to the terway daemon"),
        "{err}"
    );
    assert!(
        node.daemon_log()
            .contains("refused a request from uid 65534")
    );
}

#[test]
fn hup_reloads_the_config_without_touching_pods() {
    require_root();
    let mut node = Node::new(28);
    node.start_daemon();
    let conf = node.netconf("1.0.0");
    let pod = Netns::new("twpod");
    let a = node.cni("ADD", "hup-a", &pod.path(), &conf);
    a.assert_ok();
    let pool = |node: &Node| -> serde_json::Value {
        serde_json::from_slice(&node.cli(&["pool", "--json"]).stdout).unwrap()
    };
    let pid = node.daemon.as_ref().unwrap().pid();
    // A CIDR that still holds the pod's address is taken, watermarks too.
    node.configure(json!({"pod_cidr": "10.250.0.0/16", "max_pool_size": 9}));
    nix::sys::signal::kill(pid, Signal::SIGHUP).unwrap();
    assert!(
        wait_until(
            std::time::Duration::from_secs(5),
            || pool(&node)["pod_cidr"] == "10.250.0.0/16"
        ),
        "reload not applied: {}",
        node.daemon_log()
    );
    assert_eq!(pool(&node)["max_pool_size"], 9);
    // One that would strand the pod is refused and the running config kept.
    node.configure(json!({"pod_cidr": "10.251.0.0/24"}));
    nix::sys::signal::kill(pid, Signal::SIGHUP).unwrap();
    assert!(wait_until(std::time::Duration::from_secs(5), || node
        .daemon_log()
        .contains("does not hold 1 address(es) pods still use")));
    assert_eq!(pool(&node)["pod_cidr"], "10.250.0.0/16");
    assert!(
        pod.ping(&node.node_ip),
        "the pod keeps working through reloads"
    );
    assert_eq!(pool(&node)["in_use"], 1);
}

#[test]
fn allocations_of_an_earlier_boot_are_dropped() {
    require_root();
    let mut node = Node::new(29);
    node.start_daemon();
    let pod = Netns::new("twpod");
    node.cni("ADD", "boot-a", &pod.path(), &node.netconf("1.0.0"))
        .assert_ok();
    node.kill_daemon(Signal::SIGTERM);
    let mut state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(node.state_path()).unwrap()).unwrap();
    assert_eq!(state["allocations"].as_array().unwrap().len(), 1);
    state["boot_id"] = json!("00000000-0000-0000-0000-000000000000");
    std::fs::write(node.state_path(), serde_json::to_vec(&state).unwrap()).unwrap();
    node.start_daemon();
    let pool: serde_json::Value =
        serde_json::from_slice(&node.cli(&["pool", "--json"]).stdout).unwrap();
    assert_eq!(pool["in_use"], 0, "{pool}");
    assert!(
        node.daemon_log().contains("node rebooted"),
        "{}",
        node.daemon_log()
    );
}

#[test]
fn the_daemon_sweeps_allocations_whose_pod_is_gone() {
    require_root();
    let mut node = Node::new(30);
    node.configure(json!({"orphan_grace_period": "0s"}));
    node.start_daemon();
    let conf = node.netconf("1.0.0");
    let (gone, kept) = (Netns::new("twpod"), Netns::new("twpod"));
    let a = node.cni("ADD", "sw-gone", &gone.path(), &conf);
    a.assert_ok();
    node.cni("ADD", "sw-kept", &kept.path(), &conf).assert_ok();
    node.kill_daemon(Signal::SIGTERM);
    // DEL while the daemon is down, then the pod's namespace goes too: no GC ever comes.
    let mut with_prev = conf.clone();
    with_prev["prevResult"] = a.json.clone();
    node.cni("DEL", "sw-gone", &gone.path(), &with_prev)
        .assert_ok();
    drop(gone);
    node.start_daemon();
    let pool = |node: &Node| -> serde_json::Value {
        serde_json::from_slice(&node.cli(&["pool", "--json"]).stdout).unwrap()
    };
    assert!(
        wait_until(std::time::Duration::from_secs(5), || pool(&node)["in_use"]
            == 1),
        "the orphan is released at start: {}",
        node.daemon_log()
    );
    assert!(node.daemon_log().contains("sweep: releasing"));
    assert!(kept.ping(&node.node_ip), "a live pod is never swept");
}

#[test]
fn check_finds_broken_wiring_and_add_rolls_back_a_failed_setup() {
    require_root();
    let mut node = Node::new(31);
    node.start_daemon();
    let conf = node.netconf("1.0.0");
    let pod = Netns::new("twpod");
    let a = node.cni("ADD", "chk", &pod.path(), &conf);
    a.assert_ok();
    let mut with_prev = conf.clone();
    with_prev["prevResult"] = a.json.clone();
    node.cni("CHECK", "chk", &pod.path(), &with_prev)
        .assert_ok();
    sh_ok(&[
        "ip",
        "-n",
        &pod.name,
        "neigh",
        "flush",
        "dev",
        "eth0",
        "nud",
        "permanent",
    ]);
    let r = node.cni("CHECK", "chk", &pod.path(), &with_prev);
    assert_eq!(r.code(), 102, "{}", r.json);
    assert!(
        r.json["details"].as_str().unwrap().contains("169.254.1.1"),
        "{}",
        r.json
    );
    node.cni("DEL", "chk", &pod.path(), &with_prev).assert_ok();
    // (DEL returns before the daemon's teardown frees the address.)
    let in_use = || {
        let out = node.cli(&["pool", "--json"]).stdout;
        serde_json::from_slice::<serde_json::Value>(&out).unwrap()["in_use"].clone()
    };
    assert!(wait_until(std::time::Duration::from_secs(5), || in_use() == 0));

    // The pod already has an eth0: the veth cannot be made; the address must go back.
    let busy = Netns::new("twpod");
    sh_ok(&[
        "ip", "-n", &busy.name, "link", "add", "eth0", "type", "veth", "peer", "name", "x0",
    ]);
    let r = node.cni("ADD", "busy", &busy.path(), &conf);
    assert!(!r.ok, "{}", r.json);
    let pool: serde_json::Value =
        serde_json::from_slice(&node.cli(&["pool", "--json"]).stdout).unwrap();
    assert_eq!(pool["in_use"], 0, "rolled back: {pool}");
    let links = sh_ok(&["ip", "-n", &node.ns.name, "-o", "link"]);
    assert!(!links.contains(": tw"), "no veth left behind: {links}");
}

#[test]
fn an_add_right_after_the_del_of_its_attachment_gets_a_whole_datapath() {
    // The daemon removes a DEL's veth after answering; an ADD of the same attachment (same
    // container, same namespace) right after it races that removal with the pair the plugin
    // builds while the daemon allocates.
    require_root();
    let mut node = Node::new(35);
    node.start_daemon();
    let conf = node.netconf("1.0.0");
    let pod = Netns::new("twpod");
    for round in 0..5 {
        let a = node.cni("ADD", "again", &pod.path(), &conf);
        a.assert_ok();
        let mut with_prev = conf.clone();
        with_prev["prevResult"] = a.json.clone();
        node.cni("CHECK", "again", &pod.path(), &with_prev)
            .assert_ok();
        assert!(pod.ping(&node.node_ip), "round {round}: pod -> node");
        node.cni("DEL", "again", &pod.path(), &with_prev)
            .assert_ok();
    }
    let a = node.cni("ADD", "again", &pod.path(), &conf);
    a.assert_ok();
    assert!(pod.ping(&node.node_ip));
    let links = sh_ok(&["ip", "-n", &node.ns.name, "-o", "link"]);
    assert_eq!(links.matches(": tw").count(), 1, "{links}");
}

#[test]
fn a_second_daemon_on_the_same_state_is_refused_without_touching_it() {
    require_root();
    let mut node = Node::new(32);
    node.start_daemon();
    let pod = Netns::new("twpod");
    node.cni("ADD", "two", &pod.path(), &node.netconf("1.0.0"))
        .assert_ok();
    let log = node.state_path().with_file_name("state.json.log");
    let before = std::fs::read(node.state_path()).unwrap();
    let log_before = std::fs::read(&log).unwrap();
    let run = node.ns.exec(&[
        BIN,
        "daemon",
        "--config",
        node.config_path().to_str().unwrap(),
    ]);
    assert!(!run.status.success());
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(err.contains("another terway daemon"), "{err}");
    assert_eq!(std::fs::read(node.state_path()).unwrap(), before);
    assert!(
        std::fs::read(&log).unwrap() == log_before,
        "the log changed"
    );
    assert!(pod.ping(&node.node_ip));
}

#[test]
fn del_does_not_hang_on_a_daemon_that_never_answers() {
    require_root();
    let node = Node::new(33);
    // Something accepts on the socket but never replies (a wedged daemon).
    let listener = std::os::unix::net::UnixListener::bind(node.socket()).unwrap();
    let pod = Netns::new("twpod");
    let t = std::time::Instant::now();
    let r = node.cni("DEL", "hung", &pod.path(), &node.netconf("1.0.0"));
    r.assert_ok();
    assert!(
        t.elapsed() < std::time::Duration::from_secs(10),
        "DEL took {:?}",
        t.elapsed()
    );
    drop(listener);
}

#[test]
fn the_plugin_logs_to_stderr_warnings_by_default_more_with_terway_log() {
    // A retried ADD of one attachment finds its own host veth and replaces it, which the
    // plugin says at `info`: not by default, on stderr with TERWAY_LOG=info; stdout stays the
    // CNI result either way.
    require_root();
    let mut node = Node::new(36);
    node.start_daemon();
    let conf = node.netconf("1.0.0");
    let pod = Netns::new("twpod");
    let id = "0123456789abcdef-retried";
    node.cni("ADD", id, &pod.path(), &conf).assert_ok();
    let quiet = node.cni("ADD", id, &pod.path(), &conf);
    quiet.assert_ok();
    assert_eq!(quiet.stderr, "", "warnings only by default");
    let told = cni_in(
        &node.ns.name,
        "ADD",
        id,
        &pod.path(),
        &conf,
        &[("TERWAY_LOG", "info")],
    );
    told.assert_ok();
    assert!(
        told.stderr
            .starts_with("terway plugin ADD 0123456789ab: INFO removing stale host veth tw"),
        "{}",
        told.stderr
    );
    assert_eq!(told.stderr.lines().count(), 1, "{}", told.stderr);
    assert!(pod.ping(&node.node_ip));
    node.cni("DEL", id, &pod.path(), &conf).assert_ok();
}
