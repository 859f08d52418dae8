//! The Pod Security Standard "restricted" (which includes "baseline"), as a check of a pod spec:
//! each requirement on its own, so that a violation names it.

use yaml_rust2::Yaml;

use super::{containers, list, str_of};

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
pub fn restricted_violations(pod: &Yaml) -> Vec<String> {
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
fn the_restricted_check_finds_each_violation() {
    let bad = yaml_rust2::YamlLoader::load_from_str(
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
