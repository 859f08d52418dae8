//! Secrets read from Azure Key Vault with the daemon's own managed or workload identity.
//!
//! One [`KeyVault`] serves every tenant: a value is read once and cached in memory (as a
//! secret), shared by every tenant that names the same URL, and read again after
//! `refresh_interval`, or at once when Entra rejects it (a rotation in Key Vault is then picked up
//! within one retry). Concurrent readers of one URL wait for the one read in flight instead of
//! each asking Key Vault. A failed re-read keeps the value already held: Key Vault being down or
//! throttling must not take away a secret that still works.
//!
//! Key Vault's answers (reference §10): a request without a valid token gets 401 with a
//! `WWW-Authenticate: Bearer authorization="…", resource="…"` challenge, which is followed once
//! (the token is fetched anew, for the challenge's resource when it belongs to a Key Vault
//! cloud); 403 means the identity lacks the `Key Vault Secrets User` role (or a `get` access
//! policy) and is permanent until someone grants it; 404 permanent; 429 (with `Retry-After`) and
//! 5xx transient. Each failure quotes Key Vault's code and message (`AKV10032: Invalid issuer…`),
//! which say what is wrong where our hint can only guess, and the `x-ms-client-request-id` the
//! call carried (fresh for each, as the Azure SDKs send it), which Microsoft support traces a
//! call by. `attributes.exp` becomes the credential's expiry.
//!
//! The calls go through [`TokenClient::key_vault_get`], and the identity's own tokens through
//! the client's managed identity and Entra requests: this reader builds on the client, which
//! knows nothing of it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use super::federated::FederatedCredential;
use super::managed_identity;
use super::secret::CredentialError;
use crate::client::{TokenClient, new_request_id};
use crate::cloud::Cloud;
use crate::config::{
    CredentialConfig, KeyVaultConfig, ManagedIdentityConfig, ManagedIdentityId, TenantConfig,
};
use crate::error::{self, ErrorClass, Reason, RefreshError};
use crate::schedule;
use crate::token::AccessToken;

/// The Key Vault REST API version asked for.
pub(crate) const API_VERSION: &str = "7.5";

/// A secret value larger than this is not a client secret or a PEM key.
const MAX_VALUE_BYTES: usize = 256 * 1024;

/// After Entra rejects a value read less than this long ago, it is not read again at once: a
/// secret that is simply wrong in Key Vault is not re-read at every retry.
const FORCED_REREAD_AFTER: Duration = Duration::from_secs(5);

/// A value read from Key Vault.
#[derive(Clone, Debug)]
pub struct VaultSecret {
    /// The secret (a client secret, or a PEM certificate with its key).
    pub value: SecretString,
    /// `attributes.exp`: when the secret expires, Unix seconds.
    pub expires_on: Option<i64>,
    /// `contentType`, e.g. `application/x-pem-file`.
    pub content_type: Option<String>,
}

impl VaultSecret {
    /// Refuses a certificate kept as PKCS#12 (only PEM is read), saying how to store it instead;
    /// the daemon and `check --online` give the same advice.
    ///
    /// # Errors
    /// The secret's content type is `application/x-pkcs12`; permanent.
    pub(crate) fn require_pem(&self, url: &str) -> Result<(), CredentialError> {
        let content_type = self.content_type.as_deref().unwrap_or_default();
        if !content_type.eq_ignore_ascii_case("application/x-pkcs12") {
            return Ok(());
        }
        Err(CredentialError::KeyVault {
            message: format!(
                "certificate {url} is kept as PKCS#12; only PEM is read: create or import it with content type application/x-pem-file (see README \"Credentials\")"
            ),
            transient: false,
            retry_after: None,
        })
    }
}

/// One cached URL.
#[derive(Default)]
struct Entry {
    /// The value and when it was read; locked for the whole read, so one read serves all.
    cached: tokio::sync::Mutex<Option<(VaultSecret, Instant)>>,
    /// Entra rejected the value: read it again at the next use.
    stale: AtomicBool,
}

/// How the reader's identity gets its tokens. Validation allows these two only, and neither
/// keeps anything in Key Vault: reading a secret never waits for another secret.
enum Identity {
    /// A managed identity: the host's endpoint.
    Managed(Box<ManagedIdentityConfig>),
    /// A workload identity: the federated token file, cached.
    Workload(FederatedCredential),
}

impl Identity {
    /// The identity a `[key_vault]` credential names; `None` for any other kind of credential,
    /// which validation never lets through.
    fn new(credential: &CredentialConfig) -> Option<Identity> {
        match credential {
            CredentialConfig::ManagedIdentity(managed) => {
                Some(Identity::Managed(Box::new(managed.clone())))
            }
            CredentialConfig::WorkloadIdentity { token_file } => Some(Identity::Workload(
                FederatedCredential::new(token_file.clone()),
            )),
            CredentialConfig::ClientSecret { .. } | CredentialConfig::Certificate(_) => None,
        }
    }

    /// A token for `request` (the identity asking for a Key Vault resource).
    async fn fetch(
        &mut self,
        client: &TokenClient,
        request: &TenantConfig,
    ) -> Result<AccessToken, RefreshError> {
        match self {
            Identity::Managed(managed) => managed_identity::fetch(client, request, managed).await,
            Identity::Workload(federated) => federated.fetch(client, request).await,
        }
    }
}

/// The identity's token for Key Vault, and what fetching it needs.
struct Access {
    /// How the identity gets its tokens; `None` for a configuration built in code with another
    /// kind of credential, whose every read then fails saying so.
    credential: Option<Identity>,
    /// The current token, if any.
    token: Option<AccessToken>,
    /// The identity as a token request; its resource follows a challenge that names another.
    identity: Arc<TenantConfig>,
}

/// The daemon's Key Vault reader.
pub struct KeyVault {
    /// Token for Key Vault; locked while one is fetched.
    access: tokio::sync::Mutex<Access>,
    /// The identity in words, for messages: which identity lacks access.
    who: String,
    /// How long a value is used before it is read again.
    refresh_interval: Duration,
    /// Every URL read so far.
    entries: Mutex<HashMap<String, Arc<Entry>>>,
}

impl std::fmt::Debug for KeyVault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyVault")
            .field("identity", &self.who)
            .field("refresh_interval", &self.refresh_interval)
            .finish_non_exhaustive()
    }
}

/// The identity in words: `the system-assigned managed identity`, `the workload identity
/// <client id> of tenant <id>`…
fn describe(identity: &TenantConfig) -> String {
    match &identity.credential {
        CredentialConfig::ManagedIdentity(managed) => match &managed.identity {
            ManagedIdentityId::System => "the system-assigned managed identity".to_owned(),
            ManagedIdentityId::ClientId(id) => format!("the managed identity with client ID {id}"),
            ManagedIdentityId::ObjectId(id) => format!("the managed identity with object ID {id}"),
            ManagedIdentityId::ResourceId(id) => format!("the managed identity {id}"),
        },
        // Validation gives a workload identity both ids.
        _ => match (&identity.client_id, &identity.tenant_id) {
            (Some(client_id), Some(tenant_id)) => {
                format!("the workload identity with client ID {client_id} in tenant {tenant_id}")
            }
            _ => "the workload identity".to_owned(),
        },
    }
}

/// The vault part of a secret URL (scheme and host), and the secret's name.
fn vault_and_name(url: &str) -> (&str, &str) {
    let after_scheme = url.find("://").map_or(0, |at| at + 3);
    let path_at = url[after_scheme..]
        .find('/')
        .map_or(url.len(), |at| after_scheme + at);
    let name = url[path_at..].split('/').nth(2).unwrap_or_default();
    (&url[..path_at], name)
}

/// Key Vault's error body: `{"error":{"code":…,"message":…,"innererror":{"code":…}}}`.
#[derive(Deserialize)]
struct ErrorEnvelope {
    error: Option<ErrorBody>,
}

#[derive(Deserialize)]
struct ErrorBody {
    code: Option<String>,
    message: Option<String>,
    innererror: Option<InnerError>,
}

#[derive(Deserialize)]
struct InnerError {
    code: Option<String>,
}

/// Key Vault's 200 body.
#[derive(Deserialize)]
struct SecretBundle {
    value: Option<String>,
    #[serde(rename = "contentType")]
    content_type: Option<String>,
    attributes: Option<Attributes>,
}

#[derive(Deserialize)]
struct Attributes {
    exp: Option<i64>,
}

/// What Key Vault said, for messages: ` (code/innererror.code: message)`, or less when the
/// body has less. The message is the diagnosis our hint can only guess at (`AKV10032: Invalid
/// issuer. Expected one of …, found …`, or the caller, action and resource an RBAC refusal
/// names), so it is kept, [`error::sanitise`]d with `secrets` (the bearer token sent) like any
/// server text: it could quote the request.
fn vault_error(body: &[u8], secrets: &[&str]) -> String {
    let Some(error) = serde_json::from_slice::<ErrorEnvelope>(body)
        .ok()
        .and_then(|envelope| envelope.error)
    else {
        return String::new();
    };
    let codes: Vec<String> = [error.code, error.innererror.and_then(|inner| inner.code)]
        .into_iter()
        .flatten()
        .map(|code| error::sanitise(&code, secrets))
        .filter(|code| !code.is_empty() && code.len() <= 64)
        .collect();
    let message = error
        .message
        .map(|message| error::sanitise(&message, secrets))
        .unwrap_or_default();
    match (codes.join("/"), message) {
        (codes, message) if codes.is_empty() && message.is_empty() => String::new(),
        (codes, message) if message.is_empty() => format!(" ({codes})"),
        (codes, message) if codes.is_empty() => format!(" ({message})"),
        (codes, message) => format!(" ({codes}: {message})"),
    }
}

/// The `resource` of a `WWW-Authenticate: Bearer …` challenge, if it is a Key Vault resource of a
/// known cloud (a challenge naming anything else is not followed: the token would go elsewhere).
fn challenged_resource(header: &str) -> Option<&'static str> {
    let rest = header.trim().strip_prefix("Bearer")?;
    let resource = rest.split(',').find_map(|part| {
        let (key, value) = part.trim().split_once('=')?;
        matches!(key.trim(), "resource" | "scope").then(|| {
            value
                .trim()
                .trim_matches('"')
                .trim_end_matches("/.default")
                .trim_end_matches('/')
        })
    })?;
    Cloud::ALL
        .iter()
        .map(|cloud| cloud.key_vault_resource())
        .find(|known| known.eq_ignore_ascii_case(resource))
}

/// `err` naming the Key Vault call it came from by its `x-ms-client-request-id`.
fn traced(err: CredentialError, request_id: &str) -> CredentialError {
    match err {
        CredentialError::KeyVault {
            message,
            transient,
            retry_after,
        } => CredentialError::KeyVault {
            message: format!("{message}; x-ms-client-request-id {request_id}"),
            transient,
            retry_after,
        },
        other => other,
    }
}

/// A failure to read `url`: transient ones are retried with the refresh backoff.
fn failure(message: String, transient: bool, retry_after: Option<Duration>) -> CredentialError {
    CredentialError::KeyVault {
        message,
        transient,
        retry_after,
    }
}

impl KeyVault {
    /// A reader with the `[key_vault]` identity.
    pub fn new(config: &KeyVaultConfig) -> KeyVault {
        KeyVault {
            access: tokio::sync::Mutex::new(Access {
                credential: Identity::new(&config.identity.credential),
                token: None,
                identity: Arc::clone(&config.identity),
            }),
            who: describe(&config.identity),
            refresh_interval: config.refresh_interval,
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn entry(&self, url: &str) -> Arc<Entry> {
        let mut entries = self
            .entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        Arc::clone(entries.entry(url.to_owned()).or_default())
    }

    /// The value at `url`: cached while younger than the refresh interval and not rejected,
    /// else read (one read for all concurrent callers). A failed re-read returns the value
    /// held, with a warning.
    ///
    /// # Errors
    /// The first read failed: the vault refuses the identity (403), the secret does not exist
    /// (404), or Key Vault is throttling, failing or unreachable (transient).
    pub async fn secret(
        &self,
        client: &TokenClient,
        url: &str,
    ) -> Result<VaultSecret, CredentialError> {
        let entry = self.entry(url);
        let mut cached = entry.cached.lock().await;
        let stale = entry.stale.load(Ordering::Relaxed);
        if let Some((value, read_at)) = cached.as_ref()
            && !stale
            && read_at.elapsed() < self.refresh_interval
        {
            return Ok(value.clone());
        }
        match self.read(client, url).await {
            Ok(value) => {
                entry.stale.store(false, Ordering::Relaxed);
                *cached = Some((value.clone(), Instant::now()));
                Ok(value)
            }
            Err(err) => match cached.as_mut() {
                Some((value, read_at)) => {
                    tracing::warn!(
                        secret = %url,
                        error = %err,
                        "cannot read the secret from Key Vault again; keeping the value read before"
                    );
                    // Not again at every use: after a short wait, or at the next rejection.
                    *read_at = Instant::now()
                        .checked_sub(self.refresh_interval.saturating_sub(FORCED_REREAD_AFTER))
                        .unwrap_or(*read_at);
                    entry.stale.store(false, Ordering::Relaxed);
                    Ok(value.clone())
                }
                None => Err(err),
            },
        }
    }

    /// Entra rejected the value of `url` (a rotated secret): reads it again at its next use,
    /// unless it was read moments ago. Returns whether it will be.
    pub(crate) fn reject(&self, url: &str) -> bool {
        let entry = self.entry(url);
        let fresh = match entry.cached.try_lock() {
            Ok(cached) => cached
                .as_ref()
                .is_some_and(|(_, read_at)| read_at.elapsed() < FORCED_REREAD_AFTER),
            // A read is in flight: it brings the newest value.
            Err(_) => true,
        };
        if !fresh {
            entry.stale.store(true, Ordering::Relaxed);
        }
        !fresh
    }

    /// One read of `url`, following one 401 challenge.
    async fn read(&self, client: &TokenClient, url: &str) -> Result<VaultSecret, CredentialError> {
        let request = format!("{url}?api-version={API_VERSION}");
        let mut challenged = false;
        loop {
            let token = self.token(client).await?;
            // Fresh for every call, the one after a challenge too, as the Azure SDKs make them;
            // named in the call's failure, so Microsoft support can find it in Key Vault's logs.
            let request_id = new_request_id();
            let read = self
                .call(client, url, &request, &token, &request_id, challenged)
                .await
                .map_err(|err| traced(err, &request_id))?;
            match read {
                Some(secret) => return Ok(secret),
                None => challenged = true,
            }
        }
    }

    /// One call: the secret, or `None` when a first 401's challenge was taken (the token is
    /// dropped, and its resource follows the challenge's), so the caller asks again.
    async fn call(
        &self,
        client: &TokenClient,
        url: &str,
        request: &str,
        token: &AccessToken,
        request_id: &str,
        challenged: bool,
    ) -> Result<Option<VaultSecret>, CredentialError> {
        let (vault, name) = vault_and_name(url);
        let sent = [token.secret.expose_secret()];
        let answer = client
            .key_vault_get(request, token, request_id)
            .await
            .map_err(|err| {
                failure(
                    format!("cannot reach Key Vault {vault}: {}", err.message),
                    true,
                    None,
                )
            })?;
        let message = match answer.status {
            200 => return parse_bundle(&answer.body, vault, name).map(Some),
            401 if !challenged => {
                let resource = answer
                    .www_authenticate
                    .as_deref()
                    .and_then(challenged_resource);
                let mut access = self.access.lock().await;
                access.token = None;
                if let Some(resource) = resource
                    && *access.identity.resource != *resource
                {
                    let mut identity = (*access.identity).clone();
                    identity.resource = resource.into();
                    access.identity = Arc::new(identity);
                }
                return Ok(None);
            }
            401 => format!(
                "Key Vault {vault} does not accept the token of {}{}: is the vault in this identity's tenant and cloud?",
                self.who,
                vault_error(&answer.body, &sent)
            ),
            403 => format!(
                "Key Vault {vault} refuses {} read access to secret {name:?}{}: grant it the \"Key Vault Secrets User\" role on the vault or the secret (or a get-secret access policy)",
                self.who,
                vault_error(&answer.body, &sent)
            ),
            404 => format!(
                "Key Vault {vault} has no secret {name:?} (or not that version){}",
                vault_error(&answer.body, &sent)
            ),
            status => {
                let retry_after = answer.retry_after.map(|after| after.get());
                return Err(failure(
                    format!(
                        "Key Vault {vault} answered HTTP {status}{} reading secret {name:?}",
                        vault_error(&answer.body, &sent)
                    ),
                    status == 429 || status >= 500,
                    retry_after,
                ));
            }
        };
        Err(failure(message, false, None))
    }

    /// The identity's token for Key Vault: the cached one until its refresh point, else a new
    /// one from the managed identity endpoint or Entra. Never written anywhere.
    async fn token(&self, client: &TokenClient) -> Result<AccessToken, CredentialError> {
        let mut access = self.access.lock().await;
        let now = SystemTime::now();
        if let Some(token) = &access.token
            && now < schedule::refresh_point(token, 0.5, 0.0)
        {
            return Ok(token.clone());
        }
        let Access {
            credential,
            identity,
            ..
        } = &mut *access;
        let identity = Arc::clone(identity);
        let fetched = match credential {
            Some(credential) => credential.fetch(client, &identity).await,
            None => Err(RefreshError::local(
                ErrorClass::Permanent,
                Reason::Credential,
                "the [key_vault] identity is neither a managed nor a workload identity",
            )),
        };
        match fetched {
            Ok(token) => {
                access.token = Some(token.clone());
                Ok(token)
            }
            Err(err) => Err(failure(
                format!(
                    "cannot get a token for Key Vault as {}: {}",
                    self.who, err.message
                ),
                err.class != ErrorClass::Permanent,
                err.retry_after.map(|after| after.get()),
            )),
        }
    }
}

/// Reads a 200 body: the value, `attributes.exp`, `contentType`.
fn parse_bundle(body: &[u8], vault: &str, name: &str) -> Result<VaultSecret, CredentialError> {
    let bundle: SecretBundle = serde_json::from_slice(body).map_err(|_| {
        failure(
            format!("Key Vault {vault} answered 200 for secret {name:?} without a secret"),
            true,
            None,
        )
    })?;
    let value = bundle
        .value
        .filter(|value| !value.is_empty() && value.len() <= MAX_VALUE_BYTES)
        .ok_or_else(|| {
            failure(
                format!("secret {name:?} in Key Vault {vault} is empty or larger than {MAX_VALUE_BYTES} bytes"),
                false,
                None,
            )
        })?;
    Ok(VaultSecret {
        value: SecretString::from(value),
        expires_on: bundle.attributes.and_then(|attributes| attributes.exp),
        content_type: bundle
            .content_type
            .filter(|kind| kind.len() <= 128 && kind.bytes().all(|b| b.is_ascii_graphic())),
    })
}

/// Whether an Entra failure means the credential itself was rejected: a wrong or expired secret,
/// or a certificate Entra does not know (AADSTS7000215, 7000222, 700027).
pub(crate) fn rejects_credential(aadsts: &[u32]) -> bool {
    aadsts
        .iter()
        .any(|code| matches!(code, 7_000_215 | 7_000_222 | 700_027))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_vault_and_name() {
        assert_eq!(
            vault_and_name("https://kv1.vault.azure.net/secrets/app-secret/0123"),
            ("https://kv1.vault.azure.net", "app-secret")
        );
        assert_eq!(
            vault_and_name("http://127.0.0.1:9/secrets/s"),
            ("http://127.0.0.1:9", "s")
        );
    }

    #[test]
    fn only_key_vault_challenges_are_followed() {
        assert_eq!(
            challenged_resource(
                r#"Bearer authorization="https://login.microsoftonline.com/72f988bf", resource="https://vault.azure.net""#
            ),
            Some("https://vault.azure.net")
        );
        assert_eq!(
            challenged_resource(
                r#"Bearer authorization="https://login.microsoftonline.us/x", scope="https://vault.usgovcloudapi.net/.default""#
            ),
            Some("https://vault.usgovcloudapi.net")
        );
        assert_eq!(
            challenged_resource(r#"Bearer authorization="x", resource="https://evil.example""#),
            None
        );
        assert_eq!(challenged_resource("Basic realm=x"), None);
    }

    #[test]
    fn key_vaults_codes_and_message_are_kept_short_and_clean() {
        assert_eq!(
            vault_error(
                br#"{"error":{"code":"Forbidden","innererror":{"code":"ForbiddenByRbac"}}}"#,
                &[]
            ),
            " (Forbidden/ForbiddenByRbac)"
        );
        assert_eq!(
            vault_error(
                br#"{"error":{"code":"Unauthorized","message":"AKV10032: Invalid issuer. Expected one of https://sts.windows.net/72f988bf-86f1-41af-91ab-2d7cd011db47/, found https://sts.windows.net/0d7c1a2b-3c4d-4e5f-8a9b-0c1d2e3f4a5b/."}}"#,
                &[]
            ),
            " (Unauthorized: AKV10032: Invalid issuer. Expected one of https://sts.windows.net/72f988bf-86f1-41af-91ab-2d7cd011db47/, found https://sts.windows.net/0d7c1a2b-3c4d-4e5f-8a9b-0c1d2e3f4a5b/.)"
        );
        assert_eq!(vault_error(br#"{"error":{"message":"m"}}"#, &[]), " (m)");
        assert_eq!(vault_error(b"<html>", &[]), "");
        assert_eq!(vault_error(br#"{"error":{}}"#, &[]), "");
        // A vault (or something posing as one) quoting the bearer token it was sent, with
        // terminal escapes, at length: none of it is kept.
        let token = "opaque-bearer~token";
        let body = serde_json::json!({"error": {
            "code": format!("\u{1b}[2J{token}"),
            "message": format!("bad token {token}\r\nforged line \u{202e}{}", "x ".repeat(1000)),
        }})
        .to_string();
        let kept = vault_error(body.as_bytes(), &[token]);
        assert!(
            kept.starts_with(" ([2J[REDACTED]: bad token [REDACTED] forged line x x"),
            "{kept}"
        );
        assert!(!kept.contains(token) && !kept.contains(['\u{1b}', '\r', '\n', '\u{202e}']));
        assert!(kept.chars().count() < 2 * error::MAX_TEXT_CHARS, "{kept}");
    }

    #[test]
    fn rejections_that_call_for_a_fresh_read() {
        assert!(rejects_credential(&[7_000_215]));
        assert!(rejects_credential(&[7_000_222]));
        assert!(rejects_credential(&[700_027]));
        assert!(!rejects_credential(&[700_016]));
    }
}
