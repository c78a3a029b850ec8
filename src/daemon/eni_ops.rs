//! ENI operations of both ENI modes, run on the cloud workers: create + attach + wait for the
//! device, detach + delete, unassign with a check of what the cloud did, the listing of what is
//! attached, and the leaked-ENI clean-up. A shared ENI's device is readied with its route table
//! (`datapath::eni_device`) as soon as it is attached; an exclusive ENI's is only waited for.

use super::node::{Cloud, NodeInfo, cloud_err};
use crate::cloud::codes;
use crate::cloud::ecs::{EniFilter, EniInfo};
use crate::cloud::error::CloudError;
use crate::config::Config;
use crate::datapath::eni_device;
use crate::pool::shared_eni::{CloudFailure, EniFacts, EniV6};
use crate::store::InstanceLimits;
use crate::{Error, Result};
use ipnetwork::{Ipv4Network, Ipv6Network};
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Tags on every ENI we create: let a restart find ENIs leaked by a crash between create and
/// attach, and `terway node cleanup` / `terway eni list` find what terway made.
pub use crate::cloud::lifecycle::{TAG_CREATOR, TAG_NODE};

/// What a resync saw.
pub struct Observation {
    /// Our ENIs attached to this instance, each with its prepared route table.
    pub enis: Vec<(EniFacts, u32)>,
    /// Free addresses per vSwitch (for the `most` selection policy).
    pub vswitch_free: Vec<(String, u64)>,
    /// The vSwitches asked for were refreshed (false when none were asked for).
    pub vswitches_refreshed: bool,
}
pub const WORKERS: usize = 8;
const ATTACH_TIMEOUT: Duration = Duration::from_secs(60);
/// Every cloud job's deadline: its throttled calls are retried until then. Waiting for the
/// region's budget is part of the work at scale (thousands of nodes share it; at 2000 nodes a
/// cold start queues about 10 min of AssignPrivateIpAddresses); giving a call up would only
/// repeat it later, and a create given up after its ENI exists costs a clean-up.
pub const OP_DEADLINE: Duration = Duration::from_secs(1800);
/// The resync's deadline: it holds the node's pool (nothing else goes out while it runs), so
/// in a throttled region it yields soon and comes back later.
pub const RESYNC_DEADLINE: Duration = Duration::from_secs(120);
const DEVICE_TIMEOUT: Duration = Duration::from_secs(30);

/// The node as shared ENI mode needs it: its facts plus what new ENIs get (these follow reloads).
#[derive(Debug, Clone)]
pub struct NodeFacts {
    pub info: NodeInfo,
    pub limits: InstanceLimits,
    /// Candidate vSwitches for new ENIs, in config order.
    pub vswitches: Vec<String>,
    pub security_groups: Vec<String>,
    pub eni_tags: Vec<(String, String)>,
}

/// What an ENI's device is for on this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceUse {
    /// Shared ENI mode: up, with a route table for its pods' policy routing.
    PolicyTable,
    /// Shared ENI mode with ipvlan pods: as [`DeviceUse::PolicyTable`] (pods wired with veth
    /// before keep working) plus the node's ipvlan slave of the ENI.
    PolicyTableAndIpvlan,
    /// Exclusive ENI mode: it moves into a pod; only its arrival on the node is waited for.
    Exclusive,
}

/// A vSwitch's CIDR, free addresses and IPv6 CIDR (DescribeVSwitches).
type VSwitchFacts = (Ipv4Network, u64, Option<Ipv6Network>);

/// Everything a job needs; shared by all workers.
pub struct EniOps {
    pub node: NodeFacts,
    pub device: DeviceUse,
    /// `ip_stack: dual`: ENIs carry IPv6 too, and their facts say so.
    pub dual: bool,
    pub(super) cloud: Cloud,
    /// Per vSwitch: its CIDR, free addresses and IPv6 CIDR (DescribeVSwitches).
    cidrs: Mutex<BTreeMap<String, VSwitchFacts>>,
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
pub fn node_vswitches(config: &Config, node: &NodeInfo) -> Vec<String> {
    match config.vswitches.get(&node.zone_id) {
        Some(list) if !list.is_empty() => list.clone(),
        _ => vec![node.vswitch_id.clone()],
    }
}

impl EniOps {
    /// The ENI operations of this node; refuses a config without security groups.
    pub fn new(
        device: DeviceUse,
        config: &Config,
        info: NodeInfo,
        cloud: Cloud,
        limits: InstanceLimits,
    ) -> Result<EniOps> {
        if config.security_groups.is_empty() {
            return Err(Error::new(
                crate::Kind::InvalidConfig,
                "security_group (or security_groups) is required in ENIMultiIP mode: new ENIs join it",
            ));
        }
        let node = NodeFacts {
            vswitches: node_vswitches(config, &info),
            security_groups: config.security_groups.clone(),
            eni_tags: eni_tags(config, &info.instance_id),
            info,
            limits,
        };
        let ops = EniOps {
            node,
            device,
            dual: config.ip_stack == crate::config::IpStack::Dual,
            cloud,
            cidrs: Mutex::new(BTreeMap::new()),
        };
        ops.refresh_vswitches(&ops.node.vswitches.clone())?;
        Ok(ops)
    }

    pub fn metadata_endpoint(&self) -> &str {
        &self.cloud.metadata_endpoint
    }

    pub fn refresh_vswitches(&self, ids: &[String]) -> Result<()> {
        let list = self
            .cloud
            .ecs
            .describe_vswitches_in(&self.node.info.vpc_id, &self.node.info.zone_id, ids)
            .map_err(|e| cloud_err("DescribeVSwitches", e))?;
        let mut cidrs = self.cidrs.lock().unwrap_or_else(|p| p.into_inner());
        for v in list {
            cidrs.insert(v.id, (v.cidr, v.available_ips, v.ipv6_cidr));
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
            match self.cloud.meta.eni(&eni.mac) {
                Ok(m) => break m.gateway,
                Err(e) if !wait_for_metadata || Instant::now() > deadline => {
                    log::debug!("metadata for {} ({}): {e}", eni.id, eni.mac);
                    break Ipv4Addr::from(u32::from(cidr.broadcast()).saturating_sub(2));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        };
        let (ipv6s, v6) = match self.dual {
            true => (eni.ipv6.clone(), self.facts_v6(eni, wait_for_metadata)?),
            false => (Vec::new(), None),
        };
        Ok(EniFacts {
            id: eni.id.clone(),
            mac: eni.mac.clone(),
            vswitch_id: eni.vswitch_id.clone(),
            vswitch_cidr: cidr,
            gateway,
            primary_ip: eni.primary_ip,
            secondary_ips: eni.secondary_ips.clone(),
            ipv6s,
            v6,
        })
    }

    /// Dual stack: the IPv6 network and gateway of an ENI, `None` when its vSwitch has no
    /// IPv6. From metadata, polled like the IPv4 gateway (it lags the API); when it cannot tell,
    /// the vSwitch's IPv6 CIDR (API) with its third-last address as the gateway, as for IPv4.
    fn facts_v6(&self, eni: &EniInfo, wait_for_metadata: bool) -> Result<Option<EniV6>> {
        let deadline = Instant::now() + DEVICE_TIMEOUT;
        loop {
            match self.cloud.meta.eni_ipv6(&eni.mac) {
                Ok(m) => {
                    if let (Some(vswitch_cidr), Some(gateway)) = (m.vswitch_cidr, m.gateway) {
                        return Ok(Some(EniV6 {
                            vswitch_cidr,
                            gateway,
                        }));
                    }
                    if !wait_for_metadata || Instant::now() > deadline || eni.ipv6.is_empty() {
                        break;
                    }
                }
                Err(e) if !wait_for_metadata || Instant::now() > deadline => {
                    log::debug!("metadata for the IPv6 of {} ({}): {e}", eni.id, eni.mac);
                    break;
                }
                Err(_) => {}
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let known = {
            let cidrs = self.cidrs.lock().unwrap_or_else(|p| p.into_inner());
            cidrs.get(&eni.vswitch_id).and_then(|c| c.2)
        };
        Ok(known.map(|vswitch_cidr| {
            let host_bits = 128 - u32::from(vswitch_cidr.prefix());
            let last = u128::from(vswitch_cidr.network())
                | u128::MAX.checked_shr(128 - host_bits).unwrap_or(0);
            EniV6 {
                vswitch_cidr,
                gateway: Ipv6Addr::from(last - 2),
            }
        }))
    }

    /// Readies an attached ENI's device: its route table in shared mode (0 in exclusive mode,
    /// where a `fresh` ENI's device is waited for: one held by a pod is not on the node).
    fn ready(&self, facts: &EniFacts, fresh: bool) -> Result<u32> {
        match self.device {
            DeviceUse::PolicyTable | DeviceUse::PolicyTableAndIpvlan => eni_device::prepare_dual(
                &facts.id,
                &facts.mac,
                facts.gateway,
                facts.v6.map(|v6| v6.gateway),
                self.device == DeviceUse::PolicyTableAndIpvlan,
            ),
            DeviceUse::Exclusive if fresh => eni_device::wait(&facts.id, &facts.mac).map(|_| 0),
            DeviceUse::Exclusive => Ok(0),
        }
    }

    /// At start: our ENIs listed once, the leaked ones (unattached) deleted, the attached ones
    /// observed. Nothing is in flight yet, so an unattached ENI of ours is not one being created.
    pub fn observe_at_start(&self) -> Result<Vec<(EniFacts, u32)>> {
        let listed = |e: Error| {
            cloud_err(
                &format!("list the ENIs attached to {}", self.node.info.instance_id),
                e,
            )
        };
        let ours = self.list_ours().map_err(listed)?;
        self.delete_leaked_from(&ours);
        self.observe_from(ours).map_err(listed)
    }

    /// A resync (both modes): our ENIs listed once, the leaked ones deleted, the free counts of
    /// `vswitches` refreshed (none: no call), the attached ones observed. Runs only while
    /// nothing else is in flight (and nothing new goes out until it reports), so an unattached
    /// ENI of ours is not one being created.
    pub fn observe_all(&self, vswitches: &[String]) -> Result<Observation> {
        let ours = self.list_ours()?;
        self.delete_leaked_from(&ours);
        let vswitches_refreshed = !vswitches.is_empty()
            && self
                .refresh_vswitches(vswitches)
                .inspect_err(|e| log::warn!("resync: {e}"))
                .is_ok();
        Ok(Observation {
            enis: self.observe_from(ours)?,
            vswitch_free: self.vswitch_free(),
            vswitches_refreshed,
        })
    }

    /// Every ENI created for this node, attached or not, in one listing (by our tag): the
    /// resync finds both the leaked ones and the attached ones in it, one call instead of two.
    pub fn list_ours(&self) -> Result<Vec<EniInfo>> {
        self.cloud
            .ecs
            .describe_enis(&EniFilter {
                tags: vec![(TAG_NODE.to_string(), self.node.info.instance_id.clone())],
                ..EniFilter::default()
            })
            .map_err(|e| cloud_err("DescribeNetworkInterfaces", e))
    }

    /// The secondary ENIs of a listing of ours ([`EniOps::list_ours`]) that are attached to this
    /// instance, each with its route table prepared.
    pub fn observe_from(&self, enis: Vec<EniInfo>) -> Result<Vec<(EniFacts, u32)>> {
        let mut out = Vec::new();
        for mut eni in enis {
            if eni.instance_id.as_deref() != Some(self.node.info.instance_id.as_str()) {
                continue;
            }
            if eni.eni_type == "Primary"
                || eni.mac.eq_ignore_ascii_case(&self.node.info.primary_mac)
            {
                continue;
            }
            // Only ENIs we created for this node: a user's own ENI, a trunk or another tool's
            // ENI is never handed to pods, rewired or deleted.
            let ours = eni
                .tags
                .iter()
                .any(|(k, v)| k == TAG_NODE && *v == self.node.info.instance_id);
            if eni.eni_type != "Secondary" || !ours {
                log::debug!("not ours, left alone: {} ({})", eni.id, eni.eni_type);
                continue;
            }
            // A crash during create leaves an ENI attaching: wait for it rather than leak it.
            if eni.status == "Attaching" {
                eni = self
                    .cloud
                    .ecs
                    .wait_eni_status(&eni.id, "InUse", ATTACH_TIMEOUT)
                    .map_err(|e| cloud_err(&format!("wait for {} to attach", eni.id), e))?;
            }
            if eni.status != "InUse" {
                continue;
            }
            let facts = self.facts(&eni, false)?;
            let table = self.ready(&facts, false)?;
            out.push((facts, table));
        }
        Ok(out)
    }

    /// Deletes the `Available` ENIs of a listing of ours: leaks of a crash between create and
    /// attach (or during a delete). Only called when no create is in flight. A `Deleting` ENI is
    /// already on its way out and is not asked again.
    pub fn delete_leaked_from(&self, ours: &[EniInfo]) {
        for eni in ours.iter().filter(|e| e.status == "Available") {
            match self.cloud.ecs.delete_eni(&eni.id) {
                Ok(()) => {
                    crate::metrics::global().findings(crate::metrics::finding::LEAKED_ENI, 1);
                    log::info!("deleted leaked ENI {} (created, never attached)", eni.id)
                }
                Err(e) => log::warn!("delete leaked ENI {}: {e}", eni.id),
            }
        }
    }

    pub(super) fn create_eni(
        &self,
        op: u64,
        vswitch_id: &str,
        secondary_count: u32,
        ipv6_count: u32,
        n: &NodeFacts,
    ) -> std::result::Result<(EniFacts, u32), CloudFailure> {
        // One token per planned op: a retried create returns the same ENI instead of a second one.
        let token = format!(
            "terway-{}-{op}-{}",
            n.info.instance_id,
            crate::clock::now_ms()
        );
        let eni = self
            .cloud
            .ecs
            .create_eni_dual(
                vswitch_id,
                &n.security_groups,
                secondary_count,
                ipv6_count,
                &n.eni_tags,
                &format!("terway pod ENI of {}", n.info.instance_id),
                &token,
            )
            .map_err(to_failure)?;
        let attached = self.attach(&eni.id).and_then(|_| self.wait_attached(&eni));
        let ready = attached
            .map_err(to_failure)
            .and_then(|(info, in_metadata)| {
                // Metadata that did not list the ENI while it attached is not waited for again.
                let facts = self.facts(&info, in_metadata).map_err(internal)?;
                let table = self.ready(&facts, true).map_err(internal)?;
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

    /// Waits until a just attached ENI is InUse: first for metadata to list it (a local call,
    /// free; it lists an ENI once attached), then one DescribeNetworkInterfaces confirms. Only
    /// when metadata does not show it within [`DEVICE_TIMEOUT`], or the cloud does not say
    /// InUse yet, is the status polled (for the rest of [`ATTACH_TIMEOUT`]): at scale those
    /// polls compete for the region's DescribeNetworkInterfaces budget with every node.
    /// Also says whether metadata listed the ENI.
    fn wait_attached(&self, eni: &EniInfo) -> std::result::Result<(EniInfo, bool), CloudError> {
        let start = Instant::now();
        let in_metadata = loop {
            if self.cloud.meta.eni(&eni.mac).is_ok() {
                break true;
            }
            if start.elapsed() >= DEVICE_TIMEOUT {
                break false;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let left = ATTACH_TIMEOUT.saturating_sub(start.elapsed());
        let info = self.cloud.ecs.wait_eni_status(&eni.id, "InUse", left)?;
        Ok((info, in_metadata))
    }

    /// Attach; when the answer is lost and the retry is refused, the ENI's state tells whether
    /// the first call went through.
    fn attach(&self, eni_id: &str) -> std::result::Result<(), CloudError> {
        let e = match self
            .cloud
            .ecs
            .attach_eni(&self.node.info.instance_id, eni_id)
        {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        match self.eni_status(eni_id) {
            Ok(Some((status, Some(inst))))
                if inst == self.node.info.instance_id
                    && (status == "Attaching" || status == "InUse") =>
            {
                Ok(())
            }
            _ => Err(e),
        }
    }

    /// The ENI's status and instance, `None` when the cloud does not have it. A failed look
    /// (throttled, say) is an error, never "gone": an attached ENI taken for gone leaks.
    fn eni_status(
        &self,
        eni_id: &str,
    ) -> std::result::Result<Option<(String, Option<String>)>, CloudError> {
        let list = self.cloud.ecs.describe_enis(&EniFilter {
            eni_ids: vec![eni_id.to_string()],
            ..EniFilter::default()
        })?;
        Ok(list
            .into_iter()
            .find(|e| e.id == eni_id)
            .map(|e| (e.status, e.instance_id)))
    }

    /// Detach (wait until Available) and delete. Once it is detached the ENI is gone for the
    /// pool whatever happens next: a leftover Available ENI of ours is deleted by the resync.
    /// The delete itself is asynchronous in the cloud: an ENI that is `Deleting` (or already
    /// gone) counts as deleted, and is never asked to be deleted again.
    pub(super) fn delete_eni(&self, eni_id: &str) -> std::result::Result<(), CloudFailure> {
        // Not knowing where it stands, nothing is done: the pool retries the delete later.
        match self.eni_status(eni_id).map_err(to_failure)? {
            None => return Ok(()),
            Some((status, _)) if status == "Deleting" => return Ok(()),
            Some((status, _)) if status == "Available" => {}
            Some((status, _)) if status == "Detaching" => {}
            Some(_) => {
                if let Err(e) = self
                    .cloud
                    .ecs
                    .detach_eni(&self.node.info.instance_id, eni_id)
                {
                    // A lost answer: the retry is refused, but the first call may have worked.
                    match self.eni_status(eni_id) {
                        Ok(Some((st, _))) if st == "Detaching" || st == "Available" => {}
                        _ => return Err(to_failure(e)),
                    }
                }
            }
        }
        let gone = self
            .cloud
            .ecs
            .wait_eni_status(eni_id, "Available", ATTACH_TIMEOUT)
            .and_then(|_| self.cloud.ecs.delete_eni(eni_id));
        if let Err(e) = gone {
            // The wait ends in NotFound once a delete went through; a refused delete may
            // follow one whose answer was lost: what the cloud shows now decides.
            match self.eni_status(eni_id) {
                Ok(None) => {}
                Ok(Some((status, _))) if status == "Deleting" => {}
                _ => log::warn!(
                    "ENI {eni_id} is detached but not deleted yet ({e}); the resync deletes it"
                ),
            }
        }
        Ok(())
    }

    /// Unassign; when it fails, the ENI's addresses tell what the cloud actually did (an
    /// answer lost after the work was done must not put the addresses back into use).
    pub(super) fn unassign(
        &self,
        eni_id: &str,
        ips: &[Ipv4Addr],
    ) -> std::result::Result<(), CloudFailure> {
        let e = match self.cloud.ecs.unassign_ips(eni_id, ips) {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        let still: Option<Vec<Ipv4Addr>> = self
            .cloud
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
                self.cloud
                    .ecs
                    .unassign_ips(eni_id, &rest)
                    .map_err(to_failure)
            }
            None => Err(to_failure(e)),
        }
    }
}

/// A cloud error as the pools hear it: one spelling per meaning (`codes::normalize`).
pub(super) fn to_failure(e: CloudError) -> CloudFailure {
    CloudFailure {
        code: codes::normalize(&e.code).to_string(),
        message: e.message,
    }
}

fn internal(e: Error) -> CloudFailure {
    CloudFailure {
        code: "Terway.Internal".into(),
        message: e.msg,
    }
}
