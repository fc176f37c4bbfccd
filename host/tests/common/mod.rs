//! Helpers shared by the host's tests: loopback addresses, scratch
//! directories and unique temporary paths, the built component, the
//! example configuration, and the `outreach-host` command driven against
//! the simulator on loopback.
#![allow(dead_code)] // each test file uses its own part

pub mod browser;
pub mod nats;
pub mod serve;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// The repository's root directory.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("host/ is in the repository")
        .to_path_buf()
}

/// The configuration in `examples/destination.json`.
pub fn example_config() -> String {
    std::fs::read_to_string(repo_root().join("examples/destination.json")).unwrap()
}

/// The Outreach component built from this workspace, loaded.
pub fn runtime() -> outreach_host::engine::Runtime {
    outreach_host::engine::Runtime::load(
        Path::new(outreach_host::BUILT_COMPONENT),
        None,
        outreach_host::engine::Limits::default(),
    )
    .expect("the built component loads")
}

/// A configuration mapping the first name and one audience, `audience`,
/// into custom field `mapping_id`.
pub fn one_audience_config(name: &str, audience: &str, mapping_id: u32) -> String {
    serde_json::json!({
        "name": name,
        "identityMapping": { "source": "Oid", "target": "OutreachId" },
        "attributeMappings": [ { "source": "person.name.firstName", "target": "firstName" } ],
        "audiences": [ { "id": audience, "name": "Webinar", "mappingId": mapping_id } ]
    })
    .to_string()
}

/// A profile as the pipeline sends it: prospect `id` in the `Oid`
/// namespace, and what a test gives it.
pub struct Profile(serde_json::Value);

impl Profile {
    pub fn new(id: u64) -> Self {
        Self(serde_json::json!({ "identityMap": { "Oid": [ { "id": id.to_string() } ] } }))
    }

    fn person(&mut self) -> &mut serde_json::Map<String, serde_json::Value> {
        let person = &mut self.0["person"];
        if !person.is_object() {
            *person = serde_json::json!({});
        }
        person.as_object_mut().expect("an object")
    }

    pub fn first_name(mut self, first: &str) -> Self {
        self.person()
            .insert("name".into(), serde_json::json!({ "firstName": first }));
        self
    }

    pub fn job_title(mut self, title: &str) -> Self {
        self.person().insert("jobTitle".into(), title.into());
        self
    }

    /// A member of `audience` with `status` (`realized`, `exited`, …).
    pub fn audience(mut self, audience: &str, status: &str) -> Self {
        self.0["segmentMembership"]["ups"][audience] = serde_json::json!({ "status": status });
        self
    }
}

impl std::fmt::Display for Profile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Prospect `id`, named `first`, a realized member of `audience`.
pub fn member_profile(audience: &str, id: u64, first: &str) -> String {
    Profile::new(id)
        .first_name(first)
        .audience(audience, "realized")
        .to_string()
}

/// A path in the temporary directory no other call of this process gets.
pub fn temp_path(prefix: &str, name: &str) -> PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    std::env::temp_dir().join(format!(
        "outreach-{prefix}-{}-{n}-{name}",
        std::process::id()
    ))
}

/// An empty directory of this test process.
pub fn scratch(prefix: &str, name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("outreach-{prefix}-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Writes `text` to `dir/name`; its path.
pub fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

/// The `outreach-host` command with a home of its own in `dir`: `HOME`
/// and the XDG directories point there and the `OUTREACH_*` locations are
/// unset, so whatever it keeps in its default places (journal, token
/// store, compile cache) never touches the user's, and a test can read it.
pub fn outreach_host(dir: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_outreach-host"));
    command
        .env("HOME", dir)
        .env("XDG_STATE_HOME", dir.join("state"))
        .env("XDG_CACHE_HOME", dir.join("cache"))
        .env("XDG_CONFIG_HOME", dir.join("config"))
        .env_remove("OUTREACH_JOURNAL")
        .env_remove("OUTREACH_TOKEN_STORE")
        .env_remove("OUTREACH_CACHE_DIR");
    command
}

/// The command line with a journal and cache in `dir` and a fixed token.
pub struct Cli {
    pub dir: PathBuf,
    pub token: String,
}

impl Cli {
    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = outreach_host(&self.dir);
        command
            .arg("--journal")
            .arg(self.dir.join("journal.sqlite"))
            .arg("--cache-dir")
            .arg(self.dir.join("cache"))
            .args(args)
            .env("OUTREACH_ACCESS_TOKEN", &self.token)
            .env("RUST_LOG", "error")
            .stdin(Stdio::null());
        command
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }

    /// Runs a command that prints JSON and must succeed.
    pub fn json(&self, args: &[&str]) -> Value {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// Runs a command that prints JSON lines and must succeed.
    pub fn lines(&self, args: &[&str]) -> Vec<Value> {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

pub fn between<'a>(text: &'a str, start: &str, end: &str) -> &'a str {
    let from = text.find(start).expect("marker present") + start.len();
    let len = text[from..].find(end).expect("end marker");
    &text[from..from + len]
}

/// A user in a browser: opens the authorize URL, submits the email form,
/// then the password form, and returns where the server redirected to.
pub async fn browser_login(authorize_url: &str, email: &str, password: &str) -> String {
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let origin = reqwest::Url::parse(authorize_url).unwrap();
    let origin = format!("{}://{}", origin.scheme(), origin.authority());
    let page = http
        .get(authorize_url)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("name=\"email\""), "no email form: {page}");
    let session = between(&page, "name=\"session\" value=\"", "\"").to_owned();
    let page = http
        .post(format!("{origin}/oauth/authorize/email"))
        .form(&[("session", session.as_str()), ("email", email)])
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        page.contains("name=\"password\""),
        "no password form: {page}"
    );
    let response = http
        .post(format!("{origin}/oauth/authorize/password"))
        .form(&[("session", session.as_str()), ("password", password)])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 302);
    response.headers()["location"].to_str().unwrap().to_owned()
}

/// Processes whose command line contains `marker`.
pub fn processes_running(marker: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if cmdline.contains(marker) {
                found.push(cmdline);
            }
        }
    }
    found
}

/// Whether no process with `marker` in its command line is left, allowing
/// a moment for killed ones to be torn down.
pub fn none_left_running(marker: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        if processes_running(marker).is_empty() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The cells of the newest run's row in a destination page's runs table,
/// from the received count on: received, activated, failed, skipped,
/// queued, requests, 429s.
pub fn newest_run_cells(html: &str, destination: &str) -> Vec<String> {
    let row = html
        .split("<tr>")
        .find(|row| row.contains(&format!("/admin/destinations/{destination}/runs/")))
        .unwrap_or_else(|| panic!("no run of {destination}: {html}"));
    row.split("<td>")
        .skip(4)
        .map(|cell| cell.split('<').next().unwrap_or_default().to_owned())
        .collect()
}
