//! Every hostile answer at once, against one real daemon process: edge-of-range numbers, a
//! `Retry-After` of `u64::MAX` seconds, a reflected secret, an opaque token and a JWT in 200
//! bodies that are not token responses, terminal escapes in a 500, and a 200 that drips one byte
//! every 200 ms. The healthy tenants beside them must not notice, every tenant must show the
//! state and reason its server earned, and nothing secret (nor an ESC byte) may reach
//! `/status`, `/metrics` or the debug log.

mod common;

use common::process::{Spawned, entry, get, wait_for_status};
use common::*;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use powerbi_tokend_sim::{Behavior, SimEntra};

/// 60 characters of base64url with a dot: an opaque token as some servers issue them.
const OPAQUE: &str = "Q2hhbmdlVGhpcy5PcGFxdWVUb2tlbl9WYWx1ZS1QbGVhc2U.9x7Kp3vZ0aLm";

/// A JWT as Entra issues them (header, payload, signature).
const JWT: &str = "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiIsIng1dCI6Ik1uQ19WWmNBVGZNNXBPWWlKSE1iYTlnb0VLWSJ9.eyJhdWQiOiJodHRwczovL2FuYWx5c2lzLndpbmRvd3MubmV0L3Bvd2VyYmkvYXBpIiwidGlkIjoiNzJmOTg4YmYifQ.S2lnbmF0dXJlQnl0ZXNUaGF0QXJlTm90UmVhbGx5QVNpZ25hdHVyZTEyMzQ1Njc4OQ";

/// The token in the body the drip server never finishes sending.
const DRIPPED: &str = "DrippedTokenThatMustNeverArriveWhole0123456789abcdef";

/// How long the drip server waits before each byte.
const DRIP_INTERVAL: Duration = Duration::from_millis(200);

/// The daemon's whole-request timeout in this test.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// The edge-of-range `expires_in` values: (tenant name, the JSON value, what the refusal says).
const NUMBERS: [(&str, &str, &str); 5] = [
    (
        "zero",
        "0",
        "a token that was refused: the token expired 0 s before it arrived",
    ),
    (
        "negative",
        "-1",
        "a token that was refused: the token expired 1 s before it arrived",
    ),
    (
        "huge",
        "1e12",
        "a token that was refused: the token claims to expire more than 366 days",
    ),
    ("nan", "\"NaN\"", "JSON that is not a token response"),
    (
        "overflow",
        "\"99999999999999999999\"",
        "a token that was refused: the token claims to expire more than 366 days",
    ),
];

/// The access token each number tenant is offered (and must refuse).
fn number_token(name: &str) -> String {
    format!("NumberTenantTokenNeverAccepted-{name}-0123456789")
}

/// Every encoding a server could echo the secret in.
fn encodings(secret: &str) -> Vec<String> {
    let form: String = form_urlencoded::byte_serialize(secret.as_bytes()).collect();
    // RFC 3986 percent-encoding (even of `~`, as some encoders do), with either hex case.
    let percent = |upper: bool| -> String {
        secret
            .bytes()
            .map(|b| match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'.' | b'_' => {
                    char::from(b).to_string()
                }
                _ if upper => format!("%{b:02X}"),
                _ => format!("%{b:02x}"),
            })
            .collect()
    };
    let hex: String = secret.bytes().map(|b| format!("{b:02x}")).collect();
    vec![
        secret.to_owned(),
        form,
        percent(true),
        percent(false),
        base64::engine::general_purpose::STANDARD.encode(secret),
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret),
        hex.to_uppercase(),
        hex,
    ]
}

/// One connection to the drip server: how far it got and whether the client hung up.
#[derive(Debug)]
struct Drip {
    started: Instant,
    bytes_sent: usize,
    /// When hyper dropped the body (the client went away, or the body ended).
    ended: Option<Instant>,
}

/// Marks a drip connection ended when hyper drops its body stream.
struct DripGuard {
    drips: Arc<Mutex<Vec<Drip>>>,
    index: usize,
}

impl Drop for DripGuard {
    fn drop(&mut self) {
        self.drips.lock().unwrap()[self.index].ended = Some(Instant::now());
    }
}

/// A token endpoint for two tenants the simulator cannot play: `reflect.example.com` quotes the
/// secret it was actually sent, in every encoding, in an Entra-shaped 400 (its OAuth `error`
/// code included); `drip.example.com`
/// answers 200 and then sends a valid token body one byte per [`DRIP_INTERVAL`].
async fn hostile_server(drips: Arc<Mutex<Vec<Drip>>>) -> SocketAddr {
    let drip_body = serde_json::json!({
        "token_type": "Bearer",
        "expires_in": 3599,
        "access_token": DRIPPED,
    })
    .to_string()
    .into_bytes();
    let app = axum::Router::new().fallback(
        move |uri: axum::http::Uri, body: axum::body::Bytes| {
            let drips = drips.clone();
            let drip_body = drip_body.clone();
            async move {
                let json = [(axum::http::header::CONTENT_TYPE, "application/json")];
                if uri.path().starts_with("/reflect.example.com/") {
                    let secret = form_urlencoded::parse(&body)
                        .find(|(key, _)| key == "client_secret")
                        .map(|(_, value)| value.into_owned())
                        .unwrap_or_default();
                    let echoed = encodings(&secret).join(" / ");
                    let reply = serde_json::json!({
                        "error": encodings(&secret).join("/"),
                        "error_description": format!(
                            "AADSTS900144: The request body must contain the following parameter: '{echoed}'.\r\nTrace ID: {echoed}\r\nCorrelation ID: {echoed}\r\nTimestamp: 2026-01-01 00:00:00Z"
                        ),
                        "error_codes": [900144],
                        "timestamp": "2026-01-01 00:00:00Z",
                        "trace_id": echoed,
                        "correlation_id": secret,
                    });
                    return (
                        axum::http::StatusCode::BAD_REQUEST,
                        json,
                        axum::body::Body::from(reply.to_string()),
                    );
                }
                let index = {
                    let mut drips = drips.lock().unwrap();
                    drips.push(Drip {
                        started: Instant::now(),
                        bytes_sent: 0,
                        ended: None,
                    });
                    drips.len() - 1
                };
                let guard = DripGuard { drips, index };
                let stream = futures_util::stream::unfold(
                    (0, guard, drip_body),
                    |(sent, guard, body)| async move {
                        if sent == body.len() {
                            return None;
                        }
                        tokio::time::sleep(DRIP_INTERVAL).await;
                        guard.drips.lock().unwrap()[guard.index].bytes_sent = sent + 1;
                        let byte = axum::body::Bytes::copy_from_slice(&body[sent..=sent]);
                        Some((Ok::<_, Infallible>(byte), (sent + 1, guard, body)))
                    },
                );
                (
                    axum::http::StatusCode::OK,
                    json,
                    axum::body::Body::from_stream(stream),
                )
            }
        },
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

/// A raw answer with a JSON content type.
fn raw(status: u16, body: &str) -> Behavior {
    Behavior::Raw {
        status,
        headers: vec![("Content-Type".to_owned(), "application/json".to_owned())],
        body: body.as_bytes().to_vec(),
    }
}

/// Teaches the simulator each hostile tenant's answer (persistent: every retry gets it again).
fn script_simulator(sim: &SimEntra) -> Vec<(&'static str, String)> {
    let mut tenants = Vec::new();
    for (name, value, _) in NUMBERS {
        let tenant_id = format!("{name}.example.com");
        sim.set_behavior(
            &tenant_id,
            raw(
                200,
                &format!(
                    r#"{{"access_token":"{}","token_type":"Bearer","expires_in":{value}}}"#,
                    number_token(name)
                ),
            ),
        );
        tenants.push((name, tenant_id));
    }
    sim.set_behavior(
        "retry.example.com",
        Behavior::Raw {
            status: 429,
            headers: vec![("Retry-After".to_owned(), u64::MAX.to_string())],
            body: b"Too Many Requests".to_vec(),
        },
    );
    sim.set_behavior("opaque.example.com", raw(200, OPAQUE));
    sim.set_behavior(
        "jwt.example.com",
        raw(200, &serde_json::json!({ "access_token": JWT }).to_string()),
    );
    sim.set_behavior(
        "escapes.example.com",
        Behavior::Raw {
            status: 500,
            headers: vec![("Content-Type".to_owned(), "text/plain".to_owned())],
            body: "\u{1b}[2J\u{1b}]0;pwned\u{7}\r\nfake log line\u{202e}gnp.exe \u{1b}[31mred"
                .as_bytes()
                .to_vec(),
        },
    );
    for name in [
        "retry",
        "opaque",
        "jwt",
        "escapes",
        "healthy-1",
        "healthy-2",
    ] {
        tenants.push((name, format!("{name}.example.com")));
    }
    tenants
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Every `len`-character piece of `value`: a half-redacted secret or token still leaks.
fn pieces(value: &str, len: usize) -> Vec<String> {
    let chars: Vec<char> = value.chars().collect();
    chars
        .windows(len.min(chars.len()))
        .map(|piece| piece.iter().collect())
        .collect()
}

/// `text` (named `what`) holds no secret, no token, no piece of either, and no terminal
/// escape, raw or JSON-escaped.
fn assert_clean(what: &str, text: &[u8], forbidden: &[String]) {
    for (byte, name) in [(0x1b, "ESC"), (0x07, "BEL")] {
        assert!(!text.contains(&byte), "{what} holds a raw {name} byte");
    }
    let text = String::from_utf8_lossy(text);
    let lower = text.to_lowercase();
    for escaped in ["\\u001b", "\\u0007", "\\u202e", "\\x1b", "\\e["] {
        assert!(!lower.contains(escaped), "{what} holds {escaped}");
    }
    assert!(!text.contains('\u{202e}'), "{what} holds a bidi override");
    for value in forbidden {
        assert!(!text.contains(value.as_str()), "{what} holds {value:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_hostile_answer_at_once_leaves_healthy_tenants_and_every_output_clean() {
    init();
    let sim = SimEntra::start().await.unwrap();
    let sim_tenants = script_simulator(&sim);
    for (_, tenant_id) in &sim_tenants {
        register(&sim, tenant_id, Duration::from_secs(3600));
    }
    let drips = Arc::new(Mutex::new(Vec::new()));
    let hostile = hostile_server(drips.clone()).await;

    let dir = tempfile::tempdir().unwrap();
    let mut text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n\n[daemon]\nconnect_timeout = \"1s\"\nrequest_timeout = \"{}s\"\nbackoff_min = \"100ms\"\nbackoff_max = \"200ms\"\nshutdown_grace = \"3s\"\n\n[defaults]\nauthority_host = \"{}\"\nclient_id = \"{CLIENT_ID}\"\nclient_secret = {{ env = \"HOSTILE_SECRET\" }}\njitter = 0.0\nsinks = [ {{ type = \"file\", path = \"tokens/{{name}}.json\" }} ]\n",
        REQUEST_TIMEOUT.as_secs(),
        sim.authority_host(),
    );
    for (name, tenant_id) in &sim_tenants {
        text.push_str(&format!(
            "\n[[tenant]]\nname = \"{name}\"\ntenant_id = \"{tenant_id}\"\n"
        ));
    }
    for name in ["reflect", "drip"] {
        text.push_str(&format!(
            "\n[[tenant]]\nname = \"{name}\"\ntenant_id = \"{name}.example.com\"\nauthority_host = \"http://{hostile}\"\n"
        ));
    }
    let config = dir.path().join("config.toml");
    std::fs::write(&config, text).unwrap();
    let names: Vec<&str> = sim_tenants
        .iter()
        .map(|(name, _)| *name)
        .chain(["reflect", "drip"])
        .collect();
    assert_eq!(names.len(), 13);

    let mut daemon = Spawned::run(
        &config,
        &dir.path().join("log.json"),
        "debug",
        &[("HOSTILE_SECRET", SECRET)],
    );
    let addr = daemon.admin_addr().await;
    let healthy_files =
        ["healthy-1", "healthy-2"].map(|n| dir.path().join(format!("tokens/{n}.json")));
    wait_for(
        "the healthy tenants' tokens",
        Duration::from_secs(5),
        || healthy_files.iter().all(|path| token_in(path).is_some()),
    )
    .await;
    let (code, body, took) = get(addr, "/healthz", Duration::from_secs(1)).await;
    assert_eq!(code, 200, "{body}");
    assert!(took < Duration::from_secs(1), "{took:?}");

    let reason = |s: &serde_json::Value, name: &str| entry(s, name)["last_error"]["reason"].clone();
    let status = wait_for_status(
        addr,
        "every tenant's expected outcome",
        Duration::from_secs(8),
        |s| {
            NUMBERS
                .iter()
                .all(|(name, ..)| reason(s, name) == "bad_response")
                && reason(s, "retry") == "throttled"
                && reason(s, "reflect") == "invalid_request"
                && reason(s, "opaque") == "bad_response"
                && reason(s, "jwt") == "bad_response"
                && reason(s, "escapes") == "server_error"
                && reason(s, "drip") == "timeout"
                && entry(s, "healthy-1")["state"] == "healthy"
                && entry(s, "healthy-2")["state"] == "healthy"
        },
    )
    .await;
    let listed: Vec<&str> = status["tenants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    let mut expected = names.clone();
    expected.sort_unstable();
    assert_eq!(listed, expected, "{status}");

    // What each tenant shows, beyond its reason.
    let message = |name: &str| {
        entry(&status, name)["last_error"]["message"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    for (name, _, refusal) in NUMBERS {
        assert_eq!(entry(&status, name)["state"], "retrying", "{status}");
        assert!(message(name).contains(refusal), "{name}: {}", message(name));
    }
    let retry = entry(&status, "retry");
    assert_eq!(retry["state"], "retrying", "{retry}");
    let next = chrono::DateTime::parse_from_rfc3339(retry["next_refresh_at"].as_str().unwrap())
        .unwrap()
        .timestamp();
    assert!(
        (3500..=3601).contains(&(next - unix_now())),
        "Retry-After u64::MAX is not capped at an hour: {retry}"
    );
    let reflect = entry(&status, "reflect");
    assert_eq!(reflect["state"], "misconfigured", "{reflect}");
    assert_eq!(reflect["last_error"]["aadsts"], "AADSTS900144", "{reflect}");
    assert!(message("reflect").contains("[REDACTED]"), "{reflect}");
    // The code is kept, but only as RFC 6749 allows one (and shorter): the secret in it is gone.
    let code = reflect["last_error"]["error_code"]
        .as_str()
        .unwrap_or_default();
    assert!(code.starts_with("[REDACTED]/[REDACTED]/"), "{reflect}");
    assert!(
        code.len() <= 64
            && code
                .bytes()
                .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\'),
        "{reflect}"
    );
    assert_eq!(
        message("opaque"),
        "token endpoint answered 200 with a body that is not JSON (60 bytes)"
    );
    assert!(
        message("jwt").contains("neither expires_in nor expires_on"),
        "{}",
        message("jwt")
    );
    assert!(
        message("escapes")
            .starts_with("HTTP 500 with a non-OAuth body: [2J ]0;pwned fake log line"),
        "{}",
        message("escapes")
    );
    for name in ["opaque", "jwt", "escapes", "drip"] {
        assert_eq!(entry(&status, name)["state"], "retrying", "{status}");
    }
    for name in &names {
        assert_eq!(entry(&status, name)["task_panics"], 0, "{status}");
        let has_token = dir.path().join(format!("tokens/{name}.json")).exists();
        assert_eq!(has_token, name.starts_with("healthy-"), "{name}");
    }

    // The daemon cut the drip at its request timeout: the first connection ended long before
    // the body was complete (it would take over 15 s), about two seconds after it began.
    {
        let drips = drips.lock().unwrap();
        let first = drips.first().expect("the drip tenant connected");
        let ended = first.ended.expect("the daemon hung up on the drip");
        let lasted = ended - first.started;
        assert!(
            lasted >= REQUEST_TIMEOUT - Duration::from_millis(300)
                && lasted <= REQUEST_TIMEOUT + Duration::from_millis(1500),
            "the drip connection lasted {lasted:?}"
        );
        assert!(
            first.bytes_sent > 0 && first.bytes_sent < 20,
            "{} bytes dripped",
            first.bytes_sent
        );
    }

    let (code, metrics, _) = get(addr, "/metrics", Duration::from_secs(5)).await;
    assert_eq!(code, 200);
    for name in &names {
        assert!(
            metrics.contains(&format!("tenant=\"{name}\"")),
            "{name} missing from /metrics"
        );
    }
    let (_, status_body, _) = get(addr, "/status", Duration::from_secs(5)).await;

    daemon.signal("TERM");
    let exit = daemon.wait_exit(Duration::from_secs(6)).await;
    assert_eq!(exit.code(), Some(0));
    let log = std::fs::read(&daemon.log).unwrap();
    let log_text = String::from_utf8_lossy(&log);
    assert!(
        log_text.lines().count() > 50,
        "debug logging produced too little: {log_text}"
    );
    for line in log_text.lines() {
        serde_json::from_str::<serde_json::Value>(line)
            .unwrap_or_else(|err| panic!("log line is not JSON ({err}): {line}"));
    }
    // The refresh failure's line (the one with the failure count), not a debug line about it.
    let failure = log_text
        .lines()
        .find(|line| line.contains("AADSTS900144") && line.contains("consecutive_failures"))
        .expect("the reflect failure is logged");
    let failure: serde_json::Value = serde_json::from_str(failure).unwrap();
    assert!(
        failure["error_code"]
            .as_str()
            .is_some_and(|code| code.starts_with("[REDACTED]/")),
        "{failure}"
    );

    let mut forbidden = encodings(SECRET);
    forbidden.extend(pieces(SECRET, 12));
    for token in [OPAQUE, JWT, DRIPPED] {
        forbidden.push(token.to_owned());
        forbidden.extend(pieces(token, 16));
    }
    for (name, ..) in NUMBERS {
        forbidden.push(number_token(name));
    }
    for path in &healthy_files {
        let token = token_in(path).unwrap();
        forbidden.extend(pieces(token.rsplit('.').next().unwrap(), 16));
        forbidden.push(token);
    }
    assert_clean("/status", status_body.as_bytes(), &forbidden);
    assert_clean("/metrics", metrics.as_bytes(), &forbidden);
    assert_clean("the log", &log, &forbidden);
}
