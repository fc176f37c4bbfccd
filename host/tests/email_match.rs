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
use common::{Cli, loopback, runtime, scratch};
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
    run_config(&config(), simulator, journal, records).await
}

/// A `run` of `records` with configuration `config` over `journal`.
async fn run_config(
    config: &str,
    simulator: &Simulator,
    journal: &Path,
    records: &[String],
) -> Summary {
    let runtime = runtime();
    let destination = runtime.configure(config).unwrap().expect("config valid");
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
[admin]
user = "ops"
password_hash = "{}"

[[destinations]]
name = "by-email"
account = "ada@example.com"
api_base = "{}"
config = {{ name = "by-email", match = "email", emailMapping = {{ source = "personalEmail.address" }},
  attributeMappings = [ {{ source = "person.name.firstName", target = "firstName" }} ],
  audiences = [ {{ id = "aud-news", name = "Newsletter", mappingId = 4 }} ] }}
"#,
            outreach_host::service::keys::KeyHash::of(key),
            common::serve::password_hash("operator password"),
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
    assert_eq!(
        (stats.lookups, stats.creates, stats.updates_applied),
        (10, 3, 7)
    );
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
    // Connect asks for the scope matching by email needs (prospects.all:
    // Outreach's scopes are not additive), not the component's default.
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let session = common::serve::sign_in(&http, &service, "ops", "operator password").await;
    let overview = http
        .get(service.url("/admin"))
        .header("cookie", &session)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let csrf = common::between(&overview, "name=\"csrf\" value=\"", "\"");
    let connecting = http
        .post(service.url("/admin/connect"))
        .header("cookie", &session)
        .form(&[("csrf", csrf), ("account", "ada@example.com")])
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(connecting.contains("scope=prospects.all\""), "{connecting}");
    drop(service);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `outreach-host run` killed with SIGKILL four times while 5,000 records
/// for 1,000 emails (300 unknown to Outreach at the start) go through
/// their lookups, creates and updates, with 1 % of the answers lost after
/// the API applied them: never two prospects for one email, every email's
/// prospect holds its last record's values, and every record is counted
/// once.
#[test]
fn killed_runs_create_no_prospect_twice_and_lose_nothing() {
    use outreach_simulator::Faults;
    use rand::{Rng, SeedableRng};
    use std::process::Stdio;

    const EMAILS: u64 = 1_000;
    const VERSIONS: u64 = 5;
    const KILLS: usize = 4;
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let simulator = runtime
        .block_on(Simulator::start(
            SimulatorConfig {
                prospect_ids: 1..=EMAILS,
                prospect_emails: (1..=700)
                    .map(|i| (i, format!("e{i}@example.com")))
                    .collect(),
                rate_limit: 10_000_000,
                faults: Faults {
                    latency: Duration::from_millis(2),
                    drop_share: 0.01,
                    ..Faults::default()
                },
                ..SimulatorConfig::default()
            },
            loopback(),
        ))
        .unwrap();
    let dir = scratch("email-match", "kill");
    let config_file = dir.join("config.json");
    std::fs::write(&config_file, config()).unwrap();
    let input = dir.join("profiles.ndjson");
    // Every version of every email, the emails in an order that mixes the
    // known and the unknown (337 is prime to 1,000: each email once).
    let text: String = (0..VERSIONS)
        .flat_map(|version| {
            (0..EMAILS).map(move |k| {
                let i = k * 337 % EMAILS + 1;
                profile(&format!("e{i}@example.com"), &format!("v{version}")) + "\n"
            })
        })
        .collect();
    std::fs::write(&input, text).unwrap();
    let cli = Cli {
        dir: dir.clone(),
        token: simulator.issue_token("ada@example.com"),
    };
    let run_args = [
        "run",
        "--config",
        config_file.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--api-base",
        &simulator.api_base(),
        "--rate-limit",
        "10000000",
        "--json",
    ];
    let seed: u64 = rand::rng().random();
    eprintln!("kill schedule seed {seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut kills = 0;
    for attempt in 0..KILLS {
        let mut child = cli
            .command(&run_args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Killed once the API has seen a random number more requests: in
        // the middle of the deliveries, whichever step each is at.
        let after = rng.random_range(50..400);
        let seen = simulator.stats().requests;
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while simulator.stats().requests < seen + after
            && child.try_wait().unwrap().is_none()
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(1));
        }
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap();
            kills += 1;
        }
        child.wait().unwrap();
        let stats = simulator.stats();
        eprintln!(
            "attempt {attempt}: killed after {after} more requests; {} lookups, {} creates, {} updates so far",
            stats.lookups, stats.creates, stats.updates_applied
        );
    }
    let finish = cli.command(&run_args).output().unwrap();
    assert!(
        finish.status.success(),
        "the final run failed: {}",
        String::from_utf8_lossy(&finish.stdout)
    );
    assert_eq!(kills, KILLS, "a run ended before its kill");

    let mut duplicates = 0;
    let mut wrong = Vec::new();
    for i in 1..=EMAILS {
        let holders = simulator.prospects_with_email(&format!("e{i}@example.com"));
        duplicates += holders.len().saturating_sub(1);
        match holders.first() {
            Some(id) if i > 700 || *id == i => {
                let first = simulator.prospect(*id).unwrap()["firstName"].clone();
                if first != json!(format!("v{}", VERSIONS - 1)) {
                    wrong.push((i, first));
                }
            }
            other => wrong.push((i, json!(other))),
        }
    }
    let stats = simulator.stats();
    eprintln!(
        "{} records, {kills} kills: {} lookups, {} creates ({} refused as taken), {} updates, {} answers lost; {duplicates} duplicate prospects",
        EMAILS * VERSIONS,
        stats.lookups,
        stats.creates,
        stats.duplicates_refused,
        stats.updates_applied,
        stats.dropped_connections
    );
    assert_eq!(duplicates, 0, "two prospects for one email");
    assert!(
        wrong.is_empty(),
        "{} emails end wrong, e.g. {:?}",
        wrong.len(),
        wrong.first()
    );
    assert_eq!(stats.creates, 300, "each unknown email created once");

    let journal = Journal::open_existing(&dir.join("journal.sqlite")).unwrap();
    let runs = journal.runs(100).unwrap();
    let sum = |f: fn(&outreach_host::journal::RunRecord) -> u64| runs.iter().map(f).sum::<u64>();
    assert_eq!(sum(|r| r.counts.received), EMAILS * VERSIONS, "{runs:#?}");
    assert_eq!(sum(|r| r.counts.delivered), EMAILS * VERSIONS);
    assert_eq!(sum(|r| r.pending), 0);
    assert_eq!(journal.pending_updates().unwrap(), 0);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Companies synced as accounts: a known company's account is found and
/// linked, a new company's created once however many of its prospects are
/// delivered at the same time, and both are remembered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn companies_become_accounts_once_and_prospects_link_to_them() {
    let simulator = Simulator::start(
        SimulatorConfig {
            accounts: vec![(1, "Acme SA".into(), "acme.example".into())],
            ..simulator_config()
        },
        loopback(),
    )
    .await
    .unwrap();
    let dir = scratch("email-match", "accounts");
    let journal = dir.join("journal.sqlite");
    let config = json!({
        "name": "with accounts",
        "match": "email",
        "emailMapping": { "source": "personalEmail.address" },
        "companyMapping": { "domain": "employer.domain", "name": "employer.name" },
        "attributeMappings": [ { "source": "person.name.firstName", "target": "firstName" } ],
        "audiences": [ { "id": "aud-news", "name": "Newsletter", "mappingId": 4 } ]
    })
    .to_string();
    let employer = |i: u64| match i {
        1..=3 => json!({ "name": "Acme SA", "domain": "ACME.example" }),
        4..=8 => json!({ "name": "Globex", "domain": "globex.example" }),
        _ => Value::Null,
    };
    let records: Vec<String> = (1..=10)
        .map(|i| {
            let mut record: Value =
                serde_json::from_str(&profile(&format!("p{i}@example.com"), "Linked")).unwrap();
            record["employer"] = employer(i);
            record.to_string()
        })
        .collect();
    let summary = run_config(&config, &simulator, &journal, &records).await;
    assert_eq!(
        (summary.delivered, summary.rejected),
        (10, 0),
        "{summary:?}"
    );
    let stats = simulator.stats();
    assert_eq!(
        simulator.accounts_with_domain("globex.example").len(),
        1,
        "five prospects of one new company, one account: {stats:?}"
    );
    assert_eq!(stats.account_creates, 1);
    // One lookup per company: the deliveries waiting for Globex's account
    // found it remembered (the first kept its turn from lookup to create).
    assert_eq!(stats.account_lookups, 2, "{stats:?}");
    let globex = simulator.accounts_with_domain("globex.example")[0];
    for i in 1..=10 {
        let prospect = simulator.prospects_with_email(&format!("p{i}@example.com"))[0];
        let expected = match i {
            1..=3 => Some(1),
            4..=8 => Some(globex),
            _ => None,
        };
        assert_eq!(simulator.account_of(prospect), expected, "p{i}");
    }
    // Remembered: the next run looks up neither accounts nor prospects.
    let before = simulator.stats();
    let again = run_config(&config, &simulator, &journal, &records).await;
    assert_eq!(again.delivered, 10);
    let after = simulator.stats();
    assert_eq!(
        (
            after.account_lookups - before.account_lookups,
            after.lookups - before.lookups,
            after.updates_applied - before.updates_applied
        ),
        (0, 0, 10)
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Twenty prospects of one new company against an API that allows 4
/// requests a second: the deliveries waiting to seek the company's
/// account hold no place in the rate budget meanwhile, so the one seeking
/// it (lookup, then create) gets the window's next place — a window's
/// first request is one every other request waits for, and a waiting
/// delivery holding it would stall them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_waiting_for_one_account_leave_the_rate_budget_to_the_one_seeking_it() {
    use outreach_simulator::RateWindowKind;
    let simulator = Simulator::start(
        SimulatorConfig {
            prospect_ids: 1..=1,
            rate_limit: 4,
            rate_window: Duration::from_secs(1),
            rate_window_kind: RateWindowKind::Fixed,
            ..SimulatorConfig::default()
        },
        loopback(),
    )
    .await
    .unwrap();
    let dir = scratch("email-match", "turns");
    let config = json!({
        "name": "one company",
        "match": "email",
        "emailMapping": { "source": "personalEmail.address" },
        "companyMapping": { "domain": "employer.domain" },
        "attributeMappings": [ { "source": "person.name.firstName", "target": "firstName" } ]
    })
    .to_string();
    let records: Vec<String> = (1..=20)
        .map(|i| {
            json!({
                "personalEmail": { "address": format!("q{i}@example.com") },
                "person": { "name": { "firstName": "Q" } },
                "employer": { "domain": "initech.example" }
            })
            .to_string()
        })
        .collect();
    let journal = dir.join("journal.sqlite");
    let run = run_config(&config, &simulator, &journal, &records);
    let summary = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("delivery stalled");
    assert_eq!(summary.delivered, 20, "{summary:?}");
    let stats = simulator.stats();
    assert_eq!(
        (stats.account_lookups, stats.account_creates),
        (1, 1),
        "{stats:?}"
    );
    assert_eq!(stats.creates, 20);
    std::fs::remove_dir_all(&dir).unwrap();
}
