//! The veth datapath's check: every missing or wrong piece of an attachment, in one error.

use super::v6::{check_host_v6, check_pod_v6};
use super::{POD_GATEWAY, POD_GATEWAY_V6, VethSpec, ipv6, validate};
use crate::error::Result;
use crate::netlink::{Link, Netlink, Route, TABLE_MAIN, format_mac};
use crate::sysctl;
use std::net::IpAddr;

/// Verifies the whole datapath; the error lists every missing or wrong piece.
pub fn check(spec: &VethSpec) -> Result<()> {
    super::super::checked(&spec.describe(), |problems| check_inner(spec, problems))
}

fn check_link(link: &Link, spec: &VethSpec, side: &str, problems: &mut Vec<String>) {
    if link.kind.as_deref() != Some("veth") {
        let kind = link.kind.as_deref().unwrap_or("physical");
        problems.push(format!(
            "{side} link {} is a {kind} link, not a veth",
            link.name
        ));
    }
    if !link.up {
        problems.push(format!("{side} link {} is down", link.name));
    }
    if link.mtu != spec.mtu {
        problems.push(format!(
            "{side} link {} has MTU {}, want {}",
            link.name, link.mtu, spec.mtu
        ));
    }
}

fn check_inner(spec: &VethSpec, problems: &mut Vec<String>) -> Result<()> {
    validate(spec)?;
    let mut host = Netlink::open()?;
    let host_link = host.link_by_name(spec.host_ifname)?;
    match &host_link {
        None => problems.push(format!("host veth {} is missing", spec.host_ifname)),
        Some(link) => {
            check_link(link, spec, "host", problems);
            if let Some(a) = link.alias.as_deref().filter(|a| *a != spec.alias) {
                problems.push(format!(
                    "host veth {} has alias {a:?}, want {:?}: it belongs to another attachment",
                    link.name, spec.alias
                ));
            }
            let want = spec.host_route(link.index);
            let found = host
                .routes(TABLE_MAIN)?
                .into_iter()
                .find(|r| r.dst == want.dst);
            match found {
                None => problems.push(format!(
                    "host route {} dev {} is missing",
                    want.dst, spec.host_ifname
                )),
                Some(r) if r.oif != want.oif || r.gateway.is_some() || !r.scope_link => {
                    problems.push(format!(
                        "host route to {} is {}, want dev {} scope link",
                        want.dst,
                        show_route(&r),
                        spec.host_ifname
                    ));
                }
                Some(_) => {}
            }
            let rp = sysctl::get(&sysctl::rp_filter_key(spec.host_ifname))?;
            if rp != "0" {
                problems.push(format!("rp_filter on {} is {rp}, want 0", spec.host_ifname));
            }
            if let Some(ip6) = spec.ip6 {
                check_host_v6(&mut host, link, ip6, problems)?;
            }
        }
    }
    if sysctl::get("net/ipv4/ip_forward")? != "1" {
        problems.push("net.ipv4.ip_forward is not 1 on the node".into());
    }
    if spec.ip6.is_some() {
        ipv6::check_forwarding(problems)?;
    }

    let mut pod = Netlink::open_in(spec.netns)?;
    match pod.link_by_name("lo")? {
        Some(lo) if !lo.up => problems.push("pod lo is down".into()),
        _ => {}
    }
    let Some(pod_link) = pod.link_by_name(spec.ifname)? else {
        problems.push(format!("pod interface {} is missing", spec.ifname));
        return Ok(());
    };
    check_link(&pod_link, spec, "pod", problems);
    let want_addr = spec.pod_net();
    if !pod
        .addrs(Some(pod_link.index))?
        .iter()
        .any(|a| a.addr == want_addr)
    {
        problems.push(format!(
            "pod address {want_addr} on {} is missing",
            spec.ifname
        ));
    }
    let want = spec.pod_default_route(pod_link.index);
    let default = pod
        .routes(TABLE_MAIN)?
        .into_iter()
        .find(|r| r.dst.prefix() == 0);
    match default {
        None => problems.push(format!(
            "pod default route via {POD_GATEWAY} dev {} onlink is missing",
            spec.ifname
        )),
        Some(r) if r.gateway != want.gateway || r.oif != want.oif || !r.onlink => {
            problems.push(format!(
                "pod default route is {}, want via {POD_GATEWAY} dev {} onlink",
                show_route(&r),
                spec.ifname
            ));
        }
        Some(_) => {}
    }
    let host_mac = host_link.as_ref().and_then(|l| l.mac);
    let neighs = pod.neighs(pod_link.index)?;
    check_gateway_neigh(
        &neighs,
        IpAddr::V4(POD_GATEWAY),
        host_mac,
        spec.ifname,
        problems,
    );
    if let Some(ip6) = spec.ip6 {
        check_pod_v6(&mut pod, &pod_link, ip6, spec, problems)?;
        check_gateway_neigh(
            &neighs,
            IpAddr::V6(POD_GATEWAY_V6),
            host_mac,
            spec.ifname,
            problems,
        );
    }
    Ok(())
}

/// The pod's permanent neighbour for its link-local gateway `gw`, pointing at the host veth
/// (also exclusive ENI mode's `veth1`).
pub(in crate::datapath) fn check_gateway_neigh(
    neighs: &[crate::netlink::Neigh],
    gw: IpAddr,
    host_mac: Option<[u8; 6]>,
    ifname: &str,
    problems: &mut Vec<String>,
) {
    match neighs.iter().find(|n| n.ip == gw) {
        None => problems.push(format!("pod neighbour {gw} on {ifname} is missing")),
        Some(n) => {
            if !n.permanent {
                problems.push(format!("pod neighbour {gw} is not permanent"));
            }
            if host_mac.is_some() && n.mac != host_mac {
                problems.push(format!(
                    "pod neighbour {gw} points to {}, want the host veth MAC {}",
                    n.mac.as_ref().map_or("nothing".into(), format_mac),
                    host_mac.as_ref().map_or(String::new(), format_mac)
                ));
            }
        }
    }
}

pub(in crate::datapath) fn show_route(r: &Route) -> String {
    let mut s = r.dst.to_string();
    if let Some(gw) = r.gateway {
        s.push_str(&format!(" via {gw}"));
    }
    if let Some(oif) = r.oif {
        s.push_str(&format!(" oif #{oif}"));
    }
    if r.scope_link {
        s.push_str(" scope link");
    }
    if r.onlink {
        s.push_str(" onlink");
    }
    s
}
