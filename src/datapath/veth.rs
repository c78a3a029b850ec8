//! veth datapath (ENIMultiIP default and VPC mode): the pod's `eth0` is one end of a veth pair,
//! the other end stays on the node. The pod routes everything via 169.254.1.1, a permanent
//! neighbour that resolves to the host veth's MAC; the node routes the pod IP/32 onto the veth.
//! A dual-stack pod gets the same for IPv6 (see [`super::ipv6`]): `::/0 via fe80::1`, a
//! permanent neighbour `fe80::1`, and the pod IP/128 routed onto the veth.

use super::POD_GATEWAY;
use super::ipv6::{self, POD_GATEWAY_V6};
use crate::err;
use crate::error::{Error, Kind, Result};
use crate::netlink::{DEFAULT_DST_V4, Family, Link, Netlink, Route, TABLE_MAIN, format_mac};
use crate::netns::NetNs;
use crate::sysctl;
use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

#[path = "veth_v6.rs"]
mod v6;
use v6::{check_host_v6, check_pod_v6, host_route6, pod_default_route6};

/// What to build.
#[derive(Debug)]
pub struct VethSpec<'a> {
    /// The pod's network namespace.
    pub netns: &'a NetNs,
    /// Interface name inside the pod (`CNI_IFNAME`, usually `eth0`).
    pub ifname: &'a str,
    /// Host-side veth name, see [`super::host_veth_name`].
    pub host_ifname: &'a str,
    /// Alias put on the host veth, see [`super::host_veth_alias`]: what proves the link is
    /// this attachment's when DEL, CHECK or a retried ADD find it.
    pub alias: &'a str,
    pub ip: Ipv4Addr,
    /// The pod's IPv6 address (dual stack); `None` for an IPv4-only pod.
    pub ip6: Option<Ipv6Addr>,
    pub mtu: u32,
}

/// What was built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VethInfo {
    pub host_ifname: String,
    pub host_mac: [u8; 6],
    pub pod_mac: [u8; 6],
    pub mtu: u32,
}

impl VethSpec<'_> {
    fn describe(&self) -> String {
        let ips = match self.ip6 {
            Some(ip6) => format!("{}, {ip6}", self.ip),
            None => self.ip.to_string(),
        };
        format!(
            "veth datapath for {ips} (host {}, pod {} in netns {})",
            self.host_ifname,
            self.ifname,
            self.netns.path().display()
        )
    }

    fn pod_net(&self) -> IpNetwork {
        IpNetwork::V4(Ipv4Network::from(self.ip))
    }

    fn host_route(&self, host_index: u32) -> Route {
        Route {
            dst: self.pod_net(),
            gateway: None,
            oif: Some(host_index),
            table: TABLE_MAIN,
            scope_link: true,
            onlink: false,
        }
    }

    fn pod_default_route(&self, pod_index: u32) -> Route {
        Route {
            dst: DEFAULT_DST_V4,
            gateway: Some(IpAddr::V4(POD_GATEWAY)),
            oif: Some(pod_index),
            table: TABLE_MAIN,
            scope_link: false,
            onlink: true,
        }
    }
}

fn validate(spec: &VethSpec) -> Result<()> {
    let ip = spec.ip;
    if ip.is_unspecified() || ip.is_multicast() || ip.is_broadcast() || ip.is_loopback() {
        return Err(err!(
            Kind::InvalidConfig,
            "{ip} is not a usable pod address"
        ));
    }
    if ip == POD_GATEWAY {
        return Err(err!(
            Kind::InvalidConfig,
            "{ip} is the pod gateway address and cannot be a pod address"
        ));
    }
    if !(68..=65535).contains(&spec.mtu) {
        return Err(err!(
            Kind::InvalidConfig,
            "MTU {} is out of range (68-65535)",
            spec.mtu
        ));
    }
    if let Some(ip6) = spec.ip6 {
        if ipv6::unusable(&ip6) {
            return Err(err!(
                Kind::InvalidConfig,
                "{ip6} is not a usable pod IPv6 address (unspecified, loopback, multicast or link-local)"
            ));
        }
        if spec.mtu < 1280 {
            return Err(err!(
                Kind::InvalidConfig,
                "MTU {} is below IPv6's minimum of 1280: a dual-stack pod needs at least that",
                spec.mtu
            ));
        }
    }
    Ok(())
}

/// Builds the datapath. On failure everything created here is removed again.
pub fn setup(spec: &VethSpec) -> Result<VethInfo> {
    setup_inner(spec).map_err(|e| e.context(format!("set up {}", spec.describe())))
}

fn setup_inner(spec: &VethSpec) -> Result<VethInfo> {
    validate(spec)?;
    if spec.netns.is_node_namespace()? {
        return Err(err!(
            Kind::InvalidEnv,
            "netns {} is the node's own network namespace, not a pod's: refusing to wire it",
            spec.netns.path().display()
        ));
    }
    let mut host = Netlink::open()?;
    remove_stale(&mut host, spec)?;
    let mut pod = Netlink::open_in(spec.netns)?;
    if pod.link_by_name(spec.ifname)?.is_some() {
        return Err(err!(
            Kind::Datapath,
            "interface {} already exists in netns {}",
            spec.ifname,
            spec.netns.path().display()
        ));
    }
    host.create_veth(spec.host_ifname, spec.ifname, spec.netns, spec.mtu)?;
    match configure(&mut host, &mut pod, spec) {
        Ok(info) => Ok(info),
        Err(e) => {
            // Deleting the host end removes the pod end and every route through them. This
            // call created the link (create is exclusive), so it is ours to remove.
            let undo = match host.link_by_name(spec.host_ifname) {
                Ok(Some(link)) => delete_host_veth(&mut host, &link),
                Ok(None) => Ok(()),
                Err(e) => Err(e),
            };
            if let Err(undo) = undo {
                log::warn!("rollback of {}: {undo}", spec.host_ifname);
            }
            Err(e)
        }
    }
}

/// A host veth of the same name is a leftover of an earlier ADD for this very attachment (the
/// plugin holds the attachment's lock, so no other call is building it): it goes. A link of
/// that name that is not provably this attachment's is never touched.
fn remove_stale(host: &mut Netlink, spec: &VethSpec) -> Result<()> {
    if let Some(link) = host.link_by_name(spec.host_ifname)? {
        if let Some(why) = foreign(&link, spec.alias) {
            return Err(err!(Kind::Datapath, "{why}: refusing to touch it"));
        }
        log::info!("removing stale host veth {}", spec.host_ifname);
        host.delete_link(link.index)?;
    }
    Ok(())
}

/// Why `link` (found under this attachment's host veth name) is not this attachment's, if it
/// is not. A veth without an alias is a half-built one of ours or one made before aliases.
pub(super) fn foreign(link: &Link, alias: &str) -> Option<String> {
    if link.kind.as_deref() != Some("veth") {
        return Some(format!(
            "{} exists but is a {} link, not a veth",
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

fn require(nl: &mut Netlink, name: &str, where_: &str) -> Result<Link> {
    nl.link_by_name(name)?
        .ok_or_else(|| err!(Kind::Datapath, "{where_} link {name} vanished during setup"))
}

fn configure(host: &mut Netlink, pod: &mut Netlink, spec: &VethSpec) -> Result<VethInfo> {
    let host_link = require(host, spec.host_ifname, "host")?;
    let pod_link = require(pod, spec.ifname, "pod")?;
    let host_mac = host_link
        .mac
        .ok_or_else(|| err!(Kind::Datapath, "host veth {} has no MAC", host_link.name))?;
    let pod_mac = pod_link
        .mac
        .ok_or_else(|| err!(Kind::Datapath, "pod veth {} has no MAC", pod_link.name))?;
    host.set_link_alias(host_link.index, spec.alias)?;

    // Pod side. Links go up before routes: an onlink nexthop needs its device up.
    if let Some(lo) = pod.link_by_name("lo")? {
        pod.set_link_up(lo.index)?;
    }
    pod.add_addr(pod_link.index, spec.pod_net())?;
    if let Some(ip6) = spec.ip6 {
        // Sysctls before the address: it must never be tentative, nor RAs heeded.
        ipv6::prepare_pod_iface(spec.netns, spec.ifname)?;
        pod.add_addr_nodad(pod_link.index, IpNetwork::V6(Ipv6Network::from(ip6)))?;
    }
    pod.set_link_up(pod_link.index)?;

    // Host side, in the calling thread's namespace.
    if spec.ip6.is_some() {
        ipv6::prepare_host_veth(host, host_link.index, spec.host_ifname)?;
    }
    host.set_link_up(host_link.index)?;
    set_if_differs(&sysctl::rp_filter_key(spec.host_ifname), "0")?;
    set_if_differs("net/ipv4/ip_forward", "1")?;
    // Exclusive adds: a route terway did not make (another pod's, the node's own) is never
    // replaced; the old veth's routes went with it in `remove_stale`.
    host.add_route(&spec.host_route(host_link.index))?;

    pod.add_route(&spec.pod_default_route(pod_link.index))?;
    pod.replace_neigh_permanent(pod_link.index, IpAddr::V4(POD_GATEWAY), host_mac)?;

    if let Some(ip6) = spec.ip6 {
        ipv6::enable_forwarding(host)?;
        host.add_route(&host_route6(ip6, host_link.index))?;
        pod.replace_neigh_permanent(pod_link.index, IpAddr::V6(POD_GATEWAY_V6), host_mac)?;
        pod.add_route(&pod_default_route6(pod_link.index))?;
    }

    Ok(VethInfo {
        host_ifname: spec.host_ifname.to_string(),
        host_mac,
        pod_mac,
        mtu: spec.mtu,
    })
}

/// Writes a sysctl only when needed: writing `ip_forward` resets per-device settings.
pub(super) fn set_if_differs(key: &str, value: &str) -> Result<()> {
    if sysctl::get(key)? != value {
        sysctl::set(key, value)?;
    }
    Ok(())
}

/// Verifies the whole datapath; the error lists every missing or wrong piece.
pub fn check(spec: &VethSpec) -> Result<()> {
    super::checked(&spec.describe(), |problems| check_inner(spec, problems))
}

fn check_link(link: &Link, spec: &VethSpec, side: &str, problems: &mut Vec<String>) {
    if link.kind.as_deref() != Some("veth") {
        let kind = link.kind.as_deref().unwrap_or("physical");
        problems.push(format!(
            "{side} link {} is a {kind} link, not a veth",
            link.name
        ));
    }
    if !link.up {
        problems.push(format!("{side} link {} is down", link.name));
    }
    if link.mtu != spec.mtu {
        problems.push(format!(
            "{side} link {} has MTU {}, want {}",
            link.name, link.mtu, spec.mtu
        ));
    }
}

fn check_inner(spec: &VethSpec, problems: &mut Vec<String>) -> Result<()> {
    validate(spec)?;
    let mut host = Netlink::open()?;
    let host_link = host.link_by_name(spec.host_ifname)?;
    match &host_link {
        None => problems.push(format!("host veth {} is missing", spec.host_ifname)),
        Some(link) => {
            check_link(link, spec, "host", problems);
            if let Some(a) = link.alias.as_deref().filter(|a| *a != spec.alias) {
                problems.push(format!(
                    "host veth {} has alias {a:?}, want {:?}: it belongs to another attachment",
                    link.name, spec.alias
                ));
            }
            let want = spec.host_route(link.index);
            let found = host
                .routes(TABLE_MAIN)?
                .into_iter()
                .find(|r| r.dst == want.dst);
            match found {
                None => problems.push(format!(
                    "host route {} dev {} is missing",
                    want.dst, spec.host_ifname
                )),
                Some(r) if r.oif != want.oif || r.gateway.is_some() || !r.scope_link => {
                    problems.push(format!(
                        "host route to {} is {}, want dev {} scope link",
                        want.dst,
                        show_route(&r),
                        spec.host_ifname
                    ));
                }
                Some(_) => {}
            }
            let rp = sysctl::get(&sysctl::rp_filter_key(spec.host_ifname))?;
            if rp != "0" {
                problems.push(format!("rp_filter on {} is {rp}, want 0", spec.host_ifname));
            }
            if let Some(ip6) = spec.ip6 {
                check_host_v6(&mut host, link, ip6, problems)?;
            }
        }
    }
    if sysctl::get("net/ipv4/ip_forward")? != "1" {
        problems.push("net.ipv4.ip_forward is not 1 on the node".into());
    }
    if spec.ip6.is_some() {
        ipv6::check_forwarding(problems)?;
    }

    let mut pod = Netlink::open_in(spec.netns)?;
    match pod.link_by_name("lo")? {
        Some(lo) if !lo.up => problems.push("pod lo is down".into()),
        _ => {}
    }
    let Some(pod_link) = pod.link_by_name(spec.ifname)? else {
        problems.push(format!("pod interface {} is missing", spec.ifname));
        return Ok(());
    };
    check_link(&pod_link, spec, "pod", problems);
    let want_addr = spec.pod_net();
    if !pod
        .addrs(Some(pod_link.index))?
        .iter()
        .any(|a| a.addr == want_addr)
    {
        problems.push(format!(
            "pod address {want_addr} on {} is missing",
            spec.ifname
        ));
    }
    let want = spec.pod_default_route(pod_link.index);
    let default = pod
        .routes(TABLE_MAIN)?
        .into_iter()
        .find(|r| r.dst.prefix() == 0);
    match default {
        None => problems.push(format!(
            "pod default route via {POD_GATEWAY} dev {} onlink is missing",
            spec.ifname
        )),
        Some(r) if r.gateway != want.gateway || r.oif != want.oif || !r.onlink => {
            problems.push(format!(
                "pod default route is {}, want via {POD_GATEWAY} dev {} onlink",
                show_route(&r),
                spec.ifname
            ));
        }
        Some(_) => {}
    }
    let host_mac = host_link.as_ref().and_then(|l| l.mac);
    let neighs = pod.neighs(pod_link.index)?;
    check_gateway_neigh(
        &neighs,
        IpAddr::V4(POD_GATEWAY),
        host_mac,
        spec.ifname,
        problems,
    );
    if let Some(ip6) = spec.ip6 {
        check_pod_v6(&mut pod, &pod_link, ip6, spec, problems)?;
        check_gateway_neigh(
            &neighs,
            IpAddr::V6(POD_GATEWAY_V6),
            host_mac,
            spec.ifname,
            problems,
        );
    }
    Ok(())
}

/// The pod's permanent neighbour for its link-local gateway `gw`, pointing at the host veth.
fn check_gateway_neigh(
    neighs: &[crate::netlink::Neigh],
    gw: IpAddr,
    host_mac: Option<[u8; 6]>,
    ifname: &str,
    problems: &mut Vec<String>,
) {
    match neighs.iter().find(|n| n.ip == gw) {
        None => problems.push(format!("pod neighbour {gw} on {ifname} is missing")),
        Some(n) => {
            if !n.permanent {
                problems.push(format!("pod neighbour {gw} is not permanent"));
            }
            if host_mac.is_some() && n.mac != host_mac {
                problems.push(format!(
                    "pod neighbour {gw} points to {}, want the host veth MAC {}",
                    n.mac.as_ref().map_or("nothing".into(), format_mac),
                    host_mac.as_ref().map_or(String::new(), format_mac)
                ));
            }
        }
    }
}

pub(super) fn show_route(r: &Route) -> String {
    let mut s = r.dst.to_string();
    if let Some(gw) = r.gateway {
        s.push_str(&format!(" via {gw}"));
    }
    if let Some(oif) = r.oif {
        s.push_str(&format!(" oif #{oif}"));
    }
    if r.scope_link {
        s.push_str(" scope link");
    }
    if r.onlink {
        s.push_str(" onlink");
    }
    s
}

/// What [`teardown`] found under the attachment's host veth name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Teardown {
    /// This attachment's veth was there and is gone now.
    Deleted,
    /// Nothing of that name: an earlier DEL ran, or ADD never got that far.
    Absent,
    /// A link of that name that is not this attachment's: left alone, and why.
    NotOurs(String),
}

/// Removes the datapath by deleting the host veth (the kernel removes the pod end and every
/// route through them). Only a link that provably belongs to the attachment (a veth carrying
/// its alias, or no alias) is deleted. Idempotent.
pub fn teardown(host_ifname: &str, alias: &str) -> Result<Teardown> {
    let mut host = Netlink::open()?;
    let found = host
        .link_by_name(host_ifname)
        .map_err(|e| e.context(format!("tear down host veth {host_ifname}")))?;
    let Some(link) = found else {
        return Ok(Teardown::Absent);
    };
    if let Some(why) = foreign(&link, alias) {
        return Ok(Teardown::NotOurs(why));
    }
    delete_host_veth(&mut host, &link)
        .map_err(|e| e.context(format!("tear down host veth {host_ifname}")))?;
    Ok(Teardown::Deleted)
}

/// The pod addresses the node routes onto this attachment's host veth (`ip/32` and `ip6/128
/// dev <veth>` in main), IPv4 first: what the attachment provably holds, whatever a caller's
/// `prevResult` claims.
pub fn routed_pod_ips(host_ifname: &str, alias: &str) -> Result<Vec<IpAddr>> {
    let mut host = Netlink::open()?;
    let Some(link) = host.link_by_name(host_ifname)? else {
        return Ok(Vec::new());
    };
    if foreign(&link, alias).is_some() {
        return Ok(Vec::new());
    }
    let mut routes = host.routes(TABLE_MAIN)?;
    routes.extend(host.routes_of(Family::V6, TABLE_MAIN)?);
    Ok(routes
        .into_iter()
        .filter(|r| {
            r.oif == Some(link.index)
                && r.gateway.is_none()
                && r.dst.prefix() == if r.dst.is_ipv4() { 32 } else { 128 }
        })
        .map(|r| r.dst.ip())
        .collect())
}

fn delete_host_veth(host: &mut Netlink, link: &Link) -> Result<(), Error> {
    host.delete_link(link.index)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(ns: &NetNs, ip: Ipv4Addr, mtu: u32) -> VethSpec<'_> {
        VethSpec {
            netns: ns,
            ifname: "eth0",
            host_ifname: "tw0000000000000",
            alias: "terway:test",
            ip,
            ip6: None,
            mtu,
        }
    }

    #[test]
    fn bad_specs_are_rejected_before_touching_anything() {
        let ns = NetNs::open(std::path::Path::new("/proc/self/ns/net")).unwrap();
        for (ip, mtu, what) in [
            (Ipv4Addr::UNSPECIFIED, 1500, "not a usable"),
            (Ipv4Addr::new(224, 0, 0, 1), 1500, "not a usable"),
            (Ipv4Addr::new(127, 0, 0, 1), 1500, "not a usable"),
            (POD_GATEWAY, 1500, "gateway"),
            (Ipv4Addr::new(10, 0, 0, 1), 20, "MTU"),
        ] {
            let e = validate(&spec(&ns, ip, mtu)).unwrap_err();
            assert_eq!(e.kind, Kind::InvalidConfig);
            assert!(e.msg.contains(what), "{}", e.msg);
        }
        validate(&spec(&ns, Ipv4Addr::new(10, 0, 0, 1), 1500)).unwrap();
    }

    #[test]
    fn bad_ipv6_specs_are_rejected() {
        let ns = NetNs::open(std::path::Path::new("/proc/self/ns/net")).unwrap();
        let v4 = Ipv4Addr::new(10, 0, 0, 1);
        for (ip6, mtu, what) in [
            ("::", 1500, "not a usable"),
            ("fe80::1", 1500, "not a usable"),
            ("ff02::1", 1500, "not a usable"),
            ("::1", 1500, "not a usable"),
            ("2001:db8::5", 1000, "1280"),
        ] {
            let s = VethSpec {
                ip6: Some(ip6.parse().unwrap()),
                ..spec(&ns, v4, mtu)
            };
            let e = validate(&s).unwrap_err();
            assert_eq!(e.kind, Kind::InvalidConfig);
            assert!(e.msg.contains(what), "{ip6}: {}", e.msg);
        }
        let ok = VethSpec {
            ip6: Some("2001:db8::5".parse().unwrap()),
            ..spec(&ns, v4, 1500)
        };
        validate(&ok).unwrap();
        assert!(ok.describe().contains("10.0.0.1, 2001:db8::5"));
        // IPv4-only keeps its description.
        assert!(
            spec(&ns, v4, 1500)
                .describe()
                .starts_with("veth datapath for 10.0.0.1 (")
        );
    }

    #[test]
    fn routes_have_the_recipe_shape() {
        let ns = NetNs::open(std::path::Path::new("/proc/self/ns/net")).unwrap();
        let s = spec(&ns, Ipv4Addr::new(10, 240, 1, 2), 1500);
        let host = s.host_route(7);
        assert_eq!(host.dst.to_string(), "10.240.1.2/32");
        assert!(host.scope_link && host.gateway.is_none());
        let def = s.pod_default_route(3);
        assert_eq!(def.dst.prefix(), 0);
        assert_eq!(def.gateway, Some(IpAddr::V4(POD_GATEWAY)));
        assert!(def.onlink);
    }
}
