//! Outbound HTTP for a destination: only what the egress policy allows
//! ([`crate::egress`]), with the bearer token added by the host (the guest
//! never sees it), timeouts, connection reuse, and a bound on what is read
//! of an answer.

use std::time::Duration;

use destination_types::{Header, Method, Request, Response};
use reqwest::Url;
use reqwest::header::{HeaderName, HeaderValue};
use thiserror::Error;

use crate::egress::EgressPolicy;
pub use crate::egress::{Egress, PolicyViolation};

/// The most of a response body that is read; the rest is dropped (an API
/// answer that long is not one the component needs whole, and a hostile or
/// broken server must not fill the host's memory).
pub const MAX_RESPONSE_BYTES: usize = 1 << 20;

/// A failure to get any response.
#[derive(Debug, Error)]
pub enum TransportError {
    #[error("request timed out")]
    Timeout,
    #[error("connection failed: {0}")]
    Connection(String),
}

/// The configured API: what may be sent ([`Egress`]) and the client.
pub struct ApiClient {
    egress: Box<dyn Egress>,
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
    /// The client for `api_base` under the default [`EgressPolicy`].
    pub fn new(api_base: &str, timeout: Duration) -> Result<Self, ClientError> {
        let policy =
            EgressPolicy::new(api_base).map_err(|_| ClientError::Base(api_base.to_owned()))?;
        Self::with_egress(policy, timeout)
    }

    /// The client under `egress`'s rules.
    pub fn with_egress(
        egress: impl Egress + 'static,
        timeout: Duration,
    ) -> Result<Self, ClientError> {
        Self::build(Box::new(egress), timeout, None)
    }

    /// [`ApiClient::new`] for a cluster worker: its `User-Agent` names the
    /// worker, so that the API's logs tell which worker sent what.
    pub fn for_worker(
        api_base: &str,
        timeout: Duration,
        worker: &str,
    ) -> Result<Self, ClientError> {
        let policy =
            EgressPolicy::new(api_base).map_err(|_| ClientError::Base(api_base.to_owned()))?;
        Self::build(Box::new(policy), timeout, Some(worker))
    }

    fn build(
        egress: Box<dyn Egress>,
        timeout: Duration,
        worker: Option<&str>,
    ) -> Result<Self, ClientError> {
        let agent = concat!("outreach-host/", env!("CARGO_PKG_VERSION"));
        let agent = match worker {
            Some(worker) => format!("{agent} worker/{worker}"),
            None => agent.to_owned(),
        };
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .pool_idle_timeout(Duration::from_secs(60))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(agent)
            .build()
            .map_err(|e| ClientError::Build(e.to_string()))?;
        Ok(Self { egress, client })
    }

    pub fn base(&self) -> &Url {
        self.egress.base()
    }

    /// Checks a planned request against the egress rules without sending it.
    pub fn check(&self, request: &Request) -> Result<Url, PolicyViolation> {
        self.egress.check(request)
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
        };
        let mut builder = self.client.request(method, url).bearer_auth(token);
        for h in &request.headers {
            let name = HeaderName::from_bytes(h.name.as_bytes())
                .map_err(|_| PolicyViolation::Header(h.name.clone()))?;
            let value = HeaderValue::from_str(&h.value)
                .map_err(|_| PolicyViolation::Header(h.name.clone()))?;
            builder = builder.header(name, value);
        }
        if !request.body.is_empty() {
            builder = builder.body(request.body.clone());
        }
        let mut response = match builder.send().await {
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
        let mut bytes = Vec::new();
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    let room = MAX_RESPONSE_BYTES - bytes.len();
                    bytes.extend_from_slice(&chunk[..chunk.len().min(room)]);
                    if chunk.len() >= room {
                        // Dropping the response closes the connection: the
                        // rest is never read.
                        tracing::debug!(
                            "response body cut at {MAX_RESPONSE_BYTES} bytes ({})",
                            request.path
                        );
                        break;
                    }
                }
                Ok(None) => break,
                Err(e) => return Ok(Err(transport_error(e))),
            }
        }
        let body = String::from_utf8_lossy(&bytes).into_owned();
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

    #[test]
    fn bases_must_be_absolute_http() {
        for bad in ["api.example.com", "ftp://x/y", "file:///etc", ""] {
            assert!(
                ApiClient::new(bad, Duration::from_secs(1)).is_err(),
                "{bad}"
            );
        }
    }

    #[tokio::test]
    async fn a_huge_answer_is_read_only_up_to_the_bound() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new().route(
            "/api/v2/items/1",
            axum::routing::patch(|| async {
                (
                    axum::http::StatusCode::UNPROCESSABLE_ENTITY,
                    "x".repeat(8 << 20),
                )
            }),
        );
        let server = tokio::spawn(async move { axum::serve(listener, app).await });
        let api =
            ApiClient::new(&format!("http://{addr}/api/v2"), Duration::from_secs(10)).unwrap();
        let request = Request {
            method: Method::Patch,
            path: "/items/1".into(),
            headers: vec![],
            body: "{}".into(),
            key: "1".into(),
            audiences: vec![],
            purpose: Default::default(),
            recall: None,
            context: String::new(),
        };
        let response = api.send(&request, "token").await.unwrap().unwrap();
        assert_eq!(response.status, 422);
        assert_eq!(response.body.len(), MAX_RESPONSE_BYTES);
        server.abort();
    }

    /// An embedder's own rules: only `/items/1`, whatever the policy allows.
    struct OnlyItemOne(EgressPolicy);

    impl Egress for OnlyItemOne {
        fn base(&self) -> &Url {
            self.0.base()
        }
        fn check(&self, request: &Request) -> Result<Url, PolicyViolation> {
            if request.path != "/items/1" {
                return Err(PolicyViolation::Path(request.path.clone()));
            }
            self.0.check(request)
        }
    }

    #[tokio::test]
    async fn an_embedder_s_egress_rules_decide_what_is_sent() {
        let policy = EgressPolicy::new("http://127.0.0.1:9/api").unwrap();
        let api = ApiClient::with_egress(OnlyItemOne(policy), Duration::from_secs(1)).unwrap();
        let request = |path: &str| Request {
            method: Method::Patch,
            path: path.into(),
            headers: vec![],
            body: "{}".into(),
            key: "1".into(),
            audiences: vec![],
            purpose: Default::default(),
            recall: None,
            context: String::new(),
        };
        // Allowed by the default policy, refused by the embedder's rules,
        // before any connection is attempted.
        assert_eq!(
            api.send(&request("/items/2"), "token").await.err(),
            Some(PolicyViolation::Path("/items/2".into()))
        );
        assert_eq!(
            api.check(&request("/items/1")).unwrap().as_str(),
            "http://127.0.0.1:9/api/items/1"
        );
    }
}
