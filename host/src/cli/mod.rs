//! The `outreach-host` command line: arguments ([`args`]), one module per
//! command, and the rendering of their output ([`render`]).

pub(crate) mod args;
mod cluster;
mod deliver;
mod demo;
mod history;
mod login;
mod plan;
mod render;
mod serve;
mod simulate;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use destination_types::ConfigError;
use outreach_host::delivery::Input;
use outreach_host::engine::{self, ComponentSource, Configured, Limits, Runtime};
use outreach_host::journal::{self, Journal};
use outreach_host::oauth::{self, TokenStore};

use args::{AuthCommand, Cli, Command, ComponentArgs, LettersCommand, RunsCommand};
use deliver::send_updates;
use demo::demo;
use history::{letter_filter, letters_list, run_id, runs_list, runs_show};
use login::{auth_status, login, oauth_client};
use plan::dry_run;
use simulate::simulate;

/// Exit codes: 0 everything delivered, 1 fatal error (or the run stopped),
/// 2 invalid configuration, 3 some records failed (see the dead letters).
pub(crate) const EXIT_FATAL: u8 = 1;
pub(crate) const EXIT_INVALID_CONFIG: u8 = 2;
pub(crate) const EXIT_PARTIAL: u8 = 3;

/// Environment variable holding a fixed access token for `run` (instead of
/// the token store).
pub(crate) const TOKEN_ENV: &str = "OUTREACH_ACCESS_TOKEN";
/// The OAuth application's credentials.
pub(crate) const CLIENT_ID_ENV: &str = "OUTREACH_CLIENT_ID";
pub(crate) const CLIENT_SECRET_ENV: &str = "OUTREACH_CLIENT_SECRET";

/// The Outreach component, built into the binary: copying the one
/// binary is a complete install (`--component` runs another).
pub(crate) const EMBEDDED_COMPONENT: ComponentSource = ComponentSource::Embedded {
    name: "the built-in Outreach component",
    bytes: include_bytes!(env!("OUTREACH_COMPONENT_PATH")),
};

/// The component `--component` names, else the built-in one.
pub(crate) fn component_source(component: Option<PathBuf>) -> ComponentSource {
    component.map_or(EMBEDDED_COMPONENT, ComponentSource::File)
}

pub(crate) fn load_runtime(args: ComponentArgs) -> Result<Runtime> {
    let source = component_source(args.component);
    let cache = args.cache_dir.or_else(engine::default_cache_dir);
    let limits = Limits {
        memory_bytes: (args.guest_memory_mib as usize) << 20,
        call_deadline: Duration::from_millis(args.guest_deadline_ms),
    };
    Ok(Runtime::load_from(&source, cache.as_deref(), limits)?)
}

pub(crate) fn tokio_runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

pub(crate) fn token_store(args: &ComponentArgs) -> Result<TokenStore> {
    let path = args
        .token_store
        .clone()
        .or_else(oauth::store::default_store_path)
        .context("no token store location: set OUTREACH_TOKEN_STORE or HOME")?;
    Ok(TokenStore::new(path))
}

pub(crate) fn journal_path(args: &ComponentArgs) -> Result<PathBuf> {
    args.journal
        .clone()
        .or_else(journal::default_journal_path)
        .context("no journal location: set OUTREACH_JOURNAL or HOME")
}

/// Commands that only print (`runs`, `dead-letters list`, `plan`,
/// `describe`) end quietly when their reader goes away (`| head`), as
/// other command-line tools do. Delivering commands keep SIGPIPE ignored:
/// a closed connection must be an error there, not the end of the process.
pub(crate) fn die_quietly_on_closed_pipe() {
    #[cfg(unix)]
    // SAFETY: restoring the default disposition of SIGPIPE, before any
    // thread is started, touches no Rust state.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// Runs the command; its exit code. The component is loaded only by the
/// commands that run it.
pub(crate) fn run(cli: Cli) -> Result<u8> {
    let Cli {
        component, command, ..
    } = cli;
    let store = token_store(&component)?;
    let max_record_bytes = component.max_record_bytes;
    let journal_file = journal_path(&component)?;
    if matches!(
        command,
        Command::Runs { .. }
            | Command::DeadLetters {
                command: LettersCommand::List { .. }
            }
            | Command::Plan { .. }
            | Command::Describe
            | Command::Cluster { .. }
    ) {
        die_quietly_on_closed_pipe();
    }
    let service_component = component.clone();
    let runtime = move || load_runtime(component);
    match command {
        Command::Serve(args) => serve::serve(service_component, store, args),
        Command::IngestKey { hash } => serve::ingest_key(hash),
        Command::AdminPassword => serve::admin_password(),
        Command::Simulate(args) => tokio_runtime()?.block_on(simulate(args)),
        Command::Cluster { nats, command } => {
            tokio_runtime()?.block_on(cluster::run(&nats, &store, command))
        }
        Command::Auth {
            command: AuthCommand::Status { account },
        } => auth_status(&store, account.as_deref()),
        Command::Logout { account } => {
            if store.remove(&account)? {
                println!(
                    "logged out: tokens of {account:?} removed from {}",
                    store.path().display()
                );
            } else {
                println!("{account:?} was not logged in");
            }
            Ok(0)
        }
        Command::Runs {
            command,
            limit,
            json,
        } => {
            let journal = Journal::open_existing(&journal_file)?;
            match command {
                None | Some(RunsCommand::List) => runs_list(&journal, limit, json),
                Some(RunsCommand::Show {
                    run,
                    json: show_json,
                }) => {
                    let id = run_id(&journal, &run)?;
                    runs_show(&journal.run(id)?, json || show_json)
                }
            }
        }
        Command::DeadLetters {
            command: LettersCommand::List { which, all, table },
        } => {
            let journal = Journal::open_existing(&journal_file)?;
            let filter = letter_filter(&journal, &which, all)?;
            letters_list(&journal, &filter, table)
        }
        Command::Describe => {
            println!("{}", serde_json::to_string_pretty(runtime()?.describe())?);
            Ok(0)
        }
        Command::Validate { config } => {
            let Some(_) = configure(&runtime()?, &config)? else {
                return Ok(EXIT_INVALID_CONFIG);
            };
            println!("{}: valid", config.display());
            Ok(0)
        }
        Command::Plan { config, input } => dry_run(&runtime()?, &config, &input, max_record_bytes),
        Command::Run {
            send,
            input,
            dry_run: true,
            ..
        } => dry_run(&runtime()?, &send.config, &input, max_record_bytes),
        Command::Run {
            input,
            from_start,
            dry_run: false,
            send,
        } => {
            let runtime = runtime()?;
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
            let runtime = runtime()?;
            let journal = Arc::new(Journal::open(&journal_file)?);
            send_updates(&runtime, store, send, journal, Input::nothing(), "resume")
        }
        Command::DeadLetters {
            command: LettersCommand::Replay { which, force, send },
        } => {
            let runtime = runtime()?;
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
            let client = oauth_client(&runtime()?, &oauth, Some(redirect_uri), pkce)?;
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
        } => tokio_runtime()?.block_on(demo(
            &runtime()?,
            &config,
            &input,
            &delivery,
            max_record_bytes,
        )),
    }
}

/// The configured destination, or `None` after printing its errors.
pub(crate) fn configure(runtime: &Runtime, path: &Path) -> Result<Option<Configured>> {
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

pub(crate) fn report_config_errors(path: &Path, errors: &[ConfigError]) {
    eprintln!("{}: invalid configuration", path.display());
    for e in errors {
        eprintln!("  {}", e.message);
    }
}
