//! Fills and releases, coalescing, failures and back-off, vSwitch choice, capacity, bursts and
//! churn.

use super::sim::*;
use super::*;
use crate::pool::test_support::*;

#[test]
fn cold_start_fill_table() {
    // (min, max, ips_per_eni, batch, max_enis) -> creates (vswitch, secondary_count) after the window
    type Row = (u32, u32, u32, u32, u32, &'static [(&'static str, u32)]);
    let table: &[Row] = &[
        (2, 5, 30, 10, 7, &[(AAA, 4)]),
        // The whole claim on the create, not a batch.
        (10, 20, 30, 10, 7, &[(AAA, 19)]),
        (0, 0, 30, 10, 7, &[]),
        // ENIs smaller than a batch: several creates, each at most ips_per_eni.
        (12, 12, 5, 10, 7, &[(AAA, 4), (AAA, 4), (AAA, 1)]),
        // capped by max_enis
        (40, 40, 10, 10, 2, &[(AAA, 9), (AAA, 9)]),
        // min above max is treated as min
        (4, 1, 30, 10, 7, &[(AAA, 3)]),
    ];
    for &(min, max, per, batch, max_enis, want) in table {
        let mut c = cfg();
        (c.min_idle, c.max_idle, c.ips_per_eni, c.batch, c.max_enis) =
            (min, max, per, batch, max_enis);
        let mut pool = Pool::new(c, PoolState::default());
        assert_eq!(pool.next_deadline(0), Some(0));
        assert!(pool.plan(0, 0, 0).is_empty(), "window not over yet");
        if want.is_empty() {
            assert_eq!(pool.next_deadline(0), None);
            continue;
        }
        assert_eq!(pool.next_deadline(5), Some(20));
        let ops = pool.plan(20, 0, 0);
        let want: Vec<(String, u32)> = want.iter().map(|(v, n)| (v.to_string(), *n)).collect();
        assert_eq!(creates(&ops), want, "min {min} max {max} per {per}");
        let mut cloud = Cloud::default();
        run_all(&mut pool, &mut cloud, &ops, 1000);
        assert!(pool.idle() >= min.min(per * max_enis));
        assert!(pool.idle() <= max.max(min));
        // Settled: nothing more to do.
        assert!(pool.plan(1000, 0, 0).is_empty());
        assert_invariants(&pool);
    }
}

#[test]
fn burst_of_40_creates_in_parallel_with_their_whole_claim() {
    let mut c = cfg();
    c.min_idle = 0;
    let mut pool = Pool::new(c, PoolState::default());
    let mut cloud = Cloud::default();
    assert!(pool.plan(0, 40, 0).is_empty());
    let ops = pool.plan(20, 40, 0);
    // 40 pods + max_idle 5 need two 30-IP ENIs: both created at once, each with all it was
    // claimed for (30 and 15 addresses, primary included), so no assign follows.
    assert_eq!(
        creates(&ops),
        vec![(AAA.to_string(), 29), (AAA.to_string(), 14)]
    );
    assert_eq!(pool.pending_ips(), 45);
    // While they attach, more plans (more waiters arriving) ask for nothing new.
    assert!(pool.plan(500, 40, 0).is_empty());
    assert_eq!(pool.unservable(500, 40), None);
    // Attach done at 2000 ms: every pod is served.
    run_all(&mut pool, &mut cloud, &ops, 2000);
    for n in 0..40 {
        assert!(pool.allocate(&key(n), "", 2000).is_some());
    }
    assert_eq!(pool.in_use(), 40);
    assert_eq!(pool.idle(), 5);
    assert!(pool.plan(2000, 0, 0).is_empty());
    // Two calls for 40 pods; ready at attach.
    assert_eq!(pool.flights.next_id() - 1, 2);
    assert_invariants(&pool);
}

#[test]
fn a_later_burst_uses_the_room_left_not_more_enis() {
    let mut c = cfg();
    c.min_idle = 0;
    c.max_idle = 0;
    let mut pool = Pool::new(c, PoolState::default());
    let mut cloud = Cloud::default();
    pool.plan(0, 25, 0);
    let ops = pool.plan(20, 25, 0);
    assert_eq!(creates(&ops), vec![(AAA.to_string(), 24)]);
    run_all(&mut pool, &mut cloud, &ops, 1000);
    for n in 0..25 {
        pool.allocate(&key(n), "", 1000).unwrap();
    }
    // 5 more pods: the ENI's room (5 left of 30) takes them with one assign, no new ENI.
    let mut ops = pool.plan(1000, 5, 0);
    ops.extend(pool.plan(1020, 5, 0));
    assert_eq!(assigns(&ops), vec![5]);
    assert!(creates(&ops).is_empty());
    run_all(&mut pool, &mut cloud, &ops, 1200);
    for n in 25..30 {
        pool.allocate(&key(n), "", 1200).unwrap();
    }
    assert_eq!(pool.state().enis.len(), 1);
    assert_invariants(&pool);
}

#[test]
fn coalescing_window_turns_a_burst_into_one_call() {
    let mut c = cfg();
    c.min_idle = 0;
    let mut pool = Pool::new(c, PoolState::default());
    // Pods arrive one per 4 ms; the daemon plans at each arrival.
    for t in 0..5u64 {
        assert!(pool.plan(t * 4, t as u32 + 1, 0).is_empty(), "t={t}");
        assert_eq!(pool.next_deadline(t * 4), Some(20));
    }
    let ops = pool.plan(20, 5, 0);
    // 5 waiting + max_idle 5: one call of 10.
    assert_eq!(creates(&ops), vec![(AAA.to_string(), 9)]);
    let mut cloud = Cloud::default();
    run_all(&mut pool, &mut cloud, &ops, 1000);
    for n in 0..5 {
        pool.allocate(&key(n), "", 1000).unwrap();
    }
    // Demand met: the window closes; a later shortfall opens a new one.
    assert!(pool.plan(1000, 0, 0).is_empty());
    assert_eq!(pool.next_deadline(1000), None);
    for n in 5..10 {
        pool.allocate(&key(n), "", 2000).unwrap();
    }
    assert!(pool.plan(2000, 1, 0).is_empty());
    assert_eq!(pool.next_deadline(2000), Some(2020));
    assert_eq!(assigns(&pool.plan(2020, 1, 0)), vec![6]);
}

#[test]
fn release_only_after_cool_down_emptiest_first_whole_eni_and_never_primary() {
    let mut c = cfg();
    c.min_idle = 2;
    c.max_idle = 5;
    let mut cloud = Cloud::default();
    let a = cloud.facts(AAA, 9); // 10 IPs, 8 will be in use
    let b = cloud.facts(AAA, 9); // 10 IPs, 2 in use (primary among them)
    let d = cloud.facts(AAA, 4); // 5 IPs, none in use
    let mut pool = Pool::new(c, PoolState::default());
    pool.reconcile(&cloud.observed(), 0);
    let mut n = 0;
    let mut take = |pool: &mut Pool, eni: &EniFacts, ips: &[Ipv4Addr]| {
        for &i in ips {
            let e = pool.eni_index(&eni.id).unwrap();
            let s = pool.st.enis[e].ips.iter_mut().find(|x| x.ip == i).unwrap();
            s.owner = Some(key(n));
            n += 1;
        }
    };
    take(&mut pool, &a, &a.secondary_ips[..8]);
    take(&mut pool, &b, &[b.primary_ip, b.secondary_ips[0]]);
    pool.touch(0);
    assert_eq!(pool.idle(), 2 + 8 + 5);
    assert_eq!(pool.next_deadline(0), Some(0));
    assert!(pool.plan(0, 0, 0).is_empty());
    assert_eq!(pool.next_deadline(1), Some(60_000));
    assert!(pool.plan(59_999, 0, 0).is_empty());
    let ops = pool.plan(60_000, 0, 0);
    assert_eq!(ops.len(), 2, "{ops:?}");
    assert!(matches!(&ops[0], CloudOp::DeleteEni { eni_id, .. } if *eni_id == d.id));
    match &ops[1] {
        CloudOp::UnassignIps { eni_id, ips, .. } => {
            assert_eq!(eni_id, &b.id);
            assert_eq!(ips.len(), 5);
            assert!(!ips.contains(&b.primary_ip));
        }
        other => panic!("{other:?}"),
    }
    // Released IPs are not handed out while in flight.
    assert_eq!(pool.idle(), 5);
    for k in 100..105 {
        let l = pool.allocate(&key(k), "", 60_001).unwrap();
        assert_ne!(l.eni_id, d.id);
    }
    assert!(pool.allocate(&key(200), "", 60_001).is_none());
    for k in 100..105 {
        pool.release(&key(k), 60_002);
    }
    run_all(&mut pool, &mut cloud, &ops, 61_000);
    assert_eq!(pool.idle(), 5);
    assert_eq!(pool.state().enis.len(), 2);
    assert!(pool.plan(200_000, 0, 0).is_empty());
    assert_invariants(&pool);
}

#[test]
fn release_keeps_min_idle_instead_of_deleting_and_cool_down_restarts() {
    let mut c = cfg();
    c.min_idle = 8;
    c.max_idle = 8;
    let mut cloud = Cloud::default();
    let mut pool = pool_with_eni(c, &mut cloud, 10);
    let primary = cloud.observed()[0].primary_ip;
    // Above max at 0, back to max at 30 s (pods took some), above again at 40 s.
    pool.allocate(&key(1), "", 30_000).unwrap();
    pool.allocate(&key(2), "", 30_000).unwrap();
    pool.release(&key(1), 40_000);
    assert!(
        pool.plan(60_000, 0, 0).is_empty(),
        "cool-down restarted at 40 s"
    );
    pool.release(&key(2), 50_000);
    let ops = pool.plan(100_000, 0, 0);
    // Deleting the only ENI would leave 0 < min_idle idle: unassign the excess instead.
    match &ops[..] {
        [CloudOp::UnassignIps { ips, .. }] => {
            assert_eq!(ips.len(), 2);
            assert!(!ips.contains(&primary));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn failed_release_goes_back_to_idle_with_retry() {
    let mut c = cfg();
    c.min_idle = 0;
    c.max_idle = 0;
    c.release_after_ms = 0;
    let mut cloud = Cloud::default();
    let mut pool = pool_with_eni(c, &mut cloud, 3);
    let ops = pool.plan(10, 0, 0);
    let op = match &ops[..] {
        [CloudOp::DeleteEni { op, .. }] => *op,
        other => panic!("{other:?}"),
    };
    assert_eq!(pool.idle(), 0);
    pool.apply(
        CloudOutcome::Failed {
            op,
            failure: failure("InvalidOperation.InvalidEniState"),
        },
        20,
    );
    assert_eq!(pool.idle(), 3);
    assert!(pool.plan(20, 0, 0).is_empty());
    assert_eq!(pool.next_deadline(20), Some(1020));
    assert_eq!(pool.plan(1020, 0, 0).len(), 1);
}

#[test]
fn churn_stays_within_watermarks_with_few_calls() {
    let mut c = cfg();
    c.min_idle = 5;
    c.max_idle = 15;
    let mut sim = Sim::new(c);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    // The population moves between levels so that both fills and releases happen.
    for (round, population) in [60u64, 150, 20, 100, 5, 60].into_iter().enumerate() {
        let until = sim.now + 600_000;
        sim.run(until, &mut rng, Some(population));
        // Quiet period: let the pool settle (fill, cool-down, release), then check.
        let until = sim.now + 120_000;
        sim.run(until, &mut rng, None);
        sim.serve();
        assert!(sim.waiters.is_empty(), "round {round}");
        assert!(sim.running.is_empty(), "round {round}");
        let idle = sim.pool.idle();
        assert!((5..=15).contains(&idle), "round {round}: idle {idle}");
        assert!(sim.pool.plan(sim.now, 0, 0).is_empty());
    }
    let per_pod = sim.calls as f64 / sim.allocations as f64;
    eprintln!(
        "churn: {} calls for {} pods, {} ENIs created, {} deleted",
        sim.calls,
        sim.allocations,
        sim.cloud.next_eni,
        sim.cloud.next_eni as usize - sim.cloud.enis.len()
    );
    assert!(sim.allocations > 1000, "{}", sim.allocations);
    assert!(
        per_pod < 0.25,
        "{} calls for {} pods",
        sim.calls,
        sim.allocations
    );
}

#[test]
fn exhausted_vswitch_is_blocked_and_next_one_used() {
    let mut pool = Pool::new(cfg(), PoolState::default());
    let mut cloud = Cloud::default();
    cloud.exhausted.insert(AAA.into());
    pool.plan(0, 1, 0);
    let ops = pool.plan(20, 1, 0);
    assert_eq!(creates(&ops)[0].0, AAA);
    run_all(&mut pool, &mut cloud, &ops, 100);
    assert_blocked_alone(&pool.snapshot(100).blocked_vswitches, AAA, 300_100);
    assert_eq!(pool.unservable(100, 1), None);
    assert_eq!(pool.next_deadline(100), Some(100));
    let ops = pool.plan(100, 1, 0);
    assert_eq!(creates(&ops)[0].0, BBB);
    run_all(&mut pool, &mut cloud, &ops, 200);
    assert!(pool.allocate(&key(1), "", 200).is_some());
    // The block expires after the back-off.
    assert_eq!(pool.snapshot(300_100).blocked_vswitches.len(), 0);
}

#[test]
fn assign_exhaustion_blocks_the_enis_vswitch() {
    let mut c = cfg();
    c.min_idle = 0;
    c.max_idle = 0;
    let mut cloud = Cloud::default();
    let mut pool = pool_with_eni(c, &mut cloud, 1);
    pool.allocate(&key(1), "", 0).unwrap();
    cloud.exhausted.insert(AAA.into());
    pool.plan(0, 1, 0);
    let ops = pool.plan(20, 1, 0);
    assert_eq!(assigns(&ops), vec![1]);
    run_all(&mut pool, &mut cloud, &ops, 50);
    // Not on that ENI any more: a new ENI in the next vSwitch.
    let ops = pool.plan(50, 1, 0);
    assert_eq!(creates(&ops), vec![(BBB.to_string(), 0)]);
}

#[test]
fn all_blocked_is_unservable_with_each_message_and_reload_fixes_it() {
    let mut c = cfg();
    c.vswitches = vec![AAA.into()];
    let mut pool = Pool::new(c.clone(), PoolState::default());
    let mut cloud = Cloud::default();
    cloud.exhausted.insert(AAA.into());
    cloud.exhausted.insert(BBB.into());
    pool.plan(0, 3, 0);
    let ops = pool.plan(20, 3, 0);
    assert_eq!(pool.unservable(20, 3), None, "a create is in flight");
    run_all(&mut pool, &mut cloud, &ops, 30);
    let why = pool.unservable(30, 3).unwrap();
    assert!(
        why.contains("The specified VSwitch \"vsw-AAA\" has not enough IpAddress."),
        "{why}"
    );
    assert!(pool.plan(30, 3, 0).is_empty());
    // Reload with vsw-BBB: servable again; it is exhausted too, so both are named.
    c.vswitches = vec![AAA.into(), BBB.into()];
    pool.set_config(c.clone());
    assert_eq!(pool.unservable(40, 3), None);
    let ops = pool.plan(40, 3, 0);
    assert_eq!(creates(&ops)[0].0, BBB);
    run_all(&mut pool, &mut cloud, &ops, 50);
    assert_quotes_exhausted(&pool.unservable(50, 3).unwrap(), &[AAA, BBB]);
    // A reload adding a vSwitch with room; the old blocks stay.
    c.vswitches.push("vsw-CCC".into());
    pool.set_config(c);
    assert_eq!(pool.unservable(60, 3), None);
    let ops = pool.plan(60, 3, 0);
    assert_eq!(creates(&ops)[0].0, "vsw-CCC");
    assert_eq!(pool.snapshot(60).blocked_vswitches.len(), 2);
}

#[test]
fn no_vswitch_configured_is_unservable() {
    let mut c = cfg();
    c.vswitches.clear();
    let pool = Pool::new(c, PoolState::default());
    assert_no_vswitch(pool.unservable(0, 1));
}

#[test]
fn capacity_reached() {
    let mut c = cfg();
    c.min_idle = 0;
    c.max_idle = 0;
    c.max_enis = 2;
    c.ips_per_eni = 3;
    let mut pool = Pool::new(c, PoolState::default());
    let mut cloud = Cloud::default();
    assert_eq!(pool.capacity(), 6);
    pool.plan(0, 7, 0);
    let ops = pool.plan(20, 7, 0);
    assert_eq!(
        creates(&ops),
        vec![(AAA.to_string(), 2), (AAA.to_string(), 2)]
    );
    run_all(&mut pool, &mut cloud, &ops, 100);
    for n in 0..6 {
        pool.allocate(&key(n), "", 100).unwrap();
    }
    assert!(pool.plan(100, 1, 0).is_empty());
    let why = pool.unservable(100, 1).unwrap();
    assert!(why.contains("node capacity reached: 6 of 6"), "{why}");
    pool.release(&key(0), 200);
    assert_eq!(pool.unservable(200, 1), None);
}

#[test]
fn failures_retry_after_without_op_storm() {
    let mut c = cfg();
    c.min_idle = 0;
    let mut pool = Pool::new(c, PoolState::default());
    let mut calls = 0;
    let mut now = 0;
    // The cloud throttles every call for 10 s; the daemon plans every 10 ms.
    while now < 10_000 {
        let ops = pool.plan(now, 5, 0);
        calls += ops.len();
        fail_all(&mut pool, &ops, &failure("Throttling.User"), now);
        assert_eq!(pool.unservable(now, 5), None, "throttling is temporary");
        now += 10;
    }
    // The delay doubles with each failure in a row: tries at 0, 1, 3 and 7 s.
    assert_eq!(calls, 4, "{calls} calls");
}

#[test]
fn backoff_is_capped_and_resets_on_success() {
    let mut c = cfg();
    c.min_idle = 0;
    let mut pool = Pool::new(c, PoolState::default());
    let mut now = 0;
    let mut tries = Vec::new();
    while now < 3_000_000 {
        let ops = pool.plan(now, 1, 0);
        tries.extend(std::iter::repeat_n(now, ops.len()));
        fail_all(&mut pool, &ops, &failure("Forbidden.RAM"), now);
        now += 1_000;
    }
    let gaps: Vec<u64> = tries.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(
        gaps.iter()
            .all(|g| *g <= crate::pool::shared_eni::MAX_RETRY_MS),
        "{gaps:?}"
    );
    assert_eq!(
        gaps.last(),
        Some(&crate::pool::shared_eni::MAX_RETRY_MS),
        "{gaps:?}"
    );
    assert!(
        tries.len() < 20,
        "a permanent error is not hammered: {} tries",
        tries.len()
    );
}

#[test]
fn eni_limit_and_full_eni() {
    let mut c = cfg();
    c.min_idle = 0;
    c.max_idle = 0;
    let mut cloud = Cloud::default();
    let mut pool = pool_with_eni(c, &mut cloud, 1);
    pool.allocate(&key(1), "", 0).unwrap();
    pool.plan(0, 1, 0);
    let ops = pool.plan(20, 1, 0);
    assert_eq!(assigns(&ops), vec![1]);
    // The ENI is full for the cloud: stop assigning to it, create instead.
    pool.apply(
        CloudOutcome::Failed {
            op: ops[0].id(),
            failure: failure("QuotaExceeded.PrivateIpAddress"),
        },
        30,
    );
    let ops = pool.plan(30, 1, 0);
    assert_eq!(creates(&ops).len(), 1);
    pool.apply(
        CloudOutcome::Failed {
            op: ops[0].id(),
            failure: failure("EniPerInstanceLimitExceeded"),
        },
        40,
    );
    assert!(pool.plan(40, 1, 0).is_empty());
    let why = pool.unservable(40, 1).unwrap();
    assert!(why.contains("EniPerInstanceLimitExceeded"), "{why}");
    // Second failure in a row: the wait has doubled.
    assert_eq!(pool.next_deadline(41), Some(2040));
    assert_eq!(creates(&pool.plan(2040, 1, 0)).len(), 1);
}

#[test]
fn allocation_policies() {
    let mut cloud = Cloud::default();
    let mut c = cfg();
    c.min_idle = 0;
    c.max_idle = 100;
    cloud.facts(AAA, 1); // 2 IPs
    cloud.facts(AAA, 4); // 5 IPs
    for (policy, want) in [(EniPolicy::MostIps, 1), (EniPolicy::LeastIps, 0)] {
        c.eni_policy = policy;
        let mut pool = Pool::new(c.clone(), PoolState::default());
        pool.reconcile(&cloud.observed(), 0);
        let l = pool.allocate(&key(1), "", 1).unwrap();
        assert_eq!(l.eni_id, cloud.observed()[want].id, "{policy:?}");
        assert_eq!(l.mac, cloud.observed()[want].mac);
    }
}

#[test]
fn vswitch_policies() {
    let mut c = cfg();
    c.vswitches = vec![AAA.into(), BBB.into(), "vsw-CCC".into()];
    type Row = (
        VSwitchPolicy,
        u64,
        &'static [(&'static str, u64)],
        &'static str,
    );
    let table: &[Row] = &[
        (VSwitchPolicy::Ordered, 7, &[], AAA),
        (VSwitchPolicy::Random, 7, &[], BBB),
        (VSwitchPolicy::Random, 5, &[], "vsw-CCC"),
        (
            VSwitchPolicy::Most,
            0,
            &[(AAA, 5), ("vsw-CCC", 50)],
            "vsw-CCC",
        ),
        (VSwitchPolicy::Most, 0, &[(BBB, 5)], BBB),
        (VSwitchPolicy::Most, 0, &[], AAA),
        (VSwitchPolicy::Most, 0, &[(AAA, 0)], BBB),
    ];
    for &(policy, random, free, want) in table {
        c.vswitch_policy = policy;
        let mut pool = Pool::new(c.clone(), PoolState::default());
        for (v, n) in free {
            pool.set_vswitch_free(v, *n);
        }
        pool.plan(0, 1, random);
        let ops = pool.plan(20, 1, random);
        assert_eq!(creates(&ops)[0].0, want, "{policy:?} {random}");
    }
}

#[test]
fn next_deadline_never_spins() {
    let mut c = cfg();
    c.min_idle = 3;
    let mut pool = Pool::new(c, PoolState::default());
    // With nothing completing, a loop obeying next_deadline plans only a handful of times.
    let plans = plans_obeying_next_deadline(&mut pool, 100_000);
    assert!(plans <= 3, "{plans}");
    assert_eq!(pool.ops_in_flight(), 1);
}

#[test]
fn last_failure_is_kept_until_a_fill_succeeds() {
    let mut pool = Pool::new(cfg(), PoolState::default());
    let mut cloud = Cloud::default();
    pool.plan(0, 1, 0);
    let ops = pool.plan(20, 1, 0);
    pool.apply(
        CloudOutcome::Failed {
            op: ops[0].id(),
            failure: failure("Forbidden.RAM"),
        },
        30,
    );
    assert_eq!(pool.last_failure().unwrap().code, "Forbidden.RAM");
    let ops = pool.plan(1030, 1, 0);
    run_all(&mut pool, &mut cloud, &ops, 1100);
    assert_eq!(pool.last_failure(), None);
}

#[test]
fn burst_time_to_all_ready_within_target() {
    // Target: 1.5 × (ENIs needed × attach + one assign) = 1.5 × (2 × 2000 + 300) ms.
    let target = (2 * 2000 + 300) * 3 / 2;
    // (pods arriving per 10 ms tick, label)
    for per_tick in [40u32, 4, 1] {
        let mut sim = Sim::new(cfg());
        let mut rng = Rng(7);
        let mut arrived = 0;
        while arrived < 40 || !sim.waiters.is_empty() {
            for _ in 0..per_tick.min(40 - arrived) {
                arrived += 1;
                sim.waiters.push_back(key(arrived));
            }
            let until = sim.now + 10;
            sim.run(until, &mut rng, None);
            assert!(sim.now < 60_000, "stuck");
        }
        assert!(
            sim.now <= target,
            "{per_tick}/tick: ready at {} ms",
            sim.now
        );
        eprintln!(
            "burst {per_tick}/tick: ready at {} ms, {} ENIs, {} calls",
            sim.now, sim.cloud.next_eni, sim.calls
        );
        assert!(sim.cloud.next_eni <= 2, "{} ENIs", sim.cloud.next_eni);
        assert!(sim.calls <= 6, "{} calls", sim.calls);
    }
}
