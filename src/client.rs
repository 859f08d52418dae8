//! The daemon's HTTP client: one connection pool for every outbound call, and the protocols
//! spoken over it, each a method taking what it sends already read:
//!
//! * token requests: Entra's token endpoint (v1 or v2) with a client secret or an assertion
//!   ([`TokenClient::entra_token`]), a generic OAuth 2.0 server ([`TokenClient::oauth2_token`]),
//!   Azure's managed identity endpoints, IMDS and App Service
//!   ([`TokenClient::managed_identity_token`]); each answer becomes a token or a classified
//!   [`RefreshError`];
//! * bearer calls: the Power BI REST API ([`TokenClient::api_get`],
//!   [`TokenClient::api_post_json`]) and Azure Key Vault ([`TokenClient::key_vault_get`]), whose
//!   answers the caller reads.
//!
//! Where the secret, the assertion or the Key Vault value comes from is [`crate::credential`]'s
//! business, which builds on this module and never the other way round.
//!
//! Hygiene that a token fetcher needs and HTTP clients do not do by default:
//! * connect and total timeouts, so a black-holed endpoint cannot stall a tenant forever;
//! * a cap on the response body, so a misbehaving proxy cannot make us buffer megabytes;
//! * no redirects: following a redirect with a client secret in the body is how secrets leak;
//! * plain HTTP is refused by config validation except for loopback (the simulator, tests);
//! * `HTTPS_PROXY`/`NO_PROXY` are honoured (reqwest reads them); extra CAs come from `ca_file`;
//! * every request carries a fresh request id (`client-request-id`, Key Vault's
//!   `x-ms-client-request-id`), and every failure names it;
//! * every failure message quoting the server or the transport is sanitised with the secrets of
//!   that very request ([`crate::error::sanitise`]), because a server can reflect what it was sent.

use base64::Engine;
use secrecy::{ExposeSecret, SecretString};
use std::time::{Duration, SystemTime};

use crate::config::{
    ApiVersion, ClientAuth, DaemonConfig, ManagedIdentityId, OAuth2Config, TenantConfig,
};
use crate::error::{self, ErrorClass, Reason, RefreshError};
use crate::schedule::parse_retry_after;
use crate::token::{AccessToken, RetryAfter, parse_token_response};

/// `client_assertion_type` for JWT assertions (RFC 7523).
pub const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// Largest response body we read from a token endpoint. Real ones are a few KiB.
pub(crate) const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// How long IMDS may answer 410 (being updated) before we give up on this attempt.
const IMDS_GONE_WINDOW: Duration = Duration::from_secs(70);

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

/// Sends token requests and API calls; cheap to clone (the connection pool is shared).
#[derive(Clone, Debug)]
pub struct TokenClient {
    /// Shared connection pool, with the timeouts and TLS settings applied.
    http: reqwest::Client,
    /// Body cap; a field so tests can lower it.
    max_response_bytes: usize,
    /// The instance metadata service's token URL (overridable for tests).
    imds_endpoint: String,
}

/// How an app proves itself in a client-credentials request to Entra.
pub(crate) enum AppProof {
    /// `client_secret`.
    Secret(SecretString),
    /// `client_assertion`, a signed JWT (a certificate's, or a federated token), sent with
    /// `client_assertion_type` [`JWT_BEARER`].
    Assertion(SecretString),
}

/// Which managed identity endpoint a request goes to, with what it needs to send.
pub(crate) enum ManagedIdentityEndpoint<'a> {
    /// The instance metadata service (VMs, AKS, Container Instances…): the client's IMDS URL.
    Imds,
    /// App Service, Functions, Container Apps, Automation: their `IDENTITY_ENDPOINT` and the
    /// value of `IDENTITY_HEADER`, a secret.
    AppService {
        /// `IDENTITY_ENDPOINT`.
        endpoint: &'a str,
        /// The value of `IDENTITY_HEADER`.
        header: &'a SecretString,
    },
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
            imds_endpoint: daemon.imds_endpoint.clone(),
        })
    }

    /// Changes the body cap (tests).
    pub fn with_max_response_bytes(mut self, max: usize) -> Self {
        self.max_response_bytes = max;
        self
    }

    /// Asks Entra's token endpoint (v1 or v2) for an app-only token for `tenant`, the app
    /// proving itself with `proof`.
    ///
    /// # Errors
    /// A classified [`RefreshError`]; never one that contains the secret or the assertion.
    pub(crate) async fn entra_token(
        &self,
        tenant: &TenantConfig,
        proof: &AppProof,
    ) -> Result<AccessToken, RefreshError> {
        let (token_url, client_id) = app_identity(tenant)?;
        let target = match tenant.api {
            ApiVersion::V2 => ("scope", tenant.scope()),
            ApiVersion::V1 => ("resource", tenant.resource.to_string()),
        };
        let mut form: Vec<(&str, &str)> = vec![
            ("grant_type", "client_credentials"),
            ("client_id", client_id),
            (target.0, &target.1),
        ];
        // `client_assertion_type` is a public constant: redacting it would only hide a useful
        // word from a message.
        let secret = match proof {
            AppProof::Secret(secret) => {
                form.push(("client_secret", secret.expose_secret()));
                secret
            }
            AppProof::Assertion(assertion) => {
                form.push(("client_assertion_type", JWT_BEARER));
                form.push(("client_assertion", assertion.expose_secret()));
                assertion
            }
        };
        let request = self.http.post(token_url).form(&form);
        self.send(request, Endpoint::Entra, &[secret.expose_secret()])
            .await
    }

    /// Asks a generic OAuth 2.0 server (RFC 6749 §4.4) for a token for `tenant`, with the
    /// client `secret` in the body or in HTTP Basic as `oauth2` says.
    ///
    /// # Errors
    /// A classified [`RefreshError`]; never one that contains the secret.
    pub(crate) async fn oauth2_token(
        &self,
        tenant: &TenantConfig,
        oauth2: &OAuth2Config,
        secret: &SecretString,
    ) -> Result<AccessToken, RefreshError> {
        let (_, client_id) = app_identity(tenant)?;
        let mut form: Vec<(&str, &str)> = vec![("grant_type", "client_credentials")];
        if let Some(scope) = &oauth2.scope {
            form.push(("scope", scope));
        }
        if let Some(audience) = &oauth2.audience {
            form.push(("audience", audience));
        }
        if let Some(resource) = &oauth2.resource {
            form.push(("resource", resource));
        }
        let mut request = self.http.post(&oauth2.token_url);
        // The Basic credentials too: a server that echoes its request headers would show them.
        let mut basic = None;
        match oauth2.auth {
            ClientAuth::ClientSecretPost => {
                form.push(("client_id", client_id));
                form.push(("client_secret", secret.expose_secret()));
            }
            ClientAuth::ClientSecretBasic => {
                // RFC 6749 §2.3.1: both parts form-urlencoded before base64.
                let credentials = format!(
                    "{}:{}",
                    form_urlencoded::byte_serialize(client_id.as_bytes()).collect::<String>(),
                    form_urlencoded::byte_serialize(secret.expose_secret().as_bytes())
                        .collect::<String>()
                );
                let encoded = base64::engine::general_purpose::STANDARD.encode(credentials);
                let mut value = reqwest::header::HeaderValue::try_from(format!("Basic {encoded}"))
                    .map_err(|_| {
                        RefreshError::local(
                            ErrorClass::Permanent,
                            Reason::Credential,
                            "the client secret cannot be sent in an HTTP header",
                        )
                    })?;
                value.set_sensitive(true);
                request = request.header(reqwest::header::AUTHORIZATION, value);
                basic = Some(encoded);
            }
        }
        let mut secrets = vec![secret.expose_secret()];
        secrets.extend(basic.as_deref());
        self.send(request.form(&form), Endpoint::OAuth2, &secrets)
            .await
    }

    /// Asks Azure's managed identity `endpoint` for a token for `tenant.resource`, as
    /// `identity`; with IMDS' retry rule for 410 (the metadata service is being updated and
    /// answers again within 70 seconds).
    ///
    /// # Errors
    /// A classified [`RefreshError`]; never one that contains App Service's header.
    pub(crate) async fn managed_identity_token(
        &self,
        tenant: &TenantConfig,
        endpoint: ManagedIdentityEndpoint<'_>,
        identity: &ManagedIdentityId,
    ) -> Result<AccessToken, RefreshError> {
        // App Service's identity header is a secret a reflecting server could quote.
        let (url, header, secrets, api_version) = match endpoint {
            ManagedIdentityEndpoint::Imds => {
                (self.imds_endpoint.as_str(), None, Vec::new(), "2018-02-01")
            }
            ManagedIdentityEndpoint::AppService { endpoint, header } => {
                let mut value = reqwest::header::HeaderValue::try_from(header.expose_secret())
                    .map_err(|_| {
                        RefreshError::local(
                            ErrorClass::Permanent,
                            Reason::Credential,
                            "IDENTITY_HEADER cannot be sent in an HTTP header",
                        )
                    })?;
                value.set_sensitive(true);
                (
                    endpoint,
                    Some(value),
                    vec![header.expose_secret()],
                    "2019-08-01",
                )
            }
        };
        let started = std::time::Instant::now();
        let mut delay = Duration::from_secs(1);
        loop {
            let mut query: Vec<(&str, &str)> = vec![("resource", &tenant.resource)];
            query.extend(identity_selector(identity, header.is_some()));
            query.push(("api-version", api_version));
            let mut request = self.http.get(url);
            if let Some(value) = &header {
                request = request.header("X-IDENTITY-HEADER", value.clone());
            }
            // Azure Automation serves App Service's protocol too and refuses a request without
            // `Metadata: true`; azure-identity and MSAL send it everywhere for that.
            let request = request.header("Metadata", "true");
            let (request, request_id) = tag(request.query(&query), Endpoint::ManagedIdentity);
            let (status, body, retry_after) = self.exchange(request, &request_id, &secrets).await?;
            if status == 200 {
                return parse_token_response(&body, SystemTime::now())
                    .map_err(|err| with_request_id(err.into(), &request_id));
            }
            if status == 410 && started.elapsed() + delay <= IMDS_GONE_WINDOW {
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(10));
                continue;
            }
            let mut err = with_request_id(
                error::classify(status, &body, retry_after, &secrets),
                &request_id,
            );
            if matches!(status, 404 | 410) {
                // IMDS answers these while it is being updated: retry, not reconfigure.
                err.class = ErrorClass::Transient;
                err.reason = Reason::ServerError;
            }
            return Err(err);
        }
    }

    /// Sends a token request and turns the answer into a token or a classified error, with
    /// `secrets` (the secret values in the request) redacted from any text the server sent.
    async fn send(
        &self,
        request: reqwest::RequestBuilder,
        endpoint: Endpoint,
        secrets: &[&str],
    ) -> Result<AccessToken, RefreshError> {
        let (request, request_id) = tag(request, endpoint);
        let (status, body, retry_after) = self.exchange(request, &request_id, secrets).await?;
        let result = if status == 200 {
            parse_token_response(&body, SystemTime::now()).map_err(RefreshError::from)
        } else {
            Err(error::classify(status, &body, retry_after, secrets))
        };
        result.map_err(|err| with_request_id(err, &request_id))
    }

    /// Sends a request; returns the status, the capped body and the parsed `Retry-After`. A
    /// failure carries `request_id`, so even a timeout names the request it was.
    async fn exchange(
        &self,
        request: reqwest::RequestBuilder,
        request_id: &str,
        secrets: &[&str],
    ) -> Result<(u16, Vec<u8>, Option<RetryAfter>), RefreshError> {
        let response = request
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|err| with_request_id(transport_error(&err, secrets), request_id))?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| parse_retry_after(value, SystemTime::now()));
        let body = self
            .read_capped(response, secrets)
            .await
            .map_err(|err| with_request_id(err, request_id))?;
        Ok((status, body, retry_after))
    }

    /// Reads the body, giving up past the cap.
    async fn read_capped(
        &self,
        mut response: reqwest::Response,
        secrets: &[&str],
    ) -> Result<Vec<u8>, RefreshError> {
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
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|err| transport_error(&err, secrets))?
        {
            if body.len() + chunk.len() > self.max_response_bytes {
                return Err(too_big());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }
}

/// What a Power BI API call got back: the status, the headers worth logging, and the body
/// (capped like token responses).
#[derive(Debug)]
pub struct ApiAnswer {
    /// HTTP status.
    pub status: u16,
    /// Power BI's `RequestId` header, when present and sane: what Microsoft support asks for.
    pub request_id: Option<String>,
    /// Power BI's `X-PowerBI-Error-Info` header (the error code), when present and sane.
    pub error_info: Option<String>,
    /// `Retry-After`, bounded.
    pub retry_after: Option<RetryAfter>,
    /// `WWW-Authenticate` (Key Vault's challenge), when present and short.
    pub www_authenticate: Option<String>,
    /// The body, at most the client's cap.
    pub body: Vec<u8>,
}

/// The longest header value kept from an API answer: a GUID or an error code is far shorter.
const MAX_API_HEADER: usize = 128;

/// A header value kept for the log: short, and only characters a request id or error code has.
fn api_header(headers: &reqwest::header::HeaderMap, name: &str) -> Option<String> {
    let value = headers.get(name)?.to_str().ok()?.trim();
    (!value.is_empty()
        && value.len() <= MAX_API_HEADER
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b)))
    .then(|| value.to_owned())
}

impl TokenClient {
    /// `GET url` with the token as bearer, through the same pool, timeouts and body cap as
    /// token requests. The token is never part of an error message.
    ///
    /// # Errors
    /// A transport failure (connect, TLS, timeout, oversized body), sanitised.
    pub(crate) async fn api_get(
        &self,
        url: &str,
        token: &AccessToken,
    ) -> Result<ApiAnswer, RefreshError> {
        self.api_call(self.http.get(url), token).await
    }

    /// `GET url` from Azure Key Vault: as [`Self::api_get`], with `request_id` as
    /// `x-ms-client-request-id`, the header the Azure SDKs (azure-keyvault-secrets) send with
    /// every call and Microsoft support traces a call by. The caller makes it (`new_request_id`)
    /// before the call, so a failure without an answer can name it too.
    ///
    /// # Errors
    /// A transport failure, sanitised.
    pub(crate) async fn key_vault_get(
        &self,
        url: &str,
        token: &AccessToken,
        request_id: &str,
    ) -> Result<ApiAnswer, RefreshError> {
        const CLIENT_REQUEST_ID: reqwest::header::HeaderName =
            reqwest::header::HeaderName::from_static("x-ms-client-request-id");
        let request = self.http.get(url).header(CLIENT_REQUEST_ID, request_id);
        self.api_call(request, token).await
    }

    /// `POST url` with a JSON body and the token as bearer; otherwise as [`Self::api_get`].
    ///
    /// # Errors
    /// A transport failure, sanitised.
    pub(crate) async fn api_post_json(
        &self,
        url: &str,
        token: &AccessToken,
        body: &serde_json::Value,
    ) -> Result<ApiAnswer, RefreshError> {
        self.api_call(self.http.post(url).json(body), token).await
    }

    /// Sends a Power BI API request with the bearer token and reads the answer.
    async fn api_call(
        &self,
        request: reqwest::RequestBuilder,
        token: &AccessToken,
    ) -> Result<ApiAnswer, RefreshError> {
        let secret = token.secret.expose_secret();
        let request = request
            .bearer_auth(secret)
            .header(reqwest::header::ACCEPT, "application/json");
        let response = request
            .send()
            .await
            .map_err(|err| transport_error(&err, &[secret]))?;
        let status = response.status().as_u16();
        let headers = response.headers();
        let request_id = api_header(headers, "requestid");
        // Power BI names it `X-PowerBI-Error-Info`; some documents give it an `x-ms-` prefix;
        // Fabric sends `x-ms-public-api-error-code` (as its Go SDK's test server does).
        let error_info = api_header(headers, "x-powerbi-error-info")
            .or_else(|| api_header(headers, "x-ms-powerbi-error-info"))
            .or_else(|| api_header(headers, "x-ms-public-api-error-code"));
        let retry_after = headers
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| parse_retry_after(value, SystemTime::now()));
        let www_authenticate = headers
            .get(reqwest::header::WWW_AUTHENTICATE)
            .and_then(|value| value.to_str().ok())
            .filter(|value| value.len() <= 1024)
            .map(str::to_owned);
        let body = self.read_capped(response, &[secret]).await?;
        Ok(ApiAnswer {
            status,
            request_id,
            error_info,
            retry_after,
            www_authenticate,
            body,
        })
    }
}

/// The query parameter that picks a user-assigned identity, named as each endpoint names it
/// (azure-identity sends the same): IMDS calls a resource ID `msi_res_id`, App Service
/// (api-version 2019-08-01) `mi_res_id`. The system-assigned identity is chosen by sending none.
fn identity_selector(
    identity: &ManagedIdentityId,
    app_service: bool,
) -> Option<(&'static str, &str)> {
    match identity {
        ManagedIdentityId::System => None,
        ManagedIdentityId::ClientId(id) => Some(("client_id", id)),
        ManagedIdentityId::ObjectId(id) => Some(("object_id", id)),
        ManagedIdentityId::ResourceId(id) if app_service => Some(("mi_res_id", id)),
        ManagedIdentityId::ResourceId(id) => Some(("msi_res_id", id)),
    }
}

/// Which kind of server a request goes to, for the headers that only Entra understands.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    /// Entra's token endpoint (v1 or v2).
    Entra,
    /// A generic OAuth 2.0 server.
    OAuth2,
    /// IMDS or App Service.
    ManagedIdentity,
}

/// Gives a request a fresh `client-request-id` (and asks for it back), as MSAL does: Entra uses it
/// as the correlation ID, so the id logged with a failure finds the request in Microsoft's logs
/// even when no answer arrived. Entra requests also announce `x-ms-lib-capability: retry-after,
/// h429`: this client honours `Retry-After` on 429.
fn tag(request: reqwest::RequestBuilder, endpoint: Endpoint) -> (reqwest::RequestBuilder, String) {
    use reqwest::header::{HeaderName, HeaderValue};
    // Names and values known at compile time: nothing to parse or check per request.
    const CLIENT_REQUEST_ID: HeaderName = HeaderName::from_static("client-request-id");
    const RETURN_CLIENT_REQUEST_ID: HeaderName =
        HeaderName::from_static("return-client-request-id");
    const LIB_CAPABILITY: HeaderName = HeaderName::from_static("x-ms-lib-capability");
    let request_id = new_request_id();
    let mut request = request
        .header(CLIENT_REQUEST_ID, &request_id)
        .header(RETURN_CLIENT_REQUEST_ID, HeaderValue::from_static("true"));
    if endpoint == Endpoint::Entra {
        request = request.header(
            LIB_CAPABILITY,
            HeaderValue::from_static("retry-after, h429"),
        );
    }
    (request, request_id)
}

/// A random (version 4) UUID in its usual lower-case form, as MSAL and the Azure SDKs send.
pub(crate) fn new_request_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// The token URL and client ID of a tenant that signs in as an app (a secret or an assertion):
/// where its token requests go, and the `aud` and `iss` of its assertions. Validation gives
/// every such tenant both; one built in code without them fails for good, as the token endpoint
/// would refuse the request.
///
/// # Errors
/// The tenant lacks one of the two; permanent.
pub(crate) fn app_identity(tenant: &TenantConfig) -> Result<(String, &str), RefreshError> {
    match (tenant.token_url(), tenant.client_id.as_deref()) {
        (Some(token_url), Some(client_id)) => Ok((token_url, client_id)),
        _ => Err(RefreshError::local(
            ErrorClass::Permanent,
            Reason::InvalidRequest,
            "the tenant has no tenant_id or client_id to ask its token endpoint with",
        )),
    }
}

/// A failure with the id of the request it belongs to.
fn with_request_id(mut err: RefreshError, request_id: &str) -> RefreshError {
    err.client_request_id = Some(request_id.to_owned());
    err
}

/// A reqwest failure as a refresh error, with the cause chain. The chain never holds the form
/// body, but it can hold what a server sent (a TLS alert, a malformed header, a certificate's
/// names), so it is sanitised like any server text.
fn transport_error(err: &reqwest::Error, secrets: &[&str]) -> RefreshError {
    let reason = if err.is_timeout() {
        Reason::Timeout
    } else if err.is_body() || err.is_decode() {
        Reason::BadResponse
    } else {
        Reason::Network
    };
    let mut message = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    RefreshError::local(
        ErrorClass::Transient,
        reason,
        error::sanitise(&message, secrets),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_version_4_uuids_and_differ() {
        let first = new_request_id();
        let second = new_request_id();
        assert_ne!(first, second);
        for id in [&first, &second] {
            let groups: Vec<&str> = id.split('-').collect();
            let lengths: Vec<usize> = groups.iter().map(|g| g.len()).collect();
            assert_eq!(lengths, [8, 4, 4, 4, 12], "{id}");
            assert!(groups[2].starts_with('4'), "{id}");
            assert!(
                matches!(groups[3].as_bytes()[0], b'8' | b'9' | b'a' | b'b'),
                "{id}"
            );
            assert!(
                id.chars()
                    .all(|c| c == '-' || c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
            );
        }
    }
}
