//! One API user's share of the service: the rate limiter and the
//! credentials every destination on the account uses, so their requests
//! count against one budget and one refresher rotates its refresh token.

use std::sync::Mutex;

use crate::delivery::{Credentials, StaticToken};
use crate::limiter::Limiter;
use crate::oauth::{OAuthClient, OAuthCredentials, TokenSet, TokenStore};

pub struct Account {
    pub name: String,
    pub limiter: Limiter,
    pub credentials: AccountCredentials,
}

/// Where an account's access token comes from.
pub enum AccountCredentials {
    /// One fixed token (`OUTREACH_ACCESS_TOKEN`), for every account.
    Fixed(StaticToken),
    /// The cluster's tokens bucket (a cluster worker owning the account).
    Shared(crate::cluster::tokens::SharedTokens),
    /// The token store, as `outreach-host login` left it. Loaded when
    /// first needed, so that a service starts before an account logs in.
    Stored {
        client: Box<OAuthClient>,
        store: TokenStore,
        loaded: Mutex<Option<OAuthCredentials>>,
    },
}

/// Where a browser login's tokens go.
pub enum TokenSink {
    Store(TokenStore),
    /// The cluster's tokens bucket (a large handle: boxed).
    Cluster(Box<async_nats::jetstream::kv::Store>),
}

impl TokenSink {
    pub async fn put(&self, account: &str, tokens: &TokenSet) -> Result<(), String> {
        match self {
            Self::Store(store) => {
                let (store, account, tokens) = (store.clone(), account.to_owned(), tokens.clone());
                tokio::task::spawn_blocking(move || store.put(&account, &tokens))
                    .await
                    .map_err(|e| e.to_string())?
                    .map_err(|e| e.to_string())
            }
            Self::Cluster(bucket) => crate::cluster::tokens::store(bucket, account, tokens)
                .await
                .map(|_| ()),
        }
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

impl Account {
    /// An OAuth client for a browser login whose redirect comes back to
    /// `redirect_uri`, and the store its tokens go to (`None`: the account
    /// uses a fixed token).
    pub fn connect_client(
        &self,
        redirect_uri: &str,
    ) -> Result<Option<(OAuthClient, TokenSink)>, String> {
        let (client, sink) = match &self.credentials {
            AccountCredentials::Stored { client, store, .. } => {
                (client.settings(), TokenSink::Store(store.clone()))
            }
            AccountCredentials::Shared(tokens) => (
                tokens.client().settings(),
                TokenSink::Cluster(Box::new(tokens.bucket().clone())),
            ),
            AccountCredentials::Fixed(_) => return Ok(None),
        };
        let mut settings = client.clone();
        settings.redirect_uri = redirect_uri.to_owned();
        // The code comes back through a browser: only the holder of the
        // verifier (this service) can exchange it. A server without PKCE
        // ignores the parameters (RFC 6749 §3.1).
        settings.pkce = true;
        let client = OAuthClient::new(settings).map_err(|e| e.to_string())?;
        Ok(Some((client, sink)))
    }

    /// New tokens were stored (a login): read them again when next needed.
    pub fn reload_tokens(&self) {
        match &self.credentials {
            AccountCredentials::Stored { loaded, .. } => {
                *loaded.lock().unwrap_or_else(|p| p.into_inner()) = None;
            }
            AccountCredentials::Shared(tokens) => tokens.reload(),
            AccountCredentials::Fixed(_) => {}
        }
    }

    /// What the token store holds for the account now.
    pub async fn connection(&self, now_secs: u64) -> Connection {
        let store = match &self.credentials {
            AccountCredentials::Stored { store, .. } => store,
            AccountCredentials::Shared(tokens) => {
                return match crate::cluster::tokens::read(tokens.bucket(), &self.name).await {
                    Ok((tokens, _)) => Connection::Connected {
                        expires_in: tokens.expires_at.map(|at| {
                            i64::try_from(at).unwrap_or(i64::MAX)
                                - i64::try_from(now_secs).unwrap_or(0)
                        }),
                        scope: tokens.scope,
                    },
                    Err(e) => Connection::NeedsLogin(e.to_string()),
                };
            }
            AccountCredentials::Fixed(_) => return Connection::Fixed,
        };
        let (store, name) = (store.clone(), self.name.clone());
        match tokio::task::spawn_blocking(move || store.get(&name)).await {
            Ok(Ok(tokens)) => Connection::Connected {
                expires_in: tokens.expires_at.map(|at| {
                    i64::try_from(at).unwrap_or(i64::MAX) - i64::try_from(now_secs).unwrap_or(0)
                }),
                scope: tokens.scope,
            },
            Ok(Err(e)) => Connection::NeedsLogin(e.to_string()),
            Err(e) => Connection::NeedsLogin(e.to_string()),
        }
    }

    /// The account's OAuth credentials, once its tokens could be loaded.
    fn oauth(&self) -> Result<Option<OAuthCredentials>, String> {
        let AccountCredentials::Stored {
            client,
            store,
            loaded,
        } = &self.credentials
        else {
            return Ok(None);
        };
        let mut loaded = loaded.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(credentials) = &*loaded {
            return Ok(Some(credentials.clone()));
        }
        let credentials = OAuthCredentials::load((**client).clone(), store.clone(), &self.name)
            .map_err(|e| format!("account {:?}: {e}", self.name))?;
        *loaded = Some(credentials.clone());
        Ok(Some(credentials))
    }

    /// Seconds until the access token in use expires, when known (never
    /// the token itself).
    pub fn token_expires_in(&self, now_secs: u64) -> Option<i64> {
        let at = match &self.credentials {
            AccountCredentials::Stored { loaded, .. } => {
                let loaded = loaded.lock().unwrap_or_else(|p| p.into_inner());
                loaded.as_ref()?.expires_at()?
            }
            AccountCredentials::Shared(tokens) => tokens.expires_at()?,
            AccountCredentials::Fixed(_) => return None,
        };
        Some(i64::try_from(at).unwrap_or(i64::MAX) - i64::try_from(now_secs).unwrap_or(0))
    }

    /// Tokens minted by refresh since the service started.
    pub fn refreshes(&self) -> u64 {
        match &self.credentials {
            AccountCredentials::Stored { loaded, .. } => loaded
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .as_ref()
                .map_or(0, OAuthCredentials::refreshes),
            AccountCredentials::Shared(tokens) => tokens.refreshes(),
            AccountCredentials::Fixed(_) => 0,
        }
    }
}

impl Credentials for Account {
    async fn token(&self) -> Result<String, String> {
        match &self.credentials {
            AccountCredentials::Fixed(token) => token.token().await,
            AccountCredentials::Shared(tokens) => tokens.token().await,
            AccountCredentials::Stored { .. } => match self.oauth()? {
                Some(credentials) => credentials.token().await,
                None => Err("no credentials".into()),
            },
        }
    }

    async fn refresh(&self, rejected: &str) -> Result<(), String> {
        if let AccountCredentials::Shared(tokens) = &self.credentials {
            return tokens.refresh(rejected).await;
        }
        match self.oauth()? {
            Some(credentials) => credentials.refresh(rejected).await,
            None => Ok(()),
        }
    }

    async fn settle(&self) {
        if let AccountCredentials::Shared(tokens) = &self.credentials {
            return tokens.settle().await;
        }
        if let Ok(Some(credentials)) = self.oauth() {
            credentials.settle().await;
        }
    }
}
