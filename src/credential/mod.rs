//! How a tenant proves itself to Entra.
//!
//! One module per credential kind. Each one produces the credential part of the token request;
//! the rest of the form (grant type, client ID, scope or resource) is the same for all of them and
//! lives in [`crate::client`].

mod secret;

pub use secret::{CredentialError, SecretSource};

use secrecy::SecretString;

use crate::config::CredentialConfig;

/// The credential fields of one token request, built fresh for every request so that a rotated
/// secret file is used at the next refresh.
pub struct CredentialForm {
    /// Form fields whose values are secret (`client_secret`, `client_assertion`).
    pub fields: Vec<(&'static str, SecretString)>,
}

/// Builds the credential fields for a request.
///
/// # Errors
/// The credential's source cannot be read (missing env var, unreadable file).
pub fn form_for(credential: &CredentialConfig) -> Result<CredentialForm, CredentialError> {
    match credential {
        CredentialConfig::ClientSecret(source) => Ok(CredentialForm {
            fields: vec![("client_secret", source.read()?)],
        }),
    }
}
