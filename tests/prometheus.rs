//! The alerting loop with the real tools: promtool checks the exposition and the rule tests, and
//! a real Prometheus server scrapes the daemon and evaluates the shipped alert expressions.
//!
//! These need `promtool` and `prometheus` (Debian package `prometheus`): where either is missing,
//! `cargo test` reports them as ignored, "skipped: needs …" (see build.rs); with `CI=true` they
//! run, and a missing program fails them.

mod common;

use common::*;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use powerbi_tokend::config::PerTenantMetrics;
use powerbi_tokend_sim::SimEntra;
use serde_json::Value;

const REPO: &str = env!("CARGO_MANIFEST_DIR");

/// A daemon with one healthy tenant and one whose secret Entra rejects, exporting per-tenant
/// series as `mode` says.
async fn daemon_with_good_and_bad(sim: &SimEntra, dir: &Path, mode: PerTenantMetrics) -> Running {
    reject_secret(sim, "bad.example.com");
    let mut config = config(
        vec![
            tenant(sim, "good", "good.example.com", dir),
            tenant(sim, "bad", "bad.example.com", dir),
        ],
        fast_daemon(),
    );
    config.server.per_tenant_metrics = mode;
    let daemon = start_daemon(config).await;
    wait_for("both first attempts", Duration::from_secs(5), || {
        dir.join("good.json").exists() && sim.request_count("bad.example.com") >= 1
    })
    .await;
    daemon
}

async fn http_get(url: &str) -> Option<String> {
    let client = reqwest::Client::builder().no_proxy().build().ok()?;
    let response = client.get(url).send().await.ok()?;
    response.text().await.ok()
}

/// What `promtool check metrics` says about an exposition: empty when it finds nothing.
fn promtool_findings(promtool: &Path, metrics: &str) -> String {
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(metrics.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let findings = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{findings}"
    );
    findings
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(all(has_promtool, has_prometheus)),
    ignore = "skipped: needs promtool and prometheus (Debian package prometheus)"
)]
async fn promtool_check_metrics_finds_nothing_in_any_mode() {
    let promtool = program("promtool", "prometheus");
    let Fixture { sim, dir } = fixture(
        &["good.example.com", "bad.example.com"],
        Duration::from_secs(3600),
    )
    .await;
    for mode in PerTenantMetrics::ALL {
        let tokens = dir.path().join(mode.as_str());
        let daemon = daemon_with_good_and_bad(&sim, &tokens, mode).await;
        let metrics = daemon
            .wait_for_get("the bad tenant's failure", "/metrics", |_, body| {
                body.contains("powerbi_tokend_tenants{state=\"misconfigured\"} 1")
            })
            .await;
        assert!(metrics.contains("powerbi_tokend_tenants_refresh_failures_total"));
        assert!(metrics.contains("powerbi_tokend_tenants_token_time_to_expiry_seconds_bucket"));
        let named = |tenant: &str| metrics.contains(&format!("tenant=\"{tenant}\""));
        match mode {
            PerTenantMetrics::All => assert!(named("good") && named("bad"), "{metrics}"),
            PerTenantMetrics::Unhealthy => assert!(!named("good") && named("bad"), "{metrics}"),
            PerTenantMetrics::None => assert!(!metrics.contains("tenant="), "{metrics}"),
        }
        let findings = promtool_findings(&promtool, &metrics);
        assert!(
            findings.trim().is_empty(),
            "promtool check metrics reported for {mode:?}:\n{findings}"
        );
        daemon.stop().await;
    }
}

#[test]
#[cfg_attr(
    not(all(has_promtool, has_prometheus)),
    ignore = "skipped: needs promtool and prometheus (Debian package prometheus)"
)]
fn shipped_rules_pass_promtool() {
    let promtool = program("promtool", "prometheus");
    let out = Command::new(&promtool)
        .args(["check", "rules", "deploy/prometheus/alerts.yml"])
        .current_dir(REPO)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let out = Command::new(&promtool)
        .args(["test", "rules", "deploy/prometheus/alerts_test.yml"])
        .current_dir(REPO)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "promtool test rules failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The shipped rules with every `for:` shortened to 2s; expressions untouched.
fn rules_with_short_for() -> String {
    let shipped =
        std::fs::read_to_string(Path::new(REPO).join("deploy/prometheus/alerts.yml")).unwrap();
    shipped
        .lines()
        .map(|line| {
            let trimmed = line.trim_start();
            if trimmed.starts_with("for:") {
                format!("{}for: 2s", &line[..line.len() - trimmed.len()])
            } else {
                line.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// Kills the Prometheus server when the test ends, however it ends.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A real Prometheus scraping one daemon every second with the shipped rules (short `for:`).
struct Prometheus {
    /// Its HTTP API.
    port: u16,
    /// Its log, shown when a wait times out.
    log: PathBuf,
    /// Stops it with the test.
    _server: KillOnDrop,
}

impl Prometheus {
    fn start(dir: &Path, target: std::net::SocketAddr) -> Prometheus {
        Prometheus::start_with(dir, target, "")
    }

    /// [`Prometheus::start`] with `job` added to the scrape job (`scheme`, `tls_config`,
    /// `basic_auth`…, indented as keys of the job).
    fn start_with(dir: &Path, target: std::net::SocketAddr, job: &str) -> Prometheus {
        let prometheus = program("prometheus", "prometheus");
        // The scrape job has a name of its own: the rules select on metric names, not on the job.
        let rules = dir.join("alerts.yml");
        std::fs::write(&rules, rules_with_short_for()).unwrap();
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\nscrape_configs:\n  - job_name: any-name\n    static_configs:\n      - targets: ['{target}']\n{job}",
                rules.display(),
            ),
        )
        .unwrap();
        let port = free_port();
        let log = dir.join("prometheus.log");
        let server = KillOnDrop(
            Command::new(prometheus)
                .arg(format!("--config.file={}", config.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.join("data").display()
                ))
                .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).unwrap())
                .spawn()
                .unwrap(),
        );
        Prometheus {
            port,
            log,
            _server: server,
        }
    }

    /// Every alert, pending or firing.
    async fn alerts(&self) -> Vec<Value> {
        let url = format!("http://127.0.0.1:{}/api/v1/alerts", self.port);
        let Some(body) = http_get(&url).await else {
            return Vec::new();
        };
        let value: Value = serde_json::from_str(&body).unwrap_or_default();
        value["data"]["alerts"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// The result vector of an instant query; empty while Prometheus is not up yet.
    async fn query(&self, expr: &str) -> Vec<Value> {
        let client = reqwest::Client::builder().no_proxy().build().unwrap();
        let Ok(response) = client
            .get(format!("http://127.0.0.1:{}/api/v1/query", self.port))
            .query(&[("query", expr)])
            .send()
            .await
        else {
            return Vec::new();
        };
        let value: Value = response.json().await.unwrap_or_default();
        assert_ne!(value["status"], "error", "{expr}: {value}");
        value["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// Polls until `done` holds, at most 90 s; panics with `what` and Prometheus' log.
    async fn wait_until<T>(&self, what: &str, mut done: impl AsyncFnMut() -> Option<T>) -> T {
        let start = Instant::now();
        loop {
            if let Some(result) = done().await {
                return result;
            }
            if start.elapsed() > Duration::from_secs(90) {
                let log = std::fs::read_to_string(&self.log).unwrap_or_default();
                panic!("{what} not within 90 s; Prometheus log:\n{log}");
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// The alerts once one named `name` fires with `tenant` as its tenant label (`None`: with
    /// no tenant label).
    async fn wait_for_firing(&self, name: &str, tenant: Option<&str>) -> Vec<Value> {
        self.wait_until(&format!("{name} firing for {tenant:?}"), async || {
            let alerts = self.alerts().await;
            let firing = alerts.iter().any(|a| {
                a["labels"]["alertname"] == name
                    && a["labels"]["tenant"].as_str() == tenant
                    && a["state"] == "firing"
            });
            firing.then_some(alerts)
        })
        .await
    }
}

/// Every query of the shipped Grafana dashboard: (panel title, expression with `$tenant` set to
/// all tenants).
fn dashboard_queries() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(Path::new(REPO).join("deploy/grafana/powerbi-tokend.json"))
        .unwrap();
    let dashboard: Value = serde_json::from_str(&text).unwrap();
    let mut queries = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap();
            queries.push((
                panel["title"].as_str().unwrap().to_owned(),
                expr.replace("$tenant", ".*"),
            ));
        }
    }
    assert!(queries.len() >= 10, "{queries:?}");
    queries
}

/// Runs every dashboard query until each one without a tenant filter has data (rates need two
/// scrapes), then returns the tenants the per-tenant queries show.
async fn dashboard_tenants(prometheus: &Prometheus) -> BTreeSet<String> {
    let queries = dashboard_queries();
    prometheus
        .wait_until("data in every fleet-wide dashboard panel", async || {
            let mut tenants = BTreeSet::new();
            for (title, expr) in &queries {
                let result = prometheus.query(expr).await;
                if expr.contains("tenant=~") {
                    for sample in &result {
                        if let Some(tenant) = sample["metric"]["tenant"].as_str() {
                            tenants.insert(tenant.to_owned());
                        }
                    }
                } else if result.is_empty() {
                    eprintln!("waiting for data in {title:?}: {expr}");
                    return None;
                }
            }
            Some(tenants)
        })
        .await
}

fn tenants_of(alerts: &[Value]) -> BTreeSet<Option<String>> {
    alerts
        .iter()
        .map(|a| a["labels"]["tenant"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(all(has_promtool, has_prometheus)),
    ignore = "skipped: needs promtool and prometheus (Debian package prometheus)"
)]
async fn prometheus_fires_refresh_failing_for_the_bad_tenant_only() {
    let Fixture { sim, dir } = fixture(
        &["good.example.com", "bad.example.com"],
        Duration::from_secs(3600),
    )
    .await;
    let tokens = dir.path().join("tokens");
    let daemon = daemon_with_good_and_bad(&sim, &tokens, PerTenantMetrics::All).await;
    let prometheus = Prometheus::start(dir.path(), daemon.addr);
    let alerts = prometheus
        .wait_for_firing("PowerBITokendRefreshFailing", Some("bad"))
        .await;
    // Only the bad tenant, named: the aggregates' branch stays silent in mode all.
    assert_eq!(
        tenants_of(&alerts),
        BTreeSet::from([Some("bad".to_owned())]),
        "{alerts:?}"
    );
    // The misconfiguration alert names the bad tenant too.
    assert!(
        alerts.iter().any(|a| {
            a["labels"]["alertname"] == "PowerBITokendTenantMisconfigured"
                && a["labels"]["tenant"] == "bad"
        }),
        "{alerts:?}"
    );
    let shown = dashboard_tenants(&prometheus).await;
    assert_eq!(shown, BTreeSet::from(["bad".to_owned(), "good".to_owned()]));
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(all(has_promtool, has_prometheus)),
    ignore = "skipped: needs promtool and prometheus (Debian package prometheus)"
)]
async fn in_mode_unhealthy_the_alerts_and_the_dashboard_name_the_bad_tenant_only() {
    let Fixture { sim, dir } = fixture(
        &["good.example.com", "bad.example.com"],
        Duration::from_secs(3600),
    )
    .await;
    let tokens = dir.path().join("tokens");
    let daemon = daemon_with_good_and_bad(&sim, &tokens, PerTenantMetrics::Unhealthy).await;
    let prometheus = Prometheus::start(dir.path(), daemon.addr);
    let alerts = prometheus
        .wait_for_firing("PowerBITokendRefreshFailing", Some("bad"))
        .await;
    assert_eq!(
        tenants_of(&alerts),
        BTreeSet::from([Some("bad".to_owned())]),
        "{alerts:?}"
    );
    let shown = dashboard_tenants(&prometheus).await;
    assert_eq!(shown, BTreeSet::from(["bad".to_owned()]));
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(all(has_promtool, has_prometheus)),
    ignore = "skipped: needs promtool and prometheus (Debian package prometheus)"
)]
async fn in_mode_none_the_alerts_fire_on_the_aggregates_and_the_dashboard_has_them() {
    let Fixture { sim, dir } = fixture(
        &["good.example.com", "bad.example.com"],
        Duration::from_secs(3600),
    )
    .await;
    let tokens = dir.path().join("tokens");
    let daemon = daemon_with_good_and_bad(&sim, &tokens, PerTenantMetrics::None).await;
    let prometheus = Prometheus::start(dir.path(), daemon.addr);
    prometheus
        .wait_for_firing("PowerBITokendRefreshFailing", None)
        .await;
    let alerts = prometheus
        .wait_for_firing("PowerBITokendTenantMisconfigured", None)
        .await;
    assert_eq!(tenants_of(&alerts), BTreeSet::from([None]), "{alerts:?}");
    let failing = alerts
        .iter()
        .find(|a| a["labels"]["alertname"] == "PowerBITokendRefreshFailing")
        .unwrap();
    assert_eq!(
        failing["annotations"]["summary"],
        format!(
            "Power BI token refreshes keep failing for 1 tenant(s) on {}",
            daemon.addr
        ),
        "{failing}"
    );
    // The `le` text the rules match is the one Prometheus stored.
    let expiring = prometheus
        .query("powerbi_tokend_tenants_token_time_to_expiry_seconds_bucket{state=\"healthy\",le=\"3600.0\"}")
        .await;
    assert_eq!(expiring.len(), 1, "{expiring:?}");
    assert_eq!(expiring[0]["value"][1], "1", "{expiring:?}");
    let shown = dashboard_tenants(&prometheus).await;
    assert!(shown.is_empty(), "{shown:?}");
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(has_prometheus),
    ignore = "skipped: needs prometheus (Debian package prometheus)"
)]
async fn prometheus_scrapes_over_https_with_basic_auth_as_the_monitoring_chapter_says() {
    let Fixture { sim, dir } = fixture(&["good.example.com"], Duration::from_secs(3600)).await;
    let made = pki::loopback_pki().unwrap();
    let files = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let mut config = config(
        vec![tenant(&sim, "good", "good.example.com", dir.path())],
        fast_daemon(),
    );
    config.server.tls = Some(powerbi_tokend::config::ServerTls {
        cert_file: files("admin.crt", &made.cert_pem),
        key_file: files("admin.key", &made.key_pem),
        lines: [None, None],
    });
    config.server.basic_auth = Some(powerbi_tokend::config::BasicAuthConfig {
        users: [(
            "prometheus".to_owned(),
            bcrypt::hash("the password", 4).unwrap(),
        )]
        .into(),
        healthz_open: false,
    });
    let daemon = start_daemon(config).await;
    // The scrape job of docs/monitoring.md, "Admin endpoint security".
    let job = format!(
        "    scheme: https\n    tls_config:\n      ca_file: {}\n    basic_auth:\n      username: prometheus\n      password_file: {}\n",
        files("ca.crt", &made.ca_pem).display(),
        files("password", "the password\n").display(),
    );
    let prometheus = Prometheus::start_with(dir.path(), daemon.addr, &job);
    prometheus
        .wait_until("a scrape over HTTPS with basic auth", async || {
            let up = prometheus.query("up{job=\"any-name\"} == 1").await;
            let tenants = prometheus
                .query("powerbi_tokend_tenants{state=\"healthy\"} == 1")
                .await;
            (!up.is_empty() && !tenants.is_empty()).then_some(())
        })
        .await;
    // Every scrape was let in.
    let refused = prometheus
        .query("sum(powerbi_tokend_admin_auth_failures_total) > 0")
        .await;
    assert!(refused.is_empty(), "{refused:?}");
    daemon.stop().await;
}
