//! `outreach-host`: run a profile-destination component from the command line.

use std::io::{BufRead, BufWriter, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use destination_types::{ConfigError, PlanOutcome};
use outreach_host::delivery::{self, Credentials, DeliveryOptions, StaticToken, Summary};
use outreach_host::engine::{self, Destination, Limits, Runtime};
use outreach_host::http::ApiClient;
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
    /// Where to write dead letters (NDJSON: record, request, response, reason).
    #[arg(long, value_name = "FILE", default_value = "dead-letters.ndjson")]
    dead_letters: PathBuf,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
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
    Run {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// NDJSON profiles; `-` for standard input.
        #[arg(long, value_name = "FILE", default_value = "-")]
        input: PathBuf,
        /// API base URL (default: the component's, https://api.outreach.io/api/v2).
        #[arg(long, value_name = "URL")]
        api_base: Option<String>,
        /// Plan and print the requests; send nothing.
        #[arg(long)]
        dry_run: bool,
        /// Account whose tokens to use (default: the configuration's
        /// `account`, else "default").
        #[arg(long)]
        account: Option<String>,
        #[command(flatten)]
        oauth: OAuthArgs,
        #[command(flatten)]
        delivery: DeliveryArgs,
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
            eprintln!("error: {e:#}");
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

fn run(cli: Cli) -> Result<u8> {
    let store = token_store(&cli.component)?;
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
        Command::Plan { config, input } => dry_run(&runtime, &config, &input),
        Command::Run {
            config,
            input,
            dry_run: true,
            ..
        } => dry_run(&runtime, &config, &input),
        Command::Run {
            config,
            input,
            api_base,
            dry_run: false,
            account,
            oauth,
            delivery,
        } => {
            let api_base = match api_base {
                Some(base) => base,
                None => runtime.describe().default_api_base.clone(),
            };
            let tokio = tokio_runtime()?;
            if let Some(token) = std::env::var(TOKEN_ENV)
                .ok()
                .filter(|t| !t.trim().is_empty())
            {
                return tokio.block_on(deliver(
                    &runtime,
                    &config,
                    &input,
                    &api_base,
                    &StaticToken(token),
                    &delivery,
                ));
            }
            let account = match account {
                Some(a) => a,
                None => account_in_config(&config)?,
            };
            let client = oauth_client(&runtime, &oauth, None, false)?;
            let credentials = OAuthCredentials::load(client, store, &account)?;
            tokio.block_on(deliver(
                &runtime,
                &config,
                &input,
                &api_base,
                &credentials,
                &delivery,
            ))
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
        } => tokio_runtime()?.block_on(demo(&runtime, &config, &input, &delivery)),
        Command::Simulate(_) | Command::Auth { .. } | Command::Logout { .. } => {
            unreachable!("handled above")
        }
    }
}

/// The configured destination, or `None` after printing its errors.
fn configure<'r>(runtime: &'r Runtime, path: &Path) -> Result<Option<Destination<'r>>> {
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

fn open_input(input: &Path) -> Result<Box<dyn BufRead>> {
    Ok(if input == Path::new("-") {
        Box::new(std::io::stdin().lock())
    } else {
        Box::new(std::io::BufReader::new(
            std::fs::File::open(input)
                .with_context(|| format!("cannot open input {}", input.display()))?,
        ))
    })
}

fn dry_run(runtime: &Runtime, config: &Path, input: &Path) -> Result<u8> {
    let Some(mut destination) = configure(runtime, config)? else {
        return Ok(EXIT_INVALID_CONFIG);
    };
    let planned = delivery::plan_input(&mut destination, open_input(input)?, 500)?;
    let mut out = BufWriter::new(std::io::stdout().lock());
    let (mut sends, mut skips, mut invalid) = (0usize, 0usize, 0usize);
    for (line, _, outcome) in &planned {
        match outcome {
            PlanOutcome::Send(_) => sends += 1,
            PlanOutcome::Skip(_) => skips += 1,
            PlanOutcome::Invalid(_) => invalid += 1,
        }
        writeln!(
            out,
            "{}",
            serde_json::json!({ "line": line, "outcome": outcome })
        )?;
    }
    out.flush()?;
    eprintln!(
        "dry run: {sends} requests planned, nothing sent; {skips} records skipped, {invalid} invalid"
    );
    Ok(if invalid > 0 { EXIT_PARTIAL } else { 0 })
}

fn delivery_options(args: &DeliveryArgs) -> DeliveryOptions {
    DeliveryOptions {
        concurrency: args.concurrency as usize,
        max_attempts: args.max_attempts,
        dead_letters: Some(args.dead_letters.clone()),
        progress: !args.json,
        ..DeliveryOptions::default()
    }
}

async fn deliver<C: Credentials>(
    runtime: &Runtime,
    config: &Path,
    input: &Path,
    api_base: &str,
    credentials: &C,
    args: &DeliveryArgs,
) -> Result<u8> {
    let Some(mut destination) = configure(runtime, config)? else {
        return Ok(EXIT_INVALID_CONFIG);
    };
    let descriptor = runtime.describe();
    let limiter = Limiter::new(&descriptor.rate_limit)?;
    let api = ApiClient::new(api_base, Duration::from_secs(args.timeout_secs))?;
    let summary = delivery::run(
        &mut destination,
        &api,
        &limiter,
        credentials,
        open_input(input)?,
        &delivery_options(args),
    )
    .await?;
    print_summary(&summary, api.base().as_str(), args.json)?;
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

async fn demo(runtime: &Runtime, config: &Path, input: &Path, args: &DeliveryArgs) -> Result<u8> {
    if !input.is_file() {
        bail!(
            "{} not found: run the demo from the repository root",
            input.display()
        );
    }
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
    // The example data contains bad records on purpose: the demo succeeds
    // when the run completes, whatever it rejected.
    let code = deliver(
        runtime,
        config,
        input,
        &simulator.api_base(),
        &StaticToken(token),
        args,
    )
    .await?;
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
        "{} of {} records delivered to {api_base} in {:.1} s: {} rejected, {} skipped, {} not sent",
        summary.delivered,
        summary.received,
        summary.elapsed_ms as f64 / 1000.0,
        summary.rejected,
        summary.skipped,
        summary.not_sent
    );
    println!(
        "{} requests sent, {} rate-limited (waited out), {} retries, {} credential refreshes",
        summary.requests_sent, summary.rate_limited, summary.retries, summary.credential_refreshes
    );
    if !summary.audiences.is_empty() {
        let width = summary
            .audiences
            .keys()
            .map(String::len)
            .max()
            .unwrap_or(8)
            .max(8);
        println!(
            "\n{:<width$}  {:>9}  {:>9}  {:>8}  {:>7}",
            "audience", "received", "delivered", "rejected", "skipped"
        );
        for (audience, c) in &summary.audiences {
            println!(
                "{audience:<width$}  {:>9}  {:>9}  {:>8}  {:>7}",
                c.received, c.delivered, c.rejected, c.skipped
            );
        }
    }
    if !summary.failures.is_empty() {
        println!("\nrecords not delivered, by reason:");
        for (reason, count) in &summary.failures {
            println!("  {reason:<28} {count:>7}");
        }
    }
    if let Some(path) = &summary.dead_letters
        && (summary.rejected > 0 || summary.not_sent > 0 || summary.skipped > 0)
    {
        println!("dead letters: {}", path.display());
    }
    if let Some(fatal) = &summary.fatal {
        println!("\nrun stopped: {fatal}");
    }
    Ok(())
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
    };
    Ok(OAuthClient::new(settings)?)
}

/// The `account` field of a destination configuration, else "default".
fn account_in_config(path: &Path) -> Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read configuration {}", path.display()))?;
    let value: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    Ok(value["account"].as_str().unwrap_or("default").to_owned())
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
