//! `plan` throughput: the Outreach component in wasmtime against the same
//! core compiled natively, on the same batch of realistic profiles (30 mapped
//! attributes, 5 scheduled audiences). Also reports component load time,
//! compiled versus from the on-disk cache.
//!
//! Run: `cargo bench -p outreach-tests --bench plan_throughput`
//! (`-- --records N --batch B --rounds R` to change the workload;
//! `--input FILE.ndjson --config FILE.json` plans a file's lines instead,
//! as `python/bench_plan.py` does, to compare with the Python host).

use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, Instant};

use destination_types::PlanOutcome;
use outreach_host::engine::{CompileSource, Limits, Runtime};
use serde_json::json;

const ATTRIBUTES: [(&str, &str); 30] = [
    ("person.name.firstName", "firstName"),
    ("person.name.lastName", "lastName"),
    ("person.name.middleName", "middleName"),
    ("person.name.nickname", "nickname"),
    ("person.jobTitle", "title"),
    ("person.occupation", "occupation"),
    ("person.gender", "gender"),
    ("education.degree", "degree"),
    ("education.school", "school"),
    ("geo.region", "region"),
    ("geo.timeZone", "timeZone"),
    ("workAddress.street1", "addressStreet"),
    ("workAddress.street2", "addressStreet2"),
    ("workAddress.city", "addressCity"),
    ("workAddress.state", "addressState"),
    ("workAddress.postalCode", "addressZip"),
    ("workAddress.country", "addressCountry"),
    ("marketing.source", "source"),
    ("marketing.campaign", "campaignName"),
    ("marketing.event", "eventName"),
    ("crm.externalId", "externalId"),
    ("employer.name", "company"),
    ("social.linkedInUrl", "linkedInUrl"),
    ("social.github", "githubUsername"),
    ("personalEmail.address", "emails"),
    ("workPhones", "workPhones"),
    ("interests", "tags"),
    ("consents.email.optedOut", "emailOptedOut"),
    ("scores.lead", "score"),
    ("person.birthDate", "dateOfBirth"),
];
const AUDIENCES: usize = 5;

fn config() -> String {
    let mappings: Vec<_> = ATTRIBUTES
        .iter()
        .map(|(source, target)| json!({ "source": source, "target": target }))
        .collect();
    let audiences: Vec<_> = (0..AUDIENCES)
        .map(|i| json!({ "id": format!("audience-{i}"), "mappingId": 10 + i }))
        .collect();
    json!({
        "name": "benchmark",
        "identityMapping": { "source": "Oid", "target": "OutreachId" },
        "attributeMappings": mappings,
        "audiences": audiences,
    })
    .to_string()
}

/// Deterministic pseudo-random numbers (a 64-bit LCG), so every run plans
/// the same profiles.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 33
    }
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[(self.next() as usize) % items.len()]
    }
}

fn profile(i: usize, rng: &mut Lcg) -> String {
    let first = rng.pick(&[
        "Ada",
        "Grace",
        "Zoë",
        "Алексей",
        "Jürgen",
        "Mei",
        "Oluwaseun",
    ]);
    let last = rng.pick(&["Lovelace", "Hopper", "Müller", "山田", "Okafor", "García"]);
    let statuses = ["realized", "existing", "exited"];
    let mut ups = serde_json::Map::new();
    for a in 0..AUDIENCES {
        ups.insert(
            format!("audience-{a}"),
            json!({ "status": rng.pick(&statuses), "lastQualificationTime": "2026-11-20T10:00:00Z" }),
        );
    }
    // Audiences the destination does not schedule, as real profiles carry.
    for a in 0..3 {
        ups.insert(format!("other-{a}"), json!({ "status": "realized" }));
    }
    json!({
        "identityMap": {
            "Oid": [ { "id": (100_000 + i).to_string(), "primary": true } ],
            "ECID": [ { "id": format!("{:032x}", rng.next()) } ]
        },
        "person": {
            "name": { "firstName": first, "lastName": last, "middleName": "Q", "nickname": first },
            "jobTitle": "Head of Data Engineering", "occupation": "Engineer", "gender": "unspecified",
            "birthDate": format!("19{:02}-0{}-1{}", 50 + rng.next() % 50, 1 + rng.next() % 9, rng.next() % 9)
        },
        "education": { "degree": "MSc", "school": "ETH Zürich" },
        "geo": { "region": "EMEA", "timeZone": "Europe/Berlin" },
        "workAddress": { "street1": "Unter den Linden 1", "street2": "3. OG", "city": "Berlin",
                         "state": "BE", "postalCode": "10117", "country": "DE" },
        "marketing": { "source": "webinar", "campaign": "Q4 launch", "event": "Data Summit" },
        "crm": { "externalId": format!("SF-{:08}", rng.next() % 100_000_000) },
        "employer": { "name": "Example GmbH" },
        "social": { "linkedInUrl": format!("https://www.linkedin.com/in/{first}-{i}"), "github": format!("dev{i}") },
        "personalEmail": { "address": format!("person{i}@example.com") },
        "workPhones": [ "+49 30 1234567", "+49 30 7654321" ],
        "interests": [ "analytics", "streaming", "wasm" ],
        "consents": { "email": { "optedOut": rng.next().is_multiple_of(2) } },
        "scores": { "lead": (rng.next() % 1000) as f64 / 10.0 },
        "segmentMembership": { "ups": ups },
        "_experience": { "analytics": { "pageViews": rng.next() % 500, "lastVisit": "2026-11-19T08:00:00Z" } }
    })
    .to_string()
}

struct Args {
    records: usize,
    batch: usize,
    rounds: usize,
    input: Option<String>,
    config: Option<String>,
}

fn args() -> Args {
    let mut parsed = Args {
        records: 5_000,
        batch: 500,
        rounds: 5,
        input: None,
        config: None,
    };
    let argv: Vec<String> = std::env::args().collect();
    let mut i = 1;
    while i < argv.len() {
        let value = || argv.get(i + 1).and_then(|v| v.parse().ok());
        match argv[i].as_str() {
            "--records" => parsed.records = value().expect("--records N"),
            "--batch" => parsed.batch = value().expect("--batch N"),
            "--rounds" => parsed.rounds = value().expect("--rounds N"),
            "--input" => parsed.input = argv.get(i + 1).cloned(),
            "--config" => parsed.config = argv.get(i + 1).cloned(),
            // `cargo bench` passes `--bench`; ignore what is not ours.
            _ => {
                i += 1;
                continue;
            }
        }
        i += 2;
    }
    parsed
}

/// Best records/second over `rounds` passes of `plan_batch` over all records.
fn measure(
    rounds: usize,
    records: &[String],
    batch: usize,
    mut plan_batch: impl FnMut(&[String]) -> Vec<PlanOutcome>,
) -> (f64, Duration) {
    let mut best = Duration::MAX;
    for _ in 0..rounds {
        let start = Instant::now();
        for chunk in records.chunks(batch) {
            black_box(plan_batch(black_box(chunk)));
        }
        best = best.min(start.elapsed());
    }
    (records.len() as f64 / best.as_secs_f64(), best)
}

fn main() {
    let Args {
        records: n,
        batch,
        rounds,
        input,
        config: config_file,
    } = args();
    let from_file = input.is_some();
    let config = match &config_file {
        Some(path) => std::fs::read_to_string(path).expect("reading --config"),
        None => config(),
    };
    let records: Vec<String> = match &input {
        Some(path) => std::fs::read_to_string(path)
            .expect("reading --input")
            .lines()
            .map(str::to_owned)
            .collect(),
        None => {
            let mut rng = Lcg(0x5eed);
            (0..n).map(|i| profile(i, &mut rng)).collect()
        }
    };
    let n = records.len();
    let bytes: usize = records.iter().map(String::len).sum();

    let native = outreach_core::Destination::new(&config).expect("benchmark config is valid");
    let component_path = Path::new(outreach_host::BUILT_COMPONENT);
    let cache = std::env::temp_dir().join(format!("outreach-bench-cache-{}", std::process::id()));

    let start = Instant::now();
    let (_, source) = Runtime::load_reporting(component_path, Some(&cache), Limits::default())
        .expect("loading the component");
    let cold = start.elapsed();
    assert_eq!(source, CompileSource::Compiled);
    let start = Instant::now();
    let (runtime, source) =
        Runtime::load_reporting(component_path, Some(&cache), Limits::default())
            .expect("loading the component");
    let cached = start.elapsed();
    assert_eq!(source, CompileSource::Cache);
    let _ = std::fs::remove_dir_all(&cache);

    let mut wasm = runtime
        .configure(&config)
        .expect("component call")
        .expect("benchmark config is valid");

    // Both sides must do the same work: compare their outcomes first.
    let native_outcomes = native.plan(&records[..batch.min(n)]);
    let wasm_outcomes = wasm.plan(&records[..batch.min(n)]).expect("plan");
    assert_eq!(
        native_outcomes, wasm_outcomes,
        "native and component differ"
    );
    let sends = native_outcomes
        .iter()
        .filter(|o| matches!(o, PlanOutcome::Send(_)))
        .count();
    // A file may hold bad records on purpose.
    assert!(
        from_file || sends == batch.min(n),
        "every benchmark profile must plan a request"
    );

    let (native_rate, native_time) = measure(rounds, &records, batch, |chunk| native.plan(chunk));
    let (wasm_rate, wasm_time) = measure(rounds, &records, batch, |chunk| {
        wasm.plan(chunk).expect("plan")
    });

    match &input {
        Some(path) => println!(
            "workload: {n} lines of {path} ({:.0} bytes each on average), batches of {batch}, best of {rounds} rounds",
            bytes as f64 / n as f64
        ),
        None => println!(
            "workload: {n} profiles ({:.0} bytes each on average), 30 mapped attributes, {AUDIENCES} audiences, batches of {batch}, best of {rounds} rounds",
            bytes as f64 / n as f64
        ),
    }
    println!(
        "component load: compiled {:.1} ms, from cache {:.2} ms",
        cold.as_secs_f64() * 1e3,
        cached.as_secs_f64() * 1e3
    );
    println!(
        "native core:           {native_rate:>10.0} records/s  ({:.1} ms for {n})",
        native_time.as_secs_f64() * 1e3
    );
    println!(
        "component in wasmtime: {wasm_rate:>10.0} records/s  ({:.1} ms for {n})",
        wasm_time.as_secs_f64() * 1e3
    );
    println!(
        "component / native:    {:.2}x the native throughput ({:.2}x slower)",
        wasm_rate / native_rate,
        native_rate / wasm_rate
    );
}
