//! Policy routing for ENIMultiIP (REFERENCE §5): traffic *from* a pod leaves through the ENI that
//! owns its address, via a per-ENI table; traffic *to* a pod is looked up in main (where the veth
//! datapath put `podIP/32 dev <host veth>`) before any ENI table can claim it.
//!
//! - per ENI: link up, `rp_filter` 0, table `1000 + ifindex`: `default via <gw> dev <eni> onlink`
//!   (dual stack, [`prepare_eni_table_v6`]: IPv6 on, `accept_ra` 0, and the same table gets
//!   `<IPv6 gw>/128 dev <eni>` and `default via <IPv6 gw> dev <eni>`)
//! - per pod: rule 512 `to podIP lookup main`, rule 2048 `from podIP lookup <ENI table>`, for
//!   each of its addresses (IPv6 rules are in the IPv6 rule list)
//!
//! Everything here acts on the node: `nl` must be a socket of the calling thread's namespace
//! (sysctls are written in the calling thread's namespace).

use crate::err;
use crate::error::{Kind, Result};
use crate::netlink::{Family, Link, Netlink, Route, Rule, TABLE_MAIN};
use crate::sysctl;
use ipnetwork::IpNetwork;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// ENI tables are numbered `ENI_TABLE_BASE + ENI ifindex`, as upstream Terway does.
pub const ENI_TABLE_BASE: u32 = 1000;
/// Priority of `to podIP lookup main`: before every `from` rule.
pub const PRIO_TO_POD: u32 = 512;
/// Priority of `from podIP lookup <ENI table>`.
pub const PRIO_FROM_POD: u32 = 2048;

/// The routing table of the ENI with interface index `eni_index`.
pub fn eni_table(eni_index: u32) -> u32 {
    ENI_TABLE_BASE + eni_index
}

/// `default via <gateway> dev <eni>`: `onlink` for IPv4. IPv6 cannot use `onlink` when the
/// node's main table has the vSwitch's /64 on another ENI (the kernel then refuses the gateway
/// as "device mismatch"), so the table gets a route to the gateway on the ENI instead.
fn eni_default_route(eni_index: u32, gateway: IpAddr) -> Route {
    Route {
        dst: Family::of_ip(&gateway).default_dst(),
        gateway: Some(gateway),
        oif: Some(eni_index),
        table: eni_table(eni_index),
        scope_link: false,
        onlink: gateway.is_ipv4(),
    }
}

fn eni_link(nl: &mut Netlink, eni_index: u32) -> Result<Link> {
    nl.link_by_index(eni_index)?.ok_or_else(|| {
        err!(
            Kind::Datapath,
            "ENI with ifindex {eni_index} does not exist on the node"
        )
    })
}

/// Readies an ENI for pod traffic and returns its table: link up, `rp_filter` 0 and
/// `default via <gateway> dev <eni> onlink` in table `1000 + eni_index`. Idempotent.
pub fn prepare_eni_table(nl: &mut Netlink, eni_index: u32, gateway: Ipv4Addr) -> Result<u32> {
    let link = eni_link(nl, eni_index)?;
    let ctx =
        |e: crate::Error| e.context(format!("prepare ENI {} (ifindex {eni_index})", link.name));
    nl.set_link_up(eni_index).map_err(ctx)?;
    let key = sysctl::rp_filter_key(&link.name);
    if sysctl::get(&key).map_err(ctx)? != "0" {
        sysctl::set(&key, "0").map_err(ctx)?;
    }
    nl.replace_route(&eni_default_route(eni_index, gateway.into()))
        .map_err(ctx)?;
    Ok(eni_table(eni_index))
}

/// The IPv6 half of [`prepare_eni_table`] for a dual-stack node: IPv6 on and `accept_ra` 0 on
/// the ENI (an RA must not put a default route via the ENI into main), and `default via
/// <gateway> dev <eni> onlink` in the same table `1000 + eni_index`. Idempotent.
pub fn prepare_eni_table_v6(nl: &mut Netlink, eni_index: u32, gateway: Ipv6Addr) -> Result<u32> {
    let link = eni_link(nl, eni_index)?;
    let ctx = |e: crate::Error| {
        e.context(format!(
            "prepare ENI {} (ifindex {eni_index}) for IPv6",
            link.name
        ))
    };
    for (leaf, value) in [("disable_ipv6", "0"), ("accept_ra", "0")] {
        let key = sysctl::ipv6_conf_key(&link.name, leaf);
        if sysctl::get(&key).map_err(ctx)? != value {
            sysctl::set(&key, value).map_err(ctx)?;
        }
    }
    // An IPv6 route needs its device up.
    nl.set_link_up(eni_index).map_err(ctx)?;
    nl.replace_route(&eni_gateway_route(eni_index, gateway))
        .map_err(ctx)?;
    nl.replace_route(&eni_default_route(eni_index, gateway.into()))
        .map_err(ctx)?;
    Ok(eni_table(eni_index))
}

/// `<gateway>/128 dev <eni>` in the ENI's table: what makes the IPv6 gateway valid there.
fn eni_gateway_route(eni_index: u32, gateway: Ipv6Addr) -> Route {
    Route {
        dst: IpNetwork::V6(gateway.into()),
        gateway: None,
        oif: Some(eni_index),
        table: eni_table(eni_index),
        scope_link: false,
        onlink: false,
    }
}

/// Verifies [`prepare_eni_table_v6`]; the error lists what is missing or wrong.
pub fn check_eni_table_v6(nl: &mut Netlink, eni_index: u32, gateway: Ipv6Addr) -> Result<()> {
    let link = eni_link(nl, eni_index)?;
    let table = eni_table(eni_index);
    let mut problems = Vec::new();
    if !link.up {
        problems.push(format!("ENI {} is down", link.name));
    }
    for (leaf, want) in [("disable_ipv6", "0"), ("accept_ra", "0")] {
        let v = sysctl::get(&sysctl::ipv6_conf_key(&link.name, leaf))?;
        if v != want {
            problems.push(format!("{leaf} on {} is {v}, want {want}", link.name));
        }
    }
    let routes = nl.routes_of(Family::V6, table)?;
    let to_gateway = eni_gateway_route(link.index, gateway);
    if !routes
        .iter()
        .any(|r| r.dst == to_gateway.dst && r.oif == to_gateway.oif)
    {
        problems.push(format!(
            "{gateway} dev {} in table {table} is missing",
            link.name
        ));
    }
    check_default(&routes, &link, gateway.into(), table, &mut problems);
    finish(&link, table, problems)
}

/// Verifies [`prepare_eni_table`]; the error lists what is missing or wrong.
pub fn check_eni_table(nl: &mut Netlink, eni_index: u32, gateway: Ipv4Addr) -> Result<()> {
    let link = eni_link(nl, eni_index)?;
    let table = eni_table(eni_index);
    let mut problems = Vec::new();
    if !link.up {
        problems.push(format!("ENI {} is down", link.name));
    }
    let rp = sysctl::get(&sysctl::rp_filter_key(&link.name))?;
    if rp != "0" {
        problems.push(format!("rp_filter on {} is {rp}, want 0", link.name));
    }
    check_default(
        &nl.routes(table)?,
        &link,
        gateway.into(),
        table,
        &mut problems,
    );
    finish(&link, table, problems)
}

/// Notes a missing or wrong `default via <gateway> dev <ENI> onlink` among a table's routes
/// (of the gateway's family).
fn check_default(
    routes: &[Route],
    link: &Link,
    gateway: IpAddr,
    table: u32,
    problems: &mut Vec<String>,
) {
    let want = eni_default_route(link.index, gateway);
    match routes.iter().find(|r| r.dst == want.dst) {
        None => problems.push(format!(
            "default via {gateway} dev {}{} in table {table} is missing",
            link.name,
            if want.onlink { " onlink" } else { "" }
        )),
        Some(r) if r.gateway != want.gateway || r.oif != want.oif || r.onlink != want.onlink => {
            problems.push(format!(
                "default route in table {table} is via {} oif {}{}, want via {gateway} dev {}{}",
                r.gateway.map_or("-".into(), |g| g.to_string()),
                r.oif.map_or("-".into(), |o| o.to_string()),
                if r.onlink { " onlink" } else { "" },
                link.name,
                if want.onlink { " onlink" } else { "" }
            ));
        }
        Some(_) => {}
    }
}

fn finish(link: &Link, table: u32, problems: Vec<String>) -> Result<()> {
    if problems.is_empty() {
        Ok(())
    } else {
        Err(err!(
            Kind::Datapath,
            "ENI {} (table {table}) is not ready: {}",
            link.name,
            problems.join("; ")
        ))
    }
}

/// The two rules of a pod whose address (IPv4 or IPv6) lives on the ENI with table `table`.
pub fn pod_rules(pod_ip: impl Into<IpAddr>, table: u32) -> [Rule; 2] {
    let host = IpNetwork::from(pod_ip.into());
    let family = Family::of(&host);
    [
        Rule {
            family,
            priority: PRIO_TO_POD,
            src: None,
            dst: Some(host),
            table: TABLE_MAIN,
        },
        Rule {
            family,
            priority: PRIO_FROM_POD,
            src: Some(host),
            dst: None,
            table,
        },
    ]
}

/// This pod's rules as they are now, whatever table they point to.
fn existing_pod_rules(nl: &mut Netlink, pod_ip: IpAddr) -> Result<Vec<Rule>> {
    let host = IpNetwork::from(pod_ip);
    let family = Family::of(&host);
    let host = Some(host);
    Ok(nl
        .rules_of(family)?
        .into_iter()
        .filter(|r| {
            (r.priority == PRIO_TO_POD && r.dst == host && r.src.is_none())
                || (r.priority == PRIO_FROM_POD && r.src == host && r.dst.is_none())
        })
        .collect())
}

/// Installs the pod's rules. Rules for the same pod IP pointing to another table (a leftover
/// from an earlier owner of the address) are removed, since they would shadow the new ones.
pub fn setup_pod_rules(nl: &mut Netlink, pod_ip: impl Into<IpAddr>, table: u32) -> Result<()> {
    let pod_ip = pod_ip.into();
    let want = pod_rules(pod_ip, table);
    let ctx = |e: crate::Error| e.context(format!("set up policy rules for pod {pod_ip}"));
    for stale in existing_pod_rules(nl, pod_ip).map_err(ctx)? {
        if !want.contains(&stale) {
            log::info!("removing stale rule for {pod_ip}: lookup {}", stale.table);
            nl.del_rule(&stale).map_err(ctx)?;
        }
    }
    for r in &want {
        nl.add_rule(r).map_err(ctx)?;
    }
    Ok(())
}

/// Removes every rule of this pod IP (any table). Idempotent.
pub fn teardown_pod_rules(nl: &mut Netlink, pod_ip: impl Into<IpAddr>) -> Result<()> {
    let pod_ip = pod_ip.into();
    let ctx = |e: crate::Error| e.context(format!("remove policy rules of pod {pod_ip}"));
    for r in existing_pod_rules(nl, pod_ip).map_err(ctx)? {
        nl.del_rule(&r).map_err(ctx)?;
    }
    Ok(())
}

/// Verifies the pod's rules: both present, nothing pointing elsewhere.
pub fn check_pod_rules(nl: &mut Netlink, pod_ip: impl Into<IpAddr>, table: u32) -> Result<()> {
    let pod_ip = pod_ip.into();
    let want = pod_rules(pod_ip, table);
    let have = existing_pod_rules(nl, pod_ip)?;
    let mut problems = Vec::new();
    for r in &want {
        if !have.contains(r) {
            problems.push(format!("rule {r} is missing"));
        }
    }
    for r in &have {
        if !want.contains(r) {
            problems.push(format!("unexpected rule {r}"));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(err!(
            Kind::Datapath,
            "policy routing of pod {pod_ip} is broken: {}",
            problems.join("; ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_rules_follow_the_recipe() {
        let ip = Ipv4Addr::new(10, 240, 6, 10);
        let [to, from] = pod_rules(ip, eni_table(3));
        assert_eq!(
            to.to_string(),
            "512: from all to 10.240.6.10/32 lookup main"
        );
        assert_eq!(
            from.to_string(),
            "2048: from 10.240.6.10/32 to all lookup 1003"
        );
    }

    #[test]
    fn ipv6_pod_rules_follow_the_recipe() {
        let ip: Ipv6Addr = "2408:4005:3ff:1::10".parse().unwrap();
        let [to, from] = pod_rules(ip, eni_table(3));
        assert_eq!(to.family, Family::V6);
        assert_eq!(from.family, Family::V6);
        assert_eq!(
            to.to_string(),
            "512: from all to 2408:4005:3ff:1::10/128 lookup main"
        );
        assert_eq!(
            from.to_string(),
            "2048: from 2408:4005:3ff:1::10/128 to all lookup 1003"
        );
    }

    #[test]
    fn eni_route_is_default_onlink_in_its_table() {
        let r = eni_default_route(5, Ipv4Addr::new(10, 240, 0, 253).into());
        assert_eq!(r.table, 1005);
        assert_eq!(r.dst.prefix(), 0);
        assert!(r.onlink && !r.scope_link);
        assert_eq!(r.oif, Some(5));
        let gw6: Ipv6Addr = "2408:4005:3ff:1::1".parse().unwrap();
        let r6 = eni_default_route(5, gw6.into());
        assert_eq!(r6.dst, crate::netlink::DEFAULT_DST_V6);
        assert_eq!(r6.gateway, Some(IpAddr::V6(gw6)));
        // IPv6: no onlink; the gateway's /128 on the ENI in the same table makes it valid.
        assert!(!r6.onlink);
        assert_eq!(r6.table, 1005);
        let to_gw = eni_gateway_route(5, gw6);
        assert_eq!(to_gw.dst.to_string(), "2408:4005:3ff:1::1/128");
        assert_eq!((to_gw.oif, to_gw.table), (Some(5), 1005));
        assert!(to_gw.gateway.is_none());
    }
}
