//! How results are printed: the run summary and its tables.

use std::collections::BTreeMap;

use anyhow::Result;
use outreach_host::delivery::Summary;
use outreach_host::journal::{self, RunRecord};

pub(crate) fn print_summary(summary: &Summary, api_base: &str, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(summary)?);
        return Ok(());
    }
    println!(
        "run {}: {} of {} records delivered to {api_base} in {:.1} s: {} rejected, {} skipped, {} not sent",
        summary.run,
        summary.delivered,
        summary.received,
        summary.elapsed_ms as f64 / 1000.0,
        summary.rejected,
        summary.skipped,
        summary.not_sent
    );
    println!(
        "{} requests sent, {} updates delivered ({} records coalesced into queued updates), {} rate-limited (waited out), {} retries, {} credential refreshes",
        summary.requests_sent,
        summary.updates_delivered,
        summary.coalesced,
        summary.rate_limited,
        summary.retries,
        summary.credential_refreshes
    );
    if summary.lookups_sent + summary.creates_sent > 0 {
        println!(
            "of the requests, {} were lookups and {} created what the destination did not have yet (deliveries of several steps)",
            summary.lookups_sent, summary.creates_sent
        );
    }
    if summary.input_already_journaled > 0 {
        println!(
            "input: the first {} lines were journaled by an earlier run and not read again (--from-start to re-read)",
            summary.input_already_journaled
        );
    }
    if summary.resumed > 0 {
        println!(
            "{} records queued by earlier runs were taken over (their counts go to those runs: `outreach-host runs`)",
            summary.resumed
        );
    }
    print_audiences(&summary.audiences, &summary.audience_labels);
    print_failures(&summary.failures);
    if !summary.held_back.is_empty() {
        println!(
            "{} dead letters held back (not sent, still listed by `dead-letters list`):",
            summary.held_back.len()
        );
        for held in &summary.held_back {
            println!(
                "  letter {} (line {}): {}",
                held.letter, held.line, held.reason
            );
        }
    }
    if summary.rejected > 0
        || summary.skipped
            > summary
                .failures
                .get("nothing-to-write")
                .copied()
                .unwrap_or(0)
    {
        println!(
            "dead letters: `outreach-host dead-letters list --run {}`{}",
            summary.run,
            summary
                .dead_letters
                .as_ref()
                .map(|p| format!(", also written to {}", p.display()))
                .unwrap_or_default()
        );
    }
    if let Some(fatal) = &summary.fatal {
        println!("\nrun stopped: {fatal}");
        println!(
            "{} records stay queued in {}; `outreach-host resume` (or the next run) sends them",
            summary.pending,
            summary.journal.display()
        );
    }
    Ok(())
}

/// Counts per audience, each shown by the destination's label for it
/// (`Newsletter (Mapping ID 4)`) when it gave one, else by its id.
pub(crate) fn print_audiences(
    audiences: &BTreeMap<String, journal::Counts>,
    labels: &BTreeMap<String, String>,
) {
    if audiences.is_empty() {
        return;
    }
    let shown = |id: &String| labels.get(id).unwrap_or(id).clone();
    let width = audiences
        .keys()
        .map(|id| shown(id).chars().count())
        .max()
        .unwrap_or(8)
        .max(8);
    println!(
        "\n{:<width$}  {:>9}  {:>9}  {:>8}  {:>7}",
        "audience", "received", "delivered", "rejected", "skipped"
    );
    for (audience, c) in audiences {
        println!(
            "{:<width$}  {:>9}  {:>9}  {:>8}  {:>7}",
            shown(audience),
            c.received,
            c.delivered,
            c.rejected,
            c.skipped
        );
    }
}

pub(crate) fn print_failures(failures: &std::collections::BTreeMap<String, u64>) {
    if failures.is_empty() {
        return;
    }
    println!("\nrecords not delivered, by reason:");
    for (reason, count) in failures {
        println!("  {reason:<28} {count:>7}");
    }
}

/// `YYYY-MM-DD HH:MM:SS` (UTC) for an epoch-milliseconds time.
pub(crate) fn utc(ms: u64) -> String {
    outreach_host::format_utc(ms / 1000, ' ')
}

pub(crate) fn duration(run: &RunRecord) -> String {
    match run.ended_ms {
        Some(end) => format!(
            "{:.1} s",
            end.saturating_sub(run.started_ms) as f64 / 1000.0
        ),
        None => "-".into(),
    }
}
