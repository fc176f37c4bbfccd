//! Pacing under the API's request budget, per user.
//!
//! Three layers: a GCRA pacer (governor) sized from the component's
//! declared policy — the whole window's budget may be spent in a burst,
//! then requests flow at the steady rate; the budget the API reports
//! (`X-RateLimit-Remaining` until the reset), from which every request in
//! flight holds a place, so that requests already on their way when the
//! count reaches 0 do not meet a 429; and a gate a 429 closes until the
//! time the API gave. A rate-limited update is never dropped; it waits.
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

/// How often a request waiting behind a probe looks again.
const PROBE_POLL: Duration = Duration::from_millis(5);

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
    window: Mutex<Window>,
    /// Whose turn it is to wait for the next permit: one [`Line`] at a
    /// time, first come first served (tokio's mutex is fair).
    turns: tokio::sync::Mutex<()>,
    /// Until the API has reported the budget, one request at a time.
    probe_first: bool,
}

/// One sharer's place in line for a [`Limiter`] several sharers use (the
/// destinations of one API user): a sharer's requests queue behind
/// each other, and only its first waits for a turn at the limiter, so
/// busy sharers take turns (round-robin) however many requests each has
/// waiting.
#[derive(Debug, Default)]
pub struct Line(tokio::sync::Mutex<()>);

/// What the API last said of its current window, and the requests sent
/// that have no answer yet: those may already have been counted against
/// what it said, so they are reserved from it.
#[derive(Debug, Default)]
struct Window {
    /// Requests left, as reported, in the window that resets at this time
    /// (epoch ms).
    reported: Option<(u32, u64)>,
    in_flight: u32,
}

/// A request's place in the budget, from [`Limiter::acquire`] until its
/// answer was observed (or it failed): dropping it frees the place.
#[must_use = "the request's place in the budget ends when the permit is dropped"]
#[derive(Debug)]
pub struct Permit<'a> {
    window: &'a Mutex<Window>,
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        let mut window = self.window.lock().unwrap_or_else(|p| p.into_inner());
        window.in_flight = window.in_flight.saturating_sub(1);
    }
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
            window: Mutex::default(),
            turns: tokio::sync::Mutex::new(()),
            probe_first: false,
        })
    }

    /// Sends one request at a time until the API has reported what is
    /// left of the budget: for a budget others may have spent (a cluster
    /// worker taking an account over), whatever the pacer would allow.
    pub fn probing_first(mut self) -> Self {
        self.probe_first = true;
        self
    }

    /// What the API last reported: requests left and when the window
    /// resets (epoch ms), while that window lasts.
    pub fn reported(&self) -> Option<(u32, u64)> {
        self.window()
            .reported
            .filter(|&(_, reset_ms)| reset_ms > self.clock.now_ms())
    }

    /// [`Limiter::acquire`] for a sharer: waits behind the sharer's own
    /// earlier requests, then for its turn among the sharers.
    pub async fn acquire_in(&self, line: &Line) -> Permit<'_> {
        let _mine = line.0.lock().await;
        let _turn = self.turns.lock().await;
        self.acquire().await
    }

    /// [`Limiter::try_acquire`] for a sharer: `None` also when anyone is
    /// waiting in line (it would jump the queue).
    pub fn try_acquire_in(&self, line: &Line) -> Option<Permit<'_>> {
        let _mine = line.0.try_lock().ok()?;
        let _turn = self.turns.try_lock().ok()?;
        self.try_acquire()
    }

    /// Requests in flight holding a place, and what the API last reported
    /// as left in its window (for metrics).
    pub fn budget_view(&self) -> (u64, Option<u64>) {
        let window = self.window();
        (
            u64::from(window.in_flight),
            window
                .reported
                .filter(|&(_, reset_ms)| reset_ms > self.clock.now_ms())
                .map(|(remaining, _)| u64::from(remaining)),
        )
    }

    fn gate(&self) -> Option<Instant> {
        *self.gate.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn window(&self) -> std::sync::MutexGuard<'_, Window> {
        self.window.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether a probe is out and its answer awaited.
    fn probing(&self, window: &Window) -> bool {
        self.probe_first && window.reported.is_none() && window.in_flight > 0
    }

    /// When the budget the API reported is spent by the requests in flight:
    /// the reset to wait for.
    fn spent_until(&self, window: &Window) -> Option<Instant> {
        let (remaining, reset_ms) = window.reported?;
        let reset = self.clock.instant_at(reset_ms);
        (reset > Instant::now() && window.in_flight >= remaining).then_some(reset)
    }

    /// A place in the budget, if one is left.
    fn reserve(&self) -> Option<Permit<'_>> {
        let mut window = self.window();
        if self.spent_until(&window).is_some() || self.probing(&window) {
            return None;
        }
        window.in_flight += 1;
        Some(Permit {
            window: &self.window,
        })
    }

    /// Waits until a request may be sent; the permit is its place in the
    /// budget until it is dropped (after its answer was observed).
    pub async fn acquire(&self) -> Permit<'_> {
        loop {
            if let Some(until) = self.gate()
                && until > Instant::now()
            {
                tokio::time::sleep_until(until).await;
                continue;
            }
            let spent = self.spent_until(&self.window());
            if let Some(reset) = spent {
                tokio::time::sleep_until(reset).await;
                continue;
            }
            if let Err(not_until) = self.pacer.check() {
                use governor::clock::Clock as _;
                tokio::time::sleep(not_until.wait_time_from(self.time.now())).await;
                continue;
            }
            // The gate may have closed, or the budget been spent, while we
            // waited for the pacer.
            if self.gate().is_some_and(|until| until > Instant::now()) {
                continue;
            }
            if let Some(permit) = self.reserve() {
                return permit;
            }
            if self.probing(&self.window()) {
                // The probe's answer has no notification of its own.
                tokio::time::sleep(PROBE_POLL).await;
            }
        }
    }

    /// A permit if one is free now; `None` (nothing taken) if a request
    /// would have to wait.
    pub fn try_acquire(&self) -> Option<Permit<'_>> {
        if self.gate().is_some_and(|until| until > Instant::now())
            || self.spent_until(&self.window()).is_some()
        {
            return None;
        }
        self.pacer.check().ok()?;
        self.reserve()
    }

    /// Holds every request back until `until` (never shortens a wait).
    pub fn block_until(&self, until: Instant) {
        let mut gate = self.gate.lock().unwrap_or_else(|p| p.into_inner());
        if gate.is_none_or(|current| current < until) {
            *gate = Some(until);
        }
    }

    /// Takes the API's view of the budget into account: the requests left
    /// in the window are shared by those in flight and any new one; at the
    /// reset, requests flow again.
    pub fn observe(&self, budget: &Budget) {
        let (Some(remaining), Some(reset_ms)) = (budget.remaining, budget.reset_at_ms) else {
            return;
        };
        let mut window = self.window();
        window.reported = match window.reported {
            // Answers come back out of order: the lowest count is the newest.
            Some((known, at)) if at == reset_ms => Some((known.min(remaining), at)),
            // An answer from a window already over.
            Some((known, at)) if at > reset_ms => Some((known, at)),
            _ => Some((remaining, reset_ms)),
        };
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
mod tests;
