//! Setting destinations up in the status page, in a real browser
//! (chromium over WebDriver): an operator creates one step by step and it
//! delivers; bad Mapping IDs and an unknown target are refused with the
//! component's own message beside the field, the file untouched; a running
//! destination's Mapping ID is changed without a restart and the change is
//! in its history with the webhook masked. Screenshots of every step go to
//! `target/tmp/screenshots/editor-*.png`.

mod common;

use std::time::Duration;

use common::browser::Browser;
use common::serve::{Service, eventually, password_hash, store_tokens};
use common::{loopback, member_profile, scratch};
use fantoccini::Locator;
use outreach_host::service::config::ServiceFile;
use outreach_simulator::{Simulator, SimulatorConfig};
use serde_json::json;

const ADA: &str = "ada@example.com";
const PASSWORD: &str = "operator password";
const INGEST_KEY: &str = "editor-ingest-key";
const WEBHOOK_SECRET: &str = "hush-hush-token";

/// A destinations file with comments, one destination (`webinars`,
/// audience `aud-webinar` → Mapping ID 4) and a webhook holding a secret.
fn destinations_file(simulator: &Simulator) -> String {
    format!(
        r#"# Our destinations. Keep this comment: the pages must.
state_dir = "state"
ingest_keys = ["{key}"]

[admin]
user = "ops"
password_hash = "{hash}"

# The webinar team's sync.
[[destinations]]
name = "webinars"
account = "{ADA}"
api_base = "{api}"
alert_webhook = "http://127.0.0.1:9/hooks?token={WEBHOOK_SECRET}"
config = {{ name = "Webinar sync", identityMapping = {{ source = "Oid", target = "OutreachId" }}, attributeMappings = [
    {{ source = "person.name.firstName", target = "firstName" }},
], audiences = [
    # The webinar audience writes custom4.
    {{ id = "aud-webinar", name = "Webinar 2026", mappingId = 4 }},
] }}
"#,
        key = outreach_host::service::keys::KeyHash::of(INGEST_KEY),
        hash = password_hash(PASSWORD),
        api = simulator.api_base(),
    )
}

struct Setup {
    simulator: Simulator,
    service: Service,
    browser: Browser,
    dir: std::path::PathBuf,
}

async fn setup(name: &str) -> Setup {
    let simulator = Simulator::start(
        SimulatorConfig {
            prospect_ids: 1..=1_000,
            ..SimulatorConfig::default()
        },
        loopback(),
    )
    .await
    .unwrap();
    let dir = scratch("destination-editor", name);
    store_tokens(&dir, &simulator, &[ADA]);
    std::fs::write(dir.join("destinations.toml"), destinations_file(&simulator)).unwrap();
    let service = Service::start(&dir, &[]);
    let browser = Browser::start(dir.join("chromium")).await;
    browser
        .client()
        .goto(&service.url("/admin/sign-in"))
        .await
        .unwrap();
    browser.sign_in_here("ops", PASSWORD).await;
    Setup {
        simulator,
        service,
        browser,
        dir,
    }
}

impl Setup {
    fn file(&self) -> String {
        std::fs::read_to_string(self.dir.join("destinations.toml")).unwrap()
    }

    async fn post(&self, destination: &str, records: &[String]) {
        let body: String = records.iter().map(|r| format!("{r}\n")).collect();
        let posted = reqwest::Client::new()
            .post(
                self.service
                    .url(&format!("/v1/destinations/{destination}/records")),
            )
            .bearer_auth(INGEST_KEY)
            .header("content-type", "application/x-ndjson")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(posted.status(), 202, "{}", posted.text().await.unwrap());
    }

    /// Replaces what field `name` holds.
    async fn set(&self, name: &str, value: &str) {
        let field = self
            .browser
            .client()
            .find(Locator::Css(&format!("[name=\"{name}\"]")))
            .await
            .unwrap_or_else(|e| panic!("no field {name}: {e}"));
        field.clear().await.unwrap();
        field.send_keys(value).await.unwrap();
    }

    /// The message shown beside field `name` (`None`: none).
    async fn error_beside(&self, name: &str) -> Option<String> {
        let id: String = name
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        let found = self
            .browser
            .client()
            .find(Locator::Css(&format!("#{id}-error")))
            .await
            .ok()?;
        Some(found.text().await.unwrap())
    }

    async fn next(&self) {
        self.browser.click("button[value=next]").await;
    }

    fn custom(&self, id: u64, n: u32) -> Option<String> {
        self.simulator
            .prospect(id)?
            .get(&format!("custom{n}"))?
            .as_str()
            .map(str::to_owned)
    }
}

/// Whether the page is wider than the window (sideways scrolling).
async fn scrolls_sideways(browser: &Browser) -> bool {
    browser
        .client()
        .execute(
            "return document.documentElement.scrollWidth > window.innerWidth",
            vec![],
        )
        .await
        .unwrap()
        == json!(true)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_sets_up_a_destination_in_the_browser_and_it_delivers() {
    let mut s = setup("create").await;
    let browser = &s.browser;
    browser.screenshot("editor-0-destinations").await;
    browser
        .click("form[action='/admin/destinations/new'] button")
        .await;

    // Details.
    assert!(browser.path().await.ends_with("/details"));
    s.set("destination", "newsletter").await;
    s.set("name", "Newsletter sync").await;
    s.set("description", "Newsletter subscribers, for the EU team")
        .await;
    browser.screenshot("editor-1-details").await;
    s.next().await;

    // Account: the one the other destination uses, on the simulator.
    assert!(browser.path().await.ends_with("/account"));
    s.set("account", ADA).await;
    s.set("api_base", &s.simulator.api_base()).await;
    browser.screenshot("editor-2-account").await;
    s.next().await;

    // Alerts.
    assert!(browser.path().await.ends_with("/alerts"));
    s.set(
        "alert_webhook",
        &format!("http://127.0.0.1:9/new-hook?token={WEBHOOK_SECRET}"),
    )
    .await;
    s.set("stall_minutes", "30").await;
    browser.screenshot("editor-3-alerts").await;
    s.next().await;

    // Audiences: one, Mapping ID 9.
    assert!(browser.path().await.ends_with("/audiences"));
    s.set("audiences[0].id", "aud-news").await;
    s.set("audiences[0].name", "Newsletter").await;
    s.set("audiences[0].mappingId", "9").await;
    browser.screenshot("editor-4-audiences").await;
    s.next().await;

    // Mapping: the identity namespace, and one attribute, its target
    // offered from the component's schema.
    assert!(browser.path().await.ends_with("/mapping"));
    let offered = browser
        .client()
        .find_all(Locator::Css("datalist#targets option"))
        .await
        .unwrap()
        .len();
    assert!(offered > 50, "{offered} targets offered");
    s.set("identityMapping.source", "Oid").await;
    s.set("attributeMappings[0].source", "person.name.firstName")
        .await;
    s.set("attributeMappings[0].target", "firstName").await;
    browser.screenshot("editor-5-mapping").await;
    s.next().await;

    // Review: the new table, the webhook masked.
    assert!(browser.path().await.ends_with("/review"));
    let review = browser.text().await;
    browser.screenshot("editor-6-review").await;
    assert!(review.contains("+ name = \"newsletter\""), "{review}");
    assert!(review.contains("mappingId = 9"), "{review}");
    assert!(review.contains("(set, not shown)"), "{review}");
    assert!(!review.contains(WEBHOOK_SECRET), "{review}");
    let page_source = browser.client().source().await.unwrap();
    assert!(!page_source.contains(WEBHOOK_SECRET));
    browser.click("form[action$='/save'] button").await;
    assert_eq!(browser.path().await, "/admin/destinations/newsletter");
    let page = browser.text().await;
    assert!(page.contains("created by ops"), "{page}");

    // The file kept its comments, parses, and holds the new destination.
    let file = s.file();
    assert!(file.contains("# Our destinations. Keep this comment: the pages must."));
    assert!(file.contains("# The webinar audience writes custom4."));
    let parsed = ServiceFile::parse(&file, &s.dir).unwrap();
    let newsletter = parsed
        .destinations
        .iter()
        .find(|d| d.name == "newsletter")
        .expect("the new destination is in the file");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&newsletter.config).unwrap()["audiences"],
        json!([{ "id": "aud-news", "name": "Newsletter", "mappingId": 9 }])
    );

    // Records sent to its intake are activated in Outreach.
    let records: Vec<String> = (1..=5)
        .map(|id| member_profile("aud-news", id, "Nina"))
        .collect();
    s.post("newsletter", &records).await;
    eventually("five prospects activated", Duration::from_secs(20), || {
        (1..=5).all(|id| s.custom(id, 9).is_some())
    })
    .await;
    assert_eq!(s.custom(1, 4), None);

    // And counted in its charts.
    eventually_on_page(
        browser,
        &s.service,
        "/admin/destinations/newsletter",
        "5 activated",
    )
    .await;
    browser.screenshot("editor-7-created-destination").await;
    // The account's budget per window, as the simulator reported it.
    browser
        .client()
        .goto(&s.service.url("/admin"))
        .await
        .unwrap();
    let windows = browser
        .client()
        .find_all(Locator::Css("svg.chart title"))
        .await
        .unwrap();
    let mut budget = String::new();
    for title in windows {
        budget += &title.html(true).await.unwrap();
    }
    assert!(budget.contains(" requests used"), "{budget}");
    assert!(budget.contains("budget: "), "{budget}");
    browser
        .client()
        .execute(
            "document.querySelector('svg.chart').scrollIntoView()",
            vec![],
        )
        .await
        .unwrap();
    browser.screenshot("editor-7b-accounts").await;

    // At a phone's width neither the page nor a step scrolls sideways.
    browser.client().set_window_size(390, 844).await.unwrap();
    browser
        .client()
        .goto(&s.service.url("/admin/destinations/newsletter"))
        .await
        .unwrap();
    assert!(
        !scrolls_sideways(browser).await,
        "the destination page is wider than a phone"
    );
    browser.screenshot("editor-8-destination-phone").await;
    browser.click("form[action$='/edit'] button").await;
    browser
        .client()
        .goto(
            &browser
                .client()
                .current_url()
                .await
                .unwrap()
                .as_str()
                .replace("/details", "/mapping"),
        )
        .await
        .unwrap();
    assert!(
        !scrolls_sideways(browser).await,
        "the mapping step is wider than a phone"
    );
    browser.screenshot("editor-9-mapping-phone").await;

    // A restart serves the same destination from the file.
    s.service.signal(libc::SIGTERM);
    assert!(s.service.wait(Duration::from_secs(30)).success());
    let again = Service::start(&s.dir, &[]);
    s.service = again;
    s.post("newsletter", &[member_profile("aud-news", 6, "Nora")])
        .await;
    eventually(
        "the restarted service delivers",
        Duration::from_secs(20),
        || s.custom(6, 9).is_some(),
    )
    .await;
    s.browser.close().await;
}

/// Reloads `path` until its text contains `wanted` (20 s at most).
async fn eventually_on_page(browser: &Browser, service: &Service, path: &str, wanted: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        browser.client().goto(&service.url(path)).await.unwrap();
        let chart_titles = browser
            .client()
            .find_all(Locator::Css("svg.chart title"))
            .await
            .unwrap();
        let mut titles = String::new();
        for title in chart_titles {
            titles += &title.html(true).await.unwrap_or_default();
        }
        if titles.contains(wanted) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{wanted:?} never charted: {titles}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// What the component itself says of `config`, setting by setting.
fn component_says(config: serde_json::Value) -> Vec<(String, String)> {
    let errors = common::runtime()
        .configure(&config.to_string())
        .unwrap()
        .err()
        .expect("the component refuses it");
    errors.into_iter().map(|e| (e.setting, e.message)).collect()
}

fn webinar_config(audiences: serde_json::Value, target: &str) -> serde_json::Value {
    json!({
        "name": "Webinar sync",
        "identityMapping": { "source": "Oid", "target": "OutreachId" },
        "attributeMappings": [{ "source": "person.name.firstName", "target": target }],
        "audiences": audiences,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_mapping_ids_and_an_unknown_target_are_refused_beside_the_field() {
    let s = setup("refused").await;
    let before = s.file();
    let browser = &s.browser;
    browser
        .click("a[href='/admin/destinations/webinars']")
        .await;
    browser.click("form[action$='/edit'] button").await;
    browser.click("nav a[href$='/audiences']").await;

    for (typed, audiences) in [
        (
            "0",
            json!([{ "id": "aud-webinar", "name": "Webinar 2026", "mappingId": 0 }]),
        ),
        (
            "151",
            json!([{ "id": "aud-webinar", "name": "Webinar 2026", "mappingId": 151 }]),
        ),
    ] {
        s.set("audiences[0].mappingId", typed).await;
        s.next().await;
        assert!(
            browser.path().await.ends_with("/audiences"),
            "refused, it stays"
        );
        let said = component_says(webinar_config(audiences, "firstName"));
        let (setting, message) = &said[0];
        assert_eq!(setting, "audiences[0].mappingId");
        assert_eq!(
            s.error_beside(setting).await.as_deref(),
            Some(message.as_str())
        );
        browser
            .screenshot(&format!("editor-refused-mapping-id-{typed}"))
            .await;
    }

    // A second audience with the same Mapping ID.
    s.set("audiences[0].mappingId", "4").await;
    s.set("audiences[1].id", "aud-other").await;
    s.set("audiences[1].mappingId", "4").await;
    s.next().await;
    assert!(browser.path().await.ends_with("/audiences"));
    let said = component_says(webinar_config(
        json!([
            { "id": "aud-webinar", "name": "Webinar 2026", "mappingId": 4 },
            { "id": "aud-other", "mappingId": 4 },
        ]),
        "firstName",
    ));
    let (setting, message) = &said[0];
    assert!(setting.starts_with("audiences[1]"), "{said:?}");
    let shown = s
        .error_beside(setting)
        .await
        .or(s.error_beside(&format!("{setting}.id")).await);
    assert_eq!(shown.as_deref(), Some(message.as_str()));
    browser.screenshot("editor-refused-duplicate").await;

    // An unknown target field.
    s.set("audiences[1].id", "").await;
    s.set("audiences[1].mappingId", "").await;
    s.next().await;
    assert!(browser.path().await.ends_with("/mapping"));
    s.set("attributeMappings[0].target", "shoeSize").await;
    s.next().await;
    assert!(browser.path().await.ends_with("/mapping"));
    let said = component_says(webinar_config(
        json!([{ "id": "aud-webinar", "name": "Webinar 2026", "mappingId": 4 }]),
        "shoeSize",
    ));
    let (setting, message) = &said[0];
    assert_eq!(setting, "attributeMappings[0].target");
    assert_eq!(
        s.error_beside(setting).await.as_deref(),
        Some(message.as_str())
    );
    browser.screenshot("editor-refused-target").await;

    // Saving directly is refused too: the review checks the whole file.
    browser.click("nav a[href$='/review']").await;
    let review = browser.text().await;
    assert!(review.contains("cannot be saved yet"), "{review}");
    assert!(review.contains(message.as_str()), "{review}");
    let save_disabled = browser
        .client()
        .find(Locator::Css("form[action$='/save'] button"))
        .await
        .unwrap()
        .attr("disabled")
        .await
        .unwrap();
    assert!(save_disabled.is_some());
    // Forced past the disabled button, the service checks again and
    // writes nothing.
    browser
        .client()
        .execute(
            "document.querySelector(\"form[action$='/save'] button\").disabled = false",
            vec![],
        )
        .await
        .unwrap();
    browser.click("form[action$='/save'] button").await;
    let again = browser.text().await;
    assert!(again.contains("cannot be saved yet"), "{again}");
    assert!(again.contains(message.as_str()), "{again}");
    assert_eq!(s.file(), before, "nothing was written");
    assert!(
        !s.dir.join("state/changes.ndjson").exists(),
        "nothing recorded"
    );
    s.browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_destinations_mapping_id_changes_without_a_restart_and_is_in_its_history() {
    let s = setup("edit").await;
    s.post("webinars", &[member_profile("aud-webinar", 1, "Before")])
        .await;
    eventually(
        "the first record lands in custom4",
        Duration::from_secs(20),
        || s.custom(1, 4).is_some(),
    )
    .await;
    let browser = &s.browser;
    browser
        .click("a[href='/admin/destinations/webinars']")
        .await;
    // An edit begun and left open: saved after the change below, it is
    // refused.
    browser.click("form[action$='/edit'] button").await;
    let stale = browser.client().current_url().await.unwrap();
    browser.click("nav a[href$='/account']").await;
    let account = browser.text().await;
    assert!(
        account.contains(&format!("{ADA} is connected ✓")),
        "{account}"
    );
    browser.screenshot("editor-account-connected").await;
    browser
        .client()
        .goto(&s.service.url("/admin/destinations/webinars"))
        .await
        .unwrap();
    browser.click("form[action$='/edit'] button").await;
    browser.click("nav a[href$='/audiences']").await;
    s.set("audiences[0].mappingId", "8").await;
    s.next().await;
    assert!(browser.path().await.ends_with("/mapping"));
    s.next().await;
    let review = browser.text().await;
    browser.screenshot("editor-edit-review").await;
    assert!(
        review.contains("restarts this destination's delivery in place"),
        "{review}"
    );
    assert!(
        review.contains("− ") && review.contains("mappingId = 4"),
        "{review}"
    );
    assert!(
        review.contains("+ ") && review.contains("mappingId = 8"),
        "{review}"
    );
    browser.click("form[action$='/save'] button").await;
    assert_eq!(browser.path().await, "/admin/destinations/webinars");

    // The file changed that number only, and kept its comments.
    let file = s.file();
    assert!(file.contains("# The webinar audience writes custom4."));
    assert!(file.contains("mappingId = 8"));
    assert!(!file.contains("mappingId = 4"));

    // The edit left open is refused: it began before this change.
    browser
        .client()
        .goto(stale.as_str().replace("/details", "/review").as_str())
        .await
        .unwrap();
    browser.click("form[action$='/save'] button").await;
    let refused = browser.text().await;
    assert!(
        refused.contains("changed since you began editing"),
        "{refused}"
    );
    assert!(s.file().contains("mappingId = 8"));

    // Later records write custom8, with no restart of the service.
    s.post("webinars", &[member_profile("aud-webinar", 2, "After")])
        .await;
    eventually(
        "the later record lands in custom8",
        Duration::from_secs(20),
        || s.custom(2, 8).is_some(),
    )
    .await;
    assert_eq!(s.custom(2, 4), None);

    // The history: who, what, before and after, the webhook masked.
    browser
        .client()
        .goto(&s.service.url("/admin/destinations/webinars"))
        .await
        .unwrap();
    let page = browser.text().await;
    browser
        .client()
        .execute(
            "document.querySelector('.history').scrollIntoView()",
            vec![],
        )
        .await
        .unwrap();
    browser.screenshot("editor-history").await;
    assert!(page.contains("edited by ops"), "{page}");
    assert!(page.contains("mappingId = 8"), "{page}");
    let source = browser.client().source().await.unwrap();
    assert!(!source.contains(WEBHOOK_SECRET), "the webhook is masked");
    let history = std::fs::read_to_string(s.dir.join("state/changes.ndjson")).unwrap();
    assert!(!history.contains(WEBHOOK_SECRET), "{history}");
    assert!(history.contains("(set, not shown)"), "{history}");

    // Disabling from the page stops its intake; enabling brings it back.
    browser.click("form[action$='/enabled'] button").await;
    assert!(s.file().contains("enabled = false"));
    let refused = reqwest::Client::new()
        .post(s.service.url("/v1/destinations/webinars/records"))
        .bearer_auth(INGEST_KEY)
        .header("content-type", "application/x-ndjson")
        .body(member_profile("aud-webinar", 3, "Off") + "\n")
        .send()
        .await
        .unwrap();
    assert_ne!(refused.status(), 202);
    browser.click("form[action$='/enabled'] button").await;
    assert!(s.file().contains("enabled = true"));
    s.post("webinars", &[member_profile("aud-webinar", 3, "On")])
        .await;
    eventually(
        "enabled again, it delivers",
        Duration::from_secs(20),
        || s.custom(3, 8).is_some(),
    )
    .await;
    s.browser.close().await;
}

/// The pages offer what the component's schema declares.
#[test]
fn the_schema_offers_the_components_targets_match_modes_and_descriptions() {
    use outreach_host::service::admin::editor::schema::Offered;
    let offered = Offered::read(&common::runtime().describe().config_schema);
    assert!(offered.targets.iter().any(|t| t == "firstName"));
    assert!(offered.targets.iter().any(|t| t == "tags"));
    assert!(!offered.targets.iter().any(|t| t == "createdAt"));
    assert_eq!(
        offered.target_note.as_deref(),
        Some("A custom field, custom1 to custom150.")
    );
    assert_eq!(
        offered.match_modes,
        ["outreachId", "email", "outreachIdOrEmail"]
    );
    assert_eq!(offered.identity_target.as_deref(), Some("OutreachId"));
    assert!(offered.declares("companyMapping"));
    assert!(!offered.declares("shoeSize"));
    assert_eq!(
        offered.describe("audiences.mappingId").as_deref(),
        Some("N of the prospect custom field customN.")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_new_account_is_connected_from_the_account_step_before_saving() {
    const BOB: &str = "bob@example.com";
    let simulator = Simulator::start(
        SimulatorConfig {
            prospect_ids: 1..=100,
            oauth: outreach_simulator::OAuthApp {
                users: vec![(BOB.into(), "bob-password".into())],
                ..outreach_simulator::OAuthApp::default()
            },
            ..SimulatorConfig::default()
        },
        loopback(),
    )
    .await
    .unwrap();
    let dir = scratch("destination-editor", "connect");
    std::fs::write(dir.join("destinations.toml"), destinations_file(&simulator)).unwrap();
    let mut args = Service::start_args(&dir);
    args.extend([
        "--authorize-url".to_owned(),
        simulator.authorize_url(),
        "--token-url".to_owned(),
        simulator.token_url(),
    ]);
    let service = Service::start_with(&dir, &args, &[]);
    let browser = Browser::start(dir.join("chromium")).await;
    browser.client().goto(&service.url("/admin")).await.unwrap();
    browser.sign_in_here("ops", PASSWORD).await;
    browser
        .click("form[action='/admin/destinations/new'] button")
        .await;
    let field = |name: &str| format!("[name=\"{name}\"]");
    browser.fill(&field("destination"), "bobs").await;
    browser.fill(&field("name"), "Bob's sync").await;
    browser.click("button[value=next]").await;
    browser.fill(&field("account"), BOB).await;
    browser
        .fill(&field("api_base"), &simulator.api_base())
        .await;
    browser.click("button[value=next]").await;

    // Back on the account step: Bob is new here, and can log in now.
    browser.click("nav a[href$='/account']").await;
    let step = browser.path().await;
    let page = browser.text().await;
    assert!(page.contains(&format!("{BOB} needs a login")), "{page}");
    browser.screenshot("editor-account-new").await;
    browser.click("form[action='/admin/connect'] button").await;
    browser.until_at(&simulator.addr().to_string()).await;
    browser.fill("input[name=email]", BOB).await;
    browser.click("button[type=submit]").await;
    browser.fill("input[name=password]", "bob-password").await;
    browser.click("button[type=submit]").await;
    // Connected, and back to the step, the draft as it was.
    browser.until_at(&step).await;
    let page = browser.text().await;
    assert!(page.contains(&format!("{BOB} is connected ✓")), "{page}");
    browser.screenshot("editor-account-new-connected").await;
    let stored = outreach_host::oauth::TokenStore::new(dir.join("tokens.json")).get(BOB);
    assert!(stored.is_ok(), "tokens stored for the new account");

    // The rest of the setup, and records delivered with Bob's login.
    browser.click("nav a[href$='/audiences']").await;
    browser.fill(&field("audiences[0].id"), "aud-bob").await;
    browser.fill(&field("audiences[0].mappingId"), "11").await;
    browser.click("button[value=next]").await;
    browser.fill(&field("identityMapping.source"), "Oid").await;
    browser.click("button[value=next]").await;
    browser.click("form[action$='/save'] button").await;
    assert_eq!(browser.path().await, "/admin/destinations/bobs");
    let posted = reqwest::Client::new()
        .post(service.url("/v1/destinations/bobs/records"))
        .bearer_auth(INGEST_KEY)
        .header("content-type", "application/x-ndjson")
        .body(member_profile("aud-bob", 7, "Bo") + "\n")
        .send()
        .await
        .unwrap();
    assert_eq!(posted.status(), 202);
    eventually(
        "delivered with the new account's login",
        Duration::from_secs(20),
        || {
            simulator
                .prospect(7)
                .and_then(|p| p.get("custom11").cloned())
                .is_some()
        },
    )
    .await;
    browser.close().await;
}
