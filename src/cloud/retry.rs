//! Retry policy: exponential backoff with jitter. Pure: the random draw is passed in.

use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included (1 = no retry).
    pub max_attempts: u32,
    /// Delay before the first retry (before jitter).
    pub base_delay: Duration,
    /// Cap of any single delay; with `max_attempts` it bounds the total time spent waiting.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    /// 5 attempts, 500 ms doubling up to 8 s: at most ~7.5 s of waiting, enough to ride out a
    /// throttling window without stalling the pool for long.
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 5,
            base_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(8),
        }
    }
}

impl RetryPolicy {
    /// The delay after failed attempt number `attempt` (1-based), given a uniform draw `unit`
    /// in [0, 1). "Equal jitter": half the exponential step is fixed, half random, so retries
    /// of many nodes spread out but none comes back immediately.
    pub fn delay(&self, attempt: u32, unit: f64) -> Duration {
        let exp = attempt.saturating_sub(1).min(31);
        let step = self
            .base_delay
            .saturating_mul(1u32 << exp)
            .min(self.max_delay);
        let half = step / 2;
        half + half.mul_f64(unit.clamp(0.0, 1.0))
    }

    /// Upper bound of the total time spent sleeping between attempts.
    pub fn max_total_delay(&self) -> Duration {
        (1..self.max_attempts.max(1))
            .map(|a| self.delay(a, 1.0))
            .fold(Duration::ZERO, Duration::saturating_add)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_doubles_with_jitter_and_caps() {
        let p = RetryPolicy {
            max_attempts: 6,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(500),
        };
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
}
