//! Client secrets read from the simulated Azure Key Vault with a managed or workload identity:
//! one read for many tenants, rotation, expiry, refusal, and nothing secret in what the daemon
//! shows.

mod common;

use common::process::Spawned;
use common::*;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use powerbi_tokend::config::{
    CredentialConfig, DaemonConfig, KeyVaultConfig, ManagedIdentityConfig, ManagedIdentityId,
    ManagedIdentitySource, SecretSource, TenantConfig,
};
use powerbi_tokend_sim::{
    SIM_SYSTEM_ASSIGNED_CLIENT_ID, SimEntra, SimFederatedCredential, SimManagedIdentity,
    SimSecretAttributes,
};

/// `attributes.exp` of the secret in the tests: 2030-01-01.
const SECRET_EXPIRES: i64 = 1_893_456_000;

/// The simulator's host has a system-assigned managed identity.
fn with_managed_identity(sim: &SimEntra) {
    sim.set_managed_identity(SimManagedIdentity {
        system_assigned: true,
        user_assigned: Vec::new(),
        lifetime: Duration::from_secs(3600),
        identity_header: String::new(),
    });
}

/// `[key_vault]` with the system-assigned managed identity.
fn managed_identity_reader(sim: &SimEntra, refresh_interval: Duration) -> KeyVaultConfig {
    let mut identity = tenant(sim, "key_vault", "", Path::new("/nonexistent"));
    identity.tenant_id = None;
    identity.client_id = None;
    identity.sinks.clear();
    identity.resource = "https://vault.azure.net".into();
    identity.credential = CredentialConfig::ManagedIdentity(ManagedIdentityConfig {
        source: ManagedIdentitySource::Imds,
        identity: ManagedIdentityId::System,
    });
    KeyVaultConfig::new(Arc::new(identity), refresh_interval)
}

/// A tenant whose client secret is `url` in Key Vault.
fn vault_tenant(sim: &SimEntra, name: &str, dir: &Path, url: &str) -> TenantConfig {
    let mut tenant = tenant(sim, name, &format!("{name}.example.com"), dir);
    tenant.credential = CredentialConfig::ClientSecret {
        source: SecretSource::KeyVault(url.to_owned()),
        expires_on: None,
    };
    tenant
}

/// A tenant whose client certificate is the PEM secret `url` in Key Vault.
fn vault_certificate_tenant(sim: &SimEntra, name: &str, dir: &Path, url: &str) -> TenantConfig {
    let mut tenant = tenant(sim, name, &format!("{name}.example.com"), dir);
    tenant.credential = CredentialConfig::Certificate(powerbi_tokend::config::CertificateConfig {
        cert: url.into(),
        key: url.into(),
        algorithm: Default::default(),
        send_x5c: false,
        key_vault: Some(url.to_owned()),
    });
    tenant
}

fn daemon_knobs(sim: &SimEntra) -> DaemonConfig {
    DaemonConfig {
        imds_endpoint: sim.imds_endpoint(),
        ..fast_daemon()
    }
}

/// A secret with an expiry, as Key Vault holds it.
fn expiring() -> SimSecretAttributes {
    SimSecretAttributes {
        exp: Some(SystemTime::UNIX_EPOCH + Duration::from_secs(SECRET_EXPIRES as u64)),
        ..SimSecretAttributes::default()
    }
}

/// A config file in `dir` with `[key_vault]` reading through the simulator's managed identity,
/// `[defaults]` naming `app-secret` in its vault, and `tenants` (TOML, `{vault}` replaced).
fn write_vault_config(
    sim: &SimEntra,
    dir: &Path,
    server: &str,
    tenants: &str,
) -> std::path::PathBuf {
    let config = dir.join("config.toml");
    let text = format!(
        r#"{server}
[daemon]
imds_endpoint = "{imds}"

[key_vault]
credential = "managed_identity"
managed_identity = "system"

[defaults]
authority_host = "{authority}"
client_id = "{CLIENT_ID}"
client_secret = {{ key_vault = "{vault}/secrets/app-secret" }}
sinks = [ {{ type = "file", path = "{tokens}/{{name}}.json" }} ]
{tenants}"#,
        imds = sim.imds_endpoint(),
        authority = sim.authority_host(),
        vault = sim.key_vault_url(),
        tokens = dir.join("tokens").display(),
        tenants = tenants.replace("{vault}", &sim.key_vault_url()),
    );
    std::fs::write(&config, text).unwrap();
    config
}

/// The certificate and key of `rsa_certificate_pem` stored as Key Vault stores a PEM
/// certificate's secret.
fn store_certificate(sim: &SimEntra, name: &str, pem: &str) {
    sim.set_key_vault_secret(
        name,
        pem,
        SimSecretAttributes {
            content_type: Some("application/x-pem-file".to_owned()),
            certificate: true,
            ..SimSecretAttributes::default()
        },
    );
}

#[tokio::test]
async fn one_read_serves_every_tenant_and_its_expiry_is_exported() {
    let names = ["contoso", "fabrikam", "northwind"];
    let ids: Vec<String> = names.iter().map(|n| format!("{n}.example.com")).collect();
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    let Fixture { sim, dir } = fixture(&ids, Duration::from_secs(3600)).await;
    with_managed_identity(&sim);
    sim.set_key_vault_secret("app-secret", SECRET, expiring());
    sim.grant_key_vault_access(SIM_SYSTEM_ASSIGNED_CLIENT_ID);
    let url = format!("{}/secrets/app-secret", sim.key_vault_url());
    let tenants = names
        .iter()
        .map(|name| vault_tenant(&sim, name, dir.path(), &url))
        .collect();
    let mut config = config(tenants, daemon_knobs(&sim));
    config.key_vault = Some(managed_identity_reader(&sim, Duration::from_secs(3600)));
    let daemon = start_daemon(config).await;

    wait_for("every tenant's token", Duration::from_secs(10), || {
        names
            .iter()
            .all(|name| token_in(&dir.path().join(format!("{name}.json"))).is_some())
    })
    .await;
    // Three tenants, one secret, one read.
    assert_eq!(sim.key_vault_read_count("app-secret"), 1);
    assert_eq!(
        sim.last_key_vault_caller().as_deref(),
        Some(SIM_SYSTEM_ASSIGNED_CLIENT_ID)
    );
    let metrics = daemon
        .wait_for_get("the expiry from Key Vault", "/metrics", |_, body| {
            body.contains(&format!(
                "powerbi_tokend_credential_expiry_timestamp_seconds{{kind=\"client_secret\",tenant=\"northwind\"}} {SECRET_EXPIRES}"
            ))
        })
        .await;
    let (_, status) = daemon.get("/status").await;
    assert!(status.contains("\"credential_expires_at\":\"2030-01-01T00:00:00Z\""));
    for text in [&metrics, &status] {
        assert!(!text.contains(SECRET));
        assert!(!text.contains("eyJ"), "a token-shaped string is shown");
    }
    daemon.stop().await;
}

#[tokio::test]
async fn a_workload_identity_reads_secrets_and_certificates_too() {
    let Fixture { sim, dir } = fixture(
        &["contoso.example.com", "fabrikam.example.com"],
        Duration::from_secs(3600),
    )
    .await;
    // The reading identity is an app of the vault's own directory, federated with a
    // Kubernetes service account.
    let vault_tenant_id = sim.key_vault_tenant();
    register(&sim, &vault_tenant_id, Duration::from_secs(3600));
    let token_file = federate(&sim, CLIENT_ID, &[&vault_tenant_id], dir.path());
    sim.set_key_vault_secret("app-secret", SECRET, SimSecretAttributes::default());
    let (pem, der) = rsa_certificate_pem();
    sim.add_certificate("fabrikam.example.com", CLIENT_ID, der);
    store_certificate(&sim, "app-cert", &pem);
    sim.grant_key_vault_access(CLIENT_ID);

    let mut identity = tenant(&sim, "key_vault", &vault_tenant_id, dir.path());
    identity.sinks.clear();
    identity.resource = "https://vault.azure.net".into();
    identity.credential = CredentialConfig::WorkloadIdentity { token_file };
    let url = format!("{}/secrets/app-secret", sim.key_vault_url());
    let certificate_url = format!("{}/secrets/app-cert", sim.key_vault_url());
    let mut config = config(
        vec![
            vault_tenant(&sim, "contoso", dir.path(), &url),
            vault_certificate_tenant(&sim, "fabrikam", dir.path(), &certificate_url),
        ],
        daemon_knobs(&sim),
    );
    config.key_vault = Some(KeyVaultConfig::new(
        Arc::new(identity),
        Duration::from_secs(3600),
    ));
    let daemon = start_daemon(config).await;
    wait_for("both tokens", Duration::from_secs(10), || {
        token_in(&dir.path().join("contoso.json")).is_some()
            && token_in(&dir.path().join("fabrikam.json")).is_some()
    })
    .await;
    assert_eq!(sim.last_key_vault_caller().as_deref(), Some(CLIENT_ID));
    assert_eq!(sim.key_vault_read_count("app-secret"), 1);
    assert_eq!(sim.key_vault_read_count("app-cert"), 1);
    assert_eq!(
        sim.last_assertion("fabrikam.example.com").unwrap().claims["iss"],
        CLIENT_ID
    );
    daemon.stop().await;
}

/// An unsigned projected service-account token, valid for an hour.
fn federated_token(issuer: &str, subject: &str, audience: &str) -> String {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let now = powerbi_tokend::clock::unix_now();
    let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"RS256","kid":"k8s"}"#);
    let claims = URL_SAFE_NO_PAD.encode(
        serde_json::json!({"iss": issuer, "sub": subject, "aud": [audience], "exp": now + 3600, "iat": now})
            .to_string(),
    );
    format!("{header}.{claims}.c2lnbmF0dXJl")
}

/// The simulator's managed identity may read `app-secret`, which holds `SECRET`.
fn readable_secret(sim: &SimEntra) -> String {
    with_managed_identity(sim);
    sim.set_key_vault_secret("app-secret", SECRET, SimSecretAttributes::default());
    sim.grant_key_vault_access(SIM_SYSTEM_ASSIGNED_CLIENT_ID);
    format!("{}/secrets/app-secret", sim.key_vault_url())
}

/// A daemon with `tenants`, reading Key Vault every `refresh_interval`.
async fn start_reading(
    sim: &SimEntra,
    tenants: Vec<TenantConfig>,
    refresh_interval: Duration,
) -> Running {
    let mut config = config(tenants, daemon_knobs(sim));
    config.key_vault = Some(managed_identity_reader(sim, refresh_interval));
    start_daemon(config).await
}

/// Key Vault and Entra both move to a new secret, as a rotation does.
fn rotate(sim: &SimEntra) {
    sim.set_key_vault_secret(
        "app-secret",
        "rotated-secret-value",
        SimSecretAttributes::default(),
    );
    set_secret(sim, "contoso.example.com", "rotated-secret-value");
}

#[tokio::test]
async fn a_rotation_is_picked_up_after_the_refresh_interval() {
    // Tokens live 4 s (a refresh every 2 s); Key Vault is read again after 1 s.
    let Fixture { sim, dir } = fixture(&["contoso.example.com"], Duration::from_secs(4)).await;
    let url = readable_secret(&sim);
    let tenants = vec![vault_tenant(&sim, "contoso", dir.path(), &url)];
    let daemon = start_reading(&sim, tenants, Duration::from_secs(1)).await;
    wait_for("the first token", Duration::from_secs(10), || {
        sim.issued_count("contoso.example.com") >= 1
    })
    .await;

    // Rotated: a new version in Key Vault, and Entra knows only the new secret.
    rotate(&sim);
    let issued = sim.issued_count("contoso.example.com");
    wait_for(
        "a token with the rotated secret",
        Duration::from_secs(10),
        || sim.issued_count("contoso.example.com") > issued,
    )
    .await;
    // Read again because the value had aged, not because Entra refused it.
    let (_, status) = daemon.get("/status").await;
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["tenants"][0]["state"], "healthy");
    let (_, metrics) = daemon.get("/metrics").await;
    assert!(
        !metrics.contains("powerbi_tokend_refresh_failures_total{reason=\"invalid_client\""),
        "the rotation cost a failure:\n{metrics}"
    );
    daemon.stop().await;
}

#[tokio::test]
async fn a_rejected_secret_is_read_again_at_once() {
    let Fixture { sim, dir } = fixture(&["contoso.example.com"], Duration::from_secs(4)).await;
    let url = readable_secret(&sim);
    // Read once an hour: only the rejection can bring the new value within the test.
    let tenants = vec![vault_tenant(&sim, "contoso", dir.path(), &url)];
    let daemon = start_reading(&sim, tenants, Duration::from_secs(3600)).await;
    wait_for("the first token", Duration::from_secs(10), || {
        sim.issued_count("contoso.example.com") >= 1
    })
    .await;
    // Let the cached read age past the guard against re-reading at every retry.
    let read_at = std::time::Instant::now();
    rotate(&sim);
    let issued = sim.issued_count("contoso.example.com");
    wait_for(
        "AADSTS7000215, a second read and a token",
        Duration::from_secs(45),
        || sim.issued_count("contoso.example.com") > issued,
    )
    .await;
    assert_eq!(sim.key_vault_read_count("app-secret"), 2);
    // Well before the permanent retry interval of a rejected secret would have passed again.
    assert!(read_at.elapsed() < Duration::from_secs(45));
    let (_, metrics) = daemon.get("/metrics").await;
    assert!(
        metrics.contains("powerbi_tokend_refresh_failures_total{reason=\"invalid_client\""),
        "{metrics}"
    );
    daemon.stop().await;
}

#[tokio::test]
async fn a_vault_that_refuses_the_identity_is_a_permanent_failure_naming_both() {
    let Fixture { sim, dir } = fixture(&["contoso.example.com"], Duration::from_secs(3600)).await;
    with_managed_identity(&sim);
    sim.set_key_vault_secret("app-secret", SECRET, SimSecretAttributes::default());
    // No role assignment for the identity.
    let url = format!("{}/secrets/app-secret", sim.key_vault_url());
    let mut config = config(
        vec![vault_tenant(&sim, "contoso", dir.path(), &url)],
        daemon_knobs(&sim),
    );
    config.key_vault = Some(managed_identity_reader(&sim, Duration::from_secs(3600)));
    let daemon = start_daemon(config).await;
    let body = daemon
        .wait_for_get("the refusal", "/status", |_, body| {
            body.contains("\"misconfigured\"")
        })
        .await;
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    let error = &status["tenants"][0]["last_error"];
    assert_eq!(error["class"], "permanent", "{error}");
    assert_eq!(error["reason"], "credential", "{error}");
    let message = error["message"].as_str().unwrap();
    for part in [
        sim.key_vault_url().as_str(),
        "the system-assigned managed identity",
        "\"app-secret\"",
        "ForbiddenByRbac",
        "Key Vault Secrets User",
        // Key Vault's own words, which name the caller it saw.
        "Caller is not authorized to perform action on resource.",
        &format!("Caller: appid={SIM_SYSTEM_ASSIGNED_CLIENT_ID};"),
    ] {
        assert!(message.contains(part), "{part} not in {message}");
    }
    assert_eq!(sim.issued_count("contoso.example.com"), 0);
    daemon.stop().await;
}

/// A vault in another directory than the identity's refuses its token twice (before and after
/// the challenge); the failure quotes Key Vault's `AKV10032` with the issuers it expected, which
/// says what is wrong better than any hint.
#[tokio::test]
async fn a_vault_in_another_directory_is_refused_in_key_vaults_words() {
    let Fixture { sim, dir } = fixture(&["contoso.example.com"], Duration::from_secs(3600)).await;
    with_managed_identity(&sim);
    let other_directory = "7e6d5c4b-3a29-4817-9f6e-5d4c3b2a1908";
    sim.set_key_vault_tenant(other_directory);
    sim.set_key_vault_secret("app-secret", SECRET, SimSecretAttributes::default());
    sim.grant_key_vault_access(SIM_SYSTEM_ASSIGNED_CLIENT_ID);
    let url = format!("{}/secrets/app-secret", sim.key_vault_url());
    let mut config = config(
        vec![vault_tenant(&sim, "contoso", dir.path(), &url)],
        daemon_knobs(&sim),
    );
    config.key_vault = Some(managed_identity_reader(&sim, Duration::from_secs(3600)));
    let daemon = start_daemon(config).await;
    let body = daemon
        .wait_for_get("the refusal", "/status", |_, body| {
            body.contains("\"misconfigured\"")
        })
        .await;
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    let error = &status["tenants"][0]["last_error"];
    assert_eq!(error["reason"], "credential", "{error}");
    let message = error["message"].as_str().unwrap();
    for part in [
        "does not accept the token of the system-assigned managed identity",
        "Unauthorized",
        &format!(
            "AKV10032: Invalid issuer. Expected one of https://sts.windows.net/{other_directory}/"
        ),
        "is the vault in this identity's tenant and cloud?",
    ] {
        assert!(message.contains(part), "{part} not in {message}");
    }
    assert!(!message.contains("eyJ"), "{message}");
    assert_eq!(sim.key_vault_read_count("app-secret"), 0);
    daemon.stop().await;
}

/// A version 4 UUID in lower case, as the daemon's request ids are.
fn is_uuid_v4(id: &str) -> bool {
    let groups: Vec<&str> = id.split('-').collect();
    groups.iter().map(|group| group.len()).eq([8, 4, 4, 4, 12])
        && id
            .bytes()
            .all(|b| b == b'-' || b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        && groups[2].starts_with('4')
        && groups[3].starts_with(['8', '9', 'a', 'b'])
}

/// Every call to Key Vault carries its own `x-ms-client-request-id`, as the Azure SDKs send
/// it, and a failure names the one of the call that failed, so Microsoft support can find it.
/// A refused token costs two calls per attempt (before and after the challenge).
#[tokio::test]
async fn every_key_vault_call_carries_a_fresh_client_request_id_and_a_failure_names_it() {
    let Fixture { sim, dir } = fixture(
        &["contoso.example.com", "fabrikam.example.com"],
        Duration::from_secs(3600),
    )
    .await;
    with_managed_identity(&sim);
    sim.set_key_vault_secret("app-secret", SECRET, SimSecretAttributes::default());
    sim.grant_key_vault_access(SIM_SYSTEM_ASSIGNED_CLIENT_ID);
    let url = format!("{}/secrets/app-secret", sim.key_vault_url());
    let missing = format!("{}/secrets/missing", sim.key_vault_url());
    let mut config = config(
        vec![
            vault_tenant(&sim, "contoso", dir.path(), &url),
            vault_tenant(&sim, "fabrikam", dir.path(), &missing),
        ],
        daemon_knobs(&sim),
    );
    config.key_vault = Some(managed_identity_reader(&sim, Duration::from_secs(3600)));
    let daemon = start_daemon(config).await;
    let body = daemon
        .wait_for_get("one token and one refusal", "/status", |_, body| {
            body.contains("\"healthy\"") && body.contains("\"misconfigured\"")
        })
        .await;
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    let refused = status["tenants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|tenant| tenant["name"] == "fabrikam")
        .unwrap();
    let message = refused["last_error"]["message"].as_str().unwrap();
    assert!(message.contains("has no secret \"missing\""), "{message}");
    let named = message
        .split_once("x-ms-client-request-id ")
        .and_then(|(_, rest)| rest.get(..36))
        .unwrap_or_else(|| panic!("no request id in {message}"));
    // Stopped, so the calls below are the last ones. The vault now belongs to another
    // directory: a read is refused before and after the challenge.
    daemon.stop().await;
    sim.set_key_vault_tenant("7e6d5c4b-3a29-4817-9f6e-5d4c3b2a1908");
    let other = format!("{}/secrets/other", sim.key_vault_url());
    let reader = managed_identity_reader(&sim, Duration::from_secs(3600));
    let key_vault = powerbi_tokend::credential::key_vault::KeyVault::new(
        &reader.identities[0],
        reader.refresh_interval,
        None,
    );
    let client = powerbi_tokend::client::TokenClient::new(&daemon_knobs(&sim)).unwrap();
    let err = key_vault.secret(&client, &other).await.unwrap_err();
    let refusal = err.to_string();
    assert!(refusal.contains("AKV10032"), "{refusal}");
    let ids = sim.key_vault_client_request_ids();
    assert!(ids.len() >= 4, "{ids:?}");
    let ids: Vec<String> = ids
        .into_iter()
        .map(|id| id.expect("every call carries x-ms-client-request-id"))
        .collect();
    for id in &ids {
        assert!(is_uuid_v4(id), "{id}");
    }
    let mut distinct = ids.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(distinct.len(), ids.len(), "{ids:?}");
    assert!(ids.iter().any(|id| id == named), "{named} not in {ids:?}");
    // The refusal names the call after the challenge: the last one.
    let last = ids.last().unwrap();
    assert!(
        refusal.contains(&format!("x-ms-client-request-id {last}")),
        "{refusal}"
    );
}

#[tokio::test]
async fn no_vault_token_secret_or_key_reaches_the_log_at_trace_level() {
    let Fixture { sim, dir } = fixture(
        &["contoso.example.com", "certified.example.com"],
        Duration::from_secs(4),
    )
    .await;
    with_managed_identity(&sim);
    sim.set_key_vault_secret("app-secret", SECRET, expiring());
    let (pem, der) = rsa_certificate_pem();
    sim.add_certificate("certified.example.com", CLIENT_ID, der);
    store_certificate(&sim, "app-cert", &pem);
    sim.grant_key_vault_access(SIM_SYSTEM_ASSIGNED_CLIENT_ID);
    let config = write_vault_config(
        &sim,
        dir.path(),
        "[server]\nlisten = \"127.0.0.1:0\"\n",
        r#"
[[tenant]]
name = "contoso"
tenant_id = "contoso.example.com"

[[tenant]]
name = "refused"
tenant_id = "contoso.example.com"
client_secret = { key_vault = "{vault}/secrets/missing" }

[[tenant]]
name = "certified"
tenant_id = "certified.example.com"
client_certificate = { key_vault = "{vault}/secrets/app-cert" }
"#,
    );
    let log = dir.path().join("daemon.log");
    let mut daemon = Spawned::run(&config, &log, "trace", &[]);
    wait_for(
        "two tokens for contoso, one for certified",
        Duration::from_secs(20),
        || {
            sim.issued_count("contoso.example.com") >= 2
                && sim.issued_count("certified.example.com") >= 1
        },
    )
    .await;
    let addr = daemon.admin_addr().await;
    let (_, status, _) = common::process::get(addr, "/status", Duration::from_secs(5)).await;
    let (_, metrics, _) = common::process::get(addr, "/metrics", Duration::from_secs(5)).await;
    daemon.signal("TERM");
    daemon.wait_exit(Duration::from_secs(10)).await;
    let text = daemon.log_text();
    // The missing secret was reported, by name.
    assert!(text.contains("has no secret \\\"missing\\\""), "{text}");
    // A line of the private key's base64, as it would appear if the PEM leaked.
    let key_line = pem
        .lines()
        .nth(2)
        .expect("a PEM key has several lines")
        .to_owned();
    for shown in [&text, &status, &metrics] {
        assert!(!shown.contains(SECRET), "the client secret is shown");
        assert!(
            !shown.contains("PRIVATE KEY") && !shown.contains(&key_line),
            "the key is shown"
        );
        // Access tokens for Power BI and for Key Vault are JWTs: none may appear.
        assert!(!shown.contains("eyJ"), "a token is shown");
    }
}

/// An RSA certificate and its key as one PEM (what Key Vault's secret of a certificate with
/// content type `application/x-pem-file` holds), and the certificate's DER.
fn rsa_certificate_pem() -> (String, Vec<u8>) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).expect("RSA key");
    let params = rcgen::CertificateParams::new(vec!["powerbi-tokend".to_owned()]).unwrap();
    let cert = params.self_signed(&key).unwrap();
    (
        format!("{}{}", key.serialize_pem(), cert.pem()),
        cert.der().to_vec(),
    )
}

#[tokio::test]
async fn a_certificate_in_key_vault_signs_the_assertion() {
    let Fixture { sim, dir } = fixture(&["contoso.example.com"], Duration::from_secs(3600)).await;
    with_managed_identity(&sim);
    let (pem, der) = rsa_certificate_pem();
    sim.add_certificate("contoso.example.com", CLIENT_ID, der);
    store_certificate(&sim, "app-cert", &pem);
    sim.grant_key_vault_access(SIM_SYSTEM_ASSIGNED_CLIENT_ID);
    let url = format!("{}/secrets/app-cert", sim.key_vault_url());
    let tenant = vault_certificate_tenant(&sim, "contoso", dir.path(), &url);
    let mut config = config(vec![tenant], daemon_knobs(&sim));
    config.key_vault = Some(managed_identity_reader(&sim, Duration::from_secs(3600)));
    let daemon = start_daemon(config).await;
    wait_for(
        "a token signed with the vault's certificate",
        Duration::from_secs(10),
        || token_in(&dir.path().join("contoso.json")).is_some(),
    )
    .await;
    assert_eq!(
        sim.last_assertion("contoso.example.com").unwrap().claims["iss"],
        CLIENT_ID
    );
    assert_eq!(sim.key_vault_read_count("app-cert"), 1);
    // The certificate's notAfter is the credential's expiry.
    let metrics = daemon
        .wait_for_get("the certificate expiry", "/metrics", |_, body| {
            body.contains("powerbi_tokend_credential_expiry_timestamp_seconds{kind=\"certificate\",tenant=\"contoso\"}")
        })
        .await;
    assert!(!metrics.contains("PRIVATE KEY"));
    daemon.stop().await;
}

#[tokio::test]
async fn check_online_reads_each_secret_once_and_reports_what_is_wrong() {
    let Fixture { sim, dir } = fixture(&["contoso.example.com"], Duration::from_secs(3600)).await;
    with_managed_identity(&sim);
    sim.set_key_vault_secret("app-secret", SECRET, expiring());
    sim.set_key_vault_secret(
        "old-secret",
        "an-old-secret-value",
        SimSecretAttributes {
            exp: Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_600_000_000)),
            ..SimSecretAttributes::default()
        },
    );
    // A certificate kept as PKCS#12: refused with the advice the daemon gives.
    sim.set_key_vault_secret(
        "p12-cert",
        "MIIKdgIBAzCCCjwGCSqGSIb3DQEHAaCCCi0EggopMIIKJTCCBL8GCSqGSIb3",
        SimSecretAttributes {
            content_type: Some("application/x-pkcs12".to_owned()),
            certificate: true,
            ..SimSecretAttributes::default()
        },
    );
    sim.grant_key_vault_access(SIM_SYSTEM_ASSIGNED_CLIENT_ID);
    let config = write_vault_config(
        &sim,
        dir.path(),
        "",
        r#"
[[tenant]]
name = "contoso"
tenant_id = "contoso.example.com"

[[tenant]]
name = "fabrikam"
tenant_id = "contoso.example.com"

[[tenant]]
name = "stale"
tenant_id = "contoso.example.com"
client_secret = { key_vault = "{vault}/secrets/old-secret" }

[[tenant]]
name = "gone"
tenant_id = "contoso.example.com"
client_secret = { key_vault = "{vault}/secrets/deleted" }

[[tenant]]
name = "p12"
tenant_id = "contoso.example.com"
client_certificate = { key_vault = "{vault}/secrets/p12-cert" }
"#,
    );
    let run = |online: bool| {
        let config = config.clone();
        tokio::task::spawn_blocking(move || {
            let mut command = std::process::Command::new(common::process::BIN);
            command.arg("check").arg("--config").arg(&config);
            if online {
                command.arg("--online");
            }
            command.output().unwrap()
        })
    };
    // Offline, the URLs are well formed and nothing is read.
    let offline = run(false).await.unwrap();
    assert!(offline.status.success(), "{offline:?}");
    assert_eq!(sim.key_vault_request_count(), 0);

    let online = run(true).await.unwrap();
    assert_eq!(online.status.code(), Some(2), "{online:?}");
    let stderr = String::from_utf8_lossy(&online.stderr);
    assert!(
        stderr.contains("tenant \"gone\": client_secret: Key Vault")
            && stderr.contains("has no secret \"deleted\""),
        "{stderr}"
    );
    assert!(
        stderr.contains("tenant \"stale\": client_secret: the client secret in")
            && stderr.contains("expired on 2020-09-13"),
        "{stderr}"
    );
    assert!(
        stderr.contains("tenant \"p12\"")
            && stderr.contains("is kept as PKCS#12; only PEM is read")
            && stderr.contains("application/x-pem-file"),
        "{stderr}"
    );
    assert!(!stderr.contains("tenant \"contoso\""), "{stderr}");
    // app-secret once for two tenants; the tenants' token endpoint never asked.
    assert_eq!(sim.key_vault_read_count("app-secret"), 1);
    assert_eq!(sim.issued_count("contoso.example.com"), 0);
    let stdout = String::from_utf8_lossy(&online.stdout);
    for text in [&stdout, &stderr] {
        assert!(!text.contains(SECRET) && !text.contains("an-old-secret-value"));
        assert!(!text.contains("eyJ"));
    }
}

#[tokio::test]
async fn a_challenge_for_another_clouds_vault_is_followed_once() {
    let Fixture { sim, dir } = fixture(&["contoso.example.com"], Duration::from_secs(3600)).await;
    with_managed_identity(&sim);
    // The vault is a US Government one; the reader was configured for the public cloud.
    sim.set_powerbi_cloud(powerbi_tokend_sim::SimCloud::Gcchigh);
    sim.set_key_vault_secret("app-secret", SECRET, SimSecretAttributes::default());
    sim.grant_key_vault_access(SIM_SYSTEM_ASSIGNED_CLIENT_ID);
    let url = format!("{}/secrets/app-secret", sim.key_vault_url());
    // The tenant's own token is for the same government cloud's Power BI.
    let mut tenant = vault_tenant(&sim, "contoso", dir.path(), &url);
    tenant.resource = powerbi_tokend::cloud::Cloud::Gcchigh
        .power_bi_resource()
        .into();
    let mut config = config(vec![tenant], daemon_knobs(&sim));
    config.key_vault = Some(managed_identity_reader(&sim, Duration::from_secs(3600)));
    let daemon = start_daemon(config).await;
    wait_for(
        "the token after the challenge",
        Duration::from_secs(10),
        || token_in(&dir.path().join("contoso.json")).is_some(),
    )
    .await;
    let query = sim.last_managed_identity_request().unwrap().query;
    assert!(
        query
            .iter()
            .any(|(key, value)| key == "resource" && value == "https://vault.usgovcloudapi.net"),
        "{query:?}"
    );
    assert_eq!(sim.key_vault_read_count("app-secret"), 1);
    daemon.stop().await;
}

#[tokio::test]
async fn a_throttled_vault_is_a_transient_failure() {
    let Fixture { sim, dir } = fixture(&["contoso.example.com"], Duration::from_secs(3600)).await;
    with_managed_identity(&sim);
    sim.set_key_vault_secret("app-secret", SECRET, SimSecretAttributes::default());
    sim.grant_key_vault_access(SIM_SYSTEM_ASSIGNED_CLIENT_ID);
    sim.set_key_vault_fault(
        "app-secret",
        Some(powerbi_tokend_sim::KeyVaultFault::Throttled {
            retry_after_secs: 1,
        }),
    );
    let url = format!("{}/secrets/app-secret", sim.key_vault_url());
    let mut config = config(
        vec![vault_tenant(&sim, "contoso", dir.path(), &url)],
        daemon_knobs(&sim),
    );
    config.key_vault = Some(managed_identity_reader(&sim, Duration::from_secs(3600)));
    let daemon = start_daemon(config).await;
    let body = daemon
        .wait_for_get("the throttling", "/status", |_, body| {
            body.contains("\"retrying\"")
        })
        .await;
    assert!(body.contains("answered HTTP 429"), "{body}");
    // Over: the next attempt reads the secret and gets the token.
    sim.set_key_vault_fault("app-secret", None);
    wait_for("the token", Duration::from_secs(10), || {
        token_in(&dir.path().join("contoso.json")).is_some()
    })
    .await;
    daemon.stop().await;
}

/// The app of the partner's workload identity (a multi-tenant app of its own).
const PARTNER_APP: &str = "6e5d4c3b-2a19-4807-b6f5-e4d3c2b1a098";
/// The partner's own directory, where its workload identity lives.
const PARTNER_HOME: &str = "1a2b3c4d-5e6f-4a7b-8c9d-0e1f2a3b4c5d";
/// A customer's directory, whose vault the partner's identity may be allowed to read.
const CUSTOMER: &str = "9f8e7d6c-5b4a-4392-a1b0-c9d8e7f6a5b4";

/// Federates the app `client_id` in each of `tenants` with a Kubernetes service account, whose
/// token it writes to a file in `dir`: its path.
fn federate(sim: &SimEntra, client_id: &str, tenants: &[&str], dir: &Path) -> std::path::PathBuf {
    let (issuer, subject, audience) = (
        "https://oidc.prod-aks.azure.com/0000/",
        "system:serviceaccount:powerbi:tokend",
        "api://AzureADTokenExchange",
    );
    for tenant in tenants {
        sim.add_federated_credential(
            tenant,
            client_id,
            SimFederatedCredential {
                issuer: issuer.to_owned(),
                subject: subject.to_owned(),
                audience: audience.to_owned(),
            },
        );
    }
    let token_file = dir.join("azure-identity-token");
    std::fs::write(&token_file, federated_token(issuer, subject, audience)).unwrap();
    token_file
}

/// [`PARTNER_APP`] in each of `tenants`, federated with a service account: its token file.
fn partner_app(sim: &SimEntra, tenants: &[&str], dir: &Path) -> std::path::PathBuf {
    for tenant in tenants {
        sim.add_tenant(
            tenant,
            powerbi_tokend_sim::SimTenant::new(
                powerbi_tokend_sim::SimApp::new(PARTNER_APP, "no-secret-is-used"),
                Duration::from_secs(3600),
            ),
        );
    }
    federate(sim, PARTNER_APP, tenants, dir)
}

/// A config file in `dir`: `[key_vault]` reading with the simulator's managed identity, the
/// workload identities `identities` (`(name, extra keys)`) of [`PARTNER_APP`] in
/// [`PARTNER_HOME`], `[defaults]` naming `app-secret` in the first vault, and `tenants` (TOML,
/// `{vault}` replaced by `vault`).
fn write_identities_config(
    sim: &SimEntra,
    dir: &Path,
    token_file: &Path,
    identities: &[(&str, &str)],
    (vault, tenants): (&str, &str),
) -> std::path::PathBuf {
    let named: String = identities
        .iter()
        .map(|(name, extra)| {
            format!(
                r#"
[key_vault.identities.{name}]
credential = "workload_identity"
client_id = "{PARTNER_APP}"
tenant_id = "{PARTNER_HOME}"
federated_token_file = "{token_file}"
authority_host = "{authority}"
{extra}
"#,
                token_file = token_file.display(),
                authority = sim.authority_host(),
            )
        })
        .collect();
    let config = dir.join("config.toml");
    let text = format!(
        r#"[server]
listen = "127.0.0.1:0"

[daemon]
imds_endpoint = "{imds}"

[key_vault]
credential = "managed_identity"
managed_identity = "system"
{named}
[defaults]
authority_host = "{authority}"
client_id = "{CLIENT_ID}"
client_secret = {{ key_vault = "{first}/secrets/app-secret" }}
sinks = [ {{ type = "file", path = "{tokens}/{{name}}.json" }} ]
{tenants}"#,
        imds = sim.imds_endpoint(),
        authority = sim.authority_host(),
        first = sim.key_vault_url(),
        tokens = dir.display(),
        tenants = tenants.replace("{vault}", vault),
    );
    std::fs::write(&config, text).unwrap();
    config
}

/// The daemon, started from the config file at `path`.
async fn start_from(path: &Path) -> Running {
    start_daemon(powerbi_tokend::config::load(path).await.unwrap()).await
}

/// The `/status` entry of `tenant`.
fn status_of<'s>(status: &'s serde_json::Value, tenant: &str) -> &'s serde_json::Value {
    status["tenants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|entry| entry["name"] == tenant)
        .unwrap_or_else(|| panic!("{tenant} not in {status}"))
}

/// Runs `check --online` on `config`.
async fn check_online(config: &Path) -> std::process::Output {
    let config = config.to_owned();
    tokio::task::spawn_blocking(move || {
        std::process::Command::new(common::process::BIN)
            .arg("check")
            .arg("--config")
            .arg(&config)
            .arg("--online")
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

/// Two identities, two vaults, four tenants: each vault is read once, by the identity its
/// tenants name (each vault grants only that one, in its own directory), and each identity
/// asks for one token, whatever the number of tenants it reads for.
#[tokio::test]
async fn each_tenant_reads_its_vault_with_the_identity_it_names_and_each_identity_one_token() {
    let names = ["contoso", "fabrikam", "northwind", "wingtip"];
    let ids: Vec<String> = names.iter().map(|n| format!("{n}.example.com")).collect();
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    let Fixture { sim, dir } = fixture(&ids, Duration::from_secs(3600)).await;
    with_managed_identity(&sim);
    sim.set_key_vault_secret("app-secret", SECRET, SimSecretAttributes::default());
    sim.grant_key_vault_access(SIM_SYSTEM_ASSIGNED_CLIENT_ID);
    let token_file = partner_app(&sim, &[PARTNER_HOME], dir.path());
    let partner_vault = sim.start_key_vault().await.unwrap();
    partner_vault.set_tenant(PARTNER_HOME);
    partner_vault.set_secret("app-secret", SECRET, expiring());
    partner_vault.grant_access(PARTNER_APP);
    let config = write_identities_config(
        &sim,
        dir.path(),
        &token_file,
        &[("partner", "")],
        (
            &partner_vault.url(),
            r#"
[[tenant]]
name = "contoso"
tenant_id = "contoso.example.com"

[[tenant]]
name = "fabrikam"
tenant_id = "fabrikam.example.com"

[[tenant]]
name = "northwind"
tenant_id = "northwind.example.com"
key_vault_credential = "partner"
client_secret = { key_vault = "{vault}/secrets/app-secret" }

[[tenant]]
name = "wingtip"
tenant_id = "wingtip.example.com"
key_vault_credential = "partner"
client_secret = { key_vault = "{vault}/secrets/app-secret" }
"#,
        ),
    );
    let daemon = start_from(&config).await;
    wait_for("every tenant's token", Duration::from_secs(10), || {
        names
            .iter()
            .all(|name| token_in(&dir.path().join(format!("{name}.json"))).is_some())
    })
    .await;
    // Each vault saw its own identity, once.
    assert_eq!(sim.key_vault_read_count("app-secret"), 1);
    assert_eq!(
        sim.last_key_vault_caller().as_deref(),
        Some(SIM_SYSTEM_ASSIGNED_CLIENT_ID)
    );
    assert_eq!(partner_vault.read_count("app-secret"), 1);
    assert_eq!(partner_vault.last_caller().as_deref(), Some(PARTNER_APP));
    // One Key Vault token per identity: two tenants each, one request each.
    assert_eq!(sim.managed_identity_issued_count(), 1);
    assert_eq!(sim.issued_count(PARTNER_HOME), 1);
    let (_, body) = daemon.get("/status").await;
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    for (tenant, identity) in [
        ("contoso", "default"),
        ("fabrikam", "default"),
        ("northwind", "partner"),
        ("wingtip", "partner"),
    ] {
        assert_eq!(
            status_of(&status, tenant)["key_vault"],
            serde_json::json!({"identity": identity, "last_error": null}),
            "{tenant}"
        );
    }
    // The partner vault's expiry is the partner tenants' credential expiry.
    assert_eq!(
        status_of(&status, "wingtip")["credential_expires_at"],
        "2030-01-01T00:00:00Z"
    );
    let (_, metrics) = daemon.get("/metrics").await;
    for identity in ["default", "partner"] {
        assert!(
            metrics.contains(&format!(
                "powerbi_tokend_key_vault_reads_total{{identity=\"{identity}\",result=\"success\"}} 1"
            )),
            "{metrics}"
        );
    }
    daemon.stop().await;
}

/// A customer's vault challenges the partner's identity to its own directory: an identity that
/// lists the customer in key_vault_allowed_tenants follows (one token from there), one that
/// does not refuses before asking, in words that name the tenant and the key, in `/status`
/// and in `check --online`.
#[tokio::test]
async fn a_challenge_to_another_tenant_is_followed_only_when_allowed() {
    let Fixture { sim, dir } = fixture(
        &["followed.example.com", "refused.example.com"],
        Duration::from_secs(3600),
    )
    .await;
    with_managed_identity(&sim);
    let token_file = partner_app(&sim, &[PARTNER_HOME, CUSTOMER], dir.path());
    let customer_vault = sim.start_key_vault().await.unwrap();
    customer_vault.set_tenant(CUSTOMER);
    customer_vault.set_secret("app-secret", SECRET, SimSecretAttributes::default());
    customer_vault.grant_access(PARTNER_APP);
    let vault = customer_vault.url();
    let config = write_identities_config(
        &sim,
        dir.path(),
        &token_file,
        &[
            (
                "partner",
                &format!("key_vault_allowed_tenants = [\"{CUSTOMER}\"]"),
            ),
            ("strict", ""),
        ],
        (
            &vault,
            r#"
[[tenant]]
name = "followed"
tenant_id = "followed.example.com"
key_vault_credential = "partner"
client_secret = { key_vault = "{vault}/secrets/app-secret" }

[[tenant]]
name = "refused"
tenant_id = "refused.example.com"
key_vault_credential = "strict"
client_secret = { key_vault = "{vault}/secrets/app-secret" }
"#,
        ),
    );
    let refusal = format!(
        "Key Vault {vault} asks for a token from tenant {CUSTOMER}, not from the tenant of the workload identity with client ID {PARTNER_APP} in tenant {PARTNER_HOME} (Key Vault identity \"strict\"); add \"{CUSTOMER}\" to key_vault_allowed_tenants of Key Vault identity \"strict\" ([key_vault.identities.strict]) to allow it"
    );
    let daemon = start_from(&config).await;
    let body = daemon
        .wait_for_get("one token and one refusal", "/status", |_, body| {
            body.contains("\"healthy\"") && body.contains("\"misconfigured\"")
        })
        .await;
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    let followed = status_of(&status, "followed");
    assert_eq!(followed["state"], "healthy", "{followed}");
    assert_eq!(
        followed["key_vault"],
        serde_json::json!({"identity": "partner", "last_error": null})
    );
    let refused = status_of(&status, "refused");
    assert_eq!(refused["last_error"]["reason"], "credential", "{refused}");
    assert_eq!(refused["last_error"]["class"], "permanent", "{refused}");
    let message = refused["last_error"]["message"].as_str().unwrap();
    assert!(message.starts_with(&refusal), "{message}");
    assert_eq!(refused["key_vault"]["identity"], "strict");
    assert_eq!(
        refused["key_vault"]["last_error"]["reason"],
        "tenant_not_allowed"
    );
    assert!(
        refused["key_vault"]["last_error"]["message"]
            .as_str()
            .is_some_and(|text| text.starts_with(&refusal)),
        "{refused}"
    );
    // The customer's vault was read once, by the identity it let in, with a token from its
    // own directory: each identity's first token came from home and was challenged; only the
    // allowed one asked the customer's directory.
    assert_eq!(customer_vault.read_count("app-secret"), 1);
    assert_eq!(customer_vault.last_caller().as_deref(), Some(PARTNER_APP));
    assert_eq!(sim.issued_count(CUSTOMER), 1);
    assert_eq!(sim.issued_count(PARTNER_HOME), 2);
    let (_, metrics) = daemon.get("/metrics").await;
    assert!(
        metrics.contains(
            "powerbi_tokend_key_vault_reads_total{identity=\"strict\",result=\"tenant_not_allowed\"}"
        ),
        "{metrics}"
    );
    daemon.stop().await;

    // check --online reads through the same readers: the same refusal, at the line of the
    // tenant's client_secret.
    let checked = check_online(&config).await;
    assert_eq!(checked.status.code(), Some(2), "{checked:?}");
    let stderr = String::from_utf8_lossy(&checked.stderr);
    let text = std::fs::read_to_string(&config).unwrap();
    let refused_at = text.find("name = \"refused\"").unwrap();
    let line = text[..refused_at].lines().count()
        + text[refused_at..]
            .lines()
            .position(|line| line.starts_with("client_secret"))
            .unwrap()
        + 1;
    assert!(
        stderr.contains(&format!(
            "config.toml:{line}: tenant \"refused\": client_secret: {refusal}"
        )),
        "line {line}: {stderr}"
    );
    assert!(!stderr.contains("tenant \"followed\""), "{stderr}");
    assert_eq!(customer_vault.read_count("app-secret"), 2);
    assert_eq!(sim.issued_count(CUSTOMER), 2);
    for text in [&stderr, &String::from_utf8_lossy(&checked.stdout)] {
        assert!(!text.contains(SECRET) && !text.contains("eyJ"), "{text}");
    }
}

/// `check --online` follows a vault's challenge to another cloud as the daemon does: a vault
/// of the China cloud read with a managed identity configured for none (the public cloud's
/// resource first).
#[tokio::test]
async fn check_online_follows_a_challenge_to_another_clouds_vault() {
    let Fixture { sim, dir } = fixture(&["contoso.example.com"], Duration::from_secs(3600)).await;
    with_managed_identity(&sim);
    let china = sim.start_key_vault().await.unwrap();
    china.set_cloud(powerbi_tokend_sim::SimCloud::China);
    // Expiring in 10 days: the warning shows the value was read.
    let soon = SystemTime::now() + Duration::from_secs(10 * 86_400);
    china.set_secret(
        "app-secret",
        SECRET,
        SimSecretAttributes {
            exp: Some(soon),
            ..SimSecretAttributes::default()
        },
    );
    china.grant_access(SIM_SYSTEM_ASSIGNED_CLIENT_ID);
    let tenants = format!(
        r#"
[[tenant]]
name = "contoso"
tenant_id = "contoso.example.com"
client_secret = {{ key_vault = "{china}/secrets/app-secret" }}
"#,
        china = china.url()
    );
    let config = write_vault_config(&sim, dir.path(), "", &tenants);
    let checked = check_online(&config).await;
    assert!(checked.status.success(), "{checked:?}");
    assert_eq!(china.read_count("app-secret"), 1);
    assert_eq!(sim.key_vault_request_count(), 0);
    let query = sim.last_managed_identity_request().unwrap().query;
    assert!(
        query
            .iter()
            .any(|(key, value)| key == "resource" && value == "https://vault.azure.cn"),
        "{query:?}"
    );
    let stdout = String::from_utf8_lossy(&checked.stdout);
    let stderr = String::from_utf8_lossy(&checked.stderr);
    assert!(
        format!("{stdout}{stderr}").contains("tenant \"contoso\": the client secret expires on"),
        "{stdout}{stderr}"
    );
}
