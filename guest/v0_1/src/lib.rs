//! The Outreach destination as a component implementing the frozen
//! contract `profile-sync:destination@0.1.0`, for hosts that only run 0.1.
//! Contract 0.1 has no `merge` (such hosts do not coalesce), no record
//! fate (hosts infer it) and no configuration identity.
#![cfg_attr(target_arch = "wasm32", no_std)]

extern crate alloc;
// Allocator, cabi_realloc and panic handler for the no_std component.
extern crate component_rt;

use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use outreach_core::types as core_types;

wit_bindgen::generate!({
    path: "../../wit/since_v0.1.0",
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
            Ok(d) => match outreach_core::contract::steps_need_0_3(&d, "0.1.0") {
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
        let Some(request) = from_wit_request(request) else {
            // Only requests this configuration planned come back, and it
            // never plans a DELETE.
            return wit::Classification {
                verdict: wit::Verdict::Fatal(
                    "the host classified a DELETE request this destination never planned".into(),
                ),
                budget: wit::Budget {
                    limit: None,
                    remaining: None,
                    reset_at_ms: None,
                },
            };
        };
        let c = self
            .0
            .classify(&request, &from_wit_response(response), now_ms);
        wit::Classification {
            verdict: verdict(c.verdict),
            budget: wit::Budget {
                limit: c.budget.limit,
                remaining: c.budget.remaining,
                reset_at_ms: c.budget.reset_at_ms,
            },
        }
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
        }),
    }
}

/// `None` for a DELETE, which contract 0.2 (and so the core) cannot express.
fn from_wit_request(r: wit::Request) -> Option<core_types::Request> {
    Some(core_types::Request {
        method: match r.method {
            wit::Method::Get => core_types::Method::Get,
            wit::Method::Post => core_types::Method::Post,
            wit::Method::Put => core_types::Method::Put,
            wit::Method::Patch => core_types::Method::Patch,
            wit::Method::Delete => return None,
        },
        path: r.path,
        headers: r.headers.into_iter().map(from_wit_header).collect(),
        body: r.body,
        key: r.key,
        audiences: r.audiences,
        purpose: core_types::Purpose::Update,
        recall: None,
        context: String::new(),
    })
}

outreach_core::wit_conversions!();
outreach_core::wit_conversions_before_steps!();

export!(Component);
