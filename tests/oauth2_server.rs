//! The generic OAuth2 provider (`provider = "oauth2"`) against a third-party OAuth2 server: the npm
//! package `oauth2-mock-server`, started by `tests/oauth2-mock-server/server.mjs`, which rejects a
//! wrong client id or secret with 401 `invalid_client` and records in each issued JWT how the client
//! authenticated (`client_auth`), its `client_id`, the `scope` and `audience` it asked for and the
//! names of the form fields it sent (`form_fields`).
//!
//! These need `node` (20.19+) and `npm`: where either is missing, `cargo test` reports them as
//! ignored, "skipped: needs node 20.19+ and npm" (see build.rs); with `CI=true` they run, and a
//! missing program fails them. The package is installed with `npm ci` on first use.

mod common;

use base64::Engine as _;
use serde_json::Value;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_powerbi-tokend");
const SERVER_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/oauth2-mock-server");

/// Needs RFC 6749 §2.3.1 form-urlencoding in Basic credentials: `:` in the id, and space, `+`,
/// `%`, `:`, `&`, `=` and a non-ASCII letter in the secret.
const CLIENT_ID: &str = "partner:client-1";
const SECRET: &str = "p@ss w0rd+/:%&=é~never-logged";

/// The RFC 8707 resource indicators the server knows (`RESOURCE_INDICATORS`); it refuses others
/// with `invalid_target`, as oidc-provider does.
const KNOWN_RESOURCES: &str = "https://api.partner.example https://api.partner.example/reports";

/// `node`, with the package installed: `npm ci` in tests/oauth2-mock-server the first time (the
/// tests of this binary share one install).
fn node() -> PathBuf {
    static INSTALLED: std::sync::Mutex<bool> = std::sync::Mutex::new(false);
    let node = common::program_installed_by("node", "Node.js 20.19+");
    let package = Path::new(SERVER_DIR).join("node_modules/oauth2-mock-server/package.json");
    let mut installed = INSTALLED
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if !*installed && !package.is_file() {
        let out = std::process::Command::new(common::program_installed_by("npm", "npm"))
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(SERVER_DIR)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "npm ci in tests/oauth2-mock-server failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    *installed = true;
    assert!(
        package.is_file(),
        "npm ci did not install {}",
        package.display()
    );
    node
}

/// Polls `condition` every 10 ms until it holds; panics with `what` and `context()` after
/// `timeout`.
fn wait_until(
    what: &str,
    timeout: Duration,
    context: impl Fn() -> String,
    mut condition: impl FnMut() -> bool,
) {
    let start = Instant::now();
    while !condition() {
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}\n{}",
            context()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A running `server.mjs`, killed on drop. Its stderr (one line per token request) is kept in a
/// file for failure messages.
struct MockServer {
    child: Child,
    _stdin: ChildStdin,
    token_url: String,
    log: PathBuf,
}

impl MockServer {
    fn start(node: &Path, dir: &Path, lifetime: u64) -> MockServer {
        let log = dir.join("oauth2-mock-server.log");
        let mut child = Command::new(node)
            .arg("server.mjs")
            .current_dir(SERVER_DIR)
            .env("EXPECTED_CLIENT_ID", CLIENT_ID)
            .env("EXPECTED_CLIENT_SECRET", SECRET)
            .env("TOKEN_LIFETIME", lifetime.to_string())
            .env("RESOURCE_INDICATORS", KNOWN_RESOURCES)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(File::create(&log).unwrap())
            .spawn()
            .expect("spawning node server.mjs");
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (sender, receiver) = mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let _ = sender.send(lines.next());
            for _ in lines {} // keep the pipe drained until node exits
        });
        let mut server = MockServer {
            child,
            _stdin: stdin,
            token_url: String::new(),
            log,
        };
        let line = match receiver.recv_timeout(Duration::from_secs(10)) {
            Ok(Some(Ok(line))) => line,
            other => panic!(
                "server.mjs did not print its URL ({other:?}):\n{}",
                server.log()
            ),
        };
        let announced: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("server.mjs printed {line:?}: {e}"));
        server.token_url = announced["token_url"].as_str().unwrap().to_owned();
        assert!(server.token_url.starts_with("http://127.0.0.1:"), "{line}");
        server
    }

    fn log(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        format!("--- oauth2-mock-server log:\n{log}")
    }
}

impl Drop for MockServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The daemon, killed on drop if a test fails before it exits.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Runs the binary with stdout and stderr in files under `dir`.
fn spawn(dir: &Path, args: &[&str], config: &Path, envs: &[(&str, &str)]) -> Daemon {
    let mut command = Command::new(BIN);
    command
        .args(args)
        .arg("--config")
        .arg(config)
        .stdin(Stdio::null())
        .stdout(File::create(dir.join("daemon.stdout")).unwrap())
        .stderr(File::create(dir.join("daemon.stderr")).unwrap());
    for (key, value) in envs {
        command.env(key, value);
    }
    Daemon(command.spawn().unwrap())
}

fn wait_exit(daemon: &mut Daemon, timeout: Duration, context: impl Fn() -> String) -> ExitStatus {
    let mut status = None;
    wait_until("powerbi-tokend to exit", timeout, context, || {
        status = daemon.0.try_wait().unwrap();
        status.is_some()
    });
    status.unwrap()
}

fn daemon_output(dir: &Path) -> (String, String) {
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap_or_default();
    (read("daemon.stdout"), read("daemon.stderr"))
}

struct Tenant<'a> {
    name: &'a str,
    auth: Option<&'a str>,
    secret_env: &'a str,
    scope: Option<&'a str>,
    audience: Option<&'a str>,
    /// The RFC 8707 resource indicator.
    resource: Option<&'a str>,
}

fn config_file(dir: &Path, token_url: &str, tenants: &[Tenant], extra: &str) -> PathBuf {
    let mut text = String::from("[server]\nlisten = \"127.0.0.1:0\"\n");
    for tenant in tenants {
        text.push_str(&format!(
            "\n[[tenant]]\nname = \"{}\"\nprovider = \"oauth2\"\ntoken_url = \"{token_url}\"\n\
             client_id = \"{CLIENT_ID}\"\nclient_secret = {{ env = \"{}\" }}\n\
             sinks = [ {{ type = \"file\", path = \"tokens/{{name}}.json\" }} ]\n{extra}",
            tenant.name, tenant.secret_env
        ));
        if let Some(auth) = tenant.auth {
            text.push_str(&format!("auth = \"{auth}\"\n"));
        }
        if let Some(scope) = tenant.scope {
            text.push_str(&format!("scope = \"{scope}\"\n"));
        }
        if let Some(audience) = tenant.audience {
            text.push_str(&format!("audience = \"{audience}\"\n"));
        }
        if let Some(resource) = tenant.resource {
            text.push_str(&format!("resource = \"{resource}\"\n"));
        }
    }
    let path = dir.join("config.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// The json token file, parsed, if it exists (and is complete).
fn read_json(path: &Path) -> Option<Value> {
    serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()
}

/// The claims of a JWT, decoded without verifying it.
fn claims(jwt: &str) -> Value {
    let payload = jwt.split('.').nth(1).expect("a JWT");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .expect("base64url JWT payload");
    serde_json::from_slice(&bytes).expect("JSON JWT payload")
}

/// The token file of `tenant`, checked against the tenant's configuration and `lifetime`; returns
/// the claims the server recorded in the token.
fn check_token_file(dir: &Path, tenant: &Tenant, lifetime: i64, context: &str) -> Value {
    let path = dir.join(format!("tokens/{}.json", tenant.name));
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}\n{context}", path.display()));
    assert!(
        !text.contains(SECRET),
        "the secret is in {}",
        path.display()
    );
    let file: Value = serde_json::from_str(&text).unwrap();
    let name = tenant.name;
    assert_eq!(file["tenant"], name, "{file}");
    assert_eq!(file["client_id"], CLIENT_ID, "{file}");
    assert_eq!(file["token_type"], "Bearer", "{file}");
    assert!(file["expires_at"].is_string(), "{file}");
    // The file says what was asked, nothing else.
    assert_eq!(
        file["resource"],
        json_or_null(tenant.resource),
        "{name}: {file}"
    );
    assert_eq!(file["scope"], json_or_null(tenant.scope), "{name}: {file}");
    assert_eq!(
        file["audience"],
        json_or_null(tenant.audience),
        "{name}: {file}"
    );
    let issued_on = file["issued_on"].as_i64().unwrap();
    let expires_on = file["expires_on"].as_i64().unwrap();
    assert!(
        (expires_on - issued_on - lifetime).abs() <= 1,
        "{name}: expires_on - issued_on = {}, expected {lifetime}",
        expires_on - issued_on
    );
    let claims = claims(file["access_token"].as_str().unwrap());
    let expected_auth = match tenant.auth {
        Some("client_secret_basic") => "basic",
        Some("client_secret_post") | None => "post",
        Some(other) => panic!("auth {other}"),
    };
    assert_eq!(claims["client_auth"], expected_auth, "{name}: {claims}");
    assert_eq!(claims["client_id"], CLIENT_ID, "{name}: {claims}");
    assert_eq!(
        claims["grant_type"], "client_credentials",
        "{name}: {claims}"
    );
    assert_eq!(
        claims["scope"],
        json_or_null(tenant.scope),
        "{name}: {claims}"
    );
    assert_eq!(
        claims["audience"],
        json_or_null(tenant.audience),
        "{name}: {claims}"
    );
    assert_eq!(
        claims["resource"],
        serde_json::json!(Vec::from_iter(tenant.resource)),
        "{name}: {claims}"
    );
    // The server issues the token for the resource when one was indicated (RFC 8707 §2.2).
    let aud = json_or_null(tenant.resource.or(tenant.audience));
    assert_eq!(claims["aud"], aud, "{name}: {claims}");
    assert_eq!(
        claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
        lifetime,
        "{name}: {claims}"
    );
    // Exactly the fields RFC 6749 §4.4.2 asks for: the credentials in the form only with
    // client_secret_post, `scope` and `audience` only when configured.
    let mut fields = vec!["grant_type"];
    if expected_auth == "post" {
        fields.extend(["client_id", "client_secret"]);
    }
    if tenant.scope.is_some() {
        fields.push("scope");
    }
    if tenant.audience.is_some() {
        fields.push("audience");
    }
    if tenant.resource.is_some() {
        fields.push("resource");
    }
    fields.sort_unstable();
    assert_eq!(
        claims["form_fields"],
        serde_json::json!(fields),
        "{name}: {claims}"
    );
    claims
}

fn json_or_null(value: Option<&str>) -> Value {
    value.map_or(Value::Null, |v| Value::String(v.to_owned()))
}

#[test]
#[cfg_attr(
    not(all(has_node, has_npm)),
    ignore = "skipped: needs node 20.19+ and npm"
)]
fn once_authenticates_with_post_and_basic_and_sends_scope_audience_and_resource() {
    let node = node();
    let dir = tempfile::tempdir().unwrap();
    let server = MockServer::start(&node, dir.path(), 1234);
    let tenants = [
        Tenant {
            name: "partner-post",
            auth: Some("client_secret_post"),
            secret_env: "PARTNER_SECRET",
            scope: Some("reports.read reports.write"),
            audience: Some("https://api.partner.example"),
            resource: None,
        },
        Tenant {
            name: "partner-basic",
            auth: Some("client_secret_basic"),
            secret_env: "PARTNER_SECRET",
            scope: Some("datasets.read"),
            audience: Some("https://datasets.partner.example"),
            resource: None,
        },
        // The defaults: client_secret_post, no audience.
        Tenant {
            name: "partner-defaults",
            auth: None,
            secret_env: "PARTNER_SECRET",
            scope: Some("reports.read"),
            audience: None,
            resource: None,
        },
        // An RFC 8707 resource indicator instead of a vendor's `audience`, with and without a
        // scope.
        Tenant {
            name: "partner-resource",
            auth: Some("client_secret_basic"),
            secret_env: "PARTNER_SECRET",
            scope: Some("reports.read"),
            audience: None,
            resource: Some("https://api.partner.example"),
        },
        Tenant {
            name: "partner-resource-only",
            auth: None,
            secret_env: "PARTNER_SECRET",
            scope: None,
            audience: None,
            resource: Some("https://api.partner.example/reports"),
        },
    ];
    let config = config_file(dir.path(), &server.token_url, &tenants, "");
    let mut daemon = spawn(
        dir.path(),
        &["once"],
        &config,
        &[("PARTNER_SECRET", SECRET)],
    );
    let context = || {
        let (stdout, stderr) = daemon_output(dir.path());
        format!(
            "--- stdout:\n{stdout}\n--- stderr:\n{stderr}\n{}",
            server.log()
        )
    };
    let status = wait_exit(&mut daemon, Duration::from_secs(10), context);
    assert_eq!(status.code(), Some(0), "{}", context());
    for tenant in &tenants {
        check_token_file(dir.path(), tenant, 1234, &context());
    }
    let (stdout, stderr) = daemon_output(dir.path());
    assert!(!stdout.contains(SECRET) && !stderr.contains(SECRET));
}

/// Conforming servers refuse several resource indicators in a client-credentials request (the
/// mock server does, as oidc-provider), so a list could never get a token: it is a config error
/// at its line, before any request. No server is needed to show that.
#[test]
fn a_list_of_resources_is_a_config_error_naming_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        "[[tenant]]\nname = \"partner\"\nprovider = \"oauth2\"\n\
         token_url = \"https://auth.partner.invalid/token\"\nclient_id = \"partner-client\"\n\
         client_secret = { env = \"PARTNER_SECRET\" }\n\
         sinks = [ { type = \"file\", path = \"tokens/{name}.json\" } ]\n\
         resource = [\"https://api.partner.example/reports\", \"urn:partner:exports\"]\n",
    )
    .unwrap();
    for command in ["check", "once"] {
        let output = Command::new(BIN)
            .args([command, "--config"])
            .arg(&config)
            .env("PARTNER_SECRET", SECRET)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{command}: {stderr}");
        let expected = format!(
            "{}:8: tenant \"partner\": resource: expected one absolute URI (RFC 8707) such as \
             \"https://api.partner.example\", not a list",
            config.display()
        );
        assert!(stderr.contains(&expected), "{command}: {stderr}");
        assert!(!dir.path().join("tokens").exists(), "{command}");
    }
}

#[test]
#[cfg_attr(
    not(all(has_node, has_npm)),
    ignore = "skipped: needs node 20.19+ and npm"
)]
fn once_with_a_wrong_secret_exits_1_naming_the_tenant_with_invalid_client() {
    let node = node();
    let dir = tempfile::tempdir().unwrap();
    let server = MockServer::start(&node, dir.path(), 3600);
    let tenants = [
        Tenant {
            name: "good",
            auth: Some("client_secret_basic"),
            secret_env: "GOOD_SECRET",
            scope: Some("reports.read"),
            audience: Some("https://api.partner.example"),
            resource: None,
        },
        Tenant {
            name: "bad-post",
            auth: Some("client_secret_post"),
            secret_env: "WRONG_SECRET",
            scope: Some("reports.read"),
            audience: Some("https://api.partner.example"),
            resource: None,
        },
        Tenant {
            name: "bad-basic",
            auth: Some("client_secret_basic"),
            secret_env: "WRONG_SECRET",
            scope: Some("reports.read"),
            audience: Some("https://api.partner.example"),
            resource: None,
        },
    ];
    let config = config_file(dir.path(), &server.token_url, &tenants, "");
    let wrong = "p@ss w0rd+/:%&=é~NOT-the-secret";
    let mut daemon = spawn(
        dir.path(),
        &["once"],
        &config,
        &[("GOOD_SECRET", SECRET), ("WRONG_SECRET", wrong)],
    );
    let context = || {
        let (stdout, stderr) = daemon_output(dir.path());
        format!(
            "--- stdout:\n{stdout}\n--- stderr:\n{stderr}\n{}",
            server.log()
        )
    };
    let status = wait_exit(&mut daemon, Duration::from_secs(10), context);
    assert_eq!(status.code(), Some(1), "{}", context());
    let (stdout, stderr) = daemon_output(dir.path());
    for name in ["bad-post", "bad-basic"] {
        let line = stderr
            .lines()
            .find(|line| line.starts_with(&format!("{name}: ")))
            .unwrap_or_else(|| panic!("no line for {name}\n{}", context()));
        assert!(
            line.starts_with(&format!("{name}: permanent invalid_client ")),
            "{line}\n{}",
            context()
        );
        assert!(!dir.path().join(format!("tokens/{name}.json")).exists());
    }
    assert!(
        !stderr.lines().any(|line| line.starts_with("good: ")),
        "{}",
        context()
    );
    assert!(stderr.contains("2 of 3 tenant(s) failed"), "{}", context());
    check_token_file(dir.path(), &tenants[0], 3600, &context());
    for secret in [SECRET, wrong] {
        assert!(!stdout.contains(secret) && !stderr.contains(secret));
    }
    let log = server.log();
    assert_eq!(log.matches("token issued").count(), 1, "{log}");
    assert_eq!(log.matches("wrong client_secret").count(), 2, "{log}");
}

/// RFC 8707's `invalid_target` (a resource the server does not know) has no reason of its own;
/// the server's code is shown beside the reason, in `once`'s line and in the log line.
#[test]
#[cfg_attr(
    not(all(has_node, has_npm)),
    ignore = "skipped: needs node 20.19+ and npm"
)]
fn once_shows_the_servers_error_code_beside_the_reason() {
    let node = node();
    let dir = tempfile::tempdir().unwrap();
    let server = MockServer::start(&node, dir.path(), 3600);
    let tenant = Tenant {
        name: "unknown-resource",
        auth: None,
        secret_env: "PARTNER_SECRET",
        scope: None,
        audience: None,
        resource: Some("https://elsewhere.partner.example"),
    };
    let config = config_file(
        dir.path(),
        &server.token_url,
        std::slice::from_ref(&tenant),
        "",
    );
    let mut daemon = spawn(
        dir.path(),
        &["once"],
        &config,
        &[("PARTNER_SECRET", SECRET)],
    );
    let context = || {
        let (stdout, stderr) = daemon_output(dir.path());
        format!(
            "--- stdout:\n{stdout}\n--- stderr:\n{stderr}\n{}",
            server.log()
        )
    };
    let status = wait_exit(&mut daemon, Duration::from_secs(10), context);
    assert_eq!(status.code(), Some(1), "{}", context());
    let (stdout, stderr) = daemon_output(dir.path());
    assert!(
        stderr.lines().any(|line| line
            == "unknown-resource: permanent invalid_request invalid_target -: resource indicator is missing, or unknown"),
        "{}",
        context()
    );
    assert!(
        stderr.contains("reason=\"invalid_request\" error_code=\"invalid_target\""),
        "{}",
        context()
    );
    assert!(!stdout.contains(SECRET) && !stderr.contains(SECRET));
}

#[test]
#[cfg_attr(
    not(all(has_node, has_npm)),
    ignore = "skipped: needs node 20.19+ and npm"
)]
fn run_refreshes_at_half_life_and_exits_0_on_sigterm() {
    let node = node();
    let dir = tempfile::tempdir().unwrap();
    let server = MockServer::start(&node, dir.path(), 4);
    let tenant = Tenant {
        name: "partner",
        auth: Some("client_secret_basic"),
        secret_env: "PARTNER_SECRET",
        scope: Some("reports.read"),
        audience: Some("https://api.partner.example"),
        resource: None,
    };
    let config = config_file(
        dir.path(),
        &server.token_url,
        std::slice::from_ref(&tenant),
        "refresh_at = 0.5\njitter = 0.0\n",
    );
    let mut daemon = spawn(dir.path(), &["run"], &config, &[("PARTNER_SECRET", SECRET)]);
    let context = || {
        let (_, stderr) = daemon_output(dir.path());
        format!("--- daemon log:\n{stderr}\n{}", server.log())
    };
    let path = dir.path().join("tokens/partner.json");
    let token =
        |path: &Path| read_json(path).and_then(|v| v["access_token"].as_str().map(str::to_owned));
    wait_until("the first token", Duration::from_secs(5), context, || {
        if let Some(status) = daemon.0.try_wait().unwrap() {
            panic!("powerbi-tokend run exited with {status}\n{}", context());
        }
        token(&path).is_some()
    });
    let first = check_token_file(dir.path(), &tenant, 4, &context());
    // A 4-second token is refreshed about 2 seconds after it was issued.
    wait_until(
        "the refreshed token",
        Duration::from_secs(5),
        context,
        || token(&path).is_some_and(|t| claims(&t)["seq"] != first["seq"]),
    );
    let second = check_token_file(dir.path(), &tenant, 4, &context());
    assert_eq!(first["seq"], 1, "{}", context());
    assert_eq!(second["seq"], 2, "one request per refresh\n{}", context());

    let status = Command::new("kill")
        .args(["-TERM", &daemon.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let status = wait_exit(&mut daemon, Duration::from_secs(5), context);
    assert_eq!(status.code(), Some(0), "{}", context());
    assert!(!context().contains(SECRET));
}
