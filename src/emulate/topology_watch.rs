//! ENI devices that vanish come back, as a physical NIC does. On ECS an ENI moved into a pod's
//! namespace (exclusive ENI mode) returns to the node's namespace when that namespace is
//! destroyed. An emulated ENI is one end of a veth whose other end sits in the `vpc` namespace,
//! and the kernel destroys a veth pair together with either end; so the topology notices that
//! an attached ENI's VPC-side end is gone and builds the pair again, in the node's namespace,
//! with the same MAC (routes, MAC delivery and rp_filter in the VPC with it).
//!
//! "Gone" is judged by the VPC-side end (its ifindex and name), never by the node-side name: the
//! node end may sit in a pod namespace under another name and is then still attached, not
//! missing. The check is a link dump of the `vpc` namespace on every tick of the topology
//! thread (it already wakes every 100 ms for attach/detach timers), before the model is applied.

use super::topology::{EniLink, Topology, vpc_ifname};
use crate::Result;
use crate::netlink::Link;
use std::collections::{BTreeMap, BTreeSet};

impl Topology {
    /// Forgets the ENIs whose VPC-side veth end no longer exists, with the routes that went
    /// with it; the next [`Topology::sync`] step builds them again if the model still says they
    /// are attached. Returns the ids forgotten.
    pub(super) fn forget_vanished(&mut self) -> Result<Vec<String>> {
        if self.links.is_empty() {
            return Ok(Vec::new());
        }
        let present = self.nl.links()?;
        let gone = vanished(&self.links, &present);
        for id in &gone {
            if let Some(l) = self.links.remove(id) {
                // The kernel removed the routes and neighbour entries with the device.
                self.routes.retain(|_, idx| *idx != l.vpc_index);
                self.v6.forget_link(&vpc_ifname(id));
                log::info!("ENI {id}: its device vanished (its namespace was destroyed?)");
            }
        }
        Ok(gone)
    }
}

/// The tracked ENIs whose VPC-side link is not among `present` (matched by index and name, so a
/// reused index is not mistaken for the old link).
pub(super) fn vanished(tracked: &BTreeMap<String, EniLink>, present: &[Link]) -> Vec<String> {
    tracked
        .iter()
        .filter(|(id, l)| {
            let name = vpc_ifname(id);
            !present
                .iter()
                .any(|p| p.index == l.vpc_index && p.name == name)
        })
        .map(|(id, _)| id.clone())
        .collect()
}

/// The name a (re)appearing ENI device gets in its node: `preferred` (`eth<device index>`) when
/// free, else the lowest free `eth<N>`, as the kernel numbers a new NIC.
pub(super) fn fresh_ifname(preferred: &str, taken: &BTreeSet<String>) -> String {
    if !taken.contains(preferred) {
        return preferred.to_string();
    }
    (0u32..)
        .map(|n| format!("eth{n}"))
        .find(|n| !taken.contains(n))
        .unwrap_or_else(|| preferred.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(index: u32, name: &str) -> Link {
        Link {
            index,
            name: name.into(),
            mac: None,
            mtu: 1500,
            up: true,
            kind: Some("veth".into()),
            alias: None,
        }
    }

    #[test]
    fn vanished_is_judged_by_the_vpc_side_index_and_name() {
        let mut tracked = BTreeMap::new();
        for (id, idx) in [("eni-a", 5), ("eni-b", 6), ("eni-c", 7)] {
            tracked.insert(
                id.to_string(),
                EniLink {
                    vpc_index: idx,
                    mac: [2, 0, 0, 0, 0, idx as u8],
                },
            );
        }
        let present = vec![
            link(1, "lo"),
            link(5, &vpc_ifname("eni-a")),
            // eni-b's index reused by another link: eni-b is gone all the same.
            link(6, "other"),
        ];
        assert_eq!(vanished(&tracked, &present), ["eni-b", "eni-c"]);
        assert!(vanished(&BTreeMap::new(), &present).is_empty());
    }

    #[test]
    fn fresh_names_prefer_the_device_index_then_the_lowest_free() {
        let taken: BTreeSet<String> = ["lo", "eth0", "eth1", "eth3"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(fresh_ifname("eth2", &taken), "eth2");
        assert_eq!(fresh_ifname("eth1", &taken), "eth2");
        assert_eq!(fresh_ifname("eth0", &BTreeSet::new()), "eth0");
    }
}
