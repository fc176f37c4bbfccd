//! The reference host for profile-destination components: it loads a
//! component under wasmtime and supplies every side effect the component
//! itself may not perform. One module per capability.

pub mod alerts;
pub mod delivery;
pub mod engine;
pub mod http;
pub mod journal;
pub mod limiter;
pub mod oauth;
pub mod simulator;

/// A per-user file or directory: `$override_var` if set, else
/// `$xdg_var/outreach-host/<name>`, else `~/<home_fallback>/outreach-host/<name>`.
pub(crate) fn user_path(
    override_var: &str,
    xdg_var: &str,
    home_fallback: &str,
    name: &str,
) -> Option<std::path::PathBuf> {
    use std::path::PathBuf;
    if let Some(path) = std::env::var_os(override_var) {
        return Some(PathBuf::from(path));
    }
    let base = std::env::var_os(xdg_var)
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(home_fallback)))?;
    let dir = base.join("outreach-host");
    Some(if name.is_empty() { dir } else { dir.join(name) })
}

/// The Outreach component built from this workspace's `guest/` by
/// `host/build.rs`.
pub const BUILT_COMPONENT: &str = env!("OUTREACH_COMPONENT_PATH");
