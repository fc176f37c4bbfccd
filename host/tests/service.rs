//! `outreach-host serve` as a process, fed over HTTP by concurrent
//! producers, delivering to the simulator on loopback: final states,
//! shared budgets and fair turns, SIGKILL and restart, every bad input,
//! reload, drain, and the metrics.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::serve::{Service, eventually, first_name, password_hash, sign_in, store_tokens};
use common::{loopback, scratch};
use outreach_simulator::{RateWindowKind, Simulator, SimulatorConfig};
use reqwest::StatusCode;
use serde_json::{Value, json};

const ADA: &str = "ada@example.com";
const BOB: &str = "bob@example.com";
/// An ingest key and its SHA-256, as `outreach-host ingest-key` prints them.
const KEY: &str = "test-ingest-key";

fn key_hash(key: &str) -> String {
    outreach_host::service::keys::KeyHash::of(key).to_string()
}

/// A configuration writing the first name and audience `aud` into
/// `custom{mapping}`.
fn config(name: &str, mapping: u32) -> String {
    format!(
        r#"{{ name = "{name}", identityMapping = {{ source = "Oid", target = "OutreachId" }},
attributeMappings = [ {{ source = "person.name.firstName", target = "firstName" }} ],
audiences = [ {{ id = "aud", name = "Audience", mappingId = {mapping} }} ] }}"#
    )
}

fn profile(id: u64, first: &str) -> String {
    common::member_profile("aud", id, first)
}

fn ndjson(records: &[String]) -> String {
    records.iter().map(|r| format!("{r}\n")).collect()
}

struct Answer {
    status: StatusCode,
    headers: reqwest::header::HeaderMap,
    body: Value,
}

async fn post(
    url: &str,
    content_type: &str,
    body: impl Into<reqwest::Body>,
    headers: &[(&str, &str)],
) -> Answer {
    let mut request = reqwest::Client::new()
        .post(url)
        .header("content-type", content_type)
        .body(body);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response.bytes().await.unwrap();
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Answer {
        status,
        headers,
        body,
    }
}

async fn post_records(
    service: &Service,
    destination: &str,
    records: &[String],
    key: Option<&str>,
) -> Answer {
    let mut headers = vec![("authorization", "Bearer test-ingest-key")];
    if let Some(key) = key {
        headers.push(("idempotency-key", key));
    }
    post(
        &service.url(&format!("/v1/destinations/{destination}/records")),
        "application/x-ndjson",
        ndjson(records),
        &headers,
    )
    .await
}

/// Whether the service has a request on the wire (its metrics say so).
fn in_flight_now(service: &Service) -> bool {
    let url = service.url("/metrics");
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let Ok(response) = reqwest::Client::new()
                .get(&url)
                .bearer_auth(KEY)
                .send()
                .await
            else {
                return false;
            };
            let text = response.text().await.unwrap_or_default();
            text.lines().any(|line| {
                line.starts_with("outreach_host_requests_in_flight{") && !line.ends_with(" 0")
            })
        })
    })
    .join()
    .unwrap_or(false)
}

async fn simulator(limit: u32, window: Duration, kind: RateWindowKind) -> Simulator {
    Simulator::start(
        SimulatorConfig {
            prospect_ids: 1..=2_000,
            rate_limit: limit,
            rate_window: window,
            rate_window_kind: kind,
            ..SimulatorConfig::default()
        },
        loopback(),
    )
    .await
    .unwrap()
}

/// The destinations file: `destinations` as (name, account, mapping,
/// extra settings).
fn destinations_file(
    dir: &Path,
    simulator: &Simulator,
    settings: &str,
    destinations: &[(&str, &str, u32, &str)],
) {
    let mut text = format!(
        "state_dir = \"state\"\ningest_keys = [\"{}\"]\n{settings}\n",
        key_hash(KEY)
    );
    for (name, account, mapping, extra) in destinations {
        text.push_str(&format!(
            "[[destinations]]\nname = \"{name}\"\naccount = \"{account}\"\napi_base = \"{}\"\nconfig = {}\n{extra}\n",
            simulator.api_base(),
            config(name, *mapping)
        ));
    }
    std::fs::write(dir.join("destinations.toml"), text).unwrap();
}

/// Runs the command line against a destination's journal (read-only
/// commands work while the service runs).
fn journal_json(dir: &Path, destination: &str, args: &[&str]) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_outreach-host"))
        .arg("--journal")
        .arg(dir.join("state").join(format!("{destination}.journal")))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_destinations_two_sharing_an_account_deliver_every_accepted_record_in_turn() {
    const LIMIT: u32 = 40;
    let window = Duration::from_secs(1);
    let simulator = simulator(LIMIT, window, RateWindowKind::Fixed).await;
    let dir = scratch("service", "three");
    store_tokens(&dir, &simulator, &[ADA, BOB]);
    // Ada's budget paces her requests (30 a second, after a first burst of
    // 30) below the API's window.
    destinations_file(
        &dir,
        &simulator,
        "[accounts.\"ada@example.com\"]\nrate_limit = 30\nrate_window_secs = 1",
        &[
            // Unequal workers: turns are per destination, not per worker.
            ("backlog", ADA, 4, "concurrency = 12"),
            ("newcomer", ADA, 5, "concurrency = 2"),
            ("other", BOB, 6, "concurrency = 4"),
        ],
    );
    let service = Service::start(&dir, &[]);
    // The journals' directory is the owner's alone: they hold profiles.
    let mode = std::fs::metadata(dir.join("state")).unwrap().permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
        0o700
    );

    // A backlog of 150 updates on Ada's account, then 12 for another
    // destination of hers: in turns, the newcomer's are through long before
    // the backlog is. The backlog's first burst (30) goes before the
    // newcomer posts; then they alternate (the limiter's own test shows
    // the turns exactly).
    let backlog: Vec<String> = (1..=150).map(|id| profile(id, "backlog")).collect();
    let answer = post_records(&service, "backlog", &backlog, None).await;
    assert_eq!(answer.status, StatusCode::ACCEPTED, "{}", answer.body);
    let newcomer: Vec<String> = (501..=512).map(|id| profile(id, "newcomer")).collect();
    let answer = post_records(&service, "newcomer", &newcomer, None).await;
    assert_eq!(answer.status, StatusCode::ACCEPTED, "{}", answer.body);
    eventually("the newcomer's updates", Duration::from_secs(30), || {
        (501..=512).all(|id| first_name(&simulator, id).as_deref() == Some("newcomer"))
    })
    .await;
    let backlog_done = (1..=150)
        .filter(|id| first_name(&simulator, *id).as_deref() == Some("backlog"))
        .count();
    // In strict turns the backlog gets about 30 + 12 (+ requests in
    // flight); a loaded machine lets the newcomer miss a few turns, but it
    // is through well before the backlog.
    assert!(
        backlog_done <= 100,
        "the backlog got {backlog_done} of 150 requests while the newcomer got 12"
    );

    // Three producers per destination, each owning its prospects and
    // posting three rounds of values in batches: the final state is each
    // producer's last round.
    let mut producers = Vec::new();
    for (destination, first_id) in [("backlog", 1000u64), ("newcomer", 1300), ("other", 1600)] {
        for producer in 0..3u64 {
            let base = service.base.clone();
            let destination = destination.to_owned();
            producers.push(tokio::spawn(async move {
                let ids: Vec<u64> = (0..20).map(|i| first_id + producer * 20 + i).collect();
                for round in 1..=3 {
                    for chunk in ids.chunks(10) {
                        let records: Vec<String> = chunk
                            .iter()
                            .map(|id| profile(*id, &format!("{destination}-{round}")))
                            .collect();
                        let answer = post(
                            &format!("{base}/v1/destinations/{destination}/records"),
                            "application/x-ndjson",
                            ndjson(&records),
                            &[("authorization", "Bearer test-ingest-key")],
                        )
                        .await;
                        assert_eq!(answer.status, StatusCode::ACCEPTED, "{}", answer.body);
                        assert_eq!(answer.body["accepted"], 10);
                    }
                }
            }));
        }
    }
    for producer in producers {
        producer.await.unwrap();
    }
    eventually("every accepted record", Duration::from_secs(90), || {
        [("backlog", 1000u64), ("newcomer", 1300), ("other", 1600)]
            .iter()
            .all(|(destination, first)| {
                (*first..first + 60).all(|id| {
                    first_name(&simulator, id).as_deref() == Some(&format!("{destination}-3"))
                })
            })
    })
    .await;
    eventually("the backlog", Duration::from_secs(60), || {
        (1..=150).all(|id| first_name(&simulator, id).as_deref() == Some("backlog"))
    })
    .await;

    // The runs count the requests while the hour's run is still open:
    // Bob's account serves "other" alone, so its run's requests and 429s
    // are what the API saw of Bob.
    let sent_by_bob = simulator.requests_of(BOB);
    let bob_429s = sent_by_bob.iter().filter(|s| s.rate_limited).count();
    let counted = |field: &str| -> u64 {
        let runs = journal_json(&dir, "other", &["runs", "--json"]);
        runs.as_array()
            .unwrap()
            .iter()
            .map(|run| run[field].as_u64().unwrap())
            .sum()
    };
    eventually("the run's request counts", Duration::from_secs(10), || {
        counted("requests_sent") == sent_by_bob.len() as u64
            && counted("rate_limited") == bob_429s as u64
    })
    .await;

    // Each account's fixed windows: never over the budget but for one
    // request refused at most.
    for user in [ADA, BOB] {
        let windows = simulator.rate_windows(user);
        assert!(
            windows.iter().all(|(_, used)| *used <= LIMIT + 1),
            "{user}: {windows:?}"
        );
    }
    let log = service.log();
    assert!(!log.contains("ERROR"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_loses_no_acknowledged_record_and_a_retried_batch_is_not_journaled_twice() {
    let simulator = Simulator::start(
        SimulatorConfig {
            prospect_ids: 1..=2_000,
            faults: outreach_simulator::Faults {
                latency: Duration::from_millis(20),
                ..Default::default()
            },
            ..SimulatorConfig::default()
        },
        loopback(),
    )
    .await
    .unwrap();
    let dir = scratch("service", "sigkill");
    store_tokens(&dir, &simulator, &[ADA]);
    destinations_file(&dir, &simulator, "", &[("crm", ADA, 4, "concurrency = 2")]);
    let mut service = Service::start(&dir, &[]);

    // Batch i sets prospects 10i+1..=10i+10 to "b{i}"; four producers
    // post batches without waiting for delivery.
    let batches: Vec<(String, Vec<String>)> = (0..80u64)
        .map(|i| {
            let records = (1..=10)
                .map(|n| profile(10 * i + n, &format!("b{i}")))
                .collect();
            (format!("batch-{i}"), records)
        })
        .collect();
    let acknowledged = std::sync::Arc::new(std::sync::Mutex::new(Vec::<usize>::new()));
    let mut producers = Vec::new();
    for producer in 0..4usize {
        let (url, batches, acknowledged) = (
            service.url("/v1/destinations/crm/records"),
            batches.clone(),
            acknowledged.clone(),
        );
        producers.push(tokio::spawn(async move {
            for (i, (key, records)) in batches.iter().enumerate().skip(producer).step_by(4) {
                let sent = reqwest::Client::new()
                    .post(&url)
                    .header("content-type", "application/x-ndjson")
                    .header("authorization", "Bearer test-ingest-key")
                    .header("idempotency-key", key)
                    .body(ndjson(records))
                    .send()
                    .await;
                match sent {
                    Ok(response) if response.status() == StatusCode::ACCEPTED => {
                        acknowledged.lock().unwrap().push(i);
                    }
                    _ => return,
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        }));
    }
    eventually("some batches acknowledged", Duration::from_secs(30), || {
        acknowledged.lock().unwrap().len() >= 20
    })
    .await;
    service.signal(libc::SIGKILL);
    service.wait(Duration::from_secs(10));
    for producer in producers {
        producer.await.unwrap();
    }
    let acknowledged_before = acknowledged.lock().unwrap().clone();
    assert!(
        acknowledged_before.len() < batches.len(),
        "the kill came too late to test anything"
    );

    // After a restart every acknowledged batch is delivered, without being
    // posted again.
    let service = Service::start(&dir, &[]);
    eventually("every acknowledged batch", Duration::from_secs(60), || {
        acknowledged_before.iter().all(|&i| {
            (1..=10u64).all(|n| {
                first_name(&simulator, 10 * i as u64 + n).as_deref() == Some(&format!("b{i}"))
            })
        })
    })
    .await;
    // The producers send everything again under the same keys: what was
    // acknowledged is answered as before and not journaled again.
    let mut replayed = 0;
    for (key, records) in &batches {
        let answer = post_records(&service, "crm", records, Some(key)).await;
        assert_eq!(answer.status, StatusCode::ACCEPTED, "{}", answer.body);
        if answer.headers.get("idempotent-replayed").is_some() {
            replayed += 1;
        }
    }
    assert!(replayed >= acknowledged_before.len(), "{replayed} replayed");
    eventually("every batch", Duration::from_secs(60), || {
        (0..80u64).all(|i| {
            (1..=10)
                .all(|n| first_name(&simulator, 10 * i + n).as_deref() == Some(&format!("b{i}")))
        })
    })
    .await;
    // Each record was journaled once: as many received as batches sent.
    let runs = journal_json(&dir, "crm", &["runs", "--json"]);
    let received: u64 = runs
        .as_array()
        .unwrap()
        .iter()
        .map(|run| run["received"].as_u64().unwrap())
        .sum();
    assert_eq!(received, 800, "{runs}");

    // A producer retrying an old batch after a newer one does not put the
    // old values back.
    let old = vec![profile(1, "old")];
    assert_eq!(
        post_records(&service, "crm", &old, Some("old"))
            .await
            .status,
        StatusCode::ACCEPTED
    );
    eventually("old", Duration::from_secs(10), || {
        first_name(&simulator, 1).as_deref() == Some("old")
    })
    .await;
    let new = vec![profile(1, "new")];
    assert_eq!(
        post_records(&service, "crm", &new, Some("new"))
            .await
            .status,
        StatusCode::ACCEPTED
    );
    eventually("new", Duration::from_secs(10), || {
        first_name(&simulator, 1).as_deref() == Some("new")
    })
    .await;
    let received_by = |runs: Value| -> u64 {
        runs.as_array()
            .unwrap()
            .iter()
            .map(|run| run["received"].as_u64().unwrap())
            .sum()
    };
    let before = received_by(journal_json(&dir, "crm", &["runs", "--json"]));
    let retried = post_records(&service, "crm", &old, Some("old")).await;
    assert_eq!(retried.status, StatusCode::ACCEPTED);
    assert!(retried.headers.get("idempotent-replayed").is_some());
    // Nothing was journaled for the retry (the runs received nothing
    // more), so nothing of it can be sent: the newer values stay.
    let after = received_by(journal_json(&dir, "crm", &["runs", "--json"]));
    assert_eq!(after, before, "the retried batch was not journaled");
    assert_eq!(first_name(&simulator, 1).as_deref(), Some("new"));
}

/// A service with three destinations: `crm` (bodies up to 4 KiB, records
/// up to 512 bytes), `off` (disabled) and `stuck` (its account never
/// logged in, at most 3 updates queued); alerts go to `alerts.jsonl`.
async fn strict_service(name: &str) -> (Simulator, PathBuf, Service) {
    let simulator = simulator(
        10_000,
        Duration::from_secs(3_600),
        RateWindowKind::default(),
    )
    .await;
    let dir = scratch("service", name);
    store_tokens(&dir, &simulator, &[ADA]);
    destinations_file(
        &dir,
        &simulator,
        &format!(
            "max_body_bytes = 4096\nmax_record_bytes = 512\nlogin_retry_secs = 1\nstall_alert_secs = 2\nalert_command = \"cat >> {}\"\n",
            dir.join("alerts.jsonl").display()
        ),
        &[
            ("crm", ADA, 4, ""),
            ("off", ADA, 5, "enabled = false"),
            // Bob never logged in: its updates wait, so its queue fills.
            ("stuck", BOB, 6, "max_queued_updates = 3"),
        ],
    );
    let service = Service::start(&dir, &[]);
    (simulator, dir, service)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refused_request_gets_its_status_and_leaves_nothing_in_the_journal() {
    let (_simulator, dir, service) = strict_service("refused").await;
    let url = service.url("/v1/destinations/crm/records");
    let auth = ("authorization", "Bearer test-ingest-key");
    let one = ndjson(&[profile(1, "Ann")]);

    let cases: Vec<(&str, Answer, StatusCode)> = vec![
        (
            "no key",
            post(&url, "application/x-ndjson", one.clone(), &[]).await,
            StatusCode::UNAUTHORIZED,
        ),
        (
            "wrong key",
            post(
                &url,
                "application/x-ndjson",
                one.clone(),
                &[("authorization", "Bearer nope")],
            )
            .await,
            StatusCode::UNAUTHORIZED,
        ),
        (
            "unknown destination",
            post(
                &service.url("/v1/destinations/nope/records"),
                "application/x-ndjson",
                one.clone(),
                &[auth],
            )
            .await,
            StatusCode::NOT_FOUND,
        ),
        (
            "disabled",
            post(
                &service.url("/v1/destinations/off/records"),
                "application/x-ndjson",
                one.clone(),
                &[auth],
            )
            .await,
            StatusCode::CONFLICT,
        ),
        (
            "content type",
            post(&url, "text/csv", one.clone(), &[auth]).await,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
        (
            "body too large",
            post(&url, "application/x-ndjson", "{}\n".repeat(2_000), &[auth]).await,
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
        (
            "framing",
            post(
                &url,
                "application/json",
                format!(
                    "[{},\n{},\n{{\"broken",
                    profile(1, "Ann"),
                    profile(1, "Ann")
                ),
                &[auth],
            )
            .await,
            StatusCode::BAD_REQUEST,
        ),
        (
            "not an array",
            post(&url, "application/json", one.clone(), &[auth]).await,
            StatusCode::BAD_REQUEST,
        ),
        (
            "idempotency key",
            post(
                &url,
                "application/x-ndjson",
                one.clone(),
                &[auth, ("idempotency-key", "has space")],
            )
            .await,
            StatusCode::BAD_REQUEST,
        ),
    ];
    for (what, answer, expected) in &cases {
        assert_eq!(answer.status, *expected, "{what}: {}", answer.body);
        assert!(answer.body["error"].is_string(), "{what}: {}", answer.body);
    }
    assert_eq!(
        cases[0].1.body, cases[1].1.body,
        "a 401 says nothing of which"
    );
    assert!(
        cases[6].1.body["error"]
            .as_str()
            .unwrap()
            .starts_with("the body is not a JSON array of records (line 3,"),
        "{}",
        cases[6].1.body
    );

    // Nothing of the above reached the journal.
    let runs = journal_json(&dir, "crm", &["runs", "--json"]);
    assert_eq!(runs[0]["received"], 0, "{runs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_batch_with_bad_records_is_accepted_and_its_bad_records_become_dead_letters() {
    let (simulator, dir, service) = strict_service("bad-records").await;
    let url = service.url("/v1/destinations/crm/records");
    let auth = ("authorization", "Bearer test-ingest-key");

    // A mixed JSON array: the good records are accepted, the others listed
    // (and kept as dead letters); one too large is an entry, not a failure.
    let big = profile(3, &"x".repeat(600));
    let mixed = format!(
        "[{}, {{\"identityMap\": {{}}}}, {big}, {}]",
        profile(2, "Bea"),
        json!({"identityMap": {"Oid": [{"id": "7"}]}, "segmentMembership": {"ups": {"aud": {"status": "maybe"}}}})
    );
    let answer = post(&url, "application/json", mixed, &[auth]).await;
    assert_eq!(answer.status, StatusCode::ACCEPTED, "{}", answer.body);
    assert_eq!(answer.body["accepted"], 1, "{}", answer.body);
    let invalid: Vec<(u64, &str)> = answer.body["invalid"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["index"].as_u64().unwrap(), e["code"].as_str().unwrap()))
        .collect();
    assert_eq!(
        invalid,
        [(2, "record-too-large"), (3, "audience-status-unknown")]
    );
    assert_eq!(answer.body["skipped"][0]["index"], 1, "{}", answer.body);
    eventually("Bea", Duration::from_secs(10), || {
        first_name(&simulator, 2).as_deref() == Some("Bea")
    })
    .await;
    let letters = {
        let out = Command::new(env!("CARGO_BIN_EXE_outreach-host"))
            .arg("--journal")
            .arg(dir.join("state/crm.journal"))
            .args(["dead-letters", "list"])
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap()
    };
    let codes: Vec<String> = letters
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["code"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    // (Skipped records are kept as dead letters too, for the record.)
    assert_eq!(
        codes,
        [
            "identity-missing",
            "record-too-large",
            "audience-status-unknown"
        ],
        "{letters}"
    );

    // An NDJSON batch with a line that is not JSON and one that is not
    // UTF-8: those two are invalid entries, dead-lettered with their
    // text, and the rest of the batch is accepted.
    let mut body = format!("{}\n{{\"broken\n", profile(4, "Dee")).into_bytes();
    body.extend_from_slice(b"\xff\xfe not text\n");
    body.extend_from_slice(format!("{}\n", profile(5, "Eve")).as_bytes());
    let answer = post(&url, "application/x-ndjson", body, &[auth]).await;
    assert_eq!(answer.status, StatusCode::ACCEPTED, "{}", answer.body);
    assert_eq!(answer.body["accepted"], 2, "{}", answer.body);
    let invalid: Vec<(u64, &str)> = answer.body["invalid"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["index"].as_u64().unwrap(), e["code"].as_str().unwrap()))
        .collect();
    assert_eq!(invalid, [(1, "not-json"), (2, "invalid-record")]);
    eventually("Eve", Duration::from_secs(10), || {
        first_name(&simulator, 5).as_deref() == Some("Eve")
    })
    .await;
    let out = Command::new(env!("CARGO_BIN_EXE_outreach-host"))
        .arg("--journal")
        .arg(dir.join("state/crm.journal"))
        .args(["dead-letters", "list", "--code", "not-json"])
        .output()
        .unwrap();
    let letter: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(letter["record"], "{\"broken", "the line's text is kept");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_queue_refuses_with_429_and_a_missing_login_alerts_once() {
    let (_simulator, dir, service) = strict_service("full-queue").await;
    let auth = ("authorization", "Bearer test-ingest-key");
    let one = ndjson(&[profile(1, "Ann")]);

    // Over the queue quota: 429 with Retry-After, and the batch is not
    // journaled.
    let stuck = service.url("/v1/destinations/stuck/records");
    let three: Vec<String> = (10..13).map(|id| profile(id, "Cy")).collect();
    let answer = post(&stuck, "application/x-ndjson", ndjson(&three), &[auth]).await;
    assert_eq!(answer.status, StatusCode::ACCEPTED, "{}", answer.body);
    let answer = post(&stuck, "application/x-ndjson", one.clone(), &[auth]).await;
    assert_eq!(
        answer.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{}",
        answer.body
    );
    assert!(answer.headers.get("retry-after").is_some());
    let runs = journal_json(&dir, "stuck", &["runs", "--json"]);
    assert_eq!(runs[0]["received"], 3, "{runs}");

    // The destination whose account never logged in asked for a login
    // once (not at every retry), and its queued updates raised a stall.
    let alerts = || -> Vec<Value> {
        // One JSON document per alert, one after the other.
        let text = std::fs::read_to_string(dir.join("alerts.jsonl")).unwrap_or_default();
        serde_json::Deserializer::from_str(&text)
            .into_iter::<Value>()
            .map_while(Result::ok)
            .collect()
    };
    eventually("a stall alert", Duration::from_secs(20), || {
        alerts().iter().any(|a| a["event"] == "stalled")
    })
    .await;
    // Each pause of its delivery (one a second) could ask for a login
    // again, and each second of upkeep could raise the stall again: three
    // more pauses give both every chance to repeat.
    let pauses = || {
        service
            .log()
            .lines()
            .filter(|l| l.contains("destination=stuck") && l.contains("delivery paused"))
            .count()
    };
    let seen = pauses();
    eventually("three more pauses", Duration::from_secs(20), || {
        pauses() >= seen + 3
    })
    .await;
    let stuck: Vec<String> = alerts()
        .iter()
        .filter(|a| a["destination"] == "stuck")
        .map(|a| a["event"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(stuck, ["login-required", "stalled"], "{stuck:?}");
}

fn parse_metrics(text: &str) -> HashMap<String, f64> {
    let lines = text.lines().map(|l| Ok(l.to_owned()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("Prometheus text");
    scrape
        .samples
        .into_iter()
        .map(|sample| {
            let labels: BTreeMap<String, String> = sample
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            let value = match sample.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                _ => f64::NAN,
            };
            (format!("{}{labels:?}", sample.metric), value)
        })
        .collect()
}

fn metric(metrics: &HashMap<String, f64>, name: &str, labels: &[(&str, &str)]) -> f64 {
    let labels: BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let key = format!("{name}{labels:?}");
    *metrics
        .get(&key)
        .unwrap_or_else(|| panic!("no {key} in {:#?}", metrics.keys().collect::<Vec<_>>()))
}

/// crm's producer holds a key of crm's own.
const CRM_KEY: &str = "crm-producer-key";

fn crm_keys() -> String {
    format!("ingest_keys = [\"{}\"]", key_hash(CRM_KEY))
}

/// A service with one destination, `crm`, whose producer has a key of its
/// own.
async fn crm_service(name: &str) -> (Simulator, PathBuf, Service) {
    let simulator = simulator(
        10_000,
        Duration::from_secs(3_600),
        RateWindowKind::default(),
    )
    .await;
    let dir = scratch("service", name);
    store_tokens(&dir, &simulator, &[ADA]);
    let crm_keys = crm_keys();
    destinations_file(
        &dir,
        &simulator,
        "drain_timeout_secs = 5",
        &[("crm", ADA, 4, &crm_keys)],
    );
    let service = Service::start(&dir, &[]);
    (simulator, dir, service)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_need_a_key_that_reads_figures_and_count_what_the_api_applied() {
    let (simulator, _dir, service) = crm_service("metrics").await;
    let records: Vec<String> = (1..=30).map(|id| profile(id, "One")).collect();
    assert_eq!(
        post_records(&service, "crm", &records, None).await.status,
        StatusCode::ACCEPTED
    );
    let rejected = vec![json!({"identityMap": {"Oid": [{"id": "9"}]}, "segmentMembership": {"ups": {"aud": {"status": "maybe"}}}}).to_string()];
    assert_eq!(
        post_records(&service, "crm", &rejected, None).await.status,
        StatusCode::ACCEPTED
    );
    eventually("delivery", Duration::from_secs(10), || {
        first_name(&simulator, 30).is_some()
    })
    .await;

    // The metrics parse, and their counts are the simulator's.
    let client = reqwest::Client::new();
    let unauthorized = client.get(service.url("/metrics")).send().await.unwrap();
    assert_eq!(unauthorized.status(), StatusCode::UNAUTHORIZED);
    // A destination's own key posts to it but reads no one's figures.
    let own = client
        .get(service.url("/metrics"))
        .bearer_auth(CRM_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(own.status(), StatusCode::UNAUTHORIZED);
    // The scheme's name is case-insensitive (RFC 9110).
    let lower = client
        .get(service.url("/metrics"))
        .header("authorization", format!("bearer {KEY}"))
        .send()
        .await
        .unwrap();
    assert_eq!(lower.status(), StatusCode::OK);
    // A loopback service answers only requests addressed to a loopback
    // name: a page whose name was rebound to 127.0.0.1 gets nothing.
    let rebound = client
        .get(service.url("/metrics"))
        .bearer_auth(KEY)
        .header("host", "attacker.example:8088")
        .send()
        .await
        .unwrap();
    assert_eq!(rebound.status(), StatusCode::MISDIRECTED_REQUEST);
    let localhost = client
        .get(service.url("/healthz"))
        .header("host", "localhost")
        .send()
        .await
        .unwrap();
    assert_eq!(localhost.status(), StatusCode::OK);
    // Verdicts are recorded just after the API answered: the counts
    // settle at the simulator's.
    let crm = [("destination", "crm"), ("outcome", "delivered")];
    let deadline = Instant::now() + Duration::from_secs(20);
    let (text, metrics) = loop {
        let text = client
            .get(service.url("/metrics"))
            .bearer_auth(KEY)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let metrics = parse_metrics(&text);
        if metric(&metrics, "outreach_host_records_total", &crm) == 30.0
            || Instant::now() > deadline
        {
            break (text, metrics);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let applied = simulator.stats().updates_applied as f64;
    assert_eq!(applied, 30.0);
    assert_eq!(
        metric(&metrics, "outreach_host_records_total", &crm),
        applied
    );
    let received = [("destination", "crm"), ("outcome", "received")];
    assert_eq!(
        metric(&metrics, "outreach_host_records_total", &received),
        31.0
    );
    let rejected = [("destination", "crm"), ("outcome", "rejected")];
    assert_eq!(
        metric(&metrics, "outreach_host_records_total", &rejected),
        1.0
    );
    let by_audience = [
        ("destination", "crm"),
        ("audience", "aud"),
        ("outcome", "delivered"),
    ];
    assert_eq!(
        metric(
            &metrics,
            "outreach_host_audience_records_total",
            &by_audience
        ),
        applied
    );
    let ada = [("account", ADA)];
    assert_eq!(
        metric(&metrics, "outreach_host_requests_total", &ada),
        simulator.stats().requests as f64
    );
    assert_eq!(
        metric(
            &metrics,
            "outreach_host_queued_updates",
            &[("destination", "crm")]
        ),
        0.0
    );
    let expires = metric(
        &metrics,
        "outreach_host_access_token_expires_in_seconds",
        &ada,
    );
    assert!(expires > 0.0, "{expires}");
    assert!(!text.contains("sim-0"), "a token in the metrics");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reload_adds_a_destination_refuses_a_bad_file_and_reopens_a_changed_one() {
    let (simulator, dir, service) = crm_service("reload").await;
    let crm_keys = crm_keys();

    // A valid new file: a second destination appears, the first keeps its
    // journal and runs.
    destinations_file(
        &dir,
        &simulator,
        "drain_timeout_secs = 5",
        &[("crm", ADA, 4, &crm_keys), ("second", ADA, 5, "")],
    );
    service.signal(libc::SIGHUP);
    let second = service.url("/v1/destinations/second/records");
    let mut reloaded = false;
    for _ in 0..200 {
        let answer = post(
            &second,
            "application/x-ndjson",
            ndjson(&[profile(40, "Two")]),
            &[("authorization", "Bearer test-ingest-key")],
        )
        .await;
        if answer.status == StatusCode::ACCEPTED {
            reloaded = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(reloaded, "{}", service.log());
    eventually("the second destination", Duration::from_secs(10), || {
        first_name(&simulator, 40).as_deref() == Some("Two")
    })
    .await;

    // An invalid file is refused: both destinations go on.
    std::fs::write(
        dir.join("destinations.toml"),
        std::fs::read_to_string(dir.join("destinations.toml")).unwrap()
            + "\n[[destinations]]\nname = \"broken\"\nconfig = { identityMapping = 3 }\n",
    )
    .unwrap();
    service.signal(libc::SIGHUP);
    eventually("the refusal", Duration::from_secs(20), || {
        service.log().contains("not reloaded")
    })
    .await;
    assert!(
        service.log().contains("destination \"broken\": config"),
        "{}",
        service.log()
    );
    for destination in ["crm", "second"] {
        let answer = post_records(&service, destination, &[profile(41, "Three")], None).await;
        assert_eq!(
            answer.status,
            StatusCode::ACCEPTED,
            "{destination}: {}",
            answer.body
        );
    }

    eventually("the last records", Duration::from_secs(10), || {
        first_name(&simulator, 41).as_deref() == Some("Three")
    })
    .await;

    // A valid file that changes a running destination: it closes and
    // opens again with the new settings, and takes records after.
    destinations_file(
        &dir,
        &simulator,
        "drain_timeout_secs = 5",
        &[("crm", ADA, 4, "concurrency = 3"), ("second", ADA, 5, "")],
    );
    service.signal(libc::SIGHUP);
    eventually("the second reload", Duration::from_secs(20), || {
        service.log().matches(": reloaded").count() == 2
    })
    .await;
    let answer = post_records(&service, "crm", &[profile(42, "Four")], None).await;
    assert_eq!(answer.status, StatusCode::ACCEPTED, "{}", answer.body);
    eventually("after the change", Duration::from_secs(10), || {
        first_name(&simulator, 42).as_deref() == Some("Four")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_lets_requests_in_flight_finish_and_a_restart_carries_on() {
    // SIGTERM: intake answers 503 while requests in flight finish; the
    // process ends by itself; a restart carries on with what was queued.
    let slow = Simulator::start(
        SimulatorConfig {
            prospect_ids: 1..=2_000,
            faults: outreach_simulator::Faults {
                latency: Duration::from_millis(1_500),
                ..Default::default()
            },
            ..SimulatorConfig::default()
        },
        loopback(),
    )
    .await
    .unwrap();
    let dir = scratch("service", "drain");
    store_tokens(&dir, &slow, &[ADA]);
    destinations_file(
        &dir,
        &slow,
        "drain_timeout_secs = 5",
        &[("crm", ADA, 4, "concurrency = 1")],
    );
    let mut service = Service::start(&dir, &[]);
    let queued: Vec<String> = (100..110).map(|id| profile(id, "Later")).collect();
    assert_eq!(
        post_records(&service, "crm", &queued, None).await.status,
        StatusCode::ACCEPTED
    );
    // SIGTERM once the first request is on its way (it takes 1.5 s).
    eventually("a request in flight", Duration::from_secs(20), || {
        slow.stats().requests > 0 || in_flight_now(&service)
    })
    .await;
    service.signal(libc::SIGTERM);
    let mut refused = None;
    for _ in 0..100 {
        let answer = post_records(&service, "crm", &[profile(200, "Late")], None).await;
        if answer.status != StatusCode::ACCEPTED {
            refused = Some(answer);
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let refused = refused.expect("intake refused while draining");
    assert_eq!(
        refused.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        refused.body
    );
    assert!(refused.headers.get("retry-after").is_some());
    let status = service.wait(Duration::from_secs(15));
    assert!(status.success(), "{status:?}: {}", service.log());
    assert_eq!(
        first_name(&slow, 100).as_deref(),
        Some("Later"),
        "the request in flight finished"
    );
    assert!(
        first_name(&slow, 109).as_deref() != Some("Later"),
        "the rest waits in the journal"
    );
    let service = Service::start(&dir, &[]);
    eventually("the rest after a restart", Duration::from_secs(30), || {
        (100..110).all(|id| first_name(&slow, id).as_deref() == Some("Later"))
    })
    .await;
    drop(service);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_period_has_its_run_with_the_records_received_in_it() {
    let simulator = simulator(
        10_000,
        Duration::from_secs(3_600),
        RateWindowKind::default(),
    )
    .await;
    let dir = scratch("service", "periods");
    store_tokens(&dir, &simulator, &[ADA]);
    destinations_file(&dir, &simulator, "", &[("crm", ADA, 4, "")]);
    // Periods of 3 s instead of an hour.
    let mut command_args = Service::start_args(&dir);
    command_args.push("--run-length-secs".into());
    command_args.push("3".into());
    let service = Service::start_with(&dir, &command_args, &[]);
    let first: Vec<String> = (1..=5).map(|id| profile(id, "First")).collect();
    assert_eq!(
        post_records(&service, "crm", &first, None).await.status,
        StatusCode::ACCEPTED
    );
    // Into the next period.
    let runs_now = || journal_json(&dir, "crm", &["runs", "--json"]);
    // The run holding the first batch (newest first) started in its period.
    let started = runs_now()[0]["started_ms"].as_u64().unwrap();
    let next_period = (started / 3_000 + 1) * 3_000;
    let wait = next_period.saturating_sub(outreach_host::clock::now_ms()) + 100;
    tokio::time::sleep(Duration::from_millis(wait)).await;
    let second: Vec<String> = (6..=8).map(|id| profile(id, "Second")).collect();
    assert_eq!(
        post_records(&service, "crm", &second, None).await.status,
        StatusCode::ACCEPTED
    );
    eventually("delivery", Duration::from_secs(10), || {
        first_name(&simulator, 8).as_deref() == Some("Second")
    })
    .await;
    let mut runs = Vec::new();
    for _ in 0..100 {
        // (A run that received nothing: the service started at the end of
        // a period.)
        runs = runs_now()
            .as_array()
            .unwrap()
            .iter()
            .filter(|run| run["received"] != 0)
            .cloned()
            .collect();
        if runs
            .iter()
            .map(|r| r["delivered"].as_u64().unwrap())
            .sum::<u64>()
            == 8
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Newest first: the second period's run receiving, the first closed.
    let summary: Vec<(&str, &str, u64, u64)> = runs
        .iter()
        .map(|r| {
            (
                r["kind"].as_str().unwrap(),
                r["status"].as_str().unwrap(),
                r["received"].as_u64().unwrap(),
                r["delivered"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [("stream", "receiving", 3, 3), ("stream", "closed", 5, 5)],
        "{runs:?}"
    );
    // Per audience too.
    let shown = journal_json(
        &dir,
        "crm",
        &["runs", "show", &runs[1]["id"].to_string(), "--json"],
    );
    assert_eq!(shown["audiences"]["aud"]["delivered"], 5, "{shown}");
}

/// `serve` with `text` as the destinations file, expected to refuse to
/// start: its standard error.
fn refused_to_serve(dir: &Path, text: &str) -> String {
    std::fs::write(dir.join("destinations.toml"), text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_outreach-host"))
        .arg("--cache-dir")
        .arg(dir.join("cache"))
        .args(["serve", "--destinations"])
        .arg(dir.join("destinations.toml"))
        .env("OUTREACH_ACCESS_TOKEN", "unused")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_destinations_file_with_problems_names_them_and_nothing_starts() {
    let dir = scratch("service", "problems");
    let stderr = refused_to_serve(
        &dir,
        "listen = \"0.0.0.0:0\"\n[[destinations]]\nname = \"crm\"\nconfig = { name = \"crm\" }\n[[destinations]]\nname = \"x y\"\nconfig = \"missing.json\"\n",
    );
    for expected in [
        "destination \"x y\": name",
        "destination \"x y\": config: cannot read",
        "listen: 0.0.0.0:0 is not a loopback address",
    ] {
        assert!(stderr.contains(expected), "{expected:?} not in {stderr}");
    }
    assert!(!dir.join("state").exists(), "nothing was started");
    // The file's problems fixed, but a configuration the component
    // refuses: named too.
    let stderr = refused_to_serve(
        &dir,
        "[[destinations]]\nname = \"crm\"\nconfig = { name = \"crm\" }\n",
    );
    assert!(
        stderr.contains("destination \"crm\": config (inline): identityMapping"),
        "{stderr}"
    );
    assert!(!dir.join("state").exists(), "nothing was started");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_destinations_file_serves() {
    let dir = scratch("service", "example");
    let example =
        std::fs::read_to_string(common::repo_root().join("deploy/destinations.example.toml"))
            .unwrap()
            .replace("/var/lib/outreach-host", "state");
    std::fs::write(dir.join("destinations.toml"), example).unwrap();
    std::fs::copy(
        common::repo_root().join("examples/destination.json"),
        dir.join("eu-sales.json"),
    )
    .unwrap();
    let service = Service::start(&dir, &[("OUTREACH_ACCESS_TOKEN", "unused")]);
    let ready: Value = serde_json::from_slice(
        &reqwest::get(service.url("/readyz"))
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        ready,
        json!({"status": "ready", "destinations": {"eu-sales": "accepting", "webinars": "accepting"}})
    );
}

#[test]
fn ingest_key_prints_a_key_and_the_hash_the_file_needs() {
    let out = Command::new(env!("CARGO_BIN_EXE_outreach-host"))
        .arg("ingest-key")
        .output()
        .unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8(out.stdout).unwrap();
    let field = |name: &str| {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or_else(|| panic!("no {name} in {stdout}"))
            .trim()
            .to_owned()
    };
    let (key, hash) = (field("key:"), field("hash:"));
    assert!(key.len() >= 43, "{key}");
    assert_eq!(hash, key_hash(&key));
    // `--hash` gives the same hash for the key on standard input.
    let mut child = Command::new(env!("CARGO_BIN_EXE_outreach-host"))
        .args(["ingest-key", "--hash"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(
        &mut child.stdin.take().unwrap(),
        format!("{key}\n").as_bytes(),
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(String::from_utf8(out.stdout).unwrap().trim(), hash);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sighup_sent_as_soon_as_it_listens_reloads_instead_of_ending_it() {
    let simulator = simulator(
        10_000,
        Duration::from_secs(3_600),
        RateWindowKind::default(),
    )
    .await;
    let dir = scratch("service", "early-sighup");
    store_tokens(&dir, &simulator, &[ADA]);
    destinations_file(&dir, &simulator, "", &[("crm", ADA, 4, "")]);
    // The moment between saying where it listens and watching its signals
    // is short: several starts give it every chance to show.
    for start in 1..=5 {
        let mut service = Service::start(&dir, &[]);
        service.signal(libc::SIGHUP);
        eventually("the reload", Duration::from_secs(10), || {
            service.log().matches(": reloaded").count() == start
                || service.child.try_wait().ok().flatten().is_some()
        })
        .await;
        assert!(
            service.child.try_wait().unwrap().is_none(),
            "start {start}: SIGHUP ended the service: {}",
            service.log()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_password_ends_every_session_at_the_reload() {
    let simulator = simulator(
        10_000,
        Duration::from_secs(3_600),
        RateWindowKind::default(),
    )
    .await;
    let dir = scratch("service", "password");
    store_tokens(&dir, &simulator, &[ADA]);
    let admin = |password: &str| {
        format!(
            "[admin]\nuser = \"ops\"\npassword_hash = \"{}\"\n",
            password_hash(password)
        )
    };
    destinations_file(
        &dir,
        &simulator,
        &admin("old password"),
        &[("crm", ADA, 4, "")],
    );
    let service = Service::start(&dir, &[]);
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let session = sign_in(&http, &service, "ops", "old password").await;
    let page = |session: String| {
        let http = http.clone();
        let url = service.url("/admin");
        async move {
            http.get(url)
                .header("cookie", session)
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    assert_eq!(page(session.clone()).await, StatusCode::OK);
    // The same file reloaded keeps the session: asked once the service
    // says it reloaded.
    let reloads = || service.log().matches(": reloaded").count();
    service.signal(libc::SIGHUP);
    eventually("the reload", Duration::from_secs(10), || reloads() == 1).await;
    assert_eq!(page(session.clone()).await, StatusCode::OK);
    // A new password: the old session ends.
    destinations_file(
        &dir,
        &simulator,
        &admin("new password"),
        &[("crm", ADA, 4, "")],
    );
    service.signal(libc::SIGHUP);
    let deadline = Instant::now() + Duration::from_secs(10);
    while page(session.clone()).await == StatusCode::OK {
        assert!(
            Instant::now() < deadline,
            "the session outlived the password"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let fresh = sign_in(&http, &service, "ops", "new password").await;
    assert_eq!(page(fresh).await, StatusCode::OK);
}
