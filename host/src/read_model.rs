//! What the status page and `/metrics` read of one destination, whichever
//! backend delivers it: a [`ReadModel`] that a stream over a journal and a
//! cluster worker each implement, so that no page asks which one it is.
//! Replaying a dead letter is here too: it is the one action a page takes
//! on what it reads.

use std::collections::BTreeMap;

use futures::future::BoxFuture;

use crate::journal::Counts;
use crate::queue::HeldBack;

/// A destination's state now, as the overview and `/metrics` show it.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// It takes records now (enabled, and not restarting).
    pub accepting: bool,
    /// Why delivery is paused, if it is.
    pub paused: Option<String>,
    pub waiting: Waiting,
    /// The current period's counts.
    pub hour: Hour,
    pub budget: Budget,
    /// Who delivers it, when that can be another process.
    pub placement: Option<Placement>,
    /// Everything counted since the destination's queue began, when the
    /// backend keeps such totals.
    pub totals: Option<Totals>,
}

/// What waits to be delivered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Waiting {
    /// Updates queued (after merging), and when the record behind the
    /// oldest was received (epoch ms).
    Updates {
        count: u64,
        oldest_received_ms: Option<u64>,
    },
    /// Intake messages not acknowledged yet (each a batch of records).
    Messages(u64),
}

impl Default for Waiting {
    fn default() -> Self {
        Self::Updates {
            count: 0,
            oldest_received_ms: None,
        }
    }
}

/// The current period's counts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Hour {
    /// They cannot be read now (or the destination has no queue open).
    #[default]
    Unknown,
    /// Nothing was counted in it yet.
    Empty,
    /// This process's counts.
    Counted(Counts),
    /// Every worker's counts, added up.
    CountedByAll(Counts),
}

/// Requests left in the account's current window.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Budget {
    /// The destination's account is not known here.
    #[default]
    Unknown,
    /// The API has not said yet.
    NotReported,
    /// As the API last said to this process.
    Left(u64),
    /// As the API last said to the worker that owns the account's
    /// partition.
    LeftAtOwner(u64),
}

/// Which worker delivers a destination, and the partition it is in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    pub partition: u16,
    pub worker: Option<String>,
}

/// Totals since the queue began, per outcome and audience, and the
/// requests the delivery sent.
#[derive(Clone, Debug, Default)]
pub struct Totals {
    pub records: Counts,
    pub audiences: BTreeMap<String, Counts>,
    pub requests_sent: u64,
    /// Of the requests sent, the lookups and creates (deliveries of
    /// several steps).
    pub lookups_sent: u64,
    pub creates_sent: u64,
    pub rate_limited: u64,
    pub retries: u64,
}

/// A run as a list shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunSummary {
    pub id: i64,
    pub started_ms: u64,
    pub status: String,
    pub counts: Counts,
    /// Records of this run still queued.
    pub pending: u64,
    /// Its requests.
    pub requests: Requests,
}

/// Requests a run sent, and how many of them were answered 429.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Requests {
    pub sent: u64,
    pub rate_limited: u64,
}

/// A run whole.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunDetail {
    pub summary: RunSummary,
    pub kind: String,
    /// Audience id → its counts (empty when the backend does not count
    /// per audience).
    pub audiences: BTreeMap<String, Counts>,
    /// Failure code → how many.
    pub failures: BTreeMap<String, u64>,
}

/// Which dead letters a list shows: the newest `newest` older than
/// `before`, of one run or code when given.
#[derive(Clone, Debug, Default)]
pub struct LetterQuery {
    pub run: Option<i64>,
    pub code: Option<String>,
    pub before: Option<i64>,
    pub newest: usize,
}

/// A dead letter as a page shows it: its record and the API's response,
/// whole or cut (then with their whole sizes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LetterView {
    pub id: i64,
    pub run: i64,
    /// The record's line in its file, or its place in its batch.
    pub line: u64,
    pub code: String,
    pub reason: String,
    pub status: Option<u16>,
    pub record: Shown,
    pub response: Option<Shown>,
}

/// A text as read: whole, or its start and its whole size in bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Shown {
    Whole(String),
    Cut { start: String, bytes: u64 },
}

/// What replaying a letter did.
#[derive(Clone, Debug, Default)]
pub struct ReplayOutcome {
    /// Letters queued again (or dead letters again).
    pub replayed: u64,
    /// The run they were queued into, when runs are numbered.
    pub run: Option<i64>,
    /// Letters not sent: their key has a newer update.
    pub held_back: Vec<HeldBack>,
}

/// Why a replay did not happen.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReplayError {
    #[error("the destination is disabled: enable it to replay its dead letters")]
    Disabled,
    #[error("{0}")]
    Failed(String),
}

/// One destination as pages and `/metrics` read it. Errors are said as
/// the page shows them.
pub trait ReadModel: Send + Sync {
    fn snapshot(&self) -> BoxFuture<'_, Snapshot>;
    /// The newest `newest` runs, newest first.
    fn runs(&self, newest: usize) -> BoxFuture<'_, Result<Vec<RunSummary>, String>>;
    fn run(&self, id: i64) -> BoxFuture<'_, Result<Option<RunDetail>, String>>;
    /// Letters newest first, cut for a list.
    fn letters(&self, query: LetterQuery) -> BoxFuture<'_, Result<Vec<LetterView>, String>>;
    /// One letter whole.
    fn letter(&self, id: i64) -> BoxFuture<'_, Result<Option<LetterView>, String>>;
    /// Letters can be replayed now.
    fn replayable(&self) -> bool;
    /// The budget the recent windows of its account used, as the API told
    /// whoever delivered for it, oldest first.
    fn budget_windows(&self) -> BoxFuture<'_, Vec<crate::limiter::WindowUse>>;
    fn replay(&self, letter: i64) -> BoxFuture<'_, Result<ReplayOutcome, ReplayError>>;
}

/// `text` whole when it has at most `chars` characters, else cut there.
pub fn cut(text: String, chars: usize) -> Shown {
    match text.char_indices().nth(chars) {
        None => Shown::Whole(text),
        Some((end, _)) => Shown::Cut {
            start: text[..end].to_owned(),
            bytes: text.len() as u64,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_text_is_cut_on_a_character_boundary_and_keeps_its_whole_size() {
        assert_eq!(cut("héllo".into(), 5), Shown::Whole("héllo".into()));
        assert_eq!(
            cut("héllo".into(), 2),
            Shown::Cut {
                start: "hé".into(),
                bytes: 6
            }
        );
    }
}
