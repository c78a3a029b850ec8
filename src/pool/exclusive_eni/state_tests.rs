//! Reconcile against the cloud, the sticky rule, persisted state.

use super::sim::*;
use super::*;
use crate::pool::test_support::*;
use std::collections::BTreeSet;

#[test]
fn reconcile_lost_adopted_dropped() {
    let mut c = cfg();
    c.min_idle = 0;
    c.max_idle = 10;
    let mut cloud = Cloud::default();
    let mut pool = pool_with_enis(c, &mut cloud, 3);
    let held = pool.allocate(&key(1), "", 10).unwrap();
    let idle_ids: Vec<String> = cloud
        .enis
        .keys()
        .filter(|id| **id != held.eni_id)
        .cloned()
        .collect();
    // The cloud lost the pod's ENI and one idle ENI, and has a new one we did not create.
    cloud.enis.remove(&held.eni_id);
    cloud.enis.remove(&idle_ids[0]);
    let new = cloud.facts(BBB, 0);
    let rep = pool.reconcile(&cloud.observed(), 100);
    assert_eq!(rep.lost, vec![(key(1), held.eni_id.clone())]);
    assert_eq!(rep.removed_idle, vec![idle_ids[0].clone()]);
    assert_eq!(rep.adopted, vec![new.id.clone()]);
    // Lost is reported once; the pod still has it, nobody else gets it.
    assert_eq!(
        pool.reconcile(&cloud.observed(), 200),
        ReconcileReport::default()
    );
    assert_eq!(pool.lease_of(&key(1)), Some(held.clone()));
    assert_eq!(pool.idle(), 2);
    let mut got = BTreeSet::new();
    for n in 10..13 {
        if let Some(l) = pool.allocate(&key(n), "", 300) {
            assert_ne!(l.eni_id, held.eni_id);
            got.insert(l.eni_id);
        }
    }
    assert_eq!(got.len(), 2);
    // Released by its pod: dropped, never idle.
    assert_eq!(pool.release(&key(1), 400), Some(held.clone()));
    assert!(pool.st.enis.iter().all(|e| e.info.id != held.eni_id));
    // A re-ADD of a pod whose ENI was lost never gets it back (here: nothing idle).
    pool.release(&key(10), 500);
    cloud.enis.clear();
    let rep = pool.reconcile(&[], 600);
    assert_eq!(rep.lost, vec![(key(11), new.id.clone())]);
    assert_eq!(rep.removed_idle.len(), 1);
    assert_eq!(pool.allocate(&key(11), "", 700), None);
    assert_eq!(pool.in_use(), 0);
    assert!(pool.state().enis.is_empty());
    assert_invariants(&pool);
}

#[test]
fn reconcile_leaves_ops_in_flight_alone_and_lost_eni_may_come_back() {
    let mut c = cfg();
    c.min_idle = 0;
    c.max_idle = 0;
    c.release_after_ms = 0;
    let mut cloud = Cloud::default();
    let mut pool = pool_with_enis(c, &mut cloud, 1);
    let gone = cloud.observed()[0].clone();
    let ops = pool.plan(0, 0, 0);
    assert_eq!(deletes(&ops), vec![gone.id.as_str()]);
    // The cloud already shows it gone; the delete's outcome is not in yet: left alone.
    cloud.enis.clear();
    assert_eq!(pool.reconcile(&[], 10), ReconcileReport::default());
    assert_eq!(pool.snapshot(10).enis[0].status, EniStatus::Deleting);
    run_all(&mut pool, &mut cloud, &ops, 20);
    assert!(pool.state().enis.is_empty());

    // While a create is in flight, an unknown attached ENI is not adopted (it may be that one).
    let ops = pool.plan(30, 1, 0);
    let ops = [ops, pool.plan(60, 1, 0)].concat();
    assert_eq!(creates(&ops).len(), 1);
    let f = cloud.facts(AAA, 0);
    assert_eq!(
        pool.reconcile(&cloud.observed(), 70),
        ReconcileReport::default()
    );
    pool.apply(
        CloudOutcome::EniCreated {
            op: ops[0].id(),
            eni: f.clone(),
        },
        80,
    );
    assert_eq!(pool.idle(), 1);

    // A lost ENI that shows up attached again is the pod's again.
    let l = pool.allocate(&key(1), "", 90).unwrap();
    assert_eq!(pool.reconcile(&[], 100).lost, vec![(key(1), f.id.clone())]);
    pool.reconcile(&[f], 110);
    assert_eq!(pool.snapshot(110).enis[0].status, EniStatus::InUse);
    assert_eq!(pool.allocate(&key(1), "", 120), Some(l));
    assert_invariants(&pool);
}

#[test]
fn sticky_eni_for_recreated_pod_and_longest_idle_otherwise() {
    let mut c = cfg();
    c.min_idle = 0;
    c.max_idle = 10;
    let mut cloud = Cloud::default();
    let mut pool = pool_with_enis(c, &mut cloud, 3);
    let web0 = pool.allocate(&key(1), "ns/web-0", 100).unwrap();
    let other = pool.allocate(&key(2), "ns/x", 100).unwrap();
    pool.release(&key(2), 200);
    pool.release(&key(1), 300);
    // Other pods get the longest idle ENIs, web-0's (released last) only when nothing else is
    // left.
    let y = pool.allocate(&key(3), "ns/y", 400).unwrap();
    assert_ne!(y.eni_id, web0.eni_id);
    assert_ne!(y.eni_id, other.eni_id);
    let z = pool.allocate(&key(4), "ns/z", 400).unwrap();
    assert_eq!(z.eni_id, other.eni_id);
    pool.release(&key(3), 400);
    pool.release(&key(4), 400);
    let again = pool.allocate(&key(10), "ns/web-0", 1000).unwrap();
    assert_eq!(again, web0);
    pool.release(&key(10), 2000);
    // After the window it is an ordinary idle ENI again: the longest idle goes first.
    let l = pool.allocate(&key(11), "ns/web-0", 2000 + 300_000).unwrap();
    assert_ne!(l.eni_id, web0.eni_id);
}

#[test]
fn serde_round_trip() {
    let mut c = cfg();
    c.min_idle = 0;
    let mut cloud = Cloud::default();
    let mut pool = pool_with_enis(c.clone(), &mut cloud, 3);
    pool.allocate(&key(1), "ns/web-0", 10).unwrap();
    pool.allocate(&key(2), "ns/web-1", 10).unwrap();
    pool.release(&key(2), 20);
    cloud.enis.remove(&pool.lease_of(&key(1)).unwrap().eni_id);
    pool.reconcile(&cloud.observed(), 25);
    pool.block(
        BBB,
        "The specified VSwitch \"vsw-BBB\" has not enough IpAddress.",
        30,
    );
    // An empty file loads too.
    let back = assert_round_trip(pool.state());
    let mut restored = Pool::new(c.clone(), back);
    assert_eq!(restored.lease_of(&key(1)), pool.lease_of(&key(1)));
    assert_eq!(restored.snapshot(40), pool.snapshot(40));
    // Sticky survives the restart.
    let l = pool.lease_of(&key(2));
    assert_eq!(l, None);
    assert_eq!(
        restored.allocate(&key(3), "ns/web-1", 50).map(|l| l.eni_id),
        pool.allocate(&key(3), "ns/web-1", 50).map(|l| l.eni_id)
    );
    // An old file (missing optional fields) still loads; a deleting flag is reset.
    let old = r#"{"enis":[{"id":"eni-1","mac":"00:16:3e:00:00:01","vswitch_id":"vsw-AAA",
        "vswitch_cidr":"10.1.0.0/16","gateway":"10.1.0.1","primary_ip":"10.1.0.11",
        "deleting":true}]}"#;
    let st: PoolState = serde_json::from_str(old).unwrap();
    let pool = Pool::new(c, st);
    assert_eq!(pool.idle(), 1);
}

#[test]
fn corrupt_state_gives_no_owner_two_enis() {
    let mut cloud = Cloud::default();
    let a = EniState::new_idle(&cloud.facts(AAA, 0), 0);
    let b = EniState::new_idle(&cloud.facts(AAA, 0), 0);
    let mut st = PoolState {
        enis: vec![a.clone(), b, a],
        blocked: Default::default(),
    };
    st.enis[0].owner = Some(key(1));
    st.enis[1].owner = Some(key(1));
    let pool = Pool::new(cfg(), st);
    assert_eq!(pool.state().enis.len(), 2);
    assert_eq!(pool.in_use(), 1);
    assert_invariants(&pool);
}

#[test]
fn state_from_a_previous_boot_does_not_freeze_blocks_or_sticky() {
    let mut c = cfg();
    c.min_idle = 0;
    c.max_idle = 10;
    let mut cloud = Cloud::default();
    let mut old = pool_with_enis(c.clone(), &mut cloud, 2);
    let boot = 1_000_000_000;
    let l = old.allocate(&key(1), "ns/web-0", boot).unwrap();
    old.release(&key(1), boot);
    old.block(AAA, "", boot);
    let mut pool = Pool::new(c, old.state().clone());
    pool.plan(10, 0, 0);
    let snap = pool.snapshot(10);
    assert_eq!(snap.blocked_vswitches[0].until_ms, 300_010);
    assert_eq!(
        snap.blocked_vswitches[0].reason,
        "The specified VSwitch \"vsw-AAA\" has not enough IpAddress."
    );
    assert_eq!(pool.allocate(&key(2), "ns/web-0", 20), Some(l.clone()));
    pool.release(&key(2), 30);
    assert_ne!(pool.allocate(&key(3), "ns/web-0", 400_000), Some(l));
}

#[test]
fn state_file_format_is_stable() {
    // Every field set once: the state files of running nodes must keep loading, and what is
    // written back must read the same.
    let json = concat!(
        r#"{"enis":[{"id":"eni-1","mac":"00:16:3e:00:00:01","vswitch_id":"vsw-AAA","#,
        r#""vswitch_cidr":"10.1.0.0/16","gateway":"10.1.0.1","primary_ip":"10.1.0.11","#,
        r#""owner":{"network":"terway","container_id":"c1","ifname":"eth0"},"pod":"ns/a","#,
        r#""since":5,"lost":true,"deleting":true,"unconfirmed":true},{"id":"eni-2","#,
        r#""mac":"00:16:3e:00:00:02","vswitch_id":"vsw-AAA","vswitch_cidr":"10.1.0.0/16","#,
        r#""gateway":"10.1.0.1","primary_ip":"10.1.0.12","since":0}],"#,
        r#""blocked":[{"id":"vsw-BBB","until_ms":300000,"reason":"out of addresses"}]}"#
    );
    let st: PoolState = serde_json::from_str(json).unwrap();
    assert_eq!(st.enis.len(), 2);
    assert_eq!(st.blocked.active(0).len(), 1);
    assert_eq!(serde_json::to_string(&st).unwrap(), json);
}
