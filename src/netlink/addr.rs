//! Address operations.

use super::{Addr, Netlink};
use crate::error::Result;
use ipnetwork::IpNetwork;
use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::AddressFamily;
use netlink_packet_route::RouteNetlinkMessage as M;
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
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

fn addr_from(msg: &AddressMessage) -> Option<Addr> {
    let mut local = None;
    let mut address = None;
    for attr in &msg.attributes {
        match attr {
            AddressAttribute::Local(ip) => local = Some(*ip),
            AddressAttribute::Address(ip) => address = Some(*ip),
            _ => {}
        }
    }
    // IFA_LOCAL is the interface's own address; IFA_ADDRESS is the peer on point-to-point links.
    let ip: IpAddr = local.or(address)?;
    let addr = IpNetwork::new(ip, msg.header.prefix_len).ok()?;
    Some(Addr {
        index: msg.header.index,
        addr,
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
                addr: net
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
                addr: net
            })
        );
    }
}
