//! Entra's error table, AADSTS code → (HTTP status, OAuth `error`, text), and the error body
//! every rejection carries (reference §2.1 and §2.2).

use axum::http::StatusCode;
use serde::Serialize;

use super::wire::random_guid;

/// One row of Entra's error table.
struct Entry {
    /// The AADSTS number.
    code: u32,
    /// The HTTP status Entra answers with.
    status: StatusCode,
    /// The OAuth `error` field.
    error: &'static str,
    /// The `error_description` text after `AADSTS{code}: `, with placeholders.
    text: &'static str,
}

/// The simulator's error table, behind [`catalogue`], grouped as the reference groups the codes
/// (credentials, app registration and tenant, request shape, policy, transient). Where the
/// reference marks a status or `error` as unconfirmed or gives none, the choice is noted next to
/// the entry.
const ENTRIES: &[Entry] = &[
    // Credentials.
    Entry {
        code: 7000215,
        status: StatusCode::UNAUTHORIZED,
        error: "invalid_client",
        text: "Invalid client secret provided. Ensure the secret being sent in the request is the \
            client secret value, not the client secret ID, for a secret added to app \
            '{client_id}'.",
    },
    Entry {
        code: 7000222,
        status: StatusCode::UNAUTHORIZED,
        error: "invalid_client",
        text: "The provided client secret keys for app '{client_id}' are expired. Visit the Azure \
            portal to create new keys for your app: https://aka.ms/NewClientSecret, or consider \
            using certificate credentials for added security: https://aka.ms/certCreds.",
    },
    // 401 is unconfirmed ("likely 401" in the reference).
    Entry {
        code: 7000218,
        status: StatusCode::UNAUTHORIZED,
        error: "invalid_client",
        text: "The request body must contain the following parameter: 'client_assertion' or \
            'client_secret'.",
    },
    // 401 is unconfirmed, as for 7000218.
    Entry {
        code: 7000216,
        status: StatusCode::UNAUTHORIZED,
        error: "invalid_client",
        text: "'client_assertion', 'client_secret' or 'request' is required for the \
            'client_credentials' grant type.",
    },
    // 401 by analogy with 70002/50012, as the reference suggests.
    Entry {
        code: 700027,
        status: StatusCode::UNAUTHORIZED,
        error: "invalid_client",
        text: "Client assertion failed signature validation.",
    },
    // 401 by analogy with 700027.
    Entry {
        code: 700024,
        status: StatusCode::UNAUTHORIZED,
        error: "invalid_client",
        text: "Client assertion is not within its valid time range.",
    },
    // Not in the reference: the text is from the Azure SDKs' troubleshooting guides for
    // client assertions; `invalid_client` and 401 by analogy with 700027.
    Entry {
        code: 700021,
        status: StatusCode::UNAUTHORIZED,
        error: "invalid_client",
        text: "Client assertion application identifier doesn't match 'client_id' parameter. Review \
            the documentation at \
            https://learn.microsoft.com/entra/identity-platform/certificate-credentials .",
    },
    // Not in the reference: text from the same guides; status as for 700021.
    Entry {
        code: 700023,
        status: StatusCode::UNAUTHORIZED,
        error: "invalid_client",
        text: "Client assertion audience claim does not match Realm issuer. Review the \
            documentation at \
            https://learn.microsoft.com/entra/identity-platform/certificate-credentials .",
    },
    // Not in the reference: Entra's text for a garbled assertion or federated token (the
    // Azure SDK guides; `az login --federated-token` prints it). `error` and status
    // unconfirmed; 400 `invalid_request` as for other malformed requests.
    Entry {
        code: 50027,
        status: StatusCode::BAD_REQUEST,
        error: "invalid_request",
        text: "JWT token is invalid or malformed.",
    },
    // Answered through IMDS for a resource that is not an App ID URI (reference §5.1).
    Entry {
        code: 50001,
        status: StatusCode::BAD_REQUEST,
        error: "invalid_resource",
        text: "The application named {resource} was not found in the tenant named {tenant}. \
            This can happen if the application has not been installed by the administrator \
            of the tenant or consented to by any user in the tenant. You might have sent your \
            authentication request to the wrong tenant.",
    },
    // Observed both as 400 invalid_request and 401 unauthorized_client; the first is used.
    // Newer Entra may name the mismatching field (700211 issuer, 700213 subject; reference
    // §2.2, unconfirmed); the simulator answers every mismatch with 70021.
    Entry {
        code: 70021,
        status: StatusCode::BAD_REQUEST,
        error: "invalid_request",
        text: "No matching federated identity record found for presented assertion.",
    },
    // App registration and tenant.
    Entry {
        code: 700016,
        status: StatusCode::BAD_REQUEST,
        error: "unauthorized_client",
        text: "Application with identifier '{client_id}' was not found in the directory \
            '{tenant}'. This can happen if the application has not been installed by the \
            administrator of the tenant or consented to by any user in the tenant. You may \
            have sent your authentication request to the wrong tenant.",
    },
    // Status unconfirmed; 400 like 700016.
    Entry {
        code: 7000112,
        status: StatusCode::BAD_REQUEST,
        error: "unauthorized_client",
        text: "Application '{client_id}' is disabled.",
    },
    Entry {
        code: 90002,
        status: StatusCode::BAD_REQUEST,
        error: "invalid_request",
        text: "Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID and \
            are signing into the correct cloud. Check with your subscription administrator, \
            this may happen if there are no active subscriptions for the tenant.",
    },
    Entry {
        code: 900023,
        status: StatusCode::BAD_REQUEST,
        error: "invalid_request",
        text: "Specified tenant identifier '{tenant}' is neither a valid DNS name, nor a valid \
            external domain.",
    },
    // Status unconfirmed; 400 like the other tenant-selection errors.
    Entry {
        code: 9001023,
        status: StatusCode::BAD_REQUEST,
        error: "invalid_request",
        text: "The grant type isn't supported over the /common or /consumers endpoints. Please \
            use the /organizations or tenant-specific endpoint.",
    },
    // `error` and status unconfirmed; used for `/organizations`, where client credentials
    // cannot tell which tenant is meant.
    Entry {
        code: 90019,
        status: StatusCode::BAD_REQUEST,
        error: "invalid_request",
        text: "No tenant-identifying information found in either the request or implied by any \
            provided credentials.",
    },
    // `error` and status unconfirmed.
    Entry {
        code: 50049,
        status: StatusCode::BAD_REQUEST,
        error: "invalid_instance",
        text: "Unknown or invalid instance.",
    },
    // Status unconfirmed; 400 like other scope/resource errors.
    Entry {
        code: 500011,
        status: StatusCode::BAD_REQUEST,
        error: "invalid_resource",
        text: "The resource principal named {resource} was not found in the tenant named \
            {tenant}. This can happen if the application has not been installed by the \
            administrator of the tenant or consented to by any user in the tenant. You might \
            have sent your authentication request to the wrong tenant.",
    },
    // Request shape.
    Entry {
        code: 1002012,
        status: StatusCode::BAD_REQUEST,
        error: "invalid_scope",
        text: "The provided value for scope {scope} is not valid. Client credential flows must \
            have a scope value with /.default suffixed to the resource identifier (application \
            ID URI).",
    },
    Entry {
        code: 70011,
        status: StatusCode::BAD_REQUEST,
        error: "invalid_scope",
        text: "The provided value for the input parameter 'scope' is not valid. The scope {scope} \
            is not valid.",
    },
    Entry {
        code: 700022,
        status: StatusCode::BAD_REQUEST,
        error: "invalid_scope",
        text: "The provided value for the input parameter scope is not valid because it contains \
            more than one resource. Scope {scope} is not valid.",
    },
    Entry {
        code: 901002,
        status: StatusCode::BAD_REQUEST,
        error: "invalid_request",
        text: "The 'resource' request parameter is not supported.",
    },
    Entry {
        code: 900144,
        status: StatusCode::BAD_REQUEST,
        error: "invalid_request",
        text: "The request body must contain the following parameter: '{parameter}'.",
    },
    Entry {
        code: 70003,
        status: StatusCode::BAD_REQUEST,
        error: "unsupported_grant_type",
        text: "The app requested an unsupported grant type '{grant_type}'.",
    },
    Entry {
        code: 900561,
        status: StatusCode::BAD_REQUEST,
        error: "invalid_request",
        text: "The endpoint only accepts POST, OPTIONS requests. Received a {method} request.",
    },
    // Policy. Statuses unconfirmed; 400 as for other `invalid_grant` answers.
    Entry {
        code: 53003,
        status: StatusCode::BAD_REQUEST,
        error: "invalid_grant",
        text: "Access has been blocked by Conditional Access policies. The access policy does not \
            allow token issuance.",
    },
    // `error` and status unconfirmed.
    Entry {
        code: 50196,
        status: StatusCode::BAD_REQUEST,
        error: "invalid_request",
        text: "The server terminated an operation because it encountered a client request loop. \
            Please contact your app vendor.",
    },
    // Transient. The reference names these retryable without giving a status; 503 with
    // `temporarily_unavailable` is what OAuth (RFC 6749 §5.2 / §4.1.2.1) pairs with
    // that error, and makes every retry policy in §2.4 retry.
    Entry {
        code: 50000,
        status: StatusCode::INTERNAL_SERVER_ERROR,
        error: "server_error",
        text: "There was an error issuing a token or an issue with our sign-in service.",
    },
    Entry {
        code: 50033,
        status: StatusCode::SERVICE_UNAVAILABLE,
        error: "temporarily_unavailable",
        text: "A transient error has occurred. Please try again.",
    },
    Entry {
        code: 90006,
        status: StatusCode::SERVICE_UNAVAILABLE,
        error: "temporarily_unavailable",
        text: "An error occurred when the server tried to reach an external service. Please try \
            again.",
    },
    Entry {
        code: 90024,
        status: StatusCode::SERVICE_UNAVAILABLE,
        error: "temporarily_unavailable",
        text: "The request budget for this tenant has been exceeded. Please try again.",
    },
    Entry {
        code: 90033,
        status: StatusCode::SERVICE_UNAVAILABLE,
        error: "temporarily_unavailable",
        text: "A transient error has occurred: the directory service is unavailable. Please try \
            again.",
    },
    Entry {
        code: 90090,
        status: StatusCode::SERVICE_UNAVAILABLE,
        error: "temporarily_unavailable",
        text: "A transient error has occurred while calling the directory graph. Please try \
            again.",
    },
    // Tenant throttling: 429, the status Entra uses when it throttles (§2.3).
    Entry {
        code: 90055,
        status: StatusCode::TOO_MANY_REQUESTS,
        error: "temporarily_unavailable",
        text: "The service is throttling requests from this tenant because it has received too \
            many incoming requests. Please try again later.",
    },
];

/// The answer to a code the table does not have.
const UNKNOWN: Entry = Entry {
    code: 0,
    status: StatusCode::BAD_REQUEST,
    error: "invalid_request",
    text: "The request was rejected by the simulated identity service.",
};

/// Every AADSTS code [`catalogue`] has an entry for, in the table's order; any other code gets
/// a generic `invalid_request` answer.
pub const CATALOGUE_CODES: &[u32] = &codes::<{ ENTRIES.len() }>();

/// The codes of [`ENTRIES`], computed when compiling so the list cannot drift from the table.
const fn codes<const N: usize>() -> [u32; N] {
    let mut codes = [0; N];
    let mut index = 0;
    while index < N {
        codes[index] = ENTRIES[index].code;
        index += 1;
    }
    codes
}

/// The simulator's error table: AADSTS code → (HTTP status, OAuth `error`, description text).
///
/// Codes, `error` strings and statuses follow the protocol reference §2.2. The text may hold
/// placeholders (`{tenant}`, `{client_id}`, `{parameter}`, `{grant_type}`, `{scope}`,
/// `{resource}`, `{method}`) that the simulator fills from the request. Codes not in
/// [`CATALOGUE_CODES`] get HTTP 400 `invalid_request`.
pub fn catalogue(code: u32) -> (StatusCode, &'static str, &'static str) {
    let entry = ENTRIES
        .iter()
        .find(|entry| entry.code == code)
        .unwrap_or(&UNKNOWN);
    (entry.status, entry.error, entry.text)
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
    fn every_code_has_one_entry() {
        let mut codes = CATALOGUE_CODES.to_vec();
        assert_eq!(codes.len(), ENTRIES.len());
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), ENTRIES.len(), "a code listed twice");
        assert!(
            !codes.contains(&UNKNOWN.code),
            "the fallback's code is not a real one"
        );
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
