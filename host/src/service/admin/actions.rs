//! What an operator does from the pages: connect an account through the
//! browser, replay a dead letter.

use super::*;
use crate::read_model::ReplayError;

#[derive(Deserialize)]
pub(super) struct ConnectForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    account: String,
    /// The destination being set up that asks (its account step is where
    /// the browser comes back to).
    #[serde(default)]
    draft: String,
}

/// "Connect": sends the browser to the authorization server.
pub(super) async fn connect_start(
    State(service): State<Arc<Service>>,
    operator: Operator,
    Form(form): Form<ConnectForm>,
) -> Response {
    let session = &operator.session;
    if let Err(refused) = check_csrf(session, &form.csrf) {
        return *refused;
    }
    let draft = (!form.draft.is_empty())
        .then(|| service.drafts().get(&form.draft, &operator.id))
        .flatten()
        .filter(|d| d.settings.account == form.account);
    let return_to = match &draft {
        Some(_) => format!("/admin/drafts/{}/account", form.draft),
        None => "/admin".to_owned(),
    };
    let account = match (
        service.current().accounts.get(&form.account).cloned(),
        &draft,
    ) {
        (Some(account), _) => account,
        // An account new to the service, for the destination being set
        // up: connected before it is saved.
        (None, Some(draft)) => match editor::account_of(&service, draft).await {
            Ok(account) => Arc::new(account),
            Err(e) => {
                return error_page(
                    StatusCode::SERVICE_UNAVAILABLE,
                    Some(&session.csrf),
                    "Cannot connect",
                    &sentence(&e),
                );
            }
        },
        (None, None) => {
            return error_page(
                StatusCode::NOT_FOUND,
                Some(&session.csrf),
                "Not found",
                "No destination uses that account.",
            );
        }
    };
    let callback = format!("{}{}", service.public_url(), connect::CALLBACK_PATH);
    match account.connect_client(&callback) {
        // A page that moves on by itself rather than a redirect: the
        // policy keeps forms to this site, redirects after them included.
        Ok(Some((client, store))) => {
            let (url, browser) = service
                .connects()
                .start(&account.name, client, store, &return_to);
            let mut page = html(
                StatusCode::OK,
                &ConnectingPage {
                    csrf: Some(&session.csrf),
                    account: &account.name,
                    url: &url,
                },
            );
            if let Ok(value) = HeaderValue::from_str(&connect_cookie(&service, &browser, true)) {
                page.headers_mut().append(header::SET_COOKIE, value);
            }
            page
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
    /// Where the page moves on to.
    back: &'a str,
}

/// The connect cookie: set with `value` (`live`) or cleared. `Lax`, so
/// that the authorization server's redirect back brings it; only for the
/// callback's path.
fn connect_cookie(service: &Service, value: &str, live: bool) -> String {
    let secure = service
        .current()
        .file
        .admin
        .as_ref()
        .is_some_and(|a| a.secure_cookies);
    let max_age = if live {
        connect::LOGIN_LIFE.as_secs()
    } else {
        0
    };
    let secure = if secure { "; Secure" } else { "" };
    format!(
        "{}={value}; Path={}; HttpOnly; SameSite=Lax; Max-Age={max_age}{secure}",
        connect::CONNECT_COOKIE,
        connect::CALLBACK_PATH
    )
}

/// Where the authorization server sends the browser back.
pub(super) async fn connect_callback(
    State(service): State<Arc<Service>>,
    headers: HeaderMap,
    Query(redirect): Query<crate::oauth::Redirect>,
) -> Response {
    if service.sessions().is_none() {
        return StatusCode::NOT_FOUND.into_response();
    }
    let set = service.current();
    let browser = cookie(&headers, connect::CONNECT_COOKIE);
    let mut page = connect_finished(&service, &set, &redirect, browser).await;
    if let Ok(value) = HeaderValue::from_str(&connect_cookie(&service, "", false)) {
        page.headers_mut().append(header::SET_COOKIE, value);
    }
    page
}

async fn connect_finished(
    service: &Service,
    set: &super::super::Set,
    redirect: &crate::oauth::Redirect,
    browser: Option<&str>,
) -> Response {
    match service.connects().finish(redirect, browser).await {
        Ok((account, back)) => {
            if let Some(shared) = set.accounts.get(&account) {
                shared.reload_tokens();
            }
            tracing::info!(account = %account, "connected from the status page");
            html(
                StatusCode::OK,
                &ConnectedPage {
                    csrf: None,
                    account: &account,
                    back: &back,
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
pub(super) struct ReplayForm {
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
    held_back: Vec<crate::queue::HeldBack>,
}

/// Replays one dead letter with the destination's configuration as it is.
pub(super) async fn replay(
    State(service): State<Arc<Service>>,
    operator: Operator,
    Path(name): Path<String>,
    Form(form): Form<ReplayForm>,
) -> Response {
    let session = operator.session;
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
    match served.read.replay(letter).await {
        Ok(done) => html(
            StatusCode::OK,
            &ReplayedPage {
                csrf: Some(&session.csrf),
                name: &name,
                run: done.run.unwrap_or(0),
                replayed: done.replayed,
                held_back: done.held_back,
            },
        ),
        Err(ReplayError::Disabled) => error_page(
            StatusCode::CONFLICT,
            Some(&session.csrf),
            "Disabled",
            &sentence(&format!("{}.", ReplayError::Disabled)),
        ),
        Err(e) => error_page(
            StatusCode::SERVICE_UNAVAILABLE,
            Some(&session.csrf),
            "Not replayed",
            &sentence(&e.to_string()),
        ),
    }
}
