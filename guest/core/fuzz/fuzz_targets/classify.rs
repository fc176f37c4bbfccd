//! `classify` over arbitrary status, headers, body and clock.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use outreach_core::types::{Header, Response, Verdict};

mod common;

#[derive(Arbitrary, Debug)]
struct Input {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
    now_ms: u64,
    rate_headers: Option<(String, String, String)>,
}

fuzz_target!(|input: Input| {
    let destination = common::destination();
    let request = common::request();
    let mut headers: Vec<Header> = input
        .headers
        .into_iter()
        .map(|(name, value)| Header { name, value })
        .collect();
    if let Some((limit, remaining, reset)) = input.rate_headers {
        for (name, value) in [
            ("X-RateLimit-Limit", limit),
            ("X-RateLimit-Remaining", remaining),
            ("X-RateLimit-Reset", reset),
            ("Retry-After", String::new()),
        ] {
            headers.push(Header { name: name.into(), value });
        }
    }
    let response = Response { status: input.status, headers, body: input.body };
    let c = destination.classify(&request, &response, input.now_ms);
    match (input.status, &c.verdict) {
        (200..=299, v) => assert_eq!(*v, Verdict::Delivered),
        (401, v) => assert_eq!(*v, Verdict::RefreshCredentials),
        (429, Verdict::Retry(r)) => {
            // A 429 never tells the host to retry before now.
            assert!(r.not_before_ms.is_none_or(|t| t >= input.now_ms));
        }
        (429, v) => panic!("429 classified as {v:?}"),
        _ => {}
    }
});
