//! Link (interface) operations.

use super::{Link, Netlink, mac_from, socket::NlError};
use crate::err;
use crate::error::{Kind, Result};
use crate::netns::NetNs;
use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::RouteNetlinkMessage as M;
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use std::os::fd::{AsRawFd, RawFd};

/// Kinds that share a MAC with the device they sit on, so they are never "the" ENI.
pub const SHARED_MAC_KINDS: &[&str] = &["ipvlan", "ipvtap", "bridge", "vlan"];

/// The kernel limit for interface names is IFNAMSIZ - 1 bytes.
const IFNAME_MAX: usize = 15;

fn check_ifname(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= IFNAME_MAX
        && name != "."
        && name != ".."
        && !name
            .bytes()
            .any(|b| b == b'/' || b == b':' || b.is_ascii_whitespace() || b == 0);
    if ok {
        Ok(())
    } else {
        Err(err!(
            Kind::InvalidConfig,
            "invalid interface name {name:?}: want 1-{IFNAME_MAX} bytes without '/', ':' or spaces"
        ))
    }
}

pub(super) fn link_from(msg: &LinkMessage) -> Link {
    let mut link = Link {
        index: msg.header.index,
        name: String::new(),
        mac: None,
        mtu: 0,
        up: msg.header.flags.contains(LinkFlags::Up),
        kind: None,
        alias: None,
    };
    for attr in &msg.attributes {
        match attr {
            LinkAttribute::IfName(n) => link.name = n.clone(),
            LinkAttribute::Address(a) => link.mac = mac_from(a),
            LinkAttribute::Mtu(m) => link.mtu = *m,
            LinkAttribute::IfAlias(a) => link.alias = Some(a.clone()).filter(|a| !a.is_empty()),
            LinkAttribute::LinkInfo(infos) => {
                for info in infos {
                    if let LinkInfo::Kind(k) = info {
                        link.kind = Some(k.to_string());
                    }
                }
            }
            _ => {}
        }
    }
    link
}

fn first_link(msgs: Vec<M>) -> Option<Link> {
    msgs.iter().find_map(|m| match m {
        M::NewLink(l) => Some(link_from(l)),
        _ => None,
    })
}

/// The link with hardware address `mac`, ignoring kinds that merely share a parent's MAC
/// ([`SHARED_MAC_KINDS`]). An emulated ENI is a veth end, so veths are not skipped.
pub fn find_link_by_mac(nl: &mut Netlink, mac: &[u8; 6]) -> Result<Option<Link>> {
    find_link_by_mac_skipping(nl, mac, SHARED_MAC_KINDS)
}

/// [`find_link_by_mac`] with an explicit list of kinds to ignore.
pub fn find_link_by_mac_skipping(
    nl: &mut Netlink,
    mac: &[u8; 6],
    skip_kinds: &[&str],
) -> Result<Option<Link>> {
    Ok(nl.links()?.into_iter().find(|l| {
        l.mac.as_ref() == Some(mac) && !l.kind.as_deref().is_some_and(|k| skip_kinds.contains(&k))
    }))
}

/// RTM_NEWLINK body for a veth whose peer is created in the namespace open at `peer_ns_fd`.
fn veth_message(name: &str, peer_name: &str, peer_ns_fd: RawFd, mtu: u32) -> LinkMessage {
    let mut peer = LinkMessage::default();
    peer.attributes = vec![
        LinkAttribute::IfName(peer_name.to_string()),
        LinkAttribute::Mtu(mtu),
        LinkAttribute::NetNsFd(peer_ns_fd),
    ];
    let mut msg = LinkMessage::default();
    msg.attributes = vec![
        LinkAttribute::IfName(name.to_string()),
        LinkAttribute::Mtu(mtu),
        LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Veth),
            LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer))),
        ]),
    ];
    msg
}

/// RTM_SETLINK body that moves link `index` into the namespace open at `ns_fd` as `name`.
fn move_message(index: u32, ns_fd: RawFd, name: &str) -> LinkMessage {
    let mut msg = LinkMessage::default();
    msg.header.index = index;
    msg.attributes = vec![
        LinkAttribute::NetNsFd(ns_fd),
        LinkAttribute::IfName(name.to_string()),
    ];
    msg
}

impl Netlink {
    pub fn links(&mut self) -> Result<Vec<Link>> {
        let msgs = self
            .sock
            .dump(M::GetLink(LinkMessage::default()))
            .map_err(|e| e.into_error("list links"))?;
        Ok(msgs
            .iter()
            .filter_map(|m| match m {
                M::NewLink(l) => Some(link_from(l)),
                _ => None,
            })
            .collect())
    }

    pub fn link_by_name(&mut self, name: &str) -> Result<Option<Link>> {
        check_ifname(name)?;
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        match self.sock.request(M::GetLink(msg), 0) {
            Ok(msgs) => Ok(first_link(msgs)),
            Err(e) if e.errno() == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(e.into_error(format!("get link {name}"))),
        }
    }

    pub fn link_by_index(&mut self, index: u32) -> Result<Option<Link>> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        match self.sock.request(M::GetLink(msg), 0) {
            Ok(msgs) => Ok(first_link(msgs)),
            Err(e) if e.errno() == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(e.into_error(format!("get link #{index}"))),
        }
    }

    /// Creates veth `name` here with its peer `peer_name` directly inside `peer_ns`, in one
    /// RTM_NEWLINK: the peer never appears in this namespace, so no rename/move race.
    pub fn create_veth(
        &mut self,
        name: &str,
        peer_name: &str,
        peer_ns: &NetNs,
        mtu: u32,
    ) -> Result<()> {
        check_ifname(name)?;
        check_ifname(peer_name)?;
        let msg = veth_message(name, peer_name, peer_ns.fd().as_raw_fd(), mtu);
        self.sock
            .request(M::NewLink(msg), NLM_F_CREATE | NLM_F_EXCL)
            .map_err(|e| {
                e.into_error(format!(
                    "create veth {name} with peer {peer_name} in netns {}",
                    peer_ns.path().display()
                ))
            })?;
        Ok(())
    }

    /// Deletes a link; a link that is already gone is success.
    pub fn delete_link(&mut self, index: u32) -> Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        match self.sock.request(M::DelLink(msg), 0) {
            Ok(_) => Ok(()),
            Err(e) if e.errno() == Some(libc::ENODEV) => Ok(()),
            Err(e) => {
                let name = self.name_of(index);
                Err(e.into_error(format!("delete link {name}")))
            }
        }
    }

    pub fn set_link_up(&mut self, index: u32) -> Result<()> {
        self.set_flags(index, true, "up")
    }

    pub fn set_link_down(&mut self, index: u32) -> Result<()> {
        self.set_flags(index, false, "down")
    }

    fn set_flags(&mut self, index: u32, up: bool, what: &str) -> Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.header.flags = if up {
            LinkFlags::Up
        } else {
            LinkFlags::empty()
        };
        msg.header.change_mask = LinkFlags::Up;
        self.set_link(msg, index, &format!("set link {{}} {what}"))
    }

    pub fn set_link_name(&mut self, index: u32, name: &str) -> Result<()> {
        check_ifname(name)?;
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        self.set_link(msg, index, &format!("rename link {{}} to {name}"))
    }

    /// Sets `IFLA_IFALIAS` (at most 255 bytes); the kernel ignores it in RTM_NEWLINK, so it is
    /// a separate RTM_SETLINK after creation.
    pub fn set_link_alias(&mut self, index: u32, alias: &str) -> Result<()> {
        if alias.len() > 255 || alias.contains('\0') {
            return Err(err!(Kind::InvalidConfig, "invalid link alias {alias:?}"));
        }
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.attributes
            .push(LinkAttribute::IfAlias(alias.to_string()));
        self.set_link(msg, index, &format!("set alias of link {{}} to {alias}"))
    }

    pub fn set_link_mtu(&mut self, index: u32, mtu: u32) -> Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.attributes.push(LinkAttribute::Mtu(mtu));
        self.set_link(msg, index, &format!("set link {{}} mtu {mtu}"))
    }

    /// Moves link `index` into `ns` and names it `name` there, in one RTM_SETLINK
    /// (`IFLA_NET_NS_FD` + `IFLA_IFNAME`): the kernel renames during the move, so neither the
    /// old name in the target nor the new name here can clash, and the link never shows up in
    /// `ns` under its old name. `EEXIST` if `ns` already has a link called `name`.
    pub fn move_link_to_ns_as(&mut self, index: u32, ns: &NetNs, name: &str) -> Result<()> {
        check_ifname(name)?;
        let msg = move_message(index, ns.fd().as_raw_fd(), name);
        let op = format!("move link {{}} to netns {} as {name}", ns.path().display());
        self.set_link(msg, index, &op)
    }

    pub fn move_link_to_ns(&mut self, index: u32, ns: &NetNs) -> Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.attributes
            .push(LinkAttribute::NetNsFd(ns.fd().as_raw_fd()));
        let op = format!("move link {{}} to netns {}", ns.path().display());
        self.set_link(msg, index, &op)
    }

    /// Sends RTM_SETLINK; `op` names the operation with `{}` where the link name goes.
    fn set_link(&mut self, msg: LinkMessage, index: u32, op: &str) -> Result<()> {
        match self.sock.request(M::SetLink(msg), 0) {
            Ok(_) => Ok(()),
            Err(e) => Err(self.link_error(e, index, op)),
        }
    }

    fn link_error(&mut self, e: NlError, index: u32, op: &str) -> crate::error::Error {
        let name = self.name_of(index);
        e.into_error(op.replacen("{}", &name, 1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ifnames_are_validated() {
        for ok in ["eth0", "tw0123456789abc", "eth0.100", "lo"] {
            check_ifname(ok).unwrap();
        }
        for bad in ["", "tw0123456789abcd", "a/b", "a b", "..", "eth0:1"] {
            assert!(check_ifname(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn veth_message_carries_the_peer_and_its_namespace() {
        use netlink_packet_core::{Emitable, Parseable};
        let msg = veth_message("tw0123456789abc", "eth0", 42, 1450);
        let mut buf = vec![0u8; msg.buffer_len()];
        msg.emit(&mut buf);
        let back = LinkMessage::parse(buf.as_slice()).unwrap();
        assert_eq!(link_from(&back).name, "tw0123456789abc");
        let infos = back.attributes.iter().find_map(|a| match a {
            LinkAttribute::LinkInfo(i) => Some(i.clone()),
            _ => None,
        });
        let peer = infos.unwrap().into_iter().find_map(|i| match i {
            LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(p))) => Some(p),
            _ => None,
        });
        let peer = peer.expect("veth peer in IFLA_INFO_DATA");
        assert_eq!(link_from(&peer).name, "eth0");
        assert_eq!(link_from(&peer).mtu, 1450);
        assert!(peer.attributes.contains(&LinkAttribute::NetNsFd(42)));
    }

    #[test]
    fn move_message_carries_namespace_and_new_name_together() {
        use netlink_packet_core::{Emitable, Parseable};
        let msg = move_message(12, 42, "eth0");
        let mut buf = vec![0u8; msg.buffer_len()];
        msg.emit(&mut buf);
        let back = LinkMessage::parse(buf.as_slice()).unwrap();
        assert_eq!(back.header.index, 12);
        assert!(back.attributes.contains(&LinkAttribute::NetNsFd(42)));
        assert_eq!(link_from(&back).name, "eth0");
    }

    #[test]
    fn link_messages_decode() {
        let mut msg = LinkMessage::default();
        msg.header.index = 7;
        msg.header.flags = LinkFlags::Up | LinkFlags::Broadcast;
        msg.attributes = vec![
            LinkAttribute::IfName("tw1".into()),
            LinkAttribute::Address(vec![2, 0, 0, 0, 0, 1]),
            LinkAttribute::Mtu(1500),
            LinkAttribute::LinkInfo(vec![LinkInfo::Kind(InfoKind::Veth)]),
        ];
        let l = link_from(&msg);
        assert_eq!(
            l,
            Link {
                index: 7,
                name: "tw1".into(),
                mac: Some([2, 0, 0, 0, 0, 1]),
                mtu: 1500,
                up: true,
                kind: Some("veth".into()),
                alias: None,
            }
        );
    }
}
