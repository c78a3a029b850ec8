//! Planning cloud work (fill, release), applying its outcomes, and telling the daemon when to
//! come back or to give up.

use super::{CloudFailure, CloudOp, CloudOutcome, EniFacts, EniState, Flight, IpState, Pool};
use crate::cloud::ecs::{MAX_IPV6_ON_CREATE, MAX_SECONDARY_ON_CREATE};
use crate::pool::vswitch::{self, NO_VSWITCH};
use std::net::{Ipv4Addr, Ipv6Addr};

use crate::cloud::codes::{
    ENI_IP_QUOTA as ENI_FULL, ENI_NOT_FOUND, ENI_PER_INSTANCE_LIMIT as ENI_LIMIT,
    IP_UNASSIGNED as IP_ALREADY_UNASSIGNED, VSWITCH_IP_NOT_ENOUGH as IP_NOT_ENOUGH,
};

impl Pool {
    /// Cloud work to do now, given `waiting` allocations the daemon is holding. Marks them in flight.
    /// `random` is a fresh random number (used by VSwitchPolicy::Random only).
    pub fn plan(&mut self, now: u64, waiting: u32, random: u64) -> Vec<CloudOp> {
        self.sched.planning(now);
        self.normalize_clock(now);
        self.st.blocked.expire(now);
        self.touch(now);
        let mut ops = Vec::new();
        if self.cfg.dual {
            self.plan_repair6(now, &mut ops);
        }
        let idle = self.idle();
        let coming = idle.saturating_add(self.pending_ips());
        let target = waiting.saturating_add(self.cfg.min_idle);
        if coming < target {
            // Coalesce: a burst of pods arriving together becomes a few large calls.
            if self.sched.shortfall(now, self.cfg.coalesce_ms) {
                let need = target - coming;
                // Round requests up to a batch, but never past what leaves max_idle after the
                // waiters are served, so a fill does not feed the release path.
                let ceiling = waiting.saturating_add(self.cfg.max_idle);
                let allowance = need.max(ceiling.saturating_sub(coming));
                self.plan_fill(now, need, allowance, random, &mut ops);
            }
        } else {
            self.sched.no_shortfall();
            if waiting == 0 {
                self.plan_release(now, &mut ops);
            }
        }
        if self.cfg.dual && waiting == 0 {
            self.plan_spare6_release(now, &mut ops);
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
        for ip in self.st.enis.iter_mut().flat_map(|e| e.ips.iter_mut()) {
            ip.since = ip.since.min(now);
        }
    }

    /// Free slots on a live ENI, minus what assigns in flight will add.
    fn room(&self, eni: &EniState) -> u32 {
        if !eni.live() || eni.full {
            return 0;
        }
        let pending: u32 = self
            .flights
            .values()
            .map(|f| match f {
                Flight::Assign { eni: id, count, .. } if *id == eni.info.id => *count,
                _ => 0,
            })
            .fold(0u32, u32::saturating_add);
        self.cfg
            .ips_per_eni
            .saturating_sub(eni.ips.len() as u32)
            .saturating_sub(pending)
    }

    /// ENIs attached or being created (gone ENIs are not attached any more).
    pub(super) fn eni_count(&self) -> u32 {
        self.st.enis.iter().filter(|e| !e.gone).count() as u32 + self.flights.creating()
    }

    fn creates_allowed(&self, now: u64) -> bool {
        now >= self.eni_limit_until && self.eni_count() < self.cfg.max_enis
    }

    /// Claim `need` (at most `allowance`) IPs: room on existing ENIs first, then room the ENIs
    /// being created will have, then new ENIs. Claimed room is served by ops now, or in later
    /// rounds (one op per ENI at a time); only what no existing ENI can take creates an ENI.
    fn plan_fill(
        &mut self,
        now: u64,
        mut need: u32,
        mut allowance: u32,
        random: u64,
        ops: &mut Vec<CloudOp>,
    ) {
        let batch = self.cfg.batch.max(1);
        let per_eni = self.cfg.ips_per_eni;

        let mut enis: Vec<(u32, String, bool)> = self
            .st
            .enis
            .iter()
            .filter(|e| !self.st.blocked.is_blocked(&e.info.vswitch_id, now))
            .map(|e| {
                (
                    self.room(e),
                    e.info.id.clone(),
                    self.flights.busy(&e.info.id),
                )
            })
            .filter(|(room, _, _)| *room > 0)
            .collect();
        // Most room first: fewer calls for the same number of IPs.
        enis.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
        // First a batch on every idle ENI (in parallel), then the rest of their room is
        // claimed for later rounds (one op per ENI at a time), before any new ENI.
        for (room, eni_id, busy) in &mut enis {
            if need == 0 {
                return;
            }
            if *busy || now < self.retry_assign {
                continue;
            }
            let count = allowance.min(*room).min(batch);
            let missing6 = match self.eni_index(eni_id) {
                Some(e) if self.cfg.dual => self.st.enis[e].missing6(),
                _ => 0,
            };
            let ipv6_count = if self.cfg.dual { count + missing6 } else { 0 };
            let op = self.flights.start(Flight::Assign {
                eni: eni_id.clone(),
                count,
                usable: count + missing6,
            });
            ops.push(CloudOp::AssignIps {
                op,
                eni_id: eni_id.clone(),
                count,
                ipv6_count,
            });
            *room -= count;
            need = need.saturating_sub(count);
            allowance = allowance.saturating_sub(count);
        }
        for (room, _, _) in &enis {
            if need == 0 {
                return;
            }
            let claim = allowance.min(*room);
            need = need.saturating_sub(claim);
            allowance = allowance.saturating_sub(claim);
        }

        for f in self.flights.values() {
            if need == 0 {
                return;
            }
            if let Flight::Create { vswitch, count } = f {
                if self.st.blocked.is_blocked(vswitch, now) {
                    continue;
                }
                let claim = allowance.min(per_eni.saturating_sub(*count));
                need = need.saturating_sub(claim);
                allowance = allowance.saturating_sub(claim);
            }
        }

        if need == 0 || per_eni == 0 || now < self.retry_create {
            return;
        }
        let mut free = self.vswitch_free.clone();
        while need > 0 && self.creates_allowed(now) {
            let candidates = self.st.blocked.candidates(&self.cfg.vswitches, now);
            let policy = self.cfg.vswitch_policy;
            let Some(vswitch) = vswitch::pick(&candidates, policy, random, &free) else {
                return;
            };
            // The ENI comes with its whole claim (as many as the API takes at creation): one
            // create instead of a create and assigns, which share the region's budget with
            // every other node. Dual stack: every IPv4 with its IPv6 partner, so no more
            // than the IPv6 a create may carry; the rest is assigned in pairs once attached.
            let claim = allowance.min(per_eni).max(1);
            let most = match self.cfg.dual {
                true => MAX_IPV6_ON_CREATE,
                false => MAX_SECONDARY_ON_CREATE + 1,
            };
            let count = claim.min(most);
            vswitch::take_free(&mut free, &vswitch, u64::from(count));
            let op = self.flights.start(Flight::Create {
                vswitch: vswitch.clone(),
                count,
            });
            ops.push(CloudOp::CreateEni {
                op,
                vswitch_id: vswitch,
                secondary_count: count - 1,
                ipv6_count: if self.cfg.dual { count } else { 0 },
            });
            need = need.saturating_sub(claim);
            allowance = allowance.saturating_sub(claim);
        }
    }

    /// After idle stayed above max_idle for release_after_ms: give the excess back, emptiest
    /// ENI first; a wholly idle ENI is deleted when idle stays >= min_idle without it.
    fn plan_release(&mut self, now: u64, ops: &mut Vec<CloudOp>) {
        let idle = self.idle();
        let max_idle = self.cfg.max_idle;
        if idle <= max_idle || now < self.retry_release {
            return;
        }
        if !self.sched.cooled_down(now, self.cfg.release_after_ms) {
            return;
        }
        let batch = self.cfg.batch.max(1);
        let mut excess = idle - max_idle;
        let mut left_idle = idle;
        let mut order: Vec<(u32, u32, String)> = self
            .st
            .enis
            .iter()
            .filter(|e| e.live() && !self.flights.busy(&e.info.id))
            .map(|e| {
                (
                    e.owned_count(),
                    e.idle_count(self.cfg.dual),
                    e.info.id.clone(),
                )
            })
            .filter(|(_, idle, _)| *idle > 0)
            .collect();
        // Emptiest (fewest in use) first; among those, the one with most idle.
        order.sort_by(|a, b| {
            a.0.cmp(&b.0)
                .then_with(|| b.1.cmp(&a.1))
                .then_with(|| a.2.cmp(&b.2))
        });
        for (owned, eni_idle, eni_id) in order {
            if excess == 0 {
                break;
            }
            let Some(e) = self.eni_index(&eni_id) else {
                continue;
            };
            let eni = &mut self.st.enis[e];
            let whole = owned == 0
                && eni_idle as usize == eni.ips.len()
                && left_idle.saturating_sub(eni_idle) >= self.cfg.min_idle;
            if whole {
                eni.deleting = true;
                for ip in &mut eni.ips {
                    ip.releasing = true;
                }
                let op = self.flights.start(Flight::Delete {
                    eni: eni_id.clone(),
                });
                ops.push(CloudOp::DeleteEni { op, eni_id });
                excess = excess.saturating_sub(eni_idle);
                left_idle = left_idle.saturating_sub(eni_idle);
                continue;
            }
            let primary = eni.info.primary_ip;
            let mut victims: Vec<&IpState> = eni
                .ips
                .iter()
                .filter(|ip| ip.is_idle() && ip.ip != primary)
                .collect();
            // Longest idle first: the most recently released ones may be wanted back (sticky).
            victims.sort_by_key(|ip| (ip.since, ip.ip));
            let chosen = victims.iter().take(excess.min(batch) as usize);
            let ips: Vec<Ipv4Addr> = chosen.clone().map(|ip| ip.ip).collect();
            let ips6: Vec<Ipv6Addr> = chosen.filter_map(|ip| ip.ip6).collect();
            if ips.is_empty() {
                continue;
            }
            for ip in &mut eni.ips {
                if ips.contains(&ip.ip) {
                    ip.releasing = true;
                }
            }
            let n = ips.len() as u32;
            let op = self.flights.start(Flight::Unassign {
                eni: eni_id.clone(),
                ips: ips.clone(),
                ips6: ips6.clone(),
            });
            ops.push(CloudOp::UnassignIps {
                op,
                eni_id,
                ips,
                ips6,
            });
            excess = excess.saturating_sub(n);
            left_idle = left_idle.saturating_sub(n);
        }
    }

    pub fn apply(&mut self, outcome: CloudOutcome, now: u64) {
        self.sched.wake();
        if matches!(
            outcome,
            CloudOutcome::EniCreated { .. } | CloudOutcome::IpsAssigned { .. }
        ) {
            self.backoff.reset();
        }
        match outcome {
            CloudOutcome::EniCreated { op, eni } => {
                self.flights.finish(op);
                self.add_eni(&eni, now);
            }
            CloudOutcome::IpsAssigned {
                op,
                eni_id,
                ips,
                ips6,
                failure6,
            } => {
                self.flights.finish(op);
                self.add_ips(&eni_id, &ips, now);
                self.add_ips6(&eni_id, &ips6);
                if let Some(f) = failure6 {
                    // The IPv4s came: repair plans their partners after the back-off.
                    self.backoff.fail(&f);
                    self.retry_assign = self.backoff.retry_at(now, self.cfg.retry_after_ms);
                }
            }
            CloudOutcome::IpsUnassigned {
                op,
                eni_id,
                ips,
                ips6,
                failure6,
            } => {
                let flight = self.flights.finish(op);
                self.unassigned(&eni_id, &ips, &ips6, flight);
                if let Some(f) = failure6 {
                    self.backoff.fail(&f);
                    self.retry_release = self.backoff.retry_at(now, self.cfg.retry_after_ms);
                }
            }
            CloudOutcome::EniDeleted { op, eni_id } => {
                self.flights.finish(op);
                self.deleted(&eni_id);
            }
            CloudOutcome::Failed { op, failure } => {
                if let Some(flight) = self.flights.finish(op) {
                    self.failed(flight, &failure, now);
                }
            }
        }
        self.touch(now);
    }

    /// A new (or re-reported) ENI: its IPs become idle. IPs already in the pool keep their state.
    pub(super) fn add_eni(&mut self, facts: &EniFacts, now: u64) -> Vec<Ipv4Addr> {
        let idx = match self.eni_index(&facts.id) {
            Some(i) => i,
            None => {
                self.st.enis.push(EniState::new(facts));
                self.st.enis.len() - 1
            }
        };
        let eni = &mut self.st.enis[idx];
        if eni.gone {
            eni.gone = false;
        }
        let mut all = vec![facts.primary_ip];
        all.extend(facts.secondary_ips.iter().copied());
        let id = facts.id.clone();
        let added = self.add_ips(&id, &all, now);
        self.add_ips6(&id, &facts.ipv6s);
        added
    }

    /// Adds unknown IPs to a live ENI as idle; returns those added.
    pub(super) fn add_ips(&mut self, eni_id: &str, ips: &[Ipv4Addr], now: u64) -> Vec<Ipv4Addr> {
        let Some(e) = self.eni_index(eni_id) else {
            // Unknown (deleted meanwhile): the next reconcile adopts whatever is really there.
            return Vec::new();
        };
        if !self.st.enis[e].live() {
            return Vec::new();
        }
        let mut added = Vec::new();
        for &ip in ips {
            if self.contains_ip(ip) || added.contains(&ip) {
                continue;
            }
            added.push(ip);
        }
        let eni = &mut self.st.enis[e];
        eni.ips
            .extend(added.iter().map(|&ip| IpState::new_idle(ip, now)));
        eni.pair();
        added
    }

    fn unassigned(
        &mut self,
        eni_id: &str,
        ips: &[Ipv4Addr],
        ips6: &[Ipv6Addr],
        flight: Option<Flight>,
    ) {
        let Some(e) = self.eni_index(eni_id) else {
            return;
        };
        let eni = &mut self.st.enis[e];
        eni.full = false;
        let gone6 = |ip: &super::IpState| ip.ip6.is_some_and(|v6| ips6.contains(&v6));
        for ip in &mut eni.ips {
            if (ips.contains(&ip.ip) || gone6(ip)) && ip.owner.is_some() {
                // Never planned (owned IPs are not released); the cloud dropped it anyway.
                ip.invalid = true;
            }
        }
        // An IPv4 gone without its partner leaves the partner spare; a partner gone alone
        // leaves its IPv4 waiting for a new one.
        for ip in eni.ips.iter_mut().filter(|ip| ip.owner.is_none()) {
            if gone6(ip) {
                ip.ip6 = None;
            } else if ips.contains(&ip.ip)
                && let Some(v6) = ip.ip6.take()
            {
                eni.spare6.push(v6);
            }
        }
        eni.spare6.retain(|v6| !ips6.contains(v6));
        eni.ips
            .retain(|ip| !(ips.contains(&ip.ip) && ip.owner.is_none()));
        if let Some(Flight::Unassign { ips: planned, .. }) = flight {
            // Whatever the cloud did not confirm is idle again.
            for ip in &mut eni.ips {
                if planned.contains(&ip.ip) {
                    ip.releasing = false;
                }
            }
        }
        eni.pair();
    }

    fn deleted(&mut self, eni_id: &str) {
        let Some(e) = self.eni_index(eni_id) else {
            return;
        };
        let eni = &mut self.st.enis[e];
        eni.ips.retain(|ip| ip.owner.is_some());
        eni.spare6.clear();
        if eni.ips.is_empty() {
            self.st.enis.remove(e);
        } else {
            // Cannot happen through plan (only unowned ENIs are deleted); keep the owners known.
            eni.gone = true;
            eni.deleting = false;
            for ip in &mut eni.ips {
                ip.invalid = true;
            }
        }
    }

    fn failed(&mut self, flight: Flight, failure: &CloudFailure, now: u64) {
        // Every failure is a step of the back-off (the exclusive pool counts waves instead).
        self.backoff.fail(failure);
        let retry = self.backoff.retry_at(now, self.cfg.retry_after_ms);
        let code = failure.code.as_str();
        match flight {
            Flight::Create { vswitch, .. } => match code {
                IP_NOT_ENOUGH => self.block(&vswitch, &failure.message, now),
                ENI_LIMIT => self.eni_limit_until = retry,
                _ => self.retry_create = retry,
            },
            Flight::Assign { eni, .. } => {
                let vswitch = self
                    .eni_index(&eni)
                    .map(|e| self.st.enis[e].info.vswitch_id.clone());
                match (code, vswitch) {
                    (IP_NOT_ENOUGH, Some(v)) => self.block(&v, &failure.message, now),
                    (ENI_FULL, Some(_)) => {
                        if let Some(e) = self.eni_index(&eni) {
                            self.st.enis[e].full = true;
                        }
                    }
                    _ => self.retry_assign = retry,
                }
            }
            Flight::Unassign { eni, ips, ips6 } => {
                if code == IP_ALREADY_UNASSIGNED {
                    self.unassigned(
                        &eni,
                        &ips,
                        &ips6,
                        Some(Flight::Unassign {
                            eni: eni.clone(),
                            ips: ips.clone(),
                            ips6: ips6.clone(),
                        }),
                    );
                    return;
                }
                self.retry_release = retry;
                if let Some(e) = self.eni_index(&eni) {
                    for ip in &mut self.st.enis[e].ips {
                        if ips.contains(&ip.ip) {
                            ip.releasing = false;
                        }
                    }
                }
            }
            Flight::Delete { eni } => {
                if code == ENI_NOT_FOUND {
                    self.deleted(&eni);
                    return;
                }
                self.retry_release = retry;
                // Its IPs are idle again at once (the exclusive pool holds a whole ENI back as
                // unconfirmed until a reconcile says it is still attached).
                if let Some(e) = self.eni_index(&eni) {
                    let eni = &mut self.st.enis[e];
                    eni.deleting = false;
                    for ip in &mut eni.ips {
                        ip.releasing = false;
                    }
                }
            }
        }
    }

    pub(super) fn block(&mut self, vswitch: &str, message: &str, now: u64) {
        let until_ms = now.saturating_add(self.cfg.vswitch_backoff_ms);
        self.st.blocked.block(vswitch, message, until_ms);
    }

    /// When the pool next wants `plan` called (coalesce window end, release cool-down end, back-off end).
    /// A time is reported only until a `plan` at or after it has run, so the loop never spins.
    pub fn next_deadline(&self, now: u64) -> Option<u64> {
        let retries = [
            self.retry_create,
            self.retry_assign,
            self.retry_release,
            self.eni_limit_until,
        ];
        let times = retries.into_iter().chain(self.st.blocked.ends());
        let (coalesce, cool_down) = (self.cfg.coalesce_ms, self.cfg.release_after_ms);
        self.sched.next_deadline(now, coalesce, cool_down, times)
    }

    /// Some(reason) when `waiting` allocations cannot be served by anything in flight or plannable:
    /// node capacity reached, or every vSwitch blocked (reason quotes the cloud messages, naming the vSwitches).
    pub fn unservable(&self, now: u64, waiting: u32) -> Option<String> {
        if waiting == 0 || self.idle() > 0 {
            return None;
        }
        // Anything in flight may change the picture (a release frees an ENI slot or room).
        if !self.flights.is_empty() {
            return None;
        }
        let can_assign = self
            .st
            .enis
            .iter()
            .any(|e| self.room(e) > 0 && !self.st.blocked.is_blocked(&e.info.vswitch_id, now));
        let can_create = self.creates_allowed(now)
            && !self
                .st
                .blocked
                .candidates(&self.cfg.vswitches, now)
                .is_empty();
        if can_assign || can_create {
            return None;
        }
        let any_room = self.st.enis.iter().any(|e| self.room(e) > 0);
        let creatable = self.creates_allowed(now);
        if !any_room && !creatable {
            let enis = self.st.enis.iter().filter(|e| !e.gone).count();
            if now < self.eni_limit_until && enis < self.cfg.max_enis as usize {
                return Some(format!(
                    "no address for {waiting} pod(s): the instance cannot attach more ENIs \
                     (EniPerInstanceLimitExceeded) and the {enis} attached are full; \
                     {} IPs in use",
                    self.in_use()
                ));
            }
            return Some(format!(
                "no address for {waiting} pod(s): node capacity reached: {} of {} IPs in use \
                 ({} ENIs × {} IPs per ENI)",
                self.in_use(),
                self.capacity(),
                self.cfg.max_enis,
                self.cfg.ips_per_eni
            ));
        }
        if self.cfg.vswitches.is_empty() && !any_room {
            return Some(format!("no address for {waiting} pod(s): {NO_VSWITCH}"));
        }
        // Blocked vSwitches stand in the way: quote the cloud for each one.
        let mut relevant: Vec<&str> = Vec::new();
        if creatable {
            relevant.extend(self.cfg.vswitches.iter().map(String::as_str));
        }
        for e in &self.st.enis {
            if self.room(e) > 0 {
                relevant.push(&e.info.vswitch_id);
            }
        }
        let why = self.st.blocked.exhausted(relevant, now);
        Some(format!("no address for {waiting} pod(s): {why}"))
    }
}
