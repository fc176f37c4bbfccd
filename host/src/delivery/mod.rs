//! A delivery run: NDJSON records in, planned by the component and
//! journaled ([`crate::journal`]), sent under the rate limiter with
//! retries, every outcome accounted for — delivered, skipped, or a dead
//! letter with its reason. Updates for the same key go in order (newer ones
//! merging into a queued one); different keys go concurrently.

mod control;
mod dispatch;
mod driver;
mod enqueue;
mod planner;
mod report;
pub mod retry;
mod summary;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::alerts::Alerts;
use crate::clock::Clock;
use crate::engine::{Configured, GuestError};
use crate::guest::Guest;
use crate::http::ApiClient;
pub use crate::input::Input;
use crate::input::InputError;
use crate::journal::{DeadLetter, Journal, JournalError, LetterFilter};
use crate::limiter::Limiter;
use crate::queue::{JournalQueue, Queue, RunEnd, RunStart};
use control::until_signal;
pub use driver::{Driver, Handle, Standing, Supervisor};
use enqueue::Enqueuer;
pub(crate) use planner::plan_items;
pub use planner::plan_stream;
use report::Reporter;
pub(crate) use report::StallWatch;
pub use summary::{AudienceCounts, Summary, SummaryExtras};

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

/// Records per call into the component (and per journal transaction)
/// unless configured otherwise.
pub const DEFAULT_BATCH: usize = 500;

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
    /// What time it is (tests start one that follows tokio's paused time).
    pub clock: Clock,
}

impl Default for DeliveryOptions {
    fn default() -> Self {
        Self {
            concurrency: 16,
            max_attempts: 6,
            backoff_base: Duration::from_millis(250),
            backoff_max: Duration::from_secs(30),
            batch: DEFAULT_BATCH,
            journal: None,
            dead_letters: None,
            progress: false,
            kind: "run".into(),
            destination: String::new(),
            alerts: Arc::new(Alerts::none()),
            stop_on_signals: false,
            clock: Clock::system(),
        }
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
    #[error(transparent)]
    Queue(Box<dyn std::error::Error + Send + Sync>),
    #[error("the component cannot run: {0}")]
    Component(GuestError),
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

/// Delivers `input` through the journal: every record is journaled (with
/// the input position) before it counts as accepted, updates left by
/// earlier runs are delivered too, and the run is recorded in the journal's
/// history. The component runs on threads of its own ([`Guest`]) and the
/// journal on another ([`JournalQueue`]). Returns the summary of this run.
pub async fn run<C: Credentials>(
    destination: Configured,
    api: &ApiClient,
    limiter: &Limiter,
    credentials: &C,
    input: Input,
    options: &DeliveryOptions,
) -> Result<Summary, RunError> {
    let journal = match &options.journal {
        Some(journal) => journal.clone(),
        None => Arc::new(Journal::in_memory()?),
    };
    let guest = Arc::new(Guest::spawn(destination).map_err(RunError::Component)?);
    let queue =
        JournalQueue::start(journal, guest.combiner())?.prefetching(options.concurrency.max(1));
    let delivered = deliver(&guest, &queue, api, limiter, credentials, input, options).await;
    queue.close().await;
    delivered
}

/// [`run`] through any queue: `guest` plans, classifies and merges, `queue`
/// holds the updates and the history.
pub async fn deliver<C: Credentials, Q: Queue>(
    guest: &Guest,
    queue: &Q,
    api: &ApiClient,
    limiter: &Limiter,
    credentials: &C,
    input: Input,
    options: &DeliveryOptions,
) -> Result<Summary, RunError> {
    let started = Instant::now();
    let api_base = api.base().as_str().to_owned();
    let (items, input) = input.into_parts();
    if let Some((queued_for, records)) = queue.pending_target().await.map_err(queue_failed)?
        && queued_for != api_base
    {
        return Err(RunError::OtherApiBase {
            journal: PathBuf::from(queue.location()),
            records,
            queued_for,
            api_base,
        });
    }
    let (run_id, resumed) = queue
        .start_run(RunStart {
            kind: options.kind.clone(),
            destination: options.destination.clone(),
            api_base: api_base.clone(),
            input: input.name.clone(),
        })
        .await
        .map_err(queue_failed)?;
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

    let progress = options.progress.then(progress_bar).flatten();
    let handle = Handle::new(run_id, options.clock.now_ms());
    let control = handle.control();
    let held_back = Mutex::new(Vec::new());
    let enqueuer = Enqueuer {
        guest,
        queue,
        run: run_id,
        batch: options.batch,
        control: &control,
        handle: &handle,
        held_back: &held_back,
    };
    let driver = Driver {
        api,
        limiter,
        credentials,
        guest,
        queue,
        policy: retry::Policy {
            max_attempts: options.max_attempts,
            backoff_base: options.backoff_base,
            backoff_max: options.backoff_max,
            max_server_wait: crate::clock::MAX_SERVER_WAIT,
        },
        concurrency: options.concurrency,
        clock: options.clock,
        handle: &handle,
        progress: progress.as_ref(),
    };
    let reporter = Reporter {
        queue,
        run: run_id,
        options,
    };
    let delivery = async {
        futures::join!(enqueuer.run(receiver, &input), driver.work());
    };
    let signals = async {
        if !options.stop_on_signals {
            return std::future::pending().await;
        }
        until_signal().await;
        handle.interrupt();
        std::future::pending::<()>().await
    };
    tokio::select! {
        () = delivery => {}
        () = reporter.watch_stalls(&handle) => {}
        () = signals => {}
    }
    // A refresh the stop cut off from its caller still stores its tokens.
    credentials.settle().await;
    queue.release_ahead().await;
    stop_reading.store(true, Ordering::Relaxed);
    if reader.is_finished() {
        let _ = reader.join();
    }
    if let Some(bar) = &progress {
        bar.finish_and_clear();
    }

    let fatal = handle.stopped();
    let rejected = queue
        .run_record(run_id)
        .await
        .map_err(queue_failed)?
        .counts
        .rejected;
    let status = if handle.interrupted() {
        "interrupted"
    } else if fatal.is_some() {
        "stopped"
    } else if rejected > 0 {
        "completed-with-failures"
    } else {
        "completed"
    };
    let (record, pending) = queue
        .end_run(
            run_id,
            RunEnd {
                status,
                stats: handle.requests(),
                resumed,
                fatal,
            },
        )
        .await
        .map_err(queue_failed)?;
    let mut summary = Summary::of_run(
        &record,
        SummaryExtras {
            audience_labels: guest
                .identity()
                .audiences
                .iter()
                .map(|a| (a.id.clone(), a.label.clone()))
                .collect(),
            resumed,
            input_already_journaled: input.skipped_lines,
            pending,
            held_back: std::mem::take(&mut *held_back.lock().unwrap_or_else(|p| p.into_inner())),
            login_required: handle.login_required(),
            journal: PathBuf::from(queue.location()),
            dead_letters: options.dead_letters.clone(),
        },
    );
    if let Some(path) = &options.dead_letters {
        let letters = queue
            .dead_letters(LetterFilter {
                run: Some(run_id),
                include_replayed: true,
                ..LetterFilter::default()
            })
            .await
            .map_err(queue_failed)?;
        let path = path.clone();
        tokio::task::spawn_blocking(move || export_dead_letters(&letters, &path))
            .await
            .map_err(|e| RunError::Output(std::io::Error::other(e)))??;
    }
    let end_alerts = reporter.end_of_run(&summary);
    // The run is recorded: a signal now abandons the alerts (their
    // commands are killed) rather than going unheard. A run a signal
    // stopped gives its own alerts only a moment: whoever stopped it is
    // waiting.
    if options.stop_on_signals {
        let grace = async {
            if handle.interrupted() {
                tokio::time::sleep(STOPPED_RUN_ALERT_GRACE).await;
            } else {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            () = end_alerts => {}
            () = until_signal() => tracing::warn!("interrupted by a signal: alerts abandoned"),
            () = grace => tracing::warn!(
                "the run was stopped: alerts not done within {STOPPED_RUN_ALERT_GRACE:?} abandoned"
            ),
        }
    } else {
        end_alerts.await;
    }
    summary.elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    Ok(summary)
}

/// How long a run stopped by a signal waits for the alerts its end fires.
const STOPPED_RUN_ALERT_GRACE: Duration = Duration::from_secs(2);

/// A queue failure, as a run error.
fn queue_failed(e: impl std::error::Error + Send + Sync + 'static) -> RunError {
    RunError::Queue(Box::new(e))
}

/// A spinner of delivered updates, on a terminal only.
fn progress_bar() -> Option<indicatif::ProgressBar> {
    if !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        return None;
    }
    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} {pos} updates delivered  {per_sec}  {elapsed}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    Some(bar)
}

/// Writes `letters` to `path` as NDJSON, fsynced.
fn export_dead_letters(letters: &[DeadLetter], path: &Path) -> Result<(), RunError> {
    let error = |source| RunError::DeadLetters {
        path: path.to_owned(),
        source,
    };
    let mut out = std::io::BufWriter::new(std::fs::File::create(path).map_err(error)?);
    for letter in letters {
        let line = serde_json::to_string(letter).map_err(|e| error(std::io::Error::other(e)))?;
        writeln!(out, "{line}").map_err(error)?;
    }
    out.flush().map_err(error)?;
    out.get_ref().sync_all().map_err(error)
}
