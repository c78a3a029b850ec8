//! Typed, blocking rtnetlink operations (links, addresses, routes, rules, neighbours) over one
//! NETLINK_ROUTE socket. A socket belongs to the namespace it was created in: open one inside a
//! pod namespace with [`Netlink::open_in`] and keep using it from the calling thread.

mod addr;
mod link;
mod neigh;
mod route;
mod rule;
mod socket;

use crate::err;
use crate::error::{Kind, Result, ResultExt};
use crate::netns::NetNs;
use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};
use netlink_packet_route::AddressFamily;
use socket::NlSocket;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub use link::{
    IpvlanMode, LinkKind, LinkSpec, MacvlanMode, SHARED_MAC_KINDS, find_link_by_mac,
    find_link_by_mac_skipping,
};

/// The main routing table.
pub const TABLE_MAIN: u32 = 254;

/// `0.0.0.0/0`; `new_checked` is const, so a bad prefix would fail the build, not at runtime.
pub const DEFAULT_DST_V4: IpNetwork = match Ipv4Network::new_checked(Ipv4Addr::UNSPECIFIED, 0) {
    Some(n) => IpNetwork::V4(n),
    None => panic!("0.0.0.0/0 is valid"),
};

/// `::/0`, built at compile time like [`DEFAULT_DST_V4`].
pub const DEFAULT_DST_V6: IpNetwork = match Ipv6Network::new_checked(Ipv6Addr::UNSPECIFIED, 0) {
    Some(n) => IpNetwork::V6(n),
    None => panic!("::/0 is valid"),
};

/// A blocking NETLINK_ROUTE socket bound to one network namespace.
pub struct Netlink {
    sock: NlSocket,
}

/// A network interface as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub mac: Option<[u8; 6]>,
    pub mtu: u32,
    /// Administratively up (IFF_UP).
    pub up: bool,
    /// `IFLA_INFO_KIND`: "veth", "dummy", ...; `None` for physical devices and loopback.
    pub kind: Option<String>,
    /// `IFLA_IFALIAS`: terway marks the links it makes with the attachment they belong to.
    pub alias: Option<String>,
}

/// An address on an interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Addr {
    pub index: u32,
    pub addr: IpNetwork,
    /// `IFA_F_*` bits as the kernel reports them (see [`Addr::tentative`]).
    pub flags: u32,
}

/// `IFA_F_NODAD`: added without duplicate address detection.
pub const IFA_F_NODAD: u32 = 0x02;
/// `IFA_F_DADFAILED`: duplicate address detection found the address in use elsewhere.
pub const IFA_F_DADFAILED: u32 = 0x08;
/// `IFA_F_TENTATIVE`: duplicate address detection still running; the address is not usable.
pub const IFA_F_TENTATIVE: u32 = 0x40;

impl Addr {
    /// Not usable yet (DAD running) or never (DAD failed).
    pub fn tentative(&self) -> bool {
        self.flags & (IFA_F_TENTATIVE | IFA_F_DADFAILED) != 0
    }
}

/// An address family: IPv4 or IPv6.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    /// The family of a prefix.
    pub fn of(net: &IpNetwork) -> Family {
        match net {
            IpNetwork::V4(_) => Family::V4,
            IpNetwork::V6(_) => Family::V6,
        }
    }

    /// The family of an address.
    pub fn of_ip(ip: &IpAddr) -> Family {
        match ip {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }

    /// The default destination of this family: `0.0.0.0/0` or `::/0`.
    pub fn default_dst(self) -> IpNetwork {
        match self {
            Family::V4 => DEFAULT_DST_V4,
            Family::V6 => DEFAULT_DST_V6,
        }
    }

    fn address_family(self) -> AddressFamily {
        match self {
            Family::V4 => AddressFamily::Inet,
            Family::V6 => AddressFamily::Inet6,
        }
    }

    fn from_address_family(af: AddressFamily) -> Option<Family> {
        match af {
            AddressFamily::Inet => Some(Family::V4),
            AddressFamily::Inet6 => Some(Family::V6),
            _ => None,
        }
    }
}

impl std::fmt::Display for Family {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        })
    }
}

/// A unicast route, IPv4 or IPv6 (the family is `dst`'s; a gateway must be of the same family).
///
/// The kernel keeps no scope for IPv6 routes (it reports every one as universe), so a dumped
/// IPv6 route never has `scope_link` set, whatever it was created with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub dst: IpNetwork,
    pub gateway: Option<IpAddr>,
    pub oif: Option<u32>,
    pub table: u32,
    pub scope_link: bool,
    pub onlink: bool,
}

impl Route {
    pub fn family(&self) -> Family {
        Family::of(&self.dst)
    }
}

/// A policy routing rule with action "lookup <table>". `src` and `dst`, when set, must be of
/// `family`; a rule with neither ("from all") still belongs to one family, hence the field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub family: Family,
    pub priority: u32,
    pub src: Option<IpNetwork>,
    pub dst: Option<IpNetwork>,
    pub table: u32,
}

/// A neighbour (ARP/NDP) entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Neigh {
    pub ip: IpAddr,
    pub mac: Option<[u8; 6]>,
    pub permanent: bool,
}

impl Netlink {
    /// A socket in the calling thread's network namespace.
    pub fn open() -> Result<Netlink> {
        Ok(Netlink {
            sock: NlSocket::new()?,
        })
    }

    /// A socket inside `ns` (made there by the calling thread, which returns to its own
    /// namespace right after), usable from any thread.
    pub fn open_in(ns: &NetNs) -> Result<Netlink> {
        ns.run_here(Netlink::open)
            .and_then(|r| r)
            .with_ctx(|| format!("netns {}", ns.path().display()))
    }

    /// The interface name for error messages; falls back to `if#<index>`.
    fn name_of(&mut self, index: u32) -> String {
        match self.link_by_index(index) {
            Ok(Some(l)) => l.name,
            _ => format!("if#{index}"),
        }
    }
}

/// `02:ab:cd:ef:01:23`, lowercase.
pub fn format_mac(mac: &[u8; 6]) -> String {
    let parts: Vec<String> = mac.iter().map(|b| format!("{b:02x}")).collect();
    parts.join(":")
}

/// Parses `02:ab:cd:ef:01:23` (also `-` separated, any case).
pub fn parse_mac(s: &str) -> Result<[u8; 6]> {
    let bad = || {
        err!(
            Kind::Decode,
            "invalid MAC address {s:?}: want six hex bytes like 02:ab:cd:ef:01:23"
        )
    };
    let parts: Vec<&str> = s.trim().split([':', '-']).collect();
    if parts.len() != 6 {
        return Err(bad());
    }
    let mut mac = [0u8; 6];
    for (i, p) in parts.iter().enumerate() {
        if p.len() != 2 || !p.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad());
        }
        mac[i] = u8::from_str_radix(p, 16).map_err(|_| bad())?;
    }
    Ok(mac)
}

/// A 6-byte hardware address from a netlink attribute, if it is one.
fn mac_from(bytes: &[u8]) -> Option<[u8; 6]> {
    bytes.try_into().ok()
}

/// Test support: `msg` as a request on the wire (netlink header included, as the socket sends
/// it), parsed back as the kernel would parse it.
#[cfg(test)]
pub(crate) fn through_the_wire(
    msg: netlink_packet_route::RouteNetlinkMessage,
) -> netlink_packet_route::RouteNetlinkMessage {
    use netlink_packet_core::{NetlinkHeader, NetlinkMessage, NetlinkPayload};
    let mut header = NetlinkHeader::default();
    header.flags = netlink_packet_core::NLM_F_REQUEST;
    let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(msg));
    packet.finalize();
    let mut buf = vec![0u8; packet.buffer_len()];
    packet.serialize(&mut buf);
    let back = NetlinkMessage::<netlink_packet_route::RouteNetlinkMessage>::deserialize(&buf)
        .expect("parse back what we built");
    assert_eq!(back.header.length as usize, buf.len());
    match back.payload {
        NetlinkPayload::InnerMessage(m) => m,
        other => panic!("not an rtnetlink message: {other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_round_trip() {
        let mac = parse_mac("02:AB:cd:0e:01:ff").unwrap();
        assert_eq!(mac, [0x02, 0xab, 0xcd, 0x0e, 0x01, 0xff]);
        assert_eq!(format_mac(&mac), "02:ab:cd:0e:01:ff");
        assert_eq!(parse_mac("02-ab-cd-0e-01-ff").unwrap(), mac);
    }

    #[test]
    fn bad_macs_are_errors() {
        for s in [
            "",
            "02:ab:cd:0e:01",
            "02:ab:cd:0e:01:ff:00",
            "2:ab:cd:0e:01:ff",
            "zz:ab:cd:0e:01:ff",
            "+1:ab:cd:0e:01:ff",
        ] {
            let e = parse_mac(s).unwrap_err();
            assert_eq!(e.kind, Kind::Decode, "{s}");
        }
    }

    #[test]
    fn mac_from_checks_length() {
        assert_eq!(mac_from(&[1, 2, 3, 4, 5, 6]), Some([1, 2, 3, 4, 5, 6]));
        assert_eq!(mac_from(&[1, 2, 3]), None);
    }
}
