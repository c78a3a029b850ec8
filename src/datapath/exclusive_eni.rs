//! Exclusive ENI datapath (`daemon_mode: ENIOnly`, REFERENCE §5): the ENI's own device becomes
//! the pod's `eth0`, carrying the ENI's primary IP with the vSwitch prefix and a default route
//! via the vSwitch gateway, so pod traffic goes straight to the VPC. Optionally a veth to the
//! host (`veth1` in the pod) carries what must go through the node's stack: the service CIDR
//! and the node's own addresses, `via 169.254.1.1 dev veth1 onlink`, as upstream Terway does.
//!
//! - **setup** finds the device on the node by MAC, sets it down and moves it into the pod
//!   renamed to the pod ifname in one RTM_SETLINK (no clash with a node link of that name).
//! - **teardown** moves it back under a stable *parked* name derived from the MAC
//!   ([`parked_name`]), down and without addresses. When the pod's namespace is already gone a
//!   real NIC has returned to the node on its own, under whatever name the kernel gave it: it
//!   is found there by MAC and parked.
//!
//! A device counts as the ENI only if it has the ENI's MAC and is a NIC (no kind) or a veth
//! (an emulated ENI); kinds that merely share a MAC (bridge, vlan, ipvlan, bond, ...) are never
//! touched. Host-side work happens in the calling thread's namespace (the node's).
//!
//! Dual stack: the ENI's IPv6 address and default route come along ([`EniIpv6`]).

use super::{POD_GATEWAY, veth};
use crate::err;
use crate::error::{Error, Kind, Result};
use crate::netlink::{DEFAULT_DST_V4, Link, Netlink, Route, TABLE_MAIN, format_mac};
use crate::netns::NetNs;
use crate::sysctl;
use ipnetwork::{IpNetwork, Ipv4Network};
use std::net::{IpAddr, Ipv4Addr};

#[path = "exclusive_eni_v6.rs"]
mod v6;
pub use v6::EniIpv6;

/// The pod end of the host peer veth.
pub const POD_PEER_IFNAME: &str = "veth1";

/// Every parked ENI's name starts with this, followed by the 12 hex digits of its MAC.
pub const PARKED_PREFIX: &str = "eni";

/// The name an ENI carries on the node while no pod holds it: `eni` + the 12 hex digits of its
/// MAC (15 bytes, the kernel's limit). Stable, so a retried DEL finds it parked and is a no-op.
pub fn parked_name(mac: &[u8; 6]) -> String {
    format!("{PARKED_PREFIX}{}", hex::encode(mac))
}

/// What to build.
#[derive(Debug)]
pub struct ExclusiveEniSpec<'a> {
    /// The pod's network namespace.
    pub netns: &'a NetNs,
    /// Interface name inside the pod (`CNI_IFNAME`, usually `eth0`).
    pub ifname: &'a str,
    /// The ENI's MAC: how its device is found, on the node and in the pod.
    pub mac: [u8; 6],
    /// The ENI's primary IP with the vSwitch prefix length, e.g. `10.240.0.10/24`.
    pub ip: Ipv4Network,
    /// The vSwitch gateway (inside `ip`'s network).
    pub gateway: Ipv4Addr,
    /// The ENI's IPv6 address and gateway (dual stack); `None` for an IPv4-only pod.
    pub ipv6: Option<EniIpv6>,
    pub mtu: u32,
    /// The veth to the host for service and node traffic; `None` leaves the pod VPC-only.
    pub host_peer: Option<HostPeer<'a>>,
}

/// The pod's veth to the host.
#[derive(Debug, Clone)]
pub struct HostPeer<'a> {
    /// Host-side veth name, see [`super::host_veth_name`].
    pub host_ifname: &'a str,
    /// Alias put on the host veth, see [`super::host_veth_alias`]: what proves the link is this
    /// attachment's when DEL, CHECK or a retried ADD find it.
    pub alias: &'a str,
    /// Routed through the host (`via 169.254.1.1 dev veth1 onlink`) when set.
    pub service_cidr: Option<Ipv4Network>,
    /// The node's own addresses, each routed through the host as a /32.
    pub node_ips: Vec<Ipv4Addr>,
}

/// What was built, for the CNI result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExclusiveEniInfo {
    /// The pod interface's MAC (the ENI's).
    pub pod_mac: [u8; 6],
    pub mtu: u32,
    pub host_peer: Option<HostPeerInfo>,
}

/// The host peer veth as built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPeerInfo {
    pub host_ifname: String,
    pub host_mac: [u8; 6],
    /// Always [`POD_PEER_IFNAME`].
    pub pod_ifname: String,
    pub pod_mac: [u8; 6],
}

/// What [`teardown`] needs: no addresses, only identities.
#[derive(Debug, Clone, Copy)]
pub struct EniTeardownSpec<'a> {
    /// The pod's namespace, or `None` when it is gone (`CNI_NETNS` empty or deleted).
    pub netns: Option<&'a NetNs>,
    pub mac: [u8; 6],
    /// The host veth to remove (deleted only if it carries this alias or none).
    pub host_veth: Option<HostVethRef<'a>>,
}

/// A host veth by name and the alias that proves it is the attachment's.
#[derive(Debug, Clone, Copy)]
pub struct HostVethRef<'a> {
    pub host_ifname: &'a str,
    pub alias: &'a str,
}

/// What [`teardown`] did with the ENI's device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EniReturn {
    /// It was in the pod's namespace and is parked on the node now, under this name.
    FromPod(String),
    /// It was on the node but not parked (its namespace died and the kernel returned it, or an
    /// ADD stopped halfway): now parked.
    Parked { from: String, to: String },
    /// Already parked, down and bare: nothing done.
    AlreadyParked(String),
    /// No device with the ENI's MAC in the pod nor on the node (detached, or never attached).
    Absent,
    /// A device with the ENI's MAC that the node itself uses: left alone, and why.
    NotOurs(String),
}

/// The outcome of [`teardown`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EniTeardown {
    pub eni: EniReturn,
    /// `None` when no host veth was asked about.
    pub host_veth: Option<veth::Teardown>,
}

impl ExclusiveEniSpec<'_> {
    fn describe(&self) -> String {
        format!(
            "exclusive ENI {} ({}) as {} in netns {}",
            format_mac(&self.mac),
            self.ip,
            self.ifname,
            self.netns.path().display()
        )
    }

    /// The spec [`teardown`] needs to undo this one.
    pub fn teardown_spec(&self) -> EniTeardownSpec<'_> {
        EniTeardownSpec {
            netns: Some(self.netns),
            mac: self.mac,
            host_veth: self.host_peer.as_ref().map(|p| HostVethRef {
                host_ifname: p.host_ifname,
                alias: p.alias,
            }),
        }
    }

    fn pod_default_route(&self, eni_index: u32) -> Route {
        Route {
            dst: DEFAULT_DST_V4,
            gateway: Some(IpAddr::V4(self.gateway)),
            oif: Some(eni_index),
            table: TABLE_MAIN,
            scope_link: false,
            onlink: false,
        }
    }

    fn host_route(&self, host_index: u32) -> Route {
        Route {
            dst: IpNetwork::V4(Ipv4Network::from(self.ip.ip())),
            gateway: None,
            oif: Some(host_index),
            table: TABLE_MAIN,
            scope_link: true,
            onlink: false,
        }
    }
}

impl HostPeer<'_> {
    /// The pod's routes through the host: the service CIDR and each node address, deduplicated,
    /// as the kernel reports them (network address of the destination).
    fn pod_routes(&self, peer_index: u32) -> Vec<Route> {
        let mut dsts: Vec<Ipv4Network> = Vec::new();
        let service = self
            .service_cidr
            .and_then(|c| Ipv4Network::new(c.network(), c.prefix()).ok());
        for dst in service
            .into_iter()
            .chain(self.node_ips.iter().map(|ip| Ipv4Network::from(*ip)))
        {
            if !dsts.contains(&dst) {
                dsts.push(dst);
            }
        }
        dsts.into_iter()
            .map(|dst| Route {
                dst: IpNetwork::V4(dst),
                gateway: Some(IpAddr::V4(POD_GATEWAY)),
                oif: Some(peer_index),
                table: TABLE_MAIN,
                scope_link: false,
                onlink: true,
            })
            .collect()
    }
}

pub(super) fn unusable(ip: Ipv4Addr) -> bool {
    ip.is_unspecified()
        || ip.is_multicast()
        || ip.is_broadcast()
        || ip.is_loopback()
        || ip.is_link_local()
}

/// What is wrong with an ENI's device and its pod address (exclusive ENI and ipvlan pods both
/// sit on the vSwitch): the MAC, the MTU, the address, its vSwitch prefix and the gateway.
/// (The pods' gateway 169.254.1.1 is link-local, so never a usable address.)
pub(super) fn on_eni_problem(
    mac: [u8; 6],
    mtu: u32,
    net: Ipv4Network,
    gw: Ipv4Addr,
) -> Option<String> {
    let ip = net.ip();
    if mac == [0; 6] || mac[0] & 1 == 1 {
        return Some(format!(
            "{} is not a unicast MAC address and cannot be an ENI's",
            format_mac(&mac)
        ));
    }
    if !(68..=65535).contains(&mtu) {
        return Some(format!("MTU {mtu} is out of range (68-65535)"));
    }
    if unusable(ip) {
        return Some(format!("{ip} is not a usable pod address"));
    }
    if net.prefix() == 0 || net.prefix() > 31 {
        return Some(format!(
            "{net}: the pod address needs its vSwitch prefix length (1-31), e.g. {ip}/24"
        ));
    }
    if net.prefix() <= 30 && (ip == net.network() || ip == net.broadcast()) {
        return Some(format!("{ip} is the network or broadcast address of {net}"));
    }
    if unusable(gw) || gw == ip || !net.contains(gw) {
        return Some(format!(
            "gateway {gw} must be another address inside the vSwitch {}/{}",
            net.network(),
            net.prefix()
        ));
    }
    None
}

fn validate(spec: &ExclusiveEniSpec) -> Result<()> {
    let bad = |msg: String| Err(Error::new(Kind::InvalidConfig, msg));
    if let Some(problem) = on_eni_problem(spec.mac, spec.mtu, spec.ip, spec.gateway) {
        return bad(problem);
    }
    let ip = spec.ip.ip();
    if let Some(v6) = &spec.ipv6 {
        v6.validate()?;
        if spec.mtu < 1280 {
            return bad(format!(
                "MTU {} is below IPv6's minimum of 1280: a dual-stack pod needs at least that",
                spec.mtu
            ));
        }
    }
    if let Some(peer) = &spec.host_peer {
        if spec.ifname == POD_PEER_IFNAME {
            return bad(format!(
                "pod interface {} clashes with the host peer veth's pod end",
                spec.ifname
            ));
        }
        if let Some(cidr) = peer.service_cidr
            && (cidr.prefix() == 0 || cidr.contains(ip))
        {
            return bad(format!(
                "service CIDR {cidr} must be a proper range that does not hold the pod address {ip}"
            ));
        }
        if let Some(n) = peer.node_ips.iter().find(|n| unusable(**n) || **n == ip) {
            return bad(format!("{n} cannot be a node address of pod {ip}"));
        }
    }
    Ok(())
}

fn is_eni_kind(link: &Link) -> bool {
    matches!(link.kind.as_deref(), None | Some("veth"))
}

/// The ENI's device in `nl`'s namespace: the one NIC (no kind) or veth with `mac`. Two such
/// devices are an error: terway does not guess which one is the ENI.
fn find_eni(nl: &mut Netlink, mac: &[u8; 6]) -> Result<Option<Link>> {
    let mut found: Vec<Link> = nl
        .links()?
        .into_iter()
        .filter(|l| l.mac.as_ref() == Some(mac) && is_eni_kind(l))
        .collect();
    match found.len() {
        0 => Ok(None),
        1 => Ok(found.pop()),
        _ => {
            let names: Vec<&str> = found.iter().map(|l| l.name.as_str()).collect();
            Err(err!(
                Kind::Datapath,
                "{} devices have MAC {} ({}): cannot tell which is the ENI",
                found.len(),
                format_mac(mac),
                names.join(", ")
            ))
        }
    }
}

/// The addresses that show the node uses a device (IPv6 link-local ones do not count).
fn addrs_in_use(nl: &mut Netlink, index: u32) -> Result<Vec<IpNetwork>> {
    Ok(nl
        .addrs(Some(index))?
        .into_iter()
        .map(|a| a.addr)
        .filter(|a| match a {
            IpNetwork::V4(_) => true,
            IpNetwork::V6(n) => n.ip().segments()[0] & 0xffc0 != 0xfe80,
        })
        .collect())
}

fn show_addrs(addrs: &[IpNetwork]) -> String {
    addrs
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Parks the ENI's device `link` on the node: down, no addresses, named `parked`. Whether
/// anything had to change.
fn park_on_node(host: &mut Netlink, link: &Link, parked: &str) -> Result<bool> {
    let mut changed = false;
    if link.up {
        host.set_link_down(link.index)?;
        changed = true;
    }
    // After the link went down: the kernel drops IPv6 addresses then.
    for a in host.addrs(Some(link.index))? {
        host.del_addr(link.index, a.addr)?;
        changed = true;
    }
    if link.name != parked {
        host.set_link_name(link.index, parked)?;
        changed = true;
    }
    Ok(changed)
}

/// Moves the ENI's device `link` from the pod back to the node under its parked name (one
/// message) and makes sure it is down and bare there.
fn return_from_pod(
    pod: &mut Netlink,
    host: &mut Netlink,
    node_ns: &NetNs,
    link: &Link,
    mac: &[u8; 6],
) -> Result<String> {
    let parked = parked_name(mac);
    pod.set_link_down(link.index)?;
    pod.move_link_to_ns_as(link.index, node_ns, &parked)?;
    let back = host
        .link_by_name(&parked)?
        .filter(|l| l.mac.as_ref() == Some(mac))
        .ok_or_else(|| {
            err!(
                Kind::Datapath,
                "ENI {} was moved to the node as {parked} but is not there",
                format_mac(mac)
            )
        })?;
    park_on_node(host, &back, &parked)?;
    Ok(parked)
}

/// `what`: the operation refused, e.g. "wire it".
pub(super) fn refuse_node_namespace(ns: &NetNs, what: &str) -> Result<()> {
    if ns.is_node_namespace()? {
        return Err(err!(
            Kind::InvalidEnv,
            "netns {} is the node's own network namespace, not a pod's: refusing to {what}",
            ns.path().display()
        ));
    }
    Ok(())
}

/// Builds the datapath. On failure exactly what this call did is undone: the ENI goes back to
/// the node, parked, and the host veth it created is deleted.
pub fn setup(spec: &ExclusiveEniSpec) -> Result<ExclusiveEniInfo> {
    setup_inner(spec).map_err(|e| e.context(format!("set up {}", spec.describe())))
}

/// What a setup call changed so far, for its rollback.
#[derive(Default)]
struct Done {
    /// The ENI's device was set down, moved or configured.
    eni: bool,
    /// The host veth was created (exclusively) by this call.
    veth: bool,
}

fn setup_inner(spec: &ExclusiveEniSpec) -> Result<ExclusiveEniInfo> {
    validate(spec)?;
    refuse_node_namespace(spec.netns, "wire it")?;
    let node_ns = NetNs::current()?;
    let mut host = Netlink::open()?;
    let mut pod = Netlink::open_in(spec.netns)?;
    let mut done = Done::default();
    match prepare_and_wire(&mut host, &mut pod, &node_ns, spec, &mut done) {
        Ok(info) => Ok(info),
        Err(e) => match rollback(&mut host, &mut pod, &node_ns, spec, &done) {
            Ok(()) => Err(e),
            Err(undo) => Err(Error::new(
                e.kind,
                format!("{}; rollback failed too: {}", e.msg, undo.msg),
            )),
        },
    }
}

fn prepare_and_wire(
    host: &mut Netlink,
    pod: &mut Netlink,
    node_ns: &NetNs,
    spec: &ExclusiveEniSpec,
    done: &mut Done,
) -> Result<ExclusiveEniInfo> {
    let mac = format_mac(&spec.mac);
    // Leftovers of an earlier ADD of this attachment (the plugin holds its lock; the daemon
    // gave this ENI to it): the ENI already in the pod goes back to the node first, the host
    // veth is deleted if it is provably this attachment's.
    if let Some(stale) = find_eni(pod, &spec.mac)? {
        log::info!(
            "ENI {mac} is already in netns {} as {}: parking it and starting over",
            spec.netns.path().display(),
            stale.name
        );
        done.eni = true;
        return_from_pod(pod, host, node_ns, &stale, &spec.mac)?;
    }
    if let Some(peer) = &spec.host_peer
        && let Some(link) = host.link_by_name(peer.host_ifname)?
    {
        if let Some(why) = veth::foreign(&link, peer.alias) {
            return Err(err!(Kind::Datapath, "{why}: refusing to touch it"));
        }
        log::info!("removing stale host veth {}", peer.host_ifname);
        host.delete_link(link.index)?;
    }
    let mut taken = vec![spec.ifname];
    if spec.host_peer.is_some() {
        taken.push(POD_PEER_IFNAME);
    }
    for name in taken {
        if pod.link_by_name(name)?.is_some() {
            return Err(err!(
                Kind::Datapath,
                "interface {name} already exists in netns {}",
                spec.netns.path().display()
            ));
        }
    }
    let eni = find_eni(host, &spec.mac)?.ok_or_else(|| {
        err!(
            Kind::Datapath,
            "no device with MAC {mac} on the node: the ENI is not attached (yet), or another pod holds it"
        )
    })?;
    let in_use = addrs_in_use(host, eni.index)?;
    if !in_use.is_empty() {
        return Err(err!(
            Kind::Datapath,
            "ENI device {} ({mac}) carries {} on the node: the node uses it, refusing to move it into a pod",
            eni.name,
            show_addrs(&in_use)
        ));
    }
    wire(host, pod, spec, &eni, done)
}

fn require(nl: &mut Netlink, name: &str, where_: &str) -> Result<Link> {
    nl.link_by_name(name)?
        .ok_or_else(|| err!(Kind::Datapath, "{where_} link {name} vanished during setup"))
}

fn wire(
    host: &mut Netlink,
    pod: &mut Netlink,
    spec: &ExclusiveEniSpec,
    eni: &Link,
    done: &mut Done,
) -> Result<ExclusiveEniInfo> {
    done.eni = true;
    host.set_link_down(eni.index)?;
    host.move_link_to_ns_as(eni.index, spec.netns, spec.ifname)?;
    // The ifindex may change in the new namespace: look the device up again, by its new name.
    let pod_eni = pod
        .link_by_name(spec.ifname)?
        .filter(|l| l.mac == Some(spec.mac))
        .ok_or_else(|| {
            err!(
                Kind::Datapath,
                "the ENI was moved into the pod as {} but is not there",
                spec.ifname
            )
        })?;
    if pod_eni.mtu != spec.mtu {
        pod.set_link_mtu(pod_eni.index, spec.mtu)?;
    }
    // Links go up before routes: a route needs its device up.
    if let Some(lo) = pod.link_by_name("lo")? {
        pod.set_link_up(lo.index)?;
    }
    pod.add_addr(pod_eni.index, IpNetwork::V4(spec.ip))?;
    if let Some(v6) = &spec.ipv6 {
        v6.add_addr(pod, spec.netns, spec.ifname, pod_eni.index)?;
    }
    pod.set_link_up(pod_eni.index)?;
    // Exclusive: a default route somebody else put into the pod is never replaced.
    pod.add_route(&spec.pod_default_route(pod_eni.index))?;
    if let Some(v6) = &spec.ipv6 {
        pod.add_route(&v6.default_route(pod_eni.index))?;
    }

    let host_peer = match &spec.host_peer {
        None => None,
        Some(peer) => Some(wire_host_peer(host, pod, spec, peer, done)?),
    };
    Ok(ExclusiveEniInfo {
        pod_mac: spec.mac,
        mtu: spec.mtu,
        host_peer,
    })
}

fn wire_host_peer(
    host: &mut Netlink,
    pod: &mut Netlink,
    spec: &ExclusiveEniSpec,
    peer: &HostPeer,
    done: &mut Done,
) -> Result<HostPeerInfo> {
    host.create_veth(peer.host_ifname, POD_PEER_IFNAME, spec.netns, spec.mtu)?;
    done.veth = true;
    let host_link = require(host, peer.host_ifname, "host")?;
    let pod_link = require(pod, POD_PEER_IFNAME, "pod")?;
    let host_mac = host_link
        .mac
        .ok_or_else(|| err!(Kind::Datapath, "host veth {} has no MAC", host_link.name))?;
    let pod_mac = pod_link
        .mac
        .ok_or_else(|| err!(Kind::Datapath, "pod veth {} has no MAC", pod_link.name))?;
    host.set_link_alias(host_link.index, peer.alias)?;

    pod.set_link_up(pod_link.index)?;
    host.set_link_up(host_link.index)?;
    veth::set_if_differs(&sysctl::rp_filter_key(peer.host_ifname), "0")?;
    veth::set_if_differs("net/ipv4/ip_forward", "1")?;
    host.add_route(&spec.host_route(host_link.index))?;

    pod.replace_neigh_permanent(pod_link.index, IpAddr::V4(POD_GATEWAY), host_mac)?;
    for r in peer.pod_routes(pod_link.index) {
        pod.add_route(&r)?;
    }
    Ok(HostPeerInfo {
        host_ifname: peer.host_ifname.to_string(),
        host_mac,
        pod_ifname: POD_PEER_IFNAME.to_string(),
        pod_mac,
    })
}

fn rollback(
    host: &mut Netlink,
    pod: &mut Netlink,
    node_ns: &NetNs,
    spec: &ExclusiveEniSpec,
    done: &Done,
) -> Result<()> {
    let mut failed = Vec::new();
    if let (true, Some(peer)) = (done.veth, &spec.host_peer) {
        // Created exclusively by this call, so it is ours; the pod end goes with it.
        let r = match host.link_by_name(peer.host_ifname) {
            Ok(Some(link)) => host.delete_link(link.index),
            Ok(None) => Ok(()),
            Err(e) => Err(e),
        };
        if let Err(e) = r {
            failed.push(e.msg);
        }
    }
    if done.eni {
        let r = match find_eni(pod, &spec.mac) {
            Ok(Some(link)) => return_from_pod(pod, host, node_ns, &link, &spec.mac).map(|_| ()),
            Ok(None) => match find_eni(host, &spec.mac) {
                Ok(Some(link)) => park_on_node(host, &link, &parked_name(&spec.mac)).map(|_| ()),
                Ok(None) => Err(err!(
                    Kind::Datapath,
                    "ENI {} is neither in the pod nor on the node",
                    format_mac(&spec.mac)
                )),
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        };
        if let Err(e) = r {
            failed.push(e.msg);
        }
    }
    super::rolled_back(&spec.describe(), failed)
}

/// Verifies the whole datapath; the error lists every missing or wrong piece.
pub fn check(spec: &ExclusiveEniSpec) -> Result<()> {
    super::checked(&spec.describe(), |problems| check_inner(spec, problems))
}

pub(super) fn check_up_mtu(link: &Link, mtu: u32, what: &str, problems: &mut Vec<String>) {
    if !link.up {
        problems.push(format!("{what} {} is down", link.name));
    }
    if link.mtu != mtu {
        problems.push(format!(
            "{what} {} has MTU {}, want {mtu}",
            link.name, link.mtu
        ));
    }
}

/// Checks that `routes` hold `want` (found by destination); `shown` is how to name it.
pub(super) fn check_route(routes: &[Route], want: &Route, shown: &str, problems: &mut Vec<String>) {
    match routes.iter().find(|r| r.dst == want.dst) {
        None => problems.push(format!("{shown} is missing")),
        Some(r)
            if r.gateway != want.gateway
                || r.oif != want.oif
                || r.onlink != want.onlink
                || r.scope_link != want.scope_link =>
        {
            problems.push(format!("{shown} is {} instead", veth::show_route(r)));
        }
        Some(_) => {}
    }
}

fn check_inner(spec: &ExclusiveEniSpec, problems: &mut Vec<String>) -> Result<()> {
    validate(spec)?;
    refuse_node_namespace(spec.netns, "check it as a pod's")?;
    let mac = format_mac(&spec.mac);
    let mut host = Netlink::open()?;
    let mut pod = Netlink::open_in(spec.netns)?;
    match pod.link_by_name("lo")? {
        Some(lo) if !lo.up => problems.push("pod lo is down".into()),
        _ => {}
    }
    let pod_routes = pod.routes(TABLE_MAIN)?;
    match pod.link_by_name(spec.ifname)? {
        None => {
            problems.push(format!("pod interface {} is missing", spec.ifname));
            if let Some(l) = find_eni(&mut host, &spec.mac)? {
                problems.push(format!("ENI {mac} is on the node as {}", l.name));
            } else if let Some(l) = find_eni(&mut pod, &spec.mac)? {
                problems.push(format!("ENI {mac} is in the pod as {}", l.name));
            }
        }
        Some(eni) => {
            if eni.mac != Some(spec.mac) {
                problems.push(format!(
                    "pod {} has MAC {}, want the ENI's {mac}: it is not the ENI",
                    eni.name,
                    eni.mac.as_ref().map_or("none".into(), format_mac)
                ));
            }
            if !is_eni_kind(&eni) {
                problems.push(format!(
                    "pod {} is a {} link, not an ENI",
                    eni.name,
                    eni.kind.as_deref().unwrap_or("?")
                ));
            }
            check_up_mtu(&eni, spec.mtu, "pod interface", problems);
            let want = IpNetwork::V4(spec.ip);
            if !pod.addrs(Some(eni.index))?.iter().any(|a| a.addr == want) {
                problems.push(format!("pod address {want} on {} is missing", eni.name));
            }
            let shown = format!("pod default route via {} dev {}", spec.gateway, eni.name);
            check_route(
                &pod_routes,
                &spec.pod_default_route(eni.index),
                &shown,
                problems,
            );
            if let Some(v6) = &spec.ipv6 {
                v6.check(&mut pod, spec.netns, eni.index, &eni.name, problems)?;
            }
        }
    }
    if let Some(peer) = &spec.host_peer {
        check_host_peer(&mut host, &mut pod, &pod_routes, spec, peer, problems)?;
    }
    Ok(())
}

fn check_host_peer(
    host: &mut Netlink,
    pod: &mut Netlink,
    pod_routes: &[Route],
    spec: &ExclusiveEniSpec,
    peer: &HostPeer,
    problems: &mut Vec<String>,
) -> Result<()> {
    let host_link = host.link_by_name(peer.host_ifname)?;
    match &host_link {
        None => problems.push(format!("host veth {} is missing", peer.host_ifname)),
        Some(link) => {
            if let Some(why) = veth::foreign(link, peer.alias) {
                problems.push(why);
            }
            check_up_mtu(link, spec.mtu, "host veth", problems);
            let shown = format!("host route {}/32 dev {}", spec.ip.ip(), peer.host_ifname);
            check_route(
                &host.routes(TABLE_MAIN)?,
                &spec.host_route(link.index),
                &shown,
                problems,
            );
            let rp = sysctl::get(&sysctl::rp_filter_key(peer.host_ifname))?;
            if rp != "0" {
                problems.push(format!("rp_filter on {} is {rp}, want 0", peer.host_ifname));
            }
        }
    }
    if sysctl::get("net/ipv4/ip_forward")? != "1" {
        problems.push("net.ipv4.ip_forward is not 1 on the node".into());
    }
    let Some(pod_link) = pod.link_by_name(POD_PEER_IFNAME)? else {
        problems.push(format!("pod veth {POD_PEER_IFNAME} is missing"));
        return Ok(());
    };
    if pod_link.kind.as_deref() != Some("veth") {
        problems.push(format!("pod {POD_PEER_IFNAME} is not a veth"));
    }
    check_up_mtu(&pod_link, spec.mtu, "pod veth", problems);
    for want in peer.pod_routes(pod_link.index) {
        let shown = format!(
            "pod route {} via {POD_GATEWAY} dev {POD_PEER_IFNAME} onlink",
            want.dst
        );
        check_route(pod_routes, &want, &shown, problems);
    }
    veth::check_gateway_neigh(
        &pod.neighs(pod_link.index)?,
        IpAddr::V4(POD_GATEWAY),
        host_link.as_ref().and_then(|l| l.mac),
        POD_PEER_IFNAME,
        problems,
    );
    Ok(())
}

/// Returns the ENI to the node, parked, and deletes the host veth if it is provably the
/// attachment's. Works without the pod's namespace (the kernel returns a NIC to the node when
/// its namespace dies: it is found by MAC under whatever name it got). Idempotent; a device
/// the node uses (it carries an address there) is never touched.
pub fn teardown(spec: &EniTeardownSpec) -> Result<EniTeardown> {
    let ctx = |e: Error| e.context(format!("tear down exclusive ENI {}", format_mac(&spec.mac)));
    if let Some(ns) = spec.netns {
        refuse_node_namespace(ns, "take an ENI out of it").map_err(ctx)?;
    }
    let host_veth = spec
        .host_veth
        .map(|h| veth::teardown(h.host_ifname, h.alias))
        .transpose();
    let eni = teardown_eni(spec);
    match (host_veth, eni) {
        (Ok(host_veth), Ok(eni)) => Ok(EniTeardown { eni, host_veth }),
        (Err(e), Ok(_)) | (Ok(_), Err(e)) => Err(ctx(e)),
        (Err(a), Err(b)) => Err(ctx(Error::new(b.kind, format!("{}; {}", b.msg, a.msg)))),
    }
}

fn teardown_eni(spec: &EniTeardownSpec) -> Result<EniReturn> {
    let parked = parked_name(&spec.mac);
    let mut host = Netlink::open()?;
    if let Some(ns) = spec.netns {
        let mut pod = Netlink::open_in(ns)?;
        if let Some(link) = find_eni(&mut pod, &spec.mac)? {
            let node_ns = NetNs::current()?;
            let name = return_from_pod(&mut pod, &mut host, &node_ns, &link, &spec.mac)?;
            return Ok(EniReturn::FromPod(name));
        }
    }
    let Some(link) = find_eni(&mut host, &spec.mac)? else {
        return Ok(EniReturn::Absent);
    };
    let in_use = addrs_in_use(&mut host, link.index)?;
    if !in_use.is_empty() {
        return Ok(EniReturn::NotOurs(format!(
            "{} has MAC {} but carries {}: the node uses it",
            link.name,
            format_mac(&spec.mac),
            show_addrs(&in_use)
        )));
    }
    if park_on_node(&mut host, &link, &parked)? {
        Ok(EniReturn::Parked {
            from: link.name,
            to: parked,
        })
    } else {
        Ok(EniReturn::AlreadyParked(parked))
    }
}

#[cfg(test)]
#[path = "exclusive_eni_tests.rs"]
mod tests;
