//! The slow side of shared ENI mode: node facts at start, cloud worker threads that carry out the
//! pool's operations (create + attach + wait, assign, unassign, detach + delete), the resync
//! that lists what is attached, and the kernel preparation of each ENI (device by MAC, route
//! table). Workers report back to the event loop through the daemon's channel.

use super::Msg;
use super::eni::{CloudDone, Observation};
use crate::cloud::credentials::{CredentialProvider, CredentialSource};
use crate::cloud::ecs::{CloudConfig, Ecs, EniFilter, EniInfo};
use crate::cloud::error::CloudError;
use crate::cloud::metadata::Metadata;
use crate::cloud::openapi::RetryPolicy;
use crate::config::Config;
use crate::datapath::policy;
use crate::netlink::{self, Netlink};
use crate::pool::eni::{CloudFailure, CloudOp, CloudOutcome, EniFacts};
use crate::store::{EniPoolState, InstanceLimits};
use crate::{Error, Kind, Result};
use ipnetwork::Ipv4Network;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Tag on every ENI we create: lets a restart find ENIs leaked by a crash between create and attach.
pub const TAG_CREATOR: (&str, &str) = ("creator", "terway");
pub const TAG_NODE: &str = "terway.node";
const WORKERS: usize = 8;
const ATTACH_TIMEOUT: Duration = Duration::from_secs(60);
const DEVICE_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
pub struct NodeFacts {
    pub instance_id: String,
    pub instance_type: String,
    pub region_id: String,
    pub zone_id: String,
    pub vswitch_id: String,
    pub primary_mac: String,
    pub limits: InstanceLimits,
    /// Candidate vSwitches for new ENIs, in config order.
    pub vswitches: Vec<String>,
    pub security_groups: Vec<String>,
    pub eni_tags: Vec<(String, String)>,
}

pub enum Job {
    /// A pool op, with the node facts as of now (security groups and tags follow reloads).
    Op(CloudOp, Arc<NodeFacts>),
    /// A resync; the vSwitches whose free-address counts to refresh (the list may have changed
    /// by a reload since the workers started).
    Observe(Vec<String>),
}

/// Everything a worker needs; shared by all workers.
pub struct CloudCtx {
    pub node: NodeFacts,
    pub metadata_endpoint: String,
    ecs: Ecs,
    meta: Metadata,
    cidrs: Mutex<BTreeMap<String, (Ipv4Network, u64)>>,
}

/// Tags for new ENIs: the config's plus ours, which mark an ENI as created for this node.
pub fn eni_tags(config: &Config, instance_id: &str) -> Vec<(String, String)> {
    config
        .eni_tags
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .chain([
            (TAG_CREATOR.0.to_string(), TAG_CREATOR.1.to_string()),
            (TAG_NODE.to_string(), instance_id.to_string()),
        ])
        .collect()
}

/// The vSwitches new ENIs may use: the config's list for the node's zone, else the node's own.
pub fn node_vswitches(config: &Config, node: &NodeFacts) -> Vec<String> {
    match config.vswitches.get(&node.zone_id) {
        Some(list) if !list.is_empty() => list.clone(),
        _ => vec![node.vswitch_id.clone()],
    }
}

fn cloud_err(what: &str, e: impl std::fmt::Display) -> Error {
    Error::new(Kind::Cloud, format!("{what}: {e}"))
}

impl CloudCtx {
    pub fn connect(config: &Config, cached: Option<&EniPoolState>) -> Result<CloudCtx> {
        let metadata_endpoint = config
            .metadata_endpoint
            .clone()
            .unwrap_or_else(|| "http://100.100.100.200".into());
        let meta = Metadata::new(&metadata_endpoint);
        let m = |what: &str| cloud_err(&format!("metadata {what} from {metadata_endpoint}"), "");
        let instance_id = meta
            .instance_id()
            .map_err(|e| m("instance-id").context(e))?;
        let instance_type = meta
            .instance_type()
            .map_err(|e| m("instance/instance-type").context(e))?;
        let region_id = match &config.region_id {
            Some(r) => r.clone(),
            None => meta.region_id().map_err(|e| m("region-id").context(e))?,
        };
        let zone_id = meta.zone_id().map_err(|e| m("zone-id").context(e))?;
        let vswitch_id = meta.vswitch_id().map_err(|e| m("vswitch-id").context(e))?;
        let primary_mac = meta.primary_mac().map_err(|e| m("mac").context(e))?;
        let source = if let (Some(ak), Some(sk)) = (&config.access_key, &config.access_secret) {
            CredentialSource::Static {
                access_key: ak.clone(),
                access_secret: sk.0.clone(),
            }
        } else if let Some(p) = &config.credential_path {
            CredentialSource::File(p.clone())
        } else {
            CredentialSource::RamRole
        };
        let creds = Arc::new(CredentialProvider::new(source, Some(meta.clone())));
        let ecs = Ecs::new(
            CloudConfig {
                ecs_endpoint: config
                    .ecs_endpoint
                    .clone()
                    .unwrap_or_else(|| format!("https://ecs-vpc.{region_id}.aliyuncs.com")),
                vpc_endpoint: config
                    .vpc_endpoint
                    .clone()
                    .unwrap_or_else(|| format!("https://vpc-vpc.{region_id}.aliyuncs.com")),
                region_id: region_id.clone(),
                retry: RetryPolicy {
                    max_attempts: 6,
                    base_delay: Duration::from_millis(200),
                    max_delay: Duration::from_secs(5),
                },
                rate_limits: Vec::new(),
            },
            creds,
        )
        .map_err(|e| cloud_err("cloud client", e))?;
        let limits = match cached.filter(|c| c.instance_type == instance_type) {
            Some(EniPoolState {
                limits: Some(l), ..
            }) => *l,
            _ => {
                let types = ecs
                    .describe_instance_types(std::slice::from_ref(&instance_type))
                    .map_err(|e| cloud_err("DescribeInstanceTypes", e))?;
                let t = types
                    .into_iter()
                    .find(|t| t.id == instance_type)
                    .ok_or_else(|| {
                        cloud_err(
                            "DescribeInstanceTypes",
                            format!("the cloud does not know instance type {instance_type}"),
                        )
                    })?;
                InstanceLimits {
                    eni_quantity: t.eni_quantity,
                    eni_private_ip_quantity: t.eni_private_ip_quantity,
                    eni_total_quantity: t.eni_total_quantity,
                }
            }
        };
        if config.security_groups.is_empty() {
            return Err(Error::new(
                Kind::InvalidConfig,
                "security_group (or security_groups) is required in ENIMultiIP mode: new ENIs join it",
            ));
        }
        let mut node = NodeFacts {
            instance_id: instance_id.clone(),
            instance_type,
            region_id,
            zone_id,
            vswitch_id,
            primary_mac,
            limits,
            vswitches: Vec::new(),
            security_groups: config.security_groups.clone(),
            eni_tags: eni_tags(config, &instance_id),
        };
        node.vswitches = node_vswitches(config, &node);
        let ctx = CloudCtx {
            node,
            metadata_endpoint,
            ecs,
            meta,
            cidrs: Mutex::new(BTreeMap::new()),
        };
        ctx.refresh_vswitches(&ctx.node.vswitches.clone())?;
        Ok(ctx)
    }

    pub fn refresh_vswitches(&self, ids: &[String]) -> Result<()> {
        let list = self
            .ecs
            .describe_vswitches(ids)
            .map_err(|e| cloud_err("DescribeVSwitches", e))?;
        let mut cidrs = self.cidrs.lock().unwrap_or_else(|p| p.into_inner());
        for v in list {
            cidrs.insert(v.id, (v.cidr, v.available_ips));
        }
        Ok(())
    }

    /// Free addresses per known vSwitch (for the `most` selection policy).
    pub fn vswitch_free(&self) -> Vec<(String, u64)> {
        let cidrs = self.cidrs.lock().unwrap_or_else(|p| p.into_inner());
        cidrs.iter().map(|(k, v)| (k.clone(), v.1)).collect()
    }

    fn vswitch_cidr(&self, id: &str) -> Result<Ipv4Network> {
        let known = {
            let cidrs = self.cidrs.lock().unwrap_or_else(|p| p.into_inner());
            cidrs.get(id).map(|c| c.0)
        };
        if let Some(c) = known {
            return Ok(c);
        }
        self.refresh_vswitches(&[id.to_string()])?;
        let cidrs = self.cidrs.lock().unwrap_or_else(|p| p.into_inner());
        cidrs
            .get(id)
            .map(|c| c.0)
            .ok_or_else(|| cloud_err("DescribeVSwitches", format!("unknown vSwitch {id}")))
    }

    /// The ENI as the pool sees it. The gateway comes from metadata (it lags the API, so poll);
    /// Alibaba's vSwitch gateway is the third-last address when metadata cannot tell.
    fn facts(&self, eni: &EniInfo, wait_for_metadata: bool) -> Result<EniFacts> {
        let cidr = self.vswitch_cidr(&eni.vswitch_id)?;
        let deadline = Instant::now() + DEVICE_TIMEOUT;
        let gateway = loop {
            match self.meta.eni(&eni.mac) {
                Ok(m) => break m.gateway,
                Err(e) if !wait_for_metadata || Instant::now() > deadline => {
                    log::debug!("metadata for {} ({}): {e}", eni.id, eni.mac);
                    break Ipv4Addr::from(u32::from(cidr.broadcast()).saturating_sub(2));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        };
        Ok(EniFacts {
            id: eni.id.clone(),
            mac: eni.mac.clone(),
            vswitch_id: eni.vswitch_id.clone(),
            vswitch_cidr: cidr,
            gateway,
            primary_ip: eni.primary_ip,
            secondary_ips: eni.secondary_ips.clone(),
        })
    }

    /// Secondary ENIs attached to this instance, each with its route table prepared.
    pub fn observe(&self) -> Result<Vec<(EniFacts, u32)>> {
        let enis = self
            .ecs
            .describe_enis(&EniFilter {
                instance_id: Some(self.node.instance_id.clone()),
                eni_ids: Vec::new(),
                status: None,
                tags: Vec::new(),
            })
            .map_err(|e| cloud_err("DescribeNetworkInterfaces", e))?;
        let mut out = Vec::new();
        for mut eni in enis {
            if eni.eni_type == "Primary" || eni.mac.eq_ignore_ascii_case(&self.node.primary_mac) {
                continue;
            }
            // Only ENIs we created for this node: a user's own ENI, a trunk or another tool's
            // ENI is never handed to pods, rewired or deleted.
            let ours = eni
                .tags
                .iter()
                .any(|(k, v)| k == TAG_NODE && *v == self.node.instance_id);
            if eni.eni_type != "Secondary" || !ours {
                log::debug!("not ours, left alone: {} ({})", eni.id, eni.eni_type);
                continue;
            }
            // A crash during create leaves an ENI attaching: wait for it rather than leak it.
            if eni.status == "Attaching" {
                eni = self
                    .ecs
                    .wait_eni_status(&eni.id, "InUse", ATTACH_TIMEOUT)
                    .map_err(|e| cloud_err(&format!("wait for {} to attach", eni.id), e))?;
            }
            if eni.status != "InUse" {
                continue;
            }
            let facts = self.facts(&eni, false)?;
            let table = prepare_device(&facts)?;
            out.push((facts, table));
        }
        Ok(out)
    }

    /// ENIs we created for this node that are not attached: leaks of a crash between create
    /// and attach (or during a delete). Only called when no create is in flight.
    pub fn delete_leaked_enis(&self) {
        let leaked = self.ecs.describe_enis(&EniFilter {
            instance_id: None,
            eni_ids: Vec::new(),
            status: Some("Available".into()),
            tags: vec![(TAG_NODE.to_string(), self.node.instance_id.clone())],
        });
        match leaked {
            Ok(list) => {
                for eni in list {
                    match self.ecs.delete_eni(&eni.id) {
                        Ok(()) => {
                            log::info!("deleted leaked ENI {} (created, never attached)", eni.id)
                        }
                        Err(e) => log::warn!("delete leaked ENI {}: {e}", eni.id),
                    }
                }
            }
            Err(e) => log::warn!("list leaked ENIs: {e}"),
        }
    }

    fn execute(&self, op: CloudOp, node: &NodeFacts) -> CloudDone {
        match op {
            CloudOp::CreateEni {
                op,
                vswitch_id,
                secondary_count,
            } => match self.create_eni(op, &vswitch_id, secondary_count, node) {
                Ok((eni, table)) => CloudDone::Op {
                    table: Some((eni.id.clone(), table)),
                    outcome: CloudOutcome::EniCreated { op, eni },
                },
                Err(failure) => failed(op, failure),
            },
            CloudOp::AssignIps { op, eni_id, count } => match self.ecs.assign_ips(&eni_id, count) {
                Ok(ips) => CloudDone::Op {
                    outcome: CloudOutcome::IpsAssigned { op, eni_id, ips },
                    table: None,
                },
                Err(e) => failed(op, to_failure(e)),
            },
            CloudOp::UnassignIps { op, eni_id, ips } => match self.unassign(&eni_id, &ips) {
                Ok(()) => CloudDone::Op {
                    outcome: CloudOutcome::IpsUnassigned { op, eni_id, ips },
                    table: None,
                },
                Err(failure) => failed(op, failure),
            },
            CloudOp::DeleteEni { op, eni_id } => match self.delete_eni(&eni_id) {
                Ok(()) => CloudDone::Op {
                    outcome: CloudOutcome::EniDeleted { op, eni_id },
                    table: None,
                },
                Err(failure) => failed(op, failure),
            },
        }
    }

    fn create_eni(
        &self,
        op: u64,
        vswitch_id: &str,
        secondary_count: u32,
        n: &NodeFacts,
    ) -> std::result::Result<(EniFacts, u32), CloudFailure> {
        // One token per planned op: a retried create returns the same ENI instead of a second one.
        let token = format!("terway-{}-{op}-{}", n.instance_id, super::now_ms());
        let eni = self
            .ecs
            .create_eni(
                vswitch_id,
                &n.security_groups,
                secondary_count,
                &n.eni_tags,
                &format!("terway pod ENI of {}", n.instance_id),
                &token,
            )
            .map_err(to_failure)?;
        let attached = self
            .attach(&eni.id)
            .and_then(|_| self.ecs.wait_eni_status(&eni.id, "InUse", ATTACH_TIMEOUT));
        let ready = attached.map_err(to_failure).and_then(|info| {
            let facts = self.facts(&info, true).map_err(internal)?;
            let table = prepare_device(&facts).map_err(internal)?;
            Ok((facts, table))
        });
        match ready {
            Ok((facts, table)) => {
                log::info!(
                    "ENI {} ({}) attached in {vswitch_id} with {} address(es), route table {table}",
                    facts.id,
                    facts.mac,
                    1 + facts.secondary_ips.len()
                );
                Ok((facts, table))
            }
            Err(failure) => {
                // Do not leak it: an ENI the pool does not know still holds vSwitch addresses
                // and counts against the instance's ENI quota.
                if let Err(d) = self.delete_eni(&eni.id) {
                    log::warn!(
                        "remove {} after a failed create: {}: {} (the resync retries)",
                        eni.id,
                        d.code,
                        d.message
                    );
                }
                Err(failure)
            }
        }
    }

    /// Attach; when the answer is lost and the retry is refused, the ENI's state tells whether
    /// the first call went through.
    fn attach(&self, eni_id: &str) -> std::result::Result<(), CloudError> {
        let e = match self.ecs.attach_eni(&self.node.instance_id, eni_id) {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        match self.eni_status(eni_id) {
            Some((status, Some(inst)))
                if inst == self.node.instance_id
                    && (status == "Attaching" || status == "InUse") =>
            {
                Ok(())
            }
            _ => Err(e),
        }
    }

    fn eni_status(&self, eni_id: &str) -> Option<(String, Option<String>)> {
        let list = self
            .ecs
            .describe_enis(&EniFilter {
                eni_ids: vec![eni_id.to_string()],
                ..EniFilter::default()
            })
            .ok()?;
        list.into_iter()
            .find(|e| e.id == eni_id)
            .map(|e| (e.status, e.instance_id))
    }

    /// Detach (wait until Available) and delete. Once it is detached the ENI is gone for the
    /// pool whatever happens next: a leftover Available ENI of ours is deleted by the resync.
    fn delete_eni(&self, eni_id: &str) -> std::result::Result<(), CloudFailure> {
        match self.eni_status(eni_id) {
            None => {}
            Some((status, _)) if status == "Available" => {}
            Some((status, _)) if status == "Detaching" => {}
            Some(_) => {
                if let Err(e) = self.ecs.detach_eni(&self.node.instance_id, eni_id) {
                    // A lost answer: the retry is refused, but the first call may have worked.
                    match self.eni_status(eni_id) {
                        Some((st, _)) if st == "Detaching" || st == "Available" => {}
                        _ => return Err(to_failure(e)),
                    }
                }
            }
        }
        let gone = self
            .ecs
            .wait_eni_status(eni_id, "Available", ATTACH_TIMEOUT)
            .map_err(|e| e.to_string())
            .and_then(|_| self.ecs.delete_eni(eni_id).map_err(|e| e.to_string()));
        if let Err(e) = gone {
            log::warn!("ENI {eni_id} is detached but not deleted yet ({e}); the resync deletes it");
        }
        Ok(())
    }

    /// Unassign; when it fails, the ENI's addresses tell what the cloud actually did (an
    /// answer lost after the work was done must not put the addresses back into use).
    fn unassign(&self, eni_id: &str, ips: &[Ipv4Addr]) -> std::result::Result<(), CloudFailure> {
        let e = match self.ecs.unassign_ips(eni_id, ips) {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        let still: Option<Vec<Ipv4Addr>> = self
            .ecs
            .describe_enis(&EniFilter {
                eni_ids: vec![eni_id.to_string()],
                ..EniFilter::default()
            })
            .ok()
            .and_then(|l| l.into_iter().find(|x| x.id == eni_id))
            .map(|x| x.secondary_ips);
        match still {
            Some(left) if ips.iter().all(|ip| !left.contains(ip)) => Ok(()),
            Some(left) => {
                // Partly done: finish the rest once, else report the failure honestly.
                let rest: Vec<Ipv4Addr> =
                    ips.iter().copied().filter(|i| left.contains(i)).collect();
                self.ecs.unassign_ips(eni_id, &rest).map_err(to_failure)
            }
            None => Err(to_failure(e)),
        }
    }
}

/// The pool speaks the documented codes; a full ENI is also reported as
/// `InvalidOperation.Ipv4CountExceeded` by the API, which means the same to the pool.
fn to_failure(e: CloudError) -> CloudFailure {
    let code = match e.code.as_str() {
        "InvalidOperation.Ipv4CountExceeded" => "QuotaExceeded.PrivateIpAddress".to_string(),
        _ => e.code,
    };
    CloudFailure {
        code,
        message: e.message,
    }
}

fn internal(e: Error) -> CloudFailure {
    CloudFailure {
        code: "Terway.Internal".into(),
        message: e.msg,
    }
}

fn failed(op: u64, failure: CloudFailure) -> CloudDone {
    CloudDone::Op {
        outcome: CloudOutcome::Failed { op, failure },
        table: None,
    }
}

/// Finds the ENI's device by MAC (it appears a moment after attach), brings it up and prepares
/// its route table. Runs in the daemon's (the node's) namespace.
fn prepare_device(eni: &EniFacts) -> Result<u32> {
    let mac = netlink::parse_mac(&eni.mac)?;
    let mut nl = Netlink::open()?;
    let deadline = Instant::now() + DEVICE_TIMEOUT;
    let link = loop {
        if let Some(l) = netlink::find_link_by_mac(&mut nl, &mac)? {
            break l;
        }
        if Instant::now() > deadline {
            return Err(Error::new(
                Kind::Datapath,
                format!(
                    "ENI {} is attached but no device with MAC {} appeared within {} s",
                    eni.id,
                    eni.mac,
                    DEVICE_TIMEOUT.as_secs()
                ),
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    policy::prepare_eni_table(&mut nl, link.index, eni.gateway)
        .map_err(|e| e.context(format!("ENI {} ({})", eni.id, link.name)))
}

/// Starts the worker threads; returns the job queue.
pub fn spawn_workers(ctx: CloudCtx, tx: Sender<Msg>) -> Result<Sender<Job>> {
    let (job_tx, job_rx) = mpsc::channel::<Job>();
    let job_rx = Arc::new(Mutex::new(job_rx));
    let ctx = Arc::new(ctx);
    for i in 0..WORKERS {
        let (ctx, rx, tx) = (ctx.clone(), job_rx.clone(), tx.clone());
        std::thread::Builder::new()
            .name(format!("cloud-{i}"))
            .spawn(move || worker(&ctx, &rx, &tx))
            .map_err(|e| Error::new(Kind::Internal, format!("spawn cloud worker: {e}")))?;
    }
    Ok(job_tx)
}

fn worker(ctx: &CloudCtx, rx: &Mutex<Receiver<Job>>, tx: &Sender<Msg>) {
    loop {
        let job = {
            let guard = rx.lock().unwrap_or_else(|p| p.into_inner());
            guard.recv()
        };
        let Ok(job) = job else { return };
        let done = match job {
            // A panic is a bug, but it must not leave the op in flight for ever.
            Job::Op(op, node) => {
                let id = op.id();
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| ctx.execute(op, &node)))
                    .unwrap_or_else(|_| {
                        failed(
                            id,
                            CloudFailure {
                                code: "Terway.Internal".into(),
                                message: "the cloud worker panicked (a bug; see the log)".into(),
                            },
                        )
                    })
            }
            Job::Observe(vswitches) => {
                // Dispatched only while nothing else is in flight (and nothing new goes out
                // until it reports), so an unattached ENI of ours is not one being created.
                let observed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    ctx.delete_leaked_enis();
                    if let Err(e) = ctx.refresh_vswitches(&vswitches) {
                        log::warn!("resync: {e}");
                    }
                    let enis = ctx.observe().map_err(|e| e.msg)?;
                    Ok(Observation {
                        enis,
                        vswitch_free: ctx.vswitch_free(),
                    })
                }));
                CloudDone::Observed(
                    observed.unwrap_or_else(|_| Err("resync panicked (a bug)".into())),
                )
            }
        };
        if tx.send(Msg::Cloud(done)).is_err() {
            return;
        }
    }
}
