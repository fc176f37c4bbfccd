//! Time, in one place. The host reads two clocks: the wall clock (epoch
//! milliseconds: journal rows, token expiry, the reset times an API names)
//! and tokio's monotonic clock (every wait: pacing, backoff, the stall
//! watch, the token mint interval).
//!
//! [`Clock::system`] is the real wall clock. [`Clock::starting_at`] is a
//! wall clock that starts at a given time and then advances with tokio's
//! clock, so a test that pauses tokio's time (`tokio::time::pause`, or
//! `#[tokio::test(start_paused = true)]`) moves both clocks at once and
//! waits out an hour-long window in no time, without sleeping.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

/// The longest wait a time named by a server may impose; anything later is
/// taken as this (rate-limit windows are an hour at most for the APIs a
/// sync targets, so a sane reset is never further).
pub const MAX_SERVER_WAIT: Duration = Duration::from_secs(2 * 3_600);

/// The host's clock (see the module documentation).
#[derive(Clone, Copy, Debug, Default)]
pub struct Clock {
    /// A wall time and the tokio instant it was read at; `None`: the
    /// system's wall clock.
    anchor: Option<(u64, Instant)>,
}

impl Clock {
    /// The system's wall clock.
    pub const fn system() -> Self {
        Self { anchor: None }
    }

    /// A wall clock reading `epoch_ms` now, advancing with tokio's clock.
    pub fn starting_at(epoch_ms: u64) -> Self {
        Self {
            anchor: Some((epoch_ms, Instant::now())),
        }
    }

    /// Milliseconds since the Unix epoch (0 before it).
    pub fn now_ms(&self) -> u64 {
        match self.anchor {
            None => system_ms(),
            Some((epoch_ms, at)) => {
                let since = Instant::now().saturating_duration_since(at);
                epoch_ms.saturating_add(u64::try_from(since.as_millis()).unwrap_or(u64::MAX))
            }
        }
    }

    /// Whole seconds since the Unix epoch.
    pub fn now_secs(&self) -> u64 {
        self.now_ms() / 1000
    }

    /// The monotonic instant the wall clock will read `epoch_ms`: the past
    /// is now, the far future is capped at [`MAX_SERVER_WAIT`].
    pub fn instant_at(&self, epoch_ms: u64) -> Instant {
        let wait = Duration::from_millis(epoch_ms.saturating_sub(self.now_ms()));
        Instant::now() + wait.min(MAX_SERVER_WAIT)
    }

    /// The monotonic instant of a wall time in the past (`None`: longer ago
    /// than the monotonic clock reaches).
    pub fn instant_of_past(&self, epoch_ms: u64) -> Option<Instant> {
        let age = Duration::from_millis(self.now_ms().saturating_sub(epoch_ms));
        Instant::now().checked_sub(age)
    }
}

fn system_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Milliseconds since the Unix epoch, by the system's wall clock.
pub fn now_ms() -> u64 {
    Clock::system().now_ms()
}

/// Whole seconds since the Unix epoch, by the system's wall clock.
pub fn now_secs() -> u64 {
    now_ms() / 1000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_started_clock_advances_with_tokio_time() {
        let clock = Clock::starting_at(1_000_000);
        assert_eq!(clock.now_ms(), 1_000_000);
        tokio::time::advance(Duration::from_secs(3_600)).await;
        assert_eq!(clock.now_ms(), 1_000_000 + 3_600_000);
        assert_eq!(clock.now_secs(), 1_000 + 3_600);
    }

    #[tokio::test(start_paused = true)]
    async fn server_times_become_instants_within_bounds() {
        let clock = Clock::starting_at(10_000_000);
        let now = Instant::now();
        assert_eq!(
            clock.instant_at(10_000_500),
            now + Duration::from_millis(500)
        );
        assert_eq!(clock.instant_at(0), now, "the past is now");
        assert_eq!(clock.instant_at(u64::MAX), now + MAX_SERVER_WAIT);
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(
            clock.instant_of_past(10_000_000),
            Some(Instant::now() - Duration::from_secs(10))
        );
    }

    #[test]
    fn the_system_clock_is_the_wall_clock() {
        let before = system_ms();
        let read = Clock::system().now_ms();
        assert!(read >= before && read < before + 60_000);
    }
}
