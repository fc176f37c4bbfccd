//! Acknowledging a partition's complete messages, oldest first: each
//! message's counts reach the cluster's runs first, then JetStream is told
//! it is done. A worker killed between the two leaves a message counted
//! but not acknowledged; its next owner is sent it again and the run,
//! which remembers the last message it counted per partition, leaves it
//! out (see [`super::runs::count_complete`]). A worker killed before the
//! counts leaves nothing counted: the next owner counts it.

use std::collections::VecDeque;

use async_nats::jetstream;

use super::lane::HeldMessage;
use super::ledger::Complete;
use super::partition::{Owner, PULL_WAIT};
use super::runs::{self, MessageCounts};

fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// Complete messages not yet counted, and counted ones not yet
/// acknowledged; kept by the owner so that a hand-over finishes what its
/// acknowledging task started.
#[derive(Default)]
pub(super) struct Acknowledgements {
    to_count: Vec<Complete<HeldMessage>>,
    to_acknowledge: VecDeque<jetstream::Message>,
}

impl Acknowledgements {
    /// Messages taken from the ledger and not yet acknowledged.
    pub(super) fn unfinished(&self) -> usize {
        self.to_count.len() + self.to_acknowledge.len()
    }
}

/// Acknowledges complete messages as records get their verdicts.
pub(super) async fn acknowledge(owner: std::sync::Arc<Owner>) {
    loop {
        let progressed = owner.books.progressed.notified();
        tokio::pin!(progressed);
        progressed.as_mut().enable();
        acknowledge_complete(&owner).await;
        if owner.ending().is_some() {
            return;
        }
        let _ = tokio::time::timeout(PULL_WAIT, progressed).await;
    }
}

/// Counts, then acknowledges, the complete prefix, in order, each
/// acknowledgement confirmed by the servers: one lost would leave its
/// message to be sent again by the next owner after newer ones.
pub(super) async fn acknowledge_complete(owner: &Owner) {
    let mut acks = owner.acknowledgements.lock().await;
    let complete = lock(&owner.books.ledger).ackable();
    acks.to_count.extend(complete);
    if !acks.to_count.is_empty() {
        let ctx = &owner.books.ctx;
        let counts: Vec<MessageCounts> = acks
            .to_count
            .iter()
            .map(|complete| MessageCounts {
                destination: complete.handle.destination.clone(),
                received_ms: complete.handle.received_ms,
                seq: complete.seq,
                counts: complete.counted.clone(),
            })
            .collect();
        let counted = runs::count_complete(
            &ctx.buckets.runs,
            owner.partition,
            ctx.run_length,
            &counts,
            ctx.clock.now_ms(),
        )
        .await;
        if let Err(e) = counted {
            tracing::warn!(
                partition = owner.partition,
                "counts not written yet ({e}); acknowledgements wait"
            );
            return;
        }
        for message in &counts {
            tracing::debug!(
                partition = owner.partition,
                seq = message.seq,
                destination = %message.destination,
                received = message.counts.received,
                "counted"
            );
        }
        let counted = std::mem::take(&mut acks.to_count);
        acks.to_acknowledge
            .extend(counted.into_iter().map(|complete| complete.handle.message));
    }
    while let Some(message) = acks.to_acknowledge.front() {
        if let Err(e) = message.double_ack().await {
            tracing::warn!(
                partition = owner.partition,
                "acknowledgement not confirmed: {e}"
            );
            return;
        }
        if let Ok(info) = message.info() {
            tracing::debug!(
                partition = owner.partition,
                seq = info.stream_sequence,
                "acknowledged"
            );
        }
        acks.to_acknowledge.pop_front();
    }
}
