//! Matching prospects by email when the service scales out: a NATS
//! JetStream server on loopback (Debian's `nats-server`), two
//! `outreach-host serve --nats` workers, the simulator. Records posted to a
//! worker are looked up, created or updated by the partition's owner; what
//! it learns is kept in the `outreach_facts` bucket, so the other worker,
//! once it owns the partition, sends one update per known email.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::nats::{NatsCluster, Role};
use common::serve::{Service, eventually};
use common::{loopback, scratch};
use outreach_host::oauth::{TokenSet, TokenStore};
use outreach_simulator::{Simulator, SimulatorConfig};
use serde_json::json;

const ACCOUNT: &str = "ada@example.com";

fn destinations_file(dir: &Path, api_base: &str) {
    let text = format!(
        r#"drain_timeout_secs = 10
[cluster]
partitions = 2
lease_secs = 3
replicas = 1

[[destinations]]
name = "by-email"
account = "{ACCOUNT}"
api_base = "{api_base}"
config = {{ name = "by-email", match = "email", emailMapping = {{ source = "personalEmail.address" }}, attributeMappings = [ {{ source = "person.name.firstName", target = "firstName" }} ], audiences = [ {{ id = "aud", name = "Audience", mappingId = 7 }} ] }}
"#
    );
    std::fs::write(dir.join("destinations.toml"), text).unwrap();
}

fn worker(dir: &Path, nats: &NatsCluster, simulator: &Simulator, name: &str) -> Service {
    let mut args = Service::start_args(dir);
    args.extend(
        [
            "--nats",
            &nats.url(),
            "--worker",
            name,
            "--token-url",
            &simulator.token_url(),
        ]
        .map(str::to_owned),
    );
    let [user, password] = nats.env(Role::Worker);
    Service::start_with(dir, &args, &[(user.0, &user.1), (password.0, &password.1)])
}

/// The account's tokens, moved into the cluster as an operator would.
fn connect(dir: &Path, nats: &NatsCluster, simulator: &Simulator) {
    let store = TokenStore::new(dir.join("tokens.json"));
    let (access, refresh) = simulator.grant_tokens(ACCOUNT, "prospects.all");
    let now = outreach_host::clock::now_ms();
    store
        .put(
            ACCOUNT,
            &TokenSet {
                access_token: access,
                refresh_token: Some(refresh),
                expires_at: Some(now / 1000 + 7_200),
                scope: Some("prospects.all".into()),
                obtained_at_ms: now,
            },
        )
        .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_outreach-host"))
        .args([
            "--token-store",
            &dir.join("tokens.json").display().to_string(),
        ])
        .args([
            "cluster",
            "--nats",
            &nats.url(),
            "import-tokens",
            "--account",
            ACCOUNT,
        ])
        .env_remove("OUTREACH_ACCESS_TOKEN")
        .envs(nats.env(Role::Operator))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn body(first: &str) -> String {
    body_of(1..=10, first)
}

fn body_of(emails: std::ops::RangeInclusive<u64>, first: &str) -> String {
    emails
        .map(|i| {
            json!({
                "personalEmail": { "address": format!("p{i}@example.com") },
                "person": { "name": { "firstName": first } },
                "segmentMembership": { "ups": { "aud": { "status": "realized" } } }
            })
            .to_string()
                + "\n"
        })
        .collect()
}

async fn post(worker: &Service, first: &str) {
    post_body(worker, body(first)).await;
}

async fn post_body(worker: &Service, body: String) {
    let answer = reqwest::Client::new()
        .post(worker.url("/v1/destinations/by-email/records"))
        .header("content-type", "application/x-ndjson")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 202, "{}", answer.text().await.unwrap());
}

fn all_hold(simulator: &Simulator, first: &str) -> bool {
    (1..=10).all(|i| {
        let holders = simulator.prospects_with_email(&format!("p{i}@example.com"));
        holders.len() == 1
            && simulator
                .prospect(holders[0])
                .is_some_and(|p| p["firstName"] == json!(first))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cluster_workers_match_by_email_and_share_what_they_learnt() {
    let simulator = Simulator::start(
        SimulatorConfig {
            prospect_ids: 1..=10,
            prospect_emails: (1..=7).map(|i| (i, format!("p{i}@example.com"))).collect(),
            ..SimulatorConfig::default()
        },
        loopback(),
    )
    .await
    .unwrap();
    let dir = scratch("cluster-email", "facts");
    let nats = NatsCluster::start(&dir, 1);
    nats.wait_ready(Duration::from_secs(30)).await;
    destinations_file(&dir, &simulator.api_base());
    // The first worker makes the streams and buckets the tokens go into.
    let mut first = worker(&dir, &nats, &simulator, "w0");
    connect(&dir, &nats, &simulator);
    post(&first, "One").await;
    eventually("first sight delivered", Duration::from_secs(30), || {
        all_hold(&simulator, "One")
    })
    .await;
    let stats = simulator.stats();
    assert_eq!(
        (stats.lookups, stats.creates, stats.updates_applied),
        (10, 3, 7),
        "{stats:?}"
    );

    // The first worker goes; another takes its partitions over and knows
    // every email from the bucket: one update each, no lookup.
    first.signal(libc::SIGTERM);
    first.wait(Duration::from_secs(30));
    let second = worker(&dir, &nats, &simulator, "w1");
    post(&second, "Two").await;
    eventually("known emails delivered", Duration::from_secs(30), || {
        all_hold(&simulator, "Two")
    })
    .await;
    let stats = simulator.stats();
    assert_eq!(
        (stats.lookups, stats.creates, stats.updates_applied),
        (10, 3, 17),
        "{stats:?}"
    );
    drop(second);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The partition's owner SIGKILLed in the middle of lookups, creates and
/// updates (its steps were held in memory only): the next owner gets the
/// unacknowledged records again and starts their deliveries over, from
/// what the bucket remembers; a create whose answer died with the owner is
/// refused as taken and becomes a lookup. No prospect twice, every email's
/// last values, nothing lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_owner_mid_flow_creates_nothing_twice_and_loses_nothing() {
    use outreach_simulator::Faults;
    const EMAILS: u64 = 300;
    let simulator = Simulator::start(
        SimulatorConfig {
            prospect_ids: 1..=EMAILS,
            prospect_emails: (1..=EMAILS / 2)
                .map(|i| (i, format!("p{i}@example.com")))
                .collect(),
            faults: Faults {
                latency: Duration::from_millis(20),
                ..Faults::default()
            },
            ..SimulatorConfig::default()
        },
        loopback(),
    )
    .await
    .unwrap();
    let dir = scratch("cluster-email", "kill");
    let nats = NatsCluster::start(&dir, 1);
    nats.wait_ready(Duration::from_secs(30)).await;
    destinations_file(&dir, &simulator.api_base());
    let mut first = worker(&dir, &nats, &simulator, "w0");
    connect(&dir, &nats, &simulator);
    for version in 0..3 {
        post_body(&first, body_of(1..=EMAILS, &format!("v{version}"))).await;
    }
    eventually("deliveries under way", Duration::from_secs(30), || {
        simulator.stats().creates >= 10
    })
    .await;
    first.signal(libc::SIGKILL);
    first.wait(Duration::from_secs(10));
    let before = simulator.stats();
    let second = worker(&dir, &nats, &simulator, "w1");
    eventually(
        "every email's last values",
        Duration::from_secs(120),
        || all_hold_range(&simulator, 1..=EMAILS, "v2"),
    )
    .await;
    let stats = simulator.stats();
    eprintln!(
        "killed after {} lookups, {} creates, {} updates; in the end {} lookups, {} creates ({} refused as taken), {} updates",
        before.lookups,
        before.creates,
        before.updates_applied,
        stats.lookups,
        stats.creates,
        stats.duplicates_refused,
        stats.updates_applied
    );
    assert_eq!(stats.creates, EMAILS / 2, "each unknown email created once");
    for i in 1..=EMAILS {
        let holders = simulator.prospects_with_email(&format!("p{i}@example.com"));
        assert_eq!(holders.len(), 1, "p{i}: {holders:?}");
    }
    drop(second);
    let _ = std::fs::remove_dir_all(&dir);
}

fn all_hold_range(
    simulator: &Simulator,
    emails: std::ops::RangeInclusive<u64>,
    first: &str,
) -> bool {
    emails.into_iter().all(|i| {
        let holders = simulator.prospects_with_email(&format!("p{i}@example.com"));
        holders.len() == 1
            && simulator
                .prospect(holders[0])
                .is_some_and(|p| p["firstName"] == json!(first))
    })
}
