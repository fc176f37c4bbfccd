//! Shared by the plan targets: a configuration exercising every attribute
//! type (strings, string lists, booleans, numbers, whole numbers, dates,
//! custom fields), and the invariants every plan must keep.

use outreach_core::Destination;
use outreach_core::types::{Method, PlanOutcome, Request};

pub const CONFIG: &str = r#"{
  "name": "fuzz",
  "identityMapping": { "source": "Oid", "target": "OutreachId" },
  "attributeMappings": [
    { "source": "person.name.firstName", "target": "firstName" },
    { "source": "person.emails", "target": "emails" },
    { "source": "person.optedOut", "target": "emailOptedOut" },
    { "source": "person.score", "target": "score" },
    { "source": "person.connections", "target": "linkedInConnections" },
    { "source": "person.birthDate", "target": "dateOfBirth" },
    { "source": "person.graduation", "target": "graduationDate" },
    { "source": "person.jobStart", "target": "jobStartDate" },
    { "source": "person.tags", "target": "tags" },
    { "source": "person.site", "target": "websiteUrl1" },
    { "source": "person.list.0.x", "target": "custom9" }
  ],
  "audiences": [ { "id": "aud", "mappingId": 4 }, { "id": "b", "mappingId": 150 } ],
  "statusLabels": { "exited": "Removed" }
}"#;

/// The configured destination, built once: planning is pure, so every
/// input can share it (and the fuzzer spends its time in the planner).
pub fn destination() -> &'static Destination {
    static DESTINATION: std::sync::OnceLock<Destination> = std::sync::OnceLock::new();
    DESTINATION.get_or_init(|| Destination::new(CONFIG).expect("the fuzz configuration is valid"))
}

/// One outcome per record; requests are well-formed JSON:API writes.
#[allow(dead_code)] // not every target plans
pub fn check(records: &[String], outcomes: &[PlanOutcome]) {
    assert_eq!(records.len(), outcomes.len());
    for outcome in outcomes {
        match outcome {
            PlanOutcome::Send(requests) => {
                for r in requests {
                    assert!(r.path.starts_with("/prospects/"), "{}", r.path);
                    let id: u64 = r.key.parse().expect("numeric key");
                    assert!(id > 0);
                    let body: serde_json::Value =
                        serde_json::from_str(&r.body).expect("body is JSON");
                    assert_eq!(body["data"]["type"], "prospect");
                    assert_eq!(body["data"]["id"].as_u64(), Some(id));
                    assert!(!body["data"]["attributes"].as_object().unwrap().is_empty());
                    assert!(r.headers.iter().all(|h| !h.name.eq_ignore_ascii_case("authorization")));
                }
            }
            PlanOutcome::Skip(why) => assert!(!why.is_empty()),
            PlanOutcome::Invalid(e) => assert!(!e.code.is_empty() && !e.message.is_empty()),
        }
    }
}

/// The request the classify targets answer: an audience status for
/// prospect 1.
#[allow(dead_code)] // not every target classifies
pub fn request() -> Request {
    Request {
        method: Method::Patch,
        path: "/prospects/1".into(),
        headers: vec![],
        body: r#"{"data":{"type":"prospect","id":1,"attributes":{"custom4":"realized"}}}"#.into(),
        key: "1".into(),
        audiences: vec!["aud".into()],
    }
}
