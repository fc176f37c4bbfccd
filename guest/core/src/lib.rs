//! The Outreach destination's logic, free of I/O and of any WebAssembly
//! binding: configuration validation, profile → prospect mapping, request
//! building and response classification. `outreach-guest` exports it as a
//! component; tests and benchmarks also run it natively.
//!
//! `no_std` + `alloc` so the component imports nothing at all.
#![cfg_attr(not(test), no_std)]

extern crate alloc;

pub mod catalog;
pub mod classify;
pub mod config;
pub mod contract;
pub mod merge;
pub mod plan;
pub mod steps;
pub mod time;

use alloc::borrow::ToOwned;
use alloc::vec::Vec;

pub use config::Config;
pub use destination_types as types;
use types::{
    AudienceLabel, Classification, ClientAuthentication, ConfigError, ConfigurationIdentity,
    Descriptor, OauthDescriptor, PlanOutcome, RateLimitPolicy, Request, Response,
};

/// Production API base; request paths are relative to it.
pub const API_BASE: &str = "https://api.outreach.io/api/v2";
const CONFIG_SCHEMA: &str = include_str!("../schema/config.schema.json");

/// Static description of the Outreach destination.
pub fn describe() -> Descriptor {
    Descriptor {
        name: "outreach".to_owned(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        default_api_base: API_BASE.to_owned(),
        oauth: OauthDescriptor {
            authorize_url: "https://api.outreach.io/oauth/authorize".to_owned(),
            token_url: "https://api.outreach.io/oauth/token".to_owned(),
            scopes: alloc::vec!["prospects.write".to_owned()],
            min_seconds_between_tokens: 60,
            client_authentication: ClientAuthentication::RequestBody,
        },
        rate_limit: RateLimitPolicy {
            requests: 10_000,
            window_seconds: 3_600,
            per: "user".to_owned(),
        },
        config_schema: CONFIG_SCHEMA.to_owned(),
    }
}

/// A validated destination, ready to plan records and classify responses.
#[derive(Clone, Debug)]
pub struct Destination {
    config: Config,
}

impl Destination {
    /// Validates a configuration given as JSON text.
    pub fn new(config_json: &str) -> Result<Self, Vec<ConfigError>> {
        config::parse(config_json).map(|config| Self { config })
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// One outcome per record, in order.
    pub fn plan<S: AsRef<str>>(&self, records: &[S]) -> Vec<PlanOutcome> {
        records
            .iter()
            .map(|r| plan::plan_record(&self.config, r.as_ref()))
            .collect()
    }

    pub fn classify(&self, request: &Request, response: &Response, now_ms: u64) -> Classification {
        classify::classify(&self.config, request, response, now_ms)
    }

    /// The configuration's name and account.
    pub fn identity(&self) -> ConfigurationIdentity {
        ConfigurationIdentity {
            name: self.config.name.clone(),
            account: self.config.account.clone(),
            audiences: self
                .config
                .audiences
                .iter()
                .map(|a| AudienceLabel {
                    id: a.id.clone(),
                    label: a.label(),
                })
                .collect(),
            scopes: self.config.scopes(),
        }
    }

    /// Two queued updates for one prospect as one: steps of an email match
    /// ([`steps::merge`]), or two `PATCH`es ([`merge::merge`]).
    pub fn merge(&self, older: &Request, newer: &Request) -> Option<Request> {
        if !older.context.is_empty() || !newer.context.is_empty() {
            return steps::merge(older, newer);
        }
        merge::merge(older, newer)
    }

    /// The request to send instead of `request` now that the fact it
    /// recalls is known ([`steps::recall`]).
    pub fn recall(&self, request: &Request, value: &str) -> Request {
        steps::recall(request, value)
    }
}
