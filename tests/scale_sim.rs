//! The cluster-scale simulation's own pieces (`benches/scale/`), on small clusters: the
//! region-wide limiter keeps its budget, jobs make the daemon's calls, every pod becomes ready
//! and every address is accounted for, runs are reproducible.

// The bench's modules, compiled here as they are there; what only its main uses is unused here.
#![allow(dead_code)]

#[path = "../benches/scale/jobs.rs"]
mod jobs;
#[path = "../benches/scale/node.rs"]
mod node;
#[path = "../benches/scale/region.rs"]
mod region;
#[path = "../benches/scale/rng.rs"]
mod rng;
#[path = "../benches/scale/scenario.rs"]
mod scenario;
#[path = "../benches/scale/world.rs"]
mod world;

use jobs::{Done, Input, Job, Kind, Step};
use region::{Cloud, RegionLimiter};
use rng::{Latency, Rng};
use scenario::{Params, Report};
use std::collections::BTreeMap;
use terway::pool::shared_eni::{CloudOp, CloudOutcome};
use world::Src;

#[test]
fn the_region_limiter_never_exceeds_its_budget_in_any_window() {
    // 60 calls a minute: 1 a second, a burst of 10 seconds' worth.
    let mut l = RegionLimiter::new(&[("AssignPrivateIpAddresses".into(), 60)]);
    let mut rng = Rng::new(7);
    let mut admitted = Vec::new();
    let mut t = 0u64;
    for _ in 0..20_000 {
        // Bursts and lulls: many callers at once, then quiet spells.
        t += if rng.below(50) == 0 {
            rng.below(20_000)
        } else {
            rng.below(40)
        };
        if l.admit("AssignPrivateIpAddresses", t) {
            admitted.push(t);
        }
    }
    assert!(t > 600_000, "the test covers at least ten minutes ({t} ms)");
    for window_ms in [1_000u64, 10_000, 60_000, 300_000] {
        let allowed = 10 + window_ms / 1_000;
        for (i, start) in admitted.iter().enumerate() {
            let n = admitted[i..]
                .iter()
                .take_while(|x| **x < start + window_ms)
                .count() as u64;
            assert!(
                n <= allowed,
                "{n} calls admitted in {window_ms} ms from {start}: budget {allowed}"
            );
        }
    }
    // Not a limiter that refuses everything: the budget is used.
    let budget = 10 + t / 1_000;
    assert!(
        admitted.len() as u64 * 10 >= budget * 7,
        "{} of {budget}",
        admitted.len()
    );
    // Other actions have their own bucket, and 0 means unlimited.
    assert!(l.admit("CreateNetworkInterface", t));
    let mut free = RegionLimiter::new(&[("*".into(), 0), ("DescribeVSwitches".into(), 0)]);
    assert!((0..10_000).all(|_| free.admit("DescribeVSwitches", 0)));
    assert!((0..10_000).all(|_| free.admit("SomethingElse", 0)));
}

fn quiet_cloud(nodes: usize) -> Cloud {
    let free = Params::cluster(nodes, 1).unlimited();
    let attach = Latency {
        floor_ms: 1_500,
        mean_extra_ms: 0.0,
        cap_ms: 1_500,
    };
    Cloud::new(nodes, 20, RegionLimiter::new(&free.limits), attach, 3).unwrap()
}

/// Runs one job to its end against `cloud` with 100 ms answers; returns what it reported and
/// the calls it made, by action.
fn drive(cloud: &mut Cloud, op: CloudOp) -> (Done, BTreeMap<&'static str, u32>) {
    let mut job = Job::new(Kind::Op(op));
    let mut calls = BTreeMap::new();
    let mut now = 1_000;
    let mut input = Input::Start;
    loop {
        match job.resume(input, cloud, 0, now) {
            Step::Call(req) => {
                *calls.entry(req.action()).or_default() += 1;
                let r = cloud.call(0, &req, now);
                now += 100;
                input = Input::Reply(r);
            }
            Step::Sleep(ms) => {
                now += ms;
                input = Input::Woke;
            }
            Step::Finish(done) => return (done, calls),
        }
        assert!(now < 600_000, "the job never ends");
    }
}

#[test]
fn jobs_make_the_daemons_calls() {
    let mut cloud = quiet_cloud(1);
    let vsw = cloud.vswitch(0).to_string();
    let create = CloudOp::CreateEni {
        op: 1,
        vswitch_id: vsw,
        secondary_count: 9,
        ipv6_count: 0,
    };
    let (done, calls) = drive(&mut cloud, create);
    let Done::Op(CloudOutcome::EniCreated { eni, .. }) = done else {
        panic!("create: {done:?}");
    };
    assert_eq!(eni.secondary_ips.len(), 9);
    assert_eq!(calls["CreateNetworkInterface"], 1);
    assert_eq!(calls["AttachNetworkInterface"], 1);
    // Metadata lists it once attached (1.5 s + 1 s lag): one look confirms InUse, no polls.
    assert_eq!(calls["DescribeNetworkInterfaces"], 1);

    let assign = CloudOp::AssignIps {
        op: 2,
        eni_id: eni.id.clone(),
        count: 10,
        ipv6_count: 0,
    };
    let (done, calls) = drive(&mut cloud, assign);
    let Done::Op(CloudOutcome::IpsAssigned { ips, .. }) = done else {
        panic!("assign: {done:?}");
    };
    assert_eq!((ips.len(), calls.len()), (10, 1));

    // Up to the ENI's quota (30) in calls of 10: the first goes through, the second is
    // refused, and what was assigned is kept.
    let over = CloudOp::AssignIps {
        op: 3,
        eni_id: eni.id.clone(),
        count: 20,
        ipv6_count: 0,
    };
    let (done, calls) = drive(&mut cloud, over);
    let Done::Op(CloudOutcome::IpsAssigned { ips: kept, .. }) = done else {
        panic!("assign over the quota: {done:?}");
    };
    assert_eq!((kept.len(), calls["AssignPrivateIpAddresses"]), (10, 2));
    let full = CloudOp::AssignIps {
        op: 7,
        eni_id: eni.id.clone(),
        count: 1,
        ipv6_count: 0,
    };
    let (done, _) = drive(&mut cloud, full);
    let Done::Op(CloudOutcome::Failed { failure, .. }) = done else {
        panic!("assign to a full ENI: {done:?}");
    };
    assert_eq!(failure.code, "QuotaExceeded.PrivateIpAddress");

    let unassign = CloudOp::UnassignIps {
        op: 4,
        eni_id: eni.id.clone(),
        ips: ips[..3].to_vec(),
        ips6: Vec::new(),
    };
    let (done, calls) = drive(&mut cloud, unassign);
    assert!(
        matches!(done, Done::Op(CloudOutcome::IpsUnassigned { .. })),
        "{done:?}"
    );
    assert_eq!(calls["UnassignPrivateIpAddresses"], 1);

    let delete = CloudOp::DeleteEni {
        op: 5,
        eni_id: eni.id.clone(),
    };
    let (done, calls) = drive(&mut cloud, delete);
    assert!(
        matches!(done, Done::Op(CloudOutcome::EniDeleted { .. })),
        "{done:?}"
    );
    assert_eq!(calls["DetachNetworkInterface"], 1);
    assert_eq!(calls["DeleteNetworkInterface"], 1);
    // Only the instance's own address is left once the delete completes.
    let (done, _) = drive(
        &mut cloud,
        CloudOp::AssignIps {
            op: 6,
            eni_id: eni.id,
            count: 1,
            ipv6_count: 0,
        },
    );
    assert!(
        matches!(done, Done::Op(CloudOutcome::Failed { .. })),
        "{done:?}"
    );
    assert_eq!(cloud.addresses_used(), 1);
}

/// A small cluster under tight budgets, so that calls are throttled.
fn tight(nodes: usize) -> Params {
    let mut p = Params::cluster(nodes, 50);
    p.rollout_ms = 120_000;
    p.limits = vec![
        ("CreateNetworkInterface".into(), 20),
        ("AttachNetworkInterface".into(), 20),
        ("DescribeNetworkInterfaces".into(), 60),
        ("AssignPrivateIpAddresses".into(), 30),
        ("UnassignPrivateIpAddresses".into(), 30),
    ];
    p
}

fn check_complete(r: &Report, p: &Params) {
    for ph in &r.phases {
        assert_eq!(ph.unready, 0, "{}: {} pods never ready", r.policy, ph.name);
        assert_eq!(ph.ready_ms.len(), ph.pods, "{}: {}", r.policy, ph.name);
    }
    assert_eq!(r.pods_end, p.nodes * p.pods_per_node, "{}", r.policy);
    // Every address taken in the vSwitches is an instance's own, a pod's, or idle in a pool:
    // nothing leaked.
    assert_eq!(
        r.addresses_end as u64,
        (p.nodes + r.pods_end) as u64 + r.idle_end,
        "{}",
        r.policy
    );
}

#[test]
fn every_pod_becomes_ready_and_every_address_is_accounted_for() {
    let p = tight(6);
    let pool = scenario::run_pool(&p).unwrap();
    check_complete(&pool, &p);
    let cold = &pool.phases[0];
    assert!(cold.sum(None, |c| c.throttled) > 0, "the budgets bit");
    assert!(cold.sum(Some(Src::Op), |c| c.ok) > 0);
    let naive = scenario::run_naive(&p).unwrap();
    check_complete(&naive, &p);
    // One call per pod at least, in every phase.
    for ph in &naive.phases {
        assert!(
            ph.sum(Some(Src::Op), |c| c.ok) >= ph.pods as u64,
            "{}",
            ph.name
        );
    }
}

#[test]
fn runs_are_reproducible() {
    let mut p = tight(3);
    p.pods_per_node = 20;
    let a = scenario::run_pool(&p).unwrap();
    let b = scenario::run_pool(&p).unwrap();
    for (x, y) in a.phases.iter().zip(&b.phases) {
        assert_eq!(x.ready_ms, y.ready_ms);
        assert_eq!(format!("{:?}", x.calls), format!("{:?}", y.calls));
    }
    p.seed = 2;
    let c = scenario::run_pool(&p).unwrap();
    assert_ne!(
        a.phases[0].ready_ms, c.phases[0].ready_ms,
        "the seed matters"
    );
}
