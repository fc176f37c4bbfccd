//! The service scaled out: a 3-node NATS JetStream cluster on loopback
//! (Debian's `nats-server`), three `outreach-host serve --nats` workers,
//! the simulator, 24 accounts with small budgets and refreshing tokens,
//! and several updates per prospect posted to any worker. Every accepted
//! record must end in its exact final state or a dead letter; no account's
//! rate window may count more than its budget; no account's tokens may be
//! minted twice within the mint interval (nor a rotated refresh token be
//! lost); and no two workers may send for one account at once — with a
//! worker SIGKILLed and a NATS server killed mid-run, and with a worker
//! handing over on SIGTERM (no update delivered twice then).

mod common;
#[path = "cluster/diagnose.rs"]
mod diagnose;
#[path = "cluster/setup.rs"]
mod setup;

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime};

use common::nats::Role;
use common::serve::{Service, sign_in};
use serde_json::Value;
use setup::*;
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_workers_deliver_every_update_within_budgets_and_one_sender_per_account() {
    let setup = Setup::start("steady").await;
    let hour_of_posting = hour_now();
    for round in 0..ROUNDS {
        setup.post_round(round).await;
        // Spread over several mint intervals: tokens get refreshed.
        tokio::time::sleep(ROUND_GAP).await;
    }
    setup.check_outcome().await;
    for account in 0..ACCOUNTS {
        let senders = setup.senders(account);
        assert_eq!(
            senders.len(),
            1,
            "{}: requests from several workers without an ownership change: {senders:?}",
            user(account)
        );
    }
    // The cluster's runs add up every worker's counts.
    setup.check_runs().await;
    // A round's key again: with its body, the first answer and nothing
    // taken; with another body, refused.
    let again = |body: String| {
        reqwest::Client::new()
            .post(
                setup.workers[1]
                    .as_ref()
                    .unwrap()
                    .url("/v1/destinations/d00/records"),
            )
            .header("content-type", "application/x-ndjson")
            .header("idempotency-key", "0-1")
            .body(body)
            .send()
    };
    let repeat = again(round_body(0, 1)).await.unwrap();
    assert_eq!(repeat.status(), 202);
    assert_eq!(repeat.headers()["idempotent-replayed"], "true");
    let reused = again(round_body(0, 2)).await.unwrap();
    assert_eq!(reused.status(), 422);
    setup.check_runs().await;
    // Least privilege on the bus: a producer may only publish to intake;
    // an operator may read and replay but not delete what workers made.
    let producer = async_nats::jetstream::new(setup.nats.connect(Role::Producer).await.unwrap());
    assert!(
        producer.get_key_value("outreach_tokens").await.is_err(),
        "a producer read the tokens bucket"
    );
    let forged = async {
        producer
            .publish("outreach_host.letters.d00", "{}".into())
            .await?
            .await
    };
    let forged = tokio::time::timeout(Duration::from_secs(10), forged).await;
    assert!(
        !matches!(forged, Ok(Ok(_))),
        "a producer wrote a dead letter"
    );
    let operator = async_nats::jetstream::new(setup.nats.connect(Role::Operator).await.unwrap());
    assert!(
        operator.delete_stream("OUTREACH_INTAKE").await.is_err(),
        "an operator deleted the intake stream"
    );
    assert!(operator.get_stream("OUTREACH_INTAKE").await.is_ok());
    // The status page of any worker shows the cluster's state: who
    // delivers each destination, the hour's counts of every worker, the
    // runs and the dead letters.
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let worker = setup.workers[0].as_ref().unwrap();
    let session = sign_in(&http, worker, "ops", ADMIN_PASSWORD).await;
    let overview = page(&http, worker, &session, "/admin").await;
    assert_eq!(
        overview.matches("Delivered by").count(),
        ACCOUNTS,
        "{overview}"
    );
    // This hour's counts, every worker's — unless the hour turned since
    // the first records were posted: records count in the hour they
    // arrived in, so this hour may hold some of them or none.
    let expected_hour = if hour_now() == hour_of_posting {
        "(every worker)"
    } else {
        "<dt>This hour</dt>"
    };
    assert!(
        overview.contains(expected_hour),
        "{overview}\n{}",
        setup.log()
    );
    assert!(overview.contains("Connected ✓"), "{overview}");
    // Each account's budget per window, as its owner published it.
    assert!(
        overview.matches(" requests used</title>").count() >= ACCOUNTS,
        "{overview}"
    );
    let runs = page(&http, worker, &session, "/admin/destinations/d05").await;
    assert!(runs.contains("cluster (every worker)"), "{runs}");
    // Its charts are the cluster's: the newest run's figures are in a bar
    // of the day's chart and the week's.
    let cells = common::newest_run_cells(&runs, "d05");
    let charted = format!(
        "{} received, {} activated, {} failed, {} skipped, {} queued</title>",
        cells[0], cells[1], cells[2], cells[3], cells[4]
    );
    assert_eq!(runs.matches(&charted).count(), 2, "{charted}\n{runs}");
    // Its requests too, against the account's budget per hour.
    let budget = runs
        .split("budget: ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .expect("the budget line's title");
    let requested = format!(
        "{} requests sent of a budget of {budget}, {} answered 429</title>",
        cells[5], cells[6]
    );
    assert_eq!(runs.matches(&requested).count(), 2, "{requested}\n{runs}");
    assert_ne!(cells[5], "0", "the cluster counts its runs' requests");
    assert_eq!(runs.matches("<svg class=\"chart\"").count(), 6, "{runs}");
    // A worker's settings come from the file the workers share: its pages
    // say so and offer no editing.
    assert!(
        runs.contains("A cluster worker&#39;s destinations file is not changed from its pages"),
        "{runs}"
    );
    assert!(!overview.contains("/admin/destinations/new"), "{overview}");
    let letters = page(
        &http,
        worker,
        &session,
        "/admin/destinations/d05/dead-letters",
    )
    .await;
    assert!(
        letters.contains(&missing_prospect(5).to_string()),
        "{letters}"
    );
}

/// The run period it is now (the workers' runs last an hour).
fn hour_now() -> u64 {
    let hour = Duration::from_secs(3_600);
    outreach_host::cluster::runs::period_of(outreach_host::clock::now_ms(), hour)
}

async fn page(http: &reqwest::Client, worker: &Service, session: &str, path: &str) -> String {
    let response = http
        .get(worker.url(path))
        .header("cookie", session)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{path}");
    response.text().await.unwrap()
}

/// The accounts whose partition `worker` held (its /readyz).
async fn accounts_of(worker: &Service) -> Vec<usize> {
    let response = reqwest::get(worker.url("/readyz")).await.unwrap();
    let ready: Value = serde_json::from_slice(&response.bytes().await.unwrap()).unwrap();
    let partitions: BTreeSet<u64> = ready["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_u64)
        .collect();
    (0..ACCOUNTS)
        .filter(|&a| {
            let p = outreach_host::cluster::layout::partition_of(&user(a), PARTITIONS);
            partitions.contains(&u64::from(p))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_worker_and_a_killed_server_lose_nothing_and_its_accounts_move_within_two_leases()
{
    let mut setup = Setup::start("failover").await;
    let victim = 1;
    let moved = accounts_of(setup.workers[victim].as_ref().unwrap()).await;
    assert!(!moved.is_empty(), "the victim holds no account");
    setup.post_round(0).await;
    setup.post_round(1).await;
    // Mid-run: its accounts have updates held and on the wire.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let killed_at = SystemTime::now();
    setup.workers[victim].take(); // dropped: SIGKILL
    setup.post_round(2).await;
    // Its accounts have updates waiting: within two lease periods another
    // worker sends them.
    tokio::time::sleep(
        (killed_at + 2 * LEASE)
            .duration_since(SystemTime::now())
            .unwrap_or_default(),
    )
    .await;
    let victim_name = format!("w{victim}");
    let mut failovers = Vec::new();
    for &account in &moved {
        let senders = setup.senders(account);
        let before = senders.iter().take_while(|(w, _, _)| *w == victim_name);
        if let Some((_, _, last)) = before.last() {
            assert!(
                *last <= killed_at,
                "{}: sent by the killed worker after its death",
                user(account)
            );
        }
        let (_, first, _) = senders
            .iter()
            .find(|(w, _, _)| *w != victim_name)
            .unwrap_or_else(|| {
                panic!(
                    "{}: no other worker sent for it within {:?} of the kill: {senders:?}",
                    user(account),
                    2 * LEASE
                )
            });
        failovers.push(first.duration_since(killed_at).unwrap_or_default());
    }
    // Then a NATS server: streams and buckets keep 2 of their 3 copies.
    setup.nats.kill(0);
    setup.post_round(3).await;
    setup.check_outcome().await;
    for account in 0..ACCOUNTS {
        let senders = setup.senders(account);
        // The kill moves an account once; a server's death may move it
        // once more (leases not renewable while the buckets elect new
        // leaders). Two owners at once would alternate far more.
        assert!(senders.len() <= 3, "{}: senders {senders:?}", user(account));
    }
    // With no server left, nothing is taken: 503 and when to try again.
    setup.nats.kill(1);
    setup.nats.kill(2);
    let worker = setup.workers[0].as_ref().unwrap();
    let refused = reqwest::Client::new()
        .post(worker.url("/v1/destinations/d00/records"))
        .header("content-type", "application/x-ndjson")
        .body(record(prospect(0, 1), "too late") + "\n")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 503);
    assert_eq!(refused.headers()["retry-after"], "2");
    failovers.sort();
    eprintln!(
        "failover (kill to the next request of a moved account): min {:?}, max {:?}, lease {LEASE:?}",
        failovers[0],
        failovers[failovers.len() - 1]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_stopped_with_sigterm_hands_over_without_sending_anything_twice() {
    let mut setup = Setup::start("handover").await;
    let leaving = 2;
    let moved = accounts_of(setup.workers[leaving].as_ref().unwrap()).await;
    setup.post_round(0).await;
    setup.post_round(1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut worker = setup.workers[leaving].take().unwrap();
    worker.signal(libc::SIGTERM);
    let status = worker.wait(Duration::from_secs(30));
    assert!(status.success(), "{status:?}: {}", worker.log());
    drop(worker);
    setup.wait_balanced().await;
    setup.post_round(2).await;
    tokio::time::sleep(ROUND_GAP).await;
    setup.post_round(3).await;
    setup.check_outcome().await;
    for account in 0..ACCOUNTS {
        for n in 1..=PROSPECTS_PER_ACCOUNT {
            let id = prospect(account, n);
            let applied: Vec<String> = setup
                .simulator
                .applied_to(id)
                .iter()
                .filter_map(|a| a.get("firstName")?.as_str().map(str::to_owned))
                .collect();
            let distinct: BTreeSet<&String> = applied.iter().collect();
            assert_eq!(
                distinct.len(),
                applied.len(),
                "prospect {id} got an update twice: {applied:?}"
            );
        }
    }
    for account in moved {
        assert!(setup.senders(account).len() <= 2, "{}", user(account));
    }
}

/// A small random number generator (xorshift), its seed printed so that a
/// failing kill pattern can be told apart.
struct Dice(u64);

impl Dice {
    fn roll(&mut self, below: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % below
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn workers_killed_at_random_mid_run_leave_exact_books() {
    let mut setup = Setup::start("books").await;
    let seed = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    eprintln!("kill pattern seed {seed}");
    let mut dice = Dice(seed);
    for round in 0..ROUNDS {
        setup.post_round(round).await;
        // A random worker dies at a random moment while the round is
        // delivered: verdicts, their counts and the acknowledgements race
        // the kill. It comes back as a supervisor would restart it.
        tokio::time::sleep(Duration::from_millis(100 + dice.roll(900))).await;
        let victim = dice.roll(3) as usize;
        setup.workers[victim].take(); // dropped: SIGKILL
        tokio::time::sleep(Duration::from_millis(dice.roll(1_000))).await;
        let restarted = setup.start_worker(victim);
        setup.workers[victim] = Some(restarted);
    }
    setup.check_outcome().await;
    // Each record counted once as received and once with its verdict,
    // however often its message was delivered.
    setup.check_runs().await;
}
