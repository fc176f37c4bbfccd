//! `Journaled`: one destination delivering continuously over its own
//! journal. Callers hand it batches of records ([`Journaled::accept`]);
//! each batch is planned by the component and journaled (fsynced) before
//! the call returns, into the run of the period it was received in (an
//! hour unless configured). The workers take queued updates as the journal hands them out, under the
//! account's shared limiter, with the same retries, ordering per key,
//! coalescing and dead letters as a command-line run.
//!
//! When delivery stops (a login is needed, the journal failed), it keeps
//! accepting records — they wait in the journal — and starts its
//! workers again after a pause.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::account::Account;
use crate::alerts::Alerts;
use crate::clock::Clock;
use crate::delivery::retry;
use crate::delivery::{Handle, plan_items};
use crate::guest::Guest;
use crate::http::ApiClient;
use crate::input::Item;
use crate::intake::{Accept, AcceptError, Acceptance, Accepted, IdempotencyKey, Record};
use crate::journal::{Backlog, Counts, Earlier, Ingested, Journal, Receipt, RunStats};
use crate::queue::{Incoming, RunId};
use crate::queue::{JournalQueue, Queue, StreamQueue};

pub mod read;
mod tasks;
use tasks::{next_period, period_start, record_stats, supervise, upkeep};

/// How often the backlog figures are read and the period checked.
const UPKEEP_EVERY: Duration = Duration::from_secs(1);

/// How a stream runs.
#[derive(Clone)]
pub struct JournaledSettings {
    /// The destination's name (runs and logs).
    pub name: String,
    /// Requests in flight at once.
    pub concurrency: usize,
    pub policy: retry::Policy,
    /// Queued updates beyond which batches are refused.
    pub max_queued_updates: u64,
    /// Pause before delivery starts again after it stopped.
    pub restart_after: Duration,
    /// How long a dataflow run collects records (an hour).
    pub run_length: Duration,
    pub clock: Clock,
    pub alerts: Arc<Alerts>,
}

/// What a replay of dead letters did.
#[derive(Clone, Debug, Default)]
pub struct Replayed {
    /// Letters planned again and queued (or dead letters again).
    pub replayed: u64,
    /// Letters not sent: their key (the object in the destination) has a newer update.
    pub held_back: Vec<crate::queue::HeldBack>,
}

/// A stream's figures, for health checks and metrics.
#[derive(Clone, Debug, Default)]
pub struct JournaledStatus {
    pub backlog: Backlog,
    pub requests_sent: u64,
    pub lookups_sent: u64,
    pub creates_sent: u64,
    pub rate_limited: u64,
    pub retries: u64,
    pub refreshes: u64,
    /// Why delivery is paused, if it is.
    pub paused: Option<String>,
    pub totals: Counts,
    pub audiences: std::collections::BTreeMap<String, Counts>,
}

struct Shared {
    settings: JournaledSettings,
    api: ApiClient,
    account: Arc<Account>,
    guest: Arc<Guest>,
    queue: JournalQueue,
    /// The workers' hold: stop, counts, the run verdicts count in (the
    /// current period's).
    delivery: Handle,
    /// The current period's start (ms) and run; held while journaling a
    /// batch, so that no batch lands in a run being closed.
    period: tokio::sync::Mutex<(u64, RunId)>,
    /// The request counts as last added to a run.
    recorded: Mutex<RunStats>,
    backlog: Mutex<Backlog>,
    /// Updates possibly added since the backlog was read.
    accepted_since_backlog: AtomicU64,
    draining: AtomicBool,
    drained: Notify,
    paused: Mutex<Option<String>>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

pub struct Journaled {
    shared: Arc<Shared>,
    supervisor: Mutex<Option<JoinHandle<()>>>,
    upkeep: JoinHandle<()>,
}

impl Journaled {
    /// Starts delivering what `journal` holds, and accepting batches.
    pub async fn start(
        settings: JournaledSettings,
        api: ApiClient,
        account: Arc<Account>,
        guest: Arc<Guest>,
        journal: Arc<Journal>,
    ) -> Result<Self, AcceptError> {
        let journal_failed = |e: crate::journal::JournalError| AcceptError::Journal(e.to_string());
        let queue = JournalQueue::start(journal, guest.combiner())
            .map_err(journal_failed)?
            .prefetching(settings.concurrency.max(1));
        let period = period_start(&settings);
        let (name, api_base) = (settings.name.clone(), api.base().as_str().to_owned());
        let run = queue
            .stream_run(name, api_base, period)
            .await
            .map_err(journal_failed)?;
        let backlog = queue.backlog().await.map_err(journal_failed)?;
        let now = settings.clock.now_ms();
        let shared = Arc::new(Shared {
            settings,
            api,
            account,
            guest,
            queue,
            delivery: Handle::new(run, now),
            period: tokio::sync::Mutex::new((period, run)),
            recorded: Mutex::default(),
            backlog: Mutex::new(backlog),
            accepted_since_backlog: AtomicU64::new(0),
            draining: AtomicBool::new(false),
            drained: Notify::new(),
            paused: Mutex::default(),
        });
        let supervisor = tokio::spawn(supervise(shared.clone()));
        let upkeep = tokio::spawn(upkeep(shared.clone()));
        Ok(Self {
            shared,
            supervisor: Mutex::new(Some(supervisor)),
            upkeep,
        })
    }

    /// Plans the records of dead letters `ids` again with the current
    /// configuration and queues them into the current run. As on the
    /// command line, a letter whose key has had a newer update since
    /// is held back (not sent over newer values), and a replayed letter is
    /// marked as such in the same transaction; letters already replayed
    /// are left alone.
    pub async fn replay(&self, ids: Vec<i64>) -> Result<Replayed, AcceptError> {
        let shared = &self.shared;
        if shared.draining.load(Ordering::Acquire) {
            return Err(AcceptError::Draining);
        }
        let journal_failed = |e: crate::journal::JournalError| AcceptError::Journal(e.to_string());
        let filter = crate::journal::LetterFilter {
            ids,
            ..crate::journal::LetterFilter::default()
        };
        let letters = shared
            .queue
            .letter_records(filter)
            .await
            .map_err(journal_failed)?;
        if letters.is_empty() {
            return Ok(Replayed::default());
        }
        let items: Vec<Record> = letters
            .into_iter()
            .map(|letter| Item::replaying(letter, false))
            .collect();
        let planned = shared
            .guest
            .with_planner(move |destination| plan_items(destination, items))
            .await
            .map_err(|e| AcceptError::Component(e.to_string()))?;
        let replayed = planned.len() as u64;
        let batch: Vec<Incoming> = planned.into_iter().map(Incoming::from).collect();
        let period = self.period_run().await?;
        let report = shared
            .queue
            .enqueue(period.1, batch, None)
            .await
            .map_err(journal_failed)?;
        drop(period);
        shared.delivery.wake();
        Ok(Replayed {
            replayed: replayed - report.held_back.len() as u64,
            held_back: report.held_back,
        })
    }

    /// The current period's run.
    pub fn current_run(&self) -> RunId {
        self.shared.delivery.run()
    }

    /// A run's record as it stands.
    pub async fn run_record(
        &self,
        run: RunId,
    ) -> Result<crate::journal::RunRecord, crate::journal::JournalError> {
        self.shared.queue.run_record(run).await
    }

    /// Plans `records` and journals them durably (with the answer, under
    /// `idempotency_key`, when given) into the current period's run.
    pub async fn accept(
        &self,
        records: Vec<Record>,
        idempotency_key: Option<IdempotencyKey>,
    ) -> Result<Acceptance, AcceptError> {
        let shared = &self.shared;
        if shared.draining.load(Ordering::Acquire) {
            return Err(AcceptError::Draining);
        }
        let journal_failed = |e: crate::journal::JournalError| AcceptError::Journal(e.to_string());
        if let Some(key) = &idempotency_key {
            let (scoped, digest) = (key.scoped.clone(), key.digest.clone());
            let earlier = shared
                .queue
                .receipt(scoped, digest)
                .await
                .map_err(journal_failed)?;
            match earlier {
                Some(Earlier::Answered(first)) => return Ok(Acceptance::Repeated(first)),
                Some(Earlier::OtherBody) => return Err(AcceptError::KeyReused(key.key.clone())),
                None => {}
            }
        }
        let queued =
            lock(&shared.backlog).updates + shared.accepted_since_backlog.load(Ordering::Relaxed);
        if queued >= shared.settings.max_queued_updates {
            return Err(AcceptError::OverQuota {
                queued,
                limit: shared.settings.max_queued_updates,
            });
        }
        let planned = shared
            .guest
            .with_planner(move |destination| plan_items(destination, records))
            .await
            .map_err(|e| AcceptError::Component(e.to_string()))?;
        let mut answer = Accepted::default();
        let mut batch = Vec::with_capacity(planned.len());
        // The answer names a record by its place in the batch.
        for (index, (item, outcome)) in (0u64..).zip(planned) {
            answer.count(index, &outcome);
            batch.push(Incoming::from((item, outcome)));
        }
        let period = self.period_run().await?;
        let run = period.1;
        let acceptance = match idempotency_key {
            Some(key) => {
                let shown = key.key;
                let receipt = Receipt {
                    key: key.scoped,
                    digest: key.digest,
                    response: serde_json::to_string(&answer)
                        .map_err(|e| AcceptError::Journal(e.to_string()))?,
                };
                let intake = shared
                    .queue
                    .enqueue_once(run, batch, receipt)
                    .await
                    .map_err(journal_failed)?;
                match intake {
                    Ingested::Journaled(_) => Acceptance::Fresh(answer.clone()),
                    Ingested::Repeated(Earlier::Answered(first)) => Acceptance::Repeated(first),
                    Ingested::Repeated(Earlier::OtherBody) => {
                        return Err(AcceptError::KeyReused(shown));
                    }
                }
            }
            None => {
                shared
                    .queue
                    .enqueue(run, batch, None)
                    .await
                    .map_err(journal_failed)?;
                Acceptance::Fresh(answer.clone())
            }
        };
        drop(period);
        if matches!(acceptance, Acceptance::Fresh(_)) {
            shared
                .accepted_since_backlog
                .fetch_add(answer.accepted, Ordering::Relaxed);
            shared.delivery.wake();
        }
        Ok(acceptance)
    }

    /// The current period and its run, moving on to a new run when the
    /// period is over; held while a batch is journaled into it.
    async fn period_run(&self) -> Result<tokio::sync::MutexGuard<'_, (u64, RunId)>, AcceptError> {
        next_period(&self.shared).await
    }

    /// The stream's figures now.
    pub async fn status(&self) -> Result<JournaledStatus, AcceptError> {
        let shared = &self.shared;
        let (totals, audiences) = shared
            .queue
            .totals()
            .await
            .map_err(|e| AcceptError::Journal(e.to_string()))?;
        let requests = shared.delivery.requests();
        Ok(JournaledStatus {
            backlog: *lock(&shared.backlog),
            requests_sent: requests.requests_sent,
            lookups_sent: requests.lookups_sent,
            creates_sent: requests.creates_sent,
            rate_limited: requests.rate_limited,
            retries: requests.retries,
            refreshes: requests.credential_refreshes,
            paused: lock(&shared.paused).clone(),
            totals,
            audiences,
        })
    }

    /// Refuses new batches from now on.
    pub fn stop_accepting(&self) {
        self.shared.draining.store(true, Ordering::Release);
    }

    /// Shuts the stream down: no new batch is accepted, the workers finish
    /// the updates they are on (within `grace`; after it, requests still
    /// on the wire are abandoned and stay queued), the run's figures are
    /// recorded and the journal is closed once no caller holds the stream.
    /// Everything queued stays queued for the next start.
    pub async fn close(stream: Arc<Self>, grace: Duration) {
        stream.stop_accepting();
        let shared = stream.shared.clone();
        shared.delivery.wind_down();
        shared.drained.notify_waiters();
        let supervisor = lock(&stream.supervisor).take();
        if let Some(mut supervisor) = supervisor
            && tokio::time::timeout(grace, &mut supervisor).await.is_err()
        {
            tracing::warn!(
                destination = %shared.settings.name,
                "requests still in flight after {grace:?}: abandoned (they stay queued)"
            );
            shared.delivery.interrupt();
            let _ = supervisor.await;
        }
        stream.upkeep.abort();
        record_stats(&shared).await;
        drop(shared);
        // Callers still answering (an intake batch) hold the stream.
        let mut stream = stream;
        let owned = loop {
            match Arc::try_unwrap(stream) {
                Ok(owned) => break owned,
                Err(still_held) => {
                    stream = still_held;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        };
        let Journaled { shared, upkeep, .. } = owned;
        let _ = upkeep.await;
        match Arc::try_unwrap(shared) {
            Ok(shared) => shared.queue.close().await,
            Err(_) => tracing::warn!("the journal of a closed stream is still in use"),
        }
    }
}

impl Accept for Journaled {
    fn accept(
        &self,
        records: Vec<Record>,
        idempotency_key: Option<IdempotencyKey>,
    ) -> futures::future::BoxFuture<'_, Result<Acceptance, AcceptError>> {
        Box::pin(Journaled::accept(self, records, idempotency_key))
    }
}
