//! Entra's error table, AADSTS code → (HTTP status, OAuth `error`, text), and the error body
//! every rejection carries (reference §2.1 and §2.2).

use axum::http::StatusCode;
use serde::Serialize;

use super::wire::random_guid;

/// Every AADSTS code [`catalogue`] has an entry for; any other code gets a generic
/// `invalid_request` answer.
pub const CATALOGUE_CODES: &[u32] = &[
    7000215, 7000222, 7000218, 7000216, 700016, 90002, 900023, 500011, 700027, 700024, 70021,
    700021, 700023, 50027, 50001, 1002012, 70011, 700022, 901002, 9001023, 900144, 70003, 900561,
    50049, 90019, 7000112, 53003, 50196, 50000, 50033, 90006, 90024, 90033, 90090, 90055,
];

/// The simulator's error table: AADSTS code → (HTTP status, OAuth `error`, description text).
///
/// Codes, `error` strings and statuses follow the protocol reference §2.2. Where the reference
/// marks a status or `error` as unconfirmed or gives none, the choice is noted next to the
/// entry. The text may hold placeholders (`{tenant}`, `{client_id}`, `{parameter}`,
/// `{grant_type}`, `{scope}`, `{resource}`, `{method}`) that the simulator fills from the
/// request. Codes not in [`CATALOGUE_CODES`] get HTTP 400 `invalid_request`.
pub fn catalogue(code: u32) -> (StatusCode, &'static str, &'static str) {
    const BAD_REQUEST: StatusCode = StatusCode::BAD_REQUEST;
    const UNAUTHORIZED: StatusCode = StatusCode::UNAUTHORIZED;
    const UNAVAILABLE: StatusCode = StatusCode::SERVICE_UNAVAILABLE;
    match code {
        // Credentials.
        7000215 => (
            UNAUTHORIZED,
            "invalid_client",
            "Invalid client secret provided. Ensure the secret being sent in the request is the \
             client secret value, not the client secret ID, for a secret added to app \
             '{client_id}'.",
        ),
        7000222 => (
            UNAUTHORIZED,
            "invalid_client",
            "The provided client secret keys for app '{client_id}' are expired. Visit the Azure \
             portal to create new keys for your app: https://aka.ms/NewClientSecret, or consider \
             using certificate credentials for added security: https://aka.ms/certCreds.",
        ),
        // 401 is unconfirmed ("likely 401" in the reference).
        7000218 => (
            UNAUTHORIZED,
            "invalid_client",
            "The request body must contain the following parameter: 'client_assertion' or \
             'client_secret'.",
        ),
        // 401 is unconfirmed, as for 7000218.
        7000216 => (
            UNAUTHORIZED,
            "invalid_client",
            "'client_assertion', 'client_secret' or 'request' is required for the \
             'client_credentials' grant type.",
        ),
        // 401 by analogy with 70002/50012, as the reference suggests.
        700027 => (
            UNAUTHORIZED,
            "invalid_client",
            "Client assertion failed signature validation.",
        ),
        // 401 by analogy with 700027.
        700024 => (
            UNAUTHORIZED,
            "invalid_client",
            "Client assertion is not within its valid time range.",
        ),
        // Not in the reference: the text is from the Azure SDKs' troubleshooting guides for
        // client assertions; `invalid_client` and 401 by analogy with 700027.
        700021 => (
            UNAUTHORIZED,
            "invalid_client",
            "Client assertion application identifier doesn't match 'client_id' parameter. Review \
             the documentation at \
             https://learn.microsoft.com/entra/identity-platform/certificate-credentials .",
        ),
        // Not in the reference: text from the same guides; status as for 700021.
        700023 => (
            UNAUTHORIZED,
            "invalid_client",
            "Client assertion audience claim does not match Realm issuer. Review the \
             documentation at \
             https://learn.microsoft.com/entra/identity-platform/certificate-credentials .",
        ),
        // Not in the reference: Entra's text for a garbled assertion or federated token (the
        // Azure SDK guides; `az login --federated-token` prints it). `error` and status
        // unconfirmed; 400 `invalid_request` as for other malformed requests.
        50027 => (
            BAD_REQUEST,
            "invalid_request",
            "JWT token is invalid or malformed.",
        ),
        // Answered through IMDS for a resource that is not an App ID URI (reference §5.1).
        50001 => (
            BAD_REQUEST,
            "invalid_resource",
            "The application named {resource} was not found in the tenant named {tenant}. \
             This can happen if the application has not been installed by the administrator \
             of the tenant or consented to by any user in the tenant. You might have sent your \
             authentication request to the wrong tenant.",
        ),
        // Observed both as 400 invalid_request and 401 unauthorized_client; the first is used.
        // Newer Entra may name the mismatching field (700211 issuer, 700213 subject; reference
        // §2.2, unconfirmed); the simulator answers every mismatch with 70021.
        70021 => (
            BAD_REQUEST,
            "invalid_request",
            "No matching federated identity record found for presented assertion.",
        ),
        // App registration and tenant.
        700016 => (
            BAD_REQUEST,
            "unauthorized_client",
            "Application with identifier '{client_id}' was not found in the directory \
             '{tenant}'. This can happen if the application has not been installed by the \
             administrator of the tenant or consented to by any user in the tenant. You may \
             have sent your authentication request to the wrong tenant.",
        ),
        // Status unconfirmed; 400 like 700016.
        7000112 => (
            BAD_REQUEST,
            "unauthorized_client",
            "Application '{client_id}' is disabled.",
        ),
        90002 => (
            BAD_REQUEST,
            "invalid_request",
            "Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID and \
             are signing into the correct cloud. Check with your subscription administrator, \
             this may happen if there are no active subscriptions for the tenant.",
        ),
        900023 => (
            BAD_REQUEST,
            "invalid_request",
            "Specified tenant identifier '{tenant}' is neither a valid DNS name, nor a valid \
             external domain.",
        ),
        // Status unconfirmed; 400 like the other tenant-selection errors.
        9001023 => (
            BAD_REQUEST,
            "invalid_request",
            "The grant type isn't supported over the /common or /consumers endpoints. Please \
             use the /organizations or tenant-specific endpoint.",
        ),
        // `error` and status unconfirmed; used for `/organizations`, where client credentials
        // cannot tell which tenant is meant.
        90019 => (
            BAD_REQUEST,
            "invalid_request",
            "No tenant-identifying information found in either the request or implied by any \
             provided credentials.",
        ),
        // `error` and status unconfirmed.
        50049 => (
            BAD_REQUEST,
            "invalid_instance",
            "Unknown or invalid instance.",
        ),
        // Status unconfirmed; 400 like other scope/resource errors.
        500011 => (
            BAD_REQUEST,
            "invalid_resource",
            "The resource principal named {resource} was not found in the tenant named \
             {tenant}. This can happen if the application has not been installed by the \
             administrator of the tenant or consented to by any user in the tenant. You might \
             have sent your authentication request to the wrong tenant.",
        ),
        // Request shape.
        1002012 => (
            BAD_REQUEST,
            "invalid_scope",
            "The provided value for scope {scope} is not valid. Client credential flows must \
             have a scope value with /.default suffixed to the resource identifier (application \
             ID URI).",
        ),
        70011 => (
            BAD_REQUEST,
            "invalid_scope",
            "The provided value for the input parameter 'scope' is not valid. The scope {scope} \
             is not valid.",
        ),
        700022 => (
            BAD_REQUEST,
            "invalid_scope",
            "The provided value for the input parameter scope is not valid because it contains \
             more than one resource. Scope {scope} is not valid.",
        ),
        901002 => (
            BAD_REQUEST,
            "invalid_request",
            "The 'resource' request parameter is not supported.",
        ),
        900144 => (
            BAD_REQUEST,
            "invalid_request",
            "The request body must contain the following parameter: '{parameter}'.",
        ),
        70003 => (
            BAD_REQUEST,
            "unsupported_grant_type",
            "The app requested an unsupported grant type '{grant_type}'.",
        ),
        900561 => (
            BAD_REQUEST,
            "invalid_request",
            "The endpoint only accepts POST, OPTIONS requests. Received a {method} request.",
        ),
        // Policy. Statuses unconfirmed; 400 as for other `invalid_grant` answers.
        53003 => (
            BAD_REQUEST,
            "invalid_grant",
            "Access has been blocked by Conditional Access policies. The access policy does not \
             allow token issuance.",
        ),
        // `error` and status unconfirmed.
        50196 => (
            BAD_REQUEST,
            "invalid_request",
            "The server terminated an operation because it encountered a client request loop. \
             Please contact your app vendor.",
        ),
        // Transient. The reference names these retryable without giving a status; 503 with
        // `temporarily_unavailable` is what OAuth (RFC 6749 §5.2 / §4.1.2.1) pairs with
        // that error, and makes every retry policy in §2.4 retry.
        50000 => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            "There was an error issuing a token or an issue with our sign-in service.",
        ),
        50033 => (
            UNAVAILABLE,
            "temporarily_unavailable",
            "A transient error has occurred. Please try again.",
        ),
        90006 => (
            UNAVAILABLE,
            "temporarily_unavailable",
            "An error occurred when the server tried to reach an external service. Please try \
             again.",
        ),
        90024 => (
            UNAVAILABLE,
            "temporarily_unavailable",
            "The request budget for this tenant has been exceeded. Please try again.",
        ),
        90033 => (
            UNAVAILABLE,
            "temporarily_unavailable",
            "A transient error has occurred: the directory service is unavailable. Please try \
             again.",
        ),
        90090 => (
            UNAVAILABLE,
            "temporarily_unavailable",
            "A transient error has occurred while calling the directory graph. Please try \
             again.",
        ),
        // Tenant throttling: 429, the status Entra uses when it throttles (§2.3).
        90055 => (
            StatusCode::TOO_MANY_REQUESTS,
            "temporarily_unavailable",
            "The service is throttling requests from this tenant because it has received too \
             many incoming requests. Please try again later.",
        ),
        _ => (
            BAD_REQUEST,
            "invalid_request",
            "The request was rejected by the simulated identity service.",
        ),
    }
}

/// The §2.1 error body.
#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    error_description: String,
    error_codes: [u32; 1],
    timestamp: &'a str,
    trace_id: &'a str,
    correlation_id: &'a str,
    error_uri: String,
}

/// Serialises an Entra error with fresh trace and correlation ids.
pub(super) fn error_body(
    error: &str,
    code: u32,
    text: &str,
    placeholders: &[(&'static str, String)],
    client_request_id: Option<&str>,
) -> Vec<u8> {
    let timestamp = chrono::Utc::now().format("%Y-%m-%d %H:%M:%SZ").to_string();
    let trace_id = random_guid();
    let correlation_id = client_request_id.map_or_else(random_guid, str::to_owned);
    let body = ErrorBody {
        error,
        error_description: format!(
            "AADSTS{code}: {}\r\nTrace ID: {trace_id}\r\nCorrelation ID: {correlation_id}\r\n\
             Timestamp: {timestamp}",
            render(text, placeholders)
        ),
        error_codes: [code],
        timestamp: &timestamp,
        trace_id: &trace_id,
        correlation_id: &correlation_id,
        error_uri: format!("https://login.microsoftonline.com/error?code={code}"),
    };
    // Serialising a struct of strings and integers cannot fail.
    serde_json::to_vec(&body).unwrap_or_default()
}

/// Replaces `{name}` placeholders; the first value given for a name wins.
fn render(text: &str, placeholders: &[(&'static str, String)]) -> String {
    let mut rendered = String::with_capacity(text.len() + 64);
    let mut rest = text;
    while let Some(start) = rest.find('{') {
        rendered.push_str(&rest[..start]);
        let after = &rest[start + 1..];
        let value = after.find('}').and_then(|end| {
            let name = &after[..end];
            placeholders
                .iter()
                .find(|(known, _)| *known == name)
                .map(|(_, value)| (value, end))
        });
        match value {
            Some((value, end)) => {
                rendered.push_str(value);
                rest = &after[end + 1..];
            }
            None => {
                rendered.push('{');
                rest = after;
            }
        }
    }
    rendered.push_str(rest);
    rendered
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalogue_matches_the_reference_statuses() {
        let expected: &[(u32, u16, &str)] = &[
            (7000215, 401, "invalid_client"),
            (7000222, 401, "invalid_client"),
            (7000218, 401, "invalid_client"),
            (700016, 400, "unauthorized_client"),
            (90002, 400, "invalid_request"),
            (900023, 400, "invalid_request"),
            (500011, 400, "invalid_resource"),
            (1002012, 400, "invalid_scope"),
            (70011, 400, "invalid_scope"),
            (700022, 400, "invalid_scope"),
            (901002, 400, "invalid_request"),
            (900144, 400, "invalid_request"),
            (50033, 503, "temporarily_unavailable"),
            (90055, 429, "temporarily_unavailable"),
            (700027, 401, "invalid_client"),
            (700024, 401, "invalid_client"),
            (700021, 401, "invalid_client"),
            (700023, 401, "invalid_client"),
            (70021, 400, "invalid_request"),
            (50027, 400, "invalid_request"),
            (50001, 400, "invalid_resource"),
        ];
        for &(code, status, error) in expected {
            let (actual_status, actual_error, text) = catalogue(code);
            assert_eq!(
                (actual_status.as_u16(), actual_error),
                (status, error),
                "AADSTS{code}"
            );
            assert!(!text.is_empty());
        }
        for &code in CATALOGUE_CODES {
            let (status, error, _) = catalogue(code);
            assert!(
                status.is_client_error() || status.is_server_error(),
                "AADSTS{code}"
            );
            assert!(!error.is_empty());
        }
        assert_eq!(catalogue(12345).1, "invalid_request");
    }

    #[test]
    fn render_fills_known_placeholders_and_keeps_others() {
        let placeholders = [("tenant", "t1".to_owned()), ("tenant", "t2".to_owned())];
        assert_eq!(
            render("Tenant '{tenant}' {other} {", &placeholders),
            "Tenant 't1' {other} {"
        );
    }
}
