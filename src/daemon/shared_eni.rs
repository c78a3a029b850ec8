//! Shared ENI mode (ENIMultiIP) as an address source: pods get secondary IPs of ENIs the daemon
//! creates, attaches and fills through the OpenAPI. The pure pool decides; jobs on the cloud
//! workers carry out its operations (`shared_eni_jobs`, `eni_ops`); this file glues them together: takes,
//! give-backs, the periodic resync, and what `pool` and `mapping` show.

use super::eni_ops::{DeviceUse, EniOps, NodeFacts, WORKERS};
use super::eni_source::{
    EniCommon, blocked_views, count_findings, last_error, orphaned_owners, unservable,
};
use super::node::{self, cloud_err};
use super::shared_eni_jobs::{CloudDone, panicked};
pub use super::shared_eni_wiring::{DatapathChoice, NO_IPVLAN};
use super::shared_eni_wiring::{Wiring, wire_lease};
use super::source::{AddressSource, Allocations, Current, Take};
use super::workers::Job;
use crate::config::{Config, IpStack, Mode, VirtualType};
use crate::model::{AttachKey, Datapath, HostPeer, PodAddress, PodRef};
use crate::pool::shared_eni::{EniFacts, Lease, Pool, PoolConfig, ReconcileReport};
use crate::rpc::{EniIpView, EniPoolView, EniView, MappingRow, PoolView};
use crate::store::{InstanceLimits, State, StoredAllocation};
use crate::{Error, Kind, Result};
use std::collections::BTreeMap;
use std::net::Ipv4Addr;

pub struct SharedEniSource {
    pool: Pool,
    common: EniCommon,
    /// The datapath new pods get.
    datapath: DatapathChoice,
    /// What new ipvlan pods route to the node: the service CIDR and the node's address.
    to_node: HostPeer,
    /// Route table per ENI id, prepared when its device appeared.
    tables: BTreeMap<String, u32>,
    /// Pods whose address the cloud lost (reported in mapping until they release it).
    lost: BTreeMap<AttachKey, Ipv4Addr>,
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
        if config.ip_stack == IpStack::Dual {
            dual_stack_limits(&info.instance_type, &limits)?;
        }
        let datapath = DatapathChoice::decide(config.virtual_type(), || {
            crate::datapath::ipvlan::probe().unwrap_or_else(|e| {
                log::warn!("could not tell whether this kernel has ipvlan: {e}");
                false
            })
        });
        if datapath.fell_back() {
            log::warn!("{NO_IPVLAN}");
        }
        let (device, node_ips) = match datapath.effective {
            VirtualType::Ipvlan => {
                let ip = cloud
                    .meta
                    .eni(&info.primary_mac)
                    .map(|m| m.primary_ip)
                    .map_err(|e| cloud_err("metadata: the node's primary address", e))?;
                (DeviceUse::PolicyTableAndIpvlan, vec![ip])
            }
            VirtualType::Veth => (DeviceUse::PolicyTable, Vec::new()),
        };
        let to_node = HostPeer {
            service_cidr: config.service_cidr,
            node_ips,
        };
        let ops = EniOps::new(device, config, info, cloud, limits)?;
        let now = crate::clock::now_ms();
        let common = EniCommon::new(ops, config, now);
        let (node, ops) = (common.node.clone(), common.ops.clone());
        let saved = common.saved_pool(
            state
                .eni
                .as_ref()
                .map(|e| (e.instance_id.as_str(), &e.pool)),
        );
        let mut pool = Pool::new(pool_config(config, &node), saved);
        let observed = ops.observe_at_start()?;
        for v in ops.vswitch_free() {
            pool.set_vswitch_free(&v.0, v.1);
        }
        let facts: Vec<EniFacts> = observed.iter().map(|(f, _)| f.clone()).collect();
        let report = pool.reconcile(&facts, now);
        count_findings(
            report.lost.len(),
            report.adopted.len(),
            report.removed_idle.len(),
        );
        log_ipv6_findings(&report, "start");
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
        let snap = pool.snapshot(now);
        let owners = snap
            .enis
            .iter()
            .flat_map(|e| e.ips.iter().filter_map(|i| i.owner.as_ref()));
        let orphaned = orphaned_owners(owners, &allocs);
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
        // Allocations carry the datapath they were wired with, as it stands now (a migrated
        // file had no tables; an ENI's table follows its ifindex).
        let allocs: Vec<StoredAllocation> = allocs
            .into_iter()
            .map(|mut a| {
                if let Some(l) = pool.lease_of(&a.key) {
                    let table = tables.get(&l.eni_id).copied().unwrap_or(0);
                    let (address, datapath) = wire_lease(&l, table, Wiring::recorded(&a.datapath));
                    a.address = address;
                    a.datapath = datapath;
                }
                a
            })
            .collect();
        let ipvlan_pods = allocs
            .iter()
            .filter(|a| matches!(a.datapath, Datapath::Ipvlan { .. }))
            .count();
        log::info!(
            "shared ENI mode on {} ({}, zone {}): {} secondary ENI(s), capacity {} pods; new pods \
             get {} ({} of {} pod(s) wired with ipvlan)",
            node.info.instance_id,
            node.info.instance_type,
            node.info.zone_id,
            facts.len(),
            pool.capacity(),
            datapath.effective,
            ipvlan_pods,
            allocs.len()
        );
        let source = SharedEniSource {
            pool,
            common,
            datapath,
            to_node,
            tables,
            lost,
        };
        Ok((source, allocs))
    }

    /// The address and datapath of a lease; an ENI whose device has not been readied (no
    /// route table yet) cannot be wired yet.
    fn wiring(
        &self,
        lease: &Lease,
        how: Wiring,
    ) -> std::result::Result<(PodAddress, Datapath), Error> {
        let Some(table) = self.tables.get(&lease.eni_id) else {
            return Err(Error::new(
                Kind::TryAgain,
                format!(
                    "ENI {} ({}) has no route table yet: its device has not appeared",
                    lease.eni_id, lease.mac
                ),
            ));
        };
        Ok(wire_lease(lease, *table, how))
    }

    /// How new pods are wired.
    fn new_wiring(&self) -> Wiring<'_> {
        match self.datapath.effective {
            VirtualType::Ipvlan => Wiring::Ipvlan(&self.to_node),
            VirtualType::Veth => Wiring::Veth,
        }
    }
}

impl AddressSource for SharedEniSource {
    type Done = CloudDone;

    fn mode(&self) -> Mode {
        Mode::EniMultiIp
    }

    fn new_pod_datapath(&self) -> &'static str {
        match self.datapath.effective {
            VirtualType::Veth => Datapath::VETH_POLICY,
            VirtualType::Ipvlan => Datapath::IPVLAN,
        }
    }

    fn workers(&self) -> usize {
        WORKERS
    }

    fn take(&mut self, key: &AttachKey, pod: &PodRef, now: u64) -> Take {
        self.lost.remove(key);
        let Some(lease) = self.pool.allocate(key, &pod.to_string(), now) else {
            return Take::Later;
        };
        match self.wiring(&lease, self.new_wiring()) {
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
            Some(lease) => match self.wiring(&lease, Wiring::recorded(&alloc.datapath)) {
                Ok((address, datapath)) => Current::Valid(address, datapath),
                Err(e) => Current::NotReady(e),
            },
        }
    }

    fn plan(&mut self, now: u64, waiting: u32) -> Vec<Job<CloudDone>> {
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
                move || ops.execute(op, &node),
                move || panicked(id),
            ));
        }
        self.common.sent(jobs.len());
        if self.common.start_resync(now, false) {
            // Free counts matter to the `most` policy only, and are reused for 10 min: at 2000
            // nodes every resync's DescribeVSwitches alone was over the region's budget.
            let vswitches = self
                .common
                .vswitches_to_refresh(self.pool.config().vswitch_policy, now);
            let ops = self.common.ops.clone();
            jobs.push(Job::new(
                move || ops.resync(&vswitches),
                || CloudDone::Observed(Err("resync panicked (a bug)".into())),
            ));
        }
        jobs
    }

    fn apply(&mut self, done: CloudDone, now: u64) {
        match &done {
            CloudDone::Observed(r) => self.common.resync_done(r.as_ref().ok(), now),
            CloudDone::Op { .. } => self.common.done(),
        }
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
                for (vsw, free) in &seen.vswitch_free {
                    self.pool.set_vswitch_free(vsw, *free);
                }
                let facts: Vec<EniFacts> = seen.enis.iter().map(|(f, _)| f.clone()).collect();
                for (f, t) in &seen.enis {
                    self.tables.insert(f.id.clone(), *t);
                }
                let report = self.pool.reconcile(&facts, now);
                count_findings(
                    report.lost.len(),
                    report.adopted.len(),
                    report.removed_idle.len(),
                );
                log_ipv6_findings(&report, "resync");
                for (key, ip) in report.lost {
                    log::error!("resync: the cloud no longer has {ip} of {key}");
                    self.lost.insert(key, ip);
                }
            }
            CloudDone::Observed(Err(e)) => {
                log::warn!("resync failed, retrying later: {e}");
            }
        }
    }

    fn unservable(&self, now: u64, waiting: u32) -> Option<String> {
        unservable(self.pool.last_failure(), self.pool.unservable(now, waiting))
    }

    fn waiting_detail(&self) -> String {
        format!(
            "the pool is still growing ({} idle, {} in use, capacity {}){}",
            self.pool.idle(),
            self.pool.in_use(),
            self.pool.capacity(),
            last_error(self.pool.last_failure())
        )
    }

    fn next_deadline(&self, now: u64) -> Option<u64> {
        self.common.deadline(self.pool.next_deadline(now))
    }

    fn write_state(&self, state: &mut State) {
        state.eni = Some(self.common.state(self.pool.state().clone()));
    }

    fn reload(&mut self, config: &Config) -> Result<()> {
        let node = self.common.reload(config, "ENIMultiIP")?;
        self.pool.set_config(pool_config(config, &node));
        // New ipvlan pods route the new service CIDR to the node; wired ones keep theirs.
        self.to_node.service_cidr = config.service_cidr;
        if config.virtual_type() != self.datapath.configured {
            log::warn!(
                "reload: eniip_virtual_type {} takes effect at the next start; new pods still get {}",
                config.virtual_type(),
                self.datapath.effective
            );
        }
        log::info!(
            "reload: vSwitches {:?}, watermarks min {} max {}",
            node.vswitches,
            config.min_pool_size,
            config.max_pool_size
        );
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
                            ip6: i.ip6.map(|i| i.to_string()),
                            owner: i.owner.clone(),
                            primary: i.primary,
                            lost: i.invalid,
                        })
                        .collect(),
                }
            })
            .collect();
        let blocked = blocked_views(&snap.blocked_vswitches, now);
        PoolView {
            mode: Mode::EniMultiIp.to_string(),
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
                pending_ips: snap.pending_ips,
                enis,
                blocked_vswitches: blocked,
            }),
            metadata_endpoint: Some(self.common.ops.metadata_endpoint().to_string()),
            instance_id: Some(self.common.node.info.instance_id.clone()),
            datapath: Some(self.datapath.view()),
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
                    ipv6: ip.ip6.map(|i| i.to_string()),
                });
            }
        }
        rows
    }
}

/// Dual stack: which IPv6 partners the cloud lost (their pairs are reported lost with the IPv4).
fn log_ipv6_findings(report: &ReconcileReport, when: &str) {
    if !report.lost6.is_empty() {
        let list: Vec<String> = report.lost6.iter().map(|i| i.to_string()).collect();
        log::error!(
            "{when}: the cloud no longer has the IPv6 address(es) {} of pods: their pairs are lost",
            list.join(", ")
        );
    }
    if !report.removed_idle6.is_empty() {
        log::warn!(
            "{when}: {} idle IPv6 address(es) are gone from the cloud; new ones are assigned",
            report.removed_idle6.len()
        );
    }
}

/// Dual stack in shared ENI mode pairs every IPv4 of an ENI with an IPv6 of it: the instance
/// type must hold as many of each per ENI (Alibaba Cloud asks the same of dual-stack clusters).
fn dual_stack_limits(instance_type: &str, limits: &InstanceLimits) -> Result<()> {
    let v4 = limits.eni_private_ip_quantity;
    let v6 = limits.eni_ipv6_quantity.unwrap_or(0);
    if v6 == v4 {
        return Ok(());
    }
    Err(Error::new(
        Kind::InvalidConfig,
        format!(
            "ip_stack dual: instance type {instance_type} supports {v4} IPv4 and {v6} IPv6 addresses per ENI; \
             shared ENI mode needs an instance type whose IPv4 and IPv6 counts per ENI are the same \
             (every pod gets one of each from the same ENI); use such a type, or ip_stack ipv4"
        ),
    ))
}

/// The pool's knobs from the config and the instance type.
pub fn pool_config(config: &Config, node: &NodeFacts) -> PoolConfig {
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
        cooldown_ms: config.ip_cooldown.as_millis() as u64,
        dual: config.ip_stack == IpStack::Dual,
    }
}
