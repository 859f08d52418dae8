//! Access tokens and the token endpoint's success body, and the bounded types every number from
//! the network becomes before any arithmetic.
//!
//! Entra's v2 endpoint sends `expires_in` as a JSON number, the v1 endpoint sends every number as a
//! string, and other clients have seen `refresh_in` both ways, so every numeric field accepts
//! either. The expiry comes from `expires_on` when the server sent it (v1, managed identity) and
//! from the receipt time plus `expires_in` otherwise: the receipt time, not the send time, so a
//! slow answer never makes us believe a token lives longer than it does.
//!
//! # Limits
//!
//! A server is trusted with the token, not with our arithmetic. A number that arrives from the
//! network (or from a token file written earlier) is turned into one of the types below, whose
//! ranges are the constants of this module, before anything adds, multiplies or formats it:
//!
//! * [`AccessToken::new`] validates the expiry: at least [`MIN_TOKEN_LIFETIME`] after arrival
//!   and at most [`MAX_EXPIRY_HORIZON`] (else `bad_response`), and keeps a [`TokenLifetime`]
//!   clamped to [`MAX_SCHEDULED_LIFETIME`] for scheduling, and a `refresh_in` no longer than it.
//! * [`RetryAfter`] is capped at [`MAX_RETRY_AFTER`].
//!
//! With those bounds every instant the daemon computes lies within about a year of now, so
//! adding never overflows and RFC 3339 (four-digit years) can always print it.

pub mod document;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Deserializer};
use std::fmt;
use std::time::{Duration, SystemTime};

use crate::clock;

/// The shortest token accepted: its `expires_on` must be at least one whole second after the
/// second it arrived in, or it is `bad_response`.
///
/// Real Entra tokens live 60–90 minutes (managed identity about 24 hours, never under 10
/// minutes with configurable lifetimes), so any floor up to minutes would do for production; the
/// floor is one second because tests and the simulator use tokens of a few seconds, and because
/// a token with less than a second to live is dead by the time a consumer reads it. Short tokens
/// that pass are not a storm risk: [`crate::schedule::MIN_ATTEMPT_INTERVAL`] spaces the attempts.
pub const MIN_TOKEN_LIFETIME: Duration = Duration::from_secs(1);

/// The longest lifetime the schedule believes: 24 hours (managed identity tokens) plus 5
/// minutes of clock skew. A longer claim is not rejected (CAE-capable tokens may live up to 28
/// hours, a generic OAuth2 server may issue week-long tokens) and its `expires_on` is written as
/// the server said, but the refresh point is computed from this bound, so a wrong claim costs an
/// early refresh rather than a day-long gap.
pub const MAX_SCHEDULED_LIFETIME: Duration = Duration::from_secs(24 * 3600 + 5 * 60);

/// The furthest expiry accepted, counted from arrival: 366 days. Nothing issues bearer tokens
/// for longer; a claim beyond it (`"expires_in": 1000000000000` is some 31,700 years away) is
/// a broken or hostile server, so the token is refused as `bad_response` rather than written to
/// a file that consumers and the next warm start would trust.
pub const MAX_EXPIRY_HORIZON: Duration = Duration::from_secs(366 * 24 * 3600);

/// The longest `Retry-After` obeyed: one hour, as MSAL.NET and MSAL Python cap it (3600 s). A
/// longer value (a year, `u64::MAX` seconds, an HTTP date in 9999) is treated as one hour: a
/// throttled tenant retries hourly instead of never.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// How long the schedule believes a token lives: from its arrival to its expiry, at most
/// [`MAX_SCHEDULED_LIFETIME`]. The only way to build one is [`TokenLifetime::for_scheduling`],
/// so a refresh-point computation can never be handed an unbounded duration.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct TokenLifetime(Duration);

impl TokenLifetime {
    /// The claimed lifetime, clamped to [`MAX_SCHEDULED_LIFETIME`].
    pub(crate) fn for_scheduling(claimed: Duration) -> Self {
        TokenLifetime(claimed.min(MAX_SCHEDULED_LIFETIME))
    }

    /// The bounded duration.
    pub fn get(self) -> Duration {
        self.0
    }
}

/// The server's `Retry-After`, at most [`MAX_RETRY_AFTER`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct RetryAfter(Duration);

impl RetryAfter {
    /// The requested delay, capped at [`MAX_RETRY_AFTER`].
    pub fn capped(requested: Duration) -> Self {
        RetryAfter(requested.min(MAX_RETRY_AFTER))
    }

    /// The bounded delay.
    pub fn get(self) -> Duration {
        self.0
    }
}

/// The expiry as the server (or a token file) stated it, still unchecked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClaimedExpiry {
    /// `expires_on`: Unix seconds.
    At(i64),
    /// `expires_in`: seconds after arrival.
    In(i64),
}

/// Why a claimed expiry is not believable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExpiryProblem {
    /// The token expires less than [`MIN_TOKEN_LIFETIME`] after it arrived (or before).
    TooShort {
        /// Whole seconds from the second of arrival to the claimed expiry (≤ 0: already past).
        seconds: i64,
    },
    /// The token claims to live beyond [`MAX_EXPIRY_HORIZON`].
    BeyondHorizon,
}

impl fmt::Display for ExpiryProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExpiryProblem::TooShort { seconds } if *seconds <= 0 => write!(
                f,
                "the token expired {} s before it arrived (check the clock)",
                seconds.unsigned_abs()
            ),
            ExpiryProblem::TooShort { .. } => write!(
                f,
                "the token expires less than {} s after it arrived",
                MIN_TOKEN_LIFETIME.as_secs()
            ),
            ExpiryProblem::BeyondHorizon => write!(
                f,
                "the token claims to expire more than {} days after it arrived",
                MAX_EXPIRY_HORIZON.as_secs() / 86_400
            ),
        }
    }
}

/// A bearer token and when it stops working.
///
/// `Debug` never shows the token: it lives in a [`SecretString`]. Every time in it is bounded
/// (see [`AccessToken::new`]), which is why the fields are read-only from outside.
#[derive(Clone, Debug)]
pub struct AccessToken {
    /// The bearer token itself; exposed only to sinks.
    pub secret: SecretString,
    /// Almost always `Bearer`; written to the json file for consumers that build the header.
    pub token_type: String,
    /// Unix seconds (whole) when we received the token, as token files record it.
    issued_on: i64,
    /// Unix seconds when the token expires; within [`MAX_EXPIRY_HORIZON`] of `issued_on`.
    expires_on: i64,
    /// When the token arrived, to the nanosecond: the start of its lifetime for scheduling.
    /// Whole seconds would put the refresh point of a one-second token in the past on arrival.
    received_at: SystemTime,
    /// From arrival to expiry, clamped for scheduling.
    lifetime: TokenLifetime,
    /// The server's hint to refresh earlier than we otherwise would (`refresh_in`), never
    /// longer than `lifetime`.
    refresh_in: Option<Duration>,
}

impl AccessToken {
    /// A token received at `received_at` with the server's (or a file's) claimed expiry and
    /// `refresh_in`, validated and bounded: the one place raw times become domain values.
    ///
    /// A `refresh_in` that is not positive is ignored; one longer than the lifetime is the
    /// lifetime (a hint to refresh *after* expiry means nothing).
    ///
    /// # Errors
    /// The expiry is less than [`MIN_TOKEN_LIFETIME`] or more than [`MAX_EXPIRY_HORIZON`] after
    /// arrival.
    pub fn new(
        secret: SecretString,
        token_type: String,
        received_at: SystemTime,
        expiry: ClaimedExpiry,
        refresh_in: Option<i64>,
    ) -> Result<AccessToken, ExpiryProblem> {
        let issued_on = clock::unix_seconds(received_at);
        let horizon = duration_secs_i64(MAX_EXPIRY_HORIZON);
        let expires_on = match expiry {
            ClaimedExpiry::At(at) => at,
            ClaimedExpiry::In(seconds) if seconds > horizon => {
                return Err(ExpiryProblem::BeyondHorizon);
            }
            // `seconds` ≤ the horizon and `issued_on` is a real clock reading: no overflow;
            // saturating all the same, since a clock reading is still outside input.
            ClaimedExpiry::In(seconds) => issued_on.saturating_add(seconds),
        };
        let whole_seconds = expires_on.saturating_sub(issued_on);
        if whole_seconds < duration_secs_i64(MIN_TOKEN_LIFETIME) {
            return Err(ExpiryProblem::TooShort {
                seconds: whole_seconds,
            });
        }
        if whole_seconds > horizon {
            return Err(ExpiryProblem::BeyondHorizon);
        }
        let claimed = match expiry {
            // Checked above: 1 ≤ seconds ≤ the horizon.
            ClaimedExpiry::In(seconds) => Duration::from_secs(seconds.unsigned_abs()),
            // After the second of arrival, so after arrival itself; ZERO only if the clock
            // cannot represent it, which the horizon check rules out.
            ClaimedExpiry::At(_) => clock::unix_to_system(expires_on)
                .duration_since(received_at)
                .unwrap_or(Duration::ZERO),
        };
        let lifetime = TokenLifetime::for_scheduling(claimed);
        let refresh_in = refresh_in
            .filter(|seconds| *seconds > 0)
            .map(|seconds| Duration::from_secs(seconds.unsigned_abs()).min(lifetime.get()));
        Ok(AccessToken {
            secret,
            token_type,
            issued_on,
            expires_on,
            received_at,
            lifetime,
            refresh_in,
        })
    }

    /// Unix seconds (whole) when the token arrived.
    pub fn issued_on(&self) -> i64 {
        self.issued_on
    }

    /// Unix seconds when the token expires (within [`MAX_EXPIRY_HORIZON`] of its arrival).
    pub fn expires_on(&self) -> i64 {
        self.expires_on
    }

    /// When the token arrived, to the nanosecond.
    pub fn received_at(&self) -> SystemTime {
        self.received_at
    }

    /// Arrival to expiry, at most [`MAX_SCHEDULED_LIFETIME`]: the base of the refresh fraction.
    pub fn lifetime(&self) -> TokenLifetime {
        self.lifetime
    }

    /// The server's `refresh_in`, at most the lifetime.
    pub fn refresh_in(&self) -> Option<Duration> {
        self.refresh_in
    }

    /// A short, stable fingerprint for logs: never the token, but enough to tell two apart.
    pub(crate) fn fingerprint(&self) -> String {
        fingerprint(self.secret.expose_secret())
    }
}

/// FNV-1a of the token, printed as 8 hex digits. Not a security property: it only lets an operator
/// see that the token changed, and it is too short to help anyone guess the token.
pub(crate) fn fingerprint(token: &str) -> String {
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

/// The success body of both endpoint versions. `ext_expires_in` (the extended lifetime for
/// outages) is deliberately not read: the daemon never relies on it, so a hostile value there
/// cannot matter.
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

/// Accepts `3599`, `"3599"`, `3599.0` and `null`. A whole number outside `i64` (in either form)
/// saturates: it is certainly out of bounds, and [`AccessToken::new`] says so with a better
/// message than "invalid number". A fraction is truncated.
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
        // `as` saturates at the i64 bounds; NaN and infinities are not JSON, but refuse them
        // anyway rather than guess.
        Some(Raw::Float(value)) if value.is_finite() => Ok(Some(value as i64)),
        Some(Raw::Float(_)) => Err(serde::de::Error::custom("number out of range")),
        Some(Raw::Text(text)) => saturating_integer(&text)
            .map(Some)
            .ok_or_else(|| serde::de::Error::custom(format!("expected a number, got {text:?}"))),
    }
}

/// `"3599"`, `" -5 "`; digits beyond `i64` saturate to its bounds. `None` for anything else.
fn saturating_integer(text: &str) -> Option<i64> {
    let text = text.trim();
    if let Ok(value) = text.parse::<i64>() {
        return Some(value);
    }
    let (negative, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(if negative { i64::MIN } else { i64::MAX })
}

/// Parses a 200 body into a token, given the instant the response arrived.
///
/// # Errors
/// [`BadTokenResponse`] when the body is not JSON, lacks `access_token`, or gives no believable
/// expiry (see [`AccessToken::new`]).
pub fn parse_token_response(
    body: &[u8],
    received_at: SystemTime,
) -> Result<AccessToken, BadTokenResponse> {
    let bad = |what: &str| BadTokenResponse {
        message: format!(
            "token endpoint answered 200 with {what} ({} bytes)",
            body.len()
        ),
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
    let expiry = match (response.expires_on, response.expires_in) {
        (Some(expires_on), _) => ClaimedExpiry::At(expires_on),
        (None, Some(expires_in)) => ClaimedExpiry::In(expires_in),
        (None, None) => {
            return Err(bad(
                "a token response that has neither expires_in nor expires_on",
            ));
        }
    };
    AccessToken::new(
        secret,
        response.token_type.unwrap_or_else(|| "Bearer".to_owned()),
        received_at,
        expiry,
        response.refresh_in,
    )
    .map_err(|problem| bad(&format!("a token that was refused: {problem}")))
}

/// A 200 answer that holds no usable token. The message says what was wrong and how long the
/// body was, but quotes nothing of it: a 200 body is, or holds, a token (serde's messages quote
/// values, so they are left out too). The refresh classifies it as a transient `bad_response`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct BadTokenResponse {
    /// What was wrong, in words.
    pub message: String,
}

/// A constant duration as whole seconds in `i64`; every constant here is far below `i64::MAX`.
fn duration_secs_i64(duration: Duration) -> i64 {
    i64::try_from(duration.as_secs()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::unix_to_system;
    use crate::error::{ErrorClass, Reason, RefreshError};

    const NOW: i64 = 1_767_225_600;

    fn now() -> SystemTime {
        unix_to_system(NOW)
    }

    /// As the refresh sees it: a classified error.
    fn parse(body: &str) -> Result<AccessToken, RefreshError> {
        parse_token_response(body.as_bytes(), now()).map_err(RefreshError::from)
    }

    #[test]
    fn v2_numbers() {
        let body = br#"{"token_type":"Bearer","expires_in":3599,"ext_expires_in":3599,"access_token":"eyJ.a.b"}"#;
        let token = parse_token_response(body, now()).unwrap();
        assert_eq!(token.expires_on(), NOW + 3599);
        assert_eq!(token.issued_on(), NOW);
        assert_eq!(token.received_at(), now());
        assert_eq!(token.lifetime().get(), Duration::from_secs(3599));
        assert_eq!(token.secret.expose_secret(), "eyJ.a.b");
        assert_eq!(token.refresh_in(), None);
    }

    #[test]
    fn v1_strings_prefer_expires_on() {
        let body = format!(
            r#"{{"token_type":"Bearer","expires_in":"3599","ext_expires_in":"3599","expires_on":"{}","not_before":"{}","resource":"https://analysis.windows.net/powerbi/api","access_token":"eyJ.x.y"}}"#,
            NOW + 3000,
            NOW - 300
        );
        let token = parse(&body).unwrap();
        assert_eq!(token.expires_on(), NOW + 3000);
        assert_eq!(token.lifetime().get(), Duration::from_secs(3000));
    }

    #[test]
    fn refresh_in_number_or_string() {
        for field in ["1800", "\"1800\""] {
            let body = format!(r#"{{"access_token":"t","expires_in":3600,"refresh_in":{field}}}"#);
            let token = parse(&body).unwrap();
            assert_eq!(token.refresh_in(), Some(Duration::from_secs(1800)));
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
            let err = RefreshError::from(parse_token_response(body, now()).unwrap_err());
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
        let err = parse(&body).unwrap_err();
        assert!(
            err.message.contains("expired 10 s before"),
            "{}",
            err.message
        );
    }

    #[test]
    fn debug_redacts_the_token() {
        let body = br#"{"access_token":"super-secret-token","expires_in":60}"#;
        let token = parse_token_response(body, now()).unwrap();
        assert!(!format!("{token:?}").contains("super-secret-token"));
        assert_eq!(token.fingerprint().len(), 8);
    }

    #[test]
    fn hardening_absurd_expiries_are_bad_response_and_never_panic() {
        let cases = [
            // Some 31,700 years, as a v2 number and a v1 string.
            r#"{"access_token":"t","expires_in":1000000000000}"#.to_owned(),
            r#"{"access_token":"t","expires_in":"1000000000000"}"#.to_owned(),
            format!(r#"{{"access_token":"t","expires_in":{}}}"#, i64::MAX),
            format!(r#"{{"access_token":"t","expires_in":{}}}"#, u64::MAX),
            r#"{"access_token":"t","expires_in":1e300}"#.to_owned(),
            r#"{"access_token":"t","expires_in":"99999999999999999999999"}"#.to_owned(),
            format!(r#"{{"access_token":"t","expires_on":"{}"}}"#, i64::MAX),
            format!(
                r#"{{"access_token":"t","expires_on":{}}}"#,
                NOW + 400 * 86_400
            ),
            // One second past the horizon.
            format!(
                r#"{{"access_token":"t","expires_in":{}}}"#,
                MAX_EXPIRY_HORIZON.as_secs() + 1
            ),
            // Negative and zero lifetimes, and the earliest instants there are.
            format!(r#"{{"access_token":"t","expires_in":{}}}"#, i64::MIN),
            format!(r#"{{"access_token":"t","expires_on":{}}}"#, i64::MIN),
            r#"{"access_token":"t","expires_in":-1e300}"#.to_owned(),
            r#"{"access_token":"t","expires_in":0}"#.to_owned(),
            format!(r#"{{"access_token":"t","expires_on":{NOW}}}"#),
        ];
        for body in &cases {
            let err = parse(body).unwrap_err();
            assert_eq!(err.reason, Reason::BadResponse, "{body}");
            assert!(err.message.contains("refused"), "{body}: {}", err.message);
        }
        // The edge of the horizon is still a token (its schedule is clamped, below).
        let body = format!(
            r#"{{"access_token":"t","expires_in":{}}}"#,
            MAX_EXPIRY_HORIZON.as_secs()
        );
        assert!(parse(&body).is_ok());
    }

    #[test]
    fn long_claims_are_kept_but_scheduled_as_at_most_a_day() {
        let two_days = 2 * 86_400;
        let body = format!(r#"{{"access_token":"t","expires_in":{two_days}}}"#);
        let token = parse(&body).unwrap();
        assert_eq!(token.expires_on(), NOW + two_days);
        assert_eq!(token.lifetime().get(), MAX_SCHEDULED_LIFETIME);
        // Managed identity's 24 hours pass unchanged.
        let body = r#"{"access_token":"t","expires_in":"86399"}"#;
        assert_eq!(
            parse(body).unwrap().lifetime().get(),
            Duration::from_secs(86_399)
        );
    }

    #[test]
    fn hardening_huge_refresh_in_is_bounded_by_the_lifetime() {
        for field in [
            i64::MAX.to_string(),
            u64::MAX.to_string(),
            "\"99999999999999999999\"".to_owned(),
            "1e300".to_owned(),
        ] {
            let body = format!(r#"{{"access_token":"t","expires_in":3600,"refresh_in":{field}}}"#);
            let token = parse(&body).unwrap();
            assert_eq!(
                token.refresh_in(),
                Some(Duration::from_secs(3600)),
                "{field}"
            );
        }
        for field in [
            "0",
            "-5",
            &i64::MIN.to_string(),
            "\"-99999999999999999999\"",
        ] {
            let body = format!(r#"{{"access_token":"t","expires_in":3600,"refresh_in":{field}}}"#);
            assert_eq!(parse(&body).unwrap().refresh_in(), None, "{field}");
        }
    }

    #[test]
    fn sub_second_arrival_is_kept_for_scheduling() {
        let arrival = now() + Duration::from_millis(900);
        // v1: `expires_on` one whole second after the second of arrival: 100 ms left.
        let body = format!(r#"{{"access_token":"t","expires_on":"{}"}}"#, NOW + 1);
        let token = parse_token_response(body.as_bytes(), arrival).unwrap();
        assert_eq!(token.issued_on(), NOW);
        assert_eq!(token.received_at(), arrival);
        assert_eq!(token.lifetime().get(), Duration::from_millis(100));
        // v2: `expires_in` counts from the arrival itself.
        let body = r#"{"access_token":"t","expires_in":1}"#;
        let token = parse_token_response(body.as_bytes(), arrival).unwrap();
        assert_eq!(token.expires_on(), NOW + 1);
        assert_eq!(token.lifetime().get(), MIN_TOKEN_LIFETIME);
    }

    #[test]
    fn access_token_new_bounds_files_too() {
        let secret = || SecretString::from("t");
        let token = AccessToken::new(
            secret(),
            "Bearer".into(),
            now(),
            ClaimedExpiry::At(NOW + 3600),
            None,
        )
        .unwrap();
        assert_eq!(token.lifetime().get(), Duration::from_secs(3600));
        for expiry in [
            ClaimedExpiry::At(NOW + 1_000_000_000_000),
            ClaimedExpiry::At(i64::MAX),
            ClaimedExpiry::In(i64::MAX),
        ] {
            let err = AccessToken::new(secret(), "Bearer".into(), now(), expiry, None).unwrap_err();
            assert_eq!(err, ExpiryProblem::BeyondHorizon, "{expiry:?}");
        }
        for expiry in [ClaimedExpiry::At(i64::MIN), ClaimedExpiry::In(i64::MIN)] {
            let err = AccessToken::new(secret(), "Bearer".into(), now(), expiry, None).unwrap_err();
            assert!(matches!(err, ExpiryProblem::TooShort { .. }), "{expiry:?}");
            assert!(err.to_string().contains("before it arrived"), "{err}");
        }
        // A receipt time at the end of representable time cannot overflow either.
        let end = unix_to_system(i64::MAX);
        for expiry in [ClaimedExpiry::In(3600), ClaimedExpiry::At(i64::MAX)] {
            let _ = AccessToken::new(secret(), "Bearer".into(), end, expiry, Some(i64::MAX));
        }
    }

    #[test]
    fn saturating_integers() {
        assert_eq!(saturating_integer(" 3599 "), Some(3599));
        assert_eq!(saturating_integer("-5"), Some(-5));
        assert_eq!(saturating_integer("+7"), Some(7));
        assert_eq!(saturating_integer("99999999999999999999"), Some(i64::MAX));
        assert_eq!(saturating_integer("-99999999999999999999"), Some(i64::MIN));
        for text in ["", "-", "1e12", "12s", "3.5", "0x10", " "] {
            assert_eq!(saturating_integer(text), None, "{text:?}");
        }
    }

    #[test]
    fn bounded_types_clamp() {
        assert_eq!(
            TokenLifetime::for_scheduling(Duration::MAX).get(),
            MAX_SCHEDULED_LIFETIME
        );
        assert_eq!(
            TokenLifetime::for_scheduling(Duration::from_secs(5)).get(),
            Duration::from_secs(5)
        );
        assert_eq!(RetryAfter::capped(Duration::MAX).get(), MAX_RETRY_AFTER);
        assert_eq!(
            RetryAfter::capped(Duration::from_secs(60)).get(),
            Duration::from_secs(60)
        );
    }
}
