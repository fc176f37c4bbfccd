//! Builds the Outreach guest component (`guest/`) for `wasm32-wasip2` so that
//! `cargo build`/`cargo test` always run against a component made from the
//! current sources. The path of the built `.wasm` reaches the crate as
//! `OUTREACH_COMPONENT_PATH`. Built alongside: the same destination under
//! contracts 0.2.0 (`guest/v0_2/`, `OUTREACH_COMPONENT_V0_2_PATH`) and
//! 0.1.0 (`guest/v0_1/`, `OUTREACH_COMPONENT_V0_1_PATH`), and the hostile
//! test component (`tests/hostile/`, `HOSTILE_COMPONENT_PATH`).

use std::env;
use std::path::PathBuf;
use std::process::Command;

const GUEST_TARGET: &str = "wasm32-wasip2";
const GUEST_PROFILE: &str = "component";

/// Variables cargo sets for this build script that must not leak into the
/// nested build (they would retarget or re-flag it).
const SCRUBBED_ENV: &[&str] = &[
    "CARGO_TARGET_DIR",
    "CARGO_BUILD_TARGET",
    "CARGO_ENCODED_RUSTFLAGS",
    "RUSTFLAGS",
    "RUSTC_WRAPPER",
    "RUSTC_WORKSPACE_WRAPPER",
    "CARGO_PRIMARY_PACKAGE",
    "CARGO_MANIFEST_DIR",
    "CARGO_MANIFEST_PATH",
    "OUT_DIR",
    "TARGET",
    "HOST",
    "PROFILE",
    "OPT_LEVEL",
    "DEBUG",
];

fn main() {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let root = manifest_dir
        .parent()
        .expect("host/ sits in the workspace root")
        .to_path_buf();
    for watched in [
        "wit",
        "guest/src",
        "guest/Cargo.toml",
        "guest/core/src",
        "guest/core/schema",
        "guest/core/Cargo.toml",
        "guest/v0_2",
        "guest/v0_1",
        "guest/rt",
        "tests/hostile/src",
        "tests/hostile/Cargo.toml",
        "Cargo.toml",
        "Cargo.lock",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(watched).display());
    }

    // A separate target directory: the outer build holds the lock on the
    // normal one, and sharing it would deadlock.
    let target_dir = root.join("target").join("guest");
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .current_dir(&root)
        .args([
            "build",
            "--package",
            "outreach-guest",
            "--package",
            "outreach-guest-v0-2",
            "--package",
            "outreach-guest-v0-1",
            "--package",
            "hostile-guest",
        ])
        .args(["--target", GUEST_TARGET])
        .args(["--profile", GUEST_PROFILE, "--target-dir"])
        .arg(&target_dir);
    for var in SCRUBBED_ENV {
        command.env_remove(var);
    }
    let status = command
        .status()
        .unwrap_or_else(|e| panic!("could not run cargo to build the guest component: {e}"));
    if !status.success() {
        panic!(
            "building the guest component failed ({status}); is the target installed? \
             run `rustup target add {GUEST_TARGET}`"
        );
    }
    let wasm = target_dir
        .join(GUEST_TARGET)
        .join(GUEST_PROFILE)
        .join("outreach_guest.wasm");
    println!("cargo:rustc-env=OUTREACH_COMPONENT_PATH={}", wasm.display());
    // The same destination under contracts 0.2.0 (guest/v0_2) and 0.1.0
    // (guest/v0_1), to prove that older components keep running.
    println!(
        "cargo:rustc-env=OUTREACH_COMPONENT_V0_2_PATH={}",
        wasm.with_file_name("outreach_guest_v0_2.wasm").display()
    );
    println!(
        "cargo:rustc-env=OUTREACH_COMPONENT_V0_1_PATH={}",
        wasm.with_file_name("outreach_guest_v0_1.wasm").display()
    );
    // The hostile test component (tests/hostile), for containment tests.
    let hostile = wasm.with_file_name("hostile_guest.wasm");
    println!(
        "cargo:rustc-env=HOSTILE_COMPONENT_PATH={}",
        hostile.display()
    );
}
