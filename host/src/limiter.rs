//! Pacing under the API's request budget, per user.
//!
//! Two layers: a GCRA pacer (governor) sized from the component's declared
//! policy — the whole window's budget may be spent in a burst, then requests
//! flow at the steady rate — and a gate that the API's own signals close:
//! `X-RateLimit-Remaining: 0` closes it until the reported reset, a 429
//! closes it until the time the API gave. A rate-limited update is never
//! dropped; it waits.

use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::Duration;

use destination_types::{Budget, RateLimitPolicy};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::time::Instant;

/// How long to hold back after a 429 that named no time.
pub const DEFAULT_RATE_LIMIT_WAIT: Duration = Duration::from_secs(60);
/// The shortest wait after a 429: reset times have one-second resolution,
/// so a reset that seems to have passed may not have, and retrying at once
/// would hammer the API.
pub const MIN_RATE_LIMIT_WAIT: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
#[error("the component declares an unusable rate limit: {0}")]
pub struct PolicyError(String);

pub struct Limiter {
    pacer: DefaultDirectRateLimiter,
    /// No request may start before this instant.
    gate: Mutex<Option<Instant>>,
}

/// The longest wait a server time may impose; anything later is taken as
/// this (rate-limit windows are an hour at most for the APIs a sync
/// targets, so a sane reset is never further).
pub const MAX_SERVER_WAIT: Duration = Duration::from_secs(2 * 3_600);

/// Converts an epoch-milliseconds time to a tokio instant: the past is now,
/// the far future is capped at [`MAX_SERVER_WAIT`].
pub fn instant_at(epoch_ms: u64) -> Instant {
    let wait = Duration::from_millis(epoch_ms.saturating_sub(now_epoch_ms()));
    Instant::now() + wait.min(MAX_SERVER_WAIT)
}

pub use crate::clock::now_ms as now_epoch_ms;

impl Limiter {
    pub fn new(policy: &RateLimitPolicy) -> Result<Self, PolicyError> {
        let requests = NonZeroU32::new(policy.requests)
            .ok_or_else(|| PolicyError("0 requests per window".into()))?;
        if policy.window_seconds == 0 {
            return Err(PolicyError("a window of 0 seconds".into()));
        }
        let period = Duration::from_secs(u64::from(policy.window_seconds)) / requests.get();
        let quota = Quota::with_period(period.max(Duration::from_nanos(1)))
            .ok_or_else(|| PolicyError("a zero pacing period".into()))?
            .allow_burst(requests);
        Ok(Self {
            pacer: RateLimiter::direct(quota),
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
            self.pacer.until_ready().await;
            // The gate may have closed while we waited for the pacer.
            match self.gate() {
                Some(until) if until > Instant::now() => continue,
                _ => return,
            }
        }
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
            self.block_until(instant_at(reset));
        }
    }

    /// A 429: wait until the time the API named, else a default pause.
    pub fn rate_limited(&self, not_before_ms: Option<u64>) {
        let now = Instant::now();
        let until = match not_before_ms {
            Some(ms) => instant_at(ms).max(now + MIN_RATE_LIMIT_WAIT),
            None => now + DEFAULT_RATE_LIMIT_WAIT,
        };
        self.block_until(until);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(requests: u32, window_seconds: u32) -> RateLimitPolicy {
        RateLimitPolicy {
            requests,
            window_seconds,
            per: "user".into(),
        }
    }

    #[tokio::test]
    async fn burst_then_steady_rate() {
        let limiter = Limiter::new(&policy(10, 1)).unwrap();
        let start = Instant::now();
        for _ in 0..10 {
            limiter.acquire().await;
        }
        assert!(
            start.elapsed() < Duration::from_millis(50),
            "burst was paced"
        );
        for _ in 0..5 {
            limiter.acquire().await;
        }
        // 5 more at 10/s take about 0.5 s.
        let elapsed = start.elapsed();
        assert!(elapsed >= Duration::from_millis(450), "{elapsed:?}");
    }

    #[tokio::test]
    async fn remaining_zero_waits_for_the_reset() {
        let limiter = Limiter::new(&policy(1_000, 1)).unwrap();
        limiter.observe(&Budget {
            limit: Some(1_000),
            remaining: Some(0),
            reset_at_ms: Some(now_epoch_ms() + 300),
        });
        let start = Instant::now();
        limiter.acquire().await;
        assert!(start.elapsed() >= Duration::from_millis(250));
    }

    #[tokio::test]
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
        assert!(start.elapsed() < Duration::from_millis(200));
    }

    #[test]
    fn unusable_policies_are_refused() {
        assert!(Limiter::new(&policy(0, 3600)).is_err());
        assert!(Limiter::new(&policy(10, 0)).is_err());
    }
}
