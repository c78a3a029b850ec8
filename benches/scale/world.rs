//! Virtual time: a heap of events (pod ADD/DEL from the kubelet, calls going out and answers
//! coming back, jobs' sleeps, daemons' deadlines). Each call goes through the node's
//! client-side limiter and the retry policy of `OpenApi::call`, then the region.

use crate::jobs::{Done, Input, Job, Kind, Step};
use crate::node::{Daemon, Out, PodId};
use crate::region::{Answer, Cloud, Req};
use crate::rng::{Latency, Rng};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};
use std::time::Duration;
use terway::cloud::codes;
use terway::cloud::ratelimit::RateLimiter;
use terway::cloud::retry::{Attempts, RetryPolicy};
use terway::daemon::eni_ops::{OP_DEADLINE, RESYNC_DEADLINE, WORKERS};
use terway::daemon::node::CLOUD_RETRY;
use terway::emulate::errors::ApiError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Ev {
    Add(PodId),
    Del(PodId),
    Send(u32),
    Reply(u32),
    Wake(u32),
    Tick(u32),
}

/// Who made a call: a pool operation (or the naive policy's), or the periodic resync.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Src {
    Op,
    Resync,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct Count {
    /// Requests the region accepted (whatever the answer).
    pub ok: u64,
    /// Requests refused with Throttling.User.
    pub throttled: u64,
    /// Calls still throttled at their job's deadline: the job saw the error.
    pub gave_up: u64,
}

#[derive(Debug, Clone)]
pub struct Pod {
    pub node: u32,
    pub phase: usize,
    pub created: u64,
    pub ready: Option<u64>,
    pub deleted: bool,
    /// A rolling update's new pod: the old one is deleted once this one is ready.
    pub replaces: Option<PodId>,
    pub adds: u32,
}

struct Slot {
    node: usize,
    job: Job,
    req: Option<Req>,
    tries: Attempts,
    /// `eni_ops::OP_DEADLINE` (a resync: `RESYNC_DEADLINE`) after the job started: throttled
    /// calls are retried until then.
    deadline: u64,
    reply: Option<Result<Answer, ApiError>>,
}

pub struct Knobs {
    pub api: Latency,
    /// Kubelet: a failed sandbox is retried after its back-off (10 s, jitter up to half).
    pub kubelet_retry_ms: u64,
    /// Grace between a new pod's readiness and the old one's DEL.
    pub grace_ms: (u64, u64),
}

pub struct World<D: Daemon> {
    pub now: u64,
    heap: BinaryHeap<Reverse<(u64, u64, Ev)>>,
    seq: u64,
    pub cloud: Cloud,
    pub nodes: Vec<D>,
    client: Vec<RateLimiter>,
    running: Vec<usize>,
    queued: Vec<VecDeque<Job>>,
    slots: Vec<Option<Slot>>,
    free_slots: Vec<u32>,
    tick_at: Vec<u64>,
    pub pods: Vec<Pod>,
    /// Pods alive and not ready.
    pub unready: usize,
    pub phase: usize,
    pub calls: Vec<BTreeMap<(&'static str, Src), Count>>,
    retry: RetryPolicy,
    knobs: Knobs,
    pub rng: Rng,
}

impl<D: Daemon> World<D> {
    pub fn new(cloud: Cloud, nodes: Vec<D>, knobs: Knobs, seed: u64) -> World<D> {
        let n = nodes.len();
        World {
            now: 0,
            heap: BinaryHeap::new(),
            seq: 0,
            cloud,
            nodes,
            client: (0..n).map(|_| RateLimiter::new(&[])).collect(),
            running: vec![0; n],
            queued: (0..n).map(|_| VecDeque::new()).collect(),
            slots: Vec::new(),
            free_slots: Vec::new(),
            tick_at: vec![u64::MAX; n],
            pods: Vec::new(),
            unready: 0,
            phase: 0,
            calls: vec![BTreeMap::new()],
            // The daemon's policy (`daemon::node::discover`), not the library default.
            retry: CLOUD_RETRY,
            knobs,
            rng: Rng::new(seed ^ 0x3041d),
        }
    }

    fn push(&mut self, at: u64, ev: Ev) {
        self.seq += 1;
        self.heap.push(Reverse((at, self.seq, ev)));
    }

    pub fn next_phase(&mut self) {
        self.phase += 1;
        self.calls.push(BTreeMap::new());
    }

    /// A new pod on `node`, its ADD at `at`.
    pub fn create_pod(&mut self, node: usize, at: u64, replaces: Option<PodId>) -> PodId {
        let id = self.pods.len() as PodId;
        self.pods.push(Pod {
            node: node as u32,
            phase: self.phase,
            created: at,
            ready: None,
            deleted: false,
            replaces,
            adds: 0,
        });
        self.unready += 1;
        self.push(at, Ev::Add(id));
        id
    }

    pub fn delete_pod(&mut self, pod: PodId, at: u64) {
        self.push(at, Ev::Del(pod));
    }

    /// Live pods per node (ready or not).
    pub fn load(&self) -> Vec<u32> {
        let mut l = vec![0; self.nodes.len()];
        for p in self.pods.iter().filter(|p| !p.deleted) {
            l[p.node as usize] += 1;
        }
        l
    }

    /// Runs events until `stop` holds (checked between events), nothing is left to happen, or
    /// time passes `until`.
    pub fn run(&mut self, until: u64, stop: impl Fn(&World<D>) -> bool) {
        while !stop(self) {
            let Some(Reverse((at, _, ev))) = self.heap.peek().copied() else {
                return;
            };
            if at > until {
                self.now = until;
                return;
            }
            self.heap.pop();
            self.now = at;
            self.handle(ev);
        }
    }

    fn handle(&mut self, ev: Ev) {
        let now = self.now;
        match ev {
            Ev::Add(pod) => {
                let p = &mut self.pods[pod as usize];
                if p.deleted || p.ready.is_some() {
                    return;
                }
                p.adds += 1;
                let node = p.node as usize;
                let mut out = Out::default();
                self.nodes[node].add(pod, now, &mut out);
                self.after(node, out);
            }
            Ev::Del(pod) => {
                let p = &mut self.pods[pod as usize];
                if p.deleted {
                    return;
                }
                p.deleted = true;
                if p.ready.is_none() {
                    self.unready -= 1;
                }
                let node = p.node as usize;
                let mut out = Out::default();
                self.nodes[node].del(pod, now, &mut out);
                self.after(node, out);
            }
            Ev::Send(j) => self.send(j),
            Ev::Reply(j) => self.reply(j),
            Ev::Wake(j) => self.step(j, Input::Woke),
            Ev::Tick(node) => {
                let node = node as usize;
                if self.tick_at[node] != now {
                    return;
                }
                self.tick_at[node] = u64::MAX;
                self.after(node, Out::default());
            }
        }
    }

    /// After an event of `node`: its results, then the core's tick, then its next deadline.
    fn after(&mut self, node: usize, mut out: Out) {
        let now = self.now;
        self.nodes[node].tick(now, &mut out);
        for pod in out.ready {
            let p = &mut self.pods[pod as usize];
            if p.deleted || p.ready.is_some() {
                continue;
            }
            p.ready = Some(now);
            self.unready -= 1;
            if let Some(old) = p.replaces {
                let (lo, hi) = self.knobs.grace_ms;
                let at = now + self.rng.between(lo, hi);
                self.push(at, Ev::Del(old));
            }
        }
        for pod in out.failed {
            let base = self.knobs.kubelet_retry_ms;
            let at = now + base + self.rng.below(base / 2 + 1);
            self.push(at, Ev::Add(pod));
        }
        for job in out.jobs {
            self.queued[node].push_back(job);
        }
        self.start_jobs(node);
        if let Some(t) = self.nodes[node].deadline(now) {
            // Never in the past: the daemon's loop would act on it at once, i.e. next event.
            let t = t.max(now + 1);
            if t < self.tick_at[node] {
                self.tick_at[node] = t;
                self.push(t, Ev::Tick(node as u32));
            }
        }
    }

    fn start_jobs(&mut self, node: usize) {
        while self.running[node] < WORKERS {
            let Some(job) = self.queued[node].pop_front() else {
                return;
            };
            self.running[node] += 1;
            let deadline = match job.kind {
                Kind::Resync { .. } => RESYNC_DEADLINE,
                Kind::Op(_) => OP_DEADLINE,
            };
            let slot = Slot {
                node,
                job,
                req: None,
                tries: Attempts::default(),
                deadline: self.now + deadline.as_millis() as u64,
                reply: None,
            };
            let j = match self.free_slots.pop() {
                Some(j) => {
                    self.slots[j as usize] = Some(slot);
                    j
                }
                None => {
                    self.slots.push(Some(slot));
                    (self.slots.len() - 1) as u32
                }
            };
            self.step(j, Input::Start);
        }
    }

    fn slot(&mut self, j: u32) -> &mut Slot {
        self.slots[j as usize]
            .as_mut()
            .unwrap_or_else(|| panic!("job {j} is not running"))
    }

    fn step(&mut self, j: u32, input: Input) {
        let now = self.now;
        let node = self.slot(j).node;
        let step = {
            let slot = self.slots[j as usize]
                .as_mut()
                .unwrap_or_else(|| unreachable!());
            slot.job.resume(input, &self.cloud, node, now)
        };
        match step {
            Step::Call(req) => {
                let s = self.slot(j);
                s.req = Some(req);
                s.tries = Attempts::default();
                self.queue_attempt(j, now);
            }
            Step::Sleep(ms) => self.push(now + ms, Ev::Wake(j)),
            Step::Finish(done) => self.finish(j, done),
        }
    }

    /// The client-side limiter of the node, then out it goes.
    fn queue_attempt(&mut self, j: u32, at: u64) {
        let s = self.slot(j);
        let node = s.node;
        let action = s.req.as_ref().map_or("", Req::action);
        let wait = self.client[node].reserve_at(action, Duration::from_millis(at));
        self.push(at + wait.as_millis() as u64, Ev::Send(j));
    }

    fn src(job: &Job) -> Src {
        match job.kind {
            Kind::Resync { .. } => Src::Resync,
            Kind::Op(_) => Src::Op,
        }
    }

    fn send(&mut self, j: u32) {
        let now = self.now;
        let (node, req, src) = {
            let s = self.slot(j);
            let req = s
                .req
                .clone()
                .unwrap_or_else(|| panic!("job {j} sends nothing"));
            (s.node, req, Self::src(&s.job))
        };
        let r = self.cloud.call(node, &req, now);
        let phase = self.phase;
        let c = self.calls[phase].entry((req.action(), src)).or_default();
        match &r {
            Err(e) if codes::is_throttling(&e.code) => {
                c.throttled += 1;
                self.nodes[node].throttled();
            }
            _ => c.ok += 1,
        }
        let lat = self.knobs.api.draw(&mut self.rng);
        self.slot(j).reply = Some(r);
        self.push(now + lat, Ev::Reply(j));
    }

    fn reply(&mut self, j: u32) {
        let now = self.now;
        let unit = self.rng.unit();
        let retry = self.retry;
        let phase = self.phase;
        let s = self.slot(j);
        let r = s
            .reply
            .take()
            .unwrap_or_else(|| panic!("job {j}: no answer"));
        if let Err(e) = &r {
            let throttled = codes::is_throttling(&e.code);
            let left = Duration::from_millis(s.deadline.saturating_sub(now));
            let next = retry.next(
                &mut s.tries,
                throttled,
                codes::is_retryable(&e.code),
                left,
                unit,
            );
            if let Some(delay) = next {
                self.queue_attempt(j, now + delay.as_millis() as u64);
                return;
            }
            if codes::is_throttling(&e.code) {
                let action = s.req.as_ref().map_or("", Req::action);
                let src = Self::src(&s.job);
                self.calls[phase].entry((action, src)).or_default().gave_up += 1;
            }
        }
        self.step(j, Input::Reply(r));
    }

    fn finish(&mut self, j: u32, done: Done) {
        let Some(slot) = self.slots[j as usize].take() else {
            return;
        };
        self.free_slots.push(j);
        let node = slot.node;
        self.running[node] -= 1;
        let mut out = Out::default();
        self.nodes[node].done(done, self.now, &mut out);
        self.after(node, out);
    }

    pub fn idle(&self) -> u64 {
        self.nodes.iter().map(|n| u64::from(n.idle())).sum()
    }
}
