//! The admin server, metrics and live reload, against a running in-process daemon.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::time::Duration;

use powerbi_tokend::{Control, config};
use powerbi_tokend_sim::{Behavior, SimEntra};

/// A config file on disk (so reloads can re-read it) with secrets in a file.
struct Files {
    config: PathBuf,
    dir: PathBuf,
}

impl Files {
    fn new(dir: &Path) -> Files {
        std::fs::write(dir.join("secret"), format!("{SECRET}\n")).unwrap();
        Files {
            config: dir.join("config.toml"),
            dir: dir.to_owned(),
        }
    }

    /// Writes the config with these (name, tenant_id, extra lines) tenants.
    fn write(&self, sim: &SimEntra, tenants: &[(&str, &str, &str)]) {
        self.write_with_server(sim, "", tenants);
    }

    /// Writes the config with `server` added to `[server]` and these tenants.
    fn write_with_server(&self, sim: &SimEntra, server: &str, tenants: &[(&str, &str, &str)]) {
        let mut text = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nwatch_config = true\nwatch_interval = \"100ms\"\n{server}\n[daemon]\nbackoff_min = \"100ms\"\nbackoff_max = \"300ms\"\n\n[defaults]\nauthority_host = \"{}\"\nclient_id = \"{CLIENT_ID}\"\nclient_secret = {{ file = \"secret\" }}\nsinks = [ {{ type = \"file\", path = \"tokens/{{name}}.json\" }} ]\n",
            sim.authority_host()
        );
        for (name, tenant_id, extra) in tenants {
            text.push_str(&format!(
                "\n[[tenant]]\nname = \"{name}\"\ntenant_id = \"{tenant_id}\"\n{extra}\n"
            ));
        }
        // Replace atomically, like a ConfigMap update, so the watcher never reads half a file.
        let temp = self.dir.join(".config.toml.new");
        std::fs::write(&temp, text).unwrap();
        std::fs::rename(&temp, &self.config).unwrap();
    }

    fn token(&self, name: &str) -> PathBuf {
        self.dir.join(format!("tokens/{name}.json"))
    }
}

/// The value of the first sample line starting with `prefix`.
fn sample(metrics: &str, prefix: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|line| line.starts_with(prefix))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
}

async fn start(files: &Files) -> Running {
    start_daemon(config::load(&files.config).await.unwrap()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_status_and_probes() {
    let Fixture { sim, dir } = fixture(
        &["good.example.com", "bad.example.com"],
        Duration::from_secs(3600),
    )
    .await;
    reject_secret(&sim, "bad.example.com");
    let files = Files::new(dir.path());
    files.write(
        &sim,
        &[
            ("good", "good.example.com", ""),
            ("bad", "bad.example.com", ""),
        ],
    );
    let daemon = start(&files).await;
    wait_for("both first attempts", Duration::from_secs(5), || {
        files.token("good").exists() && sim.request_count("bad.example.com") >= 1
    })
    .await;

    // /readyz: an auth failure does not make the daemon unready.
    let body = daemon
        .wait_for_get("ready", "/readyz", |code, _| code == 200)
        .await;
    assert!(body.contains("\"ready\":true"), "{body}");
    assert_eq!(daemon.get("/healthz").await.0, 200);

    let (code, metrics) = daemon.get("/metrics").await;
    assert_eq!(code, 200);
    for tenant in ["good", "bad"] {
        for name in [
            "powerbi_tokend_next_refresh_timestamp_seconds",
            "powerbi_tokend_consecutive_failures",
        ] {
            let series = format!("{name}{{tenant=\"{tenant}\"}}");
            assert!(metrics.contains(&series), "{series} missing:\n{metrics}");
        }
        assert!(metrics.contains(&format!(
            "powerbi_tokend_refresh_total{{result=\"failure\",tenant=\"{tenant}\"}}"
        )));
        assert!(metrics.contains(&format!(
            "powerbi_tokend_refresh_total{{result=\"success\",tenant=\"{tenant}\"}}"
        )));
    }
    for series in [
        "powerbi_tokend_token_expiry_timestamp_seconds{tenant=\"good\"}",
        "powerbi_tokend_token_time_to_expiry_seconds{tenant=\"good\"}",
        "powerbi_tokend_last_success_timestamp_seconds{tenant=\"good\"}",
        "powerbi_tokend_refresh_failures_total{reason=\"invalid_client\",tenant=\"bad\"} 1",
        "powerbi_tokend_consecutive_failures{tenant=\"bad\"} 1",
        "powerbi_tokend_tenant_state{state=\"healthy\",tenant=\"good\"} 1",
        "powerbi_tokend_tenant_state{state=\"misconfigured\",tenant=\"bad\"} 1",
        "powerbi_tokend_tenants{state=\"healthy\"} 1",
        "powerbi_tokend_tenants{state=\"misconfigured\"} 1",
        "powerbi_tokend_tenants{state=\"expired\"} 0",
        "powerbi_tokend_refresh_duration_seconds_count 2",
        "powerbi_tokend_config_reloads_total{result=\"failure\"} 0",
        "powerbi_tokend_build_info{version=\"",
        "process_resident_memory_bytes",
    ] {
        assert!(metrics.contains(series), "{series} missing:\n{metrics}");
    }
    // A tenant without a token has no expiry series (absent, not zero).
    assert!(!metrics.contains("powerbi_tokend_token_expiry_timestamp_seconds{tenant=\"bad\"}"));

    // Time to expiry is computed at scrape time.
    let first = sample(
        &metrics,
        "powerbi_tokend_token_time_to_expiry_seconds{tenant=\"good\"}",
    )
    .unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (_, later) = daemon.get("/metrics").await;
    let second = sample(
        &later,
        "powerbi_tokend_token_time_to_expiry_seconds{tenant=\"good\"}",
    )
    .unwrap();
    assert!(
        second < first - 1.0 && second > first - 10.0,
        "{first} then {second}"
    );

    // /status: the failing tenant carries Entra's diagnostics.
    let (code, body) = daemon.get("/status").await;
    assert_eq!(code, 200);
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    let tenants = status["tenants"].as_array().unwrap();
    let bad = tenants.iter().find(|t| t["name"] == "bad").unwrap();
    assert_eq!(bad["state"], "misconfigured");
    assert_eq!(bad["consecutive_failures"], 1);
    assert_eq!(bad["last_error"]["class"], "permanent");
    assert_eq!(bad["last_error"]["reason"], "invalid_client");
    assert_eq!(bad["last_error"]["aadsts"], "AADSTS7000215");
    assert_eq!(bad["last_error"]["error_code"], "invalid_client");
    assert!(bad["last_error"]["trace_id"].is_string());
    assert!(bad["last_error"]["correlation_id"].is_string());
    assert!(bad["next_refresh_at"].is_string());
    let good = tenants.iter().find(|t| t["name"] == "good").unwrap();
    assert_eq!(good["state"], "healthy");
    assert!(good["expires_at"].is_string() && good["last_success_at"].is_string());
    assert!(good["last_error"].is_null());

    // Never a secret or a token in any endpoint.
    let token = token_in(&files.token("good")).unwrap();
    for path in ["/status", "/metrics", "/readyz", "/healthz"] {
        let (_, body) = daemon.get(path).await;
        assert!(!body.contains(SECRET), "secret in {path}");
        assert!(!body.contains(&token), "token in {path}");
    }
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hardening_10_readyz_waits_for_first_attempts_and_fails_only_when_most_sinks_fail() {
    let Fixture { sim, dir } = fixture(
        &["slow.example.com", "disk.example.com"],
        Duration::from_secs(3600),
    )
    .await;
    sim.set_behavior(
        "slow.example.com",
        Behavior::Slow(Duration::from_millis(800)),
    );
    let files = Files::new(dir.path());
    // disk's token directory is a regular file: every write fails.
    std::fs::write(dir.path().join("blocked"), "x").unwrap();
    files.write(
        &sim,
        &[
            ("slow", "slow.example.com", ""),
            (
                "disk",
                "disk.example.com",
                "sinks = [ { type = \"file\", path = \"blocked/{name}.json\" } ]",
            ),
        ],
    );
    let daemon = start(&files).await;
    let (code, body) = daemon.get("/readyz").await;
    assert_eq!(code, 503);
    assert!(
        body.contains("\"pending\":[") && body.contains("slow"),
        "{body}"
    );
    wait_for("slow's token", Duration::from_secs(5), || {
        files.token("slow").exists()
    })
    .await;
    let (code, body) = daemon.get("/readyz").await;
    assert_eq!(
        code, 503,
        "a sink that cannot be written makes the daemon unready"
    );
    assert!(body.contains("\"sink_failing\":[\"disk\"]"), "{body}");
    // One failing tenant of four is that tenant's problem: the daemon stays ready, and says who.
    files.write(
        &sim,
        &[
            ("slow", "slow.example.com", ""),
            (
                "disk",
                "disk.example.com",
                "sinks = [ { type = \"file\", path = \"blocked/{name}.json\" } ]",
            ),
            ("slow2", "slow.example.com", ""),
            ("slow3", "slow.example.com", ""),
        ],
    );
    daemon.control.send(Control::Reload).await.unwrap();
    let body = daemon
        .wait_for_get(
            "ready with one failing sink of four",
            "/readyz",
            |code, _| code == 200,
        )
        .await;
    assert!(body.contains("\"sink_failing\":[\"disk\"]"), "{body}");
    std::fs::remove_file(dir.path().join("blocked")).unwrap();
    // The daemon was already ready (one failing sink of four), so wait for the sink itself.
    daemon
        .wait_for_get(
            "disk's sink after the disk is fixed",
            "/readyz",
            |code, body| code == 200 && body.contains("\"sink_failing\":[]"),
        )
        .await;
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_adds_removes_changes_and_rejects_bad_files() {
    let Fixture { sim, dir } = fixture(
        &[
            "keep.example.com",
            "gone.example.com",
            "change.example.com",
            "new.example.com",
        ],
        Duration::from_secs(3600),
    )
    .await;
    let files = Files::new(dir.path());
    files.write(
        &sim,
        &[
            ("keep", "keep.example.com", ""),
            ("gone", "gone.example.com", ""),
            ("change", "change.example.com", ""),
        ],
    );
    let mut config = config::load(&files.config).await.unwrap();
    // Reloads in this test are explicit (SIGHUP); the watcher has its own test.
    let mut server = config.server.clone();
    server.watch_config = false;
    config.server = server;
    let daemon = start_daemon(config).await;
    wait_for("three tokens", Duration::from_secs(5), || {
        ["keep", "gone", "change"]
            .iter()
            .all(|n| files.token(n).exists())
    })
    .await;
    let (_, metrics) = daemon.get("/metrics").await;
    assert!(metrics.contains("tenant=\"gone\""));

    // An invalid file: everything keeps running, the failure is counted.
    std::fs::write(&files.config, "[[tenant]]\nname = 5\n").unwrap();
    daemon.control.send(Control::Reload).await.unwrap();
    let metrics = daemon
        .wait_for_get("the failed reload", "/metrics", |_, metrics| {
            metrics.contains("powerbi_tokend_config_reloads_total{result=\"failure\"} 1")
        })
        .await;
    assert!(
        metrics.contains("powerbi_tokend_config_last_reload_successful 0"),
        "{metrics}"
    );
    assert!(
        metrics.contains("tenant=\"gone\""),
        "a rejected reload must not remove tenants"
    );

    // Valid: gone removed, new added, change gets another app; keep untouched.
    let other_app = "99999999-8888-7777-6666-555555555555";
    sim.set_app(
        "change.example.com",
        powerbi_tokend_sim::SimApp {
            client_id: other_app.to_owned(),
            secret: SECRET.to_owned(),
            secret_expired: false,
        },
    );
    files.write(
        &sim,
        &[
            ("keep", "keep.example.com", ""),
            (
                "change",
                "change.example.com",
                &format!("client_id = \"{other_app}\""),
            ),
            ("new", "new.example.com", ""),
        ],
    );
    daemon.control.send(Control::Reload).await.unwrap();
    wait_for("new's token", Duration::from_secs(5), || {
        files.token("new").exists()
    })
    .await;
    wait_for(
        "change's token for the other app",
        Duration::from_secs(5),
        || read_json(&files.token("change")).is_some_and(|j| j["client_id"] == other_app),
    )
    .await;
    let (_, metrics) = daemon.get("/metrics").await;
    assert!(
        !metrics.contains("tenant=\"gone\""),
        "removed tenant's series remain:\n{metrics}"
    );
    assert!(metrics.contains("powerbi_tokend_config_reloads_total{result=\"success\"} 1"));
    assert!(metrics.contains("powerbi_tokend_config_last_reload_successful 1"));
    assert!(
        metrics.contains("powerbi_tokend_tenants{state=\"healthy\"} 3"),
        "{metrics}"
    );
    // Unchanged tenants were not refetched; the changed one was, once.
    assert_eq!(sim.request_count("keep.example.com"), 1);
    assert_eq!(sim.request_count("change.example.com"), 2);
    assert_eq!(sim.request_count("gone.example.com"), 1);
    let (_, status) = daemon.get("/status").await;
    assert!(!status.contains("\"gone\""));

    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_config_follows_a_configmap_symlink_swap() {
    let Fixture { sim, dir } = fixture(
        &["a.example.com", "b.example.com"],
        Duration::from_secs(3600),
    )
    .await;
    // The Kubernetes layout: config.toml -> ..data/config.toml, ..data -> ..2026_1 (swapped).
    let root = dir.path();
    std::fs::write(root.join("secret"), format!("{SECRET}\n")).unwrap();
    let staging = Files {
        config: root.join("staging.toml"),
        dir: root.to_owned(),
    };
    let publish = |version: &str, tenants: &[(&str, &str, &str)]| {
        staging.write(&sim, tenants);
        let data = root.join(version);
        std::fs::create_dir(&data).unwrap();
        std::fs::rename(&staging.config, data.join("config.toml")).unwrap();
        let link = root.join("..data_tmp");
        std::os::unix::fs::symlink(version, &link).unwrap();
        std::fs::rename(&link, root.join("..data")).unwrap();
    };
    publish("..v1", &[("a", "a.example.com", "")]);
    std::os::unix::fs::symlink("..data/config.toml", root.join("config.toml")).unwrap();
    let files = Files {
        config: root.join("config.toml"),
        dir: root.to_owned(),
    };
    let daemon = start(&files).await;
    wait_for("a's token", Duration::from_secs(5), || {
        files.token("a").exists()
    })
    .await;
    publish(
        "..v2",
        &[("a", "a.example.com", ""), ("b", "b.example.com", "")],
    );
    wait_for("b's token after the swap", Duration::from_secs(5), || {
        files.token("b").exists()
    })
    .await;
    assert_eq!(sim.request_count("a.example.com"), 1);
    daemon.stop().await;
}

/// Reads until the server closes the connection; returns how long that took (`None` if it did
/// not within `limit`).
async fn closed_within(mut stream: tokio::net::TcpStream, limit: Duration) -> Option<Duration> {
    use tokio::io::AsyncReadExt;
    let started = std::time::Instant::now();
    let mut buffer = [0u8; 1024];
    loop {
        match tokio::time::timeout(
            limit.saturating_sub(started.elapsed()),
            stream.read(&mut buffer),
        )
        .await
        {
            Ok(Ok(0)) | Ok(Err(_)) => return Some(started.elapsed()),
            Ok(Ok(_)) => continue,
            Err(_) => return None,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hardening_7_idle_and_slow_admin_clients_cannot_starve_the_daemon() {
    use tokio::io::AsyncWriteExt;
    let Fixture { sim, dir } = fixture(&["good.example.com"], Duration::from_secs(3600)).await;
    let files = Files::new(dir.path());
    files.write(&sim, &[("good", "good.example.com", "")]);
    let daemon = start(&files).await;
    wait_for("the first token", Duration::from_secs(5), || {
        files.token("good").exists()
    })
    .await;
    let clients = powerbi_tokend::http::MAX_CONNECTIONS * 3;
    let mut streams = Vec::new();
    for index in 0..clients {
        let mut stream = tokio::net::TcpStream::connect(daemon.addr).await.unwrap();
        if index % 2 == 0 {
            // Slowloris: a request line and then nothing, never the end of the headers.
            stream
                .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
                .await
                .unwrap();
        }
        streams.push(stream);
    }
    let limit = powerbi_tokend::http::HEADER_READ_TIMEOUT + Duration::from_secs(3);
    let waits: Vec<_> = streams
        .into_iter()
        .map(|stream| tokio::spawn(closed_within(stream, limit)))
        .collect();
    let mut closed = Vec::new();
    for wait in waits {
        closed.push(wait.await.unwrap());
    }
    // Every idle or slow client is disconnected by the server, those over the cap at once.
    assert!(closed.iter().all(Option::is_some), "{closed:?}");
    let at_once = closed
        .iter()
        .flatten()
        .filter(|took| **took < Duration::from_secs(1))
        .count();
    assert!(
        at_once >= clients - powerbi_tokend::http::MAX_CONNECTIONS,
        "only {at_once} of {clients} were turned away at once"
    );
    // And the daemon answers again.
    assert_eq!(daemon.get("/healthz").await.0, 200);
    daemon.stop().await;
}

/// Everything the daemon logs, for tests that assert what a reload reported.
#[derive(Clone, Default)]
struct LogCapture(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for LogCapture {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl LogCapture {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// `/status` as JSON, tenant name → entry.
async fn status_by_name(daemon: &Running) -> serde_json::Map<String, serde_json::Value> {
    let (_, body) = daemon.get("/status").await;
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    status["tenants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["name"].as_str().unwrap().to_owned(), t.clone()))
        .collect()
}

/// Whether a `/status` entry has finished its first attempt and scheduled the next one (the
/// next refresh is then minutes away, not "now").
fn settled(entry: &serde_json::Value) -> bool {
    entry["next_refresh_at"]
        .as_str()
        .and_then(|at| humantime::parse_rfc3339(at).ok())
        .and_then(|at| at.duration_since(std::time::SystemTime::now()).ok())
        .is_some_and(|ahead| ahead > Duration::from_secs(60))
}

// Current-thread runtime: the daemon's tasks run on this thread, so the thread-local log
// subscriber sees the reload's log line.
#[tokio::test]
async fn hardening_9_reload_ignores_line_numbers() {
    let logs = LogCapture::default();
    let writer = logs.clone();
    let _subscriber = tracing::subscriber::set_default(
        tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish(),
    );
    let Fixture { sim, dir } = fixture(
        &["raw.example.com", "failing.example.com"],
        Duration::from_secs(3600),
    )
    .await;
    // A raw-format tenant has no warm start (a restart refetches) and a failing tenant retries
    // at once when restarted: both make a needless restart visible.
    reject_secret(&sim, "failing.example.com");
    let files = Files::new(dir.path());
    let tenants = [
        (
            "raw",
            "raw.example.com",
            "sinks = [ { type = \"file\", path = \"tokens/raw.token\", format = \"raw\" } ]",
        ),
        ("failing", "failing.example.com", ""),
    ];
    files.write(&sim, &tenants);
    let mut config = config::load(&files.config).await.unwrap();
    // Reloads in this test are explicit (SIGHUP).
    config.server.watch_config = false;
    let daemon = start_daemon(config).await;
    let before = loop {
        let status = status_by_name(&daemon).await;
        if status.len() == 2 && status.values().all(settled) {
            break status;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(sim.request_count("raw.example.com"), 1);
    assert_eq!(sim.request_count("failing.example.com"), 1);
    assert!(before["failing"]["last_error"].is_object(), "{before:?}");

    // The same tenants, one line further down.
    let text = std::fs::read_to_string(&files.config).unwrap();
    std::fs::write(&files.config, format!("# managed by ops\n{text}")).unwrap();
    daemon.control.send(Control::Reload).await.unwrap();
    wait_for("the reload's log line", Duration::from_secs(5), || {
        logs.text().contains("configuration reloaded")
    })
    .await;
    let log = logs.text();
    let reloaded = log
        .lines()
        .find(|line| line.contains("configuration reloaded"))
        .unwrap();
    assert!(
        reloaded.contains("changed=[]") && reloaded.contains("unchanged=2"),
        "{reloaded}"
    );
    // Untouched: no refetch, no early retry, the same schedule.
    assert_eq!(sim.request_count("raw.example.com"), 1);
    assert_eq!(sim.request_count("failing.example.com"), 1);
    let after = status_by_name(&daemon).await;
    for name in ["raw", "failing"] {
        assert_eq!(
            after[name]["next_refresh_at"], before[name]["next_refresh_at"],
            "{name}"
        );
    }
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_tenant_metrics_follow_reloads_at_the_next_scrape() {
    let Fixture { sim, dir } = fixture(
        &["good.example.com", "bad.example.com"],
        Duration::from_secs(3600),
    )
    .await;
    reject_secret(&sim, "bad.example.com");
    let files = Files::new(dir.path());
    let both = [
        ("good", "good.example.com", ""),
        ("bad", "bad.example.com", ""),
    ];
    files.write_with_server(&sim, "per_tenant_metrics = \"unhealthy\"\n", &both);
    let mut config = config::load(&files.config).await.unwrap();
    // Reloads in this test are explicit (SIGHUP).
    config.server.watch_config = false;
    let daemon = start_daemon(config).await;
    wait_for("both first attempts", Duration::from_secs(5), || {
        files.token("good").exists() && sim.request_count("bad.example.com") >= 1
    })
    .await;

    // "unhealthy": the failing tenant is named, the healthy one only counted.
    let metrics = daemon
        .wait_for_get("the bad tenant's failure", "/metrics", |_, metrics| {
            metrics.contains("powerbi_tokend_consecutive_failures{tenant=\"bad\"}")
                && metrics.contains("powerbi_tokend_tenants{state=\"healthy\"} 1")
        })
        .await;
    assert!(!metrics.contains("tenant=\"good\""), "{metrics}");
    for line in [
        "powerbi_tokend_per_tenant_metrics{mode=\"unhealthy\"} 1",
        "powerbi_tokend_tenant_state{state=\"misconfigured\",tenant=\"bad\"} 1",
        "powerbi_tokend_tenants_token_time_to_expiry_seconds_count{state=\"healthy\"} 1",
        "powerbi_tokend_tenants_refresh_total{result=\"success\"} 1",
    ] {
        assert!(metrics.contains(line), "{line} missing:\n{metrics}");
    }

    // "none", by reload: no tenant is named from the next scrape on.
    files.write_with_server(&sim, "per_tenant_metrics = \"none\"\n", &both);
    daemon.control.send(Control::Reload).await.unwrap();
    let metrics = daemon
        .wait_for_get("mode none", "/metrics", |_, metrics| {
            metrics.contains("powerbi_tokend_per_tenant_metrics{mode=\"none\"} 1")
        })
        .await;
    assert!(!metrics.contains("tenant="), "{metrics}");
    assert!(metrics.contains("powerbi_tokend_tenants{state=\"misconfigured\"} 1"));

    // Back to the default, "all": both tenants.
    files.write(&sim, &both);
    daemon.control.send(Control::Reload).await.unwrap();
    let metrics = daemon
        .wait_for_get("mode all", "/metrics", |_, metrics| {
            metrics.contains("powerbi_tokend_per_tenant_metrics{mode=\"all\"} 1")
        })
        .await;
    assert!(metrics.contains("tenant=\"good\"") && metrics.contains("tenant=\"bad\""));
    let failures = |metrics: &str| {
        sample(
            metrics,
            "powerbi_tokend_tenants_refresh_failures_total{reason=\"invalid_client\"}",
        )
        .unwrap()
    };
    let before = failures(&metrics);
    assert!(before >= 1.0, "{metrics}");

    // The failing tenant leaves: its own series go, the fleet-wide counters keep their count.
    files.write(&sim, &both[..1]);
    daemon.control.send(Control::Reload).await.unwrap();
    let metrics = daemon
        .wait_for_get("the bad tenant gone", "/metrics", |_, metrics| {
            !metrics.contains("tenant=\"bad\"")
        })
        .await;
    assert!(failures(&metrics) >= before, "{metrics}");
    daemon.stop().await;
}

/// The first cell (the tenant name) of each row of the admin page's table, in order; works on
/// the page as served and on the DOM a browser dumps.
fn page_rows(html: &str) -> Vec<String> {
    let Some(body) = html.split("<tbody>").nth(1) else {
        return Vec::new();
    };
    let body = body.split("</tbody>").next().unwrap_or_default();
    body.split("<tr>")
        .skip(1)
        .map(|row| {
            let cell = row.split("<td>").nth(1).unwrap_or_default();
            cell.split("</td>").next().unwrap_or_default().to_owned()
        })
        .collect()
}

/// A daemon with three tenants, `bad` failing with AADSTS7000215, once every first attempt is
/// over.
async fn three_tenants_one_failing() -> (Fixture, Files, Running) {
    let fixture = fixture(
        &["good.example.com", "bad.example.com", "other.example.com"],
        Duration::from_secs(3600),
    )
    .await;
    reject_secret(&fixture.sim, "bad.example.com");
    let files = Files::new(fixture.dir.path());
    files.write(
        &fixture.sim,
        &[
            ("good", "good.example.com", ""),
            ("bad", "bad.example.com", ""),
            ("other", "other.example.com", ""),
        ],
    );
    let daemon = start(&files).await;
    daemon
        .wait_for_get("every first attempt", "/status", |_, body| {
            body.contains("AADSTS7000215") && body.matches("\"expires_at\":\"").count() == 2
        })
        .await;
    (fixture, files, daemon)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_page_lists_failing_tenants_first_and_filters_on_the_server() {
    let (_fixture, files, daemon) = three_tenants_one_failing().await;
    let response = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .get(format!("http://{}/", daemon.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .map(|value| value.to_str().unwrap().to_owned())
            .unwrap_or_else(|| panic!("no {name}"))
    };
    assert_eq!(header("content-type"), "text/html; charset=utf-8");
    assert_eq!(header("cache-control"), "no-store");
    let policy = header("content-security-policy");
    assert!(policy.starts_with("default-src 'none'"), "{policy}");
    assert!(
        !policy.contains("script-src"),
        "no script is allowed: {policy}"
    );
    let page = response.text().await.unwrap();
    let rows = page_rows(&page);
    assert_eq!(rows[0], "bad", "{page}");
    assert_eq!(rows.len(), 3);
    assert!(
        page.contains("<b class=\"bad\">invalid_client</b> AADSTS7000215"),
        "{page}"
    );
    assert!(page.contains("3 tenants</a>"), "{page}");
    assert!(!page.contains("<script"), "{page}");

    let (_, filtered) = daemon.get("/?q=OTH&state=").await;
    assert_eq!(page_rows(&filtered), ["other"], "{filtered}");
    let (_, failing) = daemon.get("/?state=failing").await;
    assert_eq!(page_rows(&failing), ["bad"], "{failing}");

    let token = token_in(&files.token("good")).unwrap();
    for page in [&page, &filtered] {
        assert!(!page.contains(SECRET) && !page.contains(&token));
    }
    daemon.stop().await;
}

/// Runs `command` until it exits, for at most 30 s (then kills it); its stdout.
async fn output_within_deadline(mut command: std::process::Command, stdout: &Path) -> String {
    let mut child = command
        .stdout(std::fs::File::create(stdout).unwrap())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "{command:?}: {status}");
            return std::fs::read_to_string(stdout).unwrap();
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{command:?} did not finish within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(has_chromium),
    ignore = "skipped: needs chromium (Debian package chromium)"
)]
async fn admin_page_in_a_real_browser() {
    let chromium = program("chromium", "chromium");
    let (fixture, _files, daemon) = three_tenants_one_failing().await;
    let profile = fixture.dir.path().join("chromium-profile");
    let browser = |args: &[&str], path: &str| {
        let mut command = std::process::Command::new(&chromium);
        command
            .args(["--headless", "--no-sandbox", "--disable-gpu"])
            // No background traffic: on a closed network Chromium's own connections (updates,
            // sync, QUIC probes) fail and slow it down.
            .args([
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .args(args)
            .arg(format!("http://{}{path}", daemon.addr));
        command
    };
    let stdout = fixture.dir.path().join("chromium.out");

    let dom = output_within_deadline(browser(&["--dump-dom"], "/"), &stdout).await;
    let rows = page_rows(&dom);
    assert_eq!(rows.len(), 3, "{dom}");
    assert_eq!(rows[0], "bad", "the failing tenant first: {dom}");
    let first_row = dom
        .split("<tbody>")
        .nth(1)
        .unwrap()
        .split("</tr>")
        .next()
        .unwrap();
    assert!(first_row.contains("invalid_client"), "{first_row}");
    assert!(first_row.contains("AADSTS7000215"), "{first_row}");
    assert!(
        dom.contains("href=\"metrics\"") && dom.contains("href=\"status\""),
        "{dom}"
    );
    assert!(dom.contains("<form method=\"get\""), "{dom}");

    let dom = output_within_deadline(browser(&["--dump-dom"], "/?q=goo"), &stdout).await;
    assert_eq!(page_rows(&dom), ["good"], "{dom}");
    assert!(
        dom.contains("value=\"goo\""),
        "the filter box keeps the query: {dom}"
    );

    let screenshot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("admin-page.png");
    let _ = std::fs::remove_file(&screenshot);
    let shot = format!("--screenshot={}", screenshot.display());
    output_within_deadline(browser(&[&shot, "--window-size=1280,800"], "/"), &stdout).await;
    println!("admin page screenshot: {}", screenshot.display());
    let png = std::fs::read(&screenshot).unwrap();
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    // IHDR: width and height, big-endian, at bytes 16..24.
    assert_eq!(&png[16..24], &[0, 0, 5, 0, 0, 0, 3, 32], "1280 x 800");
    assert!(png.len() > 10_000, "{} bytes: an empty page?", png.len());
    daemon.stop().await;
}
