//! The host's egress policy (`host/src/egress.rs`, compiled here as it
//! is) over arbitrary planned requests: each is either refused, or sent to
//! a URL on the API's origin whose path is the base path's segments
//! followed by the request's — no dot segment, no encoded separator, no
//! method override.
#![no_main]

use arbitrary::Arbitrary;
use destination_types::{Header, Method, Request};
use libfuzzer_sys::fuzz_target;

#[path = "../../../../host/src/egress.rs"]
#[allow(dead_code)]
mod egress;

#[derive(Arbitrary, Debug)]
struct Input {
    method: u8,
    /// Spelled from pieces a path attack is made of, and free text.
    pieces: Vec<Piece>,
    headers: Vec<(String, String)>,
}

#[derive(Arbitrary, Debug)]
enum Piece {
    Slash,
    Dot,
    EncodedDot(bool),
    EncodedSlash(bool),
    Backslash,
    Question,
    Hash,
    Ampersand,
    Method,
    Text(String),
}

fuzz_target!(|input: Input| {
    let policy = egress::EgressPolicy::new("https://api.outreach.io/api/v2").unwrap();
    let mut path = String::from("/");
    for piece in &input.pieces {
        path.push_str(match piece {
            Piece::Slash => "/",
            Piece::Dot => ".",
            Piece::EncodedDot(upper) => if *upper { "%2E" } else { "%2e" },
            Piece::EncodedSlash(upper) => if *upper { "%2F" } else { "%2f" },
            Piece::Backslash => "\\",
            Piece::Question => "?",
            Piece::Hash => "#",
            Piece::Ampersand => "&",
            Piece::Method => "_method=DELETE",
            Piece::Text(t) => t,
        });
    }
    let method = match input.method % 4 {
        0 => Method::Get,
        1 => Method::Post,
        2 => Method::Put,
        _ => Method::Patch,
    };
    let request = Request {
        method,
        path,
        headers: input
            .headers
            .into_iter()
            .map(|(name, value)| Header { name, value })
            .collect(),
        body: String::new(),
        key: "1".into(),
        audiences: vec![],
    };
    let Ok(url) = policy.check(&request) else {
        return;
    };
    assert_eq!(url.origin(), policy.base().origin(), "{url}");
    assert!(url.username().is_empty() && url.password().is_none() && url.fragment().is_none());
    let segments: Vec<&str> = url.path_segments().unwrap().collect();
    assert!(segments.len() >= 3, "{url}");
    assert_eq!(&segments[..2], ["api", "v2"], "{url}");
    for segment in &segments[2..] {
        let lower = segment.to_ascii_lowercase();
        assert!(*segment != "." && *segment != "..", "{url}");
        assert!(!lower.contains("%2e") && !lower.contains("%2f") && !lower.contains("%5c"), "{url}");
    }
    for (key, _) in url.query_pairs() {
        assert!(!key.trim().eq_ignore_ascii_case("_method"), "{url}");
    }
    for header in &request.headers {
        let name = header.name.trim().to_ascii_lowercase();
        assert!(
            ![
                "authorization",
                "cookie",
                "x-http-method-override",
                "x-http-method",
                "x-method-override"
            ]
            .contains(&name.as_str()),
            "{}",
            header.name
        );
    }
});
