//! Embed tokens against the simulated Power BI API: the request, the refreshes, the cap at the
//! Entra token's expiry, failures, the warm start, and the log of the real binary.

mod common;

use common::process::{Spawned, entry, wait_for_status};
use common::*;
use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use powerbi_tokend::config::{
    AccessLevel, EffectiveIdentity, EmbedConfig, FileFormat, FileSinkConfig, PerTenantMetrics,
    PowerBiConfig, RestApi, SinkConfig, TenantConfig,
};
use powerbi_tokend_sim::{PowerBiBehavior, PowerBiEndpoint, SimEntra};

const REPORT: &str = "5b218778-0000-4b8a-9c7c-000000000004";
const OTHER_REPORT: &str = "6c329889-0000-4b8a-9c7c-000000000007";
const DATASET: &str = "cfafbeb1-0000-4d0c-896e-000000000003";

/// An embed token for two reports and a dataset, written to `<dir>/<tenant>.sales.embed.json`.
fn sales(dir: &Path, tenant: &str, access_level: AccessLevel) -> EmbedConfig {
    EmbedConfig {
        name: "sales".to_owned(),
        reports: vec![REPORT.to_owned(), OTHER_REPORT.to_owned()],
        datasets: vec![DATASET.to_owned()],
        target_workspaces: Vec::new(),
        access_level,
        lifetime: None,
        xmla_read_only: false,
        workspace: None,
        identities: Vec::new(),
        datasource_identities: Vec::new(),
        sinks: vec![SinkConfig::File(FileSinkConfig {
            path: dir.join(format!("{tenant}.sales.embed.json")),
            format: FileFormat::Json,
            mode: 0o600,
        })],
    }
}

/// A tenant of the simulator with one embed token.
fn embedding(sim: &SimEntra, name: &str, dir: &Path, embed: EmbedConfig) -> TenantConfig {
    let mut tenant = tenant(sim, name, &format!("{name}.example.com"), dir);
    tenant.powerbi = Some(Box::new(PowerBiConfig {
        api: RestApi::PowerBi,
        api_root: sim.powerbi_api().into(),
        probe: None,
        embeds: vec![embed],
    }));
    tenant
}

fn embed_file(dir: &Path, tenant: &str) -> std::path::PathBuf {
    dir.join(format!("{tenant}.sales.embed.json"))
}

#[tokio::test]
async fn embed_tokens_follow_every_entra_refresh_and_never_outlive_it() {
    // A 6-second Entra token, refreshed every 3 s: each refresh brings a new embed token.
    let Fixture { sim, dir } = fixture(&["contoso.example.com"], Duration::from_secs(6)).await;
    let tenant = embedding(
        &sim,
        "contoso",
        dir.path(),
        sales(dir.path(), "contoso", AccessLevel::Edit),
    );
    let daemon = start_daemon(config(vec![tenant], fast_daemon())).await;

    wait_for("three Entra tokens", Duration::from_secs(20), || {
        sim.issued_count("contoso.example.com") >= 3
    })
    .await;
    wait_for(
        "an embed token after each of them",
        Duration::from_secs(5),
        || sim.powerbi_request_count("contoso.example.com", PowerBiEndpoint::GenerateToken) >= 3,
    )
    .await;

    // The V2 multi-resource body.
    assert_eq!(
        sim.last_generate_token_request("contoso.example.com"),
        Some(serde_json::json!({
            "reports": [
                { "id": REPORT, "allowEdit": true },
                { "id": OTHER_REPORT, "allowEdit": true },
            ],
            "datasets": [{ "id": DATASET }],
        }))
    );

    // The file holds the token Power BI issued last, which expires no later than the Entra
    // token it was made with.
    let path = embed_file(dir.path(), "contoso");
    wait_for(
        "the file to hold the last token",
        Duration::from_secs(5),
        || {
            let last = sim
                .last_embed_token("contoso.example.com")
                .map(|(id, _)| id);
            read_json(&path).is_some_and(|doc| doc["token_id"].as_str() == last.as_deref())
        },
    )
    .await;
    let doc = read_json(&path).unwrap();
    assert_eq!(doc["tenant"], "contoso");
    assert_eq!(doc["embed"], "sales");
    assert_eq!(doc["access_level"], "Edit");
    assert_eq!(doc["reports"], serde_json::json!([REPORT, OTHER_REPORT]));
    assert!(doc["token"].as_str().is_some_and(|t| t.starts_with("H4sI")));
    let expires_on = doc["expires_on"].as_i64().unwrap();
    let entra = read_json(&dir.path().join("contoso.json")).unwrap();
    let entra_expires_on = entra["expires_on"].as_i64().unwrap();
    assert!(
        expires_on <= entra_expires_on,
        "embed token expires at {expires_on}, its Entra token at {entra_expires_on}"
    );
    assert!(expires_on > powerbi_tokend::clock::unix_seconds(std::time::SystemTime::now()));
    assert!(doc["expiration"].as_str().unwrap().ends_with('Z'));

    let (_, status) = daemon.get("/status").await;
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    let embeds = &status["tenants"][0]["embeds"];
    assert_eq!(embeds[0]["name"], "sales");
    assert!(embeds[0]["expires_at"].is_string(), "{embeds}");
    // The same shape as the access token's fields: no failure, none in a row.
    assert!(
        embeds[0]
            .get("last_error")
            .is_some_and(serde_json::Value::is_null),
        "{embeds}"
    );
    assert_eq!(embeds[0]["consecutive_failures"], 0, "{embeds}");
    let (_, metrics) = daemon.get("/metrics").await;
    assert!(metrics.contains(
        "powerbi_tokend_embed_token_expiry_timestamp_seconds{embed=\"sales\",tenant=\"contoso\"}"
    ));
    assert!(metrics.contains(
        "powerbi_tokend_embed_refresh_total{embed=\"sales\",result=\"failure\",tenant=\"contoso\"} 0"
    ));
    // The embed token is nowhere in what the daemon shows.
    let token = doc["token"].as_str().unwrap();
    assert!(!status.to_string().contains(token));
    assert!(!metrics.contains(token));
    daemon.stop().await;
}

#[tokio::test]
async fn a_refused_embed_token_keeps_the_last_one_and_names_the_reason() {
    let Fixture { sim, dir } = fixture(&["contoso.example.com"], Duration::from_secs(4)).await;
    let tenant = embedding(
        &sim,
        "contoso",
        dir.path(),
        sales(dir.path(), "contoso", AccessLevel::View),
    );
    let daemon = start_daemon(config(vec![tenant], fast_daemon())).await;
    let path = embed_file(dir.path(), "contoso");
    wait_for("a first embed token", Duration::from_secs(10), || {
        read_json(&path).is_some()
    })
    .await;
    let first = read_json(&path).unwrap();

    sim.set_powerbi_behavior("contoso.example.com", PowerBiBehavior::NotAuthorized);
    let body = daemon
        .wait_for_get("the refusal in /status", "/status", |_, body| {
            body.contains("\"api_denied\"")
        })
        .await;
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    let tenant = &status["tenants"][0];
    // Classified like any refresh failure: the reason, the class, Power BI's status, and what
    // to do about it.
    let error = &tenant["embeds"][0]["last_error"];
    assert_eq!(error["reason"], "not_authorized", "{tenant}");
    assert_eq!(error["class"], "permanent", "{tenant}");
    assert_eq!(error["http_status"], 401, "{tenant}");
    assert!(
        error["advice"]
            .as_str()
            .is_some_and(|advice| advice.contains("Service principals can use Fabric APIs")),
        "{tenant}"
    );
    assert!(
        tenant["embeds"][0]["consecutive_failures"].as_u64() >= Some(1),
        "{tenant}"
    );
    // Entra keeps issuing; the access token side is healthy.
    assert!(tenant["last_error"].is_null(), "{tenant}");
    // The last good embed token stays where it was.
    assert_eq!(read_json(&path).unwrap()["token_id"], first["token_id"]);
    let (_, metrics) = daemon.get("/metrics").await;
    assert!(
        metrics.contains(
            "powerbi_tokend_embed_refresh_failures_total{embed=\"sales\",reason=\"not_authorized\",tenant=\"contoso\"}"
        ),
        "{metrics}"
    );
    assert!(!metrics.contains(
        "powerbi_tokend_tenants_embed_refresh_failures_total{reason=\"not_authorized\"} 0"
    ));

    // Fixed on the customer's side: the next refresh brings a new embed token.
    sim.set_powerbi_behavior("contoso.example.com", PowerBiBehavior::Ok);
    daemon
        .wait_for_get("healthy again", "/status", |_, body| {
            body.contains("\"healthy\"")
        })
        .await;
    wait_for("a new embed token", Duration::from_secs(10), || {
        read_json(&path).is_some_and(|doc| doc["token_id"] != first["token_id"])
    })
    .await;
    daemon.stop().await;
}

#[tokio::test]
async fn a_dataset_with_row_level_security_gets_its_token_only_with_an_effective_identity() {
    let Fixture { sim, dir } = fixture(
        &["contoso.example.com", "fabrikam.example.com"],
        Duration::from_secs(30),
    )
    .await;
    for tenant in ["contoso.example.com", "fabrikam.example.com"] {
        sim.set_rls_datasets(tenant, &[DATASET]);
    }
    let mut rls = sales(dir.path(), "contoso", AccessLevel::View);
    rls.identities = vec![EffectiveIdentity {
        username: "store-17@contoso.example".to_owned(),
        roles: vec!["Store".to_owned()],
        datasets: vec![DATASET.to_owned()],
        reports: Vec::new(),
        custom_data: None,
    }];
    let with_identity = embedding(&sim, "contoso", dir.path(), rls);
    let without = embedding(
        &sim,
        "fabrikam",
        dir.path(),
        sales(dir.path(), "fabrikam", AccessLevel::View),
    );
    let daemon = start_daemon(config(vec![with_identity, without], fast_daemon())).await;

    let path = embed_file(dir.path(), "contoso");
    wait_for("the RLS embed token", Duration::from_secs(10), || {
        read_json(&path).is_some()
    })
    .await;
    assert_eq!(
        sim.last_generate_token_request("contoso.example.com")
            .expect("a request")["identities"],
        serde_json::json!([{
            "username": "store-17@contoso.example", "roles": ["Store"], "datasets": [DATASET],
        }])
    );
    // The token file says whom the token filters rows for.
    assert_eq!(
        read_json(&path).unwrap()["identities"][0]["username"],
        "store-17@contoso.example"
    );

    // Without an identity, Power BI's refusal is the embed's error, with its own words.
    let body = daemon
        .wait_for_get("the refusal in /status", "/status", |_, body| {
            body.contains("requires effective identity")
        })
        .await;
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    let fabrikam = tenant_status(&status, "fabrikam");
    let error = &fabrikam["embeds"][0]["last_error"];
    assert_eq!(error["http_status"], 400, "{fabrikam}");
    assert_eq!(error["error_code"], "InvalidRequest", "{fabrikam}");
    assert!(
        error["message"].as_str().is_some_and(|message| message.contains(&format!(
            "Creating embed token for accessing dataset {DATASET} requires effective identity to be provided"
        ))),
        "{fabrikam}"
    );
    assert!(read_json(&embed_file(dir.path(), "fabrikam")).is_none());
    daemon.stop().await;
}

#[tokio::test]
async fn a_restart_reuses_the_embed_token_made_for_the_same_items() {
    let Fixture { sim, dir } = fixture(&["contoso.example.com"], Duration::from_secs(3600)).await;
    let make = || {
        embedding(
            &sim,
            "contoso",
            dir.path(),
            sales(dir.path(), "contoso", AccessLevel::View),
        )
    };
    let daemon = start_daemon(config(vec![make()], fast_daemon())).await;
    let path = embed_file(dir.path(), "contoso");
    wait_for("an embed token", Duration::from_secs(10), || {
        read_json(&path).is_some()
    })
    .await;
    daemon.stop().await;
    let made = sim.powerbi_request_count("contoso.example.com", PowerBiEndpoint::GenerateToken);
    let first = read_json(&path).unwrap();

    // Same tenant, same items: both tokens are reused, nothing is asked.
    let daemon = start_daemon(config(vec![make()], fast_daemon())).await;
    daemon
        .wait_for_get("the warm start", "/status", |_, body| {
            body.contains("\"healthy\"") && body.contains("\"embeds\"")
        })
        .await;
    assert_eq!(sim.issued_count("contoso.example.com"), 1);
    assert_eq!(
        sim.powerbi_request_count("contoso.example.com", PowerBiEndpoint::GenerateToken),
        made
    );
    assert_eq!(read_json(&path).unwrap()["token_id"], first["token_id"]);
    daemon.stop().await;

    // Another report in the embed: the stored token does not cover it, a new one is made.
    let mut changed = make();
    if let Some(powerbi) = changed.powerbi.as_deref_mut() {
        powerbi.embeds[0].reports.truncate(1);
    }
    let daemon = start_daemon(config(vec![changed], fast_daemon())).await;
    wait_for("a token for the new items", Duration::from_secs(10), || {
        read_json(&path).is_some_and(|doc| doc["token_id"] != first["token_id"])
    })
    .await;
    assert_eq!(
        read_json(&path).unwrap()["reports"],
        serde_json::json!([REPORT])
    );
    daemon.stop().await;
}

/// The config file of a daemon run as a child process: tenant `contoso` of `sim`, its secret
/// from `EMBED_TEST_SECRET`, its tokens in `<dir>/tokens`; `defaults` is added to `[defaults]`,
/// and `embed` (without `sinks`) is its one `[[tenant.embed]]`, written next to its token.
fn spawned_config(sim: &SimEntra, dir: &Path, defaults: &str, embed: &str) -> std::path::PathBuf {
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        format!(
            r#"[server]
listen = "127.0.0.1:0"

[defaults]
authority_host = "{authority}"
powerbi_api = "{authority}"
client_id = "{CLIENT_ID}"
client_secret = {{ env = "EMBED_TEST_SECRET" }}
sinks = [ {{ type = "file", path = "{tokens}/{{name}}.json" }} ]
{defaults}

[[tenant]]
name = "contoso"
tenant_id = "contoso.example.com"

[[tenant.embed]]
{embed}
sinks = [ {{ type = "file", path = "{tokens}/{{name}}.{{embed}}.embed.json" }} ]
"#,
            authority = sim.authority_host(),
            tokens = dir.join("tokens").display(),
        ),
    )
    .unwrap();
    config
}

#[tokio::test]
async fn no_embed_or_access_token_reaches_the_log_at_trace_level() {
    let Fixture { sim, dir } = fixture(&["contoso.example.com"], Duration::from_secs(4)).await;
    let tokens = dir.path().join("tokens");
    let config = spawned_config(
        &sim,
        dir.path(),
        "probe = { interval = \"1s\" }",
        &format!("name = \"sales\"\nreports = [\"{REPORT}\"]"),
    );
    let log = dir.path().join("daemon.log");
    let mut daemon = Spawned::run(&config, &log, "trace", &[("EMBED_TEST_SECRET", SECRET)]);
    let path = tokens.join("contoso.sales.embed.json");
    // Two embed tokens, so a refresh has been logged too.
    wait_for("two embed tokens", Duration::from_secs(20), || {
        sim.powerbi_request_count("contoso.example.com", PowerBiEndpoint::GenerateToken) >= 2
            && read_json(&path).is_some()
    })
    .await;
    let embed_token = read_json(&path).unwrap()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let access_token = token_in(&tokens.join("contoso.json")).unwrap();
    daemon.signal("TERM");
    daemon.wait_exit(Duration::from_secs(10)).await;
    let text = daemon.log_text();
    assert!(text.contains("embed token refreshed"), "{text}");
    for (what, secret) in [
        ("client secret", SECRET),
        ("embed token", embed_token.as_str()),
        ("access token", access_token.as_str()),
    ] {
        assert!(!text.contains(secret), "the {what} is in the log");
    }
}

/// Every sample of an exposition as (metric name, labels); comments are skipped.
fn samples(metrics: &str) -> Vec<(&str, Vec<(&str, &str)>)> {
    metrics
        .lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .map(|line| {
            let Some((name, rest)) = line.split_once('{') else {
                return (line.split(' ').next().unwrap(), Vec::new());
            };
            let (labels, _) = rest.split_once('}').unwrap();
            // Label values here never hold a comma or a quote (names are [A-Za-z0-9._-]+).
            let labels = labels
                .split(',')
                .map(|pair| {
                    let (key, value) = pair.split_once('=').unwrap();
                    (key, value.trim_matches('"'))
                })
                .collect();
            (name, labels)
        })
        .collect()
}

/// The values of `label` in the samples of families whose name starts with `prefix`.
fn label_values(metrics: &str, prefix: &str, label: &str) -> BTreeSet<String> {
    samples(metrics)
        .into_iter()
        .filter(|(name, _)| name.starts_with(prefix))
        .flat_map(|(_, labels)| labels)
        .filter(|(key, _)| *key == label)
        .map(|(_, value)| value.to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_tenant_label_is_a_configured_tenant_with_or_without_embeds_in_every_mode() {
    let Fixture { sim, dir } = fixture(
        &["bad.example.com", "good.example.com", "plain.example.com"],
        Duration::from_secs(3600),
    )
    .await;
    reject_secret(&sim, "bad.example.com");
    let configured = BTreeSet::from(["bad", "good", "plain"].map(str::to_owned));
    for with_embeds in [true, false] {
        for mode in PerTenantMetrics::ALL {
            let tokens = dir
                .path()
                .join(format!("{}-embeds-{with_embeds}", mode.as_str()));
            // `bad` and `good` have an embed token (when the run has any), `plain` never does:
            // a tenant without one after tenants with one, in name order.
            let tenants = ["bad", "good", "plain"]
                .map(|name| {
                    if with_embeds && name != "plain" {
                        embedding(&sim, name, &tokens, sales(&tokens, name, AccessLevel::View))
                    } else {
                        tenant(&sim, name, &format!("{name}.example.com"), &tokens)
                    }
                })
                .to_vec();
            let mut config = config(tenants, fast_daemon());
            config.server.per_tenant_metrics = mode;
            let daemon = start_daemon(config).await;
            let metrics = daemon
                .wait_for_get("every tenant's first attempt", "/metrics", |_, body| {
                    body.contains("powerbi_tokend_tenants{state=\"healthy\"} 2")
                        && body.contains("powerbi_tokend_tenants{state=\"misconfigured\"} 1")
                })
                .await;
            let context = format!("mode {mode:?}, embeds {with_embeds}:\n{metrics}");
            // Whom each mode names: everyone, the tenant needing attention, no one.
            let shown: BTreeSet<String> = match mode {
                PerTenantMetrics::All => configured.clone(),
                PerTenantMetrics::Unhealthy => BTreeSet::from(["bad".to_owned()]),
                PerTenantMetrics::None => BTreeSet::new(),
            };
            let named = label_values(&metrics, "powerbi_tokend_", "tenant");
            assert!(named.is_subset(&configured), "{named:?} in {context}");
            assert_eq!(named, shown, "{context}");
            // Every per-tenant family that has a sample for each tenant shown names it.
            for family in [
                "powerbi_tokend_tenant_state",
                "powerbi_tokend_consecutive_failures",
                "powerbi_tokend_refresh_total",
            ] {
                let named = label_values(&metrics, family, "tenant");
                assert_eq!(named, shown, "{family} in {context}");
            }
            let embed_tenants = label_values(&metrics, "powerbi_tokend_embed_", "tenant");
            let embeds = label_values(&metrics, "powerbi_tokend_embed_", "embed");
            if with_embeds {
                let with_embed: BTreeSet<String> =
                    shown.iter().filter(|t| *t != "plain").cloned().collect();
                assert_eq!(embed_tenants, with_embed, "{context}");
                let expected = if with_embed.is_empty() {
                    BTreeSet::new()
                } else {
                    BTreeSet::from(["sales".to_owned()])
                };
                assert_eq!(embeds, expected, "{context}");
            } else {
                assert!(embed_tenants.is_empty() && embeds.is_empty(), "{context}");
            }
            daemon.stop().await;
        }
    }
}

const WORKSPACE: &str = "f089354e-0000-4e18-aea3-000000000005";

/// The embed URL the simulator gives `report`, up to its `config` parameter: in `workspace`
/// (Get Report In Group) or in My workspace (Get Report).
fn embed_url_prefix(sim: &SimEntra, workspace: Option<&str>, report: &str) -> String {
    match workspace {
        Some(workspace) => format!(
            "{}/reportEmbed?reportId={report}&groupId={workspace}&w=2&config=",
            sim.powerbi_api()
        ),
        None => format!(
            "{}/reportEmbed?reportId={report}&w=2&config=",
            sim.powerbi_api()
        ),
    }
}

/// Report reads of a tenant, with and without a workspace.
fn report_reads(sim: &SimEntra, tenant_id: &str) -> (u64, u64) {
    (
        sim.powerbi_request_count(tenant_id, PowerBiEndpoint::ReportInGroup),
        sim.powerbi_request_count(tenant_id, PowerBiEndpoint::Report),
    )
}

/// The `/status` entry of `tenant`.
fn tenant_status<'a>(status: &'a serde_json::Value, tenant: &str) -> &'a serde_json::Value {
    status["tenants"]
        .as_array()
        .and_then(|tenants| tenants.iter().find(|entry| entry["name"] == tenant))
        .unwrap_or_else(|| panic!("{tenant} in {status}"))
}

#[tokio::test]
async fn embed_urls_are_read_once_from_the_workspace_or_my_workspace_and_written_with_every_token()
{
    // 4-second Entra tokens, refreshed every 2 s: each refresh brings a new embed token.
    let Fixture { sim, dir } = fixture(
        &["contoso.example.com", "fabrikam.example.com"],
        Duration::from_secs(4),
    )
    .await;
    let mut in_workspace = sales(dir.path(), "contoso", AccessLevel::View);
    in_workspace.workspace = Some(WORKSPACE.to_owned());
    let contoso = embedding(&sim, "contoso", dir.path(), in_workspace);
    let fabrikam = embedding(
        &sim,
        "fabrikam",
        dir.path(),
        sales(dir.path(), "fabrikam", AccessLevel::View),
    );
    let daemon = start_daemon(config(vec![contoso, fabrikam], fast_daemon())).await;

    for (tenant, workspace) in [("contoso", Some(WORKSPACE)), ("fabrikam", None)] {
        let path = embed_file(dir.path(), tenant);
        wait_for("an embed token", Duration::from_secs(10), || {
            read_json(&path).is_some()
        })
        .await;
        let doc = read_json(&path).unwrap();
        let urls = doc["embed_urls"].as_object().expect("embed_urls");
        assert_eq!(urls.len(), 2, "{doc}");
        for report in [REPORT, OTHER_REPORT] {
            let url = urls[report].as_str().expect("a URL per report");
            assert!(
                url.starts_with(&embed_url_prefix(&sim, workspace, report)),
                "{tenant}: {url}"
            );
        }
        assert_eq!(doc["workspace"], serde_json::json!(workspace));
        let read_at = doc["embed_urls_read_at"].as_i64().expect("read_at");
        let now = powerbi_tokend::clock::unix_now();
        assert!(read_at <= now && read_at > now - 60, "{read_at} {now}");
    }
    // One read per report, through the path the workspace chooses.
    assert_eq!(report_reads(&sim, "contoso.example.com"), (2, 0));
    assert_eq!(report_reads(&sim, "fabrikam.example.com"), (0, 2));

    // Two more embed tokens each: every file is written again, with the same URLs, and no
    // report is read again.
    let first = read_json(&embed_file(dir.path(), "contoso")).unwrap();
    for tenant_id in ["contoso.example.com", "fabrikam.example.com"] {
        let made = sim.powerbi_request_count(tenant_id, PowerBiEndpoint::GenerateToken);
        wait_for("two more embed tokens", Duration::from_secs(15), || {
            sim.powerbi_request_count(tenant_id, PowerBiEndpoint::GenerateToken) >= made + 2
        })
        .await;
    }
    let path = embed_file(dir.path(), "contoso");
    wait_for(
        "the file to hold a later token",
        Duration::from_secs(5),
        || read_json(&path).is_some_and(|doc| doc["token_id"] != first["token_id"]),
    )
    .await;
    let later = read_json(&path).unwrap();
    assert_eq!(later["embed_urls"], first["embed_urls"]);
    assert_eq!(later["embed_urls_read_at"], first["embed_urls_read_at"]);
    assert_eq!(report_reads(&sim, "contoso.example.com"), (2, 0));
    assert_eq!(report_reads(&sim, "fabrikam.example.com"), (0, 2));

    let (_, body) = daemon.get("/status").await;
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    let urls = &tenant_status(&status, "contoso")["embeds"][0]["embed_urls"];
    assert_eq!(urls["count"], 2, "{urls}");
    assert_eq!(urls["missing"], serde_json::json!([]), "{urls}");
    assert!(
        urls["read_at"].as_str().is_some_and(|at| at.ends_with('Z')),
        "{urls}"
    );
    assert!(urls["last_error"].is_null(), "{urls}");
    let (_, metrics) = daemon.get("/metrics").await;
    for line in [
        "powerbi_tokend_embed_urls_missing{embed=\"sales\",tenant=\"contoso\"} 0",
        "powerbi_tokend_tenants_embed_url_reads_total{result=\"success\"} 4",
        "powerbi_tokend_tenants_embed_url_reads_total{result=\"failure\"} 0",
    ] {
        assert!(metrics.contains(line), "{line} missing:\n{metrics}");
    }
    daemon.stop().await;
}

#[tokio::test]
async fn a_missing_report_leaves_the_token_written_with_the_other_urls_and_its_failure_in_status() {
    let Fixture { sim, dir } = fixture(&["contoso.example.com"], Duration::from_secs(4)).await;
    sim.mark_report_missing("contoso.example.com", OTHER_REPORT);
    let mut embed = sales(dir.path(), "contoso", AccessLevel::View);
    embed.workspace = Some(WORKSPACE.to_owned());
    let tenant = embedding(&sim, "contoso", dir.path(), embed);
    let daemon = start_daemon(config(vec![tenant], fast_daemon())).await;

    let path = embed_file(dir.path(), "contoso");
    wait_for("an embed token", Duration::from_secs(10), || {
        read_json(&path).is_some()
    })
    .await;
    let doc = read_json(&path).unwrap();
    assert!(doc["token"].as_str().is_some_and(|t| t.starts_with("H4sI")));
    let urls = doc["embed_urls"].as_object().expect("embed_urls");
    assert_eq!(urls.len(), 1, "{doc}");
    assert!(
        urls[REPORT]
            .as_str()
            .is_some_and(|url| url.starts_with(&embed_url_prefix(&sim, Some(WORKSPACE), REPORT))),
        "{doc}"
    );

    let body = daemon
        .wait_for_get("the failed read in /status", "/status", |_, body| {
            body.contains("PowerBIEntityNotFound")
        })
        .await;
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    let tenant = tenant_status(&status, "contoso");
    let embed = &tenant["embeds"][0];
    let urls = &embed["embed_urls"];
    assert_eq!(urls["count"], 1, "{embed}");
    assert_eq!(
        urls["missing"],
        serde_json::json!([OTHER_REPORT]),
        "{embed}"
    );
    let error = &urls["last_error"];
    assert_eq!(error["reason"], "not_found", "{embed}");
    assert_eq!(error["http_status"], 404, "{embed}");
    assert_eq!(error["error_code"], "PowerBIEntityNotFound", "{embed}");
    assert!(
        error["message"]
            .as_str()
            .is_some_and(|message| message.contains(OTHER_REPORT)),
        "{embed}"
    );
    assert!(error["trace_id"].is_string(), "{embed}");
    // The embed token itself is fine; the tenant needs attention for the report without a URL.
    assert!(embed["last_error"].is_null(), "{embed}");
    assert_eq!(tenant["state"], "api_failing", "{tenant}");
    let (_, metrics) = daemon.get("/metrics").await;
    for line in [
        "powerbi_tokend_embed_urls_missing{embed=\"sales\",tenant=\"contoso\"} 1",
        "powerbi_tokend_tenants_embed_url_reads_total{result=\"success\"} 1",
    ] {
        assert!(metrics.contains(line), "{line} missing:\n{metrics}");
    }
    assert!(!metrics.contains(OTHER_REPORT), "a report id in a label");

    // The next embed tokens try the missing report again, and only that one.
    let made = sim.powerbi_request_count("contoso.example.com", PowerBiEndpoint::GenerateToken);
    wait_for("another embed token", Duration::from_secs(10), || {
        sim.powerbi_request_count("contoso.example.com", PowerBiEndpoint::GenerateToken) > made
    })
    .await;
    wait_for(
        "the missing report read again",
        Duration::from_secs(5),
        || report_reads(&sim, "contoso.example.com").0 >= 3,
    )
    .await;
    let (in_group, _) = report_reads(&sim, "contoso.example.com");
    let tokens = sim.powerbi_request_count("contoso.example.com", PowerBiEndpoint::GenerateToken);
    // One read of REPORT, then one of OTHER_REPORT per embed token (the last one may still be
    // on its way).
    assert!(
        in_group <= 1 + tokens,
        "{in_group} reads for {tokens} tokens"
    );
    assert_eq!(
        read_json(&path).unwrap()["embed_urls"][REPORT],
        doc["embed_urls"][REPORT]
    );
    daemon.stop().await;
}

#[tokio::test]
async fn a_warm_start_within_a_day_reads_only_the_urls_of_reports_added() {
    let Fixture { sim, dir } = fixture(&["contoso.example.com"], Duration::from_secs(3600)).await;
    let make = |access_level, reports: &[&str]| {
        let mut embed = sales(dir.path(), "contoso", access_level);
        embed.reports = reports.iter().map(|id| (*id).to_owned()).collect();
        embed.workspace = Some(WORKSPACE.to_owned());
        embedding(&sim, "contoso", dir.path(), embed)
    };
    let path = embed_file(dir.path(), "contoso");
    let daemon = start_daemon(config(
        vec![make(AccessLevel::View, &[REPORT, OTHER_REPORT])],
        fast_daemon(),
    ))
    .await;
    wait_for(
        "an embed token with its URLs",
        Duration::from_secs(10),
        || {
            read_json(&path)
                .is_some_and(|doc| doc["embed_urls"].as_object().is_some_and(|u| u.len() == 2))
        },
    )
    .await;
    daemon.stop().await;
    let first = read_json(&path).unwrap();
    assert_eq!(report_reads(&sim, "contoso.example.com"), (2, 0));

    // Another access level: the stored embed token is not reused, a new one is made, and the
    // URLs come from the stored document.
    let made = sim.powerbi_request_count("contoso.example.com", PowerBiEndpoint::GenerateToken);
    let daemon = start_daemon(config(
        vec![make(AccessLevel::Edit, &[REPORT, OTHER_REPORT])],
        fast_daemon(),
    ))
    .await;
    wait_for("a new embed token", Duration::from_secs(10), || {
        read_json(&path).is_some_and(|doc| doc["access_level"] == "Edit")
    })
    .await;
    assert!(
        sim.powerbi_request_count("contoso.example.com", PowerBiEndpoint::GenerateToken) > made
    );
    let second = read_json(&path).unwrap();
    assert_eq!(second["embed_urls"], first["embed_urls"]);
    assert_eq!(second["embed_urls_read_at"], first["embed_urls_read_at"]);
    assert_eq!(report_reads(&sim, "contoso.example.com"), (2, 0));
    let (_, body) = daemon.get("/status").await;
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        tenant_status(&status, "contoso")["embeds"][0]["embed_urls"]["count"],
        2,
        "{status}"
    );
    daemon.stop().await;

    // A report added: only that one is read.
    const THIRD: &str = "7d43a99a-0000-4b8a-9c7c-000000000008";
    let daemon = start_daemon(config(
        vec![make(AccessLevel::Edit, &[REPORT, OTHER_REPORT, THIRD])],
        fast_daemon(),
    ))
    .await;
    wait_for("the third report's URL", Duration::from_secs(10), || {
        read_json(&path).is_some_and(|doc| doc["embed_urls"][THIRD].is_string())
    })
    .await;
    let third = read_json(&path).unwrap();
    assert_eq!(third["embed_urls"][REPORT], first["embed_urls"][REPORT]);
    assert_eq!(report_reads(&sim, "contoso.example.com"), (3, 0));
    daemon.stop().await;
}

/// Two identity blobs shaped like the Azure SQL access tokens they stand for.
const BLOB_ONE: &str =
    "eyJ0eXAiOiJKV1QifQ.eyJhdWQiOiJodHRwczovL2RhdGFiYXNlLndpbmRvd3MubmV0In0.b25lLWJsb2Itc2ln";
const BLOB_TWO: &str =
    "eyJ0eXAiOiJKV1QifQ.eyJhdWQiOiJodHRwczovL2RhdGFiYXNlLndpbmRvd3MubmV0In1.dHdvLWJsb2Itc2ln";

#[tokio::test]
async fn datasource_identities_send_the_blob_read_anew_and_keep_it_out_of_everything_shown() {
    let Fixture { sim, dir } = fixture(&["contoso.example.com"], Duration::from_secs(4)).await;
    let tokens = dir.path().join("tokens");
    let blob = dir.path().join("sql-token");
    std::fs::write(&blob, format!("{BLOB_ONE}\n")).unwrap();
    let embed = format!(
        r#"name = "finance"
reports = ["{REPORT}"]
datasets = ["{DATASET}"]
datasource_identities = [
  {{ identity_blob = {{ file = "{blob}" }},
     datasources = [ {{ datasource_type = "Sql", server = "contoso.database.windows.net", database = "sales" }} ] }},
]"#,
        blob = blob.display(),
    );
    let config = spawned_config(&sim, dir.path(), "", &embed);
    let log = dir.path().join("daemon.log");
    let daemon = Spawned::run(&config, &log, "trace", &[("EMBED_TEST_SECRET", SECRET)]);
    let addr = daemon.admin_addr().await;
    let path = tokens.join("contoso.finance.embed.json");
    let sent_blob = || {
        sim.last_generate_token_request("contoso.example.com")
            .and_then(|body| {
                body["datasourceIdentities"][0]["identityBlob"]
                    .as_str()
                    .map(str::to_owned)
            })
    };

    // The body passes the simulator's checks of Power BI's shape: a token is made and written.
    wait_for(
        "an embed token made with the blob",
        Duration::from_secs(10),
        || read_json(&path).is_some() && sent_blob().as_deref() == Some(BLOB_ONE),
    )
    .await;
    assert_eq!(
        sim.last_generate_token_request("contoso.example.com")
            .unwrap()["datasourceIdentities"],
        serde_json::json!([{
            "identityBlob": BLOB_ONE,
            "datasources": [{
                "datasourceType": "Sql",
                "connectionDetails": { "server": "contoso.database.windows.net", "database": "sales" },
            }],
        }])
    );
    assert_eq!(
        read_json(&path).unwrap()["datasource_identities"][0]["datasources"][0]["connectionDetails"]
            ["server"],
        "contoso.database.windows.net"
    );

    // Whoever obtains the blob replaces it: the next embed token is made with the new one.
    std::fs::write(&blob, BLOB_TWO).unwrap();
    wait_for(
        "an embed token made with the new blob",
        Duration::from_secs(10),
        || sent_blob().as_deref() == Some(BLOB_TWO),
    )
    .await;

    // A blob that cannot be read fails that embed token, by name and source; the last one stays.
    std::fs::remove_file(&blob).unwrap();
    let status = wait_for_status(
        addr,
        "the credential failure",
        Duration::from_secs(10),
        |status| entry(status, "contoso")["embeds"][0]["last_error"]["reason"] == "credential",
    )
    .await;
    let error = &entry(&status, "contoso")["embeds"][0]["last_error"];
    let message = error["message"].as_str().unwrap();
    assert!(
        message.starts_with("embed \"finance\": datasource_identities[0].identity_blob: ")
            && message.contains(&blob.display().to_string()),
        "{error}"
    );
    let last_made = sim
        .last_embed_token("contoso.example.com")
        .map(|(id, _)| id);
    assert_eq!(
        read_json(&path).unwrap()["token_id"].as_str(),
        last_made.as_deref(),
        "the embed token made last is the one in the file"
    );
    let (_, metrics, _) = common::process::get(addr, "/metrics", Duration::from_secs(5)).await;
    assert!(
        metrics.lines().any(|line| line.starts_with(
            "powerbi_tokend_embed_refresh_failures_total{embed=\"finance\",reason=\"credential\",tenant=\"contoso\"}"
        ) && !line.ends_with(" 0")),
        "{metrics}"
    );

    let status = status.to_string();
    let files: Vec<String> = std::fs::read_dir(&tokens)
        .unwrap()
        .map(|file| std::fs::read_to_string(file.unwrap().path()).unwrap())
        .collect();
    daemon.signal("TERM");
    let mut daemon = daemon;
    daemon.wait_exit(Duration::from_secs(10)).await;
    let log = daemon.log_text();
    assert!(log.contains("embed token refreshed"), "{log}");
    for blob in [BLOB_ONE, BLOB_TWO] {
        // Its signature part alone is telling enough: no piece of the blob may show.
        let signature = blob.rsplit('.').next().unwrap();
        for (what, text) in [("log", &log), ("/status", &status), ("/metrics", &metrics)] {
            assert!(!text.contains(signature), "a blob is in {what}");
        }
        for file in &files {
            assert!(
                !file.contains(signature),
                "a blob is in a token file: {file}"
            );
        }
    }
}
