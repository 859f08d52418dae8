//! deploy/prometheus/alerts.yml and docs/runbook.md belong together: every alert links its own
//! section of the runbook, from one documented base URL, and the runbook's table of contents
//! lists every alert.

use std::collections::BTreeSet;
use std::path::Path;

use yaml_rust2::YamlLoader;

mod markdown;

const REPO: &str = env!("CARGO_MANIFEST_DIR");
/// The base of every runbook_url, documented in alerts.yml's header and the README's Alerts
/// section.
const RUNBOOK_BASE: &str =
    "https://github.com/powerbi-tokend/powerbi-tokend/blob/main/docs/runbook.md";

fn read(relative: &str) -> String {
    std::fs::read_to_string(Path::new(REPO).join(relative))
        .unwrap_or_else(|err| panic!("{relative}: {err}"))
}

/// (alert name, runbook_url) of every alert in alerts.yml.
fn alerts() -> Vec<(String, String)> {
    let doc = YamlLoader::load_from_str(&read("deploy/prometheus/alerts.yml"))
        .unwrap()
        .remove(0);
    let mut alerts = Vec::new();
    for group in doc["groups"].as_vec().expect("groups") {
        for rule in group["rules"].as_vec().expect("rules") {
            let Some(name) = rule["alert"].as_str() else {
                continue;
            };
            let url = rule["annotations"]["runbook_url"]
                .as_str()
                .unwrap_or_else(|| panic!("{name} has no runbook_url"));
            alerts.push((name.to_owned(), url.to_owned()));
        }
    }
    assert!(alerts.len() >= 9, "{alerts:?}");
    alerts
}

/// The anchors of the runbook's headings, and the anchors its table of contents (everything
/// before the first `##` heading) links to.
fn runbook() -> (BTreeSet<String>, BTreeSet<String>) {
    let text = read("docs/runbook.md");
    let mut headings = BTreeSet::new();
    let mut toc = BTreeSet::new();
    let mut in_toc = true;
    for (_, line) in markdown::prose_lines(&text) {
        if let Some(heading) = line.strip_prefix("## ") {
            in_toc = false;
            headings.insert(markdown::slug(heading));
        } else if in_toc {
            for link in line.split("](#").skip(1) {
                toc.insert(link.split(')').next().unwrap().to_owned());
            }
        }
    }
    (headings, toc)
}

#[test]
fn every_alert_links_its_runbook_section_from_the_one_base() {
    let (headings, _) = runbook();
    for (name, url) in alerts() {
        let expected = format!("{RUNBOOK_BASE}#{}", name.to_lowercase());
        assert_eq!(url, expected, "runbook_url of {name}");
        assert!(
            headings.contains(&name.to_lowercase()),
            "docs/runbook.md has no heading `## {name}`"
        );
    }
}

#[test]
fn runbook_contents_list_every_alert_and_lead_to_headings() {
    let (headings, toc) = runbook();
    for (name, _) in alerts() {
        assert!(
            toc.contains(&name.to_lowercase()),
            "the runbook's table of contents does not list {name}"
        );
    }
    for link in &toc {
        assert!(
            headings.contains(link),
            "the contents link #{link}, no heading has it"
        );
    }
    // Every section is in the contents.
    for heading in &headings {
        assert!(
            toc.contains(heading),
            "the contents miss the section #{heading}"
        );
    }
}

#[test]
fn runbook_base_is_documented_where_it_is_changed() {
    for file in [
        "deploy/prometheus/alerts.yml",
        "docs/monitoring.md",
        "docs/runbook.md",
    ] {
        assert!(
            read(file).contains(RUNBOOK_BASE),
            "{file} does not name the runbook base"
        );
    }
}
