//! Ingesting into the queue: a planned batch becomes queued updates (merged
//! into a queued one for the same key where the placement says so,
//! `placement.rs`), record errors become dead letters, replays newer than
//! what a key already has are held back, and the input position is
//! recorded.

use std::collections::HashMap;
use std::path::Path;

use destination_types::{PlanOutcome, RecordFate, Request};
use rusqlite::{Connection, OptionalExtension, params};

use super::letters::insert_letter;
use super::placement::{Head, HeadMark, Holding, Placement, Prepared, Stale};
use super::requests::{insert_update, load_request, store_request};
use super::sources::{self, NewSource};
use super::tally::Fate;
use super::{Checkpoint, HeldBack, Incoming, IngestReport, JournalError, RunId, State, now_ms};

// The statements run for every record (named so the test of their plans
// can find them in the statement cache).
pub(super) const NEWEST_FOR_KEY: &str =
    "SELECT seq FROM updates WHERE key = ?1 ORDER BY seq DESC LIMIT 1";

/// The newest queued update of `key` unless it is on the wire.
fn head_mark(state: &State, key: &str) -> rusqlite::Result<Option<HeadMark>> {
    let newest: Option<i64> = state
        .conn
        .prepare_cached(NEWEST_FOR_KEY)?
        .query_row([key], |r| r.get(0))
        .optional()?;
    Ok(newest
        .filter(|seq| !state.sending.contains(seq))
        .map(|seq| HeadMark {
            seq,
            revision: state.revision(seq),
        }))
}

/// What the batch's keys hold now: their heads, and which replayed
/// records their keys' newer updates hold back.
pub(super) fn prepare(
    state: &mut State,
    batch: &[Incoming],
    path: &Path,
) -> Result<Prepared, JournalError> {
    let sqlite = |source| JournalError::Sqlite {
        path: path.to_owned(),
        source,
    };
    let now = now_ms();
    let held_back = holdings(&state.conn, batch, now).map_err(sqlite)?;
    let mut heads = HashMap::new();
    for (incoming, holding) in batch.iter().zip(&held_back) {
        let (PlanOutcome::Send(requests), None) = (&incoming.outcome, holding) else {
            continue;
        };
        for request in requests {
            if heads.contains_key(&request.key) {
                continue;
            }
            let Some(mark) = head_mark(state, &request.key).map_err(sqlite)? else {
                continue;
            };
            let request = load_request(&state.conn, mark.seq, path)?;
            heads.insert(
                request.key.clone(),
                Head {
                    seq: mark.seq,
                    revision: mark.revision,
                    request,
                },
            );
        }
    }
    Ok(Prepared {
        heads,
        held_back,
        now,
    })
}

/// Whether the batch's keys still hold what they held when it was
/// prepared.
pub(super) fn unchanged(
    state: &State,
    batch: &[Incoming],
    placement: &Placement,
) -> rusqlite::Result<bool> {
    for (key, expected) in &placement.heads {
        if head_mark(state, key)? != *expected {
            return Ok(false);
        }
    }
    let replays = batch.iter().any(|i| i.replay.is_some_and(|r| !r.force));
    Ok(!replays || holdings(&state.conn, batch, placement.now)? == placement.held_back)
}

/// Per record: whether a newer update (delivered, queued, or earlier in
/// the batch) holds a replayed record back.
fn holdings(tx: &Connection, batch: &[Incoming], now: i64) -> rusqlite::Result<Vec<Holding>> {
    let mut in_batch: HashMap<&str, i64> = HashMap::new();
    let mut held_back = Vec::with_capacity(batch.len());
    for incoming in batch {
        let PlanOutcome::Send(requests) = &incoming.outcome else {
            held_back.push(None);
            continue;
        };
        let received_ms = received_ms(incoming, now);
        let holding = match &incoming.replay {
            Some(replay) if !replay.force => {
                let mut found = None;
                for request in requests {
                    let newest = newest_update(tx, request)?
                        .max(in_batch.get(request.key.as_str()).copied());
                    if let Some(newest) = newest.filter(|t| *t > received_ms) {
                        found = Some((request.key.clone(), newest));
                        break;
                    }
                }
                found
            }
            _ => None,
        };
        if holding.is_none() {
            for request in requests {
                let newest = in_batch.entry(request.key.as_str()).or_insert(received_ms);
                *newest = (*newest).max(received_ms);
            }
        }
        held_back.push(holding);
    }
    Ok(held_back)
}

fn received_ms(incoming: &Incoming, now: i64) -> i64 {
    incoming
        .replay
        .map_or(now, |r| i64::try_from(r.received_ms).unwrap_or(i64::MAX))
}

/// Journals `batch` where `placement` puts it, unless a key changed since
/// it was prepared ([`Stale`]: nothing was written).
pub(super) fn ingest_batch(
    state: &mut State,
    run: RunId,
    batch: &[Incoming],
    placement: Placement,
    checkpoint: Option<&Checkpoint>,
    path: &Path,
) -> Result<Result<IngestReport, Stale>, JournalError> {
    let sqlite = |source| JournalError::Sqlite {
        path: path.to_owned(),
        source,
    };
    if !unchanged(state, batch, &placement).map_err(sqlite)? {
        return Ok(Err(Stale));
    }
    let mut report = IngestReport {
        coalesced: placement.coalesced,
        held_back: Vec::new(),
    };
    // Each slot's update, once written.
    let mut written: Vec<Option<i64>> = vec![None; placement.slots.len()];
    let mut slots: Vec<Option<super::placement::Slot>> =
        placement.slots.into_iter().map(Some).collect();
    let now = placement.now;
    for ((incoming, holding), parts) in batch.iter().zip(placement.held_back).zip(placement.parts) {
        let received_ms = received_ms(incoming, now);
        if let Some((key, newer_ms)) = holding {
            let reason = format!(
                "key {key} has a newer update (received {}) than this record (received {}); replaying would overwrite it (--force sends it anyway)",
                crate::format_utc(u64::try_from(newer_ms).unwrap_or(0) / 1000, ' '),
                crate::format_utc(u64::try_from(received_ms).unwrap_or(0) / 1000, ' '),
            );
            if let Some(replay) = incoming.replay {
                report.held_back.push(HeldBack {
                    letter: replay.letter,
                    line: incoming.line,
                    key,
                    reason,
                });
            }
            continue;
        }
        if let Some(replay) = incoming.replay {
            state
                .conn
                .prepare_cached("UPDATE dead_letters SET replayed_by = ?1 WHERE id = ?2")
                .and_then(|mut s| s.execute(params![run, replay.letter]))
                .map_err(sqlite)?;
        }
        match &incoming.outcome {
            PlanOutcome::Skip(_) => {
                state.tally.credit(
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
                state.tally.credit(
                    run,
                    &error.audiences,
                    Some(fate),
                    true,
                    true,
                    Some(&error.code),
                );
                insert_letter(
                    &state.conn,
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
                for request in requests {
                    for a in &request.audiences {
                        if !all_audiences.contains(a) {
                            all_audiences.push(a.clone());
                        }
                    }
                }
                state
                    .tally
                    .credit(run, &all_audiences, None, true, true, None);
                for (part, (request, slot)) in requests.iter().zip(parts).enumerate() {
                    let seq = match written[slot] {
                        Some(seq) => seq,
                        None => {
                            let slot_update =
                                slots[slot].take().ok_or_else(|| JournalError::BadRow {
                                    path: path.to_owned(),
                                    what: "placement",
                                    detail: format!("slot {slot} used twice"),
                                })?;
                            let seq = write_slot(state, slot_update, path)?;
                            written[slot] = Some(seq);
                            seq
                        }
                    };
                    sources::insert(
                        &state.conn,
                        &NewSource {
                            seq,
                            run,
                            line: incoming.line,
                            first_part: part == 0,
                            record: &incoming.record,
                            received_ms,
                            audiences: &request.audiences,
                        },
                        path,
                    )?;
                }
            }
        }
    }
    if report.coalesced > 0 {
        state
            .conn
            .execute(
                "UPDATE runs SET coalesced = coalesced + ?2 WHERE id = ?1",
                params![run, report.coalesced as i64],
            )
            .map_err(sqlite)?;
    }
    if let Some(c) = checkpoint {
        state.conn.execute(
            "INSERT INTO checkpoints(input, identity, offset, line, updated_ms, digest)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT(input) DO UPDATE SET identity = ?2, offset = ?3, line = ?4, updated_ms = ?5, digest = ?6",
            params![c.input, c.identity, c.offset as i64, c.line as i64, now_ms(), c.digest],
        )
        .map_err(sqlite)?;
    }
    Ok(Ok(report))
}

/// Writes a slot's update: over its head, or as a new queued update.
fn write_slot(
    state: &mut State,
    slot: super::placement::Slot,
    path: &Path,
) -> Result<i64, JournalError> {
    if let Some(seq) = slot.into {
        store_request(&state.conn, seq, &slot.request, path)?;
        state.revised(seq);
        return Ok(seq);
    }
    insert_update(&state.conn, &slot.request, path)
}

/// When the newest update — delivered, or queued — of `request`'s key was
/// received.
fn newest_update(tx: &Connection, request: &Request) -> rusqlite::Result<Option<i64>> {
    let delivered: Option<i64> = tx
        .prepare_cached("SELECT received_ms FROM delivered WHERE key = ?1")?
        .query_row([&request.key], |r| r.get(0))
        .optional()?;
    let queued: Option<i64> = tx
        .prepare_cached(
            "SELECT max(s.received_ms) FROM sources s JOIN updates u ON u.seq = s.seq WHERE u.key = ?1",
        )?
        .query_row([&request.key], |r| r.get(0))?;
    Ok(delivered.max(queued))
}
