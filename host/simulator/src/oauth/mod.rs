//! The simulator's OAuth 2 authorization server: an authorize
//! page that asks for the email, then the password, and redirects back with
//! `code` and `state`; a token endpoint with strict parameter matching,
//! refresh-token rotation, configurable lifetimes, the one-token-per-user-
//! per-interval throttle, and `invalid_grant` errors.
//!
//! The pages are in [`authorize`], the token endpoint in [`token`]; this
//! module keeps what they share: the application, the grants and tokens
//! issued, and the mints.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant, SystemTime};

use rand::Rng;

mod authorize;
mod token;

pub(crate) use authorize::{authorize, authorize_email, authorize_password};
pub(crate) use token::token;

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
