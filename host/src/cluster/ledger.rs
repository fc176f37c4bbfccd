//! A partition owner's account of the intake messages it holds: which of
//! their records still wait for a verdict, and how far the partition's
//! consumer may be acknowledged.
//!
//! Messages are acknowledged in order, and only the complete prefix: a
//! message stays unacknowledged while any record of it, or of an older
//! message, waits. So whatever a new owner is redelivered starts at the
//! oldest record without a verdict and comes in the original order, and an
//! update for a key is never sent after a newer one. What the owner
//! finished beyond that prefix is handed over as [`Progress`] when it lets
//! the partition go gracefully, so that the next owner does not send it
//! again.
//!
//! Each message carries the counts of its records' verdicts; they reach the
//! cluster's runs when the message is complete, before it is acknowledged
//! (see [`super::runs::count_complete`]), so a message counts once however
//! often it is delivered.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::runs::RunDelta;

/// Records of messages beyond the acknowledged prefix that had their
/// verdict when the previous owner let go.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// Stream sequence → indices of records done.
    pub done: BTreeMap<u64, BTreeSet<u32>>,
    /// Stream sequence → what those records' verdicts counted.
    #[serde(default)]
    pub counted: BTreeMap<u64, RunDelta>,
}

impl Progress {
    pub fn is_done(&self, seq: u64, index: u32) -> bool {
        self.done.get(&seq).is_some_and(|set| set.contains(&index))
    }

    /// The counts of message `seq`'s records done before.
    pub fn counted(&self, seq: u64) -> RunDelta {
        self.counted.get(&seq).cloned().unwrap_or_default()
    }
}

/// A message whose records all have their verdicts.
#[derive(Debug, PartialEq, Eq)]
pub struct Complete<H> {
    pub seq: u64,
    pub counted: RunDelta,
    pub handle: H,
}

/// How a record ended, once all its requests have.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Finished {
    Delivered,
    Rejected,
}

#[derive(Debug)]
struct Message<H> {
    /// Requests still without a verdict, per record.
    waiting: Vec<u32>,
    /// Whether any request of the record was rejected.
    rejected: Vec<bool>,
    open: usize,
    /// What its records' verdicts count so far.
    counted: RunDelta,
    /// What acknowledges the message.
    handle: Option<H>,
}

/// The messages held, by stream sequence.
#[derive(Debug)]
pub struct Ledger<H> {
    messages: BTreeMap<u64, Message<H>>,
    /// Highest sequence seen (redeliveries at or below it are ignored).
    seen: u64,
    open_records: usize,
}

impl<H> Default for Ledger<H> {
    fn default() -> Self {
        Self {
            messages: BTreeMap::new(),
            seen: 0,
            open_records: 0,
        }
    }
}

impl<H> Ledger<H> {
    /// Takes in message `seq` whose records need `requests[i]` verdicts each
    /// (0: nothing to send, or done before, and then already in `counted`);
    /// `false` (and nothing taken) for a message already held or
    /// acknowledged (a redelivery).
    pub fn admit(&mut self, seq: u64, requests: Vec<u32>, counted: RunDelta, handle: H) -> bool {
        if seq <= self.seen {
            return false;
        }
        self.seen = seq;
        let open = requests.iter().filter(|&&n| n > 0).count();
        self.open_records += open;
        let rejected = vec![false; requests.len()];
        self.messages.insert(
            seq,
            Message {
                waiting: requests,
                rejected,
                open,
                counted,
                handle: Some(handle),
            },
        );
        true
    }

    /// Whether message `seq` is neither held nor acknowledged.
    pub fn is_new(&self, seq: u64) -> bool {
        seq > self.seen
    }

    /// One request of record `index` of message `seq` has its verdict;
    /// the record's end when it was its last.
    pub fn request_done(&mut self, seq: u64, index: u32, rejected: bool) -> Option<Finished> {
        let message = self.messages.get_mut(&seq)?;
        let i = usize::try_from(index).ok()?;
        let waiting = message.waiting.get_mut(i)?;
        if *waiting == 0 {
            return None;
        }
        *waiting -= 1;
        message.rejected[i] |= rejected;
        if *waiting > 0 {
            return None;
        }
        message.open -= 1;
        self.open_records -= 1;
        message.counted.received += 1;
        Some(if message.rejected[i] {
            message.counted.rejected += 1;
            Finished::Rejected
        } else {
            message.counted.delivered += 1;
            Finished::Delivered
        })
    }

    /// Takes the complete messages at the front out, oldest first, to be
    /// acknowledged.
    pub fn ackable(&mut self) -> Vec<Complete<H>> {
        let mut complete = Vec::new();
        while let Some(entry) = self.messages.first_entry() {
            if entry.get().open > 0 {
                break;
            }
            let (seq, mut message) = entry.remove_entry();
            if let Some(handle) = message.handle.take() {
                complete.push(Complete {
                    seq,
                    counted: message.counted,
                    handle,
                });
            }
        }
        complete
    }

    /// Records held that wait for a verdict.
    pub fn open_records(&self) -> usize {
        self.open_records
    }

    /// Messages held (not yet acknowledged).
    pub fn held(&self) -> usize {
        self.messages.len()
    }

    /// What is done beyond the acknowledged prefix.
    pub fn progress(&self) -> Progress {
        let mut progress = Progress::default();
        for (&seq, message) in &self.messages {
            let done: BTreeSet<u32> = message
                .waiting
                .iter()
                .enumerate()
                .filter(|(_, waiting)| **waiting == 0)
                .filter_map(|(i, _)| u32::try_from(i).ok())
                .collect();
            if !done.is_empty() {
                progress.done.insert(seq, done);
            }
            if message.counted != RunDelta::default() {
                progress.counted.insert(seq, message.counted.clone());
            }
        }
        progress
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acknowledges_only_the_complete_prefix() {
        let mut ledger = Ledger::default();
        let none = RunDelta::default;
        assert!(ledger.admit(1, vec![1, 1], none(), "m1"));
        assert!(ledger.admit(2, vec![1], none(), "m2"));
        assert!(ledger.admit(3, vec![0], RunDelta::received_rejected(1), "m3"));
        assert_eq!(ledger.open_records(), 3);
        // The newer message is complete, the older is not: nothing acks.
        assert_eq!(ledger.request_done(2, 0, false), Some(Finished::Delivered));
        assert!(ledger.ackable().is_empty());
        assert_eq!(ledger.request_done(1, 0, true), Some(Finished::Rejected));
        assert!(ledger.ackable().is_empty());
        assert_eq!(ledger.request_done(1, 1, false), Some(Finished::Delivered));
        // All three complete, in order, each with its records' counts.
        let counts = |received, delivered, rejected| RunDelta {
            received,
            delivered,
            rejected,
            ..RunDelta::default()
        };
        let complete = |seq, counted, handle| Complete {
            seq,
            counted,
            handle,
        };
        assert_eq!(
            ledger.ackable(),
            vec![
                complete(1, counts(2, 1, 1), "m1"),
                complete(2, counts(1, 1, 0), "m2"),
                complete(3, counts(1, 0, 1), "m3"),
            ]
        );
        assert_eq!(ledger.held(), 0);
        assert_eq!(ledger.open_records(), 0);
    }

    #[test]
    fn a_record_of_several_requests_ends_with_its_last() {
        let mut ledger = Ledger::default();
        ledger.admit(5, vec![3], RunDelta::default(), ());
        assert_eq!(ledger.request_done(5, 0, false), None);
        assert_eq!(ledger.request_done(5, 0, true), None);
        assert_eq!(ledger.request_done(5, 0, false), Some(Finished::Rejected));
        // A verdict too many changes nothing.
        assert_eq!(ledger.request_done(5, 0, false), None);
        assert_eq!(ledger.request_done(9, 0, false), None);
    }

    #[test]
    fn redeliveries_are_ignored() {
        let mut ledger = Ledger::default();
        let none = RunDelta::default;
        assert!(ledger.admit(4, vec![1], none(), ()));
        assert!(!ledger.admit(4, vec![1], none(), ()));
        assert!(!ledger.admit(2, vec![1], none(), ()));
        assert_eq!(ledger.open_records(), 1);
    }

    #[test]
    fn progress_lists_what_is_done_beyond_the_prefix() {
        let mut ledger = Ledger::default();
        let skipped = RunDelta {
            received: 1,
            skipped: 1,
            ..RunDelta::default()
        };
        ledger.admit(1, vec![1, 1], RunDelta::default(), ());
        ledger.admit(2, vec![1, 0], skipped.clone(), ());
        ledger.request_done(1, 1, false);
        ledger.request_done(2, 0, false);
        let progress = ledger.progress();
        assert!(progress.is_done(1, 1) && !progress.is_done(1, 0));
        assert!(progress.is_done(2, 0) && progress.is_done(2, 1));
        // What the done records counted goes with them.
        let delivered = RunDelta {
            received: 1,
            delivered: 1,
            ..RunDelta::default()
        };
        assert_eq!(progress.counted(1), delivered);
        assert_eq!(
            progress.counted(2),
            RunDelta {
                received: 2,
                delivered: 1,
                skipped: 1,
                ..RunDelta::default()
            }
        );
        let text = serde_json::to_string(&progress).unwrap();
        assert_eq!(serde_json::from_str::<Progress>(&text).unwrap(), progress);
    }
}
