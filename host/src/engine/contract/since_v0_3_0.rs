//! Contract `profile-sync:destination@0.3.0` (`wit/since_v0.3.0`), the
//! latest: what 0.2 has (`identity`, `merge`, record fates, the OAuth
//! client-authentication style) and deliveries of several steps — a
//! request's purpose, recall and context, `recall`, the verdict
//! `continue`, the facts to remember and forget, and the scopes a
//! configuration needs. The rest is `shared.rs`'s.

use destination_types as types;

use super::super::GuestState;

mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit/since_v0.3.0",
        world: "profile-destination",
    });
}

use bindings::exports::profile_sync::destination::destination as wit;

super::shared::version_module!();
super::shared::since_0_2!();

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
            scopes: identity.scopes,
        })
    }

    pub fn recall(
        &self,
        store: &mut wasmtime::Store<GuestState>,
        request: &types::Request,
        value: &str,
    ) -> wasmtime::Result<types::Request> {
        let next = self.api().configured().call_recall(
            store,
            self.configured()?,
            &to_wit_request(request),
            value,
        )?;
        Ok(self::request(next))
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
        purpose: match r.purpose {
            wit::Purpose::Update => types::Purpose::Update,
            wit::Purpose::Lookup => types::Purpose::Lookup,
            wit::Purpose::Create => types::Purpose::Create,
        },
        recall: r.recall,
        context: r.context,
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
        purpose: match r.purpose {
            types::Purpose::Update => wit::Purpose::Update,
            types::Purpose::Lookup => wit::Purpose::Lookup,
            types::Purpose::Create => wit::Purpose::Create,
        },
        recall: r.recall.clone(),
        context: r.context.clone(),
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
            wit::Verdict::Continue(next) => types::Verdict::Continue(Box::new(request(next))),
        },
        budget: types::Budget {
            limit: c.budget.limit,
            remaining: c.budget.remaining,
            reset_at_ms: c.budget.reset_at_ms,
        },
        remember: c
            .remember
            .into_iter()
            .map(|f| types::Fact {
                name: f.name,
                value: f.value,
            })
            .collect(),
        forget: c.forget,
    }
}
