//! Dataflow runs across the cluster: one run per destination per period
//! (an hour unless configured), its counts the sum of what every worker
//! added to the run's entry in the `outreach_runs` bucket. Workers add
//! their counts every few seconds with compare-and-set, so no addition is
//! lost to a concurrent one.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_nats::jetstream::kv;
use futures::TryStreamExt;
use serde::{Deserialize, Serialize};

use super::Context;
use super::layout;
use crate::delivery::dispatch::Counters;

/// What a worker adds to a run.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunDelta {
    pub received: u64,
    pub delivered: u64,
    pub rejected: u64,
    pub skipped: u64,
    pub requests_sent: u64,
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

    fn add(&mut self, other: &Self) {
        self.received += other.received;
        self.delivered += other.delivered;
        self.rejected += other.rejected;
        self.skipped += other.skipped;
        self.requests_sent += other.requests_sent;
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
}

/// Counts not yet added to the cluster's runs, per destination; and the
/// request counters as last added.
#[derive(Default)]
pub struct Tally {
    deltas: Mutex<BTreeMap<String, RunDelta>>,
    seen_requests: Mutex<BTreeMap<String, RunDelta>>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

impl Tally {
    pub fn add(&self, destination: &str, delta: &RunDelta) {
        lock(&self.deltas)
            .entry(destination.to_owned())
            .or_default()
            .add(delta);
    }

    /// Adds what the workers counted since last time.
    pub(crate) fn add_requests(&self, destination: &str, counters: &Counters) {
        let now = RunDelta {
            requests_sent: counters.requests_sent.load(Ordering::Relaxed),
            rate_limited: counters.rate_limited.load(Ordering::Relaxed),
            retries: counters.retries.load(Ordering::Relaxed),
            credential_refreshes: counters.refreshes.load(Ordering::Relaxed),
            ..RunDelta::default()
        };
        let mut seen = lock(&self.seen_requests);
        let before = seen.entry(destination.to_owned()).or_default();
        let delta = RunDelta {
            requests_sent: now.requests_sent - before.requests_sent,
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
        let length = u64::try_from(ctx.run_length.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        let period = now - now % length;
        for (destination, delta) in deltas {
            if delta.is_empty() {
                continue;
            }
            if let Err(e) = add(&ctx.buckets.runs, &destination, period, &delta, now).await {
                tracing::warn!(%destination, "run counts not written yet: {e}");
                self.add(&destination, &delta);
            }
        }
    }
}

/// Adds `delta` to a run's entry with compare-and-set.
async fn add(
    bucket: &kv::Store,
    destination: &str,
    period: u64,
    delta: &RunDelta,
    now: u64,
) -> Result<(), String> {
    let key = layout::run_key(destination, period);
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
        run.counts.add(delta);
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
