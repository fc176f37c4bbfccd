//! The queue on the SQLite journal: the journal on a thread of its own, so
//! no SQLite call or fsync ever runs on an async runtime's worker thread,
//! and the journal commits grouped verdicts itself when no new work fills
//! the group. The destination combines updates between the journal's read
//! and its write, never while the journal's thread waits on it.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread;

use destination_types::Request;
use tokio::sync::oneshot;

use super::{
    Attempt, Claim, Combiner, Disposition, Incoming, IngestReport, Learned, Queue, RunEnd, RunId,
    RunStart, StreamQueue, WorkQueue,
};
use crate::journal::{
    Backlog, Begun, Checkpoint, Counts, DeadLetter, Earlier, GROUP_COMMIT_WINDOW, Ingested,
    Journal, JournalError, LetterFilter, LetterRecord, Placement, Receipt, RunRecord, RunStats,
    Stale,
};

type Job = Box<dyn FnOnce(&Journal) + Send>;

/// The journal on its own thread. The thread ends, after committing what
/// is grouped, when the last handle is dropped.
///
/// Verdicts are handed to the thread without waiting for it, and the
/// thread keeps a few attempts started ahead ([`JournalQueue::prefetching`])
/// that `take` hands out without a round trip: a worker goes from one
/// update's verdict to the next update's request without waiting for the
/// journal. An attempt taken ahead is on the wire as far as merging goes;
/// a worker that then has to wait (for the limiter) lets go of it, so
/// updates arriving meanwhile still merge.
pub struct JournalQueue {
    journal: Arc<Journal>,
    jobs: mpsc::Sender<Job>,
    ahead: Arc<Ahead>,
    combine: Combiner,
    /// Held by a batch from reading its keys' heads until its write is
    /// handed to the thread: the next batch reads what this one wrote.
    intake: tokio::sync::Mutex<()>,
    /// Answered when the thread has ended.
    finished: Mutex<Option<oneshot::Receiver<()>>>,
}

/// Attempts started ahead, and why the journal failed, if it did.
#[derive(Default)]
struct Ahead {
    attempts: Mutex<VecDeque<Begun>>,
    /// How many to keep started.
    target: AtomicUsize,
    failed: Mutex<Option<String>>,
}

impl Ahead {
    fn pop(&self) -> Option<Begun> {
        lock(&self.attempts).pop_front()
    }

    fn failed(&self) -> Option<String> {
        lock(&self.failed).clone()
    }

    /// On the journal's thread: starts attempts until `target` are waiting.
    fn top_up(&self, journal: &Journal) -> Result<(), JournalError> {
        let missing = self
            .target
            .load(Ordering::Relaxed)
            .saturating_sub(lock(&self.attempts).len());
        for _ in 0..missing {
            match journal.take_begun()? {
                Some(begun) => lock(&self.attempts).push_back(begun),
                None => break,
            }
        }
        Ok(())
    }

    /// Takes every attempt out; what lets their keys go, if there were any.
    fn release_job(&self) -> Option<impl FnOnce(&Journal) + Send + 'static> {
        let left: Vec<Begun> = lock(&self.attempts).drain(..).collect();
        (!left.is_empty()).then_some(move |journal: &Journal| {
            for begun in &left {
                journal.release(&begun.attempt.claim);
            }
        })
    }

    /// On the journal's thread: the journal failed; nothing taken ahead is
    /// handed out any more.
    fn fail(&self, why: String) {
        lock(&self.attempts).clear();
        lock(&self.failed).get_or_insert(why);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

impl JournalQueue {
    /// Starts the journal's thread; `combine` is the destination's.
    pub fn start(journal: Arc<Journal>, combine: Combiner) -> Result<Self, JournalError> {
        let (jobs, inbox) = mpsc::channel::<Job>();
        let (ended, finished) = oneshot::channel();
        let owned = journal.clone();
        thread::Builder::new()
            .name("journal".into())
            .spawn(move || {
                serve(&owned, &inbox);
                // Let go of the journal before saying so.
                drop(owned);
                let _ = ended.send(());
            })
            .map_err(|e| JournalError::Thread(e.to_string()))?;
        Ok(Self {
            journal,
            jobs,
            ahead: Arc::default(),
            combine,
            intake: tokio::sync::Mutex::new(()),
            finished: Mutex::new(Some(finished)),
        })
    }

    /// Ends the journal's thread and waits for it: what is grouped is
    /// committed, and the thread's handle on the journal is gone, so the
    /// journal closes (and folds its write-ahead log into the database)
    /// when its owner lets go of it — not in a thread a process exit cuts
    /// short.
    pub async fn close(self) {
        self.release_ahead().await;
        let finished = lock(&self.finished).take();
        drop(self);
        if let Some(finished) = finished {
            let _ = finished.await;
        }
    }

    /// Keeps up to `attempts` attempts started ahead for the workers
    /// (about one per worker keeps them from waiting on the journal).
    pub fn prefetching(self, attempts: usize) -> Self {
        self.ahead.target.store(attempts, Ordering::Relaxed);
        self
    }

    fn failure(&self, why: String) -> JournalError {
        JournalError::Failed {
            path: self.journal.path().to_owned(),
            why,
        }
    }

    /// Hands `work` to the journal's thread; its answer comes on the
    /// receiver.
    fn submit<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Journal) -> Result<T, JournalError> + Send + 'static,
    ) -> Result<oneshot::Receiver<Result<T, JournalError>>, JournalError> {
        let (answer, answered) = oneshot::channel();
        self.jobs
            .send(Box::new(move |journal| {
                let _ = answer.send(work(journal));
            }))
            .map_err(|_| thread_gone())?;
        Ok(answered)
    }

    /// Runs `work` on the journal's thread and awaits its answer.
    pub(super) async fn call<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Journal) -> Result<T, JournalError> + Send + 'static,
    ) -> Result<T, JournalError> {
        self.submit(work)?.await.map_err(|_| thread_gone())?
    }

    /// Journals `batch` through `write`: the journal reads what its keys
    /// hold, the destination combines their updates (off the journal's
    /// thread), and `write` journals it where that placed it — all again if
    /// the keys changed in between.
    async fn ingest<T: Send + 'static>(
        &self,
        batch: Vec<Incoming>,
        write: impl Fn(&Journal, &[Incoming], Placement) -> Result<Result<T, Stale>, JournalError>
        + Send
        + Sync
        + 'static,
    ) -> Result<T, JournalError> {
        let batch = Arc::new(batch);
        let write = Arc::new(write);
        loop {
            let turn = self.intake.lock().await;
            let read = batch.clone();
            let prepared = self.call(move |journal| journal.prepare(&read)).await?;
            let (asked, chains) = prepared.chains(&batch);
            let combined = if chains.iter().any(|chain| chain.len() > 1) {
                (self.combine)(chains).await
            } else {
                chains.into_iter().map(super::apart).collect()
            };
            let placement = asked.place(combined, &batch);
            let (written, write) = (batch.clone(), write.clone());
            let answer = self.submit(move |journal| write(journal, &written, placement))?;
            drop(turn);
            match answer.await.map_err(|_| thread_gone())?? {
                Ok(done) => return Ok(done),
                Err(Stale) => {
                    tracing::debug!("a batch's keys changed while it was combined: again")
                }
            }
        }
    }

    /// The attempt `begun` stands for, with the updates queued behind it
    /// folded in as the destination combines them.
    async fn fold_in(&self, mut begun: Begun, run: RunId) -> Result<Attempt, JournalError> {
        loop {
            if begun.later.is_empty() {
                return Ok(begun.attempt);
            }
            let chain = std::iter::once(begun.attempt.request.clone())
                .chain(begun.later.iter().map(|head| head.request.clone()))
                .collect();
            let first = (self.combine)(vec![chain])
                .await
                .into_iter()
                .next()
                .and_then(|kept| kept.into_iter().next());
            let Some(first) = first.filter(|f| f.inputs > 1 && f.inputs <= begun.later.len() + 1)
            else {
                return Ok(begun.attempt);
            };
            let claim = begun.attempt.claim.clone();
            let folded: Vec<_> = begun.later.drain(..first.inputs - 1).collect();
            let request = first.request;
            let refolded = self
                .call(move |journal| {
                    Ok(match journal.fold(&claim, &request, &folded, run)? {
                        Ok(()) => Ok(Attempt { claim, request }),
                        Err(Stale) => Err(journal.begin(&claim)?),
                    })
                })
                .await;
            match refolded {
                Ok(Ok(attempt)) => return Ok(attempt),
                Ok(Err(again)) => begun = again,
                Err(e) => {
                    self.ahead.fail(e.to_string());
                    return Err(e);
                }
            }
        }
    }
}

fn thread_gone() -> JournalError {
    JournalError::Thread("the journal's thread ended".into())
}

impl Drop for JournalQueue {
    /// Attempts started ahead and never handed out let their keys go (if
    /// [`Queue::release_ahead`] was not awaited).
    fn drop(&mut self) {
        if let Some(release) = self.ahead.release_job() {
            let _ = self.jobs.send(Box::new(release));
        }
    }
}

/// The journal thread: runs jobs in order; when none has come for a group
/// window, commits the verdicts grouped so far.
fn serve(journal: &Journal, inbox: &mpsc::Receiver<Job>) {
    loop {
        match inbox.recv_timeout(GROUP_COMMIT_WINDOW) {
            Ok(job) => job(journal),
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

impl WorkQueue for JournalQueue {
    type Error = JournalError;

    async fn take(&self, run: RunId) -> Result<Option<Attempt>, JournalError> {
        if let Some(why) = self.ahead.failed() {
            return Err(self.failure(why));
        }
        let begun = match self.ahead.pop() {
            Some(begun) => Some(begun),
            None => {
                let ahead = self.ahead.clone();
                let taken = self
                    .call(move |journal| {
                        // Verdicts handed over before this call may have
                        // started attempts meanwhile.
                        let taken = match ahead.pop() {
                            Some(begun) => Some(begun),
                            None => journal.take_begun()?,
                        };
                        ahead.top_up(journal)?;
                        Ok(taken)
                    })
                    .await;
                if let Err(e) = &taken {
                    self.ahead.fail(e.to_string());
                }
                taken?
            }
        };
        match begun {
            Some(begun) => self.fold_in(begun, run).await.map(Some),
            None => Ok(None),
        }
    }

    async fn attempt(&self, claim: Claim, run: RunId) -> Result<Request, JournalError> {
        let begun = self.call(move |journal| journal.begin(&claim)).await?;
        self.fold_in(begun, run)
            .await
            .map(|attempt| attempt.request)
    }

    async fn attempt_failed(&self, claim: Claim) {
        let _ = self
            .call(move |journal| {
                journal.attempt_failed(&claim);
                Ok(())
            })
            .await;
    }

    async fn finish(
        &self,
        claim: Claim,
        verdict: Disposition,
        run: RunId,
    ) -> Result<(), JournalError> {
        let ahead = self.ahead.clone();
        let job: Job = Box::new(move |journal| {
            let recorded = journal
                .finish_and_begin(&claim, &verdict, run)
                .and_then(|next| {
                    if let Some(next) = next {
                        lock(&ahead.attempts).push_back(next);
                    }
                    ahead.top_up(journal)
                });
            if let Err(e) = recorded {
                ahead.fail(e.to_string());
            }
        });
        self.jobs.send(job).map_err(|_| thread_gone())
    }

    async fn release(&self, claim: Claim) {
        let _ = self
            .call(move |journal| {
                journal.release(&claim);
                Ok(())
            })
            .await;
    }

    async fn recall(&self, name: String) -> Result<Option<String>, JournalError> {
        self.call(move |journal| journal.recall(&name)).await
    }

    async fn learn(&self, learned: Learned) -> Result<(), JournalError> {
        if learned.is_empty() {
            return Ok(());
        }
        self.call(move |journal| journal.learn(&learned)).await
    }

    async fn step(
        &self,
        claim: Claim,
        next: Request,
        learned: Learned,
    ) -> Result<(), JournalError> {
        self.call(move |journal| journal.step(&claim, &next, &learned))
            .await
    }

    async fn release_ahead(&self) {
        if let Some(release) = self.ahead.release_job() {
            let _ = self
                .call(move |journal| {
                    release(journal);
                    Ok(())
                })
                .await;
        }
    }
}

impl Queue for JournalQueue {
    fn location(&self) -> String {
        self.journal.path().display().to_string()
    }

    async fn pending_target(&self) -> Result<Option<(String, u64)>, JournalError> {
        self.call(|journal| journal.pending_api_base()).await
    }

    async fn start_run(&self, start: RunStart) -> Result<(RunId, u64), JournalError> {
        self.call(move |journal| {
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
        self.call(move |journal| {
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
        self.call(move |journal| journal.run(run)).await
    }

    async fn dead_letters(&self, filter: LetterFilter) -> Result<Vec<DeadLetter>, JournalError> {
        self.call(move |journal| journal.dead_letters(&filter))
            .await
    }

    async fn enqueue(
        &self,
        run: RunId,
        batch: Vec<Incoming>,
        checkpoint: Option<Checkpoint>,
    ) -> Result<IngestReport, JournalError> {
        self.ingest(batch, move |journal, batch, placement| {
            journal.ingest_placed(run, batch, placement, checkpoint.as_ref())
        })
        .await
    }

    async fn has_pending(&self) -> Result<bool, JournalError> {
        self.call(|journal| journal.has_pending()).await
    }
}

impl StreamQueue for JournalQueue {
    async fn stream_run(
        &self,
        destination: String,
        api_base: String,
        period_start_ms: u64,
    ) -> Result<RunId, JournalError> {
        self.call(move |journal| journal.stream_run(&destination, &api_base, period_start_ms))
            .await
    }

    async fn add_run_stats(&self, run: RunId, stats: RunStats) -> Result<(), JournalError> {
        self.call(move |journal| journal.add_run_stats(run, &stats))
            .await
    }

    async fn backlog(&self) -> Result<Backlog, JournalError> {
        self.call(|journal| journal.backlog()).await
    }

    async fn receipt(&self, key: String, digest: String) -> Result<Option<Earlier>, JournalError> {
        self.call(move |journal| journal.receipt(&key, &digest))
            .await
    }

    async fn enqueue_once(
        &self,
        run: RunId,
        batch: Vec<Incoming>,
        receipt: Receipt,
    ) -> Result<Ingested, JournalError> {
        self.ingest(batch, move |journal, batch, placement| {
            journal.ingest_once(run, batch, placement, &receipt)
        })
        .await
    }

    async fn totals(
        &self,
    ) -> Result<(Counts, std::collections::BTreeMap<String, Counts>), JournalError> {
        self.call(|journal| journal.totals()).await
    }

    async fn letter_records(
        &self,
        filter: LetterFilter,
    ) -> Result<Vec<LetterRecord>, JournalError> {
        self.call(move |journal| journal.letter_records(&filter))
            .await
    }
}

#[cfg(test)]
mod tests;
