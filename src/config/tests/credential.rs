//! Credentials: exactly one per tenant, secrets by reference, certificate and secret expiry,
//! workload identity from the webhook's environment, and managed identity chosen explicitly.

use super::*;

#[test]
fn literal_secret_is_rejected() {
    let text = MINIMAL.replace("{ env = \"SECRET\" }", "\"hunter2\"");
    let err = parse_err(&text);
    assert!(
        err.to_string()
            .contains("secrets are not written in the config file"),
        "{err}"
    );
    assert!(!err.to_string().contains("hunter2"));
}

#[test]
fn exactly_one_credential() {
    let none = format!("{TENANT_ONLY}tenant_id = \"c.example.com\"\nclient_id = \"x\"\n");
    let err = parse_env(&none, &[]).unwrap_err();
    assert!(err.to_string().contains("credential: missing"), "{err}");
    let two = format!(
        "{none}client_secret = {{ env = \"S\" }}\nclient_certificate = {{ cert = \"c.pem\" }}\n"
    );
    let err = parse_env(&two, &[]).unwrap_err();
    assert!(
        err.to_string()
            .contains("client_secret and client_certificate are all set"),
        "{err}"
    );
    // A tenant's own credential replaces the one in [defaults]: not two.
    let text = MINIMAL.replace(
        "tenant_id = \"contoso.onmicrosoft.com\"",
        "tenant_id = \"contoso.onmicrosoft.com\"\ncredential = \"managed_identity\"\nmanaged_identity = \"system\"",
    );
    let config = parse_env(&text, &[]).unwrap();
    assert_eq!(
        config.tenants[0].credential,
        CredentialConfig::ManagedIdentity(ManagedIdentityConfig {
            source: ManagedIdentitySource::Imds,
            identity: ManagedIdentityId::System,
        })
    );
}

#[test]
fn certificate_and_secret_expiry() {
    let text = format!(
        "{TENANT_ONLY}tenant_id = \"c.example.com\"\nclient_id = \"x\"\nclient_certificate = {{ cert = \"pki/both.pem\", algorithm = \"rs256\", send_x5c = true }}\n"
    );
    let config = parse_env(&text, &[]).unwrap();
    assert_eq!(
        config.tenants[0].credential,
        CredentialConfig::Certificate(CertificateConfig {
            cert: PathBuf::from("/etc/p/pki/both.pem"),
            key: PathBuf::from("/etc/p/pki/both.pem"),
            algorithm: AssertionAlgorithm::Rs256,
            send_x5c: true,
            key_vault: None,
        })
    );
    for (value, expected) in [
        ("\"2027-03-01\"", 1_803_859_200),
        ("2027-03-01", 1_803_859_200),
        ("\"2027-03-01T12:00:00Z\"", 1_803_902_400),
    ] {
        let text = format!("{MINIMAL}client_secret_expires = {value}\n");
        let config = parse_env(&text, &[]).unwrap();
        assert_eq!(
            config.tenants[0].credential,
            CredentialConfig::ClientSecret {
                source: SecretSource::Env("SECRET".into()),
                expires_on: Some(expected),
            },
            "{value}"
        );
    }
    let err = parse_env(&format!("{MINIMAL}client_secret_expires = \"soon\"\n"), &[]).unwrap_err();
    assert!(err.to_string().contains("expected a date"), "{err}");
}

#[test]
fn workload_identity_takes_missing_values_from_the_webhook_env() {
    let text = "[[tenant]]\nname = \"aks\"\ncredential = \"workload_identity\"\nsinks = [ { type = \"file\", path = \"/t/{name}.json\" } ]\n";
    let env = [
        ("AZURE_CLIENT_ID", "11111111-1111-1111-1111-111111111111"),
        ("AZURE_TENANT_ID", "22222222-2222-2222-2222-222222222222"),
        ("AZURE_AUTHORITY_HOST", "https://login.microsoftonline.us/"),
        (
            "AZURE_FEDERATED_TOKEN_FILE",
            "/var/run/secrets/azure/tokens/azure-identity-token",
        ),
    ];
    let config = parse_env(text, &env).unwrap();
    let tenant = &config.tenants[0];
    assert_eq!(
        tenant.client_id.as_deref(),
        Some("11111111-1111-1111-1111-111111111111")
    );
    assert_eq!(
        tenant.tenant_id.as_deref(),
        Some("22222222-2222-2222-2222-222222222222")
    );
    assert_eq!(&*tenant.authority_host, "https://login.microsoftonline.us");
    assert_eq!(
        tenant.credential,
        CredentialConfig::WorkloadIdentity {
            token_file: PathBuf::from("/var/run/secrets/azure/tokens/azure-identity-token")
        }
    );
    let err = parse_env(text, &[]).unwrap_err().to_string();
    assert!(err.contains("federated_token_file: missing"), "{err}");
    assert!(err.contains("tenant_id: missing"), "{err}");
    let insecure = [("AZURE_AUTHORITY_HOST", "http://login.example.com")];
    let err = parse_env(text, &[env[0], env[1], env[3], insecure[0]])
        .unwrap_err()
        .to_string();
    assert!(err.contains("from AZURE_AUTHORITY_HOST"), "{err}");
}

#[test]
fn managed_identity_sources() {
    let text = "[[tenant]]\nname = \"vm\"\ncredential = \"managed_identity\"\nsinks = [ { type = \"file\", path = \"/t/{name}.json\" } ]\n";
    let config = parse_env(text, &[]).unwrap();
    assert_eq!(config.tenants[0].client_id, None);
    assert_eq!(config.tenants[0].tenant_id, None);
    assert_eq!(config.daemon.imds_endpoint, DEFAULT_IMDS_ENDPOINT);
    let env = [
        ("IDENTITY_ENDPOINT", "http://127.0.0.1:4141/msi/token"),
        ("IDENTITY_HEADER", "h"),
    ];
    let config = parse_env(text, &env).unwrap();
    assert_eq!(
        config.tenants[0].credential,
        CredentialConfig::ManagedIdentity(ManagedIdentityConfig {
            source: ManagedIdentitySource::AppService {
                endpoint: "http://127.0.0.1:4141/msi/token".into(),
                header: SecretSource::Env("IDENTITY_HEADER".into()),
            },
            identity: ManagedIdentityId::System,
        })
    );
    let err = parse_env(&text.replace("managed_identity", "magic"), &[]).unwrap_err();
    assert!(
        err.to_string().contains("is not a credential kind"),
        "{err}"
    );
}

#[test]
fn managed_identity_is_chosen_explicitly_and_never_inherits_the_app_client_id() {
    let app = "00000000-0000-0000-0000-000000000001";
    let uami = "33333333-3333-3333-3333-333333333333";
    let layout = |tenant: &str| {
        format!(
            "[defaults]\nclient_id = \"{app}\"\nclient_secret = {{ env = \"S\" }}\nsinks = [ {{ type = \"file\", path = \"/t/{{name}}.json\" }} ]\n\n[[tenant]]\nname = \"vm\"\ncredential = \"managed_identity\"\n{tenant}"
        )
    };
    // The README's multi-tenant layout: the app's client ID in [defaults]. Relying on it for
    // the managed identity is refused, with the way out.
    let err = parse_env(&layout(""), &[]).unwrap_err().to_string();
    assert!(
        err.contains("vm\": managed_identity: missing: the client_id in [defaults] no longer selects the managed identity"),
        "{err}"
    );
    assert!(err.contains("managed_identity = \"system\""), "{err}");
    let err = parse_env(&layout(&format!("client_id = \"{uami}\"\n")), &[])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("this tenant's client_id no longer selects the managed identity"),
        "{err}"
    );

    let system = parse_env(&layout("managed_identity = \"system\"\n"), &[]).unwrap();
    let tenant = &system.tenants[0];
    assert_eq!(
        tenant.client_id, None,
        "the app's client ID must not be used"
    );
    let CredentialConfig::ManagedIdentity(managed) = &tenant.credential else {
        panic!("{:?}", tenant.credential);
    };
    assert_eq!(managed.identity, ManagedIdentityId::System);

    for (selector, expected) in [
        ("client_id", ManagedIdentityId::ClientId(uami.into())),
        ("object_id", ManagedIdentityId::ObjectId(uami.into())),
    ] {
        let text = layout(&format!(
            "managed_identity = {{ {selector} = \"{uami}\" }}\n"
        ));
        let config = parse_env(&text, &[]).unwrap();
        let CredentialConfig::ManagedIdentity(managed) = &config.tenants[0].credential else {
            panic!("{:?}", config.tenants[0].credential);
        };
        assert_eq!(managed.identity, expected);
        let label = (selector == "client_id").then_some(uami);
        assert_eq!(config.tenants[0].client_id.as_deref(), label);
    }
    let err = parse_env(&layout("managed_identity = \"user\"\n"), &[])
        .unwrap_err()
        .to_string();
    assert!(err.contains("vm\": managed_identity: expected"), "{err}");
    assert!(!err.contains("client_id: missing"), "{err}");
}

#[test]
fn a_secret_pasted_into_a_credential_key_is_never_quoted() {
    let pem = "-----BEGIN PRIVATE KEY-----MIIEvQIBADANBgkqhkiG9w0BAQEFAASC";
    let text = format!(
        "{TENANT_ONLY}tenant_id = \"c.example.com\"\nclient_id = \"x\"\nclient_certificate = \"{pem}\"\n"
    );
    let err = parse_env(&text, &[]).unwrap_err().to_string();
    assert!(err.contains("client_certificate: expected { cert"), "{err}");
    assert!(!err.contains("MIIEvQ"), "{err}");
    let text = format!(
        "{TENANT_ONLY}tenant_id = \"c.example.com\"\nclient_id = \"x\"\nclient_secret = {{ value = \"{pem}\" }}\n"
    );
    let err = parse_env(&text, &[]).unwrap_err().to_string();
    assert!(!err.contains("MIIEvQ"), "{err}");
}

#[test]
fn an_unreadable_provider_or_credential_causes_no_follow_on_problems() {
    let text = "[[tenant]]\nname = \"partner\"\nprovider = \"oauth\"\ntoken_url = \"https://a.example/token\"\nscope = \"s\"\nclient_id = \"p\"\nclient_secret = { env = \"S\" }\nsinks = [ { type = \"file\", path = \"/t/{name}.json\" } ]\n";
    let err = parse_env(text, &[]).unwrap_err();
    assert_eq!(err.problems.len(), 1, "{err}");
    assert!(
        err.to_string()
            .contains("provider: unknown variant `oauth`"),
        "{err}"
    );
    let text = "[[tenant]]\nname = \"vm\"\ncredential = 5\nmanaged_identity = \"system\"\nsinks = [ { type = \"file\", path = \"/t/{name}.json\" } ]\n";
    let err = parse_env(text, &[]).unwrap_err();
    assert_eq!(err.problems.len(), 1, "{err}");
    assert!(err.to_string().contains("vm\": credential: "), "{err}");
}

#[test]
fn a_tenant_keeps_its_own_federated_token_file_under_a_defaults_credential() {
    let text = "[defaults]\ncredential = \"workload_identity\"\nfederated_token_file = \"/d/token\"\nclient_id = \"c\"\nsinks = [ { type = \"file\", path = \"/t/{name}.json\" } ]\n\n[[tenant]]\nname = \"aks\"\ntenant_id = \"a.example.com\"\nfederated_token_file = \"/own/token\"\n\n[[tenant]]\nname = \"other\"\ntenant_id = \"b.example.com\"\n";
    let config = parse_env(text, &[]).unwrap();
    let files: Vec<_> = config
        .tenants
        .iter()
        .map(|tenant| tenant.credential.clone())
        .collect();
    assert_eq!(
        files,
        [
            CredentialConfig::WorkloadIdentity {
                token_file: "/own/token".into()
            },
            CredentialConfig::WorkloadIdentity {
                token_file: "/d/token".into()
            },
        ]
    );
}
