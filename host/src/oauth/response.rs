//! The token endpoint's answer, read leniently where leniency keeps a
//! rotated refresh token: the server has already retired the old refresh
//! token when it answers, so an answer refused over a malformed
//! `expires_in` would cost the account its login. `expires_in` may be
//! anything JSON can hold; it is saturated into a sane lifetime, or read as
//! "unknown" (then the token is refreshed after the API refuses it).

use std::time::Duration;

use oauth2::basic::BasicTokenType;
use oauth2::{AccessToken, RefreshToken, Scope, TokenResponse};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

/// The longest an access token is believed to live, whatever the server
/// says (providers issue tokens of an hour or two).
pub const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(24 * 3600);

#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct IssuedTokens {
    access_token: AccessToken,
    #[serde(deserialize_with = "oauth2::helpers::deserialize_untagged_enum_case_insensitive")]
    token_type: BasicTokenType,
    #[serde(default, deserialize_with = "lifetime", skip_serializing)]
    expires_in: Option<Duration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    refresh_token: Option<RefreshToken>,
    #[serde(rename = "scope")]
    #[serde(deserialize_with = "oauth2::helpers::deserialize_space_delimited_vec")]
    #[serde(serialize_with = "oauth2::helpers::serialize_space_delimited_vec")]
    #[serde(skip_serializing_if = "Option::is_none")]
    #[serde(default)]
    scopes: Option<Vec<Scope>>,
}

/// A lifetime from seconds given as a number or a numeric string: clamped
/// to [`MAX_TOKEN_LIFETIME`]; zero, negative, fractional below one second,
/// non-numeric or absent is unknown.
fn lifetime<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Duration>, D::Error> {
    let value = Option::<Value>::deserialize(deserializer)?;
    let seconds = match &value {
        Some(Value::Number(n)) => n.as_f64(),
        Some(Value::String(s)) => s.trim().parse::<f64>().ok(),
        _ => None,
    };
    Ok(seconds
        .filter(|s| s.is_finite() && *s >= 1.0)
        .map(|s| Duration::from_secs_f64(s.min(MAX_TOKEN_LIFETIME.as_secs_f64()))))
}

impl TokenResponse for IssuedTokens {
    type TokenType = BasicTokenType;

    fn access_token(&self) -> &AccessToken {
        &self.access_token
    }
    fn token_type(&self) -> &BasicTokenType {
        &self.token_type
    }
    fn expires_in(&self) -> Option<Duration> {
        self.expires_in
    }
    fn refresh_token(&self) -> Option<&RefreshToken> {
        self.refresh_token.as_ref()
    }
    fn scopes(&self) -> Option<&Vec<Scope>> {
        self.scopes.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lifetime_of(expires_in: &str) -> Option<Duration> {
        let text = format!(
            r#"{{"access_token":"a","token_type":"bearer","refresh_token":"r","expires_in":{expires_in}}}"#
        );
        let tokens: IssuedTokens = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("expires_in {expires_in} refused: {e}"));
        assert_eq!(
            tokens.refresh_token().map(|r| r.secret().as_str()),
            Some("r")
        );
        tokens.expires_in()
    }

    #[test]
    fn any_expires_in_keeps_the_tokens_and_gives_a_sane_lifetime() {
        assert_eq!(lifetime_of("7200"), Some(Duration::from_secs(7200)));
        assert_eq!(lifetime_of("\"7200\""), Some(Duration::from_secs(7200)));
        assert_eq!(lifetime_of("7200.0"), Some(Duration::from_secs(7200)));
        for huge in ["18446744073709551615", "1e300", "99999999999999999999999"] {
            assert_eq!(lifetime_of(huge), Some(MAX_TOKEN_LIFETIME), "{huge}");
        }
        for unknown in [
            "-1",
            "-9223372036854775808",
            "0",
            "0.5",
            "null",
            "\"soon\"",
            "[]",
        ] {
            assert_eq!(lifetime_of(unknown), None, "{unknown}");
        }
    }
}
