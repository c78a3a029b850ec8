//! Dual-stack datapaths against the real kernel, in throwaway namespaces: a "node" namespace
//! plays the host (host-side work runs on a thread inside it), "pod" namespaces play pods and a
//! "vpc" namespace plays the vSwitch behind an emulated ENI (a veth end with the ENI's MAC).
//! Nothing touches the root namespace. Needs root, `ip` and `ping`; fails loudly without them.

#[path = "common/netns_util.rs"]
mod netns_util;

use ipnetwork::IpNetwork;
use netns_util::{TestNs, require_root_and_tools};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use terway::datapath::attach::{self, Attachment};
use terway::datapath::{self, VethInfo, VethSpec, policy};
use terway::model::{Datapath, IpConfig, PodAddress};
use terway::netlink::{IFA_F_NODAD, Netlink, find_link_by_mac, parse_mac};
use terway::netns::NetNs;
use terway::{Kind, Result};

const NODE_V4: &str = "10.240.0.1";
const NODE_V6: &str = "fd00:240::1";

fn node() -> TestNs {
    let node = TestNs::new("node").with_node_addr(&format!("{NODE_V4}/32"));
    node.ip(&format!("-6 addr add {NODE_V6}/128 dev lo"));
    node
}

fn spec_run<T: Send + 'static>(
    node: &TestNs,
    pod: &TestNs,
    ip: Ipv4Addr,
    ip6: Ipv6Addr,
    f: impl FnOnce(&VethSpec) -> Result<T> + Send + 'static,
) -> Result<T> {
    let pod_path = pod.path();
    let host_ifname = datapath::host_veth_name(&pod.name, "eth0");
    let alias = datapath::host_veth_alias(&pod.name, "eth0");
    node.run(move || {
        let ns = NetNs::open(&pod_path)?;
        f(&VethSpec {
            netns: &ns,
            ifname: "eth0",
            host_ifname: &host_ifname,
            alias: &alias,
            ip,
            ip6: Some(ip6),
            mtu: 1500,
        })
    })
}

fn setup(node: &TestNs, pod: &TestNs, ip: Ipv4Addr, ip6: Ipv6Addr) -> Result<VethInfo> {
    spec_run(node, pod, ip, ip6, datapath::veth::setup)
}

fn check(node: &TestNs, pod: &TestNs, ip: Ipv4Addr, ip6: Ipv6Addr) -> Result<()> {
    spec_run(node, pod, ip, ip6, datapath::veth::check)
}

/// The pod's IPv6 address on `ifname` is there and usable right now: added without DAD, not
/// tentative, as the kernel and iproute2 both report it.
fn assert_usable_now(pod: &TestNs, ifname: &str, want: IpNetwork) {
    let path = pod.path();
    let name = ifname.to_string();
    let addrs = pod
        .run(move || {
            let ns = NetNs::open(&path)?;
            let mut nl = Netlink::open_in(&ns)?;
            let link = nl.link_by_name(&name)?.expect("pod interface");
            nl.addrs(Some(link.index))
        })
        .expect("list pod addresses");
    let a = addrs
        .iter()
        .find(|a| a.addr == want)
        .unwrap_or_else(|| panic!("{want} not on {ifname}: {addrs:?}"));
    assert!(!a.tentative(), "{want} is tentative: flags {:#x}", a.flags);
    assert_ne!(a.flags & IFA_F_NODAD, 0, "{want} was added with DAD");
    let shown = pod.ip(&format!("-6 addr show dev {ifname}"));
    let line = shown
        .lines()
        .find(|l| l.contains(&want.to_string()))
        .unwrap_or_else(|| panic!("{want} not shown: {shown}"));
    assert!(!line.contains("tentative"), "{line}");
}

/// A sysctl read inside `ns`.
fn sysctl(ns: &TestNs, key: &str) -> String {
    let k = key.to_string();
    ns.run(move || terway::sysctl::get(&k))
        .unwrap_or_else(|e| panic!("read {key}: {e}"))
}

fn v6_net(ip: Ipv6Addr) -> IpNetwork {
    IpNetwork::new(IpAddr::V6(ip), 128).unwrap()
}

#[test]
fn dual_stack_veth_pods_ping_at_once_and_check_finds_every_missing_piece() {
    require_root_and_tools();
    let node = node();
    let pod1 = TestNs::new("pod1");
    let pod2 = TestNs::new("pod2");
    let (ip1, ip1_6) = (
        Ipv4Addr::new(10, 240, 1, 2),
        "fd00:240:1::2".parse().unwrap(),
    );
    let (ip2, ip2_6) = (
        Ipv4Addr::new(10, 240, 1, 3),
        "fd00:240:1::3".parse().unwrap(),
    );

    let info = setup(&node, &pod1, ip1, ip1_6).expect("setup pod1");
    assert_usable_now(&pod1, "eth0", v6_net(ip1_6));
    setup(&node, &pod2, ip2, ip2_6).expect("setup pod2");
    assert_usable_now(&pod2, "eth0", v6_net(ip2_6));

    // Pings right away: no waiting for DAD anywhere.
    assert!(pod1.ping(&ip2_6.to_string()), "pod1 -> pod2 over IPv6");
    assert!(pod2.ping(&ip1_6.to_string()), "pod2 -> pod1 over IPv6");
    assert!(pod1.ping(NODE_V6), "pod1 -> node over IPv6");
    assert!(node.ping(&ip1_6.to_string()), "node -> pod1 over IPv6");
    assert!(pod1.ping(&ip2.to_string()), "IPv4 still works");
    assert!(pod1.ping(NODE_V4), "pod1 -> node over IPv4");

    // The recipe, as iproute2 sees it.
    let host = &info.host_ifname;
    let routes = pod1.ip("-6 route show");
    assert!(routes.contains("default via fe80::1 dev eth0"), "{routes}");
    let neigh = pod1.ip("-6 neigh show fe80::1");
    assert!(neigh.contains("PERMANENT"), "{neigh}");
    assert!(
        neigh.contains(&terway::netlink::format_mac(&info.host_mac)),
        "{neigh}"
    );
    let host_routes = node.ip("-6 route show");
    assert!(
        host_routes.contains(&format!("{ip1_6} dev {host}")),
        "{host_routes}"
    );
    let host_addrs = node.ip(&format!("-6 addr show dev {host}"));
    assert!(host_addrs.contains("fe80::1/64"), "{host_addrs}");
    assert_eq!(sysctl(&node, "net/ipv6/conf/all/forwarding"), "1");
    assert_eq!(sysctl(&pod1, "net/ipv6/conf/eth0/accept_ra"), "0");
    assert_eq!(sysctl(&pod1, "net/ipv6/conf/eth0/accept_dad"), "0");
    assert_eq!(
        sysctl(&node, &format!("net/ipv6/conf/{host}/accept_ra")),
        "0"
    );

    // DEL without the daemon finds both addresses from the node's routes.
    let (h, a) = (host.clone(), datapath::host_veth_alias(&pod1.name, "eth0"));
    let routed = node
        .run(move || datapath::veth::routed_pod_ips(&h, &a))
        .expect("routed ips");
    assert_eq!(routed, [IpAddr::V4(ip1), IpAddr::V6(ip1_6)]);

    check(&node, &pod1, ip1, ip1_6).expect("check pod1");
    check(&node, &pod2, ip2, ip2_6).expect("check pod2");

    // Break every IPv6 piece at once: one check names them all.
    node.ip(&format!("-6 route del {ip1_6}/128 dev {host}"));
    pod1.ip("-6 route del default via fe80::1 dev eth0");
    pod1.ip("-6 neigh del fe80::1 dev eth0");
    let e = check(&node, &pod1, ip1, ip1_6).unwrap_err();
    assert_eq!(e.kind, Kind::Datapath);
    for want in [
        format!("host route {ip1_6}/128 dev {host} is missing"),
        "pod default route via fe80::1 dev eth0 is missing".to_string(),
        "pod neighbour fe80::1 on eth0 is missing".to_string(),
    ] {
        assert!(e.msg.contains(&want), "want {want:?} in {}", e.msg);
    }
    assert!(!e.msg.contains("169.254.1.1"), "IPv4 is fine: {}", e.msg);

    // Teardown leaves no IPv6 state on the node.
    let h = host.clone();
    let foreign = node
        .run(move || datapath::veth::teardown(&h, "terway:someone-else"))
        .expect("teardown of a foreign alias");
    assert!(
        matches!(foreign, datapath::Teardown::NotOurs(_)),
        "{foreign:?}"
    );
    let (h, a) = (host.clone(), datapath::host_veth_alias(&pod1.name, "eth0"));
    node.run(move || datapath::veth::teardown(&h, &a).map(|_| ()))
        .expect("teardown");
    let host_routes = node.ip("-6 route show");
    assert!(!host_routes.contains(&ip1_6.to_string()), "{host_routes}");
    // pod2 is unaffected.
    check(&node, &pod2, ip2, ip2_6).expect("pod2 still fine");
    assert!(pod2.ping(NODE_V6), "pod2 -> node after pod1 teardown");
}

/// A "vpc" namespace behind an emulated ENI `eni1` of `node`: the vSwitch gateways on `vpc0`
/// and a VPC address of each family on `lo` that only the ENI's table leads to.
struct Vpc {
    ns: TestNs,
    gw: Ipv4Addr,
    gw6: Ipv6Addr,
}

const ENI_MAC: &str = "02:00:00:00:10:06";
const VPC_V4: &str = "10.250.0.1";
const VPC_V6: &str = "fd00:250::1";

fn vpc(node: &TestNs) -> Vpc {
    let ns = TestNs::new("vpc");
    // The emulated ENI and the VPC router are test fixtures: their own link-locals need no DAD.
    for n in [node, &ns] {
        n.run(|| terway::sysctl::set("net/ipv6/conf/default/accept_dad", "0"))
            .expect("no DAD for the fixture's links");
    }
    node.ip(&format!(
        "link add eni1 address {ENI_MAC} type veth peer name vpc0 netns {}",
        ns.name
    ));
    let v = Vpc {
        ns,
        gw: Ipv4Addr::new(10, 240, 0, 253),
        gw6: "fd00:240::fffd".parse().unwrap(),
    };
    v.ns.ip("link set lo up");
    v.ns.ip(&format!("addr add {VPC_V4}/32 dev lo"));
    v.ns.ip(&format!("-6 addr add {VPC_V6}/128 dev lo"));
    v.ns.ip(&format!("addr add {}/24 dev vpc0", v.gw));
    v.ns.ip(&format!("-6 addr add {}/64 dev vpc0 nodad", v.gw6));
    v.ns.ip("link set vpc0 up");
    v
}

impl Vpc {
    /// The VPC knows which ENI owns the pod's addresses.
    fn route_pod(&self, ip: IpAddr) {
        self.ns.ip(&format!("route add {ip} dev vpc0"));
        self.ns.ip(&format!(
            "neigh add {ip} lladdr {ENI_MAC} dev vpc0 nud permanent"
        ));
    }
}

fn dual(
    ip: Ipv4Addr,
    prefix: u8,
    gw: IpAddr,
    ip6: Ipv6Addr,
    prefix6: u8,
    gw6: IpAddr,
) -> PodAddress {
    PodAddress {
        ipv4: Some(IpConfig {
            addr: IpNetwork::new(IpAddr::V4(ip), prefix).unwrap(),
            gateway: Some(gw),
        }),
        ipv6: Some(IpConfig {
            addr: IpNetwork::new(IpAddr::V6(ip6), prefix6).unwrap(),
            gateway: Some(gw6),
        }),
    }
}

/// attach::setup / check / teardown for `pod`, on a thread in `node`.
fn attach_run<T: Send + 'static>(
    node: &TestNs,
    pod: &TestNs,
    f: impl FnOnce(&Attachment) -> Result<T> + Send + 'static,
) -> Result<T> {
    let (path, id) = (pod.path(), pod.name.clone());
    node.run(move || {
        let ns = NetNs::open(&path)?;
        f(&Attachment {
            container_id: &id,
            ifname: "eth0",
            netns: Some(&ns),
            mtu: 1500,
        })
    })
}

#[test]
fn dual_stack_policy_routing_through_the_eni_table() {
    require_root_and_tools();
    let node = node();
    let vpc = vpc(&node);
    let pod = TestNs::new("pod");
    let pod2 = TestNs::new("pod2");
    let (gw, gw6) = (vpc.gw, vpc.gw6);

    let table = node
        .run(move || {
            let mut nl = Netlink::open()?;
            let eni = find_link_by_mac(&mut nl, &parse_mac(ENI_MAC)?)?.expect("ENI");
            let table = policy::prepare_eni_table(&mut nl, eni.index, gw)?;
            assert_eq!(
                policy::prepare_eni_table_v6(&mut nl, eni.index, gw6)?,
                table
            );
            policy::prepare_eni_table_v6(&mut nl, eni.index, gw6)?; // idempotent
            policy::check_eni_table(&mut nl, eni.index, gw)?;
            policy::check_eni_table_v6(&mut nl, eni.index, gw6)?;
            Ok(table)
        })
        .expect("prepare ENI");
    let shown = node.ip(&format!("-6 route show table {table}"));
    assert!(
        shown.contains(&format!("default via {gw6} dev eni1")),
        "{shown}"
    );

    let dp = Datapath::VethPolicy {
        table,
        eni_id: "eni-test".into(),
    };
    let pod_gw = IpAddr::V4(datapath::POD_GATEWAY);
    let pod_gw6 = IpAddr::V6(datapath::POD_GATEWAY_V6);
    let ip6: Ipv6Addr = "fd00:240::a".parse().unwrap();
    let addr = dual(Ipv4Addr::new(10, 240, 6, 10), 32, pod_gw, ip6, 128, pod_gw6);
    let addr2 = dual(
        Ipv4Addr::new(10, 240, 6, 11),
        32,
        pod_gw,
        "fd00:240::b".parse().unwrap(),
        128,
        pod_gw6,
    );
    for a in addr.ips() {
        vpc.route_pod(a);
    }

    let (a, d) = (addr.clone(), dp.clone());
    let wired = attach_run(&node, &pod, move |att| attach::setup(att, &a, &d)).expect("setup");
    assert_eq!(wired.ips.len(), 2);
    assert_eq!(wired.ips[1].addr, v6_net(ip6));
    assert_eq!(wired.ips[1].gateway, pod_gw6);
    assert_usable_now(&pod, "eth0", v6_net(ip6));
    let (a, d) = (addr2.clone(), dp.clone());
    attach_run(&node, &pod2, move |att| attach::setup(att, &a, &d)).expect("setup pod2");

    let rules = node.ip("-6 rule show");
    assert!(
        rules.contains(&format!("512:\tfrom all to {ip6} lookup main")),
        "{rules}"
    );
    assert!(
        rules.contains(&format!("2048:\tfrom {ip6} lookup {table}")),
        "{rules}"
    );
    assert!(
        pod.ping(VPC_V6),
        "pod -> VPC over IPv6 through the ENI table"
    );
    assert!(
        pod.ping(VPC_V4),
        "pod -> VPC over IPv4 through the ENI table"
    );
    assert!(pod.ping("fd00:240::b"), "pod -> pod2 over IPv6 (rule 512)");
    assert!(pod.ping(NODE_V6), "pod -> node over IPv6");

    let (a, d) = (addr.clone(), dp.clone());
    attach_run(&node, &pod, move |att| attach::check(att, &a, &d)).expect("check");
    node.ip(&format!("-6 rule del from {ip6} lookup {table} prio 2048"));
    pod.ip("-6 route del default via fe80::1 dev eth0");
    let (a, d) = (addr.clone(), dp.clone());
    let e = attach_run(&node, &pod, move |att| attach::check(att, &a, &d)).unwrap_err();
    // The veth's and the rules' problems in one error.
    for want in [
        format!("rule 2048: from {ip6}/128 to all lookup {table} is missing"),
        "pod default route via fe80::1 dev eth0 is missing".to_string(),
    ] {
        assert!(e.msg.contains(&want), "want {want:?} in {}", e.msg);
    }
    pod.ip("-6 route add default via fe80::1 dev eth0");
    assert!(!pod.ping(VPC_V6), "no IPv6 rule, no way out");

    // The daemon's record: both families' rules go.
    let (a, d) = (addr.clone(), dp.clone());
    attach_run(&node, &pod, move |att| {
        attach::teardown(att, Some((&a, &d)))
    })
    .expect("teardown");
    let rules = node.ip("-6 rule show");
    assert!(!rules.contains(&ip6.to_string()), "{rules}");
    assert!(!node.ip("-6 route show").contains(&ip6.to_string()));

    // Without the daemon: the addresses routed onto the host veth tell whose rules go.
    let ip2_6 = addr2.ipv6.unwrap().ip();
    let id = pod2.name.clone();
    let routed = node
        .run(move || Ok(attach::routed_ips(&id, "eth0")))
        .unwrap();
    assert_eq!(routed, addr2.ips().collect::<Vec<_>>());
    attach_run(&node, &pod2, move |att| attach::teardown(att, None)).expect("teardown pod2");
    let rules = node.ip("-6 rule show");
    assert!(!rules.contains(&ip2_6.to_string()), "{rules}");
    let rules4 = node.ip("rule show");
    assert!(!rules4.contains("10.240.6.1"), "{rules4}");
}

#[test]
fn dual_stack_exclusive_eni_pings_its_gateways() {
    require_root_and_tools();
    let node = node();
    let vpc = vpc(&node);
    let pod = TestNs::new("pod");
    let ip6: Ipv6Addr = "fd00:240::10".parse().unwrap();
    let addr = dual(
        Ipv4Addr::new(10, 240, 0, 10),
        24,
        IpAddr::V4(vpc.gw),
        ip6,
        64,
        IpAddr::V6(vpc.gw6),
    );
    let dp = Datapath::ExclusiveEni {
        eni_id: "eni-test".into(),
        mac: ENI_MAC.into(),
        host_peer: None,
    };
    let (a, d) = (addr.clone(), dp.clone());
    let wired = attach_run(&node, &pod, move |att| attach::setup(att, &a, &d)).expect("setup");
    assert_eq!(wired.ips.len(), 2);
    assert_eq!(wired.ips[1].addr.to_string(), format!("{ip6}/64"));
    assert_eq!(wired.ips[1].gateway, IpAddr::V6(vpc.gw6));
    let net = IpNetwork::new(IpAddr::V6(ip6), 64).unwrap();
    assert_usable_now(&pod, "eth0", net);
    let routes = pod.ip("-6 route show");
    assert!(
        routes.contains(&format!("default via {} dev eth0", vpc.gw6)),
        "{routes}"
    );
    assert!(
        pod.ping(&vpc.gw6.to_string()),
        "pod -> vSwitch IPv6 gateway"
    );
    assert!(pod.ping(&vpc.gw.to_string()), "pod -> vSwitch IPv4 gateway");
    vpc.ns.ip(&format!("-6 route add {ip6}/128 dev vpc0"));
    assert!(pod.ping(VPC_V6), "pod -> VPC over IPv6 via the gateway");

    let (a, d) = (addr.clone(), dp.clone());
    attach_run(&node, &pod, move |att| attach::check(att, &a, &d)).expect("check");
    pod.ip(&format!("-6 route del default via {} dev eth0", vpc.gw6));
    pod.ip(&format!("-6 addr del {ip6}/64 dev eth0"));
    let (a, d) = (addr.clone(), dp.clone());
    let e = attach_run(&node, &pod, move |att| attach::check(att, &a, &d)).unwrap_err();
    for want in [
        format!("pod IPv6 default route via {} dev eth0 is missing", vpc.gw6),
        format!("pod eth0 address {ip6}/64 is missing"),
    ] {
        assert!(e.msg.contains(&want), "want {want:?} in {}", e.msg);
    }

    let (a, d) = (addr.clone(), dp.clone());
    attach_run(&node, &pod, move |att| {
        attach::teardown(att, Some((&a, &d)))
    })
    .expect("teardown");
    let parked = node.ip(&format!("-6 addr show dev eni{}", ENI_MAC.replace(':', "")));
    assert!(!parked.contains("fd00:"), "parked ENI is bare: {parked}");
}

/// Turning IPv6 forwarding on keeps the node taking RAs on its own interfaces (accept_ra 1
/// becomes 2), never on a link terway made for a pod.
#[test]
fn forwarding_keeps_the_nodes_own_ras_only() {
    require_root_and_tools();
    let node = node();
    let pod = TestNs::new("pod");
    node.ip("link add up0 type veth peer name up0p");
    node.ip("link add twffffffffffff0 type veth peer name twp0");
    for (dev, a) in [
        ("up0", "fd00:99::2/64"),
        ("twffffffffffff0", "fd00:98::2/64"),
    ] {
        node.ip(&format!("-6 addr add {a} dev {dev} nodad"));
        node.ip(&format!("link set {dev} up"));
        assert_eq!(
            sysctl(&node, &format!("net/ipv6/conf/{dev}/accept_ra")),
            "1"
        );
    }
    assert_eq!(sysctl(&node, "net/ipv6/conf/all/forwarding"), "0");
    let ip6: Ipv6Addr = "fd00:240:1::9".parse().unwrap();
    let info = setup(&node, &pod, Ipv4Addr::new(10, 240, 1, 9), ip6).expect("setup");
    assert_eq!(sysctl(&node, "net/ipv6/conf/all/forwarding"), "1");
    assert_eq!(sysctl(&node, "net/ipv6/conf/up0/accept_ra"), "2");
    assert_eq!(
        sysctl(&node, "net/ipv6/conf/twffffffffffff0/accept_ra"),
        "1"
    );
    assert_eq!(
        sysctl(
            &node,
            &format!("net/ipv6/conf/{}/accept_ra", info.host_ifname)
        ),
        "0"
    );
    // up0p has no global address: not the node's, left alone.
    assert_eq!(sysctl(&node, "net/ipv6/conf/up0p/accept_ra"), "1");
}
