//! What a destination asked the host to remember — which object a key
//! belongs to, learnt by one step of a delivery and recalled before the
//! requests of later ones — in `facts`, and a delivery moving on to its
//! next step. Both join the group transaction, so a step's next request
//! and what its answer taught are committed together.

use destination_types::Request;
use rusqlite::{Connection, OptionalExtension, params};

use super::requests::store_request;
use super::{Journal, JournalError, State};
use crate::queue::{Claim, Learned};

const RECALL: &str = "SELECT value FROM facts WHERE name = ?1";
const REMEMBER: &str = "INSERT INTO facts(name, value) VALUES (?1, ?2)
     ON CONFLICT(name) DO UPDATE SET value = excluded.value";
const FORGET: &str = "DELETE FROM facts WHERE name = ?1";

fn write(conn: &Connection, learned: &Learned) -> rusqlite::Result<()> {
    let mut forget = conn.prepare_cached(FORGET)?;
    for name in &learned.forget {
        forget.execute([name])?;
    }
    let mut remember = conn.prepare_cached(REMEMBER)?;
    for fact in &learned.remember {
        remember.execute(params![fact.name, fact.value])?;
    }
    Ok(())
}

impl Journal {
    /// The value remembered under `name`, if any (what this connection's
    /// open group holds included).
    pub fn recall(&self, name: &str) -> Result<Option<String>, JournalError> {
        let state = self.state();
        state.healthy(&self.path)?;
        state
            .conn
            .prepare_cached(RECALL)
            .and_then(|mut s| s.query_row([name], |r| r.get(0)).optional())
            .map_err(|e| self.err(e))
    }

    /// Remembers and forgets what an answer taught.
    pub fn learn(&self, learned: &Learned) -> Result<(), JournalError> {
        if learned.is_empty() {
            return Ok(());
        }
        self.in_group(|state| write(&state.conn, learned).map_err(|e| self.err(e)))
    }

    /// `claim`'s delivery moved on: its update's request becomes `next`
    /// (its records stay with it, its key stays claimed and the attempt
    /// goes on), with what the answer taught, in one transaction.
    pub fn step(
        &self,
        claim: &Claim,
        next: &Request,
        learned: &Learned,
    ) -> Result<(), JournalError> {
        self.in_group(|state| {
            write(&state.conn, learned).map_err(|e| self.err(e))?;
            store_request(&state.conn, claim.seq, next, &self.path)?;
            state.revised(claim.seq);
            Ok(())
        })
    }

    /// Runs `work` in the group transaction; a failure abandons the group.
    fn in_group(
        &self,
        work: impl FnOnce(&mut State) -> Result<(), JournalError>,
    ) -> Result<(), JournalError> {
        let mut state = self.state();
        state.healthy(&self.path)?;
        let written = state
            .begin()
            .map_err(|e| self.err(e))
            .and_then(|()| work(&mut state))
            .and_then(|()| state.done().map_err(|e| self.err(e)));
        if let Err(e) = &written {
            state.abandon(&e.to_string());
        }
        written
    }
}
