//! Shared ENI mode (ENIMultiIP) as an address source: pods get secondary IPs of ENIs the daemon
//! creates, attaches and fills through the OpenAPI. The pure pool decides; jobs on the cloud
//! workers carry out its operations (`shared_eni_jobs`, `eni_ops`); this file glues them together: takes,
//! give-backs, the periodic resync, and what `pool` and `mapping` show.

use super::eni_ops::{DeviceUse, EniOps, NodeFacts, WORKERS, eni_tags, node_vswitches};
use super::node::{self, cloud_err};
use super::shared_eni_jobs::{CloudDone, panicked};
use super::source::{AddressSource, Allocations, Current, Take};
use super::workers::Job;
use crate::cloud::codes::is_final as is_final_code;
use crate::config::{Config, Mode};
use crate::model::{AttachKey, Datapath, PodAddress, PodRef};
use crate::pool::shared_eni::{EniFacts, Lease, Pool, PoolConfig, PoolState};
use crate::rpc::{BlockedVSwitchView, EniIpView, EniPoolView, EniView, MappingRow, PoolView};
use crate::store::{EniPoolState, State, StoredAllocation};
use crate::{Error, Kind, Result};
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Arc;

const DEFAULT_RESYNC_MS: u64 = 120_000;

pub struct SharedEniSource {
    pool: Pool,
    ops: Arc<EniOps>,
    /// The node as new ENIs see it (security groups, tags, vSwitches follow reloads).
    node: Arc<NodeFacts>,
    /// Route table per ENI id, prepared when its device appeared.
    tables: BTreeMap<String, u32>,
    outstanding: usize,
    resync_every_ms: u64,
    next_resync: u64,
    random: u64,
    /// Pods whose address the cloud lost (reported in mapping until they release it).
    lost: BTreeMap<AttachKey, Ipv4Addr>,
    observing: bool,
}

impl SharedEniSource {
    /// Learns the node from metadata and the API, reconciles the saved pool with what the cloud
    /// says is attached, deletes leaked ENIs and prepares ENI route tables. Returns the source
    /// and the allocations of the state file that still hold an address.
    pub fn start(config: &Config, state: &State) -> Result<(Self, Vec<StoredAllocation>)> {
        let (info, cloud) = node::discover(config)?;
        let cached = state
            .eni
            .as_ref()
            .and_then(|e| Some((e.instance_type.as_str(), e.limits?)));
        let limits = node::limits(&cloud, &info, cached)?;
        let ops = EniOps::new(DeviceUse::PolicyTable, config, info, cloud, limits)?;
        let node = ops.node.clone();
        let saved = match &state.eni {
            Some(e) if e.instance_id == node.info.instance_id => e.pool.clone(),
            Some(e) => {
                log::warn!(
                    "state file was written on instance {} but this is {}: starting with an empty pool",
                    e.instance_id,
                    node.info.instance_id
                );
                PoolState::default()
            }
            None => PoolState::default(),
        };
        let mut pool = Pool::new(pool_config(config, &node), saved);
        let now = crate::clock::now_ms();
        let observed = ops.observe().map_err(|e| {
            cloud_err(
                &format!("list the ENIs attached to {}", node.info.instance_id),
                e,
            )
        })?;
        ops.delete_leaked_enis();
        for v in ops.vswitch_free() {
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
        let allocs: Vec<StoredAllocation> = state
            .allocations
            .iter()
            .filter(|a| pool.lease_of(&a.key).is_some())
            .cloned()
            .collect();
        let dropped = state.allocations.len() - allocs.len();
        if dropped > 0 {
            log::warn!("{dropped} allocation(s) in the state file have no address in the pool");
        }
        // The reverse: addresses held for pods the state no longer lists (allocations are
        // dropped after a reboot: those pods are gone) go back to the pool.
        let known: std::collections::BTreeSet<&AttachKey> = allocs.iter().map(|a| &a.key).collect();
        let orphaned: Vec<AttachKey> = pool
            .snapshot(now)
            .enis
            .iter()
            .flat_map(|e| e.ips.iter().filter_map(|i| i.owner.clone()))
            .filter(|k| !known.contains(k))
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
        let tables: BTreeMap<String, u32> =
            observed.iter().map(|(f, t)| (f.id.clone(), *t)).collect();
        // Allocations carry the datapath as wired now (a migrated file had no tables).
        let allocs = allocs
            .into_iter()
            .map(|mut a| {
                if let Some(l) = pool.lease_of(&a.key) {
                    a.datapath = Datapath::VethPolicy {
                        table: tables.get(&l.eni_id).copied().unwrap_or(0),
                        eni_id: l.eni_id,
                    };
                }
                a
            })
            .collect();
        let resync_every_ms = config
            .ip_pool_sync_period
            .map(|d| d.as_millis() as u64)
            .unwrap_or(DEFAULT_RESYNC_MS);
        log::info!(
            "shared ENI mode on {} ({}, zone {}): {} secondary ENI(s), capacity {} pods",
            node.info.instance_id,
            node.info.instance_type,
            node.info.zone_id,
            facts.len(),
            pool.capacity()
        );
        let source = SharedEniSource {
            pool,
            node: Arc::new(node),
            ops: Arc::new(ops),
            tables,
            outstanding: 0,
            resync_every_ms,
            next_resync: now + resync_every_ms,
            random: now ^ u64::from(std::process::id()).rotate_left(32) | 1,
            lost,
            observing: false,
        };
        Ok((source, allocs))
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

    /// The address and datapath of a lease; an ENI without a route table cannot be wired yet.
    fn wiring(&self, lease: &Lease) -> std::result::Result<(PodAddress, Datapath), Error> {
        let Some(table) = self.tables.get(&lease.eni_id) else {
            return Err(Error::new(
                Kind::TryAgain,
                format!(
                    "ENI {} ({}) has no route table yet: its device has not appeared",
                    lease.eni_id, lease.mac
                ),
            ));
        };
        Ok((
            PodAddress::v4(lease.ip, 32, None),
            Datapath::VethPolicy {
                table: *table,
                eni_id: lease.eni_id.clone(),
            },
        ))
    }
}

impl AddressSource for SharedEniSource {
    type Done = CloudDone;

    fn mode(&self) -> Mode {
        Mode::EniMultiIp
    }

    fn workers(&self) -> usize {
        WORKERS
    }

    fn take(&mut self, key: &AttachKey, pod: &PodRef, now: u64) -> Take {
        self.lost.remove(key);
        let Some(lease) = self.pool.allocate(key, &pod.to_string(), now) else {
            return Take::Later;
        };
        match self.wiring(&lease) {
            Ok((address, datapath)) => Take::Ready(address, datapath),
            Err(e) => {
                self.pool.release(key, now);
                Take::Fail(e)
            }
        }
    }

    fn give_back(&mut self, alloc: &StoredAllocation, now: u64) {
        self.lost.remove(&alloc.key);
        self.pool.release(&alloc.key, now);
    }

    fn current(&self, alloc: &StoredAllocation) -> Current {
        if self.lost.contains_key(&alloc.key) {
            return Current::Lost;
        }
        match self.pool.lease_of(&alloc.key) {
            None => Current::Lost,
            Some(lease) => match self.wiring(&lease) {
                Ok((address, datapath)) => Current::Valid(address, datapath),
                Err(e) => Current::NotReady(e),
            },
        }
    }

    fn plan(&mut self, now: u64, waiting: u32) -> Vec<Job<CloudDone>> {
        // A resync's listing is only true of a pool that no operation changes meanwhile (an
        // unassign finishing after the listing would be adopted back): nothing new goes out
        // while one runs, and one only starts when nothing is in flight.
        if self.observing {
            return Vec::new();
        }
        let random = self.next_random();
        let mut jobs = Vec::new();
        for op in self.pool.plan(now, waiting, random) {
            log::debug!("cloud op: {op:?}");
            let id = op.id();
            let (ops, node) = (self.ops.clone(), self.node.clone());
            jobs.push(Job::new(
                move || ops.execute(op, &node),
                move || panicked(id),
            ));
        }
        self.outstanding += jobs.len();
        if self.outstanding == 0 && now >= self.next_resync {
            self.next_resync = now + self.resync_every_ms;
            let (ops, vswitches) = (self.ops.clone(), self.node.vswitches.clone());
            jobs.push(Job::new(
                move || ops.resync(&vswitches),
                || CloudDone::Observed(Err("resync panicked (a bug)".into())),
            ));
            self.outstanding += 1;
            self.observing = true;
        }
        jobs
    }

    fn apply(&mut self, done: CloudDone, now: u64) {
        self.outstanding = self.outstanding.saturating_sub(1);
        match done {
            CloudDone::Op { outcome, table } => {
                if let crate::pool::shared_eni::CloudOutcome::Failed { failure, .. } = &outcome {
                    log::warn!("cloud: {}: {}", failure.code, failure.message);
                }
                if let Some((eni, t)) = table {
                    self.tables.insert(eni, t);
                }
                if let crate::pool::shared_eni::CloudOutcome::EniDeleted { eni_id, .. } = &outcome {
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
    }

    fn unservable(&self, now: u64, waiting: u32) -> Option<String> {
        self.pool
            .last_failure()
            .filter(|f| is_final_code(&f.code))
            .map(|f| format!("{}: {}", f.code, f.message))
            .or_else(|| self.pool.unservable(now, waiting))
    }

    fn waiting_detail(&self) -> String {
        format!(
            "the pool is still growing ({} idle, {} in use, capacity {}){}",
            self.pool.idle(),
            self.pool.in_use(),
            self.pool.capacity(),
            self.pool
                .last_failure()
                .map(|f| format!("; last cloud error: {}: {}", f.code, f.message))
                .unwrap_or_default()
        )
    }

    fn next_deadline(&self, now: u64) -> Option<u64> {
        [self.pool.next_deadline(now), Some(self.next_resync)]
            .into_iter()
            .flatten()
            .min()
    }

    fn write_state(&self, state: &mut State) {
        state.eni = Some(EniPoolState {
            instance_id: self.node.info.instance_id.clone(),
            instance_type: self.node.info.instance_type.clone(),
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
        let mut node = (*self.node).clone();
        node.security_groups = config.security_groups.clone();
        node.eni_tags = eni_tags(config, &node.info.instance_id);
        node.vswitches = node_vswitches(config, &node.info);
        self.pool.set_config(pool_config(config, &node));
        log::info!(
            "reload: vSwitches {:?}, watermarks min {} max {}",
            node.vswitches,
            config.min_pool_size,
            config.max_pool_size
        );
        self.node = Arc::new(node);
        Ok(())
    }

    fn free(&self) -> u64 {
        u64::from(self.pool.capacity().saturating_sub(self.pool.in_use()))
    }

    fn pool_view(&self, now: u64, _allocs: &Allocations) -> PoolView {
        let snap = self.pool.snapshot(now);
        let enis = snap
            .enis
            .iter()
            .map(|e| {
                let invalid = e.ips.iter().filter(|i| i.invalid).count();
                EniView {
                    id: e.id.clone(),
                    mac: e.mac.clone(),
                    vswitch_id: e.vswitch_id.clone(),
                    primary_ip: e.primary_ip.to_string(),
                    in_use: e.ips.iter().filter(|i| i.owner.is_some()).count() as u32,
                    addresses: e.ips.len() as u32,
                    problems: if invalid > 0 {
                        format!("{invalid} lost")
                    } else {
                        String::new()
                    },
                    ips: e
                        .ips
                        .iter()
                        .map(|i| EniIpView {
                            ip: i.ip.to_string(),
                            owner: i.owner.clone(),
                            primary: i.primary,
                            lost: i.invalid,
                        })
                        .collect(),
                }
            })
            .collect();
        let blocked = snap
            .blocked_vswitches
            .iter()
            .map(|b| BlockedVSwitchView {
                id: b.id.clone(),
                seconds_left: b.until_ms.saturating_sub(now).div_ceil(1000),
                reason: b.reason.clone(),
            })
            .collect();
        PoolView {
            mode: Mode::EniMultiIp.to_string(),
            pod_cidr: None,
            in_use: u64::from(snap.in_use),
            idle: u64::from(snap.idle),
            capacity: u64::from(snap.capacity),
            min_pool_size: snap.min_idle,
            max_pool_size: snap.max_idle,
            eni: Some(EniPoolView {
                max_enis: snap.max_enis,
                pending_ips: snap.pending_ips,
                enis,
                blocked_vswitches: blocked,
            }),
            metadata_endpoint: Some(self.ops.metadata_endpoint().to_string()),
            instance_id: Some(self.node.info.instance_id.clone()),
        }
    }

    fn mapping(&self, now: u64, allocs: &Allocations) -> Vec<MappingRow> {
        let snap = self.pool.snapshot(now);
        let mut rows = Vec::new();
        for eni in &snap.enis {
            for ip in &eni.ips {
                let res = format!("{}.{}", eni.mac, ip.ip);
                let pod = ip
                    .owner
                    .as_ref()
                    .map(|k| {
                        allocs
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
