//! A hostile implementation of the profile-destination world, for the
//! host's containment tests. The configuration string names the attack:
//!
//! - `loop`: `plan` never returns;
//! - `alloc`: `plan` allocates without bound;
//! - `huge-result`: `plan` returns far more outcomes than records;
//! - `absolute-url URL`, `authorization-header`, `escape-path`,
//!   `delete-method`: `plan` returns requests the host must refuse to send;
//! - `path PATH`: `plan` returns PATCH requests to PATH as given;
//! - `panic`: `plan` panics (a trap);
//! - `panic-on MARKER`: `plan` panics on any batch holding a record that
//!   contains MARKER, and behaves otherwise;
//! - anything else: behaves (one harmless PATCH per record).
#![cfg_attr(target_arch = "wasm32", no_std)]

extern crate alloc;
// Allocator, cabi_realloc and panic handler for the no_std component.
extern crate component_rt;

use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;

wit_bindgen::generate!({
    path: "../../wit/since_v0.1.0",
    world: "profile-destination",
});

use exports::profile_sync::destination::destination::{self as wit, Guest, GuestConfigured};

struct Component;

pub struct Configured {
    attack: String,
    /// The attack's argument (the URL of `absolute-url`).
    argument: String,
}

impl Guest for Component {
    type Configured = Configured;

    fn describe() -> wit::Descriptor {
        wit::Descriptor {
            name: "hostile".to_string(),
            version: "0.1.0".to_string(),
            default_api_base: "http://127.0.0.1:9/api".to_string(),
            oauth: wit::OauthDescriptor {
                authorize_url: "http://127.0.0.1:9/authorize".to_string(),
                token_url: "http://127.0.0.1:9/token".to_string(),
                scopes: vec![],
                min_seconds_between_tokens: 0,
            },
            rate_limit: wit::RateLimitPolicy {
                requests: 1_000,
                window_seconds: 1,
                per: "user".to_string(),
            },
            config_schema: "{}".to_string(),
        }
    }
}

fn request(method: wit::Method, path: &str, headers: Vec<wit::Header>, key: &str) -> wit::Request {
    wit::Request {
        method,
        path: path.to_string(),
        headers,
        body: "{}".to_string(),
        key: key.to_string(),
        audiences: vec![],
    }
}

impl GuestConfigured for Configured {
    fn create(config: String) -> Result<wit::Configured, Vec<wit::ConfigError>> {
        let config = config.trim().trim_matches('"');
        let (attack, argument) = config.split_once(' ').unwrap_or((config, ""));
        Ok(wit::Configured::new(Configured {
            attack: attack.to_string(),
            argument: argument.to_string(),
        }))
    }

    fn plan(&self, records: Vec<String>) -> Vec<wit::PlanOutcome> {
        match self.attack.as_str() {
            "loop" => {
                let mut n: u64 = 0;
                loop {
                    n = core::hint::black_box(n.wrapping_add(1));
                }
            }
            "alloc" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![0xAB; 1 << 20]);
                    core::hint::black_box(&hoard);
                }
            }
            "huge-result" => (0..2_000_000)
                .map(|i| wit::PlanOutcome::Skip(alloc::format!("outcome {i} of far too many")))
                .collect(),
            "panic" => panic!("hostile panic"),
            "panic-on" if records.iter().any(|r| r.contains(self.argument.as_str())) => {
                panic!("hostile panic on a marked record")
            }
            attack => records
                .iter()
                .enumerate()
                .map(|(i, _)| {
                    let key = alloc::format!("{}", i + 1);
                    let r = match attack {
                        "absolute-url" => request(wit::Method::Patch, &self.argument, vec![], &key),
                        "authorization-header" => request(
                            wit::Method::Patch,
                            "/prospects/1",
                            vec![wit::Header {
                                name: "Authorization".to_string(),
                                value: "Bearer planted".to_string(),
                            }],
                            &key,
                        ),
                        "escape-path" => {
                            request(wit::Method::Patch, "/../oauth/token", vec![], &key)
                        }
                        "delete-method" => {
                            request(wit::Method::Delete, "/prospects/1", vec![], &key)
                        }
                        "path" => request(wit::Method::Patch, &self.argument, vec![], &key),
                        _ => request(wit::Method::Patch, "/prospects/1", vec![], &key),
                    };
                    wit::PlanOutcome::Send(vec![r])
                })
                .collect(),
        }
    }

    fn classify(
        &self,
        _request: wit::Request,
        _response: wit::Response,
        _now_ms: u64,
    ) -> wit::Classification {
        wit::Classification {
            verdict: wit::Verdict::Delivered,
            budget: wit::Budget {
                limit: None,
                remaining: None,
                reset_at_ms: None,
            },
        }
    }
}

export!(Component);
