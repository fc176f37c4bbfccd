//! The authorize page: checks the client's request, asks for the email,
//! then the password, and redirects back with `code` and `state`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::Form;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};

use super::{CodeGrant, LoginSession, random_token};
use crate::Shared;

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
pub(crate) async fn authorize(
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
pub(crate) async fn authorize_email(
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
pub(crate) async fn authorize_password(
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
