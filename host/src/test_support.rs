//! What the crate's unit tests share.

use destination_types::{Method, Request};

/// A `PATCH` of item `key` with `body`, as a destination might plan it.
pub(crate) fn patch(key: &str, body: &str) -> Request {
    Request {
        method: Method::Patch,
        path: format!("/items/{key}"),
        headers: Vec::new(),
        body: body.into(),
        key: key.into(),
        audiences: Vec::new(),
        purpose: Default::default(),
        recall: None,
        context: String::new(),
    }
}

/// The configuration schema of the component built from this workspace.
pub(crate) fn component_schema() -> String {
    outreach_core::describe().config_schema
}
