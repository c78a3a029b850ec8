//! What the two ENI sources (shared and exclusive) share around their pure pools: the node and
//! its ENI operations, the schedule of the periodic resync (which never runs beside another
//! operation: its listing would be stale), the pool's random numbers, the reload of what new
//! ENIs get, and the views of blocked vSwitches.

use super::eni_ops::{EniOps, NodeFacts, eni_tags, node_vswitches};
use crate::cloud::codes;
use crate::config::Config;
use crate::pool::shared_eni::{BlockedVSwitch, CloudFailure};
use crate::rpc::BlockedVSwitchView;
use crate::{Error, Kind, Result};
use std::sync::Arc;

const DEFAULT_RESYNC_MS: u64 = 120_000;
/// The least time between a failed resync and an early (wanted) one.
const RESYNC_RETRY_MS: u64 = 5_000;

pub struct EniCommon {
    pub ops: Arc<EniOps>,
    /// The node as new ENIs see it (security groups, tags, vSwitches follow reloads).
    pub node: Arc<NodeFacts>,
    outstanding: usize,
    resync_every_ms: u64,
    next_resync: u64,
    observing: bool,
    random: u64,
    /// After a failed resync a wanted (early) one waits until then.
    retry_resync_at: u64,
}

impl EniCommon {
    pub fn new(ops: EniOps, config: &Config, now: u64) -> EniCommon {
        let resync_every_ms = config
            .ip_pool_sync_period
            .map(|d| d.as_millis() as u64)
            .unwrap_or(DEFAULT_RESYNC_MS);
        EniCommon {
            node: Arc::new(ops.node.clone()),
            ops: Arc::new(ops),
            outstanding: 0,
            resync_every_ms,
            next_resync: now + resync_every_ms,
            observing: false,
            random: now ^ u64::from(std::process::id()).rotate_left(32) | 1,
            retry_resync_at: 0,
        }
    }

    /// xorshift64: the pools only need an unbiased pick among a few vSwitches.
    pub fn next_random(&mut self) -> u64 {
        let mut x = self.random;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.random = x;
        x
    }

    /// While a resync runs nothing else may go out.
    pub fn observing(&self) -> bool {
        self.observing
    }

    /// `n` operations went out.
    pub fn sent(&mut self, n: usize) {
        self.outstanding += n;
    }

    /// Whether a resync starts now: nothing in flight, and it is due (or `wanted` early).
    /// Counts it as started.
    pub fn start_resync(&mut self, now: u64, wanted: bool) -> bool {
        let early = wanted && now >= self.retry_resync_at;
        if self.outstanding > 0 || !(early || now >= self.next_resync) {
            return false;
        }
        self.next_resync = now + self.resync_every_ms;
        self.outstanding += 1;
        self.observing = true;
        true
    }

    /// An operation reported back.
    pub fn done(&mut self) {
        self.outstanding = self.outstanding.saturating_sub(1);
    }

    /// A resync reported back; a failed one is not retried early for a while (the cloud may be
    /// throttling: every resync is several calls).
    pub fn resync_done(&mut self, ok: bool, now: u64) {
        self.done();
        self.observing = false;
        if !ok {
            self.retry_resync_at = now + RESYNC_RETRY_MS;
        }
    }

    /// When the loop must come back for this source: the pool's own deadline (not while a
    /// resync runs: nothing is planned then, and its result wakes the loop), and the resync when
    /// one could start (with operations in flight, their results wake the loop). Reporting a
    /// time that cannot act would make the loop spin.
    pub fn deadline(&self, pool: Option<u64>) -> Option<u64> {
        let pool = pool.filter(|_| !self.observing);
        let resync = (self.outstanding == 0).then_some(self.next_resync);
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
