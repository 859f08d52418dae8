//! A simulated Microsoft Entra ID token service, Power BI REST API and Azure Key Vault, served
//! in-process over real HTTP.
//!
//! powerbi-tokend's `demo` subcommand, its integration tests and its benchmarks all need an Entra
//! ID that behaves like the real one but runs on `127.0.0.1:0`, needs no network and can be told
//! to misbehave. A simulator that is kinder than Entra hides bugs, so this one copies the wire
//! format the daemon will meet in production, as the protocol reference in this crate's folder
//! records it (`sim/entra-protocol.md`, "reference" below; §1, §2, §8, §9 and §10):
//!
//! * **Endpoints.** `POST /{tenant}/oauth2/v2.0/token` (v2) and `POST /{tenant}/oauth2/token`
//!   (v1), form-encoded only, plus `GET /{tenant}/v2.0/.well-known/openid-configuration`.
//!   Extra form fields and headers sent by real libraries (`client_info`, `x-client-*`,
//!   `x-ms-lib-capability`) are ignored, as Entra ignores them. Tokens are issued for the Power
//!   BI and Key Vault resources of every cloud ([`SimCloud::ALL`]) and for Fabric's; any other
//!   resource gets AADSTS500011.
//! * **Success bodies.** v2 sends `expires_in`, `ext_expires_in` (and `refresh_in` when the tenant
//!   is configured for it) as JSON numbers; v1 sends every number as a JSON *string* and adds
//!   `expires_on`, `not_before` and `resource`. The access token is JWT-shaped, about 1 KB, and
//!   unique per issue (claim `uti`), so a client that caches or compares tokens is exercised.
//!   It is signed with a key made for each simulator (HMAC-SHA256, in a signature part as long
//!   as Entra's RS256 one), so the simulated Power BI API accepts only tokens this simulator
//!   issued.
//! * **Errors.** Every rejection has Entra's body shape (`error`, `error_description` ending in
//!   `\r\nTrace ID: …\r\nCorrelation ID: …\r\nTimestamp: …`, `error_codes`, `timestamp`,
//!   `trace_id`, `correlation_id`, `error_uri`) and the HTTP status Entra is observed to use.
//!   The AADSTS codes, `error` strings and statuses live in one table,
//!   [`catalogue`](fn@catalogue). The client's `client-request-id` header becomes the
//!   correlation id, as it does at Entra, and comes back as a response header when the request
//!   says `return-client-request-id: true`.
//! * **Validation order.** Tenant syntax, then `/common`-style and unknown tenants, then
//!   `grant_type` and `client_id`, then the app registration, then the credential (form
//!   `client_secret` or HTTP Basic per RFC 6749 §2.3.1), then `scope`/`resource`. Each step fails
//!   with the code Entra uses for it, so a test can assert the daemon's classification.
//! * **Faults.** [`Behavior`] injects what production throws at a client: catalogue errors,
//!   HTTP 429 with `Retry-After` in seconds or as an HTTP date and with a JSON or plain-text
//!   body, 5xx without `Retry-After` and with non-JSON bodies, slow and hung responses, HTML
//!   login pages from intercepting proxies, truncated and oversized JSON, and
//!   [`Behavior::Raw`]: any status, headers and body, for the hostile answers (absurd numbers)
//!   no real server sends. A per-tenant script of
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
//!   `Metadata: true`, every field a string) and `GET /msi/token` like App Service and Azure
//!   Automation (`X-IDENTITY-HEADER` and `Metadata: true`, `expires_on` as an epoch string), for
//!   the identities configured with [`SimEntra::set_managed_identity`]. A request names at most
//!   one identity, by client id (`client_id`), by object id (`object_id`, or `principal_id` on
//!   App Service; see [`managed_identity_object_id`]) or, for a user-assigned identity, by Azure
//!   resource id (`msi_res_id` on IMDS, `mi_res_id` on App Service; see
//!   [`managed_identity_resource_id`]); without one, the system-assigned identity (else a sole
//!   user-assigned one) answers. A script of one-shot statuses (404, 410, 429, 5xx) injects the
//!   faults IMDS is known for.
//!
//! * **Power BI** (§8). `GET /v1.0/myorg/groups` (the daemon's probe; `$top` and `$skip`
//!   honoured, `$filter` ignored), `POST /v1.0/myorg/GenerateToken` (V2 embed tokens), and the
//!   report reads `GET /v1.0/myorg/groups/{group}/reports/{report}` and
//!   `GET /v1.0/myorg/reports/{report}` (every GUID a report with an `embedUrl` on this host,
//!   unless [`SimEntra::mark_report_missing`]: 404 `PowerBIEntityNotFound`), on the same
//!   listener, so [`SimEntra::powerbi_api`] is the authority host. The bearer token
//!   must be one this simulator signed, for the Power BI resource of the cloud set with
//!   [`SimEntra::set_powerbi_cloud`], and not expired: else 401 `PowerBINotAuthorizedException`
//!   (403 `TokenExpired` when only its time is up). Its `tid` names the tenant whose
//!   [`PowerBiBehavior`] applies (401, 403, 404, 429 with `Retry-After`, 500). An embed token
//!   expires no later than the bearer token. Every answer carries a `RequestId` header, every
//!   error an `X-PowerBI-Error-Info` header.
//!
//! * **Fabric.** `GET /v1/workspaces` (Fabric's List Workspaces, the daemon's probe of a tenant
//!   whose token is for Fabric), on the same listener. The bearer token must be one this
//!   simulator signed for Fabric's resource (`https://api.fabric.microsoft.com`; the public cloud
//!   only) and not expired: else 401 `InvalidToken` (a Power BI token is not Fabric's) or 401
//!   `TokenExpired`, in Fabric's `{"requestId","errorCode","message"}` shape. The tenant's
//!   [`PowerBiBehavior`] applies here too, in Fabric's words: `NotAuthorized` is Fabric's 401
//!   `Unauthorized` for a tenant that does not let service principals use the Fabric APIs.
//!
//! * **Key Vault** (§10). `GET /secrets/{name}` and `GET /secrets/{name}/{version}` (with
//!   `api-version`, `7.x`), on the same listener, so [`SimEntra::key_vault_url`] is the
//!   authority host. A request without a bearer token, or with one this simulator did not sign,
//!   that has expired, that is for another resource than the vault of the cloud set with
//!   [`SimEntra::set_powerbi_cloud`], or that comes from another directory than the vault's
//!   ([`SimEntra::set_key_vault_tenant`]; by default that of the managed identities) gets 401
//!   `Unauthorized` with an `AKV…` message and the `WWW-Authenticate: Bearer
//!   authorization="…", resource="…"` challenge. Then a [`KeyVaultFault`] injected for the
//!   secret, then access: only client ids granted with [`SimEntra::grant_key_vault_access`]
//!   read (else 403 `ForbiddenByRbac`; nobody is granted by default). Unknown secrets and
//!   versions get 404 `SecretNotFound`, disabled ones 403 `SecretDisabled`. Every
//!   [`SimEntra::set_key_vault_secret`] adds a version that becomes current; earlier ones stay
//!   readable by id. Every answer carries `x-ms-request-id` and
//!   `x-ms-keyvault-service-version`. [`SimEntra::start_key_vault`] starts further vaults, each
//!   on a listener of its own with its own directory, cloud, grants and secrets
//!   ([`SimKeyVault`]), so a test can give tenants vaults in different directories, read by
//!   different identities, and a challenge that names another tenant.
//!
//! * **TLS.** [`SimEntra::start`] speaks plain HTTP, which the daemon allows for loopback
//!   authority hosts only; [`SimEntra::start_tls`] serves the same endpoints over HTTPS with a
//!   certificate the caller provides, so a client pays for handshakes and chain checks as it
//!   does against Entra (the daemon then trusts the caller's CA through `[daemon] ca_file`).
//!
//! Cost per request is one short critical section on a `std::sync::Mutex` (never held across
//! an `.await`), so ten thousand tenants refreshing together do not contend on the simulator.
//! The simulator never logs a client secret, an assertion, an issued token, an embed token or
//! a Key Vault secret value; [`SimEntra::last_request`] and
//! [`SimEntra::last_managed_identity_request`] keep credentials only as `[REDACTED]`.
//!
//! # A crate of its own
//!
//! The daemon depends on this crate (for `demo`, and its tests and benchmarks), never the other
//! way round: the simulator knows the daemon only through the wire. What both must agree on
//! beyond the wire, the sovereign clouds' resources, it keeps in its own table ([`SimCloud`]),
//! which the daemon's `tests/clouds.rs` holds equal to the daemon's.
//!
//! # Files
//!
//! * `lib.rs` (this file): [`SimEntra`], the control API the tests and `demo` use; the
//!   configuration and fault types ([`SimTenant`], [`SimApp`], [`Behavior`], …); the state the
//!   request handlers share; the router.
//! * `token_endpoint.rs`: the v1 and v2 token endpoints and the discovery document: the
//!   validation order, the choice between a validation result and an injected behaviour.
//! * `token_request.rs`: a token request as read and decoded, and the answers built from it
//!   (grant, rejection, Entra's error reply), which the files below the token endpoint share.
//! * `access_token.rs`: what a successful request gets: the v1 and v2 bodies and the JWT-shaped
//!   access tokens, signed and verified with the simulator's key (the managed identity
//!   endpoints mint theirs with it too; the Power BI API and the key vault verify them with
//!   it).
//! * `catalogue.rs`: the AADSTS table ([`catalogue`](fn@catalogue)) and Entra's error body.
//! * `faults.rs`: the answers of the injected [`Behavior`]s that are not a validation result
//!   (throttling, 5xx, proxy pages, truncated and oversized bodies).
//! * `assertion.rs`: client assertions signed with a registered certificate, and the choice
//!   between those and federated tokens.
//! * `federated.rs`: external tokens matched against federated identity credentials.
//! * `jwt.rs`: JWT decoding and the lifetime checks both kinds of assertion share.
//! * `managed_identity.rs`: the IMDS and App Service endpoints.
//! * `powerbi.rs`: the Power BI REST API: bearer checks, workspaces, embed tokens, reports, and the
//!   per-tenant [`PowerBiBehavior`]s.
//! * `fabric.rs`: the Fabric REST API's List Workspaces, with `powerbi.rs`'s bearer checks and
//!   behaviours in Fabric's words.
//! * `key_vault.rs`: Azure Key Vault's secrets endpoint: bearer checks and the challenge,
//!   access grants, secret versions, [`KeyVaultFault`]s.
//! * `vaults.rs`: [`SimKeyVault`], the control handle of one vault, and further vaults on
//!   listeners of their own.
//! * `cloud.rs`: the sovereign clouds' Power BI, Fabric and Key Vault resources ([`SimCloud`]).
//! * `tls.rs`: the HTTPS accept loop of [`SimEntra::start_tls`].
//! * `wire.rs`: small helpers: form and Basic decoding, GUIDs, base64, the clock, JSON headers,
//!   redaction.
//! * `test_support.rs` (tests only): the fixture and request helpers the test modules share.

#![forbid(unsafe_code)]
#![warn(missing_docs)]
// A check that fails returns the finished HTTP answer (an axum `Response`, about 130 bytes) as
// its `Err`. There is at most one per request, so boxing it would only add an allocation.
#![allow(clippy::result_large_err)]

use std::collections::{HashMap, VecDeque};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use aws_lc_rs::{digest, hmac};
use axum::Router;
use axum::routing::{any, get};
use tokio::sync::watch;

mod access_token;
mod assertion;
mod catalogue;
mod cloud;
mod fabric;
mod faults;
mod federated;
mod jwt;
mod key_vault;
mod managed_identity;
mod powerbi;
#[cfg(test)]
mod test_support;
mod tls;
mod token_endpoint;
mod token_request;
mod vaults;
mod wire;

pub use assertion::SimAssertion;
pub use catalogue::{CATALOGUE_CODES, catalogue};
pub use cloud::SimCloud;
pub use federated::SimFederatedCredential;
pub use key_vault::{KeyVaultFault, SimSecretAttributes};
pub use managed_identity::{
    ManagedIdentityEndpoint, SIM_SYSTEM_ASSIGNED_CLIENT_ID, SimManagedIdentity,
    SimManagedIdentityRequest, managed_identity_object_id, managed_identity_resource_id,
};
pub use powerbi::{PowerBiBehavior, PowerBiEndpoint};
pub use vaults::SimKeyVault;

use key_vault::{KeyVaultState, VAULT_NAME, VaultRoute, secret};
use managed_identity::{app_service_token, imds_token};
use powerbi::{PowerBiState, generate_token, groups, report, report_in_group};
use token_endpoint::{openid_configuration, token_v1, token_v2};
use wire::{client_key, tenant_key};

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
    /// otherwise valid request for a Power BI resource with AADSTS500011 `invalid_resource`
    /// (requests for Key Vault are unaffected).
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

/// How the simulator answers a tenant's token requests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Behavior {
    /// Validate the request and issue a token, as Entra does.
    Normal,
    /// Answer with this [`catalogue`](fn@catalogue) entry, whatever the credentials.
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
    /// Answer exactly this, whatever the request: the way to send what no well-behaved server
    /// would (`Retry-After: 18446744073709551615`, `"expires_in": 1000000000000`, a
    /// `refresh_in` of `i64::MAX`), so a test can prove the daemon survives it. A status that is
    /// not a valid HTTP status becomes 500; a header whose name or value is not valid on the
    /// wire is left out (the test then sees it missing rather than a simulator panic). No
    /// header is added, not even `Content-Type`.
    Raw {
        /// The HTTP status.
        status: u16,
        /// Header names and values, sent in this order (a name may repeat).
        headers: Vec<(String, String)>,
        /// The body, byte for byte.
        body: Vec<u8>,
    },
}

/// The two forms of the `Retry-After` header (RFC 9110 §10.2.3).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RetryAfter {
    /// `Retry-After: 60`
    Seconds(u64),
    /// `Retry-After: Thu, 01 Jan 2026 00:01:00 GMT` (IMF-fixdate)
    HttpDate(SystemTime),
}

impl SimEntra {
    /// Binds 127.0.0.1:0 and serves plain HTTP in a spawned tokio task.
    pub async fn start() -> std::io::Result<SimEntra> {
        let (listener, sim, stop) = SimEntra::bind("http").await?;
        let app = router(Arc::clone(&sim.shared));
        let mut stop = stop;
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
        Ok(sim)
    }

    /// Binds 127.0.0.1:0 and serves HTTPS in a spawned tokio task: the same endpoints as
    /// [`SimEntra::start`], behind `cert_chain_pem` (the server certificate first, then any
    /// intermediates; it must name `127.0.0.1` for a client to accept it) and its PEM private
    /// key. A failed handshake closes that connection only.
    ///
    /// # Errors
    /// `InvalidInput` when the PEM holds no certificate or key or they do not match; binding
    /// errors.
    pub async fn start_tls(cert_chain_pem: &[u8], key_pem: &[u8]) -> std::io::Result<SimEntra> {
        let acceptor = tls::acceptor(cert_chain_pem, key_pem)?;
        let (listener, sim, stop) = SimEntra::bind("https").await?;
        let app = router(Arc::clone(&sim.shared));
        tokio::spawn(tls::serve(listener, acceptor, app, stop));
        Ok(sim)
    }

    /// The listener and the handle, with `scheme` in the authority host; the receiver turns
    /// `true` when the handle is dropped.
    async fn bind(
        scheme: &str,
    ) -> std::io::Result<(tokio::net::TcpListener, SimEntra, watch::Receiver<bool>)> {
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let (shutdown, stopped) = watch::channel(false);
        let token_key =
            hmac::Key::generate(hmac::HMAC_SHA256, &aws_lc_rs::rand::SystemRandom::new())
                .map_err(|_| std::io::Error::other("no randomness for the token signing key"))?;
        let shared = Arc::new(Shared {
            authority_host: format!("{scheme}://{addr}"),
            token_key,
            registry: Mutex::new(HashMap::new()),
            total_requests: AtomicU64::new(0),
            serial: AtomicU64::new(0),
            managed_identity: Mutex::new(ManagedIdentityState::default()),
            powerbi: Mutex::new(PowerBiState::default()),
            key_vault: Arc::new(Mutex::new(KeyVaultState::new(
                format!("{scheme}://{addr}"),
                VAULT_NAME.to_owned(),
            ))),
            shutdown: stopped.clone(),
        });
        tracing::debug!(%addr, scheme, "simulated Entra ID listening");
        let sim = SimEntra {
            addr,
            shared,
            shutdown,
        };
        Ok((listener, sim, stopped))
    }

    /// `"http://127.0.0.1:PORT"`, or `"https://…"` from [`SimEntra::start_tls`] (no trailing
    /// slash), for use as the daemon's authority host.
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

    /// `"http://127.0.0.1:PORT/metadata/identity/oauth2/token"` (`https` when started with
    /// [`SimEntra::start_tls`]): the IMDS token URL the daemon
    /// is pointed at instead of `http://169.254.169.254/…`.
    pub fn imds_endpoint(&self) -> String {
        format!(
            "{}/metadata/identity/oauth2/token",
            self.shared.authority_host
        )
    }

    /// `"http://127.0.0.1:PORT/msi/token"` (or `https`): the value for `IDENTITY_ENDPOINT`.
    pub fn app_service_endpoint(&self) -> String {
        format!("{}/msi/token", self.shared.authority_host)
    }

    /// `"http://127.0.0.1:PORT"` (or `https`, no trailing slash): the value for the daemon's
    /// `powerbi_api = "…"` key, and for `fabric_api`. The Power BI API (`/v1.0/myorg/…`) and the
    /// Fabric API (`/v1/workspaces`) share the listener of the simulated Entra ID, so this
    /// equals [`SimEntra::authority_host`].
    pub fn powerbi_api(&self) -> String {
        self.shared.authority_host.clone()
    }

    /// Sets the cloud whose Power BI resource ([`SimCloud::power_bi_resource`]) the API expects
    /// as the `aud` of bearer tokens; until then, [`SimCloud::Public`]. A token for another cloud's
    /// resource gets 401, as a daemon that pairs one cloud's API root with another cloud's
    /// token would in production. The Fabric API expects Fabric's resource in the public cloud
    /// and refuses every token in the others, which have no Fabric. The key vault follows the same cloud: it expects tokens for
    /// that cloud's vault resource (public `https://vault.azure.net` for Public and GCC, US
    /// Government `https://vault.usgovcloudapi.net` for GCC High and DoD, China
    /// `https://vault.azure.cn`) and names it in its challenge.
    pub fn set_powerbi_cloud(&self, cloud: SimCloud) {
        self.shared.powerbi().cloud = cloud;
    }

    /// Sets how the Power BI API answers callers whose bearer token names this tenant (`tid`,
    /// matched case-insensitively), on every endpoint (the Fabric API's too, in its own words:
    /// [`PowerBiBehavior::NotAuthorized`] is how a tenant that does not allow service
    /// principals answers), until changed. May precede any token.
    pub fn set_powerbi_behavior(&self, tenant_id: &str, behavior: PowerBiBehavior) {
        self.shared
            .powerbi()
            .tenants
            .entry(tenant_key(tenant_id))
            .or_default()
            .behavior = behavior;
    }

    /// Marks datasets of this tenant as having row-level security: GenerateToken then refuses
    /// a request for them without an effective identity, with Power BI's 400 text.
    pub fn set_rls_datasets(&self, tenant_id: &str, datasets: &[&str]) {
        self.shared
            .powerbi()
            .tenants
            .entry(tenant_key(tenant_id))
            .or_default()
            .rls_datasets = datasets.iter().map(|id| id.to_ascii_lowercase()).collect();
    }

    /// Marks a report of this tenant as gone: Get Report and Get Report In Group answer 404
    /// `PowerBIEntityNotFound` for it from now on (every other GUID is a report). GenerateToken
    /// does not look reports up here (the real one would refuse a report that is gone), so a
    /// test can see a failed read next to an embed token that is made.
    pub fn mark_report_missing(&self, tenant_id: &str, report_id: &str) {
        self.shared
            .powerbi()
            .tenants
            .entry(tenant_key(tenant_id))
            .or_default()
            .missing_reports
            .push(report_id.to_ascii_lowercase());
    }

    /// Power BI requests for this tenant at one endpoint, whatever the answer. Only requests
    /// whose bearer token verified are counted: before that the tenant is unknown.
    pub fn powerbi_request_count(&self, tenant_id: &str, endpoint: PowerBiEndpoint) -> u64 {
        self.shared
            .powerbi()
            .tenants
            .get(&tenant_key(tenant_id))
            .map_or(0, |tenant| tenant.requests(endpoint))
    }

    /// The body of the tenant's latest GenerateToken request that was JSON, as parsed, even if
    /// it was then refused: what the daemon asked for.
    pub fn last_generate_token_request(&self, tenant_id: &str) -> Option<serde_json::Value> {
        self.shared
            .powerbi()
            .tenants
            .get(&tenant_key(tenant_id))
            .and_then(|tenant| tenant.last_generate_token_request.clone())
    }

    /// The `tokenId` and `expiration` of the latest embed token issued for the tenant (the
    /// token itself is not kept).
    pub fn last_embed_token(&self, tenant_id: &str) -> Option<(String, SystemTime)> {
        self.shared
            .powerbi()
            .tenants
            .get(&tenant_key(tenant_id))
            .and_then(|tenant| tenant.last_embed_token.clone())
    }
}

/// The simulated Azure Key Vault on the simulator's own listener (`key_vault.rs`), through
/// [`SimEntra::key_vault`]: its URL, directory, access grants, secrets, faults and counters.
impl SimEntra {
    /// `"http://127.0.0.1:PORT"` (or `https`, no trailing slash): the vault URL to give the
    /// daemon, which reads `{this}/secrets/{name}[/{version}]`. The vault shares the listener
    /// of the simulated Entra ID, so this equals [`SimEntra::authority_host`]; secret ids in
    /// its answers begin with it.
    pub fn key_vault_url(&self) -> String {
        self.shared.authority_host.clone()
    }

    /// [`SimKeyVault::set_tenant`] of the first vault; until then, the tenant of the simulated
    /// host's managed identities ([`SimEntra::key_vault_tenant`]).
    pub fn set_key_vault_tenant(&self, tenant_id: &str) {
        self.key_vault().set_tenant(tenant_id);
    }

    /// The directory the first vault belongs to (see [`SimEntra::set_key_vault_tenant`]).
    pub fn key_vault_tenant(&self) -> String {
        self.key_vault().tenant()
    }

    /// [`SimKeyVault::grant_access`] of the first vault.
    pub fn grant_key_vault_access(&self, principal: &str) {
        self.key_vault().grant_access(principal);
    }

    /// [`SimKeyVault::revoke_access`] of the first vault.
    pub fn revoke_key_vault_access(&self, principal: &str) {
        self.key_vault().revoke_access(principal);
    }

    /// [`SimKeyVault::set_secret`] of the first vault.
    pub fn set_key_vault_secret(
        &self,
        name: &str,
        value: &str,
        attributes: SimSecretAttributes,
    ) -> String {
        self.key_vault().set_secret(name, value, attributes)
    }

    /// [`SimKeyVault::disable_secret_version`] of the first vault.
    pub fn disable_key_vault_secret_version(&self, name: &str, version: &str) -> bool {
        self.key_vault().disable_secret_version(name, version)
    }

    /// [`SimKeyVault::set_fault`] of the first vault.
    pub fn set_key_vault_fault(&self, name: &str, fault: Option<KeyVaultFault>) {
        self.key_vault().set_fault(name, fault);
    }

    /// [`SimKeyVault::read_count`] of the first vault.
    pub fn key_vault_read_count(&self, name: &str) -> u64 {
        self.key_vault().read_count(name)
    }

    /// [`SimKeyVault::request_count`] of the first vault.
    pub fn key_vault_request_count(&self) -> u64 {
        self.key_vault().request_count()
    }

    /// [`SimKeyVault::client_request_ids`] of the first vault.
    pub fn key_vault_client_request_ids(&self) -> Vec<Option<String>> {
        self.key_vault().client_request_ids()
    }

    /// [`SimKeyVault::last_caller`] of the first vault.
    pub fn last_key_vault_caller(&self) -> Option<String> {
        self.key_vault().last_caller()
    }
}

impl Drop for SimEntra {
    fn drop(&mut self) {
        self.shutdown.send_replace(true);
    }
}

/// State shared between the [`SimEntra`] handle and the request handlers.
struct Shared {
    /// `http://127.0.0.1:PORT` (or `https`), for discovery documents and assertion audiences.
    authority_host: String,
    /// Signs every access token the simulator issues and verifies bearer tokens at the Power BI
    /// API and the key vault. Random per simulator, so a token from another simulator (or a forged one) is
    /// refused as a token from another directory would be.
    token_key: hmac::Key,
    /// Per tenant path segment (lower case): configuration, behaviour and counters.
    registry: Mutex<HashMap<String, TenantEntry>>,
    /// Token requests over all path segments.
    total_requests: AtomicU64,
    /// Source of the unique `uti` claim.
    serial: AtomicU64,
    /// The managed identity endpoints' configuration, script and counters, under their own
    /// lock so they never contend with token requests.
    managed_identity: Mutex<ManagedIdentityState>,
    /// The Power BI API's cloud, per-tenant behaviours and records, under their own lock for
    /// the same reason.
    powerbi: Mutex<PowerBiState>,
    /// The first vault's directory, grants, secrets, faults and counters, under their own lock
    /// for the same reason; shared with its handler and its [`SimKeyVault`] handles.
    key_vault: Arc<Mutex<KeyVaultState>>,
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
    /// The certificate as registered; its public key checks assertion signatures.
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

// The token endpoints' per-request methods (`admit`, `record_assertion`, …) are in
// `token_endpoint.rs`, next to their only caller.
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

    fn powerbi(&self) -> MutexGuard<'_, PowerBiState> {
        // Every update is a single assignment or increment, so the state is consistent even
        // after a panic.
        self.powerbi.lock().unwrap_or_else(PoisonError::into_inner)
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
}

/// The routes of Entra, of the managed identity endpoints, of Power BI and of Key Vault. They
/// share one listener, so one simulator serves a test whatever credential it exercises, and the
/// tokens it issues are good at the APIs it serves.
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
        .route("/v1.0/myorg/groups", any(groups))
        .route("/v1.0/myorg/GenerateToken", any(generate_token))
        .route(
            "/v1.0/myorg/groups/{group}/reports/{report}",
            any(report_in_group),
        )
        .route("/v1.0/myorg/reports/{report}", any(report))
        .route("/v1/workspaces", any(fabric::workspaces))
        .route(
            "/secrets/{*path}",
            any(secret).with_state(VaultRoute {
                shared: Arc::clone(&shared),
                vault: Arc::clone(&shared.key_vault),
            }),
        )
        .with_state(shared)
}

#[cfg(test)]
mod tests {
    use super::test_support::*;
    use super::wire::REDACTED;
    use super::*;

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
}
