//! The documentation checks itself: README.md, CHANGELOG.md and the book in docs/ (built with
//! `mdbook build docs`).
//!
//! * Every relative link resolves: the file exists (relative to the file that links to it) and
//!   a `#fragment` names a heading of the target (GitHub's and mdBook's anchors: lower case,
//!   spaces to `-`, punctuation other than `-` and `_` dropped, `-1`, `-2`… for repeats) or an
//!   explicit anchor (`<a id="…">`, `{#…}`). Absolute links (`https:`, `mailto:`) are not
//!   fetched. Every broken link is reported, with its file and line.
//! * Every chapter in docs/ is in the book's SUMMARY.md, and every SUMMARY.md entry exists.
//! * The configuration reference (docs/configuration.md) is complete and names nothing the
//!   parser refuses: for each section of the file the keys the parser accepts are read from the
//!   parser itself (a configuration with the unknown key `zzzz_unknown` in that section, and the
//!   list of expected keys in the error), and compared with the keys in the first column of the
//!   tables under that section's heading.
//!
//! # Adding a section to the configuration reference
//!
//! When the parser gets a new table (a new top-level section, or an inline table inside one):
//!
//! 1. give docs/configuration.md a heading for it, with a table right under it (before any
//!    other heading) whose first column is each key in backticks: `` | `key` | type | default |
//!    meaning | ``;
//! 2. add a [`Section`] to [`SECTIONS`]: its path, the heading's text as written after the `#`s,
//!    and a configuration that puts `zzzz_unknown` in that table (the rest of the configuration
//!    only needs to get the parser that far);
//! 3. if the parser reads a key of the table itself before serde sees the rest (a sink's
//!    `type`), list it in `consumed`.
//!
//! A key added to an existing table needs nothing here: the test finds it in the parser's list
//! and fails until the reference documents it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

mod markdown;

use markdown::{heading_text, link_targets, prose_lines, slug};

const REPO: &str = env!("CARGO_MANIFEST_DIR");

/// The key no section accepts, whose error lists the keys a section does accept.
const UNKNOWN: &str = "zzzz_unknown";

// ---------------------------------------------------------------------------------------------
// Links
// ---------------------------------------------------------------------------------------------

/// `{{#include path}}` lines of an mdBook chapter: the included file's path, relative to the
/// chapter.
fn includes(text: &str) -> Vec<(usize, String)> {
    text.lines()
        .enumerate()
        .filter_map(|(index, line)| {
            let inner = line
                .trim()
                .strip_prefix("{{#include ")?
                .strip_suffix("}}")?;
            // `file.md:anchor` and `file.md:2:10` include a part of the file.
            let path = inner.trim().split(':').next()?;
            Some((index + 1, path.to_owned()))
        })
        .collect()
}

/// Every anchor a Markdown file offers: its headings' (repeats numbered as GitHub and mdBook
/// number them), explicit `{#id}` heading attributes and HTML `id`/`name` attributes, and those
/// of the files it includes.
fn anchors(path: &Path) -> BTreeSet<String> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return BTreeSet::new();
    };
    let mut found = BTreeSet::new();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for (_, line) in prose_lines(&text) {
        if let Some(heading) = heading_text(line) {
            let (heading, explicit) = match heading.rsplit_once("{#") {
                Some((words, id)) if id.ends_with('}') => {
                    (words.trim_end(), Some(id.trim_end_matches('}').to_owned()))
                }
                _ => (heading, None),
            };
            found.extend(explicit);
            let base = slug(heading);
            let count = seen.entry(base.clone()).or_insert(0);
            found.insert(if *count == 0 {
                base
            } else {
                format!("{base}-{count}")
            });
            *count += 1;
        }
        for attribute in ["id=\"", "name=\""] {
            let mut rest = line;
            while let Some(at) = rest.find(attribute) {
                rest = &rest[at + attribute.len()..];
                if let Some(end) = rest.find('"') {
                    found.insert(rest[..end].to_owned());
                }
            }
        }
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    for (_, included) in includes(&text) {
        found.extend(anchors(&dir.join(included)));
    }
    found
}

/// Whether a link target leaves the repository (`https:`, `mailto:`…): not checked.
fn is_absolute(target: &str) -> bool {
    target.split_once(':').is_some_and(|(scheme, _)| {
        !scheme.is_empty()
            && scheme.starts_with(|c: char| c.is_ascii_alphabetic())
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
    })
}

/// What is wrong with a relative link from `from` to `target`, if anything.
fn broken(from: &Path, target: &str) -> Option<String> {
    let (file, fragment) = target.split_once('#').unwrap_or((target, ""));
    let resolved = if file.is_empty() {
        from.to_owned()
    } else {
        from.parent().unwrap_or(Path::new(".")).join(file)
    };
    if !resolved.exists() {
        return Some(format!("{} does not exist", resolved.display()));
    }
    // A fragment into a source file (GitHub's `#L10`) is not a heading.
    if fragment.is_empty() || resolved.extension().is_none_or(|ext| ext != "md") {
        return None;
    }
    (!anchors(&resolved).contains(fragment)).then(|| {
        format!(
            "{} has no heading or anchor #{fragment}",
            resolved.strip_prefix(REPO).unwrap_or(&resolved).display()
        )
    })
}

/// The Markdown files whose links are checked: README.md, CHANGELOG.md and the book.
fn documents() -> Vec<PathBuf> {
    fn walk(dir: &Path, found: &mut Vec<PathBuf>) {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
            .unwrap_or_else(|err| panic!("{}: {err}", dir.display()))
            .map(|entry| entry.expect("directory entry").path())
            .collect();
        entries.sort();
        for path in entries {
            if path.is_dir() {
                walk(&path, found);
            } else if path.extension().is_some_and(|ext| ext == "md") {
                found.push(path);
            }
        }
    }
    let repo = Path::new(REPO);
    let mut found = vec![repo.join("README.md"), repo.join("CHANGELOG.md")];
    walk(&repo.join("docs"), &mut found);
    found
}

/// Every broken relative link (and mdBook include) in `path`, as `file:line: target: why`.
fn broken_links(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|err| panic!("{path:?}: {err}"));
    let shown = path
        .strip_prefix(REPO)
        .unwrap_or(path)
        .display()
        .to_string();
    let mut problems = Vec::new();
    let mut targets: Vec<(usize, String)> = includes(&text);
    for (number, line) in prose_lines(&text) {
        targets.extend(
            link_targets(line)
                .into_iter()
                .map(|target| (number, target)),
        );
    }
    for (number, target) in targets {
        if target.is_empty() || is_absolute(&target) {
            continue;
        }
        if let Some(why) = broken(path, &target) {
            problems.push(format!("{shown}:{number}: {target}: {why}"));
        }
    }
    problems
}

#[test]
fn every_relative_link_resolves() {
    let documents = documents();
    assert!(
        documents.len() >= 5,
        "README, CHANGELOG and the book: {documents:?}"
    );
    let problems: Vec<String> = documents.iter().flat_map(|doc| broken_links(doc)).collect();
    assert!(
        problems.is_empty(),
        "{} broken link(s):\n{}",
        problems.len(),
        problems.join("\n")
    );
}

#[test]
fn the_link_check_finds_what_it_should() {
    let dir = tempfile::tempdir().expect("temp dir");
    let page = dir.path().join("page.md");
    std::fs::write(
        &page,
        "# Top\n\n## Shared store and fleet\n\n## Admin endpoints (`[server] listen`, default `127.0.0.1:9464`)\n\n\
         ## Metrics\n\n## Metrics\n\n<a id=\"custom\"></a>\n\n## With an id {#explicit}\n\n\
         ```sh\n# not a heading\n[in code](missing.md)\n```\n",
    )
    .expect("write page");
    std::fs::write(dir.path().join("other.md"), "# Other\n").expect("write other");
    let links = dir.path().join("links.md");
    std::fs::write(
        &links,
        "[ok](page.md#shared-store-and-fleet) [ok](page.md#admin-endpoints-server-listen-default-1270019464)\n\
         [ok](page.md#metrics-1) [ok](page.md#custom) [ok](page.md#explicit) [ok](#here)\n\
         [ok](https://example.com/missing.md) `[code](missing.md)` [ok](other.md)\n\
         # Here\n\
         [bad](missing.md) [bad](page.md#not-a-heading) [bad](page.md#metrics-2)\n\
         [label]: other.md#nowhere\n",
    )
    .expect("write links");
    let problems = broken_links(&links);
    let lines: Vec<&str> = problems
        .iter()
        .map(|problem| problem.split(": ").next().unwrap_or_default())
        .collect();
    assert_eq!(problems.len(), 4, "{problems:#?}");
    assert!(
        lines[..3].iter().all(|at| at.ends_with("links.md:5")),
        "{problems:#?}"
    );
    assert!(lines[3].ends_with("links.md:6"), "{problems:#?}");
    assert!(
        problems[0].contains("missing.md does not exist"),
        "{problems:#?}"
    );
    assert!(problems[1].contains("#not-a-heading"), "{problems:#?}");
    assert!(problems[2].contains("#metrics-2"), "{problems:#?}");
}

// ---------------------------------------------------------------------------------------------
// The book's table of contents
// ---------------------------------------------------------------------------------------------

#[test]
fn every_chapter_is_in_the_summary() {
    let docs = Path::new(REPO).join("docs");
    let summary = std::fs::read_to_string(docs.join("SUMMARY.md")).expect("docs/SUMMARY.md");
    let listed: BTreeSet<String> = prose_lines(&summary)
        .into_iter()
        .flat_map(|(_, line)| link_targets(line))
        .filter(|target| !target.is_empty())
        .collect();
    let chapters: BTreeSet<String> = documents()
        .into_iter()
        .filter_map(|path| path.strip_prefix(&docs).ok().map(Path::to_path_buf))
        .map(|path| path.display().to_string())
        .filter(|path| path != "SUMMARY.md")
        .collect();
    let unlisted: Vec<_> = chapters.difference(&listed).collect();
    let missing: Vec<_> = listed.difference(&chapters).collect();
    assert!(
        unlisted.is_empty() && missing.is_empty(),
        "chapters not in docs/SUMMARY.md: {unlisted:?}; SUMMARY.md entries without a file: {missing:?}"
    );
    assert!(listed.contains("runbook.md"), "{listed:?}");
}

// ---------------------------------------------------------------------------------------------
// The configuration reference
// ---------------------------------------------------------------------------------------------

/// One table of the configuration file, and where docs/configuration.md documents it.
struct Section {
    /// The table, for messages: `tenant.embed`, `sinks (file)`.
    path: &'static str,
    /// The text of its heading in docs/configuration.md, as written after the `#`s.
    heading: &'static str,
    /// A configuration with the key [`UNKNOWN`] in that table.
    config: &'static str,
    /// Keys of the table the parser reads before serde sees the rest, so serde's list leaves
    /// them out: a sink's `type`.
    consumed: &'static [&'static str],
    /// How the parser's keys for the table are found.
    keys: Keys,
}

/// How the test learns which keys the parser accepts in a table.
enum Keys {
    /// From the parser's refusal of [`UNKNOWN`], which lists them: the problem that names
    /// [`UNKNOWN`], or, for a table whose refusal leaves out what was written (it might be a
    /// secret), the one reported under `reported_as`.
    Listed { reported_as: Option<&'static str> },
    /// The table's refusal lists no keys, so each documented key is tried instead: `UNKNOWN =
    /// "x"` in the configuration is replaced by `key = value`, and the key is accepted when the
    /// configuration then parses. This cannot find a key the reference leaves out; every key
    /// the reference names needs a value here.
    Tried(&'static [(&'static str, &'static str)]),
}

impl Section {
    /// A table whose refusal of [`UNKNOWN`] names it and lists every key.
    const fn listed(path: &'static str, heading: &'static str, config: &'static str) -> Self {
        Section {
            path,
            heading,
            config,
            consumed: &[],
            keys: Keys::Listed { reported_as: None },
        }
    }
}

/// What the configurations of [`SECTIONS`] say in place of a key of the table.
const UNKNOWN_ENTRY: &str = "zzzz_unknown = \"x\"";

/// A tenant the parser accepts, for configurations whose unknown key is elsewhere.
macro_rules! tenant {
    () => {
        "[[tenant]]\nname = \"contoso\"\ntenant_id = \"contoso.onmicrosoft.com\"\n\
         client_id = \"00000000-0000-0000-0000-000000000000\"\n\
         client_secret = { env = \"SECRET\" }\n\
         sinks = [ { type = \"file\", path = \"/tmp/{name}.json\" } ]\n"
    };
}

const SECTIONS: &[Section] = &[
    Section::listed(
        "(top level)",
        "Sections",
        concat!("zzzz_unknown = 1\n", tenant!()),
    ),
    Section::listed(
        "server",
        "`[server]`",
        concat!("[server]\nzzzz_unknown = 1\n", tenant!()),
    ),
    Section::listed(
        "server.tls",
        "`[server.tls]`",
        concat!("[server.tls]\nzzzz_unknown = 1\n", tenant!()),
    ),
    Section::listed(
        "server.basic_auth",
        "`[server.basic_auth]`",
        concat!("[server.basic_auth]\nzzzz_unknown = 1\n", tenant!()),
    ),
    Section::listed(
        "daemon",
        "`[daemon]`",
        concat!("[daemon]\nzzzz_unknown = 1\n", tenant!()),
    ),
    Section::listed(
        "redis",
        "`[redis]`",
        concat!(
            "[redis]\nurl = \"redis://127.0.0.1:6379\"\nzzzz_unknown = 1\n",
            tenant!()
        ),
    ),
    Section::listed(
        "fleet",
        "`[fleet]`",
        concat!("[fleet]\nzzzz_unknown = 1\n", tenant!()),
    ),
    Section::listed(
        "key_vault",
        "`[key_vault]`",
        concat!(
            "[key_vault]\ncredential = \"managed_identity\"\nzzzz_unknown = 1\n",
            tenant!()
        ),
    ),
    Section::listed(
        "key_vault.identities",
        "`[key_vault.identities.<name>]`",
        concat!(
            "[key_vault]\ncredential = \"managed_identity\"\n\
             [key_vault.identities.partner]\ncredential = \"managed_identity\"\nzzzz_unknown = 1\n",
            tenant!()
        ),
    ),
    Section::listed(
        "defaults",
        "`[defaults]` and `[[tenant]]`",
        concat!("[defaults]\nzzzz_unknown = 1\n", tenant!()),
    ),
    Section::listed(
        "tenant",
        "`[defaults]` and `[[tenant]]`",
        concat!(tenant!(), "zzzz_unknown = 1\n"),
    ),
    Section {
        keys: Keys::Listed {
            reported_as: Some("defaults.client_secret"),
        },
        ..Section::listed(
            "client_secret",
            "Secret references",
            concat!(
                "[defaults]\nclient_secret = { zzzz_unknown = \"x\" }\n",
                tenant!()
            ),
        )
    },
    Section {
        // Its refusal shows only an example: the table may name a private key.
        keys: Keys::Tried(&[
            ("cert", "\"/tmp/app.crt\""),
            ("key", "\"/tmp/app.key\""),
            ("key_vault", "\"https://vault.vault.azure.net/secrets/app\""),
            ("algorithm", "\"rs256\""),
            ("send_x5c", "true"),
        ]),
        ..Section::listed(
            "client_certificate",
            "`client_certificate`",
            concat!(
                "[defaults]\nclient_certificate = { zzzz_unknown = \"x\" }\n",
                tenant!()
            ),
        )
    },
    Section::listed(
        "managed_identity",
        "`managed_identity`",
        "[[tenant]]\nname = \"own\"\ncredential = \"managed_identity\"\n\
         managed_identity = { zzzz_unknown = \"x\" }\n\
         sinks = [ { type = \"file\", path = \"/tmp/{name}.json\" } ]\n",
    ),
    Section::listed(
        "probe",
        "`probe`",
        concat!(tenant!(), "probe = { zzzz_unknown = \"x\" }\n"),
    ),
    Section {
        consumed: &["type"],
        ..Section::listed(
            "sinks (file)",
            "File sink",
            concat!(
                "[defaults]\nsinks = [ { type = \"file\", path = \"/tmp/x\", zzzz_unknown = 1 } ]\n",
                tenant!()
            ),
        )
    },
    Section {
        consumed: &["type"],
        ..Section::listed(
            "sinks (redis)",
            "Redis sink",
            concat!(
                "[defaults]\nsinks = [ { type = \"redis\", zzzz_unknown = 1 } ]\n",
                tenant!()
            ),
        )
    },
    Section::listed(
        "tenant.embed",
        "`[[tenant.embed]]`",
        concat!(
            tenant!(),
            "[[tenant.embed]]\nname = \"sales\"\nzzzz_unknown = 1\n"
        ),
    ),
    Section::listed(
        "tenant.embed.datasource_identities",
        "`datasource_identities`",
        concat!(
            tenant!(),
            "[[tenant.embed]]\nname = \"sales\"\n\
             datasource_identities = [ { identity_blob = { env = \"B\" }, zzzz_unknown = 1 } ]\n"
        ),
    ),
    Section::listed(
        "tenant.embed.datasource_identities.datasources",
        "`datasources`",
        concat!(
            tenant!(),
            "[[tenant.embed]]\nname = \"sales\"\n\
             datasource_identities = [ { identity_blob = { env = \"B\" }, \
             datasources = [ { datasource_type = \"Sql\", zzzz_unknown = 1 } ] } ]\n"
        ),
    ),
    Section::listed(
        "tenant.embed.identities",
        "`identities`",
        concat!(
            tenant!(),
            "[[tenant.embed]]\nname = \"sales\"\n\
             identities = [ { username = \"u\", zzzz_unknown = 1 } ]\n"
        ),
    ),
];

/// The names a parser message lists after "expected": serde's `` `a`, `b` `` list, or else the
/// keys of the inline tables it shows as examples (`{ interval = "15m", path = "…" }`).
fn expected_names(message: &str) -> Vec<String> {
    let Some((_, expected)) = message.split_once("expected") else {
        return Vec::new();
    };
    let quoted: Vec<String> = expected
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect();
    if !quoted.is_empty() {
        return quoted;
    }
    expected
        .split('{')
        .skip(1)
        .filter_map(|table| table.split('}').next())
        .flat_map(|table| table.split(','))
        .filter_map(|entry| entry.split_once('='))
        .map(|(key, _)| key.trim().to_owned())
        .filter(|key| !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
        .collect()
}

/// The keys the parser accepts in `section` (see [`Keys`]).
fn accepted_keys(section: &Section) -> BTreeSet<String> {
    let parse = |config: &str| powerbi_tokend::config::parse(config, Path::new("reference.toml"));
    let problems = match parse(section.config) {
        Ok(_) => panic!("{}: the parser accepted {UNKNOWN}", section.path),
        Err(err) => err.problems,
    };
    let consumed = section.consumed.iter().map(|key| (*key).to_owned());
    let reported_as = match section.keys {
        Keys::Tried(values) => {
            assert!(section.config.contains(UNKNOWN_ENTRY), "{}", section.path);
            return values
                .iter()
                .filter(|(key, value)| {
                    parse(
                        &section
                            .config
                            .replace(UNKNOWN_ENTRY, &format!("{key} = {value}")),
                    )
                    .is_ok()
                })
                .map(|(key, _)| (*key).to_owned())
                .chain(consumed)
                .collect();
        }
        Keys::Listed { reported_as } => reported_as,
    };
    let refusal = problems
        .iter()
        .find(|problem| match reported_as {
            Some(key) => problem.key.as_deref() == Some(key),
            None => {
                problem.message.contains(UNKNOWN)
                    || problem
                        .key
                        .as_deref()
                        .is_some_and(|key| key.contains(UNKNOWN))
            }
        })
        .unwrap_or_else(|| panic!("{}: no refusal of {UNKNOWN}: {problems:#?}", section.path));
    let keys: BTreeSet<String> = expected_names(&refusal.message)
        .into_iter()
        .chain(consumed)
        .collect();
    assert!(
        keys.len() > section.consumed.len(),
        "{}: no key list in {:?}",
        section.path,
        refusal.message
    );
    keys
}

/// The table rows under `heading` in `text` (up to the next heading), as their cells.
fn rows_under<'t>(text: &'t str, heading: &str) -> Option<Vec<Vec<&'t str>>> {
    let lines = prose_lines(text);
    let start = lines
        .iter()
        .position(|(_, line)| heading_text(line) == Some(heading))?;
    let rows = lines[start + 1..]
        .iter()
        .take_while(|(_, line)| heading_text(line).is_none())
        .filter_map(|(_, line)| line.trim().strip_prefix('|'))
        .map(|row| {
            row.trim_end_matches('|')
                .split(" | ")
                .map(str::trim)
                .collect()
        })
        .collect();
    Some(rows)
}

/// The key a row documents: its first cell, when that is one name in backticks.
fn row_key<'t>(row: &[&'t str]) -> Option<&'t str> {
    let key = row.first()?.strip_prefix('`')?.strip_suffix('`')?;
    (!key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')).then_some(key)
}

fn reference() -> String {
    std::fs::read_to_string(Path::new(REPO).join("docs/configuration.md"))
        .expect("docs/configuration.md")
}

#[test]
fn the_configuration_reference_documents_every_accepted_key() {
    let reference = reference();
    let mut problems = Vec::new();
    for section in SECTIONS {
        let accepted = accepted_keys(section);
        let Some(rows) = rows_under(&reference, section.heading) else {
            problems.push(format!(
                "{}: docs/configuration.md has no heading {:?}",
                section.path, section.heading
            ));
            continue;
        };
        let documented: BTreeSet<String> = rows
            .iter()
            .filter_map(|row| row_key(row))
            .map(str::to_owned)
            .collect();
        for key in accepted.difference(&documented) {
            problems.push(format!(
                "{}: `{key}` is accepted by the parser but not documented under {:?}",
                section.path, section.heading
            ));
        }
        for key in documented.difference(&accepted) {
            problems.push(format!(
                "{}: `{key}` is documented under {:?} but the parser refuses it (it accepts {accepted:?})",
                section.path, section.heading
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "docs/configuration.md and the parser disagree:\n{}",
        problems.join("\n")
    );
}

/// The reference's "in `[defaults]`" column says "no" exactly for keys the parser refuses in
/// `[defaults]`, which it checks after serde has accepted them.
#[test]
fn keys_only_a_tenant_may_set_are_refused_in_defaults() {
    // A value of the right type for each key the column may say "no" for.
    let values = BTreeMap::from([("name", "\"x\""), ("tenant_id", "\"x\""), ("embed", "[]")]);
    let reference = reference();
    let rows = rows_under(&reference, "`[defaults]` and `[[tenant]]`").expect("the tenant table");
    let column = rows
        .first()
        .and_then(|header| header.iter().position(|cell| *cell == "in `[defaults]`"))
        .expect("an \"in `[defaults]`\" column");
    let tenant_only: Vec<&str> = rows
        .iter()
        .filter(|row| row.get(column).is_some_and(|cell| cell.starts_with("no")))
        .filter_map(|row| row_key(row))
        .collect();
    assert!(tenant_only.contains(&"name"), "{tenant_only:?}");
    for key in tenant_only {
        let value = values
            .get(key)
            .unwrap_or_else(|| panic!("add a value for `{key}` to this test's table of values"));
        let config = format!("[defaults]\n{key} = {value}\n{}", tenant!());
        let err = powerbi_tokend::config::parse(&config, Path::new("defaults.toml"))
            .expect_err("a tenant-only key in [defaults]");
        assert!(
            err.problems.iter().any(|problem| {
                problem.key.as_deref() == Some(&format!("defaults.{key}"))
                    && problem.message.contains("belongs in a [[tenant]]")
            }),
            "`{key}` in [defaults]: {err}"
        );
    }
}

#[test]
fn expected_names_reads_both_kinds_of_list() {
    assert_eq!(
        expected_names("unknown field `zzzz_unknown`, expected one of `listen`, `watch_config`"),
        ["listen", "watch_config"]
    );
    assert_eq!(
        expected_names("unknown field `zzzz_unknown`, expected `key` or `format`"),
        ["key", "format"]
    );
    assert_eq!(
        expected_names(
            "unknown key \"zzzz_unknown\"; expected true, false or { interval = \"15m\", path = \"/v1.0/myorg/groups?$top=1\" }"
        ),
        ["interval", "path"]
    );
}
