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
//! Coalescing: while an update for a key (one object in the destination) is queued — not yet
//! dispatched, or dispatched but waiting for the limiter, a retry or a
//! refresh — a newer update for the same key merges into it
//! (the destination's [`Merge`]); only an update whose body is on the wire makes the
//! next one queue behind it. Per key, updates go out in journal order.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use destination_types::{PlanOutcome, RecordFate, Request, Response};
use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;
use serde_json::{Value, json};

use crate::limiter::now_epoch_ms;

/// `PRAGMA application_id` of a journal: "ORCJ".
const APPLICATION_ID: i64 = 0x4F52_434A;
/// The schema this host writes.
const SCHEMA_VERSION: i64 = 2;
/// Verdicts committed together at most.
pub const GROUP_COMMIT_OPS: u32 = 64;
/// The longest a verdict waits for its commit.
pub const GROUP_COMMIT_WINDOW: std::time::Duration = std::time::Duration::from_millis(50);

const SCHEMA: &str = "
CREATE TABLE runs(
    id INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    started_ms INTEGER NOT NULL,
    ended_ms INTEGER,
    status TEXT NOT NULL,
    destination TEXT NOT NULL,
    api_base TEXT NOT NULL,
    input TEXT,
    received INTEGER NOT NULL DEFAULT 0,
    delivered INTEGER NOT NULL DEFAULT 0,
    rejected INTEGER NOT NULL DEFAULT 0,
    skipped INTEGER NOT NULL DEFAULT 0,
    updates_delivered INTEGER NOT NULL DEFAULT 0,
    coalesced INTEGER NOT NULL DEFAULT 0,
    requests_sent INTEGER NOT NULL DEFAULT 0,
    rate_limited INTEGER NOT NULL DEFAULT 0,
    retries INTEGER NOT NULL DEFAULT 0,
    credential_refreshes INTEGER NOT NULL DEFAULT 0,
    resumed INTEGER NOT NULL DEFAULT 0,
    fatal TEXT
);
CREATE TABLE run_audiences(
    run_id INTEGER NOT NULL,
    audience TEXT NOT NULL,
    received INTEGER NOT NULL DEFAULT 0,
    delivered INTEGER NOT NULL DEFAULT 0,
    rejected INTEGER NOT NULL DEFAULT 0,
    skipped INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY(run_id, audience)
) WITHOUT ROWID;
CREATE TABLE run_failures(
    run_id INTEGER NOT NULL,
    code TEXT NOT NULL,
    count INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY(run_id, code)
) WITHOUT ROWID;
CREATE TABLE updates(
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL,
    request TEXT NOT NULL
);
CREATE INDEX updates_by_key ON updates(key, seq);
CREATE TABLE sources(
    id INTEGER PRIMARY KEY,
    seq INTEGER NOT NULL,
    run_id INTEGER NOT NULL,
    line INTEGER NOT NULL,
    first_part INTEGER NOT NULL,
    record TEXT NOT NULL,
    audiences TEXT NOT NULL,
    received_ms INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX sources_by_update ON sources(seq);
CREATE INDEX sources_by_run ON sources(run_id);
CREATE TABLE dead_letters(
    id INTEGER PRIMARY KEY,
    run_id INTEGER NOT NULL,
    created_ms INTEGER NOT NULL,
    line INTEGER NOT NULL,
    record TEXT NOT NULL,
    request TEXT,
    status INTEGER,
    response TEXT,
    code TEXT NOT NULL,
    reason TEXT NOT NULL,
    replayed_by INTEGER,
    received_ms INTEGER
);
CREATE INDEX dead_letters_by_run ON dead_letters(run_id);
CREATE TABLE checkpoints(
    input TEXT PRIMARY KEY,
    identity TEXT NOT NULL,
    offset INTEGER NOT NULL,
    line INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL,
    digest TEXT
) WITHOUT ROWID;
CREATE TABLE delivered(
    key TEXT PRIMARY KEY,
    received_ms INTEGER NOT NULL,
    delivered_ms INTEGER NOT NULL
) WITHOUT ROWID;
";

/// From schema 1: checkpoints gain a content digest; records and dead
/// letters when they were received; `delivered` remembers, per key, the
/// newest record delivered (replays must not send older values over it).
const MIGRATE_FROM_1: &str = "
ALTER TABLE checkpoints ADD COLUMN digest TEXT;
ALTER TABLE sources ADD COLUMN received_ms INTEGER NOT NULL DEFAULT 0;
ALTER TABLE dead_letters ADD COLUMN received_ms INTEGER;
CREATE TABLE delivered(
    key TEXT PRIMARY KEY,
    received_ms INTEGER NOT NULL,
    delivered_ms INTEGER NOT NULL
) WITHOUT ROWID;
PRAGMA user_version = 2;
";

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

/// A run's identifier in the journal.
pub type RunId = i64;

/// The destination's way to combine two updates queued for one key into
/// one (`None`: they do not combine and are sent in order). The journal
/// knows nothing of what a request means; it asks.
pub type Merge<'a> = &'a dyn Fn(&Request, &Request) -> Option<Request>;

/// One planned record, ready to be journaled.
pub struct Incoming {
    /// Input line (or, for a replay, the dead letter's original line).
    pub line: u64,
    pub record: String,
    pub outcome: PlanOutcome,
    /// The dead letter this record replays, marked replayed in the same
    /// transaction.
    pub replay: Option<Replay>,
}

/// What an intake batch did besides journaling.
#[derive(Debug, Default)]
pub struct IngestReport {
    /// Records merged into an update already queued.
    pub coalesced: u64,
    pub held_back: Vec<HeldBack>,
}

/// A replayed dead letter not sent: its key has a newer update.
#[derive(Clone, Debug, Serialize)]
pub struct HeldBack {
    pub letter: i64,
    pub line: u64,
    pub key: String,
    pub reason: String,
}

/// A dead letter being replayed.
#[derive(Clone, Copy, Debug)]
pub struct Replay {
    pub letter: i64,
    /// When its record was first received (epoch ms): a key that got a
    /// newer delivered or queued update since is not sent its old values.
    pub received_ms: u64,
    /// Send it whatever happened since (`--force`).
    pub force: bool,
}

/// Where an input file has been read up to, committed with the records
/// before it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    /// The input's name (its canonical path).
    pub input: String,
    /// What identifies the file's content (device and inode), so a replaced
    /// file is not skipped into.
    pub identity: String,
    /// Bytes consumed.
    pub offset: u64,
    /// Lines consumed.
    pub line: u64,
    /// SHA-256 (hex) of the bytes before `offset`, so a file rewritten in
    /// place is not resumed into; `None` from a host that did not record it.
    pub digest: Option<String>,
}

/// What became of a dispatched update.
// A verdict lives for one call into the journal; boxing the rejection
// would only add an allocation.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq)]
pub enum Verdict {
    Delivered,
    Rejected {
        code: String,
        reason: String,
        request: Option<Request>,
        response: Option<Response>,
    },
}

/// A key handed to one worker: it owns the key's updates until it lets go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claim {
    pub key: String,
    pub seq: i64,
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
    pub rate_limited: u64,
    pub retries: u64,
    pub credential_refreshes: u64,
    /// Updates left by earlier runs that this run took over.
    pub resumed: u64,
    pub fatal: Option<String>,
    pub audiences: std::collections::BTreeMap<String, Counts>,
    pub failures: std::collections::BTreeMap<String, u64>,
}

/// A dead letter as stored.
#[derive(Clone, Debug, Serialize)]
pub struct DeadLetter {
    pub id: i64,
    pub run: RunId,
    pub created_ms: u64,
    pub line: u64,
    pub record: Value,
    pub request: Option<Value>,
    pub status: Option<u16>,
    pub response: Option<String>,
    pub code: String,
    pub reason: String,
    pub replayed_by: Option<RunId>,
}

/// Which dead letters a command concerns.
#[derive(Clone, Debug, Default)]
pub struct LetterFilter {
    pub run: Option<RunId>,
    pub code: Option<String>,
    pub ids: Vec<i64>,
    /// Include letters already replayed.
    pub include_replayed: bool,
}

struct State {
    conn: Connection,
    /// Updates whose body is on the wire: nothing may merge into them.
    sending: HashSet<i64>,
    /// Keys owned by a worker, and the update it is on.
    claimed: HashMap<String, i64>,
    /// Dispatch has looked at every update up to here.
    cursor: i64,
    /// A group of verdicts not committed yet: since when, and how many.
    group: Option<(std::time::Instant, u32)>,
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
        if let Err(e) = self.conn.execute_batch("COMMIT") {
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
        if self.group.take().is_some() {
            let _ = self.conn.execute_batch("ROLLBACK");
            if self.failed.is_none() {
                tracing::error!("journal transaction lost ({why}): delivery stops");
                self.failed = Some(why.to_owned());
            }
        }
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

/// The default journal: `$OUTREACH_JOURNAL`, else
/// `$XDG_STATE_HOME/outreach-host/journal.sqlite`, else
/// `~/.local/state/outreach-host/journal.sqlite`.
pub fn default_journal_path() -> Option<PathBuf> {
    crate::user_path(
        "OUTREACH_JOURNAL",
        "XDG_STATE_HOME",
        ".local/state",
        "journal.sqlite",
    )
}

const SQLITE_MAGIC: &[u8; 16] = b"SQLite format 3\0";

impl Journal {
    /// Opens (or creates) the journal for delivery: takes the lock that
    /// keeps a second host away, checks the file, and marks runs that were
    /// still running (their process died) as interrupted.
    pub fn open(path: &Path) -> Result<Self, JournalError> {
        let io = |source| JournalError::Io {
            path: path.to_owned(),
            source,
        };
        // The journal holds customer profiles: only its owner may read it
        // (SQLite gives the -wal and -shm files the same permissions).
        let mut private = File::options();
        private.create_new(true).write(true);
        let mut private_dir = std::fs::DirBuilder::new();
        private_dir.recursive(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
            private.mode(0o600);
            private_dir.mode(0o700);
        }
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            private_dir.create(dir).map_err(io)?;
        }
        let (file, created) = match private.open(path) {
            Ok(file) => (file, true),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => (
                File::options()
                    .read(true)
                    .write(true)
                    .open(path)
                    .map_err(io)?,
                false,
            ),
            Err(e) => return Err(io(e)),
        };
        // The lock is on the database file itself, so a symlink, a hard
        // link or another spelling of the path meets the same lock. (SQLite
        // locks with fcntl; flock is independent of it on Linux, and this
        // descriptor stays open for as long as the connection.)
        if file.try_lock().is_err() {
            return Err(JournalError::Locked {
                path: path.to_owned(),
            });
        }
        let lock = file;
        let journal = Self::open_unlocked(path, created, Some(lock))?;
        journal.with(|conn| {
            conn.execute(
                "UPDATE runs SET status = 'interrupted' WHERE status = 'running'",
                [],
            )
        })?;
        Ok(journal)
    }

    /// Opens an existing journal to read runs and dead letters while a host
    /// may be delivering from it.
    pub fn open_existing(path: &Path) -> Result<Self, JournalError> {
        if !path.exists() {
            return Err(JournalError::Io {
                path: path.to_owned(),
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "no journal here yet (it is created by the first run)",
                ),
            });
        }
        Self::open_unlocked(path, false, None)
    }

    /// A journal that lives in memory only (tests, dry experiments): it
    /// loses everything when dropped.
    pub fn in_memory() -> Result<Self, JournalError> {
        let path = PathBuf::from(":memory:");
        let conn = Connection::open_in_memory().map_err(|source| JournalError::Sqlite {
            path: path.clone(),
            source,
        })?;
        let journal = Self::from_connection(path, conn, None);
        journal.with(|conn| conn.execute_batch(SCHEMA))?;
        Ok(journal)
    }

    fn from_connection(path: PathBuf, conn: Connection, lock: Option<File>) -> Self {
        Self {
            path,
            state: Mutex::new(State {
                conn,
                sending: HashSet::new(),
                claimed: HashMap::new(),
                cursor: 0,
                group: None,
                failed: None,
                #[cfg(test)]
                fail_next_commit: false,
            }),
            _lock: lock,
        }
    }

    /// Opens the journal at `path`; `created`: this process has just
    /// created the (empty) file.
    fn open_unlocked(path: &Path, created: bool, lock: Option<File>) -> Result<Self, JournalError> {
        if !created {
            check_file(path)?;
        }
        let sqlite = |source| JournalError::Sqlite {
            path: path.to_owned(),
            source,
        };
        let conn = Connection::open(path).map_err(sqlite)?;
        let corrupt = |e: rusqlite::Error| match e {
            rusqlite::Error::SqliteFailure(f, detail)
                if matches!(
                    f.code,
                    rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase
                ) =>
            {
                JournalError::Corrupt {
                    path: path.to_owned(),
                    detail: detail.unwrap_or_else(|| f.to_string()),
                }
            }
            other => JournalError::Sqlite {
                path: path.to_owned(),
                source: other,
            },
        };
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .map_err(sqlite)?;
        let mode: String = conn
            .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
            .map_err(corrupt)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(JournalError::NotAJournal {
                path: path.to_owned(),
                detail: format!("cannot use write-ahead logging (journal mode {mode})"),
            });
        }
        conn.execute_batch("PRAGMA synchronous = FULL; PRAGMA foreign_keys = OFF;")
            .map_err(corrupt)?;
        let application_id: i64 = conn
            .query_row("PRAGMA application_id", [], |r| r.get(0))
            .map_err(corrupt)?;
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(corrupt)?;
        let tables: i64 = conn
            .query_row("SELECT count(*) FROM sqlite_schema", [], |r| r.get(0))
            .map_err(corrupt)?;
        if application_id == 0 && version == 0 && tables == 0 {
            conn.execute_batch(&format!(
                "BEGIN; {SCHEMA} PRAGMA application_id = {APPLICATION_ID}; PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;"
            ))
            .map_err(corrupt)?;
        } else if application_id != APPLICATION_ID {
            return Err(JournalError::NotAJournal {
                path: path.to_owned(),
                detail: format!(
                    "an SQLite database of another application (id {application_id:#x})"
                ),
            });
        } else if version > SCHEMA_VERSION {
            return Err(JournalError::NewerSchema {
                path: path.to_owned(),
                found: version,
            });
        } else if version < 1 {
            return Err(JournalError::Corrupt {
                path: path.to_owned(),
                detail: format!("schema version {version}"),
            });
        } else if version == 1 {
            conn.execute_batch(&format!("BEGIN IMMEDIATE; {MIGRATE_FROM_1} COMMIT;"))
                .map_err(corrupt)?;
        }
        // Page-level damage (a truncated file, overwritten bytes) shows here
        // rather than in the middle of a run.
        let problems: Vec<String> = {
            let mut stmt = conn.prepare("PRAGMA quick_check(5)").map_err(corrupt)?;
            stmt.query_map([], |r| r.get::<_, String>(0))
                .and_then(|rows| rows.collect())
                .map_err(corrupt)?
        };
        if problems.len() != 1 || problems[0] != "ok" {
            return Err(JournalError::Corrupt {
                path: path.to_owned(),
                detail: problems.join("; "),
            });
        }
        Ok(Self::from_connection(path.to_owned(), conn, lock))
    }

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
    fn fail_next_commit(&self) {
        self.state().fail_next_commit = true;
    }

    /// Records the start of a run; dispatch starts again from the oldest
    /// queued update. One run at a time per journal.
    pub fn start_run(
        &self,
        kind: &str,
        destination: &str,
        api_base: &str,
        input: Option<&str>,
    ) -> Result<RunId, JournalError> {
        {
            let mut state = self.state();
            state.cursor = 0;
            state.claimed.clear();
            state.sending.clear();
        }
        self.with(|conn| {
            conn.execute(
                "INSERT INTO runs(kind, started_ms, status, destination, api_base, input)
                 VALUES (?1, ?2, 'running', ?3, ?4, ?5)",
                params![kind, now_ms(), destination, api_base, input],
            )?;
            Ok(conn.last_insert_rowid())
        })
    }

    /// Records the end of a run.
    pub fn end_run(
        &self,
        run: RunId,
        status: &str,
        stats: &RunStats,
        resumed: u64,
        fatal: Option<&str>,
    ) -> Result<(), JournalError> {
        self.with(|conn| {
            conn.execute(
                "UPDATE runs SET ended_ms = ?2, status = ?3, requests_sent = requests_sent + ?4,
                    rate_limited = rate_limited + ?5, retries = retries + ?6,
                    credential_refreshes = credential_refreshes + ?7, resumed = ?8, fatal = ?9
                 WHERE id = ?1",
                params![
                    run,
                    now_ms(),
                    status,
                    stats.requests_sent as i64,
                    stats.rate_limited as i64,
                    stats.retries as i64,
                    stats.credential_refreshes as i64,
                    resumed as i64,
                    fatal
                ],
            )
            .map(drop)
        })
    }

    /// The API base that queued updates were planned for, if any are
    /// queued: they must not be sent anywhere else.
    pub fn pending_api_base(&self) -> Result<Option<(String, u64)>, JournalError> {
        self.with(|conn| {
            conn.query_row(
                "SELECT r.api_base, count(*) FROM sources s JOIN runs r ON r.id = s.run_id
                 GROUP BY r.api_base ORDER BY count(*) DESC LIMIT 1",
                [],
                |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64)),
            )
            .optional()
        })
    }

    /// Updates (after coalescing) still queued.
    pub fn pending_updates(&self) -> Result<u64, JournalError> {
        self.with(|conn| conn.query_row("SELECT count(*) FROM updates", [], |r| r.get::<_, i64>(0)))
            .map(|n| n as u64)
    }

    /// Records still queued, per run.
    pub fn pending_records(&self, run: Option<RunId>) -> Result<u64, JournalError> {
        self.with(|conn| match run {
            Some(run) => conn.query_row(
                "SELECT count(*) FROM sources WHERE run_id = ?1",
                [run],
                |r| r.get::<_, i64>(0),
            ),
            None => conn.query_row("SELECT count(*) FROM sources", [], |r| r.get::<_, i64>(0)),
        })
        .map(|n| n as u64)
    }

    /// Where an input file was read up to.
    pub fn checkpoint(&self, input: &str) -> Result<Option<Checkpoint>, JournalError> {
        self.with(|conn| {
            conn.query_row(
                "SELECT identity, offset, line, digest FROM checkpoints WHERE input = ?1",
                [input],
                |r| {
                    Ok(Checkpoint {
                        input: input.to_owned(),
                        identity: r.get(0)?,
                        offset: r.get::<_, i64>(1)? as u64,
                        line: r.get::<_, i64>(2)? as u64,
                        digest: r.get(3)?,
                    })
                },
            )
            .optional()
        })
    }

    /// Journals a batch of planned records, and the input position after
    /// them, in one durable transaction. A replayed record whose key
    /// has a newer update is held back (unless forced): not journaled, its
    /// letter not marked replayed.
    pub fn ingest(
        &self,
        run: RunId,
        batch: Vec<Incoming>,
        checkpoint: Option<&Checkpoint>,
        merge: Merge<'_>,
    ) -> Result<IngestReport, JournalError> {
        let mut state = self.state();
        state.healthy(&self.path)?;
        state.begin().map_err(|e| self.err(e))?;
        let State { conn, sending, .. } = &mut *state;
        let result = ingest_batch(conn, sending, run, batch, checkpoint, merge, &self.path)
            // Accepted means on disk, whatever happens to the machine next.
            .and_then(|coalesced| {
                state.commit().map_err(|e| self.err(e))?;
                Ok(coalesced)
            });
        if let Err(e) = &result {
            state.abandon(&e.to_string());
        }
        result
    }

    /// Hands out the oldest queued update whose key no worker owns, and
    /// claims its key.
    pub fn claim_next(&self) -> Result<Option<Claim>, JournalError> {
        let mut state = self.state();
        state.healthy(&self.path)?;
        let State {
            conn,
            claimed,
            cursor,
            ..
        } = &mut *state;
        let mut stmt = conn
            .prepare_cached("SELECT seq, key FROM updates WHERE seq > ?1 ORDER BY seq")
            .map_err(|e| self.err(e))?;
        let mut rows = stmt.query([*cursor]).map_err(|e| self.err(e))?;
        // Rows are read one at a time, only as far as the first free key.
        while let Some(row) = rows.next().map_err(|e| self.err(e))? {
            let seq: i64 = row.get(0).map_err(|e| self.err(e))?;
            let key: String = row.get(1).map_err(|e| self.err(e))?;
            *cursor = seq;
            // A key's owner takes its later updates itself, in order.
            if claimed.contains_key(&key) {
                continue;
            }
            claimed.insert(key.clone(), seq);
            return Ok(Some(Claim { key, seq }));
        }
        Ok(None)
    }

    /// Starts an attempt at `claim`: newer updates queued behind it fold in,
    /// and the request to send now (the newest state) is returned. Until
    /// [`Journal::attempt_failed`] or [`Journal::finish`], nothing merges
    /// into it.
    pub fn begin_attempt(
        &self,
        claim: &Claim,
        current_run: RunId,
        merge: Merge<'_>,
    ) -> Result<Request, JournalError> {
        let mut state = self.state();
        state.healthy(&self.path)?;
        let result = self.fold_later_updates(&mut state, claim, current_run, merge);
        match result {
            Ok(request) => {
                state.sending.insert(claim.seq);
                Ok(request)
            }
            Err(e) => {
                state.abandon(&e.to_string());
                Err(e)
            }
        }
    }

    fn fold_later_updates(
        &self,
        state: &mut State,
        claim: &Claim,
        current_run: RunId,
        merge: Merge<'_>,
    ) -> Result<Request, JournalError> {
        let tx = &state.conn;
        let mut request = load_request(tx, claim.seq, &self.path)?;
        let later: Vec<(i64, String)> = {
            let mut stmt = tx
                .prepare_cached(
                    "SELECT seq, request FROM updates WHERE key = ?1 AND seq > ?2 ORDER BY seq",
                )
                .map_err(|e| self.err(e))?;
            stmt.query_map(params![claim.key, claim.seq], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .and_then(|rows| rows.collect())
            .map_err(|e| self.err(e))?
        };
        if later.is_empty() {
            return Ok(request);
        }
        state.begin().map_err(|e| self.err(e))?;
        let tx = &state.conn;
        let mut folded = 0i64;
        for (seq, text) in later {
            let newer = parse_request(&text, &self.path)?;
            let Some(merged) = merge(&request, &newer) else {
                break;
            };
            request = merged;
            tx.execute(
                "UPDATE sources SET seq = ?1 WHERE seq = ?2",
                params![claim.seq, seq],
            )
            .map_err(|e| self.err(e))?;
            tx.execute("DELETE FROM updates WHERE seq = ?1", [seq])
                .map_err(|e| self.err(e))?;
            folded += 1;
        }
        if folded > 0 {
            store_request(tx, claim.seq, &request, &self.path)?;
            tx.execute(
                "UPDATE runs SET coalesced = coalesced + ?2 WHERE id = ?1",
                params![current_run, folded],
            )
            .map_err(|e| self.err(e))?;
        }
        state.done().map_err(|e| self.err(e))?;
        Ok(request)
    }

    /// The attempt did not reach a verdict (a 429, a transient failure, a
    /// refresh): newer updates may merge into it again while it waits.
    pub fn attempt_failed(&self, claim: &Claim) {
        self.state().sending.remove(&claim.seq);
    }

    /// Records the verdict on `claim` and credits its records to the runs
    /// that received them. Returns the key's next queued update, still
    /// claimed, or `None` after letting the key go.
    pub fn finish(
        &self,
        claim: &Claim,
        verdict: &Verdict,
        current_run: RunId,
    ) -> Result<Option<Claim>, JournalError> {
        let mut state = self.state();
        state.healthy(&self.path)?;
        let recorded = state
            .begin()
            .map_err(|e| self.err(e))
            .and_then(|()| finish_update(&state.conn, claim.seq, verdict, current_run, &self.path))
            .and_then(|()| {
                state
                    .conn
                    .prepare_cached("SELECT seq FROM updates WHERE key = ?1 ORDER BY seq LIMIT 1")
                    .and_then(|mut s| s.query_row([&claim.key], |r| r.get(0)).optional())
                    .map_err(|e| self.err(e))
            })
            .and_then(|next| {
                state.done().map_err(|e| self.err(e))?;
                Ok(next)
            });
        let next: Option<i64> = match recorded {
            Ok(next) => next,
            Err(e) => {
                state.abandon(&e.to_string());
                return Err(e);
            }
        };
        let State {
            sending, claimed, ..
        } = &mut *state;
        sending.remove(&claim.seq);
        Ok(match next {
            Some(seq) => {
                claimed.insert(claim.key.clone(), seq);
                Some(Claim {
                    key: claim.key.clone(),
                    seq,
                })
            }
            None => {
                claimed.remove(&claim.key);
                None
            }
        })
    }

    /// Lets a key go without a verdict (the run stopped): its updates stay
    /// queued for the next run.
    pub fn release(&self, claim: &Claim) {
        let mut state = self.state();
        state.sending.remove(&claim.seq);
        state.claimed.remove(&claim.key);
    }

    /// Updates queued by earlier runs (taken over by a new run).
    pub fn records_of_other_runs(&self, run: RunId) -> Result<u64, JournalError> {
        self.with(|conn| {
            conn.query_row(
                "SELECT count(*) FROM sources WHERE run_id <> ?1",
                [run],
                |r| r.get::<_, i64>(0),
            )
        })
        .map(|n| n as u64)
    }

    /// One run with its counts.
    pub fn run(&self, id: RunId) -> Result<RunRecord, JournalError> {
        let state = self.state();
        let conn = &state.conn;
        let mut record = conn
            .query_row(
                &format!("SELECT {RUN_COLUMNS} FROM runs WHERE id = ?1"),
                [id],
                run_from_row,
            )
            .optional()
            .map_err(|e| self.err(e))?
            .ok_or(JournalError::NoSuchRun(id))?;
        fill_run_details(conn, &mut record).map_err(|e| self.err(e))?;
        Ok(record)
    }

    /// The newest runs first.
    pub fn runs(&self, limit: usize) -> Result<Vec<RunRecord>, JournalError> {
        let state = self.state();
        let conn = &state.conn;
        let mut runs: Vec<RunRecord> = {
            let mut stmt = conn
                .prepare(&format!(
                    "SELECT {RUN_COLUMNS} FROM runs ORDER BY id DESC LIMIT ?1"
                ))
                .map_err(|e| self.err(e))?;
            stmt.query_map([limit as i64], run_from_row)
                .and_then(|rows| rows.collect())
                .map_err(|e| self.err(e))?
        };
        for run in &mut runs {
            fill_run_details(conn, run).map_err(|e| self.err(e))?;
        }
        Ok(runs)
    }

    /// The id of the newest run.
    pub fn last_run(&self) -> Result<Option<RunId>, JournalError> {
        self.with(|conn| {
            conn.query_row("SELECT max(id) FROM runs", [], |r| {
                r.get::<_, Option<i64>>(0)
            })
        })
    }

    /// Dead letters matching `filter`, oldest first.
    pub fn dead_letters(&self, filter: &LetterFilter) -> Result<Vec<DeadLetter>, JournalError> {
        self.query_letters(
            "id, run_id, created_ms, line, record, request, status, response, code, reason, replayed_by",
            filter,
            |r| {
                let record: String = r.get(4)?;
                let request: Option<String> = r.get(5)?;
                Ok(DeadLetter {
                    id: r.get(0)?,
                    run: r.get(1)?,
                    created_ms: r.get::<_, i64>(2)? as u64,
                    line: r.get::<_, i64>(3)? as u64,
                    record: json_or_text(&record),
                    request: request.as_deref().map(json_or_text),
                    status: r.get::<_, Option<i64>>(6)?.map(|s| s as u16),
                    response: r.get(7)?,
                    code: r.get(8)?,
                    reason: r.get(9)?,
                    replayed_by: r.get(10)?,
                })
            },
        )
    }

    /// `(letter id, line, raw record text, when the record was received)`
    /// of dead letters, for a replay. Letters of an older host, which did
    /// not record the time, count as received when they died.
    pub fn letter_records(
        &self,
        filter: &LetterFilter,
    ) -> Result<Vec<(i64, u64, String, u64)>, JournalError> {
        self.query_letters(
            "id, line, record, COALESCE(received_ms, created_ms)",
            filter,
            |r| {
                Ok((
                    r.get(0)?,
                    r.get::<_, i64>(1)? as u64,
                    r.get(2)?,
                    r.get::<_, i64>(3)?.max(0) as u64,
                ))
            },
        )
    }

    /// `columns` of the dead letters matching `filter`, oldest first.
    fn query_letters<T>(
        &self,
        columns: &str,
        filter: &LetterFilter,
        row: impl FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    ) -> Result<Vec<T>, JournalError> {
        let state = self.state();
        let mut sql = format!("SELECT {columns} FROM dead_letters WHERE 1 = 1");
        let mut args: Vec<rusqlite::types::Value> = Vec::new();
        if let Some(run) = filter.run {
            sql.push_str(" AND run_id = ?");
            args.push(run.into());
        }
        if let Some(code) = &filter.code {
            sql.push_str(" AND code = ?");
            args.push(code.clone().into());
        }
        if !filter.ids.is_empty() {
            sql.push_str(" AND id IN (");
            sql.push_str(&vec!["?"; filter.ids.len()].join(","));
            sql.push(')');
            args.extend(filter.ids.iter().map(|&id| id.into()));
        }
        if !filter.include_replayed {
            sql.push_str(" AND replayed_by IS NULL");
        }
        sql.push_str(" ORDER BY id");
        let mut stmt = state.conn.prepare(&sql).map_err(|e| self.err(e))?;
        stmt.query_map(rusqlite::params_from_iter(args), row)
            .and_then(|rows| rows.collect())
            .map_err(|e| self.err(e))
    }

    /// Whether any update is queued (for stall alerts).
    pub fn has_pending(&self) -> Result<bool, JournalError> {
        self.with(|conn| conn.query_row("SELECT EXISTS(SELECT 1 FROM updates)", [], |r| r.get(0)))
    }
}

const RUN_COLUMNS: &str = "id, kind, status, started_ms, ended_ms, destination, api_base, input,
    received, delivered, rejected, skipped, updates_delivered, coalesced, requests_sent,
    rate_limited, retries, credential_refreshes, resumed, fatal";

fn run_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<RunRecord> {
    let n = |i: usize| r.get::<_, i64>(i).map(|v| v as u64);
    Ok(RunRecord {
        id: r.get(0)?,
        kind: r.get(1)?,
        status: r.get(2)?,
        started_ms: n(3)?,
        ended_ms: r.get::<_, Option<i64>>(4)?.map(|v| v as u64),
        destination: r.get(5)?,
        api_base: r.get(6)?,
        input: r.get(7)?,
        counts: Counts {
            received: n(8)?,
            delivered: n(9)?,
            rejected: n(10)?,
            skipped: n(11)?,
        },
        pending: 0,
        updates_delivered: n(12)?,
        coalesced: n(13)?,
        requests_sent: n(14)?,
        rate_limited: n(15)?,
        retries: n(16)?,
        credential_refreshes: n(17)?,
        resumed: n(18)?,
        fatal: r.get(19)?,
        audiences: Default::default(),
        failures: Default::default(),
    })
}

fn fill_run_details(conn: &Connection, run: &mut RunRecord) -> rusqlite::Result<()> {
    run.pending = conn.query_row(
        "SELECT count(*) FROM sources WHERE run_id = ?1 AND first_part = 1",
        [run.id],
        |r| r.get::<_, i64>(0),
    )? as u64;
    let mut stmt = conn.prepare_cached(
        "SELECT audience, received, delivered, rejected, skipped FROM run_audiences WHERE run_id = ?1",
    )?;
    let audiences = stmt.query_map([run.id], |r| {
        Ok((
            r.get::<_, String>(0)?,
            Counts {
                received: r.get::<_, i64>(1)? as u64,
                delivered: r.get::<_, i64>(2)? as u64,
                rejected: r.get::<_, i64>(3)? as u64,
                skipped: r.get::<_, i64>(4)? as u64,
            },
        ))
    })?;
    run.audiences = audiences.collect::<rusqlite::Result<_>>()?;
    let mut stmt = conn.prepare_cached("SELECT code, count FROM run_failures WHERE run_id = ?1")?;
    let failures = stmt.query_map([run.id], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64))
    })?;
    run.failures = failures.collect::<rusqlite::Result<_>>()?;
    Ok(())
}

fn now_ms() -> i64 {
    i64::try_from(now_epoch_ms()).unwrap_or(i64::MAX)
}

fn json_or_text(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_owned()))
}

/// Refuses a file that is not an SQLite database or is shorter than its
/// header says, before SQLite gets to it. Returns whether it has content.
fn check_file(path: &Path) -> Result<bool, JournalError> {
    let io = |source| JournalError::Io {
        path: path.to_owned(),
        source,
    };
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(io(e)),
    };
    let len = file.metadata().map_err(io)?.len();
    if len == 0 {
        // The host never leaves an empty journal behind (the schema is
        // written when the file is created): an empty one was truncated.
        return Err(JournalError::Corrupt {
            path: path.to_owned(),
            detail: "truncated to 0 bytes".into(),
        });
    }
    let mut header = [0u8; 100];
    let read = read_up_to(&mut file, &mut header).map_err(io)?;
    if read < 16 || &header[..16] != SQLITE_MAGIC {
        return Err(JournalError::NotAJournal {
            path: path.to_owned(),
            detail: "not an SQLite database".into(),
        });
    }
    if read < 100 {
        return Err(JournalError::Corrupt {
            path: path.to_owned(),
            detail: format!("truncated to {len} bytes, inside the database header"),
        });
    }
    let be32 = |at: usize| {
        u32::from_be_bytes([header[at], header[at + 1], header[at + 2], header[at + 3]])
    };
    let page_size = match u16::from_be_bytes([header[16], header[17]]) {
        1 => 65_536u64,
        n => u64::from(n),
    };
    let pages = u64::from(be32(28));
    // A crash in the middle of a checkpoint leaves the header (page 1 is
    // copied first) ahead of the file; the write-ahead log still holds
    // every page, and SQLite completes the checkpoint from it. Only with
    // no log left is a file shorter than its header truncated.
    let wal_has_frames = {
        let mut wal = path.as_os_str().to_owned();
        wal.push("-wal");
        std::fs::metadata(PathBuf::from(wal)).is_ok_and(|m| m.len() > 32)
    };
    // The in-header size is valid when the change counter matches the
    // version it was written at (SQLite file format §1.3.7).
    if !wal_has_frames
        && be32(24) == be32(92)
        && pages > 0
        && page_size >= 512
        && pages * page_size > len
    {
        return Err(JournalError::Corrupt {
            path: path.to_owned(),
            detail: format!(
                "truncated: the header says {} bytes ({pages} pages of {page_size}), the file has {len}",
                pages * page_size
            ),
        });
    }
    Ok(true)
}

fn read_up_to(file: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

fn parse_request(text: &str, path: &Path) -> Result<Request, JournalError> {
    serde_json::from_str(text).map_err(|e| JournalError::BadRow {
        path: path.to_owned(),
        what: "update",
        detail: e.to_string(),
    })
}

fn load_request(tx: &Connection, seq: i64, path: &Path) -> Result<Request, JournalError> {
    let text: String = tx
        .query_row("SELECT request FROM updates WHERE seq = ?1", [seq], |r| {
            r.get(0)
        })
        .map_err(|source| JournalError::Sqlite {
            path: path.to_owned(),
            source,
        })?;
    parse_request(&text, path)
}

fn store_request(
    tx: &Connection,
    seq: i64,
    request: &Request,
    path: &Path,
) -> Result<(), JournalError> {
    let text = serde_json::to_string(request).map_err(|e| JournalError::BadRow {
        path: path.to_owned(),
        what: "update",
        detail: e.to_string(),
    })?;
    tx.execute(
        "UPDATE updates SET request = ?1 WHERE seq = ?2",
        params![text, seq],
    )
    .map(drop)
    .map_err(|source| JournalError::Sqlite {
        path: path.to_owned(),
        source,
    })
}

/// Which count a record's fate adds to.
#[derive(Clone, Copy)]
enum Fate {
    Delivered,
    Rejected,
    Skipped,
}

/// Adds one record's fate to its run's counters.
fn credit(
    tx: &Connection,
    run: RunId,
    audiences: &[String],
    fate: Fate,
    received: bool,
    record_level: bool,
    failure: Option<&str>,
) -> rusqlite::Result<()> {
    let column = match fate {
        Fate::Delivered => "delivered",
        Fate::Rejected => "rejected",
        Fate::Skipped => "skipped",
    };
    let received = i64::from(received);
    for audience in audiences {
        tx.prepare_cached(&format!(
            "INSERT INTO run_audiences(run_id, audience, received, {column}) VALUES (?1, ?2, ?3, 1)
             ON CONFLICT(run_id, audience) DO UPDATE SET received = received + ?3, {column} = {column} + 1"
        ))?
        .execute(params![run, audience, received])?;
    }
    if record_level {
        tx.prepare_cached(&format!(
            "UPDATE runs SET received = received + ?2, {column} = {column} + 1 WHERE id = ?1"
        ))?
        .execute(params![run, received])?;
    }
    if let Some(code) = failure {
        tx.prepare_cached(
            "INSERT INTO run_failures(run_id, code, count) VALUES (?1, ?2, 1)
             ON CONFLICT(run_id, code) DO UPDATE SET count = count + 1",
        )?
        .execute(params![run, code])?;
    }
    Ok(())
}

fn credit_received(tx: &Connection, run: RunId, audiences: &[String]) -> rusqlite::Result<()> {
    for audience in audiences {
        tx.prepare_cached(
            "INSERT INTO run_audiences(run_id, audience, received) VALUES (?1, ?2, 1)
             ON CONFLICT(run_id, audience) DO UPDATE SET received = received + 1",
        )?
        .execute(params![run, audience])?;
    }
    tx.prepare_cached("UPDATE runs SET received = received + 1 WHERE id = ?1")?
        .execute([run])?;
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn insert_letter(
    tx: &Connection,
    run: RunId,
    line: u64,
    record: &str,
    request: Option<&str>,
    status: Option<u16>,
    response: Option<&str>,
    code: &str,
    reason: &str,
    received_ms: i64,
) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO dead_letters(run_id, created_ms, line, record, request, status, response, code, reason, received_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    )?
    .execute(params![
        run,
        now_ms(),
        line as i64,
        record,
        request,
        status,
        response,
        code,
        reason,
        received_ms
    ])
    .map(drop)
}

/// The most of an API answer a dead letter keeps: enough for any error
/// document, not a copy of whatever a broken server sent.
pub const MAX_STORED_RESPONSE_BYTES: usize = 64 << 10;

/// `text` cut to [`MAX_STORED_RESPONSE_BYTES`] at a character boundary,
/// saying how long it was.
fn bounded_response(text: &str) -> std::borrow::Cow<'_, str> {
    if text.len() <= MAX_STORED_RESPONSE_BYTES {
        return text.into();
    }
    let mut end = MAX_STORED_RESPONSE_BYTES;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… [{} bytes in all; cut]", &text[..end], text.len()).into()
}

fn ingest_batch(
    conn: &mut Connection,
    sending: &HashSet<i64>,
    run: RunId,
    batch: Vec<Incoming>,
    checkpoint: Option<&Checkpoint>,
    merge: Merge<'_>,
    path: &Path,
) -> Result<IngestReport, JournalError> {
    let sqlite = |source| JournalError::Sqlite {
        path: path.to_owned(),
        source,
    };
    let tx: &Connection = conn;
    let mut report = IngestReport::default();
    let now = now_ms();
    for incoming in batch {
        let received_ms = incoming
            .replay
            .map_or(now, |r| i64::try_from(r.received_ms).unwrap_or(i64::MAX));
        if let (Some(replay), PlanOutcome::Send(requests)) = (&incoming.replay, &incoming.outcome)
            && !replay.force
            && let Some(held) = newer_update(tx, requests, received_ms).map_err(sqlite)?
        {
            let (key, newer_ms) = held;
            let reason = format!(
                "key {key} has a newer update (received {}) than this record (received {}); replaying would overwrite it (--force sends it anyway)",
                crate::format_utc(u64::try_from(newer_ms).unwrap_or(0) / 1000, ' '),
                crate::format_utc(u64::try_from(received_ms).unwrap_or(0) / 1000, ' '),
            );
            report.held_back.push(HeldBack {
                letter: replay.letter,
                line: incoming.line,
                key,
                reason,
            });
            continue;
        }
        if let Some(replay) = incoming.replay {
            tx.prepare_cached("UPDATE dead_letters SET replayed_by = ?1 WHERE id = ?2")
                .and_then(|mut s| s.execute(params![run, replay.letter]))
                .map_err(sqlite)?;
        }
        match incoming.outcome {
            PlanOutcome::Skip(_) => {
                credit(
                    tx,
                    run,
                    &[],
                    Fate::Skipped,
                    true,
                    true,
                    Some("nothing-to-write"),
                )
                .map_err(sqlite)?;
            }
            PlanOutcome::Invalid(error) => {
                let fate = match error.fate {
                    RecordFate::Skipped => Fate::Skipped,
                    RecordFate::Rejected => Fate::Rejected,
                };
                credit(
                    tx,
                    run,
                    &error.audiences,
                    fate,
                    true,
                    true,
                    Some(&error.code),
                )
                .map_err(sqlite)?;
                insert_letter(
                    tx,
                    run,
                    incoming.line,
                    &incoming.record,
                    None,
                    None,
                    None,
                    &error.code,
                    &error.message,
                    received_ms,
                )
                .map_err(sqlite)?;
            }
            PlanOutcome::Send(requests) => {
                let mut all_audiences: Vec<String> = Vec::new();
                for request in &requests {
                    for a in &request.audiences {
                        if !all_audiences.contains(a) {
                            all_audiences.push(a.clone());
                        }
                    }
                }
                credit_received(tx, run, &all_audiences).map_err(sqlite)?;
                for (part, request) in requests.into_iter().enumerate() {
                    let audiences =
                        serde_json::to_string(&request.audiences).unwrap_or_else(|_| "[]".into());
                    let seq = match enqueue(tx, sending, request, merge, path)? {
                        Enqueued::Merged(seq) => {
                            report.coalesced += 1;
                            seq
                        }
                        Enqueued::New(seq) => seq,
                    };
                    tx.prepare_cached(
                        "INSERT INTO sources(seq, run_id, line, first_part, record, audiences, received_ms)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                    )
                    .and_then(|mut s| {
                        s.execute(params![
                            seq,
                            run,
                            incoming.line as i64,
                            part == 0,
                            incoming.record,
                            audiences,
                            received_ms
                        ])
                    })
                    .map_err(sqlite)?;
                }
            }
        }
    }
    if report.coalesced > 0 {
        tx.execute(
            "UPDATE runs SET coalesced = coalesced + ?2 WHERE id = ?1",
            params![run, report.coalesced as i64],
        )
        .map_err(sqlite)?;
    }
    if let Some(c) = checkpoint {
        tx.execute(
            "INSERT INTO checkpoints(input, identity, offset, line, updated_ms, digest)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT(input) DO UPDATE SET identity = ?2, offset = ?3, line = ?4, updated_ms = ?5, digest = ?6",
            params![c.input, c.identity, c.offset as i64, c.line as i64, now_ms(), c.digest],
        )
        .map_err(sqlite)?;
    }
    Ok(report)
}

/// The key and time of the newest update — delivered, or queued — that
/// one of `requests`' keys received after `received_ms`.
fn newer_update(
    tx: &Connection,
    requests: &[Request],
    received_ms: i64,
) -> rusqlite::Result<Option<(String, i64)>> {
    for request in requests {
        let delivered: Option<i64> = tx
            .prepare_cached("SELECT received_ms FROM delivered WHERE key = ?1")?
            .query_row([&request.key], |r| r.get(0))
            .optional()?;
        let queued: Option<i64> = tx
            .prepare_cached(
                "SELECT max(s.received_ms) FROM sources s JOIN updates u ON u.seq = s.seq WHERE u.key = ?1",
            )?
            .query_row([&request.key], |r| r.get(0))?;
        if let Some(newest) = delivered.max(queued).filter(|t| *t > received_ms) {
            return Ok(Some((request.key.clone(), newest)));
        }
    }
    Ok(None)
}

enum Enqueued {
    Merged(i64),
    New(i64),
}

/// Merges `request` into the newest queued update for its key when that one
/// is not on the wire and the two merge; otherwise queues it behind.
fn enqueue(
    tx: &Connection,
    sending: &HashSet<i64>,
    request: Request,
    merge: Merge<'_>,
    path: &Path,
) -> Result<Enqueued, JournalError> {
    let sqlite = |source| JournalError::Sqlite {
        path: path.to_owned(),
        source,
    };
    let newest: Option<(i64, String)> = tx
        .prepare_cached("SELECT seq, request FROM updates WHERE key = ?1 ORDER BY seq DESC LIMIT 1")
        .and_then(|mut s| {
            s.query_row([&request.key], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()
        })
        .map_err(sqlite)?;
    if let Some((seq, text)) = newest
        && !sending.contains(&seq)
    {
        let older = parse_request(&text, path)?;
        if let Some(merged) = merge(&older, &request) {
            store_request(tx, seq, &merged, path)?;
            return Ok(Enqueued::Merged(seq));
        }
    }
    let text = serde_json::to_string(&request).map_err(|e| JournalError::BadRow {
        path: path.to_owned(),
        what: "update",
        detail: e.to_string(),
    })?;
    tx.prepare_cached("INSERT INTO updates(key, request) VALUES (?1, ?2)")
        .and_then(|mut s| s.execute(params![request.key, text]))
        .map_err(sqlite)?;
    Ok(Enqueued::New(tx.last_insert_rowid()))
}

fn finish_update(
    tx: &Connection,
    seq: i64,
    verdict: &Verdict,
    current_run: RunId,
    path: &Path,
) -> Result<(), JournalError> {
    let sqlite = |source| JournalError::Sqlite {
        path: path.to_owned(),
        source,
    };
    type SourceRow = (i64, i64, bool, String, String, i64);
    let sources: Vec<SourceRow> = tx
        .prepare_cached(
            "SELECT run_id, line, first_part, record, audiences, received_ms FROM sources WHERE seq = ?1 ORDER BY id",
        )
        .and_then(|mut s| {
            s.query_map([seq], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?))
            })
            .and_then(|rows| rows.collect())
        })
        .map_err(sqlite)?;
    if matches!(verdict, Verdict::Delivered)
        && let Some(newest) = sources.iter().map(|s| s.5).max()
    {
        tx.prepare_cached(
            "INSERT INTO delivered(key, received_ms, delivered_ms)
             SELECT key, ?2, ?3 FROM updates WHERE seq = ?1
             ON CONFLICT(key) DO UPDATE SET received_ms = max(received_ms, excluded.received_ms),
                 delivered_ms = excluded.delivered_ms",
        )
        .and_then(|mut s| s.execute(params![seq, newest, now_ms()]))
        .map_err(sqlite)?;
    }
    let (request_text, status, response) = match verdict {
        Verdict::Delivered => (None, None, None),
        Verdict::Rejected {
            request, response, ..
        } => (
            request.as_ref().map(|r| request_summary(r).to_string()),
            response.as_ref().map(|r| r.status),
            response
                .as_ref()
                .map(|r| bounded_response(&r.body).into_owned()),
        ),
    };
    for (run, line, first_part, record, audiences, received_ms) in &sources {
        let audiences: Vec<String> = serde_json::from_str(audiences).unwrap_or_default();
        match verdict {
            Verdict::Delivered => {
                credit(
                    tx,
                    *run,
                    &audiences,
                    Fate::Delivered,
                    false,
                    *first_part,
                    None,
                )
                .map_err(sqlite)?;
            }
            Verdict::Rejected { code, reason, .. } => {
                credit(
                    tx,
                    *run,
                    &audiences,
                    Fate::Rejected,
                    false,
                    *first_part,
                    Some(code),
                )
                .map_err(sqlite)?;
                insert_letter(
                    tx,
                    *run,
                    *line as u64,
                    record,
                    request_text.as_deref(),
                    status,
                    response.as_deref(),
                    code,
                    reason,
                    *received_ms,
                )
                .map_err(sqlite)?;
            }
        }
    }
    if matches!(verdict, Verdict::Delivered) {
        tx.prepare_cached(
            "UPDATE runs SET updates_delivered = updates_delivered + 1 WHERE id = ?1",
        )
        .and_then(|mut s| s.execute([current_run]))
        .map_err(sqlite)?;
    }
    tx.prepare_cached("DELETE FROM sources WHERE seq = ?1")
        .and_then(|mut s| s.execute([seq]))
        .map_err(sqlite)?;
    tx.prepare_cached("DELETE FROM updates WHERE seq = ?1")
        .and_then(|mut s| s.execute([seq]))
        .map_err(sqlite)?;
    Ok(())
}

/// The request as a dead letter shows it: method, path, body as JSON.
pub fn request_summary(request: &Request) -> Value {
    json!({
        "method": request.method,
        "path": request.path,
        "body": json_or_text(&request.body),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use destination_types::{Header, Method};

    /// An update of item `id` setting `attributes` (a JSON object).
    fn patch(id: u64, attributes: Value, audiences: &[&str]) -> Request {
        Request {
            method: Method::Patch,
            path: format!("/items/{id}"),
            headers: vec![Header {
                name: "Content-Type".into(),
                value: "application/json".into(),
            }],
            body: attributes.to_string(),
            key: id.to_string(),
            audiences: audiences.iter().map(|a| a.to_string()).collect(),
        }
    }

    fn attributes(r: &Request) -> Value {
        serde_json::from_str::<Value>(&r.body).unwrap()
    }

    /// A destination's merge for these tests: two bodies that are JSON
    /// objects combine member by member, the newer winning.
    fn merge(older: &Request, newer: &Request) -> Option<Request> {
        let Value::Object(mut members) = serde_json::from_str(&older.body).ok()? else {
            return None;
        };
        let Value::Object(newer_members) = serde_json::from_str(&newer.body).ok()? else {
            return None;
        };
        members.extend(newer_members);
        let mut audiences = older.audiences.clone();
        audiences.extend(
            newer
                .audiences
                .iter()
                .filter(|a| !older.audiences.contains(a))
                .cloned(),
        );
        Some(Request {
            body: Value::Object(members).to_string(),
            audiences,
            ..newer.clone()
        })
    }

    fn incoming(line: u64, request: Request) -> Incoming {
        Incoming {
            line,
            record: format!("{{\"line\": {line}}}"),
            outcome: PlanOutcome::Send(vec![request]),
            replay: None,
        }
    }

    fn journal_with_run() -> (Journal, RunId) {
        let journal = Journal::in_memory().unwrap();
        let run = journal
            .start_run("run", "test", "http://127.0.0.1/api/v2", None)
            .unwrap();
        (journal, run)
    }

    #[test]
    fn updates_queued_for_one_key_merge_until_one_is_on_the_wire() {
        let (journal, run) = journal_with_run();
        let merged = journal
            .ingest(
                run,
                vec![
                    incoming(
                        1,
                        patch(7, json!({"firstName": "A", "title": "T"}), &["news"]),
                    ),
                    incoming(2, patch(8, json!({"firstName": "Other"}), &[])),
                    incoming(3, patch(7, json!({"firstName": "B"}), &["vip"])),
                ],
                None,
                &merge,
            )
            .unwrap();
        assert_eq!(merged.coalesced, 1);
        assert_eq!(journal.pending_updates().unwrap(), 2);
        assert_eq!(journal.pending_records(Some(run)).unwrap(), 3);

        // Dispatch in journal order; a claimed update still takes merges
        // while it waits for the limiter.
        let seven = journal.claim_next().unwrap().unwrap();
        assert_eq!(seven.key, "7");
        let eight = journal.claim_next().unwrap().unwrap();
        assert_eq!(eight.key, "8");
        assert_eq!(journal.claim_next().unwrap(), None);
        journal
            .ingest(
                run,
                vec![incoming(4, patch(7, json!({"title": "U"}), &[]))],
                None,
                &merge,
            )
            .unwrap();
        let on_the_wire = journal.begin_attempt(&seven, run, &merge).unwrap();
        assert_eq!(
            attributes(&on_the_wire),
            json!({"firstName": "B", "title": "U"})
        );
        assert_eq!(on_the_wire.audiences, ["news", "vip"]);

        // Once on the wire, a newer update queues behind it instead ...
        journal
            .ingest(
                run,
                vec![incoming(5, patch(7, json!({"title": "V"}), &[]))],
                None,
                &merge,
            )
            .unwrap();
        assert_eq!(journal.pending_updates().unwrap(), 3);
        // ... and dispatch leaves it to the key's owner.
        assert_eq!(journal.claim_next().unwrap(), None);

        // A retry folds it in: the next attempt carries the newest state.
        journal.attempt_failed(&seven);
        let retried = journal.begin_attempt(&seven, run, &merge).unwrap();
        assert_eq!(
            attributes(&retried),
            json!({"firstName": "B", "title": "V"})
        );
        assert_eq!(journal.pending_updates().unwrap(), 2);

        // The verdict credits all five records to their run.
        assert_eq!(
            journal.finish(&seven, &Verdict::Delivered, run).unwrap(),
            None
        );
        assert_eq!(
            journal.finish(&eight, &Verdict::Delivered, run).unwrap(),
            None
        );
        let record = journal.run(run).unwrap();
        assert_eq!(record.counts.received, 5);
        assert_eq!(record.counts.delivered, 5);
        assert_eq!(record.updates_delivered, 2);
        assert_eq!(record.coalesced, 3);
        assert_eq!(record.pending, 0);
        assert_eq!(record.audiences["news"].delivered, 1);
        assert_eq!(journal.pending_updates().unwrap(), 0);
    }

    /// The journal files as a crash in the middle of a checkpoint leaves
    /// them: the log holds every committed page, and page 1 (with the new
    /// size) has already been copied into a main file that has not grown.
    #[test]
    fn a_crash_during_a_checkpoint_is_not_mistaken_for_truncation() {
        let dir =
            std::env::temp_dir().join(format!("outreach-journal-ckpt-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let (live, crashed) = (dir.join("live.sqlite"), dir.join("crashed.sqlite"));
        let journal = Journal::open(&live).unwrap();
        let run = journal
            .start_run("run", "t", "http://127.0.0.1/api/v2", None)
            .unwrap();
        let batch = (1..=300)
            .map(|id| incoming(id, patch(id, json!({"firstName": "x".repeat(200)}), &[])))
            .collect();
        journal.ingest(run, batch, None, &merge).unwrap();
        // What is on disk now, as a SIGKILL would leave it.
        std::fs::copy(&live, &crashed).unwrap();
        let wal = std::fs::read(dir.join("live.sqlite-wal")).unwrap();
        std::fs::write(dir.join("crashed.sqlite-wal"), &wal).unwrap();
        drop(journal);
        // The checkpoint had copied the newest page 1 from the log.
        let page_size = u32::from_be_bytes(wal[8..12].try_into().unwrap()) as usize;
        let frame = 24 + page_size;
        let newest_page_one = wal[32..]
            .chunks_exact(frame)
            .rfind(|f| u32::from_be_bytes(f[..4].try_into().unwrap()) == 1)
            .expect("page 1 is in the log");
        let mut main = std::fs::read(&crashed).unwrap();
        main[..page_size].copy_from_slice(&newest_page_one[24..]);
        std::fs::write(&crashed, &main).unwrap();
        let header_pages = u32::from_be_bytes(main[28..32].try_into().unwrap()) as usize;
        assert!(
            header_pages * page_size > main.len(),
            "the header must run ahead"
        );

        let journal = Journal::open(&crashed).unwrap();
        assert_eq!(journal.pending_updates().unwrap(), 300);
        drop(journal);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn one_deliverer_per_journal_file_whatever_path_reaches_it() {
        let dir =
            std::env::temp_dir().join(format!("outreach-journal-lock-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("real")).unwrap();
        let path = dir.join("real").join("journal.sqlite");
        let first = Journal::open(&path).unwrap();
        std::os::unix::fs::symlink(dir.join("real"), dir.join("link")).unwrap();
        std::fs::hard_link(&path, dir.join("hard.sqlite")).unwrap();
        for other in [
            dir.join("link").join("journal.sqlite"),
            dir.join("real").join(".").join("journal.sqlite"),
            dir.join("hard.sqlite"),
        ] {
            assert!(
                matches!(Journal::open(&other), Err(JournalError::Locked { .. })),
                "{} opened a second deliverer",
                other.display()
            );
        }
        drop(first);
        Journal::open(&dir.join("link").join("journal.sqlite")).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_lost_verdict_stops_the_queue_so_no_older_update_overtakes_a_newer_one() {
        let dir =
            std::env::temp_dir().join(format!("outreach-journal-lost-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("journal.sqlite");
        {
            let journal = Journal::open(&path).unwrap();
            let run = journal
                .start_run("run", "t", "http://127.0.0.1/api/v2", None)
                .unwrap();
            let older = patch(7, json!({"firstName": "Older"}), &[]);
            journal
                .ingest(run, vec![incoming(1, older)], None, &merge)
                .unwrap();
            let claim = journal.claim_next().unwrap().unwrap();
            journal.begin_attempt(&claim, run, &merge).unwrap();
            // A newer update queues behind the one on the wire.
            let newer = patch(7, json!({"firstName": "Newer"}), &[]);
            journal
                .ingest(run, vec![incoming(2, newer)], None, &merge)
                .unwrap();
            // The older one is delivered; its verdict waits in the group
            // while the worker moves on to the newer one.
            let next = journal
                .finish(&claim, &Verdict::Delivered, run)
                .unwrap()
                .unwrap();
            journal.fail_next_commit();
            assert!(journal.flush().is_err());
            // The older update's verdict is lost: nothing further may be
            // sent or recorded, or the newer one could be marked done while
            // the older one is still queued.
            assert!(matches!(
                journal.begin_attempt(&next, run, &merge),
                Err(JournalError::Failed { .. })
            ));
            assert!(journal.finish(&next, &Verdict::Delivered, run).is_err());
            assert!(journal.claim_next().is_err());
            let late = patch(8, json!({"firstName": "Late"}), &[]);
            assert!(
                journal
                    .ingest(run, vec![incoming(3, late)], None, &merge)
                    .is_err()
            );
        }
        // Opened again, the queue holds both, in order: the older one, with
        // the newer one folded in (newer values win), so the prospect ends
        // with the newer values — never the older ones over them.
        let journal = Journal::open(&path).unwrap();
        let run = journal
            .start_run("resume", "t", "http://127.0.0.1/api/v2", None)
            .unwrap();
        assert_eq!(journal.pending_updates().unwrap(), 2);
        let first = journal.claim_next().unwrap().unwrap();
        let request = journal.begin_attempt(&first, run, &merge).unwrap();
        assert_eq!(attributes(&request), json!({"firstName": "Newer"}));
        assert_eq!(
            journal.finish(&first, &Verdict::Delivered, run).unwrap(),
            None
        );
        assert_eq!(journal.claim_next().unwrap(), None);
        drop(journal);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_dead_letter_keeps_a_bounded_part_of_a_huge_answer() {
        let (journal, run) = journal_with_run();
        let request = patch(7, json!({"firstName": "A"}), &[]);
        journal
            .ingest(run, vec![incoming(1, request.clone())], None, &merge)
            .unwrap();
        let claim = journal.claim_next().unwrap().unwrap();
        journal.begin_attempt(&claim, run, &merge).unwrap();
        let body = "é".repeat(1 << 20); // 2 MiB of two-byte characters
        let rejected = Verdict::Rejected {
            code: "validation-error".into(),
            reason: "refused".into(),
            request: Some(request),
            response: Some(Response {
                status: 422,
                headers: vec![],
                body,
            }),
        };
        journal.finish(&claim, &rejected, run).unwrap();
        let letters = journal.dead_letters(&LetterFilter::default()).unwrap();
        let stored = letters[0].response.as_deref().unwrap();
        assert!(
            stored.len() <= MAX_STORED_RESPONSE_BYTES + 64,
            "{}",
            stored.len()
        );
        assert!(stored.ends_with("[2097152 bytes in all; cut]"));
    }

    #[test]
    fn the_owner_of_a_key_takes_the_next_update_after_a_verdict() {
        let (journal, run) = journal_with_run();
        journal
            .ingest(
                run,
                vec![incoming(1, patch(7, json!({"firstName": "A"}), &["news"]))],
                None,
                &merge,
            )
            .unwrap();
        let claim = journal.claim_next().unwrap().unwrap();
        journal.begin_attempt(&claim, run, &merge).unwrap();
        journal
            .ingest(
                run,
                vec![incoming(2, patch(7, json!({"firstName": "B"}), &["news"]))],
                None,
                &merge,
            )
            .unwrap();
        let rejected = Verdict::Rejected {
            code: "validation-error".into(),
            reason: "custom4 is not a field".into(),
            request: None,
            response: None,
        };
        let next = journal.finish(&claim, &rejected, run).unwrap().unwrap();
        assert_eq!(next.key, "7");
        assert_eq!(journal.claim_next().unwrap(), None);
        let request = journal.begin_attempt(&next, run, &merge).unwrap();
        assert_eq!(attributes(&request), json!({"firstName": "B"}));
        assert_eq!(
            journal.finish(&next, &Verdict::Delivered, run).unwrap(),
            None
        );

        let letters = journal.dead_letters(&LetterFilter::default()).unwrap();
        assert_eq!(letters.len(), 1);
        assert_eq!(letters[0].line, 1);
        assert_eq!(letters[0].code, "validation-error");
        let record = journal.run(run).unwrap();
        assert_eq!((record.counts.delivered, record.counts.rejected), (1, 1));
        assert_eq!(record.failures["validation-error"], 1);
    }

    #[test]
    fn a_new_run_takes_over_what_a_stopped_one_left() {
        let (journal, first) = journal_with_run();
        journal
            .ingest(
                first,
                vec![incoming(1, patch(7, json!({"firstName": "A"}), &[]))],
                None,
                &merge,
            )
            .unwrap();
        let claim = journal.claim_next().unwrap().unwrap();
        journal.begin_attempt(&claim, first, &merge).unwrap();
        journal.release(&claim);
        let second = journal
            .start_run("resume", "test", "http://127.0.0.1/api/v2", None)
            .unwrap();
        assert_eq!(journal.records_of_other_runs(second).unwrap(), 1);
        let again = journal.claim_next().unwrap().unwrap();
        assert_eq!(again, claim);
        journal.begin_attempt(&again, second, &merge).unwrap();
        journal.finish(&again, &Verdict::Delivered, second).unwrap();
        assert_eq!(journal.run(first).unwrap().counts.delivered, 1);
        assert_eq!(journal.run(second).unwrap().updates_delivered, 1);
    }
}
