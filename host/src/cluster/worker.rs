//! One worker of the cluster: it takes records for any destination (and
//! publishes them to the intake stream), and delivers the partitions it
//! holds leases for.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use async_nats::jetstream::message::PublishMessage;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::lane::Letter;
use super::layout::{self, LINES_HEADER, PLANNED_HEADER, RECEIVED_HEADER, REFUSED_HEADER};
use super::partition::Owner;
use super::receipts::{self, Receipt};
use super::{Context, leases};
use crate::delivery::plan_items;
use crate::input::Item;
use crate::intake::{Accept, AcceptError, Acceptance, Accepted, IdempotencyKey, Record};
use destination_types::PlanOutcome;

/// Publishing a batch is tried this many times more (0.25 + 0.5 + 1 s).
const PUBLISH_TRIES: u32 = 3;

/// A partition held, as the lease keeper sees it.
#[derive(Clone)]
pub struct Holding {
    pub owner: Arc<Owner>,
    /// Sending must stop by then unless the lease is renewed.
    pub valid_until: Instant,
    /// Being handed over.
    pub releasing: bool,
}

pub struct Worker {
    ctx: Arc<Context>,
    owners: Mutex<BTreeMap<u16, Holding>>,
    draining: AtomicBool,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    releases: Mutex<Vec<JoinHandle<()>>>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// What a worker holds, for health checks and the status page.
#[derive(Clone, Debug, Default)]
pub struct WorkerStatus {
    pub worker: String,
    /// Partition → (updates held, records waiting).
    pub partitions: BTreeMap<u16, (usize, usize)>,
}

impl Worker {
    /// Starts taking partitions.
    pub fn start(ctx: Context) -> Arc<Self> {
        let worker = Arc::new(Self {
            ctx: Arc::new(ctx),
            owners: Mutex::default(),
            draining: AtomicBool::new(false),
            tasks: Mutex::default(),
            releases: Mutex::default(),
        });
        let tasks = vec![
            tokio::spawn(leases::keep(worker.clone())),
            tokio::spawn(leases::share_out(worker.clone())),
            tokio::spawn(leases::watch(worker.clone())),
        ];
        *lock(&worker.tasks) = tasks;
        worker
    }

    pub fn context(&self) -> &Arc<Context> {
        &self.ctx
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    pub fn owners(&self) -> BTreeMap<u16, Holding> {
        lock(&self.owners).clone()
    }

    pub fn status(&self) -> WorkerStatus {
        WorkerStatus {
            worker: self.ctx.settings.worker.clone(),
            partitions: self
                .owners()
                .into_iter()
                .map(|(p, h)| (p, h.owner.held()))
                .collect(),
        }
    }

    pub(super) fn valid_until(&self, partition: u16, until: Instant) {
        if let Some(held) = lock(&self.owners).get_mut(&partition) {
            held.valid_until = until;
        }
    }

    /// Starts delivering `partition`, whose lease was just created.
    pub(super) async fn take(&self, partition: u16, revision: u64) -> bool {
        match Owner::start(self.ctx.clone(), partition, revision).await {
            Ok((owner, consumer, progress)) => {
                // Nothing was sent yet: without a confirmed lease, nothing is.
                let Some((revision, valid_until)) =
                    leases::confirm(self, partition, revision).await
                else {
                    tracing::warn!(partition, "the lease could not be confirmed; not taken");
                    owner.discard(&consumer).await;
                    return false;
                };
                owner.renewed(revision);
                owner.run(consumer, progress);
                lock(&self.owners).insert(
                    partition,
                    Holding {
                        owner,
                        valid_until,
                        releasing: false,
                    },
                );
                true
            }
            Err(e) => {
                tracing::warn!(partition, "cannot take the partition: {e}");
                false
            }
        }
    }

    /// Hands `partition` over in the background (its lease is renewed
    /// until it is let go).
    pub(super) fn release(self: &Arc<Self>, partition: u16) {
        let owner = {
            let mut owners = lock(&self.owners);
            let Some(held) = owners.get_mut(&partition) else {
                return;
            };
            if held.releasing {
                return;
            }
            held.releasing = true;
            held.owner.clone()
        };
        let worker = self.clone();
        let task = tokio::spawn(async move {
            owner.release(worker.ctx.grace).await;
            lock(&worker.owners).remove(&partition);
        });
        let mut releases = lock(&self.releases);
        releases.retain(|release| !release.is_finished());
        releases.push(task);
    }

    /// Gives `partition` up at once: its lease may be someone else's.
    pub(super) async fn lose(&self, partition: u16) {
        let held = lock(&self.owners).remove(&partition);
        if let Some(held) = held {
            held.owner.lose().await;
        }
    }

    /// Plans a batch (for the answer) and publishes its records to the
    /// intake stream; returns once JetStream has them. Records the reader
    /// refused are dead letters at once.
    pub async fn accept(
        &self,
        destination: &str,
        records: Vec<Item>,
        idempotency_key: Option<IdempotencyKey>,
    ) -> Result<Acceptance, AcceptError> {
        if self.is_draining() {
            return Err(AcceptError::Draining);
        }
        let nats = AcceptError::Cluster;
        let member = self
            .ctx
            .members
            .iter()
            .find(|m| m.name == destination)
            .ok_or_else(|| AcceptError::Component(format!("no destination {destination}")))?
            .clone();
        let planned = member
            .guest
            .with_planner(move |d| plan_items(d, records))
            .await
            .map_err(|e| AcceptError::Component(e.to_string()))?;
        let mut answer = Accepted::default();
        let mut texts = Vec::with_capacity(planned.len());
        let mut lines = Vec::with_capacity(planned.len());
        let mut refused = Vec::new();
        // The answer names a record by its place in the batch.
        for (index, (item, outcome)) in (0u64..).zip(planned) {
            answer.count(index, &outcome);
            match (item.refused, outcome) {
                // An NDJSON line that is not JSON cannot travel inside the
                // message's JSON array: its letter is written here.
                (None, PlanOutcome::Invalid(error))
                    if serde_json::from_str::<serde::de::IgnoredAny>(&item.text).is_err() =>
                {
                    refused.push((index, item.text, (error.code, error.message)));
                }
                (None, outcome) => {
                    lines.push(item.line);
                    texts.push(layout::planned_record(&item.text, &outcome).map_err(nats)?);
                }
                (Some(why), _) => {
                    refused.push((index, item.text, (why.code.to_owned(), why.message)))
                }
            }
        }
        // A message may not exceed the servers' `max_payload` (1 MiB by
        // default) while a batch may be `max_body_bytes` (16 MiB): a batch
        // travels as as many messages as it needs, published in order.
        let limit = self
            .ctx
            .js
            .client()
            .server_info()
            .max_payload
            .saturating_sub(PAYLOAD_HEADROOM);
        // Checked before anything is published: a refused batch leaves nothing.
        let mut messages = pack(&texts, limit).map_err(|(index, size)| {
            AcceptError::TooLarge(format!(
                "record {index} is {size} bytes, more than a NATS message may carry ({limit} bytes: the servers' max_payload)"
            ))
        })?;
        // The records refused here count in the runs with the batch's
        // first message, exactly once (as the owner counts it); a batch of
        // refused records only travels as an empty message.
        let refused_here = refused.len();
        if messages.is_empty() && refused_here > 0 {
            messages.push((bytes::Bytes::from_static(b"[]"), 0..0));
        }
        let first = serde_json::to_string(&answer).map_err(|e| nats(e.to_string()))?;
        let earlier = match &idempotency_key {
            None => Receipt::New,
            Some(key) => receipts::take(&self.ctx.buckets.receipts, destination, key, &first)
                .await
                .map_err(nats)?,
        };
        let first = match earlier {
            Receipt::OtherBody => {
                let key = idempotency_key.map(|key| key.key).unwrap_or_default();
                return Err(AcceptError::KeyReused(key));
            }
            Receipt::Answered(earlier) => earlier,
            Receipt::New => first,
        };
        let now = self.ctx.clock.now_ms();
        for (index, text, (code, reason)) in refused {
            let letter = Letter {
                destination: destination.to_owned(),
                code,
                reason,
                record: text,
                received_ms: now,
                failed_ms: now,
                partition: member.partition,
                intake_seq: 0,
                index: u32::try_from(index).unwrap_or(u32::MAX),
                batch_line: Some(index + 1),
                request: None,
                response: None,
            };
            let payload = serde_json::to_vec(&letter).map_err(|e| nats(e.to_string()))?;
            let mut publish = PublishMessage::build().payload(payload.into());
            if let Some(key) = &idempotency_key {
                let id = layout::intake_letter_id(destination, &key.scoped, index);
                publish = publish.message_id(id.as_str());
            }
            self.ctx
                .js
                .send_publish(layout::letters_subject(destination), publish)
                .await
                .map_err(|e| nats(e.to_string()))?
                .await
                .map_err(|e| nats(e.to_string()))?;
        }
        if messages.is_empty() {
            return Ok(Acceptance::Fresh(answer));
        }
        let subject = layout::intake_subject(member.partition, destination);
        let parts = messages.len();
        let mut duplicates = 0;
        for (part, (payload, records)) in messages.into_iter().enumerate() {
            let refused = if part == 0 { refused_here } else { 0 };
            let message_id = idempotency_key.as_ref().map(|key| match parts {
                1 => format!("{destination}/{}", key.scoped),
                _ => format!("{destination}/{}/{part}", key.scoped),
            });
            // Within the headroom: a batch whose refused lines leave many
            // gaps goes without (its letters then count positions).
            let lines = Some(layout::lines_header(&lines[records]))
                .filter(|header| header.len() <= MAX_LINES_HEADER);
            let headers = IntakeHeaders {
                message_id,
                received_ms: now,
                lines,
                refused,
            };
            if self
                .publish(destination, &subject, payload, &headers)
                .await?
            {
                duplicates += 1;
            }
        }
        Ok(if duplicates == parts {
            Acceptance::Repeated(first)
        } else {
            Acceptance::Fresh(answer)
        })
    }

    /// Publishes one intake message; `true` when JetStream had it already
    /// (its message id seen within the duplicate window).
    async fn publish(
        &self,
        destination: &str,
        subject: &str,
        payload: bytes::Bytes,
        headers: &IntakeHeaders,
    ) -> Result<bool, AcceptError> {
        // While the servers elect a new stream leader (a server died),
        // publishing fails for a moment: try a few times before answering
        // 503. A try whose acknowledgement was lost may have been stored:
        // with a message id JetStream drops the repeat; without one the
        // records are sent twice, in order (at least once).
        let mut wait = Duration::from_millis(250);
        let mut tries = 0;
        loop {
            let mut publish = PublishMessage::build()
                .payload(payload.clone())
                .header(RECEIVED_HEADER, headers.received_ms.to_string().as_str())
                .header(PLANNED_HEADER, "1");
            if let Some(lines) = &headers.lines {
                publish = publish.header(LINES_HEADER, lines.as_str());
            }
            if headers.refused > 0 {
                publish = publish.header(REFUSED_HEADER, headers.refused.to_string().as_str());
            }
            if let Some(id) = &headers.message_id {
                publish = publish.message_id(id.as_str());
            }
            let stored = match self.ctx.js.send_publish(subject.to_owned(), publish).await {
                Ok(ack) => ack.await.map_err(|e| format!("not stored: {e}")),
                Err(e) => Err(format!("not published: {e}")),
            };
            match stored {
                Ok(ack) => return Ok(ack.duplicate),
                Err(e) if tries >= PUBLISH_TRIES => return Err(AcceptError::Cluster(e)),
                Err(e) => {
                    tracing::debug!(%destination, "publishing again: {e}");
                    tries += 1;
                    tokio::time::sleep(wait).await;
                    wait *= 2;
                }
            }
        }
    }

    /// Hands every partition over and stops.
    pub async fn drain(&self) {
        self.draining.store(true, Ordering::Release);
        let _ = self
            .ctx
            .buckets
            .workers
            .delete(&self.ctx.settings.worker)
            .await;
        let held: Vec<Arc<Owner>> = {
            let mut owners = lock(&self.owners);
            owners
                .values_mut()
                .filter(|h| !h.releasing)
                .map(|h| {
                    h.releasing = true;
                    h.owner.clone()
                })
                .collect()
        };
        let grace = self.ctx.grace;
        futures::future::join_all(held.iter().map(|owner| owner.release(grace))).await;
        for owner in held {
            lock(&self.owners).remove(&owner.partition);
        }
        let releases = std::mem::take(&mut *lock(&self.releases));
        futures::future::join_all(releases).await;
        let tasks = std::mem::take(&mut *lock(&self.tasks));
        for task in &tasks {
            task.abort();
        }
        futures::future::join_all(tasks).await;
    }
}

/// What an intake message carries besides its records.
struct IntakeHeaders {
    /// With an idempotency key: JetStream drops a repeat.
    message_id: Option<String>,
    received_ms: u64,
    /// The records' lines in the batch (see [`LINES_HEADER`]).
    lines: Option<String>,
    /// Records of the batch refused at intake (the first message only).
    refused: usize,
}

/// Room left in a message for its headers (message id, received time,
/// the batch's lines).
const PAYLOAD_HEADROOM: usize = 4 * 1024;
/// The batch's lines travel with a message up to this size.
const MAX_LINES_HEADER: usize = 2 * 1024;

/// A message's payload and which of the batch's records it carries.
type Packed = (bytes::Bytes, std::ops::Range<usize>);

/// Record texts as JSON arrays of at most `limit` bytes each, in order;
/// `Err((index, size))` names a record too large for any message.
/// One destination's intake through a worker: its records go to the
/// cluster's intake stream.
pub struct ClusterIntake {
    worker: Arc<Worker>,
    destination: String,
}

impl ClusterIntake {
    pub fn new(worker: Arc<Worker>, destination: &str) -> Self {
        Self {
            worker,
            destination: destination.to_owned(),
        }
    }
}

impl Accept for ClusterIntake {
    fn accept(
        &self,
        records: Vec<Record>,
        idempotency_key: Option<IdempotencyKey>,
    ) -> futures::future::BoxFuture<'_, Result<Acceptance, AcceptError>> {
        Box::pin(
            self.worker
                .accept(&self.destination, records, idempotency_key),
        )
    }
}

fn pack(texts: &[String], limit: usize) -> Result<Vec<Packed>, (usize, usize)> {
    let mut messages = Vec::new();
    let mut payload: Vec<u8> = Vec::new();
    let mut first = 0;
    for (index, text) in texts.iter().enumerate() {
        if text.len() + 2 > limit {
            return Err((index, text.len()));
        }
        if !payload.is_empty() && payload.len() + 1 + text.len() + 1 > limit {
            payload.push(b']');
            messages.push((std::mem::take(&mut payload).into(), first..index));
            first = index;
        }
        payload.push(if payload.is_empty() { b'[' } else { b',' });
        payload.extend_from_slice(text.as_bytes());
    }
    if !payload.is_empty() {
        payload.push(b']');
        messages.push((payload.into(), first..texts.len()));
    }
    Ok(messages)
}

#[cfg(test)]
mod pack_tests {
    use super::pack;

    #[test]
    fn a_batch_is_packed_into_messages_under_the_limit_in_order() {
        let texts: Vec<String> = (0..10).map(|i| format!("{{\"n\":{i}}}")).collect();
        let messages = pack(&texts, 20).unwrap();
        let mut seen = Vec::new();
        let mut next = 0;
        for (message, records) in &messages {
            assert!(message.len() <= 20, "{message:?}");
            let parsed: Vec<serde_json::Value> = serde_json::from_slice(message).unwrap();
            assert_eq!(records.start, next);
            assert_eq!(records.len(), parsed.len());
            next = records.end;
            seen.extend(parsed.into_iter().map(|r| r["n"].as_u64().unwrap()));
        }
        assert_eq!(seen, (0..10).collect::<Vec<_>>());
        assert_eq!(pack(&texts, 1_000).unwrap().len(), 1);
        let huge = vec!["x".repeat(50)];
        assert_eq!(pack(&huge, 20), Err((0, 50)));
    }
}
