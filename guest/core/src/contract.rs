//! The conversions between the core's types and a contract version's
//! bindings that are field for field in every version, written once for
//! the export layers (`guest/`, `guest/v0_2/`, `guest/v0_1/`):
//! [`wit_conversions!`] expands where `wit` (the version's exported
//! interface) and `core_types` (this crate's `types`) are in scope, and
//! [`wit_conversions_before_steps!`] adds what 0.1 and 0.2 share and 0.3
//! changed (a request without steps, a verdict without `continue`). What
//! differs otherwise (a request coming in, a plan's outcome) stays in the
//! version's export layer.

use alloc::string::String;

use crate::types::ConfigError;

/// Why a contract before 0.3 refuses `destination` (it could not carry
/// out a delivery of several steps), if it must.
pub fn steps_need_0_3(destination: &crate::Destination, version: &str) -> Option<ConfigError> {
    let config = destination.config();
    let (setting, what) = if config.matching.uses_email() {
        ("match", "matching prospects by email")
    } else if config.company.is_some() {
        ("companyMapping", "syncing companies as accounts")
    } else {
        return None;
    };
    Some(ConfigError {
        setting: String::from(setting),
        message: alloc::format!(
            "{what} takes several requests per delivery, which contract {version} cannot express: run this destination under contract 0.3 or later"
        ),
    })
}

/// Defines `to_wit_method`, `to_wit_header`, `from_wit_header` and
/// `from_wit_response`.
#[macro_export]
macro_rules! wit_conversions {
    () => {
        fn to_wit_method(m: core_types::Method) -> wit::Method {
            match m {
                core_types::Method::Get => wit::Method::Get,
                core_types::Method::Post => wit::Method::Post,
                core_types::Method::Put => wit::Method::Put,
                core_types::Method::Patch => wit::Method::Patch,
            }
        }

        fn to_wit_header(h: core_types::Header) -> wit::Header {
            wit::Header {
                name: h.name,
                value: h.value,
            }
        }

        fn from_wit_header(h: wit::Header) -> core_types::Header {
            core_types::Header {
                name: h.name,
                value: h.value,
            }
        }

        fn from_wit_response(r: wit::Response) -> core_types::Response {
            core_types::Response {
                status: r.status,
                headers: r.headers.into_iter().map(from_wit_header).collect(),
                body: r.body,
            }
        }
    };
}

/// Defines `verdict`: the verdicts every contract has, and the arm for
/// `Continue` the version gives (0.3 expresses it; earlier ones cannot).
#[macro_export]
macro_rules! wit_verdict {
    ($($continue_arm:tt)*) => {
        fn verdict(v: core_types::Verdict) -> wit::Verdict {
            match v {
                core_types::Verdict::Delivered => wit::Verdict::Delivered,
                core_types::Verdict::Retry(r) => wit::Verdict::Retry(wit::Retry {
                    not_before_ms: r.not_before_ms,
                    reason: r.reason,
                }),
                core_types::Verdict::RefreshCredentials => wit::Verdict::RefreshCredentials,
                core_types::Verdict::Rejected(r) => wit::Verdict::Rejected(wit::Rejection {
                    code: r.code,
                    message: r.message,
                    audience: r.audience,
                }),
                core_types::Verdict::Fatal(why) => wit::Verdict::Fatal(why),
                $($continue_arm)*
            }
        }
    };
}

/// Defines `verdict` and `to_wit_request` for the contracts before 0.3,
/// whose configurations take one step (see [`steps_need_0_3`]).
#[macro_export]
macro_rules! wit_conversions_before_steps {
    () => {
        $crate::wit_verdict! {
            // Refused at create for these contracts, so never planned.
            core_types::Verdict::Continue(_) => wit::Verdict::Fatal(
                "a delivery of several steps reached a contract before 0.3".into(),
            ),
        }

        fn to_wit_request(r: core_types::Request) -> wit::Request {
            wit::Request {
                method: to_wit_method(r.method),
                path: r.path,
                headers: r.headers.into_iter().map(to_wit_header).collect(),
                body: r.body,
                key: r.key,
                audiences: r.audiences,
            }
        }
    };
}
