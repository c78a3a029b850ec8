//! Bringing the pool in line with what the cloud says is attached.

use super::{EniFacts, Flight, Pool, ReconcileReport};

impl Pool {
    /// Compare with the secondary ENIs the cloud says are attached to the instance and belong to
    /// this pool (the caller leaves out the primary ENI and ENIs that are not ours). A pod's ENI
    /// that is missing is marked lost and reported once; a missing idle ENI is dropped; an
    /// unknown one is adopted idle (its secondary IPs, if any, are ignored). ENIs being deleted
    /// are left alone, and while an ENI is being created unknown ENIs are not adopted (it may be
    /// that one; the next reconcile will see).
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
            let eni = &mut self.st.enis[e];
            match observed.iter().find(|f| f.id == id) {
                // Attached (again, or still): confirmed.
                Some(f) => eni.refresh(f),
                None => match &eni.owner {
                    Some(owner) => {
                        if !eni.lost {
                            eni.lost = true;
                            report.lost.push((owner.clone(), id));
                        }
                    }
                    None => {
                        self.st.enis.remove(e);
                        report.removed_idle.push(id);
                    }
                },
            }
        }
        let creating = self
            .flights
            .values()
            .any(|f| matches!(f, Flight::Create { .. }));
        if !creating {
            for f in observed {
                if self.add_eni(f, now) {
                    report.adopted.push(f.id.clone());
                }
            }
        }
        self.touch(now);
        report
    }
}
