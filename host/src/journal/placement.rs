//! Where a batch's updates go, decided before the journal writes it: the
//! newest queued update of each key that is not on the wire (its head) is
//! read first ([`super::Journal::prepare`]), the destination combines each
//! key's chain — the head, then the batch's updates for the key — outside
//! any transaction, and the write ([`super::Journal::ingest_placed`])
//! checks that no head changed in between (else the caller reads again).

use std::collections::HashMap;

use destination_types::{PlanOutcome, Request};

use super::Incoming;
use crate::queue::{Combined, apart};

/// The newest queued update of a key, not on the wire: where a newer
/// update of the key merges.
#[derive(Clone, Debug, PartialEq)]
pub struct Head {
    pub seq: i64,
    /// Changes whenever the update's request does (a merge, a fold).
    pub revision: u64,
    pub request: Request,
}

impl Head {
    pub(super) fn mark(&self) -> HeadMark {
        HeadMark {
            seq: self.seq,
            revision: self.revision,
        }
    }
}

/// A head as the write expects to find it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct HeadMark {
    pub seq: i64,
    pub revision: u64,
}

/// A key's queued updates changed between reading and writing them (a
/// worker took the head, or another batch merged into it): read again.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the queued updates changed while the batch was being combined")]
pub struct Stale;

/// A replayed record not journaled: the key and time of the newer update
/// its key has.
pub(super) type Holding = Option<(String, i64)>;

/// What the journal read for a batch before it is combined.
#[derive(Debug)]
pub struct Prepared {
    pub(super) heads: HashMap<String, Head>,
    /// Per record of the batch.
    pub(super) held_back: Vec<Holding>,
    /// When the batch's records count as received (epoch ms).
    pub(super) now: i64,
}

/// The chains a batch asked the destination to combine, awaiting the
/// answer.
pub struct Chains {
    keys: Vec<String>,
    lengths: Vec<usize>,
    prepared: Prepared,
}

/// Where each of a batch's requests goes.
#[derive(Debug)]
pub struct Placement {
    /// The head each key had when the batch was combined.
    pub(super) heads: Vec<(String, Option<HeadMark>)>,
    pub(super) held_back: Vec<Holding>,
    pub(super) now: i64,
    pub(super) slots: Vec<Slot>,
    /// Per record, per request of its plan: the slot it went into.
    pub(super) parts: Vec<Vec<usize>>,
    /// Requests merged into another one.
    pub(super) coalesced: u64,
}

/// An update to write: into a queued one (its head), or a new one.
#[derive(Debug)]
pub(super) struct Slot {
    pub into: Option<i64>,
    pub request: Request,
}

/// The requests of `incoming` to journal, unless it is held back.
fn requests<'a>(incoming: &'a Incoming, holding: &Holding) -> &'a [Request] {
    match (&incoming.outcome, holding) {
        (PlanOutcome::Send(requests), None) => requests,
        _ => &[],
    }
}

impl Prepared {
    /// Per key (in order of first appearance): its head's request, then
    /// the batch's requests for it in order.
    pub fn chains(self, batch: &[Incoming]) -> (Chains, Vec<Vec<Request>>) {
        let mut index: HashMap<&str, usize> = HashMap::new();
        let mut keys: Vec<String> = Vec::new();
        let mut chains: Vec<Vec<Request>> = Vec::new();
        for (incoming, holding) in batch.iter().zip(&self.held_back) {
            for request in requests(incoming, holding) {
                let at = *index.entry(request.key.as_str()).or_insert_with(|| {
                    keys.push(request.key.clone());
                    let head = self.heads.get(&request.key).map(|h| h.request.clone());
                    chains.push(head.into_iter().collect());
                    chains.len() - 1
                });
                chains[at].push(request.clone());
            }
        }
        let lengths = chains.iter().map(Vec::len).collect();
        let asked = Chains {
            keys,
            lengths,
            prepared: self,
        };
        (asked, chains)
    }

    /// A placement with no updates combined (a destination that never
    /// merges needs no call).
    pub fn uncombined(self, batch: &[Incoming]) -> Placement {
        let (asked, chains) = self.chains(batch);
        asked.place(chains.into_iter().map(apart).collect(), batch)
    }
}

impl Chains {
    /// Where each request goes, once `combined` (one entry per chain, as
    /// the destination folded it) is known.
    pub fn place(self, combined: Vec<Vec<Combined>>, batch: &[Incoming]) -> Placement {
        let Chains {
            keys,
            lengths,
            prepared,
        } = self;
        let mut combined = combined.into_iter();
        let mut slots = Vec::new();
        let mut coalesced = 0u64;
        // Per key: the slot of each of its chain's entries.
        let mut entry_slots: HashMap<&str, (Vec<usize>, usize)> = HashMap::new();
        let mut heads = Vec::with_capacity(keys.len());
        for (key, length) in keys.iter().zip(lengths) {
            let kept = combined.next().unwrap_or_default();
            // A combination that does not account for every entry once is
            // not used: nothing may be lost to it.
            if kept.iter().any(|c| c.inputs == 0)
                || kept.iter().map(|c| c.inputs).sum::<usize>() != length
            {
                tracing::error!(
                    %key,
                    "combining {length} updates did not account for each once: sent uncombined"
                );
                return prepared.uncombined(batch);
            }
            let head = prepared.heads.get(key);
            heads.push((key.clone(), head.map(Head::mark)));
            let mut of_entry = Vec::new();
            for (n, combined) in kept.into_iter().enumerate() {
                let into = head.filter(|_| n == 0).map(|h| h.seq);
                coalesced += (combined.inputs - 1) as u64;
                of_entry.extend(std::iter::repeat_n(slots.len(), combined.inputs));
                slots.push(Slot {
                    into,
                    request: combined.request,
                });
            }
            // The head is the chain's first entry, not one of the batch's.
            let first = usize::from(head.is_some());
            entry_slots.insert(key.as_str(), (of_entry, first));
        }
        let parts = batch
            .iter()
            .zip(&prepared.held_back)
            .map(|(incoming, holding)| {
                requests(incoming, holding)
                    .iter()
                    .filter_map(|request| {
                        let (of_entry, next) = entry_slots.get_mut(request.key.as_str())?;
                        let slot = of_entry.get(*next).copied();
                        *next += 1;
                        slot
                    })
                    .collect()
            })
            .collect();
        Placement {
            heads,
            held_back: prepared.held_back,
            now: prepared.now,
            slots,
            parts,
            coalesced,
        }
    }
}
