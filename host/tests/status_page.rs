//! The status page of `outreach-host serve` in a real browser: Debian's
//! chromium, headless, driven over WebDriver (chromedriver) with
//! fantoccini, against the service and the simulator on loopback. Each
//! page visited is saved as a PNG under `target/tmp/screenshots/`.

mod common;

use std::time::{Duration, Instant};

use common::browser::Browser;
use common::serve::{Service, eventually, password_hash, store_tokens};
use common::{loopback, scratch};
use fantoccini::Locator;
use outreach_simulator::{Simulator, SimulatorConfig};
use serde_json::json;

const ADA: &str = "ada@example.com";
const PASSWORD: &str = "correct horse battery staple";

const CONFIG: &str = r#"{ name = "Webinar sync", identityMapping = { source = "Oid", target = "OutreachId" },
attributeMappings = [ { source = "person.name.firstName", target = "firstName" } ],
audiences = [ { id = "aud-webinar", name = "Webinar 2026", mappingId = 4 } ] }"#;

fn profile(id: u64, first: &str, status: &str) -> String {
    common::Profile::new(id)
        .first_name(first)
        .audience("aud-webinar", status)
        .to_string()
}

/// Markup meant to run if a page ever put it into HTML unescaped.
const HOSTILE: &str =
    r#"<script>window.__xss = 1</script>"><img src=x onerror="window.__xss = 2">"#;

/// A service with one destination, `webinars`, and the operator `ops`.
async fn browsed_service(name: &str) -> (Simulator, Service, Browser) {
    let simulator = Simulator::start(
        SimulatorConfig {
            prospect_ids: 1..=1_000,
            ..SimulatorConfig::default()
        },
        loopback(),
    )
    .await
    .unwrap();
    let dir = scratch("status-page", name);
    store_tokens(&dir, &simulator, &[ADA]);
    std::fs::write(
        dir.join("destinations.toml"),
        format!(
            "state_dir = \"state\"\n[admin]\nuser = \"ops\"\npassword_hash = \"{}\"\n[[destinations]]\nname = \"webinars\"\naccount = \"{ADA}\"\napi_base = \"{}\"\nconfig = {CONFIG}\n",
            password_hash(PASSWORD),
            simulator.api_base()
        ),
    )
    .unwrap();
    let service = Service::start(&dir, &[]);
    let browser = Browser::start(dir.join("chromium")).await;
    (simulator, service, browser)
}

/// Signs `ops` in on the sign-in page the browser shows.
async fn sign_in_as_operator(browser: &Browser) {
    browser.sign_in_here("ops", PASSWORD).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_signs_in_and_out_and_forms_need_their_token() {
    let (_simulator, service, browser) = browsed_service("sign-in").await;
    // Nothing without signing in.
    browser.client().goto(&service.url("/admin")).await.unwrap();
    assert_eq!(browser.path().await, "/admin/sign-in");
    browser.screenshot("sign-in").await;

    // A wrong password is refused.
    browser.fill("input[name=user]", "ops").await;
    browser.fill("input[name=password]", "wrong").await;
    browser.click("button[type=submit]").await;
    assert!(browser.text().await.contains("Wrong user or password."));
    browser.screenshot("sign-in-refused").await;

    // The right one shows the destinations.
    sign_in_as_operator(&browser).await;
    let page = browser.text().await;
    assert!(page.contains("webinars"), "{page}");
    assert!(page.contains("Connected ✓"), "{page}");

    // A form without its CSRF token is refused.
    browser
        .client()
        .execute(
            "document.querySelector('input[name=csrf]').remove()",
            vec![],
        )
        .await
        .unwrap();
    browser.click("form[action='/admin/sign-out'] button").await;
    let page = browser.text().await;
    assert!(page.contains("CSRF token is missing or wrong"), "{page}");
    browser.screenshot("csrf-refused").await;

    // At a phone's width the destinations still read.
    browser.client().set_window_size(390, 844).await.unwrap();
    browser.client().goto(&service.url("/admin")).await.unwrap();
    browser.screenshot("destinations-phone").await;
    let overflow = browser
        .client()
        .execute(
            "return document.documentElement.scrollWidth > window.innerWidth",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(overflow, json!(false), "the page is wider than a phone");

    // Signing out ends the session.
    browser.click("form[action='/admin/sign-out'] button").await;
    assert_eq!(browser.path().await, "/admin/sign-in");
    browser.client().goto(&service.url("/admin")).await.unwrap();
    assert_eq!(browser.path().await, "/admin/sign-in");
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_reads_the_runs_and_dead_letters_and_nothing_hostile_runs() {
    let (simulator, service, browser) = browsed_service("browse").await;
    browser.client().goto(&service.url("/admin")).await.unwrap();
    sign_in_as_operator(&browser).await;

    // Records through the intake: 30 members, and one record whose values
    // are markup, refused (its status is unknown) so that the dead letters
    // page shows it.
    let mut records: Vec<String> = (1..=30).map(|id| profile(id, "Ann", "realized")).collect();
    records.push(profile(31, HOSTILE, "maybe"));
    let body: String = records.iter().map(|r| format!("{r}\n")).collect();
    let answer = reqwest::Client::new()
        .post(service.url("/v1/destinations/webinars/records"))
        .header("content-type", "application/x-ndjson")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 202);
    let activated = || {
        (1..=31)
            .filter(|id| {
                simulator
                    .prospect(*id)
                    .and_then(|p| p.get("custom4").cloned())
                    .is_some_and(|v| !v.is_null())
            })
            .count()
    };
    eventually("delivery", Duration::from_secs(20), || activated() == 30).await;
    // Verdicts are counted just after the API answered.
    let mut page = String::new();
    for _ in 0..100 {
        browser.client().goto(&service.url("/admin")).await.unwrap();
        page = browser.text().await;
        if page.contains("31 received, 30 activated, 1 failed") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        page.contains("31 received, 30 activated, 1 failed"),
        "{page}"
    );
    browser.screenshot("destinations").await;

    // The destination's runs, and this hour's run per audience: the
    // activated count is the simulator's.
    browser
        .click("h2 a[href='/admin/destinations/webinars']")
        .await;
    browser.screenshot("runs").await;
    browser.click("tbody tr:first-child a").await;
    let page = browser.text().await;
    let row = page
        .lines()
        .find(|l| l.contains("Webinar 2026 (Mapping ID 4)"))
        .unwrap_or_else(|| panic!("no audience row: {page}"))
        .to_owned();
    let cells: Vec<&str> = row.split_whitespace().rev().take(4).collect();
    // Received, activated, failed, skipped (read from the right).
    assert_eq!(cells, ["0", "1", &activated().to_string(), "31"], "{row}");
    assert!(page.contains("audience-status-unknown: 1"), "{page}");
    browser.screenshot("run").await;

    // The dead letter, its record shown as text: no script ran.
    browser.click("a[href*='dead-letters']").await;
    browser
        .client()
        .execute("window.scrollTo(0, 0)", vec![])
        .await
        .unwrap();
    for summary in browser
        .client()
        .find_all(Locator::Css("details"))
        .await
        .unwrap()
    {
        browser
            .client()
            .execute(
                "arguments[0].open = true",
                vec![serde_json::to_value(&summary).unwrap()],
            )
            .await
            .unwrap();
    }
    let page = browser.text().await;
    assert!(page.contains("audience-status-unknown"), "{page}");
    assert!(page.contains("<script>window.__xss = 1</script>"), "{page}");
    assert!(page.contains("onerror="), "{page}");
    let ran = browser
        .client()
        .execute("return typeof window.__xss", vec![])
        .await
        .unwrap();
    assert_eq!(ran, json!("undefined"), "the record's markup ran");
    assert_eq!(
        browser
            .client()
            .find_all(Locator::Css("main img, main script"))
            .await
            .unwrap()
            .len(),
        0,
        "the record's markup became elements"
    );
    browser.screenshot("dead-letters").await;

    browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_needs_its_own_forms_and_sets_strict_cookies() {
    let simulator = Simulator::start(SimulatorConfig::default(), loopback())
        .await
        .unwrap();
    let dir = scratch("status-page", "forms");
    store_tokens(&dir, &simulator, &[ADA]);
    let destinations = format!(
        "state_dir = \"state\"\n[[destinations]]\nname = \"webinars\"\naccount = \"{ADA}\"\napi_base = \"{}\"\nconfig = {CONFIG}\n",
        simulator.api_base()
    );
    // Without [admin] there is no page.
    std::fs::write(dir.join("destinations.toml"), &destinations).unwrap();
    let service = Service::start(&dir, &[]);
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let off = http.get(service.url("/admin")).send().await.unwrap();
    assert_eq!(off.status(), 404);
    drop(service);

    let admin = format!(
        "[admin]\nuser = \"ops\"\npassword_hash = \"{}\"\n",
        password_hash(PASSWORD)
    );
    std::fs::write(
        dir.join("destinations.toml"),
        destinations.replacen("[[destinations]]", &format!("{admin}[[destinations]]"), 1),
    )
    .unwrap();
    let service = Service::start(&dir, &[]);
    // A sign-in that did not come from the page's form is refused, even
    // with the right password.
    let forged = http
        .post(service.url("/admin/sign-in"))
        .form(&[("user", "ops"), ("password", PASSWORD), ("form", "made-up")])
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 403);
    assert!(
        forged
            .headers()
            .get("set-cookie")
            .is_some_and(|c| c.to_str().unwrap().starts_with("outreach_host_sign_in="))
    );
    // Through the form: a strict, HTTP-only session cookie, and pages that
    // allow no script.
    let page = http
        .get(service.url("/admin/sign-in"))
        .send()
        .await
        .unwrap();
    let policy = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(policy.starts_with("default-src 'none'"), "{policy}");
    let form_cookie = page.headers()["set-cookie"].to_str().unwrap().to_owned();
    let form_cookie = form_cookie.split(';').next().unwrap().to_owned();
    let html = page.text().await.unwrap();
    let from = html.find("name=\"form\" value=\"").unwrap() + 19;
    let form = &html[from..from + html[from..].find('"').unwrap()];
    let signed_in = http
        .post(service.url("/admin/sign-in"))
        .header("cookie", &form_cookie)
        .form(&[("user", "ops"), ("password", PASSWORD), ("form", form)])
        .send()
        .await
        .unwrap();
    assert_eq!(signed_in.status(), 303);
    let session = signed_in
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|c| c.to_str().unwrap().to_owned())
        .find(|c| c.starts_with("outreach_host_session="))
        .expect("a session cookie");
    for flag in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=28800"] {
        assert!(session.contains(flag), "{flag} not in {session}");
    }
    assert!(!session.contains("Secure"), "not served over TLS");
    // The same form is good once.
    let again = http
        .post(service.url("/admin/sign-in"))
        .header("cookie", &form_cookie)
        .form(&[("user", "ops"), ("password", PASSWORD), ("form", form)])
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn connect_through_the_browser_stores_tokens_and_a_forged_or_denied_login_stores_nothing() {
    let simulator = Simulator::start(
        SimulatorConfig {
            oauth: outreach_simulator::OAuthApp {
                users: vec![(ADA.into(), "ada-password".into())],
                ..outreach_simulator::OAuthApp::default()
            },
            ..SimulatorConfig::default()
        },
        loopback(),
    )
    .await
    .unwrap();
    let dir = scratch("status-page", "connect");
    std::fs::write(
        dir.join("destinations.toml"),
        format!(
            "state_dir = \"state\"\n[admin]\nuser = \"ops\"\npassword_hash = \"{}\"\n[[destinations]]\nname = \"webinars\"\naccount = \"{ADA}\"\napi_base = \"{}\"\nconfig = {CONFIG}\n",
            password_hash(PASSWORD),
            simulator.api_base()
        ),
    )
    .unwrap();
    let mut args = Service::start_args(&dir);
    args.extend([
        "--authorize-url".to_owned(),
        simulator.authorize_url(),
        "--token-url".to_owned(),
        simulator.token_url(),
    ]);
    let service = Service::start_with(&dir, &args, &[]);
    let stored = || outreach_host::oauth::TokenStore::new(dir.join("tokens.json")).get(ADA);
    let browser = Browser::start(dir.join("chromium")).await;
    browser.client().goto(&service.url("/admin")).await.unwrap();
    browser.fill("input[name=user]", "ops").await;
    browser.fill("input[name=password]", PASSWORD).await;
    browser.click("button[type=submit]").await;
    let page = browser.text().await;
    assert!(page.contains("Needs login"), "{page}");
    browser.screenshot("needs-login").await;

    // A forged state: an error page, nothing stored.
    browser
        .client()
        .goto(&service.url("/oauth/callback?code=stolen&state=forged"))
        .await
        .unwrap();
    let page = browser.text().await;
    assert!(page.contains("was not started here"), "{page}");
    assert!(stored().is_err(), "tokens stored from a forged callback");
    browser.screenshot("connect-forged").await;

    // Consent denied at the authorization server: an error page, nothing
    // stored (the state was real).
    let state = connect_started(&browser, &service).await;
    browser
        .client()
        .goto(&service.url(&format!(
            "/oauth/callback?error=access_denied&error_description=The+user+said+no&state={state}"
        )))
        .await
        .unwrap();
    let page = browser.text().await;
    assert!(page.contains("access_denied"), "{page}");
    assert!(stored().is_err(), "tokens stored after a denial");
    browser.screenshot("connect-denied").await;

    // The token endpoint refuses the exchange (a code it never issued):
    // an error page, nothing stored.
    let state = connect_started(&browser, &service).await;
    browser
        .client()
        .goto(&service.url(&format!("/oauth/callback?code=never-issued&state={state}")))
        .await
        .unwrap();
    let page = browser.text().await;
    assert!(page.contains("Not connected"), "{page}");
    assert!(
        page.contains("The token endpoint refused the authorization code (unknown or used code)"),
        "{page}"
    );
    assert!(stored().is_err(), "tokens stored after a refused exchange");
    browser.screenshot("connect-token-error").await;

    // A real code and state, but the callback comes from a client without
    // the cookie Connect gave the operator's browser (someone who saw the
    // redirect): refused, nothing stored.
    connect_started(&browser, &service).await;
    let authorize = browser.client().current_url().await.unwrap();
    // With a PKCE challenge (the simulator checks the verifier at the
    // exchange that follows).
    assert!(
        authorize
            .query_pairs()
            .any(|(k, v)| k == "code_challenge_method" && v == "S256"),
        "{authorize}"
    );
    let callback = common::browser_login(authorize.as_str(), ADA, "ada-password").await;
    let elsewhere = reqwest::get(&callback).await.unwrap();
    assert_eq!(elsewhere.status(), 400);
    let page = elsewhere.text().await.unwrap();
    assert!(page.contains("started in another browser"), "{page}");
    assert!(stored().is_err(), "tokens stored from another browser");

    // Connect: Outreach's login (the simulator's), email then password,
    // and back to the destinations, connected.
    browser.client().goto(&service.url("/admin")).await.unwrap();
    browser.click("form[action='/admin/connect'] button").await;
    browser.until_at(&simulator.addr().to_string()).await;
    browser.fill("input[name=email]", ADA).await;
    browser.screenshot("outreach-login-email").await;
    browser.click("button[type=submit]").await;
    browser.fill("input[name=password]", "ada-password").await;
    browser.click("button[type=submit]").await;
    let page = browser.text().await;
    assert!(page.contains("Connected ✓"), "{page}");
    browser.screenshot("connected").await;
    browser.until_at("/admin").await;
    let page = browser.text().await;
    assert!(page.contains("Connected ✓"), "{page}");
    assert!(page.contains("scope"), "{page}");
    browser.screenshot("destinations-connected").await;
    let tokens = stored().expect("tokens stored by the connection");
    assert!(tokens.refresh_token.is_some());
    browser.close().await;
}

/// Presses Connect on the destinations page: the `state` of the
/// authorization request the browser was sent to.
async fn connect_started(browser: &Browser, service: &Service) -> String {
    browser.client().goto(&service.url("/admin")).await.unwrap();
    browser.click("form[action='/admin/connect'] button").await;
    let authorize = browser.until_at("state=").await;
    authorize
        .query_pairs()
        .find(|(k, _)| k == "state")
        .map(|(_, v)| v.into_owned())
        .unwrap_or_else(|| panic!("no state in {authorize}"))
}

/// Signs in through the page.
async fn sign_in(browser: &Browser, service: &Service) {
    browser.client().goto(&service.url("/admin")).await.unwrap();
    browser.sign_in_here("ops", PASSWORD).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dead_letter_replayed_after_the_configuration_is_fixed_is_delivered() {
    // The account has 50 custom fields; the configuration first writes the
    // audience into custom100, which the API refuses.
    let simulator = Simulator::start(
        SimulatorConfig {
            custom_fields: 50,
            ..SimulatorConfig::default()
        },
        loopback(),
    )
    .await
    .unwrap();
    let dir = scratch("status-page", "replay");
    store_tokens(&dir, &simulator, &[ADA]);
    // One hash for both files: a new hash is a new password, which ends
    // the sessions.
    let hash = password_hash(PASSWORD);
    let file = |mapping: u32| {
        format!(
            "state_dir = \"state\"\n[admin]\nuser = \"ops\"\npassword_hash = \"{}\"\n[[destinations]]\nname = \"webinars\"\naccount = \"{ADA}\"\napi_base = \"{}\"\nconfig = {}\n",
            hash,
            simulator.api_base(),
            CONFIG.replace("mappingId = 4", &format!("mappingId = {mapping}"))
        )
    };
    std::fs::write(dir.join("destinations.toml"), file(100)).unwrap();
    let service = Service::start(&dir, &[]);
    let answer = reqwest::Client::new()
        .post(service.url("/v1/destinations/webinars/records"))
        .header("content-type", "application/x-ndjson")
        .body(profile(7, "Bo", "realized"))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 202);
    let browser = Browser::start(dir.join("chromium")).await;
    sign_in(&browser, &service).await;
    let letters = service.url("/admin/destinations/webinars/dead-letters");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        browser.client().goto(&letters).await.unwrap();
        if browser.text().await.contains("#1") {
            break;
        }
        assert!(Instant::now() < deadline, "no dead letter");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let page = browser.text().await;
    assert!(
        page.contains("Mapping ID 100"),
        "the reason names the audience: {page}"
    );
    browser.screenshot("dead-letter-before-fix").await;

    // Fix the configuration, reload, replay from the page.
    std::fs::write(dir.join("destinations.toml"), file(4)).unwrap();
    service.signal(libc::SIGHUP);
    eventually("the reload", Duration::from_secs(20), || {
        service.log().contains("reloaded")
    })
    .await;
    browser.client().goto(&letters).await.unwrap();
    browser.click("form.replay button").await;
    let page = browser.text().await;
    assert!(page.contains("1 dead letter(s) planned again"), "{page}");
    browser.screenshot("replayed").await;
    eventually("the replayed update", Duration::from_secs(20), || {
        simulator
            .prospect(7)
            .and_then(|p| p.get("custom4").cloned())
            .is_some_and(|v| v == "realized" || !v.is_null())
    })
    .await;
    browser.client().goto(&letters).await.unwrap();
    assert!(browser.text().await.contains("No dead letters."));
    // Replaying it again does nothing.
    browser.close().await;
}
