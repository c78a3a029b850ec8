//! The core with the VPC source (pure) and with a scripted source: retried ADDs, rollbacks,
//! GC candidates, waiting pods served in order, failed or expired with the source's reason.

use super::*;
use crate::config::Mode;
use crate::daemon::server::Responder;
use crate::daemon::vpc_source::VpcSource;
use crate::rpc::{MappingRow, PoolView};
use std::cell::RefCell;
use std::collections::VecDeque;
use std::net::Ipv4Addr;
use std::sync::mpsc::Receiver;

fn key(id: &str) -> AttachKey {
    AttachKey::new("terway", id, "eth0")
}

fn pod(id: &str) -> PodRef {
    PodRef {
        namespace: "default".into(),
        name: id.into(),
        uid: String::new(),
    }
}

fn alloc_req(id: &str) -> Request {
    Request::Alloc {
        key: key(id),
        pod: pod(id),
        netns: "/run/netns/x".into(),
    }
}

/// Sends one request; returns the outbox and the receiver of its reply.
fn ask<S: AddressSource>(
    core: &mut Core<S>,
    req: Request,
    now: u64,
) -> (Outbox, Receiver<Response>) {
    let (tx, rx) = Responder::channel();
    let mut out = Outbox::default();
    core.handle(req, tx, now, &mut out);
    (out, rx)
}

/// The reply to `req` once the outbox is sent (as the loop does after saving).
fn call<S: AddressSource>(core: &mut Core<S>, req: Request, now: u64) -> (Response, bool) {
    let (out, rx) = ask(core, req, now);
    let dirty = out.dirty();
    for (tx, r) in out.replies {
        tx.send(r).unwrap();
    }
    (rx.try_recv().expect("answered at once"), dirty)
}

fn ip_of(r: &Response) -> Ipv4Addr {
    match r {
        Ok(Reply::Allocated(a)) => a.address.ipv4_addr().unwrap(),
        other => panic!("{other:?}"),
    }
}

fn vpc(cidr: &str) -> Core<VpcSource> {
    let s = VpcSource::from_state(cidr.parse().unwrap(), &State::new("b".into())).unwrap();
    Core::new(s, Vec::new(), 60, 7_000)
}

#[test]
fn alloc_is_idempotent_per_attachment() {
    let mut c = vpc("10.9.0.0/24");
    let (a, dirty) = call(&mut c, alloc_req("a"), 7_000);
    assert!(
        dirty,
        "a new allocation must reach the disk before its reply"
    );
    let (again, dirty) = call(&mut c, alloc_req("a"), 7_000);
    assert!(!dirty);
    assert_eq!(ip_of(&again), ip_of(&a));
    let (b, _) = call(&mut c, alloc_req("b"), 7_000);
    assert_ne!(ip_of(&b), ip_of(&a));
    assert_eq!(c.allocations().len(), 2);
}

#[test]
fn exhaustion_names_the_cidr() {
    let mut c = vpc("10.9.0.0/30");
    let _ = call(&mut c, alloc_req("a"), 7_000);
    let (e, _) = call(&mut c, alloc_req("b"), 7_000);
    let e = e.unwrap_err();
    assert_eq!(e.kind, Kind::Exhausted);
    assert!(e.msg.contains("10.9.0.0/30"), "{e}");
}

#[test]
fn a_failing_retry_never_releases_what_another_call_holds() {
    let mut c = vpc("10.9.0.0/24");
    let grant = |r: Response| match r {
        Ok(Reply::Allocated(a)) => a.grant.unwrap(),
        other => panic!("{other:?}"),
    };
    let first = grant(call(&mut c, alloc_req("a"), 7_000).0);
    let retry = grant(call(&mut c, alloc_req("a"), 7_000).0);
    assert!(first.created && !retry.created);
    for token in [first.token, retry.token] {
        let (r, dirty) = call(
            &mut c,
            Request::Rollback {
                key: key("a"),
                token,
            },
            8_000,
        );
        assert_eq!(r, Ok(Reply::Released(None)));
        assert!(!dirty);
    }
    assert_eq!(
        c.allocations().len(),
        1,
        "the address stays with the attachment"
    );
    let b = grant(call(&mut c, alloc_req("b"), 7_000).0);
    let (r, dirty) = call(
        &mut c,
        Request::Rollback {
            key: key("b"),
            token: b.token,
        },
        8_000,
    );
    assert!(matches!(r, Ok(Reply::Released(Some(_)))) && dirty);
}

#[test]
fn gc_names_only_old_invalid_attachments_of_the_network() {
    let mut c = vpc("10.9.0.0/24");
    for id in ["a", "b", "c"] {
        let _ = call(&mut c, alloc_req(id), 7_000);
    }
    let mut gc = |network: &str, now: u64| {
        let (r, dirty) = call(
            &mut c,
            Request::Gc {
                network: network.into(),
                valid: vec![key("b")],
            },
            now,
        );
        assert!(!dirty, "GC only names candidates; the plugin releases them");
        let Ok(Reply::Collected(found)) = r else {
            panic!("{r:?}")
        };
        found
            .iter()
            .map(|a| a.key.container_id.clone())
            .collect::<Vec<_>>()
    };
    assert!(
        gc("terway", 8_000).is_empty(),
        "too young: ADD may still run"
    );
    assert_eq!(gc("terway", 67_000), ["a", "c"]);
    assert!(gc("other", 67_000).is_empty());
}

#[test]
fn state_round_trip_and_cidr_changes() {
    let mut c = vpc("10.9.0.0/24");
    let (a, _) = call(&mut c, alloc_req("a"), 7_000);
    let a = ip_of(&a);
    let mut s = State::new("b".into());
    c.write_state(&mut s);
    let back = VpcSource::from_state("10.9.0.0/24".parse().unwrap(), &s).unwrap();
    let mut back = Core::new(back, s.allocations.clone(), 60, 7_000);
    assert_ne!(ip_of(&call(&mut back, alloc_req("z"), 7_000).0), a);
    let e = VpcSource::from_state("10.8.0.0/24".parse().unwrap(), &s).unwrap_err();
    assert!(e.msg.contains(&a.to_string()), "{e}");
    let mut cfg = crate::config::Config {
        daemon_mode: Mode::Vpc,
        pod_cidr: Some("10.9.0.0/16".parse().unwrap()),
        ..Default::default()
    };
    assert!(c.reload(&cfg).is_ok());
    cfg.pod_cidr = Some("10.7.0.0/24".parse().unwrap());
    assert!(c.reload(&cfg).is_err());
}

#[test]
fn release_is_idempotent_and_frees_the_address() {
    let mut c = vpc("10.9.0.0/30");
    let _ = call(&mut c, alloc_req("a"), 7_000);
    let (r, dirty) = call(&mut c, Request::Release { key: key("a") }, 7_000);
    assert!(matches!(r, Ok(Reply::Released(Some(_)))) && dirty);
    let (r, dirty) = call(&mut c, Request::Release { key: key("a") }, 7_000);
    assert_eq!(r, Ok(Reply::Released(None)));
    assert!(!dirty);
    assert!(call(&mut c, alloc_req("b"), 7_000).0.is_ok());
}

/// A source that serves what the test says, when it says.
#[derive(Default)]
struct Scripted {
    free: RefCell<VecDeque<Ipv4Addr>>,
    unservable: Option<String>,
    given_back: Vec<Ipv4Addr>,
    planned: u32,
}

impl AddressSource for Scripted {
    type Done = Ipv4Addr;

    fn mode(&self) -> Mode {
        Mode::EniMultiIp
    }
    fn new_pod_datapath(&self) -> &'static str {
        crate::model::Datapath::VETH_POLICY
    }
    fn workers(&self) -> usize {
        0
    }
    fn take(&mut self, _key: &AttachKey, _pod: &PodRef, _now: u64) -> Take {
        match self.free.borrow_mut().pop_front() {
            Some(ip) => Take::Ready(PodAddress::v4(ip, 32, None), Datapath::Veth),
            None => Take::Later,
        }
    }
    fn give_back(&mut self, alloc: &StoredAllocation, _now: u64) {
        self.given_back.extend(alloc.address.ipv4_addr());
    }
    fn current(&self, a: &StoredAllocation) -> Current {
        Current::Valid(a.address.clone(), a.datapath.clone())
    }
    fn plan(&mut self, _now: u64, waiting: u32) -> Vec<Job<Ipv4Addr>> {
        self.planned = waiting;
        Vec::new()
    }
    fn apply(&mut self, ip: Ipv4Addr, _now: u64) {
        self.free.borrow_mut().push_back(ip);
    }
    fn unservable(&self, _now: u64, _waiting: u32) -> Option<String> {
        self.unservable.clone()
    }
    fn waiting_detail(&self) -> String {
        "the scripted pool is still growing".into()
    }
    fn next_deadline(&self, _now: u64) -> Option<u64> {
        None
    }
    fn write_state(&self, _state: &mut State) {}
    fn reload(&mut self, _config: &Config) -> Result<()> {
        Ok(())
    }
    fn free(&self) -> u64 {
        self.free.borrow().len() as u64
    }
    fn pool_view(&self, _now: u64, _allocs: &Allocations) -> PoolView {
        unimplemented!("not asked in these tests")
    }
    fn mapping(&self, _now: u64, _allocs: &Allocations) -> Vec<MappingRow> {
        Vec::new()
    }
}

fn ip(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, 0, n)
}

/// Parks pods `ids` on an empty scripted source; returns their reply receivers.
fn park(c: &mut Core<Scripted>, ids: &[&str], now: u64) -> Vec<Receiver<Response>> {
    ids.iter()
        .map(|id| {
            let (out, rx) = ask(c, alloc_req(id), now);
            assert!(out.replies.is_empty(), "{id} waits");
            rx
        })
        .collect()
}

fn deliver(out: Outbox) {
    for (tx, r) in out.replies {
        let _ = tx.send(r);
    }
}

#[test]
fn waiting_pods_are_served_in_arrival_order_when_the_source_grows() {
    let mut c = Core::new(Scripted::default(), Vec::new(), 60, 0);
    let rx = park(&mut c, &["a", "b", "c"], 0);
    let mut out = Outbox::default();
    c.tick(10, &mut out);
    assert_eq!(
        c.source().planned,
        3,
        "the source plans for every waiting pod"
    );
    assert!(out.replies.is_empty());
    c.apply(ip(1), 20, &mut out);
    c.apply(ip(2), 20, &mut out);
    c.tick(20, &mut out);
    assert!(out.dirty());
    deliver(out);
    assert_eq!(ip_of(&rx[0].try_recv().unwrap()), ip(1));
    assert_eq!(ip_of(&rx[1].try_recv().unwrap()), ip(2));
    assert!(rx[2].try_recv().is_err(), "c still waits");
    // A newcomer does not overtake c.
    let late = park(&mut c, &["d"], 30).remove(0);
    let mut out = Outbox::default();
    c.apply(ip(3), 40, &mut out);
    c.tick(40, &mut out);
    deliver(out);
    assert_eq!(ip_of(&rx[2].try_recv().unwrap()), ip(3));
    assert!(late.try_recv().is_err());
}

#[test]
fn waiting_pods_expire_with_the_sources_reason_or_fail_at_once_when_unservable() {
    let mut c = Core::new(Scripted::default(), Vec::new(), 60, 0);
    let rx = park(&mut c, &["a"], 0);
    let mut out = Outbox::default();
    c.tick(WAIT_TIMEOUT_MS - 1, &mut out);
    assert!(out.replies.is_empty());
    c.tick(WAIT_TIMEOUT_MS, &mut out);
    deliver(out);
    let e = rx[0].try_recv().unwrap().unwrap_err();
    assert_eq!(e.kind, Kind::TryAgain);
    assert!(
        e.msg
            .contains("after 60 s: the scripted pool is still growing"),
        "{e}"
    );
    assert!(c.allocations().is_empty());

    let mut c = Core::new(Scripted::default(), Vec::new(), 60, 0);
    let rx = park(&mut c, &["a", "b"], 0);
    c.source.unservable = Some("QuotaExceeded: no more ENIs".into());
    let mut out = Outbox::default();
    c.tick(1, &mut out);
    deliver(out);
    for r in rx {
        let e = r.try_recv().unwrap().unwrap_err();
        assert!(e.msg.contains("QuotaExceeded: no more ENIs"), "{e}");
    }
}

#[test]
fn a_retried_add_supersedes_and_a_release_cancels_a_waiting_pod() {
    let mut c = Core::new(Scripted::default(), Vec::new(), 60, 0);
    let first = park(&mut c, &["a"], 0).remove(0);
    let second = park(&mut c, &["a"], 1).remove(0);
    let e = first.try_recv().unwrap().unwrap_err();
    assert!(e.msg.contains("superseded"), "{e}");
    let (r, dirty) = call(&mut c, Request::Release { key: key("a") }, 2);
    assert_eq!(r, Ok(Reply::Released(None)));
    assert!(!dirty);
    let e = second.try_recv().unwrap().unwrap_err();
    assert!(e.msg.contains("deleted while waiting"), "{e}");
    let mut out = Outbox::default();
    c.apply(ip(1), 3, &mut out);
    c.tick(3, &mut out);
    assert!(out.replies.is_empty(), "nobody waits any more");
}

#[test]
fn released_addresses_go_back_to_the_source() {
    let mut c = Core::new(Scripted::default(), Vec::new(), 60, 0);
    c.source.free.borrow_mut().push_back(ip(7));
    let (r, _) = call(&mut c, alloc_req("a"), 0);
    assert_eq!(ip_of(&r), ip(7));
    let _ = call(&mut c, Request::Release { key: key("a") }, 1);
    assert_eq!(c.source().given_back, [ip(7)]);
}

#[test]
fn vpc_addresses_cool_down_unless_nothing_else_is_free() {
    // A /29 holds 5 pod addresses (.2 to .6); all taken, the round-robin cursor at .6.
    let mut c = vpc("10.9.0.0/29");
    for id in ["a", "b", "c", "d", "e"] {
        let _ = call(&mut c, alloc_req(id), 0);
    }
    let _ = call(&mut c, Request::Release { key: key("c") }, 0); // .4: cooled by 200 s
    let _ = call(&mut c, Request::Release { key: key("a") }, 190_000); // .2: still cooling
    // Round robin would wrap to .2; it is skipped for the cooled .4.
    let got = ip_of(&call(&mut c, alloc_req("f"), 200_000).0);
    assert_eq!(got, Ipv4Addr::new(10, 9, 0, 4));
    // Only a cooling address is left: it is handed out rather than none.
    let got = ip_of(&call(&mut c, alloc_req("g"), 200_000).0);
    assert_eq!(got, Ipv4Addr::new(10, 9, 0, 2));
}

#[test]
fn waits_and_failures_are_counted() {
    use crate::metrics::Metrics;
    use std::sync::Arc;
    let m = Arc::new(Metrics::new());
    let count = |series: &str| -> f64 {
        let text = m.encode();
        text.lines()
            .find(|l| l.starts_with(&format!("{series} ")))
            .and_then(|l| l.rsplit(' ').next())
            .unwrap_or_else(|| panic!("no {series} in\n{text}"))
            .parse()
            .unwrap()
    };
    let mut c = Core::new(Scripted::default(), Vec::new(), 60, 0);
    c.set_metrics(m.clone());
    // a waits 1.5 s and is served; b is still waiting.
    let _rx = park(&mut c, &["a", "b"], 0);
    let mut out = Outbox::default();
    c.tick(0, &mut out);
    assert_eq!(count("terway_pods_waiting"), 2.0);
    c.apply(ip(1), 1_500, &mut out);
    c.tick(1_500, &mut out);
    assert_eq!(count("terway_pods_waiting"), 1.0);
    assert_eq!(
        count(r#"terway_pod_wait_seconds_count{outcome="served"}"#),
        1.0
    );
    assert_eq!(
        count(r#"terway_pod_wait_seconds_sum{outcome="served"}"#),
        1.5
    );
    // b runs out of time.
    c.tick(WAIT_TIMEOUT_MS, &mut out);
    assert_eq!(count("terway_pods_waiting"), 0.0);
    assert_eq!(
        count(r#"terway_allocation_failures_total{reason="timeout"}"#),
        1.0
    );
    assert_eq!(
        count(r#"terway_pod_wait_seconds_count{outcome="expired"}"#),
        1.0
    );
    // Two fail at once on a vSwitch the cloud says is exhausted; a pod served at once is no wait.
    let _rx = park(&mut c, &["c", "d"], 70_000);
    c.source.unservable = Some(
        "no address for 2 pod(s): every vSwitch is out of addresses: The specified VSwitch \
         \"vsw-1\" has not enough IpAddress. (vsw-1 skipped for 300 s)"
            .into(),
    );
    c.tick(70_100, &mut out);
    assert_eq!(
        count(r#"terway_allocation_failures_total{reason="vswitch_exhausted"}"#),
        2.0
    );
    assert_eq!(
        count(r#"terway_pod_wait_seconds_count{outcome="failed"}"#),
        2.0
    );
    c.source.unservable = None;
    c.source.free.borrow_mut().push_back(ip(2));
    let _ = call(&mut c, alloc_req("e"), 80_000);
    assert_eq!(
        count(r#"terway_pod_wait_seconds_count{outcome="served"}"#),
        1.0
    );
    // The VPC source's exhausted pod CIDR is a capacity failure.
    let mut v = vpc("10.9.0.0/30");
    v.set_metrics(m.clone());
    let _ = call(&mut v, alloc_req("a"), 7_000);
    let _ = call(&mut v, alloc_req("b"), 7_000);
    assert_eq!(
        count(r#"terway_allocation_failures_total{reason="capacity"}"#),
        1.0
    );
}

#[path = "core_teardown_tests.rs"]
mod teardown;
