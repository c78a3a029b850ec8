use super::*;

const MAC: [u8; 6] = [0x02, 0x00, 0x0a, 0xf0, 0x00, 0x0a];

fn spec<'a>(ns: &'a NetNs, ip: &str, gw: &str, mtu: u32) -> ExclusiveEniSpec<'a> {
    ExclusiveEniSpec {
        netns: ns,
        ifname: "eth0",
        mac: MAC,
        ip: ip.parse().unwrap(),
        gateway: gw.parse().unwrap(),
        ipv6: None,
        mtu,
        host_peer: Some(HostPeer {
            host_ifname: "tw0000000000000",
            alias: "terway:test",
            service_cidr: Some("10.96.0.0/12".parse().unwrap()),
            node_ips: vec![Ipv4Addr::new(10, 240, 0, 1)],
        }),
    }
}

fn own_ns() -> NetNs {
    NetNs::open(std::path::Path::new("/proc/self/ns/net")).unwrap()
}

#[test]
fn parked_names_are_stable_and_fit() {
    let n = parked_name(&MAC);
    assert_eq!(n, "eni02000af0000a");
    assert_eq!(n.len(), 15);
}

#[test]
fn bad_specs_are_rejected_before_touching_anything() {
    let ns = own_ns();
    for (ip, gw, mtu, what) in [
        ("10.240.0.10/24", "10.240.0.253", 20, "MTU"),
        ("0.0.0.0/24", "10.240.0.253", 1500, "not a usable"),
        ("169.254.1.1/16", "169.254.0.1", 1500, "not a usable"),
        ("10.240.0.10/32", "10.240.0.253", 1500, "prefix length"),
        (
            "10.240.0.0/24",
            "10.240.0.253",
            1500,
            "network or broadcast",
        ),
        (
            "10.240.0.255/24",
            "10.240.0.253",
            1500,
            "network or broadcast",
        ),
        ("10.240.0.10/24", "10.241.0.253", 1500, "inside the vSwitch"),
        ("10.240.0.10/24", "10.240.0.10", 1500, "inside the vSwitch"),
    ] {
        let e = validate(&spec(&ns, ip, gw, mtu)).unwrap_err();
        assert_eq!(e.kind, Kind::InvalidConfig);
        assert!(e.msg.contains(what), "{ip} {gw} {mtu}: {}", e.msg);
    }
    validate(&spec(&ns, "10.240.0.10/24", "10.240.0.253", 1500)).unwrap();
    validate(&spec(&ns, "10.240.0.10/31", "10.240.0.11", 1500)).unwrap();

    let mut s = spec(&ns, "10.240.0.10/24", "10.240.0.253", 1500);
    s.mac = [0x03, 0, 0, 0, 0, 1];
    assert!(validate(&s).unwrap_err().msg.contains("unicast"));
    let mut s = spec(&ns, "10.240.0.10/24", "10.240.0.253", 1500);
    s.ifname = POD_PEER_IFNAME;
    assert!(validate(&s).unwrap_err().msg.contains("clashes"));
    let mut s = spec(&ns, "10.96.0.10/12", "10.96.0.1", 1500);
    assert!(validate(&s).unwrap_err().msg.contains("service CIDR"));
    s.host_peer = None;
    validate(&s).unwrap();
    let mut s = spec(&ns, "10.240.0.10/24", "10.240.0.253", 1500);
    s.host_peer
        .as_mut()
        .unwrap()
        .node_ips
        .push("10.240.0.10".parse().unwrap());
    assert!(validate(&s).unwrap_err().msg.contains("node address"));
}

#[test]
fn routes_have_the_recipe_shape() {
    let ns = own_ns();
    let mut s = spec(&ns, "10.240.0.10/24", "10.240.0.253", 1500);
    let def = s.pod_default_route(3);
    assert_eq!(def.dst.prefix(), 0);
    assert_eq!(
        def.gateway,
        Some(IpAddr::V4(Ipv4Addr::new(10, 240, 0, 253)))
    );
    assert_eq!(def.oif, Some(3));
    assert!(!def.onlink && !def.scope_link);
    let host = s.host_route(7);
    assert_eq!(host.dst.to_string(), "10.240.0.10/32");
    assert!(host.scope_link && host.gateway.is_none());

    let peer = s.host_peer.as_mut().unwrap();
    // A service CIDR with host bits set is routed (and checked) as its network; node
    // addresses given twice are routed once.
    peer.service_cidr = Some("10.96.0.10/12".parse().unwrap());
    peer.node_ips.push(Ipv4Addr::new(10, 240, 0, 1));
    let routes = peer.pod_routes(5);
    let dsts: Vec<String> = routes.iter().map(|r| r.dst.to_string()).collect();
    assert_eq!(dsts, ["10.96.0.0/12", "10.240.0.1/32"]);
    for r in routes {
        assert_eq!(r.gateway, Some(IpAddr::V4(POD_GATEWAY)));
        assert_eq!(r.oif, Some(5));
        assert!(r.onlink);
    }
}

#[test]
fn only_nics_and_veths_can_be_the_eni() {
    let mut l = Link {
        index: 1,
        name: "x".into(),
        mac: Some(MAC),
        mtu: 1500,
        up: false,
        kind: None,
        alias: None,
    };
    assert!(is_eni_kind(&l));
    l.kind = Some("veth".into());
    assert!(is_eni_kind(&l));
    for k in ["bridge", "vlan", "ipvlan", "macvlan", "bond", "team"] {
        l.kind = Some(k.into());
        assert!(!is_eni_kind(&l), "{k}");
    }
}

#[test]
fn teardown_spec_follows_the_setup_spec() {
    let ns = own_ns();
    let s = spec(&ns, "10.240.0.10/24", "10.240.0.253", 1500);
    let t = s.teardown_spec();
    assert_eq!(t.mac, MAC);
    let h = t.host_veth.unwrap();
    assert_eq!((h.host_ifname, h.alias), ("tw0000000000000", "terway:test"));
}
