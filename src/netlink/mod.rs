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
use socket::NlSocket;

pub use link::{SHARED_MAC_KINDS, find_link_by_mac, find_link_by_mac_skipping};

/// The main routing table.
pub const TABLE_MAIN: u32 = 254;

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
    pub addr: ipnetwork::IpNetwork,
}

/// An IPv4 unicast route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub dst: ipnetwork::Ipv4Network,
    pub gateway: Option<std::net::Ipv4Addr>,
    pub oif: Option<u32>,
    pub table: u32,
    pub scope_link: bool,
    pub onlink: bool,
}

/// An IPv4 policy routing rule with action "lookup <table>".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub priority: u32,
    pub src: Option<ipnetwork::Ipv4Network>,
    pub dst: Option<ipnetwork::Ipv4Network>,
    pub table: u32,
}

/// A neighbour (ARP/NDP) entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Neigh {
    pub ip: std::net::IpAddr,
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

    /// A socket inside `ns`, created on a throwaway thread and then usable from any thread.
    pub fn open_in(ns: &NetNs) -> Result<Netlink> {
        ns.run(Netlink::open)
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
