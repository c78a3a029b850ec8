//! Exclusive ENI datapath (ENIOnly) against the real kernel, in throwaway namespaces. The build
//! machines' kernel has no dummy driver, so an ENI is what `terway emulate --netns` makes: a veth
//! whose node end carries the ENI's MAC and whose other end sits in a "vpc" namespace holding the
//! vSwitch gateway. All host-side work runs on a thread inside the "node" namespace; nothing
//! touches the root namespace. Needs root, `ip` and `ping`; fails loudly without them.

#[path = "common/netns_util.rs"]
mod netns_util;

use ipnetwork::Ipv4Network;
use netns_util::{TestNs, require_root_and_tools};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use terway::datapath::exclusive_eni::{
    self, EniReturn, EniTeardown, EniTeardownSpec, ExclusiveEniInfo, ExclusiveEniSpec, HostPeer,
    HostVethRef,
};
use terway::datapath::{self, Teardown};
use terway::netlink::{format_mac, parse_mac};
use terway::netns::NetNs;
use terway::{Kind, Result};

const NODE_IP: &str = "10.240.0.1";
const GW: &str = "10.240.0.253";
const SERVICE_CIDR: &str = "10.96.0.0/12";
const SERVICE_IP: &str = "10.96.0.10";

/// One attachment, owned, so it can be moved onto a thread inside the node namespace.
#[derive(Clone)]
struct Eni {
    pod: PathBuf,
    mac: [u8; 6],
    ip: Ipv4Network,
    mtu: u32,
    /// host veth name and alias; `None`: no host peer.
    peer: Option<(String, String)>,
}

impl Eni {
    fn parked(&self) -> String {
        exclusive_eni::parked_name(&self.mac)
    }

    fn host_ifname(&self) -> &str {
        &self.peer.as_ref().expect("a host peer").0
    }

    /// Runs `f` with this attachment's spec on a thread inside `node`.
    fn with_spec<T: Send + 'static>(
        &self,
        node: &TestNs,
        f: impl FnOnce(&ExclusiveEniSpec) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let me = self.clone();
        node.run(move || {
            let ns = NetNs::open(&me.pod)?;
            let spec = ExclusiveEniSpec {
                netns: &ns,
                ifname: "eth0",
                mac: me.mac,
                ip: me.ip,
                gateway: GW.parse().unwrap(),
                ipv6: None,
                mtu: me.mtu,
                host_peer: me.peer.as_ref().map(|(name, alias)| HostPeer {
                    host_ifname: name,
                    alias,
                    service_cidr: Some(SERVICE_CIDR.parse().unwrap()),
                    node_ips: vec![NODE_IP.parse().unwrap()],
                }),
            };
            f(&spec)
        })
    }

    fn setup(&self, node: &TestNs) -> Result<ExclusiveEniInfo> {
        self.with_spec(node, exclusive_eni::setup)
    }

    fn check(&self, node: &TestNs) -> Result<()> {
        self.with_spec(node, exclusive_eni::check)
    }

    fn teardown(&self, node: &TestNs) -> Result<EniTeardown> {
        self.with_spec(node, |s| exclusive_eni::teardown(&s.teardown_spec()))
    }

    /// DEL without a namespace (`CNI_NETNS` empty: the pod's namespace is gone).
    fn teardown_without_netns(&self, node: &TestNs) -> Result<EniTeardown> {
        let me = self.clone();
        node.run(move || {
            exclusive_eni::teardown(&EniTeardownSpec {
                netns: None,
                mac: me.mac,
                host_veth: me.peer.as_ref().map(|(name, alias)| HostVethRef {
                    host_ifname: name,
                    alias,
                }),
            })
        })
    }
}

/// A node with an emulated ENI `eth1` (MAC `mac`) wired to a VPC, its own `eth0` (so the pod's
/// `eth0` must not clash with it), its address and a service address on `lo`, and a pod.
struct Lab {
    node: TestNs,
    vpc: TestNs,
    pod: TestNs,
    eni: Eni,
}

fn lab(mac: &str, pod_ip: &str, peer: bool) -> Lab {
    let node = TestNs::new("node").with_node_addr(&format!("{NODE_IP}/32"));
    node.ip(&format!("addr add {SERVICE_IP}/32 dev lo"));
    node.ip("link add eth0 type veth peer name eth0p");
    let vpc = TestNs::new("vpc");
    node.ip(&format!(
        "link add eth1 address {mac} type veth peer name vpc0 netns {}",
        vpc.name
    ));
    vpc.ip("link set lo up");
    vpc.ip(&format!("addr add {GW}/24 dev vpc0"));
    vpc.ip("link set vpc0 up");
    let pod = TestNs::new("pod");
    let eni = Eni {
        pod: pod.path(),
        mac: parse_mac(mac).unwrap(),
        ip: format!("{pod_ip}/24").parse().unwrap(),
        mtu: 1500,
        peer: peer.then(|| {
            (
                datapath::host_veth_name(&pod.name, "eth0"),
                datapath::host_veth_alias(&pod.name, "eth0"),
            )
        }),
    };
    Lab {
        node,
        vpc,
        pod,
        eni,
    }
}

/// `ip -o link show dev <name>` in `ns`, if the link exists.
fn link_line(ns: &TestNs, name: &str) -> Option<String> {
    let out = ns.try_ip(&format!("-o link show dev {name}"));
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Asserts the ENI sits on the node under its parked name, down and without any address.
fn assert_parked(lab_node: &TestNs, eni: &Eni) {
    let parked = eni.parked();
    let line = link_line(lab_node, &parked)
        .unwrap_or_else(|| panic!("{parked} is not on the node: {}", lab_node.ip("link")));
    assert!(line.contains(&format_mac(&eni.mac)), "{line}");
    assert!(!line.contains(",UP"), "parked ENI must be down: {line}");
    let addrs = lab_node.ip(&format!("-o addr show dev {parked}"));
    assert!(addrs.trim().is_empty(), "parked ENI has addresses: {addrs}");
}

fn assert_no_host_veth(node: &TestNs, eni: &Eni) {
    if let Some((name, _)) = &eni.peer {
        assert!(link_line(node, name).is_none(), "host veth {name} is left");
    }
}

#[test]
fn setup_reaches_vpc_node_and_services_then_teardown_parks() {
    require_root_and_tools();
    let lab = lab("02:00:0a:f0:00:0a", "10.240.0.10", true);
    let (node, pod, eni) = (&lab.node, &lab.pod, &lab.eni);

    let info = eni.setup(node).expect("setup");
    assert_eq!(info.pod_mac, eni.mac);
    assert_eq!(info.mtu, 1500);
    let peer = info.host_peer.as_ref().expect("host peer info");
    assert_eq!(peer.host_ifname, eni.host_ifname());
    assert_eq!(peer.pod_ifname, "veth1");

    // The ENI itself is the pod's eth0 now; the node's own eth0 is untouched.
    let eth0 = link_line(pod, "eth0").expect("pod eth0");
    assert!(eth0.contains(&format_mac(&eni.mac)), "{eth0}");
    assert!(link_line(node, "eth1").is_none(), "ENI still on the node");
    assert!(link_line(node, "eth0").is_some(), "node eth0 is gone");
    // The MACs reported are the real ones.
    let host_line = link_line(node, &peer.host_ifname).expect("host veth");
    assert!(
        host_line.contains(&format_mac(&peer.host_mac)),
        "{host_line}"
    );
    let veth1 = link_line(pod, "veth1").expect("pod veth1");
    assert!(veth1.contains(&format_mac(&peer.pod_mac)), "{veth1}");
    // The recipe, as iproute2 sees it.
    let addrs = pod.ip("-4 -o addr show dev eth0");
    assert!(addrs.contains("inet 10.240.0.10/24"), "{addrs}");
    let routes = pod.ip("route show");
    for want in [
        format!("default via {GW} dev eth0"),
        format!("{SERVICE_CIDR} via 169.254.1.1 dev veth1 onlink"),
        format!("{NODE_IP} via 169.254.1.1 dev veth1 onlink"),
    ] {
        assert!(routes.contains(&want), "want {want:?} in:\n{routes}");
    }
    let neigh = pod.ip("neigh show 169.254.1.1 dev veth1");
    assert!(neigh.contains("PERMANENT"), "{neigh}");
    assert!(neigh.contains(&format_mac(&peer.host_mac)), "{neigh}");
    let host_routes = node.ip("route show");
    assert!(
        host_routes.contains(&format!("10.240.0.10 dev {} scope link", peer.host_ifname)),
        "{host_routes}"
    );

    // The VPC through eth0 (the VPC namespace has no other way back), the node and a service
    // address through veth1, and the node reaches the pod.
    assert!(pod.ping(GW), "pod -> vSwitch gateway via eth0");
    assert!(pod.ping(NODE_IP), "pod -> node via veth1");
    assert!(pod.ping(SERVICE_IP), "pod -> service address via veth1");
    assert!(node.ping("10.240.0.10"), "node -> pod");
    // A TCP service listening on the node is reached from the pod.
    let listener = node
        .run(|| Ok(TcpListener::bind((SERVICE_IP, 0))?))
        .expect("listen in the node");
    let addr: SocketAddr = listener.local_addr().unwrap();
    let local = lab
        .pod
        .run(move || Ok(TcpStream::connect_timeout(&addr, Duration::from_secs(3))?.local_addr()?))
        .expect("pod connects to the service on the node");
    let (_conn, peer_addr) = listener.accept().unwrap();
    assert_eq!(peer_addr, local);
    assert_eq!(peer_addr.ip().to_string(), "10.240.0.10");

    eni.check(node).expect("check");

    // check names every missing piece.
    pod.ip("route del default");
    pod.ip(&format!("route del {SERVICE_CIDR}"));
    let e = eni.check(node).unwrap_err();
    assert_eq!(e.kind, Kind::Datapath);
    for want in [
        format!("pod default route via {GW} dev eth0 is missing"),
        format!("pod route {SERVICE_CIDR} via 169.254.1.1 dev veth1 onlink is missing"),
    ] {
        assert!(e.msg.contains(&want), "want {want:?} in: {}", e.msg);
    }
    assert!(
        !e.msg.contains(&format!("{NODE_IP}/32 via")),
        "node route is fine: {}",
        e.msg
    );

    let got = eni.teardown(node).expect("teardown");
    assert_eq!(got.eni, EniReturn::FromPod(eni.parked()));
    assert_eq!(got.host_veth, Some(Teardown::Deleted));
    assert_parked(node, eni);
    assert_no_host_veth(node, eni);
    assert!(link_line(pod, "eth0").is_none() && link_line(pod, "veth1").is_none());
    assert!(
        !node.ip("route show").contains("10.240.0.10"),
        "host route left behind"
    );

    let again = eni.teardown(node).expect("second teardown");
    assert_eq!(again.eni, EniReturn::AlreadyParked(eni.parked()));
    assert_eq!(again.host_veth, Some(Teardown::Absent));
    assert_parked(node, eni);

    let e = eni.check(node).unwrap_err();
    assert!(e.msg.contains("pod interface eth0 is missing"), "{}", e.msg);
    assert!(
        e.msg
            .contains(&format!("is on the node as {}", eni.parked())),
        "{}",
        e.msg
    );
}

#[test]
fn without_host_peer_the_pod_only_has_the_eni() {
    require_root_and_tools();
    let lab = lab("02:00:0a:f0:00:0b", "10.240.0.11", false);
    let (node, pod, eni) = (&lab.node, &lab.pod, &lab.eni);
    let info = eni.setup(node).expect("setup");
    assert_eq!(info.host_peer, None);
    assert!(link_line(pod, "veth1").is_none());
    assert!(pod.ping(GW), "pod -> gateway");
    eni.check(node).expect("check");
    let got = eni.teardown(node).expect("teardown");
    assert_eq!(got.eni, EniReturn::FromPod(eni.parked()));
    assert_eq!(got.host_veth, None);
    assert_parked(node, eni);

    // A parked ENI serves the next pod.
    let pod2 = TestNs::new("pod2");
    let eni2 = Eni {
        pod: pod2.path(),
        ..eni.clone()
    };
    eni2.setup(node).expect("setup from the parked state");
    assert!(pod2.ping(GW), "pod2 -> gateway");
    eni2.check(node).expect("check pod2");
    eni2.teardown(node).expect("teardown pod2");
    assert_parked(node, eni);
}

#[test]
fn setup_again_starts_over() {
    require_root_and_tools();
    let lab = lab("02:00:0a:f0:00:0c", "10.240.0.12", true);
    let (node, pod, eni) = (&lab.node, &lab.pod, &lab.eni);
    eni.setup(node).expect("setup");
    // A retried ADD (the runtime lost the answer): the ENI in the pod and the host veth are
    // this attachment's leftovers and are rebuilt.
    eni.setup(node).expect("setup again");
    eni.check(node).expect("check");
    assert!(pod.ping(GW), "pod -> gateway");
    assert!(pod.ping(NODE_IP), "pod -> node");
    eni.teardown(node).expect("teardown");
    assert_parked(node, eni);
}

#[test]
fn teardown_after_the_pod_netns_is_gone_finds_the_eni_by_mac() {
    require_root_and_tools();
    let Lab {
        node,
        vpc: _vpc,
        pod,
        eni,
    } = lab("02:00:0a:f0:00:0d", "10.240.0.13", true);
    eni.setup(&node).expect("setup");
    // Deleting a namespace destroys a veth end inside it, where a real NIC returns to the
    // node under a name the kernel picks. Do what the kernel does, then delete the namespace.
    pod.ip(&format!("link set eth0 netns {} name dev12", node.name));
    drop(pod);
    assert!(link_line(&node, "dev12").is_some(), "{}", node.ip("link"));
    // The kernel destroys a namespace asynchronously; the veth pair dies with it.
    let deadline = Instant::now() + Duration::from_secs(10);
    while link_line(&node, eni.host_ifname()).is_some() {
        assert!(
            Instant::now() < deadline,
            "host veth outlived the pod netns"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    let got = eni.teardown_without_netns(&node).expect("teardown");
    assert_eq!(
        got.eni,
        EniReturn::Parked {
            from: "dev12".into(),
            to: eni.parked()
        }
    );
    assert_eq!(got.host_veth, Some(Teardown::Absent));
    assert_parked(&node, &eni);
    assert!(link_line(&node, "dev12").is_none());

    let again = eni.teardown_without_netns(&node).expect("second teardown");
    assert_eq!(again.eni, EniReturn::AlreadyParked(eni.parked()));
    assert_parked(&node, &eni);

    // A returned NIC that some tool brought up again (IPv6 link-local only) is parked too.
    node.ip(&format!("link set {} name dev13 up", eni.parked()));
    let got = eni
        .teardown_without_netns(&node)
        .expect("teardown of an up NIC");
    assert!(matches!(got.eni, EniReturn::Parked { .. }), "{got:?}");
    assert_parked(&node, &eni);
}

#[test]
fn the_nodes_own_namespace_is_refused() {
    require_root_and_tools();
    let mut lab = lab("02:00:0a:f0:00:0e", "10.240.0.14", true);
    lab.eni.pod = lab.node.path();
    let before = link_line(&lab.node, "eth1").expect("ENI on the node");
    let e = lab.eni.setup(&lab.node).unwrap_err();
    assert_eq!(e.kind, Kind::InvalidEnv);
    assert!(e.msg.contains("node's own network namespace"), "{}", e.msg);
    let e = lab.eni.check(&lab.node).unwrap_err();
    assert_eq!(e.kind, Kind::InvalidEnv);
    let e = lab.eni.teardown(&lab.node).unwrap_err();
    assert_eq!(e.kind, Kind::InvalidEnv);
    assert_eq!(
        link_line(&lab.node, "eth1"),
        Some(before),
        "ENI was touched"
    );
    assert_no_host_veth(&lab.node, &lab.eni);
}

#[test]
fn failed_setups_leave_the_eni_on_the_node_and_no_host_veth() {
    require_root_and_tools();
    let lab = lab("02:00:0a:f0:00:0f", "10.240.0.15", true);
    let (node, pod, eni) = (&lab.node, &lab.pod, &lab.eni);

    // Refused before anything is touched: the ENI stays as it was.
    let bad_mtu = Eni {
        mtu: 70000,
        ..eni.clone()
    };
    let e = bad_mtu.setup(node).unwrap_err();
    assert_eq!(e.kind, Kind::InvalidConfig);
    assert!(e.msg.contains("MTU 70000"), "{}", e.msg);
    assert!(link_line(node, "eth1").is_some(), "ENI was touched");
    assert_no_host_veth(node, eni);

    // Fails after the move: the pod already has a default route, which is never replaced.
    pod.ip("link add x0 type veth peer name x1");
    pod.ip("addr add 192.168.7.1/24 dev x0");
    pod.ip("link set x0 up");
    pod.ip("route add default via 192.168.7.2 dev x0");
    let e = eni.setup(node).unwrap_err();
    assert_eq!(e.kind, Kind::Datapath);
    assert!(e.msg.contains("refusing to replace it"), "{}", e.msg);
    assert_parked(node, eni);
    assert_no_host_veth(node, eni);
    assert!(link_line(pod, "eth0").is_none(), "ENI left in the pod");
    assert!(
        pod.ip("route show")
            .contains("default via 192.168.7.2 dev x0")
    );
    pod.ip("link del x0");

    // Fails late, after the host veth exists: the node already routes the pod address.
    node.ip("link set eth0 up");
    node.ip("route add 10.240.0.15/32 dev eth0");
    let e = eni.setup(node).unwrap_err();
    assert_eq!(e.kind, Kind::Datapath);
    assert!(e.msg.contains("10.240.0.15/32"), "{}", e.msg);
    assert_parked(node, eni);
    assert_no_host_veth(node, eni);
    assert!(link_line(pod, "eth0").is_none() && link_line(pod, "veth1").is_none());
    assert!(node.ip("route show").contains("10.240.0.15 dev eth0"));

    // With the clash gone, the parked ENI serves the pod.
    node.ip("route del 10.240.0.15/32 dev eth0");
    eni.setup(node).expect("setup");
    eni.check(node).expect("check");
    assert!(pod.ping(GW), "pod -> gateway");
    eni.teardown(node).expect("teardown");
    assert_parked(node, eni);
}

#[test]
fn only_the_eni_is_ever_touched() {
    require_root_and_tools();
    let lab = lab("02:00:0a:f0:00:10", "10.240.0.16", true);
    let (node, eni) = (&lab.node, &lab.eni);
    let mac = format_mac(&eni.mac);

    // A bridge sharing the ENI's MAC is not the ENI.
    node.ip("link add br7 type bridge");
    node.ip(&format!("link set br7 address {mac}"));
    // The node uses the ENI (it carries an address): neither setup nor teardown takes it.
    node.ip("addr add 10.240.0.50/24 dev eth1");
    let e = eni.setup(node).unwrap_err();
    assert!(e.msg.contains("the node uses it"), "{}", e.msg);
    let got = eni.teardown_without_netns(node).expect("teardown");
    assert!(
        matches!(&got.eni, EniReturn::NotOurs(why) if why.contains("10.240.0.50/24")),
        "{got:?}"
    );
    assert!(node.ip("-o addr show dev eth1").contains("10.240.0.50/24"));
    let br = link_line(node, "br7").expect("bridge");
    assert!(br.contains(&mac), "{br}");

    // Without a device of that MAC (the ENI was detached), teardown has nothing to do and
    // leaves the bridge alone.
    node.ip("link del eth1");
    let got = eni.teardown_without_netns(node).expect("teardown");
    assert_eq!(got.eni, EniReturn::Absent);
    assert!(link_line(node, "br7").is_some());

    // A link under the attachment's host veth name that carries another alias stays.
    let host = eni.host_ifname().to_string();
    node.ip(&format!("link add {host} type veth peer name otherp"));
    node.ip(&format!("link set {host} alias terway:someone-else"));
    let got = eni.teardown_without_netns(node).expect("teardown");
    assert!(
        matches!(&got.host_veth, Some(Teardown::NotOurs(why)) if why.contains("another attachment")),
        "{got:?}"
    );
    assert!(link_line(node, &host).is_some());
}
