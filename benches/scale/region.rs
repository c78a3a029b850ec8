//! The simulated region: the emulator's own cloud model (`terway::emulate::model`), driven in
//! process, behind region-wide per-action rate limits.
//!
//! The model is sharded by vSwitch: every node of a shard lives on that shard's one vSwitch, so
//! ENIs, instances and addresses never cross shards and each shard answers exactly as one big
//! model would; only the rate limits are region-wide, and they sit in front of every shard. (One
//! model of 2000 instances would rescan every ENI on each call.)

use crate::rng::{Latency, Rng};
use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::time::Duration;
use terway::cloud::lifecycle::{TAG_CREATOR, TAG_NODE};
use terway::cloud::ratelimit::{DEFAULT_LIMITS, DEFAULT_OTHER, TokenBucket};
use terway::emulate::config::{
    AccessKeyCfg, EmuConfig, InstanceCfg, InstanceTypeCfg, Timing, VSwitchCfg,
};
use terway::emulate::errors::{self, ApiError};
use terway::emulate::model::{Eni, EniStatus, EniType, Model};
use terway::emulate::model_eni::{CreateEni, EniFilter};

pub const INSTANCE_TYPE: &str = "ecs.g7.4xlarge";
pub const SECURITY_GROUP: &str = "sg-sim0000000000000001";
const ZONE: &str = "cn-sim-a";

/// Region-wide budgets: one token bucket per action shared by every node. A call finding no
/// token is refused (`Throttling.User`) and uses no budget, as the real gateway does.
#[derive(Debug, Clone)]
pub struct RegionLimiter {
    limits: HashMap<String, u32>,
    other: u32,
    buckets: HashMap<String, TokenBucket>,
    /// Instead of the buckets: at most limit/60 calls in any second, as the emulator's
    /// `faults.rate_limits` count (for comparing with a run of real daemons).
    windows: Option<HashMap<String, std::collections::VecDeque<u64>>>,
}

impl RegionLimiter {
    /// Upstream Terway's per-minute budgets, with `overrides` (action or `*`, calls per minute;
    /// 0 = unlimited) on top, as the daemon's client-side limiter reads them.
    pub fn new(overrides: &[(String, u32)]) -> RegionLimiter {
        let mut limits: HashMap<String, u32> = DEFAULT_LIMITS
            .iter()
            .map(|(a, n)| (a.to_string(), *n))
            .collect();
        let mut other = DEFAULT_OTHER;
        for (a, n) in overrides {
            if a == "*" {
                other = *n;
            } else {
                limits.insert(a.clone(), *n);
            }
        }
        RegionLimiter {
            limits,
            other,
            buckets: HashMap::new(),
            windows: None,
        }
    }

    /// Per-second windows as the emulator enforces them (budgets per minute / 60).
    pub fn per_second_windows(mut self) -> RegionLimiter {
        self.windows = Some(HashMap::new());
        self
    }

    pub fn limit_of(&self, action: &str) -> u32 {
        self.limits.get(action).copied().unwrap_or(self.other)
    }

    /// Whether a call of `action` at `now_ms` gets through; takes its token when it does.
    pub fn admit(&mut self, action: &str, now_ms: u64) -> bool {
        let limit = self.limit_of(action);
        if limit == 0 {
            return true;
        }
        if let Some(windows) = &mut self.windows {
            let w = windows.entry(action.to_string()).or_default();
            while w.front().is_some_and(|t| t + 1000 <= now_ms) {
                w.pop_front();
            }
            if w.len() as u32 >= (limit / 60).max(1) {
                return false;
            }
            w.push_back(now_ms);
            return true;
        }
        let now = Duration::from_millis(now_ms);
        let bucket = self
            .buckets
            .entry(action.to_string())
            .or_insert_with(|| TokenBucket::per_minute(limit, now));
        // The bucket is built for callers that queue (reservations drive it negative): try on
        // a copy and keep it only when the call was allowed.
        let mut trial = bucket.clone();
        if trial.reserve(now).is_zero() {
            *bucket = trial;
            true
        } else {
            false
        }
    }
}

/// A call as a node's daemon makes it (one OpenAPI request).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Req {
    Create {
        vswitch: String,
        secondary: u32,
    },
    Attach {
        eni: String,
    },
    Detach {
        eni: String,
    },
    Delete {
        eni: String,
    },
    /// DescribeNetworkInterfaces by id (status checks, waits).
    DescribeEni {
        eni: String,
    },
    /// DescribeNetworkInterfaces of our ENIs by tag (the resync's one listing).
    DescribeOurs,
    Assign {
        eni: String,
        count: u32,
    },
    Unassign {
        eni: String,
        ips: Vec<Ipv4Addr>,
    },
    DescribeVSwitches,
}

impl Req {
    pub fn action(&self) -> &'static str {
        match self {
            Req::Create { .. } => "CreateNetworkInterface",
            Req::Attach { .. } => "AttachNetworkInterface",
            Req::Detach { .. } => "DetachNetworkInterface",
            Req::Delete { .. } => "DeleteNetworkInterface",
            Req::DescribeEni { .. } | Req::DescribeOurs => "DescribeNetworkInterfaces",
            Req::Assign { .. } => "AssignPrivateIpAddresses",
            Req::Unassign { .. } => "UnassignPrivateIpAddresses",
            Req::DescribeVSwitches => "DescribeVSwitches",
        }
    }
}

/// An ENI as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EniView {
    pub id: String,
    pub mac: String,
    pub status: EniStatus,
    pub instance_id: Option<String>,
    pub vswitch_id: String,
    pub primary_ip: Ipv4Addr,
    pub secondary_ips: Vec<Ipv4Addr>,
    /// Tagged as created by terway for this node.
    pub ours: bool,
    pub secondary_type: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Eni(EniView),
    Enis(Vec<EniView>),
    Ips(Vec<Ipv4Addr>),
    Done,
}

pub struct Cloud {
    shards: Vec<Model>,
    shard_of: Vec<usize>,
    instances: Vec<String>,
    vswitches: Vec<String>,
    pub limiter: RegionLimiter,
    attach: Latency,
    rng: Rng,
}

impl Cloud {
    /// `nodes` instances of [`INSTANCE_TYPE`], `per_vswitch` of them on each /20 vSwitch.
    pub fn new(
        nodes: usize,
        per_vswitch: usize,
        limiter: RegionLimiter,
        attach: Latency,
        seed: u64,
    ) -> Result<Cloud, String> {
        let per = per_vswitch.max(1);
        let groups = nodes.div_ceil(per);
        if groups > 4096 {
            return Err(format!(
                "{nodes} nodes need {groups} vSwitches: at most 4096 fit"
            ));
        }
        let mut shards = Vec::new();
        let (mut shard_of, mut instances, mut vswitches) = (Vec::new(), Vec::new(), Vec::new());
        for g in 0..groups {
            let vsw = format!("vsw-sim{g:014}");
            let base = Ipv4Addr::from((10u32 << 24) | ((g as u32) << 12));
            let members: Vec<usize> = (g * per..((g + 1) * per).min(nodes)).collect();
            let cfg = EmuConfig {
                region_id: "cn-sim".into(),
                vpc_id: "vpc-sim0000000000000001".into(),
                vpc_cidr: "10.0.0.0/8".into(),
                vpc_ipv6_cidr: None,
                route_table_id: "vtb-sim0000000000000001".into(),
                zones: vec![ZONE.into()],
                vswitches: vec![VSwitchCfg {
                    id: vsw.clone(),
                    zone: ZONE.into(),
                    cidr: format!("{base}/20"),
                    ipv6_cidr: None,
                }],
                security_groups: vec![SECURITY_GROUP.into()],
                instance_types: vec![InstanceTypeCfg {
                    id: INSTANCE_TYPE.into(),
                    cpu: 16,
                    memory_gib: 64,
                    eni_quantity: 8,
                    eni_private_ip_address_quantity: 30,
                    eni_ipv6_address_quantity: 30,
                    eni_total_quantity: 50,
                    eni_trunk_supported: true,
                }],
                instances: members
                    .iter()
                    .map(|n| InstanceCfg {
                        id: instance_id(*n),
                        instance_type: INSTANCE_TYPE.into(),
                        vswitch: vsw.clone(),
                        security_group: SECURITY_GROUP.into(),
                        primary_ip: None,
                        ipv6_address_count: 0,
                        ram_role: None,
                    })
                    .collect(),
                access_keys: vec![AccessKeyCfg {
                    id: "LTAIsim".into(),
                    secret: "sim".into(),
                }],
                timing: Timing::default(),
                faults: Default::default(),
                max_body_bytes: 65536,
                metadata_require_token: false,
                seed: seed ^ g as u64,
            };
            shards.push(Model::new(&cfg, 0).map_err(|e| e.to_string())?);
            for n in members {
                shard_of.push(g);
                instances.push(instance_id(n));
                vswitches.push(vsw.clone());
            }
        }
        Ok(Cloud {
            shards,
            shard_of,
            instances,
            vswitches,
            limiter,
            attach,
            rng: Rng::new(seed ^ 0xc10d),
        })
    }

    pub fn instance(&self, node: usize) -> &str {
        &self.instances[node]
    }

    /// The vSwitch of a node (its only candidate for new ENIs).
    pub fn vswitch(&self, node: usize) -> &str {
        &self.vswitches[node]
    }

    /// The vSwitch's CIDR and gateway (the daemon learns them by DescribeVSwitches at start).
    pub fn vswitch_net(&self, node: usize) -> (ipnetwork::Ipv4Network, Ipv4Addr) {
        let m = &self.shards[self.shard_of[node]];
        let v = &m.vswitches[&self.vswitches[node]];
        let net = ipnetwork::Ipv4Network::new(v.cidr.addr, v.cidr.prefix)
            .unwrap_or_else(|_| unreachable!("a /20 is a valid network"));
        (net, v.cidr.gateway())
    }

    /// When metadata starts listing the ENI (attached + the metadata lag), if it will. An
    /// attach the model has not yet completed (it advances on calls to its shard, and a
    /// refused call does not reach it) counts from when it completes, as the emulator's
    /// metadata server sees it.
    pub fn metadata_from(&self, node: usize, eni: &str) -> Option<u64> {
        let m = &self.shards[self.shard_of[node]];
        let e = m.eni(eni).ok()?;
        let inst = Some(self.instance(node));
        let from = match e.status {
            EniStatus::Attaching if e.instance_id.as_deref() == inst => e.pending_until?,
            _ if e.meta_instance.as_deref() == inst => e.meta_from?,
            _ => return None,
        };
        Some(from.saturating_add(m.timing.metadata_lag_ms))
    }

    /// One request of `node` arriving at `now`.
    pub fn call(&mut self, node: usize, req: &Req, now: u64) -> Result<Answer, ApiError> {
        if !self.limiter.admit(req.action(), now) {
            return Err(errors::throttled());
        }
        let inst = self.instances[node].clone();
        let attach_ms = self.attach.draw(&mut self.rng);
        let detach_ms = self.attach.draw(&mut self.rng);
        let m = &mut self.shards[self.shard_of[node]];
        let ours = |e: &Eni| e.tags.iter().any(|(k, v)| k == TAG_NODE && *v == inst);
        let view = |e: &Eni| EniView {
            id: e.id.clone(),
            mac: e.mac.clone(),
            status: e.status,
            instance_id: e.instance_id.clone(),
            vswitch_id: e.vswitch_id.clone(),
            primary_ip: e.primary_ip,
            secondary_ips: e.live_secondary().collect(),
            ours: ours(e),
            secondary_type: e.eni_type == EniType::Secondary,
        };
        let by = |f: EniFilter, m: &mut Model| -> Answer {
            Answer::Enis(m.describe_enis(&f, now).iter().map(view).collect())
        };
        Ok(match req {
            Req::Create { vswitch, secondary } => {
                let id = m.create_eni(
                    &CreateEni {
                        vswitch_id: vswitch.clone(),
                        security_group_ids: vec![SECURITY_GROUP.into()],
                        eni_type: EniType::Secondary,
                        primary_ip: None,
                        secondary_count: *secondary as usize,
                        secondary_ips: Vec::new(),
                        ipv6_count: 0,
                        tags: vec![
                            (TAG_CREATOR.0.into(), TAG_CREATOR.1.into()),
                            (TAG_NODE.into(), inst.clone()),
                        ],
                        description: String::new(),
                        name: String::new(),
                    },
                    now,
                )?;
                Answer::Eni(view(m.eni(&id)?))
            }
            Req::Attach { eni } => {
                m.timing.attach_delay_ms = attach_ms;
                m.attach_eni(&inst, eni, None, now)?;
                Answer::Done
            }
            Req::Detach { eni } => {
                m.timing.detach_delay_ms = detach_ms;
                m.detach_eni(&inst, eni, now)?;
                Answer::Done
            }
            Req::Delete { eni } => {
                m.delete_eni(eni, now)?;
                Answer::Done
            }
            Req::DescribeEni { eni } => by(
                EniFilter {
                    eni_ids: vec![eni.clone()],
                    ..EniFilter::default()
                },
                m,
            ),
            Req::DescribeOurs => by(
                EniFilter {
                    tags: vec![(TAG_NODE.into(), inst.clone())],
                    ..EniFilter::default()
                },
                m,
            ),
            Req::Assign { eni, count } => {
                Answer::Ips(m.assign_ips(eni, *count as usize, &[], now)?)
            }
            Req::Unassign { eni, ips } => {
                m.unassign_ips(eni, ips, now)?;
                Answer::Done
            }
            Req::DescribeVSwitches => Answer::Done,
        })
    }

    /// Addresses of every vSwitch still taken (ENI primaries and secondaries, instances' own).
    pub fn addresses_used(&self) -> usize {
        self.shards
            .iter()
            .flat_map(|m| m.vswitches.values())
            .map(|v| v.used.len())
            .sum()
    }
}

pub fn instance_id(node: usize) -> String {
    format!("i-sim{node:016}")
}
