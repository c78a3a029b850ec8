//! When a pool wants `plan` called, for both ENI pools: now after a change, when a shortfall's
//! coalescing window ends, when an excess has lasted its cool-down, or when a back-off or a block
//! ends. Pure: the time comes in as `now` (monotonic ms).

/// A pool's planning clock.
#[derive(Debug, Clone)]
pub(crate) struct Schedule {
    /// Something changed that `plan` should look at now.
    replan: bool,
    last_plan: Option<u64>,
    /// When the current shortfall was first seen by `plan` (coalescing window start).
    demand_since: Option<u64>,
    /// Since when there has been something to release, without interruption.
    excess_since: Option<u64>,
}

impl Default for Schedule {
    fn default() -> Self {
        Schedule {
            replan: true,
            last_plan: None,
            demand_since: None,
            excess_since: None,
        }
    }
}

impl Schedule {
    /// Something changed that `plan` should look at now.
    pub fn wake(&mut self) {
        self.replan = true;
    }

    /// `plan` runs at `now`.
    pub fn planning(&mut self, now: u64) {
        self.replan = false;
        self.last_plan = Some(now);
    }

    /// There is a shortfall at `now`: true once it has lasted `coalesce_ms`, so that a burst of
    /// pods arriving together is planned together.
    pub fn shortfall(&mut self, now: u64, coalesce_ms: u64) -> bool {
        let start = *self.demand_since.get_or_insert(now);
        now >= start.saturating_add(coalesce_ms)
    }

    /// No shortfall: the next one opens a new window.
    pub fn no_shortfall(&mut self) {
        self.demand_since = None;
    }

    /// Whether there is something to release at `now` (the cool-down starts when there first
    /// is, and starts again after there was not).
    pub fn excess(&mut self, excess: bool, now: u64) {
        if excess {
            self.excess_since.get_or_insert(now);
        } else {
            self.excess_since = None;
        }
    }

    /// The excess has lasted `release_after_ms`.
    pub fn cooled_down(&self, now: u64, release_after_ms: u64) -> bool {
        self.excess_since
            .is_some_and(|t| now >= t.saturating_add(release_after_ms))
    }

    /// When `plan` should run next: now after a change; else the earliest of the coalescing
    /// window's end, the cool-down's end and the pool's `other` times (back-offs, block ends;
    /// 0 = none). A time is reported only until a `plan` at or after it has run, so the loop
    /// never spins.
    pub fn next_deadline(
        &self,
        now: u64,
        coalesce_ms: u64,
        release_after_ms: u64,
        other: impl IntoIterator<Item = u64>,
    ) -> Option<u64> {
        if self.replan {
            return Some(now);
        }
        let window_end = self.demand_since.map(|t| t.saturating_add(coalesce_ms));
        let cool_down_end = self
            .excess_since
            .map(|t| t.saturating_add(release_after_ms));
        other
            .into_iter()
            .chain(window_end)
            .chain(cool_down_end)
            .filter(|&t| t > 0 && self.last_plan.is_none_or(|p| t > p))
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_wants_a_plan_now_until_one_runs() {
        let mut s = Schedule::default();
        assert_eq!(s.next_deadline(7, 20, 100, []), Some(7));
        s.planning(7);
        assert_eq!(s.next_deadline(8, 20, 100, []), None);
        s.wake();
        assert_eq!(s.next_deadline(9, 20, 100, [500]), Some(9));
    }

    #[test]
    fn shortfall_waits_for_its_window() {
        let mut s = Schedule::default();
        s.planning(0);
        assert!(!s.shortfall(10, 20));
        assert!(!s.shortfall(29, 20), "the window started at 10");
        assert_eq!(s.next_deadline(29, 20, 100, []), Some(30));
        assert!(s.shortfall(30, 20));
        s.no_shortfall();
        assert_eq!(s.next_deadline(31, 20, 100, []), None);
        assert!(!s.shortfall(40, 20), "a new window");
        assert!(s.shortfall(40, 0));
    }

    #[test]
    fn cool_down_restarts_after_an_interruption() {
        let mut s = Schedule::default();
        s.planning(0);
        assert!(!s.cooled_down(1_000, 0), "nothing to release");
        s.excess(true, 10);
        s.excess(true, 50);
        assert!(!s.cooled_down(109, 100));
        assert!(s.cooled_down(110, 100));
        assert_eq!(s.next_deadline(60, 20, 100, []), Some(110));
        s.excess(false, 120);
        s.excess(true, 130);
        assert!(!s.cooled_down(200, 100));
        assert!(s.cooled_down(230, 100));
    }

    #[test]
    fn deadlines_already_planned_for_are_not_reported_again() {
        let mut s = Schedule::default();
        s.planning(100);
        // 0 means none; 100 was planned for; the earliest later one counts.
        assert_eq!(
            s.next_deadline(100, 20, 100, [0, 50, 100, 300, 200]),
            Some(200)
        );
        assert_eq!(s.next_deadline(100, 20, 100, [0, 100]), None);
        assert!(!s.shortfall(100, 20));
        assert_eq!(s.next_deadline(100, 20, 100, [300]), Some(120));
        s.planning(120);
        assert_eq!(s.next_deadline(120, 20, 100, [300]), Some(300));
    }
}
