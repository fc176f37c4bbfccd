//! What an Outreach response means for the request that caused it.

use alloc::borrow::ToOwned;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use serde_json::Value;

use crate::catalog;
use crate::config::Config;
use crate::steps;
use crate::time;
use crate::types::{
    Budget, Classification, Header, Purpose, Rejection, Request, Response, Retry, Verdict,
};

/// Values at or above this are epoch seconds, below it a delay in seconds
/// (Outreach does not document which `X-RateLimit-Reset` is; 10^9 seconds is
/// 2001-09-09, far beyond any sensible delay).
const EPOCH_SECONDS_THRESHOLD: u64 = 1_000_000_000;
/// Values at or above this are epoch milliseconds.
const EPOCH_MILLIS_THRESHOLD: u64 = 1_000_000_000_000;
/// Longest excerpt of an unparseable error body quoted in a message.
const BODY_EXCERPT_CHARS: usize = 300;

fn header<'a>(headers: &'a [Header], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case(name))
        .map(|h| h.value.trim())
}

/// A time given as epoch seconds/milliseconds, a delay in seconds, or an
/// ISO 8601 date-time, as epoch milliseconds.
fn reset_time_ms(value: &str, now_ms: u64) -> Option<u64> {
    if let Ok(n) = value.parse::<u64>() {
        return Some(if n >= EPOCH_MILLIS_THRESHOLD {
            n
        } else if n >= EPOCH_SECONDS_THRESHOLD {
            n.saturating_mul(1000)
        } else {
            now_ms.saturating_add(n.saturating_mul(1000))
        });
    }
    if let Ok(f) = value.parse::<f64>()
        && f.is_finite()
        && f >= 0.0
    {
        let n = f as u64;
        return reset_time_ms(&n.to_string(), now_ms);
    }
    time::parse_datetime_ms(value)
}

/// `Retry-After`: a delay in seconds or an HTTP date.
fn retry_after_ms(value: &str, now_ms: u64) -> Option<u64> {
    match value.parse::<u64>() {
        Ok(seconds) => Some(now_ms.saturating_add(seconds.saturating_mul(1000))),
        Err(_) => time::parse_http_date_ms(value),
    }
}

fn read_budget(headers: &[Header], now_ms: u64) -> Budget {
    Budget {
        limit: header(headers, "X-RateLimit-Limit").and_then(|v| v.parse().ok()),
        remaining: header(headers, "X-RateLimit-Remaining").and_then(|v| v.parse().ok()),
        reset_at_ms: header(headers, "X-RateLimit-Reset").and_then(|v| reset_time_ms(v, now_ms)),
    }
}

/// The time in Outreach's 429 message:
/// `… please try again at 2017-01-01T00:00:00.`
fn time_in_message(body: &str) -> Option<u64> {
    const MARKER: &str = "try again at ";
    let start = body.find(MARKER)? + MARKER.len();
    let rest = body.get(start..)?;
    let end = rest
        .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '-' | ':' | '+' | '.' | ' ')))
        .unwrap_or(rest.len());
    let mut candidate = rest.get(..end)?.trim();
    // The sentence's full stop is not part of the time.
    while let Some(shorter) = candidate.strip_suffix('.') {
        candidate = shorter;
    }
    time::parse_datetime_ms(candidate).or_else(|| {
        // "… at 2017-01-01T00:00:00 UTC." and similar trailing words.
        candidate
            .split_whitespace()
            .next()
            .and_then(time::parse_datetime_ms)
    })
}

/// One entry of a JSON:API `errors` array.
struct ApiError {
    id: Option<String>,
    title: Option<String>,
    detail: Option<String>,
    pointer: Option<String>,
}

impl ApiError {
    /// `detail`, else `title`, else `id`.
    fn text(&self) -> Option<&str> {
        self.detail
            .as_deref()
            .or(self.title.as_deref())
            .or(self.id.as_deref())
    }
}

fn api_errors(body: &str) -> Vec<ApiError> {
    let Ok(Value::Object(root)) = serde_json::from_str::<Value>(body) else {
        return Vec::new();
    };
    let Some(Value::Array(errors)) = root.get("errors") else {
        return Vec::new();
    };
    let text = |e: &serde_json::Map<String, Value>, key: &str| {
        e.get(key)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(ToString::to_string)
    };
    errors
        .iter()
        .filter_map(Value::as_object)
        .map(|e| ApiError {
            id: text(e, "id"),
            title: text(e, "title"),
            detail: text(e, "detail"),
            pointer: e
                .get("source")
                .and_then(Value::as_object)
                .and_then(|s| s.get("pointer"))
                .and_then(Value::as_str)
                .map(ToString::to_string),
        })
        .collect()
}

/// What the API said, for a message: the JSON:API error texts, or an excerpt
/// of the raw body.
fn reason(status: u16, errors: &[ApiError], body: &str) -> String {
    let texts: Vec<&str> = errors.iter().filter_map(ApiError::text).collect();
    if !texts.is_empty() {
        return texts.join("; ");
    }
    let trimmed = body.trim();
    if trimmed.is_empty() {
        return format!("HTTP {status} with an empty body");
    }
    let excerpt: String = trimmed.chars().take(BODY_EXCERPT_CHARS).collect();
    if excerpt.len() < trimmed.len() {
        format!("HTTP {status}: {excerpt}…")
    } else {
        format!("HTTP {status}: {excerpt}")
    }
}

fn rejected(code: &str, message: String, audience: Option<String>) -> Verdict {
    Verdict::Rejected(Rejection {
        code: code.to_owned(),
        message,
        audience,
    })
}

/// Classifies the response to `request`.
pub fn classify(
    config: &Config,
    request: &Request,
    response: &Response,
    now_ms: u64,
) -> Classification {
    let budget = read_budget(&response.headers, now_ms);
    let status = response.status;
    match steps::classify(request, status, &response.body) {
        Some(Ok(outcome)) => {
            return Classification {
                verdict: outcome.verdict,
                budget,
                remember: outcome.remember,
                forget: outcome.forget,
            };
        }
        Some(Err(verdict)) => return decided(verdict, budget),
        None => {}
    }
    let subject = steps::subject(request);
    let errors = || api_errors(&response.body);
    let verdict = match status {
        200..=299 => Verdict::Delivered,
        401 => Verdict::RefreshCredentials,
        403 => {
            let errors = errors();
            let id = errors
                .iter()
                .find_map(|e| e.id.as_deref())
                .unwrap_or("forbidden");
            Verdict::Fatal(format!(
                "Outreach refused access ({id}: {}); log in again and grant the {} scope",
                reason(status, &errors, &response.body),
                config.scopes().join(" and ")
            ))
        }
        404 => rejected(
            "prospect-not-found",
            format!(
                "{subject}: Outreach has no prospect with this id (identity namespace {}); {}",
                config.identity_namespace,
                reason(status, &errors(), &response.body)
            ),
            None,
        ),
        400 | 422 => validation_error(config, request, response),
        415 => rejected(
            "unsupported-media-type",
            format!(
                "{subject}: Outreach refused the request's Content-Type, a bug in the connector (please report it): {}",
                reason(status, &errors(), &response.body)
            ),
            None,
        ),
        429 => {
            let at = [
                budget.reset_at_ms,
                header(&response.headers, "Retry-After").and_then(|v| retry_after_ms(v, now_ms)),
                time_in_message(&response.body),
            ]
            .into_iter()
            .flatten()
            .max()
            .map(|t| t.max(now_ms));
            Verdict::Retry(Retry {
                not_before_ms: at,
                reason: format!(
                    "rate limited: {}",
                    reason(status, &errors(), &response.body)
                ),
            })
        }
        408 | 500..=599 => Verdict::Retry(Retry {
            not_before_ms: header(&response.headers, "Retry-After")
                .and_then(|v| retry_after_ms(v, now_ms))
                .map(|t| t.max(now_ms)),
            reason: reason(status, &errors(), &response.body),
        }),
        _ => rejected(
            "unexpected-status",
            format!(
                "{subject}: unexpected HTTP {status} from Outreach: {}",
                reason(status, &errors(), &response.body)
            ),
            None,
        ),
    };
    decided(verdict, budget)
}

fn decided(verdict: Verdict, budget: Budget) -> Classification {
    Classification {
        verdict,
        budget,
        remember: Vec::new(),
        forget: Vec::new(),
    }
}

/// 400/422: name the field, and for a custom field the audience and its
/// Mapping ID, so the user knows what to fix.
fn validation_error(config: &Config, request: &Request, response: &Response) -> Verdict {
    let errors = api_errors(&response.body);
    let mut audience = None;
    let mut parts = Vec::new();
    for error in &errors {
        let text = error.text().unwrap_or("validation error");
        let field = error
            .pointer
            .as_deref()
            .and_then(|p| p.strip_prefix("/data/attributes/"));
        let part = match field {
            Some(field) => {
                let custom = catalog::custom_field_number(field)
                    .and_then(|n| config.audience_by_mapping_id(n));
                if let Some(a) = custom {
                    audience.get_or_insert_with(|| a.id.clone());
                    format!(
                        "{} was refused in {field}: {text}; check that Mapping ID {} names an existing Outreach custom field",
                        a.describe(),
                        a.mapping_id
                    )
                } else if let Some(m) = config.attribute_by_target(field) {
                    format!("{field} (from {}) was refused: {text}", m.source.text)
                } else {
                    format!("{field} was refused: {text}")
                }
            }
            None => text.to_owned(),
        };
        parts.push(part);
    }
    let detail = if parts.is_empty() {
        reason(response.status, &errors, &response.body)
    } else {
        parts.join("; ")
    };
    let action = match request.purpose {
        Purpose::Update => "update",
        Purpose::Create => "creation",
        Purpose::Lookup => "lookup",
    };
    rejected(
        "validation-error",
        format!(
            "{}: Outreach rejected the {action}: {detail}",
            steps::subject(request)
        ),
        audience,
    )
}
