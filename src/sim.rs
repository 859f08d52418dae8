//! A simulated Microsoft Entra ID token service, served in-process over real HTTP.
//!
//! The `demo` subcommand, the integration tests and the many-tenant benchmark all need an Entra
//! ID that behaves like the real one but runs on `127.0.0.1:0`, needs no network and can be told
//! to misbehave. A simulator that is kinder than Entra hides bugs, so this one copies the wire
//! format the daemon will meet in production (see `reference/entra-protocol.md` §1, §2 and §9):
//!
//! * **Endpoints.** `POST /{tenant}/oauth2/v2.0/token` (v2) and `POST /{tenant}/oauth2/token`
//!   (v1), form-encoded only, plus `GET /{tenant}/v2.0/.well-known/openid-configuration`.
//!   Extra form fields and headers sent by real libraries (`client_info`, `x-client-*`,
//!   `x-ms-lib-capability`) are ignored, as Entra ignores them.
//! * **Success bodies.** v2 sends `expires_in`, `ext_expires_in` (and `refresh_in` when the tenant
//!   is configured for it) as JSON numbers; v1 sends every number as a JSON *string* and adds
//!   `expires_on`, `not_before` and `resource`. The access token is JWT-shaped, about 1 KB, and
//!   unique per issue (claim `uti`), so a client that caches or compares tokens is exercised.
//! * **Errors.** Every rejection has Entra's body shape (`error`, `error_description` ending in
//!   `\r\nTrace ID: …\r\nCorrelation ID: …\r\nTimestamp: …`, `error_codes`, `timestamp`,
//!   `trace_id`, `correlation_id`, `error_uri`) and the HTTP status Entra is observed to use.
//!   The AADSTS codes, `error` strings and statuses live in one table, [`catalogue`]. The
//!   client's `client-request-id` header becomes the correlation id, as it does at Entra.
//! * **Validation order.** Tenant syntax, then `/common`-style and unknown tenants, then
//!   `grant_type` and `client_id`, then the app registration, then the credential (form
//!   `client_secret` or HTTP Basic per RFC 6749 §2.3.1), then `scope`/`resource`. Each step fails
//!   with the code Entra uses for it, so a test can assert the daemon's classification.
//! * **Faults.** [`Behavior`] injects what production throws at a client: catalogue errors,
//!   HTTP 429 with `Retry-After` in seconds or as an HTTP date and with a JSON or plain-text
//!   body, 5xx without `Retry-After` and with non-JSON bodies, slow and hung responses, HTML
//!   login pages from intercepting proxies, truncated and oversized JSON. A per-tenant script of
//!   one-shot behaviours ("fail twice, then succeed") runs before the persistent behaviour.
//!
//! * **Certificate credentials** (§3). [`SimEntra::add_certificate`] registers certificates on
//!   an app. A `client_assertion` is checked as Entra checks it: `PS256` or `RS256`, the
//!   `x5t#S256` (SHA-256) or `x5t` (SHA-1) thumbprint in base64url or standard base64, the
//!   signature against the registered certificate, `iss == sub == client_id`, `aud` equal to
//!   the token endpoint the request was posted to, a `jti`, and `exp`/`nbf` (numbers or numeric
//!   strings) with five minutes of clock skew.
//! * **Workload identity federation** (§4). An assertion without a thumbprint header, or one
//!   issued by someone other than the client to an app with federated credentials
//!   ([`SimEntra::add_federated_credential`]), is an external token: its `iss`, `sub` and `aud`
//!   must match a federated credential exactly and it must not have expired. Its signature is
//!   not checked (the simulator has no keys of external issuers).
//! * **Managed identity** (§5). `GET /metadata/identity/oauth2/token` answers like IMDS (header
//!   `Metadata: true`, every field a string) and `GET /msi/token` like App Service
//!   (`X-IDENTITY-HEADER`, `expires_on` as an epoch string), for the identities configured with
//!   [`SimEntra::set_managed_identity`]. A script of one-shot statuses (404, 410, 429, 5xx)
//!   injects the faults IMDS is known for.
//!
//! Not simulated: TLS. The simulator speaks plain HTTP; the daemon allows that for loopback
//! authority hosts only.
//!
//! Cost per request is one short critical section on a `std::sync::Mutex` (never held across
//! an `.await`), so ten thousand tenants refreshing together do not contend on the simulator.
//! The simulator never logs a client secret, an assertion or an issued token;
//! [`SimEntra::last_request`] and [`SimEntra::last_managed_identity_request`] keep credentials
//! only as `[REDACTED]`.

use std::collections::{HashMap, VecDeque};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::digest;
use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use rustls_pki_types::{CertificateDer, SignatureVerificationAlgorithm};
use serde::Serialize;
use serde_json::Value;
use tokio::sync::watch;

/// The Power BI resource identifiers (App ID URIs) of every sovereign cloud (protocol reference
/// §7). A v1 `resource` or a v2 scope without its `/.default` suffix must be one of these.
pub const POWER_BI_RESOURCES: &[&str] = &[
    "https://analysis.windows.net/powerbi/api",
    "https://analysis.usgovcloudapi.net/powerbi/api",
    "https://high.analysis.usgovcloudapi.net/powerbi/api",
    "https://mil.analysis.usgovcloudapi.net/powerbi/api",
    "https://analysis.chinacloudapi.cn/powerbi/api",
];

/// Every AADSTS code [`catalogue`] has an entry for; any other code gets a generic
/// `invalid_request` answer.
pub const CATALOGUE_CODES: &[u32] = &[
    7000215, 7000222, 7000218, 7000216, 700016, 90002, 900023, 500011, 700027, 700024, 70021,
    700021, 700023, 50027, 50001, 1002012, 70011, 700022, 901002, 9001023, 900144, 70003, 900561,
    50049, 90019, 7000112, 53003, 50196, 50000, 50033, 90006, 90024, 90033, 90090, 90055,
];

/// The client id the simulated host's system-assigned managed identity reports, so tests can
/// tell it from user-assigned identities in `client_id` fields and token claims.
pub const SIM_SYSTEM_ASSIGNED_CLIENT_ID: &str = "3c6f0e1d-9b2a-4c8d-8e7f-6a5b4c3d2e1f";

/// The `Content-Type` Entra uses for its JSON answers.
const JSON_CONTENT_TYPE: &str = "application/json; charset=utf-8";

/// Largest request body read; real token requests are a few hundred bytes (a few KB with a
/// client assertion).
const MAX_REQUEST_BODY: usize = 1024 * 1024;

/// Entra backdates `nbf`/`not_before` by five minutes to absorb clock skew (compare the v1
/// example in the reference: `expires_on - not_before = expires_in + 300`).
const NOT_BEFORE_BACKDATE_SECS: u64 = 300;

/// Stands in for credential values in [`SimEntra::last_request`].
const REDACTED: &str = "[REDACTED]";
/// Form fields whose values are credentials.
const SECRET_FORM_FIELDS: &[&str] = &["client_secret", "client_assertion"];
/// Headers whose values are managed identity credentials: App Service's `X-IDENTITY-HEADER`,
/// its 2017 predecessor `secret`, and any bearer or basic credential.
const SECRET_MANAGED_IDENTITY_HEADERS: &[&str] = &["x-identity-header", "secret", "authorization"];

/// The only `client_assertion_type` Entra accepts (RFC 7523 §2.2).
const JWT_BEARER_ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// Clock skew tolerated on an assertion's `exp` and `nbf`. Entra's tolerance is not documented
/// (the reference says "a few minutes"); five minutes is the default of Microsoft's token
/// validation libraries.
const ASSERTION_CLOCK_SKEW_SECS: i64 = 300;

/// The tenant that owns the simulated host's managed identities; their tokens are issued by
/// `{authority_host}/{this}/v2.0`.
const MANAGED_IDENTITY_TENANT: &str = "0d7c1a2b-3c4d-4e5f-8a9b-0c1d2e3f4a5b";

/// The oldest IMDS `api-version` with the identity endpoint (reference §5.1).
const OLDEST_IMDS_API_VERSION: &str = "2018-02-01";

/// The App Service `api-version` that uses `X-IDENTITY-HEADER` (reference §5.2); the older
/// `2017-09-01` protocol (header `secret`, dates as text) is not simulated.
const APP_SERVICE_API_VERSION: &str = "2019-08-01";

/// A running simulated Entra ID. Dropping it stops the server: the listener closes and requests
/// still waiting in [`Behavior::Hang`] or [`Behavior::Slow`] are released.
pub struct SimEntra {
    /// Where the server listens; the port is chosen by the OS.
    addr: SocketAddr,
    /// Tenants, behaviours and counters, shared with the request handlers.
    shared: Arc<Shared>,
    /// Set to `true` on drop; the server and every waiting handler watch it.
    shutdown: watch::Sender<bool>,
}

/// What a client sent in its latest token request, for request-shape assertions.
#[derive(Clone, Debug)]
pub struct SimRequest {
    /// Which token endpoint was called.
    pub version: ApiVersion,
    /// The decoded form fields in the order sent. `client_secret` and `client_assertion`
    /// values are replaced by `[REDACTED]`; the empty list if the body was not form-encoded.
    pub form: Vec<(String, String)>,
    /// The request headers, names in lower case. The `Authorization` value keeps its scheme
    /// only (`Basic [REDACTED]`).
    pub headers: Vec<(String, String)>,
}

/// The two generations of the Entra token endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApiVersion {
    /// `/{tenant}/oauth2/token`: `resource=` parameter, numbers sent as strings.
    V1,
    /// `/{tenant}/oauth2/v2.0/token`: `scope=<resource>/.default`, numbers sent as numbers.
    V2,
}

/// A directory (customer tenant) known to the simulator.
#[derive(Clone, Debug)]
pub struct SimTenant {
    /// App registrations whose service principal exists in this tenant.
    pub apps: Vec<SimApp>,
    /// `expires_in` of issued tokens.
    pub lifetime: Duration,
    /// When set, responses carry `refresh_in` (proactive refresh hint, protocol reference §1.2).
    pub refresh_in: Option<Duration>,
    /// Whether the Power BI service principal exists in the tenant; `false` answers every
    /// otherwise valid request with AADSTS500011 `invalid_resource`.
    pub power_bi_present: bool,
}

impl SimTenant {
    /// A tenant with one app, Power BI present and no `refresh_in`.
    pub fn new(app: SimApp, lifetime: Duration) -> Self {
        Self {
            apps: vec![app],
            lifetime,
            refresh_in: None,
            power_bi_present: true,
        }
    }
}

/// An app registration (client) with a shared secret.
#[derive(Clone, Debug)]
pub struct SimApp {
    /// The application (client) id the client sends as `client_id`.
    pub client_id: String,
    /// The secret value the client must present. A test fixture, never a real secret.
    pub secret: String,
    /// When `true` the right secret is answered with AADSTS7000222 (secret expired).
    pub secret_expired: bool,
}

impl SimApp {
    /// An app whose secret is valid.
    pub fn new(client_id: impl Into<String>, secret: impl Into<String>) -> Self {
        Self {
            client_id: client_id.into(),
            secret: secret.into(),
            secret_expired: false,
        }
    }
}

/// A client assertion the simulator verified, decoded, so tests can check what the daemon
/// signs or forwards (algorithm, thumbprint encoding, claim types). The signature is not kept,
/// so a recorded assertion cannot be replayed.
#[derive(Clone, Debug, PartialEq)]
pub struct SimAssertion {
    /// The JOSE header as sent (`alg`, `typ`, `x5t#S256` or `x5t`, `kid`, …).
    pub header: Value,
    /// The claims as sent (`aud`, `iss`, `sub`, `jti`, `nbf`, `exp`, …); a claim sent as a
    /// string stays a string.
    pub claims: Value,
}

/// A federated identity credential (FIC) on an app registration: Entra accepts, instead of a
/// secret, a token from `issuer` about `subject` for `audience` (reference §4).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimFederatedCredential {
    /// The external token's `iss`, compared exactly (a trailing slash matters), e.g. an AKS
    /// cluster's OIDC issuer URL.
    pub issuer: String,
    /// The external token's `sub`, compared exactly and case-sensitively, e.g.
    /// `system:serviceaccount:powerbi:tokend`.
    pub subject: String,
    /// A value the external token's `aud` (a string or an array) must contain, e.g.
    /// `api://AzureADTokenExchange`.
    pub audience: String,
}

/// The managed identities of the simulated Azure host behind the IMDS and App Service
/// endpoints (reference §5).
///
/// Tokens are JWT-shaped with `aud` = the requested resource, `appid` = the identity's client
/// id, and `iss` and `sub` stable per identity, so a test can register a
/// [`SimFederatedCredential`] for an identity's `api://AzureADTokenExchange` token and
/// exercise the "managed identity as federated credential" flow.
#[derive(Clone)]
pub struct SimManagedIdentity {
    /// Whether the host has a system-assigned identity. It answers requests without a
    /// selector, with client id [`SIM_SYSTEM_ASSIGNED_CLIENT_ID`].
    pub system_assigned: bool,
    /// Client ids of the user-assigned identities attached to the host, chosen with
    /// `client_id=`. Without a selector and without a system-assigned identity, a single
    /// user-assigned identity answers, as IMDS does.
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

/// How the simulator answers a tenant's token requests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Behavior {
    /// Validate the request and issue a token, as Entra does.
    Normal,
    /// Answer with this [`catalogue`] entry, whatever the credentials.
    Aadsts(u32),
    /// HTTP 429 with a `Retry-After` header. The body is plain text `Too Many Requests` (as
    /// observed at Entra) or, when `plain_text` is `false`, a JSON `temporarily_unavailable`
    /// error with AADSTS90055.
    Throttle {
        /// Value of the `Retry-After` header.
        retry_after: RetryAfter,
        /// Plain-text body instead of JSON.
        plain_text: bool,
    },
    /// A 5xx status with no `Retry-After`. The body is an HTML error page, or when `json` is
    /// `true` an Entra error body (`temporarily_unavailable` for 503, else `server_error`).
    ServerError {
        /// The HTTP status; a value that is not a valid status becomes 500.
        status: u16,
        /// JSON body instead of an HTML page.
        json: bool,
    },
    /// HTTP 503 `temporarily_unavailable` with the retryable code AADSTS50033.
    TemporarilyUnavailable,
    /// Wait this long, then behave as [`Behavior::Normal`].
    Slow(Duration),
    /// HTTP 200 `text/html`: the sign-in page of an intercepting corporate proxy.
    Html,
    /// HTTP 200 `application/json` whose body stops in the middle of the object.
    Truncated,
    /// HTTP 200 `application/json` body of exactly this many bytes: a token response padded
    /// with a huge `access_token` (bodies under 81 bytes are spaces only).
    Oversized(usize),
    /// Never answer; the request waits until the client gives up or the simulator is dropped.
    Hang,
}

/// The two forms of the `Retry-After` header (RFC 9110 §10.2.3).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RetryAfter {
    /// `Retry-After: 60`
    Seconds(u64),
    /// `Retry-After: Thu, 01 Jan 2026 00:01:00 GMT` (IMF-fixdate)
    HttpDate(SystemTime),
}

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

impl SimEntra {
    /// Binds 127.0.0.1:0 and serves in a spawned tokio task.
    pub async fn start() -> std::io::Result<SimEntra> {
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let (shutdown, stopped) = watch::channel(false);
        let shared = Arc::new(Shared {
            authority_host: format!("http://{addr}"),
            registry: Mutex::new(HashMap::new()),
            total_requests: AtomicU64::new(0),
            serial: AtomicU64::new(0),
            managed_identity: Mutex::new(ManagedIdentityState::default()),
            shutdown: stopped.clone(),
        });
        let app = router(Arc::clone(&shared));
        let mut stop = stopped;
        tokio::spawn(async move {
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    // An error means the sender is gone, which is a shutdown too.
                    let _ = stop.wait_for(|&stopped| stopped).await;
                })
                .await;
            if let Err(error) = served {
                tracing::warn!(%error, "simulated Entra ID stopped with an error");
            }
        });
        tracing::debug!(%addr, "simulated Entra ID listening");
        Ok(SimEntra {
            addr,
            shared,
            shutdown,
        })
    }

    /// `"http://127.0.0.1:PORT"` (no trailing slash), for use as the daemon's authority host.
    pub fn authority_host(&self) -> String {
        self.shared.authority_host.clone()
    }

    /// The socket address the simulator listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Registers (or replaces) a tenant. `tenant_id` is the path segment clients use: a GUID or
    /// a domain name (DNS labels of letters, digits and hyphens), matched case-insensitively.
    /// Replacing a tenant keeps its counters, behaviour and script.
    pub fn add_tenant(&self, tenant_id: &str, tenant: SimTenant) {
        self.shared
            .registry()
            .entry(tenant_key(tenant_id))
            .or_default()
            .tenant = Some(Arc::new(tenant));
    }

    /// Forgets a tenant: later requests get AADSTS90002. Counters, behaviour and script stay.
    pub fn remove_tenant(&self, tenant_id: &str) {
        if let Some(entry) = self.shared.registry().get_mut(&tenant_key(tenant_id)) {
            entry.tenant = None;
        }
    }

    /// Sets the persistent behaviour for a tenant path segment (registered or not); it applies
    /// to every request once the script is used up, until changed.
    pub fn set_behavior(&self, tenant_id: &str, behavior: Behavior) {
        self.shared
            .registry()
            .entry(tenant_key(tenant_id))
            .or_default()
            .behavior = behavior;
    }

    /// Appends one-shot behaviours, consumed one per request in order before the persistent
    /// behaviour applies ("fail twice, then succeed").
    pub fn push_script(&self, tenant_id: &str, script: impl IntoIterator<Item = Behavior>) {
        self.shared
            .registry()
            .entry(tenant_key(tenant_id))
            .or_default()
            .script
            .extend(script);
    }

    /// Replaces the app with the same `client_id` in a registered tenant, or adds it (secret
    /// rotation, expiry). Does nothing for a tenant that is not registered.
    pub fn set_app(&self, tenant_id: &str, app: SimApp) {
        let mut registry = self.shared.registry();
        let Some(tenant) = registry
            .get_mut(&tenant_key(tenant_id))
            .and_then(|entry| entry.tenant.as_mut())
        else {
            return;
        };
        let tenant = Arc::make_mut(tenant);
        match tenant
            .apps
            .iter_mut()
            .find(|known| known.client_id.eq_ignore_ascii_case(&app.client_id))
        {
            Some(known) => *known = app,
            None => tenant.apps.push(app),
        }
    }

    /// Token requests received for this tenant path segment, successful or not.
    pub fn request_count(&self, tenant_id: &str) -> u64 {
        self.shared
            .registry()
            .get(&tenant_key(tenant_id))
            .map_or(0, |entry| entry.requests)
    }

    /// Token requests received for all tenant path segments.
    pub fn total_requests(&self) -> u64 {
        self.shared.total_requests.load(Ordering::Relaxed)
    }

    /// Tokens issued (successful [`Behavior::Normal`] answers) for the tenant.
    pub fn issued_count(&self, tenant_id: &str) -> u64 {
        self.shared
            .registry()
            .get(&tenant_key(tenant_id))
            .map_or(0, |entry| entry.issued)
    }

    /// The most recent token request received for the tenant path segment.
    pub fn last_request(&self, tenant_id: &str) -> Option<SimRequest> {
        self.shared
            .registry()
            .get(&tenant_key(tenant_id))
            .and_then(|entry| entry.last_request.clone())
    }

    /// Registers a certificate (DER) as a credential of app `client_id` in the tenant, next to
    /// those already registered, as an app keeps its old certificate during key rollover.
    /// Assertions carrying its SHA-1 or SHA-256 thumbprint and signed with its key are
    /// accepted. May precede [`SimEntra::add_tenant`]; an app the tenant does not know still
    /// gets AADSTS700016. Bytes that are not a certificate are kept and fail every signature
    /// check (AADSTS700027), like a wrong upload.
    pub fn add_certificate(&self, tenant_id: &str, client_id: &str, cert_der: Vec<u8>) {
        let certificate = RegisteredCertificate::new(cert_der);
        self.shared
            .update_credentials(tenant_id, client_id, |credentials| {
                if !credentials
                    .certificates
                    .iter()
                    .any(|known| known.sha256 == certificate.sha256)
                {
                    credentials.certificates.push(certificate);
                }
            });
    }

    /// Removes every certificate of the app in the tenant (expiry, revocation); assertions
    /// then get AADSTS700027.
    pub fn remove_certificates(&self, tenant_id: &str, client_id: &str) {
        self.shared
            .update_credentials(tenant_id, client_id, |credentials| {
                credentials.certificates.clear();
            });
    }

    /// Adds a federated identity credential to app `client_id` in the tenant (Entra allows 20
    /// per app; the simulator does not limit them). May precede [`SimEntra::add_tenant`].
    pub fn add_federated_credential(
        &self,
        tenant_id: &str,
        client_id: &str,
        fic: SimFederatedCredential,
    ) {
        self.shared
            .update_credentials(tenant_id, client_id, |credentials| {
                if !credentials.federated.contains(&fic) {
                    credentials.federated.push(fic);
                }
            });
    }

    /// Removes every federated identity credential of the app in the tenant; federated tokens
    /// then get AADSTS70021.
    pub fn remove_federated_credentials(&self, tenant_id: &str, client_id: &str) {
        self.shared
            .update_credentials(tenant_id, client_id, |credentials| {
                credentials.federated.clear();
            });
    }

    /// The most recent client assertion (certificate or federated) that passed verification
    /// for the tenant path segment, even if the request then failed on its scope.
    pub fn last_assertion(&self, tenant_id: &str) -> Option<SimAssertion> {
        self.shared
            .registry()
            .get(&tenant_key(tenant_id))
            .and_then(|entry| entry.last_assertion.clone())
    }

    /// Sets (or replaces) the managed identities of the simulated host. Until this is called,
    /// the host has none and IMDS answers "Identity not found".
    pub fn set_managed_identity(&self, mi: SimManagedIdentity) {
        self.shared.managed_identity().identity = Some(Arc::new(mi));
    }

    /// Appends one-shot HTTP statuses that the managed identity endpoints (both share the
    /// script) answer in order, one per request, before behaving normally again: 404 and 410
    /// (IMDS updating), 429 (throttled, with `Retry-After: 1`), 500 and 503. A value that is
    /// not a 4xx or 5xx status becomes 500.
    pub fn push_managed_identity_script(&self, statuses: impl IntoIterator<Item = u16>) {
        self.shared.managed_identity().script.extend(statuses);
    }

    /// Requests received by both managed identity endpoints, answered or not.
    pub fn managed_identity_request_count(&self) -> u64 {
        self.shared.managed_identity().requests
    }

    /// Tokens issued by both managed identity endpoints.
    pub fn managed_identity_issued_count(&self) -> u64 {
        self.shared.managed_identity().issued
    }

    /// The most recent request to either managed identity endpoint.
    pub fn last_managed_identity_request(&self) -> Option<SimManagedIdentityRequest> {
        self.shared.managed_identity().last_request.clone()
    }

    /// `"http://127.0.0.1:PORT/metadata/identity/oauth2/token"`: the IMDS token URL the daemon
    /// is pointed at instead of `http://169.254.169.254/…`.
    pub fn imds_endpoint(&self) -> String {
        format!(
            "{}/metadata/identity/oauth2/token",
            self.shared.authority_host
        )
    }

    /// `"http://127.0.0.1:PORT/msi/token"`: the value for `IDENTITY_ENDPOINT`.
    pub fn app_service_endpoint(&self) -> String {
        format!("{}/msi/token", self.shared.authority_host)
    }
}

impl Drop for SimEntra {
    fn drop(&mut self) {
        self.shutdown.send_replace(true);
    }
}

/// State shared between the [`SimEntra`] handle and the request handlers.
struct Shared {
    /// `http://127.0.0.1:PORT`, for discovery documents.
    authority_host: String,
    /// Per tenant path segment (lower case): configuration, behaviour and counters.
    registry: Mutex<HashMap<String, TenantEntry>>,
    /// Token requests over all path segments.
    total_requests: AtomicU64,
    /// Source of the unique `uti` claim.
    serial: AtomicU64,
    /// The managed identity endpoints' configuration, script and counters, under their own
    /// lock so they never contend with token requests.
    managed_identity: Mutex<ManagedIdentityState>,
    /// Becomes `true` when the simulator is dropped; releases hung and slow handlers.
    shutdown: watch::Receiver<bool>,
}

/// Everything the simulator knows about one tenant path segment.
struct TenantEntry {
    /// `None` for a segment that is not (or no longer) a registered tenant.
    tenant: Option<Arc<SimTenant>>,
    /// Applies when the script is empty.
    behavior: Behavior,
    /// One-shot behaviours, front first.
    script: VecDeque<Behavior>,
    /// Token requests received.
    requests: u64,
    /// Tokens issued.
    issued: u64,
    /// The latest request, credentials redacted.
    last_request: Option<SimRequest>,
    /// Certificates and federated credentials per app (client id in lower case). Kept apart
    /// from [`SimTenant`], whose fields are public, and shared by `Arc` so a request takes
    /// only a reference count out of the critical section.
    credentials: HashMap<String, Arc<AppCredentials>>,
    /// The latest verified client assertion.
    last_assertion: Option<SimAssertion>,
}

impl Default for TenantEntry {
    fn default() -> Self {
        Self {
            tenant: None,
            behavior: Behavior::Normal,
            script: VecDeque::new(),
            requests: 0,
            issued: 0,
            last_request: None,
            credentials: HashMap::new(),
            last_assertion: None,
        }
    }
}

/// The credentials other than the secret that one app has in one tenant.
#[derive(Clone, Default)]
struct AppCredentials {
    /// Certificates whose keys may sign client assertions.
    certificates: Vec<RegisteredCertificate>,
    /// External token issuers the app trusts.
    federated: Vec<SimFederatedCredential>,
}

/// A certificate and its thumbprints, computed once at registration.
#[derive(Clone)]
struct RegisteredCertificate {
    der: Vec<u8>,
    /// SHA-1 of the DER, matched against `x5t`.
    sha1: Vec<u8>,
    /// SHA-256 of the DER, matched against `x5t#S256`.
    sha256: Vec<u8>,
}

impl RegisteredCertificate {
    fn new(der: Vec<u8>) -> Self {
        let sha1 = digest::digest(&digest::SHA1_FOR_LEGACY_USE_ONLY, &der)
            .as_ref()
            .to_vec();
        let sha256 = digest::digest(&digest::SHA256, &der).as_ref().to_vec();
        Self { der, sha1, sha256 }
    }
}

/// The managed identity endpoints' side of [`Shared`].
#[derive(Default)]
struct ManagedIdentityState {
    /// `None` until [`SimEntra::set_managed_identity`]: a host without identities.
    identity: Option<Arc<SimManagedIdentity>>,
    /// One-shot statuses, front first.
    script: VecDeque<u16>,
    /// Requests received by both endpoints.
    requests: u64,
    /// Tokens issued by both endpoints.
    issued: u64,
    /// The latest request, credentials redacted.
    last_request: Option<SimManagedIdentityRequest>,
}

/// What [`Shared::admit`] decided about a token request.
struct Admission {
    behavior: Behavior,
    tenant: Option<Arc<SimTenant>>,
    /// The calling app's certificates and federated credentials; looked up only for requests
    /// that carry a `client_assertion`.
    credentials: Option<Arc<AppCredentials>>,
}

impl Shared {
    fn registry(&self) -> MutexGuard<'_, HashMap<String, TenantEntry>> {
        // The map stays consistent even if a holder panicked: every update is a single field
        // assignment or counter increment.
        self.registry.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn managed_identity(&self) -> MutexGuard<'_, ManagedIdentityState> {
        // As for the registry: every update is a single assignment, increment or queue
        // operation, so the state is consistent even after a panic.
        self.managed_identity
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts and records a request and decides how to answer it, in one critical section.
    fn admit(&self, incoming: &Incoming) -> Admission {
        self.total_requests.fetch_add(1, Ordering::Relaxed);
        let recorded = incoming.recorded();
        let credentials_key = incoming
            .param("client_assertion")
            .and(incoming.client_id())
            .map(client_key);
        let mut registry = self.registry();
        let entry = registry.entry(incoming.tenant_key.clone()).or_default();
        entry.requests += 1;
        entry.last_request = Some(recorded);
        let behavior = entry
            .script
            .pop_front()
            .unwrap_or_else(|| entry.behavior.clone());
        Admission {
            behavior,
            tenant: entry.tenant.clone(),
            credentials: credentials_key.and_then(|key| entry.credentials.get(&key).cloned()),
        }
    }

    /// Applies `change` to one app's credentials in one tenant, creating them if needed.
    fn update_credentials(
        &self,
        tenant_id: &str,
        client_id: &str,
        change: impl FnOnce(&mut AppCredentials),
    ) {
        let mut registry = self.registry();
        let entry = registry.entry(tenant_key(tenant_id)).or_default();
        let credentials = entry.credentials.entry(client_key(client_id)).or_default();
        change(Arc::make_mut(credentials));
    }

    fn record_assertion(&self, key: &str, assertion: SimAssertion) {
        if let Some(entry) = self.registry().get_mut(key) {
            entry.last_assertion = Some(assertion);
        }
    }

    fn tenant(&self, key: &str) -> Option<Arc<SimTenant>> {
        self.registry()
            .get(key)
            .and_then(|entry| entry.tenant.clone())
    }

    fn count_issued(&self, key: &str) {
        if let Some(entry) = self.registry().get_mut(key) {
            entry.issued += 1;
        }
    }

    async fn until_shutdown(&self) {
        let mut stopped = self.shutdown.clone();
        // An error means the sender is gone, which is a shutdown too.
        let _ = stopped.wait_for(|&stopped| stopped).await;
    }
}

fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/{tenant}/oauth2/v2.0/token", any(token_v2))
        .route("/{tenant}/oauth2/token", any(token_v1))
        .route(
            "/{tenant}/v2.0/.well-known/openid-configuration",
            get(openid_configuration),
        )
        .route("/metadata/identity/oauth2/token", any(imds_token))
        .route("/msi/token", any(app_service_token))
        .with_state(shared)
}

async fn token_v2(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    token_endpoint(shared, ApiVersion::V2, request).await
}

async fn token_v1(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    token_endpoint(shared, ApiVersion::V1, request).await
}

/// A token request, read and decoded.
struct Incoming {
    version: ApiVersion,
    method: Method,
    /// The tenant path segment as sent (percent-decoded), for messages and the `tid` claim.
    tenant: String,
    /// The same in lower case: the registry key.
    tenant_key: String,
    /// Form fields; empty unless the body was `application/x-www-form-urlencoded`.
    form: Vec<(String, String)>,
    /// `client_id` and secret from an HTTP Basic `Authorization` header.
    basic: Option<(String, String)>,
    /// The client's `client-request-id`, echoed as the correlation id.
    client_request_id: Option<String>,
    headers: HeaderMap,
}

impl Incoming {
    async fn read(version: ApiVersion, request: Request) -> Incoming {
        let (parts, body) = request.into_parts();
        let segment = parts
            .uri
            .path()
            .trim_start_matches('/')
            .split('/')
            .next()
            .unwrap_or_default();
        let tenant = decode_component(segment.as_bytes(), false);
        let is_form = parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.split(';').next())
            .is_some_and(|mime| {
                mime.trim()
                    .eq_ignore_ascii_case("application/x-www-form-urlencoded")
            });
        let form = if is_form {
            match axum::body::to_bytes(body, MAX_REQUEST_BODY).await {
                Ok(bytes) => parse_form(&bytes),
                Err(_) => Vec::new(),
            }
        } else {
            Vec::new()
        };
        let basic = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(parse_basic);
        let client_request_id = parts
            .headers
            .get("client-request-id")
            .and_then(|value| value.to_str().ok())
            .map(str::trim)
            .filter(|id| !id.is_empty() && id.len() <= 128)
            .map(str::to_owned);
        Incoming {
            version,
            method: parts.method,
            tenant_key: tenant_key(&tenant),
            tenant,
            form,
            basic,
            client_request_id,
            headers: parts.headers,
        }
    }

    /// The first value of a form field.
    fn param(&self, name: &str) -> Option<&str> {
        self.form
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }

    fn client_id(&self) -> Option<&str> {
        self.param("client_id")
            .or_else(|| self.basic.as_ref().map(|(id, _)| id.as_str()))
            .filter(|id| !id.is_empty())
    }

    fn client_secret(&self) -> Option<&str> {
        self.param("client_secret")
            .or_else(|| self.basic.as_ref().map(|(_, secret)| secret.as_str()))
            .filter(|secret| !secret.is_empty())
    }

    /// The request as [`SimEntra::last_request`] reports it, credentials redacted.
    fn recorded(&self) -> SimRequest {
        let form = self
            .form
            .iter()
            .map(|(key, value)| {
                let value = if SECRET_FORM_FIELDS.contains(&key.as_str()) {
                    REDACTED.to_owned()
                } else {
                    value.clone()
                };
                (key.clone(), value)
            })
            .collect();
        let headers = self
            .headers
            .iter()
            .map(|(name, value)| {
                let value = if name == header::AUTHORIZATION {
                    let scheme = value
                        .to_str()
                        .ok()
                        .and_then(|text| text.split_whitespace().next())
                        .unwrap_or_default();
                    format!("{scheme} {REDACTED}").trim_start().to_owned()
                } else {
                    String::from_utf8_lossy(value.as_bytes()).into_owned()
                };
                (name.as_str().to_owned(), value)
            })
            .collect();
        SimRequest {
            version: self.version,
            form,
            headers,
        }
    }

    /// Values for the catalogue placeholders, from whatever the request carried.
    fn placeholders(&self) -> Vec<(&'static str, String)> {
        let scope = self.param("scope").unwrap_or_default();
        let resource = self
            .param("resource")
            .unwrap_or_else(|| scope.strip_suffix("/.default").unwrap_or(scope));
        vec![
            ("tenant", self.tenant.clone()),
            ("client_id", self.client_id().unwrap_or_default().to_owned()),
            ("scope", scope.to_owned()),
            ("resource", resource.to_owned()),
            (
                "grant_type",
                self.param("grant_type").unwrap_or_default().to_owned(),
            ),
            ("method", self.method.as_str().to_owned()),
            ("parameter", "grant_type".to_owned()),
        ]
    }
}

/// A response plus the AADSTS code it carries, for the request log.
struct Reply {
    response: Response,
    aadsts: Option<u32>,
}

impl From<Response> for Reply {
    fn from(response: Response) -> Self {
        Reply {
            response,
            aadsts: None,
        }
    }
}

async fn token_endpoint(shared: Arc<Shared>, version: ApiVersion, request: Request) -> Response {
    let incoming = Incoming::read(version, request).await;
    let admission = shared.admit(&incoming);
    let behavior = &admission.behavior;
    let reply = match behavior {
        Behavior::Normal => answer_normally(&shared, &incoming, &admission),
        Behavior::Slow(delay) => {
            tokio::select! {
                () = tokio::time::sleep(*delay) => {
                    answer_normally(&shared, &incoming, &admission)
                }
                () = shared.until_shutdown() => stopped_response().into(),
            }
        }
        Behavior::Hang => {
            shared.until_shutdown().await;
            stopped_response().into()
        }
        Behavior::Aadsts(code) => {
            let (status, error, text) = catalogue(*code);
            let placeholders = incoming.placeholders();
            error_reply(&incoming, status, error, *code, text, &placeholders)
        }
        Behavior::TemporarilyUnavailable => catalogue_reply(&incoming, 50033),
        Behavior::Throttle {
            retry_after,
            plain_text,
        } => throttle_reply(&incoming, retry_after, *plain_text),
        Behavior::ServerError { status, json } => server_error_reply(&incoming, *status, *json),
        Behavior::Html => proxy_login_page().into(),
        Behavior::Truncated => truncated_response().into(),
        Behavior::Oversized(size) => oversized_response(*size).into(),
    };
    tracing::debug!(
        tenant = %incoming.tenant,
        version = ?version,
        behavior = behavior_label(behavior),
        status = reply.response.status().as_u16(),
        aadsts = ?reply.aadsts,
        "simulated Entra token request"
    );
    reply.response
}

fn behavior_label(behavior: &Behavior) -> &'static str {
    match behavior {
        Behavior::Normal => "normal",
        Behavior::Aadsts(_) => "aadsts",
        Behavior::Throttle { .. } => "throttle",
        Behavior::ServerError { .. } => "server_error",
        Behavior::TemporarilyUnavailable => "temporarily_unavailable",
        Behavior::Slow(_) => "slow",
        Behavior::Html => "html",
        Behavior::Truncated => "truncated",
        Behavior::Oversized(_) => "oversized",
        Behavior::Hang => "hang",
    }
}

/// Validation succeeded: issue a token for this resource to this client.
struct Grant {
    client_id: String,
    resource: String,
    /// `expires_in` of the token, from the tenant.
    lifetime: Duration,
    /// `refresh_in` of the token, from the tenant.
    refresh_in: Option<Duration>,
}

/// Validation failed with this catalogue code; the placeholders fill its text.
struct Rejection {
    code: u32,
    placeholders: Vec<(&'static str, String)>,
}

impl Rejection {
    fn new(code: u32) -> Self {
        Rejection {
            code,
            placeholders: Vec::new(),
        }
    }

    fn with(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.placeholders.push((name, value.into()));
        self
    }

    fn missing(parameter: &'static str) -> Self {
        Rejection::new(900144).with("parameter", parameter)
    }
}

fn answer_normally(shared: &Shared, incoming: &Incoming, admission: &Admission) -> Reply {
    let mut verified = None;
    let outcome = validate(
        incoming,
        admission.tenant.as_deref(),
        admission.credentials.as_deref(),
        &shared.authority_host,
        &mut verified,
    );
    if let Some(assertion) = verified {
        shared.record_assertion(&incoming.tenant_key, assertion);
    }
    match outcome {
        Ok(grant) => {
            shared.count_issued(&incoming.tenant_key);
            let serial = shared.serial.fetch_add(1, Ordering::Relaxed);
            success_response(incoming, &grant, serial).into()
        }
        Err(rejection) => {
            let (status, error, text) = catalogue(rejection.code);
            let mut placeholders = incoming.placeholders();
            // Specific values first: `render` uses the first match for a name.
            placeholders.splice(0..0, rejection.placeholders);
            error_reply(incoming, status, error, rejection.code, text, &placeholders)
        }
    }
}

/// Entra's checks for a client-credentials request, in Entra's order. A client assertion that
/// passes verification is stored in `verified`, whatever the later checks decide.
fn validate(
    incoming: &Incoming,
    tenant: Option<&SimTenant>,
    credentials: Option<&AppCredentials>,
    authority_host: &str,
    verified: &mut Option<SimAssertion>,
) -> Result<Grant, Rejection> {
    if incoming.method != Method::POST {
        return Err(Rejection::new(900561));
    }
    if !is_guid(&incoming.tenant) && !is_dns_like(&incoming.tenant) {
        return Err(Rejection::new(900023));
    }
    match incoming.tenant_key.as_str() {
        "common" | "consumers" => return Err(Rejection::new(9001023)),
        "organizations" => return Err(Rejection::new(90019)),
        _ => {}
    }
    let Some(tenant) = tenant else {
        return Err(Rejection::new(90002));
    };

    match incoming.param("grant_type") {
        None | Some("") => return Err(Rejection::missing("grant_type")),
        Some("client_credentials") => {}
        Some(other) => return Err(Rejection::new(70003).with("grant_type", other)),
    }
    let Some(client_id) = incoming.client_id() else {
        return Err(Rejection::missing("client_id"));
    };
    let Some(app) = tenant
        .apps
        .iter()
        .find(|app| app.client_id.eq_ignore_ascii_case(client_id))
    else {
        return Err(Rejection::new(700016));
    };

    let assertion = incoming
        .param("client_assertion")
        .filter(|assertion| !assertion.is_empty());
    match (incoming.client_secret(), assertion) {
        (Some(secret), _) => {
            if secret != app.secret {
                return Err(Rejection::new(7000215));
            }
            if app.secret_expired {
                return Err(Rejection::new(7000222));
            }
        }
        (None, Some(assertion)) => {
            // Entra's answer to an unknown `client_assertion_type` is not in the reference;
            // it is answered as a missing one.
            if incoming.param("client_assertion_type") != Some(JWT_BEARER_ASSERTION_TYPE) {
                return Err(Rejection::missing("client_assertion_type"));
            }
            let audience = token_endpoint_url(authority_host, &incoming.tenant, incoming.version);
            *verified = Some(verify_assertion(
                assertion,
                &app.client_id,
                credentials,
                &audience,
                unix_now(),
            )?);
        }
        (None, None) => return Err(Rejection::new(7000218)),
    }

    let resource = match incoming.version {
        ApiVersion::V2 => v2_resource(incoming)?,
        ApiVersion::V1 => match incoming.param("resource") {
            None | Some("") => return Err(Rejection::missing("resource")),
            Some(resource) => resource.to_owned(),
        },
    };
    if !tenant.power_bi_present || !POWER_BI_RESOURCES.contains(&resource.as_str()) {
        return Err(Rejection::new(500011).with("resource", resource));
    }
    Ok(Grant {
        client_id: app.client_id.clone(),
        resource,
        lifetime: tenant.lifetime,
        refresh_in: tenant.refresh_in,
    })
}

/// The single resource a v2 `scope` names.
fn v2_resource(incoming: &Incoming) -> Result<String, Rejection> {
    if incoming.param("resource").is_some() {
        return Err(Rejection::new(901002));
    }
    let scope = incoming.param("scope").unwrap_or_default();
    let scopes: Vec<&str> = scope.split_whitespace().collect();
    if scopes.is_empty() {
        return Err(Rejection::missing("scope"));
    }
    let mut resources: Vec<&str> = Vec::with_capacity(scopes.len());
    for item in &scopes {
        let Some(resource) = item.strip_suffix("/.default") else {
            return Err(Rejection::new(1002012).with("scope", *item));
        };
        if !resources.contains(&resource) {
            resources.push(resource);
        }
    }
    match resources.as_slice() {
        [single] => Ok((*single).to_owned()),
        _ => Err(Rejection::new(700022)),
    }
}

/// Entra's checks of a `client_assertion` for app `client_id` (reference §3 and §4).
///
/// An assertion with a thumbprint header is the app's own, signed with a certificate, unless
/// someone else issued it and the app has federated credentials: then, like an assertion
/// without a thumbprint, it is an external token to match against those credentials.
fn verify_assertion(
    assertion: &str,
    client_id: &str,
    credentials: Option<&AppCredentials>,
    audience: &str,
    now: i64,
) -> Result<SimAssertion, Rejection> {
    let jwt = DecodedJwt::parse(assertion).ok_or_else(|| Rejection::new(50027))?;
    let (certificates, federated) = credentials.map_or((&[][..], &[][..]), |credentials| {
        (
            credentials.certificates.as_slice(),
            credentials.federated.as_slice(),
        )
    });
    let has_thumbprint = jwt.header.get("x5t#S256").is_some() || jwt.header.get("x5t").is_some();
    let issued_by_client = jwt
        .claim_str("iss")
        .is_some_and(|issuer| issuer.eq_ignore_ascii_case(client_id));
    if has_thumbprint && (issued_by_client || federated.is_empty()) {
        verify_certificate_assertion(&jwt, client_id, certificates, audience, now)?;
    } else {
        verify_federated_assertion(&jwt, federated, now)?;
    }
    Ok(SimAssertion {
        header: jwt.header,
        claims: jwt.claims,
    })
}

/// A certificate-signed assertion: algorithm, thumbprint, signature, then the claims.
fn verify_certificate_assertion(
    jwt: &DecodedJwt<'_>,
    client_id: &str,
    certificates: &[RegisteredCertificate],
    audience: &str,
    now: i64,
) -> Result<(), Rejection> {
    let algorithm: &dyn SignatureVerificationAlgorithm =
        match jwt.header.get("alg").and_then(Value::as_str) {
            Some("PS256") => webpki::aws_lc_rs::RSA_PSS_2048_8192_SHA256_LEGACY_KEY,
            Some("RS256") => webpki::aws_lc_rs::RSA_PKCS1_2048_8192_SHA256,
            // Entra's answer to other algorithms is not in the reference; a client that
            // sends one has a bug, which "malformed" (AADSTS50027) points at.
            _ => return Err(Rejection::new(50027)),
        };
    let certificate =
        registered_certificate(&jwt.header, certificates).ok_or_else(|| Rejection::new(700027))?;
    let der = CertificateDer::from(certificate.der.as_slice());
    let signed = webpki::EndEntityCert::try_from(&der).and_then(|cert| {
        cert.verify_signature(algorithm, jwt.signing_input.as_bytes(), &jwt.signature)
    });
    if signed.is_err() {
        return Err(Rejection::new(700027));
    }
    // Client ids are GUIDs, which Entra compares without regard to case.
    let names_client = |claim: &str| {
        jwt.claim_str(claim)
            .is_some_and(|value| value.eq_ignore_ascii_case(client_id))
    };
    if !names_client("iss") || !names_client("sub") {
        return Err(Rejection::new(700021));
    }
    // Case-insensitive: Microsoft's own example assertion spells the path `/oauth2/V2.0/token`.
    if !jwt
        .claim_str("aud")
        .is_some_and(|aud| aud.eq_ignore_ascii_case(audience))
    {
        return Err(Rejection::new(700023));
    }
    if jwt.claim_str("jti").is_none_or(str::is_empty) {
        return Err(Rejection::new(50027));
    }
    // Entra does not reject a reused `jti`: MSAL Python reuses one assertion for 540 s.
    check_assertion_lifetime(&jwt.claims, now)
}

/// A token from an external issuer, matched against the app's federated credentials. Its
/// signature is not checked: the simulator has no signing keys of external issuers
/// (Kubernetes clusters, GitHub), so a test can present any well-formed token.
fn verify_federated_assertion(
    jwt: &DecodedJwt<'_>,
    federated: &[SimFederatedCredential],
    now: i64,
) -> Result<(), Rejection> {
    check_assertion_lifetime(&jwt.claims, now)?;
    let issuer = jwt.claim_str("iss");
    let subject = jwt.claim_str("sub");
    let has_audience = |wanted: &str| match jwt.claims.get("aud") {
        Some(Value::String(audience)) => audience == wanted,
        Some(Value::Array(audiences)) => audiences.iter().any(|audience| audience == wanted),
        _ => false,
    };
    let matched = federated.iter().any(|fic| {
        issuer == Some(fic.issuer.as_str())
            && subject == Some(fic.subject.as_str())
            && has_audience(&fic.audience)
    });
    if matched {
        Ok(())
    } else {
        Err(Rejection::new(70021))
    }
}

/// `exp` is required and `nbf` optional (MSAL Python omits it); both may be numbers or
/// numeric strings (MSAL.NET writes strings).
fn check_assertion_lifetime(claims: &Value, now: i64) -> Result<(), Rejection> {
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

/// The registered certificate a header's thumbprint names: `x5t#S256` when present, else
/// `x5t`, each in base64url or standard base64 (MSAL Go and Rust send the latter).
fn registered_certificate<'a>(
    header: &Value,
    certificates: &'a [RegisteredCertificate],
) -> Option<&'a RegisteredCertificate> {
    if let Some(thumbprint) = header.get("x5t#S256") {
        let thumbprint = decode_base64_any(thumbprint.as_str()?)?;
        return certificates
            .iter()
            .find(|certificate| certificate.sha256 == thumbprint);
    }
    let thumbprint = decode_base64_any(header.get("x5t")?.as_str()?)?;
    certificates
        .iter()
        .find(|certificate| certificate.sha1 == thumbprint)
}

/// A compact JWS split into its parts, header and claims decoded.
struct DecodedJwt<'a> {
    /// `base64url(header) "." base64url(claims)`, the bytes the signature covers.
    signing_input: &'a str,
    /// A JSON object.
    header: Value,
    /// A JSON object.
    claims: Value,
    signature: Vec<u8>,
}

impl<'a> DecodedJwt<'a> {
    /// `None` unless the token has three base64 parts, the first two JSON objects.
    fn parse(token: &'a str) -> Option<Self> {
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

    fn claim_str(&self, name: &str) -> Option<&str> {
        self.claims.get(name).and_then(Value::as_str)
    }
}

/// Decodes base64url or standard base64, padded or not. A part with a `.` never decodes, so a
/// JWT with more than three parts is rejected here.
fn decode_base64_any(text: &str) -> Option<Vec<u8>> {
    let trimmed = text.trim().trim_end_matches('=');
    if trimmed.contains(['+', '/']) {
        base64::engine::general_purpose::STANDARD_NO_PAD
            .decode(trimmed)
            .ok()
    } else {
        URL_SAFE_NO_PAD.decode(trimmed).ok()
    }
}

/// The token endpoint URL a client posts to, which its assertions must name as `aud`.
fn token_endpoint_url(authority_host: &str, tenant: &str, version: ApiVersion) -> String {
    match version {
        ApiVersion::V2 => format!("{authority_host}/{tenant}/oauth2/v2.0/token"),
        ApiVersion::V1 => format!("{authority_host}/{tenant}/oauth2/token"),
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

fn catalogue_reply(incoming: &Incoming, code: u32) -> Reply {
    let (status, error, text) = catalogue(code);
    error_reply(
        incoming,
        status,
        error,
        code,
        text,
        &incoming.placeholders(),
    )
}

fn error_reply(
    incoming: &Incoming,
    status: StatusCode,
    error: &str,
    code: u32,
    text: &str,
    placeholders: &[(&'static str, String)],
) -> Reply {
    let body = error_body(
        error,
        code,
        text,
        placeholders,
        incoming.client_request_id.as_deref(),
    );
    let mut headers = json_headers();
    echo_request_id(&mut headers, incoming);
    Reply {
        response: (status, headers, body).into_response(),
        aadsts: Some(code),
    }
}

/// Serialises an Entra error with fresh trace and correlation ids.
fn error_body(
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

fn json_headers() -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(JSON_CONTENT_TYPE),
    );
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-store, no-cache"),
    );
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    headers
}

/// Entra returns the client's `client-request-id` header.
fn echo_request_id(headers: &mut HeaderMap, incoming: &Incoming) {
    if let Some(value) = incoming
        .client_request_id
        .as_deref()
        .and_then(|id| HeaderValue::from_str(id).ok())
    {
        headers.insert(HeaderName::from_static("client-request-id"), value);
    }
}

fn throttle_reply(incoming: &Incoming, retry_after: &RetryAfter, plain_text: bool) -> Reply {
    let value = match retry_after {
        RetryAfter::Seconds(seconds) => seconds.to_string(),
        RetryAfter::HttpDate(when) => httpdate::fmt_http_date(*when),
    };
    let mut reply = if plain_text {
        let headers = [(header::CONTENT_TYPE, "text/plain")];
        Reply::from((StatusCode::TOO_MANY_REQUESTS, headers, "Too Many Requests").into_response())
    } else {
        catalogue_reply(incoming, 90055)
    };
    // Both forms are plain ASCII (digits, or an IMF-fixdate), always valid header values.
    if let Ok(value) = HeaderValue::from_str(&value) {
        reply
            .response
            .headers_mut()
            .insert(header::RETRY_AFTER, value);
    }
    reply
}

fn server_error_reply(incoming: &Incoming, status: u16, json: bool) -> Reply {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if json {
        let code = if status == StatusCode::SERVICE_UNAVAILABLE {
            50033
        } else {
            50000
        };
        let (_, error, text) = catalogue(code);
        return error_reply(
            incoming,
            status,
            error,
            code,
            text,
            &incoming.placeholders(),
        );
    }
    let reason = status.canonical_reason().unwrap_or("Server Error");
    let page = format!(
        "<!DOCTYPE html>\r\n<html><head><title>{reason}</title></head>\r\n<body><h2>{reason}</h2>\
         <hr><p>HTTP Error {code}. The service is unavailable.</p></body></html>\r\n",
        code = status.as_u16()
    );
    let headers = [(header::CONTENT_TYPE, "text/html; charset=us-ascii")];
    (status, headers, page).into_response().into()
}

/// What a client sees when an intercepting proxy answers instead of Entra.
fn proxy_login_page() -> Response {
    const PAGE: &str = "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
        <title>Sign in - Corporate Web Gateway</title></head>\n<body><form method=\"post\" \
        action=\"/gateway/login\"><h1>Please sign in to continue</h1><p>Access to external \
        sites requires authentication.</p><label>User name <input name=\"user\"></label>\
        <label>Password <input name=\"password\" type=\"password\"></label>\
        <button type=\"submit\">Sign in</button></form></body></html>\n";
    let headers = [(header::CONTENT_TYPE, "text/html; charset=utf-8")];
    (StatusCode::OK, headers, PAGE).into_response()
}

/// A success body cut off in the middle of the `access_token` string.
fn truncated_response() -> Response {
    let mut body = format!(
        r#"{{"token_type":"Bearer","expires_in":3599,"ext_expires_in":3599,"access_token":"{}"}}"#,
        "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9".repeat(8)
    );
    body.truncate(body.len() / 2);
    (StatusCode::OK, json_headers(), body).into_response()
}

/// A token response of exactly `size` bytes.
fn oversized_response(size: usize) -> Response {
    const HEAD: &[u8] =
        br#"{"token_type":"Bearer","expires_in":3599,"ext_expires_in":3599,"access_token":""#;
    const TAIL: &[u8] = br#""}"#;
    let mut body = Vec::with_capacity(size);
    if size >= HEAD.len() + TAIL.len() {
        body.extend_from_slice(HEAD);
        body.resize(size - TAIL.len(), b'A');
        body.extend_from_slice(TAIL);
    } else {
        body.resize(size, b' ');
    }
    (StatusCode::OK, json_headers(), Body::from(body)).into_response()
}

/// Sent to a request still waiting when the simulator is dropped.
fn stopped_response() -> Response {
    let headers = [
        (header::CONTENT_TYPE, "text/plain"),
        (header::CONNECTION, "close"),
    ];
    (
        StatusCode::SERVICE_UNAVAILABLE,
        headers,
        "simulated Entra ID stopped",
    )
        .into_response()
}

/// v2 success body: numbers as JSON numbers.
#[derive(Serialize)]
struct V2Token {
    token_type: &'static str,
    expires_in: u64,
    ext_expires_in: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    refresh_in: Option<u64>,
    access_token: String,
}

/// v1 success body: numbers as JSON strings.
#[derive(Serialize)]
struct V1Token {
    token_type: &'static str,
    expires_in: String,
    ext_expires_in: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    refresh_in: Option<String>,
    expires_on: String,
    not_before: String,
    resource: String,
    access_token: String,
}

fn success_response(incoming: &Incoming, grant: &Grant, serial: u64) -> Response {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs());
    let lifetime = grant.lifetime.as_secs();
    let refresh_in = grant.refresh_in.map(|refresh| refresh.as_secs());
    let not_before = now.saturating_sub(NOT_BEFORE_BACKDATE_SECS);
    let expires_on = now + lifetime;
    let access_token = fake_jwt(&incoming.tenant, grant, not_before, expires_on, serial);
    // Serialising a struct of strings and integers cannot fail.
    let body = match incoming.version {
        ApiVersion::V2 => serde_json::to_vec(&V2Token {
            token_type: "Bearer",
            expires_in: lifetime,
            ext_expires_in: lifetime,
            refresh_in,
            access_token,
        }),
        ApiVersion::V1 => serde_json::to_vec(&V1Token {
            token_type: "Bearer",
            expires_in: lifetime.to_string(),
            ext_expires_in: lifetime.to_string(),
            refresh_in: refresh_in.map(|refresh| refresh.to_string()),
            expires_on: expires_on.to_string(),
            not_before: not_before.to_string(),
            resource: grant.resource.clone(),
            access_token,
        }),
    }
    .unwrap_or_default();
    let mut headers = json_headers();
    echo_request_id(&mut headers, incoming);
    (StatusCode::OK, headers, body).into_response()
}

/// A JWT-shaped access token (unsigned: the signature is random bytes) with the claims of a
/// real app-only Power BI token, about 1.3 KB long. `uti` carries the issue serial so no two
/// tokens are equal.
fn fake_jwt(tenant: &str, grant: &Grant, not_before: u64, expires_on: u64, serial: u64) -> String {
    let issuer = format!("https://sts.windows.net/{tenant}/");
    let object_id = random_guid();
    let payload = serde_json::json!({
        "aud": grant.resource,
        "iss": issuer,
        "iat": not_before,
        "nbf": not_before,
        "exp": expires_on,
        "aio": random_base64url(72),
        "appid": grant.client_id,
        "appidacr": "1",
        "idp": issuer,
        "idtyp": "app",
        "oid": object_id,
        "rh": format!("0.{}.", random_base64url(60)),
        "sub": object_id,
        "tid": tenant,
        "uti": unique_token_id(serial),
        "ver": "1.0",
        "xms_idrel": "7 18",
        "xms_tcdt": 1_600_000_000_u64,
        "xms_rd": random_base64url(90),
    });
    jwt_shaped(&payload)
}

/// The `uti` claim: the issue serial plus random bytes, so no two tokens are equal.
fn unique_token_id(serial: u64) -> String {
    let mut uti = [0u8; 16];
    uti[..8].copy_from_slice(&serial.to_be_bytes());
    fastrand::fill(&mut uti[8..]);
    URL_SAFE_NO_PAD.encode(uti)
}

/// A JWT with Entra's header, these claims, and random bytes for a signature.
fn jwt_shaped(payload: &Value) -> String {
    const HEADER: &str = r#"{"typ":"JWT","alg":"RS256","x5t":"c2ltdWxhdGVkLWVudHJhLWtleQ","kid":"c2ltdWxhdGVkLWVudHJhLWtleQ"}"#;
    let mut signature = [0u8; 256];
    fastrand::fill(&mut signature);
    format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(HEADER),
        URL_SAFE_NO_PAD.encode(payload.to_string()),
        URL_SAFE_NO_PAD.encode(signature)
    )
}

async fn openid_configuration(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let segment = request
        .uri()
        .path()
        .trim_start_matches('/')
        .split('/')
        .next()
        .unwrap_or_default();
    let tenant = decode_component(segment.as_bytes(), false);
    if shared.tenant(&tenant_key(&tenant)).is_none() {
        let (status, _, text) = catalogue(90002);
        let body = error_body(
            "invalid_tenant",
            90002,
            text,
            &[("tenant", tenant.clone())],
            None,
        );
        tracing::debug!(%tenant, status = status.as_u16(), "simulated Entra discovery request");
        return (status, json_headers(), body).into_response();
    }
    let host = &shared.authority_host;
    let document = serde_json::json!({
        "token_endpoint": token_endpoint_url(host, &tenant, ApiVersion::V2),
        "token_endpoint_auth_methods_supported":
            ["client_secret_post", "private_key_jwt", "client_secret_basic"],
        "jwks_uri": format!("{host}/{tenant}/discovery/v2.0/keys"),
        "response_modes_supported": ["query", "fragment", "form_post"],
        "subject_types_supported": ["pairwise"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
        "scopes_supported": ["openid", "profile", "email", "offline_access"],
        "issuer": format!("{host}/{tenant}/v2.0"),
        "request_uri_parameter_supported": false,
        "authorization_endpoint": format!("{host}/{tenant}/oauth2/v2.0/authorize"),
        "device_authorization_endpoint": format!("{host}/{tenant}/oauth2/v2.0/devicecode"),
        "end_session_endpoint": format!("{host}/{tenant}/oauth2/v2.0/logout"),
        "tenant_region_scope": "NA",
        "cloud_instance_name": "microsoftonline.com",
        "cloud_graph_host_name": "graph.windows.net",
        "msgraph_host": "graph.microsoft.com",
    });
    tracing::debug!(%tenant, status = 200, "simulated Entra discovery request");
    (StatusCode::OK, json_headers(), document.to_string()).into_response()
}

async fn imds_token(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    managed_identity_token(&shared, ManagedIdentityEndpoint::Imds, &request)
}

async fn app_service_token(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    managed_identity_token(&shared, ManagedIdentityEndpoint::AppService, &request)
}

/// A managed identity token request: method, headers and decoded query.
struct ManagedIdentityCall<'a> {
    endpoint: ManagedIdentityEndpoint,
    method: &'a Method,
    headers: &'a HeaderMap,
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
    client_id: String,
    resource: String,
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

/// The checks IMDS (reference §5.1) or App Service (§5.2) make, in order; a failure is the
/// finished response.
fn validate_managed_identity(
    call: &ManagedIdentityCall<'_>,
    identity: Option<&SimManagedIdentity>,
) -> Result<ManagedIdentityGrant, Response> {
    const BAD_REQUEST: StatusCode = StatusCode::BAD_REQUEST;
    if *call.method != Method::GET {
        // IMDS documents 405 for other methods; the body is not documented.
        return Err(managed_identity_error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "Only GET requests are supported.",
        ));
    }
    let selectors: &[&str] = match call.endpoint {
        ManagedIdentityEndpoint::Imds => {
            // The SSRF guard: exactly `true`, as the reference requires.
            if call.header("metadata") != Some("true") {
                return Err(managed_identity_error(
                    BAD_REQUEST,
                    "invalid_request",
                    "Required metadata header not specified",
                ));
            }
            // IMDS's text for a missing or unknown `api-version` on the identity endpoint is
            // not in the reference.
            if !call.param("api-version").is_some_and(is_imds_api_version) {
                return Err(managed_identity_error(
                    BAD_REQUEST,
                    "invalid_request",
                    "Required api-version parameter not specified or not supported",
                ));
            }
            &["client_id", "object_id", "msi_res_id"]
        }
        ManagedIdentityEndpoint::AppService => {
            // App Service has been seen answering a bad identity header with 401 (and 400 in
            // older versions, azure-sdk-for-js#11595); 401 says what is wrong. The body is not
            // documented.
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
            if call.param("api-version") != Some(APP_SERVICE_API_VERSION) {
                return Err(managed_identity_error(
                    BAD_REQUEST,
                    "invalid_request",
                    "Required api-version parameter not specified or not supported",
                ));
            }
            &["client_id", "principal_id", "object_id", "mi_res_id"]
        }
    };
    let Some(resource) = call.param("resource") else {
        return Err(managed_identity_error(
            BAD_REQUEST,
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
    let mut given = selectors
        .iter()
        .filter_map(|&name| call.param(name).map(|value| (name, value)));
    let selector = given.next();
    if given.next().is_some() {
        return Err(managed_identity_error(
            BAD_REQUEST,
            "invalid_request",
            "Only one of client_id, object_id (principal_id) or the resource id may be given.",
        ));
    }
    let (client_id, lifetime) = select_managed_identity(identity, selector)
        .map_err(|message| managed_identity_error(BAD_REQUEST, "invalid_request", message))?;
    Ok(ManagedIdentityGrant {
        client_id,
        resource: resource.to_owned(),
        lifetime,
    })
}

/// The identity a request names (`client_id`, or object id), or the default one: the
/// system-assigned identity, else a sole user-assigned one. Resource-id selectors match
/// nothing: Azure resource ids are not simulated.
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
    let access_token = jwt_shaped(&serde_json::json!({
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
    }));
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

/// A managed identity's object (principal) id: stable per client id, so a federated credential
/// registered for it keeps matching its tokens.
fn managed_identity_object_id(client_id: &str) -> String {
    let seed = format!("sim-managed-identity-object-id:{}", client_key(client_id));
    let hash = digest::digest(&digest::SHA256, seed.as_bytes());
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&hash.as_ref()[..16]);
    format_guid(u128::from_be_bytes(bytes))
}

/// Header names and values, the values of `secret` names replaced by `[REDACTED]`.
fn redacted_headers(headers: &HeaderMap, secret: &[&str]) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(name, value)| {
            let value = if secret.contains(&name.as_str()) {
                REDACTED.to_owned()
            } else {
                String::from_utf8_lossy(value.as_bytes()).into_owned()
            };
            (name.as_str().to_owned(), value)
        })
        .collect()
}

/// The key of an app's credentials: client ids are GUIDs, matched case-insensitively.
fn client_key(client_id: &str) -> String {
    client_id.to_ascii_lowercase()
}

/// Seconds since the Unix epoch, for assertion lifetimes.
fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| {
            i64::try_from(since.as_secs()).unwrap_or(i64::MAX)
        })
}

/// The registry key of a tenant path segment: Entra treats GUIDs and domains
/// case-insensitively.
fn tenant_key(tenant_id: &str) -> String {
    tenant_id.to_ascii_lowercase()
}

fn is_guid(text: &str) -> bool {
    text.len() == 36
        && text.bytes().enumerate().all(|(index, byte)| match index {
            8 | 13 | 18 | 23 => byte == b'-',
            _ => byte.is_ascii_hexdigit(),
        })
}

/// A DNS name: dot-separated labels of 1-63 letters, digits and inner hyphens.
fn is_dns_like(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 253
        && text.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-')
        })
}

/// Decodes `application/x-www-form-urlencoded` pairs; a field without `=` has an empty value.
fn parse_form(body: &[u8]) -> Vec<(String, String)> {
    body.split(|&byte| byte == b'&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = match pair.iter().position(|&byte| byte == b'=') {
                Some(at) => (&pair[..at], &pair[at + 1..]),
                None => (pair, &[][..]),
            };
            (decode_component(key, true), decode_component(value, true))
        })
        .collect()
}

/// Percent-decodes (and, in form data, turns `+` into a space); malformed escapes stay as
/// they are, invalid UTF-8 becomes U+FFFD.
fn decode_component(bytes: &[u8], plus_is_space: bool) -> String {
    fn hex(byte: u8) -> Option<u8> {
        char::from(byte)
            .to_digit(16)
            .and_then(|digit| u8::try_from(digit).ok())
    }
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        let byte = bytes[index];
        let escaped = (byte == b'%')
            .then(|| {
                let high = hex(*bytes.get(index + 1)?)?;
                let low = hex(*bytes.get(index + 2)?)?;
                Some(high << 4 | low)
            })
            .flatten();
        match escaped {
            Some(value) => {
                decoded.push(value);
                index += 3;
            }
            None => {
                decoded.push(if plus_is_space && byte == b'+' {
                    b' '
                } else {
                    byte
                });
                index += 1;
            }
        }
    }
    String::from_utf8_lossy(&decoded).into_owned()
}

/// `Authorization: Basic base64(urlencode(client_id) ":" urlencode(secret))` (RFC 6749
/// §2.3.1).
fn parse_basic(value: &str) -> Option<(String, String)> {
    let (scheme, credentials) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = STANDARD.decode(credentials.trim()).ok()?;
    let at = decoded.iter().position(|&byte| byte == b':')?;
    Some((
        decode_component(&decoded[..at], true),
        decode_component(&decoded[at + 1..], true),
    ))
}

/// A random version-4 GUID in Entra's lower-case hyphenated form.
fn random_guid() -> String {
    format_guid(fastrand::u128(..))
}

/// 128 bits as a version-4 (random) GUID: the version and variant bits are overwritten.
fn format_guid(bits: u128) -> String {
    let bits = bits & !(0xf << 76) & !(0x3 << 62) | (0x4 << 76) | (0x2 << 62);
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        bits >> 96,
        (bits >> 80) & 0xffff,
        (bits >> 64) & 0xffff,
        (bits >> 48) & 0xffff,
        bits & 0xffff_ffff_ffff
    )
}

fn random_base64url(bytes: usize) -> String {
    let mut buffer = vec![0u8; bytes];
    fastrand::fill(&mut buffer);
    URL_SAFE_NO_PAD.encode(buffer)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TENANT: &str = "8c3f2b1e-0d4a-4e6b-9f7a-1a2b3c4d5e6f";
    const APP: &str = "5d1e7c2a-3b4f-4a6d-8e9f-0a1b2c3d4e5f";
    const SECRET: &str = "s3cr3t~value+with/odd=chars&more";
    const POWER_BI: &str = "https://analysis.windows.net/powerbi/api";
    const POWER_BI_SCOPE: &str = "https://analysis.windows.net/powerbi/api/.default";

    /// A simulator with one tenant and one app, and an HTTP client for it (one per test:
    /// building a client is the slowest part of a request).
    struct Fixture {
        sim: SimEntra,
        http: reqwest::Client,
    }

    async fn fixture() -> Fixture {
        let sim = SimEntra::start().await.expect("simulator starts");
        sim.add_tenant(
            TENANT,
            SimTenant::new(SimApp::new(APP, SECRET), Duration::from_secs(3599)),
        );
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(5))
            .build()
            .expect("client builds");
        Fixture { sim, http }
    }

    fn v2_url(sim: &SimEntra, tenant: &str) -> String {
        format!("{}/{tenant}/oauth2/v2.0/token", sim.authority_host())
    }

    fn v1_url(sim: &SimEntra, tenant: &str) -> String {
        format!("{}/{tenant}/oauth2/token", sim.authority_host())
    }

    fn v2_form() -> Vec<(&'static str, &'static str)> {
        vec![
            ("grant_type", "client_credentials"),
            ("client_id", APP),
            ("client_secret", SECRET),
            ("scope", POWER_BI_SCOPE),
        ]
    }

    fn v1_form() -> Vec<(&'static str, &'static str)> {
        vec![
            ("grant_type", "client_credentials"),
            ("client_id", APP),
            ("client_secret", SECRET),
            ("resource", POWER_BI),
        ]
    }

    fn without(
        form: Vec<(&'static str, &'static str)>,
        key: &str,
    ) -> Vec<(&'static str, &'static str)> {
        form.into_iter().filter(|(name, _)| *name != key).collect()
    }

    fn with(
        form: Vec<(&'static str, &'static str)>,
        key: &'static str,
        value: &'static str,
    ) -> Vec<(&'static str, &'static str)> {
        let mut form = without(form, key);
        form.push((key, value));
        form
    }

    struct Answer {
        status: u16,
        headers: reqwest::header::HeaderMap,
        body: String,
    }

    impl Answer {
        fn json(&self) -> serde_json::Value {
            serde_json::from_str(&self.body).expect("JSON body")
        }

        fn header(&self, name: &str) -> Option<&str> {
            self.headers.get(name).and_then(|value| value.to_str().ok())
        }
    }

    async fn post(http: &reqwest::Client, url: &str, form: &[(&str, &str)]) -> Answer {
        answer(http.post(url).form(form)).await
    }

    async fn answer(request: reqwest::RequestBuilder) -> Answer {
        let response = request.send().await.expect("request answered");
        Answer {
            status: response.status().as_u16(),
            headers: response.headers().clone(),
            body: response.text().await.expect("body read"),
        }
    }

    fn looks_like_guid(text: &str) -> bool {
        is_guid(text) && text == text.to_ascii_lowercase()
    }

    fn looks_like_timestamp(text: &str) -> bool {
        chrono::NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%SZ").is_ok()
    }

    /// Checks the §2.1 shape and returns the body.
    fn assert_entra_error(
        answer: &Answer,
        status: u16,
        error: &str,
        code: u32,
    ) -> serde_json::Value {
        assert_eq!(answer.status, status, "status of {}", answer.body);
        assert_eq!(answer.header("content-type"), Some(JSON_CONTENT_TYPE));
        let body = answer.json();
        assert_eq!(body["error"], error, "{body}");
        assert_eq!(body["error_codes"], serde_json::json!([code]));
        let timestamp = body["timestamp"].as_str().expect("timestamp");
        let trace_id = body["trace_id"].as_str().expect("trace_id");
        let correlation_id = body["correlation_id"].as_str().expect("correlation_id");
        assert!(looks_like_timestamp(timestamp), "{timestamp}");
        assert!(looks_like_guid(trace_id), "{trace_id}");
        let description = body["error_description"].as_str().expect("description");
        assert!(
            description.starts_with(&format!("AADSTS{code}: ")),
            "{description}"
        );
        assert!(
            description.ends_with(&format!(
                "\r\nTrace ID: {trace_id}\r\nCorrelation ID: {correlation_id}\r\nTimestamp: {timestamp}"
            )),
            "{description}"
        );
        assert!(
            !description.contains('{'),
            "unfilled placeholder: {description}"
        );
        assert_eq!(
            body["error_uri"],
            format!("https://login.microsoftonline.com/error?code={code}")
        );
        body
    }

    fn decode_claims(token: &str) -> serde_json::Value {
        let parts: Vec<&str> = token.split('.').collect();
        assert_eq!(parts.len(), 3, "JWT-shaped");
        let payload = URL_SAFE_NO_PAD.decode(parts[1]).expect("base64url payload");
        serde_json::from_slice(&payload).expect("JSON claims")
    }

    #[tokio::test]
    async fn v2_success_has_numeric_fields_and_a_jwt_shaped_token() {
        let Fixture { sim, http } = fixture().await;
        let answer = post(&http, &v2_url(&sim, TENANT), &v2_form()).await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        assert_eq!(answer.header("content-type"), Some(JSON_CONTENT_TYPE));
        let body = answer.json();
        assert_eq!(body["token_type"], "Bearer");
        assert_eq!(body["expires_in"], serde_json::json!(3599));
        assert_eq!(body["ext_expires_in"], serde_json::json!(3599));
        for absent in [
            "refresh_in",
            "expires_on",
            "not_before",
            "resource",
            "refresh_token",
        ] {
            assert!(body.get(absent).is_none(), "{absent} must not appear in v2");
        }
        let token = body["access_token"].as_str().expect("token");
        assert!((1000..2500).contains(&token.len()), "{}", token.len());
        let claims = decode_claims(token);
        assert_eq!(claims["aud"], POWER_BI);
        assert_eq!(claims["tid"], TENANT);
        assert_eq!(claims["appid"], APP);
        assert_eq!(claims["iss"], format!("https://sts.windows.net/{TENANT}/"));
        let exp = claims["exp"].as_u64().expect("exp");
        let nbf = claims["nbf"].as_u64().expect("nbf");
        assert_eq!(exp - nbf, 3599 + NOT_BEFORE_BACKDATE_SECS);
        assert_eq!(claims["iat"], claims["nbf"]);
        assert!(claims["uti"].is_string());
        assert_eq!(sim.issued_count(TENANT), 1);
    }

    #[tokio::test]
    async fn v1_success_sends_numbers_as_strings() {
        let Fixture { sim, http } = fixture().await;
        let answer = post(&http, &v1_url(&sim, TENANT), &v1_form()).await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        let body = answer.json();
        assert_eq!(body["token_type"], "Bearer");
        assert_eq!(body["expires_in"], "3599");
        assert_eq!(body["ext_expires_in"], "3599");
        assert_eq!(body["resource"], POWER_BI);
        let expires_on: u64 = body["expires_on"]
            .as_str()
            .expect("string")
            .parse()
            .expect("epoch");
        let not_before: u64 = body["not_before"]
            .as_str()
            .expect("string")
            .parse()
            .expect("epoch");
        assert_eq!(expires_on - not_before, 3599 + NOT_BEFORE_BACKDATE_SECS);
        assert!(body.get("refresh_in").is_none());
        let claims = decode_claims(body["access_token"].as_str().expect("token"));
        assert_eq!(claims["exp"].as_u64(), Some(expires_on));
        assert_eq!(
            sim.last_request(TENANT).map(|r| r.version),
            Some(ApiVersion::V1)
        );
    }

    #[tokio::test]
    async fn refresh_in_is_a_number_on_v2_and_a_string_on_v1() {
        let Fixture { sim, http } = fixture().await;
        let mut tenant = SimTenant::new(SimApp::new(APP, SECRET), Duration::from_secs(7200));
        tenant.refresh_in = Some(Duration::from_secs(3600));
        sim.add_tenant(TENANT, tenant);
        let v2 = post(&http, &v2_url(&sim, TENANT), &v2_form()).await.json();
        assert_eq!(v2["refresh_in"], serde_json::json!(3600));
        assert_eq!(v2["expires_in"], serde_json::json!(7200));
        let v1 = post(&http, &v1_url(&sim, TENANT), &v1_form()).await.json();
        assert_eq!(v1["refresh_in"], "3600");
    }

    #[tokio::test]
    async fn every_sovereign_power_bi_resource_is_accepted() {
        let Fixture { sim, http } = fixture().await;
        for resource in POWER_BI_RESOURCES {
            let scope = format!("{resource}/.default");
            let mut form: Vec<(&str, &str)> = without(v2_form(), "scope");
            form.push(("scope", &scope));
            let answer = post(&http, &v2_url(&sim, TENANT), &form).await;
            assert_eq!(answer.status, 200, "{resource}: {}", answer.body);
        }
    }

    #[tokio::test]
    async fn tokens_differ_on_every_issue() {
        let Fixture { sim, http } = fixture().await;
        let first = post(&http, &v2_url(&sim, TENANT), &v2_form()).await.json();
        let second = post(&http, &v2_url(&sim, TENANT), &v2_form()).await.json();
        assert_ne!(first["access_token"], second["access_token"]);
        let first = decode_claims(first["access_token"].as_str().expect("token"));
        let second = decode_claims(second["access_token"].as_str().expect("token"));
        assert_ne!(first["uti"], second["uti"]);
        assert_eq!(sim.issued_count(TENANT), 2);
    }

    #[tokio::test]
    async fn basic_authentication_is_accepted_with_url_encoded_credentials() {
        let Fixture { sim, http } = fixture().await;
        let credentials = format!(
            "{APP}:{}",
            SECRET
                .replace('+', "%2B")
                .replace('/', "%2F")
                .replace('=', "%3D")
                .replace('&', "%26")
        );
        let request = http
            .post(v2_url(&sim, TENANT))
            .header(
                "authorization",
                format!("Basic {}", STANDARD.encode(credentials)),
            )
            .form(&[
                ("grant_type", "client_credentials"),
                ("scope", POWER_BI_SCOPE),
            ]);
        let answer = answer(request).await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        let recorded = sim.last_request(TENANT).expect("recorded");
        let authorization = recorded
            .headers
            .iter()
            .find(|(name, _)| name == "authorization")
            .map(|(_, value)| value.as_str());
        assert_eq!(authorization, Some("Basic [REDACTED]"));
    }

    #[tokio::test]
    async fn basic_authentication_with_a_wrong_secret_is_rejected() {
        let Fixture { sim, http } = fixture().await;
        let request = http
            .post(v2_url(&sim, TENANT))
            .header(
                "authorization",
                format!("Basic {}", STANDARD.encode(format!("{APP}:nope"))),
            )
            .form(&[
                ("grant_type", "client_credentials"),
                ("scope", POWER_BI_SCOPE),
            ]);
        assert_entra_error(&answer(request).await, 401, "invalid_client", 7000215);
    }

    #[tokio::test]
    async fn tenant_errors() {
        let Fixture { sim, http } = fixture().await;
        let answer = post(&http, &v2_url(&sim, "not_a%20tenant!"), &v2_form()).await;
        let body = assert_entra_error(&answer, 400, "invalid_request", 900023);
        let description = body["error_description"].as_str().unwrap_or_default();
        assert!(
            description.contains("'not_a tenant!' is neither a valid DNS name"),
            "{description}"
        );

        for special in ["common", "consumers"] {
            let answer = post(&http, &v2_url(&sim, special), &v2_form()).await;
            assert_entra_error(&answer, 400, "invalid_request", 9001023);
        }
        let answer = post(&http, &v2_url(&sim, "organizations"), &v2_form()).await;
        assert_entra_error(&answer, 400, "invalid_request", 90019);

        let answer = post(&http, &v1_url(&sim, "fabrikam.onmicrosoft.com"), &v1_form()).await;
        let body = assert_entra_error(&answer, 400, "invalid_request", 90002);
        let description = body["error_description"].as_str().unwrap_or_default();
        assert!(
            description.contains("Tenant 'fabrikam.onmicrosoft.com' not found."),
            "{description}"
        );
    }

    #[tokio::test]
    async fn grant_and_client_errors() {
        let Fixture { sim, http } = fixture().await;
        let url = v2_url(&sim, TENANT);
        let answer = post(&http, &url, &with(v2_form(), "grant_type", "password")).await;
        let body = assert_entra_error(&answer, 400, "unsupported_grant_type", 70003);
        assert!(
            body["error_description"]
                .as_str()
                .unwrap_or_default()
                .contains("'password'")
        );

        let answer = post(&http, &url, &without(v2_form(), "grant_type")).await;
        assert_entra_error(&answer, 400, "invalid_request", 900144);

        let answer = post(&http, &url, &without(v2_form(), "client_id")).await;
        let body = assert_entra_error(&answer, 400, "invalid_request", 900144);
        assert!(
            body["error_description"]
                .as_str()
                .unwrap_or_default()
                .contains("'client_id'")
        );

        let stranger = "11111111-2222-3333-4444-555555555555";
        let answer = post(&http, &url, &with(v2_form(), "client_id", stranger)).await;
        let body = assert_entra_error(&answer, 400, "unauthorized_client", 700016);
        let description = body["error_description"].as_str().unwrap_or_default();
        assert!(
            description.contains(&format!(
                "Application with identifier '{stranger}' was not found in the directory '{TENANT}'"
            )),
            "{description}"
        );
    }

    #[tokio::test]
    async fn secret_errors_never_echo_the_secret() {
        let Fixture { sim, http } = fixture().await;
        let url = v2_url(&sim, TENANT);
        let answer = post(&http, &url, &without(v2_form(), "client_secret")).await;
        assert_entra_error(&answer, 401, "invalid_client", 7000218);

        let answer = post(
            &http,
            &url,
            &with(v2_form(), "client_secret", "wrong-secret"),
        )
        .await;
        let body = assert_entra_error(&answer, 401, "invalid_client", 7000215);
        let description = body["error_description"].as_str().unwrap_or_default();
        assert!(
            description.contains(&format!("app '{APP}'")),
            "{description}"
        );
        assert!(!answer.body.contains("wrong-secret"));

        let mut expired = SimApp::new(APP, SECRET);
        expired.secret_expired = true;
        sim.set_app(TENANT, expired);
        let answer = post(&http, &url, &v2_form()).await;
        assert_entra_error(&answer, 401, "invalid_client", 7000222);
        assert!(!answer.body.contains(SECRET));

        let answer = post(
            &http,
            &url,
            &with(
                with(
                    without(v2_form(), "client_secret"),
                    "client_assertion",
                    "eyJ.e30.sig",
                ),
                "client_assertion_type",
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            ),
        )
        .await;
        assert_entra_error(&answer, 400, "invalid_request", 50027);

        let recorded = sim.last_request(TENANT).expect("recorded");
        assert!(
            recorded
                .form
                .contains(&("client_assertion".to_owned(), REDACTED.to_owned()))
        );
    }

    #[tokio::test]
    async fn secret_rotation_takes_effect_immediately() {
        let Fixture { sim, http } = fixture().await;
        let url = v2_url(&sim, TENANT);
        sim.set_app(TENANT, SimApp::new(APP, "rotated"));
        let answer = post(&http, &url, &v2_form()).await;
        assert_entra_error(&answer, 401, "invalid_client", 7000215);
        let answer = post(&http, &url, &with(v2_form(), "client_secret", "rotated")).await;
        assert_eq!(answer.status, 200);
        let recorded = sim.last_request(TENANT).expect("recorded");
        assert!(
            recorded
                .form
                .contains(&("client_secret".to_owned(), REDACTED.to_owned()))
        );
        assert!(
            recorded
                .form
                .contains(&("client_id".to_owned(), APP.to_owned()))
        );
    }

    #[tokio::test]
    async fn v2_scope_errors() {
        let Fixture { sim, http } = fixture().await;
        let url = v2_url(&sim, TENANT);
        let answer = post(&http, &url, &with(v2_form(), "resource", POWER_BI)).await;
        assert_entra_error(&answer, 400, "invalid_request", 901002);

        let answer = post(&http, &url, &without(v2_form(), "scope")).await;
        let body = assert_entra_error(&answer, 400, "invalid_request", 900144);
        assert!(
            body["error_description"]
                .as_str()
                .unwrap_or_default()
                .contains("'scope'")
        );

        let answer = post(
            &http,
            &url,
            &with(
                v2_form(),
                "scope",
                "https://analysis.windows.net/powerbi/api/Report.Read.All",
            ),
        )
        .await;
        assert_entra_error(&answer, 400, "invalid_scope", 1002012);

        let answer = post(&http, &url,
            &with(v2_form(), "scope", "https://analysis.windows.net/powerbi/api/.default https://graph.microsoft.com/.default"),
        )
        .await;
        assert_entra_error(&answer, 400, "invalid_scope", 700022);

        let answer = post(
            &http,
            &url,
            &with(v2_form(), "scope", "https://graph.microsoft.com/.default"),
        )
        .await;
        let body = assert_entra_error(&answer, 400, "invalid_resource", 500011);
        let description = body["error_description"].as_str().unwrap_or_default();
        assert!(
            description.contains("https://graph.microsoft.com was not found"),
            "{description}"
        );
        assert_eq!(sim.issued_count(TENANT), 0);
    }

    #[tokio::test]
    async fn v1_resource_errors() {
        let Fixture { sim, http } = fixture().await;
        let url = v1_url(&sim, TENANT);
        let answer = post(&http, &url, &without(v1_form(), "resource")).await;
        let body = assert_entra_error(&answer, 400, "invalid_request", 900144);
        assert!(
            body["error_description"]
                .as_str()
                .unwrap_or_default()
                .contains("'resource'")
        );
        let answer = post(
            &http,
            &url,
            &with(v1_form(), "resource", "https://management.azure.com/"),
        )
        .await;
        assert_entra_error(&answer, 400, "invalid_resource", 500011);
    }

    #[tokio::test]
    async fn tenant_without_power_bi_gets_invalid_resource() {
        let Fixture { sim, http } = fixture().await;
        let mut tenant = SimTenant::new(SimApp::new(APP, SECRET), Duration::from_secs(3599));
        tenant.power_bi_present = false;
        sim.add_tenant(TENANT, tenant);
        let answer = post(&http, &v2_url(&sim, TENANT), &v2_form()).await;
        assert_entra_error(&answer, 400, "invalid_resource", 500011);
    }

    #[tokio::test]
    async fn non_form_bodies_and_other_methods_are_rejected() {
        let Fixture { sim, http } = fixture().await;
        let request = http
            .post(v2_url(&sim, TENANT))
            .header("content-type", "application/json")
            .body(r#"{"grant_type":"client_credentials"}"#);
        let body = assert_entra_error(&answer(request).await, 400, "invalid_request", 900144);
        assert!(
            body["error_description"]
                .as_str()
                .unwrap_or_default()
                .contains("'grant_type'")
        );

        let answer = answer(http.get(v2_url(&sim, TENANT))).await;
        let body = assert_entra_error(&answer, 400, "invalid_request", 900561);
        assert!(
            body["error_description"]
                .as_str()
                .unwrap_or_default()
                .contains("Received a GET request")
        );
    }

    #[tokio::test]
    async fn extra_parameters_and_headers_are_tolerated_and_recorded() {
        let Fixture { sim, http } = fixture().await;
        let request = http
            .post(v2_url(&sim, TENANT))
            .header("x-client-sku", "powerbi-tokend")
            .header("x-ms-lib-capability", "retry-after, h429")
            .header("client-request-id", "0f0e0d0c-1111-2222-3333-444455556666")
            .form(&with(v2_form(), "client_info", "1"));
        let answer = answer(request).await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        assert_eq!(
            answer.header("client-request-id"),
            Some("0f0e0d0c-1111-2222-3333-444455556666")
        );
        let recorded = sim.last_request(TENANT).expect("recorded");
        assert_eq!(recorded.version, ApiVersion::V2);
        assert!(
            recorded
                .form
                .contains(&("client_info".to_owned(), "1".to_owned()))
        );
        assert!(
            recorded
                .form
                .contains(&("scope".to_owned(), POWER_BI_SCOPE.to_owned()))
        );
        assert!(
            recorded
                .headers
                .contains(&("x-client-sku".to_owned(), "powerbi-tokend".to_owned()))
        );
    }

    #[tokio::test]
    async fn client_request_id_becomes_the_correlation_id() {
        let Fixture { sim, http } = fixture().await;
        let request = http
            .post(v2_url(&sim, TENANT))
            .header("client-request-id", "9f1e2d3c-aaaa-bbbb-cccc-ddddeeeeffff")
            .form(&with(v2_form(), "client_secret", "wrong"));
        let body = assert_entra_error(&answer(request).await, 401, "invalid_client", 7000215);
        assert_eq!(
            body["correlation_id"],
            "9f1e2d3c-aaaa-bbbb-cccc-ddddeeeeffff"
        );
    }

    #[tokio::test]
    async fn aadsts_behavior_answers_from_the_catalogue() {
        let Fixture { sim, http } = fixture().await;
        for code in [
            7000215, 7000222, 700016, 90002, 900023, 500011, 7000218, 70011, 1002012, 901002,
            50033, 90055,
        ] {
            sim.set_behavior(TENANT, Behavior::Aadsts(code));
            let answer = post(&http, &v2_url(&sim, TENANT), &v2_form()).await;
            let (status, error, _) = catalogue(code);
            assert_entra_error(&answer, status.as_u16(), error, code);
        }
        assert_eq!(sim.issued_count(TENANT), 0);
    }

    #[tokio::test]
    async fn throttle_with_seconds_and_json_body() {
        let Fixture { sim, http } = fixture().await;
        sim.set_behavior(
            TENANT,
            Behavior::Throttle {
                retry_after: RetryAfter::Seconds(60),
                plain_text: false,
            },
        );
        let answer = post(&http, &v2_url(&sim, TENANT), &v2_form()).await;
        assert_eq!(answer.header("retry-after"), Some("60"));
        assert_entra_error(&answer, 429, "temporarily_unavailable", 90055);
    }

    #[tokio::test]
    async fn throttle_with_http_date_and_plain_text_body() {
        let Fixture { sim, http } = fixture().await;
        let when = UNIX_EPOCH + Duration::from_secs(1_767_225_660);
        sim.set_behavior(
            TENANT,
            Behavior::Throttle {
                retry_after: RetryAfter::HttpDate(when),
                plain_text: true,
            },
        );
        let answer = post(&http, &v2_url(&sim, TENANT), &v2_form()).await;
        assert_eq!(answer.status, 429);
        assert_eq!(
            answer.header("retry-after"),
            Some("Thu, 01 Jan 2026 00:01:00 GMT")
        );
        assert_eq!(answer.header("content-type"), Some("text/plain"));
        assert_eq!(answer.body, "Too Many Requests");
    }

    #[tokio::test]
    async fn server_errors_carry_no_retry_after() {
        let Fixture { sim, http } = fixture().await;
        let url = v2_url(&sim, TENANT);
        sim.push_script(
            TENANT,
            [
                Behavior::ServerError {
                    status: 502,
                    json: false,
                },
                Behavior::ServerError {
                    status: 500,
                    json: true,
                },
                Behavior::ServerError {
                    status: 503,
                    json: true,
                },
                Behavior::TemporarilyUnavailable,
            ],
        );
        let html = post(&http, &url, &v2_form()).await;
        assert_eq!(html.status, 502);
        assert!(
            html.header("content-type")
                .is_some_and(|value| value.starts_with("text/html"))
        );
        assert!(html.body.contains("Bad Gateway"));
        assert!(html.header("retry-after").is_none());

        let json = post(&http, &url, &v2_form()).await;
        assert_entra_error(&json, 500, "server_error", 50000);
        assert!(json.header("retry-after").is_none());

        let unavailable = post(&http, &url, &v2_form()).await;
        assert_entra_error(&unavailable, 503, "temporarily_unavailable", 50033);

        let temporarily = post(&http, &url, &v2_form()).await;
        assert_entra_error(&temporarily, 503, "temporarily_unavailable", 50033);
        assert!(temporarily.header("retry-after").is_none());
    }

    #[tokio::test]
    async fn script_is_consumed_in_order_then_the_persistent_behavior_applies() {
        let Fixture { sim, http } = fixture().await;
        let url = v2_url(&sim, TENANT);
        sim.set_behavior(TENANT, Behavior::Aadsts(7000222));
        sim.push_script(
            TENANT,
            [
                Behavior::TemporarilyUnavailable,
                Behavior::Aadsts(90055),
                Behavior::Normal,
            ],
        );
        assert_eq!(post(&http, &url, &v2_form()).await.status, 503);
        assert_eq!(post(&http, &url, &v2_form()).await.status, 429);
        assert_eq!(post(&http, &url, &v2_form()).await.status, 200);
        for _ in 0..2 {
            assert_entra_error(
                &post(&http, &url, &v2_form()).await,
                401,
                "invalid_client",
                7000222,
            );
        }
        sim.set_behavior(TENANT, Behavior::Normal);
        assert_eq!(post(&http, &url, &v2_form()).await.status, 200);
        assert_eq!(sim.request_count(TENANT), 6);
        assert_eq!(sim.issued_count(TENANT), 2);
    }

    #[tokio::test]
    async fn counts_cover_every_request_including_unknown_tenants() {
        let Fixture { sim, http } = fixture().await;
        let unknown = "unknown.example.com";
        post(&http, &v2_url(&sim, TENANT), &v2_form()).await;
        post(&http, &v1_url(&sim, TENANT), &v1_form()).await;
        post(
            &http,
            &v2_url(&sim, TENANT),
            &with(v2_form(), "client_secret", "wrong"),
        )
        .await;
        post(&http, &v2_url(&sim, unknown), &v2_form()).await;
        post(&http, &v2_url(&sim, "bad_segment"), &v2_form()).await;
        assert_eq!(sim.request_count(TENANT), 3);
        assert_eq!(sim.request_count(&TENANT.to_ascii_uppercase()), 3);
        assert_eq!(sim.issued_count(TENANT), 2);
        assert_eq!(sim.request_count(unknown), 1);
        assert_eq!(sim.issued_count(unknown), 0);
        assert_eq!(sim.request_count("bad_segment"), 1);
        assert_eq!(sim.request_count("never-seen.example.com"), 0);
        assert_eq!(sim.total_requests(), 5);
        assert!(sim.last_request("never-seen.example.com").is_none());
    }

    #[tokio::test]
    async fn removed_tenant_is_unknown() {
        let Fixture { sim, http } = fixture().await;
        sim.remove_tenant(TENANT);
        let answer = post(&http, &v2_url(&sim, TENANT), &v2_form()).await;
        assert_entra_error(&answer, 400, "invalid_request", 90002);
    }

    #[tokio::test]
    async fn tenants_are_matched_case_insensitively_by_domain() {
        let Fixture { sim, http } = fixture().await;
        sim.add_tenant(
            "Contoso.onmicrosoft.com",
            SimTenant::new(SimApp::new(APP, SECRET), Duration::from_secs(60)),
        );
        let answer = post(&http, &v2_url(&sim, "contoso.ONMICROSOFT.com"), &v2_form()).await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        assert_eq!(sim.issued_count("contoso.onmicrosoft.com"), 1);
    }

    #[tokio::test]
    async fn malformed_success_bodies() {
        let Fixture { sim, http } = fixture().await;
        let url = v2_url(&sim, TENANT);
        sim.push_script(
            TENANT,
            [
                Behavior::Html,
                Behavior::Truncated,
                Behavior::Oversized(200_000),
                Behavior::Oversized(10),
            ],
        );

        let html = post(&http, &url, &v2_form()).await;
        assert_eq!(html.status, 200);
        assert!(
            html.header("content-type")
                .is_some_and(|value| value.starts_with("text/html"))
        );
        assert!(serde_json::from_str::<serde_json::Value>(&html.body).is_err());

        let truncated = post(&http, &url, &v2_form()).await;
        assert_eq!(truncated.status, 200);
        assert_eq!(truncated.header("content-type"), Some(JSON_CONTENT_TYPE));
        assert!(truncated.body.starts_with(r#"{"token_type":"Bearer""#));
        assert!(serde_json::from_str::<serde_json::Value>(&truncated.body).is_err());

        let oversized = post(&http, &url, &v2_form()).await;
        assert_eq!(oversized.status, 200);
        assert_eq!(oversized.body.len(), 200_000);
        assert!(oversized.json()["access_token"].is_string());

        let tiny = post(&http, &url, &v2_form()).await;
        assert_eq!(tiny.body.len(), 10);
        assert_eq!(sim.issued_count(TENANT), 0);
    }

    #[tokio::test]
    async fn slow_answers_after_the_delay() {
        let Fixture { sim, http } = fixture().await;
        sim.push_script(TENANT, [Behavior::Slow(Duration::from_millis(80))]);
        let started = std::time::Instant::now();
        let answer = post(&http, &v2_url(&sim, TENANT), &v2_form()).await;
        assert_eq!(answer.status, 200);
        assert!(started.elapsed() >= Duration::from_millis(80));
    }

    #[tokio::test]
    async fn hang_never_answers() {
        let Fixture { sim, http } = fixture().await;
        sim.set_behavior(TENANT, Behavior::Hang);
        let result = http
            .post(v2_url(&sim, TENANT))
            .timeout(Duration::from_millis(100))
            .form(&v2_form())
            .send()
            .await;
        assert!(result.is_err_and(|error| error.is_timeout()));
        assert_eq!(sim.request_count(TENANT), 1);
    }

    #[tokio::test]
    async fn openid_configuration_for_known_and_unknown_tenants() {
        let Fixture { sim, http } = fixture().await;
        let url = format!(
            "{}/{TENANT}/v2.0/.well-known/openid-configuration",
            sim.authority_host()
        );
        let known = answer(http.get(&url)).await;
        assert_eq!(known.status, 200);
        assert_eq!(known.json()["token_endpoint"], v2_url(&sim, TENANT));

        let url = format!(
            "{}/nobody.example.com/v2.0/.well-known/openid-configuration",
            sim.authority_host()
        );
        let unknown = answer(http.get(&url)).await;
        assert_entra_error(&unknown, 400, "invalid_tenant", 90002);
        assert_eq!(sim.total_requests(), 0, "discovery is not a token request");
    }

    #[tokio::test]
    async fn dropping_the_simulator_stops_it() {
        let Fixture { sim, http } = fixture().await;
        let addr = sim.addr();
        assert_eq!(sim.authority_host(), format!("http://{addr}"));
        sim.set_behavior(TENANT, Behavior::Hang);
        let hung = tokio::spawn(async move {
            let url = format!("http://{addr}/{TENANT}/oauth2/v2.0/token");
            http.post(url)
                .form(&v2_form())
                .send()
                .await
                .map(|response| response.status().as_u16())
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(sim);
        let status = hung.await.expect("task joins");
        assert!(status.is_err() || status.is_ok_and(|status| status == 503));
        let mut refused = false;
        for _ in 0..50 {
            if tokio::net::TcpStream::connect(addr).await.is_err() {
                refused = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(refused, "listener closed after drop");
    }

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

    #[test]
    fn tenant_syntax() {
        assert!(is_guid(TENANT));
        assert!(!is_guid("8c3f2b1e-0d4a-4e6b-9f7a-1a2b3c4d5e6"));
        assert!(is_dns_like("contoso.onmicrosoft.com"));
        assert!(is_dns_like("tenant-1"));
        assert!(!is_dns_like("bad_segment"));
        assert!(!is_dns_like("-x.com"));
        assert!(!is_dns_like("a..b"));
        assert!(!is_dns_like(""));
    }

    #[test]
    fn form_and_basic_decoding() {
        assert_eq!(
            parse_form(b"a=1+2&b=%2B%3D%26&flag&&c=%zz"),
            vec![
                ("a".to_owned(), "1 2".to_owned()),
                ("b".to_owned(), "+=&".to_owned()),
                ("flag".to_owned(), String::new()),
                ("c".to_owned(), "%zz".to_owned()),
            ]
        );
        let header = format!("basic {}", STANDARD.encode("id%3A1:p%3Aw+d"));
        assert_eq!(
            parse_basic(&header),
            Some(("id:1".to_owned(), "p:w d".to_owned()))
        );
        assert_eq!(parse_basic("Bearer abc"), None);
    }

    #[test]
    fn random_guids_are_version_4() {
        for _ in 0..100 {
            let guid = random_guid();
            assert!(looks_like_guid(&guid), "{guid}");
            assert_eq!(&guid[14..15], "4");
            assert!(matches!(&guid[19..20], "8" | "9" | "a" | "b"), "{guid}");
        }
    }

    // ---- certificate credentials, federation and managed identity ----

    const USER_ASSIGNED: &str = "7a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d";
    const IDENTITY_HEADER: &str = "identity-header-fixture";
    const AKS_ISSUER: &str =
        "https://oidc.prod-aks.azure.com/1b2c3d4e-0000-4000-8000-5f6a7b8c9d0e/";
    const AKS_SUBJECT: &str = "system:serviceaccount:powerbi:tokend";
    const TOKEN_EXCHANGE: &str = "api://AzureADTokenExchange";

    /// An RSA key and its self-signed certificate.
    struct TestKey {
        cert_der: Vec<u8>,
        key_pair: aws_lc_rs::signature::RsaKeyPair,
    }

    /// Two keys, made once per test run by the `openssl` command line (the crate has no
    /// certificate generator); key generation is the slow part, so both run at once.
    fn test_keys() -> &'static [TestKey; 2] {
        static KEYS: std::sync::OnceLock<[TestKey; 2]> = std::sync::OnceLock::new();
        KEYS.get_or_init(|| {
            let dir = tempfile::tempdir().expect("temp dir");
            let children: Vec<_> = (0..2)
                .map(|index| {
                    std::process::Command::new("openssl")
                        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout"])
                        .arg(dir.path().join(format!("key{index}.pem")))
                        .arg("-out")
                        .arg(dir.path().join(format!("cert{index}.pem")))
                        .args(["-days", "30", "-subj", "/CN=powerbi-tokend-sim-test"])
                        .stdout(std::process::Stdio::null())
                        .stderr(std::process::Stdio::piped())
                        .spawn()
                        .expect("openssl runs")
                })
                .collect();
            for child in children {
                let output = child.wait_with_output().expect("openssl finishes");
                assert!(
                    output.status.success(),
                    "{}",
                    String::from_utf8_lossy(&output.stderr)
                );
            }
            [0, 1].map(|index| load_test_key(dir.path(), index))
        })
    }

    fn load_test_key(dir: &std::path::Path, index: usize) -> TestKey {
        use rustls_pki_types::PrivateKeyDer;
        use rustls_pki_types::pem::PemObject;
        let cert_der = CertificateDer::from_pem_file(dir.join(format!("cert{index}.pem")))
            .expect("certificate PEM")
            .to_vec();
        let key =
            PrivateKeyDer::from_pem_file(dir.join(format!("key{index}.pem"))).expect("key PEM");
        let PrivateKeyDer::Pkcs8(key) = key else {
            panic!("openssl writes PKCS#8 keys");
        };
        let key_pair =
            aws_lc_rs::signature::RsaKeyPair::from_pkcs8(key.secret_pkcs8_der()).expect("RSA key");
        TestKey { cert_der, key_pair }
    }

    /// `x5t#S256` as MSAL.NET and Python send it: base64url SHA-256.
    fn sha256_thumbprint(key: &TestKey) -> String {
        URL_SAFE_NO_PAD.encode(digest::digest(&digest::SHA256, &key.cert_der))
    }

    /// `x5t` as the Rust SDK sends it: standard base64 SHA-1, padded.
    fn sha1_thumbprint_standard(key: &TestKey) -> String {
        STANDARD.encode(digest::digest(
            &digest::SHA1_FOR_LEGACY_USE_ONLY,
            &key.cert_der,
        ))
    }

    /// Signs with PSS when the header says PS256, else PKCS#1 v1.5.
    fn sign(key: &TestKey, header: &Value, claims: &Value) -> String {
        use aws_lc_rs::signature::{RSA_PKCS1_SHA256, RSA_PSS_SHA256, RsaEncoding};
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let encoding: &'static dyn RsaEncoding = if header["alg"] == "PS256" {
            &RSA_PSS_SHA256
        } else {
            &RSA_PKCS1_SHA256
        };
        let mut signature = vec![0; key.key_pair.public_modulus_len()];
        key.key_pair
            .sign(
                encoding,
                &aws_lc_rs::rand::SystemRandom::new(),
                input.as_bytes(),
                &mut signature,
            )
            .expect("signs");
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature))
    }

    fn ps256_header(key: &TestKey) -> Value {
        serde_json::json!({ "alg": "PS256", "typ": "JWT", "x5t#S256": sha256_thumbprint(key) })
    }

    /// The claims every library sends, valid for ten minutes from now.
    fn assertion_claims(audience: &str) -> Value {
        let now = unix_now();
        serde_json::json!({
            "aud": audience,
            "iss": APP,
            "sub": APP,
            "jti": random_guid(),
            "nbf": now,
            "exp": now + 600,
            "iat": now,
        })
    }

    /// A token from an external issuer, with a signature of random bytes.
    fn federated_token(issuer: &str, subject: &str, audience: Value, expires: i64) -> String {
        let header = serde_json::json!({ "alg": "RS256", "kid": "cluster-key-1" });
        let claims = serde_json::json!({
            "iss": issuer,
            "sub": subject,
            "aud": audience,
            "exp": expires,
            "iat": unix_now(),
            "nbf": unix_now(),
        });
        format!(
            "{}.{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string()),
            random_base64url(256)
        )
    }

    /// A client-credentials request authenticated by `assertion` to a v2 or v1 endpoint.
    async fn post_assertion(http: &reqwest::Client, url: &str, assertion: &str) -> Answer {
        let target = if url.ends_with("/v2.0/token") {
            ("scope", POWER_BI_SCOPE)
        } else {
            ("resource", POWER_BI)
        };
        let form = [
            ("grant_type", "client_credentials"),
            ("client_id", APP),
            ("client_assertion_type", JWT_BEARER_ASSERTION_TYPE),
            ("client_assertion", assertion),
            target,
        ];
        post(http, url, &form).await
    }

    fn query_url(base: &str, query: &[(&str, &str)]) -> String {
        fn encode(text: &str) -> String {
            text.bytes()
                .map(|byte| match byte {
                    b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                        char::from(byte).to_string()
                    }
                    _ => format!("%{byte:02X}"),
                })
                .collect()
        }
        let pairs: Vec<String> = query
            .iter()
            .map(|(name, value)| format!("{}={}", encode(name), encode(value)))
            .collect();
        format!("{base}?{}", pairs.join("&"))
    }

    fn host_identity() -> SimManagedIdentity {
        SimManagedIdentity {
            system_assigned: true,
            user_assigned: vec![USER_ASSIGNED.to_owned()],
            lifetime: Duration::from_secs(86399),
            identity_header: IDENTITY_HEADER.to_owned(),
        }
    }

    async fn imds_get(http: &reqwest::Client, sim: &SimEntra, query: &[(&str, &str)]) -> Answer {
        let url = query_url(&sim.imds_endpoint(), query);
        answer(http.get(url).header("Metadata", "true")).await
    }

    fn epoch_string(body: &Value, field: &str) -> u64 {
        body[field]
            .as_str()
            .unwrap_or_else(|| panic!("{field} is a string: {body}"))
            .parse()
            .expect("epoch seconds")
    }

    #[tokio::test]
    async fn certificate_assertion_with_ps256_and_sha256_thumbprint() {
        let Fixture { sim, http } = fixture().await;
        let key = &test_keys()[0];
        sim.add_certificate(TENANT, APP, key.cert_der.clone());
        let url = v2_url(&sim, TENANT);
        let header = ps256_header(key);
        // MSAL.NET writes `nbf` and `exp` as strings.
        let mut claims = assertion_claims(&url);
        let now = unix_now();
        claims["nbf"] = Value::from(now.to_string());
        claims["exp"] = Value::from((now + 600).to_string());

        let answer = post_assertion(&http, &url, &sign(key, &header, &claims)).await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        let token = answer.json()["access_token"]
            .as_str()
            .expect("token")
            .to_owned();
        assert_eq!(decode_claims(&token)["appid"], APP);
        let recorded = sim.last_assertion(TENANT).expect("assertion recorded");
        assert_eq!(recorded.header, header);
        assert_eq!(recorded.claims, claims);
        let request = sim.last_request(TENANT).expect("recorded");
        assert!(
            request
                .form
                .contains(&("client_assertion".to_owned(), REDACTED.to_owned()))
        );

        // The v1 endpoint wants its own URL as the audience.
        let v1 = v1_url(&sim, TENANT);
        let answer = post_assertion(&http, &v1, &sign(key, &header, &assertion_claims(&v1))).await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        assert_eq!(answer.json()["expires_in"], "3599");
        assert_eq!(sim.issued_count(TENANT), 2);
    }

    #[tokio::test]
    async fn certificate_assertion_with_rs256_and_standard_base64_sha1_thumbprint() {
        let Fixture { sim, http } = fixture().await;
        let [old, new] = test_keys();
        // Key rollover: both certificates are registered, the new key signs.
        sim.add_certificate(TENANT, APP, old.cert_der.clone());
        sim.add_certificate(TENANT, &APP.to_ascii_uppercase(), new.cert_der.clone());
        let url = v2_url(&sim, TENANT);
        let thumbprint = sha1_thumbprint_standard(new);
        assert!(thumbprint.ends_with('='), "padded: {thumbprint}");
        let header = serde_json::json!({ "alg": "RS256", "typ": "JWT", "x5t": thumbprint });
        let answer =
            post_assertion(&http, &url, &sign(new, &header, &assertion_claims(&url))).await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        let recorded = sim.last_assertion(TENANT).expect("assertion recorded");
        assert_eq!(recorded.header["alg"], "RS256");
        assert!(recorded.claims["nbf"].is_number());
    }

    #[tokio::test]
    async fn unregistered_certificate_or_bad_signature_gets_700027() {
        let Fixture { sim, http } = fixture().await;
        let [registered, stranger] = test_keys();
        sim.add_certificate(TENANT, APP, registered.cert_der.clone());
        let url = v2_url(&sim, TENANT);
        let claims = assertion_claims(&url);

        let unregistered = sign(stranger, &ps256_header(stranger), &claims);
        let answer = post_assertion(&http, &url, &unregistered).await;
        assert_entra_error(&answer, 401, "invalid_client", 700027);

        // The registered thumbprint, signed by another key.
        let forged = sign(stranger, &ps256_header(registered), &claims);
        let answer = post_assertion(&http, &url, &forged).await;
        assert_entra_error(&answer, 401, "invalid_client", 700027);

        // A valid assertion whose claims were changed after signing.
        let valid = sign(registered, &ps256_header(registered), &claims);
        let (header_part, rest) = valid.split_once('.').expect("JWT");
        let (_, signature_part) = rest.split_once('.').expect("JWT");
        let mut altered = claims.clone();
        altered["exp"] = Value::from(unix_now() + 86_400);
        let tampered = format!(
            "{header_part}.{}.{signature_part}",
            URL_SAFE_NO_PAD.encode(altered.to_string())
        );
        let answer = post_assertion(&http, &url, &tampered).await;
        assert_entra_error(&answer, 401, "invalid_client", 700027);

        // A PSS signature under a header that claims PKCS#1 v1.5.
        let mut header = ps256_header(registered);
        let pss = sign(registered, &header, &claims);
        header["alg"] = Value::from("RS256");
        let (_, pss_rest) = pss.split_once('.').expect("JWT");
        let relabelled = format!("{}.{pss_rest}", URL_SAFE_NO_PAD.encode(header.to_string()));
        let answer = post_assertion(&http, &url, &relabelled).await;
        assert_entra_error(&answer, 401, "invalid_client", 700027);
        assert!(sim.last_assertion(TENANT).is_none());

        assert_eq!(post_assertion(&http, &url, &valid).await.status, 200);
        sim.remove_certificates(TENANT, APP);
        let answer = post_assertion(&http, &url, &valid).await;
        assert_entra_error(&answer, 401, "invalid_client", 700027);
        assert_eq!(sim.issued_count(TENANT), 1);
    }

    #[tokio::test]
    async fn assertion_lifetime_allows_five_minutes_of_skew() {
        let Fixture { sim, http } = fixture().await;
        let key = &test_keys()[0];
        sim.add_certificate(TENANT, APP, key.cert_der.clone());
        let url = v2_url(&sim, TENANT);
        let now = unix_now();
        let with_times = |nbf: Option<i64>, exp: Option<i64>| {
            let mut claims = assertion_claims(&url);
            let object = claims.as_object_mut().expect("object");
            object.remove("nbf");
            object.remove("exp");
            if let Some(nbf) = nbf {
                object.insert("nbf".to_owned(), Value::from(nbf));
            }
            if let Some(exp) = exp {
                object.insert("exp".to_owned(), Value::from(exp));
            }
            sign(key, &ps256_header(key), &claims)
        };

        let expired = with_times(Some(now - 1200), Some(now - 600));
        let answer = post_assertion(&http, &url, &expired).await;
        let body = assert_entra_error(&answer, 401, "invalid_client", 700024);
        assert!(
            body["error_description"]
                .as_str()
                .unwrap_or_default()
                .contains("not within its valid time range")
        );
        let early = with_times(Some(now + 600), Some(now + 1200));
        assert_entra_error(
            &post_assertion(&http, &url, &early).await,
            401,
            "invalid_client",
            700024,
        );
        let no_expiry = with_times(Some(now), None);
        assert_entra_error(
            &post_assertion(&http, &url, &no_expiry).await,
            400,
            "invalid_request",
            50027,
        );

        // Within the skew, and without `nbf` as MSAL Python sends it.
        let just_expired = with_times(Some(now - 600), Some(now - 60));
        assert_eq!(post_assertion(&http, &url, &just_expired).await.status, 200);
        let slightly_early = with_times(Some(now + 60), Some(now + 600));
        assert_eq!(
            post_assertion(&http, &url, &slightly_early).await.status,
            200
        );
        let without_nbf = with_times(None, Some(now + 600));
        assert_eq!(post_assertion(&http, &url, &without_nbf).await.status, 200);
    }

    #[tokio::test]
    async fn assertion_audience_issuer_and_shape_errors() {
        let Fixture { sim, http } = fixture().await;
        let key = &test_keys()[0];
        sim.add_certificate(TENANT, APP, key.cert_der.clone());
        let url = v2_url(&sim, TENANT);
        let signed = |change: &dyn Fn(&mut Value)| {
            let mut claims = assertion_claims(&url);
            change(&mut claims);
            sign(key, &ps256_header(key), &claims)
        };
        let production = format!("https://login.microsoftonline.com/{TENANT}/oauth2/v2.0/token");
        // (claim, new value or removed, status, error, code)
        let cases = [
            (
                "aud",
                Some(v1_url(&sim, TENANT)),
                401,
                "invalid_client",
                700023,
            ),
            ("aud", Some(production), 401, "invalid_client", 700023),
            (
                "iss",
                Some("11111111-2222-4333-8444-555555555555".to_owned()),
                401,
                "invalid_client",
                700021,
            ),
            (
                "sub",
                Some("someone-else".to_owned()),
                401,
                "invalid_client",
                700021,
            ),
            ("jti", None, 400, "invalid_request", 50027),
        ];
        for (claim, value, status, error, code) in cases {
            let assertion = signed(&|claims| match &value {
                Some(value) => claims[claim] = Value::from(value.as_str()),
                None => {
                    claims.as_object_mut().map(|object| object.remove(claim));
                }
            });
            let answer = post_assertion(&http, &url, &assertion).await;
            assert_eq!(answer.status, status, "{claim}: {}", answer.body);
            assert_entra_error(&answer, status, error, code);
        }

        // The audience path is compared without regard to case, as in Microsoft's example.
        let upper = signed(&|claims| {
            claims["aud"] = Value::from(url.replace("v2.0", "V2.0"));
        });
        assert_eq!(post_assertion(&http, &url, &upper).await.status, 200);

        let symmetric = sign(
            key,
            &serde_json::json!({ "alg": "HS256", "x5t#S256": sha256_thumbprint(key) }),
            &assertion_claims(&url),
        );
        assert_entra_error(
            &post_assertion(&http, &url, &symmetric).await,
            400,
            "invalid_request",
            50027,
        );
        for garbage in ["not-a-jwt", "a.b.c", "eyJ9.e30.", "e30.e30.AA.AA"] {
            let answer = post_assertion(&http, &url, garbage).await;
            assert_entra_error(&answer, 400, "invalid_request", 50027);
        }

        let valid = signed(&|_| {});
        let without_type = [
            ("grant_type", "client_credentials"),
            ("client_id", APP),
            ("client_assertion", valid.as_str()),
            ("scope", POWER_BI_SCOPE),
        ];
        let answer = post(&http, &url, &without_type).await;
        let body = assert_entra_error(&answer, 400, "invalid_request", 900144);
        assert!(
            body["error_description"]
                .as_str()
                .unwrap_or_default()
                .contains("'client_assertion_type'")
        );
        assert!(!answer.body.contains(&valid));
        assert_eq!(sim.issued_count(TENANT), 1);
    }

    #[tokio::test]
    async fn federated_token_must_match_a_federated_credential() {
        let Fixture { sim, http } = fixture().await;
        sim.add_federated_credential(
            TENANT,
            APP,
            SimFederatedCredential {
                issuer: AKS_ISSUER.to_owned(),
                subject: AKS_SUBJECT.to_owned(),
                audience: TOKEN_EXCHANGE.to_owned(),
            },
        );
        let url = v2_url(&sim, TENANT);
        let later = unix_now() + 3600;

        let token = federated_token(
            AKS_ISSUER,
            AKS_SUBJECT,
            serde_json::json!([TOKEN_EXCHANGE]),
            later,
        );
        let answer = post_assertion(&http, &url, &token).await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        let recorded = sim.last_assertion(TENANT).expect("assertion recorded");
        assert_eq!(recorded.claims["sub"], AKS_SUBJECT);
        assert_eq!(recorded.header["kid"], "cluster-key-1");
        let token = federated_token(AKS_ISSUER, AKS_SUBJECT, Value::from(TOKEN_EXCHANGE), later);
        assert_eq!(post_assertion(&http, &url, &token).await.status, 200);

        let mismatches = [
            federated_token(
                AKS_ISSUER,
                &AKS_SUBJECT.to_ascii_uppercase(),
                Value::from(TOKEN_EXCHANGE),
                later,
            ),
            federated_token(
                AKS_ISSUER.trim_end_matches('/'),
                AKS_SUBJECT,
                Value::from(TOKEN_EXCHANGE),
                later,
            ),
            federated_token(
                AKS_ISSUER,
                AKS_SUBJECT,
                serde_json::json!(["api://other"]),
                later,
            ),
        ];
        for token in &mismatches {
            let answer = post_assertion(&http, &url, token).await;
            assert_entra_error(&answer, 400, "invalid_request", 70021);
        }

        let stale = federated_token(
            AKS_ISSUER,
            AKS_SUBJECT,
            Value::from(TOKEN_EXCHANGE),
            unix_now() - 3600,
        );
        let answer = post_assertion(&http, &url, &stale).await;
        assert_entra_error(&answer, 401, "invalid_client", 700024);

        sim.remove_federated_credentials(TENANT, APP);
        let token = federated_token(AKS_ISSUER, AKS_SUBJECT, Value::from(TOKEN_EXCHANGE), later);
        let answer = post_assertion(&http, &url, &token).await;
        assert_entra_error(&answer, 400, "invalid_request", 70021);
        assert_eq!(sim.issued_count(TENANT), 2);
    }

    #[tokio::test]
    async fn managed_identity_token_works_as_a_federated_credential() {
        let Fixture { sim, http } = fixture().await;
        sim.set_managed_identity(host_identity());
        let query = [
            ("api-version", "2019-08-01"),
            ("resource", TOKEN_EXCHANGE),
            ("client_id", USER_ASSIGNED),
        ];
        let body = imds_get(&http, &sim, &query).await.json();
        let mi_token = body["access_token"].as_str().expect("token").to_owned();
        let claims = decode_claims(&mi_token);
        assert_eq!(claims["aud"], TOKEN_EXCHANGE);
        assert_eq!(claims["appid"], USER_ASSIGNED);
        assert_eq!(claims["sub"], managed_identity_object_id(USER_ASSIGNED));
        sim.add_federated_credential(
            TENANT,
            APP,
            SimFederatedCredential {
                issuer: claims["iss"].as_str().expect("iss").to_owned(),
                subject: claims["sub"].as_str().expect("sub").to_owned(),
                audience: TOKEN_EXCHANGE.to_owned(),
            },
        );
        let answer = post_assertion(&http, &v2_url(&sim, TENANT), &mi_token).await;
        assert_eq!(answer.status, 200, "{}", answer.body);

        // The same identity, selected by object id, has the same subject.
        let object_id = managed_identity_object_id(USER_ASSIGNED);
        let query = [
            ("api-version", "2018-02-01"),
            ("resource", TOKEN_EXCHANGE),
            ("object_id", object_id.as_str()),
        ];
        let again = imds_get(&http, &sim, &query).await.json();
        assert_eq!(again["client_id"], USER_ASSIGNED);
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
        let answer =
            self::answer(http.get(&url).header("X-IDENTITY-HEADER", IDENTITY_HEADER)).await;
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

        let wrong = self::answer(http.get(&url).header("X-IDENTITY-HEADER", "guess")).await;
        assert_eq!(wrong.status, 401);
        assert!(!wrong.body.contains(IDENTITY_HEADER));
        let missing = self::answer(http.get(&url)).await;
        assert_eq!(missing.status, 401);
        let legacy = query_url(
            &sim.app_service_endpoint(),
            &[("resource", POWER_BI), ("api-version", "2017-09-01")],
        );
        let legacy = self::answer(
            http.get(&legacy)
                .header("X-IDENTITY-HEADER", IDENTITY_HEADER),
        )
        .await;
        assert_eq!(legacy.status, 400);
        assert_eq!(sim.managed_identity_request_count(), 4);
        assert_eq!(sim.managed_identity_issued_count(), 1);
        assert!(!format!("{:?}", host_identity()).contains(IDENTITY_HEADER));
    }
}
