//! OAuth 2 for the destination's API: the authorization-code login (with a
//! loopback redirect listener, or pasting the redirected URL), and
//! credentials that refresh themselves — shortly before expiry and once
//! after a 401, one refresh at a time per account, never more often than
//! the API allows, always keeping the newest refresh token.
//!
//! Endpoints and scopes come from the component's `describe`.

mod credentials;
mod response;
pub mod store;

use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use axum::Router;
use axum::extract::{Query, State};
use axum::response::Html;
use axum::routing::get;
use destination_types::ClientAuthentication;
use oauth2::basic::{
    BasicErrorResponse, BasicErrorResponseType, BasicRevocationErrorResponse,
    BasicTokenIntrospectionResponse,
};
use oauth2::{
    AuthType, AuthUrl, AuthorizationCode, Client, ClientId, ClientSecret, CsrfToken,
    EndpointNotSet, EndpointSet, PkceCodeChallenge, PkceCodeVerifier, RedirectUrl, RefreshToken,
    RequestTokenError, Scope, StandardRevocableToken, TokenResponse, TokenUrl,
};
use reqwest::Url;
use serde::Deserialize;
use thiserror::Error;
use tokio::sync::oneshot;

pub use credentials::OAuthCredentials;
pub use store::{TokenSet, TokenStore};

use response::IssuedTokens;

/// Where `login` listens for the browser's redirect unless told otherwise
/// (the address to register with the OAuth application).
pub const DEFAULT_REDIRECT_URI: &str = "http://127.0.0.1:8765/callback";

/// Refresh this long before the access token expires.
pub const REFRESH_MARGIN: Duration = Duration::from_secs(300);

/// oauth2's basic client, with a token response that tolerates odd
/// `expires_in` values (see [`response`]).
type ConfiguredClient = Client<
    BasicErrorResponse,
    IssuedTokens,
    BasicTokenIntrospectionResponse,
    StandardRevocableToken,
    BasicRevocationErrorResponse,
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointSet,
>;

/// The registered OAuth application. `Debug` hides the secret.
#[derive(Clone)]
pub struct AppCredentials {
    pub client_id: String,
    pub client_secret: String,
}

impl std::fmt::Debug for AppCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppCredentials")
            .field("client_id", &self.client_id)
            .field("client_secret", &"<redacted>")
            .finish()
    }
}

/// Where and how to log in.
#[derive(Clone, Debug)]
pub struct OAuthSettings {
    pub authorize_url: String,
    pub token_url: String,
    pub redirect_uri: String,
    pub scopes: Vec<String>,
    pub app: AppCredentials,
    /// Send a PKCE challenge (only where the provider accepts it).
    pub pkce: bool,
    /// The provider mints at most one access token per this interval.
    pub min_interval_between_tokens: Duration,
    /// How the token endpoint wants the client to authenticate (from the
    /// component's description).
    pub client_authentication: ClientAuthentication,
    /// What time it is: when tokens were obtained and when they expire.
    pub clock: Clock,
}

#[derive(Debug, Error)]
pub enum OAuthError {
    #[error("invalid OAuth setting {0}")]
    Setting(String),
    #[error("the authorization server refused: {0}")]
    Refused(String),
    #[error("the refresh token was refused ({0}); run `outreach-host login` again")]
    InvalidGrant(String),
    #[error("the authorization server is throttling new tokens: {0}")]
    Throttled(String),
    #[error("cannot reach the authorization server: {0}")]
    Transport(String),
    #[error("login failed: {0}")]
    Login(String),
    #[error(transparent)]
    Store(#[from] store::StoreError),
}

use crate::clock::Clock;

/// An OAuth client for one application.
#[derive(Clone)]
pub struct OAuthClient {
    client: ConfiguredClient,
    http: reqwest::Client,
    settings: OAuthSettings,
}

impl OAuthClient {
    pub fn new(settings: OAuthSettings) -> Result<Self, OAuthError> {
        let setting =
            |name: &str, e: &dyn std::fmt::Display| OAuthError::Setting(format!("{name}: {e}"));
        let client = Client::<
            BasicErrorResponse,
            IssuedTokens,
            BasicTokenIntrospectionResponse,
            StandardRevocableToken,
            BasicRevocationErrorResponse,
        >::new(ClientId::new(settings.app.client_id.clone()))
        .set_client_secret(ClientSecret::new(settings.app.client_secret.clone()))
        .set_auth_uri(
            AuthUrl::new(settings.authorize_url.clone())
                .map_err(|e| setting("authorize URL", &e))?,
        )
        .set_token_uri(
            TokenUrl::new(settings.token_url.clone()).map_err(|e| setting("token URL", &e))?,
        )
        .set_redirect_uri(
            RedirectUrl::new(settings.redirect_uri.clone())
                .map_err(|e| setting("redirect URI", &e))?,
        )
        .set_auth_type(match settings.client_authentication {
            ClientAuthentication::RequestBody => AuthType::RequestBody,
            ClientAuthentication::Basic => AuthType::BasicAuth,
        });
        let http = reqwest::Client::builder()
            // Following redirects from a token endpoint would be an SSRF hole.
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| OAuthError::Transport(e.to_string()))?;
        Ok(Self {
            client,
            http,
            settings,
        })
    }

    pub fn settings(&self) -> &OAuthSettings {
        &self.settings
    }

    /// The URL to send the user to, and what to check the redirect against.
    pub fn authorize_url(&self) -> (Url, PendingLogin) {
        let mut request = self.client.authorize_url(CsrfToken::new_random);
        for scope in &self.settings.scopes {
            request = request.add_scope(Scope::new(scope.clone()));
        }
        let verifier = if self.settings.pkce {
            let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
            request = request.set_pkce_challenge(challenge);
            Some(verifier)
        } else {
            None
        };
        let (url, state) = request.url();
        (url, PendingLogin { state, verifier })
    }

    /// Exchanges the code from a redirect after checking its `state`.
    pub async fn finish_login(
        &self,
        pending: PendingLogin,
        redirect: &Redirect,
    ) -> Result<TokenSet, OAuthError> {
        if let Some(error) = &redirect.error {
            return Err(OAuthError::Login(format!(
                "the authorization server answered {}: {}",
                printable(error),
                printable(
                    redirect
                        .error_description
                        .as_deref()
                        .unwrap_or("no description")
                )
            )));
        }
        if redirect.state.as_deref() != Some(pending.state.secret().as_str()) {
            return Err(OAuthError::Login(
                "the redirect's state does not match this login (a stale or forged redirect)"
                    .into(),
            ));
        }
        let code = redirect
            .code
            .clone()
            .ok_or_else(|| OAuthError::Login("the redirect carries no code".into()))?;
        let mut exchange = self.client.exchange_code(AuthorizationCode::new(code));
        if let Some(verifier) = pending.verifier {
            exchange = exchange.set_pkce_verifier(verifier);
        }
        let response = exchange
            .request_async(&self.http)
            .await
            .map_err(token_error)?;
        Ok(token_set(&self.settings.clock, &response, None))
    }

    /// Exchanges a refresh token for new tokens.
    pub async fn refresh(&self, refresh_token: &str) -> Result<TokenSet, OAuthError> {
        let response = self
            .client
            .exchange_refresh_token(&RefreshToken::new(refresh_token.to_owned()))
            .request_async(&self.http)
            .await
            .map_err(token_error)?;
        Ok(token_set(
            &self.settings.clock,
            &response,
            Some(refresh_token),
        ))
    }
}

fn token_set(clock: &Clock, response: &IssuedTokens, previous_refresh: Option<&str>) -> TokenSet {
    let now = clock.now_secs();
    TokenSet {
        access_token: response.access_token().secret().clone(),
        // Servers that rotate refresh tokens send a new one with every
        // answer; keep the old one only if the server sent none.
        refresh_token: response
            .refresh_token()
            .map(|r| r.secret().clone())
            .or_else(|| previous_refresh.map(str::to_owned)),
        expires_at: response
            .expires_in()
            .map(|d| now.saturating_add(d.as_secs())),
        scope: response.scopes().map(|scopes| {
            scopes
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(" ")
        }),
        obtained_at_ms: clock.now_ms(),
    }
}

/// Text from the authorization server (or from a redirect anyone can
/// forge) as it may go into a log line or a page: control characters
/// escaped (no forged log lines, no terminal escapes), at most 300
/// characters.
fn printable(text: &str) -> String {
    const MAX_CHARS: usize = 300;
    let mut out = String::new();
    for (n, c) in text.chars().enumerate() {
        if n == MAX_CHARS {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// Maps oauth2's errors to ours without ever quoting a request (which
/// carries the client secret and tokens).
fn token_error<E: std::error::Error + 'static>(
    e: RequestTokenError<E, oauth2::basic::BasicErrorResponse>,
) -> OAuthError {
    match e {
        RequestTokenError::ServerResponse(response) => {
            let description = printable(
                response
                    .error_description()
                    .map(String::as_str)
                    .unwrap_or_default(),
            );
            match response.error() {
                BasicErrorResponseType::InvalidGrant => OAuthError::InvalidGrant(description),
                BasicErrorResponseType::Extension(e) if e == "rate_limited" || e == "slow_down" => {
                    OAuthError::Throttled(description)
                }
                other => {
                    OAuthError::Refused(format!("{}: {description}", printable(other.as_ref())))
                }
            }
        }
        RequestTokenError::Request(e) => OAuthError::Transport(e.to_string()),
        RequestTokenError::Parse(e, _) => {
            OAuthError::Refused(format!("unreadable token response: {e}"))
        }
        RequestTokenError::Other(e) => OAuthError::Refused(e),
    }
}

/// What a login waits for.
pub struct PendingLogin {
    state: CsrfToken,
    verifier: Option<PkceCodeVerifier>,
}

impl PendingLogin {
    /// The `state` the redirect must carry (it is in the authorize URL, so
    /// not a secret).
    pub fn state(&self) -> &str {
        self.state.secret()
    }
}

/// The query of the redirect back from the authorization server.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct Redirect {
    pub code: Option<String>,
    pub state: Option<String>,
    pub error: Option<String>,
    pub error_description: Option<String>,
}

impl Redirect {
    /// Reads the redirect from the full URL the browser ended on.
    pub fn from_url(url: &str) -> Result<Self, OAuthError> {
        let url = Url::parse(url.trim())
            .map_err(|e| OAuthError::Login(format!("not a URL ({e}); paste the whole address")))?;
        let mut redirect = Redirect::default();
        for (key, value) in url.query_pairs() {
            let value = Some(value.into_owned());
            match key.as_ref() {
                "code" => redirect.code = value,
                "state" => redirect.state = value,
                "error" => redirect.error = value,
                "error_description" => redirect.error_description = value,
                _ => {}
            }
        }
        Ok(redirect)
    }
}

/// Serves the redirect URI on loopback until one redirect arrives.
pub struct RedirectListener {
    addr: SocketAddr,
    received: oneshot::Receiver<Redirect>,
    server: tokio::task::JoinHandle<()>,
}

impl RedirectListener {
    /// Binds the host and port of `redirect_uri` (port 0 picks one: then the
    /// redirect URI must be built from [`RedirectListener::addr`]).
    pub async fn bind(redirect_uri: &str) -> Result<Self, OAuthError> {
        let url = Url::parse(redirect_uri)
            .map_err(|e| OAuthError::Setting(format!("redirect URI: {e}")))?;
        let host = url.host_str().unwrap_or_default();
        if url.scheme() != "http" || !matches!(host, "127.0.0.1" | "localhost" | "[::1]") {
            return Err(OAuthError::Setting(format!(
                "redirect URI {redirect_uri} is not an http loopback address; use --manual"
            )));
        }
        let port = url.port().unwrap_or(80);
        let bind: SocketAddr = if host == "[::1]" {
            SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port))
        } else {
            SocketAddr::from(([127, 0, 0, 1], port))
        };
        let listener = tokio::net::TcpListener::bind(bind)
            .await
            .map_err(|e| OAuthError::Login(format!("cannot listen on {bind}: {e}")))?;
        let addr = listener
            .local_addr()
            .map_err(|e| OAuthError::Login(e.to_string()))?;
        let (tx, received) = oneshot::channel();
        let app = Router::new()
            .route(url.path(), get(receive_redirect))
            .with_state(std::sync::Arc::new(Mutex::new(Some(tx))));
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self {
            addr,
            received,
            server,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Waits for the redirect.
    pub async fn wait(self, timeout: Duration) -> Result<Redirect, OAuthError> {
        let result = tokio::time::timeout(timeout, self.received).await;
        self.server.abort();
        match result {
            Ok(Ok(redirect)) => Ok(redirect),
            Ok(Err(_)) => Err(OAuthError::Login("the redirect listener stopped".into())),
            Err(_) => Err(OAuthError::Login(format!(
                "no redirect arrived within {} s",
                timeout.as_secs()
            ))),
        }
    }
}

type RedirectSlot = std::sync::Arc<Mutex<Option<oneshot::Sender<Redirect>>>>;

async fn receive_redirect(
    State(slot): State<RedirectSlot>,
    Query(redirect): Query<Redirect>,
) -> Html<&'static str> {
    let sender = slot.lock().unwrap_or_else(|p| p.into_inner()).take();
    if let Some(sender) = sender {
        let _ = sender.send(redirect);
    }
    Html(
        "<!doctype html><title>outreach-host</title>\
         <p>Login received. You can close this window and return to the terminal.</p>",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_from_the_authorization_server_cannot_forge_log_lines() {
        let forged = "no\n2026-12-03 INFO connected\u{1b}[31m";
        let shown = printable(forged);
        assert!(!shown.chars().any(char::is_control), "{shown:?}");
        assert_eq!(shown, "no\\n2026-12-03 INFO connected\\u{1b}[31m");
        assert_eq!(printable(&"x".repeat(1_000)).chars().count(), 301);
    }

    #[tokio::test]
    async fn a_denied_login_names_the_error_escaped() {
        let client = OAuthClient::new(OAuthSettings {
            authorize_url: "http://127.0.0.1:9/authorize".into(),
            token_url: "http://127.0.0.1:9/token".into(),
            redirect_uri: DEFAULT_REDIRECT_URI.into(),
            scopes: Vec::new(),
            app: AppCredentials {
                client_id: "id".into(),
                client_secret: "secret".into(),
            },
            pkce: false,
            min_interval_between_tokens: Duration::ZERO,
            client_authentication: ClientAuthentication::default(),
            clock: Clock::system(),
        })
        .unwrap();
        let (_, pending) = client.authorize_url();
        let redirect = Redirect {
            error: Some("access_denied".into()),
            error_description: Some("bad\r\nforged line".into()),
            ..Redirect::default()
        };
        let error = client.finish_login(pending, &redirect).await.unwrap_err();
        let text = error.to_string();
        assert!(
            !text.contains('\n') && text.contains("bad\\r\\nforged line"),
            "{text}"
        );
    }
}
