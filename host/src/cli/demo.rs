//! `demo`: the example profiles delivered to the built-in simulator.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Result, bail};
use outreach_host::delivery::{Input, StaticToken};
use outreach_host::engine::Runtime;
use outreach_host::journal::Journal;
use outreach_simulator::{Simulator, SimulatorConfig};

use super::args::DeliveryArgs;
use super::deliver::{Job, deliver};
use super::{EXIT_INVALID_CONFIG, EXIT_PARTIAL, configure};

pub(crate) async fn demo(
    runtime: &Runtime,
    config: &Path,
    input: &Path,
    args: &DeliveryArgs,
    max_record_bytes: usize,
) -> Result<u8> {
    if !input.is_file() {
        bail!(
            "{} not found: run the demo from the repository root",
            input.display()
        );
    }
    let Some(destination) = configure(runtime, config)? else {
        return Ok(EXIT_INVALID_CONFIG);
    };
    // The example profiles use prospect ids 1000..=3999; the last ten do
    // not exist in the simulated account, so the demo shows 404 handling.
    // Seven in ten existing prospects already have their profile's email,
    // so a configuration that matches by email updates those and creates
    // the rest.
    let simulator = Simulator::start(
        SimulatorConfig {
            prospect_ids: DEMO_PROSPECTS,
            prospect_emails: known_emails(input),
            ..SimulatorConfig::default()
        },
        SocketAddr::from(([127, 0, 0, 1], 0)),
    )
    .await?;
    let token = simulator.issue_token("demo@example.com");
    if !args.json {
        eprintln!("Outreach simulator listening on {}", simulator.api_base());
    }
    // The simulator lives as long as the demo, and so does its journal.
    let journal_file = std::env::temp_dir().join(format!(
        "outreach-demo-{}-{}.sqlite",
        std::process::id(),
        outreach_host::clock::now_ms()
    ));
    let journal = Arc::new(Journal::open(&journal_file)?);
    let input = Input::file(input, &journal, true)?.max_record_bytes(max_record_bytes);
    // The example data contains bad records on purpose: the demo succeeds
    // when the run completes, whatever it rejected.
    let api_base = simulator.api_base();
    let job = Job {
        runtime,
        destination,
        api_base: &api_base,
        args,
        journal,
        kind: "demo",
    };
    let code = deliver(job, input, &StaticToken(token)).await?;
    if !args.json {
        println!(
            "demo journal (runs, dead letters): outreach-host --journal {} runs show last",
            journal_file.display()
        );
    }
    if !args.json {
        let stats = simulator.stats();
        println!(
            "simulator: {} updates applied, {} prospects created, {} prospect lookups, {} accounts created, {} account lookups, {} requests, {} rate-limited, {} rejected",
            stats.updates_applied,
            stats.creates,
            stats.lookups,
            stats.account_creates,
            stats.account_lookups,
            stats.requests,
            stats.rate_limited,
            stats.rejected
        );
    }
    Ok(if code == EXIT_PARTIAL { 0 } else { code })
}

/// The prospects of the simulated account.
const DEMO_PROSPECTS: std::ops::RangeInclusive<u64> = 1000..=3989;

/// The emails of the input's profiles whose prospect exists and whose id
/// ends in 0..=6, as (prospect id, email): what the account already
/// knows. Lines that are not such profiles are left out (the run reports
/// them).
fn known_emails(input: &Path) -> Vec<(u64, String)> {
    let Ok(text) = std::fs::read_to_string(input) else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|line| {
            let profile: serde_json::Value = serde_json::from_str(line).ok()?;
            let id = profile["identityMap"]["Oid"][0]["id"]
                .as_str()?
                .parse()
                .ok()?;
            let email = profile["personalEmail"]["address"].as_str()?;
            (DEMO_PROSPECTS.contains(&id) && id % 10 < 7).then(|| (id, email.to_owned()))
        })
        .collect()
}
