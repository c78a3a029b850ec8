//! Client-side per-action rate limits (calls per minute), so a busy node never trips the
//! account-wide cloud throttle that every other node shares. The bucket is pure (time passed in);
//! [`RateLimiter`] adds the clock and the blocking wait.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Upstream Terway's budgets, calls per minute.
pub const DEFAULT_LIMITS: &[(&str, u32)] = &[
    ("CreateNetworkInterface", 500),
    ("AttachNetworkInterface", 500),
    ("DeleteNetworkInterface", 500),
    ("DescribeNetworkInterfaces", 800),
    ("DetachNetworkInterface", 400),
    ("AssignPrivateIpAddresses", 400),
    ("UnassignPrivateIpAddresses", 400),
    ("AssignIpv6Addresses", 400),
    ("UnassignIpv6Addresses", 400),
    ("DescribeVSwitches", 300),
];
/// Budget of actions not listed above.
pub const DEFAULT_OTHER: u32 = 600;

/// A token bucket refilled continuously at `per_minute / 60` tokens per second, holding at most
/// `burst`. Reservations may drive it negative: later callers then wait their turn in order.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenBucket {
    per_sec: f64,
    burst: f64,
    tokens: f64,
    last: Duration,
}

impl TokenBucket {
    /// Full bucket at time `now`. The burst is ten seconds' worth (at least one call), so a
    /// refill after a quiet spell goes out at once but a minute's budget cannot.
    pub fn per_minute(per_minute: u32, now: Duration) -> TokenBucket {
        let per_sec = f64::from(per_minute.max(1)) / 60.0;
        let burst = (per_sec * 10.0).max(1.0).floor();
        TokenBucket {
            per_sec,
            burst,
            tokens: burst,
            last: now,
        }
    }

    fn refill(&mut self, now: Duration) {
        if now > self.last {
            let gained = (now - self.last).as_secs_f64() * self.per_sec;
            self.tokens = (self.tokens + gained).min(self.burst);
            self.last = now;
        }
    }

    /// Takes one call's token at `now`; returns how long the caller must wait before calling
    /// (zero when a token was there).
    pub fn reserve(&mut self, now: Duration) -> Duration {
        self.refill(now);
        self.tokens -= 1.0;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.per_sec)
        }
    }
}

/// Per-action buckets. A limit of 0 means unlimited.
#[derive(Debug)]
pub struct RateLimiter {
    limits: HashMap<String, u32>,
    default: u32,
    epoch: Instant,
    buckets: Mutex<HashMap<String, TokenBucket>>,
}

impl RateLimiter {
    /// The upstream defaults, with `overrides` (action, calls per minute) on top; the action
    /// `*` overrides the budget of unlisted actions.
    pub fn new(overrides: &[(String, u32)]) -> RateLimiter {
        let mut limits: HashMap<String, u32> = DEFAULT_LIMITS
            .iter()
            .map(|(a, n)| (a.to_string(), *n))
            .collect();
        let mut default = DEFAULT_OTHER;
        for (action, n) in overrides {
            if action == "*" {
                default = *n;
            } else {
                limits.insert(action.clone(), *n);
            }
        }
        RateLimiter {
            limits,
            default,
            epoch: Instant::now(),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    pub fn limit_of(&self, action: &str) -> u32 {
        self.limits.get(action).copied().unwrap_or(self.default)
    }

    /// How long a call of `action` at `now` (since the limiter's epoch) must wait; takes its token.
    pub fn reserve_at(&self, action: &str, now: Duration) -> Duration {
        let limit = self.limit_of(action);
        if limit == 0 {
            return Duration::ZERO;
        }
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        buckets
            .entry(action.to_string())
            .or_insert_with(|| TokenBucket::per_minute(limit, now))
            .reserve(now)
    }

    /// Blocks until a call of `action` is allowed. Returns the time waited.
    pub fn acquire(&self, action: &str) -> Duration {
        let wait = self.reserve_at(action, self.epoch.elapsed());
        if !wait.is_zero() {
            log::debug!("{action}: client-side rate limit, waiting {wait:?}");
            std::thread::sleep(wait);
        }
        wait
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(f64) -> Duration = Duration::from_secs_f64;

    #[test]
    fn bucket_bursts_then_paces() {
        // 60/min = 1/s, burst 10.
        let mut b = TokenBucket::per_minute(60, S(0.0));
        for _ in 0..10 {
            assert_eq!(b.reserve(S(0.0)), Duration::ZERO);
        }
        // The 11th waits one second, the 12th two: callers queue in order.
        assert_eq!(b.reserve(S(0.0)), S(1.0));
        assert_eq!(b.reserve(S(0.0)), S(2.0));
        // After 5 s the debt (2) is paid and 3 tokens are back.
        for _ in 0..3 {
            assert_eq!(b.reserve(S(5.0)), Duration::ZERO);
        }
        assert!(b.reserve(S(5.0)) > Duration::ZERO);
        // A long quiet spell refills only up to the burst.
        let mut n = 0;
        while b.reserve(S(1000.0)).is_zero() {
            n += 1;
        }
        assert_eq!(n, 10);
    }

    #[test]
    fn small_budgets_still_allow_one_call() {
        let mut b = TokenBucket::per_minute(3, S(0.0));
        assert_eq!(b.reserve(S(0.0)), Duration::ZERO);
        let w = b.reserve(S(0.0));
        assert!((w.as_secs_f64() - 20.0).abs() < 1e-6, "{w:?}");
    }

    #[test]
    fn limiter_defaults_overrides_and_unlimited() {
        let l = RateLimiter::new(&[
            ("DescribeVSwitches".into(), 6),
            ("AttachNetworkInterface".into(), 0),
            ("*".into(), 120),
        ]);
        assert_eq!(l.limit_of("CreateNetworkInterface"), 500);
        assert_eq!(l.limit_of("DescribeNetworkInterfaces"), 800);
        assert_eq!(l.limit_of("DetachNetworkInterface"), 400);
        assert_eq!(l.limit_of("UnassignPrivateIpAddresses"), 400);
        assert_eq!(l.limit_of("DescribeVSwitches"), 6);
        assert_eq!(l.limit_of("DescribeInstanceTypes"), 120);
        assert_eq!(RateLimiter::new(&[]).limit_of("DescribeInstanceTypes"), 600);
        // 6/min: burst 1, then one every 10 s; other actions have their own bucket.
        assert_eq!(l.reserve_at("DescribeVSwitches", S(0.0)), Duration::ZERO);
        assert_eq!(l.reserve_at("DescribeVSwitches", S(0.0)), S(10.0));
        assert_eq!(
            l.reserve_at("DescribeInstanceTypes", S(0.0)),
            Duration::ZERO
        );
        for _ in 0..10_000 {
            assert_eq!(
                l.reserve_at("AttachNetworkInterface", S(0.0)),
                Duration::ZERO
            );
        }
    }
}
