//! `[key_vault]`: the identities that read secrets from Azure Key Vault (each a managed identity
//! or a workload identity, chosen with the same keys as a tenant's): `[key_vault]`'s own, the
//! default, and any number of `[key_vault.identities.<name>]` that tenants choose with
//! `key_vault_credential = "<name>"`. The secret URLs tenants name are checked with the other
//! values (`values.rs`).

use std::sync::Arc;
use std::time::Duration;

use toml::Spanned;
use toml::de::DeValue;

use super::loader::{Loader, Reported, TenantInput, inherited};
use super::raw::{
    RawDuration, RawKeyVault, RawKeyVaultIdentity, RawKeyVaultSection, RawNamedIdentity, RawTenant,
};
use super::tenant::is_valid_name;
use super::types::{
    AllowedTenants, ApiVersion, CredentialConfig, KeyVaultConfig, KeyVaultIdentity, Provider,
    TenantConfig,
};
use super::values::is_guid;
use crate::cloud::Cloud;

/// The shortest `refresh_interval`: Key Vault's limits are per vault, shared with every other
/// reader of it.
const REFRESH_INTERVAL_MIN: Duration = Duration::from_secs(60);

/// The longest identity name: it is a metric label and a `/status` field.
const MAX_IDENTITY_NAME: usize = 64;

/// What `key_vault_allowed_tenants` takes, for its messages.
const ALLOWED_TENANTS_EXPECTED: &str = "expected a list of tenant IDs (GUIDs, as Key Vault's challenges name tenants) such as [\"72f988bf-86f1-41af-91ab-2d7cd011db47\"], or [\"*\"] for any tenant";

impl Loader<'_> {
    /// Reads the `[key_vault]` table: each `[key_vault.identities.<name>]` on its own, then the
    /// rest. `Err` when `[key_vault]` itself could not be read (recorded).
    pub(super) fn key_vault_section(
        &mut self,
        value: Spanned<DeValue<'_>>,
    ) -> Result<RawKeyVaultSection, Reported> {
        let offset = value.span().start;
        let span = value.span();
        let (value, identities) = match value.into_inner() {
            DeValue::Table(mut table) => {
                let identities = table.remove("identities");
                (Spanned::new(span, DeValue::Table(table)), identities)
            }
            other => (Spanned::new(span, other), None),
        };
        let (identities, complete) = match identities {
            Some(identities) => self.named_identities(identities),
            None => (Vec::new(), true),
        };
        let (raw, broken) = self
            .section::<RawKeyVault>(value, "key_vault")
            .ok_or(Reported)?;
        let (identity, refresh_interval) = raw.into_identity();
        Ok(RawKeyVaultSection {
            identity,
            refresh_interval,
            offset,
            broken,
            identities,
            complete,
        })
    }

    /// Every `[key_vault.identities.<name>]` that could be read, in name order, and whether all
    /// could.
    fn named_identities(&mut self, value: Spanned<DeValue<'_>>) -> (Vec<RawNamedIdentity>, bool) {
        let DeValue::Table(table) = value.get_ref() else {
            self.problem(
                Some(value.span().start),
                "key_vault.identities".to_owned(),
                "expected tables such as [key_vault.identities.partner], each naming an identity with the keys of [key_vault]".to_owned(),
            );
            return (Vec::new(), false);
        };
        let mut identities = Vec::with_capacity(table.len());
        let mut complete = true;
        for (key, item) in table.iter() {
            let name = Spanned::new(key.span(), key.get_ref().to_string());
            let label = format!("key_vault.identities.{}", name.get_ref());
            let offset = item.span().start;
            match self.section::<RawKeyVaultIdentity>(item.clone(), &label) {
                Some((raw, broken)) => identities.push(RawNamedIdentity {
                    name,
                    offset,
                    raw,
                    broken,
                }),
                None => complete = false,
            }
        }
        identities.sort_by(|a, b| a.name.get_ref().cmp(b.name.get_ref()));
        (identities, complete)
    }

    /// `[key_vault]`'s rules: `refresh_interval`, its own identity (if it has one) and every
    /// named one, each as a token request for the Key Vault resource of its cloud. `None` when
    /// any has a problem (all of them recorded).
    pub(super) fn key_vault(&mut self, section: RawKeyVaultSection) -> Option<KeyVaultConfig> {
        let before = self.problems.len();
        let refresh_interval = self.key_vault_refresh_interval(section.refresh_interval.as_ref());
        let mut identities = Vec::with_capacity(section.identities.len() + 1);
        if section.identity.credential.is_some() {
            let table = Table {
                name: KeyVaultConfig::DEFAULT_IDENTITY,
                label: "key_vault",
                offset: section.offset,
                broken: &section.broken,
            };
            identities.extend(self.key_vault_identity(&table, section.identity));
        } else if !section.identity.is_empty() || section.identities.is_empty() {
            self.problem(
                Some(section.offset),
                "key_vault.credential".to_owned(),
                "missing; expected credential = \"managed_identity\" or \"workload_identity\": the identity that reads the vault (or only [key_vault.identities.<name>] tables, each with one)".to_owned(),
            );
        }
        for named in section.identities {
            let name = named.name.get_ref().clone();
            if !self.identity_name(&named.name) {
                continue;
            }
            let table = Table {
                name: &name,
                label: &format!("key_vault.identities.{name}"),
                offset: named.offset,
                broken: &named.broken,
            };
            identities.extend(self.key_vault_identity(&table, named.raw));
        }
        if self.problems.len() != before {
            return None;
        }
        Some(KeyVaultConfig {
            identities,
            refresh_interval: refresh_interval?,
        })
    }

    /// A named identity's `<name>`: safe as a metric label, and not the default's.
    fn identity_name(&mut self, name: &Spanned<String>) -> bool {
        let text = name.get_ref();
        let message = if text == KeyVaultConfig::DEFAULT_IDENTITY {
            format!(
                "{text:?} is [key_vault]'s own identity; give [key_vault.identities.{text}] another name"
            )
        } else if !is_valid_name(text) || text.len() > MAX_IDENTITY_NAME {
            format!(
                "{text:?} is not a valid identity name: use up to {MAX_IDENTITY_NAME} letters, digits, '.', '_' and '-'"
            )
        } else {
            return true;
        };
        self.problem(
            Some(name.span().start),
            format!("key_vault.identities.{text}"),
            message,
        );
        false
    }

    /// `refresh_interval`: how long a secret read from the vault is used, at least
    /// [`REFRESH_INTERVAL_MIN`].
    fn key_vault_refresh_interval(
        &mut self,
        raw: Option<&Spanned<RawDuration>>,
    ) -> Option<Duration> {
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

    /// One identity's table: its ids and credential checked by the tenant rules, and
    /// `key_vault_allowed_tenants`; `None` if it has any problem (all of them recorded).
    fn key_vault_identity(
        &mut self,
        table: &Table<'_>,
        raw: RawKeyVaultIdentity,
    ) -> Option<KeyVaultIdentity> {
        let before = self.problems.len();
        let cloud = raw
            .cloud
            .as_ref()
            .map_or_else(Cloud::default, |c| *c.get_ref());
        let allowed_raw = raw.key_vault_allowed_tenants.clone();
        let tenant_table = identity_table(raw);
        let defaults = RawTenant::default();
        let input = TenantInput {
            raw: &tenant_table,
            defaults: &defaults,
            offset: table.offset,
            // `check` names the identity's token file problems by it.
            label: table.label.to_owned(),
            broken: table.broken,
            section: Some(table.label),
        };
        let identity = self.identity_request(&input, cloud, before);
        let managed = matches!(
            identity.as_ref().map(|identity| &identity.credential),
            Some(CredentialConfig::ManagedIdentity(_))
        );
        let allowed_tenants = self.allowed_tenants(&input, allowed_raw.as_ref(), managed);
        if self.problems.len() != before {
            return None;
        }
        Some(KeyVaultIdentity {
            name: table.name.to_owned(),
            identity: Arc::new(identity?),
            allowed_tenants: allowed_tenants?,
        })
    }

    /// The identity as a tenant that asks for the vault's resource, checked by the tenant
    /// rules; `None` if its table has any problem since `before` (all of them recorded).
    fn identity_request(
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
            name: input.label.clone(),
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
            key_vault_credential: None,
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
                input.key("credential"),
                "expected credential = \"managed_identity\" or \"workload_identity\": the identity that reads the vault".to_owned(),
            );
        }
        credential
    }

    /// `key_vault_allowed_tenants`: a list of tenant GUIDs, or `["*"]`. A managed identity may
    /// not have one: it gets tokens from its own tenant only, so the list would promise what
    /// it cannot do.
    fn allowed_tenants(
        &mut self,
        input: &TenantInput<'_>,
        raw: Option<&Spanned<toml::Value>>,
        managed: bool,
    ) -> Option<AllowedTenants> {
        let Some(raw) = raw else {
            return Some(AllowedTenants::default());
        };
        let at = Some(raw.span().start);
        let key = input.key("key_vault_allowed_tenants");
        let Some(items) = raw.get_ref().as_array() else {
            let message = format!(
                "{ALLOWED_TENANTS_EXPECTED}, got a {}",
                raw.get_ref().type_str()
            );
            self.problem(at, key, message);
            return None;
        };
        let mut tenants = Vec::with_capacity(items.len());
        let mut any = false;
        for (index, item) in items.iter().enumerate() {
            match item.as_str() {
                Some("*") => any = true,
                Some(tenant) if is_guid(tenant) => tenants.push(tenant.to_ascii_lowercase()),
                _ => {
                    let message = format!("{ALLOWED_TENANTS_EXPECTED}; got {item}");
                    self.problem(at, format!("{key}[{index}]"), message);
                    return None;
                }
            }
        }
        if managed && (any || !tenants.is_empty()) {
            self.problem(
                at,
                key,
                "a managed identity gets tokens from its own tenant only, so it cannot follow a vault's challenge to another; read vaults of other tenants with a workload identity of a multi-tenant app (credential = \"workload_identity\")".to_owned(),
            );
            return None;
        }
        Some(if any {
            AllowedTenants::Any
        } else {
            AllowedTenants::Only(tenants)
        })
    }

    /// `[defaults] key_vault_credential`, checked once: it must name a known identity.
    pub(super) fn defaults_key_vault_credential(&mut self, defaults: &RawTenant) {
        let Some(name) = &defaults.key_vault_credential else {
            return;
        };
        let message = match &self.key_vault_names {
            None => "names a Key Vault identity, and there is no [key_vault] section".to_owned(),
            Some(names) if names.complete && !names.knows(name.get_ref()) => {
                unknown_identity(name.get_ref(), &names.listed())
            }
            Some(_) => return,
        };
        self.problem(
            Some(name.span().start),
            "defaults.key_vault_credential".to_owned(),
            message,
        );
    }

    /// The Key Vault identity that reads a tenant's credential: `key_vault_credential` (the
    /// tenant's or `[defaults]`'), else `[key_vault]`'s own. `Ok(None)` for a credential kept
    /// outside Key Vault, where the tenant's own `key_vault_credential` is a problem.
    pub(super) fn tenant_key_vault_credential(
        &mut self,
        input: &TenantInput<'_>,
        credential: Option<&CredentialConfig>,
    ) -> Result<Option<Arc<str>>, Reported> {
        let own = input.raw.key_vault_credential.as_ref();
        let Some(credential) = credential else {
            return Ok(None);
        };
        if credential.key_vault_url().is_none() {
            if let Some(own) = own {
                self.problem(
                    Some(own.span().start),
                    input.key("key_vault_credential"),
                    "applies only to a client_secret or client_certificate kept in Key Vault (key_vault = \"https://…\")".to_owned(),
                );
                return Err(Reported);
            }
            return Ok(None);
        }
        let names = self.key_vault_names.as_ref().ok_or(Reported)?;
        let name = match inherited!(input, key_vault_credential) {
            Some(name) if names.knows(name.get_ref()) => name.get_ref().clone(),
            Some(name) => {
                // `[defaults]`' name was reported once; an unreadable table's, as unreadable.
                if names.complete && own.is_some() {
                    let message = unknown_identity(name.get_ref(), &names.listed());
                    self.problem(
                        Some(name.span().start),
                        input.key("key_vault_credential"),
                        message,
                    );
                }
                return Err(Reported);
            }
            None if names.default => KeyVaultConfig::DEFAULT_IDENTITY.to_owned(),
            None => {
                let message = format!(
                    "missing; the credential is in Key Vault and [key_vault] has no identity of its own: name the one that reads it, {}",
                    names.listed()
                );
                self.missing(input, &["key_vault_credential"], &message);
                return Err(Reported);
            }
        };
        Ok(Some(self.shared(name)))
    }
}

/// One identity table as the rules name it.
struct Table<'t> {
    /// The identity's name: [`KeyVaultConfig::DEFAULT_IDENTITY`] or `<name>`.
    name: &'t str,
    /// How problems name the table: `key_vault` or `key_vault.identities.<name>`.
    label: &'t str,
    /// Byte offset of the table.
    offset: usize,
    /// Keys removed as unreadable (already reported).
    broken: &'t [String],
}

/// The message for a `key_vault_credential` that names no identity.
fn unknown_identity(name: &str, known: &str) -> String {
    format!(
        "{name:?} is not a Key Vault identity; expected {known} (\"{default}\" is [key_vault]'s own identity, the others are [key_vault.identities.<name>] tables)",
        default = KeyVaultConfig::DEFAULT_IDENTITY
    )
}

/// An identity's keys as a tenant table, so the tenant rules check them.
fn identity_table(raw: RawKeyVaultIdentity) -> RawTenant {
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
