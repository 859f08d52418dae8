//! How a tenant proves itself to Entra: one module per credential kind.
//!
//! | kind | config | what is sent |
//! |---|---|---|
//! | client secret | `client_secret = { env / file / systemd }` | `client_secret`, read at every refresh |
//! | … in Key Vault | `client_secret = { key_vault = "https://…/secrets/…" }` | `client_secret`, read with `[key_vault]`'s identity and cached ([`key_vault`]) |
//! | certificate | `client_certificate = { cert, key }` | a fresh signed JWT `client_assertion` |
//! | workload identity | `credential = "workload_identity"` | the federated token file as `client_assertion` |
//! | managed identity | `credential = "managed_identity"` | nothing: a GET to IMDS or App Service |
//!
//! [`Credential`] is the per-tenant runtime state (loaded certificate, cached federated token);
//! the rest of the request is built by [`crate::client`]. [`verify`] reads every file and
//! variable a tenant's credential names, for `check`.

pub mod certificate;
mod expiry;
pub mod federated;
pub mod key_vault;
mod secret;
mod verify;
pub mod x509;

pub use expiry::{CredentialExpiry, CredentialKind};
pub use secret::{CredentialError, read_secret};
pub use verify::{Verified, verify};

use secrecy::SecretString;

use crate::config::{CredentialConfig, ManagedIdentityConfig, SecretSource};
use crate::error::RefreshError;

use certificate::CertificateCredential;
use federated::FederatedCredential;

/// `client_assertion_type` for JWT assertions (RFC 7523).
pub const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// AADSTS700024: the assertion is outside its validity window.
const ASSERTION_EXPIRED: u32 = 700_024;

/// A tenant's credential at run time.
pub enum Credential {
    /// A client secret, read from its source at every refresh.
    Secret {
        /// Where it is read from.
        source: SecretSource,
        /// `client_secret_expires`, Unix seconds.
        expires_on: Option<i64>,
        /// A secret in Key Vault: its `attributes.exp` at the last read.
        vault_expires_on: Option<i64>,
    },
    /// A certificate that signs assertions. Boxed, like the other large kinds: a secret, the
    /// common case, keeps a sleeping tenant small.
    Certificate(Box<CertificateCredential>),
    /// A federated token file.
    Federated(Box<FederatedCredential>),
    /// A managed identity endpoint.
    ManagedIdentity(Box<ManagedIdentityConfig>),
}

impl Credential {
    /// Runtime state for a configured credential.
    pub fn new(config: &CredentialConfig) -> Credential {
        match config {
            CredentialConfig::ClientSecret { source, expires_on } => Credential::Secret {
                source: source.clone(),
                expires_on: *expires_on,
                vault_expires_on: None,
            },
            CredentialConfig::Certificate(certificate) => {
                Credential::Certificate(Box::new(CertificateCredential::new(certificate.clone())))
            }
            CredentialConfig::WorkloadIdentity { token_file } => {
                Credential::Federated(Box::new(FederatedCredential::new(token_file.clone())))
            }
            CredentialConfig::ManagedIdentity(source) => {
                Credential::ManagedIdentity(Box::new(source.clone()))
            }
        }
    }

    /// The credential fields of a token request to `token_url` (the assertion's audience).
    ///
    /// # Errors
    /// The secret, certificate or token file cannot be read; or this is a managed identity,
    /// which sends no form.
    pub async fn form(
        &mut self,
        client_id: &str,
        token_url: &str,
    ) -> Result<Vec<(&'static str, SecretString)>, CredentialError> {
        match self {
            Credential::Secret { source, .. } => {
                Ok(vec![("client_secret", read_secret(source).await?)])
            }
            Credential::Certificate(certificate) => Ok(vec![
                ("client_assertion_type", SecretString::from(JWT_BEARER)),
                (
                    "client_assertion",
                    certificate.assertion(client_id, token_url).await?,
                ),
            ]),
            Credential::Federated(federated) => Ok(vec![
                ("client_assertion_type", SecretString::from(JWT_BEARER)),
                ("client_assertion", federated.assertion().await?),
            ]),
            Credential::ManagedIdentity(_) => Err(CredentialError::NotForm),
        }
    }

    /// Lets the credential react to a failure: a federated token Entra found outside its
    /// validity is re-read at once instead of after the cache interval.
    pub fn after_failure(&mut self, err: &RefreshError) {
        if let Credential::Federated(federated) = self
            && err.aadsts.contains(&ASSERTION_EXPIRED)
        {
            federated.invalidate();
        }
    }

    /// When the credential itself expires, and its kind: for the expiry metric and `check`.
    pub fn expiry(&self) -> Option<CredentialExpiry> {
        match self {
            Credential::Secret {
                expires_on,
                vault_expires_on,
                ..
            } => expires_on
                .or(*vault_expires_on)
                .map(CredentialExpiry::client_secret),
            Credential::Certificate(certificate) => {
                certificate.not_after().map(CredentialExpiry::certificate)
            }
            Credential::Federated(_) | Credential::ManagedIdentity(_) => None,
        }
    }
}
