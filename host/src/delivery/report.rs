//! The run's alerts: a stall while updates wait, the end of a run with
//! failures, and an account that needs a new login.

use std::time::Duration;

use serde_json::Value;

use crate::alerts::{Alert, AlertKind};
use crate::queue::Queue;
use crate::queue::RunId;

use super::{DeliveryOptions, Summary};

pub(super) struct Reporter<'a, Q> {
    pub queue: &'a Q,
    pub run: RunId,
    pub options: &'a DeliveryOptions,
}

impl<Q: Queue> Reporter<'_, Q> {
    /// Raises a `stalled` alert when updates are queued but none reached a
    /// verdict for the configured time; again only after progress resumed.
    pub async fn watch_stalls(&self, handle: &super::Handle) {
        let Some(threshold) = self.options.alerts.stall_after() else {
            return std::future::pending().await;
        };
        let clock = self.options.clock;
        let mut watch = StallWatch::new(threshold);
        loop {
            tokio::time::sleep(Duration::from_millis(250).min(threshold)).await;
            let now = clock.now_ms();
            let Some(stalled_for) = watch.due(now, handle.last_verdict_ms()) else {
                continue;
            };
            if self.queue.has_pending().await.unwrap_or(false) {
                watch.alerted(now);
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
                at_ms: self.options.clock.now_ms(),
                summary,
            })
            .await;
    }
}

/// When a stall calls for an alert: no verdict for the threshold, and no
/// alert for this stall yet (the next one needs a verdict in between).
#[derive(Debug)]
pub(crate) struct StallWatch {
    threshold_ms: u64,
    alerted_at_ms: Option<u64>,
}

impl StallWatch {
    pub(crate) fn new(threshold: Duration) -> Self {
        Self {
            threshold_ms: u64::try_from(threshold.as_millis()).unwrap_or(u64::MAX),
            alerted_at_ms: None,
        }
    }

    /// How long delivery has stalled at `now_ms`, if that calls for an
    /// alert (provided updates are queued).
    pub(crate) fn due(&mut self, now_ms: u64, last_verdict_ms: u64) -> Option<u64> {
        if self.alerted_at_ms.is_some_and(|at| last_verdict_ms > at) {
            self.alerted_at_ms = None;
        }
        let stalled_for = now_ms.saturating_sub(last_verdict_ms);
        (self.alerted_at_ms.is_none() && stalled_for >= self.threshold_ms).then_some(stalled_for)
    }

    pub(crate) fn alerted(&mut self, now_ms: u64) {
        self.alerted_at_ms = Some(now_ms);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_700_000_000_000;

    #[test]
    fn a_stall_is_alerted_once_at_the_threshold_and_again_after_progress() {
        let mut watch = StallWatch::new(Duration::from_secs(60));
        let last = T0;
        assert_eq!(watch.due(T0 + 59_999, last), None);
        assert_eq!(watch.due(T0 + 60_000, last), Some(60_000));
        watch.alerted(T0 + 60_000);
        // The same stall goes on: no second alert, however long.
        assert_eq!(watch.due(T0 + 600_000, last), None);
        // A verdict, then a new stall of a full threshold.
        let last = T0 + 700_000;
        assert_eq!(watch.due(T0 + 700_500, last), None);
        assert_eq!(watch.due(T0 + 760_000, last), Some(60_000));
    }

    #[test]
    fn an_empty_queue_at_the_threshold_leaves_the_alert_due() {
        let mut watch = StallWatch::new(Duration::from_secs(5));
        // Nothing queued (the caller did not alert): still due later on.
        assert_eq!(watch.due(T0 + 5_000, T0), Some(5_000));
        assert_eq!(watch.due(T0 + 9_000, T0), Some(9_000));
    }

    #[test]
    fn a_verdict_stamped_after_now_is_no_stall() {
        let mut watch = StallWatch::new(Duration::from_secs(5));
        assert_eq!(watch.due(T0, T0 + 1_000), None);
    }
}
