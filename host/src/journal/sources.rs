//! The records behind a queued update as the journal stores them: a row
//! of `sources` per record (its run, line, text, when it was received)
//! and its audiences in `source_audiences`, read back and removed with the
//! update they went into.

use std::path::Path;

use rusqlite::{Connection, params};

use super::{JournalError, RunId};

// The statements run for every record (named so the test of their plans
// can find them in the statement cache).
pub(super) const INSERT_SOURCE: &str =
    "INSERT INTO sources(seq, run_id, line, first_part, record, received_ms)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6)";
const INSERT_AUDIENCE: &str =
    "INSERT INTO source_audiences(source, position, audience) VALUES (?1, ?2, ?3)";
pub(super) const SOURCES_OF: &str =
    "SELECT s.id, s.run_id, s.line, s.first_part, s.received_ms, a.audience
     FROM sources s LEFT JOIN source_audiences a ON a.source = s.id
     WHERE s.seq = ?1 ORDER BY s.id, a.position";
// By source, not by a subquery over `sources`: that would build a temporary
// table (and its page cache) at every update.
pub(super) const DELETE_AUDIENCES: &str = "DELETE FROM source_audiences WHERE source = ?1";
pub(super) const DELETE_SOURCES: &str = "DELETE FROM sources WHERE seq = ?1";

/// A record behind a queued update.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Source {
    pub(super) id: i64,
    pub(super) run: RunId,
    pub(super) line: i64,
    /// The record's first update (a record planned into several counts
    /// once).
    pub(super) first_part: bool,
    pub(super) received_ms: i64,
    pub(super) audiences: Vec<String>,
}

/// What a record adds to update `seq`.
pub(super) struct NewSource<'a> {
    pub(super) seq: i64,
    pub(super) run: RunId,
    pub(super) line: u64,
    pub(super) first_part: bool,
    pub(super) record: &'a str,
    pub(super) received_ms: i64,
    pub(super) audiences: &'a [String],
}

fn sqlite(path: &Path) -> impl Fn(rusqlite::Error) -> JournalError + '_ {
    move |source| JournalError::Sqlite {
        path: path.to_owned(),
        source,
    }
}

/// Stores `source` and its audiences.
pub(super) fn insert(
    conn: &Connection,
    source: &NewSource<'_>,
    path: &Path,
) -> Result<(), JournalError> {
    conn.prepare_cached(INSERT_SOURCE)
        .and_then(|mut s| {
            s.execute(params![
                source.seq,
                source.run,
                source.line as i64,
                source.first_part,
                source.record,
                source.received_ms,
            ])
        })
        .map_err(sqlite(path))?;
    let id = conn.last_insert_rowid();
    let mut stmt = conn.prepare_cached(INSERT_AUDIENCE).map_err(sqlite(path))?;
    for (position, audience) in source.audiences.iter().enumerate() {
        stmt.execute(params![id, position as i64, audience])
            .map_err(sqlite(path))?;
    }
    Ok(())
}

/// The records behind update `seq`, oldest first.
pub(super) fn of_update(
    conn: &Connection,
    seq: i64,
    path: &Path,
) -> Result<Vec<Source>, JournalError> {
    let mut stmt = conn.prepare_cached(SOURCES_OF).map_err(sqlite(path))?;
    let mut rows = stmt.query([seq]).map_err(sqlite(path))?;
    let mut sources: Vec<Source> = Vec::new();
    while let Some(row) = rows.next().map_err(sqlite(path))? {
        let id: i64 = row.get(0).map_err(sqlite(path))?;
        let audience: Option<String> = row.get(5).map_err(sqlite(path))?;
        if sources.last().is_none_or(|s| s.id != id) {
            sources.push(Source {
                id,
                run: row.get(1).map_err(sqlite(path))?,
                line: row.get(2).map_err(sqlite(path))?,
                first_part: row.get(3).map_err(sqlite(path))?,
                received_ms: row.get(4).map_err(sqlite(path))?,
                audiences: Vec::new(),
            });
        }
        if let (Some(audience), Some(source)) = (audience, sources.last_mut()) {
            source.audiences.push(audience);
        }
    }
    Ok(sources)
}

/// Removes `sources`, the records behind update `seq` (delivered or
/// dead-lettered).
pub(super) fn delete_of_update(
    conn: &Connection,
    seq: i64,
    sources: &[Source],
    path: &Path,
) -> Result<(), JournalError> {
    let mut audiences = conn
        .prepare_cached(DELETE_AUDIENCES)
        .map_err(sqlite(path))?;
    for source in sources.iter().filter(|s| !s.audiences.is_empty()) {
        audiences.execute([source.id]).map_err(sqlite(path))?;
    }
    conn.prepare_cached(DELETE_SOURCES)
        .and_then(|mut s| s.execute([seq]))
        .map(drop)
        .map_err(sqlite(path))
}
