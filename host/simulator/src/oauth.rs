//! The simulator's OAuth 2 authorization server: an authorize
//! page that asks for the email, then the password, and redirects back with
//! `code` and `state`; a token endpoint with strict parameter matching,
//! refresh-token rotation, configurable lifetimes, the one-token-per-user-
//! per-interval throttle, and `invalid_grant` errors.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Form;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use base64::Engine as _;
use rand::Rng;
use serde_json::json;
use sha2::{Digest, Sha256};

use super::Shared;

/// The OAuth application registered with the simulator, and its users.
#[derive(Clone, Debug)]
pub struct OAuthApp {
    pub client_id: String,
    pub client_secret: String,
    /// The registered redirect URI; `None` accepts any http loopback URI
    /// (handy when the port is picked at random).
    pub redirect_uri: Option<String>,
    /// Users who can log in: (email, password).
    pub users: Vec<(String, String)>,
    pub access_lifetime: Duration,
    pub refresh_lifetime: Duration,
    /// At most one new access token per user per this interval.
    pub mint_interval: Duration,
    /// How long the token endpoint takes to answer after it has minted new
    /// tokens and retired the presented refresh token (a slow network: the
    /// client may give up while the rotation has already happened).
    pub answer_delay: Duration,
    /// What the token endpoint says in `expires_in` instead of the access
    /// lifetime (servers that send odd values).
    pub expires_in: Option<serde_json::Value>,
    /// The client authenticates with HTTP Basic instead of `client_id` and
    /// `client_secret` in the form body (Outreach's way).
    pub basic_auth: bool,
}

impl Default for OAuthApp {
    fn default() -> Self {
        Self {
            client_id: "sim-client-id".into(),
            client_secret: "sim-client-secret".into(),
            redirect_uri: None,
            users: vec![("demo@example.com".into(), "demo-password".into())],
            access_lifetime: Duration::from_secs(7_200),
            refresh_lifetime: Duration::from_secs(14 * 86_400),
            mint_interval: Duration::from_secs(60),
            answer_delay: Duration::ZERO,
            expires_in: None,
            basic_auth: false,
        }
    }
}

/// An access token and whose it is.
pub(super) struct Issued {
    pub user: String,
    /// `None`: never expires (tokens minted by test helpers).
    pub expires: Option<SystemTime>,
}

pub(super) struct RefreshGrant {
    user: String,
    scope: String,
    expires: SystemTime,
}

struct CodeGrant {
    user: String,
    redirect_uri: String,
    scope: String,
    challenge: Option<String>,
    expires: SystemTime,
}

struct LoginSession {
    redirect_uri: String,
    state: Option<String>,
    scope: String,
    challenge: Option<String>,
    email: Option<String>,
}

/// OAuth state kept in the simulator's store.
#[derive(Default)]
pub(super) struct OAuthState {
    sessions: HashMap<String, LoginSession>,
    codes: HashMap<String, CodeGrant>,
    pub refresh_tokens: HashMap<String, RefreshGrant>,
    last_mint: HashMap<String, Instant>,
    revoked_users: HashSet<String>,
    /// Every mint: user, when.
    mints: Vec<(String, SystemTime)>,
}

fn random_token(prefix: &str) -> String {
    let mut rng = rand::rng();
    format!(
        "{prefix}-{:016x}{:016x}",
        rng.random::<u64>(),
        rng.random::<u64>()
    )
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn page(title: &str, body: &str) -> Html<String> {
    Html(format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{title}</title></head>\
         <body><h1>Outreach (simulated)</h1>{body}</body></html>"
    ))
}

fn bad_request(message: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        page(
            "Error",
            &format!("<p class=\"error\">{}</p>", escape(message)),
        ),
    )
        .into_response()
}

fn email_form(session: &str, error: Option<&str>) -> Html<String> {
    let error = error.map_or(String::new(), |e| {
        format!("<p class=\"error\">{}</p>", escape(e))
    });
    page(
        "Log in",
        &format!(
            "{error}<form method=\"post\" action=\"/oauth/authorize/email\">\
             <input type=\"hidden\" name=\"session\" value=\"{session}\">\
             <label>Email <input type=\"email\" name=\"email\"></label>\
             <button type=\"submit\">Next</button></form>"
        ),
    )
}

fn password_form(session: &str, email: &str, error: Option<&str>) -> Html<String> {
    let error = error.map_or(String::new(), |e| {
        format!("<p class=\"error\">{}</p>", escape(e))
    });
    page(
        "Log in",
        &format!(
            "{error}<p>Logging in as {}</p>\
             <form method=\"post\" action=\"/oauth/authorize/password\">\
             <input type=\"hidden\" name=\"session\" value=\"{session}\">\
             <label>Password <input type=\"password\" name=\"password\"></label>\
             <button type=\"submit\">Log in</button></form>",
            escape(email)
        ),
    )
}

fn is_loopback_http(uri: &str) -> bool {
    url::Url::parse(uri).is_ok_and(|u| {
        u.scheme() == "http" && matches!(u.host_str(), Some("127.0.0.1" | "localhost" | "[::1]"))
    })
}

/// `GET /oauth/authorize`: checks the request, then asks for the email.
pub(super) async fn authorize(
    State(shared): State<Arc<Shared>>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let app = &shared.config.oauth;
    if params.get("client_id") != Some(&app.client_id) {
        return bad_request("unknown client_id");
    }
    if params.get("response_type").map(String::as_str) != Some("code") {
        return bad_request("response_type must be code");
    }
    let Some(redirect_uri) = params.get("redirect_uri") else {
        return bad_request("redirect_uri is required");
    };
    let registered = match &app.redirect_uri {
        Some(uri) => uri == redirect_uri,
        None => is_loopback_http(redirect_uri),
    };
    if !registered {
        return bad_request("redirect_uri does not match the application's");
    }
    let challenge = match (
        params.get("code_challenge"),
        params.get("code_challenge_method").map(String::as_str),
    ) {
        (None, _) => None,
        (Some(c), Some("S256")) => Some(c.clone()),
        (Some(_), _) => return bad_request("only the S256 code_challenge_method is supported"),
    };
    let session = random_token("login");
    shared.store().oauth.sessions.insert(
        session.clone(),
        LoginSession {
            redirect_uri: redirect_uri.clone(),
            state: params.get("state").cloned(),
            scope: params.get("scope").cloned().unwrap_or_default(),
            challenge,
            email: None,
        },
    );
    email_form(&session, None).into_response()
}

/// `POST /oauth/authorize/email`.
pub(super) async fn authorize_email(
    State(shared): State<Arc<Shared>>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let session = form.get("session").cloned().unwrap_or_default();
    let email = form.get("email").cloned().unwrap_or_default();
    let known = shared.config.oauth.users.iter().any(|(e, _)| *e == email);
    let mut store = shared.store();
    let Some(login) = store.oauth.sessions.get_mut(&session) else {
        return bad_request("this login has expired; start again");
    };
    if !known {
        return email_form(&session, Some("No account with this email.")).into_response();
    }
    login.email = Some(email.clone());
    password_form(&session, &email, None).into_response()
}

/// `POST /oauth/authorize/password`: on success, redirects with the code.
pub(super) async fn authorize_password(
    State(shared): State<Arc<Shared>>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let session = form.get("session").cloned().unwrap_or_default();
    let password = form.get("password").cloned().unwrap_or_default();
    let mut store = shared.store();
    let Some(login) = store.oauth.sessions.get(&session) else {
        return bad_request("this login has expired; start again");
    };
    let Some(email) = login.email.clone() else {
        return bad_request("enter the email first");
    };
    let correct = shared
        .config
        .oauth
        .users
        .iter()
        .any(|(e, p)| *e == email && *p == password);
    if !correct {
        return password_form(&session, &email, Some("Wrong password.")).into_response();
    }
    let Some(login) = store.oauth.sessions.remove(&session) else {
        return bad_request("this login has expired; start again");
    };
    let code = random_token("code");
    let Ok(mut location) = url::Url::parse(&login.redirect_uri) else {
        return bad_request("redirect_uri is not a URL");
    };
    location.query_pairs_mut().append_pair("code", &code);
    if let Some(state) = &login.state {
        location.query_pairs_mut().append_pair("state", state);
    }
    store.oauth.codes.insert(
        code,
        CodeGrant {
            user: email,
            redirect_uri: login.redirect_uri,
            scope: login.scope,
            challenge: login.challenge,
            expires: SystemTime::now() + Duration::from_secs(600),
        },
    );
    (
        StatusCode::FOUND,
        [(header::LOCATION, location.to_string())],
    )
        .into_response()
}

fn token_error(status: StatusCode, error: &str, description: &str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        json!({ "error": error, "error_description": description }).to_string(),
    )
        .into_response()
}

/// Checks that `form` holds exactly `required` plus any of `optional`.
#[allow(clippy::result_large_err)] // the error is the response, sent at once
fn strict_params(
    form: &HashMap<String, String>,
    required: &[&str],
    optional: &[&str],
) -> Result<(), Response> {
    for name in required {
        if form.get(*name).is_none_or(|v| v.is_empty()) {
            return Err(token_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                &format!("missing parameter {name}"),
            ));
        }
    }
    // The first in name order, so that the same request gets the same answer.
    if let Some(extra) = form
        .keys()
        .filter(|k| !required.contains(&k.as_str()) && !optional.contains(&k.as_str()))
        .min()
    {
        return Err(token_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            &format!("unexpected parameter {extra}"),
        ));
    }
    Ok(())
}

/// `POST /oauth/token`.
pub(super) async fn token(
    State(shared): State<Arc<Shared>>,
    headers: axum::http::HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let answer = mint(&shared, &form, basic_credentials(&headers));
    tokio::time::sleep(shared.config.oauth.answer_delay).await;
    answer.unwrap_or_else(|refused| refused)
}

/// The client id and secret of an `Authorization: Basic` header
/// (RFC 6749 §2.3.1: each form-urlencoded, then joined by a colon).
fn basic_credentials(headers: &axum::http::HeaderMap) -> Option<(String, String)> {
    use base64::Engine;
    let value = headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let encoded = value.strip_prefix("Basic ")?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (id, secret) = text.split_once(':')?;
    let unescape = |s: &str| {
        url::form_urlencoded::parse(format!("x={s}").as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default()
    };
    Some((unescape(id), unescape(secret)))
}

/// Checks a token request and mints its tokens: `Err` is the error answer.
// Both sides are HTTP answers of the same size; boxing one buys nothing.
#[allow(clippy::result_large_err)]
fn mint(
    shared: &Shared,
    form: &HashMap<String, String>,
    basic: Option<(String, String)>,
) -> Result<Response, Response> {
    let app = &shared.config.oauth;
    let grant_type = form.get("grant_type").cloned().unwrap_or_default();
    // The client's credentials travel in the body or in the header, never
    // in both.
    let client_params: &[&str] = if app.basic_auth {
        &[]
    } else {
        &["client_id", "client_secret"]
    };
    let required = |grant: &[&'static str]| -> Vec<&'static str> {
        client_params.iter().chain(grant).copied().collect()
    };
    let checked = match grant_type.as_str() {
        "authorization_code" => strict_params(
            form,
            &required(&["redirect_uri", "grant_type", "code"]),
            &["code_verifier"],
        ),
        "refresh_token" => strict_params(
            form,
            &required(&["grant_type", "refresh_token"]),
            &["redirect_uri"],
        ),
        _ => Err(token_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "grant_type must be authorization_code or refresh_token",
        )),
    };
    checked?;
    let (client_id, client_secret) = if app.basic_auth {
        basic.unwrap_or_default()
    } else {
        (
            form.get("client_id").cloned().unwrap_or_default(),
            form.get("client_secret").cloned().unwrap_or_default(),
        )
    };
    if client_id != app.client_id || client_secret != app.client_secret {
        return Err(token_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "client authentication failed",
        ));
    }
    let now = SystemTime::now();
    let mut store = shared.store();
    // Whose grant is presented, checked without consuming it: a request the
    // throttle refuses must leave the code or refresh token usable.
    let user = if grant_type == "authorization_code" {
        let code = form.get("code").cloned().unwrap_or_default();
        let Some(grant) = store.oauth.codes.get(&code) else {
            return Err(token_error(
                StatusCode::BAD_REQUEST,
                "invalid_grant",
                "unknown or used code",
            ));
        };
        if grant.expires < now {
            return Err(token_error(
                StatusCode::BAD_REQUEST,
                "invalid_grant",
                "the code expired",
            ));
        }
        if form.get("redirect_uri") != Some(&grant.redirect_uri) {
            return Err(token_error(
                StatusCode::BAD_REQUEST,
                "invalid_grant",
                "redirect_uri does not match the authorization request",
            ));
        }
        if let Some(challenge) = &grant.challenge {
            let verifier = form.get("code_verifier").cloned().unwrap_or_default();
            let computed = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(Sha256::digest(verifier.as_bytes()));
            if computed != *challenge {
                return Err(token_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    "code_verifier does not match the code_challenge",
                ));
            }
        }
        grant.user.clone()
    } else {
        let presented = form.get("refresh_token").cloned().unwrap_or_default();
        let grant = store
            .oauth
            .refresh_tokens
            .get(&presented)
            .filter(|g| g.expires > now && !store.oauth.revoked_users.contains(&g.user));
        let Some(grant) = grant else {
            store.stats.invalid_grants += 1;
            return Err(token_error(
                StatusCode::BAD_REQUEST,
                "invalid_grant",
                "the refresh token is invalid, expired, revoked or already used",
            ));
        };
        grant.user.clone()
    };
    let instant = Instant::now();
    if let Some(last) = store.oauth.last_mint.get(&user)
        && instant.duration_since(*last) < app.mint_interval
    {
        store.stats.mint_throttled += 1;
        return Err(token_error(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "at most one access token per user per application per minute",
        ));
    }
    // Consume the grant: codes are single-use, refresh tokens rotate.
    let scope = if grant_type == "authorization_code" {
        let code = form.get("code").cloned().unwrap_or_default();
        store.oauth.codes.remove(&code).map(|g| g.scope)
    } else {
        let presented = form.get("refresh_token").cloned().unwrap_or_default();
        store
            .oauth
            .refresh_tokens
            .remove(&presented)
            .map(|g| g.scope)
    }
    .unwrap_or_default();
    store.oauth.last_mint.insert(user.clone(), instant);
    store.oauth.mints.push((user.clone(), now));
    store.stats.tokens_minted += 1;
    let access = random_token("access");
    let refresh = random_token("refresh");
    store.tokens.insert(
        access.clone(),
        Issued {
            user: user.clone(),
            expires: Some(now + app.access_lifetime),
        },
    );
    store.oauth.refresh_tokens.insert(
        refresh.clone(),
        RefreshGrant {
            user,
            scope: scope.clone(),
            expires: now + app.refresh_lifetime,
        },
    );
    let created_at = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let expires_in = app
        .expires_in
        .clone()
        .unwrap_or_else(|| app.access_lifetime.as_secs().into());
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        json!({
            "access_token": access,
            "token_type": "bearer",
            "expires_in": expires_in,
            "refresh_token": refresh,
            "scope": scope,
            "created_at": created_at,
        })
        .to_string(),
    )
        .into_response())
}

impl OAuthState {
    pub(super) fn mints_of(&self, user: &str) -> Vec<SystemTime> {
        self.mints
            .iter()
            .filter(|(u, _)| u == user)
            .map(|(_, at)| *at)
            .collect()
    }

    /// A login's grant: a new access and refresh token, recorded as a mint.
    pub(super) fn grant(
        &mut self,
        user: &str,
        scope: &str,
        (_, refresh_lifetime): (Duration, Duration),
    ) -> (String, String) {
        let now = SystemTime::now();
        let (access, refresh) = (random_token("access"), random_token("refresh"));
        self.refresh_tokens.insert(
            refresh.clone(),
            RefreshGrant {
                user: user.to_owned(),
                scope: scope.to_owned(),
                expires: now + refresh_lifetime,
            },
        );
        self.last_mint.insert(user.to_owned(), Instant::now());
        self.mints.push((user.to_owned(), now));
        (access, refresh)
    }

    pub(super) fn revoke(&mut self, user: &str) {
        self.revoked_users.insert(user.to_owned());
    }
}
