//! The end-of-run report.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Serialize;

use crate::journal::{Counts, RunRecord};
use crate::queue::{HeldBack, RunId};

/// Counts for one audience.
pub type AudienceCounts = Counts;

/// The end-of-run report. Counts concern the records this run received;
/// updates it took over from earlier runs are credited to those runs (see
/// `runs show`).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Summary {
    /// The run's id in the journal's history.
    pub run: RunId,
    /// Input records (non-blank lines).
    pub received: u64,
    pub delivered: u64,
    /// Records refused: invalid records, requests the API rejected, requests
    /// that exhausted their retries.
    pub rejected: u64,
    /// Records with nothing to write, or that cannot be matched to an
    /// object in the destination (no usable id).
    pub skipped: u64,
    /// Records still queued in the journal because the run stopped (see
    /// `fatal`); the next run sends them.
    pub not_sent: u64,
    pub audiences: BTreeMap<String, AudienceCounts>,
    /// How the destination names each audience (e.g. `Newsletter (Mapping
    /// ID 4)`), by id; empty when its contract does not say.
    pub audience_labels: BTreeMap<String, String>,
    /// Failed and skipped records per reason code.
    pub failures: BTreeMap<String, u64>,
    /// Records merged into an update already queued for the same key.
    pub coalesced: u64,
    /// Updates (after coalescing) that landed.
    pub updates_delivered: u64,
    /// Records left queued by earlier runs that this run took over.
    pub resumed: u64,
    /// Input lines skipped because an earlier run had journaled them.
    pub input_already_journaled: u64,
    /// Records of any run still queued in the journal at the end.
    pub pending: u64,
    pub requests_sent: u64,
    /// Of the requests sent, the lookups and creates: steps a delivery
    /// took before (or instead of) updating (matching by email).
    pub lookups_sent: u64,
    pub creates_sent: u64,
    /// 429 responses received (each was waited out and retried).
    pub rate_limited: u64,
    /// Resends after transient failures.
    pub retries: u64,
    pub credential_refreshes: u64,
    pub elapsed_ms: u64,
    /// Why the run stopped early, if it did.
    pub fatal: Option<String>,
    /// Replayed dead letters not sent because their keys have newer
    /// updates (`dead-letters replay --force` sends them anyway).
    pub held_back: Vec<HeldBack>,
    /// The run stopped because the account must log in again.
    pub login_required: bool,
    pub journal: PathBuf,
    pub dead_letters: Option<PathBuf>,
}

/// What a run's summary adds to its record in the history.
pub struct SummaryExtras {
    pub audience_labels: BTreeMap<String, String>,
    pub resumed: u64,
    pub input_already_journaled: u64,
    pub pending: u64,
    pub held_back: Vec<HeldBack>,
    pub login_required: bool,
    pub journal: PathBuf,
    pub dead_letters: Option<PathBuf>,
}

impl Summary {
    /// The summary of the run recorded as `record`.
    pub fn of_run(record: &RunRecord, extras: SummaryExtras) -> Self {
        Self {
            run: record.id,
            received: record.counts.received,
            delivered: record.counts.delivered,
            rejected: record.counts.rejected,
            skipped: record.counts.skipped,
            not_sent: record.pending,
            audiences: record.audiences.clone(),
            audience_labels: extras.audience_labels,
            failures: record.failures.clone(),
            coalesced: record.coalesced,
            updates_delivered: record.updates_delivered,
            resumed: extras.resumed,
            input_already_journaled: extras.input_already_journaled,
            pending: extras.pending,
            requests_sent: record.requests_sent,
            lookups_sent: record.lookups_sent,
            creates_sent: record.creates_sent,
            rate_limited: record.rate_limited,
            retries: record.retries,
            credential_refreshes: record.credential_refreshes,
            elapsed_ms: 0,
            fatal: record.fatal.clone(),
            held_back: extras.held_back,
            login_required: extras.login_required,
            journal: extras.journal,
            dead_letters: extras.dead_letters,
        }
    }

    /// Some records did not reach the API.
    pub fn has_failures(&self) -> bool {
        self.rejected > 0 || self.not_sent > 0 || self.fatal.is_some()
    }
}
