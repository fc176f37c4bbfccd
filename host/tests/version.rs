//! The host reads which contract version a component was built against,
//! runs compatible ones and refuses the others with a clear message.
//!
//! Components declaring other versions are made from the built Outreach
//! component by rewriting the version in its interface names (same length,
//! so the binary stays valid): exactly what a component built against that
//! WIT version would export.

use std::path::{Path, PathBuf};

use destination_types::PlanOutcome;
use outreach_host::BUILT_COMPONENT;
use outreach_host::engine::contract::LATEST as CONTRACT_VERSION;
use outreach_host::engine::{Limits, LoadError, Runtime};

fn with_version(version: &str) -> PathBuf {
    let from = format!("destination@{CONTRACT_VERSION}");
    let to = format!("destination@{version}");
    assert_eq!(from.len(), to.len(), "the rewrite must keep lengths");
    let mut bytes = std::fs::read(BUILT_COMPONENT).unwrap();
    let mut replaced = 0;
    let mut i = 0;
    while i + from.len() <= bytes.len() {
        if &bytes[i..i + from.len()] == from.as_bytes() {
            bytes[i..i + from.len()].copy_from_slice(to.as_bytes());
            replaced += 1;
            i += from.len();
        } else {
            i += 1;
        }
    }
    assert!(replaced > 0, "no version found in the component");
    let path = std::env::temp_dir().join(format!(
        "outreach-version-{}-{version}.wasm",
        std::process::id()
    ));
    std::fs::write(&path, bytes).unwrap();
    path
}

#[test]
fn the_contract_constant_matches_the_frozen_wit() {
    let wit = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../wit")
        .join(format!("since_v{CONTRACT_VERSION}"))
        .join("destination.wit");
    let text = std::fs::read_to_string(&wit).unwrap();
    assert!(
        text.contains(&format!(
            "package profile-sync:destination@{CONTRACT_VERSION};"
        )),
        "{} does not declare {CONTRACT_VERSION}",
        wit.display()
    );
    let runtime = Runtime::load(Path::new(BUILT_COMPONENT), None, Limits::default()).unwrap();
    assert_eq!(runtime.contract_version().to_string(), CONTRACT_VERSION);
}

#[test]
fn a_compatible_newer_patch_version_is_accepted_and_runs() {
    let path = with_version("0.3.7");
    let runtime = Runtime::load(&path, None, Limits::default()).unwrap();
    assert_eq!(runtime.contract_version().to_string(), "0.3.7");
    let config = r#"{"name":"v","identityMapping":{"source":"Oid","target":"OutreachId"},
        "audiences":[{"id":"a","mappingId":3}]}"#;
    let mut destination = runtime.configure(config).unwrap().unwrap();
    let outcomes = destination
        .plan(&[r#"{"identityMap":{"Oid":[{"id":"8"}]},"segmentMembership":{"ups":{"a":{"status":"realized"}}}}"#.to_owned()])
        .unwrap();
    assert!(matches!(&outcomes[0], PlanOutcome::Send(r) if r[0].path == "/prospects/8"));
    std::fs::remove_file(path).unwrap();
}

#[test]
fn incompatible_versions_are_refused_with_a_clear_message() {
    for version in ["0.4.0", "1.0.0", "0.0.9"] {
        let path = with_version(version);
        let Err(error) = Runtime::load(&path, None, Limits::default()) else {
            panic!("{version} was accepted");
        };
        assert!(
            matches!(&error, LoadError::IncompatibleVersion { found, .. } if found == version),
            "{error}"
        );
        let message = error.to_string();
        assert!(
            message.contains(&format!("implements profile-sync:destination@{version}"))
                && message.contains(
                    "supports profile-sync:destination@0.1.0, profile-sync:destination@0.2.0 \
                     and profile-sync:destination@0.3.0 and their compatible versions \
                     (^0.1.0, ^0.2.0, ^0.3.0)"
                ),
            "{message}"
        );
        std::fs::remove_file(path).unwrap();
    }
}
