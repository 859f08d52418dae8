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
    let default = reader.identity(None).expect("[key_vault]'s own identity");
    assert_eq!(default.name, "default");
    assert_eq!(reader.identities.len(), 1);
    assert_eq!(
        &*default.identity.resource,
        "https://vault.usgovcloudapi.net"
    );
    assert_eq!(
        default.identity.client_id.as_deref(),
        Some("33333333-3333-3333-3333-333333333333")
    );
    assert!(matches!(
        default.identity.credential,
        CredentialConfig::ManagedIdentity(_)
    ));
    // Each tenant reading Key Vault is read by the default identity.
    for tenant in &config.tenants {
        assert_eq!(tenant.key_vault_credential.as_deref(), Some("default"));
    }
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

/// `[key_vault]`'s own identity, a workload identity that may follow challenges to two other
/// tenants, and a managed identity in the China cloud; `[defaults]` names one of them.
const IDENTITIES: &str = r#"
[key_vault]
credential = "managed_identity"
managed_identity = "system"

[key_vault.identities.partner]
credential = "workload_identity"
client_id = "11111111-1111-1111-1111-111111111111"
tenant_id = "22222222-2222-2222-2222-222222222222"
federated_token_file = "/var/run/secrets/azure/tokens/azure-identity-token"
key_vault_allowed_tenants = ["72F988BF-86F1-41AF-91AB-2D7CD011DB47", "0d7c1a2b-3c4d-4e5f-8a9b-0c1d2e3f4a5b"]

[key_vault.identities.eu-vault]
credential = "managed_identity"
managed_identity = { client_id = "33333333-3333-3333-3333-333333333333" }
cloud = "china"

[defaults]
client_id = "00000000-0000-0000-0000-000000000001"
client_secret = { key_vault = "https://kv1.vault.azure.net/secrets/app-secret" }
key_vault_credential = "partner"
sinks = [ { type = "file", path = "/tmp/t/{name}.json" } ]

[[tenant]]
name = "contoso"
tenant_id = "contoso.onmicrosoft.com"

[[tenant]]
name = "fabrikam"
tenant_id = "fabrikam.onmicrosoft.com"
key_vault_credential = "eu-vault"
client_certificate = { key_vault = "https://kv1.vault.azure.cn/secrets/app-cert" }

[[tenant]]
name = "northwind"
tenant_id = "northwind.onmicrosoft.com"
key_vault_credential = "default"

[[tenant]]
name = "local"
tenant_id = "local.onmicrosoft.com"
client_secret = { env = "LOCAL_SECRET" }
"#;

#[test]
fn each_tenant_reads_key_vault_with_the_identity_it_names_or_inherits() {
    let config = parse_ok(IDENTITIES);
    let key_vault = config.key_vault.as_ref().expect("[key_vault]");
    let names: Vec<&str> = key_vault
        .identities
        .iter()
        .map(|identity| identity.name.as_str())
        .collect();
    assert_eq!(names, ["default", "eu-vault", "partner"]);
    let partner = key_vault.identity(Some("partner")).unwrap();
    assert!(matches!(
        partner.identity.credential,
        CredentialConfig::WorkloadIdentity { .. }
    ));
    assert_eq!(
        partner.identity.tenant_id.as_deref(),
        Some("22222222-2222-2222-2222-222222222222")
    );
    assert_eq!(&*partner.identity.resource, "https://vault.azure.net");
    assert_eq!(
        partner.allowed_tenants,
        AllowedTenants::Only(vec![
            "72f988bf-86f1-41af-91ab-2d7cd011db47".to_owned(),
            "0d7c1a2b-3c4d-4e5f-8a9b-0c1d2e3f4a5b".to_owned(),
        ])
    );
    assert!(
        partner
            .allowed_tenants
            .allows("72f988bf-86f1-41af-91ab-2d7cd011db47")
    );
    assert!(
        !partner
            .allowed_tenants
            .allows("22222222-2222-2222-2222-222222222223")
    );
    let eu = key_vault.identity(Some("eu-vault")).unwrap();
    assert_eq!(&*eu.identity.resource, "https://vault.azure.cn");
    assert_eq!(eu.allowed_tenants, AllowedTenants::default());
    assert_eq!(
        key_vault
            .identity(None)
            .map(|identity| identity.name.as_str()),
        Some("default")
    );
    let chosen: Vec<(&str, Option<&str>)> = config
        .tenants
        .iter()
        .map(|tenant| (tenant.name.as_str(), tenant.key_vault_credential.as_deref()))
        .collect();
    assert_eq!(
        chosen,
        [
            ("contoso", Some("partner")),
            ("fabrikam", Some("eu-vault")),
            ("northwind", Some("default")),
            // Inherited, and not used: its secret is not in Key Vault.
            ("local", None),
        ]
    );
    // Choosing another identity is a change a reload acts on.
    let moved = parse_ok(&IDENTITIES.replace(
        "key_vault_credential = \"partner\"",
        "key_vault_credential = \"default\"",
    ));
    assert_ne!(config.tenants[0], moved.tenants[0]);
    assert_eq!(config.tenants[2], moved.tenants[2]);
}

/// The problems of `text`, as `line: key: message` lines.
fn problems(text: &str) -> Vec<String> {
    parse_err(text)
        .problems
        .iter()
        .map(|problem| {
            format!(
                "{}: {}: {}",
                problem.line.unwrap_or(0),
                problem.key.as_deref().unwrap_or(""),
                problem.message
            )
        })
        .collect()
}

/// The line of the first occurrence of `needle` in `text`.
fn line_of(text: &str, needle: &str) -> usize {
    text[..text.find(needle).expect("in the text")]
        .lines()
        .count()
        + 1
}

#[test]
fn an_unknown_identity_is_named_with_the_key_and_the_known_ones() {
    let text = IDENTITIES.replace(
        "key_vault_credential = \"eu-vault\"",
        "key_vault_credential = \"eu\"",
    );
    let line = line_of(&text, "key_vault_credential = \"eu\"");
    assert_eq!(
        problems(&text),
        [format!(
            "{line}: tenant \"fabrikam\": key_vault_credential: \"eu\" is not a Key Vault identity; expected \"default\", \"eu-vault\" or \"partner\" (\"default\" is [key_vault]'s own identity, the others are [key_vault.identities.<name>] tables)"
        )]
    );
    // In [defaults]: named once, at its line, though two tenants inherit it.
    let text = IDENTITIES.replace(
        "key_vault_credential = \"partner\"",
        "key_vault_credential = \"partners\"",
    );
    let line = line_of(&text, "key_vault_credential = \"partners\"");
    let found = problems(&text);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0].starts_with(&format!(
            "{line}: defaults.key_vault_credential: \"partners\" is not a Key Vault identity; expected \"default\", \"eu-vault\" or \"partner\""
        )),
        "{found:?}"
    );
}

#[test]
fn key_vault_credential_belongs_to_a_credential_in_key_vault() {
    let text = IDENTITIES.replace(
        "client_secret = { env = \"LOCAL_SECRET\" }",
        "client_secret = { env = \"LOCAL_SECRET\" }\nkey_vault_credential = \"partner\"",
    );
    let found = problems(&text);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0].contains("tenant \"local\": key_vault_credential: applies only to a client_secret or client_certificate kept in Key Vault"),
        "{found:?}"
    );
    // Without [key_vault] at all, [defaults]' name is a problem of its own.
    let text = MINIMAL.replace(
        "[defaults]\n",
        "[defaults]\nkey_vault_credential = \"partner\"\n",
    );
    let found = problems(&text);
    assert!(
        found.iter().any(|problem| problem.contains(
            "defaults.key_vault_credential: names a Key Vault identity, and there is no [key_vault] section"
        )),
        "{found:?}"
    );
}

#[test]
fn named_identities_alone_need_every_tenant_to_choose_one() {
    let text = IDENTITIES
        .replace(
            "[key_vault]\ncredential = \"managed_identity\"\nmanaged_identity = \"system\"\n",
            "[key_vault]\nrefresh_interval = \"2h\"\n",
        )
        .replace("key_vault_credential = \"partner\"\n", "")
        .replace("key_vault_credential = \"default\"\n", "");
    let missing = |tenant: &str| {
        let line = line_of(&text, &format!("name = \"{tenant}\"")) - 1;
        format!(
            "{line}: tenant \"{tenant}\": key_vault_credential: missing; the credential is in Key Vault and [key_vault] has no identity of its own: name the one that reads it, \"eu-vault\" or \"partner\""
        )
    };
    assert_eq!(problems(&text), [missing("contoso"), missing("northwind")]);
    // Naming "default" when there is none is naming an unknown identity.
    let text = text.replace(
        "name = \"northwind\"\n",
        "name = \"northwind\"\nkey_vault_credential = \"default\"\n",
    );
    let found = problems(&text);
    assert!(
        found[1].contains("tenant \"northwind\": key_vault_credential: \"default\" is not a Key Vault identity; expected \"eu-vault\" or \"partner\""),
        "{found:?}"
    );
    // Neither an identity of its own nor named ones: [key_vault] reads nothing.
    let found = problems(&MINIMAL.replace(
        "[defaults]",
        "[key_vault]\nrefresh_interval = \"2h\"\n\n[defaults]",
    ));
    assert!(
        found
            .iter()
            .any(|problem| problem.contains("key_vault.credential: missing")),
        "{found:?}"
    );
}

#[test]
fn allowed_tenants_are_a_list_of_tenant_ids_or_a_star() {
    let partner = "key_vault_allowed_tenants = [\"72F988BF-86F1-41AF-91AB-2D7CD011DB47\", \"0d7c1a2b-3c4d-4e5f-8a9b-0c1d2e3f4a5b\"]";
    let any = parse_ok(&IDENTITIES.replace(partner, "key_vault_allowed_tenants = [\"*\"]"));
    let identity = any
        .key_vault
        .as_ref()
        .unwrap()
        .identity(Some("partner"))
        .unwrap();
    assert_eq!(identity.allowed_tenants, AllowedTenants::Any);
    assert!(
        identity
            .allowed_tenants
            .allows("22222222-2222-2222-2222-222222222223")
    );
    for (written, key, says) in [
        (
            "key_vault_allowed_tenants = \"*\"",
            "key_vault.identities.partner.key_vault_allowed_tenants",
            "expected a list of tenant IDs (GUIDs, as Key Vault's challenges name tenants) such as [\"72f988bf-86f1-41af-91ab-2d7cd011db47\"], or [\"*\"] for any tenant, got a string",
        ),
        (
            "key_vault_allowed_tenants = [\"72f988bf-86f1-41af-91ab-2d7cd011db47\", \"contoso.onmicrosoft.com\"]",
            "key_vault.identities.partner.key_vault_allowed_tenants[1]",
            "; got \"contoso.onmicrosoft.com\"",
        ),
        (
            "key_vault_allowed_tenants = [7]",
            "key_vault.identities.partner.key_vault_allowed_tenants[0]",
            "; got 7",
        ),
    ] {
        let text = IDENTITIES.replace(partner, written);
        let line = line_of(&text, written);
        let found = problems(&text);
        assert_eq!(found.len(), 1, "{written}: {found:?}");
        assert!(
            found[0].starts_with(&format!("{line}: {key}: ")) && found[0].contains(says),
            "{written}: {found:?}"
        );
    }
}

#[test]
fn a_managed_identity_cannot_be_allowed_other_tenants() {
    let allowed = "key_vault_allowed_tenants = [\"72f988bf-86f1-41af-91ab-2d7cd011db47\"]\n";
    for (after, key) in [
        (
            "managed_identity = \"system\"\n",
            "key_vault.key_vault_allowed_tenants",
        ),
        (
            "cloud = \"china\"\n",
            "key_vault.identities.eu-vault.key_vault_allowed_tenants",
        ),
    ] {
        let text = IDENTITIES.replacen(after, &format!("{after}{allowed}"), 1);
        let found = problems(&text);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].contains(&format!(
                "{key}: a managed identity gets tokens from its own tenant only, so it cannot follow a vault's challenge to another; read vaults of other tenants with a workload identity of a multi-tenant app"
            )),
            "{found:?}"
        );
    }
}

#[test]
fn named_identity_mistakes_are_named_by_their_table() {
    let found = problems(&IDENTITIES.replace(
        "[key_vault.identities.eu-vault]",
        "[key_vault.identities.default]",
    ));
    assert!(
        found.iter().any(|problem| problem.contains(
            "key_vault.identities.default: \"default\" is [key_vault]'s own identity; give [key_vault.identities.default] another name"
        )),
        "{found:?}"
    );
    let found = problems(&IDENTITIES.replace(
        "cloud = \"china\"\n",
        "cloud = \"china\"\nrefresh_interval = \"1h\"\n",
    ));
    assert!(
        found.iter().any(|problem| problem
            .contains("key_vault.identities.eu-vault: unknown field `refresh_interval`")),
        "{found:?}"
    );
    // An identity that is neither managed nor workload: named by its table, and the tenant
    // that chose it is not also blamed for an unknown name.
    let found = problems(&IDENTITIES.replace(
        "credential = \"managed_identity\"\nmanaged_identity = { client_id",
        "client_secret = { env = \"X\" }\nmanaged_identity = { client_id",
    ));
    assert!(
        found
            .iter()
            .any(|problem| problem.contains("key_vault.identities.eu-vault.credential: expected credential = \"managed_identity\" or \"workload_identity\"")),
        "{found:?}"
    );
    assert!(
        !found
            .iter()
            .any(|problem| problem.contains("is not a Key Vault identity")),
        "{found:?}"
    );
    // A [key_vault] that is not a table is that one problem, not one per tenant as well.
    let text = MINIMAL.replace(
        "client_secret = { env = \"SECRET\" }",
        "client_secret = { key_vault = \"https://kv1.vault.azure.net/secrets/s\" }",
    );
    let found = problems(&format!("key_vault = \"managed_identity\"\n{text}"));
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].starts_with("1: key_vault: "), "{found:?}");
    let found = problems(&MINIMAL.replace(
        "[defaults]",
        "[key_vault]\ncredential = \"managed_identity\"\nmanaged_identity = \"system\"\nidentities = \"partner\"\n\n[defaults]",
    ));
    assert!(
        found.iter().any(|problem| problem.contains(
            "key_vault.identities: expected tables such as [key_vault.identities.partner]"
        )),
        "{found:?}"
    );
}
