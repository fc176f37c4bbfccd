//! What every intake shares, whichever backend queues the records: the
//! framing of a posted body into records (`framing.rs`), the idempotency
//! key a producer may send with it (`idempotency.rs`), the answer to a
//! batch and why one is refused, and [`Accept`], which a single service's
//! destination (`service::journaled`) and a cluster worker's
//! (`cluster::ClusterIntake`) implement.

mod framing;
mod idempotency;

use destination_types::{PlanOutcome, RecordFate};
use futures::future::BoxFuture;
use serde::Serialize;

pub use framing::{Format, FramingError, records};
pub use idempotency::IdempotencyKey;

use crate::input::Item;

/// Takes a batch of records for one destination: planned, and queued
/// durably before it answers.
pub trait Accept: Send + Sync {
    fn accept(
        &self,
        records: Vec<Record>,
        idempotency_key: Option<IdempotencyKey>,
    ) -> BoxFuture<'_, Result<Acceptance, AcceptError>>;
}

/// One record of a batch, as the intake read it.
pub type Record = Item;

/// What a batch became.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Accepted {
    /// Records journaled for delivery.
    pub accepted: u64,
    /// Records refused (dead letters): unusable, too large, not planned.
    pub invalid: Vec<Refusal>,
    /// Records with nothing to send (no usable id): counted as skipped.
    pub skipped: Vec<Refusal>,
}

impl Accepted {
    /// Counts the record at `index` of the batch, planned as `outcome`.
    pub fn count(&mut self, index: u64, outcome: &PlanOutcome) {
        let PlanOutcome::Invalid(error) = outcome else {
            self.accepted += 1;
            return;
        };
        let refusal = Refusal {
            index,
            code: error.code.clone(),
            message: error.message.clone(),
        };
        match error.fate {
            RecordFate::Skipped => self.skipped.push(refusal),
            RecordFate::Rejected => self.invalid.push(refusal),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Refusal {
    /// The record's position in the batch, from 0.
    pub index: u64,
    pub code: String,
    pub message: String,
}

/// The answer to a batch.
#[derive(Debug)]
pub enum Acceptance {
    Fresh(Accepted),
    /// The idempotency key was used before: its first answer (JSON);
    /// nothing was journaled.
    Repeated(String),
}

#[derive(Debug, thiserror::Error)]
pub enum AcceptError {
    #[error("the destination is shutting down")]
    Draining,
    #[error("{queued} updates are queued, at the destination's limit of {limit}")]
    OverQuota { queued: u64, limit: u64 },
    #[error("the journal failed: {0}")]
    Journal(String),
    #[error("the cluster did not take the records: {0}")]
    Cluster(String),
    #[error("the component is gone: {0}")]
    Component(String),
    /// A record the queue cannot carry (a message over the cluster's size).
    #[error("{0}")]
    TooLarge(String),
    #[error(
        "Idempotency-Key {0:?} was used within the last 24 hours with another body: nothing was taken; send a new batch under a new key"
    )]
    KeyReused(String),
}
