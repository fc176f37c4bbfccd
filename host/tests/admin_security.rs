//! The status page's doors: failed sign-ins make their client wait longer
//! each time (the refusals logged with its address), without a password
//! check while it waits.

mod common;

use std::time::Duration;

use common::scratch;
use common::serve::{Service, password_hash};
use reqwest::StatusCode;

fn destinations_file(dir: &std::path::Path) {
    let text = format!(
        r#"[admin]
user = "ops"
password_hash = "{}"
[[destinations]]
name = "d"
account = "ada@example.com"
api_base = "http://127.0.0.1:9/api/v2"
config = {{ name = "d", identityMapping = {{ source = "Oid", target = "OutreachId" }}, attributeMappings = [ {{ source = "person.name.firstName", target = "firstName" }} ], audiences = [] }}
"#,
        password_hash("right password")
    );
    std::fs::write(dir.join("destinations.toml"), text).unwrap();
}

/// One sign-in through the form: its status and `Retry-After`.
async fn attempt(
    http: &reqwest::Client,
    service: &Service,
    password: &str,
) -> (StatusCode, Option<u64>) {
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
    let answer = http
        .post(service.url("/admin/sign-in"))
        .header("cookie", &form_cookie)
        .form(&[("user", "ops"), ("password", password), ("form", form)])
        .send()
        .await
        .unwrap();
    let retry_after = answer
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok()?.parse().ok());
    (answer.status(), retry_after)
}

#[tokio::test]
async fn failed_sign_ins_make_the_client_wait_longer_each_time() {
    let dir = scratch("admin-security", "attempts");
    destinations_file(&dir);
    let service = Service::start(&dir, &[]);
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    for _ in 0..5 {
        assert_eq!(
            attempt(&http, &service, "guess").await,
            (StatusCode::UNAUTHORIZED, None)
        );
    }
    // Now it waits: even the right password is not checked.
    assert_eq!(
        attempt(&http, &service, "right password").await,
        (StatusCode::TOO_MANY_REQUESTS, Some(1))
    );
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    assert_eq!(
        attempt(&http, &service, "guess").await,
        (StatusCode::UNAUTHORIZED, None)
    );
    assert_eq!(
        attempt(&http, &service, "right password").await,
        (StatusCode::TOO_MANY_REQUESTS, Some(2)),
        "the wait doubles"
    );
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    assert_eq!(
        attempt(&http, &service, "right password").await.0,
        StatusCode::SEE_OTHER
    );
    let log = service.log();
    assert!(
        log.contains("client=127.0.0.1") && log.contains("too many failures"),
        "{log}"
    );
}
