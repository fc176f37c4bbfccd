//! Intake into the queue: a planned batch becomes queued updates (merged
//! into a queued one for the same key when the destination says they
//! combine), record errors become dead letters, replays newer than what a
//! key already has are held back, and the input position is recorded.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use destination_types::{PlanOutcome, RecordFate, Request};
use rusqlite::{Connection, OptionalExtension, params};

use super::letters::insert_letter;
use super::tally::{Fate, Tally};
use super::updates::{parse_request, store_request};
use super::{
    Checkpoint, HeldBack, Incoming, IngestReport, JournalError, Merge, READY_REQUESTS, RunId,
    now_ms,
};

// The statements run for every record (named so the test of their plans
// can find them in the statement cache).
pub(super) const NEWEST_FOR_KEY: &str =
    "SELECT seq, request FROM updates WHERE key = ?1 ORDER BY seq DESC LIMIT 1";
pub(super) const INSERT_UPDATE: &str = "INSERT INTO updates(key, request) VALUES (?1, ?2)";
pub(super) const INSERT_SOURCE: &str =
    "INSERT INTO sources(seq, run_id, line, first_part, record, audiences, received_ms)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)";

#[allow(clippy::too_many_arguments)]
pub(super) fn ingest_batch(
    conn: &mut Connection,
    tally: &mut Tally,
    sending: &HashSet<i64>,
    ready: &mut HashMap<i64, Request>,
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
                tally.credit(
                    run,
                    &[],
                    Some(Fate::Skipped),
                    true,
                    true,
                    Some("nothing-to-write"),
                );
            }
            PlanOutcome::Invalid(error) => {
                let fate = match error.fate {
                    RecordFate::Skipped => Fate::Skipped,
                    RecordFate::Rejected => Fate::Rejected,
                };
                tally.credit(
                    run,
                    &error.audiences,
                    Some(fate),
                    true,
                    true,
                    Some(&error.code),
                );
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
                tally.credit(run, &all_audiences, None, true, true, None);
                for (part, request) in requests.into_iter().enumerate() {
                    let audiences =
                        serde_json::to_string(&request.audiences).unwrap_or_else(|_| "[]".into());
                    let seq = match enqueue(tx, sending, ready, request, merge, path)? {
                        Enqueued::Merged(seq) => {
                            report.coalesced += 1;
                            seq
                        }
                        Enqueued::New(seq) => seq,
                    };
                    tx.prepare_cached(INSERT_SOURCE)
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
    ready: &mut HashMap<i64, Request>,
    request: Request,
    merge: Merge<'_>,
    path: &Path,
) -> Result<Enqueued, JournalError> {
    let sqlite = |source| JournalError::Sqlite {
        path: path.to_owned(),
        source,
    };
    let newest: Option<(i64, String)> = tx
        .prepare_cached(NEWEST_FOR_KEY)
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
            if let Some(kept) = ready.get_mut(&seq) {
                *kept = merged;
            }
            return Ok(Enqueued::Merged(seq));
        }
    }
    let text = serde_json::to_string(&request).map_err(|e| JournalError::BadRow {
        path: path.to_owned(),
        what: "update",
        detail: e.to_string(),
    })?;
    tx.prepare_cached(INSERT_UPDATE)
        .and_then(|mut s| s.execute(params![request.key, text]))
        .map_err(sqlite)?;
    let seq = tx.last_insert_rowid();
    if ready.len() < READY_REQUESTS {
        ready.insert(seq, request);
    }
    Ok(Enqueued::New(seq))
}
