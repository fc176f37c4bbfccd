//! What one Ctrl-C (SIGINT) does to a busy `run`: it stops within
//! moments, whatever the run was waiting for — the alerts its end fires,
//! or the mint interval before a refresh a 401 forced (no token is minted
//! after the stop).

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{loopback, none_left_running, scratch, write};
use outreach_host::oauth::{TokenSet, TokenStore};
use outreach_simulator::{Faults, OAuthApp, Simulator, SimulatorConfig};

const ADA: &str = "ada@example.com";

fn config() -> String {
    common::one_audience_config("signals", "aud-webinar", 5)
}

fn profiles(n: u64) -> String {
    (1..=n)
        .map(|id| common::member_profile("aud-webinar", id, &format!("Name{id}")) + "\n")
        .collect()
}

/// Sends SIGINT to `child` and waits for it: how long it took to exit.
fn interrupt(child: &mut Child) -> Duration {
    let signalled = Instant::now();
    // SAFETY: signalling our own child process.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGINT);
    }
    loop {
        if child.try_wait().unwrap().is_some() {
            return signalled.elapsed();
        }
        if signalled.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            panic!("one SIGINT did not end the run within 20 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(Instant::now() < deadline, "never: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_run_stopped_by_one_signal_waits_only_a_moment_for_its_own_alert() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let simulator = runtime
        .block_on(Simulator::start(
            SimulatorConfig {
                prospect_ids: 1..=500,
                faults: Faults {
                    latency: Duration::from_millis(200),
                    ..Faults::default()
                },
                ..SimulatorConfig::default()
            },
            loopback(),
        ))
        .unwrap();
    let dir = scratch("signals", "alert");
    let config = write(&dir, "config.json", &config());
    let input = write(&dir, "profiles.ndjson", &profiles(500));
    let mut child = Command::new(env!("CARGO_BIN_EXE_outreach-host"))
        .arg("--journal")
        .arg(dir.join("journal.sqlite"))
        .arg("--cache-dir")
        .arg(dir.join("cache"))
        .args(["run", "--config", &config, "--input", &input])
        .args(["--api-base", &simulator.api_base()])
        .args([
            "--alert-command",
            "sleep 600.5317",
            "--alert-timeout-secs",
            "600",
        ])
        .env("OUTREACH_ACCESS_TOKEN", simulator.issue_token(ADA))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for("the run's first requests", || {
        simulator.stats().requests >= 5
    });
    let took = interrupt(&mut child);
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert!(none_left_running("sleep 600.5317"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_signal_during_a_refresh_a_401_forced_stops_at_once_and_mints_nothing() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let simulator = runtime
        .block_on(Simulator::start(
            SimulatorConfig {
                prospect_ids: 1..=50,
                oauth: OAuthApp {
                    users: vec![(ADA.into(), "pw".into())],
                    ..OAuthApp::default()
                },
                ..SimulatorConfig::default()
            },
            loopback(),
        ))
        .unwrap();
    let dir = scratch("signals", "refresh");
    let config = write(&dir, "config.json", &config());
    let input = write(&dir, "profiles.ndjson", &profiles(50));
    // Tokens minted a moment ago, whose access token the API no longer
    // takes: the first request gets 401, and the refresh it forces must
    // wait out the 60 s between mints.
    let (_, refresh) = simulator.grant_tokens(ADA, "prospects.all");
    let now = outreach_host::clock::now_ms();
    let store_path = dir.join("tokens.json");
    TokenStore::new(&store_path)
        .put(
            ADA,
            &TokenSet {
                access_token: "revoked-access-token".into(),
                refresh_token: Some(refresh),
                expires_at: Some(now / 1000 + 7_200),
                scope: Some("prospects.all".into()),
                obtained_at_ms: now,
            },
        )
        .unwrap();
    let mints = simulator.mints_of(ADA).len();
    let mut child = Command::new(env!("CARGO_BIN_EXE_outreach-host"))
        .arg("--journal")
        .arg(dir.join("journal.sqlite"))
        .arg("--cache-dir")
        .arg(dir.join("cache"))
        .arg("--token-store")
        .arg(&store_path)
        .args([
            "run",
            "--account",
            ADA,
            "--config",
            &config,
            "--input",
            &input,
        ])
        .args(["--api-base", &simulator.api_base()])
        .args(["--token-url", &simulator.token_url()])
        .args(["--min-token-interval", "60"])
        .env("OUTREACH_CLIENT_ID", "sim-client-id")
        .env("OUTREACH_CLIENT_SECRET", "sim-client-secret")
        .env_remove("OUTREACH_ACCESS_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for("a 401", || simulator.stats().unauthorized >= 1);
    std::thread::sleep(Duration::from_millis(300));
    let took = interrupt(&mut child);
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert_eq!(
        simulator.mints_of(ADA).len(),
        mints,
        "a token was minted after the stop"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
