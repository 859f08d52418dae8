//! The access probe: one cheap authenticated call (by default `GET /v1.0/myorg/groups?$top=1`)
//! with the tenant's current token, classified the way an operator acts on it.
//!
//! | answer | reason | what it means |
//! |---|---|---|
//! | 200 | (ok) | Power BI accepts the token |
//! | 401 (`PowerBINotAuthorizedException`), 403 other than `TokenExpired` | `not_authorized` | the tenant's Power BI settings refuse the service principal |
//! | 403 `TokenExpired` | `token_expired` | the token we hold has expired by Power BI's clock: skew, or a bug of ours |
//! | 404 | `not_found` | the path or `powerbi_api` is wrong |
//! | 429 | `throttled` | Power BI asks us to slow down; its `Retry-After` is honoured |
//! | 5xx | `server_error` | Power BI is failing |
//! | no answer | `network` | connect, TLS, timeout |
//! | anything else | `unexpected` | an answer the probe does not know |

use std::time::{Duration, SystemTime};

use secrecy::ExposeSecret;
use serde::Deserialize;

use crate::client::{ApiAnswer, TokenClient};
use crate::config::ProbeConfig;
use crate::error;
use crate::token::AccessToken;

/// Why a probe failed; the label of the probe failure counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProbeReason {
    /// Power BI refuses the service principal (401, or 403 other than an expired token).
    NotAuthorized,
    /// Power BI says the token has expired.
    TokenExpired,
    /// 404: the path or API root is wrong.
    NotFound,
    /// 429.
    Throttled,
    /// 5xx.
    ServerError,
    /// No answer: connect, TLS, timeout, a body cut short.
    Network,
    /// Any other status, or a 200 that is not what was asked for.
    Unexpected,
    /// Embed tokens only: a sink could not be written.
    Sink,
}

impl ProbeReason {
    /// Every reason, for counters that show zeros too.
    pub const ALL: [ProbeReason; 8] = [
        ProbeReason::NotAuthorized,
        ProbeReason::TokenExpired,
        ProbeReason::NotFound,
        ProbeReason::Throttled,
        ProbeReason::ServerError,
        ProbeReason::Network,
        ProbeReason::Unexpected,
        ProbeReason::Sink,
    ];

    /// Label value.
    pub fn as_str(self) -> &'static str {
        match self {
            ProbeReason::NotAuthorized => "not_authorized",
            ProbeReason::TokenExpired => "token_expired",
            ProbeReason::NotFound => "not_found",
            ProbeReason::Throttled => "throttled",
            ProbeReason::ServerError => "server_error",
            ProbeReason::Network => "network",
            ProbeReason::Unexpected => "unexpected",
            ProbeReason::Sink => "sink",
        }
    }

    /// Position in [`ProbeReason::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// What an operator should do about it, for the log and `/status`.
    pub fn advice(self) -> &'static str {
        match self {
            ProbeReason::NotAuthorized => {
                "Power BI refuses this service principal: in the customer's Fabric admin portal, Tenant settings > Developer settings, \"Service principals can use Fabric APIs\" must be on for the organisation or for a security group that contains the service principal, and the service principal must be a Member or Admin of the workspaces it uses"
            }
            ProbeReason::TokenExpired => {
                "Power BI says the token has expired although the daemon holds it as fresh: check this host's clock (NTP); if the clock is right, this is a bug in the daemon"
            }
            ProbeReason::NotFound => {
                "the probe's URL does not exist: check powerbi_api and probe.path"
            }
            ProbeReason::Throttled => "Power BI throttles the probe; it waits as told",
            ProbeReason::ServerError => "Power BI is failing; nothing to do on this side",
            ProbeReason::Network => "Power BI could not be reached",
            ProbeReason::Unexpected => "Power BI answered in a way the daemon does not know",
            ProbeReason::Sink => "the embed token could not be written; see the error",
        }
    }
}

/// A failed probe, as `/status` shows it. Holds no token: Power BI's text is sanitised.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct ProbeFailure {
    /// Why.
    pub reason: ProbeReason,
    /// The HTTP status, when there was an answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// Power BI's error code (`PowerBINotAuthorizedException`, `TokenExpired`, …).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// Power BI's `RequestId`: what Microsoft support asks for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// What happened, sanitised.
    pub message: String,
    /// How long Power BI asked us to wait (429).
    #[serde(skip)]
    pub retry_after: Option<Duration>,
}

/// The longest error code kept: Power BI's are short identifiers.
const MAX_CODE: usize = 96;

/// Power BI's error envelope: `{"error":{"code":…,"message":…,"pbi.error":{"code":…}}}`.
#[derive(Deserialize)]
struct Envelope {
    error: Option<ErrorBody>,
}

#[derive(Deserialize)]
struct ErrorBody {
    code: Option<String>,
    message: Option<String>,
    #[serde(rename = "pbi.error")]
    pbi_error: Option<PbiError>,
}

#[derive(Deserialize)]
struct PbiError {
    code: Option<String>,
}

/// Classifies an answer: `Ok` for 200 (any 2xx), else why not. Pure, so every row of the table
/// above is unit tested.
pub fn classify(answer: &ApiAnswer, secrets: &[&str]) -> Result<(), ProbeFailure> {
    if (200..300).contains(&answer.status) {
        return Ok(());
    }
    let envelope = serde_json::from_slice::<Envelope>(&answer.body)
        .ok()
        .and_then(|envelope| envelope.error);
    let code = envelope
        .as_ref()
        .and_then(|error| {
            error
                .code
                .clone()
                .or_else(|| error.pbi_error.as_ref().and_then(|pbi| pbi.code.clone()))
        })
        .or_else(|| answer.error_info.clone())
        .map(|code| error::sanitise(&code, secrets))
        .filter(|code| !code.is_empty() && code.chars().count() <= MAX_CODE);
    let reason = match answer.status {
        403 if code.as_deref() == Some("TokenExpired") => ProbeReason::TokenExpired,
        401 | 403 => ProbeReason::NotAuthorized,
        404 => ProbeReason::NotFound,
        429 => ProbeReason::Throttled,
        500..=599 => ProbeReason::ServerError,
        _ => ProbeReason::Unexpected,
    };
    let text = envelope
        .and_then(|error| error.message)
        .map(|message| error::sanitise(&message, secrets))
        .filter(|message| !message.is_empty());
    let message = match text {
        Some(text) => format!("HTTP {}: {text}", answer.status),
        None => format!("HTTP {}", answer.status),
    };
    Err(ProbeFailure {
        reason,
        status: Some(answer.status),
        code,
        request_id: answer.request_id.clone(),
        message,
        retry_after: answer.retry_after.map(|after| after.get()),
    })
}

/// Probes once with `token` and returns the outcome and how long it took.
pub async fn run(
    client: &TokenClient,
    api_root: &str,
    probe: &ProbeConfig,
    token: &AccessToken,
) -> (Result<(), ProbeFailure>, Duration) {
    let url = format!("{api_root}{}", probe.path);
    let started = std::time::Instant::now();
    let answer = client.api_get(&url, token).await;
    let took = started.elapsed();
    let outcome = match answer {
        Ok(answer) => classify(&answer, &[token.secret.expose_secret()]),
        Err(err) => Err(ProbeFailure {
            reason: ProbeReason::Network,
            status: None,
            code: None,
            request_id: None,
            message: error::sanitise(&err.message, &[token.secret.expose_secret()]),
            retry_after: None,
        }),
    };
    (outcome, took)
}

/// When to probe next after `outcome` at `now`: after the interval, or later if Power BI asked
/// to wait longer.
pub fn next_probe(
    now: SystemTime,
    interval: Duration,
    outcome: &Result<(), ProbeFailure>,
) -> SystemTime {
    let asked = match outcome {
        Err(failure) => failure.retry_after.unwrap_or(Duration::ZERO),
        Ok(()) => Duration::ZERO,
    };
    crate::schedule::later(now, interval.max(asked))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::RetryAfter;

    fn answer(status: u16, body: &str) -> ApiAnswer {
        ApiAnswer {
            status,
            request_id: Some("6f1b9d8e-0000-4000-8000-000000000001".to_owned()),
            error_info: None,
            retry_after: None,
            www_authenticate: None,
            body: body.as_bytes().to_vec(),
        }
    }

    const NOT_AUTHORIZED: &str = r#"{"error":{"code":"PowerBINotAuthorizedException","pbi.error":{"code":"PowerBINotAuthorizedException","parameters":{},"details":[],"exceptionCulprit":1}}}"#;

    #[test]
    fn every_answer_of_the_table_gets_its_reason() {
        assert_eq!(classify(&answer(200, r#"{"value":[]}"#), &[]), Ok(()));
        let cases = [
            (401, NOT_AUTHORIZED, ProbeReason::NotAuthorized),
            (401, "", ProbeReason::NotAuthorized),
            (
                403,
                r#"{"error":{"code":"TokenExpired","message":"Access token has expired, resubmit with a new access token"}}"#,
                ProbeReason::TokenExpired,
            ),
            (
                403,
                r#"{"error":{"code":"Forbidden"}}"#,
                ProbeReason::NotAuthorized,
            ),
            (404, "", ProbeReason::NotFound),
            (429, "", ProbeReason::Throttled),
            (500, "<html>oops</html>", ProbeReason::ServerError),
            (503, "", ProbeReason::ServerError),
            (400, "{}", ProbeReason::Unexpected),
            (302, "", ProbeReason::Unexpected),
        ];
        for (status, body, reason) in cases {
            let failure = classify(&answer(status, body), &[]).expect_err("a failure");
            assert_eq!(failure.reason, reason, "HTTP {status} {body}");
            assert_eq!(failure.status, Some(status));
            assert_eq!(
                failure.request_id.as_deref(),
                Some("6f1b9d8e-0000-4000-8000-000000000001")
            );
        }
        let failure = classify(&answer(401, NOT_AUTHORIZED), &[]).expect_err("denied");
        assert_eq!(
            failure.code.as_deref(),
            Some("PowerBINotAuthorizedException")
        );
    }

    #[test]
    fn an_echoed_token_never_reaches_the_message() {
        let token = "eyJ0eXAiOiJKV1QifQ.eyJhdWQiOiJ4In0.c2lnbmF0dXJlc2lnbmF0dXJl";
        let body = format!(r#"{{"error":{{"code":"{token}","message":"bad token {token}"}}}}"#);
        let failure = classify(&answer(401, &body), &[token]).expect_err("denied");
        let shown = format!("{failure:?}");
        assert!(!shown.contains(token), "{shown}");
    }

    #[test]
    fn retry_after_is_honoured_and_the_interval_is_the_floor() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let interval = Duration::from_secs(60);
        assert_eq!(next_probe(now, interval, &Ok(())), now + interval);
        let mut throttled = answer(429, "");
        throttled.retry_after = Some(RetryAfter::capped(Duration::from_secs(600)));
        let failure = classify(&throttled, &[]);
        assert_eq!(
            next_probe(now, interval, &failure),
            now + Duration::from_secs(600)
        );
        throttled.retry_after = Some(RetryAfter::capped(Duration::from_secs(5)));
        let failure = classify(&throttled, &[]);
        assert_eq!(next_probe(now, interval, &failure), now + interval);
    }
}
