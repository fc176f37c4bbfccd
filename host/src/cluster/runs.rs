//! Dataflow runs across the cluster: one run per destination per period
//! (an hour unless configured), its counts the sum of what every worker
//! added to the run's entry in the `outreach_runs` bucket, with
//! compare-and-set, so no addition is lost to a concurrent one.
//!
//! Records count in the period they were received, when their intake
//! message is complete and before it is acknowledged; the run remembers,
//! per partition, the last message it counted. A message delivered again
//! (its owner died after counting it, before acknowledging it) is not
//! counted again, however often that happens: the books stay exact under
//! any kill. Requests, 429s, retries and refreshes are what was sent and
//! count every few seconds in the period they happened.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use async_nats::jetstream::kv;
use futures::TryStreamExt;
use serde::{Deserialize, Serialize};

use super::Context;
use super::layout;
use crate::journal::RunStats;

/// What a worker adds to a run.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunDelta {
    pub received: u64,
    pub delivered: u64,
    pub rejected: u64,
    pub skipped: u64,
    pub requests_sent: u64,
    /// Of the requests sent, the lookups and creates (absent from runs
    /// stored by workers before they were counted).
    #[serde(default)]
    pub lookups_sent: u64,
    #[serde(default)]
    pub creates_sent: u64,
    pub rate_limited: u64,
    pub retries: u64,
    pub credential_refreshes: u64,
}

impl RunDelta {
    pub fn received_rejected(records: u64) -> Self {
        Self {
            received: records,
            rejected: records,
            ..Self::default()
        }
    }

    /// The records' outcomes, as a journal's run counts them.
    pub fn outcomes(&self) -> crate::journal::Counts {
        crate::journal::Counts {
            received: self.received,
            delivered: self.delivered,
            rejected: self.rejected,
            skipped: self.skipped,
        }
    }

    fn add(&mut self, other: &Self) {
        self.received += other.received;
        self.delivered += other.delivered;
        self.rejected += other.rejected;
        self.skipped += other.skipped;
        self.requests_sent += other.requests_sent;
        self.lookups_sent += other.lookups_sent;
        self.creates_sent += other.creates_sent;
        self.rate_limited += other.rate_limited;
        self.retries += other.retries;
        self.credential_refreshes += other.credential_refreshes;
    }

    fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// A run as the bucket holds it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterRun {
    pub destination: String,
    pub period_start_ms: u64,
    #[serde(flatten)]
    pub counts: RunDelta,
    pub updated_ms: u64,
    /// Per partition, the last intake message whose records this run
    /// counted.
    #[serde(default)]
    pub counted_through: BTreeMap<u16, u64>,
}

/// The period `at_ms` falls in.
pub fn period_of(at_ms: u64, run_length: Duration) -> u64 {
    let length = u64::try_from(run_length.as_millis())
        .unwrap_or(u64::MAX)
        .max(1);
    at_ms - at_ms % length
}

/// A complete intake message's counts, ready to be added.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MessageCounts {
    pub destination: String,
    pub received_ms: u64,
    pub seq: u64,
    pub counts: RunDelta,
}

/// Adds complete messages of `partition`, oldest first, to the runs of
/// the periods they were received in: those a run counted already are
/// left out. On an error, calling again with the same messages is safe.
pub async fn count_complete(
    bucket: &kv::Store,
    partition: u16,
    run_length: Duration,
    messages: &[MessageCounts],
    now: u64,
) -> Result<(), String> {
    let mut by_run: BTreeMap<(&str, u64), Vec<&MessageCounts>> = BTreeMap::new();
    for message in messages {
        let period = period_of(message.received_ms, run_length);
        by_run
            .entry((&message.destination, period))
            .or_default()
            .push(message);
    }
    for ((destination, period), messages) in by_run {
        update(bucket, destination, period, now, |run| {
            run.count(partition, &messages);
        })
        .await?;
    }
    Ok(())
}

impl ClusterRun {
    /// Adds the messages of `partition` (oldest first) it has not counted.
    fn count(&mut self, partition: u16, messages: &[&MessageCounts]) {
        let through = self.counted_through.entry(partition).or_default();
        for message in messages {
            if message.seq > *through {
                self.counts.add(&message.counts);
                *through = message.seq;
            }
        }
    }
}

/// Request counts not yet added to the cluster's runs, per destination;
/// and the request counters as last added.
#[derive(Default)]
pub struct Unflushed {
    deltas: Mutex<BTreeMap<String, RunDelta>>,
    seen_requests: Mutex<BTreeMap<String, RunDelta>>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

impl Unflushed {
    fn add(&self, destination: &str, delta: &RunDelta) {
        lock(&self.deltas)
            .entry(destination.to_owned())
            .or_default()
            .add(delta);
    }

    /// Adds what the workers counted since last time.
    pub(crate) fn add_requests(&self, destination: &str, requests: &RunStats) {
        let now = RunDelta {
            requests_sent: requests.requests_sent,
            lookups_sent: requests.lookups_sent,
            creates_sent: requests.creates_sent,
            rate_limited: requests.rate_limited,
            retries: requests.retries,
            credential_refreshes: requests.credential_refreshes,
            ..RunDelta::default()
        };
        let mut seen = lock(&self.seen_requests);
        let before = seen.entry(destination.to_owned()).or_default();
        let delta = RunDelta {
            requests_sent: now.requests_sent - before.requests_sent,
            lookups_sent: now.lookups_sent - before.lookups_sent,
            creates_sent: now.creates_sent - before.creates_sent,
            rate_limited: now.rate_limited - before.rate_limited,
            retries: now.retries - before.retries,
            credential_refreshes: now.credential_refreshes - before.credential_refreshes,
            ..RunDelta::default()
        };
        *before = now;
        drop(seen);
        self.add(destination, &delta);
    }

    /// Adds the counts to the current period's runs; what cannot be
    /// written now is kept for the next time.
    pub async fn flush(&self, ctx: &Context) {
        let deltas = std::mem::take(&mut *lock(&self.deltas));
        let now = ctx.clock.now_ms();
        let period = period_of(now, ctx.run_length);
        for (destination, delta) in deltas {
            if delta.is_empty() {
                continue;
            }
            let added = update(&ctx.buckets.runs, &destination, period, now, |run| {
                run.counts.add(&delta);
            });
            if let Err(e) = added.await {
                tracing::warn!(%destination, "run counts not written yet: {e}");
                self.add(&destination, &delta);
            }
        }
    }
}

/// Writers of one run in this process take turns, so that a run's entry
/// is never written by two of them at once (an owner's acknowledgements
/// and its flushes write the same entries). Compare-and-set alone does not
/// stop that: a replicated bucket on a nats-server before 2.10 lets two
/// writes made against the same revision both succeed when they arrive
/// together, and the first one's counts are lost (measured: 417 of 600
/// additions kept by four concurrent writers on a 2.9.10 cluster).
/// Striped by the run's key: a fixed number of locks, whatever the runs.
static TURNS: [tokio::sync::Mutex<()>; 64] = [const { tokio::sync::Mutex::const_new(()) }; 64];

fn turn_of(key: &str) -> &'static tokio::sync::Mutex<()> {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::hash::DefaultHasher::new();
    key.hash(&mut hasher);
    &TURNS[(hasher.finish() % TURNS.len() as u64) as usize]
}

/// Changes a run's entry with compare-and-set, one writer of this process
/// at a time.
async fn update(
    bucket: &kv::Store,
    destination: &str,
    period: u64,
    now: u64,
    change: impl Fn(&mut ClusterRun),
) -> Result<(), String> {
    let key = layout::run_key(destination, period);
    let _turn = turn_of(&key).lock().await;
    for _ in 0..20 {
        let entry = bucket.entry(&key).await.map_err(|e| e.to_string())?;
        let (mut run, revision) = match entry {
            Some(entry) if entry.operation == kv::Operation::Put => (
                serde_json::from_slice::<ClusterRun>(&entry.value).unwrap_or_default(),
                Some(entry.revision),
            ),
            _ => (ClusterRun::default(), None),
        };
        run.destination = destination.to_owned();
        run.period_start_ms = period;
        change(&mut run);
        run.updated_ms = now;
        let value = serde_json::to_vec(&run).map_err(|e| e.to_string())?;
        let written = match revision {
            Some(revision) => bucket.update(&key, value.into(), revision).await.is_ok(),
            None => bucket.create(&key, value.into()).await.is_ok(),
        };
        if written {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Err("the run's entry kept changing".into())
}

/// Every run the cluster knows, newest first.
pub async fn list(bucket: &kv::Store) -> Result<Vec<ClusterRun>, String> {
    let keys: Vec<String> = bucket
        .keys()
        .await
        .map_err(|e| e.to_string())?
        .try_collect()
        .await
        .map_err(|e| e.to_string())?;
    let mut runs = Vec::with_capacity(keys.len());
    for key in keys {
        if let Some(bytes) = bucket.get(&key).await.map_err(|e| e.to_string())?
            && let Ok(run) = serde_json::from_slice::<ClusterRun>(&bytes)
        {
            runs.push(run);
        }
    }
    runs.sort_by(|a, b| {
        (b.period_start_ms, &a.destination).cmp(&(a.period_start_ms, &b.destination))
    });
    Ok(runs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(seq: u64, received: u64, rejected: u64) -> MessageCounts {
        MessageCounts {
            destination: "d".into(),
            received_ms: 0,
            seq,
            counts: RunDelta {
                received,
                delivered: received - rejected,
                rejected,
                ..RunDelta::default()
            },
        }
    }

    #[test]
    fn a_message_delivered_again_after_it_was_counted_is_not_counted_again() {
        let (m1, m2, m3) = (message(10, 3, 1), message(14, 2, 0), message(20, 1, 1));
        let mut run = ClusterRun::default();
        run.count(3, &[&m1, &m2]);
        // The owner died before acknowledging: the next owner counts the
        // same messages again, and a newer one.
        run.count(3, &[&m1, &m2, &m3]);
        assert_eq!(
            run.counts,
            RunDelta {
                received: 6,
                delivered: 4,
                rejected: 2,
                ..RunDelta::default()
            }
        );
        // Another partition's messages count on their own.
        run.count(4, &[&m1]);
        assert_eq!(run.counts.received, 9);
        assert_eq!(run.counted_through, BTreeMap::from([(3, 20), (4, 10)]));
    }

    #[test]
    fn records_count_in_the_period_they_were_received() {
        let hour = Duration::from_secs(3_600);
        assert_eq!(period_of(7_199_999, hour), 3_600_000);
        assert_eq!(period_of(7_200_000, hour), 7_200_000);
        assert_eq!(period_of(5, Duration::ZERO), 5);
    }
}
