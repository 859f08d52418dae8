//! Every credential kind against the simulated Entra ID: success, each failure, and rotation
//! without a restart. Client assertions are checked with an independent implementation: the
//! `openssl` command line.

mod common;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::*;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use secrecy::{ExposeSecret, SecretString};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use powerbi_tokend::client::TokenClient;
use powerbi_tokend::config::SecretSource;
use powerbi_tokend::config::{
    AssertionAlgorithm, CertificateConfig, CredentialConfig, DaemonConfig, ManagedIdentityConfig,
    ManagedIdentityId, ManagedIdentitySource, TenantConfig,
};
use powerbi_tokend::credential::Credential;
use powerbi_tokend::credential::certificate::Certificate;
use powerbi_tokend::error::{ErrorClass, Reason};
use powerbi_tokend_sim::{
    SIM_SYSTEM_ASSIGNED_CLIENT_ID, SimEntra, SimFederatedCredential, SimManagedIdentity,
    managed_identity_object_id, managed_identity_resource_id,
};

const TENANT: &str = "contoso.onmicrosoft.com";

fn openssl(args: &[&str], dir: &Path) -> std::process::Output {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("the openssl command line is needed for these tests");
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A fresh RSA key and self-signed certificate, `<stem>.key` and `<stem>.crt`, valid `days`.
fn make_certificate(dir: &Path, stem: &str, days: u32) -> CertificateConfig {
    let key = format!("{stem}.key");
    let crt = format!("{stem}.crt");
    openssl(
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &crt,
            "-days",
            &days.to_string(),
            "-subj",
            "/CN=powerbi-tokend-test",
        ],
        dir,
    );
    CertificateConfig {
        cert: dir.join(crt),
        key: dir.join(key),
        algorithm: AssertionAlgorithm::Ps256,
        send_x5c: false,
        key_vault: None,
    }
}

fn der_of(cert: &Path) -> Vec<u8> {
    let pem = std::fs::read(cert).unwrap();
    CertificateDer::from_pem_slice(&pem).unwrap().to_vec()
}

fn certificate_tenant(sim: &SimEntra, dir: &Path, cert: &CertificateConfig) -> TenantConfig {
    let mut tenant = tenant(sim, "contoso", TENANT, dir);
    tenant.credential = CredentialConfig::Certificate(cert.clone());
    tenant
}

fn client(daemon: &DaemonConfig) -> TokenClient {
    TokenClient::new(daemon).unwrap()
}

fn assertion_parts(jwt: &str) -> (serde_json::Value, serde_json::Value, String, Vec<u8>) {
    let mut parts = jwt.split('.');
    let (header, claims, signature) = (
        parts.next().unwrap(),
        parts.next().unwrap(),
        parts.next().unwrap(),
    );
    let decode = |part: &str| -> serde_json::Value {
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
    };
    (
        decode(header),
        decode(claims),
        format!("{header}.{claims}"),
        URL_SAFE_NO_PAD.decode(signature).unwrap(),
    )
}

/// Verifies a JWT signature and thumbprint with openssl, not with the code that produced them.
fn verify_with_openssl(
    dir: &Path,
    cert: &CertificateConfig,
    jwt: &str,
    algorithm: AssertionAlgorithm,
) {
    let (header, _, signing_input, signature) = assertion_parts(jwt);
    std::fs::write(dir.join("input.txt"), signing_input).unwrap();
    std::fs::write(dir.join("sig.bin"), signature).unwrap();
    let pubkey = openssl(
        &[
            "x509",
            "-in",
            cert.cert.to_str().unwrap(),
            "-pubkey",
            "-noout",
        ],
        dir,
    )
    .stdout;
    std::fs::write(dir.join("pub.pem"), pubkey).unwrap();
    let mut verify = vec![
        "dgst",
        "-sha256",
        "-verify",
        "pub.pem",
        "-signature",
        "sig.bin",
    ];
    if algorithm == AssertionAlgorithm::Ps256 {
        verify.extend([
            "-sigopt",
            "rsa_padding_mode:pss",
            "-sigopt",
            "rsa_pss_saltlen:-1",
        ]);
    }
    verify.push("input.txt");
    let out = openssl(&verify, dir);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "Verified OK");

    openssl(
        &[
            "x509",
            "-in",
            cert.cert.to_str().unwrap(),
            "-outform",
            "DER",
            "-out",
            "cert.der",
        ],
        dir,
    );
    let (digest, field) = match algorithm {
        AssertionAlgorithm::Ps256 => ("-sha256", "x5t#S256"),
        AssertionAlgorithm::Rs256 => ("-sha1", "x5t"),
    };
    let hash = openssl(&["dgst", digest, "-binary", "cert.der"], dir).stdout;
    assert_eq!(
        header[field],
        URL_SAFE_NO_PAD.encode(hash),
        "{field} differs from openssl's"
    );
}

#[test]
#[cfg_attr(
    not(has_openssl),
    ignore = "skipped: needs openssl (Debian package openssl)"
)]
fn assertions_verify_with_openssl_ps256_and_rs256() {
    let dir = tempfile::tempdir().unwrap();
    let mut cert = make_certificate(dir.path(), "app", 30);
    let loaded = Certificate::load(&cert).unwrap();
    let audience = "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token";
    let now = powerbi_tokend::clock::unix_now();

    let jwt = loaded
        .assertion(AssertionAlgorithm::Ps256, false, CLIENT_ID, audience, now)
        .unwrap();
    let (header, claims, _, _) = assertion_parts(jwt.expose_secret());
    assert_eq!(header["alg"], "PS256");
    assert_eq!(header["typ"], "JWT");
    assert!(header.get("x5c").is_none());
    assert_eq!(claims["aud"], audience);
    assert_eq!(claims["iss"], CLIENT_ID);
    assert_eq!(claims["sub"], CLIENT_ID);
    assert_eq!(claims["nbf"], now);
    assert_eq!(claims["iat"], now);
    assert_eq!(claims["exp"], now + 600);
    assert_eq!(claims["jti"].as_str().unwrap().len(), 36);
    verify_with_openssl(
        dir.path(),
        &cert,
        jwt.expose_secret(),
        AssertionAlgorithm::Ps256,
    );

    let again = loaded
        .assertion(AssertionAlgorithm::Ps256, false, CLIENT_ID, audience, now)
        .unwrap();
    assert_ne!(
        assertion_parts(again.expose_secret()).1["jti"],
        claims["jti"],
        "jti must be unique"
    );

    cert.algorithm = AssertionAlgorithm::Rs256;
    let jwt = loaded
        .assertion(AssertionAlgorithm::Rs256, true, CLIENT_ID, audience, now)
        .unwrap();
    let (header, _, _, _) = assertion_parts(jwt.expose_secret());
    assert_eq!(header["alg"], "RS256");
    let x5c = header["x5c"].as_array().unwrap();
    assert_eq!(
        base64::engine::general_purpose::STANDARD
            .decode(x5c[0].as_str().unwrap())
            .unwrap(),
        der_of(&cert.cert)
    );
    verify_with_openssl(
        dir.path(),
        &cert,
        jwt.expose_secret(),
        AssertionAlgorithm::Rs256,
    );
}

#[test]
#[cfg_attr(
    not(has_openssl),
    ignore = "skipped: needs openssl (Debian package openssl)"
)]
fn key_and_certificate_must_match() {
    let dir = tempfile::tempdir().unwrap();
    let a = make_certificate(dir.path(), "a", 30);
    let b = make_certificate(dir.path(), "b", 30);
    let mixed = CertificateConfig {
        key: b.key.clone(),
        ..a.clone()
    };
    let err = Certificate::load(&mixed).unwrap_err();
    assert!(
        err.to_string()
            .contains("does not belong to the certificate"),
        "{err}"
    );
    // One PEM holding both key and certificate works.
    let both = dir.path().join("both.pem");
    let text = format!(
        "{}{}",
        std::fs::read_to_string(&a.key).unwrap(),
        std::fs::read_to_string(&a.cert).unwrap()
    );
    std::fs::write(&both, text).unwrap();
    let single = CertificateConfig {
        cert: both.clone(),
        key: both,
        ..a
    };
    assert!(Certificate::load(&single).is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(has_openssl),
    ignore = "skipped: needs openssl (Debian package openssl)"
)]
async fn certificate_credential_against_the_simulator() {
    let Fixture { sim, dir } = fixture(&[TENANT], Duration::from_secs(3600)).await;
    let cert = make_certificate(dir.path(), "app", 30);
    let tenant = certificate_tenant(&sim, dir.path(), &cert);
    let client = client(&fast_daemon());
    let mut credential = Credential::new(&tenant.credential);

    // Not registered in Entra yet: AADSTS700027, a configuration problem.
    let err = credential.fetch(&client, None, &tenant).await.unwrap_err();
    assert_eq!(
        (err.class, err.reason),
        (ErrorClass::Permanent, Reason::InvalidClient)
    );
    assert_eq!(err.aadsts_code().as_deref(), Some("AADSTS700027"));

    sim.add_certificate(TENANT, CLIENT_ID, der_of(&cert.cert));
    credential.fetch(&client, None, &tenant).await.unwrap();
    let request = sim.last_request(TENANT).unwrap();
    let form = |key: &str| {
        request
            .form
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
    };
    assert_eq!(
        form("client_assertion_type").as_deref(),
        Some(powerbi_tokend::client::JWT_BEARER)
    );
    assert_eq!(form("client_secret"), None);
    let seen = sim.last_assertion(TENANT).unwrap();
    assert_eq!(seen.header["alg"], "PS256");
    assert_eq!(seen.claims["aud"], tenant.token_url().unwrap());

    // RS256 with a SHA-1 x5t is accepted too (legacy registrations).
    let mut legacy = cert.clone();
    legacy.algorithm = AssertionAlgorithm::Rs256;
    let mut legacy_tenant = tenant.clone();
    legacy_tenant.credential = CredentialConfig::Certificate(legacy);
    Credential::new(&legacy_tenant.credential)
        .fetch(&client, None, &legacy_tenant)
        .await
        .unwrap();
    assert_eq!(sim.last_assertion(TENANT).unwrap().header["alg"], "RS256");

    // A key that does not match its certificate never reaches Entra.
    let other = make_certificate(dir.path(), "other", 30);
    let mut broken = tenant.clone();
    broken.credential = CredentialConfig::Certificate(CertificateConfig {
        key: other.key,
        ..cert
    });
    let before = sim.request_count(TENANT);
    let err = Credential::new(&broken.credential)
        .fetch(&client, None, &broken)
        .await
        .unwrap_err();
    assert_eq!(
        (err.class, err.reason),
        (ErrorClass::Permanent, Reason::Credential)
    );
    assert_eq!(sim.request_count(TENANT), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(has_openssl),
    ignore = "skipped: needs openssl (Debian package openssl)"
)]
async fn certificate_rotation_without_restart() {
    let Fixture { sim, dir } = fixture(&[TENANT], Duration::from_secs(2)).await;
    let pki = dir.path().join("pki");
    std::fs::create_dir(&pki).unwrap();
    let old = make_certificate(&pki, "old", 30);
    sim.add_certificate(TENANT, CLIENT_ID, der_of(&old.cert));
    // The tenant reads fixed paths; rotation replaces the files behind them.
    let live = CertificateConfig {
        cert: pki.join("live.crt"),
        key: pki.join("live.key"),
        ..old.clone()
    };
    std::fs::copy(&old.cert, &live.cert).unwrap();
    std::fs::copy(&old.key, &live.key).unwrap();
    let tenant = certificate_tenant(&sim, dir.path(), &live);
    let daemon = start_daemon(config(vec![tenant], fast_daemon())).await;
    let path = dir.path().join("contoso.json");
    wait_for("the first token", Duration::from_secs(5), || path.exists()).await;
    let old_thumbprint = Certificate::load(&old)
        .unwrap()
        .thumbprint_sha256()
        .to_owned();
    assert_eq!(
        sim.last_assertion(TENANT).unwrap().header["x5t#S256"],
        old_thumbprint
    );

    // Rotate: a new certificate in Entra, the old one removed, new files written atomically.
    let new = make_certificate(&pki, "new", 30);
    sim.remove_certificates(TENANT, CLIENT_ID);
    sim.add_certificate(TENANT, CLIENT_ID, der_of(&new.cert));
    for (from, to) in [(&new.key, &live.key), (&new.cert, &live.cert)] {
        let temp = pki.join("swap.tmp");
        std::fs::copy(from, &temp).unwrap();
        std::fs::rename(&temp, to).unwrap();
    }
    let new_thumbprint = Certificate::load(&new)
        .unwrap()
        .thumbprint_sha256()
        .to_owned();
    let issued = sim.issued_count(TENANT);
    wait_for(
        "a token signed with the new certificate",
        Duration::from_secs(5),
        || {
            sim.issued_count(TENANT) > issued
                && sim
                    .last_assertion(TENANT)
                    .is_some_and(|a| a.header["x5t#S256"] == new_thumbprint)
        },
    )
    .await;
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_file_rotation_without_restart() {
    let Fixture { sim, dir } = fixture(&[TENANT], Duration::from_secs(2)).await;
    let secret_file = dir.path().join("secret");
    std::fs::write(&secret_file, format!("{SECRET}\n")).unwrap();
    let mut contoso = tenant(&sim, "contoso", TENANT, dir.path());
    contoso.credential = CredentialConfig::ClientSecret {
        source: SecretSource::File(secret_file.clone()),
        expires_on: None,
    };
    let daemon = start_daemon(config(vec![contoso], fast_daemon())).await;
    wait_for("the first token", Duration::from_secs(5), || {
        dir.path().join("contoso.json").exists()
    })
    .await;
    // Entra gets a new secret and the old one is revoked; the file is updated.
    set_secret(&sim, TENANT, "rotated-secret-value");
    std::fs::write(&secret_file, "rotated-secret-value\n").unwrap();
    let issued = sim.issued_count(TENANT);
    wait_for(
        "a token with the rotated secret",
        Duration::from_secs(5),
        || sim.issued_count(TENANT) > issued,
    )
    .await;
    daemon.stop().await;
}

/// An unsigned JWT-shaped token like the Kubernetes projected service-account token.
fn federated_token(issuer: &str, subject: &str, audience: &str, exp: i64) -> String {
    let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"RS256","kid":"k8s"}"#);
    let claims = URL_SAFE_NO_PAD.encode(
        serde_json::json!({"iss": issuer, "sub": subject, "aud": [audience], "exp": exp, "iat": exp - 3600})
            .to_string(),
    );
    format!("{header}.{claims}.c2lnbmF0dXJl")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workload_identity() {
    let Fixture { sim, dir } = fixture(&[TENANT], Duration::from_secs(3600)).await;
    let issuer = "https://oidc.prod-aks.azure.com/0000/";
    let subject = "system:serviceaccount:reports:powerbi-tokend";
    let audience = "api://AzureADTokenExchange";
    sim.add_federated_credential(
        TENANT,
        CLIENT_ID,
        SimFederatedCredential {
            issuer: issuer.to_owned(),
            subject: subject.to_owned(),
            audience: audience.to_owned(),
        },
    );
    let token_file = dir.path().join("azure-identity-token");
    let now = powerbi_tokend::clock::unix_now();
    let mut tenant = tenant(&sim, "contoso", TENANT, dir.path());
    tenant.credential = CredentialConfig::WorkloadIdentity {
        token_file: token_file.clone(),
    };
    let client = client(&fast_daemon());
    let mut credential = Credential::new(&tenant.credential);

    // An expired projected token: AADSTS700024, and the file is re-read at once afterwards.
    std::fs::write(
        &token_file,
        federated_token(issuer, subject, audience, now - 3600),
    )
    .unwrap();
    let err = credential.fetch(&client, None, &tenant).await.unwrap_err();
    assert_eq!(err.aadsts_code().as_deref(), Some("AADSTS700024"));
    std::fs::write(
        &token_file,
        federated_token(issuer, subject, audience, now + 3600),
    )
    .unwrap();
    credential.fetch(&client, None, &tenant).await.unwrap();
    assert_eq!(sim.last_assertion(TENANT).unwrap().claims["sub"], subject);
    // Assertion requests carry the same diagnostics headers as secret ones.
    let headers = sim.last_request(TENANT).unwrap().headers;
    let header = |name: &str| {
        headers
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    };
    assert_eq!(header("client-request-id").map(str::len), Some(36));
    assert_eq!(header("return-client-request-id"), Some("true"));
    assert_eq!(header("x-ms-lib-capability"), Some("retry-after, h429"));

    // Within five minutes the file is not read again: a broken file does not matter yet.
    std::fs::write(&token_file, "").unwrap();
    credential.fetch(&client, None, &tenant).await.unwrap();

    // No federated credential matches this subject: AADSTS70021, permanent.
    let mut other = tenant.clone();
    let other_file = dir.path().join("other-token");
    std::fs::write(
        &other_file,
        federated_token(issuer, "system:serviceaccount:x:y", audience, now + 3600),
    )
    .unwrap();
    other.credential = CredentialConfig::WorkloadIdentity {
        token_file: other_file,
    };
    let err = Credential::new(&other.credential)
        .fetch(&client, None, &other)
        .await
        .unwrap_err();
    assert_eq!(err.aadsts_code().as_deref(), Some("AADSTS70021"));
    assert_eq!(err.class, ErrorClass::Permanent);
}

fn managed_tenant(
    sim: &SimEntra,
    dir: &Path,
    source: ManagedIdentitySource,
    client_id: &str,
) -> TenantConfig {
    let identity = if client_id.is_empty() {
        ManagedIdentityId::System
    } else {
        ManagedIdentityId::ClientId(client_id.to_owned())
    };
    managed_tenant_with(sim, dir, source, identity)
}

fn managed_tenant_with(
    sim: &SimEntra,
    dir: &Path,
    source: ManagedIdentitySource,
    identity: ManagedIdentityId,
) -> TenantConfig {
    let mut tenant = tenant(sim, "vm", "", dir);
    // As validation makes it: no tenant, and the identity's own client ID if it is chosen by one.
    tenant.tenant_id = None;
    tenant.client_id = identity.client_id().map(Into::into);
    tenant.credential =
        CredentialConfig::ManagedIdentity(ManagedIdentityConfig { source, identity });
    tenant
}

/// The query parameters of the latest managed identity request.
fn managed_identity_query(sim: &SimEntra) -> Vec<(String, String)> {
    sim.last_managed_identity_request().unwrap().query
}

/// The `appid` claim (the identity's client ID) of a simulated managed identity token.
fn appid_of(token: &powerbi_tokend::token::AccessToken) -> String {
    let payload = token
        .secret
        .expose_secret()
        .split('.')
        .nth(1)
        .unwrap()
        .to_owned();
    let bytes = URL_SAFE_NO_PAD.decode(payload).unwrap();
    let claims: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    claims["appid"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_assigned_identities_by_client_object_and_resource_id() {
    let Fixture { sim, dir } = fixture(&[], Duration::from_secs(3600)).await;
    let first = "33333333-3333-3333-3333-333333333333";
    let second = "55555555-5555-5555-5555-555555555555";
    sim.set_managed_identity(SimManagedIdentity {
        system_assigned: true,
        user_assigned: vec![first.to_owned(), second.to_owned()],
        lifetime: Duration::from_secs(3600),
        identity_header: "the-identity-header".to_owned(),
    });
    let daemon = DaemonConfig {
        imds_endpoint: sim.imds_endpoint(),
        ..fast_daemon()
    };
    let client = client(&daemon);
    let app_service = ManagedIdentitySource::AppService {
        endpoint: sim.app_service_endpoint(),
        header: SecretSource::Inline(SecretString::from("the-identity-header")),
    };
    // Parameter names as azure-identity sends them: IMDS says msi_res_id, App Service
    // (2019-08-01) mi_res_id.
    for (source, resource_parameter) in [
        (ManagedIdentitySource::Imds, "msi_res_id"),
        (app_service, "mi_res_id"),
    ] {
        for (identity, parameter, value) in [
            (
                ManagedIdentityId::ClientId(second.to_owned()),
                "client_id",
                second.to_owned(),
            ),
            (
                ManagedIdentityId::ObjectId(managed_identity_object_id(second)),
                "object_id",
                managed_identity_object_id(second),
            ),
            (
                ManagedIdentityId::ResourceId(managed_identity_resource_id(second)),
                resource_parameter,
                managed_identity_resource_id(second),
            ),
        ] {
            let tenant = managed_tenant_with(&sim, dir.path(), source.clone(), identity);
            let token = Credential::new(&tenant.credential)
                .fetch(&client, None, &tenant)
                .await
                .unwrap_or_else(|err| panic!("{parameter} on {source:?}: {err:?}"));
            assert_eq!(appid_of(&token), second, "{parameter} on {source:?}");
            let query = managed_identity_query(&sim);
            let selectors: Vec<&(String, String)> = query
                .iter()
                .filter(|(key, _)| !matches!(key.as_str(), "resource" | "api-version"))
                .collect();
            assert_eq!(selectors, [&(parameter.to_owned(), value)], "{source:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn system_assigned_identity_ignores_the_app_client_id_in_defaults() {
    let Fixture { sim, dir } = fixture(&[], Duration::from_secs(3600)).await;
    sim.set_managed_identity(SimManagedIdentity {
        system_assigned: true,
        user_assigned: vec!["33333333-3333-3333-3333-333333333333".to_owned()],
        lifetime: Duration::from_secs(3600),
        identity_header: String::new(),
    });
    let text = format!(
        "[daemon]\nimds_endpoint = \"{}\"\n\n[defaults]\nclient_id = \"{CLIENT_ID}\"\nclient_secret = {{ env = \"UNUSED\" }}\nsinks = [ {{ type = \"file\", path = \"{{name}}.json\" }} ]\n\n[[tenant]]\nname = \"vm\"\ncredential = \"managed_identity\"\nmanaged_identity = \"system\"\n",
        sim.imds_endpoint()
    );
    let path = dir.path().join("config.toml");
    std::fs::write(&path, text).unwrap();
    let config = powerbi_tokend::config::load(&path).await.unwrap();
    let tenant = &config.tenants[0];
    let token = Credential::new(&tenant.credential)
        .fetch(&client(&config.daemon), None, tenant)
        .await
        .unwrap();
    assert_eq!(appid_of(&token), SIM_SYSTEM_ASSIGNED_CLIENT_ID);
    let query = managed_identity_query(&sim);
    assert!(
        !query.iter().any(|(key, _)| key == "client_id"),
        "the app's client ID was sent as a managed identity: {query:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn managed_identity_imds() {
    let Fixture { sim, dir } = fixture(&[], Duration::from_secs(3600)).await;
    let user_assigned = "33333333-3333-3333-3333-333333333333";
    sim.set_managed_identity(SimManagedIdentity {
        system_assigned: true,
        user_assigned: vec![user_assigned.to_owned()],
        lifetime: Duration::from_secs(86_399),
        identity_header: "unused".to_owned(),
    });
    let daemon = DaemonConfig {
        imds_endpoint: sim.imds_endpoint(),
        ..fast_daemon()
    };
    let client = client(&daemon);
    let system = managed_tenant(&sim, dir.path(), ManagedIdentitySource::Imds, "");
    let token = Credential::new(&system.credential)
        .fetch(&client, None, &system)
        .await
        .unwrap();
    assert!(
        (token.lifetime().get().as_secs() as i64 - 86_399).abs() <= 2,
        "{:?}",
        token.lifetime().get()
    );
    let user = managed_tenant(&sim, dir.path(), ManagedIdentitySource::Imds, user_assigned);
    Credential::new(&user.credential)
        .fetch(&client, None, &user)
        .await
        .unwrap();
    let request = sim.last_managed_identity_request().unwrap();
    let query = |key: &str| {
        request
            .query
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
    };
    assert_eq!(query("client_id").as_deref(), Some(user_assigned));
    assert_eq!(query("api-version").as_deref(), Some("2018-02-01"));
    assert_eq!(
        query("resource").as_deref(),
        Some("https://analysis.windows.net/powerbi/api")
    );

    // Unknown identity: a configuration problem.
    let unknown = managed_tenant(
        &sim,
        dir.path(),
        ManagedIdentitySource::Imds,
        "44444444-4444-4444-4444-444444444444",
    );
    let err = Credential::new(&unknown.credential)
        .fetch(&client, None, &unknown)
        .await
        .unwrap_err();
    assert_eq!(err.class, ErrorClass::Permanent, "{err:?}");

    // 410 (IMDS being updated) is retried within the same attempt; 404, 429 and 5xx are transient.
    let before = sim.managed_identity_request_count();
    sim.push_managed_identity_script([410]);
    Credential::new(&system.credential)
        .fetch(&client, None, &system)
        .await
        .unwrap();
    assert_eq!(sim.managed_identity_request_count(), before + 2);
    for status in [404, 429, 500, 503] {
        sim.push_managed_identity_script([status]);
        let err = Credential::new(&system.credential)
            .fetch(&client, None, &system)
            .await
            .unwrap_err();
        assert_ne!(err.class, ErrorClass::Permanent, "{status}: {err:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn managed_identity_app_service() {
    let Fixture { sim, dir } = fixture(&[], Duration::from_secs(3600)).await;
    sim.set_managed_identity(SimManagedIdentity {
        system_assigned: true,
        user_assigned: Vec::new(),
        lifetime: Duration::from_secs(3600),
        identity_header: "the-identity-header".to_owned(),
    });
    let client = client(&fast_daemon());
    let source = |header: &str| ManagedIdentitySource::AppService {
        endpoint: sim.app_service_endpoint(),
        header: SecretSource::Inline(SecretString::from(header.to_owned())),
    };
    let good = managed_tenant(&sim, dir.path(), source("the-identity-header"), "");
    Credential::new(&good.credential)
        .fetch(&client, None, &good)
        .await
        .unwrap();
    let request = sim.last_managed_identity_request().unwrap();
    assert!(
        request
            .query
            .iter()
            .any(|(k, v)| k == "api-version" && v == "2019-08-01")
    );
    // As azure-identity and MSAL send it: Azure Automation, which hands out the same two
    // variables, refuses a request without it.
    assert!(
        request
            .headers
            .contains(&("metadata".to_owned(), "true".to_owned())),
        "{:?}",
        request.headers
    );
    let bad = managed_tenant(&sim, dir.path(), source("wrong"), "");
    assert!(
        Credential::new(&bad.credential)
            .fetch(&client, None, &bad)
            .await
            .is_err()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(has_openssl),
    ignore = "skipped: needs openssl (Debian package openssl)"
)]
async fn credential_expiry_metric_and_check_warning() {
    let Fixture { sim, dir } = fixture(
        &[TENANT, "fabrikam.onmicrosoft.com"],
        Duration::from_secs(3600),
    )
    .await;
    let cert = make_certificate(dir.path(), "app", 10);
    sim.add_certificate(TENANT, CLIENT_ID, der_of(&cert.cert));
    let with_cert = certificate_tenant(&sim, dir.path(), &cert);
    let mut with_secret = tenant(&sim, "fabrikam", "fabrikam.onmicrosoft.com", dir.path());
    with_secret.credential = CredentialConfig::ClientSecret {
        source: SecretSource::Inline(SecretString::from(SECRET)),
        expires_on: Some(1_803_859_200),
    };
    let daemon = start_daemon(config(vec![with_cert, with_secret], fast_daemon())).await;
    // The certificate's expiry is known once the tenant has read it for its first token.
    let metrics = daemon
        .wait_for_get("both tenants healthy", "/metrics", |_, metrics| {
            ["contoso", "fabrikam"].iter().all(|name| {
                metrics.contains(&format!(
                    "powerbi_tokend_tenant_state{{state=\"healthy\",tenant=\"{name}\"}} 1"
                ))
            })
        })
        .await;
    // openssl's notAfter, converted independently.
    let end = openssl(
        &[
            "x509",
            "-in",
            cert.cert.to_str().unwrap(),
            "-enddate",
            "-noout",
        ],
        dir.path(),
    )
    .stdout;
    let end = String::from_utf8(end).unwrap();
    let not_after = chrono::NaiveDateTime::parse_from_str(
        end.trim()
            .trim_start_matches("notAfter=")
            .trim_end_matches(" GMT"),
        "%b %e %H:%M:%S %Y",
    )
    .unwrap()
    .and_utc()
    .timestamp();
    let expected = format!(
        "powerbi_tokend_credential_expiry_timestamp_seconds{{kind=\"certificate\",tenant=\"contoso\"}} {not_after}"
    );
    assert!(
        metrics.contains(&expected),
        "{expected} missing:\n{metrics}"
    );
    assert!(metrics.contains(
        "powerbi_tokend_credential_expiry_timestamp_seconds{kind=\"client_secret\",tenant=\"fabrikam\"} 1803859200"
    ));
    daemon.stop().await;

    // `check` warns about the certificate that expires in 10 days, and still exits 0.
    let config_path = dir.path().join("config.toml");
    std::fs::write(
        &config_path,
        format!(
            "[[tenant]]\nname = \"contoso\"\ntenant_id = \"{TENANT}\"\nclient_id = \"{CLIENT_ID}\"\nclient_certificate = {{ cert = \"app.crt\", key = \"app.key\" }}\nsinks = [ {{ type = \"file\", path = \"t/{{name}}.json\" }} ]\n"
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_powerbi-tokend"))
        .args(["check", "--config"])
        .arg(&config_path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("warning: tenant \"contoso\": the certificate expires on"),
        "{stderr}"
    );
    assert!(
        stderr.contains("(in 9 day(s))") || stderr.contains("(in 10 day(s))"),
        "{stderr}"
    );
    // A secret that has already expired is a problem, not a warning.
    let expired = format!(
        "[[tenant]]\nname = \"x\"\ntenant_id = \"{TENANT}\"\nclient_id = \"{CLIENT_ID}\"\nclient_secret = {{ file = \"app.key\" }}\nclient_secret_expires = \"2020-01-01\"\nsinks = [ {{ type = \"file\", path = \"t/{{name}}.json\" }} ]\n"
    );
    std::fs::write(&config_path, expired).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_powerbi-tokend"))
        .args(["check", "--config"])
        .arg(&config_path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("the client secret expired on 2020-01-01")
    );
}
