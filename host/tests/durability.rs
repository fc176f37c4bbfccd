//! Durable delivery: the `outreach-host` command killed with SIGKILL at
//! random moments and restarted, coalescing under throttling, and a damaged
//! journal refused.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use outreach_host::journal::Journal;
use outreach_simulator::{Simulator, SimulatorConfig};
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

mod common;
use common::{Cli, loopback, scratch};

const CONFIG: &str = r#"{
  "name": "durability",
  "identityMapping": { "source": "Oid", "target": "OutreachId" },
  "attributeMappings": [
    { "source": "person.name.firstName", "target": "firstName" },
    { "source": "person.jobTitle", "target": "title" }
  ],
  "audiences": [ { "id": "aud-news", "name": "Newsletter", "mappingId": 4 } ]
}"#;

/// Version `version` of prospect `id`: the first name always changes, the
/// title only in even versions (so the final state needs the merge of
/// several updates when they coalesce), the audience status flips.
fn record(id: u64, version: u64) -> String {
    let mut person = json!({ "name": { "firstName": format!("F{id}v{version}") } });
    if version.is_multiple_of(2) {
        person["jobTitle"] = json!(format!("T{id}v{version}"));
    }
    let status = if (id + version).is_multiple_of(3) {
        "exited"
    } else {
        "realized"
    };
    json!({
        "identityMap": { "Oid": [ { "id": id.to_string() } ] },
        "person": person,
        "segmentMembership": { "ups": { "aud-news": { "status": status } } }
    })
    .to_string()
}

/// What prospect `id` must hold after versions `0..versions` in order.
fn expected(id: u64, versions: u64) -> (String, String, String) {
    let last = versions - 1;
    let last_even = if last.is_multiple_of(2) {
        last
    } else {
        last - 1
    };
    let status = if (id + last).is_multiple_of(3) {
        "exited"
    } else {
        "realized"
    };
    (
        format!("F{id}v{last}"),
        format!("T{id}v{last_even}"),
        status.to_owned(),
    )
}

struct Host {
    cli: Cli,
    journal: PathBuf,
    config: PathBuf,
    api_base: String,
}

impl Host {
    fn new(dir: &Path, simulator: &Simulator, config: &str) -> Self {
        let config_path = dir.join("config.json");
        std::fs::write(&config_path, config).unwrap();
        Self {
            cli: Cli {
                dir: dir.to_owned(),
                token: simulator.issue_token("ada@example.com"),
            },
            journal: dir.join("journal.sqlite"),
            config: config_path,
            api_base: simulator.api_base(),
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        self.cli.command(args)
    }

    fn run_args(&self, input: &Path) -> Vec<String> {
        vec![
            "run".into(),
            "--config".into(),
            self.config.display().to_string(),
            "--input".into(),
            input.display().to_string(),
            "--api-base".into(),
            self.api_base.clone(),
            // The simulator's budget is lifted for this test, so the host's
            // pacing is too (Outreach's 10,000 per hour would make a
            // 100,000-record run take hours).
            "--rate-limit".into(),
            "10000000".into(),
            "--json".into(),
        ]
    }
}

fn args(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[test]
fn killed_and_restarted_runs_lose_nothing() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    const PROSPECTS: u64 = 5_000;
    const VERSIONS: u64 = 20;
    const KILLS: usize = 5;
    const CONCURRENCY: u64 = 16;
    let simulator = runtime
        .block_on(Simulator::start(
            SimulatorConfig {
                prospect_ids: 1..=PROSPECTS,
                rate_limit: 10_000_000,
                ..SimulatorConfig::default()
            },
            loopback(),
        ))
        .unwrap();
    let dir = scratch("durability", "kill");
    let host = Host::new(&dir, &simulator, CONFIG);
    // Updates to each prospect are spread through the input: version v of
    // every prospect, then version v + 1 of every prospect.
    let input = dir.join("profiles.ndjson");
    let mut text = String::new();
    for version in 0..VERSIONS {
        for id in 1..=PROSPECTS {
            text.push_str(&record(id, version));
            text.push('\n');
        }
    }
    std::fs::write(&input, text).unwrap();
    let records = PROSPECTS * VERSIONS;

    let seed: u64 = rand::rng().random();
    eprintln!("kill schedule seed {seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let run_args = host.run_args(&input);
    let mut kills = 0;
    for attempt in 0..KILLS {
        let mut child = host
            .command(&args(&run_args))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let delay = Duration::from_millis(rng.random_range(500..6_000));
        std::thread::sleep(delay);
        if child.try_wait().unwrap().is_none() {
            // SIGKILL: no chance to flush or clean up.
            child.kill().unwrap();
            kills += 1;
        }
        let status = child.wait().unwrap();
        eprintln!(
            "attempt {attempt}: killed after {delay:?} ({status}); simulator has applied {} updates",
            simulator.stats().updates_applied
        );
    }
    let finish = host
        .command(&args(&run_args))
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    assert!(
        finish.status.success(),
        "the final run failed: {}",
        String::from_utf8_lossy(&finish.stdout)
    );
    assert!(kills >= 3, "only {kills} runs were killed mid-way");

    // Every prospect holds exactly its final state.
    let mut wrong = Vec::new();
    for id in 1..=PROSPECTS {
        let (first, title, status) = expected(id, VERSIONS);
        let stored = simulator.prospect(id).unwrap();
        let holds = |field: &str, value: &str| stored.get(field) == Some(&json!(value));
        if !(holds("firstName", &first) && holds("title", &title) && holds("custom4", &status)) {
            wrong.push((id, stored));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} prospects lost their final state, e.g. {:?}",
        wrong.len(),
        wrong.first()
    );

    // Every record was journaled exactly once and credited exactly once.
    let journal = Journal::open_existing(&host.journal).unwrap();
    let runs = journal.runs(100).unwrap();
    let sum = |f: fn(&outreach_host::journal::RunRecord) -> u64| runs.iter().map(f).sum::<u64>();
    assert_eq!(sum(|r| r.counts.received), records, "{runs:#?}");
    assert_eq!(sum(|r| r.counts.delivered), records);
    assert_eq!(sum(|r| r.counts.rejected + r.counts.skipped), 0);
    assert_eq!(sum(|r| r.pending), 0);
    assert_eq!(journal.pending_updates().unwrap(), 0);
    assert_eq!(runs.len(), KILLS + 1);
    assert!(
        runs.iter().filter(|r| r.status == "interrupted").count() >= kills,
        "{runs:#?}"
    );
    assert_eq!(runs[0].status, "completed");

    // Duplicates: updates the API applied whose verdict a kill erased
    // before it was committed, so they were sent again. At most, per kill,
    // the requests in flight and the verdicts of one commit group.
    let journaled = sum(|r| r.updates_delivered);
    let applied = simulator.stats().updates_applied;
    let duplicates = applied - journaled;
    eprintln!(
        "{records} records, {kills} kills: {applied} updates applied, {journaled} journaled as delivered, \
         {duplicates} duplicates, {} records coalesced, 0 lost",
        sum(|r| r.coalesced)
    );
    assert!(applied >= journaled);
    let group = u64::from(outreach_host::journal::GROUP_COMMIT_OPS);
    assert!(
        duplicates <= kills as u64 * (CONCURRENCY + group),
        "{duplicates} duplicates"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn queued_updates_coalesce_while_delivery_is_throttled() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    const PROSPECTS: u64 = 40;
    const VERSIONS: u64 = 6;
    // 20 requests per 2-second window: the stream below arrives far faster
    // than it can be sent.
    let simulator = runtime
        .block_on(Simulator::start(
            SimulatorConfig {
                prospect_ids: 1..=PROSPECTS,
                rate_limit: 20,
                rate_window: Duration::from_secs(2),
                ..SimulatorConfig::default()
            },
            loopback(),
        ))
        .unwrap();
    let dir = scratch("durability", "coalesce");
    let host = Host::new(&dir, &simulator, CONFIG);
    let mut child = host
        .command(&[
            "run",
            "--config",
            &host.config.display().to_string(),
            "--input",
            "-",
            "--api-base",
            &host.api_base,
            "--concurrency",
            "4",
            "--json",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    // A stream: one version of every prospect every 300 ms.
    let mut stdin = child.stdin.take().unwrap();
    let started = Instant::now();
    for version in 0..VERSIONS {
        use std::io::Write;
        let lines: String = (1..=PROSPECTS)
            .map(|id| record(id, version) + "\n")
            .collect();
        stdin.write_all(lines.as_bytes()).unwrap();
        stdin.flush().unwrap();
        std::thread::sleep(Duration::from_millis(300));
    }
    drop(stdin);
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success());
    let summary: Value = serde_json::from_slice(&output.stdout).unwrap();
    let elapsed = started.elapsed();

    for id in 1..=PROSPECTS {
        let (first, title, status) = expected(id, VERSIONS);
        let stored = simulator.prospect(id).unwrap();
        assert_eq!(stored["firstName"], json!(first), "prospect {id}");
        assert_eq!(stored["title"], json!(title), "prospect {id}");
        assert_eq!(stored["custom4"], json!(status), "prospect {id}");
    }
    let records = PROSPECTS * VERSIONS;
    let applied = simulator.stats().updates_applied;
    let windows = elapsed.as_secs_f64() / 2.0;
    eprintln!(
        "{records} records for {PROSPECTS} prospects in {elapsed:?} (~{windows:.1} windows of 20): \
         {applied} updates applied, {} records coalesced, {} 429s",
        summary["coalesced"],
        simulator.stats().rate_limited
    );
    assert_eq!(summary["delivered"], json!(records));
    assert_eq!(summary["updates_delivered"], json!(applied));
    assert_eq!(
        summary["coalesced"].as_u64().unwrap() + applied,
        records,
        "every record either became an update or merged into one"
    );
    // Without coalescing, 240 updates at 20 per 2 s would take 24 s; the
    // budget only allows about 10 per second, and every prospect needs at
    // least one request.
    assert!(
        applied as f64 <= 20.0 * (windows.ceil() + 1.0),
        "{applied} updates in {elapsed:?}"
    );
    assert!(
        applied < records / 2,
        "little coalescing: {applied} updates"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_damaged_journal_is_refused_never_emptied() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let simulator = runtime
        .block_on(Simulator::start(SimulatorConfig::default(), loopback()))
        .unwrap();
    let dir = scratch("durability", "damaged");
    let mut host = Host::new(&dir, &simulator, CONFIG);
    // A journal with history and queued updates: the token is refused, so
    // 2,000 updates stay queued.
    let input = dir.join("profiles.ndjson");
    let text: String = (1..=2_000).map(|id| record(id, 0) + "\n").collect();
    std::fs::write(&input, text).unwrap();
    host.cli.token = "refused".into();
    let out = host
        .command(&args(&host.run_args(&input)))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let pristine = std::fs::read(&host.journal).unwrap();
    assert!(pristine.len() > 100_000, "{} bytes", pristine.len());

    let cases: [(&str, Vec<u8>); 5] = [
        ("truncated to nothing", Vec::new()),
        ("truncated", pristine[..pristine.len() / 2].to_vec()),
        ("truncated inside the header", pristine[..60].to_vec()),
        ("overwritten", {
            let mut bytes = pristine.clone();
            let middle = bytes.len() / 2;
            bytes[middle..middle + 8192].fill(0x5A);
            bytes
        }),
        ("not a journal", b"{\"just\": \"some json\"}\n".repeat(400)),
    ];
    for (what, bytes) in cases {
        std::fs::write(&host.journal, &bytes).unwrap();
        for command in [
            host.run_args(&input),
            vec!["runs".into()],
            vec!["dead-letters".into(), "list".into()],
        ] {
            let out = host.command(&args(&command)).output().unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(1), "{what}: {command:?}: {stderr}");
            assert!(
                stderr.contains(&host.journal.display().to_string())
                    && (stderr.contains("corrupt") || stderr.contains("not a journal")),
                "{what}: {command:?}: {stderr}"
            );
            // The damaged file is left exactly as it was.
            assert_eq!(std::fs::read(&host.journal).unwrap(), bytes, "{what}");
        }
    }
    assert_eq!(simulator.stats().updates_applied, 0);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_signal_stops_the_run_cleanly_and_resume_finishes_it() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    // 30 requests per 2-second window: 120 updates take four windows.
    let simulator = runtime
        .block_on(Simulator::start(
            SimulatorConfig {
                prospect_ids: 1..=120,
                rate_limit: 30,
                rate_window: Duration::from_secs(2),
                ..SimulatorConfig::default()
            },
            loopback(),
        ))
        .unwrap();
    let dir = scratch("durability", "signal");
    let host = Host::new(&dir, &simulator, CONFIG);
    let input = dir.join("profiles.ndjson");
    let text: String = (1..=120).map(|id| record(id, 0) + "\n").collect();
    std::fs::write(&input, text).unwrap();
    let child = host
        .command(&args(&host.run_args(&input)))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1_500));
    let signalled = Instant::now();
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let output = child.wait_with_output().unwrap();
    // It does not wait for the rate-limit window to end.
    assert!(
        signalled.elapsed() < Duration::from_secs(2),
        "{:?}",
        signalled.elapsed()
    );
    assert_eq!(output.status.code(), Some(1));
    let summary: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert!(
        summary["fatal"].as_str().unwrap().contains("interrupted"),
        "{summary}"
    );
    let queued = summary["pending"].as_u64().unwrap();
    assert!(queued > 0 && queued < 120, "{summary}");
    assert_eq!(summary["received"], 120);
    let journal = Journal::open_existing(&host.journal).unwrap();
    assert_eq!(journal.run(1).unwrap().status, "interrupted");
    drop(journal);

    let resume = host
        .command(&[
            "resume",
            "--config",
            &host.config.display().to_string(),
            "--api-base",
            &host.api_base,
            "--json",
        ])
        .output()
        .unwrap();
    assert!(
        resume.status.success(),
        "{}",
        String::from_utf8_lossy(&resume.stderr)
    );
    let summary: Value = serde_json::from_slice(&resume.stdout).unwrap();
    assert_eq!(summary["resumed"], json!(queued));
    assert_eq!(summary["pending"], 0);
    for id in 1..=120 {
        let (first, _, _) = expected(id, 1);
        assert_eq!(simulator.prospect(id).unwrap()["firstName"], json!(first));
    }
    let journal = Journal::open_existing(&host.journal).unwrap();
    assert_eq!(journal.run(1).unwrap().counts.delivered, 120);
    let _ = std::fs::remove_dir_all(&dir);
}
