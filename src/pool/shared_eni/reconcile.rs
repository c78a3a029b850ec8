//! Bringing the pool in line with what the cloud says is attached.

use super::{EniFacts, Flight, Pool, ReconcileReport};
use std::net::Ipv4Addr;

impl Pool {
    /// Compare with the ENIs the cloud says are attached (with all their IPs). ENIs with an op in
    /// flight are left alone (an assign may be adding IPs right now), and while an ENI is being
    /// created unknown ENIs are not adopted (it may be that one; the next reconcile will see).
    pub fn reconcile(&mut self, observed: &[EniFacts], now: u64) -> ReconcileReport {
        self.replan = true;
        self.normalize_clock(now);
        let mut report = ReconcileReport::default();
        let ids: Vec<String> = self.st.enis.iter().map(|e| e.id.clone()).collect();
        for id in ids {
            if self.eni_busy(&id) {
                continue;
            }
            let Some(e) = self.eni_index(&id) else {
                continue;
            };
            let facts = observed.iter().find(|f| f.id == id);
            let cloud: Vec<Ipv4Addr> = match facts {
                Some(f) => std::iter::once(f.primary_ip)
                    .chain(f.secondary_ips.iter().copied())
                    .collect(),
                None => Vec::new(),
            };
            let eni = &mut self.st.enis[e];
            for ip in &mut eni.ips {
                if cloud.contains(&ip.ip) {
                    continue;
                }
                if let Some(owner) = &ip.owner {
                    if !ip.invalid {
                        ip.invalid = true;
                        report.lost.push((owner.clone(), ip.ip));
                    }
                } else {
                    report.removed_idle.push(ip.ip);
                }
            }
            eni.ips
                .retain(|ip| cloud.contains(&ip.ip) || ip.owner.is_some());
            match facts {
                Some(f) => {
                    // Attached again (or still): the cloud's view of the ENI wins.
                    eni.gone = false;
                    eni.mac = f.mac.clone();
                    eni.gateway = f.gateway;
                    eni.vswitch_cidr = f.vswitch_cidr;
                    eni.vswitch_id = f.vswitch_id.clone();
                    eni.primary_ip = f.primary_ip;
                    let added = self.add_ips(&id, &cloud, now);
                    report.adopted.extend(added);
                }
                None => {
                    eni.gone = true;
                    if eni.ips.is_empty() {
                        self.st.enis.remove(e);
                    }
                }
            }
        }
        let creating = self
            .flights
            .values()
            .any(|f| matches!(f, Flight::Create { .. }));
        if !creating {
            for f in observed {
                if self.eni_index(&f.id).is_none() {
                    let added = self.add_eni(f, now);
                    report.adopted.extend(added);
                }
            }
        }
        self.touch(now);
        report
    }
}
