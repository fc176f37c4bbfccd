//! Plain Rust mirrors of the latest WIT contract's types
//! (`wit/since_v0.3.0/destination.wit`), free of any binding generator. The
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

impl Method {
    /// The method as HTTP writes it.
    pub fn as_str(&self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Patch => "PATCH",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    pub name: String,
    pub value: String,
}

/// What a request does, for the host's counts (since 0.3.0; every request
/// of an earlier contract is an update).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Purpose {
    #[default]
    Update,
    Lookup,
    Create,
}

impl Purpose {
    pub fn is_update(&self) -> bool {
        *self == Purpose::Update
    }

    /// How runs, metrics and pages name it.
    pub fn as_str(&self) -> &'static str {
        match self {
            Purpose::Update => "update",
            Purpose::Lookup => "lookup",
            Purpose::Create => "create",
        }
    }
}

/// The fields since 0.3.0 are left out of the vectors' JSON when they hold
/// what every earlier request holds, so a 0.2 request reads and writes the
/// same as before.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    pub method: Method,
    pub path: String,
    pub headers: Vec<Header>,
    pub body: String,
    pub key: String,
    pub audiences: Vec<String>,
    #[serde(default, skip_serializing_if = "Purpose::is_update")]
    pub purpose: Purpose,
    /// The remembered fact this request's delivery depends on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recall: Option<String>,
    /// What the component carries from one step of a delivery to the next.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub context: String,
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
    /// The OAuth scopes the configuration's requests need (since 0.3.0;
    /// empty: those the destination describes).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
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
    /// Send this request next, for the same key (since 0.3.0).
    Continue(alloc::boxed::Box<Request>),
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Budget {
    pub limit: Option<u32>,
    pub remaining: Option<u32>,
    pub reset_at_ms: Option<u64>,
}

/// Something the component asks the host to remember (since 0.3.0).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fact {
    pub name: String,
    pub value: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Classification {
    pub verdict: Verdict,
    pub budget: Budget,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remember: Vec<Fact>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub forget: Vec<String>,
}
