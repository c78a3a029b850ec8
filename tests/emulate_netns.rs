//! `terway emulate --netns`: a real VPC from network namespaces. Needs root; fails (never skips)
//! without it. Every namespace is uniquely named and removed at the end; nothing outside them is
//! touched.

mod emulate_support;

use emulate_support::*;
use serde_json::Value;
use std::io::{Read, Write};
use std::process::Command;
use std::time::Duration;

fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "emulate_netns tests need root (they build network namespaces); run them as root"
    );
}

/// The default region with instance ids unique to this test (they name namespaces).
fn netns_config(tag: &str) -> (std::path::PathBuf, String, String, String) {
    let path = fast_config(&format!("netns-{tag}"), 200, 300);
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let a = format!("i-{tag}{}a", std::process::id());
    let b = format!("i-{tag}{}b", std::process::id());
    v["instances"][0]["id"] = a.clone().into();
    v["instances"][1]["id"] = b.clone().into();
    std::fs::write(&path, serde_json::to_vec(&v).unwrap()).unwrap();
    (path, a, b, format!("vpc-{tag}{}", std::process::id()))
}

fn ns_exists(n: &str) -> bool {
    std::path::Path::new("/run/netns").join(n).exists()
}

fn sh(args: &[&str]) -> (bool, String) {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn ipn(ns: &str, args: &[&str]) {
    let mut full = vec!["ip", "-n", ns];
    full.extend_from_slice(args);
    let (ok, out) = sh(&full);
    assert!(ok, "{}: {out}", full.join(" "));
}

fn ping(ns: &str, src: Option<&str>, dst: &str) -> bool {
    let mut a = vec!["ip", "netns", "exec", ns, "ping", "-c", "1", "-W", "1"];
    if let Some(s) = src {
        a.extend_from_slice(&["-I", s]);
    }
    a.push(dst);
    sh(&a).0
}

/// A plain HTTP GET from inside a node namespace (the instance is known by its source address).
fn get_in(ns: &str, host: &str, path: &str) -> String {
    let netns = terway::netns::NetNs::open(&std::path::Path::new("/run/netns").join(ns)).unwrap();
    let (host, path) = (host.to_string(), path.to_string());
    netns
        .run(move || {
            let mut s =
                std::net::TcpStream::connect((host.as_str(), 80)).map_err(terway::Error::from)?;
            s.set_read_timeout(Some(Duration::from_secs(5)))
                .map_err(terway::Error::from)?;
            write!(s, "GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n")
                .map_err(terway::Error::from)?;
            let mut out = String::new();
            s.read_to_string(&mut out).map_err(terway::Error::from)?;
            Ok(out)
        })
        .unwrap()
}

/// The kernel's count of packets dropped by reverse-path filtering in a namespace.
fn rp_drops(ns: &str) -> u64 {
    let (_, text) = sh(&["ip", "netns", "exec", ns, "cat", "/proc/net/netstat"]);
    let lines: Vec<&str> = text.lines().filter(|l| l.starts_with("TcpExt:")).collect();
    let (names, values) = (lines[0].split_whitespace(), lines[1].split_whitespace());
    names
        .zip(values)
        .find(|(n, _)| *n == "IPReversePathFilter")
        .map(|(_, v)| v.parse().unwrap())
        .unwrap()
}

fn body(resp: &str) -> &str {
    resp.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("")
}

/// Runs `terway emulate --cleanup` on drop, so a failing test leaves no namespace behind.
struct Cleanup(std::path::PathBuf, String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = Command::new(bin())
            .args(["emulate", "--cleanup", "--vpc-netns", &self.1, "--config"])
            .arg(&self.0)
            .output();
    }
}

struct Netns(Emu);

impl Netns {
    fn ips(&self, eni: &str) -> Vec<String> {
        self.0.eni(eni)["PrivateIpSets"]["PrivateIpSet"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["PrivateIpAddress"].as_str().unwrap().to_string())
            .collect()
    }
    fn ifname_of(&self, ns: &str, mac: &str) -> Option<String> {
        let (_, out) = sh(&["ip", "-n", ns, "-o", "link", "show"]);
        out.lines().find(|l| l.contains(mac)).and_then(|l| {
            l.split(": ")
                .nth(1)
                .map(|n| n.split('@').next().unwrap_or(n).to_string())
        })
    }
}

#[test]
fn vpc_routes_by_eni_and_drops_spoofed_sources() {
    require_root();
    let (cfg, a, b, vpc) = netns_config("p");
    let _guard = Cleanup(cfg.clone(), vpc.clone());
    let emu = Netns(Emu::start(&[
        "--netns",
        "--vpc-netns",
        &vpc,
        "--config",
        cfg.to_str().unwrap(),
    ]));
    for n in [&a, &b, &vpc] {
        assert!(ns_exists(n), "namespace {n} missing");
    }
    let b_ip = emu.0.meta(&b, "private-ipv4").1;
    let a_ip = emu.0.meta(&a, "private-ipv4").1;
    assert!(ping(&a, None, &b_ip), "primary to primary through the VPC");
    // Metadata and the OpenAPI inside the VPC, the instance known by its source address.
    let r = get_in(&a, "100.100.100.200", "/latest/meta-data/instance-id");
    assert!(
        r.starts_with("HTTP/1.1 200") || r.starts_with("HTTP/1.0 200"),
        "{r}"
    );
    assert_eq!(body(&r), a);
    assert_eq!(
        body(&get_in(
            &b,
            "100.100.100.200",
            "/latest/meta-data/private-ipv4"
        )),
        b_ip
    );
    let r = get_in(&a, "100.100.100.201", "/?Action=DescribeRegions");
    assert!(r.contains("InvalidAction.NotFound"), "{r}");

    // VPC mode: a route entry sends a pod CIDR to an instance.
    ipn(&b, &["addr", "add", "10.200.0.5/32", "dev", "lo"]);
    assert!(!ping(&a, None, "10.200.0.5"), "no route entry yet");
    let rt = emu.0.ok("DescribeVSwitches", &[("VSwitchId", VSW_A)])["VSwitches"]["VSwitch"][0]["RouteTable"]["RouteTableId"]
        .as_str()
        .unwrap()
        .to_string();
    let rte = emu.0.ok(
        "CreateRouteEntry",
        &[
            ("RouteTableId", &rt),
            ("DestinationCidrBlock", "10.200.0.0/24"),
            ("NextHopType", "Instance"),
            ("NextHopId", &b),
        ],
    )["RouteEntryId"]
        .as_str()
        .unwrap()
        .to_string();
    emu.0
        .wait_until(5, "pod CIDR routed to B", || ping(&a, None, "10.200.0.5"));
    emu.0.ok(
        "DeleteRouteEntry",
        &[("RouteTableId", &rt), ("RouteEntryId", &rte)],
    );
    emu.0.wait_until(5, "pod CIDR route removed", || {
        !ping(&a, None, "10.200.0.5")
    });

    // Two ENIs with secondary addresses on node A.
    let e1 = emu.0.create_eni(VSW_A, "1");
    let e2 = emu.0.create_eni(VSW_A, "1");
    for e in [&e1, &e2] {
        emu.0.ok(
            "AttachNetworkInterface",
            &[("InstanceId", &a), ("NetworkInterfaceId", e)],
        );
    }
    for e in [&e1, &e2] {
        emu.0
            .wait_until(10, "InUse", || emu.0.eni(e)["Status"] == "InUse");
    }
    let mac1 = emu.0.eni(&e1)["MacAddress"].as_str().unwrap().to_string();
    let mac2 = emu.0.eni(&e2)["MacAddress"].as_str().unwrap().to_string();
    emu.0.wait_until(10, "ENI links in node A", || {
        emu.ifname_of(&a, &mac1).is_some() && emu.ifname_of(&a, &mac2).is_some()
    });
    let if1 = emu.ifname_of(&a, &mac1).unwrap();
    let if2 = emu.ifname_of(&a, &mac2).unwrap();
    let (_, show) = sh(&["ip", "-n", &a, "-o", "link", "show", &if1]);
    assert!(
        !show.contains(",UP") && !show.contains("<UP"),
        "a fresh ENI is down: {show}"
    );
    assert!(emu.ifname_of(&b, &mac1).is_none());
    let sec1 = emu.ips(&e1)[1].clone();
    let sec2 = emu.ips(&e2)[1].clone();
    // Configure by hand, like a datapath would: each secondary IP leaves through its own ENI.
    for (ifn, ip, table) in [(&if1, &sec1, "101"), (&if2, &sec2, "102")] {
        ipn(&a, &["link", "set", ifn, "up"]);
        ipn(&a, &["addr", "add", &format!("{ip}/32"), "dev", ifn]);
        ipn(
            &a,
            &[
                "route",
                "add",
                "default",
                "via",
                "172.16.0.253",
                "dev",
                ifn,
                "onlink",
                "table",
                table,
            ],
        );
        ipn(
            &a,
            &["rule", "add", "from", ip, "lookup", table, "prio", "100"],
        );
    }
    assert!(
        ping(&a, Some(&sec1), &b_ip),
        "from ENI 1's secondary IP through ENI 1"
    );
    assert!(
        ping(&a, Some(&sec2), &b_ip),
        "from ENI 2's secondary IP through ENI 2"
    );
    // Spoof: ENI 2's address leaving through ENI 1. The VPC drops it (the reply path is intact:
    // the ping above proves it).
    ipn(
        &a,
        &[
            "route",
            "replace",
            "default",
            "via",
            "172.16.0.253",
            "dev",
            &if1,
            "onlink",
            "table",
            "102",
        ],
    );
    let before = rp_drops(&vpc);
    assert!(
        !ping(&a, Some(&sec2), &b_ip),
        "spoofed source must be dropped"
    );
    assert!(
        rp_drops(&vpc) > before,
        "dropped by the VPC's reverse-path filter"
    );
    ipn(
        &a,
        &[
            "route",
            "replace",
            "default",
            "via",
            "172.16.0.253",
            "dev",
            &if2,
            "onlink",
            "table",
            "102",
        ],
    );
    assert!(ping(&a, Some(&sec2), &b_ip));
    // An address that is not assigned at all is dropped too; unassigning removes the route.
    emu.0.ok(
        "UnassignPrivateIpAddresses",
        &[("NetworkInterfaceId", &e2), ("PrivateIpAddress.1", &sec2)],
    );
    emu.0
        .wait_until(5, "route removed", || !ping(&a, Some(&sec2), &b_ip));
    assert!(ping(&a, Some(&a_ip), &b_ip));
    // Detach removes the link from the node.
    emu.0.ok(
        "DetachNetworkInterface",
        &[("InstanceId", &a), ("NetworkInterfaceId", &e2)],
    );
    emu.0
        .wait_until(10, "ENI 2 link gone", || emu.ifname_of(&a, &mac2).is_none());

    // Teardown on TERM removes every namespace.
    let mut emu = emu;
    let pid = emu.0.child.id() as i32;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = emu.0.child.wait().unwrap();
    assert!(status.success(), "{status}");
    for n in [&a, &b, &vpc] {
        assert!(!ns_exists(n), "namespace {n} left behind");
    }
}

#[test]
fn cleanup_after_a_crash() {
    require_root();
    let (cfg, a, b, vpc) = netns_config("c");
    let _guard = Cleanup(cfg.clone(), vpc.clone());
    let mut emu = Emu::start(&[
        "--netns",
        "--vpc-netns",
        &vpc,
        "--config",
        cfg.to_str().unwrap(),
    ]);
    assert!(ns_exists(&a));
    // A crash: SIGKILL leaves everything behind.
    emu.child.kill().unwrap();
    emu.child.wait().unwrap();
    assert!(ns_exists(&a) && ns_exists(&vpc));
    // A second emulator refuses to start over the leftovers, naming the fix.
    let out = Command::new(bin())
        .args([
            "emulate",
            "--listen",
            "127.0.0.1:0",
            "--netns",
            "--vpc-netns",
            &vpc,
            "--config",
            cfg.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--cleanup"));
    let (ok, text) = sh(&[
        bin(),
        "emulate",
        "--cleanup",
        "--vpc-netns",
        &vpc,
        "--config",
        cfg.to_str().unwrap(),
    ]);
    assert!(ok, "{text}");
    for n in [&a, &b, &vpc] {
        assert!(!ns_exists(n), "namespace {n} left behind");
    }
}
