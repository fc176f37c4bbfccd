//! A configured destination as actors: each guest instance lives on its own
//! thread and is called over a channel, so no wasm call ever runs on an
//! async runtime's worker thread. Planning and classifying use separate
//! instances of the same configuration, so a `classify` never queues
//! behind a long `plan`; a service planning batches from several producers
//! at once may keep several planning instances.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, mpsc};
use std::thread;

use destination_types::{Classification, ConfigurationIdentity, PlanOutcome, Request, Response};
use tokio::sync::oneshot;

use crate::engine::{Configured, GuestError};
use crate::queue::{Combined, Combiner, apart, fold_chain};

type Job = Box<dyn FnOnce(&mut Configured) + Send>;

/// One instance on its own thread; the thread ends when the last handle
/// is dropped.
struct Actor {
    jobs: mpsc::Sender<Job>,
    /// Calls queued or running.
    load: Arc<AtomicUsize>,
}

/// The actor's thread is gone (it panicked).
fn gone() -> GuestError {
    GuestError::Trapped("the component's thread ended".into())
}

impl Actor {
    fn spawn(name: &str, mut destination: Configured) -> Result<Self, GuestError> {
        let (jobs, inbox) = mpsc::channel::<Job>();
        thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                for job in inbox {
                    job(&mut destination);
                }
            })
            .map_err(|e| GuestError::Trapped(format!("cannot start a component thread: {e}")))?;
        Ok(Self {
            jobs,
            load: Arc::default(),
        })
    }

    /// Queues `call` for the actor's instance; its answer comes on the
    /// receiver.
    fn submit<T: Send + 'static>(
        &self,
        call: impl FnOnce(&mut Configured) -> T + Send + 'static,
    ) -> Result<oneshot::Receiver<T>, GuestError> {
        let (answer, answered) = oneshot::channel();
        let load = self.load.clone();
        load.fetch_add(1, Ordering::Relaxed);
        self.jobs
            .send(Box::new(move |d| {
                let _ = answer.send(call(d));
                load.fetch_sub(1, Ordering::Relaxed);
            }))
            .map_err(|_| {
                self.load.fetch_sub(1, Ordering::Relaxed);
                gone()
            })?;
        Ok(answered)
    }

    /// Runs `call` on the actor's instance and awaits its answer.
    async fn call<T: Send + 'static>(
        &self,
        call: impl FnOnce(&mut Configured) -> T + Send + 'static,
    ) -> Result<T, GuestError> {
        self.submit(call)?.await.map_err(|_| gone())
    }
}

/// A configured destination, callable from async code. Cheap to share
/// behind an `Arc`.
pub struct Guest {
    /// At least one.
    planners: Vec<Actor>,
    classifier: Actor,
    identity: ConfigurationIdentity,
    can_merge: bool,
}

impl Guest {
    /// Moves `destination` to a planning thread and a second instance of
    /// it to a classifying thread.
    pub fn spawn(destination: Configured) -> Result<Self, GuestError> {
        Self::spawn_planning_on(destination, 1)
    }

    /// [`Guest::spawn`] with `planners` planning instances (at least one),
    /// each on its own thread: batches planned at once go to the least
    /// busy.
    pub fn spawn_planning_on(destination: Configured, planners: usize) -> Result<Self, GuestError> {
        let identity = destination.identity().clone();
        let can_merge = destination.can_merge();
        let classifier = Actor::spawn("guest-classify", destination.replicate())?;
        let mut actors = Vec::with_capacity(planners.max(1));
        for _ in 1..planners.max(1) {
            actors.push(Actor::spawn("guest-plan", destination.replicate())?);
        }
        actors.push(Actor::spawn("guest-plan", destination)?);
        Ok(Self {
            planners: actors,
            classifier,
            identity,
            can_merge,
        })
    }

    /// The planning instance with the fewest calls waiting.
    fn planner(&self) -> &Actor {
        self.planners
            .iter()
            .min_by_key(|actor| actor.load.load(Ordering::Relaxed))
            .unwrap_or(&self.classifier)
    }

    /// The configuration's name and account.
    pub fn identity(&self) -> &ConfigurationIdentity {
        &self.identity
    }

    /// Whether the destination's contract lets updates be combined.
    pub fn can_merge(&self) -> bool {
        self.can_merge
    }

    /// Runs `call` on the planning instance: planning, and anything that
    /// needs the instance for longer (batch halving).
    pub async fn with_planner<T: Send + 'static>(
        &self,
        call: impl FnOnce(&mut Configured) -> T + Send + 'static,
    ) -> Result<T, GuestError> {
        self.planner().call(call).await
    }

    /// Plans a batch of records: one outcome per record.
    pub async fn plan(&self, records: Vec<String>) -> Result<Vec<PlanOutcome>, GuestError> {
        self.planner().call(move |d| d.plan(&records)).await?
    }

    /// Classifies `response` to `request`.
    pub async fn classify(
        &self,
        request: &Request,
        response: &Response,
        now_ms: u64,
    ) -> Result<Classification, GuestError> {
        let (request, response) = (request.clone(), response.clone());
        self.classifier
            .call(move |d| d.classify(&request, &response, now_ms))
            .await?
    }

    /// The request to send instead of `request` now that the fact it
    /// recalls is known to be `value`, on the classifying instance.
    pub async fn recall(&self, request: &Request, value: &str) -> Result<Request, GuestError> {
        let (request, value) = (request.clone(), value.to_owned());
        self.classifier
            .call(move |d| d.recall(&request, &value))
            .await?
    }

    /// Combines each chain of updates (one key's, oldest first) as the
    /// component merges them, the chains spread over the planning
    /// instances, each taking its share in one call. A share whose
    /// instance's thread failed comes back with no update accounted for
    /// (empty chains), which the queue answers by combining nothing.
    pub async fn combine(&self, chains: Vec<Vec<Request>>) -> Vec<Vec<Combined>> {
        if !self.can_merge {
            return chains.into_iter().map(apart).collect();
        }
        let shares = self
            .planners
            .len()
            .min(chains.len().div_ceil(COMBINED_PER_CALL))
            .max(1);
        let per_share = chains.len().div_ceil(shares).max(1);
        let mut rest = chains.into_iter();
        let calls = self.planners.iter().take(shares).map(|actor| {
            let share: Vec<Vec<Request>> = rest.by_ref().take(per_share).collect();
            let chains_in_share = share.len();
            async move {
                let combined = actor
                    .call(move |d| {
                        share
                            .into_iter()
                            .map(|chain| fold_chain(chain, |o, n| merged_or_apart(d, o, n)))
                            .collect::<Vec<_>>()
                    })
                    .await;
                match combined {
                    Ok(combined) => combined,
                    Err(e) => {
                        // No answer accounts for any update: the queue
                        // then keeps the batch's updates apart.
                        tracing::warn!("the component's thread failed while merging: {e}");
                        vec![Vec::new(); chains_in_share]
                    }
                }
            }
        });
        futures::future::join_all(calls)
            .await
            .into_iter()
            .flatten()
            .collect()
    }

    /// [`Guest::combine`] as the queue's combiner.
    pub fn combiner(self: &Arc<Self>) -> Combiner {
        let guest = self.clone();
        Arc::new(move |chains| {
            let guest = guest.clone();
            Box::pin(async move { guest.combine(chains).await })
        })
    }
}

/// Chains per call into one instance below which a batch is not spread.
const COMBINED_PER_CALL: usize = 64;

/// The component's merge; a failure keeps the updates apart.
fn merged_or_apart(d: &mut Configured, older: &Request, newer: &Request) -> Option<Request> {
    d.merge(older, newer).unwrap_or_else(|e| {
        tracing::warn!(key = %older.key, "the component failed to merge two updates: {e}");
        None
    })
}
