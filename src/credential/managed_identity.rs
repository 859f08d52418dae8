//! Azure managed identity: the tenant proves nothing itself; the host's endpoint (IMDS, or App
//! Service and its relatives with `IDENTITY_ENDPOINT` and `IDENTITY_HEADER`) issues the token
//! to whoever runs there.

use super::secret::read_secret;
use crate::client::{ManagedIdentityEndpoint, TokenClient};
use crate::config::{ManagedIdentityConfig, ManagedIdentitySource, TenantConfig};
use crate::error::RefreshError;
use crate::token::AccessToken;

/// Asks the host's managed identity endpoint for a token for `tenant`. App Service's
/// `IDENTITY_HEADER` is read at every attempt, like any secret: the platform rotates it.
///
/// # Errors
/// The header cannot be read (permanent), or the request failed.
pub async fn fetch(
    client: &TokenClient,
    tenant: &TenantConfig,
    managed: &ManagedIdentityConfig,
) -> Result<AccessToken, RefreshError> {
    match &managed.source {
        ManagedIdentitySource::Imds => {
            client
                .managed_identity_token(tenant, ManagedIdentityEndpoint::Imds, &managed.identity)
                .await
        }
        ManagedIdentitySource::AppService { endpoint, header } => {
            let header = read_secret(header).await?;
            let endpoint = ManagedIdentityEndpoint::AppService {
                endpoint,
                header: &header,
            };
            client
                .managed_identity_token(tenant, endpoint, &managed.identity)
                .await
        }
    }
}
