//! Pacing under the API's request budget, per user.
//!
//! Two layers: a GCRA pacer (governor) sized from the component's declared
//! policy — the whole window's budget may be spent in a burst, then requests
//! flow at the steady rate — and a gate that the API's own signals close:
//! `X-RateLimit-Remaining: 0` closes it until the reported reset, a 429
//! closes it until the time the API gave. A rate-limited update is never
//! dropped; it waits.
//!
//! Both layers wait on tokio's clock and read server times on the host's
//! [`Clock`], so their tests pause time instead of sleeping.

use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::Duration;

use destination_types::{Budget, RateLimitPolicy};
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use tokio::time::Instant;

use crate::clock::Clock;

/// How long to hold back after a 429 that named no time.
pub const DEFAULT_RATE_LIMIT_WAIT: Duration = Duration::from_secs(60);
/// The shortest wait after a 429: reset times have one-second resolution,
/// so a reset that seems to have passed may not have, and retrying at once
/// would hammer the API.
pub const MIN_RATE_LIMIT_WAIT: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
#[error("the component declares an unusable rate limit: {0}")]
pub struct PolicyError(String);

/// The pacer's time: tokio's monotonic clock, so paused test time paces too.
#[derive(Clone, Debug)]
struct TokioTime {
    origin: Instant,
}

impl governor::clock::Clock for TokioTime {
    type Instant = Duration;

    fn now(&self) -> Duration {
        Instant::now().saturating_duration_since(self.origin)
    }
}

type Pacer = RateLimiter<NotKeyed, InMemoryState, TokioTime, NoOpMiddleware<Duration>>;

pub struct Limiter {
    pacer: Pacer,
    time: TokioTime,
    clock: Clock,
    /// No request may start before this instant.
    gate: Mutex<Option<Instant>>,
}

impl Limiter {
    /// A limiter on the system clock.
    pub fn new(policy: &RateLimitPolicy) -> Result<Self, PolicyError> {
        Self::with_clock(policy, Clock::system())
    }

    /// A limiter that reads server times (resets) on `clock`.
    pub fn with_clock(policy: &RateLimitPolicy, clock: Clock) -> Result<Self, PolicyError> {
        let requests = NonZeroU32::new(policy.requests)
            .ok_or_else(|| PolicyError("0 requests per window".into()))?;
        if policy.window_seconds == 0 {
            return Err(PolicyError("a window of 0 seconds".into()));
        }
        let period = Duration::from_secs(u64::from(policy.window_seconds)) / requests.get();
        let quota = Quota::with_period(period.max(Duration::from_nanos(1)))
            .ok_or_else(|| PolicyError("a zero pacing period".into()))?
            .allow_burst(requests);
        let time = TokioTime {
            origin: Instant::now(),
        };
        Ok(Self {
            pacer: RateLimiter::direct_with_clock(quota, time.clone()),
            time,
            clock,
            gate: Mutex::new(None),
        })
    }

    fn gate(&self) -> Option<Instant> {
        *self.gate.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits until a request may be sent.
    pub async fn acquire(&self) {
        loop {
            if let Some(until) = self.gate()
                && until > Instant::now()
            {
                tokio::time::sleep_until(until).await;
                continue;
            }
            if let Err(not_until) = self.pacer.check() {
                use governor::clock::Clock as _;
                tokio::time::sleep(not_until.wait_time_from(self.time.now())).await;
                continue;
            }
            // The gate may have closed while we waited for the pacer.
            match self.gate() {
                Some(until) if until > Instant::now() => continue,
                _ => return,
            }
        }
    }

    /// Takes a permit if one is free now; `false` (nothing taken) if a
    /// request would have to wait.
    pub fn try_acquire(&self) -> bool {
        if self.gate().is_some_and(|until| until > Instant::now()) {
            return false;
        }
        self.pacer.check().is_ok()
    }

    /// Holds every request back until `until` (never shortens a wait).
    pub fn block_until(&self, until: Instant) {
        let mut gate = self.gate.lock().unwrap_or_else(|p| p.into_inner());
        if gate.is_none_or(|current| current < until) {
            *gate = Some(until);
        }
    }

    /// Takes the API's view of the budget into account.
    pub fn observe(&self, budget: &Budget) {
        if budget.remaining == Some(0)
            && let Some(reset) = budget.reset_at_ms
        {
            self.block_until(self.clock.instant_at(reset));
        }
    }

    /// A 429: wait until the time the API named, else a default pause.
    pub fn rate_limited(&self, not_before_ms: Option<u64>) {
        let now = Instant::now();
        let until = match not_before_ms {
            Some(ms) => self.clock.instant_at(ms).max(now + MIN_RATE_LIMIT_WAIT),
            None => now + DEFAULT_RATE_LIMIT_WAIT,
        };
        self.block_until(until);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::MAX_SERVER_WAIT;

    // Tokio's time is paused in these tests: waits are measured on the
    // clock the limiter uses, and nothing sleeps on the wall clock.

    fn policy(requests: u32, window_seconds: u32) -> RateLimitPolicy {
        RateLimitPolicy {
            requests,
            window_seconds,
            per: "user".into(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn burst_then_steady_rate() {
        let limiter = Limiter::new(&policy(10, 1)).unwrap();
        let start = Instant::now();
        for _ in 0..10 {
            limiter.acquire().await;
        }
        assert_eq!(start.elapsed(), Duration::ZERO, "the burst was paced");
        for _ in 0..5 {
            limiter.acquire().await;
        }
        // 5 more at 10/s take 0.5 s.
        let elapsed = start.elapsed();
        assert!(
            elapsed >= Duration::from_millis(500) && elapsed < Duration::from_millis(510),
            "{elapsed:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_hour_long_window_is_paced_over_the_hour() {
        let limiter = Limiter::new(&policy(10_000, 3_600)).unwrap();
        let start = Instant::now();
        for _ in 0..10_000 {
            limiter.acquire().await;
        }
        assert_eq!(start.elapsed(), Duration::ZERO);
        for _ in 0..100 {
            limiter.acquire().await;
        }
        // 100 more at 10,000 per hour: 36 s.
        let elapsed = start.elapsed();
        assert!(
            elapsed >= Duration::from_secs(36) && elapsed < Duration::from_millis(36_100),
            "{elapsed:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_permit_is_taken_without_waiting_only_when_one_is_free() {
        let limiter = Limiter::new(&policy(2, 1)).unwrap();
        assert!(limiter.try_acquire());
        assert!(limiter.try_acquire());
        assert!(!limiter.try_acquire(), "the burst is spent");
        tokio::time::advance(Duration::from_millis(500)).await;
        assert!(limiter.try_acquire(), "one more at the steady rate");
        assert!(!limiter.try_acquire());
        tokio::time::advance(Duration::from_secs(5)).await;
        limiter.block_until(Instant::now() + Duration::from_secs(1));
        assert!(!limiter.try_acquire(), "the gate is closed");
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(limiter.try_acquire());
    }

    #[tokio::test(start_paused = true)]
    async fn remaining_zero_waits_for_the_reset() {
        let clock = Clock::starting_at(1_700_000_000_000);
        let limiter = Limiter::with_clock(&policy(1_000, 1), clock).unwrap();
        limiter.observe(&Budget {
            limit: Some(1_000),
            remaining: Some(0),
            reset_at_ms: Some(clock.now_ms() + 300),
        });
        let start = Instant::now();
        limiter.acquire().await;
        assert_eq!(start.elapsed(), Duration::from_millis(300));
    }

    #[tokio::test(start_paused = true)]
    async fn a_429_waits_for_the_time_named_at_least_a_second_else_a_minute() {
        let clock = Clock::starting_at(1_700_000_000_000);
        let limiter = Limiter::with_clock(&policy(1_000, 1), clock).unwrap();
        limiter.rate_limited(Some(clock.now_ms() + 5_000));
        let start = Instant::now();
        limiter.acquire().await;
        assert_eq!(start.elapsed(), Duration::from_secs(5));

        // A reset that seems past still holds back for a second.
        limiter.rate_limited(Some(clock.now_ms() - 1_000));
        let start = Instant::now();
        limiter.acquire().await;
        assert_eq!(start.elapsed(), MIN_RATE_LIMIT_WAIT);

        limiter.rate_limited(None);
        let start = Instant::now();
        limiter.acquire().await;
        assert_eq!(start.elapsed(), DEFAULT_RATE_LIMIT_WAIT);

        // A reset days away is capped.
        limiter.rate_limited(Some(clock.now_ms() + 86_400_000 * 3));
        let start = Instant::now();
        limiter.acquire().await;
        assert_eq!(start.elapsed(), MAX_SERVER_WAIT);
    }

    #[tokio::test(start_paused = true)]
    async fn a_later_block_is_kept_and_a_shorter_one_ignored() {
        let limiter = Limiter::new(&policy(1_000, 1)).unwrap();
        let now = Instant::now();
        limiter.block_until(now + Duration::from_secs(10));
        limiter.block_until(now + Duration::from_secs(2));
        limiter.acquire().await;
        assert_eq!(now.elapsed(), Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn odd_budgets_do_not_block() {
        let limiter = Limiter::new(&policy(1_000, 1)).unwrap();
        for budget in [
            Budget::default(),
            Budget {
                remaining: Some(0),
                ..Budget::default()
            },
            Budget {
                remaining: Some(0),
                reset_at_ms: Some(0),
                limit: None,
            },
            Budget {
                remaining: Some(5),
                reset_at_ms: Some(u64::MAX),
                limit: Some(0),
            },
        ] {
            limiter.observe(&budget);
        }
        let start = Instant::now();
        limiter.acquire().await;
        assert_eq!(start.elapsed(), Duration::ZERO);
    }

    #[test]
    fn unusable_policies_are_refused() {
        assert!(Limiter::new(&policy(0, 3600)).is_err());
        assert!(Limiter::new(&policy(10, 0)).is_err());
    }
}
