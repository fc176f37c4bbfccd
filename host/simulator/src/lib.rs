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
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use serde_json::{Map, Value, json};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

mod accounts;
mod admission;
mod oauth;
mod prospects;
pub mod schema;

use admission::RateWindow;
pub use admission::{RateWindowKind, ResetRounding};
pub use oauth::OAuthApp;

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
    /// Email addresses of prospects that exist from the start (their ids
    /// among `prospect_ids`).
    pub prospect_emails: Vec<(u64, String)>,
    /// Accounts that exist from the start: (id, name, domain).
    pub accounts: Vec<(u64, String, String)>,
    /// Requests per user per window.
    pub rate_limit: u32,
    pub rate_window: Duration,
    /// Where windows start and what they count.
    pub rate_window_kind: RateWindowKind,
    /// How `X-RateLimit-Reset` (whole epoch seconds) rounds the moment the
    /// window turns.
    pub reset_rounding: ResetRounding,
    /// How far the server's clock is ahead of the real one (negative:
    /// behind), in milliseconds: its windows turn, and the resets it names
    /// are read, on its own clock.
    pub clock_offset_ms: i64,
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
            prospect_emails: Vec::new(),
            accounts: Vec::new(),
            rate_limit: 10_000,
            rate_window: Duration::from_secs(3_600),
            rate_window_kind: RateWindowKind::default(),
            reset_rounding: ResetRounding::default(),
            clock_offset_ms: 0,
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
    /// Lists of prospects answered (lookups by email among them).
    pub lookups: u64,
    /// Prospects created.
    pub creates: u64,
    /// Creates and updates refused because the email is another
    /// prospect's (Outreach keeps one prospect per email).
    pub duplicates_refused: u64,
    /// Lists of accounts answered.
    pub account_lookups: u64,
    /// Accounts created.
    pub account_creates: u64,
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

/// An authenticated prospect request, as the simulator received it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sent {
    pub user: String,
    pub at: SystemTime,
    /// The `User-Agent` header (which host, which worker).
    pub agent: String,
    /// Refused with a 429.
    pub rate_limited: bool,
}

struct Store {
    prospects: BTreeMap<u64, Map<String, Value>>,
    /// Which prospect holds each email (normalised).
    emails: HashMap<String, u64>,
    accounts: BTreeMap<u64, Map<String, Value>>,
    /// Each prospect's `account` relationship.
    prospect_accounts: HashMap<u64, u64>,
    tokens: HashMap<String, oauth::Issued>,
    oauth: oauth::OAuthState,
    windows: HashMap<String, RateWindow>,
    /// Windows that ended: user, start, requests counted.
    past_windows: Vec<(String, SystemTime, u32)>,
    /// Every authenticated prospect request: who, when, from which agent.
    sent: Vec<Sent>,
    /// Every update applied, per prospect: the attributes it set.
    applied: HashMap<u64, Vec<Map<String, Value>>>,
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
        let mut prospects: BTreeMap<u64, Map<String, Value>> = config
            .prospect_ids
            .clone()
            .map(|id| (id, seed_prospect(id)))
            .collect();
        let mut emails = HashMap::new();
        for (id, email) in &config.prospect_emails {
            if let Some(prospect) = prospects.get_mut(id) {
                prospect.insert("emails".into(), json!([email]));
                emails.insert(prospects::normalised(email), *id);
            }
        }
        let shared = Arc::new(Shared {
            store: Mutex::new(Store {
                prospects,
                emails,
                accounts: config
                    .accounts
                    .iter()
                    .map(|(id, name, domain)| {
                        let mut attributes = Map::new();
                        attributes.insert("name".into(), json!(name));
                        attributes.insert("domain".into(), json!(domain));
                        (*id, attributes)
                    })
                    .collect(),
                prospect_accounts: HashMap::new(),
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
                past_windows: Vec::new(),
                sent: Vec::new(),
                applied: HashMap::new(),
                rng: StdRng::seed_from_u64(config.seed),
                stats: Stats::default(),
            }),
            config,
            next_token: AtomicU64::new(1),
        });
        let app = Router::new()
            .route(
                "/api/v2/prospects",
                get(prospects::list_prospects).post(prospects::create_prospect),
            )
            .route(
                "/api/v2/accounts",
                get(accounts::list_accounts).post(accounts::create_account),
            )
            .route(
                "/api/v2/prospects/{id}",
                get(prospects::get_prospect).patch(prospects::patch_prospect),
            )
            .route("/oauth/authorize", get(oauth::authorize))
            .route("/oauth/authorize/email", post(oauth::authorize_email))
            .route("/oauth/authorize/password", post(oauth::authorize_password))
            .route("/oauth/token", post(oauth::token))
            .route("/sim/prospects", get(prospects::dump_prospects))
            .route("/sim/stats", get(prospects::stats))
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
    /// The prospects that hold `email` (Outreach allows one at most; a
    /// test counts them to prove it).
    pub fn prospects_with_email(&self, email: &str) -> Vec<u64> {
        let email = prospects::normalised(email);
        self.shared
            .store()
            .prospects
            .iter()
            .filter(|(_, attributes)| {
                attributes
                    .get("emails")
                    .and_then(Value::as_array)
                    .is_some_and(|all| {
                        all.iter()
                            .filter_map(Value::as_str)
                            .any(|e| prospects::normalised(e) == email)
                    })
            })
            .map(|(id, _)| *id)
            .collect()
    }

    /// The account prospect `id` links to, if any.
    pub fn account_of(&self, id: u64) -> Option<u64> {
        self.shared.store().prospect_accounts.get(&id).copied()
    }

    /// The accounts whose domain is `domain` (case aside).
    pub fn accounts_with_domain(&self, domain: &str) -> Vec<u64> {
        self.shared
            .store()
            .accounts
            .iter()
            .filter(|(_, a)| {
                a.get("domain")
                    .and_then(Value::as_str)
                    .is_some_and(|d| d.eq_ignore_ascii_case(domain))
            })
            .map(|(id, _)| *id)
            .collect()
    }

    pub fn prospect(&self, id: u64) -> Option<Map<String, Value>> {
        self.shared.store().prospects.get(&id).cloned()
    }

    pub fn stats(&self) -> Stats {
        self.shared.store().stats.clone()
    }

    /// The updates applied to prospect `id`, oldest first: the attributes
    /// each one set.
    pub fn applied_to(&self, id: u64) -> Vec<Map<String, Value>> {
        self.shared
            .store()
            .applied
            .get(&id)
            .cloned()
            .unwrap_or_default()
    }

    /// Every authenticated prospect request of `user`, in arrival order.
    pub fn requests_of(&self, user: &str) -> Vec<Sent> {
        self.shared
            .store()
            .sent
            .iter()
            .filter(|s| s.user == user)
            .cloned()
            .collect()
    }

    /// When the token endpoint minted tokens for `user` (logins and
    /// refreshes), oldest first.
    pub fn mints_of(&self, user: &str) -> Vec<SystemTime> {
        self.shared.store().oauth.mints_of(user)
    }

    /// Tokens for `user` as a login would leave them: an access token with
    /// the app's lifetime and a refresh token. Counts as a mint.
    pub fn grant_tokens(&self, user: &str, scope: &str) -> (String, String) {
        let lifetimes = (
            self.shared.config.oauth.access_lifetime,
            self.shared.config.oauth.refresh_lifetime,
        );
        let mut store = self.shared.store();
        let (access, refresh) = store.oauth.grant(user, scope, lifetimes);
        store.tokens.insert(
            access.clone(),
            oauth::Issued {
                user: user.to_owned(),
                expires: Some(SystemTime::now() + lifetimes.0),
            },
        );
        store.stats.tokens_minted += 1;
        (access, refresh)
    }

    /// `user`'s rate-limit windows so far, oldest first: when each started
    /// and how many requests it counted.
    pub fn rate_windows(&self, user: &str) -> Vec<(SystemTime, u32)> {
        let store = self.shared.store();
        let current = store.windows.get(user).map(|w| (w.started, w.used));
        store
            .past_windows
            .iter()
            .filter(|(u, _, _)| u == user)
            .map(|(_, started, used)| (*started, *used))
            .chain(current)
            .collect()
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
/// Whole seconds since the epoch, rounded down.
fn epoch_seconds_floor(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

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
