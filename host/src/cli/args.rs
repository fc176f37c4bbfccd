//! The command line's arguments (clap).

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(
    version,
    about = "Reference host for profile-destination WebAssembly components"
)]
pub(crate) struct Cli {
    /// How log lines on stderr are written (the level comes from RUST_LOG,
    /// `warn` by default): `text` for people, `json` (one object per line)
    /// for log collectors.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub(crate) log_format: LogFormat,
    #[command(flatten)]
    pub(crate) component: ComponentArgs,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum LogFormat {
    Text,
    Json,
}

#[derive(Args, Clone)]
pub(crate) struct ComponentArgs {
    /// Destination component to run (default: the Outreach component built
    /// into this binary).
    #[arg(long, global = true, value_name = "WASM")]
    pub(crate) component: Option<PathBuf>,
    /// Directory for compiled components (default: $OUTREACH_CACHE_DIR,
    /// $XDG_CACHE_HOME/outreach-host or ~/.cache/outreach-host).
    #[arg(long, global = true, value_name = "DIR")]
    pub(crate) cache_dir: Option<PathBuf>,
    /// Largest linear memory a component instance may use, in MiB.
    #[arg(long, global = true, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub(crate) guest_memory_mib: u32,
    /// Longest a single call into the component may run, in milliseconds.
    #[arg(long, global = true, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(10..=600_000))]
    pub(crate) guest_deadline_ms: u64,
    /// Token store file (default: $OUTREACH_TOKEN_STORE,
    /// $XDG_CONFIG_HOME/outreach-host/tokens.json or
    /// ~/.config/outreach-host/tokens.json).
    #[arg(long, global = true, value_name = "FILE")]
    pub(crate) token_store: Option<PathBuf>,
    /// Records (input lines) longer than this many bytes are refused as
    /// `record-too-large` record errors, without being read into memory.
    #[arg(long, global = true, default_value_t = outreach_host::input::DEFAULT_MAX_RECORD_BYTES, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(64..=1 << 30))]
    pub(crate) max_record_bytes: usize,
    /// Journal of queued updates, dead letters and run history (default:
    /// $OUTREACH_JOURNAL, $XDG_STATE_HOME/outreach-host/journal.sqlite or
    /// ~/.local/state/outreach-host/journal.sqlite).
    #[arg(long, global = true, value_name = "FILE")]
    pub(crate) journal: Option<PathBuf>,
}

/// Which OAuth application and endpoints to use.
#[derive(Args)]
pub(crate) struct OAuthArgs {
    /// JSON file with {"client_id", "client_secret"} (default: the
    /// OUTREACH_CLIENT_ID and OUTREACH_CLIENT_SECRET environment variables).
    #[arg(long, value_name = "FILE")]
    pub(crate) client_file: Option<PathBuf>,
    /// Override the component's authorize URL (e.g. the simulator's).
    #[arg(long, value_name = "URL")]
    pub(crate) authorize_url: Option<String>,
    /// Override the component's token URL (e.g. the simulator's).
    #[arg(long, value_name = "URL")]
    pub(crate) token_url: Option<String>,
    /// Override the component's minimum seconds between new tokens.
    #[arg(long, value_name = "SECONDS")]
    pub(crate) min_token_interval: Option<u64>,
    /// Ask for this scope instead of the component's (repeat for several):
    /// matching prospects by email needs `prospects.all`, syncing accounts
    /// `accounts.all` too.
    #[arg(long = "scope", value_name = "SCOPE")]
    pub(crate) scopes: Vec<String>,
}

#[derive(Args)]
pub(crate) struct DeliveryArgs {
    /// Requests in flight at once.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub(crate) concurrency: u32,
    /// Attempts per request for transient failures before giving up.
    #[arg(long, default_value_t = 6, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub(crate) max_attempts: u32,
    /// HTTP timeout per request, in seconds.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=600))]
    pub(crate) timeout_secs: u64,
    /// Also export this run's dead letters to FILE (NDJSON); they are kept
    /// in the journal either way (`dead-letters list`).
    #[arg(long, value_name = "FILE")]
    pub(crate) dead_letters: Option<PathBuf>,
    /// Print the summary as JSON.
    #[arg(long)]
    pub(crate) json: bool,
    /// POST a JSON alert to this URL when a run ends with failures, the
    /// account needs a new login, or delivery stalls.
    #[arg(long, value_name = "URL")]
    pub(crate) alert_webhook: Option<String>,
    /// Run this shell command for the same alerts (the alert as JSON on its
    /// standard input, the event in $OUTREACH_ALERT).
    #[arg(long, value_name = "COMMAND")]
    pub(crate) alert_command: Option<String>,
    /// Requests allowed per rate-limit window (default: the component's
    /// declared policy; Outreach: 10,000 per hour per user).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) rate_limit: Option<u32>,
    /// The rate-limit window in seconds (default: the component's).
    #[arg(long, value_name = "SECONDS", value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) rate_window_secs: Option<u32>,
    /// Seconds an alert may take: the webhook's tries together, and the
    /// command (killed, with its children, when the time is up).
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub(crate) alert_timeout_secs: u64,
    /// Seconds without any update reaching a verdict, while updates are
    /// queued, before a `stalled` alert.
    #[arg(long, default_value_t = 900, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) stall_alert_secs: u64,
}

/// Where updates go and with which credentials.
#[derive(Args)]
pub(crate) struct SendArgs {
    #[arg(long, value_name = "FILE")]
    pub(crate) config: PathBuf,
    /// API base URL (default: the component's, https://api.outreach.io/api/v2).
    #[arg(long, value_name = "URL")]
    pub(crate) api_base: Option<String>,
    /// Account whose tokens to use (default: the configuration's
    /// `account`, else "default").
    #[arg(long)]
    pub(crate) account: Option<String>,
    #[command(flatten)]
    pub(crate) oauth: OAuthArgs,
    #[command(flatten)]
    pub(crate) delivery: DeliveryArgs,
}

/// `serve`: the always-on service.
#[derive(Args)]
pub(crate) struct ServeArgs {
    /// The destinations file (TOML): settings, accounts, destinations.
    #[arg(long, value_name = "FILE")]
    pub(crate) destinations: PathBuf,
    /// Address to listen on (default: the file's `listen`, else
    /// 127.0.0.1:8088). Anything but loopback needs ingest keys.
    #[arg(long, value_name = "ADDR")]
    pub(crate) listen: Option<SocketAddr>,
    /// HTTP timeout per API request, in seconds.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=600))]
    pub(crate) timeout_secs: u64,
    /// How long a dataflow run collects records, in seconds (one run per
    /// destination per period).
    #[arg(long, default_value_t = 3_600, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) run_length_secs: u64,
    /// Run as a worker of a NATS JetStream cluster (server URLs,
    /// comma-separated) instead of over journals: any number of workers
    /// share the file's destinations (see the file's `[cluster]`).
    #[arg(long, value_name = "URL")]
    pub(crate) nats: Option<String>,
    /// This worker's name in the cluster (default: host name and process
    /// id); letters, digits, `-` and `_`.
    #[arg(long, value_name = "NAME", requires = "nats")]
    pub(crate) worker: Option<String>,
    #[command(flatten)]
    pub(crate) oauth: OAuthArgs,
}

#[derive(Subcommand)]
pub(crate) enum Command {
    /// Run as a service: deliver continuously for every destination of a
    /// destinations file, taking records over HTTP
    /// (POST /v1/destinations/NAME/records); SIGHUP reloads the file,
    /// SIGTERM drains and stops.
    Serve(ServeArgs),
    /// Make a new ingest key: prints the key (for producers) and its hash
    /// (for the destinations file, which never holds the key itself).
    IngestKey {
        /// Hash a key read from standard input instead.
        #[arg(long)]
        hash: bool,
    },
    /// Hashes the status page's password, read from standard input, for
    /// the destinations file's `[admin] password_hash`.
    AdminPassword,
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
        #[arg(long, default_value = outreach_host::oauth::DEFAULT_REDIRECT_URI)]
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
    /// A JetStream cluster's shared state (`serve --nats`): runs, dead
    /// letters, tokens, leases.
    Cluster {
        /// NATS server URLs, comma-separated.
        #[arg(long, value_name = "URL")]
        nats: String,
        #[command(subcommand)]
        command: ClusterCommand,
    },
}

#[derive(Subcommand)]
pub(crate) enum ClusterCommand {
    /// Hourly runs per destination, every worker's counts added up.
    Runs {
        #[arg(long, default_value_t = 20)]
        limit: usize,
        #[arg(long)]
        json: bool,
    },
    /// Dead letters, one JSON line each, oldest first (the id is the
    /// letter's sequence in the letters stream).
    DeadLetters {
        /// Only this destination's.
        #[arg(long)]
        destination: Option<String>,
        /// At most this many, the newest.
        #[arg(long, default_value_t = 1_000)]
        limit: usize,
    },
    /// Publish the records of dead letters to the intake stream again:
    /// they are planned with the workers' current configuration and go
    /// after every record already queued for their account.
    Replay {
        /// Letter ids (from `cluster dead-letters`).
        #[arg(long = "id", required = true)]
        ids: Vec<u64>,
    },
    /// Move an account's tokens from the token store (`outreach-host login`)
    /// into the cluster; they are removed from the store, whose refresh
    /// token would otherwise race the cluster's.
    ImportTokens {
        #[arg(long, default_value = "default")]
        account: String,
    },
    /// Which worker holds which partition, and what waits in each.
    Status {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
pub(crate) enum RunsCommand {
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
pub(crate) struct LetterArgs {
    /// Only those of this run (a run id, or `last`).
    #[arg(long)]
    pub(crate) run: Option<String>,
    /// Only those with this reason code (e.g. `validation-error`, `prospect-not-found`, `retries-exhausted`).
    #[arg(long)]
    pub(crate) code: Option<String>,
    /// Only these letters (repeatable).
    #[arg(long = "id")]
    pub(crate) ids: Vec<i64>,
}

// Parsed once per process: the size of a variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
pub(crate) enum LettersCommand {
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
pub(crate) enum AuthCommand {
    /// Connected / expires-in / scope for each account (or one).
    Status {
        #[arg(long)]
        account: Option<String>,
    },
}

#[derive(Args)]
pub(crate) struct SimulateArgs {
    #[arg(long, default_value = "127.0.0.1:8089")]
    pub(crate) listen: SocketAddr,
    /// Seeded prospect ids, `FIRST-LAST`.
    #[arg(long, default_value = "1-10000", value_parser = parse_id_range)]
    pub(crate) prospects: (u64, u64),
    /// Requests per user per window.
    #[arg(long, default_value_t = 10_000)]
    pub(crate) rate_limit: u32,
    /// Rate-limit window in seconds.
    #[arg(long, default_value_t = 3_600)]
    pub(crate) rate_window_secs: u64,
    /// Fixed rate-limit windows (starting at multiples of the length, every
    /// request counted, 429s included) instead of windows starting with a
    /// user's first request.
    #[arg(long)]
    pub(crate) fixed_window: bool,
    /// Write `X-RateLimit-Reset` rounded down to the whole second (up to a
    /// second before the window turns), as some servers do; by default it
    /// is rounded up.
    #[arg(long)]
    pub(crate) reset_rounded_down: bool,
    /// Run the server's clock this many milliseconds ahead of the real one
    /// (negative: behind): its windows turn, and its resets are named, on
    /// that clock.
    #[arg(long, default_value_t = 0, allow_hyphen_values = true)]
    pub(crate) clock_offset_ms: i64,
    /// Custom fields the account has (custom1..=N).
    #[arg(long, default_value_t = 150)]
    pub(crate) custom_fields: u32,
    /// Share of updates answered 500/503 (0..1).
    #[arg(long, default_value_t = 0.0)]
    pub(crate) error_share: f64,
    /// Share of updates whose connection is dropped after applying (0..1).
    #[arg(long, default_value_t = 0.0)]
    pub(crate) drop_share: f64,
    /// Added latency per update, in milliseconds.
    #[arg(long, default_value_t = 0)]
    pub(crate) latency_ms: u64,
    /// User the printed access token belongs to (password: demo-password).
    #[arg(long, default_value = "demo@example.com")]
    pub(crate) user: String,
    /// Access token lifetime in seconds (Outreach: 7200).
    #[arg(long, default_value_t = 7_200)]
    pub(crate) access_lifetime_secs: u64,
    /// Minimum seconds between new tokens per user (Outreach: 60).
    #[arg(long, default_value_t = 60)]
    pub(crate) mint_interval_secs: u64,
}

pub(crate) fn parse_id_range(text: &str) -> Result<(u64, u64), String> {
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
