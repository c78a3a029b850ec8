//! The course of a reconcile, for both ENI pools: each known ENI is compared with what the cloud
//! shows of it, then the ENIs the pool does not know are adopted. What a comparison or an
//! adoption does is the pool's own ([`Reconcile`]).

use super::eni::EniFacts;

/// The steps of a pool's reconcile.
pub(crate) trait Reconcile {
    type Report: Default;

    /// Before: plan again afterwards, and bring persisted times into this boot's clock.
    fn begin(&mut self, now: u64);
    /// The ENIs the pool knows, by id, that no op in flight works on.
    fn settled_enis(&self) -> Vec<String>;
    /// One known ENI against what the cloud shows of it (None: not attached).
    fn compare(&mut self, id: &str, seen: Option<&EniFacts>, now: u64, report: &mut Self::Report);
    /// An ENI is being created.
    fn creates_in_flight(&self) -> bool;
    /// An attached ENI, known to the pool or not.
    fn adopt(&mut self, seen: &EniFacts, now: u64, report: &mut Self::Report);
    /// After: the pool's own bookkeeping (watermark timers).
    fn end(&mut self, now: u64);
}

/// Bring `pool` in line with the ENIs the cloud says are `observed`. ENIs with an op in flight
/// are left alone (the op may be changing them right now), and while an ENI is being created
/// unknown ENIs are not adopted (it may be that one; the next reconcile will see).
pub(crate) fn reconcile<P: Reconcile>(pool: &mut P, observed: &[EniFacts], now: u64) -> P::Report {
    pool.begin(now);
    let mut report = P::Report::default();
    for id in pool.settled_enis() {
        let seen = observed.iter().find(|f| f.id == id);
        pool.compare(&id, seen, now, &mut report);
    }
    if !pool.creates_in_flight() {
        for f in observed {
            pool.adopt(f, now, &mut report);
        }
    }
    pool.end(now);
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records the calls.
    #[derive(Default)]
    struct Log {
        known: Vec<&'static str>,
        busy: Vec<&'static str>,
        creating: bool,
        calls: Vec<String>,
    }

    impl Reconcile for Log {
        type Report = Vec<String>;
        fn begin(&mut self, now: u64) {
            self.calls.push(format!("begin {now}"));
        }
        fn settled_enis(&self) -> Vec<String> {
            let settled = self.known.iter().filter(|id| !self.busy.contains(id));
            settled.map(|id| id.to_string()).collect()
        }
        fn compare(&mut self, id: &str, seen: Option<&EniFacts>, now: u64, r: &mut Vec<String>) {
            r.push(format!("{id} {} {now}", seen.is_some()));
        }
        fn creates_in_flight(&self) -> bool {
            self.creating
        }
        fn adopt(&mut self, seen: &EniFacts, now: u64, r: &mut Vec<String>) {
            r.push(format!("adopt {} {now}", seen.id));
        }
        fn end(&mut self, now: u64) {
            self.calls.push(format!("end {now}"));
        }
    }

    fn facts(id: &str) -> EniFacts {
        EniFacts {
            id: id.into(),
            mac: "00:16:3e:00:00:01".into(),
            vswitch_id: "vsw-AAA".into(),
            vswitch_cidr: "10.1.0.0/16".parse().unwrap(),
            gateway: "10.1.0.1".parse().unwrap(),
            primary_ip: "10.1.0.11".parse().unwrap(),
            secondary_ips: Vec::new(),
            ipv6s: Vec::new(),
            v6: None,
        }
    }

    #[test]
    fn compares_settled_enis_then_adopts_unless_creating() {
        let observed = [facts("eni-2"), facts("eni-3")];
        let mut pool = Log {
            known: vec!["eni-1", "eni-2", "eni-4"],
            busy: vec!["eni-4"],
            ..Log::default()
        };
        let report = reconcile(&mut pool, &observed, 5);
        assert_eq!(
            report,
            [
                "eni-1 false 5",
                "eni-2 true 5",
                "adopt eni-2 5",
                "adopt eni-3 5"
            ]
        );
        assert_eq!(pool.calls, ["begin 5", "end 5"]);
        pool.creating = true;
        let report = reconcile(&mut pool, &observed, 6);
        assert_eq!(report, ["eni-1 false 6", "eni-2 true 6"]);
    }
}
