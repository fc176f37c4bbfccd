//! Stopping a run: why it stopped (first reason wins), whether a signal
//! or a needed login stopped it, and waits that end when it stops.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::Notify;

#[derive(Default)]
pub(crate) struct Control {
    stop: Mutex<Option<String>>,
    /// Woken when the run stops, so that no wait outlives it.
    stopping: Notify,
    /// Something was queued or released: idle workers look again.
    pub(crate) work_available: Notify,
    /// Stopped by a signal: intake stops too.
    interrupted: AtomicBool,
    login_required: AtomicBool,
    /// Workers finish what they hold and take nothing new (a service
    /// shutting down).
    winding_down: AtomicBool,
}

impl Control {
    pub(crate) fn stopped(&self) -> Option<String> {
        self.stop.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub(crate) fn stop_run(&self, why: String) {
        let mut stop = self.stop.lock().unwrap_or_else(|p| p.into_inner());
        if stop.is_none() {
            tracing::error!("stopping delivery: {why}");
            *stop = Some(why);
        }
        drop(stop);
        self.work_available.notify_waiters();
        self.stopping.notify_waiters();
    }

    pub(crate) fn stop_for_login(&self, why: String) {
        self.login_required.store(true, Ordering::Relaxed);
        self.stop_run(why);
    }

    pub(crate) fn interrupt(&self) {
        self.interrupted.store(true, Ordering::Release);
        self.stop_run(
            "interrupted by a signal; every update not yet delivered stays queued in the journal"
                .into(),
        );
    }

    /// Workers take no new update; those on one finish it.
    pub(crate) fn wind_down(&self) {
        self.winding_down.store(true, Ordering::Release);
        self.work_available.notify_waiters();
    }

    pub(crate) fn winding_down(&self) -> bool {
        self.winding_down.load(Ordering::Acquire)
    }

    pub(crate) fn interrupted(&self) -> bool {
        self.interrupted.load(Ordering::Acquire)
    }

    pub(crate) fn login_required(&self) -> bool {
        self.login_required.load(Ordering::Relaxed)
    }

    /// Completes once the run has stopped.
    pub(crate) async fn until_stopped(&self) {
        loop {
            let notified = self.stopping.notified();
            if self.stopped().is_some() {
                return;
            }
            notified.await;
        }
    }

    /// Completes once a signal interrupted the run.
    pub(crate) async fn until_interrupted(&self) {
        loop {
            let notified = self.stopping.notified();
            if self.interrupted() {
                return;
            }
            notified.await;
        }
    }

    /// Runs `work` unless the run stops first (`None`).
    pub(crate) async fn unless_stopped<T>(&self, work: impl Future<Output = T>) -> Option<T> {
        tokio::select! {
            value = work => Some(value),
            () = self.until_stopped() => None,
        }
    }
}

/// Completes on SIGINT or SIGTERM.
pub(crate) async fn until_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut terminate) = signal(SignalKind::terminate()) else {
            return std::future::pending().await;
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}
