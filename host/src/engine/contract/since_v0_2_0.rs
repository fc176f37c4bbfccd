//! Contract `profile-sync:destination@0.2.0` (`wit/since_v0.2.0`), the
//! latest: its bindings and the conversions between them and the host's
//! types (`destination-types`, which mirror this version field for field).

use destination_types as types;
use wasmtime::Store;
use wasmtime::component::{InstancePre, ResourceAny};

use super::super::GuestState;

mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit/since_v0.2.0",
        world: "profile-destination",
    });
}

use bindings::exports::profile_sync::destination::destination as wit;
use bindings::{ProfileDestination, ProfileDestinationPre};

pub struct Pre(ProfileDestinationPre<GuestState>);

impl Pre {
    pub fn new(pre: InstancePre<GuestState>) -> wasmtime::Result<Self> {
        Ok(Self(ProfileDestinationPre::new(pre)?))
    }

    pub fn engine(&self) -> &wasmtime::Engine {
        self.0.engine()
    }

    pub fn instantiate(&self, store: &mut Store<GuestState>) -> wasmtime::Result<Instance> {
        Ok(Instance {
            bindings: self.0.instantiate(store)?,
            configured: None,
        })
    }
}

/// An instance and, once created, its configured resource.
pub struct Instance {
    bindings: ProfileDestination,
    configured: Option<ResourceAny>,
}

impl Instance {
    fn api(&self) -> &wit::Guest {
        self.bindings.profile_sync_destination_destination()
    }

    fn configured(&self) -> wasmtime::Result<ResourceAny> {
        self.configured
            .ok_or_else(|| wasmtime::format_err!("the instance holds no configuration"))
    }

    pub fn describe(&self, store: &mut Store<GuestState>) -> wasmtime::Result<types::Descriptor> {
        Ok(descriptor(self.api().call_describe(store)?))
    }

    pub fn create(
        &mut self,
        store: &mut Store<GuestState>,
        config_json: &str,
    ) -> wasmtime::Result<Result<(), Vec<types::ConfigError>>> {
        match self.api().configured().call_create(store, config_json)? {
            Ok(resource) => {
                self.configured = Some(resource);
                Ok(Ok(()))
            }
            Err(errors) => Ok(Err(errors.into_iter().map(config_error).collect())),
        }
    }

    pub fn plan(
        &self,
        store: &mut Store<GuestState>,
        records: &[String],
    ) -> wasmtime::Result<Vec<types::PlanOutcome>> {
        let outcomes = self
            .api()
            .configured()
            .call_plan(store, self.configured()?, records)?;
        Ok(outcomes.into_iter().map(plan_outcome).collect())
    }

    pub fn classify(
        &self,
        store: &mut Store<GuestState>,
        request: &types::Request,
        response: &types::Response,
        now_ms: u64,
    ) -> wasmtime::Result<types::Classification> {
        let classification = self.api().configured().call_classify(
            store,
            self.configured()?,
            &to_wit_request(request),
            &to_wit_response(response),
            now_ms,
        )?;
        Ok(classification_from(classification))
    }

    pub fn identity(
        &self,
        store: &mut Store<GuestState>,
    ) -> wasmtime::Result<types::ConfigurationIdentity> {
        let identity = self
            .api()
            .configured()
            .call_identity(store, self.configured()?)?;
        Ok(types::ConfigurationIdentity {
            name: identity.name,
            account: identity.account,
            audiences: identity
                .audiences
                .into_iter()
                .map(|a| types::AudienceLabel {
                    id: a.id,
                    label: a.label,
                })
                .collect(),
        })
    }

    pub fn merge(
        &self,
        store: &mut Store<GuestState>,
        older: &types::Request,
        newer: &types::Request,
    ) -> wasmtime::Result<Option<types::Request>> {
        let merged = self.api().configured().call_merge(
            store,
            self.configured()?,
            &to_wit_request(older),
            &to_wit_request(newer),
        )?;
        Ok(merged.map(request))
    }
}

fn descriptor(d: wit::Descriptor) -> types::Descriptor {
    types::Descriptor {
        name: d.name,
        version: d.version,
        default_api_base: d.default_api_base,
        oauth: types::OauthDescriptor {
            authorize_url: d.oauth.authorize_url,
            token_url: d.oauth.token_url,
            scopes: d.oauth.scopes,
            min_seconds_between_tokens: d.oauth.min_seconds_between_tokens,
            client_authentication: match d.oauth.client_authentication {
                wit::ClientAuthentication::RequestBody => types::ClientAuthentication::RequestBody,
                wit::ClientAuthentication::Basic => types::ClientAuthentication::Basic,
            },
        },
        rate_limit: types::RateLimitPolicy {
            requests: d.rate_limit.requests,
            window_seconds: d.rate_limit.window_seconds,
            per: d.rate_limit.per,
        },
        config_schema: d.config_schema,
    }
}

fn config_error(e: wit::ConfigError) -> types::ConfigError {
    types::ConfigError {
        setting: e.setting,
        message: e.message,
    }
}

fn method(m: wit::Method) -> types::Method {
    match m {
        wit::Method::Get => types::Method::Get,
        wit::Method::Post => types::Method::Post,
        wit::Method::Put => types::Method::Put,
        wit::Method::Patch => types::Method::Patch,
    }
}

fn to_wit_method(m: types::Method) -> wit::Method {
    match m {
        types::Method::Get => wit::Method::Get,
        types::Method::Post => wit::Method::Post,
        types::Method::Put => wit::Method::Put,
        types::Method::Patch => wit::Method::Patch,
    }
}

fn header(h: wit::Header) -> types::Header {
    types::Header {
        name: h.name,
        value: h.value,
    }
}

fn to_wit_headers(headers: &[types::Header]) -> Vec<wit::Header> {
    headers
        .iter()
        .map(|h| wit::Header {
            name: h.name.clone(),
            value: h.value.clone(),
        })
        .collect()
}

fn request(r: wit::Request) -> types::Request {
    types::Request {
        method: method(r.method),
        path: r.path,
        headers: r.headers.into_iter().map(header).collect(),
        body: r.body,
        key: r.key,
        audiences: r.audiences,
    }
}

fn to_wit_request(r: &types::Request) -> wit::Request {
    wit::Request {
        method: to_wit_method(r.method),
        path: r.path.clone(),
        headers: to_wit_headers(&r.headers),
        body: r.body.clone(),
        key: r.key.clone(),
        audiences: r.audiences.clone(),
    }
}

fn to_wit_response(r: &types::Response) -> wit::Response {
    wit::Response {
        status: r.status,
        headers: to_wit_headers(&r.headers),
        body: r.body.clone(),
    }
}

fn plan_outcome(o: wit::PlanOutcome) -> types::PlanOutcome {
    match o {
        wit::PlanOutcome::Send(requests) => {
            types::PlanOutcome::Send(requests.into_iter().map(request).collect())
        }
        wit::PlanOutcome::Skip(why) => types::PlanOutcome::Skip(why),
        wit::PlanOutcome::Invalid(e) => types::PlanOutcome::Invalid(types::RecordError {
            code: e.code,
            message: e.message,
            audiences: e.audiences,
            fate: match e.fate {
                wit::RecordFate::Skipped => types::RecordFate::Skipped,
                wit::RecordFate::Rejected => types::RecordFate::Rejected,
            },
        }),
    }
}

fn classification_from(c: wit::Classification) -> types::Classification {
    types::Classification {
        verdict: match c.verdict {
            wit::Verdict::Delivered => types::Verdict::Delivered,
            wit::Verdict::Retry(r) => types::Verdict::Retry(types::Retry {
                not_before_ms: r.not_before_ms,
                reason: r.reason,
            }),
            wit::Verdict::RefreshCredentials => types::Verdict::RefreshCredentials,
            wit::Verdict::Rejected(r) => types::Verdict::Rejected(types::Rejection {
                code: r.code,
                message: r.message,
                audience: r.audience,
            }),
            wit::Verdict::Fatal(why) => types::Verdict::Fatal(why),
        },
        budget: types::Budget {
            limit: c.budget.limit,
            remaining: c.budget.remaining,
            reset_at_ms: c.budget.reset_at_ms,
        },
    }
}
