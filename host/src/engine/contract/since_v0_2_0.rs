//! Contract `profile-sync:destination@0.2.0` (`wit/since_v0.2.0`): its
//! bindings and what it has that others lack (`identity`,
//! `merge`, record fates, the OAuth client-authentication style); the rest
//! is `shared.rs`'s.

use destination_types as types;

use super::super::GuestState;

mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit/since_v0.2.0",
        world: "profile-destination",
    });
}

use bindings::exports::profile_sync::destination::destination as wit;

super::shared::version_module!();
super::shared::one_step!();

impl Instance {
    pub fn identity(
        &self,
        store: &mut wasmtime::Store<GuestState>,
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
            scopes: Vec::new(),
        })
    }

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

fn request(r: wit::Request) -> types::Request {
    types::Request {
        method: method(r.method),
        path: r.path,
        headers: r.headers.into_iter().map(header).collect(),
        body: r.body,
        key: r.key,
        audiences: r.audiences,
        purpose: types::Purpose::Update,
        recall: None,
        context: String::new(),
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
