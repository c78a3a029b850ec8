//! The simulated cloud's answers to this pool's ops, and checks and helpers shared by the unit
//! and property tests (the cloud itself and the fixtures both pools use are in
//! `crate::pool::test_support`).

use super::*;
use crate::pool::test_support::*;
use std::collections::BTreeSet;

pub(super) fn cfg() -> PoolConfig {
    test_config!(PoolConfig {
        min_idle: 1,
        max_idle: 2,
        max_enis: 7,
        min_enis: 0,
    })
}

/// The cloud succeeds (unless a vSwitch is exhausted) and checks that the pool never deletes an
/// ENI a pod holds.
impl Runs<Pool> for Cloud {
    fn run(&mut self, op: &CloudOp, pool: &Pool) -> CloudOutcome {
        match op {
            CloudOp::CreateEni { op, vswitch_id } => match self.create(vswitch_id, 0) {
                Ok(eni) => CloudOutcome::EniCreated { op: *op, eni },
                Err(failure) => CloudOutcome::Failed { op: *op, failure },
            },
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
        cloud.facts(AAA, 0);
    }
    pool.reconcile(&cloud.observed(), 0);
    pool
}
