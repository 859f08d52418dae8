//! Generic OAuth2 providers, and keys that do not apply to a tenant's provider or credential.

use super::*;

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
            resource: None,
            auth: ClientAuth::ClientSecretBasic,
        }))
    );
    assert_eq!(
        tenant.token_url().as_deref(),
        Some("https://auth.example.com/oauth2/token")
    );
    // Only what is sent is claimed: no resource indicator was asked for.
    assert_eq!(&*tenant.resource, "");
    assert_eq!(tenant.requested_scope().as_deref(), Some("reports.read"));
    assert_eq!(tenant.requested_audience(), Some("https://api.example.com"));
    // RFC 8707: one resource indicator.
    let one = parse_env(
        &format!("{text}resource = \"https://api.example.com/reports\"\n"),
        &[],
    )
    .unwrap();
    assert_eq!(
        one.tenants[0].oauth2.as_ref().unwrap().resource.as_deref(),
        Some("https://api.example.com/reports")
    );
    assert_eq!(&*one.tenants[0].resource, "https://api.example.com/reports");
    // Several are refused by conforming servers (oidc-provider: `invalid_target`, "only a single
    // resource indicator value is supported for this grant type"), so a list is a config error
    // at its line; a list of one too, so the key has one spelling.
    for list in [
        "[\"https://a.example\", \"urn:b\"]",
        "[\"https://a.example\"]",
        "[]",
    ] {
        let err = parse_env(&format!("{text}resource = {list}\n"), &[]).unwrap_err();
        assert_eq!(err.problems.len(), 1, "{err}");
        let shown = err.to_string();
        assert!(
            shown.contains(
                "/etc/p/config.toml:12: tenant \"partner\": resource: expected one absolute URI"
            ),
            "{list}: {shown}"
        );
        assert!(shown.contains("not a list"), "{list}: {shown}");
    }
    // An Entra tenant's resource is one App ID URI too.
    let err = parse_err(&format!(
        "{MINIMAL}resource = [\"https://analysis.windows.net/powerbi/api\"]\n"
    ));
    assert!(
        err.to_string()
            .contains("contoso\": resource: expected one App ID URI")
            && err.to_string().contains("not a list"),
        "{err}"
    );
    // [defaults]' resource is Entra's App ID URI: never sent to a third-party server.
    let inherited = parse_env(
        &format!("[defaults]\nresource = \"https://analysis.windows.net/powerbi/api\"\n{text}"),
        &[],
    )
    .unwrap();
    assert_eq!(&*inherited.tenants[0].resource, "");
    assert_eq!(inherited.tenants[0].oauth2.as_ref().unwrap().resource, None);
    let err = parse_env(&format!("{text}resource = \"reports\"\n"), &[]).unwrap_err();
    assert!(
        err.to_string()
            .contains("partner\": resource: expected one absolute URI"),
        "{err}"
    );
    assert_eq!(tenant.tenant_id, None);
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

    // A generic OAuth2 tenant with Entra keys, and a managed identity tenant with Entra app keys.
    let oauth2 = "[[tenant]]\nname = \"partner\"\nprovider = \"oauth2\"\ntoken_url = \"https://auth.example.com/token\"\nclient_id = \"p\"\nclient_secret = { env = \"S\" }\nsinks = [ { type = \"file\", path = \"/t/{name}.json\" } ]\n";
    let managed = "[[tenant]]\nname = \"vm\"\ncredential = \"managed_identity\"\nmanaged_identity = \"system\"\nsinks = [ { type = \"file\", path = \"/t/{name}.json\" } ]\n";
    let cases = [
        (
            oauth2,
            [
                "cloud = \"gcc\"",
                "authority_host = \"https://login.example.com\"",
                "api = \"v1\"",
            ],
            "does not apply to provider = \"oauth2\"",
        ),
        (
            managed,
            [
                "client_id = \"33333333-3333-3333-3333-333333333333\"",
                "api = \"v1\"",
                "authority_host = \"https://login.example.com\"",
            ],
            "does not apply to a managed identity",
        ),
    ];
    for (tenant, keys, says) in cases {
        for key in keys {
            let err = parse_env(&format!("{tenant}{key}\n"), &[])
                .unwrap_err()
                .to_string();
            assert!(err.contains(says), "{key}: {err}");
        }
    }

    // [defaults] is shared by every kind of tenant: a default that does not apply is fine.
    let shared = "[defaults]\nscope = \"reports.read\"\nclient_id = \"00000000-0000-0000-0000-000000000001\"\nclient_secret = { env = \"S\" }\nsinks = [ { type = \"file\", path = \"/t/{name}.json\" } ]\n\n[[tenant]]\nname = \"contoso\"\ntenant_id = \"contoso.onmicrosoft.com\"\n";
    parse_env(shared, &[]).unwrap();
}
