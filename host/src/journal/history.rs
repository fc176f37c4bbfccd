//! The run history: each run's kind, status, counts per audience and per
//! reason, and what it sent.

use rusqlite::{Connection, OptionalExtension, params};

use super::{Counts, Journal, JournalError, RunId, RunRecord, RunStats, now_ms};

impl Journal {
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
                    credential_refreshes = credential_refreshes + ?7, resumed = ?8, fatal = ?9,
                    lookups_sent = lookups_sent + ?10, creates_sent = creates_sent + ?11
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
                    fatal,
                    stats.lookups_sent as i64,
                    stats.creates_sent as i64
                ],
            )
            .map(drop)
        })
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
        let mut state = self.state();
        state.count_so_far().map_err(|e| self.err(e))?;
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
        let mut state = self.state();
        state.count_so_far().map_err(|e| self.err(e))?;
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
}

const RUN_COLUMNS: &str = "id, kind, status, started_ms, ended_ms, destination, api_base, input,
    received, delivered, rejected, skipped, updates_delivered, coalesced, requests_sent,
    rate_limited, retries, credential_refreshes, resumed, fatal, lookups_sent, creates_sent";

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
        lookups_sent: n(20)?,
        creates_sent: n(21)?,
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
