//! The reference host for profile-destination components: it loads a
//! component under wasmtime and supplies every side effect the component
//! itself may not perform. One module per capability.

pub mod account;
pub mod alerts;
pub mod atomic_file;
pub mod clock;
pub mod cluster;
pub mod delivery;
pub mod egress;
pub mod engine;
pub mod guest;
pub mod http;
pub mod input;
pub mod intake;
pub mod journal;
pub mod limiter;
pub mod oauth;
pub mod queue;
pub mod read_model;
pub mod service;
#[cfg(test)]
mod test_support;

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

/// The destination component built from this workspace's `guest/` by
/// `host/build.rs`.
pub const BUILT_COMPONENT: &str = env!("OUTREACH_COMPONENT_PATH");

/// The same destination built against contract 0.1.0 (`guest/v0_1/`).
pub const BUILT_COMPONENT_V0_1: &str = env!("OUTREACH_COMPONENT_V0_1_PATH");
/// The same destination built against contract 0.2.0 (`guest/v0_2/`).
pub const BUILT_COMPONENT_V0_2: &str = env!("OUTREACH_COMPONENT_V0_2_PATH");

/// `YYYY-MM-DD<separator>HH:MM:SS`, UTC, for a time in epoch seconds.
pub fn format_utc(epoch_secs: u64, separator: char) -> String {
    let time = chrono::DateTime::from_timestamp(i64::try_from(epoch_secs).unwrap_or(i64::MAX), 0)
        .unwrap_or_default();
    format!(
        "{}{separator}{}",
        time.format("%Y-%m-%d"),
        time.format("%H:%M:%S")
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn utc_times_read_as_written() {
        assert_eq!(super::format_utc(0, ' '), "1970-01-01 00:00:00");
        assert_eq!(super::format_utc(1_795_000_000, 'T'), "2026-11-18T11:06:40");
        assert_eq!(super::format_utc(951_782_400, ' '), "2000-02-29 00:00:00");
    }
}
