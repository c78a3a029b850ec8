//! Allocation, watermarks, creates and deletes, failures and back-off, vSwitch choice.

use super::sim::*;
use super::*;
use crate::pool::test_support::*;

#[test]
fn allocate_release_and_idempotent_allocate() {
    let mut c = cfg();
    c.min_idle = 0;
    let mut cloud = Cloud::default();
    let mut pool = pool_with_enis(c, &mut cloud, 2);
    let f = cloud.observed();
    let a = pool.allocate(&key(1), "ns/a", 10).unwrap();
    // The ENI's primary IP is the pod's address, with the vSwitch's prefix and gateway.
    let eni = f.iter().find(|e| e.id == a.eni_id).unwrap();
    assert_eq!(
        (a.ip, a.gateway, a.vswitch_cidr.prefix(), a.mac.as_str()),
        (eni.primary_ip, eni.gateway, 16, eni.mac.as_str())
    );
    assert_eq!(pool.allocate(&key(1), "ns/a", 20), Some(a.clone()));
    assert_eq!(pool.lease_of(&key(1)), Some(a.clone()));
    let b = pool.allocate(&key(2), "ns/b", 20).unwrap();
    assert_ne!(a.eni_id, b.eni_id);
    assert_eq!((pool.in_use(), pool.idle()), (2, 0));
    assert!(pool.allocate(&key(3), "ns/c", 20).is_none());
    assert_eq!(pool.release(&key(1), 30), Some(a.clone()));
    assert_eq!(
        pool.release(&key(1), 31),
        None,
        "a second release is a no-op"
    );
    assert_eq!(pool.lease_of(&key(1)), None);
    assert_eq!(pool.allocate(&key(3), "ns/c", 40).unwrap().eni_id, a.eni_id);
    assert_eq!(pool.capacity(), 7);
    assert_invariants(&pool);
}

#[test]
fn cold_start_fill_table() {
    // (min_idle, max_idle, min_enis, max_enis) -> creates after the coalescing window
    let table: &[(u32, u32, u32, u32, usize)] = &[
        (1, 2, 0, 7, 1),
        (3, 5, 0, 7, 3),
        (0, 0, 0, 7, 0),
        // min_eni keeps ENIs attached even when more than the idle watermark.
        (1, 2, 4, 7, 4),
        // capped by max_enis
        (10, 10, 0, 3, 3),
        (0, 0, 9, 3, 3),
        // min above max is treated as min
        (4, 1, 0, 7, 4),
    ];
    for &(min, max, min_enis, max_enis, want) in table {
        let mut c = cfg();
        (c.min_idle, c.max_idle, c.min_enis, c.max_enis) = (min, max, min_enis, max_enis);
        let mut pool = Pool::new(c, PoolState::default());
        assert_eq!(pool.next_deadline(0), Some(0));
        assert!(pool.plan(0, 0, 0).is_empty(), "window not over yet");
        if want == 0 {
            assert_eq!(pool.next_deadline(0), None);
            continue;
        }
        assert_eq!(pool.next_deadline(5), Some(20));
        let ops = pool.plan(20, 0, 0);
        assert_eq!(creates(&ops), vec![AAA; want], "row {min} {max} {min_enis}");
        assert!(pool.plan(30, 0, 0).is_empty(), "nothing twice");
        let mut cloud = Cloud::default();
        run_all(&mut pool, &mut cloud, &ops, 1000);
        assert_eq!(pool.idle() as usize, want);
        // Settled: nothing more to do, not even after the cool-down (min_eni, min_idle kept).
        assert!(pool.plan(1000, 0, 0).is_empty());
        assert!(pool.plan(1_000_000, 0, 0).is_empty());
        assert_invariants(&pool);
    }
}

#[test]
fn burst_of_waiting_pods_creates_in_parallel_bounded_by_max_enis() {
    let mut c = cfg();
    c.min_idle = 0;
    c.max_enis = 5;
    let mut pool = Pool::new(c, PoolState::default());
    let mut cloud = Cloud::default();
    // Pods arrive one per 4 ms; the daemon plans at each arrival.
    for t in 0..5u64 {
        assert!(pool.plan(t * 4, t as u32 + 1, 0).is_empty(), "t={t}");
        assert_eq!(pool.next_deadline(t * 4), Some(20));
    }
    // 8 waiting: all 5 allowed ENIs at once, in parallel.
    let ops = pool.plan(20, 8, 0);
    assert_eq!(creates(&ops).len(), 5);
    assert_eq!(pool.creating(), 5);
    assert!(
        pool.plan(500, 8, 0).is_empty(),
        "nothing more while they attach"
    );
    assert_eq!(pool.unservable(500, 8), None);
    run_all(&mut pool, &mut cloud, &ops, 2000);
    for n in 0..5 {
        assert!(pool.allocate(&key(n), "", 2000).is_some());
    }
    assert!(pool.plan(2000, 3, 0).is_empty());
    let why = pool.unservable(2000, 3).unwrap();
    assert!(why.contains("node capacity reached: 5 of 5 ENIs"), "{why}");
    // One leaves: servable again.
    pool.release(&key(0), 3000);
    assert_eq!(pool.unservable(3000, 3), None);
    assert_eq!(cloud.enis.len(), 5);
    assert_invariants(&pool);
}

#[test]
fn release_after_delay_longest_idle_first_min_eni_kept() {
    let mut c = cfg();
    c.min_idle = 1;
    c.max_idle = 2;
    c.min_enis = 4;
    let mut cloud = Cloud::default();
    let mut pool = pool_with_enis(c, &mut cloud, 6);
    for n in 0..6 {
        pool.allocate(&key(n), "", 0).unwrap();
    }
    // Released at different times: 5 idle (the first idle longest), 1 in use.
    let mut order = Vec::new();
    for n in 0..5 {
        order.push(pool.release(&key(n), 1000 * (n as u64 + 1)).unwrap().eni_id);
    }
    assert!(pool.plan(5000, 0, 0).is_empty());
    // The cool-down started when idle first went above max (3 idle at 3000).
    assert_eq!(pool.next_deadline(5001), Some(63_000));
    assert!(pool.plan(62_999, 0, 0).is_empty());
    // 5 idle, max 2: 3 excess, but min_eni 4 of 6 attached leaves only 2 to delete.
    let ops = pool.plan(63_000, 0, 0);
    assert_eq!(deletes(&ops), vec![order[0].as_str(), order[1].as_str()]);
    // Being deleted: never handed out.
    assert_eq!(pool.idle(), 3);
    for n in 10..13 {
        let l = pool.allocate(&key(n), "", 63_001).unwrap();
        assert!(!deletes(&ops).contains(&l.eni_id.as_str()));
    }
    assert!(pool.allocate(&key(20), "", 63_001).is_none());
    for n in 10..13 {
        pool.release(&key(n), 63_002);
    }
    run_all(&mut pool, &mut cloud, &ops, 64_000);
    assert_eq!(cloud.enis.len(), 4);
    assert_eq!(pool.snapshot(64_000).enis.len(), 4);
    // Still 3 idle > max 2, but min_eni holds.
    assert!(pool.plan(1_000_000, 0, 0).is_empty());
    assert_invariants(&pool);
}

#[test]
fn cool_down_restarts_and_waiters_stop_deletes() {
    let mut c = cfg();
    c.min_idle = 0;
    c.max_idle = 1;
    let mut cloud = Cloud::default();
    let mut pool = pool_with_enis(c, &mut cloud, 3);
    assert!(pool.plan(0, 0, 0).is_empty());
    // Back to max at 30 s, above again at 40 s: the cool-down restarts.
    pool.allocate(&key(1), "", 30_000).unwrap();
    pool.allocate(&key(2), "", 30_000).unwrap();
    pool.release(&key(1), 40_000);
    assert!(pool.plan(60_000, 0, 0).is_empty());
    // Pods waiting: nothing is deleted.
    assert!(pool.plan(100_000, 1, 0).is_empty());
    assert_eq!(deletes(&pool.plan(100_000, 0, 0)).len(), 1);
}

#[test]
fn owned_eni_is_never_deleted() {
    let mut c = cfg();
    c.min_idle = 0;
    c.max_idle = 0;
    c.release_after_ms = 0;
    let mut cloud = Cloud::default();
    let mut pool = pool_with_enis(c, &mut cloud, 3);
    let held = pool.allocate(&key(1), "", 0).unwrap();
    let ops = pool.plan(10, 0, 0);
    assert_eq!(deletes(&ops).len(), 2);
    assert!(!deletes(&ops).contains(&held.eni_id.as_str()));
    run_all(&mut pool, &mut cloud, &ops, 20);
    assert!(pool.plan(30, 0, 0).is_empty());
    // A delete outcome for an owned ENI (not planned by the pool) keeps the owner known, lost.
    pool.apply(
        CloudOutcome::EniDeleted {
            op: 999,
            eni_id: held.eni_id.clone(),
        },
        40,
    );
    assert_eq!(pool.lease_of(&key(1)), Some(held));
    assert_eq!(pool.snapshot(40).enis[0].status, EniStatus::Lost);
    assert_eq!(pool.idle(), 0);
    assert_invariants(&pool);
}

#[test]
fn failed_delete_holds_eni_back_until_reconcile() {
    let mut c = cfg();
    c.min_idle = 0;
    c.max_idle = 0;
    c.release_after_ms = 0;
    let mut cloud = Cloud::default();
    let mut pool = pool_with_enis(c, &mut cloud, 2);
    let ops = pool.plan(10, 0, 0);
    assert_eq!(deletes(&ops).len(), 2);
    // The first is detached but its delete failed; the second was not touched.
    cloud.enis.remove(deletes(&ops)[0]);
    fail_all(
        &mut pool,
        &ops,
        &failure("InvalidOperation.InvalidEniState"),
        20,
    );
    assert_eq!(pool.idle(), 0);
    assert!(pool.wants_reconcile());
    assert!(pool.allocate(&key(1), "", 20).is_none());
    assert_eq!(pool.unservable(20, 1), None, "a reconcile may help");
    let rep = pool.reconcile(&cloud.observed(), 30);
    assert_eq!(rep.removed_idle, vec![deletes(&ops)[0].to_string()]);
    assert!(!pool.wants_reconcile());
    assert_eq!(pool.idle(), 1);
    // Retried after the back-off (both failed in one wave: one step, 1 s).
    assert!(pool.plan(30, 0, 0).is_empty());
    assert_eq!(pool.next_deadline(31), Some(1020));
    assert_eq!(deletes(&pool.plan(1020, 0, 0)), vec![deletes(&ops)[1]]);
    // Already gone when retried: counts as deleted.
    let op = pool.flights.ids().next().unwrap();
    pool.apply(
        CloudOutcome::Failed {
            op,
            failure: failure("InvalidEniId.NotFound"),
        },
        2100,
    );
    assert!(pool.state().enis.is_empty());
}

#[test]
fn eni_limit_and_quota_are_unservable_with_the_clouds_words_and_back_off() {
    for code in ["EniPerInstanceLimitExceeded", "QuotaExceeded.Eni"] {
        let mut c = cfg();
        c.min_idle = 0;
        let mut pool = Pool::new(c, PoolState::default());
        let msg = format!("{code}: the cloud says no");
        let refusal = CloudFailure {
            code: code.into(),
            message: msg.clone(),
        };
        let mut calls = Vec::new();
        let mut now = 0;
        // The daemon plans every 10 ms for 10 s with 3 pods waiting.
        while now < 10_000 {
            let ops = pool.plan(now, 3, 0);
            calls.extend(std::iter::repeat_n(now, ops.len()));
            fail_all(&mut pool, &ops, &refusal, now + 5);
            if now == 100 {
                let why = pool.unservable(now, 3).unwrap();
                assert!(why.contains(&format!("{code}: {msg}")), "{why}");
                assert!(why.contains("next try in 1 s"), "{why}");
                let snap = pool.snapshot(now);
                assert_eq!(snap.creates_refused, Some(format!("{code}: {msg}")));
            }
            now += 10;
        }
        // 3 parallel creates at 20 ms (failing together: one back-off step), then a single
        // probe per back-off (1, 2, 4 s).
        assert_eq!(calls, vec![20, 20, 20, 1030, 3040, 7050], "{code}");
        assert_eq!(pool.last_failure().unwrap().code, code);
    }
}

#[test]
fn after_a_refusal_one_probe_then_the_rest_in_parallel() {
    let mut c = cfg();
    c.min_idle = 0;
    let mut pool = Pool::new(c, PoolState::default());
    let mut cloud = Cloud::default();
    pool.plan(0, 4, 0);
    let ops = pool.plan(20, 4, 0);
    fail_all(&mut pool, &ops, &failure("EniPerInstanceLimitExceeded"), 30);
    assert!(pool.plan(500, 4, 0).is_empty());
    let probe = pool.plan(1030, 4, 0);
    assert_eq!(creates(&probe).len(), 1);
    assert!(pool.plan(1500, 4, 0).is_empty(), "one probe at a time");
    assert_eq!(pool.unservable(1500, 4), None, "the probe may succeed");
    run_all(&mut pool, &mut cloud, &probe, 1100);
    assert_eq!(pool.snapshot(1100).creates_refused, None);
    assert_eq!(pool.last_failure(), None);
    // The refusal is over: the rest at once (3 waiting beyond the new idle one).
    assert_eq!(creates(&pool.plan(1100, 4, 0)).len(), 3);
}

#[test]
fn a_success_from_the_failed_wave_does_not_end_a_refusal() {
    let mut c = cfg();
    c.min_idle = 0;
    let mut pool = Pool::new(c, PoolState::default());
    let mut cloud = Cloud::default();
    pool.plan(0, 2, 0);
    let ops = pool.plan(20, 2, 0);
    let refusal = failure("EniPerInstanceLimitExceeded");
    fail_all(&mut pool, &ops[..1], &refusal, 30);
    run_all(&mut pool, &mut cloud, &ops[1..], 40);
    assert_eq!(pool.idle(), 1);
    assert!(pool.snapshot(40).creates_refused.is_some());
    pool.allocate(&key(1), "", 40).unwrap();
    assert!(
        pool.plan(40, 1, 0).is_empty(),
        "no retry before the back-off"
    );
    assert!(
        pool.unservable(40, 1)
            .unwrap()
            .contains("EniPerInstanceLimitExceeded")
    );
}

#[test]
fn throttling_backs_off_exponentially_and_is_not_unservable() {
    let mut c = cfg();
    c.min_idle = 0;
    let mut pool = Pool::new(c, PoolState::default());
    let mut tries = Vec::new();
    let mut now = 0;
    while now < 3_000_000 {
        let ops = pool.plan(now, 1, 0);
        tries.extend(std::iter::repeat_n(now, ops.len()));
        fail_all(&mut pool, &ops, &failure("Throttling.User"), now);
        assert_eq!(pool.unservable(now, 1), None, "throttling is temporary");
        now += 10;
    }
    let gaps: Vec<u64> = tries.windows(2).map(|w| w[1] - w[0]).collect();
    assert_eq!(&gaps[..4], &[1000, 2000, 4000, 8000]);
    assert!(
        gaps.iter()
            .all(|g| *g <= crate::pool::shared_eni::MAX_RETRY_MS),
        "{gaps:?}"
    );
    assert!(tries.len() < 20, "{} tries", tries.len());
    // A success resets the back-off.
    let mut cloud = Cloud::default();
    let t = pool.next_deadline(now).unwrap();
    let ops = pool.plan(t, 1, 0);
    run_all(&mut pool, &mut cloud, &ops, t);
    assert_eq!(pool.last_failure(), None);
}

#[test]
fn exhausted_vswitch_is_blocked_and_next_one_used() {
    let mut pool = Pool::new(cfg(), PoolState::default());
    let mut cloud = Cloud::default();
    cloud.exhausted.insert(AAA.into());
    pool.plan(0, 1, 0);
    let ops = pool.plan(20, 1, 0);
    assert_eq!(creates(&ops), vec![AAA, AAA]);
    run_all(&mut pool, &mut cloud, &ops, 100);
    assert_blocked_alone(&pool.snapshot(100).blocked_vswitches, AAA, 300_100);
    assert_eq!(pool.unservable(100, 1), None);
    assert_eq!(pool.next_deadline(100), Some(100));
    let ops = pool.plan(100, 1, 0);
    assert_eq!(creates(&ops), vec![BBB, BBB]);
    run_all(&mut pool, &mut cloud, &ops, 200);
    let l = pool.allocate(&key(1), "", 200).unwrap();
    assert_eq!(l.vswitch_cidr.to_string(), "10.2.0.0/16");
    assert_eq!(pool.snapshot(300_100).blocked_vswitches.len(), 0);
}

#[test]
fn all_vswitches_blocked_is_unservable_and_reload_fixes_it() {
    let mut c = cfg();
    let mut pool = Pool::new(c.clone(), PoolState::default());
    let mut cloud = Cloud::default();
    cloud.exhausted.insert(AAA.into());
    cloud.exhausted.insert(BBB.into());
    pool.plan(0, 1, 0);
    let ops = pool.plan(20, 1, 0);
    assert_eq!(pool.unservable(20, 1), None, "creates in flight");
    run_all(&mut pool, &mut cloud, &ops, 30);
    let ops = pool.plan(30, 1, 0);
    assert_eq!(creates(&ops), vec![BBB, BBB]);
    run_all(&mut pool, &mut cloud, &ops, 40);
    assert_quotes_exhausted(&pool.unservable(40, 1).unwrap(), &[AAA, BBB]);
    assert!(pool.plan(40, 1, 0).is_empty());
    c.vswitches.push("vsw-CCC".into());
    pool.set_config(c);
    assert_eq!(pool.unservable(50, 1), None);
    assert_eq!(creates(&pool.plan(50, 1, 0)), vec!["vsw-CCC"; 2]);

    let mut c = cfg();
    c.vswitches.clear();
    let pool = Pool::new(c, PoolState::default());
    assert_no_vswitch(pool.unservable(0, 1));
}

#[test]
fn vswitch_policies() {
    let mut c = cfg();
    c.min_idle = 0;
    c.vswitches = vec![AAA.into(), BBB.into(), "vsw-CCC".into()];
    type Row = (
        VSwitchPolicy,
        u64,
        &'static [(&'static str, u64)],
        u32,
        &'static [&'static str],
    );
    let table: &[Row] = &[
        (VSwitchPolicy::Ordered, 7, &[], 1, &[AAA]),
        (VSwitchPolicy::Random, 7, &[], 1, &[BBB]),
        (VSwitchPolicy::Random, 5, &[], 1, &["vsw-CCC"]),
        (
            VSwitchPolicy::Most,
            0,
            &[(AAA, 5), ("vsw-CCC", 50)],
            1,
            &["vsw-CCC"],
        ),
        (VSwitchPolicy::Most, 0, &[(BBB, 5)], 1, &[BBB]),
        (VSwitchPolicy::Most, 0, &[], 1, &[AAA]),
        (VSwitchPolicy::Most, 0, &[(AAA, 0)], 1, &[BBB]),
        // Several creates in one plan spread by the free counts.
        (
            VSwitchPolicy::Most,
            0,
            &[(AAA, 2), (BBB, 3), ("vsw-CCC", 0)],
            3,
            &[BBB, AAA, BBB],
        ),
    ];
    for &(policy, random, free, waiting, want) in table {
        c.vswitch_policy = policy;
        let mut pool = Pool::new(c.clone(), PoolState::default());
        for (v, n) in free {
            pool.set_vswitch_free(v, *n);
        }
        pool.plan(0, waiting, random);
        let ops = pool.plan(20, waiting, random);
        assert_eq!(creates(&ops), want, "{policy:?} {random}");
    }
}

#[test]
fn lowered_max_enis_deletes_idle_excess() {
    let mut c = cfg();
    c.min_idle = 2;
    c.max_idle = 5;
    c.release_after_ms = 0;
    let mut cloud = Cloud::default();
    let mut pool = pool_with_enis(c.clone(), &mut cloud, 4);
    for n in 0..2 {
        pool.allocate(&key(n), "", 0).unwrap();
    }
    c.max_enis = 1;
    pool.set_config(c);
    // 4 attached, max 1: both idle ones go even though idle drops below min_idle; the owned
    // ones stay until their pods leave.
    let ops = pool.plan(10, 0, 0);
    assert_eq!(deletes(&ops).len(), 2);
    assert!(creates(&ops).is_empty());
    run_all(&mut pool, &mut cloud, &ops, 20);
    assert!(pool.plan(30, 0, 0).is_empty());
    pool.release(&key(0), 40);
    assert_eq!(deletes(&pool.plan(50, 0, 0)).len(), 1);
    assert_invariants(&pool);
}

#[test]
fn next_deadline_never_spins() {
    let mut c = cfg();
    c.min_idle = 3;
    let mut pool = Pool::new(c, PoolState::default());
    // With nothing completing, a loop obeying next_deadline plans only a handful of times.
    let plans = plans_obeying_next_deadline(&mut pool, 100_000);
    assert!(plans <= 3, "{plans}");
    assert_eq!(pool.ops_in_flight(), 3);
}
