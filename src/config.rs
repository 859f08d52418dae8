//! The configuration file: schema, defaults inheritance, and validation.
//!
//! Loading never stops at the first mistake: every section and every `[[tenant]]` is deserialized
//! on its own, and every rule is checked, so `check` can print all problems at once, each with the
//! file, the line, the key and what was expected. A config that has any problem is rejected whole;
//! on reload that means the running config stays in place.
//!
//! Secrets are never written in the file. `client_secret` names where the secret lives
//! (`{ env = "…" }`, `{ file = "…" }` or `{ systemd = "…" }`); it is read at every refresh, so a
//! rotated secret is picked up without a restart.

use serde::Deserialize;
use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;
use toml::Spanned;
use toml::de::{DeValue, ValueDeserializer};

use crate::cloud::Cloud;
use crate::credential::SecretSource;

/// Default admin listen address: loopback, so metrics are not exposed by accident.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9464";

/// Azure's instance metadata service token endpoint (link-local; plain HTTP by design).
pub const DEFAULT_IMDS_ENDPOINT: &str = "http://169.254.169.254/metadata/identity/oauth2/token";

/// One problem found in a configuration file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// 1-based line, when the parser knows it.
    pub line: Option<usize>,
    /// Dotted key path, e.g. `tenant[2].schedule`.
    pub key: Option<String>,
    /// What is wrong and what was expected.
    pub message: String,
}

/// Every problem in one file; `Display` prints one per line, prefixed with `file:line:`.
#[derive(Clone, Debug, thiserror::Error)]
pub struct ConfigError {
    /// The file the problems are in.
    pub path: PathBuf,
    /// In file order.
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, problem) in self.problems.iter().enumerate() {
            if index > 0 {
                writeln!(f)?;
            }
            write!(f, "{}", self.path.display())?;
            if let Some(line) = problem.line {
                write!(f, ":{line}")?;
            }
            write!(f, ": ")?;
            if let Some(key) = &problem.key {
                write!(f, "{key}: ")?;
            }
            write!(f, "{}", problem.message)?;
        }
        Ok(())
    }
}

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

/// Where a tenant's token goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SinkConfig {
    /// A file written atomically.
    File(FileSinkConfig),
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
    ManagedIdentity(ManagedIdentitySource),
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

/// Which kind of token server a tenant talks to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
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
    /// Basic or form-body client authentication.
    pub auth: ClientAuth,
}

/// One tenant, with `[defaults]` merged in and every value validated.
#[derive(Clone, Debug, PartialEq)]
pub struct TenantConfig {
    /// Unique name: file paths, logs and metric labels.
    pub name: String,
    /// Entra tenant (GUID or verified domain) in the token URL; empty where it does not apply
    /// (a generic OAuth2 server, a managed identity without a configured tenant).
    pub tenant_id: String,
    /// Application (client) ID; empty for a system-assigned managed identity.
    pub client_id: String,
    /// The credential.
    pub credential: CredentialConfig,
    /// Set for `provider = "oauth2"`; `None` for Entra.
    pub oauth2: Option<OAuth2Config>,
    /// Authority host without trailing slash.
    pub authority_host: String,
    /// Endpoint version.
    pub api: ApiVersion,
    /// App ID URI of the resource (Power BI unless overridden).
    pub resource: String,
    /// Fraction of the lifetime after which to refresh.
    pub refresh_at: f64,
    /// ± fraction of the lifetime, stable per tenant.
    pub jitter: f64,
    /// Where the token is written.
    pub sinks: Vec<SinkConfig>,
    /// Extra forced refreshes.
    pub schedule: Option<CronSchedule>,
    /// Line of the `[[tenant]]` header, for messages that concern the whole tenant.
    pub line: Option<usize>,
    /// Line of the `client_secret` key (tenant's or `[defaults]`'s), for credential problems.
    pub credential_line: Option<usize>,
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
            tenant_id: tenant_id.to_owned(),
            client_id: client_id.to_owned(),
            credential: CredentialConfig::ClientSecret {
                source: secret,
                expires_on: None,
            },
            oauth2: None,
            authority_host: authority_host.to_owned(),
            api: ApiVersion::V2,
            resource: Cloud::Public.power_bi_resource().to_owned(),
            refresh_at: 0.5,
            jitter: 0.1,
            sinks: vec![SinkConfig::File(FileSinkConfig {
                path: sink,
                format: FileFormat::Json,
                mode: 0o600,
            })],
            schedule: None,
            line: None,
            credential_line: None,
        }
    }

    /// The token endpoint URL.
    pub fn token_url(&self) -> String {
        if let Some(oauth2) = &self.oauth2 {
            return oauth2.token_url.clone();
        }
        match self.api {
            ApiVersion::V1 => format!("{}/{}/oauth2/token", self.authority_host, self.tenant_id),
            ApiVersion::V2 => format!(
                "{}/{}/oauth2/v2.0/token",
                self.authority_host, self.tenant_id
            ),
        }
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
}

/// Process-wide knobs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DaemonConfig {
    /// Cap on token requests in flight at once, across all tenants.
    pub max_concurrent_requests: usize,
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
    /// Tenants in file order.
    pub tenants: Vec<Arc<TenantConfig>>,
}

// ---------------------------------------------------------------------------------------------
// Raw schema: what serde reads. Everything optional so that defaults can be merged and so that
// a missing key is reported by validation (with a line) rather than by serde (without one).

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawServer {
    listen: Option<Spanned<String>>,
    watch_config: Option<bool>,
    watch_interval: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDaemon {
    max_concurrent_requests: Option<Spanned<i64>>,
    connect_timeout: Option<Spanned<String>>,
    request_timeout: Option<Spanned<String>>,
    backoff_min: Option<Spanned<String>>,
    backoff_max: Option<Spanned<String>>,
    permanent_retry_interval: Option<Spanned<String>>,
    shutdown_grace: Option<Spanned<String>>,
    ca_file: Option<Spanned<PathBuf>>,
    imds_endpoint: Option<Spanned<String>>,
    log_format: Option<LogFormat>,
}

/// Used for both `[defaults]` and `[[tenant]]`; `name` and `tenant_id` are rejected in defaults.
#[derive(Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
struct RawTenant {
    name: Option<Spanned<String>>,
    tenant_id: Option<Spanned<String>>,
    client_id: Option<Spanned<String>>,
    client_secret: Option<Spanned<RawSecret>>,
    client_secret_expires: Option<Spanned<toml::Value>>,
    client_certificate: Option<Spanned<RawCertificate>>,
    credential: Option<Spanned<String>>,
    federated_token_file: Option<Spanned<PathBuf>>,
    provider: Option<Provider>,
    token_url: Option<Spanned<String>>,
    scope: Option<Spanned<String>>,
    audience: Option<Spanned<String>>,
    auth: Option<ClientAuth>,
    cloud: Option<Cloud>,
    authority_host: Option<Spanned<String>>,
    api: Option<ApiVersion>,
    resource: Option<Spanned<String>>,
    refresh_at: Option<Spanned<f64>>,
    jitter: Option<Spanned<f64>>,
    sinks: Option<Spanned<Vec<RawSink>>>,
    schedule: Option<Spanned<String>>,
}

/// `client_certificate = { cert = "…", key = "…", algorithm = "ps256", send_x5c = false }`.
#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields)]
struct RawCertificate {
    cert: PathBuf,
    key: Option<PathBuf>,
    algorithm: Option<AssertionAlgorithm>,
    send_x5c: Option<bool>,
}

/// `client_secret` as written: a reference, or (rejected, contents dropped) a literal string.
#[derive(Clone)]
enum RawSecret {
    Reference(SecretSource),
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
                        "{}; expected {{ env = \"VAR\" }}, {{ file = \"/path\" }} or {{ systemd = \"name\" }}",
                        err.message()
                    ))
                }),
            other => Err(D::Error::custom(format!(
                "expected {{ env = \"VAR\" }}, {{ file = \"/path\" }} or {{ systemd = \"name\" }}, got a {}",
                other.type_str()
            ))),
        }
    }
}

#[derive(Deserialize, Clone)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
enum RawSink {
    File {
        path: String,
        format: Option<FileFormat>,
        mode: Option<RawMode>,
    },
}

/// `mode = "0600"` or `mode = 0o600`.
#[derive(Deserialize, Clone)]
#[serde(untagged)]
enum RawMode {
    Text(String),
    Number(i64),
}

// ---------------------------------------------------------------------------------------------

/// Reads, parses and validates a configuration file.
///
/// # Errors
/// Every problem found, with lines where known.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    load_with(path, false)
}

/// Like [`load`], and also reads every referenced secret (without contacting Entra), reporting
/// a missing env var or unreadable file as a problem. Used by `check`.
///
/// # Errors
/// Every problem found, with lines where known.
pub fn load_strict(path: &Path) -> Result<Config, ConfigError> {
    load_with(path, true)
}

fn load_with(path: &Path, verify_credentials: bool) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|err| ConfigError {
        path: path.to_owned(),
        problems: vec![Problem {
            line: None,
            key: None,
            message: format!("cannot read the configuration file: {err}"),
        }],
    })?;
    parse_with(&text, path, verify_credentials)
}

/// Parses and validates configuration text; `path` is used for messages and relative paths.
///
/// # Errors
/// Every problem found, with lines where known.
pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
    parse_with(text, path, false)
}

fn parse_with(text: &str, path: &Path, verify_credentials: bool) -> Result<Config, ConfigError> {
    parse_with_env(text, path, verify_credentials, &|key| {
        std::env::var(key).ok()
    })
}

fn parse_with_env(
    text: &str,
    path: &Path,
    verify_credentials: bool,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigError> {
    let line_starts = std::iter::once(0)
        .chain(text.match_indices('\n').map(|(at, _)| at + 1))
        .collect();
    let mut loader = Loader {
        text,
        line_starts,
        base_dir: path.parent().map(Path::to_owned).unwrap_or_default(),
        problems: Vec::new(),
        verify_credentials,
        defaults_broken: false,
        seen: Vec::new(),
        env,
    };
    let config = loader.load(path);
    let mut problems = loader.problems;
    match config {
        Some(config) if problems.is_empty() => Ok(config),
        _ => {
            problems.sort_by_key(|p| p.line.unwrap_or(usize::MAX));
            Err(ConfigError {
                path: path.to_owned(),
                problems,
            })
        }
    }
}

struct Loader<'a> {
    text: &'a str,
    /// Byte offset where each line starts (line 1 at index 0).
    line_starts: Vec<usize>,
    /// Relative paths in the file are relative to the file's directory.
    base_dir: PathBuf,
    problems: Vec<Problem>,
    /// Read every secret source (for `check`).
    verify_credentials: bool,
    /// `[defaults]` could not be read: do not also blame every tenant for missing keys.
    defaults_broken: bool,
    /// (name, line, sink paths) of every tenant read, valid or not, for cross-tenant rules.
    seen: Vec<(String, Option<usize>, Vec<PathBuf>)>,
    /// Environment lookup (workload identity and App Service settings); injectable for tests.
    env: &'a dyn Fn(&str) -> Option<String>,
}

impl<'a> Loader<'a> {
    /// 1-based line of a byte offset: a binary search over the line starts, because a config
    /// with ten thousand tenants asks this for every tenant.
    fn line_of(&self, offset: usize) -> usize {
        self.line_starts.partition_point(|start| *start <= offset)
    }

    fn problem(&mut self, offset: Option<usize>, key: impl Into<Option<String>>, message: String) {
        let line = offset.map(|o| self.line_of(o));
        self.problems.push(Problem {
            line,
            key: key.into(),
            message,
        });
    }

    /// Deserializes one section, recording errors (with their lines) instead of stopping.
    ///
    /// An unknown key is reported, removed and the section parsed again, so that one typo does
    /// not hide the section's other problems. Any other error gives up on the section.
    fn section<T: for<'de> Deserialize<'de>>(
        &mut self,
        mut value: Spanned<DeValue<'a>>,
        key: &str,
    ) -> Option<T> {
        let start = value.span().start;
        loop {
            match T::deserialize(ValueDeserializer::from(value.clone())) {
                Ok(parsed) => return Some(parsed),
                Err(err) => {
                    let offset = err.span().map(|s| s.start).unwrap_or(start);
                    self.problem(Some(offset), key.to_owned(), err.message().to_owned());
                    if !err.message().starts_with("unknown field") {
                        return None;
                    }
                    let span = value.span();
                    let DeValue::Table(table) = value.get_ref() else {
                        return None;
                    };
                    let mut table = table.clone();
                    let unknown = table
                        .keys()
                        .find(|k| Some(k.span()) == err.span())
                        .cloned()?;
                    table.remove(&unknown);
                    value = Spanned::new(span, DeValue::Table(table));
                }
            }
        }
    }

    fn load(&mut self, path: &Path) -> Option<Config> {
        let root = match toml::de::DeTable::parse(self.text) {
            Ok(root) => root.into_inner(),
            Err(err) => {
                let offset = err.span().map(|s| s.start);
                self.problem(offset, None, format!("not valid TOML: {}", err.message()));
                return None;
            }
        };
        let mut server = RawServer::default();
        let mut daemon = RawDaemon::default();
        let mut defaults = RawTenant::default();
        let mut tenants: Vec<(usize, RawTenant)> = Vec::new();
        let mut sections_ok = true;
        for (key, value) in root {
            let key_offset = key.span().start;
            match key.get_ref().as_ref() {
                "server" => match self.section(value, "server") {
                    Some(parsed) => server = parsed,
                    None => sections_ok = false,
                },
                "daemon" => match self.section(value, "daemon") {
                    Some(parsed) => daemon = parsed,
                    None => sections_ok = false,
                },
                "defaults" => match self.section::<RawTenant>(value, "defaults") {
                    Some(parsed) => {
                        for (present, name) in [
                            (parsed.name.as_ref().map(|s| s.span().start), "name"),
                            (
                                parsed.tenant_id.as_ref().map(|s| s.span().start),
                                "tenant_id",
                            ),
                        ] {
                            if let Some(offset) = present {
                                self.problem(
                                    Some(offset),
                                    format!("defaults.{name}"),
                                    format!("`{name}` belongs in a [[tenant]], not in [defaults]"),
                                );
                            }
                        }
                        defaults = parsed;
                    }
                    None => {
                        sections_ok = false;
                        self.defaults_broken = true;
                    }
                },
                "tenant" => {
                    let Some(items) = value.get_ref().as_array() else {
                        self.problem(
                            Some(key_offset),
                            "tenant".to_owned(),
                            "expected an array of tables: write each tenant as [[tenant]]"
                                .to_owned(),
                        );
                        sections_ok = false;
                        continue;
                    };
                    for (index, item) in items.iter().enumerate() {
                        let offset = item.span().start;
                        match self.section::<RawTenant>(item.clone(), &format!("tenant[{index}]")) {
                            Some(parsed) => tenants.push((offset, parsed)),
                            None => sections_ok = false,
                        }
                    }
                }
                other => {
                    self.problem(
                        Some(key_offset),
                        other.to_owned(),
                        "unknown section; expected one of `server`, `daemon`, `defaults`, `tenant`"
                            .to_owned(),
                    );
                }
            }
        }
        let server = self.server(server);
        let daemon = self.daemon(daemon);
        let mut resolved = Vec::new();
        for (index, (offset, raw)) in tenants.into_iter().enumerate() {
            if let Some(tenant) = self.tenant(index, offset, raw, &defaults) {
                // Straight into an Arc: collecting a Vec<TenantConfig> into Vec<Arc<_>> later
                // would reuse (and keep) the large buffer, megabytes at ten thousand tenants.
                resolved.push(Arc::new(tenant));
            }
        }
        self.cross_tenant_rules();
        if !sections_ok {
            return None;
        }
        Some(Config {
            path: path.to_owned(),
            server: server?,
            daemon: daemon?,
            tenants: resolved,
        })
    }

    fn server(&mut self, raw: RawServer) -> Option<ServerConfig> {
        let listen = match raw.listen {
            None => DEFAULT_LISTEN.parse().ok()?,
            Some(listen) => match listen.get_ref().parse::<SocketAddr>() {
                Ok(addr) => addr,
                Err(_) => {
                    self.problem(
                        Some(listen.span().start),
                        "server.listen".to_owned(),
                        format!(
                            "expected an IP address and port such as \"127.0.0.1:9464\", got {:?}",
                            listen.get_ref()
                        ),
                    );
                    return None;
                }
            },
        };
        let watch_interval = self.duration(
            raw.watch_interval,
            "server.watch_interval",
            Duration::from_secs(5),
        )?;
        Some(ServerConfig {
            listen,
            watch_config: raw.watch_config.unwrap_or(false),
            watch_interval,
        })
    }

    fn duration(
        &mut self,
        raw: Option<Spanned<String>>,
        key: &str,
        default: Duration,
    ) -> Option<Duration> {
        let Some(raw) = raw else { return Some(default) };
        match humantime::parse_duration(raw.get_ref()) {
            Ok(duration) if !duration.is_zero() => Some(duration),
            _ => {
                self.problem(
                    Some(raw.span().start),
                    if key.contains('.') { key.to_owned() } else { format!("daemon.{key}") },
                    format!(
                        "expected a positive duration such as \"5s\", \"2m\" or \"1h 30m\", got {:?}",
                        raw.get_ref()
                    ),
                );
                None
            }
        }
    }

    fn daemon(&mut self, raw: RawDaemon) -> Option<DaemonConfig> {
        let defaults = DaemonConfig::default();
        let max_concurrent_requests = match raw.max_concurrent_requests {
            None => Some(defaults.max_concurrent_requests),
            Some(value) => match usize::try_from(*value.get_ref()) {
                Ok(n) if (1..=10_000).contains(&n) => Some(n),
                _ => {
                    self.problem(
                        Some(value.span().start),
                        "daemon.max_concurrent_requests".to_owned(),
                        format!(
                            "expected a whole number from 1 to 10000, got {}",
                            value.get_ref()
                        ),
                    );
                    None
                }
            },
        };
        let connect_timeout = self.duration(
            raw.connect_timeout,
            "connect_timeout",
            defaults.connect_timeout,
        );
        let request_timeout = self.duration(
            raw.request_timeout,
            "request_timeout",
            defaults.request_timeout,
        );
        let backoff_min_offset = raw.backoff_min.as_ref().map(|s| s.span().start);
        let backoff_min = self.duration(raw.backoff_min, "backoff_min", defaults.backoff_min);
        let backoff_max = self.duration(raw.backoff_max, "backoff_max", defaults.backoff_max);
        let permanent_retry_interval = self.duration(
            raw.permanent_retry_interval,
            "permanent_retry_interval",
            defaults.permanent_retry_interval,
        );
        let shutdown_grace = self.duration(
            raw.shutdown_grace,
            "shutdown_grace",
            defaults.shutdown_grace,
        );
        if let (Some(min), Some(max)) = (backoff_min, backoff_max)
            && min > max
        {
            self.problem(
                backoff_min_offset,
                "daemon.backoff_min".to_owned(),
                format!(
                    "backoff_min ({}) must not exceed backoff_max ({})",
                    humantime::format_duration(min),
                    humantime::format_duration(max)
                ),
            );
            return None;
        }
        let ca_file = raw.ca_file.map(|ca| {
            let offset = ca.span().start;
            let path = self.resolve_path(ca.into_inner());
            if let Err(err) = std::fs::metadata(&path) {
                self.problem(
                    Some(offset),
                    "daemon.ca_file".to_owned(),
                    format!("cannot read {}: {err}", path.display()),
                );
            }
            path
        });
        Some(DaemonConfig {
            max_concurrent_requests: max_concurrent_requests?,
            connect_timeout: connect_timeout?,
            request_timeout: request_timeout?,
            backoff_min: backoff_min?,
            backoff_max: backoff_max?,
            permanent_retry_interval: permanent_retry_interval?,
            shutdown_grace: shutdown_grace?,
            ca_file,
            imds_endpoint: raw
                .imds_endpoint
                .map(|e| e.into_inner())
                .unwrap_or_else(|| DEFAULT_IMDS_ENDPOINT.to_owned()),
            log_format: raw.log_format.unwrap_or_default(),
        })
    }

    fn resolve_path(&self, path: PathBuf) -> PathBuf {
        if path.is_absolute() {
            path
        } else {
            self.base_dir.join(path)
        }
    }

    fn tenant(
        &mut self,
        index: usize,
        offset: usize,
        raw: RawTenant,
        defaults: &RawTenant,
    ) -> Option<TenantConfig> {
        let here = |key: &str| format!("tenant[{index}].{key}");
        let before = self.problems.len();
        let line = Some(self.line_of(offset));

        let name = match &raw.name {
            None => {
                self.problem(
                    Some(offset),
                    here("name"),
                    "missing; every [[tenant]] needs a unique name".to_owned(),
                );
                None
            }
            Some(name) => {
                let valid = !name.get_ref().is_empty()
                    && name
                        .get_ref()
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
                    && !matches!(name.get_ref().as_str(), "." | "..");
                if !valid {
                    self.problem(
                        Some(name.span().start),
                        here("name"),
                        format!(
                            "{:?} is not a valid name: use letters, digits, '.', '_' and '-' only",
                            name.get_ref()
                        ),
                    );
                }
                Some(name.get_ref().clone())
            }
        };
        let label = name.clone().unwrap_or_else(|| format!("tenant[{index}]"));
        let here = |key: &str| format!("tenant {label:?}: {key}");

        let provider = raw.provider.or(defaults.provider).unwrap_or_default();
        let (credential, credential_line) = self.credential(offset, &raw, defaults, &here);
        let workload = matches!(credential, Some(CredentialConfig::WorkloadIdentity { .. }));
        let managed = matches!(credential, Some(CredentialConfig::ManagedIdentity(_)));

        let tenant_id = match &raw.tenant_id {
            None if provider == Provider::Oauth2 || managed => Some(String::new()),
            None if workload && (self.env)("AZURE_TENANT_ID").is_some() => {
                (self.env)("AZURE_TENANT_ID")
            }
            None => {
                self.problem(
                    Some(offset),
                    here("tenant_id"),
                    "missing; expected the tenant's GUID or verified domain".to_owned(),
                );
                None
            }
            Some(id) => {
                if !is_guid(id.get_ref()) && !is_domain(id.get_ref()) {
                    self.problem(
                        Some(id.span().start),
                        here("tenant_id"),
                        format!(
                            "expected a GUID or a domain such as contoso.onmicrosoft.com, got {:?}",
                            id.get_ref()
                        ),
                    );
                } else if matches!(
                    id.get_ref().to_ascii_lowercase().as_str(),
                    "common" | "organizations" | "consumers"
                ) {
                    self.problem(
                        Some(id.span().start),
                        here("tenant_id"),
                        format!(
                            "{:?} cannot issue app-only tokens; use the customer's tenant ID",
                            id.get_ref()
                        ),
                    );
                }
                Some(id.get_ref().clone())
            }
        };

        let client_id = match raw.client_id.as_ref().or(defaults.client_id.as_ref()) {
            // A system-assigned managed identity has no client ID to name.
            None if managed => Some(String::new()),
            None if workload && (self.env)("AZURE_CLIENT_ID").is_some() => {
                (self.env)("AZURE_CLIENT_ID")
            }
            None if self.defaults_broken => None,
            None => {
                self.problem(Some(offset), here("client_id"), "missing (in the tenant or in [defaults]); expected the application (client) ID".to_owned());
                None
            }
            Some(id) if id.get_ref().trim().is_empty() => {
                self.problem(
                    Some(id.span().start),
                    here("client_id"),
                    "must not be empty".to_owned(),
                );
                None
            }
            Some(id) => Some(id.get_ref().clone()),
        };

        let cloud = raw.cloud.or(defaults.cloud).unwrap_or_default();
        let configured_host = raw
            .authority_host
            .as_ref()
            .or(defaults.authority_host.as_ref())
            .map(|host| (host.get_ref().clone(), Some(host.span().start)));
        let env_host = workload
            .then(|| (self.env)("AZURE_AUTHORITY_HOST"))
            .flatten()
            .map(|host| (host, None));
        let authority_host = match configured_host.or(env_host) {
            None => Some(cloud.authority_host().to_owned()),
            Some((host, at)) => match check_authority_host(&host) {
                Ok(normalised) => Some(normalised),
                Err(message) => {
                    let key = if at.is_some() {
                        "authority_host"
                    } else {
                        "authority_host (from AZURE_AUTHORITY_HOST)"
                    };
                    self.problem(at.or(Some(offset)), here(key), message);
                    None
                }
            },
        };
        let api = raw.api.or(defaults.api).unwrap_or_default();
        let oauth2 = match provider {
            Provider::Entra => Some(None),
            Provider::Oauth2 => self
                .oauth2(offset, &raw, defaults, &credential, &here)
                .map(Some),
        };
        let resource = match (
            &oauth2,
            raw.resource.as_ref().or(defaults.resource.as_ref()),
        ) {
            (Some(Some(oauth2)), _) => Some(
                oauth2
                    .audience
                    .clone()
                    .or_else(|| oauth2.scope.clone())
                    .unwrap_or_else(|| oauth2.token_url.clone()),
            ),
            (_, None) => Some(cloud.power_bi_resource().to_owned()),
            (_, Some(resource)) => {
                let value = resource.get_ref().trim_end_matches('/');
                if value.ends_with("/.default") {
                    self.problem(
                        Some(resource.span().start),
                        here("resource"),
                        format!("{value:?} ends with /.default; give the App ID URI alone (the v2 scope adds /.default)"),
                    );
                    None
                } else if value.is_empty() || value.contains(char::is_whitespace) {
                    self.problem(
                        Some(resource.span().start),
                        here("resource"),
                        format!("expected one App ID URI such as https://analysis.windows.net/powerbi/api, got {value:?}"),
                    );
                    None
                } else {
                    Some(value.to_owned())
                }
            }
        };

        let refresh_at_raw = raw.refresh_at.as_ref().or(defaults.refresh_at.as_ref());
        let jitter_raw = raw.jitter.as_ref().or(defaults.jitter.as_ref());
        let refresh_at = refresh_at_raw.map(|v| *v.get_ref()).unwrap_or(0.5);
        let jitter = jitter_raw.map(|v| *v.get_ref()).unwrap_or(0.1);
        let fraction_offset = refresh_at_raw.or(jitter_raw).map(|v| v.span().start);
        let fractions_ok =
            (0.0..0.5).contains(&jitter) && refresh_at - jitter > 0.0 && refresh_at + jitter < 1.0;
        if !fractions_ok {
            self.problem(
                fraction_offset,
                here("refresh_at"),
                format!(
                    "refresh_at ({refresh_at}) ± jitter ({jitter}) must stay strictly between 0 and 1, with 0 <= jitter < 0.5"
                ),
            );
        }

        let sinks = match raw.sinks.as_ref().or(defaults.sinks.as_ref()) {
            None if self.defaults_broken => None,
            None => {
                self.problem(Some(offset), here("sinks"), "missing (in the tenant or in [defaults]); expected e.g. sinks = [{ type = \"file\", path = \"/var/lib/powerbi-tokend/{name}.json\" }]".to_owned());
                None
            }
            Some(sinks) if sinks.get_ref().is_empty() => {
                self.problem(
                    Some(sinks.span().start),
                    here("sinks"),
                    "is empty; a tenant needs at least one sink".to_owned(),
                );
                None
            }
            Some(sinks) => {
                let offset = sinks.span().start;
                let mut out = Vec::new();
                for sink in sinks.get_ref() {
                    match sink {
                        RawSink::File { path, format, mode } => {
                            let mode = match mode {
                                None => Some(0o600),
                                Some(mode) => match parse_mode(mode) {
                                    Ok(mode) => Some(mode),
                                    Err(message) => {
                                        self.problem(Some(offset), here("sinks.mode"), message);
                                        None
                                    }
                                },
                            };
                            if path.trim().is_empty() {
                                self.problem(
                                    Some(offset),
                                    here("sinks.path"),
                                    "must not be empty".to_owned(),
                                );
                                continue;
                            }
                            let expanded = path.replace("{name}", name.as_deref().unwrap_or(""));
                            if let Some(mode) = mode {
                                out.push(SinkConfig::File(FileSinkConfig {
                                    path: self.resolve_path(PathBuf::from(expanded)),
                                    format: format.unwrap_or_default(),
                                    mode,
                                }));
                            }
                        }
                    }
                }
                Some(out)
            }
        };

        let schedule = match raw.schedule.as_ref().or(defaults.schedule.as_ref()) {
            None => None,
            Some(expression) => match parse_cron(expression.get_ref()) {
                Ok(cron) => Some(CronSchedule {
                    expression: expression.get_ref().clone(),
                    cron,
                }),
                Err(message) => {
                    self.problem(Some(expression.span().start), here("schedule"), message);
                    None
                }
            },
        };

        if let Some(name) = &name {
            let paths = sinks
                .iter()
                .flatten()
                .map(|SinkConfig::File(file)| file.path.clone())
                .collect();
            self.seen.push((name.clone(), line, paths));
        }
        if self.problems.len() != before {
            return None;
        }
        Some(TenantConfig {
            name: name?,
            tenant_id: tenant_id?,
            client_id: client_id?,
            credential: credential?,
            oauth2: oauth2?,
            authority_host: authority_host?,
            api,
            resource: resource?,
            refresh_at,
            jitter,
            sinks: sinks?,
            schedule,
            line,
            credential_line,
        })
    }

    /// Picks and validates the tenant's one credential. A tenant that sets any credential key
    /// replaces `[defaults]`' credential entirely, so defaults and tenant never mix into two.
    fn credential(
        &mut self,
        offset: usize,
        raw: &RawTenant,
        defaults: &RawTenant,
        here: &dyn Fn(&str) -> String,
    ) -> (Option<CredentialConfig>, Option<usize>) {
        let has_credential = |r: &RawTenant| {
            r.client_secret.is_some() || r.client_certificate.is_some() || r.credential.is_some()
        };
        let own = has_credential(raw);
        let level = if own { raw } else { defaults };
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
            [] if self.defaults_broken => return (None, None),
            [] => {
                self.problem(
                    Some(offset),
                    here("credential"),
                    "missing (in the tenant or in [defaults]); expected one of client_secret = { env = \"VAR\" } (or file, systemd), client_certificate = { cert = \"…\", key = \"…\" }, credential = \"workload_identity\" or credential = \"managed_identity\"".to_owned(),
                );
                return (None, None);
            }
            [_] => {}
            [first, second, ..] => {
                let names: Vec<&str> = kinds.iter().map(|(name, _)| *name).collect();
                let line = Some(self.line_of(first.1));
                self.problem(
                    Some(second.1),
                    here("credential"),
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
            "client_secret" => {
                let expires = if own {
                    raw.client_secret_expires.as_ref()
                } else {
                    raw.client_secret_expires
                        .as_ref()
                        .or(defaults.client_secret_expires.as_ref())
                };
                self.client_secret(level, expires, here)
            }
            "client_certificate" => self.certificate(level, here),
            _ => self.credential_kind(level, here),
        };
        (credential, line)
    }

    fn client_secret(
        &mut self,
        level: &RawTenant,
        expires: Option<&Spanned<toml::Value>>,
        here: &dyn Fn(&str) -> String,
    ) -> Option<CredentialConfig> {
        let secret = level.client_secret.as_ref()?;
        let expires_on = match expires {
            None => None,
            Some(value) => match parse_expiry(value.get_ref()) {
                Ok(expires_on) => {
                    if self.verify_credentials && expires_on <= crate::client::unix_now() {
                        self.problem(
                            Some(value.span().start),
                            here("client_secret_expires"),
                            format!(
                                "the client secret expired on {}; create a new one in Entra",
                                format_date(expires_on)
                            ),
                        );
                    }
                    Some(expires_on)
                }
                Err(message) => {
                    self.problem(
                        Some(value.span().start),
                        here("client_secret_expires"),
                        message,
                    );
                    return None;
                }
            },
        };
        match secret.get_ref() {
            RawSecret::Reference(source) => {
                let source = match source {
                    SecretSource::File(path) => SecretSource::File(self.resolve_path(path.clone())),
                    other => other.clone(),
                };
                if self.verify_credentials
                    && let Err(err) = source.read()
                {
                    self.problem(
                        Some(secret.span().start),
                        here("client_secret"),
                        err.to_string(),
                    );
                }
                Some(CredentialConfig::ClientSecret { source, expires_on })
            }
            RawSecret::Literal => {
                self.problem(
                    Some(secret.span().start),
                    here("client_secret"),
                    "secrets are not written in the config file; expected { env = \"VAR\" }, { file = \"/path\" } or { systemd = \"name\" }".to_owned(),
                );
                None
            }
        }
    }

    fn certificate(
        &mut self,
        level: &RawTenant,
        here: &dyn Fn(&str) -> String,
    ) -> Option<CredentialConfig> {
        let raw = level.client_certificate.as_ref()?;
        let cert = self.resolve_path(raw.get_ref().cert.clone());
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
        };
        if self.verify_credentials {
            match crate::credential::certificate::Certificate::load(&config) {
                Ok(loaded) if loaded.not_after() <= crate::client::unix_now() => self.problem(
                    Some(raw.span().start),
                    here("client_certificate"),
                    format!(
                        "certificate {} expired on {}",
                        config.cert.display(),
                        format_date(loaded.not_after())
                    ),
                ),
                Ok(_) => {}
                Err(err) => self.problem(
                    Some(raw.span().start),
                    here("client_certificate"),
                    err.to_string(),
                ),
            }
        }
        Some(CredentialConfig::Certificate(config))
    }

    /// `credential = "workload_identity"` or `"managed_identity"`.
    fn credential_kind(
        &mut self,
        level: &RawTenant,
        here: &dyn Fn(&str) -> String,
    ) -> Option<CredentialConfig> {
        let kind = level.credential.as_ref()?;
        match kind.get_ref().as_str() {
            "workload_identity" => {
                let configured = level
                    .federated_token_file
                    .as_ref()
                    .map(|path| self.resolve_path(path.get_ref().clone()));
                let Some(token_file) = configured
                    .or_else(|| (self.env)("AZURE_FEDERATED_TOKEN_FILE").map(PathBuf::from))
                else {
                    self.problem(
                        Some(kind.span().start),
                        here("federated_token_file"),
                        "missing: set federated_token_file, or run where the workload identity webhook sets AZURE_FEDERATED_TOKEN_FILE".to_owned(),
                    );
                    return None;
                };
                if self.verify_credentials {
                    match std::fs::read_to_string(&token_file) {
                        Ok(text) if !text.trim().is_empty() => {}
                        Ok(_) => self.problem(
                            Some(kind.span().start),
                            here("federated_token_file"),
                            format!("{} is empty", token_file.display()),
                        ),
                        Err(err) => self.problem(
                            Some(kind.span().start),
                            here("federated_token_file"),
                            format!("cannot read {}: {err}", token_file.display()),
                        ),
                    }
                }
                Some(CredentialConfig::WorkloadIdentity { token_file })
            }
            "managed_identity" => {
                let app_service = (self.env)("IDENTITY_ENDPOINT")
                    .filter(|_| (self.env)("IDENTITY_HEADER").is_some());
                Some(CredentialConfig::ManagedIdentity(match app_service {
                    Some(endpoint) => ManagedIdentitySource::AppService {
                        endpoint,
                        header: SecretSource::Env("IDENTITY_HEADER".to_owned()),
                    },
                    None => ManagedIdentitySource::Imds,
                }))
            }
            other => {
                self.problem(
                    Some(kind.span().start),
                    here("credential"),
                    format!(
                        "{other:?} is not a credential kind; expected \"workload_identity\" or \"managed_identity\" (a secret or certificate is set with client_secret or client_certificate)"
                    ),
                );
                None
            }
        }
    }

    /// `provider = "oauth2"`: the token endpoint and what to ask for.
    fn oauth2(
        &mut self,
        offset: usize,
        raw: &RawTenant,
        defaults: &RawTenant,
        credential: &Option<CredentialConfig>,
        here: &dyn Fn(&str) -> String,
    ) -> Option<OAuth2Config> {
        let token_url = match raw.token_url.as_ref().or(defaults.token_url.as_ref()) {
            None => {
                self.problem(
                    Some(offset),
                    here("token_url"),
                    "missing; provider = \"oauth2\" needs the server's token endpoint".to_owned(),
                );
                None
            }
            Some(url) => match check_url(url.get_ref(), true) {
                Ok(url) => Some(url),
                Err(message) => {
                    self.problem(Some(url.span().start), here("token_url"), message);
                    None
                }
            },
        };
        if let Some(credential) = credential
            && !matches!(credential, CredentialConfig::ClientSecret { .. })
        {
            self.problem(
                Some(offset),
                here("credential"),
                format!(
                    "provider = \"oauth2\" authenticates with client_secret; {} is for Entra ID",
                    credential.kind()
                ),
            );
        }
        let text = |value: Option<&Spanned<String>>| {
            value
                .map(|v| v.get_ref().trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        Some(OAuth2Config {
            token_url: token_url?,
            scope: text(raw.scope.as_ref().or(defaults.scope.as_ref())),
            audience: text(raw.audience.as_ref().or(defaults.audience.as_ref())),
            auth: raw.auth.or(defaults.auth).unwrap_or_default(),
        })
    }

    /// Rules that span tenants: unique names, no two sinks writing one file.
    fn cross_tenant_rules(&mut self) {
        let seen = std::mem::take(&mut self.seen);
        let mut names: HashMap<&str, Option<usize>> = HashMap::new();
        let mut paths: HashMap<&Path, &str> = HashMap::new();
        for (name, line, sink_paths) in &seen {
            if let Some(first_line) = names.get(name.as_str()) {
                let first = first_line
                    .map(|l| format!(" (first defined on line {l})"))
                    .unwrap_or_default();
                self.problems.push(Problem {
                    line: *line,
                    key: Some(format!("tenant {name:?}: name")),
                    message: format!("duplicate tenant name {name:?}{first}; names must be unique"),
                });
                continue;
            }
            names.insert(name, *line);
            for path in sink_paths {
                if let Some(other) = paths.insert(path, name) {
                    let message = if other == name {
                        format!("two sinks write the same file {}", path.display())
                    } else {
                        format!(
                            "writes {} which tenant {other:?} also writes; put {{name}} in the path",
                            path.display()
                        )
                    };
                    self.problems.push(Problem {
                        line: *line,
                        key: Some(format!("tenant {name:?}: sinks.path")),
                        message,
                    });
                }
            }
        }
    }
}

/// `2027-03-01` (midnight UTC), a TOML date, or an RFC 3339 date-time, as Unix seconds.
fn parse_expiry(value: &toml::Value) -> Result<i64, String> {
    let text = match value {
        toml::Value::String(text) => text.clone(),
        toml::Value::Datetime(datetime) => datetime.to_string(),
        other => {
            return Err(format!(
                "expected a date such as \"2027-03-01\", got a {}",
                other.type_str()
            ));
        }
    };
    if let Ok(date) = chrono::NaiveDate::parse_from_str(&text, "%Y-%m-%d") {
        return Ok(date.and_time(chrono::NaiveTime::MIN).and_utc().timestamp());
    }
    chrono::DateTime::parse_from_rfc3339(&text)
        .map(|t| t.timestamp())
        .map_err(|_| {
            format!("expected a date such as \"2027-03-01\" or an RFC 3339 date-time, got {text:?}")
        })
}

/// `2027-03-01` for messages.
pub fn format_date(unix: i64) -> String {
    chrono::DateTime::from_timestamp(unix, 0)
        .map(|t| t.format("%Y-%m-%d").to_string())
        .unwrap_or_else(|| unix.to_string())
}

/// Parses a cron expression with optional seconds (5 or 6 fields), evaluated in UTC.
///
/// # Errors
/// A message naming the expression and what croner objected to.
pub fn parse_cron(expression: &str) -> Result<croner::Cron, String> {
    croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Optional)
        .build()
        .parse(expression)
        .map_err(|err| {
            format!(
                "invalid cron expression {expression:?}: {err}; expected 5 or 6 fields such as \"0 0 6 * * *\" (sec min hour day month weekday, UTC)"
            )
        })
}

fn parse_mode(mode: &RawMode) -> Result<u32, String> {
    let value = match mode {
        RawMode::Text(text) => u32::from_str_radix(text.trim_start_matches("0o"), 8)
            .map_err(|_| format!("expected an octal mode such as \"0600\", got {text:?}"))?,
        RawMode::Number(number) => u32::try_from(*number)
            .map_err(|_| format!("expected an octal mode such as \"0600\", got {number}"))?,
    };
    if value > 0o777 {
        return Err(format!(
            "mode {value:o} has bits beyond rwx for user/group/other; expected e.g. \"0600\" or \"0640\""
        ));
    }
    if value & 0o600 != 0o600 {
        return Err(format!(
            "mode {value:04o} does not let the daemon read and write its own file; expected at least 0600"
        ));
    }
    Ok(value)
}

/// `https://host[:port]`, or `http://` for loopback only; returns the host without trailing slash.
fn check_authority_host(raw: &str) -> Result<String, String> {
    check_url(raw, false)
}

/// An https URL (http only for loopback hosts); with `allow_path`, a path may follow the host.
fn check_url(raw: &str, allow_path: bool) -> Result<String, String> {
    let trimmed = raw.trim().trim_end_matches('/');
    let (scheme, rest) = trimmed.split_once("://").ok_or_else(|| {
        format!("expected a URL such as https://login.microsoftonline.com, got {raw:?}")
    })?;
    let (authority, path) = match rest.find('/') {
        Some(at) if allow_path => (&rest[..at], &rest[at..]),
        _ => (rest, ""),
    };
    if authority.is_empty() || authority.contains(['/', '?', '#', '@']) || path.contains('#') {
        return Err(if allow_path {
            format!("expected a URL such as https://auth.example.com/oauth2/token, got {raw:?}")
        } else {
            format!(
                "expected scheme and host only (e.g. https://login.microsoftonline.com), got {raw:?}"
            )
        });
    }
    let rest = authority;
    match scheme.to_ascii_lowercase().as_str() {
        "https" => Ok(trimmed.to_owned()),
        "http" if is_loopback_authority(rest) => Ok(trimmed.to_owned()),
        "http" => Err(format!(
            "{raw:?} uses http; credentials are only sent over https (http is allowed for loopback hosts only)"
        )),
        other => Err(format!(
            "unsupported scheme {other:?} in {raw:?}; expected https"
        )),
    }
}

/// `localhost`, `127.x.y.z` or `[::1]`, with an optional port.
fn is_loopback_authority(authority: &str) -> bool {
    let host = if let Some(rest) = authority.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        authority
            .rsplit_once(':')
            .map_or(authority, |(host, _)| host)
    };
    host.eq_ignore_ascii_case("localhost")
        || IpAddr::from_str(host).is_ok_and(|ip| ip.is_loopback())
}

fn is_guid(text: &str) -> bool {
    let groups: Vec<&str> = text.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(group, len)| group.len() == len && group.chars().all(|c| c.is_ascii_hexdigit()))
}

fn is_domain(text: &str) -> bool {
    text.len() <= 253
        && text.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[defaults]
client_id = "00000000-0000-0000-0000-000000000001"
client_secret = { env = "SECRET" }
sinks = [ { type = "file", path = "/tmp/t/{name}.json" } ]

[[tenant]]
name = "contoso"
tenant_id = "contoso.onmicrosoft.com"
"#;

    fn parse_ok(text: &str) -> Config {
        parse(text, Path::new("/etc/powerbi-tokend/config.toml")).unwrap()
    }

    fn parse_err(text: &str) -> ConfigError {
        parse(text, Path::new("/etc/powerbi-tokend/config.toml")).unwrap_err()
    }

    #[test]
    fn defaults_are_merged() {
        let config = parse_ok(MINIMAL);
        let tenant = &config.tenants[0];
        assert_eq!(tenant.client_id, "00000000-0000-0000-0000-000000000001");
        assert_eq!(tenant.authority_host, "https://login.microsoftonline.com");
        assert_eq!(tenant.resource, "https://analysis.windows.net/powerbi/api");
        assert_eq!(tenant.api, ApiVersion::V2);
        assert_eq!(
            tenant.token_url(),
            "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token"
        );
        assert_eq!(
            tenant.scope(),
            "https://analysis.windows.net/powerbi/api/.default"
        );
        assert_eq!(
            tenant.sinks,
            vec![SinkConfig::File(FileSinkConfig {
                path: PathBuf::from("/tmp/t/contoso.json"),
                format: FileFormat::Json,
                mode: 0o600,
            })]
        );
        assert_eq!(config.server.listen, DEFAULT_LISTEN.parse().unwrap());
        assert_eq!(config.daemon, DaemonConfig::default());
    }

    #[test]
    fn tenant_overrides_defaults_and_cloud_picks_pair() {
        let text =
            format!("{MINIMAL}cloud = \"dod\"\napi = \"v1\"\nrefresh_at = 0.7\njitter = 0.05\n");
        let config = parse_ok(&text);
        let tenant = &config.tenants[0];
        assert_eq!(tenant.authority_host, "https://login.microsoftonline.us");
        assert_eq!(
            tenant.resource,
            "https://mil.analysis.usgovcloudapi.net/powerbi/api"
        );
        assert_eq!(
            tenant.token_url(),
            "https://login.microsoftonline.us/contoso.onmicrosoft.com/oauth2/token"
        );
        assert_eq!((tenant.refresh_at, tenant.jitter), (0.7, 0.05));
    }

    #[test]
    fn https_only_except_loopback() {
        for (host, ok) in [
            ("https://login.example.com/", true),
            ("http://127.0.0.1:8080", true),
            ("http://127.5.0.1", true),
            ("http://localhost:1234/", true),
            ("http://[::1]:99", true),
            ("http://login.microsoftonline.com", false),
            ("http://10.0.0.1", false),
            ("http://127.0.0.1.evil.com", false),
            ("ftp://127.0.0.1", false),
            ("https://host/path", false),
        ] {
            let text = format!("{MINIMAL}authority_host = {host:?}\n");
            let result = parse(&text, Path::new("c.toml"));
            assert_eq!(
                result.is_ok(),
                ok,
                "{host}: {:?}",
                result.err().map(|e| e.to_string())
            );
        }
        let err = parse_err(&format!(
            "{MINIMAL}authority_host = \"http://login.example.com\"\n"
        ));
        assert!(err.to_string().contains("only sent over https"), "{err}");
    }

    #[test]
    fn all_problems_reported_with_lines() {
        let text = r#"[defaults]
client_id = "c"
client_secret = { env = "S" }
sinks = [ { type = "file", path = "/tmp/{name}.json" } ]
colour = "blue"

[[tenant]]
name = "a"
tenant_id = "a.example.com"
schedule = "not a cron"

[[tenant]]
name = "a"
tenant_id = "b.example.com"
"#;
        let err = parse_err(text);
        let lines: Vec<Option<usize>> = err.problems.iter().map(|p| p.line).collect();
        assert_eq!(lines, vec![Some(5), Some(10), Some(12)], "{err}");
        let shown = err.to_string();
        assert!(
            shown.contains("/etc/powerbi-tokend/config.toml:5: defaults: unknown field `colour`"),
            "{shown}"
        );
        assert!(shown.contains("invalid cron expression"), "{shown}");
        assert!(
            shown.contains("duplicate tenant name \"a\" (first defined on line 7)"),
            "{shown}"
        );
    }

    #[test]
    fn same_path_is_a_conflict() {
        let text = r#"
[defaults]
client_id = "c"
client_secret = { env = "S" }
sinks = [ { type = "file", path = "/tmp/token.json" } ]
[[tenant]]
name = "a"
tenant_id = "a.example.com"
[[tenant]]
name = "b"
tenant_id = "b.example.com"
"#;
        let err = parse_err(text);
        assert_eq!(err.problems.len(), 1, "{err}");
        assert!(
            err.to_string().contains("which tenant \"a\" also writes"),
            "{err}"
        );
        assert_eq!(err.problems[0].line, Some(9));
    }

    #[test]
    fn literal_secret_is_rejected() {
        let text = MINIMAL.replace("{ env = \"SECRET\" }", "\"hunter2\"");
        let err = parse_err(&text);
        assert!(
            err.to_string()
                .contains("secrets are not written in the config file"),
            "{err}"
        );
        assert!(!err.to_string().contains("hunter2"));
    }

    #[test]
    fn relative_paths_follow_the_config_file() {
        let text = MINIMAL.replace("/tmp/t/{name}.json", "tokens/{name}.json");
        let config = parse_ok(&text);
        let SinkConfig::File(file) = &config.tenants[0].sinks[0];
        assert_eq!(
            file.path,
            PathBuf::from("/etc/powerbi-tokend/tokens/contoso.json")
        );
    }

    #[test]
    fn modes_and_fractions() {
        assert_eq!(parse_mode(&RawMode::Text("0640".into())), Ok(0o640));
        assert_eq!(parse_mode(&RawMode::Number(0o600)), Ok(0o600));
        assert!(parse_mode(&RawMode::Text("0400".into())).is_err());
        assert!(parse_mode(&RawMode::Text("4755".into())).is_err());
        assert!(parse_mode(&RawMode::Text("rw".into())).is_err());
        let err = parse_err(&format!("{MINIMAL}refresh_at = 0.95\n"));
        assert!(
            err.to_string().contains("strictly between 0 and 1"),
            "{err}"
        );
    }

    #[test]
    fn daemon_knobs() {
        let text = format!(
            "[daemon]\nmax_concurrent_requests = 4\nbackoff_max = \"2m\"\npermanent_retry_interval = \"1h\"\n{MINIMAL}"
        );
        let config = parse_ok(&text);
        assert_eq!(config.daemon.max_concurrent_requests, 4);
        assert_eq!(config.daemon.backoff_max, Duration::from_secs(120));
        assert_eq!(
            config.daemon.permanent_retry_interval,
            Duration::from_secs(3600)
        );
        let err = parse_err(&format!("[daemon]\nbackoff_min = \"soon\"\n{MINIMAL}"));
        assert_eq!(err.problems[0].line, Some(2), "{err}");
    }

    #[test]
    fn tenant_id_syntax() {
        assert!(is_guid("8c3f2b1e-0d4a-4e6b-9f7a-1a2b3c4d5e6f"));
        assert!(!is_guid("8c3f2b1e-0d4a-4e6b-9f7a"));
        assert!(is_domain("contoso.onmicrosoft.com"));
        assert!(!is_domain("bad domain"));
        let err = parse_err(&MINIMAL.replace("contoso.onmicrosoft.com", "common"));
        assert!(
            err.to_string().contains("cannot issue app-only tokens"),
            "{err}"
        );
    }
    fn parse_env(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let lookup = |key: &str| {
            env.iter()
                .find(|(k, _)| *k == key)
                .map(|(_, v)| (*v).to_owned())
        };
        parse_with_env(text, Path::new("/etc/p/config.toml"), false, &lookup)
    }

    const TENANT_ONLY: &str = r#"
[defaults]
sinks = [ { type = "file", path = "/tmp/t/{name}.json" } ]

[[tenant]]
name = "contoso"
"#;

    #[test]
    fn exactly_one_credential() {
        let none = format!("{TENANT_ONLY}tenant_id = \"c.example.com\"\nclient_id = \"x\"\n");
        let err = parse_env(&none, &[]).unwrap_err();
        assert!(err.to_string().contains("credential: missing"), "{err}");
        let two = format!(
            "{none}client_secret = {{ env = \"S\" }}\nclient_certificate = {{ cert = \"c.pem\" }}\n"
        );
        let err = parse_env(&two, &[]).unwrap_err();
        assert!(
            err.to_string()
                .contains("client_secret and client_certificate are all set"),
            "{err}"
        );
        // A tenant's own credential replaces the one in [defaults]: not two.
        let text = MINIMAL.replace(
            "tenant_id = \"contoso.onmicrosoft.com\"",
            "tenant_id = \"contoso.onmicrosoft.com\"\ncredential = \"managed_identity\"",
        );
        let config = parse_env(&text, &[]).unwrap();
        assert_eq!(
            config.tenants[0].credential,
            CredentialConfig::ManagedIdentity(ManagedIdentitySource::Imds)
        );
    }

    #[test]
    fn certificate_and_secret_expiry() {
        let text = format!(
            "{TENANT_ONLY}tenant_id = \"c.example.com\"\nclient_id = \"x\"\nclient_certificate = {{ cert = \"pki/both.pem\", algorithm = \"rs256\", send_x5c = true }}\n"
        );
        let config = parse_env(&text, &[]).unwrap();
        assert_eq!(
            config.tenants[0].credential,
            CredentialConfig::Certificate(CertificateConfig {
                cert: PathBuf::from("/etc/p/pki/both.pem"),
                key: PathBuf::from("/etc/p/pki/both.pem"),
                algorithm: AssertionAlgorithm::Rs256,
                send_x5c: true,
            })
        );
        for (value, expected) in [
            ("\"2027-03-01\"", 1_803_859_200),
            ("2027-03-01", 1_803_859_200),
            ("\"2027-03-01T12:00:00Z\"", 1_803_902_400),
        ] {
            let text = format!("{MINIMAL}client_secret_expires = {value}\n");
            let config = parse_env(&text, &[]).unwrap();
            assert_eq!(
                config.tenants[0].credential,
                CredentialConfig::ClientSecret {
                    source: SecretSource::Env("SECRET".into()),
                    expires_on: Some(expected),
                },
                "{value}"
            );
        }
        let err =
            parse_env(&format!("{MINIMAL}client_secret_expires = \"soon\"\n"), &[]).unwrap_err();
        assert!(err.to_string().contains("expected a date"), "{err}");
    }

    #[test]
    fn workload_identity_takes_missing_values_from_the_webhook_env() {
        let text = "[[tenant]]\nname = \"aks\"\ncredential = \"workload_identity\"\nsinks = [ { type = \"file\", path = \"/t/{name}.json\" } ]\n";
        let env = [
            ("AZURE_CLIENT_ID", "11111111-1111-1111-1111-111111111111"),
            ("AZURE_TENANT_ID", "22222222-2222-2222-2222-222222222222"),
            ("AZURE_AUTHORITY_HOST", "https://login.microsoftonline.us/"),
            (
                "AZURE_FEDERATED_TOKEN_FILE",
                "/var/run/secrets/azure/tokens/azure-identity-token",
            ),
        ];
        let config = parse_env(text, &env).unwrap();
        let tenant = &config.tenants[0];
        assert_eq!(tenant.client_id, "11111111-1111-1111-1111-111111111111");
        assert_eq!(tenant.tenant_id, "22222222-2222-2222-2222-222222222222");
        assert_eq!(tenant.authority_host, "https://login.microsoftonline.us");
        assert_eq!(
            tenant.credential,
            CredentialConfig::WorkloadIdentity {
                token_file: PathBuf::from("/var/run/secrets/azure/tokens/azure-identity-token")
            }
        );
        let err = parse_env(text, &[]).unwrap_err().to_string();
        assert!(err.contains("federated_token_file: missing"), "{err}");
        assert!(err.contains("tenant_id: missing"), "{err}");
        let insecure = [("AZURE_AUTHORITY_HOST", "http://login.example.com")];
        let err = parse_env(text, &[env[0], env[1], env[3], insecure[0]])
            .unwrap_err()
            .to_string();
        assert!(err.contains("from AZURE_AUTHORITY_HOST"), "{err}");
    }

    #[test]
    fn managed_identity_sources() {
        let text = "[[tenant]]\nname = \"vm\"\ncredential = \"managed_identity\"\nsinks = [ { type = \"file\", path = \"/t/{name}.json\" } ]\n";
        let config = parse_env(text, &[]).unwrap();
        assert_eq!(config.tenants[0].client_id, "");
        assert_eq!(config.tenants[0].tenant_id, "");
        assert_eq!(config.daemon.imds_endpoint, DEFAULT_IMDS_ENDPOINT);
        let env = [
            ("IDENTITY_ENDPOINT", "http://127.0.0.1:4141/msi/token"),
            ("IDENTITY_HEADER", "h"),
        ];
        let config = parse_env(text, &env).unwrap();
        assert_eq!(
            config.tenants[0].credential,
            CredentialConfig::ManagedIdentity(ManagedIdentitySource::AppService {
                endpoint: "http://127.0.0.1:4141/msi/token".into(),
                header: SecretSource::Env("IDENTITY_HEADER".into()),
            })
        );
        let err = parse_env(&text.replace("managed_identity", "magic"), &[]).unwrap_err();
        assert!(
            err.to_string().contains("is not a credential kind"),
            "{err}"
        );
    }

    #[test]
    fn generic_oauth2_provider() {
        let text = r#"
[[tenant]]
name = "partner"
provider = "oauth2"
token_url = "https://auth.example.com/oauth2/token"
client_id = "partner-client"
client_secret = { env = "PARTNER_SECRET" }
scope = "reports.read"
audience = "https://api.example.com"
auth = "client_secret_basic"
sinks = [ { type = "file", path = "/t/{name}.json" } ]
"#;
        let config = parse_env(text, &[]).unwrap();
        let tenant = &config.tenants[0];
        assert_eq!(
            tenant.oauth2,
            Some(OAuth2Config {
                token_url: "https://auth.example.com/oauth2/token".into(),
                scope: Some("reports.read".into()),
                audience: Some("https://api.example.com".into()),
                auth: ClientAuth::ClientSecretBasic,
            })
        );
        assert_eq!(tenant.token_url(), "https://auth.example.com/oauth2/token");
        assert_eq!(tenant.resource, "https://api.example.com");
        assert_eq!(tenant.tenant_id, "");
        let err = parse_env(&text.replace("https://auth", "http://auth"), &[]).unwrap_err();
        assert!(err.to_string().contains("only sent over https"), "{err}");
        let err = parse_env(&text.replace("token_url", "# token_url"), &[]).unwrap_err();
        assert!(err.to_string().contains("token_url: missing"), "{err}");
        let mi = text.replace(
            "client_secret = { env = \"PARTNER_SECRET\" }",
            "credential = \"managed_identity\"",
        );
        let err = parse_env(&mi, &[]).unwrap_err();
        assert!(
            err.to_string().contains("authenticates with client_secret"),
            "{err}"
        );
    }
}
