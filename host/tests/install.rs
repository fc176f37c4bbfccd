//! The `outreach-host` binary is a complete install: copied on its own to a
//! directory of a machine with no build tree, it runs the Outreach
//! component built into it.

use std::path::Path;
use std::process::{Command, Output};

mod common;
use common::{example_config, outreach_host, repo_root, scratch, write};

/// Runs the copied binary with `args` in `dir`. Where a mount namespace
/// can be made (root, as in CI), the whole
/// repository — sources, `target/`, the component built there — is hidden
/// under an empty file system in a mount namespace of its own, so nothing
/// of the build tree can be read.
fn run_copied(binary: &Path, dir: &Path, args: &[&str]) -> Output {
    // A mount namespace needs root (and a sandbox that allows one).
    let hide = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "true"])
        .output()
        .is_ok_and(|o| o.status.success());
    let mut command = if hide {
        let mut command = Command::new("unshare");
        command
            .args(["--mount", "--propagation", "private", "sh", "-c"])
            .arg(r#"mount -t tmpfs none "$1" && shift && exec "$@""#)
            .arg("sh")
            .arg(repo_root())
            .arg(binary);
        command
    } else {
        eprintln!("no mount namespace here: the build tree stays visible to the copied binary");
        Command::new(binary)
    };
    let template = outreach_host(dir);
    for (key, value) in template.get_envs() {
        match value {
            Some(value) => command.env(key, value),
            None => command.env_remove(key),
        };
    }
    command.args(args).current_dir(dir).output().unwrap()
}

#[test]
fn a_copied_binary_runs_its_built_in_component_with_no_build_tree() {
    let dir = scratch("install", "copied");
    let binary = dir.join("outreach-host");
    std::fs::copy(env!("CARGO_BIN_EXE_outreach-host"), &binary).unwrap();
    write(&dir, "destination.json", &example_config());
    let profiles = std::fs::read_to_string(repo_root().join("examples/profiles.ndjson")).unwrap();
    let first: String = profiles.lines().take(3).map(|l| format!("{l}\n")).collect();
    write(&dir, "profiles.ndjson", &first);

    let described = run_copied(&binary, &dir, &["describe"]);
    assert!(
        described.status.success(),
        "{}",
        String::from_utf8_lossy(&described.stderr)
    );
    let descriptor: serde_json::Value = serde_json::from_slice(&described.stdout).unwrap();
    assert_eq!(descriptor["name"], "outreach");

    let planned = run_copied(
        &binary,
        &dir,
        &[
            "plan",
            "--config",
            "destination.json",
            "--input",
            "profiles.ndjson",
        ],
    );
    assert!(
        planned.status.success(),
        "{}",
        String::from_utf8_lossy(&planned.stderr)
    );
    let lines: Vec<serde_json::Value> = String::from_utf8(planned.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert!(
        lines[0]["outcome"].to_string().contains("/prospects/"),
        "{lines:?}"
    );
    // The compile cache it made lives in its own home, not the build tree.
    assert!(dir.join("cache/outreach-host").is_dir());
}
