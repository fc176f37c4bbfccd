//! The reference host for profile-destination components: it loads a
//! component under wasmtime and supplies every side effect the component
//! itself may not perform. One module per capability.

pub mod alerts;
pub mod delivery;
pub mod egress;
pub mod engine;
pub mod guest;
pub mod http;
pub mod input;
pub mod journal;
pub mod limiter;
pub mod oauth;
pub mod queue;
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

/// The same destination built against contract 0.1.0 (`guest/v0_1/`).
pub const BUILT_COMPONENT_V0_1: &str = env!("OUTREACH_COMPONENT_V0_1_PATH");

/// `YYYY-MM-DD<separator>HH:MM:SS`, UTC, for a time in epoch seconds.
pub fn format_utc(epoch_secs: u64, separator: char) -> String {
    let (days, rem) = (epoch_secs / 86_400, epoch_secs % 86_400);
    // Civil date from days since the epoch (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}{separator}{:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}
