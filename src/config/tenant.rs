//! One `[[tenant]]`, with `[defaults]` merged in: identity, endpoint, resource and timing. The
//! credential, generic OAuth2 and sink rules are in their own files.

use super::credential::{credential_level, secret_expires};
use super::loader::{Loader, Reported, TenantInput, inherited};
use super::raw::{RawResource, RawTenant};
use super::types::{
    CredentialConfig, CronSchedule, OAuth2Config, PowerBiConfig, Provider, SinkConfig,
    TenantConfig, TenantCredential,
};
use super::values::{check_authority_host, is_domain, is_guid, parse_cron};
use crate::cloud::Cloud;

/// What the credential rules tell the identity rules: a workload or managed identity fills in or
/// drops keys that every other tenant must set.
#[derive(Clone, Copy)]
pub(super) struct CredentialKind {
    /// `credential = "workload_identity"`: the webhook's env vars fill in missing ids.
    pub(super) workload: bool,
    /// `credential = "managed_identity"`: no client or tenant id is needed.
    pub(super) managed: bool,
}

impl Loader<'_> {
    /// Validates one tenant; `None` if it has any problem (all of them are recorded).
    pub(super) fn tenant(
        &mut self,
        index: usize,
        offset: usize,
        raw: RawTenant,
        broken: &[String],
        defaults: &RawTenant,
    ) -> Option<TenantConfig> {
        let before = self.problems.len();
        let line = Some(self.line_of(offset));
        let name = self.tenant_name(index, offset, &raw, broken);
        let input = TenantInput {
            raw: &raw,
            defaults,
            offset,
            label: name.clone().unwrap_or_else(|| format!("tenant[{index}]")),
            broken,
            section: None,
        };
        let provider = input.provider();
        let (credential, kind) = self.tenant_credential(&input);
        let key_vault_credential = self.tenant_key_vault_credential(&input, credential.as_ref());
        let tenant_id = self.tenant_id(&input, provider, kind);
        let client_id = self.tenant_client_id(&input, &credential, kind);
        let cloud = inherited!(input, cloud).map_or_else(Cloud::default, |c| *c.get_ref());
        let authority_host = self.authority_host(&input, cloud, kind);
        let oauth2 = self.tenant_oauth2(&input, provider, &credential);
        let resource = self.resource(&input, &oauth2, cloud);
        let (refresh_at, jitter) = self.fractions(&input);
        let sinks = self.sinks(&input, name.as_deref());
        let schedule = self.schedule(&input);
        let powerbi = match provider {
            Provider::Entra => self.powerbi(&input, name.as_deref(), cloud, resource.as_deref()),
            Provider::Oauth2 => Ok(None),
        };
        self.inapplicable_keys(&input);
        if let Some(name) = &name {
            self.remember(name, line, sinks.as_deref(), &powerbi);
        }
        if self.problems.len() != before {
            return None;
        }
        Some(TenantConfig {
            name: name?,
            tenant_id: tenant_id.ok()?,
            client_id: client_id.ok()?.map(|id| self.shared(id)),
            credential: credential?,
            oauth2: oauth2.ok()?,
            authority_host: self.shared(authority_host?),
            api: inherited!(input, api).map_or_else(Default::default, |a| *a.get_ref()),
            resource: self.shared(resource?),
            refresh_at,
            jitter,
            sinks: sinks?,
            schedule: schedule.map(Box::new),
            powerbi: powerbi.ok()?.map(Box::new),
            key_vault_credential: key_vault_credential.ok()?,
            line,
        })
    }

    /// The tenant's client ID: a managed identity's own when one chooses it (never the Entra
    /// app's), none for a managed identity that does not; `client_id` for every other kind.
    fn tenant_client_id(
        &mut self,
        input: &TenantInput<'_>,
        credential: &Option<CredentialConfig>,
        kind: CredentialKind,
    ) -> Result<Option<String>, Reported> {
        match credential {
            Some(CredentialConfig::ManagedIdentity(managed)) => {
                Ok(managed.identity.client_id().map(str::to_owned))
            }
            // A managed identity whose own rules failed.
            _ if kind.managed => Err(Reported),
            _ => self.client_id(input, kind).map(Some).ok_or(Reported),
        }
    }

    /// The generic OAuth2 server's settings: `Ok(None)` for an Entra tenant.
    fn tenant_oauth2(
        &mut self,
        input: &TenantInput<'_>,
        provider: Provider,
        credential: &Option<CredentialConfig>,
    ) -> Result<Option<Box<OAuth2Config>>, Reported> {
        match provider {
            Provider::Entra => Ok(None),
            Provider::Oauth2 => match self.oauth2(input, credential) {
                Some(oauth2) => Ok(Some(Box::new(oauth2))),
                None => Err(Reported),
            },
        }
    }

    /// Keeps a named tenant's name, line and every destination it writes (its sinks and its
    /// embed tokens'), whether or not the tenant is valid, for the cross-tenant rules: unique
    /// names, and no file or Redis key written twice.
    fn remember(
        &mut self,
        name: &str,
        line: Option<usize>,
        sinks: Option<&[SinkConfig]>,
        powerbi: &Result<Option<PowerBiConfig>, Reported>,
    ) {
        let embed_sinks = powerbi
            .iter()
            .flatten()
            .flat_map(|powerbi| powerbi.embeds.iter())
            .flat_map(|embed| embed.sinks.iter());
        let destinations = sinks
            .into_iter()
            .flatten()
            .chain(embed_sinks)
            .map(SinkConfig::destination)
            .collect();
        self.seen.push((name.to_owned(), line, destinations));
    }

    /// The tenant's credential and its line, kept for `check` even if the tenant has other
    /// problems, and what kind it is as written.
    pub(super) fn tenant_credential(
        &mut self,
        input: &TenantInput<'_>,
    ) -> (Option<CredentialConfig>, CredentialKind) {
        let (credential, line) = self.credential(input);
        if let Some(credential) = credential.as_ref().filter(|_| self.collect_credentials) {
            let expires_line = secret_expires(input).map(|value| self.line_of(value.span().start));
            let token_file_key = matches!(credential, CredentialConfig::WorkloadIdentity { .. })
                .then(|| match inherited!(input, federated_token_file) {
                    Some(path) => (self.line_of(path.span().start), "federated_token_file"),
                    None => (
                        self.line_of(input.offset),
                        "federated_token_file (from AZURE_FEDERATED_TOKEN_FILE)",
                    ),
                });
            self.credentials.push(TenantCredential {
                tenant: input.label.clone(),
                line,
                expires_line,
                token_file_key,
                credential: credential.clone(),
            });
        }
        // From the key as written, so a credential with a problem of its own does not also make
        // the tenant look as if it lacked the ids that its kind does not need.
        let written = credential_level(input).credential.as_ref();
        let kind = CredentialKind {
            workload: written.is_some_and(|kind| kind.get_ref() == "workload_identity"),
            managed: written.is_some_and(|kind| kind.get_ref() == "managed_identity"),
        };
        (credential, kind)
    }

    /// `name`: required, and safe in a file name, a log line and a metric label.
    fn tenant_name(
        &mut self,
        index: usize,
        offset: usize,
        raw: &RawTenant,
        broken: &[String],
    ) -> Option<String> {
        let Some(name) = &raw.name else {
            if broken.iter().any(|key| key == "name") {
                return None;
            }
            self.problem(
                Some(offset),
                format!("tenant[{index}].name"),
                "missing; every [[tenant]] needs a unique name".to_owned(),
            );
            return None;
        };
        if !is_valid_name(name.get_ref()) {
            self.problem(
                Some(name.span().start),
                format!("tenant {:?}: name", name.get_ref()),
                format!(
                    "{:?} is not a valid name: use letters, digits, '.', '_' and '-' only",
                    name.get_ref()
                ),
            );
        }
        Some(name.get_ref().clone())
    }

    /// `tenant_id`: a GUID or verified domain; never a multi-tenant alias. `Ok(None)` where
    /// none is needed: a generic OAuth2 server, a managed identity.
    pub(super) fn tenant_id(
        &mut self,
        input: &TenantInput<'_>,
        provider: Provider,
        kind: CredentialKind,
    ) -> Result<Option<String>, Reported> {
        let Some(id) = &input.raw.tenant_id else {
            if provider == Provider::Oauth2 || kind.managed {
                return Ok(None);
            }
            if kind.workload
                && let Some(id) = (self.env)("AZURE_TENANT_ID")
            {
                return Ok(Some(id));
            }
            // An unreadable provider or credential may have been one that needs no tenant ID.
            self.missing(
                input,
                &["tenant_id", "provider", "credential"],
                "missing; expected the tenant's GUID or verified domain",
            );
            return Err(Reported);
        };
        let value = id.get_ref();
        if !is_guid(value) && !is_domain(value) {
            self.problem(
                Some(id.span().start),
                input.key("tenant_id"),
                format!(
                    "expected a GUID or a domain such as contoso.onmicrosoft.com, got {value:?}"
                ),
            );
        } else if matches!(
            value.to_ascii_lowercase().as_str(),
            "common" | "organizations" | "consumers"
        ) {
            self.problem(
                Some(id.span().start),
                input.key("tenant_id"),
                format!("{value:?} cannot issue app-only tokens; use the customer's tenant ID"),
            );
        }
        Ok(Some(value.clone()))
    }

    /// `client_id`: the application (client) ID, from the tenant or `[defaults]`.
    pub(super) fn client_id(
        &mut self,
        input: &TenantInput<'_>,
        kind: CredentialKind,
    ) -> Option<String> {
        match inherited!(input, client_id) {
            None if kind.workload && (self.env)("AZURE_CLIENT_ID").is_some() => {
                (self.env)("AZURE_CLIENT_ID")
            }
            None => {
                self.missing(
                    input,
                    &["client_id", "credential"],
                    "missing (in the tenant or in [defaults]); expected the application (client) ID",
                );
                None
            }
            Some(id) if id.get_ref().trim().is_empty() => {
                self.problem(
                    Some(id.span().start),
                    input.key("client_id"),
                    "must not be empty".to_owned(),
                );
                None
            }
            Some(id) => Some(id.get_ref().clone()),
        }
    }

    /// `authority_host`: configured, else the webhook's `AZURE_AUTHORITY_HOST` for workload
    /// identity, else the cloud's.
    pub(super) fn authority_host(
        &mut self,
        input: &TenantInput<'_>,
        cloud: Cloud,
        kind: CredentialKind,
    ) -> Option<String> {
        let configured = inherited!(input, authority_host)
            .map(|host| (host.get_ref().clone(), Some(host.span().start)));
        let from_env = kind
            .workload
            .then(|| (self.env)("AZURE_AUTHORITY_HOST"))
            .flatten()
            .map(|host| (host, None));
        let Some((host, at)) = configured.or(from_env) else {
            return Some(cloud.authority_host().to_owned());
        };
        match check_authority_host(&host) {
            Ok(normalised) => Some(normalised),
            Err(message) => {
                let key = if at.is_some() {
                    "authority_host"
                } else {
                    "authority_host (from AZURE_AUTHORITY_HOST)"
                };
                self.problem(at.or(Some(input.offset)), input.key(key), message);
                None
            }
        }
    }

    /// `resource`: one App ID URI (the cloud's Power BI by default), or a preset naming the
    /// cloud's: `"powerbi"`, or `"fabric"` where Fabric exists; for a generic OAuth2 server,
    /// what the request asks for.
    fn resource(
        &mut self,
        input: &TenantInput<'_>,
        oauth2: &Result<Option<Box<OAuth2Config>>, Reported>,
        cloud: Cloud,
    ) -> Option<String> {
        match oauth2 {
            Ok(Some(oauth2)) => return Some(oauth2.resource.clone().unwrap_or_default()),
            // A generic OAuth2 tenant whose rules failed: its `resource` is theirs to report.
            Err(Reported) => return None,
            // Entra.
            Ok(None) => {}
        }
        let Some(resource) = inherited!(input, resource) else {
            return Some(cloud.power_bi_resource().to_owned());
        };
        let RawResource::One(value) = resource.get_ref() else {
            self.problem(
                Some(resource.span().start),
                input.key("resource"),
                "expected one App ID URI such as https://analysis.windows.net/powerbi/api, not a list".to_owned(),
            );
            return None;
        };
        let value = value.trim_end_matches('/');
        let message = if value == "powerbi" {
            return Some(cloud.power_bi_resource().to_owned());
        } else if value == "fabric" {
            match cloud.fabric_resource() {
                Some(fabric) => return Some(fabric.to_owned()),
                None => format!(
                    "\"fabric\" is not available in cloud {:?}: Microsoft Fabric runs in the public cloud only; expected cloud = \"public\", or resource = \"powerbi\" for this cloud's Power BI",
                    cloud.as_str()
                ),
            }
        } else if value.ends_with("/.default") {
            format!(
                "{value:?} ends with /.default; give the App ID URI alone (the v2 scope adds /.default)"
            )
        } else if value.is_empty() || value.contains(char::is_whitespace) {
            format!(
                "expected \"powerbi\", \"fabric\" or one App ID URI such as https://analysis.windows.net/powerbi/api, got {value:?}"
            )
        } else {
            return Some(value.to_owned());
        };
        self.problem(Some(resource.span().start), input.key("resource"), message);
        None
    }

    /// `refresh_at` ± `jitter` must stay inside the token's lifetime.
    fn fractions(&mut self, input: &TenantInput<'_>) -> (f64, f64) {
        let refresh_at_raw = inherited!(input, refresh_at);
        let jitter_raw = inherited!(input, jitter);
        let refresh_at = refresh_at_raw.map_or(0.5, |v| *v.get_ref());
        let jitter = jitter_raw.map_or(0.1, |v| *v.get_ref());
        let offset = refresh_at_raw.or(jitter_raw).map(|v| v.span().start);
        let fractions_ok =
            (0.0..0.5).contains(&jitter) && refresh_at - jitter > 0.0 && refresh_at + jitter < 1.0;
        if !fractions_ok {
            self.problem(
                offset,
                input.key("refresh_at"),
                format!(
                    "refresh_at ({refresh_at}) ± jitter ({jitter}) must stay strictly between 0 and 1, with 0 <= jitter < 0.5"
                ),
            );
        }
        (refresh_at, jitter)
    }

    /// `schedule`: an optional cron expression of forced refreshes.
    fn schedule(&mut self, input: &TenantInput<'_>) -> Option<CronSchedule> {
        let expression = inherited!(input, schedule)?;
        match parse_cron(expression.get_ref()) {
            Ok(cron) => Some(CronSchedule {
                expression: expression.get_ref().clone(),
                cron,
            }),
            Err(message) => {
                self.problem(
                    Some(expression.span().start),
                    input.key("schedule"),
                    message,
                );
                None
            }
        }
    }
}

/// Letters, digits, `.`, `_` and `-`; not `.` or `..` (the name becomes a file name).
pub(super) fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        && !matches!(name, "." | "..")
}
