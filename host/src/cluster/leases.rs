//! Partition leases: which worker delivers which partition.
//!
//! A lease is an entry `pPPP` in the `outreach_leases` bucket, whose
//! entries expire one lease period after they were last written. A worker
//! takes a free partition by creating the entry (it fails if the entry
//! exists), and keeps it by updating it with the revision it last wrote —
//! the revision is the fencing token: an update on a revision that moved
//! fails, and the partition is given up at once. Renewals go out four
//! times per lease period; a worker that could not renew stops sending
//! for the partition a quarter period before the lease can expire (the
//! expiry counts from when the servers stored the renewal, after it was
//! sent), so two workers never send for one account at once.
//!
//! Balance: each worker heartbeats in the `outreach_workers` bucket; with
//! `n` live workers and `P` partitions, a worker holds at most
//! `ceil(P / n)`, handing the extra over gracefully, and takes free ones
//! up to that share.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::TryStreamExt;
use tokio::time::Instant;

use super::layout::{self, ClusterSettings};
use super::worker::{Holding, Worker};

/// What a worker may hold with `live` workers up.
pub fn share(partitions: u16, live: usize) -> usize {
    usize::from(partitions).div_ceil(live.max(1))
}

/// Where a worker starts looking for free partitions (spread, so that
/// workers starting together do not race for the same ones).
pub fn first_choice(worker: &str, partitions: u16) -> u16 {
    layout::partition_of(worker, partitions)
}

/// How often leases are renewed and free partitions looked for.
pub fn tick(settings: &ClusterSettings) -> Duration {
    settings.lease() / 4
}

/// Sending stops this long before a lease not renewed could expire.
pub fn margin(settings: &ClusterSettings) -> Duration {
    settings.lease() / 4
}

/// The value of a lease entry (for people reading the bucket).
fn lease_value(settings: &ClusterSettings) -> bytes::Bytes {
    serde_json::json!({ "worker": settings.worker })
        .to_string()
        .into_bytes()
        .into()
}

/// Keeps this worker's leases until the worker drains and holds none.
/// Renewals go out together, and nothing else waits in this loop: taking
/// a partition over (slow: a consumer is made) happens in [`share_out`].
pub async fn keep(worker: Arc<Worker>) {
    let ctx = worker.context();
    let settings = &ctx.settings;
    let tick = tick(settings);
    loop {
        let round = Instant::now();
        if !worker.is_draining() {
            let _ = ctx.buckets.workers.put(&settings.worker, "{}".into()).await;
        } else if worker.owners().is_empty() {
            return;
        }
        let owners = worker.owners();
        futures::future::join_all(
            owners
                .into_iter()
                .map(|(partition, held)| renew(&worker, partition, held)),
        )
        .await;
        tokio::time::sleep_until(round + tick).await;
    }
}

/// Hands over what is beyond this worker's share and takes free
/// partitions up to it, until the worker drains.
pub async fn share_out(worker: Arc<Worker>) {
    let tick = tick(&worker.context().settings);
    while !worker.is_draining() {
        let round = Instant::now();
        balance(&worker).await;
        tokio::time::sleep_until(round + tick).await;
    }
}

/// Renews one lease; one that cannot be renewed is given up.
async fn renew(worker: &Arc<Worker>, partition: u16, held: Holding) {
    let ctx = worker.context();
    let settings = &ctx.settings;
    if held.owner.has_stopped() && !held.releasing {
        worker.release(partition);
    }
    if held.owner.is_released() {
        return;
    }
    let sent = Instant::now();
    let key = layout::lease_key(partition);
    match ctx
        .buckets
        .leases
        .update(&key, lease_value(settings), held.owner.revision())
        .await
    {
        Ok(revision) => {
            held.owner.renewed(revision);
            worker.valid_until(partition, sent + settings.lease() - margin(settings));
        }
        Err(e) if held.owner.is_released() => {
            tracing::debug!(partition, "lease of a released partition: {e}");
        }
        Err(e) => {
            tracing::warn!(partition, "lease not renewed: {e}");
            if e.kind() == async_nats::jetstream::kv::UpdateErrorKind::WrongLastRevision {
                // Someone else holds it now: stop at once.
                worker.lose(partition).await;
            }
            // Otherwise the servers may just be slow: the watchdog stops
            // sending once the lease could expire.
        }
    }
}

/// Renews a lease just created, once its partition is ready: the time
/// it took to get ready does not count against the lease.
pub async fn confirm(worker: &Worker, partition: u16, revision: u64) -> Option<(u64, Instant)> {
    let ctx = worker.context();
    let settings = &ctx.settings;
    let sent = Instant::now();
    let revision = ctx
        .buckets
        .leases
        .update(
            layout::lease_key(partition),
            lease_value(settings),
            revision,
        )
        .await
        .ok()?;
    Some((revision, sent + settings.lease() - margin(settings)))
}

/// Workers whose heartbeat has not expired and who are not leaving. Read
/// from the bucket's stream (its subjects, then each entry), not with a
/// key listing: that makes a consumer each time, which a server's death
/// can leave hanging.
pub async fn live_workers(worker: &Worker) -> Result<usize, String> {
    let ctx = worker.context();
    let stream = ctx
        .js
        .get_stream(format!("KV_{}", layout::WORKERS))
        .await
        .map_err(|e| e.to_string())?;
    let prefix = format!("$KV.{}.", layout::WORKERS);
    let subjects: Vec<(String, usize)> = stream
        .info_with_subjects(format!("{prefix}>"))
        .await
        .map_err(|e| e.to_string())?
        .try_collect()
        .await
        .map_err(|e| e.to_string())?;
    let mut live = 0;
    for (subject, _) in subjects {
        let Some(key) = subject.strip_prefix(&prefix) else {
            continue;
        };
        if let Ok(Some(entry)) = ctx.buckets.workers.entry(key).await
            && entry.operation == async_nats::jetstream::kv::Operation::Put
        {
            live += 1;
        }
    }
    Ok(live.max(1))
}

/// Hands over partitions beyond the share, takes free ones up to it.
async fn balance(worker: &Arc<Worker>) {
    let ctx = worker.context();
    let settings = &ctx.settings;
    let partitions = settings.shape.partitions;
    let Ok(live) = live_workers(worker).await else {
        return;
    };
    let fair = share(partitions, live);
    let owners = worker.owners();
    let keeping: BTreeMap<u16, _> = owners.into_iter().filter(|(_, h)| !h.releasing).collect();
    if keeping.len() > fair {
        // One per round: the others' share grows as they take it.
        if let Some((&partition, _)) = keeping.iter().next_back() {
            tracing::info!(
                partition,
                live,
                fair,
                "handing a partition over (rebalance)"
            );
            worker.release(partition);
        }
        return;
    }
    // Claim free partitions up to the share, then make them ready
    // together (each takes a consumer to be made).
    let mut claimed = Vec::new();
    let start = first_choice(&settings.worker, partitions);
    for step in 0..partitions {
        if keeping.len() + claimed.len() >= fair || worker.is_draining() {
            break;
        }
        let partition = (start + step) % partitions;
        if keeping.contains_key(&partition) || worker.owners().contains_key(&partition) {
            continue;
        }
        let key = layout::lease_key(partition);
        if let Ok(revision) = ctx.buckets.leases.create(&key, lease_value(settings)).await {
            claimed.push((partition, revision));
        }
    }
    futures::future::join_all(
        claimed
            .into_iter()
            .map(|(partition, revision)| worker.take(partition, revision)),
    )
    .await;
}

/// Gives up partitions whose lease could have expired; runs beside
/// [`keep`] so that a stalled renewal cannot delay it.
pub async fn watch(worker: Arc<Worker>) {
    let every = (tick(&worker.context().settings) / 5).max(Duration::from_millis(10));
    loop {
        tokio::time::sleep(every).await;
        let now = Instant::now();
        for (partition, held) in worker.owners() {
            if held.valid_until <= now && !held.owner.is_released() {
                tracing::warn!(
                    partition,
                    "lease not renewed in time: stopping its deliveries"
                );
                worker.lose(partition).await;
            }
        }
        if worker.is_draining() && worker.owners().is_empty() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_cover_every_partition() {
        assert_eq!(share(16, 1), 16);
        assert_eq!(share(16, 3), 6);
        assert_eq!(share(16, 0), 16);
        for live in 1..20 {
            assert!(share(16, live) * live >= 16);
        }
    }
}
