//! The binary: subcommands, exit codes, signals, and what it prints (never a secret or token).

mod common;

use common::*;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use powerbi_tokend_sim::SimEntra;

const BIN: &str = env!("CARGO_BIN_EXE_powerbi-tokend");

fn kill(child: &Child, signal: &str) {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(status.success());
}

/// Waits for the child to exit, without blocking the runtime the simulator runs on.
async fn wait_exit(child: &mut Child, timeout: Duration) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            panic!("process did not exit within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn config_file(dir: &Path, authority: &str, tenants: &[(&str, &str, &str)]) -> std::path::PathBuf {
    let mut text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n\n[daemon]\nbackoff_min = \"100ms\"\nbackoff_max = \"200ms\"\n\n[defaults]\nauthority_host = \"{authority}\"\nclient_id = \"{CLIENT_ID}\"\nsinks = [ {{ type = \"file\", path = \"tokens/{{name}}.json\" }} ]\n"
    );
    for (name, tenant_id, secret_env) in tenants {
        text.push_str(&format!(
            "\n[[tenant]]\nname = \"{name}\"\ntenant_id = \"{tenant_id}\"\nclient_secret = {{ env = \"{secret_env}\" }}\n"
        ));
    }
    let path = dir.join("config.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn help_on_every_subcommand() {
    for args in [
        &["--help"][..],
        &["run", "--help"],
        &["once", "--help"],
        &["check", "--help"],
        &["demo", "--help"],
    ] {
        let out = Command::new(BIN).args(args).output().unwrap();
        assert!(out.status.success(), "{args:?}");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("Usage:"),
            "{args:?}"
        );
    }
    let out = Command::new(BIN).arg("frobnicate").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn check_prints_every_problem_with_lines_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let text = r#"[defaults]
client_id = "00000000-0000-0000-0000-000000000001"
sinks = [ { type = "file", path = "/tmp/pbi/{name}.json" } ]

[[tenant]]
name = "contoso"
tenant_id = "contoso.onmicrosoft.com"
client_secret = { env = "POWERBI_TOKEND_TEST_PRESENT" }
colour = "blue"

[[tenant]]
name = "fabrikam"
tenant_id = "fabrikam.onmicrosoft.com"
client_secret = { env = "POWERBI_TOKEND_TEST_MISSING" }
schedule = "0 0 25 * * *"

[[tenant]]
name = "contoso"
tenant_id = "other.onmicrosoft.com"
client_secret = { env = "POWERBI_TOKEND_TEST_PRESENT" }
"#;
    let path = dir.path().join("config.toml");
    std::fs::write(&path, text).unwrap();
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&path)
        .env("POWERBI_TOKEND_TEST_PRESENT", "x")
        .env_remove("POWERBI_TOKEND_TEST_MISSING")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let file = path.display().to_string();
    for expected in [
        format!("{file}:9: tenant \"contoso\": unknown field `colour`"),
        format!(
            "{file}:14: tenant \"fabrikam\": client_secret: environment variable POWERBI_TOKEND_TEST_MISSING is not set"
        ),
        format!(
            "{file}:15: tenant \"fabrikam\": schedule: invalid cron expression \"0 0 25 * * *\""
        ),
        format!(
            "{file}:17: tenant \"contoso\": name: duplicate tenant name \"contoso\" (first defined on line 5)"
        ),
    ] {
        assert!(
            stderr.contains(&expected),
            "missing {expected:?} in:\n{stderr}"
        );
    }
    assert!(stderr.contains("4 problem(s) found"), "{stderr}");
}

#[test]
fn check_accepts_the_shipped_example_when_secrets_exist() {
    let dir = tempfile::tempdir().unwrap();
    let example =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config.toml")).unwrap();
    let secret = dir.path().join("client-secret");
    std::fs::write(&secret, "x\n").unwrap();
    // The example's expiry date is an example; keep the test independent of today's date.
    let next_year = chrono::Utc::now() + chrono::Duration::days(365);
    let text = example
        .replace(
            "/run/secrets/powerbi-tokend/client-secret",
            &secret.display().to_string(),
        )
        .replace(
            "client_secret_expires = \"2027-03-01\"",
            &format!(
                "client_secret_expires = \"{}\"",
                next_year.format("%Y-%m-%d")
            ),
        );
    assert!(text.contains(&next_year.format("%Y-%m-%d").to_string()));
    let path = dir.path().join("config.toml");
    std::fs::write(&path, text).unwrap();
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&path)
        .env("CONTOSO_CLIENT_SECRET", "y")
        .env("PARTNER_SECRET", "z")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(BIN)
        .args(["check"])
        .env("POWERBI_TOKEND_CONFIG", &path)
        .env_remove("CONTOSO_CLIENT_SECRET")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "POWERBI_TOKEND_CONFIG is honoured"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_exits_0_when_all_succeed_and_1_naming_each_failure() {
    init();
    let sim = SimEntra::start().await.unwrap();
    register(&sim, "contoso.onmicrosoft.com", Duration::from_secs(3600));
    register(&sim, "fabrikam.onmicrosoft.com", Duration::from_secs(3600));
    let dir = tempfile::tempdir().unwrap();
    let good = [
        ("contoso", "contoso.onmicrosoft.com", "GOOD_SECRET"),
        ("fabrikam", "fabrikam.onmicrosoft.com", "GOOD_SECRET"),
    ];
    let path = config_file(dir.path(), &sim.authority_host(), &good);
    let mut child = Command::new(BIN)
        .args(["once", "--config"])
        .arg(&path)
        .env("GOOD_SECRET", SECRET)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = wait_exit(&mut child, Duration::from_secs(20)).await;
    assert_eq!(status.code(), Some(0));
    assert!(dir.path().join("tokens/contoso.json").exists());
    assert!(dir.path().join("tokens/fabrikam.json").exists());

    // northwind's secret is wrong, and a tenant that does not exist.
    register(&sim, "northwind.onmicrosoft.com", Duration::from_secs(3600));
    reject_secret(&sim, "northwind.onmicrosoft.com");
    let mixed = [
        ("contoso", "contoso.onmicrosoft.com", "GOOD_SECRET"),
        ("northwind", "northwind.onmicrosoft.com", "GOOD_SECRET"),
        ("ghost", "ghost.onmicrosoft.com", "GOOD_SECRET"),
    ];
    let path = config_file(dir.path(), &sim.authority_host(), &mixed);
    let stderr_path = dir.path().join("stderr");
    let (status, stderr) = once_with_stderr(&path, &stderr_path).await;
    assert_eq!(status.code(), Some(1));
    assert!(
        stderr.contains("northwind: permanent invalid_client invalid_client AADSTS7000215: "),
        "{stderr}"
    );
    assert!(
        stderr.contains("ghost: permanent tenant_not_found invalid_request AADSTS90002: "),
        "{stderr}"
    );
    assert!(!stderr.contains("contoso:"), "{stderr}");
    assert!(stderr.contains("2 of 3 tenant(s) failed"), "{stderr}");
    assert!(!stderr.contains(SECRET));
    once_words_failures_as_final(&stderr);

    // A transient failure is final too: `once` exits, it does not retry.
    sim.set_behavior(
        "contoso.onmicrosoft.com",
        powerbi_tokend_sim::Behavior::TemporarilyUnavailable,
    );
    let (status, stderr) = once_with_stderr(&path, &stderr_path).await;
    assert_eq!(status.code(), Some(1));
    assert!(stderr.contains("contoso: transient"), "{stderr}");
    assert!(stderr.contains("3 of 3 tenant(s) failed"), "{stderr}");
    once_words_failures_as_final(&stderr);
}

/// `once` on `config` with `GOOD_SECRET` set, its stderr through `stderr_path`.
async fn once_with_stderr(
    config: &std::path::Path,
    stderr_path: &std::path::Path,
) -> (std::process::ExitStatus, String) {
    let mut child = Command::new(BIN)
        .args(["once", "--config"])
        .arg(config)
        .env("GOOD_SECRET", SECRET)
        .stderr(std::fs::File::create(stderr_path).unwrap())
        .spawn()
        .unwrap();
    let status = wait_exit(&mut child, Duration::from_secs(20)).await;
    (status, std::fs::read_to_string(stderr_path).unwrap())
}

/// `once` makes one attempt per tenant: none of its own words may promise another (Entra's
/// messages may say "try again", which is advice to the operator).
fn once_words_failures_as_final(stderr: &str) {
    for promise in [
        "will retry",
        "retrying",
        "retry_in",
        "will write it again",
        "until fixed",
    ] {
        assert!(
            !stderr.to_lowercase().contains(promise),
            "once promises a retry ({promise:?}):\n{stderr}"
        );
    }
    assert!(stderr.contains("refresh failed"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_exits_0_on_sigterm_and_never_logs_a_secret_or_token_at_trace() {
    init();
    let sim = SimEntra::start().await.unwrap();
    register(&sim, "contoso.onmicrosoft.com", Duration::from_secs(3600));
    register(&sim, "northwind.onmicrosoft.com", Duration::from_secs(3600));
    reject_secret(&sim, "northwind.onmicrosoft.com");
    let dir = tempfile::tempdir().unwrap();
    let path = config_file(
        dir.path(),
        &sim.authority_host(),
        &[
            ("contoso", "contoso.onmicrosoft.com", "THE_SECRET"),
            ("northwind", "northwind.onmicrosoft.com", "THE_SECRET"),
        ],
    );
    for format in ["text", "json"] {
        let log = dir.path().join(format!("log.{format}"));
        let token_path = dir.path().join("tokens/contoso.json");
        let _ = std::fs::remove_file(&token_path);
        let mut child = Command::new(BIN)
            .args(["run", "--log-format", format, "--config"])
            .arg(&path)
            .env("THE_SECRET", SECRET)
            .env("RUST_LOG", "trace")
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        wait_for("contoso's token", Duration::from_secs(10), || {
            token_path.exists()
        })
        .await;
        wait_for(
            "northwind's failure in the log",
            Duration::from_secs(10),
            || {
                std::fs::read_to_string(&log)
                    .unwrap_or_default()
                    .contains("AADSTS7000215")
            },
        )
        .await;
        kill(&child, "TERM");
        let status = wait_exit(&mut child, Duration::from_secs(5)).await;
        assert_eq!(status.code(), Some(0), "{format}");
        let logs = std::fs::read_to_string(&log).unwrap();
        let token = token_in(&token_path).unwrap();
        assert!(
            logs.lines().count() > 20,
            "trace logging produced too little: {logs}"
        );
        assert!(
            !logs.contains(SECRET),
            "the secret appears in the {format} log"
        );
        assert!(
            !logs.contains(&token),
            "the token appears in the {format} log"
        );
        // The signature part alone must not appear either.
        let signature = token.rsplit('.').next().unwrap();
        assert!(
            !logs.contains(signature),
            "part of the token appears in the {format} log"
        );
        assert!(logs.contains("token refreshed"), "{logs}");
    }
}

#[test]
fn run_with_a_bad_config_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    std::fs::write(&path, "[[tenant]]\nname = \"x\"\n").unwrap();
    let out = Command::new(BIN)
        .args(["run", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("tenant_id: missing"));
    let out = Command::new(BIN)
        .args(["run", "--config", "/nonexistent/config.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

/// `demo ARGS` in `dir`, logging at info to `dir/demo.log`.
fn spawn_demo(dir: &Path, args: &[&str]) -> Child {
    Command::new(BIN)
        .arg("demo")
        .args(args)
        .current_dir(dir)
        .env("RUST_LOG", "info")
        .stderr(std::fs::File::create(dir.join("demo.log")).unwrap())
        .spawn()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_runs_end_to_end_and_stops_on_ctrl_c() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("demo.log");
    let started = Instant::now();
    let mut child = spawn_demo(dir.path(), &["--listen", "127.0.0.1:0"]);
    let logs = || std::fs::read_to_string(&log).unwrap_or_default();
    let contoso = dir.path().join("demo-tokens/contoso.json");
    let fabrikam = dir.path().join("demo-tokens/fabrikam.json");
    wait_for(
        "the healthy demo tenants' files",
        Duration::from_secs(5),
        || contoso.exists() && fabrikam.exists(),
    )
    .await;
    assert!(started.elapsed() < Duration::from_secs(5));
    wait_for("northwind's AADSTS7000215", Duration::from_secs(5), || {
        logs().contains("AADSTS7000215")
    })
    .await;
    assert!(!dir.path().join("demo-tokens/northwind.json").exists());
    let life = read_json(&contoso).unwrap();
    let lifetime = life["expires_on"].as_i64().unwrap() - life["issued_on"].as_i64().unwrap();
    assert_eq!(lifetime, 120);

    // contoso's embed token is written next to its access token, and the demo says where.
    let embed_file = dir.path().join("demo-tokens/contoso.sales.embed.json");
    wait_for("contoso's embed token", Duration::from_secs(5), || {
        read_json(&embed_file).is_some()
    })
    .await;
    let embed = read_json(&embed_file).unwrap();
    for field in ["token", "token_id", "expiration"] {
        assert!(
            embed[field].as_str().is_some_and(|value| !value.is_empty()),
            "{field}: {embed}"
        );
    }
    assert_eq!(embed["tenant"], "contoso", "{embed}");
    assert_eq!(embed["embed"], "sales", "{embed}");
    // With the report's embed URL, read in its workspace.
    let urls = embed["embed_urls"].as_object().expect("embed_urls");
    assert_eq!(urls.len(), 1, "{embed}");
    assert!(
        urls.values().all(|url| {
            url.as_str().is_some_and(|url| {
                url.contains("/reportEmbed?reportId=") && url.contains("&groupId=")
            })
        }),
        "{embed}"
    );
    assert!(
        logs().contains("embed token for contoso/sales: demo-tokens/contoso.sales.embed.json"),
        "{}",
        logs()
    );
    // fabrikam's is for a dataset with row-level security, which the simulated Power BI
    // refuses without an effective identity: the file says whose rows it shows.
    let stores = dir.path().join("demo-tokens/fabrikam.stores.embed.json");
    wait_for("fabrikam's RLS embed token", Duration::from_secs(5), || {
        read_json(&stores).is_some()
    })
    .await;
    let stores = read_json(&stores).unwrap();
    assert_eq!(
        stores["identities"],
        serde_json::json!([{ "username": "store-17@fabrikam.example", "roles": ["Store"],
            "datasets": ["a95c3e18-7b2d-4c6f-8e01-3d4b5a6c7e89"] }]),
        "{stores}"
    );

    // The demo names the tenant Power BI refuses and how to see it in /status; following the
    // hint shows it as api_denied, while the healthy tenants pass their probe.
    let hint = logs()
        .lines()
        .find(|line| line.contains("curl -s http://"))
        .map(str::to_owned)
        .unwrap_or_else(|| panic!("no /status hint in the demo's output:\n{}", logs()));
    assert!(hint.contains("tailspin"), "{hint}");
    let url = hint
        .split("curl -s ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap()
        .to_owned();
    assert!(url.ends_with("/status"), "{hint}");
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let tenant_in = |status: &serde_json::Value, name: &str| {
        status["tenants"]
            .as_array()
            .unwrap()
            .iter()
            .find(|tenant| tenant["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("{name} is not in /status: {status}"))
    };
    let start = Instant::now();
    let status = loop {
        let status: serde_json::Value = http.get(&url).send().await.unwrap().json().await.unwrap();
        let settled = ["contoso", "fabrikam"]
            .iter()
            .all(|name| tenant_in(&status, name)["api_probe"]["ok"] == true)
            && tenant_in(&status, "tailspin")["state"] == "api_denied";
        if settled {
            break status;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "the probes did not settle: {status}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let tailspin = tenant_in(&status, "tailspin");
    assert_eq!(
        tailspin["api_probe"]["failure"]["reason"], "not_authorized",
        "{tailspin}"
    );
    assert!(dir.path().join("demo-tokens/tailspin.json").exists());
    for name in ["contoso", "fabrikam"] {
        assert_eq!(tenant_in(&status, name)["state"], "healthy", "{status}");
    }
    let contoso_status = tenant_in(&status, "contoso");
    assert_eq!(contoso_status["embeds"][0]["name"], "sales", "{status}");
    assert!(
        contoso_status["embeds"][0]
            .get("last_error")
            .is_some_and(serde_json::Value::is_null),
        "{status}"
    );
    assert_eq!(tenant_in(&status, "northwind")["state"], "misconfigured");

    // Nothing secret is printed or served: the demo's secrets all begin `demo~`, and the
    // tokens are in their files only.
    let access_token = token_in(&contoso).unwrap();
    let embed_token = embed["token"].as_str().unwrap().to_owned();
    let served = status.to_string();
    for (what, text) in [("the output", logs()), ("/status", served)] {
        assert!(!text.contains("demo~"), "a secret in {what}:\n{text}");
        assert!(!text.contains(&access_token), "an access token in {what}");
        assert!(!text.contains(&embed_token), "an embed token in {what}");
    }

    kill(&child, "INT");
    let stopping = Instant::now();
    let status = wait_exit(&mut child, Duration::from_secs(5)).await;
    assert_eq!(status.code(), Some(0));
    assert!(
        stopping.elapsed() < Duration::from_secs(2),
        "took {:?}",
        stopping.elapsed()
    );
}

/// Another demo or an installed daemon on the default port 9464: the demo without `--listen`
/// still starts, on a free port it names, and `/status` answers there. With `--listen` naming a
/// taken address, it stops and says how to pick another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_on_a_taken_default_port_listens_on_a_free_one_and_says_which() {
    // Taken by us, or already by something else: taken either way.
    let _holder = std::net::TcpListener::bind("127.0.0.1:9464");
    assert!(
        std::net::TcpListener::bind("127.0.0.1:9464").is_err(),
        "port 9464 should be taken"
    );
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("demo.log");
    let mut child = spawn_demo(dir.path(), &[]);
    let logs = || std::fs::read_to_string(&log).unwrap_or_default();
    wait_for("the demo's new port", Duration::from_secs(10), || {
        logs().contains("is taken")
    })
    .await;
    let line = logs()
        .lines()
        .find(|line| line.contains("is taken"))
        .unwrap()
        .to_owned();
    assert!(line.contains("--listen"), "{line}");
    let addr = line
        .split("listens on ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no address in: {line}"))
        .to_owned();
    assert!(!addr.ends_with(":9464"), "{line}");
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let status = http
        .get(format!("http://{addr}/status"))
        .send()
        .await
        .unwrap();
    assert_eq!(status.status(), 200);
    kill(&child, "INT");
    assert!(
        wait_exit(&mut child, Duration::from_secs(10))
            .await
            .success()
    );

    let out = Command::new(BIN)
        .args(["demo", "--listen", "127.0.0.1:9464"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("demo --listen 127.0.0.1:9464") && stderr.contains("--listen 127.0.0.1:0"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_config_file() {
    let Fixture { sim, dir } = fixture(
        &["contoso.onmicrosoft.com", "fabrikam.onmicrosoft.com"],
        Duration::from_secs(3600),
    )
    .await;
    let one = [("contoso", "contoso.onmicrosoft.com", "THE_SECRET")];
    let path = config_file(dir.path(), &sim.authority_host(), &one);
    let log = dir.path().join("log");
    let mut child = Command::new(BIN)
        .args(["run", "--config"])
        .arg(&path)
        .env("THE_SECRET", SECRET)
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    wait_for("contoso's token", Duration::from_secs(10), || {
        dir.path().join("tokens/contoso.json").exists()
    })
    .await;
    let two = [
        ("contoso", "contoso.onmicrosoft.com", "THE_SECRET"),
        ("fabrikam", "fabrikam.onmicrosoft.com", "THE_SECRET"),
    ];
    config_file(dir.path(), &sim.authority_host(), &two);
    kill(&child, "HUP");
    wait_for(
        "fabrikam's token after SIGHUP",
        Duration::from_secs(10),
        || dir.path().join("tokens/fabrikam.json").exists(),
    )
    .await;
    assert_eq!(
        sim.request_count("contoso.onmicrosoft.com"),
        1,
        "unchanged tenant refetched"
    );
    kill(&child, "TERM");
    assert_eq!(
        wait_exit(&mut child, Duration::from_secs(5)).await.code(),
        Some(0)
    );
    let logs = std::fs::read_to_string(&log).unwrap();
    assert!(logs.contains("configuration reloaded"), "{logs}");
}

#[test]
fn systemd_credentials_are_read_from_credentials_directory() {
    let dir = tempfile::tempdir().unwrap();
    let credentials = dir.path().join("credentials");
    std::fs::create_dir(&credentials).unwrap();
    std::fs::write(credentials.join("client-secret"), "from-systemd\n").unwrap();
    let path = dir.path().join("config.toml");
    std::fs::write(
        &path,
        "[[tenant]]\nname = \"contoso\"\ntenant_id = \"contoso.onmicrosoft.com\"\nclient_id = \"c\"\nclient_secret = { systemd = \"client-secret\" }\nsinks = [ { type = \"file\", path = \"t/{name}.json\" } ]\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&path)
        .env("CREDENTIALS_DIRECTORY", &credentials)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&path)
        .env_remove("CREDENTIALS_DIRECTORY")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("CREDENTIALS_DIRECTORY is not set"));
}

/// A proxy that records the first request line it receives and answers 502.
fn recording_proxy() -> (String, std::sync::mpsc::Receiver<String>) {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut reader = BufReader::new(stream);
            let mut line = String::new();
            let _ = reader.read_line(&mut line);
            let _ = sender.send(line.trim().to_owned());
            let _ = reader.get_mut().write_all(
                b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
            );
        }
    });
    (url, receiver)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_environment_is_honoured() {
    let Fixture { sim, dir } =
        fixture(&["contoso.onmicrosoft.com"], Duration::from_secs(3600)).await;
    let path = config_file(
        dir.path(),
        &sim.authority_host(),
        &[("contoso", "contoso.onmicrosoft.com", "THE_SECRET")],
    );
    let (proxy, seen) = recording_proxy();
    let once = |no_proxy: Option<&str>| {
        let mut command = Command::new(BIN);
        command
            .args(["once", "--config"])
            .arg(&path)
            .env("THE_SECRET", SECRET)
            .env("HTTP_PROXY", &proxy)
            .env_remove("NO_PROXY")
            .env_remove("no_proxy")
            .stderr(Stdio::piped());
        if let Some(no_proxy) = no_proxy {
            command.env("NO_PROXY", no_proxy);
        }
        command.spawn().unwrap()
    };
    let mut child = once(None);
    let status = wait_exit(&mut child, Duration::from_secs(20)).await;
    assert_eq!(status.code(), Some(1), "the proxy answers 502");
    let line = seen.recv_timeout(Duration::from_secs(5)).unwrap();
    assert!(
        line.starts_with("POST http://127.0.0.1:")
            && line.contains("/contoso.onmicrosoft.com/oauth2/v2.0/token"),
        "{line}"
    );
    assert_eq!(sim.request_count("contoso.onmicrosoft.com"), 0);
    // NO_PROXY exempts the host: the request goes straight to the simulator.
    let mut child = once(Some("127.0.0.1"));
    let status = wait_exit(&mut child, Duration::from_secs(20)).await;
    assert_eq!(status.code(), Some(0));
    assert_eq!(sim.request_count("contoso.onmicrosoft.com"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_exits_at_once() {
    let Fixture { sim, dir } =
        fixture(&["contoso.onmicrosoft.com"], Duration::from_secs(3600)).await;
    // The request hangs, so the graceful shutdown would wait for the whole grace period (60 s).
    sim.set_behavior(
        "contoso.onmicrosoft.com",
        powerbi_tokend_sim::Behavior::Hang,
    );
    let path = config_file(
        dir.path(),
        &sim.authority_host(),
        &[("contoso", "contoso.onmicrosoft.com", "THE_SECRET")],
    );
    let text = std::fs::read_to_string(&path).unwrap().replace(
        "[daemon]\n",
        "[daemon]\nshutdown_grace = \"60s\"\nrequest_timeout = \"60s\"\n",
    );
    std::fs::write(&path, text).unwrap();
    let mut child = Command::new(BIN)
        .args(["run", "--config"])
        .arg(&path)
        .env("THE_SECRET", SECRET)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for("the hanging request", Duration::from_secs(10), || {
        sim.request_count("contoso.onmicrosoft.com") == 1
    })
    .await;
    kill(&child, "TERM");
    // Still waiting for the in-flight refresh...
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        child.try_wait().unwrap().is_none(),
        "exited before the grace period"
    );
    // ...until the operator insists.
    let insisted = Instant::now();
    kill(&child, "TERM");
    let status = wait_exit(&mut child, Duration::from_secs(5)).await;
    assert_eq!(status.code(), Some(143));
    assert!(insisted.elapsed() < Duration::from_secs(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_names_its_client_request_id_in_the_log_and_in_status() {
    init();
    let sim = SimEntra::start().await.unwrap();
    register(&sim, "northwind.onmicrosoft.com", Duration::from_secs(3600));
    reject_secret(&sim, "northwind.onmicrosoft.com");
    let dir = tempfile::tempdir().unwrap();
    let path = config_file(
        dir.path(),
        &sim.authority_host(),
        &[("northwind", "northwind.onmicrosoft.com", "THE_SECRET")],
    );
    let log = dir.path().join("log.json");
    let mut child = Command::new(BIN)
        .args(["run", "--log-format", "json", "--config"])
        .arg(&path)
        .env("THE_SECRET", SECRET)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let line_with = |needle: &str| {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .find(|line| line.contains(needle))
            .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
    };
    wait_for("the failure in the log", Duration::from_secs(10), || {
        line_with("AADSTS7000215").is_some()
    })
    .await;
    let failure = line_with("AADSTS7000215").unwrap();
    let sent = sim
        .last_request("northwind.onmicrosoft.com")
        .unwrap()
        .headers
        .into_iter()
        .find(|(key, _)| key == "client-request-id")
        .map(|(_, value)| value)
        .expect("the request carried a client-request-id");
    let fields = &failure;
    assert_eq!(fields["client_request_id"], sent.as_str(), "{failure}");
    assert_eq!(fields["correlation_id"], sent.as_str(), "{failure}");
    // The server's own OAuth `error` beside the reason the daemon made of it.
    assert_eq!(fields["error_code"], "invalid_client", "{failure}");

    let listening = line_with("admin server listening").unwrap();
    let addr = listening["addr"].as_str().unwrap().to_owned();
    let status: serde_json::Value = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .get(format!("http://{addr}/status"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let last_error = &status["tenants"][0]["last_error"];
    assert_eq!(last_error["client_request_id"], sent.as_str(), "{status}");
    assert_eq!(last_error["error_code"], "invalid_client", "{status}");
    kill(&child, "TERM");
    assert_eq!(
        wait_exit(&mut child, Duration::from_secs(5)).await.code(),
        Some(0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(has_redis_server),
    ignore = "skipped: needs redis-server (Debian package redis-server)"
)]
async fn demo_with_redis_writes_the_tokens_to_its_own_redis_and_stops_it() {
    use redis::AsyncCommands;
    common::program("redis-server", "redis-server");
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("demo.log");
    let mut child = Command::new(BIN)
        .args([
            "--log-format",
            "json",
            "demo",
            "--redis",
            "--listen",
            "127.0.0.1:0",
        ])
        .current_dir(dir.path())
        .env("RUST_LOG", "info")
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let url_line = || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .find(|line| line.contains("tokens also go to Redis"))
            .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
    };
    wait_for("the demo's Redis", Duration::from_secs(10), || {
        url_line().is_some()
    })
    .await;
    let url = url_line().unwrap()["redis"].as_str().unwrap().to_owned();
    let mut conn = redis::Client::open(url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let contoso = dir.path().join("demo-tokens/contoso.json");
    wait_for("contoso's file", Duration::from_secs(5), || {
        contoso.exists()
    })
    .await;
    let start = Instant::now();
    let value = loop {
        let value: Option<String> = conn.get("powerbi-tokend:{contoso}").await.unwrap();
        if let Some(value) = value {
            break value;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "contoso never reached Redis"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(value, std::fs::read_to_string(&contoso).unwrap());
    kill(&child, "INT");
    let status = wait_exit(&mut child, Duration::from_secs(5)).await;
    assert_eq!(status.code(), Some(0));
    let port: u16 = url.rsplit(':').next().unwrap().parse().unwrap();
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "the demo left its redis-server running"
    );
}

/// `check --config <path>`: (exit code, stderr, how long it took).
fn check_config(path: &Path) -> (Option<i32>, String, Duration) {
    let started = Instant::now();
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(path)
        .env("THE_SECRET", SECRET)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        started.elapsed(),
    )
}

#[test]
fn check_refuses_an_empty_config_dev_zero_and_a_huge_file_quickly() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.toml");
    std::fs::write(&empty, "[server]\nlisten = \"127.0.0.1:9464\"\n").unwrap();
    let (code, stderr, _) = check_config(&empty);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("no [[tenant]]"), "{stderr}");

    let (code, stderr, took) = check_config(Path::new("/dev/zero"));
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("/dev/zero is not a regular file"),
        "{stderr}"
    );
    assert!(took < Duration::from_secs(5), "took {took:?}");

    // 100 MB (sparse): refused from its size, without reading it.
    let huge = dir.path().join("huge.toml");
    std::fs::File::create(&huge)
        .unwrap()
        .set_len(100 * 1024 * 1024)
        .unwrap();
    let (code, stderr, took) = check_config(&huge);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("is larger than 16777216 bytes"), "{stderr}");
    assert!(took < Duration::from_secs(5), "took {took:?}");
}

#[test]
fn check_warns_about_a_wide_config_mode_and_a_token_directory_it_cannot_create() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    // `blocked` is a file, so no token directory can be made below it.
    std::fs::write(dir.path().join("blocked"), "x").unwrap();
    let path = dir.path().join("config.toml");
    std::fs::write(
        &path,
        format!(
            "[[tenant]]\nname = \"contoso\"\ntenant_id = \"contoso.onmicrosoft.com\"\nclient_id = \"{CLIENT_ID}\"\nclient_secret = {{ env = \"THE_SECRET\" }}\nsinks = [ {{ type = \"file\", path = \"blocked/tokens/{{name}}.json\" }} ]\n"
        ),
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (code, stderr, _) = check_config(&path);
    assert_eq!(code, Some(0), "warnings do not fail the check: {stderr}");
    assert!(stderr.contains("is mode 0644"), "{stderr}");
    assert!(
        stderr.contains("tenant \"contoso\"") && stderr.contains("blocked is not a directory"),
        "{stderr}"
    );
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::remove_file(dir.path().join("blocked")).unwrap();
    let (code, stderr, _) = check_config(&path);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(!stderr.contains("warning"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(all(has_root, has_setpriv)),
    ignore = "skipped: needs root and setpriv (util-linux)"
)]
async fn check_as_another_user_reports_a_token_directory_it_cannot_write() {
    use std::os::unix::fs::PermissionsExt;
    let setpriv = common::program("setpriv", "util-linux");
    assert!(
        rustix::process::getuid().is_root(),
        "this test runs check as another user and needs root"
    );
    let dir = tempfile::Builder::new()
        .prefix("check-as")
        .tempdir_in("/tmp")
        .unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::create_dir(&tokens).unwrap();
    std::fs::set_permissions(&tokens, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = dir.path().join("config.toml");
    std::fs::write(
        &path,
        format!(
            "[[tenant]]\nname = \"contoso\"\ntenant_id = \"contoso.onmicrosoft.com\"\nclient_id = \"{CLIENT_ID}\"\nclient_secret = {{ env = \"THE_SECRET\" }}\nsinks = [ {{ type = \"file\", path = \"tokens/{{name}}.json\" }} ]\n"
        ),
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = Command::new(setpriv)
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            BIN,
            "check",
            "--config",
        ])
        .arg(&path)
        .env("THE_SECRET", SECRET)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "cannot write the token directory {}",
            tokens.display()
        )) && stderr.contains("as uid 65534"),
        "{stderr}"
    );
}

/// The table a line of a config file is in: `Some("defaults")`, `Some("tenant <name>")` (with
/// its sub-tables), or `None` before any header or in another section.
fn table_of(lines: &[&str], index: usize) -> Option<String> {
    let header = |line: &str| line.trim_start().starts_with('[');
    let at = (0..=index).rev().find(|i| header(lines[*i]))?;
    let key = lines[at].trim().trim_start_matches('[');
    let key = key.split(']').next().unwrap_or_default().trim();
    if key == "defaults" {
        return Some("defaults".to_owned());
    }
    if key != "tenant" && !key.starts_with("tenant.") {
        return None;
    }
    // A tenant's sub-tables belong to the last [[tenant]] above them; its name is set before them.
    let start = (0..=at).rev().find(|i| {
        lines[*i]
            .trim()
            .trim_start_matches("[[")
            .starts_with("tenant]]")
    })?;
    let name = lines[start + 1..]
        .iter()
        .take_while(|line| !header(line))
        .find_map(|line| line.trim().strip_prefix("name = \""))?;
    Some(format!(
        "tenant {}",
        name.split('"').next().unwrap_or_default()
    ))
}

/// Checks every `<file>:<line>: …` problem `check` printed: the line is one of the file's and
/// holds the key the problem names where the tenant's value comes from (its own table when it
/// sets the key, else `[defaults]`), or is the tenant's `[[tenant]]` header. Returns the
/// (tenant, key) of every problem.
fn assert_every_line_holds_its_key(path: &Path, stderr: &str) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(path).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let prefix = format!("{}:", path.display());
    let mut problems = Vec::new();
    for printed in stderr.lines() {
        let Some(rest) = printed.strip_prefix(&prefix) else {
            continue;
        };
        let Some((number, problem)) = rest.split_once(": ") else {
            continue;
        };
        let Ok(number) = number.parse::<usize>() else {
            continue; // a problem or warning without a line
        };
        assert!(
            (1..=lines.len()).contains(&number),
            "{printed}\npoints past the end of the {}-line file",
            lines.len()
        );
        let line = lines[number - 1];
        let (tenant, key) = match problem.strip_prefix("tenant \"") {
            Some(rest) => {
                let (tenant, rest) = rest.split_once("\": ").unwrap();
                (Some(tenant), rest.split(": ").next().unwrap())
            }
            None => (None, problem.split(": ").next().unwrap()),
        };
        // `client_secret.key_vault`, `authority_host (from AZURE_AUTHORITY_HOST)`: the key as
        // written in the file is the first word.
        let written = key
            .strip_prefix("defaults.")
            .unwrap_or(key)
            .split(['.', ' '])
            .next()
            .unwrap();
        assert!(
            written.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
            "{printed}\nnames no key"
        );
        let sets_key = |line: &str| line.trim_start().starts_with(&format!("{written} ="));
        let table = table_of(&lines, number - 1);
        let own_table = tenant.map(|tenant| format!("tenant {tenant}"));
        // The tenant's own key when it sets one, else the one it inherits.
        let own_key = (0..lines.len())
            .any(|index| sets_key(lines[index]) && table_of(&lines, index) == own_table);
        let in_place = if own_key {
            table == own_table
        } else {
            table.as_deref() == Some("defaults")
        };
        let holds_key = sets_key(line);
        let is_header = line.trim().starts_with("[[tenant]]") && table == own_table;
        assert!(
            (holds_key && in_place) || is_header,
            "{printed}\nline {number} is {line:?}, in {table:?}: not {key} of {tenant:?}, nor its header"
        );
        problems.push((tenant.unwrap_or_default().to_owned(), written.to_owned()));
    }
    problems
}

/// `check` on a file, in its directory, with only `env` (and `PATH`) set; its output.
fn check_in(path: &Path, env: &[(&str, &str)]) -> String {
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(path)
        .current_dir(path.parent().unwrap())
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    stderr
}

/// A broken config file for `check`: its name, its text, the (tenant, key) of problems it must
/// have, and the environment it is checked in.
struct Broken {
    name: &'static str,
    text: String,
    expected: Vec<(&'static str, &'static str)>,
    /// The environment `check` runs in (nothing else is set).
    env: &'static [(&'static str, &'static str)],
}

fn broken(name: &'static str, text: String, expected: Vec<(&'static str, &'static str)>) -> Broken {
    Broken {
        name,
        text,
        expected,
        env: &[],
    }
}

#[test]
fn every_line_check_names_holds_the_key_or_the_tenant_header() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("garbage.pem"), "not a certificate\n").unwrap();
    std::fs::create_dir(dir.path().join("a-directory")).unwrap();
    std::fs::write(dir.path().join("empty-token"), "").unwrap();
    let repository = Path::new(env!("CARGO_MANIFEST_DIR"));
    let shipped = |file: &str| std::fs::read_to_string(repository.join(file)).unwrap();
    // Every key a tenant inherits from [defaults] sits further up the file than the tenant, as
    // people write them.
    let configs = [
        // The reference file: fabrikam inherits a secret file that is not there.
        broken(
            "shipped.toml",
            shipped("config.toml"),
            vec![("fabrikam", "client_secret"), ("contoso", "client_secret")],
        ),
        // What install.sh installs: the systemd credential, outside a unit.
        broken(
            "systemd.toml",
            shipped("deploy/systemd/config.toml"),
            vec![("contoso", "client_secret")],
        ),
        broken(
            "secret-file.toml",
            format!(
                r#"[server]
listen = "127.0.0.1:0"

[defaults]
client_id = "{CLIENT_ID}"
# Every tenant without a credential of its own inherits this one: a file that is not there,
# and an expiry that has passed.
client_secret = {{ file = "no-such-secret" }}
client_secret_expires = "2020-01-01"
sinks = [ {{ type = "file", path = "tokens/{{name}}.json" }} ]

[[tenant]]
name = "inherits"
tenant_id = "inherits.onmicrosoft.com"

[[tenant]]
name = "own-env"
tenant_id = "own-env.onmicrosoft.com"
client_secret = {{ env = "POWERBI_TOKEND_TEST_UNSET" }}

[[tenant]]
name = "own-directory"
tenant_id = "own-directory.onmicrosoft.com"
client_secret = {{ file = "a-directory" }}

[[tenant]]
name = "own-certificate"
tenant_id = "own-certificate.onmicrosoft.com"
client_certificate = {{ cert = "garbage.pem", key = "garbage.pem" }}
"#
            ),
            vec![
                ("inherits", "client_secret"),
                ("inherits", "client_secret_expires"),
                ("own-env", "client_secret"),
                ("own-directory", "client_secret"),
                ("own-certificate", "client_certificate"),
            ],
        ),
        broken(
            "certificate.toml",
            format!(
                r#"[server]
listen = "127.0.0.1:0"

[defaults]
client_id = "{CLIENT_ID}"
client_certificate = {{ cert = "garbage.pem", key = "no-such.key" }}
sinks = [ {{ type = "file", path = "tokens/{{name}}.json" }} ]
schedule = "0 0 25 * * *"

[[tenant]]
name = "inherits"
tenant_id = "inherits.onmicrosoft.com"

[[tenant]]
name = "own-secret"
tenant_id = "own-secret.onmicrosoft.com"
client_secret = {{ env = "POWERBI_TOKEND_TEST_UNSET" }}
schedule = "0 0 * * * *"
"#
            ),
            vec![
                ("inherits", "client_certificate"),
                ("inherits", "schedule"),
                ("own-secret", "client_secret"),
            ],
        ),
        broken(
            "systemd-and-rules.toml",
            r#"[server]
listen = "127.0.0.1:0"

[defaults]
client_id = ""
client_secret = { systemd = "client-secret" }
refresh_at = 0.99
sinks = [ { type = "file", path = "tokens/{name}.json" } ]

[[tenant]]
name = "inherits"
tenant_id = "inherits.onmicrosoft.com"

[[tenant]]
name = "own"
tenant_id = "own.onmicrosoft.com"
client_id = "5d1e7c2a-3b4f-4a6d-8e9f-0a1b2c3d4e5f"
refresh_at = 0.5
client_secret = { env = "POWERBI_TOKEND_TEST_UNSET" }
"#
            .to_owned(),
            vec![
                ("inherits", "client_id"),
                ("inherits", "client_secret"),
                ("inherits", "refresh_at"),
                ("own", "client_secret"),
            ],
        ),
        // A workload identity reads the token file its federated_token_file names, the
        // tenant's or [defaults]', wherever its `credential` is set.
        broken(
            "workload-identity.toml",
            r#"[server]
listen = "127.0.0.1:0"

[defaults]
client_id = "5d1e7c2a-3b4f-4a6d-8e9f-0a1b2c3d4e5f"
credential = "workload_identity"
federated_token_file = "empty-token"
sinks = [ { type = "file", path = "tokens/{name}.json" } ]

[[tenant]]
name = "inherits"
tenant_id = "inherits.onmicrosoft.com"

[[tenant]]
name = "own-token-file"
tenant_id = "own-token-file.onmicrosoft.com"
federated_token_file = "no-such-token"

[[tenant]]
name = "own-credential"
tenant_id = "own-credential.onmicrosoft.com"
credential = "workload_identity"
"#
            .to_owned(),
            vec![
                ("inherits", "federated_token_file"),
                ("own-token-file", "federated_token_file"),
                ("own-credential", "federated_token_file"),
            ],
        ),
        // Without federated_token_file, AZURE_FEDERATED_TOKEN_FILE's file: no line names it, so
        // the tenant is blamed.
        Broken {
            env: &[("AZURE_FEDERATED_TOKEN_FILE", "no-such-projected-token")],
            ..broken(
                "workload-identity-environment.toml",
                r#"[defaults]
client_id = "5d1e7c2a-3b4f-4a6d-8e9f-0a1b2c3d4e5f"
credential = "workload_identity"
sinks = [ { type = "file", path = "tokens/{name}.json" } ]

[[tenant]]
name = "inherits"
tenant_id = "inherits.onmicrosoft.com"

[[tenant]]
name = "own-credential"
tenant_id = "own-credential.onmicrosoft.com"
credential = "workload_identity"
"#
                .to_owned(),
                vec![
                    ("inherits", "federated_token_file"),
                    ("own-credential", "federated_token_file"),
                ],
            )
        },
    ];
    for Broken {
        name,
        text,
        expected,
        env,
    } in configs
    {
        // Large files are read one [[tenant]] table at a time, others whole; a `'''` (even in
        // a comment) makes the loader read the whole file, so both ways are checked.
        for (way, text) in [
            ("by table", text.clone()),
            ("whole", format!("{text}# '''\n")),
        ] {
            let path = dir.path().join(name);
            std::fs::write(&path, &text).unwrap();
            let stderr = check_in(&path, env);
            let found = assert_every_line_holds_its_key(&path, &stderr);
            for (tenant, key) in &expected {
                assert!(
                    found.iter().any(|(t, k)| t == tenant && k == key),
                    "{name} read {way}: no problem with {key} of {tenant}:\n{stderr}"
                );
            }
        }
    }
}
