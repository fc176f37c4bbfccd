//! The run's alerts: a stall while updates wait, the end of a run with
//! failures, and an account that needs a new login.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::Value;

use crate::alerts::{Alert, AlertKind};
use crate::journal::RunId;
use crate::limiter::now_epoch_ms;
use crate::queue::Queue;

use super::{DeliveryOptions, Summary};

pub(super) struct Reporter<'a, Q> {
    pub queue: &'a Q,
    pub run: RunId,
    pub options: &'a DeliveryOptions,
}

impl<Q: Queue> Reporter<'_, Q> {
    /// Raises a `stalled` alert when updates are queued but none reached a
    /// verdict for the configured time; again only after progress resumed.
    pub async fn watch_stalls(&self, last_verdict_ms: &AtomicU64) {
        let Some(threshold) = self.options.alerts.stall_after() else {
            return std::future::pending().await;
        };
        let threshold_ms = u64::try_from(threshold.as_millis()).unwrap_or(u64::MAX);
        let mut alerted_at: Option<u64> = None;
        loop {
            tokio::time::sleep(Duration::from_millis(250).min(threshold)).await;
            let last = last_verdict_ms.load(Ordering::Relaxed);
            if alerted_at.is_some_and(|at| last > at) {
                alerted_at = None;
            }
            let stalled_for = now_epoch_ms().saturating_sub(last);
            if alerted_at.is_none()
                && stalled_for >= threshold_ms
                && self.queue.has_pending().await.unwrap_or(false)
            {
                alerted_at = Some(now_epoch_ms());
                let message = format!(
                    "delivery has been stalled for {:.0} s with updates queued (rate limit, API errors or credentials)",
                    stalled_for as f64 / 1000.0
                );
                self.alert(AlertKind::Stalled, message).await;
            }
        }
    }

    /// The alerts a finished run calls for.
    pub async fn end_of_run(&self, summary: &Summary) {
        let run = self.run;
        if summary.login_required {
            let why = summary.fatal.clone().unwrap_or_default();
            self.alert(
                AlertKind::LoginRequired,
                format!("the account needs a new login (`outreach-host login`): {why}"),
            )
            .await;
        }
        if summary.has_failures() {
            let message = match &summary.fatal {
                Some(why) => format!(
                    "run {run} stopped: {why}; {} records stay queued for the next run",
                    summary.pending
                ),
                None => format!(
                    "run {run} ended with {} of {} records rejected (see `outreach-host dead-letters list --run {run}`)",
                    summary.rejected, summary.received
                ),
            };
            self.alert(AlertKind::RunFailed, message).await;
        }
    }

    async fn alert(&self, event: AlertKind, message: String) {
        let run = self.run;
        let summary = self
            .queue
            .run_record(run)
            .await
            .ok()
            .and_then(|r| serde_json::to_value(r).ok())
            .unwrap_or(Value::Null);
        self.options
            .alerts
            .fire(&Alert {
                event,
                message,
                run,
                destination: self.options.destination.clone(),
                at_ms: now_epoch_ms(),
                summary,
            })
            .await;
    }
}
