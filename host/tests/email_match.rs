//! Matching prospects by email (contract 0.3's deliveries of several
//! steps), end to end: the built component, driven by the host's `run`
//! over a journal, against the simulator on loopback.

use std::io::Cursor;
use std::path::Path;
use std::time::Duration;

use outreach_host::delivery::{self, DeliveryOptions, Input, StaticToken, Summary};
use outreach_host::http::ApiClient;
use outreach_host::journal::Journal;
use outreach_host::limiter::Limiter;
use outreach_simulator::{Simulator, SimulatorConfig, Stats};
use serde_json::{Value, json};

mod common;
use common::serve::{Service, store_tokens};
use common::{loopback, runtime, scratch};
use std::sync::Arc;

fn config() -> String {
    json!({
        "name": "by-email",
        "match": "email",
        "emailMapping": { "source": "personalEmail.address" },
        "attributeMappings": [ { "source": "person.name.firstName", "target": "firstName" } ],
        "audiences": [ { "id": "aud-news", "name": "Newsletter", "mappingId": 4 } ]
    })
    .to_string()
}

/// A profile known by its email only.
fn profile(email: &str, first: &str) -> String {
    json!({
        "personalEmail": { "address": email },
        "person": { "name": { "firstName": first } },
        "segmentMembership": { "ups": { "aud-news": { "status": "realized" } } }
    })
    .to_string()
}

/// Prospects 1..=10 exist; 1..=7 have the emails `p1@example.com`..
fn simulator_config() -> SimulatorConfig {
    SimulatorConfig {
        prospect_ids: 1..=10,
        prospect_emails: (1..=7).map(|i| (i, format!("p{i}@example.com"))).collect(),
        ..SimulatorConfig::default()
    }
}

async fn run(simulator: &Simulator, journal: &Path, records: &[String]) -> Summary {
    let runtime = runtime();
    let destination = runtime.configure(&config()).unwrap().expect("config valid");
    let limiter = Limiter::new(&runtime.describe().rate_limit).unwrap();
    let api = ApiClient::new(&simulator.api_base(), Duration::from_secs(5)).unwrap();
    let options = DeliveryOptions {
        journal: Some(Arc::new(Journal::open(journal).unwrap())),
        ..DeliveryOptions::default()
    };
    let input = Input::reader(Cursor::new(records.join("\n")), None);
    let token = simulator.issue_token("ada@example.com");
    delivery::run(
        destination,
        &api,
        &limiter,
        &StaticToken(token),
        input,
        &options,
    )
    .await
    .expect("run completes")
}

fn requests_between(before: &Stats, after: &Stats) -> (u64, u64, u64) {
    (
        after.lookups - before.lookups,
        after.creates - before.creates,
        after.updates_applied - before.updates_applied,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn profiles_matched_by_email_update_known_prospects_create_the_rest_and_remember_both() {
    let simulator = Simulator::start(simulator_config(), loopback())
        .await
        .unwrap();
    let dir = scratch("email-match", "remember");
    let journal = dir.join("journal.sqlite");

    // First sight: p1..p7 exist (written as Outreach would not: mixed case,
    // spaces), p8..p10 do not.
    let first: Vec<String> = (1..=10)
        .map(|i| profile(&format!("  P{i}@Example.com "), &format!("First {i}")))
        .collect();
    let before = simulator.stats();
    let summary = run(&simulator, &journal, &first).await;
    assert_eq!(
        (summary.delivered, summary.rejected),
        (10, 0),
        "{summary:?}"
    );
    let after = simulator.stats();
    assert_eq!(
        requests_between(&before, &after),
        (10, 3, 7),
        "a lookup each, then 3 creates and 7 updates"
    );
    assert_eq!(summary.requests_sent, 20);
    assert_eq!((summary.lookups_sent, summary.creates_sent), (10, 3));
    for i in 1..=10 {
        let email = format!("p{i}@example.com");
        let holders = simulator.prospects_with_email(&email);
        assert_eq!(holders.len(), 1, "{email}: {holders:?}");
        let prospect = simulator.prospect(holders[0]).unwrap();
        assert_eq!(prospect["firstName"], json!(format!("First {i}")));
        assert_eq!(prospect["custom4"], json!("realized"));
        if i <= 7 {
            assert_eq!(holders[0], i, "{email} is the prospect that had it");
        }
    }

    // Seen before, in a new process: one request each, no lookup.
    let second: Vec<String> = (1..=10)
        .map(|i| profile(&format!("p{i}@example.com"), &format!("Second {i}")))
        .collect();
    let before = simulator.stats();
    let summary = run(&simulator, &journal, &second).await;
    assert_eq!(summary.delivered, 10, "{summary:?}");
    assert_eq!(requests_between(&before, &simulator.stats()), (0, 0, 10));
    assert_eq!(summary.requests_sent, 10);
    for i in 1..=10 {
        let id = simulator.prospects_with_email(&format!("p{i}@example.com"))[0];
        assert_eq!(
            simulator.prospect(id).unwrap()["firstName"],
            json!(format!("Second {i}"))
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remembered_prospect_that_is_gone_is_looked_up_again_and_nothing_is_lost() {
    let dir = scratch("email-match", "stale");
    let journal = dir.join("journal.sqlite");
    // The journal remembers p1..p7 as prospects 1..7 of one account ...
    let old = Simulator::start(simulator_config(), loopback())
        .await
        .unwrap();
    let first: Vec<String> = (1..=7)
        .map(|i| profile(&format!("p{i}@example.com"), "Old"))
        .collect();
    assert_eq!(run(&old, &journal, &first).await.delivered, 7);
    drop(old);
    // ... and meets an account where those prospects are gone (merged
    // away) and the emails belong to prospects 101..107.
    let new = Simulator::start(
        SimulatorConfig {
            prospect_ids: 101..=107,
            prospect_emails: (1..=7)
                .map(|i| (100 + i, format!("p{i}@example.com")))
                .collect(),
            ..SimulatorConfig::default()
        },
        loopback(),
    )
    .await
    .unwrap();
    let records: Vec<String> = (1..=7)
        .map(|i| profile(&format!("p{i}@example.com"), "New"))
        .collect();
    let summary = run(&new, &journal, &records).await;
    assert_eq!((summary.delivered, summary.rejected), (7, 0), "{summary:?}");
    let stats = new.stats();
    // The remembered ids were tried (404), forgotten, and looked up again.
    assert_eq!(
        (stats.lookups, stats.creates, stats.updates_applied),
        (7, 0, 7)
    );
    assert_eq!(
        stats.rejected, 7,
        "the 7 updates of prospects that are gone"
    );
    for i in 1..=7 {
        assert_eq!(
            new.prospect(100 + i).unwrap()["firstName"],
            Value::from("New")
        );
    }
    // What was learnt instead is remembered: no lookup the next time.
    let again = run(&new, &journal, &records).await;
    assert_eq!(again.delivered, 7);
    assert_eq!(new.stats().lookups, 7);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `serve` with a destination that matches by email: records posted to
/// its intake are looked up, created or updated, and `/metrics` counts
/// the lookups and creates apart from the other requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_served_destination_matches_by_email_and_counts_its_steps() {
    let simulator = Simulator::start(simulator_config(), loopback())
        .await
        .unwrap();
    let dir = scratch("email-match", "serve");
    store_tokens(&dir, &simulator, &["ada@example.com"]);
    let key = "email-test-ingest-key";
    std::fs::write(
        dir.join("destinations.toml"),
        format!(
            r#"state_dir = "state"
ingest_keys = ["{}"]

[[destinations]]
name = "by-email"
account = "ada@example.com"
api_base = "{}"
config = {{ name = "by-email", match = "email", emailMapping = {{ source = "personalEmail.address" }},
  attributeMappings = [ {{ source = "person.name.firstName", target = "firstName" }} ],
  audiences = [ {{ id = "aud-news", name = "Newsletter", mappingId = 4 }} ] }}
"#,
            outreach_host::service::keys::KeyHash::of(key),
            simulator.api_base()
        ),
    )
    .unwrap();
    let service = Service::start(&dir, &[]);
    let body: String = (1..=10)
        .map(|i| profile(&format!("p{i}@example.com"), "Served") + "\n")
        .collect();
    let client = reqwest::Client::new();
    let answer = client
        .post(service.url("/v1/destinations/by-email/records"))
        .bearer_auth(key)
        .header("content-type", "application/x-ndjson")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), reqwest::StatusCode::ACCEPTED);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while simulator.stats().updates_applied + simulator.stats().creates < 10 {
        assert!(
            std::time::Instant::now() < deadline,
            "not delivered: {:?}",
            simulator.stats()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let stats = simulator.stats();
    assert_eq!((stats.lookups, stats.creates, stats.updates_applied), (10, 3, 7));
    for i in 1..=10 {
        let holders = simulator.prospects_with_email(&format!("p{i}@example.com"));
        assert_eq!(holders.len(), 1);
        assert_eq!(
            simulator.prospect(holders[0]).unwrap()["firstName"],
            json!("Served")
        );
    }
    let metrics = client
        .get(service.url("/metrics"))
        .bearer_auth(key)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for (purpose, count) in [("lookup", 10), ("create", 3)] {
        let line = format!(
            "outreach_host_step_requests_total{{destination=\"by-email\",purpose=\"{purpose}\"}} {count}"
        );
        assert!(metrics.contains(&line), "{line} not in:\n{metrics}");
    }
    assert!(
        metrics.contains("outreach_host_requests_total{account=\"ada@example.com\"} 20"),
        "{metrics}"
    );
    drop(service);
    std::fs::remove_dir_all(&dir).unwrap();
}
