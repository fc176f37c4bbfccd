//! Every golden vector, against the native core and against the built
//! components (contracts 0.3.0, 0.2.0 and 0.1.0) running in wasmtime.

use outreach_tests::{Native, Report, Subject, Wasm, cases_on_disk, run_all};

/// The cases the vectors hold today. A vector file that vanishes, or a
/// runner that silently skips cases, fails the tests; adding vectors means
/// raising this.
const CASES_ON_DISK: usize = 169;

fn assert_passes(subject: &dyn Subject) {
    let Report { cases, failures } = run_all(subject);
    assert!(
        failures.is_empty(),
        "{}: {} of {cases} cases failed:\n\n{}",
        subject.name(),
        failures.len(),
        failures.join("\n\n")
    );
    let on_disk = cases_on_disk(subject.merges(), subject.takes_steps());
    assert_eq!(
        cases,
        on_disk,
        "{}: {cases} cases ran, the vectors hold {on_disk}",
        subject.name()
    );
    eprintln!("{}: {cases} cases passed", subject.name());
}

#[test]
fn the_vectors_on_disk_are_all_there() {
    assert_eq!(cases_on_disk(true, true), CASES_ON_DISK);
}

#[test]
fn vectors_pass_natively() {
    assert_passes(&Native);
}

#[test]
fn vectors_pass_in_the_component() {
    assert_passes(&Wasm::built());
}

/// A component built against contract 0.2.0 runs every vector that
/// contract can express (all but deliveries of several steps).
#[test]
fn vectors_pass_in_the_contract_0_2_component() {
    let subject = Wasm::built_v0_2();
    assert!(subject.merges() && !subject.takes_steps());
    assert_passes(&subject);
}

/// A component built against contract 0.1.0 runs every vector that
/// contract can express (all but `merge`).
#[test]
fn vectors_pass_in_the_contract_0_1_component() {
    let subject = Wasm::built_v0_1();
    assert!(!subject.merges() && !subject.takes_steps());
    assert_passes(&subject);
}
