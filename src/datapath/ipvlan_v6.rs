//! The IPv6 half of an ipvlan pod (dual stack), as its IPv4 half: the pod's slave carries the
//! IPv6 address with the vSwitch's IPv6 prefix (no DAD, no RAs, see [`super::super::ipv6`])
//! and routes `::/0 via <vSwitch IPv6 gateway>` ([`EniIpv6`], as an exclusive ENI's); the node reaches it through its host slave
//! (`ip6/128 dev ipvl_<ifindex>` and a permanent neighbour to the ENI's MAC). What the pod
//! sends to the node's own stack stays IPv4: the allocation names no IPv6 service CIDR or node
//! address.

use super::super::exclusive_eni::EniIpv6;
use super::super::veth::set_if_differs;
use crate::error::{Error, Kind, Result};
use crate::netlink::{Link, Netlink, Route, TABLE_MAIN, format_mac};
use crate::sysctl;
use ipnetwork::{IpNetwork, Ipv6Network};
use std::net::{IpAddr, Ipv6Addr};

pub(super) fn validate(v6: &EniIpv6, mtu: u32) -> Result<()> {
    v6.validate()?;
    if mtu < 1280 {
        return Err(Error::new(
            Kind::InvalidConfig,
            format!(
                "MTU {mtu} is below IPv6's minimum of 1280: a dual-stack pod needs at least that"
            ),
        ));
    }
    Ok(())
}

/// The node's route to the pod's IPv6 address through the host slave (IPv6 routes carry no
/// scope).
pub fn host_route6(ip6: Ipv6Addr, slave_index: u32) -> Route {
    Route {
        dst: IpNetwork::V6(Ipv6Network::from(ip6)),
        gateway: None,
        oif: Some(slave_index),
        table: TABLE_MAIN,
        scope_link: false,
        onlink: false,
    }
}

/// The host slave speaks IPv6 but learns nothing from RAs (they would come from pods).
pub(super) fn prepare_slave(slave: &Link) -> Result<()> {
    set_if_differs(&sysctl::ipv6_conf_key(&slave.name, "disable_ipv6"), "0")?;
    set_if_differs(&sysctl::ipv6_conf_key(&slave.name, "accept_ra"), "0")
}

/// The node's side: route and permanent neighbour on the host slave.
pub(super) fn wire_host(
    host: &mut Netlink,
    ip6: Ipv6Addr,
    mac: [u8; 6],
    slave: &Link,
) -> Result<()> {
    prepare_slave(slave)?;
    host.replace_neigh_permanent(slave.index, IpAddr::V6(ip6), mac)?;
    host.add_route(&host_route6(ip6, slave.index))
}

/// Notes a missing or wrong host route or neighbour of the pod's IPv6 address.
pub(super) fn check_host(
    host: &mut Netlink,
    ip6: Ipv6Addr,
    mac: [u8; 6],
    slave: &Link,
    problems: &mut Vec<String>,
) -> Result<()> {
    let shown = format!("host route {ip6}/128 dev {}", slave.name);
    let routes = host.routes_of(crate::netlink::Family::V6, TABLE_MAIN)?;
    super::check_route(&routes, &host_route6(ip6, slave.index), &shown, problems);
    let neigh = host
        .neighs(slave.index)?
        .into_iter()
        .find(|n| n.ip == IpAddr::V6(ip6));
    match neigh {
        Some(n) if n.permanent && n.mac == Some(mac) => {}
        Some(_) => problems.push(format!(
            "host neighbour {ip6} on {} is not {} permanent",
            slave.name,
            format_mac(&mac)
        )),
        None => problems.push(format!(
            "host neighbour {ip6} lladdr {} on {} is missing",
            format_mac(&mac),
            slave.name
        )),
    }
    let ra = sysctl::get(&sysctl::ipv6_conf_key(&slave.name, "accept_ra"))?;
    if ra != "0" {
        problems.push(format!("accept_ra on {} is {ra}, want 0", slave.name));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_route_is_a_slash_128_on_the_slave() {
        let r = host_route6("2408:4005:3ff:1::10".parse().unwrap(), 9);
        assert_eq!(r.dst.to_string(), "2408:4005:3ff:1::10/128");
        assert_eq!(r.oif, Some(9));
        assert!(r.gateway.is_none() && !r.scope_link && !r.onlink);
    }

    #[test]
    fn small_mtus_and_bad_gateways_are_refused() {
        let v6 = EniIpv6 {
            addr: "2408:4005:3ff:1::10/64".parse().unwrap(),
            gateway: "2408:4005:3ff:1::1".parse().unwrap(),
        };
        validate(&v6, 1500).unwrap();
        assert!(validate(&v6, 1200).unwrap_err().msg.contains("1280"));
        let off = EniIpv6 {
            gateway: "2408:4005:3ff:2::1".parse().unwrap(),
            ..v6
        };
        assert_eq!(validate(&off, 1500).unwrap_err().kind, Kind::InvalidConfig);
    }
}
