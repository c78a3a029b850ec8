//! DEL of a veth pod finished by the daemon: the address stays held until the removal is done,
//! and an ADD into the same namespace waits for it.

use super::*;

/// An ADD of pod `id` in a namespace of its own.
fn alloc_in(id: &str) -> Request {
    Request::Alloc {
        key: key(id),
        pod: pod(id),
        netns: format!("/run/netns/{id}"),
    }
}

/// Takes addresses for `prefix-0`, `prefix-1`, … until the source has none left; their keys.
fn fill(c: &mut Core<VpcSource>, now: u64) -> Vec<AttachKey> {
    let mut held = Vec::new();
    for i in 0.. {
        let id = format!("fill-{i}");
        match call(c, alloc_in(&id), now).0 {
            Ok(Reply::Allocated(_)) => held.push(key(&id)),
            Err(_) => return held,
            other => panic!("{other:?}"),
        }
    }
    unreachable!()
}

/// The invariant behind a DEL the daemon finishes on its own: an address whose veth, route or
/// rules may still exist is never handed to another pod. Nothing frees it before the teardown
/// reports success: no new ADD, no Release, Rollback or GC, not the sweep's release, not a
/// failed teardown.
#[test]
fn an_address_in_teardown_is_never_handed_out() {
    let mut c = vpc("10.9.0.0/29");
    let held = fill(&mut c, 7_000);
    assert!(held.len() >= 2, "{held:?}");
    let victim = held[0].clone();
    let ip = c.allocations()[&victim].address.ipv4_addr().unwrap();

    let (out, rx) = ask(
        &mut c,
        Request::Delete {
            key: victim.clone(),
        },
        7_000,
    );
    // Nothing changed on disk yet: the reply need not wait for a save.
    assert!(!out.dirty());
    assert_eq!(out.teardowns.len(), 1);
    assert_eq!(out.teardowns[0].key, victim);
    assert_eq!(out.teardowns[0].address.ipv4_addr(), Some(ip));
    deliver(out);
    assert!(matches!(rx.try_recv(), Ok(Ok(Reply::TearingDown(_)))));

    // A repeated DEL does not start a second removal.
    let (out, _rx) = ask(
        &mut c,
        Request::Delete {
            key: victim.clone(),
        },
        7_000,
    );
    assert!(out.teardowns.is_empty());

    // Every way an address could go back leaves it held while the removal runs.
    let far = 7_000 + 3_600_000;
    for req in [
        Request::Release {
            key: victim.clone(),
        },
        Request::Rollback {
            key: victim.clone(),
            token: 0,
        },
    ] {
        assert_eq!(call(&mut c, req, far).0, Ok(Reply::Released(None)));
    }
    assert!(c.release(&victim, far).is_none());
    let (gc, _) = call(
        &mut c,
        Request::Gc {
            network: "terway".into(),
            valid: Vec::new(),
        },
        far,
    );
    let Ok(Reply::Collected(stale)) = gc else {
        panic!("{gc:?}")
    };
    assert!(stale.iter().all(|a| a.key != victim), "{stale:?}");
    // A newcomer finds nothing free: it waits for the removal rather than failing at once.
    let (out, newcomer) = ask(&mut c, alloc_in("newcomer"), far);
    deliver(out);
    assert!(
        newcomer.try_recv().is_err(),
        "handed out (or failed) while tearing down"
    );
    // The attachment itself is not wired again under the same veth name meanwhile: a
    // re-ADD waits for the removal.
    let (out, again) = ask(&mut c, alloc_in("fill-0"), far);
    deliver(out);
    assert!(
        again.try_recv().is_err(),
        "re-ADD served during the removal"
    );
    // Get shows why.
    let (r, _) = call(
        &mut c,
        Request::Get {
            key: victim.clone(),
        },
        far,
    );
    let Ok(Reply::Found(Some(a))) = r else {
        panic!("{r:?}")
    };
    assert!(a.problem.unwrap().contains("removing"));

    // A failed removal keeps the address (GC retries later).
    let mut out = Outbox::default();
    c.torn_down(&victim, Err("EBUSY".into()), far, &mut out);
    assert!(!out.dirty());
    assert!(c.allocations().contains_key(&victim));
    assert!(call(&mut c, alloc_in("newcomer2"), far).0.is_err());
    // The held re-ADD then finds its allocation as a retried ADD does (setup replaces the
    // leftover veth of its own name).
    deliver(out);
    assert_eq!(ip_of(&again.try_recv().unwrap()), ip);
    // The waiting newcomer then fails: nothing came free.
    assert!(matches!(newcomer.try_recv(), Ok(Err(_))));

    // Once a removal succeeds the address is free, and saved so before any reply.
    let (out, _rx) = ask(
        &mut c,
        Request::Delete {
            key: victim.clone(),
        },
        far,
    );
    assert_eq!(out.teardowns.len(), 1);
    let mut out = Outbox::default();
    c.torn_down(&victim, Ok(()), far, &mut out);
    assert!(out.dirty());
    assert!(!c.allocations().contains_key(&victim));
    let (r, _) = call(&mut c, alloc_in("newcomer"), far);
    assert_eq!(ip_of(&r), ip);
    // A late report for a key no longer tearing down changes nothing.
    let mut out = Outbox::default();
    c.torn_down(&victim, Ok(()), far, &mut out);
    assert!(!out.dirty());
    assert!(c.allocations().contains_key(&key("newcomer")));
}

#[test]
fn delete_of_an_unknown_attachment_is_a_lookup() {
    let mut c = vpc("10.9.0.0/29");
    let (out, rx) = ask(&mut c, Request::Delete { key: key("nobody") }, 7_000);
    assert!(out.teardowns.is_empty() && !out.dirty());
    deliver(out);
    assert_eq!(rx.try_recv().unwrap(), Ok(Reply::Found(None)));
}

/// A runtime that reuses a pod's network namespace for the next pod: the new ADD waits until
/// the daemon has removed the old veth (whose `eth0` is still in that namespace), then is
/// served; deleting it meanwhile cancels it.
#[test]
fn an_add_into_a_namespace_in_teardown_waits_for_it() {
    let mut c = vpc("10.9.0.0/24");
    let ns = |id: &str, netns: &str| Request::Alloc {
        key: key(id),
        pod: pod(id),
        netns: netns.into(),
    };
    let _ = call(&mut c, ns("old", "/run/netns/slot1"), 7_000);
    let _ = call(&mut c, ns("gone", "/run/netns/slot2"), 7_000);
    let (out, _) = ask(&mut c, Request::Delete { key: key("old") }, 7_000);
    deliver(out);
    let (out, _) = ask(&mut c, Request::Delete { key: key("gone") }, 7_000);
    deliver(out);

    let (out, next) = ask(&mut c, ns("next", "/run/netns/slot1"), 7_001);
    deliver(out);
    assert!(
        next.try_recv().is_err(),
        "served before the old eth0 was removed"
    );
    // Another namespace is not held up.
    let (other, _) = call(&mut c, ns("other", "/run/netns/slot3"), 7_001);
    assert!(other.is_ok());
    // Deleted while held back: cancelled.
    let (out, held) = ask(&mut c, ns("dropped", "/run/netns/slot2"), 7_001);
    deliver(out);
    let _ = call(
        &mut c,
        Request::Release {
            key: key("dropped"),
        },
        7_001,
    );
    assert_eq!(held.try_recv().unwrap().unwrap_err().kind, Kind::TryAgain);

    let mut out = Outbox::default();
    c.torn_down(&key("old"), Ok(()), 7_002, &mut out);
    assert!(out.dirty());
    deliver(out);
    let r = next.try_recv().expect("served once the teardown finished");
    assert!(matches!(r, Ok(Reply::Allocated(_))), "{r:?}");
}

/// A full node replacing a pod: the new pod's ADD waits for the old one's teardown and gets
/// the address it frees, instead of failing for the milliseconds the removal takes.
#[test]
fn an_add_on_a_full_node_waits_for_a_teardown_to_free_an_address() {
    let mut c = vpc("10.9.0.0/29");
    let held = fill(&mut c, 7_000);
    let ip = c.allocations()[&held[0]].address.ipv4_addr().unwrap();
    let (out, _rx) = ask(
        &mut c,
        Request::Delete {
            key: held[0].clone(),
        },
        7_000,
    );
    deliver(out);
    let (out, newcomer) = ask(&mut c, alloc_in("replacement"), 7_000);
    deliver(out);
    assert!(newcomer.try_recv().is_err(), "waits for the removal");
    let mut out = Outbox::default();
    c.torn_down(&held[0], Ok(()), 7_010, &mut out);
    deliver(out);
    assert_eq!(ip_of(&newcomer.try_recv().unwrap()), ip);
}
