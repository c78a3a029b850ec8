//! The daemon's own clean-up of allocations whose pod is gone: a DEL that ran while the daemon
//! was down removed the wiring but could not release the address, and not every runtime sends
//! CNI GC. An allocation is an orphan when it is older than a grace period (its ADD may still
//! be running), its network namespace no longer exists and its host veth is gone (an ipvlan
//! pod has none: its interface went with its namespace).

use crate::datapath::{host_veth_name, ipvlan, policy};
use crate::model::{AttachKey, Datapath};
use crate::netlink::Netlink;
use crate::store::StoredAllocation;
use std::collections::BTreeSet;
use std::path::Path;

pub const EVERY_MS: u64 = 60_000;

/// Pure part: which allocations are orphans, given what exists.
pub fn orphans(
    allocs: &[StoredAllocation],
    now_secs: u64,
    grace_secs: u64,
    netns_exists: impl Fn(&str) -> bool,
    links: &BTreeSet<String>,
) -> Vec<AttachKey> {
    allocs
        .iter()
        .filter(|a| a.created_unix.saturating_add(grace_secs) <= now_secs)
        .filter(|a| a.netns.is_empty() || !netns_exists(&a.netns))
        .filter(|a| !links.contains(&host_veth_name(&a.key.container_id, &a.key.ifname)))
        .map(|a| a.key.clone())
        .collect()
}

/// CNI GC: allocations of `network` the runtime no longer knows, past the grace period (an
/// ADD takes well under it; a younger allocation may still be being wired). They are
/// only candidates: the plugin removes their wiring first and then releases each one.
pub fn gc_candidates<'a>(
    allocs: impl Iterator<Item = &'a StoredAllocation>,
    network: &str,
    valid: &[AttachKey],
    now_secs: u64,
    grace_secs: u64,
) -> Vec<AttachKey> {
    allocs
        .filter(|a| a.key.network == network && !valid.contains(&a.key))
        .filter(|a| a.created_unix.saturating_add(grace_secs) <= now_secs)
        .map(|a| a.key.clone())
        .collect()
}

/// Whether a pod's namespace may still exist: it does, or the daemon cannot see where it would
/// be (a daemon in a mount namespace without the runtime's netns directory must not take every
/// pod for gone).
fn netns_may_exist(p: &str) -> bool {
    let path = Path::new(p);
    path.exists() || path.parent().is_some_and(|d| !d.is_dir())
}

/// Finds orphans in this (the node's) namespace and removes their leftover policy rules (and,
/// of ipvlan pods, the node's route and neighbour through the host slave).
pub fn find(allocs: &[StoredAllocation], now_secs: u64, grace_secs: u64) -> Vec<AttachKey> {
    let mut nl = match Netlink::open() {
        Ok(nl) => nl,
        Err(e) => {
            log::warn!("sweep: {e}");
            return Vec::new();
        }
    };
    let links: BTreeSet<String> = match nl.links() {
        Ok(l) => l.into_iter().map(|l| l.name).collect(),
        Err(e) => {
            log::warn!("sweep: list links: {e}");
            return Vec::new();
        }
    };
    let found = orphans(allocs, now_secs, grace_secs, netns_may_exist, &links);
    for a in allocs.iter().filter(|a| found.contains(&a.key)) {
        // Still ours until released, so no other pod's rules can be hit.
        if let Some(ip) = a.address.ipv4_addr()
            && let Err(e) = policy::teardown_pod_rules(&mut nl, ip)
        {
            log::warn!("sweep: rules of {ip}: {e}");
        }
        if let (Some(ip), Datapath::Ipvlan { .. }) = (a.address.ipv4_addr(), &a.datapath)
            && let Err(e) = ipvlan::remove_host_side(&mut nl, ip)
        {
            log::warn!("sweep: node route of {ip}: {e}");
        }
        log::info!(
            "sweep: releasing {} of {} ({}): its namespace and veth are gone",
            a.address,
            a.pod,
            a.key
        );
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::PodRef;

    fn alloc(id: &str, netns: &str, created: u64) -> StoredAllocation {
        StoredAllocation {
            key: AttachKey::new("terway", id, "eth0"),
            pod: PodRef::default(),
            netns: netns.into(),
            address: crate::model::PodAddress::v4("10.0.0.2".parse().unwrap(), 32, None),
            datapath: crate::model::Datapath::Veth,
            created_unix: created,
        }
    }

    #[test]
    fn a_netns_directory_the_daemon_cannot_see_is_not_a_gone_pod() {
        assert!(netns_may_exist("/nonexistent-terway-dir/pod"));
        assert!(!netns_may_exist("/proc/no-such-netns-here"));
        assert!(netns_may_exist("/proc/self/ns/net"));
    }

    #[test]
    fn only_old_allocations_without_netns_and_veth() {
        let allocs = vec![
            alloc("gone", "/run/netns/gone", 0),
            alloc("young", "/run/netns/gone", 990),
            alloc("alive-ns", "/run/netns/alive", 0),
            alloc("alive-veth", "/run/netns/gone", 0),
        ];
        let links: BTreeSet<String> = [host_veth_name("alive-veth", "eth0")].into();
        let found = orphans(&allocs, 1000, 60, |p| p.ends_with("alive"), &links);
        let ids: Vec<&str> = found.iter().map(|k| k.container_id.as_str()).collect();
        assert_eq!(ids, ["gone"]);
    }

    #[test]
    fn an_ipvlan_pod_is_gone_with_its_namespace() {
        let ipvlan = |id: &str, netns: &str| StoredAllocation {
            datapath: Datapath::Ipvlan {
                eni_id: "eni-1".into(),
                mac: "02:16:3e:00:00:01".into(),
                to_node: Default::default(),
            },
            ..alloc(id, netns, 0)
        };
        let allocs = vec![
            ipvlan("gone", "/run/netns/gone"),
            ipvlan("alive", "/run/netns/alive"),
        ];
        let found = orphans(
            &allocs,
            1000,
            60,
            |p| p.ends_with("alive"),
            &BTreeSet::new(),
        );
        let ids: Vec<&str> = found.iter().map(|k| k.container_id.as_str()).collect();
        assert_eq!(ids, ["gone"]);
    }
}
