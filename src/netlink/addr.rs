//! Address operations.

use super::{Addr, Netlink};
use crate::error::Result;
use ipnetwork::IpNetwork;
use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::AddressFamily;
use netlink_packet_route::RouteNetlinkMessage as M;
use netlink_packet_route::address::{
    AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage,
};
use std::net::IpAddr;

pub(super) fn addr_message(index: u32, addr: IpNetwork) -> AddressMessage {
    let mut msg = AddressMessage::default();
    msg.header.index = index;
    msg.header.prefix_len = addr.prefix();
    msg.header.family = match addr {
        IpNetwork::V4(_) => AddressFamily::Inet,
        IpNetwork::V6(_) => AddressFamily::Inet6,
    };
    // As iproute2 does: IPv4 needs IFA_LOCAL (the address) and IFA_ADDRESS (the peer, same).
    if addr.is_ipv4() {
        msg.attributes.push(AddressAttribute::Local(addr.ip()));
    }
    msg.attributes.push(AddressAttribute::Address(addr.ip()));
    msg
}

/// [`addr_message`] with `IFA_F_NODAD`: an IPv6 address usable at once, without the second or
/// so of duplicate address detection (the address is the VPC's to give; nobody else holds it).
/// The flag goes in both the header byte and `IFA_FLAGS`, as iproute2 sends it.
pub(super) fn addr_message_nodad(index: u32, addr: IpNetwork) -> AddressMessage {
    let mut msg = addr_message(index, addr);
    msg.header.flags = AddressHeaderFlags::Nodad;
    msg.attributes
        .push(AddressAttribute::Flags(AddressFlags::Nodad));
    msg
}

fn addr_from(msg: &AddressMessage) -> Option<Addr> {
    let mut local = None;
    let mut address = None;
    // IFA_FLAGS (32 bits) supersedes the header's 8 when present.
    let mut flags = u32::from(msg.header.flags.bits());
    for attr in &msg.attributes {
        match attr {
            AddressAttribute::Local(ip) => local = Some(*ip),
            AddressAttribute::Address(ip) => address = Some(*ip),
            AddressAttribute::Flags(f) => flags = f.bits(),
            _ => {}
        }
    }
    // IFA_LOCAL is the interface's own address; IFA_ADDRESS is the peer on point-to-point links.
    let ip: IpAddr = local.or(address)?;
    let addr = IpNetwork::new(ip, msg.header.prefix_len).ok()?;
    Some(Addr {
        index: msg.header.index,
        addr,
        flags,
    })
}

impl Netlink {
    /// Adds `addr` to link `index`; an address that is already there is success.
    pub fn add_addr(&mut self, index: u32, addr: IpNetwork) -> Result<()> {
        match self.sock.request(
            M::NewAddress(addr_message(index, addr)),
            NLM_F_CREATE | NLM_F_EXCL,
        ) {
            Ok(_) => Ok(()),
            Err(e) if e.errno() == Some(libc::EEXIST) => Ok(()),
            Err(e) => {
                let name = self.name_of(index);
                Err(e.into_error(format!("add address {addr} dev {name}")))
            }
        }
    }

    /// Adds `addr` to link `index` with `IFA_F_NODAD` (no duplicate address detection: the
    /// IPv6 address is never tentative); an address that is already there is success.
    pub fn add_addr_nodad(&mut self, index: u32, addr: IpNetwork) -> Result<()> {
        match self.sock.request(
            M::NewAddress(addr_message_nodad(index, addr)),
            NLM_F_CREATE | NLM_F_EXCL,
        ) {
            Ok(_) => Ok(()),
            Err(e) if e.errno() == Some(libc::EEXIST) => Ok(()),
            Err(e) => {
                let name = self.name_of(index);
                Err(e.into_error(format!("add address {addr} dev {name} nodad")))
            }
        }
    }

    /// Removes `addr` from link `index`; an address that is not there is success.
    pub fn del_addr(&mut self, index: u32, addr: IpNetwork) -> Result<()> {
        match self
            .sock
            .request(M::DelAddress(addr_message(index, addr)), 0)
        {
            Ok(_) => Ok(()),
            Err(e) if e.errno() == Some(libc::EADDRNOTAVAIL) => Ok(()),
            Err(e) => {
                let name = self.name_of(index);
                Err(e.into_error(format!("delete address {addr} dev {name}")))
            }
        }
    }

    /// All addresses (IPv4 and IPv6), or those of one link.
    pub fn addrs(&mut self, index: Option<u32>) -> Result<Vec<Addr>> {
        let msgs = self
            .sock
            .dump(M::GetAddress(AddressMessage::default()))
            .map_err(|e| e.into_error("list addresses"))?;
        Ok(msgs
            .iter()
            .filter_map(|m| match m {
                M::NewAddress(a) => addr_from(a),
                _ => None,
            })
            .filter(|a| index.is_none_or(|i| a.index == i))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_address_message_round_trips() {
        let net: IpNetwork = "10.240.1.5/32".parse().unwrap();
        let msg = addr_message(3, net);
        assert_eq!(msg.header.prefix_len, 32);
        assert_eq!(
            addr_from(&msg),
            Some(Addr {
                index: 3,
                addr: net,
                flags: 0
            })
        );
        assert_eq!(msg.attributes.len(), 2);
    }

    #[test]
    fn ipv6_address_message_has_no_local() {
        let net: IpNetwork = "fd00::5/128".parse().unwrap();
        let msg = addr_message(3, net);
        assert_eq!(msg.header.family, AddressFamily::Inet6);
        assert_eq!(msg.attributes.len(), 1);
        assert_eq!(
            addr_from(&msg),
            Some(Addr {
                index: 3,
                addr: net,
                flags: 0
            })
        );
    }

    #[test]
    fn nodad_is_in_header_and_flags_and_reads_back() {
        let net: IpNetwork = "fd00::5/64".parse().unwrap();
        let msg = crate::netlink::through_the_wire(M::NewAddress(addr_message_nodad(3, net)));
        let M::NewAddress(msg) = msg else {
            panic!("not an address message: {msg:?}")
        };
        assert!(msg.header.flags.contains(AddressHeaderFlags::Nodad));
        let a = addr_from(&msg).unwrap();
        assert_eq!(a.addr, net);
        assert_eq!(
            a.flags & super::super::IFA_F_NODAD,
            super::super::IFA_F_NODAD
        );
        assert!(!a.tentative());
        let tentative = Addr {
            flags: super::super::IFA_F_TENTATIVE,
            ..a
        };
        assert!(tentative.tentative());
    }
}
