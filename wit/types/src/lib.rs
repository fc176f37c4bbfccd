//! Plain Rust mirrors of the latest WIT contract's types
//! (`wit/since_v0.2.0/destination.wit`), free of any binding generator. The
//! guest core produces them, the guest and the host convert them to and
//! from each contract version's generated bindings, and they serialise to
//! the JSON shape of the golden vectors in `tests/vectors/`.
#![no_std]

extern crate alloc;

use alloc::string::String;
use alloc::vec::Vec;
use serde::{Deserialize, Serialize};

/// How the OAuth client authenticates itself to the token endpoint.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ClientAuthentication {
    /// `client_id` and `client_secret` in the form body.
    #[default]
    RequestBody,
    /// HTTP Basic authentication.
    Basic,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct OauthDescriptor {
    pub authorize_url: String,
    pub token_url: String,
    pub scopes: Vec<String>,
    pub min_seconds_between_tokens: u32,
    pub client_authentication: ClientAuthentication,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct RateLimitPolicy {
    pub requests: u32,
    pub window_seconds: u32,
    pub per: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Descriptor {
    pub name: String,
    pub version: String,
    pub default_api_base: String,
    pub oauth: OauthDescriptor,
    pub rate_limit: RateLimitPolicy,
    pub config_schema: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigError {
    pub setting: String,
    pub message: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Method {
    Get,
    Post,
    Put,
    Patch,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    pub name: String,
    pub value: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    pub method: Method,
    pub path: String,
    pub headers: Vec<Header>,
    pub body: String,
    pub key: String,
    pub audiences: Vec<String>,
}

/// Whether a record that cannot be sent counts as skipped or rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RecordFate {
    Skipped,
    Rejected,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordError {
    pub code: String,
    pub message: String,
    pub audiences: Vec<String>,
    pub fate: RecordFate,
}

/// How a host shows an audience.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AudienceLabel {
    pub id: String,
    pub label: String,
}

/// A validated configuration's name, account and audiences.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigurationIdentity {
    pub name: String,
    pub account: Option<String>,
    pub audiences: Vec<AudienceLabel>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PlanOutcome {
    Send(Vec<Request>),
    Skip(String),
    Invalid(RecordError),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    pub status: u16,
    #[serde(default)]
    pub headers: Vec<Header>,
    #[serde(default)]
    pub body: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejection {
    pub code: String,
    pub message: String,
    pub audience: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Retry {
    pub not_before_ms: Option<u64>,
    pub reason: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    Delivered,
    Retry(Retry),
    RefreshCredentials,
    Rejected(Rejection),
    Fatal(String),
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Budget {
    pub limit: Option<u32>,
    pub remaining: Option<u32>,
    pub reset_at_ms: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Classification {
    pub verdict: Verdict,
    pub budget: Budget,
}
