//! The prospect endpoints: `GET` and `PATCH /api/v2/prospects/{id}` over
//! JSON:API, validated as Outreach validates them, and the `/sim/` views of
//! the store.

use std::sync::Arc;
use std::time::SystemTime;

use axum::body::Bytes;
use axum::extract::{Path, State};
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
    let quota = match admit(&shared, &headers) {
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
        None => {
            let response = update(&shared, &raw_id, &headers, &body);
            if response.status() == StatusCode::OK {
                shared.store().stats.updates_applied += 1;
            } else {
                shared.store().stats.rejected += 1;
            }
            response
        }
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

/// Validates a JSON:API prospect update and applies it.
fn update(shared: &Shared, raw_id: &str, headers: &HeaderMap, body: &[u8]) -> Response {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if content_type.split(';').next().map(str::trim) != Some(JSON_API) {
        return one_error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupportedMediaType",
            "Unsupported Media Type",
            format!("Content-Type must be {JSON_API}, not '{content_type}'."),
            None,
        );
    }
    let Some(id) = parse_id(raw_id) else {
        return not_found(raw_id);
    };
    let document: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => {
            return one_error(
                StatusCode::BAD_REQUEST,
                "badRequest",
                "Bad Request",
                format!("The request body is not valid JSON: {e}"),
                None,
            );
        }
    };
    let Some(data) = document.get("data").and_then(Value::as_object) else {
        return one_error(
            StatusCode::BAD_REQUEST,
            "badRequest",
            "Bad Request",
            "The request body must have a 'data' object.",
            Some("/data"),
        );
    };
    if data.get("type").and_then(Value::as_str) != Some("prospect") {
        return one_error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validationError",
            "Validation Error",
            "data.type must be 'prospect'.",
            Some("/data/type"),
        );
    }
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
    let attributes = match data.get("attributes") {
        None => Map::new(),
        Some(Value::Object(a)) => a.clone(),
        Some(_) => {
            return one_error(
                StatusCode::UNPROCESSABLE_ENTITY,
                "validationError",
                "Validation Error",
                "data.attributes must be an object.",
                Some("/data/attributes"),
            );
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
    if !errors.is_empty() {
        return error_response(errors);
    }
    let mut store = shared.store();
    if !store.prospects.contains_key(&id) {
        return not_found(raw_id);
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
    prospect.insert(
        "updatedAt".into(),
        json!(format!(
            "{}.000Z",
            iso_utc(epoch_seconds_ceil(SystemTime::now()))
        )),
    );
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
