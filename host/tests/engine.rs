//! The engine's own guarantees, exercised with the real Outreach component:
//! the compile cache, the memory cap, the call deadline, and recovery after
//! a guest is stopped; and the guest's actors (`outreach_host::guest`):
//! every call runs on a component thread, and a classify is answered while
//! a long plan holds the planning instance.

use std::path::Path;
use std::time::{Duration, Instant};

use destination_types::PlanOutcome;
use outreach_host::BUILT_COMPONENT;
use outreach_host::engine::{CompileSource, GuestError, Limits, LoadError, Runtime};

const CONFIG: &str = r#"{
  "name": "engine test",
  "identityMapping": { "source": "Oid", "target": "OutreachId" },
  "attributeMappings": [ { "source": "person.jobTitle", "target": "title" } ]
}"#;

fn record(id: u32) -> String {
    format!(r#"{{"identityMap":{{"Oid":[{{"id":"{id}"}}]}},"person":{{"jobTitle":"CTO"}}}}"#)
}

fn component() -> &'static Path {
    Path::new(BUILT_COMPONENT)
}

fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("outreach-engine-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

#[test]
fn second_load_comes_from_the_cache_and_behaves_the_same() {
    let cache = temp_dir("cache");
    let (first, source) =
        Runtime::load_reporting(component(), Some(&cache), Limits::default()).unwrap();
    assert_eq!(source, CompileSource::Compiled);
    let (second, source) =
        Runtime::load_reporting(component(), Some(&cache), Limits::default()).unwrap();
    assert_eq!(source, CompileSource::Cache);

    let records = vec![record(7)];
    let a = first
        .configure(CONFIG)
        .unwrap()
        .unwrap()
        .plan(&records)
        .unwrap();
    let b = second
        .configure(CONFIG)
        .unwrap()
        .unwrap()
        .plan(&records)
        .unwrap();
    assert_eq!(a, b);
    assert!(matches!(&a[0], PlanOutcome::Send(r) if r[0].path == "/prospects/7"));
    std::fs::remove_dir_all(&cache).unwrap();
}

#[test]
fn a_corrupt_cache_entry_is_recompiled_not_trusted() {
    let cache = temp_dir("corrupt");
    Runtime::load(component(), Some(&cache), Limits::default()).unwrap();
    for entry in std::fs::read_dir(&cache).unwrap() {
        std::fs::write(entry.unwrap().path(), b"not a compiled component").unwrap();
    }
    let (runtime, source) =
        Runtime::load_reporting(component(), Some(&cache), Limits::default()).unwrap();
    assert_eq!(source, CompileSource::Compiled);
    let outcomes = runtime
        .configure(CONFIG)
        .unwrap()
        .unwrap()
        .plan(&[record(8)])
        .unwrap();
    assert!(matches!(&outcomes[0], PlanOutcome::Send(_)));
    std::fs::remove_dir_all(&cache).unwrap();
}

#[test]
fn files_that_are_not_components_are_refused_with_the_path() {
    let dir = temp_dir("bad");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("not-a-component.wasm");
    std::fs::write(&path, b"\0asm garbage").unwrap();
    let Err(error) = Runtime::load(&path, None, Limits::default()) else {
        panic!("garbage loaded as a component");
    };
    assert!(matches!(error, LoadError::Invalid { .. }));
    assert!(
        error.to_string().contains("not-a-component.wasm"),
        "{error}"
    );

    let missing = dir.join("missing.wasm");
    let Err(error) = Runtime::load(&missing, None, Limits::default()) else {
        panic!("a missing file loaded");
    };
    assert!(matches!(error, LoadError::Read { .. }), "{error}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn configuration_errors_come_back_as_data() {
    let runtime = Runtime::load(component(), None, Limits::default()).unwrap();
    let Ok(Err(errors)) = runtime.configure(r#"{"name":"x"}"#) else {
        panic!("an invalid configuration was accepted");
    };
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].setting, "identityMapping");
}

#[test]
fn memory_cap_stops_the_guest_and_the_next_call_gets_a_fresh_instance() {
    let limits = Limits {
        memory_bytes: 4 << 20,
        ..Limits::default()
    };
    let runtime = Runtime::load(component(), None, limits).unwrap();
    let mut destination = runtime.configure(CONFIG).unwrap().unwrap();
    // 8 MB of text cannot even be copied into a 4 MiB guest.
    let huge = format!(
        r#"{{"identityMap":{{"Oid":[{{"id":"1"}}]}},"blob":"{}"}}"#,
        "x".repeat(8 << 20)
    );
    let error = destination.plan(&[huge]).unwrap_err();
    assert!(
        matches!(error, GuestError::MemoryExceeded(cap) if cap == 4 << 20),
        "{error}"
    );
    assert!(error.to_string().contains("4194304 bytes"), "{error}");

    let outcomes = destination.plan(&[record(9)]).unwrap();
    assert!(matches!(&outcomes[0], PlanOutcome::Send(r) if r[0].key == "9"));
}

#[test]
fn deadline_stops_a_call_that_runs_too_long() {
    let limits = Limits {
        call_deadline: Duration::from_millis(50),
        ..Limits::default()
    };
    let runtime = Runtime::load(component(), None, limits).unwrap();
    let mut destination = runtime.configure(CONFIG).unwrap().unwrap();
    // Far more work than 50 ms allows: a large batch of large records.
    let big = format!(
        r#"{{"identityMap":{{"Oid":[{{"id":"1"}}]}},"person":{{"jobTitle":"CTO"}},"blob":[{}]}}"#,
        vec!["{\"k\":[1,2,3,\"text\"]}"; 20_000].join(",")
    );
    let batch = vec![big; 200];
    let start = Instant::now();
    let error = destination.plan(&batch).unwrap_err();
    let stopped_after = start.elapsed();
    assert!(matches!(error, GuestError::Timeout(_)), "{error}");
    assert!(
        stopped_after < Duration::from_secs(2),
        "stopped only after {stopped_after:?}"
    );

    let outcomes = destination.plan(&[record(10)]).unwrap();
    assert!(matches!(&outcomes[0], PlanOutcome::Send(r) if r[0].key == "10"));
}

#[test]
fn a_cache_directory_other_users_can_write_is_not_used() {
    use std::os::unix::fs::PermissionsExt;
    let cache = temp_dir("shared");
    std::fs::create_dir_all(&cache).unwrap();
    std::fs::set_permissions(&cache, std::fs::Permissions::from_mode(0o777)).unwrap();
    for _ in 0..2 {
        let (_, source) =
            Runtime::load_reporting(component(), Some(&cache), Limits::default()).unwrap();
        assert_eq!(source, CompileSource::Compiled);
    }
    assert_eq!(
        std::fs::read_dir(&cache).unwrap().count(),
        0,
        "wrote into it"
    );
    std::fs::remove_dir_all(&cache).unwrap();
}

#[test]
fn a_cached_artifact_swapped_for_other_native_code_is_not_run() {
    // Another component's artifact, compiled by this very engine: wasmtime's
    // own header check accepts it.
    let cache = temp_dir("swapped");
    let other = temp_dir("swapped-other");
    Runtime::load(component(), Some(&cache), Limits::default()).unwrap();
    Runtime::load(
        Path::new(env!("HOSTILE_COMPONENT_PATH")),
        Some(&other),
        Limits::default(),
    )
    .unwrap();
    let artifact = |dir: &Path| {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|e| e == "cwasm"))
            .expect("an artifact was cached")
    };
    std::fs::copy(artifact(&other), artifact(&cache)).unwrap();
    let (runtime, source) =
        Runtime::load_reporting(component(), Some(&cache), Limits::default()).unwrap();
    assert_eq!(source, CompileSource::Compiled);
    assert!(
        runtime.describe().name.to_lowercase().contains("outreach"),
        "{}",
        runtime.describe().name
    );
    std::fs::remove_dir_all(&cache).unwrap();
    std::fs::remove_dir_all(&other).unwrap();
}

fn actors() -> outreach_host::guest::Guest {
    let runtime = Runtime::load(component(), None, Limits::default()).unwrap();
    let destination = runtime.configure(CONFIG).unwrap().unwrap();
    outreach_host::guest::Guest::spawn(destination).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn component_calls_run_on_the_component_s_threads_not_the_runtime_s() {
    let guest = actors();
    let thread = guest
        .with_planner(|_| std::thread::current().name().map(str::to_owned))
        .await
        .unwrap();
    assert_eq!(thread.as_deref(), Some("guest-plan"));
    let here = std::thread::current().name().map(str::to_owned);
    assert_ne!(thread, here, "a component call ran on the caller's thread");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_classify_is_answered_while_a_long_plan_holds_the_planner() {
    let guest = std::sync::Arc::new(actors());
    let outcomes = guest.plan(vec![record(7)]).await.unwrap();
    let Some(PlanOutcome::Send(requests)) = outcomes.into_iter().next() else {
        panic!("the record plans to a request");
    };
    let request = requests.into_iter().next().unwrap();

    // A plan that keeps the planning instance until it is let go.
    let (started_tx, started_rx) = std::sync::mpsc::channel::<()>();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let planning = tokio::spawn({
        let guest = guest.clone();
        async move {
            guest
                .with_planner(move |destination| {
                    started_tx.send(()).unwrap();
                    release_rx.recv().unwrap();
                    destination.plan(&[record(8)])
                })
                .await
        }
    });
    tokio::task::spawn_blocking(move || started_rx.recv().unwrap())
        .await
        .unwrap();

    let response = destination_types::Response {
        status: 200,
        headers: Vec::new(),
        body: String::new(),
    };
    let classified = tokio::time::timeout(
        Duration::from_secs(20),
        guest.classify(&request, &response, 1_700_000_000_000),
    )
    .await
    .expect("classify waited for the plan");
    assert!(classified.is_ok(), "{classified:?}");
    assert!(!planning.is_finished(), "the plan was let go too early");

    release_tx.send(()).unwrap();
    let planned = planning.await.unwrap().unwrap().unwrap();
    assert!(matches!(planned.as_slice(), [PlanOutcome::Send(_)]));
}
