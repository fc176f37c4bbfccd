//! What the status page shows of the cluster: who holds a destination's
//! partition and what waits in it, the hour's counts every worker added,
//! the budget last reported, the runs and the dead letters.

use async_nats::jetstream::kv;
use futures::TryStreamExt;

use super::layout;
use super::letters::{self, Stored};
use super::runs::{self, ClusterRun};
use super::worker::Worker;

/// A destination as the cluster sees it now.
#[derive(Clone, Debug, Default)]
pub struct DestinationView {
    pub partition: u16,
    /// The worker holding the partition's lease.
    pub held_by: Option<String>,
    /// Intake messages of the partition not acknowledged yet.
    pub waiting_messages: Option<u64>,
    /// This hour's run so far.
    pub hour: Option<ClusterRun>,
    /// Requests left in the window and when it resets (epoch ms), as the
    /// account's owner last wrote it.
    pub budget: Option<(u32, u64)>,
}

impl Worker {
    /// The cluster's view of `destination` (on `account`).
    pub async fn view(&self, destination: &str, account: &str) -> DestinationView {
        let ctx = self.context();
        let partition = layout::partition_of(account, ctx.settings.shape.partitions);
        let held_by = match ctx.buckets.leases.get(layout::lease_key(partition)).await {
            Ok(Some(bytes)) => serde_json::from_slice::<serde_json::Value>(&bytes)
                .ok()
                .and_then(|v| v["worker"].as_str().map(str::to_owned)),
            _ => None,
        };
        let waiting_messages = match ctx.js.get_stream(layout::INTAKE_STREAM).await {
            Ok(stream) => {
                let mut consumers = stream.consumers();
                let mut waiting = None;
                while let Ok(Some(info)) = consumers.try_next().await {
                    if layout::consumer_partition(&info.name) == Some(partition) {
                        waiting = Some(info.num_pending + info.num_ack_pending as u64);
                    }
                }
                waiting
            }
            Err(_) => None,
        };
        let now = ctx.clock.now_ms();
        let length = u64::try_from(ctx.run_length.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        let hour = read_json(
            &ctx.buckets.runs,
            &layout::run_key(destination, now - now % length),
        )
        .await;
        let budget = read_json::<super::partition::HandedBudget>(
            &ctx.buckets.budgets,
            &layout::account_key(account),
        )
        .await
        .filter(|b| b.reset_ms > now)
        .map(|b| (b.remaining, b.reset_ms));
        DestinationView {
            partition,
            held_by,
            waiting_messages,
            hour,
            budget,
        }
    }

    /// `destination`'s runs, newest first.
    pub async fn runs_of(
        &self,
        destination: &str,
        limit: usize,
    ) -> Result<Vec<ClusterRun>, String> {
        let mut all = runs::list(&self.context().buckets.runs).await?;
        all.retain(|run| run.destination == destination);
        all.truncate(limit);
        Ok(all)
    }

    /// One run of `destination`: the period starting at `period_ms`.
    pub async fn run_of(&self, destination: &str, period_ms: u64) -> Option<ClusterRun> {
        read_json(
            &self.context().buckets.runs,
            &layout::run_key(destination, period_ms),
        )
        .await
    }

    /// `destination`'s newest dead letters, oldest first.
    /// The newest `limit` letters of `destination` older than `before`.
    pub async fn letters_of(
        &self,
        destination: &str,
        limit: usize,
        before: Option<u64>,
    ) -> Result<Vec<Stored>, String> {
        letters::list(&self.context().js, Some(destination), limit, before).await
    }

    /// Letter `id` of `destination`.
    pub async fn letter_of(&self, destination: &str, id: u64) -> Result<Option<Stored>, String> {
        letters::get(&self.context().js, destination, id).await
    }

    /// Publishes letter `id`'s record to the intake stream again.
    pub async fn replay(&self, id: u64) -> Result<u64, String> {
        letters::replay(&self.context().js, &[id], self.context().clock.now_ms()).await
    }
}

/// An entry as the page shows it: `None` when there is none, or it
/// cannot be read now (said in the log, so a page showing nothing can be
/// told from a bucket that holds nothing).
async fn read_json<T: serde::de::DeserializeOwned>(bucket: &kv::Store, key: &str) -> Option<T> {
    let bytes = match bucket.get(key).await {
        Ok(bytes) => bytes?,
        Err(e) => {
            tracing::warn!(%key, "not read for the status page: {e}");
            return None;
        }
    };
    match serde_json::from_slice(&bytes) {
        Ok(value) => Some(value),
        Err(e) => {
            tracing::warn!(%key, "unreadable for the status page: {e}");
            None
        }
    }
}
