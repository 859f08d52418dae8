//! The fixture and request helpers the simulator's test modules share: one simulator with one
//! tenant and app, form builders, an answer type, and the checks of Entra's error shape.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use super::assertion::JWT_BEARER_ASSERTION_TYPE;
use super::wire::{JSON_CONTENT_TYPE, is_guid};
use super::{SimApp, SimEntra, SimManagedIdentity, SimTenant};

pub(super) const TENANT: &str = "8c3f2b1e-0d4a-4e6b-9f7a-1a2b3c4d5e6f";
pub(super) const APP: &str = "5d1e7c2a-3b4f-4a6d-8e9f-0a1b2c3d4e5f";
pub(super) const SECRET: &str = "s3cr3t~value+with/odd=chars&more";
pub(super) const POWER_BI: &str = "https://analysis.windows.net/powerbi/api";
pub(super) const POWER_BI_SCOPE: &str = "https://analysis.windows.net/powerbi/api/.default";

/// A simulator with one tenant and one app, and an HTTP client for it (one per test:
/// building a client is the slowest part of a request).
pub(super) struct Fixture {
    /// The simulator, with tenant [`TENANT`] and app [`APP`] (secret [`SECRET`]).
    pub(super) sim: SimEntra,
    /// A client without proxies and with a 5 s timeout, so a hung test fails.
    pub(super) http: reqwest::Client,
}

pub(super) async fn fixture() -> Fixture {
    let sim = SimEntra::start().await.expect("simulator starts");
    sim.add_tenant(
        TENANT,
        SimTenant::new(SimApp::new(APP, SECRET), Duration::from_secs(3599)),
    );
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("client builds");
    Fixture { sim, http }
}

/// An access token from the simulator's v2 endpoint for `scope`, for [`TENANT`] and [`APP`].
pub(super) async fn bearer(fixture: &Fixture, scope: &'static str) -> String {
    let answer = post(
        &fixture.http,
        &v2_url(&fixture.sim, TENANT),
        &with(v2_form(), "scope", scope),
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    answer.json()["access_token"]
        .as_str()
        .expect("access_token")
        .to_owned()
}

pub(super) fn v2_url(sim: &SimEntra, tenant: &str) -> String {
    format!("{}/{tenant}/oauth2/v2.0/token", sim.authority_host())
}

pub(super) fn v1_url(sim: &SimEntra, tenant: &str) -> String {
    format!("{}/{tenant}/oauth2/token", sim.authority_host())
}

pub(super) fn v2_form() -> Vec<(&'static str, &'static str)> {
    vec![
        ("grant_type", "client_credentials"),
        ("client_id", APP),
        ("client_secret", SECRET),
        ("scope", POWER_BI_SCOPE),
    ]
}

pub(super) fn v1_form() -> Vec<(&'static str, &'static str)> {
    vec![
        ("grant_type", "client_credentials"),
        ("client_id", APP),
        ("client_secret", SECRET),
        ("resource", POWER_BI),
    ]
}

pub(super) fn without(
    form: Vec<(&'static str, &'static str)>,
    key: &str,
) -> Vec<(&'static str, &'static str)> {
    form.into_iter().filter(|(name, _)| *name != key).collect()
}

pub(super) fn with(
    form: Vec<(&'static str, &'static str)>,
    key: &'static str,
    value: &'static str,
) -> Vec<(&'static str, &'static str)> {
    let mut form = without(form, key);
    form.push((key, value));
    form
}

/// A response read in full, so a test can assert on any part of it.
pub(super) struct Answer {
    /// The HTTP status.
    pub(super) status: u16,
    /// The response headers.
    pub(super) headers: reqwest::header::HeaderMap,
    /// The body as text, whatever its type.
    pub(super) body: String,
}

impl Answer {
    pub(super) fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).expect("JSON body")
    }

    pub(super) fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|value| value.to_str().ok())
    }
}

pub(super) async fn post(http: &reqwest::Client, url: &str, form: &[(&str, &str)]) -> Answer {
    answer(http.post(url).form(form)).await
}

pub(super) async fn answer(request: reqwest::RequestBuilder) -> Answer {
    let response = request.send().await.expect("request answered");
    Answer {
        status: response.status().as_u16(),
        headers: response.headers().clone(),
        body: response.text().await.expect("body read"),
    }
}

pub(super) fn looks_like_guid(text: &str) -> bool {
    is_guid(text) && text == text.to_ascii_lowercase()
}

pub(super) fn looks_like_timestamp(text: &str) -> bool {
    chrono::NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%SZ").is_ok()
}

/// Checks the §2.1 shape and returns the body.
pub(super) fn assert_entra_error(
    answer: &Answer,
    status: u16,
    error: &str,
    code: u32,
) -> serde_json::Value {
    assert_eq!(answer.status, status, "status of {}", answer.body);
    assert_eq!(answer.header("content-type"), Some(JSON_CONTENT_TYPE));
    let body = answer.json();
    assert_eq!(body["error"], error, "{body}");
    assert_eq!(body["error_codes"], serde_json::json!([code]));
    let timestamp = body["timestamp"].as_str().expect("timestamp");
    let trace_id = body["trace_id"].as_str().expect("trace_id");
    let correlation_id = body["correlation_id"].as_str().expect("correlation_id");
    assert!(looks_like_timestamp(timestamp), "{timestamp}");
    assert!(looks_like_guid(trace_id), "{trace_id}");
    let description = body["error_description"].as_str().expect("description");
    assert!(
        description.starts_with(&format!("AADSTS{code}: ")),
        "{description}"
    );
    assert!(
        description.ends_with(&format!(
            "\r\nTrace ID: {trace_id}\r\nCorrelation ID: {correlation_id}\r\nTimestamp: {timestamp}"
        )),
        "{description}"
    );
    assert!(
        !description.contains('{'),
        "unfilled placeholder: {description}"
    );
    assert_eq!(
        body["error_uri"],
        format!("https://login.microsoftonline.com/error?code={code}")
    );
    body
}

pub(super) fn decode_claims(token: &str) -> serde_json::Value {
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "JWT-shaped");
    let payload = URL_SAFE_NO_PAD.decode(parts[1]).expect("base64url payload");
    serde_json::from_slice(&payload).expect("JSON claims")
}

pub(super) const USER_ASSIGNED: &str = "7a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d";
pub(super) const IDENTITY_HEADER: &str = "identity-header-fixture";

/// A client-credentials request authenticated by `assertion` to a v2 or v1 endpoint.
pub(super) async fn post_assertion(http: &reqwest::Client, url: &str, assertion: &str) -> Answer {
    let target = if url.ends_with("/v2.0/token") {
        ("scope", POWER_BI_SCOPE)
    } else {
        ("resource", POWER_BI)
    };
    let form = [
        ("grant_type", "client_credentials"),
        ("client_id", APP),
        ("client_assertion_type", JWT_BEARER_ASSERTION_TYPE),
        ("client_assertion", assertion),
        target,
    ];
    post(http, url, &form).await
}

pub(super) fn query_url(base: &str, query: &[(&str, &str)]) -> String {
    fn encode(text: &str) -> String {
        text.bytes()
            .map(|byte| match byte {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                    char::from(byte).to_string()
                }
                _ => format!("%{byte:02X}"),
            })
            .collect()
    }
    let pairs: Vec<String> = query
        .iter()
        .map(|(name, value)| format!("{}={}", encode(name), encode(value)))
        .collect();
    format!("{base}?{}", pairs.join("&"))
}

pub(super) fn host_identity() -> SimManagedIdentity {
    SimManagedIdentity {
        system_assigned: true,
        user_assigned: vec![USER_ASSIGNED.to_owned()],
        lifetime: Duration::from_secs(86399),
        identity_header: IDENTITY_HEADER.to_owned(),
    }
}

pub(super) async fn imds_get(
    http: &reqwest::Client,
    sim: &SimEntra,
    query: &[(&str, &str)],
) -> Answer {
    let url = query_url(&sim.imds_endpoint(), query);
    answer(http.get(url).header("Metadata", "true")).await
}
