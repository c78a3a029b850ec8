//! Planning cloud work (create, delete), applying its outcomes, and telling the daemon when to
//! come back or to give up.

use super::{CloudFailure, CloudOp, CloudOutcome, EniFacts, EniState, Flight, OpId, Pool};
use crate::pool::vswitch::{self, NO_VSWITCH};

use crate::cloud::codes::{
    ENI_NOT_FOUND, VSWITCH_IP_NOT_ENOUGH as IP_NOT_ENOUGH, refuses_enis as refuses_creates,
};

impl Pool {
    /// Cloud work to do now, given `waiting` allocations the daemon is holding. Marks them in
    /// flight. `random` is a fresh random number (used by VSwitchPolicy::Random only).
    pub fn plan(&mut self, now: u64, waiting: u32, random: u64) -> Vec<CloudOp> {
        self.sched.planning(now);
        self.normalize_clock(now);
        self.st.blocked.expire(now);
        self.touch(now);
        let mut ops = Vec::new();
        let need = self.shortfall(waiting);
        if need > 0 {
            // Coalesce: pods arriving together are planned together (creates run in parallel).
            if self.sched.shortfall(now, self.cfg.coalesce_ms) {
                self.plan_creates(now, need, random, &mut ops);
            }
        } else {
            self.sched.no_shortfall();
        }
        // ENIs above a lowered max_enis go even while idle is below min_idle (nothing can be
        // created then anyway).
        let over_cap = self.kept() > self.cfg.max_enis;
        if waiting == 0 && (need == 0 || over_cap) {
            self.plan_deletes(now, &mut ops);
        }
        self.touch(now);
        ops
    }

    /// Times persisted by a previous process may come from a clock that has since restarted
    /// (reboot): never let them lie in the future, or a block or sticky window would last for
    /// the old uptime.
    pub(super) fn normalize_clock(&mut self, now: u64) {
        self.st
            .blocked
            .clamp(now.saturating_add(self.cfg.vswitch_backoff_ms));
        for e in &mut self.st.enis {
            e.since = e.since.min(now);
        }
    }

    /// ENIs to create for the waiters plus the low watermarks (idle, min_enis), counting those
    /// already being created.
    fn shortfall(&self, waiting: u32) -> u32 {
        let creating = self.creating();
        let need_idle = waiting
            .saturating_add(self.cfg.min_idle)
            .saturating_sub(self.idle().saturating_add(creating));
        let need_min = self
            .cfg
            .min_enis
            .min(self.cfg.max_enis)
            .saturating_sub(self.kept().saturating_add(creating));
        need_idle.max(need_min)
    }

    pub(super) fn creates_allowed(&self, now: u64) -> bool {
        now >= self.creates_refused_until && self.eni_count() < self.cfg.max_enis
    }

    /// One create per missing ENI, all at once (they attach in parallel), up to max_enis.
    fn plan_creates(&mut self, now: u64, need: u32, random: u64, ops: &mut Vec<CloudOp>) {
        if now < self.retry_create {
            return;
        }
        let need = if self.probing {
            // One create at a time until one succeeds: no wave of calls the cloud refuses.
            u32::from(self.creating() == 0).min(need)
        } else {
            need
        };
        let mut free = self.vswitch_free.clone();
        for _ in 0..need {
            if !self.creates_allowed(now) {
                return;
            }
            let candidates = self.st.blocked.candidates(&self.cfg.vswitches, now);
            let policy = self.cfg.vswitch_policy;
            let Some(vswitch) = vswitch::pick(&candidates, policy, random, &free) else {
                return;
            };
            vswitch::take_free(&mut free, &vswitch, 1);
            let op = self.flights.start(Flight::Create {
                vswitch: vswitch.clone(),
            });
            ops.push(CloudOp::CreateEni {
                op,
                vswitch_id: vswitch,
            });
        }
    }

    /// After there has been something to delete for release_after_ms: delete the excess idle
    /// ENIs, longest idle first (the most recently released may be wanted back: sticky).
    fn plan_deletes(&mut self, now: u64, ops: &mut Vec<CloudOp>) {
        let excess = self.deletable_excess();
        if excess == 0 || now < self.retry_release {
            return;
        }
        if !self.sched.cooled_down(now, self.cfg.release_after_ms) {
            return;
        }
        let mut victims: Vec<(u64, String)> = self
            .st
            .enis
            .iter()
            .filter(|e| e.is_idle())
            .map(|e| (e.since, e.info.id.clone()))
            .collect();
        victims.sort();
        for (_, eni_id) in victims.into_iter().take(excess as usize) {
            let Some(e) = self.eni_index(&eni_id) else {
                continue;
            };
            self.st.enis[e].deleting = true;
            let op = self.flights.start(Flight::Delete {
                eni: eni_id.clone(),
            });
            ops.push(CloudOp::DeleteEni { op, eni_id });
        }
    }

    pub fn apply(&mut self, outcome: CloudOutcome, now: u64) {
        self.sched.wake();
        match outcome {
            CloudOutcome::EniCreated { op, eni } => {
                self.flights.finish(op);
                // Only a create planned after the last failure proves the cloud is fine again
                // (another of the same wave may have succeeded just before the refusal).
                if self.backoff.is_current(op) {
                    self.backoff.reset();
                    self.probing = false;
                    self.creates_refused_until = 0;
                    self.refusal = None;
                }
                self.add_eni(&eni, now);
            }
            CloudOutcome::EniDeleted { op, eni_id } => {
                self.flights.finish(op);
                self.deleted(&eni_id);
            }
            CloudOutcome::Failed { op, failure } => {
                if let Some(flight) = self.flights.finish(op) {
                    self.failed(op, flight, &failure, now);
                }
            }
        }
        self.touch(now);
    }

    /// A new (or re-reported) attached ENI: idle if new; a known one keeps its owner. Returns
    /// whether it was new.
    pub(super) fn add_eni(&mut self, facts: &EniFacts, now: u64) -> bool {
        match self.eni_index(&facts.id) {
            Some(e) => {
                self.st.enis[e].refresh(facts);
                false
            }
            None => {
                self.st.enis.push(EniState::new_idle(facts, now));
                true
            }
        }
    }

    fn deleted(&mut self, eni_id: &str) {
        let Some(e) = self.eni_index(eni_id) else {
            return;
        };
        let eni = &mut self.st.enis[e];
        if eni.owner.is_none() {
            self.st.enis.remove(e);
        } else {
            // Cannot happen through plan (only idle ENIs are deleted); keep the owner known.
            eni.deleting = false;
            eni.lost = true;
        }
    }

    fn failed(&mut self, op: OpId, flight: Flight, failure: &CloudFailure, now: u64) {
        // A wave of parallel creates failing together is one step of the back-off (the shared
        // pool counts every failure).
        self.backoff
            .fail_in_wave(failure, op, self.flights.next_id());
        let retry = self.backoff.retry_at(now, self.cfg.retry_after_ms);
        let code = failure.code.as_str();
        match flight {
            Flight::Create { vswitch } => {
                if code == IP_NOT_ENOUGH {
                    self.block(&vswitch, &failure.message, now);
                } else if refuses_creates(code) {
                    // Probing is this pool's own: its creates go out in parallel waves, so after
                    // a failure one create goes first (the shared pool retries its whole fill once
                    // the back-off is over).
                    self.creates_refused_until = retry;
                    self.refusal = Some(failure.clone());
                    self.probing = true;
                } else {
                    self.retry_create = retry;
                    self.probing = true;
                }
            }
            Flight::Delete { eni } => {
                if code == ENI_NOT_FOUND {
                    self.deleted(&eni);
                    return;
                }
                self.retry_release = retry;
                if let Some(e) = self.eni_index(&eni) {
                    // It may be detached already: not handed out before a reconcile confirms it
                    // (the shared pool hands the IPs of such an ENI out again at once).
                    let eni = &mut self.st.enis[e];
                    eni.deleting = false;
                    eni.unconfirmed = true;
                }
            }
        }
    }

    pub(super) fn block(&mut self, vswitch: &str, message: &str, now: u64) {
        let until_ms = now.saturating_add(self.cfg.vswitch_backoff_ms);
        self.st.blocked.block(vswitch, message, until_ms);
    }

    /// When the pool next wants `plan` called (coalesce window end, release cool-down end,
    /// back-off end, block expiry). A time is reported only until a `plan` at or after it has
    /// run, so the loop never spins.
    pub fn next_deadline(&self, now: u64) -> Option<u64> {
        let retries = [
            self.retry_create,
            self.retry_release,
            self.creates_refused_until,
        ];
        let times = retries.into_iter().chain(self.st.blocked.ends());
        let (coalesce, cool_down) = (self.cfg.coalesce_ms, self.cfg.release_after_ms);
        self.sched.next_deadline(now, coalesce, cool_down, times)
    }

    /// Some(reason) when `waiting` allocations cannot be served by anything in flight or
    /// plannable: node capacity reached, the cloud refusing more ENIs (its code and message
    /// quoted), or every vSwitch blocked (each quoted). Temporary failures (throttling) are not
    /// a reason: the retry comes.
    pub fn unservable(&self, now: u64, waiting: u32) -> Option<String> {
        if waiting == 0 || self.idle() > 0 || !self.flights.is_empty() {
            return None;
        }
        // A reconcile may confirm an ENI whose delete failed: it would be idle again.
        if self.wants_reconcile() {
            return None;
        }
        let attached = self.eni_count();
        if attached >= self.cfg.max_enis {
            return Some(format!(
                "no ENI for {waiting} pod(s): node capacity reached: {attached} of {} ENIs \
                 attached, each held by a pod (one pod per ENI)",
                self.cfg.max_enis
            ));
        }
        if let Some(f) = self.creates_refused(now) {
            let secs = self
                .creates_refused_until
                .saturating_sub(now)
                .div_ceil(1000);
            return Some(format!(
                "no ENI for {waiting} pod(s): the cloud refuses another ENI: {}: {} \
                 ({attached} attached, {} in use; next try in {secs} s)",
                f.code,
                f.message,
                self.in_use()
            ));
        }
        if self.cfg.vswitches.is_empty() {
            return Some(format!("no ENI for {waiting} pod(s): {NO_VSWITCH}"));
        }
        let blocked = &self.st.blocked;
        if !blocked.candidates(&self.cfg.vswitches, now).is_empty() {
            return None;
        }
        let why = blocked.exhausted(self.cfg.vswitches.iter().map(String::as_str), now);
        Some(format!("no ENI for {waiting} pod(s): {why}"))
    }
}
