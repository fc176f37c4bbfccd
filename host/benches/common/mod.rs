//! The destination and the profile both benchmarks use: five mapped
//! attributes and five audiences, about 500 bytes a record.

use serde_json::json;

pub const CONFIG: &str = r#"{
  "name": "bench",
  "identityMapping": { "source": "Oid", "target": "OutreachId" },
  "attributeMappings": [
    { "source": "person.name.firstName", "target": "firstName" },
    { "source": "person.name.lastName", "target": "lastName" },
    { "source": "person.jobTitle", "target": "title" },
    { "source": "personalEmail.address", "target": "emails" },
    { "source": "workAddress.city", "target": "addressCity" }
  ],
  "audiences": [
    { "id": "a1", "mappingId": 1 }, { "id": "a2", "mappingId": 2 }, { "id": "a3", "mappingId": 3 },
    { "id": "a4", "mappingId": 4 }, { "id": "a5", "mappingId": 5 }
  ]
}"#;

pub fn record(id: u64) -> String {
    json!({
        "identityMap": { "Oid": [ { "id": id.to_string() } ] },
        "person": { "name": { "firstName": "Bench", "lastName": format!("Mark {id}") }, "jobTitle": "Engineer" },
        "personalEmail": { "address": format!("bench{id}@example.com") },
        "workAddress": { "city": "Berlin" },
        "segmentMembership": { "ups": {
            "a1": { "status": "realized" }, "a2": { "status": "existing" }, "a3": { "status": "exited" },
            "a4": { "status": "realized" }, "a5": { "status": "realized" } } }
    })
    .to_string()
}

/// A profile with one attribute and one audience (about 140 bytes).
// Only the intake benchmark compares shapes.
#[allow(dead_code)]
pub fn minimal_record(id: u64) -> String {
    json!({
        "identityMap": { "Oid": [ { "id": id.to_string() } ] },
        "person": { "name": { "firstName": "Bench" } },
        "segmentMembership": { "ups": { "a1": { "status": "realized" } } }
    })
    .to_string()
}
