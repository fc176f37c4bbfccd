//! A delivery run: NDJSON records in, planned by the component, sent under
//! the rate limiter with retries, every outcome accounted for — delivered,
//! skipped, or a dead letter with its reason. Requests for the same key are
//! sent in order; different keys go concurrently.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use destination_types::{PlanOutcome, RecordError, Request, Response, Verdict};
use futures::StreamExt;
use rand::Rng;
use serde::Serialize;
use serde_json::{Value, json};

use crate::engine::Destination;
use crate::http::ApiClient;
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
#[derive(Clone, Debug)]
pub struct DeliveryOptions {
    /// Requests in flight at once.
    pub concurrency: usize,
    /// Attempts per request for transient failures (5xx, timeouts,
    /// connection errors) before it becomes a dead letter. 429s do not count.
    pub max_attempts: u32,
    /// First retry delay; doubles per attempt, with jitter.
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// Records per call into the component.
    pub batch: usize,
    /// Where dead letters are written (NDJSON), if anywhere.
    pub dead_letters: Option<PathBuf>,
    /// Show a progress bar (only honoured on a terminal).
    pub progress: bool,
}

impl Default for DeliveryOptions {
    fn default() -> Self {
        Self {
            concurrency: 16,
            max_attempts: 6,
            backoff_base: Duration::from_millis(250),
            backoff_max: Duration::from_secs(30),
            batch: 500,
            dead_letters: None,
            progress: false,
        }
    }
}

/// Counts for one audience.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct AudienceCounts {
    pub received: u64,
    pub delivered: u64,
    pub rejected: u64,
    pub skipped: u64,
}

/// The end-of-run report.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Summary {
    /// Input records (non-blank lines).
    pub received: u64,
    pub delivered: u64,
    /// Records refused: invalid records, requests the API rejected, requests
    /// that exhausted their retries.
    pub rejected: u64,
    /// Records with nothing to write, or without a usable prospect id.
    pub skipped: u64,
    /// Records not sent because the run stopped (see `fatal`).
    pub not_sent: u64,
    pub audiences: BTreeMap<String, AudienceCounts>,
    /// Failed and skipped records per reason code.
    pub failures: BTreeMap<String, u64>,
    pub requests_sent: u64,
    /// 429 responses received (each was waited out and retried).
    pub rate_limited: u64,
    /// Resends after transient failures.
    pub retries: u64,
    pub credential_refreshes: u64,
    pub elapsed_ms: u64,
    /// Why the run stopped early, if it did.
    pub fatal: Option<String>,
    pub dead_letters: Option<PathBuf>,
}

impl Summary {
    /// Some records did not reach the API.
    pub fn has_failures(&self) -> bool {
        self.rejected > 0 || self.not_sent > 0 || self.fatal.is_some()
    }
}

/// What became of one planned request.
#[derive(Clone, Debug)]
enum Delivery {
    Delivered,
    Rejected {
        code: String,
        message: String,
        response: Option<Response>,
    },
    NotSent {
        reason: String,
    },
}

/// Input problems that end a run before any delivery.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot read input line {line}: {source}")]
    Input { line: usize, source: std::io::Error },
    #[error("cannot write dead letters to {path}: {source}")]
    DeadLetters {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// One input record and what the component planned for it.
struct Planned {
    line: usize,
    text: String,
    outcome: PlanOutcome,
}

/// Reads and plans every record. A batch the component fails on (a trap,
/// a deadline, the memory cap, an answer of the wrong length) makes each of
/// its records a record error with the reason: nothing is lost, and the
/// next batch gets a fresh instance.
pub fn plan_input(
    destination: &mut Destination<'_>,
    input: impl BufRead,
    batch: usize,
) -> Result<Vec<(usize, String, PlanOutcome)>, RunError> {
    let mut planned = Vec::new();
    let mut pending: Vec<(usize, String)> = Vec::new();
    let mut flush = |pending: &mut Vec<(usize, String)>,
                     planned: &mut Vec<(usize, String, PlanOutcome)>| {
        if pending.is_empty() {
            return;
        }
        let texts: Vec<String> = pending.iter().map(|(_, t)| t.clone()).collect();
        let failure = match destination.plan(&texts) {
            Ok(outcomes) if outcomes.len() == texts.len() => {
                for ((line, text), outcome) in pending.drain(..).zip(outcomes) {
                    planned.push((line, text, outcome));
                }
                return;
            }
            Ok(outcomes) => format!(
                "the component returned {} outcomes for {} records",
                outcomes.len(),
                texts.len()
            ),
            Err(e) => e.to_string(),
        };
        tracing::error!(
            "planning a batch of {} records failed: {failure}",
            texts.len()
        );
        for (line, text) in pending.drain(..) {
            let outcome = PlanOutcome::Invalid(RecordError {
                code: "component-error".into(),
                message: format!("the record could not be planned: {failure}"),
                audiences: Vec::new(),
            });
            planned.push((line, text, outcome));
        }
    };
    for (index, line) in input.lines().enumerate() {
        let line = line.map_err(|source| RunError::Input {
            line: index + 1,
            source,
        })?;
        if line.trim().is_empty() {
            continue;
        }
        pending.push((index + 1, line));
        if pending.len() >= batch.max(1) {
            flush(&mut pending, &mut planned);
        }
    }
    flush(&mut pending, &mut planned);
    Ok(planned)
}

/// Shared state of the sending phase.
struct Sender<'a, 'r, C> {
    api: &'a ApiClient,
    limiter: &'a Limiter,
    credentials: &'a C,
    destination: Mutex<&'a mut Destination<'r>>,
    options: &'a DeliveryOptions,
    stop: Mutex<Option<String>>,
    requests_sent: AtomicU64,
    rate_limited: AtomicU64,
    retries: AtomicU64,
    refreshes: AtomicU64,
    progress: Option<indicatif::ProgressBar>,
}

impl<C: Credentials> Sender<'_, '_, C> {
    fn stopped(&self) -> Option<String> {
        self.stop.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn stop_run(&self, why: String) {
        let mut stop = self.stop.lock().unwrap_or_else(|p| p.into_inner());
        if stop.is_none() {
            tracing::error!("stopping delivery: {why}");
            *stop = Some(why);
        }
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

    async fn deliver(&self, request: &Request) -> Delivery {
        let mut failures = 0u32;
        let mut refreshed = false;
        loop {
            if let Some(why) = self.stopped() {
                return Delivery::NotSent {
                    reason: format!("run stopped: {why}"),
                };
            }
            let token = match self.credentials.token().await {
                Ok(token) => token,
                Err(why) => {
                    self.stop_run(why);
                    continue;
                }
            };
            self.limiter.acquire().await;
            self.requests_sent.fetch_add(1, Ordering::Relaxed);
            let response = match self.api.send(request, &token).await {
                Err(violation) => {
                    return Delivery::Rejected {
                        code: "refused-by-host".into(),
                        message: format!("the host refused to send the request: {violation}"),
                        response: None,
                    };
                }
                Ok(Err(transport)) => {
                    let reason = transport.to_string();
                    tracing::debug!(key = %request.key, "transport failure: {reason}");
                    if let Some(gave_up) = self.transient(&mut failures, &reason, None).await {
                        return gave_up;
                    }
                    continue;
                }
                Ok(Ok(response)) => response,
            };
            let classification = {
                let mut destination = self.destination.lock().unwrap_or_else(|p| p.into_inner());
                destination.classify(request, &response, now_epoch_ms())
            };
            let classification = match classification {
                Ok(c) => c,
                Err(e) => {
                    return Delivery::Rejected {
                        code: "component-error".into(),
                        message: format!("the component failed to classify the response: {e}"),
                        response: Some(response),
                    };
                }
            };
            self.limiter.observe(&classification.budget);
            match classification.verdict {
                Verdict::Delivered => return Delivery::Delivered,
                Verdict::Retry(retry) if response.status == 429 => {
                    self.rate_limited.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(key = %request.key, "rate limited: {}", retry.reason);
                    self.limiter.rate_limited(retry.not_before_ms);
                }
                Verdict::Retry(retry) => {
                    if let Some(gave_up) = self
                        .transient(&mut failures, &retry.reason, retry.not_before_ms)
                        .await
                    {
                        return gave_up;
                    }
                }
                Verdict::RefreshCredentials if !refreshed => {
                    refreshed = true;
                    self.refreshes.fetch_add(1, Ordering::Relaxed);
                    if let Err(why) = self.credentials.refresh(&token).await {
                        self.stop_run(format!("credentials cannot be refreshed: {why}"));
                    }
                }
                Verdict::RefreshCredentials => {
                    self.stop_run(
                        "the API refused the credentials even after a refresh; log in again".into(),
                    );
                }
                Verdict::Rejected(rejection) => {
                    return Delivery::Rejected {
                        code: rejection.code,
                        message: rejection.message,
                        response: Some(response),
                    };
                }
                Verdict::Fatal(why) => self.stop_run(why),
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
    ) -> Option<Delivery> {
        *failures += 1;
        if *failures >= self.options.max_attempts {
            return Some(Delivery::Rejected {
                code: "retries-exhausted".into(),
                message: format!("gave up after {failures} attempts; last failure: {reason}"),
                response: None,
            });
        }
        self.retries.fetch_add(1, Ordering::Relaxed);
        let mut wait = self.backoff(*failures);
        if let Some(at) = not_before_ms {
            wait = wait.max(Duration::from_millis(at.saturating_sub(now_epoch_ms())));
        }
        tokio::time::sleep(wait.min(crate::limiter::MAX_SERVER_WAIT)).await;
        None
    }
}

/// Plans `input` and delivers it. Returns the summary; dead letters are
/// written to `options.dead_letters`.
pub async fn run<C: Credentials>(
    destination: &mut Destination<'_>,
    api: &ApiClient,
    limiter: &Limiter,
    credentials: &C,
    input: impl BufRead,
    options: &DeliveryOptions,
) -> Result<Summary, RunError> {
    let started = Instant::now();
    let planned: Vec<Planned> = plan_input(destination, input, options.batch)?
        .into_iter()
        .map(|(line, text, outcome)| Planned {
            line,
            text,
            outcome,
        })
        .collect();

    // Requests, numbered, grouped by key in input order.
    let mut requests: Vec<(usize, &Request)> = Vec::new();
    for (record, p) in planned.iter().enumerate() {
        if let PlanOutcome::Send(list) = &p.outcome {
            requests.extend(list.iter().map(|r| (record, r)));
        }
    }
    let mut groups: Vec<Vec<usize>> = Vec::new();
    let mut group_of_key: HashMap<&str, usize> = HashMap::new();
    for (index, (_, request)) in requests.iter().enumerate() {
        let group = *group_of_key.entry(request.key.as_str()).or_insert_with(|| {
            groups.push(Vec::new());
            groups.len() - 1
        });
        groups[group].push(index);
    }

    let progress =
        (options.progress && std::io::IsTerminal::is_terminal(&std::io::stderr())).then(|| {
            let bar = indicatif::ProgressBar::new(requests.len() as u64);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{bar:40} {pos}/{len} requests  {per_sec}  eta {eta}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            bar
        });
    let sender = Sender {
        api,
        limiter,
        credentials,
        destination: Mutex::new(destination),
        options,
        stop: Mutex::new(None),
        requests_sent: AtomicU64::new(0),
        rate_limited: AtomicU64::new(0),
        retries: AtomicU64::new(0),
        refreshes: AtomicU64::new(0),
        progress,
    };
    let results: Mutex<Vec<Option<Delivery>>> = Mutex::new(vec![None; requests.len()]);
    futures::stream::iter(groups)
        .for_each_concurrent(options.concurrency.max(1), |group| {
            let (sender, requests, results) = (&sender, &requests, &results);
            async move {
                for index in group {
                    let outcome = sender.deliver(requests[index].1).await;
                    results.lock().unwrap_or_else(|p| p.into_inner())[index] = Some(outcome);
                    if let Some(bar) = &sender.progress {
                        bar.inc(1);
                    }
                }
            }
        })
        .await;
    if let Some(bar) = &sender.progress {
        bar.finish_and_clear();
    }
    let results = results.into_inner().unwrap_or_else(|p| p.into_inner());

    let mut summary = Summary {
        requests_sent: sender.requests_sent.load(Ordering::Relaxed),
        rate_limited: sender.rate_limited.load(Ordering::Relaxed),
        retries: sender.retries.load(Ordering::Relaxed),
        credential_refreshes: sender.refreshes.load(Ordering::Relaxed),
        fatal: sender.stopped(),
        dead_letters: options.dead_letters.clone(),
        ..Summary::default()
    };
    let mut per_record: Vec<Vec<&Delivery>> = vec![Vec::new(); planned.len()];
    for ((record, _), result) in requests.iter().zip(&results) {
        if let Some(result) = result {
            per_record[*record].push(result);
        }
    }
    let mut letters = DeadLetters::open(options.dead_letters.as_ref())?;
    for (p, deliveries) in planned.iter().zip(&per_record) {
        account(&mut summary, p, deliveries, &mut letters)?;
    }
    letters.finish()?;
    summary.elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    Ok(summary)
}

/// Adds one record's fate to the summary, writing its dead letters.
fn account(
    summary: &mut Summary,
    record: &Planned,
    deliveries: &[&Delivery],
    letters: &mut DeadLetters,
) -> Result<(), RunError> {
    summary.received += 1;
    let audiences: Vec<&String> = match &record.outcome {
        PlanOutcome::Send(requests) => requests.iter().flat_map(|r| &r.audiences).collect(),
        PlanOutcome::Invalid(e) => e.audiences.iter().collect(),
        PlanOutcome::Skip(_) => Vec::new(),
    };
    let mut bump = |field: fn(&mut AudienceCounts) -> &mut u64| {
        for a in &audiences {
            let counts = summary.audiences.entry((*a).clone()).or_default();
            counts.received += 1;
            *field(counts) += 1;
        }
    };
    match &record.outcome {
        PlanOutcome::Skip(_) => {
            bump(|c| &mut c.skipped);
            summary.skipped += 1;
            *summary
                .failures
                .entry("nothing-to-write".into())
                .or_default() += 1;
        }
        PlanOutcome::Invalid(error) => {
            // A record without a usable prospect id cannot be matched to a
            // prospect: it is skipped, as the original product reports it.
            let no_identity = error.code.starts_with("identity-");
            if no_identity {
                bump(|c| &mut c.skipped);
                summary.skipped += 1;
            } else {
                bump(|c| &mut c.rejected);
                summary.rejected += 1;
            }
            *summary.failures.entry(error.code.clone()).or_default() += 1;
            letters.write(json!({
                "line": record.line,
                "record": record_value(&record.text),
                "code": error.code,
                "reason": error.message,
            }))?;
        }
        PlanOutcome::Send(requests) => {
            // A request without a result was never attempted: it is kept
            // like one the run stopped before sending.
            let not_attempted = Delivery::NotSent {
                reason: "not attempted".into(),
            };
            let failed = requests.iter().enumerate().find_map(|(i, request)| {
                match deliveries.get(i).copied().unwrap_or(&not_attempted) {
                    Delivery::Delivered => None,
                    failure => Some((failure, request)),
                }
            });
            let Some((failure, request)) = failed else {
                bump(|c| &mut c.delivered);
                summary.delivered += 1;
                return Ok(());
            };
            bump(|c| &mut c.rejected);
            let (code, reason, response) = match failure {
                Delivery::NotSent { reason } => {
                    summary.not_sent += 1;
                    ("not-sent", reason, None)
                }
                Delivery::Rejected {
                    code,
                    message,
                    response,
                } => {
                    summary.rejected += 1;
                    (code.as_str(), message, response.as_ref())
                }
                Delivery::Delivered => unreachable!("filtered above"),
            };
            *summary.failures.entry(code.to_owned()).or_default() += 1;
            letters.write(json!({
                "line": record.line,
                "record": record_value(&record.text),
                "request": request_value(request),
                "status": response.map(|r| r.status),
                "response": response.map(|r| r.body.clone()),
                "code": code,
                "reason": reason,
            }))?;
        }
    }
    Ok(())
}

/// The record as JSON when it parses, else its raw text.
fn record_value(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_owned()))
}

fn request_value(request: &Request) -> Value {
    json!({
        "method": request.method,
        "path": request.path,
        "body": record_value(&request.body),
    })
}

/// The dead-letter file, written as records are accounted for.
struct DeadLetters {
    path: Option<PathBuf>,
    writer: Option<std::io::BufWriter<std::fs::File>>,
}

impl DeadLetters {
    fn open(path: Option<&PathBuf>) -> Result<Self, RunError> {
        let writer = match path {
            None => None,
            Some(path) => Some(std::io::BufWriter::new(
                std::fs::File::create(path).map_err(|source| RunError::DeadLetters {
                    path: path.clone(),
                    source,
                })?,
            )),
        };
        Ok(Self {
            path: path.cloned(),
            writer,
        })
    }

    fn error(&self, source: std::io::Error) -> RunError {
        RunError::DeadLetters {
            path: self.path.clone().unwrap_or_default(),
            source,
        }
    }

    fn write(&mut self, letter: Value) -> Result<(), RunError> {
        if let Some(w) = &mut self.writer
            && let Err(e) = writeln!(w, "{letter}")
        {
            return Err(self.error(e));
        }
        Ok(())
    }

    fn finish(mut self) -> Result<(), RunError> {
        if let Some(w) = &mut self.writer
            && let Err(e) = w.flush().and_then(|()| w.get_ref().sync_all())
        {
            return Err(self.error(e));
        }
        Ok(())
    }
}
