//! Azure Key Vault's secrets endpoint in the simulator (reference §10): `GET /secrets/{name}`
//! and `GET /secrets/{name}/{version}`, on the listener of the simulated Entra ID, so the
//! vault URL ([`SimEntra::key_vault_url`](super::SimEntra::key_vault_url)) is the authority host.
//!
//! The daemon reads credentials (client secrets, certificates) from a vault, so the vault must
//! refuse what the real one refuses, in the order a client can observe:
//! 1. anything but `GET` (405), a missing or unknown `api-version`, a name that is not 1-127
//!    letters, digits and hyphens, or a version that is not 1-64 letters and digits (400
//!    `BadParameter`);
//! 2. the bearer token, each refusal a 401 `Unauthorized` carrying the challenge
//!    `WWW-Authenticate: Bearer authorization="{authority host}/{vault tenant}",
//!    resource="{vault resource}"` that clients parse to learn where to get a token: no bearer
//!    token (`AKV10000`); a token this simulator did not sign (`AKV10046`); an expired one
//!    (`[TokenExpired]`); one for another resource (`AKV10022`, so a Power BI token, or a token
//!    for another cloud's vault, is refused); one from a directory other than the vault's
//!    (`AKV10032`, so a token from a customer tenant cannot read the vault of the ISV's home
//!    tenant);
//! 3. the fault injected for the secret's name ([`KeyVaultFault`]);
//! 4. role-based access: the token's `appid` must have been granted with
//!    [`SimEntra::grant_key_vault_access`](super::SimEntra::grant_key_vault_access), else 403
//!    `ForbiddenByRbac`. Nobody is granted by default, as no role is assigned on a new vault, so
//!    a daemon test cannot pass by reading with the wrong identity. Grants are by client id
//!    (`appid`), which tests know for apps and managed identities alike; the real vault checks
//!    role assignments of the object id (`oid`), which the simulator's token endpoint draws at
//!    random per token;
//! 5. the secret and version (404 `SecretNotFound`), then whether that version is enabled (403
//!    `SecretDisabled`).
//!
//! Expired and not-yet-valid secrets (their `exp`/`nbf` attributes) are served like any other:
//! the real vault does not enforce either on a read (Azure/AzureKeyVault#19; Microsoft Q&A
//! 172834), so a client has to check them itself.
//!
//! The vault's tenant defaults to that of the simulated host's managed identities, and its
//! resource follows the cloud set with
//! [`SimEntra::set_powerbi_cloud`](super::SimEntra::set_powerbi_cloud): one cloud names both the
//! Entra authority and the resources its tokens are good for. Public and GCC use the public
//! vault (GCC signs in with commercial Entra), GCC High and DoD the US Government vault, China
//! the China vault.
//!
//! Wire details and where they come from:
//! * `AKV10000` as Key Vault troubleshooting write-ups quote it; `AKV10022` "Invalid audience.
//!   Expected … or cfa8b339-…, found: …" (argoproj-labs/argocd-vault-plugin#621); `AKV10032`
//!   "Invalid issuer. Expected one of …, found …" (Azure/azure-sdk-for-js#12539);
//!   `[TokenExpired] Error validating token: 'S2S12086'.` with the challenge header
//!   (Azure/azure-sdk-for-python#27266). `AKV10046` "Unable to resolve the key used for
//!   signature validation" is what the vault answers a token whose signing key it cannot find
//!   (vcsjones/AzureSignTool#330); that it also answers a forged signature so is a guess.
//! * The RBAC refusal's message lines and `innererror` (a terraform-provider-azurerm error
//!   quoted in piyushsachdeva/Terraform_AKS#2; microsoft/aoai-api-simulator#18).
//! * `SecretNotFound` and its text (Azure/azure-sdk-for-js#25489); the `name/version` form for
//!   an unknown version is a guess. `SecretDisabled` (Azure/azure-sdk-for-js#24756).
//! * 429 `Throttled` and its message (vcsjones/AzureSignTool#219). That capture has no
//!   `Retry-After`; the simulator sends one so a client's handling of it can be tested, and a
//!   client must also cope without it.
//! * The `BadParameter` bodies (missing `api-version`, bad name, bad version), the 405 and the
//!   500 `InternalServerError` body are not documented anywhere we found; they follow the
//!   `{"error":{"code","message"}}` shape of the others.
//! * Headers of every answer: `x-ms-request-id`, `x-ms-keyvault-service-version` (a value seen
//!   in Azure/azure-sdk-for-python#27266), `x-ms-keyvault-region`, the caller's
//!   `x-ms-client-request-id` echoed, `Cache-Control: no-cache`, `Pragma`, `Expires: -1`,
//!   `X-Content-Type-Options` and `Strict-Transport-Security` (Azure/azure-sdk-for-net#7925).
//!   The caller's `x-ms-client-request-id` is also recorded per request
//!   ([`SimEntra::key_vault_client_request_ids`](super::SimEntra::key_vault_client_request_ids)),
//!   so a test can see that every call carried one.
//! * The 200 body: `value`, `id`, `attributes` (`enabled`, `nbf`, `exp`, `created`, `updated`,
//!   `recoveryLevel`, `recoverableDays`), `contentType`, `tags`, and for a certificate's secret
//!   `kid` and `managed` (reference §10; the Get Secret REST reference). `tags` is always sent,
//!   empty; the reference's sample leaves it out when a secret has none, so a client must
//!   accept both.
//!
//! Nothing here logs a secret value or a bearer token: the request log names the secret, the
//! status, the error code and the caller's client id.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::{Request, State};
use axum::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use axum::http::request::Parts;
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Map, Value, json};

use super::Shared;
use super::access_token::verify;
use super::cloud::SimCloud;
use super::managed_identity::{MANAGED_IDENTITY_SUBSCRIPTION, MANAGED_IDENTITY_TENANT};
use super::wire::{JSON_CONTENT_TYPE, client_key, parse_form, random_guid, unix_now};

/// Key Vault's application id, which the vault accepts as a token's `aud` besides its resource
/// URI (its AKV10022 message names both).
const KEY_VAULT_APP_ID: &str = "cfa8b339-82a2-471a-a3c9-0fc0be7a4093";

/// The name of the vault on the simulator's own listener, in RBAC refusals. Real vaults are
/// `https://{name}.vault.azure.net`; a simulated one is a listener's address, so its name
/// appears only in messages.
pub(super) const VAULT_NAME: &str = "sim-vault";

/// The resource group of the simulated vault (and of the host's user-assigned identities).
const VAULT_RESOURCE_GROUP: &str = "sim";

/// The Azure region reported in `x-ms-keyvault-region` and RBAC refusals.
const VAULT_REGION: &str = "westeurope";

/// A real `x-ms-keyvault-service-version` value; clients only log it.
const SERVICE_VERSION: &str = "1.9.538.1";

/// Longest secret name Key Vault allows.
const MAX_NAME_LEN: usize = 127;

/// Longest version segment accepted; real versions are 32 hex digits. The bound keeps an
/// echoed version (in the 404 message) short.
const MAX_VERSION_LEN: usize = 64;

/// The RBAC action a secret read needs ("Key Vault Secrets User" grants it).
const GET_SECRET_ACTION: &str = "Microsoft.KeyVault/vaults/secrets/getSecret/action";

/// The `x-ms-client-request-id` a client sends is echoed (and recorded) only up to this length.
const MAX_CLIENT_REQUEST_ID_LEN: usize = 256;

/// How many requests' `x-ms-client-request-id` are kept for
/// [`SimEntra::key_vault_client_request_ids`](super::SimEntra::key_vault_client_request_ids):
/// plenty for a test, bounded for a long `demo`.
const RECORDED_CLIENT_REQUEST_IDS: usize = 1024;

/// The attributes of one secret version, given to
/// [`SimEntra::set_key_vault_secret`](super::SimEntra::set_key_vault_secret).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimSecretAttributes {
    /// `attributes.exp`: when the secret's owner says it expires. Informational: the vault
    /// still serves it afterwards, as the real one does.
    pub exp: Option<SystemTime>,
    /// `attributes.nbf`: not valid before. Informational too.
    pub nbf: Option<SystemTime>,
    /// `attributes.enabled`; a disabled version is refused with 403 `SecretDisabled`.
    pub enabled: bool,
    /// `contentType`, e.g. `application/x-pkcs12` or `application/x-pem-file` for the secret
    /// behind a certificate (reference §10).
    pub content_type: Option<String>,
    /// Whether the secret backs a Key Vault certificate: the answer then carries `kid` (the
    /// key of the same name and version) and `"managed": true`.
    pub certificate: bool,
}

impl Default for SimSecretAttributes {
    /// Enabled, no dates, no content type, not a certificate: a plain secret.
    fn default() -> Self {
        Self {
            exp: None,
            nbf: None,
            enabled: true,
            content_type: None,
            certificate: false,
        }
    }
}

/// A failure injected for one secret name with
/// [`SimEntra::set_key_vault_fault`](super::SimEntra::set_key_vault_fault). It applies once the
/// bearer token has verified, before access is checked, to every version of the secret.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyVaultFault {
    /// 403 `ForbiddenByRbac`, whatever the grants: a role assignment removed or not yet
    /// propagated.
    Forbidden,
    /// 404 `SecretNotFound`, even if the secret exists: deleted, or a typo in the daemon's
    /// configuration.
    NotFound,
    /// 429 `Throttled` with `Retry-After: retry_after_secs`.
    Throttled {
        /// Value of the `Retry-After` header, in seconds.
        retry_after_secs: u64,
    },
    /// 500 `InternalServerError`, without `Retry-After`.
    ServerError,
}

/// One vault: its address, name, directory, cloud, grants, secrets, faults and counters.
pub(super) struct KeyVaultState {
    /// `http://127.0.0.1:PORT` (or `https`): what secret ids begin with.
    pub(super) url: String,
    /// The vault's name, in RBAC refusals (real vaults are `https://{name}.vault.azure.net`).
    name: String,
    /// The directory the vault belongs to: tokens must name it as `tid`, and the challenge
    /// sends clients to `{authority host}/{tenant}`.
    pub(super) tenant: String,
    /// The cloud whose Key Vault resource tokens must be for; `None`: the cloud of the
    /// simulated Power BI API ([`SimEntra::set_powerbi_cloud`](super::SimEntra::set_powerbi_cloud)).
    pub(super) cloud: Option<SimCloud>,
    /// Client ids (lower case) that may read secrets.
    pub(super) readers: HashSet<String>,
    /// Per secret name (lower case: Key Vault names are case-insensitive).
    secrets: HashMap<String, StoredSecret>,
    /// Per secret name (lower case).
    pub(super) faults: HashMap<String, KeyVaultFault>,
    /// 200 answers per secret name (lower case), for "one read shared by many tenants" tests.
    pub(super) reads: HashMap<String, u64>,
    /// Every request to `/secrets/…`, whatever the answer.
    pub(super) requests: u64,
    /// The `x-ms-client-request-id` of the latest requests to `/secrets/…`, oldest first;
    /// `None` for a request without one (or with one too long or not text).
    pub(super) client_request_ids: VecDeque<Option<String>>,
    /// The client id of the latest caller that passed the access check.
    pub(super) last_caller: Option<String>,
}

impl KeyVaultState {
    /// A vault at `url` named `name`, in the managed identities' directory, with nothing in it
    /// and nobody granted.
    pub(super) fn new(url: String, name: String) -> Self {
        Self {
            url,
            name,
            tenant: MANAGED_IDENTITY_TENANT.to_owned(),
            cloud: None,
            readers: HashSet::new(),
            secrets: HashMap::new(),
            faults: HashMap::new(),
            reads: HashMap::new(),
            requests: 0,
            client_request_ids: VecDeque::new(),
            last_caller: None,
        }
    }
}

/// One secret: the name as first set (the `id` spells it so) and its versions, oldest first;
/// the last is the current one.
struct StoredSecret {
    /// The name as first set.
    name: String,
    /// Every version ever set, oldest first.
    versions: Vec<StoredVersion>,
}

/// One version of a secret.
struct StoredVersion {
    /// 32 lower-case hex digits, as Key Vault's.
    version: String,
    /// The secret value; never logged.
    value: SecretString,
    /// As given, `enabled` changed by
    /// [`SimEntra::disable_key_vault_secret_version`](super::SimEntra::disable_key_vault_secret_version).
    attributes: SimSecretAttributes,
    /// `attributes.created`, seconds since the Unix epoch.
    created: i64,
    /// `attributes.updated`, seconds since the Unix epoch.
    updated: i64,
}

impl KeyVaultState {
    /// Adds a version that becomes current, and returns its id.
    pub(super) fn set_secret(
        &mut self,
        name: &str,
        value: &str,
        attributes: SimSecretAttributes,
    ) -> String {
        let version = format!("{:032x}", fastrand::u128(..));
        let now = unix_now();
        let secret = self
            .secrets
            .entry(name_key(name))
            .or_insert_with(|| StoredSecret {
                name: name.to_owned(),
                versions: Vec::new(),
            });
        secret.versions.push(StoredVersion {
            version: version.clone(),
            value: SecretString::from(value.to_owned()),
            attributes,
            created: now,
            updated: now,
        });
        version
    }

    /// Disables one version; `false` if the secret or version is unknown.
    pub(super) fn disable_version(&mut self, name: &str, version: &str) -> bool {
        let Some(stored) = self.secrets.get_mut(&name_key(name)).and_then(|secret| {
            secret
                .versions
                .iter_mut()
                .find(|stored| stored.version.eq_ignore_ascii_case(version))
        }) else {
            return false;
        };
        stored.attributes.enabled = false;
        stored.updated = unix_now();
        true
    }
}

/// The key of a secret name: Key Vault compares object identifiers case-insensitively ("About
/// keys, secrets, and certificates", Object identifiers).
pub(super) fn name_key(name: &str) -> String {
    name.to_ascii_lowercase()
}

/// What the handler of a vault's `/secrets/{*path}` works with: the simulator (its signing
/// key, authority host and Power BI cloud) and the vault's own state.
#[derive(Clone)]
pub(super) struct VaultRoute {
    /// The simulator the vault belongs to.
    pub(super) shared: Arc<Shared>,
    /// The vault.
    pub(super) vault: Arc<Mutex<KeyVaultState>>,
}

impl VaultRoute {
    /// The vault's state. Every update is a single assignment, insertion, push or increment,
    /// so the state is consistent even after a panic.
    pub(super) fn state(&self) -> MutexGuard<'_, KeyVaultState> {
        self.vault.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The handler of `/secrets/{*path}`.
pub(super) async fn secret(State(route): State<VaultRoute>, request: Request) -> Response {
    let (parts, _body) = request.into_parts();
    // What support would trace the call by (azure-keyvault-secrets sends one per request).
    let client_request_id = parts
        .headers
        .get("x-ms-client-request-id")
        .filter(|id| id.len() <= MAX_CLIENT_REQUEST_ID_LEN)
        .and_then(|id| id.to_str().ok())
        .map(str::to_owned);
    let (vault, cloud) = {
        let mut state = route.state();
        state.requests += 1;
        if state.client_request_ids.len() == RECORDED_CLIENT_REQUEST_IDS {
            state.client_request_ids.pop_front();
        }
        state.client_request_ids.push_back(client_request_id);
        (state.tenant.clone(), state.cloud)
    };
    let cloud = cloud.unwrap_or_else(|| route.shared.powerbi().cloud);
    let resource = cloud.key_vault_resource();
    let mut record = Record::default();
    let reply = answer_request(&route, &parts, &vault, resource, &mut record);
    let request_id = random_guid();
    tracing::debug!(
        secret = record.name.as_deref().unwrap_or("-"),
        caller = record.caller.as_deref().unwrap_or("-"),
        status = reply.status.as_u16(),
        error = reply.log_code(),
        request_id,
        "simulated Key Vault request"
    );
    let challenge = format!(
        "Bearer authorization=\"{}/{vault}\", resource=\"{resource}\"",
        route.shared.authority_host
    );
    reply.into_response(&request_id, &parts.headers, &challenge)
}

/// What the request log says about a request, filled in as the checks learn it.
#[derive(Default)]
struct Record {
    /// The secret name, once it passed the syntax check.
    name: Option<String>,
    /// The caller's client id, once its token verified.
    caller: Option<String>,
}

/// The checks in the order of the module doc.
fn answer_request(
    route: &VaultRoute,
    parts: &Parts,
    vault_tenant: &str,
    resource: &str,
    record: &mut Record,
) -> Reply {
    if parts.method != Method::GET {
        return Reply::method_not_allowed();
    }
    let query = parse_form(parts.uri.query().unwrap_or_default().as_bytes());
    let api_version = query
        .iter()
        .find(|(key, _)| key == "api-version")
        .map(|(_, value)| value.as_str());
    if !api_version.is_some_and(is_api_version) {
        return Reply::bad_parameter(
            "The request URI contains an invalid or missing api-version parameter. Use \
             api-version=7.5 (7.0 or later).",
        );
    }
    let (name, version) = match parse_path(parts.uri.path()) {
        Ok(target) => target,
        Err(reply) => return reply,
    };
    record.name = Some(name.to_owned());
    let caller = match authenticate(&route.shared, &parts.headers, vault_tenant, resource) {
        Ok(caller) => caller,
        Err(reply) => return reply,
    };
    record.caller = Some(caller.appid.clone());
    read_secret(route, &caller, name, version)
}

/// `7.x` and its previews (what the SDKs send), or `2016-10-01`, which older clients still
/// send and the vault still answers (MicrosoftDocs/azure-docs#109562).
fn is_api_version(version: &str) -> bool {
    if version == "2016-10-01" {
        return true;
    }
    let Some(minor) = version.strip_prefix("7.") else {
        return false;
    };
    let (minor, preview) = match minor.split_once('-') {
        Some((minor, preview)) => (minor, Some(preview)),
        None => (minor, None),
    };
    let digits = |text: &str| !text.is_empty() && text.bytes().all(|byte| byte.is_ascii_digit());
    digits(minor)
        && preview.is_none_or(|preview| match preview.strip_prefix("preview") {
            Some("") => true,
            Some(number) => number.strip_prefix('.').is_some_and(digits),
            None => false,
        })
}

/// `/secrets/{name}`, `/secrets/{name}/` (the current version, as the JavaScript SDK asks for
/// it) or `/secrets/{name}/{version}`; anything else is a 400.
fn parse_path(path: &str) -> Result<(&str, Option<&str>), Reply> {
    let rest = path.strip_prefix("/secrets/").unwrap_or_default();
    let mut segments = rest.split('/');
    let name = segments.next().unwrap_or_default();
    let version = segments.next().filter(|version| !version.is_empty());
    if segments.next().is_some() {
        return Err(Reply::bad_parameter(
            "The request URI is invalid: expected /secrets/{secret-name}[/{secret-version}].",
        ));
    }
    let valid_name = (1..=MAX_NAME_LEN).contains(&name.len())
        && name
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-');
    if !valid_name {
        return Err(Reply::bad_parameter(
            "The secret name is invalid. A secret name must be 1-127 characters long and \
             contain only 0-9, a-z, A-Z and -.",
        ));
    }
    if let Some(version) = version
        && (version.len() > MAX_VERSION_LEN || !version.bytes().all(|b| b.is_ascii_alphanumeric()))
    {
        return Err(Reply::bad_parameter("The secret version is invalid."));
    }
    Ok((name, version))
}

/// Who is calling, from a bearer token that verified.
struct Caller {
    /// `appid`: what access is granted to.
    appid: String,
    /// `oid`, for the RBAC refusal's `Caller:` line.
    oid: String,
    /// `iss`, likewise.
    issuer: String,
}

/// The bearer token's checks: present, signed by this simulator, not expired, for this
/// vault's resource, from this vault's directory. Expiry comes before the audience, as at the
/// Power BI API.
fn authenticate(
    shared: &Shared,
    headers: &HeaderMap,
    vault_tenant: &str,
    resource: &str,
) -> Result<Caller, Reply> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| {
            let (scheme, token) = value.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        })
        .filter(|token| !token.is_empty())
        .ok_or_else(|| {
            Reply::unauthorized("AKV10000: Request is missing a Bearer or PoP token.")
        })?;
    let claims = verify(&shared.token_key, token).ok_or_else(|| {
        Reply::unauthorized("AKV10046: Unable to resolve the key used for signature validation.")
    })?;
    let claim = |name: &str| claims.get(name).and_then(Value::as_str).unwrap_or_default();
    let expired = claims
        .get("exp")
        .and_then(Value::as_i64)
        .is_none_or(|expires| expires <= unix_now());
    if expired {
        return Err(Reply::unauthorized(
            "[TokenExpired] Error validating token: 'S2S12086'.",
        ));
    }
    let audience = claim("aud");
    if audience != resource && audience != KEY_VAULT_APP_ID {
        return Err(Reply::unauthorized(&format!(
            "AKV10022: Invalid audience. Expected {resource} or {KEY_VAULT_APP_ID}, found: \
             {audience}."
        )));
    }
    if !claim("tid").eq_ignore_ascii_case(vault_tenant) {
        return Err(Reply::unauthorized(&format!(
            "AKV10032: Invalid issuer. Expected one of https://sts.windows.net/{vault_tenant}/, \
             found {}.",
            claim("iss")
        )));
    }
    Ok(Caller {
        appid: claim("appid").to_owned(),
        oid: claim("oid").to_owned(),
        issuer: claim("iss").to_owned(),
    })
}

/// The fault, the access check, the lookup and the answer, in one short critical section.
fn read_secret(route: &VaultRoute, caller: &Caller, name: &str, version: Option<&str>) -> Reply {
    let key = name_key(name);
    let mut state = route.state();
    match state.faults.get(&key) {
        None => {}
        Some(KeyVaultFault::Forbidden) => {
            return Reply::forbidden_by_rbac(&state.name, caller, name);
        }
        Some(KeyVaultFault::NotFound) => return Reply::not_found(name, version),
        Some(KeyVaultFault::Throttled { retry_after_secs }) => {
            return Reply::throttled(*retry_after_secs);
        }
        Some(KeyVaultFault::ServerError) => return Reply::server_error(),
    }
    if !state.readers.contains(&client_key(&caller.appid)) {
        return Reply::forbidden_by_rbac(&state.name, caller, name);
    }
    state.last_caller = Some(caller.appid.clone());
    let Some(secret) = state.secrets.get(&key) else {
        return Reply::not_found(name, version);
    };
    let stored = match version {
        None => secret.versions.last(),
        Some(version) => secret
            .versions
            .iter()
            .find(|stored| stored.version.eq_ignore_ascii_case(version)),
    };
    let Some(stored) = stored else {
        return Reply::not_found(name, version);
    };
    if !stored.attributes.enabled {
        return Reply::disabled();
    }
    let body = secret_bundle(&state.url, &secret.name, stored);
    *state.reads.entry(key).or_default() += 1;
    Reply::ok(body)
}

/// The 200 body (a `SecretBundle`).
fn secret_bundle(vault: &str, name: &str, stored: &StoredVersion) -> Value {
    let attributes = &stored.attributes;
    let mut dates = Map::new();
    dates.insert("enabled".to_owned(), Value::Bool(true));
    if let Some(nbf) = attributes.nbf {
        dates.insert("nbf".to_owned(), unix_secs(nbf).into());
    }
    if let Some(exp) = attributes.exp {
        dates.insert("exp".to_owned(), unix_secs(exp).into());
    }
    dates.insert("created".to_owned(), stored.created.into());
    dates.insert("updated".to_owned(), stored.updated.into());
    dates.insert("recoveryLevel".to_owned(), "Recoverable+Purgeable".into());
    dates.insert("recoverableDays".to_owned(), 90.into());
    let version = &stored.version;
    let mut body = Map::new();
    body.insert("value".to_owned(), stored.value.expose_secret().into());
    body.insert(
        "id".to_owned(),
        format!("{vault}/secrets/{name}/{version}").into(),
    );
    body.insert("attributes".to_owned(), Value::Object(dates));
    body.insert("tags".to_owned(), Value::Object(Map::new()));
    if let Some(content_type) = &attributes.content_type {
        body.insert("contentType".to_owned(), content_type.as_str().into());
    }
    if attributes.certificate {
        body.insert(
            "kid".to_owned(),
            format!("{vault}/keys/{name}/{version}").into(),
        );
        body.insert("managed".to_owned(), Value::Bool(true));
    }
    Value::Object(body)
}

/// Seconds since the Unix epoch, negative before it; saturating far from it.
fn unix_secs(when: SystemTime) -> i64 {
    match when.duration_since(UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_secs()).unwrap_or(i64::MAX),
        Err(before) => i64::try_from(before.duration().as_secs()).map_or(i64::MIN, |secs| -secs),
    }
}

/// An answer before the headers every Key Vault response shares are added.
struct Reply {
    /// The HTTP status.
    status: StatusCode,
    /// The JSON body.
    body: Value,
    /// Whether to send the `WWW-Authenticate` challenge (every 401).
    challenge: bool,
    /// `Retry-After` of a throttled answer.
    retry_after: Option<u64>,
}

impl Reply {
    fn ok(body: Value) -> Reply {
        Reply {
            status: StatusCode::OK,
            body,
            challenge: false,
            retry_after: None,
        }
    }

    /// `{"error":{"code":…,"message":…}}`, plus `innererror` when given.
    fn error(status: StatusCode, code: &str, message: &str, inner: Option<&str>) -> Reply {
        let mut error = json!({ "code": code, "message": message });
        if let Some(inner) = inner {
            error["innererror"] = json!({ "code": inner });
        }
        Reply {
            status,
            body: json!({ "error": error }),
            challenge: status == StatusCode::UNAUTHORIZED,
            retry_after: None,
        }
    }

    fn unauthorized(message: &str) -> Reply {
        Reply::error(StatusCode::UNAUTHORIZED, "Unauthorized", message, None)
    }

    fn bad_parameter(message: &str) -> Reply {
        Reply::error(StatusCode::BAD_REQUEST, "BadParameter", message, None)
    }

    fn method_not_allowed() -> Reply {
        Reply::error(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            "The simulated vault answers GET only.",
            None,
        )
    }

    fn forbidden_by_rbac(vault: &str, caller: &Caller, name: &str) -> Reply {
        let message = format!(
            "Caller is not authorized to perform action on resource.\r\nIf role assignments, \
             deny assignments or role definitions were changed recently, please observe \
             propagation time.\r\nCaller: appid={appid};oid={oid};iss={issuer}\r\nAction: \
             '{GET_SECRET_ACTION}'\r\nResource: '/subscriptions/{MANAGED_IDENTITY_SUBSCRIPTION}/\
             resourcegroups/{VAULT_RESOURCE_GROUP}/providers/microsoft.keyvault/vaults/\
             {vault}/secrets/{secret}'\r\nAssignment: (not found)\r\nDenyAssignmentId: \
             null\r\nDecisionReason: 'DeniedWithNoValidRBAC' \r\nVault: \
             {vault};location={VAULT_REGION}\r\n",
            appid = caller.appid,
            oid = caller.oid,
            issuer = caller.issuer,
            secret = name_key(name),
        );
        Reply::error(
            StatusCode::FORBIDDEN,
            "Forbidden",
            &message,
            Some("ForbiddenByRbac"),
        )
    }

    fn not_found(name: &str, version: Option<&str>) -> Reply {
        let id = match version {
            Some(version) => format!("{name}/{version}"),
            None => name.to_owned(),
        };
        let message = format!(
            "A secret with (name/id) {id} was not found in this key vault. If you recently \
             deleted this secret you may be able to recover it using the correct recovery \
             command. For help resolving this issue, please see \
             https://go.microsoft.com/fwlink/?linkid=2125182"
        );
        Reply::error(StatusCode::NOT_FOUND, "SecretNotFound", &message, None)
    }

    fn disabled() -> Reply {
        Reply::error(
            StatusCode::FORBIDDEN,
            "Forbidden",
            "Operation get is not allowed on a disabled secret.",
            Some("SecretDisabled"),
        )
    }

    fn throttled(retry_after_secs: u64) -> Reply {
        let mut reply = Reply::error(
            StatusCode::TOO_MANY_REQUESTS,
            "Throttled",
            "Request was not processed because too many requests were received. Reason: \
             VaultRequestTypeLimitReached",
            None,
        );
        reply.retry_after = Some(retry_after_secs);
        reply
    }

    fn server_error() -> Reply {
        Reply::error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalServerError",
            "The service encountered an internal error. Please try again later.",
            None,
        )
    }

    /// The error code for the request log: the inner code where there is one, else the code.
    fn log_code(&self) -> &str {
        let error = &self.body["error"];
        error["innererror"]["code"]
            .as_str()
            .or_else(|| error["code"].as_str())
            .unwrap_or("-")
    }

    fn into_response(self, request_id: &str, request: &HeaderMap, challenge: &str) -> Response {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(JSON_CONTENT_TYPE),
        );
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
        headers.insert(header::EXPIRES, HeaderValue::from_static("-1"));
        headers.insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        headers.insert(
            header::STRICT_TRANSPORT_SECURITY,
            HeaderValue::from_static("max-age=31536000;includeSubDomains"),
        );
        // A GUID is always a valid header value.
        if let Ok(value) = HeaderValue::from_str(request_id) {
            headers.insert(HeaderName::from_static("x-ms-request-id"), value);
        }
        headers.insert(
            HeaderName::from_static("x-ms-keyvault-service-version"),
            HeaderValue::from_static(SERVICE_VERSION),
        );
        headers.insert(
            HeaderName::from_static("x-ms-keyvault-region"),
            HeaderValue::from_static(VAULT_REGION),
        );
        // The caller's id comes back as it was sent: it is already a valid header value.
        if let Some(id) = request
            .get("x-ms-client-request-id")
            .filter(|id| id.len() <= MAX_CLIENT_REQUEST_ID_LEN)
        {
            headers.insert(
                HeaderName::from_static("x-ms-client-request-id"),
                id.clone(),
            );
        }
        if self.challenge {
            // The tenant is the test's choice and may hold characters a header cannot; the
            // challenge is then left out rather than the simulator failing.
            if let Ok(value) = HeaderValue::from_str(challenge) {
                headers.insert(header::WWW_AUTHENTICATE, value);
            }
        }
        if let Some(seconds) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if self.status == StatusCode::METHOD_NOT_ALLOWED {
            headers.insert(header::ALLOW, HeaderValue::from_static("GET"));
        }
        (self.status, headers, self.body.to_string()).into_response()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    use super::super::access_token::jwt_shaped;
    use super::super::cloud::SimCloud;
    use super::super::managed_identity::managed_identity_object_id;
    use super::super::test_support::*;
    use super::super::{
        SIM_SYSTEM_ASSIGNED_CLIENT_ID, SimApp, SimEntra, SimFederatedCredential, SimTenant,
    };
    use super::*;

    const VAULT: &str = "https://vault.azure.net";
    const VAULT_SCOPE: &str = "https://vault.azure.net/.default";
    const GOV_VAULT_SCOPE: &str = "https://vault.usgovcloudapi.net/.default";
    const NAME: &str = "powerbi-client-secret";
    const VALUE: &str = "kv-fixture~value+1";
    const OTHER_APP: &str = "9e8d7c6b-5a4f-4e3d-8c2b-1a0f9e8d7c6b";

    /// The fixture with the vault in [`TENANT`], [`APP`] granted, and one secret.
    async fn vault_fixture() -> (Fixture, String) {
        let fixture = fixture().await;
        fixture.sim.set_key_vault_tenant(TENANT);
        fixture.sim.grant_key_vault_access(APP);
        let version = fixture
            .sim
            .set_key_vault_secret(NAME, VALUE, SimSecretAttributes::default());
        (fixture, version)
    }

    /// A client-secret v2 token from [`TENANT`] for `scope`.
    async fn token_for(fixture: &Fixture, scope: &'static str) -> String {
        let reply = post(
            &fixture.http,
            &v2_url(&fixture.sim, TENANT),
            &with(v2_form(), "scope", scope),
        )
        .await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        reply.json()["access_token"]
            .as_str()
            .expect("access_token")
            .to_owned()
    }

    /// `GET {vault}/{path}?api-version=7.5`, with the bearer token if any.
    async fn get(fixture: &Fixture, token: Option<&str>, path: &str) -> Answer {
        let url = format!("{}/{path}?api-version=7.5", fixture.sim.key_vault_url());
        let request = fixture.http.get(url);
        let request = match token {
            Some(token) => request.bearer_auth(token),
            None => request,
        };
        answer(request).await
    }

    /// Checks the headers every answer carries, and the challenge on (only) a 401.
    fn assert_vault_headers(fixture: &Fixture, reply: &Answer) {
        assert_eq!(reply.header("content-type"), Some(JSON_CONTENT_TYPE));
        let request_id = reply.header("x-ms-request-id").expect("x-ms-request-id");
        assert!(looks_like_guid(request_id), "{request_id}");
        assert_eq!(
            reply.header("x-ms-keyvault-service-version"),
            Some(SERVICE_VERSION)
        );
        assert_eq!(reply.header("x-ms-keyvault-region"), Some(VAULT_REGION));
        assert_eq!(reply.header("cache-control"), Some("no-cache"));
        let challenge = reply.header("www-authenticate");
        if reply.status == 401 {
            let expected = format!(
                "Bearer authorization=\"{}/{}\", resource=\"{VAULT}\"",
                fixture.sim.authority_host(),
                fixture.sim.key_vault_tenant()
            );
            assert_eq!(challenge, Some(expected.as_str()));
        } else {
            assert_eq!(challenge, None);
        }
        assert!(
            !reply.body.contains("eyJ"),
            "no token echoed: {}",
            reply.body
        );
    }

    /// A 401 with this message (or message prefix) and the challenge.
    fn assert_unauthorized(fixture: &Fixture, reply: &Answer, message_prefix: &str) {
        assert_eq!(reply.status, 401, "{}", reply.body);
        assert_vault_headers(fixture, reply);
        let body = reply.json();
        assert_eq!(body["error"]["code"], "Unauthorized", "{body}");
        let message = body["error"]["message"].as_str().expect("message");
        assert!(message.starts_with(message_prefix), "{message}");
        assert!(!reply.body.contains(VALUE));
    }

    fn assert_error(reply: &Answer, status: u16, code: &str, inner: Option<&str>) -> Value {
        assert_eq!(reply.status, status, "{}", reply.body);
        let body = reply.json();
        assert_eq!(body["error"]["code"], code, "{body}");
        assert!(body["error"]["message"].is_string(), "{body}");
        match inner {
            Some(inner) => assert_eq!(body["error"]["innererror"]["code"], inner, "{body}"),
            None => assert!(body["error"].get("innererror").is_none(), "{body}"),
        }
        assert!(!reply.body.contains(VALUE));
        body
    }

    #[tokio::test]
    async fn a_request_without_a_bearer_token_gets_the_challenge() {
        let (fixture, _) = vault_fixture().await;
        let reply = get(&fixture, None, &format!("secrets/{NAME}")).await;
        assert_unauthorized(
            &fixture,
            &reply,
            "AKV10000: Request is missing a Bearer or PoP token.",
        );
        assert_eq!(
            reply.json(),
            json!({"error":{"code":"Unauthorized",
                "message":"AKV10000: Request is missing a Bearer or PoP token."}})
        );
        assert_eq!(
            reply.header("www-authenticate"),
            Some(
                format!(
                    "Bearer authorization=\"{}/{TENANT}\", resource=\"https://vault.azure.net\"",
                    fixture.sim.authority_host()
                )
                .as_str()
            )
        );

        // Other schemes and an empty bearer are no bearer token either.
        let url = format!(
            "{}/secrets/{NAME}?api-version=7.5",
            fixture.sim.key_vault_url()
        );
        for authorization in ["Basic dXNlcjpwdw==", "Bearer", "Bearer   ", "token"] {
            let refused = answer(
                fixture
                    .http
                    .get(&url)
                    .header("Authorization", authorization),
            )
            .await;
            assert_unauthorized(&fixture, &refused, "AKV10000:");
        }

        // The challenge names the vault's tenant and follows it.
        fixture.sim.set_key_vault_tenant("contoso.onmicrosoft.com");
        let reply = get(&fixture, None, &format!("secrets/{NAME}/")).await;
        assert_unauthorized(&fixture, &reply, "AKV10000:");
        assert!(
            reply
                .header("www-authenticate")
                .is_some_and(|value| value.contains("/contoso.onmicrosoft.com\""))
        );
        assert_eq!(fixture.sim.key_vault_request_count(), 6);
        assert_eq!(fixture.sim.key_vault_read_count(NAME), 0);
        assert_eq!(fixture.sim.last_key_vault_caller(), None);
    }

    #[tokio::test]
    async fn a_client_secret_token_reads_a_granted_secret_current_and_by_version() {
        let fixture = fixture().await;
        fixture.sim.set_key_vault_tenant(TENANT);
        fixture
            .sim
            .grant_key_vault_access(&APP.to_ascii_uppercase());
        let expires = UNIX_EPOCH + Duration::from_secs(1_900_000_000);
        let not_before = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let before = unix_now();
        let version = fixture.sim.set_key_vault_secret(
            "PowerBI-Client-Secret",
            VALUE,
            SimSecretAttributes {
                exp: Some(expires),
                nbf: Some(not_before),
                content_type: Some("text/plain".to_owned()),
                ..SimSecretAttributes::default()
            },
        );
        let after = unix_now();
        assert_eq!(version.len(), 32);
        assert!(
            version
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );

        let token = token_for(&fixture, VAULT_SCOPE).await;
        let current = get(&fixture, Some(&token), &format!("secrets/{NAME}")).await;
        assert_eq!(current.status, 200, "{}", current.body);
        assert_vault_headers(&fixture, &current);
        let body = current.json();
        let vault = fixture.sim.key_vault_url();
        assert_eq!(body["value"], VALUE);
        assert_eq!(
            body["id"],
            format!("{vault}/secrets/PowerBI-Client-Secret/{version}")
        );
        let attributes = &body["attributes"];
        assert_eq!(attributes["enabled"], true);
        assert_eq!(attributes["exp"], json!(unix_secs(expires)));
        assert_eq!(attributes["nbf"], json!(unix_secs(not_before)));
        let created = attributes["created"].as_i64().expect("created");
        assert!((before..=after).contains(&created));
        assert_eq!(attributes["updated"], attributes["created"]);
        assert_eq!(attributes["recoveryLevel"], "Recoverable+Purgeable");
        assert_eq!(attributes["recoverableDays"], 90);
        assert_eq!(body["contentType"], "text/plain");
        assert_eq!(body["tags"], json!({}));
        assert!(body.get("kid").is_none() && body.get("managed").is_none());

        let by_version = get(&fixture, Some(&token), &format!("secrets/{NAME}/{version}")).await;
        assert_eq!(by_version.status, 200, "{}", by_version.body);
        assert_eq!(by_version.json(), body);
        let upper = version.to_ascii_uppercase();
        let by_upper = get(&fixture, Some(&token), &format!("secrets/{NAME}/{upper}")).await;
        assert_eq!(by_upper.json()["id"], body["id"]);

        // A v1 token (resource, numbers as strings) reads too.
        let v1 = post(
            &fixture.http,
            &v1_url(&fixture.sim, TENANT),
            &with(v1_form(), "resource", VAULT),
        )
        .await
        .json();
        let v1_token = v1["access_token"].as_str().expect("token");
        assert_eq!(
            get(&fixture, Some(v1_token), &format!("secrets/{NAME}"))
                .await
                .status,
            200
        );

        assert_eq!(fixture.sim.key_vault_read_count("POWERBI-client-secret"), 4);
        assert_eq!(fixture.sim.key_vault_request_count(), 4);
        assert_eq!(fixture.sim.last_key_vault_caller().as_deref(), Some(APP));
    }

    #[tokio::test]
    async fn a_second_set_rotates_and_the_old_version_stays_readable() {
        let (fixture, first) = vault_fixture().await;
        let token = token_for(&fixture, VAULT_SCOPE).await;
        let second =
            fixture
                .sim
                .set_key_vault_secret(NAME, "rotated", SimSecretAttributes::default());
        assert_ne!(first, second);
        let current = get(&fixture, Some(&token), &format!("secrets/{NAME}"))
            .await
            .json();
        assert_eq!(current["value"], "rotated");
        assert!(
            current["id"]
                .as_str()
                .is_some_and(|id| id.ends_with(&second))
        );
        let old = get(&fixture, Some(&token), &format!("secrets/{NAME}/{first}")).await;
        assert_eq!(old.status, 200, "{}", old.body);
        assert_eq!(old.json()["value"], VALUE);
        assert!(
            old.json()["id"]
                .as_str()
                .is_some_and(|id| id.ends_with(&first))
        );
        assert_eq!(fixture.sim.key_vault_read_count(NAME), 2);
    }

    #[tokio::test]
    async fn an_app_without_a_grant_gets_403_forbidden_by_rbac() {
        let (fixture, _) = vault_fixture().await;
        fixture.sim.set_app(TENANT, SimApp::new(OTHER_APP, SECRET));
        let reply = post(
            &fixture.http,
            &v2_url(&fixture.sim, TENANT),
            &with(
                with(v2_form(), "client_id", OTHER_APP),
                "scope",
                VAULT_SCOPE,
            ),
        )
        .await;
        let other = reply.json()["access_token"]
            .as_str()
            .expect("token")
            .to_owned();
        let claims = decode_claims(&other);
        let refused = get(&fixture, Some(&other), &format!("secrets/{NAME}")).await;
        assert_vault_headers(&fixture, &refused);
        let body = assert_error(&refused, 403, "Forbidden", Some("ForbiddenByRbac"));
        let expected = format!(
            "Caller is not authorized to perform action on resource.\r\nIf role assignments, \
             deny assignments or role definitions were changed recently, please observe \
             propagation time.\r\nCaller: appid={OTHER_APP};oid={};iss=https://sts.windows.net/\
             {TENANT}/\r\nAction: 'Microsoft.KeyVault/vaults/secrets/getSecret/action'\r\n\
             Resource: '/subscriptions/{MANAGED_IDENTITY_SUBSCRIPTION}/resourcegroups/sim/\
             providers/microsoft.keyvault/vaults/sim-vault/secrets/{NAME}'\r\nAssignment: (not \
             found)\r\nDenyAssignmentId: null\r\nDecisionReason: 'DeniedWithNoValidRBAC' \r\n\
             Vault: sim-vault;location=westeurope\r\n",
            claims["oid"].as_str().expect("oid")
        );
        assert_eq!(body["error"]["message"], expected);
        // A version id changes nothing, nor does a secret that does not exist: access first.
        let refused = get(&fixture, Some(&other), "secrets/nothing-here").await;
        assert_error(&refused, 403, "Forbidden", Some("ForbiddenByRbac"));

        // A grant taken back.
        let token = token_for(&fixture, VAULT_SCOPE).await;
        assert_eq!(
            get(&fixture, Some(&token), &format!("secrets/{NAME}"))
                .await
                .status,
            200
        );
        fixture.sim.revoke_key_vault_access(APP);
        let revoked = get(&fixture, Some(&token), &format!("secrets/{NAME}")).await;
        assert_error(&revoked, 403, "Forbidden", Some("ForbiddenByRbac"));
        assert_eq!(fixture.sim.key_vault_read_count(NAME), 1);
        assert_eq!(fixture.sim.last_key_vault_caller().as_deref(), Some(APP));
    }

    #[tokio::test]
    async fn tokens_for_another_resource_directory_or_signer_and_expired_ones_get_401() {
        let (fixture, _) = vault_fixture().await;
        let path = format!("secrets/{NAME}");
        let vault = token_for(&fixture, VAULT_SCOPE).await;

        let power_bi = token_for(&fixture, POWER_BI_SCOPE).await;
        let reply = get(&fixture, Some(&power_bi), &path).await;
        assert_unauthorized(&fixture, &reply, "AKV10022: Invalid audience.");
        assert_eq!(
            reply.json()["error"]["message"],
            format!(
                "AKV10022: Invalid audience. Expected {VAULT} or {KEY_VAULT_APP_ID}, found: \
                 {POWER_BI}."
            )
        );
        let gov = token_for(&fixture, GOV_VAULT_SCOPE).await;
        assert_unauthorized(
            &fixture,
            &get(&fixture, Some(&gov), &path).await,
            "AKV10022:",
        );

        // Forged: changed signature, changed claims, another simulator's key, garbage.
        let (signing_input, signature) = vault.rsplit_once('.').expect("three parts");
        let mut tail = URL_SAFE_NO_PAD.decode(signature).expect("base64url");
        if let Some(last) = tail.last_mut() {
            *last ^= 1;
        }
        let tail_changed = format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(tail));
        let mut claims = decode_claims(&vault);
        claims["appid"] = json!(OTHER_APP);
        let header = signing_input.split('.').next().expect("header");
        let swapped = format!(
            "{header}.{}.{signature}",
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let other = SimEntra::start().await.expect("second simulator");
        let foreign = jwt_shaped(&other.shared.token_key, &decode_claims(&vault));
        for forged in [
            tail_changed.as_str(),
            swapped.as_str(),
            foreign.as_str(),
            "not-a-jwt",
            "a.b.c",
            &format!("{vault}.extra"),
            &"x".repeat(16 * 1024),
        ] {
            let reply = get(&fixture, Some(forged), &path).await;
            assert_unauthorized(
                &fixture,
                &reply,
                "AKV10046: Unable to resolve the key used for signature validation.",
            );
        }

        // A token from another directory (a customer tenant) cannot read the vault.
        fixture.sim.add_tenant(
            "fabrikam.onmicrosoft.com",
            SimTenant::new(SimApp::new(APP, SECRET), Duration::from_secs(3599)),
        );
        let reply = post(
            &fixture.http,
            &v2_url(&fixture.sim, "fabrikam.onmicrosoft.com"),
            &with(v2_form(), "scope", VAULT_SCOPE),
        )
        .await;
        let customer = reply.json()["access_token"]
            .as_str()
            .expect("token")
            .to_owned();
        let reply = get(&fixture, Some(&customer), &path).await;
        assert_unauthorized(&fixture, &reply, "AKV10032: Invalid issuer.");
        assert_eq!(
            reply.json()["error"]["message"],
            format!(
                "AKV10032: Invalid issuer. Expected one of https://sts.windows.net/{TENANT}/, \
                 found https://sts.windows.net/fabrikam.onmicrosoft.com/."
            )
        );

        // Expired: checked before the audience.
        let mut old = decode_claims(&power_bi);
        old["exp"] = json!(1_600_000_000_u64);
        let old = jwt_shaped(&fixture.sim.shared.token_key, &old);
        let reply = get(&fixture, Some(&old), &path).await;
        assert_unauthorized(&fixture, &reply, "[TokenExpired]");
        assert_eq!(
            reply.json()["error"]["message"],
            "[TokenExpired] Error validating token: 'S2S12086'."
        );
        fixture.sim.add_tenant(
            TENANT,
            SimTenant::new(SimApp::new(APP, SECRET), Duration::ZERO),
        );
        let instant = token_for(&fixture, VAULT_SCOPE).await;
        assert_unauthorized(
            &fixture,
            &get(&fixture, Some(&instant), &path).await,
            "[TokenExpired]",
        );

        // The vault's cloud follows the Power BI cloud; the challenge names its resource.
        fixture.sim.set_powerbi_cloud(SimCloud::Gcchigh);
        let reply = get(&fixture, Some(&vault), &path).await;
        assert_eq!(reply.status, 401);
        assert_eq!(
            reply.header("www-authenticate"),
            Some(
                format!(
                    "Bearer authorization=\"{}/{TENANT}\", \
                     resource=\"https://vault.usgovcloudapi.net\"",
                    fixture.sim.authority_host()
                )
                .as_str()
            )
        );
        assert_eq!(get(&fixture, Some(&gov), &path).await.status, 200);
        // Key Vault's application id is an audience too.
        let mut by_app_id = decode_claims(&vault);
        by_app_id["aud"] = json!(KEY_VAULT_APP_ID);
        let by_app_id = jwt_shaped(&fixture.sim.shared.token_key, &by_app_id);
        assert_eq!(get(&fixture, Some(&by_app_id), &path).await.status, 200);

        assert_eq!(fixture.sim.key_vault_read_count(NAME), 2);
        assert_eq!(fixture.sim.key_vault_request_count(), 15);
    }

    #[tokio::test]
    async fn unknown_secrets_and_versions_get_404_and_bad_requests_400() {
        let (fixture, version) = vault_fixture().await;
        let token = token_for(&fixture, VAULT_SCOPE).await;
        let reply = get(&fixture, Some(&token), "secrets/missing-secret").await;
        assert_vault_headers(&fixture, &reply);
        let body = assert_error(&reply, 404, "SecretNotFound", None);
        assert_eq!(
            body["error"]["message"],
            "A secret with (name/id) missing-secret was not found in this key vault. If you \
             recently deleted this secret you may be able to recover it using the correct \
             recovery command. For help resolving this issue, please see \
             https://go.microsoft.com/fwlink/?linkid=2125182"
        );
        let unknown = "0123456789abcdef0123456789abcdef";
        let reply = get(&fixture, Some(&token), &format!("secrets/{NAME}/{unknown}")).await;
        let body = assert_error(&reply, 404, "SecretNotFound", None);
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|message| message.contains(&format!("{NAME}/{unknown} was not")))
        );

        let bad_paths = [
            format!("secrets/{}", "a".repeat(128)),
            "secrets/under_score".to_owned(),
            "secrets/has%2Fslash".to_owned(),
            "secrets/caf%C3%A9".to_owned(),
            format!("secrets/{NAME}/{version}/extra"),
            format!("secrets/{NAME}/not-hex!"),
            format!("secrets/{NAME}/{}", "a".repeat(65)),
        ];
        for path in &bad_paths {
            let reply = get(&fixture, Some(&token), path).await;
            assert_vault_headers(&fixture, &reply);
            assert_error(&reply, 400, "BadParameter", None);
        }
        let longest = "a".repeat(127);
        let reply = get(&fixture, Some(&token), &format!("secrets/{longest}")).await;
        assert_error(&reply, 404, "SecretNotFound", None);

        let url = format!("{}/secrets/{NAME}", fixture.sim.key_vault_url());
        for query in [
            "",
            "?api-version=",
            "?api-version=6.0",
            "?api-version=7",
            "?api-version=7.x",
            "?api-version=7.5-beta",
            "?API-VERSION=7.5",
        ] {
            let reply = answer(
                fixture
                    .http
                    .get(format!("{url}{query}"))
                    .bearer_auth(&token),
            )
            .await;
            let body = assert_error(&reply, 400, "BadParameter", None);
            assert!(
                body["error"]["message"]
                    .as_str()
                    .is_some_and(|message| message.contains("api-version")),
                "{body}"
            );
        }
        for query in [
            "?api-version=7.0",
            "?api-version=7.6-preview.2",
            "?api-version=7.4-preview",
            "?api-version=2016-10-01",
        ] {
            let reply = answer(
                fixture
                    .http
                    .get(format!("{url}{query}"))
                    .bearer_auth(&token),
            )
            .await;
            assert_eq!(reply.status, 200, "{query}: {}", reply.body);
        }

        let posted = answer(
            fixture
                .http
                .post(format!("{url}?api-version=7.5"))
                .bearer_auth(&token),
        )
        .await;
        assert_error(&posted, 405, "MethodNotAllowed", None);
        assert_eq!(posted.header("allow"), Some("GET"));

        // The client's request id comes back.
        let traced = answer(
            fixture
                .http
                .get(format!("{url}?api-version=7.5"))
                .bearer_auth(&token)
                .header(
                    "x-ms-client-request-id",
                    "2f1e0d9c-aaaa-4bbb-8ccc-dddddddddddd",
                ),
        )
        .await;
        assert_eq!(
            traced.header("x-ms-client-request-id"),
            Some("2f1e0d9c-aaaa-4bbb-8ccc-dddddddddddd")
        );
        assert_eq!(fixture.sim.key_vault_read_count(NAME), 5);
        // Recorded per request, in order: the traced one last, after the ones sent without.
        let recorded = fixture.sim.key_vault_client_request_ids();
        assert_eq!(recorded.len() as u64, fixture.sim.key_vault_request_count());
        assert_eq!(
            recorded.last().cloned().flatten().as_deref(),
            Some("2f1e0d9c-aaaa-4bbb-8ccc-dddddddddddd")
        );
        assert!(recorded[..recorded.len() - 1].iter().all(Option::is_none));
    }

    #[tokio::test]
    async fn disabled_versions_get_403_secret_disabled_and_dates_are_not_enforced() {
        let (fixture, first) = vault_fixture().await;
        let token = token_for(&fixture, VAULT_SCOPE).await;
        let second = fixture.sim.set_key_vault_secret(
            NAME,
            "next",
            SimSecretAttributes {
                enabled: false,
                ..SimSecretAttributes::default()
            },
        );
        let expected = json!({"error":{"code":"Forbidden",
            "message":"Operation get is not allowed on a disabled secret.",
            "innererror":{"code":"SecretDisabled"}}});
        for path in [
            format!("secrets/{NAME}"),
            format!("secrets/{NAME}/{second}"),
        ] {
            let reply = get(&fixture, Some(&token), &path).await;
            assert_eq!(reply.status, 403, "{}", reply.body);
            assert_vault_headers(&fixture, &reply);
            assert_eq!(reply.json(), expected);
            assert!(!reply.body.contains("next"));
        }
        assert_eq!(
            get(&fixture, Some(&token), &format!("secrets/{NAME}/{first}"))
                .await
                .status,
            200
        );
        assert!(fixture.sim.disable_key_vault_secret_version(NAME, &first));
        assert_eq!(
            get(&fixture, Some(&token), &format!("secrets/{NAME}/{first}"))
                .await
                .json(),
            expected
        );
        assert!(!fixture.sim.disable_key_vault_secret_version(NAME, "0000"));
        assert!(
            !fixture
                .sim
                .disable_key_vault_secret_version("nothing", &first)
        );

        // Expired and not-yet-valid secrets are served, as the real vault serves them.
        let past = UNIX_EPOCH + Duration::from_secs(1_000_000_000);
        let future = SystemTime::now() + Duration::from_secs(86_400);
        fixture.sim.set_key_vault_secret(
            "dated",
            "still-served",
            SimSecretAttributes {
                exp: Some(past),
                nbf: Some(future),
                ..SimSecretAttributes::default()
            },
        );
        let dated = get(&fixture, Some(&token), "secrets/dated").await;
        assert_eq!(dated.status, 200, "{}", dated.body);
        assert_eq!(dated.json()["attributes"]["exp"], json!(1_000_000_000));
        assert_eq!(fixture.sim.key_vault_read_count(NAME), 1);
    }

    #[tokio::test]
    async fn each_fault_answers_with_its_status_body_and_headers() {
        let (fixture, version) = vault_fixture().await;
        let token = token_for(&fixture, VAULT_SCOPE).await;
        let cases: [(KeyVaultFault, u16, &str, Option<&str>); 4] = [
            (
                KeyVaultFault::Forbidden,
                403,
                "Forbidden",
                Some("ForbiddenByRbac"),
            ),
            (KeyVaultFault::NotFound, 404, "SecretNotFound", None),
            (
                KeyVaultFault::Throttled {
                    retry_after_secs: 7,
                },
                429,
                "Throttled",
                None,
            ),
            (KeyVaultFault::ServerError, 500, "InternalServerError", None),
        ];
        for (fault, status, code, inner) in cases {
            fixture
                .sim
                .set_key_vault_fault(&NAME.to_ascii_uppercase(), Some(fault));
            for path in [
                format!("secrets/{NAME}"),
                format!("secrets/{NAME}/{version}"),
            ] {
                let reply = get(&fixture, Some(&token), &path).await;
                assert_vault_headers(&fixture, &reply);
                let body = assert_error(&reply, status, code, inner);
                match fault {
                    KeyVaultFault::Throttled { .. } => {
                        assert_eq!(reply.header("retry-after"), Some("7"));
                        assert_eq!(
                            body["error"]["message"],
                            "Request was not processed because too many requests were \
                             received. Reason: VaultRequestTypeLimitReached"
                        );
                    }
                    _ => assert_eq!(reply.header("retry-after"), None),
                }
            }
        }
        // Faults come after the token check: no bearer is still a 401.
        assert_eq!(
            get(&fixture, None, &format!("secrets/{NAME}")).await.status,
            401
        );
        // Other secrets are unaffected; a fault may precede its secret.
        fixture
            .sim
            .set_key_vault_fault("later", Some(KeyVaultFault::NotFound));
        fixture
            .sim
            .set_key_vault_secret("later", "x", SimSecretAttributes::default());
        assert_eq!(
            get(&fixture, Some(&token), "secrets/later").await.status,
            404
        );
        fixture.sim.set_key_vault_fault(NAME, None);
        assert_eq!(
            get(&fixture, Some(&token), &format!("secrets/{NAME}"))
                .await
                .status,
            200
        );
        assert_eq!(fixture.sim.key_vault_read_count(NAME), 1);
        assert_eq!(fixture.sim.key_vault_read_count("later"), 0);
        assert_eq!(fixture.sim.key_vault_request_count(), 11);
    }

    /// A client-secret v2 token for `scope` from `tenant`, where [`APP`] is registered.
    async fn token_from(fixture: &Fixture, tenant: &str, scope: &'static str) -> String {
        let reply = post(
            &fixture.http,
            &v2_url(&fixture.sim, tenant),
            &with(v2_form(), "scope", scope),
        )
        .await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        reply.json()["access_token"]
            .as_str()
            .expect("access_token")
            .to_owned()
    }

    #[tokio::test]
    async fn a_second_vault_has_its_own_directory_cloud_grants_and_secrets() {
        const CHINA_VAULT_SCOPE: &str = "https://vault.azure.cn/.default";
        let (fixture, _) = vault_fixture().await;
        let customer = "0f1e2d3c-4b5a-4968-8776-a5b4c3d2e1f0";
        fixture.sim.add_tenant(
            customer,
            SimTenant::new(SimApp::new(APP, SECRET), Duration::from_secs(3599)),
        );
        let second = fixture.sim.start_key_vault().await.expect("a second vault");
        assert_ne!(second.url(), fixture.sim.key_vault_url());
        second.set_tenant(customer);
        second.set_cloud(SimCloud::China);
        second.set_secret(NAME, "second-vault-value", SimSecretAttributes::default());
        let url = format!("{}/secrets/{NAME}?api-version=7.5", second.url());
        let read = |token: &str| answer(fixture.http.get(&url).bearer_auth(token));

        // The challenge names the vault's directory and cloud, at the simulated Entra ID.
        let reply = answer(fixture.http.get(&url)).await;
        assert_eq!(reply.status, 401, "{}", reply.body);
        assert_eq!(
            reply.header("www-authenticate"),
            Some(
                format!(
                    "Bearer authorization=\"{}/{customer}\", resource=\"https://vault.azure.cn\"",
                    fixture.sim.authority_host()
                )
                .as_str()
            )
        );
        // From the first vault's directory: another issuer. From its own directory but for
        // the public vault: another audience.
        let home = token_from(&fixture, TENANT, CHINA_VAULT_SCOPE).await;
        let reply = read(&home).await;
        assert_eq!(reply.status, 401);
        assert!(
            reply.body.contains(&format!(
                "AKV10032: Invalid issuer. Expected one of https://sts.windows.net/{customer}/"
            )),
            "{}",
            reply.body
        );
        let public = token_from(&fixture, customer, VAULT_SCOPE).await;
        let reply = read(&public).await;
        assert_eq!(reply.status, 401);
        assert!(
            reply
                .body
                .contains("AKV10022: Invalid audience. Expected https://vault.azure.cn"),
            "{}",
            reply.body
        );
        // From its directory, for its cloud: read once granted, in this vault only.
        let theirs = token_from(&fixture, customer, CHINA_VAULT_SCOPE).await;
        let reply = read(&theirs).await;
        assert_error(&reply, 403, "Forbidden", Some("ForbiddenByRbac"));
        let vault_name = format!("sim-vault-{}", second.url().rsplit(':').next().unwrap());
        assert!(
            reply
                .body
                .contains(&format!("Vault: {vault_name};location=")),
            "{}",
            reply.body
        );
        second.grant_access(APP);
        let reply = read(&theirs).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        let body = reply.json();
        assert_eq!(body["value"], "second-vault-value");
        assert!(
            body["id"]
                .as_str()
                .is_some_and(|id| id.starts_with(&format!("{}/secrets/{NAME}/", second.url()))),
            "{body}"
        );
        assert_eq!(second.read_count(NAME), 1);
        assert_eq!(second.request_count(), 5);
        assert_eq!(second.last_caller().as_deref(), Some(APP));
        // The first vault saw none of it, and still answers for its own directory and cloud.
        assert_eq!(fixture.sim.key_vault_request_count(), 0);
        assert_eq!(fixture.sim.key_vault_read_count(NAME), 0);
        let first = token_from(&fixture, TENANT, VAULT_SCOPE).await;
        let reply = get(&fixture, Some(&first), &format!("secrets/{NAME}")).await;
        assert_eq!(reply.json()["value"], VALUE);
        // Dropping the simulator stops the second vault too.
        let address = second.url().trim_start_matches("http://").to_owned();
        drop(fixture);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(&address).await.is_ok() {
            assert!(
                std::time::Instant::now() < deadline,
                "{address} still answers"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn managed_identity_tokens_read_from_the_default_directory() {
        let fixture = fixture().await;
        fixture.sim.set_managed_identity(host_identity());
        fixture
            .sim
            .set_key_vault_secret(NAME, VALUE, SimSecretAttributes::default());
        // The vault belongs to the identities' directory unless told otherwise.
        let reply = imds_get(
            &fixture.http,
            &fixture.sim,
            &[("api-version", "2018-02-01"), ("resource", VAULT)],
        )
        .await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        let system = reply.json()["access_token"]
            .as_str()
            .expect("token")
            .to_owned();
        let path = format!("secrets/{NAME}");
        let refused = get(&fixture, Some(&system), &path).await;
        assert_error(&refused, 403, "Forbidden", Some("ForbiddenByRbac"));
        fixture
            .sim
            .grant_key_vault_access(SIM_SYSTEM_ASSIGNED_CLIENT_ID);
        let read = get(&fixture, Some(&system), &path).await;
        assert_eq!(read.status, 200, "{}", read.body);
        assert_eq!(read.json()["value"], VALUE);
        assert_eq!(
            fixture.sim.last_key_vault_caller().as_deref(),
            Some(SIM_SYSTEM_ASSIGNED_CLIENT_ID)
        );

        // App Service, user-assigned identity.
        let url = query_url(
            &fixture.sim.app_service_endpoint(),
            &[
                ("api-version", "2019-08-01"),
                ("resource", VAULT),
                ("client_id", USER_ASSIGNED),
            ],
        );
        let reply = answer(
            fixture
                .http
                .get(url)
                .header("X-IDENTITY-HEADER", IDENTITY_HEADER)
                .header("Metadata", "true"),
        )
        .await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        let user = reply.json()["access_token"]
            .as_str()
            .expect("token")
            .to_owned();
        fixture.sim.grant_key_vault_access(USER_ASSIGNED);
        assert_eq!(get(&fixture, Some(&user), &path).await.status, 200);
        assert_eq!(
            fixture.sim.last_key_vault_caller().as_deref(),
            Some(USER_ASSIGNED)
        );
        assert_eq!(fixture.sim.key_vault_read_count(NAME), 2);
        // An app token from the fixture's tenant is from another directory here.
        let app = token_for(&fixture, VAULT_SCOPE).await;
        let reply = get(&fixture, Some(&app), &path).await;
        assert_unauthorized(&fixture, &reply, "AKV10032:");
    }

    #[tokio::test]
    async fn a_federated_credential_gets_a_vault_token_that_reads() {
        let (fixture, _) = vault_fixture().await;
        fixture.sim.set_managed_identity(host_identity());
        // The managed identity's token is the app's federated credential (reference §4).
        let exchange = "api://AzureADTokenExchange";
        let reply = imds_get(
            &fixture.http,
            &fixture.sim,
            &[
                ("api-version", "2018-02-01"),
                ("resource", exchange),
                ("client_id", USER_ASSIGNED),
            ],
        )
        .await;
        let assertion = reply.json()["access_token"]
            .as_str()
            .expect("token")
            .to_owned();
        let claims = decode_claims(&assertion);
        fixture.sim.add_federated_credential(
            TENANT,
            APP,
            SimFederatedCredential {
                issuer: claims["iss"].as_str().expect("iss").to_owned(),
                subject: managed_identity_object_id(USER_ASSIGNED),
                audience: exchange.to_owned(),
            },
        );
        let form = [
            ("grant_type", "client_credentials"),
            ("client_id", APP),
            (
                "client_assertion_type",
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            ),
            ("client_assertion", assertion.as_str()),
            ("scope", VAULT_SCOPE),
        ];
        let reply = post(&fixture.http, &v2_url(&fixture.sim, TENANT), &form).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        let token = reply.json()["access_token"]
            .as_str()
            .expect("token")
            .to_owned();
        let read = get(&fixture, Some(&token), &format!("secrets/{NAME}")).await;
        assert_eq!(read.status, 200, "{}", read.body);
        assert_eq!(fixture.sim.last_key_vault_caller().as_deref(), Some(APP));
    }

    #[tokio::test]
    async fn a_certificate_secret_carries_kid_and_managed() {
        let (fixture, _) = vault_fixture().await;
        let version = fixture.sim.set_key_vault_secret(
            "tokend-cert",
            "MIIKfake-pfx-base64",
            SimSecretAttributes {
                content_type: Some("application/x-pkcs12".to_owned()),
                certificate: true,
                ..SimSecretAttributes::default()
            },
        );
        let token = token_for(&fixture, VAULT_SCOPE).await;
        let body = get(&fixture, Some(&token), "secrets/tokend-cert")
            .await
            .json();
        let vault = fixture.sim.key_vault_url();
        assert_eq!(body["contentType"], "application/x-pkcs12");
        assert_eq!(body["kid"], format!("{vault}/keys/tokend-cert/{version}"));
        assert_eq!(body["managed"], true);
        assert_eq!(body["id"], format!("{vault}/secrets/tokend-cert/{version}"));
    }
}
