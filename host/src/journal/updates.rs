//! The queue of updates: intake of planned records (merging into a queued
//! update for the same key when the destination says they combine),
//! claims per key, attempts, verdicts and their counts.

use std::collections::HashSet;
use std::path::Path;

use destination_types::{PlanOutcome, RecordFate, Request};
use rusqlite::{Connection, OptionalExtension, params};

use super::letters::{bounded_response, insert_letter, request_summary};
use super::tally::{Fate, Tally};
use super::{
    Checkpoint, Claim, HeldBack, Incoming, IngestReport, Journal, JournalError, Merge, RunId,
    State, Verdict, now_ms,
};

impl Journal {
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
        let State {
            conn,
            sending,
            tally,
            ..
        } = &mut *state;
        let result = ingest_batch(
            conn, tally, sending, run, batch, checkpoint, merge, &self.path,
        )
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
            .and_then(|()| {
                let State { conn, tally, .. } = &mut *state;
                finish_update(conn, tally, claim.seq, verdict, current_run, &self.path)
            })
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
        .prepare_cached("SELECT request FROM updates WHERE seq = ?1")
        .and_then(|mut s| s.query_row([seq], |r| r.get(0)))
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
#[allow(clippy::too_many_arguments)]
fn ingest_batch(
    conn: &mut Connection,
    tally: &mut Tally,
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
    tally: &mut Tally,
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
                tally.credit(
                    *run,
                    &audiences,
                    Some(Fate::Delivered),
                    false,
                    *first_part,
                    None,
                );
            }
            Verdict::Rejected { code, reason, .. } => {
                tally.credit(
                    *run,
                    &audiences,
                    Some(Fate::Rejected),
                    false,
                    *first_part,
                    Some(code),
                );
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
        tally.update_delivered(current_run);
    }
    tx.prepare_cached("DELETE FROM sources WHERE seq = ?1")
        .and_then(|mut s| s.execute([seq]))
        .map_err(sqlite)?;
    tx.prepare_cached("DELETE FROM updates WHERE seq = ?1")
        .and_then(|mut s| s.execute([seq]))
        .map_err(sqlite)?;
    Ok(())
}
