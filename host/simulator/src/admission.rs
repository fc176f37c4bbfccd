//! Admission of an API request: its bearer token, and its user's rate
//! window (the limit, the window's kind, the `X-RateLimit-*` headers and
//! Outreach's 429 text). Every authenticated request is recorded for the
//! tests, with its user, time and agent.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;

use crate::{
    Sent, Shared, SimulatorConfig, Store, epoch_seconds_ceil, epoch_seconds_floor, iso_utc,
    one_error, with_thousands,
};

/// How a user's requests are counted against the limit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RateWindowKind {
    /// A window starts with the first request after the previous one
    /// ended, and counts the requests it admits (a 429 does not count).
    #[default]
    FromFirstRequest,
    /// Windows start at fixed boundaries (multiples of the window's length
    /// since the Unix epoch, so an hour-long window is a clock hour), and
    /// every authenticated request counts: those answered 5xx, and those
    /// refused with a 429 too.
    Fixed,
}

/// How the moment a window turns is written as whole epoch seconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ResetRounding {
    /// The first whole second at or after the turn: a client that waits
    /// for it never comes early.
    #[default]
    Up,
    /// The whole second the turn falls in, as some servers write it: up to
    /// a second before the window really turns.
    Down,
}

impl ResetRounding {
    fn seconds(self, at: SystemTime) -> u64 {
        match self {
            Self::Up => epoch_seconds_ceil(at),
            Self::Down => epoch_seconds_floor(at),
        }
    }
}

impl SimulatorConfig {
    /// The time on the server's clock.
    pub(crate) fn server_now(&self) -> SystemTime {
        let now = SystemTime::now();
        let offset = Duration::from_millis(self.clock_offset_ms.unsigned_abs());
        if self.clock_offset_ms >= 0 {
            now + offset
        } else {
            now.checked_sub(offset).unwrap_or(UNIX_EPOCH)
        }
    }
}

pub(crate) struct RateWindow {
    pub(crate) started: SystemTime,
    pub(crate) used: u32,
}

/// The fixed window `now` falls in: its start.
fn fixed_window_start(now: SystemTime, length: Duration) -> SystemTime {
    let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let length_ns = length.as_nanos().max(1);
    let start_ns = since.as_nanos() / length_ns * length_ns;
    UNIX_EPOCH + Duration::from_nanos(u64::try_from(start_ns).unwrap_or(u64::MAX))
}

/// The rate-limit headers for `user`'s current window.
pub(crate) struct Quota {
    limit: u32,
    remaining: u32,
    /// The reset as written: whole epoch seconds.
    reset: u64,
}

impl Quota {
    pub(crate) fn apply(&self, response: &mut Response) {
        let headers = response.headers_mut();
        headers.insert("X-RateLimit-Limit", HeaderValue::from(self.limit));
        headers.insert("X-RateLimit-Remaining", HeaderValue::from(self.remaining));
        headers.insert("X-RateLimit-Reset", HeaderValue::from(self.reset));
    }
}

/// Authenticates and counts the request against its user's window.
/// `Err` is the response to send instead (401 or 429).
#[allow(clippy::result_large_err)] // the error is the response, sent at once
pub(crate) fn admit(shared: &Shared, headers: &HeaderMap) -> Result<Quota, Response> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let mut store = shared.store();
    store.stats.requests += 1;
    let issued = token.and_then(|t| store.tokens.get(t));
    let real_now = SystemTime::now();
    let user = match issued.filter(|i| i.expires.is_none_or(|at| at > real_now)) {
        Some(issued) => issued.user.clone(),
        None => {
            store.stats.unauthorized += 1;
            return Err(one_error(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "Unauthorized",
                "The access token is missing, expired or invalid.",
                None,
            ));
        }
    };
    let agent = headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let (limit, length) = (shared.config.rate_limit, shared.config.rate_window);
    // Windows turn on the server's clock, which may not be the real one.
    let now = shared.config.server_now();
    let fixed = shared.config.rate_window_kind == RateWindowKind::Fixed;
    let started = if fixed {
        fixed_window_start(now, length)
    } else {
        now
    };
    let Store {
        windows,
        past_windows,
        stats,
        sent,
        ..
    } = &mut *store;
    let window = windows
        .entry(user.clone())
        .or_insert(RateWindow { started, used: 0 });
    let ended = if fixed {
        window.started != started
    } else {
        now.duration_since(window.started).unwrap_or_default() >= length
    };
    if ended {
        past_windows.push((user.clone(), window.started, window.used));
        *window = RateWindow { started, used: 0 };
    }
    let reset = shared
        .config
        .reset_rounding
        .seconds(window.started + length);
    sent.push(Sent {
        user: user.clone(),
        at: real_now,
        agent,
        rate_limited: window.used >= limit,
    });
    if window.used >= limit {
        if fixed {
            window.used = window.used.saturating_add(1);
        }
        stats.rate_limited += 1;
        let quota = Quota {
            limit,
            remaining: 0,
            reset,
        };
        let mut response = one_error(
            StatusCode::TOO_MANY_REQUESTS,
            "rateLimitExceeded",
            "Rate Limit Exceeded",
            format!(
                "You have exceeded your permitted rate limit of {}; please try again at {}.",
                with_thousands(limit),
                iso_utc(reset)
            ),
            None,
        );
        quota.apply(&mut response);
        return Err(response);
    }
    window.used += 1;
    Ok(Quota {
        limit,
        remaining: limit - window.used,
        reset,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_windows_start_at_multiples_of_their_length() {
        let at = |s: u64, ms: u64| UNIX_EPOCH + Duration::from_secs(s) + Duration::from_millis(ms);
        let minute = Duration::from_secs(60);
        assert_eq!(fixed_window_start(at(120, 0), minute), at(120, 0));
        assert_eq!(fixed_window_start(at(179, 999), minute), at(120, 0));
        assert_eq!(fixed_window_start(at(180, 1), minute), at(180, 0));
        let hour = Duration::from_secs(3_600);
        assert_eq!(fixed_window_start(at(7_300, 5), hour), at(7_200, 0));
    }
}
