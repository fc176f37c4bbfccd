//! The Outreach destination as a component implementing the frozen
//! contract `profile-sync:destination@0.2.0`, for hosts that run only 0.2.
//! Contract 0.2 delivers a record in one request, so a configuration that
//! matches prospects by email (several steps) is refused at `create`.
#![cfg_attr(target_arch = "wasm32", no_std)]

extern crate alloc;
// Allocator, cabi_realloc and panic handler for the no_std component.
extern crate component_rt;

use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use outreach_core::types as core_types;

wit_bindgen::generate!({
    path: "../../wit/since_v0.2.0",
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
            Ok(d) => match outreach_core::contract::steps_need_0_3(&d, "0.2.0") {
                Some(refusal) => Err(vec![config_error(refusal)]),
                None => Ok(wit::Configured::new(Configured(d))),
            },
            Err(errors) => Err(errors.into_iter().map(config_error).collect()),
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
        }
    }

    fn merge(&self, older: wit::Request, newer: wit::Request) -> Option<wit::Request> {
        self.0
            .merge(&from_wit_request(older), &from_wit_request(newer))
            .map(to_wit_request)
    }
}

fn config_error(e: core_types::ConfigError) -> wit::ConfigError {
    wit::ConfigError {
        setting: e.setting,
        message: e.message,
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
        purpose: core_types::Purpose::Update,
        recall: None,
        context: String::new(),
    }
}

outreach_core::wit_conversions!();
outreach_core::wit_conversions_before_steps!();

export!(Component);
