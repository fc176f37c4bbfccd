//! The reference host for profile-destination components: it loads a
//! component under wasmtime and supplies every side effect the component
//! itself may not perform. One module per capability.

pub mod delivery;
pub mod engine;
pub mod http;
pub mod limiter;
pub mod oauth;
pub mod simulator;

/// The Outreach component built from this workspace's `guest/` by
/// `host/build.rs`.
pub const BUILT_COMPONENT: &str = env!("OUTREACH_COMPONENT_PATH");
