//! The token endpoint: strict parameter matching, the client's
//! authentication (form body or HTTP Basic), the authorization-code and
//! refresh-token grants with rotation, the one-token-per-user-per-interval
//! throttle, and `invalid_grant` errors.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::Form;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde_json::json;
use sha2::{Digest, Sha256};

use super::{Issued, RefreshGrant, random_token};
use crate::Shared;

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
pub(crate) async fn token(
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
