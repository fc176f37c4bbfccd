//! Dead letters: records and updates that will not be sent, with the
//! reason, the request and the API's answer (bounded), for listing,
//! exporting and replaying.

use rusqlite::{Connection, params};
use serde::Serialize;
use serde_json::{Value, json};

use destination_types::Request;

use super::{Journal, JournalError, RunId, json_or_text, now_ms};

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
    /// Only letters older than this one.
    pub before: Option<i64>,
    /// Only the newest this many, newest first (else all, oldest first).
    pub newest: Option<usize>,
}

/// How much of a record or an API response a list of letters shows.
pub const PREVIEW_CHARS: usize = 2_000;

/// A dead letter as a list shows it: its record and response cut to
/// [`PREVIEW_CHARS`] (read so from the journal, not cut after reading).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LetterPreview {
    pub id: i64,
    pub run: RunId,
    pub line: u64,
    pub code: String,
    pub reason: String,
    pub status: Option<u16>,
    pub record: String,
    /// The whole record's size.
    pub record_bytes: u64,
    pub response: Option<String>,
    pub response_bytes: u64,
}

/// A dead letter's record, to plan again: the letter's id, the record's
/// line, its text, and when it was first received (epoch ms).
pub type LetterRecord = (i64, u64, String, u64);

impl Journal {
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

    /// Letters matching `filter` as a list shows them.
    pub fn letter_previews(
        &self,
        filter: &LetterFilter,
    ) -> Result<Vec<LetterPreview>, JournalError> {
        let columns = format!(
            "id, run_id, line, code, reason, status, substr(record, 1, {PREVIEW_CHARS}),
             length(CAST(record AS BLOB)), substr(response, 1, {PREVIEW_CHARS}),
             COALESCE(length(CAST(response AS BLOB)), 0)"
        );
        self.query_letters(&columns, filter, |r| {
            let bytes = |i: usize| r.get::<_, i64>(i).map(|n| u64::try_from(n).unwrap_or(0));
            Ok(LetterPreview {
                id: r.get(0)?,
                run: r.get(1)?,
                line: r.get::<_, i64>(2)? as u64,
                code: r.get(3)?,
                reason: r.get(4)?,
                status: r.get::<_, Option<i64>>(5)?.map(|s| s as u16),
                record: r.get(6)?,
                record_bytes: bytes(7)?,
                response: r.get(8)?,
                response_bytes: bytes(9)?,
            })
        })
    }

    /// `(letter id, line, raw record text, when the record was received)`
    /// of dead letters, for a replay. Letters of an older host, which did
    /// not record the time, count as received when they died.
    pub fn letter_records(&self, filter: &LetterFilter) -> Result<Vec<LetterRecord>, JournalError> {
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
        if let Some(before) = filter.before {
            sql.push_str(" AND id < ?");
            args.push(before.into());
        }
        match filter.newest {
            Some(limit) => {
                sql.push_str(" ORDER BY id DESC LIMIT ?");
                args.push(i64::try_from(limit).unwrap_or(i64::MAX).into());
            }
            None => sql.push_str(" ORDER BY id"),
        }
        let mut stmt = state.conn.prepare(&sql).map_err(|e| self.err(e))?;
        stmt.query_map(rusqlite::params_from_iter(args), row)
            .and_then(|rows| rows.collect())
            .map_err(|e| self.err(e))
    }
}

#[allow(clippy::too_many_arguments)]
pub(super) fn insert_letter(
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
pub(super) fn bounded_response(text: &str) -> std::borrow::Cow<'_, str> {
    if text.len() <= MAX_STORED_RESPONSE_BYTES {
        return text.into();
    }
    let mut end = MAX_STORED_RESPONSE_BYTES;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… [{} bytes in all; cut]", &text[..end], text.len()).into()
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

    #[test]
    fn a_list_reads_a_page_of_letters_newest_first_with_their_records_cut() {
        let journal = Journal::in_memory().unwrap();
        let run = journal
            .start_run("run", "test", "http://127.0.0.1/api/v2", None)
            .unwrap();
        let huge = format!("{{\"text\":\"{}\"}}", "x".repeat(100_000));
        journal
            .with(|conn| {
                for n in 0..250u64 {
                    let code = if n % 2 == 0 { "even" } else { "odd" };
                    insert_letter(
                        conn,
                        run,
                        n + 1,
                        &huge,
                        None,
                        Some(422),
                        Some(&huge),
                        code,
                        "no",
                        0,
                    )?;
                }
                Ok(())
            })
            .unwrap();
        let page = |before: Option<i64>, code: Option<&str>| {
            journal
                .letter_previews(&LetterFilter {
                    before,
                    newest: Some(100),
                    code: code.map(str::to_owned),
                    ..LetterFilter::default()
                })
                .unwrap()
        };
        let first = page(None, None);
        assert_eq!(first.len(), 100);
        assert_eq!(first[0].line, 250, "newest first");
        assert_eq!(first[0].record.chars().count(), PREVIEW_CHARS);
        assert_eq!(first[0].record_bytes, huge.len() as u64);
        assert_eq!(first[0].response_bytes, huge.len() as u64);
        let second = page(Some(first[99].id), None);
        assert_eq!(second[0].line, 150);
        let last = page(Some(second[99].id), None);
        assert_eq!((last.len(), last[49].line), (50, 1));
        let even = page(None, Some("even"));
        assert!(even.iter().all(|l| l.code == "even"));
        assert_eq!(even[0].line, 249);
    }
}
