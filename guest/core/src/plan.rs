//! From one profile record to the Outreach request that updates its prospect.

use alloc::borrow::ToOwned;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;
use serde_json::{Map, Number, Value};

use crate::catalog::AttributeKind;
use crate::config::{AttributeMapping, Audience, Config, Match, STATUSES, kind_of};
use crate::steps;
use crate::time;
use crate::types::{Header, Method, PlanOutcome, Purpose, RecordError, RecordFate, Request};

pub const JSON_API: &str = "application/vnd.api+json";

/// One problem found in a record.
struct Problem {
    code: &'static str,
    message: String,
}

fn problem(code: &'static str, message: String) -> Problem {
    Problem { code, message }
}

/// A value quoted for a message, shortened so one huge field cannot flood a
/// report.
fn shown(v: &Value) -> String {
    const MAX: usize = 60;
    let text = match v {
        Value::String(s) => format!("\"{s}\""),
        other => other.to_string(),
    };
    if text.chars().count() <= MAX {
        text
    } else {
        let head: String = text.chars().take(MAX).collect();
        format!("{head}…")
    }
}

/// Plans one record given as JSON text.
pub fn plan_record(config: &Config, text: &str) -> PlanOutcome {
    let record: Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => {
            return invalid(
                vec![problem(
                    "not-json",
                    format!("record is not valid JSON: {e}"),
                )],
                Vec::new(),
            );
        }
    };
    let Value::Object(record) = record else {
        return invalid(
            vec![problem(
                "not-an-object",
                format!(
                    "record must be a JSON object (an XDM profile), not {}",
                    kind_of(&record)
                ),
            )],
            Vec::new(),
        );
    };
    plan_profile(config, &record)
}

fn invalid(problems: Vec<Problem>, audiences: Vec<String>) -> PlanOutcome {
    let code = problems.first().map_or("invalid", |p| p.code).to_string();
    let message = problems
        .into_iter()
        .map(|p| p.message)
        .collect::<Vec<_>>()
        .join("; ");
    // A record without a usable prospect id cannot be matched to a
    // prospect: the original product counts it as skipped, not failed.
    let fate = if code.starts_with("identity-") {
        RecordFate::Skipped
    } else {
        RecordFate::Rejected
    };
    PlanOutcome::Invalid(RecordError {
        code,
        message,
        audiences,
        fate,
    })
}

fn plan_profile(config: &Config, record: &Map<String, Value>) -> PlanOutcome {
    let mut problems = Vec::new();
    let memberships = scheduled_memberships(config, record, &mut problems);
    let audience_ids: Vec<String> = memberships.iter().map(|m| m.audience.id.clone()).collect();
    let target = match_target(config, record, &mut problems);

    let mut attributes = Map::new();
    for mapping in &config.attributes {
        let Some(value) = lookup_path(record, &mapping.source.segments) else {
            continue;
        };
        if value.is_null() {
            continue;
        }
        match convert(mapping, value) {
            Ok(v) => {
                attributes.insert(mapping.target.clone(), v);
            }
            Err(p) => problems.push(p),
        }
    }
    for membership in &memberships {
        if let Some(value) = membership.value {
            attributes.insert(
                membership.audience.field.clone(),
                Value::String(value.to_owned()),
            );
        }
    }

    if !problems.is_empty() {
        return invalid(problems, audience_ids);
    }
    let id = match target {
        Some(Target::Id(id)) => id,
        Some(Target::Email(email)) => {
            if attributes.is_empty() {
                return PlanOutcome::Skip(format!(
                    "prospect with email {email}: the record has no mapped attribute and no scheduled audience"
                ));
            }
            let context = steps::Context::new(steps::Prospect::Email(email), attributes)
                .with_company(company(config, record));
            return PlanOutcome::Send(vec![steps::first(&context, audience_ids)]);
        }
        None => {
            // match_target() reports a problem whenever it yields nothing.
            return invalid(
                vec![problem("identity-missing", "no prospect id".to_owned())],
                audience_ids,
            );
        }
    };
    if attributes.is_empty() {
        return PlanOutcome::Skip(format!(
            "prospect {id}: the record has no mapped attribute and no scheduled audience"
        ));
    }
    if let Some(company) = company(config, record) {
        let context =
            steps::Context::new(steps::Prospect::Id(id), attributes).with_company(Some(company));
        return PlanOutcome::Send(vec![steps::first(&context, audience_ids)]);
    }
    let body = serde_json::json!({
        "data": { "type": "prospect", "id": id, "attributes": Value::Object(attributes) }
    });
    PlanOutcome::Send(vec![Request {
        method: Method::Patch,
        path: format!("/prospects/{id}"),
        headers: vec![
            Header {
                name: "Content-Type".to_owned(),
                value: JSON_API.to_owned(),
            },
            Header {
                name: "Accept".to_owned(),
                value: JSON_API.to_owned(),
            },
        ],
        body: body.to_string(),
        key: id.to_string(),
        audiences: audience_ids,
        purpose: Purpose::Update,
        recall: None,
        context: String::new(),
    }])
}

/// What a record's prospect is found by.
enum Target {
    Id(u64),
    /// A normalised email address.
    Email(String),
}

/// The prospect id, or the email for the email matches (the id when the
/// record has one, for `outreachIdOrEmail`); reports a problem and returns
/// `None` when neither is usable.
fn match_target(
    config: &Config,
    record: &Map<String, Value>,
    problems: &mut Vec<Problem>,
) -> Option<Target> {
    match config.matching {
        Match::OutreachId => prospect_id(config, record, problems).map(Target::Id),
        Match::Email => email(config, record, problems).map(Target::Email),
        Match::OutreachIdOrEmail => {
            if has_identity(config, record) {
                prospect_id(config, record, problems).map(Target::Id)
            } else {
                email(config, record, problems).map(Target::Email)
            }
        }
    }
}

/// The record's company, when the configuration maps one and the record
/// names it: its domain (trimmed, lower case) and name (trimmed).
fn company(config: &Config, record: &Map<String, Value>) -> Option<steps::Company> {
    let mapping = config.company.as_ref()?;
    let text = |path: &Option<crate::config::SourcePath>| {
        path.as_ref()
            .and_then(|p| lookup_path(record, &p.segments))
            .and_then(scalar_text)
            .map(|t| t.trim().to_owned())
            .filter(|t| !t.is_empty())
    };
    let company = steps::Company {
        domain: text(&mapping.domain).map(|d| d.to_lowercase()),
        name: text(&mapping.name),
    };
    (company.domain.is_some() || company.name.is_some()).then_some(company)
}

/// Whether the record names anything in the identity namespace.
fn has_identity(config: &Config, record: &Map<String, Value>) -> bool {
    match record.get("identityMap") {
        Some(Value::Object(map)) => match map.get(config.identity_namespace.as_str()) {
            None | Some(Value::Null) => false,
            Some(Value::Array(items)) => !items.is_empty(),
            Some(_) => true,
        },
        _ => false,
    }
}

/// The record's email address, normalised (trimmed, lower case).
fn email(
    config: &Config,
    record: &Map<String, Value>,
    problems: &mut Vec<Problem>,
) -> Option<String> {
    let source = config.email_source.as_ref()?;
    let at = &source.text;
    match lookup_path(record, &source.segments) {
        None | Some(Value::Null) => {
            problems.push(problem(
                "identity-missing",
                format!("{at}: the record has no email address to match its prospect by"),
            ));
            None
        }
        Some(Value::String(raw)) if raw.trim().is_empty() => {
            problems.push(problem(
                "identity-empty",
                format!("{at}: the email address is empty"),
            ));
            None
        }
        Some(Value::String(raw)) => match steps::normalise_email(raw) {
            Some(email) => Some(email),
            None => {
                problems.push(problem(
                    "identity-invalid",
                    format!(
                        "{at}: {} is not an email address",
                        shown(&Value::String(raw.clone()))
                    ),
                ));
                None
            }
        },
        Some(other) => {
            problems.push(problem(
                "identity-invalid",
                format!(
                    "{at}: an email address must be a string, not {}",
                    kind_of(other)
                ),
            ));
            None
        }
    }
}

/// Follows a dotted path through objects (and arrays, by index).
fn lookup_path<'a>(record: &'a Map<String, Value>, segments: &[String]) -> Option<&'a Value> {
    let (first, rest) = segments.split_first()?;
    let mut current = record.get(first)?;
    for segment in rest {
        current = match current {
            Value::Object(o) => o.get(segment)?,
            Value::Array(items) => items.get(segment.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(current)
}

/// A scheduled audience the record is a member of.
struct Membership<'c> {
    audience: &'c Audience,
    /// What to write into the audience's custom field; `None` when the
    /// record's status for it was refused (the record still counts against
    /// the audience in failure reports).
    value: Option<&'c str>,
}

/// The scheduled audiences in `segmentMembership.ups`, in configuration order.
fn scheduled_memberships<'c>(
    config: &'c Config,
    record: &Map<String, Value>,
    problems: &mut Vec<Problem>,
) -> Vec<Membership<'c>> {
    let Some(membership) = record.get("segmentMembership") else {
        return Vec::new();
    };
    let ups = match membership {
        Value::Null => return Vec::new(),
        Value::Object(m) => match m.get("ups") {
            None | Some(Value::Null) => return Vec::new(),
            Some(Value::Object(ups)) => ups,
            Some(other) => {
                problems.push(problem(
                    "membership-invalid",
                    format!(
                        "segmentMembership.ups must be an object of audience id → membership, not {}",
                        kind_of(other)
                    ),
                ));
                return Vec::new();
            }
        },
        other => {
            problems.push(problem(
                "membership-invalid",
                format!(
                    "segmentMembership must be an object, not {}",
                    kind_of(other)
                ),
            ));
            return Vec::new();
        }
    };
    let mut found = Vec::new();
    for audience in &config.audiences {
        let Some(entry) = ups.get(&audience.id) else {
            continue;
        };
        let status = match entry {
            Value::Object(e) => e.get("status"),
            _ => None,
        };
        let mut value = None;
        match status {
            Some(Value::String(s)) => match STATUSES.iter().position(|known| known == s) {
                Some(slot) => value = Some(config.status_values[slot].as_str()),
                None => problems.push(problem(
                    "audience-status-unknown",
                    format!(
                        "{}: unknown status {}; expected realized, existing or exited",
                        audience.describe(),
                        shown(&Value::String(s.clone()))
                    ),
                )),
            },
            Some(other) => problems.push(problem(
                "audience-status-unknown",
                format!(
                    "{}: status must be a string (realized, existing or exited), not {}",
                    audience.describe(),
                    shown(other)
                ),
            )),
            None => problems.push(problem(
                "audience-status-missing",
                format!(
                    "{}: segmentMembership.ups entry has no status",
                    audience.describe()
                ),
            )),
        }
        found.push(Membership { audience, value });
    }
    found
}

/// The prospect id from `identityMap[namespace]`; reports a problem and
/// returns `None` when it is missing or unusable.
fn prospect_id(
    config: &Config,
    record: &Map<String, Value>,
    problems: &mut Vec<Problem>,
) -> Option<u64> {
    let ns = &config.identity_namespace;
    let missing = || {
        problem(
            "identity-missing",
            format!("identityMap.{ns}: the record has no Outreach prospect id"),
        )
    };
    let identities = match record.get("identityMap") {
        Some(Value::Object(map)) => map.get(ns.as_str()),
        None | Some(Value::Null) => None,
        Some(other) => {
            problems.push(problem(
                "identity-invalid",
                format!("identityMap must be an object, not {}", kind_of(other)),
            ));
            return None;
        }
    };
    let entries: &[Value] = match identities {
        None | Some(Value::Null) => {
            problems.push(missing());
            return None;
        }
        Some(Value::Array(items)) => items,
        Some(single) => core::slice::from_ref(single),
    };
    if entries.is_empty() {
        problems.push(missing());
        return None;
    }
    let mut chosen: Option<u64> = None;
    for (i, entry) in entries.iter().enumerate() {
        let at = format!("identityMap.{ns}[{i}].id");
        let raw = match entry {
            Value::Object(o) => o.get("id"),
            // A bare value is accepted as the id itself.
            other => Some(other),
        };
        let id = match raw {
            None | Some(Value::Null) => {
                problems.push(missing_at(&at));
                return None;
            }
            Some(v) => match parse_prospect_id(v) {
                Ok(id) => id,
                Err((code, why)) => {
                    problems.push(problem(code, format!("{at}: {why}")));
                    return None;
                }
            },
        };
        match chosen {
            Some(previous) if previous != id => {
                problems.push(problem(
                    "identity-conflict",
                    format!(
                        "identityMap.{ns}: conflicting prospect ids {previous} and {id}; a record must name one prospect"
                    ),
                ));
                return None;
            }
            _ => chosen = Some(id),
        }
    }
    chosen
}

fn missing_at(at: &str) -> Problem {
    problem(
        "identity-missing",
        format!("{at}: the record has no Outreach prospect id"),
    )
}

/// An Outreach prospect id: a positive integer, given as a JSON integer or a
/// string of digits.
fn parse_prospect_id(v: &Value) -> Result<u64, (&'static str, String)> {
    let not_numeric = |v: &Value| {
        (
            "identity-invalid",
            format!("{} is not a numeric Outreach prospect id", shown(v)),
        )
    };
    match v {
        Value::Number(n) => {
            if let Some(id) = n.as_u64() {
                if id == 0 {
                    return Err((
                        "identity-invalid",
                        "0 is not an Outreach prospect id (ids start at 1)".to_owned(),
                    ));
                }
                Ok(id)
            } else if n.as_i64().is_some() || n.as_f64().is_some_and(|f| f < 0.0) {
                Err((
                    "identity-negative",
                    format!("{n} is negative; prospect ids are positive"),
                ))
            } else {
                Err(not_numeric(v))
            }
        }
        Value::String(s) => {
            let t = s.trim();
            if t.is_empty() {
                return Err(("identity-empty", "the prospect id is empty".to_owned()));
            }
            if let Some(rest) = t.strip_prefix('-')
                && !rest.is_empty()
                && rest.bytes().all(|b| b.is_ascii_digit())
            {
                return Err((
                    "identity-negative",
                    format!("{} is negative; prospect ids are positive", shown(v)),
                ));
            }
            if !t.bytes().all(|b| b.is_ascii_digit()) {
                return Err(not_numeric(v));
            }
            match t.parse::<u64>() {
                Ok(0) => Err((
                    "identity-invalid",
                    "0 is not an Outreach prospect id (ids start at 1)".to_owned(),
                )),
                Ok(id) => Ok(id),
                Err(_) => Err((
                    "identity-invalid",
                    format!("{} is too large for a prospect id", shown(v)),
                )),
            }
        }
        other => Err(not_numeric(other)),
    }
}

/// Converts a source value to the target attribute's type.
fn convert(mapping: &AttributeMapping, value: &Value) -> Result<Value, Problem> {
    let target = &mapping.target;
    let source = &mapping.source.text;
    let wrong = |expected: &str| {
        problem(
            "attribute-invalid",
            format!(
                "{target} (from {source}): {} cannot be written as {expected}",
                shown(value)
            ),
        )
    };
    match mapping.kind {
        AttributeKind::Text { max_chars } => {
            let text = scalar_text(value).ok_or_else(|| wrong("a string"))?;
            check_length(target, source, &text, max_chars)?;
            Ok(Value::String(text))
        }
        AttributeKind::TextList { max_chars } => {
            let items: Vec<String> = match value {
                Value::Array(items) => items
                    .iter()
                    .filter(|v| !v.is_null())
                    .map(|v| scalar_text(v).ok_or_else(|| wrong("a list of strings")))
                    .collect::<Result<_, _>>()?,
                other => vec![scalar_text(other).ok_or_else(|| wrong("a list of strings"))?],
            };
            for item in &items {
                check_length(target, source, item, max_chars)?;
            }
            Ok(Value::Array(items.into_iter().map(Value::String).collect()))
        }
        AttributeKind::Boolean => match value {
            Value::Bool(b) => Ok(Value::Bool(*b)),
            Value::Number(n) if n.as_u64() == Some(0) => Ok(Value::Bool(false)),
            Value::Number(n) if n.as_u64() == Some(1) => Ok(Value::Bool(true)),
            Value::String(s) => match s.trim().to_ascii_lowercase().as_str() {
                "true" | "1" => Ok(Value::Bool(true)),
                "false" | "0" => Ok(Value::Bool(false)),
                _ => Err(wrong("a boolean")),
            },
            _ => Err(wrong("a boolean")),
        },
        AttributeKind::Number => match value {
            Value::Number(n) => Ok(Value::Number(n.clone())),
            Value::String(s) => number_from_text(s.trim())
                .map(Value::Number)
                .ok_or_else(|| wrong("a number")),
            _ => Err(wrong("a number")),
        },
        AttributeKind::Integer => {
            let n = match value {
                Value::Number(n) => Some(n.clone()),
                Value::String(s) => number_from_text(s.trim()),
                _ => None,
            };
            match n {
                Some(n) if n.is_i64() || n.is_u64() => Ok(Value::Number(n)),
                Some(n) => match n.as_f64() {
                    // 42.0 is a whole number written as a float.
                    Some(f) if f > -9.0e15 && f < 9.0e15 && f == (f as i64) as f64 => {
                        Ok(Value::Number(Number::from(f as i64)))
                    }
                    _ => Err(wrong("a whole number")),
                },
                None => Err(wrong("a whole number")),
            }
        }
        AttributeKind::Date => match value {
            Value::String(s) => time::parse_date_prefix(s.trim())
                .map(|d| Value::String(format!("{:04}-{:02}-{:02}", d.year, d.month, d.day)))
                .ok_or_else(|| wrong("a date (YYYY-MM-DD)")),
            _ => Err(wrong("a date (YYYY-MM-DD)")),
        },
    }
}

/// Strings as they are; numbers and booleans as their JSON text.
fn scalar_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn number_from_text(s: &str) -> Option<Number> {
    if s.is_empty() {
        return None;
    }
    match serde_json::from_str::<Value>(s) {
        Ok(Value::Number(n)) => Some(n),
        _ => None,
    }
}

fn check_length(target: &str, source: &str, text: &str, max_chars: usize) -> Result<(), Problem> {
    let chars = text.chars().count();
    if chars > max_chars {
        return Err(problem(
            "attribute-too-long",
            format!(
                "{target} (from {source}): value of {chars} characters exceeds Outreach's limit of {max_chars}"
            ),
        ));
    }
    Ok(())
}
