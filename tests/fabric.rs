//! Tenants whose token is for Microsoft Fabric (`resource = "fabric"`), configured as a file
//! says it, against the simulated Entra ID and Fabric API, with an in-process daemon: the token
//! is asked for Fabric's audience, and the probe calls Fabric's List Workspaces.

mod common;

use common::process::entry;
use common::*;
use std::path::Path;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use powerbi_tokend::config::Config;
use powerbi_tokend_sim::{PowerBiBehavior, PowerBiEndpoint, SimEntra};

const FABRIC: &str = "https://api.fabric.microsoft.com";

/// Tenants `names` (tenant ids `<name>.example.com`) of `sim`, all with `resource = "fabric"`
/// and a probe, parsed from a config file as the daemon reads one.
fn fabric_config(sim: &SimEntra, dir: &Path, api: &str, names: &[&str]) -> Config {
    let secret = dir.join("client-secret");
    std::fs::write(&secret, SECRET).unwrap();
    let mut text = format!(
        r#"[defaults]
authority_host = "{authority}"
fabric_api = "{authority}"
client_id = "{CLIENT_ID}"
client_secret = {{ file = "{secret}" }}
api = "{api}"
resource = "fabric"
probe = {{ interval = "1h" }}
sinks = [ {{ type = "file", path = "{dir}/{{name}}.json" }} ]
"#,
        authority = sim.authority_host(),
        secret = secret.display(),
        dir = dir.display(),
    );
    for name in names {
        text.push_str(&format!(
            "\n[[tenant]]\nname = \"{name}\"\ntenant_id = \"{name}.example.com\"\n"
        ));
    }
    let mut config = powerbi_tokend::config::parse(&text, &dir.join("config.toml")).unwrap();
    config.server.listen = "127.0.0.1:0".parse().unwrap();
    config.daemon = fast_daemon();
    config
}

/// The `aud` claim of the JWT-shaped access token in `name`'s token file.
fn audience(dir: &Path, name: &str) -> serde_json::Value {
    let token = token_in(&dir.join(format!("{name}.json"))).expect("a token file");
    let payload = token.split('.').nth(1).expect("JWT-shaped");
    let claims: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
    claims["aud"].clone()
}

#[tokio::test]
async fn a_fabric_tenant_gets_a_token_for_fabric_and_its_probe_lists_fabric_workspaces() {
    let Fixture { sim, dir } = fixture(
        &["v2.example.com", "v1.example.com"],
        Duration::from_secs(3600),
    )
    .await;
    let mut config = fabric_config(&sim, dir.path(), "v2", &["v2"]);
    config
        .tenants
        .extend(fabric_config(&sim, dir.path(), "v1", &["v1"]).tenants);
    let daemon = start_daemon(config).await;

    let body = daemon
        .wait_for_get("both tenants probed", "/status", |_, body| {
            let status: serde_json::Value = serde_json::from_str(body).unwrap();
            ["v2", "v1"]
                .iter()
                .all(|name| entry(&status, name)["api_probe"]["ok"] == true)
        })
        .await;
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    for (name, asked) in [
        ("v2", ("scope", "https://api.fabric.microsoft.com/.default")),
        ("v1", ("resource", FABRIC)),
    ] {
        let tenant = entry(&status, name);
        assert_eq!(tenant["state"], "healthy", "{tenant}");
        // /status says which API the probe calls.
        assert_eq!(tenant["api_probe"]["api"], "fabric", "{tenant}");
        // The token was asked for, and issued for, Fabric's audience.
        let request = sim
            .last_request(&format!("{name}.example.com"))
            .expect("a token request");
        assert!(
            request
                .form
                .contains(&(asked.0.to_owned(), asked.1.to_owned())),
            "{:?}",
            request.form
        );
        assert_eq!(audience(dir.path(), name), FABRIC);
        // The probe went to Fabric, not to Power BI.
        let tenant_id = format!("{name}.example.com");
        assert!(sim.powerbi_request_count(&tenant_id, PowerBiEndpoint::FabricWorkspaces) >= 1);
        assert_eq!(
            sim.powerbi_request_count(&tenant_id, PowerBiEndpoint::Groups),
            0
        );
    }
    let (_, metrics) = daemon.get("/metrics").await;
    for name in ["v2", "v1"] {
        assert_eq!(
            sample_value(
                &metrics,
                &format!("powerbi_tokend_api_probe_success{{tenant=\"{name}\"}}")
            )
            .as_deref(),
            Some("1"),
            "{metrics}"
        );
    }
    daemon.stop().await;
}

#[tokio::test]
async fn a_fabric_tenant_that_does_not_allow_service_principals_is_api_denied_with_fabrics_reason()
{
    let Fixture { sim, dir } = fixture(
        &["denied.example.com", "allowed.example.com"],
        Duration::from_secs(3600),
    )
    .await;
    sim.set_powerbi_behavior("denied.example.com", PowerBiBehavior::NotAuthorized);
    let config = fabric_config(&sim, dir.path(), "v2", &["denied", "allowed"]);
    let daemon = start_daemon(config).await;

    let body = daemon
        .wait_for_get("both tenants probed", "/status", |_, body| {
            let status: serde_json::Value = serde_json::from_str(body).unwrap();
            ["denied", "allowed"]
                .iter()
                .all(|name| !entry(&status, name)["api_probe"].is_null())
        })
        .await;
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    let denied = entry(&status, "denied");
    assert_eq!(denied["state"], "api_denied", "{denied}");
    // The token side is untouched: Entra issued it, and it is fresh.
    assert!(denied["last_error"].is_null(), "{denied}");
    let probe = &denied["api_probe"];
    assert_eq!(probe["api"], "fabric", "{denied}");
    assert_eq!(probe["ok"], false, "{denied}");
    let failure = &probe["failure"];
    assert_eq!(failure["reason"], "not_authorized", "{denied}");
    assert_eq!(failure["http_status"], 401, "{denied}");
    assert_eq!(failure["error_code"], "Unauthorized", "{denied}");
    // Fabric's requestId, for Microsoft support.
    assert_eq!(
        failure["trace_id"].as_str().map(str::len),
        Some(36),
        "{denied}"
    );
    assert!(
        failure["message"]
            .as_str()
            .is_some_and(|message| message.starts_with("HTTP 401: ")),
        "{denied}"
    );
    assert!(
        probe["advice"]
            .as_str()
            .is_some_and(|advice| advice.contains("Service principals can use Fabric APIs")),
        "{denied}"
    );
    assert_eq!(entry(&status, "allowed")["state"], "healthy");

    // A fresh token the API refuses does not make the daemon unready.
    let (code, _) = daemon.get("/readyz").await;
    assert_eq!(code, 200);
    let (_, metrics) = daemon.get("/metrics").await;
    for (line, expected) in [
        (
            "powerbi_tokend_api_probe_success{tenant=\"denied\"}",
            Some("0"),
        ),
        (
            "powerbi_tokend_api_probe_success{tenant=\"allowed\"}",
            Some("1"),
        ),
        ("powerbi_tokend_tenants{state=\"api_denied\"}", Some("1")),
        (
            "powerbi_tokend_tenant_state{state=\"api_denied\",tenant=\"denied\"}",
            Some("1"),
        ),
    ] {
        assert_eq!(
            sample_value(&metrics, line).as_deref(),
            expected,
            "{line}\n{metrics}"
        );
    }
    for line in [
        "powerbi_tokend_api_probe_failures_total{reason=\"not_authorized\",tenant=\"denied\"}",
        "powerbi_tokend_tenants_api_probe_failures_total{reason=\"not_authorized\"}",
    ] {
        assert!(
            sample_value(&metrics, line).is_some_and(|count| count != "0"),
            "{line}\n{metrics}"
        );
    }
    for text in [&body, &metrics] {
        assert!(!text.contains(SECRET));
        assert!(!text.contains("eyJ"), "a JWT-shaped string leaked");
    }
    daemon.stop().await;
}
