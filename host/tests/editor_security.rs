//! The destination editor's doors, over plain HTTP: nothing without a
//! session, every form needs its CSRF token, a draft belongs to the
//! session that began it, what an operator types is escaped wherever it is
//! shown, and a webhook URL never comes back into a page.

mod common;

use common::serve::{Service, password_hash, sign_in};
use common::{between, scratch};
use reqwest::StatusCode;

const WEBHOOK: &str = "https://hooks.example/services/T0/B0/very-secret-key";
const HOSTILE: &str = r#"<script>alert(1)</script>"><img src=x onerror=alert(2)>"#;

fn destinations_file(dir: &std::path::Path) -> String {
    let text = format!(
        r#"# kept
[admin]
user = "ops"
password_hash = "{}"
[[destinations]]
name = "d"
account = "ada@example.com"
api_base = "http://127.0.0.1:9/api/v2"
config = {{ name = "d", identityMapping = {{ source = "Oid", target = "OutreachId" }}, audiences = [ {{ id = "a", mappingId = 4 }} ] }}
"#,
        password_hash("right password")
    );
    std::fs::write(dir.join("destinations.toml"), &text).unwrap();
    text
}

struct Operator<'a> {
    http: &'a reqwest::Client,
    service: &'a Service,
    cookie: String,
    csrf: String,
}

impl<'a> Operator<'a> {
    async fn sign_in(http: &'a reqwest::Client, service: &'a Service) -> Self {
        let cookie = sign_in(http, service, "ops", "right password").await;
        let page = http
            .get(service.url("/admin"))
            .header("cookie", &cookie)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let csrf = between(&page, "name=\"csrf\" value=\"", "\"").to_owned();
        Self {
            http,
            service,
            cookie,
            csrf,
        }
    }

    async fn get(&self, path: &str) -> (StatusCode, String) {
        let answer = self
            .http
            .get(self.service.url(path))
            .header("cookie", &self.cookie)
            .send()
            .await
            .unwrap();
        (answer.status(), answer.text().await.unwrap())
    }

    /// Posts `fields`, with the session's CSRF token when `with_csrf`; the
    /// status and where it redirects.
    async fn post(
        &self,
        path: &str,
        fields: &[(&str, &str)],
        with_csrf: bool,
    ) -> (StatusCode, String) {
        let mut form: Vec<(&str, &str)> = fields.to_vec();
        if with_csrf {
            form.push(("csrf", &self.csrf));
        }
        let answer = self
            .http
            .post(self.service.url(path))
            .header("cookie", &self.cookie)
            .form(&form)
            .send()
            .await
            .unwrap();
        let location = answer
            .headers()
            .get("location")
            .map(|l| l.to_str().unwrap().to_owned())
            .unwrap_or_default();
        (answer.status(), location)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_editor_needs_a_session_its_token_and_its_own_draft_and_echoes_no_secret() {
    let dir = scratch("editor-security", "doors");
    let before = destinations_file(&dir);
    let service = Service::start(&dir, &[]);
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();

    // Nothing without a session.
    for path in [
        "/admin/destinations/new",
        "/admin/destinations/d/edit",
        "/admin/destinations/d/enabled",
    ] {
        let answer = http.post(service.url(path)).send().await.unwrap();
        assert_eq!(answer.status(), StatusCode::SEE_OTHER, "{path}");
        assert_eq!(answer.headers()["location"], "/admin/sign-in");
    }
    let answer = http
        .get(service.url("/admin/drafts/x/details"))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::SEE_OTHER);

    let ops = Operator::sign_in(&http, &service).await;
    // Every form needs the session's token.
    for path in [
        "/admin/destinations/new",
        "/admin/destinations/d/edit",
        "/admin/destinations/d/enabled",
    ] {
        assert_eq!(
            ops.post(path, &[("enabled", "no")], false).await.0,
            StatusCode::FORBIDDEN,
            "{path}"
        );
    }
    let (status, location) = ops.post("/admin/destinations/d/edit", &[], true).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let draft = location
        .strip_prefix("/admin/drafts/")
        .and_then(|rest| rest.strip_suffix("/details"))
        .unwrap_or_else(|| panic!("{location}"))
        .to_owned();
    let step = |name: &str| format!("/admin/drafts/{draft}/{name}");
    assert_eq!(
        ops.post(&step("details"), &[("name", "changed")], false)
            .await
            .0,
        StatusCode::FORBIDDEN
    );
    assert!(
        !ops.get(&step("details"))
            .await
            .1
            .contains("value=\"changed\"")
    );

    // Another session cannot read or change it.
    let other = Operator::sign_in(&http, &service).await;
    assert_eq!(other.get(&step("details")).await.0, StatusCode::NOT_FOUND);
    assert_eq!(
        other
            .post(&step("details"), &[("name", "theirs")], true)
            .await
            .0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        other.post(&step("save"), &[], true).await.0,
        StatusCode::NOT_FOUND
    );

    // What is typed is escaped on the step and in the review.
    let (status, location) = ops
        .post(
            &step("details"),
            &[("name", HOSTILE), ("description", HOSTILE)],
            true,
        )
        .await;
    assert_eq!(
        (status, location.as_str()),
        (StatusCode::SEE_OTHER, step("account").as_str())
    );
    for page in ["details", "review"] {
        let (status, html) = ops.get(&step(page)).await;
        assert!(
            status.is_success() || status == StatusCode::UNPROCESSABLE_ENTITY,
            "{page}: {status}"
        );
        assert!(
            !html.contains("<script>alert(1)") && !html.contains("<img src=x"),
            "{page}: {html}"
        );
        assert!(
            html.contains("&#60;script&#62;alert(1)&#60;/script&#62;"),
            "{page}: {html}"
        );
    }

    // A webhook set is never shown again, not even in the review.
    let (status, _) = ops
        .post(
            &step("alerts"),
            &[("alert_webhook", WEBHOOK), ("stall_minutes", "")],
            true,
        )
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    for page in ["alerts", "review"] {
        let html = ops.get(&step(page)).await.1;
        assert!(!html.contains("very-secret-key"), "{page}: {html}");
    }
    assert!(
        ops.get(&step("alerts"))
            .await
            .1
            .contains("A webhook is set")
    );
    assert!(
        ops.get(&step("review"))
            .await
            .1
            .contains("(set, not shown)")
    );
    // A bad webhook is refused without being repeated, the set one kept.
    let (status, _) = ops
        .post(
            &step("alerts"),
            &[("alert_webhook", "ftp://other-secret@x")],
            true,
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let html = ops.get(&step("alerts")).await.1;
    assert!(!html.contains("other-secret"), "{html}");
    assert!(html.contains("A webhook is set"));

    assert_eq!(
        std::fs::read_to_string(dir.join("destinations.toml")).unwrap(),
        before
    );
    drop(service);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destination_that_cannot_start_leaves_the_file_as_it_was() {
    let dir = scratch("editor-security", "cannot-start");
    let before = destinations_file(&dir);
    let service = Service::start(&dir, &[]);
    // Its journal's place is taken by a directory: the component accepts
    // the configuration, but the destination cannot open its journal.
    std::fs::create_dir_all(dir.join("state/blocked.journal")).unwrap();
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let ops = Operator::sign_in(&http, &service).await;
    let (_, location) = ops.post("/admin/destinations/new", &[], true).await;
    let draft = location.trim_end_matches("/details").to_owned();
    for (step, fields) in [
        (
            "details",
            vec![("destination", "blocked"), ("name", "Blocked")],
        ),
        (
            "account",
            vec![
                ("account", "ada@example.com"),
                ("api_base", "http://127.0.0.1:9/api/v2"),
            ],
        ),
        ("alerts", vec![]),
        (
            "audiences",
            vec![("audiences[0].id", "a"), ("audiences[0].mappingId", "5")],
        ),
        ("mapping", vec![("identityMapping.source", "Oid")]),
    ] {
        let (status, _) = ops.post(&format!("{draft}/{step}"), &fields, true).await;
        assert_eq!(status, StatusCode::SEE_OTHER, "{step}");
    }
    let (status, review) = ops.get(&format!("{draft}/review")).await;
    assert_eq!(status, StatusCode::OK, "{review}");
    let answer = http
        .post(service.url(&format!("{draft}/save")))
        .header("cookie", &ops.cookie)
        .form(&[("csrf", ops.csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let page = answer.text().await.unwrap();
    assert!(page.contains("cannot be saved yet"), "{page}");
    assert!(
        page.contains("Destination &#34;blocked&#34;: journal"),
        "{page}"
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("destinations.toml")).unwrap(),
        before,
        "the file is put back"
    );
    assert!(!dir.join("state/changes.ndjson").exists());
    // The service serves what it served.
    let (status, overview) = ops.get("/admin").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        overview.contains("/admin/destinations/d\"")
            && !overview.contains("/admin/destinations/blocked\""),
        "{overview}"
    );
    drop(service);
    std::fs::remove_dir_all(&dir).unwrap();
}
