//! The operators' status page, served by `serve` under `/admin`: sign-in,
//! the destinations with their connection and backlog, each destination's
//! dataflow runs, a run's counts per audience and per reason, and the dead
//! letters. Server-rendered HTML (askama templates, escaped by default),
//! no scripts (the content security policy forbids any), plain CSS that
//! fits a phone.
//!
//! Nothing is shown without a session; every form that changes something
//! carries the session's CSRF token.

mod actions;
pub mod attempts;
mod charts;
pub mod connect;
pub mod editor;
mod letters;
mod pages;
pub mod session;
mod sign_in;

use std::sync::Arc;
use std::time::Duration;

use askama::Template;
use axum::Router;
use axum::extract::{Form, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use serde::Deserialize;

use super::{Destination, Service};
use session::{SESSION_COOKIE, SIGN_IN_COOKIE, Session, Sessions, same_token};

/// The client's address as sign-in limits count it (`unknown` when the
/// listener did not say).
pub(super) struct Client(String);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Client {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        let address = parts
            .extensions
            .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
            .map_or_else(|| "unknown".to_owned(), |c| attempts::client_key(c.0.ip()));
        Ok(Self(address))
    }
}

/// The answer to give instead of a page (boxed: a `Response` is large and
/// this is the rare path).
type Refused = Box<Response>;

/// Runs and letters shown at most on one page.
const PAGE: usize = 100;

/// What every page's answer carries: no scripts, no framing, no caching.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

pub fn routes() -> Router<Arc<Service>> {
    Router::new()
        .route("/admin", get(pages::destinations))
        .route("/admin/style.css", get(style))
        .route(
            "/admin/sign-in",
            get(sign_in::sign_in_page).post(sign_in::sign_in),
        )
        .route("/admin/sign-out", axum::routing::post(sign_in::sign_out))
        .route("/admin/destinations/{name}", get(pages::destination))
        .route("/admin/destinations/{name}/runs/{id}", get(pages::run))
        .route(
            "/admin/destinations/{name}/dead-letters",
            get(letters::letters),
        )
        .route(
            "/admin/destinations/{name}/dead-letters/{id}",
            get(letters::letter),
        )
        .route(
            "/admin/destinations/{name}/dead-letters/replay",
            axum::routing::post(actions::replay),
        )
        .route(
            "/admin/connect",
            axum::routing::post(actions::connect_start),
        )
        .route(connect::CALLBACK_PATH, get(actions::connect_callback))
        .merge(editor::routes())
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

/// A signed-in operator: handlers that take one answer only with a valid
/// session; otherwise 404 while the page is off, else a redirect to sign
/// in.
pub(super) struct Operator {
    sessions: Arc<Sessions>,
    /// The session cookie's value.
    id: String,
    session: Session,
}

impl axum::extract::FromRequestParts<Arc<Service>> for Operator {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        service: &Arc<Service>,
    ) -> Result<Self, Response> {
        let Some(sessions) = service.sessions() else {
            return Err(StatusCode::NOT_FOUND.into_response());
        };
        let Some(id) = cookie(&parts.headers, SESSION_COOKIE) else {
            return Err(Redirect::to("/admin/sign-in").into_response());
        };
        let Some(session) = sessions.get(id) else {
            return Err(Redirect::to("/admin/sign-in").into_response());
        };
        Ok(Self {
            id: id.to_owned(),
            sessions,
            session,
        })
    }
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

/// `text` with a capital first letter (error messages are written to be
/// embedded; a page shows them on their own).
fn sentence(text: &str) -> String {
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// The destination named `name`, or the page saying there is none.
fn find(service: &Service, name: &str, session: &Session) -> Result<Arc<Destination>, Refused> {
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
