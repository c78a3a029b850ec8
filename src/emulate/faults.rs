//! Injected faults (latency, per-action rate limits, random server errors, operation conflicts,
//! lost answers) and the per-action call audit. Pure: time and dice come from the caller / a seeded generator.

use crate::emulate::errors::{self, ApiError};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, VecDeque};

/// Fault settings; every map key is an action name or `*` for all actions.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Faults {
    /// Added delay before answering, in milliseconds.
    pub latency_ms: BTreeMap<String, u64>,
    /// Calls allowed per second; more answer `Throttling.User`.
    pub rate_limits: BTreeMap<String, u32>,
    /// Probability (0..=1) that a call fails with `InternalError` or `ServiceUnavailable`.
    pub error_rate: f64,
    /// Probability (0..=1) that a call fails with `Operation.Conflict` (HTTP 403, nothing done),
    /// as when another operation on the same resource is under way: clients retry it in place.
    pub conflict_rate: f64,
    /// Actions the error, conflict and lost-answer rates apply to; empty means all.
    pub error_actions: Vec<String>,
    /// Probability (0..=1) that a call is carried out but answers `InternalError`, as when the
    /// real service's answer is lost: clients must not assume a failed call did nothing.
    pub lost_answer_rate: f64,
    /// Caps the free addresses of a vSwitch (allocations consume the cap) to force exhaustion.
    pub vswitch_free_cap: BTreeMap<String, u32>,
}

/// splitmix64: tiny, seeded, good enough for fault dice and ids.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct CallCount {
    pub total: u64,
    pub ok: u64,
    /// Error code → count.
    pub errors: BTreeMap<String, u64>,
}

#[derive(Debug)]
pub struct FaultState {
    pub faults: Faults,
    windows: HashMap<String, VecDeque<u64>>,
    rng: Rng,
    calls: BTreeMap<String, CallCount>,
}

impl FaultState {
    pub fn new(faults: Faults, seed: u64) -> FaultState {
        FaultState {
            faults,
            windows: HashMap::new(),
            rng: Rng(seed ^ 0x5eed_fa17),
            calls: BTreeMap::new(),
        }
    }

    /// The latency to add before answering `action`.
    pub fn latency(&self, action: &str) -> u64 {
        self.faults
            .latency_ms
            .get(action)
            .or_else(|| self.faults.latency_ms.get("*"))
            .copied()
            .unwrap_or(0)
    }

    /// Rate limits and random errors for one call at `now_ms`. A throttled call does not use up
    /// budget, as a gateway that rejects it never forwards it.
    pub fn admit(&mut self, action: &str, now_ms: u64) -> Result<(), ApiError> {
        for key in [action, "*"] {
            let Some(&limit) = self.faults.rate_limits.get(key) else {
                continue;
            };
            let w = self.windows.entry(key.to_string()).or_default();
            while w.front().is_some_and(|&t| t + 1000 <= now_ms) {
                w.pop_front();
            }
            if w.len() >= limit as usize {
                return Err(errors::throttled());
            }
        }
        for key in [action, "*"] {
            if self.faults.rate_limits.contains_key(key) {
                self.windows
                    .entry(key.to_string())
                    .or_default()
                    .push_back(now_ms);
            }
        }
        let applies = self.applies(action);
        if applies && self.faults.error_rate > 0.0 && self.rng.next_f64() < self.faults.error_rate {
            return Err(if self.rng.next_u64().is_multiple_of(2) {
                errors::internal()
            } else {
                errors::unavailable()
            });
        }
        if applies
            && self.faults.conflict_rate > 0.0
            && self.rng.next_f64() < self.faults.conflict_rate
        {
            return Err(errors::operation_conflict());
        }
        Ok(())
    }

    fn applies(&self, action: &str) -> bool {
        self.faults.error_actions.is_empty()
            || self.faults.error_actions.iter().any(|a| a == action)
    }

    /// Whether the answer to a call that was carried out is lost (see `lost_answer_rate`).
    pub fn lose_answer(&mut self, action: &str) -> bool {
        self.applies(action)
            && self.faults.lost_answer_rate > 0.0
            && self.rng.next_f64() < self.faults.lost_answer_rate
    }

    /// Records the outcome of a call (including ones refused before reaching the model).
    pub fn record(&mut self, action: &str, outcome: Result<(), &str>) {
        let c = self.calls.entry(action.to_string()).or_default();
        c.total += 1;
        match outcome {
            Ok(()) => c.ok += 1,
            Err(code) => *c.errors.entry(code.to_string()).or_default() += 1,
        }
    }

    pub fn calls(&self) -> &BTreeMap<String, CallCount> {
        &self.calls
    }

    pub fn reset_calls(&mut self) {
        self.calls.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_throttles_within_a_second_and_recovers() {
        let mut f = Faults::default();
        f.rate_limits.insert("AssignPrivateIpAddresses".into(), 2);
        let mut s = FaultState::new(f, 1);
        assert!(s.admit("AssignPrivateIpAddresses", 0).is_ok());
        assert!(s.admit("AssignPrivateIpAddresses", 10).is_ok());
        let e = s.admit("AssignPrivateIpAddresses", 20).unwrap_err();
        assert_eq!(e.code, "Throttling.User");
        assert!(s.admit("DescribeNetworkInterfaces", 20).is_ok());
        assert!(s.admit("AssignPrivateIpAddresses", 1000).is_ok());
    }

    #[test]
    fn error_rate_injects_server_errors_only_where_asked() {
        let f = Faults {
            error_rate: 1.0,
            error_actions: vec!["CreateNetworkInterface".into()],
            ..Faults::default()
        };
        let mut s = FaultState::new(f, 7);
        let e = s.admit("CreateNetworkInterface", 0).unwrap_err();
        assert!(matches!(
            e.code.as_str(),
            "InternalError" | "ServiceUnavailable"
        ));
        assert!(e.status >= 500);
        assert!(s.admit("DescribeNetworkInterfaces", 0).is_ok());
        let mut half = FaultState::new(
            Faults {
                error_rate: 0.5,
                ..Faults::default()
            },
            3,
        );
        let fails = (0..1000).filter(|i| half.admit("X", *i).is_err()).count();
        assert!((350..650).contains(&fails), "{fails}");
    }

    #[test]
    fn conflict_rate_answers_operation_conflict_where_asked() {
        let f = Faults {
            conflict_rate: 1.0,
            error_actions: vec!["AssignPrivateIpAddresses".into()],
            ..Faults::default()
        };
        let mut s = FaultState::new(f, 5);
        let e = s.admit("AssignPrivateIpAddresses", 0).unwrap_err();
        assert_eq!((e.status, e.code.as_str()), (403, "Operation.Conflict"));
        assert!(s.admit("DescribeNetworkInterfaces", 0).is_ok());
        let parsed: Faults = serde_json::from_str(r#"{"conflict_rate": 0.25}"#).unwrap();
        assert_eq!(parsed.conflict_rate, 0.25);
    }

    #[test]
    fn latency_and_audit() {
        let mut f = Faults::default();
        f.latency_ms.insert("*".into(), 5);
        f.latency_ms.insert("A".into(), 50);
        let mut s = FaultState::new(f, 1);
        assert_eq!((s.latency("A"), s.latency("B")), (50, 5));
        s.record("A", Ok(()));
        s.record("A", Err("Throttling.User"));
        assert_eq!(s.calls()["A"].total, 2);
        assert_eq!(s.calls()["A"].errors["Throttling.User"], 1);
        s.reset_calls();
        assert!(s.calls().is_empty());
    }
}
