//! `terway emulate --netns`: an ENI device behaves like a NIC. Moved into a pod's namespace it
//! stays attached (no duplicate appears in the node); when that namespace is destroyed it comes
//! back to its node with the same MAC and works again; detached through the API while in a pod,
//! it is removed there. Needs root; fails (never skips) without it.

mod emulate_support;

use emulate_support::netns::*;
use emulate_support::*;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

fn start(tag: &str) -> (Emu, Cleanup, String, String, String) {
    require_root();
    let (cfg, a, b, vpc) = netns_config(tag);
    let guard = Cleanup(cfg.clone(), vpc.clone());
    let emu = Emu::start(&[
        "--netns",
        "--vpc-netns",
        &vpc,
        "--config",
        cfg.to_str().unwrap(),
    ]);
    (emu, guard, a, b, vpc)
}

fn names(ns: &str) -> BTreeSet<String> {
    links_in(ns).into_iter().map(|l| l.name).collect()
}

/// An ENI attached to `inst`, its device seen there: (ENI id, MAC, device name, the name of
/// its veth end in the vpc namespace).
fn attached_eni(emu: &Emu, inst: &str, vpc: &str) -> (String, String, String, String) {
    let before = names(vpc);
    let eni = emu.create_eni(VSW_A, "0");
    emu.attach_and_wait(inst, &eni);
    let mac = emu.eni(&eni)["MacAddress"].as_str().unwrap().to_string();
    emu.wait_until(10, "the ENI's device in its node", || {
        link_by_mac(inst, &mac).is_some()
    });
    let dev = link_by_mac(inst, &mac).unwrap().name;
    let new: Vec<String> = names(vpc).difference(&before).cloned().collect();
    assert_eq!(new.len(), 1, "one VPC-side link per ENI: {new:?}");
    (eni, mac, dev, new[0].clone())
}

/// `<metadata path of the ENI's MAC>`, once the metadata service shows the ENI.
fn meta_of(emu: &Emu, inst: &str, mac: &str, key: &str) -> String {
    let path = format!("network/interfaces/macs/{mac}/{key}");
    emu.wait_until(10, &path, || emu.meta(inst, &path).0 == 200);
    emu.meta(inst, &path).1
}

/// Moves the ENI device into a fresh "pod" namespace as `eth0`.
fn move_to_pod(node: &str, dev: &str, pod: String) -> TestNs {
    let pod = TestNs::add(pod);
    ipn(node, &["link", "set", dev, "netns", &pod.0, "name", "eth0"]);
    pod
}

/// Polls `f` every 5 ms; the time it took to hold, or a panic after `secs`.
fn time_until(secs: u64, what: &str, mut f: impl FnMut() -> bool) -> Duration {
    let t0 = Instant::now();
    while !f() {
        assert!(
            t0.elapsed() < Duration::from_secs(secs),
            "timed out: {what}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    t0.elapsed()
}

#[test]
fn eni_device_returns_to_its_node_when_the_pod_namespace_goes() {
    let (emu, _guard, a, b, vpc) = start("r");
    let b_ip = emu.meta(&b, "private-ipv4").1;
    let (eni, mac, dev, vpc_end) = attached_eni(&emu, &a, &vpc);
    let ip = meta_of(&emu, &a, &mac, "primary-ip-address");
    let gw = meta_of(&emu, &a, &mac, "gateway");
    let prefix = meta_of(&emu, &a, &mac, "vswitch-cidr-block")
        .split_once('/')
        .unwrap()
        .1
        .to_string();
    let vpc_links = names(&vpc);

    // In a pod, as exclusive ENI mode puts it: it works from there.
    let pod = move_to_pod(&a, &dev, format!("pod-r{}", std::process::id()));
    ipn(&pod.0, &["link", "set", "eth0", "up"]);
    ipn(
        &pod.0,
        &["addr", "add", &format!("{ip}/{prefix}"), "dev", "eth0"],
    );
    ipn(&pod.0, &["route", "add", "default", "via", &gw]);
    assert_eq!(link_by_mac(&pod.0, &mac).unwrap().name, "eth0");
    assert!(ping(&pod.0, None, &gw), "the vSwitch gateway from the pod");
    assert!(ping(&pod.0, None, &b_ip), "instance B from the pod");
    // Still attached, not missing: no duplicate in the node or in the VPC over many ticks.
    std::thread::sleep(Duration::from_millis(1000));
    assert!(
        link_by_mac(&a, &mac).is_none(),
        "a duplicate of the ENI appeared in its node while it sits in the pod"
    );
    assert_eq!(names(&vpc), vpc_links, "VPC-side links changed");
    assert_eq!(emu.eni(&eni)["Status"], "InUse");

    // The pod's namespace goes: the device comes back to its node, with its MAC.
    let vpc_index = links_in(&vpc)
        .into_iter()
        .find(|l| l.name == vpc_end)
        .unwrap()
        .index;
    let (ok, out) = sh(&["ip", "netns", "del", &pod.0]);
    assert!(ok, "{out}");
    let t0 = Instant::now();
    let gone = time_until(10, "the kernel destroys the veth pair", || {
        !links_in(&vpc).iter().any(|l| l.index == vpc_index)
    });
    time_until(10, "the ENI's device back in its node", || {
        link_by_mac(&a, &mac).is_some()
    });
    let back = t0.elapsed();
    println!(
        "ENI device back in its node {back:?} after `ip netns del` (the kernel destroyed the \
         pair after {gone:?})"
    );
    assert!(back < Duration::from_secs(5), "took {back:?}");
    let l = link_by_mac(&a, &mac).unwrap();
    assert!(l.name.starts_with("eth"), "a kernel-like name: {}", l.name);
    assert!(!l.up, "a returning NIC is down");
    assert_eq!(names(&vpc), vpc_links, "one VPC-side link, under its name");
    assert_eq!(emu.eni(&eni)["Status"], "InUse");

    // And it works again from the node, its address leaving through it.
    let dev = l.name;
    ipn(&a, &["link", "set", &dev, "up"]);
    ipn(&a, &["addr", "add", &format!("{ip}/32"), "dev", &dev]);
    ipn(
        &a,
        &[
            "route", "add", "default", "via", &gw, "dev", &dev, "onlink", "table", "101",
        ],
    );
    ipn(
        &a,
        &["rule", "add", "from", &ip, "lookup", "101", "prio", "100"],
    );
    assert!(ping(&a, Some(&ip), &b_ip), "instance B through the ENI");
    assert!(ping(&a, Some(&ip), &gw), "the gateway through the ENI");

    // Deleted outright in the node, it comes back too (as long as it is attached).
    ipn(&a, &["link", "del", &dev]);
    let t0 = Instant::now();
    time_until(10, "the ENI's device back after `ip link del`", || {
        link_by_mac(&a, &mac).is_some()
    });
    println!("ENI device back {:?} after `ip link del`", t0.elapsed());
    assert_eq!(names(&vpc), vpc_links);
}

#[test]
fn detach_removes_an_eni_device_sitting_in_a_pod() {
    let (emu, _guard, a, _b, vpc) = start("d");
    let (eni, mac, dev, vpc_end) = attached_eni(&emu, &a, &vpc);
    let pod = move_to_pod(&a, &dev, format!("pod-d{}", std::process::id()));
    assert!(link_by_mac(&pod.0, &mac).is_some());
    emu.ok(
        "DetachNetworkInterface",
        &[("InstanceId", &a), ("NetworkInterfaceId", &eni)],
    );
    emu.wait_until(10, "the device removed from the pod", || {
        link_by_mac(&pod.0, &mac).is_none()
    });
    assert!(!names(&vpc).contains(&vpc_end), "VPC-side end left behind");
    emu.wait_until(10, "Available", || emu.eni(&eni)["Status"] == "Available");
    // Detached, it does not come back anywhere.
    std::thread::sleep(Duration::from_millis(600));
    assert!(link_by_mac(&a, &mac).is_none(), "a detached ENI came back");
    assert!(link_by_mac(&pod.0, &mac).is_none());
    assert!(!names(&vpc).contains(&vpc_end));
}
