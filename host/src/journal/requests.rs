//! A queued update's request as the journal stores it: a row of
//! `updates` with its method, path, key, headers (`name: value` lines),
//! body, purpose, recall and context as columns, and its audiences in
//! `update_audiences` — stored and read back without a JSON pass.

use std::path::Path;

use destination_types::{Header, Method, Purpose, Request};
use rusqlite::{Connection, OptionalExtension, Row, params};

use super::JournalError;

pub(super) const INSERT_UPDATE: &str = "INSERT INTO updates(key, method, path, headers, body, purpose, recall, context) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)";
const REWRITE_UPDATE: &str = "UPDATE updates SET method = ?2, path = ?3, headers = ?4, body = ?5, purpose = ?6, recall = ?7, context = ?8 WHERE seq = ?1";
pub(super) const REQUEST_OF: &str =
    "SELECT key, method, path, headers, body, purpose, recall, context FROM updates WHERE seq = ?1";
pub(super) const AUDIENCES_OF: &str =
    "SELECT audience FROM update_audiences WHERE seq = ?1 ORDER BY position";
const INSERT_AUDIENCE: &str =
    "INSERT INTO update_audiences(seq, position, audience) VALUES (?1, ?2, ?3)";
const DELETE_AUDIENCES: &str = "DELETE FROM update_audiences WHERE seq = ?1";
pub(super) const DELETE_UPDATE: &str = "DELETE FROM updates WHERE seq = ?1";

fn method_of(name: &str) -> Option<Method> {
    Some(match name {
        "GET" => Method::Get,
        "POST" => Method::Post,
        "PUT" => Method::Put,
        "PATCH" => Method::Patch,
        _ => return None,
    })
}

fn purpose_of(name: &str) -> Option<Purpose> {
    [Purpose::Update, Purpose::Lookup, Purpose::Create]
        .into_iter()
        .find(|p| p.as_str() == name)
}

fn bad_row(path: &Path, detail: String) -> JournalError {
    JournalError::BadRow {
        path: path.to_owned(),
        what: "update",
        detail,
    }
}

fn sqlite(path: &Path) -> impl Fn(rusqlite::Error) -> JournalError + '_ {
    move |source| JournalError::Sqlite {
        path: path.to_owned(),
        source,
    }
}

/// A header name as HTTP allows it (a token): it holds no `:`, no
/// whitespace and no `[`.
fn is_token(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Headers as the journal stores them: one `name: value` per line, as on
/// the wire, which needs no JSON. A header HTTP would not allow (it could
/// not be told apart from the next line) is stored as a JSON array, which
/// begins with `[` where no token does; such a request is refused when it
/// is sent, not lost here.
fn headers_text(headers: &[Header], path: &Path) -> Result<String, JournalError> {
    let plain = headers
        .iter()
        .all(|h| is_token(&h.name) && !h.value.contains(['\r', '\n']));
    if !plain {
        return serde_json::to_string(headers).map_err(|e| bad_row(path, e.to_string()));
    }
    let mut text = String::new();
    for (index, header) in headers.iter().enumerate() {
        if index > 0 {
            text.push('\n');
        }
        text.push_str(&header.name);
        text.push_str(": ");
        text.push_str(&header.value);
    }
    Ok(text)
}

/// The headers [`headers_text`] stored.
fn headers_of_text(text: &str, path: &Path) -> Result<Vec<Header>, JournalError> {
    if text.starts_with('[') {
        return serde_json::from_str(text).map_err(|e| bad_row(path, e.to_string()));
    }
    text.split_terminator('\n')
        .map(|line| match line.split_once(": ") {
            Some((name, value)) => Ok(Header {
                name: name.to_owned(),
                value: value.to_owned(),
            }),
            None => Err(bad_row(path, format!("header line {line:?}"))),
        })
        .collect()
}

/// The request a row holds, its audiences read from `update_audiences`;
/// `row` has `key, method, path, headers, body, purpose, recall, context`
/// from column `first` on.
pub(super) fn request_of_row(
    conn: &Connection,
    seq: i64,
    row: &Row<'_>,
    first: usize,
    path: &Path,
) -> Result<Request, JournalError> {
    let column = |n: usize| -> Result<String, JournalError> {
        row.get::<_, String>(first + n).map_err(sqlite(path))
    };
    let method = column(1)?;
    let headers = column(3)?;
    let purpose = column(5)?;
    Ok(Request {
        purpose: purpose_of(&purpose)
            .ok_or_else(|| bad_row(path, format!("unknown purpose {purpose:?}")))?,
        recall: row
            .get::<_, Option<String>>(first + 6)
            .map_err(sqlite(path))?,
        context: column(7)?,
        key: column(0)?,
        method: method_of(&method)
            .ok_or_else(|| bad_row(path, format!("unknown method {method:?}")))?,
        path: column(2)?,
        headers: headers_of_text(&headers, path)?,
        body: column(4)?,
        audiences: audiences_of(conn, seq, path)?,
    })
}

fn audiences_of(conn: &Connection, seq: i64, path: &Path) -> Result<Vec<String>, JournalError> {
    conn.prepare_cached(AUDIENCES_OF)
        .and_then(|mut s| {
            s.query_map([seq], |r| r.get::<_, String>(0))
                .and_then(|rows| rows.collect())
        })
        .map_err(sqlite(path))
}

/// The request of queued update `seq`, if it is queued.
pub(super) fn load_request(
    conn: &Connection,
    seq: i64,
    path: &Path,
) -> Result<Request, JournalError> {
    let mut stmt = conn.prepare_cached(REQUEST_OF).map_err(sqlite(path))?;
    let mut rows = stmt.query([seq]).map_err(sqlite(path))?;
    match rows.next().map_err(sqlite(path))? {
        Some(row) => request_of_row(conn, seq, row, 0, path),
        None => Err(JournalError::Sqlite {
            path: path.to_owned(),
            source: rusqlite::Error::QueryReturnedNoRows,
        }),
    }
}

fn insert_audiences(
    conn: &Connection,
    seq: i64,
    audiences: &[String],
    path: &Path,
) -> Result<(), JournalError> {
    let mut stmt = conn.prepare_cached(INSERT_AUDIENCE).map_err(sqlite(path))?;
    for (position, audience) in audiences.iter().enumerate() {
        stmt.execute(params![seq, position as i64, audience])
            .map_err(sqlite(path))?;
    }
    Ok(())
}

/// Queues `request` as a new update: its `seq`.
pub(super) fn insert_update(
    conn: &Connection,
    request: &Request,
    path: &Path,
) -> Result<i64, JournalError> {
    let headers = headers_text(&request.headers, path)?;
    conn.prepare_cached(INSERT_UPDATE)
        .and_then(|mut s| {
            s.execute(params![
                request.key,
                request.method.as_str(),
                request.path,
                headers,
                request.body,
                request.purpose.as_str(),
                request.recall,
                request.context
            ])
        })
        .map_err(sqlite(path))?;
    let seq = conn.last_insert_rowid();
    insert_audiences(conn, seq, &request.audiences, path)?;
    Ok(seq)
}

/// Rewrites queued update `seq`'s request (a merge, a fold).
pub(super) fn store_request(
    conn: &Connection,
    seq: i64,
    request: &Request,
    path: &Path,
) -> Result<(), JournalError> {
    let headers = headers_text(&request.headers, path)?;
    conn.prepare_cached(REWRITE_UPDATE)
        .and_then(|mut s| {
            s.execute(params![
                seq,
                request.method.as_str(),
                request.path,
                headers,
                request.body,
                request.purpose.as_str(),
                request.recall,
                request.context
            ])
        })
        .map_err(sqlite(path))?;
    conn.prepare_cached(DELETE_AUDIENCES)
        .and_then(|mut s| s.execute([seq]))
        .map_err(sqlite(path))?;
    insert_audiences(conn, seq, &request.audiences, path)
}

/// Removes queued update `seq` (delivered, dead-lettered or folded).
pub(super) fn delete_update(conn: &Connection, seq: i64, path: &Path) -> Result<(), JournalError> {
    conn.prepare_cached(DELETE_AUDIENCES)
        .and_then(|mut s| s.execute([seq]))
        .and_then(|_| conn.prepare_cached(DELETE_UPDATE))
        .and_then(|mut s| s.execute([seq]))
        .map(drop)
        .map_err(sqlite(path))
}

/// Whether update `seq` is still queued.
pub(super) fn is_queued(conn: &Connection, seq: i64, path: &Path) -> Result<bool, JournalError> {
    conn.prepare_cached("SELECT 1 FROM updates WHERE seq = ?1")
        .and_then(|mut s| s.query_row([seq], |_| Ok(())).optional())
        .map(|found| found.is_some())
        .map_err(sqlite(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(name: &str, value: &str) -> Header {
        Header {
            name: name.into(),
            value: value.into(),
        }
    }

    #[test]
    fn headers_are_stored_as_lines_and_read_back_exactly() {
        let path = Path::new("journal");
        for headers in [
            vec![],
            vec![header("Content-Type", "application/json")],
            vec![header("X-Trace", "a: b, ü"), header("Accept", "")],
        ] {
            let text = headers_text(&headers, path).unwrap();
            assert!(!text.starts_with('['), "{text}");
            assert_eq!(headers_of_text(&text, path).unwrap(), headers, "{text}");
        }
    }

    #[test]
    fn a_header_http_would_refuse_is_kept_whole_as_json() {
        let path = Path::new("journal");
        for headers in [
            vec![header("X-Bad", "one\ntwo")],
            vec![header("Bad Name", "v")],
            vec![header("[x", "v")],
            vec![header("", "v")],
        ] {
            let text = headers_text(&headers, path).unwrap();
            assert!(text.starts_with('['), "{text}");
            assert_eq!(headers_of_text(&text, path).unwrap(), headers, "{text}");
        }
    }
}
