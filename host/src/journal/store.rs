//! Opening the journal: one process per file (an flock on the database
//! file itself), a file that is not a journal of this host or is damaged
//! is refused before SQLite touches it, the schema is created or migrated.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rusqlite::Connection;

use super::{Journal, JournalError, State};

/// `PRAGMA application_id` of a journal: "ORCJ".
const APPLICATION_ID: i64 = 0x4F52_434A;
/// The schema this host writes.
/// Prepared statements kept per connection.
const STATEMENT_CACHE: usize = 128;

pub(super) const SCHEMA_VERSION: i64 = 7;

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
    lookups_sent INTEGER NOT NULL DEFAULT 0,
    creates_sent INTEGER NOT NULL DEFAULT 0,
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
    method TEXT NOT NULL,
    path TEXT NOT NULL,
    headers TEXT NOT NULL,
    body TEXT NOT NULL,
    purpose TEXT NOT NULL DEFAULT 'update',
    recall TEXT,
    context TEXT NOT NULL DEFAULT ''
);
CREATE INDEX updates_by_key ON updates(key, seq);
CREATE TABLE facts(
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE update_audiences(
    seq INTEGER NOT NULL,
    position INTEGER NOT NULL,
    audience TEXT NOT NULL,
    PRIMARY KEY(seq, position)
) WITHOUT ROWID;
CREATE TABLE sources(
    id INTEGER PRIMARY KEY,
    seq INTEGER NOT NULL,
    run_id INTEGER NOT NULL,
    line INTEGER NOT NULL,
    first_part INTEGER NOT NULL,
    record TEXT NOT NULL,
    received_ms INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX sources_by_update ON sources(seq);
CREATE INDEX sources_by_run ON sources(run_id);
CREATE TABLE source_audiences(
    source INTEGER NOT NULL,
    position INTEGER NOT NULL,
    audience TEXT NOT NULL,
    PRIMARY KEY(source, position)
) WITHOUT ROWID;
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
CREATE TABLE receipts(
    key TEXT PRIMARY KEY,
    response TEXT NOT NULL,
    received_ms INTEGER NOT NULL,
    digest TEXT
) WITHOUT ROWID;
CREATE INDEX receipts_by_age ON receipts(received_ms);
";

/// From schema 6: a request may be one step of a delivery of several
/// (its purpose, the fact it recalls, what it carries to the next step),
/// and the destination's remembered facts have a table; runs count the
/// lookups and creates among their requests.
const MIGRATE_FROM_6: &str = "
ALTER TABLE runs ADD COLUMN lookups_sent INTEGER NOT NULL DEFAULT 0;
ALTER TABLE runs ADD COLUMN creates_sent INTEGER NOT NULL DEFAULT 0;
ALTER TABLE updates ADD COLUMN purpose TEXT NOT NULL DEFAULT 'update';
ALTER TABLE updates ADD COLUMN recall TEXT;
ALTER TABLE updates ADD COLUMN context TEXT NOT NULL DEFAULT '';
CREATE TABLE facts(
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;
PRAGMA user_version = 7;
";

/// From schema 5: a record's audiences are rows of their own instead of
/// a JSON array in its `sources` row.
const MIGRATE_FROM_5: &str = "
CREATE TABLE source_audiences(
    source INTEGER NOT NULL,
    position INTEGER NOT NULL,
    audience TEXT NOT NULL,
    PRIMARY KEY(source, position)
) WITHOUT ROWID;
INSERT INTO source_audiences(source, position, audience)
    SELECT s.id, a.key, a.value FROM sources s, json_each(s.audiences) a;
ALTER TABLE sources DROP COLUMN audiences;
PRAGMA user_version = 6;
";

/// From schema 4: a queued update's request is stored as columns (its
/// audiences in a table of their own) instead of one JSON document; the
/// update numbering carries on where it was.
const MIGRATE_FROM_4: &str = "
CREATE TABLE updates_v5(
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL,
    method TEXT NOT NULL,
    path TEXT NOT NULL,
    headers TEXT NOT NULL,
    body TEXT NOT NULL
);
INSERT INTO updates_v5(seq, key, method, path, headers, body)
    SELECT seq, key, json_extract(request, '$.method'), json_extract(request, '$.path'),
        json(json_extract(request, '$.headers')), json_extract(request, '$.body')
    FROM updates;
CREATE TABLE update_audiences(
    seq INTEGER NOT NULL,
    position INTEGER NOT NULL,
    audience TEXT NOT NULL,
    PRIMARY KEY(seq, position)
) WITHOUT ROWID;
INSERT INTO update_audiences(seq, position, audience)
    SELECT u.seq, a.key, a.value FROM updates u, json_each(u.request, '$.audiences') a;
INSERT INTO sqlite_sequence(name, seq)
    SELECT 'updates_v5', 0 WHERE NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = 'updates_v5');
UPDATE sqlite_sequence
    SET seq = max(seq, coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'updates'), 0))
    WHERE name = 'updates_v5';
DROP TABLE updates;
ALTER TABLE updates_v5 RENAME TO updates;
CREATE INDEX updates_by_key ON updates(key, seq);
PRAGMA user_version = 5;
";

/// From schema 3: a receipt keeps the digest of the body it answered (a
/// key reused with another body is refused).
const MIGRATE_FROM_3: &str = "
ALTER TABLE receipts ADD COLUMN digest TEXT;
PRAGMA user_version = 4;
";

/// From schema 2: the answers given to idempotent intake requests.
const MIGRATE_FROM_2: &str = "
CREATE TABLE receipts(
    key TEXT PRIMARY KEY,
    response TEXT NOT NULL,
    received_ms INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX receipts_by_age ON receipts(received_ms);
PRAGMA user_version = 3;
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

    /// A second connection, read-only, to a journal this process keeps
    /// open for writing: the status page reads through it, so that a
    /// large read never waits on (or holds up) the writer's thread. It
    /// sees what the writer committed. No checks and no migration: the
    /// writer's connection did them.
    pub fn open_reader(path: &Path) -> Result<Self, JournalError> {
        let conn = Connection::open_with_flags(
            path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .and_then(|conn| {
            conn.busy_timeout(std::time::Duration::from_secs(5))?;
            Ok(conn)
        })
        .map_err(|source| JournalError::Sqlite {
            path: path.to_owned(),
            source,
        })?;
        Ok(Self::from_connection(path.to_owned(), conn, None))
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
        // The queue's hot path cycles through a few dozen statements; the
        // default cache of 16 would evict and re-parse them on every update.
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        // A fixed plan per statement: otherwise binding a new key or
        // sequence number to a cached statement makes SQLite prepare it
        // again (it re-plans for the value), which cost the hot path half
        // its time.
        let _ = conn.set_db_config(
            rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
            true,
        );
        Self {
            path,
            state: Mutex::new(State {
                conn,
                sending: HashSet::new(),
                revisions: HashMap::new(),
                last_revision: 0,
                claimed: HashMap::new(),
                cursor: 0,
                group: None,
                tally: Default::default(),
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
        } else if version < SCHEMA_VERSION {
            // Each version's step, from the journal's own on.
            let steps = [
                MIGRATE_FROM_1,
                MIGRATE_FROM_2,
                MIGRATE_FROM_3,
                MIGRATE_FROM_4,
                MIGRATE_FROM_5,
                MIGRATE_FROM_6,
            ];
            let from = usize::try_from(version - 1).unwrap_or(0);
            let steps = steps[from.min(steps.len())..].join(" ");
            conn.execute_batch(&format!("BEGIN IMMEDIATE; {steps} COMMIT;"))
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
