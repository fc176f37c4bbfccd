//! A component built against contract 0.1.0 and one built against 0.2.0
//! both run, through the command line, against the simulator: the 0.2
//! component's `merge` coalesces updates queued for one prospect into one
//! request, the 0.1 component (which has no `merge`) sends every update,
//! in order. Both end with the same prospect.

mod common;

use common::{Cli, loopback, scratch, write};
use outreach_host::{BUILT_COMPONENT, BUILT_COMPONENT_V0_1};
use outreach_simulator::{Simulator, SimulatorConfig};
use serde_json::{Value, json};

const CONFIG: &str = r#"{
  "name": "versions",
  "account": "sales@example.com",
  "identityMapping": { "source": "Oid", "target": "OutreachId" },
  "attributeMappings": [
    { "source": "person.name.firstName", "target": "firstName" },
    { "source": "person.jobTitle", "target": "title" }
  ],
  "audiences": [ { "id": "news", "name": "Newsletter", "mappingId": 4 } ]
}"#;

/// Three versions of prospect 7: the first names it, the later ones change
/// the title and the audience status.
fn versions() -> String {
    let profile = |person: Value, status: &str| {
        json!({
            "identityMap": { "Oid": [ { "id": "7" } ] },
            "person": person,
            "segmentMembership": { "ups": { "news": { "status": status } } }
        })
        .to_string()
    };
    [
        profile(
            json!({"name": {"firstName": "Ada"}, "jobTitle": "Engineer"}),
            "realized",
        ),
        profile(json!({"jobTitle": "CTO"}), "realized"),
        profile(json!({"jobTitle": "CEO"}), "exited"),
    ]
    .join("\n")
        + "\n"
}

/// Runs the three versions through `component`: first with refused
/// credentials, so that all three wait in the journal whatever the timing,
/// then `resume` with valid ones. The resumed run's summary, the coalescing
/// counted by both runs, the first run's record counts, and the prospect
/// as the simulator holds it afterwards.
fn deliver(component: &str, name: &str) -> (Value, u64, Value, serde_json::Map<String, Value>) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let simulator = runtime
        .block_on(Simulator::start(
            SimulatorConfig {
                prospect_ids: 1..=10,
                ..SimulatorConfig::default()
            },
            loopback(),
        ))
        .unwrap();
    let dir = scratch("versions", name);
    let refused = Cli {
        dir: dir.clone(),
        token: "not-a-valid-token".into(),
    };
    let cli = Cli {
        dir: dir.clone(),
        token: simulator.issue_token("sales@example.com"),
    };
    let config = write(&dir, "destination.json", CONFIG);
    let input = write(&dir, "profiles.ndjson", &versions());
    let api = simulator.api_base();
    let common = [
        "--component",
        component,
        "--config",
        &config,
        "--api-base",
        &api,
    ];
    let first = refused.run(&[&["run", "--input", &input][..], &common[..]].concat());
    assert_eq!(first.status.code(), Some(1), "the refused run stops");
    let summary = cli.json(&[&["resume", "--json"][..], &common[..]].concat());
    let runs = cli.json(&["runs", "--json"]);
    let coalesced = runs
        .as_array()
        .unwrap()
        .iter()
        .map(|run| run["coalesced"].as_u64().unwrap())
        .sum();
    let first_run = cli.json(&["runs", "show", "1", "--json"]);
    let prospect = simulator.prospect(7).expect("prospect 7 exists");
    std::fs::remove_dir_all(dir).unwrap();
    (summary, coalesced, first_run, prospect)
}

#[test]
fn a_contract_0_2_component_coalesces_through_its_merge() {
    let (summary, coalesced, first_run, prospect) = deliver(BUILT_COMPONENT, "v0.2");
    assert_eq!(first_run["delivered"], 3, "{first_run}");
    assert_eq!(coalesced, 2, "{summary}");
    assert_eq!(summary["requests_sent"], 1, "{summary}");
    assert_eq!(prospect["firstName"], "Ada");
    assert_eq!(prospect["title"], "CEO");
    assert_eq!(prospect["custom4"], "exited");
    // The component says how to show its audiences.
    assert_eq!(
        summary["audience_labels"],
        json!({"news": "Newsletter (Mapping ID 4)"})
    );
}

#[test]
fn a_contract_0_1_component_runs_and_sends_every_update_in_order() {
    let (summary, coalesced, first_run, prospect) = deliver(BUILT_COMPONENT_V0_1, "v0.1");
    assert_eq!(first_run["delivered"], 3, "{first_run}");
    assert_eq!(coalesced, 0, "{summary}");
    assert_eq!(summary["requests_sent"], 3, "{summary}");
    // Contract 0.1 has no audience labels: the summary shows ids.
    assert_eq!(summary["audience_labels"], json!({}));
    assert_eq!(prospect["firstName"], "Ada");
    assert_eq!(prospect["title"], "CEO");
    assert_eq!(prospect["custom4"], "exited");
}
