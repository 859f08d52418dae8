//! One Key Vault identity's tokens: how it gets them (a managed or a workload identity), which
//! tenant and resource each vault asks for, and whether a vault's challenge may send it to
//! another tenant.
//!
//! A token is kept per audience (the tenant it was asked from and the Key Vault resource), and
//! each vault is remembered with the audience its last challenge asked for, as the Azure SDKs
//! cache a challenge per vault: an identity that reads a vault of its own tenant and one of a
//! customer's holds a token for each, rather than trading one for the other at every read.
//! Only audiences a vault still asks for are kept, so there are never more tokens than vaults.
//!
//! A challenge naming another tenant is followed only when the tenant is in the identity's
//! `key_vault_allowed_tenants` (azure-identity's `additionally_allowed_tenants`); otherwise the
//! read is refused, naming the tenant and the key to set, before any token is asked for there.
//! A managed identity gets tokens from its own tenant only (its host knows which, the daemon
//! does not), so for it a challenge's tenant is not followed, only named when the vault
//! refuses its token.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use super::super::federated::FederatedCredential;
use super::super::managed_identity;
use super::super::secret::{CredentialError, KeyVaultReason};
use super::challenge::Challenge;
use crate::client::TokenClient;
use crate::config::{
    CredentialConfig, KeyVaultConfig, KeyVaultIdentity, ManagedIdentityConfig, ManagedIdentityId,
    TenantConfig, is_guid,
};
use crate::error::{ErrorClass, Reason, RefreshError};
use crate::schedule;
use crate::token::AccessToken;

/// How the identity gets its tokens. Validation allows these two only, and neither keeps
/// anything in Key Vault: reading a secret never waits for another secret.
enum Identity {
    /// A managed identity: the host's endpoint.
    Managed(Box<ManagedIdentityConfig>),
    /// A workload identity: the federated token file, cached.
    Workload(FederatedCredential),
}

impl Identity {
    /// The identity a Key Vault identity's credential names; `None` for any other kind of
    /// credential, which validation never lets through.
    fn new(credential: &CredentialConfig) -> Option<Identity> {
        match credential {
            CredentialConfig::ManagedIdentity(managed) => {
                Some(Identity::Managed(Box::new(managed.clone())))
            }
            CredentialConfig::WorkloadIdentity { token_file } => Some(Identity::Workload(
                FederatedCredential::new(token_file.clone()),
            )),
            CredentialConfig::ClientSecret { .. } | CredentialConfig::Certificate(_) => None,
        }
    }

    /// A token for `request` (the identity asking for a Key Vault resource).
    async fn fetch(
        &mut self,
        client: &TokenClient,
        request: &TenantConfig,
    ) -> Result<AccessToken, RefreshError> {
        match self {
            Identity::Managed(managed) => managed_identity::fetch(client, request, managed).await,
            Identity::Workload(federated) => federated.fetch(client, request).await,
        }
    }
}

/// Whom a token is for: the tenant it is asked from (`None`: the identity's own, as
/// configured) and the Key Vault resource.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) struct Audience {
    /// Another tenant a challenge named and the identity may get tokens from.
    tenant: Option<String>,
    /// The Key Vault resource of a cloud.
    resource: Arc<str>,
}

/// The identity's tokens for Key Vault, and what fetching them needs.
pub(super) struct Access {
    /// How the identity gets its tokens; `None` for a configuration built in code with another
    /// kind of credential, whose every read then fails saying so.
    credential: Option<Identity>,
    /// The identity as configured: its name, its token request, its allowed tenants.
    config: KeyVaultIdentity,
    /// The identity in words, for messages: which identity lacks access.
    pub(super) who: String,
    /// The tokens held, by audience: at most one per audience a vault asks for.
    tokens: HashMap<Audience, AccessToken>,
    /// Per vault (scheme and host): the audience its last challenge asked for, when it is not
    /// the identity's own.
    vaults: HashMap<String, Audience>,
}

impl Access {
    /// No token yet, every vault assumed to want the identity's own.
    pub(super) fn new(config: &KeyVaultIdentity) -> Access {
        Access {
            credential: Identity::new(&config.identity.credential),
            who: describe(config),
            config: config.clone(),
            tokens: HashMap::new(),
            vaults: HashMap::new(),
        }
    }

    /// The identity's own audience: its tenant, and the Key Vault resource of its cloud.
    fn own(&self) -> Audience {
        Audience {
            tenant: None,
            resource: Arc::clone(&self.config.identity.resource),
        }
    }

    /// What `vault` asks for, as far as the daemon knows.
    fn audience(&self, vault: &str) -> Audience {
        self.vaults
            .get(vault)
            .cloned()
            .unwrap_or_else(|| self.own())
    }

    /// The token `vault` asks for: the cached one until its refresh point, else a new one from
    /// the managed identity endpoint or Entra. Never written anywhere.
    pub(super) async fn token(
        &mut self,
        client: &TokenClient,
        vault: &str,
    ) -> Result<AccessToken, CredentialError> {
        let audience = self.audience(vault);
        if let Some(token) = self.tokens.get(&audience)
            && SystemTime::now() < schedule::refresh_point(token, 0.5, 0.0)
        {
            return Ok(token.clone());
        }
        let request = self.request(&audience);
        let fetched = match &mut self.credential {
            Some(credential) => credential.fetch(client, &request).await,
            None => Err(RefreshError::local(
                ErrorClass::Permanent,
                Reason::Credential,
                "the Key Vault identity is neither a managed nor a workload identity",
            )),
        };
        match fetched {
            Ok(token) => {
                self.tokens.insert(audience, token.clone());
                Ok(token)
            }
            Err(err) => {
                let tenant = audience
                    .tenant
                    .map(|tenant| format!(" from tenant {tenant}"))
                    .unwrap_or_default();
                Err(CredentialError::key_vault(
                    KeyVaultReason::Identity,
                    format!(
                        "cannot get a token for Key Vault{tenant} as {}: {}",
                        self.who, err.message
                    ),
                    err.class != ErrorClass::Permanent,
                    err.retry_after.map(|after| after.get()),
                ))
            }
        }
    }

    /// The token request for `audience`: the configured one, or a copy asking another tenant
    /// or resource.
    fn request(&self, audience: &Audience) -> Arc<TenantConfig> {
        let own = &self.config.identity;
        if audience.tenant.is_none() && audience.resource == own.resource {
            return Arc::clone(own);
        }
        let mut request = (**own).clone();
        request.resource = Arc::clone(&audience.resource);
        if let Some(tenant) = &audience.tenant {
            request.tenant_id = Some(tenant.clone());
        }
        Arc::new(request)
    }

    /// `vault` refused the token it was sent with `challenge`: the token is dropped, and the
    /// next one is for what the challenge asks, when the identity may go there.
    ///
    /// # Errors
    /// The challenge names a tenant the identity may not get tokens from: permanent.
    pub(super) fn follow(
        &mut self,
        vault: &str,
        challenge: &Challenge,
    ) -> Result<(), CredentialError> {
        let current = self.audience(vault);
        let next = next_audience(&self.config, &current, challenge)
            .map_err(|tenant| self.not_allowed(vault, &tenant))?;
        self.tokens.remove(&current);
        let own = self.own();
        if next == own {
            self.vaults.remove(vault);
        } else {
            self.vaults.insert(vault.to_owned(), next);
        }
        let vaults = &self.vaults;
        self.tokens
            .retain(|audience, _| *audience == own || vaults.values().any(|want| want == audience));
        Ok(())
    }

    /// The refusal of a challenge to a tenant the identity may not get tokens from.
    fn not_allowed(&self, vault: &str, tenant: &str) -> CredentialError {
        let name = &self.config.name;
        let table = if name == KeyVaultConfig::DEFAULT_IDENTITY {
            "[key_vault]".to_owned()
        } else {
            format!("[key_vault.identities.{name}]")
        };
        CredentialError::key_vault(
            KeyVaultReason::TenantNotAllowed,
            format!(
                "Key Vault {vault} asks for a token from tenant {tenant}, not from the tenant of {}; add \"{tenant}\" to key_vault_allowed_tenants of Key Vault identity {name:?} ({table}) to allow it",
                self.who
            ),
            false,
            None,
        )
    }

    /// What to add to a refusal after the challenge was followed, when the vault's challenge
    /// names a tenant the token did not come from: that tenant, and for a managed identity why
    /// it cannot get a token there.
    pub(super) fn refused_tenant_hint(&self, vault: &str, challenge: &Challenge) -> String {
        let Some(tenant) = &challenge.tenant else {
            return String::new();
        };
        if self.audience(vault).tenant.as_ref() == Some(tenant)
            || self
                .config
                .identity
                .tenant_id
                .as_ref()
                .is_some_and(|own| own.eq_ignore_ascii_case(tenant))
        {
            return String::new();
        }
        match &self.config.identity.credential {
            CredentialConfig::ManagedIdentity(_) => format!(
                "; the vault asks for a token from tenant {tenant}, and a managed identity gets tokens from its own tenant only"
            ),
            _ => format!("; the vault asks for a token from tenant {tenant}"),
        }
    }
}

/// Where `challenge` sends an identity that asked with `current`: the next audience, or the
/// challenge's tenant when the identity may not go there. Its own tenant, when written as a
/// domain, cannot be told from the challenge's GUID: the identity then asks its own again,
/// and the vault decides.
fn next_audience(
    config: &KeyVaultIdentity,
    current: &Audience,
    challenge: &Challenge,
) -> Result<Audience, String> {
    let resource = challenge
        .resource
        .map_or_else(|| Arc::clone(&current.resource), Arc::from);
    let own = config.identity.tenant_id.as_deref();
    let tenant = match &challenge.tenant {
        None => current.tenant.clone(),
        Some(tenant) if own.is_some_and(|own| own.eq_ignore_ascii_case(tenant)) => None,
        Some(tenant) if config.allowed_tenants.allows(tenant) => Some(tenant.clone()),
        // A managed identity (no tenant to ask), or an own tenant written as a domain.
        Some(_) if !own.is_some_and(is_guid) => None,
        Some(tenant) => return Err(tenant.clone()),
    };
    Ok(Audience { tenant, resource })
}

/// The identity in words: `the system-assigned managed identity (Key Vault identity
/// "default")`, `the workload identity with client ID … in tenant … (Key Vault identity "eu")`.
fn describe(config: &KeyVaultIdentity) -> String {
    let identity = &config.identity;
    let what = match &identity.credential {
        CredentialConfig::ManagedIdentity(managed) => match &managed.identity {
            ManagedIdentityId::System => "the system-assigned managed identity".to_owned(),
            ManagedIdentityId::ClientId(id) => format!("the managed identity with client ID {id}"),
            ManagedIdentityId::ObjectId(id) => format!("the managed identity with object ID {id}"),
            ManagedIdentityId::ResourceId(id) => format!("the managed identity {id}"),
        },
        // Validation gives a workload identity both ids.
        _ => match (&identity.client_id, &identity.tenant_id) {
            (Some(client_id), Some(tenant_id)) => {
                format!("the workload identity with client ID {client_id} in tenant {tenant_id}")
            }
            _ => "the workload identity".to_owned(),
        },
    };
    format!("{what} (Key Vault identity {:?})", config.name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{AllowedTenants, SecretSource};

    const OWN: &str = "0d7c1a2b-3c4d-4e5f-8a9b-0c1d2e3f4a5b";
    const OTHER: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";

    fn workload(tenant_id: &str, allowed_tenants: AllowedTenants) -> KeyVaultIdentity {
        let mut identity = TenantConfig::entra(
            "key_vault",
            tenant_id,
            "33333333-3333-3333-3333-333333333333",
            SecretSource::Env("unused".to_owned()),
            "https://login.microsoftonline.com",
            "/nonexistent".into(),
        );
        identity.credential = CredentialConfig::WorkloadIdentity {
            token_file: "/nonexistent".into(),
        };
        identity.resource = "https://vault.azure.net".into();
        KeyVaultIdentity {
            name: "partner".to_owned(),
            identity: Arc::new(identity),
            allowed_tenants,
        }
    }

    fn challenge(tenant: &str, resource: Option<&'static str>) -> Challenge {
        Challenge {
            resource,
            tenant: Some(tenant.to_owned()),
        }
    }

    fn own(resource: &str) -> Audience {
        Audience {
            tenant: None,
            resource: resource.into(),
        }
    }

    #[test]
    fn a_challenge_to_another_tenant_is_followed_only_when_allowed() {
        let current = own("https://vault.azure.net");
        let refused = workload(OWN, AllowedTenants::default());
        assert_eq!(
            next_audience(&refused, &current, &challenge(OTHER, None)),
            Err(OTHER.to_owned())
        );
        for allowed in [
            AllowedTenants::Only(vec![OTHER.to_owned()]),
            AllowedTenants::Any,
        ] {
            let next = next_audience(&workload(OWN, allowed), &current, &challenge(OTHER, None));
            assert_eq!(
                next,
                Ok(Audience {
                    tenant: Some(OTHER.to_owned()),
                    resource: "https://vault.azure.net".into(),
                })
            );
        }
        // Its own tenant, in any case, is its own; the resource follows the challenge.
        let upper = OWN.to_ascii_uppercase();
        assert_eq!(
            next_audience(
                &refused,
                &current,
                &challenge(&upper, Some("https://vault.azure.cn"))
            ),
            Ok(own("https://vault.azure.cn"))
        );
        // A tenant written as a domain cannot be compared: its own is asked again.
        let domain = workload("contoso.onmicrosoft.com", AllowedTenants::default());
        assert_eq!(
            next_audience(&domain, &current, &challenge(OTHER, None)),
            Ok(current.clone())
        );
        // A challenge without a tenant keeps the one asked for before.
        let elsewhere = Audience {
            tenant: Some(OTHER.to_owned()),
            resource: "https://vault.azure.net".into(),
        };
        assert_eq!(
            next_audience(&refused, &elsewhere, &Challenge::default()),
            Ok(elsewhere.clone())
        );
    }

    #[test]
    fn tokens_are_kept_only_for_audiences_a_vault_asks_for() {
        let mut access = Access::new(&workload(OWN, AllowedTenants::Any));
        let token = AccessToken::new(
            "opaque".to_owned().into(),
            "Bearer".to_owned(),
            SystemTime::now(),
            crate::token::ClaimedExpiry::In(3600),
            None,
        )
        .unwrap();
        let customer = "https://customer.vault.azure.net";
        access.tokens.insert(access.own(), token.clone());
        access.follow(customer, &challenge(OTHER, None)).unwrap();
        let theirs = access.audience(customer);
        assert_eq!(theirs.tenant.as_deref(), Some(OTHER));
        // The vault's refusal dropped the own token it was sent; the other vaults still get
        // their own audience.
        assert!(access.tokens.is_empty());
        assert_eq!(
            access.audience("https://home.vault.azure.net"),
            access.own()
        );
        access.tokens.insert(theirs.clone(), token.clone());
        access.tokens.insert(access.own(), token);
        // The customer's vault moves back home: its old audience's token goes, the own one
        // stays for the vaults that use it.
        access.follow(customer, &challenge(OWN, None)).unwrap();
        assert_eq!(access.audience(customer), access.own());
        assert_eq!(access.tokens.keys().collect::<Vec<_>>(), [&access.own()]);
        assert!(access.vaults.is_empty());
    }

    #[test]
    fn a_refusal_names_the_tenant_the_key_and_the_identity() {
        let mut access = Access::new(&workload(OWN, AllowedTenants::default()));
        let err = access
            .follow("https://x.vault.azure.net", &challenge(OTHER, None))
            .unwrap_err();
        let CredentialError::KeyVault {
            reason,
            message,
            transient,
            ..
        } = err
        else {
            panic!("a Key Vault failure");
        };
        assert_eq!(reason, KeyVaultReason::TenantNotAllowed);
        assert!(!transient);
        assert_eq!(
            message,
            format!(
                "Key Vault https://x.vault.azure.net asks for a token from tenant {OTHER}, not from the tenant of the workload identity with client ID 33333333-3333-3333-3333-333333333333 in tenant {OWN} (Key Vault identity \"partner\"); add \"{OTHER}\" to key_vault_allowed_tenants of Key Vault identity \"partner\" ([key_vault.identities.partner]) to allow it"
            )
        );
    }
}
