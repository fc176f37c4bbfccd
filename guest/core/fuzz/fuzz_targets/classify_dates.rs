//! `classify` with arbitrary text where the guest parses times: the
//! rate-limit reset (epoch seconds, a delay, or an ISO date-time),
//! `Retry-After` (seconds or an HTTP date) and the time in a 429 message.
//! Each is given raw and behind a well-formed prefix, so the fuzzer reaches
//! the fraction, offset and trailing parts of the parsers.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use outreach_core::types::{Header, Response, Verdict};

mod common;

#[derive(Arbitrary, Debug)]
struct Input {
    status: u16,
    reset: String,
    reset_prefixed: bool,
    retry_after: String,
    retry_prefixed: bool,
    message_time: String,
    now_ms: u64,
}

fuzz_target!(|input: Input| {
    let destination = common::destination();
    let request = common::request();
    let reset = if input.reset_prefixed {
        format!("2026-11-20T10:00:00{}", input.reset)
    } else {
        input.reset
    };
    let retry_after = if input.retry_prefixed {
        format!("Sun, 06 Nov 1994 08:49:37{}", input.retry_after)
    } else {
        input.retry_after
    };
    let status = if input.status % 2 == 0 { 429 } else { input.status };
    let body = format!(
        r#"{{"errors":[{{"id":"rateLimitExceeded","title":"Rate Limit Exceeded","detail":"You have exceeded your permitted rate limit of 10,000; please try again at 2017-01-01T00:00:00{}."}}]}}"#,
        input.message_time.replace(['"', '\\'], "")
    );
    let headers = vec![
        Header { name: "X-RateLimit-Limit".into(), value: "10000".into() },
        Header { name: "X-RateLimit-Remaining".into(), value: "0".into() },
        Header { name: "X-RateLimit-Reset".into(), value: reset },
        Header { name: "Retry-After".into(), value: retry_after },
    ];
    let response = Response { status, headers, body };
    let c = destination.classify(&request, &response, input.now_ms);
    if status == 429 {
        match &c.verdict {
            // A 429 never tells the host to retry before now.
            Verdict::Retry(r) => assert!(r.not_before_ms.is_none_or(|t| t >= input.now_ms)),
            v => panic!("429 classified as {v:?}"),
        }
    }
});
