//! A destination served by the cluster, as pages and `/metrics` read it:
//! who holds its partition and what waits in it, the hour's counts every
//! worker added, the budget the account's owner last reported, the runs
//! and the dead letters — all from the cluster's shared state, so every
//! worker's page shows the same.

use std::sync::Arc;

use async_nats::jetstream::kv;
use futures::future::BoxFuture;
use futures::{FutureExt, TryStreamExt};

use super::layout;
use super::letters::{self, Stored};
use super::runs::{self, ClusterRun};
use super::worker::Worker;
use crate::journal::PREVIEW_CHARS;
use crate::read_model::{
    Budget, Hour, LetterQuery, LetterView, Placement, ReadModel, ReplayError, ReplayOutcome,
    RunDetail, RunSummary, Shown, Snapshot, Waiting, cut,
};

/// One destination of the cluster, read through this worker.
pub struct ClusterReadModel {
    pub worker: Arc<Worker>,
    pub destination: String,
    pub account: String,
    /// Its records are taken (it is enabled in the destinations file).
    pub enabled: bool,
}

impl ClusterReadModel {
    async fn snapshot_now(&self) -> Snapshot {
        if !self.enabled {
            return Snapshot::default();
        }
        let ctx = self.worker.context();
        let partition = layout::partition_of(&self.account, ctx.settings.shape.partitions);
        let worker = match ctx.buckets.leases.get(layout::lease_key(partition)).await {
            Ok(Some(bytes)) => serde_json::from_slice::<serde_json::Value>(&bytes)
                .ok()
                .and_then(|v| v["worker"].as_str().map(str::to_owned)),
            _ => None,
        };
        let waiting = match ctx.js.get_stream(layout::INTAKE_STREAM).await {
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
        let hour = read_json::<ClusterRun>(
            &ctx.buckets.runs,
            &layout::run_key(&self.destination, now - now % length),
        )
        .await;
        let budget = read_json::<super::partition::HandedBudget>(
            &ctx.buckets.budgets,
            &layout::account_key(&self.account),
        )
        .await
        .filter(|b| b.reset_ms > now);
        Snapshot {
            accepting: true,
            paused: None,
            waiting: Waiting::Messages(waiting.unwrap_or(0)),
            hour: match hour {
                Some(run) => Hour::CountedByAll(run.counts.outcomes()),
                None => Hour::Empty,
            },
            budget: match budget {
                Some(b) => Budget::LeftAtOwner(u64::from(b.remaining)),
                None => Budget::NotReported,
            },
            placement: Some(Placement { partition, worker }),
            totals: None,
        }
    }
}

/// A cluster's run: its id is the period's start (epoch ms).
fn summary(run: &ClusterRun) -> RunSummary {
    RunSummary {
        id: i64::try_from(run.period_start_ms).unwrap_or(i64::MAX),
        started_ms: run.period_start_ms,
        status: "cluster (every worker)".into(),
        counts: run.counts.outcomes(),
        pending: 0,
        requests: crate::read_model::Requests {
            sent: run.counts.requests_sent,
            rate_limited: run.counts.rate_limited,
        },
    }
}

/// A cluster's letter: its id is its sequence in the letters stream, its
/// line the record's place in its intake message; a cluster has no
/// numbered runs.
fn letter_view(stored: Stored, shown: impl Fn(String) -> Shown) -> LetterView {
    let l = stored.letter;
    LetterView {
        id: i64::try_from(stored.id).unwrap_or(i64::MAX),
        run: 0,
        line: l.batch_line.unwrap_or(u64::from(l.index) + 1),
        status: l.response.as_ref().map(|r| r.status),
        response: l.response.map(|r| shown(r.body)),
        record: shown(l.record),
        code: l.code,
        reason: l.reason,
    }
}

impl ReadModel for ClusterReadModel {
    fn snapshot(&self) -> BoxFuture<'_, Snapshot> {
        self.snapshot_now().boxed()
    }

    fn runs(&self, newest: usize) -> BoxFuture<'_, Result<Vec<RunSummary>, String>> {
        async move {
            let mut all = runs::list(&self.worker.context().buckets.runs).await?;
            all.retain(|run| run.destination == self.destination);
            all.truncate(newest);
            Ok(all.iter().map(summary).collect())
        }
        .boxed()
    }

    fn run(&self, id: i64) -> BoxFuture<'_, Result<Option<RunDetail>, String>> {
        async move {
            let Ok(period_ms) = u64::try_from(id) else {
                return Ok(None);
            };
            let ctx = self.worker.context();
            let run = read_json::<ClusterRun>(
                &ctx.buckets.runs,
                &layout::run_key(&self.destination, period_ms),
            )
            .await;
            Ok(run.map(|run| RunDetail {
                summary: RunSummary {
                    status: format!("updated {}", crate::format_utc(run.updated_ms / 1000, ' ')),
                    ..summary(&run)
                },
                kind: "hourly, every worker's counts".into(),
                audiences: Default::default(),
                failures: Default::default(),
            }))
        }
        .boxed()
    }

    fn letters(&self, query: LetterQuery) -> BoxFuture<'_, Result<Vec<LetterView>, String>> {
        async move {
            let before = query.before.and_then(|b| u64::try_from(b).ok());
            let js = &self.worker.context().js;
            let letters = letters::list(js, Some(&self.destination), query.newest, before).await?;
            Ok(letters
                .into_iter()
                .rev()
                .filter(|l| query.code.as_ref().is_none_or(|c| *c == l.letter.code))
                .map(|l| letter_view(l, |text| cut(text, PREVIEW_CHARS)))
                .collect())
        }
        .boxed()
    }

    fn letter(&self, id: i64) -> BoxFuture<'_, Result<Option<LetterView>, String>> {
        async move {
            let Ok(id) = u64::try_from(id) else {
                return Ok(None);
            };
            let found = letters::get(&self.worker.context().js, &self.destination, id).await?;
            Ok(found.map(|l| letter_view(l, Shown::Whole)))
        }
        .boxed()
    }

    fn replayable(&self) -> bool {
        self.enabled
    }

    /// What the account's owners published with its budget.
    fn budget_windows(&self) -> BoxFuture<'_, Vec<crate::limiter::WindowUse>> {
        async move {
            let ctx = self.worker.context();
            read_json::<super::partition::HandedBudget>(
                &ctx.buckets.budgets,
                &layout::account_key(&self.account),
            )
            .await
            .map(|handed| handed.windows)
            .unwrap_or_default()
        }
        .boxed()
    }

    /// Publishes the letter's record to the intake stream again.
    fn replay(&self, letter: i64) -> BoxFuture<'_, Result<ReplayOutcome, ReplayError>> {
        async move {
            if !self.enabled {
                return Err(ReplayError::Disabled);
            }
            let ctx = self.worker.context();
            let id = u64::try_from(letter).unwrap_or(0);
            let replayed = letters::replay(&ctx.js, &[id], ctx.clock.now_ms())
                .await
                .map_err(ReplayError::Failed)?;
            Ok(ReplayOutcome {
                replayed,
                run: None,
                held_back: Vec::new(),
            })
        }
        .boxed()
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
