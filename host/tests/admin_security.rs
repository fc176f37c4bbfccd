//! The status page's doors: failed sign-ins make their client wait longer
//! each time (the refusals logged with its address), without a password
//! check while it waits.

mod common;

use std::time::Duration;

use common::scratch;
use common::serve::{Service, password_hash, sign_in_attempt};
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
    let answer = sign_in_attempt(http, service, "ops", password).await;
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

#[tokio::test]
async fn the_dead_letters_page_is_a_bounded_page_with_links_to_whole_letters() {
    let dir = scratch("admin-security", "letters");
    destinations_file(&dir);
    let service = Service::start(&dir, &[]);
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    // 150 records without a prospect id, 50 KB each: 150 letters.
    let filler = "z".repeat(50_000);
    let body: String = (0..150)
        .map(|n| format!("{{\"identityMap\":{{}},\"n\":{n},\"filler\":\"{filler}\"}}\n"))
        .collect();
    let posted = http
        .post(service.url("/v1/destinations/d/records"))
        .header("content-type", "application/x-ndjson")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(posted.status(), 202);
    let session = common::serve::sign_in(&http, &service, "ops", "right password").await;
    let get = |path: String| {
        let http = http.clone();
        let session = session.clone();
        let url = service.url(&path);
        async move {
            let response = http
                .get(url)
                .header("cookie", session)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200, "{path}");
            response.text().await.unwrap()
        }
    };
    let first = get("/admin/destinations/d/dead-letters".into()).await;
    // A page of 100 letters, each record cut to a preview: well under the
    // 7.5 MB the records hold.
    assert!(first.len() < 1_000_000, "{} bytes", first.len());
    assert_eq!(first.matches("<article").count(), 100);
    assert!(first.contains(":149,"), "newest first");
    assert!(first.contains("the whole letter"));
    let from = first.find("before=").expect("a link to older letters") + 7;
    let before: String = first[from..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    let older = get(format!(
        "/admin/destinations/d/dead-letters?before={before}"
    ))
    .await;
    assert_eq!(older.matches("<article").count(), 50);
    assert!(!older.contains("Older letters"));
    // The whole letter, on its own page.
    let id: i64 = before.parse::<i64>().unwrap() - 1;
    let whole = get(format!("/admin/destinations/d/dead-letters/{id}")).await;
    assert!(whole.contains(&filler), "the whole record");
    let missing = http
        .get(service.url("/admin/destinations/d/dead-letters/999999"))
        .header("cookie", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
}
