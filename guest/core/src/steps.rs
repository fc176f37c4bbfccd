//! The steps of one delivery, when it takes several: a profile matched by
//! email, or one whose company is synced as an Outreach account.
//!
//! Outreach keeps one prospect per email address. A profile matched by
//! email is first a **lookup** (`GET /prospects?filter[emails]=…`); its
//! answer leads to the **update** of the prospect found (`PATCH`) or to the
//! **create** of a new one (`POST`). With an account mapping, the profile's
//! company comes first: its account is looked up (`GET
//! /accounts?filter[domain]=…`, or by name) and created when missing, and
//! the prospect's write then sets its `account` relationship.
//!
//! The component does no I/O and keeps no state, so every step carries
//! what the next one needs in its `context` (the prospect's email or id,
//! the attributes to write, the company and its account once known), and
//! the host remembers, when asked, which object a key belongs to: the
//! facts `email:ADDRESS` and `account:domain:DOMAIN` (or
//! `account:name:NAME`), named by each step's `recall`, so that a later
//! update of a known email of a known company is one `PATCH` (the host
//! calls [`recall`] before sending, once per fact it knows).
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

/// Which prospect a delivery writes.
#[derive(Clone, Debug, PartialEq)]
pub enum Prospect {
    /// The one with this (normalised) email, looked up or created.
    Email(String),
    /// The one with this Outreach id.
    Id(u64),
}

/// A profile's company, as an account is found by: its web domain
/// (trimmed, lower case), else its name.
#[derive(Clone, Debug, PartialEq)]
pub struct Company {
    pub domain: Option<String>,
    pub name: Option<String>,
}

impl Company {
    /// The name of the remembered fact of its account.
    fn fact(&self) -> String {
        match (&self.domain, &self.name) {
            (Some(domain), _) => format!("account:domain:{domain}"),
            (None, Some(name)) => format!("account:name:{}", name.to_lowercase()),
            (None, None) => String::new(),
        }
    }

    fn to_json(&self) -> Value {
        let mut company = Map::new();
        if let Some(domain) = &self.domain {
            company.insert("domain".into(), json!(domain));
        }
        if let Some(name) = &self.name {
            company.insert("name".into(), json!(name));
        }
        Value::Object(company)
    }

    fn of_json(value: &Value) -> Option<Self> {
        let text = |name: &str| value.get(name).and_then(Value::as_str).map(str::to_owned);
        let company = Self {
            domain: text("domain"),
            name: text("name"),
        };
        (company.domain.is_some() || company.name.is_some()).then_some(company)
    }
}

/// What a step carries to the next: the prospect, the attributes to write,
/// how many creates were refused as taken, and the company with its
/// account once known.
#[derive(Clone, Debug, PartialEq)]
pub struct Context {
    pub prospect: Prospect,
    pub attributes: Map<String, Value>,
    pub taken: u64,
    pub company: Option<Company>,
    pub account: Option<u64>,
}

impl Context {
    pub fn new(prospect: Prospect, attributes: Map<String, Value>) -> Self {
        Self {
            prospect,
            attributes,
            taken: 0,
            company: None,
            account: None,
        }
    }

    pub fn with_company(mut self, company: Option<Company>) -> Self {
        self.company = company;
        self
    }

    /// The delivery's key: the email's, or the prospect id (as a
    /// delivery of one step keys it, so the two order alike).
    fn key(&self) -> String {
        match &self.prospect {
            Prospect::Email(email) => key_of(email),
            Prospect::Id(id) => id.to_string(),
        }
    }

    fn to_text(&self) -> String {
        let mut root = Map::new();
        match &self.prospect {
            Prospect::Email(email) => root.insert("email".into(), json!(email)),
            Prospect::Id(id) => root.insert("id".into(), json!(id)),
        };
        root.insert("attributes".into(), Value::Object(self.attributes.clone()));
        root.insert("taken".into(), json!(self.taken));
        if let Some(company) = &self.company {
            root.insert("company".into(), company.to_json());
        }
        if let Some(account) = self.account {
            root.insert("account".into(), json!(account));
        }
        Value::Object(root).to_string()
    }

    /// The context of a request this component planned; `None` for a
    /// request of one step (no context) or one it cannot read.
    pub fn of(request: &Request) -> Option<Self> {
        if request.context.is_empty() {
            return None;
        }
        let Value::Object(mut root) = serde_json::from_str(&request.context).ok()? else {
            return None;
        };
        let prospect = match (root.remove("email"), root.get("id").and_then(Value::as_u64)) {
            (Some(Value::String(email)), _) => Prospect::Email(email),
            (_, Some(id)) => Prospect::Id(id),
            _ => return None,
        };
        let Value::Object(attributes) = root.remove("attributes")? else {
            return None;
        };
        Some(Self {
            prospect,
            attributes,
            taken: root.get("taken").and_then(Value::as_u64).unwrap_or(0),
            company: root.get("company").and_then(Company::of_json),
            account: root.get("account").and_then(Value::as_u64),
        })
    }

    /// How messages name the prospect.
    fn subject(&self) -> String {
        match &self.prospect {
            Prospect::Email(email) => format!("prospect with email {email}"),
            Prospect::Id(id) => format!("prospect {id}"),
        }
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
    recall: Option<String>,
    context: &Context,
    audiences: Vec<String>,
) -> Request {
    Request {
        method,
        headers: headers(!body.is_empty()),
        path,
        body,
        recall,
        key: context.key(),
        audiences,
        purpose,
        context: context.to_text(),
    }
}

/// The delivery's first step: the company's account while it is unknown,
/// else the prospect's.
pub fn first(context: &Context, audiences: Vec<String>) -> Request {
    match (&context.company, context.account) {
        (Some(company), None) => account_lookup(company, context, audiences),
        _ => prospect_first(context, audiences),
    }
}

/// The prospect's first step: the lookup of its email, or the update of
/// its id.
fn prospect_first(context: &Context, audiences: Vec<String>) -> Request {
    match &context.prospect {
        Prospect::Email(_) => lookup(context, audiences),
        Prospect::Id(id) => update(*id, context, audiences),
    }
}

/// Which prospect has this email?
pub fn lookup(context: &Context, audiences: Vec<String>) -> Request {
    let Prospect::Email(email) = &context.prospect else {
        return prospect_first(context, audiences);
    };
    request(
        Method::Get,
        format!("/prospects?filter%5Bemails%5D={}", query_value(email)),
        String::new(),
        Purpose::Lookup,
        Some(key_of(email)),
        context,
        audiences,
    )
}

/// The `account` relationship, once the account is known.
fn relationships(context: &Context) -> Option<Value> {
    context
        .account
        .map(|id| json!({ "account": { "data": { "type": "account", "id": id } } }))
}

/// No prospect has the email: create one with it.
pub fn create(context: &Context, audiences: Vec<String>) -> Request {
    let Prospect::Email(email) = &context.prospect else {
        return prospect_first(context, audiences);
    };
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
                    .is_some_and(|e| &e == email)
            });
            if !has {
                list.insert(0, Value::String(email.clone()));
            }
        }
        other => *other = json!([email]),
    }
    let mut data = json!({ "type": "prospect", "attributes": attributes });
    if let Some(relationships) = relationships(context) {
        data["relationships"] = relationships;
    }
    request(
        Method::Post,
        "/prospects".to_owned(),
        json!({ "data": data }).to_string(),
        Purpose::Create,
        Some(key_of(email)),
        context,
        audiences,
    )
}

/// The prospect is known: write the attributes to it.
pub fn update(id: u64, context: &Context, audiences: Vec<String>) -> Request {
    let mut data = json!({ "type": "prospect", "id": id, "attributes": context.attributes });
    if let Some(relationships) = relationships(context) {
        data["relationships"] = relationships;
    }
    request(
        Method::Patch,
        format!("/prospects/{id}"),
        json!({ "data": data }).to_string(),
        Purpose::Update,
        // An update knows its prospect: nothing left to recall.
        None,
        context,
        audiences,
    )
}

/// Which account is the company's? By domain when it has one, else by
/// name.
fn account_lookup(company: &Company, context: &Context, audiences: Vec<String>) -> Request {
    let filter = match (&company.domain, &company.name) {
        (Some(domain), _) => format!("filter%5Bdomain%5D={}", query_value(domain)),
        (None, Some(name)) => format!("filter%5Bname%5D={}", query_value(name)),
        (None, None) => String::new(),
    };
    request(
        Method::Get,
        format!("/accounts?{filter}"),
        String::new(),
        Purpose::Lookup,
        Some(company.fact()),
        context,
        audiences,
    )
}

/// No account is the company's: create it (Outreach requires a name; a
/// company known by its domain only is named by it).
fn account_create(company: &Company, context: &Context, audiences: Vec<String>) -> Request {
    let mut attributes = Map::new();
    let name = company.name.clone().or_else(|| company.domain.clone());
    attributes.insert("name".into(), json!(name));
    if let Some(domain) = &company.domain {
        attributes.insert("domain".into(), json!(domain));
    }
    request(
        Method::Post,
        "/accounts".to_owned(),
        json!({ "data": { "type": "account", "attributes": attributes } }).to_string(),
        Purpose::Create,
        Some(company.fact()),
        context,
        audiences,
    )
}

fn is_account_step(request: &Request) -> bool {
    request.path.starts_with("/accounts")
}

/// A remembered id, as the host gives it back.
fn remembered_id(value: &str) -> Option<u64> {
    value.trim().parse::<u64>().ok().filter(|id| *id > 0)
}

/// The step to send instead of `request` now that the fact it recalls is
/// known: once the company's account is, the prospect's first step (which
/// may recall the prospect in turn); once the prospect is, its update. A
/// request that is not a step, or a value that is not an id, is sent as
/// is.
pub fn recall(request: &Request, value: &str) -> Request {
    let (Some(mut context), Some(id)) = (Context::of(request), remembered_id(value)) else {
        return request.clone();
    };
    let audiences = request.audiences.clone();
    if is_account_step(request) {
        context.account = Some(id);
        return prospect_first(&context, audiences);
    }
    match request.purpose {
        Purpose::Update => request.clone(),
        Purpose::Lookup | Purpose::Create => update(id, &context, audiences),
    }
}

/// Two queued steps for one key as one: the older step (the delivery's
/// place in its flow) carrying both attribute sets, the newer's values
/// winning, and the newer's company when it names one. `None` when either
/// is not a step.
pub fn merge(older: &Request, newer: &Request) -> Option<Request> {
    if older.key != newer.key {
        return None;
    }
    let mut context = Context::of(older)?;
    let newer_context = Context::of(newer)?;
    if context.prospect != newer_context.prospect {
        return None;
    }
    context.attributes.extend(newer_context.attributes);
    let mut audiences = older.audiences.clone();
    for a in &newer.audiences {
        if !audiences.contains(a) {
            audiences.push(a.clone());
        }
    }
    if newer_context.company.is_some() && newer_context.company != context.company {
        // Another company: its account is to be found again, from the
        // start of the delivery.
        context.company = newer_context.company;
        context.account = None;
        return Some(first(&context, audiences));
    }
    Some(match (is_account_step(older), older.purpose) {
        (true, _) => first(&context, audiences),
        (false, Purpose::Lookup) => lookup(&context, audiences),
        (false, Purpose::Create) => create(&context, audiences),
        (false, Purpose::Update) => update(prospect_id_of_path(&older.path)?, &context, audiences),
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

    fn delivered() -> Self {
        Self {
            verdict: Verdict::Delivered,
            remember: Vec::new(),
            forget: Vec::new(),
        }
    }

    fn remembering(mut self, name: String, id: u64) -> Self {
        self.remember.push(Fact {
            name,
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

/// What a list answered: the lowest id found (Outreach keeps one prospect
/// per email; should two come back, the oldest is the one), none, or an
/// answer that is not a list.
fn listed(body: &str) -> Result<Option<u64>, ()> {
    let answer: Value = serde_json::from_str(body).map_err(|_| ())?;
    match answer.get("data") {
        Some(Value::Array(found)) if found.is_empty() => Ok(None),
        Some(Value::Array(found)) => found
            .iter()
            .filter_map(resource_id)
            .min()
            .map(Some)
            .ok_or(()),
        _ => Err(()),
    }
}

fn created(body: &str) -> Option<u64> {
    serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|answer| answer.get("data").and_then(resource_id))
}

/// The answer to a step, for the statuses where the step decides
/// (success, not found, a refused create); `None` for the others (rate
/// limits, server errors, credentials), which every request shares, and
/// for a request that is not a step.
pub fn classify(request: &Request, status: u16, body: &str) -> Option<Result<Outcome, Verdict>> {
    let context = Context::of(request)?;
    let audiences = || request.audiences.clone();
    if is_account_step(request) {
        let company = context.company.clone()?;
        let with_account = |id: u64| {
            let mut next = context.clone();
            next.account = Some(id);
            Outcome::next(prospect_first(&next, audiences())).remembering(company.fact(), id)
        };
        return Some(match (request.purpose, status) {
            (Purpose::Lookup, 200..=299) => match listed(body) {
                Ok(Some(id)) => Ok(with_account(id)),
                Ok(None) => Ok(Outcome::next(account_create(
                    &company,
                    &context,
                    audiences(),
                ))),
                Err(()) => Err(unreadable(&context, "account lookup", "accounts", body)),
            },
            (Purpose::Lookup, 404) => Ok(Outcome::next(account_create(
                &company,
                &context,
                audiences(),
            ))),
            (Purpose::Create, 200..=299) => match created(body) {
                Some(id) => Ok(with_account(id)),
                None => Err(unreadable(&context, "account creation", "accounts", body)),
            },
            _ => return None,
        });
    }
    let Prospect::Email(email) = &context.prospect else {
        return None;
    };
    Some(match (request.purpose, status) {
        (Purpose::Lookup, 200..=299) => match listed(body) {
            Ok(Some(id)) => {
                Ok(Outcome::next(update(id, &context, audiences())).remembering(key_of(email), id))
            }
            Ok(None) => Ok(Outcome::next(create(&context, audiences()))),
            Err(()) => Err(unreadable(&context, "lookup", "prospects", body)),
        },
        // Some Outreach deployments answer a lookup that finds nothing 404.
        (Purpose::Lookup, 404) => Ok(Outcome::next(create(&context, audiences()))),
        (Purpose::Create, 200..=299) => Ok(match created(body) {
            Some(id) => Outcome::delivered().remembering(key_of(email), id),
            // Created all the same; the next update looks it up.
            None => Outcome::delivered(),
        }),
        (Purpose::Create, 422) if email_taken(body) => {
            if context.taken + 1 >= MAX_TAKEN {
                return Some(Err(Verdict::Rejected(crate::types::Rejection {
                    code: "email-taken-invisible".to_owned(),
                    message: format!(
                        "prospect with email {email}: Outreach refused to create it {MAX_TAKEN} times because the email is taken, yet no prospect this user can see has it (is it owned by a user this account cannot read?)"
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
            outcome.forget.push(key_of(email));
            Ok(outcome)
        }
        _ => return None,
    })
}

/// How messages name the prospect a request is for: `prospect 42` or
/// `prospect with email ada@example.com`.
pub fn subject(request: &Request) -> String {
    match Context::of(request) {
        Some(context) => context.subject(),
        None => format!("prospect {}", request.key),
    }
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

fn unreadable(context: &Context, step: &str, what: &str, body: &str) -> Verdict {
    let excerpt: String = body.trim().chars().take(200).collect();
    Verdict::Rejected(crate::types::Rejection {
        code: "unexpected-response".to_owned(),
        message: format!(
            "{}: Outreach's answer to the {step} is not a JSON:API list of {what}: {excerpt}",
            context.subject()
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
        Context::new(Prospect::Email("ada@example.com".into()), attributes)
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
            &Context::new(Prospect::Email("ada@example.com".into()), newer_attributes),
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
