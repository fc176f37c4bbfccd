//! Input checkpoints: where an input file has been read up to, committed
//! with the records before it.

use rusqlite::OptionalExtension;

use super::{Journal, JournalError};

/// Where an input file has been read up to, committed with the records
/// before it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    /// The input's name (its canonical path).
    pub input: String,
    /// What identifies the file's content (device and inode), so a replaced
    /// file is not skipped into.
    pub identity: String,
    /// Bytes consumed.
    pub offset: u64,
    /// Lines consumed.
    pub line: u64,
    /// SHA-256 (hex) of the bytes before `offset`, so a file rewritten in
    /// place is not resumed into; `None` from a host that did not record it.
    pub digest: Option<String>,
}

impl Journal {
    /// Where an input file was read up to.
    pub fn checkpoint(&self, input: &str) -> Result<Option<Checkpoint>, JournalError> {
        self.with(|conn| {
            conn.query_row(
                "SELECT identity, offset, line, digest FROM checkpoints WHERE input = ?1",
                [input],
                |r| {
                    Ok(Checkpoint {
                        input: input.to_owned(),
                        identity: r.get(0)?,
                        offset: r.get::<_, i64>(1)? as u64,
                        line: r.get::<_, i64>(2)? as u64,
                        digest: r.get(3)?,
                    })
                },
            )
            .optional()
        })
    }
}
