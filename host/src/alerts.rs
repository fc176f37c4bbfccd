//! Alerts: a webhook (HTTP POST of a JSON document) and/or a command, fired
//! when a run ends with failures, when the account needs a new login, or
//! when delivery has been stalled longer than a threshold. An alert that
//! cannot be delivered is logged; it never stops a run.
//!
//! Both are bounded: each alert gets [`AlertSettings::timeout`] for the
//! webhook (all its tries) and as much for the command, whose whole process
//! group is killed when it is up. The command starts with a cleared
//! environment plus a safe set ([`command_environment`]): the host's own
//! environment holds secrets (`OUTREACH_ACCESS_TOKEN`,
//! `OUTREACH_CLIENT_SECRET`). A webhook URL is a credential too (Slack and
//! Teams put the key in the path): logs and errors name its host only.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncWriteExt;

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
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AlertSettings {
    /// URL receiving `POST` with the alert as `application/json`.
    pub webhook: Option<String>,
    /// Shell command run with the alert as JSON on standard input and
    /// `OUTREACH_ALERT` set to the event name.
    pub command: Option<String>,
    /// Delivery stalled this long raises a `stalled` alert.
    pub stall_after: Option<Duration>,
    /// The longest an alert may take to post (all tries), and its command
    /// to run.
    pub timeout: Duration,
}

/// The default of [`AlertSettings::timeout`].
pub const DEFAULT_ALERT_TIMEOUT: Duration = Duration::from_secs(30);

impl Default for AlertSettings {
    fn default() -> Self {
        Self {
            webhook: None,
            command: None,
            stall_after: None,
            timeout: DEFAULT_ALERT_TIMEOUT,
        }
    }
}

/// Variables an alert command gets from the host's environment; also every
/// `OUTREACH_ALERT_*` (settings meant for the command). Nothing else: the
/// host's environment may hold credentials.
const COMMAND_ENVIRONMENT: &[&str] = &[
    "PATH",
    "HOME",
    "LANG",
    "LC_ALL",
    "LC_CTYPE",
    "LC_MESSAGES",
    "TZ",
    "TMPDIR",
    "USER",
    "LOGNAME",
];

/// The environment an alert command starts with (besides `OUTREACH_ALERT`).
pub fn command_environment() -> Vec<(String, String)> {
    std::env::vars()
        .filter(|(name, _)| {
            COMMAND_ENVIRONMENT.contains(&name.as_str()) || name.starts_with("OUTREACH_ALERT_")
        })
        .collect()
}

#[derive(Debug, thiserror::Error)]
pub enum AlertError {
    /// The URL itself is not shown: it may carry a key.
    #[error("the alert webhook URL is not an absolute http(s) URL")]
    BadWebhook,
    #[error("cannot build the alert client: {0}")]
    Client(reqwest::Error),
}

pub struct Alerts {
    settings: AlertSettings,
    client: Option<reqwest::Client>,
    /// The webhook's host, for logs.
    webhook_host: String,
}

impl Alerts {
    pub fn new(settings: AlertSettings) -> Result<Self, AlertError> {
        let mut webhook_host = String::new();
        let client = match &settings.webhook {
            None => None,
            Some(url) => {
                let parsed = reqwest::Url::parse(url).map_err(|_| AlertError::BadWebhook)?;
                if !matches!(parsed.scheme(), "http" | "https") || parsed.host().is_none() {
                    return Err(AlertError::BadWebhook);
                }
                webhook_host = parsed.host_str().unwrap_or_default().to_owned();
                Some(
                    reqwest::Client::builder()
                        .timeout(settings.timeout)
                        // A redirect would take the alert (and the URL's key)
                        // somewhere else.
                        .redirect(reqwest::redirect::Policy::none())
                        .build()
                        .map_err(AlertError::Client)?,
                )
            }
        };
        Ok(Self {
            settings,
            client,
            webhook_host,
        })
    }

    pub fn none() -> Self {
        Self {
            settings: AlertSettings::default(),
            client: None,
            webhook_host: String::new(),
        }
    }

    pub fn stall_after(&self) -> Option<Duration> {
        self.settings.stall_after
    }

    pub fn is_empty(&self) -> bool {
        self.settings.webhook.is_none() && self.settings.command.is_none()
    }

    /// Sends `alert` everywhere configured, each within the timeout. A
    /// webhook gets up to three tries.
    pub async fn fire(&self, alert: &Alert) {
        if self.is_empty() {
            return;
        }
        tracing::warn!(event = ?alert.event, "alert: {}", alert.message);
        let timeout = self.settings.timeout;
        if let (Some(url), Some(client)) = (&self.settings.webhook, &self.client) {
            let host = &self.webhook_host;
            match tokio::time::timeout(timeout, post(client, url, host, alert)).await {
                Ok(true) => {}
                Ok(false) => tracing::error!(
                    "the {:?} alert could not be posted to the webhook at {host}",
                    alert.event
                ),
                Err(_) => tracing::error!(
                    "the {:?} alert was not posted to the webhook at {host} within {timeout:?}",
                    alert.event
                ),
            }
        }
        if let Some(command) = &self.settings.command
            && let Err(e) = run_command(command, alert, timeout).await
        {
            tracing::error!("the alert command failed: {e}");
        }
    }
}

/// Posts `alert` to `url`; `true` once it was taken. Errors name `host`,
/// never the URL.
async fn post(client: &reqwest::Client, url: &str, host: &str, alert: &Alert) -> bool {
    let body = serde_json::to_vec(alert).unwrap_or_default();
    for attempt in 1..=3u32 {
        let request = client
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.clone());
        match request.send().await {
            Ok(r) if r.status().is_success() => return true,
            Ok(r) => tracing::warn!(
                "alert webhook at {host} answered {} (attempt {attempt} of 3)",
                r.status()
            ),
            Err(e) => tracing::warn!(
                "alert webhook at {host} failed (attempt {attempt} of 3): {}",
                e.without_url()
            ),
        }
        if attempt < 3 {
            tokio::time::sleep(Duration::from_millis(500 * u64::from(attempt))).await;
        }
    }
    false
}

/// Kills a process group when dropped, unless disarmed: a command that
/// timed out, or whose alert was abandoned (a signal), goes with all its
/// children.
struct ProcessGroup(Option<u32>);

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        #[cfg(unix)]
        if let Some(pid) = self.0.and_then(|p| i32::try_from(p).ok()) {
            // SAFETY: kill(2) with a negative pid signals the group the
            // command leads (it was started as a group of its own).
            unsafe {
                libc::kill(-pid, libc::SIGKILL);
            }
        }
    }
}

async fn run_command(command: &str, alert: &Alert, timeout: Duration) -> Result<(), String> {
    let event = serde_json::to_value(alert.event)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    let mut builder = tokio::process::Command::new("sh");
    builder
        .arg("-c")
        .arg(command)
        .env_clear()
        .envs(command_environment())
        .env("OUTREACH_ALERT", event)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .kill_on_drop(true);
    #[cfg(unix)]
    builder.process_group(0);
    let mut child = builder
        .spawn()
        .map_err(|e| format!("cannot start it: {e}"))?;
    let mut group = ProcessGroup(child.id());
    let body = serde_json::to_vec(alert).unwrap_or_default();
    let mut stdin = child.stdin.take();
    let finished = tokio::time::timeout(timeout, async {
        if let Some(stdin) = &mut stdin {
            // A command that does not read its input is fine.
            let _ = stdin.write_all(&body).await;
        }
        drop(stdin);
        child.wait().await
    })
    .await;
    match finished {
        Ok(Ok(status)) => {
            group.0 = None;
            if status.success() {
                Ok(())
            } else {
                Err(format!("it exited with {status}"))
            }
        }
        Ok(Err(e)) => Err(format!("cannot wait for it: {e}")),
        Err(_) => Err(format!("it ran longer than {timeout:?} and was killed")),
    }
}
