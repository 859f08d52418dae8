//! The one HTTP call: POST the client-credentials form to a token endpoint.
//!
//! Hygiene that a token fetcher needs and HTTP clients do not do by default:
//! * connect and total timeouts, so a black-holed endpoint cannot stall a tenant forever;
//! * a cap on the response body, so a misbehaving proxy cannot make us buffer megabytes;
//! * no redirects: following a redirect with a client secret in the body is how secrets leak;
//! * plain HTTP is refused by config validation except for loopback (the simulator, tests);
//! * `HTTPS_PROXY`/`NO_PROXY` are honoured (reqwest reads them); extra CAs come from `ca_file`.

use secrecy::ExposeSecret;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::config::{ApiVersion, CredentialConfig, DaemonConfig, TenantConfig};
use crate::credential;
use crate::error::{self, ErrorClass, Reason, RefreshError};
use crate::schedule::parse_retry_after;
use crate::token::{AccessToken, parse_token_response};

/// Largest response body we read from a token endpoint. Real ones are a few KiB.
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// The `User-Agent` we send, so Entra sign-in logs and proxies can tell who called.
pub const USER_AGENT: &str = concat!("powerbi-tokend/", env!("CARGO_PKG_VERSION"));

/// The HTTP client could not be built (unreadable CA file, bad PEM).
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// `ca_file` could not be read.
    #[error("cannot read ca_file {path}: {source}")]
    CaFile {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// `ca_file` holds no usable certificate.
    #[error("ca_file {path} holds no PEM certificate: {message}")]
    CaPem {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        message: String,
    },
    /// reqwest refused the settings.
    #[error("cannot build the HTTP client: {0}")]
    Build(#[from] reqwest::Error),
}

/// Sends token requests; cheap to clone (the connection pool is shared).
#[derive(Clone, Debug)]
pub struct TokenClient {
    /// Shared connection pool, with the timeouts and TLS settings applied.
    http: reqwest::Client,
    /// Body cap; a field so tests can lower it.
    max_response_bytes: usize,
}

impl TokenClient {
    /// Builds the client from the daemon knobs.
    ///
    /// # Errors
    /// `ca_file` unreadable or not PEM; TLS backend failure.
    pub fn new(daemon: &DaemonConfig) -> Result<Self, ClientError> {
        let mut builder = reqwest::Client::builder()
            .user_agent(USER_AGENT)
            .connect_timeout(daemon.connect_timeout)
            .timeout(daemon.request_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .pool_idle_timeout(Duration::from_secs(90));
        if let Some(path) = &daemon.ca_file {
            let pem = std::fs::read(path).map_err(|source| ClientError::CaFile {
                path: path.clone(),
                source,
            })?;
            let certs =
                reqwest::Certificate::from_pem_bundle(&pem).map_err(|err| ClientError::CaPem {
                    path: path.clone(),
                    message: err.to_string(),
                })?;
            if certs.is_empty() {
                return Err(ClientError::CaPem {
                    path: path.clone(),
                    message: "no certificates found".to_owned(),
                });
            }
            builder = builder.tls_certs_merge(certs);
        }
        Ok(TokenClient {
            http: builder.build()?,
            max_response_bytes: MAX_RESPONSE_BYTES,
        })
    }

    /// Changes the body cap (tests).
    pub fn with_max_response_bytes(mut self, max: usize) -> Self {
        self.max_response_bytes = max;
        self
    }

    /// Requests a token for one tenant.
    ///
    /// # Errors
    /// A classified [`RefreshError`]; never one that contains the secret.
    pub async fn fetch(&self, tenant: &TenantConfig) -> Result<AccessToken, RefreshError> {
        let credential = credential::form_for(&tenant.credential).map_err(|err| {
            RefreshError::local(ErrorClass::Permanent, Reason::Credential, err.to_string())
        })?;
        let target = match tenant.api {
            ApiVersion::V2 => ("scope", tenant.scope()),
            ApiVersion::V1 => ("resource", tenant.resource.clone()),
        };
        let mut form: Vec<(&str, &str)> = vec![
            ("grant_type", "client_credentials"),
            ("client_id", &tenant.client_id),
            (target.0, &target.1),
        ];
        form.extend(
            credential
                .fields
                .iter()
                .map(|(key, value)| (*key, value.expose_secret())),
        );
        debug_assert!(matches!(
            tenant.credential,
            CredentialConfig::ClientSecret(_)
        ));

        let response = self
            .http
            .post(tenant.token_url())
            .header(reqwest::header::ACCEPT, "application/json")
            .form(&form)
            .send()
            .await
            .map_err(transport_error)?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| parse_retry_after(value, SystemTime::now()));
        let body = self.read_capped(response).await?;
        let received_at = unix_now();
        if status == 200 {
            parse_token_response(&body, received_at)
        } else {
            Err(error::classify(status, &body, retry_after))
        }
    }

    /// Reads the body, giving up past the cap.
    async fn read_capped(&self, mut response: reqwest::Response) -> Result<Vec<u8>, RefreshError> {
        let too_big = || {
            RefreshError::local(
                ErrorClass::Transient,
                Reason::BadResponse,
                format!(
                    "token endpoint response is larger than {} bytes; refusing to read it",
                    self.max_response_bytes
                ),
            )
        };
        if response
            .content_length()
            .is_some_and(|len| len > self.max_response_bytes as u64)
        {
            return Err(too_big());
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(transport_error)? {
            if body.len() + chunk.len() > self.max_response_bytes {
                return Err(too_big());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }
}

/// Seconds since the Unix epoch, now.
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// A reqwest failure as a refresh error, with the cause chain (which never holds the form body).
fn transport_error(err: reqwest::Error) -> RefreshError {
    let reason = if err.is_timeout() {
        Reason::Timeout
    } else if err.is_body() || err.is_decode() {
        Reason::BadResponse
    } else {
        Reason::Network
    };
    let mut message = err.to_string();
    let mut source = std::error::Error::source(&err);
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    RefreshError::local(ErrorClass::Transient, reason, message)
}
