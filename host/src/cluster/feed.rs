//! A partition's feed: reads the partition's intake messages in stream
//! order while the window has room, plans their records with each
//! destination's component and holds their updates; what cannot be sent
//! (an unknown destination, an unreadable message, a record the component
//! refuses) becomes a dead letter first.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use async_nats::jetstream::context::ConsumerInfoErrorKind;
use async_nats::jetstream::{self, consumer};
use destination_types::{PlanOutcome, RecordFate, Request};
use futures::StreamExt;

use super::ClusterError;
use super::lane::{Books, Held, HeldMessage, Lane, Letter};
use super::layout::{self, LINES_HEADER, PLANNED_HEADER, RECEIVED_HEADER, REFUSED_HEADER};
use super::ledger::Progress;
use super::partition::{Owner, PULL_WAIT};
use super::pending::{NotPlaced, RecordRef};
use super::runs::RunDelta;
use crate::delivery::plan_items;
use crate::input::Item;
use crate::intake::{self, Format};
use crate::queue::apart;

/// Messages asked for per pull.
const PULL_BATCH: usize = 200;

fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// Reads the partition's messages while there is room in the window.
pub(super) async fn feed(owner: Arc<Owner>, consumer: consumer::PullConsumer, progress: Progress) {
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
                if let Err(why) = check_deliveries(&consumer, last_delivery).await {
                    stop_feed(&owner, &why);
                    return;
                }
                tokio::time::sleep(PULL_WAIT).await;
                continue;
            }
        };
        let stop = owner.stop.notified();
        tokio::pin!(stop);
        stop.as_mut().enable();
        let mut arrived = 0;
        let mut failed = false;
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
                    failed = true;
                    break;
                }
            };
            arrived += 1;
            let Ok(info) = message.info() else { continue };
            let (seq, delivery) = (info.stream_sequence, info.consumer_sequence);
            // Deliveries are numbered: one that never arrived would come
            // again later, after newer ones. Take the partition again.
            if last_delivery.is_some_and(|last| delivery != last + 1) {
                let why = format!("a delivery went missing ({last_delivery:?} then {delivery})");
                stop_feed(&owner, &why);
                return;
            }
            last_delivery = Some(delivery);
            let published_ms = u64::try_from(info.published.unix_timestamp_nanos() / 1_000_000)
                .unwrap_or_default();
            if let Err(e) = take_in(&owner, message, seq, published_ms, &progress).await {
                stop_feed(&owner, &format!("message {seq}: {e}"));
                return;
            }
        }
        // Idle, or the pull broke off: the last delivery may have gone
        // astray with nothing newer to show the gap.
        if (arrived == 0 || failed)
            && let Err(why) = check_deliveries(&consumer, last_delivery).await
        {
            stop_feed(&owner, &why);
            return;
        }
    }
}

/// Stops reading: the partition is handed over and taken again, with a
/// consumer that starts at the oldest message not acknowledged.
fn stop_feed(owner: &Owner, why: &str) {
    tracing::warn!(
        partition = owner.partition,
        "{why}; handing the partition over to start again"
    );
    owner.stopped.store(true, Ordering::Release);
}

/// Whether every message the servers delivered to this owner arrived.
/// They number their deliveries; one that went to a pull request this
/// owner had already given up on is theirs as delivered but never
/// arrives, and is not sent again for an hour (`ACK_WAIT`). While newer
/// messages come, the gap in the numbers shows it; when none comes (the
/// last message of a burst) only asking the servers does. A consumer
/// that is gone (a newer owner replaced it) delivers nothing more.
async fn check_deliveries(
    consumer: &consumer::PullConsumer,
    last_delivery: Option<u64>,
) -> Result<(), String> {
    let received = last_delivery.unwrap_or(0);
    match consumer.get_info().await {
        Ok(info) if info.delivered.consumer_sequence > received => Err(format!(
            "the servers delivered {} messages, {received} arrived",
            info.delivered.consumer_sequence
        )),
        Ok(_) => Ok(()),
        Err(e) if e.kind() == ConsumerInfoErrorKind::NotFound => {
            Err("the partition's consumer is gone (a newer owner replaced it)".into())
        }
        // The servers are slow or electing a leader: asked again later.
        Err(_) => Ok(()),
    }
}

/// A whole message that cannot be delivered: its dead letter first, then
/// the message counts as done (one rejected record).
async fn dead_message(
    books: &Books,
    letter: &Letter,
    intake: HeldMessage,
) -> Result<(), ClusterError> {
    books.dead_letter(letter).await?;
    let counted = RunDelta::received_rejected(1);
    lock(&books.ledger).admit(letter.intake_seq, Vec::new(), counted, intake);
    books.progressed.notify_waiters();
    Ok(())
}

/// Whether the worker that took the message's batch planned it.
fn message_is_planned(message: &jetstream::Message) -> bool {
    message
        .headers
        .as_ref()
        .is_some_and(|h| h.get(PLANNED_HEADER).is_some())
}

/// Plans one intake message's records (unless the worker that took them
/// did) and holds their updates.
async fn take_in(
    owner: &Owner,
    message: jetstream::Message,
    seq: u64,
    published_ms: u64,
    progress: &Progress,
) -> Result<(), ClusterError> {
    let books = &owner.books;
    if !lock(&books.ledger).is_new(seq) {
        // A redelivery of a message held already.
        return Ok(());
    }
    let received_ms = message
        .headers
        .as_ref()
        .and_then(|h| h.get(RECEIVED_HEADER))
        .and_then(|v| v.as_str().parse().ok())
        .unwrap_or(published_ms);
    let destination = layout::destination_of(message.subject.as_str())
        .unwrap_or_default()
        .to_owned();
    let refused_at_intake: u64 = message
        .headers
        .as_ref()
        .and_then(|h| h.get(REFUSED_HEADER))
        .and_then(|v| v.as_str().parse().ok())
        .unwrap_or(0);
    let lines_header = message
        .headers
        .as_ref()
        .and_then(|h| h.get(LINES_HEADER))
        .map(|v| v.as_str().to_owned());
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
        batch_line: None,
        request: None,
        response: None,
    };
    let payload = message.payload.clone();
    let whole = || String::from_utf8_lossy(&payload).into_owned();
    let intake = HeldMessage {
        message,
        destination: destination.clone(),
        received_ms,
    };
    let Some(lane) = owner.lanes.get(&destination) else {
        let reason = match books.ctx.members.iter().find(|m| m.name == destination) {
            Some(m) => format!(
                "destination {destination} is on account {:?}, whose records go to partition {}, not {}",
                m.account, m.partition, owner.partition
            ),
            None => format!("no destination {destination:?} in this worker's destinations file"),
        };
        let letter = letter(0, whole(), "unknown-destination", reason);
        return dead_message(books, &letter, intake).await;
    };
    let planned_at_intake = message_is_planned(&intake.message);
    let planned = if planned_at_intake {
        match layout::planned_records(&payload) {
            Ok(planned) => planned
                .into_iter()
                .zip(1u64..)
                .map(|((text, plan), line)| (Item::from_message(line, text), plan))
                .collect(),
            Err(why) => {
                let letter = letter(0, whole(), "unreadable-message", why);
                return dead_message(books, &letter, intake).await;
            }
        }
    } else {
        let format = match payload.iter().find(|b| !b.is_ascii_whitespace()) {
            Some(b'[') => Format::JsonArray,
            _ => Format::Ndjson,
        };
        let items = match intake::records(&payload, format, books.ctx.max_record_bytes) {
            Ok(items) => items,
            Err(e) => {
                let letter = letter(0, whole(), "unreadable-message", e.to_string());
                return dead_message(books, &letter, intake).await;
            }
        };
        lane.member
            .guest
            .with_planner(move |destination| plan_items(destination, items))
            .await
            .map_err(|e| ClusterError::Component(e.to_string()))?
    };
    let batch_lines = lines_header
        .as_deref()
        .and_then(|text| layout::parse_lines_header(text, planned.len()));
    let batch_line = |index: u32| {
        batch_lines
            .as_ref()
            .and_then(|lines| lines.get(usize::try_from(index).ok()?).copied())
    };
    let mut requests = Vec::with_capacity(planned.len());
    let mut updates = Vec::new();
    // The records done by an owner that handed the message over counted
    // there; so did the records the intake refused.
    let mut delta = match progress.counted.get(&seq) {
        Some(counted) => counted.clone(),
        None => RunDelta::received_rejected(refused_at_intake),
    };
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
                        batch_line: batch_line(index),
                    },
                );
                updates.extend(planned.into_iter().map(|request| (request, record)));
            }
            PlanOutcome::Send(_) | PlanOutcome::Skip(_) => {
                requests.push(0);
                delta.received += 1;
                delta.skipped += 1;
            }
            // A record without a usable id is skipped, with a letter of
            // its own, as on one machine: an operator sees why.
            PlanOutcome::Invalid(error) if error.fate == RecordFate::Skipped => {
                let mut dead = letter(index, item.text, &error.code, error.message);
                dead.batch_line = batch_line(index);
                books.dead_letter(&dead).await?;
                requests.push(0);
                delta.received += 1;
                delta.skipped += 1;
            }
            PlanOutcome::Invalid(error) => {
                let mut dead = letter(index, item.text, &error.code, error.message);
                dead.batch_line = batch_line(index);
                books.dead_letter(&dead).await?;
                requests.push(0);
                delta.received += 1;
                delta.rejected += 1;
            }
        }
    }
    tracing::debug!(
        partition = owner.partition,
        seq,
        %destination,
        ?requests,
        counted = delta.received,
        "admitted"
    );
    if !lock(&books.ledger).admit(seq, requests, delta, intake) {
        // A redelivery of a message held already.
        return Ok(());
    }
    hold(lane, updates).await;
    lane.work_arrived();
    books.progressed.notify_waiters();
    Ok(())
}

/// Holds a message's updates in the lane: each key's head is read, the
/// component merges the chains on its own threads while nothing is locked,
/// and the result is placed unless a worker changed a head meanwhile (then
/// it is read and merged again).
async fn hold(lane: &Lane, updates: Vec<(Request, RecordRef)>) {
    let mut keys: Vec<String> = Vec::new();
    let mut requests: Vec<Vec<Request>> = Vec::new();
    let mut records: Vec<Vec<RecordRef>> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    for (request, record) in updates {
        let at = *index.entry(request.key.clone()).or_insert_with(|| {
            keys.push(request.key.clone());
            requests.push(Vec::new());
            records.push(Vec::new());
            keys.len() - 1
        });
        requests[at].push(request);
        records[at].push(record);
    }
    let guest = &lane.member.guest;
    // Per key: its head (if it has one), then the message's updates.
    let chains_after = |heads: &[Option<super::pending::Head>]| -> Vec<Vec<Request>> {
        heads
            .iter()
            .zip(&requests)
            .map(|(head, new)| {
                head.iter()
                    .map(|h| h.request.clone())
                    .chain(new.iter().cloned())
                    .collect()
            })
            .collect()
    };
    loop {
        let heads = lock(&lane.pending).heads(&keys);
        let chains = chains_after(&heads);
        let combined = if guest.can_merge() && chains.iter().any(|c| c.len() > 1) {
            guest.combine(chains).await
        } else {
            chains.into_iter().map(apart).collect()
        };
        let mut pending = lock(&lane.pending);
        match pending.place(&keys, &heads, combined, records.clone()) {
            Ok(()) => return,
            Err(NotPlaced::Stale) => continue,
            Err(NotPlaced::Unaccounted) => {
                tracing::error!("merging did not account for each update once: kept apart");
                let apart_chains = chains_after(&heads).into_iter().map(apart).collect();
                if pending
                    .place(&keys, &heads, apart_chains, records.clone())
                    .is_ok()
                {
                    return;
                }
            }
        }
    }
}
