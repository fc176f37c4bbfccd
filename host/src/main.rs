//! `outreach-host`: run a profile-destination component from the command line.

use std::io::{BufRead, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use destination_types::PlanOutcome;
use outreach_host::engine::{self, Limits, Runtime};

/// Exit codes: 0 everything fine, 1 fatal error, 2 invalid configuration,
/// 3 some records could not be planned.
const EXIT_FATAL: u8 = 1;
const EXIT_INVALID_CONFIG: u8 = 2;
const EXIT_PARTIAL: u8 = 3;

#[derive(Parser)]
#[command(
    version,
    about = "Reference host for profile-destination WebAssembly components"
)]
struct Cli {
    #[command(flatten)]
    component: ComponentArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args)]
struct ComponentArgs {
    /// Destination component to run (default: the Outreach component built
    /// with this host).
    #[arg(long, global = true, value_name = "WASM")]
    component: Option<PathBuf>,
    /// Directory for compiled components (default: $OUTREACH_CACHE_DIR,
    /// $XDG_CACHE_HOME/outreach-host or ~/.cache/outreach-host).
    #[arg(long, global = true, value_name = "DIR")]
    cache_dir: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Print the component's static description (OAuth endpoints, rate limit,
    /// configuration schema).
    Describe,
    /// Check a destination configuration; every problem is listed with its
    /// setting.
    Validate {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Plan the requests for NDJSON profiles and print them, one JSON line per
    /// input record; nothing is sent.
    Plan {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// NDJSON profiles; `-` for standard input.
        #[arg(long, value_name = "FILE", default_value = "-")]
        input: PathBuf,
        /// Records per call into the component.
        #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=100_000))]
        batch: u32,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(EXIT_FATAL)
        }
    }
}

fn run(cli: Cli) -> Result<u8> {
    let path = cli
        .component
        .component
        .unwrap_or_else(|| PathBuf::from(outreach_host::BUILT_COMPONENT));
    let cache = cli.component.cache_dir.or_else(engine::default_cache_dir);
    let runtime = Runtime::load(&path, cache.as_deref(), Limits::default())?;
    match cli.command {
        Command::Describe => {
            let descriptor = runtime.describe()?;
            println!("{}", serde_json::to_string_pretty(&descriptor)?);
            Ok(0)
        }
        Command::Validate { config } => {
            let text = read_config(&config)?;
            match runtime.configure(&text)? {
                Ok(_) => {
                    println!("{}: valid", config.display());
                    Ok(0)
                }
                Err(errors) => {
                    report_config_errors(&config, &errors);
                    Ok(EXIT_INVALID_CONFIG)
                }
            }
        }
        Command::Plan {
            config,
            input,
            batch,
        } => plan(&runtime, &config, &input, batch as usize),
    }
}

fn read_config(path: &Path) -> Result<String> {
    std::fs::read_to_string(path)
        .with_context(|| format!("cannot read configuration {}", path.display()))
}

fn report_config_errors(path: &Path, errors: &[destination_types::ConfigError]) {
    eprintln!("{}: invalid configuration", path.display());
    for e in errors {
        eprintln!("  {}", e.message);
    }
}

fn plan(runtime: &Runtime, config: &Path, input: &Path, batch: usize) -> Result<u8> {
    let text = read_config(config)?;
    let mut destination = match runtime.configure(&text)? {
        Ok(d) => d,
        Err(errors) => {
            report_config_errors(config, &errors);
            return Ok(EXIT_INVALID_CONFIG);
        }
    };
    let reader: Box<dyn BufRead> = if input == Path::new("-") {
        Box::new(std::io::stdin().lock())
    } else {
        Box::new(std::io::BufReader::new(
            std::fs::File::open(input)
                .with_context(|| format!("cannot open input {}", input.display()))?,
        ))
    };
    let mut out = BufWriter::new(std::io::stdout().lock());
    let (mut sends, mut skips, mut invalid) = (0usize, 0usize, 0usize);
    let mut lines: Vec<(usize, String)> = Vec::with_capacity(batch);
    let mut flush = |lines: &mut Vec<(usize, String)>, out: &mut dyn Write| -> Result<()> {
        let records: Vec<String> = lines.iter().map(|(_, l)| l.clone()).collect();
        let outcomes = destination.plan(&records)?;
        for ((line, _), outcome) in lines.iter().zip(&outcomes) {
            match outcome {
                PlanOutcome::Send(_) => sends += 1,
                PlanOutcome::Skip(_) => skips += 1,
                PlanOutcome::Invalid(_) => invalid += 1,
            }
            let entry = serde_json::json!({ "line": line, "outcome": outcome });
            writeln!(out, "{entry}")?;
        }
        lines.clear();
        Ok(())
    };
    for (index, line) in reader.lines().enumerate() {
        let line = line.with_context(|| format!("cannot read input line {}", index + 1))?;
        if line.trim().is_empty() {
            continue;
        }
        lines.push((index + 1, line));
        if lines.len() == batch {
            flush(&mut lines, &mut out)?;
        }
    }
    flush(&mut lines, &mut out)?;
    out.flush()?;
    eprintln!("planned {sends} requests; {skips} records skipped, {invalid} invalid");
    Ok(if invalid > 0 { EXIT_PARTIAL } else { 0 })
}
