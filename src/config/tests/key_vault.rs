//! `[key_vault]` and secrets and certificates kept in Key Vault.

use std::time::Duration;

use super::super::*;
use super::{MINIMAL, parse_err, parse_ok};

#[test]
fn secrets_and_certificates_in_key_vault_need_a_reader() {
    let text = r#"
[key_vault]
credential = "managed_identity"
managed_identity = { client_id = "33333333-3333-3333-3333-333333333333" }
cloud = "gcchigh"
refresh_interval = "30m"

[defaults]
client_id = "00000000-0000-0000-0000-000000000001"
client_secret = { key_vault = "https://kv1.vault.usgovcloudapi.net/secrets/app-secret/" }
sinks = [ { type = "file", path = "/tmp/t/{name}.json" } ]

[[tenant]]
name = "contoso"
tenant_id = "contoso.onmicrosoft.com"

[[tenant]]
name = "fabrikam"
tenant_id = "fabrikam.onmicrosoft.com"
client_certificate = { key_vault = "https://kv1.vault.usgovcloudapi.net/secrets/app-cert" }
"#;
    let config = parse_ok(text);
    let reader = config.key_vault.as_ref().expect("[key_vault]");
    assert_eq!(reader.refresh_interval, Duration::from_secs(1800));
    assert_eq!(
        &*reader.identity.resource,
        "https://vault.usgovcloudapi.net"
    );
    assert_eq!(
        reader.identity.client_id.as_deref(),
        Some("33333333-3333-3333-3333-333333333333")
    );
    assert!(matches!(
        reader.identity.credential,
        CredentialConfig::ManagedIdentity(_)
    ));
    assert_eq!(
        config.tenants[0].credential,
        CredentialConfig::ClientSecret {
            source: SecretSource::KeyVault(
                "https://kv1.vault.usgovcloudapi.net/secrets/app-secret".to_owned()
            ),
            expires_on: None,
        }
    );
    let CredentialConfig::Certificate(certificate) = &config.tenants[1].credential else {
        panic!("a certificate: {:?}", config.tenants[1].credential);
    };
    assert_eq!(
        certificate.key_vault.as_deref(),
        Some("https://kv1.vault.usgovcloudapi.net/secrets/app-cert")
    );

    // Without [key_vault], and with a malformed URL: both named.
    let err = parse_err(&text.replace(
        "[key_vault]\ncredential = \"managed_identity\"\nmanaged_identity = { client_id = \"33333333-3333-3333-3333-333333333333\" }\ncloud = \"gcchigh\"\nrefresh_interval = \"30m\"\n",
        "",
    ).replace("secrets/app-cert", "keys/app-cert"));
    let shown = err.to_string();
    assert!(
        shown.contains(
            "tenant \"contoso\": client_secret: is in Key Vault; add a [key_vault] section"
        ),
        "{shown}"
    );
    assert!(
        shown.contains("tenant \"fabrikam\": client_certificate.key_vault: expected https://<vault>.vault.azure.net/secrets/<name>"),
        "{shown}"
    );
}

#[test]
fn key_vault_reader_mistakes() {
    let base = MINIMAL.replace(
        "client_secret = { env = \"SECRET\" }",
        "client_secret = { key_vault = \"https://kv1.vault.azure.net/secrets/s\" }",
    );
    let err = parse_err(&format!(
        "[key_vault]\ncredential = \"workload_identity\"\nrefresh_interval = \"5s\"\n{base}"
    ));
    let shown = err.to_string();
    assert!(
        shown.contains("key_vault.refresh_interval: expected a duration of at least 1m"),
        "{shown}"
    );
    assert!(
        shown.contains("key_vault.federated_token_file: missing"),
        "{shown}"
    );
    let err = parse_err(&format!(
        "[key_vault]\nclient_secret = {{ env = \"X\" }}\n{base}"
    ));
    assert!(
        err.problems
            .iter()
            .any(|p| p.line == Some(2) && p.key.as_deref() == Some("key_vault")),
        "{err}"
    );
    let err = parse_err(&format!("[key_vault]\n{base}"));
    assert!(
        err.to_string().contains("key_vault.credential: missing"),
        "{err}"
    );
}
