//! The managed identity endpoints of a simulated Azure host (reference §5):
//! `GET /metadata/identity/oauth2/token` like IMDS on VMs, scale sets and AKS nodes, and
//! `GET /msi/token` like App Service, Functions and Azure Automation. Both share one configuration
//! ([`SimManagedIdentity`]), one fault script and one set of counters.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::digest;
use axum::extract::{Request, State};
use axum::http::header::{self, HeaderMap, HeaderValue};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::Shared;
use super::access_token::{NOT_BEFORE_BACKDATE_SECS, jwt_shaped, unique_token_id};
use super::catalogue::{catalogue, error_body};
use super::wire::{
    REDACTED, client_key, format_guid, json_headers, parse_form, random_base64url, redacted_headers,
};

/// The client id the simulated host's system-assigned managed identity reports, so tests can
/// tell it from user-assigned identities in `client_id` fields and token claims.
pub const SIM_SYSTEM_ASSIGNED_CLIENT_ID: &str = "3c6f0e1d-9b2a-4c8d-8e7f-6a5b4c3d2e1f";

/// Headers whose values are managed identity credentials: App Service's `X-IDENTITY-HEADER`,
/// its 2017 predecessor `secret`, and any bearer or basic credential.
const SECRET_MANAGED_IDENTITY_HEADERS: &[&str] = &["x-identity-header", "secret", "authorization"];

/// The subscription that holds the simulated host's user-assigned identities, the first part
/// of their Azure resource ids; the simulated key vault lives in it too (its resource id appears
/// in Key Vault's RBAC refusals).
pub(super) const MANAGED_IDENTITY_SUBSCRIPTION: &str = "5a1e0c3d-7b2f-4e6a-9d8c-1f0e2d3c4b5a";

/// The tenant that owns the simulated host's managed identities; their tokens are issued by
/// `{authority_host}/{this}/v2.0`. The simulated key vault belongs to it until
/// [`SimEntra::set_key_vault_tenant`](super::SimEntra::set_key_vault_tenant) says otherwise, as
/// a vault and the identities that read it usually share a directory.
pub(super) const MANAGED_IDENTITY_TENANT: &str = "0d7c1a2b-3c4d-4e5f-8a9b-0c1d2e3f4a5b";

/// The oldest IMDS `api-version` with the identity endpoint (reference §5.1).
const OLDEST_IMDS_API_VERSION: &str = "2018-02-01";

/// The App Service `api-version` that uses `X-IDENTITY-HEADER` (reference §5.2); the older
/// `2017-09-01` protocol (header `secret`, dates as text) is not simulated.
const APP_SERVICE_API_VERSION: &str = "2019-08-01";

/// The managed identities of the simulated Azure host behind the IMDS and App Service
/// endpoints (reference §5).
///
/// Tokens are JWT-shaped with `aud` = the requested resource, `appid` = the identity's client
/// id, and `iss` and `sub` stable per identity, so a test can register a
/// [`SimFederatedCredential`](super::SimFederatedCredential) for an identity's
/// `api://AzureADTokenExchange` token and exercise the "managed identity as federated
/// credential" flow.
#[derive(Clone)]
pub struct SimManagedIdentity {
    /// Whether the host has a system-assigned identity. It answers requests without a
    /// selector, with client id [`SIM_SYSTEM_ASSIGNED_CLIENT_ID`].
    pub system_assigned: bool,
    /// Client ids of the user-assigned identities attached to the host, chosen by client id
    /// (`client_id`), object id (`object_id`, or `principal_id` on App Service; see
    /// [`managed_identity_object_id`]) or Azure resource id (`msi_res_id` on IMDS, `mi_res_id`
    /// on App Service; see [`managed_identity_resource_id`]). Without a selector and without a
    /// system-assigned identity, a single user-assigned identity answers, as IMDS does.
    pub user_assigned: Vec<String>,
    /// Lifetime of issued tokens; real managed identity tokens live about 24 hours.
    pub lifetime: Duration,
    /// The `IDENTITY_HEADER` App Service gives the process; App Service requests must echo it
    /// in `X-IDENTITY-HEADER`. Empty accepts no App Service request.
    pub identity_header: String,
}

impl std::fmt::Debug for SimManagedIdentity {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("SimManagedIdentity")
            .field("system_assigned", &self.system_assigned)
            .field("user_assigned", &self.user_assigned)
            .field("lifetime", &self.lifetime)
            .field("identity_header", &REDACTED)
            .finish()
    }
}

/// The two simulated managed identity token endpoints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ManagedIdentityEndpoint {
    /// `GET /metadata/identity/oauth2/token`: the Azure Instance Metadata Service of VMs,
    /// scale sets and AKS nodes.
    Imds,
    /// `GET /msi/token`: App Service and Functions (`IDENTITY_ENDPOINT`).
    AppService,
}

/// What a client sent in its latest managed identity token request.
#[derive(Clone, Debug)]
pub struct SimManagedIdentityRequest {
    /// Which endpoint was called.
    pub endpoint: ManagedIdentityEndpoint,
    /// The decoded query parameters in the order sent.
    pub query: Vec<(String, String)>,
    /// The request headers, names in lower case; `X-IDENTITY-HEADER`, `secret` and
    /// `Authorization` values are replaced by `[REDACTED]`.
    pub headers: Vec<(String, String)>,
}

pub(super) async fn imds_token(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    managed_identity_token(&shared, ManagedIdentityEndpoint::Imds, &request)
}

pub(super) async fn app_service_token(
    State(shared): State<Arc<Shared>>,
    request: Request,
) -> Response {
    managed_identity_token(&shared, ManagedIdentityEndpoint::AppService, &request)
}

/// A managed identity token request: method, headers and decoded query.
struct ManagedIdentityCall<'a> {
    /// Decides the checks, the selector names and the body shape.
    endpoint: ManagedIdentityEndpoint,
    /// Anything but `GET` is refused with 405.
    method: &'a Method,
    /// `Metadata` (both) and `X-IDENTITY-HEADER` (App Service) prove the caller is local.
    headers: &'a HeaderMap,
    /// The decoded query string: all parameters travel there.
    query: Vec<(String, String)>,
}

impl ManagedIdentityCall<'_> {
    /// The first value of a query parameter, if not empty.
    fn param(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
            .filter(|value| !value.is_empty())
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .map(str::trim)
    }
}

/// A managed identity request that passed validation.
struct ManagedIdentityGrant {
    /// The chosen identity's client id (`appid` and `client_id` of the answer).
    client_id: String,
    /// The requested resource, echoed and used as `aud`.
    resource: String,
    /// The token's lifetime, from [`SimManagedIdentity::lifetime`].
    lifetime: Duration,
}

/// Counts and records the request, plays the fault script, then validates and answers. The
/// body is never read: both endpoints take only `GET` parameters.
fn managed_identity_token(
    shared: &Shared,
    endpoint: ManagedIdentityEndpoint,
    request: &Request,
) -> Response {
    let call = ManagedIdentityCall {
        endpoint,
        method: request.method(),
        headers: request.headers(),
        query: request
            .uri()
            .query()
            .map_or_else(Vec::new, |query| parse_form(query.as_bytes())),
    };
    let recorded = SimManagedIdentityRequest {
        endpoint,
        query: call.query.clone(),
        headers: redacted_headers(call.headers, SECRET_MANAGED_IDENTITY_HEADERS),
    };
    let (fault, identity) = {
        let mut state = shared.managed_identity();
        state.requests += 1;
        state.last_request = Some(recorded);
        (state.script.pop_front(), state.identity.clone())
    };
    let response = match fault {
        Some(status) => managed_identity_fault(status),
        None => match validate_managed_identity(&call, identity.as_deref()) {
            Ok(grant) => {
                shared.managed_identity().issued += 1;
                managed_identity_success(shared, endpoint, &grant)
            }
            Err(response) => response,
        },
    };
    tracing::debug!(
        endpoint = ?endpoint,
        fault = ?fault,
        status = response.status().as_u16(),
        "simulated managed identity token request"
    );
    response
}

/// The checks IMDS (reference §5.1) or App Service (§5.2) make, in order: the method, the
/// caller's proof that it is local, the resource, the identity named; a failure is the finished
/// response.
fn validate_managed_identity(
    call: &ManagedIdentityCall<'_>,
    identity: Option<&SimManagedIdentity>,
) -> Result<ManagedIdentityGrant, Response> {
    if *call.method != Method::GET {
        // IMDS documents 405 for other methods; the body is not documented.
        return Err(managed_identity_error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "Only GET requests are supported.",
        ));
    }
    let selectors = match call.endpoint {
        ManagedIdentityEndpoint::Imds => check_imds_caller(call)?,
        ManagedIdentityEndpoint::AppService => check_app_service_caller(call, identity)?,
    };
    let resource = requested_resource(call)?;
    let selector = one_selector(call, selectors)?;
    let (client_id, lifetime) = select_managed_identity(identity, selector).map_err(|message| {
        managed_identity_error(StatusCode::BAD_REQUEST, "invalid_request", message)
    })?;
    Ok(ManagedIdentityGrant {
        client_id,
        resource: resource.to_owned(),
        lifetime,
    })
}

/// IMDS's headers and `api-version`; the names of the parameters that choose an identity there.
fn check_imds_caller(call: &ManagedIdentityCall<'_>) -> Result<&'static [&'static str], Response> {
    // The SSRF guard: exactly `true`, as the reference requires of IMDS.
    if call.header("metadata") != Some("true") {
        return Err(metadata_missing());
    }
    // IMDS's text for a missing or unknown `api-version` on the identity endpoint is not in the
    // reference.
    if !call.param("api-version").is_some_and(is_imds_api_version) {
        return Err(unsupported_api_version());
    }
    Ok(&["client_id", "object_id", "msi_res_id"])
}

/// App Service's identity header, `Metadata` and `api-version`; the names of the parameters that
/// choose an identity there.
fn check_app_service_caller(
    call: &ManagedIdentityCall<'_>,
    identity: Option<&SimManagedIdentity>,
) -> Result<&'static [&'static str], Response> {
    // App Service has been seen answering a bad identity header with 401 (and 400 in older
    // versions, azure-sdk-for-js#11595); 401 says what is wrong. The body is not documented.
    let expected = identity
        .map(|identity| identity.identity_header.as_str())
        .filter(|expected| !expected.is_empty());
    if expected.is_none() || call.header("x-identity-header") != expected {
        return Err(managed_identity_error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "The X-IDENTITY-HEADER header is missing or does not match.",
        ));
    }
    // Azure Automation serves the same IDENTITY_ENDPOINT protocol and needs `Metadata: true`
    // too (MSAL sends it for that reason, as azure-identity does), so a client that leaves it
    // out works on App Service alone. Refused here so it cannot; the status and text of a real
    // refusal are not documented, IMDS's are used.
    if call.header("metadata") != Some("true") {
        return Err(metadata_missing());
    }
    if call.param("api-version") != Some(APP_SERVICE_API_VERSION) {
        return Err(unsupported_api_version());
    }
    Ok(&["client_id", "principal_id", "object_id", "mi_res_id"])
}

/// The `resource` parameter: an App ID URI, not a v2 scope.
fn requested_resource<'a>(call: &'a ManagedIdentityCall<'_>) -> Result<&'a str, Response> {
    let Some(resource) = call.param("resource") else {
        return Err(managed_identity_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "Required audience parameter not specified",
        ));
    };
    if resource.ends_with("/.default") {
        // The managed identity service relays Entra's error body here.
        let (status, error, text) = catalogue(50001);
        let placeholders = [
            ("resource", resource.to_owned()),
            ("tenant", MANAGED_IDENTITY_TENANT.to_owned()),
        ];
        let body = error_body(error, 50001, text, &placeholders, None);
        return Err((status, json_headers(), body).into_response());
    }
    Ok(resource)
}

/// The one parameter among `selectors` that names an identity, if any: two are refused.
fn one_selector<'a>(
    call: &'a ManagedIdentityCall<'_>,
    selectors: &[&'static str],
) -> Result<Option<(&'static str, &'a str)>, Response> {
    let mut given = selectors
        .iter()
        .filter_map(|&name| call.param(name).map(|value| (name, value)));
    let selector = given.next();
    if given.next().is_some() {
        return Err(managed_identity_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "Only one of client_id, object_id (principal_id) or the resource id may be given.",
        ));
    }
    Ok(selector)
}

/// The answer to a request without `Metadata: true`, the guard against server-side request
/// forgery.
fn metadata_missing() -> Response {
    managed_identity_error(
        StatusCode::BAD_REQUEST,
        "invalid_request",
        "Required metadata header not specified",
    )
}

/// The answer to a missing or unsupported `api-version`.
fn unsupported_api_version() -> Response {
    managed_identity_error(
        StatusCode::BAD_REQUEST,
        "invalid_request",
        "Required api-version parameter not specified or not supported",
    )
}

/// The identity a request names (by client id, object id or, for a user-assigned identity,
/// resource id), or the default one: the system-assigned identity, else a sole user-assigned
/// one.
fn select_managed_identity(
    identity: Option<&SimManagedIdentity>,
    selector: Option<(&str, &str)>,
) -> Result<(String, Duration), &'static str> {
    const NOT_FOUND: &str = "Identity not found";
    let Some(identity) = identity else {
        return Err(NOT_FOUND);
    };
    let system = identity
        .system_assigned
        .then_some(SIM_SYSTEM_ASSIGNED_CLIENT_ID);
    let mut candidates = system
        .into_iter()
        .chain(identity.user_assigned.iter().map(String::as_str));
    let chosen = match selector {
        None => match (system, identity.user_assigned.as_slice()) {
            (Some(system), _) => Some(system),
            (None, [only]) => Some(only.as_str()),
            (None, []) => None,
            // IMDS's text as commonly reported; not in the reference.
            (None, _) => {
                return Err(
                    "Multiple user assigned identities exist, please specify the clientId / \
                     resourceId of the identity in the token request",
                );
            }
        },
        Some(("client_id", wanted)) => {
            candidates.find(|client_id| client_id.eq_ignore_ascii_case(wanted))
        }
        Some(("object_id" | "principal_id", wanted)) => candidates
            .find(|client_id| managed_identity_object_id(client_id).eq_ignore_ascii_case(wanted)),
        // A system-assigned identity is named by the resource it belongs to (the VM), not by a
        // resource id of its own, so only user-assigned identities match. Azure resource ids
        // are case-insensitive.
        Some(("msi_res_id" | "mi_res_id", wanted)) => identity
            .user_assigned
            .iter()
            .map(String::as_str)
            .find(|client_id| managed_identity_resource_id(client_id).eq_ignore_ascii_case(wanted)),
        Some(_) => None,
    };
    chosen
        .map(|client_id| (client_id.to_owned(), identity.lifetime))
        .ok_or(NOT_FOUND)
}

/// `api-version` in the `YYYY-MM-DD` form, no older than the identity endpoint.
fn is_imds_api_version(version: &str) -> bool {
    version.len() == OLDEST_IMDS_API_VERSION.len()
        && version
            .bytes()
            .enumerate()
            .all(|(index, byte)| match index {
                4 | 7 => byte == b'-',
                _ => byte.is_ascii_digit(),
            })
        && version >= OLDEST_IMDS_API_VERSION
}

/// IMDS success body (reference §5.1): every value a string.
#[derive(Serialize)]
struct ImdsToken {
    access_token: String,
    refresh_token: &'static str,
    expires_in: String,
    expires_on: String,
    not_before: String,
    resource: String,
    token_type: &'static str,
    client_id: String,
}

/// App Service success body (reference §5.2): `expires_on` an epoch string, no `expires_in`.
#[derive(Serialize)]
struct AppServiceToken {
    access_token: String,
    expires_on: String,
    resource: String,
    token_type: &'static str,
    client_id: String,
    not_before: String,
}

fn managed_identity_success(
    shared: &Shared,
    endpoint: ManagedIdentityEndpoint,
    grant: &ManagedIdentityGrant,
) -> Response {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs());
    let lifetime = grant.lifetime.as_secs();
    let not_before = now.saturating_sub(NOT_BEFORE_BACKDATE_SECS);
    let expires_on = now + lifetime;
    let issuer = format!("{}/{MANAGED_IDENTITY_TENANT}/v2.0", shared.authority_host);
    let object_id = managed_identity_object_id(&grant.client_id);
    let serial = shared.serial.fetch_add(1, Ordering::Relaxed);
    let access_token = jwt_shaped(
        &shared.token_key,
        &serde_json::json!({
            "aud": grant.resource,
            "iss": issuer,
            "iat": not_before,
            "nbf": not_before,
            "exp": expires_on,
            "aio": random_base64url(72),
            "appid": grant.client_id,
            "azp": grant.client_id,
            "azpacr": "2",
            "idtyp": "app",
            "oid": object_id,
            "sub": object_id,
            "tid": MANAGED_IDENTITY_TENANT,
            "uti": unique_token_id(serial),
            "ver": "2.0",
        }),
    );
    // Serialising a struct of strings cannot fail.
    let body = match endpoint {
        ManagedIdentityEndpoint::Imds => serde_json::to_vec(&ImdsToken {
            access_token,
            refresh_token: "",
            expires_in: lifetime.to_string(),
            expires_on: expires_on.to_string(),
            not_before: not_before.to_string(),
            resource: grant.resource.clone(),
            token_type: "Bearer",
            client_id: grant.client_id.clone(),
        }),
        ManagedIdentityEndpoint::AppService => serde_json::to_vec(&AppServiceToken {
            access_token,
            expires_on: expires_on.to_string(),
            resource: grant.resource.clone(),
            token_type: "Bearer",
            client_id: grant.client_id.clone(),
            not_before: not_before.to_string(),
        }),
    }
    .unwrap_or_default();
    (StatusCode::OK, json_headers(), body).into_response()
}

/// The flat error body IMDS sends for its own checks, e.g.
/// `{"error":"invalid_request","error_description":"Required metadata header not specified"}`
/// (as the Azure SDK for .NET's IMDS mocks reproduce it). The reference's `bad_request_102` is
/// the name IMDS's documentation gives that error; some third-party emulators send it as
/// `{"error":{"code":"bad_request_102",…}}`, which the simulator does not copy. App Service's
/// error bodies are not documented; it gets the same shape.
fn managed_identity_error(status: StatusCode, error: &str, description: &str) -> Response {
    let body = serde_json::json!({ "error": error, "error_description": description });
    (status, json_headers(), body.to_string()).into_response()
}

/// A scripted fault. IMDS documents these statuses (404 and 410 while it updates, 429 when it
/// throttles, 500 `unknown`) but not their bodies, so the bodies are short and illustrative.
fn managed_identity_fault(status: u16) -> Response {
    let status = StatusCode::from_u16(status)
        .ok()
        .filter(|status| status.is_client_error() || status.is_server_error())
        .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let (error, description) = match status.as_u16() {
        404 => (
            "not_found",
            "The managed identity endpoint is not available: IMDS is updating. Retry later.",
        ),
        410 => (
            "gone",
            "IMDS is updating and will be available again within 70 seconds.",
        ),
        429 => (
            "too_many_requests",
            "Too many requests to the managed identity endpoint. Retry after the Retry-After \
             interval.",
        ),
        503 => (
            "service_unavailable",
            "The managed identity endpoint is temporarily unavailable. Retry later.",
        ),
        _ => (
            "unknown",
            "An unexpected error occurred while acquiring the token. Retry later.",
        ),
    };
    let mut response = managed_identity_error(status, error, description);
    if status == StatusCode::TOO_MANY_REQUESTS {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    response
}

/// The object (principal) id of the simulated managed identity with this client id: the `oid`
/// and `sub` of its tokens, and what `object_id` (or App Service's `principal_id`) selects it
/// by. Stable per client id (matched case-insensitively), so a federated credential registered
/// for it keeps matching its tokens and a test can compute the selector to send.
pub fn managed_identity_object_id(client_id: &str) -> String {
    let seed = format!("sim-managed-identity-object-id:{}", client_key(client_id));
    let hash = digest::digest(&digest::SHA256, seed.as_bytes());
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&hash.as_ref()[..16]);
    format_guid(u128::from_be_bytes(bytes))
}

/// The Azure resource id of the simulated user-assigned identity with this client id, which
/// IMDS's `msi_res_id` and App Service's `mi_res_id` select it by (compared
/// case-insensitively, as Azure compares resource ids). Real identities are named by whoever
/// creates them; the simulator names one `uami-` and the hex digits of its client id (a GUID),
/// lower case, so the id is stable and no two client ids share one.
pub fn managed_identity_resource_id(client_id: &str) -> String {
    let name: String = client_id
        .chars()
        .filter(char::is_ascii_hexdigit)
        .map(|digit| digit.to_ascii_lowercase())
        .collect();
    format!(
        "/subscriptions/{MANAGED_IDENTITY_SUBSCRIPTION}/resourceGroups/sim/providers/\
         Microsoft.ManagedIdentity/userAssignedIdentities/uami-{name}"
    )
}

#[cfg(test)]
mod tests {
    use super::super::SimEntra;
    use super::super::access_token::NOT_BEFORE_BACKDATE_SECS;
    use super::super::test_support::*;
    use super::super::wire::{REDACTED, unix_now};
    use super::*;
    use serde_json::Value;

    fn epoch_string(body: &Value, field: &str) -> u64 {
        body[field]
            .as_str()
            .unwrap_or_else(|| panic!("{field} is a string: {body}"))
            .parse()
            .expect("epoch seconds")
    }

    #[tokio::test]
    async fn imds_success_sends_every_field_as_a_string() {
        let Fixture { sim, http } = fixture().await;
        sim.set_managed_identity(host_identity());
        let answer = imds_get(
            &http,
            &sim,
            &[("api-version", "2018-02-01"), ("resource", POWER_BI)],
        )
        .await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        let body = answer.json();
        for field in [
            "access_token",
            "refresh_token",
            "expires_in",
            "expires_on",
            "not_before",
            "resource",
            "token_type",
            "client_id",
        ] {
            assert!(body[field].is_string(), "{field}: {body}");
        }
        assert_eq!(body["refresh_token"], "");
        assert_eq!(body["expires_in"], "86399");
        assert_eq!(body["token_type"], "Bearer");
        assert_eq!(body["resource"], POWER_BI);
        assert_eq!(body["client_id"], SIM_SYSTEM_ASSIGNED_CLIENT_ID);
        assert_eq!(
            epoch_string(&body, "expires_on") - epoch_string(&body, "not_before"),
            86399 + NOT_BEFORE_BACKDATE_SECS
        );
        let claims = decode_claims(body["access_token"].as_str().expect("token"));
        assert_eq!(claims["aud"], POWER_BI);
        assert_eq!(claims["appid"], SIM_SYSTEM_ASSIGNED_CLIENT_ID);

        let upper = USER_ASSIGNED.to_ascii_uppercase();
        let query = [
            ("api-version", "2018-02-01"),
            ("resource", POWER_BI),
            ("client_id", upper.as_str()),
        ];
        let user_assigned = imds_get(&http, &sim, &query).await;
        assert_eq!(user_assigned.status, 200, "{}", user_assigned.body);
        assert_eq!(user_assigned.json()["client_id"], USER_ASSIGNED);

        let query = [
            ("api-version", "2018-02-01"),
            ("resource", POWER_BI),
            ("client_id", "00000000-1111-4222-8333-444444444444"),
        ];
        let unknown = imds_get(&http, &sim, &query).await;
        assert_eq!(unknown.status, 400);
        assert_eq!(
            unknown.json(),
            serde_json::json!({ "error": "invalid_request", "error_description": "Identity not found" })
        );
        assert_eq!(sim.managed_identity_request_count(), 3);
        assert_eq!(sim.managed_identity_issued_count(), 2);
        let recorded = sim.last_managed_identity_request().expect("recorded");
        assert_eq!(recorded.endpoint, ManagedIdentityEndpoint::Imds);
        assert!(
            recorded
                .query
                .contains(&("resource".to_owned(), POWER_BI.to_owned()))
        );
        assert_eq!(sim.total_requests(), 0, "not a token endpoint request");
    }

    #[tokio::test]
    async fn imds_rejects_requests_it_cannot_serve() {
        let Fixture { sim, http } = fixture().await;
        let good = [("api-version", "2018-02-01"), ("resource", POWER_BI)];

        let answer = imds_get(&http, &sim, &good).await;
        assert_eq!(answer.status, 400);
        assert_eq!(answer.json()["error_description"], "Identity not found");

        sim.set_managed_identity(host_identity());
        let url = query_url(&sim.imds_endpoint(), &good);
        let without_header = self::answer(http.get(&url)).await;
        assert_eq!(without_header.status, 400);
        assert_eq!(
            without_header.json(),
            serde_json::json!({
                "error": "invalid_request",
                "error_description": "Required metadata header not specified",
            })
        );
        let wrong_header = self::answer(http.get(&url).header("Metadata", "yes")).await;
        assert_eq!(wrong_header.status, 400);

        let post = self::answer(http.post(&url).header("Metadata", "true")).await;
        assert_eq!(post.status, 405);

        for query in [
            &[("resource", POWER_BI)][..],
            &[("api-version", "2017-12-01"), ("resource", POWER_BI)][..],
        ] {
            let answer = imds_get(&http, &sim, query).await;
            assert_eq!(answer.status, 400, "{}", answer.body);
            assert_eq!(answer.json()["error"], "invalid_request");
        }
        let answer = imds_get(&http, &sim, &[("api-version", "2018-02-01")]).await;
        assert_eq!(answer.status, 400);
        assert_eq!(
            answer.json()["error_description"],
            "Required audience parameter not specified"
        );

        let answer = imds_get(
            &http,
            &sim,
            &[("api-version", "2018-02-01"), ("resource", POWER_BI_SCOPE)],
        )
        .await;
        let body = assert_entra_error(&answer, 400, "invalid_resource", 50001);
        assert!(
            body["error_description"]
                .as_str()
                .unwrap_or_default()
                .contains(POWER_BI_SCOPE)
        );

        sim.set_managed_identity(SimManagedIdentity {
            system_assigned: false,
            user_assigned: vec![USER_ASSIGNED.to_owned(), APP.to_owned()],
            ..host_identity()
        });
        let answer = imds_get(&http, &sim, &good).await;
        assert_eq!(answer.status, 400);
        assert!(
            answer.json()["error_description"]
                .as_str()
                .unwrap_or_default()
                .starts_with("Multiple user assigned identities exist")
        );
        assert_eq!(sim.managed_identity_request_count(), 9);
        assert_eq!(sim.managed_identity_issued_count(), 0);
    }

    #[tokio::test]
    async fn scripted_managed_identity_faults_then_success() {
        let Fixture { sim, http } = fixture().await;
        sim.set_managed_identity(host_identity());
        sim.push_managed_identity_script([410, 429, 500, 200]);
        let query = [("api-version", "2018-02-01"), ("resource", POWER_BI)];

        let gone = imds_get(&http, &sim, &query).await;
        assert_eq!(gone.status, 410);
        assert!(gone.json()["error"].is_string());
        let throttled = imds_get(&http, &sim, &query).await;
        assert_eq!(throttled.status, 429);
        assert_eq!(throttled.header("retry-after"), Some("1"));
        let failed = imds_get(&http, &sim, &query).await;
        assert_eq!(failed.status, 500);
        assert_eq!(failed.json()["error"], "unknown");
        assert!(failed.header("retry-after").is_none());
        assert_eq!(imds_get(&http, &sim, &query).await.status, 500);

        let answer = imds_get(&http, &sim, &query).await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        assert_eq!(sim.managed_identity_request_count(), 5);
        assert_eq!(sim.managed_identity_issued_count(), 1);
    }

    #[tokio::test]
    async fn app_service_checks_the_identity_header() {
        let Fixture { sim, http } = fixture().await;
        sim.set_managed_identity(host_identity());
        let url = query_url(
            &sim.app_service_endpoint(),
            &[
                ("resource", POWER_BI),
                ("api-version", "2019-08-01"),
                ("client_id", USER_ASSIGNED),
            ],
        );
        let answer = self::answer(
            http.get(&url)
                .header("X-IDENTITY-HEADER", IDENTITY_HEADER)
                .header("Metadata", "true"),
        )
        .await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        let body = answer.json();
        for field in [
            "access_token",
            "expires_on",
            "not_before",
            "resource",
            "token_type",
            "client_id",
        ] {
            assert!(body[field].is_string(), "{field}: {body}");
        }
        assert!(body.get("expires_in").is_none());
        assert_eq!(body["client_id"], USER_ASSIGNED);
        assert_eq!(body["token_type"], "Bearer");
        let expires_on = epoch_string(&body, "expires_on");
        let now = u64::try_from(unix_now()).expect("after 1970");
        assert!(
            (now + 86_000..=now + 86_400).contains(&expires_on),
            "{expires_on}"
        );
        let recorded = sim.last_managed_identity_request().expect("recorded");
        assert_eq!(recorded.endpoint, ManagedIdentityEndpoint::AppService);
        assert!(
            recorded
                .headers
                .contains(&("x-identity-header".to_owned(), REDACTED.to_owned()))
        );

        let wrong = self::answer(
            http.get(&url)
                .header("X-IDENTITY-HEADER", "guess")
                .header("Metadata", "true"),
        )
        .await;
        assert_eq!(wrong.status, 401);
        assert!(!wrong.body.contains(IDENTITY_HEADER));
        let missing = self::answer(http.get(&url).header("Metadata", "true")).await;
        assert_eq!(missing.status, 401);
        // The identity header alone is not enough: Azure Automation wants `Metadata: true`.
        let without_metadata =
            self::answer(http.get(&url).header("X-IDENTITY-HEADER", IDENTITY_HEADER)).await;
        assert_eq!(without_metadata.status, 400);
        assert_eq!(
            without_metadata.json(),
            serde_json::json!({
                "error": "invalid_request",
                "error_description": "Required metadata header not specified",
            })
        );
        let wrong_metadata = self::answer(
            http.get(&url)
                .header("X-IDENTITY-HEADER", IDENTITY_HEADER)
                .header("Metadata", "yes"),
        )
        .await;
        assert_eq!(wrong_metadata.status, 400);
        let legacy = query_url(
            &sim.app_service_endpoint(),
            &[("resource", POWER_BI), ("api-version", "2017-09-01")],
        );
        let legacy = self::answer(
            http.get(&legacy)
                .header("X-IDENTITY-HEADER", IDENTITY_HEADER)
                .header("Metadata", "true"),
        )
        .await;
        assert_eq!(legacy.status, 400);
        assert_eq!(
            legacy.json()["error_description"],
            "Required api-version parameter not specified or not supported"
        );
        assert_eq!(sim.managed_identity_request_count(), 6);
        assert_eq!(sim.managed_identity_issued_count(), 1);
        assert!(!format!("{:?}", host_identity()).contains(IDENTITY_HEADER));
    }

    /// A second user-assigned identity next to [`USER_ASSIGNED`] and the system-assigned one, so
    /// a selector that matched the wrong identity, or fell back to the default, shows.
    const OTHER_USER_ASSIGNED: &str = "0b9c8d7e-6f5a-4b3c-9d2e-1f0a9b8c7d6e";

    fn host_with_two_user_assigned() -> SimManagedIdentity {
        SimManagedIdentity {
            user_assigned: vec![USER_ASSIGNED.to_owned(), OTHER_USER_ASSIGNED.to_owned()],
            ..host_identity()
        }
    }

    async fn app_service_get(
        http: &reqwest::Client,
        sim: &SimEntra,
        query: &[(&str, &str)],
    ) -> Answer {
        let url = query_url(&sim.app_service_endpoint(), query);
        answer(
            http.get(url)
                .header("X-IDENTITY-HEADER", IDENTITY_HEADER)
                .header("Metadata", "true"),
        )
        .await
    }

    /// The client id a successful answer was issued to, after checking that the body's
    /// `client_id` and the token's `appid` agree.
    fn issued_to(answer: &Answer) -> String {
        assert_eq!(answer.status, 200, "{}", answer.body);
        let body = answer.json();
        let claims = decode_claims(body["access_token"].as_str().expect("token"));
        assert_eq!(claims["appid"], body["client_id"], "{body}");
        body["client_id"].as_str().expect("client_id").to_owned()
    }

    fn identity_not_found() -> Value {
        serde_json::json!({ "error": "invalid_request", "error_description": "Identity not found" })
    }

    #[test]
    fn resource_ids_are_stable_and_shaped_like_azure_ones() {
        let id = managed_identity_resource_id(USER_ASSIGNED);
        assert_eq!(
            id,
            managed_identity_resource_id(&USER_ASSIGNED.to_ascii_uppercase())
        );
        assert_ne!(id, managed_identity_resource_id(OTHER_USER_ASSIGNED));
        let parts: Vec<&str> = id.split('/').collect();
        assert_eq!(parts.len(), 9, "{id}");
        assert_eq!(parts[..2], ["", "subscriptions"], "{id}");
        assert!(looks_like_guid(parts[2]), "{id}");
        assert_eq!(
            parts[3..],
            [
                "resourceGroups",
                "sim",
                "providers",
                "Microsoft.ManagedIdentity",
                "userAssignedIdentities",
                "uami-7a1b2c3d4e5f4a6b8c7d9e0f1a2b3c4d",
            ]
        );
    }

    #[tokio::test]
    async fn imds_selects_a_user_assigned_identity_by_resource_id() {
        let Fixture { sim, http } = fixture().await;
        sim.set_managed_identity(host_with_two_user_assigned());
        // Azure resource ids are compared without regard to case.
        let other = managed_identity_resource_id(OTHER_USER_ASSIGNED).to_ascii_uppercase();
        let first = managed_identity_resource_id(USER_ASSIGNED);
        for (resource_id, expected) in [(&other, OTHER_USER_ASSIGNED), (&first, USER_ASSIGNED)] {
            let query = [
                ("api-version", "2018-02-01"),
                ("resource", POWER_BI),
                ("msi_res_id", resource_id.as_str()),
            ];
            let answer = imds_get(&http, &sim, &query).await;
            assert_eq!(issued_to(&answer), expected, "{resource_id}");
        }

        let unknown = managed_identity_resource_id("00000000-1111-4222-8333-444444444444");
        // The system-assigned identity has no resource id of its own.
        let system = managed_identity_resource_id(SIM_SYSTEM_ASSIGNED_CLIENT_ID);
        for resource_id in [
            unknown.as_str(),
            system.as_str(),
            "/subscriptions/elsewhere",
        ] {
            let query = [
                ("api-version", "2018-02-01"),
                ("resource", POWER_BI),
                ("msi_res_id", resource_id),
            ];
            let answer = imds_get(&http, &sim, &query).await;
            assert_eq!(answer.status, 400, "{resource_id}: {}", answer.body);
            assert_eq!(answer.json(), identity_not_found());
        }
        let recorded = sim.last_managed_identity_request().expect("recorded");
        assert!(recorded.query.contains(&(
            "msi_res_id".to_owned(),
            "/subscriptions/elsewhere".to_owned()
        )));
        assert_eq!(sim.managed_identity_request_count(), 5);
        assert_eq!(sim.managed_identity_issued_count(), 2);
    }

    #[tokio::test]
    async fn app_service_selects_by_resource_id_and_object_id() {
        let Fixture { sim, http } = fixture().await;
        sim.set_managed_identity(host_with_two_user_assigned());
        let resource_id = managed_identity_resource_id(OTHER_USER_ASSIGNED);
        let object_id = managed_identity_object_id(OTHER_USER_ASSIGNED);
        for selector in [
            ("mi_res_id", resource_id.as_str()),
            ("object_id", object_id.as_str()),
            ("principal_id", object_id.as_str()),
        ] {
            let query = [
                ("resource", POWER_BI),
                ("api-version", "2019-08-01"),
                selector,
            ];
            let answer = app_service_get(&http, &sim, &query).await;
            assert_eq!(issued_to(&answer), OTHER_USER_ASSIGNED, "{selector:?}");
        }

        let system = managed_identity_resource_id(SIM_SYSTEM_ASSIGNED_CLIENT_ID);
        let query = [
            ("resource", POWER_BI),
            ("api-version", "2019-08-01"),
            ("mi_res_id", system.as_str()),
        ];
        let answer = app_service_get(&http, &sim, &query).await;
        assert_eq!(answer.status, 400, "{}", answer.body);
        assert_eq!(answer.json(), identity_not_found());
        assert_eq!(sim.managed_identity_issued_count(), 3);
    }

    #[tokio::test]
    async fn a_request_naming_two_identities_is_rejected() {
        let Fixture { sim, http } = fixture().await;
        sim.set_managed_identity(host_with_two_user_assigned());
        // Refused even though both selectors name the same identity.
        let resource_id = managed_identity_resource_id(USER_ASSIGNED);
        let imds = imds_get(
            &http,
            &sim,
            &[
                ("api-version", "2018-02-01"),
                ("resource", POWER_BI),
                ("client_id", USER_ASSIGNED),
                ("msi_res_id", resource_id.as_str()),
            ],
        )
        .await;
        let app_service = app_service_get(
            &http,
            &sim,
            &[
                ("resource", POWER_BI),
                ("api-version", "2019-08-01"),
                ("client_id", USER_ASSIGNED),
                ("mi_res_id", resource_id.as_str()),
            ],
        )
        .await;
        for answer in [imds, app_service] {
            assert_eq!(answer.status, 400, "{}", answer.body);
            let body = answer.json();
            assert_eq!(body["error"], "invalid_request");
            assert!(
                body["error_description"]
                    .as_str()
                    .is_some_and(|text| text.starts_with("Only one of")),
                "{body}"
            );
        }
        assert_eq!(sim.managed_identity_request_count(), 2);
        assert_eq!(sim.managed_identity_issued_count(), 0);
    }
}
