//! Outbound HTTP for a destination: only to the configured API origin, with
//! the bearer token added by the host (the guest never sees it), timeouts
//! and connection reuse.

use std::time::Duration;

use destination_types::{Header, Method, Request, Response};
use reqwest::Url;
use reqwest::header::{HeaderName, HeaderValue};
use thiserror::Error;

/// Headers a component may not set: credentials and connection framing are
/// the host's business.
const FORBIDDEN_HEADERS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "cookie",
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
];

/// Methods a destination may use. `DELETE` is refused: a profile sync
/// writes data and never needs to destroy records.
const ALLOWED_METHODS: &[Method] = &[Method::Get, Method::Post, Method::Put, Method::Patch];

/// A request the host refuses to send (a bug or hostile component).
#[derive(Debug, Error)]
pub enum PolicyViolation {
    #[error("the method {0:?} is not allowed")]
    Method(Method),
    #[error("request path {0:?} is not a path under the API base")]
    Path(String),
    #[error("the component may not set the {0} header")]
    Header(String),
    #[error("invalid header {0:?}")]
    InvalidHeader(String),
}

/// A failure to get any response.
#[derive(Debug, Error)]
pub enum TransportError {
    #[error("request timed out")]
    Timeout,
    #[error("connection failed: {0}")]
    Connection(String),
}

/// The configured API: base URL and client.
pub struct ApiClient {
    base: Url,
    client: reqwest::Client,
}

#[derive(Debug, Error)]
pub enum ClientError {
    #[error("API base {0:?} is not an absolute http(s) URL")]
    Base(String),
    #[error("cannot build the HTTP client: {0}")]
    Build(String),
}

impl ApiClient {
    pub fn new(api_base: &str, timeout: Duration) -> Result<Self, ClientError> {
        let base = Url::parse(api_base.trim_end_matches('/'))
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
            .ok_or_else(|| ClientError::Base(api_base.to_owned()))?;
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .pool_idle_timeout(Duration::from_secs(60))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("outreach-host/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ClientError::Build(e.to_string()))?;
        Ok(Self { base, client })
    }

    pub fn base(&self) -> &Url {
        &self.base
    }

    /// The absolute URL for a component's relative path, refusing anything
    /// that would leave the API base (absolute URLs, `..`, `//host`, …).
    pub fn url_for(&self, path: &str) -> Result<Url, PolicyViolation> {
        let violation = || PolicyViolation::Path(path.to_owned());
        if !path.starts_with('/')
            || path.starts_with("//")
            || path.contains('\\')
            || path.chars().any(|c| c.is_control() || c == ' ' || c == '#')
        {
            return Err(violation());
        }
        let (path_part, _query) = path.split_once('?').unwrap_or((path, ""));
        if path_part
            .split('/')
            .any(|segment| matches!(segment, "." | "..") || segment.eq_ignore_ascii_case("%2e%2e"))
        {
            return Err(violation());
        }
        let url = Url::parse(&format!(
            "{}{path}",
            self.base.as_str().trim_end_matches('/')
        ))
        .map_err(|_| violation())?;
        let same_origin = url.origin() == self.base.origin();
        if !same_origin
            || !url
                .path()
                .starts_with(self.base.path().trim_end_matches('/'))
        {
            return Err(violation());
        }
        Ok(url)
    }

    /// Checks a planned request against the policy without sending it.
    pub fn check(&self, request: &Request) -> Result<Url, PolicyViolation> {
        if !ALLOWED_METHODS.contains(&request.method) {
            return Err(PolicyViolation::Method(request.method));
        }
        for header in &request.headers {
            let name = header.name.to_ascii_lowercase();
            if FORBIDDEN_HEADERS.contains(&name.as_str()) {
                return Err(PolicyViolation::Header(header.name.clone()));
            }
        }
        self.url_for(&request.path)
    }

    /// Sends `request` with `token` as bearer credentials.
    pub async fn send(
        &self,
        request: &Request,
        token: &str,
    ) -> Result<Result<Response, TransportError>, PolicyViolation> {
        let url = self.check(request)?;
        let method = match request.method {
            Method::Get => reqwest::Method::GET,
            Method::Post => reqwest::Method::POST,
            Method::Put => reqwest::Method::PUT,
            Method::Patch => reqwest::Method::PATCH,
            Method::Delete => reqwest::Method::DELETE,
        };
        let mut builder = self.client.request(method, url).bearer_auth(token);
        for h in &request.headers {
            let name = HeaderName::from_bytes(h.name.as_bytes())
                .map_err(|_| PolicyViolation::InvalidHeader(h.name.clone()))?;
            let value = HeaderValue::from_str(&h.value)
                .map_err(|_| PolicyViolation::InvalidHeader(h.name.clone()))?;
            builder = builder.header(name, value);
        }
        if !request.body.is_empty() {
            builder = builder.body(request.body.clone());
        }
        let response = match builder.send().await {
            Ok(r) => r,
            Err(e) => return Ok(Err(transport_error(e))),
        };
        let status = response.status().as_u16();
        let headers = response
            .headers()
            .iter()
            .map(|(name, value)| Header {
                name: name.as_str().to_owned(),
                value: String::from_utf8_lossy(value.as_bytes()).into_owned(),
            })
            .collect();
        let body = match response.bytes().await {
            Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            Err(e) => return Ok(Err(transport_error(e))),
        };
        Ok(Ok(Response {
            status,
            headers,
            body,
        }))
    }
}

/// A transport error in words that never include the URL's query or
/// credentials.
fn transport_error(e: reqwest::Error) -> TransportError {
    if e.is_timeout() {
        return TransportError::Timeout;
    }
    let e = e.without_url();
    let mut message = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        message.push_str(": ");
        message.push_str(&s.to_string());
        source = s.source();
    }
    TransportError::Connection(message)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client() -> ApiClient {
        ApiClient::new("https://api.outreach.io/api/v2", Duration::from_secs(5)).unwrap()
    }

    #[test]
    fn paths_stay_under_the_base() {
        let c = client();
        assert_eq!(
            c.url_for("/prospects/12").unwrap().as_str(),
            "https://api.outreach.io/api/v2/prospects/12"
        );
        for bad in [
            "https://evil.example/x",
            "//evil.example/x",
            "/../oauth/token",
            "/prospects/../../oauth",
            "/prospects/%2e%2e/x",
            "prospects/1",
            "/a b",
            "/x\\y",
            "",
        ] {
            assert!(c.url_for(bad).is_err(), "{bad} was accepted");
        }
    }

    #[test]
    fn credential_headers_are_refused() {
        let c = client();
        let mut request = Request {
            method: Method::Patch,
            path: "/prospects/1".into(),
            headers: vec![Header {
                name: "AUTHORIZATION".into(),
                value: "Bearer stolen".into(),
            }],
            body: String::new(),
            key: "1".into(),
            audiences: vec![],
        };
        assert!(matches!(c.check(&request), Err(PolicyViolation::Header(_))));
        request.headers.clear();
        assert!(c.check(&request).is_ok());
    }

    #[test]
    fn bases_must_be_absolute_http() {
        for bad in ["api.outreach.io", "ftp://x/y", "file:///etc", ""] {
            assert!(
                ApiClient::new(bad, Duration::from_secs(1)).is_err(),
                "{bad}"
            );
        }
    }
}
