//! The Power BI access probe against the simulated Power BI API, with an in-process daemon.

mod common;

use common::process::entry;
use common::*;
use std::time::Duration;

use powerbi_tokend::config::{PowerBiConfig, ProbeConfig, RestApi, TenantConfig};
use powerbi_tokend_sim::{PowerBiBehavior, PowerBiEndpoint, SimEntra};

/// A tenant of the simulator with a probe every `interval` against `api_root`.
fn probing(
    sim: &SimEntra,
    name: &str,
    dir: &std::path::Path,
    api_root: &str,
    interval: Duration,
) -> TenantConfig {
    let mut tenant = tenant(sim, name, &format!("{name}.example.com"), dir);
    tenant.powerbi = Some(Box::new(PowerBiConfig {
        api: RestApi::PowerBi,
        api_root: api_root.into(),
        probe: Some(ProbeConfig {
            interval,
            path: ProbeConfig::DEFAULT_PATH.to_owned(),
        }),
        embeds: Vec::new(),
    }));
    tenant
}

#[tokio::test]
async fn each_probe_outcome_is_classified_in_status_and_metrics_and_readiness_stays() {
    let cases = [
        ("ok", PowerBiBehavior::Ok, None, "healthy"),
        (
            "denied",
            PowerBiBehavior::NotAuthorized,
            Some(("not_authorized", 401)),
            "api_denied",
        ),
        (
            "skewed",
            PowerBiBehavior::TokenExpired,
            Some(("token_expired", 403)),
            "api_failing",
        ),
        (
            "missing",
            PowerBiBehavior::NotFound,
            Some(("not_found", 404)),
            "api_failing",
        ),
        (
            "busy",
            PowerBiBehavior::Throttled {
                retry_after_secs: 3600,
            },
            Some(("throttled", 429)),
            "api_failing",
        ),
        (
            "broken",
            PowerBiBehavior::ServerError,
            Some(("server_error", 500)),
            "api_failing",
        ),
    ];
    let ids: Vec<String> = cases
        .iter()
        .map(|(name, ..)| format!("{name}.example.com"))
        .chain(["offline.example.com".to_owned()])
        .collect();
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    let Fixture { sim, dir } = fixture(&ids, Duration::from_secs(3600)).await;
    let hour = Duration::from_secs(3600);
    let mut tenants = Vec::new();
    for (name, behavior, ..) in &cases {
        sim.set_powerbi_behavior(&format!("{name}.example.com"), *behavior);
        tenants.push(probing(&sim, name, dir.path(), &sim.powerbi_api(), hour));
    }
    // Nothing listens on port 9 of loopback: no answer at all.
    tenants.push(probing(
        &sim,
        "offline",
        dir.path(),
        "http://127.0.0.1:9",
        hour,
    ));
    let daemon = start_daemon(config(tenants, fast_daemon())).await;

    let body = daemon
        .wait_for_get("every tenant probed once", "/status", |_, body| {
            let status: serde_json::Value = serde_json::from_str(body).unwrap();
            status["tenants"]
                .as_array()
                .is_some_and(|all| all.len() == 7 && all.iter().all(|t| !t["api_probe"].is_null()))
        })
        .await;
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    for (name, _, failure, state) in &cases {
        let tenant = entry(&status, name);
        assert_eq!(tenant["state"], *state, "{tenant}");
        // The token side is untouched: fresh, and no refresh error.
        assert!(tenant["last_error"].is_null(), "{tenant}");
        assert!(tenant["time_to_expiry_seconds"].as_f64().unwrap() > 3000.0);
        let probe = &tenant["api_probe"];
        match failure {
            None => {
                assert_eq!(probe["ok"], true, "{tenant}");
                assert!(probe["failure"].is_null());
            }
            Some((reason, code)) => {
                assert_eq!(probe["ok"], false, "{tenant}");
                assert_eq!(probe["failure"]["reason"], *reason, "{tenant}");
                assert_eq!(probe["failure"]["http_status"], *code, "{tenant}");
                // Power BI's RequestId, for Microsoft support.
                let request_id = probe["failure"]["trace_id"].as_str().unwrap();
                assert_eq!(request_id.len(), 36, "{request_id}");
                assert!(probe["advice"].as_str().is_some_and(|a| !a.is_empty()));
            }
        }
    }
    let denied = entry(&status, "denied");
    assert_eq!(
        denied["api_probe"]["failure"]["error_code"],
        "PowerBINotAuthorizedException"
    );
    assert!(
        denied["api_probe"]["advice"]
            .as_str()
            .unwrap()
            .contains("Service principals can use Fabric APIs")
    );
    let offline = entry(&status, "offline");
    assert_eq!(offline["state"], "api_failing");
    assert_eq!(offline["api_probe"]["failure"]["reason"], "network");

    // A fresh token that Power BI refuses does not make the daemon unready.
    let (code, _) = daemon.get("/readyz").await;
    assert_eq!(code, 200);

    let (_, metrics) = daemon.get("/metrics").await;
    assert_eq!(
        sample_value(&metrics, "powerbi_tokend_api_probe_success{tenant=\"ok\"}").as_deref(),
        Some("1")
    );
    assert_eq!(
        sample_value(
            &metrics,
            "powerbi_tokend_api_probe_success{tenant=\"denied\"}"
        )
        .as_deref(),
        Some("0")
    );
    assert!(
        sample_value(
            &metrics,
            "powerbi_tokend_api_probe_last_timestamp_seconds{tenant=\"denied\"}"
        )
        .is_some()
    );
    for (reason, tenant) in [
        ("not_authorized", "denied"),
        ("token_expired", "skewed"),
        ("not_found", "missing"),
        ("throttled", "busy"),
        ("server_error", "broken"),
        ("network", "offline"),
    ] {
        let line = format!(
            "powerbi_tokend_api_probe_failures_total{{reason=\"{reason}\",tenant=\"{tenant}\"}}"
        );
        assert!(
            sample_value(&metrics, &line).is_some_and(|count| count != "0"),
            "{line} missing:\n{metrics}"
        );
        let all = format!("powerbi_tokend_tenants_api_probe_failures_total{{reason=\"{reason}\"}}");
        assert!(
            sample_value(&metrics, &all).is_some_and(|count| count != "0"),
            "{all}"
        );
    }
    // A probe writes nothing: no family of the probe has a `sink` reason, per tenant or over
    // all of them.
    assert!(
        !metrics
            .lines()
            .any(|line| line.contains("api_probe_failures_total")
                && line.contains("reason=\"sink\"")),
        "{metrics}"
    );
    assert_eq!(
        sample_value(&metrics, "powerbi_tokend_tenants{state=\"api_denied\"}").as_deref(),
        Some("1")
    );
    assert_eq!(
        sample_value(&metrics, "powerbi_tokend_tenants{state=\"api_failing\"}").as_deref(),
        Some("5")
    );
    assert_eq!(
        sample_value(
            &metrics,
            "powerbi_tokend_tenant_state{state=\"api_denied\",tenant=\"denied\"}"
        )
        .as_deref(),
        Some("1")
    );
    // One probe per tenant at least (`skewed` refreshes at once and probes again).
    let probes: u64 = sample_value(&metrics, "powerbi_tokend_api_probe_duration_seconds_count")
        .and_then(|count| count.parse().ok())
        .unwrap_or(0);
    assert!(probes >= 7, "{probes} probes timed");
    // Throttled: Retry-After (an hour) holds the next probe back.
    assert_eq!(
        sim.powerbi_request_count("busy.example.com", PowerBiEndpoint::Groups),
        1
    );
    // No token and no secret in what the daemon shows.
    for text in [&body, &metrics] {
        assert!(!text.contains(SECRET));
        assert!(!text.contains("eyJ"), "a JWT-shaped string leaked");
    }
    daemon.stop().await;
}

#[tokio::test]
async fn the_probe_follows_every_refresh_and_its_interval_and_sees_recovery() {
    let Fixture { sim, dir } = fixture(
        &["fresh.example.com", "steady.example.com"],
        Duration::from_secs(4),
    )
    .await;
    // `fresh`: a 4-second token refreshed every 2 s, and probes an hour apart: every probe is
    // the one after a refresh.
    let fresh = probing(
        &sim,
        "fresh",
        dir.path(),
        &sim.powerbi_api(),
        Duration::from_secs(3600),
    );
    register(&sim, "steady.example.com", Duration::from_secs(3600));
    let steady = probing(
        &sim,
        "steady",
        dir.path(),
        &sim.powerbi_api(),
        Duration::from_secs(1),
    );
    sim.set_powerbi_behavior("steady.example.com", PowerBiBehavior::NotAuthorized);
    let daemon = start_daemon(config(vec![fresh, steady], fast_daemon())).await;

    wait_for("three refreshes of fresh", Duration::from_secs(15), || {
        sim.issued_count("fresh.example.com") >= 3
    })
    .await;
    wait_for("a probe after each refresh", Duration::from_secs(5), || {
        sim.powerbi_request_count("fresh.example.com", PowerBiEndpoint::Groups) >= 3
    })
    .await;
    let probes = sim.powerbi_request_count("fresh.example.com", PowerBiEndpoint::Groups);
    let refreshes = sim.issued_count("fresh.example.com");
    assert!(
        probes <= refreshes,
        "{probes} probes for {refreshes} tokens"
    );

    // `steady`: one token, a probe a second; the admin fixes the setting and the state follows.
    wait_for("probes every second", Duration::from_secs(10), || {
        sim.powerbi_request_count("steady.example.com", PowerBiEndpoint::Groups) >= 3
    })
    .await;
    assert_eq!(sim.issued_count("steady.example.com"), 1);
    daemon
        .wait_for_get("steady denied", "/status", |_, body| {
            body.contains("\"api_denied\"")
        })
        .await;
    sim.set_powerbi_behavior("steady.example.com", PowerBiBehavior::Ok);
    daemon
        .wait_for_get("steady healthy again", "/status", |_, body| {
            let status: serde_json::Value = serde_json::from_str(body).unwrap();
            entry(&status, "steady")["state"] == "healthy"
        })
        .await;
    daemon.stop().await;
}

#[tokio::test]
async fn power_bi_saying_token_expired_brings_a_fresh_token_at_once() {
    let Fixture { sim, dir } = fixture(&["skewed.example.com"], Duration::from_secs(3600)).await;
    sim.set_powerbi_behavior("skewed.example.com", PowerBiBehavior::TokenExpired);
    let tenant = probing(
        &sim,
        "skewed",
        dir.path(),
        &sim.powerbi_api(),
        Duration::from_secs(3600),
    );
    let daemon = start_daemon(config(vec![tenant], fast_daemon())).await;
    // An hour-long token would not be refreshed for half an hour; Power BI's 403 TokenExpired
    // makes the daemon fetch another one after the minimum interval between attempts.
    wait_for("a second token", Duration::from_secs(10), || {
        sim.issued_count("skewed.example.com") >= 2
    })
    .await;
    daemon.stop().await;
}
