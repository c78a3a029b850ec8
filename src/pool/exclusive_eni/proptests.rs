//! Random operation sequences against a simulated cloud: allocate, release, plan, apply (success
//! or failure, in any order), reconcile (with ENIs lost behind the pool's back), time passing.
//!
//! The case budget is fixed for CI; `PROPTEST_CASES=100000 cargo test --lib
//! pool::exclusive_eni::proptests` runs a longer fuzz.

use super::sim::{assert_invariants, cfg};
use super::*;
use crate::pool::test_support::{Cloud, Runs, failure, key};
use proptest::prelude::*;
use proptest::sample::Index;

fn config() -> ProptestConfig {
    crate::prop_support::proptest_config(500)
}

const CODES: &[&str] = &[
    "Throttling.User",
    "InvalidVSwitchId.IpNotEnough",
    "EniPerInstanceLimitExceeded",
    "QuotaExceeded.Eni",
    "InvalidEniId.NotFound",
    "InvalidOperation.InvalidEniState",
];

#[derive(Debug, Clone)]
enum Step {
    Allocate {
        key: u32,
        pod: u32,
    },
    Release {
        key: u32,
    },
    Plan {
        waiting: u32,
        random: u64,
    },
    /// Run one op in flight; `fail` picks a failure code; `half_done` = a failed delete did
    /// detach (or a NotFound is true).
    Apply {
        pick: Index,
        fail: Option<usize>,
        half_done: bool,
    },
    /// The cloud loses an ENI (detached behind the pool's back) before the reconcile.
    Reconcile {
        lose: Option<Index>,
    },
    Wait(u64),
    Query {
        waiting: u32,
    },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => (0..8u32, 0..4u32).prop_map(|(key, pod)| Step::Allocate { key, pod }),
        2 => (0..8u32).prop_map(|key| Step::Release { key }),
        3 => (0..4u32, any::<u64>()).prop_map(|(waiting, random)| Step::Plan { waiting, random }),
        4 => (any::<Index>(), prop::option::weighted(0.3, 0..CODES.len()), any::<bool>())
            .prop_map(|(pick, fail, half_done)| Step::Apply { pick, fail, half_done }),
        1 => prop::option::weighted(0.4, any::<Index>()).prop_map(|lose| Step::Reconcile { lose }),
        2 => (0..120u64).prop_map(Step::Wait),
        1 => (0..4u32).prop_map(|waiting| Step::Query { waiting }),
    ]
}

fn pool_config() -> impl Strategy<Value = PoolConfig> {
    (
        (0..3u32, 0..4u32, 1..5u32, 0..4u32),
        (0..50u64, 0..3u64, 0..200u64, 1..30u64),
    )
        .prop_map(
            |((min_idle, max_idle, max_enis, min_enis), (release, coalesce, sticky, retry))| {
                let mut c = cfg();
                c.min_idle = min_idle;
                c.max_idle = max_idle;
                c.max_enis = max_enis;
                c.min_enis = min_enis.min(max_enis);
                c.release_after_ms = release;
                c.coalesce_ms = coalesce;
                c.sticky_ms = sticky;
                c.retry_after_ms = retry;
                c.vswitch_backoff_ms = 100;
                c
            },
        )
}

/// What must hold after every step.
fn check(pool: &Pool, cloud: &Cloud, flying: &[CloudOp]) {
    assert_invariants(pool);
    let max = pool.cfg.max_enis;
    assert!(
        pool.eni_count() <= max,
        "{} ENIs > max {max}",
        pool.eni_count()
    );
    assert!(
        cloud.enis.len() as u32 <= max,
        "cloud has {} > {max}",
        cloud.enis.len()
    );
    for op in flying {
        if let CloudOp::DeleteEni { eni_id, .. } = op {
            let e = pool.st.enis.iter().find(|e| &e.info.id == eni_id);
            assert!(
                e.is_none_or(|e| e.owner.is_none()),
                "owned {eni_id} in a planned delete"
            );
        }
    }
    let mut held = std::collections::BTreeSet::new();
    for k in 0..8 {
        if let Some(l) = pool.lease_of(&key(k)) {
            assert!(held.insert(l.eni_id.clone()), "{} has two owners", l.eni_id);
        }
    }
}

fn run(c: PoolConfig, steps: Vec<Step>) {
    let mut pool = Pool::new(c, PoolState::default());
    let mut cloud = Cloud::default();
    let mut flying: Vec<CloudOp> = Vec::new();
    let mut now = 0;
    for s in steps {
        match s {
            Step::Allocate { key: k, pod } => {
                let k = key(k);
                if let Some(l) = pool.allocate(&k, &format!("ns/p{pod}"), now) {
                    assert_eq!(pool.lease_of(&k), Some(l.clone()));
                    let snap = pool.snapshot(now);
                    let e = snap.enis.iter().find(|e| e.id == l.eni_id).unwrap();
                    // Never an ENI being deleted, lost or unconfirmed.
                    assert_eq!(e.status, EniStatus::InUse);
                    assert_eq!(e.owner, Some(k));
                }
            }
            Step::Release { key: k } => {
                pool.release(&key(k), now);
            }
            Step::Plan { waiting, random } => {
                let ops = pool.plan(now, waiting, random);
                flying.extend(ops);
            }
            Step::Apply {
                pick,
                fail,
                half_done,
            } => {
                if flying.is_empty() {
                    continue;
                }
                let op = flying.swap_remove(pick.index(flying.len()));
                let out = match fail {
                    None => cloud.run(&op, &pool),
                    Some(f) => {
                        if let CloudOp::DeleteEni { eni_id, .. } = &op
                            && (half_done || CODES[f] == "InvalidEniId.NotFound")
                        {
                            cloud.enis.remove(eni_id);
                        }
                        CloudOutcome::Failed {
                            op: op.id(),
                            failure: failure(CODES[f]),
                        }
                    }
                };
                pool.apply(out, now);
            }
            Step::Reconcile { lose } => {
                if let Some(i) = lose
                    && !cloud.enis.is_empty()
                {
                    let id = cloud.enis.keys().nth(i.index(cloud.enis.len())).cloned();
                    cloud.enis.remove(&id.unwrap());
                }
                let rep = pool.reconcile(&cloud.observed(), now);
                for (owner, eni) in &rep.lost {
                    assert_eq!(pool.lease_of(owner).map(|l| l.eni_id), Some(eni.clone()));
                }
            }
            Step::Wait(ms) => now += ms,
            Step::Query { waiting } => {
                let _ = pool.unservable(now, waiting);
                let _ = pool.next_deadline(now);
                let _ = pool.snapshot(now);
            }
        }
        check(&pool, &cloud, &flying);
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn random_operation_sequences_keep_invariants(
        c in pool_config(),
        steps in prop::collection::vec(step(), 0..150),
    ) {
        run(c, steps);
    }
}
