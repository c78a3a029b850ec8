//! Exclusive ENI mode (ENIOnly) as an address source: a pod takes a whole secondary ENI, whose
//! device the plugin moves into the pod as its `eth0` (the ENI's primary IP with the vSwitch's
//! prefix, default route via the vSwitch gateway), plus a veth `veth1` to the node for the
//! service CIDR and node traffic. The pure pool (`pool::exclusive_eni`) decides; its create and
//! delete operations run as jobs on the cloud workers (`eni_ops`).

use super::eni_ops::{DeviceUse, EniOps, NodeFacts, OP_DEADLINE, Observation, RESYNC_DEADLINE};
use super::eni_source::{
    EniCommon, blocked_views, count_findings, last_error, orphaned_owners, unservable,
};
use super::node::{self, cloud_err};
use super::source::{AddressSource, Allocations, Current, Take};
use super::workers::Job;
use crate::Result;
use crate::cloud::openapi::with_deadline;
use crate::config::{Config, Mode};
use crate::model::{AttachKey, Datapath, HostPeer, PodAddress, PodRef};
use crate::pool::exclusive_eni::{
    CloudFailure, CloudOp, CloudOutcome, EniFacts, EniStatus, Lease, Pool, PoolConfig,
};
use crate::rpc::{EniIpView, EniPoolView, EniView, MappingRow, PoolView};
use crate::store::{State, StoredAllocation};
use std::collections::BTreeSet;
use std::time::Instant;

/// Creates and deletes only: fewer workers than shared mode needs.
const WORKERS: usize = 4;

/// What an exclusive-ENI job reports back to the loop.
pub enum Done {
    Op(CloudOutcome),
    /// A resync: what the cloud says, or why it failed.
    Observed(std::result::Result<Observation, String>),
}

pub struct ExclusiveEniSource {
    pool: Pool,
    common: EniCommon,
    /// What pods reach through their veth to the node.
    host_peer: HostPeer,
    /// Pods whose ENI the cloud no longer has attached.
    lost: BTreeSet<AttachKey>,
}

impl ExclusiveEniSource {
    /// Learns the node, reconciles the saved pool with what the cloud says is attached, deletes
    /// leaked ENIs. Returns the source and the allocations that still hold an ENI.
    pub fn start(config: &Config, state: &State) -> Result<(Self, Vec<StoredAllocation>)> {
        let (info, cloud) = node::discover(config)?;
        let cached = state
            .exclusive_eni
            .as_ref()
            .and_then(|e| Some((e.instance_type.as_str(), e.limits?)));
        let limits = node::limits(&cloud, &info, cached)?;
        let node_ip = cloud
            .meta
            .eni(&info.primary_mac)
            .map(|m| m.primary_ip)
            .map_err(|e| cloud_err("metadata: the node's primary address", e))?;
        let ops = EniOps::new(DeviceUse::Exclusive, config, info, cloud, limits)?;
        let now = crate::clock::now_ms();
        let common = EniCommon::new(ops, config, now);
        let (node, ops) = (common.node.clone(), common.ops.clone());
        let saved = common.saved_pool(
            state
                .exclusive_eni
                .as_ref()
                .map(|e| (e.instance_id.as_str(), &e.pool)),
        );
        let mut pool = Pool::new(pool_config(config, &node), saved);
        let observed: Vec<EniFacts> = ops
            .observe_at_start()?
            .into_iter()
            .map(|(f, _)| f)
            .collect();
        let report = pool.reconcile(&observed, now);
        count_findings(
            report.lost.len(),
            report.adopted.len(),
            report.removed_idle.len(),
        );
        let mut lost = BTreeSet::new();
        for (key, eni) in &report.lost {
            log::error!(
                "the cloud no longer has ENI {eni} of {key} attached: the pod needs to be re-created"
            );
            lost.insert(key.clone());
        }
        let allocs: Vec<StoredAllocation> = state
            .allocations
            .iter()
            .filter(|a| pool.lease_of(&a.key).is_some())
            .cloned()
            .collect();
        let snap = pool.snapshot(now);
        let orphaned = orphaned_owners(snap.enis.iter().filter_map(|e| e.owner.as_ref()), &allocs);
        for key in &orphaned {
            pool.release(key, now);
        }
        log::info!(
            "exclusive ENI mode on {} ({}, zone {}): {} secondary ENI(s), capacity {} pods",
            node.info.instance_id,
            node.info.instance_type,
            node.info.zone_id,
            observed.len(),
            pool.capacity()
        );
        let source = ExclusiveEniSource {
            pool,
            common,
            host_peer: HostPeer {
                service_cidr: config.service_cidr,
                node_ips: vec![node_ip],
            },
            lost,
        };
        Ok((source, allocs))
    }

    fn wiring(&self, lease: &Lease) -> (PodAddress, Datapath) {
        let mut address =
            PodAddress::v4(lease.ip, lease.vswitch_cidr.prefix(), Some(lease.gateway));
        if let Some((ip6, v6)) = lease.ip6 {
            address = address.with_v6(ip6, v6.vswitch_cidr.prefix(), Some(v6.gateway));
        }
        (
            address,
            Datapath::ExclusiveEni {
                eni_id: lease.eni_id.clone(),
                mac: lease.mac.clone(),
                host_peer: Some(self.host_peer.clone()),
            },
        )
    }
}

fn execute(ops: &EniOps, op: CloudOp, node: &NodeFacts) -> Done {
    match op {
        CloudOp::CreateEni { op, vswitch_id } => {
            match ops.create_eni(op, &vswitch_id, 0, u32::from(ops.dual), node) {
                Ok((eni, _)) => Done::Op(CloudOutcome::EniCreated { op, eni }),
                Err(failure) => Done::Op(CloudOutcome::Failed { op, failure }),
            }
        }
        CloudOp::DeleteEni { op, eni_id } => match ops.delete_eni(&eni_id) {
            Ok(()) => Done::Op(CloudOutcome::EniDeleted { op, eni_id }),
            Err(failure) => Done::Op(CloudOutcome::Failed { op, failure }),
        },
    }
}

fn panicked(op: u64) -> Done {
    Done::Op(CloudOutcome::Failed {
        op,
        failure: CloudFailure {
            code: "Terway.Internal".into(),
            message: "the cloud worker panicked (a bug; see the log)".into(),
        },
    })
}

impl AddressSource for ExclusiveEniSource {
    type Done = Done;

    fn mode(&self) -> Mode {
        Mode::EniOnly
    }

    fn new_pod_datapath(&self) -> &'static str {
        Datapath::EXCLUSIVE_ENI
    }

    fn workers(&self) -> usize {
        WORKERS
    }

    fn take(&mut self, key: &AttachKey, pod: &PodRef, now: u64) -> Take {
        self.lost.remove(key);
        match self.pool.allocate(key, &pod.to_string(), now) {
            Some(lease) => {
                let (address, datapath) = self.wiring(&lease);
                Take::Ready(address, datapath)
            }
            None => Take::Later,
        }
    }

    fn give_back(&mut self, alloc: &StoredAllocation, now: u64) {
        self.lost.remove(&alloc.key);
        self.pool.release(&alloc.key, now);
    }

    fn current(&self, alloc: &StoredAllocation) -> Current {
        if self.lost.contains(&alloc.key) {
            return Current::Lost;
        }
        match self.pool.lease_of(&alloc.key) {
            Some(lease) => {
                let (address, datapath) = self.wiring(&lease);
                Current::Valid(address, datapath)
            }
            None => Current::Lost,
        }
    }

    fn plan(&mut self, now: u64, waiting: u32) -> Vec<Job<Done>> {
        if self.common.observing() {
            return Vec::new();
        }
        let random = self.common.next_random();
        let mut jobs = Vec::new();
        for op in self.pool.plan(now, waiting, random) {
            log::debug!("cloud op: {op:?}");
            let id = op.id();
            let (ops, node) = (self.common.ops.clone(), self.common.node.clone());
            jobs.push(Job::new(
                move || with_deadline(Instant::now() + OP_DEADLINE, || execute(&ops, op, &node)),
                move || panicked(id),
            ));
        }
        self.common.sent(jobs.len());
        if self.common.start_resync(now, self.pool.wants_reconcile()) {
            // As in shared mode: free counts matter to the `most` policy only, and are reused
            // for 10 min (see `VSwitchRefresh`).
            let vswitches = self
                .common
                .vswitches_to_refresh(self.pool.config().vswitch_policy, now);
            let ops = self.common.ops.clone();
            jobs.push(Job::new(
                // As in shared mode: the resync holds the pool, so it yields when throttled.
                move || {
                    with_deadline(Instant::now() + RESYNC_DEADLINE, || {
                        Done::Observed(ops.observe_all(&vswitches).map_err(|e| e.msg))
                    })
                },
                || Done::Observed(Err("resync panicked (a bug)".into())),
            ));
        }
        jobs
    }

    fn apply(&mut self, done: Done, now: u64) {
        match &done {
            Done::Observed(r) => self.common.resync_done(r.as_ref().ok(), now),
            Done::Op(_) => self.common.done(),
        }
        match done {
            Done::Op(outcome) => {
                if let CloudOutcome::Failed { failure, .. } = &outcome {
                    log::warn!("cloud: {}: {}", failure.code, failure.message);
                }
                self.pool.apply(outcome, now);
            }
            Done::Observed(Ok(seen)) => {
                for (vsw, free) in &seen.vswitch_free {
                    self.pool.set_vswitch_free(vsw, *free);
                }
                let facts: Vec<EniFacts> = seen.enis.into_iter().map(|(f, _)| f).collect();
                let report = self.pool.reconcile(&facts, now);
                count_findings(
                    report.lost.len(),
                    report.adopted.len(),
                    report.removed_idle.len(),
                );
                for (key, eni) in &report.lost {
                    log::error!("resync: the cloud no longer has ENI {eni} of {key} attached");
                }
                // The pool's word, not a set of our own: an ENI the cloud shows attached again
                // is its pod's again (a stale entry here would hide it from DEL, which would
                // then leave the device in the pod while the pool hands the ENI out).
                self.lost = self
                    .pool
                    .snapshot(now)
                    .enis
                    .iter()
                    .filter(|e| e.status == EniStatus::Lost)
                    .filter_map(|e| e.owner.clone())
                    .collect();
            }
            Done::Observed(Err(e)) => {
                log::warn!("resync failed, retrying later: {e}");
            }
        }
    }

    fn unservable(&self, now: u64, waiting: u32) -> Option<String> {
        unservable(self.pool.last_failure(), self.pool.unservable(now, waiting))
    }

    fn waiting_detail(&self) -> String {
        format!(
            "the ENI pool is still growing ({} idle, {} in use, {} being created, capacity {}){}",
            self.pool.idle(),
            self.pool.in_use(),
            self.pool.creating(),
            self.pool.capacity(),
            last_error(self.pool.last_failure())
        )
    }

    fn next_deadline(&self, now: u64) -> Option<u64> {
        self.common.deadline(self.pool.next_deadline(now))
    }

    fn write_state(&self, state: &mut State) {
        state.exclusive_eni = Some(self.common.state(self.pool.state().clone()));
    }

    fn reload(&mut self, config: &Config) -> Result<()> {
        let node = self.common.reload(config, "ENIOnly")?;
        self.pool.set_config(pool_config(config, &node));
        // New pods get the new service CIDR; wired ones keep theirs until re-created.
        self.host_peer.service_cidr = config.service_cidr;
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
            .map(|e| EniView {
                id: e.id.clone(),
                mac: e.mac.clone(),
                vswitch_id: e.vswitch_id.clone(),
                primary_ip: e.primary_ip.to_string(),
                in_use: u32::from(e.owner.is_some()),
                addresses: 1,
                problems: match e.status {
                    EniStatus::Lost => "lost by the cloud".into(),
                    EniStatus::Deleting => "being deleted".into(),
                    EniStatus::Unconfirmed => "delete failed, checking".into(),
                    EniStatus::InUse | EniStatus::Idle => String::new(),
                },
                ips: vec![EniIpView {
                    ip: e.primary_ip.to_string(),
                    ip6: e.ip6.map(|i| i.to_string()),
                    owner: e.owner.clone(),
                    primary: true,
                    lost: e.status == EniStatus::Lost,
                }],
            })
            .collect();
        PoolView {
            datapath: None,
            mode: Mode::EniOnly.to_string(),
            pod_cidr: None,
            pod_cidr_v6: None,
            vpc_route: None,
            vpc_route_v6: None,
            in_use: u64::from(snap.in_use),
            idle: u64::from(snap.idle),
            capacity: u64::from(snap.capacity),
            min_pool_size: snap.min_idle,
            max_pool_size: snap.max_idle,
            eni: Some(EniPoolView {
                max_enis: snap.max_enis,
                pending_ips: snap.creating,
                enis,
                blocked_vswitches: blocked_views(&snap.blocked_vswitches, now),
            }),
            metadata_endpoint: Some(self.common.ops.metadata_endpoint().to_string()),
            instance_id: Some(self.common.node.info.instance_id.clone()),
        }
    }

    fn mapping(&self, now: u64, allocs: &Allocations) -> Vec<MappingRow> {
        self.pool
            .snapshot(now)
            .enis
            .iter()
            .map(|e| {
                let res = format!("{}.{}", e.mac, e.primary_ip);
                let pod = e
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
                let (status, factory) = match e.status {
                    EniStatus::Lost => (
                        "Error: the cloud no longer has this ENI attached".to_string(),
                        "-".to_string(),
                    ),
                    EniStatus::InUse => ("Normal".into(), res.clone()),
                    _ => ("Idle".into(), res.clone()),
                };
                MappingRow {
                    status,
                    pod,
                    res_id: res,
                    factory_res_id: factory,
                    ipv6: e.ip6.map(|i| i.to_string()),
                }
            })
            .collect()
    }
}

/// The pool's knobs from the config and the instance type.
fn pool_config(config: &Config, node: &NodeFacts) -> PoolConfig {
    let secondary = node.limits.eni_quantity.saturating_sub(1);
    let max_enis = config.max_eni.map_or(secondary, |m| m.min(secondary));
    PoolConfig {
        min_idle: config.min_pool_size,
        max_idle: config.max_pool_size,
        max_enis,
        min_enis: config.min_eni.unwrap_or(0).min(max_enis),
        coalesce_ms: 20,
        release_after_ms: config
            .idle_ip_reclaim_after
            .map(|d| d.as_millis() as u64)
            .unwrap_or(60_000),
        vswitch_backoff_ms: 300_000,
        retry_after_ms: 1_000,
        vswitches: node.vswitches.clone(),
        vswitch_policy: config.vswitch_selection_policy,
        sticky_ms: 300_000,
    }
}
