//! `plan` over arbitrary JSON placed where the planner looks: the identity,
//! the mapped attributes and the audience memberships.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value, json};

mod common;

#[derive(Arbitrary, Debug)]
enum Json {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Digits(u64),
    /// A date-time that is well formed up to its seconds, then anything:
    /// reaches the fraction and offset parsing.
    DateTime(u16, u8, u8, String),
    Arr(Vec<Json>),
    Obj(Vec<(String, Json)>),
}

impl Json {
    fn value(&self, depth: u32) -> Value {
        if depth > 12 {
            return Value::Null;
        }
        match self {
            Json::Null => Value::Null,
            Json::Bool(b) => json!(b),
            Json::Int(i) => json!(i),
            Json::Float(f) => serde_json::Number::from_f64(*f).map_or(Value::Null, Value::Number),
            Json::Str(s) => json!(s),
            Json::Digits(d) => json!(d.to_string()),
            Json::DateTime(y, m, d, tail) => {
                json!(format!("{:04}-{:02}-{:02}T10:00:00{tail}", y % 10_000, m % 13, d % 32))
            }
            Json::Arr(items) => Value::Array(items.iter().map(|j| j.value(depth + 1)).collect()),
            Json::Obj(fields) => Value::Object(
                fields
                    .iter()
                    .map(|(k, v)| (k.clone(), v.value(depth + 1)))
                    .collect::<Map<_, _>>(),
            ),
        }
    }
}

#[derive(Arbitrary, Debug)]
struct Record {
    identity: Json,
    person: Json,
    first_name: Json,
    birth_date: Json,
    graduation: Json,
    job_start: Json,
    status: Json,
    other_status: Json,
    extra: Json,
}

fuzz_target!(|records: Vec<Record>| {
    let texts: Vec<String> = records
        .iter()
        .map(|r| {
            let mut person = r.person.value(0);
            if let Value::Object(p) = &mut person {
                p.insert("name".into(), json!({ "firstName": r.first_name.value(0) }));
                p.insert("birthDate".into(), r.birth_date.value(0));
                p.insert("graduation".into(), r.graduation.value(0));
                p.insert("jobStart".into(), r.job_start.value(0));
            }
            json!({
                "identityMap": { "Oid": [ { "id": r.identity.value(0) } ] },
                "person": person,
                "segmentMembership": { "ups": {
                    "aud": { "status": r.status.value(0) },
                    "b": r.other_status.value(0)
                } },
                "extra": r.extra.value(0)
            })
            .to_string()
        })
        .collect();
    let outcomes = common::destination().plan(&texts);
    common::check(&texts, &outcomes);
});
