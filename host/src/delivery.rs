//! A delivery run: NDJSON records in, planned by the component and
//! journaled ([`crate::journal`]), sent under the rate limiter with
//! retries, every outcome accounted for — delivered, skipped, or a dead
//! letter with its reason. Updates for the same key go in order (newer ones
//! merging into a queued one); different keys go concurrently.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use destination_types::{PlanOutcome, RecordError, RecordFate, Request, Verdict as ApiVerdict};
use rand::Rng;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::{Notify, mpsc};

use crate::alerts::{Alert, AlertKind, Alerts};
use crate::engine::Destination;
use crate::http::ApiClient;
pub use crate::input::Input;
use crate::input::{InputError, InputInfo, Item};
use crate::journal::{
    Claim, Counts, HeldBack, Incoming, Journal, JournalError, LetterFilter, RunId, RunStats,
    Verdict,
};
use crate::limiter::{Limiter, now_epoch_ms};

/// Supplies the bearer token. A refresh is asked for once after a 401.
/// Errors are messages for the user (never containing a secret); they stop
/// the run.
pub trait Credentials {
    /// The access token to send now (refreshed first if it is about to
    /// expire).
    fn token(&self) -> impl Future<Output = Result<String, String>>;
    /// The API refused `rejected`: obtain a new token, unless another
    /// request already did.
    fn refresh(&self, rejected: &str) -> impl Future<Output = Result<(), String>>;
    /// Completes once no credential work that must not be cut short (a
    /// refresh whose new tokens are being stored) is in flight; a run
    /// waits for it before it returns.
    fn settle(&self) -> impl Future<Output = ()> {
        std::future::ready(())
    }
}

/// A fixed token (from the environment); a refresh cannot produce a new one.
pub struct StaticToken(pub String);

impl Credentials for StaticToken {
    async fn token(&self) -> Result<String, String> {
        Ok(self.0.clone())
    }
    async fn refresh(&self, _rejected: &str) -> Result<(), String> {
        Ok(())
    }
}

/// Tuning of a run.
#[derive(Clone)]
pub struct DeliveryOptions {
    /// Requests in flight at once.
    pub concurrency: usize,
    /// Attempts per request for transient failures (5xx, timeouts,
    /// connection errors) before it becomes a dead letter. 429s do not count.
    pub max_attempts: u32,
    /// First retry delay; doubles per attempt, with jitter.
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// Most records per call into the component (and per journal
    /// transaction).
    pub batch: usize,
    /// The journal to deliver through; `None` uses one in memory (nothing
    /// survives the process).
    pub journal: Option<Arc<Journal>>,
    /// Also export this run's dead letters to this file (NDJSON).
    pub dead_letters: Option<PathBuf>,
    /// Show a progress bar (only honoured on a terminal).
    pub progress: bool,
    /// How the run is recorded in the history: `run`, `replay`, `demo`.
    pub kind: String,
    /// The destination's name, for the history and alerts.
    pub destination: String,
    pub alerts: Arc<Alerts>,
    /// Stop cleanly on SIGINT/SIGTERM: journal what was read, stop sending,
    /// keep everything else queued (the command line sets this).
    pub stop_on_signals: bool,
}

impl Default for DeliveryOptions {
    fn default() -> Self {
        Self {
            concurrency: 16,
            max_attempts: 6,
            backoff_base: Duration::from_millis(250),
            backoff_max: Duration::from_secs(30),
            batch: 500,
            journal: None,
            dead_letters: None,
            progress: false,
            kind: "run".into(),
            destination: String::new(),
            alerts: Arc::new(Alerts::none()),
            stop_on_signals: false,
        }
    }
}

/// Counts for one audience.
pub type AudienceCounts = Counts;

/// The end-of-run report. Counts concern the records this run received;
/// updates it took over from earlier runs are credited to those runs (see
/// `runs show`).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Summary {
    /// The run's id in the journal's history.
    pub run: RunId,
    /// Input records (non-blank lines).
    pub received: u64,
    pub delivered: u64,
    /// Records refused: invalid records, requests the API rejected, requests
    /// that exhausted their retries.
    pub rejected: u64,
    /// Records with nothing to write, or without a usable prospect id.
    pub skipped: u64,
    /// Records still queued in the journal because the run stopped (see
    /// `fatal`); the next run sends them.
    pub not_sent: u64,
    pub audiences: BTreeMap<String, AudienceCounts>,
    /// Failed and skipped records per reason code.
    pub failures: BTreeMap<String, u64>,
    /// Records merged into an update already queued for the same prospect.
    pub coalesced: u64,
    /// Updates (after coalescing) that landed.
    pub updates_delivered: u64,
    /// Records left queued by earlier runs that this run took over.
    pub resumed: u64,
    /// Input lines skipped because an earlier run had journaled them.
    pub input_already_journaled: u64,
    /// Records of any run still queued in the journal at the end.
    pub pending: u64,
    pub requests_sent: u64,
    /// 429 responses received (each was waited out and retried).
    pub rate_limited: u64,
    /// Resends after transient failures.
    pub retries: u64,
    pub credential_refreshes: u64,
    pub elapsed_ms: u64,
    /// Why the run stopped early, if it did.
    pub fatal: Option<String>,
    /// Replayed dead letters not sent because their prospects have newer
    /// updates (`dead-letters replay --force` sends them anyway).
    pub held_back: Vec<HeldBack>,
    /// The run stopped because the account must log in again.
    pub login_required: bool,
    pub journal: PathBuf,
    pub dead_letters: Option<PathBuf>,
}

impl Summary {
    /// Some records did not reach the API.
    pub fn has_failures(&self) -> bool {
        self.rejected > 0 || self.not_sent > 0 || self.fatal.is_some()
    }
}

/// Problems that end a run before or outside delivery.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Input(#[from] InputError),
    #[error("cannot write the planned requests: {0}")]
    Output(std::io::Error),
    #[error("cannot write dead letters to {path}: {source}")]
    DeadLetters {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error(
        "journal {journal} holds {records} queued records planned for {queued_for}, not for {api_base}: deliver them there first, or use another --journal"
    )]
    OtherApiBase {
        journal: PathBuf,
        records: u64,
        queued_for: String,
        api_base: String,
    },
}

/// A record error for a record the component could not plan.
fn component_error(failure: &str) -> PlanOutcome {
    PlanOutcome::Invalid(RecordError {
        code: "component-error".into(),
        message: format!("the record could not be planned: {failure}"),
        audiences: Vec::new(),
        fate: RecordFate::Rejected,
    })
}

/// Plans a batch: one outcome per record. When the component fails on a
/// batch (a trap, a deadline, the memory cap, an answer of the wrong
/// length), the batch is planned again in halves, down to single records,
/// so that only the records it fails on become `component-error` record
/// errors; after a trap the next call gets a fresh instance. Halving stops
/// after a few failed calls more than one bad record needs (a component
/// that fails on everything would otherwise cost a deadline per record):
/// what is left then fails whole.
fn plan_batch(destination: &mut Destination, texts: &[String]) -> Vec<PlanOutcome> {
    let depth = usize::BITS - texts.len().leading_zeros();
    let mut failures_left = 4 * depth as usize + 8;
    plan_halving(destination, texts, &mut failures_left)
}

fn plan_halving(
    destination: &mut Destination,
    texts: &[String],
    failures_left: &mut usize,
) -> Vec<PlanOutcome> {
    if texts.is_empty() {
        return Vec::new();
    }
    let failure = match destination.plan(texts) {
        Ok(outcomes) if outcomes.len() == texts.len() => return outcomes,
        Ok(outcomes) => format!(
            "the component returned {} outcomes for {} records",
            outcomes.len(),
            texts.len()
        ),
        Err(e) => e.to_string(),
    };
    *failures_left = failures_left.saturating_sub(1);
    if texts.len() == 1 || *failures_left == 0 {
        tracing::error!("planning {} records failed: {failure}", texts.len());
        return texts.iter().map(|_| component_error(&failure)).collect();
    }
    tracing::warn!(
        "planning a batch of {} records failed ({failure}); planning it in halves",
        texts.len()
    );
    let (first, second) = texts.split_at(texts.len() / 2);
    let mut outcomes = plan_halving(destination, first, failures_left);
    outcomes.extend(plan_halving(destination, second, failures_left));
    outcomes
}

/// Plans input records ([`plan_batch`]); records the reader refused are
/// record errors without asking the component. Input order is kept.
fn plan_items(destination: &mut Destination, items: Vec<Item>) -> Vec<(Item, PlanOutcome)> {
    let texts: Vec<String> = items
        .iter()
        .filter(|item| item.refused.is_none())
        .map(|item| item.text.clone())
        .collect();
    let mut outcomes = plan_batch(destination, &texts).into_iter();
    items
        .into_iter()
        .map(|item| {
            let outcome = match &item.refused {
                Some(refused) => PlanOutcome::Invalid(RecordError {
                    code: refused.code.into(),
                    message: refused.message.clone(),
                    audiences: Vec::new(),
                    fate: RecordFate::Rejected,
                }),
                None => outcomes
                    .next()
                    .unwrap_or_else(|| component_error("no outcome for the record")),
            };
            (item, outcome)
        })
        .collect()
}

/// Plans every record of `input` in batches and hands each outcome to
/// `emit` as it comes (a dry run), reading the input exactly as a run does.
pub fn plan_stream(
    destination: &mut Destination,
    input: Input,
    batch: usize,
    mut emit: impl FnMut(&Item, &PlanOutcome) -> std::io::Result<()>,
) -> Result<(), RunError> {
    let mut items = input.into_items();
    loop {
        let mut pending = Vec::with_capacity(batch.max(1));
        let mut failure = None;
        for item in items.by_ref() {
            match item {
                Ok(item) => pending.push(item),
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
            if pending.len() >= batch.max(1) {
                break;
            }
        }
        if pending.is_empty() && failure.is_none() {
            return Ok(());
        }
        // What was read before a read error is still shown.
        for (item, outcome) in plan_items(destination, pending) {
            emit(&item, &outcome).map_err(RunError::Output)?;
        }
        if let Some(e) = failure {
            return Err(e.into());
        }
    }
}

/// Shared state of a run.
struct Shared<'a, C> {
    api: &'a ApiClient,
    limiter: &'a Limiter,
    credentials: &'a C,
    destination: Mutex<&'a mut Destination>,
    options: &'a DeliveryOptions,
    journal: &'a Journal,
    run: RunId,
    stop: Mutex<Option<String>>,
    /// Woken when the run stops, so that no wait outlives it.
    stopping: Notify,
    /// Stopped by a signal: intake stops too.
    interrupted: AtomicBool,
    login_required: AtomicBool,
    /// No more input will be journaled.
    ingest_done: AtomicBool,
    /// Something was journaled or released: idle workers look again.
    wake: Notify,
    /// When an update last reached a verdict (or the run started), ms.
    last_verdict_ms: AtomicU64,
    requests_sent: AtomicU64,
    rate_limited: AtomicU64,
    retries: AtomicU64,
    refreshes: AtomicU64,
    /// Replayed letters not sent: their prospects have newer updates.
    held_back: Mutex<Vec<HeldBack>>,
    progress: Option<indicatif::ProgressBar>,
}

impl<C: Credentials> Shared<'_, C> {
    fn stopped(&self) -> Option<String> {
        self.stop.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn stop_run(&self, why: String) {
        let mut stop = self.stop.lock().unwrap_or_else(|p| p.into_inner());
        if stop.is_none() {
            tracing::error!("stopping delivery: {why}");
            *stop = Some(why);
        }
        drop(stop);
        self.wake.notify_waiters();
        self.stopping.notify_waiters();
    }

    /// Completes once the run has stopped.
    async fn until_stopped(&self) {
        loop {
            let notified = self.stopping.notified();
            if self.stopped().is_some() {
                return;
            }
            notified.await;
        }
    }

    /// Completes once a signal interrupted the run.
    async fn until_interrupted(&self) {
        loop {
            let notified = self.stopping.notified();
            if self.interrupted.load(Ordering::Acquire) {
                return;
            }
            notified.await;
        }
    }

    /// Runs `work` unless the run stops first (`None`).
    async fn unless_stopped<T>(&self, work: impl Future<Output = T>) -> Option<T> {
        tokio::select! {
            value = work => Some(value),
            () = self.until_stopped() => None,
        }
    }

    /// On SIGINT or SIGTERM: stop the run, keeping everything queued.
    async fn watch_signals(&self) {
        if !self.options.stop_on_signals {
            return std::future::pending().await;
        }
        until_signal().await;
        self.interrupted.store(true, Ordering::Release);
        self.stop_run(
            "interrupted by a signal; every update not yet delivered stays queued in the journal"
                .into(),
        );
        std::future::pending().await
    }

    fn stop_for_login(&self, why: String) {
        self.login_required.store(true, Ordering::Relaxed);
        self.stop_run(why);
    }

    fn backoff(&self, failures: u32) -> Duration {
        let exponential = self
            .options
            .backoff_base
            .saturating_mul(1u32 << failures.saturating_sub(1).min(16));
        let capped = exponential.min(self.options.backoff_max);
        // Full jitter between half and all of the delay spreads retries out.
        capped.mul_f64(rand::rng().random_range(0.5..=1.0))
    }

    /// Reads input, plans it in batches and journals each batch with the
    /// input position after it.
    async fn ingest(&self, mut items: mpsc::Receiver<Result<Item, InputError>>, info: &InputInfo) {
        let batch_size = self.options.batch.max(1);
        let mut coalesced = 0u64;
        // Input keeps being journaled after delivery stopped (say, for a
        // new login): the journal is where it waits.
        loop {
            let interrupted = self.interrupted.load(Ordering::Acquire);
            let first = if interrupted {
                // What was already read is journaled; nothing more is read.
                items.try_recv().ok()
            } else {
                tokio::select! {
                    item = items.recv() => item,
                    () = self.until_interrupted() => continue,
                }
            };
            let Some(first) = first else {
                break;
            };
            let mut batch = vec![first];
            while batch.len() < batch_size {
                match items.try_recv() {
                    Ok(item) => batch.push(item),
                    Err(_) => break,
                }
            }
            let mut lines = Vec::with_capacity(batch.len());
            let mut failure = None;
            for item in batch {
                match item {
                    Ok(item) => lines.push(item),
                    Err(e) => {
                        failure = Some(e.to_string());
                        break;
                    }
                }
            }
            if !lines.is_empty() {
                let position = info.checkpoint_after(lines.iter());
                let incoming = self.plan(lines);
                match self
                    .journal
                    .ingest(self.run, incoming, position.as_ref(), &|o, n| {
                        self.merge(o, n)
                    }) {
                    Ok(report) => {
                        coalesced += report.coalesced;
                        for held in &report.held_back {
                            tracing::warn!(
                                "dead letter {} held back: {}",
                                held.letter,
                                held.reason
                            );
                        }
                        self.held_back
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .extend(report.held_back);
                    }
                    Err(e) => {
                        self.stop_run(format!("cannot journal input: {e}"));
                        break;
                    }
                }
                self.wake.notify_waiters();
            }
            if let Some(why) = failure {
                self.stop_run(why);
                break;
            }
            // Let the workers run between batches.
            tokio::task::yield_now().await;
        }
        tracing::debug!(coalesced, "input journaled");
        self.ingest_done.store(true, Ordering::Release);
        self.wake.notify_waiters();
    }

    /// The destination's merge of two updates queued for one key; a
    /// component failure means they are sent one after the other.
    fn merge(&self, older: &Request, newer: &Request) -> Option<Request> {
        let mut destination = self.destination.lock().unwrap_or_else(|p| p.into_inner());
        destination.merge(older, newer).unwrap_or_else(|e| {
            tracing::warn!(key = %older.key, "the component failed to merge two updates: {e}");
            None
        })
    }

    /// Plans a batch ([`plan_items`]) for the journal, in input order.
    fn plan(&self, items: Vec<Item>) -> Vec<Incoming> {
        let planned = {
            let mut destination = self.destination.lock().unwrap_or_else(|p| p.into_inner());
            plan_items(&mut destination, items)
        };
        planned
            .into_iter()
            .map(|(item, outcome)| Incoming {
                line: item.line,
                outcome,
                record: item.text,
                replay: item.replay,
            })
            .collect()
    }

    /// Takes queued keys one at a time until the input is exhausted and
    /// nothing is left to take, or the run stops.
    async fn work(&self) {
        loop {
            if self.stopped().is_some() {
                return;
            }
            let woken = self.wake.notified();
            let done_before = self.ingest_done.load(Ordering::Acquire);
            match self.journal.claim_next() {
                Ok(Some(claim)) => self.work_key(claim).await,
                Ok(None) if done_before => return,
                Ok(None) => {
                    let _ = tokio::time::timeout(Duration::from_millis(200), woken).await;
                }
                Err(e) => {
                    self.stop_run(format!("the journal failed: {e}"));
                    return;
                }
            }
        }
    }

    /// Delivers a key's updates in order until none is queued.
    async fn work_key(&self, mut claim: Claim) {
        loop {
            let Some(verdict) = self.deliver(&claim).await else {
                self.journal.release(&claim);
                return;
            };
            let next = self.journal.finish(&claim, &verdict, self.run);
            self.last_verdict_ms
                .store(now_epoch_ms(), Ordering::Relaxed);
            if let Some(bar) = &self.progress {
                bar.inc(1);
            }
            match next {
                Ok(Some(next)) => claim = next,
                Ok(None) => return,
                Err(e) => {
                    self.journal.release(&claim);
                    self.stop_run(format!("the journal failed: {e}"));
                    return;
                }
            }
        }
    }

    /// Sends the claimed update (re-reading it before every attempt, so
    /// whatever merged into it while it waited goes along) until it gets a
    /// verdict; `None` when the run stopped first.
    async fn deliver(&self, claim: &Claim) -> Option<Verdict> {
        let mut failures = 0u32;
        let mut refreshed = false;
        loop {
            if self.stopped().is_some() {
                return None;
            }
            let token = match self.unless_stopped(self.credentials.token()).await? {
                Ok(token) => token,
                Err(why) => {
                    self.stop_for_login(why);
                    return None;
                }
            };
            self.unless_stopped(self.limiter.acquire()).await?;
            let request = match self
                .journal
                .begin_attempt(claim, self.run, &|o, n| self.merge(o, n))
            {
                Ok(request) => request,
                Err(e) => {
                    self.stop_run(format!("the journal failed: {e}"));
                    return None;
                }
            };
            self.requests_sent.fetch_add(1, Ordering::Relaxed);
            // Stopping abandons a request on the wire: it stays queued, and
            // is sent again (at-least-once).
            let sent = self.unless_stopped(self.api.send(&request, &token)).await;
            let Some(sent) = sent else {
                self.journal.attempt_failed(claim);
                return None;
            };
            let response = match sent {
                Err(violation) => {
                    return Some(Verdict::Rejected {
                        code: "refused-by-host".into(),
                        reason: format!("the host refused to send the request: {violation}"),
                        request: Some(request),
                        response: None,
                    });
                }
                Ok(Err(transport)) => {
                    self.journal.attempt_failed(claim);
                    let reason = transport.to_string();
                    tracing::debug!(key = %request.key, "transport failure: {reason}");
                    if let Some(gave_up) =
                        self.transient(&mut failures, &reason, None, &request).await
                    {
                        return Some(gave_up);
                    }
                    continue;
                }
                Ok(Ok(response)) => response,
            };
            let classification = {
                let mut destination = self.destination.lock().unwrap_or_else(|p| p.into_inner());
                destination.classify(&request, &response, now_epoch_ms())
            };
            let classification = match classification {
                Ok(c) => c,
                Err(e) => {
                    return Some(Verdict::Rejected {
                        code: "component-error".into(),
                        reason: format!("the component failed to classify the response: {e}"),
                        request: Some(request),
                        response: Some(response),
                    });
                }
            };
            self.limiter.observe(&classification.budget);
            match classification.verdict {
                ApiVerdict::Delivered => return Some(Verdict::Delivered),
                ApiVerdict::Rejected(rejection) => {
                    return Some(Verdict::Rejected {
                        code: rejection.code,
                        reason: rejection.message,
                        request: Some(request),
                        response: Some(response),
                    });
                }
                verdict => {
                    self.journal.attempt_failed(claim);
                    match verdict {
                        ApiVerdict::Retry(retry) if response.status == 429 => {
                            self.rate_limited.fetch_add(1, Ordering::Relaxed);
                            tracing::info!(key = %request.key, "rate limited: {}", retry.reason);
                            self.limiter.rate_limited(retry.not_before_ms);
                        }
                        ApiVerdict::Retry(retry) => {
                            if let Some(gave_up) = self
                                .transient(&mut failures, &retry.reason, retry.not_before_ms, &request)
                                .await
                            {
                                return Some(gave_up);
                            }
                        }
                        ApiVerdict::RefreshCredentials if !refreshed => {
                            refreshed = true;
                            self.refreshes.fetch_add(1, Ordering::Relaxed);
                            if let Err(why) = self.credentials.refresh(&token).await {
                                self.stop_for_login(format!("credentials cannot be refreshed: {why}"));
                            }
                        }
                        ApiVerdict::RefreshCredentials => self.stop_for_login(
                            "the API refused the credentials even after a refresh; run `outreach-host login` again".into(),
                        ),
                        ApiVerdict::Fatal(why) => self.stop_run(why),
                        ApiVerdict::Delivered | ApiVerdict::Rejected(_) => {
                            unreachable!("handled above")
                        }
                    }
                }
            }
        }
    }

    /// Counts a transient failure and waits before the next attempt, or
    /// gives up when attempts are exhausted.
    async fn transient(
        &self,
        failures: &mut u32,
        reason: &str,
        not_before_ms: Option<u64>,
        request: &Request,
    ) -> Option<Verdict> {
        *failures += 1;
        if *failures >= self.options.max_attempts {
            return Some(Verdict::Rejected {
                code: "retries-exhausted".into(),
                reason: format!("gave up after {failures} attempts; last failure: {reason}"),
                request: Some(request.clone()),
                response: None,
            });
        }
        self.retries.fetch_add(1, Ordering::Relaxed);
        let mut wait = self.backoff(*failures);
        if let Some(at) = not_before_ms {
            wait = wait.max(Duration::from_millis(at.saturating_sub(now_epoch_ms())));
        }
        self.unless_stopped(tokio::time::sleep(
            wait.min(crate::limiter::MAX_SERVER_WAIT),
        ))
        .await;
        None
    }

    /// Raises a `stalled` alert when updates are queued but none reached a
    /// verdict for the configured time; again only after progress resumed.
    async fn watch_stalls(&self) {
        let Some(threshold) = self.options.alerts.stall_after() else {
            return std::future::pending().await;
        };
        let threshold_ms = u64::try_from(threshold.as_millis()).unwrap_or(u64::MAX);
        let mut alerted_at: Option<u64> = None;
        loop {
            tokio::time::sleep(Duration::from_millis(250).min(threshold)).await;
            let last = self.last_verdict_ms.load(Ordering::Relaxed);
            if alerted_at.is_some_and(|at| last > at) {
                alerted_at = None;
            }
            let stalled_for = now_epoch_ms().saturating_sub(last);
            if alerted_at.is_none()
                && stalled_for >= threshold_ms
                && self.journal.has_pending().unwrap_or(false)
            {
                alerted_at = Some(now_epoch_ms());
                let message = format!(
                    "delivery has been stalled for {:.0} s with updates queued (rate limit, API errors or credentials)",
                    stalled_for as f64 / 1000.0
                );
                self.alert(AlertKind::Stalled, message).await;
            }
        }
    }

    /// Commits grouped verdicts even when no new verdict comes to fill the
    /// group.
    async fn commit_verdicts(&self) {
        loop {
            tokio::time::sleep(crate::journal::GROUP_COMMIT_WINDOW).await;
            if let Err(e) = self.journal.flush() {
                self.stop_run(format!("the journal failed: {e}"));
            }
        }
    }

    async fn alert(&self, event: AlertKind, message: String) {
        let summary = self
            .journal
            .run(self.run)
            .ok()
            .and_then(|r| serde_json::to_value(r).ok())
            .unwrap_or(Value::Null);
        self.options
            .alerts
            .fire(&Alert {
                event,
                message,
                run: self.run,
                destination: self.options.destination.clone(),
                at_ms: now_epoch_ms(),
                summary,
            })
            .await;
    }
}

/// Completes on SIGINT or SIGTERM.
async fn until_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut terminate) = signal(SignalKind::terminate()) else {
            return std::future::pending().await;
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}

/// Delivers `input` through the journal: every record is journaled (with
/// the input position) before it counts as accepted, updates left by
/// earlier runs are delivered too, and the run is recorded in the journal's
/// history. Returns the summary of this run.
pub async fn run<C: Credentials>(
    destination: &mut Destination,
    api: &ApiClient,
    limiter: &Limiter,
    credentials: &C,
    input: Input,
    options: &DeliveryOptions,
) -> Result<Summary, RunError> {
    let started = Instant::now();
    let journal = match &options.journal {
        Some(journal) => journal.clone(),
        None => Arc::new(Journal::in_memory()?),
    };
    let api_base = api.base().as_str().to_owned();
    let (items, input) = input.into_parts();
    if let Some((queued_for, records)) = journal.pending_api_base()?
        && queued_for != api_base
    {
        return Err(RunError::OtherApiBase {
            journal: journal.path().to_owned(),
            records,
            queued_for,
            api_base,
        });
    }
    let run_id = journal.start_run(
        &options.kind,
        &options.destination,
        &api_base,
        input.name.as_deref(),
    )?;
    let resumed = journal.records_of_other_runs(run_id)?;
    if resumed > 0 {
        tracing::info!("resuming {resumed} records queued by earlier runs");
    }

    let (sender, receiver) = mpsc::channel(options.batch.max(1) * 4);
    let stop_reading = Arc::new(AtomicBool::new(false));
    let reader = {
        let stop_reading = stop_reading.clone();
        // A blocking read (an idle stdin) must not hold up delivery.
        std::thread::spawn(move || {
            for item in items {
                if stop_reading.load(Ordering::Relaxed) || sender.blocking_send(item).is_err() {
                    break;
                }
            }
        })
    };

    let progress =
        (options.progress && std::io::IsTerminal::is_terminal(&std::io::stderr())).then(|| {
            let bar = indicatif::ProgressBar::new_spinner();
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{spinner} {pos} updates delivered  {per_sec}  {elapsed}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
            );
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
    let shared = Shared {
        api,
        limiter,
        credentials,
        destination: Mutex::new(destination),
        options,
        journal: &journal,
        run: run_id,
        stop: Mutex::new(None),
        stopping: Notify::new(),
        interrupted: AtomicBool::new(false),
        login_required: AtomicBool::new(false),
        ingest_done: AtomicBool::new(false),
        wake: Notify::new(),
        last_verdict_ms: AtomicU64::new(now_epoch_ms()),
        requests_sent: AtomicU64::new(0),
        rate_limited: AtomicU64::new(0),
        retries: AtomicU64::new(0),
        refreshes: AtomicU64::new(0),
        held_back: Mutex::new(Vec::new()),
        progress,
    };
    let workers = futures::future::join_all((0..options.concurrency.max(1)).map(|_| shared.work()));
    let delivery = async {
        futures::join!(shared.ingest(receiver, &input), workers);
    };
    tokio::select! {
        () = delivery => {}
        () = shared.watch_stalls() => {}
        () = shared.commit_verdicts() => {}
        () = shared.watch_signals() => {}
    }
    // A refresh the stop cut off from its caller still stores its tokens.
    credentials.settle().await;
    stop_reading.store(true, Ordering::Relaxed);
    if reader.is_finished() {
        let _ = reader.join();
    }
    if let Some(bar) = &shared.progress {
        bar.finish_and_clear();
    }

    let fatal = shared.stopped();
    let stats = RunStats {
        requests_sent: shared.requests_sent.load(Ordering::Relaxed),
        rate_limited: shared.rate_limited.load(Ordering::Relaxed),
        retries: shared.retries.load(Ordering::Relaxed),
        credential_refreshes: shared.refreshes.load(Ordering::Relaxed),
    };
    let before = journal.run(run_id)?;
    let status = if shared.interrupted.load(Ordering::Acquire) {
        "interrupted"
    } else if fatal.is_some() {
        "stopped"
    } else if before.counts.rejected > 0 {
        "completed-with-failures"
    } else {
        "completed"
    };
    journal.end_run(run_id, status, &stats, resumed, fatal.as_deref())?;
    let record = journal.run(run_id)?;
    let mut summary = Summary {
        run: run_id,
        received: record.counts.received,
        delivered: record.counts.delivered,
        rejected: record.counts.rejected,
        skipped: record.counts.skipped,
        not_sent: record.pending,
        audiences: record.audiences.clone(),
        failures: record.failures.clone(),
        coalesced: record.coalesced,
        updates_delivered: record.updates_delivered,
        resumed,
        input_already_journaled: input.skipped_lines,
        pending: journal.pending_records(None)?,
        requests_sent: stats.requests_sent,
        rate_limited: stats.rate_limited,
        retries: stats.retries,
        credential_refreshes: stats.credential_refreshes,
        elapsed_ms: 0,
        fatal: fatal.clone(),
        held_back: std::mem::take(&mut *shared.held_back.lock().unwrap_or_else(|p| p.into_inner())),
        login_required: shared.login_required.load(Ordering::Relaxed),
        journal: journal.path().to_owned(),
        dead_letters: options.dead_letters.clone(),
    };
    if let Some(path) = &options.dead_letters {
        export_dead_letters(&journal, run_id, path)?;
    }
    let end_alerts = async {
        if summary.login_required {
            let why = fatal.clone().unwrap_or_default();
            shared
                .alert(
                    AlertKind::LoginRequired,
                    format!("the account needs a new login (`outreach-host login`): {why}"),
                )
                .await;
        }
        if summary.has_failures() {
            let message = match &fatal {
                Some(why) => format!(
                    "run {run_id} stopped: {why}; {} records stay queued for the next run",
                    summary.pending
                ),
                None => format!(
                    "run {run_id} ended with {} of {} records rejected (see `outreach-host dead-letters list --run {run_id}`)",
                    summary.rejected, summary.received
                ),
            };
            shared.alert(AlertKind::RunFailed, message).await;
        }
    };
    // The run is recorded: a signal now abandons the alerts (their
    // commands are killed) rather than going unheard.
    if options.stop_on_signals {
        tokio::select! {
            () = end_alerts => {}
            () = until_signal() => tracing::warn!("interrupted by a signal: alerts abandoned"),
        }
    } else {
        end_alerts.await;
    }
    summary.elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    Ok(summary)
}

/// Writes the dead letters of `run` to `path` as NDJSON.
pub fn export_dead_letters(journal: &Journal, run: RunId, path: &Path) -> Result<(), RunError> {
    let error = |source| RunError::DeadLetters {
        path: path.to_owned(),
        source,
    };
    let letters = journal.dead_letters(&LetterFilter {
        run: Some(run),
        include_replayed: true,
        ..LetterFilter::default()
    })?;
    let mut out = std::io::BufWriter::new(std::fs::File::create(path).map_err(error)?);
    for letter in letters {
        let line = serde_json::to_string(&letter).map_err(|e| error(std::io::Error::other(e)))?;
        writeln!(out, "{line}").map_err(error)?;
    }
    out.flush().map_err(error)?;
    out.get_ref().sync_all().map_err(error)
}
