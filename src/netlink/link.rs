//! Link (interface) operations.

use super::{Link, Netlink, mac_from, socket::NlError};
use crate::err;
use crate::error::{Kind, Result};
use crate::netns::NetNs;
use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::RouteNetlinkMessage as M;
use netlink_packet_route::link::{
    InfoData, InfoIpVlan, InfoKind, InfoMacVlan, InfoVeth, InfoVlan, IpVlanMode, LinkAttribute,
    LinkFlags, LinkInfo, LinkMessage, MacVlanMode,
};
use std::fmt;
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
            .any(|b| b == b'/' || b == b':' || b == b'%' || b.is_ascii_whitespace() || b == 0);
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

/// A link for [`Netlink::create_link`] to create.
#[derive(Debug, Clone)]
pub struct LinkSpec<'a> {
    pub name: &'a str,
    /// `None` leaves it to the kernel: the parent's MTU for ipvlan, vlan and macvlan, 1500 for a
    /// veth. A veth's peer gets the same MTU.
    pub mtu: Option<u32>,
    /// `None` lets the kernel pick a random one (ipvlan always shares its parent's).
    pub mac: Option<[u8; 6]>,
    /// Creates the link directly inside this namespace (`IFLA_NET_NS_FD`) instead of the
    /// socket's; a parent index still names a link of the socket's namespace.
    pub netns: Option<&'a NetNs>,
    pub kind: LinkKind<'a>,
}

/// What kind of link [`LinkSpec`] describes, with what only that kind has.
#[derive(Debug, Clone)]
pub enum LinkKind<'a> {
    /// A veth pair; `peer_netns: None` puts the peer in the link's own namespace.
    Veth {
        peer_name: &'a str,
        peer_netns: Option<&'a NetNs>,
    },
    /// An ipvlan on link `parent` (an index in the socket's namespace).
    Ipvlan { parent: u32, mode: IpvlanMode },
    /// An 802.1Q VLAN on link `parent`; `id` is 1-4094.
    Vlan { parent: u32, id: u16 },
    /// A macvlan on link `parent`.
    Macvlan { parent: u32, mode: MacvlanMode },
}

/// `IFLA_IPVLAN_MODE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpvlanMode {
    L2,
    L3,
    L3S,
}

/// `IFLA_MACVLAN_MODE` (the modes a macvlan can be created with).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MacvlanMode {
    Private,
    Vepa,
    Bridge,
    Passthru,
}

impl fmt::Display for IpvlanMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IpvlanMode::L2 => "l2",
            IpvlanMode::L3 => "l3",
            IpvlanMode::L3S => "l3s",
        })
    }
}

impl fmt::Display for MacvlanMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MacvlanMode::Private => "private",
            MacvlanMode::Vepa => "vepa",
            MacvlanMode::Bridge => "bridge",
            MacvlanMode::Passthru => "passthru",
        })
    }
}

impl From<IpvlanMode> for IpVlanMode {
    fn from(m: IpvlanMode) -> IpVlanMode {
        match m {
            IpvlanMode::L2 => IpVlanMode::L2,
            IpvlanMode::L3 => IpVlanMode::L3,
            IpvlanMode::L3S => IpVlanMode::L3S,
        }
    }
}

impl From<MacvlanMode> for MacVlanMode {
    fn from(m: MacvlanMode) -> MacVlanMode {
        match m {
            MacvlanMode::Private => MacVlanMode::Private,
            MacvlanMode::Vepa => MacVlanMode::Vepa,
            MacvlanMode::Bridge => MacVlanMode::Bridge,
            MacvlanMode::Passthru => MacVlanMode::Passthrough,
        }
    }
}

impl LinkKind<'_> {
    /// The `IFLA_INFO_KIND` string, as [`Link::kind`] reports it.
    pub fn name(&self) -> &'static str {
        match self {
            LinkKind::Veth { .. } => "veth",
            LinkKind::Ipvlan { .. } => "ipvlan",
            LinkKind::Vlan { .. } => "vlan",
            LinkKind::Macvlan { .. } => "macvlan",
        }
    }

    fn parent(&self) -> Option<u32> {
        match self {
            LinkKind::Veth { .. } => None,
            LinkKind::Ipvlan { parent, .. }
            | LinkKind::Vlan { parent, .. }
            | LinkKind::Macvlan { parent, .. } => Some(*parent),
        }
    }
}

/// Refuses what the kernel would refuse with a bare EINVAL, naming the problem.
fn check_spec(spec: &LinkSpec) -> Result<()> {
    check_ifname(spec.name)?;
    match &spec.kind {
        LinkKind::Veth { peer_name, .. } => check_ifname(peer_name),
        LinkKind::Vlan { id, .. } if !(1..=4094).contains(id) => Err(err!(
            Kind::InvalidConfig,
            "invalid VLAN id {id} for {}: want 1-4094",
            spec.name
        )),
        _ => Ok(()),
    }
}

/// RTM_NEWLINK body for `spec`; namespaces are passed by the fds they are open at.
fn link_message(spec: &LinkSpec) -> LinkMessage {
    let fd = |ns: &NetNs| ns.fd().as_raw_fd();
    let mut attrs = vec![LinkAttribute::IfName(spec.name.to_string())];
    if let Some(mtu) = spec.mtu {
        attrs.push(LinkAttribute::Mtu(mtu));
    }
    if let Some(mac) = spec.mac {
        attrs.push(LinkAttribute::Address(mac.to_vec()));
    }
    if let Some(ns) = spec.netns {
        attrs.push(LinkAttribute::NetNsFd(fd(ns)));
    }
    if let Some(parent) = spec.kind.parent() {
        attrs.push(LinkAttribute::Link(parent));
    }
    let (kind, data) = match &spec.kind {
        LinkKind::Veth {
            peer_name,
            peer_netns,
        } => {
            // Always explicit: where a peer without IFLA_NET_NS_FD lands when the link itself
            // is created elsewhere has changed between kernel versions.
            let peer_ns = peer_netns.or(spec.netns).map(fd);
            (
                InfoKind::Veth,
                InfoData::Veth(InfoVeth::Peer(veth_peer(peer_name, spec.mtu, peer_ns))),
            )
        }
        LinkKind::Ipvlan { mode, .. } => (
            InfoKind::IpVlan,
            InfoData::IpVlan(vec![InfoIpVlan::Mode((*mode).into())]),
        ),
        LinkKind::Vlan { id, .. } => (InfoKind::Vlan, InfoData::Vlan(vec![InfoVlan::Id(*id)])),
        LinkKind::Macvlan { mode, .. } => (
            InfoKind::MacVlan,
            InfoData::MacVlan(vec![InfoMacVlan::Mode((*mode).into())]),
        ),
    };
    attrs.push(LinkAttribute::LinkInfo(vec![
        LinkInfo::Kind(kind),
        LinkInfo::Data(data),
    ]));
    let mut msg = LinkMessage::default();
    msg.attributes = attrs;
    msg
}

/// The peer half of a veth RTM_NEWLINK (`VETH_INFO_PEER`).
fn veth_peer(name: &str, mtu: Option<u32>, ns_fd: Option<RawFd>) -> LinkMessage {
    let mut peer = LinkMessage::default();
    peer.attributes
        .push(LinkAttribute::IfName(name.to_string()));
    if let Some(mtu) = mtu {
        peer.attributes.push(LinkAttribute::Mtu(mtu));
    }
    if let Some(fd) = ns_fd {
        peer.attributes.push(LinkAttribute::NetNsFd(fd));
    }
    peer
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

    /// Creates the link `spec` describes (RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL: a link of
    /// that name that already exists is an error, never reused).
    pub fn create_link(&mut self, spec: &LinkSpec) -> Result<()> {
        check_spec(spec)?;
        match self
            .sock
            .request(M::NewLink(link_message(spec)), NLM_F_CREATE | NLM_F_EXCL)
        {
            Ok(_) => Ok(()),
            Err(e) => {
                let what = self.describe_spec(spec);
                Err(e.into_error(format!("create {what}")))
            }
        }
    }

    /// [`Netlink::create_link`], telling a kernel without that kind of link apart: `Ok(false)`
    /// when the kernel does not know the kind (`EOPNOTSUPP`, "Unknown device type": its module
    /// is missing and cannot be loaded), `Ok(true)` when the link was created.
    pub fn create_link_if_supported(&mut self, spec: &LinkSpec) -> Result<bool> {
        check_spec(spec)?;
        match self
            .sock
            .request(M::NewLink(link_message(spec)), NLM_F_CREATE | NLM_F_EXCL)
        {
            Ok(_) => Ok(true),
            Err(e) if e.errno() == Some(libc::EOPNOTSUPP) => Ok(false),
            Err(e) => {
                let what = self.describe_spec(spec);
                Err(e.into_error(format!("create {what}")))
            }
        }
    }

    /// `veth tw1 with peer eth0 in netns /run/netns/x`, `macvlan mv0 on eth1 mode bridge`.
    fn describe_spec(&mut self, spec: &LinkSpec) -> String {
        let mut s = format!("{} {}", spec.kind.name(), spec.name);
        match &spec.kind {
            LinkKind::Veth {
                peer_name,
                peer_netns,
            } => {
                s.push_str(&format!(" with peer {peer_name}"));
                if let Some(ns) = peer_netns {
                    s.push_str(&format!(" in netns {}", ns.path().display()));
                }
            }
            LinkKind::Ipvlan { parent, mode } => {
                s.push_str(&format!(" on {} mode {mode}", self.name_of(*parent)));
            }
            LinkKind::Vlan { parent, id } => {
                s.push_str(&format!(" on {} id {id}", self.name_of(*parent)));
            }
            LinkKind::Macvlan { parent, mode } => {
                s.push_str(&format!(" on {} mode {mode}", self.name_of(*parent)));
            }
        }
        if let Some(ns) = spec.netns {
            s.push_str(&format!(
                ", the link itself in netns {}",
                ns.path().display()
            ));
        }
        s
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
        self.create_link(&LinkSpec {
            name,
            mtu: Some(mtu),
            mac: None,
            netns: None,
            kind: LinkKind::Veth {
                peer_name,
                peer_netns: Some(peer_ns),
            },
        })
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

    /// Sets link `name` up in one RTM_SETLINK (found by `IFLA_IFNAME`, no lookup first);
    /// `Ok(false)` when there is no such link.
    pub fn set_link_up_by_name(&mut self, name: &str) -> Result<bool> {
        check_ifname(name)?;
        let mut msg = LinkMessage::default();
        msg.header.flags = LinkFlags::Up;
        msg.header.change_mask = LinkFlags::Up;
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        match self.sock.request(M::SetLink(msg), 0) {
            Ok(_) => Ok(true),
            Err(e) if e.errno() == Some(libc::ENODEV) => Ok(false),
            Err(e) => Err(e.into_error(format!("set link {name} up"))),
        }
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
#[path = "link_tests.rs"]
mod tests;
