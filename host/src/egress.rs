//! The egress policy: which requests a component may have the host send.
//! Deny by default — only the configured API's origin, only paths under
//! its base path, only methods that write without destroying, and no
//! header that carries credentials, frames the connection or overrides the
//! method. The bearer token goes with every request, so a path that leaves
//! the base path (even on the same origin) would hand it to another
//! service.
//!
//! The check runs on the *parsed* URL, segment by segment, and refuses
//! whatever the URL parser would rewrite (dot segments in any spelling,
//! encoded slashes): what is checked is what is sent.
//!
//! This file depends only on `url`, `thiserror` and `destination-types`,
//! so the fuzz target in `guest/core/fuzz` compiles it as it is.

use destination_types::{Method, Request};
use thiserror::Error;
use url::Url;

/// Headers a component may not set: credentials, connection framing, and
/// method overrides (a sync never deletes, whatever a server would honour).
const FORBIDDEN_HEADERS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "cookie",
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

/// Query parameters a component may not set: `_method` overrides the
/// method on many frameworks.
const FORBIDDEN_QUERY_KEYS: &[&str] = &["_method"];

/// Methods a destination may use unless the policy is narrowed. The
/// contract cannot express `DELETE` (a sync writes, it never destroys);
/// method overrides that would smuggle one in are refused below.
pub const ALLOWED_METHODS: &[Method] = &[Method::Get, Method::Post, Method::Put, Method::Patch];

/// The seam every outgoing request passes, in the shape of wasi-http's
/// outgoing-request hook: `check` sees the planned request before anything
/// is sent and says where it goes, or why it may not. [`EgressPolicy`] is
/// the default; an embedder with rules of its own (a narrower path set, a
/// proxy) wraps it in its own implementation.
pub trait Egress: Send + Sync {
    /// The API base requests are relative to.
    fn base(&self) -> &Url;
    /// The URL to send `request` to, or why it may not be sent.
    fn check(&self, request: &Request) -> Result<Url, PolicyViolation>;
}

/// A request the host refuses to send (a bug or hostile component).
#[derive(Debug, Error, PartialEq, Eq)]
pub enum PolicyViolation {
    #[error("the method {0:?} is not allowed")]
    Method(Method),
    #[error("request path {0:?} is not a path under the API base")]
    Path(String),
    #[error("the component may not set the {0} header")]
    Header(String),
    #[error("the component may not set the query parameter {0:?}")]
    Query(String),
}

#[derive(Debug, Error)]
#[error("API base {0:?} is not an absolute http(s) URL without query or fragment")]
pub struct BadBase(pub String);

/// Where requests may go: the API base's origin, under its path.
#[derive(Clone, Debug)]
pub struct EgressPolicy {
    base: Url,
    /// The base path's segments (`/api/v2` → `["api", "v2"]`).
    base_segments: Vec<String>,
    methods: Vec<Method>,
}

impl EgressPolicy {
    pub fn new(api_base: &str) -> Result<Self, BadBase> {
        let bad = || BadBase(api_base.to_owned());
        let base = Url::parse(api_base.trim_end_matches('/'))
            .ok()
            .filter(|u| {
                matches!(u.scheme(), "http" | "https")
                    && u.host().is_some()
                    && u.query().is_none()
                    && u.fragment().is_none()
                    && u.username().is_empty()
                    && u.password().is_none()
            })
            .ok_or_else(bad)?;
        let base_segments = segments(&base);
        Ok(Self {
            base,
            base_segments,
            methods: ALLOWED_METHODS.to_vec(),
        })
    }

    /// The policy allowing only `methods`.
    pub fn with_methods(mut self, methods: &[Method]) -> Self {
        self.methods = methods.to_vec();
        self
    }

    pub fn base(&self) -> &Url {
        &self.base
    }

    /// The absolute URL for a component's path relative to the base, or
    /// why it may not be sent.
    pub fn url_for(&self, path: &str) -> Result<Url, PolicyViolation> {
        let violation = || PolicyViolation::Path(path.to_owned());
        if !path.starts_with('/')
            || path.starts_with("//")
            || path
                .chars()
                .any(|c| c.is_control() || matches!(c, ' ' | '#' | '\\'))
        {
            return Err(violation());
        }
        let (raw_path, query) = match path.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (path, None),
        };
        let raw_segments: Vec<&str> = raw_path.split('/').skip(1).collect();
        if raw_segments
            .iter()
            .any(|s| is_dot_segment(s) || hides_a_separator_or_dot(s))
        {
            return Err(violation());
        }
        if let Some(query) = query {
            for (key, _) in url::form_urlencoded::parse(query.as_bytes()) {
                if FORBIDDEN_QUERY_KEYS
                    .iter()
                    .any(|k| k.eq_ignore_ascii_case(key.trim()))
                {
                    return Err(PolicyViolation::Query(key.into_owned()));
                }
            }
        }
        let mut joined = self.base.as_str().trim_end_matches('/').to_owned();
        joined.push_str(path);
        let url = Url::parse(&joined).map_err(|_| violation())?;
        // What the parser made of it, not what was written: same origin,
        // the base's segments first, then exactly the request's segments.
        let sent = segments(&url);
        let under_base = url.origin() == self.base.origin()
            && url.username().is_empty()
            && url.password().is_none()
            && url.fragment().is_none()
            && sent.len() == self.base_segments.len() + raw_segments.len()
            && sent.starts_with(&self.base_segments)
            && sent
                .iter()
                .all(|s| !is_dot_segment(s) && !hides_a_separator_or_dot(s));
        if !under_base {
            return Err(violation());
        }
        Ok(url)
    }

    /// Checks a planned request against the policy; the URL to send it to.
    pub fn check(&self, request: &Request) -> Result<Url, PolicyViolation> {
        if !self.methods.contains(&request.method) {
            return Err(PolicyViolation::Method(request.method));
        }
        for header in &request.headers {
            let name = header.name.trim().to_ascii_lowercase();
            if FORBIDDEN_HEADERS.contains(&name.as_str()) {
                return Err(PolicyViolation::Header(header.name.clone()));
            }
        }
        self.url_for(&request.path)
    }
}

impl Egress for EgressPolicy {
    fn base(&self) -> &Url {
        EgressPolicy::base(self)
    }

    fn check(&self, request: &Request) -> Result<Url, PolicyViolation> {
        EgressPolicy::check(self, request)
    }
}

/// The path segments of `url`, without the empty one a trailing slash or
/// a bare `/` gives.
fn segments(url: &Url) -> Vec<String> {
    let mut segments: Vec<String> = url
        .path_segments()
        .map(|s| s.map(str::to_owned).collect())
        .unwrap_or_default();
    if segments.last().is_some_and(String::is_empty) {
        segments.pop();
    }
    segments
}

/// `.` or `..` as written; encoded spellings are refused by
/// [`hides_a_separator_or_dot`].
fn is_dot_segment(segment: &str) -> bool {
    segment == "." || segment == ".."
}

/// A percent-encoded dot, slash or backslash: a parser or server may turn
/// it into a separator or a dot segment (`.%2e` → `..`) after the check.
fn hides_a_separator_or_dot(segment: &str) -> bool {
    let lower = segment.to_ascii_lowercase();
    ["%2e", "%2f", "%5c"].iter().any(|e| lower.contains(e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use destination_types::Header;

    fn policy() -> EgressPolicy {
        EgressPolicy::new("https://api.example.com/api/v2").unwrap()
    }

    fn request(method: Method, path: &str, headers: &[(&str, &str)]) -> Request {
        Request {
            method,
            path: path.into(),
            headers: headers
                .iter()
                .map(|(name, value)| Header {
                    name: (*name).into(),
                    value: (*value).into(),
                })
                .collect(),
            body: String::new(),
            key: "1".into(),
            audiences: vec![],
            purpose: Default::default(),
            recall: None,
            context: String::new(),
        }
    }

    #[test]
    fn paths_under_the_base_are_sent_as_written() {
        let p = policy();
        assert_eq!(
            p.url_for("/items/12").unwrap().as_str(),
            "https://api.example.com/api/v2/items/12"
        );
        assert_eq!(
            p.url_for("/items/12?include=account").unwrap().as_str(),
            "https://api.example.com/api/v2/items/12?include=account"
        );
        assert!(p.url_for("/items/v1.2").is_ok());
    }

    #[test]
    fn paths_leaving_the_base_are_refused_in_every_spelling() {
        let p = policy();
        for bad in [
            "https://evil.example/x",
            "//evil.example/x",
            "/../oauth/token",
            "/items/../../oauth",
            "/items/%2e%2e/x",
            "/items/.%2e/x",
            "/items/%2e./x",
            "/items/.%2E/../x",
            "/items/%2E%2e/x",
            "/.%2e/.%2e/oauth/token",
            "/./items",
            "/%2e/items",
            "/items%2f..%2f..%2foauth",
            "/items%2F1",
            "/items%5c..%5coauth",
            "/x\\y",
            "items/1",
            "/a b",
            "/a#b",
            "/a\tb",
            "",
        ] {
            assert!(p.url_for(bad).is_err(), "{bad} was accepted");
        }
    }

    #[test]
    fn a_sibling_of_the_base_path_is_not_under_it() {
        // /api/v2-evil shares the base's text, not its path.
        let p = policy();
        for bad in ["/.%2e/v2-evil/x", "/%2e%2e/v2-evil/x", "/.%2E/v2-evil"] {
            assert!(p.url_for(bad).is_err(), "{bad} was accepted");
        }
    }

    #[test]
    fn method_overrides_and_credentials_are_refused() {
        let p = policy();
        for header in [
            "Authorization",
            "AUTHORIZATION",
            "X-HTTP-Method-Override",
            "x-http-method",
            "X-Method-Override",
            "Cookie",
        ] {
            let r = request(Method::Patch, "/items/1", &[(header, "DELETE")]);
            assert!(
                matches!(p.check(&r), Err(PolicyViolation::Header(_))),
                "{header} was accepted"
            );
        }
        for query in ["_method=DELETE", "a=1&_METHOD=delete", "%5Fmethod=DELETE"] {
            let r = request(Method::Post, &format!("/items/1?{query}"), &[]);
            assert!(
                matches!(p.check(&r), Err(PolicyViolation::Query(_))),
                "{query} was accepted"
            );
        }
        let r = request(Method::Post, "/items/1", &[]);
        let patch_only = p.clone().with_methods(&[Method::Patch]);
        assert_eq!(
            patch_only.check(&r),
            Err(PolicyViolation::Method(Method::Post))
        );
        let r = request(Method::Patch, "/items/1", &[("Content-Type", "x")]);
        assert!(p.check(&r).is_ok());
    }

    #[test]
    fn bases_must_be_absolute_http() {
        for bad in [
            "api.example.com",
            "ftp://x/y",
            "file:///etc",
            "",
            "https://x/api?q=1",
            "https://user:pw@x/api",
        ] {
            assert!(EgressPolicy::new(bad).is_err(), "{bad}");
        }
    }
}
