//! HTTP intake of `serve`: producers post batches of records concurrently;
//! each `202` comes after the batch was planned by the component and
//! fsynced into the journal. Two phases, each reporting records
//! acknowledged per second and the acknowledgement latency (p50, p99,
//! max): saturation (each producer posts its next batch when the last was
//! acknowledged, so latency is the queue of 8 batches at full speed), and
//! the latency at an offered rate (`--rate`, 20,000 records/s: each
//! producer posts a batch on a fixed schedule, answered or not).
//!
//! The service runs in this process, as `serve` wires it, against the
//! simulator on loopback; delivery runs meanwhile, paced at Outreach's
//! 10,000 requests per hour. A fresh account may spend its hour's budget
//! in a burst: by default the benchmark spends it first (9,900 records,
//! delivered before the clock starts), so the figures are the steady
//! state's; `--no-warm-up` measures intake while that burst is delivered,
//! and `--unlimited` lifts the pacing and the simulator's limit so that
//! delivery competes for the CPU throughout.
//!
//! `--shape minimal` posts profiles with one audience and one attribute
//! (about 140 bytes) instead of the default's five of each (about 375), to
//! tell what a profile's shape costs. Each phase also prints the CPU time
//! this process used per record (the service, the simulator, delivery and
//! the producers together).
//!
//! `--distinct N` spreads the records over N prospects only, as a backlog
//! does once the budget is spent: most records then merge into an update
//! already queued for their prospect instead of queueing one of their own.
//!
//! Run: `cargo bench -p outreach-host --bench intake`
//! (`-- --producers P --batches B --batch-size N --rate R --distinct N --shape minimal --no-warm-up --unlimited`).

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
use common::{CONFIG, minimal_record, record};

struct Args {
    producers: usize,
    batches: usize,
    batch_size: usize,
    unlimited: bool,
    warm_up: bool,
    /// Records per second offered in the open-loop phase (0: none).
    rate: usize,
    /// Prospects the records are spread over (0: every record its own).
    distinct: usize,
    /// One audience and one attribute per profile instead of five each.
    minimal: bool,
}

fn args() -> Args {
    let mut a = Args {
        producers: 8,
        batches: 25,
        batch_size: 500,
        unlimited: false,
        warm_up: true,
        rate: 20_000,
        distinct: 0,
        minimal: false,
    };
    let argv: Vec<String> = std::env::args().collect();
    let mut i = 1;
    while i < argv.len() {
        let value = |i: usize| argv.get(i + 1).and_then(|v| v.parse::<usize>().ok());
        match argv[i].as_str() {
            "--producers" => a.producers = value(i).unwrap_or(a.producers),
            "--batches" => a.batches = value(i).unwrap_or(a.batches),
            "--batch-size" => a.batch_size = value(i).unwrap_or(a.batch_size),
            "--rate" => a.rate = value(i).unwrap_or(a.rate),
            "--distinct" => a.distinct = value(i).unwrap_or(a.distinct),
            "--shape" => a.minimal = argv.get(i + 1).is_some_and(|v| v == "minimal"),
            "--unlimited" => {
                a.unlimited = true;
                i -= 1;
            }
            "--no-warm-up" => {
                a.warm_up = false;
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

struct Phase {
    elapsed: Duration,
    /// CPU time this process used (user and system).
    cpu: Duration,
    latencies: Vec<Duration>,
    delivered: u64,
}

/// Each producer's batches of NDJSON, prospect ids from `first` on (made
/// before any clock starts).
fn bodies(args: &Args, first: u64) -> Vec<Vec<String>> {
    (0..args.producers)
        .map(|producer| {
            (0..args.batches)
                .map(|batch| {
                    let from = (producer * args.batches + batch) * args.batch_size;
                    (from..from + args.batch_size)
                        .map(|n| match args.distinct {
                            0 => n,
                            distinct => n % distinct,
                        })
                        .map(|n| {
                            let id = first + n as u64;
                            let text = if args.minimal {
                                minimal_record(id)
                            } else {
                                record(id)
                            };
                            text + "\n"
                        })
                        .collect()
                })
                .collect()
        })
        .collect()
}

async fn post(client: &reqwest::Client, url: &str, body: String) -> Duration {
    let sent = Instant::now();
    let response = client
        .post(url)
        .header("content-type", "application/x-ndjson")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = response.status();
    let text = response.text().await.unwrap();
    assert_eq!(status, 202, "{text}");
    sent.elapsed()
}

/// Posts every producer's batches, one after the other (`interval`:
/// batch k of each producer leaves at k × interval, answered or not).
async fn phase(
    client: &reqwest::Client,
    url: &str,
    simulator: &Simulator,
    bodies: Vec<Vec<String>>,
    interval: Option<Duration>,
) -> Phase {
    let delivered_before = simulator.stats().updates_applied;
    let cpu_before = cpu_time();
    let started = Instant::now();
    let producers: Vec<_> = bodies
        .into_iter()
        .enumerate()
        .map(|(producer, batches)| {
            let (client, url) = (client.clone(), url.to_owned());
            tokio::spawn(async move {
                let Some(interval) = interval else {
                    let mut latencies = Vec::with_capacity(batches.len());
                    for body in batches {
                        latencies.push(post(&client, &url, body).await);
                    }
                    return latencies;
                };
                // Producers start spread over one interval.
                let offset = interval.mul_f64(producer as f64 / 8.0);
                let mut posts = Vec::with_capacity(batches.len());
                for (k, body) in batches.into_iter().enumerate() {
                    tokio::time::sleep_until(
                        tokio::time::Instant::from_std(started) + offset + interval * k as u32,
                    )
                    .await;
                    let (client, url) = (client.clone(), url.clone());
                    posts.push(tokio::spawn(async move { post(&client, &url, body).await }));
                }
                let mut latencies = Vec::with_capacity(posts.len());
                for post in posts {
                    latencies.push(post.await.unwrap());
                }
                latencies
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for producer in producers {
        latencies.extend(producer.await.unwrap());
    }
    Phase {
        elapsed: started.elapsed(),
        cpu: cpu_time().saturating_sub(cpu_before),
        latencies,
        delivered: simulator.stats().updates_applied - delivered_before,
    }
}

/// CPU time this process has used so far, user and system.
fn cpu_time() -> Duration {
    // SAFETY: getrusage writes into the struct it is given.
    let usage = unsafe {
        let mut usage = std::mem::zeroed::<libc::rusage>();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let time = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    time(usage.ru_utime) + time(usage.ru_stime)
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
    // Most of the hour's 10,000 (the last few may wait for the window's
    // reset: answers not yet read hold their places).
    let warm_up: u64 = if args.warm_up && !args.unlimited {
        9_900
    } else {
        0
    };
    let simulator = Simulator::start(
        SimulatorConfig {
            prospect_ids: 1..=2 * total + warm_up,
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
        default_component: outreach_host::engine::ComponentSource::File(PathBuf::from(
            outreach_host::BUILT_COMPONENT,
        )),
        cache_dir: None,
        limits: Limits::default(),
        token_store: TokenStore::new(dir.join("tokens.json")),
        fixed_token: Some(simulator.issue_token("bench@example.com")),
        oauth_client: Box::new(|_| Err("a fixed token is used".into())),
        request_timeout: Duration::from_secs(30),
        clock: Clock::system(),
        run_length: Duration::from_secs(3_600),
        nats: None,
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

    let client = reqwest::Client::new();
    if warm_up > 0 {
        let first = 2 * total + 1;
        for chunk in (first..first + warm_up).collect::<Vec<_>>().chunks(500) {
            let body: String = chunk.iter().map(|id| record(*id) + "\n").collect();
            let response = client
                .post(&url)
                .header("content-type", "application/x-ndjson")
                .body(body)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 202);
        }
        let deadline = Instant::now() + Duration::from_secs(120);
        while simulator.stats().updates_applied < warm_up {
            assert!(
                Instant::now() < deadline,
                "the warm-up was not delivered: {:?}",
                simulator.stats()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let burst = if warm_up > 0 {
        ", the hour's burst spent first"
    } else {
        ""
    };
    let spread = match args.distinct {
        0 => String::new(),
        distinct => format!(", over {distinct} prospects"),
    };
    let delivery = if args.unlimited { "unlimited" } else { "paced" };
    let describe = |phase: &str, result: &Phase| {
        let mut latencies = result.latencies.clone();
        latencies.sort();
        println!(
            "{phase}: {total} records{spread} from {} producers in batches of {} ({delivery} delivery{burst}): {:.2} s, {:.0} records/s acknowledged",
            args.producers,
            args.batch_size,
            result.elapsed.as_secs_f64(),
            total as f64 / result.elapsed.as_secs_f64()
        );
        println!(
            "  acknowledgement latency per batch: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; {} updates delivered meanwhile; CPU {:.1} µs per record",
            percentile(&latencies, 0.5).as_secs_f64() * 1e3,
            percentile(&latencies, 0.99).as_secs_f64() * 1e3,
            latencies.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
            result.delivered,
            result.cpu.as_secs_f64() * 1e6 / total as f64,
        );
    };
    // 1. Saturation: each producer posts its next batch as soon as the
    //    last one was acknowledged.
    let saturated = phase(&client, &url, &simulator, bodies(&args, 1), None).await;
    describe("saturation (closed loop)", &saturated);
    // 2. Latency at the target rate: batches leave on a schedule, whatever
    //    the answers to earlier ones.
    if args.rate > 0 {
        let batches = bodies(&args, total + 1);
        let interval =
            Duration::from_secs_f64((args.producers * args.batch_size) as f64 / args.rate as f64);
        let paced = phase(&client, &url, &simulator, batches, Some(interval)).await;
        describe(
            &format!("at {} records/s offered (open loop)", args.rate),
            &paced,
        );
    }
    service.drain().await;
    drop(service);
    let _ = std::fs::remove_dir_all(&dir);
}
