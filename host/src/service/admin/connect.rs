//! "Connect" from the status page: the OAuth authorization-code
//! flow through the operator's browser. The page's form (with its CSRF
//! token) starts a login for an account — the authorize URL from the
//! component's description, with a fresh unguessable `state` kept here for
//! ten minutes — and the authorization server sends the browser back to
//! `/oauth/callback`, where the state is checked (once), the code exchanged
//! and the tokens stored exactly as `outreach-host login` stores them.
//!
//! The callback needs no session (a `SameSite=Strict` cookie is not sent
//! on a redirect that comes from another site), but it must come from the
//! browser that started the login: Connect sets a cookie of its own
//! (`SameSite=Lax`, sent on that top-level redirect, only to the callback's
//! path) whose value the callback must bring with the state. A state seen
//! by someone else (a log, a shoulder) is worth nothing without it. The
//! authorization request also carries a PKCE challenge, so an intercepted
//! code cannot be exchanged by anyone but this service.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use crate::account::TokenSink;
use crate::clock::Clock;
use crate::oauth::{OAuthClient, OAuthError, PendingLogin, Redirect};

/// How long a started login waits for its callback.
pub const LOGIN_LIFE: Duration = Duration::from_secs(10 * 60);
/// The cookie that ties a callback to the browser that pressed Connect.
pub const CONNECT_COOKIE: &str = "outreach_host_connect";
pub const CALLBACK_PATH: &str = "/oauth/callback";

/// A login started from the page, waiting for its callback.
struct Started {
    account: String,
    /// The page to go back to once connected.
    return_to: String,
    /// The value of the browser's connect cookie.
    browser: String,
    client: OAuthClient,
    store: Box<dyn TokenSink>,
    pending: PendingLogin,
    expires_ms: u64,
}

/// Logins started from the page, by `state`.
pub struct Connects {
    clock: Clock,
    started: Mutex<HashMap<String, Started>>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error(
        "this sign-in was not started here, or it is over ten minutes old; nothing was stored. Start again with Connect."
    )]
    UnknownState,
    #[error(
        "this sign-in was started in another browser (or its cookie is gone); nothing was stored. Start again with Connect in the browser that finishes the login."
    )]
    OtherBrowser,
    #[error("{0}; nothing was stored.")]
    Login(String),
    #[error("the tokens could not be stored: {0}")]
    Store(String),
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

impl Connects {
    pub fn new(clock: Clock) -> Self {
        Self {
            clock,
            started: Mutex::default(),
        }
    }

    /// Starts a login for `account` with `client` (whose redirect URI is
    /// the service's callback), its tokens to go to `store`, the browser to
    /// come back to `return_to` (a path of these pages): where to send the
    /// browser, and the value of the cookie to give it.
    pub fn start(
        &self,
        account: &str,
        client: OAuthClient,
        store: Box<dyn TokenSink>,
        return_to: &str,
    ) -> (String, String) {
        let now = self.clock.now_ms();
        let (url, pending) = client.authorize_url();
        let browser = super::session::token();
        let mut started = lock(&self.started);
        started.retain(|_, s| s.expires_ms > now);
        started.insert(
            pending.state().to_owned(),
            Started {
                account: account.to_owned(),
                return_to: return_to.to_owned(),
                browser: browser.clone(),
                client,
                store,
                pending,
                expires_ms: now + u64::try_from(LOGIN_LIFE.as_millis()).unwrap_or(u64::MAX),
            },
        );
        (url.to_string(), browser)
    }

    /// Finishes the login the callback's `state` names, if `browser` (its
    /// connect cookie) is the one that started it: exchanges the code and
    /// stores the tokens for its account; returns the account and the page
    /// to go back to. A state is good once, whatever happens.
    pub async fn finish(
        &self,
        redirect: &Redirect,
        browser: Option<&str>,
    ) -> Result<(String, String), ConnectError> {
        let now = self.clock.now_ms();
        let started = redirect
            .state
            .as_deref()
            .and_then(|state| lock(&self.started).remove(state))
            .filter(|s| s.expires_ms > now)
            .ok_or(ConnectError::UnknownState)?;
        if !browser.is_some_and(|cookie| super::session::same_token(cookie, &started.browser)) {
            return Err(ConnectError::OtherBrowser);
        }
        let Started {
            account,
            return_to,
            client,
            store,
            pending,
            ..
        } = started;
        let tokens = client
            .finish_login(pending, redirect)
            .await
            .map_err(|e| match e {
                // (Its own message speaks of refresh tokens and `login`.)
                OAuthError::InvalidGrant(why) => ConnectError::Login(format!(
                    "the token endpoint refused the authorization code ({why})"
                )),
                other => ConnectError::Login(other.to_string()),
            })?;
        store
            .put(&account, &tokens)
            .await
            .map_err(ConnectError::Store)?;
        Ok((account, return_to))
    }
}
