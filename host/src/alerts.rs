//! Alerts: a webhook (HTTP POST of a JSON document) and/or a command, fired
//! when a run ends with failures, when the account needs a new login, or
//! when delivery has been stalled longer than a threshold. An alert that
//! cannot be delivered is logged; it never stops a run.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

/// What happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum AlertKind {
    /// A run ended with records not delivered (rejected, or stopped).
    RunFailed,
    /// The API refused the credentials and they cannot be refreshed.
    LoginRequired,
    /// Updates are queued but none has reached a verdict for a while.
    Stalled,
}

/// The JSON document an alert carries.
#[derive(Clone, Debug, Serialize)]
pub struct Alert {
    pub event: AlertKind,
    pub message: String,
    pub run: i64,
    pub destination: String,
    /// Milliseconds since the epoch.
    pub at_ms: u64,
    /// The run's summary so far.
    pub summary: Value,
}

/// Where alerts go. The default sends none.
#[derive(Clone, Debug, Default)]
pub struct AlertSettings {
    /// URL receiving `POST` with the alert as `application/json`.
    pub webhook: Option<String>,
    /// Shell command run with the alert as JSON on standard input and
    /// `OUTREACH_ALERT` set to the event name.
    pub command: Option<String>,
    /// Delivery stalled this long raises a `stalled` alert.
    pub stall_after: Option<Duration>,
}

#[derive(Debug, thiserror::Error)]
pub enum AlertError {
    #[error("alert webhook URL {url:?} is not an http(s) URL")]
    BadWebhook { url: String },
    #[error("cannot build the alert client: {0}")]
    Client(reqwest::Error),
}

pub struct Alerts {
    settings: AlertSettings,
    client: Option<reqwest::Client>,
}

impl Alerts {
    pub fn new(settings: AlertSettings) -> Result<Self, AlertError> {
        let client = match &settings.webhook {
            None => None,
            Some(url) => {
                let parsed = reqwest::Url::parse(url)
                    .map_err(|_| AlertError::BadWebhook { url: url.clone() })?;
                if !matches!(parsed.scheme(), "http" | "https") {
                    return Err(AlertError::BadWebhook { url: url.clone() });
                }
                Some(
                    reqwest::Client::builder()
                        .timeout(Duration::from_secs(10))
                        .build()
                        .map_err(AlertError::Client)?,
                )
            }
        };
        Ok(Self { settings, client })
    }

    pub fn none() -> Self {
        Self {
            settings: AlertSettings::default(),
            client: None,
        }
    }

    pub fn stall_after(&self) -> Option<Duration> {
        self.settings.stall_after
    }

    pub fn is_empty(&self) -> bool {
        self.settings.webhook.is_none() && self.settings.command.is_none()
    }

    /// Sends `alert` everywhere configured. A webhook gets three tries.
    pub async fn fire(&self, alert: &Alert) {
        if self.is_empty() {
            return;
        }
        tracing::warn!(event = ?alert.event, "alert: {}", alert.message);
        if let (Some(url), Some(client)) = (&self.settings.webhook, &self.client) {
            let mut delivered = false;
            for attempt in 1..=3u32 {
                let body = serde_json::to_vec(alert).unwrap_or_default();
                let request = client
                    .post(url)
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(body);
                match request.send().await {
                    Ok(r) if r.status().is_success() => {
                        delivered = true;
                        break;
                    }
                    Ok(r) => tracing::warn!(
                        "alert webhook answered {} (attempt {attempt} of 3)",
                        r.status()
                    ),
                    Err(e) => tracing::warn!("alert webhook failed (attempt {attempt} of 3): {e}"),
                }
                tokio::time::sleep(Duration::from_millis(500 * u64::from(attempt))).await;
            }
            if !delivered {
                tracing::error!(
                    "the {:?} alert could not be posted to the webhook",
                    alert.event
                );
            }
        }
        if let Some(command) = &self.settings.command {
            let command = command.clone();
            let alert = alert.clone();
            let outcome = tokio::task::spawn_blocking(move || run_command(&command, &alert)).await;
            match outcome {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::error!("the alert command failed: {e}"),
                Err(e) => tracing::error!("the alert command could not run: {e}"),
            }
        }
    }
}

fn run_command(command: &str, alert: &Alert) -> std::io::Result<()> {
    let event = serde_json::to_value(alert.event)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(command)
        .env("OUTREACH_ALERT", event)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()?;
    if let Some(mut stdin) = child.stdin.take() {
        let body = serde_json::to_vec(alert).unwrap_or_default();
        // A command that does not read its input is fine.
        let _ = stdin.write_all(&body);
    }
    let status = child.wait()?;
    if status.success() {
        Ok(())
    } else {
        Err(std::io::Error::other(format!("it exited with {status}")))
    }
}
