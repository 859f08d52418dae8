//! deploy/systemd: the unit passes `systemd-analyze verify` and `security`, its pieces agree with
//! each other, and install.sh leaves a tree the service's user can run from.

mod common;

use common::*;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use powerbi_tokend_sim::SimEntra;

const BIN: &str = env!("CARGO_BIN_EXE_powerbi-tokend");
const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/systemd");
const INSTALLED_BIN: &str = "/usr/local/bin/powerbi-tokend";
/// `systemd-analyze security` rates exposure from 0 (best) to 10; the unit must stay at or below.
const MAX_EXPOSURE: f64 = 1.5;

fn unit() -> String {
    std::fs::read_to_string(Path::new(DIR).join("powerbi-tokend.service")).unwrap()
}

/// The values of `key=` in the unit, in order (comments skipped).
fn unit_values(unit: &str, key: &str) -> Vec<String> {
    unit.lines()
        .filter_map(|line| line.strip_prefix(key)?.strip_prefix('='))
        .map(str::to_owned)
        .collect()
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// The unit with its ExecStart= binary replaced by `bin`, in a directory of its own: `verify`
/// insists that the binaries a unit runs exist.
fn unit_running(bin: &Path) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let unit = unit();
    assert!(unit.contains(INSTALLED_BIN));
    std::fs::write(
        dir.path().join("powerbi-tokend.service"),
        unit.replace(INSTALLED_BIN, &bin.display().to_string()),
    )
    .unwrap();
    dir
}

#[test]
#[cfg_attr(
    not(has_systemd_analyze),
    ignore = "skipped: needs systemd-analyze (Debian package systemd)"
)]
fn unit_verifies_cleanly_and_its_exposure_is_at_most_1_5() {
    let analyze = program("systemd-analyze", "systemd");
    let dir = unit_running(Path::new(BIN));
    let unit = dir.path().join("powerbi-tokend.service");

    // Unknown keys and bad values are only warnings to verify (exit 0): any output fails.
    let out = Command::new(&analyze)
        .arg("verify")
        .arg(&unit)
        .output()
        .unwrap();
    assert!(out.status.success(), "verify:\n{}", text(&out));
    assert_eq!(text(&out), "", "verify is not clean");

    let out = Command::new(&analyze)
        .args(["security", "--offline=true", "--no-pager"])
        .arg(format!("--threshold={}", (MAX_EXPOSURE * 10.0) as u32))
        .arg(&unit)
        .output()
        .unwrap();
    let report = text(&out);
    let line = report
        .lines()
        .find(|line| line.contains("Overall exposure level for powerbi-tokend.service:"))
        .unwrap_or_else(|| panic!("no overall exposure in:\n{report}"));
    let exposure: f64 = line
        .rsplit(':')
        .next()
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|number| number.parse().ok())
        .unwrap_or_else(|| panic!("cannot read the exposure in {line:?}"));
    assert!(
        exposure <= MAX_EXPOSURE && out.status.success(),
        "exposure {exposure} > {MAX_EXPOSURE}:\n{report}"
    );
}

#[test]
fn unit_config_and_group_agree() {
    let unit = unit();
    let config = std::fs::read_to_string(Path::new(DIR).join("config.toml")).unwrap();
    let sysusers = std::fs::read_to_string(Path::new(DIR).join("powerbi-tokend.sysusers")).unwrap();
    let install = std::fs::read_to_string(Path::new(DIR).join("install.sh")).unwrap();

    assert_eq!(unit_values(&unit, "Type"), ["notify"]);
    assert_eq!(
        unit_values(&unit, "ExecStart"),
        [format!(
            "{INSTALLED_BIN} run --config /etc/powerbi-tokend/config.toml"
        )]
    );
    assert!(unit_values(&unit, "ExecStartPre").is_empty());
    // Exit status 2 is a bad configuration (README "Commands and exit codes").
    assert_eq!(unit_values(&unit, "RestartPreventExitStatus"), ["2"]);

    // The secret: where install.sh puts it, what the unit loads it as, what the config reads.
    let credential = unit_values(&unit, "LoadCredential");
    assert_eq!(
        credential,
        ["client-secret:/etc/credstore/powerbi-tokend.client-secret"]
    );
    assert!(install.contains("/etc/credstore/powerbi-tokend.client-secret"));
    assert!(config.contains("client_secret = { systemd = \"client-secret\" }"));

    // Tokens: in the runtime directory, readable by the service's static group.
    assert_eq!(unit_values(&unit, "RuntimeDirectory"), ["powerbi-tokend"]);
    assert_eq!(unit_values(&unit, "RuntimeDirectoryMode"), ["0750"]);
    assert!(config.contains(
        "sinks = [ { type = \"file\", path = \"/run/powerbi-tokend/{name}.json\", mode = \"0640\" } ]"
    ));
    let group = unit_values(&unit, "Group");
    assert_eq!(group, ["powerbi-tokens"]);
    assert!(sysusers.lines().any(|line| line == "g powerbi-tokens - -"));
    // A static group named like the dynamic user would stop the service from starting.
    assert_eq!(unit_values(&unit, "User"), ["powerbi-tokend"]);
    assert_ne!(unit_values(&unit, "User"), group);
    assert_eq!(
        unit_values(&unit, "ConfigurationDirectory"),
        ["powerbi-tokend"]
    );
}

/// Runs `command` as `uid`:`gid` with exactly `groups` as supplementary groups and an
/// environment of PATH plus `env`, the way systemd would start it.
fn as_user(uid: u32, gid: u32, groups: &[u32], command: &[&str], env: &[(&str, &Path)]) -> Command {
    let mut cmd = Command::new(program("setpriv", "util-linux"));
    cmd.arg(format!("--reuid={uid}"))
        .arg(format!("--regid={gid}"));
    if groups.is_empty() {
        cmd.arg("--clear-groups");
    } else {
        let list: Vec<String> = groups.iter().map(u32::to_string).collect();
        cmd.arg(format!("--groups={}", list.join(",")));
    }
    cmd.arg("--").args(command);
    cmd.env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .current_dir("/");
    for (key, value) in env {
        cmd.env(key, value);
    }
    cmd.stdin(Stdio::null());
    cmd
}

fn mode(path: &Path) -> (u32, u32, u32) {
    let meta = std::fs::metadata(path).unwrap_or_else(|err| panic!("{}: {err}", path.display()));
    (meta.mode() & 0o7777, meta.uid(), meta.gid())
}

fn run_install(root: &Path, secret: Option<&str>) -> Output {
    let mut child = Command::new(Path::new(DIR).join("install.sh"))
        .arg(root)
        .env("POWERBI_TOKEND_BIN", BIN)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    if let Some(secret) = secret {
        use std::io::Write;
        writeln!(stdin, "{secret}").unwrap();
    }
    drop(stdin);
    child.wait_with_output().unwrap()
}

/// The GID install.sh gave the group, from `<root>/etc/group`.
fn group_id(root: &Path, name: &str) -> u32 {
    let groups = std::fs::read_to_string(root.join("etc/group")).unwrap();
    groups
        .lines()
        .find_map(|line| {
            let mut fields = line.split(':');
            (fields.next() == Some(name)).then(|| fields.nth(1).unwrap().parse().unwrap())
        })
        .unwrap_or_else(|| panic!("no group {name} in:\n{groups}"))
}

/// The service user (dynamic in systemd's range), a consumer in the group, and an outsider.
const SERVICE_UID: u32 = 61_777;
const CONSUMER_UID: u32 = 61_778;
const OUTSIDER_UID: u32 = 61_779;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(all(has_root, has_setpriv, has_systemd_sysusers)),
    ignore = "skipped: needs root, setpriv (util-linux) and systemd-sysusers (Debian package systemd)"
)]
async fn install_script_leaves_a_tree_the_service_user_runs_from() {
    assert!(
        rustix::process::geteuid().is_root(),
        "this test runs install.sh and changes users: it needs root"
    );
    program("setpriv", "util-linux");
    program("systemd-sysusers", "systemd");
    let temp = tempfile::tempdir().unwrap();
    // The service user must reach the tree, as it reaches / on a host.
    std::fs::set_permissions(temp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let root = temp.path().join("root");
    std::fs::create_dir(&root).unwrap();

    // The README's step, verbatim but for the root prefix and the debug binary.
    let out = run_install(&root, Some(SECRET));
    assert!(out.status.success(), "install.sh:\n{}", text(&out));

    let gid = group_id(&root, "powerbi-tokens");
    let bin = root.join("usr/local/bin/powerbi-tokend");
    let config = root.join("etc/powerbi-tokend/config.toml");
    let credstore = root.join("etc/credstore");
    let secret = credstore.join("powerbi-tokend.client-secret");
    assert_eq!(mode(&bin), (0o755, 0, 0));
    assert_eq!(mode(config.parent().unwrap()), (0o755, 0, 0));
    // The service's group reads the config, nobody else: what `check` asks for.
    assert_eq!(mode(&config), (0o640, 0, gid));
    assert_eq!(mode(&credstore), (0o700, 0, 0));
    assert_eq!(mode(&secret), (0o600, 0, 0));
    assert_eq!(std::fs::read_to_string(&secret).unwrap(), SECRET);
    let installed_unit = root.join("etc/systemd/system/powerbi-tokend.service");
    assert_eq!(mode(&installed_unit), (0o644, 0, 0));
    assert_eq!(std::fs::read_to_string(&installed_unit).unwrap(), unit());
    assert_eq!(
        mode(&root.join("etc/sysusers.d/powerbi-tokend.conf")),
        (0o644, 0, 0)
    );

    // The next step install.sh prints, run as it says (as root, the secret read from the file
    // the unit loads), passes without a warning...
    let printed = String::from_utf8_lossy(&out.stdout).into_owned();
    let step = printed
        .lines()
        .map(str::trim)
        .find(|line| line.starts_with("powerbi-tokend check"))
        .unwrap_or_else(|| panic!("no check step in install.sh's output:\n{printed}"));
    let rooted = |path: &str| format!("{}{path}", root.display());
    let args: Vec<String> = step
        .split_whitespace()
        .skip(1)
        .map(|arg| match arg.split_once(':') {
            Some((name, path)) if path.starts_with("/etc/") => format!("{name}:{}", rooted(path)),
            _ if arg.starts_with("/etc/") => rooted(arg),
            _ => arg.to_owned(),
        })
        .collect();
    let out = std::process::Command::new(&bin)
        .args(&args)
        .env_remove("CREDENTIALS_DIRECTORY")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{step}:\n{}", text(&out));
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("warning"),
        "{step}:\n{}",
        text(&out)
    );
    assert!(!text(&out).contains(SECRET), "{}", text(&out));
    // ...and says, without the credential, how to give it.
    let out = std::process::Command::new(&bin)
        .args(["check", "--config", config.to_str().unwrap()])
        .env_remove("CREDENTIALS_DIRECTORY")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("--load-credential client-secret:"),
        "{}",
        text(&out)
    );
    // A scratch root is not the running system: no `systemctl` step without the root named.
    assert!(
        printed.contains(&format!("Installed under {}", root.display())),
        "{printed}"
    );

    // Running it again upgrades in place: no secret asked for, config and secret kept.
    std::fs::write(
        &config,
        std::fs::read_to_string(&config).unwrap() + "\n# edited\n",
    )
    .unwrap();
    let out = run_install(&root, None);
    assert!(out.status.success(), "install.sh again:\n{}", text(&out));
    assert!(
        std::fs::read_to_string(&config)
            .unwrap()
            .ends_with("# edited\n")
    );
    assert_eq!(std::fs::read_to_string(&secret).unwrap(), SECRET);
    assert_eq!(group_id(&root, "powerbi-tokens"), gid);

    // What systemd does at start: LoadCredential= copies the secret into a directory of the
    // service's own (0500, the file 0400) and names it in $CREDENTIALS_DIRECTORY.
    let credentials = temp.path().join("credentials/powerbi-tokend.service");
    std::fs::create_dir_all(&credentials).unwrap();
    std::fs::set_permissions(
        credentials.parent().unwrap(),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    std::fs::copy(&secret, credentials.join("client-secret")).unwrap();
    std::fs::set_permissions(
        credentials.join("client-secret"),
        std::fs::Permissions::from_mode(0o400),
    )
    .unwrap();
    std::fs::set_permissions(&credentials, std::fs::Permissions::from_mode(0o500)).unwrap();
    for path in [&credentials, &credentials.join("client-secret")] {
        std::os::unix::fs::chown(path, Some(SERVICE_UID), Some(gid)).unwrap();
    }
    let creds: &[(&str, &Path)] = &[("CREDENTIALS_DIRECTORY", &credentials)];
    let bin_s = bin.to_str().unwrap();
    let config_s = config.to_str().unwrap();

    // `check` of the installed config, as the service's user and group, succeeds.
    let out = as_user(
        SERVICE_UID,
        gid,
        &[],
        &[bin_s, "check", "--config", config_s],
        creds,
    )
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(0), "check:\n{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("OK, 1 tenant(s)"),
        "{}",
        text(&out)
    );
    // Without the credential it fails: the secret the service reads is that one...
    let out = as_user(
        SERVICE_UID,
        gid,
        &[],
        &[bin_s, "check", "--config", config_s],
        &[],
    )
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(2), "check:\n{}", text(&out));
    // ...and the stored secret itself is root's alone.
    let out = as_user(
        SERVICE_UID,
        gid,
        &[],
        &["cat", secret.to_str().unwrap()],
        &[],
    )
    .output()
    .unwrap();
    assert!(
        !out.status.success(),
        "the service user read {}",
        secret.display()
    );

    // Tokens: the installed config, pointed at the simulator and at a stand-in for the
    // RuntimeDirectory= (owned by the service, the group's, 0750), written by `once` as the service.
    let sim = SimEntra::start().await.unwrap();
    register(&sim, "contoso.onmicrosoft.com", Duration::from_secs(3600));
    let runtime = temp.path().join("run/powerbi-tokend");
    std::fs::create_dir_all(&runtime).unwrap();
    std::fs::set_permissions(
        runtime.parent().unwrap(),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    std::os::unix::fs::chown(&runtime, Some(SERVICE_UID), Some(gid)).unwrap();
    std::fs::set_permissions(&runtime, std::fs::Permissions::from_mode(0o750)).unwrap();
    let installed = std::fs::read_to_string(&config).unwrap();
    let test_config = installed
        .replace("/run/powerbi-tokend/", &format!("{}/", runtime.display()))
        .replace("00000000-0000-0000-0000-000000000000", CLIENT_ID)
        .replace(
            "[defaults]\n",
            &format!(
                "[defaults]\nauthority_host = \"{}\"\n",
                sim.authority_host()
            ),
        )
        .replace("127.0.0.1:9464", "127.0.0.1:0");
    assert_ne!(test_config, installed);
    let test_config_path = root.join("etc/powerbi-tokend/test.toml");
    std::fs::write(&test_config_path, test_config).unwrap();
    std::fs::set_permissions(&test_config_path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut once = as_user(
        SERVICE_UID,
        gid,
        &[],
        &[
            bin_s,
            "once",
            "--config",
            test_config_path.to_str().unwrap(),
        ],
        creds,
    );
    let out = tokio::task::spawn_blocking(move || once.output())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "once:\n{}", text(&out));
    let token_file = runtime.join("contoso.json");
    assert_eq!(mode(&token_file), (0o640, SERVICE_UID, gid));
    assert!(token_in(&token_file).is_some());

    // A consumer in the group reads it; anyone else cannot.
    let token_s = token_file.to_str().unwrap();
    let out = as_user(CONSUMER_UID, CONSUMER_UID, &[gid], &["cat", token_s], &[])
        .output()
        .unwrap();
    assert!(out.status.success(), "consumer:\n{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("access_token"));
    let out = as_user(OUTSIDER_UID, OUTSIDER_UID, &[], &["cat", token_s], &[])
        .output()
        .unwrap();
    assert!(!out.status.success(), "an outsider read the token");
}

/// install.sh refuses to run without the binary and without root, before touching anything.
#[test]
fn install_script_names_what_is_missing() {
    let temp = tempfile::tempdir().unwrap();
    let out = Command::new(Path::new(DIR).join("install.sh"))
        .arg(temp.path())
        .env("POWERBI_TOKEND_BIN", temp.path().join("nowhere"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("run as root") || stderr.contains("nowhere not found"),
        "{stderr}"
    );
    let left: Vec<PathBuf> = std::fs::read_dir(temp.path())
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .collect();
    assert!(left.is_empty(), "{left:?}");
}
