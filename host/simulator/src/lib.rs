//! A local stand-in for the parts of the Outreach API the connector uses:
//! prospects over JSON:API, bearer tokens, the per-user
//! rate limit with its headers and 429 text, and fault injection. It lets
//! the whole job run on one machine, and it is what the end-to-end tests
//! run against.
//!
//! Outreach's prospect schema (which attributes exist, their types and
//! limits) is the simulator's own ([`schema`]), written from the API's
//! documentation: the simulator shares no code with the destination it
//! checks, so it is an independent oracle.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use serde_json::{Map, Value, json};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

mod oauth;
pub mod schema;

pub use oauth::OAuthApp;
use schema::{Attribute, Field};

const JSON_API: &str = "application/vnd.api+json";

/// Custom fields an Outreach account has: `custom1`..`custom150`.
pub const MAX_CUSTOM_FIELDS: u32 = 150;

/// Injected failures, as shares of requests (0.0..=1.0).
#[derive(Clone, Debug, Default)]
pub struct Faults {
    /// Share of requests answered 500 or 503 (half each) without effect.
    pub error_share: f64,
    /// Added before every prospect request is handled.
    pub latency: Duration,
    /// Share of requests whose connection is dropped after the update was
    /// applied, without a response: the client cannot know it succeeded.
    pub drop_share: f64,
}

/// How the simulator behaves.
#[derive(Clone, Debug)]
pub struct SimulatorConfig {
    /// Prospects that exist from the start.
    pub prospect_ids: RangeInclusive<u64>,
    /// Requests per user per window.
    pub rate_limit: u32,
    pub rate_window: Duration,
    /// Custom fields this Outreach account has (`custom1..=N`).
    pub custom_fields: u32,
    /// Bearer tokens accepted from the start, with the user each belongs to.
    pub tokens: Vec<(String, String)>,
    pub faults: Faults,
    /// Seed of the fault injector, for repeatable runs.
    pub seed: u64,
    /// The OAuth application and users of the authorization server.
    pub oauth: OAuthApp,
}

impl Default for SimulatorConfig {
    fn default() -> Self {
        Self {
            prospect_ids: 1..=10_000,
            rate_limit: 10_000,
            rate_window: Duration::from_secs(3_600),
            custom_fields: MAX_CUSTOM_FIELDS,
            tokens: Vec::new(),
            faults: Faults::default(),
            seed: 0x5eed,
            oauth: OAuthApp::default(),
        }
    }
}

/// What the simulator has seen, for tests and the demo.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct Stats {
    /// Prospect requests received (any outcome).
    pub requests: u64,
    /// Updates applied to the store.
    pub updates_applied: u64,
    pub unauthorized: u64,
    pub rate_limited: u64,
    pub injected_errors: u64,
    pub dropped_connections: u64,
    pub rejected: u64,
    /// Access tokens minted by the token endpoint.
    pub tokens_minted: u64,
    /// Token requests refused by the one-token-per-interval throttle.
    pub mint_throttled: u64,
    /// Refresh tokens refused as invalid, used or revoked.
    pub invalid_grants: u64,
}

struct RateWindow {
    started: SystemTime,
    used: u32,
}

struct Store {
    prospects: BTreeMap<u64, Map<String, Value>>,
    tokens: HashMap<String, oauth::Issued>,
    oauth: oauth::OAuthState,
    windows: HashMap<String, RateWindow>,
    rng: StdRng,
    stats: Stats,
}

struct Shared {
    config: SimulatorConfig,
    store: Mutex<Store>,
    next_token: AtomicU64,
}

impl Shared {
    fn store(&self) -> std::sync::MutexGuard<'_, Store> {
        // A panic while holding the lock cannot leave the store half-updated
        // (updates are applied in one step), so a poisoned lock is usable.
        self.store.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A running simulator.
pub struct Simulator {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl Simulator {
    /// Starts serving on `addr` (port 0 picks a free port).
    pub async fn start(config: SimulatorConfig, addr: SocketAddr) -> std::io::Result<Self> {
        let prospects = config
            .prospect_ids
            .clone()
            .map(|id| (id, seed_prospect(id)))
            .collect();
        let shared = Arc::new(Shared {
            store: Mutex::new(Store {
                prospects,
                tokens: config
                    .tokens
                    .iter()
                    .map(|(token, user)| {
                        (
                            token.clone(),
                            oauth::Issued {
                                user: user.clone(),
                                expires: None,
                            },
                        )
                    })
                    .collect(),
                oauth: oauth::OAuthState::default(),
                windows: HashMap::new(),
                rng: StdRng::seed_from_u64(config.seed),
                stats: Stats::default(),
            }),
            config,
            next_token: AtomicU64::new(1),
        });
        let app = Router::new()
            .route(
                "/api/v2/prospects/{id}",
                get(get_prospect).patch(patch_prospect),
            )
            .route("/oauth/authorize", get(oauth::authorize))
            .route("/oauth/authorize/email", post(oauth::authorize_email))
            .route("/oauth/authorize/password", post(oauth::authorize_password))
            .route("/oauth/token", post(oauth::token))
            .route("/sim/prospects", get(dump_prospects))
            .route("/sim/stats", get(stats))
            .with_state(Arc::clone(&shared));
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!("simulator stopped: {e}");
            }
        });
        Ok(Self { addr, shared, task })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The API base to point the host at.
    pub fn api_base(&self) -> String {
        format!("http://{}/api/v2", self.addr)
    }

    /// The OAuth authorize and token URLs.
    pub fn authorize_url(&self) -> String {
        format!("http://{}/oauth/authorize", self.addr)
    }

    pub fn token_url(&self) -> String {
        format!("http://{}/oauth/token", self.addr)
    }

    /// Mints a bearer token for `user` that never expires (for tests and
    /// the demo, which skip the login).
    pub fn issue_token(&self, user: &str) -> String {
        let n = self.shared.next_token.fetch_add(1, Ordering::Relaxed);
        let token = format!("sim-{n:06}-{:016x}", rand::rng().random::<u64>());
        self.shared.store().tokens.insert(
            token.clone(),
            oauth::Issued {
                user: user.to_owned(),
                expires: None,
            },
        );
        token
    }

    /// Invalidates every access token of `user` before its expiry (as a
    /// password change does): the next request with one is a 401.
    pub fn revoke_access_tokens(&self, user: &str) {
        self.shared
            .store()
            .tokens
            .retain(|_, issued| issued.user != user);
    }

    /// Revokes every refresh token of `user`, as disconnecting the app in
    /// Outreach does.
    pub fn revoke_refresh_tokens(&self, user: &str) {
        self.shared.store().oauth.revoke(user);
    }

    /// A prospect's attributes as the store holds them.
    pub fn prospect(&self, id: u64) -> Option<Map<String, Value>> {
        self.shared.store().prospects.get(&id).cloned()
    }

    pub fn stats(&self) -> Stats {
        self.shared.store().stats.clone()
    }
}

impl Drop for Simulator {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn seed_prospect(id: u64) -> Map<String, Value> {
    let mut attributes = Map::new();
    attributes.insert("firstName".into(), json!("Seed"));
    attributes.insert("lastName".into(), json!(format!("Prospect {id}")));
    attributes.insert("createdAt".into(), json!("2026-01-01T00:00:00.000Z"));
    attributes.insert("updatedAt".into(), json!("2026-01-01T00:00:00.000Z"));
    attributes
}

/// Whole epoch seconds, rounded up: a client that waits until this second
/// is never early.
fn epoch_seconds_ceil(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() + u64::from(d.subsec_nanos() > 0))
}

/// `2017-01-01T00:00:00`, UTC, as Outreach writes it in the 429 message.
fn iso_utc(secs: u64) -> String {
    chrono::DateTime::from_timestamp(i64::try_from(secs).unwrap_or(i64::MAX), 0)
        .unwrap_or_default()
        .format("%Y-%m-%dT%H:%M:%S")
        .to_string()
}

/// `10000` → `10,000`.
fn with_thousands(n: u32) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

struct ApiError {
    status: StatusCode,
    id: &'static str,
    title: &'static str,
    detail: String,
    pointer: Option<String>,
}

fn error_body(errors: &[ApiError]) -> Value {
    let errors: Vec<Value> = errors
        .iter()
        .map(|e| {
            let mut v = json!({ "id": e.id, "title": e.title, "detail": e.detail });
            if let Some(p) = &e.pointer {
                v["source"] = json!({ "pointer": p });
            }
            v
        })
        .collect();
    json!({ "errors": errors })
}

fn json_api(status: StatusCode, body: Value) -> Response {
    let mut response = (status, body.to_string()).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(JSON_API));
    response
}

fn error_response(errors: Vec<ApiError>) -> Response {
    let status = errors
        .first()
        .map_or(StatusCode::INTERNAL_SERVER_ERROR, |e| e.status);
    json_api(status, error_body(&errors))
}

fn one_error(
    status: StatusCode,
    id: &'static str,
    title: &'static str,
    detail: impl Into<String>,
    pointer: Option<&str>,
) -> Response {
    error_response(vec![ApiError {
        status,
        id,
        title,
        detail: detail.into(),
        pointer: pointer.map(str::to_owned),
    }])
}

/// The rate-limit headers for `user`'s current window.
struct Quota {
    limit: u32,
    remaining: u32,
    reset: SystemTime,
}

impl Quota {
    fn apply(&self, response: &mut Response) {
        let headers = response.headers_mut();
        headers.insert("X-RateLimit-Limit", HeaderValue::from(self.limit));
        headers.insert("X-RateLimit-Remaining", HeaderValue::from(self.remaining));
        headers.insert(
            "X-RateLimit-Reset",
            HeaderValue::from(epoch_seconds_ceil(self.reset)),
        );
    }
}

/// Authenticates and counts the request against its user's window.
/// `Err` is the response to send instead (401 or 429).
#[allow(clippy::result_large_err)] // the error is the response, sent at once
fn admit(shared: &Shared, headers: &HeaderMap) -> Result<Quota, Response> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let mut store = shared.store();
    store.stats.requests += 1;
    let now = SystemTime::now();
    let issued = token.and_then(|t| store.tokens.get(t));
    let user = match issued.filter(|i| i.expires.is_none_or(|at| at > now)) {
        Some(issued) => issued.user.clone(),
        None => {
            store.stats.unauthorized += 1;
            return Err(one_error(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "Unauthorized",
                "The access token is missing, expired or invalid.",
                None,
            ));
        }
    };
    let (limit, length) = (shared.config.rate_limit, shared.config.rate_window);
    let window = store.windows.entry(user).or_insert(RateWindow {
        started: now,
        used: 0,
    });
    if now.duration_since(window.started).unwrap_or_default() >= length {
        *window = RateWindow {
            started: now,
            used: 0,
        };
    }
    let reset = window.started + length;
    if window.used >= limit {
        store.stats.rate_limited += 1;
        let quota = Quota {
            limit,
            remaining: 0,
            reset,
        };
        let mut response = one_error(
            StatusCode::TOO_MANY_REQUESTS,
            "rateLimitExceeded",
            "Rate Limit Exceeded",
            format!(
                "You have exceeded your permitted rate limit of {}; please try again at {}.",
                with_thousands(limit),
                iso_utc(epoch_seconds_ceil(reset))
            ),
            None,
        );
        quota.apply(&mut response);
        return Err(response);
    }
    window.used += 1;
    Ok(Quota {
        limit,
        remaining: limit - window.used,
        reset,
    })
}

fn parse_id(raw: &str) -> Option<u64> {
    raw.parse().ok()
}

async fn get_prospect(
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

async fn patch_prospect(
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

async fn dump_prospects(State(shared): State<Arc<Shared>>) -> Response {
    let store = shared.store();
    let all: Vec<Value> = store
        .prospects
        .iter()
        .map(|(id, attributes)| json!({ "id": id, "attributes": attributes }))
        .collect();
    json_api(StatusCode::OK, json!({ "data": all }))
}

async fn stats(State(shared): State<Arc<Shared>>) -> Response {
    let stats = shared.store().stats.clone();
    json_api(StatusCode::OK, json!(stats))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_match_outreach() {
        assert_eq!(with_thousands(10_000), "10,000");
        assert_eq!(with_thousands(600), "600");
        assert_eq!(with_thousands(1_234_567), "1,234,567");
        assert_eq!(iso_utc(1_483_228_800), "2017-01-01T00:00:00");
        assert_eq!(iso_utc(1_795_000_000), "2026-11-18T11:06:40");
    }
}
