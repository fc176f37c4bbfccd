//! `outreach-host serve` as a child process on a free loopback port, and
//! what its tests share.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use outreach_host::oauth::{TokenSet, TokenStore};
use outreach_simulator::Simulator;

/// Tokens for `users` in a token store in `dir`, as `login` leaves them.
pub fn store_tokens(dir: &Path, simulator: &Simulator, users: &[&str]) -> PathBuf {
    let path = dir.join("tokens.json");
    let store = TokenStore::new(&path);
    for user in users {
        store
            .put(
                user,
                &TokenSet {
                    access_token: simulator.issue_token(user),
                    refresh_token: None,
                    expires_at: Some(4_000_000_000),
                    scope: Some("prospects.all".into()),
                    obtained_at_ms: 0,
                },
            )
            .unwrap();
    }
    path
}

/// `outreach-host serve` on a free loopback port.
pub struct Service {
    pub child: Child,
    pub base: String,
    pub dir: PathBuf,
}

impl Service {
    pub fn start(dir: &Path, extra_env: &[(&str, &str)]) -> Self {
        Self::start_with(dir, &Self::start_args(dir), extra_env)
    }

    /// The arguments of `serve` on a free port with the test's files.
    pub fn start_args(dir: &Path) -> Vec<String> {
        vec![
            "--cache-dir".into(),
            std::env::temp_dir()
                .join(format!("outreach-service-cache-{}", std::process::id()))
                .display()
                .to_string(),
            "--token-store".into(),
            dir.join("tokens.json").display().to_string(),
            "serve".into(),
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--destinations".into(),
            dir.join("destinations.toml").display().to_string(),
        ]
    }

    pub fn start_with(dir: &Path, args: &[String], extra_env: &[(&str, &str)]) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_outreach-host"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("serve.log"))
            .unwrap();
        command
            .args(args)
            .env("RUST_LOG", "warn")
            .env("OUTREACH_CLIENT_ID", "sim-client-id")
            .env("OUTREACH_CLIENT_SECRET", "sim-client-secret")
            .env_remove("OUTREACH_ACCESS_TOKEN")
            .envs(extra_env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log);
        let mut child = command.spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (sender, receiver) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = sender.send(line);
        });
        let line = receiver
            .recv_timeout(Duration::from_secs(120))
            .unwrap_or_default();
        let Some(base) = line.trim().strip_prefix("listening on ") else {
            let _ = child.kill();
            panic!(
                "serve did not start ({line:?}): {}",
                std::fs::read_to_string(dir.join("serve.log")).unwrap_or_default()
            );
        };
        Self {
            base: base.to_owned(),
            child,
            dir: dir.to_owned(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY: sending a signal to our own child process.
        unsafe {
            libc::kill(self.child.id() as i32, signal);
        }
    }

    pub fn wait(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "serve did not exit in {limit:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("serve.log")).unwrap_or_default()
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until `done` holds, polling.
pub async fn eventually(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

pub fn first_name(simulator: &Simulator, id: u64) -> Option<String> {
    simulator
        .prospect(id)?
        .get("firstName")?
        .as_str()
        .map(str::to_owned)
}

/// The status page's password hash for `password`, as
/// `outreach-host admin-password` prints it.
pub fn password_hash(password: &str) -> String {
    let mut child = Command::new(env!("CARGO_BIN_EXE_outreach-host"))
        .arg("admin-password")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), password.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// One try through the sign-in form (its own cookie and token) as `user`:
/// the answer as it comes.
pub async fn sign_in_attempt(
    http: &reqwest::Client,
    service: &Service,
    user: &str,
    password: &str,
) -> reqwest::Response {
    let page = http
        .get(service.url("/admin/sign-in"))
        .send()
        .await
        .unwrap();
    let form_cookie = page.headers()["set-cookie"].to_str().unwrap().to_owned();
    let form_cookie = form_cookie.split(';').next().unwrap().to_owned();
    let html = page.text().await.unwrap();
    let from = html.find("name=\"form\" value=\"").unwrap() + 19;
    let form = &html[from..from + html[from..].find('"').unwrap()];
    http.post(service.url("/admin/sign-in"))
        .header("cookie", &form_cookie)
        .form(&[("user", user), ("password", password), ("form", form)])
        .send()
        .await
        .unwrap()
}

/// Signs in to `service`'s status page over HTTP as `user`, through the
/// sign-in form; the session cookie (`name=value`).
pub async fn sign_in(
    http: &reqwest::Client,
    service: &Service,
    user: &str,
    password: &str,
) -> String {
    let signed_in = sign_in_attempt(http, service, user, password).await;
    assert_eq!(signed_in.status(), 303);
    signed_in
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|c| c.to_str().unwrap().split(';').next().unwrap().to_owned())
        .find(|c| c.starts_with("outreach_host_session="))
        .expect("a session cookie")
}
