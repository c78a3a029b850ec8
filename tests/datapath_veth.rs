//! veth datapath against the real kernel, in throwaway namespaces: a "node" namespace plays the
//! host (all host-side work runs on a thread inside it) and "pod" namespaces play pods. Nothing
//! touches the root namespace. Needs root, `ip` and `ping`; fails loudly without them.

#[path = "common/netns_util.rs"]
mod netns_util;

use netns_util::{TestNs, require_root_and_tools};
use std::net::Ipv4Addr;
use terway::datapath::{self, VethInfo, VethSpec};
use terway::netlink::{Netlink, format_mac};
use terway::netns::NetNs;
use terway::{Kind, Result};

const NODE_ADDR: &str = "10.240.0.1";

/// setup() for a pod, run from inside the node namespace.
fn setup_pod(node: &TestNs, pod: &TestNs, ifname: &str, ip: Ipv4Addr) -> Result<VethInfo> {
    let pod_path = pod.path();
    let host_ifname = datapath::host_veth_name(&pod.name, ifname);
    let alias = datapath::host_veth_alias(&pod.name, ifname);
    let ifname = ifname.to_string();
    node.run(move || {
        let ns = NetNs::open(&pod_path)?;
        datapath::veth::setup(&VethSpec {
            netns: &ns,
            ifname: &ifname,
            host_ifname: &host_ifname,
            alias: &alias,
            ip,
            ip6: None,
            mtu: 1500,
        })
    })
}

fn check_pod(node: &TestNs, pod: &TestNs, ifname: &str, ip: Ipv4Addr) -> Result<()> {
    let pod_path = pod.path();
    let host_ifname = datapath::host_veth_name(&pod.name, ifname);
    let alias = datapath::host_veth_alias(&pod.name, ifname);
    let ifname = ifname.to_string();
    node.run(move || {
        let ns = NetNs::open(&pod_path)?;
        datapath::veth::check(&VethSpec {
            netns: &ns,
            ifname: &ifname,
            host_ifname: &host_ifname,
            alias: &alias,
            ip,
            ip6: None,
            mtu: 1500,
        })
    })
}

fn teardown_pod(node: &TestNs, pod: &TestNs, ifname: &str) -> Result<()> {
    let host_ifname = datapath::host_veth_name(&pod.name, ifname);
    let alias = datapath::host_veth_alias(&pod.name, ifname);
    node.run(move || datapath::veth::teardown(&host_ifname, &alias).map(|_| ()))
}

#[test]
fn setup_check_ping_teardown() {
    require_root_and_tools();
    let node = TestNs::new("node").with_node_addr(&format!("{NODE_ADDR}/32"));
    let pod1 = TestNs::new("pod1");
    let pod2 = TestNs::new("pod2");
    let ip1 = Ipv4Addr::new(10, 240, 1, 2);
    let ip2 = Ipv4Addr::new(10, 240, 1, 3);

    let info = setup_pod(&node, &pod1, "eth0", ip1).expect("setup pod1");
    setup_pod(&node, &pod2, "eth0", ip2).expect("setup pod2");
    assert_eq!(info.mtu, 1500);
    assert_eq!(
        info.host_ifname,
        datapath::host_veth_name(&pod1.name, "eth0")
    );

    // The MACs reported are the real ones on both ends.
    let host_show = node.ip(&format!("link show {}", info.host_ifname));
    assert!(
        host_show.contains(&format_mac(&info.host_mac)),
        "{host_show}"
    );
    let pod_show = pod1.ip("link show eth0");
    assert!(pod_show.contains(&format_mac(&info.pod_mac)), "{pod_show}");
    // The recipe, as iproute2 sees it.
    let routes = pod1.ip("route show");
    assert!(
        routes.contains("default via 169.254.1.1 dev eth0 onlink"),
        "{routes}"
    );
    let neigh = pod1.ip("neigh show 169.254.1.1");
    assert!(neigh.contains("PERMANENT"), "{neigh}");
    let host_routes = node.ip("route show");
    assert!(
        host_routes.contains(&format!("{ip1} dev {} scope link", info.host_ifname)),
        "{host_routes}"
    );

    check_pod(&node, &pod1, "eth0", ip1).expect("check pod1");
    check_pod(&node, &pod2, "eth0", ip2).expect("check pod2");

    assert!(pod1.ping(NODE_ADDR), "pod1 -> node");
    assert!(pod1.ping(&ip2.to_string()), "pod1 -> pod2");
    assert!(pod2.ping(&ip1.to_string()), "pod2 -> pod1");

    teardown_pod(&node, &pod1, "eth0").expect("teardown");
    teardown_pod(&node, &pod1, "eth0").expect("second teardown is a no-op");
    assert!(
        !pod1.try_ip("link show eth0").status.success(),
        "pod end must go with the host end"
    );
    let e = check_pod(&node, &pod1, "eth0", ip1).unwrap_err();
    assert_eq!(e.kind, Kind::Datapath);
    assert!(e.msg.contains("is missing"), "{}", e.msg);
    assert!(e.msg.contains(&info.host_ifname), "{}", e.msg);

    // The other pod is unaffected.
    check_pod(&node, &pod2, "eth0", ip2).expect("pod2 still fine");
    assert!(pod2.ping(NODE_ADDR), "pod2 -> node after pod1 teardown");
}

#[test]
fn setup_replaces_stale_host_veth() {
    require_root_and_tools();
    let node = TestNs::new("node").with_node_addr("10.240.0.1/32");
    let pod = TestNs::new("pod");
    let ip = Ipv4Addr::new(10, 240, 2, 2);
    let host_ifname = datapath::host_veth_name(&pod.name, "eth0");
    // A crash leftover: the host end with its peer still in the node namespace.
    node.ip(&format!(
        "link add {host_ifname} type veth peer name stale0"
    ));
    let old_index = node.ip(&format!("link show {host_ifname}"));

    setup_pod(&node, &pod, "eth0", ip).expect("setup over a stale veth");
    check_pod(&node, &pod, "eth0", ip).expect("check");
    assert_ne!(old_index, node.ip(&format!("link show {host_ifname}")));
    assert!(
        !node.try_ip("link show stale0").status.success(),
        "stale peer must be gone"
    );
    assert!(pod.ping(NODE_ADDR), "pod -> node");
}

#[test]
fn check_names_what_is_broken() {
    require_root_and_tools();
    let node = TestNs::new("node").with_node_addr("10.240.0.1/32");
    let pod = TestNs::new("pod");
    let ip = Ipv4Addr::new(10, 240, 3, 2);
    let info = setup_pod(&node, &pod, "eth0", ip).expect("setup");

    pod.ip("route del default");
    node.ip(&format!("route del {ip}/32"));
    pod.ip("neigh del 169.254.1.1 dev eth0");
    let e = check_pod(&node, &pod, "eth0", ip).unwrap_err();
    assert_eq!(e.kind, Kind::Datapath);
    for want in [
        "pod default route via 169.254.1.1 dev eth0 onlink is missing",
        &format!("host route {ip}/32 dev {} is missing", info.host_ifname),
        "pod neighbour 169.254.1.1 on eth0 is missing",
    ] {
        assert!(e.msg.contains(want), "want {want:?} in: {}", e.msg);
    }

    // An interface that is down is named too.
    node.ip(&format!("link set {} down", info.host_ifname));
    let e = check_pod(&node, &pod, "eth0", ip).unwrap_err();
    assert!(e.msg.contains("is down"), "{}", e.msg);
}

#[test]
fn setup_refuses_existing_pod_interface() {
    require_root_and_tools();
    let node = TestNs::new("node");
    let pod = TestNs::new("pod");
    pod.ip("link add eth0 type bridge");
    let e = setup_pod(&node, &pod, "eth0", Ipv4Addr::new(10, 240, 4, 2)).unwrap_err();
    assert_eq!(e.kind, Kind::Datapath);
    assert!(e.msg.contains("eth0 already exists"), "{}", e.msg);
    // Nothing was left behind on the node.
    let host_ifname = datapath::host_veth_name(&pod.name, "eth0");
    assert!(
        !node
            .try_ip(&format!("link show {host_ifname}"))
            .status
            .success()
    );
}

#[test]
fn teardown_leaves_links_that_are_not_the_attachments_alone() {
    require_root_and_tools();
    let node = TestNs::new("node");
    node.ip("link add twnotaveth type bridge");
    let got = node
        .run(|| datapath::veth::teardown("twnotaveth", "terway:x"))
        .unwrap();
    assert!(
        matches!(&got, datapath::Teardown::NotOurs(why) if why.contains("not a veth")),
        "{got:?}"
    );
    node.ip("link show twnotaveth");
    // A veth carrying another attachment's alias is not ours either.
    node.ip("link add twother type veth peer name twotherp");
    node.ip("link set twother alias terway:someone-else");
    let got = node
        .run(|| datapath::veth::teardown("twother", "terway:x"))
        .unwrap();
    assert!(
        matches!(&got, datapath::Teardown::NotOurs(why) if why.contains("another attachment")),
        "{got:?}"
    );
    node.ip("link show twother");
    let got = node
        .run(|| datapath::veth::teardown("twother", "terway:someone-else"))
        .unwrap();
    assert_eq!(got, datapath::Teardown::Deleted);
    let got = node
        .run(|| datapath::veth::teardown("twother", "terway:someone-else"))
        .unwrap();
    assert_eq!(got, datapath::Teardown::Absent);
}

#[test]
fn netns_open_rejects_non_namespaces() {
    let dir = std::env::temp_dir().join(format!("tw-netns-test-{}", std::process::id()));
    std::fs::write(&dir, b"not a namespace").unwrap();
    let e = NetNs::open(&dir).unwrap_err();
    let _ = std::fs::remove_file(&dir);
    assert_eq!(e.kind, Kind::Netns);
    assert!(e.msg.contains(&dir.display().to_string()), "{}", e.msg);
    assert!(e.msg.contains("is not a network namespace"), "{}", e.msg);

    let missing = std::path::Path::new("/run/netns/tw-test-definitely-missing");
    let e = NetNs::open(missing).unwrap_err();
    assert_eq!(e.kind, Kind::Netns);
    assert!(
        e.msg.contains("/run/netns/tw-test-definitely-missing"),
        "{}",
        e.msg
    );
    assert!(e.msg.contains("does not exist"), "{}", e.msg);
}

#[test]
fn netlink_basics_in_a_namespace() {
    require_root_and_tools();
    let ns = TestNs::new("nl");
    ns.ip("link add br0 type bridge");
    let mut nl = Netlink::open_in(&ns.open()).expect("open_in");
    let d = nl.link_by_name("br0").unwrap().expect("br0 exists");
    assert_eq!(d.kind.as_deref(), Some("bridge"));
    assert!(!d.up);
    assert!(nl.link_by_name("nothere0").unwrap().is_none());
    assert!(nl.link_by_index(999_999).unwrap().is_none());
    nl.set_link_mtu(d.index, 1400).unwrap();
    nl.set_link_name(d.index, "renamed0").unwrap();
    nl.set_link_up(d.index).unwrap();
    let d = nl.link_by_index(d.index).unwrap().unwrap();
    assert_eq!((d.name.as_str(), d.mtu, d.up), ("renamed0", 1400, true));
    assert!(nl.links().unwrap().iter().any(|l| l.name == "lo"));

    let a: ipnetwork::IpNetwork = "10.240.9.1/24".parse().unwrap();
    nl.add_addr(d.index, a).unwrap();
    nl.add_addr(d.index, a).expect("adding twice is fine");
    assert!(nl.addrs(Some(d.index)).unwrap().iter().any(|x| x.addr == a));
    // Errors name the operation and the object.
    let bad = terway::netlink::Route {
        dst: "10.240.10.0/24".parse().unwrap(),
        gateway: Some("10.250.0.1".parse().unwrap()),
        oif: Some(d.index),
        table: 254,
        scope_link: false,
        onlink: false,
    };
    let e = nl.replace_route(&bad).unwrap_err();
    assert_eq!(e.kind, Kind::Datapath);
    assert!(
        e.msg
            .starts_with("add route 10.240.10.0/24 via 10.250.0.1 dev renamed0: "),
        "{}",
        e.msg
    );
    nl.del_route(&bad)
        .expect("deleting a missing route is fine");
    nl.del_addr(d.index, a).unwrap();
    nl.del_addr(d.index, a).expect("deleting twice is fine");
    nl.set_link_down(d.index).unwrap();
    nl.delete_link(d.index).unwrap();
    nl.delete_link(d.index)
        .expect("deleting a missing link is fine");
}

/// Panics unless `ns` has IPv6 (the module loaded and not disabled there).
fn require_ipv6(ns: &TestNs) {
    let v = ns
        .run(|| terway::sysctl::get("net/ipv6/conf/all/disable_ipv6"))
        .unwrap_or_else(|e| panic!("this test needs IPv6 in the kernel: {e}"));
    assert_eq!(v, "0", "IPv6 is disabled in a fresh namespace");
}

#[test]
fn netlink_ipv6_routes_and_rules_in_a_namespace() {
    use terway::netlink::{Family, LinkKind, LinkSpec, Route, Rule, TABLE_MAIN};
    require_root_and_tools();
    let ns = TestNs::new("nl6");
    require_ipv6(&ns);
    let mut nl = Netlink::open_in(&ns.open()).expect("open_in");
    nl.create_link(&LinkSpec {
        name: "v0",
        mtu: None,
        mac: None,
        netns: None,
        kind: LinkKind::Veth {
            peer_name: "v1",
            peer_netns: None,
        },
    })
    .expect("veth pair in one namespace");
    let v0 = nl.link_by_name("v0").unwrap().expect("v0");
    let v1 = nl.link_by_name("v1").unwrap().expect("v1");
    nl.set_link_up(v0.index).unwrap();
    nl.set_link_up(v1.index).unwrap();
    nl.add_addr(v0.index, "fd00::1/64".parse().unwrap())
        .unwrap();

    let via = Route {
        dst: "fd01::/64".parse().unwrap(),
        gateway: Some("fd00::2".parse().unwrap()),
        oif: Some(v0.index),
        table: TABLE_MAIN,
        scope_link: false,
        onlink: false,
    };
    let host = Route {
        dst: "fd02::5/128".parse().unwrap(),
        gateway: None,
        oif: Some(v0.index),
        table: 1005,
        scope_link: false,
        onlink: false,
    };
    let default = Route {
        dst: "::/0".parse().unwrap(),
        gateway: Some("fe80::1".parse().unwrap()),
        oif: Some(v0.index),
        table: 1005,
        scope_link: false,
        onlink: true,
    };
    nl.replace_route(&via).expect("route via a gateway");
    nl.add_route(&host).expect("host route");
    nl.add_route(&default).expect("default route onlink");
    let e = nl.add_route(&host).unwrap_err();
    assert!(
        e.msg.contains("add route fd02::5/128 dev v0 table 1005"),
        "{}",
        e.msg
    );
    assert!(e.msg.contains("already exists"), "{}", e.msg);

    let main = nl.routes_of(Family::V6, TABLE_MAIN).unwrap();
    assert!(main.contains(&via), "{main:?}");
    assert!(main.iter().all(|r| r.family() == Family::V6));
    let mut t = nl.routes_of(Family::V6, 1005).unwrap();
    t.sort_by_key(|r| r.dst.prefix());
    assert_eq!(t, [default.clone(), host.clone()]);
    assert!(nl.routes(1005).unwrap().is_empty(), "IPv4 dump shows IPv6");
    let shown = ns.ip("-6 route show table 1005");
    assert!(shown.contains("fd02::5 dev v0"), "{shown}");
    assert!(shown.contains("default via fe80::1 dev v0"), "{shown}");

    let mixed = Route {
        gateway: Some("10.0.0.1".parse().unwrap()),
        ..via.clone()
    };
    let e = nl.replace_route(&mixed).unwrap_err();
    assert_eq!(e.kind, Kind::InvalidConfig, "{}", e.msg);

    for r in [&via, &host, &default] {
        nl.del_route(r).unwrap();
        nl.del_route(r).expect("deleting a missing route is fine");
    }
    assert!(nl.routes_of(Family::V6, 1005).unwrap().is_empty());
    assert!(!nl.routes_of(Family::V6, TABLE_MAIN).unwrap().contains(&via));

    let to = Rule {
        family: Family::V6,
        priority: 512,
        src: None,
        dst: Some("fd02::5/128".parse().unwrap()),
        table: TABLE_MAIN,
    };
    let from = Rule {
        family: Family::V6,
        priority: 2048,
        src: Some("fd02::5/128".parse().unwrap()),
        dst: None,
        table: 1005,
    };
    // No selector at all: only the family tells it from the IPv4 rule of the same shape.
    let all = Rule {
        family: Family::V6,
        priority: 3000,
        src: None,
        dst: None,
        table: 1005,
    };
    for r in [&to, &from, &all] {
        nl.add_rule(r).unwrap();
        nl.add_rule(r).expect("adding twice is fine");
    }
    let rules = nl.rules_of(Family::V6).unwrap();
    for r in [&to, &from, &all] {
        assert!(rules.contains(r), "{r} missing from {rules:?}");
    }
    let v4 = nl.rules().unwrap();
    assert!(
        !v4.iter().any(|r| [512, 2048, 3000].contains(&r.priority)),
        "IPv4 dump shows IPv6 rules: {v4:?}"
    );
    let shown = ns.ip("-6 rule show");
    assert!(
        shown.contains("512:\tfrom all to fd02::5 lookup main"),
        "{shown}"
    );
    assert!(shown.contains("2048:\tfrom fd02::5 lookup 1005"), "{shown}");
    assert!(shown.contains("3000:\tfrom all lookup 1005"), "{shown}");
    for r in [&to, &from, &all] {
        nl.del_rule(r).unwrap();
        nl.del_rule(r).expect("deleting a missing rule is fine");
    }
    let rules = nl.rules_of(Family::V6).unwrap();
    assert!(
        !rules
            .iter()
            .any(|r| [512, 2048, 3000].contains(&r.priority)),
        "{rules:?}"
    );
}

/// veth and macvlan through `create_link`; ipvlan and vlan are unit-tested only (the build
/// machines' kernel has no ipvlan or 8021q module).
#[test]
fn create_link_makes_veths_and_macvlans_where_asked() {
    use terway::netlink::{LinkKind, LinkSpec, MacvlanMode};
    require_root_and_tools();
    let a = TestNs::new("links-a");
    let b = TestNs::new("links-b");
    let (a_ns, b_ns) = (a.open(), b.open());
    let mut na = Netlink::open_in(&a_ns).expect("open_in a");
    let mut nb = Netlink::open_in(&b_ns).expect("open_in b");

    // A veth here with its peer over there, with a chosen MAC and MTU.
    let mac = [0x02, 0xab, 0, 0, 0, 1];
    let veth = LinkSpec {
        name: "va",
        mtu: Some(1400),
        mac: Some(mac),
        netns: None,
        kind: LinkKind::Veth {
            peer_name: "vb",
            peer_netns: Some(&b_ns),
        },
    };
    na.create_link(&veth).expect("veth with peer in b");
    let va = na.link_by_name("va").unwrap().expect("va in a");
    assert_eq!(
        (va.kind.as_deref(), va.mtu, va.mac),
        (Some("veth"), 1400, Some(mac))
    );
    assert!(
        na.link_by_name("vb").unwrap().is_none(),
        "peer leaked into a"
    );
    let vb = nb.link_by_name("vb").unwrap().expect("vb in b");
    assert_eq!((vb.kind.as_deref(), vb.mtu), (Some("veth"), 1400));
    let e = na.create_link(&veth).unwrap_err();
    assert!(
        e.msg.starts_with(&format!(
            "create veth va with peer vb in netns {}: ",
            b.path().display()
        )),
        "{}",
        e.msg
    );

    // A pair made from a's socket entirely inside b: the peer goes with the link.
    na.create_link(&LinkSpec {
        name: "vc",
        mtu: None,
        mac: None,
        netns: Some(&b_ns),
        kind: LinkKind::Veth {
            peer_name: "vd",
            peer_netns: None,
        },
    })
    .expect("veth pair in b");
    assert!(na.link_by_name("vc").unwrap().is_none());
    assert!(na.link_by_name("vd").unwrap().is_none());
    assert!(nb.link_by_name("vc").unwrap().is_some());
    assert!(nb.link_by_name("vd").unwrap().is_some());

    // A macvlan on va, here (MTU inherited from the parent) ...
    na.create_link(&LinkSpec {
        name: "mv0",
        mtu: None,
        mac: None,
        netns: None,
        kind: LinkKind::Macvlan {
            parent: va.index,
            mode: MacvlanMode::Private,
        },
    })
    .expect("macvlan in a");
    let mv0 = na.link_by_name("mv0").unwrap().expect("mv0");
    assert_eq!((mv0.kind.as_deref(), mv0.mtu), (Some("macvlan"), 1400));
    assert!(a.ip("-d link show mv0").contains("macvlan mode private"));

    // ... and one created straight into b with its own MAC, its parent staying in a.
    let mv_mac = [0x02, 0xab, 0, 0, 0, 2];
    na.create_link(&LinkSpec {
        name: "mv1",
        mtu: Some(1300),
        mac: Some(mv_mac),
        netns: Some(&b_ns),
        kind: LinkKind::Macvlan {
            parent: va.index,
            mode: MacvlanMode::Bridge,
        },
    })
    .expect("macvlan into b");
    assert!(na.link_by_name("mv1").unwrap().is_none());
    let mv1 = nb.link_by_name("mv1").unwrap().expect("mv1 in b");
    assert_eq!(
        (mv1.kind.as_deref(), mv1.mtu, mv1.mac),
        (Some("macvlan"), 1300, Some(mv_mac))
    );
    assert!(b.ip("-d link show mv1").contains("macvlan mode bridge"));

    // Errors name the kind, the link and the parent.
    let e = na
        .create_link(&LinkSpec {
            name: "mv0",
            mtu: None,
            mac: None,
            netns: None,
            kind: LinkKind::Macvlan {
                parent: va.index,
                mode: MacvlanMode::Bridge,
            },
        })
        .unwrap_err();
    assert!(
        e.msg.starts_with("create macvlan mv0 on va mode bridge: "),
        "{}",
        e.msg
    );
}

#[test]
fn setup_failure_removes_what_it_created() {
    require_root_and_tools();
    let node = TestNs::new("node").with_node_addr("10.240.0.1/32");
    let pod = TestNs::new("pod");
    let pod_path = pod.path();
    let host_ifname = datapath::host_veth_name(&pod.name, "eth0");
    let name = host_ifname.clone();
    // Fail late in setup (after the veth exists): make ip_forward read-only for this thread
    // only, in a private mount namespace that dies with the thread.
    let res = node.run(move || {
        use nix::mount::{MsFlags, mount};
        let fwd = "/proc/sys/net/ipv4/ip_forward";
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).expect("unshare mount ns");
        let none: Option<&str> = None;
        mount(none, "/", none, MsFlags::MS_REC | MsFlags::MS_PRIVATE, none).expect("private");
        mount(Some(fwd), fwd, none, MsFlags::MS_BIND, none).expect("bind");
        let ro = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
        mount(none, fwd, none, ro, none).expect("remount ro");
        let ns = NetNs::open(&pod_path)?;
        datapath::veth::setup(&VethSpec {
            netns: &ns,
            ifname: "eth0",
            host_ifname: &name,
            alias: "terway:test",
            ip: Ipv4Addr::new(10, 240, 5, 2),
            ip6: None,
            mtu: 1500,
        })
    });
    let e = res.unwrap_err();
    assert_eq!(e.kind, Kind::Datapath);
    assert!(e.msg.contains("ip_forward"), "{}", e.msg);
    assert!(
        !node
            .try_ip(&format!("link show {host_ifname}"))
            .status
            .success(),
        "host veth must be rolled back"
    );
    assert!(
        !pod.try_ip("link show eth0").status.success(),
        "pod veth must be rolled back"
    );
}

/// ENIMultiIP: veth + policy routing. A "vpc" namespace is the VPC router behind an emulated
/// ENI (a veth end with a fixed MAC); the node has no default route, so the pod reaching an
/// address in the VPC proves its traffic took the ENI table.
#[test]
fn eni_policy_routing_end_to_end() {
    use terway::datapath::policy;
    use terway::netlink::find_link_by_mac;

    require_root_and_tools();
    let node = TestNs::new("node").with_node_addr("10.240.0.1/32");
    let vpc = TestNs::new("vpc");
    let pod = TestNs::new("pod");
    let eni_mac = "02:00:00:00:10:01";
    let gw = Ipv4Addr::new(10, 240, 0, 253);
    let ip = Ipv4Addr::new(10, 240, 6, 10);

    // A bridge with the ENI's MAC first: find_link_by_mac must skip it.
    node.ip("link add br9 type bridge");
    node.ip(&format!("link set br9 address {eni_mac}"));
    node.ip(&format!(
        "link add eni1 address {eni_mac} type veth peer name vpc0 netns {}",
        vpc.name
    ));
    vpc.ip("link set lo up");
    vpc.ip("addr add 10.250.0.1/32 dev lo");
    vpc.ip(&format!("addr add {gw}/24 dev vpc0"));
    vpc.ip("link set vpc0 up");
    // The VPC knows which ENI owns the pod's address.
    vpc.ip(&format!("route add {ip}/32 dev vpc0"));
    vpc.ip(&format!(
        "neigh add {ip} lladdr {eni_mac} dev vpc0 nud permanent"
    ));

    let table = node
        .run(move || {
            let mut nl = Netlink::open()?;
            let mac = terway::netlink::parse_mac("02:00:00:00:10:01")?;
            let eni = find_link_by_mac(&mut nl, &mac)?.expect("ENI found by MAC");
            assert_eq!(eni.name, "eni1");
            let table = policy::prepare_eni_table(&mut nl, eni.index, gw)?;
            assert_eq!(table, 1000 + eni.index);
            policy::prepare_eni_table(&mut nl, eni.index, gw)?; // idempotent
            policy::check_eni_table(&mut nl, eni.index, gw)?;
            Ok(table)
        })
        .expect("prepare ENI");
    setup_pod(&node, &pod, "eth0", ip).expect("veth setup");
    node.run(move || policy::setup_pod_rules(&mut Netlink::open()?, ip, table))
        .expect("rules");
    node.run(move || policy::setup_pod_rules(&mut Netlink::open()?, ip, table))
        .expect("rules again");
    node.run(move || policy::check_pod_rules(&mut Netlink::open()?, ip, table))
        .expect("check rules");
    let shown = node.ip("rule show");
    assert!(
        shown.contains(&format!("512:\tfrom all to {ip} lookup main")),
        "{shown}"
    );
    assert!(
        shown.contains(&format!("2048:\tfrom {ip} lookup {table}")),
        "{shown}"
    );

    assert!(pod.ping("10.250.0.1"), "pod -> VPC through the ENI table");
    assert!(pod.ping(NODE_ADDR), "pod -> node");

    // A leftover rule for the same IP pointing at another ENI's table is replaced.
    node.ip(&format!("rule add from {ip} lookup 1999 prio 2048"));
    let e = node
        .run(move || policy::check_pod_rules(&mut Netlink::open()?, ip, table))
        .unwrap_err();
    assert!(e.msg.contains("unexpected rule 2048: from"), "{}", e.msg);
    node.run(move || policy::setup_pod_rules(&mut Netlink::open()?, ip, table))
        .expect("rules over a stale one");
    node.run(move || policy::check_pod_rules(&mut Netlink::open()?, ip, table))
        .expect("check after replacing stale");

    node.run(move || policy::teardown_pod_rules(&mut Netlink::open()?, ip))
        .expect("teardown rules");
    node.run(move || policy::teardown_pod_rules(&mut Netlink::open()?, ip))
        .expect("teardown rules again");
    let e = node
        .run(move || policy::check_pod_rules(&mut Netlink::open()?, ip, table))
        .unwrap_err();
    assert_eq!(e.kind, Kind::Datapath);
    assert!(
        e.msg
            .contains("rule 2048: from 10.240.6.10/32 to all lookup"),
        "{}",
        e.msg
    );
    assert!(!pod.ping("10.250.0.1"), "no rule, no way out");

    // The ENI table check names what is wrong.
    node.ip(&format!("route del default table {table}"));
    let e = node
        .run(move || {
            let mut nl = Netlink::open()?;
            let idx = table - 1000;
            policy::check_eni_table(&mut nl, idx, gw)
        })
        .unwrap_err();
    assert!(
        e.msg.contains(&format!(
            "default via {gw} dev eni1 onlink in table {table} is missing"
        )),
        "{}",
        e.msg
    );
}

#[test]
fn move_rename_and_neighbours() {
    require_root_and_tools();
    let a = TestNs::new("a");
    let b = TestNs::new("b");
    a.ip("link add vA type veth peer name vB");
    let mut nl_a = Netlink::open_in(&a.open()).unwrap();
    let mut nl_b = Netlink::open_in(&b.open()).unwrap();
    let vb = nl_a.link_by_name("vB").unwrap().unwrap();
    nl_a.move_link_to_ns(vb.index, &b.open()).unwrap();
    assert!(nl_a.link_by_name("vB").unwrap().is_none());
    let vb = nl_b.link_by_name("vB").unwrap().expect("moved");
    nl_b.set_link_name(vb.index, "eth0").unwrap();
    let eth0 = nl_b.link_by_name("eth0").unwrap().expect("renamed");
    assert_eq!(eth0.kind.as_deref(), Some("veth"));
    assert_eq!(eth0.mac, vb.mac);

    let va = nl_a.link_by_name("vA").unwrap().unwrap();
    let ip: std::net::IpAddr = "169.254.1.1".parse().unwrap();
    let mac = terway::netlink::parse_mac("02:00:00:00:00:aa").unwrap();
    nl_a.replace_neigh_permanent(va.index, ip, mac).unwrap();
    nl_a.replace_neigh_permanent(va.index, ip, mac).unwrap();
    let n = nl_a.neighs(va.index).unwrap();
    assert!(
        n.iter()
            .any(|n| n.ip == ip && n.mac == Some(mac) && n.permanent),
        "{n:?}"
    );
    let shown = a.ip("neigh show dev vA");
    assert!(
        shown.contains("169.254.1.1 lladdr 02:00:00:00:00:aa PERMANENT"),
        "{shown}"
    );
}

/// Runtimes run ADDs concurrently: pods set up in parallel on one node must not interfere.
#[test]
fn parallel_setups_on_one_node() {
    require_root_and_tools();
    let node = std::sync::Arc::new(TestNs::new("node").with_node_addr("10.240.0.1/32"));
    let pods: Vec<std::sync::Arc<TestNs>> = (0..6)
        .map(|i| std::sync::Arc::new(TestNs::new(&format!("par{i}"))))
        .collect();
    let ip_of = |i: usize| Ipv4Addr::new(10, 240, 7, 10 + i as u8);
    let handles: Vec<_> = pods
        .iter()
        .enumerate()
        .map(|(i, pod)| {
            let (node, pod) = (node.clone(), pod.clone());
            std::thread::spawn(move || setup_pod(&node, &pod, "eth0", ip_of(i)))
        })
        .collect();
    for (i, h) in handles.into_iter().enumerate() {
        h.join()
            .expect("setup thread")
            .unwrap_or_else(|e| panic!("pod {i}: {e}"));
    }
    for (i, pod) in pods.iter().enumerate() {
        check_pod(&node, pod, "eth0", ip_of(i)).unwrap_or_else(|e| panic!("pod {i}: {e}"));
    }
    for i in 1..pods.len() {
        assert!(pods[0].ping(&ip_of(i).to_string()), "pod0 -> pod{i}");
    }
    for pod in &pods {
        teardown_pod(&node, pod, "eth0").expect("teardown");
    }
}
