//! A headless chromium driven over WebDriver (Debian's chromedriver),
//! for the status page's tests. Each page a test wants to keep is saved
//! as a PNG under `target/tmp/screenshots/`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{Value, json};

use super::loopback;

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";

/// chromedriver on a free port, and a headless chromium session through
/// it; both end with the value.
pub struct Browser {
    client: Option<Client>,
    driver: Child,
    _profile: PathBuf,
}

impl Browser {
    pub async fn start(profile: PathBuf) -> Self {
        assert!(
            Path::new(CHROMEDRIVER).exists() && Path::new(CHROMIUM).exists(),
            "the browser tests need Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)"
        );
        let port = std::net::TcpListener::bind(loopback())
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let capabilities = json!({
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--disable-quic", "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--window-size=1100,900",
                    format!("--user-data-dir={}", profile.display()),
                ]
            }
        });
        let Value::Object(capabilities) = capabilities else {
            unreachable!("a JSON object")
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        let client = loop {
            match ClientBuilder::new(HttpConnector::new())
                .capabilities(capabilities.clone())
                .connect(&format!("http://127.0.0.1:{port}"))
                .await
            {
                Ok(client) => break client,
                Err(e) => {
                    assert!(Instant::now() < deadline, "no WebDriver session: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        };
        Self {
            client: Some(client),
            driver,
            _profile: profile,
        }
    }

    pub fn client(&self) -> &Client {
        self.client.as_ref().expect("the session is open")
    }

    /// Saves what the browser shows as `target/tmp/screenshots/NAME.png`.
    pub async fn screenshot(&self, name: &str) {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("screenshots");
        std::fs::create_dir_all(&dir).unwrap();
        let png = self.client().screenshot().await.unwrap();
        assert!(png.starts_with(b"\x89PNG"), "not a PNG");
        std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
    }

    /// The page's text (read again if the page moved on meanwhile).
    pub async fn text(&self) -> String {
        let mut tries = 0;
        loop {
            let read = match self.client().find(Locator::Css("body")).await {
                Ok(body) => body.text().await,
                Err(e) => Err(e),
            };
            match read {
                Ok(text) => return text,
                Err(e) if tries < 10 => {
                    tries += 1;
                    page_moved_on(e).await;
                }
                Err(e) => panic!("cannot read the page: {e}"),
            }
        }
    }

    pub async fn fill(&self, css: &str, text: &str) {
        self.client()
            .find(Locator::Css(css))
            .await
            .unwrap()
            .send_keys(text)
            .await
            .unwrap();
    }

    /// Clicks what `css` finds and waits (10 s at most) for the page it
    /// leads to. Every click in these tests follows a link or submits a
    /// form, and WebDriver's click may return before the browser has left
    /// the page: reading straight after it would read the old page (on a
    /// loaded machine it did). The old page's root going stale is the sign
    /// that the browser left it.
    pub async fn click(&self, css: &str) {
        let leaving = self.client().find(Locator::Css("html")).await.unwrap();
        self.client()
            .find(Locator::Css(css))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while leaving.tag_name().await.is_ok() {
            assert!(Instant::now() < deadline, "clicking {css} led nowhere");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        loop {
            let state = self
                .client()
                .execute("return document.readyState", vec![])
                .await;
            if matches!(state, Ok(Value::String(ref s)) if s == "complete") {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the page after {css} never loaded"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Waits (10 s at most) until the browser is on a page whose URL
    /// contains `part` (a page that moves on by itself).
    pub async fn until_at(&self, part: &str) -> url::Url {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let url = self.client().current_url().await.unwrap();
            if url.as_str().contains(part) {
                return url;
            }
            assert!(Instant::now() < deadline, "never reached {part}: at {url}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Signs `user` in on the sign-in page the browser shows.
    pub async fn sign_in_here(&self, user: &str, password: &str) {
        self.fill("input[name=user]", user).await;
        self.fill("input[name=password]", password).await;
        self.click("button[type=submit]").await;
        assert_eq!(self.path().await, "/admin");
    }

    pub async fn path(&self) -> String {
        self.client().current_url().await.unwrap().path().to_owned()
    }

    pub async fn close(mut self) {
        if let Some(client) = self.client.take() {
            let _ = client.close().await;
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// A page that moved on while it was read: wait for the next one.
pub async fn page_moved_on(_why: fantoccini::error::CmdError) {
    tokio::time::sleep(Duration::from_millis(100)).await;
}
