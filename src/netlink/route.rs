//! Route operations, IPv4 and IPv6.

use super::{Family, Netlink, Route, TABLE_MAIN};
use crate::err;
use crate::error::{Kind, Result};
use ipnetwork::IpNetwork;
use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE};
use netlink_packet_route::RouteNetlinkMessage as M;
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteProtocol, RouteScope,
    RouteType,
};
use std::net::IpAddr;

/// A gateway of another family than the destination is a caller's bug, refused before the
/// kernel sees it (it would answer with a bare EINVAL).
fn check_families(r: &Route) -> Result<()> {
    match r.gateway {
        Some(gw) if Family::of_ip(&gw) != r.family() => Err(err!(
            Kind::InvalidConfig,
            "route {}: gateway {gw} is {} but the destination is {}",
            describe(r, None),
            Family::of_ip(&gw),
            r.family()
        )),
        _ => Ok(()),
    }
}

/// Builds the RTM_NEWROUTE / RTM_DELROUTE body for `r` (its family is `r.dst`'s).
pub(super) fn route_message(r: &Route, delete: bool) -> RouteMessage {
    let mut msg = RouteMessage::default();
    let h = &mut msg.header;
    h.address_family = r.family().address_family();
    h.destination_prefix_length = r.dst.prefix();
    // Tables above 255 only fit in RTA_TABLE; the header then says "unspec".
    h.table = u8::try_from(r.table).unwrap_or(RouteHeader::RT_TABLE_UNSPEC);
    if delete {
        // Wildcards: the kernel then matches on destination, table, gateway and oif only.
        h.protocol = RouteProtocol::Unspec;
        h.scope = RouteScope::NoWhere;
        h.kind = RouteType::Unspec;
    } else {
        h.protocol = RouteProtocol::Boot;
        h.scope = if r.scope_link {
            RouteScope::Link
        } else {
            RouteScope::Universe
        };
        h.kind = RouteType::Unicast;
    }
    if r.onlink {
        h.flags = RouteFlags::Onlink;
    }
    msg.attributes.push(RouteAttribute::Table(r.table));
    if r.dst.prefix() > 0 {
        msg.attributes
            .push(RouteAttribute::Destination(RouteAddress::from(
                r.dst.network(),
            )));
    }
    if let Some(gw) = r.gateway {
        msg.attributes
            .push(RouteAttribute::Gateway(RouteAddress::from(gw)));
    }
    if let Some(oif) = r.oif {
        msg.attributes.push(RouteAttribute::Oif(oif));
    }
    msg
}

/// An address attribute as an address of `family`; `None` for another family or kind.
fn addr_of(a: &RouteAddress, family: Family) -> Option<IpAddr> {
    match (a, family) {
        (RouteAddress::Inet(ip), Family::V4) => Some(IpAddr::V4(*ip)),
        (RouteAddress::Inet6(ip), Family::V6) => Some(IpAddr::V6(*ip)),
        _ => None,
    }
}

/// The route a dumped message describes, if it is an IPv4 or IPv6 unicast route.
pub(super) fn route_from(msg: &RouteMessage) -> Option<Route> {
    let h = &msg.header;
    let family = Family::from_address_family(h.address_family)?;
    if h.kind != RouteType::Unicast {
        return None;
    }
    let mut dst_ip = family.default_dst().ip();
    let mut r = Route {
        dst: family.default_dst(),
        gateway: None,
        oif: None,
        table: u32::from(h.table),
        scope_link: h.scope == RouteScope::Link,
        onlink: h.flags.contains(RouteFlags::Onlink),
    };
    for attr in &msg.attributes {
        match attr {
            RouteAttribute::Destination(a) => dst_ip = addr_of(a, family)?,
            RouteAttribute::Gateway(a) => r.gateway = Some(addr_of(a, family)?),
            RouteAttribute::Oif(i) => r.oif = Some(*i),
            RouteAttribute::Table(t) => r.table = *t,
            _ => {}
        }
    }
    r.dst = IpNetwork::new(dst_ip, h.destination_prefix_length).ok()?;
    Some(r)
}

/// `10.0.0.5/32 via 10.0.0.1 dev eth0 table 1003`, as `ip route` would print it.
fn describe(r: &Route, dev: Option<&str>) -> String {
    let mut s = if r.dst.prefix() == 0 {
        "default".to_string()
    } else {
        r.dst.to_string()
    };
    if let Some(gw) = r.gateway {
        s.push_str(&format!(" via {gw}"));
    }
    if let Some(dev) = dev {
        s.push_str(&format!(" dev {dev}"));
    }
    if r.table != TABLE_MAIN {
        s.push_str(&format!(" table {}", r.table));
    }
    s
}

impl Netlink {
    /// Adds or replaces `r` (NLM_F_CREATE | NLM_F_REPLACE).
    pub fn replace_route(&mut self, r: &Route) -> Result<()> {
        check_families(r)?;
        let msg = route_message(r, false);
        match self
            .sock
            .request(M::NewRoute(msg), NLM_F_CREATE | NLM_F_REPLACE)
        {
            Ok(_) => Ok(()),
            Err(e) => {
                let dev = r.oif.map(|i| self.name_of(i));
                Err(e.into_error(format!("add route {}", describe(r, dev.as_deref()))))
            }
        }
    }

    /// Adds `r` only if no route to the same destination exists in its table (NLM_F_EXCL): a
    /// route somebody else made is never replaced. EEXIST says so in the error.
    pub fn add_route(&mut self, r: &Route) -> Result<()> {
        check_families(r)?;
        let msg = route_message(r, false);
        match self
            .sock
            .request(M::NewRoute(msg), NLM_F_CREATE | NLM_F_EXCL)
        {
            Ok(_) => Ok(()),
            Err(e) => {
                let exists = e.errno() == Some(libc::EEXIST);
                let dev = r.oif.map(|i| self.name_of(i));
                let what = describe(r, dev.as_deref());
                let mut err = e.into_error(format!("add route {what}"));
                if exists {
                    err = err.context(format!(
                        "a route to {} already exists in table {} and terway did not make it: refusing to replace it",
                        r.dst, r.table
                    ));
                }
                Err(err)
            }
        }
    }

    /// Deletes `r`; a route that is not there is success.
    pub fn del_route(&mut self, r: &Route) -> Result<()> {
        check_families(r)?;
        match self.sock.request(M::DelRoute(route_message(r, true)), 0) {
            Ok(_) => Ok(()),
            Err(e) if matches!(e.errno(), Some(libc::ESRCH | libc::ENOENT)) => Ok(()),
            Err(e) => {
                let dev = r.oif.map(|i| self.name_of(i));
                Err(e.into_error(format!("delete route {}", describe(r, dev.as_deref()))))
            }
        }
    }

    /// The IPv4 unicast routes of one table; see [`Netlink::routes_of`] for IPv6.
    pub fn routes(&mut self, table: u32) -> Result<Vec<Route>> {
        self.routes_of(Family::V4, table)
    }

    /// The unicast routes of one family in one table.
    pub fn routes_of(&mut self, family: Family, table: u32) -> Result<Vec<Route>> {
        let mut req = RouteMessage::default();
        req.header.address_family = family.address_family();
        let msgs = self
            .sock
            .dump(M::GetRoute(req))
            .map_err(|e| e.into_error(format!("list {family} routes of table {table}")))?;
        Ok(msgs
            .iter()
            .filter_map(|m| match m {
                M::NewRoute(r) => route_from(r),
                _ => None,
            })
            .filter(|r| r.family() == family && r.table == table)
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_route::AddressFamily;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn default_via(table: u32) -> Route {
        Route {
            dst: "0.0.0.0/0".parse().unwrap(),
            gateway: Some(Ipv4Addr::new(169, 254, 1, 1).into()),
            oif: Some(2),
            table,
            scope_link: false,
            onlink: true,
        }
    }

    fn default_via6(table: u32) -> Route {
        Route {
            dst: "::/0".parse().unwrap(),
            gateway: Some("fe80::1".parse().unwrap()),
            oif: Some(2),
            table,
            scope_link: false,
            onlink: true,
        }
    }

    /// `msg` as an RTM_NEWROUTE request on the wire, parsed back.
    fn through_bytes(msg: &RouteMessage) -> RouteMessage {
        match super::super::through_the_wire(M::NewRoute(msg.clone())) {
            M::NewRoute(m) => m,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn add_message_round_trips() {
        for table in [TABLE_MAIN, 1003] {
            for r in [default_via(table), default_via6(table)] {
                let msg = route_message(&r, false);
                assert_eq!(route_from(&msg), Some(r.clone()));
                assert_eq!(route_from(&through_bytes(&msg)), Some(r.clone()));
                let expect_hdr = if table == TABLE_MAIN { 254 } else { 0 };
                assert_eq!(msg.header.table, expect_hdr);
            }
        }
    }

    #[test]
    fn ipv6_messages_say_inet6_and_carry_ipv6_addresses() {
        let r = Route {
            dst: "fd00:10::7/64".parse().unwrap(),
            gateway: Some("fd00::1".parse().unwrap()),
            oif: Some(4),
            table: 1004,
            scope_link: false,
            onlink: false,
        };
        let msg = through_bytes(&route_message(&r, false));
        assert_eq!(msg.header.address_family, AddressFamily::Inet6);
        assert_eq!(msg.header.destination_prefix_length, 64);
        let net: Ipv6Addr = "fd00:10::".parse().unwrap();
        assert!(
            msg.attributes
                .contains(&RouteAttribute::Destination(RouteAddress::Inet6(net)))
        );
        assert!(
            msg.attributes
                .contains(&RouteAttribute::Gateway(RouteAddress::Inet6(
                    "fd00::1".parse().unwrap()
                )))
        );
        assert!(msg.attributes.contains(&RouteAttribute::Table(1004)));
        let back = route_from(&msg).unwrap();
        assert_eq!(back.dst.to_string(), "fd00:10::/64");
        assert_eq!(back.family(), Family::V6);
        assert_eq!(back.gateway, r.gateway);

        let host = Route {
            dst: "fd00::5/128".parse().unwrap(),
            gateway: None,
            oif: Some(9),
            table: TABLE_MAIN,
            scope_link: true,
            onlink: false,
        };
        assert_eq!(
            route_from(&through_bytes(&route_message(&host, false))),
            Some(host)
        );
    }

    #[test]
    fn mixed_families_are_refused_and_never_parsed() {
        let mut r = default_via(TABLE_MAIN);
        r.gateway = Some("fe80::1".parse().unwrap());
        let e = check_families(&r).unwrap_err();
        assert_eq!(e.kind, Kind::InvalidConfig);
        assert!(e.msg.contains("gateway fe80::1 is IPv6"), "{}", e.msg);
        check_families(&default_via(TABLE_MAIN)).unwrap();
        check_families(&default_via6(TABLE_MAIN)).unwrap();
        check_families(&Route {
            gateway: None,
            ..default_via6(TABLE_MAIN)
        })
        .unwrap();
        // A dumped IPv4 message with an IPv6 attribute is not a route we understand.
        let mut msg = route_message(&default_via(TABLE_MAIN), false);
        msg.attributes
            .retain(|a| !matches!(a, RouteAttribute::Gateway(_)));
        msg.attributes
            .push(RouteAttribute::Gateway(RouteAddress::Inet6(
                Ipv6Addr::LOCALHOST,
            )));
        assert_eq!(route_from(&msg), None);
        // Neither is another family.
        let mut msg = route_message(&default_via(TABLE_MAIN), false);
        msg.header.address_family = AddressFamily::Mpls;
        assert_eq!(route_from(&msg), None);
    }

    #[test]
    fn host_route_is_scope_link_and_network_address_is_used() {
        let r = Route {
            dst: "10.240.1.0/24".parse().unwrap(),
            gateway: None,
            oif: Some(5),
            table: TABLE_MAIN,
            scope_link: true,
            onlink: false,
        };
        let msg = route_message(&r, false);
        assert_eq!(msg.header.scope, RouteScope::Link);
        assert_eq!(route_from(&msg), Some(r));
        let odd = Route {
            dst: "10.240.1.7/24".parse().unwrap(),
            ..default_via(TABLE_MAIN)
        };
        let msg = route_message(&odd, false);
        assert!(
            msg.attributes
                .contains(&RouteAttribute::Destination(RouteAddress::Inet(
                    Ipv4Addr::new(10, 240, 1, 0)
                )))
        );
    }

    #[test]
    fn delete_message_uses_wildcards() {
        for r in [default_via(TABLE_MAIN), default_via6(TABLE_MAIN)] {
            let msg = route_message(&r, true);
            assert_eq!(msg.header.scope, RouteScope::NoWhere);
            assert_eq!(msg.header.kind, RouteType::Unspec);
            assert_eq!(route_from(&msg), None);
        }
    }

    #[test]
    fn descriptions_read_like_iproute2() {
        let r = Route {
            dst: "10.0.0.5/32".parse().unwrap(),
            gateway: None,
            oif: Some(9),
            table: TABLE_MAIN,
            scope_link: true,
            onlink: false,
        };
        assert_eq!(describe(&r, Some("tw1234")), "10.0.0.5/32 dev tw1234");
        assert_eq!(
            describe(&default_via(1003), Some("eth1")),
            "default via 169.254.1.1 dev eth1 table 1003"
        );
        assert_eq!(
            describe(&default_via6(1003), Some("eth1")),
            "default via fe80::1 dev eth1 table 1003"
        );
        let r6 = Route {
            dst: "fd00::5/128".parse().unwrap(),
            ..r
        };
        assert_eq!(describe(&r6, None), "fd00::5/128");
    }
}
