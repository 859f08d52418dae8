//! The token request and the classification of every answer, against the simulated Entra ID.

mod common;

use common::*;
use std::time::{Duration, SystemTime};

use powerbi_tokend::client::{TokenClient, USER_AGENT};
use powerbi_tokend::config::{ApiVersion, DaemonConfig, TenantConfig};
use powerbi_tokend::credential::Credential;
use powerbi_tokend::error::{ErrorClass, Reason, RefreshError};
use powerbi_tokend_sim::{Behavior, RetryAfter, SimEntra};

async fn setup() -> (SimEntra, TenantConfig, TokenClient) {
    init();
    let sim = SimEntra::start().await.unwrap();
    register(&sim, "contoso.onmicrosoft.com", Duration::from_secs(3599));
    let dir = std::env::temp_dir();
    let tenant = tenant(&sim, "contoso", "contoso.onmicrosoft.com", &dir);
    let daemon = DaemonConfig {
        request_timeout: Duration::from_millis(1500),
        ..DaemonConfig::default()
    };
    (sim, tenant, TokenClient::new(&daemon).unwrap())
}

/// HTTPS end to end: the simulator serves a certificate from a CA made for this test, which the
/// client trusts only through `ca_file`; failed handshakes (an untrusting client, plain HTTP sent
/// to the TLS port) close their own connections and the server goes on.
#[tokio::test]
async fn https_simulator_is_trusted_through_ca_file() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    init();
    let pki = pki::loopback_pki().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &pki.ca_pem).unwrap();
    let sim = SimEntra::start_tls(pki.cert_pem.as_bytes(), pki.key_pem.as_bytes())
        .await
        .unwrap();
    assert_eq!(sim.authority_host(), format!("https://{}", sim.addr()));
    register(&sim, "contoso.onmicrosoft.com", Duration::from_secs(3599));
    let tenant = tenant(&sim, "contoso", "contoso.onmicrosoft.com", dir.path());
    let daemon = DaemonConfig {
        request_timeout: Duration::from_millis(1500),
        ..DaemonConfig::default()
    };

    let untrusting = TokenClient::new(&daemon).unwrap();
    let error = Credential::new(&tenant.credential)
        .fetch(&untrusting, None, &tenant)
        .await
        .unwrap_err();
    assert_eq!(error.reason, Reason::Network, "{error:?}");

    let mut plain = tokio::net::TcpStream::connect(sim.addr()).await.unwrap();
    plain
        .write_all(b"POST /contoso.onmicrosoft.com/oauth2/v2.0/token HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), plain.read_to_end(&mut answer)).await;
    assert!(
        closed.is_ok(),
        "the server closes a connection that is not TLS"
    );
    assert!(
        !answer.starts_with(b"HTTP/"),
        "no plain HTTP answer on the TLS port"
    );
    assert_eq!(sim.total_requests(), 0);

    let trusting = TokenClient::new(&DaemonConfig {
        ca_file: Some(ca_file),
        ..daemon
    })
    .unwrap();
    let token = Credential::new(&tenant.credential)
        .fetch(&trusting, None, &tenant)
        .await
        .unwrap();
    assert_eq!(token.lifetime().get(), Duration::from_secs(3599));
    assert_eq!(sim.issued_count("contoso.onmicrosoft.com"), 1);
}

fn form_value(form: &[(String, String)], key: &str) -> Option<String> {
    form.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone())
}

#[tokio::test]
async fn v2_request_shape_and_numeric_response() {
    let (sim, tenant, client) = setup().await;
    let token = Credential::new(&tenant.credential)
        .fetch(&client, None, &tenant)
        .await
        .unwrap();
    assert_eq!(token.lifetime().get(), Duration::from_secs(3599));
    let request = sim.last_request("contoso.onmicrosoft.com").unwrap();
    assert_eq!(request.version, powerbi_tokend_sim::ApiVersion::V2);
    assert_eq!(
        form_value(&request.form, "grant_type").as_deref(),
        Some("client_credentials")
    );
    assert_eq!(
        form_value(&request.form, "client_id").as_deref(),
        Some(CLIENT_ID)
    );
    assert_eq!(
        form_value(&request.form, "scope").as_deref(),
        Some("https://analysis.windows.net/powerbi/api/.default")
    );
    assert_eq!(form_value(&request.form, "resource"), None);
    let agent = request
        .headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("user-agent"))
        .map(|(_, v)| v.clone());
    assert_eq!(agent.as_deref(), Some(USER_AGENT));
    assert!(USER_AGENT.starts_with("powerbi-tokend/"));
}

#[tokio::test]
async fn v1_request_shape_and_string_response() {
    let (sim, mut tenant, client) = setup().await;
    tenant.api = ApiVersion::V1;
    let before = powerbi_tokend::clock::unix_now();
    let token = Credential::new(&tenant.credential)
        .fetch(&client, None, &tenant)
        .await
        .unwrap();
    let request = sim.last_request("contoso.onmicrosoft.com").unwrap();
    assert_eq!(request.version, powerbi_tokend_sim::ApiVersion::V1);
    assert_eq!(
        form_value(&request.form, "resource").as_deref(),
        Some("https://analysis.windows.net/powerbi/api")
    );
    assert_eq!(form_value(&request.form, "scope"), None);
    // v1 sends expires_on as a string; it is used as the expiry.
    assert!(
        (token.expires_on() - (before + 3599)).abs() <= 2,
        "{}",
        token.expires_on()
    );
}

async fn failure(behavior: Behavior) -> RefreshError {
    let (sim, tenant, client) = setup().await;
    sim.set_behavior("contoso.onmicrosoft.com", behavior);
    Credential::new(&tenant.credential)
        .fetch(&client, None, &tenant)
        .await
        .unwrap_err()
}

#[tokio::test]
async fn permanent_entra_errors() {
    for (code, reason) in [
        (7000215, Reason::InvalidClient),
        (7000222, Reason::InvalidClient),
        (700016, Reason::UnauthorizedClient),
        (90002, Reason::TenantNotFound),
        (900023, Reason::TenantNotFound),
    ] {
        let err = failure(Behavior::Aadsts(code)).await;
        assert_eq!(err.class, ErrorClass::Permanent, "AADSTS{code}: {err:?}");
        assert_eq!(err.reason, reason, "AADSTS{code}");
        assert_eq!(err.aadsts_code(), Some(format!("AADSTS{code}")));
        assert!(
            err.trace_id.is_some() && err.correlation_id.is_some(),
            "{err:?}"
        );
        assert!(
            err.message.starts_with(&format!("AADSTS{code}:")),
            "{}",
            err.message
        );
    }
}

#[tokio::test]
async fn real_validation_errors_from_the_simulator() {
    // Wrong secret, validated by the simulator rather than injected.
    let (sim, tenant, client) = setup().await;
    sim.set_app(
        "contoso.onmicrosoft.com",
        powerbi_tokend_sim::SimApp {
            client_id: CLIENT_ID.to_owned(),
            secret: "rotated".to_owned(),
            secret_expired: false,
        },
    );
    let err = Credential::new(&tenant.credential)
        .fetch(&client, None, &tenant)
        .await
        .unwrap_err();
    assert_eq!(
        (err.status, err.aadsts_code().as_deref()),
        (Some(401), Some("AADSTS7000215"))
    );
    assert!(!err.message.contains(SECRET));
    // Unknown tenant.
    let mut unknown = tenant.clone();
    unknown.tenant_id = Some("nobody.example.com".to_owned());
    let err = Credential::new(&unknown.credential)
        .fetch(&client, None, &unknown)
        .await
        .unwrap_err();
    assert_eq!(
        (err.class, err.reason),
        (ErrorClass::Permanent, Reason::TenantNotFound)
    );
}

#[tokio::test]
async fn throttling_with_retry_after_in_seconds_and_as_a_date() {
    let err = failure(Behavior::Throttle {
        retry_after: RetryAfter::Seconds(60),
        plain_text: true,
    })
    .await;
    assert_eq!(
        (err.class, err.reason),
        (ErrorClass::Throttled, Reason::Throttled)
    );
    assert_eq!(
        err.retry_after.map(|r| r.get()),
        Some(Duration::from_secs(60))
    );
    assert_eq!(err.status, Some(429));

    let at = SystemTime::now() + Duration::from_secs(120);
    let err = failure(Behavior::Throttle {
        retry_after: RetryAfter::HttpDate(at),
        plain_text: false,
    })
    .await;
    assert_eq!(err.class, ErrorClass::Throttled);
    let waited = err.retry_after.unwrap().get();
    assert!(
        waited > Duration::from_secs(115) && waited <= Duration::from_secs(120),
        "{waited:?}"
    );
}

#[tokio::test]
async fn transient_answers() {
    let err = failure(Behavior::ServerError {
        status: 500,
        json: false,
    })
    .await;
    assert_eq!(
        (err.class, err.reason, err.retry_after),
        (ErrorClass::Transient, Reason::ServerError, None)
    );
    let err = failure(Behavior::ServerError {
        status: 503,
        json: true,
    })
    .await;
    assert_eq!(
        (err.class, err.reason),
        (ErrorClass::Transient, Reason::ServerError)
    );
    let err = failure(Behavior::TemporarilyUnavailable).await;
    assert_eq!(
        (err.class, err.reason),
        (ErrorClass::Transient, Reason::ServerError)
    );
}

#[tokio::test]
async fn bad_responses() {
    for behavior in [
        Behavior::Html,
        Behavior::Truncated,
        Behavior::Oversized(200_000),
    ] {
        let err = failure(behavior.clone()).await;
        assert_eq!(
            (err.class, err.reason),
            (ErrorClass::Transient, Reason::BadResponse),
            "{behavior:?}: {err:?}"
        );
    }
    let err = failure(Behavior::Oversized(200_000)).await;
    assert!(
        err.message.contains("larger than 65536 bytes"),
        "{}",
        err.message
    );
}

/// A header of the latest request the simulator recorded for the tenant.
fn header(sim: &SimEntra, tenant_id: &str, name: &str) -> Option<String> {
    sim.last_request(tenant_id)?
        .headers
        .into_iter()
        .find(|(key, _)| key == name)
        .map(|(_, value)| value)
}

#[tokio::test]
async fn every_entra_request_carries_a_fresh_client_request_id() {
    let (sim, mut tenant, client) = setup().await;
    let mut seen = Vec::new();
    for api in [ApiVersion::V2, ApiVersion::V1] {
        tenant.api = api;
        Credential::new(&tenant.credential)
            .fetch(&client, None, &tenant)
            .await
            .unwrap();
        let id = header(&sim, "contoso.onmicrosoft.com", "client-request-id").unwrap();
        assert_eq!(id.len(), 36, "{id}");
        assert_eq!(
            header(&sim, "contoso.onmicrosoft.com", "return-client-request-id").as_deref(),
            Some("true")
        );
        assert_eq!(
            header(&sim, "contoso.onmicrosoft.com", "x-ms-lib-capability").as_deref(),
            Some("retry-after, h429")
        );
        seen.push(id);
    }
    assert_ne!(seen[0], seen[1], "the id must be fresh per request");

    // A rejected request: the error names the id that was sent, and Entra echoes it as the
    // correlation id.
    sim.set_behavior("contoso.onmicrosoft.com", Behavior::Aadsts(7000215));
    let err = Credential::new(&tenant.credential)
        .fetch(&client, None, &tenant)
        .await
        .unwrap_err();
    let sent = header(&sim, "contoso.onmicrosoft.com", "client-request-id");
    assert_eq!(err.client_request_id, sent);
    assert_eq!(err.correlation_id, sent);
}

#[tokio::test]
async fn timeouts_and_refused_connections() {
    let (sim, tenant, client) = setup().await;
    sim.set_behavior("contoso.onmicrosoft.com", Behavior::Hang);
    let err = Credential::new(&tenant.credential)
        .fetch(&client, None, &tenant)
        .await
        .unwrap_err();
    assert_eq!(
        (err.class, err.reason),
        (ErrorClass::Transient, Reason::Timeout),
        "{err:?}"
    );
    // Entra never answered, yet the failure names the request that was sent.
    assert_eq!(err.correlation_id, None);
    assert!(err.client_request_id.is_some());
    assert_eq!(
        err.client_request_id,
        header(&sim, "contoso.onmicrosoft.com", "client-request-id")
    );

    let (_sim, mut tenant, client) = setup().await;
    // A port nobody listens on.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    tenant.authority_host = format!("http://127.0.0.1:{port}").into();
    let err = Credential::new(&tenant.credential)
        .fetch(&client, None, &tenant)
        .await
        .unwrap_err();
    assert_eq!(
        (err.class, err.reason),
        (ErrorClass::Transient, Reason::Network),
        "{err:?}"
    );
    assert_eq!(err.client_request_id.map(|id| id.len()), Some(36));
}

#[tokio::test]
async fn redirects_are_not_followed() {
    let (sim, mut tenant, client) = setup().await;
    // A server that redirects every request to the simulator's token endpoint.
    let target = tenant.token_url().unwrap();
    let app = axum::Router::new().fallback(move || {
        let target = target.clone();
        async move {
            (
                axum::http::StatusCode::TEMPORARY_REDIRECT,
                [(axum::http::header::LOCATION, target)],
            )
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    tenant.authority_host = format!("http://{addr}").into();
    let err = Credential::new(&tenant.credential)
        .fetch(&client, None, &tenant)
        .await
        .unwrap_err();
    assert_eq!(err.status, Some(307));
    assert_eq!(
        sim.request_count("contoso.onmicrosoft.com"),
        0,
        "the redirect was followed"
    );
}

#[tokio::test]
async fn body_cap_is_configurable() {
    let (_sim, tenant, client) = setup().await;
    // A real token response is about 1-2 KiB: a 100-byte cap rejects it.
    let err = Credential::new(&tenant.credential)
        .fetch(&client.with_max_response_bytes(100), None, &tenant)
        .await
        .unwrap_err();
    assert_eq!(err.reason, Reason::BadResponse);
}
