//! The pages an operator reads: the destinations, a destination's runs, a
//! run per audience and reason, the dead letters.

use super::charts;
use super::*;
use crate::read_model::{Budget, Hour, RunSummary, Waiting};

fn utc(ms: u64) -> String {
    crate::format_utc(ms / 1000, ' ')
}

pub(super) fn age(ms: u64) -> String {
    let secs = ms / 1000;
    match secs {
        0..60 => format!("{secs} s"),
        60..3_600 => format!("{} min", secs / 60),
        3_600..172_800 => format!("{} h {} min", secs / 3_600, secs % 3_600 / 60),
        _ => format!("{} days", secs / 86_400),
    }
}

struct DestinationCard {
    name: String,
    enabled: bool,
    account: String,
    connection: String,
    connection_class: &'static str,
    /// A browser login is possible (the account uses stored tokens).
    connectable: bool,
    queued: u64,
    /// What `queued` counts.
    queued_unit: &'static str,
    oldest_age: Option<String>,
    /// Requests sent since the process started, the steps among them.
    requests: Option<String>,
    hour: String,
    budget: String,
    paused: Option<String>,
    /// In a cluster: the worker delivering it, and its partition.
    held_by: Option<String>,
}

#[derive(Template)]
#[template(path = "destinations.html")]
struct DestinationsPage<'a> {
    csrf: Option<&'a str>,
    destinations: Vec<DestinationCard>,
    /// Destinations can be added and changed from the pages here.
    editable: bool,
    accounts: Vec<AccountChart>,
}

/// An account's budget per window, charted.
struct AccountChart {
    name: String,
    policy: String,
    chart: String,
}

/// Windows an account's chart shows at most.
const CHARTED_WINDOWS: usize = 24;

fn account_chart(
    account: &crate::account::Account,
    windows: &[crate::limiter::WindowUse],
) -> AccountChart {
    let policy = account.limiter.policy();
    let recent = &windows[windows.len().saturating_sub(CHARTED_WINDOWS)..];
    let limit = recent.last().map_or(policy.requests, |w| w.limit);
    let level = charts::Level {
        value: u64::from(limit),
        title: format!("the budget: {limit} requests a window"),
    };
    AccountChart {
        name: account.name.clone(),
        policy: format!(
            "{} requests per {} s, per {}",
            policy.requests, policy.window_seconds, policy.per
        ),
        chart: charts::svg(
            &format!("Budget used per window by {}", account.name),
            &charts::padded(charts::window_bars(recent), CHARTED_WINDOWS),
            Some(&level),
        ),
    }
}

pub(super) async fn destinations(
    State(service): State<Arc<Service>>,
    operator: Operator,
) -> Response {
    let session = operator.session;
    let set = service.current();
    let now_ms = crate::clock::now_ms();
    let mut cards = Vec::new();
    for (name, served) in &set.destinations {
        let account = set.accounts.get(&served.account).cloned();
        let now = served.read.snapshot().await;
        let (connection, connection_class) = match &account {
            Some(account) => match account.connection(now_ms / 1000).await {
                crate::account::Connection::Fixed => ("Fixed access token".to_owned(), "muted"),
                crate::account::Connection::NeedsLogin(why) => {
                    (format!("Needs login ({why})"), "error")
                }
                crate::account::Connection::Connected { expires_in, scope } => {
                    if now.paused.is_some() {
                        ("Refresh failing".to_owned(), "error")
                    } else {
                        let life = expires_in
                            .map(|secs| {
                                format!(
                                    ", token expires in {}",
                                    age(u64::try_from(secs.max(0)).unwrap_or(0) * 1000)
                                )
                            })
                            .unwrap_or_default();
                        let scope = scope.map(|s| format!(", scope {s}")).unwrap_or_default();
                        (format!("Connected ✓{life}{scope}"), "ok")
                    }
                }
            },
            None => ("—".to_owned(), "muted"),
        };
        let outcomes = |c: &crate::journal::Counts| {
            format!(
                "{} received, {} activated, {} failed, {} skipped",
                c.received, c.delivered, c.rejected, c.skipped
            )
        };
        let hour = match &now.hour {
            Hour::Unknown => "—".into(),
            Hour::Empty => "nothing yet".into(),
            Hour::Counted(counts) => outcomes(counts),
            Hour::CountedByAll(counts) => format!("{} (every worker)", outcomes(counts)),
        };
        let budget = match now.budget {
            Budget::Unknown => "—".into(),
            Budget::NotReported => "not reported yet".into(),
            Budget::Left(left) => format!("{left} requests (as the API last said)"),
            Budget::LeftAtOwner(left) => {
                format!("{left} requests (as the API last told the owner)")
            }
        };
        let (queued, queued_unit, oldest_age) = match now.waiting {
            Waiting::Updates {
                count,
                oldest_received_ms,
            } => (
                count,
                "Queued updates",
                oldest_received_ms.map(|at| age(now_ms.saturating_sub(at))),
            ),
            Waiting::Messages(count) => (count, "Messages waiting", None),
        };
        // Since this process started: every request, and the steps among
        // them when a destination took any.
        let requests = now.totals.as_ref().map(|t| {
            let steps = if t.lookups_sent + t.creates_sent > 0 {
                format!(
                    " ({} lookups, {} creates, {} updates)",
                    t.lookups_sent,
                    t.creates_sent,
                    t.requests_sent
                        .saturating_sub(t.lookups_sent + t.creates_sent)
                )
            } else {
                String::new()
            };
            format!("{}{steps}", t.requests_sent)
        });
        let held_by = now.placement.map(|p| {
            format!(
                "{} (partition {})",
                p.worker.as_deref().unwrap_or("no worker yet"),
                p.partition
            )
        });
        cards.push(DestinationCard {
            name: name.clone(),
            enabled: served.intake.is_some(),
            account: served.account.clone(),
            connectable: account.as_ref().is_some_and(|a| a.connectable()),
            connection,
            connection_class,
            queued,
            queued_unit,
            oldest_age,
            requests,
            hour,
            budget,
            paused: now.paused,
            held_by,
        });
    }
    let mut accounts = Vec::new();
    for account in set.accounts.values() {
        // Any of its destinations reads the account's windows.
        let Some(served) = set
            .destinations
            .values()
            .find(|d| d.account == account.name)
        else {
            continue;
        };
        let windows = served.read.budget_windows().await;
        accounts.push(account_chart(account, &windows));
    }
    html(
        StatusCode::OK,
        &DestinationsPage {
            csrf: Some(&session.csrf),
            destinations: cards,
            editable: service.may_edit().is_ok(),
            accounts,
        },
    )
}

struct RunRow {
    id: i64,
    started: String,
    status: String,
    received: u64,
    delivered: u64,
    rejected: u64,
    skipped: u64,
    pending: u64,
    /// Requests sent, and those answered 429.
    requests: u64,
    rate_limited: u64,
}

impl From<&RunSummary> for RunRow {
    fn from(r: &RunSummary) -> Self {
        Self {
            id: r.id,
            started: utc(r.started_ms),
            status: r.status.clone(),
            received: r.counts.received,
            delivered: r.counts.delivered,
            rejected: r.counts.rejected,
            skipped: r.counts.skipped,
            pending: r.pending,
            requests: r.requests.sent,
            rate_limited: r.requests.rate_limited,
        }
    }
}

#[derive(Template)]
#[template(path = "destination.html")]
struct DestinationPage<'a> {
    csrf: Option<&'a str>,
    name: &'a str,
    runs: Vec<RunRow>,
    /// Charts of the last 24 hours and the last 7 days, hour by hour (SVG,
    /// escaped where it holds text).
    charts: Vec<ChartPair>,
    enabled: bool,
    /// Why its settings cannot be changed here (`None`: they can).
    not_editable: Option<String>,
    history: Vec<ChangeRow>,
}

/// One measure charted over the last day and the last week.
struct ChartPair {
    heading: &'static str,
    legend: Vec<(&'static str, &'static str)>,
    note: Option<String>,
    last_day: String,
    last_week: String,
}

/// One change in a destination's history.
struct ChangeRow {
    when: String,
    who: String,
    what: String,
    lines: Vec<super::editor::DiffLine>,
}

/// Changes a destination's page lists at most.
const HISTORY: usize = 20;

/// Hours a week of charts shows.
const WEEK_HOURS: u64 = 7 * 24;

pub(super) async fn destination(
    State(service): State<Arc<Service>>,
    operator: Operator,
    Path(name): Path<String>,
) -> Response {
    let session = operator.session;
    let served = match find(&service, &name, &session) {
        Ok(served) => served,
        Err(response) => return *response,
    };
    // A week of hourly runs, at least: the charts' and the table's.
    let runs = match served.read.runs(PAGE.max(WEEK_HOURS as usize)).await {
        Ok(runs) => runs,
        Err(e) => return unreadable(&session, &e),
    };
    let now_ms = crate::clock::now_ms();
    let (day, week) = (
        charts::hours(&runs, now_ms, 24),
        charts::hours(&runs, now_ms, WEEK_HOURS),
    );
    let set = service.current();
    let budget_per_hour = set.accounts.get(&served.account).map(|account| {
        let policy = account.limiter.policy();
        u64::from(policy.requests) * 3_600 / u64::from(policy.window_seconds.max(1))
    });
    let budget = budget_per_hour.map(|value| charts::Level {
        value,
        title: format!("budget: {value} requests an hour, for the account"),
    });
    service.sample_queue(&name, served.read.as_ref()).await;
    let queue = |hours| service.queue_history().hours(&name, now_ms, hours);
    let charts = vec![
        ChartPair {
            heading: "Records",
            legend: vec![
                ("activated", "activated"),
                ("failed", "failed"),
                ("skipped", "skipped"),
                ("queued", "queued"),
            ],
            note: Some("Records per hour, stacked to those received".into()),
            last_day: charts::svg(
                "Records per hour, the last 24 hours",
                &charts::record_bars(&day),
                None,
            ),
            last_week: charts::svg(
                "Records per hour, the last 7 days",
                &charts::record_bars(&week),
                None,
            ),
        },
        ChartPair {
            heading: "Requests",
            legend: vec![("sent", "sent"), ("limited", "answered 429")],
            note: Some(match budget_per_hour {
                Some(b) => format!(
                    "Requests per hour; the line is the account's budget, {b} an hour, shared by its destinations"
                ),
                None => "Requests per hour".into(),
            }),
            last_day: charts::svg(
                "Requests per hour, the last 24 hours",
                &charts::request_bars(&day, budget_per_hour),
                budget.as_ref(),
            ),
            last_week: charts::svg(
                "Requests per hour, the last 7 days",
                &charts::request_bars(&week, budget_per_hour),
                budget.as_ref(),
            ),
        },
        ChartPair {
            heading: "Queue",
            legend: vec![("queued", "queued")],
            note: Some("The most updates queued in each hour, sampled every minute".into()),
            last_day: charts::svg(
                "Queued updates per hour, the last 24 hours",
                &charts::queue_bars(&queue(24)),
                None,
            ),
            last_week: charts::svg(
                "Queued updates per hour, the last 7 days",
                &charts::queue_bars(&queue(WEEK_HOURS)),
                None,
            ),
        },
    ];
    let history = service.history();
    let wanted = name.clone();
    let changes = tokio::task::spawn_blocking(move || history.of(&wanted, HISTORY))
        .await
        .map_err(|e| e.to_string())
        .and_then(|read| read.map_err(|e| e.to_string()))
        .unwrap_or_else(|e| {
            tracing::warn!("the change history cannot be read: {e}");
            Vec::new()
        });
    let history = changes
        .into_iter()
        .map(|c| ChangeRow {
            when: utc(c.at_ms),
            who: c.who,
            what: c.what,
            lines: super::editor::diff(c.before.as_deref(), c.after.as_deref().unwrap_or_default())
                .into_iter()
                .filter(|line| line.class != "same")
                .collect(),
        })
        .collect();
    html(
        StatusCode::OK,
        &DestinationPage {
            csrf: Some(&session.csrf),
            name: &name,
            runs: runs.iter().take(PAGE).map(RunRow::from).collect(),
            charts,
            enabled: served.spec.enabled,
            not_editable: service.may_edit().err().map(|e| sentence(&e.to_string())),
            history,
        },
    )
}

struct AudienceRow {
    label: String,
    received: u64,
    delivered: u64,
    rejected: u64,
    skipped: u64,
}

#[derive(Template)]
#[template(path = "run.html")]
struct RunPage<'a> {
    csrf: Option<&'a str>,
    name: &'a str,
    id: i64,
    kind: String,
    status: String,
    started: String,
    received: u64,
    delivered: u64,
    rejected: u64,
    skipped: u64,
    pending: u64,
    audiences: Vec<AudienceRow>,
    failures: Vec<(String, u64)>,
}

pub(super) async fn run(
    State(service): State<Arc<Service>>,
    operator: Operator,
    Path((name, id)): Path<(String, i64)>,
) -> Response {
    let session = operator.session;
    let served = match find(&service, &name, &session) {
        Ok(served) => served,
        Err(response) => return *response,
    };
    let record = match served.read.run(id).await {
        Ok(Some(record)) => record,
        Ok(None) | Err(_) => {
            return error_page(
                StatusCode::NOT_FOUND,
                Some(&session.csrf),
                "Not found",
                "There is no such run.",
            );
        }
    };
    let labels = &served.audience_labels;
    let audiences = record
        .audiences
        .iter()
        .map(|(id, c)| AudienceRow {
            label: labels.get(id).cloned().unwrap_or_else(|| id.clone()),
            received: c.received,
            delivered: c.delivered,
            rejected: c.rejected,
            skipped: c.skipped,
        })
        .collect();
    html(
        StatusCode::OK,
        &RunPage {
            csrf: Some(&session.csrf),
            name: &name,
            id: record.summary.id,
            kind: record.kind,
            status: record.summary.status,
            started: utc(record.summary.started_ms),
            received: record.summary.counts.received,
            delivered: record.summary.counts.delivered,
            rejected: record.summary.counts.rejected,
            skipped: record.summary.counts.skipped,
            pending: record.summary.pending,
            audiences,
            failures: record.failures.into_iter().collect(),
        },
    )
}
