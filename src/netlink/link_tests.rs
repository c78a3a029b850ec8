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

fn own_ns() -> NetNs {
    NetNs::open(std::path::Path::new("/proc/self/ns/net")).unwrap()
}

/// `spec`'s RTM_NEWLINK on the wire, parsed back.
fn wire(spec: &LinkSpec) -> LinkMessage {
    match super::super::through_the_wire(M::NewLink(link_message(spec))) {
        M::NewLink(m) => m,
        other => panic!("{other:?}"),
    }
}

/// The attributes outside `IFLA_LINKINFO`, and the kind and data inside it.
fn split(msg: &LinkMessage) -> (Vec<LinkAttribute>, InfoKind, InfoData) {
    let mut plain = Vec::new();
    let (mut kind, mut data) = (None, None);
    for a in &msg.attributes {
        match a {
            LinkAttribute::LinkInfo(infos) => {
                for i in infos {
                    match i {
                        LinkInfo::Kind(k) => kind = Some(k.clone()),
                        LinkInfo::Data(d) => data = Some(d.clone()),
                        other => panic!("unexpected {other:?}"),
                    }
                }
            }
            other => plain.push(other.clone()),
        }
    }
    (
        plain,
        kind.expect("IFLA_INFO_KIND"),
        data.expect("IFLA_INFO_DATA"),
    )
}

fn spec<'a>(kind: LinkKind<'a>) -> LinkSpec<'a> {
    LinkSpec {
        name: "tw0123456789abc",
        mtu: Some(1450),
        mac: None,
        netns: None,
        kind,
    }
}

#[test]
fn veth_message_carries_the_peer_and_its_namespace() {
    let ns = own_ns();
    let fd = ns.fd().as_raw_fd();
    let msg = wire(&spec(LinkKind::Veth {
        peer_name: "eth0",
        peer_netns: Some(&ns),
    }));
    let (plain, kind, data) = split(&msg);
    assert_eq!(
        plain,
        [
            LinkAttribute::IfName("tw0123456789abc".into()),
            LinkAttribute::Mtu(1450)
        ]
    );
    assert_eq!(kind, InfoKind::Veth);
    let InfoData::Veth(InfoVeth::Peer(peer)) = data else {
        panic!("no veth peer in IFLA_INFO_DATA: {data:?}");
    };
    assert_eq!(
        peer.attributes,
        [
            LinkAttribute::IfName("eth0".into()),
            LinkAttribute::Mtu(1450),
            LinkAttribute::NetNsFd(fd)
        ]
    );
}

#[test]
fn veth_created_elsewhere_takes_its_peer_along_unless_told_otherwise() {
    let (a, b) = (own_ns(), own_ns());
    let (fa, fb) = (a.fd().as_raw_fd(), b.fd().as_raw_fd());
    assert_ne!(fa, fb);
    let peer_fd = |peer_netns| {
        let mut s = spec(LinkKind::Veth {
            peer_name: "eth0",
            peer_netns,
        });
        s.netns = Some(&a);
        s.mtu = None;
        let (plain, _, data) = split(&wire(&s));
        assert!(plain.contains(&LinkAttribute::NetNsFd(fa)));
        assert!(!plain.iter().any(|a| matches!(a, LinkAttribute::Mtu(_))));
        let InfoData::Veth(InfoVeth::Peer(peer)) = data else {
            panic!("{data:?}");
        };
        assert!(
            !peer
                .attributes
                .iter()
                .any(|a| matches!(a, LinkAttribute::Mtu(_)))
        );
        peer.attributes.iter().find_map(|a| match a {
            LinkAttribute::NetNsFd(fd) => Some(*fd),
            _ => None,
        })
    };
    assert_eq!(peer_fd(None), Some(fa));
    assert_eq!(peer_fd(Some(&b)), Some(fb));
    // Neither namespace given: both ends in the socket's, no fd at all.
    let (plain, _, data) = split(&wire(&spec(LinkKind::Veth {
        peer_name: "eth0",
        peer_netns: None,
    })));
    assert!(!plain.iter().any(|a| matches!(a, LinkAttribute::NetNsFd(_))));
    let InfoData::Veth(InfoVeth::Peer(peer)) = data else {
        panic!("{data:?}");
    };
    assert!(
        !peer
            .attributes
            .iter()
            .any(|a| matches!(a, LinkAttribute::NetNsFd(_)))
    );
}

#[test]
fn ipvlan_message_names_parent_and_mode() {
    let ns = own_ns();
    for (mode, want) in [
        (IpvlanMode::L2, IpVlanMode::L2),
        (IpvlanMode::L3, IpVlanMode::L3),
        (IpvlanMode::L3S, IpVlanMode::L3S),
    ] {
        let mut s = spec(LinkKind::Ipvlan { parent: 7, mode });
        s.netns = Some(&ns);
        let (plain, kind, data) = split(&wire(&s));
        assert_eq!(
            plain,
            [
                LinkAttribute::IfName("tw0123456789abc".into()),
                LinkAttribute::Mtu(1450),
                LinkAttribute::NetNsFd(ns.fd().as_raw_fd()),
                LinkAttribute::Link(7),
            ]
        );
        assert_eq!(kind, InfoKind::IpVlan);
        assert_eq!(data, InfoData::IpVlan(vec![InfoIpVlan::Mode(want)]));
    }
}

#[test]
fn vlan_message_names_parent_id_and_mac() {
    let mut s = spec(LinkKind::Vlan { parent: 3, id: 100 });
    s.mac = Some([2, 0xab, 0, 0, 0, 9]);
    let (plain, kind, data) = split(&wire(&s));
    assert_eq!(
        plain,
        [
            LinkAttribute::IfName("tw0123456789abc".into()),
            LinkAttribute::Mtu(1450),
            LinkAttribute::Address(vec![2, 0xab, 0, 0, 0, 9]),
            LinkAttribute::Link(3),
        ]
    );
    assert_eq!(kind, InfoKind::Vlan);
    assert_eq!(data, InfoData::Vlan(vec![InfoVlan::Id(100)]));
}

#[test]
fn macvlan_message_names_parent_and_mode() {
    for (mode, want) in [
        (MacvlanMode::Private, MacVlanMode::Private),
        (MacvlanMode::Vepa, MacVlanMode::Vepa),
        (MacvlanMode::Bridge, MacVlanMode::Bridge),
        (MacvlanMode::Passthru, MacVlanMode::Passthrough),
    ] {
        let (plain, kind, data) = split(&wire(&spec(LinkKind::Macvlan { parent: 4, mode })));
        assert!(plain.contains(&LinkAttribute::Link(4)));
        assert_eq!(kind, InfoKind::MacVlan);
        assert_eq!(data, InfoData::MacVlan(vec![InfoMacVlan::Mode(want)]));
    }
}

#[test]
fn link_specs_are_validated() {
    for id in [0, 4095, 5000] {
        let e = check_spec(&spec(LinkKind::Vlan { parent: 3, id })).unwrap_err();
        assert_eq!(e.kind, Kind::InvalidConfig);
        assert!(e.msg.contains("VLAN id"), "{}", e.msg);
    }
    check_spec(&spec(LinkKind::Vlan {
        parent: 3,
        id: 4094,
    }))
    .unwrap();
    let bad_peer = spec(LinkKind::Veth {
        peer_name: "a/b",
        peer_netns: None,
    });
    assert!(check_spec(&bad_peer).is_err());
    let mut bad_name = spec(LinkKind::Macvlan {
        parent: 1,
        mode: MacvlanMode::Bridge,
    });
    bad_name.name = "";
    assert!(check_spec(&bad_name).is_err());
    let kinds = [
        LinkKind::Veth {
            peer_name: "p",
            peer_netns: None,
        },
        LinkKind::Ipvlan {
            parent: 1,
            mode: IpvlanMode::L2,
        },
        LinkKind::Vlan { parent: 1, id: 1 },
        LinkKind::Macvlan {
            parent: 1,
            mode: MacvlanMode::Bridge,
        },
    ];
    let names: Vec<&str> = kinds.iter().map(LinkKind::name).collect();
    assert_eq!(names, ["veth", "ipvlan", "vlan", "macvlan"]);
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
