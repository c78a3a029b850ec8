//! veth datapath (ENIMultiIP default and VPC mode): the pod's `eth0` is one end of a veth pair,
//! the other end stays on the node. The pod routes everything via 169.254.1.1, a permanent
//! neighbour that resolves to the host veth's MAC; the node routes the pod IP/32 onto the veth.
//! A dual-stack pod gets the same for IPv6 (see [`super::ipv6`]): `::/0 via fe80::1`, a
//! permanent neighbour `fe80::1`, and the pod IP/128 routed onto the veth.

use super::POD_GATEWAY;
use super::ipv6::{self, POD_GATEWAY_V6};
use crate::err;
use crate::error::{Error, Kind, Result};
use crate::netlink::{DEFAULT_DST_V4, Family, Link, Netlink, Route, TABLE_MAIN};
use crate::netns::NetNs;
use crate::sysctl;
use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

#[path = "veth_v6.rs"]
mod v6;
use v6::{host_route6, pod_default_route6};
#[path = "veth_check.rs"]
mod check;
pub use check::check;
pub(super) use check::{check_gateway_neigh, show_route};

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
    validate_mtu(spec.mtu)?;
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

fn validate_mtu(mtu: u32) -> Result<()> {
    if !(68..=65535).contains(&mtu) {
        return Err(err!(
            Kind::InvalidConfig,
            "MTU {mtu} is out of range (68-65535)"
        ));
    }
    Ok(())
}

/// Builds the datapath. On failure everything created here is removed again.
pub fn setup(spec: &VethSpec) -> Result<VethInfo> {
    let prepared = validate(spec)
        .and_then(|()| prepare_inner(&spec.pair(), Stale::Replace))
        .map_err(|e| e.context(format!("set up {}", spec.describe())))?;
    match prepared {
        Some(p) => p.complete(spec, Vanished::Fail),
        None => Err(err!(
            Kind::Internal,
            "set up {}: no pair prepared",
            spec.describe()
        )),
    }
}

/// The attachment's veth pair without its addresses: what [`prepare`] builds.
#[derive(Debug, Clone, Copy)]
pub struct VethPair<'a> {
    pub netns: &'a NetNs,
    pub ifname: &'a str,
    pub host_ifname: &'a str,
    pub alias: &'a str,
    pub mtu: u32,
}

impl VethPair<'_> {
    fn describe(&self) -> String {
        format!(
            "veth pair (host {}, pod {} in netns {})",
            self.host_ifname,
            self.ifname,
            self.netns.path().display()
        )
    }
}

impl<'a> VethSpec<'a> {
    pub fn pair(&self) -> VethPair<'a> {
        VethPair {
            netns: self.netns,
            ifname: self.ifname,
            host_ifname: self.host_ifname,
            alias: self.alias,
            mtu: self.mtu,
        }
    }
}

/// A veth pair [`prepare`] built: created, carrying the attachment's alias, its host end's
/// rp_filter off, the pod's `lo` up; no address, no route, both ends down. It needs no pod
/// address, so the plugin builds it while the daemon chooses one. [`PreparedVeth::finish`]
/// completes it; dropped (or [`PreparedVeth::discard`]ed) unfinished, it is removed.
pub struct PreparedVeth {
    host: Netlink,
    pod: Netlink,
    host_link: Link,
    pod_link: Link,
    /// Finished: the pair is the pod's datapath now and stays.
    kept: bool,
}

/// What completing a prepared pair does when it has vanished meanwhile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Vanished {
    /// Build it again, once (a pair prepared before the daemon answered).
    Rebuild,
    /// Fail (a pair [`setup`] has just built: building again could go on forever).
    Fail,
}

/// What [`prepare`] does with a link already under the attachment's host veth name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stale {
    /// Remove it, when it is provably this attachment's (setup, after the daemon answered).
    Replace,
    /// Build nothing: a retried ADD's datapath stays until the daemon has answered, and the
    /// daemon's teardown of the attachment's previous ADD may still be on its way.
    Keep,
}

/// Builds the address-independent part of the datapath (see [`PreparedVeth`]) before the
/// daemon has answered; `None` when a link of the attachment's host veth name already exists
/// (left to [`setup`] after the answer). On failure everything created here is removed again.
pub fn prepare(pair: &VethPair) -> Result<Option<PreparedVeth>> {
    prepare_inner(pair, Stale::Keep).map_err(|e| e.context(format!("set up {}", pair.describe())))
}

fn prepare_inner(pair: &VethPair, stale: Stale) -> Result<Option<PreparedVeth>> {
    validate_mtu(pair.mtu)?;
    if pair.netns.is_node_namespace()? {
        return Err(err!(
            Kind::InvalidEnv,
            "netns {} is the node's own network namespace, not a pod's: refusing to wire it",
            pair.netns.path().display()
        ));
    }
    let mut host = Netlink::open()?;
    match stale {
        Stale::Replace => remove_stale(&mut host, pair)?,
        Stale::Keep if host.link_by_name(pair.host_ifname)?.is_some() => return Ok(None),
        Stale::Keep => {}
    }
    let mut pod = Netlink::open_in(pair.netns)?;
    if let Err(e) = host.create_veth(pair.host_ifname, pair.ifname, pair.netns, pair.mtu) {
        // (Asked only now: on the way to success a lookup first would cost a round trip.)
        if pod.link_by_name(pair.ifname)?.is_some() {
            return Err(err!(
                Kind::Datapath,
                "interface {} already exists in netns {}",
                pair.ifname,
                pair.netns.path().display()
            ));
        }
        return Err(e);
    }
    match prepare_links(&mut host, &mut pod, pair) {
        Ok((host_link, pod_link)) => Ok(Some(PreparedVeth {
            host,
            pod,
            host_link,
            pod_link,
            kept: false,
        })),
        Err(e) => {
            // This call created the link (create is exclusive), so it is ours to remove.
            remove_created(&mut host, pair.host_ifname);
            Err(e)
        }
    }
}

/// Deletes the host end of a veth this call created (the kernel removes the pod end and every
/// route through them); a failure is logged, the caller's error is what counts.
fn remove_created(host: &mut Netlink, host_ifname: &str) {
    let undo = match host.link_by_name(host_ifname) {
        Ok(Some(link)) => delete_host_veth(host, &link),
        Ok(None) => Ok(()),
        Err(e) => Err(e),
    };
    if let Err(undo) = undo {
        log::warn!("rollback of {host_ifname}: {undo}");
    }
}

fn prepare_links(host: &mut Netlink, pod: &mut Netlink, pair: &VethPair) -> Result<(Link, Link)> {
    let host_link = require(host, pair.host_ifname, "host")?;
    let pod_link = require(pod, pair.ifname, "pod")?;
    for (link, side) in [(&host_link, "host"), (&pod_link, "pod")] {
        if link.mac.is_none() {
            return Err(err!(Kind::Datapath, "{side} veth {} has no MAC", link.name));
        }
    }
    host.set_link_alias(host_link.index, pair.alias)?;
    pod.set_link_up_by_name("lo")?;
    set_if_differs(&sysctl::rp_filter_key(pair.host_ifname), "0")?;
    Ok((host_link, pod_link))
}

impl PreparedVeth {
    /// Completes the datapath for `spec` (the pair this was prepared for, now with its
    /// addresses). On failure the veth is removed. When the pair vanished since it was
    /// prepared (the daemon's teardown of the attachment's previous ADD, running meanwhile,
    /// found it under the same name and alias), it is built anew.
    pub fn finish(self, spec: &VethSpec) -> Result<VethInfo> {
        self.complete(spec, Vanished::Rebuild)
    }

    fn complete(mut self, spec: &VethSpec, vanished: Vanished) -> Result<VethInfo> {
        if spec.host_ifname != self.host_link.name {
            return Err(err!(
                Kind::Internal,
                "set up {}: the pair was prepared as {}",
                spec.describe(),
                self.host_link.name
            ));
        }
        // A pair that vanished fails the first step on its old indexes; asked only then.
        let result = validate(spec).and_then(|()| match self.configure(spec) {
            Ok(info) => Ok(Some(info)),
            Err(e) if self.still_there()? => Err(e),
            Err(_) => Ok(None),
        });
        match result {
            Ok(Some(info)) => {
                self.kept = true;
                Ok(info)
            }
            Ok(None) if vanished == Vanished::Rebuild => {
                log::info!(
                    "host veth {} vanished after it was prepared; building it again",
                    spec.host_ifname
                );
                drop(self);
                setup(spec)
            }
            Ok(None) => Err(err!(
                Kind::Datapath,
                "set up {}: host link {} vanished during setup",
                spec.describe(),
                spec.host_ifname
            )),
            // Dropping `self` removes the pair.
            Err(e) => Err(e.context(format!("set up {}", spec.describe()))),
        }
    }

    /// Removes the pair (the daemon chose another datapath, or no address); as dropping it.
    pub fn discard(self) {}

    /// Whether the host veth is still the one prepared (same name, same index).
    fn still_there(&mut self) -> Result<bool> {
        Ok(self
            .host
            .link_by_name(&self.host_link.name)?
            .is_some_and(|l| l.index == self.host_link.index))
    }

    fn configure(&mut self, spec: &VethSpec) -> Result<VethInfo> {
        let (host, pod) = (&mut self.host, &mut self.pod);
        let (host_index, pod_index) = (self.host_link.index, self.pod_link.index);
        let host_mac = self.host_link.mac.unwrap_or_default();
        let pod_mac = self.pod_link.mac.unwrap_or_default();

        // Pod side. Links go up before routes: an onlink nexthop needs its device up.
        pod.add_addr(pod_index, spec.pod_net())?;
        if let Some(ip6) = spec.ip6 {
            // Sysctls before the address: it must never be tentative, nor RAs heeded.
            ipv6::prepare_pod_iface(spec.netns, spec.ifname)?;
            pod.add_addr_nodad(pod_index, IpNetwork::V6(Ipv6Network::from(ip6)))?;
        }
        pod.set_link_up(pod_index)?;

        // Host side, in the calling thread's namespace.
        if spec.ip6.is_some() {
            ipv6::prepare_host_veth(host, host_index, spec.host_ifname)?;
        }
        host.set_link_up(host_index)?;
        set_if_differs("net/ipv4/ip_forward", "1")?;
        // Exclusive adds: a route terway did not make (another pod's, the node's own) is never
        // replaced; the old veth's routes went with it in `remove_stale`.
        host.add_route(&spec.host_route(host_index))?;

        pod.add_route(&spec.pod_default_route(pod_index))?;
        pod.replace_neigh_permanent(pod_index, IpAddr::V4(POD_GATEWAY), host_mac)?;

        if let Some(ip6) = spec.ip6 {
            ipv6::enable_forwarding(host)?;
            host.add_route(&host_route6(ip6, host_index))?;
            pod.replace_neigh_permanent(pod_index, IpAddr::V6(POD_GATEWAY_V6), host_mac)?;
            pod.add_route(&pod_default_route6(pod_index))?;
        }

        Ok(VethInfo {
            host_ifname: spec.host_ifname.to_string(),
            host_mac,
            pod_mac,
            mtu: spec.mtu,
        })
    }
}

impl Drop for PreparedVeth {
    fn drop(&mut self) {
        if self.kept {
            return;
        }
        // Only the link prepared: one that replaced it under the same name is not ours.
        let removed = match self.still_there() {
            Ok(true) => delete_host_veth(&mut self.host, &self.host_link),
            Ok(false) => Ok(()),
            Err(e) => Err(e),
        };
        if let Err(e) = removed {
            log::warn!("rollback of {}: {e}", self.host_link.name);
        }
    }
}

/// A host veth of the same name is a leftover of an earlier ADD for this very attachment (the
/// plugin holds the attachment's lock, so no other call is building it): it goes. A link of
/// that name that is not provably this attachment's is never touched.
fn remove_stale(host: &mut Netlink, pair: &VethPair) -> Result<()> {
    if let Some(link) = host.link_by_name(pair.host_ifname)? {
        if let Some(why) = foreign(&link, pair.alias) {
            return Err(err!(Kind::Datapath, "{why}: refusing to touch it"));
        }
        log::info!("removing stale host veth {}", pair.host_ifname);
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

/// Writes a sysctl only when needed: writing `ip_forward` resets per-device settings.
pub(super) fn set_if_differs(key: &str, value: &str) -> Result<()> {
    if sysctl::get(key)? != value {
        sysctl::set(key, value)?;
    }
    Ok(())
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
