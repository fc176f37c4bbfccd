//! The journal: how fast records are accepted with durability on, and how
//! much memory the host needs with a million updates queued.
//!
//! 1. Journal ingest: pre-planned updates journaled in transactions of 500
//!    (`synchronous=FULL`, every batch fsynced before it counts as
//!    accepted), for distinct prospects and for 5 updates per prospect
//!    (which merge while queued). Records per second.
//! 2. Whole intake: a `run` reading an NDJSON file, planning in the
//!    component and journaling, while delivery cannot proceed (the
//!    credentials are refused at once, so every update stays queued):
//!    records per second, and the process's peak RSS (VmHWM) with
//!    1,000,000 updates queued.
//!
//! Run: `cargo bench -p outreach-host --bench journal`
//! (`-- --records N --queued M`).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use destination_types::{Header, Method, PlanOutcome, Request};
use outreach_host::BUILT_COMPONENT;
use outreach_host::delivery::{self, Credentials, DeliveryOptions, Input};
use outreach_host::engine::{Limits, Runtime};
use outreach_host::http::ApiClient;
use outreach_host::journal::Journal;
use outreach_host::limiter::Limiter;
use outreach_host::queue::Incoming;
use serde_json::json;

mod common;

// The command line's allocator, so the figures are the command's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use common::{CONFIG, record};

/// The update the component plans for `record(id)`, built directly so the
/// first benchmark measures the journal alone.
fn update(id: u64, version: u64) -> Incoming {
    let body = json!({"data": {"type": "prospect", "id": id, "attributes": {
        "firstName": "Bench", "lastName": format!("Mark {id} v{version}"), "title": "Engineer",
        "emails": [format!("bench{id}@example.com")], "addressCity": "Berlin",
        "custom1": "realized", "custom2": "existing", "custom3": "exited",
        "custom4": "realized", "custom5": "realized"}}});
    Incoming {
        line: id,
        record: record(id),
        outcome: PlanOutcome::Send(vec![Request {
            method: Method::Patch,
            path: format!("/prospects/{id}"),
            headers: vec![Header {
                name: "Content-Type".into(),
                value: "application/vnd.api+json".into(),
            }],
            body: body.to_string(),
            key: id.to_string(),
            audiences: (1..=5).map(|a| format!("a{a}")).collect(),
            purpose: Default::default(),
            recall: None,
            context: String::new(),
        }]),
        replay: None,
    }
}

fn scratch(name: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!(
        "outreach-bench-journal-{}-{name}",
        std::process::id()
    ));
    remove(&path);
    path
}

fn remove(path: &Path) {
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
}

fn journal_ingest(records: u64, per_prospect: u64) -> f64 {
    let path = scratch(&format!("ingest-{per_prospect}.sqlite"));
    let journal = Journal::open(&path).unwrap();
    let run = journal
        .start_run("bench", "bench", "http://127.0.0.1/api/v2", None)
        .unwrap();
    let prospects = records / per_prospect;
    let start = Instant::now();
    let mut batch = Vec::with_capacity(500);
    for n in 0..records {
        batch.push(update(n % prospects + 1, n / prospects));
        if batch.len() == 500 {
            journal
                .ingest(
                    run,
                    std::mem::take(&mut batch),
                    None,
                    &outreach_core::merge::merge,
                )
                .unwrap();
        }
    }
    if !batch.is_empty() {
        journal
            .ingest(run, batch, None, &outreach_core::merge::merge)
            .unwrap();
    }
    let elapsed = start.elapsed();
    let queued = journal.pending_updates().unwrap();
    assert_eq!(queued, prospects);
    let size = std::fs::metadata(&path).map_or(0, |m| m.len())
        + std::fs::metadata(format!("{}-wal", path.display())).map_or(0, |m| m.len());
    drop(journal);
    remove(&path);
    let rate = records as f64 / elapsed.as_secs_f64();
    println!(
        "journal ingest, {per_prospect} update(s) per prospect: {records} records in {:.2} s = {rate:.0} records/s \
         ({queued} updates queued, {:.1} MB on disk)",
        elapsed.as_secs_f64(),
        size as f64 / 1e6
    );
    rate
}

/// Credentials that are refused at once: nothing is sent, everything stays
/// queued.
struct Refused;

impl Credentials for Refused {
    async fn token(&self) -> Result<String, String> {
        Err("paused for the benchmark".into())
    }
    async fn refresh(&self, _rejected: &str) -> Result<(), String> {
        Err("paused for the benchmark".into())
    }
}

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

fn queued_intake(queued: u64) {
    let input = scratch("profiles.ndjson");
    {
        let mut out = std::io::BufWriter::new(std::fs::File::create(&input).unwrap());
        for id in 1..=queued {
            writeln!(out, "{}", record(id)).unwrap();
        }
        out.flush().unwrap();
    }
    let input_mb = std::fs::metadata(&input).unwrap().len() as f64 / 1e6;
    let runtime = Runtime::load(Path::new(BUILT_COMPONENT), None, Limits::default()).unwrap();
    let destination = runtime.configure(CONFIG).unwrap().unwrap();
    let limiter = Limiter::new(&runtime.describe().rate_limit).unwrap();
    let api = ApiClient::new(
        "http://127.0.0.1:9/api/v2",
        std::time::Duration::from_secs(5),
    )
    .unwrap();
    let path = scratch("queued.sqlite");
    let journal = std::sync::Arc::new(Journal::open(&path).unwrap());
    let before = peak_rss_kib();
    let tokio = tokio::runtime::Runtime::new().unwrap();
    let start = Instant::now();
    let summary = tokio
        .block_on(delivery::run(
            destination,
            &api,
            &limiter,
            &Refused,
            Input::file(&input, &journal, false).unwrap(),
            &DeliveryOptions {
                journal: Some(journal.clone()),
                ..DeliveryOptions::default()
            },
        ))
        .unwrap();
    let elapsed = start.elapsed();
    assert_eq!(summary.received, queued);
    assert_eq!(summary.pending, queued);
    assert_eq!(journal.pending_updates().unwrap(), queued);
    let after = peak_rss_kib();
    let size = std::fs::metadata(&path).map_or(0, |m| m.len())
        + std::fs::metadata(format!("{}-wal", path.display())).map_or(0, |m| m.len());
    println!(
        "intake (read {input_mb:.0} MB NDJSON, plan in the component, journal): {queued} records in {:.1} s = {:.0} records/s",
        elapsed.as_secs_f64(),
        queued as f64 / elapsed.as_secs_f64()
    );
    println!(
        "peak RSS with {queued} updates queued: {:.1} MiB (before the run: {:.1} MiB); journal {:.0} MB on disk",
        after as f64 / 1024.0,
        before as f64 / 1024.0,
        size as f64 / 1e6
    );
    drop(journal);
    remove(&path);
    let _ = std::fs::remove_file(&input);
}

fn main() {
    let mut records = 200_000u64;
    let mut queued = 1_000_000u64;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().and_then(|v| v.parse().ok());
        match arg.as_str() {
            "--records" => records = value().unwrap_or(records),
            "--queued" => queued = value().unwrap_or(queued),
            _ => {} // cargo bench passes --bench
        }
    }
    journal_ingest(records, 1);
    journal_ingest(records, 5);
    queued_intake(queued);
}
