//! Embed tokens: Power BI's `GenerateToken` (the multi-resource V2 API) for a configured set of
//! reports and datasets, made with the tenant's fresh Entra token and written to sinks like the
//! access token.
//!
//! An embed token never outlives the Entra token it was made with (Power BI caps it at the
//! Entra token's remaining life), so it is made again after every Entra refresh, and when it
//! reaches the tenant's `refresh_at` fraction of its own life. Its file holds
//! `{"token", "token_id", "expiration", "expires_on", "issued_on", "tenant", "embed", "reports",
//! "datasets", "access_level", "target_workspaces", "xmla_permissions", "identities",
//! "datasource_identities"}`; the identity fields let a warm start (and another replica of a
//! fleet) reuse only a token made for the same tenant, embed, items, target workspaces, XMLA
//! permission, effective identities (row-level security) and single sign-on data sources.
//! `embed_urls.rs` adds `"workspace"`, `"embed_urls"` and `"embed_urls_read_at"`, the reports'
//! embed URLs.
//!
//! A datasource identity's blob (an OAuth token for the data source) is a secret: it is read
//! from its source for every embed token made ([`read_blobs`]), since whoever obtains it
//! replaces it before it expires; it goes into the request body and nowhere else. The token
//! file records only the data sources it was for, and a server that echoes a blob back has it
//! cut from the failure's message like the access token.

use std::time::{Duration, SystemTime};

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use super::answer::{classify, unanswered};
use super::embed_urls::EmbedUrls;
use crate::client::TokenClient;
use crate::clock;
use crate::config::{
    AccessLevel, DatasourceSelector, EmbedConfig, FileFormat, SecretSource, TenantConfig,
};
use crate::credential::key_vault::KeyVault;
use crate::credential::read_secret;
use crate::error::{Reason, RefreshError};
use crate::token::AccessToken;

/// The longest embed token accepted: real ones are a few kilobytes.
const MAX_EMBED_TOKEN: usize = 64 * 1024;

/// The longest identity blob Power BI takes: it refuses a longer one with "Identity blob value
/// size exceeds size limit of 10240 bytes".
const MAX_IDENTITY_BLOB: usize = 10240;

/// An embed token and when it stops working.
#[derive(Clone, Debug)]
pub struct EmbedToken {
    /// The token; `Debug` prints `[REDACTED]`.
    pub secret: SecretString,
    /// Power BI's `tokenId`: shown in logs and `/status` to tell tokens apart.
    pub token_id: String,
    /// Unix seconds it expires: Power BI's `expiration`, never later than the Entra token's.
    pub expires_on: i64,
    /// Unix seconds it was received.
    pub issued_on: i64,
}

impl EmbedToken {
    /// When to make the next one: `refresh_at` of the way from issue to expiry.
    pub fn refresh_point(&self, refresh_at: f64) -> SystemTime {
        let life = self.expires_on.saturating_sub(self.issued_on).max(0) as f64;
        let offset = (life * refresh_at.clamp(0.0, 1.0)).round() as i64;
        clock::unix_to_system(self.issued_on.saturating_add(offset))
    }
}

impl crate::refresh::Token for EmbedToken {
    fn expires_on(&self) -> i64 {
        self.expires_on
    }
}

/// The `GenerateToken` request body for `embed`, with `blobs`, the identity blobs of its
/// datasource identities in order ([`read_blobs`]).
pub(crate) fn request_body(embed: &EmbedConfig, blobs: &[SecretString]) -> serde_json::Value {
    let allow_edit = embed.access_level != AccessLevel::View;
    let mut body = serde_json::json!({
        "reports": embed
            .reports
            .iter()
            .map(|id| serde_json::json!({ "id": id, "allowEdit": allow_edit }))
            .collect::<Vec<_>>(),
        "datasets": embed
            .datasets
            .iter()
            .map(|id| if embed.xmla_read_only {
                serde_json::json!({ "id": id, "xmlaPermissions": "ReadOnly" })
            } else {
                serde_json::json!({ "id": id })
            })
            .collect::<Vec<_>>(),
    });
    if !embed.target_workspaces.is_empty() {
        body["targetWorkspaces"] = embed
            .target_workspaces
            .iter()
            .map(|id| serde_json::json!({ "id": id }))
            .collect();
    }
    if let Some(lifetime) = embed.lifetime {
        body["lifetimeInMinutes"] = serde_json::json!(lifetime.as_secs() / 60);
    }
    if !embed.identities.is_empty() {
        body["identities"] = identities(embed);
    }
    if !embed.datasource_identities.is_empty() {
        body["datasourceIdentities"] = embed
            .datasource_identities
            .iter()
            .zip(blobs)
            .map(|(identity, blob)| {
                serde_json::json!({
                    "identityBlob": blob.expose_secret(),
                    "datasources": identity.datasources.iter().map(selector).collect::<Vec<_>>(),
                })
            })
            .collect();
    }
    body
}

/// GenerateToken's `DatasourceSelector`.
fn selector(datasource: &DatasourceSelector) -> serde_json::Value {
    let details: serde_json::Map<String, serde_json::Value> = datasource
        .connection_details
        .iter()
        .map(|(name, value)| ((*name).to_owned(), serde_json::json!(value)))
        .collect();
    serde_json::json!({
        "datasourceType": datasource.datasource_type,
        "connectionDetails": details,
    })
}

/// The data sources of each of `embed`'s datasource identities, without their blobs (an empty
/// array when it has none): what the token file records, so that a warm start reuses only a
/// token made for the same single sign-on data sources.
fn datasource_selectors(embed: &EmbedConfig) -> serde_json::Value {
    embed
        .datasource_identities
        .iter()
        .map(|identity| {
            serde_json::json!({
                "datasources": identity.datasources.iter().map(selector).collect::<Vec<_>>(),
            })
        })
        .collect()
}

/// The identity blobs of `embed`'s datasource identities, in order, read now from their
/// sources: a file, variable or systemd credential at every call, a Key Vault secret through
/// `key_vault` (cached for `[key_vault] refresh_interval`, as every Key Vault value is).
///
/// # Errors
/// A blob that cannot be read, is empty, longer than Power BI takes, or not printable ASCII (an
/// OAuth token is): reason `credential`, naming the embed and the source, never the blob.
pub(crate) async fn read_blobs(
    embed: &EmbedConfig,
    client: &TokenClient,
    key_vault: Option<&KeyVault>,
) -> Result<Vec<SecretString>, RefreshError> {
    let mut blobs = Vec::with_capacity(embed.datasource_identities.len());
    for (index, identity) in embed.datasource_identities.iter().enumerate() {
        let source = &identity.identity_blob;
        let key = format!(
            "embed {:?}: datasource_identities[{index}].identity_blob",
            embed.name
        );
        let read = match (source, key_vault) {
            (SecretSource::KeyVault(url), Some(key_vault)) => key_vault
                .secret(client, url)
                .await
                .map(|secret| secret.value),
            (source, _) => read_secret(source).await,
        };
        let blob = read.map_err(|err| {
            let mut failure = RefreshError::from(err);
            failure.message = format!("{key}: {}", failure.message);
            failure
        })?;
        if let Err(problem) = check_blob(blob.expose_secret()) {
            return Err(RefreshError::local(
                crate::error::ErrorClass::Permanent,
                Reason::Credential,
                format!("{key}: the blob in {source} {problem}"),
            ));
        }
        blobs.push(blob);
    }
    Ok(blobs)
}

/// What is wrong with a blob, in words that do not quote it; `Ok` for one Power BI takes.
fn check_blob(blob: &str) -> Result<(), String> {
    if blob.is_empty() {
        return Err("is empty".to_owned());
    }
    if blob.len() > MAX_IDENTITY_BLOB {
        return Err(format!(
            "is {} bytes long; Power BI takes at most {MAX_IDENTITY_BLOB}",
            blob.len()
        ));
    }
    if !blob.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(
            "is not printable ASCII without spaces, as an OAuth token is (is it the right file?)"
                .to_owned(),
        );
    }
    Ok(())
}

/// GenerateToken's `identities` for `embed` (an empty array when it has none): the request's
/// field, and what the token file records so that a warm start reuses only a token made for the
/// same users and roles.
fn identities(embed: &EmbedConfig) -> serde_json::Value {
    embed
        .identities
        .iter()
        .map(|identity| {
            let mut entry = serde_json::json!({
                "username": identity.username,
                "roles": identity.roles,
                "datasets": identity.datasets,
            });
            if !identity.reports.is_empty() {
                entry["reports"] = serde_json::json!(identity.reports);
            }
            if let Some(custom_data) = &identity.custom_data {
                entry["customData"] = serde_json::json!(custom_data);
            }
            entry
        })
        .collect()
}

/// `GenerateToken`'s success body.
#[derive(Deserialize)]
struct EmbedResponse {
    token: Option<String>,
    #[serde(rename = "tokenId")]
    token_id: Option<String>,
    expiration: Option<String>,
}

/// A failure of ours to read Power BI's answer, classified like the probe's `unexpected`.
fn bad_response(message: &str) -> RefreshError {
    RefreshError::api(
        Reason::Unexpected,
        Some(200),
        None,
        None,
        message.to_owned(),
        None,
    )
}

/// Parses a 200 answer at `now`; the expiry is capped at `entra_expires_on`, the Entra token's.
pub fn parse_response(
    body: &[u8],
    now: SystemTime,
    entra_expires_on: i64,
) -> Result<EmbedToken, RefreshError> {
    let response: EmbedResponse = serde_json::from_slice(body)
        .map_err(|_| bad_response("GenerateToken answered 200 without an embed token"))?;
    let token = response
        .token
        .filter(|token| {
            !token.is_empty()
                && token.len() <= MAX_EMBED_TOKEN
                && token.bytes().all(|b| b.is_ascii_graphic())
        })
        .ok_or_else(|| bad_response("GenerateToken's token is missing or malformed"))?;
    let token_id = response
        .token_id
        .filter(|id| {
            !id.is_empty()
                && id.len() <= 64
                && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
        .unwrap_or_default();
    let expiration = response
        .expiration
        .as_deref()
        .and_then(|text| chrono::DateTime::parse_from_rfc3339(text).ok())
        .map(|at| at.timestamp())
        .ok_or_else(|| bad_response("GenerateToken's expiration is missing or not a date"))?;
    let issued_on = clock::unix_seconds(now);
    let expires_on = expiration.min(entra_expires_on);
    if expires_on <= issued_on {
        return Err(bad_response(
            "GenerateToken's embed token has already expired (is this host's clock right?)",
        ));
    }
    Ok(EmbedToken {
        secret: SecretString::from(token),
        token_id,
        expires_on,
        issued_on,
    })
}

/// Makes an embed token with the tenant's Entra token and `blobs`, the identity blobs of its
/// datasource identities ([`read_blobs`]); the outcome and how long it took.
pub async fn generate(
    client: &TokenClient,
    api_root: &str,
    embed: &EmbedConfig,
    entra: &AccessToken,
    blobs: &[SecretString],
) -> (Result<EmbedToken, RefreshError>, Duration) {
    let url = format!("{api_root}/v1.0/myorg/GenerateToken");
    let started = std::time::Instant::now();
    let answer = client
        .api_post_json(&url, entra, &request_body(embed, blobs))
        .await;
    let took = started.elapsed();
    // Whatever the server sends back is cleaned of every secret the request carried.
    let secrets: Vec<&str> = std::iter::once(entra.secret.expose_secret())
        .chain(blobs.iter().map(ExposeSecret::expose_secret))
        .collect();
    let outcome = match answer {
        Ok(answer) => match classify(&answer, &secrets) {
            Ok(()) => parse_response(&answer.body, SystemTime::now(), entra.expires_on()).map_err(
                |mut failure| {
                    failure.trace_id = answer.request_id.clone();
                    failure
                },
            ),
            Err(failure) => Err(failure),
        },
        Err(err) => Err(unanswered(&err.message, &secrets)),
    };
    (outcome, took)
}

/// The json document of a token file or Redis value, with the embed URLs known (`urls`).
pub fn document(
    tenant: &TenantConfig,
    embed: &EmbedConfig,
    token: &EmbedToken,
    urls: &EmbedUrls,
) -> SecretString {
    let mut value = serde_json::json!({
        "token": token.secret.expose_secret(),
        "token_id": token.token_id,
        "expiration": clock::rfc3339_unix(token.expires_on),
        "expires_on": token.expires_on,
        "issued_on": token.issued_on,
        "tenant": tenant.name,
        "embed": embed.name,
        "reports": embed.reports,
        "datasets": embed.datasets,
        "access_level": embed.access_level.as_str(),
        "target_workspaces": embed.target_workspaces,
        "xmla_permissions": if embed.xmla_read_only { "ReadOnly" } else { "Off" },
        "identities": identities(embed),
        "datasource_identities": datasource_selectors(embed),
    });
    urls.add_to(embed, &mut value);
    SecretString::from(value.to_string())
}

/// What a sink holds: the json document, or the token alone (`format = "raw"`, which has no
/// room for the embed URLs: a consumer that needs them reads a json sink).
pub fn render(
    format: FileFormat,
    tenant: &TenantConfig,
    embed: &EmbedConfig,
    token: &EmbedToken,
    urls: &EmbedUrls,
) -> SecretString {
    match format {
        FileFormat::Json => document(tenant, embed, token, urls),
        FileFormat::Raw => token.secret.clone(),
    }
}

/// The fields of a stored document a warm start checks.
#[derive(Deserialize)]
struct Stored {
    token: String,
    #[serde(default)]
    token_id: String,
    expires_on: i64,
    issued_on: i64,
    tenant: String,
    embed: String,
    reports: Vec<String>,
    datasets: Vec<String>,
    access_level: String,
    /// Absent in files written before it was recorded: made without any.
    #[serde(default)]
    target_workspaces: Vec<String>,
    /// Absent in files written before identities existed: made without any.
    #[serde(default)]
    identities: Option<serde_json::Value>,
    /// Absent in files written before it existed: off.
    #[serde(default)]
    xmla_permissions: Option<String>,
    /// Absent in files written before datasource identities existed: made without any.
    #[serde(default)]
    datasource_identities: Option<serde_json::Value>,
}

/// A stored embed token made for this tenant, embed, items and access level; `None` otherwise.
pub fn parse_existing(
    bytes: &[u8],
    tenant: &TenantConfig,
    embed: &EmbedConfig,
) -> Option<EmbedToken> {
    let stored: Stored = serde_json::from_slice(bytes).ok()?;
    let same = stored.tenant == tenant.name
        && stored.embed == embed.name
        && stored.reports == embed.reports
        && stored.datasets == embed.datasets
        && stored.access_level == embed.access_level.as_str()
        && stored.target_workspaces == embed.target_workspaces
        && stored.identities.unwrap_or_else(|| serde_json::json!([])) == identities(embed)
        && stored
            .datasource_identities
            .unwrap_or_else(|| serde_json::json!([]))
            == datasource_selectors(embed)
        && (stored.xmla_permissions.as_deref() == Some("ReadOnly")) == embed.xmla_read_only;
    (same
        && !stored.token.is_empty()
        && stored.token.len() <= MAX_EMBED_TOKEN
        && stored.issued_on < stored.expires_on)
        .then(|| EmbedToken {
            secret: SecretString::from(stored.token),
            token_id: stored.token_id,
            expires_on: stored.expires_on,
            issued_on: stored.issued_on,
        })
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::config::{EffectiveIdentity, FileSinkConfig, SecretSource, SinkConfig};
    use std::path::PathBuf;

    const REPORT: &str = "5b218778-0000-4b8a-9c7c-000000000004";
    const DATASET: &str = "cfafbeb1-0000-4d0c-896e-000000000003";

    /// An embed `sales` of one report and one dataset (the embed job tests use it too).
    pub(in crate::powerbi) fn embed(access_level: AccessLevel) -> EmbedConfig {
        EmbedConfig {
            name: "sales".to_owned(),
            reports: vec![REPORT.to_owned()],
            datasets: vec![DATASET.to_owned()],
            target_workspaces: Vec::new(),
            access_level,
            lifetime: Some(Duration::from_secs(1800)),
            xmla_read_only: false,
            workspace: None,
            identities: Vec::new(),
            datasource_identities: Vec::new(),
            sinks: vec![SinkConfig::File(FileSinkConfig {
                path: PathBuf::from("/tmp/x.json"),
                format: FileFormat::Json,
                mode: 0o600,
            })],
        }
    }

    /// A tenant of the public cloud, `contoso` (the embed URL tests use it too).
    pub(in crate::powerbi) fn tenant() -> TenantConfig {
        TenantConfig::entra(
            "contoso",
            "contoso.example.com",
            "c",
            SecretSource::Env("S".to_owned()),
            "https://login.microsoftonline.com",
            PathBuf::from("/tmp/contoso.json"),
        )
    }

    #[test]
    fn the_request_is_the_v2_multi_resource_body() {
        assert_eq!(
            request_body(&embed(AccessLevel::View), &[]),
            serde_json::json!({
                "reports": [{ "id": REPORT, "allowEdit": false }],
                "datasets": [{ "id": DATASET }],
                "lifetimeInMinutes": 30,
            })
        );
        let mut create = embed(AccessLevel::Create);
        create.lifetime = None;
        create.target_workspaces = vec!["f089354e-0000-4e18-aea3-000000000005".to_owned()];
        let body = request_body(&create, &[]);
        assert_eq!(body["reports"][0]["allowEdit"], true);
        assert_eq!(
            body["targetWorkspaces"],
            serde_json::json!([{ "id": "f089354e-0000-4e18-aea3-000000000005" }])
        );
        assert!(body.get("lifetimeInMinutes").is_none());
    }

    /// A token as a warm start finds it: unexpired, an hour's life.
    fn stored_token() -> EmbedToken {
        EmbedToken {
            secret: SecretString::from("H4sIsecret"),
            token_id: "49ae3742-0000-4c29-af52-000000000006".to_owned(),
            expires_on: 2_000_000_000,
            issued_on: 1_999_996_400,
        }
    }

    #[test]
    fn identities_are_sent_as_generate_tokens_effective_identities_and_bind_the_stored_token() {
        let mut rls = embed(AccessLevel::View);
        rls.identities = vec![
            EffectiveIdentity {
                username: "store-17@contoso.example".to_owned(),
                roles: vec!["Store".to_owned()],
                datasets: vec![DATASET.to_owned()],
                reports: Vec::new(),
                custom_data: None,
            },
            EffectiveIdentity {
                username: "aas-user".to_owned(),
                roles: Vec::new(),
                datasets: vec![DATASET.to_owned()],
                reports: vec![REPORT.to_owned()],
                custom_data: Some("region=EU".to_owned()),
            },
        ];
        assert_eq!(
            request_body(&rls, &[])["identities"],
            serde_json::json!([
                { "username": "store-17@contoso.example", "roles": ["Store"], "datasets": [DATASET] },
                { "username": "aas-user", "roles": [], "datasets": [DATASET], "reports": [REPORT],
                  "customData": "region=EU" },
            ])
        );
        assert!(
            request_body(&embed(AccessLevel::View), &[])
                .get("identities")
                .is_none()
        );

        // A stored token is reused only for the same identities: another user's rows are not
        // this user's.
        let tenant = tenant();
        let token = stored_token();
        let stored = document(&tenant, &rls, &token, &EmbedUrls::default());
        assert!(parse_existing(stored.expose_secret().as_bytes(), &tenant, &rls).is_some());
        let mut other_user = rls.clone();
        other_user.identities[0].username = "store-18@contoso.example".to_owned();
        assert!(parse_existing(stored.expose_secret().as_bytes(), &tenant, &other_user).is_none());
        let plain = embed(AccessLevel::View);
        assert!(parse_existing(stored.expose_secret().as_bytes(), &tenant, &plain).is_none());
        // A file written before identities existed holds a token made without any.
        let mut old: serde_json::Value = serde_json::from_str(
            document(&tenant, &plain, &token, &EmbedUrls::default()).expose_secret(),
        )
        .unwrap();
        old.as_object_mut().unwrap().remove("identities");
        assert!(parse_existing(old.to_string().as_bytes(), &tenant, &plain).is_some());
        assert!(parse_existing(old.to_string().as_bytes(), &tenant, &rls).is_none());
    }

    #[test]
    fn xmla_read_only_is_asked_per_dataset_and_binds_the_stored_token() {
        let mut xmla = embed(AccessLevel::View);
        xmla.xmla_read_only = true;
        assert_eq!(
            request_body(&xmla, &[])["datasets"],
            serde_json::json!([{ "id": DATASET, "xmlaPermissions": "ReadOnly" }])
        );
        let tenant = tenant();
        let token = stored_token();
        let stored = document(&tenant, &xmla, &token, &EmbedUrls::default());
        assert!(parse_existing(stored.expose_secret().as_bytes(), &tenant, &xmla).is_some());
        let plain = embed(AccessLevel::View);
        assert!(parse_existing(stored.expose_secret().as_bytes(), &tenant, &plain).is_none());
        let stored = document(&tenant, &plain, &token, &EmbedUrls::default());
        assert!(parse_existing(stored.expose_secret().as_bytes(), &tenant, &xmla).is_none());
    }

    #[test]
    fn the_expiry_never_passes_the_entra_token_and_bad_answers_are_refused() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let body = br#"{"token":"H4sIAAAAAAAA","tokenId":"49ae3742-0000-4c29-af52-000000000006","expiration":"2027-01-15T08:40:00Z"}"#;
        let issued = clock::unix_seconds(now);
        let token = parse_response(body, now, issued + 600).expect("parsed");
        assert_eq!(token.expires_on, issued + 600);
        assert_eq!(token.token_id, "49ae3742-0000-4c29-af52-000000000006");
        assert_eq!(
            token.refresh_point(0.5),
            clock::unix_to_system(issued + 300)
        );
        for bad in [
            &b"not json"[..],
            br#"{"tokenId":"x","expiration":"2027-01-15T08:40:00Z"}"#,
            br#"{"token":"a b","expiration":"2027-01-15T08:40:00Z"}"#,
            br#"{"token":"abc","expiration":"tomorrow"}"#,
            br#"{"token":"abc","expiration":"2001-01-01T00:00:00Z"}"#,
        ] {
            let failure = parse_response(bad, now, issued + 600).expect_err("refused");
            assert_eq!(failure.reason, Reason::Unexpected);
        }
    }

    #[test]
    fn a_warm_start_reuses_only_a_token_made_for_the_same_items() {
        let tenant = tenant();
        let embed = embed(AccessLevel::View);
        let token = EmbedToken {
            secret: SecretString::from("H4sIsecret".to_owned()),
            token_id: "id".to_owned(),
            expires_on: 2_000_000_600,
            issued_on: 2_000_000_000,
        };
        let stored = document(&tenant, &embed, &token, &EmbedUrls::default());
        let back =
            parse_existing(stored.expose_secret().as_bytes(), &tenant, &embed).expect("reused");
        assert_eq!(back.expires_on, token.expires_on);
        assert_eq!(back.secret.expose_secret(), "H4sIsecret");
        let mut other = embed.clone();
        other.reports.push(DATASET.to_owned());
        assert!(parse_existing(stored.expose_secret().as_bytes(), &tenant, &other).is_none());
        let edit = self::embed(AccessLevel::Edit);
        assert!(parse_existing(stored.expose_secret().as_bytes(), &tenant, &edit).is_none());
        let mut renamed = tenant.clone();
        renamed.name = "fabrikam".to_owned();
        assert!(parse_existing(stored.expose_secret().as_bytes(), &renamed, &embed).is_none());
        // Made for other target workspaces (where Create may save): not this embed's token, on
        // a warm start nor when another replica shares it.
        let mut create = self::embed(AccessLevel::Create);
        create.target_workspaces = vec![DATASET.to_owned()];
        let made = document(&tenant, &create, &token, &EmbedUrls::default());
        assert!(parse_existing(made.expose_secret().as_bytes(), &tenant, &create).is_some());
        let mut elsewhere = create.clone();
        elsewhere.target_workspaces = vec![REPORT.to_owned()];
        assert!(parse_existing(made.expose_secret().as_bytes(), &tenant, &elsewhere).is_none());
        assert!(!format!("{back:?}").contains("H4sIsecret"));
    }

    /// An embed with one datasource identity, its blob read from `source`.
    fn sso(source: SecretSource) -> EmbedConfig {
        let mut sso = embed(AccessLevel::View);
        sso.datasource_identities = vec![crate::config::DatasourceIdentity {
            identity_blob: source,
            datasources: vec![DatasourceSelector {
                datasource_type: "Sql".to_owned(),
                connection_details: vec![
                    ("server", "contoso.database.windows.net".to_owned()),
                    ("database", "sales".to_owned()),
                ],
            }],
        }];
        sso
    }

    #[test]
    fn datasource_identities_carry_the_blob_in_the_request_and_only_the_data_sources_in_the_file() {
        let blob = "eyJ0eXAiOiJKV1QifQ.eyJhdWQiOiJodHRwczovL2RhdGFiYXNlIn0.c2ln";
        let sso = sso(SecretSource::Env("SQL_TOKEN".to_owned()));
        let selectors = serde_json::json!([{
            "datasourceType": "Sql",
            "connectionDetails": { "server": "contoso.database.windows.net", "database": "sales" },
        }]);
        assert_eq!(
            request_body(&sso, &[SecretString::from(blob)])["datasourceIdentities"],
            serde_json::json!([{ "identityBlob": blob, "datasources": selectors }])
        );
        assert!(
            request_body(&embed(AccessLevel::View), &[])
                .get("datasourceIdentities")
                .is_none()
        );

        let tenant = tenant();
        let stored = document(&tenant, &sso, &stored_token(), &EmbedUrls::default());
        let stored = stored.expose_secret();
        assert!(!stored.contains(blob), "{stored}");
        let doc: serde_json::Value = serde_json::from_str(stored).unwrap();
        assert_eq!(
            doc["datasource_identities"],
            serde_json::json!([{ "datasources": selectors }])
        );
        // Reused for the same data sources, whatever the blob source; not for others, nor by
        // an embed without single sign-on, nor the other way round.
        let moved = self::sso(SecretSource::File("/run/secrets/sql".into()));
        assert!(parse_existing(stored.as_bytes(), &tenant, &moved).is_some());
        let mut other = sso.clone();
        other.datasource_identities[0].datasources[0].connection_details[1].1 = "hr".to_owned();
        assert!(parse_existing(stored.as_bytes(), &tenant, &other).is_none());
        let plain = embed(AccessLevel::View);
        assert!(parse_existing(stored.as_bytes(), &tenant, &plain).is_none());
        let plain_file = document(&tenant, &plain, &stored_token(), &EmbedUrls::default());
        assert!(parse_existing(plain_file.expose_secret().as_bytes(), &tenant, &sso).is_none());
        // A file written before datasource identities existed holds a token made without any.
        let mut old: serde_json::Value = serde_json::from_str(plain_file.expose_secret()).unwrap();
        old.as_object_mut().unwrap().remove("datasource_identities");
        assert!(parse_existing(old.to_string().as_bytes(), &tenant, &plain).is_some());
        assert!(parse_existing(old.to_string().as_bytes(), &tenant, &sso).is_none());
    }

    #[tokio::test]
    async fn blobs_are_read_again_for_every_token_and_refused_without_being_quoted() {
        let client = TokenClient::new(&crate::config::DaemonConfig::default()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sql-token");
        let sso = sso(SecretSource::File(path.clone()));
        std::fs::write(&path, "first.blob.value\n").unwrap();
        let blobs = read_blobs(&sso, &client, None).await.unwrap();
        assert_eq!(blobs[0].expose_secret(), "first.blob.value");
        std::fs::write(&path, "second.blob.value").unwrap();
        let blobs = read_blobs(&sso, &client, None).await.unwrap();
        assert_eq!(blobs[0].expose_secret(), "second.blob.value");

        let oversized = "x".repeat(MAX_IDENTITY_BLOB + 1);
        for (content, problem) in [
            (
                oversized.as_str(),
                "is 10241 bytes long; Power BI takes at most 10240",
            ),
            ("two words", "is not printable ASCII without spaces"),
        ] {
            std::fs::write(&path, content).unwrap();
            let failure = read_blobs(&sso, &client, None).await.unwrap_err();
            assert_eq!(failure.reason, Reason::Credential);
            assert!(
                failure.message.starts_with(&format!(
                    "embed \"sales\": datasource_identities[0].identity_blob: the blob in the file {}",
                    path.display()
                )),
                "{}",
                failure.message
            );
            assert!(failure.message.contains(problem), "{}", failure.message);
            assert!(!failure.message.contains(content), "{}", failure.message);
        }
        std::fs::write(&path, "x".repeat(MAX_IDENTITY_BLOB)).unwrap();
        assert!(read_blobs(&sso, &client, None).await.is_ok());

        std::fs::remove_file(&path).unwrap();
        let failure = read_blobs(&sso, &client, None).await.unwrap_err();
        assert_eq!(failure.reason, Reason::Credential);
        assert!(
            failure.message.starts_with(
                "embed \"sales\": datasource_identities[0].identity_blob: cannot read"
            ) && failure.message.contains(&path.display().to_string()),
            "{}",
            failure.message
        );
        let unset = self::sso(SecretSource::Env(
            "POWERBI_TOKEND_TEST_UNSET_BLOB".to_owned(),
        ));
        let failure = read_blobs(&unset, &client, None).await.unwrap_err();
        assert!(
            failure
                .message
                .ends_with("environment variable POWERBI_TOKEND_TEST_UNSET_BLOB is not set"),
            "{}",
            failure.message
        );
    }
}
