//! What a client can hold of the service's listener: open connections up
//! to `max_connections` (one more is closed at once), a request's headers
//! within `header_timeout_secs`, its body within `body_timeout_secs`; and
//! a stop that does not wait for idle connections.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::scratch;
use common::serve::Service;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn destinations_file(dir: &Path, settings: &str) {
    let text = format!(
        r#"{settings}
[[destinations]]
name = "d"
account = "ada@example.com"
api_base = "http://127.0.0.1:9/api/v2"
config = {{ name = "d", identityMapping = {{ source = "Oid", target = "OutreachId" }}, attributeMappings = [ {{ source = "person.name.firstName", target = "firstName" }} ], audiences = [] }}
"#
    );
    std::fs::write(dir.join("destinations.toml"), text).unwrap();
}

fn address(service: &Service) -> String {
    service.base.trim_start_matches("http://").to_owned()
}

/// Reads until the server closes the connection (or `limit` passes):
/// what it sent, and whether it closed.
async fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> (String, bool) {
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buffer)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (String::from_utf8_lossy(&received).into(), true),
            Ok(Ok(n)) => received.extend_from_slice(&buffer[..n]),
            Err(_) => return (String::from_utf8_lossy(&received).into(), false),
        }
    }
}

async fn healthz(service: &Service) -> bool {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    client
        .get(service.url("/healthz"))
        .send()
        .await
        .is_ok_and(|r| r.status() == 200)
}

#[tokio::test]
async fn connections_over_the_cap_are_closed_and_stalled_headers_time_out() {
    let dir = scratch("listener", "cap");
    destinations_file(&dir, "max_connections = 8\nheader_timeout_secs = 2");
    let service = Service::start(&dir, &[]);
    // Eight clients that send half a request and stop.
    let mut stalled = Vec::new();
    for _ in 0..8 {
        let mut stream = TcpStream::connect(address(&service)).await.unwrap();
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
            .await
            .unwrap();
        stalled.push(stream);
    }
    // One more is closed at once, without an answer.
    let started = Instant::now();
    let mut ninth = TcpStream::connect(address(&service)).await.unwrap();
    let (answer, closed) = read_until_closed(&mut ninth, Duration::from_secs(1)).await;
    assert!(closed && answer.is_empty(), "{answer:?} {closed}");
    assert!(started.elapsed() < Duration::from_secs(1));
    // The stalled ones are cut at the header deadline; then the service
    // answers again.
    for stream in &mut stalled {
        let (_, closed) = read_until_closed(stream, Duration::from_secs(5)).await;
        assert!(
            closed,
            "a stalled request kept its connection past the deadline"
        );
    }
    assert!(
        started.elapsed() >= Duration::from_millis(1_500),
        "cut before the deadline: {:?}",
        started.elapsed()
    );
    assert!(healthz(&service).await, "{}", service.log());
}

#[tokio::test]
async fn a_body_that_stalls_is_refused_at_its_deadline() {
    let dir = scratch("listener", "body");
    destinations_file(&dir, "body_timeout_secs = 1");
    let service = Service::start(&dir, &[]);
    let mut stream = TcpStream::connect(address(&service)).await.unwrap();
    // Headers promise 1,000 bytes; 10 arrive.
    stream
        .write_all(
            b"POST /v1/destinations/d/records HTTP/1.1\r\nHost: 127.0.0.1\r\n\
              Content-Type: application/x-ndjson\r\nContent-Length: 1000\r\n\r\n{\"identit",
        )
        .await
        .unwrap();
    let started = Instant::now();
    let (answer, closed) = read_until_closed(&mut stream, Duration::from_secs(10)).await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(closed);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("did not arrive within 1s"), "{answer}");
}

#[tokio::test]
async fn a_stop_does_not_wait_for_idle_connections() {
    let dir = scratch("listener", "stop");
    destinations_file(&dir, "drain_timeout_secs = 20");
    let mut service = Service::start(&dir, &[]);
    // An idle keep-alive connection after one request, and one that sent
    // nothing at all.
    let mut idle = TcpStream::connect(address(&service)).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .unwrap();
    let mut buffer = [0u8; 1024];
    let n = idle.read(&mut buffer).await.unwrap();
    assert!(String::from_utf8_lossy(&buffer[..n]).starts_with("HTTP/1.1 200"));
    let _silent = TcpStream::connect(address(&service)).await.unwrap();
    let started = Instant::now();
    service.signal(libc::SIGTERM);
    let status = service.wait(Duration::from_secs(15));
    assert!(status.success(), "{status:?}: {}", service.log());
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the stop waited {:?} for idle connections",
        started.elapsed()
    );
}
