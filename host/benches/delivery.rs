//! End-to-end delivery against the simulator on loopback.
//!
//! 1. Throughput with the rate limit lifted (the simulator's and the host's
//!    pacing): updates per second.
//! 2. Budget use with the limit on (600 per minute by default), against
//!    the simulator's windows that start with a user's first request and
//!    against fixed windows that count every request (429s included), each
//!    with the reset written rounded up (the default) and rounded down, and
//!    fixed windows on a server clock 2 s behind and 2 s ahead of ours: the
//!    requests each window counted, the share of the budget used in the
//!    windows the run spanned wholly, and the 429s received per window.
//!
//! Run: `cargo bench -p outreach-host --bench delivery`
//! (`-- --records N --limit L --window-secs W --limited-records M --concurrency C`).

use std::io::Cursor;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use destination_types::RateLimitPolicy;
use outreach_host::BUILT_COMPONENT;
use outreach_host::delivery::{self, DeliveryOptions, Input, StaticToken, Summary};
use outreach_host::engine::{Limits, Runtime};
use outreach_host::http::ApiClient;
use outreach_host::journal::Journal;
use outreach_host::limiter::Limiter;
use outreach_simulator::{RateWindowKind, ResetRounding, Simulator, SimulatorConfig};

mod common;

// The command line's allocator, so the figures are the command's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use common::{CONFIG, record};

/// The Outreach user the benchmark delivers as.
const USER: &str = "bench@example.com";

fn records(n: u64) -> Vec<String> {
    (1..=n).map(record).collect()
}

struct Args {
    records: u64,
    limit: u32,
    window_secs: u64,
    limited_records: u64,
    concurrency: usize,
}

fn args() -> Args {
    let mut a = Args {
        records: 20_000,
        limit: 600,
        window_secs: 60,
        limited_records: 1_800,
        concurrency: 32,
    };
    let argv: Vec<String> = std::env::args().collect();
    let mut i = 1;
    while i < argv.len() {
        let value = argv.get(i + 1).and_then(|v| v.parse::<u64>().ok());
        let known = match argv[i].as_str() {
            "--records" => value.map(|v| a.records = v),
            "--limit" => value.map(|v| a.limit = v as u32),
            "--window-secs" => value.map(|v| a.window_secs = v),
            "--limited-records" => value.map(|v| a.limited_records = v),
            "--concurrency" => value.map(|v| a.concurrency = v as usize),
            _ => None,
        };
        i += if known.is_some() { 2 } else { 1 };
    }
    a
}

async fn deliver(
    runtime: &Runtime,
    simulator: &Simulator,
    n: u64,
    concurrency: usize,
    pacing: &RateLimitPolicy,
) -> (Summary, Duration) {
    let destination = runtime.configure(CONFIG).unwrap().unwrap();
    let limiter = Limiter::new(pacing).unwrap();
    let api = ApiClient::new(&simulator.api_base(), Duration::from_secs(30)).unwrap();
    let token = simulator.issue_token(USER);
    let input = Input::reader(Cursor::new(records(n).join("\n")), None);
    // A journal on disk, as the command line uses.
    let journal_file = std::env::temp_dir().join(format!(
        "outreach-bench-{}-{n}-{concurrency}.sqlite",
        std::process::id()
    ));
    let options = DeliveryOptions {
        concurrency,
        journal: Some(std::sync::Arc::new(Journal::open(&journal_file).unwrap())),
        ..DeliveryOptions::default()
    };
    let start = Instant::now();
    let summary = delivery::run(
        destination,
        &api,
        &limiter,
        &StaticToken(token),
        input,
        &options,
    )
    .await
    .unwrap();
    let elapsed = start.elapsed();
    drop(options);
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", journal_file.display()));
    }
    (summary, elapsed)
}

fn main() {
    let args = args();
    let runtime = Runtime::load(Path::new(BUILT_COMPONENT), None, Limits::default()).unwrap();
    let tokio = tokio::runtime::Runtime::new().unwrap();
    let loopback = SocketAddr::from(([127, 0, 0, 1], 0));

    tokio.block_on(async {
        let simulator = Simulator::start(
            SimulatorConfig {
                prospect_ids: 1..=args.records,
                rate_limit: u32::MAX,
                ..SimulatorConfig::default()
            },
            loopback,
        )
        .await
        .unwrap();
        // Lifted means lifted on both sides: the host's own pacing (the
        // component declares 10,000 per hour) would otherwise cap the run.
        let unlimited = RateLimitPolicy {
            requests: u32::MAX,
            window_seconds: 1,
            per: "user".into(),
        };
        let (summary, elapsed) =
            deliver(&runtime, &simulator, args.records, args.concurrency, &unlimited).await;
        assert_eq!(summary.delivered, args.records);
        println!(
            "unlimited: {} updates in {:.2} s = {:.0} updates/s (concurrency {}, {} requests)",
            summary.delivered,
            elapsed.as_secs_f64(),
            summary.delivered as f64 / elapsed.as_secs_f64(),
            args.concurrency,
            summary.requests_sent
        );

        let window = Duration::from_secs(args.window_secs);
        // The component's declared policy, as a real run uses it; the
        // simulator's stricter limit is learnt from its headers (and 429s).
        let declared = runtime.describe().rate_limit.clone();
        let servers = [
            (RateWindowKind::FromFirstRequest, ResetRounding::Up, 0),
            (RateWindowKind::Fixed, ResetRounding::Up, 0),
            (RateWindowKind::FromFirstRequest, ResetRounding::Down, 0),
            (RateWindowKind::Fixed, ResetRounding::Down, -2_000),
            (RateWindowKind::Fixed, ResetRounding::Down, 2_000),
        ];
        for (kind, rounding, offset_ms) in servers {
            if args.limited_records == 0 {
                break;
            }
            let simulator = Simulator::start(
                SimulatorConfig {
                    prospect_ids: 1..=args.limited_records,
                    rate_limit: args.limit,
                    rate_window: window,
                    rate_window_kind: kind,
                    reset_rounding: rounding,
                    clock_offset_ms: offset_ms,
                    ..SimulatorConfig::default()
                },
                loopback,
            )
            .await
            .unwrap();
            let (summary, elapsed) = deliver(
                &runtime,
                &simulator,
                args.limited_records,
                args.concurrency,
                &declared,
            )
            .await;
            assert_eq!(summary.delivered, args.limited_records);
            // What the simulator counted per window (429s included in a
            // fixed window). The first and the last window are used in
            // part by nature (the run joins one, and ends in one); every
            // window between them should count the whole budget.
            let counts: Vec<u32> = simulator
                .rate_windows(USER)
                .iter()
                .map(|(_, used)| *used)
                .collect();
            let whole = counts.get(1..counts.len().saturating_sub(1)).unwrap_or(&[]);
            let used: u64 = whole.iter().map(|c| u64::from(*c).min(u64::from(args.limit))).sum();
            let budget = (whole.len() as u64 * u64::from(args.limit)).max(1);
            println!(
                "limited to {} per {} s, {kind:?} windows, reset rounded {rounding:?}, server clock {offset_ms:+} ms: {} delivered in {:.1} s; requests per window {counts:?}; budget used in the {} windows between the first and the last {:.1}%; 429s {} ({:.2} per window)",
                args.limit,
                args.window_secs,
                summary.delivered,
                elapsed.as_secs_f64(),
                whole.len(),
                100.0 * used as f64 / budget as f64,
                summary.rate_limited,
                summary.rate_limited as f64 / counts.len().max(1) as f64,
            );
        }
    });
}
