//! Access tokens and the token endpoint's success body.
//!
//! Entra's v2 endpoint sends `expires_in` as a JSON number, the v1 endpoint sends every number as a
//! string, and other clients have seen `refresh_in` both ways, so every numeric field accepts
//! either. The expiry comes from `expires_on` when the server sent it (v1, managed identity) and
//! from the receipt time plus `expires_in` otherwise: the receipt time, not the send time, so a
//! slow answer never makes us believe a token lives longer than it does.

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Deserializer};
use std::time::Duration;

use crate::error::{ErrorClass, Reason, RefreshError};

/// A bearer token and when it stops working.
///
/// `Debug` never shows the token: it lives in a [`SecretString`].
#[derive(Clone, Debug)]
pub struct AccessToken {
    /// The bearer token itself; exposed only to sinks.
    pub secret: SecretString,
    /// Almost always `Bearer`; written to the json file for consumers that build the header.
    pub token_type: String,
    /// Unix seconds when we received the token: the start of its lifetime for scheduling.
    pub issued_on: i64,
    /// Unix seconds when the token expires.
    pub expires_on: i64,
    /// The server's hint to refresh earlier than we otherwise would (`refresh_in`).
    pub refresh_in: Option<Duration>,
}

impl AccessToken {
    /// Seconds between receipt and expiry; the base of the refresh fraction.
    pub fn lifetime(&self) -> Duration {
        Duration::from_secs(u64::try_from(self.expires_on - self.issued_on).unwrap_or(0))
    }

    /// A short, stable fingerprint for logs: never the token, but enough to tell two apart.
    pub fn fingerprint(&self) -> String {
        fingerprint(self.secret.expose_secret())
    }
}

/// FNV-1a of the token, printed as 8 hex digits. Not a security property: it only lets an operator
/// see that the token changed, and it is too short to help anyone guess the token.
pub fn fingerprint(token: &str) -> String {
    format!("{:08x}", (fnv1a(token.as_bytes()) >> 32) as u32)
}

/// 64-bit FNV-1a: stable across builds and platforms, unlike `std`'s `DefaultHasher`.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// The success body of both endpoint versions.
#[derive(Deserialize)]
struct TokenResponse {
    access_token: Option<SecretString>,
    token_type: Option<String>,
    #[serde(default, deserialize_with = "number_or_string")]
    expires_in: Option<i64>,
    #[serde(default, deserialize_with = "number_or_string")]
    expires_on: Option<i64>,
    #[serde(default, deserialize_with = "number_or_string")]
    refresh_in: Option<i64>,
}

/// Accepts `3599`, `"3599"`, `3599.0` and `null`.
fn number_or_string<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<i64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Int(i64),
        Float(f64),
        Text(String),
    }
    match Option::<Raw>::deserialize(deserializer)? {
        None => Ok(None),
        Some(Raw::Int(value)) => Ok(Some(value)),
        Some(Raw::Float(value)) if value.is_finite() => Ok(Some(value as i64)),
        Some(Raw::Float(_)) => Err(serde::de::Error::custom("number out of range")),
        Some(Raw::Text(text)) => text
            .trim()
            .parse::<i64>()
            .map(Some)
            .map_err(|_| serde::de::Error::custom(format!("expected a number, got {text:?}"))),
    }
}

/// Parses a 200 body into a token, given the Unix time the response arrived.
///
/// # Errors
/// A `bad_response` error when the body is not JSON, lacks `access_token`, or gives no usable
/// expiry. The error says which, and how long the body was, but quotes nothing of it: a 200
/// body is, or holds, a token (serde's messages quote values, so they are left out too).
pub fn parse_token_response(body: &[u8], received_at: i64) -> Result<AccessToken, RefreshError> {
    let bad = |what: &str| {
        let message = format!(
            "token endpoint answered 200 with {what} ({} bytes)",
            body.len()
        );
        RefreshError::local(ErrorClass::Transient, Reason::BadResponse, message)
    };
    let response: TokenResponse = serde_json::from_slice(body).map_err(|err| {
        bad(match err.classify() {
            serde_json::error::Category::Data => "JSON that is not a token response",
            _ => "a body that is not JSON",
        })
    })?;
    let secret = response
        .access_token
        .filter(|token| !token.expose_secret().is_empty())
        .ok_or_else(|| bad("a token response that has no access_token"))?;
    let expires_on = match (response.expires_on, response.expires_in) {
        (Some(expires_on), _) => expires_on,
        (None, Some(expires_in)) => received_at.saturating_add(expires_in),
        (None, None) => {
            return Err(bad(
                "a token response that has neither expires_in nor expires_on",
            ));
        }
    };
    if expires_on <= received_at {
        return Err(bad(&format!(
            "a token that expired {} s before it arrived (check the clock)",
            received_at - expires_on
        )));
    }
    let refresh_in = response
        .refresh_in
        .and_then(|seconds| u64::try_from(seconds).ok())
        .filter(|seconds| *seconds > 0)
        .map(Duration::from_secs);
    Ok(AccessToken {
        secret,
        token_type: response.token_type.unwrap_or_else(|| "Bearer".to_owned()),
        issued_on: received_at,
        expires_on,
        refresh_in,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_767_225_600;

    #[test]
    fn v2_numbers() {
        let body = br#"{"token_type":"Bearer","expires_in":3599,"ext_expires_in":3599,"access_token":"eyJ.a.b"}"#;
        let token = parse_token_response(body, NOW).unwrap();
        assert_eq!(token.expires_on, NOW + 3599);
        assert_eq!(token.issued_on, NOW);
        assert_eq!(token.lifetime(), Duration::from_secs(3599));
        assert_eq!(token.secret.expose_secret(), "eyJ.a.b");
        assert_eq!(token.refresh_in, None);
    }

    #[test]
    fn v1_strings_prefer_expires_on() {
        let body = format!(
            r#"{{"token_type":"Bearer","expires_in":"3599","ext_expires_in":"3599","expires_on":"{}","not_before":"{}","resource":"https://analysis.windows.net/powerbi/api","access_token":"eyJ.x.y"}}"#,
            NOW + 3000,
            NOW - 300
        );
        let token = parse_token_response(body.as_bytes(), NOW).unwrap();
        assert_eq!(token.expires_on, NOW + 3000);
        assert_eq!(token.lifetime(), Duration::from_secs(3000));
    }

    #[test]
    fn refresh_in_number_or_string() {
        for field in ["1800", "\"1800\""] {
            let body = format!(r#"{{"access_token":"t","expires_in":3600,"refresh_in":{field}}}"#);
            let token = parse_token_response(body.as_bytes(), NOW).unwrap();
            assert_eq!(token.refresh_in, Some(Duration::from_secs(1800)));
        }
    }

    #[test]
    fn bad_bodies_are_bad_response() {
        let cases: [&[u8]; 6] = [
            b"<html>proxy</html>",
            br#"{"token_type":"Bearer","expires_in":35"#,
            br#"{"expires_in":3600}"#,
            br#"{"access_token":"","expires_in":3600}"#,
            br#"{"access_token":"t"}"#,
            br#"{"access_token":"t","expires_in":"soon"}"#,
        ];
        for body in cases {
            let err = parse_token_response(body, NOW).unwrap_err();
            assert_eq!(
                err.reason,
                Reason::BadResponse,
                "{}",
                String::from_utf8_lossy(body)
            );
            assert_eq!(err.class, ErrorClass::Transient);
        }
    }

    #[test]
    fn already_expired_is_rejected() {
        let body = format!(r#"{{"access_token":"t","expires_on":"{}"}}"#, NOW - 10);
        assert!(parse_token_response(body.as_bytes(), NOW).is_err());
    }

    #[test]
    fn debug_redacts_the_token() {
        let body = br#"{"access_token":"super-secret-token","expires_in":60}"#;
        let token = parse_token_response(body, NOW).unwrap();
        assert!(!format!("{token:?}").contains("super-secret-token"));
        assert_eq!(token.fingerprint().len(), 8);
    }
}
