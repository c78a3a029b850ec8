//! The IPv6 half of a dual-stack pod, shared by the veth and exclusive ENI datapaths.
//!
//! - **Pod interface**: `accept_ra` 0 (its routes are terway's, never a router's on the link),
//!   `accept_dad` 0, and the address added with `IFA_F_NODAD`: usable the moment ADD returns
//!   instead of tentative for a second or more, when the pod's first packets would be dropped.
//! - **veth**: the pod routes `::/0 via fe80::1 dev eth0` with a permanent neighbour
//!   `fe80::1 → host veth MAC`, exactly as `169.254.1.1` for IPv4, so the pod never needs NDP
//!   for its gateway. The host veth also carries `fe80::1/64` (nodad) itself: a link-local the
//!   node always has there, whatever `addr_gen_mode` says, as the source of its own NDP to the
//!   pod and so `ping fe80::1%eth0` answers from the pod.
//! - **Host veth**: IPv6 on, `accept_ra` 0: a pod must never be able to route the node by
//!   sending router advertisements.
//! - **Node**: `net.ipv6.conf.all.forwarding` 1. Turning it on makes the kernel ignore RAs on
//!   every interface whose `accept_ra` is 1, which would let the node's RA-learnt default route
//!   expire: the node's own interfaces (those with a global IPv6 address, not terway's host
//!   veths) that take RAs are set to 2 first (accept RAs even when forwarding). Pod-facing links
//!   never are: a pod must not route the node.

use super::veth::set_if_differs;
use crate::error::Result;
use crate::netlink::{Addr, Netlink};
use crate::netns::NetNs;
use crate::sysctl;
use ipnetwork::{IpNetwork, Ipv6Network};
use std::net::Ipv6Addr;

/// The link-local gateway of every veth pod's IPv6 default route; its MAC is the host veth's.
pub const POD_GATEWAY_V6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);

/// The node-wide IPv6 forwarding switch.
pub const FORWARDING_KEY: &str = "net/ipv6/conf/all/forwarding";

/// `fe80::1/64`, the address the host veth carries.
pub fn host_gateway_net() -> IpNetwork {
    // fe80::1 with 64 is always a valid prefix.
    IpNetwork::V6(Ipv6Network::new(POD_GATEWAY_V6, 64).unwrap_or(Ipv6Network::from(POD_GATEWAY_V6)))
}

/// In fe80::/10, the link-local range.
pub fn is_link_local(ip: &Ipv6Addr) -> bool {
    ip.segments()[0] & 0xffc0 == 0xfe80
}

/// Not an address a pod can hold.
pub fn unusable(ip: &Ipv6Addr) -> bool {
    ip.is_unspecified() || ip.is_loopback() || ip.is_multicast() || is_link_local(ip)
}

/// The sysctls a pod interface needs before it gets an IPv6 address, written inside the pod's
/// namespace: IPv6 on, no RAs, no DAD.
pub fn prepare_pod_iface(ns: &NetNs, ifname: &str) -> Result<()> {
    let name = ifname.to_string();
    ns.run(move || {
        for (leaf, value) in [
            ("disable_ipv6", "0"),
            ("accept_ra", "0"),
            ("accept_dad", "0"),
        ] {
            set_if_differs(&sysctl::ipv6_conf_key(&name, leaf), value)?;
        }
        Ok(())
    })
    .map_err(|e| {
        e.context(format!(
            "prepare pod interface {ifname} in netns {} for IPv6",
            ns.path().display()
        ))
    })
}

/// The host veth's IPv6: on, no RAs from the pod, `fe80::1/64` without DAD.
pub fn prepare_host_veth(host: &mut Netlink, index: u32, ifname: &str) -> Result<()> {
    set_if_differs(&sysctl::ipv6_conf_key(ifname, "disable_ipv6"), "0")?;
    set_if_differs(&sysctl::ipv6_conf_key(ifname, "accept_ra"), "0")?;
    host.add_addr_nodad(index, host_gateway_net())
}

/// The interfaces whose `accept_ra` must become 2 before forwarding goes on, from each
/// `net/ipv6/conf` entry and its `accept_ra`: those at 1 (they take RAs now and would stop)
/// that the node itself uses (in `addressed`: they carry a global IPv6 address). `all`,
/// `default` and `lo` are not interfaces, and terway's host veths face pods.
pub fn ra_keepers(confs: &[(String, String)], addressed: &[String]) -> Vec<String> {
    confs
        .iter()
        .filter(|(name, accept_ra)| {
            !matches!(name.as_str(), "all" | "default" | "lo")
                && !name.starts_with(super::HOST_VETH_PREFIX)
                && accept_ra == "1"
                && addressed.contains(name)
        })
        .map(|(name, _)| name.clone())
        .collect()
}

/// Turns IPv6 forwarding on in the calling thread's namespace (the node's), keeping RAs on
/// the interfaces that take them. Nothing is written when it is on already.
pub fn enable_forwarding(nl: &mut Netlink) -> Result<()> {
    if sysctl::get(FORWARDING_KEY)? == "1" {
        return Ok(());
    }
    let mut addressed = Vec::new();
    for a in nl.addrs(None)? {
        if let IpNetwork::V6(n) = a.addr
            && !is_link_local(&n.ip())
            && !n.ip().is_loopback()
            && let Some(link) = nl.link_by_index(a.index)?
        {
            addressed.push(link.name);
        }
    }
    let mut confs = Vec::new();
    for name in sysctl::ipv6_conf_names()? {
        // An interface may vanish between the listing and the read: it needs nothing then.
        if let Ok(v) = sysctl::get(&sysctl::ipv6_conf_key(&name, "accept_ra")) {
            confs.push((name, v));
        }
    }
    for name in ra_keepers(&confs, &addressed) {
        log::info!("IPv6 forwarding goes on: accept_ra 2 on {name} so it keeps taking RAs");
        sysctl::set(&sysctl::ipv6_conf_key(&name, "accept_ra"), "2")?;
    }
    sysctl::set(FORWARDING_KEY, "1")
}

/// Notes a missing IPv6 forwarding switch on the node.
pub fn check_forwarding(problems: &mut Vec<String>) -> Result<()> {
    if sysctl::get(FORWARDING_KEY)? != "1" {
        problems.push("net.ipv6.conf.all.forwarding is not 1 on the node".into());
    }
    Ok(())
}

/// Notes `want` missing from `addrs` (an interface's), or there but not usable yet.
pub fn check_addr(addrs: &[Addr], want: IpNetwork, what: &str, problems: &mut Vec<String>) {
    match addrs.iter().find(|a| a.addr == want) {
        None => problems.push(format!("{what} address {want} is missing")),
        Some(a) if a.tentative() => problems.push(format!(
            "{what} address {want} is tentative or failed duplicate address detection"
        )),
        Some(_) => {}
    }
}

/// Notes a pod interface whose IPv6 sysctls are not what [`prepare_pod_iface`] wrote (read
/// inside the pod's namespace).
pub fn check_pod_iface(ns: &NetNs, ifname: &str, problems: &mut Vec<String>) -> Result<()> {
    let name = ifname.to_string();
    let found = ns.run(move || {
        let mut wrong = Vec::new();
        for (leaf, want) in [("disable_ipv6", "0"), ("accept_ra", "0")] {
            let key = sysctl::ipv6_conf_key(&name, leaf);
            // The interface may be gone: the caller reports that.
            if let Ok(v) = sysctl::get(&key)
                && v != want
            {
                wrong.push(format!("{leaf} on pod {name} is {v}, want {want}"));
            }
        }
        Ok(wrong)
    })?;
    problems.extend(found);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_interfaces_taking_ras_are_kept_taking_them() {
        let confs: Vec<(String, String)> = [
            ("all", "1"),
            ("default", "1"),
            ("lo", "1"),
            ("eth0", "1"),
            ("eth1", "0"),
            ("eth2", "2"),
            ("eth0.100", "1"),
        ]
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .chain([("tw0123456789abc".to_string(), "1".to_string())])
        .collect();
        let addressed: Vec<String> = ["eth0", "eth2", "eth0.100", "tw0123456789abc", "lo"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(ra_keepers(&confs, &addressed), ["eth0", "eth0.100"]);
        // An interface without a global address is not the node's: left as it is.
        assert_eq!(ra_keepers(&confs, &addressed[..1]), ["eth0"]);
    }

    #[test]
    fn gateway_and_usable_addresses() {
        assert_eq!(host_gateway_net().to_string(), "fe80::1/64");
        assert!(is_link_local(&POD_GATEWAY_V6));
        assert!(is_link_local(&"febf::1".parse().unwrap()));
        assert!(!is_link_local(&"fec0::1".parse().unwrap()));
        for bad in ["::", "::1", "ff02::1", "fe80::5"] {
            assert!(unusable(&bad.parse().unwrap()), "{bad}");
        }
        assert!(!unusable(&"2408:4005:3ff:1::10".parse().unwrap()));
    }
}
