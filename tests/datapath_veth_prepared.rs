//! A veth pair built before the pod's address is known (what the plugin does while the daemon
//! allocates), against the real kernel in throwaway namespaces: finished, it is the same datapath
//! `setup` builds; discarded or failed, it leaves nothing; vanished meanwhile, it is built again.
//! Needs root, `ip` and `ping`; fails loudly without them.

#[path = "common/netns_util.rs"]
mod netns_util;

use netns_util::{TestNs, require_root_and_tools};
use std::net::Ipv4Addr;
use terway::datapath::{self, VethSpec, veth};
use terway::netns::NetNs;
use terway::{Kind, Result};

const NODE_ADDR: &str = "10.240.0.1";

struct Names {
    pod_path: std::path::PathBuf,
    host_ifname: String,
    alias: String,
}

fn names(pod: &TestNs) -> Names {
    Names {
        pod_path: pod.path(),
        host_ifname: datapath::host_veth_name(&pod.name, "eth0"),
        alias: datapath::host_veth_alias(&pod.name, "eth0"),
    }
}

fn spec<'a>(ns: &'a NetNs, n: &'a Names, ip: Ipv4Addr) -> VethSpec<'a> {
    VethSpec {
        netns: ns,
        ifname: "eth0",
        host_ifname: &n.host_ifname,
        alias: &n.alias,
        ip,
        ip6: None,
        mtu: 1500,
    }
}

/// prepare(), then `between` (in the node namespace), then finish() with `ip`; all run from
/// inside the node namespace, as the plugin runs.
fn prepare_then_finish(
    node: &TestNs,
    pod: &TestNs,
    ip: Ipv4Addr,
    between: impl FnOnce(&Names) + Send + 'static,
) -> Result<()> {
    let n = names(pod);
    node.run(move || {
        let ns = NetNs::open(&n.pod_path)?;
        let s = spec(&ns, &n, ip);
        let prepared = veth::prepare(&s.pair())?.expect("no link of that name yet");
        between(&n);
        prepared.finish(&s).map(|_| ())
    })
}

fn check(node: &TestNs, pod: &TestNs, ip: Ipv4Addr) -> Result<()> {
    let n = names(pod);
    node.run(move || {
        let ns = NetNs::open(&n.pod_path)?;
        veth::check(&spec(&ns, &n, ip))
    })
}

fn link_exists(ns: &TestNs, name: &str) -> bool {
    ns.try_ip(&format!("link show {name}")).status.success()
}

#[test]
fn a_prepared_pair_has_no_address_until_finished_into_the_full_datapath() {
    require_root_and_tools();
    let node = TestNs::new("node").with_node_addr(&format!("{NODE_ADDR}/32"));
    let pod = TestNs::new("pod");
    let ip = Ipv4Addr::new(10, 240, 20, 2);
    let n = names(&pod);
    let (node_ip, pod_ip) = (std::sync::Arc::new(node), std::sync::Arc::new(pod));
    let (nc, pc) = (node_ip.clone(), pod_ip.clone());
    let host_ifname = n.host_ifname.clone();
    prepare_then_finish(&node_ip, &pod_ip, ip, move |_| {
        // Prepared: the pair exists, carries the alias, and holds no address and no route.
        let host = nc.ip(&format!("link show {host_ifname}"));
        assert!(host.contains("alias terway:"), "{host}");
        assert!(
            !host.contains(",UP"),
            "the host end stays down until finished: {host}"
        );
        let pod_addrs = pc.ip("addr show eth0");
        assert!(!pod_addrs.contains("inet "), "{pod_addrs}");
        assert!(pc.ip("route show").trim().is_empty());
        assert!(!nc.ip("route show").contains("10.240.20.2"));
        assert!(pc.ip("link show lo").contains(",UP"), "the pod's lo is up");
    })
    .expect("prepare, then finish");
    check(&node_ip, &pod_ip, ip).expect("the finished datapath is whole");
    assert!(pod_ip.ping(NODE_ADDR), "pod -> node");
}

/// prepare() for `pod`'s attachment, from inside the node namespace; `f` gets what it returned.
fn with_prepared<T: Send + 'static>(
    node: &TestNs,
    pod: &TestNs,
    f: impl FnOnce(Option<veth::PreparedVeth>) -> T + Send + 'static,
) -> Result<T> {
    let n = names(pod);
    node.run(move || {
        let ns = NetNs::open(&n.pod_path)?;
        let pair = veth::VethPair {
            netns: &ns,
            ifname: "eth0",
            host_ifname: &n.host_ifname,
            alias: &n.alias,
            mtu: 1500,
        };
        Ok(f(veth::prepare(&pair)?))
    })
}

#[test]
fn a_discarded_or_dropped_pair_leaves_nothing() {
    require_root_and_tools();
    let node = TestNs::new("node");
    let pod = TestNs::new("pod");
    let n = names(&pod);
    with_prepared(&node, &pod, |p| p.expect("prepared").discard()).unwrap();
    assert!(!link_exists(&node, &n.host_ifname));
    assert!(!link_exists(&pod, "eth0"));
    with_prepared(&node, &pod, drop).unwrap();
    assert!(!link_exists(&node, &n.host_ifname));
    assert!(!link_exists(&pod, "eth0"));
    let ip = Ipv4Addr::new(10, 240, 21, 2);
    prepare_then_finish(&node, &pod, ip, |_| {}).expect("the next ADD");
    check(&node, &pod, ip).expect("whole");
    node.run({
        let (h, a) = (n.host_ifname.clone(), n.alias.clone());
        move || veth::teardown(&h, &a)
    })
    .unwrap();
    assert!(!link_exists(&node, &n.host_ifname));
    assert!(!link_exists(&pod, "eth0"));
}

#[test]
fn a_pair_deleted_while_prepared_is_built_again() {
    // The daemon's teardown of the attachment's previous ADD runs while the plugin prepares:
    // it may find the new pair under the same name and alias and delete it.
    require_root_and_tools();
    let node = TestNs::new("node").with_node_addr(&format!("{NODE_ADDR}/32"));
    let pod = TestNs::new("pod");
    let ip = Ipv4Addr::new(10, 240, 22, 2);
    prepare_then_finish(&node, &pod, ip, |n| {
        let mut nl = terway::netlink::Netlink::open().unwrap();
        let link = nl.link_by_name(&n.host_ifname).unwrap().expect("prepared");
        nl.delete_link(link.index).unwrap();
    })
    .expect("finish after the pair vanished");
    check(&node, &pod, ip).expect("whole");
    assert!(pod.ping(NODE_ADDR), "pod -> node");
}

#[test]
fn a_finish_that_fails_removes_the_pair() {
    require_root_and_tools();
    let node = TestNs::new("node");
    let pod = TestNs::new("pod");
    let n = names(&pod);
    // An unusable address is refused before anything is configured...
    let e = prepare_then_finish(&node, &pod, Ipv4Addr::UNSPECIFIED, |_| {}).unwrap_err();
    assert_eq!(e.kind, Kind::InvalidConfig);
    assert!(e.msg.contains("not a usable pod address"), "{}", e.msg);
    assert!(!link_exists(&node, &n.host_ifname), "{}", e.msg);
    assert!(!link_exists(&pod, "eth0"));
    // ... and a failure half-way (a route of the node's own in the way) undoes it all.
    let ip = Ipv4Addr::new(10, 240, 23, 2);
    node.ip("link add twblock type veth peer name twblockp");
    node.ip("link set twblock up");
    node.ip(&format!("route add {ip}/32 dev twblock"));
    let e = prepare_then_finish(&node, &pod, ip, |_| {}).unwrap_err();
    assert_eq!(e.kind, Kind::Datapath, "{}", e.msg);
    assert!(e.msg.contains(&ip.to_string()), "{}", e.msg);
    assert!(!link_exists(&node, &n.host_ifname));
    assert!(!link_exists(&pod, "eth0"));
    assert!(
        node.ip("route show").contains("twblock"),
        "the node's route stays"
    );
}

#[test]
fn sockets_open_in_a_pods_namespace_and_the_thread_comes_home() {
    require_root_and_tools();
    let pod = TestNs::new("pod");
    pod.ip("link add twx0 type veth peer name twx1");
    let ns = pod.open();
    let home = NetNs::current().unwrap().id().unwrap();
    assert_ne!(home, ns.id().unwrap());
    let inside = ns
        .run_here(|| NetNs::current().unwrap().id().unwrap())
        .unwrap();
    assert_eq!(inside, ns.id().unwrap(), "run inside the pod's namespace");
    assert_eq!(NetNs::current().unwrap().id().unwrap(), home, "and back");
    // A panic inside still brings the thread back.
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        ns.run_here(|| panic!("inside the pod")).unwrap()
    }));
    assert!(caught.is_err());
    assert_eq!(NetNs::current().unwrap().id().unwrap(), home);
    // The socket stays in the namespace it was opened in: it sees the pod's links only.
    let mut nl = terway::netlink::Netlink::open_in(&ns).unwrap();
    let mut names: Vec<String> = nl.links().unwrap().into_iter().map(|l| l.name).collect();
    names.sort();
    assert_eq!(names, ["lo", "twx0", "twx1"]);
    assert_eq!(NetNs::current().unwrap().id().unwrap(), home);
    // Up by name, in one request; a missing link is no error.
    assert!(nl.set_link_up_by_name("twx0").unwrap());
    assert!(pod.ip("link show twx0").contains(",UP"));
    assert!(!nl.set_link_up_by_name("twmissing0").unwrap());
}

#[test]
fn an_existing_host_veth_is_left_for_after_the_answer() {
    // A retried ADD, or the previous ADD's veth the daemon is still tearing down: prepare
    // builds nothing and touches nothing; setup replaces it once the daemon has answered.
    require_root_and_tools();
    let node = TestNs::new("node").with_node_addr(&format!("{NODE_ADDR}/32"));
    let pod = TestNs::new("pod");
    let ip = Ipv4Addr::new(10, 240, 24, 2);
    prepare_then_finish(&node, &pod, ip, |_| {}).expect("first ADD");
    let n = names(&pod);
    let before = node.ip(&format!("link show {}", n.host_ifname));
    let prepared = with_prepared(&node, &pod, |p| p.is_some()).unwrap();
    assert!(!prepared, "nothing prepared over an existing veth");
    assert_eq!(before, node.ip(&format!("link show {}", n.host_ifname)));
    check(&node, &pod, ip).expect("the first ADD's datapath is untouched");
    // A dropped pair whose link was replaced under the same name leaves the new one alone.
    let other = TestNs::new("pod2");
    let m = names(&other);
    let (h, path) = (m.host_ifname.clone(), m.pod_path.clone());
    node.run(move || {
        let ns = NetNs::open(&path)?;
        let pair = veth::VethPair {
            netns: &ns,
            ifname: "eth0",
            host_ifname: &h,
            alias: "terway:test",
            mtu: 1500,
        };
        let p = veth::prepare(&pair)?.expect("prepared");
        let mut nl = terway::netlink::Netlink::open()?;
        let link = nl.link_by_name(&h)?.expect("there");
        nl.delete_link(link.index)?;
        nl.create_veth(&h, "eth0", &ns, 1500)?;
        drop(p);
        Ok(())
    })
    .unwrap();
    assert!(link_exists(&node, &m.host_ifname), "the replacement stays");
}
