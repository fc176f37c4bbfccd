//! HTTP intake of `serve`: producers post batches of records concurrently;
//! each `202` comes after the batch was planned by the component and
//! fsynced into the journal. Reports records acknowledged per second and
//! the acknowledgement latency (p50, p99, max).
//!
//! The service runs in this process, as `serve` wires it, against the
//! simulator on loopback; delivery runs meanwhile (paced at Outreach's
//! 10,000 requests per hour unless `--unlimited`, which lifts the pacing
//! and the simulator's limit so that delivery competes for the CPU).
//!
//! Run: `cargo bench -p outreach-host --bench intake`
//! (`-- --producers P --batches B --batch-size N --unlimited`).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use outreach_host::clock::Clock;
use outreach_host::engine::Limits;
use outreach_host::oauth::TokenStore;
use outreach_host::service::{self, Environment, Service};
use outreach_simulator::{Simulator, SimulatorConfig};

mod common;

// The command line's allocator, so the figures are the command's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use common::{CONFIG, record};

struct Args {
    producers: usize,
    batches: usize,
    batch_size: usize,
    unlimited: bool,
}

fn args() -> Args {
    let mut a = Args {
        producers: 8,
        batches: 25,
        batch_size: 500,
        unlimited: false,
    };
    let argv: Vec<String> = std::env::args().collect();
    let mut i = 1;
    while i < argv.len() {
        let value = |i: usize| argv.get(i + 1).and_then(|v| v.parse::<usize>().ok());
        match argv[i].as_str() {
            "--producers" => a.producers = value(i).unwrap_or(a.producers),
            "--batches" => a.batches = value(i).unwrap_or(a.batches),
            "--batch-size" => a.batch_size = value(i).unwrap_or(a.batch_size),
            "--unlimited" => {
                a.unlimited = true;
                i -= 1;
            }
            _ => {
                i -= 1;
            }
        }
        i += 2;
    }
    a
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

fn main() {
    let args = args();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(bench(args));
}

async fn bench(args: Args) {
    let total = (args.producers * args.batches * args.batch_size) as u64;
    let simulator = Simulator::start(
        SimulatorConfig {
            prospect_ids: 1..=total,
            rate_limit: if args.unlimited { u32::MAX } else { 10_000 },
            ..SimulatorConfig::default()
        },
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    let dir = std::env::temp_dir().join(format!("outreach-intake-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let config: serde_json::Value = serde_json::from_str(CONFIG).unwrap();
    let config_path = dir.join("bench.json");
    std::fs::write(&config_path, config.to_string()).unwrap();
    let account = if args.unlimited {
        "[accounts.bench]\nrate_limit = 1000000000\nrate_window_secs = 1\n"
    } else {
        ""
    };
    std::fs::write(
        dir.join("destinations.toml"),
        format!(
            "state_dir = \"state\"\n{account}[[destinations]]\nname = \"bench\"\naccount = \"bench\"\nconfig = \"bench.json\"\napi_base = \"{}\"\nmax_queued_updates = 100000000\n",
            simulator.api_base()
        ),
    )
    .unwrap();
    let env = Environment {
        default_component: PathBuf::from(outreach_host::BUILT_COMPONENT),
        cache_dir: None,
        limits: Limits::default(),
        token_store: TokenStore::new(dir.join("tokens.json")),
        fixed_token: Some(simulator.issue_token("bench@example.com")),
        oauth_client: Box::new(|_| Err("a fixed token is used".into())),
        request_timeout: Duration::from_secs(30),
        clock: Clock::system(),
        run_length: Duration::from_secs(3_600),
    };
    let service = Service::start(env, &dir.join("destinations.toml"), None)
        .await
        .unwrap_or_else(|problems| panic!("{problems}"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "http://{}/v1/destinations/bench/records",
        listener.local_addr().unwrap()
    );
    tokio::spawn(axum::serve(listener, service::router(service.clone())).into_future());

    // Bodies are made before the clock starts.
    let bodies: Vec<Vec<String>> = (0..args.producers)
        .map(|producer| {
            (0..args.batches)
                .map(|batch| {
                    let first = ((producer * args.batches + batch) * args.batch_size) as u64 + 1;
                    (first..first + args.batch_size as u64)
                        .map(|id| record(id) + "\n")
                        .collect()
                })
                .collect()
        })
        .collect();
    let client = reqwest::Client::new();
    let started = Instant::now();
    let producers: Vec<_> = bodies
        .into_iter()
        .map(|batches| {
            let (client, url) = (client.clone(), url.clone());
            tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(batches.len());
                for body in batches {
                    let sent = Instant::now();
                    let response = client
                        .post(&url)
                        .header("content-type", "application/x-ndjson")
                        .body(body)
                        .send()
                        .await
                        .unwrap();
                    let status = response.status();
                    let text = response.text().await.unwrap();
                    assert_eq!(status, 202, "{text}");
                    latencies.push(sent.elapsed());
                }
                latencies
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for producer in producers {
        latencies.extend(producer.await.unwrap());
    }
    let elapsed = started.elapsed();
    latencies.sort();
    let delivered = simulator.stats().updates_applied;
    println!(
        "intake: {total} records from {} producers in batches of {} ({} delivery): {:.2} s, {:.0} records/s acknowledged",
        args.producers,
        args.batch_size,
        if args.unlimited { "unlimited" } else { "paced" },
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64()
    );
    println!(
        "acknowledgement latency per batch: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; {delivered} updates delivered meanwhile",
        percentile(&latencies, 0.5).as_secs_f64() * 1e3,
        percentile(&latencies, 0.99).as_secs_f64() * 1e3,
        latencies.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
    );
    service.drain().await;
    drop(service);
    let _ = std::fs::remove_dir_all(&dir);
}
