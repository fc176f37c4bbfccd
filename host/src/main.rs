//! `outreach-host`: run a profile-destination component from the command line.

use std::io::{BufWriter, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use destination_types::{ConfigError, PlanOutcome};
use outreach_host::alerts::{AlertSettings, Alerts};
use outreach_host::delivery::{self, Credentials, DeliveryOptions, Input, StaticToken, Summary};
use outreach_host::engine::{self, Destination, Limits, Runtime};
use outreach_host::http::ApiClient;
use outreach_host::journal::{self, Journal, LetterFilter, RunRecord};
use outreach_host::limiter::Limiter;
use outreach_host::oauth::{
    self, AppCredentials, OAuthClient, OAuthCredentials, OAuthSettings, Redirect, RedirectListener,
    TokenStore,
};
use outreach_host::simulator::{Faults, Simulator, SimulatorConfig};

/// Exit codes: 0 everything delivered, 1 fatal error (or the run stopped),
/// 2 invalid configuration, 3 some records failed (see the dead letters).
const EXIT_FATAL: u8 = 1;
const EXIT_INVALID_CONFIG: u8 = 2;
const EXIT_PARTIAL: u8 = 3;

/// Environment variable holding a fixed access token for `run` (instead of
/// the token store).
const TOKEN_ENV: &str = "OUTREACH_ACCESS_TOKEN";
/// The OAuth application's credentials.
const CLIENT_ID_ENV: &str = "OUTREACH_CLIENT_ID";
const CLIENT_SECRET_ENV: &str = "OUTREACH_CLIENT_SECRET";

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
    /// Largest linear memory a component instance may use, in MiB.
    #[arg(long, global = true, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=4096))]
    guest_memory_mib: u32,
    /// Longest a single call into the component may run, in milliseconds.
    #[arg(long, global = true, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(10..=600_000))]
    guest_deadline_ms: u64,
    /// Token store file (default: $OUTREACH_TOKEN_STORE,
    /// $XDG_CONFIG_HOME/outreach-host/tokens.json or
    /// ~/.config/outreach-host/tokens.json).
    #[arg(long, global = true, value_name = "FILE")]
    token_store: Option<PathBuf>,
    /// Records (input lines) longer than this many bytes are refused as
    /// `record-too-large` record errors, without being read into memory.
    #[arg(long, global = true, default_value_t = outreach_host::input::DEFAULT_MAX_RECORD_BYTES, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(64..=1 << 30))]
    max_record_bytes: usize,
    /// Journal of queued updates, dead letters and run history (default:
    /// $OUTREACH_JOURNAL, $XDG_STATE_HOME/outreach-host/journal.sqlite or
    /// ~/.local/state/outreach-host/journal.sqlite).
    #[arg(long, global = true, value_name = "FILE")]
    journal: Option<PathBuf>,
}

/// Which OAuth application and endpoints to use.
#[derive(Args)]
struct OAuthArgs {
    /// JSON file with {"client_id", "client_secret"} (default: the
    /// OUTREACH_CLIENT_ID and OUTREACH_CLIENT_SECRET environment variables).
    #[arg(long, value_name = "FILE")]
    client_file: Option<PathBuf>,
    /// Override the component's authorize URL (e.g. the simulator's).
    #[arg(long, value_name = "URL")]
    authorize_url: Option<String>,
    /// Override the component's token URL (e.g. the simulator's).
    #[arg(long, value_name = "URL")]
    token_url: Option<String>,
    /// Override the component's minimum seconds between new tokens.
    #[arg(long, value_name = "SECONDS")]
    min_token_interval: Option<u64>,
}

#[derive(Args)]
struct DeliveryArgs {
    /// Requests in flight at once.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=1024))]
    concurrency: u32,
    /// Attempts per request for transient failures before giving up.
    #[arg(long, default_value_t = 6, value_parser = clap::value_parser!(u32).range(1..=100))]
    max_attempts: u32,
    /// HTTP timeout per request, in seconds.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=600))]
    timeout_secs: u64,
    /// Also export this run's dead letters to FILE (NDJSON); they are kept
    /// in the journal either way (`dead-letters list`).
    #[arg(long, value_name = "FILE")]
    dead_letters: Option<PathBuf>,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
    /// POST a JSON alert to this URL when a run ends with failures, the
    /// account needs a new login, or delivery stalls.
    #[arg(long, value_name = "URL")]
    alert_webhook: Option<String>,
    /// Run this shell command for the same alerts (the alert as JSON on its
    /// standard input, the event in $OUTREACH_ALERT).
    #[arg(long, value_name = "COMMAND")]
    alert_command: Option<String>,
    /// Requests allowed per rate-limit window (default: the component's
    /// declared policy; Outreach: 10,000 per hour per user).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    rate_limit: Option<u32>,
    /// The rate-limit window in seconds (default: the component's).
    #[arg(long, value_name = "SECONDS", value_parser = clap::value_parser!(u32).range(1..))]
    rate_window_secs: Option<u32>,
    /// Seconds an alert may take: the webhook's tries together, and the
    /// command (killed, with its children, when the time is up).
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    alert_timeout_secs: u64,
    /// Seconds without any update reaching a verdict, while updates are
    /// queued, before a `stalled` alert.
    #[arg(long, default_value_t = 900, value_parser = clap::value_parser!(u64).range(1..))]
    stall_alert_secs: u64,
}

/// Where updates go and with which credentials.
#[derive(Args)]
struct SendArgs {
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
    /// API base URL (default: the component's, https://api.outreach.io/api/v2).
    #[arg(long, value_name = "URL")]
    api_base: Option<String>,
    /// Account whose tokens to use (default: the configuration's
    /// `account`, else "default").
    #[arg(long)]
    account: Option<String>,
    #[command(flatten)]
    oauth: OAuthArgs,
    #[command(flatten)]
    delivery: DeliveryArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Run the demo: start the Outreach simulator in-process and deliver the
    /// shipped example profiles to it.
    Demo {
        #[arg(long, value_name = "FILE", default_value = "examples/destination.json")]
        config: PathBuf,
        #[arg(long, value_name = "FILE", default_value = "examples/profiles.ndjson")]
        input: PathBuf,
        #[command(flatten)]
        delivery: DeliveryArgs,
    },
    /// Deliver NDJSON profiles to the API, with the account's stored tokens
    /// (see `login`), or a fixed token from $OUTREACH_ACCESS_TOKEN.
    ///
    /// Records are journaled before they count as accepted; a file input is
    /// checkpointed, so running the same command again after a crash
    /// resumes where it stopped. Updates queued by earlier runs go first.
    Run {
        /// NDJSON profiles; `-` for standard input.
        #[arg(long, value_name = "FILE", default_value = "-")]
        input: PathBuf,
        /// Read the input file from its first line even if an earlier run
        /// journaled part of it.
        #[arg(long)]
        from_start: bool,
        /// Plan and print the requests; send nothing.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        send: SendArgs,
    },
    /// Deliver the updates queued in the journal (left by a stopped or
    /// killed run), without new input.
    Resume {
        #[command(flatten)]
        send: SendArgs,
    },
    /// The run history: every run with its counts per audience and per
    /// failure reason.
    Runs {
        #[command(subcommand)]
        command: Option<RunsCommand>,
        /// How many runs to list.
        #[arg(long, default_value_t = 20)]
        limit: usize,
        #[arg(long)]
        json: bool,
    },
    /// Dead letters kept in the journal: list them, or send them again.
    DeadLetters {
        #[command(subcommand)]
        command: LettersCommand,
    },
    /// Connect an Outreach account: OAuth authorization-code login, tokens
    /// kept in the token store.
    Login {
        #[arg(long, default_value = "default")]
        account: String,
        /// No browser on this machine: print the URL, then paste the address
        /// the browser was redirected to.
        #[arg(long)]
        manual: bool,
        /// The redirect URI registered with the OAuth application.
        #[arg(long, default_value = "http://127.0.0.1:8765/callback")]
        redirect_uri: String,
        /// Send a PKCE challenge (for providers that accept it).
        #[arg(long)]
        pkce: bool,
        /// How long to wait for the redirect, in seconds.
        #[arg(long, default_value_t = 300)]
        timeout_secs: u64,
        #[command(flatten)]
        oauth: OAuthArgs,
    },
    /// Show connected accounts: expiry and scope, never the tokens.
    Auth {
        #[command(subcommand)]
        command: AuthCommand,
    },
    /// Remove an account's tokens from the token store.
    Logout {
        #[arg(long, default_value = "default")]
        account: String,
    },
    /// Plan the requests for NDJSON profiles and print them, one JSON line per
    /// input record; nothing is sent (same as `run --dry-run`).
    Plan {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// NDJSON profiles; `-` for standard input.
        #[arg(long, value_name = "FILE", default_value = "-")]
        input: PathBuf,
    },
    /// Check a destination configuration; every problem is listed.
    Validate {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Print the component's static description.
    Describe,
    /// Serve the Outreach API simulator until interrupted.
    Simulate(SimulateArgs),
}

#[derive(Subcommand)]
enum RunsCommand {
    /// List runs, newest first (the default).
    List,
    /// One run in detail: a run id, or `last`.
    Show {
        run: String,
        #[arg(long)]
        json: bool,
    },
}

/// Which dead letters.
#[derive(Args)]
struct LetterArgs {
    /// Only those of this run (a run id, or `last`).
    #[arg(long)]
    run: Option<String>,
    /// Only those with this reason code (e.g. `validationError`, `resourceNotFound`).
    #[arg(long)]
    code: Option<String>,
    /// Only these letters (repeatable).
    #[arg(long = "id")]
    ids: Vec<i64>,
}

// Parsed once per process: the size of a variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum LettersCommand {
    /// Dead letters not replayed yet, one JSON line each (`--all`: also
    /// those already replayed).
    List {
        #[command(flatten)]
        which: LetterArgs,
        #[arg(long)]
        all: bool,
        /// A table instead of JSON lines.
        #[arg(long)]
        table: bool,
    },
    /// Plan the letters' records again with the current configuration (say,
    /// after fixing a Mapping ID) and deliver them, as a new run.
    ///
    /// A letter whose prospect has had a newer update since its record was
    /// received (delivered, or still queued) is held back, so last week's
    /// values never overwrite today's; the summary lists what was held back
    /// and why.
    Replay {
        #[command(flatten)]
        which: LetterArgs,
        /// Replay held-back letters too, overwriting newer values.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        send: SendArgs,
    },
}

#[derive(Subcommand)]
enum AuthCommand {
    /// Connected / expires-in / scope for each account (or one).
    Status {
        #[arg(long)]
        account: Option<String>,
    },
}

#[derive(Args)]
struct SimulateArgs {
    #[arg(long, default_value = "127.0.0.1:8089")]
    listen: SocketAddr,
    /// Seeded prospect ids, `FIRST-LAST`.
    #[arg(long, default_value = "1-10000", value_parser = parse_id_range)]
    prospects: (u64, u64),
    /// Requests per user per window.
    #[arg(long, default_value_t = 10_000)]
    rate_limit: u32,
    /// Rate-limit window in seconds.
    #[arg(long, default_value_t = 3_600)]
    rate_window_secs: u64,
    /// Custom fields the account has (custom1..=N).
    #[arg(long, default_value_t = 150)]
    custom_fields: u32,
    /// Share of updates answered 500/503 (0..1).
    #[arg(long, default_value_t = 0.0)]
    error_share: f64,
    /// Share of updates whose connection is dropped after applying (0..1).
    #[arg(long, default_value_t = 0.0)]
    drop_share: f64,
    /// Added latency per update, in milliseconds.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// User the printed access token belongs to (password: demo-password).
    #[arg(long, default_value = "demo@example.com")]
    user: String,
    /// Access token lifetime in seconds (Outreach: 7200).
    #[arg(long, default_value_t = 7_200)]
    access_lifetime_secs: u64,
    /// Minimum seconds between new tokens per user (Outreach: 60).
    #[arg(long, default_value_t = 60)]
    mint_interval_secs: u64,
}

fn parse_id_range(text: &str) -> Result<(u64, u64), String> {
    let (a, b) = text
        .split_once('-')
        .ok_or_else(|| format!("{text:?} is not FIRST-LAST"))?;
    let parse = |s: &str| {
        s.trim()
            .parse::<u64>()
            .map_err(|_| format!("{s:?} is not a prospect id"))
    };
    let (a, b) = (parse(a)?, parse(b)?);
    if a > b {
        return Err(format!("{a} is after {b}"));
    }
    Ok((a, b))
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            // The chain of causes, each said once (many messages already
            // quote their cause).
            let mut message = e.to_string();
            for cause in e.chain().skip(1) {
                let cause = cause.to_string();
                if !message.contains(&cause) {
                    message = format!("{message}: {cause}");
                }
            }
            eprintln!("error: {message}");
            ExitCode::from(EXIT_FATAL)
        }
    }
}

fn load_runtime(args: ComponentArgs) -> Result<Runtime> {
    let path = args
        .component
        .unwrap_or_else(|| PathBuf::from(outreach_host::BUILT_COMPONENT));
    let cache = args.cache_dir.or_else(engine::default_cache_dir);
    let limits = Limits {
        memory_bytes: (args.guest_memory_mib as usize) << 20,
        call_deadline: Duration::from_millis(args.guest_deadline_ms),
    };
    Ok(Runtime::load(&path, cache.as_deref(), limits)?)
}

fn tokio_runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn token_store(args: &ComponentArgs) -> Result<TokenStore> {
    let path = args
        .token_store
        .clone()
        .or_else(oauth::store::default_store_path)
        .context("no token store location: set OUTREACH_TOKEN_STORE or HOME")?;
    Ok(TokenStore::new(path))
}

fn journal_path(args: &ComponentArgs) -> Result<PathBuf> {
    args.journal
        .clone()
        .or_else(journal::default_journal_path)
        .context("no journal location: set OUTREACH_JOURNAL or HOME")
}

/// Commands that only print (`runs`, `dead-letters list`, `plan`,
/// `describe`) end quietly when their reader goes away (`| head`), as
/// other command-line tools do. Delivering commands keep SIGPIPE ignored:
/// a closed connection must be an error there, not the end of the process.
fn die_quietly_on_closed_pipe() {
    #[cfg(unix)]
    // SAFETY: restoring the default disposition of SIGPIPE, before any
    // thread is started, touches no Rust state.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

fn run(cli: Cli) -> Result<u8> {
    let store = token_store(&cli.component)?;
    let max_record_bytes = cli.component.max_record_bytes;
    let journal_file = journal_path(&cli.component)?;
    if matches!(
        cli.command,
        Command::Runs { .. }
            | Command::DeadLetters {
                command: LettersCommand::List { .. }
            }
            | Command::Plan { .. }
            | Command::Describe
    ) {
        die_quietly_on_closed_pipe();
    }
    match cli.command {
        Command::Simulate(args) => return tokio_runtime()?.block_on(simulate(args)),
        Command::Auth {
            command: AuthCommand::Status { account },
        } => return auth_status(&store, account.as_deref()),
        Command::Logout { account } => {
            if store.remove(&account)? {
                println!(
                    "logged out: tokens of {account:?} removed from {}",
                    store.path().display()
                );
            } else {
                println!("{account:?} was not logged in");
            }
            return Ok(0);
        }
        Command::Runs {
            command,
            limit,
            json,
        } => {
            let journal = Journal::open_existing(&journal_file)?;
            return match command {
                None | Some(RunsCommand::List) => runs_list(&journal, limit, json),
                Some(RunsCommand::Show {
                    run,
                    json: show_json,
                }) => {
                    let id = run_id(&journal, &run)?;
                    runs_show(&journal.run(id)?, json || show_json)
                }
            };
        }
        Command::DeadLetters {
            command: LettersCommand::List { which, all, table },
        } => {
            let journal = Journal::open_existing(&journal_file)?;
            let filter = letter_filter(&journal, &which, all)?;
            return letters_list(&journal, &filter, table);
        }
        _ => {}
    }
    let runtime = load_runtime(cli.component)?;
    match cli.command {
        Command::Describe => {
            println!("{}", serde_json::to_string_pretty(runtime.describe())?);
            Ok(0)
        }
        Command::Validate { config } => {
            let Some(_) = configure(&runtime, &config)? else {
                return Ok(EXIT_INVALID_CONFIG);
            };
            println!("{}: valid", config.display());
            Ok(0)
        }
        Command::Plan { config, input } => dry_run(&runtime, &config, &input, max_record_bytes),
        Command::Run {
            send,
            input,
            dry_run: true,
            ..
        } => dry_run(&runtime, &send.config, &input, max_record_bytes),
        Command::Run {
            input,
            from_start,
            dry_run: false,
            send,
        } => {
            let journal = Arc::new(Journal::open(&journal_file)?);
            let input = if input == Path::new("-") {
                Input::reader(
                    std::io::BufReader::new(std::io::stdin()),
                    Some("stdin".into()),
                )
            } else {
                Input::file(&input, &journal, from_start)?
            };
            let input = input.max_record_bytes(max_record_bytes);
            send_updates(&runtime, store, send, journal, input, "run")
        }
        Command::Resume { send } => {
            let journal = Arc::new(Journal::open(&journal_file)?);
            send_updates(&runtime, store, send, journal, Input::nothing(), "resume")
        }
        Command::DeadLetters {
            command: LettersCommand::Replay { which, force, send },
        } => {
            let journal = Arc::new(Journal::open(&journal_file)?);
            let filter = letter_filter(&journal, &which, false)?;
            let letters = journal.letter_records(&filter)?;
            if letters.is_empty() {
                println!("no dead letters to replay");
                return Ok(0);
            }
            eprintln!(
                "replaying {} dead letters with {}",
                letters.len(),
                send.config.display()
            );
            send_updates(
                &runtime,
                store,
                send,
                journal,
                Input::replay(letters, force),
                "replay",
            )
        }
        Command::Login {
            account,
            manual,
            redirect_uri,
            pkce,
            timeout_secs,
            oauth,
        } => {
            let client = oauth_client(&runtime, &oauth, Some(redirect_uri), pkce)?;
            tokio_runtime()?.block_on(login(
                &client,
                &store,
                &account,
                manual,
                Duration::from_secs(timeout_secs),
            ))
        }
        Command::Demo {
            config,
            input,
            delivery,
        } => {
            tokio_runtime()?.block_on(demo(&runtime, &config, &input, &delivery, max_record_bytes))
        }
        Command::Simulate(_)
        | Command::Auth { .. }
        | Command::Logout { .. }
        | Command::Runs { .. }
        | Command::DeadLetters {
            command: LettersCommand::List { .. },
        } => {
            unreachable!("handled above")
        }
    }
}

/// Delivers `input` (and whatever the journal holds) with the account's
/// credentials, or a fixed token from the environment.
fn send_updates(
    runtime: &Runtime,
    store: TokenStore,
    send: SendArgs,
    journal: Arc<Journal>,
    input: Input,
    kind: &str,
) -> Result<u8> {
    let api_base = match &send.api_base {
        Some(base) => base.clone(),
        None => runtime.describe().default_api_base.clone(),
    };
    let Some(destination) = configure(runtime, &send.config)? else {
        return Ok(EXIT_INVALID_CONFIG);
    };
    let account = send
        .account
        .clone()
        .or_else(|| destination.identity().account.clone())
        .unwrap_or_else(|| "default".into());
    let tokio = tokio_runtime()?;
    let job = Job {
        runtime,
        destination,
        api_base: &api_base,
        args: &send.delivery,
        journal,
        kind,
    };
    if let Some(token) = std::env::var(TOKEN_ENV)
        .ok()
        .filter(|t| !t.trim().is_empty())
    {
        return tokio.block_on(deliver(job, input, &StaticToken(token)));
    }
    let client = oauth_client(runtime, &send.oauth, None, false)?;
    let credentials = OAuthCredentials::load(client, store, &account)?;
    tokio.block_on(deliver(job, input, &credentials))
}

/// The configured destination, or `None` after printing its errors.
fn configure(runtime: &Runtime, path: &Path) -> Result<Option<Destination>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read configuration {}", path.display()))?;
    match runtime.configure(&text)? {
        Ok(d) => Ok(Some(d)),
        Err(errors) => {
            report_config_errors(path, &errors);
            Ok(None)
        }
    }
}

fn report_config_errors(path: &Path, errors: &[ConfigError]) {
    eprintln!("{}: invalid configuration", path.display());
    for e in errors {
        eprintln!("  {}", e.message);
    }
}

fn dry_run(runtime: &Runtime, config: &Path, input: &Path, max_record_bytes: usize) -> Result<u8> {
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
    delivery::plan_stream(&mut destination, input, 500, |item, outcome| {
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
    })?;
    out.flush()?;
    eprintln!(
        "dry run: {sends} requests planned, nothing sent; {skips} records skipped, {invalid} invalid"
    );
    Ok(if invalid > 0 { EXIT_PARTIAL } else { 0 })
}

fn delivery_options(
    args: &DeliveryArgs,
    journal: Arc<Journal>,
    kind: &str,
    destination: String,
) -> Result<DeliveryOptions> {
    let alerting = args.alert_webhook.is_some() || args.alert_command.is_some();
    let alerts = Alerts::new(AlertSettings {
        webhook: args.alert_webhook.clone(),
        command: args.alert_command.clone(),
        stall_after: alerting.then(|| Duration::from_secs(args.stall_alert_secs)),
        timeout: Duration::from_secs(args.alert_timeout_secs),
    })?;
    Ok(DeliveryOptions {
        concurrency: args.concurrency as usize,
        max_attempts: args.max_attempts,
        journal: Some(journal),
        dead_letters: args.dead_letters.clone(),
        progress: !args.json,
        kind: kind.into(),
        destination,
        alerts: Arc::new(alerts),
        stop_on_signals: true,
        ..DeliveryOptions::default()
    })
}

/// What a delivery needs besides its input and credentials.
struct Job<'a> {
    runtime: &'a Runtime,
    destination: Destination,
    api_base: &'a str,
    args: &'a DeliveryArgs,
    journal: Arc<Journal>,
    kind: &'a str,
}

async fn deliver<C: Credentials>(job: Job<'_>, input: Input, credentials: &C) -> Result<u8> {
    let destination = job.destination;
    let mut policy = job.runtime.describe().rate_limit.clone();
    if let Some(requests) = job.args.rate_limit {
        policy.requests = requests;
    }
    if let Some(seconds) = job.args.rate_window_secs {
        policy.window_seconds = seconds;
    }
    let limiter = Limiter::new(&policy)?;
    let api = ApiClient::new(job.api_base, Duration::from_secs(job.args.timeout_secs))?;
    let name = destination.identity().name.clone();
    let options = delivery_options(job.args, job.journal, job.kind, name)?;
    let summary = delivery::run(destination, &api, &limiter, credentials, input, &options).await?;
    print_summary(&summary, api.base().as_str(), job.args.json)?;
    Ok(exit_code(&summary))
}

fn exit_code(summary: &Summary) -> u8 {
    if summary.fatal.is_some() {
        EXIT_FATAL
    } else if summary.has_failures() {
        EXIT_PARTIAL
    } else {
        0
    }
}

async fn demo(
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
    let simulator = Simulator::start(
        SimulatorConfig {
            prospect_ids: 1000..=3989,
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
        outreach_host::limiter::now_epoch_ms()
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
            "simulator: {} updates applied, {} requests, {} rate-limited, {} rejected",
            stats.updates_applied, stats.requests, stats.rate_limited, stats.rejected
        );
    }
    Ok(if code == EXIT_PARTIAL { 0 } else { code })
}

async fn simulate(args: SimulateArgs) -> Result<u8> {
    let simulator = Simulator::start(
        SimulatorConfig {
            oauth: outreach_host::simulator::OAuthApp {
                users: vec![(args.user.clone(), "demo-password".into())],
                access_lifetime: Duration::from_secs(args.access_lifetime_secs.max(1)),
                mint_interval: Duration::from_secs(args.mint_interval_secs),
                ..outreach_host::simulator::OAuthApp::default()
            },
            prospect_ids: args.prospects.0..=args.prospects.1,
            rate_limit: args.rate_limit,
            rate_window: Duration::from_secs(args.rate_window_secs.max(1)),
            custom_fields: args.custom_fields.min(150),
            faults: Faults {
                error_share: args.error_share,
                latency: Duration::from_millis(args.latency_ms),
                drop_share: args.drop_share,
            },
            ..SimulatorConfig::default()
        },
        args.listen,
    )
    .await
    .with_context(|| format!("cannot listen on {}", args.listen))?;
    let token = simulator.issue_token(&args.user);
    println!("Outreach simulator: {}", simulator.api_base());
    println!("access token for {}: export {TOKEN_ENV}={token}", args.user);
    println!(
        "prospects: http://{}/sim/prospects   stats: http://{}/sim/stats",
        simulator.addr(),
        simulator.addr()
    );
    let app = outreach_host::simulator::OAuthApp::default();
    println!(
        "OAuth: {CLIENT_ID_ENV}={} {CLIENT_SECRET_ENV}={} outreach-host login --authorize-url {} --token-url {}   (user {}, password demo-password)",
        app.client_id,
        app.client_secret,
        simulator.authorize_url(),
        simulator.token_url(),
        args.user
    );
    tokio::signal::ctrl_c().await?;
    Ok(0)
}

fn print_summary(summary: &Summary, api_base: &str, json: bool) -> Result<()> {
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
    print_audiences(&summary.audiences);
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

fn print_audiences(audiences: &std::collections::BTreeMap<String, journal::Counts>) {
    if audiences.is_empty() {
        return;
    }
    let width = audiences.keys().map(String::len).max().unwrap_or(8).max(8);
    println!(
        "\n{:<width$}  {:>9}  {:>9}  {:>8}  {:>7}",
        "audience", "received", "delivered", "rejected", "skipped"
    );
    for (audience, c) in audiences {
        println!(
            "{audience:<width$}  {:>9}  {:>9}  {:>8}  {:>7}",
            c.received, c.delivered, c.rejected, c.skipped
        );
    }
}

fn print_failures(failures: &std::collections::BTreeMap<String, u64>) {
    if failures.is_empty() {
        return;
    }
    println!("\nrecords not delivered, by reason:");
    for (reason, count) in failures {
        println!("  {reason:<28} {count:>7}");
    }
}

/// `YYYY-MM-DD HH:MM:SS` (UTC) for an epoch-milliseconds time.
fn utc(ms: u64) -> String {
    outreach_host::format_utc(ms / 1000, ' ')
}

fn duration(run: &RunRecord) -> String {
    match run.ended_ms {
        Some(end) => format!(
            "{:.1} s",
            end.saturating_sub(run.started_ms) as f64 / 1000.0
        ),
        None => "-".into(),
    }
}

/// A run id, or `last`.
fn run_id(journal: &Journal, text: &str) -> Result<i64> {
    if text == "last" {
        return journal.last_run()?.context("the journal has no runs yet");
    }
    text.parse()
        .with_context(|| format!("{text:?} is not a run id (a number, or `last`)"))
}

fn letter_filter(journal: &Journal, which: &LetterArgs, all: bool) -> Result<LetterFilter> {
    Ok(LetterFilter {
        run: which
            .run
            .as_deref()
            .map(|r| run_id(journal, r))
            .transpose()?,
        code: which.code.clone(),
        ids: which.ids.clone(),
        include_replayed: all,
    })
}

fn runs_list(journal: &Journal, limit: usize, json: bool) -> Result<u8> {
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

fn runs_show(run: &RunRecord, json: bool) -> Result<u8> {
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
    print_audiences(&run.audiences);
    print_failures(&run.failures);
    if let Some(fatal) = &run.fatal {
        println!("\nstopped: {fatal}");
    }
    Ok(0)
}

fn letters_list(journal: &Journal, filter: &LetterFilter, table: bool) -> Result<u8> {
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

#[derive(serde::Deserialize)]
struct ClientFile {
    client_id: String,
    client_secret: String,
}

/// The OAuth application's id and secret: from `--client-file`, else the
/// environment — never from the command line.
fn app_credentials(args: &OAuthArgs) -> Result<AppCredentials> {
    if let Some(path) = &args.client_file {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let file: ClientFile = serde_json::from_str(&text).with_context(|| {
            format!(
                "{} must be {{\"client_id\": …, \"client_secret\": …}}",
                path.display()
            )
        })?;
        return Ok(AppCredentials {
            client_id: file.client_id,
            client_secret: file.client_secret,
        });
    }
    let var = |name: &str| {
        std::env::var(name)
            .ok()
            .filter(|v| !v.trim().is_empty())
            .with_context(|| format!("set {name} (or pass --client-file)"))
    };
    Ok(AppCredentials {
        client_id: var(CLIENT_ID_ENV)?,
        client_secret: var(CLIENT_SECRET_ENV)?,
    })
}

fn oauth_client(
    runtime: &Runtime,
    args: &OAuthArgs,
    redirect_uri: Option<String>,
    pkce: bool,
) -> Result<OAuthClient> {
    let descriptor = runtime.describe().oauth.clone();
    let settings = OAuthSettings {
        authorize_url: args
            .authorize_url
            .clone()
            .unwrap_or(descriptor.authorize_url),
        token_url: args.token_url.clone().unwrap_or(descriptor.token_url),
        // Refreshes send no redirect URI; any valid URL satisfies the client.
        redirect_uri: redirect_uri.unwrap_or_else(|| "http://127.0.0.1:8765/callback".into()),
        scopes: descriptor.scopes,
        app: app_credentials(args)?,
        pkce,
        min_interval_between_tokens: Duration::from_secs(
            args.min_token_interval
                .unwrap_or(u64::from(descriptor.min_seconds_between_tokens)),
        ),
        client_authentication: descriptor.client_authentication,
    };
    Ok(OAuthClient::new(settings)?)
}

async fn login(
    client: &OAuthClient,
    store: &TokenStore,
    account: &str,
    manual: bool,
    timeout: Duration,
) -> Result<u8> {
    let tokens = if manual {
        let (url, pending) = client.authorize_url();
        println!("Open this URL in a browser and log in:\n{url}");
        println!(
            "Then paste the address the browser was sent to (it starts with {}):",
            client.settings().redirect_uri
        );
        let mut line = String::new();
        std::io::stdin().read_line(&mut line)?;
        client
            .finish_login(pending, &Redirect::from_url(&line)?)
            .await?
    } else {
        let listener = RedirectListener::bind(&client.settings().redirect_uri).await?;
        let (url, pending) = client.authorize_url();
        println!("Open this URL in a browser and log in:\n{url}");
        std::io::stdout().flush()?;
        eprintln!("waiting for the redirect on {} …", listener.addr());
        let redirect = listener.wait(timeout).await?;
        client.finish_login(pending, &redirect).await?
    };
    store.put(account, &tokens)?;
    println!(
        "connected: account {account:?}, scope {}, access token expires in {}; tokens stored in {}",
        tokens.scope.as_deref().unwrap_or("(none given)"),
        expires_in(tokens.expires_at),
        store.path().display()
    );
    Ok(0)
}

fn expires_in(expires_at: Option<u64>) -> String {
    let Some(at) = expires_at else {
        return "(unknown)".into();
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    if at <= now {
        return "0 s (expired; it is refreshed on the next run)".into();
    }
    let left = at - now;
    format!(
        "{}h {:02}m {:02}s",
        left / 3600,
        left % 3600 / 60,
        left % 60
    )
}

fn auth_status(store: &TokenStore, account: Option<&str>) -> Result<u8> {
    let accounts = match account {
        Some(a) => vec![a.to_owned()],
        None => store.accounts()?,
    };
    if accounts.is_empty() {
        println!(
            "no account connected (token store {}); run `outreach-host login`",
            store.path().display()
        );
        return Ok(EXIT_FATAL);
    }
    for account in accounts {
        match store.get(&account) {
            Ok(tokens) => println!(
                "{account}: connected; access token expires in {}; refresh token {}; scope {}",
                expires_in(tokens.expires_at),
                if tokens.refresh_token.is_some() {
                    "stored"
                } else {
                    "missing"
                },
                tokens.scope.as_deref().unwrap_or("(none given)")
            ),
            Err(e) => {
                println!("{account}: not connected ({e})");
                return Ok(EXIT_FATAL);
            }
        }
    }
    Ok(0)
}
