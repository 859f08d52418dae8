//! Parsing whole files: defaults inheritance, every problem with its line, each section's rules.
//! The Power BI settings (`probe`, `powerbi_api`, `[[tenant.embed]]`) and Key Vault references
//! have files of their own.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::loader::parse_with_env;
use super::*;

mod key_vault;
mod powerbi;

const MINIMAL: &str = r#"
[defaults]
client_id = "00000000-0000-0000-0000-000000000001"
client_secret = { env = "SECRET" }
sinks = [ { type = "file", path = "/tmp/t/{name}.json" } ]

[[tenant]]
name = "contoso"
tenant_id = "contoso.onmicrosoft.com"
"#;

fn parse_ok(text: &str) -> Config {
    parse(text, Path::new("/etc/powerbi-tokend/config.toml")).unwrap()
}

fn parse_err(text: &str) -> ConfigError {
    parse(text, Path::new("/etc/powerbi-tokend/config.toml")).unwrap_err()
}

#[test]
fn defaults_are_merged() {
    let config = parse_ok(MINIMAL);
    let tenant = &config.tenants[0];
    assert_eq!(&*tenant.client_id, "00000000-0000-0000-0000-000000000001");
    assert_eq!(&*tenant.authority_host, "https://login.microsoftonline.com");
    assert_eq!(
        &*tenant.resource,
        "https://analysis.windows.net/powerbi/api"
    );
    assert_eq!(tenant.api, ApiVersion::V2);
    assert_eq!(
        tenant.token_url(),
        "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token"
    );
    assert_eq!(
        tenant.scope(),
        "https://analysis.windows.net/powerbi/api/.default"
    );
    assert_eq!(
        tenant.sinks,
        vec![SinkConfig::File(FileSinkConfig {
            path: PathBuf::from("/tmp/t/contoso.json"),
            format: FileFormat::Json,
            mode: 0o600,
        })]
    );
    assert_eq!(config.server.listen, DEFAULT_LISTEN.parse().unwrap());
    assert_eq!(config.daemon, DaemonConfig::default());
}

#[test]
fn tenant_overrides_defaults_and_cloud_picks_pair() {
    let text = format!("{MINIMAL}cloud = \"dod\"\napi = \"v1\"\nrefresh_at = 0.7\njitter = 0.05\n");
    let config = parse_ok(&text);
    let tenant = &config.tenants[0];
    assert_eq!(&*tenant.authority_host, "https://login.microsoftonline.us");
    assert_eq!(
        &*tenant.resource,
        "https://mil.analysis.usgovcloudapi.net/powerbi/api"
    );
    assert_eq!(
        tenant.token_url(),
        "https://login.microsoftonline.us/contoso.onmicrosoft.com/oauth2/token"
    );
    assert_eq!((tenant.refresh_at, tenant.jitter), (0.7, 0.05));
}

#[test]
fn https_only_except_loopback() {
    for (host, ok) in [
        ("https://login.example.com/", true),
        ("http://127.0.0.1:8080", true),
        ("http://127.5.0.1", true),
        ("http://localhost:1234/", true),
        ("http://[::1]:99", true),
        ("http://login.microsoftonline.com", false),
        ("http://10.0.0.1", false),
        ("http://127.0.0.1.evil.com", false),
        ("ftp://127.0.0.1", false),
        ("https://host/path", false),
    ] {
        let text = format!("{MINIMAL}authority_host = {host:?}\n");
        let result = parse(&text, Path::new("c.toml"));
        assert_eq!(
            result.is_ok(),
            ok,
            "{host}: {:?}",
            result.err().map(|e| e.to_string())
        );
    }
    let err = parse_err(&format!(
        "{MINIMAL}authority_host = \"http://login.example.com\"\n"
    ));
    assert!(err.to_string().contains("only sent over https"), "{err}");
}

#[test]
fn all_problems_reported_with_lines() {
    let text = r#"[defaults]
client_id = "c"
client_secret = { env = "S" }
sinks = [ { type = "file", path = "/tmp/{name}.json" } ]
colour = "blue"

[[tenant]]
name = "a"
tenant_id = "a.example.com"
schedule = "not a cron"

[[tenant]]
name = "a"
tenant_id = "b.example.com"
"#;
    let err = parse_err(text);
    let lines: Vec<Option<usize>> = err.problems.iter().map(|p| p.line).collect();
    assert_eq!(lines, vec![Some(5), Some(10), Some(12)], "{err}");
    let shown = err.to_string();
    assert!(
        shown.contains("/etc/powerbi-tokend/config.toml:5: defaults: unknown field `colour`"),
        "{shown}"
    );
    assert!(shown.contains("invalid cron expression"), "{shown}");
    assert!(
        shown.contains("duplicate tenant name \"a\" (first defined on line 7)"),
        "{shown}"
    );
}

#[test]
fn same_path_is_a_conflict() {
    let text = r#"
[defaults]
client_id = "c"
client_secret = { env = "S" }
sinks = [ { type = "file", path = "/tmp/token.json" } ]
[[tenant]]
name = "a"
tenant_id = "a.example.com"
[[tenant]]
name = "b"
tenant_id = "b.example.com"
"#;
    let err = parse_err(text);
    assert_eq!(err.problems.len(), 1, "{err}");
    assert!(
        err.to_string().contains("which tenant \"a\" also writes"),
        "{err}"
    );
    assert_eq!(err.problems[0].line, Some(9));
}

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
fn relative_paths_follow_the_config_file() {
    let text = MINIMAL.replace("/tmp/t/{name}.json", "tokens/{name}.json");
    let config = parse_ok(&text);
    let SinkConfig::File(file) = &config.tenants[0].sinks[0] else {
        panic!("a file sink");
    };
    assert_eq!(
        file.path,
        PathBuf::from("/etc/powerbi-tokend/tokens/contoso.json")
    );
}

#[test]
fn fractions() {
    let err = parse_err(&format!("{MINIMAL}refresh_at = 0.95\n"));
    assert!(
        err.to_string().contains("strictly between 0 and 1"),
        "{err}"
    );
}

#[test]
fn daemon_knobs() {
    let text = format!(
        "[daemon]\nmax_concurrent_requests = 4\nbackoff_max = \"2m\"\npermanent_retry_interval = \"1h\"\n{MINIMAL}"
    );
    let config = parse_ok(&text);
    assert_eq!(config.daemon.max_concurrent_requests, 4);
    assert_eq!(config.daemon.backoff_max, Duration::from_secs(120));
    assert_eq!(
        config.daemon.permanent_retry_interval,
        Duration::from_secs(3600)
    );
    let err = parse_err(&format!("[daemon]\nbackoff_min = \"soon\"\n{MINIMAL}"));
    assert_eq!(err.problems[0].line, Some(2), "{err}");
}

#[test]
fn multi_tenant_aliases_are_rejected() {
    let err = parse_err(&MINIMAL.replace("contoso.onmicrosoft.com", "common"));
    assert!(
        err.to_string().contains("cannot issue app-only tokens"),
        "{err}"
    );
}
fn parse_env(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let lookup = |key: &str| {
        env.iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| (*v).to_owned())
    };
    parse_with_env(text, Path::new("/etc/p/config.toml"), &lookup)
}

const TENANT_ONLY: &str = r#"
[defaults]
sinks = [ { type = "file", path = "/tmp/t/{name}.json" } ]

[[tenant]]
name = "contoso"
"#;

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
    assert_eq!(&*tenant.client_id, "11111111-1111-1111-1111-111111111111");
    assert_eq!(tenant.tenant_id, "22222222-2222-2222-2222-222222222222");
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
    assert_eq!(&*config.tenants[0].client_id, "");
    assert_eq!(config.tenants[0].tenant_id, "");
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
fn generic_oauth2_provider() {
    let text = r#"
[[tenant]]
name = "partner"
provider = "oauth2"
token_url = "https://auth.example.com/oauth2/token"
client_id = "partner-client"
client_secret = { env = "PARTNER_SECRET" }
scope = "reports.read"
audience = "https://api.example.com"
auth = "client_secret_basic"
sinks = [ { type = "file", path = "/t/{name}.json" } ]
"#;
    let config = parse_env(text, &[]).unwrap();
    let tenant = &config.tenants[0];
    assert_eq!(
        tenant.oauth2,
        Some(Box::new(OAuth2Config {
            token_url: "https://auth.example.com/oauth2/token".into(),
            scope: Some("reports.read".into()),
            audience: Some("https://api.example.com".into()),
            resources: Vec::new(),
            auth: ClientAuth::ClientSecretBasic,
        }))
    );
    assert_eq!(tenant.token_url(), "https://auth.example.com/oauth2/token");
    // Only what is sent is claimed: no resource indicator was asked for.
    assert_eq!(&*tenant.resource, "");
    assert_eq!(tenant.requested_scope().as_deref(), Some("reports.read"));
    assert_eq!(tenant.requested_audience(), Some("https://api.example.com"));
    // RFC 8707: one resource, or several.
    let one = parse_env(
        &format!("{text}resource = \"https://api.example.com/reports\"\n"),
        &[],
    )
    .unwrap();
    assert_eq!(
        one.tenants[0].oauth2.as_ref().unwrap().resources,
        ["https://api.example.com/reports"]
    );
    assert_eq!(&*one.tenants[0].resource, "https://api.example.com/reports");
    let two = parse_env(
        &format!("{text}resource = [\"https://a.example\", \"urn:b\"]\n"),
        &[],
    )
    .unwrap();
    assert_eq!(&*two.tenants[0].resource, "https://a.example urn:b");
    // [defaults]' resource is Entra's App ID URI: never sent to a third-party server.
    let inherited = parse_env(
        &format!("[defaults]\nresource = \"https://analysis.windows.net/powerbi/api\"\n{text}"),
        &[],
    )
    .unwrap();
    assert_eq!(&*inherited.tenants[0].resource, "");
    assert!(
        inherited.tenants[0]
            .oauth2
            .as_ref()
            .unwrap()
            .resources
            .is_empty()
    );
    let err = parse_env(&format!("{text}resource = \"reports\"\n"), &[]).unwrap_err();
    assert!(
        err.to_string()
            .contains("partner\": resource: expected an absolute URI"),
        "{err}"
    );
    assert_eq!(tenant.tenant_id, "");
    let err = parse_env(&text.replace("https://auth", "http://auth"), &[]).unwrap_err();
    assert!(err.to_string().contains("only sent over https"), "{err}");
    let err = parse_env(&text.replace("token_url", "# token_url"), &[]).unwrap_err();
    assert!(err.to_string().contains("token_url: missing"), "{err}");
    let mi = text.replace(
        "client_secret = { env = \"PARTNER_SECRET\" }",
        "credential = \"managed_identity\"",
    );
    let err = parse_env(&mi, &[]).unwrap_err();
    assert!(
        err.to_string().contains("authenticates with client_secret"),
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
        &*tenant.client_id, "",
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
        let label = if selector == "client_id" { uami } else { "" };
        assert_eq!(&*config.tenants[0].client_id, label);
    }
    let err = parse_env(&layout("managed_identity = \"user\"\n"), &[])
        .unwrap_err()
        .to_string();
    assert!(err.contains("vm\": managed_identity: expected"), "{err}");
    assert!(!err.contains("client_id: missing"), "{err}");
}

#[test]
fn keys_that_do_not_apply_to_the_tenant_are_errors() {
    let cases = [
        // An Entra tenant with generic OAuth2 keys.
        (
            "scope = \"reports.read\"\n",
            "scope applies only to provider = \"oauth2\"",
        ),
        (
            "audience = \"https://a.example\"\n",
            "audience applies only to provider",
        ),
        (
            "token_url = \"https://a.example/token\"\n",
            "token_url applies only to provider",
        ),
        (
            "auth = \"client_secret_basic\"\n",
            "auth applies only to provider",
        ),
        // Credential keys of another credential kind.
        (
            "managed_identity = \"system\"\n",
            "managed_identity applies only to credential = \"managed_identity\"",
        ),
        (
            "federated_token_file = \"/t\"\n",
            "federated_token_file applies only to credential = \"workload_identity\"",
        ),
        (
            "client_secret = { env = \"X\" }\nclient_certificate = { cert = \"c.pem\" }\n",
            "client_secret and client_certificate are all set",
        ),
    ];
    for (extra, says) in cases {
        let err = parse_env(&format!("{MINIMAL}{extra}"), &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains(says), "{extra}: {err}");
        assert!(err.contains("tenant \"contoso\": "), "{extra}: {err}");
    }
    let certificate = format!(
        "{TENANT_ONLY}tenant_id = \"c.example.com\"\nclient_id = \"x\"\nclient_certificate = {{ cert = \"c.pem\" }}\nclient_secret_expires = \"2027-03-01\"\n"
    );
    let err = parse_env(&certificate, &[]).unwrap_err().to_string();
    assert!(
        err.contains("client_secret_expires applies only to a client_secret"),
        "{err}"
    );

    // A generic OAuth2 tenant with Entra keys.
    let oauth2 = "[[tenant]]\nname = \"partner\"\nprovider = \"oauth2\"\ntoken_url = \"https://auth.example.com/token\"\nclient_id = \"p\"\nclient_secret = { env = \"S\" }\nsinks = [ { type = \"file\", path = \"/t/{name}.json\" } ]\n";
    for key in [
        "cloud = \"gcc\"",
        "authority_host = \"https://login.example.com\"",
        "api = \"v1\"",
    ] {
        let err = parse_env(&format!("{oauth2}{key}\n"), &[])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("does not apply to provider = \"oauth2\""),
            "{key}: {err}"
        );
    }

    // A managed identity tenant with Entra app keys.
    let managed = "[[tenant]]\nname = \"vm\"\ncredential = \"managed_identity\"\nmanaged_identity = \"system\"\nsinks = [ { type = \"file\", path = \"/t/{name}.json\" } ]\n";
    for key in [
        "client_id = \"33333333-3333-3333-3333-333333333333\"",
        "api = \"v1\"",
        "authority_host = \"https://login.example.com\"",
    ] {
        let err = parse_env(&format!("{managed}{key}\n"), &[])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("does not apply to a managed identity"),
            "{key}: {err}"
        );
    }

    // [defaults] is shared by every kind of tenant: a default that does not apply is fine.
    let shared = "[defaults]\nscope = \"reports.read\"\nclient_id = \"00000000-0000-0000-0000-000000000001\"\nclient_secret = { env = \"S\" }\nsinks = [ { type = \"file\", path = \"/t/{name}.json\" } ]\n\n[[tenant]]\nname = \"contoso\"\ntenant_id = \"contoso.onmicrosoft.com\"\n";
    parse_env(shared, &[]).unwrap();
}

#[test]
fn one_bad_value_hides_nothing_else() {
    let text = r#"[daemon]
log_format = "xml"
backoff_min = "soon"

[defaults]
client_id = "00000000-0000-0000-0000-000000000001"
client_secret = { env = "S" }
sinks = [ { type = "file", path = "/t/{name}.json" } ]

[[tenant]]
name = "bad name"
tenant_id = "contoso.onmicrosoft.com"
cloud = "mars"
api = 2
refresh_at = 1.5
colour = "blue"

[[tenant]]
name = "fabrikam"
tenant_id = "fabrikam.onmicrosoft.com"
sinks = 3
"#;
    let err = parse_err(text);
    let shown = err.to_string();
    for expected in [
        ":2: daemon.log_format: unknown variant `xml`",
        ":3: daemon.backoff_min: expected a positive duration",
        ":11: tenant \"bad name\": name: \"bad name\" is not a valid name",
        ":13: tenant \"bad name\": cloud: unknown variant `mars`",
        ":14: tenant \"bad name\": api: ",
        ":15: tenant \"bad name\": refresh_at: refresh_at (1.5)",
        ":16: tenant \"bad name\": unknown field `colour`",
        ":21: tenant \"fabrikam\": sinks: invalid type",
    ] {
        assert!(shown.contains(expected), "missing {expected:?} in\n{shown}");
    }
    // The unreadable `sinks` is not reported a second time as missing.
    assert!(!shown.contains("sinks: missing"), "{shown}");
    assert_eq!(err.problems.len(), 8, "{shown}");
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

#[test]
fn hardening_10_file_names_too_long_for_the_temp_suffix_are_refused() {
    let long = "n".repeat(240);
    let text = MINIMAL.replace("name = \"contoso\"", &format!("name = \"{long}\""));
    let err = parse_err(&text).to_string();
    assert!(
        err.contains("sinks.path: the file name is 245 bytes; at most 200"),
        "{err}"
    );
    let fits = "n".repeat(195);
    parse_ok(&MINIMAL.replace("name = \"contoso\"", &format!("name = \"{fits}\"")));
}

#[test]
fn tenant_equality_is_by_settings_not_by_line() {
    let before = parse_ok(MINIMAL);
    let moved = parse_ok(&format!("# a comment\n\n{MINIMAL}"));
    let (before, moved) = (&before.tenants[0], &moved.tenants[0]);
    assert_ne!(before.line, moved.line, "the header moved down two lines");
    assert_eq!(before, moved, "only the line differs: the same tenant");
    // Any setting still counts.
    let changed = parse_ok(&format!("{MINIMAL}refresh_at = 0.6\n"));
    assert_ne!(**before, *changed.tenants[0]);
    let changed = parse_ok(&format!("{MINIMAL}schedule = \"0 0 * * * *\"\n"));
    assert_ne!(**before, *changed.tenants[0]);
}

#[test]
fn control_characters_from_the_file_are_written_out_in_messages() {
    let err = parse_err("[server]\n\"\\u0009x\" = 1\n[defaults]\nauth = \"\\r\"\n");
    for problem in &err.problems {
        let shown = format!("{:?} {}", problem.key, problem.message);
        assert!(!problem.message.chars().any(char::is_control), "{shown}");
        assert!(
            !problem
                .key
                .as_deref()
                .unwrap_or("")
                .chars()
                .any(char::is_control),
            "{shown}"
        );
    }
    assert!(err.to_string().contains("\\t"), "{err}");
}

/// MINIMAL's tenant with a Redis sink, after `sections`.
fn with_redis(sections: &str, sink: &str) -> String {
    format!(
        "{sections}\n[[tenant]]\nname = \"contoso\"\ntenant_id = \"contoso.onmicrosoft.com\"\nclient_id = \"00000000-0000-0000-0000-000000000001\"\nclient_secret = {{ env = \"SECRET\" }}\nsinks = [ {sink} ]\n"
    )
}

#[test]
fn redis_and_fleet_sections() {
    let config = parse_ok(&with_redis(
        "[redis]\nurl = \"rediss://cache.example.com:6380\"\nusername = \"tokend\"\npassword = { file = \"redis.pass\" }\ncommand_timeout = \"1s\"\n\n[fleet]\nenabled = true\n",
        "{ type = \"redis\" }, { type = \"redis\", key = \"raw/{name}\", format = \"raw\" }",
    ));
    let redis = config.redis.unwrap();
    assert_eq!(redis.urls, vec!["rediss://cache.example.com:6380"]);
    assert_eq!(redis.username.as_deref(), Some("tokend"));
    assert_eq!(
        redis.password,
        Some(SecretSource::File(PathBuf::from(
            "/etc/powerbi-tokend/redis.pass"
        )))
    );
    assert_eq!(redis.command_timeout, Duration::from_secs(1));
    assert_eq!(redis.channel, DEFAULT_REDIS_CHANNEL);
    let fleet = config.fleet.unwrap();
    assert_eq!(fleet.key_prefix, DEFAULT_FLEET_PREFIX);
    assert_eq!(fleet.lease_ttl, Duration::from_secs(45));
    assert_eq!(
        config.tenants[0].sinks,
        vec![
            SinkConfig::Redis(RedisSinkConfig {
                key: "powerbi-tokend:{contoso}".to_owned(),
                format: FileFormat::Json,
            }),
            SinkConfig::Redis(RedisSinkConfig {
                key: "raw/{contoso}".to_owned(),
                format: FileFormat::Raw,
            }),
        ]
    );
    // A cluster from several seed nodes; fleet off unless enabled.
    let config = parse_ok(&with_redis(
        "[redis]\nurl = [\"redis://10.0.0.1:7000\", \"redis://10.0.0.2:7000\"]\ncluster = true\n\n[fleet]\nenabled = false\n",
        "{ type = \"redis\" }",
    ));
    assert!(config.redis.unwrap().cluster);
    assert!(config.fleet.is_none());
}

#[test]
fn redis_mistakes_are_named() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "[redis]\nurl = \"redis://:hunter2@cache:6379\"\n",
            "{ type = \"redis\" }",
            "redis.url: the URL carries credentials",
        ),
        (
            "[redis]\nurl = \"redis://cache:6379\"\npassword = \"hunter2\"\n",
            "{ type = \"redis\" }",
            "redis.password: secrets are not written in the config file",
        ),
        (
            "[redis]\nurl = [\"redis://a:1\", \"redis://b:2\"]\n",
            "{ type = \"redis\" }",
            "set cluster = true",
        ),
        (
            "",
            "{ type = \"redis\" }",
            "a redis sink needs a [redis] section",
        ),
        (
            "[fleet]\nenabled = true\n",
            "{ type = \"file\", path = \"/tmp/{name}.json\" }",
            "fleet.enabled: fleet mode shares leases and tokens through Redis; add a [redis] section",
        ),
        (
            "[redis]\nurl = \"redis://cache\"\n[fleet]\nenabled = true\nlease_ttl = \"10s\"\n",
            "{ type = \"redis\" }",
            "fleet.lease_ttl: must be longer than [daemon] request_timeout (30s)",
        ),
        (
            "[redis]\nurl = \"redis://cache\"\n",
            "{ type = \"redis\", key = \"shared\" }",
            "must contain {name} once",
        ),
        (
            "[redis]\nurl = \"redis://cache\"\n",
            "{ type = \"redis\" }, { type = \"redis\" }",
            "two sinks write the Redis key powerbi-tokend:{contoso}",
        ),
        (
            "[redis]\nurl = \"redis://cache\"\ntimeout = \"1s\"\n",
            "{ type = \"redis\" }",
            "unknown field `timeout`",
        ),
    ];
    for (sections, sink, expected) in cases {
        let text = with_redis(sections, sink);
        let err = parse_err(&text).to_string();
        assert!(
            err.contains(expected),
            "{expected:?} not in:\n{err}\nfor:\n{text}"
        );
        assert!(!err.contains("hunter2"), "{err}");
    }
}

#[test]
fn max_requests_per_second_is_a_whole_positive_number() {
    let config = parse_ok(&format!(
        "[daemon]\nmax_requests_per_second = 50\n{MINIMAL}"
    ));
    assert_eq!(config.daemon.max_requests_per_second, Some(50));
    assert_eq!(parse_ok(MINIMAL).daemon.max_requests_per_second, None);
    for bad in ["0", "-1", "1000000", "\"fast\""] {
        let err = parse_err(&format!(
            "[daemon]\nmax_requests_per_second = {bad}\n{MINIMAL}"
        ));
        assert!(
            err.to_string().contains("daemon.max_requests_per_second"),
            "{bad}: {err}"
        );
    }
}

/// A hundred thousand tenants carry a `TenantConfig` and a `TenantStatus` each: rare parts
/// (a cron schedule, a generic OAuth2 server, the last error) are boxed so that the common tenant
/// does not pay for them.
#[test]
fn per_tenant_records_stay_small() {
    let config = std::mem::size_of::<TenantConfig>();
    let status = std::mem::size_of::<crate::status::TenantStatus>();
    assert!(config <= 320, "TenantConfig takes {config} bytes");
    assert!(status <= 256, "TenantStatus takes {status} bytes");
}

/// Tenants are read one table at a time: each `[[tenant]]` with its sub-tables, up to the next
/// header of another section, the rest blanked with its newlines kept.
#[test]
fn tenant_tables_are_split_at_their_headers() {
    let text = "[server]\nlisten = \"127.0.0.1:9\"\n\n[[tenant]] # first\nname = \"a\"\n[tenant.schedule]\ncron = \"0 * * * *\"\n  [[ tenant ]]\nname = \"b\"\n[defaults]\nclient_id = \"x\"\n";
    let split = super::loader::split_tenants(text).unwrap();
    let tables: Vec<&str> = split.tenants.iter().map(|r| &text[r.clone()]).collect();
    assert_eq!(
        tables,
        [
            "[[tenant]] # first\nname = \"a\"\n[tenant.schedule]\ncron = \"0 * * * *\"\n",
            "  [[ tenant ]]\nname = \"b\"\n"
        ]
    );
    assert_eq!(split.rest.len(), text.len());
    assert_eq!(split.rest.lines().count(), text.lines().count());
    assert!(split.rest.starts_with("[server]\nlisten"));
    assert!(split.rest.ends_with("[defaults]\nclient_id = \"x\"\n"));
    assert!(!split.rest.contains("tenant"));
}

/// Where a line could look like a header without being one, the file is read whole.
#[test]
fn files_that_might_split_wrongly_are_read_whole() {
    for text in [
        "[[tenant]]\nname = \"a\"\nnote = \"\"\"\n[[tenant]]\n\"\"\"\n",
        "[[tenant]]\nname = \"a\"\nnote = '''\n[server]\n'''\n",
        "[[tenant]]\nname = \"a\"\nx = [\n  [1],\n]\n",
        "[[\"tenant\"]]\nname = \"a\"\n",
        "[tenant.schedule]\ncron = \"x\"\n[[tenant]]\nname = \"a\"\n",
        "[tenant]\nname = \"a\"\n",
        "[server]\n",
    ] {
        assert_eq!(super::loader::split_tenants(text), None, "{text}");
    }
}

/// Reading table by table says exactly what reading the whole file says: the same tenants, the
/// same problems on the same lines. A `'''` in a trailing comment makes the loader read whole.
#[test]
fn reading_table_by_table_reads_like_the_whole_file() {
    let text = r#"
[defaults]
client_id = "00000000-0000-0000-0000-000000000001"
client_secret = { env = "S" }
sinks = [ { type = "file", path = "/t/{name}.json" } ]

[[tenant]]
name = "good"
tenant_id = "good.example.com"

[[tenant]]
name = "bad one"
tenant_id = "bad.example.com"
refresh_at = 1.5

[server]
listen = "127.0.0.1:9"

[[tenant]]
name = "also-good"
tenant_id = "also.example.com"
schedule = "not a cron"
[tenant.client_secret]
env = "S"

[[tenant]]
name = "good"
tenant_id = "twice.example.com"
unknown_key = 1
"#;
    let env = [("S", "secret")];
    assert!(super::loader::split_tenants(text).is_some());
    let split = parse_env(text, &env).unwrap_err();
    let whole = parse_env(&format!("{text}# '''\n"), &env).unwrap_err();
    assert_eq!(split.problems, whole.problems);
    assert!(split.problems.len() >= 4, "{:?}", split.problems);
    let valid = text
        .replace("refresh_at = 1.5", "")
        .replace("bad one", "bad-one")
        .replace("not a cron", "0 * * * *");
    let valid = valid.replace("unknown_key = 1\n", "").replace(
        "name = \"good\"\ntenant_id = \"twice",
        "name = \"other\"\ntenant_id = \"twice",
    );
    let split = parse_env(&valid, &env).unwrap();
    let whole = parse_env(&format!("{valid}# '''\n"), &env).unwrap();
    assert_eq!(split.tenants, whole.tenants);
    assert_eq!(split.tenants.len(), 4);
    assert_eq!(split.tenants[2].line, Some(19));
}

/// A file of many tenants read table by table reads like the whole file too: the same tenants
/// in the same order, the same problems on the same lines, far down the file.
#[test]
fn a_large_file_read_table_by_table_reads_like_the_whole_file() {
    let mut text = String::from(
        "[defaults]\nclient_id = \"00000000-0000-0000-0000-000000000001\"\nclient_secret = { env = \"S\" }\nsinks = [ { type = \"file\", path = \"/t/{name}.json\" } ]\n",
    );
    let tenants = 1500;
    for i in 0..tenants {
        text.push_str(&format!(
            "\n[[tenant]]\nname = \"t{i}\"\ntenant_id = \"t{i}.example.com\"\n"
        ));
    }
    let env = [("S", "secret")];
    let split = parse_env(&text, &env).unwrap();
    let whole = parse_env(&format!("{text}# '''\n"), &env).unwrap();
    assert_eq!(split.tenants, whole.tenants);
    assert_eq!(split.tenants.len(), tenants);
    assert_eq!(split.tenants[1499].name, "t1499");
    assert_eq!(split.tenants[1499].line, Some(6 + 4 * 1499));

    let broken = text
        .replace("name = \"t3\"\n", "name = \"t3\"\nrefresh_at = 1.5\n")
        .replace("name = \"t700\"\n", "name = \"t700\"\nunknown_key = 1\n")
        .replace("name = \"t1499\"", "name = \"t0\"");
    let split = parse_env(&broken, &env).unwrap_err();
    let whole = parse_env(&format!("{broken}# '''\n"), &env).unwrap_err();
    assert_eq!(split.problems, whole.problems);
    assert_eq!(split.problems.len(), 3, "{:?}", split.problems);
}

#[test]
fn per_tenant_metrics_is_one_of_three_modes() {
    assert_eq!(
        parse_ok(MINIMAL).server.per_tenant_metrics,
        PerTenantMetrics::All
    );
    for mode in PerTenantMetrics::ALL {
        let text = format!(
            "[server]\nper_tenant_metrics = \"{}\"\n{MINIMAL}",
            mode.as_str()
        );
        assert_eq!(parse_ok(&text).server.per_tenant_metrics, mode);
    }
    for (value, expected) in [
        (
            "\"failing\"",
            ":2: server.per_tenant_metrics: unknown variant `failing`, expected one of `all`, `unhealthy`, `none`",
        ),
        (
            "false",
            ":2: server.per_tenant_metrics: invalid type: boolean `false`, expected one of `all`, `unhealthy`, `none`",
        ),
    ] {
        let text = format!("[server]\nper_tenant_metrics = {value}\n{MINIMAL}");
        let shown = parse_err(&text).to_string();
        assert!(shown.contains(expected), "{value}: {shown}");
    }
}
