//! The wall clock, in one place: what time the host says it is when it
//! stamps a journal row, tells a component the time, or judges a token's
//! expiry.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch (0 before it).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Whole seconds since the Unix epoch.
pub fn now_secs() -> u64 {
    now_ms() / 1000
}
