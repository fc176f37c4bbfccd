//! Every golden vector, against the native core and against the built
//! component running in wasmtime.

use outreach_tests::{Native, Report, Subject, Wasm, run_all};

/// The vectors must not shrink unnoticed.
const MIN_CASES: usize = 60;

fn assert_passes(subject: &dyn Subject) {
    let Report { cases, failures } = run_all(subject);
    assert!(
        cases >= MIN_CASES,
        "{}: only {cases} cases ran",
        subject.name()
    );
    assert!(
        failures.is_empty(),
        "{}: {} of {cases} cases failed:\n\n{}",
        subject.name(),
        failures.len(),
        failures.join("\n\n")
    );
    eprintln!("{}: {cases} cases passed", subject.name());
}

#[test]
fn vectors_pass_natively() {
    assert_passes(&Native);
}

#[test]
fn vectors_pass_in_the_component() {
    assert_passes(&Wasm::built());
}
