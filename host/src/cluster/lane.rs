//! One destination's updates in a partition, as its workers see them
//! ([`Lane`], the workers' queue), and what the partition's tasks share
//! about its messages ([`Books`]): the ledger, the records' texts for dead
//! letters, the counts.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_nats::jetstream;
use destination_types::{Request, Response};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use super::ledger::Ledger;
use super::pending::{Pending, RecordRef};
use super::runs::Unflushed;
use super::{ClusterDestination, ClusterError, Context, layout};
use crate::delivery::Handle;
use crate::queue::WorkQueue;
use crate::queue::{Attempt, Claim, Disposition, Learned, RunId};

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
    /// The record's line (or position) in the batch it was posted in,
    /// when known.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub batch_line: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub request: Option<Request>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub response: Option<Response>,
}

/// A record held: its text (for a dead letter) and when it arrived.
pub(super) struct Held {
    pub(super) text: String,
    pub(super) received_ms: u64,
    pub(super) batch_line: Option<u64>,
}

/// An intake message held until it is acknowledged, and where its
/// records count.
pub(super) struct HeldMessage {
    pub(super) message: jetstream::Message,
    pub(super) destination: String,
    pub(super) received_ms: u64,
}

/// What the partition's tasks share about its messages.
pub(super) struct Books {
    pub(super) ctx: Arc<Context>,
    pub(super) ledger: Mutex<Ledger<HeldMessage>>,
    pub(super) records: Mutex<HashMap<RecordRef, Held>>,
    pub(super) tally: Unflushed,
    /// A record got its verdict (an acknowledgement may be due, and room
    /// in the window freed).
    pub(super) progressed: Notify,
}

impl Books {
    /// Publishes a dead letter and waits for JetStream to have it. A
    /// message redelivered (its owner died, or it changed hands) plans its
    /// records again: the letter's id — its intake message and place in
    /// it — makes JetStream keep the first letter and drop the repeats.
    pub(super) async fn dead_letter(&self, letter: &Letter) -> Result<(), ClusterError> {
        let payload = serde_json::to_vec(letter).map_err(|e| ClusterError::Nats(e.to_string()))?;
        let publish = jetstream::message::PublishMessage::build()
            .payload(payload.into())
            .message_id(layout::letter_id(
                letter.partition,
                letter.intake_seq,
                letter.index,
            ));
        self.ctx
            .js
            .send_publish(layout::letters_subject(&letter.destination), publish)
            .await
            .map_err(|e| ClusterError::Nats(format!("dead letter not published: {e}")))?
            .await
            .map_err(|e| ClusterError::Nats(format!("dead letter not stored: {e}")))?;
        Ok(())
    }

    /// One request of `record` has its verdict (the ledger counts the
    /// record's when it was its last).
    pub(super) fn request_done(&self, record: RecordRef, rejected: bool) {
        let finished = lock(&self.ledger).request_done(record.seq, record.index, rejected);
        if finished.is_some() {
            lock(&self.records).remove(&record);
            self.progressed.notify_waiters();
        }
    }
}

/// One destination's updates in this partition, as its workers see them.
pub(super) struct Lane {
    pub(super) member: Arc<ClusterDestination>,
    pub(super) pending: Mutex<Pending>,
    pub(super) books: Arc<Books>,
    /// The workers' hold: their stop, what they counted.
    pub(super) delivery: Handle,
}

impl Lane {
    pub(super) fn work_arrived(&self) {
        self.delivery.wake();
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
        verdict: Disposition,
        _run: RunId,
    ) -> Result<(), ClusterError> {
        let records = lock(&self.pending).finish(&claim);
        let name = &self.member.name;
        match verdict {
            Disposition::Delivered => {
                for record in records {
                    self.books.request_done(record, false);
                }
            }
            Disposition::Rejected {
                code,
                reason,
                request,
                response,
            } => {
                let now = self.books.ctx.clock.now_ms();
                for record in records {
                    let (text, received_ms, batch_line) = lock(&self.books.records)
                        .get(&record)
                        .map(|held| (held.text.clone(), held.received_ms, held.batch_line))
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
                        batch_line,
                        request: request.clone(),
                        response: response.clone(),
                    };
                    self.books.dead_letter(&letter).await?;
                    self.books.request_done(record, true);
                }
            }
        }
        self.work_arrived();
        Ok(())
    }

    async fn release(&self, claim: Claim) {
        lock(&self.pending).release(&claim);
    }

    async fn recall(&self, name: String) -> Result<Option<String>, ClusterError> {
        let key = layout::fact_key(&self.member.name, &name);
        let value = self
            .books
            .ctx
            .buckets
            .facts
            .get(&key)
            .await
            .map_err(|e| ClusterError::Nats(format!("fact {name:?} not read: {e}")))?;
        Ok(value.map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    async fn learn(&self, learned: Learned) -> Result<(), ClusterError> {
        let facts = &self.books.ctx.buckets.facts;
        for name in &learned.forget {
            facts
                .delete(layout::fact_key(&self.member.name, name))
                .await
                .map_err(|e| ClusterError::Nats(format!("fact {name:?} not forgotten: {e}")))?;
        }
        for fact in learned.remember {
            facts
                .put(
                    layout::fact_key(&self.member.name, &fact.name),
                    fact.value.into_bytes().into(),
                )
                .await
                .map_err(|e| {
                    ClusterError::Nats(format!("fact {:?} not remembered: {e}", fact.name))
                })?;
        }
        Ok(())
    }

    /// The step is held in memory like the update; should this owner die,
    /// the intake message is delivered again and its record planned from
    /// the first step, which the remembered facts and the component's
    /// handling of a create refused as taken make safe to repeat.
    async fn step(
        &self,
        claim: Claim,
        next: Request,
        learned: Learned,
    ) -> Result<(), ClusterError> {
        self.learn(learned).await?;
        if lock(&self.pending).step(&claim, next) {
            Ok(())
        } else {
            Err(ClusterError::Nats(format!(
                "key {} is no longer held",
                claim.key
            )))
        }
    }
}
