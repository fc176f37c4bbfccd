//! Delivering a profile matched by email: the steps of one delivery.
//!
//! Outreach keeps one prospect per email address. A profile matched by
//! email is first a **lookup** (`GET /prospects?filter[emails]=…`); its
//! answer leads to the **update** of the prospect found (`PATCH`) or to the
//! **create** of a new one (`POST`). The component does no I/O and keeps no
//! state, so every step carries what the next one needs in its `context`
//! (the email and the attributes to write), and the host remembers, when
//! asked, which prospect an email belongs to: the fact `email:ADDRESS`,
//! named by each step's `recall`, so that a later update of a known email
//! is one `PATCH` (the host calls [`recall`] before sending the lookup).
//!
//! What can go wrong between the steps, and what follows:
//! - the create is refused because the email is taken (another writer, or
//!   our own create whose answer was lost before a crash): look up again,
//!   then update, so there are never two prospects for one email;
//! - the remembered prospect is gone (`PATCH` answered 404): forget it and
//!   look up again;
//! - the email belongs to a prospect this user cannot see (creates keep
//!   being refused as taken while lookups find nothing): after
//!   [`MAX_TAKEN`] rounds the record is rejected, naming the email.

use alloc::borrow::ToOwned;
use alloc::boxed::Box;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;
use serde_json::{Map, Value, json};

use crate::types::{Fact, Header, Method, Purpose, Request, Verdict};

/// Rounds of "create refused as taken, lookup finds nothing" before the
/// record is rejected.
pub const MAX_TAKEN: u64 = 3;

const JSON_API: &str = crate::plan::JSON_API;

/// The key, and the name of the remembered fact, of a prospect matched by
/// this (normalised) email.
pub fn key_of(email: &str) -> String {
    format!("email:{email}")
}

/// An email as Outreach compares it: trimmed, lower case. `None` when it
/// cannot be an address (no `@` with text on both sides, or white space
/// inside).
pub fn normalise_email(raw: &str) -> Option<String> {
    let email = raw.trim().to_lowercase();
    let (local, domain) = email.rsplit_once('@')?;
    if local.is_empty() || domain.is_empty() || email.chars().any(char::is_whitespace) {
        return None;
    }
    Some(email)
}

/// What a step carries to the next: the email, the attributes to write, and
/// how many creates were refused as taken.
#[derive(Clone, Debug, PartialEq)]
pub struct Context {
    pub email: String,
    pub attributes: Map<String, Value>,
    pub taken: u64,
}

impl Context {
    pub fn new(email: String, attributes: Map<String, Value>) -> Self {
        Self {
            email,
            attributes,
            taken: 0,
        }
    }

    fn to_text(&self) -> String {
        json!({ "email": self.email, "attributes": self.attributes, "taken": self.taken })
            .to_string()
    }

    /// The context of a request this component planned; `None` for a
    /// request of the id match (no context) or one it cannot read.
    pub fn of(request: &Request) -> Option<Self> {
        if request.context.is_empty() {
            return None;
        }
        let Value::Object(mut root) = serde_json::from_str(&request.context).ok()? else {
            return None;
        };
        let Value::String(email) = root.remove("email")? else {
            return None;
        };
        let Value::Object(attributes) = root.remove("attributes")? else {
            return None;
        };
        let taken = root.get("taken").and_then(Value::as_u64).unwrap_or(0);
        Some(Self {
            email,
            attributes,
            taken,
        })
    }
}

fn headers(with_body: bool) -> Vec<Header> {
    let accept = Header {
        name: "Accept".to_owned(),
        value: JSON_API.to_owned(),
    };
    if with_body {
        vec![
            Header {
                name: "Content-Type".to_owned(),
                value: JSON_API.to_owned(),
            },
            accept,
        ]
    } else {
        vec![accept]
    }
}

/// Everything but unreserved characters percent-encoded (RFC 3986), so an
/// address with `+` or `&` stays one query value.
fn query_value(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

fn request(
    method: Method,
    path: String,
    body: String,
    purpose: Purpose,
    context: &Context,
    audiences: Vec<String>,
) -> Request {
    let key = key_of(&context.email);
    Request {
        method,
        headers: headers(!body.is_empty()),
        path,
        body,
        // An update knows its prospect: nothing left to recall.
        recall: (purpose != Purpose::Update).then(|| key.clone()),
        key,
        audiences,
        purpose,
        context: context.to_text(),
    }
}

/// The first step: which prospect has this email?
pub fn lookup(context: &Context, audiences: Vec<String>) -> Request {
    request(
        Method::Get,
        format!(
            "/prospects?filter%5Bemails%5D={}",
            query_value(&context.email)
        ),
        String::new(),
        Purpose::Lookup,
        context,
        audiences,
    )
}

/// No prospect has the email: create one with it.
pub fn create(context: &Context, audiences: Vec<String>) -> Request {
    let mut attributes = context.attributes.clone();
    // The email that matched must be among the new prospect's emails,
    // whatever else an `emails` mapping put there.
    let emails = attributes
        .entry("emails")
        .or_insert_with(|| Value::Array(Vec::new()));
    match emails {
        Value::Array(list) => {
            let has = list.iter().any(|e| {
                e.as_str()
                    .and_then(normalise_email)
                    .is_some_and(|e| e == context.email)
            });
            if !has {
                list.insert(0, Value::String(context.email.clone()));
            }
        }
        other => *other = json!([context.email]),
    }
    let body = json!({ "data": { "type": "prospect", "attributes": attributes } });
    request(
        Method::Post,
        "/prospects".to_owned(),
        body.to_string(),
        Purpose::Create,
        context,
        audiences,
    )
}

/// The prospect is known: write the attributes to it.
pub fn update(id: u64, context: &Context, audiences: Vec<String>) -> Request {
    let body = json!({
        "data": { "type": "prospect", "id": id, "attributes": context.attributes }
    });
    request(
        Method::Patch,
        format!("/prospects/{id}"),
        body.to_string(),
        Purpose::Update,
        context,
        audiences,
    )
}

/// How messages name the prospect a request is for: `prospect 42` (its
/// key, matching by id) or `prospect with email ada@example.com`.
pub fn subject(request: &Request) -> String {
    match Context::of(request) {
        Some(context) => format!("prospect with email {}", context.email),
        None => format!("prospect {}", request.key),
    }
}

/// A remembered prospect id, as the host gives it back.
fn remembered_id(value: &str) -> Option<u64> {
    value.trim().parse::<u64>().ok().filter(|id| *id > 0)
}

/// The step to send instead of `request` now that its email is known to
/// belong to prospect `value`: the update. A request that is not a step of
/// an email match, or a value that is not a prospect id, is sent as is.
pub fn recall(request: &Request, value: &str) -> Request {
    match (Context::of(request), remembered_id(value)) {
        (Some(context), Some(id)) if request.purpose != Purpose::Update => {
            update(id, &context, request.audiences.clone())
        }
        _ => request.clone(),
    }
}

/// Two queued steps for one email as one: the older step (the delivery's
/// place in its flow) carrying both attribute sets, the newer's values
/// winning. `None` when either is not a step of an email match.
pub fn merge(older: &Request, newer: &Request) -> Option<Request> {
    if older.key != newer.key {
        return None;
    }
    let mut context = Context::of(older)?;
    let newer_context = Context::of(newer)?;
    if context.email != newer_context.email {
        return None;
    }
    context.attributes.extend(newer_context.attributes);
    let mut audiences = older.audiences.clone();
    for a in &newer.audiences {
        if !audiences.contains(a) {
            audiences.push(a.clone());
        }
    }
    Some(match older.purpose {
        Purpose::Lookup => lookup(&context, audiences),
        Purpose::Create => create(&context, audiences),
        Purpose::Update => update(prospect_id_of_path(&older.path)?, &context, audiences),
    })
}

fn prospect_id_of_path(path: &str) -> Option<u64> {
    path.strip_prefix("/prospects/")?.parse().ok()
}

/// What a step's answer leads to.
pub struct Outcome {
    pub verdict: Verdict,
    pub remember: Vec<Fact>,
    pub forget: Vec<String>,
}

impl Outcome {
    fn next(request: Request) -> Self {
        Self {
            verdict: Verdict::Continue(Box::new(request)),
            remember: Vec::new(),
            forget: Vec::new(),
        }
    }

    fn remembering(mut self, email: &str, id: u64) -> Self {
        self.remember.push(Fact {
            name: key_of(email),
            value: id.to_string(),
        });
        self
    }
}

/// The id of a JSON:API resource (`data.id`, a number or a string of
/// digits).
fn resource_id(resource: &Value) -> Option<u64> {
    match resource.get("id")? {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
    .filter(|id| *id > 0)
}

/// The answer to a step of an email match, for the statuses where the step
/// decides (success, not found, a refused create); `None` for the others
/// (rate limits, server errors, credentials), which every request shares,
/// and for a request that is not such a step.
pub fn classify(request: &Request, status: u16, body: &str) -> Option<Result<Outcome, Verdict>> {
    let context = Context::of(request)?;
    let audiences = || request.audiences.clone();
    Some(match (request.purpose, status) {
        (Purpose::Lookup, 200..=299) => {
            let Ok(answer) = serde_json::from_str::<Value>(body) else {
                return Some(Err(unreadable(&context, "lookup", body)));
            };
            match answer.get("data") {
                Some(Value::Array(found)) => {
                    // Outreach keeps one prospect per email; should two
                    // ever come back, the oldest (lowest id) is the one.
                    match found.iter().filter_map(resource_id).min() {
                        Some(id) => Ok(Outcome::next(update(id, &context, audiences()))
                            .remembering(&context.email, id)),
                        None if found.is_empty() => {
                            Ok(Outcome::next(create(&context, audiences())))
                        }
                        None => Err(unreadable(&context, "lookup", body)),
                    }
                }
                _ => Err(unreadable(&context, "lookup", body)),
            }
        }
        // Some Outreach deployments answer a lookup that finds nothing 404.
        (Purpose::Lookup, 404) => Ok(Outcome::next(create(&context, audiences()))),
        (Purpose::Create, 200..=299) => {
            let id = serde_json::from_str::<Value>(body)
                .ok()
                .and_then(|answer| answer.get("data").and_then(resource_id));
            let delivered = Outcome {
                verdict: Verdict::Delivered,
                remember: Vec::new(),
                forget: Vec::new(),
            };
            Ok(match id {
                Some(id) => delivered.remembering(&context.email, id),
                // Created all the same; the next update looks it up.
                None => delivered,
            })
        }
        (Purpose::Create, 422) if email_taken(body) => {
            if context.taken + 1 >= MAX_TAKEN {
                return Some(Err(Verdict::Rejected(crate::types::Rejection {
                    code: "email-taken-invisible".to_owned(),
                    message: format!(
                        "prospect with email {}: Outreach refused to create it {MAX_TAKEN} times because the email is taken, yet no prospect this user can see has it (is it owned by a user this account cannot read?)",
                        context.email
                    ),
                    audience: None,
                })));
            }
            let mut again = context.clone();
            again.taken += 1;
            Ok(Outcome::next(lookup(&again, audiences())))
        }
        (Purpose::Update, 404) => {
            let mut outcome = Outcome::next(lookup(&context, audiences()));
            outcome.forget.push(key_of(&context.email));
            Ok(outcome)
        }
        _ => return None,
    })
}

/// Outreach's answer to a create whose email another prospect holds:
/// `Contacts email hash has already been taken.`
fn email_taken(body: &str) -> bool {
    let Ok(answer) = serde_json::from_str::<Value>(body) else {
        return false;
    };
    answer
        .get("errors")
        .and_then(Value::as_array)
        .is_some_and(|errors| {
            errors.iter().any(|e| {
                e.get("detail")
                    .and_then(Value::as_str)
                    .is_some_and(|d| d.to_ascii_lowercase().contains("already been taken"))
            })
        })
}

fn unreadable(context: &Context, step: &str, body: &str) -> Verdict {
    let excerpt: String = body.trim().chars().take(200).collect();
    Verdict::Rejected(crate::types::Rejection {
        code: "unexpected-response".to_owned(),
        message: format!(
            "prospect with email {}: Outreach's answer to the {step} is not a JSON:API list of prospects: {excerpt}",
            context.email
        ),
        audience: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> Context {
        let mut attributes = Map::new();
        attributes.insert("firstName".into(), json!("Ada"));
        Context::new("ada@example.com".into(), attributes)
    }

    fn answer(request: &Request, status: u16, body: &str) -> Outcome {
        match classify(request, status, body) {
            Some(Ok(outcome)) => outcome,
            Some(Err(verdict)) => panic!("unexpected verdict {verdict:?}"),
            None => panic!("not decided by the step"),
        }
    }

    fn next(outcome: &Outcome) -> &Request {
        match &outcome.verdict {
            Verdict::Continue(next) => next,
            other => panic!("expected a next step, got {other:?}"),
        }
    }

    #[test]
    fn emails_compare_trimmed_and_in_lower_case() {
        assert_eq!(
            normalise_email("  Ada@Example.COM ").as_deref(),
            Some("ada@example.com")
        );
        assert_eq!(normalise_email("no-at-sign"), None);
        assert_eq!(normalise_email("@example.com"), None);
        assert_eq!(normalise_email("ada @example.com"), None);
    }

    #[test]
    fn a_lookup_that_finds_the_prospect_updates_it_and_remembers_it() {
        let first = lookup(&ctx(), vec!["news".into()]);
        assert_eq!(
            first.path,
            "/prospects?filter%5Bemails%5D=ada%40example.com"
        );
        assert_eq!(first.recall.as_deref(), Some("email:ada@example.com"));
        let outcome = answer(&first, 200, r#"{"data":[{"type":"prospect","id":42}]}"#);
        let patch = next(&outcome);
        assert_eq!(
            (patch.method, patch.path.as_str()),
            (Method::Patch, "/prospects/42")
        );
        assert_eq!(patch.purpose, Purpose::Update);
        assert_eq!(patch.audiences, ["news"]);
        assert_eq!(
            outcome.remember,
            [Fact {
                name: "email:ada@example.com".into(),
                value: "42".into()
            }]
        );
        let body: Value = serde_json::from_str(&patch.body).unwrap();
        assert_eq!(body["data"]["attributes"], json!({"firstName": "Ada"}));
    }

    #[test]
    fn a_lookup_that_finds_nothing_creates_the_prospect_with_the_email() {
        let outcome = answer(&lookup(&ctx(), vec![]), 200, r#"{"data":[]}"#);
        let post = next(&outcome);
        assert_eq!(
            (post.method, post.path.as_str()),
            (Method::Post, "/prospects")
        );
        let body: Value = serde_json::from_str(&post.body).unwrap();
        assert_eq!(
            body["data"]["attributes"],
            json!({"firstName": "Ada", "emails": ["ada@example.com"]})
        );
        let created = answer(post, 201, r#"{"data":{"type":"prospect","id":"77"}}"#);
        assert_eq!(created.verdict, Verdict::Delivered);
        assert_eq!(created.remember[0].value, "77");
    }

    #[test]
    fn a_create_refused_as_taken_looks_up_again_until_it_gives_up() {
        let taken = r#"{"errors":[{"id":"validationError","title":"Validation Error","detail":"Contacts email hash has already been taken."}]}"#;
        let mut step = create(&ctx(), vec![]);
        for _ in 1..MAX_TAKEN {
            let outcome = answer(&step, 422, taken);
            let again = next(&outcome);
            assert_eq!(again.purpose, Purpose::Lookup);
            step = create(&Context::of(again).unwrap(), vec![]);
        }
        match classify(&step, 422, taken) {
            Some(Err(Verdict::Rejected(r))) => {
                assert_eq!(r.code, "email-taken-invisible");
                assert!(r.message.contains("ada@example.com"), "{}", r.message);
            }
            _ => panic!("expected a rejection after {MAX_TAKEN} rounds"),
        }
        // Another 422 is the shared validation handling's.
        assert!(
            classify(
                &create(&ctx(), vec![]),
                422,
                r#"{"errors":[{"detail":"Contacts contact is using an excluded email address."}]}"#
            )
            .is_none()
        );
    }

    #[test]
    fn a_remembered_prospect_that_is_gone_is_forgotten_and_looked_up_again() {
        let patch = recall(&lookup(&ctx(), vec![]), "42");
        assert_eq!(patch.path, "/prospects/42");
        assert_eq!(patch.recall, None);
        let outcome = answer(&patch, 404, "");
        assert_eq!(outcome.forget, ["email:ada@example.com"]);
        assert_eq!(next(&outcome).purpose, Purpose::Lookup);
    }

    #[test]
    fn a_newer_update_merges_into_the_step_the_delivery_is_at() {
        let mut newer_attributes = Map::new();
        newer_attributes.insert("title".into(), json!("CTO"));
        newer_attributes.insert("firstName".into(), json!("Ada L."));
        let newer = lookup(
            &Context::new("ada@example.com".into(), newer_attributes),
            vec!["vip".into()],
        );
        let older = update(42, &ctx(), vec!["news".into()]);
        let merged = merge(&older, &newer).unwrap();
        assert_eq!(merged.path, "/prospects/42");
        assert_eq!(merged.audiences, ["news", "vip"]);
        let body: Value = serde_json::from_str(&merged.body).unwrap();
        assert_eq!(
            body["data"]["attributes"],
            json!({"firstName": "Ada L.", "title": "CTO"})
        );
        // Not a step of an email match: not merged here.
        let mut plain = older.clone();
        plain.context.clear();
        assert!(merge(&plain, &newer).is_none());
    }
}
