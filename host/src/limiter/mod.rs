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
//! **Turns of the window.** The reset an API names is only approximately
//! when its window turns: APIs write it in whole seconds (a server
//! may round down), and the server's clock is not ours. So a report stays
//! authoritative until an answer names a later reset, and once it is
//! spent, the reset only lets **one** request go (a probe); the others
//! wait for its answer. If the answer names a new window, they follow its
//! `X-RateLimit-Remaining`; if the window had not turned (a 429), the
//! probe is tried again after the 429's wait, and the limiter remembers
//! how late after its named reset the API's window turned, so the next
//! turn's probe waits that long too: at most one 429 per window however
//! the reset is rounded or the clocks disagree. Before the API has
//! reported anything (a start, a restart, a new owner of the account) the
//! first request is a probe as well: the window may already be spent.
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

mod usage;
pub use usage::WindowUse;

/// How long to hold back after a 429 that named no time.
pub const DEFAULT_RATE_LIMIT_WAIT: Duration = Duration::from_secs(60);
/// The shortest wait after a 429: reset times have one-second resolution,
/// so a reset that seems to have passed may not have, and retrying at once
/// would hammer the API.
pub const MIN_RATE_LIMIT_WAIT: Duration = Duration::from_secs(1);

/// The most a window's turn may be learned to lag behind its named reset:
/// a longer lag is a server whose clock is broken, not skewed, and its
/// 429s then say when to come back.
const MAX_TURN_LAG_MS: u64 = 60_000;

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
    /// Told whenever a place may have come free (an answer observed, a
    /// permit dropped), so a spent budget is looked at again at once
    /// rather than at its reset.
    changed: tokio::sync::Notify,
    /// What each window used, as the API told it.
    usage: Mutex<usage::Usage>,
    policy: RateLimitPolicy,
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
    /// (epoch ms). It holds until an answer names a later reset.
    reported: Option<(u32, u64)>,
    in_flight: u32,
    /// The probe on its way, if one is.
    probe: Option<Probe>,
    /// How long after its named reset the API's window was last seen to
    /// turn (rounding, clock skew): the next turn's probe waits this long.
    turn_lag_ms: u64,
    /// The API answered without reporting a budget: there is nothing to
    /// probe for until it does.
    unreported: bool,
}

/// A request sent to learn whether the window turned (or, with no report
/// yet, what is left of it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Probe {
    sent_ms: u64,
    /// The reset of the spent window it probes; `None` before any report.
    after_reset_ms: Option<u64>,
}

/// What the reported budget allows now.
enum Turn {
    /// A place is free.
    Free,
    /// The budget is spent until this instant (its reset, plus the lag).
    SpentUntil(Instant),
    /// The budget is spent and the window may have turned: one request
    /// may go to find out.
    Probe(Option<u64>),
    /// A probe is out: wait for its answer.
    AwaitProbe,
}

/// A request's place in the budget, from [`Limiter::acquire`] until its
/// answer was observed (or it failed): dropping it frees the place.
#[must_use = "the request's place in the budget ends when the permit is dropped"]
pub struct Permit<'a> {
    limiter: &'a Limiter,
    probe: Option<Probe>,
}

impl std::fmt::Debug for Permit<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Permit")
            .field("probe", &self.probe)
            .finish()
    }
}

impl Permit<'_> {
    /// Takes the answer's view of the budget into account (see
    /// [`Limiter::observe`]); an answer to a probe also tells whether the
    /// window had turned when it was sent.
    pub fn observe(&self, budget: &Budget) {
        self.limiter.observe_answer(budget, self.probe);
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        {
            let mut window = self.limiter.window();
            window.in_flight = window.in_flight.saturating_sub(1);
            if self.probe.is_some() && window.probe == self.probe {
                window.probe = None;
            }
        }
        self.limiter.changed.notify_waiters();
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
            changed: tokio::sync::Notify::new(),
            usage: Mutex::new(usage::Usage::new(policy.requests, policy.window_seconds)),
            policy: policy.clone(),
        })
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

    /// The budget it paces under.
    pub fn policy(&self) -> &RateLimitPolicy {
        &self.policy
    }

    /// The budget each recent window used, as the API told it, oldest first.
    pub fn windows_used(&self) -> Vec<WindowUse> {
        self.usage
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .windows()
    }

    /// Takes in the windows another limiter of the same account saw (a
    /// cluster's previous owner).
    pub fn remember_windows(&self, windows: &[WindowUse]) {
        self.usage
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remember(windows);
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

    /// What the reported budget allows now.
    fn turn(&self, window: &Window) -> Turn {
        let probe_or_wait = |after_reset_ms| {
            if window.probe.is_some() {
                Turn::AwaitProbe
            } else {
                Turn::Probe(after_reset_ms)
            }
        };
        match window.reported {
            None if window.unreported => Turn::Free,
            None => probe_or_wait(None),
            Some((remaining, _)) if window.in_flight < remaining => Turn::Free,
            Some((_, reset_ms)) => {
                let turned = self
                    .clock
                    .instant_at(reset_ms.saturating_add(window.turn_lag_ms));
                if turned > Instant::now() {
                    Turn::SpentUntil(turned)
                } else {
                    probe_or_wait(Some(reset_ms))
                }
            }
        }
    }

    /// A place in the budget, if one is left.
    fn reserve(&self) -> Option<Permit<'_>> {
        let mut window = self.window();
        let probe = match self.turn(&window) {
            Turn::Free => None,
            Turn::Probe(after_reset_ms) => Some(Probe {
                sent_ms: self.clock.now_ms(),
                after_reset_ms,
            }),
            Turn::SpentUntil(_) | Turn::AwaitProbe => return None,
        };
        window.in_flight += 1;
        window.probe = probe.or(window.probe);
        Some(Permit {
            limiter: self,
            probe,
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
            // Registered before looking, so a change after the look wakes it.
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let turn = self.turn(&self.window());
            match turn {
                Turn::SpentUntil(turned) => {
                    tokio::select! {
                        () = tokio::time::sleep_until(turned) => {}
                        () = changed => {}
                    }
                    continue;
                }
                Turn::AwaitProbe => {
                    changed.await;
                    continue;
                }
                Turn::Free | Turn::Probe(_) => {}
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
        }
    }

    /// A permit if one is free now; `None` (nothing taken) if a request
    /// would have to wait.
    pub fn try_acquire(&self) -> Option<Permit<'_>> {
        if self.gate().is_some_and(|until| until > Instant::now())
            || matches!(
                self.turn(&self.window()),
                Turn::SpentUntil(_) | Turn::AwaitProbe
            )
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
    /// in the window are shared by those in flight and any new one; a
    /// later reset is a new window. (An answer to a request sent with a
    /// [`Permit`] goes through [`Permit::observe`].)
    pub fn observe(&self, budget: &Budget) {
        self.observe_answer(budget, None);
    }

    fn observe_answer(&self, budget: &Budget, probe: Option<Probe>) {
        self.record_answer(budget, probe);
        self.changed.notify_waiters();
    }

    fn record_answer(&self, budget: &Budget, probe: Option<Probe>) {
        if let (Some(remaining), Some(reset_ms)) = (budget.remaining, budget.reset_at_ms) {
            self.usage.lock().unwrap_or_else(|p| p.into_inner()).saw(
                remaining,
                budget.limit,
                reset_ms,
            );
        }
        let mut window = self.window();
        let (Some(remaining), Some(reset_ms)) = (budget.remaining, budget.reset_at_ms) else {
            if probe.is_some_and(|p| p.after_reset_ms.is_none()) && window.reported.is_none() {
                window.unreported = true;
            }
            return;
        };
        let known = window.reported;
        window.reported = match known {
            // Answers come back out of order: the lowest count is the newest.
            Some((count, at)) if at == reset_ms => Some((count.min(remaining), at)),
            // An answer from a window already over.
            Some((count, at)) if at > reset_ms => Some((count, at)),
            _ => Some((remaining, reset_ms)),
        };
        let Some(Probe {
            sent_ms,
            after_reset_ms: Some(probed),
        }) = probe
        else {
            return;
        };
        let late_by = sent_ms.saturating_sub(probed);
        window.turn_lag_ms = if reset_ms > probed {
            // The window had turned when the probe was sent: it turns no
            // later than that after its named reset.
            window.turn_lag_ms.min(late_by)
        } else {
            // Not yet: the next turn's probe goes no earlier than this
            // one's retry would.
            let retry_ms = u64::try_from(MIN_RATE_LIMIT_WAIT.as_millis()).unwrap_or(u64::MAX);
            window
                .turn_lag_ms
                .max(late_by.saturating_add(retry_ms))
                .min(MAX_TURN_LAG_MS)
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
