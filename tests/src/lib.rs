//! Runs the golden vectors in `tests/vectors/` against any implementation of
//! the destination contract: the native `outreach-core`, or the built
//! component inside the wasmtime host. Both must produce exactly the
//! expected outcomes.
//!
//! Vector format (JSON files):
//! - `config/*.json`: `cases[]` of `{name, config | config_text | config_file,
//!   expect: {ok: true} | {errors: [{setting, message}]}}`;
//! - `plan/*.json`: `config_file`, `cases[]` of `{name, record | record_text |
//!   record_parts, config_file?, expect: {send: [request]} | {skip: reason} |
//!   {invalid: {code, message, audiences}}}`; an expected request's `body` is
//!   compared as JSON (`body_parts` builds it as text first); without
//!   `headers` the JSON:API headers are required;
//! - `classify/*.json`: `config_file`, `now_ms`, a default `request`, and
//!   `cases[]` of `{name, request?, response: {status, headers?, body?},
//!   expect: {verdict, budget?}}`; a JSON `body` is sent as its text;
//! - `merge/*.json`: `config_file`, a default `request` (without body), and
//!   `cases[]` of `{name, older, newer, expect: {merged: request | null}}`;
//!   `older`/`newer` override fields of the default request, their `body`
//!   is JSON sent as text (`body_text`: text as is); the expected request
//!   overrides fields of `newer` and its body is compared as JSON. Only for
//!   subjects whose contract has `merge`;
//! - `describe.json`: the expected descriptor fields.
//!
//! `*_parts` are lists of strings and `{repeat, times}` objects,
//! concatenated: they express very large or deeply nested inputs without
//! storing them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use destination_types::{
    self as types, Classification, ConfigError, Descriptor, Header, PlanOutcome, Request, Response,
};
use serde_json::{Value, json};

/// An implementation of the destination contract under test.
pub trait Subject {
    fn name(&self) -> &'static str;
    fn describe(&self) -> Result<Descriptor, String>;
    #[allow(clippy::type_complexity)]
    fn configure(
        &self,
        config: &str,
    ) -> Result<Result<Box<dyn Configured + '_>, Vec<ConfigError>>, String>;
    /// Whether the subject's contract has `merge` (0.2 and later).
    fn merges(&self) -> bool {
        true
    }
    /// Whether the subject's contract lets a delivery take several steps
    /// (0.3 and later): the `steps/` vectors are its.
    fn takes_steps(&self) -> bool {
        true
    }
}

/// A configured destination under test.
pub trait Configured {
    fn plan(&mut self, records: &[String]) -> Result<Vec<PlanOutcome>, String>;
    fn classify(
        &mut self,
        request: &Request,
        response: &Response,
        now_ms: u64,
    ) -> Result<Classification, String>;
    fn merge(&mut self, older: &Request, newer: &Request) -> Result<Option<Request>, String>;
    fn recall(&mut self, request: &Request, value: &str) -> Result<Request, String>;
}

/// The native core.
pub struct Native;

struct NativeConfigured(outreach_core::Destination);

impl Subject for Native {
    fn name(&self) -> &'static str {
        "native core"
    }
    fn describe(&self) -> Result<Descriptor, String> {
        Ok(outreach_core::describe())
    }
    fn configure(
        &self,
        config: &str,
    ) -> Result<Result<Box<dyn Configured + '_>, Vec<ConfigError>>, String> {
        Ok(outreach_core::Destination::new(config)
            .map(|d| Box::new(NativeConfigured(d)) as Box<dyn Configured>))
    }
}

impl Configured for NativeConfigured {
    fn plan(&mut self, records: &[String]) -> Result<Vec<PlanOutcome>, String> {
        Ok(self.0.plan(records))
    }
    fn classify(
        &mut self,
        request: &Request,
        response: &Response,
        now_ms: u64,
    ) -> Result<Classification, String> {
        Ok(self.0.classify(request, response, now_ms))
    }
    fn merge(&mut self, older: &Request, newer: &Request) -> Result<Option<Request>, String> {
        Ok(self.0.merge(older, newer))
    }
    fn recall(&mut self, request: &Request, value: &str) -> Result<Request, String> {
        Ok(self.0.recall(request, value))
    }
}

/// A built component, run by the reference host's engine.
pub struct Wasm {
    name: &'static str,
    runtime: outreach_host::engine::Runtime,
}

impl Wasm {
    /// Loads the component `host/build.rs` built from this workspace.
    pub fn built() -> Self {
        Self::load("component in wasmtime", outreach_host::BUILT_COMPONENT)
    }

    /// The same destination built against contract 0.2.0.
    pub fn built_v0_2() -> Self {
        Self::load(
            "contract 0.2.0 component in wasmtime",
            outreach_host::BUILT_COMPONENT_V0_2,
        )
    }

    /// The same destination built against contract 0.1.0.
    pub fn built_v0_1() -> Self {
        Self::load(
            "contract 0.1.0 component in wasmtime",
            outreach_host::BUILT_COMPONENT_V0_1,
        )
    }

    fn load(name: &'static str, path: &str) -> Self {
        let runtime = outreach_host::engine::Runtime::load(
            Path::new(path),
            None,
            outreach_host::engine::Limits::default(),
        )
        .unwrap_or_else(|e| panic!("loading {path}: {e}"));
        Self { name, runtime }
    }
}

struct WasmConfigured(outreach_host::engine::Configured);

impl Subject for Wasm {
    fn name(&self) -> &'static str {
        self.name
    }
    fn describe(&self) -> Result<Descriptor, String> {
        Ok(self.runtime.describe().clone())
    }
    fn merges(&self) -> bool {
        self.runtime.can_merge()
    }
    fn takes_steps(&self) -> bool {
        self.runtime.takes_steps()
    }
    fn configure(
        &self,
        config: &str,
    ) -> Result<Result<Box<dyn Configured + '_>, Vec<ConfigError>>, String> {
        match self.runtime.configure(config) {
            Ok(Ok(d)) => Ok(Ok(Box::new(WasmConfigured(d)))),
            Ok(Err(errors)) => Ok(Err(errors)),
            Err(e) => Err(e.to_string()),
        }
    }
}

impl Configured for WasmConfigured {
    fn plan(&mut self, records: &[String]) -> Result<Vec<PlanOutcome>, String> {
        self.0.plan(records).map_err(|e| e.to_string())
    }
    fn classify(
        &mut self,
        request: &Request,
        response: &Response,
        now_ms: u64,
    ) -> Result<Classification, String> {
        self.0
            .classify(request, response, now_ms)
            .map_err(|e| e.to_string())
    }
    fn merge(&mut self, older: &Request, newer: &Request) -> Result<Option<Request>, String> {
        self.0.merge(older, newer).map_err(|e| e.to_string())
    }
    fn recall(&mut self, request: &Request, value: &str) -> Result<Request, String> {
        self.0.recall(request, value).map_err(|e| e.to_string())
    }
}

/// Where the vectors live.
pub fn vectors_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("vectors")
}

/// The outcome of running every vector against one subject.
#[derive(Debug, Default)]
pub struct Report {
    pub cases: usize,
    pub failures: Vec<String>,
}

impl Report {
    fn check(&mut self, case: &str, expected: &Value, actual: &Value) {
        self.cases += 1;
        if expected != actual {
            self.failures.push(format!(
                "{case}\n  expected: {}\n  actual:   {}",
                abbreviate(expected),
                abbreviate(actual)
            ));
        }
    }

    fn fail(&mut self, case: &str, why: String) {
        self.cases += 1;
        self.failures.push(format!("{case}\n  {why}"));
    }
}

/// Long values (the large-record vectors) are shortened in failure output.
fn abbreviate(v: &Value) -> String {
    let text = v.to_string();
    if text.len() <= 2_000 {
        return text;
    }
    let head: String = text.chars().take(1_000).collect();
    format!("{head}… ({} bytes)", text.len())
}

fn read_json(path: &Path) -> Value {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()))
}

fn files_in(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("listing {}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    files
}

/// Text from `parts`: strings and `{repeat, times}` objects, concatenated.
pub fn build_parts(parts: &Value) -> String {
    let mut text = String::new();
    for part in parts.as_array().expect("*_parts is an array") {
        match part {
            Value::String(s) => text.push_str(s),
            Value::Object(o) => {
                let unit = o["repeat"].as_str().expect("repeat is a string");
                let times = o["times"].as_u64().expect("times is a number");
                text.push_str(&unit.repeat(times as usize));
            }
            other => panic!("unexpected part {other}"),
        }
    }
    text
}

/// The text form of an input given as `x`, `x_text` or `x_parts`.
fn text_of(case: &Value, field: &str) -> Option<String> {
    if let Some(v) = case.get(format!("{field}_text")) {
        return Some(v.as_str().expect("*_text is a string").to_owned());
    }
    if let Some(parts) = case.get(format!("{field}_parts")) {
        return Some(build_parts(parts));
    }
    case.get(field).map(Value::to_string)
}

fn config_text(dir: &Path, holder: &Value) -> Option<String> {
    if let Some(file) = holder.get("config_file") {
        let path = dir.join(file.as_str().expect("config_file is a string"));
        return Some(
            std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("reading {}: {e}", path.display())),
        );
    }
    text_of(holder, "config")
}

/// Runs every vector against `subject`.
pub fn run_all(subject: &dyn Subject) -> Report {
    let dir = vectors_dir();
    let mut report = Report::default();
    run_describe(subject, &dir, &mut report);
    for file in files_in(&dir.join("config")) {
        run_config_file(subject, &dir, &file, &mut report);
    }
    for file in files_in(&dir.join("plan")) {
        run_plan_file(subject, &dir, &file, &mut report);
    }
    for file in files_in(&dir.join("classify")) {
        run_classify_file(subject, &dir, &file, &mut report);
    }
    if subject.merges() {
        for file in files_in(&dir.join("merge")) {
            run_merge_file(subject, &dir, &file, &mut report);
        }
    }
    if subject.takes_steps() {
        for file in files_in(&dir.join("steps")) {
            run_steps_file(subject, &dir, &file, &mut report);
        }
    }
    report
}

/// How many cases the vectors on disk hold for a subject: what
/// [`run_all`] must report having run. (`describe.json` is two: the
/// fields, and the schema's shape.)
pub fn cases_on_disk(merges: bool, steps: bool) -> usize {
    let dir = vectors_dir();
    let mut kinds = vec!["config", "plan", "classify"];
    if merges {
        kinds.push("merge");
    }
    if steps {
        kinds.push("steps");
    }
    2 + kinds
        .into_iter()
        .flat_map(|kind| files_in(&dir.join(kind)))
        .map(|file| read_json(&file)["cases"].as_array().map_or(0, Vec::len))
        .sum::<usize>()
}

fn run_describe(subject: &dyn Subject, dir: &Path, report: &mut Report) {
    let vector = read_json(&dir.join("describe.json"));
    match subject.describe() {
        Err(e) => report.fail("describe", e),
        Ok(descriptor) => {
            let mut actual = serde_json::to_value(&descriptor).expect("serialisable");
            let schema = actual
                .as_object_mut()
                .and_then(|o| o.remove("config-schema"))
                .and_then(|s| s.as_str().map(str::to_owned))
                .unwrap_or_default();
            let schema: Value = serde_json::from_str(&schema).unwrap_or(Value::Null);
            report.check(
                "describe: config-schema is an object schema",
                &json!("object"),
                &schema["type"],
            );
            actual.as_object_mut().expect("object").remove("version");
            report.check("describe", &vector["expect"], &actual);
        }
    }
}

fn run_config_file(subject: &dyn Subject, dir: &Path, file: &Path, report: &mut Report) {
    let vector = read_json(file);
    let file_name = file.file_name().unwrap_or_default().to_string_lossy();
    for case in vector["cases"].as_array().expect("cases") {
        let name = format!(
            "config/{file_name}: {}",
            case["name"].as_str().unwrap_or("?")
        );
        let config = config_text(dir, case).expect("a config");
        let actual = match subject.configure(&config) {
            Err(e) => {
                report.fail(&name, e);
                continue;
            }
            Ok(Ok(_)) => json!({ "ok": true }),
            Ok(Err(errors)) => json!({ "errors": errors }),
        };
        report.check(&name, &case["expect"], &actual);
    }
}

/// The JSON:API headers every Outreach write must carry.
fn json_api_headers() -> Value {
    json!([
        { "name": "Content-Type", "value": "application/vnd.api+json" },
        { "name": "Accept", "value": "application/vnd.api+json" }
    ])
}

/// An actual outcome in the vectors' form: bodies parsed, and headers kept
/// only where the expectation states them (otherwise checked here).
fn comparable_outcome(outcome: &PlanOutcome, expected: &Value) -> Value {
    let mut actual = serde_json::to_value(outcome).expect("serialisable");
    let Some(requests) = actual.get_mut("send").and_then(Value::as_array_mut) else {
        return actual;
    };
    for (i, request) in requests.iter_mut().enumerate() {
        let expected_request = &expected["send"][i];
        let body_text = request["body"].as_str().unwrap_or_default().to_owned();
        request["body"] = serde_json::from_str(&body_text)
            .unwrap_or_else(|_| json!({ "unparseable body": body_text }));
        if expected_request.get("headers").is_none() && request["headers"] == json_api_headers() {
            request.as_object_mut().expect("object").remove("headers");
        }
    }
    actual
}

/// The expectation with `body_parts` turned into a parsed `body`.
fn normalised_expectation(expect: &Value) -> Value {
    let mut expect = expect.clone();
    if let Some(requests) = expect.get_mut("send").and_then(Value::as_array_mut) {
        for request in requests {
            if let Some(parts) = request.as_object_mut().and_then(|o| o.remove("body_parts")) {
                request["body"] =
                    serde_json::from_str(&build_parts(&parts)).expect("body_parts build JSON");
            }
        }
    }
    expect
}

fn run_plan_file(subject: &dyn Subject, dir: &Path, file: &Path, report: &mut Report) {
    let vector = read_json(file);
    let file_name = file.file_name().unwrap_or_default().to_string_lossy();
    // Cases sharing a configuration are planned as one batch, as a host does.
    let mut batches: BTreeMap<String, Vec<&Value>> = BTreeMap::new();
    for case in vector["cases"].as_array().expect("cases") {
        let config = config_text(dir, case)
            .or_else(|| config_text(dir, &vector))
            .expect("a config for every plan case");
        batches.entry(config).or_default().push(case);
    }
    for (config, cases) in batches {
        let names: Vec<String> = cases
            .iter()
            .map(|c| format!("plan/{file_name}: {}", c["name"].as_str().unwrap_or("?")))
            .collect();
        let mut destination = match subject.configure(&config) {
            Ok(Ok(d)) => d,
            Ok(Err(errors)) => {
                names
                    .iter()
                    .for_each(|n| report.fail(n, format!("configuration refused: {errors:?}")));
                continue;
            }
            Err(e) => {
                names.iter().for_each(|n| report.fail(n, e.clone()));
                continue;
            }
        };
        let records: Vec<String> = cases
            .iter()
            .map(|c| text_of(c, "record").expect("a record"))
            .collect();
        let outcomes = match destination.plan(&records) {
            Ok(o) => o,
            Err(e) => {
                names.iter().for_each(|n| report.fail(n, e.clone()));
                continue;
            }
        };
        if outcomes.len() != cases.len() {
            report.fail(
                &format!("plan/{file_name}"),
                format!("{} outcomes for {} records", outcomes.len(), cases.len()),
            );
            continue;
        }
        for ((case, outcome), name) in cases.iter().zip(&outcomes).zip(&names) {
            let expected = normalised_expectation(&case["expect"]);
            let actual = comparable_outcome(outcome, &expected);
            report.check(name, &expected, &actual);
            if let PlanOutcome::Send(requests) = outcome {
                for request in requests {
                    if request
                        .headers
                        .iter()
                        .any(|h| h.name.eq_ignore_ascii_case("authorization"))
                    {
                        report.fail(name, "a planned request carries Authorization".into());
                    }
                }
            }
        }
    }
}

fn request_from(value: &Value) -> Request {
    serde_json::from_value(value.clone()).expect("a request in the vector's form")
}

fn response_from(value: &Value) -> Response {
    let body = match &value["body"] {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let headers: Vec<Header> =
        serde_json::from_value(value.get("headers").cloned().unwrap_or(json!([])))
            .expect("headers");
    Response {
        status: u16::try_from(value["status"].as_u64().expect("status")).expect("a u16 status"),
        headers,
        body,
    }
}

/// A vector file's destination; a refused configuration is one failure.
fn configured<'s>(
    subject: &'s dyn Subject,
    config: &str,
    file: &str,
    report: &mut Report,
) -> Option<Box<dyn Configured + 's>> {
    match subject.configure(config) {
        Ok(Ok(destination)) => Some(destination),
        other => {
            report.fail(file, format!("configuration refused: {:?}", other.err()));
            None
        }
    }
}

fn run_classify_file(subject: &dyn Subject, dir: &Path, file: &Path, report: &mut Report) {
    let vector = read_json(file);
    let file_name = file.file_name().unwrap_or_default().to_string_lossy();
    let config = config_text(dir, &vector).expect("a config for classify vectors");
    let now_ms = vector["now_ms"].as_u64().expect("now_ms");
    let Some(mut destination) =
        configured(subject, &config, &format!("classify/{file_name}"), report)
    else {
        return;
    };
    for case in vector["cases"].as_array().expect("cases") {
        let name = format!(
            "classify/{file_name}: {}",
            case["name"].as_str().unwrap_or("?")
        );
        let request = request_from(case.get("request").unwrap_or(&vector["request"]));
        let response = response_from(&case["response"]);
        match destination.classify(&request, &response, now_ms) {
            Err(e) => report.fail(&name, e),
            Ok(classification) => {
                let mut actual = serde_json::to_value(&classification).expect("serialisable");
                if case["expect"].get("budget").is_none() {
                    actual.as_object_mut().expect("object").remove("budget");
                }
                report.check(&name, &case["expect"], &actual);
            }
        }
    }
}

/// A merge vector's request: the default request with `overrides`' fields.
fn merge_request(default: &Value, overrides: &Value) -> Request {
    let mut request = default.clone();
    let fields = request
        .as_object_mut()
        .expect("the default request is an object");
    for (name, value) in overrides.as_object().expect("a request is an object") {
        match name.as_str() {
            "body" => fields.insert("body".into(), Value::String(value.to_string())),
            "body_text" => fields.insert("body".into(), value.clone()),
            _ => fields.insert(name.clone(), value.clone()),
        };
    }
    request_from(&request)
}

fn run_merge_file(subject: &dyn Subject, dir: &Path, file: &Path, report: &mut Report) {
    let vector = read_json(file);
    let file_name = file.file_name().unwrap_or_default().to_string_lossy();
    let config = config_text(dir, &vector).expect("a config for merge vectors");
    let Some(mut destination) = configured(subject, &config, &format!("merge/{file_name}"), report)
    else {
        return;
    };
    for case in vector["cases"].as_array().expect("cases") {
        let name = format!(
            "merge/{file_name}: {}",
            case["name"].as_str().unwrap_or("?")
        );
        let older = merge_request(&vector["request"], &case["older"]);
        let newer = merge_request(&vector["request"], &case["newer"]);
        let as_json = |request: Request| {
            let mut value = serde_json::to_value(&request).expect("serialisable");
            let body = serde_json::from_str(&request.body).unwrap_or(Value::String(request.body));
            value["body"] = body;
            value
        };
        let expected = match &case["expect"]["merged"] {
            Value::Null => Value::Null,
            merged => {
                let newer_json = serde_json::to_value(&newer).expect("serialisable");
                as_json(merge_request(&newer_json, merged))
            }
        };
        match destination.merge(&older, &newer) {
            Err(e) => report.fail(&name, e),
            Ok(merged) => report.check(&name, &expected, &merged.map_or(Value::Null, as_json)),
        }
    }
}

/// A request as the `steps/` vectors write it: its body and context (JSON
/// text, when not empty) parsed, so key order does not matter.
fn step_json(request: &Request) -> Value {
    let mut value = serde_json::to_value(request).expect("serialisable");
    for field in ["body", "context"] {
        if let Some(text) = value.get(field).and_then(Value::as_str).map(str::to_owned)
            && !text.is_empty()
        {
            value[field] = serde_json::from_str(&text).unwrap_or(json!({ "unparseable": text }));
        }
    }
    value
}

/// A request written as [`step_json`] writes it, back as a request.
fn step_request(value: &Value) -> Request {
    let mut value = value.clone();
    for field in ["body", "context"] {
        if let Some(parsed) = value.get(field).filter(|v| !v.is_string()).cloned() {
            value[field] = Value::String(parsed.to_string());
        }
    }
    request_from(&value)
}

/// Deliveries of several steps: each case plans a record (`record`),
/// recalls a fact into a request (`recall`: request and value), classifies
/// a step's response (`request` and `response`) or merges two steps
/// (`older`, `newer`), or validates a configuration (`config` or
/// `config_file`).
fn run_steps_file(subject: &dyn Subject, dir: &Path, file: &Path, report: &mut Report) {
    let vector = read_json(file);
    let file_name = file.file_name().unwrap_or_default().to_string_lossy();
    let default_config = config_text(dir, &vector).expect("a config for steps vectors");
    let now_ms = vector["now_ms"].as_u64().unwrap_or(0);
    for case in vector["cases"].as_array().expect("cases") {
        let name = format!(
            "steps/{file_name}: {}",
            case["name"].as_str().unwrap_or("?")
        );
        let config = config_text(dir, case);
        if case.get("record").is_none()
            && case.get("recall").is_none()
            && case.get("response").is_none()
            && case.get("older").is_none()
        {
            let config = config.expect("a configuration case has a config");
            let actual = match subject.configure(&config) {
                Err(e) => {
                    report.fail(&name, e);
                    continue;
                }
                Ok(Ok(_)) => json!({ "ok": true }),
                Ok(Err(errors)) => json!({ "errors": errors }),
            };
            report.check(&name, &case["expect"], &actual);
            continue;
        }
        let config = config.unwrap_or_else(|| default_config.clone());
        let Some(mut destination) = configured(subject, &config, &name, report) else {
            continue;
        };
        let actual = if let Some(record) = text_of(case, "record") {
            match destination.plan(&[record]) {
                Err(e) => Err(e),
                Ok(outcomes) => Ok(match outcomes.into_iter().next() {
                    Some(PlanOutcome::Send(requests)) => {
                        json!({ "send": requests.iter().map(step_json).collect::<Vec<_>>() })
                    }
                    Some(other) => serde_json::to_value(other).expect("serialisable"),
                    None => Value::Null,
                }),
            }
        } else if let Some(recall) = case.get("recall") {
            let request = step_request(&recall["request"]);
            let value = recall["value"].as_str().expect("a fact's value");
            destination
                .recall(&request, value)
                .map(|request| step_json(&request))
        } else if let Some(response) = case.get("response") {
            let request = step_request(&case["request"]);
            destination
                .classify(&request, &response_from(response), now_ms)
                .map(|classification| {
                    let mut actual = serde_json::to_value(&classification).expect("serialisable");
                    if let types::Verdict::Continue(next) = &classification.verdict {
                        actual["verdict"] = json!({ "continue": step_json(next) });
                    }
                    if case["expect"].get("budget").is_none() {
                        actual.as_object_mut().expect("object").remove("budget");
                    }
                    actual
                })
        } else {
            let older = step_request(&case["older"]);
            let newer = step_request(&case["newer"]);
            destination
                .merge(&older, &newer)
                .map(|merged| merged.map_or(Value::Null, |m| step_json(&m)))
        };
        match actual {
            Err(e) => report.fail(&name, e),
            Ok(actual) => report.check(&name, &case["expect"], &actual),
        }
    }
}
