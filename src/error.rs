//! Why a refresh failed, in the words an operator acts on.
//!
//! Entra answers failures with an HTTP status and an OAuth `error` field, and adds AADSTS numbers,
//! a trace ID and a correlation ID for diagnosis. Microsoft asks clients to branch on the status
//! and the `error` field, not on the numbers (which change), so [`classify`] does exactly that; the
//! only AADSTS numbers it looks at are the ones Microsoft itself names "retryable" or "throttling".
//! Everything else about the body is kept for the log line and `/status`.

use std::fmt;

use crate::token::RetryAfter;

/// What the daemon does next, decided by the kind of failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorClass {
    /// Network trouble, timeouts, 5xx, `temporarily_unavailable`: retry soon with backoff.
    Transient,
    /// HTTP 429 or a throttling code: retry with backoff, never sooner than `Retry-After`.
    Throttled,
    /// The configuration is wrong (bad secret, app not in tenant, tenant not found…): retrying
    /// quickly cannot help, so retry slowly until someone fixes it.
    Permanent,
    /// The token was obtained but could not be written; retried with backoff.
    Sink,
}

impl ErrorClass {
    /// The label used in logs, `/status` and `once` output.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::Transient => "transient",
            ErrorClass::Throttled => "throttled",
            ErrorClass::Permanent => "permanent",
            ErrorClass::Sink => "sink",
        }
    }
}

impl fmt::Display for ErrorClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A fixed, documented set of failure reasons: small enough to be a metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    /// `invalid_client`: wrong or expired secret, bad assertion.
    InvalidClient,
    /// `unauthorized_client`: the app is not provisioned or consented in the tenant (AADSTS700016).
    UnauthorizedClient,
    /// The tenant does not exist in this cloud, or its identifier is malformed (AADSTS90002, 900023).
    TenantNotFound,
    /// `invalid_resource`: the Power BI service principal is missing in the tenant (AADSTS500011).
    InvalidResource,
    /// `invalid_scope`: the scope is malformed.
    InvalidScope,
    /// `invalid_request`, `invalid_grant`, `unsupported_grant_type` and other 4xx answers.
    InvalidRequest,
    /// HTTP 429 or a throttling code.
    Throttled,
    /// 5xx, `temporarily_unavailable`, or a code Microsoft lists as retryable.
    ServerError,
    /// Connect or total timeout, or HTTP 408.
    Timeout,
    /// Connection refused, DNS, TLS and other transport failures.
    Network,
    /// A body that is not the JSON Entra sends: a proxy's HTML page, a truncated or oversized body.
    BadResponse,
    /// Writing the token to a sink failed.
    Sink,
    /// The credential could not be read locally (missing env var, unreadable secret file).
    Credential,
}

impl Reason {
    /// Every reason, in label order; used to document and pre-register metric series.
    pub const ALL: [Reason; 13] = [
        Reason::InvalidClient,
        Reason::UnauthorizedClient,
        Reason::TenantNotFound,
        Reason::InvalidResource,
        Reason::InvalidScope,
        Reason::InvalidRequest,
        Reason::Throttled,
        Reason::ServerError,
        Reason::Timeout,
        Reason::Network,
        Reason::BadResponse,
        Reason::Sink,
        Reason::Credential,
    ];

    /// Position in [`Reason::ALL`], for per-reason counters kept in an array.
    pub fn index(self) -> usize {
        self as usize
    }

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::InvalidClient => "invalid_client",
            Reason::UnauthorizedClient => "unauthorized_client",
            Reason::TenantNotFound => "tenant_not_found",
            Reason::InvalidResource => "invalid_resource",
            Reason::InvalidScope => "invalid_scope",
            Reason::InvalidRequest => "invalid_request",
            Reason::Throttled => "throttled",
            Reason::ServerError => "server_error",
            Reason::Timeout => "timeout",
            Reason::Network => "network",
            Reason::BadResponse => "bad_response",
            Reason::Sink => "sink",
            Reason::Credential => "credential",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A failed refresh, with everything Entra told us about it.
///
/// The message never contains a secret or a token: it is built from Entra's error body (which
/// never echoes the secret), from transport errors, or from local I/O errors.
#[derive(Clone, Debug, thiserror::Error)]
#[error("{message}")]
pub struct RefreshError {
    /// Decides the retry policy.
    pub class: ErrorClass,
    /// The metric label.
    pub reason: Reason,
    /// HTTP status of the token endpoint's answer, when there was one.
    pub status: Option<u16>,
    /// The OAuth `error` field (`invalid_client`, …), when the body had one.
    pub oauth_error: Option<String>,
    /// AADSTS numbers from `error_codes` (or parsed from the description), first is the cause.
    pub aadsts: Vec<u32>,
    /// Entra's trace ID: what Microsoft support asks for.
    pub trace_id: Option<String>,
    /// Entra's correlation ID: ties the failure to our request.
    pub correlation_id: Option<String>,
    /// The `client-request-id` the daemon sent with the request (a fresh UUID each time), known
    /// before any answer, so even a timeout can be traced; Entra uses it as the correlation ID.
    pub client_request_id: Option<String>,
    /// The server's `Retry-After` (capped), which the next attempt must not undercut.
    pub retry_after: Option<RetryAfter>,
    /// Human-readable summary: the first line of `error_description`, or the transport error.
    pub message: String,
}

impl RefreshError {
    /// A failure that carries no Entra body (transport, local I/O).
    pub fn local(class: ErrorClass, reason: Reason, message: impl Into<String>) -> Self {
        RefreshError {
            class,
            reason,
            status: None,
            oauth_error: None,
            aadsts: Vec::new(),
            trace_id: None,
            correlation_id: None,
            client_request_id: None,
            retry_after: None,
            message: message.into(),
        }
    }

    /// The first AADSTS number as `AADSTSnnnn`, for logs and `once` output.
    pub fn aadsts_code(&self) -> Option<String> {
        self.aadsts.first().map(|code| format!("AADSTS{code}"))
    }
}

/// Entra's JSON error body (§2.1 of the protocol reference); every field is optional because
/// proxies and other OAuth servers send subsets.
#[derive(Debug, Default, serde::Deserialize)]
pub struct OAuthErrorBody {
    /// OAuth `error`.
    pub error: Option<String>,
    /// Starts with `AADSTSnnnn:`, ends with trace/correlation/timestamp lines.
    pub error_description: Option<String>,
    /// AADSTS numbers.
    #[serde(default)]
    pub error_codes: Vec<u32>,
    /// Entra trace ID.
    pub trace_id: Option<String>,
    /// Entra correlation ID.
    pub correlation_id: Option<String>,
}

/// AADSTS codes Microsoft lists as transient ("retryable"), reference §2.2.
const RETRYABLE_CODES: [u32; 5] = [50033, 90006, 90024, 90033, 90090];
/// AADSTS codes that mean "slow down": TenantThrottlingError and LoopDetected.
const THROTTLING_CODES: [u32; 2] = [90055, 50196];
/// AADSTS codes for an unknown or malformed tenant.
const TENANT_CODES: [u32; 3] = [90002, 900023, 90019];

/// Classifies a non-success answer from the token endpoint.
///
/// `body` is the raw body (possibly plain text or HTML); `retry_after` is the parsed header.
pub fn classify(status: u16, body: &[u8], retry_after: Option<RetryAfter>) -> RefreshError {
    let parsed: Option<OAuthErrorBody> = serde_json::from_slice(body).ok();
    let parsed = parsed.filter(|b| b.error.is_some() || !b.error_codes.is_empty());
    let Some(body_json) = parsed else {
        return classify_opaque(status, body, retry_after);
    };
    let mut aadsts = body_json.error_codes.clone();
    if aadsts.is_empty() {
        aadsts.extend(
            body_json
                .error_description
                .as_deref()
                .and_then(aadsts_from_description),
        );
    }
    let oauth_error = body_json.error.clone().unwrap_or_default();
    let (class, reason) = decide(status, &oauth_error, &aadsts);
    let message = body_json
        .error_description
        .as_deref()
        .map(first_line)
        .filter(|line| !line.is_empty())
        .map(str::to_owned)
        .unwrap_or_else(|| format!("HTTP {status} {oauth_error}"));
    RefreshError {
        class,
        reason,
        status: Some(status),
        oauth_error: body_json.error,
        aadsts,
        trace_id: body_json.trace_id,
        correlation_id: body_json.correlation_id,
        client_request_id: None,
        retry_after,
        message,
    }
}

/// The policy table: HTTP status first, then the OAuth `error`, then the few documented codes.
fn decide(status: u16, oauth_error: &str, aadsts: &[u32]) -> (ErrorClass, Reason) {
    let has = |codes: &[u32]| aadsts.iter().any(|code| codes.contains(code));
    if status == 429 || has(&THROTTLING_CODES) {
        return (ErrorClass::Throttled, Reason::Throttled);
    }
    if status == 408 {
        return (ErrorClass::Transient, Reason::Timeout);
    }
    if status >= 500 || oauth_error == "temporarily_unavailable" || has(&RETRYABLE_CODES) {
        return (ErrorClass::Transient, Reason::ServerError);
    }
    if has(&TENANT_CODES) || oauth_error == "invalid_tenant" {
        return (ErrorClass::Permanent, Reason::TenantNotFound);
    }
    let reason = match oauth_error {
        "invalid_client" => Reason::InvalidClient,
        "unauthorized_client" => Reason::UnauthorizedClient,
        "invalid_resource" => Reason::InvalidResource,
        "invalid_scope" => Reason::InvalidScope,
        _ => Reason::InvalidRequest,
    };
    (ErrorClass::Permanent, reason)
}

/// A body that is not an OAuth error: a proxy page, a plain-text 429, an empty 503.
fn classify_opaque(status: u16, body: &[u8], retry_after: Option<RetryAfter>) -> RefreshError {
    let (class, reason) = match status {
        429 => (ErrorClass::Throttled, Reason::Throttled),
        408 => (ErrorClass::Transient, Reason::Timeout),
        500.. => (ErrorClass::Transient, Reason::ServerError),
        _ => (ErrorClass::Transient, Reason::BadResponse),
    };
    let snippet = body_snippet(body);
    let message = if snippet.is_empty() {
        format!("HTTP {status} with an empty body")
    } else {
        format!("HTTP {status} with a non-OAuth body: {snippet}")
    };
    RefreshError {
        status: Some(status),
        retry_after,
        ..RefreshError::local(class, reason, message)
    }
}

/// Up to 120 printable characters of a body, for diagnosing proxy pages without flooding logs.
pub fn body_snippet(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let mut out: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(120)
        .collect();
    if text.chars().count() > 120 {
        out.push('…');
    }
    out.trim().to_owned()
}

fn first_line(text: &str) -> &str {
    text.split(['\r', '\n']).next().unwrap_or("").trim()
}

/// Reads `AADSTS7000215` out of a description when `error_codes` is absent.
fn aadsts_from_description(description: &str) -> Option<u32> {
    let start = description.find("AADSTS")? + "AADSTS".len();
    let digits: String = description[start..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn entra_body(error: &str, code: u32) -> Vec<u8> {
        serde_json::json!({
            "error": error,
            "error_description": format!("AADSTS{code}: Something.\r\nTrace ID: t\r\nCorrelation ID: c\r\nTimestamp: 2026-01-01 00:00:00Z"),
            "error_codes": [code],
            "timestamp": "2026-01-01 00:00:00Z",
            "trace_id": "trace-1",
            "correlation_id": "corr-1",
        })
        .to_string()
        .into_bytes()
    }

    #[test]
    fn permanent_errors_by_oauth_field() {
        let cases = [
            (401, "invalid_client", 7000215, Reason::InvalidClient),
            (401, "invalid_client", 7000222, Reason::InvalidClient),
            (
                400,
                "unauthorized_client",
                700016,
                Reason::UnauthorizedClient,
            ),
            (400, "invalid_request", 90002, Reason::TenantNotFound),
            (400, "invalid_request", 900023, Reason::TenantNotFound),
            (400, "invalid_resource", 500011, Reason::InvalidResource),
            (400, "invalid_scope", 1002012, Reason::InvalidScope),
            (400, "invalid_request", 901002, Reason::InvalidRequest),
        ];
        for (status, error, code, reason) in cases {
            let err = classify(status, &entra_body(error, code), None);
            assert_eq!(err.class, ErrorClass::Permanent, "{code}");
            assert_eq!(err.reason, reason, "{code}");
            assert_eq!(err.aadsts, vec![code]);
            assert_eq!(err.aadsts_code(), Some(format!("AADSTS{code}")));
            assert_eq!(err.trace_id.as_deref(), Some("trace-1"));
            assert_eq!(err.correlation_id.as_deref(), Some("corr-1"));
            assert_eq!(err.message, format!("AADSTS{code}: Something."));
        }
    }

    #[test]
    fn transient_and_throttled() {
        let err = classify(503, &entra_body("temporarily_unavailable", 90033), None);
        assert_eq!(
            (err.class, err.reason),
            (ErrorClass::Transient, Reason::ServerError)
        );
        let err = classify(400, &entra_body("invalid_request", 50033), None);
        assert_eq!(err.class, ErrorClass::Transient);
        let err = classify(400, &entra_body("invalid_request", 90055), None);
        assert_eq!(err.class, ErrorClass::Throttled);
        let sixty = RetryAfter::capped(Duration::from_secs(60));
        let err = classify(429, b"Too Many Requests", Some(sixty));
        assert_eq!(
            (err.class, err.reason),
            (ErrorClass::Throttled, Reason::Throttled)
        );
        assert_eq!(err.retry_after, Some(sixty));
        let err = classify(500, b"", None);
        assert_eq!(
            (err.class, err.reason),
            (ErrorClass::Transient, Reason::ServerError)
        );
        let err = classify(408, b"", None);
        assert_eq!(
            (err.class, err.reason),
            (ErrorClass::Transient, Reason::Timeout)
        );
    }

    #[test]
    fn reason_index_matches_all() {
        for (position, reason) in Reason::ALL.iter().enumerate() {
            assert_eq!(reason.index(), position, "{reason}");
        }
    }

    #[test]
    fn html_is_bad_response() {
        let err = classify(403, b"<html><body>Proxy login</body></html>", None);
        assert_eq!(
            (err.class, err.reason),
            (ErrorClass::Transient, Reason::BadResponse)
        );
        assert!(err.message.contains("Proxy login"), "{}", err.message);
    }

    #[test]
    fn code_from_description_when_codes_missing() {
        let body = br#"{"error":"invalid_client","error_description":"AADSTS7000215: Invalid client secret provided."}"#;
        let err = classify(401, body, None);
        assert_eq!(err.aadsts, vec![7000215]);
    }
}
