//! `plan` and `run --dry-run`: the requests the component plans, printed,
//! nothing sent.

use std::io::{BufWriter, Write};
use std::path::Path;

use super::{EXIT_INVALID_CONFIG, EXIT_PARTIAL, configure};
use anyhow::{Context, Result};
use destination_types::PlanOutcome;
use outreach_host::delivery::{self, Input};
use outreach_host::engine::Runtime;

pub(crate) fn dry_run(
    runtime: &Runtime,
    config: &Path,
    input: &Path,
    max_record_bytes: usize,
) -> Result<u8> {
    let Some(mut destination) = configure(runtime, config)? else {
        return Ok(EXIT_INVALID_CONFIG);
    };
    // Read exactly as a run reads (one reader), but never checkpointed.
    let input = if input == Path::new("-") {
        Input::reader(std::io::BufReader::new(std::io::stdin()), None)
    } else {
        let file = std::fs::File::open(input)
            .with_context(|| format!("cannot open input {}", input.display()))?;
        Input::reader(std::io::BufReader::with_capacity(1 << 16, file), None)
    }
    .max_record_bytes(max_record_bytes);
    let mut out = BufWriter::new(std::io::stdout().lock());
    let (mut sends, mut skips, mut invalid) = (0usize, 0usize, 0usize);
    delivery::plan_stream(
        &mut destination,
        input,
        delivery::DEFAULT_BATCH,
        |item, outcome| {
            match outcome {
                PlanOutcome::Send(_) => sends += 1,
                PlanOutcome::Skip(_) => skips += 1,
                PlanOutcome::Invalid(_) => invalid += 1,
            }
            writeln!(
                out,
                "{}",
                serde_json::json!({ "line": item.line, "outcome": outcome })
            )
        },
    )?;
    out.flush()?;
    eprintln!(
        "dry run: {sends} requests planned, nothing sent; {skips} records skipped, {invalid} invalid"
    );
    Ok(if invalid > 0 { EXIT_PARTIAL } else { 0 })
}
