//! The configuration file: schema, defaults inheritance, and validation.
//!
//! Loading never stops at the first mistake: every section and every `[[tenant]]` is deserialized
//! on its own, and every rule is checked, so `check` can print all problems at once, each with the
//! file, the line, the key and what was expected. A config that has any problem is rejected whole;
//! on reload that means the running config stays in place.
//!
//! Secrets are never written in the file. `client_secret` names where the secret lives
//! (`{ env = "…" }`, `{ file = "…" }` or `{ systemd = "…" }`); reading it is the job of
//! [`crate::credential`], at every refresh, so a rotated secret is picked up without a restart.
//!
//! This module is plain data plus validation: it reads the config file and nothing else of
//! other modules' making. Whether a referenced secret, certificate or token file is readable is
//! checked by [`crate::credential::verify`], which `check` runs on the loaded config.
//!
//! # Files
//!
//! * `types.rs`: the validated, public configuration ([`Config`], [`TenantConfig`], …).
//! * `raw.rs`: the schema serde reads, every key optional so defaults can be merged.
//! * `loader.rs`: line tracking, per-section deserialization that keeps going after an error,
//!   the order in which sections are read, and what every rule is handed: the `Loader` that
//!   records problems, one tenant's table with `[defaults]` (`TenantInput`, `inherited!`), and
//!   `Reported`, which tells "has a problem" from "left out". Every rule file builds on it; none
//!   of them is imported back.
//! * `server.rs`, `daemon.rs`, `redis.rs`: the `[server]`, `[daemon]`, `[redis]` and `[fleet]`
//!   rules.
//! * `tenant.rs`: one `[[tenant]]` with `[defaults]` merged in; `credential.rs`,
//!   `managed_identity.rs`, `oauth2.rs` and `sink.rs` hold the rules of its credential, managed
//!   identity, generic OAuth2 provider and sinks.
//! * `key_vault.rs`: `[key_vault]` and `[key_vault.identities.<name>]` (the identities that
//!   read Azure Key Vault), with the tenant rules for their ids, and a tenant's
//!   `key_vault_credential`.
//! * `powerbi.rs`: the tenant's use of the Power BI API (`powerbi_api`, `probe`) and its embed
//!   tokens (`[[tenant.embed]]`); `datasource_identity.rs` holds the rules of an embed's
//!   `datasource_identities` (single sign-on), whose blobs are secret references like
//!   `client_secret` (`credential.rs` reads those references for both).
//! * `applicable.rs`: keys a tenant sets that its provider or credential never uses.
//! * `cross_tenant.rs`: rules that span tenants (unique names, one writer per file or key).
//! * `values.rs`: value syntax shared by several sections (URLs, Key Vault secret URLs, GUIDs,
//!   dates, cron).

mod applicable;
mod credential;
mod cross_tenant;
mod daemon;
mod datasource_identity;
mod hints;
mod key_vault;
mod loader;
mod managed_identity;
mod oauth2;
mod powerbi;
mod raw;
mod redis;
mod server;
mod sink;
mod tenant;
mod types;
mod values;

#[cfg(test)]
mod tests;

use std::fmt;
use std::path::{Path, PathBuf};

use crate::safe_read::{self, Symlinks};

// Named outside `config` only by `demo`, which builds its `[fleet]` in code, and the tests.
#[cfg(any(test, feature = "demo"))]
pub(crate) use redis::DEFAULT_FLEET_PREFIX;
pub(crate) use sink::MAX_FILE_NAME_BYTES;
pub use types::*;
pub(crate) use values::is_guid;
pub(crate) use values::is_loopback_authority;
pub use values::parse_cron;

/// Default admin listen address: loopback, so metrics are not exposed by accident.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9464";

/// Azure's instance metadata service token endpoint (link-local; plain HTTP by design).
pub const DEFAULT_IMDS_ENDPOINT: &str = "http://169.254.169.254/metadata/identity/oauth2/token";

/// One problem found in a configuration file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// 1-based line, when the parser knows it.
    pub line: Option<usize>,
    /// 1-based column (in characters), for problems pinned to a character rather than a key:
    /// TOML syntax errors.
    pub column: Option<usize>,
    /// Dotted key path, e.g. `tenant[2].schedule`.
    pub key: Option<String>,
    /// What is wrong and what was expected.
    pub message: String,
}

/// Every problem in one file; `Display` prints one per line, prefixed with `file:line:` (and
/// `column:` where known), the form editors and terminals turn into links.
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
                if let Some(column) = problem.column {
                    write!(f, ":{column}")?;
                }
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

/// What to do without a configuration file: most often a first run in the wrong directory.
const NO_CONFIG_HINT: &str = "; name the file with --config (or POWERBI_TOKEND_CONFIG), start from the documented config.toml in the repository, or run `powerbi-tokend demo` to see the daemon work without one";

/// Largest configuration file read: a hundred thousand tenants take about 10 MB, so anything
/// larger is a wrong path (a log, an image) rather than a configuration.
pub const MAX_CONFIG_BYTES: u64 = 16 * 1024 * 1024;

/// The configuration file's text, read off the async workers with a size cap and a deadline,
/// and only if it is a regular file (a ConfigMap's symlinks are followed).
///
/// # Errors
/// The file cannot be read, is not a regular file, is too large, or is not UTF-8.
pub async fn read_text(path: &Path) -> Result<String, ConfigError> {
    let unreadable = |message: String| ConfigError {
        path: path.to_owned(),
        problems: vec![Problem {
            column: None,
            line: None,
            key: None,
            message,
        }],
    };
    let bytes = safe_read::read(path, MAX_CONFIG_BYTES, Symlinks::Follow)
        .await
        .map_err(|err| {
            let hint = if err.is_not_found() {
                NO_CONFIG_HINT
            } else {
                ""
            };
            unreadable(format!("cannot read the configuration file: {err}{hint}"))
        })?;
    String::from_utf8(bytes)
        .map_err(|_| unreadable("the configuration file is not UTF-8 text".to_owned()))
}

/// Reads, parses and validates a configuration file.
///
/// # Errors
/// Every problem found, with lines where known.
pub async fn load(path: &Path) -> Result<Config, ConfigError> {
    load_reusing(path, &[]).await
}

/// Like [`load`], for a reload: tenants equal to one of `previous` (the running configuration's)
/// are its `Arc`s, so the unchanged tenants of a large file are not held twice while the reload
/// runs.
///
/// # Errors
/// Every problem found, with lines where known.
pub async fn load_reusing(
    path: &Path,
    previous: &[std::sync::Arc<TenantConfig>],
) -> Result<Config, ConfigError> {
    loader::parse_reusing(
        &read_text(path).await?,
        path,
        &|key| std::env::var(key).ok(),
        previous,
    )
}

/// Like [`load`], and also returns every well-formed credential the file names (of tenants
/// with other problems too, with the lines to blame), so `check` can read them all in one run.
///
/// # Errors
/// Every problem found, with lines where known; the credentials come either way.
pub async fn load_for_check(path: &Path) -> (Result<Config, ConfigError>, Vec<TenantCredential>) {
    match read_text(path).await {
        Ok(text) => loader::parse_collecting(&text, path, &|key| std::env::var(key).ok()),
        Err(err) => (Err(err), Vec::new()),
    }
}

/// Parses and validates configuration text; `path` is used for messages and relative paths.
///
/// # Errors
/// Every problem found, with lines where known.
pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
    loader::parse_with_env(text, path, &|key| std::env::var(key).ok())
}

/// Like [`parse`], with `env` in place of the process environment: what the file means where
/// something else sets the variables it may rely on (the workload identity webhook's
/// `AZURE_FEDERATED_TOKEN_FILE`, `AZURE_CLIENT_ID` and `AZURE_TENANT_ID` in a Kubernetes pod),
/// which is how the shipped Kubernetes variants are checked.
///
/// # Errors
/// Every problem found, with lines where known.
pub fn parse_with_env(
    text: &str,
    path: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigError> {
    loader::parse_with_env(text, path, env)
}
