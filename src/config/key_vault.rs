//! `[key_vault]`: the identity that reads secrets from Azure Key Vault (a managed identity or a
//! workload identity, chosen with the same keys as a tenant's). The secret URLs tenants name are
//! checked with the other values (`values.rs`).

use std::sync::Arc;
use std::time::Duration;

use super::loader::{Loader, Reported, TenantInput};
use super::raw::{RawKeyVault, RawTenant};
use super::types::{ApiVersion, CredentialConfig, KeyVaultConfig, Provider, TenantConfig};
use crate::cloud::Cloud;

/// The shortest `refresh_interval`: Key Vault's limits are per vault, shared with every other
/// reader of it.
const REFRESH_INTERVAL_MIN: Duration = Duration::from_secs(60);

impl Loader<'_> {
    /// `[key_vault]`: its identity as a token request for the Key Vault resource of its cloud.
    pub(super) fn key_vault(&mut self, raw: RawKeyVault, offset: usize) -> Option<KeyVaultConfig> {
        let before = self.problems.len();
        let refresh_interval = match &raw.refresh_interval {
            None => Some(KeyVaultConfig::DEFAULT_REFRESH_INTERVAL),
            Some(text) => match humantime::parse_duration(text.get_ref()) {
                Ok(interval) if interval >= REFRESH_INTERVAL_MIN => Some(interval),
                _ => {
                    self.problem(
                        Some(text.span().start),
                        "key_vault.refresh_interval".to_owned(),
                        format!(
                            "expected a duration of at least 1m such as \"1h\", got {:?}",
                            text.get_ref()
                        ),
                    );
                    None
                }
            },
        };
        if raw.credential.is_none() {
            self.problem(
                Some(offset),
                "key_vault.credential".to_owned(),
                "missing; expected credential = \"managed_identity\" or \"workload_identity\": the identity that reads the vault".to_owned(),
            );
            return None;
        }
        let cloud = raw
            .cloud
            .as_ref()
            .map_or_else(Cloud::default, |c| *c.get_ref());
        let table = RawTenant {
            credential: raw.credential,
            managed_identity: raw.managed_identity,
            client_id: raw.client_id,
            tenant_id: raw.tenant_id,
            federated_token_file: raw.federated_token_file,
            authority_host: raw.authority_host,
            ..RawTenant::default()
        };
        let defaults = RawTenant::default();
        let input = TenantInput {
            raw: &table,
            defaults: &defaults,
            offset,
            label: "key_vault".to_owned(),
            broken: &[],
            section: Some("key_vault"),
        };
        let (credential, kind) = self.tenant_credential(&input);
        let credential = match credential {
            Some(credential @ CredentialConfig::ManagedIdentity(_))
            | Some(credential @ CredentialConfig::WorkloadIdentity { .. }) => Some(credential),
            Some(_) => None,
            None => None,
        };
        if credential.is_none() && self.problems.len() == before {
            self.problem(
                Some(offset),
                "key_vault.credential".to_owned(),
                "expected credential = \"managed_identity\" or \"workload_identity\": the identity that reads the vault".to_owned(),
            );
        }
        let (tenant_id, client_id) = if kind.managed {
            let client_id = match &credential {
                Some(CredentialConfig::ManagedIdentity(managed)) => {
                    managed.identity.client_id().map(str::to_owned)
                }
                _ => None,
            };
            (Ok(None), Ok(client_id))
        } else {
            (
                self.tenant_id(&input, Provider::Entra, kind),
                self.client_id(&input, kind).map(Some).ok_or(Reported),
            )
        };
        let authority_host = self.authority_host(&input, cloud, kind);
        if self.problems.len() != before {
            return None;
        }
        let identity = TenantConfig {
            name: "key_vault".to_owned(),
            tenant_id: tenant_id.ok()?,
            client_id: client_id.ok()?.map(|id| self.shared(id)),
            credential: credential?,
            oauth2: None,
            authority_host: self.shared(authority_host?),
            api: ApiVersion::V2,
            resource: self.shared(cloud.key_vault_resource().to_owned()),
            refresh_at: 0.5,
            jitter: 0.0,
            sinks: Vec::new(),
            schedule: None,
            powerbi: None,
            line: Some(self.line_of(offset)),
        };
        Some(KeyVaultConfig {
            identity: Arc::new(identity),
            refresh_interval: refresh_interval?,
        })
    }
}
