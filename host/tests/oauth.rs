//! OAuth against the simulator's authorization server: the login (CLI and
//! library), refresh across token expiries, rotation, the mint throttle, a
//! revoked refresh token, and secrets never showing up in outputs.

use std::io::{BufRead, BufReader, Cursor};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use destination_types::ClientAuthentication;
use outreach_host::BUILT_COMPONENT;
use outreach_host::clock::Clock;
use outreach_host::delivery::{self, Credentials, DeliveryOptions, Input, Summary};
use outreach_host::engine::{Limits, Runtime};
use outreach_host::http::ApiClient;
use outreach_host::limiter::Limiter;
use outreach_host::oauth::{
    AppCredentials, OAuthClient, OAuthCredentials, OAuthError, OAuthSettings, REFRESH_MARGIN,
    Redirect, TokenSet, TokenStore,
};
use outreach_simulator::{Faults, OAuthApp, Simulator, SimulatorConfig};
use serde_json::json;

mod common;
use common::{browser_login, outreach_host, scratch, temp_path};

const USER: &str = "demo@example.com";
const PASSWORD: &str = "demo-password";

const CONFIG: &str = r#"{
  "name": "oauth e2e",
  "identityMapping": { "source": "Oid", "target": "OutreachId" },
  "attributeMappings": [ { "source": "person.jobTitle", "target": "title" } ],
  "audiences": [ { "id": "aud", "mappingId": 9 } ]
}"#;

fn records(n: u64) -> Vec<String> {
    (1..=n)
        .map(|id| {
            json!({
                "identityMap": { "Oid": [ { "id": id.to_string() } ] },
                "person": { "jobTitle": format!("Title {id}") },
                "segmentMembership": { "ups": { "aud": { "status": "realized" } } }
            })
            .to_string()
        })
        .collect()
}

async fn simulator(app: OAuthApp, latency: Duration) -> Simulator {
    Simulator::start(
        SimulatorConfig {
            prospect_ids: 1..=1000,
            oauth: app,
            faults: Faults {
                latency,
                ..Faults::default()
            },
            ..SimulatorConfig::default()
        },
        SocketAddr::from(([127, 0, 0, 1], 0)),
    )
    .await
    .unwrap()
}

fn client(sim: &Simulator, redirect_uri: &str, min_interval: Duration) -> OAuthClient {
    client_authenticating(
        sim,
        redirect_uri,
        min_interval,
        ClientAuthentication::RequestBody,
        Clock::system(),
    )
}

fn client_authenticating(
    sim: &Simulator,
    redirect_uri: &str,
    min_interval: Duration,
    client_authentication: ClientAuthentication,
    clock: Clock,
) -> OAuthClient {
    let app = OAuthApp::default();
    OAuthClient::new(OAuthSettings {
        authorize_url: sim.authorize_url(),
        token_url: sim.token_url(),
        redirect_uri: redirect_uri.into(),
        scopes: vec!["prospects.write".into()],
        app: AppCredentials {
            client_id: app.client_id,
            client_secret: app.client_secret,
        },
        pkce: true,
        min_interval_between_tokens: min_interval,
        client_authentication,
        clock,
    })
    .unwrap()
}

/// Credentials for account "ada" of `store`, refreshing through `sim`.
fn stored_credentials(sim: &Simulator, store: &TokenStore, interval: Duration) -> OAuthCredentials {
    stored_credentials_at(sim, store, interval, Clock::system())
}

/// [`stored_credentials`] reading the time from `clock`.
fn stored_credentials_at(
    sim: &Simulator,
    store: &TokenStore,
    interval: Duration,
    clock: Clock,
) -> OAuthCredentials {
    let client = client_authenticating(
        sim,
        "http://127.0.0.1:9/callback",
        interval,
        ClientAuthentication::RequestBody,
        clock,
    );
    OAuthCredentials::load(client, store.clone(), "ada").unwrap()
}

/// Logs in through `sim` and stores the tokens for account "ada": the
/// tokens, and the store.
async fn stored_login(sim: &Simulator) -> (TokenSet, TokenStore) {
    let client = client(sim, "http://127.0.0.1:9/callback", Duration::ZERO);
    let tokens = login(sim, &client).await;
    let store = TokenStore::new(temp_path("oauth", "tokens.json"));
    store.put("ada", &tokens).unwrap();
    (tokens, store)
}

/// Logs in through `sim` and stores the tokens for account "ada" as
/// already expired: the first use must refresh. The tokens as logged in,
/// and the store.
async fn expired_login(sim: &Simulator, interval: Duration) -> (TokenSet, TokenStore) {
    let client = client(sim, "http://127.0.0.1:9/callback", interval);
    let mut tokens = login(sim, &client).await;
    tokens.expires_at = Some(1);
    let store = TokenStore::new(temp_path("oauth", "tokens.json"));
    store.put("ada", &tokens).unwrap();
    (tokens, store)
}

/// What a `login` command printed: the authorize URL, the rest of its
/// standard output, and its standard error read on a thread of its own.
struct LoginOutput {
    url: String,
    stdout: BufReader<std::process::ChildStdout>,
    stderr: std::thread::JoinHandle<String>,
}

/// Reads the `login` command's output up to the authorize URL it prints.
/// Its standard error is read meanwhile: a command logging at debug level
/// (a first compile of the component logs plenty) would otherwise fill the
/// pipe and stop before it printed the URL.
async fn authorize_url_printed_by(child: &mut std::process::Child) -> LoginOutput {
    let mut stderr = child.stderr.take().unwrap();
    let stderr = std::thread::spawn(move || {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut stderr, &mut text).unwrap();
        text
    });
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        loop {
            line.clear();
            assert!(
                stdout.read_line(&mut line).unwrap() > 0,
                "login printed no URL"
            );
            if line.starts_with("http") {
                return LoginOutput {
                    url: line.trim().to_owned(),
                    stdout,
                    stderr,
                };
            }
        }
    })
    .await
    .unwrap()
}

/// Logs in through the library (the CLI test covers the listener).
async fn login(sim: &Simulator, client: &OAuthClient) -> TokenSet {
    let (url, pending) = client.authorize_url();
    let location = browser_login(url.as_str(), USER, PASSWORD).await;
    assert!(location.starts_with(&client.settings().redirect_uri));
    let _ = sim;
    client
        .finish_login(pending, &Redirect::from_url(&location).unwrap())
        .await
        .unwrap()
}

async fn run_with(
    sim: &Simulator,
    credentials: &OAuthCredentials,
    n: u64,
    concurrency: usize,
    dead_letters: Option<PathBuf>,
) -> Summary {
    let runtime = Runtime::load(Path::new(BUILT_COMPONENT), None, Limits::default()).unwrap();
    let destination = runtime.configure(CONFIG).unwrap().unwrap();
    let limiter = Limiter::new(&runtime.describe().rate_limit).unwrap();
    let api = ApiClient::new(&sim.api_base(), Duration::from_secs(10)).unwrap();
    delivery::run(
        destination,
        &api,
        &limiter,
        credentials,
        Input::reader(Cursor::new(records(n).join("\n")), None),
        &DeliveryOptions {
            concurrency,
            dead_letters,
            ..DeliveryOptions::default()
        },
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_login_through_the_loopback_redirect_stores_tokens_owner_only() {
    let sim = simulator(OAuthApp::default(), Duration::ZERO).await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let store_path = temp_path("oauth", "tokens.json");
    let app = OAuthApp::default();
    let mut child = outreach_host(&scratch("oauth", "login-home"))
        .args(["login", "--account", "ada", "--pkce", "--redirect-uri"])
        .arg(format!("http://127.0.0.1:{port}/callback"))
        .args([
            "--authorize-url",
            &sim.authorize_url(),
            "--token-url",
            &sim.token_url(),
        ])
        .arg("--token-store")
        .arg(&store_path)
        .env("OUTREACH_CLIENT_ID", &app.client_id)
        .env("OUTREACH_CLIENT_SECRET", &app.client_secret)
        .env("RUST_LOG", "debug")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let LoginOutput {
        url,
        mut stdout,
        stderr,
    } = authorize_url_printed_by(&mut child).await;
    assert!(
        url.contains("state=") && url.contains("scope=prospects.write"),
        "{url}"
    );
    assert!(url.contains("code_challenge_method=S256"), "{url}");
    let location = browser_login(&url, USER, PASSWORD).await;
    let landing = reqwest::get(&location).await.unwrap().text().await.unwrap();
    assert!(landing.contains("Login received"), "{landing}");

    let output = tokio::task::spawn_blocking(move || {
        let mut rest = String::new();
        std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
        (child.wait().unwrap(), rest, stderr.join().unwrap())
    })
    .await
    .unwrap();
    let (status, rest, stderr) = output;
    assert!(status.success(), "{rest}\n{stderr}");
    assert!(rest.contains("connected: account \"ada\""), "{rest}");

    let mode = std::fs::metadata(&store_path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let tokens = TokenStore::new(&store_path).get("ada").unwrap();
    let refresh = tokens.refresh_token.clone().unwrap();
    for text in [&url, &rest, &stderr, &landing] {
        assert!(!text.contains(&tokens.access_token), "access token leaked");
        assert!(!text.contains(&refresh), "refresh token leaked");
        assert!(!text.contains(&app.client_secret), "client secret leaked");
    }

    // The stored token works against the API.
    let prospect = reqwest::Client::new()
        .get(format!("{}/prospects/1", sim.api_base()))
        .bearer_auth(&tokens.access_token)
        .send()
        .await
        .unwrap();
    assert_eq!(prospect.status(), 200);

    // `auth status` shows the connection, not the secrets.
    let status = outreach_host(&scratch("oauth", "status-home"))
        .args(["auth", "status", "--token-store"])
        .arg(&store_path)
        .output()
        .unwrap();
    let shown = String::from_utf8(status.stdout).unwrap();
    assert!(shown.contains("ada: connected"), "{shown}");
    assert!(shown.contains("scope prospects.write"), "{shown}");
    assert!(!shown.contains(&tokens.access_token) && !shown.contains(&refresh));

    let logout = outreach_host(&scratch("oauth", "logout-home"))
        .args(["logout", "--account", "ada", "--token-store"])
        .arg(&store_path)
        .output()
        .unwrap();
    assert!(logout.status.success());
    assert!(TokenStore::new(&store_path).get("ada").is_err());
    std::fs::remove_file(&store_path).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manual_login_takes_the_pasted_redirect_and_a_client_file() {
    let sim = simulator(OAuthApp::default(), Duration::ZERO).await;
    let store_path = temp_path("oauth", "tokens.json");
    let client_file = temp_path("oauth", "client.json");
    let app = OAuthApp::default();
    std::fs::write(
        &client_file,
        json!({ "client_id": app.client_id, "client_secret": app.client_secret }).to_string(),
    )
    .unwrap();
    // Nothing listens on this redirect URI: the user pastes the address.
    let mut child = outreach_host(&scratch("oauth", "manual-home"))
        .args([
            "login",
            "--manual",
            "--redirect-uri",
            "http://127.0.0.1:9/callback",
        ])
        .args([
            "--authorize-url",
            &sim.authorize_url(),
            "--token-url",
            &sim.token_url(),
        ])
        .arg("--client-file")
        .arg(&client_file)
        .arg("--token-store")
        .arg(&store_path)
        .env_remove("OUTREACH_CLIENT_ID")
        .env_remove("OUTREACH_CLIENT_SECRET")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let LoginOutput { url, stdout, .. } = authorize_url_printed_by(&mut child).await;
    let location = browser_login(&url, USER, PASSWORD).await;
    let output = tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        writeln!(stdin, "{location}").unwrap();
        drop(stdin);
        let mut rest = String::new();
        std::io::Read::read_to_string(&mut stdout.into_inner(), &mut rest).unwrap();
        (child.wait().unwrap(), rest)
    })
    .await
    .unwrap();
    assert!(output.0.success(), "{}", output.1);
    assert!(
        output.1.contains("connected: account \"default\""),
        "{}",
        output.1
    );
    let tokens = TokenStore::new(&store_path).get("default").unwrap();
    assert!(tokens.refresh_token.is_some());
    std::fs::remove_file(&store_path).unwrap();
    std::fs::remove_file(&client_file).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_401_refreshes_once_and_the_run_goes_on() {
    let app = OAuthApp {
        mint_interval: Duration::ZERO,
        ..OAuthApp::default()
    };
    // 40 updates at 50 ms, two at a time: about 1 s.
    let sim = Arc::new(simulator(app, Duration::from_millis(50)).await);
    let client = client(&sim, "http://127.0.0.1:9/callback", Duration::ZERO);
    let tokens = login(&sim, &client).await;
    let store = TokenStore::new(temp_path("oauth", "tokens.json"));
    store.put("ada", &tokens).unwrap();
    let credentials = stored_credentials(&sim, &store, Duration::ZERO);
    // The access token is valid for two hours, but Outreach stops accepting
    // it mid-run.
    let revoker = Arc::clone(&sim);
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        revoker.revoke_access_tokens(USER);
    });
    let summary = run_with(&sim, &credentials, 40, 2, None).await;
    assert_eq!(summary.delivered, 40, "{summary:?}");
    assert!(summary.credential_refreshes >= 1, "{summary:?}");
    assert_eq!(
        credentials.refreshes(),
        1,
        "one refresh for all in-flight 401s"
    );
    assert!(sim.stats().unauthorized >= 1);
    assert_ne!(store.get("ada").unwrap().access_token, tokens.access_token);
    std::fs::remove_file(store.path()).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_state_or_wrong_verifier_is_refused() {
    let sim = simulator(OAuthApp::default(), Duration::ZERO).await;
    let client = client(&sim, "http://127.0.0.1:9/callback", Duration::ZERO);
    let (url, pending) = client.authorize_url();
    let location = browser_login(url.as_str(), USER, PASSWORD).await;
    let mut redirect = Redirect::from_url(&location).unwrap();
    redirect.state = Some("forged".into());
    let error = client.finish_login(pending, &redirect).await.unwrap_err();
    assert!(
        error.to_string().contains("state does not match"),
        "{error}"
    );

    // The code from one login cannot be redeemed with another's verifier.
    let (url, _first) = client.authorize_url();
    let location = browser_login(url.as_str(), USER, PASSWORD).await;
    let (_, second) = client.authorize_url();
    let mut redirect = Redirect::from_url(&location).unwrap();
    redirect.state = Some(second.state().to_owned());
    let error = client.finish_login(second, &redirect).await.unwrap_err();
    assert!(matches!(error, OAuthError::InvalidGrant(_)), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_outlives_several_access_tokens_and_keeps_the_newest_refresh_token() {
    let app = OAuthApp {
        access_lifetime: Duration::from_secs(1),
        mint_interval: Duration::from_millis(500),
        ..OAuthApp::default()
    };
    // 60 updates at 100 ms each, two at a time: about 3 s, three lifetimes.
    let sim = simulator(app, Duration::from_millis(100)).await;
    let client = client(
        &sim,
        "http://127.0.0.1:9/callback",
        Duration::from_millis(500),
    );
    let first = login(&sim, &client).await;
    let store = TokenStore::new(temp_path("oauth", "tokens.json"));
    store.put("ada", &first).unwrap();
    let credentials = stored_credentials(&sim, &store, Duration::from_millis(500));

    let summary = run_with(&sim, &credentials, 60, 2, None).await;
    assert_eq!(summary.delivered, 60, "{summary:?}");
    assert!(
        credentials.refreshes() >= 2,
        "{} refreshes",
        credentials.refreshes()
    );
    let stats = sim.stats();
    assert_eq!(stats.mint_throttled, 0, "{stats:?}");
    assert_eq!(stats.tokens_minted, 1 + credentials.refreshes());

    // Rotation: the first refresh token no longer works, the stored one does.
    let stored = store.get("ada").unwrap();
    assert_ne!(stored.refresh_token, first.refresh_token);
    let old = client
        .refresh(first.refresh_token.as_deref().unwrap())
        .await;
    assert!(matches!(old, Err(OAuthError::InvalidGrant(_))), "{old:?}");
    tokio::time::sleep(Duration::from_millis(600)).await;
    client
        .refresh(stored.refresh_token.as_deref().unwrap())
        .await
        .expect("the newest refresh token is the one stored");
    std::fs::remove_file(store.path()).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_storm_mints_a_single_token() {
    let interval = Duration::from_secs(1);
    let app = OAuthApp {
        mint_interval: interval,
        ..OAuthApp::default()
    };
    let sim = simulator(app, Duration::ZERO).await;
    let client = client(&sim, "http://127.0.0.1:9/callback", interval);
    let mut tokens = login(&sim, &client).await;
    // The stored access token has expired (and the API no longer takes it):
    // every request of the run needs a new one at once.
    sim.revoke_access_tokens(USER);
    tokens.expires_at = Some(1);
    let store = TokenStore::new(temp_path("oauth", "tokens.json"));
    store.put("ada", &tokens).unwrap();
    let credentials = stored_credentials(&sim, &store, interval);
    let summary = run_with(&sim, &credentials, 64, 32, None).await;
    assert_eq!(summary.delivered, 64, "{summary:?}");
    let stats = sim.stats();
    // The login's token was minted just before: the host waited out the
    // interval instead of meeting the throttle.
    assert_eq!(stats.mint_throttled, 0, "{stats:?}");
    assert_eq!(stats.unauthorized, 0, "{stats:?}");
    assert_eq!(credentials.refreshes(), 1);
    assert_eq!(stats.tokens_minted, 2, "login + one refresh");
    std::fs::remove_file(store.path()).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_refresh_token_stops_the_run_and_keeps_every_update() {
    let app = OAuthApp {
        access_lifetime: Duration::from_secs(1),
        mint_interval: Duration::ZERO,
        ..OAuthApp::default()
    };
    let sim = simulator(app, Duration::ZERO).await;
    let (tokens, store) = stored_login(&sim).await;
    sim.revoke_refresh_tokens(USER);
    // The host's clock is two seconds on: the access token has expired.
    let later = Clock::starting_at(outreach_host::clock::now_ms() + 2_000);
    let credentials = stored_credentials_at(&sim, &store, Duration::ZERO, later);
    let letters = temp_path("oauth", "letters.ndjson");
    let summary = run_with(&sim, &credentials, 25, 4, Some(letters.clone())).await;
    assert_eq!(summary.delivered, 0);
    assert_eq!(summary.not_sent, 25);
    let fatal = summary.fatal.clone().unwrap();
    assert!(fatal.contains("run `outreach-host login` again"), "{fatal}");
    assert!(summary.login_required);
    // The API refused nothing: every update waits in the journal for the
    // next run after a new login, and none is a dead letter.
    assert_eq!(summary.pending, 25);
    let kept = std::fs::read_to_string(&letters).unwrap();
    assert_eq!(kept.lines().count(), 0);
    assert_eq!(sim.stats().updates_applied, 0);
    // The stored tokens are left for the user to replace by logging in.
    assert_eq!(store.get("ada").unwrap(), tokens);
    std::fs::remove_file(&letters).unwrap();
    std::fs::remove_file(store.path()).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cli_run_never_prints_or_writes_a_secret() {
    let app = OAuthApp {
        access_lifetime: Duration::from_secs(1),
        mint_interval: Duration::ZERO,
        ..OAuthApp::default()
    };
    let sim = simulator(app.clone(), Duration::from_millis(30)).await;
    let client = client(&sim, "http://127.0.0.1:9/callback", Duration::ZERO);
    let first = login(&sim, &client).await;
    let store = TokenStore::new(temp_path("oauth", "tokens.json"));
    store.put("ada", &first).unwrap();
    let config = temp_path("oauth", "config.json");
    let input = temp_path("oauth", "input.ndjson");
    let letters = temp_path("oauth", "letters.ndjson");
    std::fs::write(&config, CONFIG).unwrap();
    // Some records are refused (prospects 1001+ do not exist) so that dead
    // letters are written too.
    std::fs::write(&input, records(1040).split_off(960).join("\n")).unwrap();
    let (api_base, token_url, store_path) =
        (sim.api_base(), sim.token_url(), store.path().to_path_buf());
    let (config2, input2, letters2) = (config.clone(), input.clone(), letters.clone());
    // The journal and compile cache in their default places, in a home of
    // the test's own.
    let home = scratch("oauth", "secret-home");
    let home2 = home.clone();
    let output = tokio::task::spawn_blocking(move || {
        outreach_host(&home2)
            .args(["run", "--json", "--account", "ada", "--concurrency", "2"])
            .arg("--config")
            .arg(&config2)
            .arg("--input")
            .arg(&input2)
            .arg("--dead-letters")
            .arg(&letters2)
            .args(["--api-base", &api_base, "--token-url", &token_url])
            .args(["--min-token-interval", "0", "--token-store"])
            .arg(&store_path)
            .env("OUTREACH_CLIENT_ID", "sim-client-id")
            .env("OUTREACH_CLIENT_SECRET", "sim-client-secret")
            .env("RUST_LOG", "debug")
            .env_remove("OUTREACH_ACCESS_TOKEN")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8(output.stdout).unwrap();
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(output.status.code(), Some(3), "{stdout}\n{stderr}");
    let summary: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(summary["delivered"], 40);
    assert_eq!(summary["rejected"], 40);
    let newest = store.get("ada").unwrap();
    assert_ne!(
        newest.access_token, first.access_token,
        "no refresh happened"
    );
    let letters_text = std::fs::read_to_string(&letters).unwrap();
    assert_eq!(letters_text.lines().count(), 40);
    // Every file the run kept: the journal (with its log, if left) and the
    // compile cache.
    let journal = home.join("state/outreach-host/journal.sqlite");
    assert!(journal.is_file(), "the journal is not where it belongs");
    let mut kept = String::new();
    for path in files_under(&home) {
        kept.push_str(&String::from_utf8_lossy(&std::fs::read(&path).unwrap()));
    }
    for secret in [
        first.access_token.as_str(),
        first.refresh_token.as_deref().unwrap(),
        newest.access_token.as_str(),
        newest.refresh_token.as_deref().unwrap(),
        app.client_secret.as_str(),
    ] {
        for (what, text) in [
            ("stdout", &stdout),
            ("stderr", &stderr),
            ("dead letters", &letters_text),
            ("the journal or the cache", &kept),
        ] {
            assert!(!text.contains(secret), "a secret appears in {what}");
        }
    }
    for path in [&config, &input, &letters, store.path()] {
        std::fs::remove_file(path).unwrap();
    }
    std::fs::remove_dir_all(&home).unwrap();
}

fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(files_under(&path));
        } else {
            files.push(path);
        }
    }
    files
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_cut_off_by_a_stop_still_stores_the_rotated_refresh_token() {
    let app = OAuthApp {
        mint_interval: Duration::ZERO,
        // The endpoint rotates at once and answers late.
        answer_delay: Duration::from_millis(800),
        ..OAuthApp::default()
    };
    let sim = simulator(app, Duration::ZERO).await;
    let (tokens, store) = expired_login(&sim, Duration::ZERO).await;
    let credentials = stored_credentials(&sim, &store, Duration::ZERO);
    // The caller goes away (a run stopping) while the refresh is on the wire.
    let cut_off = tokio::time::timeout(Duration::from_millis(200), credentials.token()).await;
    assert!(cut_off.is_err(), "the refresh answered before the stop");
    credentials.settle().await;
    let stored = store.get("ada").unwrap();
    assert_ne!(stored.refresh_token, tokens.refresh_token, "rotation lost");
    // And in use by this process, without another mint.
    assert_eq!(credentials.token().await.unwrap(), stored.access_token);
    assert_eq!(credentials.refreshes(), 1);
    // What is stored is the live refresh token: a new process refreshes
    // with it (the old one is dead at the server).
    let next = stored_credentials(&sim, &store, Duration::ZERO);
    next.refresh(&stored.access_token).await.unwrap();
    assert_eq!(next.refreshes(), 1);
    assert_eq!(sim.stats().invalid_grants, 0);
    std::fs::remove_file(store.path()).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_on_one_account_use_each_others_refresh() {
    let interval = Duration::from_millis(300);
    let app = OAuthApp {
        mint_interval: interval,
        ..OAuthApp::default()
    };
    let sim = simulator(app, Duration::ZERO).await;
    let (_, store) = expired_login(&sim, interval).await;
    // Two processes loaded the same expired tokens.
    let first = stored_credentials(&sim, &store, interval);
    let second = stored_credentials(&sim, &store, interval);
    let first_token = first.token().await.unwrap();
    assert_eq!(first.refreshes(), 1);
    // The second must not present the refresh token the first rotated.
    let second_token = second.token().await.unwrap();
    assert_eq!(second_token, first_token);
    assert_eq!(second.refreshes(), 0);
    let stats = sim.stats();
    assert_eq!(stats.invalid_grants, 0, "{stats:?}");
    assert_eq!(stats.tokens_minted, 2, "login + one refresh: {stats:?}");
    std::fs::remove_file(store.path()).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_expires_in_values_keep_the_tokens_with_a_sane_expiry() {
    for (expires_in, sane) in [
        (json!(u64::MAX), true),
        (json!(1e300), true),
        (json!(-5), false),
        (json!("soon"), false),
    ] {
        let app = OAuthApp {
            mint_interval: Duration::ZERO,
            expires_in: Some(expires_in.clone()),
            ..OAuthApp::default()
        };
        let sim = simulator(app, Duration::ZERO).await;
        let client = client(&sim, "http://127.0.0.1:9/callback", Duration::ZERO);
        let tokens = login(&sim, &client).await;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        match tokens.expires_at {
            Some(at) => {
                assert!(
                    sane,
                    "{expires_in}: expiry {at} from a nonsensical lifetime"
                );
                assert!(at <= now + 24 * 3600 + 5, "{expires_in}: {at}");
            }
            None => assert!(!sane, "{expires_in}: the lifetime was dropped"),
        }
        // The refresh path reads the same answers.
        let store = TokenStore::new(temp_path("oauth", "tokens.json"));
        store.put("ada", &tokens).unwrap();
        let credentials = stored_credentials(&sim, &store, Duration::ZERO);
        credentials.refresh(&tokens.access_token).await.unwrap();
        assert_eq!(credentials.refreshes(), 1, "{expires_in}");
        assert_ne!(
            store.get("ada").unwrap().refresh_token,
            tokens.refresh_token
        );
        std::fs::remove_file(store.path()).unwrap();
    }
}

/// The client authenticates to the token endpoint the way the component's
/// description says: in the form body (Outreach), or with HTTP Basic. A
/// server expecting one refuses the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_authenticates_the_way_the_descriptor_says() {
    let sim = simulator(
        OAuthApp {
            basic_auth: true,
            mint_interval: Duration::ZERO,
            ..OAuthApp::default()
        },
        Duration::ZERO,
    )
    .await;
    let redirect = "http://127.0.0.1:9/callback";
    let basic = client_authenticating(
        &sim,
        redirect,
        Duration::ZERO,
        ClientAuthentication::Basic,
        Clock::system(),
    );
    let tokens = login(&sim, &basic).await;
    let refreshed = basic
        .refresh(tokens.refresh_token.as_deref().unwrap())
        .await
        .unwrap();
    assert_ne!(refreshed.access_token, tokens.access_token);

    let form_body = client(&sim, redirect, Duration::ZERO);
    let (url, pending) = form_body.authorize_url();
    let location = browser_login(url.as_str(), USER, PASSWORD).await;
    let refused = form_body
        .finish_login(pending, &Redirect::from_url(&location).unwrap())
        .await
        .unwrap_err();
    // Secrets in the body of a Basic-only server are an error, not ignored.
    assert!(
        refused
            .to_string()
            .contains("unexpected parameter client_id"),
        "{refused}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_is_refreshed_when_the_clock_says_it_expires_soon_and_not_before() {
    // Two-hour access tokens; the host's clock is moved, nobody waits.
    let app = OAuthApp {
        mint_interval: Duration::ZERO,
        ..OAuthApp::default()
    };
    let sim = simulator(app, Duration::ZERO).await;
    let (tokens, store) = stored_login(&sim).await;
    let expires_ms = tokens.expires_at.unwrap() * 1000;
    let margin_ms = REFRESH_MARGIN.as_millis() as u64;

    // Just outside the margin: the token is used as it is.
    let early = Clock::starting_at(expires_ms - margin_ms - 5_000);
    let credentials = stored_credentials_at(&sim, &store, Duration::ZERO, early);
    assert_eq!(credentials.token().await.unwrap(), tokens.access_token);
    assert_eq!(credentials.refreshes(), 0);
    assert_eq!(sim.stats().tokens_minted, 1, "the login's token only");

    // Inside the margin: refreshed before use, and the new tokens stored.
    let late = Clock::starting_at(expires_ms - margin_ms + 5_000);
    let credentials = stored_credentials_at(&sim, &store, Duration::ZERO, late);
    let fresh = credentials.token().await.unwrap();
    assert_ne!(fresh, tokens.access_token);
    assert_eq!(credentials.refreshes(), 1);
    assert_eq!(sim.stats().tokens_minted, 2);
    let stored = store.get("ada").unwrap();
    assert_eq!(stored.access_token, fresh);
    // The new tokens are stamped with the host's clock.
    assert!(stored.obtained_at_ms >= expires_ms - margin_ms + 5_000);
    std::fs::remove_file(store.path()).unwrap();
}
