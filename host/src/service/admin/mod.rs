//! The operators' status page, served by `serve` under `/admin`: sign-in,
//! the destinations with their connection and backlog, each destination's
//! dataflow runs, a run's counts per audience and per reason, and the dead
//! letters. Server-rendered HTML (askama templates, escaped by default),
//! no scripts (the content security policy forbids any), plain CSS that
//! fits a phone.
//!
//! Nothing is shown without a session; every form that changes something
//! carries the session's CSRF token.

pub mod connect;
pub mod session;

use std::sync::Arc;
use std::time::Duration;

use askama::Template;
use axum::Router;
use axum::extract::{Form, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use serde::Deserialize;

use super::{Served, Service};
use crate::journal::{DeadLetter, Journal, JournalError, LetterFilter, RunRecord};
use session::{SESSION_COOKIE, SIGN_IN_COOKIE, Session, Sessions, same_token};

/// The answer to give instead of a page (boxed: a `Response` is large and
/// this is the rare path).
type Refused = Box<Response>;

/// Runs and letters shown at most on one page.
const PAGE: usize = 100;

/// What every page's answer carries: no scripts, no framing, no caching.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

pub fn routes() -> Router<Arc<Service>> {
    Router::new()
        .route("/admin", get(destinations))
        .route("/admin/style.css", get(style))
        .route("/admin/sign-in", get(sign_in_page).post(sign_in))
        .route("/admin/sign-out", axum::routing::post(sign_out))
        .route("/admin/destinations/{name}", get(destination))
        .route("/admin/destinations/{name}/runs/{id}", get(run))
        .route("/admin/destinations/{name}/dead-letters", get(letters))
        .route(
            "/admin/destinations/{name}/dead-letters/replay",
            axum::routing::post(replay),
        )
        .route("/admin/connect", axum::routing::post(connect_start))
        .route("/oauth/callback", get(connect_callback))
        .layer(axum::middleware::map_response(protect))
}

async fn protect(mut response: Response) -> Response {
    let headers = response.headers_mut();
    for (name, value) in [
        ("content-security-policy", CONTENT_SECURITY_POLICY),
        ("x-content-type-options", "nosniff"),
        ("referrer-policy", "no-referrer"),
        ("cache-control", "no-store"),
        ("x-frame-options", "DENY"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

async fn style() -> Response {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("../../../templates/style.css"),
    )
        .into_response()
}

fn html(status: StatusCode, page: &impl Template) -> Response {
    match page.render() {
        Ok(body) => (
            status,
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            body,
        )
            .into_response(),
        Err(e) => {
            tracing::error!("cannot render a page: {e}");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "the page cannot be shown",
            )
                .into_response()
        }
    }
}

#[derive(Template)]
#[template(path = "error.html")]
struct ErrorPage<'a> {
    csrf: Option<&'a str>,
    heading: &'a str,
    message: &'a str,
    back: &'a str,
}

fn error_page(status: StatusCode, csrf: Option<&str>, heading: &str, message: &str) -> Response {
    html(
        status,
        &ErrorPage {
            csrf,
            heading,
            message,
            back: "/admin",
        },
    )
}

/// The value of cookie `name`.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value)
}

/// The operator's session, or the answer to give instead: 404 when the
/// page is off, else a redirect to sign in.
fn signed_in(service: &Service, headers: &HeaderMap) -> Result<(Arc<Sessions>, Session), Refused> {
    let Some(sessions) = service.sessions() else {
        return Err(Box::new(StatusCode::NOT_FOUND.into_response()));
    };
    match cookie(headers, SESSION_COOKIE).and_then(|id| sessions.get(id)) {
        Some(session) => Ok((sessions, session)),
        None => Err(Box::new(Redirect::to("/admin/sign-in").into_response())),
    }
}

#[derive(Template)]
#[template(path = "sign_in.html")]
struct SignInPage<'a> {
    csrf: Option<&'a str>,
    form: &'a str,
    problem: Option<&'a str>,
}

fn sign_in_form(
    sessions: &Sessions,
    secure: bool,
    status: StatusCode,
    problem: Option<&str>,
) -> Response {
    let (cookie, form) = sessions.sign_in_form();
    let mut response = html(
        status,
        &SignInPage {
            csrf: None,
            form: &form,
            problem,
        },
    );
    if let Ok(value) = HeaderValue::from_str(&Sessions::cookie(
        SIGN_IN_COOKIE,
        &cookie,
        Some(Duration::from_secs(15 * 60)),
        secure,
    )) {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
    response
}

async fn sign_in_page(State(service): State<Arc<Service>>) -> Response {
    let (Some(sessions), Some(admin)) = (service.sessions(), service.current().file.admin.clone())
    else {
        return StatusCode::NOT_FOUND.into_response();
    };
    sign_in_form(&sessions, admin.secure_cookies, StatusCode::OK, None)
}

#[derive(Deserialize)]
struct SignIn {
    #[serde(default)]
    form: String,
    #[serde(default)]
    user: String,
    #[serde(default)]
    password: String,
}

async fn sign_in(
    State(service): State<Arc<Service>>,
    headers: HeaderMap,
    Form(sign_in): Form<SignIn>,
) -> Response {
    let (Some(sessions), Some(admin)) = (service.sessions(), service.current().file.admin.clone())
    else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let form_cookie = cookie(&headers, SIGN_IN_COOKIE).unwrap_or_default();
    if !sessions.take_sign_in_form(form_cookie, &sign_in.form) {
        return sign_in_form(
            &sessions,
            admin.secure_cookies,
            StatusCode::FORBIDDEN,
            Some("This sign-in form expired or did not come from this page; try again."),
        );
    }
    let hash = admin.password_hash.clone();
    let password = sign_in.password;
    let password_ok = tokio::task::spawn_blocking(move || {
        use argon2::PasswordVerifier;
        argon2::PasswordHash::new(&hash).is_ok_and(|parsed| {
            argon2::Argon2::default()
                .verify_password(password.as_bytes(), &parsed)
                .is_ok()
        })
    })
    .await
    .unwrap_or(false);
    let user_ok = same_token(&sign_in.user, &admin.user);
    if !(user_ok && password_ok) {
        tracing::warn!("a sign-in to the status page was refused");
        return sign_in_form(
            &sessions,
            admin.secure_cookies,
            StatusCode::UNAUTHORIZED,
            Some("Wrong user or password."),
        );
    }
    let (id, _) = sessions.start(&admin.user);
    let mut response = Redirect::to("/admin").into_response();
    for value in [
        Sessions::cookie(
            SESSION_COOKIE,
            &id,
            Some(sessions.life()),
            admin.secure_cookies,
        ),
        Sessions::cookie(SIGN_IN_COOKIE, "", None, admin.secure_cookies),
    ] {
        if let Ok(value) = HeaderValue::from_str(&value) {
            response.headers_mut().append(header::SET_COOKIE, value);
        }
    }
    response
}

#[derive(Deserialize)]
struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

/// Refuses a form without the session's CSRF token.
fn check_csrf(session: &Session, form: &str) -> Result<(), Refused> {
    if same_token(&session.csrf, form) {
        Ok(())
    } else {
        Err(Box::new(error_page(
            StatusCode::FORBIDDEN,
            Some(&session.csrf),
            "Refused",
            "This form did not come from this page (its CSRF token is missing or wrong).",
        )))
    }
}

async fn sign_out(
    State(service): State<Arc<Service>>,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> Response {
    let (sessions, session) = match signed_in(&service, &headers) {
        Ok(found) => found,
        Err(response) => return *response,
    };
    if let Err(refused) = check_csrf(&session, &form.csrf) {
        return *refused;
    }
    if let Some(id) = cookie(&headers, SESSION_COOKIE) {
        sessions.end(id);
    }
    let secure = service
        .current()
        .file
        .admin
        .as_ref()
        .is_some_and(|a| a.secure_cookies);
    let mut response = Redirect::to("/admin/sign-in").into_response();
    if let Ok(value) = HeaderValue::from_str(&Sessions::cookie(SESSION_COOKIE, "", None, secure)) {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
    response
}

/// Reads `served`'s journal: through its stream, or (disabled) by opening
/// it read-only.
async fn read_journal<T: Send + 'static>(
    service: &Service,
    served: &Served,
    read: impl FnOnce(&Journal) -> Result<T, JournalError> + Send + 'static,
) -> Result<T, String> {
    if let Some(stream) = &served.stream {
        return stream.read(read).await.map_err(|e| e.to_string());
    }
    let path = service.journal_path(&served.spec.name);
    tokio::task::spawn_blocking(move || {
        let journal = Journal::open_existing(&path).map_err(|e| e.to_string())?;
        read(&journal).map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| e.to_string())?
}

/// `text` with a capital first letter (error messages are written to be
/// embedded; a page shows them on their own).
fn sentence(text: &str) -> String {
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

fn utc(ms: u64) -> String {
    crate::format_utc(ms / 1000, ' ')
}

fn age(ms: u64) -> String {
    let secs = ms / 1000;
    match secs {
        0..60 => format!("{secs} s"),
        60..3_600 => format!("{} min", secs / 60),
        3_600..172_800 => format!("{} h {} min", secs / 3_600, secs % 3_600 / 60),
        _ => format!("{} days", secs / 86_400),
    }
}

struct DestinationCard {
    name: String,
    enabled: bool,
    account: String,
    connection: String,
    connection_class: &'static str,
    /// A browser login is possible (the account uses stored tokens).
    connectable: bool,
    queued: u64,
    oldest_age: Option<String>,
    hour: String,
    budget: String,
    paused: Option<String>,
}

#[derive(Template)]
#[template(path = "destinations.html")]
struct DestinationsPage<'a> {
    csrf: Option<&'a str>,
    destinations: Vec<DestinationCard>,
}

async fn destinations(State(service): State<Arc<Service>>, headers: HeaderMap) -> Response {
    let (_, session) = match signed_in(&service, &headers) {
        Ok(found) => found,
        Err(response) => return *response,
    };
    let set = service.current();
    let now_ms = crate::clock::now_ms();
    let mut cards = Vec::new();
    for (name, served) in &set.destinations {
        let account = set.accounts.get(&served.account).cloned();
        let status = match &served.stream {
            Some(stream) => stream.status().await.ok(),
            None => None,
        };
        let paused = status.as_ref().and_then(|s| s.paused.clone());
        let (connection, connection_class) = match &account {
            Some(account) => match account.connection(now_ms / 1000).await {
                super::account::Connection::Fixed => ("Fixed access token".to_owned(), "muted"),
                super::account::Connection::NeedsLogin(why) => {
                    (format!("Needs login ({why})"), "error")
                }
                super::account::Connection::Connected { expires_in, scope } => {
                    if paused.is_some() {
                        ("Refresh failing".to_owned(), "error")
                    } else {
                        let life = expires_in
                            .map(|secs| {
                                format!(
                                    ", token expires in {}",
                                    age(u64::try_from(secs.max(0)).unwrap_or(0) * 1000)
                                )
                            })
                            .unwrap_or_default();
                        let scope = scope.map(|s| format!(", scope {s}")).unwrap_or_default();
                        (format!("Connected ✓{life}{scope}"), "ok")
                    }
                }
            },
            None => ("—".to_owned(), "muted"),
        };
        let hour = match &served.stream {
            Some(stream) => {
                let current = stream.current_run();
                match stream.read(move |journal| journal.run(current)).await {
                    Ok(run) => format!(
                        "{} received, {} activated, {} failed, {} skipped",
                        run.counts.received,
                        run.counts.delivered,
                        run.counts.rejected,
                        run.counts.skipped
                    ),
                    Err(_) => "—".into(),
                }
            }
            None => "—".into(),
        };
        let budget = match account.as_ref().map(|a| a.limiter.budget_view()) {
            Some((_, Some(left))) => format!("{left} requests (as the API last said)"),
            Some((_, None)) => "not reported yet".into(),
            None => "—".into(),
        };
        let backlog = status.as_ref().map(|s| s.backlog).unwrap_or_default();
        cards.push(DestinationCard {
            name: name.clone(),
            enabled: served.stream.is_some(),
            account: served.account.clone(),
            connectable: !matches!(
                account.as_ref().map(|a| &a.credentials),
                Some(super::account::AccountCredentials::Fixed(_)) | None
            ),
            connection,
            connection_class,
            queued: backlog.updates,
            oldest_age: backlog
                .oldest_received_ms
                .map(|at| age(now_ms.saturating_sub(at))),
            hour,
            budget,
            paused,
        });
    }
    html(
        StatusCode::OK,
        &DestinationsPage {
            csrf: Some(&session.csrf),
            destinations: cards,
        },
    )
}

struct RunRow {
    id: i64,
    started: String,
    status: String,
    received: u64,
    delivered: u64,
    rejected: u64,
    skipped: u64,
    pending: u64,
}

impl From<&RunRecord> for RunRow {
    fn from(r: &RunRecord) -> Self {
        Self {
            id: r.id,
            started: utc(r.started_ms),
            status: r.status.clone(),
            received: r.counts.received,
            delivered: r.counts.delivered,
            rejected: r.counts.rejected,
            skipped: r.counts.skipped,
            pending: r.pending,
        }
    }
}

#[derive(Template)]
#[template(path = "destination.html")]
struct DestinationPage<'a> {
    csrf: Option<&'a str>,
    name: &'a str,
    runs: Vec<RunRow>,
}

/// The destination named `name`, or the page saying there is none.
fn find(service: &Service, name: &str, session: &Session) -> Result<Arc<Served>, Refused> {
    let found = service.current().destinations.get(name).cloned();
    found.ok_or_else(|| {
        Box::new(error_page(
            StatusCode::NOT_FOUND,
            Some(&session.csrf),
            "Not found",
            "There is no such destination.",
        ))
    })
}

fn unreadable(session: &Session, e: &str) -> Response {
    error_page(
        StatusCode::SERVICE_UNAVAILABLE,
        Some(&session.csrf),
        "Unavailable",
        &format!("The destination's journal cannot be read: {e}"),
    )
}

async fn destination(
    State(service): State<Arc<Service>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Response {
    let (_, session) = match signed_in(&service, &headers) {
        Ok(found) => found,
        Err(response) => return *response,
    };
    let served = match find(&service, &name, &session) {
        Ok(served) => served,
        Err(response) => return *response,
    };
    let runs = match read_journal(&service, &served, |journal| journal.runs(PAGE)).await {
        Ok(runs) => runs,
        Err(e) => return unreadable(&session, &e),
    };
    html(
        StatusCode::OK,
        &DestinationPage {
            csrf: Some(&session.csrf),
            name: &name,
            runs: runs.iter().map(RunRow::from).collect(),
        },
    )
}

struct AudienceRow {
    label: String,
    received: u64,
    delivered: u64,
    rejected: u64,
    skipped: u64,
}

#[derive(Template)]
#[template(path = "run.html")]
struct RunPage<'a> {
    csrf: Option<&'a str>,
    name: &'a str,
    id: i64,
    kind: String,
    status: String,
    started: String,
    received: u64,
    delivered: u64,
    rejected: u64,
    skipped: u64,
    pending: u64,
    audiences: Vec<AudienceRow>,
    failures: Vec<(String, u64)>,
}

async fn run(
    State(service): State<Arc<Service>>,
    headers: HeaderMap,
    Path((name, id)): Path<(String, i64)>,
) -> Response {
    let (_, session) = match signed_in(&service, &headers) {
        Ok(found) => found,
        Err(response) => return *response,
    };
    let served = match find(&service, &name, &session) {
        Ok(served) => served,
        Err(response) => return *response,
    };
    let record = match read_journal(&service, &served, move |journal| journal.run(id)).await {
        Ok(record) => record,
        Err(_) => {
            return error_page(
                StatusCode::NOT_FOUND,
                Some(&session.csrf),
                "Not found",
                "There is no such run.",
            );
        }
    };
    let labels = &served.audience_labels;
    let audiences = record
        .audiences
        .iter()
        .map(|(id, c)| AudienceRow {
            label: labels.get(id).cloned().unwrap_or_else(|| id.clone()),
            received: c.received,
            delivered: c.delivered,
            rejected: c.rejected,
            skipped: c.skipped,
        })
        .collect();
    html(
        StatusCode::OK,
        &RunPage {
            csrf: Some(&session.csrf),
            name: &name,
            id: record.id,
            kind: record.kind.clone(),
            status: record.status.clone(),
            started: utc(record.started_ms),
            received: record.counts.received,
            delivered: record.counts.delivered,
            rejected: record.counts.rejected,
            skipped: record.counts.skipped,
            pending: record.pending,
            audiences,
            failures: record.failures.clone().into_iter().collect(),
        },
    )
}

struct LetterRow {
    id: i64,
    run: i64,
    line: u64,
    code: String,
    reason: String,
    status: Option<u16>,
    record: String,
    response: Option<String>,
}

impl From<DeadLetter> for LetterRow {
    fn from(l: DeadLetter) -> Self {
        Self {
            id: l.id,
            run: l.run,
            line: l.line,
            code: l.code,
            reason: l.reason,
            status: l.status,
            record: serde_json::to_string_pretty(&l.record).unwrap_or_default(),
            response: l.response,
        }
    }
}

#[derive(Template)]
#[template(path = "letters.html")]
struct LettersPage<'a> {
    csrf: Option<&'a str>,
    name: &'a str,
    /// Letters can be replayed (the destination is running).
    enabled: bool,
    code: String,
    run: String,
    letters: Vec<LetterRow>,
}

#[derive(Deserialize)]
struct LetterQuery {
    #[serde(default)]
    code: String,
    #[serde(default)]
    run: String,
}

async fn letters(
    State(service): State<Arc<Service>>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Query(query): Query<LetterQuery>,
) -> Response {
    let (_, session) = match signed_in(&service, &headers) {
        Ok(found) => found,
        Err(response) => return *response,
    };
    let served = match find(&service, &name, &session) {
        Ok(served) => served,
        Err(response) => return *response,
    };
    let run = match query.run.trim() {
        "" => None,
        text => match text.parse::<i64>() {
            Ok(run) => Some(run),
            Err(_) => {
                return error_page(
                    StatusCode::BAD_REQUEST,
                    Some(&session.csrf),
                    "Bad filter",
                    "The run filter must be a run number.",
                );
            }
        },
    };
    let filter = LetterFilter {
        run,
        code: Some(query.code.trim().to_owned()).filter(|c| !c.is_empty()),
        ..LetterFilter::default()
    };
    let letters = match read_journal(&service, &served, move |journal| {
        journal.dead_letters(&filter)
    })
    .await
    {
        Ok(letters) => letters,
        Err(e) => return unreadable(&session, &e),
    };
    html(
        StatusCode::OK,
        &LettersPage {
            csrf: Some(&session.csrf),
            name: &name,
            enabled: served.stream.is_some(),
            code: query.code,
            run: query.run,
            letters: letters
                .into_iter()
                .rev()
                .take(PAGE)
                .map(LetterRow::from)
                .collect(),
        },
    )
}

#[derive(Deserialize)]
struct ConnectForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    account: String,
}

/// "Connect": sends the browser to the authorization server.
async fn connect_start(
    State(service): State<Arc<Service>>,
    headers: HeaderMap,
    Form(form): Form<ConnectForm>,
) -> Response {
    let (_, session) = match signed_in(&service, &headers) {
        Ok(found) => found,
        Err(response) => return *response,
    };
    if let Err(refused) = check_csrf(&session, &form.csrf) {
        return *refused;
    }
    let Some(account) = service.current().accounts.get(&form.account).cloned() else {
        return error_page(
            StatusCode::NOT_FOUND,
            Some(&session.csrf),
            "Not found",
            "No destination uses that account.",
        );
    };
    let callback = format!("{}/oauth/callback", service.public_url());
    match account.connect_client(&callback) {
        // A page that moves on by itself rather than a redirect: the
        // policy keeps forms to this site, redirects after them included.
        Ok(Some((client, store))) => {
            let url = service.connects().start(&account.name, client, store);
            html(
                StatusCode::OK,
                &ConnectingPage {
                    csrf: Some(&session.csrf),
                    account: &account.name,
                    url: &url,
                },
            )
        }
        Ok(None) => error_page(
            StatusCode::CONFLICT,
            Some(&session.csrf),
            "Fixed token",
            "This service uses one fixed access token (OUTREACH_ACCESS_TOKEN) for every account; there is nothing to connect.",
        ),
        Err(e) => error_page(
            StatusCode::SERVICE_UNAVAILABLE,
            Some(&session.csrf),
            "Cannot connect",
            &format!("The OAuth client cannot be made: {e}"),
        ),
    }
}

#[derive(Template)]
#[template(path = "connecting.html")]
struct ConnectingPage<'a> {
    csrf: Option<&'a str>,
    account: &'a str,
    url: &'a str,
}

#[derive(Template)]
#[template(path = "connected.html")]
struct ConnectedPage<'a> {
    csrf: Option<&'a str>,
    account: &'a str,
}

/// Where the authorization server sends the browser back.
async fn connect_callback(
    State(service): State<Arc<Service>>,
    Query(redirect): Query<crate::oauth::Redirect>,
) -> Response {
    if service.sessions().is_none() {
        return StatusCode::NOT_FOUND.into_response();
    }
    let set = service.current();
    match service.connects().finish(&redirect).await {
        Ok(account) => {
            if let Some(shared) = set.accounts.get(&account) {
                shared.reload_tokens();
            }
            tracing::info!(account = %account, "connected from the status page");
            html(
                StatusCode::OK,
                &ConnectedPage {
                    csrf: None,
                    account: &account,
                },
            )
        }
        Err(e) => {
            tracing::warn!("a connection from the status page failed: {e}");
            error_page(
                StatusCode::BAD_REQUEST,
                None,
                "Not connected",
                &sentence(&e.to_string()),
            )
        }
    }
}

#[derive(Deserialize)]
struct ReplayForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    letter: String,
}

#[derive(Template)]
#[template(path = "replayed.html")]
struct ReplayedPage<'a> {
    csrf: Option<&'a str>,
    name: &'a str,
    run: i64,
    replayed: u64,
    held_back: Vec<crate::journal::HeldBack>,
}

/// Replays one dead letter with the destination's configuration as it is.
async fn replay(
    State(service): State<Arc<Service>>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Form(form): Form<ReplayForm>,
) -> Response {
    let (_, session) = match signed_in(&service, &headers) {
        Ok(found) => found,
        Err(response) => return *response,
    };
    if let Err(refused) = check_csrf(&session, &form.csrf) {
        return *refused;
    }
    let served = match find(&service, &name, &session) {
        Ok(served) => served,
        Err(response) => return *response,
    };
    let Ok(letter) = form.letter.trim().parse::<i64>() else {
        return error_page(
            StatusCode::BAD_REQUEST,
            Some(&session.csrf),
            "Bad request",
            "No dead letter was named.",
        );
    };
    let Some(stream) = &served.stream else {
        return error_page(
            StatusCode::CONFLICT,
            Some(&session.csrf),
            "Disabled",
            "The destination is disabled: enable it to replay its dead letters.",
        );
    };
    match stream.replay(vec![letter]).await {
        Ok(done) => html(
            StatusCode::OK,
            &ReplayedPage {
                csrf: Some(&session.csrf),
                name: &name,
                run: stream.current_run(),
                replayed: done.replayed,
                held_back: done.held_back,
            },
        ),
        Err(e) => error_page(
            StatusCode::SERVICE_UNAVAILABLE,
            Some(&session.csrf),
            "Not replayed",
            &sentence(&e.to_string()),
        ),
    }
}
