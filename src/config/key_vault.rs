//! `[key_vault]`: the identity that reads secrets from Azure Key Vault (a managed identity or a
//! workload identity, chosen with the same keys as a tenant's). The secret URLs tenants name are
//! checked with the other values (`values.rs`).

use std::sync::Arc;
use std::time::Duration;

use toml::Spanned;

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
        let refresh_interval = self.key_vault_refresh_interval(raw.refresh_interval.as_ref());
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
        let table = identity_table(raw);
        let defaults = RawTenant::default();
        let input = TenantInput {
            raw: &table,
            defaults: &defaults,
            offset,
            label: "key_vault".to_owned(),
            broken: &[],
            section: Some("key_vault"),
        };
        let identity = self.key_vault_identity(&input, cloud, before);
        Some(KeyVaultConfig {
            identity: Arc::new(identity?),
            refresh_interval: refresh_interval?,
        })
    }

    /// `refresh_interval`: how long a secret read from the vault is used, at least
    /// [`REFRESH_INTERVAL_MIN`].
    fn key_vault_refresh_interval(&mut self, raw: Option<&Spanned<String>>) -> Option<Duration> {
        let Some(text) = raw else {
            return Some(KeyVaultConfig::DEFAULT_REFRESH_INTERVAL);
        };
        match humantime::parse_duration(text.get_ref()) {
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
        }
    }

    /// The identity as a tenant that asks for the vault's resource, checked by the tenant
    /// rules; `None` if `[key_vault]` has any problem since `before` (all of them recorded).
    fn key_vault_identity(
        &mut self,
        input: &TenantInput<'_>,
        cloud: Cloud,
        before: usize,
    ) -> Option<TenantConfig> {
        let (credential, kind) = self.tenant_credential(input);
        let credential = self.key_vault_credential(input, credential, before);
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
                self.tenant_id(input, Provider::Entra, kind),
                self.client_id(input, kind).map(Some).ok_or(Reported),
            )
        };
        let authority_host = self.authority_host(input, cloud, kind);
        if self.problems.len() != before {
            return None;
        }
        Some(TenantConfig {
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
            line: Some(self.line_of(input.offset)),
        })
    }

    /// The identity's credential: a managed or a workload identity, the kinds that keep no
    /// secret of their own (a secret that opens the vault would itself need a place to live).
    /// Another kind is named a problem unless the credential rules found one since `before`.
    fn key_vault_credential(
        &mut self,
        input: &TenantInput<'_>,
        credential: Option<CredentialConfig>,
        before: usize,
    ) -> Option<CredentialConfig> {
        let credential = credential.filter(|credential| {
            matches!(
                credential,
                CredentialConfig::ManagedIdentity(_) | CredentialConfig::WorkloadIdentity { .. }
            )
        });
        if credential.is_none() && self.problems.len() == before {
            self.problem(
                Some(input.offset),
                "key_vault.credential".to_owned(),
                "expected credential = \"managed_identity\" or \"workload_identity\": the identity that reads the vault".to_owned(),
            );
        }
        credential
    }
}

/// `[key_vault]`'s identity keys as a tenant table, so the tenant rules check them.
fn identity_table(raw: RawKeyVault) -> RawTenant {
    RawTenant {
        credential: raw.credential,
        managed_identity: raw.managed_identity,
        client_id: raw.client_id,
        tenant_id: raw.tenant_id,
        federated_token_file: raw.federated_token_file,
        authority_host: raw.authority_host,
        ..RawTenant::default()
    }
}
