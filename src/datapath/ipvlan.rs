//! ipvlan L2 datapath (shared ENI mode with `eniip_virtual_type: ipvlan`, REFERENCE §5): the
//! pod's interface is an ipvlan L2 slave of the ENI that owns its address, so pod traffic goes
//! straight into the VPC without a hop through the node's stack.
//!
//! - pod: `eth0` = ipvlan l2 on the ENI (it shares the ENI's MAC) with `podIP/<vSwitch prefix>`
//!   and `default via <vSwitch gateway>`; the service CIDR and each node address
//!   `via 169.254.1.1 dev eth0 onlink`, and the permanent neighbour
//!   `169.254.1.1 lladdr <the ENI's MAC>`.
//! - node, per ENI: the ENI up without an address, `rp_filter` 0, and one slave
//!   `ipvl_<ENI ifindex>` (ipvlan l2, up, no address) for node↔pod traffic.
//! - node, per pod: `podIP/32 dev ipvl_<i> scope link` and the permanent neighbour
//!   `podIP lladdr <the ENI's MAC> dev ipvl_<i>`.
//!
//! How node-bound traffic gets to the node: a frame an ipvlan L2 slave sends to its own MAC
//! never leaves the node. ipvlan hands it to the slave that owns the destination IP or, when no
//! slave does, to the node's stack as if it had arrived on the ENI. The pod's permanent
//! neighbour `169.254.1.1 → own MAC` makes every packet routed via 169.254.1.1 (the service
//! CIDR, the node's addresses) such a frame: it enters the node's stack on the ENI and passes
//! PREROUTING, where kube-proxy's rules apply. The node's packets to a pod leave through
//! `ipvl_<i>` addressed to the same MAC (the node's permanent neighbour), and ipvlan delivers
//! them to the pod that owns the address. No ARP is needed between node and pods (and none
//! would work: a pod's ARP answer to the node would reach the node on the ENI, not on the
//! slave that asked), and nothing needs tc.
//!
//! Why a route in the pod rather than a tc redirect on the ENI: routes and neighbours are all
//! it takes (no cls/act modules on the node, no per-ENI filter list to keep in step with the
//! service CIDR), they are per pod, so CHECK verifies them and they go with the pod, and a
//! reload's new service CIDR reaches new pods without touching running ones. A redirect of
//! the ENI's egress would also have to rewrite the destination MAC (the pod addressed the VPC
//! gateway), or the node's stack drops the frame as not its own.
//!
//! ipvlan pods get no policy rules: the node forwards only what a pod sent to it (service
//! traffic after kube-proxy's DNAT), and that leaves by the main table, where masquerading to
//! the node's address works. Without masquerading a service backend elsewhere answers the pod
//! directly: ipvlan delivers the answer to the pod before the node's conntrack could undo the
//! DNAT (upstream Terway pairs ipvlan with Cilium for this); kube-proxy needs
//! `--masquerade-all` for services backed by pods.
//!
//! Dual stack: the IPv6 half rides the same slaves (see `ipvlan_v6.rs`).
//!
//! Host-side work happens in the calling thread's namespace (the node's).

use super::exclusive_eni::{
    EniIpv6, check_route, check_up_mtu, on_eni_problem, refuse_node_namespace, unusable,
};
use super::{POD_GATEWAY, veth};
use crate::err;
use crate::error::{Error, Kind, Result};
use crate::netlink::{
    self, DEFAULT_DST_V4, Family, IpvlanMode, Link, LinkKind, LinkSpec, Netlink, Route, TABLE_MAIN,
    format_mac,
};
use crate::netns::NetNs;
use crate::sysctl;
use ipnetwork::{IpNetwork, Ipv4Network};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

#[path = "ipvlan_v6.rs"]
mod v6;
pub use v6::host_route6;

/// Every host slave's name starts with this (`ipvl_<ENI ifindex>`, as upstream Terway).
pub const HOST_SLAVE_PREFIX: &str = "ipvl_";

/// The node's slave of the ENI with interface index `eni_index`: at most 15 bytes.
pub fn host_slave_name(eni_index: u32) -> String {
    format!("{HOST_SLAVE_PREFIX}{eni_index}")
}

/// Whether `link` is a host slave terway made (by name and kind).
pub fn is_host_slave(link: &Link) -> bool {
    link.name.starts_with(HOST_SLAVE_PREFIX) && link.kind.as_deref() == Some("ipvlan")
}

/// What to build.
#[derive(Debug)]
pub struct IpvlanSpec<'a> {
    /// The pod's network namespace.
    pub netns: &'a NetNs,
    /// Interface name inside the pod (`CNI_IFNAME`, usually `eth0`).
    pub ifname: &'a str,
    /// Alias put on the pod's interface (see [`super::host_veth_alias`]): what proves the link
    /// is this attachment's when DEL, CHECK or a retried ADD find it.
    pub alias: &'a str,
    /// The ENI's MAC: how its device (the parent) is found; the slaves share it.
    pub mac: [u8; 6],
    /// The pod address with the vSwitch prefix length, e.g. `10.240.0.10/24`.
    pub ip: Ipv4Network,
    /// The vSwitch gateway (inside `ip`'s network).
    pub gateway: Ipv4Addr,
    /// The pod's IPv6 address with the vSwitch's IPv6 prefix and gateway (dual stack); `None`
    /// for an IPv4-only pod.
    pub ipv6: Option<EniIpv6>,
    pub mtu: u32,
    /// Routed to the node's stack (kube-proxy) when set.
    pub service_cidr: Option<Ipv4Network>,
    /// The node's own addresses, each routed to the node's stack as a /32.
    pub node_ips: Vec<Ipv4Addr>,
}

/// What was built, for the CNI result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpvlanInfo {
    /// The pod interface's MAC (the ENI's).
    pub pod_mac: [u8; 6],
    pub mtu: u32,
    /// The node's slave the pod is reached through.
    pub host_slave: String,
}

impl IpvlanSpec<'_> {
    fn describe(&self) -> String {
        format!(
            "ipvlan datapath for {} on ENI {} ({} in netns {})",
            self.ip,
            format_mac(&self.mac),
            self.ifname,
            self.netns.path().display()
        )
    }

    /// What the pod sends to the node's stack: the service CIDR and the node's addresses,
    /// deduplicated, as the kernel reports them (the network address of the range).
    pub fn to_node(&self) -> Vec<Ipv4Network> {
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
        dsts
    }

    fn pod_default_route(&self, index: u32) -> Route {
        Route {
            dst: DEFAULT_DST_V4,
            gateway: Some(IpAddr::V4(self.gateway)),
            oif: Some(index),
            table: TABLE_MAIN,
            scope_link: false,
            onlink: false,
        }
    }

    /// The pod's routes: the default via the vSwitch gateway, then what goes to the node.
    pub fn pod_routes(&self, index: u32) -> Vec<Route> {
        let mut routes = vec![self.pod_default_route(index)];
        routes.extend(self.to_node().into_iter().map(|dst| Route {
            dst: IpNetwork::V4(dst),
            gateway: Some(IpAddr::V4(POD_GATEWAY)),
            oif: Some(index),
            table: TABLE_MAIN,
            scope_link: false,
            onlink: true,
        }));
        routes
    }
}

/// The node's route to a pod: `podIP/32 dev <host slave> scope link`.
pub fn host_route(pod_ip: Ipv4Addr, slave_index: u32) -> Route {
    Route {
        dst: IpNetwork::V4(Ipv4Network::from(pod_ip)),
        gateway: None,
        oif: Some(slave_index),
        table: TABLE_MAIN,
        scope_link: true,
        onlink: false,
    }
}

fn validate(spec: &IpvlanSpec) -> Result<()> {
    let bad = |msg: String| Err(Error::new(Kind::InvalidConfig, msg));
    if let Some(problem) = on_eni_problem(spec.mac, spec.mtu, spec.ip, spec.gateway) {
        return bad(problem);
    }
    let (ip, gw) = (spec.ip.ip(), spec.gateway);
    if let Some(cidr) = spec.service_cidr
        && (cidr.prefix() == 0 || cidr.contains(ip) || cidr.contains(gw))
    {
        return bad(format!(
            "service CIDR {cidr} must be a proper range that holds neither the pod address {ip} \
             nor the gateway {gw}"
        ));
    }
    if let Some(n) = spec
        .node_ips
        .iter()
        .find(|n| unusable(**n) || **n == ip || **n == gw)
    {
        return bad(format!("{n} cannot be a node address of pod {ip}"));
    }
    if let Some(ipv6) = &spec.ipv6 {
        v6::validate(ipv6, spec.mtu)?;
    }
    Ok(())
}

/// Why a link found under the pod's interface name is not this attachment's, if it is not.
/// One without an alias is a half-built one of ours (the alias is set right after creation).
fn foreign(link: &Link, alias: &str) -> Option<String> {
    if link.kind.as_deref() != Some("ipvlan") {
        return Some(format!(
            "{} exists but is a {} link, not an ipvlan",
            link.name,
            link.kind.as_deref().unwrap_or("physical")
        ));
    }
    match link.alias.as_deref() {
        Some(a) if a != alias => Some(format!(
            "{} belongs to another attachment (alias {a:?}, want {alias:?})",
            link.name
        )),
        _ => None,
    }
}

/// The ENI's device on the node: the link with its MAC that is not itself a slave.
fn find_eni(nl: &mut Netlink, mac: &[u8; 6]) -> Result<Link> {
    netlink::find_link_by_mac(nl, mac)?.ok_or_else(|| {
        err!(
            Kind::Datapath,
            "no device with MAC {} on the node: the ENI is not attached (yet)",
            format_mac(mac)
        )
    })
}

/// The node's slave of `eni`, created (ipvlan l2, no address) when missing, and up. A link of
/// that name that is not an ipvlan of this ENI is never touched.
fn ensure_host_slave(nl: &mut Netlink, eni: &Link) -> Result<Link> {
    let name = host_slave_name(eni.index);
    let ours = |l: &Link| l.kind.as_deref() == Some("ipvlan") && l.mac == eni.mac;
    let slave = match nl.link_by_name(&name)? {
        Some(l) => l,
        None => {
            let made = nl.create_link(&LinkSpec {
                name: &name,
                mtu: None,
                mac: None,
                netns: None,
                kind: LinkKind::Ipvlan {
                    parent: eni.index,
                    mode: IpvlanMode::L2,
                },
            });
            // Another ADD may have made it a moment ago: then it is there now.
            match (made, nl.link_by_name(&name)?) {
                (_, Some(l)) => l,
                (Err(e), None) => return Err(e),
                (Ok(()), None) => {
                    return Err(err!(
                        Kind::Datapath,
                        "host slave {name} vanished after creation"
                    ));
                }
            }
        }
    };
    if !ours(&slave) {
        return Err(err!(
            Kind::Datapath,
            "{name} exists but is not an ipvlan of ENI {} ({}): refusing to use it",
            eni.name,
            eni.mac.as_ref().map_or("no MAC".into(), format_mac)
        ));
    }
    if !slave.up {
        nl.set_link_up(slave.index)?;
    }
    Ok(slave)
}

/// Readies an ENI's device on the node for ipvlan pods (idempotent): up without an address,
/// `rp_filter` 0 (pod packets to the node arrive on it from pod addresses the node routes via
/// the slave), forwarding on (kube-proxy's DNAT forwards them), and its host slave. Returns the
/// host slave.
pub fn prepare_eni(nl: &mut Netlink, eni: &Link) -> Result<Link> {
    let ctx = |e: Error| e.context(format!("prepare ENI {} for ipvlan pods", eni.name));
    if !eni.up {
        nl.set_link_up(eni.index).map_err(ctx)?;
    }
    veth::set_if_differs(&sysctl::rp_filter_key(&eni.name), "0").map_err(ctx)?;
    veth::set_if_differs("net/ipv4/ip_forward", "1").map_err(ctx)?;
    ensure_host_slave(nl, eni).map_err(ctx)
}

/// Builds the datapath. On failure everything this call created is removed again (the host
/// slave stays: it serves every ipvlan pod of the ENI).
pub fn setup(spec: &IpvlanSpec) -> Result<IpvlanInfo> {
    setup_inner(spec).map_err(|e| e.context(format!("set up {}", spec.describe())))
}

/// What a setup call changed so far, for its rollback.
#[derive(Default)]
struct Done {
    pod_link: bool,
    /// The host slave's index once the host route and neighbour may exist.
    host: Option<u32>,
}

fn setup_inner(spec: &IpvlanSpec) -> Result<IpvlanInfo> {
    validate(spec)?;
    refuse_node_namespace(spec.netns, "wire it")?;
    let mut host = Netlink::open()?;
    let eni = find_eni(&mut host, &spec.mac)?;
    if spec.mtu > eni.mtu {
        return Err(err!(
            Kind::InvalidConfig,
            "MTU {} is above the ENI's ({} on {}): an ipvlan cannot be larger than its parent",
            spec.mtu,
            eni.mtu,
            eni.name
        ));
    }
    let slave = prepare_eni(&mut host, &eni)?;
    let mut pod = Netlink::open_in(spec.netns)?;
    remove_stale_pod_link(&mut pod, spec)?;
    let mut done = Done::default();
    match wire(&mut host, &mut pod, spec, &eni, &slave, &mut done) {
        Ok(info) => Ok(info),
        Err(e) => match rollback(&mut host, &mut pod, spec, &done) {
            Ok(()) => Err(e),
            Err(undo) => Err(Error::new(
                e.kind,
                format!("{}; rollback failed too: {}", e.msg, undo.msg),
            )),
        },
    }
}

/// A pod interface of this attachment's name left by an earlier ADD of it (the plugin holds
/// the attachment's lock) goes; anything else of that name is an error.
fn remove_stale_pod_link(pod: &mut Netlink, spec: &IpvlanSpec) -> Result<()> {
    if let Some(link) = pod.link_by_name(spec.ifname)? {
        if let Some(why) = foreign(&link, spec.alias) {
            return Err(err!(
                Kind::Datapath,
                "interface {} already exists in netns {}: {why}",
                spec.ifname,
                spec.netns.path().display()
            ));
        }
        log::info!("removing stale pod interface {}", spec.ifname);
        pod.delete_link(link.index)?;
    }
    Ok(())
}

/// The pod link's name while it is created: `twi` + 12 hex digits of the attachment's alias
/// (unique per attachment, never a name on the node).
fn temp_name(alias: &str) -> String {
    let hex: String = alias
        .chars()
        .filter(char::is_ascii_hexdigit)
        .rev()
        .take(12)
        .collect();
    format!("twi{hex}")
}

fn wire(
    host: &mut Netlink,
    pod: &mut Netlink,
    spec: &IpvlanSpec,
    eni: &Link,
    slave: &Link,
    done: &mut Done,
) -> Result<IpvlanInfo> {
    // Made directly inside the pod (the parent index names the node's ENI), under a name the
    // node cannot have: the kernel checks the name against the creating namespace too (the
    // node's own `eth0` would clash), so the pod's name is given inside the pod.
    let temp = temp_name(spec.alias);
    host.create_link(&LinkSpec {
        name: &temp,
        mtu: Some(spec.mtu),
        mac: None,
        netns: Some(spec.netns),
        kind: LinkKind::Ipvlan {
            parent: eni.index,
            mode: IpvlanMode::L2,
        },
    })?;
    done.pod_link = true;
    let made = pod
        .link_by_name(&temp)?
        .ok_or_else(|| err!(Kind::Datapath, "pod link {temp} vanished during setup"))?;
    pod.set_link_name(made.index, spec.ifname)?;
    let link = pod.link_by_name(spec.ifname)?.ok_or_else(|| {
        err!(
            Kind::Datapath,
            "pod link {} vanished during setup",
            spec.ifname
        )
    })?;
    pod.set_link_alias(link.index, spec.alias)?;
    // Links go up before routes: a route needs its device up.
    if let Some(lo) = pod.link_by_name("lo")? {
        pod.set_link_up(lo.index)?;
    }
    pod.add_addr(link.index, IpNetwork::V4(spec.ip))?;
    if let Some(ipv6) = &spec.ipv6 {
        ipv6.add_addr(pod, spec.netns, spec.ifname, link.index)?;
    }
    pod.set_link_up(link.index)?;
    // Exclusive adds: a route somebody else put into the pod is never replaced.
    for r in spec.pod_routes(link.index) {
        pod.add_route(&r)?;
    }
    if let Some(ipv6) = &spec.ipv6 {
        pod.add_route(&ipv6.default_route(link.index))?;
    }
    pod.replace_neigh_permanent(link.index, IpAddr::V4(POD_GATEWAY), spec.mac)?;

    let ip = spec.ip.ip();
    remove_stale_host_route(host, ip.into())?;
    if let Some(ipv6) = &spec.ipv6 {
        remove_stale_host_route(host, ipv6.addr.ip().into())?;
    }
    done.host = Some(slave.index);
    host.replace_neigh_permanent(slave.index, IpAddr::V4(ip), spec.mac)?;
    host.add_route(&host_route(ip, slave.index))?;
    // Policy rules of an earlier veth owner of this address would send its node-routed
    // traffic out through an ENI table: this address is this attachment's now.
    super::policy::teardown_pod_rules(host, ip)?;
    if let Some(ipv6) = &spec.ipv6 {
        let ip6 = ipv6.addr.ip();
        v6::wire_host(host, ip6, spec.mac, slave)?;
        super::policy::teardown_pod_rules(host, ip6)?;
    }
    Ok(IpvlanInfo {
        pod_mac: link.mac.unwrap_or(spec.mac),
        mtu: spec.mtu,
        host_slave: slave.name.clone(),
    })
}

/// A node route to `ip` through a host slave is a leftover of an earlier pod of this address
/// (the daemon gave the address to this attachment): it goes. A route to it anywhere else is
/// not terway's ipvlan datapath and is never replaced.
fn remove_stale_host_route(host: &mut Netlink, ip: IpAddr) -> Result<()> {
    let dst = IpNetwork::from(ip);
    let routes = host.routes_of(Family::of_ip(&ip), TABLE_MAIN)?;
    let Some(r) = routes.into_iter().find(|r| r.dst == dst) else {
        return Ok(());
    };
    let via_slave = match r.oif {
        Some(oif) => host.link_by_index(oif)?.is_some_and(|l| is_host_slave(&l)),
        None => false,
    };
    if !via_slave {
        return Err(err!(
            Kind::Datapath,
            "the node already has a route {}: not terway's ipvlan route, refusing to replace it",
            veth::show_route(&r)
        ));
    }
    log::info!("removing stale host route to {ip}");
    host.del_route(&r)
}

fn rollback(host: &mut Netlink, pod: &mut Netlink, spec: &IpvlanSpec, done: &Done) -> Result<()> {
    let mut failed = Vec::new();
    if done.pod_link {
        // Created exclusively by this call (renamed, or still under its temporary name); its
        // routes and neighbour go with it.
        let found = pod.link_by_name(spec.ifname).and_then(|l| match l {
            Some(l) => Ok(Some(l)),
            None => pod.link_by_name(&temp_name(spec.alias)),
        });
        let r = match found {
            Ok(Some(link)) => pod.delete_link(link.index),
            Ok(None) => Ok(()),
            Err(e) => Err(e),
        };
        if let Err(e) = r {
            failed.push(e.msg);
        }
    }
    if let Some(slave) = done.host {
        let ip = spec.ip.ip();
        let mut undo = vec![
            host.del_route(&host_route(ip, slave)),
            host.del_neigh(slave, IpAddr::V4(ip)),
        ];
        if let Some(ipv6) = &spec.ipv6 {
            let ip6 = ipv6.addr.ip();
            undo.push(host.del_route(&host_route6(ip6, slave)));
            undo.push(host.del_neigh(slave, IpAddr::V6(ip6)));
        }
        for r in undo {
            if let Err(e) = r {
                failed.push(e.msg);
            }
        }
    }
    super::rolled_back(&spec.describe(), failed)
}

/// Verifies the whole datapath; the error lists every missing or wrong piece.
pub fn check(spec: &IpvlanSpec) -> Result<()> {
    super::checked(&spec.describe(), |problems| check_inner(spec, problems))
}

fn check_inner(spec: &IpvlanSpec, problems: &mut Vec<String>) -> Result<()> {
    validate(spec)?;
    refuse_node_namespace(spec.netns, "check it as a pod's")?;
    let mac = format_mac(&spec.mac);
    let mut host = Netlink::open()?;
    check_host(&mut host, spec, problems)?;
    let mut pod = Netlink::open_in(spec.netns)?;
    match pod.link_by_name("lo")? {
        Some(lo) if !lo.up => problems.push("pod lo is down".into()),
        _ => {}
    }
    let Some(link) = pod.link_by_name(spec.ifname)? else {
        problems.push(format!("pod interface {} is missing", spec.ifname));
        return Ok(());
    };
    if let Some(why) = foreign(&link, spec.alias) {
        problems.push(why);
    }
    if link.mac != Some(spec.mac) {
        problems.push(format!(
            "pod {} has MAC {}, want the ENI's {mac}: it is not a slave of that ENI",
            link.name,
            link.mac.as_ref().map_or("none".into(), format_mac)
        ));
    }
    check_up_mtu(&link, spec.mtu, "pod interface", problems);
    let want = IpNetwork::V4(spec.ip);
    if !pod.addrs(Some(link.index))?.iter().any(|a| a.addr == want) {
        problems.push(format!("pod address {want} on {} is missing", link.name));
    }
    let routes = pod.routes(TABLE_MAIN)?;
    for r in spec.pod_routes(link.index) {
        let shown = match r.gateway {
            Some(gw) if r.onlink => {
                format!("pod route {} via {gw} dev {} onlink", r.dst, link.name)
            }
            Some(gw) => format!("pod route {} via {gw} dev {}", r.dst, link.name),
            None => format!("pod route {} dev {}", r.dst, link.name),
        };
        check_route(&routes, &r, &shown, problems);
    }
    if let Some(ipv6) = &spec.ipv6 {
        ipv6.check(&mut pod, spec.netns, link.index, &link.name, problems)?;
    }
    let gw = IpAddr::V4(POD_GATEWAY);
    match pod.neighs(link.index)?.into_iter().find(|n| n.ip == gw) {
        None => problems.push(format!(
            "pod neighbour {POD_GATEWAY} on {} is missing",
            link.name
        )),
        Some(n) => {
            if !n.permanent {
                problems.push(format!("pod neighbour {POD_GATEWAY} is not permanent"));
            }
            if n.mac != Some(spec.mac) {
                problems.push(format!(
                    "pod neighbour {POD_GATEWAY} points to {}, want the ENI's MAC {mac}",
                    n.mac.as_ref().map_or("nothing".into(), format_mac)
                ));
            }
        }
    }
    Ok(())
}

fn check_host(host: &mut Netlink, spec: &IpvlanSpec, problems: &mut Vec<String>) -> Result<()> {
    let mac = format_mac(&spec.mac);
    let Some(eni) = netlink::find_link_by_mac(host, &spec.mac)? else {
        problems.push(format!("no device with the ENI's MAC {mac} on the node"));
        return Ok(());
    };
    if !eni.up {
        problems.push(format!("ENI {} is down", eni.name));
    }
    let rp = sysctl::get(&sysctl::rp_filter_key(&eni.name))?;
    if rp != "0" {
        problems.push(format!("rp_filter on {} is {rp}, want 0", eni.name));
    }
    let name = host_slave_name(eni.index);
    let Some(slave) = host
        .link_by_name(&name)?
        .filter(|l| l.kind.as_deref() == Some("ipvlan") && l.mac == eni.mac)
    else {
        problems.push(format!(
            "host slave {name} (ipvlan of {}) is missing",
            eni.name
        ));
        return Ok(());
    };
    if !slave.up {
        problems.push(format!("host slave {name} is down"));
    }
    let ip = spec.ip.ip();
    let shown = format!("host route {ip}/32 dev {name} scope link");
    check_route(
        &host.routes(TABLE_MAIN)?,
        &host_route(ip, slave.index),
        &shown,
        problems,
    );
    let neigh = host
        .neighs(slave.index)?
        .into_iter()
        .find(|n| n.ip == IpAddr::V4(ip));
    match neigh {
        Some(n) if n.permanent && n.mac == Some(spec.mac) => {}
        Some(n) => problems.push(format!(
            "host neighbour {ip} on {name} is {} {}, want {mac} permanent",
            n.mac.as_ref().map_or("nothing".into(), format_mac),
            if n.permanent {
                "permanent"
            } else {
                "not permanent"
            }
        )),
        None => problems.push(format!(
            "host neighbour {ip} lladdr {mac} on {name} is missing"
        )),
    }
    if let Some(ipv6) = &spec.ipv6 {
        v6::check_host(host, ipv6.addr.ip(), spec.mac, &slave, problems)?;
    }
    Ok(())
}

/// What [`teardown`] needs: identities only; the address is the daemon's record (or what the
/// attachment's own pod interface carries).
#[derive(Debug, Clone, Copy)]
pub struct IpvlanTeardown<'a> {
    /// The pod's namespace, or `None` when it is gone (its interface went with it).
    pub netns: Option<&'a NetNs>,
    pub ifname: &'a str,
    pub alias: &'a str,
    pub ip: Option<Ipv4Addr>,
    /// The pod's IPv6 address (dual stack), whose node route and neighbour go too.
    pub ip6: Option<Ipv6Addr>,
}

/// Removes the pod's interface (only if it is this attachment's ipvlan) and the node's route
/// and neighbour of the address (only through a host slave). Idempotent; every step is tried,
/// the first error returned.
pub fn teardown(t: &IpvlanTeardown) -> Result<()> {
    let mut first: Option<Error> = None;
    if let Some(ns) = t.netns {
        let r = refuse_node_namespace(ns, "take an interface out of it")
            .and_then(|()| remove_pod_link(ns, t.ifname, t.alias));
        if let Err(e) = r {
            first.get_or_insert(e);
        }
    }
    let ips =
        t.ip.map(IpAddr::V4)
            .into_iter()
            .chain(t.ip6.map(IpAddr::V6));
    for ip in ips {
        let r = Netlink::open().and_then(|mut nl| remove_host_side_ip(&mut nl, ip));
        if let Err(e) = r {
            first.get_or_insert(e);
        }
    }
    match first {
        Some(e) => Err(e.context(format!("tear down ipvlan {}", t.ifname))),
        None => Ok(()),
    }
}

fn remove_pod_link(ns: &NetNs, ifname: &str, alias: &str) -> Result<()> {
    let mut pod = Netlink::open_in(ns)?;
    let Some(link) = pod.link_by_name(ifname)? else {
        return Ok(());
    };
    match foreign(&link, alias) {
        Some(why) => {
            log::warn!(
                "left {ifname} in netns {} alone: {why}",
                ns.path().display()
            );
            Ok(())
        }
        None => pod.delete_link(link.index),
    }
}

/// Removes the node's route to `ip` and its neighbour entries, but only through host slaves
/// (`ipvl_*`): a route elsewhere is not the ipvlan datapath's. Idempotent.
pub fn remove_host_side(nl: &mut Netlink, ip: Ipv4Addr) -> Result<()> {
    remove_host_side_ip(nl, IpAddr::V4(ip))
}

/// [`remove_host_side`] for an address of either family.
pub fn remove_host_side_ip(nl: &mut Netlink, ip: IpAddr) -> Result<()> {
    let slaves: Vec<Link> = nl.links()?.into_iter().filter(is_host_slave).collect();
    let dst = IpNetwork::from(ip);
    for r in nl.routes_of(Family::of_ip(&ip), TABLE_MAIN)? {
        if r.dst == dst && slaves.iter().any(|s| Some(s.index) == r.oif) {
            nl.del_route(&r)?;
        }
    }
    for s in &slaves {
        if nl.neighs(s.index)?.iter().any(|n| n.ip == ip) {
            nl.del_neigh(s.index, ip)?;
        }
    }
    Ok(())
}

/// The IPv4 addresses on the attachment's own pod interface (an ipvlan carrying its alias):
/// what DEL may clean up on the node when the daemon cannot say.
pub fn pod_ips(ns: &NetNs, ifname: &str, alias: &str) -> Result<Vec<Ipv4Addr>> {
    let mut pod = Netlink::open_in(ns)?;
    let Some(link) = pod.link_by_name(ifname)? else {
        return Ok(Vec::new());
    };
    // Without the alias it is not provably ours: nothing of the node is touched for it.
    if link.alias.as_deref() != Some(alias) || foreign(&link, alias).is_some() {
        return Ok(Vec::new());
    }
    Ok(pod
        .addrs(Some(link.index))?
        .into_iter()
        .filter_map(|a| match a.addr {
            IpNetwork::V4(n) => Some(n.ip()),
            IpNetwork::V6(_) => None,
        })
        .collect())
}

/// Whether this kernel has ipvlan: an ipvlan on a veth in a throwaway namespace (a thread of
/// its own that unshares its network namespace; the namespace and its links vanish with the
/// thread). `Ok(false)` when the kernel does not know the link kind.
pub fn probe() -> Result<bool> {
    let handle = std::thread::Builder::new()
        .name("ipvlan-probe".into())
        .spawn(|| -> Result<bool> {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| {
                err!(
                    Kind::Netns,
                    "unshare a network namespace to probe for ipvlan: {}",
                    e.desc()
                )
            })?;
            let mut nl = Netlink::open()?;
            nl.create_link(&LinkSpec {
                name: "twprobe0",
                mtu: None,
                mac: None,
                netns: None,
                kind: LinkKind::Veth {
                    peer_name: "twprobe1",
                    peer_netns: None,
                },
            })?;
            let parent = nl
                .link_by_name("twprobe0")?
                .ok_or_else(|| err!(Kind::Datapath, "probe veth twprobe0 vanished"))?;
            nl.create_link_if_supported(&LinkSpec {
                name: "twprobe2",
                mtu: None,
                mac: None,
                netns: None,
                kind: LinkKind::Ipvlan {
                    parent: parent.index,
                    mode: IpvlanMode::L2,
                },
            })
        })
        .map_err(|e| err!(Kind::Internal, "spawn the ipvlan probe thread: {e}"))?;
    handle
        .join()
        .map_err(|_| err!(Kind::Internal, "the ipvlan probe thread panicked"))?
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_temporary_pod_link_name_is_a_valid_unique_interface_name() {
        let a = super::temp_name(&crate::datapath::host_veth_alias("c1", "eth0"));
        let b = super::temp_name(&crate::datapath::host_veth_alias("c2", "eth0"));
        assert_ne!(a, b);
        assert_eq!(a.len(), 15);
        assert!(a.starts_with("twi") && a.bytes().all(|c| c.is_ascii_alphanumeric()));
    }

    use super::*;

    fn spec(ns: &NetNs) -> IpvlanSpec<'_> {
        IpvlanSpec {
            netns: ns,
            ifname: "eth0",
            alias: "terway:test",
            mac: [0x02, 0x16, 0x3e, 0, 0, 1],
            ip: "172.16.0.10/24".parse().unwrap(),
            gateway: Ipv4Addr::new(172, 16, 0, 253),
            ipv6: None,
            mtu: 1500,
            service_cidr: Some("10.96.0.10/12".parse().unwrap()),
            node_ips: vec![Ipv4Addr::new(172, 16, 0, 5)],
        }
    }

    fn self_ns() -> NetNs {
        NetNs::open(std::path::Path::new("/proc/self/ns/net")).unwrap()
    }

    #[test]
    fn host_slave_names_fit_and_are_recognised() {
        assert_eq!(host_slave_name(7), "ipvl_7");
        assert!(host_slave_name(u32::MAX).len() <= 15);
        let mut l = Link {
            index: 9,
            name: "ipvl_7".into(),
            mac: None,
            mtu: 1500,
            up: true,
            kind: Some("ipvlan".into()),
            alias: None,
        };
        assert!(is_host_slave(&l));
        l.kind = Some("veth".into());
        assert!(!is_host_slave(&l), "a veth named like one is not ours");
        l.kind = Some("ipvlan".into());
        l.name = "eth0".into();
        assert!(!is_host_slave(&l), "a pod's ipvlan is not a host slave");
    }

    #[test]
    fn pod_routes_follow_the_recipe() {
        let ns = self_ns();
        let s = spec(&ns);
        let routes = s.pod_routes(3);
        let shown: Vec<String> = routes.iter().map(veth::show_route).collect();
        assert_eq!(
            shown,
            [
                "0.0.0.0/0 via 172.16.0.253 oif #3",
                "10.96.0.0/12 via 169.254.1.1 oif #3 onlink",
                "172.16.0.5/32 via 169.254.1.1 oif #3 onlink",
            ]
        );
        let h = host_route(Ipv4Addr::new(172, 16, 0, 10), 11);
        assert_eq!(veth::show_route(&h), "172.16.0.10/32 oif #11 scope link");
    }

    #[test]
    fn to_node_is_deduplicated_and_may_be_empty() {
        let ns = self_ns();
        let mut s = spec(&ns);
        s.node_ips = vec![Ipv4Addr::new(172, 16, 0, 5), Ipv4Addr::new(172, 16, 0, 5)];
        assert_eq!(s.to_node().len(), 2);
        s.service_cidr = None;
        s.node_ips.clear();
        assert!(s.to_node().is_empty());
        assert_eq!(s.pod_routes(1).len(), 1, "the default route only");
    }

    type Edit = Box<dyn Fn(&mut IpvlanSpec)>;

    #[test]
    fn bad_specs_are_rejected_before_touching_anything() {
        let ns = self_ns();
        validate(&spec(&ns)).unwrap();
        let cases: Vec<(Edit, &str)> = vec![
            (Box::new(|s| s.mac = [1, 0, 0, 0, 0, 1]), "unicast"),
            (Box::new(|s| s.mtu = 20), "MTU"),
            (
                Box::new(|s| s.ip = "172.16.0.10/32".parse().unwrap()),
                "prefix",
            ),
            (
                Box::new(|s| s.ip = "172.16.0.0/24".parse().unwrap()),
                "network",
            ),
            (
                Box::new(|s| s.gateway = Ipv4Addr::new(10, 0, 0, 1)),
                "gateway",
            ),
            (
                Box::new(|s| s.service_cidr = Some("172.16.0.0/16".parse().unwrap())),
                "service CIDR",
            ),
            (
                Box::new(|s| s.node_ips = vec![Ipv4Addr::new(172, 16, 0, 10)]),
                "node address",
            ),
        ];
        for (edit, what) in cases {
            let mut s = spec(&ns);
            edit(&mut s);
            let e = validate(&s).unwrap_err();
            assert_eq!(e.kind, Kind::InvalidConfig);
            assert!(e.msg.contains(what), "{what}: {}", e.msg);
        }
    }

    #[test]
    fn a_pod_link_is_ours_only_as_an_ipvlan_with_our_alias_or_none() {
        let mut l = Link {
            index: 2,
            name: "eth0".into(),
            mac: None,
            mtu: 1500,
            up: true,
            kind: Some("ipvlan".into()),
            alias: Some("terway:a".into()),
        };
        assert!(foreign(&l, "terway:a").is_none());
        assert!(
            foreign(&l, "terway:b")
                .unwrap()
                .contains("another attachment")
        );
        l.alias = None;
        assert!(foreign(&l, "terway:b").is_none(), "half-built by us");
        l.kind = Some("veth".into());
        assert!(foreign(&l, "terway:b").unwrap().contains("not an ipvlan"));
    }
}
