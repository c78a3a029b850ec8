//! A simulated cloud and helpers shared by the unit and property tests.

use super::*;
use std::collections::BTreeSet;

pub(super) const AAA: &str = "vsw-AAA";
pub(super) const BBB: &str = "vsw-BBB";

pub(super) fn cfg() -> PoolConfig {
    PoolConfig {
        min_idle: 1,
        max_idle: 2,
        max_enis: 7,
        min_enis: 0,
        coalesce_ms: 20,
        release_after_ms: 60_000,
        vswitch_backoff_ms: 300_000,
        retry_after_ms: 1_000,
        vswitches: vec![AAA.into(), BBB.into()],
        vswitch_policy: VSwitchPolicy::Ordered,
        sticky_ms: 300_000,
    }
}

pub(super) fn key(n: u32) -> Owner {
    AttachKey::new("terway", &format!("c{n}"), "eth0")
}

pub(super) fn failure(code: &str) -> CloudFailure {
    CloudFailure {
        code: code.into(),
        message: format!("{code} happened"),
    }
}

fn exhausted(vsw: &str) -> CloudFailure {
    CloudFailure {
        code: "InvalidVSwitchId.IpNotEnough".into(),
        message: format!("The specified VSwitch \"{vsw}\" has not enough IpAddress."),
    }
}

/// A cloud that succeeds (unless told otherwise) and remembers the ENIs attached.
#[derive(Default)]
pub(super) struct Cloud {
    pub next_eni: u32,
    pub enis: BTreeMap<String, EniFacts>,
    /// vSwitches that are out of addresses.
    pub exhausted: BTreeSet<String>,
}

impl Cloud {
    pub fn facts(&mut self, vsw: &str) -> EniFacts {
        self.next_eni += 1;
        let n = self.next_eni;
        let base: u32 = if vsw == BBB { 0x0a02_0000 } else { 0x0a01_0000 };
        let f = EniFacts {
            id: format!("eni-{n:03}"),
            mac: format!("00:16:3e:00:{:02x}:{:02x}", n / 256, n % 256),
            vswitch_id: vsw.into(),
            vswitch_cidr: Ipv4Network::new(Ipv4Addr::from(base), 16).unwrap(),
            gateway: Ipv4Addr::from(base + 1),
            primary_ip: Ipv4Addr::from(base + 10 + n),
            secondary_ips: Vec::new(),
        };
        self.enis.insert(f.id.clone(), f.clone());
        f
    }

    pub fn observed(&self) -> Vec<EniFacts> {
        self.enis.values().cloned().collect()
    }

    pub fn run(&mut self, op: &CloudOp, pool: &Pool) -> CloudOutcome {
        match op {
            CloudOp::CreateEni { op, vswitch_id } => {
                if self.exhausted.contains(vswitch_id) {
                    return CloudOutcome::Failed {
                        op: *op,
                        failure: exhausted(vswitch_id),
                    };
                }
                let eni = self.facts(vswitch_id);
                CloudOutcome::EniCreated { op: *op, eni }
            }
            CloudOp::DeleteEni { op, eni_id } => {
                if let Some(e) = pool.st.enis.iter().find(|e| &e.info.id == eni_id) {
                    assert!(e.owner.is_none(), "deleting an owned ENI {eni_id}");
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

/// Every ENI appears once, every owner holds at most one ENI, nothing unowned is lost, the pool
/// never counts more than max_enis.
pub(super) fn assert_invariants(pool: &Pool) {
    let mut ids = BTreeSet::new();
    let mut owners = BTreeSet::new();
    let mut ips = BTreeSet::new();
    for e in &pool.st.enis {
        assert!(ids.insert(e.info.id.clone()), "{} appears twice", e.info.id);
        assert!(
            ips.insert(e.info.primary_ip),
            "{} appears twice",
            e.info.primary_ip
        );
        if let Some(o) = &e.owner {
            assert!(owners.insert(o.clone()), "{o} owns two ENIs");
            assert!(
                !e.deleting && !e.unconfirmed,
                "owned {} is deleting",
                e.info.id
            );
        }
        assert!(!(e.lost && e.owner.is_none()), "unowned lost {}", e.info.id);
    }
}

/// Runs all `ops` successfully at once.
pub(super) fn run_all(pool: &mut Pool, cloud: &mut Cloud, ops: &[CloudOp], now: u64) {
    for op in ops {
        let out = cloud.run(op, pool);
        pool.apply(out, now);
    }
}

pub(super) fn creates(ops: &[CloudOp]) -> Vec<&str> {
    ops.iter()
        .filter_map(|o| match o {
            CloudOp::CreateEni { vswitch_id, .. } => Some(vswitch_id.as_str()),
            _ => None,
        })
        .collect()
}

pub(super) fn deletes(ops: &[CloudOp]) -> Vec<&str> {
    ops.iter()
        .filter_map(|o| match o {
            CloudOp::DeleteEni { eni_id, .. } => Some(eni_id.as_str()),
            _ => None,
        })
        .collect()
}

/// A pool that knows the `n` idle ENIs the cloud has attached.
pub(super) fn pool_with_enis(c: PoolConfig, cloud: &mut Cloud, n: u32) -> Pool {
    let mut pool = Pool::new(c, PoolState::default());
    for _ in 0..n {
        cloud.facts(AAA);
    }
    pool.reconcile(&cloud.observed(), 0);
    pool
}
