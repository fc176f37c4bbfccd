//! What a long-running intake needs from the journal besides the queue:
//! the answers given to idempotent requests (kept with the records they
//! accepted, in one transaction), runs per period that begin while
//! delivery goes on, totals, and the backlog's size and age.

use std::collections::BTreeMap;

use rusqlite::{OptionalExtension, params};

use super::ingest::ingest_batch;
use super::{
    Counts, Incoming, IngestReport, Journal, JournalError, Placement, RunId, RunStats, Stale,
    now_ms,
};

/// How long an idempotency key's answer is kept.
pub const RECEIPT_TTL_MS: u64 = 24 * 3_600 * 1_000;

/// The answer to an idempotent intake request, stored with its records.
#[derive(Clone, Debug)]
pub struct Receipt {
    /// The key as scoped by the caller (per producer).
    pub key: String,
    /// A digest of the body answered.
    pub digest: String,
    pub response: String,
}

/// What was answered under a key before.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Earlier {
    /// The same body: its answer.
    Answered(String),
    /// Another body.
    OtherBody,
}

impl Earlier {
    fn of(receipt_digest: &str, (response, digest): (String, Option<String>)) -> Self {
        match digest {
            // Receipts of schema 3 kept no digest: taken as the same body.
            Some(digest) if digest != receipt_digest => Self::OtherBody,
            _ => Self::Answered(response),
        }
    }
}

/// What an idempotent intake did.
#[derive(Debug)]
pub enum Ingested {
    /// The batch is journaled, with its receipt.
    Journaled(IngestReport),
    /// The key was seen within [`RECEIPT_TTL_MS`]: nothing was journaled.
    Repeated(Earlier),
}

/// Queued work: how much, and since when.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Backlog {
    /// Updates queued (after coalescing).
    pub updates: u64,
    /// When the record behind the oldest queued update was received.
    pub oldest_received_ms: Option<u64>,
}

const RECEIPT_OF: &str =
    "SELECT response, digest FROM receipts WHERE key = ?1 AND received_ms >= ?2";

fn earlier_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<(String, Option<String>)> {
    Ok((r.get(0)?, r.get(1)?))
}

impl Journal {
    /// What was answered under `key` within the TTL, if anything, for a
    /// body of `digest`.
    pub fn receipt(&self, key: &str, digest: &str) -> Result<Option<Earlier>, JournalError> {
        let since = now_ms().saturating_sub(RECEIPT_TTL_MS as i64);
        self.state()
            .conn
            .prepare_cached(RECEIPT_OF)
            .and_then(|mut s| s.query_row(params![key, since], earlier_row).optional())
            .map(|found| found.map(|found| Earlier::of(digest, found)))
            .map_err(|e| self.err(e))
    }

    /// Journals `batch` and its receipt in one durable transaction, unless
    /// the receipt's key was seen within the TTL (then nothing is
    /// journaled). Receipts past the TTL are forgotten on the way. A
    /// placement that went stale meanwhile writes nothing ([`Stale`]).
    pub fn ingest_once(
        &self,
        run: RunId,
        batch: &[Incoming],
        placement: Placement,
        receipt: &Receipt,
    ) -> Result<Result<Ingested, Stale>, JournalError> {
        let now = now_ms();
        let since = now.saturating_sub(RECEIPT_TTL_MS as i64);
        let mut state = self.state();
        state.healthy(&self.path)?;
        state.begin().map_err(|e| self.err(e))?;
        let result = (|| -> Result<Result<Ingested, Stale>, JournalError> {
            let earlier = state
                .conn
                .prepare_cached(RECEIPT_OF)
                .and_then(|mut s| {
                    s.query_row(params![receipt.key, since], earlier_row)
                        .optional()
                })
                .map_err(|e| self.err(e))?;
            if let Some(earlier) = earlier {
                return Ok(Ok(Ingested::Repeated(Earlier::of(
                    &receipt.digest,
                    earlier,
                ))));
            }
            let report = match ingest_batch(&mut state, run, batch, placement, None, &self.path)? {
                Ok(report) => report,
                Err(Stale) => return Ok(Err(Stale)),
            };
            let conn = &state.conn;
            conn.prepare_cached("DELETE FROM receipts WHERE received_ms < ?1")
                .and_then(|mut s| s.execute([since]))
                .and_then(|_| {
                    conn.prepare_cached(
                        "INSERT OR REPLACE INTO receipts(key, response, received_ms, digest)
                         VALUES (?1, ?2, ?3, ?4)",
                    )
                })
                .and_then(|mut s| {
                    s.execute(params![receipt.key, receipt.response, now, receipt.digest])
                })
                .map_err(|e| self.err(e))?;
            Ok(Ok(Ingested::Journaled(report)))
        })()
        // Accepted means on disk, whatever happens to the machine next.
        .and_then(|intake| {
            if intake.is_ok() {
                state.commit().map_err(|e| self.err(e))?;
            }
            Ok(intake)
        });
        if let Err(e) = &result {
            state.abandon(&e.to_string());
        }
        result
    }

    /// The stream run of `destination` for the period that started at
    /// `period_start_ms`: the one already receiving (a restart carries on
    /// with it), or a new one. Stream runs of earlier periods still
    /// receiving (or receiving for another API base) are closed; their
    /// counts go on settling as their queued records get verdicts. Unlike [`Journal::start_run`], the workers'
    /// claims stay.
    pub fn stream_run(
        &self,
        destination: &str,
        api_base: &str,
        period_start_ms: u64,
    ) -> Result<RunId, JournalError> {
        let period_start = i64::try_from(period_start_ms).unwrap_or(i64::MAX);
        self.with(|conn| {
            conn.execute(
                "UPDATE runs SET status = 'closed', ended_ms = ?3
                 WHERE kind = 'stream' AND destination = ?1 AND status = 'receiving'
                    AND (started_ms < ?2 OR api_base <> ?4)",
                params![destination, period_start, now_ms(), api_base],
            )?;
            let current: Option<RunId> = conn
                .query_row(
                    "SELECT id FROM runs WHERE kind = 'stream' AND destination = ?1 AND status = 'receiving'
                     ORDER BY id DESC LIMIT 1",
                    [destination],
                    |r| r.get(0),
                )
                .optional()?;
            if let Some(run) = current {
                return Ok(run);
            }
            conn.execute(
                "INSERT INTO runs(kind, started_ms, status, destination, api_base)
                 VALUES ('stream', ?1, 'receiving', ?2, ?3)",
                params![now_ms(), destination, api_base],
            )?;
            Ok(conn.last_insert_rowid())
        })
    }

    /// Adds what the workers counted to a run.
    pub fn add_run_stats(&self, run: RunId, stats: &RunStats) -> Result<(), JournalError> {
        self.with(|conn| {
            conn.execute(
                "UPDATE runs SET requests_sent = requests_sent + ?2, rate_limited = rate_limited + ?3,
                    retries = retries + ?4, credential_refreshes = credential_refreshes + ?5,
                    lookups_sent = lookups_sent + ?6, creates_sent = creates_sent + ?7
                 WHERE id = ?1",
                params![
                    run,
                    stats.requests_sent as i64,
                    stats.rate_limited as i64,
                    stats.retries as i64,
                    stats.credential_refreshes as i64,
                    stats.lookups_sent as i64,
                    stats.creates_sent as i64
                ],
            )
            .map(drop)
        })
    }

    /// Counts over every run: in all, and per audience.
    pub fn totals(&self) -> Result<(Counts, BTreeMap<String, Counts>), JournalError> {
        let mut state = self.state();
        state.count_so_far().map_err(|e| self.err(e))?;
        let conn = &state.conn;
        let counts = |r: &rusqlite::Row<'_>, from: usize| -> rusqlite::Result<Counts> {
            let get = |i: usize| r.get::<_, i64>(i).map(|n| u64::try_from(n).unwrap_or(0));
            Ok(Counts {
                received: get(from)?,
                delivered: get(from + 1)?,
                rejected: get(from + 2)?,
                skipped: get(from + 3)?,
            })
        };
        let all = conn
            .query_row(
                "SELECT coalesce(sum(received), 0), coalesce(sum(delivered), 0),
                    coalesce(sum(rejected), 0), coalesce(sum(skipped), 0) FROM runs",
                [],
                |r| counts(r, 0),
            )
            .map_err(|e| self.err(e))?;
        let mut per_audience = BTreeMap::new();
        let mut statement = conn
            .prepare(
                "SELECT audience, sum(received), sum(delivered), sum(rejected), sum(skipped)
                 FROM run_audiences GROUP BY audience",
            )
            .map_err(|e| self.err(e))?;
        let rows = statement
            .query_map([], |r| Ok((r.get::<_, String>(0)?, counts(r, 1)?)))
            .map_err(|e| self.err(e))?;
        for row in rows {
            let (audience, c) = row.map_err(|e| self.err(e))?;
            per_audience.insert(audience, c);
        }
        Ok((all, per_audience))
    }

    /// Updates queued, and the age of the oldest.
    pub fn backlog(&self) -> Result<Backlog, JournalError> {
        let state = self.state();
        let conn = &state.conn;
        let updates: i64 = conn
            .query_row("SELECT count(*) FROM updates", [], |r| r.get(0))
            .map_err(|e| self.err(e))?;
        let oldest: Option<i64> = conn
            .query_row(
                "SELECT min(received_ms) FROM sources WHERE seq = (SELECT min(seq) FROM updates)",
                [],
                |r| r.get(0),
            )
            .map_err(|e| self.err(e))?;
        Ok(Backlog {
            updates: u64::try_from(updates).unwrap_or(0),
            oldest_received_ms: oldest.and_then(|ms| u64::try_from(ms).ok()),
        })
    }
}
