//! Bringing the pool in line with what the cloud says is attached.

use super::{EniFacts, Pool, ReconcileReport};
use crate::pool::reconcile::{Reconcile, reconcile};

impl Pool {
    /// Compare with the secondary ENIs the cloud says are attached to the instance and belong to
    /// this pool (the caller leaves out the primary ENI and ENIs that are not ours). A pod's ENI
    /// that is missing is marked lost and reported once; a missing idle ENI is dropped; an
    /// unknown one is adopted idle (its secondary IPs, if any, are ignored). ENIs being deleted
    /// are left alone, and while an ENI is being created unknown ENIs are not adopted (it may be
    /// that one; the next reconcile will see).
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

    /// Attached: confirmed (an unconfirmed ENI is confirmed). Missing: a pod's ENI is marked lost
    /// (reported once), an idle one dropped.
    fn compare(&mut self, id: &str, seen: Option<&EniFacts>, _: u64, report: &mut ReconcileReport) {
        let Some(e) = self.eni_index(id) else {
            return;
        };
        let eni = &mut self.st.enis[e];
        match seen {
            // Attached (again, or still): confirmed.
            Some(f) => eni.refresh(f),
            None => match &eni.owner {
                Some(owner) => {
                    if !eni.lost {
                        eni.lost = true;
                        report.lost.push((owner.clone(), id.to_string()));
                    }
                }
                None => {
                    self.st.enis.remove(e);
                    report.removed_idle.push(id.to_string());
                }
            },
        }
    }

    fn creates_in_flight(&self) -> bool {
        self.flights.creating() > 0
    }

    /// An unknown ENI comes idle; a known one keeps its owner.
    fn adopt(&mut self, seen: &EniFacts, now: u64, report: &mut ReconcileReport) {
        if self.add_eni(seen, now) {
            report.adopted.push(seen.id.clone());
        }
    }

    fn end(&mut self, now: u64) {
        self.touch(now);
    }
}
