//! The input's edges, through the `outreach-host` command against the
//! simulator: a file rewritten in place, a last line still being written,
//! records over the size limit, the dry run reading as a run does, and a
//! replay that must not overwrite newer values.

use std::io::Write;
use std::path::PathBuf;

use outreach_simulator::{Simulator, SimulatorConfig};
use serde_json::Value;

mod common;
use common::{Cli, loopback, write};

fn scratch(name: &str) -> PathBuf {
    common::scratch("input", name)
}

fn config(mapping_id: u32) -> String {
    common::one_audience_config("input edges", "aud", mapping_id)
}

fn profile(id: u64, first: &str) -> String {
    common::member_profile("aud", id, first)
}

/// A simulator with prospects 1..=100 and 10 custom fields, and the
/// command line pointed at it.
struct Setup {
    _runtime: tokio::runtime::Runtime,
    simulator: Simulator,
    cli: Cli,
    dir: PathBuf,
    api: String,
    config: String,
}

fn setup(name: &str) -> Setup {
    let runtime = tokio::runtime::Runtime::new().unwrap();
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
    let dir = scratch(name);
    let cli = Cli {
        dir: dir.clone(),
        token: simulator.issue_token("ada@example.com"),
    };
    let api = simulator.api_base();
    let config = write(&dir, "config.json", &config(5));
    Setup {
        _runtime: runtime,
        simulator,
        cli,
        dir,
        api,
        config,
    }
}

impl Setup {
    /// `run --json` of `input` with `extra` arguments: exit code, summary,
    /// and what it logged.
    fn run(&self, input: &str, extra: &[&str]) -> (Option<i32>, Value, String) {
        let mut args = vec![
            "run",
            "--config",
            &self.config,
            "--input",
            input,
            "--api-base",
            &self.api,
            "--json",
        ];
        args.extend(extra);
        let out = self
            .cli
            .command(&args)
            .env("RUST_LOG", "warn")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let summary = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("no summary ({e}): {stderr}"));
        (out.status.code(), summary, stderr)
    }

    fn first_name(&self, id: u64) -> Option<String> {
        self.simulator.prospect(id).and_then(|p| {
            p.get("firstName")
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
    }

    fn letters(&self) -> Vec<Value> {
        self.cli.lines(&["dead-letters", "list", "--all"])
    }
}

fn records(ids: std::ops::RangeInclusive<u64>, prefix: &str) -> String {
    ids.map(|id| profile(id, &format!("{prefix}{id}")) + "\n")
        .collect()
}

#[test]
fn a_file_rewritten_in_place_is_read_again_from_the_start() {
    let s = setup("rewritten");
    let input = write(&s.dir, "profiles.ndjson", &records(1..=5, "Old"));
    let (code, summary, _) = s.run(&input, &[]);
    assert_eq!(code, Some(0), "{summary}");
    assert_eq!(summary["delivered"], 5);

    // `exporter > profiles.ndjson`: same inode, new and longer content.
    let inode = |p: &str| std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(p).unwrap());
    let before = inode(&input);
    std::fs::write(&input, records(1..=8, "Renamed")).unwrap();
    assert_eq!(inode(&input), before, "the test must keep the inode");
    let (code, summary, stderr) = s.run(&input, &[]);
    assert_eq!(code, Some(0), "{summary} {stderr}");
    assert_eq!(summary["received"], 8, "{summary}");
    assert_eq!(summary["delivered"], 8);
    assert_eq!(summary["input_already_journaled"], 0);
    assert!(stderr.contains("reading it from the start"), "{stderr}");
    for id in 1..=8 {
        assert_eq!(
            s.first_name(id).as_deref(),
            Some(format!("Renamed{id}").as_str())
        );
    }

    // Appending is not a rewrite: only the new lines are read.
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&input)
        .unwrap();
    file.write_all(records(9..=10, "Appended").as_bytes())
        .unwrap();
    drop(file);
    let (code, summary, _) = s.run(&input, &[]);
    assert_eq!(code, Some(0));
    assert_eq!(summary["received"], 2, "{summary}");
    assert_eq!(summary["input_already_journaled"], 8);
    assert_eq!(s.first_name(10).as_deref(), Some("Appended10"));
    let _ = std::fs::remove_dir_all(&s.dir);
}

#[test]
fn a_half_written_last_line_waits_for_the_rest() {
    let s = setup("half-line");
    let third = profile(3, "Third");
    let (head, tail) = third.split_at(third.len() / 2);
    let input = write(
        &s.dir,
        "profiles.ndjson",
        &format!(
            "{}{}\n{head}",
            profile(1, "First"),
            "\n".to_owned() + &profile(2, "Second")
        ),
    );
    let (code, summary, stderr) = s.run(&input, &[]);
    assert_eq!(code, Some(0), "{summary} {stderr}");
    assert_eq!(summary["received"], 2, "{summary}");
    assert!(s.letters().is_empty(), "the half line became a dead letter");
    assert!(stderr.contains("left for the next run"), "{stderr}");

    // The writer finishes the line.
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&input)
        .unwrap();
    file.write_all(format!("{tail}\n").as_bytes()).unwrap();
    drop(file);
    let (code, summary, _) = s.run(&input, &[]);
    assert_eq!(code, Some(0), "{summary}");
    assert_eq!(summary["received"], 1, "{summary}");
    assert_eq!(summary["delivered"], 1);
    assert_eq!(s.first_name(3).as_deref(), Some("Third"));
    assert!(s.letters().is_empty());
    let _ = std::fs::remove_dir_all(&s.dir);
}

#[test]
fn a_record_over_the_size_limit_is_a_record_error_and_the_run_goes_on() {
    let s = setup("too-large");
    // Over the default limit of 4 MiB.
    let huge = profile(2, &"x".repeat(5 << 20));
    let input = write(
        &s.dir,
        "profiles.ndjson",
        &format!(
            "{}\n{huge}\n{}\n",
            profile(1, "Before"),
            profile(3, "After")
        ),
    );
    let (code, summary, _) = s.run(&input, &[]);
    assert_eq!(code, Some(3), "{summary}");
    assert_eq!(summary["received"], 3);
    assert_eq!(summary["delivered"], 2);
    assert_eq!(summary["failures"]["record-too-large"], 1, "{summary}");
    let letters = s.letters();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0]["line"], 2);
    assert_eq!(letters[0]["code"], "record-too-large");
    let reason = letters[0]["reason"].as_str().unwrap();
    assert!(reason.contains("over the 4194304-byte limit"), "{reason}");
    assert_eq!(s.first_name(3).as_deref(), Some("After"));

    // The limit is a setting.
    let small = write(
        &s.dir,
        "small.ndjson",
        &(profile(4, &"y".repeat(300)) + "\n"),
    );
    let (_, summary, _) = s.run(&small, &["--max-record-bytes", "256"]);
    assert_eq!(summary["failures"]["record-too-large"], 1, "{summary}");
    let _ = std::fs::remove_dir_all(&s.dir);
}

#[test]
fn the_dry_run_reads_input_as_a_run_does() {
    let s = setup("dry-run");
    let mut bytes = Vec::new();
    bytes.extend(profile(1, "A").as_bytes());
    bytes.extend(b"\r\n \t \n");
    bytes.extend(b"{\"identityMap\": \"\xff\xfe\"}\n");
    bytes.extend(profile(2, "B").as_bytes());
    bytes.push(b'\n');
    let input = s.dir.join("mixed.ndjson");
    std::fs::write(&input, &bytes).unwrap();
    let input = input.display().to_string();
    let out = s
        .cli
        .run(&["plan", "--config", &s.config, "--input", &input]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let planned: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let lines: Vec<u64> = planned
        .iter()
        .map(|p| p["line"].as_u64().unwrap())
        .collect();
    assert_eq!(lines, [1, 3, 4]);
    assert_eq!(planned[1]["outcome"]["invalid"]["code"], "invalid-record");

    // The run reads the same lines the same way.
    let (code, summary, _) = s.run(&input, &[]);
    assert_eq!(code, Some(3));
    assert_eq!(summary["received"], 3);
    assert_eq!(summary["failures"]["invalid-record"], 1);
    let letters = s.letters();
    assert_eq!(letters[0]["line"], 3);
    let _ = std::fs::remove_dir_all(&s.dir);
}

#[test]
fn a_replay_never_overwrites_a_newer_update_unless_forced() {
    let s = setup("replay-safety");
    // Mapping ID 33 does not exist in the account: prospects 1 and 2 are
    // rejected, and become dead letters.
    let wrong = write(&s.dir, "wrong.json", &config(33));
    let first = write(&s.dir, "first.ndjson", &records(1..=2, "LastWeek"));
    let mut args = vec![
        "run",
        "--config",
        &wrong,
        "--input",
        &first,
        "--api-base",
        &s.api,
    ];
    let out = s.cli.run(&args);
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(s.letters().len(), 2);

    // Later, prospect 1 gets a newer update that is delivered.
    let newer = write(&s.dir, "newer.ndjson", &records(1..=1, "Today"));
    let (code, _, _) = s.run(&newer, &[]);
    assert_eq!(code, Some(0));
    assert_eq!(s.first_name(1).as_deref(), Some("Today1"));

    // Replaying with the fixed configuration sends prospect 2's letter and
    // holds prospect 1's back.
    args = vec![
        "dead-letters",
        "replay",
        "--config",
        &s.config,
        "--api-base",
        &s.api,
        "--json",
    ];
    let out = s.cli.run(&args);
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(0), "{summary}");
    assert_eq!(summary["delivered"], 1, "{summary}");
    let held = summary["held_back"].as_array().unwrap();
    assert_eq!(held.len(), 1, "{summary}");
    assert_eq!(held[0]["key"], "1");
    assert!(
        held[0]["reason"].as_str().unwrap().contains("newer update"),
        "{held:?}"
    );
    assert_eq!(s.first_name(1).as_deref(), Some("Today1"));
    assert_eq!(s.first_name(2).as_deref(), Some("LastWeek2"));
    // The held-back letter stays listed, not replayed.
    let open: Vec<Value> = s.cli.lines(&["dead-letters", "list"]);
    assert_eq!(open.len(), 1);

    // --force sends it anyway.
    args.push("--force");
    let summary = s.cli.json(&args);
    assert_eq!(summary["delivered"], 1, "{summary}");
    assert!(summary["held_back"].as_array().unwrap().is_empty());
    assert_eq!(s.first_name(1).as_deref(), Some("LastWeek1"));
    let _ = std::fs::remove_dir_all(&s.dir);
}

#[test]
fn log_lines_can_be_json_objects_for_a_log_collector() {
    let s = setup("json-logs");
    let third = profile(3, "Third");
    let input = write(
        &s.dir,
        "profiles.ndjson",
        &format!("{}\n{}", profile(1, "First"), &third[..third.len() / 2]),
    );
    let (code, summary, stderr) = s.run(&input, &["--log-format", "json"]);
    assert_eq!(code, Some(0), "{summary} {stderr}");
    let lines: Vec<Value> = stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let warning = lines
        .iter()
        .find(|l| l["level"] == "WARN")
        .unwrap_or_else(|| panic!("no warning: {stderr}"));
    let message = warning["fields"]["message"].as_str().unwrap();
    assert!(message.contains("left for the next run"), "{message}");
    assert!(warning["timestamp"].is_string(), "{warning}");
    let _ = std::fs::remove_dir_all(&s.dir);
}
