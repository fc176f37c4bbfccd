//! The cluster the tests run: three NATS servers, three workers, the
//! simulator, 24 accounts; records posted in rounds, and the checks every
//! scenario ends with.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use crate::common::nats::{NatsCluster, Role};
use crate::common::scratch;
use crate::common::serve::{Service, eventually, password_hash};
use outreach_host::oauth::{TokenSet, TokenStore};
use outreach_simulator::{OAuthApp, RateWindowKind, Simulator, SimulatorConfig};
use serde_json::{Value, json};

pub const ACCOUNTS: usize = 24;
pub const PROSPECTS_PER_ACCOUNT: u64 = 8;
/// Round 0's bad records per account: a line that is not JSON, a missing
/// prospect, a record without an id.
pub const BAD_RECORDS_PER_ACCOUNT: usize = 3;
pub const ROUNDS: usize = 4;
pub const BUDGET: u32 = 30;
pub const WINDOW: Duration = Duration::from_secs(2);
pub const MINT_INTERVAL: Duration = Duration::from_secs(3);
pub const LEASE: Duration = Duration::from_secs(3);
pub const PARTITIONS: u16 = 8;
/// Rounds of updates are this far apart.
pub const ROUND_GAP: Duration = Duration::from_millis(2_500);

pub fn user(account: usize) -> String {
    format!("user{account:02}@example.com")
}

pub fn destination(account: usize) -> String {
    format!("d{account:02}")
}

pub fn prospect(account: usize, n: u64) -> u64 {
    1_000 + account as u64 * 100 + n
}

/// A prospect that does not exist: the API answers 404, a dead letter.
pub fn missing_prospect(account: usize) -> u64 {
    900_000 + account as u64
}

pub fn record(id: u64, first: &str) -> String {
    json!({
        "identityMap": { "Oid": [ { "id": id.to_string() } ] },
        "person": { "name": { "firstName": first } },
        "segmentMembership": { "ups": { "aud": { "status": "realized" } } }
    })
    .to_string()
}

pub fn value(round: usize, id: u64) -> String {
    format!("r{round}-{id}")
}

/// What a round posts for an account (NDJSON).
pub fn round_body(account: usize, round: usize) -> String {
    let mut records: Vec<String> = (1..=PROSPECTS_PER_ACCOUNT)
        .map(|n| record(prospect(account, n), &value(round, prospect(account, n))))
        .collect();
    if round == 0 {
        // Not JSON: refused at intake, with a letter naming its line.
        records.push("{not json".to_owned());
        records.push(record(missing_prospect(account), "nobody"));
        // No prospect id: skipped, with a letter saying why.
        records.push(
            json!({"identityMap": {}, "person": {"name": {"firstName": "anon"}}}).to_string(),
        );
    }
    records.iter().map(|r| format!("{r}\n")).collect()
}

/// One cluster at a time: three servers and three workers per test are
/// already more processes than CI's two cores, and leases are timed.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

pub struct Setup {
    pub dir: PathBuf,
    pub simulator: Simulator,
    pub nats: NatsCluster,
    pub workers: Vec<Option<Service>>,
    /// Last: held until the processes above are gone.
    _turn: tokio::sync::MutexGuard<'static, ()>,
}

pub const ADMIN_PASSWORD: &str = "cluster-operator";

pub fn destinations_file(dir: &Path, api_base: &str) {
    let mut text = format!(
        "login_retry_secs = 1\ndrain_timeout_secs = 10\n[admin]\nuser = \"ops\"\npassword_hash = \"{}\"\n[cluster]\npartitions = {PARTITIONS}\nlease_secs = {}\nreplicas = 3\n",
        password_hash(ADMIN_PASSWORD),
        LEASE.as_secs()
    );
    for account in 0..ACCOUNTS {
        text += &format!(
            "[accounts.\"{}\"]\nrate_limit = {BUDGET}\nrate_window_secs = {}\n",
            user(account),
            WINDOW.as_secs()
        );
    }
    for account in 0..ACCOUNTS {
        let name = destination(account);
        text += &format!(
            "[[destinations]]\nname = \"{name}\"\naccount = \"{}\"\napi_base = \"{api_base}\"\nconcurrency = 2\nconfig = {{ name = \"{name}\", identityMapping = {{ source = \"Oid\", target = \"OutreachId\" }}, attributeMappings = [ {{ source = \"person.name.firstName\", target = \"firstName\" }} ], audiences = [ {{ id = \"aud\", name = \"Audience\", mappingId = 7 }} ] }}\n",
            user(account)
        );
    }
    std::fs::write(dir.join("destinations.toml"), text).unwrap();
}

pub fn worker_args(dir: &Path, nats: &str, name: &str, token_url: &str) -> Vec<String> {
    let mut args = Service::start_args(dir);
    args.extend(
        [
            "--nats",
            nats,
            "--worker",
            name,
            "--token-url",
            token_url,
            "--min-token-interval",
            &MINT_INTERVAL.as_secs().to_string(),
        ]
        .map(str::to_owned),
    );
    args
}

/// `outreach-host cluster …` as the cluster's operator.
pub fn cli(dir: &Path, nats: &NatsCluster, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_outreach-host"))
        .args([
            "--token-store",
            &dir.join("tokens.json").display().to_string(),
        ])
        .args(["cluster", "--nats", &nats.url()])
        .args(args)
        .env_remove("OUTREACH_ACCESS_TOKEN")
        .envs(nats.env(Role::Operator))
        .output()
        .unwrap()
}

impl Setup {
    pub async fn start(name: &str) -> Self {
        let turn = ONE_AT_A_TIME.lock().await;
        let dir = scratch("cluster", name);
        let users: Vec<(String, String)> = (0..ACCOUNTS)
            .map(|a| (user(a), "password".to_string()))
            .collect();
        let simulator = Simulator::start(
            SimulatorConfig {
                prospect_ids: 1_000..=(1_000 + ACCOUNTS as u64 * 100),
                rate_limit: BUDGET,
                rate_window: WINDOW,
                rate_window_kind: RateWindowKind::Fixed,
                oauth: OAuthApp {
                    users,
                    // Refreshed shortly after each mint (the host refreshes
                    // 300 s before expiry): a refresh every mint interval.
                    access_lifetime: Duration::from_secs(302),
                    mint_interval: MINT_INTERVAL,
                    ..OAuthApp::default()
                },
                ..SimulatorConfig::default()
            },
            crate::common::loopback(),
        )
        .await
        .unwrap();
        let nats = NatsCluster::start(&dir, 3);
        nats.wait_ready(Duration::from_secs(30)).await;
        destinations_file(&dir, &simulator.api_base());
        let mut setup = Self {
            dir,
            simulator,
            nats,
            workers: Vec::new(),
            _turn: turn,
        };
        for n in 0..3 {
            let worker = setup.start_worker(n);
            setup.workers.push(Some(worker));
        }
        setup.connect_accounts();
        setup.wait_balanced().await;
        setup
    }

    pub fn start_worker(&self, n: usize) -> Service {
        let args = worker_args(
            &self.dir,
            &self.nats.url(),
            &format!("w{n}"),
            &self.simulator.token_url(),
        );
        let [user, password] = self.nats.env(Role::Worker);
        Service::start_with(
            &self.dir,
            &args,
            &[
                (
                    "RUST_LOG",
                    "info,outreach_host::cluster::feed=debug,outreach_host::cluster::acknowledge=debug",
                ),
                (user.0, &user.1),
                (password.0, &password.1),
            ],
        )
    }

    /// Logs every account in (a login's tokens) and moves the tokens into
    /// the cluster, as an operator would.
    pub fn connect_accounts(&self) {
        let store = TokenStore::new(self.dir.join("tokens.json"));
        for account in 0..ACCOUNTS {
            let (access, refresh) = self.simulator.grant_tokens(&user(account), "prospects.all");
            let now = outreach_host::clock::now_ms();
            store
                .put(
                    &user(account),
                    &TokenSet {
                        access_token: access,
                        refresh_token: Some(refresh),
                        expires_at: Some(now / 1000 + 302),
                        scope: Some("prospects.all".into()),
                        obtained_at_ms: now,
                    },
                )
                .unwrap();
            let out = cli(
                &self.dir,
                &self.nats,
                &["import-tokens", "--account", &user(account)],
            );
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        assert!(
            store.accounts().unwrap().is_empty(),
            "imported tokens stay in the file"
        );
    }

    pub fn live_workers(&self) -> Vec<&Service> {
        self.workers.iter().flatten().collect()
    }

    /// The partitions each live worker holds (its /readyz).
    pub async fn holdings(&self) -> Vec<BTreeSet<u64>> {
        let mut all = Vec::new();
        for worker in self.live_workers() {
            let ready: Value = match reqwest::get(worker.url("/readyz")).await {
                Ok(response) => serde_json::from_slice(&response.bytes().await.unwrap_or_default())
                    .unwrap_or_default(),
                Err(_) => Value::Null,
            };
            all.push(
                ready["partitions"]
                    .as_array()
                    .map(|a| a.iter().filter_map(Value::as_u64).collect())
                    .unwrap_or_default(),
            );
        }
        all
    }

    /// Waits until the live workers hold every partition, each its share.
    pub async fn wait_balanced(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let holdings = self.holdings().await;
            let live = holdings.len();
            let share = usize::from(PARTITIONS).div_ceil(live);
            let total: usize = holdings.iter().map(BTreeSet::len).sum();
            let distinct: BTreeSet<u64> = holdings.iter().flatten().copied().collect();
            if total == usize::from(PARTITIONS)
                && distinct.len() == usize::from(PARTITIONS)
                && holdings.iter().all(|h| h.len() <= share)
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "partitions not balanced: {holdings:?}\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("serve.log")).unwrap_or_default()
    }

    /// Posts round `round` for every account, each batch to a worker
    /// chosen in turn among the live ones.
    pub async fn post_round(&self, round: usize) {
        let client = reqwest::Client::new();
        let live = self.live_workers();
        for account in 0..ACCOUNTS {
            let body = round_body(account, round);
            let worker = live[(account + round) % live.len()];
            let url = worker.url(&format!(
                "/v1/destinations/{}/records",
                destination(account)
            ));
            // As a producer does: a 503 (the cluster electing a leader
            // after a server's death) is tried again after Retry-After,
            // with the same Idempotency-Key.
            let mut tries = 0;
            loop {
                let response = client
                    .post(&url)
                    .header("content-type", "application/x-ndjson")
                    .header("idempotency-key", format!("{account}-{round}"))
                    .body(body.clone())
                    .send()
                    .await
                    .unwrap();
                let status = response.status();
                if status == 503 && tries < 10 {
                    assert_eq!(response.headers()["retry-after"], "2");
                    tries += 1;
                    tokio::time::sleep(Duration::from_secs(2)).await;
                    continue;
                }
                assert_eq!(status, 202, "{}", response.text().await.unwrap());
                break;
            }
        }
    }

    /// Every prospect holds the last round's value.
    pub fn all_final(&self) -> bool {
        (0..ACCOUNTS).all(|account| {
            (1..=PROSPECTS_PER_ACCOUNT).all(|n| {
                let id = prospect(account, n);
                crate::common::serve::first_name(&self.simulator, id).as_deref()
                    == Some(value(ROUNDS - 1, id).as_str())
            })
        })
    }

    pub fn dead_letters(&self) -> Vec<Value> {
        // Right after a server's death the letters stream may still be
        // electing its leader: an operator runs the command again.
        let mut out = cli(&self.dir, &self.nats, &["dead-letters"]);
        for _ in 0..5 {
            if out.status.success() {
                break;
            }
            std::thread::sleep(Duration::from_secs(2));
            out = cli(&self.dir, &self.nats, &["dead-letters"]);
        }
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect()
    }

    /// The assertions every scenario ends with.
    pub async fn check_outcome(&self) {
        eventually(
            "every prospect in its final state",
            Duration::from_secs(120),
            || self.all_final(),
        )
        .await;
        let letters = self.dead_letters();
        // The record is JSON, as in a journal's `dead-letters list`.
        let missing: Vec<u64> = letters
            .iter()
            .filter(|l| l["code"] == "prospect-not-found")
            .filter_map(|l| {
                l["record"]["identityMap"]["Oid"][0]["id"]
                    .as_str()?
                    .parse()
                    .ok()
            })
            .collect();
        let expected: BTreeSet<u64> = (0..ACCOUNTS).map(missing_prospect).collect();
        assert_eq!(
            missing.iter().copied().collect::<BTreeSet<u64>>(),
            expected,
            "a dead letter per missing prospect"
        );
        // However often a message was redelivered (a worker killed, a
        // partition handed over), one letter per record.
        assert_eq!(missing.len(), expected.len(), "{letters:?}");
        // The records without an id are skipped with a letter each, as
        // on one machine.
        let skipped = letters
            .iter()
            .filter(|l| l["code"] == "identity-missing")
            .count();
        assert_eq!(skipped, ACCOUNTS, "{letters:?}");
        let not_json = letters.iter().filter(|l| l["code"] == "not-json").count();
        assert_eq!(not_json, ACCOUNTS, "{letters:?}");
        assert_eq!(
            letters.len(),
            BAD_RECORDS_PER_ACCOUNT * ACCOUNTS,
            "{letters:?}"
        );
        // Each letter names the record's line in the batch it was posted
        // in, whether it was refused at intake or by the API.
        let line_of = |code: &str| {
            PROSPECTS_PER_ACCOUNT
                + 1
                + ["not-json", "prospect-not-found", "identity-missing"]
                    .iter()
                    .position(|c| *c == code)
                    .unwrap() as u64
        };
        for letter in &letters {
            let code = letter["code"].as_str().unwrap();
            assert_eq!(letter["line"].as_u64(), Some(line_of(code)), "{letter}");
            if code == "prospect-not-found" {
                assert_eq!(letter["status"], 404, "{letter}");
            }
        }
        self.check_budgets();
        self.check_mints();
    }

    pub fn check_budgets(&self) {
        for account in 0..ACCOUNTS {
            for (started, used) in self.simulator.rate_windows(&user(account)) {
                assert!(
                    used <= BUDGET,
                    "{}: {used} requests in the window from {started:?}, over the budget of {BUDGET}",
                    user(account)
                );
            }
        }
    }

    pub fn check_mints(&self) {
        let stats = self.simulator.stats();
        assert_eq!(
            stats.mint_throttled, 0,
            "a token was asked for within the mint interval"
        );
        assert_eq!(
            stats.invalid_grants, 0,
            "a refresh token was used twice or lost"
        );
        let mut refreshed = 0;
        for account in 0..ACCOUNTS {
            let mints = self.simulator.mints_of(&user(account));
            refreshed += mints.len() - 1;
            for pair in mints.windows(2) {
                let gap = pair[1].duration_since(pair[0]).unwrap_or_default();
                assert!(
                    gap >= MINT_INTERVAL,
                    "{}: mints {gap:?} apart",
                    user(account)
                );
            }
        }
        assert!(
            refreshed > 0,
            "no token was refreshed: the test proves nothing about mints"
        );
    }

    /// Per account, which workers sent its requests, in order: the runs
    /// of one worker (a change means ownership moved), with the first and
    /// last request time of each.
    pub fn senders(&self, account: usize) -> Vec<(String, SystemTime, SystemTime)> {
        let mut runs: Vec<(String, SystemTime, SystemTime)> = Vec::new();
        for sent in self.simulator.requests_of(&user(account)) {
            let worker = sent
                .agent
                .split_once("worker/")
                .map(|(_, w)| w.to_owned())
                .unwrap_or_default();
            match runs.last_mut() {
                Some((last, _, end)) if *last == worker => *end = sent.at,
                _ => runs.push((worker, sent.at, sent.at)),
            }
        }
        runs
    }

    /// The cluster's runs count every record sent exactly once: received,
    /// then delivered, rejected (not JSON, a missing prospect) or skipped
    /// (no id).
    pub async fn check_runs(&self) {
        let bad = BAD_RECORDS_PER_ACCOUNT as u64;
        let total = ACCOUNTS as u64 * (PROSPECTS_PER_ACCOUNT * ROUNDS as u64 + bad);
        let expected = (
            total,
            total - bad * ACCOUNTS as u64,
            2 * ACCOUNTS as u64,
            ACCOUNTS as u64,
        );
        // The last acknowledgements count the last records.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let out = cli(
                &self.dir,
                &self.nats,
                &["runs", "--json", "--limit", "1000"],
            );
            let runs: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap_or_default();
            let sum = |field: &str| -> u64 { runs.iter().filter_map(|r| r[field].as_u64()).sum() };
            let counted = (
                sum("received"),
                sum("delivered"),
                sum("rejected"),
                sum("skipped"),
            );
            if counted == expected {
                return;
            }
            if Instant::now() >= deadline {
                panic!(
                    "runs count (received, delivered, rejected, skipped) {counted:?}, not {expected:?}\n{}\n{}\n{}",
                    self.runs_short(&runs),
                    self.intake_left().await,
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}
