//! Fixtures both ENI pools' unit tests share: vSwitch names, owners, failures, a config builder,
//! a fake VPC that hands out ENIs and addresses, and drivers and checks for what both pools do
//! alike (planning by `next_deadline`, failing every op, blocked vSwitches, state round trips).

use super::eni::{CloudFailure, EniFacts};
use super::vswitch::BlockedVSwitch;
use crate::model::AttachKey;
use ipnetwork::{Ipv4Network, Ipv6Network};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::net::{Ipv4Addr, Ipv6Addr};

pub const AAA: &str = "vsw-AAA";
pub const BBB: &str = "vsw-BBB";

/// The pod attachment number `n`.
pub fn key(n: u32) -> AttachKey {
    AttachKey::new("terway", &format!("c{n}"), "eth0")
}

pub fn failure(code: &str) -> CloudFailure {
    CloudFailure {
        code: code.into(),
        message: format!("{code} happened"),
    }
}

/// What the cloud says when `vsw` is out of addresses.
pub fn exhausted(vsw: &str) -> CloudFailure {
    CloudFailure {
        code: "InvalidVSwitchId.IpNotEnough".into(),
        message: format!("The specified VSwitch \"{vsw}\" has not enough IpAddress."),
    }
}

/// A pool config for tests: the fields given, then what both pools' tests share: coalesce 20 ms,
/// release after 60 s, vSwitch back-off 300 s, retry after 1 s, sticky 300 s, and vsw-AAA then
/// vsw-BBB (Ordered).
macro_rules! test_config {
    ($config:ident { $($field:ident: $value:expr),* $(,)? }) => {
        $config {
            $($field: $value,)*
            coalesce_ms: 20,
            release_after_ms: 60_000,
            vswitch_backoff_ms: 300_000,
            retry_after_ms: 1_000,
            vswitches: vec![
                $crate::pool::test_support::AAA.into(),
                $crate::pool::test_support::BBB.into(),
            ],
            vswitch_policy: $crate::config::VSwitchPolicy::Ordered,
            sticky_ms: 300_000,
        }
    };
}
pub(crate) use test_config;

/// A cloud that remembers the ENIs it has attached. vSwitches in `exhausted` are out of
/// addresses. vsw-AAA hands out 10.1.x.x, vsw-BBB 10.2.x.x, any other 10.9.x.x.
#[derive(Default)]
pub struct Cloud {
    /// ENIs made so far (eni-001, eni-002, ...).
    pub next_eni: u32,
    next_ip: u32,
    pub enis: BTreeMap<String, EniFacts>,
    pub exhausted: BTreeSet<String>,
    /// Dual stack: every vSwitch has IPv6 (fd00:<vsw>::/64, gateway fd00:<vsw>::1).
    pub dual: bool,
    /// Dual stack: IPv6 calls fail with this (the IPv4 ones still succeed).
    pub fail6: Option<CloudFailure>,
    next_ip6: u32,
}

impl Cloud {
    /// An address of `vsw` not handed out before.
    pub fn fresh_ip(&mut self, vsw: &str) -> Ipv4Addr {
        self.next_ip += 1;
        let net: u32 = match vsw {
            AAA => 0x0a01_0000,
            BBB => 0x0a02_0000,
            _ => 0x0a09_0000,
        };
        Ipv4Addr::from(net + 10 + self.next_ip)
    }

    /// An IPv6 of `vsw` not handed out before.
    pub fn fresh_ip6(&mut self, vsw: &str) -> Ipv6Addr {
        self.next_ip6 += 1;
        Ipv6Addr::from((vsw6_net(vsw) << 64) | u128::from(0x100 + self.next_ip6))
    }

    /// A new ENI in `vsw`, attached, with `secondary` secondary IPs.
    pub fn facts(&mut self, vsw: &str, secondary: u32) -> EniFacts {
        self.next_eni += 1;
        let n = self.next_eni;
        let primary_ip = self.fresh_ip(vsw);
        let secondary_ips = (0..secondary).map(|_| self.fresh_ip(vsw)).collect();
        let base = u32::from(primary_ip) & 0xffff_0000;
        let f = EniFacts {
            id: format!("eni-{n:03}"),
            mac: format!("00:16:3e:00:{:02x}:{:02x}", n / 256, n % 256),
            vswitch_id: vsw.into(),
            vswitch_cidr: Ipv4Network::new(Ipv4Addr::from(base), 16).unwrap(),
            gateway: Ipv4Addr::from(base + 1),
            primary_ip,
            secondary_ips,
            ipv6s: Vec::new(),
            v6: None,
        };
        let mut f = f;
        if self.dual {
            let net = vsw6_net(vsw) << 64;
            f.v6 = Some(super::eni::EniV6 {
                vswitch_cidr: Ipv6Network::new(Ipv6Addr::from(net), 64).unwrap(),
                gateway: Ipv6Addr::from(net | 1),
            });
            if self.fail6.is_none() {
                f.ipv6s = (0..=secondary).map(|_| self.fresh_ip6(vsw)).collect();
            }
        }
        self.enis.insert(f.id.clone(), f.clone());
        f
    }

    /// CreateNetworkInterface and attach: the new ENI, or the vSwitch is out of addresses.
    pub fn create(&mut self, vsw: &str, secondary: u32) -> Result<EniFacts, CloudFailure> {
        if self.exhausted.contains(vsw) {
            return Err(exhausted(vsw));
        }
        Ok(self.facts(vsw, secondary))
    }

    /// The ENIs attached (what DescribeNetworkInterfaces says).
    pub fn observed(&self) -> Vec<EniFacts> {
        self.enis.values().cloned().collect()
    }
}

/// The upper 64 bits of `vsw`'s IPv6 /64.
fn vsw6_net(vsw: &str) -> u128 {
    let n: u128 = match vsw {
        AAA => 1,
        BBB => 2,
        _ => 9,
    };
    0xfd00_0000_0000_0000 | n
}

/// A pool as the shared drivers see it.
pub trait TestPool {
    type Op;
    type Outcome;
    fn plan_ops(&mut self, now: u64, waiting: u32, random: u64) -> Vec<Self::Op>;
    fn apply_outcome(&mut self, outcome: Self::Outcome, now: u64);
    fn deadline(&self, now: u64) -> Option<u64>;
    /// The outcome of `op` failing with `failure`.
    fn failed(op: &Self::Op, failure: CloudFailure) -> Self::Outcome;
}

/// Both pools name their types alike.
macro_rules! test_pool {
    ($pool:ident) => {
        impl TestPool for super::$pool::Pool {
            type Op = super::$pool::CloudOp;
            type Outcome = super::$pool::CloudOutcome;
            fn plan_ops(&mut self, now: u64, waiting: u32, random: u64) -> Vec<Self::Op> {
                self.plan(now, waiting, random)
            }
            fn apply_outcome(&mut self, outcome: Self::Outcome, now: u64) {
                self.apply(outcome, now)
            }
            fn deadline(&self, now: u64) -> Option<u64> {
                self.next_deadline(now)
            }
            fn failed(op: &Self::Op, failure: CloudFailure) -> Self::Outcome {
                super::$pool::CloudOutcome::Failed {
                    op: op.id(),
                    failure,
                }
            }
        }
    };
}
test_pool!(shared_eni);
test_pool!(exclusive_eni);

/// How the fake cloud carries out a pool's ops (each pool's tests say).
pub trait Runs<P: TestPool> {
    fn run(&mut self, op: &P::Op, pool: &P) -> P::Outcome;
}

/// Runs all `ops` successfully at once.
pub fn run_all<P: TestPool>(pool: &mut P, cloud: &mut Cloud, ops: &[P::Op], now: u64)
where
    Cloud: Runs<P>,
{
    for op in ops {
        let out = cloud.run(op, pool);
        pool.apply_outcome(out, now);
    }
}

/// Each of `ops` fails with `failure` at `now`.
pub fn fail_all<P: TestPool>(pool: &mut P, ops: &[P::Op], failure: &CloudFailure, now: u64) {
    for op in ops {
        pool.apply_outcome(P::failed(op, failure.clone()), now);
    }
}

/// A loop that plans only when `next_deadline` says, with nothing ever completing, until
/// `until` or until the pool wants nothing more: how many plans ran.
pub fn plans_obeying_next_deadline<P: TestPool>(pool: &mut P, until: u64) -> u32 {
    let mut now = 0;
    let mut plans = 0;
    while now < until {
        match pool.deadline(now) {
            Some(t) if t <= now => {
                plans += 1;
                pool.plan_ops(now, 0, 0);
            }
            Some(t) => now = t,
            None => break,
        }
    }
    plans
}

/// `blocked` is `vsw` alone, until `until_ms`, for lack of addresses in the cloud's words.
pub fn assert_blocked_alone(blocked: &[BlockedVSwitch], vsw: &str, until_ms: u64) {
    assert_eq!(blocked.len(), 1, "{blocked:?}");
    assert_eq!(blocked[0].id, vsw);
    assert_eq!(blocked[0].until_ms, until_ms);
    assert_eq!(blocked[0].reason, exhausted(vsw).message);
}

/// `why` quotes the cloud for each of `vswitches`.
pub fn assert_quotes_exhausted(why: &str, vswitches: &[&str]) {
    for v in vswitches {
        let quote = format!("\"{v}\" has not enough IpAddress.");
        assert!(why.contains(&quote), "{why}");
    }
}

/// Unservable because no vSwitch is configured.
pub fn assert_no_vswitch(why: Option<String>) {
    let why = why.unwrap();
    assert!(why.contains("no vSwitch configured"), "{why}");
}

/// `state` written and read back is the same; an empty file reads as the default.
pub fn assert_round_trip<T>(state: &T) -> T
where
    T: Serialize + DeserializeOwned + PartialEq + Debug + Default,
{
    let json = serde_json::to_string(state).unwrap();
    let back: T = serde_json::from_str(&json).unwrap();
    assert_eq!(&back, state);
    let empty: T = serde_json::from_str("{}").unwrap();
    assert_eq!(empty, T::default());
    back
}

mod tests {
    use super::*;

    #[test]
    fn the_fake_cloud_hands_out_distinct_enis_and_addresses() {
        let mut cloud = Cloud::default();
        let a = cloud.facts(AAA, 2);
        let b = cloud.create(BBB, 0).unwrap();
        let c = cloud.facts("vsw-CCC", 0);
        assert_eq!((a.id.as_str(), b.id.as_str()), ("eni-001", "eni-002"));
        assert_eq!(a.primary_ip, Ipv4Addr::new(10, 1, 0, 11));
        assert_eq!(a.secondary_ips.len(), 2);
        assert_eq!(b.vswitch_cidr.to_string(), "10.2.0.0/16");
        assert_eq!(b.gateway, Ipv4Addr::new(10, 2, 0, 1));
        assert_eq!(c.vswitch_cidr.to_string(), "10.9.0.0/16");
        assert_ne!(a.mac, b.mac);
        assert_eq!(cloud.observed(), vec![a, b, c]);
        cloud.exhausted.insert(AAA.into());
        assert_eq!(cloud.create(AAA, 0), Err(exhausted(AAA)));
        assert_eq!(cloud.next_eni, 3);
    }
}
