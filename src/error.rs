//! Why a refresh failed, in the words an operator acts on.
//!
//! Entra answers failures with an HTTP status and an OAuth `error` field, and adds AADSTS numbers,
//! a trace ID and a correlation ID for diagnosis. Microsoft asks clients to branch on the status
//! and the `error` field, not on the numbers (which change), so [`classify`] does exactly that; the
//! only AADSTS numbers it looks at are the ones Microsoft itself names "retryable" or "throttling".
//! Everything else about the body is kept for the log line and `/status`.
//!
//! # Server text is hostile
//!
//! Every string that came from a server and is kept in a [`RefreshError`] (the description, a
//! proxy's error page, IDs, the transport error chain) goes through [`sanitise`] before it is
//! stored, because [`RefreshError::message`] is what the log, `/status` and `once` print. A server
//! can reflect the request (Entra-like servers quote what they were sent), so the secrets of that
//! request are redacted; it can send terminal escapes or bidi controls that rewrite an operator's
//! terminal or log view, so control characters go; and it can send megabytes, so the text is
//! capped. The body of a 200 answer is never quoted at all: it is, or nearly is, a token.

use std::fmt;

use crate::token::{BadTokenResponse, RetryAfter};

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
    /// Power BI refuses the service principal (401, or 403 other than an expired token).
    NotAuthorized,
    /// Power BI says the token has expired.
    TokenExpired,
    /// 404 from Power BI: the path or API root is wrong.
    NotFound,
    /// Power BI answered another status, or a 200 that is not what was asked for.
    Unexpected,
}

impl Reason {
    /// Every reason, in label order: the size of per-reason counters kept in an array.
    pub const ALL: [Reason; 17] = [
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
        Reason::NotAuthorized,
        Reason::TokenExpired,
        Reason::NotFound,
        Reason::Unexpected,
    ];

    /// The reasons a token request (and the writes of its token) can fail with: the series
    /// of the token failure counters.
    pub(crate) const TOKEN: [Reason; 13] = [
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

    /// The reasons a Power BI call can fail with: the access probe's series.
    pub const API: [Reason; 7] = [
        Reason::NotAuthorized,
        Reason::TokenExpired,
        Reason::NotFound,
        Reason::Throttled,
        Reason::ServerError,
        Reason::Network,
        Reason::Unexpected,
    ];

    /// An embed token's: a Power BI call's, its writes, and reading its datasource identities'
    /// blobs.
    pub(crate) const EMBED: [Reason; 9] = [
        Reason::NotAuthorized,
        Reason::TokenExpired,
        Reason::NotFound,
        Reason::Throttled,
        Reason::ServerError,
        Reason::Network,
        Reason::Unexpected,
        Reason::Sink,
        Reason::Credential,
    ];

    /// `counts` (indexed like [`Reason::ALL`]) for the reasons of `set` only, in its order: the
    /// copies a metrics scrape makes stay as small as the set.
    pub(crate) fn counts_in<const N: usize>(
        counts: &[u32; Reason::ALL.len()],
        set: &[Reason; N],
    ) -> [u64; N] {
        set.map(|reason| u64::from(counts[reason.index()]))
    }

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
            Reason::NotAuthorized => "not_authorized",
            Reason::TokenExpired => "token_expired",
            Reason::NotFound => "not_found",
            Reason::Unexpected => "unexpected",
        }
    }

    /// What an operator should do about a failure, for the log and `/status`: for the Power BI
    /// reasons and those a server of any kind can cause; `None` for the token endpoint's own,
    /// whose messages say it.
    pub fn advice(self) -> Option<&'static str> {
        Some(match self {
            Reason::NotAuthorized => {
                "Power BI (or Fabric) refuses this service principal: in the customer's Fabric admin portal, Tenant settings > Developer settings, \"Service principals can use Fabric APIs\" must be on for the organisation or for a security group that contains the service principal, and the service principal must be a Member or Admin of the workspaces it uses"
            }
            Reason::TokenExpired => {
                "Power BI says the token has expired although the daemon holds it as fresh: check this host's clock (NTP); if the clock is right, this is a bug in the daemon"
            }
            Reason::NotFound => {
                "Power BI (or Fabric) found no such URL or item: check powerbi_api (fabric_api) and probe.path, and the embed's report, dataset and workspace ids (Power BI also answers 404 when the service principal is not a member of the item's workspace)"
            }
            Reason::Unexpected => "Power BI answered in a way the daemon does not know",
            Reason::Throttled => "the server asks to slow down; the daemon waits as told",
            Reason::ServerError => "the server is failing; nothing to do on this side",
            Reason::Network => "the server could not be reached",
            _ => return None,
        })
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A failed refresh, with everything Entra told us about it.
///
/// The message never contains a secret or a token: text from a server (error bodies, transport
/// errors) is [`sanitise`]d with the request's secrets before it is stored here, and local I/O
/// errors are built from our own words and paths.
#[derive(Clone, Debug, thiserror::Error)]
#[error("{message}")]
pub struct RefreshError {
    /// Decides the retry policy.
    pub class: ErrorClass,
    /// The metric label.
    pub reason: Reason,
    /// HTTP status of the server's answer, when there was one.
    pub status: Option<u16>,
    /// The server's own error code, when the body had one: the OAuth `error` of a token endpoint
    /// (`invalid_client`, `invalid_target`, …; kept as [`error_code`] leaves it), or Power BI's
    /// (`PowerBINotAuthorizedException`, `TokenExpired`, …). Shown as `error_code` beside the
    /// reason, which maps only what the retry policy knows.
    pub oauth_error: Option<String>,
    /// AADSTS numbers from `error_codes` (or parsed from the description), first is the cause.
    pub aadsts: Vec<u32>,
    /// The server's id of the request, what Microsoft support asks for: Entra's trace ID, or
    /// Power BI's `RequestId`.
    pub trace_id: Option<String>,
    /// Entra's correlation ID: ties the failure to our request.
    pub correlation_id: Option<String>,
    /// The `client-request-id` the daemon sent with the request (a fresh UUID each time), known
    /// before any answer, so even a timeout can be traced; Entra uses it as the correlation ID.
    pub client_request_id: Option<String>,
    /// The server's `Retry-After` (capped), which the next attempt must not undercut.
    pub retry_after: Option<RetryAfter>,
    /// Human-readable summary: the first line of `error_description`, a quote of a non-OAuth
    /// error body, or the transport error; [`sanitise`]d when any of it came from a server.
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

    /// A failed Power BI call: the class follows from the reason (a refusal or a wrong URL is
    /// permanent until someone acts; throttling waits for `retry_after`; the rest is transient).
    pub fn api(
        reason: Reason,
        status: Option<u16>,
        code: Option<String>,
        request_id: Option<String>,
        message: String,
        retry_after: Option<RetryAfter>,
    ) -> Self {
        let class = match reason {
            Reason::NotAuthorized | Reason::NotFound => ErrorClass::Permanent,
            Reason::Throttled => ErrorClass::Throttled,
            Reason::Sink => ErrorClass::Sink,
            _ => ErrorClass::Transient,
        };
        RefreshError {
            status,
            oauth_error: code,
            trace_id: request_id,
            retry_after,
            ..RefreshError::local(class, reason, message)
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
pub(crate) struct OAuthErrorBody {
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
/// `body` is the raw body (possibly plain text or HTML); `retry_after` is the parsed header;
/// `secrets` are the secret values sent in the request (client secret, client assertion,
/// identity header), redacted wherever the server quotes them.
pub fn classify(
    status: u16,
    body: &[u8],
    retry_after: Option<RetryAfter>,
    secrets: &[&str],
) -> RefreshError {
    let parsed: Option<OAuthErrorBody> = serde_json::from_slice(body).ok();
    let parsed = parsed.filter(|b| b.error.is_some() || !b.error_codes.is_empty());
    let Some(body_json) = parsed else {
        return classify_opaque(status, body, retry_after, secrets);
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
    // The policy reads the raw `error`; only what is stored is sanitised.
    let (class, reason) = decide(
        status,
        body_json.error.as_deref().unwrap_or_default(),
        &aadsts,
    );
    let field = |value: Option<String>| {
        value
            .map(|value| sanitise_to(&value, secrets, MAX_FIELD_CHARS))
            .filter(|value| !value.is_empty())
    };
    let oauth_error = body_json
        .error
        .as_deref()
        .map(|raw| error_code(raw, secrets))
        .filter(|code| !code.is_empty());
    // Secrets are redacted in the whole description before its first line is cut out, so a
    // secret that spans a line break cannot leave its first half behind.
    let message = body_json
        .error_description
        .map(|description| sanitise(first_line(&redact_secrets(&description, secrets)), secrets))
        .filter(|line| !line.is_empty())
        .unwrap_or_else(|| {
            format!(
                "HTTP {status} {}",
                oauth_error.as_deref().unwrap_or_default()
            )
            .trim_end()
            .to_owned()
        });
    RefreshError {
        class,
        reason,
        status: Some(status),
        oauth_error,
        aadsts,
        trace_id: field(body_json.trace_id),
        correlation_id: field(body_json.correlation_id),
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

/// A body that is not an OAuth error: a proxy page, a plain-text 429, an empty 503. Only error
/// statuses come here (a 200 body is never quoted), and the quote is sanitised.
fn classify_opaque(
    status: u16,
    body: &[u8],
    retry_after: Option<RetryAfter>,
    secrets: &[&str],
) -> RefreshError {
    let (class, reason) = match status {
        429 => (ErrorClass::Throttled, Reason::Throttled),
        408 => (ErrorClass::Transient, Reason::Timeout),
        500.. => (ErrorClass::Transient, Reason::ServerError),
        _ => (ErrorClass::Transient, Reason::BadResponse),
    };
    let prefix = format!("HTTP {status} with a non-OAuth body: ");
    // The quote gets what the prefix leaves of the cap, so the whole message stays within it.
    let room = MAX_TEXT_CHARS.saturating_sub(prefix.chars().count());
    let quote = sanitise_to(&String::from_utf8_lossy(body), secrets, room);
    let message = if quote.is_empty() {
        format!("HTTP {status} with an empty body")
    } else {
        prefix + &quote
    };
    RefreshError {
        status: Some(status),
        retry_after,
        ..RefreshError::local(class, reason, message)
    }
}

/// Longest sanitised text, in characters (the `…` included): enough for an Entra description's
/// first line or a proxy's one-line excuse, short enough for a log line and a `/status` field.
pub const MAX_TEXT_CHARS: usize = 300;
/// Cap for short fields from a server (trace and correlation IDs: GUIDs in Entra).
const MAX_FIELD_CHARS: usize = 100;
/// Cap for an OAuth `error` code. The codes of RFC 6749, RFC 8707 and Entra are at most 25
/// characters (`unsupported_response_type`); the cap leaves room for other servers' codes
/// without letting one fill a log line.
pub(crate) const MAX_ERROR_CODE_CHARS: usize = 64;
/// Secrets shorter than this are not redacted: redacting `a` or `ab` would shred every message,
/// and a secret that short protects nothing anyway.
pub const MIN_SECRET_CHARS: usize = 4;
/// What replaces a secret or something that looks like a token.
pub const REDACTED: &str = "[REDACTED]";
/// A JWT shorter than this is not a real token (a header alone is ~36 characters).
const MIN_JWT_CHARS: usize = 30;
/// An unbroken run of token characters at least this long is treated as an opaque token or
/// secret. Entra client secrets are 40 characters; GUIDs (trace and correlation IDs, which
/// operators need) are 36, so they survive.
const MIN_OPAQUE_TOKEN_CHARS: usize = 40;

/// Makes server text safe to log, show in `/status` and print in a terminal.
///
/// In this order, so no rule can undo an earlier one:
/// 1. every occurrence of each of `secrets` (at least [`MIN_SECRET_CHARS`] long) is replaced by
///    [`REDACTED`]: the exact value and the forms a server may reflect it in (form-urlencoded as
///    it was sent, percent-encoded, either hex case, JSON-escaped);
/// 2. control characters (C0 and C1, so ESC, BEL, CR, LF), Unicode bidi controls
///    (U+202A–U+202E, U+2066–U+2069) and other invisible format characters become spaces, and
///    runs of whitespace collapse to one space, trimmed at both ends;
/// 3. JWT-shaped strings and long opaque token-like runs become [`REDACTED`] (see
///    [`looks_like_token`]);
/// 4. the result is capped at [`MAX_TEXT_CHARS`] characters, ending in `…` when cut. The cap
///    counts characters, never splitting one, so no input can make it panic.
pub fn sanitise(text: &str, secrets: &[&str]) -> String {
    sanitise_to(text, secrets, MAX_TEXT_CHARS)
}

/// [`sanitise`] with another cap.
fn sanitise_to(text: &str, secrets: &[&str], max_chars: usize) -> String {
    let text = redact_secrets(text, secrets);
    let text = flatten(&text);
    // Again: collapsing whitespace can rebuild a secret that has a space in it from one the
    // server sent with a tab or two spaces.
    let text = redact_secrets(&text, secrets);
    let text = redact_tokens(&text);
    cap(&text, max_chars)
}

/// Whether RFC 6749 allows `c` in an `error` code (§5.2, Appendix A.7: %x20-21 / %x23-5B /
/// %x5D-7E, printable ASCII without `"` and `\`), leaving out the space it also allows: the code
/// is one space-separated field of `once`'s line, and no registered code has one.
fn is_error_code_char(c: char) -> bool {
    matches!(c, '\x21' | '\x23'..='\x5b' | '\x5d'..='\x7e')
}

/// An OAuth `error` code as the log, `/status` and `once` show it. Stricter than [`sanitise`],
/// because a code is a token, not prose, and RFC 6749 says which characters it has:
/// 1. every form of the request's secrets becomes [`REDACTED`], before anything else, so no
///    later step can cut one into pieces that no longer match;
/// 2. the ends are trimmed, and each character a code may not contain (controls, bidi
///    controls, `"`, `\`, spaces, anything beyond ASCII) becomes `?`: visibly not what the server
///    sent, never a terminal escape, a forged log line or a second field;
/// 3. the secrets again (a `?` completes a secret that has one where the server sent a
///    control), then token-like runs ([`looks_like_token`]);
/// 4. at most [`MAX_ERROR_CODE_CHARS`] characters, cut without `…`, which a code may not contain.
///    Only ASCII is left, so the cut cannot split a character.
fn error_code(raw: &str, secrets: &[&str]) -> String {
    let redacted = redact_secrets(raw, secrets);
    let restricted: String = redacted
        .trim()
        .chars()
        .map(|c| if is_error_code_char(c) { c } else { '?' })
        .collect();
    let redacted = redact_tokens(&redact_secrets(&restricted, secrets));
    redacted.chars().take(MAX_ERROR_CODE_CHARS).collect()
}

/// Step 1 of [`sanitise`]: every form of every secret replaced by [`REDACTED`].
fn redact_secrets(text: &str, secrets: &[&str]) -> String {
    let mut forms: Vec<String> = secrets
        .iter()
        .filter(|secret| secret.chars().count() >= MIN_SECRET_CHARS)
        .flat_map(|secret| secret_forms(secret))
        .collect();
    // Longest first: one form can contain another (a secret and its JSON escape), and the
    // longer one must go whole.
    forms.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
    forms.dedup();
    let mut text = text.to_owned();
    for form in &forms {
        text = replace_ignoring_ascii_case(&text, form);
    }
    text
}

/// `text` with every occurrence of `needle` replaced by [`REDACTED`], ignoring ASCII case: a
/// server that upper- or lower-cases what it echoes must not get the secret through. ASCII case
/// folding keeps every byte offset, so matches found in the folded copy cut the original.
fn replace_ignoring_ascii_case(text: &str, needle: &str) -> String {
    if needle.is_empty() {
        return text.to_owned();
    }
    let folded_text = text.to_ascii_lowercase();
    let folded_needle = needle.to_ascii_lowercase();
    let mut out = String::with_capacity(text.len());
    let mut from = 0;
    while let Some(found) = folded_text[from..].find(&folded_needle) {
        let start = from + found;
        out.push_str(&text[from..start]);
        out.push_str(REDACTED);
        from = start + folded_needle.len();
    }
    out.push_str(&text[from..]);
    out
}

/// The ways a secret can come back from a server that quotes the request.
fn secret_forms(secret: &str) -> Vec<String> {
    let form_encoded: String = form_urlencoded::byte_serialize(secret.as_bytes()).collect();
    let percent_encoded = percent_encode(secret);
    let mut forms = vec![
        secret.to_owned(),
        lowercase_hex(&form_encoded),
        lowercase_hex(&percent_encoded),
        form_encoded,
        percent_encoded,
    ];
    let json = serde_json::to_string(secret).unwrap_or_default();
    // Without the quotes serde puts around a string.
    if let Some(escaped) = json.strip_prefix('"').and_then(|j| j.strip_suffix('"')) {
        forms.push(escaped.to_owned());
    }
    forms
}

/// RFC 3986 percent-encoding: everything but the unreserved characters, upper-case hex.
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// `text` with the hex digits of its `%XX` escapes in lower case (servers re-encode with either).
fn lowercase_hex(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut hex_left = 0;
    for c in text.chars() {
        if hex_left > 0 {
            out.push(c.to_ascii_lowercase());
            hex_left -= 1;
        } else {
            out.push(c);
            if c == '%' {
                hex_left = 2;
            }
        }
    }
    out
}

/// Characters that change what a terminal or log viewer shows without being visible
/// themselves: controls (ESC starts escape sequences, CR rewrites a line, LF forges log lines),
/// bidi overrides and isolates (reorder text, "Trojan Source"), zero-width and tag characters
/// (hide text).
fn is_hidden_or_control(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{00AD}'
                | '\u{061C}'
                | '\u{180E}'
                | '\u{200B}'..='\u{200F}'
                | '\u{202A}'..='\u{202E}'
                | '\u{2060}'..='\u{206F}'
                | '\u{FEFF}'
                | '\u{FFF9}'..='\u{FFFB}'
                | '\u{E0000}'..='\u{E007F}'
        )
}

/// Step 2 of [`sanitise`]: hidden and control characters become spaces; whitespace runs
/// collapse to one space; no space at either end.
fn flatten(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut space_pending = false;
    for c in text.chars() {
        if c.is_whitespace() || is_hidden_or_control(c) {
            space_pending = !out.is_empty();
        } else {
            if space_pending {
                out.push(' ');
                space_pending = false;
            }
            out.push(c);
        }
    }
    out
}

/// Characters of tokens and secrets: base64 and base64url, JWT dots, Entra secrets' `~`.
fn is_token_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '~' | '+' | '/' | '=' | '-')
}

/// Step 3 of [`sanitise`]: every maximal run of token characters that [`looks_like_token`]
/// becomes [`REDACTED`].
fn redact_tokens(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut run_start = None;
    for (index, c) in text.char_indices() {
        match (is_token_char(c), run_start) {
            (true, None) => run_start = Some(index),
            (true, Some(_)) => {}
            (false, start) => {
                if let Some(start) = start {
                    push_run(&mut out, &text[start..index]);
                    run_start = None;
                }
                out.push(c);
            }
        }
    }
    if let Some(start) = run_start {
        push_run(&mut out, &text[start..]);
    }
    out
}

fn push_run(out: &mut String, run: &str) {
    out.push_str(if looks_like_token(run) { REDACTED } else { run });
}

/// Whether a run of token characters is, or contains, a token: a pure decision, unit tested.
///
/// * JWT-shaped: three or more base64url segments joined by `.`, at least [`MIN_JWT_CHARS`]
///   long, that either start with `eyJ` (the base64 of `{"`, how every JWT header starts) or mix
///   upper case, lower case and digits. Host names (`contoso.onmicrosoft.com`) are lower case
///   and stay readable.
/// * Opaque: at least [`MIN_OPAQUE_TOKEN_CHARS`] characters, unless it contains a `/` and lacks
///   the upper/lower/digit mix of random base64. URL paths (`…/oauth2/v2.0/token`, which
///   transport errors quote) stay readable; base64url tokens, hex tokens and Entra secrets have
///   no `/`, and standard-base64 ones have the mix.
///
/// A lower-case name, `=` and a GUID (`appid=…`, `oid=…`, as Key Vault's RBAC refusal names
/// the caller) is neither: it is a GUID, readable like a bare one, and the one operators need to
/// grant the role.
pub(crate) fn looks_like_token(run: &str) -> bool {
    let named_guid = run.split_once('=').is_some_and(|(name, value)| {
        !name.is_empty() && name.bytes().all(|b| b.is_ascii_lowercase()) && is_guid(value)
    });
    if named_guid {
        return false;
    }
    let mixed = |text: &str| {
        text.bytes().any(|b| b.is_ascii_uppercase())
            && text.bytes().any(|b| b.is_ascii_lowercase())
            && text.bytes().any(|b| b.is_ascii_digit())
    };
    let jwt_shaped = run
        .split(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
        .any(|piece| {
            let segments = piece.split('.').collect::<Vec<_>>();
            segments.len() >= 3
                && segments.iter().filter(|s| !s.is_empty()).count() >= 2
                && piece.len() >= MIN_JWT_CHARS
                && (piece.starts_with("eyJ") || mixed(piece))
        });
    let opaque =
        run.chars().count() >= MIN_OPAQUE_TOKEN_CHARS && (!run.contains('/') || mixed(run));
    jwt_shaped || opaque
}

/// `8-4-4-4-12` hex digits.
fn is_guid(text: &str) -> bool {
    text.len() == 36
        && text.bytes().enumerate().all(|(index, b)| match index {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_hexdigit(),
        })
}

/// Step 4 of [`sanitise`]: at most `max_chars` characters, the last one `…` when cut.
fn cap(text: &str, max_chars: usize) -> String {
    if text.chars().count() <= max_chars {
        return text.to_owned();
    }
    if max_chars == 0 {
        return String::new();
    }
    let mut out: String = text.chars().take(max_chars - 1).collect();
    // A cut inside a run of token characters drops the partial run: it is not what the server
    // sent, and a shorter run could look like a token the whole run was not (a URL path without
    // its `/`), which would make sanitising a second time change the text.
    let cut_inside_run = out.chars().next_back().is_some_and(is_token_char)
        && text
            .get(out.len()..)
            .and_then(|rest| rest.chars().next())
            .is_some_and(is_token_char);
    if cut_inside_run {
        out.truncate(out.trim_end_matches(is_token_char).len());
    }
    out.truncate(out.trim_end().len());
    out.push('…');
    out
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

/// A 200 answer without a usable token (a proxy's page, a truncated body, an absurd expiry):
/// transient, because the next answer may well be a token.
impl From<BadTokenResponse> for RefreshError {
    fn from(err: BadTokenResponse) -> Self {
        RefreshError::local(ErrorClass::Transient, Reason::BadResponse, err.message)
    }
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
            let err = classify(status, &entra_body(error, code), None, &[]);
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
        let err = classify(
            503,
            &entra_body("temporarily_unavailable", 90033),
            None,
            &[],
        );
        assert_eq!(
            (err.class, err.reason),
            (ErrorClass::Transient, Reason::ServerError)
        );
        let err = classify(400, &entra_body("invalid_request", 50033), None, &[]);
        assert_eq!(err.class, ErrorClass::Transient);
        let err = classify(400, &entra_body("invalid_request", 90055), None, &[]);
        assert_eq!(err.class, ErrorClass::Throttled);
        let sixty = RetryAfter::capped(Duration::from_secs(60));
        let err = classify(429, b"Too Many Requests", Some(sixty), &[]);
        assert_eq!(
            (err.class, err.reason),
            (ErrorClass::Throttled, Reason::Throttled)
        );
        assert_eq!(err.retry_after, Some(sixty));
        let err = classify(500, b"", None, &[]);
        assert_eq!(
            (err.class, err.reason),
            (ErrorClass::Transient, Reason::ServerError)
        );
        let err = classify(408, b"", None, &[]);
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
        let err = classify(403, b"<html><body>Proxy login</body></html>", None, &[]);
        assert_eq!(
            (err.class, err.reason),
            (ErrorClass::Transient, Reason::BadResponse)
        );
        assert!(err.message.contains("Proxy login"), "{}", err.message);
    }

    #[test]
    fn code_from_description_when_codes_missing() {
        let body = br#"{"error":"invalid_client","error_description":"AADSTS7000215: Invalid client secret provided."}"#;
        let err = classify(401, body, None, &[]);
        assert_eq!(err.aadsts, vec![7000215]);
    }

    /// A JWT as Entra issues them: header, payload, signature.
    const JWT: &str = "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.eyJhdWQiOiJodHRwczovL2FuYWx5c2lzIiwib2lkIjoiMTIzIn0.c2lnbmF0dXJlLWJ5dGVzLWhlcmUtMTIzNDU2Nzg5MA";

    #[test]
    fn a_secret_with_a_space_rebuilt_by_collapsing_whitespace_is_redacted() {
        let secret = "Ab1~x y/z+é\"q&w";
        for body in [
            "Ab1~x\ty/z+é\"q&w",
            "Ab1~x  y/z+é\"q&w",
            "Ab1~x\u{1b}y/z+é\"q&w",
        ] {
            let out = sanitise(body, &[secret]);
            assert!(!out.contains(secret), "{body:?} -> {out:?}");
            let err = classify(
                400,
                format!(
                    "{{\"error\":\"invalid_request\",\"error_description\":{}}}",
                    serde_json::to_string(body).unwrap()
                )
                .as_bytes(),
                None,
                &[secret],
            );
            assert!(!err.message.contains(secret), "{body:?} -> {}", err.message);
        }
    }

    #[test]
    fn hardening_4_a_secret_echoed_in_another_case_is_still_redacted() {
        let secret = "s3cr3t~VALUE~that-must-never-be-logged";
        for echoed in [
            secret.to_ascii_lowercase(),
            secret.to_ascii_uppercase(),
            "S3CR3T%7evalue%7eTHAT-must-never-be-logged".to_owned(),
        ] {
            let out = sanitise(&format!("bad secret '{echoed}' é"), &[secret]);
            assert_eq!(out, "bad secret '[REDACTED]' é", "{echoed}");
        }
    }

    #[test]
    fn sanitise_turns_every_control_and_bidi_character_into_one_space() {
        let hidden = ('\u{0}'..='\u{1f}')
            .chain(['\u{7f}'])
            .chain('\u{80}'..='\u{9f}')
            .chain('\u{202a}'..='\u{202e}')
            .chain('\u{2066}'..='\u{2069}')
            .chain(['\u{200b}', '\u{200e}', '\u{200f}', '\u{feff}', '\u{e0041}']);
        for c in hidden {
            assert_eq!(
                sanitise(&format!("left{c}right"), &[]),
                "left right",
                "U+{:04X}",
                u32::from(c)
            );
            assert_eq!(
                sanitise(&format!("{c}{c}left {c}{c} right{c}"), &[]),
                "left right",
                "U+{:04X}",
                u32::from(c)
            );
        }
        assert_eq!(
            sanitise("\u{1b}[2J\u{1b}]0;pwned\u{7}AADSTS1: no", &[]),
            "[2J ]0;pwned AADSTS1: no"
        );
        assert_eq!(sanitise(" \r\n\t ", &[]), "");
        // Ordinary text, accents and other scripts pass untouched.
        let plain = "AADSTS7000215: Invalid client secret provided. Trace ID: 5d1e7c2a-3b4f-4a6d-8e9f-0a1b2c3d4e5f, café 漢字 😀";
        assert_eq!(sanitise(plain, &[]), plain);
    }

    #[test]
    fn sanitise_caps_by_characters_without_splitting_one() {
        let words = "word ".repeat(100);
        let capped = sanitise(&words, &[]);
        assert_eq!(capped.chars().count(), MAX_TEXT_CHARS);
        assert!(capped.ends_with("word…"), "{capped}");
        let exact: String = "ab "
            .repeat(100)
            .trim_end()
            .chars()
            .take(MAX_TEXT_CHARS)
            .collect();
        assert_eq!(sanitise(&exact, &[]), exact.trim_end());
        // Multi-byte characters of every width, shifted across the cut.
        for filler in ["é", "漢", "😀", "e\u{301}", "a漢😀 "] {
            for shift in 0..8 {
                for len in (MAX_TEXT_CHARS - 5)..(MAX_TEXT_CHARS + 5) {
                    let text = format!("{}{}", "x".repeat(shift), filler.repeat(len));
                    let out = sanitise(&text, &[]);
                    assert!(
                        out.chars().count() <= MAX_TEXT_CHARS,
                        "{filler} {shift} {len}"
                    );
                }
            }
        }
        for max in 0..5 {
            assert!(cap("漢字漢字漢字", max).chars().count() <= max);
        }
    }

    #[test]
    fn sanitise_redacts_the_secret_in_every_form_a_server_reflects() {
        let secret = "Ab1~x y/z+é\"q&w";
        let reflected = [
            secret.to_owned(),
            form_urlencoded::byte_serialize(secret.as_bytes()).collect(),
            percent_encode(secret),
            lowercase_hex(&percent_encode(secret)),
            lowercase_hex(&form_urlencoded::byte_serialize(secret.as_bytes()).collect::<String>()),
            serde_json::to_string(secret).unwrap(),
        ];
        for form in &reflected {
            let out = sanitise(&format!("bad secret {form} twice {form}."), &[secret]);
            assert_eq!(out.matches(REDACTED).count(), 2, "{form} -> {out}");
            assert!(!out.contains("y/z"), "{form} -> {out}");
        }
        // Inside a word, next to other text, and with several secrets.
        let out = sanitise(
            "client_secret=hunter22&client_assertion=opaque-assert",
            &["hunter22", "opaque-assert"],
        );
        assert_eq!(
            out,
            format!("client_secret={REDACTED}&client_assertion={REDACTED}")
        );
        // Too short to redact without shredding the message.
        assert_eq!(sanitise("a bad answer", &["a", "", "bad"]), "a bad answer");
        assert_eq!(sanitise("a bad answer", &["bad "]), "a [REDACTED]answer");
    }

    #[test]
    fn sanitise_redacts_jwts_and_long_opaque_tokens() {
        let opaque = "Q2hhbmdlIHRoaXMgb3BhcXVlIHRva2VuIHZhbHVlIHBsZWFzZQ9x7Kp3vZ0a";
        let hex = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
        let entra_secret = "Xy8Q~abcdefghijklmnopqrstuvwxyz0123456789";
        let standard_base64 = "ab+/CD12ef34GH56ij78KL90mn12OP34qr56ST78uv==";
        for token in [JWT, opaque, hex, entra_secret, standard_base64] {
            for text in [
                token.to_owned(),
                format!("access_token={token}"),
                format!("{{\"access_token\":\"{token}\"}}"),
                format!("Bearer {token}, and more"),
            ] {
                let out = sanitise(&text, &[]);
                assert!(out.contains(REDACTED), "{text} -> {out}");
                assert!(!out.contains(&token[..20]), "{text} -> {out}");
            }
        }
        // What operators need stays readable: codes, GUIDs, host names, URL paths, versions.
        for keep in [
            "AADSTS90002: Tenant 'fabrikamcontosoexample.onmicrosoft.com' not found.",
            "Trace ID: 5d1e7c2a-3b4f-4a6d-8e9f-0a1b2c3d4e5f Correlation ID: 0a1b2c3d-3b4f-4a6d-8e9f-5d1e7c2a4e5f",
            "error sending request for url (https://login.microsoftonline.com/72f988bf-86f1-41af-91ab-2d7cd011db47/oauth2/v2.0/token)",
            "HTTP 502 from proxy.corp.example.com v2.0",
            "Caller: appid=3c6f0e1d-9b2a-4c8d-8e7f-6a5b4c3d2e1f;oid=5D1E7C2A-3B4F-4A6D-8E9F-0A1B2C3D4E5F;iss=https://sts.windows.net/72f988bf-86f1-41af-91ab-2d7cd011db47/",
        ] {
            assert_eq!(sanitise(keep, &[]), keep);
        }
    }

    #[test]
    fn looks_like_token_decisions() {
        let cases = [
            (JWT, true),
            ("eyJhbGciOiJub25lIn0.eyJzdWIiOiIxIn0.", true),
            ("aB1.cD2.eF3.gH4.iJ5.kL6.mN7.oP8.q", true),
            ("contoso.onmicrosoft.com", false),
            ("fabrikamcontosoexample.onmicrosoft.com", false),
            ("v2.0", false),
            ("5d1e7c2a-3b4f-4a6d-8e9f-0a1b2c3d4e5f", false),
            (&"a".repeat(MIN_OPAQUE_TOKEN_CHARS - 1), false),
            (&"a".repeat(MIN_OPAQUE_TOKEN_CHARS), true),
            (
                "//login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token",
                false,
            ),
            ("//host/Ab1Cd2Ef3Gh4Ij5Kl6Mn7Op8Qr9St0Uv1Wx2Yz3", true),
            ("appid=3c6f0e1d-9b2a-4c8d-8e7f-6a5b4c3d2e1f", false),
            // Only a GUID is let through that way, and only after a plain name.
            ("appid=3c6f0e1d-9b2a-4c8d-8e7f-6a5b4c3d2e1f0", true),
            ("appid=3c6f0e1d9b2a-4c8d-8e7f-6a5b4c3d2e1f0", true),
            (
                "client_secret=Xy8Q~abcdefghijklmnopqrstuvwxyz0123456789",
                true,
            ),
            ("Ab=3c6f0e1d-9b2a-4c8d-8e7f-6a5b4c3d2e1f-Xy8Q~abc", true),
        ];
        for (run, expected) in cases {
            assert_eq!(looks_like_token(run), expected, "{run}");
        }
    }

    /// Property-style: random text over an alphabet of the tricky cases never panics, never
    /// comes out longer than the cap, never keeps a control, a bidi control or the secret, and
    /// sanitising again changes nothing.
    #[test]
    fn sanitise_holds_its_promises_on_random_text() {
        let secret = "s3cr3t~VALUE";
        let alphabet: Vec<String> = [
            "a",
            "Z",
            "0",
            " ",
            ".",
            "~",
            "/",
            "+",
            "=",
            "-",
            "_",
            "%",
            "\"",
            "\\",
            "\u{1b}",
            "\r",
            "\n",
            "\u{7}",
            "\u{9b}",
            "\u{202e}",
            "\u{2067}",
            "\u{200b}",
            "é",
            "漢",
            "😀",
            "e\u{301}",
            "\u{fffd}",
            "s3cr3t",
            "~VALUE",
            secret,
            "s3cr3t%7EVALUE",
            "eyJ",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        let mut rng = fastrand::Rng::with_seed(4);
        for _ in 0..2000 {
            let len = rng.usize(0..400);
            let text: String = (0..len)
                .map(|_| alphabet[rng.usize(..alphabet.len())].as_str())
                .collect();
            let out = sanitise(&text, &[secret]);
            assert!(out.chars().count() <= MAX_TEXT_CHARS, "{text:?}");
            assert!(!out.contains(secret), "{text:?} -> {out:?}");
            assert!(!out.contains("s3cr3t%7EVALUE"), "{text:?} -> {out:?}");
            assert!(
                !out.chars()
                    .any(|c| c.is_control() || is_hidden_or_control(c)),
                "{text:?} -> {out:?}"
            );
            assert_eq!(sanitise(&out, &[secret]), out, "{text:?}");
        }
    }

    #[test]
    fn classify_sanitises_every_field_it_keeps() {
        let secret = "s3cr3t~VALUE~that-must-never-be-logged";
        let body = serde_json::json!({
            "error": "invalid_client",
            "error_description": format!("AADSTS7000215: Invalid client secret '{secret}' \u{202e}(sent as s3cr3t%7EVALUE%7Ethat-must-never-be-logged)\r\nTrace ID: t"),
            "error_codes": [7000215],
            "trace_id": format!("{secret}\n"),
            "correlation_id": "x".repeat(10_000),
        })
        .to_string();
        let err = classify(401, body.as_bytes(), None, &[secret]);
        assert_eq!(err.reason, Reason::InvalidClient);
        for text in [
            Some(err.message.as_str()),
            err.oauth_error.as_deref(),
            err.trace_id.as_deref(),
            err.correlation_id.as_deref(),
        ]
        .into_iter()
        .flatten()
        {
            assert!(!text.contains("never-be-logged"), "{text}");
            assert!(
                !text.contains(['\u{1b}', '\u{202e}', '\r', '\n']),
                "{text:?}"
            );
            assert!(text.chars().count() <= MAX_TEXT_CHARS);
        }
        assert!(
            err.message
                .starts_with("AADSTS7000215: Invalid client secret '[REDACTED]'"),
            "{}",
            err.message
        );
        assert!(err.correlation_id.unwrap().chars().count() <= MAX_FIELD_CHARS);
        // A hostile `error` field: decided on as sent (unknown, so invalid_request), stored clean.
        let body = serde_json::json!({ "error": format!("\u{1b}]0;x\u{7}{secret}") }).to_string();
        let err = classify(400, body.as_bytes(), None, &[secret]);
        assert_eq!(err.reason, Reason::InvalidRequest);
        assert_eq!(err.oauth_error.as_deref(), Some("?]0;x?[REDACTED]"));
        assert_eq!(err.message, "HTTP 400 ?]0;x?[REDACTED]");

        // Not an OAuth body: quoted, sanitised and capped, prefix included.
        let body = format!(
            "\u{1b}[2J\u{1b}]0;pwned\u{7}{}{secret}",
            "server exploded ".repeat(700)
        );
        let err = classify(500, body.as_bytes(), None, &[secret]);
        assert!(
            err.message
                .starts_with("HTTP 500 with a non-OAuth body: [2J ]0;pwned server exploded"),
            "{}",
            err.message
        );
        assert!(err.message.chars().count() <= MAX_TEXT_CHARS);
        assert!(!err.message.contains('\u{1b}'));
        let err = classify(502, b" \r\n\x1b ", None, &[]);
        assert_eq!(err.message, "HTTP 502 with an empty body");
        let err = classify(400, br#"{"error":"\u001b"}"#, None, &[]);
        assert_eq!(err.message, "HTTP 400 ?");
        assert_eq!(err.oauth_error.as_deref(), Some("?"));
        let err = classify(400, br#"{"error":" \r\n "}"#, None, &[]);
        assert_eq!(err.message, "HTTP 400");
        assert_eq!(err.oauth_error, None);
    }

    #[test]
    fn error_codes_keep_what_rfc_6749_allows_and_no_secret() {
        let code = |raw: &str| error_code(raw, &["hunter22~secret"]);
        // Every registered code, RFC 8707's included, passes untouched.
        for kept in [
            "invalid_request",
            "invalid_client",
            "invalid_grant",
            "unauthorized_client",
            "unsupported_grant_type",
            "invalid_scope",
            "invalid_target",
            "temporarily_unavailable",
            "unsupported_response_type",
            "!#$%&'()*+,-./0123456789:;<=>?@AZ[]^_`az{|}~",
        ] {
            assert_eq!(code(kept), kept);
        }
        // Outside %x20-21 / %x23-5B / %x5D-7E (and the space): one `?` each; ends trimmed.
        assert_eq!(code(" \tinvalid_target\r\n"), "invalid_target");
        assert_eq!(code("a\"b\\c d\u{1b}e\u{202e}fé漢"), "a?b?c?d?e?f??");
        // The secret, as sent and as reflected, and a token, whatever surrounds them.
        assert_eq!(code("hunter22~secret"), REDACTED);
        assert_eq!(code("x\u{7}HUNTER22%7Esecret\u{7}"), "x?[REDACTED]?");
        assert_eq!(code(JWT), REDACTED);
        // A secret rebuilt by the `?` of a control is redacted too.
        assert_eq!(error_code("ab\u{1}cd?ef", &["ab?cd?ef"]), REDACTED);
        // Capped without a character outside the set.
        let long = code(&"invalid:".repeat(100));
        assert_eq!(long.chars().count(), MAX_ERROR_CODE_CHARS);
        assert!(long.chars().all(is_error_code_char), "{long}");
    }
}
