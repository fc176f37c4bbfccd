//! The destinations file (TOML): the service's settings, its accounts and
//! its destinations. Reading it reports every problem at once, each naming
//! the destination and the setting, so one edit fixes them all.

pub mod edit;

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::keys::KeyHash;
use crate::alerts::{AlertSettings, Alerts};
use crate::input::DEFAULT_MAX_RECORD_BYTES;

/// The largest request body accepted unless configured otherwise.
pub const DEFAULT_MAX_BODY_BYTES: u64 = 16 << 20;
/// Queued updates per destination beyond which intake answers 429.
pub const DEFAULT_MAX_QUEUED_UPDATES: u64 = 1_000_000;
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8088";
/// How long delivery may stall before a `stalled` alert, unless set.
pub const DEFAULT_STALL_ALERT: Duration = Duration::from_secs(900);
/// Open connections beyond which a new one is closed at once: well under
/// the unit's file limit, so the journals and the service's own requests
/// always find descriptors.
pub const DEFAULT_MAX_CONNECTIONS: usize = 512;

/// The file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileText {
    listen: Option<String>,
    state_dir: Option<PathBuf>,
    max_body_bytes: Option<u64>,
    max_record_bytes: Option<usize>,
    #[serde(default)]
    ingest_keys: Vec<String>,
    #[serde(default)]
    metrics_keys: Vec<String>,
    drain_timeout_secs: Option<u64>,
    max_connections: Option<usize>,
    header_timeout_secs: Option<u64>,
    body_timeout_secs: Option<u64>,
    login_retry_secs: Option<u64>,
    alert_webhook: Option<String>,
    alert_command: Option<String>,
    stall_alert_secs: Option<u64>,
    alert_timeout_secs: Option<u64>,
    admin: Option<AdminText>,
    cluster: Option<ClusterText>,
    #[serde(default)]
    accounts: BTreeMap<String, AccountText>,
    #[serde(default)]
    destinations: Vec<DestinationText>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AdminText {
    user: Option<String>,
    password_hash: Option<String>,
    session_hours: Option<u64>,
    secure_cookies: Option<bool>,
    public_url: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClusterText {
    partitions: Option<u16>,
    lease_secs: Option<u64>,
    replicas: Option<usize>,
    duplicate_window_secs: Option<u64>,
    window_records: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AccountText {
    rate_limit: Option<u32>,
    rate_window_secs: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DestinationText {
    name: Option<String>,
    config: Option<ConfigText>,
    account: Option<String>,
    api_base: Option<String>,
    component: Option<PathBuf>,
    #[serde(default = "yes")]
    enabled: bool,
    #[serde(default)]
    ingest_keys: Vec<String>,
    max_queued_updates: Option<u64>,
    concurrency: Option<usize>,
    alert_webhook: Option<String>,
    alert_command: Option<String>,
    stall_alert_secs: Option<u64>,
}

fn yes() -> bool {
    true
}

/// A destination's configuration: a path to a JSON file, or inline.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum ConfigText {
    Path(PathBuf),
    Inline(toml::Table),
}

/// The service's settings.
#[derive(Clone, Debug, PartialEq)]
pub struct ServiceFile {
    pub listen: SocketAddr,
    /// Where each destination's journal lives (`NAME.journal`).
    pub state_dir: PathBuf,
    pub max_body_bytes: u64,
    pub max_record_bytes: usize,
    /// Keys accepted for every destination.
    pub ingest_keys: Vec<KeyHash>,
    /// Keys that may read `/metrics` (besides the global ingest keys; a
    /// destination's own keys may not: the figures cover every destination).
    pub metrics_keys: Vec<KeyHash>,
    /// How long in-flight requests may take to finish on SIGTERM.
    pub drain_timeout: Duration,
    /// Open connections at most, and deadlines for a request's headers and
    /// body (the listener's limits).
    pub max_connections: usize,
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    /// How long a destination whose delivery stopped (a login is needed)
    /// waits before it tries again.
    pub login_retry: Duration,
    /// Where alerts go (the same events as a command-line run's, per
    /// destination).
    pub alerts: AlertSettings,
    /// The operators' status page; `None`: not served.
    pub admin: Option<AdminSettings>,
    /// How workers share the destinations over JetStream (`serve --nats`).
    pub cluster: ClusterFileSettings,
    pub accounts: BTreeMap<String, AccountSettings>,
    pub destinations: Vec<DestinationSpec>,
}

/// Who may sign in to the status page, and how its session cookie is set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdminSettings {
    pub user: String,
    /// A PHC string (`$argon2id$…`), from `outreach-host admin-password`.
    pub password_hash: String,
    pub session: Duration,
    /// Mark the session cookie `Secure` (the page is served over TLS, by
    /// this service's proxy).
    pub secure_cookies: bool,
    /// Where browsers reach the service (the OAuth redirect goes to
    /// `PUBLIC_URL/oauth/callback`); default: `http://LISTEN`.
    pub public_url: Option<String>,
}

/// The file's `[cluster]` section (used with `serve --nats`); every
/// worker of a cluster must have the same `partitions` and `lease_secs`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterFileSettings {
    /// Partitions records are spread over by account (fixed for the
    /// cluster's life: it decides where each account's records go).
    pub partitions: u16,
    pub lease: Duration,
    /// Copies of each stream and bucket.
    pub replicas: usize,
    /// How long JetStream remembers a message id (Idempotency-Key).
    pub duplicate_window: Duration,
    /// Records a partition's owner holds in memory at most.
    pub window_records: usize,
}

impl Default for ClusterFileSettings {
    fn default() -> Self {
        Self {
            partitions: 16,
            lease: Duration::from_secs(10),
            replicas: 3,
            duplicate_window: Duration::from_secs(120),
            window_records: 10_000,
        }
    }
}

fn cluster_settings(text: Option<ClusterText>, problems: &mut Vec<String>) -> ClusterFileSettings {
    let defaults = ClusterFileSettings::default();
    let Some(text) = text else {
        return defaults;
    };
    let partitions = text.partitions.unwrap_or(defaults.partitions);
    if !(1..=999).contains(&partitions) {
        problems.push("cluster: partitions must be 1 to 999".into());
    }
    let lease_secs = text.lease_secs.unwrap_or(defaults.lease.as_secs());
    if !(2..=300).contains(&lease_secs) {
        problems.push("cluster: lease_secs must be 2 to 300".into());
    }
    let replicas = text.replicas.unwrap_or(defaults.replicas);
    if !(1..=5).contains(&replicas) {
        problems.push("cluster: replicas must be 1 to 5".into());
    }
    let window_records = text.window_records.unwrap_or(defaults.window_records);
    if window_records == 0 {
        problems.push("cluster: window_records must be at least 1".into());
    }
    ClusterFileSettings {
        partitions,
        lease: Duration::from_secs(lease_secs),
        replicas,
        duplicate_window: Duration::from_secs(
            text.duplicate_window_secs
                .unwrap_or(defaults.duplicate_window.as_secs())
                .max(1),
        ),
        window_records,
    }
}

/// Budget overrides for one API user (default: the component's
/// declared policy).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AccountSettings {
    pub rate_limit: Option<u32>,
    pub rate_window_secs: Option<u32>,
}

/// One destination.
#[derive(Clone, Debug, PartialEq)]
pub struct DestinationSpec {
    /// Short name, used in URLs and journal file names.
    pub name: String,
    /// The configuration JSON, and where it came from (for messages).
    pub config: String,
    pub config_origin: String,
    /// The API account; `None`: the one the configuration names.
    pub account: Option<String>,
    pub api_base: Option<String>,
    pub component: Option<PathBuf>,
    pub enabled: bool,
    /// Keys accepted for this destination only.
    pub ingest_keys: Vec<KeyHash>,
    pub max_queued_updates: u64,
    pub concurrency: usize,
    /// Where this destination's alerts go instead of the file's.
    pub alerts: AlertOverrides,
}

/// A destination's own alert settings; each one unset takes the file's.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AlertOverrides {
    pub webhook: Option<String>,
    pub command: Option<String>,
    pub stall_after: Option<Duration>,
}

/// Everything wrong with a destinations file.
#[derive(Debug, thiserror::Error)]
#[error("{}", problems.join("\n"))]
pub struct FileProblems {
    pub problems: Vec<String>,
}

/// A TOML error as its position and message, never the line's text: the
/// line may hold a secret (a webhook URL), and the message is logged.
fn toml_problem(text: &str, error: &toml::de::Error) -> String {
    let message = error.message().trim_end().replace('\n', " ");
    match error.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            format!("TOML: line {line}, column {column}: {message}")
        }
        None => format!("TOML: {message}"),
    }
}

impl ServiceFile {
    /// Where `spec`'s alerts go: its own settings over the file's.
    pub fn alerts_of(&self, spec: &DestinationSpec) -> AlertSettings {
        let own = &spec.alerts;
        let webhook = own.webhook.clone().or_else(|| self.alerts.webhook.clone());
        let command = own.command.clone().or_else(|| self.alerts.command.clone());
        let alerting = webhook.is_some() || command.is_some();
        AlertSettings {
            webhook,
            command,
            stall_after: alerting.then(|| {
                own.stall_after
                    .or(self.alerts.stall_after)
                    .unwrap_or(DEFAULT_STALL_ALERT)
            }),
            timeout: self.alerts.timeout,
        }
    }

    /// Where destination `name`'s journal is.
    pub fn journal_of(&self, name: &str) -> PathBuf {
        self.state_dir.join(format!("{name}.journal"))
    }

    /// Reads and checks the file at `path`.
    pub fn load(path: &Path) -> Result<Self, FileProblems> {
        let text = std::fs::read_to_string(path).map_err(|e| FileProblems {
            problems: vec![format!("{}: cannot read: {e}", path.display())],
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::parse(&text, base).map_err(|mut problems| {
            for problem in &mut problems.problems {
                *problem = format!("{}: {problem}", path.display());
            }
            problems
        })
    }

    /// Checks `text`; relative paths are taken from `base`.
    pub fn parse(text: &str, base: &Path) -> Result<Self, FileProblems> {
        let file: FileText = toml::from_str(text).map_err(|e| FileProblems {
            problems: vec![toml_problem(text, &e)],
        })?;
        let mut problems = Vec::new();
        let listen_text = file.listen.as_deref().unwrap_or(DEFAULT_LISTEN);
        let listen = listen_text.parse().unwrap_or_else(|e| {
            problems.push(format!(
                "listen: {listen_text:?} is not an address and port: {e}"
            ));
            SocketAddr::from(([127, 0, 0, 1], 8088))
        });
        let ingest_keys = hashes(&file.ingest_keys, "ingest_keys", &mut problems);
        let metrics_keys = hashes(&file.metrics_keys, "metrics_keys", &mut problems);
        for (name, account) in &file.accounts {
            if account.rate_limit == Some(0) {
                problems.push(format!("account {name:?}: rate_limit must be at least 1"));
            }
            if account.rate_window_secs == Some(0) {
                problems.push(format!(
                    "account {name:?}: rate_window_secs must be at least 1"
                ));
            }
        }
        let alerting = file.alert_webhook.is_some() || file.alert_command.is_some();
        let alerts = AlertSettings {
            webhook: file.alert_webhook,
            command: file.alert_command,
            stall_after: alerting.then(|| {
                file.stall_alert_secs
                    .map_or(DEFAULT_STALL_ALERT, |secs| Duration::from_secs(secs.max(1)))
            }),
            timeout: Duration::from_secs(file.alert_timeout_secs.unwrap_or(30).max(1)),
        };
        if let Err(e) = Alerts::new(alerts.clone()) {
            problems.push(format!("alert_webhook: {e}"));
        }
        let admin = file
            .admin
            .and_then(|admin| admin_settings(admin, &mut problems));
        let cluster = cluster_settings(file.cluster, &mut problems);
        let max_body_bytes = file.max_body_bytes.unwrap_or(DEFAULT_MAX_BODY_BYTES);
        if max_body_bytes == 0 {
            problems.push("max_body_bytes must be at least 1".into());
        }
        let max_connections = file.max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS);
        if max_connections == 0 {
            problems.push("max_connections must be at least 1".into());
        }
        for (setting, value) in [
            ("header_timeout_secs", file.header_timeout_secs),
            ("body_timeout_secs", file.body_timeout_secs),
        ] {
            if value == Some(0) {
                problems.push(format!("{setting} must be at least 1"));
            }
        }
        let max_record_bytes = file.max_record_bytes.unwrap_or(DEFAULT_MAX_RECORD_BYTES);
        if max_record_bytes == 0 {
            problems.push("max_record_bytes must be at least 1".into());
        }
        let a_destination_without_keys = file.destinations.iter().any(|d| d.ingest_keys.is_empty());
        let mut names = HashSet::new();
        let mut destinations = Vec::new();
        if file.destinations.is_empty() {
            problems.push("no [[destinations]]: there is nothing to serve".into());
        }
        for (position, text) in file.destinations.into_iter().enumerate() {
            let label = match &text.name {
                Some(name) => format!("destination {name:?}"),
                None => format!("destination #{}", position + 1),
            };
            if let Some(name) = &text.name
                && !names.insert(name.clone())
            {
                problems.push(format!("{label}: name: used by another destination"));
            }
            if let Some(spec) = destination(text, base, &label, &mut problems) {
                destinations.push(spec);
            }
        }
        let only_loopback = listen.ip().is_loopback();
        let keyless = ingest_keys.is_empty() && a_destination_without_keys;
        if !only_loopback && keyless {
            problems.push(format!(
                "listen: {listen} is not a loopback address, so every destination needs an ingest key (ingest_keys); anyone who can reach it could post records"
            ));
        }
        if !problems.is_empty() {
            return Err(FileProblems { problems });
        }
        Ok(Self {
            listen,
            state_dir: base.join(file.state_dir.unwrap_or_else(|| PathBuf::from("state"))),
            max_body_bytes,
            max_record_bytes,
            ingest_keys,
            metrics_keys,
            drain_timeout: Duration::from_secs(file.drain_timeout_secs.unwrap_or(10)),
            max_connections,
            header_timeout: Duration::from_secs(file.header_timeout_secs.unwrap_or(10)),
            body_timeout: Duration::from_secs(file.body_timeout_secs.unwrap_or(60)),
            login_retry: Duration::from_secs(file.login_retry_secs.unwrap_or(30).max(1)),
            alerts,
            admin,
            cluster,
            accounts: file
                .accounts
                .into_iter()
                .map(|(name, a)| {
                    let settings = AccountSettings {
                        rate_limit: a.rate_limit,
                        rate_window_secs: a.rate_window_secs,
                    };
                    (name, settings)
                })
                .collect(),
            destinations,
        })
    }

    /// The service listening somewhere else (the command line's `--listen`),
    /// checked as the file's own `listen` is.
    pub fn listening_on(mut self, listen: SocketAddr) -> Result<Self, FileProblems> {
        if !listen.ip().is_loopback()
            && self.ingest_keys.is_empty()
            && self.destinations.iter().any(|d| d.ingest_keys.is_empty())
        {
            return Err(FileProblems {
                problems: vec![format!(
                    "--listen {listen} is not a loopback address, so every destination needs an ingest key (ingest_keys)"
                )],
            });
        }
        self.listen = listen;
        Ok(self)
    }
}

fn admin_settings(text: AdminText, problems: &mut Vec<String>) -> Option<AdminSettings> {
    let before = problems.len();
    let user = text.user.unwrap_or_default();
    if user.trim().is_empty() {
        problems.push("admin: user: missing".into());
    }
    let password_hash = text.password_hash.unwrap_or_default();
    if let Err(e) = argon2::PasswordHash::new(&password_hash) {
        problems.push(format!(
            "admin: password_hash: not a password hash ({e}); make one with `outreach-host admin-password`"
        ));
    }
    let public_url = text
        .public_url
        .map(|url| url.trim_end_matches('/').to_owned());
    if let Some(url) = &public_url
        && url::Url::parse(url).is_err()
    {
        problems.push(format!("admin: public_url: {url:?} is not a URL"));
    }
    (problems.len() == before).then(|| AdminSettings {
        user,
        password_hash,
        session: Duration::from_secs(3_600 * text.session_hours.unwrap_or(8).clamp(1, 24 * 30)),
        secure_cookies: text.secure_cookies.unwrap_or(false),
        public_url,
    })
}

fn hashes(texts: &[String], setting: &str, problems: &mut Vec<String>) -> Vec<KeyHash> {
    texts
        .iter()
        .enumerate()
        .filter_map(|(i, text)| match text.parse::<KeyHash>() {
            Ok(hash) => Some(hash),
            Err(e) => {
                problems.push(format!("{setting}[{i}]: {e}"));
                None
            }
        })
        .collect()
}

/// A short name: letters, digits, `-` and `_`, at most 64.
pub(crate) fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn destination(
    text: DestinationText,
    base: &Path,
    label: &str,
    problems: &mut Vec<String>,
) -> Option<DestinationSpec> {
    let before = problems.len();
    let name = text.name.unwrap_or_default();
    if !valid_name(&name) {
        problems.push(format!(
            "{label}: name: {name:?} must be 1-64 letters, digits, '-' or '_' (it is used in URLs and file names)"
        ));
    }
    let (config, config_origin) = match text.config {
        None => {
            problems.push(format!(
                "{label}: config: missing (a path to the configuration JSON, or an inline table)"
            ));
            (String::new(), String::new())
        }
        Some(ConfigText::Path(path)) => {
            let path = base.join(path);
            match std::fs::read_to_string(&path) {
                Ok(text) => (text, path.display().to_string()),
                Err(e) => {
                    problems.push(format!(
                        "{label}: config: cannot read {}: {e}",
                        path.display()
                    ));
                    (String::new(), String::new())
                }
            }
        }
        Some(ConfigText::Inline(table)) => match serde_json::to_string(&table) {
            Ok(json) => (json, "inline".to_owned()),
            Err(e) => {
                problems.push(format!("{label}: config: not expressible as JSON: {e}"));
                (String::new(), String::new())
            }
        },
    };
    if let Some(account) = &text.account
        && account.trim().is_empty()
    {
        problems.push(format!("{label}: account: empty"));
    }
    if let Some(api_base) = &text.api_base
        && let Err(e) = url::Url::parse(api_base)
    {
        problems.push(format!("{label}: api_base: {api_base:?} is not a URL: {e}"));
    }
    let component = text.component.map(|path| base.join(path));
    if let Some(path) = &component
        && !path.is_file()
    {
        problems.push(format!(
            "{label}: component: {} is not a file",
            path.display()
        ));
    }
    let ingest_keys = hashes(
        &text.ingest_keys,
        &format!("{label}: ingest_keys"),
        problems,
    );
    let concurrency = text.concurrency.unwrap_or(16);
    if !(1..=1024).contains(&concurrency) {
        problems.push(format!(
            "{label}: concurrency: {concurrency} is not between 1 and 1024"
        ));
    }
    let max_queued_updates = text
        .max_queued_updates
        .unwrap_or(DEFAULT_MAX_QUEUED_UPDATES);
    if max_queued_updates == 0 {
        problems.push(format!("{label}: max_queued_updates must be at least 1"));
    }
    let alerts = AlertOverrides {
        webhook: text.alert_webhook,
        command: text.alert_command.filter(|c| !c.trim().is_empty()),
        stall_after: text.stall_alert_secs.map(Duration::from_secs),
    };
    if alerts.stall_after == Some(Duration::ZERO) {
        problems.push(format!("{label}: stall_alert_secs must be at least 1"));
    }
    if alerts.webhook.is_some() {
        let check = AlertSettings {
            webhook: alerts.webhook.clone(),
            ..AlertSettings::default()
        };
        // The message never repeats the URL: it may carry a token.
        if let Err(e) = Alerts::new(check) {
            problems.push(format!("{label}: alert_webhook: {e}"));
        }
    }
    (problems.len() == before).then_some(DestinationSpec {
        name,
        config,
        config_origin,
        account: text.account,
        api_base: text.api_base,
        component,
        enabled: text.enabled,
        ingest_keys,
        max_queued_updates,
        concurrency,
        alerts,
    })
}

#[cfg(test)]
mod tests;
