//! `serve` and `ingest-key`: the service on a listener, with SIGHUP
//! reloading the destinations file and SIGTERM (or SIGINT) draining it.

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use outreach_host::clock::Clock;
use outreach_host::engine::Limits;
use outreach_host::oauth::TokenStore;
use outreach_host::service::{self, Environment, Service, keys};
use tokio::signal::unix::{SignalKind, signal};

use super::args::{ComponentArgs, ServeArgs};
use super::login::oauth_client;
use super::{EXIT_INVALID_CONFIG, TOKEN_ENV, tokio_runtime};

pub(crate) fn serve(component: ComponentArgs, store: TokenStore, args: ServeArgs) -> Result<u8> {
    let ServeArgs {
        destinations,
        listen,
        timeout_secs,
        run_length_secs,
        nats,
        worker,
        oauth,
    } = args;
    let nats = match nats {
        None => None,
        Some(url) => Some(service::NatsOptions {
            url,
            worker: worker_name(worker)?,
        }),
    };
    let env = Environment {
        default_component: super::component_source(component.component),
        cache_dir: component
            .cache_dir
            .or_else(outreach_host::engine::default_cache_dir),
        limits: Limits {
            memory_bytes: (component.guest_memory_mib as usize) << 20,
            call_deadline: Duration::from_millis(component.guest_deadline_ms),
        },
        token_store: store,
        fixed_token: std::env::var(TOKEN_ENV)
            .ok()
            .filter(|t| !t.trim().is_empty()),
        oauth_client: Box::new(move |runtime| {
            oauth_client(runtime, &oauth, None, false).map_err(|e| format!("{e:#}"))
        }),
        request_timeout: Duration::from_secs(timeout_secs),
        clock: Clock::system(),
        run_length: Duration::from_secs(run_length_secs),
        nats,
    };
    tokio_runtime()?.block_on(async move {
        let service = match Service::start(env, &destinations, listen).await {
            Ok(service) => service,
            Err(problems) => {
                eprintln!("{}: cannot serve:", destinations.display());
                for problem in problems.problems {
                    eprintln!("  {problem}");
                }
                return Ok(EXIT_INVALID_CONFIG);
            }
        };
        // Watched before anyone is told where it listens: a SIGHUP or a
        // SIGTERM sent as soon as it answers must not find the default
        // action (which ends the process).
        let mut hangup = signal(SignalKind::hangup()).context("cannot watch SIGHUP")?;
        let mut terminate = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
        let listener = tokio::net::TcpListener::bind(service.listen())
            .await
            .with_context(|| format!("cannot listen on {}", service.listen()))?;
        let address = listener.local_addr()?;
        service.bound_to(address);
        {
            let mut out = std::io::stdout().lock();
            writeln!(out, "listening on http://{address}")?;
            out.flush()?;
        }
        let stopping = Arc::new(tokio::sync::Notify::new());
        let server = {
            let stopping = stopping.clone();
            tokio::spawn(service::listener::serve(
                listener,
                service::router(service.clone()),
                service.listener_limits(),
                async move { stopping.notified().await },
            ))
        };
        loop {
            tokio::select! {
                _ = hangup.recv() => match service.reload().await {
                    Ok(()) => eprintln!("{}: reloaded", destinations.display()),
                    Err(problems) => tracing::error!(
                        "{}: not reloaded, the running destinations are unchanged:\n{problems}",
                        destinations.display()
                    ),
                },
                _ = terminate.recv() => break,
                _ = tokio::signal::ctrl_c() => break,
            }
        }
        eprintln!("draining: intake answers 503, requests in flight finish");
        service.drain().await;
        stopping.notify_one();
        server.await.context("the listener failed")?;
        if service.worker().is_some() {
            eprintln!("stopped; the partitions were handed over to the other workers");
        } else {
            eprintln!("stopped; queued updates stay in the journals");
        }
        Ok(0)
    })
}

/// The worker's name: as given (checked), else host name and process id.
fn worker_name(given: Option<String>) -> Result<String> {
    let valid = |name: &str| {
        !name.is_empty()
            && name.len() <= 64
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    match given {
        Some(name) => {
            anyhow::ensure!(
                valid(&name),
                "--worker {name:?}: use 1-64 letters, digits, `-` and `_`"
            );
            Ok(name)
        }
        None => {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
            let host: String = host
                .trim()
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || c == '-' {
                        c
                    } else {
                        '_'
                    }
                })
                .take(40)
                .collect();
            let host = if host.is_empty() {
                "worker".into()
            } else {
                host
            };
            Ok(format!("{host}-{}", std::process::id()))
        }
    }
}

/// Prints a new key and its hash, or the hash of a key on standard input.
pub(crate) fn ingest_key(hash_stdin: bool) -> Result<u8> {
    if hash_stdin {
        let mut key = String::new();
        std::io::stdin()
            .read_to_string(&mut key)
            .context("cannot read the key from standard input")?;
        let key = key.trim();
        anyhow::ensure!(!key.is_empty(), "no key on standard input");
        println!("{}", keys::KeyHash::of(key));
        return Ok(0);
    }
    let (key, hash) = keys::new_key();
    println!("key:  {key}");
    println!("hash: {hash}");
    eprintln!("give the key to the producer; put the hash in the destinations file's ingest_keys");
    Ok(0)
}

/// Prints the PHC hash (argon2id) of a password read from standard input.
pub(crate) fn admin_password() -> Result<u8> {
    use argon2::PasswordHasher;
    use rand::RngCore;
    let mut password = String::new();
    std::io::stdin()
        .read_to_string(&mut password)
        .context("cannot read the password from standard input")?;
    let password = password.trim_end_matches(['\n', '\r']);
    anyhow::ensure!(!password.is_empty(), "no password on standard input");
    let mut salt = [0u8; 16];
    rand::rng().fill_bytes(&mut salt);
    let salt = argon2::password_hash::SaltString::encode_b64(&salt)
        .map_err(|e| anyhow::anyhow!("cannot make a salt: {e}"))?;
    let hash = argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map_err(|e| anyhow::anyhow!("cannot hash the password: {e}"))?;
    println!("{hash}");
    Ok(0)
}
