//! Bringing the pool in line with what the cloud says is attached.

use super::{EniFacts, Pool, ReconcileReport};
use crate::pool::eni::EniInfo;
use crate::pool::reconcile::{Reconcile, reconcile};
use std::net::{Ipv4Addr, Ipv6Addr};

impl Pool {
    /// Compare with the ENIs the cloud says are attached (with all their IPs). ENIs with an op in
    /// flight are left alone (an assign may be adding IPs right now), and while an ENI is being
    /// created unknown ENIs are not adopted (it may be that one; the next reconcile will see).
    pub fn reconcile(&mut self, observed: &[EniFacts], now: u64) -> ReconcileReport {
        reconcile(self, observed, now)
    }
}

impl Reconcile for Pool {
    type Report = ReconcileReport;

    fn begin(&mut self, now: u64) {
        self.sched.wake();
        self.normalize_clock(now);
    }

    fn settled_enis(&self) -> Vec<String> {
        let ids = self.st.enis.iter().map(|e| &e.info.id);
        ids.filter(|id| !self.flights.busy(id)).cloned().collect()
    }

    /// IPs the cloud no longer has: an owned one is marked invalid (reported lost once), an idle
    /// one dropped; IPs it has that the pool did not know are adopted idle. An ENI no longer
    /// attached is kept (gone) only for its owned IPs.
    fn compare(
        &mut self,
        id: &str,
        seen: Option<&EniFacts>,
        now: u64,
        report: &mut ReconcileReport,
    ) {
        let Some(e) = self.eni_index(id) else {
            return;
        };
        let cloud: Vec<Ipv4Addr> = match seen {
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
        if self.cfg.dual {
            // IPv6 partners the cloud no longer has: an owned pair is lost as a whole, an idle
            // IPv4 waits for a new partner (repair).
            let cloud6: &[Ipv6Addr] = seen.map(|f| f.ipv6s.as_slice()).unwrap_or_default();
            for ip in &mut eni.ips {
                let Some(v6) = ip.ip6.filter(|v6| !cloud6.contains(v6)) else {
                    continue;
                };
                match &ip.owner {
                    Some(owner) if !ip.invalid => {
                        ip.invalid = true;
                        report.lost.push((owner.clone(), ip.ip));
                        report.lost6.push(v6);
                    }
                    Some(_) => {}
                    None => {
                        ip.ip6 = None;
                        report.removed_idle6.push(v6);
                    }
                }
            }
            eni.spare6.retain(|v6| cloud6.contains(v6));
        }
        match seen {
            Some(f) => {
                // Attached again (or still): the cloud's view of the ENI wins.
                eni.gone = false;
                eni.info = EniInfo::of(f);
                let added = self.add_ips(id, &cloud, now);
                report.adopted.extend(added);
                self.add_ips6(id, &f.ipv6s);
            }
            None => {
                eni.gone = true;
                if eni.ips.is_empty() {
                    self.st.enis.remove(e);
                }
            }
        }
    }

    fn creates_in_flight(&self) -> bool {
        self.flights.creating() > 0
    }

    /// An unknown ENI comes with all its IPs idle.
    fn adopt(&mut self, seen: &EniFacts, now: u64, report: &mut ReconcileReport) {
        if self.eni_index(&seen.id).is_none() {
            let added = self.add_eni(seen, now);
            report.adopted.extend(added);
        }
    }

    fn end(&mut self, now: u64) {
        self.touch(now);
    }
}
