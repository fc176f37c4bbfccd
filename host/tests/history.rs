//! The run history, dead letters, replay and alerts, driven through the
//! `outreach-host` command against the simulator.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use outreach_simulator::{Simulator, SimulatorConfig};
use serde_json::{Value, json};

mod common;
use common::{Cli, loopback, none_left_running, write};

fn scratch(name: &str) -> PathBuf {
    common::scratch("history", name)
}

fn config(mapping_id: u32) -> String {
    common::one_audience_config("history", "aud-webinar", mapping_id)
}

fn profile(id: u64) -> String {
    common::member_profile("aud-webinar", id, &format!("Name{id}"))
}

#[test]
fn runs_dead_letters_and_replay_after_fixing_a_mapping_id() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    // The account has 10 custom fields: Mapping ID 33 is refused.
    let simulator = runtime
        .block_on(Simulator::start(
            SimulatorConfig {
                prospect_ids: 1..=100,
                custom_fields: 10,
                ..SimulatorConfig::default()
            },
            loopback(),
        ))
        .unwrap();
    let dir = scratch("replay");
    let cli = Cli {
        dir: dir.clone(),
        token: simulator.issue_token("ada@example.com"),
    };
    let api = simulator.api_base();
    let wrong = write(&dir, "wrong.json", &config(33));
    let fixed = write(&dir, "fixed.json", &config(5));
    let mut lines: Vec<String> = (1..=30).map(profile).collect();
    lines.insert(10, "{\"not\": \"a profile\"".into());
    let input = write(&dir, "profiles.ndjson", &(lines.join("\n") + "\n"));

    let out = cli.run(&[
        "run",
        "--config",
        &wrong,
        "--input",
        &input,
        "--api-base",
        &api,
    ]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The journal holds customer profiles: owner-only.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: PathBuf| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(dir.join("journal.sqlite")), 0o600);
    }

    // The history: one run, its counts per audience and per reason.
    let runs = cli.json(&["runs", "--json"]);
    assert_eq!(runs.as_array().unwrap().len(), 1);
    let run = cli.json(&["runs", "show", "last", "--json"]);
    assert_eq!(run["id"], 1);
    assert_eq!(run["status"], "completed-with-failures");
    assert_eq!(run["received"], 31);
    assert_eq!(run["delivered"], 0);
    assert_eq!(run["rejected"], 31);
    assert_eq!(run["pending"], 0);
    assert_eq!(run["audiences"]["aud-webinar"]["received"], 30);
    assert_eq!(run["audiences"]["aud-webinar"]["rejected"], 30);
    assert_eq!(run["failures"]["validation-error"], 30);
    assert_eq!(run["failures"]["not-json"], 1);
    let table = String::from_utf8(cli.run(&["runs"]).stdout).unwrap();
    assert!(table.contains("completed-with-failures"), "{table}");

    // Dead letters name the audience and its Mapping ID.
    let letters = cli.lines(&["dead-letters", "list", "--run", "1"]);
    assert_eq!(letters.len(), 31);
    let rejected: Vec<&Value> = letters
        .iter()
        .filter(|l| l["code"] == "validation-error")
        .collect();
    assert_eq!(rejected.len(), 30);
    assert!(
        rejected[0]["reason"].as_str().unwrap().contains("33"),
        "{}",
        rejected[0]
    );
    assert_eq!(rejected[0]["status"], 422);
    assert_eq!(rejected[0]["request"]["method"], "PATCH");
    assert_eq!(simulator.stats().updates_applied, 0);

    // Fix the Mapping ID and replay the rejected ones.
    let out = cli.run(&[
        "dead-letters",
        "replay",
        "--code",
        "validation-error",
        "--config",
        &fixed,
        "--api-base",
        &api,
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["run"], 2);
    assert_eq!(summary["delivered"], 30);
    let held = (1..=100)
        .filter(|id| simulator.prospect(*id).unwrap().get("custom5") == Some(&json!("realized")))
        .count();
    assert_eq!(held, 30);
    let replay = cli.json(&["runs", "show", "2", "--json"]);
    assert_eq!(replay["kind"], "replay");
    // The activated count per audience is what the simulator holds.
    assert_eq!(replay["audiences"]["aud-webinar"]["delivered"], json!(held));
    assert_eq!(simulator.prospect(7).unwrap()["firstName"], "Name7");

    // Replayed letters are done; the unparseable record remains.
    let left = cli.lines(&["dead-letters", "list"]);
    assert_eq!(left.len(), 1);
    assert_eq!(left[0]["code"], "not-json");
    let all = cli.lines(&["dead-letters", "list", "--all"]);
    assert_eq!(all.iter().filter(|l| l["replayed_by"] == 2).count(), 30);
    // Nothing left to replay with that code.
    let again = cli.run(&[
        "dead-letters",
        "replay",
        "--code",
        "validation-error",
        "--config",
        &fixed,
        "--api-base",
        &api,
    ]);
    assert!(again.status.success());
    assert!(String::from_utf8_lossy(&again.stdout).contains("no dead letters to replay"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// A local webhook receiver collecting the alerts posted to it.
async fn receiver() -> (String, Arc<Mutex<Vec<Value>>>) {
    let received = Arc::new(Mutex::new(Vec::new()));
    let store = received.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |body: axum::Json<Value>| {
            let store = store.clone();
            async move {
                store.lock().unwrap().push(body.0);
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind(loopback()).await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, received)
}

fn events(received: &Mutex<Vec<Value>>) -> Vec<String> {
    received
        .lock()
        .unwrap()
        .iter()
        .map(|a| a["event"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn alerts_reach_a_webhook_and_a_command() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    // 5 requests per 3-second window: delivery of 12 updates stalls.
    let simulator = runtime
        .block_on(Simulator::start(
            SimulatorConfig {
                prospect_ids: 1..=100,
                rate_limit: 5,
                rate_window: Duration::from_secs(3),
                ..SimulatorConfig::default()
            },
            loopback(),
        ))
        .unwrap();
    let (url, received) = runtime.block_on(receiver());
    let dir = scratch("alerts");
    let api = simulator.api_base();
    let fixed = write(&dir, "config.json", &config(5));
    let input = write(
        &dir,
        "profiles.ndjson",
        &(1..=12).map(|id| profile(id) + "\n").collect::<String>(),
    );
    let command_log = dir.join("alerts.ndjson");
    let alert_command = format!(
        "{{ printf '%s ' \"$OUTREACH_ALERT\"; cat; echo; }} >> '{}'",
        command_log.display()
    );

    // Refused credentials: a login is needed and the run fails.
    let cli = Cli {
        dir: dir.clone(),
        token: "bad-token-5f3e9a".into(),
    };
    let alert_args = [
        "--alert-webhook",
        &url,
        "--alert-command",
        &alert_command,
        "--stall-alert-secs",
        "1",
    ];
    let mut args = vec![
        "run",
        "--config",
        &fixed,
        "--input",
        &input,
        "--api-base",
        &api,
    ];
    args.extend(alert_args);
    let out = cli.run(&args);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(events(&received), ["login-required", "run-failed"]);
    let login = received.lock().unwrap()[0].clone();
    assert_eq!(login["run"], 1);
    assert_eq!(login["destination"], "history");
    assert!(
        login["message"].as_str().unwrap().contains("login"),
        "{login}"
    );
    assert_eq!(login["summary"]["pending"], 12);
    let logged = std::fs::read_to_string(&command_log).unwrap();
    let logged: Vec<&str> = logged.lines().collect();
    assert_eq!(logged.len(), 2, "{logged:?}");
    assert!(logged[0].starts_with("login-required {"), "{}", logged[0]);
    let body: Value = serde_json::from_str(logged[1].trim_start_matches("run-failed ")).unwrap();
    assert_eq!(body["event"], "run-failed");
    // No secret in any alert.
    let posted = serde_json::to_string(&*received.lock().unwrap()).unwrap();
    assert!(!posted.contains("bad-token-5f3e9a"));
    assert!(!logged.concat().contains("bad-token-5f3e9a"));

    // With a good token the queued updates go out under a tight rate limit:
    // delivery stalls on the window, which is alerted, and the run then
    // completes without a failure alert.
    received.lock().unwrap().clear();
    let cli = Cli {
        dir: dir.clone(),
        token: simulator.issue_token("ada@example.com"),
    };
    let mut args = vec!["resume", "--config", &fixed, "--api-base", &api];
    args.extend(alert_args);
    let out = cli.run(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen = events(&received);
    assert!(seen.contains(&"stalled".to_owned()), "{seen:?}");
    assert!(!seen.contains(&"run-failed".to_owned()), "{seen:?}");
    // The stall was a wait for the window to turn; the host waits for it
    // without spending 429s (one at most, by its probe at a turn).
    assert!(
        simulator.stats().rate_limited <= 1,
        "{:?}",
        simulator.stats()
    );
    assert_eq!(simulator.stats().updates_applied, 12);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A `run` with refused credentials (so it raises `login-required` and
/// `run-failed`), secrets in its environment and the given alert options.
fn failing_run_with_alerts(dir: &Path, api: &str, alert_args: &[&str]) -> Command {
    let config = write(dir, "config.json", &config(5));
    let input = write(dir, "profiles.ndjson", &(profile(1) + "\n"));
    let mut command = Command::new(env!("CARGO_BIN_EXE_outreach-host"));
    command
        .arg("--journal")
        .arg(dir.join("journal.sqlite"))
        .arg("--cache-dir")
        .arg(dir.join("cache"))
        .args([
            "run",
            "--config",
            &config,
            "--input",
            &input,
            "--api-base",
            api,
        ])
        .args(alert_args)
        .env("OUTREACH_ACCESS_TOKEN", "bad-token-5f3e9a")
        .env("OUTREACH_CLIENT_SECRET", "client-secret-91be")
        .env("OUTREACH_ALERT_CHANNEL", "#ops")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null());
    command
}

#[test]
fn alert_commands_get_no_secrets_and_a_deadline_and_webhook_keys_stay_out_of_logs() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let simulator = runtime
        .block_on(Simulator::start(SimulatorConfig::default(), loopback()))
        .unwrap();
    let dir = scratch("alert-limits");
    // The webhook's path is its key; nothing listens on port 9.
    let webhook = "http://127.0.0.1:9/services/T0/B0/webhook-key-7c1d";
    let command = format!(
        "env > '{}'.$OUTREACH_ALERT; sleep 30.4172",
        dir.join("env").display()
    );
    let started = Instant::now();
    let out = failing_run_with_alerts(
        &dir,
        &simulator.api_base(),
        &[
            "--alert-webhook",
            webhook,
            "--alert-command",
            &command,
            "--alert-timeout-secs",
            "1",
        ],
    )
    .output()
    .unwrap();
    let elapsed = started.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    // Two alerts, each given one second for the webhook and one for the
    // command, instead of the 30 s the command would take.
    assert!(elapsed < Duration::from_secs(15), "{elapsed:?}");
    assert!(
        stderr.contains("ran longer than 1s and was killed"),
        "{stderr}"
    );
    assert!(
        none_left_running("sleep 30.4172"),
        "a timed-out alert command was left running"
    );
    for event in ["login-required", "run-failed"] {
        let env = std::fs::read_to_string(dir.join(format!("env.{event}"))).unwrap();
        assert!(!env.contains("bad-token-5f3e9a"), "{env}");
        assert!(!env.contains("client-secret-91be"), "{env}");
        assert!(env.contains("OUTREACH_ALERT_CHANNEL=#ops"), "{env}");
        assert!(env.contains(&format!("OUTREACH_ALERT={event}")), "{env}");
        assert!(env.contains("PATH="), "{env}");
    }
    assert!(!stderr.contains("webhook-key-7c1d"), "{stderr}");
    assert!(stderr.contains("webhook at 127.0.0.1"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_signal_ends_a_run_whose_alert_command_hangs() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let simulator = runtime
        .block_on(Simulator::start(SimulatorConfig::default(), loopback()))
        .unwrap();
    let dir = scratch("alert-signal");
    let started_marker = dir.join("alert-started");
    let command = format!("touch '{}'; sleep 600.9183", started_marker.display());
    let mut child = failing_run_with_alerts(
        &dir,
        &simulator.api_base(),
        &["--alert-command", &command, "--alert-timeout-secs", "600"],
    )
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !started_marker.exists() {
        assert!(Instant::now() < deadline, "the alert command never started");
        assert!(child.try_wait().unwrap().is_none(), "the run ended early");
        std::thread::sleep(Duration::from_millis(50));
    }
    let signalled = Instant::now();
    // SAFETY: signalling our own child process.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if signalled.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            panic!("SIGTERM did not end the run while an alert hung");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        signalled.elapsed() < Duration::from_secs(5),
        "{:?}",
        signalled.elapsed()
    );
    assert_eq!(status.code(), Some(1));
    assert!(none_left_running("sleep 600.9183"));
    let _ = std::fs::remove_dir_all(&dir);
}
