//! Parsing whole files: defaults inheritance, every problem with its line, `[server]` and
//! `[daemon]`. Each other concept has a file of its own: credentials, generic OAuth2 and
//! inapplicable keys, Redis and the fleet, reading large files table by table, the Power BI
//! settings and Key Vault references.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::loader::parse_with_env;
use super::*;

mod credential;
mod key_vault;
mod oauth2;
mod powerbi;
mod redis;
mod split;

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
    assert_eq!(
        tenant.client_id.as_deref(),
        Some("00000000-0000-0000-0000-000000000001")
    );
    assert_eq!(&*tenant.authority_host, "https://login.microsoftonline.com");
    assert_eq!(
        &*tenant.resource,
        "https://analysis.windows.net/powerbi/api"
    );
    assert_eq!(tenant.api, ApiVersion::V2);
    assert_eq!(
        tenant.token_url().as_deref(),
        Some("https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token")
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
        tenant.token_url().as_deref(),
        Some("https://login.microsoftonline.us/contoso.onmicrosoft.com/oauth2/token")
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

#[test]
fn a_reload_reuses_the_running_copy_of_each_unchanged_tenant() {
    let tenants = |comment: &str, list: &[(&str, &str)]| {
        let mut text = MINIMAL[..MINIMAL.find("[[tenant]]").unwrap()].to_owned();
        text.push_str(comment);
        for (name, tenant_id) in list {
            text.push_str(&format!(
                "[[tenant]]\nname = \"{name}\"\ntenant_id = \"{tenant_id}\"\n\n"
            ));
        }
        text
    };
    let path = Path::new("/etc/powerbi-tokend/config.toml");
    let env = |key: &str| (key == "SECRET").then(|| "s".to_owned());
    let running = parse_ok(&tenants(
        "",
        &[
            ("a", "a.example.com"),
            ("b", "b.example.com"),
            ("c", "c.example.com"),
            ("e", "e.example.com"),
        ],
    ))
    .tenants;
    // `c` moves ahead of `a`, `b` gets another tenant ID, `e` keeps its place but not its line
    // (a comment above the tenants), `d` is new.
    let changed = tenants(
        "# two\n# lines\n",
        &[
            ("c", "c.example.com"),
            ("a", "a.example.com"),
            ("b", "b2.example.com"),
            ("e", "e.example.com"),
            ("d", "d.example.com"),
        ],
    );
    let reloaded = super::loader::parse_reusing(&changed, path, &env, &running)
        .unwrap()
        .tenants;
    let names: Vec<&str> = reloaded.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["c", "a", "b", "e", "d"]);
    assert!(std::sync::Arc::ptr_eq(&reloaded[0], &running[2]), "c");
    assert!(std::sync::Arc::ptr_eq(&reloaded[1], &running[0]), "a");
    assert!(
        !std::sync::Arc::ptr_eq(&reloaded[2], &running[1]),
        "b changed"
    );
    assert_eq!(reloaded[2].tenant_id.as_deref(), Some("b2.example.com"));
    assert!(std::sync::Arc::ptr_eq(&reloaded[3], &running[3]), "e");
    // The same file read afresh gives equal tenants: reuse changes identity, never content,
    // and a reused tenant keeps the line it had.
    let fresh = parse_env(&changed, &[("SECRET", "s")]).unwrap().tenants;
    assert_eq!(fresh, reloaded);
    assert_eq!(fresh[3].line, running[3].line.map(|line| line + 2));
    assert_eq!(reloaded[3].line, running[3].line);
}

/// The messages a first-time user meets: a misspelt key names the likely one (with its line),
/// a TOML syntax error its column too, a number where a duration goes the form to write, and a
/// missing file what to do instead.
#[test]
fn first_mistakes_get_hints() {
    let text = "[daemon]\nshutdown_grace = 5\nbackoff_min = 1.5\n\n[defaults]\nrefresh_att = 0.5\n\n[servr]\n";
    let shown = parse_err(text).to_string();
    for expected in [
        "config.toml:2: daemon.shutdown_grace: invalid type: integer `5`, expected a duration: a string with a unit, such as \"30s\", \"5m\" or \"1h\"",
        "config.toml:3: daemon.backoff_min: invalid type: floating point `1.5`, expected a duration: a string with a unit",
        "config.toml:6: defaults: unknown key `refresh_att`; did you mean `refresh_at`?",
        "config.toml:8: servr: unknown section; did you mean [server]?",
    ] {
        assert!(shown.contains(expected), "{expected:?} not in:\n{shown}");
    }
    let err = parse_err("[server]\nlisten = \"127.0.0.1:1\"\n[[tenant]]\nname = \"é\u{e9}x\n");
    assert_eq!(
        (err.problems[0].line, err.problems[0].column),
        (Some(4), Some(12)),
        "{err}"
    );
    assert!(
        err.to_string().contains("config.toml:4:12: not valid TOML"),
        "{err}"
    );

    let missing = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(super::read_text(std::path::Path::new(
            "/nonexistent/config.toml",
        )))
        .unwrap_err()
        .to_string();
    assert!(
        missing.contains("--config") && missing.contains("powerbi-tokend demo"),
        "{missing}"
    );
}

#[test]
fn server_tls_and_basic_auth_are_read_with_their_lines() {
    let hash = "$2b$10$Jd8I.ZesW6x/yyvkD0XYG.JXnboa6ao4pFnV/frdSBqnZjZcGxlb6";
    let text = format!(
        "[server]\nlisten = \"0.0.0.0:9464\"\n[server.tls]\ncert_file = \"admin.crt\"\nkey_file = \"/etc/keys/admin.key\"\n[server.basic_auth]\nusers = {{ prometheus = \"{hash}\" }}\nhealthz_open = true\n{MINIMAL}"
    );
    let config = parse_ok(&text);
    let tls = config.server.tls.as_ref().unwrap();
    assert_eq!(
        tls.cert_file,
        Path::new("/etc/powerbi-tokend/admin.crt"),
        "relative to the config file"
    );
    assert_eq!(tls.key_file, Path::new("/etc/keys/admin.key"));
    assert_eq!(tls.lines, [Some(4), Some(5)]);
    let auth = config.server.basic_auth.as_ref().unwrap();
    assert_eq!(auth.users["prometheus"], hash);
    assert!(auth.healthz_open);
    assert!(
        !format!("{config:?}").contains(hash),
        "Debug names users only"
    );
    assert!(config.server.warnings().is_empty(), "TLS is on");
    assert_eq!(parse_ok(MINIMAL).server.tls, None);

    let text = format!(
        "[server]\nlisten = \"0.0.0.0:9464\"\n[server.basic_auth]\nusers = {{ prometheus = \"{hash}\" }}\n{MINIMAL}"
    );
    let config = parse_ok(&text);
    assert!(!config.server.basic_auth.as_ref().unwrap().healthz_open);
    let warnings = config.server.warnings();
    assert!(warnings[0].contains("clear text"), "{warnings:?}");
    let loopback = text.replace("0.0.0.0", "127.0.0.1");
    assert!(parse_ok(&loopback).server.warnings().is_empty());

    let text = format!(
        "[server.tls]\ncert_file = \"admin.crt\"\n[server.basic_auth]\nusers = {{ prometheus = \"hunter2\", \"a:b\" = \"{hash}\" }}\n{MINIMAL}"
    );
    let shown = parse_err(&text).to_string();
    for expected in [
        ":1: server.tls.key_file: missing",
        ":4: server.basic_auth.users.a:b: a user name cannot hold ':'",
        ":4: server.basic_auth.users.prometheus: expected a bcrypt hash",
    ] {
        assert!(shown.contains(expected), "{expected} in:\n{shown}");
    }
    assert!(!shown.contains("hunter2"), "{shown}");
    let shown = parse_err(&format!("[server.basic_auth]\nusers = {{}}\n{MINIMAL}")).to_string();
    assert!(
        shown.contains(":1: server.basic_auth.users: missing"),
        "{shown}"
    );
    let shown = parse_err(&format!("[server.tls]\ncert = \"x\"\n{MINIMAL}")).to_string();
    assert!(shown.contains("unknown field `cert`"), "{shown}");
}
