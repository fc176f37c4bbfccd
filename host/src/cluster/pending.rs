//! The updates a partition owner holds for one destination, in memory, in
//! the order their records arrived: per key one at a time, later updates
//! merged into a queued one through the destination's merge (never into
//! one on the wire), as the journal does on one machine. What is held here
//! is also still in the intake stream, unacknowledged: losing it loses
//! nothing (see [`super::ledger`]).

use std::collections::{HashMap, VecDeque};

use destination_types::Request;

use crate::queue::Merger;
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
    merge: Option<Merger>,
    updates: usize,
}

impl Pending {
    /// `merge`: the destination's (`None`: updates are sent one by one).
    pub fn new(merge: Option<Merger>) -> Self {
        Self {
            keys: HashMap::new(),
            ready: VecDeque::new(),
            next_id: 1,
            merge,
            updates: 0,
        }
    }

    /// Updates held.
    pub fn len(&self) -> usize {
        self.updates
    }

    pub fn is_empty(&self) -> bool {
        self.updates == 0
    }

    /// Queues `request` for `record`, merged into the key's last queued
    /// update when the destination says they combine.
    pub fn push(&mut self, request: Request, record: RecordRef) {
        let key = request.key.clone();
        let queue = self.keys.entry(key.clone()).or_default();
        let was_idle = queue.updates.is_empty() && !queue.taken;
        let last_mergeable = queue.updates.len() > 1 || !queue.on_wire;
        if let (Some(last), Some(merge), true) =
            (queue.updates.back_mut(), &self.merge, last_mergeable)
            && let Some(merged) = merge(&last.request, &request)
        {
            last.request = merged;
            last.records.push(record);
            return;
        }
        queue.updates.push_back(Update {
            id: self.next_id,
            request,
            records: vec![record],
        });
        self.next_id += 1;
        self.updates += 1;
        if was_idle {
            self.ready.push_back(key);
        }
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
    use std::sync::Arc;

    use super::*;

    use crate::test_support::patch as request;

    fn at(seq: u64) -> RecordRef {
        RecordRef { seq, index: 0 }
    }

    /// Merging concatenates bodies, so tests can see what merged.
    fn concatenating() -> Option<Merger> {
        Some(Arc::new(|older: &Request, newer: &Request| {
            Some(request(
                &older.key,
                &format!("{}+{}", older.body, newer.body),
            ))
        }))
    }

    #[test]
    fn a_key_goes_to_one_worker_at_a_time_in_order() {
        let mut pending = Pending::new(None);
        pending.push(request("a", "1"), at(1));
        pending.push(request("b", "1"), at(2));
        pending.push(request("a", "2"), at(3));
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
        let mut pending = Pending::new(concatenating());
        pending.push(request("a", "1"), at(1));
        pending.push(request("a", "2"), at(2));
        let attempt = pending.take().unwrap();
        assert_eq!(attempt.request.body, "1+2");
        // On the wire: a newer update queues behind it...
        pending.push(request("a", "3"), at(3));
        // ...and, the attempt having failed, merges into the next one.
        pending.attempt_failed(&attempt.claim);
        pending.push(request("a", "4"), at(4));
        assert_eq!(pending.attempt(&attempt.claim).unwrap().body, "1+2");
        assert_eq!(pending.finish(&attempt.claim), vec![at(1), at(2)]);
        let next = pending.take().unwrap();
        assert_eq!(next.request.body, "3+4");
        assert_eq!(pending.finish(&next.claim), vec![at(3), at(4)]);
        assert!(pending.is_empty());
    }

    #[test]
    fn a_released_key_is_next_and_stale_claims_do_nothing() {
        let mut pending = Pending::new(None);
        pending.push(request("a", "1"), at(1));
        pending.push(request("b", "1"), at(2));
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
}
