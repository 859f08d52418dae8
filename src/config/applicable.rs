//! Keys a tenant sets that its provider or credential never uses. Ignoring them would let a
//! typo of intent pass silently (a `resource` that is never sent, a `client_id` that selects
//! nothing), so they are errors. Only keys in the `[[tenant]]` itself count: `[defaults]` is
//! shared by tenants of every kind, and a default that does not apply to one of them is not
//! a mistake.

use toml::Spanned;

use super::credential::credential_level;
use super::loader::Loader;
use super::raw::RawTenant;
use super::tenant::{TenantInput, inherited};
use super::types::Provider;

/// The offset of a key the tenant sets, if it does.
fn set<T>(key: &Option<Spanned<T>>) -> Option<usize> {
    key.as_ref().map(|value| value.span().start)
}

/// Keys that only a generic OAuth2 server uses.
fn oauth2_only(raw: &RawTenant) -> [(&'static str, Option<usize>); 4] {
    [
        ("token_url", set(&raw.token_url)),
        ("scope", set(&raw.scope)),
        ("audience", set(&raw.audience)),
        ("auth", set(&raw.auth)),
    ]
}

/// Keys that only Entra uses.
fn entra_only(raw: &RawTenant) -> [(&'static str, Option<usize>); 5] {
    [
        ("cloud", set(&raw.cloud)),
        ("authority_host", set(&raw.authority_host)),
        ("api", set(&raw.api)),
        ("managed_identity", set(&raw.managed_identity)),
        ("federated_token_file", set(&raw.federated_token_file)),
    ]
}

impl Loader<'_> {
    /// Reports every key of the tenant's own table that its provider or credential ignores.
    pub(super) fn inapplicable_keys(&mut self, input: &TenantInput<'_>) {
        let raw = input.raw;
        let provider = inherited!(input, provider).map_or_else(Provider::default, |p| *p.get_ref());
        let level = credential_level(input);
        let kind = level
            .credential
            .as_ref()
            .map(|kind| kind.get_ref().as_str());
        let mut found: Vec<(&str, usize, String)> = Vec::new();
        let mut refuse = |key: &'static str, at: Option<usize>, why: &str| {
            if let Some(at) = at {
                found.push((key, at, why.to_owned()));
            }
        };
        match provider {
            Provider::Entra => {
                for (key, at) in oauth2_only(raw) {
                    refuse(key, at, "applies only to provider = \"oauth2\"");
                }
            }
            Provider::Oauth2 => {
                for (key, at) in entra_only(raw) {
                    refuse(
                        key,
                        at,
                        "does not apply to provider = \"oauth2\" (it is for Entra ID)",
                    );
                }
            }
        }
        if provider == Provider::Entra {
            if kind != Some("managed_identity") {
                let why = "applies only to credential = \"managed_identity\"";
                refuse("managed_identity", set(&raw.managed_identity), why);
            }
            if kind != Some("workload_identity") {
                let why = "applies only to credential = \"workload_identity\"";
                refuse("federated_token_file", set(&raw.federated_token_file), why);
            }
        }
        if level.client_secret.is_none() {
            let why = "applies only to a client_secret credential";
            refuse(
                "client_secret_expires",
                set(&raw.client_secret_expires),
                why,
            );
        }
        if kind == Some("managed_identity") {
            let why =
                "does not apply to a managed identity, which gets its token from the Azure host";
            refuse("api", set(&raw.api), why);
            refuse("authority_host", set(&raw.authority_host), why);
            // Without `managed_identity`, the managed identity rules explain what client_id
            // used to mean.
            if inherited!(input, managed_identity).is_some() {
                let why =
                    "does not apply to a managed identity; managed_identity chooses the identity";
                refuse("client_id", set(&raw.client_id), why);
            }
        }
        for (key, at, why) in found {
            self.problem(Some(at), input.key(key), format!("{key} {why}"));
        }
    }
}
