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
    (1..=10)
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
    let answer = reqwest::Client::new()
        .post(worker.url("/v1/destinations/by-email/records"))
        .header("content-type", "application/x-ndjson")
        .body(body(first))
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
