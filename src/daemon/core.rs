//! The daemon core, the same for every mode: the allocation table keyed by attachment, pods
//! waiting for an address, grants (what a failing ADD may undo), GC candidates and releases.
//! Requests and job results go in; replies come out through an [`Outbox`] that the loop sends
//! only after the state is saved, and cloud jobs come out of [`Core::tick`]. No I/O here but
//! what the source does.

use super::failures;
use super::grants::{Grants, refused_rollback};
use super::server::Responder;
use super::source::{AddressSource, Allocations, Current, Take};
use super::sweep::gc_candidates;
use super::waiters::{Waiter, Waiters};
use super::workers::Job;
use crate::config::Config;
use crate::metrics::{Metrics, outcome, reason};
use crate::model::{AttachKey, Datapath, PodAddress, PodRef};
use crate::rpc::{Allocation, Reply, Request, Response, StatusView};
use crate::store::{State, StoredAllocation};
use crate::{Error, Kind, Result};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

/// How long an ADD may wait for its source to grow before it fails with code 11.
pub const WAIT_TIMEOUT_MS: u64 = 60_000;

/// Replies produced while handling a batch; sent only after the state is saved.
#[derive(Default)]
pub struct Outbox {
    pub replies: Vec<(Responder, Response)>,
    /// Datapaths the daemon removes itself (DEL of a veth pod), each reported back through
    /// [`Core::torn_down`].
    pub teardowns: Vec<Allocation>,
    dirty: bool,
}

impl Outbox {
    /// Queues a reply. `mutating` replies depend on state that must reach the disk first.
    pub fn reply(&mut self, tx: Responder, resp: Response, mutating: bool) {
        self.dirty |= mutating;
        self.replies.push((tx, resp));
    }

    /// The state changed without a reply depending on it (a cloud result, a reload, a sweep).
    pub fn touch(&mut self) {
        self.dirty = true;
    }

    pub fn dirty(&self) -> bool {
        self.dirty
    }
}

pub struct Core<S: AddressSource> {
    source: S,
    allocs: Allocations,
    waiters: Waiters<Responder>,
    grants: Grants,
    /// Allocations whose datapath the daemon is removing: their address is not given back (so
    /// no other pod can get it) until the removal has finished.
    tearing_down: BTreeSet<AttachKey>,
    /// ADDs into a network namespace whose previous pod's veth is still being removed (its
    /// `eth0` may still be there): served once that removal has finished.
    after_teardown: Vec<Waiter<Responder>>,
    grace_secs: u64,
    metrics: Arc<Metrics>,
}

fn view(a: &StoredAllocation, address: PodAddress, datapath: Datapath) -> Allocation {
    Allocation {
        key: a.key.clone(),
        pod: a.pod.clone(),
        address,
        datapath,
        grant: None,
        problem: None,
    }
}

impl<S: AddressSource> Core<S> {
    /// `allocations`: what the state file holds that the source accepted at start.
    pub fn new(source: S, allocations: Vec<StoredAllocation>, grace_secs: u64, now: u64) -> Self {
        Core {
            source,
            allocs: allocations
                .into_iter()
                .map(|a| (a.key.clone(), a))
                .collect(),
            waiters: Waiters::default(),
            grants: Grants::new(now),
            tearing_down: BTreeSet::new(),
            after_teardown: Vec::new(),
            grace_secs,
            metrics: crate::metrics::global().clone(),
        }
    }

    /// Records waits and failures into `metrics` instead of the process's registry.
    pub fn set_metrics(&mut self, metrics: Arc<Metrics>) {
        self.metrics = metrics;
    }

    fn waited(&self, outcome: &str, w: &Waiter<Responder>, now: u64) {
        self.metrics
            .waited(outcome, Duration::from_millis(now.saturating_sub(w.since)));
    }

    pub fn source(&self) -> &S {
        &self.source
    }

    pub fn allocations(&self) -> &Allocations {
        &self.allocs
    }

    pub fn handle(&mut self, req: Request, reply: Responder, now: u64, out: &mut Outbox) {
        match req {
            Request::Alloc { key, pod, netns } => self.alloc(key, pod, netns, reply, now, out),
            Request::Release { key } => {
                self.cancel_waiter(&key, now);
                let released = self.release(&key, now);
                let changed = released.is_some();
                out.reply(reply, Ok(Reply::Released(released)), changed);
            }
            Request::Rollback { key, token } => {
                let released = if self.grants.may_roll_back(&key, token) {
                    self.release(&key, now)
                } else {
                    log::info!("{}", refused_rollback(&key));
                    None
                };
                let changed = released.is_some();
                out.reply(reply, Ok(Reply::Released(released)), changed);
            }
            Request::Delete { key } => {
                self.cancel_waiter(&key, now);
                match self.allocs.get(&key) {
                    Some(a)
                        if matches!(a.datapath, Datapath::Veth | Datapath::VethPolicy { .. }) =>
                    {
                        let v = view(a, a.address.clone(), a.datapath.clone());
                        // A DEL repeated while the first one's removal runs changes nothing.
                        if self.tearing_down.insert(key) {
                            out.teardowns.push(v.clone());
                        }
                        out.reply(reply, Ok(Reply::TearingDown(v)), false);
                    }
                    _ => {
                        let found = self.get(&key);
                        out.reply(reply, Ok(Reply::Found(found)), false);
                    }
                }
            }
            Request::Get { key } => {
                let found = self.get(&key);
                out.reply(reply, Ok(Reply::Found(found)), false);
            }
            Request::Gc { network, valid } => {
                let stale = gc_candidates(
                    self.allocs
                        .values()
                        .filter(|a| !self.tearing_down.contains(&a.key)),
                    &network,
                    &valid,
                    now / 1000,
                    self.grace_secs,
                );
                // As recorded: GC removes what was wired, whatever the source says of it now.
                let found = stale
                    .iter()
                    .filter_map(|k| self.allocs.get(k))
                    .map(|a| view(a, a.address.clone(), a.datapath.clone()))
                    .collect();
                out.reply(reply, Ok(Reply::Collected(found)), false);
            }
            Request::Status => {
                let status = StatusView {
                    mode: self.source.mode().to_string(),
                    free: self.source.free(),
                };
                out.reply(reply, Ok(Reply::Status(status)), false);
            }
            Request::Mapping => {
                let rows = self.source.mapping(now, &self.allocs);
                out.reply(reply, Ok(Reply::Mapping(rows)), false);
            }
            Request::Pool => {
                let v = self.source.pool_view(now, &self.allocs);
                out.reply(reply, Ok(Reply::Pool(Box::new(v))), false);
            }
        }
    }

    /// An allocation as `Get` shows it: as recorded when it is not usable (DEL must still tear
    /// down what was wired), with the problem named.
    fn get(&self, key: &AttachKey) -> Option<Allocation> {
        self.allocs.get(key).map(|a| {
            let mut v = match self.source.current(a) {
                Current::Valid(address, datapath) => view(a, address, datapath),
                Current::NotReady(e) => Allocation {
                    problem: Some(e.msg),
                    ..view(a, a.address.clone(), a.datapath.clone())
                },
                Current::Lost => Allocation {
                    problem: Some(format!(
                        "the cloud no longer has {} of this attachment: the pod needs to be re-created",
                        a.address
                    )),
                    ..view(a, a.address.clone(), a.datapath.clone())
                },
            };
            if self.tearing_down.contains(key) {
                v.problem = Some("its DEL is removing the datapath".into());
            }
            v
        })
    }

    fn cancel_waiter(&mut self, key: &AttachKey, now: u64) {
        if let Some(i) = self.after_teardown.iter().position(|w| &w.key == key) {
            let w = self.after_teardown.remove(i);
            let _ = w.reply.send(Err(Error::new(
                Kind::TryAgain,
                "the pod was deleted while waiting",
            )));
        }
        if let Some(w) = self.waiters.cancel(key) {
            self.waited(outcome::CANCELLED, &w, now);
            let _ = w.reply.send(Err(Error::new(
                Kind::TryAgain,
                "the pod was deleted while waiting",
            )));
        }
    }

    /// The daemon finished removing `key`'s datapath (see `Request::Delete`): the address goes
    /// back now. When the removal failed the allocation stays as it is, address held, and GC
    /// or the sweep retry (as when the plugin's own teardown fails).
    pub fn torn_down(
        &mut self,
        key: &AttachKey,
        result: std::result::Result<(), String>,
        now: u64,
        out: &mut Outbox,
    ) {
        if !self.tearing_down.remove(key) {
            return;
        }
        match result {
            Ok(()) => {
                if self.release(key, now).is_some() {
                    out.touch();
                }
            }
            Err(e) => log::warn!(
                "DEL {key}: removing its datapath failed, keeping its address until GC retries: {e}"
            ),
        }
        // ADDs held back for this namespace go ahead (a failed removal leaves them to fail
        // in setup, naming what is still there).
        let held = std::mem::take(&mut self.after_teardown);
        for w in held {
            self.alloc(w.key, w.pod, w.netns, w.reply, now, out);
        }
    }

    /// Whether the datapath of a pod in network namespace `netns` is still being removed.
    fn netns_in_teardown(&self, netns: &str) -> bool {
        !netns.is_empty()
            && self
                .tearing_down
                .iter()
                .any(|k| self.allocs.get(k).is_some_and(|a| a.netns == netns))
    }

    /// Allocations whose datapath the daemon is removing.
    pub fn tearing_down(&self) -> &BTreeSet<AttachKey> {
        &self.tearing_down
    }

    fn alloc(
        &mut self,
        key: AttachKey,
        pod: PodRef,
        netns: String,
        reply: Responder,
        now: u64,
        out: &mut Outbox,
    ) {
        let w = Waiter {
            key,
            pod,
            netns,
            reply,
            since: now,
            deadline: now + WAIT_TIMEOUT_MS,
        };
        if self.tearing_down.contains(&w.key) || self.netns_in_teardown(&w.netns) {
            // Its own DEL, or the previous pod's in this namespace, is still removing a veth
            // (of the same name, or the eth0 still in the namespace): wiring now would race
            // that removal. Held back for the milliseconds it takes.
            self.cancel_waiter(&w.key, now);
            self.after_teardown.push(w);
            return;
        }
        if let Some(a) = self.allocs.get(&w.key) {
            match self.source.current(a) {
                Current::Valid(address, datapath) => {
                    // The runtime retried ADD: same attachment, same address.
                    let mut v = view(a, address, datapath);
                    v.grant = Some(self.grants.grant(&w.key, false));
                    out.reply(w.reply, Ok(Reply::Allocated(v)), false);
                    return;
                }
                Current::NotReady(e) => {
                    out.reply(w.reply, Err(e), false);
                    return;
                }
                Current::Lost => {
                    // The cloud lost its address: the pod gets a real one.
                    self.release(&w.key, now);
                    out.touch();
                }
            }
        }
        // First come, first served: a new pod does not overtake waiting ones.
        if !self.waiters.is_empty() {
            self.park(w, now);
            return;
        }
        if let Some(w) = self.try_serve(w, false, now, out) {
            self.park(w, now);
        }
    }

    fn park(&mut self, w: Waiter<Responder>, now: u64) {
        if let Some(old) = self.waiters.park(w) {
            self.waited(outcome::CANCELLED, &old, now);
            let _ = old.reply.send(Err(Error::new(
                Kind::TryAgain,
                "superseded by a retried ADD",
            )));
        }
    }

    /// Serves `w` if the source can; gives it back when the source says later. `parked`: it
    /// waited in the queue (its wait is recorded when it ends).
    fn try_serve(
        &mut self,
        w: Waiter<Responder>,
        parked: bool,
        now: u64,
        out: &mut Outbox,
    ) -> Option<Waiter<Responder>> {
        match self.source.take(&w.key, &w.pod, now) {
            Take::Ready(address, datapath) => {
                if parked {
                    self.waited(outcome::SERVED, &w, now);
                }
                let a = StoredAllocation {
                    key: w.key.clone(),
                    pod: w.pod,
                    netns: w.netns,
                    address,
                    datapath,
                    created_unix: now / 1000,
                };
                let mut v = view(&a, a.address.clone(), a.datapath.clone());
                v.grant = Some(self.grants.grant(&w.key, true));
                self.allocs.insert(w.key, a);
                out.reply(w.reply, Ok(Reply::Allocated(v)), true);
                None
            }
            Take::Fail(e) if e.kind == Kind::Exhausted && !self.tearing_down.is_empty() => {
                // Nothing free, but a DEL's teardown is about to free an address (a full node
                // replacing a pod): asked again once a removal is done.
                self.after_teardown.push(w);
                None
            }
            Take::Fail(e) => {
                self.metrics
                    .failed_allocation(failures::reason(e.kind, &e.msg));
                if parked {
                    self.waited(outcome::FAILED, &w, now);
                }
                out.reply(w.reply, Err(e), false);
                None
            }
            Take::Later => Some(w),
        }
    }

    /// Removes `key`'s allocation and gives its address back (DEL, rollback, GC, the sweep).
    /// Never while its datapath is being removed: [`Core::torn_down`] releases it after.
    pub fn release(&mut self, key: &AttachKey, now: u64) -> Option<Allocation> {
        if self.tearing_down.contains(key) {
            return None;
        }
        self.grants.forget(key);
        let a = self.allocs.remove(key)?;
        self.source.give_back(&a, now);
        Some(view(&a, a.address.clone(), a.datapath.clone()))
    }

    pub fn apply(&mut self, done: S::Done, now: u64, out: &mut Outbox) {
        self.source.apply(done, now);
        out.touch();
    }

    /// After every batch and when a deadline passes: the source plans cloud work, then waiting
    /// pods are served in order, failed when the source cannot serve them at all, or expired.
    pub fn tick(&mut self, now: u64, out: &mut Outbox) -> Vec<Job<S::Done>> {
        let jobs = self.source.plan(now, self.waiters.len() as u32);
        self.serve_waiting(now, out);
        self.metrics.pods_waiting.set(self.waiters.len() as i64);
        jobs
    }

    fn serve_waiting(&mut self, now: u64, out: &mut Outbox) {
        while let Some(w) = self.waiters.pop_front() {
            if let Some(w) = self.try_serve(w, true, now, out) {
                self.waiters.push_front(w);
                break;
            }
        }
        if self.waiters.is_empty() {
            return;
        }
        if let Some(why) = self.source.unservable(now, self.waiters.len() as u32) {
            log::error!("failing {} waiting pod(s): {why}", self.waiters.len());
            let counted = failures::reason(Kind::TryAgain, &why);
            for w in self.waiters.drain() {
                self.metrics.failed_allocation(counted);
                self.waited(outcome::FAILED, &w, now);
                let e = Error::new(
                    Kind::TryAgain,
                    format!("no address for pod {}: {why}", w.pod),
                );
                out.reply(w.reply, Err(e), false);
            }
            return;
        }
        for w in self.waiters.expire(now) {
            self.metrics.failed_allocation(reason::TIMEOUT);
            self.waited(outcome::EXPIRED, &w, now);
            let e = Error::new(
                Kind::TryAgain,
                format!(
                    "no address for pod {} after {} s: {}",
                    w.pod,
                    WAIT_TIMEOUT_MS / 1000,
                    self.source.waiting_detail()
                ),
            );
            out.reply(w.reply, Err(e), false);
        }
    }

    pub fn next_deadline(&self, now: u64) -> Option<u64> {
        [self.source.next_deadline(now), self.waiters.next_deadline()]
            .into_iter()
            .flatten()
            .min()
    }

    pub fn write_state(&self, state: &mut State) {
        state.allocations = self.allocs.values().cloned().collect();
        self.source.write_state(state);
    }

    pub fn reload(&mut self, config: &Config) -> Result<()> {
        self.source.reload(config)?;
        self.grace_secs = config.orphan_grace_period.as_secs();
        Ok(())
    }
}

#[cfg(test)]
#[path = "core_tests.rs"]
mod tests;
