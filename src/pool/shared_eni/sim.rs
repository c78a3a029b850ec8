//! The simulated cloud's answers to this pool's ops, the daemon's loop in miniature, and checks
//! and helpers shared by the unit tests (the cloud itself and the fixtures both pools use are in
//! `crate::pool::test_support`).

use super::*;
use crate::pool::test_support::*;
use std::collections::{BTreeSet, VecDeque};

pub(super) fn cfg() -> PoolConfig {
    test_config!(PoolConfig {
        min_idle: 2,
        max_idle: 5,
        max_enis: 7,
        ips_per_eni: 30,
        batch: 10,
        eni_policy: EniPolicy::MostIps,
        cooldown_ms: 0,
        dual: false,
    })
}

pub(super) fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

/// The cloud succeeds (unless a vSwitch is exhausted or the ENI unknown) and checks that the
/// pool never releases what a pod holds.
impl Runs<Pool> for Cloud {
    fn run(&mut self, op: &CloudOp, pool: &Pool) -> CloudOutcome {
        match op {
            CloudOp::CreateEni {
                op,
                vswitch_id,
                secondary_count,
                ipv6_count,
            } => match self.create(vswitch_id, *secondary_count) {
                Ok(eni) if *ipv6_count == 0 && !eni.ipv6s.is_empty() => {
                    // IPv4 only: an ENI made without IPv6.
                    let mut eni = eni;
                    eni.ipv6s.clear();
                    self.enis.insert(eni.id.clone(), eni.clone());
                    CloudOutcome::EniCreated { op: *op, eni }
                }
                Ok(eni) => CloudOutcome::EniCreated { op: *op, eni },
                Err(failure) => CloudOutcome::Failed { op: *op, failure },
            },
            CloudOp::AssignIps {
                op,
                eni_id,
                count,
                ipv6_count,
            } => {
                let Some(vsw) = self.enis.get(eni_id).map(|e| e.vswitch_id.clone()) else {
                    return CloudOutcome::Failed {
                        op: *op,
                        failure: failure("InvalidEniId.NotFound"),
                    };
                };
                if self.exhausted.contains(&vsw) {
                    return CloudOutcome::Failed {
                        op: *op,
                        failure: exhausted(&vsw),
                    };
                }
                let ips: Vec<Ipv4Addr> = (0..*count).map(|_| self.fresh_ip(&vsw)).collect();
                let (ips6, failure6) = match &self.fail6 {
                    Some(f) if *ipv6_count > 0 => (Vec::new(), Some(f.clone())),
                    _ => (
                        (0..*ipv6_count).map(|_| self.fresh_ip6(&vsw)).collect(),
                        None,
                    ),
                };
                let eni = self.enis.get_mut(eni_id).unwrap();
                eni.secondary_ips.extend(ips.iter().copied());
                eni.ipv6s.extend(ips6.iter().copied());
                assert!(eni.secondary_ips.len() < pool.cfg.ips_per_eni as usize);
                assert!(
                    eni.ipv6s.len() <= pool.cfg.ips_per_eni as usize,
                    "IPv6 over quota"
                );
                CloudOutcome::IpsAssigned {
                    op: *op,
                    eni_id: eni_id.clone(),
                    ips,
                    ips6,
                    failure6,
                }
            }
            CloudOp::UnassignIps {
                op,
                eni_id,
                ips,
                ips6,
            } => {
                for i in ips {
                    assert_no_owner(pool, *i);
                }
                for i in ips6 {
                    assert_no_owner6(pool, *i);
                }
                let eni = self.enis.get_mut(eni_id).unwrap();
                assert!(!ips.contains(&eni.primary_ip), "primary IP unassigned");
                eni.secondary_ips.retain(|i| !ips.contains(i));
                eni.ipv6s.retain(|i| !ips6.contains(i));
                CloudOutcome::IpsUnassigned {
                    op: *op,
                    eni_id: eni_id.clone(),
                    ips: ips.clone(),
                    ips6: ips6.clone(),
                    failure6: None,
                }
            }
            CloudOp::DeleteEni { op, eni_id } => {
                if let Some(e) = pool.st.enis.iter().find(|e| &e.info.id == eni_id) {
                    assert_eq!(e.owned_count(), 0, "deleting an ENI with owned IPs");
                }
                self.enis.remove(eni_id);
                CloudOutcome::EniDeleted {
                    op: *op,
                    eni_id: eni_id.clone(),
                }
            }
        }
    }
}

pub(super) fn assert_no_owner(pool: &Pool, addr: Ipv4Addr) {
    for e in &pool.st.enis {
        for i in &e.ips {
            assert!(
                !(i.ip == addr && i.owner.is_some()),
                "owned IP {addr} released"
            );
        }
    }
}

pub(super) fn assert_no_owner6(pool: &Pool, addr: Ipv6Addr) {
    for e in &pool.st.enis {
        for i in &e.ips {
            assert!(
                !(i.ip6 == Some(addr) && i.owner.is_some()),
                "owned IPv6 {addr} released"
            );
        }
    }
}

/// Every IP appears once, has at most one owner, and every owner holds at most one IP.
pub(super) fn assert_invariants(pool: &Pool) {
    let mut ips = BTreeSet::new();
    let mut ips6 = BTreeSet::new();
    let mut owners = BTreeSet::new();
    for e in &pool.st.enis {
        assert!(e.ips.len() as u32 <= pool.cfg.ips_per_eni.max(1) + 50);
        for v6 in &e.spare6 {
            assert!(ips6.insert(*v6), "{v6} appears twice");
        }
        for i in &e.ips {
            assert!(ips.insert(i.ip), "{} appears twice", i.ip);
            if let Some(v6) = i.ip6 {
                assert!(ips6.insert(v6), "{v6} appears twice");
            }
            if let Some(o) = &i.owner {
                assert!(owners.insert(o.clone()), "{o} owns two IPs");
            }
            assert!(
                !(i.invalid && i.owner.is_none()),
                "unowned invalid {}",
                i.ip
            );
        }
    }
}

pub(super) fn creates(ops: &[CloudOp]) -> Vec<(String, u32)> {
    ops.iter()
        .filter_map(|o| match o {
            CloudOp::CreateEni {
                vswitch_id,
                secondary_count,
                ..
            } => Some((vswitch_id.clone(), *secondary_count)),
            _ => None,
        })
        .collect()
}

pub(super) fn assigns(ops: &[CloudOp]) -> Vec<u32> {
    ops.iter()
        .filter_map(|o| match o {
            CloudOp::AssignIps { count, .. } => Some(*count),
            _ => None,
        })
        .collect()
}

/// A pool with one ENI from the cloud holding `n` IPs (primary included), all idle.
pub(super) fn pool_with_eni(c: PoolConfig, cloud: &mut Cloud, n: u32) -> Pool {
    let mut pool = Pool::new(c, PoolState::default());
    cloud.facts(AAA, n - 1);
    pool.reconcile(&cloud.observed(), 0);
    pool
}

/// xorshift64*: deterministic randomness for the simulations.
pub(super) struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// The daemon's loop in miniature: ops complete after a delay, waiters are served in order.
pub(super) struct Sim {
    pub pool: Pool,
    pub cloud: Cloud,
    pub now: u64,
    pub running: Vec<(u64, CloudOp)>,
    pub waiters: VecDeque<AttachKey>,
    pub pods: Vec<AttachKey>,
    pub next_pod: u32,
    pub calls: u64,
    pub allocations: u64,
}

impl Sim {
    pub fn new(c: PoolConfig) -> Sim {
        Sim {
            pool: Pool::new(c, PoolState::default()),
            cloud: Cloud::default(),
            now: 0,
            running: Vec::new(),
            waiters: VecDeque::new(),
            pods: Vec::new(),
            next_pod: 0,
            calls: 0,
            allocations: 0,
        }
    }

    fn delay(op: &CloudOp) -> u64 {
        match op {
            CloudOp::CreateEni { .. } => 2_000,
            CloudOp::DeleteEni { .. } => 1_500,
            _ => 300,
        }
    }

    pub fn serve(&mut self) {
        while let Some(k) = self.waiters.front().cloned() {
            match self.pool.allocate(&k, "", self.now) {
                Some(_) => {
                    self.waiters.pop_front();
                    self.pods.push(k);
                    self.allocations += 1;
                }
                None => break,
            }
        }
    }

    /// Advance to `until` in 10 ms ticks; with `churn`, pods come and go around `population`.
    pub fn run(&mut self, until: u64, rng: &mut Rng, churn: Option<u64>) {
        while self.now < until {
            self.now += 10;
            let now = self.now;
            let mut event = false;
            let (done, rest): (Vec<_>, Vec<_>) =
                self.running.drain(..).partition(|(t, _)| *t <= now);
            self.running = rest;
            for (_, op) in done {
                let out = self.cloud.run(&op, &self.pool);
                self.pool.apply(out, now);
                event = true;
            }
            // Roughly one pod event per 100 ms.
            if let Some(population) = churn.filter(|_| rng.below(10) == 0) {
                event = true;
                let len = self.pods.len() as u64;
                let up = len < population / 2 || rng.below(2 * population) > len;
                if up && self.waiters.len() < 20 {
                    self.next_pod += 1;
                    self.waiters.push_back(key(self.next_pod));
                } else if !self.pods.is_empty() {
                    let i = rng.below(len) as usize;
                    let k = self.pods.swap_remove(i);
                    assert!(self.pool.release(&k, now).is_some());
                }
            }
            self.serve();
            if self.pool.next_deadline(now).is_some_and(|t| t <= now) || !self.waiters.is_empty() {
                let ops = self.pool.plan(now, self.waiters.len() as u32, rng.next());
                event |= !ops.is_empty();
                self.calls += ops.len() as u64;
                for op in ops {
                    self.running.push((now + Sim::delay(&op), op));
                }
            }
            if event {
                assert_invariants(&self.pool);
            }
        }
    }
}
