//! Choosing the vSwitch for a new ENI, for both ENI pools: vSwitches the cloud said are out of
//! addresses are skipped for a while ([`Blocked`]), the rest are candidates in config order, and
//! the policy picks one ([`pick`]). Pure: the time comes in as `now` (monotonic ms).

use crate::config::VSwitchPolicy;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A vSwitch skipped until `until_ms`, and the cloud's words for why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockedVSwitch {
    pub id: String,
    pub until_ms: u64,
    pub reason: String,
}

/// The blocked vSwitches of a pool. Persisted as a plain list (the `blocked` field of the
/// pools' state files).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub(crate) struct Blocked(Vec<BlockedVSwitch>);

impl Blocked {
    /// Skip `vswitch` until `until_ms`, with the cloud's `message` (or the usual words when it
    /// has none). A new block replaces an older one of the same vSwitch.
    pub fn block(&mut self, vswitch: &str, message: &str, until_ms: u64) {
        let reason = if message.trim().is_empty() {
            format!("The specified VSwitch \"{vswitch}\" has not enough IpAddress.")
        } else {
            message.trim().to_string()
        };
        self.0.retain(|b| b.id != vswitch);
        self.0.push(BlockedVSwitch {
            id: vswitch.to_string(),
            until_ms,
            reason,
        });
    }

    pub fn is_blocked(&self, vswitch: &str, now: u64) -> bool {
        self.active_block(vswitch, now).is_some()
    }

    fn active_block(&self, vswitch: &str, now: u64) -> Option<&BlockedVSwitch> {
        self.0.iter().find(|b| b.id == vswitch && b.until_ms > now)
    }

    /// Forget the blocks that are over.
    pub fn expire(&mut self, now: u64) {
        self.0.retain(|b| b.until_ms > now);
    }

    /// No block lasts past `latest`: blocks persisted by a previous boot may carry times of a
    /// clock that has since restarted.
    pub fn clamp(&mut self, latest: u64) {
        for b in &mut self.0 {
            b.until_ms = b.until_ms.min(latest);
        }
    }

    /// The blocks in force at `now` (for snapshots).
    pub fn active(&self, now: u64) -> Vec<BlockedVSwitch> {
        self.0
            .iter()
            .filter(|b| b.until_ms > now)
            .cloned()
            .collect()
    }

    /// When each block ends (deadlines for the planning loop).
    pub fn ends(&self) -> impl Iterator<Item = u64> + '_ {
        self.0.iter().map(|b| b.until_ms)
    }

    /// The `configured` vSwitches not blocked at `now`, in config order, each once.
    pub fn candidates<'a>(&self, configured: &'a [String], now: u64) -> Vec<&'a str> {
        let mut out: Vec<&str> = Vec::new();
        for v in configured {
            if !self.is_blocked(v, now) && !out.contains(&v.as_str()) {
                out.push(v);
            }
        }
        out
    }

    /// Why no address can come from `vswitches` (each named once, in order): every blocked one,
    /// quoted with the cloud's words and how long it is skipped still.
    pub fn exhausted<'a>(&self, vswitches: impl IntoIterator<Item = &'a str>, now: u64) -> String {
        let mut parts: Vec<String> = Vec::new();
        let mut seen: Vec<&str> = Vec::new();
        for v in vswitches {
            if seen.contains(&v) {
                continue;
            }
            seen.push(v);
            if let Some(b) = self.active_block(v, now) {
                let secs = b.until_ms.saturating_sub(now).div_ceil(1000);
                parts.push(format!("{} ({} skipped for {secs} s)", b.reason, b.id));
            }
        }
        format!(
            "every vSwitch is out of addresses: {}; \
             add a vSwitch with free addresses to `vswitches`",
            parts.join("; ")
        )
    }
}

/// Why nothing can be created when no vSwitch is configured.
pub(crate) const NO_VSWITCH: &str =
    "no vSwitch configured for pod ENIs (set `vswitches` for the node's zone)";

/// The vSwitch for the next ENI among unblocked `candidates` (config order): the first
/// (`Ordered`), one by `random` (`Random`), or the one with most free addresses (`Most`, by the
/// counts in `free`). None without candidates.
pub(crate) fn pick(
    candidates: &[&str],
    policy: VSwitchPolicy,
    random: u64,
    free: &BTreeMap<String, u64>,
) -> Option<String> {
    let first = *candidates.first()?;
    let chosen = match policy {
        VSwitchPolicy::Ordered => first,
        VSwitchPolicy::Random => candidates[(random % candidates.len() as u64) as usize],
        // Known free addresses first (most first), then unknown counts, then vSwitches known to
        // be empty; ties keep config order (min_by_key returns the first).
        VSwitchPolicy::Most => candidates
            .iter()
            .enumerate()
            .min_by_key(|(i, v)| match free.get(**v) {
                Some(&n) if n > 0 => (0, u64::MAX - n, *i),
                None => (1, 0, *i),
                Some(_) => (2, 0, *i),
            })
            .map(|(_, v)| *v)
            .unwrap_or(first),
    };
    Some(chosen.to_string())
}

/// `n` of `vswitch`'s free addresses are spoken for (when its count is known).
pub(crate) fn take_free(free: &mut BTreeMap<String, u64>, vswitch: &str, n: u64) {
    if let Some(left) = free.get_mut(vswitch) {
        *left = left.saturating_sub(n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const AAA: &str = "vsw-AAA";
    const BBB: &str = "vsw-BBB";
    const CCC: &str = "vsw-CCC";

    fn configured() -> Vec<String> {
        vec![AAA.into(), BBB.into(), AAA.into(), CCC.into()]
    }

    #[test]
    fn blocks_expire_replace_and_clamp() {
        let mut b = Blocked::default();
        b.block(AAA, "  ", 100);
        assert!(b.is_blocked(AAA, 99));
        assert!(!b.is_blocked(AAA, 100), "over at until_ms");
        assert!(!b.is_blocked(BBB, 0));
        assert_eq!(
            b.active(0)[0].reason,
            "The specified VSwitch \"vsw-AAA\" has not enough IpAddress."
        );
        // A new block of the same vSwitch replaces the old one.
        b.block(AAA, " the cloud's words ", 500);
        b.block(BBB, "", 200);
        assert_eq!(b.active(0).len(), 2);
        assert_eq!(b.active(0)[0].id, AAA);
        assert_eq!(b.active(0)[0].reason, "the cloud's words");
        assert_eq!(b.ends().collect::<Vec<_>>(), vec![500, 200]);
        assert_eq!(b.active(200).len(), 1);
        b.clamp(300);
        assert_eq!(b.ends().collect::<Vec<_>>(), vec![300, 200]);
        b.expire(200);
        assert_eq!(b.ends().collect::<Vec<_>>(), vec![300]);
    }

    #[test]
    fn candidates_are_unblocked_in_config_order_once() {
        let mut b = Blocked::default();
        assert_eq!(b.candidates(&configured(), 0), vec![AAA, BBB, CCC]);
        b.block(BBB, "", 100);
        assert_eq!(b.candidates(&configured(), 0), vec![AAA, CCC]);
        assert_eq!(b.candidates(&configured(), 100), vec![AAA, BBB, CCC]);
        assert!(b.candidates(&[], 0).is_empty());
    }

    #[test]
    fn exhausted_quotes_each_blocked_vswitch_once() {
        let mut b = Blocked::default();
        b.block(AAA, "AAA is empty", 1_500);
        b.block(CCC, "CCC is empty", 10_000);
        let why = b.exhausted([AAA, BBB, AAA, CCC], 0);
        assert_eq!(
            why,
            "every vSwitch is out of addresses: AAA is empty (vsw-AAA skipped for 2 s); \
             CCC is empty (vsw-CCC skipped for 10 s); \
             add a vSwitch with free addresses to `vswitches`"
        );
    }

    #[test]
    fn policies_pick() {
        let c = [AAA, BBB, CCC];
        let none = BTreeMap::new();
        let free = |counts: &[(&str, u64)]| -> BTreeMap<String, u64> {
            counts.iter().map(|(v, n)| (v.to_string(), *n)).collect()
        };
        type Row<'a> = (VSwitchPolicy, u64, &'a [(&'a str, u64)], &'a str);
        let table: &[Row] = &[
            (VSwitchPolicy::Ordered, 7, &[], AAA),
            (VSwitchPolicy::Random, 7, &[], BBB),
            (VSwitchPolicy::Random, 5, &[], CCC),
            (VSwitchPolicy::Most, 0, &[(AAA, 5), (CCC, 50)], CCC),
            // Unknown counts come before known empty ones; ties keep config order.
            (VSwitchPolicy::Most, 0, &[(BBB, 5)], BBB),
            (VSwitchPolicy::Most, 0, &[], AAA),
            (VSwitchPolicy::Most, 0, &[(AAA, 0)], BBB),
            (VSwitchPolicy::Most, 0, &[(AAA, 0), (BBB, 0), (CCC, 0)], AAA),
            (VSwitchPolicy::Most, 0, &[(AAA, 3), (BBB, 3)], AAA),
        ];
        for &(policy, random, counts, want) in table {
            let got = pick(&c, policy, random, &free(counts));
            assert_eq!(got.as_deref(), Some(want), "{policy:?} {random} {counts:?}");
        }
        for policy in [
            VSwitchPolicy::Ordered,
            VSwitchPolicy::Random,
            VSwitchPolicy::Most,
        ] {
            assert_eq!(pick(&[], policy, 3, &none), None);
        }
    }

    #[test]
    fn taken_free_addresses_spread_most() {
        let mut free: BTreeMap<String, u64> = [(AAA.to_string(), 2), (BBB.to_string(), 3)].into();
        let mut got = Vec::new();
        for _ in 0..3 {
            let v = pick(&[AAA, BBB], VSwitchPolicy::Most, 0, &free).unwrap();
            take_free(&mut free, &v, 1);
            got.push(v);
        }
        assert_eq!(got, vec![BBB, AAA, BBB]);
        take_free(&mut free, CCC, 1);
        take_free(&mut free, AAA, 10);
        assert_eq!(free.get(AAA), Some(&0));
        assert_eq!(free.get(CCC), None);
    }
}
