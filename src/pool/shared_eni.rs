//! Shared-ENI mode (ENIMultiIP): secondary ENIs of the instance and their private IPs.
//!
//! Pure: no I/O, no clock, no randomness. The daemon passes the time (monotonic ms) and a random
//! number in, runs the [`CloudOp`]s that [`Pool::plan`] returns on its workers and feeds the
//! results back through [`Pool::apply`].
//!
//! Invariants kept by every operation:
//! - an IP has at most one owner, and appears on at most one ENI;
//! - an owned IP is never unassigned or deleted (an ENI is deleted only when nothing on it is owned);
//! - an IP whose unassign/delete is in flight (`releasing`) or that the cloud lost (`invalid`) is
//!   never handed out.
//!
//! Dual stack (`dual`): every IPv4 of an ENI is paired with an IPv6 of the same ENI, and only
//! complete pairs are handed out. IPv6 addresses are assigned with the IPv4 ones (same call
//! count); one that has no partner yet waits as a spare, an IPv4 without a partner gets one by
//! an IPv6-only assign (repair), spares nothing needs are unassigned.

mod dual;
#[cfg(test)]
mod dual_tests;
mod plan;
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
use crate::config::{EniPolicy, VSwitchPolicy};
use crate::model::AttachKey;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};

pub use super::backoff::MAX_RETRY_MS;
pub use super::eni::{CloudFailure, EniFacts, EniV6, Lease, OpId};
pub use super::vswitch::BlockedVSwitch;

#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// min_pool_size: refill when fewer IPs are idle.
    pub min_idle: u32,
    /// max_pool_size: release when more IPs stay idle for `release_after_ms`.
    pub max_idle: u32,
    /// Secondary ENIs allowed: min(EniQuantity - 1, max_eni).
    pub max_enis: u32,
    /// EniPrivateIpAddressQuantity (the ENI's own primary IP counts).
    pub ips_per_eni: u32,
    /// Most IPs per create/assign call (10).
    pub batch: u32,
    /// Wait after demand first appears before planning a fill.
    pub coalesce_ms: u64,
    /// Idle above max must last this long before it is released.
    pub release_after_ms: u64,
    /// An exhausted vSwitch is skipped this long.
    pub vswitch_backoff_ms: u64,
    /// After a failed op, wait this long before planning the same kind again.
    pub retry_after_ms: u64,
    /// Candidate vSwitches of the node's zone, in config order.
    pub vswitches: Vec<String>,
    pub vswitch_policy: VSwitchPolicy,
    /// MostIps (take from the ENI with most idle) | LeastIps (pack).
    pub eni_policy: EniPolicy,
    /// An idle IP last held by the same pod name is given back to it within this window.
    pub sticky_ms: u64,
    /// A released IP goes to another pod only after this long, unless no other is idle.
    pub cooldown_ms: u64,
    /// `ip_stack: dual`: pods get an IPv4 and an IPv6 of the same ENI.
    pub dual: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloudOp {
    /// Create an ENI in `vswitch_id` with `secondary_count` secondary IPs (total IPs = 1 + secondary_count), attach it, wait until InUse.
    CreateEni {
        op: OpId,
        vswitch_id: String,
        secondary_count: u32,
        /// Dual stack: IPv6 addresses to create it with (one per IPv4, its primary included).
        ipv6_count: u32,
    },
    /// Assign `count` IPv4 and `ipv6_count` IPv6 addresses (either may be 0).
    AssignIps {
        op: OpId,
        eni_id: String,
        count: u32,
        ipv6_count: u32,
    },
    UnassignIps {
        op: OpId,
        eni_id: String,
        ips: Vec<Ipv4Addr>,
        ips6: Vec<Ipv6Addr>,
    },
    /// Detach (wait until Available) and delete.
    DeleteEni { op: OpId, eni_id: String },
}

impl CloudOp {
    pub fn id(&self) -> OpId {
        match self {
            CloudOp::CreateEni { op, .. }
            | CloudOp::AssignIps { op, .. }
            | CloudOp::UnassignIps { op, .. }
            | CloudOp::DeleteEni { op, .. } => *op,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloudOutcome {
    EniCreated {
        op: OpId,
        eni: EniFacts,
    },
    /// What was assigned; `failure6` when the IPv4 call succeeded but the IPv6 one failed.
    IpsAssigned {
        op: OpId,
        eni_id: String,
        ips: Vec<Ipv4Addr>,
        ips6: Vec<Ipv6Addr>,
        failure6: Option<CloudFailure>,
    },
    /// What was unassigned; `failure6` when the IPv4 call succeeded but the IPv6 one failed.
    IpsUnassigned {
        op: OpId,
        eni_id: String,
        ips: Vec<Ipv4Addr>,
        ips6: Vec<Ipv6Addr>,
        failure6: Option<CloudFailure>,
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

/// One IP of an ENI. `pod` is the owner's pod name, or the last owner's while idle (sticky rule).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct IpState {
    ip: Ipv4Addr,
    /// Dual stack: its IPv6 partner on the same ENI.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ip6: Option<Ipv6Addr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    owner: Option<AttachKey>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pod: String,
    /// Idle since (unowned) or allocated at (owned).
    #[serde(default)]
    since: u64,
    /// The cloud no longer has it; kept only until its owner releases it.
    #[serde(default, skip_serializing_if = "is_false")]
    invalid: bool,
    /// An unassign/delete is in flight (not persisted across restarts: reset in `Pool::new`).
    #[serde(default, skip_serializing_if = "is_false")]
    releasing: bool,
}

impl IpState {
    fn new_idle(ip: Ipv4Addr, now: u64) -> IpState {
        IpState {
            ip,
            ip6: None,
            owner: None,
            pod: String::new(),
            since: now,
            invalid: false,
            releasing: false,
        }
    }

    fn is_idle(&self) -> bool {
        self.owner.is_none() && !self.invalid && !self.releasing
    }

    /// Idle and, with dual stack, paired: can be handed out.
    fn is_usable(&self, dual: bool) -> bool {
        self.is_idle() && (!dual || self.ip6.is_some())
    }

    /// Dual stack: idle but still waiting for its IPv6 partner.
    fn wants_partner(&self) -> bool {
        self.owner.is_none() && !self.invalid && !self.releasing && self.ip6.is_none()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct EniState {
    #[serde(flatten)]
    info: EniInfo,
    ips: Vec<IpState>,
    /// Dual stack: IPv6 addresses of the ENI not paired with an IPv4 (yet).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    spare6: Vec<Ipv6Addr>,
    /// The cloud said QuotaExceeded.PrivateIpAddress: assign nothing more until something is unassigned.
    #[serde(default, skip_serializing_if = "is_false")]
    full: bool,
    /// Not attached any more (reconcile); only kept for its owned, invalid IPs.
    #[serde(default, skip_serializing_if = "is_false")]
    gone: bool,
    /// A DeleteEni is in flight.
    #[serde(default, skip_serializing_if = "is_false")]
    deleting: bool,
}

impl EniState {
    fn new(facts: &EniFacts) -> EniState {
        EniState {
            info: EniInfo::of(facts),
            ips: Vec::new(),
            spare6: Vec::new(),
            full: false,
            gone: false,
            deleting: false,
        }
    }

    /// Part of the pool: can serve, take and give back IPs.
    fn live(&self) -> bool {
        !self.gone && !self.deleting
    }

    /// IPs that can be handed out (with dual stack: complete pairs).
    fn idle_count(&self, dual: bool) -> u32 {
        if !self.live() {
            return 0;
        }
        self.ips.iter().filter(|i| i.is_usable(dual)).count() as u32
    }

    fn owned_count(&self) -> u32 {
        self.ips.iter().filter(|i| i.owner.is_some()).count() as u32
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

/// For the CLI (`terway pool`, `terway mapping`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolSnapshot {
    pub enis: Vec<EniSnapshot>,
    pub in_use: u32,
    pub idle: u32,
    pub capacity: u32,
    pub max_enis: u32,
    pub pending_ips: u32,
    pub min_idle: u32,
    pub max_idle: u32,
    pub blocked_vswitches: Vec<BlockedVSwitch>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EniSnapshot {
    pub id: String,
    pub mac: String,
    pub vswitch_id: String,
    pub primary_ip: Ipv4Addr,
    pub ips: Vec<IpSnapshot>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpSnapshot {
    pub ip: Ipv4Addr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip6: Option<Ipv6Addr>,
    pub owner: Option<AttachKey>,
    pub primary: bool,
    pub invalid: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReconcileReport {
    /// Held by pods, but the cloud no longer has them (now marked invalid, never handed out).
    pub lost: Vec<(AttachKey, Ipv4Addr)>,
    /// The cloud has them, the pool did not know: now idle.
    pub adopted: Vec<Ipv4Addr>,
    /// Idle IPs the cloud no longer has: dropped.
    pub removed_idle: Vec<Ipv4Addr>,
    /// Dual stack: IPv6 partners of pods' IPv4s the cloud no longer has (those pairs are lost).
    pub lost6: Vec<Ipv6Addr>,
    /// Dual stack: IPv6 partners of idle IPv4s the cloud no longer has (new ones get assigned).
    pub removed_idle6: Vec<Ipv6Addr>,
}

/// An op the workers are running, with what the pool needs to account for it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Flight {
    Create {
        vswitch: String,
        count: u32,
    },
    /// `count` IPv4s, and with dual stack as many pairs become usable as `usable` says.
    Assign {
        eni: String,
        count: u32,
        usable: u32,
    },
    Unassign {
        eni: String,
        ips: Vec<Ipv4Addr>,
        ips6: Vec<Ipv6Addr>,
    },
    Delete {
        eni: String,
    },
}

impl InFlight for Flight {
    fn eni(&self) -> Option<&str> {
        match self {
            Flight::Create { .. } => None,
            Flight::Assign { eni, .. } | Flight::Unassign { eni, .. } | Flight::Delete { eni } => {
                Some(eni)
            }
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
    /// The coalescing window, the release cool-down (idle above max_idle), when to plan.
    sched: Schedule,
    /// No op of that kind is planned before these times (after a failure).
    retry_create: u64,
    retry_assign: u64,
    retry_release: u64,
    /// EniPerInstanceLimitExceeded: no create before this time.
    eni_limit_until: u64,
    vswitch_free: BTreeMap<String, u64>,
    /// Failures since the last successful create or assign, each one a step.
    backoff: Backoff,
}

impl Pool {
    pub fn new(cfg: PoolConfig, state: PoolState) -> Pool {
        let mut st = state;
        let mut seen = std::collections::BTreeSet::new();
        let mut seen6 = std::collections::BTreeSet::new();
        for eni in &mut st.enis {
            // Ops of a previous process are gone: what they were releasing is idle again
            // (the startup reconcile drops what the cloud did unassign).
            eni.deleting = false;
            for ip in &mut eni.ips {
                ip.releasing = false;
            }
            // A hand-edited or corrupt file must not make an IP appear twice.
            eni.ips.retain(|ip| seen.insert(ip.ip));
            for ip in &mut eni.ips {
                if ip.ip6.is_some_and(|v6| !seen6.insert(v6)) {
                    ip.ip6 = None;
                }
            }
            eni.spare6.retain(|v6| seen6.insert(*v6));
            eni.ips.retain(|ip| !(ip.invalid && ip.owner.is_none()));
        }
        st.enis.retain(|e| !(e.gone && e.ips.is_empty()));
        Pool {
            cfg,
            st,
            flights: Flights::default(),
            sched: Schedule::default(),
            retry_create: 0,
            retry_assign: 0,
            retry_release: 0,
            eni_limit_until: 0,
            vswitch_free: BTreeMap::new(),
            backoff: Backoff::default(),
        }
    }

    /// Reload: new vSwitches / watermarks. Owned IPs and blocks are left as they are.
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

    /// An idle IP for `key` (pod_name = "ns/name", for the sticky rule), or None when nothing is idle.
    /// A key that already holds a valid IP gets the same lease again.
    pub fn allocate(&mut self, key: &AttachKey, pod_name: &str, now: u64) -> Option<Lease> {
        if let Some((e, i)) = self.find_owned(key) {
            let eni = &self.st.enis[e];
            if !eni.ips[i].invalid {
                return Some(eni.info.lease(eni.ips[i].ip, eni.ips[i].ip6));
            }
            // Its address is gone from the cloud: drop it and hand out a real one.
            self.st.enis[e].ips.remove(i);
            self.drop_empty_gone();
        }
        let (e, i) = self
            .pick_sticky(pod_name, now)
            .or_else(|| self.pick_by_policy(now))?;
        let eni = &mut self.st.enis[e];
        let ip = &mut eni.ips[i];
        ip.owner = Some(key.clone());
        ip.pod = pod_name.to_string();
        ip.since = now;
        let lease = eni.info.lease(ip.ip, ip.ip6);
        if self.idle() < self.cfg.min_idle {
            self.sched.wake();
        }
        self.touch(now);
        Some(lease)
    }

    pub fn lease_of(&self, key: &AttachKey) -> Option<Lease> {
        let (e, i) = self.find_owned(key)?;
        let eni = &self.st.enis[e];
        Some(eni.info.lease(eni.ips[i].ip, eni.ips[i].ip6))
    }

    /// Back to idle (idle_since = now). None if the key held nothing.
    pub fn release(&mut self, key: &AttachKey, now: u64) -> Option<Lease> {
        let (e, i) = self.find_owned(key)?;
        let eni = &mut self.st.enis[e];
        let lease = eni.info.lease(eni.ips[i].ip, eni.ips[i].ip6);
        if eni.ips[i].invalid || eni.gone {
            // The cloud no longer has it: nothing to give back to the pool.
            eni.ips.remove(i);
            self.drop_empty_gone();
        } else {
            let ip = &mut eni.ips[i];
            ip.owner = None;
            ip.since = now;
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
            .map(|e| {
                let mut ips: Vec<IpSnapshot> = e
                    .ips
                    .iter()
                    .map(|i| IpSnapshot {
                        ip: i.ip,
                        ip6: i.ip6,
                        owner: i.owner.clone(),
                        primary: i.ip == e.info.primary_ip,
                        invalid: i.invalid,
                    })
                    .collect();
                ips.sort_by_key(|i| i.ip);
                EniSnapshot {
                    id: e.info.id.clone(),
                    mac: e.info.mac.clone(),
                    vswitch_id: e.info.vswitch_id.clone(),
                    primary_ip: e.info.primary_ip,
                    ips,
                }
            })
            .collect();
        enis.sort_by(|a, b| a.id.cmp(&b.id));
        PoolSnapshot {
            enis,
            in_use: self.in_use(),
            idle: self.idle(),
            capacity: self.capacity(),
            max_enis: self.cfg.max_enis,
            pending_ips: self.pending_ips(),
            min_idle: self.cfg.min_idle,
            max_idle: self.cfg.max_idle,
            blocked_vswitches: self.st.blocked.active(now),
        }
    }

    /// IPs that can be handed out now.
    pub fn idle(&self) -> u32 {
        self.st
            .enis
            .iter()
            .map(|e| e.idle_count(self.cfg.dual))
            .sum()
    }

    /// IPs held by pods (including invalid ones a pod still holds).
    pub fn in_use(&self) -> u32 {
        self.st.enis.iter().map(|e| e.owned_count()).sum()
    }

    /// max_enis × ips_per_eni (each secondary ENI's own primary IP serves a pod too).
    pub fn capacity(&self) -> u32 {
        self.cfg.max_enis.saturating_mul(self.cfg.ips_per_eni)
    }

    /// IPs requested by create/assign ops in flight.
    pub fn pending_ips(&self) -> u32 {
        self.flights
            .values()
            .map(|f| match f {
                Flight::Create { count, .. } => *count,
                Flight::Assign { count, usable, .. } => *count.max(usable),
                _ => 0,
            })
            .fold(0u32, |a, b| a.saturating_add(b))
    }

    /// The last cloud failure, until a create or assign succeeds (for logs and pod events).
    pub fn last_failure(&self) -> Option<&CloudFailure> {
        self.backoff.last_failure()
    }

    /// Number of cloud ops handed out by `plan` and not yet applied.
    pub fn ops_in_flight(&self) -> usize {
        self.flights.len()
    }

    fn find_owned(&self, key: &AttachKey) -> Option<(usize, usize)> {
        self.st.enis.iter().enumerate().find_map(|(e, eni)| {
            eni.ips
                .iter()
                .position(|ip| ip.owner.as_ref() == Some(key))
                .map(|i| (e, i))
        })
    }

    fn sticky_for(&self, ip: &IpState, now: u64) -> bool {
        !ip.pod.is_empty() && now.saturating_sub(ip.since) < self.cfg.sticky_ms
    }

    fn pick_sticky(&self, pod_name: &str, now: u64) -> Option<(usize, usize)> {
        if pod_name.is_empty() {
            return None;
        }
        self.st.enis.iter().enumerate().find_map(|(e, eni)| {
            if !eni.live() {
                return None;
            }
            eni.ips
                .iter()
                .position(|ip| {
                    ip.is_usable(self.cfg.dual) && ip.pod == pod_name && self.sticky_for(ip, now)
                })
                .map(|i| (e, i))
        })
    }

    /// An idle IP by the ENI policy: one past its cool-down if there is any, else any.
    fn pick_by_policy(&self, now: u64) -> Option<(usize, usize)> {
        let cooled = |ip: &IpState| now.saturating_sub(ip.since) >= self.cfg.cooldown_ms;
        self.pick_among(now, cooled)
            .or_else(|| self.pick_among(now, |_| true))
    }

    fn pick_among(&self, now: u64, ok: impl Fn(&IpState) -> bool) -> Option<(usize, usize)> {
        let candidates = self
            .st
            .enis
            .iter()
            .enumerate()
            .filter(|(_, eni)| eni.live())
            .map(|(e, eni)| {
                (
                    e,
                    eni.ips
                        .iter()
                        .filter(|ip| ip.is_usable(self.cfg.dual) && ok(ip))
                        .count(),
                )
            })
            .filter(|(_, n)| *n > 0);
        let e = match self.cfg.eni_policy {
            // max_by_key returns the last maximum: compare with the index reversed so that ties
            // go to the first ENI.
            EniPolicy::MostIps => candidates
                .max_by_key(|(e, n)| (*n, std::cmp::Reverse(*e)))
                .map(|(e, _)| e)?,
            EniPolicy::LeastIps => candidates.min_by_key(|(e, n)| (*n, *e)).map(|(e, _)| e)?,
        };
        // Longest idle first, so a just-released IP (stale conntrack/ARP) is reused last; IPs
        // kept for a recently deleted pod (sticky) only when nothing else is left.
        self.st.enis[e]
            .ips
            .iter()
            .enumerate()
            .filter(|(_, ip)| ip.is_usable(self.cfg.dual) && ok(ip))
            .min_by_key(|(_, ip)| (self.sticky_for(ip, now), ip.since, ip.ip))
            .map(|(i, _)| (e, i))
    }

    fn contains_ip(&self, ip: Ipv4Addr) -> bool {
        self.st
            .enis
            .iter()
            .any(|e| e.ips.iter().any(|i| i.ip == ip))
    }

    fn contains_ip6(&self, ip6: Ipv6Addr) -> bool {
        self.st
            .enis
            .iter()
            .any(|e| e.spare6.contains(&ip6) || e.ips.iter().any(|i| i.ip6 == Some(ip6)))
    }

    fn eni_index(&self, id: &str) -> Option<usize> {
        self.st.enis.iter().position(|e| e.info.id == id)
    }

    fn drop_empty_gone(&mut self) {
        self.st.enis.retain(|e| !(e.gone && e.ips.is_empty()));
    }

    /// Track how long idle has been above max_idle without interruption.
    fn touch(&mut self, now: u64) {
        let excess = self.idle() > self.cfg.max_idle;
        self.sched.excess(excess, now);
    }
}
