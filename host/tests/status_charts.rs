//! The destination page's charts: records per hour over the last day and
//! week, drawn on the server as SVG, whose bars carry the figures of the
//! runs table.

mod common;

use std::time::Duration;

use common::serve::{Service, eventually, password_hash, sign_in, store_tokens};
use common::{loopback, member_profile, one_audience_config, scratch};
use outreach_simulator::{Simulator, SimulatorConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_hours_charts_carry_the_runs_figures() {
    let simulator = Simulator::start(
        SimulatorConfig {
            prospect_ids: 1..=100,
            ..SimulatorConfig::default()
        },
        loopback(),
    )
    .await
    .unwrap();
    let dir = scratch("status-charts", "hours");
    store_tokens(&dir, &simulator, &["ada@example.com"]);
    let key = "charts-ingest-key";
    std::fs::write(dir.join("crm.json"), one_audience_config("crm", "aud", 4)).unwrap();
    std::fs::write(
        dir.join("destinations.toml"),
        format!(
            "state_dir = \"state\"\ningest_keys = [\"{}\"]\n[admin]\nuser = \"ops\"\npassword_hash = \"{}\"\n[[destinations]]\nname = \"crm\"\naccount = \"ada@example.com\"\napi_base = \"{}\"\nconfig = \"crm.json\"\n",
            outreach_host::service::keys::KeyHash::of(key),
            password_hash("operator password"),
            simulator.api_base(),
        ),
    )
    .unwrap();
    let service = Service::start(&dir, &[]);
    // 20 records, 2 of them for prospects that do not exist (failed).
    let body: String = (1..=18)
        .chain(101..=102)
        .map(|id| member_profile("aud", id, "Charted") + "\n")
        .collect();
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let posted = http
        .post(service.url("/v1/destinations/crm/records"))
        .bearer_auth(key)
        .header("content-type", "application/x-ndjson")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(posted.status(), 202);
    let session = sign_in(&http, &service, "ops", "operator password").await;
    let page = || async {
        http.get(service.url("/admin/destinations/crm"))
            .header("cookie", &session)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut html = page().await;
    // Requests are added to the run every few seconds, as it goes.
    while !(html.contains("20 received, 18 activated, 2 failed, 0 skipped, 0 queued")
        && html.contains("20 requests sent"))
    {
        assert!(std::time::Instant::now() < deadline, "{html}");
        tokio::time::sleep(Duration::from_millis(100)).await;
        html = page().await;
    }
    // Three measures, each over a day (24 bars) and a week (168), every
    // bar with its title; the requests charts draw the budget as a line.
    assert_eq!(html.matches("<svg class=\"chart\"").count(), 6, "{html}");
    assert_eq!(
        html.matches("<g><title>").count(),
        3 * (24 + 7 * 24) + 2,
        "{html}"
    );
    // The bars of this hour carry what the runs table says.
    let cells = common::newest_run_cells(&html, "crm");
    let cells: Vec<&str> = cells.iter().map(String::as_str).collect();
    let [
        received,
        activated,
        failed,
        skipped,
        queued,
        requests,
        limited,
    ] = cells[..]
    else {
        panic!("{cells:?}")
    };
    assert_eq!(
        [received, activated, failed, skipped, queued],
        ["20", "18", "2", "0", "0"],
        "{cells:?}"
    );
    assert_eq!(
        html.matches(&format!(
            "{received} received, {activated} activated, {failed} failed, {skipped} skipped, {queued} queued</title>"
        ))
        .count(),
        2,
        "this hour, in the day's chart and the week's"
    );
    // Each record took one request: 18 updates, 2 answered 404.
    assert_eq!((requests, limited), ("20", "0"), "{cells:?}");
    let budget = 10_000; // the component's: 10,000 an hour
    assert_eq!(
        html.matches(&format!(
            "{requests} requests sent of a budget of {budget}, {limited} answered 429</title>"
        ))
        .count(),
        2,
        "{html}"
    );
    assert!(html.contains(&format!(
        r#"<title>budget: {budget} requests an hour, for the account</title><line class="level""#
    )));
    // The queue was sampled as the page was read: this hour has a bar.
    assert!(html.contains(" UTC: at most "), "{html}");
    assert!(html.contains(r#"class="activated""#) && html.contains(r#"data-value="18""#));
    // Served under the page's policy: no script, no inline style.
    assert!(!html.contains("<script") && !html.contains("style=\""));
    eventually("nothing more to deliver", Duration::from_secs(5), || {
        simulator.stats().updates_applied == 18
    })
    .await;
    drop(service);
    std::fs::remove_dir_all(&dir).unwrap();
}
