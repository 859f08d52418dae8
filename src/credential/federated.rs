//! Workload identity federation: the assertion is a token someone else issued (a Kubernetes
//! projected service-account token), read from a file.
//!
//! Kubernetes rotates the file at 80 % of the token's lifetime (at least an hour), so re-reading
//! it every five minutes always sends a valid token while keeping file reads negligible. After
//! AADSTS700024 (assertion outside its validity) the file is re-read at once: the cached copy is
//! stale.

use secrecy::SecretString;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::secret::{CredentialError, read_secret};
use crate::client::{AppProof, TokenClient};
use crate::config::{SecretSource, TenantConfig};
use crate::error::RefreshError;
use crate::token::AccessToken;

/// How long a read token is reused before the file is read again.
pub(crate) const REREAD_AFTER: Duration = Duration::from_secs(300);

/// AADSTS700024: the assertion is outside its validity window.
const ASSERTION_EXPIRED: u32 = 700_024;

/// The federated token file of one tenant, with a short-lived cache.
pub struct FederatedCredential {
    /// `AZURE_FEDERATED_TOKEN_FILE` or `federated_token_file`.
    token_file: PathBuf,
    /// The last read token and when it was read.
    cached: Option<(Instant, SecretString)>,
}

impl FederatedCredential {
    /// A credential reading `token_file`.
    pub fn new(token_file: PathBuf) -> Self {
        FederatedCredential {
            token_file,
            cached: None,
        }
    }

    /// The assertion: the file's contents, re-read when older than [`REREAD_AFTER`].
    ///
    /// # Errors
    /// The file is unreadable or empty.
    pub async fn assertion(&mut self) -> Result<SecretString, CredentialError> {
        if let Some((read_at, token)) = &self.cached
            && read_at.elapsed() < REREAD_AFTER
        {
            return Ok(token.clone());
        }
        let token = read_secret(&SecretSource::File(self.token_file.clone())).await?;
        self.cached = Some((Instant::now(), token.clone()));
        Ok(token)
    }

    /// Forgets the cached token (after Entra said it is outside its validity).
    pub(crate) fn invalidate(&mut self) {
        self.cached = None;
    }

    /// Asks Entra for a token for `tenant` with the file's token as the assertion. When Entra
    /// finds it outside its validity, the file is read again at the next attempt instead of
    /// after [`REREAD_AFTER`].
    ///
    /// # Errors
    /// The file cannot be read (permanent), or the token request failed.
    pub async fn fetch(
        &mut self,
        client: &TokenClient,
        tenant: &TenantConfig,
    ) -> Result<AccessToken, RefreshError> {
        let assertion = self.assertion().await?;
        let result = client
            .entra_token(tenant, &AppProof::Assertion(assertion))
            .await;
        if let Err(err) = &result
            && err.aadsts.contains(&ASSERTION_EXPIRED)
        {
            self.invalidate();
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    #[tokio::test]
    async fn cached_until_invalidated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "first\n").unwrap();
        let mut credential = FederatedCredential::new(path.clone());
        assert_eq!(
            credential.assertion().await.unwrap().expose_secret(),
            "first"
        );
        std::fs::write(&path, "second\n").unwrap();
        // Within five minutes the cached token is used...
        assert_eq!(
            credential.assertion().await.unwrap().expose_secret(),
            "first"
        );
        // ...unless Entra rejected it as expired.
        credential.invalidate();
        assert_eq!(
            credential.assertion().await.unwrap().expose_secret(),
            "second"
        );
    }
}
