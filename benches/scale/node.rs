//! One node's daemon: the core's waiters and the shared-ENI source around the real pool
//! (`Core` + `SharedEniSource` + `EniCommon` of `src/daemon`, minus sockets and files), and the
//! naive baseline that makes one call per pod.

use crate::jobs::{Done, Job, Kind};
use std::collections::{BTreeMap, VecDeque};
use std::net::Ipv4Addr;
use terway::daemon::core::WAIT_TIMEOUT_MS;
use terway::daemon::eni_source::{ResyncSchedule, ResyncStart, VSwitchRefresh, xorshift};
use terway::daemon::waiters::{Waiter, Waiters};
use terway::model::{AttachKey, PodRef};
use terway::pool::shared_eni::{CloudOp, CloudOutcome, Pool, PoolConfig, PoolState};

pub type PodId = u32;

/// What a daemon hands back to the world after an event.
#[derive(Default)]
pub struct Out {
    pub ready: Vec<PodId>,
    /// ADDs that failed: the kubelet tries again later.
    pub failed: Vec<PodId>,
    pub jobs: Vec<Job>,
}

pub trait Daemon {
    fn add(&mut self, pod: PodId, now: u64, out: &mut Out);
    fn del(&mut self, pod: PodId, now: u64, out: &mut Out);
    fn done(&mut self, done: Done, now: u64, out: &mut Out);
    /// After every event and when the deadline passes.
    fn tick(&mut self, now: u64, out: &mut Out);
    fn deadline(&self, now: u64) -> Option<u64>;
    /// Addresses held and not in use.
    fn idle(&self) -> u32;
    /// One of the node's calls was refused by throttling (the client's count).
    fn throttled(&mut self) {}
}

pub fn key(pod: PodId) -> AttachKey {
    AttachKey::new("terway", &format!("c{pod:08}"), "eth0")
}

fn pod_ref(pod: PodId) -> PodRef {
    PodRef {
        namespace: "default".into(),
        name: format!("p{pod}"),
        uid: String::new(),
    }
}

/// The daemon with our pool.
pub struct PoolNode {
    pool: Pool,
    waiters: Waiters<PodId>,
    /// `EniCommon`: operations out, the resync schedule, the pool's random numbers.
    outstanding: usize,
    observing: bool,
    resync: ResyncSchedule,
    /// The client's throttled attempts so far.
    throttled: u64,
    random: u64,
    vswitch_refresh: VSwitchRefresh,
}

impl PoolNode {
    /// `resync_every_ms` 0: no periodic resync.
    pub fn new(cfg: PoolConfig, resync_every_ms: u64, seed: u64) -> PoolNode {
        let random = seed | 1;
        PoolNode {
            pool: Pool::new(cfg, PoolState::default()),
            waiters: Waiters::default(),
            outstanding: 0,
            observing: false,
            resync: ResyncSchedule::new(resync_every_ms, 0, random),
            throttled: 0,
            random,
            vswitch_refresh: VSwitchRefresh::asked(0),
        }
    }

    fn next_random(&mut self) -> u64 {
        xorshift(&mut self.random)
    }

    fn waiter(pod: PodId, now: u64) -> Waiter<PodId> {
        Waiter {
            key: key(pod),
            pod: pod_ref(pod),
            netns: String::new(),
            reply: pod,
            since: now,
            deadline: now + WAIT_TIMEOUT_MS,
        }
    }

    fn take(&mut self, pod: PodId, now: u64) -> bool {
        self.pool
            .allocate(&key(pod), &pod_ref(pod).to_string(), now)
            .is_some()
    }

    /// `EniCommon::start_resync`.
    fn start_resync(&mut self, now: u64) -> bool {
        if self.outstanding > 0 {
            return false;
        }
        let (throttled, random) = (self.throttled, &mut self.random);
        if self
            .resync
            .try_start(now, false, throttled, || xorshift(random))
            != ResyncStart::Started
        {
            return false;
        }
        self.outstanding += 1;
        self.observing = true;
        true
    }
}

impl Daemon for PoolNode {
    fn add(&mut self, pod: PodId, now: u64, out: &mut Out) {
        // First come, first served: a new pod does not overtake waiting ones.
        if self.waiters.is_empty() && self.take(pod, now) {
            out.ready.push(pod);
            return;
        }
        if let Some(old) = self.waiters.park(Self::waiter(pod, now)) {
            // A retried ADD of a pod still waiting: the first call is told to try again.
            out.failed.push(old.reply);
        }
    }

    fn del(&mut self, pod: PodId, now: u64, _out: &mut Out) {
        self.waiters.cancel(&key(pod));
        self.pool.release(&key(pod), now);
    }

    fn done(&mut self, done: Done, now: u64, _out: &mut Out) {
        self.outstanding = self.outstanding.saturating_sub(1);
        match done {
            Done::Op(outcome) => self.pool.apply(outcome, now),
            Done::Observed(result) => {
                self.observing = false;
                let random = self.next_random();
                // `EniCommon::resync_done`.
                self.resync
                    .finished(result.is_ok(), self.throttled, now, random);
                if let Ok(facts) = result {
                    self.pool.reconcile(&facts, now);
                }
            }
        }
    }

    fn tick(&mut self, now: u64, out: &mut Out) {
        // SharedEniSource::plan
        if !self.observing {
            let random = self.next_random();
            let ops = self.pool.plan(now, self.waiters.len() as u32, random);
            self.outstanding += ops.len();
            out.jobs
                .extend(ops.into_iter().map(|op| Job::new(Kind::Op(op))));
            if self.start_resync(now) {
                let policy = self.pool.config().vswitch_policy;
                let vswitches = self.vswitch_refresh.due(policy, now);
                out.jobs.push(Job::new(Kind::Resync { vswitches }));
            }
        }
        // Core::serve_waiting
        while let Some(w) = self.waiters.pop_front() {
            if self.take(w.reply, now) {
                out.ready.push(w.reply);
            } else {
                self.waiters.push_front(w);
                break;
            }
        }
        if self.waiters.is_empty() {
            return;
        }
        if self
            .pool
            .unservable(now, self.waiters.len() as u32)
            .is_some()
        {
            out.failed
                .extend(self.waiters.drain().into_iter().map(|w| w.reply));
            return;
        }
        out.failed
            .extend(self.waiters.expire(now).into_iter().map(|w| w.reply));
    }

    fn deadline(&self, now: u64) -> Option<u64> {
        let pool = self.pool.next_deadline(now).filter(|_| !self.observing);
        let resync = (self.outstanding == 0).then_some(self.resync.next_at());
        [pool, resync, self.waiters.next_deadline()]
            .into_iter()
            .flatten()
            .min()
    }

    fn idle(&self) -> u32 {
        self.pool.idle()
    }

    fn throttled(&mut self) {
        self.throttled += 1;
    }
}

/// The baseline: no pool. An ADD assigns one address (or creates an ENI whose primary address
/// serves the pod when no ENI has room); a DEL unassigns it.
pub struct NaiveNode {
    vswitch: String,
    max_enis: u32,
    per_eni: u32,
    /// ENI id → (slots not used nor being assigned, a free primary address).
    enis: BTreeMap<String, (u32, bool)>,
    creating: u32,
    /// Pods waiting for an ENI being created.
    queued: VecDeque<PodId>,
    pods: BTreeMap<PodId, (String, Ipv4Addr, bool)>,
    /// Op → the pod it is for and what it does.
    ops: BTreeMap<u64, (PodId, NaiveOp)>,
    /// Pods deleted while their address was being assigned.
    gone: Vec<PodId>,
    next_op: u64,
}

impl NaiveNode {
    pub fn new(vswitch: &str, max_enis: u32, per_eni: u32) -> NaiveNode {
        NaiveNode {
            vswitch: vswitch.to_string(),
            max_enis,
            per_eni,
            enis: BTreeMap::new(),
            creating: 0,
            queued: VecDeque::new(),
            pods: BTreeMap::new(),
            ops: BTreeMap::new(),
            gone: Vec::new(),
            next_op: 0,
        }
    }

    fn op(&mut self, pod: PodId, what: NaiveOp) -> u64 {
        self.next_op += 1;
        self.ops.insert(self.next_op, (pod, what));
        self.next_op
    }

    fn pending(&self, pod: PodId) -> bool {
        self.ops
            .values()
            .any(|(p, w)| *p == pod && !matches!(w, NaiveOp::Unassign(..)))
    }

    fn unassign(&mut self, pod: PodId, eni_id: String, ip: Ipv4Addr, out: &mut Out) {
        let op = self.op(pod, NaiveOp::Unassign(eni_id.clone(), ip));
        out.jobs.push(Job::new(Kind::Op(CloudOp::UnassignIps {
            op,
            eni_id,
            ips: vec![ip],
            ips6: Vec::new(),
        })));
    }

    fn assign(&mut self, pod: PodId, out: &mut Out) -> bool {
        let Some(eni) = self
            .enis
            .iter()
            .find(|(_, (slots, _))| *slots > 0)
            .map(|(id, _)| id.clone())
        else {
            return false;
        };
        if let Some(e) = self.enis.get_mut(&eni) {
            e.0 -= 1;
        }
        let op = self.op(pod, NaiveOp::Assign(eni.clone()));
        out.jobs.push(Job::new(Kind::Op(CloudOp::AssignIps {
            op,
            eni_id: eni,
            count: 1,
            ipv6_count: 0,
        })));
        true
    }
}

impl Daemon for NaiveNode {
    fn add(&mut self, pod: PodId, _now: u64, out: &mut Out) {
        if self.pods.contains_key(&pod) {
            out.ready.push(pod);
            return;
        }
        if self.pending(pod) || self.queued.contains(&pod) {
            return;
        }
        self.gone.retain(|p| *p != pod);
        if let Some((id, e)) = self.enis.iter_mut().find(|(_, e)| e.1) {
            e.1 = false;
            let (id, ip) = (id.clone(), Ipv4Addr::UNSPECIFIED);
            self.pods.insert(pod, (id, ip, true));
            out.ready.push(pod);
            return;
        }
        if self.assign(pod, out) {
            return;
        }
        // Pods already queued fill the ENIs being created (each has per_eni slots).
        let room = self.creating * self.per_eni;
        if (self.queued.len() as u32) < room.saturating_sub(self.creating) {
            self.queued.push_back(pod);
            return;
        }
        if self.enis.len() as u32 + self.creating >= self.max_enis {
            out.failed.push(pod);
            return;
        }
        self.creating += 1;
        let op = self.op(pod, NaiveOp::Create);
        out.jobs.push(Job::new(Kind::Op(CloudOp::CreateEni {
            op,
            vswitch_id: self.vswitch.clone(),
            secondary_count: 0,
            ipv6_count: 0,
        })));
    }

    fn del(&mut self, pod: PodId, _now: u64, out: &mut Out) {
        self.queued.retain(|p| *p != pod);
        match self.pods.remove(&pod) {
            Some((eni, _, true)) => {
                if let Some(e) = self.enis.get_mut(&eni) {
                    e.1 = true;
                }
            }
            Some((eni, ip, false)) => self.unassign(pod, eni, ip, out),
            None if self.pending(pod) => self.gone.push(pod),
            None => {}
        }
    }

    fn done(&mut self, done: Done, _now: u64, out: &mut Out) {
        let Done::Op(outcome) = done else { return };
        let Some((pod, what)) = self.ops.remove(&outcome_op(&outcome)) else {
            return;
        };
        let gone = self.gone.contains(&pod);
        match outcome {
            CloudOutcome::EniCreated { eni, .. } => {
                self.creating -= 1;
                let slots = self
                    .per_eni
                    .saturating_sub(1 + eni.secondary_ips.len() as u32);
                self.enis.insert(eni.id.clone(), (slots, gone));
                if gone {
                    self.gone.retain(|p| *p != pod);
                } else {
                    self.pods.insert(pod, (eni.id, eni.primary_ip, true));
                    out.ready.push(pod);
                }
                while let Some(q) = self.queued.pop_front() {
                    if !self.assign(q, out) {
                        self.queued.push_front(q);
                        break;
                    }
                }
                if self.creating == 0 {
                    // No room and nothing coming: their ADDs fail, the kubelet asks again.
                    out.failed.extend(self.queued.drain(..));
                }
            }
            CloudOutcome::IpsAssigned { eni_id, ips, .. } => match ips.first() {
                Some(ip) if gone => {
                    self.gone.retain(|p| *p != pod);
                    self.unassign(pod, eni_id, *ip, out);
                }
                Some(ip) => {
                    self.pods.insert(pod, (eni_id, *ip, false));
                    out.ready.push(pod);
                }
                None => out.failed.push(pod),
            },
            CloudOutcome::IpsUnassigned { eni_id, .. } => {
                if let Some(e) = self.enis.get_mut(&eni_id) {
                    e.0 += 1;
                }
            }
            CloudOutcome::EniDeleted { .. } => {}
            CloudOutcome::Failed { .. } => match what {
                NaiveOp::Create => {
                    // The pods waiting for it try again too.
                    self.creating -= 1;
                    self.gone.retain(|p| *p != pod);
                    out.failed.push(pod);
                    out.failed.extend(self.queued.drain(..));
                }
                NaiveOp::Assign(eni) => {
                    if let Some(e) = self.enis.get_mut(&eni) {
                        e.0 += 1;
                    }
                    self.gone.retain(|p| *p != pod);
                    out.failed.push(pod);
                }
                // The address must not stay assigned to nobody: try again.
                NaiveOp::Unassign(eni, ip) => self.unassign(pod, eni, ip, out),
            },
        }
    }

    fn tick(&mut self, _now: u64, _out: &mut Out) {}

    fn deadline(&self, _now: u64) -> Option<u64> {
        None
    }

    fn idle(&self) -> u32 {
        self.enis.values().filter(|e| e.1).count() as u32
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum NaiveOp {
    Create,
    Assign(String),
    Unassign(String, Ipv4Addr),
}

pub fn outcome_op(o: &CloudOutcome) -> u64 {
    match o {
        CloudOutcome::EniCreated { op, .. }
        | CloudOutcome::IpsAssigned { op, .. }
        | CloudOutcome::IpsUnassigned { op, .. }
        | CloudOutcome::EniDeleted { op, .. }
        | CloudOutcome::Failed { op, .. } => *op,
    }
}
