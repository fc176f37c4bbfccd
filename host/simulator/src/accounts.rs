//! Outreach accounts over JSON:API: `GET /api/v2/accounts` with
//! `filter[domain]` or `filter[name]`, `POST /api/v2/accounts` (`name`
//! required), and a prospect's to-one `account` relationship, checked
//! when a prospect write sets it (the account's `prospects` side is not
//! writable).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use serde_json::{Map, Value, json};

use crate::prospects::with_faults;
use crate::{JSON_API, Shared, json_api, one_error};

/// How many accounts a list without a filter returns.
const PAGE_SIZE: usize = 50;

fn resource(id: u64, attributes: &Map<String, Value>) -> Value {
    json!({
        "type": "account",
        "id": id,
        "attributes": attributes,
        "links": { "self": format!("https://api.outreach.io/api/v2/accounts/{id}") }
    })
}

fn matches(attributes: &Map<String, Value>, field: &str, wanted: &str) -> bool {
    attributes
        .get(field)
        .and_then(Value::as_str)
        .is_some_and(|v| v.trim().eq_ignore_ascii_case(wanted.trim()))
}

/// `GET /api/v2/accounts?filter[domain]=…` (or `filter[name]=…`): the
/// accounts that match, oldest first.
pub(crate) async fn list_accounts(
    State(shared): State<Arc<Shared>>,
    Query(query): Query<Vec<(String, String)>>,
    headers: HeaderMap,
) -> Response {
    with_faults(&shared, &headers, |shared| {
        let filter = query.iter().find_map(|(name, value)| match name.as_str() {
            "filter[domain]" => Some(("domain", value.as_str())),
            "filter[name]" => Some(("name", value.as_str())),
            _ => None,
        });
        let mut store = shared.store();
        store.stats.account_lookups += 1;
        let found: Vec<Value> = store
            .accounts
            .iter()
            .filter(|(_, a)| filter.is_none_or(|(field, wanted)| matches(a, field, wanted)))
            .take(PAGE_SIZE)
            .map(|(id, a)| resource(*id, a))
            .collect();
        json_api(StatusCode::OK, json!({ "data": found }))
    })
    .await
}

/// `POST /api/v2/accounts`: a new account, `201` with its id.
pub(crate) async fn create_account(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    with_faults(&shared, &headers, |shared| {
        let response = create(shared, &headers, &body);
        if response.status() != StatusCode::CREATED {
            shared.store().stats.rejected += 1;
        }
        response
    })
    .await
}

fn create(shared: &Shared, headers: &HeaderMap, body: &[u8]) -> Response {
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
    let document: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let data = &document["data"];
    if data["type"] != json!("account") {
        return one_error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validationError",
            "Validation Error",
            "data.type must be 'account'.",
            Some("/data/type"),
        );
    }
    let Some(Value::Object(attributes)) = data.get("attributes").cloned() else {
        return one_error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validationError",
            "Validation Error",
            "data.attributes must be an object.",
            Some("/data/attributes"),
        );
    };
    let named = attributes
        .get("name")
        .and_then(Value::as_str)
        .is_some_and(|n| !n.trim().is_empty());
    if !named {
        return one_error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validationError",
            "Validation Error",
            "Name can't be blank.",
            Some("/data/attributes/name"),
        );
    }
    let mut store = shared.store();
    let id = store.accounts.keys().next_back().map_or(1, |last| last + 1);
    store.accounts.insert(id, attributes.clone());
    store.stats.account_creates += 1;
    json_api(
        StatusCode::CREATED,
        json!({ "data": resource(id, &attributes) }),
    )
}

/// The account a prospect write links to (`relationships.account`), or
/// why Outreach would refuse it; `Ok(None)` when it sets none.
pub(crate) fn linked_account(
    shared: &Shared,
    data: &Map<String, Value>,
) -> Result<Option<u64>, Box<Response>> {
    let Some(relationships) = data.get("relationships") else {
        return Ok(None);
    };
    let refused = |detail: &str| {
        Box::new(one_error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validationError",
            "Validation Error",
            detail,
            Some("/data/relationships/account"),
        ))
    };
    let Some(link) = relationships.get("account") else {
        return Err(refused("Only the account relationship can be set here."));
    };
    let target = &link["data"];
    if target["type"] != json!("account") {
        return Err(refused(
            "account must link to a resource of type 'account'.",
        ));
    }
    let id = match &target["id"] {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    };
    match id {
        Some(id) if shared.store().accounts.contains_key(&id) => Ok(Some(id)),
        _ => Err(refused("The account does not exist.")),
    }
}
