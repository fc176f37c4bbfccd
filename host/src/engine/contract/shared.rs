//! What every contract version's module has in common, written once: the
//! pre-instantiated component, the instance holding its configured
//! resource, the calls whose shape no version changed (`describe`,
//! `create`, `plan`, `classify`) and the field-for-field conversions of the
//! types no version changed. A version module keeps only what differs in
//! it.
//!
//! [`version_module!`] expands in a module that has in scope `bindings`
//! (its `bindgen!` output), `wit` (the exported interface), `types`
//! (`destination_types`) and `GuestState`, and that defines:
//! `fn client_authentication(&wit::OauthDescriptor) -> types::ClientAuthentication`,
//! `fn plan_outcome(wit::PlanOutcome) -> types::PlanOutcome`,
//! `fn to_wit_request(&types::Request) -> wit::Request` and
//! `fn classification_from(wit::Classification) -> types::Classification`;
//! for the contracts before 0.3, whose deliveries take one request,
//! [`one_step!`] defines the last two.

macro_rules! version_module {
    () => {
        pub struct Pre(bindings::ProfileDestinationPre<GuestState>);

        impl Pre {
            pub fn new(
                pre: wasmtime::component::InstancePre<GuestState>,
            ) -> wasmtime::Result<Self> {
                Ok(Self(bindings::ProfileDestinationPre::new(pre)?))
            }

            pub fn engine(&self) -> &wasmtime::Engine {
                self.0.engine()
            }

            pub fn instantiate(
                &self,
                store: &mut wasmtime::Store<GuestState>,
            ) -> wasmtime::Result<Instance> {
                Ok(Instance {
                    bindings: self.0.instantiate(store)?,
                    configured: None,
                })
            }
        }

        /// An instance and, once created, its configured resource.
        pub struct Instance {
            bindings: bindings::ProfileDestination,
            configured: Option<wasmtime::component::ResourceAny>,
        }

        impl Instance {
            fn api(&self) -> &wit::Guest {
                self.bindings.profile_sync_destination_destination()
            }

            fn configured(&self) -> wasmtime::Result<wasmtime::component::ResourceAny> {
                self.configured
                    .ok_or_else(|| wasmtime::format_err!("the instance holds no configuration"))
            }

            pub fn describe(
                &self,
                store: &mut wasmtime::Store<GuestState>,
            ) -> wasmtime::Result<types::Descriptor> {
                Ok(descriptor(self.api().call_describe(store)?))
            }

            pub fn create(
                &mut self,
                store: &mut wasmtime::Store<GuestState>,
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
                store: &mut wasmtime::Store<GuestState>,
                records: &[String],
            ) -> wasmtime::Result<Vec<types::PlanOutcome>> {
                let outcomes =
                    self.api()
                        .configured()
                        .call_plan(store, self.configured()?, records)?;
                Ok(outcomes.into_iter().map(plan_outcome).collect())
            }

            pub fn classify(
                &self,
                store: &mut wasmtime::Store<GuestState>,
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
        }

        fn descriptor(d: wit::Descriptor) -> types::Descriptor {
            types::Descriptor {
                name: d.name,
                version: d.version,
                default_api_base: d.default_api_base,
                oauth: types::OauthDescriptor {
                    client_authentication: client_authentication(&d.oauth),
                    authorize_url: d.oauth.authorize_url,
                    token_url: d.oauth.token_url,
                    scopes: d.oauth.scopes,
                    min_seconds_between_tokens: d.oauth.min_seconds_between_tokens,
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

        fn to_wit_response(r: &types::Response) -> wit::Response {
            wit::Response {
                status: r.status,
                headers: to_wit_headers(&r.headers),
                body: r.body.clone(),
            }
        }
    };
}

/// `to_wit_request` and `classification_from` for the contracts before
/// 0.3: a request without purpose, recall or context, and a verdict
/// without `continue` and nothing to remember.
macro_rules! one_step {
    () => {
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
                remember: Vec::new(),
                forget: Vec::new(),
            }
        }
    };
}

/// What 0.2 and later share beyond [`version_module!`]: `merge`, the
/// client-authentication style, record fates, and how a configuration's
/// audiences are labelled. Expands where `request` (a request coming in)
/// is defined.
macro_rules! since_0_2 {
    () => {
        impl Instance {
            pub fn merge(
                &self,
                store: &mut wasmtime::Store<GuestState>,
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

        fn audience_labels(labels: Vec<wit::AudienceLabel>) -> Vec<types::AudienceLabel> {
            labels
                .into_iter()
                .map(|a| types::AudienceLabel {
                    id: a.id,
                    label: a.label,
                })
                .collect()
        }

        fn client_authentication(oauth: &wit::OauthDescriptor) -> types::ClientAuthentication {
            match oauth.client_authentication {
                wit::ClientAuthentication::RequestBody => types::ClientAuthentication::RequestBody,
                wit::ClientAuthentication::Basic => types::ClientAuthentication::Basic,
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
    };
}

pub(super) use {one_step, since_0_2, version_module};
