//! Credentials backed by the token store: refreshed shortly before expiry
//! and once after a 401, one refresh at a time per account — in this
//! process and across processes sharing the store — at most one new token
//! per mint interval, and never losing a rotated refresh token.
//!
//! The token endpoint retires the old refresh token the moment it answers,
//! so the exchange and the store of its result run in a task of their own
//! that nothing cancels: a run that stops (a signal, a fatal answer on
//! another worker) while a refresh is on the wire still finds the new
//! refresh token on disk. Waiting for the mint interval happens before
//! that, and is cancellable.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::time::Instant;

use super::store::{LockedStore, StoreError};
use super::{OAuthClient, OAuthError, REFRESH_MARGIN, TokenSet, TokenStore};
use crate::clock::Clock;
use crate::delivery::Credentials;

#[derive(Clone)]
pub struct OAuthCredentials {
    inner: Arc<Inner>,
}

struct Inner {
    client: OAuthClient,
    store: TokenStore,
    account: String,
    current: Mutex<TokenSet>,
    /// Held while deciding on and waiting for a refresh, so concurrent
    /// callers share one; holds when the newest token was minted.
    refreshing: tokio::sync::Mutex<Option<Instant>>,
    /// Held by an exchange in flight until its result is stored.
    exchange: Arc<tokio::sync::Mutex<()>>,
    refreshes: AtomicU64,
}

/// What an exchange ended with; either way the new tokens are in use.
enum Exchange {
    /// New tokens were minted and stored.
    Refreshed,
    /// Another process had refreshed already (its tokens were minted at
    /// this epoch ms): its tokens are the ones.
    Adopted(u64),
}

impl Inner {
    fn clock(&self) -> &Clock {
        &self.client.settings.clock
    }

    /// When tokens obtained at `obtained_at_ms` were minted, on the
    /// monotonic clock (`None`: longer ago than it reaches).
    fn minted_at(&self, obtained_at_ms: u64) -> Option<Instant> {
        self.clock().instant_of_past(obtained_at_ms)
    }

    fn replace(&self, tokens: TokenSet) {
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = tokens;
    }
}

fn task_failed(e: tokio::task::JoinError) -> OAuthError {
    OAuthError::Login(format!("the token refresh task failed: {e}"))
}

impl OAuthCredentials {
    pub fn load(client: OAuthClient, store: TokenStore, account: &str) -> Result<Self, OAuthError> {
        let current = store.get(account)?;
        // The stored tokens were minted by an earlier process (a login, an
        // earlier run): that mint counts against the interval too.
        let last_mint = client
            .settings
            .clock
            .instant_of_past(current.obtained_at_ms);
        Ok(Self {
            inner: Arc::new(Inner {
                client,
                store,
                account: account.to_owned(),
                current: Mutex::new(current),
                refreshing: tokio::sync::Mutex::new(last_mint),
                exchange: Arc::new(tokio::sync::Mutex::new(())),
                refreshes: AtomicU64::new(0),
            }),
        })
    }

    /// When the access token in use expires (epoch seconds), if known.
    pub fn expires_at(&self) -> Option<u64> {
        self.current().expires_at
    }

    /// Tokens minted by refresh during this process.
    pub fn refreshes(&self) -> u64 {
        self.inner.refreshes.load(Ordering::Relaxed)
    }

    fn current(&self) -> TokenSet {
        self.inner
            .current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn replace(&self, tokens: TokenSet) {
        self.inner.replace(tokens);
    }

    fn now_secs(&self) -> u64 {
        self.inner.clock().now_secs()
    }

    fn expires_soon(&self, tokens: &TokenSet) -> bool {
        tokens
            .expires_at
            .is_some_and(|at| at <= self.now_secs().saturating_add(REFRESH_MARGIN.as_secs()))
    }

    /// The account's tokens as stored now (another process may have
    /// refreshed them).
    async fn stored(&self) -> Result<TokenSet, OAuthError> {
        let (store, account) = (self.inner.store.clone(), self.inner.account.clone());
        Ok(tokio::task::spawn_blocking(move || store.get(&account))
            .await
            .map_err(task_failed)??)
    }

    /// Refreshes unless the token was already replaced since `seen` was
    /// read, here or by another process. `forced`: the API refused `seen`
    /// (a 401), so waiting for the mint interval is better than giving up.
    async fn refresh_from(&self, seen: &str, forced: bool) -> Result<(), OAuthError> {
        let mut last_mint = self.inner.refreshing.lock().await;
        if self.current().access_token != seen {
            return Ok(()); // another request refreshed meanwhile
        }
        let stored = self.stored().await?;
        if stored.access_token != seen {
            tracing::info!(account = %self.inner.account, "using the tokens another process refreshed");
            *last_mint = self.inner.minted_at(stored.obtained_at_ms).max(*last_mint);
            self.replace(stored);
            return Ok(());
        }
        let interval = self.inner.client.settings.min_interval_between_tokens;
        for attempt in 1..=2 {
            if let Some(last) = *last_mint {
                let next_allowed = last + interval;
                if next_allowed > Instant::now() {
                    if !forced {
                        return Ok(()); // still valid; refresh later
                    }
                    // Nothing is sent yet: a stop may cancel this wait.
                    tokio::time::sleep_until(next_allowed).await;
                }
            }
            match self.exchange(seen).await {
                Ok(Exchange::Refreshed) => {
                    *last_mint = Some(Instant::now());
                    return Ok(());
                }
                Ok(Exchange::Adopted(obtained_at_ms)) => {
                    *last_mint = self.inner.minted_at(obtained_at_ms).max(*last_mint);
                    return Ok(());
                }
                // Another client of this app minted a token for the user (a
                // login, another host): nothing was issued. The current
                // token still works unless forced; else wait out the
                // interval once.
                Err(OAuthError::Throttled(why)) if forced && attempt == 1 => {
                    tracing::warn!("token endpoint throttled ({why}); retrying in {interval:?}");
                    *last_mint = Some(Instant::now());
                }
                Err(OAuthError::Throttled(_)) if !forced => {
                    *last_mint = Some(Instant::now());
                    return Ok(());
                }
                Err(e) => return Err(e),
            }
        }
        Err(OAuthError::Throttled(
            "the token endpoint refused a new token twice".into(),
        ))
    }

    /// Exchanges the stored refresh token, stores the result and puts it in
    /// use, holding the store's lock throughout, in a task that runs to
    /// completion even if the caller is dropped.
    async fn exchange(&self, seen: &str) -> Result<Exchange, OAuthError> {
        let in_flight = self.inner.exchange.clone().lock_owned().await;
        let inner = self.inner.clone();
        let seen = seen.to_owned();
        let task = tokio::spawn(async move {
            let _in_flight = in_flight;
            let store = inner.store.clone();
            let locked = tokio::task::spawn_blocking(move || store.lock())
                .await
                .map_err(task_failed)??;
            let account = inner.account.clone();
            let (locked, stored) = tokio::task::spawn_blocking(move || {
                let stored = locked.get(&account);
                (locked, stored)
            })
            .await
            .map_err(task_failed)?;
            let stored = stored?;
            if stored.access_token != seen {
                let minted = stored.obtained_at_ms;
                inner.replace(stored);
                return Ok(Exchange::Adopted(minted));
            }
            let refresh_token = stored
                .refresh_token
                .ok_or_else(|| OAuthError::InvalidGrant("no refresh token is stored".into()))?;
            tracing::info!(account = %inner.account, "refreshing the access token");
            let fresh = inner.client.refresh(&refresh_token).await?;
            // On disk before anyone uses it: the old refresh token is dead.
            let account = inner.account.clone();
            let saved = fresh.clone();
            tokio::task::spawn_blocking(move || -> Result<(), StoreError> {
                let locked: LockedStore = locked;
                locked.put(&account, &saved)
            })
            .await
            .map_err(task_failed)??;
            // In use even if the caller is gone: later callers see it.
            inner.replace(fresh);
            inner.refreshes.fetch_add(1, Ordering::Relaxed);
            Ok(Exchange::Refreshed)
        });
        task.await.map_err(task_failed)?
    }
}

impl Credentials for OAuthCredentials {
    async fn token(&self) -> Result<String, String> {
        let tokens = self.current();
        if self.expires_soon(&tokens) {
            let expired = tokens.expires_at.is_some_and(|at| at <= self.now_secs());
            self.refresh_from(&tokens.access_token, expired)
                .await
                .map_err(|e| e.to_string())?;
        }
        Ok(self.current().access_token)
    }

    async fn refresh(&self, rejected: &str) -> Result<(), String> {
        self.refresh_from(rejected, true)
            .await
            .map_err(|e| e.to_string())
    }

    async fn settle(&self) {
        let _ = self.inner.exchange.lock().await;
    }
}
