//! Retry policy: exponential backoff with jitter. Pure: the random draw and the time left are
//! passed in.
//!
//! Two kinds of failure are told apart. Throttling (`Throttling*`) means the region's budget
//! for the action is spent for now: nothing went wrong and the call will go through once the
//! budget refills, so it is retried until the operation's deadline, backing off (capped, with
//! jitter) so that thousands of nodes do not come back at once. Other retryable errors (5xx,
//! a conflicting operation) get a fixed number of attempts.

use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included (1 = no retry), not counting throttled ones.
    pub max_attempts: u32,
    /// Delay before the first retry (before jitter), of either kind.
    pub base_delay: Duration,
    /// Cap of any single delay after a non-throttling error; with `max_attempts` it bounds the
    /// total time spent waiting on them.
    pub max_delay: Duration,
    /// Cap of a single delay after a throttled attempt.
    pub throttle_max_delay: Duration,
    /// How long a throttled call is retried when its operation set no deadline of its own
    /// (counted from the call's first attempt).
    pub throttle_patience: Duration,
}

impl Default for RetryPolicy {
    /// 5 attempts, 500 ms doubling up to 8 s: at most ~7.5 s of waiting on errors, enough to
    /// ride out a server hiccup without stalling the pool for long. Throttled calls back off up
    /// to 20 s and are retried for 2 min.
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 5,
            base_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(8),
            throttle_max_delay: Duration::from_secs(20),
            throttle_patience: Duration::from_secs(120),
        }
    }
}

/// One call's failed attempts so far, by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Attempts {
    /// Attempts that failed with a non-throttling error.
    pub failed: u32,
    /// Attempts refused by throttling.
    pub throttled: u32,
}

impl RetryPolicy {
    /// The delay after failed attempt number `attempt` (1-based), given a uniform draw `unit`
    /// in [0, 1). "Equal jitter": half the exponential step is fixed, half random, so retries
    /// of many nodes spread out but none comes back immediately.
    pub fn delay(&self, attempt: u32, unit: f64) -> Duration {
        jittered(self.base_delay, self.max_delay, attempt, unit)
    }

    /// After a failed attempt, with `tries` counting the earlier ones: the wait before the next
    /// attempt, or `None` to give up (the error goes to the caller). `remaining` is the time
    /// left before the operation's deadline; a throttled call is retried until then (its last
    /// attempt exactly at the deadline), any other retryable one `max_attempts` times in all.
    pub fn next(
        &self,
        tries: &mut Attempts,
        throttled: bool,
        retryable: bool,
        remaining: Duration,
        unit: f64,
    ) -> Option<Duration> {
        if throttled {
            tries.throttled = tries.throttled.saturating_add(1);
            if remaining.is_zero() {
                return None;
            }
            let d = jittered(
                self.base_delay,
                self.throttle_max_delay,
                tries.throttled,
                unit,
            );
            return Some(d.min(remaining));
        }
        tries.failed = tries.failed.saturating_add(1);
        (retryable && tries.failed < self.max_attempts.max(1))
            .then(|| self.delay(tries.failed, unit))
    }

    /// Upper bound of the total time spent sleeping between attempts after non-throttling
    /// errors.
    pub fn max_total_delay(&self) -> Duration {
        (1..self.max_attempts.max(1))
            .map(|a| self.delay(a, 1.0))
            .fold(Duration::ZERO, Duration::saturating_add)
    }
}

/// `base` doubled per attempt up to `cap`, half of it fixed and half drawn.
fn jittered(base: Duration, cap: Duration, attempt: u32, unit: f64) -> Duration {
    let exp = attempt.saturating_sub(1).min(31);
    let step = base.saturating_mul(1u32 << exp).min(cap);
    let half = step / 2;
    half + half.mul_f64(unit.clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 6,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(500),
            throttle_max_delay: Duration::from_secs(4),
            throttle_patience: Duration::from_secs(60),
        }
    }

    #[test]
    fn schedule_doubles_with_jitter_and_caps() {
        let p = policy();
        let ms = |d: Duration| d.as_millis();
        assert_eq!(ms(p.delay(1, 0.0)), 50);
        assert_eq!(ms(p.delay(1, 0.999_999)), 99);
        assert_eq!(ms(p.delay(2, 0.0)), 100);
        assert_eq!(ms(p.delay(3, 0.5)), 300);
        assert_eq!(ms(p.delay(4, 0.0)), 250, "capped at max_delay");
        assert_eq!(ms(p.delay(40, 1.0)), 500, "no overflow on absurd attempts");
        // 100 + 200 + 400 + 500 + 500 at most.
        assert_eq!(ms(p.max_total_delay()), 1700);
        assert_eq!(
            RetryPolicy {
                max_attempts: 1,
                ..p
            }
            .max_total_delay(),
            Duration::ZERO
        );
    }

    #[test]
    fn default_total_is_bounded() {
        let d = RetryPolicy::default();
        assert!(d.max_total_delay() <= Duration::from_secs(8));
    }

    #[test]
    fn other_errors_keep_their_attempts() {
        let p = policy();
        let mut t = Attempts::default();
        let hour = Duration::from_secs(3600);
        for n in 1..6 {
            assert_eq!(
                p.next(&mut t, false, true, hour, 0.0),
                Some(p.delay(n, 0.0))
            );
        }
        assert_eq!(
            p.next(&mut t, false, true, hour, 0.0),
            None,
            "6 attempts in all"
        );
        let mut t = Attempts::default();
        assert_eq!(
            p.next(&mut t, false, false, hour, 0.0),
            None,
            "not retryable"
        );
    }

    #[test]
    fn throttling_is_retried_until_the_deadline() {
        let p = policy();
        let mut t = Attempts::default();
        let mut left = Duration::from_secs(60);
        let mut n = 0;
        while let Some(d) = p.next(&mut t, true, true, left, 0.5) {
            assert!(d <= p.throttle_max_delay && d <= left, "{d:?}");
            left -= d;
            n += 1;
        }
        assert!(left.is_zero(), "the last attempt is at the deadline");
        // 75+150+300+600+1200+2400, then 3 s each: far more than max_attempts.
        assert!(n > 20, "{n}");
        assert_eq!(t.throttled, n + 1);
        // Throttled attempts do not use up the attempts of other errors.
        assert_eq!(
            p.next(&mut t, false, true, left, 0.0),
            Some(p.delay(1, 0.0))
        );
    }

    #[test]
    fn throttled_backoff_doubles_caps_and_jitters() {
        let p = policy();
        let after = |n: u32, unit: f64| {
            let mut t = Attempts {
                failed: 0,
                throttled: n - 1,
            };
            p.next(&mut t, true, true, Duration::from_secs(3600), unit)
        };
        let ms = |d: Option<Duration>| d.map(|d| d.as_millis());
        assert_eq!(ms(after(1, 0.0)), Some(50));
        assert_eq!(ms(after(2, 0.0)), Some(100));
        assert_eq!(ms(after(2, 1.0)), Some(200));
        assert_eq!(
            ms(after(10, 0.0)),
            Some(2000),
            "capped at throttle_max_delay"
        );
        assert_eq!(ms(after(1000, 1.0)), Some(4000));
        // Close to the deadline the wait is what is left.
        let mut t = Attempts::default();
        assert_eq!(
            p.next(&mut t, true, true, Duration::from_millis(7), 1.0),
            Some(Duration::from_millis(7))
        );
    }
}
