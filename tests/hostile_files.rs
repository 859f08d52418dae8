//! Files that someone else controls, end to end through the real binary: a secret file that is a
//! FIFO nobody writes to, a token path that is a symlink to `/dev/zero` or a FIFO. Before reads
//! went through `safe_read`, the FIFO open blocked a runtime worker forever (and `check` never
//! returned), and warm start read `/dev/zero` until the kernel killed the process.

mod common;

use common::process::{Spawned, entry, get, wait_exit, wait_for_status};
use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

fn mkfifo(path: &Path) {
    let made = Command::new("mkfifo").arg(path).status().unwrap();
    assert!(made.success(), "mkfifo {}", path.display());
}

/// Whether `path` itself (not what a symlink points at) is a regular file.
fn is_regular(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_file())
}

/// The access token in a json token file, read only once the path is a regular file: reading
/// a FIFO would block the test, and reading `/dev/zero` would never end.
fn regular_token(path: &Path) -> Option<String> {
    is_regular(path).then(|| token_in(path)).flatten()
}

/// A config with fast retries against `authority`; each tenant is (name, tenant_id, the
/// `client_secret` value as TOML).
fn write_config(dir: &Path, authority: &str, tenants: &[(String, String, String)]) -> PathBuf {
    let mut text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n\n[daemon]\nbackoff_min = \"100ms\"\nbackoff_max = \"200ms\"\nshutdown_grace = \"3s\"\n\n[defaults]\nauthority_host = \"{authority}\"\nclient_id = \"{CLIENT_ID}\"\njitter = 0.0\nsinks = [ {{ type = \"file\", path = \"tokens/{{name}}.json\" }} ]\n"
    );
    for (name, tenant_id, secret) in tenants {
        text.push_str(&format!(
            "\n[[tenant]]\nname = \"{name}\"\ntenant_id = \"{tenant_id}\"\nclient_secret = {secret}\n"
        ));
    }
    let path = dir.join("config.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hardening_5_fifo_secrets_do_not_freeze_the_daemon() {
    let healthy: Vec<String> = (0..10).map(|i| format!("healthy-{i}")).collect();
    let healthy_ids: Vec<String> = healthy
        .iter()
        .map(|name| format!("{name}.example.com"))
        .collect();
    let ids: Vec<&str> = healthy_ids.iter().map(String::as_str).collect();
    let Fixture { sim, dir } = fixture(&ids, Duration::from_secs(3600)).await;
    let fifos = ["fifo-a", "fifo-b"];
    let mut tenants = Vec::new();
    for name in fifos {
        let fifo = dir.path().join(format!("{name}.secret"));
        mkfifo(&fifo);
        // Registered, so a request (if one were ever sent) would not fail for another reason.
        register(
            &sim,
            &format!("{name}.example.com"),
            Duration::from_secs(3600),
        );
        tenants.push((
            name.to_owned(),
            format!("{name}.example.com"),
            format!("{{ file = \"{}\" }}", fifo.display()),
        ));
    }
    for (name, tenant_id) in healthy.iter().zip(&healthy_ids) {
        tenants.push((
            name.clone(),
            tenant_id.clone(),
            "{ env = \"HEALTHY_SECRET\" }".to_owned(),
        ));
    }
    let config = write_config(dir.path(), &sim.authority_host(), &tenants);
    let env = [("HEALTHY_SECRET", SECRET)];

    let mut daemon = Spawned::run(&config, &dir.path().join("log.json"), "debug", &env);
    let addr = daemon.admin_addr().await;
    // While the FIFO reads are (at most) in flight, the admin server answers at once.
    let (code, body, took) = get(addr, "/healthz", Duration::from_secs(1)).await;
    assert_eq!(code, 200, "{body}");
    assert!(took < Duration::from_secs(1), "/healthz took {took:?}");

    let token_files: Vec<PathBuf> = healthy
        .iter()
        .map(|name| dir.path().join(format!("tokens/{name}.json")))
        .collect();
    wait_for("all 10 healthy tokens", Duration::from_secs(8), || {
        token_files.iter().all(|path| regular_token(path).is_some())
    })
    .await;
    let (code, body, took) = get(addr, "/healthz", Duration::from_secs(1)).await;
    assert_eq!(code, 200, "{body}");
    assert!(took < Duration::from_secs(1), "/healthz took {took:?}");

    let status = wait_for_status(
        addr,
        "both FIFO tenants' credential failure",
        Duration::from_secs(5),
        |s| {
            fifos
                .iter()
                .all(|name| entry(s, name)["last_error"]["reason"] == "credential")
        },
    )
    .await;
    assert_eq!(status["tenants"].as_array().unwrap().len(), 12, "{status}");
    for name in fifos {
        let fifo = entry(&status, name);
        assert_eq!(fifo["state"], "misconfigured", "{fifo}");
        let message = fifo["last_error"]["message"].as_str().unwrap();
        assert!(message.contains("not a regular file"), "{fifo}");
        assert!(message.contains(&format!("{name}.secret")), "{fifo}");
        // The secret was never read, so nothing was sent.
        assert_eq!(sim.request_count(&format!("{name}.example.com")), 0);
    }
    for name in &healthy {
        assert_eq!(entry(&status, name)["state"], "healthy", "{status}");
    }
    for name in fifos {
        assert!(!dir.path().join(format!("tokens/{name}.json")).exists());
    }

    daemon.signal("TERM");
    let stopping = Instant::now();
    let exit = daemon.wait_exit(Duration::from_secs(5)).await;
    assert_eq!(exit.code(), Some(0), "{}", daemon.log_text());
    assert!(stopping.elapsed() < Duration::from_secs(5));
    assert!(!daemon.log_text().contains(SECRET));

    // `check` reads every credential too: it returns, names both FIFO tenants and no other.
    let mut check = Command::new(common::process::BIN)
        .args(["check", "--config"])
        .arg(&config)
        .env("HEALTHY_SECRET", SECRET)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("check.err")).unwrap())
        .spawn()
        .unwrap();
    let exit = wait_exit(&mut check, Duration::from_secs(5)).await;
    let stderr = std::fs::read_to_string(dir.path().join("check.err")).unwrap();
    assert_eq!(exit.code(), Some(2), "{stderr}");
    for name in fifos {
        let fifo = dir.path().join(format!("{name}.secret"));
        let expected = format!(
            "tenant \"{name}\": client_secret: {} is not a regular file",
            fifo.display()
        );
        assert!(
            stderr.contains(&expected),
            "missing {expected:?} in:\n{stderr}"
        );
    }
    assert!(stderr.contains("2 problem(s) found"), "{stderr}");
    assert!(!stderr.contains("healthy-"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hardening_6_a_token_path_that_is_a_symlink_to_dev_zero_or_a_fifo_is_not_read() {
    let Fixture { sim, dir } = fixture(
        &["a.example.com", "b.example.com"],
        Duration::from_secs(3600),
    )
    .await;
    let tokens = dir.path().join("tokens");
    std::fs::create_dir(&tokens).unwrap();
    let a = tokens.join("a.json");
    let b = tokens.join("b.json");
    std::os::unix::fs::symlink("/dev/zero", &a).unwrap();
    mkfifo(&b);
    let secret = "{ env = \"THE_SECRET\" }".to_owned();
    let config = write_config(
        dir.path(),
        &sim.authority_host(),
        &[
            ("a".to_owned(), "a.example.com".to_owned(), secret.clone()),
            ("b".to_owned(), "b.example.com".to_owned(), secret),
        ],
    );
    let mut daemon = Spawned::run(
        &config,
        &dir.path().join("log.json"),
        "info",
        &[("THE_SECRET", SECRET)],
    );
    // Sampled from the start: reading /dev/zero would have grown by gigabytes within a second.
    let mut max_rss_kib = 0;
    wait_for("both tokens", Duration::from_secs(8), || {
        max_rss_kib = max_rss_kib.max(daemon.rss_kib().unwrap_or(0));
        regular_token(&a).is_some() && regular_token(&b).is_some()
    })
    .await;
    let addr = daemon.admin_addr().await;
    wait_for_status(addr, "both tenants healthy", Duration::from_secs(5), |s| {
        entry(s, "a")["state"] == "healthy" && entry(s, "b")["state"] == "healthy"
    })
    .await;
    max_rss_kib = max_rss_kib.max(daemon.rss_kib().unwrap());
    assert!(
        max_rss_kib > 0 && max_rss_kib < 100 * 1024,
        "VmRSS reached {max_rss_kib} KiB"
    );
    // The symlink and the FIFO were replaced, not followed or read: each path is now a regular
    // file holding the tenant's one token from the simulator.
    for (path, tenant_id) in [(&a, "a.example.com"), (&b, "b.example.com")] {
        assert!(is_regular(path), "{} is not a regular file", path.display());
        assert_eq!(sim.request_count(tenant_id), 1);
        let json = read_json(path).unwrap();
        assert_eq!(json["tenant_id"], tenant_id, "{json}");
    }

    daemon.signal("TERM");
    let stopping = Instant::now();
    let exit = daemon.wait_exit(Duration::from_secs(5)).await;
    assert_eq!(exit.code(), Some(0), "{}", daemon.log_text());
    assert!(
        stopping.elapsed() < Duration::from_secs(3),
        "took {:?}",
        stopping.elapsed()
    );
}
