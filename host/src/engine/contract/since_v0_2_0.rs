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
super::shared::since_0_2!();
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
            audiences: audience_labels(identity.audiences),
            scopes: Vec::new(),
        })
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
