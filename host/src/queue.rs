//! The queue between intake and delivery, as delivery sees it: enqueue
//! planned records, claim a key's next update, attempt it, finish it with a
//! verdict (delivered or dead-lettered), or release it; and the history
//! kept with it: runs and their counts, dead letters. Ordering per key,
//! coalescing and durability are the queue's promises; where it keeps its
//! state is its own business.
//!
//! [`JournalQueue`] is the single-machine implementation: the SQLite
//! journal ([`crate::journal`]) on a thread of its own, so no SQLite call
//! or fsync ever runs on an async runtime's worker thread, and the journal
//! commits grouped verdicts itself when no new work fills the group.

use std::sync::Arc;
use std::sync::mpsc;
use std::thread;

use destination_types::Request;
use tokio::sync::oneshot;

pub use crate::journal::Verdict;
use crate::journal::{
    Checkpoint, Claim, DeadLetter, GROUP_COMMIT_WINDOW, Incoming, IngestReport, Journal,
    JournalError, LetterFilter, RunId, RunRecord, RunStats,
};

/// How the destination combines two updates queued for one key.
pub type Merger = Arc<dyn Fn(&Request, &Request) -> Option<Request> + Send + Sync>;

/// A run about to start.
#[derive(Clone, Debug)]
pub struct RunStart {
    /// `run`, `resume`, `replay`, `demo`.
    pub kind: String,
    pub destination: String,
    pub api_base: String,
    pub input: Option<String>,
}

/// How a run ended.
#[derive(Clone, Debug)]
pub struct RunEnd {
    pub status: &'static str,
    pub stats: RunStats,
    pub resumed: u64,
    pub fatal: Option<String>,
}

/// What delivery needs from a queue.
pub trait Queue: Send + Sync {
    type Error: std::error::Error + Send + Sync + 'static;

    /// Where the queue keeps its state, for messages.
    fn location(&self) -> String;

    /// The API base the queued updates were planned for, and how many
    /// records wait, if any do.
    fn pending_target(
        &self,
    ) -> impl Future<Output = Result<Option<(String, u64)>, Self::Error>> + Send;

    /// Records a new run: its id, and how many records earlier runs left
    /// queued (this run takes them over).
    fn start_run(
        &self,
        start: RunStart,
    ) -> impl Future<Output = Result<(RunId, u64), Self::Error>> + Send;

    /// Records how `run` ended; its record, and how many records of any
    /// run are still queued.
    fn end_run(
        &self,
        run: RunId,
        end: RunEnd,
    ) -> impl Future<Output = Result<(RunRecord, u64), Self::Error>> + Send;

    /// A run's record as it stands.
    fn run_record(&self, run: RunId)
    -> impl Future<Output = Result<RunRecord, Self::Error>> + Send;

    /// The dead letters `filter` selects.
    fn dead_letters(
        &self,
        filter: LetterFilter,
    ) -> impl Future<Output = Result<Vec<DeadLetter>, Self::Error>> + Send;

    /// Durably enqueues a batch of planned records and the input position
    /// after them; returns once both are on disk.
    fn enqueue(
        &self,
        run: RunId,
        batch: Vec<Incoming>,
        checkpoint: Option<Checkpoint>,
    ) -> impl Future<Output = Result<IngestReport, Self::Error>> + Send;

    /// The oldest queued update whose key nobody owns, its key now owned.
    fn claim(&self) -> impl Future<Output = Result<Option<Claim>, Self::Error>> + Send;

    /// Starts an attempt: the request to send now (later updates folded in).
    fn attempt(
        &self,
        claim: Claim,
        run: RunId,
    ) -> impl Future<Output = Result<Request, Self::Error>> + Send;

    /// The attempt ended without a verdict (it will be tried again).
    fn attempt_failed(&self, claim: Claim) -> impl Future<Output = ()> + Send;

    /// Records a verdict; the key's next update, still owned, if any.
    fn finish(
        &self,
        claim: Claim,
        verdict: Verdict,
        run: RunId,
    ) -> impl Future<Output = Result<Option<Claim>, Self::Error>> + Send;

    /// Lets a key go without a verdict; its updates stay queued.
    fn release(&self, claim: Claim) -> impl Future<Output = ()> + Send;

    /// Whether any update is queued.
    fn has_pending(&self) -> impl Future<Output = Result<bool, Self::Error>> + Send;
}

type Job = Box<dyn FnOnce(&Journal, &Merger) + Send>;

/// The journal on its own thread. The thread ends, after committing what
/// is grouped, when the last handle is dropped.
pub struct JournalQueue {
    journal: Arc<Journal>,
    jobs: mpsc::Sender<Job>,
}

impl JournalQueue {
    /// Starts the journal's thread; `merge` is the destination's.
    pub fn start(journal: Arc<Journal>, merge: Merger) -> Result<Self, JournalError> {
        let (jobs, inbox) = mpsc::channel::<Job>();
        let owned = journal.clone();
        thread::Builder::new()
            .name("journal".into())
            .spawn(move || serve(&owned, &merge, &inbox))
            .map_err(|e| JournalError::Thread(e.to_string()))?;
        Ok(Self { journal, jobs })
    }

    pub fn journal(&self) -> &Arc<Journal> {
        &self.journal
    }

    /// Runs `work` on the journal's thread and awaits its answer.
    pub async fn call<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Journal, &Merger) -> Result<T, JournalError> + Send + 'static,
    ) -> Result<T, JournalError> {
        let (answer, answered) = oneshot::channel();
        let gone = || JournalError::Thread("the journal's thread ended".into());
        self.jobs
            .send(Box::new(move |journal, merge| {
                let _ = answer.send(work(journal, merge));
            }))
            .map_err(|_| gone())?;
        answered.await.map_err(|_| gone())?
    }
}

/// The journal thread: runs jobs in order; when none has come for a group
/// window, commits the verdicts grouped so far.
fn serve(journal: &Journal, merge: &Merger, inbox: &mpsc::Receiver<Job>) {
    loop {
        match inbox.recv_timeout(GROUP_COMMIT_WINDOW) {
            Ok(job) => job(journal, merge),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                // A failure poisons the journal; the next job reports it.
                let _ = journal.flush();
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let _ = journal.flush();
                return;
            }
        }
    }
}

impl Queue for JournalQueue {
    type Error = JournalError;

    fn location(&self) -> String {
        self.journal.path().display().to_string()
    }

    async fn pending_target(&self) -> Result<Option<(String, u64)>, JournalError> {
        self.call(|journal, _| journal.pending_api_base()).await
    }

    async fn start_run(&self, start: RunStart) -> Result<(RunId, u64), JournalError> {
        self.call(move |journal, _| {
            let run = journal.start_run(
                &start.kind,
                &start.destination,
                &start.api_base,
                start.input.as_deref(),
            )?;
            Ok((run, journal.records_of_other_runs(run)?))
        })
        .await
    }

    async fn end_run(&self, run: RunId, end: RunEnd) -> Result<(RunRecord, u64), JournalError> {
        self.call(move |journal, _| {
            journal.end_run(
                run,
                end.status,
                &end.stats,
                end.resumed,
                end.fatal.as_deref(),
            )?;
            Ok((journal.run(run)?, journal.pending_records(None)?))
        })
        .await
    }

    async fn run_record(&self, run: RunId) -> Result<RunRecord, JournalError> {
        self.call(move |journal, _| journal.run(run)).await
    }

    async fn dead_letters(&self, filter: LetterFilter) -> Result<Vec<DeadLetter>, JournalError> {
        self.call(move |journal, _| journal.dead_letters(&filter))
            .await
    }

    async fn enqueue(
        &self,
        run: RunId,
        batch: Vec<Incoming>,
        checkpoint: Option<Checkpoint>,
    ) -> Result<IngestReport, JournalError> {
        self.call(move |journal, merge| {
            journal.ingest(run, batch, checkpoint.as_ref(), &|o, n| merge(o, n))
        })
        .await
    }

    async fn claim(&self) -> Result<Option<Claim>, JournalError> {
        self.call(|journal, _| journal.claim_next()).await
    }

    async fn attempt(&self, claim: Claim, run: RunId) -> Result<Request, JournalError> {
        self.call(move |journal, merge| journal.begin_attempt(&claim, run, &|o, n| merge(o, n)))
            .await
    }

    async fn attempt_failed(&self, claim: Claim) {
        let _ = self
            .call(move |journal, _| {
                journal.attempt_failed(&claim);
                Ok(())
            })
            .await;
    }

    async fn finish(
        &self,
        claim: Claim,
        verdict: Verdict,
        run: RunId,
    ) -> Result<Option<Claim>, JournalError> {
        self.call(move |journal, _| journal.finish(&claim, &verdict, run))
            .await
    }

    async fn release(&self, claim: Claim) {
        let _ = self
            .call(move |journal, _| {
                journal.release(&claim);
                Ok(())
            })
            .await;
    }

    async fn has_pending(&self) -> Result<bool, JournalError> {
        self.call(|journal, _| journal.has_pending()).await
    }
}
