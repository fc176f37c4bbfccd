//! One partition while this worker holds its lease: the partition's
//! consumer feeds intake messages in stream order; their records are
//! planned by each destination's component and held as updates
//! ([`Pending`], one per destination), delivered by the same workers as on
//! one machine ([`Dispatcher`]) under the account's limiter and shared
//! tokens. Messages are acknowledged as their records get verdicts
//! ([`Ledger`]): dead letters are published (and acknowledged by
//! JetStream) before the records they hold are counted done.
//!
//! Letting go gracefully ([`Owner::release`]) stops the feed, lets the
//! updates on the wire finish, acknowledges what is complete and hands
//! the rest over ([`Progress`], the budget the API last reported, the
//! counts). Losing the lease ([`Owner::lose`]) stops every request at once.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use destination_types::{PlanOutcome, RecordFate, Request, Response};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use super::layout::{self, RECEIVED_HEADER};
use super::ledger::{Finished, Ledger, Progress};
use super::pending::{Pending, RecordRef};
use super::runs::{RunDelta, Tally};
use super::{ClusterError, Context, Member};
use crate::delivery::Credentials as _;
use crate::delivery::control::Control;
use crate::delivery::dispatch::{Counters, Dispatcher};
use crate::delivery::planner::plan_items;
use crate::journal::{Attempt, Claim, RunId, Verdict};
use crate::limiter::Line;
use crate::queue::WorkQueue;
use crate::service::account::Account;
use crate::service::intake::{self, Format};

/// Messages asked for per pull.
const PULL_BATCH: usize = 200;
/// How long a pull waits for messages before asking again.
const PULL_WAIT: Duration = Duration::from_secs(1);
/// How often counts and budgets are written to the cluster.
const FLUSH_EVERY: Duration = Duration::from_secs(2);
/// A held message is redelivered only after this (a new owner makes its
/// own consumer instead of waiting for redeliveries).
const ACK_WAIT: Duration = Duration::from_secs(3_600);

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// A dead letter as the letters stream keeps it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Letter {
    pub destination: String,
    pub code: String,
    pub reason: String,
    /// The record as received.
    pub record: String,
    pub received_ms: u64,
    pub failed_ms: u64,
    /// The partition its records go to (where a replay sends it).
    pub partition: u16,
    /// The intake message and the record's place in it.
    pub intake_seq: u64,
    pub index: u32,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub request: Option<Request>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub response: Option<Response>,
}

/// A record held: its text (for a dead letter) and when it arrived.
struct Held {
    text: String,
    received_ms: u64,
}

/// What the partition's tasks share about its messages.
struct Books {
    ctx: Arc<Context>,
    ledger: Mutex<Ledger<jetstream::Message>>,
    records: Mutex<HashMap<RecordRef, Held>>,
    tally: Tally,
    /// A record got its verdict (an acknowledgement may be due, and room
    /// in the window freed).
    progressed: Notify,
}

impl Books {
    /// Publishes a dead letter and waits for JetStream to have it.
    async fn dead_letter(&self, letter: &Letter) -> Result<(), ClusterError> {
        let payload = serde_json::to_vec(letter).map_err(|e| ClusterError::Nats(e.to_string()))?;
        self.ctx
            .js
            .publish(layout::letters_subject(&letter.destination), payload.into())
            .await
            .map_err(|e| ClusterError::Nats(format!("dead letter not published: {e}")))?
            .await
            .map_err(|e| ClusterError::Nats(format!("dead letter not stored: {e}")))?;
        Ok(())
    }

    /// One request of `record` has its verdict.
    fn request_done(&self, destination: &str, record: RecordRef, rejected: bool) {
        let finished = lock(&self.ledger).request_done(record.seq, record.index, rejected);
        if let Some(finished) = finished {
            lock(&self.records).remove(&record);
            // A record counts as received when it has its verdict: a
            // record handed over undecided is counted once, by the owner
            // that decides it.
            let delta = match finished {
                Finished::Delivered => RunDelta {
                    received: 1,
                    delivered: 1,
                    ..RunDelta::default()
                },
                Finished::Rejected => RunDelta::received_rejected(1),
            };
            self.tally.add(destination, &delta);
            self.progressed.notify_waiters();
        }
    }
}

/// One destination's updates in this partition, as its workers see them.
struct Lane {
    member: Arc<Member>,
    pending: Mutex<Pending>,
    books: Arc<Books>,
    control: Mutex<Arc<Control>>,
    counters: Counters,
    line: Line,
}

impl Lane {
    fn work_arrived(&self) {
        lock(&self.control).work_available.notify_waiters();
    }
}

impl WorkQueue for Lane {
    type Error = ClusterError;

    async fn take(&self, _run: RunId) -> Result<Option<Attempt>, ClusterError> {
        Ok(lock(&self.pending).take())
    }

    async fn attempt(&self, claim: Claim, _run: RunId) -> Result<Request, ClusterError> {
        lock(&self.pending)
            .attempt(&claim)
            .ok_or_else(|| ClusterError::Nats(format!("key {} is no longer held", claim.key)))
    }

    async fn attempt_failed(&self, claim: Claim) {
        lock(&self.pending).attempt_failed(&claim);
    }

    async fn finish(
        &self,
        claim: Claim,
        verdict: Verdict,
        _run: RunId,
    ) -> Result<(), ClusterError> {
        let records = lock(&self.pending).finish(&claim);
        let name = &self.member.name;
        match verdict {
            Verdict::Delivered => {
                for record in records {
                    self.books.request_done(name, record, false);
                }
            }
            Verdict::Rejected {
                code,
                reason,
                request,
                response,
            } => {
                let now = self.books.ctx.clock.now_ms();
                for record in records {
                    let (text, received_ms) = lock(&self.books.records)
                        .get(&record)
                        .map(|held| (held.text.clone(), held.received_ms))
                        .unwrap_or_default();
                    let letter = Letter {
                        destination: name.clone(),
                        code: code.clone(),
                        reason: reason.clone(),
                        record: text,
                        received_ms,
                        failed_ms: now,
                        partition: self.member.partition,
                        intake_seq: record.seq,
                        index: record.index,
                        request: request.clone(),
                        response: response.clone(),
                    };
                    self.books.dead_letter(&letter).await?;
                    self.books.request_done(name, record, true);
                }
            }
        }
        self.work_arrived();
        Ok(())
    }

    async fn release(&self, claim: Claim) {
        lock(&self.pending).release(&claim);
    }
}

/// How a partition stops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ending {
    /// Hand over: finish what is on the wire, write the progress.
    Graceful,
    /// The lease may be gone: stop sending now.
    Lost,
}

/// A partition this worker owns.
pub struct Owner {
    pub partition: u16,
    /// The lease's revision (the fencing token).
    revision: AtomicU64,
    books: Arc<Books>,
    lanes: BTreeMap<String, Arc<Lane>>,
    accounts: BTreeMap<String, Arc<Account>>,
    ending: Mutex<Option<Ending>>,
    stop: Notify,
    stopped: AtomicBool,
    /// Handed over: the lease is being let go.
    released: AtomicBool,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl Owner {
    pub fn revision(&self) -> u64 {
        self.revision.load(Ordering::Acquire)
    }

    pub fn renewed(&self, revision: u64) {
        self.revision.store(revision, Ordering::Release);
    }

    /// Whether the partition stopped on its own (its feed failed).
    pub fn has_stopped(&self) -> bool {
        self.stopped.load(Ordering::Acquire)
    }

    /// Whether the partition was handed over (its lease let go).
    pub fn is_released(&self) -> bool {
        self.released.load(Ordering::Acquire)
    }

    /// Updates and records held now.
    pub fn held(&self) -> (usize, usize) {
        let updates = self
            .lanes
            .values()
            .map(|lane| lock(&lane.pending).len())
            .sum();
        (updates, lock(&self.books.ledger).open_records())
    }

    /// Prepares to take the partition over: a fresh consumer from the
    /// oldest message not acknowledged, what the last owner handed over,
    /// the accounts; nothing is read or sent until [`Owner::run`].
    pub async fn start(
        ctx: Arc<Context>,
        partition: u16,
        revision: u64,
    ) -> Result<(Arc<Self>, consumer::PullConsumer, Progress), ClusterError> {
        let stream = ctx
            .js
            .get_stream(layout::INTAKE_STREAM)
            .await
            .map_err(|e| ClusterError::Nats(e.to_string()))?;
        let name = layout::consumer_name(partition);
        // Whatever the last owner was sent and did not acknowledge is
        // delivered again, from the oldest: a new consumer starts there.
        let _ = stream.delete_consumer(&name).await;
        let consumer: consumer::PullConsumer = stream
            .create_consumer(consumer::pull::Config {
                durable_name: Some(name.clone()),
                filter_subject: layout::partition_filter(partition),
                ack_policy: consumer::AckPolicy::Explicit,
                deliver_policy: consumer::DeliverPolicy::All,
                ack_wait: ACK_WAIT,
                max_ack_pending: -1,
                ..Default::default()
            })
            .await
            .map_err(|e| ClusterError::Nats(format!("consumer {name}: {e}")))?;
        let progress: Progress = match ctx.buckets.progress.get(layout::lease_key(partition)).await
        {
            Ok(Some(bytes)) => serde_json::from_slice(&bytes).unwrap_or_default(),
            _ => Progress::default(),
        };
        let books = Arc::new(Books {
            ctx: ctx.clone(),
            ledger: Mutex::default(),
            records: Mutex::default(),
            tally: Tally::default(),
            progressed: Notify::new(),
        });
        let mut accounts = BTreeMap::new();
        let mut lanes = BTreeMap::new();
        for member in ctx.members.iter().filter(|m| m.partition == partition) {
            if !accounts.contains_key(&member.account) {
                let account = ctx.account(&member.account).await?;
                accounts.insert(member.account.clone(), Arc::new(account));
            }
            lanes.insert(
                member.name.clone(),
                Arc::new(Lane {
                    member: member.clone(),
                    pending: Mutex::new(Pending::new(member.merge.clone())),
                    books: books.clone(),
                    control: Mutex::default(),
                    counters: Counters::default(),
                    line: Line::default(),
                }),
            );
        }
        let owner = Arc::new(Self {
            partition,
            revision: AtomicU64::new(revision),
            books,
            lanes,
            accounts,
            ending: Mutex::default(),
            stop: Notify::new(),
            stopped: AtomicBool::new(false),
            released: AtomicBool::new(false),
            tasks: Mutex::default(),
        });
        Ok((owner, consumer, progress))
    }

    /// Starts reading and delivering (once the lease is confirmed).
    pub fn run(self: &Arc<Self>, consumer: consumer::PullConsumer, progress: Progress) {
        tracing::info!(
            partition = self.partition,
            revision = self.revision(),
            "partition taken"
        );
        let mut tasks = vec![
            tokio::spawn(feed(self.clone(), consumer, progress)),
            tokio::spawn(acknowledge(self.clone())),
            tokio::spawn(flush_every(self.clone())),
        ];
        for lane in self.lanes.values() {
            let account = self.accounts[&lane.member.account].clone();
            tasks.push(tokio::spawn(supervise(self.clone(), lane.clone(), account)));
        }
        *lock(&self.tasks) = tasks;
    }

    fn ending(&self) -> Option<Ending> {
        *lock(&self.ending)
    }

    fn end(&self, how: Ending) {
        {
            let mut ending = lock(&self.ending);
            if *ending == Some(Ending::Lost) {
                return;
            }
            *ending = Some(how);
        }
        for lane in self.lanes.values() {
            let control = lock(&lane.control).clone();
            match how {
                Ending::Graceful => control.wind_down(),
                Ending::Lost => control.interrupt(),
            }
        }
        self.stop.notify_waiters();
        self.books.progressed.notify_waiters();
    }

    /// The lease may have expired: every request stops now (those on the
    /// wire are abandoned; their updates stay in the stream).
    pub async fn lose(&self) {
        self.end(Ending::Lost);
        let tasks = std::mem::take(&mut *lock(&self.tasks));
        for task in &tasks {
            task.abort();
        }
        for task in tasks {
            let _ = task.await;
        }
        tracing::warn!(partition = self.partition, "partition lost");
    }

    /// Hands the partition over: no new message is read, the updates on
    /// the wire finish (within `grace`), what is complete is acknowledged
    /// and the rest of what is done handed over; then the lease goes.
    pub async fn release(&self, grace: Duration) {
        self.end(Ending::Graceful);
        let tasks = std::mem::take(&mut *lock(&self.tasks));
        let all = futures::future::join_all(tasks);
        tokio::pin!(all);
        if tokio::time::timeout(grace, &mut all).await.is_err() {
            tracing::warn!(
                partition = self.partition,
                "requests still on the wire after {grace:?}: abandoned (they will be sent again)"
            );
            self.end(Ending::Lost);
            all.await;
        }
        let ctx = &self.books.ctx;
        let mut unconfirmed = VecDeque::new();
        ack_complete(self, &mut unconfirmed).await;
        if !unconfirmed.is_empty() {
            // Sent again by the next owner, in order.
            tracing::warn!(
                partition = self.partition,
                "{} acknowledgements not confirmed at hand-over",
                unconfirmed.len()
            );
        }
        let progress = lock(&self.books.ledger).progress();
        let key = layout::lease_key(self.partition);
        let written = match serde_json::to_vec(&progress) {
            Ok(bytes) => ctx.buckets.progress.put(&key, bytes.into()).await.is_ok(),
            Err(_) => false,
        };
        if !written {
            tracing::warn!(
                partition = self.partition,
                "progress not handed over: the next owner sends the records done beyond the acknowledged ones again"
            );
        }
        flush(self).await;
        self.released.store(true, Ordering::Release);
        if let Err(e) = ctx
            .buckets
            .leases
            .delete_expect_revision(&key, Some(self.revision()))
            .await
        {
            tracing::warn!(
                partition = self.partition,
                "lease not let go ({e}); it expires"
            );
        }
        tracing::info!(partition = self.partition, "partition handed over");
    }
}

/// Reads the partition's messages while there is room in the window.
async fn feed(owner: Arc<Owner>, consumer: consumer::PullConsumer, progress: Progress) {
    let books = &owner.books;
    let window = books.ctx.settings.window_records.max(1);
    let mut last_delivery: Option<u64> = None;
    loop {
        if owner.ending().is_some() {
            return;
        }
        let room = lock(&books.ledger).open_records() < window;
        if !room {
            let progressed = books.progressed.notified();
            tokio::pin!(progressed);
            progressed.as_mut().enable();
            if lock(&books.ledger).open_records() >= window && owner.ending().is_none() {
                let _ = tokio::time::timeout(PULL_WAIT, progressed).await;
            }
            continue;
        }
        let batch = consumer
            .fetch()
            .max_messages(PULL_BATCH)
            .expires(PULL_WAIT)
            .messages()
            .await;
        let mut messages = match batch {
            Ok(messages) => messages,
            Err(e) => {
                tracing::warn!(partition = owner.partition, "cannot pull: {e}");
                tokio::time::sleep(PULL_WAIT).await;
                continue;
            }
        };
        let stop = owner.stop.notified();
        tokio::pin!(stop);
        stop.as_mut().enable();
        loop {
            let next = tokio::select! {
                next = messages.next() => next,
                () = &mut stop => return,
            };
            let Some(message) = next else { break };
            let message = match message {
                Ok(message) => message,
                Err(e) => {
                    tracing::warn!(partition = owner.partition, "pull failed: {e}");
                    break;
                }
            };
            let Ok(info) = message.info() else { continue };
            let (seq, delivery) = (info.stream_sequence, info.consumer_sequence);
            // Deliveries are numbered: one that never arrived must not be
            // acknowledged with a later one. Take the partition again.
            if last_delivery.is_some_and(|last| delivery != last + 1) {
                tracing::warn!(
                    partition = owner.partition,
                    "a delivery went missing ({last_delivery:?} then {delivery}); handing the partition over to start again"
                );
                owner.stopped.store(true, Ordering::Release);
                return;
            }
            last_delivery = Some(delivery);
            let published_ms = u64::try_from(info.published.unix_timestamp_nanos() / 1_000_000)
                .unwrap_or_default();
            if let Err(e) = take_in(&owner, message, seq, published_ms, &progress).await {
                tracing::warn!(
                    partition = owner.partition,
                    "message {seq}: {e}; handing the partition over"
                );
                owner.stopped.store(true, Ordering::Release);
                return;
            }
        }
    }
}

/// Plans one intake message's records and holds their updates.
async fn take_in(
    owner: &Owner,
    message: jetstream::Message,
    seq: u64,
    published_ms: u64,
    progress: &Progress,
) -> Result<(), ClusterError> {
    let books = &owner.books;
    let received_ms = message
        .headers
        .as_ref()
        .and_then(|h| h.get(RECEIVED_HEADER))
        .and_then(|v| v.as_str().parse().ok())
        .unwrap_or(published_ms);
    let destination = layout::destination_of(message.subject.as_str())
        .unwrap_or_default()
        .to_owned();
    let letter = |index: u32, record: String, code: &str, reason: String| Letter {
        destination: destination.clone(),
        code: code.into(),
        reason,
        record,
        received_ms,
        failed_ms: books.ctx.clock.now_ms(),
        partition: owner.partition,
        intake_seq: seq,
        index,
        request: None,
        response: None,
    };
    let whole = || String::from_utf8_lossy(&message.payload).into_owned();
    let Some(lane) = owner.lanes.get(&destination) else {
        let reason = match books.ctx.members.iter().find(|m| m.name == destination) {
            Some(m) => format!(
                "destination {destination} is on account {:?}, whose records go to partition {}, not {}",
                m.account, m.partition, owner.partition
            ),
            None => format!("no destination {destination:?} in this worker's destinations file"),
        };
        books
            .dead_letter(&letter(0, whole(), "unknown-destination", reason))
            .await?;
        books
            .tally
            .add(&destination, &RunDelta::received_rejected(1));
        lock(&books.ledger).admit(seq, Vec::new(), message);
        books.progressed.notify_waiters();
        return Ok(());
    };
    if !lock(&books.ledger).is_new(seq) {
        // A redelivery of a message held already.
        return Ok(());
    }
    let format = match message.payload.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'[') => Format::JsonArray,
        _ => Format::Ndjson,
    };
    let items = match intake::records(&message.payload, format, books.ctx.max_record_bytes) {
        Ok(items) => items,
        Err(e) => {
            books
                .dead_letter(&letter(0, whole(), "unreadable-message", e.to_string()))
                .await?;
            books
                .tally
                .add(&destination, &RunDelta::received_rejected(1));
            lock(&books.ledger).admit(seq, Vec::new(), message);
            books.progressed.notify_waiters();
            return Ok(());
        }
    };
    let planned = lane
        .member
        .guest
        .with_planner(move |destination| plan_items(destination, items))
        .await
        .map_err(|e| ClusterError::Component(e.to_string()))?;
    let mut requests = Vec::with_capacity(planned.len());
    let mut updates = Vec::new();
    let mut delta = RunDelta::default();
    for (index, (item, outcome)) in planned.into_iter().enumerate() {
        let index = u32::try_from(index).unwrap_or(u32::MAX);
        if progress.is_done(seq, index) {
            requests.push(0);
            continue;
        }
        match outcome {
            PlanOutcome::Send(planned) if !planned.is_empty() => {
                requests.push(u32::try_from(planned.len()).unwrap_or(u32::MAX));
                let record = RecordRef { seq, index };
                lock(&books.records).insert(
                    record,
                    Held {
                        text: item.text,
                        received_ms,
                    },
                );
                updates.extend(planned.into_iter().map(|request| (request, record)));
            }
            PlanOutcome::Send(_) | PlanOutcome::Skip(_) => {
                requests.push(0);
                delta.received += 1;
                delta.skipped += 1;
            }
            PlanOutcome::Invalid(error) if error.fate == RecordFate::Skipped => {
                requests.push(0);
                delta.received += 1;
                delta.skipped += 1;
            }
            PlanOutcome::Invalid(error) => {
                books
                    .dead_letter(&letter(index, item.text, &error.code, error.message))
                    .await?;
                requests.push(0);
                delta.received += 1;
                delta.rejected += 1;
            }
        }
    }
    books.tally.add(&destination, &delta);
    if !lock(&books.ledger).admit(seq, requests, message) {
        // A redelivery of a message held already.
        return Ok(());
    }
    // Merging calls into the component: off the async runtime's threads.
    let held = lane.clone();
    tokio::task::spawn_blocking(move || {
        let mut pending = lock(&held.pending);
        for (request, record) in updates {
            pending.push(request, record);
        }
    })
    .await
    .map_err(|e| ClusterError::Component(e.to_string()))?;
    lane.work_arrived();
    books.progressed.notify_waiters();
    Ok(())
}

/// Acknowledges complete messages as records get their verdicts.
async fn acknowledge(owner: Arc<Owner>) {
    let mut unconfirmed = VecDeque::new();
    loop {
        let progressed = owner.books.progressed.notified();
        tokio::pin!(progressed);
        progressed.as_mut().enable();
        ack_complete(&owner, &mut unconfirmed).await;
        if owner.ending().is_some() {
            return;
        }
        let _ = tokio::time::timeout(PULL_WAIT, progressed).await;
    }
}

/// Acknowledges the complete prefix, in order, each acknowledgement
/// confirmed by the servers: one lost would leave its message to be sent
/// again by the next owner after newer ones.
async fn ack_complete(owner: &Owner, unconfirmed: &mut VecDeque<jetstream::Message>) {
    let complete = lock(&owner.books.ledger).ackable();
    unconfirmed.extend(complete.into_iter().map(|(_, message)| message));
    while let Some(message) = unconfirmed.front() {
        if let Err(e) = message.double_ack().await {
            tracing::warn!(
                partition = owner.partition,
                "acknowledgement not confirmed: {e}"
            );
            return;
        }
        unconfirmed.pop_front();
    }
}

/// Runs a destination's workers; after they stop for another reason than
/// the partition's end (a login needed), pauses and starts them again.
async fn supervise(owner: Arc<Owner>, lane: Arc<Lane>, account: Arc<Account>) {
    let ctx = &owner.books.ctx;
    let run = AtomicI64::new(0);
    let intake_done = AtomicBool::new(false);
    let last_verdict_ms = AtomicU64::new(ctx.clock.now_ms());
    loop {
        let control = Arc::new(Control::default());
        *lock(&lane.control) = control.clone();
        match owner.ending() {
            Some(Ending::Graceful) => control.wind_down(),
            Some(Ending::Lost) => return,
            None => {}
        }
        let dispatcher = Dispatcher {
            api: &lane.member.api,
            limiter: &account.limiter,
            line: &lane.line,
            credentials: &*account,
            guest: &lane.member.guest,
            queue: &*lane,
            policy: lane.member.policy,
            run: &run,
            control: &control,
            counters: &lane.counters,
            intake_done: &intake_done,
            last_verdict_ms: &last_verdict_ms,
            progress: None,
            clock: ctx.clock,
        };
        futures::future::join_all((0..lane.member.concurrency.max(1)).map(|_| dispatcher.work()))
            .await;
        if owner.ending().is_some() {
            break;
        }
        let why = control
            .stopped()
            .unwrap_or_else(|| "the workers ended".into());
        tracing::warn!(
            destination = %lane.member.name,
            "delivery paused: {why}; trying again in {:?}",
            ctx.restart_after
        );
        if control.login_required() {
            account.reload_tokens();
        }
        let stop = owner.stop.notified();
        tokio::pin!(stop);
        stop.as_mut().enable();
        if owner.ending().is_some() {
            break;
        }
        tokio::select! {
            () = tokio::time::sleep(ctx.restart_after) => {}
            () = stop => {}
        }
    }
    account.settle().await;
}

/// Writes the counts and budgets now and then.
async fn flush_every(owner: Arc<Owner>) {
    loop {
        let stop = owner.stop.notified();
        tokio::pin!(stop);
        stop.as_mut().enable();
        if owner.ending().is_some() {
            return;
        }
        tokio::select! {
            () = tokio::time::sleep(FLUSH_EVERY) => flush(&owner).await,
            () = stop => return,
        }
    }
}

/// The budget the API last reported for an account, handed to its next
/// owner.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct HandedBudget {
    pub remaining: u32,
    pub reset_ms: u64,
}

/// Adds the counts since the last flush to the cluster's runs and stores
/// what each account's budget looks like.
async fn flush(owner: &Owner) {
    let ctx = &owner.books.ctx;
    for lane in owner.lanes.values() {
        owner
            .books
            .tally
            .add_requests(&lane.member.name, &lane.counters);
    }
    owner.books.tally.flush(ctx).await;
    for (name, account) in &owner.accounts {
        if let Some((remaining, reset_ms)) = account.limiter.reported() {
            let handed = HandedBudget {
                remaining,
                reset_ms,
            };
            if let Ok(bytes) = serde_json::to_vec(&handed) {
                let _ = ctx
                    .buckets
                    .budgets
                    .put(layout::account_key(name), bytes.into())
                    .await;
            }
        }
    }
}
