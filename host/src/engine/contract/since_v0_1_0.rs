//! Contract `profile-sync:destination@0.1.0` (`wit/since_v0.1.0`): its
//! bindings and the conversions into the latest types. What 0.1 lacks is
//! filled in the way hosts for 0.1 did it:
//!
//! - no `merge`: a 0.1 destination's updates are never coalesced;
//! - no record fate: an error code starting `identity-` (no usable id)
//!   means skipped, any other rejected;
//! - no configuration identity: the top-level `name` and `account` strings
//!   of the configuration JSON, and no audience labels (ids are shown);
//! - no OAuth client-authentication style: the form body;
//! - a `delete` request, which 0.2 cannot express, makes its record a
//!   `refused-by-host` record error.

use destination_types as types;

use super::super::GuestState;

mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit/since_v0.1.0",
        world: "profile-destination",
    });
}

use bindings::exports::profile_sync::destination::destination as wit;

super::shared::version_module!();
super::shared::one_step!();

/// 0.1 has no client-authentication style: the form body.
fn client_authentication(_: &wit::OauthDescriptor) -> types::ClientAuthentication {
    types::ClientAuthentication::RequestBody
}

/// The identity of a configuration the component accepted, read from its
/// top-level `name` and `account` strings.
pub fn identity(config_json: &str) -> types::ConfigurationIdentity {
    let value: serde_json::Value = serde_json::from_str(config_json).unwrap_or_default();
    let text = |field: &str| value.get(field).and_then(|v| v.as_str()).map(str::to_owned);
    types::ConfigurationIdentity {
        name: text("name").unwrap_or_default(),
        account: text("account"),
        // 0.1 does not say how to show audiences: the host shows their ids.
        audiences: Vec::new(),
        scopes: Vec::new(),
    }
}

/// `None` for `delete`, which the latest contract cannot express.
fn method(m: wit::Method) -> Option<types::Method> {
    Some(match m {
        wit::Method::Get => types::Method::Get,
        wit::Method::Post => types::Method::Post,
        wit::Method::Put => types::Method::Put,
        wit::Method::Patch => types::Method::Patch,
        wit::Method::Delete => return None,
    })
}

/// The request, or the path of a `delete` (which 0.2 cannot express).
fn request(r: wit::Request) -> Result<types::Request, String> {
    let Some(method) = method(r.method) else {
        return Err(r.path);
    };
    Ok(types::Request {
        method,
        path: r.path,
        headers: r.headers.into_iter().map(header).collect(),
        body: r.body,
        key: r.key,
        audiences: r.audiences,
        purpose: types::Purpose::Update,
        recall: None,
        context: String::new(),
    })
}

fn plan_outcome(o: wit::PlanOutcome) -> types::PlanOutcome {
    match o {
        wit::PlanOutcome::Send(requests) => {
            let audiences = requests
                .iter()
                .flat_map(|r| r.audiences.iter().cloned())
                .fold(Vec::new(), |mut all, a| {
                    if !all.contains(&a) {
                        all.push(a);
                    }
                    all
                });
            match requests.into_iter().map(request).collect() {
                Ok(requests) => types::PlanOutcome::Send(requests),
                Err(refused_path) => types::PlanOutcome::Invalid(types::RecordError {
                    code: "refused-by-host".into(),
                    message: format!(
                        "the host refused to send the request: the method Delete is not allowed (DELETE {})",
                        refused_path
                    ),
                    audiences,
                    fate: types::RecordFate::Rejected,
                }),
            }
        }
        wit::PlanOutcome::Skip(why) => types::PlanOutcome::Skip(why),
        wit::PlanOutcome::Invalid(e) => types::PlanOutcome::Invalid(types::RecordError {
            fate: if e.code.starts_with("identity-") {
                types::RecordFate::Skipped
            } else {
                types::RecordFate::Rejected
            },
            code: e.code,
            message: e.message,
            audiences: e.audiences,
        }),
    }
}
