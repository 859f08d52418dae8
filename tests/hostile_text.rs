//! Hostile servers: whatever a token endpoint sends back, the failure the daemon keeps (and so
//! the log, `/status` and `once`) holds no secret of the request, no token, no terminal escape,
//! and no more than the cap. Each test starts a tiny axum server that answers what it needs.

mod common;

use common::*;
use secrecy::SecretString;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use powerbi_tokend::client::TokenClient;
use powerbi_tokend::config::{
    CredentialConfig, DaemonConfig, ManagedIdentityConfig, ManagedIdentityId,
    ManagedIdentitySource, SecretSource, TenantConfig,
};
use powerbi_tokend::credential::Credential;
use powerbi_tokend::error::{MAX_TEXT_CHARS, Reason, RefreshError};
use powerbi_tokend::token::parse_token_response;

const BIN: &str = env!("CARGO_BIN_EXE_powerbi-tokend");

/// A JWT as Entra issues them (header, payload, signature), here as a token or an assertion.
const JWT: &str = "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiIsIng1dCI6Ik1uQ19WWmNBVGZNNXBPWWlKSE1iYTlnb0VLWSJ9.eyJhdWQiOiJodHRwczovL2FuYWx5c2lzLndpbmRvd3MubmV0L3Bvd2VyYmkvYXBpIiwidGlkIjoiNzJmOTg4YmYifQ.S2lnbmF0dXJlQnl0ZXNUaGF0QXJlTm90UmVhbGx5QVNpZ25hdHVyZTEyMzQ1Njc4OQ";

/// What the hostile server saw of a request.
struct Seen {
    path: String,
    headers: axum::http::HeaderMap,
    form: Vec<(String, String)>,
}

impl Seen {
    fn form(&self, key: &str) -> String {
        self.form
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    }
}

type Respond = dyn Fn(&Seen) -> (u16, String) + Send + Sync;

/// Serves `respond` on 127.0.0.1:0 until the runtime ends; returns its address.
async fn hostile(respond: Arc<Respond>) -> SocketAddr {
    let app = axum::Router::new().fallback(
        move |uri: axum::http::Uri, headers: axum::http::HeaderMap, body: axum::body::Bytes| {
            let seen = Seen {
                path: uri.path().to_owned(),
                headers,
                form: form_urlencoded::parse(&body).into_owned().collect(),
            };
            let (status, body) = respond(&seen);
            async move {
                (
                    axum::http::StatusCode::from_u16(status).unwrap(),
                    [(axum::http::header::CONTENT_TYPE, "application/json")],
                    body,
                )
            }
        },
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

/// A client-secret tenant whose token endpoint is `addr`.
fn tenant_at(addr: SocketAddr) -> TenantConfig {
    TenantConfig::entra(
        "hostile",
        "contoso.onmicrosoft.com",
        CLIENT_ID,
        SecretSource::Inline(SecretString::from(SECRET)),
        &format!("http://{addr}"),
        std::env::temp_dir().join("hostile-unused.json"),
    )
}

async fn fetch(tenant: &TenantConfig) -> RefreshError {
    init();
    let client = TokenClient::new(&DaemonConfig {
        request_timeout: Duration::from_secs(5),
        ..DaemonConfig::default()
    })
    .unwrap();
    Credential::new(&tenant.credential)
        .fetch(&client, None, tenant)
        .await
        .unwrap_err()
}

/// The forms a server could reflect a value in: as is, form-urlencoded as it was sent, and
/// percent-encoded.
fn reflections(value: &str) -> Vec<String> {
    let form: String = form_urlencoded::byte_serialize(value.as_bytes()).collect();
    let percent = form.replace('+', "%20").replace('~', "%7E");
    vec![value.to_owned(), form, percent]
}

/// Every text the error keeps is free of `forbidden` (and of every 12-character piece of each,
/// so a half-redacted value fails too), has no control or bidi character, and fits the cap.
fn assert_clean(err: &RefreshError, forbidden: &[&str]) {
    let fields = [
        ("message", Some(err.message.as_str())),
        ("oauth_error", err.oauth_error.as_deref()),
        ("trace_id", err.trace_id.as_deref()),
        ("correlation_id", err.correlation_id.as_deref()),
    ];
    for (name, text) in fields {
        let Some(text) = text else { continue };
        assert!(
            text.chars().count() <= MAX_TEXT_CHARS,
            "{name} is {} characters",
            text.chars().count()
        );
        assert!(
            !text.chars().any(|c| c.is_control()
                || ('\u{202a}'..='\u{202e}').contains(&c)
                || ('\u{2066}'..='\u{2069}').contains(&c)),
            "{name}: {text:?}"
        );
        for value in forbidden {
            let chars: Vec<char> = value.chars().collect();
            for piece in chars.windows(12.min(chars.len())) {
                let piece: String = piece.iter().collect();
                assert!(!text.contains(&piece), "{name} holds {piece:?}: {text:?}");
            }
        }
    }
}

#[tokio::test]
async fn hardening_4_a_200_with_an_opaque_non_json_body_is_not_quoted() {
    let token = "Q2hhbmdlVGhpcy5PcGFxdWVUb2tlbl9WYWx1ZS1QbGVhc2U.9x7Kp3vZ0aLm";
    assert_eq!(token.len(), 60);
    let addr = hostile(Arc::new(move |_: &Seen| (200, token.to_owned()))).await;
    let err = fetch(&tenant_at(addr)).await;
    assert_eq!(err.reason, Reason::BadResponse);
    assert_eq!(
        err.message,
        "token endpoint answered 200 with a body that is not JSON (60 bytes)"
    );
    assert_clean(&err, &[token, SECRET]);
}

#[tokio::test]
async fn hardening_4_b_a_200_with_a_jwt_but_no_expiry_is_not_quoted() {
    let addr = hostile(Arc::new(|_: &Seen| {
        (200, serde_json::json!({ "access_token": JWT }).to_string())
    }))
    .await;
    let err = fetch(&tenant_at(addr)).await;
    assert_eq!(err.reason, Reason::BadResponse);
    assert!(
        err.message
            .contains("has neither expires_in nor expires_on"),
        "{}",
        err.message
    );
    assert_clean(&err, &[JWT, SECRET]);
}

#[test]
fn hardening_4_parse_failures_of_a_200_say_what_was_wrong_and_quote_nothing() {
    let secret_looking = "hunter2-but-a-bit-longer";
    let cases: [(String, &str); 5] = [
        (format!("<html>{secret_looking}</html>"), "not JSON"),
        (
            format!(r#"{{"access_token":"{secret_looking}""#),
            "not JSON",
        ),
        (
            format!(r#"{{"access_token":"{secret_looking}","expires_in":"{secret_looking}"}}"#),
            "not a token response",
        ),
        (
            format!(r#"{{"access_token":{{"nested":"{secret_looking}"}}}}"#),
            "not a token response",
        ),
        (
            format!(r#"{{"token":"{secret_looking}","expires_in":3600}}"#),
            "no access_token",
        ),
    ];
    for (body, what) in cases {
        let err = parse_token_response(
            body.as_bytes(),
            std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_767_225_600),
        )
        .unwrap_err();
        assert!(err.message.contains(what), "{body}: {}", err.message);
        assert!(
            err.message.contains(&format!("({} bytes)", body.len())),
            "{}",
            err.message
        );
        assert!(!err.message.contains("hunter2"), "{}", err.message);
    }
}

/// An Entra-shaped error body whose description (and IDs) quote `reflected`.
fn entra_error(code: u32, error: &str, reflected: &str) -> String {
    serde_json::json!({
        "error": error,
        "error_description": format!(
            "AADSTS{code}: The request body must contain the following parameter: '{reflected}'.\r\nTrace ID: {reflected}\r\nCorrelation ID: c\r\nTimestamp: 2026-01-01 00:00:00Z"
        ),
        "error_codes": [code],
        "timestamp": "2026-01-01 00:00:00Z",
        "trace_id": reflected,
        "correlation_id": format!("\u{1b}[2J{reflected}"),
    })
    .to_string()
}

#[tokio::test]
async fn hardening_4_c_a_400_reflecting_the_client_secret_keeps_none_of_it() {
    let addr = hostile(Arc::new(|seen: &Seen| {
        // Reflect what the daemon actually sent, in every form.
        let secret = seen.form("client_secret");
        let reflected = reflections(&secret).join(" and ");
        (400, entra_error(900144, "invalid_request", &reflected))
    }))
    .await;
    let err = fetch(&tenant_at(addr)).await;
    assert_eq!(err.status, Some(400));
    assert_eq!(err.aadsts_code().as_deref(), Some("AADSTS900144"));
    assert_eq!(err.oauth_error.as_deref(), Some("invalid_request"));
    assert!(
        err.message
            .starts_with("AADSTS900144: The request body must contain the following parameter: '[REDACTED] and [REDACTED] and [REDACTED]'"),
        "{}",
        err.message
    );
    let forms = reflections(SECRET);
    let forbidden: Vec<&str> = forms.iter().map(String::as_str).collect();
    assert_clean(&err, &forbidden);
}

#[tokio::test]
async fn hardening_4_d_a_500_with_terminal_escapes_and_10_kb_is_cleaned_and_capped() {
    let addr = hostile(Arc::new(|_: &Seen| {
        let body = format!(
            "\u{1b}[2J\u{1b}]0;pwned\u{7}{}\u{202e}gnp.exe",
            "the server is having a bad day ".repeat(10 * 1024 / 31 + 1)
        );
        assert!(body.len() > 10 * 1024);
        (500, body)
    }))
    .await;
    let err = fetch(&tenant_at(addr)).await;
    assert_eq!(err.reason, Reason::ServerError);
    assert!(
        err.message.starts_with(
            "HTTP 500 with a non-OAuth body: [2J ]0;pwned the server is having a bad day"
        ),
        "{}",
        err.message
    );
    assert!(err.message.ends_with('…'), "{}", err.message);
    assert!(!err.message.contains(['\u{1b}', '\u{7}', '\u{202e}']));
    assert_clean(&err, &[SECRET]);
}

#[tokio::test]
async fn hardening_4_e_a_401_reflecting_the_client_assertion_keeps_none_of_it() {
    let dir = tempfile::tempdir().unwrap();
    // A JWT, and an assertion no token rule would recognise: only the request's secrets can.
    for assertion in [JWT, "short~assertion"] {
        let token_file = dir.path().join("federated-token");
        std::fs::write(&token_file, assertion).unwrap();
        let addr = hostile(Arc::new(|seen: &Seen| {
            let reflected = reflections(&seen.form("client_assertion")).join(" ");
            (401, entra_error(700027, "invalid_client", &reflected))
        }))
        .await;
        let mut tenant = tenant_at(addr);
        tenant.credential = CredentialConfig::WorkloadIdentity { token_file };
        let err = fetch(&tenant).await;
        assert_eq!(err.reason, Reason::InvalidClient, "{err:?}");
        assert!(err.message.starts_with("AADSTS700027: "), "{}", err.message);
        let forms = reflections(assertion);
        let forbidden: Vec<&str> = forms.iter().map(String::as_str).collect();
        assert_clean(&err, &forbidden);
    }
}

#[tokio::test]
async fn hardening_4_f_an_app_service_endpoint_reflecting_the_identity_header_keeps_none_of_it() {
    let identity_header = "app-service-identity-header-value";
    let addr = hostile(Arc::new(|seen: &Seen| {
        let header = seen
            .headers
            .get("x-identity-header")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        (
            400,
            serde_json::json!({
                "error": "invalid_request",
                "error_description": format!("unexpected X-IDENTITY-HEADER {header}"),
            })
            .to_string(),
        )
    }))
    .await;
    let mut tenant = tenant_at(addr);
    tenant.credential = CredentialConfig::ManagedIdentity(ManagedIdentityConfig {
        source: ManagedIdentitySource::AppService {
            endpoint: format!("http://{addr}/msi/token"),
            header: SecretSource::Inline(SecretString::from(identity_header)),
        },
        identity: ManagedIdentityId::System,
    });
    let err = fetch(&tenant).await;
    assert_eq!(
        err.message, "unexpected X-IDENTITY-HEADER [REDACTED]",
        "{err:?}"
    );
    assert_clean(&err, &[identity_header]);
}

/// `once` against a server that reflects the secret for one tenant and sends terminal escapes
/// for another: what the binary prints (the log lines and the summary) is clean.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hardening_4_once_prints_no_escape_and_no_secret() {
    let addr = hostile(Arc::new(|seen: &Seen| {
        if seen.path.starts_with("/reflect.example.com/") {
            let reflected = reflections(&seen.form("client_secret")).join(" ");
            (401, entra_error(7000215, "invalid_client", &reflected))
        } else if seen.path.starts_with("/target.example.com/") {
            // An RFC 8707 server's refusal: the code is the diagnosis.
            let body = serde_json::json!({
                "error": "invalid_target",
                "error_description": "only a single resource indicator value is supported for this grant type",
            });
            (400, body.to_string())
        } else if seen.path.starts_with("/code.example.com/") {
            // The secret it was sent as the error code, behind terminal escapes.
            let secret = seen.form("client_secret");
            let body = serde_json::json!({ "error": format!("\u{1b}]0;x\u{7}{secret}\u{202e}") });
            (400, body.to_string())
        } else {
            (
                503,
                format!(
                    "\u{1b}[2J\u{1b}]0;pwned\u{7}\r\nfake log line {}",
                    "x".repeat(10_000)
                ),
            )
        }
    }))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    let mut text = format!(
        "[defaults]\nauthority_host = \"http://{addr}\"\nclient_id = \"{CLIENT_ID}\"\nclient_secret = {{ env = \"HOSTILE_SECRET\" }}\nsinks = [ {{ type = \"file\", path = \"tokens/{{name}}.json\" }} ]\n"
    );
    for (name, tenant_id) in [
        ("reflect", "reflect.example.com"),
        ("garbage", "garbage.example.com"),
        ("target", "target.example.com"),
        ("code", "code.example.com"),
    ] {
        text.push_str(&format!(
            "\n[[tenant]]\nname = \"{name}\"\ntenant_id = \"{tenant_id}\"\n"
        ));
    }
    std::fs::write(&config, text).unwrap();
    let output = tokio::task::spawn_blocking(move || {
        Command::new(BIN)
            .args(["once", "--config"])
            .arg(&config)
            .env("HOSTILE_SECRET", SECRET)
            .env("RUST_LOG", "info")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("reflect: permanent invalid_client invalid_client AADSTS7000215: AADSTS7000215: The request body must contain the following parameter: '[REDACTED] [REDACTED] [REDACTED]'"),
        "{stderr}"
    );
    assert!(
        stderr.contains("garbage: transient server_error - -: HTTP 503 with a non-OAuth body: [2J ]0;pwned fake log line [REDACTED]"),
        "{stderr}"
    );
    // The server's code beside the reason, on the summary line and in the log line.
    assert!(
        stderr.contains("target: permanent invalid_request invalid_target -: only a single resource indicator value is supported for this grant type"),
        "{stderr}"
    );
    assert!(
        stderr.contains("tenant=\"target\" class=\"permanent\" reason=\"invalid_request\" error_code=\"invalid_target\""),
        "{stderr}"
    );
    // Only the characters RFC 6749 allows in a code, one field wide, and no secret.
    assert!(
        stderr.contains(
            "code: permanent invalid_request ?]0;x?[REDACTED]? -: HTTP 400 ?]0;x?[REDACTED]?"
        ),
        "{stderr}"
    );
    assert!(
        stderr.contains("error_code=\"?]0;x?[REDACTED]?\""),
        "{stderr}"
    );
    assert!(!output.stderr.contains(&0x1b), "{stderr:?}");
    assert!(!output.stderr.contains(&0x07), "{stderr:?}");
    for form in reflections(SECRET) {
        assert!(!stderr.contains(&form), "{form}: {stderr}");
    }
    assert!(!output.stdout.contains(&0x1b));
}
