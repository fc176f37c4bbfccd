//! What a stream does in the background: moving on to a new run when
//! the period changes, keeping the backlog figures fresh and watching for
//! stalls, and supervising the workers (pausing and starting them again).

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use super::{AcceptError, JournaledSettings, Shared, UPKEEP_EVERY, lock};
use crate::alerts::{Alert, AlertKind};
use crate::delivery::{Driver, StallWatch, Standing, Supervisor};
use crate::journal::RunStats;
use crate::queue::RunId;
use crate::queue::{Queue, StreamQueue};

/// When the period `now` falls in started (epoch ms).
pub(super) fn period_start(settings: &JournaledSettings) -> u64 {
    let length = u64::try_from(settings.run_length.as_millis())
        .unwrap_or(u64::MAX)
        .max(1);
    let now = settings.clock.now_ms();
    now - now % length
}

/// The current period's guard, after moving on to a new run if the
/// period changed (the old run gets the workers' figures so far).
pub(super) async fn next_period(
    shared: &Arc<Shared>,
) -> Result<tokio::sync::MutexGuard<'_, (u64, RunId)>, AcceptError> {
    let mut period = shared.period.lock().await;
    let start = period_start(&shared.settings);
    if start != period.0 {
        record_stats(shared).await;
        let closing = period.1;
        if let Ok(record) = shared.queue.run_record(closing).await
            && record.counts.rejected > 0
        {
            alert(
                shared,
                AlertKind::RunFailed,
                format!(
                    "run {closing} closed with {} of {} records rejected so far (see `outreach-host dead-letters list --run {closing}`)",
                    record.counts.rejected, record.counts.received
                ),
                closing,
            );
        }
        let (name, api_base) = (
            shared.settings.name.clone(),
            shared.api.base().as_str().to_owned(),
        );
        let run = shared
            .queue
            .stream_run(name, api_base, start)
            .await
            .map_err(|e| AcceptError::Journal(e.to_string()))?;
        *period = (start, run);
        shared.delivery.count_in(run);
    }
    Ok(period)
}

/// Fires `event` for `run` (with the run's counts so far) without holding
/// up the caller.
fn alert(shared: &Arc<Shared>, event: AlertKind, message: String, run: RunId) {
    if shared.settings.alerts.is_empty() {
        return;
    }
    let shared = shared.clone();
    tokio::spawn(async move {
        let summary = shared
            .queue
            .run_record(run)
            .await
            .ok()
            .and_then(|record| serde_json::to_value(record).ok())
            .unwrap_or_default();
        shared
            .settings
            .alerts
            .fire(&Alert {
                event,
                message,
                run,
                destination: shared.settings.name.clone(),
                at_ms: shared.settings.clock.now_ms(),
                summary,
            })
            .await;
    });
}

/// Adds what the workers counted since last time to the current run.
pub(super) async fn record_stats(shared: &Shared) {
    let now = shared.delivery.requests();
    let delta = {
        let mut recorded = lock(&shared.recorded);
        let delta = RunStats {
            requests_sent: now.requests_sent - recorded.requests_sent,
            lookups_sent: now.lookups_sent - recorded.lookups_sent,
            creates_sent: now.creates_sent - recorded.creates_sent,
            rate_limited: now.rate_limited - recorded.rate_limited,
            retries: now.retries - recorded.retries,
            credential_refreshes: now.credential_refreshes - recorded.credential_refreshes,
        };
        *recorded = now;
        delta
    };
    let run = shared.delivery.run();
    if let Err(e) = shared.queue.add_run_stats(run, delta).await {
        tracing::warn!("cannot record the run's request counts: {e}");
    }
}

/// Keeps the backlog figures fresh and moves on to a new run when the
/// period changes, even while no batch arrives.
pub(super) async fn upkeep(shared: Arc<Shared>) {
    let mut stalls = shared.settings.alerts.stall_after().map(StallWatch::new);
    loop {
        tokio::time::sleep(UPKEEP_EVERY).await;
        // The hour's run shows its requests as they happen, not only when
        // it closes.
        record_stats(&shared).await;
        if let Some(watch) = &mut stalls {
            let now = shared.settings.clock.now_ms();
            let last = shared.delivery.last_verdict_ms();
            if let Some(stalled_for) = watch.due(now, last)
                && lock(&shared.backlog).updates > 0
            {
                watch.alerted(now);
                alert(
                    &shared,
                    AlertKind::Stalled,
                    format!(
                        "delivery has been stalled for {:.0} s with updates queued (rate limit, API errors or credentials)",
                        stalled_for as f64 / 1000.0
                    ),
                    shared.delivery.run(),
                );
            }
        }
        let before = shared.accepted_since_backlog.load(Ordering::Relaxed);
        match shared.queue.backlog().await {
            Ok(backlog) => {
                *lock(&shared.backlog) = backlog;
                shared
                    .accepted_since_backlog
                    .fetch_sub(before, Ordering::Relaxed);
            }
            Err(e) => tracing::warn!("cannot read the backlog: {e}"),
        }
        if let Err(e) = next_period(&shared).await {
            tracing::warn!("cannot start the next run: {e}");
        }
    }
}

/// Runs the workers; when they stop for a reason other than a shutdown,
/// pauses and starts them again.
pub(super) async fn supervise(shared: Arc<Shared>) {
    let driver = Driver {
        api: &shared.api,
        limiter: &shared.account.limiter,
        credentials: &*shared.account,
        guest: &shared.guest,
        queue: &shared.queue,
        policy: shared.settings.policy,
        concurrency: shared.settings.concurrency,
        clock: shared.settings.clock,
        handle: &shared.delivery,
        progress: None,
    };
    let supervisor = Supervision {
        shared: &shared,
        login_asked_at: Mutex::new(None),
    };
    driver
        .supervise(&supervisor, shared.settings.restart_after)
        .await;
}

/// A stream's part in its workers' restarts: it ends them when draining,
/// shows the pause, and asks for a login once per stop of delivery.
struct Supervision<'a> {
    shared: &'a Arc<Shared>,
    /// The verdict time when a login was last asked for: asked again only
    /// after delivery went on in between.
    login_asked_at: Mutex<Option<u64>>,
}

impl Supervisor for Supervision<'_> {
    fn standing(&self) -> Standing {
        if self.shared.draining.load(Ordering::Acquire) {
            Standing::Stop
        } else {
            Standing::Go
        }
    }

    fn paused(&self, why: &str, login_required: bool) {
        let shared = self.shared;
        tracing::warn!(
            destination = %shared.settings.name,
            "delivery paused: {why}; trying again in {:?} (records are still accepted and queued)",
            shared.settings.restart_after
        );
        let last_verdict = shared.delivery.last_verdict_ms();
        let mut asked_at = lock(&self.login_asked_at);
        if login_required && *asked_at != Some(last_verdict) {
            *asked_at = Some(last_verdict);
            alert(
                shared,
                AlertKind::LoginRequired,
                format!(
                    "account {} needs a new login (`outreach-host login --account {}`): {why}",
                    shared.account.name, shared.account.name
                ),
                shared.delivery.run(),
            );
        }
        *lock(&shared.paused) = Some(why.to_owned());
    }

    fn resumed(&self) {
        *lock(&self.shared.paused) = None;
    }

    async fn woken(&self) {
        self.shared.drained.notified().await;
    }
}
