//! The budget each window used, as the API told it: per window (known by
//! its reset time) the fewest requests it said were left. Kept for the
//! last [`KEPT_WINDOWS`] windows, for the status page's per-account chart.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

/// Windows remembered.
pub const KEPT_WINDOWS: usize = 48;

/// One window as the API described it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowUse {
    /// When it reset (epoch ms), as first named.
    pub reset_ms: u64,
    /// Requests allowed in it: as the API said, else the policy's.
    pub limit: u32,
    /// Requests used: the limit less the fewest the API said were left
    /// (other clients of the same user included).
    pub used: u32,
}

#[derive(Debug)]
pub(super) struct Usage {
    limit: u32,
    window_ms: u64,
    windows: VecDeque<WindowUse>,
}

impl Usage {
    pub(super) fn new(limit: u32, window_secs: u32) -> Self {
        Self {
            limit,
            window_ms: u64::from(window_secs) * 1000,
            windows: VecDeque::new(),
        }
    }

    /// An answer said `remaining` of `limit` were left in the window
    /// resetting at `reset_ms`. Resets named within half a window of each
    /// other are one window (a server's clock and rounding move them a
    /// little).
    pub(super) fn saw(&mut self, remaining: u32, limit: Option<u32>, reset_ms: u64) {
        let limit = limit.unwrap_or(self.limit);
        let used = limit.saturating_sub(remaining);
        let same = |w: &WindowUse| w.reset_ms.abs_diff(reset_ms) < self.window_ms / 2;
        if let Some(window) = self.windows.iter_mut().rev().find(|w| same(w)) {
            window.used = window.used.max(used);
            window.limit = limit;
            return;
        }
        // An answer from a window already forgotten is not worth a slot.
        if self.windows.len() == KEPT_WINDOWS
            && self.windows.front().is_some_and(|w| w.reset_ms > reset_ms)
        {
            return;
        }
        let at = self.windows.partition_point(|w| w.reset_ms < reset_ms);
        self.windows.insert(
            at,
            WindowUse {
                reset_ms,
                limit,
                used,
            },
        );
        while self.windows.len() > KEPT_WINDOWS {
            self.windows.pop_front();
        }
    }

    /// Takes in windows another limiter saw (a previous owner's).
    pub(super) fn remember(&mut self, windows: &[WindowUse]) {
        for w in windows {
            self.saw(w.limit.saturating_sub(w.used), Some(w.limit), w.reset_ms);
        }
    }

    pub(super) fn windows(&self) -> Vec<WindowUse> {
        self.windows.iter().copied().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_window_keeps_the_most_used_and_nearby_resets_are_one_window() {
        let mut usage = Usage::new(10_000, 3_600);
        let reset = 1_796_356_800_000;
        usage.saw(9_990, Some(10_000), reset);
        usage.saw(9_950, None, reset + 400); // rounding of the same reset
        usage.saw(9_970, None, reset); // an older answer, out of order
        usage.saw(9_000, None, reset + 3_600_000);
        usage.saw(9_999, None, reset - 3_600_000); // late answer of an earlier window
        let windows = usage.windows();
        assert_eq!(
            windows
                .iter()
                .map(|w| (w.reset_ms, w.used))
                .collect::<Vec<_>>(),
            [
                (reset - 3_600_000, 1),
                (reset, 50),
                (reset + 3_600_000, 1_000)
            ]
        );
        for n in 0..60u64 {
            usage.saw(0, Some(5_000), reset + (n + 2) * 3_600_000);
        }
        assert_eq!(usage.windows().len(), KEPT_WINDOWS);
        assert_eq!(usage.windows().last().unwrap().used, 5_000);
        assert_eq!(usage.windows().last().unwrap().limit, 5_000);
    }

    #[test]
    fn windows_handed_over_join_the_ones_seen_here() {
        let reset = 1_796_356_800_000;
        let mut before = Usage::new(10_000, 3_600);
        before.saw(9_000, None, reset);
        before.saw(8_000, None, reset + 3_600_000);
        let mut after = Usage::new(10_000, 3_600);
        after.saw(7_500, None, reset + 3_600_000 + 300);
        after.remember(&before.windows());
        assert_eq!(
            after
                .windows()
                .iter()
                .map(|w| (w.reset_ms, w.used))
                .collect::<Vec<_>>(),
            [(reset, 1_000), (reset + 3_600_000 + 300, 2_500)]
        );
    }
}
