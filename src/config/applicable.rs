//! Keys a tenant sets that its provider or credential never uses. Ignoring them would let a
//! typo of intent pass silently (a `resource` that is never sent, a `client_id` that selects
//! nothing), so they are errors. Only keys in the `[[tenant]]` itself count: `[defaults]` is
//! shared by tenants of every kind, and a default that does not apply to one of them is not
//! a mistake.

use toml::Spanned;

use super::credential::credential_level;
use super::loader::{Loader, TenantInput, inherited};
use super::raw::RawTenant;
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
fn entra_only(raw: &RawTenant) -> [(&'static str, Option<usize>); 9] {
    [
        ("embed", set(&raw.embed)),
        ("powerbi_api", set(&raw.powerbi_api)),
        ("fabric_api", set(&raw.fabric_api)),
        ("probe", set(&raw.probe)),
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
        // What applies depends on these; if one was unreadable (and reported), any verdict
        // here would be a guess.
        if self.is_broken(
            input,
            &[
                "provider",
                "credential",
                "client_secret",
                "client_certificate",
            ],
        ) {
            return;
        }
        let provider = input.provider();
        let found: Vec<(&str, Option<usize>, &str)> = match provider {
            Provider::Entra => {
                let why = "applies only to provider = \"oauth2\"";
                let mut found: Vec<_> = oauth2_only(input.raw)
                    .into_iter()
                    .map(|(key, at)| (key, at, why))
                    .collect();
                found.extend(inapplicable_credential_keys(input));
                found
            }
            Provider::Oauth2 => {
                let why = "does not apply to provider = \"oauth2\" (it is for Entra ID)";
                entra_only(input.raw)
                    .into_iter()
                    .map(|(key, at)| (key, at, why))
                    .collect()
            }
        };
        for (key, at, why) in found {
            if let Some(at) = at {
                self.problem(Some(at), input.key(key), format!("{key} {why}"));
            }
        }
    }
}

/// Keys of an Entra tenant that belong to another credential kind than its own.
fn inapplicable_credential_keys(
    input: &TenantInput<'_>,
) -> Vec<(&'static str, Option<usize>, &'static str)> {
    let raw = input.raw;
    let level = credential_level(input);
    let kind = level
        .credential
        .as_ref()
        .map(|kind| kind.get_ref().as_str());
    let mut found = Vec::new();
    if kind != Some("managed_identity") {
        let why = "applies only to credential = \"managed_identity\"";
        found.push(("managed_identity", set(&raw.managed_identity), why));
    }
    if kind != Some("workload_identity") {
        let why = "applies only to credential = \"workload_identity\"";
        found.push(("federated_token_file", set(&raw.federated_token_file), why));
    }
    if level.client_secret.is_none() {
        let why = "applies only to a client_secret credential";
        found.push((
            "client_secret_expires",
            set(&raw.client_secret_expires),
            why,
        ));
    }
    if kind == Some("managed_identity") {
        let why = "does not apply to a managed identity, which gets its token from the Azure host";
        found.push(("api", set(&raw.api), why));
        found.push(("authority_host", set(&raw.authority_host), why));
        // Without `managed_identity`, the managed identity rules explain what client_id used
        // to mean.
        if inherited!(input, managed_identity).is_some() {
            let why = "does not apply to a managed identity; managed_identity chooses the identity";
            found.push(("client_id", set(&raw.client_id), why));
        }
    }
    found
}
