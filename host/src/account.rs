//! One API user's share of the host: the rate limiter and the credentials
//! every destination on the account uses, so their requests count against
//! one budget and one refresher rotates its refresh token. Where the
//! tokens come from is a [`TokenSource`]: a fixed token, the token store
//! (`outreach-host login`), or a cluster's shared bucket
//! (`cluster::tokens`).

use std::sync::Mutex;

use futures::future::BoxFuture;

use crate::delivery::{Credentials, StaticToken};
use crate::limiter::Limiter;
use crate::oauth::{OAuthClient, OAuthCredentials, OAuthSettings, TokenSet, TokenStore};

pub struct Account {
    pub name: String,
    pub limiter: Limiter,
    pub tokens: Box<dyn TokenSource>,
}

/// Where an account's access token comes from.
pub trait TokenSource: Send + Sync {
    /// The access token to send now (refreshed first if about to expire).
    fn token(&self) -> BoxFuture<'_, Result<String, String>>;
    /// The API refused `rejected`: obtain a new token, unless another
    /// request already did.
    fn refresh<'a>(&'a self, rejected: &'a str) -> BoxFuture<'a, Result<(), String>>;
    /// Completes once no refresh whose tokens are being stored is in flight.
    fn settle(&self) -> BoxFuture<'_, ()>;
    /// New tokens were stored (a login): read them again when next needed.
    fn reload(&self) {}
    /// How the credentials of `account` stand now (never the tokens).
    fn connection<'a>(&'a self, account: &'a str, now_secs: u64) -> BoxFuture<'a, Connection>;
    /// When the access token in use expires (epoch seconds), if known.
    fn expires_at(&self) -> Option<u64> {
        None
    }
    /// Tokens minted by refresh since the process started.
    fn refreshes(&self) -> u64 {
        0
    }
    /// For a browser login: the OAuth client's settings and where its
    /// tokens go; `None` for a fixed token.
    fn login(&self) -> Option<(OAuthSettings, Box<dyn TokenSink>)>;
}

/// Where a browser login's tokens go.
pub trait TokenSink: Send + Sync {
    fn put<'a>(
        &'a self,
        account: &'a str,
        tokens: &'a TokenSet,
    ) -> BoxFuture<'a, Result<(), String>>;
}

impl TokenSink for TokenStore {
    fn put<'a>(
        &'a self,
        account: &'a str,
        tokens: &'a TokenSet,
    ) -> BoxFuture<'a, Result<(), String>> {
        let (store, account, tokens) = (self.clone(), account.to_owned(), tokens.clone());
        Box::pin(async move {
            tokio::task::spawn_blocking(move || store.put(&account, &tokens))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())
        })
    }
}

/// How an account's credentials stand, for the status page (never the
/// tokens).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Connection {
    /// One fixed token from the environment.
    Fixed,
    /// No usable tokens: why.
    NeedsLogin(String),
    Connected {
        /// Seconds the access token has left, if known.
        expires_in: Option<i64>,
        scope: Option<String>,
    },
}

impl Connection {
    /// Connected with `tokens`, at `now_secs`.
    pub fn of(tokens: TokenSet, now_secs: u64) -> Self {
        Self::Connected {
            expires_in: tokens.expires_at.map(|at| seconds_until(at, now_secs)),
            scope: tokens.scope,
        }
    }
}

fn seconds_until(at: u64, now_secs: u64) -> i64 {
    i64::try_from(at).unwrap_or(i64::MAX) - i64::try_from(now_secs).unwrap_or(0)
}

/// One fixed token (`OUTREACH_ACCESS_TOKEN`), for every account.
impl TokenSource for StaticToken {
    fn token(&self) -> BoxFuture<'_, Result<String, String>> {
        Box::pin(Credentials::token(self))
    }
    fn refresh<'a>(&'a self, rejected: &'a str) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(Credentials::refresh(self, rejected))
    }
    fn settle(&self) -> BoxFuture<'_, ()> {
        Box::pin(std::future::ready(()))
    }
    fn connection<'a>(&'a self, _: &'a str, _: u64) -> BoxFuture<'a, Connection> {
        Box::pin(std::future::ready(Connection::Fixed))
    }
    fn login(&self) -> Option<(OAuthSettings, Box<dyn TokenSink>)> {
        None
    }
}

/// The token store, as `outreach-host login` left it, with the client that
/// refreshes its tokens. Loaded when first needed, so that a service
/// starts before an account logs in.
pub struct StoredTokens {
    account: String,
    client: OAuthClient,
    store: TokenStore,
    loaded: Mutex<Option<OAuthCredentials>>,
}

impl StoredTokens {
    pub fn new(account: &str, client: OAuthClient, store: TokenStore) -> Self {
        Self {
            account: account.to_owned(),
            client,
            store,
            loaded: Mutex::default(),
        }
    }

    fn loaded(&self) -> std::sync::MutexGuard<'_, Option<OAuthCredentials>> {
        self.loaded.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The account's OAuth credentials, once its tokens could be loaded.
    fn oauth(&self) -> Result<OAuthCredentials, String> {
        let mut loaded = self.loaded();
        if let Some(credentials) = &*loaded {
            return Ok(credentials.clone());
        }
        let credentials =
            OAuthCredentials::load(self.client.clone(), self.store.clone(), &self.account)
                .map_err(|e| format!("account {:?}: {e}", self.account))?;
        *loaded = Some(credentials.clone());
        Ok(credentials)
    }
}

impl TokenSource for StoredTokens {
    fn token(&self) -> BoxFuture<'_, Result<String, String>> {
        Box::pin(async move { self.oauth()?.token().await })
    }

    fn refresh<'a>(&'a self, rejected: &'a str) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move { self.oauth()?.refresh(rejected).await })
    }

    fn settle(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            if let Ok(credentials) = self.oauth() {
                credentials.settle().await;
            }
        })
    }

    fn reload(&self) {
        *self.loaded() = None;
    }

    fn connection<'a>(&'a self, account: &'a str, now_secs: u64) -> BoxFuture<'a, Connection> {
        let (store, account) = (self.store.clone(), account.to_owned());
        Box::pin(async move {
            match tokio::task::spawn_blocking(move || store.get(&account)).await {
                Ok(Ok(tokens)) => Connection::of(tokens, now_secs),
                Ok(Err(e)) => Connection::NeedsLogin(e.to_string()),
                Err(e) => Connection::NeedsLogin(e.to_string()),
            }
        })
    }

    fn expires_at(&self) -> Option<u64> {
        self.loaded().as_ref()?.expires_at()
    }

    fn refreshes(&self) -> u64 {
        self.loaded()
            .as_ref()
            .map_or(0, OAuthCredentials::refreshes)
    }

    fn login(&self) -> Option<(OAuthSettings, Box<dyn TokenSink>)> {
        Some((self.client.settings().clone(), Box::new(self.store.clone())))
    }
}

/// A browser login's OAuth client, and where its tokens go.
pub type LoginClient = (OAuthClient, Box<dyn TokenSink>);

impl Account {
    /// An OAuth client for a browser login whose redirect comes back to
    /// `redirect_uri`, and where its tokens go (`None`: the account uses a
    /// fixed token).
    pub fn connect_client(&self, redirect_uri: &str) -> Result<Option<LoginClient>, String> {
        let Some((mut settings, sink)) = self.tokens.login() else {
            return Ok(None);
        };
        settings.redirect_uri = redirect_uri.to_owned();
        // The code comes back through a browser: only the holder of the
        // verifier (this service) can exchange it. A server without PKCE
        // ignores the parameters (RFC 6749 §3.1).
        settings.pkce = true;
        let client = OAuthClient::new(settings).map_err(|e| e.to_string())?;
        Ok(Some((client, sink)))
    }

    /// The scopes a browser login asks for (`None`: the account uses a
    /// fixed token).
    pub fn login_scopes(&self) -> Option<Vec<String>> {
        self.tokens.login().map(|(settings, _)| settings.scopes)
    }

    /// Whether a browser login can give the account new tokens.
    pub fn connectable(&self) -> bool {
        self.tokens.login().is_some()
    }

    /// New tokens were stored (a login): read them again when next needed.
    pub fn reload_tokens(&self) {
        self.tokens.reload();
    }

    /// What the account's tokens look like now.
    pub async fn connection(&self, now_secs: u64) -> Connection {
        self.tokens.connection(&self.name, now_secs).await
    }

    /// Seconds until the access token in use expires, when known (never
    /// the token itself).
    pub fn token_expires_in(&self, now_secs: u64) -> Option<i64> {
        Some(seconds_until(self.tokens.expires_at()?, now_secs))
    }

    /// Tokens minted by refresh since the process started.
    pub fn refreshes(&self) -> u64 {
        self.tokens.refreshes()
    }
}

impl Credentials for Account {
    async fn token(&self) -> Result<String, String> {
        self.tokens.token().await
    }

    async fn refresh(&self, rejected: &str) -> Result<(), String> {
        self.tokens.refresh(rejected).await
    }

    async fn settle(&self) {
        self.tokens.settle().await;
    }
}
