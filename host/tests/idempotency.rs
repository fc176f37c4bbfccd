//! `Idempotency-Key` on the intake: a key belongs to the producer that
//! sent it (its ingest key) and to the body it came with. Another
//! producer's key of the same name is its own; the same key with another
//! body is refused with 422 and takes nothing; a repeat of the same body
//! gets the first answer.

mod common;

use std::time::Duration;

use common::serve::{Service, eventually, first_name, store_tokens};
use common::{loopback, scratch};
use outreach_simulator::{Simulator, SimulatorConfig};
use reqwest::StatusCode;
use serde_json::Value;

const ADA: &str = "ada@example.com";
const PRODUCER_A: &str = "producer-a-key";
const PRODUCER_B: &str = "producer-b-key";

fn key_hash(key: &str) -> String {
    outreach_host::service::keys::KeyHash::of(key).to_string()
}

fn profile(id: u64, first: &str) -> String {
    common::Profile::new(id).first_name(first).to_string() + "\n"
}

async fn post(
    service: &Service,
    producer: &str,
    key: &str,
    body: String,
) -> (StatusCode, Option<String>, Value) {
    let response = reqwest::Client::new()
        .post(service.url("/v1/destinations/crm/records"))
        .header("content-type", "application/x-ndjson")
        .header("authorization", format!("Bearer {producer}"))
        .header("idempotency-key", key)
        .body(body)
        .send()
        .await
        .unwrap();
    let status = response.status();
    let replayed = response
        .headers()
        .get("idempotent-replayed")
        .map(|v| v.to_str().unwrap().to_owned());
    let body = serde_json::from_slice(&response.bytes().await.unwrap()).unwrap_or(Value::Null);
    (status, replayed, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_belongs_to_its_producer_and_its_body() {
    let simulator = Simulator::start(
        SimulatorConfig {
            prospect_ids: 1..=100,
            ..SimulatorConfig::default()
        },
        loopback(),
    )
    .await
    .unwrap();
    let dir = scratch("idempotency", "single");
    store_tokens(&dir, &simulator, &[ADA]);
    std::fs::write(
        dir.join("destinations.toml"),
        format!(
            r#"ingest_keys = ["{}", "{}"]
[[destinations]]
name = "crm"
account = "{ADA}"
api_base = "{}"
config = {{ name = "crm", identityMapping = {{ source = "Oid", target = "OutreachId" }}, attributeMappings = [ {{ source = "person.name.firstName", target = "firstName" }} ], audiences = [] }}
"#,
            key_hash(PRODUCER_A),
            key_hash(PRODUCER_B),
            simulator.api_base()
        ),
    )
    .unwrap();
    let service = Service::start(&dir, &[]);

    // Two producers pick the same key for different batches: both taken.
    let (status, replayed, _) = post(&service, PRODUCER_A, "batch-0001", profile(1, "a")).await;
    assert_eq!((status, replayed), (StatusCode::ACCEPTED, None));
    let (status, replayed, body) = post(&service, PRODUCER_B, "batch-0001", profile(2, "b")).await;
    assert_eq!((status, replayed), (StatusCode::ACCEPTED, None), "{body}");

    // A producer's retry of the same body: the first answer.
    let (status, replayed, body) = post(&service, PRODUCER_A, "batch-0001", profile(1, "a")).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(replayed.as_deref(), Some("true"));
    assert_eq!(body["accepted"], 1, "{body}");

    // The same key with another body: refused, nothing taken.
    let (status, _, body) = post(&service, PRODUCER_A, "batch-0001", profile(3, "lost")).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let error = body["error"].as_str().unwrap();
    assert!(
        error.contains("batch-0001") && error.contains("another body"),
        "{error}"
    );

    // Twenty different bodies at once under one new key: one is taken.
    let posts = (0..20).map(|n| {
        let service = &service;
        async move { post(service, PRODUCER_A, "batch-0002", profile(10 + n, "race")).await }
    });
    let answers = futures::future::join_all(posts).await;
    let taken = answers
        .iter()
        .filter(|(status, _, _)| *status == StatusCode::ACCEPTED)
        .count();
    let refused = answers
        .iter()
        .filter(|(status, _, _)| *status == StatusCode::UNPROCESSABLE_ENTITY)
        .count();
    assert_eq!((taken, refused), (1, 19), "{answers:?}");

    // A later batch is delivered; by then everything taken before it is.
    let (status, _, _) = post(&service, PRODUCER_B, "batch-0003", profile(50, "last")).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    eventually("the last batch", Duration::from_secs(30), || {
        first_name(&simulator, 50).as_deref() == Some("last")
    })
    .await;
    assert_eq!(first_name(&simulator, 1).as_deref(), Some("a"));
    assert_eq!(first_name(&simulator, 2).as_deref(), Some("b"));
    assert_ne!(
        first_name(&simulator, 3).as_deref(),
        Some("lost"),
        "a refused body was taken"
    );
    let raced = (10..30)
        .filter(|&id| first_name(&simulator, id).as_deref() == Some("race"))
        .count();
    assert_eq!(raced, 1, "one of the racing bodies, and only one");
}
