//! The durable journal between input and delivery: an SQLite database in
//! WAL mode holding every accepted update until the API gave a verdict on
//! it, the input checkpoints, the dead letters and the run history.
//!
//! Every commit is durable (`synchronous=FULL`: fsynced before it returns).
//! A record is accepted when the transaction that journals it, together
//! with the input position after it, has committed. Verdicts are
//! group-committed — every [`GROUP_COMMIT_OPS`] verdicts or
//! [`GROUP_COMMIT_WINDOW`], whichever comes first, and with every intake —
//! so a crash can at worst forget the verdicts of the last group, whose
//! updates are then sent again (at-least-once).
//!
//! Coalescing: while an update for a key (one object in the destination)
//! is queued — not yet dispatched, or dispatched but waiting for the
//! limiter, a retry or a refresh — a newer update for the same key merges
//! into it (the destination's [`Merge`]); only an update whose body is on
//! the wire makes the next one queue behind it. Per key, updates go out in
//! journal order.
//!
//! One module per concern: `store` (opening, locking, integrity, schema),
//! `ingest` (a planned batch into the queue), `updates` (claims, attempts,
//! verdicts), `facts` (what a destination remembers; a delivery's next
//! step), `requests` and `sources` (a queued update's rows), `history`
//! (runs and their counts), `letters` (dead letters), `checkpoints` (input
//! positions); this file holds the types and the group commit.

mod checkpoints;
mod facts;
mod history;
mod ingest;
mod letters;
#[cfg(test)]
mod migration_tests;
mod placement;
mod receipts;
mod requests;
mod sources;
mod store;
mod tally;
#[cfg(test)]
mod tests;
mod updates;

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use destination_types::Request;
use rusqlite::Connection;
use serde::Serialize;
use serde_json::Value;

use crate::queue::{Attempt, Claim, Disposition, HeldBack, Incoming, IngestReport, RunId};
pub use checkpoints::Checkpoint;
pub use letters::{
    DeadLetter, LetterFilter, LetterPreview, LetterRecord, MAX_STORED_RESPONSE_BYTES,
    PREVIEW_CHARS, request_summary,
};
pub use placement::{Chains, Head, Placement, Prepared, Stale};
pub use receipts::{Backlog, Earlier, Ingested, RECEIPT_TTL_MS, Receipt};
use store::SCHEMA_VERSION;
pub use store::default_journal_path;

/// Verdicts committed together at most.
pub const GROUP_COMMIT_OPS: u32 = 512;
/// The longest a verdict waits for its commit.
pub const GROUP_COMMIT_WINDOW: std::time::Duration = std::time::Duration::from_millis(50);

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("journal {path} is not a journal of this host ({detail}); refusing to touch it")]
    NotAJournal { path: PathBuf, detail: String },
    #[error(
        "journal {path} is corrupt ({detail}); it was left as it is: move it aside to start an empty journal, or restore a copy"
    )]
    Corrupt { path: PathBuf, detail: String },
    #[error(
        "journal {path} has schema version {found}, newer than this host's {SCHEMA_VERSION}: use a newer outreach-host"
    )]
    NewerSchema { path: PathBuf, found: i64 },
    #[error(
        "journal {path} is in use by another outreach-host process (the file is locked, whatever path reached it)"
    )]
    Locked { path: PathBuf },
    #[error(
        "journal {path} lost a transaction ({why}); nothing more is sent until it is opened again (the next run or `resume` sends what is queued)"
    )]
    Failed { path: PathBuf, why: String },
    #[error("journal {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("journal {path}: {source}")]
    Sqlite {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("journal {path}: stored {what} is unreadable: {detail}")]
    BadRow {
        path: PathBuf,
        what: &'static str,
        detail: String,
    },
    #[error("the journal's thread failed: {0}")]
    Thread(String),
    #[error("no run {0} in the journal")]
    NoSuchRun(i64),
}

/// The destination's way to combine two updates queued for one key into
/// one (`None`: they do not combine and are sent in order), for the
/// journal's own calls that combine and write in one go
/// ([`Journal::ingest`], [`Journal::begin_attempt`]): the journal knows
/// nothing of what a request means; it asks, outside any transaction.
pub type Merge<'a> = &'a dyn Fn(&Request, &Request) -> Option<Request>;

/// An attempt started, and the updates queued behind it for its key that
/// may fold into it (oldest first; [`Journal::fold`]).
#[derive(Clone, Debug, PartialEq)]
pub struct Begun {
    pub attempt: Attempt,
    pub later: Vec<Head>,
}

/// Counters of one run, as stored.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct Counts {
    pub received: u64,
    pub delivered: u64,
    pub rejected: u64,
    pub skipped: u64,
}

/// Per-process statistics a run adds to its row when it ends.
#[derive(Clone, Debug, Default)]
pub struct RunStats {
    pub requests_sent: u64,
    /// Of the requests sent, the lookups and creates (steps a delivery
    /// took before its update).
    pub lookups_sent: u64,
    pub creates_sent: u64,
    pub rate_limited: u64,
    pub retries: u64,
    pub credential_refreshes: u64,
}

/// A run as the `runs` command shows it.
#[derive(Clone, Debug, Serialize)]
pub struct RunRecord {
    pub id: RunId,
    pub kind: String,
    pub status: String,
    pub started_ms: u64,
    pub ended_ms: Option<u64>,
    pub destination: String,
    pub api_base: String,
    pub input: Option<String>,
    #[serde(flatten)]
    pub counts: Counts,
    /// Records of this run still queued in the journal.
    pub pending: u64,
    /// Updates (requests) that landed, after coalescing.
    pub updates_delivered: u64,
    /// Records merged into an update already queued for the same key.
    pub coalesced: u64,
    pub requests_sent: u64,
    /// Of the requests sent, the lookups and creates.
    pub lookups_sent: u64,
    pub creates_sent: u64,
    pub rate_limited: u64,
    pub retries: u64,
    pub credential_refreshes: u64,
    /// Updates left by earlier runs that this run took over.
    pub resumed: u64,
    pub fatal: Option<String>,
    pub audiences: std::collections::BTreeMap<String, Counts>,
    pub failures: std::collections::BTreeMap<String, u64>,
}

struct State {
    conn: Connection,
    /// Updates whose body is on the wire: nothing may merge into them.
    sending: HashSet<i64>,
    /// Revisions of updates whose request was rewritten (a merge, a fold);
    /// one not here is at revision 0. Lets a write check that what it
    /// combined is still what is queued.
    revisions: HashMap<i64, u64>,
    last_revision: u64,
    /// Keys owned by a worker, and the update it is on.
    claimed: HashMap<String, i64>,
    /// Dispatch has looked at every update up to here.
    cursor: i64,
    /// A group of verdicts not committed yet: since when, and how many.
    group: Option<(std::time::Instant, u32)>,
    /// The group's counts, written just before it commits.
    tally: tally::Tally,
    /// Why a transaction holding verdicts was lost. Workers had already
    /// acted on those verdicts (taken a key's next update, sent it), so
    /// committing anything after them could let an older update be sent
    /// again over a newer one after a restart: the queue refuses all work
    /// until the journal is opened again, from what is on disk.
    failed: Option<String>,
    /// Tests: make the next commit fail.
    #[cfg(test)]
    fail_next_commit: bool,
}

impl State {
    fn revision(&self, seq: i64) -> u64 {
        self.revisions.get(&seq).copied().unwrap_or(0)
    }

    /// `seq`'s request was rewritten.
    fn revised(&mut self, seq: i64) {
        self.last_revision += 1;
        self.revisions.insert(seq, self.last_revision);
    }

    /// `seq` is no longer queued.
    fn forget(&mut self, seq: i64) {
        self.revisions.remove(&seq);
    }

    /// Joins (or opens) the group transaction.
    fn begin(&mut self) -> rusqlite::Result<()> {
        if self.group.is_none() {
            self.conn.execute_batch("BEGIN IMMEDIATE")?;
            self.group = Some((std::time::Instant::now(), 0));
        }
        Ok(())
    }

    /// Counts an operation in the group, committing it when it is full or
    /// old enough.
    fn done(&mut self) -> rusqlite::Result<()> {
        if let Some((since, ops)) = &mut self.group {
            *ops += 1;
            if *ops >= GROUP_COMMIT_OPS || since.elapsed() >= GROUP_COMMIT_WINDOW {
                return self.commit();
            }
        }
        Ok(())
    }

    /// Commits the group (`synchronous=FULL`: on disk when this returns).
    /// A failed commit abandons the group.
    fn commit(&mut self) -> rusqlite::Result<()> {
        if self.group.is_none() {
            return Ok(());
        }
        #[cfg(test)]
        if std::mem::take(&mut self.fail_next_commit) {
            self.abandon("injected commit failure");
            return Err(rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_IOERR),
                Some("injected commit failure".into()),
            ));
        }
        if let Err(e) = self
            .tally
            .write(&self.conn)
            .and_then(|()| self.conn.execute_batch("COMMIT"))
        {
            self.abandon(&e.to_string());
            return Err(e);
        }
        self.group = None;
        Ok(())
    }

    /// Abandons the group after a failed operation: nothing half-done is
    /// kept, its verdicts are lost (their updates will be sent again), and
    /// the queue takes no more work ([`State::failed`]).
    fn abandon(&mut self, why: &str) {
        self.tally.clear();
        if self.group.take().is_some() {
            let _ = self.conn.execute_batch("ROLLBACK");
            if self.failed.is_none() {
                tracing::error!("journal transaction lost ({why}): delivery stops");
                self.failed = Some(why.to_owned());
            }
        }
    }

    /// Writes the group's counts so far into its open transaction, so that
    /// reads on this connection see them.
    /// A failed write loses the group, as a failed commit does.
    fn count_so_far(&mut self) -> rusqlite::Result<()> {
        if self.group.is_some()
            && let Err(e) = self.tally.write(&self.conn)
        {
            self.abandon(&e.to_string());
            return Err(e);
        }
        Ok(())
    }

    /// Refuses queue work after a lost transaction.
    fn healthy(&self, path: &Path) -> Result<(), JournalError> {
        match &self.failed {
            None => Ok(()),
            Some(why) => Err(JournalError::Failed {
                path: path.to_owned(),
                why: why.clone(),
            }),
        }
    }
}

pub struct Journal {
    path: PathBuf,
    state: Mutex<State>,
    /// The database file, locked while this process delivers from it
    /// (after `state`: dropped once the connection is closed).
    _lock: Option<File>,
}

impl Drop for Journal {
    fn drop(&mut self) {
        if let Err(e) = self.state().commit() {
            tracing::warn!(
                "journal {}: last verdicts not committed: {e}",
                self.path.display()
            );
        }
    }
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal").field("path", &self.path).finish()
    }
}

impl Journal {
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn err(&self, source: rusqlite::Error) -> JournalError {
        JournalError::Sqlite {
            path: self.path.clone(),
            source,
        }
    }

    /// Runs `f` outside any group: pending verdicts are committed first.
    fn with<T>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> Result<T, JournalError> {
        let mut state = self.state();
        state.commit().map_err(|e| self.err(e))?;
        f(&state.conn).map_err(|e| self.err(e))
    }

    /// Commits the verdicts of the current group.
    pub fn flush(&self) -> Result<(), JournalError> {
        let mut state = self.state();
        state.healthy(&self.path)?;
        state.commit().map_err(|e| self.err(e))
    }

    /// Tests: the next commit fails (as a full disk or an I/O error would).
    #[cfg(test)]
    pub(crate) fn fail_next_commit(&self) {
        self.state().fail_next_commit = true;
    }

    /// Whether any update is queued (for stall alerts).
    pub fn has_pending(&self) -> Result<bool, JournalError> {
        self.with(|conn| conn.query_row("SELECT EXISTS(SELECT 1 FROM updates)", [], |r| r.get(0)))
    }
}

/// The clock's time as SQLite stores it.
fn now_ms() -> i64 {
    i64::try_from(crate::clock::now_ms()).unwrap_or(i64::MAX)
}

fn json_or_text(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_owned()))
}
