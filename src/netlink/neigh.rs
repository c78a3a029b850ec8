//! Neighbour (ARP / NDP) operations.

use super::{Neigh, Netlink, format_mac, mac_from};
use crate::error::Result;
use netlink_packet_core::{NLM_F_CREATE, NLM_F_REPLACE};
use netlink_packet_route::AddressFamily;
use netlink_packet_route::RouteNetlinkMessage as M;
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState,
};
use std::net::IpAddr;

pub(super) fn neigh_message(index: u32, ip: IpAddr, mac: [u8; 6]) -> NeighbourMessage {
    let mut msg = NeighbourMessage::default();
    msg.header.family = match ip {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    };
    msg.header.ifindex = index;
    msg.header.state = NeighbourState::Permanent;
    msg.attributes
        .push(NeighbourAttribute::Destination(NeighbourAddress::from(ip)));
    msg.attributes
        .push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
    msg
}

fn neigh_from(msg: &NeighbourMessage) -> Option<Neigh> {
    let mut ip = None;
    let mut mac = None;
    for attr in &msg.attributes {
        match attr {
            NeighbourAttribute::Destination(NeighbourAddress::Inet(a)) => ip = Some(IpAddr::V4(*a)),
            NeighbourAttribute::Destination(NeighbourAddress::Inet6(a)) => {
                ip = Some(IpAddr::V6(*a))
            }
            NeighbourAttribute::LinkLayerAddress(l) => mac = mac_from(l),
            _ => {}
        }
    }
    Some(Neigh {
        ip: ip?,
        mac,
        permanent: msg.header.state == NeighbourState::Permanent,
    })
}

impl Netlink {
    /// Adds or replaces a permanent neighbour entry `ip -> mac` on link `index`.
    pub fn replace_neigh_permanent(&mut self, index: u32, ip: IpAddr, mac: [u8; 6]) -> Result<()> {
        let msg = neigh_message(index, ip, mac);
        match self
            .sock
            .request(M::NewNeighbour(msg), NLM_F_CREATE | NLM_F_REPLACE)
        {
            Ok(_) => Ok(()),
            Err(e) => {
                let dev = self.name_of(index);
                Err(e.into_error(format!(
                    "add permanent neighbour {ip} lladdr {} dev {dev}",
                    format_mac(&mac)
                )))
            }
        }
    }

    /// Deletes the neighbour entry for `ip` on link `index`; one that is not there is success.
    pub fn del_neigh(&mut self, index: u32, ip: IpAddr) -> Result<()> {
        let mut msg = NeighbourMessage::default();
        msg.header.family = match ip {
            IpAddr::V4(_) => AddressFamily::Inet,
            IpAddr::V6(_) => AddressFamily::Inet6,
        };
        msg.header.ifindex = index;
        msg.attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::from(ip)));
        match self.sock.request(M::DelNeighbour(msg), 0) {
            Ok(_) => Ok(()),
            Err(e) if matches!(e.errno(), Some(libc::ENOENT | libc::ENODEV)) => Ok(()),
            Err(e) => {
                let dev = self.name_of(index);
                Err(e.into_error(format!("delete neighbour {ip} dev {dev}")))
            }
        }
    }

    /// The IPv4 and IPv6 neighbour entries of link `index`.
    pub fn neighs(&mut self, index: u32) -> Result<Vec<Neigh>> {
        let msgs = self
            .sock
            .dump(M::GetNeighbour(NeighbourMessage::default()))
            .map_err(|e| e.into_error("list neighbours"))?;
        Ok(msgs
            .iter()
            .filter_map(|m| match m {
                M::NewNeighbour(n) if n.header.ifindex == index => neigh_from(n),
                _ => None,
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn permanent_neighbour_round_trips() {
        let ip = IpAddr::V4(Ipv4Addr::new(169, 254, 1, 1));
        let mac = [2, 0xab, 0, 0, 0, 1];
        let msg = neigh_message(4, ip, mac);
        assert_eq!(
            neigh_from(&msg),
            Some(Neigh {
                ip,
                mac: Some(mac),
                permanent: true
            })
        );
    }
}
