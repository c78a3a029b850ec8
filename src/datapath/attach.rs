//! The one interface of the datapaths: set up, check or tear down an attachment as the daemon's
//! allocation says (its addresses and the datapath that wires them). The plugin never guesses a
//! datapath from names, and every teardown touches only what provably belongs to the attachment.

use super::exclusive_eni::{self, EniTeardownSpec, ExclusiveEniSpec, HostVethRef};
use super::ipvlan::{self, IpvlanSpec, IpvlanTeardown};
use super::veth::{self, Teardown, VethSpec};
use super::{POD_GATEWAY, POD_GATEWAY_V6, host_veth_alias, host_veth_name, policy};
use crate::error::{Error, Kind, Result};
use crate::model::{Datapath, PodAddress};
use crate::netlink::{Netlink, parse_mac};
use crate::netns::NetNs;
use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// How long ADD waits for an exclusive ENI's device to come back to the node.
const ENI_RETURN_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// One attachment as the datapaths see it.
#[derive(Debug, Clone, Copy)]
pub struct Attachment<'a> {
    pub container_id: &'a str,
    pub ifname: &'a str,
    /// The pod's namespace; `None` when it is gone (DEL, GC).
    pub netns: Option<&'a NetNs>,
    pub mtu: u32,
}

impl Attachment<'_> {
    fn host_ifname(&self) -> String {
        host_veth_name(self.container_id, self.ifname)
    }

    fn alias(&self) -> String {
        host_veth_alias(self.container_id, self.ifname)
    }

    fn netns(&self) -> Result<&NetNs> {
        self.netns
            .ok_or_else(|| Error::new(Kind::Netns, "the pod's network namespace is needed"))
    }
}

/// An interface setup built, for the CNI result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WiredInterface {
    pub name: String,
    pub mac: [u8; 6],
    pub mtu: u32,
    /// Inside the pod (the result names its sandbox) rather than on the node.
    pub in_pod: bool,
}

/// An address setup configured, on `interfaces[interface]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WiredIp {
    pub addr: IpNetwork,
    pub gateway: IpAddr,
    pub interface: usize,
}

/// What setup built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wired {
    pub interfaces: Vec<WiredInterface>,
    pub ips: Vec<WiredIp>,
}

fn ipv4_of(address: &PodAddress) -> Result<Ipv4Addr> {
    address.ipv4_addr().ok_or_else(|| {
        Error::new(
            Kind::InvalidConfig,
            format!("the allocation ({address}) has no IPv4 address; this datapath needs one"),
        )
    })
}

/// The IPv6 address of a dual-stack allocation, if it has one.
fn ipv6_of(address: &PodAddress) -> Result<Option<Ipv6Addr>> {
    match address.ipv6.map(|c| c.addr) {
        None => Ok(None),
        Some(IpNetwork::V6(n)) => Ok(Some(n.ip())),
        Some(IpNetwork::V4(n)) => Err(Error::new(
            Kind::InvalidConfig,
            format!("the allocation ({address}) has the IPv4 address {n} as its IPv6 address"),
        )),
    }
}

/// The IPv6 address (with the vSwitch's IPv6 prefix) and gateway a datapath on the ENI itself
/// needs (exclusive ENI, ipvlan).
fn ipv6_with_gateway(address: &PodAddress, what: &str) -> Result<Option<exclusive_eni::EniIpv6>> {
    let Some(v6) = address.ipv6 else {
        return Ok(None);
    };
    match (v6.addr, v6.gateway) {
        (IpNetwork::V6(addr), Some(IpAddr::V6(gateway))) => {
            Ok(Some(exclusive_eni::EniIpv6 { addr, gateway }))
        }
        _ => Err(Error::new(
            Kind::InvalidConfig,
            format!("{what} address {address} needs an IPv6 address with an IPv6 gateway"),
        )),
    }
}

/// The IPv4 address (with its prefix) and gateway a datapath on the ENI itself needs.
fn ipv4_with_gateway(address: &PodAddress, what: &str) -> Result<(Ipv4Network, Ipv4Addr)> {
    let v4 = address.ipv4.ok_or_else(|| {
        Error::new(
            Kind::InvalidConfig,
            format!("the allocation ({address}) has no IPv4 address"),
        )
    })?;
    match (v4.addr, v4.gateway) {
        (IpNetwork::V4(ip), Some(IpAddr::V4(gateway))) => Ok((ip, gateway)),
        _ => Err(Error::new(
            Kind::InvalidConfig,
            format!("{what} address {address} needs an IPv4 gateway"),
        )),
    }
}

fn veth_spec<'a>(
    att: &Attachment<'a>,
    ns: &'a NetNs,
    host_ifname: &'a str,
    alias: &'a str,
    ip: Ipv4Addr,
    ip6: Option<Ipv6Addr>,
) -> VethSpec<'a> {
    VethSpec {
        netns: ns,
        ifname: att.ifname,
        host_ifname,
        alias,
        ip,
        ip6,
        mtu: att.mtu,
    }
}

/// The exclusive ENI's spec from the allocation.
fn eni_spec<'a>(
    att: &'a Attachment<'a>,
    address: &PodAddress,
    mac: &str,
    host_peer: Option<&crate::model::HostPeer>,
    names: &'a (String, String),
) -> Result<ExclusiveEniSpec<'a>> {
    let (ip, gateway) = ipv4_with_gateway(address, "exclusive ENI")?;
    Ok(ExclusiveEniSpec {
        netns: att.netns()?,
        ifname: att.ifname,
        mac: parse_mac(mac)?,
        ip,
        gateway,
        ipv6: ipv6_with_gateway(address, "exclusive ENI")?,
        mtu: att.mtu,
        host_peer: host_peer.map(|p| exclusive_eni::HostPeer {
            host_ifname: &names.0,
            alias: &names.1,
            service_cidr: p.service_cidr,
            node_ips: p.node_ips.clone(),
        }),
    })
}

/// The ipvlan spec from the allocation: the address with its vSwitch prefix and gateway.
fn ipvlan_spec<'a>(
    att: &'a Attachment<'a>,
    address: &PodAddress,
    mac: &str,
    to_node: &crate::model::HostPeer,
    alias: &'a str,
) -> Result<IpvlanSpec<'a>> {
    let (ip, gateway) = ipv4_with_gateway(address, "ipvlan")?;
    let ipv6 = ipv6_with_gateway(address, "ipvlan")?;
    Ok(IpvlanSpec {
        netns: att.netns()?,
        ifname: att.ifname,
        alias,
        mac: parse_mac(mac)?,
        ip,
        gateway,
        ipv6,
        mtu: att.mtu,
        service_cidr: to_node.service_cidr,
        node_ips: to_node.node_ips.clone(),
    })
}

/// Builds the attachment's datapath. On failure everything this call created is removed again.
pub fn setup(att: &Attachment, address: &PodAddress, dp: &Datapath) -> Result<Wired> {
    setup_prepared(att, address, dp, None)
}

/// Builds the part of a veth datapath that needs no address (see [`veth::PreparedVeth`]):
/// the plugin's work while the daemon allocates, when the daemon says its pods get veths.
/// `None` when the attachment's host veth already exists (a retried ADD's, or one the daemon is
/// still tearing down): [`setup_prepared`] deals with it after the daemon's answer.
pub fn prepare_veth(att: &Attachment) -> Result<Option<veth::PreparedVeth>> {
    let (host_ifname, alias) = (att.host_ifname(), att.alias());
    veth::prepare(&veth::VethPair {
        netns: att.netns()?,
        ifname: att.ifname,
        host_ifname: &host_ifname,
        alias: &alias,
        mtu: att.mtu,
    })
}

/// [`setup`], completing the veth pair `early` when there is one (from [`prepare_veth`]); a
/// datapath other than veth, or any failure, removes it.
pub fn setup_prepared(
    att: &Attachment,
    address: &PodAddress,
    dp: &Datapath,
    early: Option<veth::PreparedVeth>,
) -> Result<Wired> {
    let names = (att.host_ifname(), att.alias());
    let is_veth = matches!(dp, Datapath::Veth | Datapath::VethPolicy { .. });
    let early = match early {
        Some(p) if !is_veth => {
            p.discard();
            None
        }
        other => other,
    };
    match dp {
        Datapath::Veth | Datapath::VethPolicy { .. } => {
            let ip = ipv4_of(address)?;
            let ip6 = ipv6_of(address)?;
            let spec = veth_spec(att, att.netns()?, &names.0, &names.1, ip, ip6);
            let info = match early {
                Some(p) => p.finish(&spec)?,
                None => veth::setup(&spec)?,
            };
            let ips: Vec<IpAddr> = std::iter::once(IpAddr::V4(ip))
                .chain(ip6.map(IpAddr::V6))
                .collect();
            if let Datapath::VethPolicy { table, .. } = dp {
                let rules = Netlink::open().and_then(|mut nl| {
                    ips.iter()
                        .try_for_each(|ip| policy::setup_pod_rules(&mut nl, *ip, *table))
                });
                if let Err(e) = rules {
                    // Both undone: the veth, and a rule added before the failing one (the
                    // daemon holds this address for this attachment: the rules are ours).
                    let _ = veth::teardown(&names.0, &names.1);
                    let _ = Netlink::open().and_then(|mut nl| {
                        ips.iter()
                            .try_for_each(|ip| policy::teardown_pod_rules(&mut nl, *ip))
                    });
                    return Err(e);
                }
            }
            let mut wired_ips = vec![WiredIp {
                addr: IpNetwork::V4(Ipv4Network::from(ip)),
                gateway: IpAddr::V4(POD_GATEWAY),
                interface: 1,
            }];
            if let Some(ip6) = ip6 {
                wired_ips.push(WiredIp {
                    addr: IpNetwork::V6(Ipv6Network::from(ip6)),
                    gateway: IpAddr::V6(POD_GATEWAY_V6),
                    interface: 1,
                });
            }
            Ok(Wired {
                interfaces: vec![
                    WiredInterface {
                        name: info.host_ifname,
                        mac: info.host_mac,
                        mtu: info.mtu,
                        in_pod: false,
                    },
                    WiredInterface {
                        name: att.ifname.to_string(),
                        mac: info.pod_mac,
                        mtu: info.mtu,
                        in_pod: true,
                    },
                ],
                ips: wired_ips,
            })
        }
        Datapath::ExclusiveEni { mac, host_peer, .. } => {
            let spec = eni_spec(att, address, mac, host_peer.as_ref(), &names)?;
            // Its previous pod's namespace may still be on its way out, the device with it (a
            // retried ADD finds it in its own pod already).
            let in_pod = Netlink::open_in(spec.netns)
                .and_then(|mut nl| crate::netlink::find_link_by_mac(&mut nl, &spec.mac))
                .is_ok_and(|l| l.is_some());
            if !in_pod {
                super::eni_device::wait_for_mac(mac, ENI_RETURN_WAIT)?;
            }
            let info = exclusive_eni::setup(&spec)?;
            let mut interfaces = vec![WiredInterface {
                name: att.ifname.to_string(),
                mac: info.pod_mac,
                mtu: info.mtu,
                in_pod: true,
            }];
            if let Some(p) = info.host_peer {
                interfaces.push(WiredInterface {
                    name: p.host_ifname,
                    mac: p.host_mac,
                    mtu: info.mtu,
                    in_pod: false,
                });
                interfaces.push(WiredInterface {
                    name: p.pod_ifname,
                    mac: p.pod_mac,
                    mtu: info.mtu,
                    in_pod: true,
                });
            }
            Ok(Wired {
                interfaces,
                ips: on_eni_ips(spec.ip, spec.gateway, spec.ipv6.as_ref()),
            })
        }
        Datapath::Ipvlan { mac, to_node, .. } => {
            let spec = ipvlan_spec(att, address, mac, to_node, &names.1)?;
            let info = ipvlan::setup(&spec)?;
            Ok(Wired {
                interfaces: vec![WiredInterface {
                    name: att.ifname.to_string(),
                    mac: info.pod_mac,
                    mtu: info.mtu,
                    in_pod: true,
                }],
                ips: on_eni_ips(spec.ip, spec.gateway, spec.ipv6.as_ref()),
            })
        }
    }
}

/// The addresses of a pod whose interface 0 is on the ENI (exclusive ENI, ipvlan), IPv4 first,
/// each with its vSwitch gateway.
fn on_eni_ips(
    ip: Ipv4Network,
    gateway: Ipv4Addr,
    ipv6: Option<&exclusive_eni::EniIpv6>,
) -> Vec<WiredIp> {
    let mut ips = vec![WiredIp {
        addr: IpNetwork::V4(ip),
        gateway: IpAddr::V4(gateway),
        interface: 0,
    }];
    if let Some(v6) = ipv6 {
        ips.push(WiredIp {
            addr: IpNetwork::V6(v6.addr),
            gateway: IpAddr::V6(v6.gateway),
            interface: 0,
        });
    }
    ips
}

/// Verifies the whole datapath; the error lists every missing or wrong piece.
pub fn check(att: &Attachment, address: &PodAddress, dp: &Datapath) -> Result<()> {
    let names = (att.host_ifname(), att.alias());
    match dp {
        Datapath::Veth | Datapath::VethPolicy { .. } => {
            let ip = ipv4_of(address)?;
            let ip6 = ipv6_of(address)?;
            let mut results = vec![veth::check(&veth_spec(
                att,
                att.netns()?,
                &names.0,
                &names.1,
                ip,
                ip6,
            ))];
            if let Datapath::VethPolicy { table, .. } = dp {
                let mut nl = Netlink::open()?;
                let ips = std::iter::once(IpAddr::V4(ip)).chain(ip6.map(IpAddr::V6));
                results.extend(ips.map(|ip| policy::check_pod_rules(&mut nl, ip, *table)));
            }
            all_of(results)
        }
        Datapath::ExclusiveEni { mac, host_peer, .. } => {
            exclusive_eni::check(&eni_spec(att, address, mac, host_peer.as_ref(), &names)?)
        }
        Datapath::Ipvlan { mac, to_node, .. } => {
            ipvlan::check(&ipvlan_spec(att, address, mac, to_node, &names.1)?)
        }
    }
}

/// Every problem of several checks in one error (the first one's kind), as a check reports
/// them.
fn all_of(results: Vec<Result<()>>) -> Result<()> {
    let mut errors = results.into_iter().filter_map(Result::err);
    let Some(first) = errors.next() else {
        return Ok(());
    };
    let rest: Vec<String> = errors.map(|e| e.msg).collect();
    if rest.is_empty() {
        Err(first)
    } else {
        Err(Error::new(
            first.kind,
            format!("{}; {}", first.msg, rest.join("; ")),
        ))
    }
}

/// Removes the attachment's datapath. `known`: the allocation the daemon holds; `None` when the
/// daemon could not say (down), and then what provably belongs to the attachment on the node:
/// its host veth (name and alias) and the policy rules of the addresses routed onto it. Every
/// step is tried; the first error is returned. Missing pieces are not errors, and neither is a
/// link that belongs to someone else: it is left alone and logged.
pub fn teardown(att: &Attachment, known: Option<(&PodAddress, &Datapath)>) -> Result<()> {
    let (host_ifname, alias) = (att.host_ifname(), att.alias());
    if let Some((_, Datapath::ExclusiveEni { mac, host_peer, .. })) = known {
        let spec = EniTeardownSpec {
            netns: att.netns,
            mac: parse_mac(mac)?,
            host_veth: host_peer.as_ref().map(|_| HostVethRef {
                host_ifname: &host_ifname,
                alias: &alias,
            }),
        };
        let done = exclusive_eni::teardown(&spec)?;
        if let exclusive_eni::EniReturn::NotOurs(why) = &done.eni {
            log::warn!("left the device with MAC {mac} alone: {why}");
        }
        return Ok(());
    }
    if let Some((address, Datapath::Ipvlan { .. })) = known {
        return ipvlan::teardown(&IpvlanTeardown {
            netns: att.netns,
            ifname: att.ifname,
            alias: &alias,
            ip: address.ipv4_addr(),
            ip6: ipv6_of(address).ok().flatten(),
        });
    }
    if known.is_none() {
        // The daemon cannot say: this attachment's ipvlan interface (its alias) goes, but the
        // addresses on it are the pod's word, never trusted for node routes of some other pod:
        // the node side waits for GC or the sweep, which have the daemon's record.
        let is_ipvlan = att
            .netns
            .map(|ns| ipvlan::pod_ips(ns, att.ifname, &alias))
            .transpose()
            .unwrap_or_default()
            .is_some_and(|ips| !ips.is_empty());
        if is_ipvlan {
            return ipvlan::teardown(&IpvlanTeardown {
                netns: att.netns,
                ifname: att.ifname,
                alias: &alias,
                ip: None,
                ip6: None,
            });
        }
    }
    let ips: Vec<IpAddr> = match known {
        Some((address, _)) => address.ips().collect(),
        None => veth::routed_pod_ips(&host_ifname, &alias).unwrap_or_default(),
    };
    let mut first: Option<Error> = None;
    match veth::teardown(&host_ifname, &alias) {
        Ok(Teardown::NotOurs(why)) => eprintln!("terway: left {host_ifname} alone: {why}"),
        Ok(_) => {}
        Err(e) => {
            first.get_or_insert(e);
        }
    }
    if !ips.is_empty() {
        match Netlink::open() {
            Ok(mut nl) => {
                for ip in &ips {
                    if let Err(e) = policy::teardown_pod_rules(&mut nl, *ip) {
                        first.get_or_insert(e.context(format!("remove rules of {ip}")));
                    }
                }
            }
            Err(e) => {
                first.get_or_insert(e);
            }
        }
    }
    match first {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// The addresses DEL would clean up without the daemon, for its message.
pub fn routed_ips(container_id: &str, ifname: &str) -> Vec<IpAddr> {
    veth::routed_pod_ips(
        &host_veth_name(container_id, ifname),
        &host_veth_alias(container_id, ifname),
    )
    .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::IpConfig;

    fn dual(v6: &str, gw6: Option<&str>) -> PodAddress {
        let mut a = PodAddress::v4(
            Ipv4Addr::new(10, 240, 0, 10),
            24,
            Some(Ipv4Addr::new(10, 240, 0, 253)),
        );
        a.ipv6 = Some(IpConfig {
            addr: v6.parse().unwrap(),
            gateway: gw6.map(|g| g.parse().unwrap()),
        });
        a
    }

    #[test]
    fn ipv6_of_an_allocation() {
        let a = dual("2408:4005:3ff:1::10/64", Some("2408:4005:3ff:1::1"));
        assert_eq!(
            ipv6_of(&a).unwrap(),
            Some("2408:4005:3ff:1::10".parse().unwrap())
        );
        let v4_only = PodAddress::v4(Ipv4Addr::new(10, 0, 0, 5), 32, None);
        assert_eq!(ipv6_of(&v4_only).unwrap(), None);
        assert_eq!(ipv6_with_gateway(&v4_only, "ipvlan").unwrap(), None);
        // An IPv4 address in the IPv6 slot is somebody's bug, said so.
        let wrong = dual("10.0.0.9/32", None);
        assert_eq!(ipv6_of(&wrong).unwrap_err().kind, Kind::InvalidConfig);
        // On the ENI the gateway is the vSwitch's: without one there is no default route.
        let e =
            ipv6_with_gateway(&dual("2408:4005:3ff:1::10/64", None), "exclusive ENI").unwrap_err();
        assert!(e.msg.contains("exclusive ENI"), "{}", e.msg);
        assert!(e.msg.contains("IPv6 gateway"), "{}", e.msg);
    }

    #[test]
    fn all_of_keeps_every_problem_and_the_first_kind() {
        assert!(all_of(vec![Ok(()), Ok(())]).is_ok());
        let e = all_of(vec![
            Ok(()),
            Err(Error::new(Kind::Datapath, "veth broken")),
            Err(Error::new(Kind::Netns, "rule missing")),
        ])
        .unwrap_err();
        assert_eq!(e.kind, Kind::Datapath);
        assert_eq!(e.msg, "veth broken; rule missing");
        let one = all_of(vec![Err(Error::new(Kind::Netns, "gone"))]).unwrap_err();
        assert_eq!((one.kind, one.msg.as_str()), (Kind::Netns, "gone"));
    }

    #[test]
    fn on_eni_addresses_are_ipv4_first_with_their_gateways() {
        let a = dual("2408:4005:3ff:1::10/64", Some("2408:4005:3ff:1::1"));
        let v6 = ipv6_with_gateway(&a, "ipvlan").unwrap().unwrap();
        let ips = on_eni_ips(
            "10.240.0.10/24".parse().unwrap(),
            Ipv4Addr::new(10, 240, 0, 253),
            Some(&v6),
        );
        assert_eq!(ips.len(), 2);
        assert_eq!(ips[0].addr.to_string(), "10.240.0.10/24");
        assert_eq!(ips[1].addr.to_string(), "2408:4005:3ff:1::10/64");
        assert_eq!(ips[1].gateway.to_string(), "2408:4005:3ff:1::1");
        assert!(ips.iter().all(|i| i.interface == 0));
        let v4_only = on_eni_ips(
            "10.240.0.10/24".parse().unwrap(),
            Ipv4Addr::new(10, 240, 0, 253),
            None,
        );
        assert_eq!(v4_only.len(), 1);
    }
}
