//! Run counters added up in memory over a group of operations and written
//! in the group's own transaction, just before it commits: one upsert per
//! run, audience and failure reason per group instead of several per
//! update. A lost group loses its counts with its verdicts, so counts and
//! verdicts never disagree.

use std::collections::HashMap;

use rusqlite::{Connection, params};

use super::RunId;

/// Which count a record's fate adds to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Fate {
    Delivered,
    Rejected,
    Skipped,
}

#[derive(Clone, Copy, Debug, Default)]
struct CountDeltas {
    received: i64,
    delivered: i64,
    rejected: i64,
    skipped: i64,
}

impl CountDeltas {
    fn add(&mut self, fate: Option<Fate>, received: bool) {
        self.received += i64::from(received);
        match fate {
            Some(Fate::Delivered) => self.delivered += 1,
            Some(Fate::Rejected) => self.rejected += 1,
            Some(Fate::Skipped) => self.skipped += 1,
            None => {}
        }
    }
}

#[derive(Debug, Default)]
pub(super) struct Tally {
    runs: HashMap<RunId, (CountDeltas, i64)>,
    audiences: HashMap<(RunId, String), CountDeltas>,
    failures: HashMap<(RunId, String), i64>,
}

impl Tally {
    /// One record's `fate` (and, when `received`, its arrival) in `run`:
    /// per audience it belonged to, for the run when `record_level` (the
    /// record's first request), and per failure reason.
    pub(super) fn credit(
        &mut self,
        run: RunId,
        audiences: &[String],
        fate: Option<Fate>,
        received: bool,
        record_level: bool,
        failure: Option<&str>,
    ) {
        for audience in audiences {
            self.audiences
                .entry((run, audience.clone()))
                .or_default()
                .add(fate, received);
        }
        if record_level {
            self.runs.entry(run).or_default().0.add(fate, received);
        }
        if let Some(code) = failure {
            *self.failures.entry((run, code.to_owned())).or_default() += 1;
        }
    }

    /// An update (after coalescing) landed.
    pub(super) fn update_delivered(&mut self, run: RunId) {
        self.runs.entry(run).or_default().1 += 1;
    }

    /// Forgets the counts of a group that was rolled back.
    pub(super) fn clear(&mut self) {
        self.runs.clear();
        self.audiences.clear();
        self.failures.clear();
    }

    /// Adds the counts to the stored ones, inside the open transaction.
    pub(super) fn write(&mut self, conn: &Connection) -> rusqlite::Result<()> {
        for (run, (c, updates)) in self.runs.drain() {
            conn.prepare_cached(
                "UPDATE runs SET received = received + ?2, delivered = delivered + ?3,
                    rejected = rejected + ?4, skipped = skipped + ?5,
                    updates_delivered = updates_delivered + ?6
                 WHERE id = ?1",
            )?
            .execute(params![
                run,
                c.received,
                c.delivered,
                c.rejected,
                c.skipped,
                updates
            ])?;
        }
        for ((run, audience), c) in self.audiences.drain() {
            conn.prepare_cached(
                "INSERT INTO run_audiences(run_id, audience, received, delivered, rejected, skipped)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT(run_id, audience) DO UPDATE SET received = received + ?3,
                    delivered = delivered + ?4, rejected = rejected + ?5, skipped = skipped + ?6",
            )?
            .execute(params![
                run,
                audience,
                c.received,
                c.delivered,
                c.rejected,
                c.skipped
            ])?;
        }
        for ((run, code), count) in self.failures.drain() {
            conn.prepare_cached(
                "INSERT INTO run_failures(run_id, code, count) VALUES (?1, ?2, ?3)
                 ON CONFLICT(run_id, code) DO UPDATE SET count = count + ?3",
            )?
            .execute(params![run, code, count])?;
        }
        Ok(())
    }
}
