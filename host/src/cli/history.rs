//! `runs`, `runs show` and `dead-letters list`: the journal's history.

use std::collections::BTreeMap;
use std::io::{BufWriter, Write};

use anyhow::{Context, Result};
use outreach_host::journal::{Journal, LetterFilter, RunRecord};

use super::args::LetterArgs;
use super::render::{duration, print_audiences, print_failures, utc};

/// A run id, or `last`.
pub(crate) fn run_id(journal: &Journal, text: &str) -> Result<i64> {
    if text == "last" {
        return journal.last_run()?.context("the journal has no runs yet");
    }
    text.parse()
        .with_context(|| format!("{text:?} is not a run id (a number, or `last`)"))
}

pub(crate) fn letter_filter(
    journal: &Journal,
    which: &LetterArgs,
    all: bool,
) -> Result<LetterFilter> {
    Ok(LetterFilter {
        run: which
            .run
            .as_deref()
            .map(|r| run_id(journal, r))
            .transpose()?,
        code: which.code.clone(),
        ids: which.ids.clone(),
        include_replayed: all,
        ..LetterFilter::default()
    })
}

pub(crate) fn runs_list(journal: &Journal, limit: usize, json: bool) -> Result<u8> {
    let runs = journal.runs(limit)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&runs)?);
        return Ok(0);
    }
    if runs.is_empty() {
        println!("no runs yet in {}", journal.path().display());
        return Ok(0);
    }
    println!(
        "{:>5}  {:<7}  {:<23}  {:<19}  {:>9}  {:>9}  {:>9}  {:>8}  {:>7}  {:>7}",
        "run",
        "kind",
        "status",
        "started (UTC)",
        "duration",
        "received",
        "delivered",
        "rejected",
        "skipped",
        "pending"
    );
    for run in &runs {
        println!(
            "{:>5}  {:<7}  {:<23}  {:<19}  {:>9}  {:>9}  {:>9}  {:>8}  {:>7}  {:>7}",
            run.id,
            run.kind,
            run.status,
            utc(run.started_ms),
            duration(run),
            run.counts.received,
            run.counts.delivered,
            run.counts.rejected,
            run.counts.skipped,
            run.pending
        );
    }
    Ok(0)
}

pub(crate) fn runs_show(run: &RunRecord, json: bool) -> Result<u8> {
    if json {
        println!("{}", serde_json::to_string_pretty(run)?);
        return Ok(0);
    }
    println!("run {} ({}): {}", run.id, run.kind, run.status);
    println!("destination: {}  api: {}", run.destination, run.api_base);
    if let Some(input) = &run.input {
        println!("input: {input}");
    }
    println!(
        "started {} UTC, {}",
        utc(run.started_ms),
        match run.ended_ms {
            Some(end) => format!("ended {} UTC ({})", utc(end), duration(run)),
            None => "not ended".into(),
        }
    );
    println!(
        "records: {} received, {} delivered, {} rejected, {} skipped, {} still queued",
        run.counts.received,
        run.counts.delivered,
        run.counts.rejected,
        run.counts.skipped,
        run.pending
    );
    println!(
        "{} updates delivered, {} records coalesced; {} requests sent, {} rate-limited, {} retries, {} credential refreshes; {} records of earlier runs taken over",
        run.updates_delivered,
        run.coalesced,
        run.requests_sent,
        run.rate_limited,
        run.retries,
        run.credential_refreshes,
        run.resumed
    );
    if run.lookups_sent + run.creates_sent > 0 {
        println!(
            "of the requests, {} lookups and {} creates",
            run.lookups_sent, run.creates_sent
        );
    }
    print_audiences(&run.audiences, &BTreeMap::new());
    print_failures(&run.failures);
    if let Some(fatal) = &run.fatal {
        println!("\nstopped: {fatal}");
    }
    Ok(0)
}

pub(crate) fn letters_list(journal: &Journal, filter: &LetterFilter, table: bool) -> Result<u8> {
    let letters = journal.dead_letters(filter)?;
    let mut out = BufWriter::new(std::io::stdout().lock());
    if table {
        writeln!(
            out,
            "{:>7}  {:>5}  {:>7}  {:<24}  {:>6}  reason",
            "id", "run", "line", "code", "status"
        )?;
    }
    for letter in &letters {
        if table {
            writeln!(
                out,
                "{:>7}  {:>5}  {:>7}  {:<24}  {:>6}  {}",
                letter.id,
                letter.run,
                letter.line,
                letter.code,
                letter
                    .status
                    .map(|s| s.to_string())
                    .unwrap_or_else(|| "-".into()),
                letter.reason
            )?;
        } else {
            writeln!(out, "{}", serde_json::to_string(letter)?)?;
        }
    }
    out.flush()?;
    eprintln!("{} dead letters", letters.len());
    Ok(0)
}
