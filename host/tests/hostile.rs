//! Containment: a hostile component (tests/hostile) is stopped within its
//! limits, the host stays up, nothing it asks for is sent anywhere, and
//! every affected record is kept as a dead letter with the reason.

use std::io::Cursor;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use destination_types::PlanOutcome;
use outreach_host::delivery::{self, DeliveryOptions, Input, StaticToken, Summary};
use outreach_host::engine::{GuestError, Limits, Runtime};
use outreach_host::http::ApiClient;
use outreach_host::limiter::Limiter;
use outreach_simulator::{Simulator, SimulatorConfig, Stats};
use serde_json::Value;

fn hostile(limits: Limits) -> Runtime {
    Runtime::load(Path::new(env!("HOSTILE_COMPONENT_PATH")), None, limits)
        .expect("the hostile component loads")
}

fn records(n: u64) -> Vec<String> {
    (1..=n)
        .map(|id| format!(r#"{{"identityMap":{{"Oid":[{{"id":"{id}"}}]}}}}"#))
        .collect()
}

/// A server standing in for "somewhere else": counts connections.
async fn elsewhere() -> (SocketAddr, Arc<AtomicU64>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&hits);
    tokio::spawn(async move {
        while let Ok((_socket, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::Relaxed);
        }
    });
    (addr, hits)
}

struct Outcome {
    summary: Summary,
    letters: Vec<Value>,
    stats: Stats,
}

async fn attack(runtime: &Runtime, attack: &str, n: u64, batch: usize) -> Outcome {
    let simulator = Simulator::start(
        SimulatorConfig::default(),
        SocketAddr::from(([127, 0, 0, 1], 0)),
    )
    .await
    .unwrap();
    let token = simulator.issue_token("ada@example.com");
    let destination = runtime
        .configure(&format!("\"{attack}\""))
        .unwrap()
        .unwrap();
    let limiter = Limiter::new(&runtime.describe().rate_limit).unwrap();
    let api = ApiClient::new(&simulator.api_base(), Duration::from_secs(5)).unwrap();
    let letters_path = std::env::temp_dir().join(format!(
        "outreach-hostile-{}-{}.ndjson",
        std::process::id(),
        attack.split(' ').next().unwrap_or("x")
    ));
    let summary = delivery::run(
        destination,
        &api,
        &limiter,
        &StaticToken(token),
        Input::reader(Cursor::new(records(n).join("\n")), None),
        &DeliveryOptions {
            batch,
            dead_letters: Some(letters_path.clone()),
            ..DeliveryOptions::default()
        },
    )
    .await
    .expect("the host survives the run");
    let letters = std::fs::read_to_string(&letters_path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    std::fs::remove_file(&letters_path).unwrap();
    Outcome {
        summary,
        letters,
        stats: simulator.stats(),
    }
}

/// Every record is a dead letter whose reason contains `why`.
fn all_kept(outcome: &Outcome, n: u64, code: &str, why: &str) {
    assert_eq!(outcome.summary.received, n);
    assert_eq!(outcome.summary.delivered, 0);
    assert_eq!(outcome.letters.len() as u64, n, "records lost");
    for letter in &outcome.letters {
        assert_eq!(letter["code"], code, "{letter}");
        let reason = letter["reason"].as_str().unwrap();
        assert!(reason.contains(why), "{reason}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_loop_is_stopped_at_the_deadline() {
    let deadline = Duration::from_millis(300);
    let runtime = hostile(Limits {
        call_deadline: deadline,
        ..Limits::default()
    });
    let mut destination = runtime.configure("\"loop\"").unwrap().unwrap();
    let start = Instant::now();
    let error = destination.plan(&records(1)).unwrap_err();
    let stopped_after = start.elapsed();
    eprintln!("endless loop stopped after {stopped_after:?} (deadline {deadline:?})");
    assert!(matches!(error, GuestError::Timeout(_)), "{error}");
    assert!(stopped_after >= deadline);
    assert!(
        stopped_after < deadline + Duration::from_millis(200),
        "{stopped_after:?}"
    );

    // In a run: two batches, each stopped, every record kept.
    let outcome = attack(&runtime, "loop", 10, 5).await;
    all_kept(
        &outcome,
        10,
        "component-error",
        "ran longer than its 300ms limit",
    );
    assert_eq!(outcome.stats.requests, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unbounded_allocation_hits_the_memory_cap() {
    let runtime = hostile(Limits {
        memory_bytes: 64 << 20,
        ..Limits::default()
    });
    let outcome = attack(&runtime, "alloc", 4, 500).await;
    all_kept(
        &outcome,
        4,
        "component-error",
        "more than its memory limit of 67108864 bytes",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_enormous_result_is_refused() {
    let runtime = hostile(Limits::default());
    let start = Instant::now();
    let outcome = attack(&runtime, "huge-result", 5, 500).await;
    // wasmtime bounds what a call may copy out of the guest: the 2,000,000
    // outcomes never reach the host's memory.
    all_kept(
        &outcome,
        5,
        "component-error",
        "too much data is being copied",
    );
    assert!(start.elapsed() < Duration::from_secs(10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_is_contained_and_the_host_stays_usable() {
    let runtime = hostile(Limits::default());
    let outcome = attack(&runtime, "panic", 3, 500).await;
    all_kept(&outcome, 3, "component-error", "trapped");
    // The same runtime keeps serving well-behaved configurations.
    let mut benign = runtime.configure("\"benign\"").unwrap().unwrap();
    let planned = benign.plan(&records(2)).unwrap();
    assert!(matches!(&planned[0], PlanOutcome::Send(r) if r[0].path == "/prospects/1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_the_component_fails_on_loses_only_the_record_it_fails_on() {
    let runtime = hostile(Limits::default());
    // Panics on any batch holding record 7: the batch of 10 is planned
    // again in halves until record 7 stands alone.
    let outcome = attack(&runtime, "panic-on :\"7\"", 10, 10).await;
    assert_eq!(outcome.summary.received, 10);
    assert_eq!(outcome.summary.delivered, 9, "{:?}", outcome.summary);
    assert_eq!(outcome.letters.len(), 1, "{:?}", outcome.letters);
    assert_eq!(outcome.letters[0]["line"], 7);
    assert_eq!(outcome.letters[0]["code"], "component-error");
    assert!(
        outcome.letters[0]["reason"]
            .as_str()
            .unwrap()
            .contains("trapped")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_to_other_hosts_are_never_sent() {
    let (addr, hits) = elsewhere().await;
    let runtime = hostile(Limits::default());
    let outcome = attack(
        &runtime,
        &format!("absolute-url http://{addr}/steal"),
        3,
        500,
    )
    .await;
    all_kept(
        &outcome,
        3,
        "refused-by-host",
        "is not a path under the API base",
    );
    assert_eq!(
        hits.load(Ordering::Relaxed),
        0,
        "a request reached the other host"
    );
    assert_eq!(outcome.stats.requests, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_paths_and_methods_are_policed() {
    let runtime = hostile(Limits::default());
    for (attack_name, why) in [
        (
            "authorization-header",
            "may not set the Authorization header",
        ),
        ("escape-path", "is not a path under the API base"),
        // Dot segments the URL parser would normalise, and encoded slashes.
        ("path /.%2e/v2-evil/x", "is not a path under the API base"),
        ("path /%2E./x", "is not a path under the API base"),
        (
            "path /prospects%2F..%2F..%2Foauth",
            "is not a path under the API base",
        ),
        (
            "path /prospects/1?_method=DELETE",
            "may not set the query parameter",
        ),
        ("delete-method", "the method Delete is not allowed"),
    ] {
        let outcome = attack(&runtime, attack_name, 2, 500).await;
        all_kept(&outcome, 2, "refused-by-host", why);
        assert_eq!(outcome.stats.requests, 0, "{attack_name} sent something");
    }
}
