//! The classification of an answer of the Power BI or Fabric REST API, the way an operator acts
//! on it: the access probe's, an embed token's, an embed URL's. Pure, so every row is unit
//! tested (the tests live with the probe, its first user).
//!
//! | answer | reason | what it means |
//! |---|---|---|
//! | 200 | (ok) | the API accepts the token |
//! | 401 (`PowerBINotAuthorizedException`; Fabric's `Unauthorized`, `InvalidToken`), 403 other than `TokenExpired` | `not_authorized` | the tenant's settings refuse the service principal |
//! | 403 `TokenExpired` (Power BI), 401 `TokenExpired` (Fabric) | `token_expired` | the token we hold has expired by the API's clock: skew, or a bug of ours |
//! | 404 | `not_found` | the path or `powerbi_api` (`fabric_api`) is wrong |
//! | 429 | `throttled` | the API asks us to slow down; its `Retry-After` is honoured |
//! | 5xx | `server_error` | the API is failing |
//! | no answer | `network` | connect, TLS, timeout |
//! | anything else | `unexpected` | an answer the probe does not know |
//!
//! Power BI's error body is `{"error":{"code","message","pbi.error":{…}}}` with the request id in
//! the `RequestId` header; Fabric's is `{"requestId","errorCode","message",…}` (its
//! `ErrorResponse`), with the same id in a `requestId` header. Both are read, whichever came.

use serde::Deserialize;

use crate::client::ApiAnswer;
use crate::error::{self, Reason, RefreshError};

/// The longest error code kept: Power BI's are short identifiers.
const MAX_CODE: usize = 96;

/// Power BI's error envelope, `{"error":{"code":…,"message":…,"pbi.error":{"code":…}}}`, or
/// Fabric's, `{"requestId":…,"errorCode":…,"message":…}`.
#[derive(Deserialize)]
struct Envelope {
    error: Option<ErrorBody>,
    #[serde(rename = "errorCode")]
    error_code: Option<String>,
    message: Option<String>,
    #[serde(rename = "requestId")]
    request_id: Option<String>,
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

/// Classifies a Power BI or Fabric answer: `Ok` for 200 (any 2xx), else why not, with the
/// status, the error code and the request id. Pure, so every row of the table above is unit
/// tested. Embed tokens are classified the same way.
pub fn classify(answer: &ApiAnswer, secrets: &[&str]) -> Result<(), RefreshError> {
    if (200..300).contains(&answer.status) {
        return Ok(());
    }
    let envelope = serde_json::from_slice::<Envelope>(&answer.body).ok();
    let (body_code, body_message, body_request_id) = match envelope {
        Some(Envelope {
            error: Some(error), ..
        }) => (
            error
                .code
                .or_else(|| error.pbi_error.and_then(|pbi| pbi.code)),
            error.message,
            None,
        ),
        Some(fabric) => (fabric.error_code, fabric.message, fabric.request_id),
        None => (None, None, None),
    };
    let code = body_code
        .or_else(|| answer.error_info.clone())
        .map(|code| error::sanitise(&code, secrets))
        .filter(|code| !code.is_empty() && code.chars().count() <= MAX_CODE);
    let reason = match answer.status {
        401 | 403 if code.as_deref() == Some("TokenExpired") => Reason::TokenExpired,
        401 | 403 => Reason::NotAuthorized,
        404 => Reason::NotFound,
        429 => Reason::Throttled,
        500..=599 => Reason::ServerError,
        _ => Reason::Unexpected,
    };
    let text = body_message
        .map(|message| error::sanitise(&message, secrets))
        .filter(|message| !message.is_empty());
    let message = match text {
        Some(text) => format!("HTTP {}: {text}", answer.status),
        None => format!("HTTP {}", answer.status),
    };
    // The header is what both APIs send; Fabric repeats it in the body.
    let request_id = answer
        .request_id
        .clone()
        .or_else(|| body_request_id.filter(|id| is_request_id(id)));
    Err(RefreshError::api(
        reason,
        Some(answer.status),
        code,
        request_id,
        message,
        answer.retry_after,
    ))
}

/// Whether a request id from a body looks like one (a GUID, as both APIs send): anything else
/// is not shown.
fn is_request_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')
}

/// A Power BI call that got no answer (connect, TLS, timeout, a body cut short).
pub(crate) fn unanswered(message: &str, secrets: &[&str]) -> RefreshError {
    RefreshError::api(
        Reason::Network,
        None,
        None,
        None,
        error::sanitise(message, secrets),
        None,
    )
}
