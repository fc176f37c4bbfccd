//! The run's enqueuer: take the input's records in batches, have the component plan each
//! batch, and queue it durably with the input position after it.

use std::sync::Mutex;

use tokio::sync::mpsc;

use crate::guest::Guest;
use crate::input::{InputError, InputInfo, Item};
use crate::queue::Queue;
use crate::queue::{HeldBack, Incoming, RunId};

use super::control::Control;
use super::planner;

/// Records per journal transaction: a planned batch is queued in chunks,
/// so that delivery's verdicts (which wait behind an intake transaction on
/// the journal's thread) never wait long.
const ENQUEUE_CHUNK: usize = 100;

pub(super) struct Enqueuer<'a, Q> {
    pub guest: &'a Guest,
    pub queue: &'a Q,
    pub run: RunId,
    pub batch: usize,
    pub control: &'a Control,
    /// Set once no more input will be queued.
    pub handle: &'a super::Handle,
    /// Replayed letters not sent: their keys have newer updates.
    pub held_back: &'a Mutex<Vec<HeldBack>>,
}

impl<Q: Queue> Enqueuer<'_, Q> {
    /// Reads `items` until they end (or a signal stops the run), planning
    /// and queueing them batch by batch. Input keeps being queued after
    /// delivery stopped (say, for a new login): the queue is where it
    /// waits.
    pub async fn run(&self, mut items: mpsc::Receiver<Result<Item, InputError>>, info: &InputInfo) {
        let batch_size = self.batch.max(1);
        let mut coalesced = 0u64;
        loop {
            let first = if self.control.interrupted() {
                // What was already read is queued; nothing more is read.
                items.try_recv().ok()
            } else {
                tokio::select! {
                    item = items.recv() => item,
                    () = self.control.until_interrupted() => continue,
                }
            };
            let Some(first) = first else {
                break;
            };
            let mut batch = vec![first];
            while batch.len() < batch_size {
                match items.try_recv() {
                    Ok(item) => batch.push(item),
                    Err(_) => break,
                }
            }
            let mut lines = Vec::with_capacity(batch.len());
            let mut failure = None;
            for item in batch {
                match item {
                    Ok(item) => lines.push(item),
                    Err(e) => {
                        failure = Some(e.to_string());
                        break;
                    }
                }
            }
            if !lines.is_empty() && !self.plan_and_enqueue(lines, info, &mut coalesced).await {
                break;
            }
            if let Some(why) = failure {
                self.control.stop_run(why);
                break;
            }
        }
        tracing::debug!(coalesced, "input journaled");
        self.handle.input_ended();
    }

    /// Plans a batch and queues it, a chunk at a time; `false` when the run
    /// stopped.
    async fn plan_and_enqueue(
        &self,
        lines: Vec<Item>,
        info: &InputInfo,
        coalesced: &mut u64,
    ) -> bool {
        let positions: Vec<_> = lines
            .chunks(ENQUEUE_CHUNK)
            .map(|chunk| info.checkpoint_after(chunk.iter()))
            .collect();
        let mut planned = match self.plan(lines).await {
            Ok(planned) => planned.into_iter(),
            Err(why) => {
                self.control.stop_run(why);
                return false;
            }
        };
        for position in positions {
            let chunk: Vec<Incoming> = planned.by_ref().take(ENQUEUE_CHUNK).collect();
            match self.queue.enqueue(self.run, chunk, position).await {
                Ok(report) => {
                    *coalesced += report.coalesced;
                    for held in &report.held_back {
                        tracing::warn!("dead letter {} held back: {}", held.letter, held.reason);
                    }
                    self.held_back
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .extend(report.held_back);
                }
                Err(e) => {
                    self.control.stop_run(format!("cannot journal input: {e}"));
                    return false;
                }
            }
            self.control.work_available.notify_waiters();
        }
        true
    }

    /// Plans a batch on the component's planning thread, in input order.
    async fn plan(&self, items: Vec<Item>) -> Result<Vec<Incoming>, String> {
        let planned = self
            .guest
            .with_planner(move |destination| planner::plan_items(destination, items))
            .await
            .map_err(|e| format!("the component is gone: {e}"))?;
        Ok(planned.into_iter().map(Incoming::from).collect())
    }
}
