//! One partition while this worker holds its lease: [`Owner::start`]
//! makes the partition's consumer and accounts, [`Owner::run`] starts the
//! feed (`feed.rs`), the destinations' workers (each over its `Lane`), the
//! in-order acknowledgements (which count the records) and the periodic
//! writes of request counts and budgets. Messages are acknowledged as
//! their records get verdicts ([`super::ledger`]).
//!
//! Letting go gracefully ([`Owner::release`]) stops the feed, lets the
//! updates on the wire finish, acknowledges what is complete and hands
//! the rest over ([`Progress`], the budget the API last reported, the
//! counts). Losing the lease ([`Owner::lose`]) stops every request at once.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::consumer;
use futures::TryStreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use super::acknowledge::{Acknowledgements, acknowledge, acknowledge_complete};
use super::feed::feed;
use super::lane::{Books, Lane};
use super::layout;
use super::ledger::Progress;
use super::pending::Pending;
use super::runs::Unflushed;
use super::{ClusterError, Context};
use crate::account::Account;
use crate::delivery::{Driver, Handle, Standing, Supervisor};

/// How long a pull waits for messages before asking again.
pub(super) const PULL_WAIT: Duration = Duration::from_secs(1);
/// How often counts and budgets are written to the cluster.
const FLUSH_EVERY: Duration = Duration::from_secs(2);
/// A held message is redelivered only after this (a new owner makes its
/// own consumer instead of waiting for redeliveries).
const ACK_WAIT: Duration = Duration::from_secs(3_600);

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// How a partition stops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Ending {
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
    pub(super) books: Arc<Books>,
    pub(super) lanes: BTreeMap<String, Arc<Lane>>,
    accounts: BTreeMap<String, Arc<Account>>,
    pub(super) ending: Mutex<Option<Ending>>,
    pub(super) stop: Notify,
    pub(super) stopped: AtomicBool,
    /// Handed over: the lease is being let go.
    released: AtomicBool,
    pub(super) acknowledgements: tokio::sync::Mutex<Acknowledgements>,
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
        let name = layout::consumer_name(partition, revision);
        // Whatever the last owner was sent and did not acknowledge is
        // delivered again, from the oldest: a new consumer starts there,
        // once the last owner's is gone (a work-queue stream allows one
        // consumer per subject). A consumer made with a newer lease means
        // this one expired while the partition was being prepared: the
        // newer owner's consumer stays.
        let names: Vec<String> = stream
            .consumer_names()
            .try_collect()
            .await
            .map_err(|e| ClusterError::Nats(format!("cannot list consumers: {e}")))?;
        for old in names
            .iter()
            .filter(|n| layout::consumer_partition(n) == Some(partition))
        {
            if layout::consumer_revision(old).is_some_and(|newer| newer > revision) {
                return Err(ClusterError::Nats(format!(
                    "partition {partition} has a newer owner (consumer {old})"
                )));
            }
            let _ = stream.delete_consumer(old).await;
        }
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
            tally: Unflushed::default(),
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
                    pending: Mutex::new(Pending::new()),
                    books: books.clone(),
                    delivery: Handle::new(0, ctx.clock.now_ms()),
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
            acknowledgements: tokio::sync::Mutex::default(),
            tasks: Mutex::default(),
        });
        Ok((owner, consumer, progress))
    }

    /// Deletes the consumer [`Owner::start`] made, for a partition not
    /// taken after all (its lease could not be confirmed): it would hold
    /// the partition's subjects until the next owner deletes it.
    pub async fn discard(&self, consumer: &consumer::PullConsumer) {
        let name = &consumer.cached_info().name;
        let deleted = match self.books.ctx.js.get_stream(layout::INTAKE_STREAM).await {
            Ok(stream) => stream
                .delete_consumer(name)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        if let Err(e) = deleted {
            tracing::warn!(
                partition = self.partition,
                "consumer {name} not deleted: {e}"
            );
        }
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

    pub(super) fn ending(&self) -> Option<Ending> {
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
            match how {
                Ending::Graceful => lane.delivery.wind_down(),
                Ending::Lost => lane.delivery.interrupt(),
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
        acknowledge_complete(self).await;
        let unfinished = self.acknowledgements.lock().await.unfinished();
        if unfinished > 0 {
            // Sent again by the next owner, in order (and not counted
            // twice).
            tracing::warn!(
                partition = self.partition,
                "{unfinished} acknowledgements not confirmed at hand-over",
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

/// Runs a destination's workers; after they stop for another reason than
/// the partition's end (a login needed), pauses and starts them again.
async fn supervise(owner: Arc<Owner>, lane: Arc<Lane>, account: Arc<Account>) {
    let ctx = &owner.books.ctx;
    let driver = Driver {
        api: &lane.member.api,
        limiter: &account.limiter,
        credentials: &*account,
        guest: &lane.member.guest,
        queue: &*lane,
        policy: lane.member.policy,
        concurrency: lane.member.concurrency,
        clock: ctx.clock,
        handle: &lane.delivery,
        progress: None,
    };
    let supervisor = LaneSupervision {
        owner: &owner,
        lane: &lane,
        account: &account,
    };
    driver.supervise(&supervisor, ctx.restart_after).await;
}

/// A lane's part in its workers' restarts: the partition's end ends them,
/// and a login needed reads the account's tokens again.
struct LaneSupervision<'a> {
    owner: &'a Owner,
    lane: &'a Lane,
    account: &'a Account,
}

impl Supervisor for LaneSupervision<'_> {
    fn standing(&self) -> Standing {
        match self.owner.ending() {
            None => Standing::Go,
            Some(Ending::Graceful) => Standing::WindDown,
            Some(Ending::Lost) => Standing::Stop,
        }
    }

    fn paused(&self, why: &str, login_required: bool) {
        tracing::warn!(
            destination = %self.lane.member.name,
            "delivery paused: {why}; trying again in {:?}",
            self.owner.books.ctx.restart_after
        );
        if login_required {
            self.account.reload_tokens();
        }
    }

    async fn woken(&self) {
        self.owner.stop.notified().await;
    }
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
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HandedBudget {
    pub remaining: u32,
    pub reset_ms: u64,
    /// The budget the account's recent windows used, as the API told its
    /// owners (absent from what workers before them stored).
    #[serde(default)]
    pub windows: Vec<crate::limiter::WindowUse>,
}

/// Adds the counts since the last flush to the cluster's runs and stores
/// what each account's budget looks like.
async fn flush(owner: &Owner) {
    let ctx = &owner.books.ctx;
    for lane in owner.lanes.values() {
        owner
            .books
            .tally
            .add_requests(&lane.member.name, &lane.delivery.requests());
    }
    owner.books.tally.flush(ctx).await;
    for (name, account) in &owner.accounts {
        if let Some((remaining, reset_ms)) = account.limiter.reported() {
            let handed = HandedBudget {
                remaining,
                reset_ms,
                windows: account.limiter.windows_used(),
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
