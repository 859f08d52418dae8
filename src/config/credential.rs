//! A tenant's one credential: client secret, certificate, workload identity or managed identity.
//! Only the shape is checked here; whether the files and variables it names are readable is
//! [`crate::credential::verify`]'s job, run by `check`.

use std::path::PathBuf;
use toml::Spanned;

use super::loader::{Loader, TenantInput, inherited};
use super::raw::{RawSecret, RawTenant};
use super::types::{CertificateConfig, CredentialConfig, SecretSource};
use super::values::{check_key_vault_url, parse_expiry};

/// Whether a table sets any credential key.
fn has_credential(table: &RawTenant) -> bool {
    table.client_secret.is_some()
        || table.client_certificate.is_some()
        || table.credential.is_some()
}

/// `client_secret_expires`: the tenant's; `[defaults]`' only when the secret is `[defaults]`'
/// too (a tenant with its own secret does not inherit another secret's expiry).
pub(super) fn secret_expires<'r>(input: &TenantInput<'r>) -> Option<&'r Spanned<toml::Value>> {
    let own = input.raw.client_secret_expires.as_ref();
    if has_credential(input.raw) {
        own
    } else {
        own.or(input.defaults.client_secret_expires.as_ref())
    }
}

/// The table the tenant's credential comes from: its own if it sets any credential key, else
/// `[defaults]`.
pub(super) fn credential_level<'r>(input: &TenantInput<'r>) -> &'r RawTenant {
    if has_credential(input.raw) {
        input.raw
    } else {
        input.defaults
    }
}

impl Loader<'_> {
    /// Picks and validates the tenant's one credential. A tenant that sets any credential key
    /// replaces `[defaults]`' credential entirely, so defaults and tenant never mix into two.
    pub(super) fn credential(
        &mut self,
        input: &TenantInput<'_>,
    ) -> (Option<CredentialConfig>, Option<usize>) {
        let level = credential_level(input);
        let mut kinds: Vec<(&'static str, usize)> = Vec::new();
        if let Some(secret) = &level.client_secret {
            kinds.push(("client_secret", secret.span().start));
        }
        if let Some(cert) = &level.client_certificate {
            kinds.push(("client_certificate", cert.span().start));
        }
        if let Some(kind) = &level.credential {
            kinds.push(("credential", kind.span().start));
        }
        match kinds.as_slice() {
            [] => {
                self.missing(
                    input,
                    &["credential", "client_secret", "client_certificate"],
                    "missing (in the tenant or in [defaults]); expected one of client_secret = { env = \"VAR\" } (or file, systemd), client_certificate = { cert = \"…\", key = \"…\" }, credential = \"workload_identity\" or credential = \"managed_identity\"",
                );
                return (None, None);
            }
            [_] => {}
            [first, second, ..] => {
                let names: Vec<&str> = kinds.iter().map(|(name, _)| *name).collect();
                let line = Some(self.line_of(first.1));
                self.problem(
                    Some(second.1),
                    input.key("credential"),
                    format!(
                        "{} are all set; a tenant has exactly one credential",
                        names.join(" and ")
                    ),
                );
                return (None, line);
            }
        }
        let (kind, at) = kinds[0];
        let line = Some(self.line_of(at));
        let credential = match kind {
            "client_secret" => self.client_secret(level, secret_expires(input), input),
            "client_certificate" => self.certificate(level, input),
            _ => self.credential_kind(level, input),
        };
        (credential, line)
    }

    /// `client_secret` (a reference, never a literal) and `client_secret_expires`.
    fn client_secret(
        &mut self,
        level: &RawTenant,
        expires: Option<&Spanned<toml::Value>>,
        input: &TenantInput<'_>,
    ) -> Option<CredentialConfig> {
        let secret = level.client_secret.as_ref()?;
        let expires_on = match expires {
            None => None,
            Some(value) => match parse_expiry(value.get_ref()) {
                Ok(expires_on) => Some(expires_on),
                Err(message) => {
                    self.problem(
                        Some(value.span().start),
                        input.key("client_secret_expires"),
                        message,
                    );
                    return None;
                }
            },
        };
        let source = self.secret_source(
            secret.get_ref(),
            secret.span().start,
            &input.key("client_secret"),
        )?;
        Some(CredentialConfig::ClientSecret { source, expires_on })
    }

    /// A secret reference as written (`{ env | file | systemd | key_vault }`) as it is read: a
    /// file relative to the config file's directory, a Key Vault URL checked, and only with a
    /// `[key_vault]` section to read it. A literal string is refused (its value was never kept).
    /// `key` names the reference in messages; `at` is its offset.
    pub(super) fn secret_source(
        &mut self,
        secret: &RawSecret,
        at: usize,
        key: &str,
    ) -> Option<SecretSource> {
        let source = match secret {
            RawSecret::Reference(source) => source,
            RawSecret::Literal => {
                self.problem(
                    Some(at),
                    key.to_owned(),
                    "secrets are not written in the config file; expected { env = \"VAR\" }, { file = \"/path\" } { systemd = \"name\" } or { key_vault = \"https://…/secrets/…\" }".to_owned(),
                );
                return None;
            }
        };
        Some(match source {
            SecretSource::File(path) => SecretSource::File(self.resolve_path(path.clone())),
            SecretSource::KeyVault(url) => match check_key_vault_url(url) {
                Ok(url) if self.key_vault_names.is_some() => SecretSource::KeyVault(url),
                Ok(_) => {
                    self.problem(
                        Some(at),
                        key.to_owned(),
                        "is in Key Vault; add a [key_vault] section naming the managed or workload identity that reads it".to_owned(),
                    );
                    return None;
                }
                Err(message) => {
                    self.problem(Some(at), format!("{key}.key_vault"), message);
                    return None;
                }
            },
            other => other.clone(),
        })
    }

    /// `client_certificate = { cert, key, algorithm, send_x5c }`, paths relative to the file.
    fn certificate(
        &mut self,
        level: &RawTenant,
        input: &TenantInput<'_>,
    ) -> Option<CredentialConfig> {
        let raw = level.client_certificate.as_ref()?;
        let at = Some(raw.span().start);
        if let Some(url) = &raw.get_ref().key_vault {
            if raw.get_ref().cert.is_some() || raw.get_ref().key.is_some() {
                self.problem(
                    at,
                    input.key("client_certificate"),
                    "key_vault replaces cert and key; set one or the other".to_owned(),
                );
                return None;
            }
            let url = match check_key_vault_url(url) {
                Ok(url) => url,
                Err(message) => {
                    self.problem(at, input.key("client_certificate.key_vault"), message);
                    return None;
                }
            };
            if self.key_vault_names.is_none() {
                self.problem(
                    at,
                    input.key("client_certificate"),
                    "is in Key Vault; add a [key_vault] section naming the managed or workload identity that reads it".to_owned(),
                );
                return None;
            }
            return Some(CredentialConfig::Certificate(CertificateConfig {
                cert: PathBuf::from(&url),
                key: PathBuf::from(&url),
                algorithm: raw.get_ref().algorithm.unwrap_or_default(),
                send_x5c: raw.get_ref().send_x5c.unwrap_or(false),
                key_vault: Some(url),
            }));
        }
        let Some(cert) = raw.get_ref().cert.clone() else {
            self.problem(
                at,
                input.key("client_certificate.cert"),
                "missing; expected { cert = \"app.pem\", key = \"app.key\" } or { key_vault = \"https://<vault>.vault.azure.net/secrets/<name>\" }".to_owned(),
            );
            return None;
        };
        let cert = self.resolve_path(cert);
        let key = raw
            .get_ref()
            .key
            .clone()
            .map_or_else(|| cert.clone(), |key| self.resolve_path(key));
        let config = CertificateConfig {
            cert,
            key,
            algorithm: raw.get_ref().algorithm.unwrap_or_default(),
            send_x5c: raw.get_ref().send_x5c.unwrap_or(false),
            key_vault: None,
        };
        Some(CredentialConfig::Certificate(config))
    }

    /// `credential = "workload_identity"` or `"managed_identity"`.
    fn credential_kind(
        &mut self,
        level: &RawTenant,
        input: &TenantInput<'_>,
    ) -> Option<CredentialConfig> {
        let kind = level.credential.as_ref()?;
        match kind.get_ref().as_str() {
            "workload_identity" => {
                let configured = inherited!(input, federated_token_file)
                    .map(|path| self.resolve_path(path.get_ref().clone()));
                let Some(token_file) = configured
                    .or_else(|| (self.env)("AZURE_FEDERATED_TOKEN_FILE").map(PathBuf::from))
                else {
                    self.problem(
                        Some(kind.span().start),
                        input.key("federated_token_file"),
                        "missing: set federated_token_file, or run where the workload identity webhook sets AZURE_FEDERATED_TOKEN_FILE".to_owned(),
                    );
                    return None;
                };
                Some(CredentialConfig::WorkloadIdentity { token_file })
            }
            "managed_identity" => self.managed_identity(kind.span().start, input),
            other => {
                self.problem(
                    Some(kind.span().start),
                    input.key("credential"),
                    format!(
                        "{other:?} is not a credential kind; expected \"workload_identity\" or \"managed_identity\" (a secret or certificate is set with client_secret or client_certificate)"
                    ),
                );
                None
            }
        }
    }
}
