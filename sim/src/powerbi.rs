//! The Power BI REST API of the simulator (reference §8): `GET /v1.0/myorg/groups`, the call the
//! daemon makes to prove a token works, `POST /v1.0/myorg/GenerateToken`, the V2 embed token,
//! and the two report reads the daemon takes embed URLs from, Get Report In Group
//! (`GET /v1.0/myorg/groups/{group}/reports/{report}`) and Get Report
//! (`GET /v1.0/myorg/reports/{report}`, "My workspace").
//!
//! All of them check the bearer token as the real API does, as far as a client can observe it:
//! a token this simulator did not sign, one for another cloud's Power BI resource, or none at
//! all gets 401 `PowerBINotAuthorizedException`; a token whose `exp` has passed gets 403
//! `TokenExpired` (reference §8.2: Power BI answers an expired token with 403, not 401). There
//! is no clock skew: a token is expired from the second its `exp` names, which is stricter than
//! a validator with five minutes of leeway and so never lets a daemon rely on leeway it may not
//! get.
//!
//! A valid token's `tid` claim names the tenant. Its [`PowerBiBehavior`] (set with
//! [`SimEntra::set_powerbi_behavior`](super::SimEntra::set_powerbi_behavior)) then decides the
//! answer: the request as asked, or the refusal a misconfigured, throttled or failing tenant
//! gets. Requests are counted per tenant and endpoint once the token has verified.
//!
//! Wire details and where they come from:
//! * Error bodies: `PowerBINotAuthorizedException` and `TokenExpired` from reference §8.2;
//!   `PowerBIEntityNotFound` as quoted in DevScope/powerbi-powershell-modules#66 (the same
//!   `pbi.error` envelope as the 401); `TooManyRequests` with the message observed at Power BI
//!   (§8.4; the envelope is unconfirmed). The bodies of 400, 405, 413, 415 and 500 are not
//!   documented anywhere we found and follow the `{"error":{"code","message"}}` shape of the
//!   others.
//! * Headers: `RequestId` on every answer and the `Cache-Control`, `Pragma`,
//!   `X-Frame-Options`, `X-Content-Type-Options` and `Access-Control-Expose-Headers` values of
//!   a captured Power BI response (MicrosoftDocs/powerbi-docs#5067). Errors also carry
//!   `X-PowerBI-Error-Info`, the header Microsoft's .NET client reads for the error code
//!   (PowerBI-CSharp `sdk/PowerBI.Api/Extensions/V2/HttpOperationExceptionHandler.cs`); that it
//!   repeats the body's code is a guess.
//! * GenerateToken's `datasourceIdentities` (single sign-on) follow the `DatasourceIdentity`,
//!   `DatasourceSelector` and `DatasourceConnectionDetails` definitions of Microsoft's
//!   GenerateToken reference (and PowerBI-CSharp's generated models); the 10240-byte blob limit
//!   and its message are as users report Power BI's 400.
//! * Bodies: `@odata.context`, the workspace fields and the embed token fields from §8.2 and
//!   §8.3. A report has the fields of the Get Report (In Group) samples in Microsoft's REST
//!   reference (`id`, `name`, `webUrl`, `embedUrl`, `datasetId`) and of its Report definition
//!   (`reportType`, `isFromPbix`, `isOwnedByMe`, `datasetWorkspaceId`, `users`,
//!   `subscriptions`). Every GUID is a report, in any workspace, unless the test marked it
//!   missing ([`SimEntra::mark_report_missing`](super::SimEntra::mark_report_missing)): then
//!   404 `PowerBIEntityNotFound`, as for an item that is gone. Its `embedUrl` has the real
//!   shape (`/reportEmbed?reportId=…&groupId=…&w=2&config=…`, `config` the base64 of
//!   `{"clusterUrl":…}` with `=` written `%3d`) on the simulator's own host, so a browser-less
//!   test can tell the two reads apart (My workspace has no `groupId`). A report id that is not
//!   a GUID gets 400 `InvalidRequest` (what Power BI answers is not documented).
//!   `expiration` is ISO-8601 UTC in whole seconds, no later than the bearer token's `exp`
//!   (§8.3), nor `lifetimeInMinutes` from now, nor an hour from now.
//!
//! Nothing here logs a bearer token or an embed token; the embed token is random bytes behind
//! a gzip header (real ones are base64 of gzip and begin `H4sI`) and carries no secret.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::digest;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use axum::http::request::Parts;
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use futures_util::StreamExt;
use serde_json::{Map, Value, json};

use super::Shared;
use super::access_token::verify;
use super::cloud::SimCloud;
use super::wire::{
    JSON_CONTENT_TYPE, format_guid, is_guid, parse_form, random_guid, tenant_key, unix_now,
};

/// Largest GenerateToken body accepted. A request naming the maximum 50 reports, 50 datasets
/// and 50 workspaces with RLS identities, and a dozen datasource identities with blobs of the
/// largest size Power BI takes, stays under it.
const MAX_REQUEST_BODY: usize = 256 * 1024;

/// The longest `identityBlob` Power BI takes, in bytes; a longer one gets a 400 saying so
/// (the message as users report it, Fabric community forum "Embed For Customer - DirectQuery").
const MAX_IDENTITY_BLOB: usize = 10240;

/// A body longer than [`MAX_REQUEST_BODY`] is read and thrown away up to this size before the
/// 413 is sent: closing a socket with unread data makes the kernel send a reset, which can
/// reach the client before the answer does and hide the 413 behind a connection error.
const DRAIN_LIMIT: usize = 1024 * 1024;

/// Most items of each kind (reports, datasets, target workspaces) one embed token may name
/// (reference §8.3).
const MAX_ITEMS: usize = 50;

/// The longest an embed token lives when neither the bearer token nor `lifetimeInMinutes`
/// ends it sooner.
const DEFAULT_EMBED_LIFETIME_SECS: u64 = 60 * 60;

/// The names of the workspaces every tenant's service principal sees (in Fabric too).
pub(super) const WORKSPACE_NAMES: [&str; 3] = ["Sales", "Finance", "Operations"];

/// The request id Power BI puts on every answer, quoted in support requests. HTTP/1 header
/// names are case-insensitive; real responses spell it `RequestId`.
const REQUEST_ID: HeaderName = HeaderName::from_static("requestid");

/// The error code of a failed call, read by Microsoft's .NET client (real responses spell it
/// `X-PowerBI-Error-Info`).
const ERROR_INFO: HeaderName = HeaderName::from_static("x-powerbi-error-info");

/// How the simulated Power BI API (and the Fabric API, in its own words: `fabric.rs`) answers
/// one tenant's calls, whatever the endpoint.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PowerBiBehavior {
    /// Answer the request as asked.
    #[default]
    Ok,
    /// 401 `PowerBINotAuthorizedException`: what a tenant gets whose admin has not enabled
    /// "Service principals can use Fabric APIs", or whose security group lacks the app: service
    /// principals are not allowed. Fabric answers 401 `Unauthorized`.
    NotAuthorized,
    /// 403 `TokenExpired`, whatever the token's `exp`: a clock that disagrees with Power BI's.
    /// Fabric answers 401 `TokenExpired`.
    TokenExpired,
    /// 404 `PowerBIEntityNotFound`: the item is gone, or the service principal is not a member
    /// of its workspace (Power BI does not tell the two apart). Fabric: 404 `EntityNotFound`.
    NotFound,
    /// 429 `TooManyRequests` with `Retry-After: retry_after_secs` (Fabric: `RequestBlocked`).
    Throttled {
        /// Value of the `Retry-After` header, in seconds.
        retry_after_secs: u64,
    },
    /// 500 `InternalServerError`, without `Retry-After` (Fabric: `UnknownError`).
    ServerError,
}

/// The simulated Power BI endpoints, for
/// [`SimEntra::powerbi_request_count`](super::SimEntra::powerbi_request_count).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PowerBiEndpoint {
    /// `GET /v1.0/myorg/groups`
    Groups,
    /// `POST /v1.0/myorg/GenerateToken`
    GenerateToken,
    /// `GET /v1.0/myorg/groups/{group}/reports/{report}` (Get Report In Group)
    ReportInGroup,
    /// `GET /v1.0/myorg/reports/{report}` (Get Report, My workspace)
    Report,
    /// `GET /v1/workspaces` of the Fabric REST API, on the same listener.
    FabricWorkspaces,
}

impl PowerBiEndpoint {
    pub(super) fn label(self) -> &'static str {
        match self {
            PowerBiEndpoint::Groups => "groups",
            PowerBiEndpoint::GenerateToken => "generate_token",
            PowerBiEndpoint::ReportInGroup => "report_in_group",
            PowerBiEndpoint::Report => "report",
            PowerBiEndpoint::FabricWorkspaces => "fabric_workspaces",
        }
    }

    /// The only method the endpoint answers.
    pub(super) fn method(self) -> Method {
        match self {
            PowerBiEndpoint::GenerateToken => Method::POST,
            PowerBiEndpoint::Groups
            | PowerBiEndpoint::ReportInGroup
            | PowerBiEndpoint::Report
            | PowerBiEndpoint::FabricWorkspaces => Method::GET,
        }
    }
}

/// The Power BI API's side of [`Shared`].
#[derive(Default)]
pub(super) struct PowerBiState {
    /// Whose Power BI resource a bearer token must be for.
    pub(super) cloud: SimCloud,
    /// Per tenant (`tid` in lower case): behaviour, counters and records.
    pub(super) tenants: HashMap<String, PowerBiTenant>,
}

/// What the Power BI API knows about one tenant.
#[derive(Default)]
pub(super) struct PowerBiTenant {
    /// Applies to every request of the tenant until changed.
    pub(super) behavior: PowerBiBehavior,
    /// Requests with a valid token, per endpoint.
    requests: HashMap<PowerBiEndpoint, u64>,
    /// The latest GenerateToken body that parsed as JSON.
    pub(super) last_generate_token_request: Option<Value>,
    /// `tokenId` and expiry of the latest embed token issued; never the token.
    pub(super) last_embed_token: Option<(String, SystemTime)>,
    /// Datasets with row-level security (ids in lower case): GenerateToken needs an effective
    /// identity for each, and refuses one for any other dataset.
    pub(super) rls_datasets: Vec<String>,
    /// Reports (ids in lower case) the report reads answer 404 for.
    pub(super) missing_reports: Vec<String>,
}

impl PowerBiTenant {
    pub(super) fn requests(&self, endpoint: PowerBiEndpoint) -> u64 {
        self.requests.get(&endpoint).copied().unwrap_or(0)
    }
}

/// The Power BI API's per-request methods: each one short critical section.
impl Shared {
    /// Counts a request with a valid token, records a GenerateToken body, and returns the
    /// tenant's behaviour.
    pub(super) fn admit_powerbi(
        &self,
        tenant_key: &str,
        endpoint: PowerBiEndpoint,
        body: Option<Value>,
    ) -> PowerBiBehavior {
        let mut state = self.powerbi();
        let tenant = state.tenants.entry(tenant_key.to_owned()).or_default();
        *tenant.requests.entry(endpoint).or_default() += 1;
        if body.is_some() {
            tenant.last_generate_token_request = body;
        }
        tenant.behavior
    }

    /// The tenant's datasets with row-level security.
    fn rls_datasets(&self, tenant_key: &str) -> Vec<String> {
        self.powerbi()
            .tenants
            .get(tenant_key)
            .map(|tenant| tenant.rls_datasets.clone())
            .unwrap_or_default()
    }

    /// Whether the tenant's report reads answer 404 for `report`.
    fn report_missing(&self, tenant_key: &str, report: &str) -> bool {
        self.powerbi()
            .tenants
            .get(tenant_key)
            .is_some_and(|tenant| {
                tenant
                    .missing_reports
                    .contains(&report.to_ascii_lowercase())
            })
    }

    fn record_embed_token(&self, tenant_key: &str, token_id: String, expires: SystemTime) {
        self.powerbi()
            .tenants
            .entry(tenant_key.to_owned())
            .or_default()
            .last_embed_token = Some((token_id, expires));
    }
}

pub(super) async fn groups(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    serve(&shared, PowerBiEndpoint::Groups, request).await
}

pub(super) async fn generate_token(
    State(shared): State<Arc<Shared>>,
    request: Request,
) -> Response {
    serve(&shared, PowerBiEndpoint::GenerateToken, request).await
}

pub(super) async fn report_in_group(
    State(shared): State<Arc<Shared>>,
    request: Request,
) -> Response {
    serve(&shared, PowerBiEndpoint::ReportInGroup, request).await
}

pub(super) async fn report(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    serve(&shared, PowerBiEndpoint::Report, request).await
}

/// Answers one request and logs it (tenant, status, error code; never a token).
async fn serve(shared: &Shared, endpoint: PowerBiEndpoint, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let mut tenant = None;
    let reply = answer_request(shared, endpoint, &parts, body, &mut tenant).await;
    let request_id = random_guid();
    tracing::debug!(
        endpoint = endpoint.label(),
        tenant = tenant.as_deref().unwrap_or("-"),
        status = reply.status.as_u16(),
        error = reply.error_code.unwrap_or("-"),
        request_id,
        "simulated Power BI request"
    );
    reply.into_response(&request_id)
}

/// The checks in order: method, body size, bearer token, the tenant's behaviour, then the
/// request itself. `tenant` is set once the token has named one.
async fn answer_request(
    shared: &Shared,
    endpoint: PowerBiEndpoint,
    parts: &Parts,
    body: Body,
    tenant: &mut Option<String>,
) -> Reply {
    if parts.method != endpoint.method() {
        return Reply::method_not_allowed(endpoint.method());
    }
    let body = match endpoint {
        PowerBiEndpoint::GenerateToken => match read_capped(body).await {
            Some(bytes) => Some(bytes),
            None => return Reply::too_large(),
        },
        PowerBiEndpoint::Groups
        | PowerBiEndpoint::ReportInGroup
        | PowerBiEndpoint::Report
        | PowerBiEndpoint::FabricWorkspaces => None,
    };
    let caller = match authenticate(shared, &parts.headers) {
        Ok(caller) => caller,
        Err(refusal) => return refusal,
    };
    *tenant = Some(caller.tenant.clone());
    let parsed = body.and_then(|bytes| serde_json::from_slice::<Value>(&bytes).ok());
    let behavior = shared.admit_powerbi(&caller.tenant_key, endpoint, parsed.clone());
    match behavior {
        PowerBiBehavior::Ok => {}
        PowerBiBehavior::NotAuthorized => return Reply::not_authorized(),
        PowerBiBehavior::TokenExpired => return Reply::token_expired(),
        PowerBiBehavior::NotFound => return Reply::not_found(),
        PowerBiBehavior::Throttled { retry_after_secs } => {
            return Reply::throttled(retry_after_secs);
        }
        PowerBiBehavior::ServerError => return Reply::server_error(),
    }
    match endpoint {
        PowerBiEndpoint::Groups => list_groups(shared, &caller, parts.uri.query()),
        PowerBiEndpoint::GenerateToken => {
            issue_embed_token(shared, &caller, &parts.headers, parsed)
        }
        PowerBiEndpoint::ReportInGroup | PowerBiEndpoint::Report => {
            get_report(shared, &caller, parts.uri.path())
        }
        // Fabric's endpoint has a handler of its own (`fabric.rs`) and is not routed here.
        PowerBiEndpoint::FabricWorkspaces => Reply::not_found(),
    }
}

/// Reads at most [`MAX_REQUEST_BODY`] bytes; `None` when the body is longer or the client
/// broke off. A longer body is drained up to [`DRAIN_LIMIT`] so the client hears the 413.
async fn read_capped(body: Body) -> Option<Vec<u8>> {
    let mut stream = body.into_data_stream();
    let mut bytes = Vec::new();
    let mut seen: usize = 0;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.ok()?;
        seen = seen.saturating_add(chunk.len());
        if seen <= MAX_REQUEST_BODY {
            bytes.extend_from_slice(&chunk);
        } else if seen > DRAIN_LIMIT {
            return None;
        }
    }
    (seen <= MAX_REQUEST_BODY).then_some(bytes)
}

/// Who is calling, from a bearer token that verified.
pub(super) struct Caller {
    /// The `tid` claim as issued.
    pub(super) tenant: String,
    /// The same in lower case: the key of the tenant's behaviour and records.
    pub(super) tenant_key: String,
    /// The token's `exp`, seconds since the Unix epoch; embed tokens end no later.
    expires_at: u64,
}

/// Why a bearer token was refused; each API answers it in its own words.
pub(super) enum Refusal {
    /// Missing, not a bearer, not signed by this simulator, for another audience, or without a
    /// tenant.
    Invalid,
    /// Valid but past its `exp`.
    Expired,
}

/// The bearer token's checks: signed by this simulator, not expired, for `audience` (`None`:
/// an API that does not exist in the simulated cloud, which no token is for), naming a tenant.
/// Expiry is checked before the audience, as token validators usually do, so an expired token
/// for the wrong cloud is refused as expired.
pub(super) fn verify_bearer(
    shared: &Shared,
    headers: &HeaderMap,
    audience: Option<&str>,
) -> Result<Caller, Refusal> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| {
            let (scheme, token) = value.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        })
        .ok_or(Refusal::Invalid)?;
    let claims = verify(&shared.token_key, token).ok_or(Refusal::Invalid)?;
    let expires_at = claims
        .get("exp")
        .and_then(Value::as_u64)
        .ok_or(Refusal::Invalid)?;
    if expires_at <= now_secs() {
        return Err(Refusal::Expired);
    }
    if audience.is_none() || claims.get("aud").and_then(Value::as_str) != audience {
        return Err(Refusal::Invalid);
    }
    let tenant = claims
        .get("tid")
        .and_then(Value::as_str)
        .filter(|tenant| !tenant.is_empty())
        .ok_or(Refusal::Invalid)?;
    Ok(Caller {
        tenant: tenant.to_owned(),
        tenant_key: tenant_key(tenant),
        expires_at,
    })
}

/// [`verify_bearer`] for this cloud's Power BI resource, refused as Power BI refuses: 401
/// `PowerBINotAuthorizedException`, 403 `TokenExpired` for an expired token.
fn authenticate(shared: &Shared, headers: &HeaderMap) -> Result<Caller, Reply> {
    let audience = shared.powerbi().cloud.power_bi_resource();
    verify_bearer(shared, headers, Some(audience)).map_err(|refusal| match refusal {
        Refusal::Invalid => Reply::not_authorized(),
        Refusal::Expired => Reply::token_expired(),
    })
}

/// The workspaces of the caller's tenant, `$skip` and `$top` applied (`$filter` is accepted
/// and ignored). Ids are derived from the tenant, so they are the same on every call.
fn list_groups(shared: &Shared, caller: &Caller, query: Option<&str>) -> Reply {
    let query = parse_form(query.unwrap_or_default().as_bytes());
    let count = |name: &str| -> Result<Option<usize>, Reply> {
        match query.iter().find(|(key, _)| key == name) {
            None => Ok(None),
            Some((_, value)) => value
                .trim()
                .parse::<u64>()
                .map(|count| Some(usize::try_from(count).unwrap_or(usize::MAX)))
                .map_err(|_| Reply::invalid_request(format!("Invalid value for {name}."))),
        }
    };
    let (top, skip) = match (count("$top"), count("$skip")) {
        (Ok(top), Ok(skip)) => (top.unwrap_or(usize::MAX), skip.unwrap_or(0)),
        (Err(refusal), _) | (_, Err(refusal)) => return refusal,
    };
    let capacity = stable_guid(&["capacity", &caller.tenant_key]);
    let workspaces: Vec<Value> = WORKSPACE_NAMES
        .iter()
        .skip(skip)
        .take(top)
        .map(|name| {
            json!({
                "id": stable_guid(&["workspace", &caller.tenant_key, name]),
                "isReadOnly": false,
                "isOnDedicatedCapacity": true,
                "capacityId": capacity,
                "defaultDatasetStorageFormat": "Small",
                "name": name,
            })
        })
        .collect();
    Reply::ok(json!({
        "@odata.context": format!("{}/v1.0/myorg/$metadata#groups", shared.authority_host),
        "value": workspaces,
    }))
}

/// A report of Get Report In Group (`path` names the workspace) or Get Report (My workspace):
/// every GUID is one, unless marked missing.
fn get_report(shared: &Shared, caller: &Caller, path: &str) -> Reply {
    let segments: Vec<&str> = path.trim_start_matches("/v1.0/myorg/").split('/').collect();
    let (workspace, report) = match segments.as_slice() {
        ["groups", workspace, "reports", report] => (Some(*workspace), *report),
        ["reports", report] => (None, *report),
        _ => return Reply::not_found(),
    };
    if !is_guid(report) || !workspace.is_none_or(is_guid) {
        return Reply::invalid_request("The report and workspace ids must be GUIDs.");
    }
    if shared.report_missing(&caller.tenant_key, report) {
        return Reply::not_found();
    }
    Reply::ok(report_body(
        &shared.authority_host,
        &caller.tenant_key,
        workspace.map(str::to_ascii_lowercase).as_deref(),
        &report.to_ascii_lowercase(),
    ))
}

/// The Report a read answers with, on the simulator's `host`.
fn report_body(host: &str, tenant_key: &str, workspace: Option<&str>, report: &str) -> Value {
    let cluster = json!({ "clusterUrl": host }).to_string();
    let config = STANDARD
        .encode(cluster)
        .replace('+', "%2b")
        .replace('/', "%2f")
        .replace('=', "%3d");
    let (context, web_url, embed_url) = match workspace {
        Some(workspace) => (
            format!("{host}/v1.0/myorg/groups/{workspace}/$metadata#reports/$entity"),
            format!("{host}/groups/{workspace}/reports/{report}"),
            format!("{host}/reportEmbed?reportId={report}&groupId={workspace}&w=2&config={config}"),
        ),
        None => (
            format!("{host}/v1.0/myorg/$metadata#reports/$entity"),
            format!("{host}/groups/me/reports/{report}"),
            format!("{host}/reportEmbed?reportId={report}&w=2&config={config}"),
        ),
    };
    let mut body = json!({
        "@odata.context": context,
        "id": report,
        "reportType": "PowerBIReport",
        "name": format!("Report {}", report.get(..8).unwrap_or(report)),
        "webUrl": web_url,
        "embedUrl": embed_url,
        "isFromPbix": true,
        "isOwnedByMe": true,
        "datasetId": stable_guid(&["dataset", tenant_key, report]),
        "users": [],
        "subscriptions": [],
    });
    if let Some(workspace) = workspace {
        body["datasetWorkspaceId"] = json!(workspace);
    }
    body
}

/// A version-4 GUID derived from `parts`, the same for the same parts.
pub(super) fn stable_guid(parts: &[&str]) -> String {
    let hash = digest::digest(&digest::SHA256, parts.join("\n").as_bytes());
    let mut bits = [0u8; 16];
    // SHA-256 is 32 bytes long, so the first 16 always exist.
    bits.copy_from_slice(&hash.as_ref()[..16]);
    format_guid(u128::from_be_bytes(bits))
}

/// A V2 embed token for a valid request: JSON content type, a body [`validate_generate_token`]
/// accepts; its expiry capped by the bearer token, `lifetimeInMinutes` and an hour.
fn issue_embed_token(
    shared: &Shared,
    caller: &Caller,
    headers: &HeaderMap,
    body: Option<Value>,
) -> Reply {
    if !is_json(headers) {
        return Reply::unsupported_media_type();
    }
    let Some(body) = body else {
        return Reply::invalid_request("The request body is not valid JSON.");
    };
    let lifetime_minutes = match validate_generate_token(&body) {
        Ok(minutes) => minutes,
        Err(message) => return Reply::invalid_request(message),
    };
    if let Err(message) = check_identities(&body, &shared.rls_datasets(&caller.tenant_key)) {
        return Reply::invalid_request(message);
    }
    if let Err(message) = check_datasource_identities(&body) {
        return Reply::invalid_request(message);
    }
    let now = now_secs();
    let mut expires_at = caller
        .expires_at
        .min(now.saturating_add(DEFAULT_EMBED_LIFETIME_SECS));
    if lifetime_minutes > 0 {
        expires_at = expires_at.min(now.saturating_add(lifetime_minutes.saturating_mul(60)));
    }
    // Both exist: `expires_at` is at most an hour from now.
    let (Some(expiration), Some(expires)) = (
        iso_8601(expires_at),
        UNIX_EPOCH.checked_add(Duration::from_secs(expires_at)),
    ) else {
        return Reply::server_error();
    };
    let token_id = random_guid();
    let token = embed_token(shared.serial.fetch_add(1, Ordering::Relaxed));
    shared.record_embed_token(&caller.tenant_key, token_id.clone(), expires);
    Reply::ok(json!({
        "@odata.context": format!(
            "{}/v1.0/myorg/$metadata#Microsoft.PowerBI.ServiceContracts.Api.V1.EmbedToken",
            shared.authority_host
        ),
        "token": token,
        "tokenId": token_id,
        "expiration": expiration,
    }))
}

/// Whether the request says its body is JSON (`application/json`, any parameters).
fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/json"))
}

/// The GenerateToken (V2) request rules of reference §8.3: a JSON object naming at least one
/// report or dataset, at most [`MAX_ITEMS`] of each kind, every id a GUID, `allowEdit` a
/// boolean, `identities` and `datasourceIdentities` arrays (their entries are checked by
/// [`check_identities`] and [`check_datasource_identities`]), and
/// `lifetimeInMinutes` a whole number of zero or more. Returns `lifetimeInMinutes` (0: not
/// given), or the message of the 400.
fn validate_generate_token(body: &Value) -> Result<u64, String> {
    let Some(fields) = body.as_object() else {
        return Err("The request body must be a JSON object.".to_owned());
    };
    let datasets = item_list(fields, "datasets")?;
    let reports = item_list(fields, "reports")?;
    item_list(fields, "targetWorkspaces")?;
    if datasets.is_empty() && reports.is_empty() {
        return Err("At least one report or dataset must be given.".to_owned());
    }
    if datasets.iter().any(|dataset| {
        !matches!(
            dataset.get("xmlaPermissions").and_then(Value::as_str),
            None | Some("Off" | "ReadOnly")
        )
    }) {
        return Err("xmlaPermissions must be Off or ReadOnly.".to_owned());
    }
    if reports.iter().any(|report| {
        !matches!(
            report.get("allowEdit"),
            None | Some(Value::Null | Value::Bool(_))
        )
    }) {
        return Err("allowEdit must be true or false.".to_owned());
    }
    for name in ["identities", "datasourceIdentities"] {
        if !matches!(fields.get(name), None | Some(Value::Null | Value::Array(_))) {
            return Err(format!("{name} must be an array."));
        }
    }
    match fields.get("lifetimeInMinutes") {
        None | Some(Value::Null) => Ok(0),
        Some(minutes) => minutes
            .as_u64()
            .ok_or_else(|| "lifetimeInMinutes must be a whole number, 0 or more.".to_owned()),
    }
}

/// Row-level security as Power BI enforces it for a service principal: every `identities`
/// entry has a `username` and names `datasets`; a dataset with RLS (`rls`) needs an identity
/// and any other dataset must not have one. Returns the message of the 400.
fn check_identities(body: &Value, rls: &[String]) -> Result<(), String> {
    let identities = body
        .get("identities")
        .and_then(Value::as_array)
        .map_or(&[][..], Vec::as_slice);
    let mut covered = Vec::new();
    for identity in identities {
        if identity
            .get("username")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
        {
            return Err("Effective identity must have a username.".to_owned());
        }
        let Some(datasets) = identity.get("datasets").and_then(Value::as_array) else {
            return Err("Effective identity must specify datasets.".to_owned());
        };
        for dataset in datasets {
            let Some(id) = dataset.as_str() else {
                return Err("Effective identity datasets must be dataset ids.".to_owned());
            };
            covered.push(id.to_ascii_lowercase());
        }
    }
    let requested = body
        .get("datasets")
        .and_then(Value::as_array)
        .map_or(&[][..], Vec::as_slice)
        .iter()
        .filter_map(|dataset| dataset.get("id").and_then(Value::as_str));
    for id in requested {
        let id = id.to_ascii_lowercase();
        match (rls.contains(&id), covered.contains(&id)) {
            (true, false) => {
                return Err(format!(
                    "Creating embed token for accessing dataset {id} requires effective identity to be provided"
                ));
            }
            (false, true) => {
                return Err(format!(
                    "Creating embed token for accessing dataset {id} shouldn't have effective identity"
                ));
            }
            _ => {}
        }
    }
    Ok(())
}

/// Single sign-on identities as the GenerateToken reference describes `DatasourceIdentity`:
/// each has an `identityBlob`, a non-empty string Power BI takes up to [`MAX_IDENTITY_BLOB`]
/// bytes of, and `datasources`, a non-empty array of `DatasourceSelector`s, each with a
/// `datasourceType` string and a `connectionDetails` object naming at least one detail. The
/// blob itself is not checked (the data source would be). Returns the message of the 400;
/// the texts other than the size limit's are not documented and follow Power BI's style.
fn check_datasource_identities(body: &Value) -> Result<(), String> {
    let identities = body
        .get("datasourceIdentities")
        .and_then(Value::as_array)
        .map_or(&[][..], Vec::as_slice);
    for identity in identities {
        let blob = identity.get("identityBlob").and_then(Value::as_str);
        match blob {
            None | Some("") => {
                return Err("Datasource identity must have an identityBlob.".to_owned());
            }
            Some(blob) if blob.len() > MAX_IDENTITY_BLOB => {
                return Err(format!(
                    "Identity blob value size exceeds size limit of {MAX_IDENTITY_BLOB} bytes"
                ));
            }
            Some(_) => {}
        }
        let datasources = identity
            .get("datasources")
            .and_then(Value::as_array)
            .filter(|datasources| !datasources.is_empty())
            .ok_or_else(|| "Datasource identity must specify datasources.".to_owned())?;
        for datasource in datasources {
            let typed = datasource
                .get("datasourceType")
                .and_then(Value::as_str)
                .is_some_and(|kind| !kind.is_empty());
            let detailed = datasource
                .get("connectionDetails")
                .and_then(Value::as_object)
                .is_some_and(|details| {
                    !details.is_empty() && details.values().all(Value::is_string)
                });
            if !typed || !detailed {
                return Err(
                    "Every datasource needs a datasourceType and connectionDetails.".to_owned(),
                );
            }
        }
    }
    Ok(())
}

/// The items of one list field (absent or `null`: none), each an object whose `id` is a GUID.
fn item_list<'a>(fields: &'a Map<String, Value>, name: &str) -> Result<&'a [Value], String> {
    let items = match fields.get(name) {
        None | Some(Value::Null) => return Ok(&[]),
        Some(Value::Array(items)) => items,
        Some(_) => return Err(format!("{name} must be an array.")),
    };
    if items.len() > MAX_ITEMS {
        return Err(format!("At most {MAX_ITEMS} {name} may be given."));
    }
    if !items
        .iter()
        .all(|item| item.get("id").and_then(Value::as_str).is_some_and(is_guid))
    {
        return Err(format!("Every entry of {name} needs an id that is a GUID."));
    }
    Ok(items)
}

/// An opaque embed token, unique by the issue serial: a gzip header, as real embed tokens are
/// base64 of gzip data (so they begin `H4sI`), then the serial and random bytes.
fn embed_token(serial: u64) -> String {
    const GZIP_HEADER: [u8; 10] = [0x1f, 0x8b, 0x08, 0, 0, 0, 0, 0, 0x04, 0];
    let mut bytes = vec![0u8; GZIP_HEADER.len() + 8 + 600];
    bytes[..GZIP_HEADER.len()].copy_from_slice(&GZIP_HEADER);
    bytes[GZIP_HEADER.len()..GZIP_HEADER.len() + 8].copy_from_slice(&serial.to_be_bytes());
    fastrand::fill(&mut bytes[GZIP_HEADER.len() + 8..]);
    STANDARD.encode(bytes)
}

/// `2026-01-01T01:00:00Z`; `None` past the year 262143.
fn iso_8601(unix_secs: u64) -> Option<String> {
    let when = chrono::DateTime::from_timestamp(i64::try_from(unix_secs).ok()?, 0)?;
    Some(when.format("%Y-%m-%dT%H:%M:%SZ").to_string())
}

fn now_secs() -> u64 {
    u64::try_from(unix_now()).unwrap_or(0)
}

/// An answer before the headers every Power BI response shares are added (Fabric's answers,
/// from the same front end, share them too).
pub(super) struct Reply {
    /// The HTTP status.
    pub(super) status: StatusCode,
    /// The JSON body.
    body: Value,
    /// The error code of a refusal, repeated in `X-PowerBI-Error-Info` (Fabric:
    /// `x-ms-public-api-error-code`); `None` for success.
    pub(super) error_code: Option<&'static str>,
    /// `Retry-After` of a throttled answer, `Allow` of a wrong method.
    pub(super) extra: Option<(HeaderName, HeaderValue)>,
}

impl Reply {
    pub(super) fn ok(body: Value) -> Reply {
        Reply {
            status: StatusCode::OK,
            body,
            error_code: None,
            extra: None,
        }
    }

    pub(super) fn error(status: StatusCode, code: &'static str, body: Value) -> Reply {
        Reply {
            status,
            body,
            error_code: Some(code),
            extra: None,
        }
    }

    /// `{"error":{"code":…,"message":…}}`, the shape of Power BI's errors without `pbi.error`.
    fn with_message(status: StatusCode, code: &'static str, message: &str) -> Reply {
        let body = json!({ "error": { "code": code, "message": message } });
        Reply::error(status, code, body)
    }

    /// The `pbi.error` envelope of Power BI's authorisation and lookup failures.
    fn with_pbi_error(status: StatusCode, code: &'static str) -> Reply {
        let body = json!({
            "error": {
                "code": code,
                "pbi.error": {
                    "code": code,
                    "parameters": {},
                    "details": [],
                    "exceptionCulprit": 1,
                },
            },
        });
        Reply::error(status, code, body)
    }

    fn not_authorized() -> Reply {
        Reply::with_pbi_error(StatusCode::UNAUTHORIZED, "PowerBINotAuthorizedException")
    }

    fn token_expired() -> Reply {
        Reply::with_message(
            StatusCode::FORBIDDEN,
            "TokenExpired",
            "Access token has expired, resubmit with a new access token",
        )
    }

    fn not_found() -> Reply {
        Reply::with_pbi_error(StatusCode::NOT_FOUND, "PowerBIEntityNotFound")
    }

    fn throttled(retry_after_secs: u64) -> Reply {
        let mut reply = Reply::with_message(
            StatusCode::TOO_MANY_REQUESTS,
            "TooManyRequests",
            "You have exceeded the amount of requests allowed in the current time frame and \
             further requests will fail.",
        );
        reply.extra = Some((header::RETRY_AFTER, HeaderValue::from(retry_after_secs)));
        reply
    }

    fn server_error() -> Reply {
        Reply::with_message(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalServerError",
            "An internal error occurred.",
        )
    }

    fn invalid_request(message: impl AsRef<str>) -> Reply {
        Reply::with_message(StatusCode::BAD_REQUEST, "InvalidRequest", message.as_ref())
    }

    fn too_large() -> Reply {
        Reply::with_message(
            StatusCode::PAYLOAD_TOO_LARGE,
            "RequestEntityTooLarge",
            "The request body is too large.",
        )
    }

    fn unsupported_media_type() -> Reply {
        Reply::with_message(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UnsupportedMediaType",
            "The request body must be application/json.",
        )
    }

    fn method_not_allowed(allowed: Method) -> Reply {
        let mut reply = Reply::with_message(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            "The requested resource does not support this HTTP method.",
        );
        reply.extra = HeaderValue::from_str(allowed.as_str())
            .ok()
            .map(|value| (header::ALLOW, value));
        reply
    }

    fn into_response(self, request_id: &str) -> Response {
        self.into_response_with(request_id, ERROR_INFO)
    }

    /// The response, with the shared headers, `RequestId`, and the error code in
    /// `error_header`.
    pub(super) fn into_response_with(self, request_id: &str, error_header: HeaderName) -> Response {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(JSON_CONTENT_TYPE),
        );
        headers.insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("no-store, must-revalidate, no-cache"),
        );
        headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
        headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("deny"));
        headers.insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        headers.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static("RequestId"),
        );
        // A GUID is always a valid header value.
        if let Ok(value) = HeaderValue::from_str(request_id) {
            headers.insert(REQUEST_ID, value);
        }
        if let Some(code) = self.error_code {
            headers.insert(error_header, HeaderValue::from_static(code));
        }
        if let Some((name, value)) = self.extra {
            headers.insert(name, value);
        }
        (self.status, headers, self.body.to_string()).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::super::access_token::jwt_shaped;
    use super::super::test_support::*;
    use super::super::{SimApp, SimEntra, SimTenant};
    use super::*;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    const REPORT: &str = "5b218778-0000-4b8a-9c7c-000000000004";
    const DATASET: &str = "cfafbeb1-0000-4d0c-896e-000000000003";
    const WORKSPACE: &str = "f089354e-0000-4e18-aea3-000000000005";
    const GCC_SCOPE: &str = "https://analysis.usgovcloudapi.net/powerbi/api/.default";

    async fn get_groups(fixture: &Fixture, token: &str, query: &str) -> Answer {
        let url = format!("{}/v1.0/myorg/groups{query}", fixture.sim.powerbi_api());
        answer(fixture.http.get(url).bearer_auth(token)).await
    }

    async fn post_generate(fixture: &Fixture, token: &str, body: &Value) -> Answer {
        answer(
            fixture
                .http
                .post(generate_url(&fixture.sim))
                .bearer_auth(token)
                .json(body),
        )
        .await
    }

    async fn get_report(
        fixture: &Fixture,
        token: &str,
        workspace: Option<&str>,
        report: &str,
    ) -> Answer {
        answer(
            fixture
                .http
                .get(report_url(&fixture.sim, workspace, report))
                .bearer_auth(token),
        )
        .await
    }

    fn report_url(sim: &SimEntra, workspace: Option<&str>, report: &str) -> String {
        match workspace {
            Some(workspace) => format!(
                "{}/v1.0/myorg/groups/{workspace}/reports/{report}",
                sim.powerbi_api()
            ),
            None => format!("{}/v1.0/myorg/reports/{report}", sim.powerbi_api()),
        }
    }

    fn generate_url(sim: &SimEntra) -> String {
        format!("{}/v1.0/myorg/GenerateToken", sim.powerbi_api())
    }

    fn embed_request(lifetime_in_minutes: u64) -> Value {
        json!({
            "datasets": [{ "id": DATASET }],
            "reports": [{ "id": REPORT, "allowEdit": false }],
            "targetWorkspaces": [{ "id": WORKSPACE }],
            "lifetimeInMinutes": lifetime_in_minutes,
        })
    }

    /// Checks the headers every answer carries, and the error header of a refusal.
    fn assert_powerbi_headers(answer: &Answer, error_code: Option<&str>) {
        let request_id = answer.header("requestid").expect("RequestId");
        assert!(looks_like_guid(request_id), "{request_id}");
        assert_eq!(answer.header("content-type"), Some(JSON_CONTENT_TYPE));
        assert_eq!(answer.header("x-powerbi-error-info"), error_code);
    }

    fn assert_not_authorized(answer: &Answer) {
        assert_eq!(answer.status, 401, "{}", answer.body);
        assert_powerbi_headers(answer, Some("PowerBINotAuthorizedException"));
        assert_eq!(
            answer.json(),
            json!({"error":{"code":"PowerBINotAuthorizedException","pbi.error":{
                "code":"PowerBINotAuthorizedException","parameters":{},"details":[],
                "exceptionCulprit":1}}})
        );
    }

    fn assert_token_expired(answer: &Answer) {
        assert_eq!(answer.status, 403, "{}", answer.body);
        assert_powerbi_headers(answer, Some("TokenExpired"));
        assert_eq!(
            answer.json(),
            json!({"error":{"code":"TokenExpired",
                "message":"Access token has expired, resubmit with a new access token"}})
        );
    }

    fn unix_of(expiration: &str) -> u64 {
        let parsed = chrono::NaiveDateTime::parse_from_str(expiration, "%Y-%m-%dT%H:%M:%SZ")
            .expect("ISO-8601 UTC in whole seconds");
        u64::try_from(parsed.and_utc().timestamp()).expect("after 1970")
    }

    #[tokio::test]
    async fn a_power_bi_token_lists_the_tenants_workspaces() {
        let fixture = fixture().await;
        let token = bearer(&fixture, POWER_BI_SCOPE).await;
        let answer = get_groups(&fixture, &token, "").await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        assert_powerbi_headers(&answer, None);
        assert_eq!(
            answer.header("cache-control"),
            Some("no-store, must-revalidate, no-cache")
        );
        let body = answer.json();
        assert_eq!(
            body["@odata.context"],
            format!("{}/v1.0/myorg/$metadata#groups", fixture.sim.powerbi_api())
        );
        let workspaces = body["value"].as_array().expect("value");
        assert_eq!(workspaces.len(), WORKSPACE_NAMES.len());
        for workspace in workspaces {
            assert!(looks_like_guid(workspace["id"].as_str().expect("id")));
            assert!(looks_like_guid(
                workspace["capacityId"].as_str().expect("capacityId")
            ));
            assert_eq!(workspace["isReadOnly"], false);
            assert_eq!(workspace["isOnDedicatedCapacity"], true);
            assert_eq!(workspace["defaultDatasetStorageFormat"], "Small");
            assert!(workspace["name"].is_string());
        }

        let again = get_groups(&fixture, &token, "?$filter=name%20eq%20'Sales'").await;
        assert_eq!(
            again.json()["value"],
            body["value"],
            "stable ids, filter ignored"
        );
        let top = get_groups(&fixture, &token, "?$top=1").await.json();
        assert_eq!(top["value"].as_array().map(Vec::len), Some(1));
        assert_eq!(top["value"][0], workspaces[0]);
        let page = get_groups(&fixture, &token, "?$top=5&$skip=2").await.json();
        assert_eq!(page["value"], json!([workspaces[2]]));
        let invalid = get_groups(&fixture, &token, "?$top=-1").await;
        assert_eq!(invalid.status, 400);
        assert_powerbi_headers(&invalid, Some("InvalidRequest"));

        assert_eq!(
            fixture
                .sim
                .powerbi_request_count(TENANT, PowerBiEndpoint::Groups),
            5
        );
        assert_eq!(
            fixture
                .sim
                .powerbi_request_count(TENANT, PowerBiEndpoint::GenerateToken),
            0
        );
    }

    #[tokio::test]
    async fn each_behavior_answers_every_endpoint_with_its_status_body_and_headers() {
        let fixture = fixture().await;
        let token = bearer(&fixture, POWER_BI_SCOPE).await;
        let cases: [(PowerBiBehavior, u16, &str); 5] = [
            (
                PowerBiBehavior::NotAuthorized,
                401,
                "PowerBINotAuthorizedException",
            ),
            (PowerBiBehavior::TokenExpired, 403, "TokenExpired"),
            (PowerBiBehavior::NotFound, 404, "PowerBIEntityNotFound"),
            (
                PowerBiBehavior::Throttled {
                    retry_after_secs: 7,
                },
                429,
                "TooManyRequests",
            ),
            (PowerBiBehavior::ServerError, 500, "InternalServerError"),
        ];
        for (behavior, status, code) in cases {
            fixture.sim.set_powerbi_behavior(TENANT, behavior);
            let answers = [
                get_groups(&fixture, &token, "").await,
                post_generate(&fixture, &token, &embed_request(0)).await,
                get_report(&fixture, &token, Some(WORKSPACE), REPORT).await,
                get_report(&fixture, &token, None, REPORT).await,
            ];
            for answer in &answers {
                assert_eq!(answer.status, status, "{behavior:?}: {}", answer.body);
                assert_powerbi_headers(answer, Some(code));
                let body = answer.json();
                assert_eq!(body["error"]["code"], code);
                let retry_after = answer.header("retry-after");
                match behavior {
                    PowerBiBehavior::Throttled { .. } => {
                        assert_eq!(retry_after, Some("7"));
                        assert_eq!(
                            body["error"]["message"],
                            "You have exceeded the amount of requests allowed in the current \
                             time frame and further requests will fail."
                        );
                    }
                    _ => assert_eq!(retry_after, None),
                }
                match behavior {
                    PowerBiBehavior::NotAuthorized => assert_not_authorized(answer),
                    PowerBiBehavior::TokenExpired => assert_token_expired(answer),
                    PowerBiBehavior::NotFound => assert_eq!(
                        body["error"]["pbi.error"],
                        json!({"code":"PowerBIEntityNotFound","parameters":{},"details":[],
                            "exceptionCulprit":1})
                    ),
                    _ => {}
                }
            }
        }
        assert!(fixture.sim.last_embed_token(TENANT).is_none());
        fixture
            .sim
            .set_powerbi_behavior(TENANT, PowerBiBehavior::Ok);
        assert_eq!(get_groups(&fixture, &token, "").await.status, 200);
        // The behaviour belongs to the tenant named by `tid`, matched case-insensitively.
        fixture
            .sim
            .set_powerbi_behavior(&TENANT.to_ascii_uppercase(), PowerBiBehavior::ServerError);
        assert_eq!(get_groups(&fixture, &token, "").await.status, 500);
        assert_eq!(
            fixture
                .sim
                .powerbi_request_count(TENANT, PowerBiEndpoint::Groups),
            7
        );
        assert_eq!(
            fixture
                .sim
                .powerbi_request_count(TENANT, PowerBiEndpoint::GenerateToken),
            5
        );
    }

    #[tokio::test]
    async fn every_guid_is_a_report_with_an_embed_url_in_its_workspace_or_my_workspace() {
        let fixture = fixture().await;
        let token = bearer(&fixture, POWER_BI_SCOPE).await;
        let host = fixture.sim.powerbi_api();
        // Ids are answered in lower case, as Power BI writes them.
        let answer = get_report(&fixture, &token, Some(WORKSPACE), &REPORT.to_uppercase()).await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        assert_powerbi_headers(&answer, None);
        let body = answer.json();
        assert_eq!(
            body["@odata.context"],
            format!("{host}/v1.0/myorg/groups/{WORKSPACE}/$metadata#reports/$entity")
        );
        assert_eq!(body["id"], REPORT);
        assert_eq!(body["reportType"], "PowerBIReport");
        assert!(body["name"].is_string());
        assert_eq!(
            body["webUrl"],
            format!("{host}/groups/{WORKSPACE}/reports/{REPORT}")
        );
        assert!(looks_like_guid(
            body["datasetId"].as_str().expect("datasetId")
        ));
        assert_eq!(body["datasetWorkspaceId"], WORKSPACE);
        let embed_url = body["embedUrl"].as_str().expect("embedUrl");
        let prefix =
            format!("{host}/reportEmbed?reportId={REPORT}&groupId={WORKSPACE}&w=2&config=");
        let config = embed_url.strip_prefix(&prefix).expect(embed_url);
        let decoded = STANDARD
            .decode(
                config
                    .replace("%3d", "=")
                    .replace("%2b", "+")
                    .replace("%2f", "/"),
            )
            .expect("base64");
        let cluster: Value = serde_json::from_slice(&decoded).expect("json");
        assert_eq!(cluster, json!({ "clusterUrl": host }));
        // The same report again: the same answer.
        let again = get_report(&fixture, &token, Some(WORKSPACE), REPORT)
            .await
            .json();
        assert_eq!(again, body);

        // My workspace: no group in the URLs.
        let mine = get_report(&fixture, &token, None, REPORT).await;
        assert_eq!(mine.status, 200, "{}", mine.body);
        let mine = mine.json();
        assert_eq!(
            mine["@odata.context"],
            format!("{host}/v1.0/myorg/$metadata#reports/$entity")
        );
        assert_eq!(mine["webUrl"], format!("{host}/groups/me/reports/{REPORT}"));
        let embed_url = mine["embedUrl"].as_str().expect("embedUrl");
        assert!(
            embed_url.starts_with(&format!("{host}/reportEmbed?reportId={REPORT}&w=2&config=")),
            "{embed_url}"
        );
        assert!(mine.get("datasetWorkspaceId").is_none());

        assert_eq!(requests(&fixture, PowerBiEndpoint::ReportInGroup), 2);
        assert_eq!(requests(&fixture, PowerBiEndpoint::Report), 1);
        assert_eq!(requests(&fixture, PowerBiEndpoint::Groups), 0);
    }

    #[tokio::test]
    async fn a_report_marked_missing_gets_404_and_bad_reads_are_refused() {
        let fixture = fixture().await;
        let token = bearer(&fixture, POWER_BI_SCOPE).await;
        fixture
            .sim
            .mark_report_missing(TENANT, &REPORT.to_uppercase());
        for workspace in [Some(WORKSPACE), None] {
            let answer = get_report(&fixture, &token, workspace, REPORT).await;
            assert_eq!(answer.status, 404, "{}", answer.body);
            assert_powerbi_headers(&answer, Some("PowerBIEntityNotFound"));
            assert_eq!(
                answer.json(),
                json!({"error":{"code":"PowerBIEntityNotFound","pbi.error":{
                    "code":"PowerBIEntityNotFound","parameters":{},"details":[],
                    "exceptionCulprit":1}}})
            );
        }
        // Only that report, only for that tenant.
        let other = "6c329889-0000-4b8a-9c7c-000000000007";
        assert_eq!(
            get_report(&fixture, &token, Some(WORKSPACE), other)
                .await
                .status,
            200
        );
        // Not a GUID.
        let not_guid = get_report(&fixture, &token, Some(WORKSPACE), "sales").await;
        assert_eq!(not_guid.status, 400, "{}", not_guid.body);
        assert_powerbi_headers(&not_guid, Some("InvalidRequest"));
        assert_eq!(
            get_report(&fixture, &token, Some("x"), other).await.status,
            400
        );
        // Without a valid token, or with another method.
        assert_not_authorized(&get_report(&fixture, "not-a-jwt", Some(WORKSPACE), other).await);
        assert_not_authorized(&answer_of(&fixture, None, other).await);
        let wrong_method = answer(
            fixture
                .http
                .post(report_url(&fixture.sim, None, other))
                .bearer_auth(&token),
        )
        .await;
        assert_eq!(wrong_method.status, 405);
        assert_eq!(wrong_method.header("allow"), Some("GET"));
        // Counted once the token verified: 2 missing, 1 found, 2 not GUIDs.
        assert_eq!(requests(&fixture, PowerBiEndpoint::ReportInGroup), 4);
        assert_eq!(requests(&fixture, PowerBiEndpoint::Report), 1);
    }

    /// The simulator's count of the test tenant's requests to `endpoint`.
    fn requests(fixture: &Fixture, endpoint: PowerBiEndpoint) -> u64 {
        fixture.sim.powerbi_request_count(TENANT, endpoint)
    }

    /// A report read without a bearer token.
    async fn answer_of(fixture: &Fixture, workspace: Option<&str>, report: &str) -> Answer {
        answer(
            fixture
                .http
                .get(report_url(&fixture.sim, workspace, report)),
        )
        .await
    }

    #[tokio::test]
    async fn tokens_not_signed_by_this_simulator_or_for_another_resource_get_401() {
        let fixture = fixture().await;
        let token = bearer(&fixture, POWER_BI_SCOPE).await;
        let (signing_input, signature) = token.rsplit_once('.').expect("three parts");
        let mut random = [0u8; 256];
        fastrand::fill(&mut random);
        let forged = format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(random));
        let mut tail_changed = URL_SAFE_NO_PAD.decode(signature).expect("base64url");
        if let Some(last) = tail_changed.last_mut() {
            *last ^= 1;
        }
        let tail_changed = format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(tail_changed));
        let claims = decode_claims(&token);
        let mut widened = claims.clone();
        widened["tid"] = json!("00000000-0000-4000-8000-000000000000");
        let header = signing_input.split('.').next().expect("header");
        let payload_swapped = format!(
            "{header}.{}.{signature}",
            URL_SAFE_NO_PAD.encode(widened.to_string())
        );
        let other = SimEntra::start().await.expect("second simulator");
        let foreign = jwt_shaped(&other.shared.token_key, &claims);
        let gcc = bearer(&fixture, GCC_SCOPE).await;

        for bad in [
            forged.as_str(),
            tail_changed.as_str(),
            payload_swapped.as_str(),
            foreign.as_str(),
            gcc.as_str(),
            "not-a-jwt",
            "a.b.c",
            "",
            &format!("{token}.extra"),
        ] {
            assert_not_authorized(&get_groups(&fixture, bad, "").await);
            assert_not_authorized(&post_generate(&fixture, bad, &embed_request(0)).await);
        }
        let url = format!("{}/v1.0/myorg/groups", fixture.sim.powerbi_api());
        assert_not_authorized(&answer(fixture.http.get(&url)).await);
        assert_not_authorized(
            &answer(
                fixture
                    .http
                    .get(&url)
                    .header("Authorization", format!("Basic {token}")),
            )
            .await,
        );
        // Nothing above named a tenant, so nothing was counted.
        assert_eq!(
            fixture
                .sim
                .powerbi_request_count(TENANT, PowerBiEndpoint::Groups),
            0
        );

        // The audience follows the cloud the simulator is set to.
        fixture.sim.set_powerbi_cloud(SimCloud::Gcc);
        assert_eq!(get_groups(&fixture, &gcc, "").await.status, 200);
        assert_not_authorized(&get_groups(&fixture, &token, "").await);
    }

    #[tokio::test]
    async fn managed_identity_tokens_verify_and_their_audience_is_checked() {
        let fixture = fixture().await;
        fixture.sim.set_managed_identity(host_identity());
        let mut tokens = Vec::new();
        for resource in [POWER_BI, "https://graph.microsoft.com"] {
            let answer = imds_get(
                &fixture.http,
                &fixture.sim,
                &[("api-version", "2018-02-01"), ("resource", resource)],
            )
            .await;
            assert_eq!(answer.status, 200, "{}", answer.body);
            tokens.push(
                answer.json()["access_token"]
                    .as_str()
                    .expect("token")
                    .to_owned(),
            );
        }
        let power_bi = get_groups(&fixture, &tokens[0], "").await;
        assert_eq!(power_bi.status, 200, "{}", power_bi.body);
        assert_not_authorized(&get_groups(&fixture, &tokens[1], "").await);
        let tenant = decode_claims(&tokens[0])["tid"]
            .as_str()
            .expect("tid")
            .to_owned();
        assert_eq!(
            fixture
                .sim
                .powerbi_request_count(&tenant, PowerBiEndpoint::Groups),
            1
        );
    }

    #[tokio::test]
    async fn an_expired_token_gets_403_token_expired() {
        let fixture = fixture().await;
        // A tenant whose tokens expire the second they are issued: expired at once, no waiting.
        fixture.sim.add_tenant(
            TENANT,
            SimTenant::new(SimApp::new(APP, SECRET), Duration::ZERO),
        );
        let token = bearer(&fixture, POWER_BI_SCOPE).await;
        assert_token_expired(&get_groups(&fixture, &token, "").await);
        assert_token_expired(&post_generate(&fixture, &token, &embed_request(0)).await);

        // Expiry is checked before the audience: an old token for another cloud gets 403 too.
        let mut claims = decode_claims(&bearer(&fixture, GCC_SCOPE).await);
        claims["exp"] = json!(1_600_000_000_u64);
        let old = jwt_shaped(&fixture.sim.shared.token_key, &claims);
        assert_token_expired(&get_groups(&fixture, &old, "").await);
    }

    #[tokio::test]
    async fn generate_token_records_the_request_and_caps_the_expiration() {
        let fixture = fixture().await;
        // Bearer tokens that live ten minutes: shorter than the embed token's default hour.
        fixture.sim.add_tenant(
            TENANT,
            SimTenant::new(SimApp::new(APP, SECRET), Duration::from_secs(600)),
        );
        let token = bearer(&fixture, POWER_BI_SCOPE).await;
        let bearer_exp = decode_claims(&token)["exp"].as_u64().expect("exp");

        let request = embed_request(0);
        let first = post_generate(&fixture, &token, &request).await;
        assert_eq!(first.status, 200, "{}", first.body);
        assert_powerbi_headers(&first, None);
        let body = first.json();
        assert_eq!(
            body["@odata.context"],
            format!(
                "{}/v1.0/myorg/$metadata#Microsoft.PowerBI.ServiceContracts.Api.V1.EmbedToken",
                fixture.sim.powerbi_api()
            )
        );
        let embed = body["token"].as_str().expect("token");
        assert!(embed.starts_with("H4sI"), "{embed}");
        let token_id = body["tokenId"].as_str().expect("tokenId");
        assert!(looks_like_guid(token_id));
        let expiration = body["expiration"].as_str().expect("expiration");
        assert_eq!(
            unix_of(expiration),
            bearer_exp,
            "capped by the bearer token"
        );
        assert_eq!(
            fixture.sim.last_embed_token(TENANT),
            Some((
                token_id.to_owned(),
                UNIX_EPOCH + Duration::from_secs(bearer_exp)
            ))
        );
        assert_eq!(
            fixture.sim.last_generate_token_request(TENANT),
            Some(request)
        );

        let before = now_secs();
        let short = post_generate(&fixture, &token, &embed_request(5))
            .await
            .json();
        let after = now_secs();
        let expires = unix_of(short["expiration"].as_str().expect("expiration"));
        assert!((before + 300..=after + 300).contains(&expires), "{short}");
        assert_ne!(short["token"], body["token"], "unique per call");
        assert_ne!(short["tokenId"], body["tokenId"]);

        // `lifetimeInMinutes` only shortens; a huge one leaves the bearer's cap.
        let huge = post_generate(
            &fixture,
            &token,
            &json!({"reports":[{"id":REPORT}],
            "lifetimeInMinutes": u64::MAX}),
        )
        .await
        .json();
        assert_eq!(
            unix_of(huge["expiration"].as_str().expect("expiration")),
            bearer_exp
        );

        // With a bearer token that outlives it, the default hour applies.
        fixture.sim.add_tenant(
            TENANT,
            SimTenant::new(SimApp::new(APP, SECRET), Duration::from_secs(7200)),
        );
        let long_lived = bearer(&fixture, POWER_BI_SCOPE).await;
        let before = now_secs();
        let default = post_generate(&fixture, &long_lived, &json!({"datasets":[{"id":DATASET}]}))
            .await
            .json();
        let after = now_secs();
        let expires = unix_of(default["expiration"].as_str().expect("expiration"));
        assert!(
            (before + 3600..=after + 3600).contains(&expires),
            "{default}"
        );
        assert_eq!(
            fixture
                .sim
                .powerbi_request_count(TENANT, PowerBiEndpoint::GenerateToken),
            4
        );
    }

    #[tokio::test]
    async fn generate_token_refuses_invalid_and_oversized_requests() {
        let fixture = fixture().await;
        let token = bearer(&fixture, POWER_BI_SCOPE).await;
        let many: Vec<Value> = (0..51).map(|_| json!({ "id": REPORT })).collect();
        let invalid = [
            json!([]),
            json!("reports"),
            json!({}),
            json!({"targetWorkspaces":[{"id":WORKSPACE}]}),
            json!({"reports":[]}),
            json!({"reports": many}),
            json!({"reports":{"id":REPORT}}),
            json!({"reports":[{"id":"not-a-guid"}]}),
            json!({"reports":[{}]}),
            json!({"datasets":[{"id":42}]}),
            json!({"reports":[{"id":REPORT}],"targetWorkspaces":[{"id":"x"}]}),
            json!({"reports":[{"id":REPORT,"allowEdit":"yes"}]}),
            json!({"reports":[{"id":REPORT}],"identities":{}}),
            json!({"reports":[{"id":REPORT}],"lifetimeInMinutes":-1}),
            json!({"reports":[{"id":REPORT}],"lifetimeInMinutes":2.5}),
            json!({"reports":[{"id":REPORT}],"lifetimeInMinutes":"30"}),
        ];
        for body in &invalid {
            let answer = post_generate(&fixture, &token, body).await;
            assert_eq!(answer.status, 400, "{body}: {}", answer.body);
            assert_powerbi_headers(&answer, Some("InvalidRequest"));
            assert_eq!(answer.json()["error"]["code"], "InvalidRequest");
            assert!(answer.json()["error"]["message"].is_string());
        }
        // A refused body is still recorded: it is what the daemon sent.
        assert_eq!(
            fixture.sim.last_generate_token_request(TENANT).as_ref(),
            invalid.last()
        );

        let url = generate_url(&fixture.sim);
        let not_json = answer(
            fixture
                .http
                .post(&url)
                .bearer_auth(&token)
                .header("Content-Type", "application/json")
                .body("{\"reports\":"),
        )
        .await;
        assert_eq!(not_json.status, 400);
        let wrong_type = answer(
            fixture
                .http
                .post(&url)
                .bearer_auth(&token)
                .header("Content-Type", "text/plain")
                .body(embed_request(0).to_string()),
        )
        .await;
        assert_eq!(wrong_type.status, 415);
        assert_powerbi_headers(&wrong_type, Some("UnsupportedMediaType"));

        let oversized = json!({
            "reports": [{ "id": REPORT }],
            "identities": [{ "username": "x".repeat(MAX_REQUEST_BODY) }],
        });
        let too_large = post_generate(&fixture, &token, &oversized).await;
        assert_eq!(too_large.status, 413, "{}", too_large.body);
        assert_powerbi_headers(&too_large, Some("RequestEntityTooLarge"));

        let wrong_method = answer(fixture.http.get(&url).bearer_auth(&token)).await;
        assert_eq!(wrong_method.status, 405);
        assert_eq!(wrong_method.header("allow"), Some("POST"));
        assert_powerbi_headers(&wrong_method, Some("MethodNotAllowed"));

        assert!(fixture.sim.last_embed_token(TENANT).is_none());
        // Counted: the sixteen refused bodies, bad JSON and the wrong content type; not the
        // 413 and 405, which are answered before the token is read.
        assert_eq!(
            fixture
                .sim
                .powerbi_request_count(TENANT, PowerBiEndpoint::GenerateToken),
            18
        );
    }

    #[tokio::test]
    async fn a_dataset_with_row_level_security_needs_an_effective_identity_and_no_other_does() {
        let fixture = fixture().await;
        fixture.sim.add_tenant(
            TENANT,
            SimTenant::new(SimApp::new(APP, SECRET), Duration::from_secs(600)),
        );
        let token = bearer(&fixture, POWER_BI_SCOPE).await;
        // Without RLS, an identity is refused.
        let mut with_identity = embed_request(0);
        with_identity["identities"] = json!([{ "username": "store-17@contoso.example", "roles": ["Store"], "datasets": [DATASET] }]);
        let answer = post_generate(&fixture, &token, &with_identity).await;
        assert_eq!(answer.status, 400, "{}", answer.body);
        assert_powerbi_headers(&answer, Some("InvalidRequest"));
        assert!(
            answer.body.contains(&format!(
                "Creating embed token for accessing dataset {DATASET} shouldn't have effective identity"
            )),
            "{}",
            answer.body
        );

        fixture.sim.set_rls_datasets(TENANT, &[DATASET]);
        let answer = post_generate(&fixture, &token, &embed_request(0)).await;
        assert_eq!(answer.status, 400, "{}", answer.body);
        assert!(
            answer.body.contains(&format!(
                "Creating embed token for accessing dataset {DATASET} requires effective identity to be provided"
            )),
            "{}",
            answer.body
        );
        let answer = post_generate(&fixture, &token, &with_identity).await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        // XMLA read access per dataset: ReadOnly or Off, nothing else.
        let mut xmla = with_identity.clone();
        xmla["datasets"] = json!([{ "id": DATASET, "xmlaPermissions": "ReadOnly" }]);
        assert_eq!(post_generate(&fixture, &token, &xmla).await.status, 200);
        xmla["datasets"] = json!([{ "id": DATASET, "xmlaPermissions": "ReadWrite" }]);
        let answer = post_generate(&fixture, &token, &xmla).await;
        assert_eq!(answer.status, 400, "{}", answer.body);
        // An identity without a user name or datasets is malformed.
        for identity in [
            json!({ "username": "", "datasets": [DATASET] }),
            json!({ "username": "u" }),
        ] {
            let mut request = embed_request(0);
            request["identities"] = json!([identity]);
            let answer = post_generate(&fixture, &token, &request).await;
            assert_eq!(answer.status, 400, "{identity}: {}", answer.body);
        }
    }

    #[tokio::test]
    async fn datasource_identities_need_a_blob_and_typed_datasources_with_details() {
        let fixture = fixture().await;
        let token = bearer(&fixture, POWER_BI_SCOPE).await;
        let sql = json!({
            "datasourceType": "Sql",
            "connectionDetails": {
                "server": "contoso.database.windows.net",
                "database": "sales",
            },
        });
        let with = |identity: Value| {
            let mut request = embed_request(0);
            request["datasourceIdentities"] = json!([identity]);
            request
        };
        let good = with(json!({ "identityBlob": "eyJ0eXAi.eyJhdWQi.c2ln", "datasources": [sql] }));
        let answer = post_generate(&fixture, &token, &good).await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        // The largest blob Power BI takes passes; one byte more does not.
        let largest =
            with(json!({ "identityBlob": "b".repeat(MAX_IDENTITY_BLOB), "datasources": [sql] }));
        assert_eq!(post_generate(&fixture, &token, &largest).await.status, 200);
        let too_large = with(json!({
            "identityBlob": "b".repeat(MAX_IDENTITY_BLOB + 1),
            "datasources": [sql],
        }));
        let answer = post_generate(&fixture, &token, &too_large).await;
        assert_eq!(answer.status, 400, "{}", answer.body);
        assert_powerbi_headers(&answer, Some("InvalidRequest"));
        assert_eq!(
            answer.json()["error"]["message"],
            "Identity blob value size exceeds size limit of 10240 bytes"
        );
        for identity in [
            json!({ "datasources": [sql] }),
            json!({ "identityBlob": "", "datasources": [sql] }),
            json!({ "identityBlob": 42, "datasources": [sql] }),
            json!({ "identityBlob": "blob" }),
            json!({ "identityBlob": "blob", "datasources": [] }),
            json!({ "identityBlob": "blob", "datasources": {} }),
            json!({ "identityBlob": "blob", "datasources": [{ "connectionDetails": { "server": "s" } }] }),
            json!({ "identityBlob": "blob", "datasources": [{ "datasourceType": "Sql" }] }),
            json!({ "identityBlob": "blob", "datasources": [{ "datasourceType": "Sql", "connectionDetails": {} }] }),
            json!({ "identityBlob": "blob", "datasources": [{ "datasourceType": "", "connectionDetails": { "server": "s" } }] }),
            json!({ "identityBlob": "blob", "datasources": [{ "datasourceType": "Sql", "connectionDetails": { "server": 1 } }] }),
            json!("blob"),
        ] {
            let answer = post_generate(&fixture, &token, &with(identity.clone())).await;
            assert_eq!(answer.status, 400, "{identity}: {}", answer.body);
            assert_powerbi_headers(&answer, Some("InvalidRequest"));
            assert!(answer.json()["error"]["message"].is_string());
        }
    }
}
