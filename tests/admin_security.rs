//! The admin server's `[server.tls]` and `[server.basic_auth]`, against a running in-process
//! daemon, with reqwest as the client: HTTPS with a certificate made for the test, the right and
//! wrong passwords, `/healthz` open or closed, plain HTTP to the TLS port, a certificate replaced
//! on disk, and `check` refusing files that do not load.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use powerbi_tokend::config::{BasicAuthConfig, Config, ServerTls};
use reqwest::StatusCode;

const USER: &str = "prometheus";
const PASSWORD: &str = "correct horse battery staple";
const REALM: &str = "Basic realm=\"powerbi-tokend\"";
const ROUTES: [&str; 5] = ["/", "/metrics", "/status", "/readyz", "/healthz"];

/// A CA and a `127.0.0.1` certificate it signed, the pair written as `<stem>.crt`/`<stem>.key`.
struct Pki {
    ca_pem: String,
    cert_pem: String,
    key_pem: String,
}

impl Pki {
    fn new() -> Pki {
        let made = pki::loopback_pki().unwrap();
        Pki {
            ca_pem: made.ca_pem,
            cert_pem: made.cert_pem,
            key_pem: made.key_pem,
        }
    }

    /// Writes the pair over `tls`'s files, each replaced atomically (a rename), as
    /// cert-manager or an operator's `mv` does.
    fn install(&self, tls: &ServerTls) {
        replace(&tls.cert_file, &self.cert_pem);
        replace(&tls.key_file, &self.key_pem);
    }

    /// A client that trusts this CA only, opening a new connection for every request.
    fn client(&self) -> reqwest::Client {
        reqwest::Client::builder()
            .no_proxy()
            .tls_certs_only([reqwest::Certificate::from_pem(self.ca_pem.as_bytes()).unwrap()])
            .pool_max_idle_per_host(0)
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap()
    }
}

fn replace(path: &Path, text: &str) {
    let temp = path.with_extension("new");
    std::fs::write(&temp, text).unwrap();
    std::fs::rename(&temp, path).unwrap();
}

fn tls_files(dir: &Path) -> ServerTls {
    ServerTls {
        cert_file: dir.join("admin.crt"),
        key_file: dir.join("admin.key"),
        lines: [None, None],
    }
}

fn users(healthz_open: bool) -> BasicAuthConfig {
    BasicAuthConfig {
        users: [(USER.to_owned(), bcrypt::hash(PASSWORD, 4).unwrap())].into(),
        healthz_open,
    }
}

/// Two tenants against the simulator, one failing with AADSTS7000215.
async fn two_tenants() -> (Fixture, Config) {
    let fixture = fixture(
        &["good.example.com", "bad.example.com"],
        Duration::from_secs(3600),
    )
    .await;
    reject_secret(&fixture.sim, "bad.example.com");
    let dir = fixture.dir.path();
    let tenants = vec![
        tenant(&fixture.sim, "good", "good.example.com", dir),
        tenant(&fixture.sim, "bad", "bad.example.com", dir),
    ];
    let config = config(tenants, fast_daemon());
    (fixture, config)
}

/// GET with optional basic credentials: (status, `WWW-Authenticate`, body).
async fn get(
    client: &reqwest::Client,
    url: &str,
    credentials: Option<(&str, &str)>,
) -> reqwest::Result<(StatusCode, Option<String>, String)> {
    let mut request = client.get(url);
    if let Some((user, password)) = credentials {
        request = request.basic_auth(user, Some(password));
    }
    let response = request.send().await?;
    let status = response.status();
    let challenge = response
        .headers()
        .get(reqwest::header::WWW_AUTHENTICATE)
        .map(|value| value.to_str().unwrap().to_owned());
    Ok((status, challenge, response.text().await?))
}

/// GET with a raw `Authorization` header value.
async fn get_with_authorization(client: &reqwest::Client, url: &str, value: &[u8]) -> StatusCode {
    client
        .get(url)
        .header(
            reqwest::header::AUTHORIZATION,
            reqwest::header::HeaderValue::from_bytes(value).unwrap(),
        )
        .send()
        .await
        .unwrap()
        .status()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_and_basic_auth_guard_every_route() {
    let (fixture, mut config) = two_tenants().await;
    let pki = Pki::new();
    let tls = tls_files(fixture.dir.path());
    pki.install(&tls);
    config.server.tls = Some(tls);
    config.server.basic_auth = Some(users(false));
    let daemon = start_daemon(config).await;
    let client = pki.client();
    let base = format!("https://{}", daemon.addr);
    let right = Some((USER, PASSWORD));

    // The right password opens every route, over HTTPS.
    for route in ROUTES {
        let (status, _, _) = get(&client, &format!("{base}{route}"), right)
            .await
            .unwrap();
        assert_eq!(status, StatusCode::OK, "{route}");
    }
    // The failing tenant's error is on the page once its first attempt is over.
    let deadline = Instant::now() + Duration::from_secs(5);
    let page = loop {
        let (_, _, page) = get(&client, &format!("{base}/"), right).await.unwrap();
        if page.contains("AADSTS7000215") || Instant::now() > deadline {
            break page;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(page.contains("AADSTS7000215"), "{page}");

    // No credentials, a wrong password, an unknown user: the same 401, the same body.
    let mut bodies = Vec::new();
    for credentials in [None, Some((USER, "wrong")), Some(("nobody", PASSWORD))] {
        for route in ROUTES {
            let (status, challenge, body) = get(&client, &format!("{base}{route}"), credentials)
                .await
                .unwrap();
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{route} {credentials:?}");
            assert_eq!(challenge.as_deref(), Some(REALM));
            assert!(!body.contains("tenant"), "{body}");
            bodies.push(body);
        }
    }
    assert!(
        bodies.windows(2).all(|pair| pair[0] == pair[1]),
        "{bodies:?}"
    );

    // Hostile Authorization headers are refused, and the server goes on serving.
    let url = format!("{base}/status");
    let long = format!("Basic {}", "QUFB".repeat(4096));
    for hostile in [
        &b"Basic"[..],
        b"Basic %%%%",
        b"Bearer abc",
        b"Basic \xff\xfe\xfd",
        long.as_bytes(),
    ] {
        let status = get_with_authorization(&client, &url, hostile).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    // Headers beyond hyper's buffer are refused before any handler runs.
    let huge = format!("Basic {}", "QUFB".repeat(150_000));
    let refused = client
        .get(&url)
        .header(reqwest::header::AUTHORIZATION, huge)
        .send()
        .await;
    if let Ok(response) = refused {
        assert_eq!(
            response.status(),
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
        );
    }
    let (status, _, _) = get(&client, &url, right).await.unwrap();
    assert_eq!(status, StatusCode::OK);

    // Failures are counted by reason, never by user.
    let (_, _, metrics) = get(&client, &format!("{base}/metrics"), right)
        .await
        .unwrap();
    let count = |reason: &str| {
        let prefix = format!("powerbi_tokend_admin_auth_failures_total{{reason=\"{reason}\"}} ");
        metrics
            .lines()
            .find_map(|line| line.strip_prefix(&prefix))
            .and_then(|value| value.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("{prefix} missing:\n{metrics}"))
    };
    assert_eq!(count("missing"), 5);
    assert_eq!(count("wrong"), 10);
    assert_eq!(count("malformed"), 5);
    assert!(!metrics.contains("nobody"), "no user names in metrics");

    // Never a secret, a token or a password on any route.
    let token = token_in(&fixture.dir.path().join("good.json")).unwrap();
    for route in ROUTES {
        let (_, _, body) = get(&client, &format!("{base}{route}"), right)
            .await
            .unwrap();
        for secret in [SECRET, token.as_str(), PASSWORD] {
            assert!(!body.contains(secret), "a secret in {route}");
        }
    }
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_to_the_tls_port_is_told_to_use_https() {
    let (fixture, mut config) = two_tenants().await;
    let pki = Pki::new();
    let tls = tls_files(fixture.dir.path());
    pki.install(&tls);
    config.server.tls = Some(tls);
    let daemon = start_daemon(config).await;

    // reqwest over http:// reads the 400 that Go's servers send in this case.
    let plain = reqwest::Client::builder().no_proxy().build().unwrap();
    let response = plain
        .get(format!("http://{}/healthz", daemon.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let body = response.text().await.unwrap();
    assert!(body.contains("HTTP request to an HTTPS server"), "{body}");
    // An HTTPS client that does not trust the certificate fails its handshake.
    let stranger = Pki::new().client();
    let refused = stranger
        .get(format!("https://{}/healthz", daemon.addr))
        .send()
        .await;
    assert!(refused.is_err(), "{refused:?}");
    // The server goes on serving HTTPS.
    let (status, _, body) = get(
        &pki.client(),
        &format!("https://{}/healthz", daemon.addr),
        None,
    )
    .await
    .unwrap();
    assert_eq!((status, body.as_str()), (StatusCode::OK, "ok\n"));
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_is_open_only_when_configured() {
    for open in [true, false] {
        let (_fixture, mut config) = two_tenants().await;
        config.server.basic_auth = Some(users(open));
        let daemon = start_daemon(config).await;
        let client = reqwest::Client::builder().no_proxy().build().unwrap();
        let base = format!("http://{}", daemon.addr);
        let (status, _, _) = get(&client, &format!("{base}/healthz"), None)
            .await
            .unwrap();
        let expected = if open {
            StatusCode::OK
        } else {
            StatusCode::UNAUTHORIZED
        };
        assert_eq!(status, expected, "healthz_open = {open}");
        // Only /healthz: the rest still asks.
        for route in ["/", "/readyz", "/status", "/metrics", "/healthz/"] {
            let (status, _, _) = get(&client, &format!("{base}{route}"), None).await.unwrap();
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{route}, open = {open}");
        }
        let (status, _, _) = get(&client, &format!("{base}/healthz"), Some((USER, PASSWORD)))
            .await
            .unwrap();
        assert_eq!(status, StatusCode::OK);
        daemon.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_certificate_is_served_to_new_connections() {
    let (fixture, mut config) = two_tenants().await;
    let (first, second) = (Pki::new(), Pki::new());
    let tls = tls_files(fixture.dir.path());
    first.install(&tls);
    config.server.tls = Some(tls.clone());
    let daemon = start_daemon(config).await;
    let url = format!("https://{}/healthz", daemon.addr);
    let (old_client, new_client) = (first.client(), second.client());
    assert!(get(&old_client, &url, None).await.is_ok());
    assert!(get(&new_client, &url, None).await.is_err());

    second.install(&tls);
    let deadline = Instant::now() + Duration::from_secs(5);
    while get(&new_client, &url, None).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "the new certificate was never served"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        get(&old_client, &url, None).await.is_err(),
        "the old one is gone"
    );

    // A certificate file that does not parse is not taken: the pair in place stays, through
    // more than one look at the files.
    replace(&tls.cert_file, "-----BEGIN CERTIFICATE-----\nnot base64\n");
    let until = Instant::now() + powerbi_tokend::http::tls::RECHECK_EVERY * 2;
    while Instant::now() < until {
        assert!(get(&new_client, &url, None).await.is_ok());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    daemon.stop().await;
}

/// A config file with `[server]` lines and one tenant whose secret is in a file.
fn config_file(dir: &Path, server: &str) -> PathBuf {
    std::fs::write(dir.join("secret"), SECRET).unwrap();
    let path = dir.join("config.toml");
    std::fs::write(
        &path,
        format!(
            "[server]\n{server}\n[[tenant]]\nname = \"contoso\"\ntenant_id = \"contoso.example.com\"\nclient_id = \"{CLIENT_ID}\"\nclient_secret = {{ file = \"secret\" }}\nsinks = [ {{ type = \"file\", path = \"tokens/contoso.json\" }} ]\n"
        ),
    )
    .unwrap();
    path
}

#[tokio::test]
async fn check_loads_the_admin_certificate_and_names_the_bad_file() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new();
    std::fs::write(dir.path().join("admin.crt"), &pki.cert_pem).unwrap();
    std::fs::write(dir.path().join("admin.key"), &pki.key_pem).unwrap();
    std::fs::write(dir.path().join("other.key"), Pki::new().key_pem).unwrap();
    std::fs::write(dir.path().join("garbage.crt"), "not a certificate").unwrap();
    // A key whose line breaks became spaces (pasted from a variable): the parser's own error
    // would print its bytes.
    let flat_key = pki.key_pem.split_whitespace().collect::<Vec<_>>().join(" ");
    std::fs::write(dir.path().join("flat.key"), &flat_key).unwrap();
    let key_body: Vec<&str> = pki
        .key_pem
        .lines()
        .filter(|line| !line.starts_with("-----") && line.len() > 8)
        .collect();
    let hash = bcrypt::hash(PASSWORD, 4).unwrap();
    let auth = format!("[server.basic_auth]\nusers = {{ {USER} = \"{hash}\" }}\n");

    let good = format!(
        "listen = \"0.0.0.0:9464\"\n[server.tls]\ncert_file = \"admin.crt\"\nkey_file = \"admin.key\"\n{auth}"
    );
    let checked = powerbi_tokend::check(&config_file(dir.path(), &good), false)
        .await
        .unwrap();
    assert!(checked.config.server.tls.is_some());
    assert!(
        !checked.warnings.iter().any(|w| w.contains("clear text")),
        "{:?}",
        checked.warnings
    );

    for (tls, expected) in [
        (
            "cert_file = \"garbage.crt\"\nkey_file = \"admin.key\"",
            ":4: server.tls.cert_file: ",
        ),
        (
            "cert_file = \"admin.crt\"\nkey_file = \"missing.key\"",
            ":5: server.tls.key_file: cannot read",
        ),
        (
            "cert_file = \"admin.crt\"\nkey_file = \"other.key\"",
            ":5: server.tls.key_file: ",
        ),
        (
            "cert_file = \"admin.crt\"\nkey_file = \"flat.key\"",
            ":5: server.tls.key_file: ",
        ),
    ] {
        let path = config_file(
            dir.path(),
            &format!("listen = \"127.0.0.1:9464\"\n[server.tls]\n{tls}\n"),
        );
        let err = powerbi_tokend::check(&path, false).await.unwrap_err();
        let shown = err.to_string();
        assert!(shown.contains(expected), "{expected} in:\n{shown}");
        assert!(!shown.contains("PRIVATE KEY"), "{shown}");
        for line in &key_body {
            assert!(!shown.contains(&line[..8]), "key content in:\n{shown}");
        }
        // Nor as the bytes' decimal values.
        let bytes: Vec<String> = key_body[0].bytes().take(8).map(|b| b.to_string()).collect();
        assert!(!shown.contains(&bytes.join(", ")), "key bytes in:\n{shown}");
    }

    // Basic auth in clear text on a network address is a warning.
    let clear = format!("listen = \"0.0.0.0:9464\"\n{auth}");
    let checked = powerbi_tokend::check(&config_file(dir.path(), &clear), false)
        .await
        .unwrap();
    assert!(
        checked.warnings.iter().any(|w| w.contains("clear text")),
        "{:?}",
        checked.warnings
    );
}

#[test]
fn the_documented_hash_is_the_documented_password() {
    // The monitoring chapter and config.toml show this hash of "the password" (the htpasswd
    // command there).
    const HASH: &str = "$2b$10$Jd8I.ZesW6x/yyvkD0XYG.JXnboa6ao4pFnV/frdSBqnZjZcGxlb6";
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for file in ["docs/monitoring.md", "config.toml"] {
        let text = std::fs::read_to_string(root.join(file)).unwrap();
        assert!(
            text.contains(&format!("users = {{ prometheus = \"{HASH}\" }}")),
            "{file}"
        );
    }
    let chapter = std::fs::read_to_string(root.join("docs/monitoring.md")).unwrap();
    assert!(chapter.contains("htpasswd -nbBC 10 \"\" 'the password'"));
    assert!(bcrypt::verify("the password", HASH).unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_replaces_the_users() {
    let fixture = fixture(&["contoso.example.com"], Duration::from_secs(3600)).await;
    let dir = fixture.dir.path();
    std::fs::write(dir.join("secret"), SECRET).unwrap();
    let path = dir.join("config.toml");
    let write = |password: &str| {
        let hash = bcrypt::hash(password, 4).unwrap();
        let text = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[server.basic_auth]\nusers = {{ {USER} = \"{hash}\" }}\n\n[[tenant]]\nname = \"contoso\"\ntenant_id = \"contoso.example.com\"\nauthority_host = \"{}\"\nclient_id = \"{CLIENT_ID}\"\nclient_secret = {{ file = \"secret\" }}\nsinks = [ {{ type = \"file\", path = \"tokens/contoso.json\" }} ]\n",
            fixture.sim.authority_host()
        );
        replace(&path, &text);
    };
    write("first password");
    let daemon = start_daemon(powerbi_tokend::config::load(&path).await.unwrap()).await;
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let url = format!("http://{}/status", daemon.addr);
    let status = async |password: &str| get(&client, &url, Some((USER, password))).await.unwrap().0;
    assert_eq!(status("first password").await, StatusCode::OK);
    assert_eq!(status("second password").await, StatusCode::UNAUTHORIZED);

    write("second password");
    daemon
        .control
        .send(powerbi_tokend::Control::Reload)
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while status("second password").await != StatusCode::OK {
        assert!(
            Instant::now() < deadline,
            "the reload never took the new user"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The old password is refused at once, though it was verified (and remembered) before.
    assert_eq!(status("first password").await, StatusCode::UNAUTHORIZED);
    daemon.stop().await;
}

#[tokio::test]
async fn the_daemon_does_not_start_without_a_usable_certificate() {
    let (fixture, mut config) = two_tenants().await;
    let tls = tls_files(fixture.dir.path());
    std::fs::write(&tls.cert_file, Pki::new().cert_pem).unwrap();
    config.server.tls = Some(tls);
    let Err(err) = powerbi_tokend::Daemon::start(config).await else {
        panic!("started without admin.key");
    };
    let shown = err.to_string();
    assert!(
        shown.starts_with("[server.tls] key_file: cannot read"),
        "{shown}"
    );
    assert!(shown.contains("admin.key"), "{shown}");
}
