//! `cluster`: what a JetStream cluster of workers shares — runs, dead
//! letters, tokens and leases — read from (and written to) JetStream.

use std::collections::BTreeMap;
use std::io::Write;

use anyhow::{Context, Result, bail};
use async_nats::jetstream;
use futures::TryStreamExt;
use outreach_host::cluster::{layout, letters, runs, tokens};
use outreach_host::oauth::TokenStore;
use serde_json::json;

use super::args::ClusterCommand;
use super::render::utc;

pub(crate) async fn run(url: &str, store: &TokenStore, command: ClusterCommand) -> Result<u8> {
    // Generous: right after a server's death, streams elect new leaders.
    let client = outreach_host::cluster::connect_options("outreach-host cluster")
        .request_timeout(Some(std::time::Duration::from_secs(30)))
        .connect(outreach_host::cluster::server_urls(url).as_slice())
        .await
        .with_context(|| format!("cannot connect to {url}"))?;
    let js = jetstream::new(client);
    let bucket = |name: &'static str| {
        let js = js.clone();
        async move {
            js.get_key_value(name).await.with_context(|| {
                format!(
                    "no bucket {name}: has a worker (`serve --nats`) ever started on this cluster?"
                )
            })
        }
    };
    match command {
        ClusterCommand::Runs { limit, json } => {
            let mut all = runs::list(&bucket(layout::RUNS).await?)
                .await
                .map_err(anyhow::Error::msg)?;
            all.truncate(limit);
            if json {
                println!("{}", serde_json::to_string_pretty(&all)?);
                return Ok(0);
            }
            let mut out = std::io::stdout().lock();
            writeln!(
                out,
                "{:<20}  {:<19}  {:>9}  {:>9}  {:>8}  {:>7}  {:>8}  {:>6}",
                "destination",
                "period (UTC)",
                "received",
                "delivered",
                "rejected",
                "skipped",
                "requests",
                "429s"
            )?;
            for run in all {
                let c = &run.counts;
                writeln!(
                    out,
                    "{:<20}  {:<19}  {:>9}  {:>9}  {:>8}  {:>7}  {:>8}  {:>6}",
                    run.destination,
                    utc(run.period_start_ms),
                    c.received,
                    c.delivered,
                    c.rejected,
                    c.skipped,
                    c.requests_sent,
                    c.rate_limited
                )?;
            }
            Ok(0)
        }
        ClusterCommand::DeadLetters { destination, limit } => {
            let letters = letters::list(&js, destination.as_deref(), limit, None)
                .await
                .map_err(anyhow::Error::msg)?;
            let mut out = std::io::stdout().lock();
            for letter in letters {
                writeln!(out, "{}", serde_json::to_string(&letter)?)?;
            }
            Ok(0)
        }
        ClusterCommand::Replay { ids } => {
            let now = outreach_host::clock::now_ms();
            let replayed = letters::replay(&js, &ids, now)
                .await
                .map_err(anyhow::Error::msg)?;
            println!("{replayed} dead letters published to the intake stream again");
            Ok(0)
        }
        ClusterCommand::ImportTokens { account } => {
            let tokens_bucket = bucket(layout::TOKENS).await?;
            let set = store.get(&account).with_context(|| {
                format!("no tokens for {account:?} in {}", store.path().display())
            })?;
            tokens::store(&tokens_bucket, &account, &set)
                .await
                .map_err(anyhow::Error::msg)?;
            store.remove(&account)?;
            println!(
                "tokens of {account:?} moved into the cluster (removed from {})",
                store.path().display()
            );
            Ok(0)
        }
        ClusterCommand::Status { json } => {
            let leases = bucket(layout::LEASES).await?;
            let workers = bucket(layout::WORKERS).await?;
            let live: std::collections::BTreeSet<String> =
                workers.keys().await?.try_collect().await?;
            let mut held: BTreeMap<String, String> = BTreeMap::new();
            let keys: Vec<String> = leases.keys().await?.try_collect().await?;
            for key in keys {
                if let Some(value) = leases.get(&key).await? {
                    let value: serde_json::Value =
                        serde_json::from_slice(&value).unwrap_or_default();
                    held.insert(key, value["worker"].as_str().unwrap_or_default().to_owned());
                }
            }
            let stream = js.get_stream(layout::INTAKE_STREAM).await?;
            let mut waiting = BTreeMap::new();
            let mut consumers = stream.consumers();
            while let Some(info) = consumers.try_next().await? {
                if let Some(partition) = layout::consumer_partition(&info.name) {
                    waiting.insert(
                        layout::lease_key(partition),
                        info.num_pending + info.num_ack_pending as u64,
                    );
                }
            }
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&json!({
                        "workers": live,
                        "leases": held,
                        "messages_waiting": waiting,
                    }))?
                );
                return Ok(0);
            }
            let live: Vec<String> = live.into_iter().collect();
            println!("live workers: {}", live.join(", "));
            for (partition, worker) in &held {
                println!(
                    "{partition}  {worker:<30}  {} messages not acknowledged",
                    waiting.get(partition).copied().unwrap_or(0)
                );
            }
            if held.is_empty() {
                bail!("no partition is held by any worker");
            }
            Ok(0)
        }
    }
}
