//! Client secrets, referenced by where they live rather than written in the config.
//!
//! The source is read at every refresh: a Kubernetes Secret volume, a Vault Agent template or a
//! systemd credential can rotate the secret and the next refresh uses it, without a restart.

use secrecy::SecretString;
use std::path::PathBuf;

use crate::config::SecretSource;
use crate::error::{ErrorClass, Reason, RefreshError};
use crate::safe_read::{self, ReadError, Symlinks};
use crate::token::RetryAfter;

/// Largest secret file we read; anything bigger is a wrong path, not a secret.
const MAX_SECRET_BYTES: u64 = 64 * 1024;

/// A secret could not be read. Says where it looked, never what it found.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    /// The env var is not set (or not valid UTF-8).
    #[error("environment variable {0} is not set")]
    MissingEnv(String),
    /// The env var or file is empty.
    #[error("{0} is empty")]
    Empty(String),
    /// The file could not be read.
    #[error("cannot read secret file {path}: {source}")]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Not a regular file, far larger than any secret or key, or on a mount that did not answer.
    #[error(transparent)]
    Unreadable(ReadError),
    /// The certificate or key file is not what a client assertion needs.
    #[error("certificate credential {path}: {message}")]
    Certificate {
        /// The file.
        path: PathBuf,
        /// What is wrong and what was expected.
        message: String,
    },
    /// The key does not belong to the certificate: Entra would answer AADSTS700027.
    #[error("the private key in {key} does not belong to the certificate in {cert}")]
    KeyMismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
    },
    /// The signature could not be computed.
    #[error("signing the client assertion failed")]
    Signing,
    /// A secret in Key Vault asked for where no Key Vault reader exists (`once` without
    /// `[key_vault]` cannot happen: `check` refuses such a config).
    #[error("secret {0} is in Key Vault, and no [key_vault] identity is configured to read it")]
    KeyVaultUnavailable(String),
    /// Key Vault could not give the secret. Names the vault, the secret and the identity; never
    /// a value.
    #[error("{message}")]
    KeyVault {
        /// What kind of failure, for `/status` and the metrics.
        reason: KeyVaultReason,
        /// What happened and what to do.
        message: String,
        /// Worth retrying soon (throttled, failing, unreachable) rather than after the permanent
        /// retry interval (refused, not found).
        transient: bool,
        /// Key Vault's `Retry-After`.
        retry_after: Option<std::time::Duration>,
    },
    /// A generic OAuth2 server was to be asked with a credential other than a client secret
    /// (validation refuses such a tenant).
    #[error("a generic OAuth2 server takes a client secret; this credential is for Entra ID")]
    NotForOAuth2,
    /// `{ systemd = … }` used outside a unit with `LoadCredential=`.
    #[error(
        "CREDENTIALS_DIRECTORY is not set; systemd credential {0:?} needs LoadCredential= in the unit (to check a config by hand, name the file the unit loads: check --load-credential {0}:/etc/credstore/powerbi-tokend.{0})"
    )]
    NoCredentialsDirectory(String),
}

impl CredentialError {
    /// A failure to read from Key Vault: transient ones are retried with the refresh backoff.
    pub(crate) fn key_vault(
        reason: KeyVaultReason,
        message: String,
        transient: bool,
        retry_after: Option<std::time::Duration>,
    ) -> CredentialError {
        CredentialError::KeyVault {
            reason,
            message,
            transient,
            retry_after,
        }
    }
}

/// Why a read from Key Vault failed: a small, fixed set, so it can be a metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyVaultReason {
    /// The vault's challenge names a tenant the identity may not get tokens from
    /// (`key_vault_allowed_tenants`).
    TenantNotAllowed,
    /// The identity could not get a token for Key Vault (its own token request failed).
    Identity,
    /// 401 after the challenge was followed: the token is from another directory or cloud.
    Unauthorized,
    /// 403: no role assignment (or access policy), or the version is disabled.
    Forbidden,
    /// 404: no such secret or version.
    NotFound,
    /// 429.
    Throttled,
    /// 5xx, or another status Key Vault does not document for a read.
    ServerError,
    /// Key Vault could not be reached.
    Unreachable,
    /// The answer holds no usable value: empty, too large, PKCS#12, not a PEM certificate.
    BadSecret,
}

impl KeyVaultReason {
    /// The label value, and the `reason` in `/status`.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyVaultReason::TenantNotAllowed => "tenant_not_allowed",
            KeyVaultReason::Identity => "identity",
            KeyVaultReason::Unauthorized => "unauthorized",
            KeyVaultReason::Forbidden => "forbidden",
            KeyVaultReason::NotFound => "not_found",
            KeyVaultReason::Throttled => "throttled",
            KeyVaultReason::ServerError => "server_error",
            KeyVaultReason::Unreachable => "unreachable",
            KeyVaultReason::BadSecret => "bad_secret",
        }
    }
}

/// A credential that cannot be read is permanent until someone fixes the file or variable;
/// Key Vault throttling, failing or unreachable is transient, with its `Retry-After`.
impl From<CredentialError> for RefreshError {
    fn from(err: CredentialError) -> Self {
        let (class, retry_after) = match &err {
            CredentialError::KeyVault {
                transient: true,
                retry_after,
                ..
            } => (ErrorClass::Transient, retry_after.map(RetryAfter::capped)),
            _ => (ErrorClass::Permanent, None),
        };
        let mut refresh = RefreshError::local(class, Reason::Credential, err.to_string());
        refresh.retry_after = retry_after;
        refresh
    }
}

impl From<ReadError> for CredentialError {
    fn from(err: ReadError) -> Self {
        match err {
            ReadError::Io { path, source } => CredentialError::File { path, source },
            other => CredentialError::Unreadable(other),
        }
    }
}

/// Credentials named on the command line (`check --load-credential name:path`), read the way
/// the unit's `LoadCredential=name:path` hands them to the service: so that `check` run by hand
/// after an install reads the very file the service will. Used only where
/// `CREDENTIALS_DIRECTORY` is not set (inside the unit, systemd's copy wins).
static LOADED_CREDENTIALS: std::sync::OnceLock<Vec<(String, PathBuf)>> = std::sync::OnceLock::new();

/// Sets the credentials named on the command line; the first call wins (one per process).
pub fn load_credentials(credentials: Vec<(String, PathBuf)>) {
    let _ = LOADED_CREDENTIALS.set(credentials);
}

/// Reads a secret from where the config says it lives, now. Files are read off the async
/// workers, with a size cap and a deadline, and only if they are regular files (a FIFO or a hung
/// mount costs this tenant a failed refresh, never the daemon).
///
/// # Errors
/// The source is missing, unreadable, not a regular file, too large, empty, or too slow.
pub(crate) async fn read_secret(source: &SecretSource) -> Result<SecretString, CredentialError> {
    match source {
        SecretSource::KeyVault(url) => Err(CredentialError::KeyVaultUnavailable(url.clone())),
        SecretSource::Env(name) => {
            let value =
                std::env::var(name).map_err(|_| CredentialError::MissingEnv(name.clone()))?;
            if value.is_empty() {
                return Err(CredentialError::Empty(format!(
                    "environment variable {name}"
                )));
            }
            Ok(SecretString::from(value))
        }
        SecretSource::File(path) => read_file(path.clone()).await,
        SecretSource::Systemd(name) => match std::env::var_os("CREDENTIALS_DIRECTORY") {
            Some(dir) => read_file(PathBuf::from(dir).join(name)).await,
            None => match LOADED_CREDENTIALS
                .get()
                .and_then(|loaded| loaded.iter().find(|(loaded, _)| loaded == name))
            {
                Some((_, path)) => read_file(path.clone()).await,
                None => Err(CredentialError::NoCredentialsDirectory(name.clone())),
            },
        },
        SecretSource::Inline(secret) => Ok(secret.clone()),
    }
}

/// A secret file's text, one trailing newline trimmed. Kubernetes Secret volumes are symlinks
/// into `..data/`, so symlinks are followed.
async fn read_file(path: PathBuf) -> Result<SecretString, CredentialError> {
    let bytes = safe_read::read(&path, MAX_SECRET_BYTES, Symlinks::Follow).await?;
    let text = String::from_utf8(bytes).map_err(|_| CredentialError::Certificate {
        path: path.clone(),
        message: "is not UTF-8 text".to_owned(),
    })?;
    let trimmed = text
        .strip_suffix("\r\n")
        .or_else(|| text.strip_suffix('\n'))
        .unwrap_or(&text);
    if trimmed.is_empty() {
        return Err(CredentialError::Empty(format!(
            "secret file {}",
            path.display()
        )));
    }
    Ok(SecretString::from(trimmed.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    #[tokio::test]
    async fn file_is_trimmed_and_reread() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, "first\n").unwrap();
        let source = SecretSource::File(path.clone());
        assert_eq!(read_secret(&source).await.unwrap().expose_secret(), "first");
        std::fs::write(&path, "second\r\n").unwrap();
        assert_eq!(
            read_secret(&source).await.unwrap().expose_secret(),
            "second"
        );
        std::fs::write(&path, "\n").unwrap();
        assert!(matches!(
            read_secret(&source).await,
            Err(CredentialError::Empty(_))
        ));
    }

    #[tokio::test]
    async fn errors_name_the_source_not_the_value() {
        let err = read_secret(&SecretSource::Env("POWERBI_TOKEND_TEST_UNSET_VAR".into()))
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "environment variable POWERBI_TOKEND_TEST_UNSET_VAR is not set"
        );
        let err = read_secret(&SecretSource::File("/nonexistent/secret".into()))
            .await
            .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("cannot read secret file /nonexistent/secret")
        );
    }

    #[tokio::test]
    async fn hardening_5_a_fifo_or_device_is_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        for path in [fifo, PathBuf::from("/dev/zero")] {
            let read = tokio::time::timeout(
                std::time::Duration::from_secs(5),
                read_secret(&SecretSource::File(path.clone())),
            )
            .await
            .expect("a secret read never hangs");
            let err = read.unwrap_err();
            assert!(err.to_string().contains("not a regular file"), "{err}");
        }
    }
}
