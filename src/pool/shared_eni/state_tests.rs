//! Reconcile against the cloud, random operation sequences, the sticky rule, persisted state.

use super::sim::*;
use super::*;
use crate::pool::test_support::*;
use std::collections::BTreeSet;

#[test]
fn reconcile_lost_adopted_removed() {
    let mut c = cfg();
    c.min_idle = 0;
    c.max_idle = 100;
    let mut cloud = Cloud::default();
    let mut pool = pool_with_eni(c, &mut cloud, 4);
    let f = cloud.observed()[0].clone();
    let (a, b, d) = (f.secondary_ips[0], f.secondary_ips[1], f.secondary_ips[2]);
    // key 1 gets `a` (longest idle among equals = lowest address after the primary? force it).
    for i in &mut pool.st.enis[0].ips {
        if i.ip == a {
            i.owner = Some(key(1));
        }
    }
    // The cloud lost `a` and `b`, and has a new `n`; and a second ENI appeared.
    let n = ip("10.1.9.9");
    let e = cloud.enis.get_mut(&f.id).unwrap();
    e.secondary_ips = vec![d, n];
    let other = cloud.facts(BBB, 2);
    let rep = pool.reconcile(&cloud.observed(), 100);
    assert_eq!(rep.lost, vec![(key(1), a)]);
    assert_eq!(rep.removed_idle, vec![b]);
    let mut adopted = rep.adopted.clone();
    adopted.sort();
    let mut want = vec![n, other.primary_ip];
    want.extend(other.secondary_ips.iter().copied());
    want.sort();
    assert_eq!(adopted, want);
    // Lost is reported once; the pod still has it (invalid), nobody else gets it.
    assert!(pool.reconcile(&cloud.observed(), 200).lost.is_empty());
    assert_eq!(pool.lease_of(&key(1)).unwrap().ip, a);
    let snap = pool.snapshot(200);
    assert!(snap.enis[0].ips.iter().any(|i| i.ip == a && i.invalid));
    let mut given = BTreeSet::new();
    for k in 10..20 {
        if let Some(l) = pool.allocate(&key(k), "", 300) {
            assert_ne!(l.ip, a);
            assert!(given.insert(l.ip));
        }
    }
    assert_eq!(given.len(), 6);
    // Released by its pod: dropped, never idle.
    assert_eq!(pool.release(&key(1), 400).unwrap().ip, a);
    assert!(!pool.st.enis.iter().any(|e| e.ips.iter().any(|i| i.ip == a)));
    assert_invariants(&pool);
}

#[test]
fn reconcile_missing_eni_and_in_flight_ops() {
    let mut c = cfg();
    c.min_idle = 0;
    c.max_idle = 100;
    let mut cloud = Cloud::default();
    let mut pool = pool_with_eni(c, &mut cloud, 3);
    let l = pool.allocate(&key(1), "", 0).unwrap();
    // The ENI vanished: idle dropped, the owned one invalid, the ENI no longer counts.
    cloud.enis.clear();
    let rep = pool.reconcile(&[], 10);
    assert_eq!(rep.lost, vec![(key(1), l.ip)]);
    assert_eq!(rep.removed_idle.len(), 2);
    assert_eq!(pool.idle(), 0);
    assert_eq!(pool.in_use(), 1);
    assert_eq!(pool.eni_count(), 0);
    assert!(
        pool.allocate(&key(1), "", 20).is_none(),
        "re-ADD gets no invalid IP"
    );
    assert_eq!(pool.in_use(), 0);
    assert!(pool.state().enis.is_empty());

    // An assign in flight: the reconcile leaves that ENI alone, and does not adopt unknown ENIs
    // while a create is in flight.
    let f = cloud.facts(AAA, 0);
    pool.reconcile(&cloud.observed(), 30);
    pool.allocate(&key(2), "", 30).unwrap();
    pool.plan(30, 1, 0);
    let ops = pool.plan(50, 1, 0);
    assert_eq!(assigns(&ops).len(), 1);
    let extra = ip("10.1.8.8");
    cloud.enis.get_mut(&f.id).unwrap().secondary_ips.push(extra);
    let rep = pool.reconcile(&cloud.observed(), 60);
    assert!(rep.adopted.is_empty() && rep.lost.is_empty());
    pool.apply(
        CloudOutcome::IpsAssigned {
            op: ops[0].id(),
            eni_id: f.id.clone(),
            ips: vec![extra],
            ips6: Vec::new(),
            failure6: None,
        },
        70,
    );
    assert_eq!(pool.idle(), 1);
    assert_invariants(&pool);
}

#[test]
fn random_sequences_never_double_assign_or_release_owned() {
    for seed in 1..40u64 {
        let mut rng = Rng(seed.wrapping_mul(0x2545_f491_4f6c_dd1d) | 1);
        let mut c = cfg();
        c.min_idle = rng.below(4) as u32;
        c.max_idle = c.min_idle + rng.below(6) as u32;
        c.ips_per_eni = 1 + rng.below(6) as u32;
        c.max_enis = 1 + rng.below(4) as u32;
        c.batch = 1 + rng.below(4) as u32;
        c.release_after_ms = rng.below(50);
        c.coalesce_ms = rng.below(3);
        let mut pool = Pool::new(c, PoolState::default());
        let mut cloud = Cloud::default();
        let mut flying: Vec<CloudOp> = Vec::new();
        let mut now = 0;
        for _ in 0..400 {
            now += rng.below(20);
            match rng.below(9) {
                0 | 1 => {
                    let k = key(rng.below(12) as u32);
                    let name = format!("ns/p{}", rng.below(4));
                    if let Some(l) = pool.allocate(&k, &name, now) {
                        assert_eq!(pool.lease_of(&k), Some(l.clone()));
                        let snap = pool.snapshot(now);
                        let held = snap.enis.iter().flat_map(|e| &e.ips).find(|i| i.ip == l.ip);
                        assert!(held.is_some_and(|i| !i.invalid && i.owner == Some(k.clone())));
                    }
                }
                2 => {
                    pool.release(&key(rng.below(12) as u32), now);
                }
                3 | 4 => {
                    let ops = pool.plan(now, rng.below(4) as u32, rng.next());
                    flying.extend(ops);
                }
                5 | 6 if !flying.is_empty() => {
                    let op = flying.swap_remove(rng.below(flying.len() as u64) as usize);
                    let out = if rng.below(4) == 0 {
                        let code = [
                            "Throttling.User",
                            "InvalidVSwitchId.IpNotEnough",
                            "QuotaExceeded.PrivateIpAddress",
                            "EniPerInstanceLimitExceeded",
                            "InvalidIp.IpUnassigned",
                        ][rng.below(5) as usize];
                        // An address "already unassigned" is gone from the cloud too: else
                        // the cloud's ENI would keep it and overflow once the pool refills
                        // (ENIs now come with their whole claim).
                        if let (
                            crate::cloud::codes::IP_UNASSIGNED,
                            CloudOp::UnassignIps { eni_id, ips, .. },
                        ) = (code, &op)
                            && let Some(e) = cloud.enis.get_mut(eni_id)
                        {
                            e.secondary_ips.retain(|i| !ips.contains(i));
                        }
                        CloudOutcome::Failed {
                            op: op.id(),
                            failure: failure(code),
                        }
                    } else {
                        cloud.run(&op, &pool)
                    };
                    pool.apply(out, now);
                }
                7 => {
                    // The cloud loses a random address now and then.
                    if rng.below(3) == 0 {
                        let ids: Vec<String> = cloud.enis.keys().cloned().collect();
                        if !ids.is_empty() {
                            let id = &ids[rng.below(ids.len() as u64) as usize];
                            let e = cloud.enis.get_mut(id).unwrap();
                            if !e.secondary_ips.is_empty() {
                                e.secondary_ips.remove(0);
                            }
                        }
                    }
                    pool.reconcile(&cloud.observed(), now);
                }
                _ => {
                    let _ = pool.unservable(now, rng.below(3) as u32);
                    let _ = pool.next_deadline(now);
                }
            }
            assert_invariants(&pool);
            assert!(pool.in_use() + pool.idle() <= pool.capacity().max(1) * 2 + 10);
            // Nothing invalid is ever idle; nothing releasing is ever owned.
            for e in &pool.st.enis {
                for i in &e.ips {
                    assert!(!(i.releasing && i.owner.is_some()));
                }
            }
        }
    }
}

#[test]
fn serde_round_trip() {
    let mut c = cfg();
    c.min_idle = 0;
    let mut cloud = Cloud::default();
    let mut pool = pool_with_eni(c.clone(), &mut cloud, 5);
    pool.allocate(&key(1), "ns/web-0", 10).unwrap();
    pool.allocate(&key(2), "ns/web-1", 10).unwrap();
    pool.release(&key(2), 20);
    pool.block(
        BBB,
        "The specified VSwitch \"vsw-BBB\" has not enough IpAddress.",
        30,
    );
    // An empty file loads too.
    let back = assert_round_trip(pool.state());
    let restored = Pool::new(c, back);
    assert_eq!(restored.lease_of(&key(1)), pool.lease_of(&key(1)));
    assert_eq!(restored.snapshot(40), pool.snapshot(40));
}

#[test]
fn sticky_ip_for_recreated_pod_and_longest_idle_otherwise() {
    let mut c = cfg();
    c.min_idle = 0;
    c.max_idle = 100;
    let mut cloud = Cloud::default();
    let mut pool = pool_with_eni(c, &mut cloud, 5);
    let web0 = pool.allocate(&key(1), "ns/web-0", 100).unwrap();
    let other = pool.allocate(&key(2), "ns/x", 100).unwrap();
    assert_ne!(web0.ip, other.ip);
    pool.release(&key(1), 200);
    pool.release(&key(2), 200);
    // Other pods do not get web-0's address while it is kept for it.
    for k in 3..6 {
        let l = pool.allocate(&key(k), "ns/y", 300).unwrap();
        assert_ne!(l.ip, web0.ip);
        pool.release(&key(k), 300);
    }
    let again = pool.allocate(&key(10), "ns/web-0", 1000).unwrap();
    assert_eq!(again.ip, web0.ip);
    pool.release(&key(10), 2000);
    // After the window it is an ordinary idle IP again: the longest idle goes first.
    let l = pool.allocate(&key(11), "ns/web-0", 2000 + 300_000).unwrap();
    assert_ne!(l.ip, web0.ip);
}

#[test]
fn state_from_a_previous_boot_does_not_freeze_blocks_or_sticky() {
    let mut c = cfg();
    c.min_idle = 0;
    c.max_idle = 100;
    let mut cloud = Cloud::default();
    let mut old = pool_with_eni(c.clone(), &mut cloud, 3);
    let boot = 1_000_000_000;
    let l = old.allocate(&key(1), "ns/web-0", boot).unwrap();
    old.release(&key(1), boot);
    old.block(
        AAA,
        "The specified VSwitch \"vsw-AAA\" has not enough IpAddress.",
        boot,
    );
    // New boot: the monotonic clock starts again near 0.
    let mut pool = Pool::new(c, old.state().clone());
    pool.plan(10, 0, 0);
    assert_eq!(pool.snapshot(10).blocked_vswitches[0].until_ms, 300_010);
    assert_eq!(pool.snapshot(300_010).blocked_vswitches.len(), 0);
    // Sticky still works within the window, and ends with it.
    assert_eq!(pool.allocate(&key(2), "ns/web-0", 20).unwrap().ip, l.ip);
    pool.release(&key(2), 30);
    assert_ne!(
        pool.allocate(&key(3), "ns/web-0", 400_000).unwrap().ip,
        l.ip
    );
}

#[test]
fn state_file_format_is_stable() {
    // Every field set once: the state files of running nodes must keep loading, and what is
    // written back must read the same.
    let json = concat!(
        r#"{"enis":[{"id":"eni-1","mac":"00:16:3e:00:00:01","vswitch_id":"vsw-AAA","#,
        r#""vswitch_cidr":"10.1.0.0/16","gateway":"10.1.0.1","primary_ip":"10.1.0.11","#,
        r#""ips":[{"ip":"10.1.0.11","owner":{"network":"terway","container_id":"c1","#,
        r#""ifname":"eth0"},"pod":"ns/a","since":5,"invalid":true,"releasing":true},"#,
        r#"{"ip":"10.1.0.12","since":0}],"full":true,"gone":true,"deleting":true}],"#,
        r#""blocked":[{"id":"vsw-BBB","until_ms":300000,"reason":"out of addresses"}]}"#
    );
    let st: PoolState = serde_json::from_str(json).unwrap();
    assert_eq!(st.enis[0].ips.len(), 2);
    assert_eq!(st.blocked.active(0).len(), 1);
    assert_eq!(serde_json::to_string(&st).unwrap(), json);
}

#[test]
fn a_released_ip_cools_down_before_another_pod_gets_it() {
    let mut c = cfg();
    c.min_idle = 0;
    c.max_idle = 100;
    c.cooldown_ms = 120_000;
    let mut cloud = Cloud::default();
    let busy = cloud.facts(AAA, 3); // 4 addresses: the ENI policy's favourite when idle
    let quiet = cloud.facts(AAA, 0); // 1 address, idle since the start
    let mut pool = Pool::new(c, PoolState::default());
    pool.reconcile(&cloud.observed(), 0);
    let held: Vec<Lease> = (1..=4)
        .map(|k| pool.allocate(&key(k), "ns/old", 1_000).unwrap())
        .collect();
    assert!(held.iter().all(|l| l.eni_id == busy.id), "{held:?}");
    for k in 1..=4 {
        pool.release(&key(k), 10_000);
    }
    // 121 s in: the four just-released addresses still cool down; the quiet one does not.
    let first = pool.allocate(&key(10), "ns/new", 121_000).unwrap();
    assert_eq!(first.eni_id, quiet.id, "a cooled address first");
    // Nothing else has cooled: a cooling address rather than no address.
    let second = pool.allocate(&key(11), "ns/new2", 121_000).unwrap();
    assert_eq!(second.eni_id, busy.id);
}
