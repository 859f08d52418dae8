//! The alerting loop with the real tools: promtool checks the exposition and the rule tests, and
//! a real Prometheus server scrapes the daemon and evaluates the shipped alert expressions.
//!
//! These need `promtool` and `prometheus` (Debian package `prometheus`), so they are ignored by a
//! plain `cargo test` (the runner reports them as ignored) and run by
//! `cargo test -- --include-ignored`, as CI does; there a missing program fails the test.

mod common;

use common::*;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use powerbi_tokend::sim::SimEntra;

const REPO: &str = env!("CARGO_MANIFEST_DIR");

/// A daemon with one healthy tenant and one whose secret Entra rejects.
async fn daemon_with_good_and_bad(sim: &SimEntra, dir: &Path) -> Running {
    reject_secret(sim, "bad.example.com");
    let config = config(
        vec![
            tenant(sim, "good", "good.example.com", dir),
            tenant(sim, "bad", "bad.example.com", dir),
        ],
        fast_daemon(),
    );
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs promtool and prometheus (Debian package prometheus); `cargo test -- --include-ignored` runs it"]
async fn promtool_check_metrics_finds_nothing() {
    let promtool = program("promtool", "prometheus");
    let Fixture { sim, dir } = fixture(
        &["good.example.com", "bad.example.com"],
        Duration::from_secs(3600),
    )
    .await;
    let daemon = daemon_with_good_and_bad(&sim, dir.path()).await;
    let (_, metrics) = daemon.get("/metrics").await;
    assert!(metrics.contains("powerbi_tokend_refresh_failures_total"));
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
    assert!(
        findings.trim().is_empty(),
        "promtool check metrics reported:\n{findings}"
    );
    daemon.stop().await;
}

#[test]
#[ignore = "needs promtool and prometheus (Debian package prometheus); `cargo test -- --include-ignored` runs it"]
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs promtool and prometheus (Debian package prometheus); `cargo test -- --include-ignored` runs it"]
async fn prometheus_fires_refresh_failing_for_the_bad_tenant_only() {
    let prometheus = program("prometheus", "prometheus");
    let Fixture { sim, dir } = fixture(
        &["good.example.com", "bad.example.com"],
        Duration::from_secs(3600),
    )
    .await;
    let tokens = dir.path().join("tokens");
    let daemon = daemon_with_good_and_bad(&sim, &tokens).await;

    // The scrape job has a name of its own: the rules select on metric names, not on the job.
    let rules = dir.path().join("alerts.yml");
    std::fs::write(&rules, rules_with_short_for()).unwrap();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\nscrape_configs:\n  - job_name: any-name\n    static_configs:\n      - targets: ['{}']\n",
            rules.display(),
            daemon.addr
        ),
    )
    .unwrap();
    let port = free_port();
    let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
    let _server = KillOnDrop(
        Command::new(prometheus)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    );

    let url = format!("http://127.0.0.1:{port}/api/v1/alerts");
    let start = Instant::now();
    let alerts = loop {
        if let Some(body) = http_get(&url).await {
            let value: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
            let alerts = value["data"]["alerts"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let firing_for_bad = alerts.iter().any(|a| {
                a["labels"]["alertname"] == "PowerBITokendRefreshFailing"
                    && a["labels"]["tenant"] == "bad"
                    && a["state"] == "firing"
            });
            if firing_for_bad {
                break alerts;
            }
        }
        if start.elapsed() > Duration::from_secs(90) {
            let log =
                std::fs::read_to_string(dir.path().join("prometheus.log")).unwrap_or_default();
            panic!(
                "PowerBITokendRefreshFailing did not fire for tenant bad within 90 s; Prometheus log:\n{log}"
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let about_good: Vec<_> = alerts
        .iter()
        .filter(|a| a["labels"]["tenant"] == "good")
        .collect();
    assert!(
        about_good.is_empty(),
        "alerts for the healthy tenant: {about_good:?}"
    );
    // The misconfiguration alert names the bad tenant too.
    assert!(
        alerts.iter().any(|a| {
            a["labels"]["alertname"] == "PowerBITokendTenantMisconfigured"
                && a["labels"]["tenant"] == "bad"
        }),
        "{alerts:?}"
    );
    daemon.stop().await;
}
