//! The Kubernetes manifests in deploy/kubernetes and deploy/kubernetes-examples, and the
//! Dockerfile: the PrometheusRule carries
//! exactly the groups of deploy/prometheus/alerts.yml, the kustomizations list every manifest,
//! every shipped config.toml is valid and fits the pod that mounts it, every pod template meets
//! the Pod Security Standard "restricted", and (with kubernetes-validate installed) every
//! manifest passes the Kubernetes API schemas of the two newest Kubernetes versions it knows.
//!
//! `UPDATE_MANIFESTS=1 cargo test --test kubernetes` rewrites deploy/kubernetes/prometheusrule.yaml
//! from alerts.yml.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use powerbi_tokend::config::{CredentialConfig, SecretSource, SinkConfig};
use yaml_rust2::{Yaml, YamlLoader};

const REPO: &str = env!("CARGO_MANIFEST_DIR");
const BASE: &str = "deploy/kubernetes";
const EXAMPLES: &str = "deploy/kubernetes-examples";
const ALERTS: &str = "deploy/prometheus/alerts.yml";
const PROMETHEUS_RULE: &str = "deploy/kubernetes/prometheusrule.yaml";
/// Kinds defined by CustomResourceDefinitions (the Prometheus Operator's), which have no schema
/// among the built-in API types.
const CUSTOM_KINDS: [&str; 2] = ["ServiceMonitor", "PrometheusRule"];

fn read(relative: &str) -> String {
    std::fs::read_to_string(Path::new(REPO).join(relative))
        .unwrap_or_else(|err| panic!("{relative}: {err}"))
}

/// The YAML documents of a file, empty ones left out.
fn documents(relative: &str) -> Vec<Yaml> {
    YamlLoader::load_from_str(&read(relative))
        .unwrap_or_else(|err| panic!("{relative}: {err}"))
        .into_iter()
        .filter(|doc| !doc.is_null())
        .collect()
}

/// Every `.yaml` file under `dir` (relative to the repository), sorted.
fn yaml_files(dir: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut pending = vec![PathBuf::from(dir)];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(Path::new(REPO).join(&dir)).unwrap() {
            let entry = entry.unwrap();
            let relative = dir.join(entry.file_name());
            if entry.file_type().unwrap().is_dir() {
                pending.push(relative);
            } else if relative
                .extension()
                .is_some_and(|e| e == "yaml" || e == "yml")
            {
                found.push(relative.to_str().unwrap().to_owned());
            }
        }
    }
    found.sort();
    found
}

fn is_kustomization(file: &str) -> bool {
    file.ends_with("/kustomization.yaml")
}

/// Every Kubernetes manifest: the YAML files of the base and the examples but the
/// kustomizations.
fn manifest_files() -> Vec<String> {
    yaml_files(BASE)
        .into_iter()
        .chain(yaml_files(EXAMPLES))
        .filter(|file| !is_kustomization(file))
        .collect()
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

// ---------------------------------------------------------------------------------------------
// The PrometheusRule

/// deploy/kubernetes/prometheusrule.yaml as generated from alerts.yml: a header, then
/// alerts.yml from its `groups:` line on, indented under `spec:` (comments included).
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
         # release>`) and by namespace: add the label it expects, e.g. with `labels` in kustomization.yaml.\n\
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
    let alerts = documents(ALERTS);
    let groups = &alerts[0]["groups"];
    assert!(!list(groups).is_empty(), "{ALERTS} has no groups");
    assert!(
        rule["spec"]["groups"] == *groups,
        "the PrometheusRule's groups differ from {ALERTS}"
    );
}

// ---------------------------------------------------------------------------------------------
// Kustomizations, and the objects they produce

/// The keys of kustomization.yaml that [`build`] understands.
const KUSTOMIZATION_KEYS: [&str; 5] = ["apiVersion", "kind", "resources", "patches", "replicas"];

/// The objects `kubectl apply -k <dir>` creates, for the kustomize features these
/// kustomizations use: resources (files and directories), patches that replace a ConfigMap's
/// data, and replica counts.
fn build(dir: &str) -> Vec<Yaml> {
    let file = format!("{dir}/kustomization.yaml");
    let kustomization = documents(&file).remove(0);
    for k in kustomization.as_hash().unwrap().keys() {
        assert!(
            KUSTOMIZATION_KEYS.contains(&str_of(k, "key")),
            "{file}: {k:?} is not understood by this test's kustomize"
        );
    }
    let mut objects = Vec::new();
    for resource in list(&kustomization["resources"]) {
        let resource = str_of(resource, "resources[]");
        let path = normalise(&format!("{dir}/{resource}"));
        if Path::new(REPO).join(&path).is_dir() {
            objects.extend(build(&path));
        } else {
            objects.extend(documents(&path));
        }
    }
    for patch in list(&kustomization["patches"]) {
        let path = format!("{dir}/{}", str_of(&patch["path"], "patches[].path"));
        for patch in documents(&path) {
            assert_eq!(
                kind(&patch),
                "ConfigMap",
                "{path}: only ConfigMaps are patched"
            );
            let target = objects
                .iter_mut()
                .find(|o| kind(o) == "ConfigMap" && name(o) == name(&patch))
                .unwrap_or_else(|| panic!("{path}: no ConfigMap {} to patch", name(&patch)));
            let Yaml::Hash(target) = target else {
                unreachable!()
            };
            target.insert(key("data"), patch["data"].clone());
        }
    }
    for replicas in list(&kustomization["replicas"]) {
        let target = objects
            .iter_mut()
            .find(|o| kind(o) == "Deployment" && name(o) == str_of(&replicas["name"], "name"))
            .expect("replicas: no such Deployment");
        let Yaml::Hash(spec) = &mut target["spec"] else {
            unreachable!()
        };
        spec.insert(key("replicas"), replicas["count"].clone());
    }
    objects
}

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

/// Every kustomization: deploy/kubernetes and each example.
fn kustomizations() -> Vec<String> {
    yaml_files(BASE)
        .into_iter()
        .chain(yaml_files(EXAMPLES))
        .filter(|file| is_kustomization(file))
        .map(|file| file.trim_end_matches("/kustomization.yaml").to_owned())
        .collect()
}

#[test]
fn kustomizations_use_every_manifest_and_the_base_only_its_own() {
    let dirs = kustomizations();
    assert!(dirs.contains(&BASE.to_owned()), "{dirs:?}");
    assert!(dirs.len() >= 3, "the base and two examples: {dirs:?}");
    for dir in &dirs {
        let kustomization = documents(&format!("{dir}/kustomization.yaml")).remove(0);
        let mut used = BTreeSet::new();
        for entry in list(&kustomization["resources"])
            .iter()
            .chain(list(&kustomization["patches"]).iter().map(|p| &p["path"]))
        {
            let entry = str_of(entry, "resource");
            let path = normalise(&format!("{dir}/{entry}"));
            let full = Path::new(REPO).join(&path);
            assert!(
                full.is_file() || full.join("kustomization.yaml").is_file(),
                "{dir}/kustomization.yaml: {entry} does not exist"
            );
            if dir == BASE {
                assert!(!entry.contains('/'), "the base includes {entry}");
            }
            used.insert(path);
        }
        // Every manifest of the directory is used.
        for file in std::fs::read_dir(Path::new(REPO).join(dir)).unwrap() {
            let file = file.unwrap().file_name().into_string().unwrap();
            if file.ends_with(".yaml") && file != "kustomization.yaml" {
                assert!(
                    used.contains(&format!("{dir}/{file}")),
                    "{dir}/kustomization.yaml does not use {file}"
                );
            }
        }
        // And it builds.
        assert!(!build(dir).is_empty());
    }
}

/// The pod templates of the workload objects among `objects`, with a name for messages.
fn pod_templates(objects: &[Yaml]) -> Vec<(String, &Yaml)> {
    let mut templates = Vec::new();
    for object in objects {
        let spec = match kind(object) {
            "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "Job" => {
                &object["spec"]["template"]["spec"]
            }
            "CronJob" => &object["spec"]["jobTemplate"]["spec"]["template"]["spec"],
            "Pod" => &object["spec"],
            _ => continue,
        };
        templates.push((format!("{}/{}", kind(object), name(object)), spec));
    }
    templates
}

fn containers(pod: &Yaml) -> impl Iterator<Item = &Yaml> {
    list(&pod["initContainers"])
        .iter()
        .chain(list(&pod["containers"]))
        .chain(list(&pod["ephemeralContainers"]))
}

/// The containers that run powerbi-tokend: those started with `run --config <file>`.
fn daemon_config_path(container: &Yaml) -> Option<String> {
    let args: Vec<&str> = list(&container["args"])
        .iter()
        .filter_map(Yaml::as_str)
        .collect();
    let at = args.iter().position(|a| *a == "--config")?;
    (args.first() == Some(&"run")).then(|| args[at + 1].to_owned())
}

fn is_under(path: &Path, dir: &str) -> bool {
    path.starts_with(dir)
}

#[test]
fn every_config_toml_is_valid_and_fits_its_pod() {
    let mut checked = 0;
    for dir in kustomizations() {
        let objects = build(&dir);
        let config_maps: BTreeMap<&str, &Yaml> = objects
            .iter()
            .filter(|o| kind(o) == "ConfigMap")
            .map(|o| (name(o), o))
            .collect();
        for (template, pod) in pod_templates(&objects) {
            let volumes: BTreeMap<&str, &Yaml> = list(&pod["volumes"])
                .iter()
                .map(|v| (str_of(&v["name"], "volume name"), v))
                .collect();
            for container in containers(pod) {
                let Some(config_path) = daemon_config_path(container) else {
                    continue;
                };
                let what = format!("{dir}: {template}, container {:?}", container["name"]);
                let mounts: Vec<(&str, &str, bool)> = list(&container["volumeMounts"])
                    .iter()
                    .map(|m| {
                        (
                            str_of(&m["mountPath"], "mountPath"),
                            str_of(&m["name"], "mount name"),
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
                    &volumes[volume]["configMap"]["name"],
                    "the config volume's ConfigMap",
                );
                let text = str_of(
                    &config_maps[config_map]["data"]
                        [config_path.file_name().unwrap().to_str().unwrap()],
                    "the config file in the ConfigMap",
                );
                let config = powerbi_tokend::config::parse(text, config_path)
                    .unwrap_or_else(|err| panic!("{what}: ConfigMap {config_map}: {err}"));

                // Reachable by the probes and Prometheus, on the port the pod declares.
                assert!(config.server.listen.ip().is_unspecified(), "{what}: listen");
                let ports: Vec<i64> = list(&container["ports"])
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

                // Every file it writes is on a writable volume, every file it reads on a mounted
                // one.
                let writable = |path: &Path| {
                    mounts
                        .iter()
                        .any(|(dir, _, read_only)| !read_only && is_under(path, dir))
                };
                let mounted = |path: &Path| mounts.iter().any(|(dir, _, _)| is_under(path, dir));
                for tenant in &config.tenants {
                    for sink in &tenant.sinks {
                        if let SinkConfig::File(file) = sink {
                            assert!(writable(&file.path), "{what}: sink {:?}", file.path);
                        }
                    }
                    if let CredentialConfig::ClientSecret {
                        source: SecretSource::File(file),
                        ..
                    } = &tenant.credential
                    {
                        assert!(mounted(file), "{what}: secret {file:?}");
                    }
                }
                if let Some(SecretSource::File(file)) =
                    config.redis.as_ref().and_then(|r| r.password.as_ref())
                {
                    assert!(mounted(file), "{what}: Redis password {file:?}");
                }
                checked += 1;
            }
        }
    }
    assert!(checked >= 3, "daemon containers checked: {checked}");
}

#[test]
fn service_monitor_scrapes_the_admin_port_of_the_service() {
    let objects = build(BASE);
    let find = |k: &str| {
        objects
            .iter()
            .find(|o| kind(o) == k)
            .unwrap_or_else(|| panic!("no {k} in {BASE}"))
    };
    let (service, monitor, deployment) =
        (find("Service"), find("ServiceMonitor"), find("Deployment"));
    assert_eq!(
        monitor["apiVersion"].as_str(),
        Some("monitoring.coreos.com/v1")
    );
    // The ServiceMonitor selects the Service, and the Service the Deployment's pods.
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
    // It scrapes /metrics on a port the Service has, which leads to the container's admin port.
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

// ---------------------------------------------------------------------------------------------
// Pod Security Standard "restricted"

/// Volume types the restricted profile allows.
const RESTRICTED_VOLUME_TYPES: [&str; 8] = [
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
];

/// Sysctls the baseline profile allows (restricted includes baseline).
const SAFE_SYSCTLS: [&str; 9] = [
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
];

/// Every violation of the Pod Security Standard "restricted" (which includes "baseline") in a
/// pod spec, as listed in https://kubernetes.io/docs/concepts/security/pod-security-standards/
/// (policy version "latest"). Each requirement is checked on its own, so a violation names it.
fn restricted_violations(pod: &Yaml) -> Vec<String> {
    let mut found = Vec::new();
    let pod_sc = &pod["securityContext"];
    let is_true = |y: &Yaml| y.as_bool() == Some(true);

    // Baseline: host namespaces.
    for field in ["hostNetwork", "hostPID", "hostIPC"] {
        if is_true(&pod[field]) {
            found.push(format!("host namespaces: {field} is true"));
        }
    }
    // Baseline: HostProcess (Windows).
    if is_true(&pod_sc["windowsOptions"]["hostProcess"]) {
        found.push("HostProcess: pod windowsOptions.hostProcess".to_owned());
    }
    // Restricted: volume types (which rules out hostPath, baseline's own requirement).
    for volume in list(&pod["volumes"]) {
        let types: Vec<&str> = volume
            .as_hash()
            .unwrap()
            .keys()
            .filter_map(Yaml::as_str)
            .filter(|k| *k != "name")
            .collect();
        if types.len() != 1 || !RESTRICTED_VOLUME_TYPES.contains(&types[0]) {
            found.push(format!("volume types: {:?} is {types:?}", volume["name"]));
        }
    }
    // Baseline: sysctls.
    for sysctl in list(&pod_sc["sysctls"]) {
        let name = str_of(&sysctl["name"], "sysctl");
        if !SAFE_SYSCTLS.contains(&name) {
            found.push(format!("sysctls: {name}"));
        }
    }
    // Baseline: AppArmor, pod level.
    check_app_armor(&pod_sc["appArmorProfile"], "pod", &mut found);
    // Baseline: SELinux, pod level.
    check_se_linux(&pod_sc["seLinuxOptions"], "pod", &mut found);
    // Restricted: running as non-root user: runAsUser is never 0.
    if pod_sc["runAsUser"].as_i64() == Some(0) {
        found.push("running as non-root user: pod runAsUser is 0".to_owned());
    }
    // Baseline/restricted: seccomp. The pod's profile, if set, must be RuntimeDefault or
    // Localhost; a container without one of its own needs the pod's.
    let seccomp_ok = |sc: &Yaml| {
        matches!(
            sc["seccompProfile"]["type"].as_str(),
            Some("RuntimeDefault" | "Localhost")
        )
    };
    if !pod_sc["seccompProfile"].is_badvalue() && !seccomp_ok(pod_sc) {
        found.push("seccomp: pod profile is not RuntimeDefault or Localhost".to_owned());
    }

    for container in containers(pod) {
        let c = format!(
            "container {:?}",
            str_of(&container["name"], "container name")
        );
        let sc = &container["securityContext"];
        // Baseline: privileged containers.
        if is_true(&sc["privileged"]) {
            found.push(format!("privileged containers: {c}"));
        }
        // Baseline: HostProcess.
        if is_true(&sc["windowsOptions"]["hostProcess"]) {
            found.push(format!("HostProcess: {c}"));
        }
        // Baseline: host ports.
        for port in list(&container["ports"]) {
            if port["hostPort"].as_i64().unwrap_or(0) != 0 {
                found.push(format!("host ports: {c} uses hostPort"));
            }
        }
        // Baseline: /proc mount type.
        if let Some(proc_mount) = sc["procMount"].as_str()
            && proc_mount != "Default"
        {
            found.push(format!("/proc mount type: {c} has {proc_mount}"));
        }
        check_app_armor(&sc["appArmorProfile"], &c, &mut found);
        check_se_linux(&sc["seLinuxOptions"], &c, &mut found);
        // Restricted: privilege escalation must be disallowed explicitly.
        if sc["allowPrivilegeEscalation"].as_bool() != Some(false) {
            found.push(format!(
                "privilege escalation: {c} lacks allowPrivilegeEscalation: false"
            ));
        }
        // Restricted: running as non-root, on the container or inherited from the pod.
        let non_root = match sc["runAsNonRoot"].as_bool() {
            Some(value) => value,
            None => is_true(&pod_sc["runAsNonRoot"]),
        };
        if !non_root {
            found.push(format!(
                "running as non-root: {c} without runAsNonRoot: true"
            ));
        }
        // Restricted: running as non-root user.
        if sc["runAsUser"].as_i64() == Some(0) {
            found.push(format!("running as non-root user: {c} runAsUser is 0"));
        }
        // Restricted: seccomp, on the container or inherited from the pod.
        let container_profile = !sc["seccompProfile"].is_badvalue();
        if (container_profile && !seccomp_ok(sc)) || (!container_profile && !seccomp_ok(pod_sc)) {
            found.push(format!(
                "seccomp: {c} has no RuntimeDefault or Localhost profile"
            ));
        }
        // Restricted: capabilities: drop ALL, add nothing but NET_BIND_SERVICE.
        let drop: Vec<&str> = list(&sc["capabilities"]["drop"])
            .iter()
            .filter_map(Yaml::as_str)
            .collect();
        if !drop.contains(&"ALL") {
            found.push(format!("capabilities: {c} does not drop ALL"));
        }
        for add in list(&sc["capabilities"]["add"]) {
            if add.as_str() != Some("NET_BIND_SERVICE") {
                found.push(format!("capabilities: {c} adds {add:?}"));
            }
        }
    }
    found
}

fn check_app_armor(profile: &Yaml, what: &str, found: &mut Vec<String>) {
    if let Some(kind) = profile["type"].as_str()
        && kind != "RuntimeDefault"
        && kind != "Localhost"
    {
        found.push(format!("AppArmor: {what} profile {kind}"));
    }
}

fn check_se_linux(options: &Yaml, what: &str, found: &mut Vec<String>) {
    if let Some(kind) = options["type"].as_str()
        && ![
            "container_t",
            "container_init_t",
            "container_kvm_t",
            "container_engine_t",
        ]
        .contains(&kind)
    {
        found.push(format!("SELinux: {what} type {kind}"));
    }
    for field in ["user", "role"] {
        if !options[field].is_badvalue() {
            found.push(format!("SELinux: {what} sets {field}"));
        }
    }
}

#[test]
fn every_pod_template_meets_the_restricted_pod_security_standard() {
    let mut checked = BTreeSet::new();
    for dir in kustomizations() {
        let objects = build(&dir);
        for (template, pod) in pod_templates(&objects) {
            let violations = restricted_violations(pod);
            assert!(
                violations.is_empty(),
                "{dir}: {template} violates the restricted Pod Security Standard:\n  {}",
                violations.join("\n  ")
            );
            checked.insert(format!("{dir}: {template}"));
        }
    }
    // The daemon's Deployment, the sidecar example's and the Redis example's consumer.
    assert!(checked.len() >= 4, "{checked:?}");

    // The check itself finds what it should.
    let bad = YamlLoader::load_from_str(
        "hostNetwork: true\n\
         securityContext: { seccompProfile: { type: Unconfined } }\n\
         volumes: [ { name: host, hostPath: { path: / } } ]\n\
         containers:\n\
         - name: app\n  \
           ports: [ { containerPort: 80, hostPort: 80 } ]\n  \
           securityContext: { privileged: true, runAsUser: 0, capabilities: { add: [SYS_ADMIN] } }\n",
    )
    .unwrap()
    .remove(0);
    let found = restricted_violations(&bad).join("\n");
    for requirement in [
        "host namespaces",
        "volume types",
        "seccomp: pod",
        "privileged containers",
        "host ports",
        "privilege escalation",
        "running as non-root:",
        "running as non-root user",
        "seccomp: container",
        "capabilities: container \"app\" does not drop ALL",
        "capabilities: container \"app\" adds",
    ] {
        assert!(
            found.contains(requirement),
            "{requirement} not found in:\n{found}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The Dockerfile

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
    let ignored = read(".dockerignore");
    for entry in ["target", ".git", "tests/oauth2-mock-server/node_modules"] {
        assert!(
            ignored.lines().any(|l| l.trim_matches('/') == entry),
            ".dockerignore: {entry}"
        );
    }
    // The pods run the image's user, and the base Deployment its default config path.
    for dir in kustomizations() {
        for (template, pod) in pod_templates(&build(&dir)) {
            for container in containers(pod) {
                if daemon_config_path(container).is_some() {
                    let user = container["securityContext"]["runAsUser"]
                        .as_i64()
                        .or(pod["securityContext"]["runAsUser"].as_i64());
                    assert_eq!(user, Some(65532), "{dir}: {template}");
                    assert_eq!(
                        daemon_config_path(container).as_deref(),
                        Some("/etc/powerbi-tokend/config.toml"),
                        "{dir}: {template}"
                    );
                }
            }
        }
    }
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
    not(has_kubernetes_validate),
    ignore = "skipped: needs kubernetes-validate (pip install kubernetes-validate)"
)]
fn manifests_pass_kubernetes_validate_strict() {
    let validate =
        common::program_installed_by("kubernetes-validate", "pip install kubernetes-validate");
    let versions = newest_kubernetes_versions(&validate);
    let files = manifest_files();
    assert!(files.len() >= 10, "{files:?}");
    let mut custom = 0;
    for file in &files {
        let out = Command::new(&validate)
            .arg("--strict")
            .args(versions.iter().flat_map(|v| ["-k", v.as_str()]))
            .arg(file)
            .current_dir(REPO)
            .output()
            .unwrap();
        let report = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "kubernetes-validate {file}:\n{report}"
        );
        let mut expected = Vec::new();
        for object in documents(file) {
            let kind = kind(&object);
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
                        name(&object)
                    )
                });
            }
        }
        let lines: BTreeSet<&str> = report.lines().map(str::trim).collect();
        let expected: BTreeSet<&str> = expected.iter().map(String::as_str).collect();
        assert_eq!(lines, expected, "kubernetes-validate {file}");
    }
    // Both versions, ServiceMonitor and PrometheusRule.
    assert_eq!(custom, 4);
}
