//! A token request as the token endpoints read it, and the answers built from it: the [`Grant`]
//! or [`Rejection`] of Entra's checks, and the [`Reply`] with Entra's error body and headers.
//! The endpoints (`token_endpoint.rs`), the success bodies (`access_token.rs`), the injected
//! faults (`faults.rs`) and the credential checks (`assertion.rs`, `federated.rs`) all speak in
//! these terms, so they live below all of them.

use std::time::Duration;

use axum::extract::Request;
use axum::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};

use super::catalogue::{catalogue, error_body};
use super::wire::{REDACTED, decode_component, json_headers, parse_basic, parse_form, tenant_key};
use super::{ApiVersion, SimRequest};

/// Largest request body read; real token requests are a few hundred bytes (a few KB with a
/// client assertion).
const MAX_REQUEST_BODY: usize = 1024 * 1024;

/// Form fields whose values are credentials.
const SECRET_FORM_FIELDS: &[&str] = &["client_secret", "client_assertion"];

/// A token request, read and decoded.
pub(super) struct Incoming {
    /// Which endpoint was called: decides the resource parameter and the body's number types.
    pub(super) version: ApiVersion,
    /// Anything but `POST` is AADSTS900561.
    pub(super) method: Method,
    /// The tenant path segment as sent (percent-decoded), for messages and the `tid` claim.
    pub(super) tenant: String,
    /// The same in lower case: the registry key.
    pub(super) tenant_key: String,
    /// Form fields; empty unless the body was `application/x-www-form-urlencoded`.
    form: Vec<(String, String)>,
    /// `client_id` and secret from an HTTP Basic `Authorization` header.
    basic: Option<(String, String)>,
    /// The client's `client-request-id`, echoed as the correlation id.
    client_request_id: Option<String>,
    /// All request headers, kept for [`Incoming::recorded`].
    headers: HeaderMap,
}

impl Incoming {
    /// Reads the request: the tenant from the path, the form (when the body is one), HTTP Basic
    /// credentials and the client's request id.
    pub(super) async fn read(version: ApiVersion, request: Request) -> Incoming {
        let (parts, body) = request.into_parts();
        let tenant = tenant_segment(parts.uri.path());
        let is_form = parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.split(';').next())
            .is_some_and(|mime| {
                mime.trim()
                    .eq_ignore_ascii_case("application/x-www-form-urlencoded")
            });
        let form = if is_form {
            match axum::body::to_bytes(body, MAX_REQUEST_BODY).await {
                Ok(bytes) => parse_form(&bytes),
                Err(_) => Vec::new(),
            }
        } else {
            Vec::new()
        };
        let basic = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(parse_basic);
        let client_request_id = parts
            .headers
            .get("client-request-id")
            .and_then(|value| value.to_str().ok())
            .map(str::trim)
            .filter(|id| !id.is_empty() && id.len() <= 128)
            .map(str::to_owned);
        Incoming {
            version,
            method: parts.method,
            tenant_key: tenant_key(&tenant),
            tenant,
            form,
            basic,
            client_request_id,
            headers: parts.headers,
        }
    }

    /// The first value of a form field.
    pub(super) fn param(&self, name: &str) -> Option<&str> {
        self.form
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }

    /// `client_id` from the form, else from HTTP Basic; never empty.
    pub(super) fn client_id(&self) -> Option<&str> {
        self.param("client_id")
            .or_else(|| self.basic.as_ref().map(|(id, _)| id.as_str()))
            .filter(|id| !id.is_empty())
    }

    /// `client_secret` from the form, else from HTTP Basic; never empty.
    pub(super) fn client_secret(&self) -> Option<&str> {
        self.param("client_secret")
            .or_else(|| self.basic.as_ref().map(|(_, secret)| secret.as_str()))
            .filter(|secret| !secret.is_empty())
    }

    /// The request as [`SimEntra::last_request`](super::SimEntra::last_request) reports it,
    /// credentials redacted.
    pub(super) fn recorded(&self) -> SimRequest {
        let form = self
            .form
            .iter()
            .map(|(key, value)| {
                let value = if SECRET_FORM_FIELDS.contains(&key.as_str()) {
                    REDACTED.to_owned()
                } else {
                    value.clone()
                };
                (key.clone(), value)
            })
            .collect();
        let headers = self
            .headers
            .iter()
            .map(|(name, value)| {
                let value = if name == header::AUTHORIZATION {
                    let scheme = value
                        .to_str()
                        .ok()
                        .and_then(|text| text.split_whitespace().next())
                        .unwrap_or_default();
                    format!("{scheme} {REDACTED}").trim_start().to_owned()
                } else {
                    String::from_utf8_lossy(value.as_bytes()).into_owned()
                };
                (name.as_str().to_owned(), value)
            })
            .collect();
        SimRequest {
            version: self.version,
            form,
            headers,
        }
    }

    /// Values for the catalogue placeholders, from whatever the request carried.
    pub(super) fn placeholders(&self) -> Vec<(&'static str, String)> {
        let scope = self.param("scope").unwrap_or_default();
        let resource = self
            .param("resource")
            .unwrap_or_else(|| scope.strip_suffix("/.default").unwrap_or(scope));
        vec![
            ("tenant", self.tenant.clone()),
            ("client_id", self.client_id().unwrap_or_default().to_owned()),
            ("scope", scope.to_owned()),
            ("resource", resource.to_owned()),
            (
                "grant_type",
                self.param("grant_type").unwrap_or_default().to_owned(),
            ),
            ("method", self.method.as_str().to_owned()),
            ("parameter", "grant_type".to_owned()),
        ]
    }
}

/// The tenant a path names: its first segment, percent-decoded, as the client spelled it.
pub(super) fn tenant_segment(path: &str) -> String {
    let segment = path
        .trim_start_matches('/')
        .split('/')
        .next()
        .unwrap_or_default();
    decode_component(segment.as_bytes(), false)
}

/// A response plus the AADSTS code it carries, for the request log.
pub(super) struct Reply {
    /// What the client gets.
    pub(super) response: Response,
    /// The catalogue code in the body; `None` for successes and non-Entra bodies.
    pub(super) aadsts: Option<u32>,
}

impl From<Response> for Reply {
    fn from(response: Response) -> Self {
        Reply {
            response,
            aadsts: None,
        }
    }
}

/// Validation succeeded: issue a token for this resource to this client.
pub(super) struct Grant {
    /// The app's client id as registered, for the `appid` claim.
    pub(super) client_id: String,
    /// The resource the token is for, Power BI's or Key Vault's (`aud`, and v1's `resource`).
    pub(super) resource: String,
    /// `expires_in` of the token, from the tenant.
    pub(super) lifetime: Duration,
    /// `refresh_in` of the token, from the tenant.
    pub(super) refresh_in: Option<Duration>,
}

/// Validation failed with this catalogue code; the placeholders fill its text.
pub(super) struct Rejection {
    /// The AADSTS code: a [`catalogue`](fn@catalogue) entry.
    code: u32,
    /// Values found during validation, preferred over those taken from the request.
    placeholders: Vec<(&'static str, String)>,
}

impl Rejection {
    pub(super) fn new(code: u32) -> Self {
        Rejection {
            code,
            placeholders: Vec::new(),
        }
    }

    /// Fills a placeholder of the entry's text with what validation found.
    pub(super) fn with(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.placeholders.push((name, value.into()));
        self
    }

    /// AADSTS900144: a required parameter is missing.
    pub(super) fn missing(parameter: &'static str) -> Self {
        Rejection::new(900144).with("parameter", parameter)
    }

    /// The catalogue entry's answer, its text filled with what validation found, else with what
    /// the request carried.
    pub(super) fn reply(self, incoming: &Incoming) -> Reply {
        let (status, error, text) = catalogue(self.code);
        let mut placeholders = incoming.placeholders();
        // Specific values first: `render` uses the first match for a name.
        placeholders.splice(0..0, self.placeholders);
        error_reply(incoming, status, error, self.code, text, &placeholders)
    }
}

/// The catalogue entry for `code`, its text filled from the request.
pub(super) fn catalogue_reply(incoming: &Incoming, code: u32) -> Reply {
    let (status, error, text) = catalogue(code);
    error_reply(
        incoming,
        status,
        error,
        code,
        text,
        &incoming.placeholders(),
    )
}

/// An Entra error body with these fields, with Entra's JSON headers and the client's request id.
pub(super) fn error_reply(
    incoming: &Incoming,
    status: StatusCode,
    error: &str,
    code: u32,
    text: &str,
    placeholders: &[(&'static str, String)],
) -> Reply {
    let body = error_body(
        error,
        code,
        text,
        placeholders,
        incoming.client_request_id.as_deref(),
    );
    let mut headers = json_headers();
    echo_request_id(&mut headers, incoming);
    Reply {
        response: (status, headers, body).into_response(),
        aadsts: Some(code),
    }
}

/// Entra returns the client's `client-request-id` header when the request says
/// `return-client-request-id: true` (the Azure REST convention MSAL relies on).
pub(super) fn echo_request_id(headers: &mut HeaderMap, incoming: &Incoming) {
    // Entra returns the id in a response header only when asked to.
    let asked = incoming
        .headers
        .get("return-client-request-id")
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.trim().eq_ignore_ascii_case("true"));
    if let Some(value) = incoming
        .client_request_id
        .as_deref()
        .filter(|_| asked)
        .and_then(|id| HeaderValue::from_str(id).ok())
    {
        headers.insert(HeaderName::from_static("client-request-id"), value);
    }
}
