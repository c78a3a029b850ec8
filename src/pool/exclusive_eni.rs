//! Exclusive-ENI mode (ENIOnly): a pod takes a whole secondary ENI. The ENI's primary IP is the
//! pod's address, with the vSwitch's prefix length and gateway.
//!
//! Pure like [`crate::pool::shared_eni`]: no I/O, no clock, no randomness. The daemon passes the time
//! (monotonic ms) and a random number in, runs the [`CloudOp`]s that [`Pool::plan`] returns on
//! its workers and feeds the results back through [`Pool::apply`].
//!
//! The watermarks count idle ENIs: `min_idle` / `max_idle` (`min_pool_size` / `max_pool_size`),
//! `min_enis` (`min_eni`: kept attached even when idle) and `max_enis` (min(EniQuantity − 1,
//! `max_eni`): the node's capacity).
//!
//! Invariants kept by every operation:
//! - an ENI has at most one owner, and an owner holds at most one ENI;
//! - an owned ENI is never deleted (only idle ENIs are planned for deletion, and an ENI being
//!   deleted is never handed out);
//! - an ENI being deleted, lost by the cloud, or not confirmed attached after a failed delete is
//!   never handed out;
//! - the pool never asks for more than `max_enis` ENIs (attached + being created).

mod plan;
#[cfg(test)]
mod proptests;
mod reconcile;
#[cfg(test)]
mod sim;
#[cfg(test)]
mod state_tests;
#[cfg(test)]
mod tests;

use super::backoff::Backoff;
use super::eni::{EniInfo, is_false};
use super::flights::{Flights, InFlight};
use super::schedule::Schedule;
use super::vswitch::Blocked;
use crate::config::VSwitchPolicy;
use crate::model::AttachKey;
use ipnetwork::Ipv4Network;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};

pub use super::eni::{CloudFailure, EniFacts, Lease, OpId};
pub use super::vswitch::BlockedVSwitch;

/// Who holds an ENI. One alias so the key type can change in one place.
pub type Owner = AttachKey;

#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// min_pool_size: create ENIs when fewer are idle.
    pub min_idle: u32,
    /// max_pool_size: delete idle ENIs above this after `release_after_ms`.
    pub max_idle: u32,
    /// Secondary ENIs allowed: min(EniQuantity - 1, max_eni). The node's capacity in pods.
    pub max_enis: u32,
    /// min_eni: ENIs kept attached even when idle (capped by `max_enis`).
    pub min_enis: u32,
    /// Wait after demand first appears before planning creates.
    pub coalesce_ms: u64,
    /// Idle above max must last this long before ENIs are deleted.
    pub release_after_ms: u64,
    /// An exhausted vSwitch is skipped this long.
    pub vswitch_backoff_ms: u64,
    /// After a failed op, wait this long (doubling with each failure in a row) before the next.
    pub retry_after_ms: u64,
    /// Candidate vSwitches of the node's zone, in config order.
    pub vswitches: Vec<String>,
    pub vswitch_policy: VSwitchPolicy,
    /// An idle ENI last held by the same pod name is given back to it within this window.
    pub sticky_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloudOp {
    /// Create an ENI in `vswitch_id` with no secondary IP, attach it, wait until InUse.
    CreateEni { op: OpId, vswitch_id: String },
    /// Detach (wait until Available) and delete.
    DeleteEni { op: OpId, eni_id: String },
}

impl CloudOp {
    pub fn id(&self) -> OpId {
        match self {
            CloudOp::CreateEni { op, .. } | CloudOp::DeleteEni { op, .. } => *op,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloudOutcome {
    /// Created and attached (its secondary IPs, if the cloud reports any, are ignored).
    EniCreated {
        op: OpId,
        eni: EniFacts,
    },
    EniDeleted {
        op: OpId,
        eni_id: String,
    },
    Failed {
        op: OpId,
        failure: CloudFailure,
    },
}

/// One secondary ENI. `pod` is the owner's pod name, or the last owner's while idle (sticky rule).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct EniState {
    #[serde(flatten)]
    info: EniInfo,
    /// Dual stack: the ENI's IPv6, which its pod gets with the primary IPv4.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ip6: Option<Ipv6Addr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    owner: Option<Owner>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pod: String,
    /// Idle since (unowned) or allocated at (owned).
    #[serde(default)]
    since: u64,
    /// The cloud no longer has it attached; kept only until its owner releases it.
    #[serde(default, skip_serializing_if = "is_false")]
    lost: bool,
    /// A DeleteEni is in flight (reset in `Pool::new`: ops do not survive a restart).
    #[serde(default, skip_serializing_if = "is_false")]
    deleting: bool,
    /// A delete failed part way (it may be detached already): held back until a reconcile says
    /// whether it is still attached.
    #[serde(default, skip_serializing_if = "is_false")]
    unconfirmed: bool,
}

impl EniState {
    fn new_idle(f: &EniFacts, now: u64) -> EniState {
        EniState {
            info: EniInfo::of(f),
            ip6: f.ipv6s.first().copied(),
            owner: None,
            pod: String::new(),
            since: now,
            lost: false,
            deleting: false,
            unconfirmed: false,
        }
    }

    /// The cloud's view of the ENI wins.
    fn refresh(&mut self, f: &EniFacts) {
        self.info = EniInfo::of(f);
        self.ip6 = f.ipv6s.first().copied();
        self.lost = false;
        self.unconfirmed = false;
    }

    /// The ENI's primary IP is the pod's.
    fn lease(&self) -> Lease {
        self.info.lease(self.info.primary_ip, self.ip6)
    }

    fn is_idle(&self) -> bool {
        self.owner.is_none() && !self.lost && !self.deleting && !self.unconfirmed
    }

    /// Attached as far as the pool knows (counts against the instance's ENI limit).
    fn present(&self) -> bool {
        !self.lost
    }

    /// Attached and staying (not being deleted): what `min_enis` and `max_enis` count.
    fn kept(&self) -> bool {
        !self.lost && !self.deleting
    }

    fn status(&self) -> EniStatus {
        if self.lost {
            EniStatus::Lost
        } else if self.deleting {
            EniStatus::Deleting
        } else if self.owner.is_some() {
            EniStatus::InUse
        } else if self.unconfirmed {
            EniStatus::Unconfirmed
        } else {
            EniStatus::Idle
        }
    }
}

/// Persisted part (goes into the daemon's state file as JSON).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolState {
    #[serde(default)]
    enis: Vec<EniState>,
    #[serde(default)]
    blocked: Blocked,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EniStatus {
    /// Held by a pod.
    InUse,
    /// Attached, free.
    Idle,
    /// A delete is in flight.
    Deleting,
    /// Held by a pod, but the cloud no longer has it attached.
    Lost,
    /// A delete failed; waiting for a reconcile to say whether it is still attached.
    Unconfirmed,
}

/// For the CLI (`terway pool`, `terway mapping`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolSnapshot {
    pub enis: Vec<EniSnapshot>,
    pub in_use: u32,
    pub idle: u32,
    /// ENIs being created.
    pub creating: u32,
    /// Pods this node can hold (= max_enis).
    pub capacity: u32,
    pub min_idle: u32,
    pub max_idle: u32,
    pub min_enis: u32,
    pub max_enis: u32,
    pub blocked_vswitches: Vec<BlockedVSwitch>,
    /// The cloud refuses new ENIs until a retry: "code: message".
    pub creates_refused: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EniSnapshot {
    pub id: String,
    pub mac: String,
    pub vswitch_id: String,
    pub vswitch_cidr: Ipv4Network,
    pub gateway: Ipv4Addr,
    pub primary_ip: Ipv4Addr,
    /// Dual stack: the IPv6 its pod gets.
    pub ip6: Option<Ipv6Addr>,
    pub owner: Option<Owner>,
    pub status: EniStatus,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReconcileReport {
    /// ENIs held by pods that the cloud no longer has attached (now lost, never handed out).
    pub lost: Vec<(Owner, String)>,
    /// Attached ENIs the pool did not know: now idle.
    pub adopted: Vec<String>,
    /// Idle (or unconfirmed) ENIs the cloud no longer has: dropped.
    pub removed_idle: Vec<String>,
}

/// An op the workers are running.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Flight {
    Create { vswitch: String },
    Delete { eni: String },
}

impl InFlight for Flight {
    fn eni(&self) -> Option<&str> {
        match self {
            Flight::Create { .. } => None,
            Flight::Delete { eni } => Some(eni),
        }
    }

    fn is_create(&self) -> bool {
        matches!(self, Flight::Create { .. })
    }
}

pub struct Pool {
    cfg: PoolConfig,
    st: PoolState,
    flights: Flights<Flight>,
    /// The coalescing window, the delete cool-down (idle ENIs to delete), when to plan.
    sched: Schedule,
    /// No op of that kind is planned before these times (after a failure).
    retry_create: u64,
    retry_release: u64,
    /// EniPerInstanceLimitExceeded / QuotaExceeded.*: no create before this time, and why.
    creates_refused_until: u64,
    refusal: Option<CloudFailure>,
    vswitch_free: BTreeMap<String, u64>,
    /// Failed waves since the last successful create: ops planned together (a wave of parallel
    /// creates) failing together count once.
    backoff: Backoff,
    /// A create failed (other than an exhausted vSwitch): the next create is a single probe,
    /// the rest follow once one succeeds.
    probing: bool,
}

impl Pool {
    pub fn new(cfg: PoolConfig, state: PoolState) -> Pool {
        let mut st = state;
        let mut ids = std::collections::BTreeSet::new();
        let mut owners = std::collections::BTreeSet::new();
        // A hand-edited or corrupt file must not list an ENI twice or give an owner two ENIs.
        st.enis.retain(|e| ids.insert(e.info.id.clone()));
        for eni in &mut st.enis {
            // Ops of a previous process are gone: what they were deleting is idle again (the
            // startup reconcile drops what the cloud did delete).
            eni.deleting = false;
            if let Some(o) = &eni.owner
                && !owners.insert(o.clone())
            {
                eni.owner = None;
            }
        }
        st.enis.retain(|e| !(e.lost && e.owner.is_none()));
        Pool {
            cfg,
            st,
            flights: Flights::default(),
            sched: Schedule::default(),
            retry_create: 0,
            retry_release: 0,
            creates_refused_until: 0,
            refusal: None,
            vswitch_free: BTreeMap::new(),
            backoff: Backoff::default(),
            probing: false,
        }
    }

    /// Reload: new vSwitches / watermarks. Owned ENIs and blocks are left as they are; ENIs above
    /// a lowered `max_enis` are deleted as they become idle.
    pub fn set_config(&mut self, cfg: PoolConfig) {
        self.cfg = cfg;
        self.sched.wake();
    }

    pub fn config(&self) -> &PoolConfig {
        &self.cfg
    }

    pub fn state(&self) -> &PoolState {
        &self.st
    }

    /// An idle ENI for `key` (pod_name = "ns/name", for the sticky rule), or None when nothing
    /// is idle. A key that already holds an ENI gets the same lease again.
    pub fn allocate(&mut self, key: &Owner, pod_name: &str, now: u64) -> Option<Lease> {
        if let Some(e) = self.find_owned(key) {
            if !self.st.enis[e].lost {
                return Some(self.st.enis[e].lease());
            }
            // Its ENI is gone from the cloud: drop it and hand out a real one.
            self.st.enis.remove(e);
        }
        let e = self
            .pick_sticky(pod_name, now)
            .or_else(|| self.pick_idle(now))?;
        let eni = &mut self.st.enis[e];
        eni.owner = Some(key.clone());
        eni.pod = pod_name.to_string();
        eni.since = now;
        let lease = eni.lease();
        if self.idle() < self.cfg.min_idle {
            self.sched.wake();
        }
        self.touch(now);
        Some(lease)
    }

    pub fn lease_of(&self, key: &Owner) -> Option<Lease> {
        self.find_owned(key).map(|e| self.st.enis[e].lease())
    }

    /// Back to idle (idle since `now`). None if the key held nothing. A lost ENI is dropped.
    pub fn release(&mut self, key: &Owner, now: u64) -> Option<Lease> {
        let e = self.find_owned(key)?;
        let eni = &mut self.st.enis[e];
        let lease = eni.lease();
        if eni.lost {
            self.st.enis.remove(e);
        } else {
            eni.owner = None;
            eni.since = now;
        }
        self.touch(now);
        Some(lease)
    }

    /// Tell the pool how many free addresses a vSwitch has (DescribeVSwitches), for `Most`.
    pub fn set_vswitch_free(&mut self, vswitch_id: &str, free: u64) {
        self.vswitch_free.insert(vswitch_id.to_string(), free);
    }

    pub fn snapshot(&self, now: u64) -> PoolSnapshot {
        let mut enis: Vec<EniSnapshot> = self
            .st
            .enis
            .iter()
            .map(|e| EniSnapshot {
                id: e.info.id.clone(),
                mac: e.info.mac.clone(),
                vswitch_id: e.info.vswitch_id.clone(),
                vswitch_cidr: e.info.vswitch_cidr,
                gateway: e.info.gateway,
                ip6: e.ip6,
                primary_ip: e.info.primary_ip,
                owner: e.owner.clone(),
                status: e.status(),
            })
            .collect();
        enis.sort_by(|a, b| a.id.cmp(&b.id));
        PoolSnapshot {
            enis,
            in_use: self.in_use(),
            idle: self.idle(),
            creating: self.creating(),
            capacity: self.capacity(),
            min_idle: self.cfg.min_idle,
            max_idle: self.cfg.max_idle,
            min_enis: self.cfg.min_enis,
            max_enis: self.cfg.max_enis,
            blocked_vswitches: self.st.blocked.active(now),
            creates_refused: self
                .creates_refused(now)
                .map(|f| format!("{}: {}", f.code, f.message)),
        }
    }

    /// ENIs that can be handed out now.
    pub fn idle(&self) -> u32 {
        self.st.enis.iter().filter(|e| e.is_idle()).count() as u32
    }

    /// ENIs held by pods (including lost ones a pod still holds).
    pub fn in_use(&self) -> u32 {
        self.st.enis.iter().filter(|e| e.owner.is_some()).count() as u32
    }

    /// Pods this node can hold: one per secondary ENI.
    pub fn capacity(&self) -> u32 {
        self.cfg.max_enis
    }

    /// ENIs being created.
    pub fn creating(&self) -> u32 {
        self.flights.creating()
    }

    /// The last cloud failure, until a create planned after it succeeds (for logs and pod events).
    pub fn last_failure(&self) -> Option<&CloudFailure> {
        self.backoff.last_failure()
    }

    /// Number of cloud ops handed out by `plan` and not yet applied.
    pub fn ops_in_flight(&self) -> usize {
        self.flights.len()
    }

    /// True while an ENI waits for a reconcile to confirm it (after a failed delete): the daemon
    /// should not wait long for its next reconcile.
    pub fn wants_reconcile(&self) -> bool {
        self.st.enis.iter().any(|e| e.unconfirmed)
    }

    fn find_owned(&self, key: &Owner) -> Option<usize> {
        self.st
            .enis
            .iter()
            .position(|e| e.owner.as_ref() == Some(key))
    }

    fn eni_index(&self, id: &str) -> Option<usize> {
        self.st.enis.iter().position(|e| e.info.id == id)
    }

    fn sticky_for(&self, eni: &EniState, now: u64) -> bool {
        !eni.pod.is_empty() && now.saturating_sub(eni.since) < self.cfg.sticky_ms
    }

    fn pick_sticky(&self, pod_name: &str, now: u64) -> Option<usize> {
        if pod_name.is_empty() {
            return None;
        }
        self.st
            .enis
            .iter()
            .position(|e| e.is_idle() && e.pod == pod_name && self.sticky_for(e, now))
    }

    /// Longest idle first (a just-released ENI may still carry the old pod's conntrack/ARP);
    /// ENIs kept for a recently deleted pod (sticky) only when nothing else is left.
    fn pick_idle(&self, now: u64) -> Option<usize> {
        self.st
            .enis
            .iter()
            .enumerate()
            .filter(|(_, e)| e.is_idle())
            .min_by_key(|(_, e)| (self.sticky_for(e, now), e.since, e.info.id.as_str()))
            .map(|(i, _)| i)
    }

    /// ENIs attached (as far as the pool knows) or being created: what the instance limit counts.
    fn eni_count(&self) -> u32 {
        self.st.enis.iter().filter(|e| e.present()).count() as u32 + self.creating()
    }

    /// ENIs attached and not being deleted.
    fn kept(&self) -> u32 {
        self.st.enis.iter().filter(|e| e.kept()).count() as u32
    }

    /// How many idle ENIs may be deleted now (cool-down aside): idle above max(max_idle,
    /// min_idle), or ENIs above a lowered max_enis; never below min_enis.
    fn deletable_excess(&self) -> u32 {
        let idle = self.idle();
        if idle == 0 {
            return 0;
        }
        let kept = self.kept();
        let over_idle = idle.saturating_sub(self.cfg.max_idle.max(self.cfg.min_idle));
        let over_cap = kept.saturating_sub(self.cfg.max_enis);
        let floor = self.cfg.min_enis.min(self.cfg.max_enis);
        over_idle
            .max(over_cap)
            .min(kept.saturating_sub(floor))
            .min(idle)
    }

    /// Track how long there has been something to delete without interruption.
    fn touch(&mut self, now: u64) {
        let excess = self.deletable_excess() > 0;
        self.sched.excess(excess, now);
    }

    fn creates_refused(&self, now: u64) -> Option<&CloudFailure> {
        if now < self.creates_refused_until {
            self.refusal.as_ref()
        } else {
            None
        }
    }
}
