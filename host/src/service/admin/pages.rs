//! The pages an operator reads: the destinations, a destination's runs, a
//! run per audience and reason, the dead letters.

use super::*;

fn utc(ms: u64) -> String {
    crate::format_utc(ms / 1000, ' ')
}

fn age(ms: u64) -> String {
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
    oldest_age: Option<String>,
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
        let view = match service.worker() {
            Some(worker) if served.clustered => Some(worker.view(name, &served.account).await),
            _ => None,
        };
        let status = match &served.stream {
            Some(stream) => stream.status().await.ok(),
            None => None,
        };
        let paused = status.as_ref().and_then(|s| s.paused.clone());
        let (connection, connection_class) = match &account {
            Some(account) => match account.connection(now_ms / 1000).await {
                crate::account::Connection::Fixed => ("Fixed access token".to_owned(), "muted"),
                crate::account::Connection::NeedsLogin(why) => {
                    (format!("Needs login ({why})"), "error")
                }
                crate::account::Connection::Connected { expires_in, scope } => {
                    if paused.is_some() {
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
        let hour = match (&served.stream, &view) {
            (_, Some(view)) => match &view.hour {
                Some(run) => format!(
                    "{} received, {} activated, {} failed, {} skipped (every worker)",
                    run.counts.received,
                    run.counts.delivered,
                    run.counts.rejected,
                    run.counts.skipped
                ),
                None => "nothing yet".into(),
            },
            (Some(stream), None) => {
                let current = stream.current_run();
                match stream.run_record(current).await {
                    Ok(run) => format!(
                        "{} received, {} activated, {} failed, {} skipped",
                        run.counts.received,
                        run.counts.delivered,
                        run.counts.rejected,
                        run.counts.skipped
                    ),
                    Err(_) => "—".into(),
                }
            }
            (None, None) => "—".into(),
        };
        let budget = match (&view, account.as_ref().map(|a| a.limiter.budget_view())) {
            (Some(view), _) => match view.budget {
                Some((left, _)) => format!("{left} requests (as the API last told the owner)"),
                None => "not reported yet".into(),
            },
            (None, budget) => match budget {
                Some((_, Some(left))) => format!("{left} requests (as the API last said)"),
                Some((_, None)) => "not reported yet".into(),
                None => "—".into(),
            },
        };
        let backlog = status.as_ref().map(|s| s.backlog).unwrap_or_default();
        let queued = match &view {
            Some(view) => view.waiting_messages.unwrap_or(0),
            None => backlog.updates,
        };
        let held_by = view.as_ref().map(|view| {
            format!(
                "{} (partition {})",
                view.held_by.as_deref().unwrap_or("no worker yet"),
                view.partition
            )
        });
        cards.push(DestinationCard {
            name: name.clone(),
            enabled: served.stream.is_some() || served.clustered,
            account: served.account.clone(),
            connectable: account.as_ref().is_some_and(|a| a.connectable()),
            connection,
            connection_class,
            queued,
            oldest_age: backlog
                .oldest_received_ms
                .map(|at| age(now_ms.saturating_sub(at))),
            hour,
            budget,
            paused,
            held_by,
        });
    }
    html(
        StatusCode::OK,
        &DestinationsPage {
            csrf: Some(&session.csrf),
            destinations: cards,
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
}

impl From<&RunRecord> for RunRow {
    fn from(r: &RunRecord) -> Self {
        Self {
            id: r.id,
            started: utc(r.started_ms),
            status: r.status.clone(),
            received: r.counts.received,
            delivered: r.counts.delivered,
            rejected: r.counts.rejected,
            skipped: r.counts.skipped,
            pending: r.pending,
        }
    }
}

/// A cluster's run: its id is the period's start (epoch ms).
impl From<&crate::cluster::runs::ClusterRun> for RunRow {
    fn from(r: &crate::cluster::runs::ClusterRun) -> Self {
        Self {
            id: i64::try_from(r.period_start_ms).unwrap_or(i64::MAX),
            started: utc(r.period_start_ms),
            status: "cluster (every worker)".into(),
            received: r.counts.received,
            delivered: r.counts.delivered,
            rejected: r.counts.rejected,
            skipped: r.counts.skipped,
            pending: 0,
        }
    }
}

#[derive(Template)]
#[template(path = "destination.html")]
struct DestinationPage<'a> {
    csrf: Option<&'a str>,
    name: &'a str,
    runs: Vec<RunRow>,
}

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
    let runs = match service.worker() {
        Some(worker) => match worker.runs_of(&name, PAGE).await {
            Ok(runs) => runs.iter().map(RunRow::from).collect(),
            Err(e) => return unreadable(&session, &e),
        },
        None => match read_journal(&service, &served, |journal| journal.runs(PAGE)).await {
            Ok(runs) => runs.iter().map(RunRow::from).collect(),
            Err(e) => return unreadable(&session, &e),
        },
    };
    html(
        StatusCode::OK,
        &DestinationPage {
            csrf: Some(&session.csrf),
            name: &name,
            runs,
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
    if let Some(worker) = service.worker() {
        let Some(run) = worker.run_of(&name, u64::try_from(id).unwrap_or(0)).await else {
            return error_page(
                StatusCode::NOT_FOUND,
                Some(&session.csrf),
                "Not found",
                "There is no such run.",
            );
        };
        return html(
            StatusCode::OK,
            &RunPage {
                csrf: Some(&session.csrf),
                name: &name,
                id,
                kind: "hourly, every worker's counts".into(),
                status: format!("updated {}", utc(run.updated_ms)),
                started: utc(run.period_start_ms),
                received: run.counts.received,
                delivered: run.counts.delivered,
                rejected: run.counts.rejected,
                skipped: run.counts.skipped,
                pending: 0,
                audiences: Vec::new(),
                failures: Vec::new(),
            },
        );
    }
    let record = match read_journal(&service, &served, move |journal| journal.run(id)).await {
        Ok(record) => record,
        Err(_) => {
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
            id: record.id,
            kind: record.kind.clone(),
            status: record.status.clone(),
            started: utc(record.started_ms),
            received: record.counts.received,
            delivered: record.counts.delivered,
            rejected: record.counts.rejected,
            skipped: record.counts.skipped,
            pending: record.pending,
            audiences,
            failures: record.failures.clone().into_iter().collect(),
        },
    )
}
