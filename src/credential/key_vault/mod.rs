//! Secrets read from Azure Key Vault with the daemon's own identities: `[key_vault]`'s, and
//! those a tenant names with `key_vault_credential` (`[key_vault.identities.<name>]`).
//!
//! [`KeyVaults`] holds one [`KeyVault`] reader per identity, and gives each tenant the one its
//! configuration names: the daemon and `check --online` both read through it, so both choose
//! the identity, follow challenges and cache alike. A reader keeps its identity's tokens
//! (`access.rs`) and its own values: a value is read once and cached in memory (as a secret),
//! shared by every tenant that names the same URL with the same identity, and read again after
//! `refresh_interval`, or at once when Entra rejects it (a rotation in Key Vault is then picked
//! up within one retry). Concurrent readers of one URL wait for the one read in flight instead
//! of each asking Key Vault. A failed re-read keeps the value already held: Key Vault being
//! down or throttling must not take away a secret that still works. Two identities never share
//! a value: a tenant whose identity may not read a vault does not get its secret from another
//! tenant's read.
//!
//! Key Vault's answers (reference §10): a request without a valid token gets 401 with a
//! `WWW-Authenticate: Bearer authorization="…", resource="…"` challenge, which is followed once
//! (`challenge.rs` says what of it may be followed, `access.rs` whether the identity may go to
//! the tenant it names); 403 means the identity lacks the `Key Vault Secrets User` role (or a
//! `get` access policy) and is permanent until someone grants it; 404 permanent; 429 (with
//! `Retry-After`) and 5xx transient. Each failure quotes Key Vault's code and message
//! (`AKV10032: Invalid issuer…`), which say what is wrong where our hint can only guess, and the
//! `x-ms-client-request-id` the call carried (fresh for each, as the Azure SDKs send it), which
//! Microsoft support traces a call by. `attributes.exp` becomes the credential's expiry. The
//! last failure of each URL is kept, with its [`KeyVaultReason`], for `/status`.
//!
//! The calls go through [`TokenClient::key_vault_get`], and the identity's own tokens through
//! the client's managed identity and Entra requests: this reader builds on the client, which
//! knows nothing of it. The files depend one way: `challenge.rs` at the bottom, `access.rs` on
//! it, this file on both.

mod access;
mod challenge;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use super::secret::CredentialError;
pub use super::secret::KeyVaultReason;
use crate::client::{TokenClient, new_request_id};
use crate::config::{KeyVaultConfig, KeyVaultIdentity, TenantConfig};
use crate::error;
use crate::token::AccessToken;
use access::Access;

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
        Err(CredentialError::key_vault(
            KeyVaultReason::BadSecret,
            format!(
                "certificate {url} is kept as PKCS#12; only PEM is read: create or import it with content type application/x-pem-file (see README \"Credentials\")"
            ),
            false,
            None,
        ))
    }
}

/// Why the last read of a URL failed: what `/status` shows beside the identity's name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VaultFailure {
    /// The kind of failure (a metric label).
    pub reason: KeyVaultReason,
    /// Key Vault's words and ours, as the refresh error carries them; never a value or a token.
    pub message: String,
}

impl VaultFailure {
    /// The failure a read ended with, if it is one of Key Vault's.
    fn of(err: &CredentialError) -> Option<VaultFailure> {
        match err {
            CredentialError::KeyVault {
                reason, message, ..
            } => Some(VaultFailure {
                reason: *reason,
                message: message.clone(),
            }),
            _ => None,
        }
    }
}

/// Told how every read of a vault ended, by identity name: the metrics. Not
/// [`crate::refresh::Observer`], which builds on this module.
pub trait KeyVaultObserver: Send + Sync + std::fmt::Debug {
    /// A read of a vault (not of the cache) by the identity `identity` ended.
    fn key_vault_read(&self, identity: &str, result: Result<(), KeyVaultReason>);
}

/// One cached URL.
#[derive(Default)]
struct Entry {
    /// The value and when it was read; locked for the whole read, so one read serves all.
    cached: tokio::sync::Mutex<Option<(VaultSecret, Instant)>>,
    /// Entra rejected the value: read it again at the next use.
    stale: AtomicBool,
    /// How the last read ended, when it failed (even if the value read before is still used).
    failure: Mutex<Option<VaultFailure>>,
}

/// The readers of every Key Vault identity, and which one reads a tenant's credential.
#[derive(Debug, Default)]
pub struct KeyVaults {
    /// One per identity, in the configuration's order (`[key_vault]`'s own first).
    readers: Vec<KeyVault>,
}

impl KeyVaults {
    /// A reader for each identity of `[key_vault]`, reporting its reads to `observer`.
    pub fn new(config: &KeyVaultConfig, observer: Option<Arc<dyn KeyVaultObserver>>) -> Self {
        KeyVaults {
            readers: config
                .identities
                .iter()
                .map(|identity| KeyVault::new(identity, config.refresh_interval, observer.clone()))
                .collect(),
        }
    }

    /// The reader of the identity that reads `tenant`'s credential (`key_vault_credential`, or
    /// `[key_vault]`'s own); `None` when there is no such identity, which validation rules out
    /// for a configuration read from a file.
    pub fn reader(&self, tenant: &TenantConfig) -> Option<&KeyVault> {
        let name = tenant
            .key_vault_credential
            .as_deref()
            .unwrap_or(KeyVaultConfig::DEFAULT_IDENTITY);
        self.readers.iter().find(|reader| &*reader.name == name)
    }
}

/// The reader of one Key Vault identity.
pub struct KeyVault {
    /// The identity's tokens for Key Vault; locked while one is fetched or a challenge taken.
    access: tokio::sync::Mutex<Access>,
    /// The identity's name: in `/status` and the metrics.
    name: Arc<str>,
    /// The identity in words, for messages: which identity lacks access.
    who: String,
    /// How long a value is used before it is read again.
    refresh_interval: Duration,
    /// Every URL read so far.
    entries: Mutex<HashMap<String, Arc<Entry>>>,
    /// Counts every read (the metrics); `None` in `check` and tests.
    observer: Option<Arc<dyn KeyVaultObserver>>,
}

impl std::fmt::Debug for KeyVault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyVault")
            .field("identity", &self.who)
            .field("refresh_interval", &self.refresh_interval)
            .finish_non_exhaustive()
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

/// `err` naming the Key Vault call it came from by its `x-ms-client-request-id`.
fn traced(err: CredentialError, request_id: &str) -> CredentialError {
    match err {
        CredentialError::KeyVault {
            reason,
            message,
            transient,
            retry_after,
        } => CredentialError::key_vault(
            reason,
            format!("{message}; x-ms-client-request-id {request_id}"),
            transient,
            retry_after,
        ),
        other => other,
    }
}

impl KeyVault {
    /// The reader of `identity`, reading a value again after `refresh_interval`.
    pub fn new(
        identity: &KeyVaultIdentity,
        refresh_interval: Duration,
        observer: Option<Arc<dyn KeyVaultObserver>>,
    ) -> KeyVault {
        let access = Access::new(identity);
        KeyVault {
            who: access.who.clone(),
            access: tokio::sync::Mutex::new(access),
            name: identity.name.as_str().into(),
            refresh_interval,
            entries: Mutex::new(HashMap::new()),
            observer,
        }
    }

    /// The identity's name (`default` for `[key_vault]`'s own).
    pub fn name(&self) -> &Arc<str> {
        &self.name
    }

    fn entry(&self, url: &str) -> Arc<Entry> {
        let mut entries = self
            .entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        Arc::clone(entries.entry(url.to_owned()).or_default())
    }

    /// How the last read of `url` failed, if it did; `None` once a read succeeds.
    pub fn failure(&self, url: &str) -> Option<VaultFailure> {
        let entry = self.entry(url);
        let failure = entry
            .failure
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        failure.clone()
    }

    /// The value at `url`: cached while younger than the refresh interval and not rejected,
    /// else read (one read for all concurrent callers). A failed re-read returns the value
    /// held, with a warning.
    ///
    /// # Errors
    /// The first read failed: the vault refuses the identity (403), the secret does not exist
    /// (404), the vault's tenant is not one the identity may get tokens from, or Key Vault is
    /// throttling, failing or unreachable (transient).
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
        let read = self.read(client, url).await;
        *entry
            .failure
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) =
            read.as_ref().err().and_then(VaultFailure::of);
        match read {
            Ok(value) => {
                entry.stale.store(false, Ordering::Relaxed);
                *cached = Some((value.clone(), Instant::now()));
                Ok(value)
            }
            Err(err) => match cached.as_mut() {
                Some((value, read_at)) => {
                    tracing::warn!(
                        secret = %url,
                        identity = %self.name,
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

    /// One read of `url`, following one 401 challenge; its outcome is counted.
    async fn read(&self, client: &TokenClient, url: &str) -> Result<VaultSecret, CredentialError> {
        let read = self.read_following(client, url).await;
        if let Some(observer) = &self.observer {
            let result = match &read {
                Ok(_) => Ok(()),
                Err(err) => {
                    Err(VaultFailure::of(err).map_or(KeyVaultReason::Identity, |f| f.reason))
                }
            };
            observer.key_vault_read(&self.name, result);
        }
        read
    }

    /// The calls of one read: again once after a challenge.
    async fn read_following(
        &self,
        client: &TokenClient,
        url: &str,
    ) -> Result<VaultSecret, CredentialError> {
        let request = format!("{url}?api-version={API_VERSION}");
        let (vault, _) = vault_and_name(url);
        let mut challenged = false;
        loop {
            let token = self.access.lock().await.token(client, vault).await?;
            // Fresh for every call, the one after a challenge too, as the Azure SDKs make them;
            // named in the call's failure, so Microsoft support can find it in Key Vault's logs.
            let request_id = new_request_id();
            let call = Call {
                url,
                request: &request,
                token: &token,
                request_id: &request_id,
            };
            let read = self
                .call(client, &call, challenged)
                .await
                .map_err(|err| traced(err, &request_id))?;
            match read {
                Some(secret) => return Ok(secret),
                None => challenged = true,
            }
        }
    }

    /// One call: the secret, or `None` when a first 401's challenge was taken (the token is
    /// dropped, and the next one is for what the challenge asks), so the caller asks again.
    async fn call(
        &self,
        client: &TokenClient,
        call: &Call<'_>,
        challenged: bool,
    ) -> Result<Option<VaultSecret>, CredentialError> {
        let (vault, name) = vault_and_name(call.url);
        let sent = [call.token.secret.expose_secret()];
        let answer = client
            .key_vault_get(call.request, call.token, call.request_id)
            .await
            .map_err(|err| {
                CredentialError::key_vault(
                    KeyVaultReason::Unreachable,
                    format!("cannot reach Key Vault {vault}: {}", err.message),
                    true,
                    None,
                )
            })?;
        let said = || vault_error(&answer.body, &sent);
        let (reason, message) = match answer.status {
            200 => return parse_bundle(&answer.body, vault, name).map(Some),
            401 => {
                let challenge = answer
                    .www_authenticate
                    .as_deref()
                    .map(|header| challenge::parse(header, vault))
                    .unwrap_or_default();
                let mut access = self.access.lock().await;
                if !challenged {
                    access.follow(vault, &challenge)?;
                    return Ok(None);
                }
                let hint = access.refused_tenant_hint(vault, &challenge);
                (
                    KeyVaultReason::Unauthorized,
                    format!(
                        "Key Vault {vault} does not accept the token of {}{}: is the vault in this identity's tenant and cloud?{hint}",
                        self.who,
                        said()
                    ),
                )
            }
            403 => (
                KeyVaultReason::Forbidden,
                format!(
                    "Key Vault {vault} refuses {} read access to secret {name:?}{}: grant it the \"Key Vault Secrets User\" role on the vault or the secret (or a get-secret access policy)",
                    self.who,
                    said()
                ),
            ),
            404 => (
                KeyVaultReason::NotFound,
                format!(
                    "Key Vault {vault} has no secret {name:?} (or not that version){}",
                    said()
                ),
            ),
            status => return Err(unexpected_status(status, &answer, vault, name, &said())),
        };
        Err(CredentialError::key_vault(reason, message, false, None))
    }
}

/// The request of one call, and what names it.
struct Call<'c> {
    /// The secret URL, as configured.
    url: &'c str,
    /// The URL with `api-version`.
    request: &'c str,
    /// The identity's token for the vault.
    token: &'c AccessToken,
    /// The call's `x-ms-client-request-id`.
    request_id: &'c str,
}

/// A status other than 200, 401, 403 and 404: throttled (with its `Retry-After`) and 5xx are
/// transient, anything else permanent.
fn unexpected_status(
    status: u16,
    answer: &crate::client::ApiAnswer,
    vault: &str,
    name: &str,
    said: &str,
) -> CredentialError {
    let reason = match status {
        429 => KeyVaultReason::Throttled,
        _ => KeyVaultReason::ServerError,
    };
    CredentialError::key_vault(
        reason,
        format!("Key Vault {vault} answered HTTP {status}{said} reading secret {name:?}"),
        status == 429 || status >= 500,
        answer.retry_after.map(|after| after.get()),
    )
}

/// Reads a 200 body: the value, `attributes.exp`, `contentType`.
fn parse_bundle(body: &[u8], vault: &str, name: &str) -> Result<VaultSecret, CredentialError> {
    let bundle: SecretBundle = serde_json::from_slice(body).map_err(|_| {
        CredentialError::key_vault(
            KeyVaultReason::BadSecret,
            format!("Key Vault {vault} answered 200 for secret {name:?} without a secret"),
            true,
            None,
        )
    })?;
    let value = bundle
        .value
        .filter(|value| !value.is_empty() && value.len() <= MAX_VALUE_BYTES)
        .ok_or_else(|| {
            CredentialError::key_vault(
                KeyVaultReason::BadSecret,
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
