//! `terway emulate --netns`, IPv6: addresses assigned through the API are routed by the VPC to
//! the ENI that owns them (/128s), nodes reach each other and the vSwitch IPv6 gateway, a packet
//! whose IPv6 source its ENI does not own is dropped (policy rules, as strict rp_filter does
//! for IPv4), unassigning removes the route, and a route entry with an IPv6 destination
//! delivers to its instance. Needs root; fails (never skips) without it. Every namespace is
//! uniquely named and removed at the end.

mod emulate_support;

use emulate_support::netns::*;
use emulate_support::*;
use serde_json::Value;

const GW6: &str = "2408:4005:3c4:a00:ffff:ffff:ffff:fffd";

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

/// The primary ENI of an instance as DescribeNetworkInterfaces shows it.
fn primary_eni(emu: &Emu, inst: &str) -> Value {
    let v = emu.ok(
        "DescribeNetworkInterfaces",
        &[("InstanceId", inst), ("Type", "Primary")],
    );
    v["NetworkInterfaceSets"]["NetworkInterfaceSet"][0].clone()
}

fn ipv6_of(eni: &Value) -> Vec<String> {
    eni["Ipv6Sets"]["Ipv6Set"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["Ipv6Address"].as_str().unwrap().to_string())
        .collect()
}

/// A named counter of `/proc/net/snmp6` in a namespace.
fn snmp6(ns: &str, name: &str) -> u64 {
    let (ok, text) = sh(&["ip", "netns", "exec", ns, "cat", "/proc/net/snmp6"]);
    assert!(ok, "{text}");
    text.lines()
        .find_map(|l| {
            let mut w = l.split_whitespace();
            (w.next() == Some(name)).then(|| w.next().unwrap().parse().unwrap())
        })
        .unwrap_or_else(|| panic!("no {name} in snmp6 of {ns}"))
}

/// Table 102 of node `ns` leads out of `dev`: the vSwitch's /64 on-link there (the VPC
/// answers NDP for it) and the default route via the vSwitch IPv6 gateway.
fn table_102(ns: &str, dev: &str) {
    for args in [
        vec!["2408:4005:3c4:a00::/64", "dev", dev],
        vec!["default", "via", GW6, "dev", dev],
    ] {
        let mut full = vec!["-6", "route", "replace"];
        full.extend(args);
        full.extend(["table", "102"]);
        ipn(ns, &full);
    }
}

fn route6(ns: &str, dst: &str) -> String {
    sh(&["ip", "-n", ns, "-6", "route", "show", dst]).1
}

#[test]
fn ipv6_routes_per_eni_drops_spoofed_sources_and_follows_unassign() {
    let (emu, _guard, a, b, vpc) = start("6p");
    let pa = primary_eni(&emu, &a);
    let pb = primary_eni(&emu, &b);
    let (a6, b6) = (ipv6_of(&pa)[0].clone(), ipv6_of(&pb)[0].clone());
    // eth0 has the instance's IPv6 in the vSwitch's /64, default route via the gateway.
    let (_, addrs) = sh(&["ip", "-n", &a, "-6", "addr", "show", "dev", "eth0"]);
    assert!(addrs.contains(&format!("{a6}/64")), "{addrs}");
    assert!(ping(&a, None, GW6), "the vSwitch IPv6 gateway answers");
    // On-link in the /64: the VPC answers NDP for the other node's address (proxy NDP).
    assert!(ping(&a, None, &b6), "node A to node B over IPv6");
    assert!(ping(&b, Some(&b6), &a6), "and back");

    // More addresses through the API, on A's primary ENI and on a second ENI of A.
    let v = emu.ok(
        "AssignIpv6Addresses",
        &[
            (
                "NetworkInterfaceId",
                pa["NetworkInterfaceId"].as_str().unwrap(),
            ),
            ("Ipv6AddressCount", "1"),
        ],
    );
    let x1 = v["Ipv6Sets"]["Ipv6Address"][0]
        .as_str()
        .unwrap()
        .to_string();
    let e2 = emu.create_eni(VSW_A, "0");
    emu.attach_and_wait(&a, &e2);
    let v = emu.ok(
        "AssignIpv6Addresses",
        &[("NetworkInterfaceId", &e2), ("Ipv6AddressCount", "1")],
    );
    let z1 = v["Ipv6Sets"]["Ipv6Address"][0]
        .as_str()
        .unwrap()
        .to_string();
    let mac2 = emu.eni(&e2)["MacAddress"].as_str().unwrap().to_string();
    emu.wait_until(10, "ENI 2 in node A", || link_by_mac(&a, &mac2).is_some());
    emu.wait_until(5, "routes of the new addresses", || {
        !route6(&vpc, &x1).is_empty() && !route6(&vpc, &z1).is_empty()
    });
    let if2 = link_by_mac(&a, &mac2).unwrap().name;
    // By hand, as a datapath would: x1 on eth0, z1 on ENI 2 leaving through ENI 2.
    ipn(
        &a,
        &["-6", "addr", "add", &format!("{x1}/128"), "dev", "eth0"],
    );
    ipn(&a, &["link", "set", &if2, "up"]);
    ipn(
        &a,
        &["-6", "addr", "add", &format!("{z1}/128"), "dev", &if2],
    );
    table_102(&a, &if2);
    ipn(
        &a,
        &[
            "-6", "rule", "add", "from", &z1, "lookup", "102", "prio", "100",
        ],
    );
    assert!(ping(&a, Some(&x1), &b6), "from an assigned address of eth0");
    assert!(
        ping(&a, Some(&z1), &b6),
        "from ENI 2's address through ENI 2"
    );

    // Spoof: ENI 2's address leaving through eth0. The reply path is intact (the ping above
    // proves it): the VPC drops the request, and counts it.
    table_102(&a, "eth0");
    let before = snmp6(&vpc, "Ip6InNoRoutes");
    assert!(!ping(&a, Some(&z1), &b6), "spoofed source must be dropped");
    assert!(
        snmp6(&vpc, "Ip6InNoRoutes") > before,
        "dropped by the VPC's source rules"
    );
    // Another node's address as the source is dropped too.
    ipn(
        &a,
        &["-6", "addr", "add", &format!("{b6}/128"), "dev", "lo"],
    );
    let before = snmp6(&vpc, "Ip6InNoRoutes");
    assert!(!ping(&a, Some(&b6), GW6), "node B's address from node A");
    assert!(snmp6(&vpc, "Ip6InNoRoutes") > before);
    ipn(
        &a,
        &["-6", "addr", "del", &format!("{b6}/128"), "dev", "lo"],
    );
    table_102(&a, &if2);
    assert!(ping(&a, Some(&z1), &b6), "back through its own ENI");

    // Unassigned: no route, no traffic; the rest is untouched.
    emu.ok(
        "UnassignIpv6Addresses",
        &[("NetworkInterfaceId", &e2), ("Ipv6Address.1", &z1)],
    );
    emu.wait_until(5, "route of z1 removed", || route6(&vpc, &z1).is_empty());
    assert!(
        !ping(&a, Some(&z1), &b6),
        "an unassigned address is dropped"
    );
    assert!(ping(&a, Some(&x1), &b6));
    // The IPv4 side is as before.
    let b4 = emu.meta(&b, "private-ipv4").1;
    assert!(ping(&a, None, &b4));
}

#[test]
fn ipv6_route_entry_delivers_to_the_instance() {
    let (emu, _guard, a, b, vpc) = start("6r");
    let b6 = ipv6_of(&primary_eni(&emu, &b))[0].clone();
    let pod = "fd00:200::5";
    ipn(
        &b,
        &["-6", "addr", "add", &format!("{pod}/128"), "dev", "lo"],
    );
    assert!(!ping(&a, None, pod), "no route entry yet");
    let rte = emu.ok(
        "CreateRouteEntry",
        &[
            ("RouteTableId", "vtb-emu00000000000000001"),
            ("DestinationCidrBlock", "fd00:200::/64"),
            ("NextHopType", "Instance"),
            ("NextHopId", &b),
        ],
    )["RouteEntryId"]
        .as_str()
        .unwrap()
        .to_string();
    let v = emu.ok(
        "DescribeRouteEntryList",
        &[
            ("RouteTableId", "vtb-emu00000000000000001"),
            ("RouteEntryType", "Custom"),
        ],
    );
    let e = &v["RouteEntrys"]["RouteEntry"][0];
    assert_eq!(
        (e["DestinationCidrBlock"].as_str(), e["IpVersion"].as_str()),
        (Some("fd00:200::/64"), Some("ipv6"))
    );
    emu.wait_until(5, "pod CIDR routed to B", || ping(&a, None, pod));
    // Replies from the pod CIDR leave B's primary ENI: the VPC lets them through (the route
    // entry makes them B's), as rp_filter does for IPv4 route entries.
    assert!(ping(&b, Some(pod), &ipv6_of(&primary_eni(&emu, &a))[0]));
    assert!(ping(&a, None, &b6));
    emu.ok(
        "DeleteRouteEntry",
        &[
            ("RouteTableId", "vtb-emu00000000000000001"),
            ("RouteEntryId", &rte),
        ],
    );
    emu.wait_until(5, "pod CIDR route removed", || {
        route6(&vpc, "fd00:200::/64").is_empty()
    });
    assert!(!ping(&a, None, pod));
}
