//! The destinations' change history: each change made from the status
//! page (who, when, which destination, its settings before and after,
//! secrets masked), one JSON line each in `STATE_DIR/changes.ndjson`,
//! appended and fsynced before the change is reported done.

use std::io::{BufRead, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// One change to one destination.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    pub at_ms: u64,
    /// The operator who made it.
    pub who: String,
    pub destination: String,
    /// `created`, `edited`, `enabled` or `disabled`.
    pub what: String,
    /// The destination's table in the file, secrets masked (`None`: it did
    /// not exist).
    pub before: Option<String>,
    pub after: Option<String>,
}

#[derive(Clone, Debug)]
pub struct History {
    path: PathBuf,
}

impl History {
    pub fn in_dir(state_dir: &Path) -> Self {
        Self {
            path: state_dir.join("changes.ndjson"),
        }
    }

    /// Appends `change` and makes it durable.
    pub fn record(&self, change: &Change) -> std::io::Result<()> {
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let mut line = serde_json::to_vec(change).map_err(std::io::Error::other)?;
        line.push(b'\n');
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&self.path)?;
        file.write_all(&line)?;
        file.sync_all()
    }

    /// Destination `name`'s changes, the newest first, at most `newest`.
    /// A line that cannot be read (a crash mid-append) is passed over.
    pub fn of(&self, name: &str, newest: usize) -> std::io::Result<Vec<Change>> {
        let file = match std::fs::File::open(&self.path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut changes: Vec<Change> = Vec::new();
        for line in std::io::BufReader::new(file).lines() {
            if let Ok(change) = serde_json::from_str::<Change>(&line?)
                && change.destination == name
            {
                changes.push(change);
            }
        }
        changes.reverse();
        changes.truncate(newest);
        Ok(changes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_read_back_newest_first_per_destination_past_a_torn_line() {
        let dir = std::env::temp_dir().join(format!("history-{}", std::process::id()));
        let history = History::in_dir(&dir);
        let change = |at_ms, destination: &str| Change {
            at_ms,
            who: "ops".into(),
            destination: destination.into(),
            what: "edited".into(),
            before: Some("a".into()),
            after: Some("b".into()),
        };
        history.record(&change(1, "sales")).unwrap();
        history.record(&change(2, "support")).unwrap();
        std::fs::OpenOptions::new()
            .append(true)
            .open(dir.join("changes.ndjson"))
            .unwrap()
            .write_all(b"{\"at_ms\": 3, \"who\n")
            .unwrap();
        history.record(&change(4, "sales")).unwrap();
        assert_eq!(
            history.of("sales", 10).unwrap(),
            [change(4, "sales"), change(1, "sales")]
        );
        assert_eq!(history.of("sales", 1).unwrap(), [change(4, "sales")]);
        assert_eq!(history.of("nobody", 10).unwrap(), []);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
