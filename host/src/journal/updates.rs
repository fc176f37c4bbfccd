//! The queue of updates: claims per key, attempts with later updates
//! folded in, verdicts and their counts. (Ingesting is in `ingest.rs`.)

use std::path::Path;

use destination_types::Request;
use rusqlite::{Connection, OptionalExtension, params};

use super::ingest::{ingest_batch, prepare};
use super::letters::{bounded_response, insert_letter, request_summary};
use super::requests::{delete_update, is_queued, load_request, request_of_row, store_request};
use super::sources;
use super::tally::{Fate, Tally};
use super::{
    Attempt, Begun, Checkpoint, Claim, Disposition, Head, Incoming, IngestReport, Journal,
    JournalError, Merge, Placement, Prepared, RunId, Stale, State, now_ms,
};
use crate::queue::fold_chain;

// The statements run for every update (named so the test of their plans
// can find them in the statement cache).
pub(super) const NEXT_QUEUED: &str = "SELECT seq, key FROM updates WHERE seq > ?1 ORDER BY seq";
pub(super) const LATER_FOR_KEY: &str = "SELECT seq, key, method, path, headers, body, purpose, recall, context FROM updates WHERE key = ?1 AND seq > ?2 ORDER BY seq";
pub(super) const FIRST_FOR_KEY: &str =
    "SELECT seq FROM updates WHERE key = ?1 ORDER BY seq LIMIT 1";

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
    /// them, in one durable transaction, combining updates with `merge`
    /// (called outside the transaction): [`Journal::prepare`], then
    /// [`Journal::ingest_placed`]. A replayed record whose key has a newer
    /// update is held back (unless forced): not journaled, its letter not
    /// marked replayed.
    pub fn ingest(
        &self,
        run: RunId,
        batch: Vec<Incoming>,
        checkpoint: Option<&Checkpoint>,
        merge: Merge<'_>,
    ) -> Result<IngestReport, JournalError> {
        loop {
            let (asked, chains) = self.prepare(&batch)?.chains(&batch);
            let combined = chains
                .into_iter()
                .map(|chain| fold_chain(chain, merge))
                .collect();
            let placement = asked.place(combined, &batch);
            if let Ok(report) = self.ingest_placed(run, &batch, placement, checkpoint)? {
                return Ok(report);
            }
        }
    }

    /// What a batch's keys hold now, for combining its updates with them.
    pub fn prepare(&self, batch: &[Incoming]) -> Result<Prepared, JournalError> {
        let mut state = self.state();
        state.healthy(&self.path)?;
        prepare(&mut state, batch, &self.path)
    }

    /// Journals `batch` where `placement` puts it, and the input position
    /// after it, in one durable transaction — unless a key changed since
    /// the batch was prepared ([`Stale`]: nothing is written).
    pub fn ingest_placed(
        &self,
        run: RunId,
        batch: &[Incoming],
        placement: Placement,
        checkpoint: Option<&Checkpoint>,
    ) -> Result<Result<IngestReport, Stale>, JournalError> {
        let mut state = self.state();
        state.healthy(&self.path)?;
        state.begin().map_err(|e| self.err(e))?;
        let result = ingest_batch(&mut state, run, batch, placement, checkpoint, &self.path)
            // Accepted means on disk, whatever happens to the machine next.
            .and_then(|written| {
                if written.is_ok() {
                    state.commit().map_err(|e| self.err(e))?;
                }
                Ok(written)
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
        let mut stmt = conn.prepare_cached(NEXT_QUEUED).map_err(|e| self.err(e))?;
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

    /// Starts an attempt at `claim`: newer updates queued behind it fold in
    /// (combined by `merge`, outside any transaction: [`Journal::begin`],
    /// then [`Journal::fold`]), and the request to send now (the newest
    /// state) is returned. Until [`Journal::attempt_failed`] or
    /// [`Journal::finish`], nothing merges into it.
    pub fn begin_attempt(
        &self,
        claim: &Claim,
        current_run: RunId,
        merge: Merge<'_>,
    ) -> Result<Request, JournalError> {
        loop {
            let Begun { attempt, later } = self.begin(claim)?;
            if later.is_empty() {
                return Ok(attempt.request);
            }
            let chain = std::iter::once(attempt.request.clone())
                .chain(later.iter().map(|head| head.request.clone()))
                .collect();
            let Some(first) = fold_chain(chain, merge).into_iter().next() else {
                return Ok(attempt.request);
            };
            if first.inputs == 1 {
                return Ok(attempt.request);
            }
            let folded = &later[..first.inputs - 1];
            if self
                .fold(claim, &first.request, folded, current_run)?
                .is_ok()
            {
                return Ok(first.request);
            }
        }
    }

    /// Starts an attempt at `claim` (nothing merges into it until
    /// [`Journal::attempt_failed`] or [`Journal::finish`]): its request as
    /// queued, and the updates queued behind it, which the caller may
    /// combine with it and [`Journal::fold`] in.
    pub fn begin(&self, claim: &Claim) -> Result<Begun, JournalError> {
        let mut state = self.state();
        state.healthy(&self.path)?;
        let read = (|| -> Result<(Request, Vec<Head>), JournalError> {
            let request = load_request(&state.conn, claim.seq, &self.path)?;
            let mut later = Vec::new();
            let mut stmt = state
                .conn
                .prepare_cached(LATER_FOR_KEY)
                .map_err(|e| self.err(e))?;
            let mut rows = stmt
                .query(params![claim.key, claim.seq])
                .map_err(|e| self.err(e))?;
            while let Some(row) = rows.next().map_err(|e| self.err(e))? {
                let seq: i64 = row.get(0).map_err(|e| self.err(e))?;
                later.push(Head {
                    seq,
                    revision: state.revision(seq),
                    request: request_of_row(&state.conn, seq, row, 1, &self.path)?,
                });
            }
            Ok((request, later))
        })();
        match read {
            Ok((request, later)) => {
                state.sending.insert(claim.seq);
                Ok(Begun {
                    attempt: Attempt {
                        claim: claim.clone(),
                        request,
                    },
                    later,
                })
            }
            Err(e) => {
                state.abandon(&e.to_string());
                Err(e)
            }
        }
    }

    /// Folds `folded` (updates queued behind `claim`, as
    /// [`Journal::begin`] read them) into `claim`'s update, whose request
    /// becomes `request` — unless one of them changed since ([`Stale`]:
    /// nothing is written; begin again).
    pub fn fold(
        &self,
        claim: &Claim,
        request: &Request,
        folded: &[Head],
        current_run: RunId,
    ) -> Result<Result<(), Stale>, JournalError> {
        let mut state = self.state();
        state.healthy(&self.path)?;
        for head in folded {
            let queued = is_queued(&state.conn, head.seq, &self.path)?;
            if !queued
                || state.revision(head.seq) != head.revision
                || state.sending.contains(&head.seq)
            {
                return Ok(Err(Stale));
            }
        }
        let written = (|| {
            state.begin().map_err(|e| self.err(e))?;
            for head in folded {
                state
                    .conn
                    .execute(
                        "UPDATE sources SET seq = ?1 WHERE seq = ?2",
                        params![claim.seq, head.seq],
                    )
                    .map_err(|e| self.err(e))?;
                delete_update(&state.conn, head.seq, &self.path)?;
                state.forget(head.seq);
            }
            store_request(&state.conn, claim.seq, request, &self.path)?;
            state.revised(claim.seq);
            state
                .conn
                .execute(
                    "UPDATE runs SET coalesced = coalesced + ?2 WHERE id = ?1",
                    params![current_run, folded.len() as i64],
                )
                .map_err(|e| self.err(e))?;
            state.done().map_err(|e| self.err(e))
        })();
        match written {
            Ok(()) => Ok(Ok(())),
            Err(e) => {
                state.abandon(&e.to_string());
                Err(e)
            }
        }
    }

    /// Claims the oldest queued update whose key no worker owns and starts
    /// an attempt at it, in one step (later updates folded in by `merge`).
    pub fn take(
        &self,
        current_run: RunId,
        merge: Merge<'_>,
    ) -> Result<Option<Attempt>, JournalError> {
        let Some(claim) = self.claim_next()? else {
            return Ok(None);
        };
        let request = self.begin_attempt(&claim, current_run, merge)?;
        Ok(Some(Attempt { claim, request }))
    }

    /// [`Journal::take`] without folding: the attempt and what may fold
    /// into it.
    pub fn take_begun(&self) -> Result<Option<Begun>, JournalError> {
        match self.claim_next()? {
            Some(claim) => self.begin(&claim).map(Some),
            None => Ok(None),
        }
    }

    /// Records the verdict on `claim` ([`Journal::finish`]) and starts the
    /// next attempt: at the key's next update if it has one, else at the
    /// oldest free one ([`Journal::take_begun`]).
    pub fn finish_and_begin(
        &self,
        claim: &Claim,
        verdict: &Disposition,
        current_run: RunId,
    ) -> Result<Option<Begun>, JournalError> {
        match self.finish(claim, verdict, current_run)? {
            Some(next) => self.begin(&next).map(Some),
            None => self.take_begun(),
        }
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
        verdict: &Disposition,
        current_run: RunId,
    ) -> Result<Option<Claim>, JournalError> {
        let mut state = self.state();
        state.healthy(&self.path)?;
        let recorded = state
            .begin()
            .map_err(|e| self.err(e))
            .and_then(|()| {
                let State { conn, tally, .. } = &mut *state;
                finish_update(conn, tally, claim, verdict, current_run, &self.path)
            })
            .and_then(|()| {
                state
                    .conn
                    .prepare_cached(FIRST_FOR_KEY)
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
            sending,
            claimed,
            revisions,
            ..
        } = &mut *state;
        sending.remove(&claim.seq);
        revisions.remove(&claim.seq);
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
        // The scan went past this update (and past the key's later ones,
        // skipped while the key was claimed): it must see them again, or
        // they wait for a restart while newer keys are delivered.
        state.cursor = state.cursor.min(claim.seq - 1);
    }
}

fn finish_update(
    tx: &Connection,
    tally: &mut Tally,
    claim: &Claim,
    verdict: &Disposition,
    current_run: RunId,
    path: &Path,
) -> Result<(), JournalError> {
    let sqlite = |source| JournalError::Sqlite {
        path: path.to_owned(),
        source,
    };
    let seq = claim.seq;
    let sources = sources::of_update(tx, seq, path)?;
    if matches!(verdict, Disposition::Delivered)
        && let Some(newest) = sources.iter().map(|s| s.received_ms).max()
    {
        tx.prepare_cached(
            "INSERT INTO delivered(key, received_ms, delivered_ms) VALUES (?1, ?2, ?3)
             ON CONFLICT(key) DO UPDATE SET received_ms = max(received_ms, excluded.received_ms),
                 delivered_ms = excluded.delivered_ms",
        )
        .and_then(|mut s| s.execute(params![claim.key, newest, now_ms()]))
        .map_err(sqlite)?;
    }
    let (request_text, status, response) = match verdict {
        Disposition::Delivered => (None, None, None),
        Disposition::Rejected {
            request, response, ..
        } => (
            request.as_ref().map(|r| request_summary(r).to_string()),
            response.as_ref().map(|r| r.status),
            response
                .as_ref()
                .map(|r| bounded_response(&r.body).into_owned()),
        ),
    };
    for source in &sources {
        match verdict {
            Disposition::Delivered => {
                tally.credit(
                    source.run,
                    &source.audiences,
                    Some(Fate::Delivered),
                    false,
                    source.first_part,
                    None,
                );
            }
            Disposition::Rejected { code, reason, .. } => {
                tally.credit(
                    source.run,
                    &source.audiences,
                    Some(Fate::Rejected),
                    false,
                    source.first_part,
                    Some(code),
                );
                // Only a dead letter needs the record itself.
                let record: String = tx
                    .prepare_cached("SELECT record FROM sources WHERE id = ?1")
                    .and_then(|mut s| s.query_row([source.id], |r| r.get(0)))
                    .map_err(sqlite)?;
                insert_letter(
                    tx,
                    source.run,
                    source.line as u64,
                    &record,
                    request_text.as_deref(),
                    status,
                    response.as_deref(),
                    code,
                    reason,
                    source.received_ms,
                )
                .map_err(sqlite)?;
            }
        }
    }
    if matches!(verdict, Disposition::Delivered) {
        tally.update_delivered(current_run);
    }
    sources::delete_of_update(tx, seq, &sources, path)?;
    delete_update(tx, seq, path)
}
