//! `probe`, `powerbi_api` and `[[tenant.embed]]`.

use std::path::PathBuf;
use std::time::Duration;

use super::super::*;
use super::{MINIMAL, parse_err, parse_ok};

#[test]
fn probe_defaults_cloud_roots_and_overrides() {
    let config = parse_ok(&format!(
        "{MINIMAL}cloud = \"gcchigh\"\nprobe = true\n\n[[tenant]]\nname = \"fabrikam\"\ntenant_id = \"fabrikam.example.com\"\npowerbi_api = \"http://127.0.0.1:9/\"\nprobe = {{ interval = \"90s\", path = \"/v1.0/myorg/reports\" }}\n\n[[tenant]]\nname = \"plain\"\ntenant_id = \"plain.example.com\"\n"
    ));
    let powerbi = config.tenants[0]
        .powerbi
        .as_deref()
        .expect("contoso probes");
    assert_eq!(&*powerbi.api_root, "https://api.high.powerbigov.us");
    assert_eq!(
        powerbi.probe,
        Some(ProbeConfig {
            interval: Duration::from_secs(15 * 60),
            path: "/v1.0/myorg/groups?$top=1".to_owned(),
        })
    );
    let powerbi = config.tenants[1]
        .powerbi
        .as_deref()
        .expect("fabrikam probes");
    assert_eq!(&*powerbi.api_root, "http://127.0.0.1:9");
    assert_eq!(
        powerbi.probe,
        Some(ProbeConfig {
            interval: Duration::from_secs(90),
            path: "/v1.0/myorg/reports".to_owned(),
        })
    );
    assert_eq!(config.tenants[2].powerbi, None);

    // `[defaults]` turns it on, a tenant turns it off.
    let config = parse_ok(&MINIMAL.replace(
        "[[tenant]]\nname = \"contoso\"",
        "probe = { interval = \"5m\" }\n\n[[tenant]]\nprobe = false\nname = \"contoso\"",
    ));
    assert_eq!(config.tenants[0].powerbi, None);
}

#[test]
fn probe_mistakes_are_reported_with_their_keys() {
    let err = parse_err(&format!(
        "{MINIMAL}probe = {{ interval = \"2d\", path = \"https://evil.example/x\", colour = 1 }}\npowerbi_api = \"http://api.example.com\"\n"
    ));
    let shown = err.to_string();
    for expected in [
        "tenant \"contoso\": probe.interval: expected a duration between 1s and 24h",
        "tenant \"contoso\": probe.path: expected a path under the API root",
        "tenant \"contoso\": probe.colour: unknown key",
        "tenant \"contoso\": powerbi_api: \"http://api.example.com\" uses http",
    ] {
        assert!(shown.contains(expected), "{expected}\n{shown}");
    }
    let err = parse_err(&format!("{MINIMAL}probe = \"yes\"\n"));
    assert!(
        err.to_string().contains("expected true, false or {"),
        "{err}"
    );
    // A token for another resource cannot show Power BI access.
    let err = parse_err(&format!(
        "{MINIMAL}probe = true\nresource = \"https://graph.microsoft.com\"\n"
    ));
    assert!(
        err.to_string().contains("the probe calls the Power BI API"),
        "{err}"
    );
}

const REPORT: &str = "5b218778-0000-4b8a-9c7c-000000000004";
const DATASET: &str = "cfafbeb1-0000-4d0c-896e-000000000003";
const WORKSPACE: &str = "f089354e-0000-4e18-aea3-000000000005";

#[test]
fn embed_tokens_with_placeholders_and_access_levels() {
    let config = parse_ok(&format!(
        r#"{MINIMAL}
[[tenant.embed]]
name = "sales"
reports = ["{REPORT}"]
datasets = ["{DATASET}"]
lifetime = "30m"
sinks = [ {{ type = "file", path = "/tmp/t/{{name}}.{{embed}}.embed.json" }} ]

[[tenant.embed]]
name = "author"
reports = ["{REPORT}"]
target_workspaces = ["{WORKSPACE}"]
access_level = "Create"
sinks = [ {{ type = "file", path = "/tmp/t/{{name}}-{{embed}}.json", format = "raw" }} ]
"#
    ));
    let powerbi = config.tenants[0].powerbi.as_deref().expect("embeds");
    assert_eq!(powerbi.probe, None);
    assert_eq!(&*powerbi.api_root, "https://api.powerbi.com");
    let [sales, author] = powerbi.embeds.as_slice() else {
        panic!("two embeds: {:?}", powerbi.embeds);
    };
    assert_eq!(sales.name, "sales");
    assert_eq!(sales.reports, [REPORT]);
    assert_eq!(sales.datasets, [DATASET]);
    assert_eq!(sales.access_level, AccessLevel::View);
    assert_eq!(sales.lifetime, Some(Duration::from_secs(1800)));
    assert_eq!(
        sales.sinks[0].destination(),
        Destination::File(PathBuf::from("/tmp/t/contoso.sales.embed.json"))
    );
    assert_eq!(author.access_level, AccessLevel::Create);
    assert_eq!(author.target_workspaces, [WORKSPACE]);
    assert_eq!(
        author.sinks[0].destination(),
        Destination::File(PathBuf::from("/tmp/t/contoso-author.json"))
    );
}

#[test]
fn embed_mistakes_are_all_reported() {
    let err = parse_err(&format!(
        r#"{MINIMAL}
[[tenant.embed]]
name = "a b"
reports = ["not-a-guid"]
access_level = "Admin"
lifetime = "90m"
sinks = [ {{ type = "file", path = "/tmp/t/{{name}}.json" }} ]

[[tenant.embed]]
name = "empty"
access_level = "Create"
sinks = []

[[tenant.embed]]
reports = ["{REPORT}"]
"#
    ));
    let shown = err.to_string();
    for expected in [
        "tenant \"contoso\": embed \"a b\".name: \"a b\" is not a valid name",
        "tenant \"contoso\": embed \"a b\".reports: expected GUIDs",
        "tenant \"contoso\": embed \"a b\".access_level: expected \"View\", \"Edit\" or \"Create\"",
        "tenant \"contoso\": embed \"a b\".lifetime: expected whole minutes between 1m and 60m",
        "tenant \"contoso\": embed \"empty\": names no report and no dataset",
        "tenant \"contoso\": embed \"empty\".target_workspaces: access_level = \"Create\" needs",
        "tenant \"contoso\": embed \"empty\".sinks: is empty",
        "tenant \"contoso\": embed[2].name: missing",
    ] {
        assert!(shown.contains(expected), "{expected}\n{shown}");
    }
    // An embed token written over the tenant's own token file: one writer per file.
    let err = parse_err(&format!(
        "{MINIMAL}\n[[tenant.embed]]\nname = \"x\"\nreports = [\"{REPORT}\"]\nsinks = [ {{ type = \"file\", path = \"/tmp/t/{{name}}.json\" }} ]\n"
    ));
    assert!(err.to_string().contains("/tmp/t/contoso.json"), "{err}");
    let err = parse_err(&MINIMAL.replace(
        "[[tenant]]",
        &format!("embed = [ {{ name = \"x\", reports = [\"{REPORT}\"] }} ]\n\n[[tenant]]"),
    ));
    assert!(
        err.to_string()
            .contains("`embed` belongs in a [[tenant]], not in [defaults]"),
        "{err}"
    );
}

#[test]
fn embed_identities_are_read_and_must_name_the_embeds_items() {
    const OTHER: &str = "cfafbeb1-0000-4d0c-896e-0000000000ff";
    let config = parse_ok(&format!(
        r#"{MINIMAL}
[[tenant.embed]]
name = "sales"
reports = ["{REPORT}"]
datasets = ["{DATASET}"]
identities = [
  {{ username = "store-17@contoso.example", roles = ["Store"], datasets = ["{DATASET}"] }},
  {{ username = "aas-user", datasets = ["{DATASET}"], reports = ["{REPORT}"], custom_data = "region=EU" }},
]
sinks = [ {{ type = "file", path = "/tmp/t/{{name}}.{{embed}}.embed.json" }} ]
"#
    ));
    let embed = &config.tenants[0].powerbi.as_deref().expect("embeds").embeds[0];
    assert!(!embed.xmla_read_only);
    assert_eq!(
        embed.identities,
        [
            EffectiveIdentity {
                username: "store-17@contoso.example".to_owned(),
                roles: vec!["Store".to_owned()],
                datasets: vec![DATASET.to_owned()],
                reports: Vec::new(),
                custom_data: None,
            },
            EffectiveIdentity {
                username: "aas-user".to_owned(),
                roles: Vec::new(),
                datasets: vec![DATASET.to_owned()],
                reports: vec![REPORT.to_owned()],
                custom_data: Some("region=EU".to_owned()),
            },
        ]
    );

    let err = parse_err(&format!(
        r#"{MINIMAL}
[[tenant.embed]]
name = "sales"
reports = ["{REPORT}"]
datasets = ["{DATASET}"]
identities = [
  {{ roles = ["Store"], datasets = ["{OTHER}"] }},
  {{ username = "u", reports = ["{OTHER}"], roles = [""] }},
]
sinks = [ {{ type = "file", path = "/tmp/t/{{name}}.{{embed}}.embed.json" }} ]
"#
    ));
    let shown = err.to_string();
    for expected in [
        "embed \"sales\".identities[0].username: expected the user the rows are filtered for",
        &format!(
            "embed \"sales\".identities[0].datasets: \"{OTHER}\" is not among the embed's datasets"
        ),
        "embed \"sales\".identities[1].datasets: missing",
        &format!(
            "embed \"sales\".identities[1].reports: \"{OTHER}\" is not among the embed's reports"
        ),
        "embed \"sales\".identities[1].roles: expected at most 50 role names",
    ] {
        assert!(shown.contains(expected), "{expected}\n{shown}");
    }
}

/// The minimal config with one embed named "sales" of `keys`, written to a file.
fn sales_embed(keys: &str) -> String {
    format!(
        "{MINIMAL}\n[[tenant.embed]]\nname = \"sales\"\n{keys}\nsinks = [ {{ type = \"file\", path = \"/tmp/t/{{name}}.{{embed}}.embed.json\" }} ]\n"
    )
}

#[test]
fn xmla_permissions_are_read_only_or_off_and_need_datasets() {
    let embed = |extra: &str| sales_embed(&format!("reports = [\"{REPORT}\"]\n{extra}"));
    let config = parse_ok(&embed(&format!(
        "datasets = [\"{DATASET}\"]\nxmla_permissions = \"ReadOnly\""
    )));
    assert!(config.tenants[0].powerbi.as_deref().expect("embeds").embeds[0].xmla_read_only);
    let err = parse_err(&embed(&format!(
        "datasets = [\"{DATASET}\"]\nxmla_permissions = \"ReadWrite\""
    )));
    assert!(
        err.to_string().contains(
            "embed \"sales\".xmla_permissions: expected \"ReadOnly\" or \"Off\", got \"ReadWrite\""
        ),
        "{err}"
    );
    let err = parse_err(&embed("xmla_permissions = \"ReadOnly\""));
    assert!(
        err.to_string()
            .contains("embed \"sales\".xmla_permissions: applies to the embed's datasets"),
        "{err}"
    );
}

#[test]
fn the_workspace_of_an_embeds_reports_is_a_guid_and_needs_reports() {
    let config = parse_ok(&sales_embed(&format!(
        "reports = [\"{REPORT}\"]\nworkspace = \"{WORKSPACE}\""
    )));
    let powerbi = config.tenants[0].powerbi.as_deref().expect("embeds");
    assert_eq!(powerbi.embeds[0].workspace.as_deref(), Some(WORKSPACE));
    let config = parse_ok(&sales_embed(&format!("reports = [\"{REPORT}\"]")));
    let powerbi = config.tenants[0].powerbi.as_deref().expect("embeds");
    assert_eq!(powerbi.embeds[0].workspace, None);

    let err = parse_err(&sales_embed(&format!(
        "reports = [\"{REPORT}\"]\nworkspace = \"Sales\""
    )));
    assert!(
        err.to_string().contains(
            "tenant \"contoso\": embed \"sales\".workspace: expected a GUID (the id in the workspace's URL), got \"Sales\""
        ),
        "{err}"
    );
    let err = parse_err(&sales_embed(&format!(
        "datasets = [\"{DATASET}\"]\nworkspace = \"{WORKSPACE}\""
    )));
    assert!(
        err.to_string().contains(
            "embed \"sales\".workspace: is where the embed's reports are read from, and it lists none"
        ),
        "{err}"
    );
    // The file and the line of the embed are named, as for its other keys.
    assert!(err.to_string().contains("config.toml:11: "), "{err}");
}

#[test]
fn datasource_identities_read_their_blob_from_a_secret_source_and_name_their_data_sources() {
    let config = parse_ok(&format!(
        r#"{MINIMAL}
[[tenant.embed]]
name = "finance"
reports = ["{REPORT}"]
datasets = ["{DATASET}"]
datasource_identities = [
  {{ identity_blob = {{ file = "secrets/sql-token" }},
     datasources = [ {{ datasource_type = "Sql", server = "contoso.database.windows.net", database = "sales" }},
                     {{ datasource_type = "Extension", extension_data_source_kind = "Databricks", extension_data_source_path = "adb-1.azuredatabricks.net" }} ] }},
  {{ identity_blob = {{ env = "LAKE_TOKEN" }},
     datasources = [ {{ datasource_type = "AzureDataLakeStorage", url = "https://lake.dfs.core.windows.net", path = "/sales" }} ] }},
]
sinks = [ {{ type = "file", path = "/tmp/t/{{name}}.{{embed}}.embed.json" }} ]
"#
    ));
    let embed = &config.tenants[0].powerbi.as_deref().expect("embeds").embeds[0];
    assert_eq!(
        embed.datasource_identities,
        [
            DatasourceIdentity {
                // Relative to the config file, as every file a config names.
                identity_blob: SecretSource::File(PathBuf::from(
                    "/etc/powerbi-tokend/secrets/sql-token"
                )),
                datasources: vec![
                    DatasourceSelector {
                        datasource_type: "Sql".to_owned(),
                        connection_details: vec![
                            ("server", "contoso.database.windows.net".to_owned()),
                            ("database", "sales".to_owned()),
                        ],
                    },
                    DatasourceSelector {
                        datasource_type: "Extension".to_owned(),
                        connection_details: vec![
                            ("extensionDataSourceKind", "Databricks".to_owned()),
                            (
                                "extensionDataSourcePath",
                                "adb-1.azuredatabricks.net".to_owned()
                            ),
                        ],
                    },
                ],
            },
            DatasourceIdentity {
                identity_blob: SecretSource::Env("LAKE_TOKEN".to_owned()),
                datasources: vec![DatasourceSelector {
                    datasource_type: "AzureDataLakeStorage".to_owned(),
                    connection_details: vec![
                        ("url", "https://lake.dfs.core.windows.net".to_owned()),
                        ("path", "/sales".to_owned()),
                    ],
                }],
            },
        ]
    );
}

#[test]
fn datasource_identity_mistakes_name_the_entry_and_key() {
    let err = parse_err(&format!(
        r#"{MINIMAL}
[[tenant.embed]]
name = "finance"
reports = ["{REPORT}"]
datasource_identities = [
  {{ identity_blob = "eyJ0eXAiOiJKV1Qi.literal.token",
     datasources = [ {{ datasource_type = "Sql", server = "contoso.database.windows.net" }},
                     {{ datasource_type = "Sql", server = "bad\u0007server" }} ] }},
  {{ datasources = [] }},
  {{ identity_blob = {{ key_vault = "https://kv1.vault.azure.net/secrets/sql-token" }},
     datasources = [ {{ server = "s" }}, {{ datasource_type = "S q l", url = "ftp://x" }}, {{ datasource_type = "Sql" }} ] }},
]
sinks = [ {{ type = "file", path = "/tmp/t/{{name}}.{{embed}}.embed.json" }} ]
"#
    ));
    let shown = err.to_string();
    for expected in [
        "tenant \"contoso\": embed \"finance\".datasource_identities[0].identity_blob: secrets are not written in the config file",
        "embed \"finance\".datasource_identities[0].datasources[1].server: expected 1 to 1024 characters without control characters",
        "embed \"finance\".datasource_identities[1].identity_blob: missing",
        "embed \"finance\".datasource_identities[1].datasources: expected 1 to 50 data sources",
        "embed \"finance\".datasource_identities[2].identity_blob: is in Key Vault; add a [key_vault] section",
        "embed \"finance\".datasource_identities[2].datasources[0].datasource_type: expected the type Power BI reports",
        "embed \"finance\".datasource_identities[2].datasources[1].datasource_type: expected the type Power BI reports for the data source, letters and digits such as \"Sql\", got \"S q l\"",
        "embed \"finance\".datasource_identities[2].datasources[1].url: expected an http:// or https:// URL, got \"ftp://x\"",
        "embed \"finance\".datasource_identities[2].datasources[2]: names no connection detail",
    ] {
        assert!(shown.contains(expected), "{expected}\n{shown}");
    }
    // The literal blob is refused without being repeated.
    assert!(!shown.contains("literal.token"), "{shown}");

    // Keys GenerateToken does not know are refused by name.
    let err = parse_err(&format!(
        r#"{MINIMAL}
[[tenant.embed]]
name = "finance"
reports = ["{REPORT}"]
datasource_identities = [ {{ identity_blob = {{ env = "T" }}, datasources = [ {{ datasource_type = "Sql", servr = "s" }} ] }} ]
sinks = [ {{ type = "file", path = "/tmp/t/{{name}}.{{embed}}.embed.json" }} ]
"#
    ));
    assert!(err.to_string().contains("servr"), "{err}");
}

#[test]
fn the_fabric_preset_asks_for_fabrics_resource_and_probes_the_fabric_api() {
    for (api, scope) in [
        ("v2", Some("https://api.fabric.microsoft.com/.default")),
        ("v1", None),
    ] {
        let config = parse_ok(&format!(
            "{MINIMAL}resource = \"fabric\"\napi = \"{api}\"\nprobe = true\n"
        ));
        let tenant = &config.tenants[0];
        // v1 sends the resource itself, v2 its scope.
        assert_eq!(&*tenant.resource, "https://api.fabric.microsoft.com");
        assert_eq!(tenant.requested_scope().as_deref(), scope);
        let fabric = tenant.powerbi.as_deref().expect("a probe");
        assert_eq!(fabric.api, RestApi::Fabric);
        assert_eq!(&*fabric.api_root, "https://api.fabric.microsoft.com");
        assert_eq!(
            fabric.probe,
            Some(ProbeConfig {
                interval: Duration::from_secs(15 * 60),
                path: "/v1/workspaces".to_owned(),
            })
        );
    }
    // The URI written out is the same as the preset; `fabric_api` moves the root (loopback may
    // be http, for the simulator), `[defaults]`' powerbi_api is for other tenants.
    let config = parse_ok(&format!(
        "{MINIMAL}resource = \"https://api.fabric.microsoft.com/\"\nfabric_api = \"http://127.0.0.1:9/\"\nprobe = {{ interval = \"1m\", path = \"/v1/workspaces?roles=Admin\" }}\n\n[[tenant]]\nname = \"plain\"\ntenant_id = \"plain.example.com\"\nprobe = true\n"
    ).replace("[defaults]", "[defaults]\npowerbi_api = \"https://api.powerbi.com\""));
    let fabric = config.tenants[0].powerbi.as_deref().expect("a probe");
    assert_eq!(fabric.api, RestApi::Fabric);
    assert_eq!(&*fabric.api_root, "http://127.0.0.1:9");
    assert_eq!(
        fabric.probe.as_ref().map(|probe| probe.path.as_str()),
        Some("/v1/workspaces?roles=Admin")
    );
    let plain = config.tenants[1].powerbi.as_deref().expect("a probe");
    assert_eq!(plain.api, RestApi::PowerBi);
    assert_eq!(&*plain.api_root, "https://api.powerbi.com");
    assert_eq!(
        plain.probe.as_ref().map(|probe| probe.path.as_str()),
        Some(ProbeConfig::DEFAULT_PATH)
    );

    // "powerbi" names the cloud's Power BI resource.
    let config = parse_ok(&format!(
        "{MINIMAL}cloud = \"gcc\"\nresource = \"powerbi\"\n"
    ));
    assert_eq!(
        &*config.tenants[0].resource,
        "https://analysis.usgovcloudapi.net/powerbi/api"
    );
}

#[test]
fn fabric_mistakes_name_the_cloud_and_the_key() {
    // Fabric exists in the public cloud only.
    for cloud in ["gcc", "gcchigh", "dod", "china"] {
        let err = parse_err(&format!(
            "{MINIMAL}cloud = \"{cloud}\"\nresource = \"fabric\"\n"
        ));
        assert!(
            err.to_string().contains(&format!(
                "tenant \"contoso\": resource: \"fabric\" is not available in cloud \"{cloud}\""
            )),
            "{err}"
        );
    }
    let err = parse_err(&format!(
        "{MINIMAL}resource = \"fabric\"\nprobe = true\nfabric_api = \"http://api.example.com\"\npowerbi_api = \"https://api.powerbi.com\"\n\n[[tenant.embed]]\nname = \"sales\"\nreports = [\"{REPORT}\"]\nsinks = [ {{ type = \"file\", path = \"/tmp/t/{{name}}.{{embed}}.embed.json\" }} ]\n"
    ));
    let shown = err.to_string();
    for expected in [
        "tenant \"contoso\": fabric_api: \"http://api.example.com\" uses http",
        "tenant \"contoso\": powerbi_api: powerbi_api does not apply to this tenant, whose token is for the Fabric API",
        "tenant \"contoso\": embed: embed tokens come from Power BI's GenerateToken",
    ] {
        assert!(shown.contains(expected), "{expected}\n{shown}");
    }
    let err = parse_err(&format!(
        "{MINIMAL}probe = true\nfabric_api = \"https://api.fabric.microsoft.com\"\n"
    ));
    assert!(
        err.to_string().contains(
            "tenant \"contoso\": fabric_api: fabric_api does not apply to this tenant, whose token is for the Power BI API; fabric_api applies with resource = \"fabric\""
        ),
        "{err}"
    );
    // A generic OAuth2 server has no Fabric API either.
    let err = parse_err(
        "[[tenant]]\nname = \"x\"\nprovider = \"oauth2\"\ntoken_url = \"https://id.example.com/token\"\nclient_id = \"c\"\nclient_secret = { env = \"S\" }\nfabric_api = \"https://api.fabric.microsoft.com\"\nsinks = [ { type = \"file\", path = \"/tmp/t/x.json\" } ]\n",
    );
    assert!(
        err.to_string()
            .contains("fabric_api does not apply to provider = \"oauth2\""),
        "{err}"
    );
}
