//! `run`, `resume` and `dead-letters replay`: delivery through the journal
//! with the account's credentials (or a fixed token).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use outreach_host::alerts::{AlertSettings, Alerts};
use outreach_host::delivery::{self, Credentials, DeliveryOptions, Input, StaticToken, Summary};
use outreach_host::engine::{Configured, Runtime};
use outreach_host::http::ApiClient;
use outreach_host::journal::Journal;
use outreach_host::limiter::Limiter;
use outreach_host::oauth::{OAuthCredentials, TokenStore};

use super::args::{DeliveryArgs, SendArgs};
use super::login::oauth_client;
use super::render::print_summary;
use super::{EXIT_FATAL, EXIT_INVALID_CONFIG, EXIT_PARTIAL, TOKEN_ENV, configure, tokio_runtime};

/// Delivers `input` (and whatever the journal holds) with the account's
/// credentials, or a fixed token from the environment.
pub(crate) fn send_updates(
    runtime: &Runtime,
    store: TokenStore,
    send: SendArgs,
    journal: Arc<Journal>,
    input: Input,
    kind: &str,
) -> Result<u8> {
    let api_base = match &send.api_base {
        Some(base) => base.clone(),
        None => runtime.describe().default_api_base.clone(),
    };
    let Some(destination) = configure(runtime, &send.config)? else {
        return Ok(EXIT_INVALID_CONFIG);
    };
    let account = send
        .account
        .clone()
        .or_else(|| destination.identity().account.clone())
        .unwrap_or_else(|| "default".into());
    let tokio = tokio_runtime()?;
    let job = Job {
        runtime,
        destination,
        api_base: &api_base,
        args: &send.delivery,
        journal,
        kind,
    };
    if let Some(token) = std::env::var(TOKEN_ENV)
        .ok()
        .filter(|t| !t.trim().is_empty())
    {
        return tokio.block_on(deliver(job, input, &StaticToken(token)));
    }
    let client = oauth_client(runtime, &send.oauth, None, false)?;
    let credentials = OAuthCredentials::load(client, store, &account)?;
    tokio.block_on(deliver(job, input, &credentials))
}

pub(crate) fn delivery_options(
    args: &DeliveryArgs,
    journal: Arc<Journal>,
    kind: &str,
    destination: String,
) -> Result<DeliveryOptions> {
    let alerting = args.alert_webhook.is_some() || args.alert_command.is_some();
    let alerts = Alerts::new(AlertSettings {
        webhook: args.alert_webhook.clone(),
        command: args.alert_command.clone(),
        stall_after: alerting.then(|| Duration::from_secs(args.stall_alert_secs)),
        timeout: Duration::from_secs(args.alert_timeout_secs),
    })?;
    Ok(DeliveryOptions {
        concurrency: args.concurrency as usize,
        max_attempts: args.max_attempts,
        journal: Some(journal),
        dead_letters: args.dead_letters.clone(),
        progress: !args.json,
        kind: kind.into(),
        destination,
        alerts: Arc::new(alerts),
        stop_on_signals: true,
        ..DeliveryOptions::default()
    })
}

/// What a delivery needs besides its input and credentials.
pub(crate) struct Job<'a> {
    pub(crate) runtime: &'a Runtime,
    pub(crate) destination: Configured,
    pub(crate) api_base: &'a str,
    pub(crate) args: &'a DeliveryArgs,
    pub(crate) journal: Arc<Journal>,
    pub(crate) kind: &'a str,
}

pub(crate) async fn deliver<C: Credentials>(
    job: Job<'_>,
    input: Input,
    credentials: &C,
) -> Result<u8> {
    let destination = job.destination;
    let mut policy = job.runtime.describe().rate_limit.clone();
    if let Some(requests) = job.args.rate_limit {
        policy.requests = requests;
    }
    if let Some(seconds) = job.args.rate_window_secs {
        policy.window_seconds = seconds;
    }
    let limiter = Limiter::new(&policy)?;
    let api = ApiClient::new(job.api_base, Duration::from_secs(job.args.timeout_secs))?;
    let name = destination.identity().name.clone();
    let options = delivery_options(job.args, job.journal, job.kind, name)?;
    let summary = delivery::run(destination, &api, &limiter, credentials, input, &options).await?;
    print_summary(&summary, api.base().as_str(), job.args.json)?;
    Ok(exit_code(&summary))
}

pub(crate) fn exit_code(summary: &Summary) -> u8 {
    if summary.fatal.is_some() {
        EXIT_FATAL
    } else if summary.has_failures() {
        EXIT_PARTIAL
    } else {
        0
    }
}
