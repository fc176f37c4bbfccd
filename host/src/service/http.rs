//! The service's HTTP interface: record intake, health, readiness and
//! metrics. Every answer is JSON (or the metrics text); nothing from a
//! request is echoed but validated names.

use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;

use super::intake::{self, Format};
use super::keys;
use super::metrics::{self, AccountFigures, DestinationFigures};
use super::stream::{AcceptError, Acceptance};
use super::{Service, Set};

/// The longest idempotency key.
const MAX_IDEMPOTENCY_KEY: usize = 255;
/// Retry-After for a destination over its queue quota, seconds.
const OVER_QUOTA_RETRY_SECS: u64 = 10;
/// Retry-After while the cluster does not take records, seconds.
const CLUSTER_RETRY_SECS: u64 = 2;
/// Retry-After while the service shuts down, seconds.
const DRAINING_RETRY_SECS: u64 = 5;

pub fn router(service: Arc<Service>) -> Router {
    Router::new()
        .route("/v1/destinations/{name}/records", post(post_records))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .merge(super::admin::routes())
        .with_state(service)
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, axum::Json(json!({ "error": message.into() }))).into_response()
}

fn with_retry_after(mut response: Response, secs: u64) -> Response {
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    response
}

fn unauthorized() -> Response {
    let mut response = error(
        StatusCode::UNAUTHORIZED,
        "a valid ingest key is required (Authorization: Bearer KEY)",
    );
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

/// Whether the request may use `destination` (`None`: one that does not
/// exist): with no key configured for it, anyone may (a loopback-only
/// service); otherwise the request's key must be one of the service's or
/// the destination's.
fn authorized(set: &Set, destination: Option<&str>, headers: &HeaderMap) -> bool {
    let own = destination
        .and_then(|name| set.destinations.get(name))
        .map(|served| served.spec.ingest_keys.as_slice())
        .unwrap_or_default();
    let accepted: Vec<_> = set.file.ingest_keys.iter().chain(own).collect();
    if accepted.is_empty() {
        return destination.is_some() || !any_keys(set);
    }
    bearer(headers).is_some_and(|key| keys::accepts(accepted, key))
}

fn any_keys(set: &Set) -> bool {
    !set.file.ingest_keys.is_empty()
        || set
            .destinations
            .values()
            .any(|served| !served.spec.ingest_keys.is_empty())
}

/// Where a destination's records go.
enum Target {
    /// Its stream, over its journal.
    Stream(Arc<super::stream::Stream>),
    /// The cluster's intake stream, through this worker.
    Cluster(Arc<crate::cluster::Worker>),
}

async fn post_records(
    State(service): State<Arc<Service>>,
    Path(name): Path<String>,
    request: Request,
) -> Response {
    let set = service.current();
    let exists = set.destinations.contains_key(&name);
    if !authorized(&set, exists.then_some(name.as_str()), request.headers()) {
        return unauthorized();
    }
    if service.draining() {
        return with_retry_after(
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the service is shutting down",
            ),
            DRAINING_RETRY_SECS,
        );
    }
    let Some(served) = set.destinations.get(&name).cloned() else {
        return error(
            StatusCode::NOT_FOUND,
            "no such destination (see the destinations file)",
        );
    };
    if served.restarting {
        return with_retry_after(
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the destination is restarting with new settings",
            ),
            DRAINING_RETRY_SECS,
        );
    }
    let target = match (served.stream.clone(), service.worker()) {
        (Some(stream), _) => Target::Stream(stream),
        (None, Some(worker)) if served.clustered => Target::Cluster(worker.clone()),
        _ => {
            return error(
                StatusCode::CONFLICT,
                format!("destination {name} is disabled (enabled = false)"),
            );
        }
    };
    let headers = request.headers();
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let Some(format) = Format::of_content_type(content_type) else {
        return error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "send application/x-ndjson (one record per line) or application/json (an array of records)",
        );
    };
    let idempotency_key = match headers.get("idempotency-key") {
        None => None,
        Some(value) => match value.to_str() {
            Ok(key)
                if !key.is_empty()
                    && key.len() <= MAX_IDEMPOTENCY_KEY
                    && key.bytes().all(|b| b.is_ascii_graphic()) =>
            {
                Some(key.to_owned())
            }
            _ => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "Idempotency-Key must be 1-{MAX_IDEMPOTENCY_KEY} visible ASCII characters"
                    ),
                );
            }
        },
    };
    let limit = set.file.max_body_bytes;
    let too_large = || {
        error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the body is over the {limit}-byte limit (max_body_bytes)"),
        )
    };
    if headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .is_some_and(|length| length > limit)
    {
        return too_large();
    }
    let max_record_bytes = set.file.max_record_bytes;
    drop(set);
    let body: Bytes = match axum::body::to_bytes(
        request.into_body(),
        usize::try_from(limit).unwrap_or(usize::MAX),
    )
    .await
    {
        Ok(body) => body,
        Err(_) => return too_large(),
    };
    let records = match intake::records(&body, format, max_record_bytes) {
        Ok(records) => records,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let accepted = match target {
        Target::Stream(stream) => stream.accept(records, idempotency_key).await,
        Target::Cluster(worker) => worker.accept(&name, records, idempotency_key).await,
    };
    match accepted {
        Ok(Acceptance::Fresh(accepted)) => {
            (StatusCode::ACCEPTED, axum::Json(accepted)).into_response()
        }
        Ok(Acceptance::Repeated(first)) => {
            let mut response = (StatusCode::ACCEPTED, Body::from(first)).into_response();
            let headers = response.headers_mut();
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            headers.insert("idempotent-replayed", HeaderValue::from_static("true"));
            response
        }
        Err(e @ AcceptError::OverQuota { .. }) => with_retry_after(
            error(StatusCode::TOO_MANY_REQUESTS, e.to_string()),
            OVER_QUOTA_RETRY_SECS,
        ),
        Err(e @ AcceptError::Draining) => with_retry_after(
            error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
            DRAINING_RETRY_SECS,
        ),
        Err(e @ AcceptError::Cluster(_)) => {
            tracing::warn!(destination = %name, "intake failed: {e}");
            with_retry_after(
                error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
                CLUSTER_RETRY_SECS,
            )
        }
        Err(e) => {
            tracing::error!(destination = %name, "intake failed: {e}");
            error(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
        }
    }
}

async fn healthz() -> Response {
    axum::Json(json!({ "status": "alive" })).into_response()
}

async fn readyz(State(service): State<Arc<Service>>) -> Response {
    if service.draining() {
        return error(StatusCode::SERVICE_UNAVAILABLE, "shutting down");
    }
    let set = service.current();
    let mut destinations = serde_json::Map::new();
    for (name, served) in &set.destinations {
        let state = match &served.stream {
            Some(_) => "accepting",
            None if served.clustered => "accepting",
            None => "disabled",
        };
        destinations.insert(name.clone(), json!(state));
    }
    let mut ready = json!({ "status": "ready", "destinations": destinations });
    if let Some(worker) = service.worker() {
        let status = worker.status();
        ready["worker"] = json!(status.worker);
        ready["partitions"] = json!(status.partitions.keys().collect::<Vec<_>>());
    }
    axum::Json(ready).into_response()
}

async fn metrics_text(State(service): State<Arc<Service>>, headers: HeaderMap) -> Response {
    let set = service.current();
    if any_keys(&set) {
        let every_key: Vec<_> = set
            .file
            .ingest_keys
            .iter()
            .chain(
                set.destinations
                    .values()
                    .flat_map(|s| s.spec.ingest_keys.iter()),
            )
            .collect();
        if !bearer(&headers).is_some_and(|key| keys::accepts(every_key, key)) {
            return unauthorized();
        }
    }
    let now_ms = crate::clock::now_ms();
    let mut destinations = Vec::new();
    for (name, served) in &set.destinations {
        let status = match &served.stream {
            Some(stream) => match stream.status().await {
                Ok(status) => Some(status),
                Err(e) => {
                    tracing::warn!(destination = %name, "no figures: {e}");
                    None
                }
            },
            None => None,
        };
        destinations.push(DestinationFigures {
            name: name.clone(),
            account: served.account.clone(),
            enabled: served.stream.is_some() || served.clustered,
            status,
            now_ms,
        });
    }
    let accounts: Vec<AccountFigures> = set
        .accounts
        .values()
        .map(|account| {
            let (in_flight, budget_remaining) = account.limiter.budget_view();
            AccountFigures {
                name: account.name.clone(),
                budget_remaining,
                in_flight,
                token_expires_in_secs: account.token_expires_in(now_ms / 1000),
                refreshes: account.refreshes(),
            }
        })
        .collect();
    let text = metrics::render(&destinations, &accounts);
    ([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], text).into_response()
}
