//! The scenario: a cold scale-up, a rolling update of every pod, a node-pool drain; what each
//! phase cost and how long its pods waited.

use crate::node::{Daemon, NaiveNode, PoolNode};
use crate::region::{Cloud, INSTANCE_TYPE, RegionLimiter, SECURITY_GROUP, instance_id};
use crate::rng::{Latency, Rng};
use crate::world::{Count, Knobs, Src, World};
use std::collections::BTreeMap;
use terway::config::Config;
use terway::daemon::eni_ops::NodeFacts;
use terway::daemon::node::NodeInfo;
use terway::daemon::shared_eni::pool_config;
use terway::store::InstanceLimits;

#[derive(Debug, Clone)]
pub struct Params {
    pub nodes: usize,
    pub pods_per_node: usize,
    pub per_vswitch: usize,
    /// Pods of the scale-up reach their nodes within this window.
    pub ramp_ms: u64,
    /// The rolling update replaces every pod within this window.
    pub rollout_ms: u64,
    pub drain_nodes: usize,
    pub drain_ms: u64,
    /// Quiet time after each phase (pools release what they hold above max_pool_size).
    pub settle_ms: u64,
    pub resync_ms: u64,
    pub limits: Vec<(String, u32)>,
    pub api: Latency,
    pub attach: Latency,
    pub seed: u64,
    /// The emulator's per-second windows instead of token buckets.
    pub windows: bool,
    /// Give up on a phase after this long (a stuck pod must not hang the run).
    pub phase_cap_ms: u64,
}

impl Params {
    pub fn cluster(nodes: usize, pods_per_node: usize) -> Params {
        Params {
            nodes,
            pods_per_node,
            per_vswitch: 20,
            ramp_ms: 30_000,
            rollout_ms: 600_000,
            drain_nodes: nodes / 10,
            drain_ms: 60_000,
            settle_ms: 180_000,
            resync_ms: terway::daemon::eni_source::DEFAULT_RESYNC_MS,
            limits: Vec::new(),
            api: Latency {
                floor_ms: 40,
                mean_extra_ms: 60.0,
                cap_ms: 3_000,
            },
            attach: Latency {
                floor_ms: 800,
                mean_extra_ms: 1_000.0,
                cap_ms: 15_000,
            },
            seed: 1,
            windows: false,
            phase_cap_ms: 4 * 3_600_000,
        }
    }
}

impl Params {
    /// The same scenario with no region-wide rate limit at all.
    pub fn unlimited(&self) -> Params {
        let mut limits: Vec<(String, u32)> = terway::cloud::ratelimit::DEFAULT_LIMITS
            .iter()
            .map(|(a, _)| (a.to_string(), 0))
            .collect();
        limits.push(("*".into(), 0));
        Params {
            limits,
            ..self.clone()
        }
    }
}

#[derive(Debug, Clone)]
pub struct Phase {
    pub name: &'static str,
    pub pods: usize,
    /// Creation → address handed out, sorted.
    pub ready_ms: Vec<u64>,
    pub unready: usize,
    /// From the phase's start to its last pod ready.
    pub span_ms: u64,
    pub calls: BTreeMap<(&'static str, Src), Count>,
    /// Kubelet ADD attempts (retries after a timeout or failure included).
    pub adds: u64,
}

impl Phase {
    pub fn pct(&self, p: f64) -> u64 {
        if self.ready_ms.is_empty() {
            return 0;
        }
        let i = ((self.ready_ms.len() - 1) as f64 * p).round() as usize;
        self.ready_ms[i]
    }

    pub fn sum(&self, src: Option<Src>, f: impl Fn(&Count) -> u64) -> u64 {
        self.calls
            .iter()
            .filter(|((_, s), _)| src.is_none_or(|x| x == *s))
            .map(|(_, c)| f(c))
            .sum()
    }

    /// Calls the region accepted (of `src`, or all), per action, over its budget; the slowest
    /// action sets it.
    pub fn floor_ms(&self, limiter: &RegionLimiter, src: Option<Src>) -> (u64, &'static str) {
        let mut by: BTreeMap<&'static str, u64> = BTreeMap::new();
        for ((a, s), c) in &self.calls {
            if src.is_none_or(|x| x == *s) {
                *by.entry(a).or_default() += c.ok;
            }
        }
        by.into_iter()
            .filter(|(a, _)| limiter.limit_of(a) > 0)
            .map(|(a, n)| (n * 60_000 / u64::from(limiter.limit_of(a)), a))
            .max()
            .unwrap_or((0, "-"))
    }
}

pub struct Report {
    pub policy: &'static str,
    pub phases: Vec<Phase>,
    pub idle_end: u64,
    pub addresses_end: usize,
    pub pods_end: usize,
    pub limiter: RegionLimiter,
    pub virtual_ms: u64,
}

fn limits(p: &Params) -> RegionLimiter {
    let l = RegionLimiter::new(&p.limits);
    if p.windows { l.per_second_windows() } else { l }
}

pub fn pool_nodes(p: &Params, cloud: &Cloud) -> Vec<PoolNode> {
    let config = Config::default();
    (0..p.nodes)
        .map(|n| {
            let facts = NodeFacts {
                info: NodeInfo {
                    instance_id: instance_id(n),
                    instance_type: INSTANCE_TYPE.into(),
                    region_id: "cn-sim".into(),
                    zone_id: "cn-sim-a".into(),
                    vswitch_id: cloud.vswitch(n).into(),
                    vpc_id: String::new(),
                    primary_mac: String::new(),
                },
                limits: InstanceLimits {
                    eni_quantity: 8,
                    eni_private_ip_quantity: 30,
                    eni_total_quantity: 50,
                    eni_ipv6_quantity: None,
                },
                vswitches: vec![cloud.vswitch(n).into()],
                security_groups: vec![SECURITY_GROUP.into()],
                eni_tags: Vec::new(),
            };
            PoolNode::new(
                pool_config(&config, &facts),
                p.resync_ms,
                p.seed ^ (n as u64).wrapping_mul(0x9E37_79B9),
            )
        })
        .collect()
}

fn knobs(p: &Params) -> Knobs {
    Knobs {
        api: p.api,
        kubelet_retry_ms: 10_000,
        grace_ms: (1_000, 30_000),
    }
}

pub fn run_pool(p: &Params) -> Result<Report, String> {
    let cloud = Cloud::new(p.nodes, p.per_vswitch, limits(p), p.attach, p.seed)?;
    let nodes = pool_nodes(p, &cloud);
    let w = World::new(cloud, nodes, knobs(p), p.seed);
    Ok(run(w, p, "pool"))
}

pub fn run_naive(p: &Params) -> Result<Report, String> {
    let cloud = Cloud::new(p.nodes, p.per_vswitch, limits(p), p.attach, p.seed)?;
    let nodes = (0..p.nodes)
        .map(|n| NaiveNode::new(cloud.vswitch(n), 7, 30))
        .collect();
    let w = World::new(cloud, nodes, knobs(p), p.seed);
    Ok(run(w, p, "naive"))
}

/// Two random nodes, the less loaded one (the scheduler's least-allocated spread).
fn pick(rng: &mut Rng, load: &[u32], from: usize, to: usize) -> usize {
    let a = rng.between(from as u64, to as u64) as usize;
    let b = rng.between(from as u64, to as u64) as usize;
    if load[b] < load[a] { b } else { a }
}

fn run<D: Daemon>(mut w: World<D>, p: &Params, policy: &'static str) -> Report {
    let mut rng = Rng::new(p.seed ^ 0x5ce7a);
    let mut phases = Vec::new();

    // Cold scale-up: every node gets its pods at once, within the ramp.
    let start = w.now;
    for n in 0..p.nodes {
        for _ in 0..p.pods_per_node {
            w.create_pod(n, start + rng.below(p.ramp_ms.max(1)), None);
        }
    }
    phases.push(settle(&mut w, p, "cold scale-up", start, start + p.ramp_ms));

    // Rolling update of everything: each new pod goes where the scheduler puts it; its old
    // one is deleted once it is ready (plus a grace period).
    w.next_phase();
    let start = w.now;
    let mut load = w.load();
    let mut olds: Vec<(u64, u32)> = (0..w.pods.len() as u32)
        .filter(|i| !w.pods[*i as usize].deleted)
        .map(|i| (start + rng.below(p.rollout_ms.max(1)), i))
        .collect();
    olds.sort();
    for (at, old) in olds {
        let n = pick(&mut rng, &load, 0, p.nodes);
        load[n] += 1;
        load[w.pods[old as usize].node as usize] -= 1;
        w.create_pod(n, at, Some(old));
    }
    phases.push(settle(
        &mut w,
        p,
        "rolling update",
        start,
        start + p.rollout_ms,
    ));

    // Drain a node pool: its pods are evicted and come back on the other nodes.
    w.next_phase();
    let start = w.now;
    let mut load = w.load();
    let drain = p.drain_nodes.min(p.nodes.saturating_sub(1));
    let evict: Vec<u32> = (0..w.pods.len() as u32)
        .filter(|i| {
            let pod = &w.pods[*i as usize];
            !pod.deleted && (pod.node as usize) < drain
        })
        .collect();
    for old in evict {
        let at = start + rng.below(p.drain_ms.max(1));
        w.delete_pod(old, at);
        let n = pick(&mut rng, &load, drain, p.nodes);
        load[n] += 1;
        w.create_pod(n, at, None);
    }
    phases.push(settle(
        &mut w,
        p,
        "node-pool drain",
        start,
        start + p.drain_ms,
    ));

    Report {
        policy,
        phases,
        idle_end: w.idle(),
        addresses_end: w.cloud.addresses_used(),
        pods_end: w.pods.iter().filter(|p| !p.deleted).count(),
        limiter: w.cloud.limiter.clone(),
        virtual_ms: w.now,
    }
}

/// Runs the phase until every pod is ready (after `arrivals_end`), then the quiet time.
fn settle<D: Daemon>(
    w: &mut World<D>,
    p: &Params,
    name: &'static str,
    start: u64,
    arrivals_end: u64,
) -> Phase {
    let cap = start + p.phase_cap_ms;
    w.run(cap, |w| w.now >= arrivals_end && w.unready == 0);
    let quiet = w.now + p.settle_ms;
    w.run(quiet, |_| false);
    w.now = w.now.max(quiet);
    let phase = w.phase;
    let mine: Vec<&crate::world::Pod> = w.pods.iter().filter(|x| x.phase == phase).collect();
    let last = mine.iter().filter_map(|x| x.ready).max().unwrap_or(start);
    let mut ready_ms: Vec<u64> = mine
        .iter()
        .filter_map(|x| x.ready.map(|r| r - x.created))
        .collect();
    ready_ms.sort_unstable();
    Phase {
        name,
        pods: mine.len(),
        unready: mine
            .iter()
            .filter(|x| x.ready.is_none() && !x.deleted)
            .count(),
        span_ms: last - start,
        adds: mine.iter().map(|x| u64::from(x.adds)).sum(),
        ready_ms,
        calls: w.calls[phase].clone(),
    }
}
