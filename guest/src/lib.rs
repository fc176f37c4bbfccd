//! The Outreach destination as a WebAssembly component implementing
//! `profile-sync:destination@0.3.0`: a thin export layer that converts
//! between the WIT types and `outreach-core`'s plain types. (`guest/v0_2/`
//! and `guest/v0_1/` export the same core under contracts 0.2.0 and 0.1.0.)
//!
//! On wasm32 the crate is `no_std` (runtime support from `component-rt`), so
//! the component imports nothing at all.
#![cfg_attr(target_arch = "wasm32", no_std)]

extern crate alloc;
// Allocator, cabi_realloc and panic handler for the no_std component.
extern crate component_rt;

use alloc::string::String;
use alloc::vec::Vec;

use outreach_core::types as core_types;

wit_bindgen::generate!({
    path: "../wit/since_v0.3.0",
    world: "profile-destination",
});

use exports::profile_sync::destination::destination::{self as wit, Guest, GuestConfigured};

struct Component;

/// A validated Outreach destination configuration.
pub struct Configured(outreach_core::Destination);

impl Guest for Component {
    type Configured = Configured;

    fn describe() -> wit::Descriptor {
        let d = outreach_core::describe();
        wit::Descriptor {
            name: d.name,
            version: d.version,
            default_api_base: d.default_api_base,
            oauth: wit::OauthDescriptor {
                authorize_url: d.oauth.authorize_url,
                token_url: d.oauth.token_url,
                scopes: d.oauth.scopes,
                min_seconds_between_tokens: d.oauth.min_seconds_between_tokens,
                client_authentication: match d.oauth.client_authentication {
                    core_types::ClientAuthentication::RequestBody => {
                        wit::ClientAuthentication::RequestBody
                    }
                    core_types::ClientAuthentication::Basic => wit::ClientAuthentication::Basic,
                },
            },
            rate_limit: wit::RateLimitPolicy {
                requests: d.rate_limit.requests,
                window_seconds: d.rate_limit.window_seconds,
                per: d.rate_limit.per,
            },
            config_schema: d.config_schema,
        }
    }
}

impl GuestConfigured for Configured {
    fn create(config: String) -> Result<wit::Configured, Vec<wit::ConfigError>> {
        match outreach_core::Destination::new(&config) {
            Ok(d) => Ok(wit::Configured::new(Configured(d))),
            Err(errors) => Err(errors
                .into_iter()
                .map(|e| wit::ConfigError {
                    setting: e.setting,
                    message: e.message,
                })
                .collect()),
        }
    }

    fn plan(&self, records: Vec<String>) -> Vec<wit::PlanOutcome> {
        self.0
            .plan(&records)
            .into_iter()
            .map(plan_outcome)
            .collect()
    }

    fn classify(
        &self,
        request: wit::Request,
        response: wit::Response,
        now_ms: u64,
    ) -> wit::Classification {
        let c = self.0.classify(
            &from_wit_request(request),
            &from_wit_response(response),
            now_ms,
        );
        wit::Classification {
            verdict: verdict(c.verdict),
            budget: wit::Budget {
                limit: c.budget.limit,
                remaining: c.budget.remaining,
                reset_at_ms: c.budget.reset_at_ms,
            },
            remember: c
                .remember
                .into_iter()
                .map(|f| wit::Fact {
                    name: f.name,
                    value: f.value,
                })
                .collect(),
            forget: c.forget,
        }
    }

    fn identity(&self) -> wit::ConfigurationIdentity {
        let identity = self.0.identity();
        wit::ConfigurationIdentity {
            name: identity.name,
            account: identity.account,
            audiences: identity
                .audiences
                .into_iter()
                .map(|a| wit::AudienceLabel {
                    id: a.id,
                    label: a.label,
                })
                .collect(),
            scopes: identity.scopes,
        }
    }

    fn merge(&self, older: wit::Request, newer: wit::Request) -> Option<wit::Request> {
        self.0
            .merge(&from_wit_request(older), &from_wit_request(newer))
            .map(to_wit_request)
    }

    fn recall(&self, request: wit::Request, value: String) -> wit::Request {
        to_wit_request(self.0.recall(&from_wit_request(request), &value))
    }
}

fn plan_outcome(outcome: core_types::PlanOutcome) -> wit::PlanOutcome {
    match outcome {
        core_types::PlanOutcome::Send(requests) => {
            wit::PlanOutcome::Send(requests.into_iter().map(to_wit_request).collect())
        }
        core_types::PlanOutcome::Skip(why) => wit::PlanOutcome::Skip(why),
        core_types::PlanOutcome::Invalid(e) => wit::PlanOutcome::Invalid(wit::RecordError {
            code: e.code,
            message: e.message,
            audiences: e.audiences,
            fate: match e.fate {
                core_types::RecordFate::Skipped => wit::RecordFate::Skipped,
                core_types::RecordFate::Rejected => wit::RecordFate::Rejected,
            },
        }),
    }
}

fn from_wit_request(r: wit::Request) -> core_types::Request {
    core_types::Request {
        method: match r.method {
            wit::Method::Get => core_types::Method::Get,
            wit::Method::Post => core_types::Method::Post,
            wit::Method::Put => core_types::Method::Put,
            wit::Method::Patch => core_types::Method::Patch,
        },
        path: r.path,
        headers: r.headers.into_iter().map(from_wit_header).collect(),
        body: r.body,
        key: r.key,
        audiences: r.audiences,
        purpose: match r.purpose {
            wit::Purpose::Update => core_types::Purpose::Update,
            wit::Purpose::Lookup => core_types::Purpose::Lookup,
            wit::Purpose::Create => core_types::Purpose::Create,
        },
        recall: r.recall,
        context: r.context,
    }
}

fn to_wit_request(r: core_types::Request) -> wit::Request {
    wit::Request {
        method: to_wit_method(r.method),
        path: r.path,
        headers: r.headers.into_iter().map(to_wit_header).collect(),
        body: r.body,
        key: r.key,
        audiences: r.audiences,
        purpose: match r.purpose {
            core_types::Purpose::Update => wit::Purpose::Update,
            core_types::Purpose::Lookup => wit::Purpose::Lookup,
            core_types::Purpose::Create => wit::Purpose::Create,
        },
        recall: r.recall,
        context: r.context,
    }
}

outreach_core::wit_verdict! {
    core_types::Verdict::Continue(next) => wit::Verdict::Continue(to_wit_request(*next)),
}

outreach_core::wit_conversions!();

export!(Component);
