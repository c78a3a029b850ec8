//! Dual stack: IPv4s paired with IPv6s of the same ENI, both families kept in step by fills,
//! repairs, releases and reconcile.

use super::sim::*;
use super::*;
use crate::pool::test_support::*;

fn dual_cfg() -> PoolConfig {
    let mut c = cfg();
    c.dual = true;
    c
}

fn dual_cloud() -> Cloud {
    let mut cloud = Cloud::default();
    cloud.dual = true;
    cloud
}

/// Every lease the pool hands out is a pair from one ENI: the IPv6 inside that ENI's vSwitch
/// IPv6 network and on the ENI in the cloud.
fn assert_pair(lease: &Lease, cloud: &Cloud) {
    let (ip6, v6) = lease.ip6.expect("dual stack lease without IPv6");
    assert!(
        v6.vswitch_cidr.contains(ip6),
        "{ip6} outside {}",
        v6.vswitch_cidr
    );
    let eni = &cloud.enis[&lease.eni_id];
    assert!(eni.ipv6s.contains(&ip6), "{ip6} not on {}", lease.eni_id);
    assert!(eni.primary_ip == lease.ip || eni.secondary_ips.contains(&lease.ip));
}

#[test]
fn fills_create_and_assign_both_families_in_the_same_call_counts() {
    let mut pool = Pool::new(dual_cfg(), PoolState::default());
    let mut cloud = dual_cloud();
    assert!(pool.plan(0, 3, 0).is_empty());
    let ops = pool.plan(20, 3, 0);
    // 3 waiting + max_idle 5 = 8 pairs: one ENI with 8 IPv4 (primary + 7) and 8 IPv6.
    match ops.as_slice() {
        [
            CloudOp::CreateEni {
                secondary_count: 7,
                ipv6_count: 8,
                ..
            },
        ] => {}
        other => panic!("{other:?}"),
    }
    run_all(&mut pool, &mut cloud, &ops, 2000);
    for n in 0..8 {
        let lease = pool.allocate(&key(n), "", 2000).expect("a pair");
        assert_pair(&lease, &cloud);
    }
    assert_eq!(pool.idle(), 0);
    let ops = pool.plan(2000, 1, 0);
    match ops.as_slice() {
        [
            CloudOp::AssignIps {
                count: 6,
                ipv6_count: 6,
                ..
            },
        ] => {}
        other => panic!("{other:?}"),
    }
    run_all(&mut pool, &mut cloud, &ops, 2300);
    let lease = pool.allocate(&key(9), "", 2300).expect("a pair");
    assert_pair(&lease, &cloud);
    assert_invariants(&pool);
}

#[test]
fn ipv4s_without_partners_are_never_handed_out_and_get_them_by_repair() {
    let mut pool = Pool::new(dual_cfg(), PoolState::default());
    let mut cloud = dual_cloud();
    pool.plan(0, 2, 0);
    let ops = pool.plan(20, 2, 0);
    run_all(&mut pool, &mut cloud, &ops, 2000);
    for n in 0..7 {
        pool.allocate(&key(n), "", 2000).unwrap();
    }
    // The IPv6 call fails after the IPv4 one worked.
    cloud.fail6 = Some(failure("Throttling.User"));
    let ops = pool.plan(2000, 2, 0);
    run_all(&mut pool, &mut cloud, &ops, 2300);
    assert!(pool.st.enis[0].ips.iter().any(|i| i.wants_partner()));
    assert_eq!(pool.idle(), 0, "an IPv4 without its IPv6 is not idle");
    assert!(pool.allocate(&key(10), "", 2300).is_none());
    assert_eq!(
        pool.last_failure().map(|f| f.code.as_str()),
        Some("Throttling.User")
    );
    // Back-off first; then an IPv6-only assign for exactly the unpaired ones.
    assert!(assigns(&pool.plan(2301, 2, 0)).is_empty());
    cloud.fail6 = None;
    let later = pool.next_deadline(2301).unwrap();
    let ops = pool.plan(later, 2, 0);
    let unpaired = pool.st.enis[0]
        .ips
        .iter()
        .filter(|i| i.wants_partner())
        .count() as u32;
    assert!(
        ops.iter().any(|o| matches!(o,
        CloudOp::AssignIps { count: 0, ipv6_count, .. } if *ipv6_count == unpaired)),
        "{ops:?}"
    );
    run_all(&mut pool, &mut cloud, &ops, later + 300);
    for n in 10..12 {
        assert_pair(&pool.allocate(&key(n), "", later + 300).unwrap(), &cloud);
    }
    assert_invariants(&pool);
}

#[test]
fn releases_give_back_pairs_and_never_a_pods_ipv6() {
    let mut c = dual_cfg();
    (c.min_idle, c.max_idle) = (0, 2);
    let mut cloud = dual_cloud();
    let mut pool = Pool::new(c, PoolState::default());
    pool.plan(0, 10, 0);
    let ops = pool.plan(20, 10, 0);
    run_all(&mut pool, &mut cloud, &ops, 2000);
    let leases: Vec<Lease> = (0..10)
        .map(|n| pool.allocate(&key(n), "", 2000).unwrap())
        .collect();
    for n in 0..8 {
        pool.release(&key(n), 3000);
    }
    // Idle 8 > max 2 for release_after_ms: 6 pairs go back (Cloud::run checks no owner).
    let ops = pool.plan(3000 + 60_000, 0, 0);
    let (ips, ips6) = match ops.as_slice() {
        [CloudOp::UnassignIps { ips, ips6, .. }] => (ips.clone(), ips6.clone()),
        other => panic!("{other:?}"),
    };
    assert_eq!((ips.len(), ips6.len()), (6, 6));
    for (ip, ip6) in ips.iter().zip(&ips6) {
        let l = leases.iter().find(|l| l.ip == *ip).unwrap();
        assert_eq!(l.ip6.unwrap().0, *ip6, "a pair goes back together");
    }
    run_all(&mut pool, &mut cloud, &ops, 63_300);
    let eni = cloud.enis.values().next().unwrap();
    assert_eq!(
        eni.ipv6s.len(),
        1 + eni.secondary_ips.len(),
        "families in step"
    );
    assert_eq!(pool.idle(), 2);
    assert_invariants(&pool);
}

#[test]
fn reconcile_loses_a_pods_pair_when_its_ipv6_vanishes_and_repairs_an_idle_one() {
    let mut cloud = dual_cloud();
    let mut pool = Pool::new(dual_cfg(), PoolState::default());
    pool.plan(0, 3, 0);
    let ops = pool.plan(20, 3, 0);
    run_all(&mut pool, &mut cloud, &ops, 2000);
    let held = pool.allocate(&key(1), "", 2000).unwrap();
    let (held6, _) = held.ip6.unwrap();
    let idle6 = pool.st.enis[0]
        .ips
        .iter()
        .find(|i| i.owner.is_none())
        .and_then(|i| i.ip6)
        .unwrap();
    // Both IPv6s removed behind the pool's back.
    let eni = cloud.enis.get_mut(&held.eni_id).unwrap();
    eni.ipv6s.retain(|i| *i != held6 && *i != idle6);
    let report = pool.reconcile(&cloud.observed(), 3000);
    assert_eq!(report.lost, vec![(key(1), held.ip)]);
    assert_eq!(report.lost6, vec![held6]);
    assert_eq!(report.removed_idle6, vec![idle6]);
    // The pod's pair is not reused; asking again gives it a complete new pair.
    let again = pool.allocate(&key(1), "", 3000).unwrap();
    assert_ne!(again.ip, held.ip);
    assert_pair(&again, &cloud);
    // The idle IPv4 left without a partner gets one.
    let ops = pool.plan(3000, 0, 0);
    assert!(
        ops.iter().any(|o| matches!(
            o,
            CloudOp::AssignIps {
                count: 0,
                ipv6_count: 1,
                ..
            }
        )),
        "{ops:?}"
    );
    run_all(&mut pool, &mut cloud, &ops, 3300);
    assert!(!pool.st.enis[0].ips.iter().any(|i| i.wants_partner()));
    assert_invariants(&pool);
}

#[test]
fn spare_ipv6s_nothing_needs_go_back_and_ipv4_mode_ignores_ipv6() {
    let mut cloud = dual_cloud();
    let mut facts = cloud.facts(AAA, 1);
    let extra = cloud.fresh_ip6(AAA);
    facts.ipv6s.push(extra);
    cloud.enis.insert(facts.id.clone(), facts.clone());
    // IPv4 mode: IPv6 on an ENI is not the pool's business.
    let mut v4 = Pool::new(cfg(), PoolState::default());
    v4.reconcile(&cloud.observed(), 0);
    assert!(v4.st.enis[0].spare6.is_empty() && v4.st.enis[0].ips.iter().all(|i| i.ip6.is_none()));
    assert!(v4.allocate(&key(1), "", 0).unwrap().ip6.is_none());
    // Dual: 2 pairs and a spare, which is unassigned.
    let mut c = dual_cfg();
    (c.min_idle, c.max_idle) = (0, 5);
    let mut pool = Pool::new(c, PoolState::default());
    pool.reconcile(&cloud.observed(), 0);
    assert_eq!((pool.idle(), pool.st.enis[0].spare6.len()), (2, 1));
    let ops = pool.plan(0, 0, 0);
    match ops.as_slice() {
        [CloudOp::UnassignIps { ips, ips6, .. }] if ips.is_empty() && ips6.len() == 1 => {}
        other => panic!("{other:?}"),
    }
    run_all(&mut pool, &mut cloud, &ops, 300);
    assert!(pool.st.enis[0].spare6.is_empty());
    assert_eq!(cloud.enis[&facts.id].ipv6s.len(), 2);
    // The pairs survive a restart (state file round trip).
    let saved = serde_json::to_string(pool.state()).unwrap();
    let back = Pool::new(dual_cfg(), serde_json::from_str(&saved).unwrap());
    assert_eq!(back.idle(), 2);
    assert_invariants(&back);
}

#[test]
fn churn_with_dual_stack_keeps_every_pod_on_a_complete_pair() {
    let mut c = dual_cfg();
    (c.min_idle, c.max_idle, c.ips_per_eni) = (3, 8, 10);
    let mut sim = Sim::new(c);
    sim.cloud.dual = true;
    let mut rng = Rng(0x5eed_d0a1);
    sim.run(120_000, &mut rng, Some(25));
    assert!(sim.allocations > 50, "{}", sim.allocations);
    for k in &sim.pods {
        assert_pair(&sim.pool.lease_of(k).unwrap(), &sim.cloud);
    }
    for eni in sim.cloud.enis.values() {
        let v4 = 1 + eni.secondary_ips.len();
        assert!(
            eni.ipv6s.len() <= v4,
            "more IPv6 than IPv4 left on {}",
            eni.id
        );
    }
}
