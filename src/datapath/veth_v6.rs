//! The IPv6 half of a dual-stack veth pod (see [`super::super::ipv6`] for the recipe): the
//! routes it is made of and their check.

use super::super::ipv6::{self, POD_GATEWAY_V6};
use super::{VethSpec, show_route};
use crate::error::Result;
use crate::netlink::{DEFAULT_DST_V6, Family, Link, Netlink, Route, TABLE_MAIN};
use crate::sysctl;
use ipnetwork::{IpNetwork, Ipv6Network};
use std::net::{IpAddr, Ipv6Addr};

/// The IPv6 routes of a dual-stack pod. IPv6 has no route scopes (the kernel reports every
/// route as universe) and a link-local gateway is on-link by definition: no flags.
pub(super) fn host_route6(ip6: Ipv6Addr, host_index: u32) -> Route {
    Route {
        dst: IpNetwork::V6(Ipv6Network::from(ip6)),
        gateway: None,
        oif: Some(host_index),
        table: TABLE_MAIN,
        scope_link: false,
        onlink: false,
    }
}

pub(super) fn pod_default_route6(pod_index: u32) -> Route {
    Route {
        dst: DEFAULT_DST_V6,
        gateway: Some(IpAddr::V6(POD_GATEWAY_V6)),
        oif: Some(pod_index),
        table: TABLE_MAIN,
        scope_link: false,
        onlink: false,
    }
}

/// The node's IPv6 side of the veth: `ip6/128 dev <veth>`, `fe80::1/64` on it, no RAs.
pub(super) fn check_host_v6(
    host: &mut Netlink,
    link: &Link,
    ip6: Ipv6Addr,
    problems: &mut Vec<String>,
) -> Result<()> {
    let want = host_route6(ip6, link.index);
    let found = host
        .routes_of(Family::V6, TABLE_MAIN)?
        .into_iter()
        .find(|r| r.dst == want.dst);
    match found {
        None => problems.push(format!(
            "host route {} dev {} is missing",
            want.dst, link.name
        )),
        Some(r) if r.oif != want.oif || r.gateway.is_some() => problems.push(format!(
            "host route to {} is {}, want dev {}",
            want.dst,
            show_route(&r),
            link.name
        )),
        Some(_) => {}
    }
    let addrs = host.addrs(Some(link.index))?;
    ipv6::check_addr(
        &addrs,
        ipv6::host_gateway_net(),
        &format!("host veth {}", link.name),
        problems,
    );
    let ra = sysctl::get(&sysctl::ipv6_conf_key(&link.name, "accept_ra"))?;
    if ra != "0" {
        problems.push(format!("accept_ra on {} is {ra}, want 0", link.name));
    }
    Ok(())
}

/// The pod's IPv6: its address (usable, not tentative), `::/0 via fe80::1`, no RAs.
pub(super) fn check_pod_v6(
    pod: &mut Netlink,
    pod_link: &Link,
    ip6: Ipv6Addr,
    spec: &VethSpec,
    problems: &mut Vec<String>,
) -> Result<()> {
    let addrs = pod.addrs(Some(pod_link.index))?;
    let what = format!("pod {}", spec.ifname);
    ipv6::check_addr(
        &addrs,
        IpNetwork::V6(Ipv6Network::from(ip6)),
        &what,
        problems,
    );
    let want = pod_default_route6(pod_link.index);
    let default = pod
        .routes_of(Family::V6, TABLE_MAIN)?
        .into_iter()
        .find(|r| r.dst == DEFAULT_DST_V6);
    match default {
        None => problems.push(format!(
            "pod default route via {POD_GATEWAY_V6} dev {} is missing",
            spec.ifname
        )),
        Some(r) if r.gateway != want.gateway || r.oif != want.oif => problems.push(format!(
            "pod IPv6 default route is {}, want via {POD_GATEWAY_V6} dev {}",
            show_route(&r),
            spec.ifname
        )),
        Some(_) => {}
    }
    ipv6::check_pod_iface(spec.netns, spec.ifname, problems)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_routes_have_the_recipe_shape() {
        let host = host_route6("2001:db8::5".parse().unwrap(), 7);
        assert_eq!(host.dst.to_string(), "2001:db8::5/128");
        assert_eq!(host.oif, Some(7));
        assert!(host.gateway.is_none() && !host.scope_link);
        let def = pod_default_route6(3);
        assert_eq!(def.dst, DEFAULT_DST_V6);
        assert_eq!(def.gateway, Some(IpAddr::V6(POD_GATEWAY_V6)));
        assert_eq!(def.oif, Some(3));
    }
}
