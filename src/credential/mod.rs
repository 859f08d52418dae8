//! How a tenant proves itself to Entra (or to a generic OAuth2 server): one module per
//! credential kind, and [`Credential::fetch`], which gets the proof where it lives and asks for
//! the token through [`crate::client`].
//!
//! | kind | config | what is sent |
//! |---|---|---|
//! | client secret | `client_secret = { env / file / systemd }` | `client_secret`, read at every refresh |
//! | … in Key Vault | `client_secret = { key_vault = "https://…/secrets/…" }` | `client_secret`, read with the tenant's Key Vault identity (`key_vault_credential`, else `[key_vault]`'s) and cached ([`key_vault`]) |
//! | certificate | `client_certificate = { cert, key }` | a fresh signed JWT `client_assertion` |
//! | workload identity | `credential = "workload_identity"` | the federated token file as `client_assertion` |
//! | managed identity | `credential = "managed_identity"` | nothing: a GET to IMDS or App Service |
//!
//! [`Credential`] is the per-tenant runtime state (loaded certificate, cached federated token,
//! a Key Vault secret's expiry); the request itself is [`crate::client`]'s, which knows no
//! credential. [`verify`] reads every file and variable a tenant's credential names, for
//! `check`; [`CredentialExpiry`] is when a credential expires, for `/status`, the metrics and
//! `check`.
//!
//! The files depend one way: `secret.rs`, `x509.rs` and `expiry.rs` at the bottom; the kinds
//! (`certificate.rs`, `federated.rs`, `managed_identity.rs`) on them; [`key_vault`], whose own
//! identity gets its tokens with `managed_identity.rs` or `federated.rs`, on those; this file,
//! which picks the kind and reads Key Vault for the tenants that keep their secret there, on
//! all of them.

pub mod certificate;
mod expiry;
pub mod federated;
pub mod key_vault;
mod managed_identity;
mod secret;
mod verify;
pub mod x509;

pub use expiry::CredentialExpiry;
pub(crate) use expiry::CredentialKind;
pub use secret::load_credentials;
pub(crate) use secret::{CredentialError, read_secret};
pub use verify::{Verified, verify};

use secrecy::SecretString;

use crate::client::{self, AppProof, TokenClient};
use crate::config::{CredentialConfig, ManagedIdentityConfig, SecretSource, TenantConfig};
use crate::error::{ErrorClass, RefreshError};
use crate::token::AccessToken;

use certificate::CertificateCredential;
use federated::FederatedCredential;
use key_vault::KeyVault;

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

    /// Requests a token for `tenant` through `client`, proving it with this credential; a
    /// secret or certificate kept in Azure Key Vault is read through `key_vault` (the reader of
    /// the tenant's Key Vault identity, shared by every tenant that names it).
    ///
    /// # Errors
    /// A classified [`RefreshError`]; never one that contains the secret.
    pub async fn fetch(
        &mut self,
        client: &TokenClient,
        key_vault: Option<&KeyVault>,
        tenant: &TenantConfig,
    ) -> Result<AccessToken, RefreshError> {
        let mut result = match (&mut *self, &tenant.oauth2) {
            (Credential::ManagedIdentity(managed), _) => {
                return managed_identity::fetch(client, tenant, managed).await;
            }
            (
                Credential::Secret {
                    source,
                    vault_expires_on,
                    ..
                },
                oauth2,
            ) => {
                let secret = client_secret(source, vault_expires_on, client, key_vault).await?;
                match oauth2 {
                    Some(oauth2) => client.oauth2_token(tenant, oauth2, &secret).await,
                    None => client.entra_token(tenant, &AppProof::Secret(secret)).await,
                }
            }
            (_, Some(_)) => return Err(CredentialError::NotForOAuth2.into()),
            (Credential::Federated(federated), None) => {
                return federated.fetch(client, tenant).await;
            }
            (Credential::Certificate(certificate), None) => {
                let assertion = assertion(certificate, client, key_vault, tenant).await?;
                client
                    .entra_token(tenant, &AppProof::Assertion(assertion))
                    .await
            }
        };
        if let (Err(err), Some(key_vault)) = (&mut result, key_vault) {
            after_rejection(self, key_vault, err);
        }
        result
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

/// A client secret from where it lives: Key Vault (read through `key_vault`, cached and shared)
/// or a local source. A Key Vault secret's expiry is remembered in `vault_expires_on`, for the
/// expiry metric.
async fn client_secret(
    source: &SecretSource,
    vault_expires_on: &mut Option<i64>,
    client: &TokenClient,
    key_vault: Option<&KeyVault>,
) -> Result<SecretString, CredentialError> {
    match (source, key_vault) {
        (SecretSource::KeyVault(url), Some(key_vault)) => {
            let secret = key_vault.secret(client, url).await?;
            *vault_expires_on = secret.expires_on;
            Ok(secret.value)
        }
        (source, _) => read_secret(source).await,
    }
}

/// A fresh client assertion for `tenant`, signed with the certificate and key in their files or
/// in Key Vault (read through `key_vault`).
async fn assertion(
    certificate: &mut CertificateCredential,
    client: &TokenClient,
    key_vault: Option<&KeyVault>,
    tenant: &TenantConfig,
) -> Result<SecretString, RefreshError> {
    let (token_url, client_id) = client::app_identity(tenant)?;
    let signed = match (certificate.key_vault().map(str::to_owned), key_vault) {
        (None, _) => certificate.assertion(client_id, &token_url).await,
        (Some(url), None) => Err(CredentialError::KeyVaultUnavailable(url)),
        (Some(url), Some(key_vault)) => {
            let secret = key_vault.secret(client, &url).await?;
            secret.require_pem(&url)?;
            certificate.assertion_from_pem(&secret.value, client_id, &token_url)
        }
    };
    Ok(signed?)
}

/// After Entra rejected a secret or certificate read from Key Vault, reads it again at the next
/// attempt (a rotation) and makes the failure transient, so that attempt comes after the
/// backoff, not after the permanent retry interval.
fn after_rejection(credential: &Credential, key_vault: &KeyVault, err: &mut RefreshError) {
    let url = match credential {
        Credential::Secret {
            source: SecretSource::KeyVault(url),
            ..
        } => Some(url.as_str()),
        Credential::Certificate(certificate) => certificate.key_vault(),
        _ => None,
    };
    if let Some(url) = url
        && key_vault::rejects_credential(&err.aadsts)
        && key_vault.reject(url)
    {
        err.class = ErrorClass::Transient;
        err.message
            .push_str(" (reading the secret from Key Vault again: it may have been rotated)");
    }
}
