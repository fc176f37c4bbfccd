//! The conversions between the core's types and a contract version's
//! bindings that are field for field in every version, written once for
//! the export layers (`guest/`, `guest/v0_1/`): [`wit_conversions!`]
//! expands where `wit` (the version's exported interface) and `core_types`
//! (this crate's `types`) are in scope. What differs by version (a request
//! coming in, a plan's outcome) stays in the version's export layer.

/// Defines `verdict`, `to_wit_request`, `to_wit_header`,
/// `from_wit_header` and `from_wit_response`.
#[macro_export]
macro_rules! wit_conversions {
    () => {
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
            }
        }

        fn to_wit_request(r: core_types::Request) -> wit::Request {
            wit::Request {
                method: match r.method {
                    core_types::Method::Get => wit::Method::Get,
                    core_types::Method::Post => wit::Method::Post,
                    core_types::Method::Put => wit::Method::Put,
                    core_types::Method::Patch => wit::Method::Patch,
                },
                path: r.path,
                headers: r.headers.into_iter().map(to_wit_header).collect(),
                body: r.body,
                key: r.key,
                audiences: r.audiences,
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
