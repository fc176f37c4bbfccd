//! The queue on the SQLite journal: the journal on a thread of its own, so
//! no SQLite call or fsync ever runs on an async runtime's worker thread,
//! and the journal commits grouped verdicts itself when no new work fills
//! the group.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread;

use destination_types::Request;
use tokio::sync::oneshot;

use super::{Merger, Queue, RunEnd, RunStart, WorkQueue};
use crate::journal::{
    Attempt, Checkpoint, Claim, DeadLetter, GROUP_COMMIT_WINDOW, Incoming, IngestReport, Journal,
    JournalError, LetterFilter, Merge, RunId, RunRecord, Verdict,
};

type Job = Box<dyn FnOnce(&Journal, &Merger) + Send>;

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
    /// Answered when the thread has ended.
    finished: Mutex<Option<oneshot::Receiver<()>>>,
}

/// Attempts started ahead, and why the journal failed, if it did.
#[derive(Default)]
struct Ahead {
    attempts: Mutex<VecDeque<Attempt>>,
    /// How many to keep started.
    target: AtomicUsize,
    failed: Mutex<Option<String>>,
}

impl Ahead {
    fn pop(&self) -> Option<Attempt> {
        lock(&self.attempts).pop_front()
    }

    fn failed(&self) -> Option<String> {
        lock(&self.failed).clone()
    }

    /// On the journal's thread: starts attempts until `target` are waiting.
    fn top_up(&self, journal: &Journal, run: RunId, merge: Merge<'_>) -> Result<(), JournalError> {
        let missing = self
            .target
            .load(Ordering::Relaxed)
            .saturating_sub(lock(&self.attempts).len());
        for _ in 0..missing {
            match journal.take(run, merge)? {
                Some(attempt) => lock(&self.attempts).push_back(attempt),
                None => break,
            }
        }
        Ok(())
    }

    /// Takes every attempt out; what lets their keys go, if there were any.
    fn release_job(&self) -> Option<impl FnOnce(&Journal) + Send + 'static> {
        let left: Vec<Attempt> = lock(&self.attempts).drain(..).collect();
        (!left.is_empty()).then_some(move |journal: &Journal| {
            for attempt in &left {
                journal.release(&attempt.claim);
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
    /// Starts the journal's thread; `merge` is the destination's.
    pub fn start(journal: Arc<Journal>, merge: Merger) -> Result<Self, JournalError> {
        let (jobs, inbox) = mpsc::channel::<Job>();
        let (ended, finished) = oneshot::channel();
        let owned = journal.clone();
        thread::Builder::new()
            .name("journal".into())
            .spawn(move || {
                serve(&owned, &merge, &inbox);
                // Let go of the journal before saying so.
                drop(owned);
                let _ = ended.send(());
            })
            .map_err(|e| JournalError::Thread(e.to_string()))?;
        Ok(Self {
            journal,
            jobs,
            ahead: Arc::default(),
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

impl Drop for JournalQueue {
    /// Attempts started ahead and never handed out let their keys go (if
    /// [`Queue::release_ahead`] was not awaited).
    fn drop(&mut self) {
        if let Some(release) = self.ahead.release_job() {
            let _ = self.jobs.send(Box::new(move |journal, _| release(journal)));
        }
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

impl WorkQueue for JournalQueue {
    type Error = JournalError;

    async fn take(&self, run: RunId) -> Result<Option<Attempt>, JournalError> {
        if let Some(why) = self.ahead.failed() {
            return Err(self.failure(why));
        }
        if let Some(attempt) = self.ahead.pop() {
            return Ok(Some(attempt));
        }
        let ahead = self.ahead.clone();
        let taken = self
            .call(move |journal, merge| {
                let merge = |o: &Request, n: &Request| merge(o, n);
                // Verdicts handed over before this call may have started
                // attempts meanwhile.
                let taken = match ahead.pop() {
                    Some(attempt) => Some(attempt),
                    None => journal.take(run, &merge)?,
                };
                ahead.top_up(journal, run, &merge)?;
                Ok(taken)
            })
            .await;
        if let Err(e) = &taken {
            self.ahead.fail(e.to_string());
        }
        taken
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

    async fn finish(&self, claim: Claim, verdict: Verdict, run: RunId) -> Result<(), JournalError> {
        let ahead = self.ahead.clone();
        let job: Job = Box::new(move |journal, merge| {
            let merge = |o: &Request, n: &Request| merge(o, n);
            let recorded = journal
                .finish_and_take(&claim, &verdict, run, &merge)
                .and_then(|next| {
                    if let Some(next) = next {
                        lock(&ahead.attempts).push_back(next);
                    }
                    ahead.top_up(journal, run, &merge)
                });
            if let Err(e) = recorded {
                ahead.fail(e.to_string());
            }
        });
        self.jobs
            .send(job)
            .map_err(|_| JournalError::Thread("the journal's thread ended".into()))
    }

    async fn release(&self, claim: Claim) {
        let _ = self
            .call(move |journal, _| {
                journal.release(&claim);
                Ok(())
            })
            .await;
    }
}

impl Queue for JournalQueue {
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

    async fn release_ahead(&self) {
        if let Some(release) = self.ahead.release_job() {
            let _ = self
                .call(move |journal, _| {
                    release(journal);
                    Ok(())
                })
                .await;
        }
    }

    async fn has_pending(&self) -> Result<bool, JournalError> {
        self.call(|journal, _| journal.has_pending()).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use destination_types::{Method, PlanOutcome};

    fn update(key: u64) -> Incoming {
        Incoming {
            line: key,
            record: format!("{{\"id\": {key}}}"),
            outcome: PlanOutcome::Send(vec![Request {
                method: Method::Patch,
                path: format!("/items/{key}"),
                headers: Vec::new(),
                body: format!("{{\"id\": {key}}}"),
                key: key.to_string(),
                audiences: Vec::new(),
            }]),
            replay: None,
        }
    }

    /// A journal holding updates for keys 1..=`keys`, and its run.
    fn journal(keys: u64) -> (Arc<Journal>, RunId) {
        let journal = Arc::new(Journal::in_memory().unwrap());
        let run = journal
            .start_run("run", "test", "http://127.0.0.1/api/v2", None)
            .unwrap();
        journal
            .ingest(run, (1..=keys).map(update).collect(), None, &|_, _| None)
            .unwrap();
        (journal, run)
    }

    fn no_merge() -> Merger {
        Arc::new(|_, _| None)
    }

    async fn keys_left(queue: &JournalQueue, run: RunId) -> Vec<String> {
        let mut keys = Vec::new();
        while let Some(attempt) = queue.take(run).await.unwrap() {
            keys.push(attempt.claim.key.clone());
            queue
                .finish(attempt.claim, Verdict::Delivered, run)
                .await
                .unwrap();
        }
        keys
    }

    #[tokio::test]
    async fn attempts_taken_ahead_are_handed_out_in_order_and_let_go_at_the_end() {
        let (journal, run) = journal(6);
        let queue = JournalQueue::start(journal.clone(), no_merge())
            .unwrap()
            .prefetching(3);
        let first = queue.take(run).await.unwrap().unwrap();
        assert_eq!(first.claim.key, "1");
        // Three more were started ahead; the next two come from them.
        assert_eq!(lock(&queue.ahead.attempts).len(), 3);
        let second = queue.take(run).await.unwrap().unwrap();
        assert_eq!(second.claim.key, "2");
        queue.release(first.claim).await;
        queue.release(second.claim).await;
        queue.release_ahead().await;
        drop(queue);

        // Everything not delivered is free again for the next run.
        let next_run = journal
            .start_run("resume", "test", "http://127.0.0.1/api/v2", None)
            .unwrap();
        let queue = JournalQueue::start(journal, no_merge()).unwrap();
        assert_eq!(
            keys_left(&queue, next_run).await,
            ["1", "2", "3", "4", "5", "6"]
        );
        assert!(!queue.has_pending().await.unwrap());
    }

    #[tokio::test]
    async fn a_verdict_handed_over_is_recorded_before_anything_after_it() {
        let (journal, run) = journal(50);
        let queue = JournalQueue::start(journal.clone(), no_merge())
            .unwrap()
            .prefetching(8);
        assert_eq!(keys_left(&queue, run).await.len(), 50);
        let record = queue.run_record(run).await.unwrap();
        assert_eq!(record.counts.delivered, 50);
        assert_eq!(record.pending, 0);
    }

    #[tokio::test]
    async fn after_a_lost_transaction_nothing_taken_ahead_is_handed_out() {
        let (journal, run) = journal(20);
        let queue = JournalQueue::start(journal.clone(), no_merge())
            .unwrap()
            .prefetching(4);
        let first = queue.take(run).await.unwrap().unwrap();
        assert_eq!(lock(&queue.ahead.attempts).len(), 4);
        // The group holding the next verdict is lost.
        journal.fail_next_commit();
        queue
            .finish(first.claim, Verdict::Delivered, run)
            .await
            .unwrap();
        queue.call(|_, _| Ok(())).await.unwrap();
        assert!(journal.flush().is_err());
        let second = first_taken_ahead(&queue);
        queue.finish(second, Verdict::Delivered, run).await.unwrap();
        // Once the journal's thread has seen it, nothing more is taken.
        let _ = queue.has_pending().await;
        let refused = queue.take(run).await.unwrap_err();
        assert!(matches!(refused, JournalError::Failed { .. }), "{refused}");
        assert!(lock(&queue.ahead.attempts).is_empty());
    }

    fn first_taken_ahead(queue: &JournalQueue) -> Claim {
        queue.ahead.pop().unwrap().claim
    }
}
