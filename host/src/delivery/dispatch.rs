//! The workers: each takes the next update the queue hands out (a key's
//! updates come in order, one at a time), sends it under the rate limiter,
//! and acts on every answer as the retry state machine ([`super::retry`])
//! says, until nothing is left to take.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use destination_types::{Purpose, Request};
use rand::Rng;

use crate::queue::WorkQueue;
use crate::queue::{Attempt, Disposition, Learned, RunId};

use super::Credentials;
use super::control::Control;
use super::driver::{Driver, RecallTurn};
use super::retry::{Action, Attempts, Event};

/// What to send after recalling.
enum Recalled {
    Send(Request),
    /// Another delivery seeks the same unknown fact: wait for its turn.
    Busy(String),
}

/// How many times a request may be replaced by what a remembered fact
/// makes of it before it is sent (the contract's bound).
const MAX_RECALLS: usize = 8;

/// What the workers counted.
#[derive(Default)]
pub(crate) struct Counters {
    /// Every request sent, whatever it did.
    pub requests_sent: AtomicU64,
    /// Of those, the steps a delivery took before its update: lookups
    /// and creates.
    pub lookups_sent: AtomicU64,
    pub creates_sent: AtomicU64,
    pub rate_limited: AtomicU64,
    pub retries: AtomicU64,
    pub refreshes: AtomicU64,
}

impl Counters {
    fn sent(&self, purpose: Purpose) {
        self.requests_sent.fetch_add(1, Ordering::Relaxed);
        match purpose {
            Purpose::Update => {}
            Purpose::Lookup => {
                self.lookups_sent.fetch_add(1, Ordering::Relaxed);
            }
            Purpose::Create => {
                self.creates_sent.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// A worker's view of its driver, with the stop of the workers' current
/// start.
pub(super) struct Dispatcher<'a, C, Q> {
    pub driver: &'a Driver<'a, C, Q>,
    pub control: &'a Control,
}

impl<C: Credentials, Q: WorkQueue> Dispatcher<'_, C, Q> {
    fn run(&self) -> RunId {
        self.driver.handle.run.load(Ordering::Relaxed)
    }

    /// Takes queued keys one at a time until the input is exhausted and
    /// nothing is left to take, or the run stops.
    pub async fn work(&self) {
        loop {
            if self.control.stopped().is_some() || self.control.winding_down() {
                return;
            }
            let woken = self.control.work_available.notified();
            let done_before = self.driver.handle.input_ended.load(Ordering::Acquire);
            match self.driver.queue.take(self.run()).await {
                Ok(Some(attempt)) => {
                    if !self.work_on(attempt).await {
                        return;
                    }
                }
                Ok(None) if done_before => return,
                Ok(None) => {
                    let _ = tokio::time::timeout(Duration::from_millis(200), woken).await;
                }
                Err(e) => {
                    self.control.stop_run(format!("the journal failed: {e}"));
                    return;
                }
            }
        }
    }

    /// Delivers one update and hands its verdict over; `false` when the
    /// run stopped.
    async fn work_on(&self, attempt: Attempt) -> bool {
        let claim = attempt.claim.clone();
        let Some(verdict) = self.deliver(attempt).await else {
            self.driver.queue.release(claim).await;
            return false;
        };
        let handed = self
            .driver
            .queue
            .finish(claim.clone(), verdict, self.run())
            .await;
        self.driver
            .handle
            .last_verdict_ms
            .store(self.driver.clock.now_ms(), Ordering::Relaxed);
        if let Some(bar) = self.driver.progress {
            bar.inc(1);
        }
        if let Err(e) = handed {
            self.driver.queue.release(claim).await;
            self.control.stop_run(format!("the journal failed: {e}"));
            return false;
        }
        true
    }

    /// `request`, or what the component makes of it once the fact it
    /// recalls is known (repeated while the answer recalls another known
    /// fact, up to [`MAX_RECALLS`] times). When it seeks a fact not known
    /// yet, `turn` holds the turn to send it (kept if it already was that
    /// fact's; [`Recalled::Busy`] when another delivery holds it);
    /// otherwise `turn` is let go.
    async fn recalled<'d>(
        &'d self,
        mut request: Request,
        turn: &mut Option<RecallTurn<'d>>,
    ) -> Result<Recalled, String> {
        for _ in 0..MAX_RECALLS {
            let Some(name) = request.recall.clone() else {
                break;
            };
            if turn.as_ref().is_none_or(|held| held.name() != name) {
                // Two turns are never held.
                *turn = None;
                match self.driver.handle.recalling.try_turn(&name) {
                    Some(taken) => *turn = Some(taken),
                    None => return Ok(Recalled::Busy(name)),
                }
            }
            let value = match self.driver.queue.recall(name).await {
                Ok(Some(value)) => value,
                Ok(None) => return Ok(Recalled::Send(request)),
                Err(e) => return Err(format!("the journal failed: {e}")),
            };
            *turn = None;
            request = self
                .driver
                .guest
                .recall(&request, &value)
                .await
                .map_err(|e| format!("the component failed to recall a fact: {e}"))?;
        }
        *turn = None;
        Ok(Recalled::Send(request))
    }

    /// Sends the attempt's request until it has a verdict; `None` when the
    /// run stopped first. Whenever it has to wait (for the limiter, a
    /// retry, a refresh) the attempt is let go of, so newer updates merge
    /// into it, and it is started again (re-read) before it is sent.
    async fn deliver(&self, attempt: Attempt) -> Option<Disposition> {
        let Attempt { claim, request } = attempt;
        let mut on_the_wire = Some(request);
        let mut attempts = Attempts::default();
        // The turn to seek a fact not known yet, kept from one step to the
        // next that seeks the same fact (a lookup that found nothing, then
        // the create), so no other delivery seeks it in between.
        let mut turn: Option<RecallTurn<'_>> = None;
        loop {
            // A stop lets the claim go (the caller releases it).
            if self.control.stopped().is_some() {
                return None;
            }
            let token = match self
                .control
                .unless_stopped(self.driver.credentials.token())
                .await?
            {
                Ok(token) => token,
                Err(why) => {
                    self.control.stop_for_login(why);
                    return None;
                }
            };
            let ready = match on_the_wire.take() {
                Some(request) => match self.driver.limiter.try_acquire_in(&self.driver.handle.line)
                {
                    Some(permit) => Some((request, permit)),
                    None => {
                        self.driver.queue.attempt_failed(claim.clone()).await;
                        None
                    }
                },
                None => None,
            };
            // The permit holds the request's place in the budget until its
            // answer was observed.
            let (request, permit) = match ready {
                Some(ready) => ready,
                None => {
                    let permit = self
                        .control
                        .unless_stopped(self.driver.limiter.acquire_in(&self.driver.handle.line))
                        .await?;
                    match self.driver.queue.attempt(claim.clone(), self.run()).await {
                        Ok(request) => (request, permit),
                        Err(e) => {
                            self.control.stop_run(format!("the journal failed: {e}"));
                            return None;
                        }
                    }
                }
            };
            // What the destination remembers may stand in for a step; a
            // fact not known yet is sought by one request at a time.
            let Some(recalled) = self
                .control
                .unless_stopped(self.recalled(request, &mut turn))
                .await
            else {
                self.driver.queue.attempt_failed(claim.clone()).await;
                return None;
            };
            let request = match recalled {
                Ok(Recalled::Send(request)) => request,
                Ok(Recalled::Busy(name)) => {
                    // Waited for without a place in the budget (the turn's
                    // holder may need it), then this request starts again.
                    drop(permit);
                    self.driver.queue.attempt_failed(claim.clone()).await;
                    turn = Some(
                        self.control
                            .unless_stopped(self.driver.handle.recalling.turn(&name))
                            .await?,
                    );
                    continue;
                }
                Err(why) => {
                    self.driver.queue.attempt_failed(claim.clone()).await;
                    self.control.stop_run(why);
                    return None;
                }
            };
            self.driver.handle.counters.sent(request.purpose);
            // Stopping abandons a request on the wire: it stays queued, and
            // is sent again (at-least-once).
            let Some(sent) = self
                .control
                .unless_stopped(self.driver.api.send(&request, &token))
                .await
            else {
                self.driver.queue.attempt_failed(claim.clone()).await;
                return None;
            };
            let mut learned = Learned::default();
            let (event, response) = match sent {
                Err(violation) => (Event::Refused(violation.to_string()), None),
                Ok(Err(transport)) => {
                    tracing::debug!(key = %request.key, "transport failure: {transport}");
                    (Event::Transport(transport.to_string()), None)
                }
                Ok(Ok(response)) => {
                    match self
                        .driver
                        .guest
                        .classify(&request, &response, self.driver.clock.now_ms())
                        .await
                    {
                        Ok(classification) => {
                            permit.observe(&classification.budget);
                            learned = Learned {
                                remember: classification.remember,
                                forget: classification.forget,
                            };
                            let event = Event::Classified {
                                verdict: classification.verdict,
                                status: response.status,
                            };
                            (event, Some(response))
                        }
                        Err(e) => (Event::Unclassifiable(e.to_string()), Some(response)),
                    }
                }
            };
            drop(permit);
            let jitter = rand::rng().random_range(0.5..=1.0);
            let action = attempts.next(
                &self.driver.policy,
                event,
                &request,
                response,
                self.driver.clock.now_ms(),
                jitter,
            );
            if let Action::Finish(verdict) = action {
                if let Err(e) = self.driver.queue.learn(learned).await {
                    self.control.stop_run(format!("the journal failed: {e}"));
                    return None;
                }
                return Some(verdict);
            }
            if let Action::Continue(next) = action {
                if let Err(e) = self
                    .driver
                    .queue
                    .step(claim.clone(), (*next).clone(), learned)
                    .await
                {
                    self.control.stop_run(format!("the journal failed: {e}"));
                    return None;
                }
                on_the_wire = Some(*next);
                continue;
            }
            self.driver.queue.attempt_failed(claim.clone()).await;
            match action {
                Action::Finish(_) | Action::Continue(_) => unreachable!("handled above"),
                Action::RetryAfter(wait) => {
                    self.driver
                        .handle
                        .counters
                        .retries
                        .fetch_add(1, Ordering::Relaxed);
                    self.control.unless_stopped(tokio::time::sleep(wait)).await;
                }
                Action::RateLimited { reset_at_ms } => {
                    self.driver
                        .handle
                        .counters
                        .rate_limited
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::info!(key = %request.key, "rate limited");
                    self.driver.limiter.rate_limited(reset_at_ms);
                }
                Action::Refresh => {
                    self.driver
                        .handle
                        .counters
                        .refreshes
                        .fetch_add(1, Ordering::Relaxed);
                    // A stop cancels the wait for the mint interval (no
                    // token is minted then); an exchange already under way
                    // finishes on its own and is waited for at the end.
                    let refreshed = self
                        .control
                        .unless_stopped(self.driver.credentials.refresh(&token))
                        .await?;
                    if let Err(why) = refreshed {
                        self.control
                            .stop_for_login(format!("credentials cannot be refreshed: {why}"));
                    }
                }
                Action::StopForLogin(why) => self.control.stop_for_login(why),
                Action::Stop(why) => self.control.stop_run(why),
            }
        }
    }
}
