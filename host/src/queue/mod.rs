//! The queue between intake and delivery, as delivery sees it: enqueue
//! planned records, take the oldest update whose key is free (claimed and
//! on the wire in one step), let an attempt wait and attempt it again,
//! finish it with a verdict (delivered or dead-lettered), or release it;
//! and the history kept with it: runs and their counts, dead letters.
//! Ordering per key, coalescing and durability are the queue's promises;
//! where it keeps its state is its own business.
//!
//! [`JournalQueue`] (`journal.rs`) is the single-machine implementation:
//! the SQLite journal ([`crate::journal`]) on a thread of its own. A
//! cluster's partition owner implements the workers' part
//! ([`WorkQueue`]) over updates it holds in memory, its durable state
//! being JetStream's ([`crate::cluster`]).

mod combine;
mod journal;

use std::collections::BTreeMap;

use destination_types::{Fact, Request};

use destination_types::{PlanOutcome, Response};
use serde::Serialize;

use crate::journal::{
    Backlog, Checkpoint, Counts, DeadLetter, Earlier, Ingested, LetterFilter, LetterRecord,
    Receipt, RunRecord, RunStats,
};
pub use journal::JournalQueue;

pub use combine::{Combined, Combiner, apart, fold_chain, never, pairwise};

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

/// What the workers need from a queue: take an update, attempt it again,
/// finish it with a verdict or let it go. A cluster's partition owner
/// implements this over what it holds in memory.
pub trait WorkQueue: Send + Sync {
    type Error: std::error::Error + Send + Sync + 'static;

    /// The oldest queued update whose key nobody owns, its key now owned
    /// and the attempt started (later updates folded in; nothing merges
    /// into it now).
    fn take(&self, run: RunId)
    -> impl Future<Output = Result<Option<Attempt>, Self::Error>> + Send;

    /// Starts an attempt again after [`WorkQueue::attempt_failed`]: the request
    /// to send now (updates that arrived meanwhile folded in).
    fn attempt(
        &self,
        claim: Claim,
        run: RunId,
    ) -> impl Future<Output = Result<Request, Self::Error>> + Send;

    /// The attempt ended without a verdict (it will be tried again).
    fn attempt_failed(&self, claim: Claim) -> impl Future<Output = ()> + Send;

    /// Records a verdict; the key is let go, unless its next update is
    /// taken at once (the next [`WorkQueue::take`] may hand it to any worker).
    /// Returns once the verdict is handed over, not necessarily recorded: a
    /// failure to record it makes the next `take` fail.
    fn finish(
        &self,
        claim: Claim,
        verdict: Disposition,
        run: RunId,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// Lets a key go without a verdict; its updates stay queued.
    fn release(&self, claim: Claim) -> impl Future<Output = ()> + Send;

    /// The value remembered under `name` for this destination, if any.
    fn recall(
        &self,
        name: String,
    ) -> impl Future<Output = Result<Option<String>, Self::Error>> + Send;

    /// Remembers and forgets what an answer taught (before the verdict
    /// that ends its delivery is recorded: a fact is a hint the API
    /// checks, so one kept without its verdict costs at most a request).
    fn learn(&self, learned: Learned) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// The attempt's delivery moved on: the claimed update's request
    /// becomes `next`, stored with what the answer taught in one step; the
    /// key stays claimed and the attempt goes on with `next`.
    fn step(
        &self,
        claim: Claim,
        next: Request,
        learned: Learned,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// The workers are done: lets go of whatever was taken ahead for them.
    fn release_ahead(&self) -> impl Future<Output = ()> + Send {
        std::future::ready(())
    }
}

/// A run's identifier in the queue's history.
pub type RunId = i64;

/// One planned record, ready to be journaled.
pub struct Incoming {
    /// Input line (or, for a replay, the dead letter's original line).
    pub line: u64,
    pub record: String,
    pub outcome: PlanOutcome,
    /// The dead letter this record replays, marked replayed in the same
    /// transaction.
    pub replay: Option<Replay>,
}

/// What an intake batch did besides journaling.
#[derive(Debug, Default)]
pub struct IngestReport {
    /// Records merged into an update already queued.
    pub coalesced: u64,
    pub held_back: Vec<HeldBack>,
}

/// A replayed dead letter not sent: its key has a newer update.
#[derive(Clone, Debug, Serialize)]
pub struct HeldBack {
    pub letter: i64,
    pub line: u64,
    pub key: String,
    pub reason: String,
}

/// A dead letter being replayed.
#[derive(Clone, Copy, Debug)]
pub struct Replay {
    pub letter: i64,
    /// When its record was first received (epoch ms): a key that got a
    /// newer delivered or queued update since is not sent its old values.
    pub received_ms: u64,
    /// Send it whatever happened since (`--force`).
    pub force: bool,
}

/// What became of a dispatched update.
// A verdict lives for one call into the queue; boxing the rejection
// would only add an allocation.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq)]
pub enum Disposition {
    Delivered,
    Rejected {
        code: String,
        reason: String,
        request: Option<Request>,
        response: Option<Response>,
    },
}

/// What an answer taught a destination of several steps: facts to
/// remember (a name already remembered takes the new value) and names to
/// forget.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Learned {
    pub remember: Vec<Fact>,
    pub forget: Vec<String>,
}

impl Learned {
    pub fn is_empty(&self) -> bool {
        self.remember.is_empty() && self.forget.is_empty()
    }
}

/// A key handed to one worker: it owns the key's updates until it lets go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claim {
    pub key: String,
    pub seq: i64,
}

/// A claimed update on the wire: nothing merges into it until the attempt
/// fails or ends with a verdict.
#[derive(Clone, Debug, PartialEq)]
pub struct Attempt {
    pub claim: Claim,
    /// What to send: the update with every later one that merged into it.
    pub request: Request,
}

/// What a run needs from a queue: the work, and the history kept with it.
pub trait Queue: WorkQueue {
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

    /// Whether any update is queued.
    fn has_pending(&self) -> impl Future<Output = Result<bool, Self::Error>> + Send;
}

/// What a destination that delivers continuously needs from its queue
/// besides a run's: a run per period, intake answered once per
/// idempotency key, and its figures.
pub trait StreamQueue: Queue {
    /// The run of `destination` for the period that started at
    /// `period_start_ms` (the one receiving already, or a new one); runs of
    /// earlier periods stop receiving.
    fn stream_run(
        &self,
        destination: String,
        api_base: String,
        period_start_ms: u64,
    ) -> impl Future<Output = Result<RunId, Self::Error>> + Send;

    /// Adds request counts to `run`.
    fn add_run_stats(
        &self,
        run: RunId,
        stats: RunStats,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// What is queued, and how old the oldest is.
    fn backlog(&self) -> impl Future<Output = Result<Backlog, Self::Error>> + Send;

    /// The answer given earlier under an idempotency key, if any.
    fn receipt(
        &self,
        key: String,
        digest: String,
    ) -> impl Future<Output = Result<Option<Earlier>, Self::Error>> + Send;

    /// [`Queue::enqueue`] with the answer kept under its idempotency key,
    /// unless the key was answered already.
    fn enqueue_once(
        &self,
        run: RunId,
        batch: Vec<Incoming>,
        receipt: Receipt,
    ) -> impl Future<Output = Result<Ingested, Self::Error>> + Send;

    /// Counts over every run, in total and per audience.
    fn totals(
        &self,
    ) -> impl Future<Output = Result<(Counts, BTreeMap<String, Counts>), Self::Error>> + Send;

    /// The records of the dead letters `filter` selects, to plan again:
    /// (letter, line, record, received ms).
    fn letter_records(
        &self,
        filter: LetterFilter,
    ) -> impl Future<Output = Result<Vec<LetterRecord>, Self::Error>> + Send;
}
