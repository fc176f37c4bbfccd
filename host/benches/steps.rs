//! Requests per update when prospects are matched by email (contract 0.3's
//! deliveries of several steps), against the simulator on loopback: 1,000
//! emails, 300 of them unknown to the account at the start, 5,000 records
//! (each email five times, the emails' order mixing known and unknown).
//!
//! 1. First sight: each email once, nothing remembered: a lookup, then an
//!    update or a create.
//! 2. Steady state: the other 4,000 records, every email remembered: one
//!    update each (coalesced where several wait for one prospect).
//! 3. The whole stream in one run from an empty journal (80 % of its
//!    records for emails seen before).
//!
//! Each phase prints the API's requests by kind, per record and per
//! delivered update.
//!
//! Run: `cargo bench -p outreach-host --bench steps` (`-- --emails N`).

use std::io::Cursor;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use outreach_host::BUILT_COMPONENT;
use outreach_host::delivery::{self, DeliveryOptions, Input, StaticToken, Summary};
use outreach_host::engine::{Limits, Runtime};
use outreach_host::http::ApiClient;
use outreach_host::journal::Journal;
use outreach_host::limiter::Limiter;
use outreach_simulator::{Simulator, SimulatorConfig, Stats};
use serde_json::json;

// The command line's allocator, so the figures are the command's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const CONFIG: &str = r#"{
  "name": "by email",
  "match": "email",
  "emailMapping": { "source": "personalEmail.address" },
  "attributeMappings": [ { "source": "person.name.firstName", "target": "firstName" } ],
  "audiences": [ { "id": "aud-news", "name": "Newsletter", "mappingId": 4 } ]
}"#;
const VERSIONS: u64 = 5;

fn profile(email: u64, version: u64) -> String {
    json!({
        "personalEmail": { "address": format!("e{email}@example.com") },
        "person": { "name": { "firstName": format!("v{version}") } },
        "segmentMembership": { "ups": { "aud-news": { "status": "realized" } } }
    })
    .to_string()
}

/// Version `version` of every email, the emails in an order that mixes
/// the known and the unknown (a step prime to the count visits each once).
fn version(emails: u64, version: u64) -> Vec<String> {
    let step = (2..emails)
        .rev()
        .find(|s| gcd(*s, emails) == 1 && *s < emails / 2)
        .unwrap_or(1);
    (0..emails)
        .map(|k| profile(k * step % emails + 1, version))
        .collect()
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

async fn simulator(emails: u64) -> Simulator {
    let known = emails * 7 / 10;
    Simulator::start(
        SimulatorConfig {
            prospect_ids: 1..=emails,
            prospect_emails: (1..=known)
                .map(|i| (i, format!("e{i}@example.com")))
                .collect(),
            rate_limit: u32::MAX,
            ..SimulatorConfig::default()
        },
        std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
    )
    .await
    .unwrap()
}

async fn run(
    runtime: &Runtime,
    simulator: &Simulator,
    journal: &Path,
    records: &[String],
) -> (Summary, Duration) {
    let destination = runtime.configure(CONFIG).unwrap().unwrap();
    let unlimited = destination_types::RateLimitPolicy {
        requests: u32::MAX,
        window_seconds: 1,
        per: "user".into(),
    };
    let limiter = Limiter::new(&unlimited).unwrap();
    let api = ApiClient::new(&simulator.api_base(), Duration::from_secs(10)).unwrap();
    let options = DeliveryOptions {
        journal: Some(Arc::new(Journal::open(journal).unwrap())),
        ..DeliveryOptions::default()
    };
    let input = Input::reader(Cursor::new(records.join("\n")), None);
    let token = simulator.issue_token("bench@example.com");
    let started = Instant::now();
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
    (summary, started.elapsed())
}

fn report(phase: &str, before: &Stats, after: &Stats, summary: &Summary, elapsed: Duration) {
    let lookups = after.lookups - before.lookups;
    let creates = after.creates - before.creates;
    let updates = after.updates_applied - before.updates_applied;
    let requests = after.requests - before.requests;
    let records = summary.received;
    println!(
        "{phase}: {records} records ({} delivered, {} rejected) in {:.2} s: {requests} requests \
         ({lookups} lookups, {creates} creates, {updates} updates); {:.3} requests per record, \
         {:.3} per delivered update ({} updates after coalescing)",
        summary.delivered,
        summary.rejected,
        elapsed.as_secs_f64(),
        requests as f64 / records as f64,
        requests as f64 / summary.updates_delivered.max(1) as f64,
        summary.updates_delivered,
    );
}

fn main() {
    let argv: Vec<String> = std::env::args().collect();
    let emails = argv
        .iter()
        .position(|a| a == "--emails")
        .and_then(|i| argv.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000u64);
    let runtime = Runtime::load(Path::new(BUILT_COMPONENT), None, Limits::default()).unwrap();
    let tokio = tokio::runtime::Runtime::new().unwrap();
    let dir = std::env::temp_dir().join(format!("outreach-steps-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    tokio.block_on(async {
        println!(
            "{emails} emails, {} unknown to the account at the start; {} records",
            emails - emails * 7 / 10,
            emails * VERSIONS
        );
        // 1 and 2: first sight, then the steady state, over one journal.
        let simulator = simulator(emails).await;
        let journal = dir.join("phases.sqlite");
        let before = simulator.stats();
        let (summary, elapsed) = run(&runtime, &simulator, &journal, &version(emails, 0)).await;
        let after = simulator.stats();
        report("first sight", &before, &after, &summary, elapsed);
        let rest: Vec<String> = (1..VERSIONS).flat_map(|v| version(emails, v)).collect();
        let (summary, elapsed) = run(&runtime, &simulator, &journal, &rest).await;
        report(
            "steady state",
            &after,
            &simulator.stats(),
            &summary,
            elapsed,
        );
        // 3: the whole stream in one run.
        let simulator = self::simulator(emails).await;
        let all: Vec<String> = (0..VERSIONS).flat_map(|v| version(emails, v)).collect();
        let before = simulator.stats();
        let (summary, elapsed) = run(&runtime, &simulator, &dir.join("stream.sqlite"), &all).await;
        report(
            "whole stream",
            &before,
            &simulator.stats(),
            &summary,
            elapsed,
        );
    });
    let _ = std::fs::remove_dir_all(&dir);
}
