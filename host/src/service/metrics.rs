//! `/metrics`: the service's figures in the OpenMetrics text format (which
//! Prometheus reads), built from a snapshot at each scrape: the journals'
//! counts per destination and audience, the backlog, and per account the
//! requests, 429s, retries, refreshes, the budget left and the access
//! token's remaining life (never the token).

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::journal::Counts;
use crate::read_model::{Snapshot, Waiting};

/// The content type of the exposition.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

type Labels = Vec<(&'static str, String)>;

/// One destination's figures.
pub struct DestinationFigures {
    pub name: String,
    pub account: String,
    pub enabled: bool,
    pub now: Snapshot,
    pub now_ms: u64,
}

/// One account's figures.
pub struct AccountFigures {
    pub name: String,
    pub budget_remaining: Option<u64>,
    pub in_flight: u64,
    pub token_expires_in_secs: Option<i64>,
    pub refreshes: u64,
}

fn counter_family(registry: &mut Registry, name: &str, help: &str) -> Family<Labels, Counter> {
    let family = Family::<Labels, Counter>::default();
    registry.register(name, help, family.clone());
    family
}

fn gauge_family(registry: &mut Registry, name: &str, help: &str) -> Family<Labels, Gauge> {
    let family = Family::<Labels, Gauge>::default();
    registry.register(name, help, family.clone());
    family
}

fn gauge_f64_family(
    registry: &mut Registry,
    name: &str,
    help: &str,
) -> Family<Labels, Gauge<f64, AtomicU64>> {
    let family = Family::<Labels, Gauge<f64, AtomicU64>>::default();
    registry.register(name, help, family.clone());
    family
}

fn add_outcomes(family: &Family<Labels, Counter>, labels: &Labels, counts: &Counts) {
    for (outcome, value) in [
        ("received", counts.received),
        ("delivered", counts.delivered),
        ("rejected", counts.rejected),
        ("skipped", counts.skipped),
    ] {
        let mut labels = labels.clone();
        labels.push(("outcome", outcome.to_owned()));
        family.get_or_create(&labels).inc_by(value);
    }
}

/// The exposition text.
pub fn render(destinations: &[DestinationFigures], accounts: &[AccountFigures]) -> String {
    let mut registry = Registry::with_prefix("outreach_host");
    let records = counter_family(
        &mut registry,
        "records",
        "Records per destination and outcome (received, delivered, rejected, skipped)",
    );
    let audience_records = counter_family(
        &mut registry,
        "audience_records",
        "Records per destination, audience and outcome",
    );
    let enabled = gauge_family(
        &mut registry,
        "destination_enabled",
        "1 if the destination is enabled",
    );
    let paused = gauge_family(
        &mut registry,
        "delivery_paused",
        "1 while the destination's delivery is paused (a login is needed, the journal failed)",
    );
    let queued = gauge_family(
        &mut registry,
        "queued_updates",
        "Updates waiting in the journal",
    );
    let oldest = gauge_f64_family(
        &mut registry,
        "oldest_queued_age_seconds",
        "Age of the oldest queued update",
    );
    let requests = counter_family(&mut registry, "requests", "API requests sent, per account");
    let step_requests = counter_family(
        &mut registry,
        "step_requests",
        "Lookups and creates sent before (or instead of) updates, per destination and purpose",
    );
    let rate_limited = counter_family(&mut registry, "rate_limited", "429 answers, per account");
    let retries = counter_family(
        &mut registry,
        "retries",
        "Retries after transient failures, per account",
    );
    let refreshes = counter_family(
        &mut registry,
        "token_refreshes",
        "Access tokens minted by refresh, per account",
    );
    let remaining = gauge_family(
        &mut registry,
        "rate_budget_remaining",
        "Requests left in the account's current window, as the API last reported",
    );
    let in_flight = gauge_family(
        &mut registry,
        "requests_in_flight",
        "Requests on the wire holding a place in the account's budget",
    );
    let expires = gauge_family(
        &mut registry,
        "access_token_expires_in_seconds",
        "Seconds until the account's access token expires",
    );

    let mut per_account: BTreeMap<&str, [u64; 3]> = BTreeMap::new();
    for destination in destinations {
        let labels: Labels = vec![("destination", destination.name.clone())];
        enabled
            .get_or_create(&labels)
            .set(i64::from(destination.enabled));
        let now = &destination.now;
        // What a destination that takes no records (or whose figures
        // cannot be read) would show is not known: it is left out.
        let Some(totals) = &now.totals else {
            continue;
        };
        add_outcomes(&records, &labels, &totals.records);
        for (audience, counts) in &totals.audiences {
            let mut labels = labels.clone();
            labels.push(("audience", audience.clone()));
            add_outcomes(&audience_records, &labels, counts);
        }
        paused
            .get_or_create(&labels)
            .set(i64::from(now.paused.is_some()));
        if let Waiting::Updates {
            count,
            oldest_received_ms,
        } = now.waiting
        {
            queued
                .get_or_create(&labels)
                .set(i64::try_from(count).unwrap_or(i64::MAX));
            let age_ms = oldest_received_ms.map_or(0, |at| destination.now_ms.saturating_sub(at));
            oldest.get_or_create(&labels).set(age_ms as f64 / 1000.0);
        }
        for (purpose, sent) in [
            ("lookup", totals.lookups_sent),
            ("create", totals.creates_sent),
        ] {
            let mut labels = labels.clone();
            labels.push(("purpose", purpose.to_owned()));
            step_requests.get_or_create(&labels).inc_by(sent);
        }
        let sums = per_account.entry(&destination.account).or_default();
        sums[0] += totals.requests_sent;
        sums[1] += totals.rate_limited;
        sums[2] += totals.retries;
    }
    for account in accounts {
        let labels: Labels = vec![("account", account.name.clone())];
        let sums = per_account
            .get(account.name.as_str())
            .copied()
            .unwrap_or_default();
        requests.get_or_create(&labels).inc_by(sums[0]);
        rate_limited.get_or_create(&labels).inc_by(sums[1]);
        retries.get_or_create(&labels).inc_by(sums[2]);
        refreshes.get_or_create(&labels).inc_by(account.refreshes);
        in_flight
            .get_or_create(&labels)
            .set(i64::try_from(account.in_flight).unwrap_or(i64::MAX));
        if let Some(left) = account.budget_remaining {
            remaining
                .get_or_create(&labels)
                .set(i64::try_from(left).unwrap_or(i64::MAX));
        }
        if let Some(secs) = account.token_expires_in_secs {
            expires.get_or_create(&labels).set(secs);
        }
    }
    let mut text = String::new();
    // Writing into a String cannot fail.
    let _ = encode(&mut text, &registry);
    text
}
