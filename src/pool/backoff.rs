//! Failures in a row and the retry delay they earn, for both ENI pools: `retry_after_ms` after
//! the first, doubling with each further one, capped at [`MAX_RETRY_MS`], so a permanent error
//! (no permission, a deleted security group) does not hammer the API. Pure: the time comes in.

use super::eni::{CloudFailure, OpId};

/// The longest wait between retries after repeated failures.
pub const MAX_RETRY_MS: u64 = 300_000;

/// The wait after `failures` failures in a row (at least one): `base_ms` doubled with each
/// failure after the first, capped at [`MAX_RETRY_MS`] (or `base_ms` if that is longer).
pub(crate) fn retry_delay(base_ms: u64, failures: u32) -> u64 {
    base_ms
        .saturating_mul(1 << failures.saturating_sub(1).min(16))
        .min(MAX_RETRY_MS.max(base_ms))
}

/// A pool's failure streak.
///
/// The pools count differently on purpose: the shared pool counts every failure
/// ([`Backoff::fail`]); the exclusive pool plans creates in parallel waves and counts a wave that
/// fails together as one step ([`Backoff::fail_in_wave`]), and only a success of an op planned
/// after the last counted failure ([`Backoff::is_current`]) ends its streak.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    failures_in_a_row: u32,
    /// Ops from this id on were planned after the last counted failure.
    wave_start: OpId,
    /// The last failure, until the streak ends (for logs and pod events).
    last: Option<CloudFailure>,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            failures_in_a_row: 0,
            wave_start: 1,
            last: None,
        }
    }
}

impl Backoff {
    /// One more failure in a row.
    pub fn fail(&mut self, failure: &CloudFailure) {
        self.last = Some(failure.clone());
        self.failures_in_a_row = self.failures_in_a_row.saturating_add(1);
    }

    /// `op` failed: one more failure in a row unless an op of the same wave (planned before the
    /// last counted failure) already counted. `next_op` is the id the next planned op gets.
    pub fn fail_in_wave(&mut self, failure: &CloudFailure, op: OpId, next_op: OpId) {
        self.last = Some(failure.clone());
        if self.is_current(op) {
            self.failures_in_a_row = self.failures_in_a_row.saturating_add(1);
            self.wave_start = next_op;
        }
    }

    /// `op` was planned after the last counted failure: its outcome says how the cloud is now.
    pub fn is_current(&self, op: OpId) -> bool {
        op >= self.wave_start
    }

    /// A success: the streak is over.
    pub fn reset(&mut self) {
        self.failures_in_a_row = 0;
        self.last = None;
    }

    /// When to try again after the streak so far, failing at `now`.
    pub fn retry_at(&self, now: u64, base_ms: u64) -> u64 {
        now.saturating_add(retry_delay(base_ms, self.failures_in_a_row))
    }

    pub fn last_failure(&self) -> Option<&CloudFailure> {
        self.last.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failure(code: &str) -> CloudFailure {
        CloudFailure {
            code: code.into(),
            message: format!("{code} happened"),
        }
    }

    #[test]
    fn delay_doubles_and_is_capped() {
        let delays: Vec<u64> = (1..=11).map(|n| retry_delay(1_000, n)).collect();
        assert_eq!(
            delays,
            [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300].map(|s| s * 1_000)
        );
        // No failure yet counts as one; a base above the cap is kept; nothing overflows.
        assert_eq!(retry_delay(1_000, 0), 1_000);
        assert_eq!(retry_delay(400_000, 5), 400_000);
        assert_eq!(retry_delay(u64::MAX, u32::MAX), u64::MAX);
        assert_eq!(retry_delay(0, 3), 0);
    }

    #[test]
    fn every_failure_counts_until_a_success() {
        let mut b = Backoff::default();
        assert_eq!(b.last_failure(), None);
        b.fail(&failure("Throttling.User"));
        assert_eq!(b.retry_at(10, 1_000), 1_010);
        b.fail(&failure("Forbidden.RAM"));
        assert_eq!(b.retry_at(10, 1_000), 2_010);
        assert_eq!(b.last_failure().unwrap().code, "Forbidden.RAM");
        b.reset();
        assert_eq!(b.last_failure(), None);
        b.fail(&failure("Throttling.User"));
        assert_eq!(b.retry_at(0, 1_000), 1_000);
        assert_eq!(b.retry_at(u64::MAX, 1_000), u64::MAX);
    }

    #[test]
    fn a_wave_failing_together_is_one_step() {
        let mut b = Backoff::default();
        // Ops 1..=3 planned together; all fail (the next op would be 4).
        assert!(b.is_current(1));
        for op in 1..=3 {
            b.fail_in_wave(&failure("EniPerInstanceLimitExceeded"), op, 4);
        }
        assert_eq!(b.retry_at(0, 1_000), 1_000);
        assert!(!b.is_current(3), "a late outcome of the failed wave");
        assert!(b.is_current(4));
        // The probe (op 4) fails too: the second step.
        b.fail_in_wave(&failure("EniPerInstanceLimitExceeded"), 4, 5);
        assert_eq!(b.retry_at(0, 1_000), 2_000);
        // A late failure of the first wave neither counts nor moves the wave on, but is the last.
        b.fail_in_wave(&failure("Throttling.User"), 2, 9);
        assert_eq!(b.retry_at(0, 1_000), 2_000);
        assert!(b.is_current(5));
        assert_eq!(b.last_failure().unwrap().code, "Throttling.User");
        b.reset();
        assert_eq!(b.retry_at(0, 1_000), 1_000);
    }
}
