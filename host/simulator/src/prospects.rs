//! The prospect endpoints over JSON:API, validated as Outreach validates
//! them: `GET` and `PATCH /api/v2/prospects/{id}`, the list with
//! `filter[emails]`, and `POST /api/v2/prospects`; Outreach keeps one
//! prospect per email address (compared trimmed and in lower case), so a
//! create or an update that would give a second prospect an email is
//! refused with Outreach's 422s. Also the `/sim/` views of the store.

use std::sync::Arc;
use std::time::SystemTime;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use rand::Rng;
use serde_json::{Map, Value, json};

use crate::admission::admit;
use crate::schema::{self, Attribute, Field};
use crate::{
    ApiError, JSON_API, Shared, epoch_seconds_ceil, error_response, iso_utc, json_api, one_error,
};

fn parse_id(raw: &str) -> Option<u64> {
    raw.parse().ok()
}

pub(crate) async fn get_prospect(
    State(shared): State<Arc<Shared>>,
    Path(raw_id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let quota = match admit(&shared, &headers) {
        Ok(q) => q,
        Err(response) => return response,
    };
    let found = parse_id(&raw_id).and_then(|id| {
        shared
            .store()
            .prospects
            .get(&id)
            .map(|attributes| (id, attributes.clone()))
    });
    let mut response = match found {
        Some((id, attributes)) => json_api(StatusCode::OK, prospect_document(id, attributes)),
        None => not_found(&raw_id),
    };
    quota.apply(&mut response);
    response
}

fn not_found(raw_id: &str) -> Response {
    one_error(
        StatusCode::NOT_FOUND,
        "resourceNotFound",
        "Resource Not Found",
        format!("Could not find 'prospect' with ID '{raw_id}'."),
        None,
    )
}

fn prospect_document(id: u64, attributes: Map<String, Value>) -> Value {
    json!({ "data": { "type": "prospect", "id": id, "attributes": attributes } })
}

pub(crate) async fn patch_prospect(
    State(shared): State<Arc<Shared>>,
    Path(raw_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    with_faults(&shared, &headers, |shared| {
        let response = update(shared, &raw_id, &headers, &body);
        if response.status() == StatusCode::OK {
            shared.store().stats.updates_applied += 1;
        } else {
            shared.store().stats.rejected += 1;
        }
        response
    })
    .await
}

/// `GET /api/v2/prospects?filter[emails]=ADDRESS`: the prospects that have
/// the address (Outreach keeps at most one); without the filter, the first
/// page of prospects.
pub(crate) async fn list_prospects(
    State(shared): State<Arc<Shared>>,
    Query(query): Query<Vec<(String, String)>>,
    headers: HeaderMap,
) -> Response {
    with_faults(&shared, &headers, |shared| {
        let email = query
            .iter()
            .find(|(name, _)| name == "filter[emails]")
            .map(|(_, value)| normalised(value));
        let mut store = shared.store();
        store.stats.lookups += 1;
        let found: Vec<Value> = match email {
            Some(email) => store
                .emails
                .get(&email)
                .and_then(|id| store.prospects.get(id).map(|a| (*id, a)))
                .map(|(id, attributes)| resource(id, attributes.clone()))
                .into_iter()
                .collect(),
            None => store
                .prospects
                .iter()
                .take(PAGE_SIZE)
                .map(|(id, attributes)| resource(*id, attributes.clone()))
                .collect(),
        };
        json_api(StatusCode::OK, json!({ "data": found }))
    })
    .await
}

/// `POST /api/v2/prospects`: a new prospect, `201` with its id; `422` when
/// one of its emails is another prospect's.
pub(crate) async fn create_prospect(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    with_faults(&shared, &headers, |shared| {
        let response = create(shared, &headers, &body);
        if response.status() == StatusCode::CREATED {
            shared.store().stats.creates += 1;
        } else {
            shared.store().stats.rejected += 1;
        }
        response
    })
    .await
}

/// How many prospects a list without a filter returns.
const PAGE_SIZE: usize = 50;

/// An email as Outreach compares it.
pub(crate) fn normalised(email: &str) -> String {
    email.trim().to_lowercase()
}

fn resource(id: u64, attributes: Map<String, Value>) -> Value {
    json!({
        "type": "prospect",
        "id": id,
        "attributes": attributes,
        "links": { "self": format!("https://api.outreach.io/api/v2/prospects/{id}") }
    })
}

/// Authenticates and paces the request, injects the configured faults
/// (latency, 500/503 without effect, a connection dropped after the
/// effect), and otherwise answers with `handle`.
pub(crate) async fn with_faults(
    shared: &Arc<Shared>,
    headers: &HeaderMap,
    handle: impl FnOnce(&Shared) -> Response,
) -> Response {
    let quota = match admit(shared, headers) {
        Ok(q) => q,
        Err(response) => return response,
    };
    let faults = &shared.config.faults;
    if !faults.latency.is_zero() {
        tokio::time::sleep(faults.latency).await;
    }
    let (inject_error, drop_after) = {
        let mut store = shared.store();
        let error = store.rng.random_bool(faults.error_share.clamp(0.0, 1.0));
        let drop = store.rng.random_bool(faults.drop_share.clamp(0.0, 1.0));
        let maintenance = store.rng.random_bool(0.5);
        (error.then_some(maintenance), drop)
    };
    let mut response = match inject_error {
        Some(maintenance) => {
            shared.store().stats.injected_errors += 1;
            if maintenance {
                let mut r = one_error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "scheduledServerMaintenance",
                    "Scheduled Server Maintenance",
                    "The server is down for maintenance.",
                    None,
                );
                r.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                r
            } else {
                one_error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internalServerError",
                    "Internal Server Error",
                    "Something went wrong.",
                    None,
                )
            }
        }
        None => handle(shared),
    };
    if drop_after && inject_error.is_none() {
        shared.store().stats.dropped_connections += 1;
        // Unwinding out of the handler makes the server close the
        // connection without answering; `resume_unwind` skips the panic
        // hook, so nothing is printed.
        std::panic::resume_unwind(Box::new("simulated dropped connection"));
    }
    quota.apply(&mut response);
    response
}

/// The `data` object of a JSON:API document, or the answer refusing the
/// request: the JSON:API media type, a JSON body, `data.type` prospect.
/// (Refusals boxed: a response is large, and the happy path carries none.)
fn prospect_data(headers: &HeaderMap, body: &[u8]) -> Result<Map<String, Value>, Box<Response>> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if content_type.split(';').next().map(str::trim) != Some(JSON_API) {
        return Err(Box::new(one_error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupportedMediaType",
            "Unsupported Media Type",
            format!("Content-Type must be {JSON_API}, not '{content_type}'."),
            None,
        )));
    }
    let document: Value = serde_json::from_slice(body).map_err(|e| {
        Box::new(one_error(
            StatusCode::BAD_REQUEST,
            "badRequest",
            "Bad Request",
            format!("The request body is not valid JSON: {e}"),
            None,
        ))
    })?;
    let data = match document {
        Value::Object(mut root) => root.remove("data"),
        _ => None,
    };
    let Some(Value::Object(data)) = data else {
        return Err(Box::new(one_error(
            StatusCode::BAD_REQUEST,
            "badRequest",
            "Bad Request",
            "The request body must have a 'data' object.",
            Some("/data"),
        )));
    };
    if data.get("type").and_then(Value::as_str) != Some("prospect") {
        return Err(Box::new(one_error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validationError",
            "Validation Error",
            "data.type must be 'prospect'.",
            Some("/data/type"),
        )));
    }
    Ok(data)
}

/// `data.attributes`, each checked against the schema.
fn checked_attributes(
    shared: &Shared,
    data: &Map<String, Value>,
) -> Result<Map<String, Value>, Box<Response>> {
    let attributes = match data.get("attributes") {
        None => Map::new(),
        Some(Value::Object(a)) => a.clone(),
        Some(_) => {
            return Err(Box::new(one_error(
                StatusCode::UNPROCESSABLE_ENTITY,
                "validationError",
                "Validation Error",
                "data.attributes must be an object.",
                Some("/data/attributes"),
            )));
        }
    };
    let errors: Vec<ApiError> = attributes
        .iter()
        .filter_map(|(name, value)| {
            validate_attribute(shared.config.custom_fields, name, value).map(|detail| ApiError {
                status: StatusCode::UNPROCESSABLE_ENTITY,
                id: "validationError",
                title: "Validation Error",
                detail,
                pointer: Some(format!("/data/attributes/{name}")),
            })
        })
        .collect();
    if errors.is_empty() {
        Ok(attributes)
    } else {
        Err(Box::new(error_response(errors)))
    }
}

/// The emails `attributes` gives a prospect, normalised.
fn emails_of(attributes: &Map<String, Value>) -> Option<Vec<String>> {
    let Some(Value::Array(emails)) = attributes.get("emails") else {
        return None;
    };
    Some(
        emails
            .iter()
            .filter_map(Value::as_str)
            .map(normalised)
            .collect(),
    )
}

fn now_text() -> Value {
    json!(format!(
        "{}.000Z",
        iso_utc(epoch_seconds_ceil(SystemTime::now()))
    ))
}

/// Validates a JSON:API prospect create and applies it.
fn create(shared: &Shared, headers: &HeaderMap, body: &[u8]) -> Response {
    let data = match prospect_data(headers, body) {
        Ok(data) => data,
        Err(refused) => return *refused,
    };
    if data.contains_key("id") {
        return one_error(
            StatusCode::BAD_REQUEST,
            "badRequest",
            "Bad Request",
            "A prospect to create must not have an id.",
            Some("/data/id"),
        );
    }
    let mut attributes = match checked_attributes(shared, &data) {
        Ok(attributes) => attributes,
        Err(refused) => return *refused,
    };
    let account = match crate::accounts::linked_account(shared, &data) {
        Ok(account) => account,
        Err(refused) => return *refused,
    };
    let emails = emails_of(&attributes).unwrap_or_default();
    let mut store = shared.store();
    if emails.iter().any(|e| store.emails.contains_key(e)) {
        store.stats.duplicates_refused += 1;
        return one_error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validationError",
            "Validation Error",
            "Contacts email hash has already been taken.",
            Some("/data"),
        );
    }
    let id = store
        .prospects
        .keys()
        .next_back()
        .map_or(1, |last| last + 1);
    for email in emails {
        store.emails.insert(email, id);
    }
    attributes.insert("createdAt".into(), now_text());
    attributes.insert("updatedAt".into(), now_text());
    store
        .applied
        .entry(id)
        .or_default()
        .push(attributes.clone());
    store.prospects.insert(id, attributes.clone());
    if let Some(account) = account {
        store.prospect_accounts.insert(id, account);
    }
    json_api(
        StatusCode::CREATED,
        json!({ "data": resource(id, attributes) }),
    )
}

/// Validates a JSON:API prospect update and applies it.
fn update(shared: &Shared, raw_id: &str, headers: &HeaderMap, body: &[u8]) -> Response {
    let data = match prospect_data(headers, body) {
        Ok(data) => data,
        Err(refused) => return *refused,
    };
    let Some(id) = parse_id(raw_id) else {
        return not_found(raw_id);
    };
    if data.get("id").and_then(Value::as_u64) != Some(id) {
        return one_error(
            StatusCode::BAD_REQUEST,
            "badRequest",
            "Bad Request",
            format!("data.id must be the integer {id} of the URL."),
            Some("/data/id"),
        );
    }
    if !shared.store().prospects.contains_key(&id) {
        return not_found(raw_id);
    }
    let attributes = match checked_attributes(shared, &data) {
        Ok(attributes) => attributes,
        Err(refused) => return *refused,
    };
    let account = match crate::accounts::linked_account(shared, &data) {
        Ok(account) => account,
        Err(refused) => return *refused,
    };
    let mut store = shared.store();
    if !store.prospects.contains_key(&id) {
        return not_found(raw_id);
    }
    if let Some(account) = account {
        store.prospect_accounts.insert(id, account);
    }
    let emails = emails_of(&attributes);
    if let Some(emails) = &emails
        && emails
            .iter()
            .any(|e| store.emails.get(e).is_some_and(|owner| *owner != id))
    {
        store.stats.duplicates_refused += 1;
        return one_error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validationDuplicateValueError",
            "Validation Duplicate Value Error",
            "A Contact with this email_hash already exists.",
            Some("/data/attributes/emails"),
        );
    }
    if let Some(emails) = emails {
        // The emails it had are its no more (read from the prospect: a
        // scan of the index would cost every update the whole index).
        let old = store
            .prospects
            .get(&id)
            .and_then(emails_of)
            .unwrap_or_default();
        for email in old {
            if store.emails.get(&email) == Some(&id) {
                store.emails.remove(&email);
            }
        }
        for email in emails {
            store.emails.insert(email, id);
        }
    }
    store
        .applied
        .entry(id)
        .or_default()
        .push(attributes.clone());
    let Some(prospect) = store.prospects.get_mut(&id) else {
        return not_found(raw_id);
    };
    prospect.extend(attributes);
    prospect.insert("updatedAt".into(), now_text());
    json_api(StatusCode::OK, prospect_document(id, prospect.clone()))
}

/// Why Outreach would refuse `value` for attribute `name`, if it would.
fn validate_attribute(custom_fields: u32, name: &str, value: &Value) -> Option<String> {
    let field = match schema::attribute(name, custom_fields) {
        Attribute::Writable(field) => field,
        Attribute::Unknown => return Some(format!("{name} is not a valid attribute.")),
        Attribute::ReadOnly => return Some(format!("{name} is read-only.")),
    };
    let too_long = |s: &str, max: usize| {
        let n = s.chars().count();
        (n > max).then(|| format!("{name} is too long ({n} characters, maximum {max})."))
    };
    match (field, value) {
        (_, Value::Null) => None,
        (Field::Text(max), Value::String(s)) => too_long(s, max),
        (Field::TextArray(max), Value::Array(items)) => items.iter().find_map(|item| match item {
            Value::String(s) => too_long(s, max),
            _ => Some(format!("{name} must be an array of strings.")),
        }),
        (Field::Boolean, Value::Bool(_)) | (Field::Number, Value::Number(_)) => None,
        (Field::WholeNumber, Value::Number(n)) if n.is_i64() || n.is_u64() => None,
        (Field::Date, Value::String(s)) if schema::is_date(s) => None,
        (field, _) => Some(format!("{name} has the wrong type (expected {field:?}).")),
    }
}

pub(crate) async fn dump_prospects(State(shared): State<Arc<Shared>>) -> Response {
    let store = shared.store();
    let all: Vec<Value> = store
        .prospects
        .iter()
        .map(|(id, attributes)| json!({ "id": id, "attributes": attributes }))
        .collect();
    json_api(StatusCode::OK, json!({ "data": all }))
}

pub(crate) async fn stats(State(shared): State<Arc<Shared>>) -> Response {
    let stats = shared.store().stats.clone();
    json_api(StatusCode::OK, json!(stats))
}
