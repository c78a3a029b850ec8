//! Shared ENI mode (ENIMultiIP): pods get secondary IPs of ENIs the daemon creates, attaches and
//! fills through the OpenAPI. The pure pool decides; cloud workers do the slow calls; this file
//! glues them to the event loop: waiting pods, replies, periodic resync.

use super::eni_cloud::{CloudCtx, Job, NodeFacts, spawn_workers};
use super::grants::{Grants, refused_rollback};
use super::sweep::gc_candidates;
use super::{Backend, Msg, Outbox};
use crate::config::Config;
use crate::pool::eni::{CloudOutcome, EniFacts, Lease, Pool, PoolConfig, PoolState};
use crate::rpc::{
    Allocation, AttachKey, Datapath, MappingRow, PodRef, PoolView, Reply, Request, Response,
    StatusView,
};
use crate::store::{EniPoolState, State, StoredAllocation};
use crate::{Error, Kind, Result};
use std::collections::{BTreeMap, VecDeque};
use std::net::Ipv4Addr;
use std::sync::mpsc::Sender;

/// What cloud workers report back to the loop.
pub enum CloudDone {
    /// A pool operation finished; `table` is the route table prepared for a new ENI.
    Op {
        outcome: CloudOutcome,
        table: Option<(String, u32)>,
    },
    /// A resync: what the cloud says, or why it failed.
    Observed(std::result::Result<Observation, String>),
}

pub struct Observation {
    /// Our ENIs attached to this instance, each with its prepared route table.
    pub enis: Vec<(EniFacts, u32)>,
    /// Free addresses per vSwitch (for the `most` selection policy).
    pub vswitch_free: Vec<(String, u64)>,
}

/// How long an ADD may wait for the pool to grow before it fails with code 11.
const WAIT_TIMEOUT_MS: u64 = 60_000;
const DEFAULT_RESYNC_MS: u64 = 120_000;

struct Waiter {
    key: AttachKey,
    network: String,
    pod: PodRef,
    netns: String,
    reply: Sender<Response>,
    deadline: u64,
}

pub struct EniBackend {
    pool: Pool,
    node: NodeFacts,
    allocs: BTreeMap<AttachKey, StoredAllocation>,
    waiters: VecDeque<Waiter>,
    tables: BTreeMap<String, u32>,
    jobs: Sender<Job>,
    outstanding: usize,
    resync_every_ms: u64,
    next_resync: u64,
    metadata_endpoint: String,
    random: u64,
    /// Pods whose address the cloud lost (reported in mapping until they release it).
    lost: BTreeMap<AttachKey, Ipv4Addr>,
    grace_secs: u64,
    observing: bool,
    grants: Grants,
}

impl EniBackend {
    /// Learns the node from metadata and the API, reconciles the saved pool with what the cloud
    /// says is attached, deletes leaked ENIs, prepares ENI route tables, starts the workers.
    pub fn start(config: &Config, state: &State, tx: Sender<Msg>) -> Result<EniBackend> {
        let ctx = CloudCtx::connect(config, state.eni.as_ref())?;
        let node = ctx.node.clone();
        let saved = match &state.eni {
            Some(e) if e.instance_id == node.instance_id => e.pool.clone(),
            Some(e) => {
                log::warn!(
                    "state file was written on instance {} but this is {}: starting with an empty pool",
                    e.instance_id,
                    node.instance_id
                );
                PoolState::default()
            }
            None => PoolState::default(),
        };
        let mut pool = Pool::new(pool_config(config, &node), saved);
        let now = super::now_ms();
        let observed = ctx.observe().map_err(|e| {
            Error::new(
                Kind::Cloud,
                format!("list the ENIs attached to {}: {e}", node.instance_id),
            )
        })?;
        ctx.delete_leaked_enis();
        for v in ctx.vswitch_free() {
            pool.set_vswitch_free(&v.0, v.1);
        }
        let facts: Vec<EniFacts> = observed.iter().map(|(f, _)| f.clone()).collect();
        let report = pool.reconcile(&facts, now);
        let mut lost = BTreeMap::new();
        for (key, ip) in &report.lost {
            log::error!(
                "the cloud no longer has {ip} of {key}: marked invalid; the pod needs to be re-created"
            );
            lost.insert(key.clone(), *ip);
        }
        if !report.adopted.is_empty() {
            log::info!(
                "adopted {} idle address(es) the cloud has",
                report.adopted.len()
            );
        }
        let allocs: BTreeMap<AttachKey, StoredAllocation> = state
            .allocations
            .iter()
            .filter(|a| pool.lease_of(&a.key).is_some())
            .map(|a| (a.key.clone(), a.clone()))
            .collect();
        let dropped = state.allocations.len() - allocs.len();
        if dropped > 0 {
            log::warn!("{dropped} allocation(s) in the state file have no address in the pool");
        }
        // The reverse: addresses held for pods the state no longer lists (allocations are
        // dropped after a reboot: those pods are gone) go back to the pool.
        let orphaned: Vec<AttachKey> = pool
            .snapshot(now)
            .enis
            .iter()
            .flat_map(|e| e.ips.iter().filter_map(|i| i.owner.clone()))
            .filter(|k| !allocs.contains_key(k))
            .collect();
        for key in &orphaned {
            pool.release(key, now);
        }
        if !orphaned.is_empty() {
            log::info!(
                "{} address(es) held for pods no longer known (node rebooted?) are idle again",
                orphaned.len()
            );
        }
        let metadata_endpoint = ctx.metadata_endpoint.clone();
        let resync_every_ms = config
            .ip_pool_sync_period
            .map(|d| d.as_millis() as u64)
            .unwrap_or(DEFAULT_RESYNC_MS);
        let jobs = spawn_workers(ctx, tx)?;
        log::info!(
            "shared ENI mode on {} ({}, zone {}): {} secondary ENI(s), capacity {} pods",
            node.instance_id,
            node.instance_type,
            node.zone_id,
            facts.len(),
            pool.capacity()
        );
        Ok(EniBackend {
            pool,
            node,
            allocs,
            waiters: VecDeque::new(),
            tables: observed.iter().map(|(f, t)| (f.id.clone(), *t)).collect(),
            jobs,
            outstanding: 0,
            resync_every_ms,
            next_resync: now + resync_every_ms,
            metadata_endpoint,
            random: now ^ u64::from(std::process::id()).rotate_left(32) | 1,
            lost,
            grace_secs: config.orphan_grace_period.as_secs(),
            observing: false,
            grants: Grants::new(now),
        })
    }

    fn next_random(&mut self) -> u64 {
        // xorshift64: the pool only needs an unbiased pick among a few vSwitches.
        let mut x = self.random;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.random = x;
        x
    }

    /// The allocation as the plugin needs it; an ENI without a route table cannot be wired.
    fn allocation(&self, key: &AttachKey, pod: &PodRef, lease: &Lease) -> Result<Allocation> {
        if !self.tables.contains_key(&lease.eni_id) {
            return Err(Error::new(
                Kind::TryAgain,
                format!(
                    "ENI {} ({}) has no route table yet: its device has not appeared",
                    lease.eni_id, lease.mac
                ),
            ));
        }
        Ok(self.view(key, pod, lease))
    }

    fn view(&self, key: &AttachKey, pod: &PodRef, lease: &Lease) -> Allocation {
        Allocation {
            key: key.clone(),
            pod: pod.clone(),
            ipv4: lease.ip,
            datapath: Datapath::VethPolicy {
                table: self.tables.get(&lease.eni_id).copied().unwrap_or(0),
                eni_id: lease.eni_id.clone(),
            },
            grant: None,
        }
    }

    /// Takes an idle address for a pod; None when the pool has none right now.
    fn try_allocate(
        &mut self,
        key: &AttachKey,
        network: &str,
        pod: &PodRef,
        netns: &str,
        now: u64,
    ) -> Option<Response> {
        let lease = self.pool.allocate(key, &pod.to_string(), now)?;
        let mut resp = self.allocation(key, pod, &lease);
        if let Ok(a) = &mut resp {
            a.grant = Some(self.grants.grant(key, true));
            self.allocs.insert(
                key.clone(),
                StoredAllocation {
                    key: key.clone(),
                    network: network.into(),
                    pod: pod.clone(),
                    netns: netns.into(),
                    ipv4: lease.ip,
                    created_unix: now / 1000,
                },
            );
        } else {
            self.pool.release(key, now);
        }
        Some(resp.map(Reply::Allocated))
    }

    fn release(&mut self, key: &AttachKey, now: u64) -> Option<Allocation> {
        self.grants.forget(key);
        let stored = self.allocs.remove(key);
        self.lost.remove(key);
        let lease = self.pool.release(key, now)?;
        Some(self.view(key, &stored.map(|s| s.pod).unwrap_or_default(), &lease))
    }

    fn dispatch(&mut self, now: u64) {
        // A resync's listing is only true of a pool that no operation changes meanwhile (an
        // unassign finishing after the listing would be adopted back): nothing new goes out
        // while one runs, and one only starts when nothing is in flight.
        if self.observing {
            return;
        }
        let waiting = self.waiters.len() as u32;
        let random = self.next_random();
        let ops = self.pool.plan(now, waiting, random);
        if !ops.is_empty() {
            let node = std::sync::Arc::new(self.node.clone());
            for op in ops {
                log::debug!("cloud op: {op:?}");
                if self.jobs.send(Job::Op(op, node.clone())).is_ok() {
                    self.outstanding += 1;
                }
            }
        }
        if self.outstanding == 0 && now >= self.next_resync {
            self.next_resync = now + self.resync_every_ms;
            if self
                .jobs
                .send(Job::Observe(self.node.vswitches.clone()))
                .is_ok()
            {
                self.outstanding += 1;
                self.observing = true;
            }
        }
    }

    fn serve_waiters(&mut self, now: u64, out: &mut Outbox) {
        while let Some(w) = self.waiters.pop_front() {
            match self.try_allocate(&w.key, &w.network, &w.pod, &w.netns, now) {
                Some(resp) => out.reply(w.reply, resp, true),
                None => {
                    self.waiters.push_front(w);
                    break;
                }
            }
        }
        if self.waiters.is_empty() {
            return;
        }
        let final_failure = self
            .pool
            .last_failure()
            .filter(|f| is_final(&f.code))
            .map(|f| format!("{}: {}", f.code, f.message));
        if let Some(reason) =
            final_failure.or_else(|| self.pool.unservable(now, self.waiters.len() as u32))
        {
            log::error!("failing {} waiting pod(s): {reason}", self.waiters.len());
            for w in self.waiters.drain(..) {
                let e = Error::new(
                    Kind::TryAgain,
                    format!("no address for pod {}: {reason}", w.pod),
                );
                out.reply(w.reply, Err(e), false);
            }
            return;
        }
        let (expired, kept): (Vec<Waiter>, Vec<Waiter>) =
            self.waiters.drain(..).partition(|w| w.deadline <= now);
        self.waiters = kept.into();
        for w in expired {
            let e = Error::new(
                Kind::TryAgain,
                format!(
                    "no address for pod {} after {} s: the pool is still growing ({} idle, {} in use, capacity {}){}",
                    w.pod,
                    WAIT_TIMEOUT_MS / 1000,
                    self.pool.idle(),
                    self.pool.in_use(),
                    self.pool.capacity(),
                    self.pool
                        .last_failure()
                        .map(|f| format!("; last cloud error: {}: {}", f.code, f.message))
                        .unwrap_or_default()
                ),
            );
            out.reply(w.reply, Err(e), false);
        }
    }

    fn mapping(&self, now: u64) -> Vec<MappingRow> {
        let snap = self.pool.snapshot(now);
        let mut rows = Vec::new();
        for eni in &snap.enis {
            for ip in &eni.ips {
                let res = format!("{}.{}", eni.mac, ip.ip);
                let pod = ip
                    .owner
                    .as_ref()
                    .map(|k| {
                        self.allocs
                            .get(k)
                            .map(|a| a.pod.to_string())
                            .filter(|p| !p.is_empty())
                            .unwrap_or_else(|| k.to_string())
                    })
                    .unwrap_or_default();
                let (status, factory) = match (&ip.owner, ip.invalid) {
                    (_, true) => (
                        "Error: the cloud no longer has this address".into(),
                        "-".into(),
                    ),
                    (Some(_), false) => ("Normal".to_string(), res.clone()),
                    (None, false) => ("Idle".to_string(), res.clone()),
                };
                rows.push(MappingRow {
                    status,
                    pod,
                    res_id: res,
                    factory_res_id: factory,
                });
            }
        }
        rows
    }
}

impl Backend for EniBackend {
    fn on_request(&mut self, req: Request, reply: Sender<Response>, now: u64, out: &mut Outbox) {
        match req {
            Request::Alloc {
                key,
                network,
                pod,
                netns,
            } => {
                if let Some(a) = self.allocs.get(&key)
                    && let Some(lease) = self.pool.lease_of(&key)
                    && !self.lost.contains_key(&key)
                {
                    // The runtime retried ADD: same attachment, same address.
                    let mut resp = self.allocation(&key, &a.pod, &lease);
                    if let Ok(a) = &mut resp {
                        a.grant = Some(self.grants.grant(&key, false));
                    }
                    out.reply(reply, resp.map(Reply::Allocated), false);
                    return;
                }
                if self.waiters.is_empty()
                    && let Some(resp) = self.try_allocate(&key, &network, &pod, &netns, now)
                {
                    out.reply(reply, resp, true);
                    return;
                }
                if let Some(w) = self.waiters.iter_mut().find(|w| w.key == key) {
                    // A retried ADD while the first still waits: answer the newest caller.
                    let old = std::mem::replace(&mut w.reply, reply);
                    let _ = old.send(Err(Error::new(
                        Kind::TryAgain,
                        "superseded by a retried ADD",
                    )));
                    return;
                }
                self.waiters.push_back(Waiter {
                    key,
                    network,
                    pod,
                    netns,
                    reply,
                    deadline: now + WAIT_TIMEOUT_MS,
                });
            }
            Request::Release { key } => {
                if let Some(pos) = self.waiters.iter().position(|w| w.key == key)
                    && let Some(w) = self.waiters.remove(pos)
                {
                    let _ = w.reply.send(Err(Error::new(
                        Kind::TryAgain,
                        "the pod was deleted while waiting",
                    )));
                }
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
            Request::Get { key } => {
                let found = self.allocs.get(&key).and_then(|a| {
                    let lease = self.pool.lease_of(&key)?;
                    self.allocation(&key, &a.pod, &lease).ok()
                });
                out.reply(reply, Ok(Reply::Found(found)), false);
            }
            Request::Gc { network, valid } => {
                let stale = gc_candidates(
                    self.allocs.values(),
                    &network,
                    &valid,
                    now / 1000,
                    self.grace_secs,
                );
                let found = stale
                    .iter()
                    .filter_map(|k| {
                        let a = self.allocs.get(k)?;
                        self.allocation(k, &a.pod, &self.pool.lease_of(k)?).ok()
                    })
                    .collect();
                out.reply(reply, Ok(Reply::Collected(found)), false);
            }
            Request::Status => {
                let free = u64::from(self.pool.capacity().saturating_sub(self.pool.in_use()));
                out.reply(
                    reply,
                    Ok(Reply::Status(StatusView {
                        mode: "ENIMultiIP".into(),
                        free,
                    })),
                    false,
                );
            }
            Request::Mapping => out.reply(reply, Ok(Reply::Mapping(self.mapping(now))), false),
            Request::Pool => {
                let snap = self.pool.snapshot(now);
                let view = PoolView {
                    mode: "ENIMultiIP".into(),
                    pod_cidr: None,
                    in_use: u64::from(snap.in_use),
                    idle: u64::from(snap.idle),
                    capacity: u64::from(snap.capacity),
                    min_pool_size: snap.min_idle,
                    max_pool_size: snap.max_idle,
                    eni: Some(snap),
                    metadata_endpoint: Some(self.metadata_endpoint.clone()),
                    instance_id: Some(self.node.instance_id.clone()),
                };
                out.reply(reply, Ok(Reply::Pool(view)), false);
            }
        }
    }

    fn on_cloud(&mut self, done: CloudDone, now: u64, out: &mut Outbox) {
        self.outstanding = self.outstanding.saturating_sub(1);
        match done {
            CloudDone::Op { outcome, table } => {
                if let CloudOutcome::Failed { failure, .. } = &outcome {
                    log::warn!("cloud: {}: {}", failure.code, failure.message);
                }
                if let Some((eni, t)) = table {
                    self.tables.insert(eni, t);
                }
                if let CloudOutcome::EniDeleted { eni_id, .. } = &outcome {
                    self.tables.remove(eni_id);
                }
                self.pool.apply(outcome, now);
            }
            CloudDone::Observed(Ok(seen)) => {
                self.observing = false;
                for (vsw, free) in &seen.vswitch_free {
                    self.pool.set_vswitch_free(vsw, *free);
                }
                let facts: Vec<EniFacts> = seen.enis.iter().map(|(f, _)| f.clone()).collect();
                for (f, t) in &seen.enis {
                    self.tables.insert(f.id.clone(), *t);
                }
                let report = self.pool.reconcile(&facts, now);
                for (key, ip) in report.lost {
                    log::error!("resync: the cloud no longer has {ip} of {key}");
                    self.lost.insert(key, ip);
                }
            }
            CloudDone::Observed(Err(e)) => {
                self.observing = false;
                log::warn!("resync failed, retrying later: {e}");
            }
        }
        out.touch();
    }

    fn on_tick(&mut self, now: u64, out: &mut Outbox) {
        self.dispatch(now);
        self.serve_waiters(now, out);
    }

    fn next_deadline(&self, now: u64) -> Option<u64> {
        let waiter = self.waiters.iter().map(|w| w.deadline).min();
        [self.pool.next_deadline(now), waiter, Some(self.next_resync)]
            .into_iter()
            .flatten()
            .min()
    }

    fn write_state(&self, state: &mut State) {
        state.allocations = self.allocs.values().cloned().collect();
        state.eni = Some(EniPoolState {
            instance_id: self.node.instance_id.clone(),
            instance_type: self.node.instance_type.clone(),
            limits: Some(self.node.limits),
            pool: self.pool.state().clone(),
        });
    }

    fn reload(&mut self, config: &Config) -> Result<()> {
        if config.security_groups.is_empty() {
            return Err(Error::new(
                Kind::InvalidConfig,
                "security_group (or security_groups) is required in ENIMultiIP mode",
            ));
        }
        // New ENIs join the new groups and carry the new tags; existing ENIs are left as they are.
        self.node.security_groups = config.security_groups.clone();
        self.node.eni_tags = super::eni_cloud::eni_tags(config, &self.node.instance_id);
        self.node.vswitches = super::eni_cloud::node_vswitches(config, &self.node);
        self.pool.set_config(pool_config(config, &self.node));
        self.grace_secs = config.orphan_grace_period.as_secs();
        log::info!(
            "reload: vSwitches {:?}, watermarks min {} max {}",
            self.node.vswitches,
            config.min_pool_size,
            config.max_pool_size
        );
        Ok(())
    }
}

/// Cloud errors that retrying cannot fix: waiting pods fail at once with the cloud's words.
fn is_final(code: &str) -> bool {
    code.starts_with("Forbidden")
        || code.starts_with("InvalidAccessKeyId")
        || code.starts_with("InvalidSecurityGroupId")
        || code.starts_with("InvalidVSwitchId.NotFound")
        || matches!(
            code,
            "SignatureDoesNotMatch"
                | "InvalidParameter"
                | "MissingParameter"
                | "IncorrectInstanceStatus"
        )
}

/// The pool's knobs from the config and the instance type.
fn pool_config(config: &Config, node: &NodeFacts) -> PoolConfig {
    let secondary = node.limits.eni_quantity.saturating_sub(1);
    PoolConfig {
        min_idle: config.min_pool_size,
        max_idle: config.max_pool_size,
        max_enis: config.max_eni.map_or(secondary, |m| m.min(secondary)),
        ips_per_eni: node.limits.eni_private_ip_quantity,
        batch: 10,
        coalesce_ms: 20,
        release_after_ms: config
            .idle_ip_reclaim_after
            .map(|d| d.as_millis() as u64)
            .unwrap_or(60_000),
        vswitch_backoff_ms: 300_000,
        retry_after_ms: 1_000,
        vswitches: node.vswitches.clone(),
        vswitch_policy: config.vswitch_selection_policy,
        eni_policy: config.eni_selection_policy,
        sticky_ms: 300_000,
    }
}
