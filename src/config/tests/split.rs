//! Large files read one `[[tenant]]` table at a time, and the files that must be read whole.

use super::*;

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

/// A tenant read table by table reports a problem with a key it inherits on the line of that key
/// in `[defaults]`, as reading the whole file does, and so does the credential `check` reads.
#[test]
fn an_inherited_key_is_blamed_on_its_line_in_defaults_read_either_way() {
    let text = r#"[defaults]
client_id = ""
client_secret = { file = "/no/such/secret" }
client_secret_expires = "2020-01-01"
schedule = "0 0 25 * * *"
sinks = [ { type = "file", path = "/t/{name}.json" } ]

[[tenant]]
name = "first"
tenant_id = "first.example.com"

[[tenant]]
name = "second"
tenant_id = "second.example.com"
client_id = "00000000-0000-0000-0000-000000000001"
schedule = "0 0 * * * *"
"#;
    assert!(super::loader::split_tenants(text).is_some());
    let path = Path::new("/etc/powerbi-tokend/config.toml");
    let read = |text: &str| super::loader::parse_collecting(text, path, &|_| None);
    let (split, split_credentials) = read(text);
    let (whole, whole_credentials) = read(&format!("{text}# '''\n"));
    let lines = |problems: &[Problem]| -> Vec<(Option<usize>, Option<String>)> {
        problems
            .iter()
            .map(|problem| (problem.line, problem.key.clone()))
            .collect()
    };
    let expected = [
        (Some(2), Some("tenant \"first\": client_id".to_owned())),
        (Some(5), Some("tenant \"first\": schedule".to_owned())),
    ];
    assert_eq!(lines(&split.unwrap_err().problems), expected);
    assert_eq!(lines(&whole.unwrap_err().problems), expected);
    for credentials in [split_credentials, whole_credentials] {
        let lines: Vec<_> = credentials
            .iter()
            .map(|c| (c.tenant.as_str(), c.line, c.expires_line))
            .collect();
        assert_eq!(
            lines,
            [("first", Some(3), Some(4)), ("second", Some(3), Some(4))]
        );
    }
}
