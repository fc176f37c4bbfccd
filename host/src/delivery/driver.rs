//! The one delivery driver: workers that take updates from a work queue
//! and send them under the account's limiter with retries (`dispatch.rs`),
//! stopped or wound down through their [`Handle`], and — for a delivery
//! that runs for as long as its owner does — paused when they stop (a
//! login needed, the queue failing) and started again
//! ([`Driver::supervise`]). The single run, a service's destination and a
//! cluster's lane each build one and call it.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::Credentials;
use super::control::Control;
use super::dispatch::{Counters, Dispatcher};
use super::retry::Policy;
use crate::clock::Clock;
use crate::guest::Guest;
use crate::http::ApiClient;
use crate::journal::RunStats;
use crate::limiter::{Limiter, Line};
use crate::queue::RunId;
use crate::queue::WorkQueue;

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// The outside's hold on a delivery: what it counted, when it last reached
/// a verdict, the run its verdicts count in, and the means to stop it. It
/// outlives the workers' restarts (each start gets a fresh stop).
pub struct Handle {
    control: Mutex<Arc<Control>>,
    pub(super) counters: Counters,
    pub(super) run: AtomicI64,
    /// No more input will be queued: idle workers end instead of waiting.
    pub(super) input_ended: AtomicBool,
    pub(super) last_verdict_ms: AtomicU64,
    /// This delivery's place among its limiter's sharers.
    pub(super) line: Line,
    /// Who sends a request recalling each fact not known yet.
    pub(super) recalling: Recalling,
}

/// One request at a time per fact not known yet: two deliveries waiting
/// for the same object (two records of one company whose account is not
/// known) would otherwise both look it up and both create it. The second
/// waits for the first's answer, then usually finds the fact remembered.
#[derive(Default)]
pub(super) struct Recalling(Mutex<std::collections::HashMap<String, Arc<tokio::sync::Mutex<()>>>>);

impl Recalling {
    /// Waits for the turn to send a request recalling `name`; the turn
    /// lasts until what its answer taught is stored. Never waited for
    /// while holding a place in the rate budget: the turn's holder may
    /// need that place (a window's first request, which the others wait
    /// for, above all).
    pub(super) async fn turn(&self, name: &str) -> RecallTurn<'_> {
        let entry = lock(&self.0).entry(name.to_owned()).or_default().clone();
        let guard = entry.lock_owned().await;
        self.held(name, guard)
    }

    /// The turn for `name` if nobody holds it.
    pub(super) fn try_turn(&self, name: &str) -> Option<RecallTurn<'_>> {
        let entry = lock(&self.0).entry(name.to_owned()).or_default().clone();
        // Held by someone else, the name stays theirs to tidy up.
        entry
            .try_lock_owned()
            .ok()
            .map(|guard| self.held(name, guard))
    }

    fn held(&self, name: &str, guard: tokio::sync::OwnedMutexGuard<()>) -> RecallTurn<'_> {
        RecallTurn {
            recalling: self,
            name: name.to_owned(),
            guard: Some(guard),
        }
    }
}

/// A turn to send a request recalling one fact.
pub(super) struct RecallTurn<'a> {
    recalling: &'a Recalling,
    name: String,
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl RecallTurn<'_> {
    pub(super) fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for RecallTurn<'_> {
    fn drop(&mut self) {
        drop(self.guard.take());
        let mut map = lock(&self.recalling.0);
        // Nobody waits for it any more: forget the name.
        if map
            .get(&self.name)
            .is_some_and(|m| Arc::strong_count(m) == 1)
        {
            map.remove(&self.name);
        }
    }
}

impl Handle {
    /// A delivery whose verdicts count in `run`, started at `now_ms`.
    pub fn new(run: RunId, now_ms: u64) -> Self {
        Self {
            control: Mutex::default(),
            counters: Counters::default(),
            run: AtomicI64::new(run),
            input_ended: AtomicBool::new(false),
            last_verdict_ms: AtomicU64::new(now_ms),
            line: Line::default(),
            recalling: Recalling::default(),
        }
    }

    pub(super) fn control(&self) -> Arc<Control> {
        lock(&self.control).clone()
    }

    /// A fresh stop for the workers about to start.
    fn restart(&self) -> Arc<Control> {
        let control = Arc::new(Control::default());
        *lock(&self.control) = control.clone();
        control
    }

    /// Something was queued: idle workers look again.
    pub fn wake(&self) {
        self.control().work_available.notify_waiters();
    }

    /// Workers finish the updates they hold and take nothing new.
    pub fn wind_down(&self) {
        self.control().wind_down();
    }

    /// Every request stops now (those on the wire are abandoned; their
    /// updates stay queued).
    pub fn interrupt(&self) {
        self.control().interrupt();
    }

    /// The workers end once nothing is left to take.
    pub fn input_ended(&self) {
        self.input_ended.store(true, Ordering::Release);
        self.wake();
    }

    /// Verdicts from now on count in `run`.
    pub fn count_in(&self, run: RunId) {
        self.run.store(run, Ordering::Relaxed);
    }

    pub fn run(&self) -> RunId {
        self.run.load(Ordering::Relaxed)
    }

    pub fn last_verdict_ms(&self) -> u64 {
        self.last_verdict_ms.load(Ordering::Relaxed)
    }

    /// The requests counted so far.
    pub fn requests(&self) -> RunStats {
        let counters = &self.counters;
        RunStats {
            requests_sent: counters.requests_sent.load(Ordering::Relaxed),
            lookups_sent: counters.lookups_sent.load(Ordering::Relaxed),
            creates_sent: counters.creates_sent.load(Ordering::Relaxed),
            rate_limited: counters.rate_limited.load(Ordering::Relaxed),
            retries: counters.retries.load(Ordering::Relaxed),
            credential_refreshes: counters.refreshes.load(Ordering::Relaxed),
        }
    }

    /// Why the workers last stopped, if they did.
    pub fn stopped(&self) -> Option<String> {
        self.control().stopped()
    }

    /// Whether a signal stopped the workers.
    pub fn interrupted(&self) -> bool {
        self.control().interrupted()
    }

    /// Whether the workers stopped because the account needs a login.
    pub fn login_required(&self) -> bool {
        self.control().login_required()
    }
}

/// Whether a long-running delivery's workers should (re)start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Standing {
    Go,
    /// Start, finish what is held, take nothing new, then end.
    WindDown,
    /// End without starting.
    Stop,
}

/// What a long-running delivery asks of its owner around its workers'
/// restarts ([`Driver::supervise`]).
pub trait Supervisor {
    fn standing(&self) -> Standing;
    /// The workers stopped for `why` (`login_required`: the account needs
    /// a new login); they start again after the pause unless woken first.
    fn paused(&self, why: &str, login_required: bool);
    /// They start again.
    fn resumed(&self) {}
    /// Completes when the workers should not wait out the pause (the
    /// delivery is ending).
    fn woken(&self) -> impl Future<Output = ()>;
}

/// One delivery: everything its workers use.
pub struct Driver<'a, C, Q> {
    pub api: &'a ApiClient,
    pub limiter: &'a Limiter,
    pub credentials: &'a C,
    pub guest: &'a Guest,
    pub queue: &'a Q,
    pub policy: Policy,
    /// Requests in flight at once.
    pub concurrency: usize,
    pub clock: Clock,
    pub handle: &'a Handle,
    pub progress: Option<&'a indicatif::ProgressBar>,
}

impl<C: Credentials, Q: WorkQueue> Driver<'_, C, Q> {
    /// Runs the workers until they end: nothing left to take once the
    /// input ended, or a stop.
    pub async fn work(&self) {
        self.run_workers(&self.handle.control()).await;
    }

    async fn run_workers(&self, control: &Control) {
        let dispatcher = Dispatcher {
            driver: self,
            control,
        };
        futures::future::join_all((0..self.concurrency.max(1)).map(|_| dispatcher.work())).await;
        self.queue.release_ahead().await;
    }

    /// Runs the workers for as long as `supervisor` stands; whenever they
    /// stop for another reason, pauses for `restart_after` and starts them
    /// again. Returns once no credential work is in flight.
    pub async fn supervise(&self, supervisor: &impl Supervisor, restart_after: Duration) {
        loop {
            let control = self.handle.restart();
            match supervisor.standing() {
                Standing::Stop => break,
                Standing::WindDown => control.wind_down(),
                Standing::Go => {}
            }
            self.run_workers(&control).await;
            if supervisor.standing() != Standing::Go {
                break;
            }
            let why = control
                .stopped()
                .unwrap_or_else(|| "the workers ended".into());
            supervisor.paused(&why, control.login_required());
            let woken = supervisor.woken();
            tokio::pin!(woken);
            // Polled once, it hears an end that comes from now on.
            let woken_already = futures::poll!(woken.as_mut()).is_ready();
            if supervisor.standing() != Standing::Go {
                break;
            }
            if !woken_already {
                tokio::select! {
                    () = tokio::time::sleep(restart_after) => {}
                    () = woken => {}
                }
            }
            supervisor.resumed();
        }
        self.credentials.settle().await;
    }
}
