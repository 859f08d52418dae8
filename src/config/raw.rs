//! The schema serde reads. Everything is optional so that `[defaults]` can be merged and so that
//! a missing key is reported by validation (with a line) rather than by serde (without one).

use serde::{Deserialize, Deserializer};
use std::path::PathBuf;
use toml::Spanned;

use crate::cloud::Cloud;

use super::types::{
    ApiVersion, AssertionAlgorithm, ClientAuth, FileFormat, LogFormat, PerTenantMetrics, Provider,
    SecretSource,
};

/// A duration as written: a string with a unit (`"30s"`, `"5m"`, `"1h 30m"`), parsed by
/// validation. A type of its own so that every duration key, wherever it sits, answers a number
/// with serde's "expected a duration: a string with a unit…" and no list of keys is needed.
#[derive(Clone, PartialEq, Eq)]
pub(super) struct RawDuration(String);

impl std::ops::Deref for RawDuration {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for RawDuration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&self.0, f)
    }
}

impl<'de> Deserialize<'de> for RawDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Text;
        impl serde::de::Visitor<'_> for Text {
            type Value = RawDuration;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a duration: a string with a unit, such as \"30s\", \"5m\" or \"1h\"")
            }

            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<RawDuration, E> {
                Ok(RawDuration(text.to_owned()))
            }
        }
        deserializer.deserialize_str(Text)
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawServer {
    pub(super) listen: Option<Spanned<String>>,
    pub(super) watch_config: Option<bool>,
    pub(super) watch_interval: Option<Spanned<RawDuration>>,
    pub(super) per_tenant_metrics: Option<PerTenantMetrics>,
    pub(super) tls: Option<Spanned<RawServerTls>>,
    pub(super) basic_auth: Option<Spanned<RawBasicAuth>>,
}

/// `[server.tls]`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawServerTls {
    pub(super) cert_file: Option<Spanned<PathBuf>>,
    pub(super) key_file: Option<Spanned<PathBuf>>,
}

/// `[server.basic_auth]`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBasicAuth {
    pub(super) users: Option<std::collections::BTreeMap<Spanned<String>, Spanned<String>>>,
    pub(super) healthz_open: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDaemon {
    pub(super) max_concurrent_requests: Option<Spanned<i64>>,
    pub(super) max_requests_per_second: Option<Spanned<i64>>,
    pub(super) connect_timeout: Option<Spanned<RawDuration>>,
    pub(super) request_timeout: Option<Spanned<RawDuration>>,
    pub(super) backoff_min: Option<Spanned<RawDuration>>,
    pub(super) backoff_max: Option<Spanned<RawDuration>>,
    pub(super) permanent_retry_interval: Option<Spanned<RawDuration>>,
    pub(super) shutdown_grace: Option<Spanned<RawDuration>>,
    pub(super) ca_file: Option<Spanned<PathBuf>>,
    pub(super) imds_endpoint: Option<Spanned<String>>,
    pub(super) log_format: Option<LogFormat>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRedis {
    pub(super) url: Option<Spanned<RawUrls>>,
    pub(super) cluster: Option<bool>,
    pub(super) username: Option<Spanned<String>>,
    pub(super) password: Option<Spanned<RawSecret>>,
    pub(super) connect_timeout: Option<Spanned<RawDuration>>,
    pub(super) command_timeout: Option<Spanned<RawDuration>>,
    pub(super) channel: Option<Spanned<String>>,
    pub(super) check_interval: Option<Spanned<RawDuration>>,
}

/// `url = "redis://…"`, or for Redis Cluster a list of seed nodes.
#[derive(Deserialize, Clone)]
#[serde(untagged)]
pub(super) enum RawUrls {
    /// One URL.
    One(String),
    /// Several (Redis Cluster seed nodes).
    Many(Vec<String>),
}

/// `[key_vault]`: the identity keys of a tenant's managed or workload identity (its own
/// identity, the default), how often, and the named identities.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawKeyVault {
    pub(super) credential: Option<Spanned<String>>,
    pub(super) managed_identity: Option<Spanned<toml::Value>>,
    pub(super) client_id: Option<Spanned<String>>,
    pub(super) tenant_id: Option<Spanned<String>>,
    pub(super) federated_token_file: Option<Spanned<PathBuf>>,
    pub(super) authority_host: Option<Spanned<String>>,
    pub(super) cloud: Option<Spanned<Cloud>>,
    pub(super) key_vault_allowed_tenants: Option<Spanned<toml::Value>>,
    pub(super) refresh_interval: Option<Spanned<RawDuration>>,
    /// `[key_vault.identities.<name>]`: taken out and read one identity at a time before this
    /// table is read (see `loader.rs`), so always `None` here; named so that a misspelt key's
    /// message lists it.
    #[allow(dead_code)]
    pub(super) identities: Option<serde::de::IgnoredAny>,
}

impl RawKeyVault {
    /// The identity keys alone, and `refresh_interval`.
    pub(super) fn into_identity(self) -> (RawKeyVaultIdentity, Option<Spanned<RawDuration>>) {
        let identity = RawKeyVaultIdentity {
            credential: self.credential,
            managed_identity: self.managed_identity,
            client_id: self.client_id,
            tenant_id: self.tenant_id,
            federated_token_file: self.federated_token_file,
            authority_host: self.authority_host,
            cloud: self.cloud,
            key_vault_allowed_tenants: self.key_vault_allowed_tenants,
        };
        (identity, self.refresh_interval)
    }
}

/// `[key_vault.identities.<name>]`: the identity keys of `[key_vault]`, for an identity that
/// tenants choose by name.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawKeyVaultIdentity {
    pub(super) credential: Option<Spanned<String>>,
    pub(super) managed_identity: Option<Spanned<toml::Value>>,
    pub(super) client_id: Option<Spanned<String>>,
    pub(super) tenant_id: Option<Spanned<String>>,
    pub(super) federated_token_file: Option<Spanned<PathBuf>>,
    pub(super) authority_host: Option<Spanned<String>>,
    pub(super) cloud: Option<Spanned<Cloud>>,
    pub(super) key_vault_allowed_tenants: Option<Spanned<toml::Value>>,
}

impl RawKeyVaultIdentity {
    /// Whether any key is set: `[key_vault]` may have none when only named identities read.
    pub(super) fn is_empty(&self) -> bool {
        self.credential.is_none()
            && self.managed_identity.is_none()
            && self.client_id.is_none()
            && self.tenant_id.is_none()
            && self.federated_token_file.is_none()
            && self.authority_host.is_none()
            && self.cloud.is_none()
            && self.key_vault_allowed_tenants.is_none()
    }
}

/// `[key_vault]` as read: its own identity keys, `refresh_interval`, and the named identities,
/// each table read on its own so one mistake does not hide the others.
pub(super) struct RawKeyVaultSection {
    /// `[key_vault]`'s own identity keys (none when only named identities read).
    pub(super) identity: RawKeyVaultIdentity,
    /// `refresh_interval`.
    pub(super) refresh_interval: Option<Spanned<RawDuration>>,
    /// Byte offset of `[key_vault]`, for problems about missing keys.
    pub(super) offset: usize,
    /// Keys of `[key_vault]` removed as unreadable (already reported).
    pub(super) broken: Vec<String>,
    /// `[key_vault.identities.<name>]` that could be read, in name order.
    pub(super) identities: Vec<RawNamedIdentity>,
    /// Whether every named identity could be read.
    pub(super) complete: bool,
}

/// One `[key_vault.identities.<name>]` as read.
pub(super) struct RawNamedIdentity {
    /// `<name>`, with the span of the key.
    pub(super) name: Spanned<String>,
    /// Byte offset of the table, for problems about missing keys.
    pub(super) offset: usize,
    /// Its keys.
    pub(super) raw: RawKeyVaultIdentity,
    /// Keys removed as unreadable (already reported).
    pub(super) broken: Vec<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFleet {
    pub(super) enabled: Option<bool>,
    pub(super) key_prefix: Option<Spanned<String>>,
    pub(super) lease_ttl: Option<Spanned<RawDuration>>,
    pub(super) replica_id: Option<Spanned<String>>,
}

/// Used for both `[defaults]` and `[[tenant]]`; `name` and `tenant_id` are rejected in defaults.
#[derive(Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTenant {
    pub(super) name: Option<Spanned<String>>,
    pub(super) tenant_id: Option<Spanned<String>>,
    pub(super) client_id: Option<Spanned<String>>,
    pub(super) client_secret: Option<Spanned<RawSecret>>,
    pub(super) client_secret_expires: Option<Spanned<toml::Value>>,
    pub(super) client_certificate: Option<Spanned<RawCertificate>>,
    pub(super) credential: Option<Spanned<String>>,
    pub(super) federated_token_file: Option<Spanned<PathBuf>>,
    pub(super) managed_identity: Option<Spanned<toml::Value>>,
    pub(super) provider: Option<Spanned<Provider>>,
    pub(super) token_url: Option<Spanned<String>>,
    pub(super) scope: Option<Spanned<String>>,
    pub(super) audience: Option<Spanned<String>>,
    pub(super) auth: Option<Spanned<ClientAuth>>,
    pub(super) cloud: Option<Spanned<Cloud>>,
    pub(super) authority_host: Option<Spanned<String>>,
    pub(super) api: Option<Spanned<ApiVersion>>,
    pub(super) resource: Option<Spanned<RawResource>>,
    pub(super) refresh_at: Option<Spanned<f64>>,
    pub(super) jitter: Option<Spanned<f64>>,
    pub(super) sinks: Option<Spanned<Vec<RawSink>>>,
    pub(super) schedule: Option<Spanned<String>>,
    pub(super) powerbi_api: Option<Spanned<String>>,
    pub(super) fabric_api: Option<Spanned<String>>,
    pub(super) probe: Option<Spanned<toml::Value>>,
    pub(super) embed: Option<Spanned<Vec<Spanned<RawEmbed>>>>,
    pub(super) key_vault_credential: Option<Spanned<String>>,
}

/// One `[[tenant.embed]]`: an embed token kept fresh for a set of reports and datasets.
#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub(super) struct RawEmbed {
    pub(super) name: Option<String>,
    #[serde(default)]
    pub(super) reports: Vec<String>,
    #[serde(default)]
    pub(super) datasets: Vec<String>,
    #[serde(default)]
    pub(super) target_workspaces: Vec<String>,
    pub(super) access_level: Option<String>,
    pub(super) lifetime: Option<RawDuration>,
    pub(super) xmla_permissions: Option<String>,
    pub(super) workspace: Option<String>,
    #[serde(default)]
    pub(super) identities: Vec<RawIdentity>,
    #[serde(default)]
    pub(super) datasource_identities: Vec<RawDatasourceIdentity>,
    pub(super) sinks: Option<Vec<RawSink>>,
}

/// One `datasource_identities` entry of an embed: where its identity blob is read from, and the
/// data sources it applies to.
#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDatasourceIdentity {
    pub(super) identity_blob: Option<RawSecret>,
    #[serde(default)]
    pub(super) datasources: Vec<RawDatasource>,
}

/// One data source of a datasource identity: its type and connection details, the keys named
/// as GenerateToken's `DatasourceConnectionDetails` fields in snake case.
#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDatasource {
    pub(super) datasource_type: Option<String>,
    pub(super) server: Option<String>,
    pub(super) database: Option<String>,
    pub(super) url: Option<String>,
    pub(super) path: Option<String>,
    pub(super) extension_data_source_kind: Option<String>,
    pub(super) extension_data_source_path: Option<String>,
}

/// One `identities` entry of an embed: the effective identity (row-level security) the embed
/// token is made for.
#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub(super) struct RawIdentity {
    pub(super) username: Option<String>,
    #[serde(default)]
    pub(super) roles: Vec<String>,
    #[serde(default)]
    pub(super) datasets: Vec<String>,
    #[serde(default)]
    pub(super) reports: Vec<String>,
    pub(super) custom_data: Option<String>,
}

/// `client_certificate = { cert = "…", key = "…", algorithm = "ps256", send_x5c = false }`.
#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCertificate {
    pub(super) cert: Option<PathBuf>,
    pub(super) key_vault: Option<String>,
    pub(super) key: Option<PathBuf>,
    pub(super) algorithm: Option<AssertionAlgorithm>,
    pub(super) send_x5c: Option<bool>,
}

/// `client_secret` as written: a reference, or (rejected, contents dropped) a literal string.
#[derive(Clone)]
pub(super) enum RawSecret {
    /// `{ env = … }`, `{ file = … }` or `{ systemd = … }`.
    Reference(SecretSource),
    /// A string: rejected, and its value is not kept.
    Literal,
}

impl<'de> Deserialize<'de> for RawSecret {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        match toml::Value::deserialize(deserializer)? {
            toml::Value::String(_) => Ok(RawSecret::Literal),
            table @ toml::Value::Table(_) => SecretSource::deserialize(table)
                .map(RawSecret::Reference)
                .map_err(|err| {
                    D::Error::custom(format!(
                        "{}; expected {{ env = \"VAR\" }}, {{ file = \"/path\" }} {{ systemd = \"name\" }} or {{ key_vault = \"https://…/secrets/…\" }}",
                        err.message()
                    ))
                }),
            other => Err(D::Error::custom(format!(
                "expected {{ env = \"VAR\" }}, {{ file = \"/path\" }} {{ systemd = \"name\" }} or {{ key_vault = \"https://…/secrets/…\" }}, got a {}",
                other.type_str()
            ))),
        }
    }
}

#[derive(Deserialize, Clone)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub(super) enum RawSink {
    File {
        path: String,
        format: Option<FileFormat>,
        mode: Option<RawMode>,
    },
    Redis {
        key: Option<String>,
        format: Option<FileFormat>,
    },
}

/// `resource = "…"`. A list is read only to be refused with a message saying why: a token
/// request names one resource.
#[derive(Deserialize, Clone)]
#[serde(untagged)]
pub(super) enum RawResource {
    /// One resource.
    One(String),
    /// A list (of anything), which is a config error.
    Many(Vec<toml::Value>),
}

/// `mode = "0600"` or `mode = 0o600`.
#[derive(Deserialize, Clone)]
#[serde(untagged)]
pub(super) enum RawMode {
    Text(String),
    Number(i64),
}
