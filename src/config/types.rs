//! The validated configuration: what the rest of the daemon reads. Plain data; the rules that
//! produce it live in the sibling files.

use secrecy::SecretString;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::cloud::Cloud;

use super::DEFAULT_IMDS_ENDPOINT;

/// Which token endpoint a tenant uses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ApiVersion {
    /// `/oauth2/token` with `resource=`; numbers come back as strings.
    V1,
    /// `/oauth2/v2.0/token` with `scope=<resource>/.default`.
    #[default]
    V2,
}

/// What the token file contains.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FileFormat {
    /// A JSON object with the token and its metadata; enables warm start.
    #[default]
    Json,
    /// The token alone, no newline: for consumers that `cat` it into a header.
    Raw,
}

/// Log line format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable, one line per event.
    #[default]
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// Which tenants `/metrics` exports per-tenant series for (`[server] per_tenant_metrics`). The
/// fleet-wide aggregates are exported in every mode, so dashboards and alerts can rely on them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PerTenantMetrics {
    /// Every tenant: about ten series each, 500–700 bytes per tenant and scrape.
    #[default]
    All,
    /// Only tenants that need attention ([`crate::metrics::needs_attention`]), so an alert
    /// still names the tenant while a large, healthy fleet costs a few kilobytes per scrape.
    Unhealthy,
    /// No tenant: alerts fall back to the aggregates and cannot name a tenant.
    None,
}

impl PerTenantMetrics {
    /// Every mode, for gauges that show which one is in effect.
    pub const ALL: [PerTenantMetrics; 3] = [
        PerTenantMetrics::All,
        PerTenantMetrics::Unhealthy,
        PerTenantMetrics::None,
    ];

    /// The value as written in the configuration, and the metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            PerTenantMetrics::All => "all",
            PerTenantMetrics::Unhealthy => "unhealthy",
            PerTenantMetrics::None => "none",
        }
    }
}

/// By hand rather than derived: for a value that is not a string, the derived enum reports
/// "wanted string or table", which names neither the key's values nor the problem.
impl<'de> Deserialize<'de> for PerTenantMetrics {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        /// Reads the mode from a string.
        struct Mode;
        const NAMES: [&str; 3] = ["all", "unhealthy", "none"];
        impl serde::de::Visitor<'_> for Mode {
            type Value = PerTenantMetrics;

            fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
                formatter.write_str("one of `all`, `unhealthy`, `none`")
            }

            fn visit_str<E: serde::de::Error>(self, value: &str) -> Result<Self::Value, E> {
                PerTenantMetrics::ALL
                    .into_iter()
                    .find(|mode| mode.as_str() == value)
                    .ok_or_else(|| E::unknown_variant(value, &NAMES))
            }
        }
        deserializer.deserialize_str(Mode)
    }
}

/// Where a tenant's token goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SinkConfig {
    /// A file written atomically.
    File(FileSinkConfig),
    /// A key in the daemon's Redis (`[redis]`).
    Redis(RedisSinkConfig),
}

/// What a sink writes to, for the one-writer-per-destination rule.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Destination {
    /// A file.
    File(PathBuf),
    /// A Redis key.
    RedisKey(String),
}

impl SinkConfig {
    /// The file or key this sink writes.
    pub(crate) fn destination(&self) -> Destination {
        match self {
            SinkConfig::File(file) => Destination::File(file.path.clone()),
            SinkConfig::Redis(redis) => Destination::RedisKey(redis.key.clone()),
        }
    }
}

impl std::fmt::Display for Destination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Destination::File(path) => write!(f, "the file {}", path.display()),
            Destination::RedisKey(key) => write!(f, "the Redis key {key}"),
        }
    }
}

/// A Redis sink after `{name}` expansion.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RedisSinkConfig {
    /// The key, `{name}` replaced by the tenant's name in braces: a Redis Cluster hash tag, so a
    /// tenant's token key and its fleet keys share a slot.
    pub key: String,
    /// `json` (what the file sink writes) or `raw`.
    pub format: FileFormat,
}

/// `[redis]`: the one connection every Redis sink and the fleet share.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RedisConfig {
    /// `redis://` or `rediss://` URLs without credentials: one server, or Redis Cluster seed
    /// nodes.
    pub urls: Vec<String>,
    /// Redis Cluster rather than one server.
    pub cluster: bool,
    /// ACL user (`AUTH username password`); `None` for the default user.
    pub username: Option<String>,
    /// Where the password lives; read again at every (re)connect.
    pub password: Option<SecretSource>,
    /// Limit on establishing a connection (TLS and AUTH included).
    pub connect_timeout: Duration,
    /// Limit on one command's answer.
    pub command_timeout: Duration,
    /// Channel a notification is published on after every token write.
    pub channel: String,
    /// How often each tenant checks that its token is still in Redis (a restart without
    /// persistence, `FLUSHALL`), and writes it again if not.
    pub check_interval: Duration,
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            urls: vec!["redis://127.0.0.1:6379".to_owned()],
            cluster: false,
            username: None,
            password: None,
            connect_timeout: Duration::from_secs(5),
            command_timeout: Duration::from_secs(2),
            channel: DEFAULT_REDIS_CHANNEL.to_owned(),
            check_interval: Duration::from_secs(20),
        }
    }
}

/// Default notification channel.
pub(crate) const DEFAULT_REDIS_CHANNEL: &str = "powerbi-tokend:tokens";

/// Default Redis sink key pattern.
pub(crate) const DEFAULT_REDIS_KEY: &str = "powerbi-tokend:{name}";

/// `[fleet]`: replicas sharing the refreshes through Redis.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FleetConfig {
    /// Prefix of the shared token and lease keys: `<prefix>:{<name>}:token` and `…:lease`.
    pub key_prefix: String,
    /// How long a lease lasts: one attempt (request timeout and sink writes) with room to spare.
    /// A replica that dies holding it delays the tenant by at most this.
    pub lease_ttl: Duration,
    /// This replica's name in leases and in `/status`; host name and a random suffix by default.
    pub replica_id: Option<String>,
}

/// A file sink after `{name}` expansion.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileSinkConfig {
    /// Absolute or config-relative path, `{name}` already replaced.
    pub path: PathBuf,
    /// `json` or `raw`.
    pub format: FileFormat,
    /// Permission bits of the file, applied from the moment the temp file exists.
    pub mode: u32,
}

/// An optional forced refresh schedule (cron, evaluated in UTC).
#[derive(Clone, Debug)]
pub struct CronSchedule {
    /// The expression as written, for logs and change detection.
    pub expression: String,
    /// The parsed schedule.
    pub cron: croner::Cron,
}

impl PartialEq for CronSchedule {
    fn eq(&self, other: &Self) -> bool {
        self.expression == other.expression
    }
}

/// Where a secret is read from: a reference, never the value itself. Reading it is
/// [`crate::credential::read_secret`]'s job, at every refresh.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum SecretSource {
    /// An environment variable of the daemon's process.
    Env(String),
    /// A file; one trailing newline is trimmed.
    File(PathBuf),
    /// A systemd credential (`LoadCredential=name:…`), read from `$CREDENTIALS_DIRECTORY/name`.
    Systemd(String),
    /// A secret in Azure Key Vault: its URL (`https://<vault>.vault.azure.net/secrets/<name>`,
    /// optionally `/<version>`), read with the tenant's Key Vault identity and cached.
    #[serde(rename = "key_vault")]
    KeyVault(String),
    /// A secret held in memory, for configurations built in code (`demo`, tests). A config file
    /// cannot express it: secrets are never written in the file.
    #[serde(skip)]
    Inline(SecretString),
}

impl PartialEq for SecretSource {
    fn eq(&self, other: &Self) -> bool {
        use secrecy::ExposeSecret;
        match (self, other) {
            (SecretSource::Env(a), SecretSource::Env(b)) => a == b,
            (SecretSource::File(a), SecretSource::File(b)) => a == b,
            (SecretSource::Systemd(a), SecretSource::Systemd(b)) => a == b,
            (SecretSource::KeyVault(a), SecretSource::KeyVault(b)) => a == b,
            (SecretSource::Inline(a), SecretSource::Inline(b)) => {
                a.expose_secret() == b.expose_secret()
            }
            _ => false,
        }
    }
}

impl Eq for SecretSource {}

/// Where the secret is, for messages: never what it is.
impl std::fmt::Display for SecretSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SecretSource::Env(name) => write!(f, "the environment variable {name}"),
            SecretSource::File(path) => write!(f, "the file {}", path.display()),
            SecretSource::Systemd(name) => write!(f, "the systemd credential {name}"),
            SecretSource::KeyVault(url) => write!(f, "the Key Vault secret {url}"),
            SecretSource::Inline(_) => f.write_str("a value held in memory"),
        }
    }
}

/// How a tenant proves itself to Entra.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CredentialConfig {
    /// A client secret, read from its source at every refresh.
    ClientSecret {
        /// Where the secret is read from.
        source: SecretSource,
        /// When the secret expires in Entra (`client_secret_expires`), Unix seconds.
        expires_on: Option<i64>,
    },
    /// A certificate: a signed client assertion per request.
    Certificate(CertificateConfig),
    /// A federated token from a file (Kubernetes workload identity), sent as the assertion.
    WorkloadIdentity {
        /// The projected service-account token (`AZURE_FEDERATED_TOKEN_FILE`).
        token_file: PathBuf,
    },
    /// The Azure managed identity of the machine, App Service or container.
    ManagedIdentity(ManagedIdentityConfig),
}

impl CredentialConfig {
    /// The kind, as used in logs and the credential-expiry metric.
    pub fn kind(&self) -> &'static str {
        match self {
            CredentialConfig::ClientSecret { .. } => "client_secret",
            CredentialConfig::Certificate(_) => "certificate",
            CredentialConfig::WorkloadIdentity { .. } => "workload_identity",
            CredentialConfig::ManagedIdentity(_) => "managed_identity",
        }
    }

    /// The Key Vault secret URL the credential is read from, if it is kept in Key Vault.
    pub fn key_vault_url(&self) -> Option<&str> {
        match self {
            CredentialConfig::ClientSecret {
                source: SecretSource::KeyVault(url),
                ..
            } => Some(url),
            CredentialConfig::Certificate(certificate) => certificate.key_vault.as_deref(),
            _ => None,
        }
    }
}

/// A tenant's credential with what a message about it needs: for `check`, which reads every
/// credential even of tenants that have other problems.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TenantCredential {
    /// The tenant's name (or `tenant[i]` when it has none).
    pub tenant: String,
    /// Line of the credential key (the tenant's or `[defaults]`').
    pub line: Option<usize>,
    /// Line of `client_secret_expires`, when it is set.
    pub expires_line: Option<usize>,
    /// For a workload identity, the line and the name of the key that names its token file:
    /// `federated_token_file` (the tenant's or `[defaults]`'), or, for the file
    /// `AZURE_FEDERATED_TOKEN_FILE` names, the tenant's header and a name that says so.
    pub token_file_key: Option<(usize, &'static str)>,
    /// The credential.
    pub credential: CredentialConfig,
}

/// Which signature a certificate's client assertion uses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AssertionAlgorithm {
    /// RSA-PSS with SHA-256 and an `x5t#S256` thumbprint: what Microsoft documents today.
    #[default]
    Ps256,
    /// RSA PKCS#1 v1.5 with SHA-256 and a SHA-1 `x5t`: for legacy registrations.
    Rs256,
}

/// `client_certificate = { cert = …, key = …, algorithm = …, send_x5c = … }`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertificateConfig {
    /// PEM certificate (leaf first; further certificates are the chain for `x5c`).
    pub cert: PathBuf,
    /// PEM private key (PKCS#8 or PKCS#1); may be the same file as `cert`.
    pub key: PathBuf,
    /// PS256 (default) or RS256.
    pub algorithm: AssertionAlgorithm,
    /// Send the certificate chain in the assertion header (subject-name/issuer authentication).
    pub send_x5c: bool,
    /// Read from Azure Key Vault instead of files: the secret URL of a certificate whose
    /// content type is PEM (`cert` and `key` then name that URL in messages).
    pub key_vault: Option<String>,
}

/// Where a managed identity token comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ManagedIdentitySource {
    /// The instance metadata service (VMs, scale sets, AKS nodes); endpoint from `[daemon]`.
    Imds,
    /// App Service / Functions / Container Apps: `IDENTITY_ENDPOINT` + `IDENTITY_HEADER`.
    AppService {
        /// `IDENTITY_ENDPOINT`.
        endpoint: String,
        /// `IDENTITY_HEADER`, sent as `X-IDENTITY-HEADER`.
        header: SecretSource,
    },
}

/// Which of the host's managed identities a tenant uses. Chosen explicitly
/// (`managed_identity = "system"` or `{ client_id | object_id | resource_id = … }`): the
/// Entra app's `client_id` is a different thing and never selects an identity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ManagedIdentityId {
    /// The host's system-assigned identity: no selector is sent.
    System,
    /// A user-assigned identity by its client (application) ID.
    ClientId(String),
    /// A user-assigned identity by its object (principal) ID.
    ObjectId(String),
    /// A user-assigned identity by its Azure resource ID
    /// (`/subscriptions/…/providers/Microsoft.ManagedIdentity/userAssignedIdentities/…`).
    ResourceId(String),
}

impl ManagedIdentityId {
    /// The identity's client ID, when it is chosen by one: the tenant's `client_id` then (never
    /// the Entra app's).
    pub fn client_id(&self) -> Option<&str> {
        match self {
            ManagedIdentityId::ClientId(id) => Some(id),
            _ => None,
        }
    }
}

/// `credential = "managed_identity"`: where the token comes from and which identity asks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManagedIdentityConfig {
    /// IMDS, or App Service's endpoint when its environment is present.
    pub source: ManagedIdentitySource,
    /// The identity.
    pub identity: ManagedIdentityId,
}

/// Which kind of token server a tenant talks to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Provider {
    /// Microsoft Entra ID (the default).
    #[default]
    Entra,
    /// Any OAuth 2.0 server with the client-credentials grant (RFC 6749 §4.4).
    Oauth2,
}

/// How the client authenticates to a generic OAuth2 server (RFC 6749 §2.3.1).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuth {
    /// `client_id` and `client_secret` in the form body.
    #[default]
    ClientSecretPost,
    /// HTTP Basic with the URL-encoded id and secret.
    ClientSecretBasic,
}

/// A generic OAuth2 token endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OAuth2Config {
    /// The token endpoint.
    pub token_url: String,
    /// `scope`, sent when set.
    pub scope: Option<String>,
    /// `audience`, sent when set (Auth0, Okta and others use it).
    pub audience: Option<String>,
    /// The RFC 8707 resource indicator sent as `resource`, when set. One at most: conforming
    /// servers refuse several in a client-credentials request (`invalid_target`).
    pub resource: Option<String>,
    /// Basic or form-body client authentication.
    pub auth: ClientAuth,
}

/// One tenant, with `[defaults]` merged in and every value validated.
///
/// Equality is by effective settings (see the `PartialEq` impl): it is how a reload decides
/// whether a tenant changed.
#[derive(Clone, Debug)]
pub struct TenantConfig {
    /// Unique name: file paths, logs and metric labels.
    pub name: String,
    /// Entra tenant (GUID or verified domain) in the token URL; `None` where there is no Entra
    /// token URL to put it in (a generic OAuth2 server, a managed identity without a configured
    /// tenant).
    pub tenant_id: Option<String>,
    /// Application (client) ID; `None` for a managed identity not chosen by its client ID
    /// (system-assigned, or chosen by object or resource ID).
    pub client_id: Option<Arc<str>>,
    /// The credential.
    pub credential: CredentialConfig,
    /// Set for `provider = "oauth2"`; `None` for Entra. Boxed, like `schedule`: rare, and a
    /// hundred thousand tenants carry the field.
    pub oauth2: Option<Box<OAuth2Config>>,
    /// Authority host without trailing slash.
    pub authority_host: Arc<str>,
    /// Endpoint version.
    pub api: ApiVersion,
    /// App ID URI of the resource (Power BI unless overridden); for a generic OAuth2 server the
    /// RFC 8707 resource indicator sent, or empty when none is sent.
    pub resource: Arc<str>,
    /// Fraction of the lifetime after which to refresh.
    pub refresh_at: f64,
    /// ± fraction of the lifetime, stable per tenant.
    pub jitter: f64,
    /// Where the token is written.
    pub sinks: Vec<SinkConfig>,
    /// Extra forced refreshes.
    pub schedule: Option<Box<CronSchedule>>,
    /// What the daemon does with the Power BI API itself (the access probe); `None` when
    /// nothing. Boxed: opt-in, and a hundred thousand tenants carry the field.
    pub powerbi: Option<Box<PowerBiConfig>>,
    /// For a credential kept in Azure Key Vault, the name of the Key Vault identity that reads
    /// it (`key_vault_credential`; [`KeyVaultConfig::DEFAULT_IDENTITY`] for `[key_vault]`'s
    /// own); `None` for a credential kept anywhere else. A configuration built in code may
    /// leave it `None` for a Key Vault credential too: the default identity reads it then.
    pub key_vault_credential: Option<Arc<str>>,
    /// Line of the `[[tenant]]` header, for messages that concern the whole tenant. Not a
    /// setting: equality ignores it.
    pub line: Option<usize>,
}

/// Two tenant configurations are equal when they would behave the same: every setting is
/// compared, and what only serves messages is not. Today that is `line` alone: a reload that
/// merely moves a tenant in the file (a comment added above it) must not restart it, which would
/// make a raw-format tenant refetch and a failing tenant retry at once instead of after
/// `permanent_retry_interval`. The destructuring names every field, so a new field does not
/// compile until someone decides which kind it is.
impl PartialEq for TenantConfig {
    fn eq(&self, other: &Self) -> bool {
        let TenantConfig {
            name,
            tenant_id,
            client_id,
            credential,
            oauth2,
            authority_host,
            api,
            resource,
            refresh_at,
            jitter,
            sinks,
            schedule,
            powerbi,
            key_vault_credential,
            line: _,
        } = self;
        *name == other.name
            && *tenant_id == other.tenant_id
            && *client_id == other.client_id
            && *credential == other.credential
            && *oauth2 == other.oauth2
            && *authority_host == other.authority_host
            && *api == other.api
            && *resource == other.resource
            && *refresh_at == other.refresh_at
            && *jitter == other.jitter
            && *sinks == other.sinks
            && *schedule == other.schedule
            && *powerbi == other.powerbi
            && *key_vault_credential == other.key_vault_credential
    }
}

/// `[key_vault]`: the identities that read secrets from Azure Key Vault, and how often.
#[derive(Clone, Debug, PartialEq)]
pub struct KeyVaultConfig {
    /// Every identity: `[key_vault]`'s own first (named [`KeyVaultConfig::DEFAULT_IDENTITY`]),
    /// when it has one, then each `[key_vault.identities.<name>]` in name order. Each keeps its
    /// own token cache and its own cache of values.
    pub identities: Vec<KeyVaultIdentity>,
    /// How long a value read from Key Vault is used before it is read again (rotation).
    pub refresh_interval: Duration,
}

impl KeyVaultConfig {
    /// An hour: a rotation is picked up within the hour anyway, and at once when Entra rejects
    /// the old value; Key Vault's limits are per vault, shared with everyone else reading it.
    pub(crate) const DEFAULT_REFRESH_INTERVAL: Duration = Duration::from_secs(3600);

    /// The name of `[key_vault]`'s own identity, the one a tenant without
    /// `key_vault_credential` uses; no `[key_vault.identities.<name>]` may take it.
    pub const DEFAULT_IDENTITY: &str = "default";

    /// One identity, `[key_vault]`'s own, that may follow no challenge to another tenant: for
    /// configurations built in code (`demo`, tests).
    pub fn new(identity: Arc<TenantConfig>, refresh_interval: Duration) -> KeyVaultConfig {
        KeyVaultConfig {
            identities: vec![KeyVaultIdentity {
                name: KeyVaultConfig::DEFAULT_IDENTITY.to_owned(),
                identity,
                allowed_tenants: AllowedTenants::default(),
            }],
            refresh_interval,
        }
    }

    /// The identity named `name` (`None`: the default one).
    pub fn identity(&self, name: Option<&str>) -> Option<&KeyVaultIdentity> {
        let name = name.unwrap_or(KeyVaultConfig::DEFAULT_IDENTITY);
        self.identities
            .iter()
            .find(|identity| identity.name == name)
    }
}

/// One identity that reads Key Vault: `[key_vault]`'s own, or a `[key_vault.identities.<name>]`.
#[derive(Clone, Debug, PartialEq)]
pub struct KeyVaultIdentity {
    /// [`KeyVaultConfig::DEFAULT_IDENTITY`], or the `<name>` of its table: what tenants name in
    /// `key_vault_credential`, and what `/status` and the metrics show.
    pub name: String,
    /// The identity as a token request: a managed or workload identity asking for the Key Vault
    /// resource of its cloud. Never written to a sink.
    pub identity: Arc<TenantConfig>,
    /// `key_vault_allowed_tenants`: the tenants other than its own a vault's challenge may send
    /// it to for a token. Always empty for a managed identity, which has no other.
    pub allowed_tenants: AllowedTenants,
}

/// `key_vault_allowed_tenants = ["<tenant GUID>", …]` or `["*"]`: which tenants, besides the
/// identity's own, a vault's 401 challenge may name and be followed to, as azure-identity's
/// `additionally_allowed_tenants`. A vault in another tenant is otherwise refused before any
/// token is asked for there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AllowedTenants {
    /// These tenant IDs (lower case); empty: none but the identity's own.
    Only(Vec<String>),
    /// `["*"]`: any tenant.
    Any,
}

impl Default for AllowedTenants {
    fn default() -> Self {
        AllowedTenants::Only(Vec::new())
    }
}

impl AllowedTenants {
    /// Whether a challenge naming `tenant` may be followed.
    pub fn allows(&self, tenant: &str) -> bool {
        match self {
            AllowedTenants::Any => true,
            AllowedTenants::Only(tenants) => tenants
                .iter()
                .any(|allowed| allowed.eq_ignore_ascii_case(tenant)),
        }
    }
}

/// Which REST API a tenant's token is for (its `resource`), and so which one its probe calls.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RestApi {
    /// The Power BI REST API, for a token for the cloud's Power BI resource (the default).
    #[default]
    PowerBi,
    /// The Microsoft Fabric REST API, for a token for Fabric's resource (`resource = "fabric"`).
    Fabric,
}

impl RestApi {
    /// As shown in `/status` (`api_probe.api`) and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            RestApi::PowerBi => "powerbi",
            RestApi::Fabric => "fabric",
        }
    }

    /// As named in prose: log lines and messages.
    pub fn title(self) -> &'static str {
        match self {
            RestApi::PowerBi => "Power BI",
            RestApi::Fabric => "Fabric",
        }
    }

    /// The probe's path when `probe.path` is not set.
    pub fn default_probe_path(self) -> &'static str {
        match self {
            RestApi::PowerBi => ProbeConfig::DEFAULT_PATH,
            RestApi::Fabric => ProbeConfig::FABRIC_DEFAULT_PATH,
        }
    }
}

/// A tenant's use of the Power BI REST API, or of the Fabric REST API for a tenant whose token
/// is for Fabric.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PowerBiConfig {
    /// The API the tenant's token is for: what the probe calls, and whether embed tokens can
    /// be made (Power BI only).
    pub api: RestApi,
    /// The REST API root without a trailing slash: the cloud's (`https://api.powerbi.com`, or
    /// `https://api.fabric.microsoft.com` for Fabric), or `powerbi_api` (`fabric_api`).
    pub api_root: Arc<str>,
    /// The access probe; `None` when off.
    pub probe: Option<ProbeConfig>,
    /// Embed tokens kept fresh for the tenant (`[[tenant.embed]]`).
    pub embeds: Vec<EmbedConfig>,
}

/// `[[tenant.embed]]`: an embed token (Power BI `GenerateToken`, the multi-resource V2 API) for
/// a fixed set of reports and datasets, refreshed like the access token and written to sinks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EmbedConfig {
    /// Unique within the tenant: file names, keys, logs and the `embed` metric label.
    pub name: String,
    /// Report ids (GUIDs).
    pub reports: Vec<String>,
    /// Dataset ids (GUIDs).
    pub datasets: Vec<String>,
    /// Workspaces in which the token may save new content (`Create`).
    pub target_workspaces: Vec<String>,
    /// What the token allows on the reports.
    pub access_level: AccessLevel,
    /// `lifetimeInMinutes`: shortens the token's life (Power BI caps it at the Entra token's).
    pub lifetime: Option<Duration>,
    /// `xmla_permissions = "ReadOnly"`: the token may also read the datasets through the XMLA
    /// endpoint (GenerateToken's `datasets[].xmlaPermissions`); `false` leaves it off.
    pub xmla_read_only: bool,
    /// The effective identities (row-level security) the token is made for; empty for
    /// datasets without RLS.
    pub identities: Vec<EffectiveIdentity>,
    /// `workspace`: the workspace (GUID) the reports live in. Their embed URLs are read with
    /// Get Report In Group (`/groups/{workspace}/reports/{id}`); without it, with Get Report
    /// (`/reports/{id}`, "My workspace", which a service principal does not have).
    pub workspace: Option<String>,
    /// The identities DirectQuery data sources with single sign-on are queried as
    /// (GenerateToken's `datasourceIdentities`); empty for most embeds.
    pub datasource_identities: Vec<DatasourceIdentity>,
    /// Where the embed token is written.
    pub sinks: Vec<SinkConfig>,
}

/// One `datasource_identities` entry: GenerateToken's `DatasourceIdentity`. Its blob is an
/// OAuth token for the data source (Azure SQL's, for instance), a secret that expires and is
/// replaced by whoever obtains it, so only where it is read from is configured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DatasourceIdentity {
    /// Where `identityBlob` is read from, again for every embed token made.
    pub identity_blob: SecretSource,
    /// The data sources the identity applies to (`datasources`).
    pub datasources: Vec<DatasourceSelector>,
}

/// GenerateToken's `DatasourceSelector`: one data source by its type and connection details,
/// as Power BI's Get Datasources APIs report them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DatasourceSelector {
    /// `datasourceType`, such as `Sql` or `Extension`.
    pub datasource_type: String,
    /// `connectionDetails`: the fields set, by their GenerateToken names (`server`,
    /// `database`, `url`, `path`, `extensionDataSourceKind`, `extensionDataSourcePath`), in
    /// that order.
    pub connection_details: Vec<(&'static str, String)>,
}

/// One `identities` entry: GenerateToken's `EffectiveIdentity`, the user a dataset with
/// row-level security filters its rows for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EffectiveIdentity {
    /// `username`: what the dataset's RLS rules see as `USERNAME()`/`USERPRINCIPALNAME()`.
    pub username: String,
    /// `roles`: the RLS roles applied.
    pub roles: Vec<String>,
    /// `datasets`: the datasets (of the embed's) the identity applies to.
    pub datasets: Vec<String>,
    /// `reports`: the reports (of the embed's) it applies to, for paginated reports.
    pub reports: Vec<String>,
    /// `customData`: the value `CUSTOMDATA()` returns in an Azure Analysis Services model.
    pub custom_data: Option<String>,
}

/// `access_level`: what an embed token allows on its reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AccessLevel {
    /// Read only.
    #[default]
    View,
    /// Edit the reports (`allowEdit`).
    Edit,
    /// Edit, and save new reports in `target_workspaces`.
    Create,
}

impl AccessLevel {
    /// As written in the config and in the token file.
    pub fn as_str(self) -> &'static str {
        match self {
            AccessLevel::View => "View",
            AccessLevel::Edit => "Edit",
            AccessLevel::Create => "Create",
        }
    }
}

/// `probe = { interval = "15m", path = "/v1.0/myorg/groups?$top=1" }`: a cheap authenticated
/// call that shows whether Power BI accepts the tenant's tokens, which Entra issuing them does
/// not prove.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeConfig {
    /// Time between probes (besides the one after every refresh).
    pub interval: Duration,
    /// Path and query under the API root.
    pub path: String,
}

impl ProbeConfig {
    /// Lists at most one workspace: the cheapest call every service principal may make.
    pub const DEFAULT_PATH: &str = "/v1.0/myorg/groups?$top=1";
    /// Fabric's List Workspaces: the workspaces the service principal can access, one page.
    /// Fabric's list takes no page size, and the service principal of an embedding app is in a
    /// handful of workspaces.
    pub const FABRIC_DEFAULT_PATH: &str = "/v1/workspaces";
    /// Often enough to notice a revoked setting within the half hour the alert waits; rare
    /// enough to be noise next to the application's own calls.
    pub(crate) const DEFAULT_INTERVAL: Duration = Duration::from_secs(15 * 60);
}

impl TenantConfig {
    /// A Power BI tenant on Entra's public cloud with a client secret, the common case; for
    /// configurations built in code (`demo`, tests, benchmarks).
    pub fn entra(
        name: &str,
        tenant_id: &str,
        client_id: &str,
        secret: SecretSource,
        authority_host: &str,
        sink: PathBuf,
    ) -> TenantConfig {
        TenantConfig {
            name: name.to_owned(),
            tenant_id: Some(tenant_id.to_owned()),
            client_id: Some(client_id.into()),
            credential: CredentialConfig::ClientSecret {
                source: secret,
                expires_on: None,
            },
            oauth2: None,
            authority_host: authority_host.into(),
            api: ApiVersion::V2,
            resource: Cloud::Public.power_bi_resource().into(),
            refresh_at: 0.5,
            jitter: 0.1,
            sinks: vec![SinkConfig::File(FileSinkConfig {
                path: sink,
                format: FileFormat::Json,
                mode: 0o600,
            })],
            schedule: None,
            powerbi: None,
            key_vault_credential: None,
            line: None,
        }
    }

    /// The token endpoint URL: the generic OAuth2 server's, or Entra's for the tenant; `None`
    /// for a managed identity without a tenant ID, which asks its host instead.
    pub fn token_url(&self) -> Option<String> {
        if let Some(oauth2) = &self.oauth2 {
            return Some(oauth2.token_url.clone());
        }
        let (host, tenant) = (&self.authority_host, self.tenant_id.as_ref()?);
        Some(match self.api {
            ApiVersion::V1 => format!("{host}/{tenant}/oauth2/token"),
            ApiVersion::V2 => format!("{host}/{tenant}/oauth2/v2.0/token"),
        })
    }

    /// The `scope` the token request asks for, if any: Entra v2's `<resource>/.default`, or a
    /// generic OAuth2 server's `scope`. Written to the token file so it says what was asked.
    pub fn requested_scope(&self) -> Option<String> {
        match (&self.oauth2, self.api) {
            (Some(oauth2), _) => oauth2.scope.clone(),
            (None, ApiVersion::V2) => Some(self.scope()),
            (None, ApiVersion::V1) => None,
        }
    }

    /// The `audience` the token request asks for (generic OAuth2 servers only).
    pub(crate) fn requested_audience(&self) -> Option<&str> {
        self.oauth2.as_ref()?.audience.as_deref()
    }

    /// The v2 scope for the resource.
    pub fn scope(&self) -> String {
        format!("{}/.default", self.resource)
    }
}

/// The admin HTTP server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerConfig {
    /// Where `/metrics`, `/healthz`, `/readyz` and `/status` are served.
    pub listen: SocketAddr,
    /// Reload when the config file changes, in addition to SIGHUP.
    pub watch_config: bool,
    /// How often `watch_config` compares the file's content hash.
    pub watch_interval: Duration,
    /// Which tenants get per-tenant series in `/metrics`; a reload changes it for the next
    /// scrape.
    pub per_tenant_metrics: PerTenantMetrics,
    /// `[server.tls]`: serve HTTPS instead of HTTP.
    pub tls: Option<ServerTls>,
    /// `[server.basic_auth]`: ask every request for a user and password.
    pub basic_auth: Option<BasicAuthConfig>,
}

/// `[server.tls]`: the admin server's certificate and key, PEM files read at start and again
/// whenever they change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerTls {
    /// The certificate chain, leaf first.
    pub cert_file: PathBuf,
    /// The private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// Lines of `cert_file` and `key_file` in the config file, for `check`'s problems.
    pub lines: [Option<usize>; 2],
}

/// `[server.basic_auth]`: who may read the admin endpoints. `Debug` names the users only.
#[derive(Clone, PartialEq, Eq)]
pub struct BasicAuthConfig {
    /// User name → bcrypt hash of the password (`$2a$`, `$2b$` or `$2y$`, as htpasswd and
    /// exporter-toolkit's `basic_auth_users` have them).
    pub users: std::collections::BTreeMap<String, String>,
    /// `/healthz` answers without credentials (kubelet and systemd probes carry none).
    pub healthz_open: bool,
}

impl std::fmt::Debug for BasicAuthConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BasicAuthConfig")
            .field("users", &self.users.keys().collect::<Vec<_>>())
            .field("healthz_open", &self.healthz_open)
            .finish()
    }
}

/// Process-wide knobs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DaemonConfig {
    /// Cap on token requests in flight at once, across all tenants.
    pub max_concurrent_requests: usize,
    /// Cap on token requests started per second, across all tenants (a token bucket holding
    /// one second's worth); `None`: no cap beyond `max_concurrent_requests`.
    pub max_requests_per_second: Option<u32>,
    /// TCP+TLS connect timeout.
    pub connect_timeout: Duration,
    /// Whole-request timeout, connect included.
    pub request_timeout: Duration,
    /// First retry delay after a transient failure, and the floor of every retry.
    pub backoff_min: Duration,
    /// Ceiling of the exponential backoff.
    pub backoff_max: Duration,
    /// Retry interval for permanent (configuration) failures.
    pub permanent_retry_interval: Duration,
    /// How long in-flight refreshes may take after SIGTERM.
    pub shutdown_grace: Duration,
    /// Extra PEM trust anchors (corporate TLS proxies).
    pub ca_file: Option<PathBuf>,
    /// The instance metadata service's token URL, for `credential = "managed_identity"`.
    pub imds_endpoint: String,
    /// Log format unless `--log-format` overrides it.
    pub log_format: LogFormat,
}

impl Default for DaemonConfig {
    fn default() -> Self {
        DaemonConfig {
            max_concurrent_requests: 16,
            max_requests_per_second: None,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
            backoff_min: Duration::from_secs(1),
            backoff_max: Duration::from_secs(300),
            permanent_retry_interval: Duration::from_secs(900),
            shutdown_grace: Duration::from_secs(10),
            ca_file: None,
            imds_endpoint: DEFAULT_IMDS_ENDPOINT.to_owned(),
            log_format: LogFormat::Text,
        }
    }
}

/// A validated configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// The file it came from (for reloads and messages).
    pub path: PathBuf,
    /// Admin server.
    pub server: ServerConfig,
    /// Process-wide knobs.
    pub daemon: DaemonConfig,
    /// The shared Redis, if any sink or the fleet uses one.
    pub redis: Option<RedisConfig>,
    /// Fleet mode, when enabled.
    pub fleet: Option<FleetConfig>,
    /// `[key_vault]`: how secrets in Azure Key Vault are read, when any tenant names one.
    pub key_vault: Option<KeyVaultConfig>,
    /// Tenants in file order.
    pub tenants: Vec<Arc<TenantConfig>>,
}
