//! The service scaled out over NATS JetStream: any number of workers
//! (`outreach-host serve --nats URL`) share the destinations of one
//! destinations file, with JetStream in place of the SQLite journal.
//!
//! - **Intake** ([`worker::Worker::accept`]): any worker's HTTP intake
//!   publishes accepted records to the replicated intake stream and
//!   answers once JetStream acknowledged them; producers may publish there
//!   directly ([`layout`] has the subjects).
//! - **Ownership** ([`leases`]): records are partitioned by account; a
//!   worker delivers a partition only while it holds the partition's lease
//!   in a key-value bucket, so an account's limiter and token refresher
//!   live in one place at a time.
//! - **Delivery** ([`partition`]): the owner reads its partition (`feed`),
//!   plans, holds updates in memory ([`pending`]; `lane` is the workers'
//!   view), delivers them with the single-machine workers, and
//!   acknowledges intake messages as records get verdicts ([`ledger`]).
//! - **State across workers**: tokens ([`tokens`]), run counts ([`runs`]),
//!   dead letters ([`letters`]).

mod acknowledge;
mod feed;
mod lane;
pub mod layout;
pub mod leases;
pub mod ledger;
pub mod letters;
pub mod partition;
pub mod pending;
pub mod receipts;
pub mod runs;
pub mod tokens;
pub mod view;
pub mod worker;

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use destination_types::{Budget, RateLimitPolicy};

use crate::account::{Account, TokenSource};
use crate::clock::Clock;
use crate::delivery::{StaticToken, retry};
use crate::guest::Guest;
use crate::http::ApiClient;
use crate::limiter::Limiter;
use crate::oauth::OAuthClient;
pub use lane::Letter;
pub use layout::{Buckets, ClusterSettings, Shape};
pub use worker::{ClusterIntake, Worker};

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cannot set up the cluster: {0}")]
    Setup(String),
    #[error("{0}")]
    Mismatch(String),
    #[error("NATS: {0}")]
    Nats(String),
    #[error("the component failed: {0}")]
    Component(String),
    #[error("account {account:?}: {reason}")]
    Account { account: String, reason: String },
}

/// A destination as a worker serves it.
pub struct ClusterDestination {
    pub name: String,
    pub account: String,
    pub partition: u16,
    pub guest: Arc<Guest>,
    pub api: ApiClient,
    /// Requests in flight at once.
    pub concurrency: usize,
    pub policy: retry::Policy,
    /// The account's budget as the component declares it (with the
    /// file's overrides).
    pub rate_limit: RateLimitPolicy,
    /// How the account's tokens are refreshed (`None`: a fixed token).
    pub oauth: Option<OAuthClient>,
}

/// What a worker's partitions share.
pub struct Context {
    pub js: jetstream::Context,
    pub buckets: Buckets,
    pub settings: ClusterSettings,
    pub members: Vec<Arc<ClusterDestination>>,
    /// One access token for every account (`OUTREACH_ACCESS_TOKEN`).
    pub fixed_token: Option<String>,
    pub clock: Clock,
    /// Pause before a destination's workers start again after they stopped.
    pub restart_after: Duration,
    /// How long a dataflow run collects records.
    pub run_length: Duration,
    pub max_record_bytes: usize,
    /// Time for the updates on the wire when a partition is handed over.
    pub grace: Duration,
}

/// How many times setting up is tried, a second apart.
const SETUP_TRIES: u32 = 30;

/// The servers of a comma-separated URL list (a client fails over
/// between them).
pub fn server_urls(url: &str) -> Vec<String> {
    url.split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(str::to_owned)
        .collect()
}

/// The environment variables naming the NATS user a worker or an operator
/// connects as (a password in the environment, not in `--nats`, so that it
/// shows in no process list).
pub const NATS_USER_ENV: &str = "OUTREACH_NATS_USER";
pub const NATS_PASSWORD_ENV: &str = "OUTREACH_NATS_PASSWORD";

/// Connection options for `name`, with the user and password the
/// environment gives (if any).
pub fn connect_options(name: &str) -> async_nats::ConnectOptions {
    let options = async_nats::ConnectOptions::new().name(name);
    match (
        std::env::var(NATS_USER_ENV).ok().filter(|u| !u.is_empty()),
        std::env::var(NATS_PASSWORD_ENV).ok(),
    ) {
        (Some(user), Some(password)) => options.user_and_password(user, password),
        _ => options,
    }
}

/// Connects to the servers and creates the streams and buckets missing.
pub async fn connect(
    settings: &ClusterSettings,
) -> Result<(jetstream::Context, Buckets), ClusterError> {
    let client = connect_options(&format!("outreach-host {}", settings.worker))
        .retry_on_initial_connect()
        .connect(server_urls(&settings.url).as_slice())
        .await
        .map_err(|e| ClusterError::Nats(format!("cannot connect to {}: {e}", settings.url)))?;
    let js = jetstream::new(client);
    // Servers that just started may still be electing their leaders.
    let mut tries = 0;
    loop {
        match layout::ensure(&js, settings).await {
            Ok(buckets) => return Ok((js, buckets)),
            Err(e @ ClusterError::Mismatch(_)) => return Err(e),
            Err(e) if tries < SETUP_TRIES => {
                tries += 1;
                tracing::warn!("the cluster is not ready ({e}); trying again");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

impl Context {
    /// A fresh account for a new owner: a limiter that sends one request
    /// until the API reported the budget (unless the last owner handed it
    /// over), and the cluster's tokens.
    pub async fn account(&self, name: &str) -> Result<Account, ClusterError> {
        let failed = |reason: String| ClusterError::Account {
            account: name.to_owned(),
            reason,
        };
        let member = self
            .members
            .iter()
            .find(|m| m.account == name)
            .ok_or_else(|| failed("no destination uses it".into()))?;
        let limiter = Limiter::with_clock(&member.rate_limit, self.clock)
            .map_err(|e| failed(e.to_string()))?;
        if let Ok(Some(bytes)) = self.buckets.budgets.get(layout::account_key(name)).await
            && let Ok(handed) = serde_json::from_slice::<partition::HandedBudget>(&bytes)
        {
            // The windows' history goes on with the new owner.
            limiter.remember_windows(&handed.windows);
            if handed.reset_ms > self.clock.now_ms() {
                limiter.observe(&Budget {
                    limit: None,
                    remaining: Some(handed.remaining),
                    reset_at_ms: Some(handed.reset_ms),
                });
            }
        }
        let tokens = match (&self.fixed_token, &member.oauth) {
            (Some(token), _) => Box::new(StaticToken(token.clone())) as Box<dyn TokenSource>,
            (None, Some(client)) => Box::new(tokens::SharedTokens::new(
                self.buckets.tokens.clone(),
                name,
                client.clone(),
            )),
            (None, None) => return Err(failed("no OAuth client and no fixed token".into())),
        };
        Ok(Account {
            name: name.to_owned(),
            limiter,
            tokens,
        })
    }
}
