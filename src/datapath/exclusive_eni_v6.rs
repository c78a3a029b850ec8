//! The IPv6 half of an exclusive ENI pod (dual stack): the ENI's IPv6 address on the pod
//! interface with the vSwitch's IPv6 prefix, no DAD and no RAs (see [`super::super::ipv6`]),
//! and `::/0 via <vSwitch IPv6 gateway> dev eth0`. The host peer veth stays IPv4-only: the
//! allocation names no IPv6 service CIDR or node address to route through it.

use super::super::ipv6;
use crate::error::{Error, Kind, Result};
use crate::netlink::{DEFAULT_DST_V6, Family, Netlink, Route, TABLE_MAIN};
use crate::netns::NetNs;
use ipnetwork::{IpNetwork, Ipv6Network};
use std::net::{IpAddr, Ipv6Addr};

/// The ENI's IPv6 address and the vSwitch's IPv6 gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EniIpv6 {
    /// The ENI's IPv6 address with the vSwitch's IPv6 prefix length, e.g. `2408:…::10/64`.
    pub addr: Ipv6Network,
    /// The vSwitch's IPv6 gateway: inside `addr`'s prefix, or link-local.
    pub gateway: Ipv6Addr,
}

impl EniIpv6 {
    pub(in crate::datapath) fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(Error::new(Kind::InvalidConfig, msg));
        let (ip, gw) = (self.addr.ip(), self.gateway);
        if ipv6::unusable(&ip) {
            return bad(format!("{ip} is not a usable pod IPv6 address"));
        }
        if self.addr.prefix() == 0 || self.addr.prefix() > 127 {
            return bad(format!(
                "{}: the pod IPv6 address needs its vSwitch prefix length (1-127), e.g. {ip}/64",
                self.addr
            ));
        }
        let usable_gw = !(gw.is_unspecified() || gw.is_loopback() || gw.is_multicast());
        if !usable_gw || gw == ip || !(self.addr.contains(gw) || ipv6::is_link_local(&gw)) {
            return bad(format!(
                "IPv6 gateway {gw} must be another address inside the vSwitch {}/{} or link-local",
                self.addr.network(),
                self.addr.prefix()
            ));
        }
        Ok(())
    }

    /// `::/0 via <gateway> dev <eni>`: the gateway is on-link through the prefix route (or is
    /// link-local), as the IPv4 default route's.
    pub(in crate::datapath) fn default_route(&self, eni_index: u32) -> Route {
        Route {
            dst: DEFAULT_DST_V6,
            gateway: Some(IpAddr::V6(self.gateway)),
            oif: Some(eni_index),
            table: TABLE_MAIN,
            scope_link: false,
            onlink: false,
        }
    }

    /// Before the pod interface goes up: sysctls, then the address (never tentative).
    pub(in crate::datapath) fn add_addr(
        &self,
        pod: &mut Netlink,
        ns: &NetNs,
        ifname: &str,
        index: u32,
    ) -> Result<()> {
        ipv6::prepare_pod_iface(ns, ifname)?;
        pod.add_addr_nodad(index, IpNetwork::V6(self.addr))
    }

    /// Notes what is missing or wrong of the pod's IPv6 on interface `index` (named `name`).
    pub(in crate::datapath) fn check(
        &self,
        pod: &mut Netlink,
        ns: &NetNs,
        index: u32,
        name: &str,
        problems: &mut Vec<String>,
    ) -> Result<()> {
        let addrs = pod.addrs(Some(index))?;
        ipv6::check_addr(
            &addrs,
            IpNetwork::V6(self.addr),
            &format!("pod {name}"),
            problems,
        );
        let routes = pod.routes_of(Family::V6, TABLE_MAIN)?;
        let shown = format!("pod IPv6 default route via {} dev {name}", self.gateway);
        super::check_route(&routes, &self.default_route(index), &shown, problems);
        ipv6::check_pod_iface(ns, name, problems)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v6(addr: &str, gw: &str) -> EniIpv6 {
        EniIpv6 {
            addr: addr.parse().unwrap(),
            gateway: gw.parse().unwrap(),
        }
    }

    #[test]
    fn gateways_inside_the_prefix_or_link_local() {
        v6("2408:4005:3ff:1::10/64", "2408:4005:3ff:1::1")
            .validate()
            .unwrap();
        v6("2408:4005:3ff:1::10/64", "fe80::1").validate().unwrap();
        for (addr, gw, what) in [
            (
                "2408:4005:3ff:1::10/64",
                "2408:4005:3ff:2::1",
                "inside the vSwitch",
            ),
            (
                "2408:4005:3ff:1::10/64",
                "2408:4005:3ff:1::10",
                "inside the vSwitch",
            ),
            ("2408:4005:3ff:1::10/64", "ff02::1", "inside the vSwitch"),
            ("2408:4005:3ff:1::10/128", "fe80::1", "prefix length"),
            ("fe80::10/64", "fe80::1", "not a usable"),
        ] {
            let e = v6(addr, gw).validate().unwrap_err();
            assert_eq!(e.kind, Kind::InvalidConfig);
            assert!(e.msg.contains(what), "{addr} via {gw}: {}", e.msg);
        }
    }

    #[test]
    fn default_route_goes_via_the_gateway() {
        let r = v6("2408:4005:3ff:1::10/64", "2408:4005:3ff:1::1").default_route(4);
        assert_eq!(r.dst, DEFAULT_DST_V6);
        assert_eq!(r.gateway, Some("2408:4005:3ff:1::1".parse().unwrap()));
        assert_eq!(r.oif, Some(4));
    }
}
