//! The updates a partition owner holds for one destination, in memory, in
//! the order their records arrived: per key one at a time, later updates
//! merged into a queued one through the destination's merge (never into
//! one on the wire), as the journal does on one machine. The merging
//! happens outside: the feed reads each key's head ([`Pending::heads`]),
//! has the component combine the chains without holding this, and places
//! the result ([`Pending::place`]) unless a head changed meanwhile. What is held here
//! is also still in the intake stream, unacknowledged: losing it loses
//! nothing (see [`super::ledger`]).

use std::collections::{HashMap, VecDeque};

use destination_types::Request;

use crate::queue::Combined;
use crate::queue::{Attempt, Claim};

/// A record of an intake message: stream sequence and index in the message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RecordRef {
    pub seq: u64,
    pub index: u32,
}

#[derive(Debug)]
struct Update {
    id: i64,
    /// Changes whenever a newer update merges into it.
    revision: u64,
    request: Request,
    /// The records this update carries (several once merged).
    records: Vec<RecordRef>,
}

#[derive(Debug, Default)]
struct KeyQueue {
    updates: VecDeque<Update>,
    /// A worker owns the key (its first update).
    taken: bool,
    /// The first update is on the wire: nothing merges into it.
    on_wire: bool,
}

/// One destination's held updates.
pub struct Pending {
    keys: HashMap<String, KeyQueue>,
    /// Keys with updates and no worker, oldest first (a key may appear
    /// more than once; stale entries are skipped).
    ready: VecDeque<String>,
    next_id: i64,
    last_revision: u64,
    updates: usize,
}

/// The newest update of a key that a newer one may merge into (not on the
/// wire), as read before combining.
#[derive(Clone, Debug, PartialEq)]
pub struct Head {
    id: i64,
    revision: u64,
    pub request: Request,
}

/// Why [`Pending::place`] placed nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NotPlaced {
    /// A key's head changed since it was read: read again.
    Stale,
    /// A combination does not account for each update once: place the
    /// updates apart instead.
    Unaccounted,
}

impl Pending {
    pub fn new() -> Self {
        Self::default()
    }
}

impl Default for Pending {
    fn default() -> Self {
        Self {
            keys: HashMap::new(),
            ready: VecDeque::new(),
            next_id: 1,
            last_revision: 0,
            updates: 0,
        }
    }
}

impl Pending {
    /// Updates held.
    pub fn len(&self) -> usize {
        self.updates
    }

    pub fn is_empty(&self) -> bool {
        self.updates == 0
    }

    /// The head of each of `keys`, if it has one.
    pub fn heads(&self, keys: &[String]) -> Vec<Option<Head>> {
        keys.iter()
            .map(|key| {
                let queue = self.keys.get(key)?;
                let mergeable = queue.updates.len() > 1 || !queue.on_wire;
                let last = queue.updates.back().filter(|_| mergeable)?;
                Some(Head {
                    id: last.id,
                    revision: last.revision,
                    request: last.request.clone(),
                })
            })
            .collect()
    }

    /// Places each key's chain as the destination combined it (`combined`,
    /// one entry per key: the head first when `heads` had one, then the
    /// new updates, whose records are `records`) — unless a head changed
    /// since [`Pending::heads`] read it.
    pub fn place(
        &mut self,
        keys: &[String],
        heads: &[Option<Head>],
        combined: Vec<Vec<Combined>>,
        records: Vec<Vec<RecordRef>>,
    ) -> Result<(), NotPlaced> {
        let accounted = combined.len() == keys.len()
            && records.len() == keys.len()
            && combined
                .iter()
                .zip(&records)
                .zip(heads)
                .all(|((kept, records), head)| {
                    kept.iter().all(|c| c.inputs > 0)
                        && kept.iter().map(|c| c.inputs).sum::<usize>()
                            == records.len() + usize::from(head.is_some())
                });
        if !accounted {
            return Err(NotPlaced::Unaccounted);
        }
        let marks = |heads: &[Option<Head>]| -> Vec<Option<(i64, u64)>> {
            heads
                .iter()
                .map(|h| h.as_ref().map(|h| (h.id, h.revision)))
                .collect()
        };
        if marks(&self.heads(keys)) != marks(heads) {
            return Err(NotPlaced::Stale);
        }
        for (((key, head), kept), records) in keys.iter().zip(heads).zip(combined).zip(records) {
            self.place_key(key, head.is_some(), kept, records);
        }
        Ok(())
    }

    fn place_key(
        &mut self,
        key: &str,
        has_head: bool,
        kept: Vec<Combined>,
        records: Vec<RecordRef>,
    ) {
        let (mut next_id, mut last_revision) = (self.next_id, self.last_revision);
        let queue = self.keys.entry(key.to_owned()).or_default();
        let was_idle = queue.updates.is_empty() && !queue.taken;
        let held_before = queue.updates.len();
        let mut records = records.into_iter();
        for (n, combined) in kept.into_iter().enumerate() {
            if n == 0
                && has_head
                && let Some(last) = queue.updates.back_mut()
            {
                last_revision += 1;
                last.revision = last_revision;
                last.request = combined.request;
                last.records
                    .extend(records.by_ref().take(combined.inputs - 1));
                continue;
            }
            queue.updates.push_back(Update {
                id: next_id,
                revision: 0,
                request: combined.request,
                records: records.by_ref().take(combined.inputs).collect(),
            });
            next_id += 1;
        }
        let added = queue.updates.len() - held_before;
        if was_idle && !queue.updates.is_empty() {
            self.ready.push_back(key.to_owned());
        }
        self.next_id = next_id;
        self.last_revision = last_revision;
        self.updates += added;
    }

    /// Queues `request` for `record`, merged by `merge` (`None`: never)
    /// into the key's head when they combine, in one step (the tests' way
    /// in; the feed combines through the component: `feed.rs`).
    #[cfg(test)]
    pub fn push(
        &mut self,
        request: Request,
        record: RecordRef,
        merge: Option<fn(&Request, &Request) -> Option<Request>>,
    ) {
        let keys = vec![request.key.clone()];
        let heads = self.heads(&keys);
        let chain: Vec<Request> = heads[0]
            .iter()
            .map(|h| h.request.clone())
            .chain(std::iter::once(request))
            .collect();
        let kept = match merge {
            Some(merge) => crate::queue::fold_chain(chain, merge),
            None => crate::queue::apart(chain),
        };
        let _ = self.place(&keys, &heads, vec![kept], vec![vec![record]]);
    }

    /// The oldest update of a key no worker owns; the key is now owned and
    /// the update on the wire.
    pub fn take(&mut self) -> Option<Attempt> {
        while let Some(key) = self.ready.pop_front() {
            let Some(queue) = self.keys.get_mut(&key) else {
                continue;
            };
            if queue.taken {
                continue;
            }
            let Some(first) = queue.updates.front() else {
                continue;
            };
            queue.taken = true;
            queue.on_wire = true;
            return Some(Attempt {
                claim: Claim { key, seq: first.id },
                request: first.request.clone(),
            });
        }
        None
    }

    fn owned(&mut self, claim: &Claim) -> Option<&mut KeyQueue> {
        self.keys
            .get_mut(&claim.key)
            .filter(|q| q.taken && q.updates.front().is_some_and(|u| u.id == claim.seq))
    }

    /// The attempt failed: updates may merge into it until it starts again.
    pub fn attempt_failed(&mut self, claim: &Claim) {
        if let Some(queue) = self.owned(claim) {
            queue.on_wire = false;
        }
    }

    /// Starts the claimed update again: what to send now.
    pub fn attempt(&mut self, claim: &Claim) -> Option<Request> {
        let queue = self.owned(claim)?;
        queue.on_wire = true;
        queue.updates.front().map(|u| u.request.clone())
    }

    /// The claimed update's delivery moved on to its next step: `next` is
    /// its request now (the records stay with it, the key stays taken).
    pub fn step(&mut self, claim: &Claim, next: Request) -> bool {
        self.last_revision += 1;
        let revision = self.last_revision;
        let Some(update) = self
            .owned(claim)
            .and_then(|queue| queue.updates.front_mut())
        else {
            return false;
        };
        update.request = next;
        update.revision = revision;
        true
    }

    /// The claimed update has its verdict: the records it carried.
    pub fn finish(&mut self, claim: &Claim) -> Vec<RecordRef> {
        let Some(queue) = self.owned(claim) else {
            return Vec::new();
        };
        let done = queue.updates.pop_front();
        queue.taken = false;
        queue.on_wire = false;
        let more = !queue.updates.is_empty();
        if more {
            self.ready.push_back(claim.key.clone());
        } else {
            self.keys.remove(&claim.key);
        }
        match done {
            Some(update) => {
                self.updates -= 1;
                update.records
            }
            None => Vec::new(),
        }
    }

    /// Lets the key go without a verdict: its update is next again.
    pub fn release(&mut self, claim: &Claim) {
        if let Some(queue) = self.owned(claim) {
            queue.taken = false;
            queue.on_wire = false;
            self.ready.push_front(claim.key.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::test_support::patch as request;

    fn at(seq: u64) -> RecordRef {
        RecordRef { seq, index: 0 }
    }

    /// Merging concatenates bodies, so tests can see what merged.
    fn concatenate(older: &Request, newer: &Request) -> Option<Request> {
        Some(request(
            &older.key,
            &format!("{}+{}", older.body, newer.body),
        ))
    }

    #[test]
    fn a_key_goes_to_one_worker_at_a_time_in_order() {
        let mut pending = Pending::new();
        pending.push(request("a", "1"), at(1), None);
        pending.push(request("b", "1"), at(2), None);
        pending.push(request("a", "2"), at(3), None);
        let first = pending.take().unwrap();
        assert_eq!(
            (first.claim.key.as_str(), first.request.body.as_str()),
            ("a", "1")
        );
        let second = pending.take().unwrap();
        assert_eq!(second.claim.key, "b");
        // a's second update waits for the first's verdict.
        assert!(pending.take().is_none());
        assert_eq!(pending.finish(&first.claim), vec![at(1)]);
        let third = pending.take().unwrap();
        assert_eq!(
            (third.claim.key.as_str(), third.request.body.as_str()),
            ("a", "2")
        );
        assert_eq!(pending.len(), 2);
    }

    #[test]
    fn updates_merge_into_a_queued_update_but_not_one_on_the_wire() {
        let mut pending = Pending::new();
        let merge = concatenate;
        pending.push(request("a", "1"), at(1), Some(merge));
        pending.push(request("a", "2"), at(2), Some(merge));
        let attempt = pending.take().unwrap();
        assert_eq!(attempt.request.body, "1+2");
        // On the wire: a newer update queues behind it...
        pending.push(request("a", "3"), at(3), Some(merge));
        // ...and, the attempt having failed, merges into the next one.
        pending.attempt_failed(&attempt.claim);
        pending.push(request("a", "4"), at(4), Some(merge));
        assert_eq!(pending.attempt(&attempt.claim).unwrap().body, "1+2");
        assert_eq!(pending.finish(&attempt.claim), vec![at(1), at(2)]);
        let next = pending.take().unwrap();
        assert_eq!(next.request.body, "3+4");
        assert_eq!(pending.finish(&next.claim), vec![at(3), at(4)]);
        assert!(pending.is_empty());
    }

    #[test]
    fn a_released_key_is_next_and_stale_claims_do_nothing() {
        let mut pending = Pending::new();
        pending.push(request("a", "1"), at(1), None);
        pending.push(request("b", "1"), at(2), None);
        let a = pending.take().unwrap();
        pending.release(&a.claim);
        let again = pending.take().unwrap();
        assert_eq!(again.claim, a.claim);
        let stale = Claim {
            key: "a".into(),
            seq: 99,
        };
        assert!(pending.finish(&stale).is_empty());
        assert!(pending.attempt(&stale).is_none());
        assert_eq!(pending.finish(&again.claim), vec![at(1)]);
    }

    #[test]
    fn a_head_taken_while_its_chain_was_combined_is_not_merged_into() {
        let mut pending = Pending::new();
        pending.push(request("a", "1"), at(1), None);
        let keys = vec!["a".to_owned()];
        let heads = pending.heads(&keys);
        assert_eq!(heads[0].as_ref().unwrap().request.body, "1");
        // A worker takes the head while the chain [1, 2] is combined.
        let attempt = pending.take().unwrap();
        let merged = vec![vec![Combined {
            request: request("a", "1+2"),
            inputs: 2,
        }]];
        assert_eq!(
            pending.place(&keys, &heads, merged, vec![vec![at(2)]]),
            Err(NotPlaced::Stale)
        );
        // Read again: no head to merge into; the update queues behind.
        let heads = pending.heads(&keys);
        assert!(heads[0].is_none());
        let alone = vec![vec![Combined {
            request: request("a", "2"),
            inputs: 1,
        }]];
        pending
            .place(&keys, &heads, alone, vec![vec![at(2)]])
            .unwrap();
        assert_eq!(attempt.request.body, "1");
        assert_eq!(pending.finish(&attempt.claim), vec![at(1)]);
        let next = pending.take().unwrap();
        assert_eq!(next.request.body, "2");
        assert_eq!(pending.finish(&next.claim), vec![at(2)]);
    }

    #[test]
    fn a_combination_that_loses_an_update_is_not_placed() {
        let mut pending = Pending::new();
        let keys = vec!["a".to_owned()];
        let heads = pending.heads(&keys);
        let short = vec![vec![Combined {
            request: request("a", "1"),
            inputs: 1,
        }]];
        assert_eq!(
            pending.place(&keys, &heads, short, vec![vec![at(1), at(2)]]),
            Err(NotPlaced::Unaccounted)
        );
        assert!(pending.is_empty());
    }
}
