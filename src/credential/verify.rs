//! What `check` adds to parsing: every secret, certificate and token file a tenant names is read
//! now, so a wrong path or an expired credential is found before the daemon needs it. Entra is
//! never contacted.

use crate::clock::format_date;
use crate::config::{CredentialConfig, Problem, SecretSource, TenantCredential};

use super::certificate::Certificate;
use super::expiry::CredentialExpiry;
use super::secret::{CredentialError, read_secret};

/// What reading one tenant's credential found.
#[derive(Debug, Default)]
pub struct Verified {
    /// Problems at the line of the credential key (or of `client_secret_expires`).
    pub problems: Vec<Problem>,
    /// When the credential expires and its kind, when known: for `check`'s early warning,
    /// without reading the certificate a second time.
    pub expiry: Option<CredentialExpiry>,
}

/// Reads one tenant's credential at `now` (Unix seconds).
pub async fn verify(tenant: &TenantCredential, now: i64) -> Verified {
    let mut expiry = None;
    let problem = |key: &str, message: String| Problem {
        column: None,
        line: tenant.line,
        key: Some(format!("tenant {:?}: {key}", tenant.tenant)),
        message,
    };
    let mut problems = Vec::new();
    match &tenant.credential {
        CredentialConfig::ClientSecret { source, expires_on } => {
            expiry = expires_on.map(CredentialExpiry::client_secret);
            if let Some(expires_on) = expires_on.filter(|expires_on| *expires_on <= now) {
                problems.push(Problem {
                    column: None,
                    line: tenant.expires_line.or(tenant.line),
                    ..problem(
                        "client_secret_expires",
                        format!(
                            "the client secret expired on {}; create a new one in Entra",
                            format_date(expires_on)
                        ),
                    )
                });
            }
            // A secret in Key Vault is read by `check --online`; offline, its URL was checked.
            if !matches!(source, SecretSource::KeyVault(_))
                && let Err(err) = read_secret(source).await
            {
                problems.push(problem("client_secret", err.to_string()));
            }
        }
        // A certificate in Key Vault is read by `check --online`; offline, its URL was checked.
        CredentialConfig::Certificate(config) if config.key_vault.is_some() => {}
        CredentialConfig::Certificate(config) => match Certificate::load_async(config).await {
            Ok(loaded) if loaded.not_after() <= now => problems.push(problem(
                "client_certificate",
                format!(
                    "certificate {} expired on {}",
                    config.cert.display(),
                    format_date(loaded.not_after())
                ),
            )),
            Ok(loaded) => expiry = Some(CredentialExpiry::certificate(loaded.not_after())),
            Err(err) => problems.push(problem("client_certificate", err.to_string())),
        },
        CredentialConfig::WorkloadIdentity { token_file } => {
            // At the key that names the file, not at `credential`: the two can be far apart,
            // one in the tenant and the other in [defaults].
            let (line, key) = tenant
                .token_file_key
                .map_or((tenant.line, "federated_token_file"), |(line, key)| {
                    (Some(line), key)
                });
            let message = match read_secret(&SecretSource::File(token_file.clone())).await {
                Ok(_) => None,
                Err(CredentialError::Empty(_)) => {
                    Some(format!("{} is empty", token_file.display()))
                }
                Err(err) => Some(err.to_string()),
            };
            problems.extend(message.map(|message| Problem {
                column: None,
                line,
                ..problem(key, message)
            }));
        }
        // The managed identity endpoint is only known on the Azure host itself.
        CredentialConfig::ManagedIdentity(_) => {}
    }
    Verified { problems, expiry }
}
