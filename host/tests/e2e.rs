//! End-to-end: the built Outreach component, driven by the host, against
//! the simulator on loopback.

use std::io::Cursor;
use std::time::{Duration, Instant};

use destination_types::PlanOutcome;
use outreach_host::delivery::{self, DeliveryOptions, Input, StaticToken, Summary};
use outreach_host::http::ApiClient;
use outreach_host::journal::Journal;
use outreach_host::limiter::Limiter;
use outreach_simulator::{Faults, RateWindowKind, ResetRounding, Simulator, SimulatorConfig};
use serde_json::{Value, json};

mod common;
use common::{loopback, outreach_host, repo_root, runtime, scratch, temp_path};
use std::sync::Arc;

const CONFIG: &str = r#"{
  "name": "e2e",
  "identityMapping": { "source": "Oid", "target": "OutreachId" },
  "attributeMappings": [
    { "source": "person.name.firstName", "target": "firstName" },
    { "source": "person.jobTitle", "target": "title" }
  ],
  "audiences": [
    { "id": "aud-news", "name": "Newsletter", "mappingId": 4 },
    { "id": "aud-webinar", "name": "Webinar", "mappingId": 33 }
  ]
}"#;

fn profile(id: u64, first: &str, status: &str) -> String {
    common::Profile::new(id)
        .first_name(first)
        .job_title(&format!("Title {id}"))
        .audience("aud-news", status)
        .to_string()
}

struct Job {
    summary: Summary,
    dead_letters: Vec<Value>,
}

async fn run_job(
    simulator: &Simulator,
    config: &str,
    records: &[String],
    options: DeliveryOptions,
    token: String,
) -> Job {
    let runtime = runtime();
    let destination = runtime.configure(config).unwrap().expect("config valid");
    let limiter = Limiter::new(&runtime.describe().rate_limit).unwrap();
    let api = ApiClient::new(&simulator.api_base(), Duration::from_secs(5)).unwrap();
    let letters_path = temp_path("e2e", "letters.ndjson");
    let options = DeliveryOptions {
        dead_letters: Some(letters_path.clone()),
        ..options
    };
    let input = Input::reader(Cursor::new(records.join("\n")), None);
    let summary = delivery::run(
        destination,
        &api,
        &limiter,
        &StaticToken(token),
        input,
        &options,
    )
    .await
    .expect("run completes");
    let dead_letters = std::fs::read_to_string(&letters_path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).expect("dead letters are JSON lines"))
        .collect();
    std::fs::remove_file(&letters_path).unwrap();
    Job {
        summary,
        dead_letters,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_example_profile_lands_with_exactly_the_planned_fields() {
    let simulator = Simulator::start(
        SimulatorConfig {
            prospect_ids: 1000..=3989,
            ..SimulatorConfig::default()
        },
        loopback(),
    )
    .await
    .unwrap();
    let token = simulator.issue_token("ada@example.com");
    let root = repo_root();
    let config = std::fs::read_to_string(root.join("examples/destination.json")).unwrap();
    let text = std::fs::read_to_string(root.join("examples/profiles.ndjson")).unwrap();
    let records: Vec<String> = text.lines().map(str::to_owned).collect();

    let job = run_job(
        &simulator,
        &config,
        &records,
        DeliveryOptions::default(),
        token,
    )
    .await;
    let s = &job.summary;
    assert_eq!(s.received, 3000);
    assert_eq!(s.fatal, None);
    assert_eq!(
        s.received,
        s.delivered + s.rejected + s.skipped + s.not_sent
    );

    // What the component planned is what must now be in the store.
    let runtime = runtime();
    let mut destination = runtime.configure(&config).unwrap().unwrap();
    let planned = destination.plan(&records).unwrap();
    let mut expected_delivered = 0;
    for outcome in &planned {
        let PlanOutcome::Send(requests) = outcome else {
            continue;
        };
        let body: Value = serde_json::from_str(&requests[0].body).unwrap();
        let id = body["data"]["id"].as_u64().unwrap();
        let Some(stored) = simulator.prospect(id) else {
            // Ids 3990..=3999 do not exist: dead letters, checked below.
            assert!(id >= 3990, "prospect {id} missing from the simulator");
            continue;
        };
        expected_delivered += 1;
        for (attribute, value) in body["data"]["attributes"].as_object().unwrap() {
            assert_eq!(
                stored.get(attribute),
                Some(value),
                "prospect {id}.{attribute}"
            );
        }
    }
    assert_eq!(s.delivered, expected_delivered);

    // Spot checks written by hand from examples/profiles.ndjson, line 1.
    let first = simulator.prospect(1000).unwrap();
    assert_eq!(first["firstName"], "Aiko");
    assert_eq!(first["lastName"], "Ngata");
    assert_eq!(first["addressCity"], "Kraków");
    assert_eq!(first["custom4"], "Removed"); // exited, labelled
    assert_eq!(first["custom7"], "Active"); // realized, labelled
    assert_eq!(first["emails"], json!(["aiko.0@example.com"]));

    // A record the examples refuse (line 150: no Oid) left prospect 1149
    // as seeded.
    assert_eq!(simulator.prospect(1149).unwrap()["firstName"], "Seed");

    // The activated count per audience is what the simulator holds.
    let mappings = [
        ("7f4b9c2e-0d1a-4c55-9a8e-newsletter", "custom4"),
        ("91aa0d3f-5b2c-4f1e-8d7a-churnrisk", "custom7"),
        ("c0ffee00-1234-4abc-9def-vipclients", "custom12"),
        ("5e1f7a9b-2c3d-4e5f-8a9b-webinar2026", "custom33"),
    ];
    for (audience, field) in mappings {
        let held = (1000..=3989)
            .filter(|id| {
                simulator
                    .prospect(*id)
                    .is_some_and(|p| p.get(field).is_some_and(|v| !v.is_null()))
            })
            .count() as u64;
        assert_eq!(s.audiences[audience].delivered, held, "{audience}");
    }

    // Every failure is a dead letter with a readable reason.
    assert_eq!(job.dead_letters.len() as u64, s.rejected + s.skipped);
    let not_found: Vec<&Value> = job
        .dead_letters
        .iter()
        .filter(|l| l["code"] == "prospect-not-found")
        .collect();
    assert_eq!(not_found.len() as u64, s.failures["prospect-not-found"]);
    assert!(!not_found.is_empty());
    for letter in not_found {
        assert_eq!(letter["status"], 404);
        let reason = letter["reason"].as_str().unwrap();
        assert!(reason.contains("has no prospect with this id"), "{reason}");
        assert!(letter["line"].as_u64().unwrap() > 2990);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_low_rate_limit_delays_but_never_drops_and_does_not_hammer() {
    let simulator = Simulator::start(
        SimulatorConfig {
            prospect_ids: 1..=1000,
            rate_limit: 40,
            rate_window: Duration::from_secs(1),
            ..SimulatorConfig::default()
        },
        loopback(),
    )
    .await
    .unwrap();
    let token = simulator.issue_token("ada@example.com");
    let records: Vec<String> = (1..=150)
        .map(|id| profile(id, "Rate", "realized"))
        .collect();
    let concurrency = 4;
    let start = Instant::now();
    let job = run_job(
        &simulator,
        CONFIG,
        &records,
        DeliveryOptions {
            concurrency,
            ..DeliveryOptions::default()
        },
        token,
    )
    .await;
    let elapsed = start.elapsed();
    let s = &job.summary;
    assert_eq!(s.delivered, 150, "{s:?}");
    assert!(job.dead_letters.is_empty());
    // 150 requests at 40 per second need at least 3 more windows.
    assert!(elapsed >= Duration::from_secs(3), "{elapsed:?}");
    // The host stops when Remaining hits 0: only requests already in flight
    // can meet a 429, at most `concurrency` per window.
    let stats = simulator.stats();
    assert_eq!(stats.rate_limited, s.rate_limited);
    let windows = elapsed.as_secs() + 2;
    assert!(
        s.rate_limited <= concurrency as u64 * windows,
        "{} 429s in {windows} windows",
        s.rate_limited
    );
    for id in 1..=150 {
        assert_eq!(simulator.prospect(id).unwrap()["custom4"], "realized");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fixed_window_is_used_in_full_with_at_most_one_429_per_window() {
    // Every request counts in a fixed window, 429s included: requests in
    // flight when the count runs out must hold their places, or they meet
    // 429s and spend the next window's budget too.
    const LIMIT: u32 = 20;
    const RECORDS: u64 = 60;
    const CONCURRENCY: u32 = 8;
    let window = Duration::from_secs(2);
    let simulator = Simulator::start(
        SimulatorConfig {
            prospect_ids: 1..=1000,
            rate_limit: LIMIT,
            rate_window: window,
            rate_window_kind: RateWindowKind::Fixed,
            ..SimulatorConfig::default()
        },
        loopback(),
    )
    .await
    .unwrap();
    let user = "ada@example.com";
    let token = simulator.issue_token(user);
    let records: Vec<String> = (1..=RECORDS)
        .map(|id| profile(id, "Fixed", "realized"))
        .collect();
    let job = run_job(
        &simulator,
        CONFIG,
        &records,
        DeliveryOptions {
            concurrency: CONCURRENCY as usize,
            ..DeliveryOptions::default()
        },
        token,
    )
    .await;
    let s = &job.summary;
    assert_eq!(s.delivered, RECORDS, "{s:?}");
    assert_eq!(simulator.stats().rate_limited, s.rate_limited);
    // What each window counted, from the first request on: the windows
    // follow each other with none skipped, every window between the first
    // (which the run may have joined late) and the last is used (in full
    // but for the requests in flight, below), and none counts more than
    // one request refused. (Without places held
    // for requests in flight, windows counted 23 to 26.)
    let windows = simulator.rate_windows(user);
    let counts: Vec<u32> = windows.iter().map(|(_, used)| *used).collect();
    assert!(
        windows.windows(2).all(|w| w[1].0 == w[0].0 + window),
        "a window went unused: {windows:?}"
    );
    assert!(
        counts.len() <= 5,
        "60 requests at 20 per window, a few spilling over: {counts:?}"
    );
    assert!(counts.iter().all(|used| *used <= LIMIT + 1), "{counts:?}");
    // What a window may leave unused: a request sent just before a
    // boundary is counted after it, and a request the API has answered
    // still holds its place until the component has read the answer (the
    // answers read meanwhile may already count it). Both are bounded by
    // the requests in flight; on a loaded machine they are not rare.
    if counts.len() > 2 {
        let middle = &counts[1..counts.len() - 1];
        assert!(
            middle.iter().all(|used| *used + CONCURRENCY >= LIMIT),
            "{counts:?}"
        );
    }
    assert_eq!(
        u64::from(counts.iter().sum::<u32>()),
        RECORDS + s.rate_limited,
        "every request counted, 429s included: {counts:?}"
    );
    assert!(s.rate_limited <= windows.len() as u64, "{counts:?}");
    for id in 1..=RECORDS {
        assert_eq!(simulator.prospect(id).unwrap()["custom4"], "realized");
    }
}

/// A run against windows of 20 requests per 3 s whose resets are written
/// rounded down, on a server clock `offset_ms` off ours: at every turn one
/// request goes first and the others follow its answer, so a window's turn
/// costs at most one 429, and every window is used in full.
async fn turns_cost_at_most_one_429(kind: RateWindowKind, offset_ms: i64) {
    const LIMIT: u32 = 20;
    const RECORDS: u64 = 80;
    const CONCURRENCY: u32 = 16;
    let window = Duration::from_secs(3);
    let simulator = Simulator::start(
        SimulatorConfig {
            prospect_ids: 1..=1000,
            rate_limit: LIMIT,
            rate_window: window,
            rate_window_kind: kind,
            reset_rounding: ResetRounding::Down,
            clock_offset_ms: offset_ms,
            ..SimulatorConfig::default()
        },
        loopback(),
    )
    .await
    .unwrap();
    let user = "ada@example.com";
    let token = simulator.issue_token(user);
    let records: Vec<String> = (1..=RECORDS)
        .map(|id| profile(id, "Turn", "realized"))
        .collect();
    let job = run_job(
        &simulator,
        CONFIG,
        &records,
        DeliveryOptions {
            concurrency: CONCURRENCY as usize,
            ..DeliveryOptions::default()
        },
        token,
    )
    .await;
    let s = &job.summary;
    assert_eq!(s.delivered, RECORDS, "{s:?}");
    assert_eq!(simulator.stats().rate_limited, s.rate_limited);
    let windows = simulator.rate_windows(user);
    let counts: Vec<u32> = windows.iter().map(|(_, used)| *used).collect();
    eprintln!(
        "{kind:?} windows, server clock {offset_ms:+} ms: {} 429s, windows counted {counts:?}",
        s.rate_limited
    );
    // Without a probe at each turn, about the concurrency met a 429 at
    // every turn (16 × 3 here).
    assert!(
        s.rate_limited <= windows.len() as u64 + 1,
        "{} 429s in {} windows: {counts:?}",
        s.rate_limited,
        windows.len()
    );
    if kind == RateWindowKind::Fixed {
        // Every request counts, 429s too; the windows follow each other
        // with none skipped and every one but the last is used in full.
        assert!(
            windows.windows(2).all(|w| w[1].0 == w[0].0 + window),
            "a window went unused: {windows:?}"
        );
        let admitted: Vec<u32> = counts[..counts.len() - 1]
            .iter()
            .map(|used| used.min(&LIMIT))
            .copied()
            .collect();
        assert!(
            admitted[1..].iter().all(|used| *used == LIMIT),
            "a window's budget went unused: {counts:?}"
        );
    } else {
        // Windows start with the first request after the last one ended
        // and count what they admit: every one but the last is full.
        assert!(
            counts[..counts.len() - 1].iter().all(|used| *used == LIMIT),
            "{counts:?}"
        );
    }
    for id in 1..=RECORDS {
        assert_eq!(simulator.prospect(id).unwrap()["custom4"], "realized");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_rounded_down_costs_at_most_one_429_per_window() {
    turns_cost_at_most_one_429(RateWindowKind::FromFirstRequest, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_clock_2_s_behind_costs_at_most_one_429_per_window() {
    turns_cost_at_most_one_429(RateWindowKind::Fixed, -2_000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_clock_2_s_ahead_costs_no_window() {
    turns_cost_at_most_one_429(RateWindowKind::Fixed, 2_000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_errors_and_dropped_connections_lose_nothing() {
    let simulator = Simulator::start(
        SimulatorConfig {
            prospect_ids: 1..=1000,
            faults: Faults {
                error_share: 0.2,
                drop_share: 0.1,
                latency: Duration::from_millis(2),
            },
            ..SimulatorConfig::default()
        },
        loopback(),
    )
    .await
    .unwrap();
    let token = simulator.issue_token("ada@example.com");
    let records: Vec<String> = (1..=300)
        .map(|id| profile(id, "Fault", "existing"))
        .collect();
    let job = run_job(
        &simulator,
        CONFIG,
        &records,
        DeliveryOptions {
            max_attempts: 20,
            backoff_base: Duration::from_millis(5),
            backoff_max: Duration::from_millis(50),
            ..DeliveryOptions::default()
        },
        token,
    )
    .await;
    let s = &job.summary;
    assert_eq!(s.delivered, 300, "{:?}", job.dead_letters.first());
    let stats = simulator.stats();
    assert!(stats.injected_errors > 20, "{stats:?}");
    assert!(stats.dropped_connections > 10, "{stats:?}");
    assert!(s.retries >= stats.injected_errors + stats.dropped_connections);
    for id in 1..=300 {
        let p = simulator.prospect(id).unwrap();
        assert_eq!(p["firstName"], "Fault");
        assert_eq!(p["custom4"], "existing");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejections_become_dead_letters_naming_the_audience() {
    // This account has only 10 custom fields: the Webinar audience's
    // Mapping ID 33 does not exist.
    let simulator = Simulator::start(
        SimulatorConfig {
            prospect_ids: 1..=10,
            custom_fields: 10,
            ..SimulatorConfig::default()
        },
        loopback(),
    )
    .await
    .unwrap();
    let token = simulator.issue_token("ada@example.com");
    let webinar = json!({
        "identityMap": { "Oid": [ { "id": "5" } ] },
        "segmentMembership": { "ups": { "aud-webinar": { "status": "realized" } } }
    })
    .to_string();
    let records = vec![
        profile(1, "Ok", "realized"),
        webinar,
        profile(404, "Ghost", "realized"),
    ];
    let job = run_job(
        &simulator,
        CONFIG,
        &records,
        DeliveryOptions::default(),
        token,
    )
    .await;
    let s = &job.summary;
    assert_eq!((s.delivered, s.rejected), (1, 2), "{s:?}");
    assert_eq!(s.audiences["aud-webinar"].rejected, 1);
    assert_eq!(s.audiences["aud-news"].delivered, 1);
    assert_eq!(s.audiences["aud-news"].rejected, 1);

    let bad_mapping = job
        .dead_letters
        .iter()
        .find(|l| l["line"] == 2)
        .expect("the webinar record is a dead letter");
    assert_eq!(bad_mapping["status"], 422);
    assert_eq!(bad_mapping["code"], "validation-error");
    assert_eq!(
        bad_mapping["reason"],
        "prospect 5: Outreach rejected the update: audience \"Webinar\" (id aud-webinar, Mapping ID 33) was refused in custom33: custom33 is not a valid attribute.; check that Mapping ID 33 names an existing Outreach custom field"
    );
    assert_eq!(bad_mapping["request"]["path"], "/prospects/5");
    assert_eq!(bad_mapping["record"]["identityMap"]["Oid"][0]["id"], "5");

    let ghost = job.dead_letters.iter().find(|l| l["line"] == 3).unwrap();
    assert_eq!(ghost["status"], 404);
    assert_eq!(ghost["code"], "prospect-not-found");
    assert!(simulator.prospect(5).unwrap().get("custom33").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_credentials_stop_the_run_and_keep_every_record() {
    let simulator = Simulator::start(SimulatorConfig::default(), loopback())
        .await
        .unwrap();
    let records: Vec<String> = (1..=20).map(|id| profile(id, "Nope", "realized")).collect();
    let journal_file = temp_path("e2e", "refused.sqlite");
    let journal = Arc::new(Journal::open(&journal_file).unwrap());
    let options = DeliveryOptions {
        concurrency: 2,
        journal: Some(journal.clone()),
        ..DeliveryOptions::default()
    };
    let job = run_job(
        &simulator,
        CONFIG,
        &records,
        options.clone(),
        "not-a-valid-token".into(),
    )
    .await;
    let s = &job.summary;
    assert_eq!(s.delivered, 0);
    assert_eq!(s.not_sent, 20);
    assert_eq!(s.pending, 20);
    assert!(s.login_required);
    assert!(
        s.fatal
            .as_deref()
            .unwrap()
            .contains("`outreach-host login` again"),
        "{s:?}"
    );
    // Nothing was refused by the API: the updates wait in the journal.
    assert!(job.dead_letters.is_empty(), "{:?}", job.dead_letters);
    assert_eq!(journal.pending_records(None).unwrap(), 20);
    // One refresh per in-flight request at most, then the run stopped.
    assert!(
        simulator.stats().unauthorized <= 4,
        "{:?}",
        simulator.stats()
    );
    let stopped = journal.run(s.run).unwrap();
    assert_eq!(stopped.status, "stopped");
    assert!(
        !serde_json::to_string(&stopped)
            .unwrap()
            .contains("not-a-valid-token")
    );

    // With working credentials the next run (no new input) delivers them,
    // credited to the run that received them.
    let token = simulator.issue_token("ada@example.com");
    let next = run_job(&simulator, CONFIG, &[], options, token).await;
    assert_eq!(next.summary.resumed, 20);
    assert_eq!(next.summary.received, 0);
    assert_eq!(next.summary.pending, 0);
    assert_eq!(next.summary.updates_delivered, 20);
    assert_eq!(journal.run(s.run).unwrap().counts.delivered, 20);
    assert_eq!(simulator.stats().updates_applied, 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_sends_nothing() {
    let simulator = Simulator::start(SimulatorConfig::default(), loopback())
        .await
        .unwrap();
    let config = temp_path("e2e", "dry-config.json");
    let input = temp_path("e2e", "dry-input.ndjson");
    std::fs::write(&config, CONFIG).unwrap();
    std::fs::write(
        &input,
        [profile(1, "Dry", "realized"), "not json".into()].join("\n"),
    )
    .unwrap();
    let api_base = simulator.api_base();
    let home = scratch("e2e", "dry-run-home");
    let output = tokio::task::spawn_blocking(move || {
        outreach_host(&home)
            .args(["run", "--dry-run", "--config"])
            .arg(&config)
            .arg("--input")
            .arg(&input)
            .args(["--api-base", &api_base])
            .env("OUTREACH_ACCESS_TOKEN", "unused")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8(output.stdout).unwrap();
    let lines: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    assert_eq!(lines[0]["outcome"]["send"][0]["path"], "/prospects/1");
    assert_eq!(lines[1]["line"], 2);
    assert_eq!(lines[1]["outcome"]["invalid"]["code"], "not-json");
    assert_eq!(output.status.code(), Some(3));
    assert_eq!(simulator.stats().requests, 0);
    assert_eq!(simulator.prospect(1).unwrap()["firstName"], "Seed");
}

#[test]
fn the_demo_prints_a_summary_per_audience() {
    let output = outreach_host(&scratch("e2e", "demo-home"))
        .current_dir(repo_root())
        .args(["demo", "--json", "--dead-letters"])
        .arg(temp_path("e2e", "demo-letters.ndjson"))
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let summary: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(summary["received"], 3000);
    assert_eq!(summary["audiences"].as_object().unwrap().len(), 4);
    let delivered = summary["delivered"].as_u64().unwrap();
    assert!(delivered > 2900 && delivered < 3000, "{summary}");
    let _ = std::fs::remove_file(temp_path("e2e", "demo-letters.ndjson"));
}
