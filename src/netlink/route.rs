//! IPv4 route operations.

use super::{Netlink, Route, TABLE_MAIN};
use crate::error::Result;
use ipnetwork::Ipv4Network;
use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE};
use netlink_packet_route::AddressFamily;
use netlink_packet_route::RouteNetlinkMessage as M;
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteProtocol, RouteScope,
    RouteType,
};

/// Builds the RTM_NEWROUTE / RTM_DELROUTE body for `r`.
pub(super) fn route_message(r: &Route, delete: bool) -> RouteMessage {
    let mut msg = RouteMessage::default();
    let h = &mut msg.header;
    h.address_family = AddressFamily::Inet;
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
            .push(RouteAttribute::Destination(RouteAddress::Inet(
                r.dst.network(),
            )));
    }
    if let Some(gw) = r.gateway {
        msg.attributes
            .push(RouteAttribute::Gateway(RouteAddress::Inet(gw)));
    }
    if let Some(oif) = r.oif {
        msg.attributes.push(RouteAttribute::Oif(oif));
    }
    msg
}

/// The route a dumped message describes, if it is an IPv4 unicast route.
pub(super) fn route_from(msg: &RouteMessage) -> Option<Route> {
    let h = &msg.header;
    if h.address_family != AddressFamily::Inet || h.kind != RouteType::Unicast {
        return None;
    }
    let mut dst_ip = std::net::Ipv4Addr::UNSPECIFIED;
    let mut r = Route {
        dst: Ipv4Network::new(dst_ip, 0).ok()?,
        gateway: None,
        oif: None,
        table: u32::from(h.table),
        scope_link: h.scope == RouteScope::Link,
        onlink: h.flags.contains(RouteFlags::Onlink),
    };
    for attr in &msg.attributes {
        match attr {
            RouteAttribute::Destination(RouteAddress::Inet(ip)) => dst_ip = *ip,
            RouteAttribute::Gateway(RouteAddress::Inet(ip)) => r.gateway = Some(*ip),
            RouteAttribute::Oif(i) => r.oif = Some(*i),
            RouteAttribute::Table(t) => r.table = *t,
            _ => {}
        }
    }
    r.dst = Ipv4Network::new(dst_ip, h.destination_prefix_length).ok()?;
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
        match self.sock.request(M::DelRoute(route_message(r, true)), 0) {
            Ok(_) => Ok(()),
            Err(e) if matches!(e.errno(), Some(libc::ESRCH | libc::ENOENT)) => Ok(()),
            Err(e) => {
                let dev = r.oif.map(|i| self.name_of(i));
                Err(e.into_error(format!("delete route {}", describe(r, dev.as_deref()))))
            }
        }
    }

    /// The IPv4 unicast routes of one table.
    pub fn routes(&mut self, table: u32) -> Result<Vec<Route>> {
        let mut req = RouteMessage::default();
        req.header.address_family = AddressFamily::Inet;
        let msgs = self
            .sock
            .dump(M::GetRoute(req))
            .map_err(|e| e.into_error(format!("list routes of table {table}")))?;
        Ok(msgs
            .iter()
            .filter_map(|m| match m {
                M::NewRoute(r) => route_from(r),
                _ => None,
            })
            .filter(|r| r.table == table)
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn default_via(table: u32) -> Route {
        Route {
            dst: "0.0.0.0/0".parse().unwrap(),
            gateway: Some(Ipv4Addr::new(169, 254, 1, 1)),
            oif: Some(2),
            table,
            scope_link: false,
            onlink: true,
        }
    }

    #[test]
    fn add_message_round_trips() {
        for table in [TABLE_MAIN, 1003] {
            let r = default_via(table);
            let msg = route_message(&r, false);
            assert_eq!(route_from(&msg), Some(r.clone()));
            let expect_hdr = if table == TABLE_MAIN { 254 } else { 0 };
            assert_eq!(msg.header.table, expect_hdr);
        }
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
        let msg = route_message(&default_via(TABLE_MAIN), true);
        assert_eq!(msg.header.scope, RouteScope::NoWhere);
        assert_eq!(msg.header.kind, RouteType::Unspec);
        assert_eq!(route_from(&msg), None);
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
    }
}
