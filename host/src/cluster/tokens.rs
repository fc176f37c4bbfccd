//! An account's tokens in the cluster's `outreach_tokens` bucket, used
//! by the one worker that owns the account's partition. Only that owner
//! refreshes: it exchanges the refresh token and stores the rotated one
//! with compare-and-set on the entry's revision before anything uses the
//! new access token, in a task nothing cancels (the old refresh token is
//! dead the moment the token endpoint answers). The entry records when
//! its tokens were minted, so the next owner respects the provider's
//! minimum interval between tokens too.
//!
//! Whoever reads the bucket reads the tokens: protect it (see the README's
//! "Scaling out": NATS accounts and TLS, JetStream encryption at rest).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::kv;

use futures::future::BoxFuture;

use crate::account::{Connection, TokenSink, TokenSource};
use crate::oauth::{OAuthClient, OAuthError, OAuthSettings, REFRESH_MARGIN, TokenSet};

use super::layout::account_key;

#[derive(Clone)]
pub struct SharedTokens {
    inner: Arc<Inner>,
}

struct Inner {
    bucket: kv::Store,
    key: String,
    account: String,
    client: OAuthClient,
    /// The tokens in use and the bucket revision they were read at.
    current: Mutex<Option<(TokenSet, u64)>>,
    /// Held while deciding on a refresh, so concurrent callers share one.
    refreshing: tokio::sync::Mutex<()>,
    /// Held by an exchange in flight until its result is stored.
    exchange: Arc<tokio::sync::Mutex<()>>,
    refreshes: AtomicU64,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// Reads an account's tokens and their revision.
pub async fn read(bucket: &kv::Store, account: &str) -> Result<(TokenSet, u64), OAuthError> {
    let entry = bucket
        .entry(account_key(account))
        .await
        .map_err(|e| OAuthError::Login(format!("cannot read the cluster's tokens: {e}")))?
        .filter(|entry| entry.operation == kv::Operation::Put)
        .ok_or_else(|| {
            OAuthError::Login(format!(
                "no tokens for account {account:?} in the cluster (connect it on the status page, or `outreach-host cluster import-tokens --account {account}`)"
            ))
        })?;
    let tokens: TokenSet = serde_json::from_slice(&entry.value)
        .map_err(|e| OAuthError::Login(format!("the cluster's tokens are unreadable: {e}")))?;
    Ok((tokens, entry.revision))
}

/// Stores tokens for an account (a login or an import), whatever was there.
pub async fn store(bucket: &kv::Store, account: &str, tokens: &TokenSet) -> Result<u64, String> {
    let value = serde_json::to_vec(tokens).map_err(|e| e.to_string())?;
    bucket
        .put(account_key(account), value.into())
        .await
        .map_err(|e| format!("cannot store the tokens in the cluster: {e}"))
}

/// A browser login's tokens, into the bucket.
pub struct BucketSink(pub kv::Store);

impl TokenSink for BucketSink {
    fn put<'a>(
        &'a self,
        account: &'a str,
        tokens: &'a TokenSet,
    ) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move { store(&self.0, account, tokens).await.map(|_| ()) })
    }
}

impl TokenSource for SharedTokens {
    fn token(&self) -> BoxFuture<'_, Result<String, String>> {
        Box::pin(SharedTokens::token(self))
    }

    fn refresh<'a>(&'a self, rejected: &'a str) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(SharedTokens::refresh(self, rejected))
    }

    fn settle(&self) -> BoxFuture<'_, ()> {
        Box::pin(SharedTokens::settle(self))
    }

    fn reload(&self) {
        SharedTokens::reload(self);
    }

    fn connection<'a>(&'a self, account: &'a str, now_secs: u64) -> BoxFuture<'a, Connection> {
        Box::pin(async move {
            match read(&self.inner.bucket, account).await {
                Ok((tokens, _)) => Connection::of(tokens, now_secs),
                Err(e) => Connection::NeedsLogin(e.to_string()),
            }
        })
    }

    fn expires_at(&self) -> Option<u64> {
        SharedTokens::expires_at(self)
    }

    fn refreshes(&self) -> u64 {
        SharedTokens::refreshes(self)
    }

    fn login(&self) -> Option<(OAuthSettings, Box<dyn TokenSink>)> {
        Some((
            self.inner.client.settings().clone(),
            Box::new(BucketSink(self.inner.bucket.clone())),
        ))
    }
}

impl SharedTokens {
    pub fn new(bucket: kv::Store, account: &str, client: OAuthClient) -> Self {
        Self {
            inner: Arc::new(Inner {
                bucket,
                key: account_key(account),
                account: account.to_owned(),
                client,
                current: Mutex::new(None),
                refreshing: tokio::sync::Mutex::new(()),
                exchange: Arc::new(tokio::sync::Mutex::new(())),
                refreshes: AtomicU64::new(0),
            }),
        }
    }

    /// The OAuth client refreshes go through.
    pub fn client(&self) -> &OAuthClient {
        &self.inner.client
    }

    /// The bucket the tokens are in.
    pub fn bucket(&self) -> &kv::Store {
        &self.inner.bucket
    }

    /// Tokens minted by this worker's refreshes.
    pub fn refreshes(&self) -> u64 {
        self.inner.refreshes.load(Ordering::Relaxed)
    }

    /// When the access token in use expires (epoch seconds), if known.
    pub fn expires_at(&self) -> Option<u64> {
        lock(&self.inner.current).as_ref()?.0.expires_at
    }

    /// Forgets the tokens in use: the next request reads the bucket.
    pub fn reload(&self) {
        *lock(&self.inner.current) = None;
    }

    fn now_secs(&self) -> u64 {
        self.inner.client.settings().clock.now_secs()
    }

    fn now_ms(&self) -> u64 {
        self.inner.client.settings().clock.now_ms()
    }

    async fn current(&self) -> Result<TokenSet, OAuthError> {
        if let Some((tokens, _)) = lock(&self.inner.current).clone() {
            return Ok(tokens);
        }
        let read = read(&self.inner.bucket, &self.inner.account).await?;
        let tokens = read.0.clone();
        *lock(&self.inner.current) = Some(read);
        Ok(tokens)
    }

    fn expires_soon(&self, tokens: &TokenSet) -> bool {
        tokens
            .expires_at
            .is_some_and(|at| at <= self.now_secs().saturating_add(REFRESH_MARGIN.as_secs()))
    }

    /// The access token to send now, refreshed first if it expires soon.
    pub async fn token(&self) -> Result<String, String> {
        let tokens = self.current().await.map_err(|e| e.to_string())?;
        if self.expires_soon(&tokens) {
            let expired = tokens.expires_at.is_some_and(|at| at <= self.now_secs());
            self.refresh_from(&tokens.access_token, expired)
                .await
                .map_err(|e| e.to_string())?;
        }
        Ok(self
            .current()
            .await
            .map_err(|e| e.to_string())?
            .access_token)
    }

    /// The API refused `rejected`: a new token, unless one replaced it.
    pub async fn refresh(&self, rejected: &str) -> Result<(), String> {
        self.refresh_from(rejected, true)
            .await
            .map_err(|e| e.to_string())
    }

    /// Waits for an exchange in flight to be stored.
    pub async fn settle(&self) {
        let _ = self.inner.exchange.lock().await;
    }

    async fn refresh_from(&self, seen: &str, forced: bool) -> Result<(), OAuthError> {
        let _one = self.inner.refreshing.lock().await;
        if self.current().await?.access_token != seen {
            return Ok(());
        }
        // A login may have stored new tokens meanwhile.
        let stored = read(&self.inner.bucket, &self.inner.account).await?;
        if stored.0.access_token != seen {
            tracing::info!(account = %self.inner.account, "using the tokens stored in the cluster");
            *lock(&self.inner.current) = Some(stored);
            return Ok(());
        }
        let interval = self.inner.client.settings().min_interval_between_tokens;
        let next_allowed = stored
            .0
            .obtained_at_ms
            .saturating_add(u64::try_from(interval.as_millis()).unwrap_or(u64::MAX));
        let now = self.now_ms();
        if next_allowed > now {
            if !forced {
                return Ok(()); // still valid; refresh later
            }
            tokio::time::sleep(Duration::from_millis(next_allowed - now)).await;
        }
        self.exchange(stored).await
    }

    /// Exchanges the stored refresh token and stores the result with
    /// compare-and-set, in a task that runs to completion even if the
    /// caller is dropped.
    async fn exchange(&self, (stored, revision): (TokenSet, u64)) -> Result<(), OAuthError> {
        let in_flight = self.inner.exchange.clone().lock_owned().await;
        let inner = self.inner.clone();
        let task = tokio::spawn(async move {
            let _in_flight = in_flight;
            let refresh_token = stored
                .refresh_token
                .ok_or_else(|| OAuthError::InvalidGrant("no refresh token is stored".into()))?;
            tracing::info!(account = %inner.account, "refreshing the access token");
            let fresh = inner.client.refresh(&refresh_token).await?;
            match store_rotated(&inner, &refresh_token, &fresh, revision).await {
                Some(new_revision) => {
                    *lock(&inner.current) = Some((fresh, new_revision));
                    inner.refreshes.fetch_add(1, Ordering::Relaxed);
                }
                // Someone stored tokens since we read them (a login):
                // theirs are newer than ours; use them.
                None => *lock(&inner.current) = None,
            }
            Ok(())
        });
        task.await
            .map_err(|e| OAuthError::Login(format!("the token refresh task failed: {e}")))?
    }
}

/// Stores rotated tokens over the entry at `revision`: retried while the
/// servers do not answer (the refresh token in `fresh` is the only one
/// left); `None` when someone else's tokens (a login) replaced the ones
/// that were exchanged.
async fn store_rotated(
    inner: &Inner,
    presented: &str,
    fresh: &TokenSet,
    mut revision: u64,
) -> Option<u64> {
    use async_nats::jetstream::kv::UpdateErrorKind;
    let value: bytes::Bytes = serde_json::to_vec(fresh).unwrap_or_default().into();
    let mut wait = Duration::from_millis(100);
    loop {
        match inner
            .bucket
            .update(&inner.key, value.clone(), revision)
            .await
        {
            Ok(new_revision) => return Some(new_revision),
            Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => {
                match read(&inner.bucket, &inner.account).await {
                    // An earlier try was stored without its answer.
                    Ok((stored, at)) if stored.access_token == fresh.access_token => {
                        return Some(at);
                    }
                    // Still the exchanged tokens, at another revision than
                    // was read: store over them.
                    Ok((stored, at)) if stored.refresh_token.as_deref() == Some(presented) => {
                        revision = at;
                        continue;
                    }
                    Ok(_) => {
                        tracing::warn!(
                            account = %inner.account,
                            "new tokens were stored during a refresh (a login); using those"
                        );
                        return None;
                    }
                    Err(e) => tracing::warn!(account = %inner.account, "{e}"),
                }
            }
            Err(e) => {
                tracing::warn!(
                    account = %inner.account,
                    "cannot store the rotated tokens yet ({e}); trying again in {wait:?}"
                );
            }
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_secs(5));
    }
}
