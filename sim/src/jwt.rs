//! The JSON Web Tokens a client presents instead of a secret (reference §3 and §4): a compact
//! JWS split and decoded, and the lifetime checks that certificate assertions (`assertion.rs`)
//! and federated tokens (`federated.rs`) share.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::Value;

use super::token_request::Rejection;

/// Clock skew tolerated on an assertion's `exp` and `nbf`. Entra's tolerance is not documented
/// (the reference says "a few minutes"); five minutes is the default of Microsoft's token
/// validation libraries.
const ASSERTION_CLOCK_SKEW_SECS: i64 = 300;

/// `exp` is required and `nbf` optional (MSAL Python omits it); both may be numbers or
/// numeric strings (MSAL.NET writes strings).
pub(super) fn check_assertion_lifetime(claims: &Value, now: i64) -> Result<(), Rejection> {
    let expires = time_claim(claims, "exp")?.ok_or_else(|| Rejection::new(50027))?;
    let not_before = time_claim(claims, "nbf")?;
    let expired = now > expires.saturating_add(ASSERTION_CLOCK_SKEW_SECS);
    let early = not_before
        .is_some_and(|not_before| now < not_before.saturating_sub(ASSERTION_CLOCK_SKEW_SECS));
    if expired || early {
        return Err(Rejection::new(700024));
    }
    Ok(())
}

/// A NumericDate claim (RFC 7519 §2) as seconds; `None` when absent.
fn time_claim(claims: &Value, name: &str) -> Result<Option<i64>, Rejection> {
    let seconds = match claims.get(name) {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Number(number)) => number.as_i64().or_else(|| {
            number
                .as_f64()
                .filter(|seconds| seconds.is_finite())
                // Saturating float-to-integer conversion; fractions of a second do not matter.
                .map(|seconds| seconds as i64)
        }),
        Some(Value::String(text)) => text.trim().parse().ok(),
        Some(_) => None,
    };
    seconds.map(Some).ok_or_else(|| Rejection::new(50027))
}

/// A compact JWS split into its parts, header and claims decoded.
pub(super) struct DecodedJwt<'a> {
    /// `base64url(header) "." base64url(claims)`, the bytes the signature covers.
    pub(super) signing_input: &'a str,
    /// A JSON object.
    pub(super) header: Value,
    /// A JSON object.
    pub(super) claims: Value,
    /// The decoded signature; checked only for certificate assertions.
    pub(super) signature: Vec<u8>,
}

impl<'a> DecodedJwt<'a> {
    /// `None` unless the token has three base64 parts, the first two JSON objects.
    pub(super) fn parse(token: &'a str) -> Option<Self> {
        let (signing_input, signature) = token.trim().rsplit_once('.')?;
        let (header, claims) = signing_input.split_once('.')?;
        let header: Value = serde_json::from_slice(&decode_base64_any(header)?).ok()?;
        let claims: Value = serde_json::from_slice(&decode_base64_any(claims)?).ok()?;
        if !header.is_object() || !claims.is_object() {
            return None;
        }
        Some(DecodedJwt {
            signing_input,
            header,
            claims,
            signature: decode_base64_any(signature)?,
        })
    }

    /// A claim that is a string.
    pub(super) fn claim_str(&self, name: &str) -> Option<&str> {
        self.claims.get(name).and_then(Value::as_str)
    }
}

/// Decodes base64url or standard base64, padded or not. A part with a `.` never decodes, so a
/// JWT with more than three parts is rejected here.
pub(super) fn decode_base64_any(text: &str) -> Option<Vec<u8>> {
    let trimmed = text.trim().trim_end_matches('=');
    if trimmed.contains(['+', '/']) {
        base64::engine::general_purpose::STANDARD_NO_PAD
            .decode(trimmed)
            .ok()
    } else {
        URL_SAFE_NO_PAD.decode(trimmed).ok()
    }
}
