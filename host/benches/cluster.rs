//! What decides the JetStream backend's scale, measured on this machine
//! with real processes: a 3-node NATS cluster (Debian's `nats-server`),
//! `outreach-host serve` workers, the simulator in this process.
//!
//! - `cost`: CPU seconds per delivered update, rate limit lifted — the
//!   single-machine service over its SQLite journals, then one worker and
//!   three workers over JetStream (replicas 3). Worker CPU and, for the
//!   cluster, the NATS servers' CPU too (they do the journal's work).
//! - `budget`: 30 accounts with a small budget each (20 requests per 5 s
//!   window, fixed windows counting every request), three workers, more
//!   records than the budgets allow: the share of the budgets used over
//!   the full windows, and the fullest window of any account.
//! - `failover`: records keep arriving for 24 accounts; one worker is
//!   SIGKILLed; for each of its accounts, the time from the kill to its
//!   next update delivered by another worker.
//!
//! Run: `cargo bench -p outreach-host --bench cluster` (`-- cost`,
//! `-- budget`, `-- failover` for one phase; `--records N` for `cost`).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use outreach_simulator::{RateWindowKind, Simulator, SimulatorConfig};

mod common;
#[path = "../tests/common/nats.rs"]
#[allow(dead_code)]
mod nats;
#[path = "../tests/common/serve.rs"]
#[allow(dead_code)]
mod serve;

use nats::{NatsCluster, Role};
use serve::Service;

const PARTITIONS: u16 = 16;

/// CPU time (user + system) of a process and its threads, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces), 1-based 14, 15.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11).and_then(|f| f.parse().ok()).unwrap_or(0)
        + fields.get(12).and_then(|f| f.parse().ok()).unwrap_or(0);
    // SAFETY: sysconf reads a constant of the system.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    ticks as f64 / per_second
}

fn scratch(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "outreach-bench-cluster-{}-{name}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn config(name: &str) -> String {
    common::CONFIG.replacen("\"bench\"", &format!("\"{name}\""), 1)
}

/// A destinations file: `accounts` destinations `d00…`, one per account
/// `a00…`, each with the given budget.
fn destinations_file(
    dir: &Path,
    api_base: &str,
    accounts: usize,
    budget: (u32, u32),
    lease_secs: u64,
) {
    let mut text = format!(
        "login_retry_secs = 1\ndrain_timeout_secs = 10\nmax_record_bytes = 65536\n[cluster]\npartitions = {PARTITIONS}\nlease_secs = {lease_secs}\nreplicas = 3\nwindow_records = 20000\n"
    );
    for a in 0..accounts {
        text += &format!(
            "[accounts.a{a:02}]\nrate_limit = {}\nrate_window_secs = {}\n",
            budget.0, budget.1
        );
    }
    for a in 0..accounts {
        let config = config(&format!("d{a:02}"));
        std::fs::write(dir.join(format!("d{a:02}.json")), config).unwrap();
        text += &format!(
            "[[destinations]]\nname = \"d{a:02}\"\naccount = \"a{a:02}\"\napi_base = \"{api_base}\"\nconcurrency = 8\nconfig = \"d{a:02}.json\"\nmax_queued_updates = 10000000\n"
        );
    }
    std::fs::write(dir.join("destinations.toml"), text).unwrap();
}

fn start_worker(dir: &Path, nats: Option<&NatsCluster>, name: &str, token: &str) -> Service {
    let mut args = Service::start_args(dir);
    let mut env = vec![("OUTREACH_ACCESS_TOKEN", token.to_owned())];
    if let Some(cluster) = nats {
        args.extend([
            "--nats".into(),
            cluster.url(),
            "--worker".into(),
            name.into(),
        ]);
        env.extend(cluster.env(Role::Worker));
    }
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    Service::start_with(dir, &args, &env)
}

/// A worker of `cluster` without a fixed token.
fn cluster_worker(dir: &Path, cluster: &NatsCluster, n: usize) -> Service {
    let mut args = Service::start_args(dir);
    args.extend([
        "--nats".into(),
        cluster.url(),
        "--worker".into(),
        format!("w{n}"),
    ]);
    let env = cluster.env(Role::Worker);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    Service::start_with(dir, &args, &env)
}

/// Waits until the workers hold every partition between them.
async fn wait_partitions(workers: &[&Service]) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut held = 0;
        for worker in workers {
            if let Ok(response) = reqwest::get(worker.url("/readyz")).await
                && let Ok(ready) = serde_json::from_slice::<serde_json::Value>(
                    &response.bytes().await.unwrap_or_default(),
                )
            {
                held += ready["partitions"].as_array().map_or(0, Vec::len);
            }
        }
        if held == usize::from(PARTITIONS) {
            return;
        }
        assert!(Instant::now() < deadline, "partitions not all held");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Posts `records` records per destination (ids from `first`), batches of
/// 500, four producers, spread over `workers`.
async fn post(workers: &[&Service], accounts: usize, first: u64, records: u64) {
    let client = reqwest::Client::new();
    let mut jobs = Vec::new();
    for a in 0..accounts {
        let base = first + a as u64 * records;
        let mut n = 0;
        while n < records {
            let size = 500.min(records - n);
            let body: String = (base + n..base + n + size)
                .map(|id| common::record(id) + "\n")
                .collect();
            let url = workers[jobs.len() % workers.len()]
                .url(&format!("/v1/destinations/d{a:02}/records"));
            jobs.push((url, body));
            n += size;
        }
    }
    let queue = std::sync::Arc::new(std::sync::Mutex::new(jobs));
    let producers: Vec<_> = (0..4)
        .map(|_| {
            let (queue, client) = (queue.clone(), client.clone());
            tokio::spawn(async move {
                loop {
                    let Some((url, body)) = queue.lock().unwrap().pop() else {
                        return;
                    };
                    let response = client
                        .post(&url)
                        .header("content-type", "application/x-ndjson")
                        .body(body)
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(response.status(), 202, "{}", response.text().await.unwrap());
                }
            })
        })
        .collect();
    for producer in producers {
        producer.await.unwrap();
    }
}

async fn cost(records_total: u64) {
    let accounts = 10;
    let per_account = records_total / accounts as u64;
    let total = per_account * accounts as u64;
    println!("cost per update: {total} records, {accounts} destinations, rate limit lifted");
    println!(
        "  {:<34} {:>9} {:>10} {:>14} {:>18}",
        "backend", "wall s", "updates/s", "worker µs/upd", "+ NATS µs/upd"
    );
    for (label, workers_n) in [
        ("SQLite journal (serve)", 0),
        ("JetStream, 1 worker", 1),
        ("JetStream, 3 workers", 3),
    ] {
        let dir = scratch(&format!("cost-{workers_n}"));
        let simulator = Simulator::start(
            SimulatorConfig {
                prospect_ids: 1..=total,
                rate_limit: u32::MAX,
                rate_window: Duration::from_secs(1),
                ..SimulatorConfig::default()
            },
            "127.0.0.1:0".parse().unwrap(),
        )
        .await
        .unwrap();
        let token = simulator.issue_token("bench@example.com");
        destinations_file(
            &dir,
            &simulator.api_base(),
            accounts,
            (1_000_000_000, 1),
            10,
        );
        let cluster = (workers_n > 0).then(|| NatsCluster::start(&dir, 3));
        if let Some(cluster) = &cluster {
            cluster.wait_ready(Duration::from_secs(30)).await;
        }
        let workers: Vec<Service> = (0..workers_n.max(1))
            .map(|n| start_worker(&dir, cluster.as_ref(), &format!("w{n}"), &token))
            .collect();
        let live: Vec<&Service> = workers.iter().collect();
        if cluster.is_some() {
            wait_partitions(&live).await;
        }
        let nats_pids = cluster.as_ref().map(NatsCluster::pids).unwrap_or_default();
        let cpu = |pids: &[u32]| pids.iter().map(|&p| cpu_seconds(p)).sum::<f64>();
        let worker_pids: Vec<u32> = workers.iter().map(|w| w.child.id()).collect();
        let (worker_before, nats_before) = (cpu(&worker_pids), cpu(&nats_pids));
        let started = Instant::now();
        post(&live, accounts, 1, per_account).await;
        while simulator.stats().updates_applied < total {
            tokio::time::sleep(Duration::from_millis(20)).await;
            assert!(
                started.elapsed() < Duration::from_secs(600),
                "not delivered in 10 minutes"
            );
        }
        let wall = started.elapsed().as_secs_f64();
        let worker_cpu = cpu(&worker_pids) - worker_before;
        let nats_cpu = cpu(&nats_pids) - nats_before;
        let per = |s: f64| s / total as f64 * 1e6;
        println!(
            "  {label:<34} {wall:>9.1} {:>10.0} {:>14.1} {:>18}",
            total as f64 / wall,
            per(worker_cpu),
            if cluster.is_some() {
                format!("{:.1}", per(worker_cpu + nats_cpu))
            } else {
                "-".into()
            }
        );
        drop(workers);
        drop(cluster);
    }
}

async fn budget() {
    let accounts = 30;
    let (limit, window) = (20u32, 5u32);
    let dir = scratch("budget");
    let users: Vec<String> = (0..accounts).map(|a| format!("a{a:02}")).collect();
    let simulator = Simulator::start(
        SimulatorConfig {
            prospect_ids: 1..=100_000,
            rate_limit: limit,
            rate_window: Duration::from_secs(u64::from(window)),
            rate_window_kind: RateWindowKind::Fixed,
            ..SimulatorConfig::default()
        },
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    // Each account its own simulator user (its own budget), its tokens in
    // the cluster.
    destinations_file(&dir, &simulator.api_base(), accounts, (limit, window), 4);
    let cluster = NatsCluster::start(&dir, 3);
    cluster.wait_ready(Duration::from_secs(30)).await;
    let workers: Vec<Service> = (0..3).map(|n| cluster_worker(&dir, &cluster, n)).collect();
    import_tokens(&dir, &cluster, &simulator, &users);
    let live: Vec<&Service> = workers.iter().collect();
    wait_partitions(&live).await;
    let measure = Duration::from_secs(40);
    // More than the budgets allow over the measurement: 20 per 5 s is
    // 160 in 40 s; 400 records per account keep every account busy.
    let started = SystemTime::now();
    post(&live, accounts, 1, 400).await;
    tokio::time::sleep(measure).await;
    let ended = SystemTime::now();
    let length = Duration::from_secs(u64::from(window));
    let (mut used, mut offered, mut fullest, mut windows) = (0u64, 0u64, 0u32, 0);
    for user in &users {
        for (start, count) in simulator.rate_windows(user) {
            fullest = fullest.max(count);
            // Whole windows inside the measurement only.
            if start >= started && start + length <= ended {
                used += u64::from(count);
                offered += u64::from(limit);
                windows += 1;
            }
        }
    }
    println!(
        "budget use: {accounts} accounts x {limit} requests per {window} s, 3 workers, {windows} full windows: {:.1} % of the budgets used; fullest window {fullest} (budget {limit}); 429s {}",
        used as f64 * 100.0 / offered.max(1) as f64,
        simulator.stats().rate_limited
    );
}

/// Logs every account in and moves its tokens into the cluster.
fn import_tokens(dir: &Path, cluster: &NatsCluster, simulator: &Simulator, users: &[String]) {
    let users: Vec<&str> = users.iter().map(String::as_str).collect();
    let store = serve::store_tokens(dir, simulator, &users);
    for user in users {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_outreach-host"))
            .args(["--token-store", &store.display().to_string()])
            .args(["cluster", "--nats", &cluster.url(), "import-tokens"])
            .args(["--account", user])
            .envs(cluster.env(Role::Operator))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

async fn failover() {
    let accounts = 24;
    let lease_secs = 4;
    let dir = scratch("failover");
    let users: Vec<String> = (0..accounts).map(|a| format!("a{a:02}")).collect();
    let simulator = Simulator::start(
        SimulatorConfig {
            prospect_ids: 1..=1_000_000,
            rate_limit: u32::MAX,
            rate_window: Duration::from_secs(1),
            ..SimulatorConfig::default()
        },
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    destinations_file(
        &dir,
        &simulator.api_base(),
        accounts,
        (1_000_000_000, 1),
        lease_secs,
    );
    let cluster = NatsCluster::start(&dir, 3);
    cluster.wait_ready(Duration::from_secs(30)).await;
    let mut workers: Vec<Option<Service>> = (0..3)
        .map(|n| Some(cluster_worker(&dir, &cluster, n)))
        .collect();
    import_tokens(&dir, &cluster, &simulator, &users);
    {
        let live: Vec<&Service> = workers.iter().flatten().collect();
        wait_partitions(&live).await;
    }
    let survivors: Vec<String> = vec![
        workers[0].as_ref().unwrap().base.clone(),
        workers[2].as_ref().unwrap().base.clone(),
    ];
    // Records keep coming: 20 per account every 200 ms, to the survivors.
    let feeding = tokio::spawn(async move {
        let client = reqwest::Client::new();
        let mut next = 1u64;
        loop {
            for a in 0..accounts {
                let body: String = (next..next + 20)
                    .map(|id| common::record(id) + "\n")
                    .collect();
                next += 20;
                let base = &survivors[a % survivors.len()];
                let _ = client
                    .post(format!("{base}/v1/destinations/d{a:02}/records"))
                    .header("content-type", "application/x-ndjson")
                    .body(body)
                    .send()
                    .await;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    tokio::time::sleep(Duration::from_secs(3)).await;
    let killed_at = SystemTime::now();
    workers[1].take(); // SIGKILL
    tokio::time::sleep(Duration::from_secs(lease_secs * 3)).await;
    feeding.abort();
    let mut moved: BTreeMap<String, Duration> = BTreeMap::new();
    for user in &users {
        let sent = simulator.requests_of(user);
        let victim = sent
            .iter()
            .rev()
            .find(|s| s.at <= killed_at)
            .is_some_and(|s| s.agent.ends_with("worker/w1"));
        if !victim {
            continue;
        }
        if let Some(next) = sent
            .iter()
            .find(|s| s.at > killed_at && !s.agent.ends_with("worker/w1"))
        {
            moved.insert(
                user.clone(),
                next.at.duration_since(killed_at).unwrap_or_default(),
            );
        }
    }
    let mut times: Vec<Duration> = moved.values().copied().collect();
    times.sort();
    if times.is_empty() {
        println!("failover: the killed worker held no account that received records");
        return;
    }
    println!(
        "failover: lease {lease_secs} s; {} accounts moved; kill to next delivered update: min {:.2} s, median {:.2} s, max {:.2} s (goal < {} s)",
        times.len(),
        times[0].as_secs_f64(),
        times[times.len() / 2].as_secs_f64(),
        times[times.len() - 1].as_secs_f64(),
        2 * lease_secs
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let records = argv
        .iter()
        .position(|a| a == "--records")
        .and_then(|i| argv.get(i + 1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(20_000);
    let only = |phase: &str| {
        let named: Vec<&String> = argv
            .iter()
            .filter(|a| ["cost", "budget", "failover"].contains(&a.as_str()))
            .collect();
        named.is_empty() || named.iter().any(|a| *a == phase)
    };
    if only("cost") {
        cost(records).await;
    }
    if only("budget") {
        budget().await;
    }
    if only("failover") {
        failover().await;
    }
}
