//! Where a run's records come from, read one way for every command (a run,
//! a dry run, a replay): NDJSON lines, blank lines skipped, each line
//! bounded by the record size limit, a line that is not UTF-8 or too long
//! a record error of its own.
//!
//! A file is checkpointed: the journal remembers how far it was read, with
//! the file's identity (device and inode) and a SHA-256 of every byte
//! before the checkpoint. A later run resumes there only if that content is
//! still the same — a file replaced, shortened, or rewritten in place
//! (`exporter > profiles.ndjson` keeps the inode) is read from the start,
//! and the run says so. A checkpoint never passes a line without its
//! newline: a file still being written keeps its last, unfinished record
//! for the next run.

use std::io::BufRead;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::journal::{Checkpoint, Journal, JournalError};
use crate::queue::{Incoming, Replay};
use destination_types::PlanOutcome;

/// The default of [`Input::max_record_bytes`].
pub const DEFAULT_MAX_RECORD_BYTES: usize = 4 << 20;

/// How much of a record too large to take is kept for its dead letter.
const TOO_LARGE_PREFIX_BYTES: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("cannot read input line {line}: {source}")]
    Read { line: u64, source: std::io::Error },
    #[error("cannot open input {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Journal(#[from] JournalError),
}

/// A record the reader refuses before planning.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refused {
    pub code: &'static str,
    pub message: String,
}

/// One input record.
#[derive(Clone)]
pub struct Item {
    /// The record's line: in a file, its line; in a posted batch, its
    /// place counted from 1 (an answer names it by its place from 0); in
    /// a replay, the dead letter's line.
    pub line: u64,
    /// The record (for a refused record, what is kept of it).
    pub text: String,
    /// Refused by the reader: not UTF-8, or too large.
    pub refused: Option<Refused>,
    /// Where the input may be checkpointed once this record is journaled;
    /// `None`: not past this record (its line has no newline yet).
    pub checkpoint: Option<Position>,
    /// The dead letter this record replays.
    pub replay: Option<Replay>,
}

impl From<(Item, PlanOutcome)> for Incoming {
    /// A record as read and planned.
    fn from((item, outcome): (Item, PlanOutcome)) -> Self {
        Self {
            line: item.line,
            outcome,
            record: item.text,
            replay: item.replay,
        }
    }
}

impl Item {
    /// A record that arrived already read (and checked), at `line` of its
    /// batch.
    pub fn from_message(line: u64, text: String) -> Self {
        Self {
            line,
            text,
            refused: None,
            checkpoint: None,
            replay: None,
        }
    }

    /// A dead letter's record, as `Journal::letter_records` gives it
    /// (letter, line, record, when it was received), to be replayed.
    pub fn replaying(
        (letter, line, text, received_ms): (i64, u64, String, u64),
        force: bool,
    ) -> Self {
        Self {
            line,
            text,
            refused: None,
            checkpoint: None,
            replay: Some(Replay {
                letter,
                received_ms,
                force,
            }),
        }
    }
}

/// A position in a checkpointed input.
#[derive(Clone)]
pub struct Position {
    pub offset: u64,
    pub line: u64,
    /// The digest of the bytes before `offset`, not yet finished.
    digest: Sha256,
}

impl Position {
    pub fn digest_hex(&self) -> String {
        hex(&self.digest.clone().finalize())
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Where a run's records come from.
pub struct Input {
    items: Items,
    /// Shown in the run history.
    pub(crate) name: Option<String>,
    /// Checkpointed input: its name and content identity.
    pub(crate) checkpoint: Option<(String, String)>,
    /// Lines an earlier run already journaled.
    pub(crate) skipped_lines: u64,
}

enum Items {
    Lines(Lines<Box<dyn BufRead + Send>>),
    Replay(std::vec::IntoIter<Item>),
}

impl Iterator for Items {
    type Item = Result<Item, InputError>;
    fn next(&mut self) -> Option<Self::Item> {
        match self {
            Items::Lines(lines) => lines.next(),
            Items::Replay(items) => items.next().map(Ok),
        }
    }
}

impl Input {
    /// Records from any reader (stdin, a pipe, a buffer): not checkpointed,
    /// every record is durable once journaled; the end of the input ends
    /// its last line.
    pub fn reader(reader: impl BufRead + Send + 'static, name: Option<String>) -> Self {
        Self {
            items: Items::Lines(Lines::new(Box::new(reader), 0, 0, None)),
            name,
            checkpoint: None,
            skipped_lines: 0,
        }
    }

    /// No new records: the run delivers what the journal holds.
    pub fn nothing() -> Self {
        Self {
            items: Items::Replay(Vec::new().into_iter()),
            name: None,
            checkpoint: None,
            skipped_lines: 0,
        }
    }

    /// A file, read from where the journal's checkpoint for it says — if
    /// the file's content up to there is unchanged — or from the start.
    pub fn file(path: &Path, journal: &Journal, from_start: bool) -> Result<Self, InputError> {
        let open = |source| InputError::Open {
            path: path.to_owned(),
            source,
        };
        let file = std::fs::File::open(path).map_err(open)?;
        let metadata = file.metadata().map_err(open)?;
        if !metadata.is_file() {
            // A pipe or a device cannot be read again from a position.
            let name = path.display().to_string();
            return Ok(Self::reader(std::io::BufReader::new(file), Some(name)));
        }
        let name = std::fs::canonicalize(path)
            .map_err(open)?
            .display()
            .to_string();
        let identity = file_identity(&metadata);
        let mut reader = std::io::BufReader::with_capacity(1 << 16, file);
        let mut start = (0, 0, Sha256::new());
        if let Some(checkpoint) = journal.checkpoint(&name)? {
            if from_start {
                tracing::info!("reading {name} from the start, as asked");
            } else if checkpoint.identity != identity || checkpoint.offset > metadata.len() {
                tracing::warn!(
                    "{name} was replaced or shortened since it was journaled up to line {}: reading it from the start",
                    checkpoint.line
                );
            } else {
                match verify_prefix(&mut reader, &checkpoint).map_err(open)? {
                    Some(digest) => start = (checkpoint.offset, checkpoint.line, digest),
                    None => {
                        tracing::warn!(
                            "{name} changed before line {} since it was journaled (rewritten in place?): reading it from the start",
                            checkpoint.line + 1
                        );
                        use std::io::Seek;
                        reader.seek(std::io::SeekFrom::Start(0)).map_err(open)?;
                    }
                }
            }
        }
        let (offset, line, digest) = start;
        Ok(Self {
            items: Items::Lines(Lines::new(Box::new(reader), offset, line, Some(digest))),
            name: Some(name.clone()),
            checkpoint: Some((name, identity)),
            skipped_lines: line,
        })
    }

    /// Dead letters to send again: `(letter id, original line, record,
    /// received at)`.
    pub fn replay(letters: Vec<(i64, u64, String, u64)>, force: bool) -> Self {
        let items: Vec<Item> = letters
            .into_iter()
            .map(|letter| Item::replaying(letter, force))
            .collect();
        Self {
            items: Items::Replay(items.into_iter()),
            name: Some("dead letters".into()),
            checkpoint: None,
            skipped_lines: 0,
        }
    }

    /// Records longer than `limit` bytes are refused (`record-too-large`)
    /// without being held in memory whole.
    pub fn max_record_bytes(mut self, limit: usize) -> Self {
        if let Items::Lines(lines) = &mut self.items {
            lines.max_record_bytes = limit.max(1);
        }
        self
    }

    /// The records, in input order.
    pub fn into_items(self) -> impl Iterator<Item = Result<Item, InputError>> + Send {
        self.items
    }

    /// Splits the input into its records and what the run records of it.
    pub(crate) fn into_parts(
        self,
    ) -> (
        impl Iterator<Item = Result<Item, InputError>> + Send,
        InputInfo,
    ) {
        (
            self.items,
            InputInfo {
                name: self.name,
                checkpoint: self.checkpoint,
                skipped_lines: self.skipped_lines,
            },
        )
    }
}

/// What a run records of its input.
pub(crate) struct InputInfo {
    pub name: Option<String>,
    pub checkpoint: Option<(String, String)>,
    pub skipped_lines: u64,
}

impl InputInfo {
    /// The checkpoint after the last checkpointable record of `items`.
    pub fn checkpoint_after<'a>(
        &self,
        items: impl Iterator<Item = &'a Item>,
    ) -> Option<Checkpoint> {
        let (input, identity) = self.checkpoint.as_ref()?;
        let position = items.filter_map(|i| i.checkpoint.as_ref()).last()?;
        Some(Checkpoint {
            input: input.clone(),
            identity: identity.clone(),
            offset: position.offset,
            line: position.line,
            digest: Some(position.digest_hex()),
        })
    }
}

/// Reads the checkpoint's first `offset` bytes; their running digest when
/// they hash to the checkpoint's (the reader is then just past them), or
/// `None`.
fn verify_prefix(
    reader: &mut impl BufRead,
    checkpoint: &Checkpoint,
) -> std::io::Result<Option<Sha256>> {
    let Some(expected) = &checkpoint.digest else {
        // Written by an older host: the content cannot be vouched for.
        return Ok(None);
    };
    let mut digest = Sha256::new();
    let mut left = checkpoint.offset;
    while left > 0 {
        let buf = reader.fill_buf()?;
        if buf.is_empty() {
            return Ok(None);
        }
        let n = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        digest.update(&buf[..n]);
        reader.consume(n);
        left -= n as u64;
    }
    Ok((hex(&digest.clone().finalize()) == *expected).then_some(digest))
}

#[cfg(unix)]
fn file_identity(metadata: &std::fs::Metadata) -> String {
    use std::os::unix::fs::MetadataExt;
    format!("dev {} inode {}", metadata.dev(), metadata.ino())
}

#[cfg(not(unix))]
fn file_identity(_metadata: &std::fs::Metadata) -> String {
    "unknown".into()
}

/// Non-blank lines with their positions.
pub(crate) struct Lines<R> {
    reader: R,
    offset: u64,
    line: u64,
    max_record_bytes: usize,
    /// Running digest of every byte before `offset`: `Some` for a
    /// checkpointed file (whose unterminated last line may still grow).
    digest: Option<Sha256>,
    done: bool,
}

impl<R: BufRead> Lines<R> {
    fn new(reader: R, offset: u64, line: u64, digest: Option<Sha256>) -> Self {
        Self {
            reader,
            offset,
            line,
            max_record_bytes: DEFAULT_MAX_RECORD_BYTES,
            digest,
            done: false,
        }
    }

    /// Reads one line, keeping at most the limit (plus its line ending) of
    /// it: `(kept bytes, whole length, ended by a newline)`, or `None` at
    /// the end of the input.
    fn read_line(&mut self) -> std::io::Result<Option<(Vec<u8>, usize, bool)>> {
        let keep = self.max_record_bytes.saturating_add(2);
        let mut kept = Vec::new();
        let mut length = 0usize;
        loop {
            let buf = self.reader.fill_buf()?;
            if buf.is_empty() {
                return Ok((length > 0).then_some((kept, length, false)));
            }
            let (chunk, ends) = match buf.iter().position(|b| *b == b'\n') {
                Some(i) => (&buf[..=i], true),
                None => (buf, false),
            };
            let room = keep.saturating_sub(kept.len());
            kept.extend_from_slice(&chunk[..chunk.len().min(room)]);
            if let Some(digest) = &mut self.digest {
                digest.update(chunk);
            }
            let n = chunk.len();
            length += n;
            self.reader.consume(n);
            if ends {
                return Ok(Some((kept, length, true)));
            }
        }
    }
}

impl<R: BufRead> Iterator for Lines<R> {
    type Item = Result<Item, InputError>;

    fn next(&mut self) -> Option<Self::Item> {
        while !self.done {
            let (mut bytes, length, terminated) = match self.read_line() {
                Ok(Some(read)) => read,
                Ok(None) => {
                    self.done = true;
                    return None;
                }
                Err(source) => {
                    self.done = true;
                    return Some(Err(InputError::Read {
                        line: self.line + 1,
                        source,
                    }));
                }
            };
            self.offset += length as u64;
            self.line += 1;
            let mut content_length = length;
            while bytes.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                bytes.pop();
                content_length -= 1;
            }
            if content_length <= bytes.len() && bytes.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let checkpointed = self.digest.is_some();
            if !terminated && checkpointed {
                // The end of a file being written: its last line may be
                // half of a record. A complete JSON text is taken (and read
                // again next time, since the checkpoint stays before it);
                // anything else is left for the next run.
                self.done = true;
                if content_length > self.max_record_bytes
                    || serde_json::from_slice::<serde::de::IgnoredAny>(&bytes).is_err()
                {
                    tracing::warn!(
                        "input line {} has no newline yet and is not a complete record: left for the next run",
                        self.line
                    );
                    return None;
                }
            }
            let position = (terminated || !checkpointed).then(|| Position {
                offset: self.offset,
                line: self.line,
                digest: self.digest.clone().unwrap_or_default(),
            });
            let (text, refused) = if content_length > self.max_record_bytes {
                bytes.truncate(TOO_LARGE_PREFIX_BYTES);
                (
                    String::from_utf8_lossy(&bytes).into_owned(),
                    Some(Refused {
                        code: "record-too-large",
                        message: format!(
                            "line {}: the record is {content_length} bytes, over the {}-byte limit (--max-record-bytes)",
                            self.line, self.max_record_bytes
                        ),
                    }),
                )
            } else {
                match String::from_utf8(bytes) {
                    Ok(text) => (text, None),
                    Err(e) => (
                        String::from_utf8_lossy(e.as_bytes()).into_owned(),
                        Some(Refused {
                            code: "invalid-record",
                            message: format!("line {} is not valid UTF-8", self.line),
                        }),
                    ),
                }
            };
            return Some(Ok(Item {
                line: self.line,
                text,
                refused,
                checkpoint: position,
                replay: None,
            }));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(input: &[u8], limit: usize, checkpointed: bool) -> Vec<Item> {
        let digest = checkpointed.then(Sha256::new);
        let mut lines = Lines::new(std::io::Cursor::new(input.to_vec()), 0, 0, digest);
        lines.max_record_bytes = limit;
        lines.map(|i| i.unwrap()).collect()
    }

    #[test]
    fn a_line_over_the_limit_is_refused_and_the_next_one_read() {
        let mut input = b"{\"a\":1}\n".to_vec();
        input.extend(std::iter::repeat_n(b'x', 5000));
        input.extend(b"\n{\"b\":2}\n");
        let items = read(&input, 1000, true);
        assert_eq!(items.len(), 3);
        assert_eq!(items[1].line, 2);
        assert_eq!(items[1].refused.as_ref().unwrap().code, "record-too-large");
        assert!(items[1].text.len() <= TOO_LARGE_PREFIX_BYTES);
        assert_eq!(items[2].text, "{\"b\":2}");
        assert_eq!(
            items[2].checkpoint.as_ref().unwrap().offset,
            input.len() as u64
        );
    }

    #[test]
    fn whitespace_and_line_endings_are_read_the_same_everywhere() {
        let items = read(b"\n  \r\n{\"a\":1}\r\n\t\n\xff\xfe\n", 100, false);
        assert_eq!(items.len(), 2);
        assert_eq!((items[0].line, items[0].text.as_str()), (3, "{\"a\":1}"));
        assert_eq!(items[1].line, 5);
        assert_eq!(items[1].refused.as_ref().unwrap().code, "invalid-record");
    }

    #[test]
    fn an_unterminated_last_line_is_never_checkpointed_past() {
        // Half a record: left for the next run.
        let items = read(b"{\"a\":1}\n{\"b\":", 100, true);
        assert_eq!(items.len(), 1);
        // A whole record without its newline: taken, not checkpointed past.
        let items = read(b"{\"a\":1}\n{\"b\":2}", 100, true);
        assert_eq!(items.len(), 2);
        assert!(items[1].checkpoint.is_none());
        // From a stream the end of the input ends the line.
        let items = read(b"{\"a\":1}\n{\"b\":", 100, false);
        assert_eq!(items.len(), 2);
        assert!(items[1].checkpoint.is_some());
    }
}
