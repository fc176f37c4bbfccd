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

use super::keys;
use super::listener::BodyError;
use super::metrics::{self, AccountFigures, DestinationFigures};
use super::{Service, Set};
use crate::intake::{self, AcceptError, Acceptance, Format, IdempotencyKey};

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
        .layer(axum::middleware::from_fn_with_state(
            service.clone(),
            loopback_hosts_only,
        ))
        .with_state(service)
}

/// Why a body could not be read, when the listener says (it was late,
/// or the connection broke); `None`: over the limit.
fn body_error(error: &axum::Error) -> Option<&BodyError> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        if let Some(found) = e.downcast_ref::<BodyError>() {
            return Some(found);
        }
        source = e.source();
    }
    None
}

/// A service on loopback answers only requests addressed to a loopback
/// name (or its `public_url`): a web page whose own name was made to
/// resolve to 127.0.0.1 (DNS rebinding) would otherwise reach it from the
/// user's browser, keys or not.
async fn loopback_hosts_only(
    State(service): State<Arc<Service>>,
    request: Request,
    next: axum::middleware::Next,
) -> Response {
    // Read and let go: a request must not hold the set (and its streams)
    // while it runs, or a reload waits for it.
    let (loopback, public_host) = {
        let set = service.current();
        let public_host = set
            .file
            .admin
            .as_ref()
            .and_then(|admin| admin.public_url.as_deref())
            .and_then(|url| reqwest::Url::parse(url).ok())
            .and_then(|url| url.host_str().map(str::to_ascii_lowercase));
        (set.file.listen.ip().is_loopback(), public_host)
    };
    if !loopback {
        return next.run(request).await;
    }
    let allowed = match request.headers().get(header::HOST) {
        // HTTP/1.0 may omit it; browsers never do.
        None => true,
        Some(value) => value
            .to_str()
            .ok()
            .and_then(|host| reqwest::Url::parse(&format!("http://{host}/")).ok())
            .and_then(|url| url.host_str().map(str::to_ascii_lowercase))
            .is_some_and(|host| {
                is_loopback_name(&host) || public_host.as_deref() == Some(host.as_str())
            }),
    };
    if allowed {
        next.run(request).await
    } else {
        error(
            StatusCode::MISDIRECTED_REQUEST,
            "this service on loopback answers only requests addressed to a loopback name (127.0.0.1, [::1], localhost) or its public_url",
        )
    }
}

fn is_loopback_name(host: &str) -> bool {
    host == "localhost"
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
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

/// The credentials of `Authorization: Bearer KEY` (the scheme's name is
/// case-insensitive).
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, credentials) = value.trim_start().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| credentials.trim())
        .filter(|key| !key.is_empty())
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
    let Some(target) = served.intake.clone() else {
        return error(
            StatusCode::CONFLICT,
            format!("destination {name} is disabled (enabled = false)"),
        );
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
    let producer = bearer(headers).map(str::to_owned);
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
        Err(e) => {
            return match body_error(&e) {
                Some(late @ BodyError::Deadline(_)) => {
                    error(StatusCode::REQUEST_TIMEOUT, late.to_string())
                }
                Some(broken) => error(StatusCode::BAD_REQUEST, broken.to_string()),
                None => too_large(),
            };
        }
    };
    let records = match intake::records(&body, format, max_record_bytes) {
        Ok(records) => records,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let idempotency_key =
        idempotency_key.map(|key| IdempotencyKey::new(key, producer.as_deref(), &body));
    let accepted = target.accept(records, idempotency_key).await;
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
        Err(e @ AcceptError::TooLarge(_)) => error(StatusCode::PAYLOAD_TOO_LARGE, e.to_string()),
        Err(e @ AcceptError::KeyReused(_)) => {
            error(StatusCode::UNPROCESSABLE_ENTITY, e.to_string())
        }
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
        let state = match &served.intake {
            Some(_) => "accepting",
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
    // The figures cover every destination: a destination's own key, which
    // its producer holds, does not read them.
    if any_keys(&set) || !set.file.metrics_keys.is_empty() {
        let accepted = set.file.ingest_keys.iter().chain(&set.file.metrics_keys);
        if !bearer(&headers).is_some_and(|key| keys::accepts(accepted, key)) {
            return unauthorized();
        }
    }
    let now_ms = crate::clock::now_ms();
    let mut destinations = Vec::new();
    for (name, served) in &set.destinations {
        destinations.push(DestinationFigures {
            name: name.clone(),
            account: served.account.clone(),
            enabled: served.intake.is_some(),
            now: served.read.snapshot().await,
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
