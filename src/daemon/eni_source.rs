//! What the two ENI sources (shared and exclusive) share around their pure pools: the node and
//! its ENI operations, the schedule of the periodic resync (which never runs beside another
//! operation: its listing would be stale), the pool's random numbers, the reload of what new
//! ENIs get, and the views of blocked vSwitches.

use super::eni_ops::{EniOps, NodeFacts, Observation, eni_tags, node_vswitches};
use crate::cloud::codes;
use crate::config::{Config, VSwitchPolicy};
use crate::pool::shared_eni::{BlockedVSwitch, CloudFailure};
use crate::rpc::BlockedVSwitchView;
use crate::{Error, Kind, Result};
use std::sync::Arc;

/// `ip_pool_sync_period` unset. Each resync lists the node's ENIs (DescribeNetworkInterfaces,
/// one call); the region's budget for it is shared by every node (upstream's default 800 a
/// minute). At 2000 nodes a 120 s period alone would ask 1000 a minute; every 5 min asks 400,
/// half the budget, and leaves the other half to the pools' own calls. Drift behind the
/// daemon's back is noticed within that time.
pub const DEFAULT_RESYNC_MS: u64 = 300_000;
/// The least time between a failed resync and an early (wanted) one.
const RESYNC_RETRY_MS: u64 = 5_000;

/// A region-wide budget is shared by every node: when a resync's calls were throttled, the next
/// one waits twice as long, up to this many times the configured period.
pub const RESYNC_MAX_STRETCH: u64 = 8;

/// When the periodic resync runs: every `every_ms` while the region answers calmly; when the
/// node's calls were throttled since the last resync the interval doubles (up to [`RESYNC_MAX_STRETCH`] times),
/// and each calm resync halves it again. Each interval gets up to a quarter more at random, so
/// nodes started together do not all list at once. Pure: time and randomness passed in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResyncSchedule {
    every_ms: u64,
    interval_ms: u64,
    next: u64,
    /// After a failed resync a wanted (early) one waits until then.
    retry_at: u64,
    /// The node's throttled attempts (a running total) when the last resync ended or was put
    /// off: more now means the cloud throttled the node since.
    throttled_seen: u64,
}

/// What [`ResyncSchedule::try_start`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResyncStart {
    NotDue,
    /// Due, but put off: the node was throttled since the last one.
    PutOff,
    Started,
}

impl ResyncSchedule {
    /// `every_ms` 0: never (except wanted early ones).
    pub fn new(every_ms: u64, now: u64, random: u64) -> ResyncSchedule {
        let mut s = ResyncSchedule {
            every_ms,
            interval_ms: every_ms,
            next: u64::MAX,
            retry_at: 0,
            throttled_seen: 0,
        };
        s.schedule(now, random);
        s
    }

    fn schedule(&mut self, from: u64, random: u64) {
        self.next = match self.interval_ms {
            0 => u64::MAX,
            i => from.saturating_add(i).saturating_add(random % (i / 4 + 1)),
        };
    }

    /// Whether a resync is due at `now` (or `wanted` early and not right after a failed one).
    pub fn due(&self, now: u64, wanted: bool) -> bool {
        now >= self.next || wanted && now >= self.retry_at
    }

    /// A due resync is put off at `now` because the node's calls were throttled since the
    /// last one: the interval doubles and counts from now. False (run it) once the interval is
    /// at its cap, so a resync still comes at least every [`RESYNC_MAX_STRETCH`] periods.
    pub fn postpone(&mut self, now: u64, random: u64) -> bool {
        if !self.stretch() {
            return false;
        }
        self.schedule(now, random);
        true
    }

    /// Doubles the interval up to its cap; false when it already was there.
    fn stretch(&mut self) -> bool {
        let most = self.every_ms.saturating_mul(RESYNC_MAX_STRETCH);
        let stretched = self.interval_ms < most;
        self.interval_ms = self.interval_ms.saturating_mul(2).min(most);
        stretched
    }

    /// A resync starts at `now`: the next one is an interval later.
    pub fn started(&mut self, now: u64, random: u64) {
        self.schedule(now, random);
    }

    /// A resync ended at `now`: `ok` or failed, and whether the cloud throttled the node's calls
    /// since the last one ended.
    pub fn done(&mut self, ok: bool, throttled: bool, now: u64, random: u64) {
        if !ok {
            self.retry_at = now.saturating_add(RESYNC_RETRY_MS);
        }
        if throttled {
            self.stretch();
            // Counted from now: a throttled resync may have taken a while.
            self.schedule(now, random);
        } else if ok {
            // Back by halves: nodes that all reset at once would throttle each other again.
            self.interval_ms = (self.interval_ms / 2).max(self.every_ms);
        }
    }

    /// Whether a resync starts at `now` (see [`ResyncSchedule::due`]; a wanted one is never put
    /// off); `throttled_total`: the node's throttled attempts so far; `random` is drawn only
    /// when a resync is due. Started counts it as started.
    pub fn try_start(
        &mut self,
        now: u64,
        wanted: bool,
        throttled_total: u64,
        random: impl FnOnce() -> u64,
    ) -> ResyncStart {
        if !self.due(now, wanted) {
            return ResyncStart::NotDue;
        }
        let random = random();
        if !wanted && throttled_total > self.throttled_seen && self.postpone(now, random) {
            self.throttled_seen = throttled_total;
            return ResyncStart::PutOff;
        }
        self.started(now, random);
        ResyncStart::Started
    }

    /// A resync ended at `now` ([`ResyncSchedule::done`]); returns whether the node was
    /// throttled since the last one ended.
    pub fn finished(&mut self, ok: bool, throttled_total: u64, now: u64, random: u64) -> bool {
        let throttled = throttled_total > self.throttled_seen;
        self.throttled_seen = throttled_total;
        self.done(ok, throttled, now, random);
        throttled
    }

    /// When the next periodic resync is due.
    pub fn next_at(&self) -> u64 {
        self.next
    }

    /// The interval now (the configured one, or stretched by throttling).
    pub fn interval_ms(&self) -> u64 {
        self.interval_ms
    }
}

/// How long the `most` policy's vSwitch free counts are reused before a resync asks again
/// (upstream Terway caches vSwitches for 10 min too). Every resync asking, at 2000 nodes and the
/// 5-min resync, would be 400 DescribeVSwitches a minute (one listing of the zone's vSwitches
/// per node: `Ecs::describe_vswitches_in`) against the region's 300.
pub const VSWITCH_REFRESH_MS: u64 = 10 * 60 * 1000;

/// When the vSwitches' free counts were last asked for (pure: time passed in).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VSwitchRefresh {
    asked_at: Option<u64>,
    /// The running resync asks.
    asking: bool,
}

impl VSwitchRefresh {
    /// Asked at `now` (the start asks for every configured vSwitch).
    pub fn asked(now: u64) -> VSwitchRefresh {
        VSwitchRefresh {
            asked_at: Some(now),
            asking: false,
        }
    }

    /// Whether a resync starting at `now` asks (and if so, counts it as asked): under the
    /// `most` policy only, and at most every [`VSWITCH_REFRESH_MS`].
    pub fn due(&mut self, policy: VSwitchPolicy, now: u64) -> bool {
        let due = policy == VSwitchPolicy::Most
            && self
                .asked_at
                .is_none_or(|t| now.saturating_sub(t) >= VSWITCH_REFRESH_MS);
        if due {
            self.asked_at = Some(now);
            self.asking = true;
        }
        due
    }

    /// The resync ended; `refreshed`: it got the counts it asked for. Counts asked for but
    /// not had are asked for by the next resync.
    pub fn finished(&mut self, refreshed: bool) {
        if self.asking && !refreshed {
            self.asked_at = None;
        }
        self.asking = false;
    }

    /// The vSwitch list changed: the next resync asks.
    pub fn forget(&mut self) {
        self.asked_at = None;
    }
}

/// One step of xorshift64 over `state`.
pub fn xorshift(state: &mut u64) -> u64 {
    let mut x = *state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    *state = x;
    x
}

pub struct EniCommon {
    pub ops: Arc<EniOps>,
    /// The node as new ENIs see it (security groups, tags, vSwitches follow reloads).
    pub node: Arc<NodeFacts>,
    outstanding: usize,
    resync: ResyncSchedule,
    observing: bool,
    random: u64,
    vswitch_refresh: VSwitchRefresh,
}

impl EniCommon {
    pub fn new(ops: EniOps, config: &Config, now: u64) -> EniCommon {
        let resync_every_ms = config
            .ip_pool_sync_period
            .map(|d| d.as_millis() as u64)
            .unwrap_or(DEFAULT_RESYNC_MS);
        let random = now ^ u64::from(std::process::id()).rotate_left(32) | 1;
        EniCommon {
            node: Arc::new(ops.node.clone()),
            ops: Arc::new(ops),
            outstanding: 0,
            resync: ResyncSchedule::new(resync_every_ms, now, random),
            observing: false,
            random,
            vswitch_refresh: VSwitchRefresh::asked(now),
        }
    }

    /// The vSwitches a resync starting now asks DescribeVSwitches for (see [`VSwitchRefresh`]).
    pub fn vswitches_to_refresh(&mut self, policy: VSwitchPolicy, now: u64) -> Vec<String> {
        if self.vswitch_refresh.due(policy, now) {
            self.node.vswitches.clone()
        } else {
            Vec::new()
        }
    }

    /// xorshift64: the pools only need an unbiased pick among a few vSwitches.
    pub fn next_random(&mut self) -> u64 {
        xorshift(&mut self.random)
    }

    /// While a resync runs nothing else may go out.
    pub fn observing(&self) -> bool {
        self.observing
    }

    /// `n` operations went out.
    pub fn sent(&mut self, n: usize) {
        self.outstanding += n;
    }

    /// Whether a resync starts now: nothing in flight, and it is due (or `wanted` early), and
    /// not put off because the node's calls were throttled since the last one. Counts it as
    /// started.
    pub fn start_resync(&mut self, now: u64, wanted: bool) -> bool {
        if self.outstanding > 0 {
            return false;
        }
        let total = self.ops.cloud.ecs.throttled_total();
        let random = &mut self.random;
        match self
            .resync
            .try_start(now, wanted, total, || xorshift(random))
        {
            ResyncStart::NotDue => false,
            ResyncStart::PutOff => {
                // The region is busy: the listing would compete with the pool's own calls.
                log::debug!(
                    "resync put off: the cloud throttles this node's calls; next in {} s",
                    self.resync.interval_ms() / 1000
                );
                false
            }
            ResyncStart::Started => {
                self.outstanding += 1;
                self.observing = true;
                true
            }
        }
    }

    /// An operation reported back.
    pub fn done(&mut self) {
        self.outstanding = self.outstanding.saturating_sub(1);
    }

    /// A resync reported back; a failed one is not retried early for a while. When the cloud
    /// throttled this node's calls since the last resync (its own or the pool's: the region is
    /// busy, and its budgets are every node's), the next resync waits longer.
    pub fn resync_done(&mut self, seen: Option<&Observation>, now: u64) {
        let ok = seen.is_some();
        self.vswitch_refresh
            .finished(seen.is_some_and(|o| o.vswitches_refreshed));
        self.done();
        self.observing = false;
        let total = self.ops.cloud.ecs.throttled_total();
        let random = self.next_random();
        if self.resync.finished(ok, total, now, random) {
            log::info!(
                "resync: the cloud throttles this node's calls; the next in {} s",
                self.resync.interval_ms() / 1000
            );
        }
    }

    /// When the loop must come back for this source: the pool's own deadline (not while a
    /// resync runs: nothing is planned then, and its result wakes the loop), and the resync when
    /// one could start (with operations in flight, their results wake the loop). Reporting a
    /// time that cannot act would make the loop spin.
    pub fn deadline(&self, pool: Option<u64>) -> Option<u64> {
        let pool = pool.filter(|_| !self.observing);
        let resync = (self.outstanding == 0).then_some(self.resync.next_at());
        [pool, resync].into_iter().flatten().min()
    }

    /// A reload: new ENIs join the new security groups, carry the new tags and come from the
    /// new vSwitches; existing ENIs are left as they are.
    pub fn reload(&mut self, config: &Config, mode: &str) -> Result<Arc<NodeFacts>> {
        if config.security_groups.is_empty() {
            return Err(Error::new(
                Kind::InvalidConfig,
                format!("security_group (or security_groups) is required in {mode} mode"),
            ));
        }
        let mut node = (*self.node).clone();
        node.security_groups = config.security_groups.clone();
        node.eni_tags = eni_tags(config, &node.info.instance_id);
        node.vswitches = node_vswitches(config, &node.info);
        if node.vswitches != self.node.vswitches {
            self.vswitch_refresh.forget();
        }
        self.node = Arc::new(node);
        Ok(self.node.clone())
    }

    /// This mode's part of the state file around `pool`.
    pub fn state<P>(&self, pool: P) -> crate::store::EniModeState<P> {
        crate::store::EniModeState {
            instance_id: self.node.info.instance_id.clone(),
            instance_type: self.node.info.instance_type.clone(),
            limits: Some(self.node.limits),
            pool,
        }
    }

    /// The pool saved in the state file, if it was this instance's (a state file copied from
    /// another node must not hand out that node's ENIs).
    pub fn saved_pool<P: Clone + Default>(&self, saved: Option<(&str, &P)>) -> P {
        match saved {
            Some((id, p)) if id == self.node.info.instance_id => p.clone(),
            Some((id, _)) => {
                log::warn!(
                    "state file was written on instance {id} but this is {}: starting with an empty pool",
                    self.node.info.instance_id
                );
                P::default()
            }
            None => P::default(),
        }
    }
}

/// Why waiting pods cannot be served at all: a final cloud error, or the pool's own reason.
pub fn unservable(last: Option<&CloudFailure>, pool_says: Option<String>) -> Option<String> {
    last.filter(|f| codes::is_final(&f.code))
        .map(|f| format!("{}: {}", f.code, f.message))
        .or(pool_says)
}

/// A reconcile's findings, counted in `terway_reconcile_findings_total`.
pub fn count_findings(lost: usize, adopted: usize, removed_idle: usize) {
    use crate::metrics::finding;
    let m = crate::metrics::global();
    m.findings(finding::LOST, lost);
    m.findings(finding::ADOPTED, adopted);
    m.findings(finding::REMOVED_IDLE, removed_idle);
}

/// "; last cloud error: code: message", or nothing.
pub fn last_error(last: Option<&CloudFailure>) -> String {
    last.map(|f| format!("; last cloud error: {}: {}", f.code, f.message))
        .unwrap_or_default()
}

pub fn blocked_views(blocked: &[BlockedVSwitch], now: u64) -> Vec<BlockedVSwitchView> {
    blocked
        .iter()
        .map(|b| BlockedVSwitchView {
            id: b.id.clone(),
            seconds_left: b.until_ms.saturating_sub(now).div_ceil(1000),
            reason: b.reason.clone(),
        })
        .collect()
}

/// The owner keys `owners` holds that the state file's allocations do not list: pods from
/// before a reboot (their allocations were dropped). Their addresses go back to the pool.
pub fn orphaned_owners<'a>(
    owners: impl Iterator<Item = &'a crate::model::AttachKey>,
    allocs: &[crate::store::StoredAllocation],
) -> Vec<crate::model::AttachKey> {
    let known: std::collections::BTreeSet<&crate::model::AttachKey> =
        allocs.iter().map(|a| &a.key).collect();
    owners.filter(|k| !known.contains(k)).cloned().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resync_is_put_off_when_the_node_was_throttled_since_the_last() {
        let mut s = ResyncSchedule::new(1_000, 0, 0);
        let r = || 0;
        assert_eq!(s.try_start(999, false, 0, r), ResyncStart::NotDue);
        assert_eq!(s.try_start(1_000, false, 0, r), ResyncStart::Started);
        assert!(!s.finished(true, 0, 1_100, 0), "calm");
        // Throttled 3 times since: the due one is put off (the interval doubles)...
        assert_eq!(s.try_start(2_000, false, 3, r), ResyncStart::PutOff);
        assert_eq!(s.try_start(3_000, false, 3, r), ResyncStart::NotDue);
        // ... and the next runs: nothing new since it was put off.
        assert_eq!(s.try_start(4_000, false, 3, r), ResyncStart::Started);
        assert!(s.finished(true, 5, 4_100, 0), "throttled while it ran");
        // A wanted one is never put off.
        assert_eq!(s.try_start(4_200, true, 9, r), ResyncStart::Started);
    }

    #[test]
    fn vswitch_free_counts_are_asked_for_under_most_at_most_every_ten_minutes() {
        let mut r = VSwitchRefresh::asked(1_000);
        for policy in [VSwitchPolicy::Ordered, VSwitchPolicy::Random] {
            assert!(
                !r.due(policy, 1_000 + 10 * VSWITCH_REFRESH_MS),
                "{policy:?}"
            );
        }
        assert!(!r.due(VSwitchPolicy::Most, 1_000 + VSWITCH_REFRESH_MS - 1));
        assert!(r.due(VSwitchPolicy::Most, 1_000 + VSWITCH_REFRESH_MS));
        assert!(
            !r.due(VSwitchPolicy::Most, 1_000 + VSWITCH_REFRESH_MS + 1),
            "counted"
        );
        // New vSwitches: the next resync asks, whenever it comes.
        r.forget();
        assert!(!r.due(VSwitchPolicy::Ordered, 5_000_000));
        assert!(r.due(VSwitchPolicy::Most, 1_000 + VSWITCH_REFRESH_MS + 2));
        // A resync that asked but did not get the counts (throttled, failed): the next asks.
        r.finished(false);
        assert!(r.due(VSwitchPolicy::Most, 1_000 + VSWITCH_REFRESH_MS + 3));
        r.finished(true);
        assert!(!r.due(VSwitchPolicy::Most, 1_000 + VSWITCH_REFRESH_MS + 4));
        // One that did not ask keeps the counts' age, whatever it got.
        r.finished(false);
        assert!(!r.due(VSwitchPolicy::Most, 1_000 + VSWITCH_REFRESH_MS + 5));
    }

    #[test]
    fn resync_stretches_when_throttled_and_comes_back_when_calm() {
        assert_eq!(RESYNC_MAX_STRETCH, 8, "the halving steps below assume 8");
        // Random 0: no jitter.
        let mut s = ResyncSchedule::new(120_000, 0, 0);
        assert_eq!(s.next_at(), 120_000);
        assert!(!s.due(119_999, false) && s.due(120_000, false));
        s.started(120_000, 0);
        assert_eq!(s.next_at(), 240_000);
        // Throttled: twice the interval, counted from the end of this resync.
        s.done(true, true, 130_000, 0);
        assert_eq!((s.interval_ms(), s.next_at()), (240_000, 370_000));
        for _ in 0..10 {
            s.done(false, true, 400_000, 0);
        }
        assert_eq!(s.interval_ms(), 120_000 * RESYNC_MAX_STRETCH, "capped");
        assert_eq!(s.next_at(), 400_000 + 120_000 * RESYNC_MAX_STRETCH);
        // A failed resync holds wanted ones back a while, whatever the interval.
        assert!(!s.due(400_000 + RESYNC_RETRY_MS - 1, true));
        assert!(s.due(400_000 + RESYNC_RETRY_MS, true));
        // A failure without throttling does not stretch; a calm success resets.
        s.done(false, false, 500_000, 0);
        assert_eq!(s.interval_ms(), 120_000 * RESYNC_MAX_STRETCH);
        // Calm ones bring it back by halves.
        for want in [4, 2, 1, 1] {
            s.done(true, false, 600_000, 0);
            assert_eq!(s.interval_ms(), 120_000 * want);
        }
        s.started(600_000, 0);
        assert_eq!(s.next_at(), 720_000);
    }

    #[test]
    fn a_busy_region_puts_resyncs_off_but_never_for_good() {
        let mut s = ResyncSchedule::new(120_000, 0, 0);
        let mut now = s.next_at();
        let mut put_off = 0;
        while s.postpone(now, 0) {
            put_off += 1;
            assert_eq!(s.next_at(), now + s.interval_ms());
            now = s.next_at();
        }
        // 240, 480, 960 s: then at the cap it runs whatever the region says.
        assert_eq!(put_off, 3);
        assert_eq!(s.interval_ms(), 120_000 * RESYNC_MAX_STRETCH);
        assert!(s.due(now, false));
        s.started(now, 0);
        s.done(true, false, now + 1_000, 0);
        assert_eq!(s.interval_ms(), 120_000 * RESYNC_MAX_STRETCH / 2);
    }

    #[test]
    fn resync_jitter_is_at_most_a_quarter() {
        let mut seen = std::collections::BTreeSet::new();
        for r in 0..1000u64 {
            let s = ResyncSchedule::new(120_000, 5, r.wrapping_mul(0x9e37_79b9_7f4a_7c15));
            assert!(
                (120_005..=150_005).contains(&s.next_at()),
                "{}",
                s.next_at()
            );
            seen.insert(s.next_at() / 1000);
        }
        assert!(seen.len() > 20, "spread: {seen:?}");
        let never = ResyncSchedule::new(0, 5, 7);
        assert!(!never.due(u64::MAX - 1, false) && never.due(0, true));
    }

    #[test]
    fn final_errors_win_and_last_errors_read_well() {
        let f = CloudFailure {
            code: "Forbidden.RAM".into(),
            message: "no permission".into(),
        };
        assert_eq!(
            unservable(Some(&f), Some("full".into())).unwrap(),
            "Forbidden.RAM: no permission"
        );
        let t = CloudFailure {
            code: "Throttling.User".into(),
            message: "slow down".into(),
        };
        assert_eq!(unservable(Some(&t), None), None);
        assert_eq!(unservable(Some(&t), Some("full".into())).unwrap(), "full");
        assert_eq!(
            last_error(Some(&t)),
            "; last cloud error: Throttling.User: slow down"
        );
        assert_eq!(last_error(None), "");
        let b = BlockedVSwitch {
            id: "vsw-1".into(),
            until_ms: 2_500,
            reason: "empty".into(),
        };
        assert_eq!(blocked_views(&[b], 1_000)[0].seconds_left, 2);
    }
}
