//! Shared test helpers: a simulated Entra ID plus configurations built in code.
#![allow(dead_code)]

use secrecy::SecretString;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use powerbi_tokend::config::SecretSource;
use powerbi_tokend::config::{Config, DaemonConfig, ServerConfig, TenantConfig};
use powerbi_tokend_sim::{SimApp, SimEntra, SimTenant};

pub const CLIENT_ID: &str = "5d1e7c2a-3b4f-4a6d-8e9f-0a1b2c3d4e5f";
pub const SECRET: &str = "s3cr3t~VALUE~that-must-never-be-logged";

/// Installs the process-wide rustls provider (the binary does this in main).
pub fn init() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// Registers a tenant with the simulator whose app accepts `SECRET`.
pub fn register(sim: &SimEntra, tenant_id: &str, lifetime: Duration) {
    sim.add_tenant(
        tenant_id,
        SimTenant::new(
            SimApp {
                client_id: CLIENT_ID.to_owned(),
                secret: SECRET.to_owned(),
                secret_expired: false,
            },
            lifetime,
        ),
    );
}

/// A tenant configured in code against the simulator, writing `<dir>/<name>.json`.
pub fn tenant(sim: &SimEntra, name: &str, tenant_id: &str, dir: &Path) -> TenantConfig {
    let mut tenant = TenantConfig::entra(
        name,
        tenant_id,
        CLIENT_ID,
        SecretSource::Inline(SecretString::from(SECRET)),
        &sim.authority_host(),
        dir.join(format!("{name}.json")),
    );
    tenant.jitter = 0.0;
    tenant
}

/// Daemon knobs with fast retries, for tests.
pub fn fast_daemon() -> DaemonConfig {
    DaemonConfig {
        backoff_min: Duration::from_millis(100),
        backoff_max: Duration::from_millis(400),
        permanent_retry_interval: Duration::from_secs(2),
        request_timeout: Duration::from_secs(5),
        shutdown_grace: Duration::from_secs(5),
        ..DaemonConfig::default()
    }
}

pub fn config(tenants: Vec<TenantConfig>, daemon: DaemonConfig) -> Config {
    Config {
        redis: None,
        fleet: None,
        key_vault: None,
        path: PathBuf::from("<test>"),
        server: ServerConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            watch_config: false,
            watch_interval: Duration::from_secs(5),
            per_tenant_metrics: Default::default(),
            tls: None,
            basic_auth: None,
        },
        daemon,
        tenants: tenants.into_iter().map(Arc::new).collect(),
    }
}

/// The path of the external program `name` on PATH; panics naming the Debian `package` that
/// provides it when it is missing. Tests that call it are marked ignored, "skipped: needs …",
/// where build.rs did not find the program, so this panics only in CI (`CI=true`), where a
/// missing program must fail.
pub fn program(name: &str, package: &str) -> PathBuf {
    program_installed_by(name, &format!("apt-get install {package}"))
}

/// The path of the external program `name` on PATH; panics with `install`, the command that
/// installs it, when it is missing.
pub fn program_installed_by(name: &str, install: &str) -> PathBuf {
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join(name))
                .find(|candidate| candidate.is_file())
        })
        .unwrap_or_else(|| panic!("{name} is not installed: {install}"))
}

/// Polls `condition` every 10 ms until it holds; panics with `what` after `timeout`.
pub async fn wait_for(what: &str, timeout: Duration, mut condition: impl FnMut() -> bool) {
    let start = Instant::now();
    while !condition() {
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The value of the sample line `line` (labels included) in a metrics page.
pub fn sample_value(metrics: &str, line: &str) -> Option<String> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(line))
        .map(|value| value.trim().to_owned())
}

/// The json token file, parsed, if it exists.
pub fn read_json(path: &Path) -> Option<serde_json::Value> {
    let text = std::fs::read_to_string(path).ok()?;
    serde_json::from_str(&text).ok()
}

/// The access token in a json token file.
pub fn token_in(path: &Path) -> Option<String> {
    read_json(path).and_then(|v| v["access_token"].as_str().map(str::to_owned))
}

/// A simulator with the given tenants registered, and a temp dir for token files.
pub struct Fixture {
    pub sim: SimEntra,
    pub dir: tempfile::TempDir,
}

pub async fn fixture(tenant_ids: &[&str], lifetime: Duration) -> Fixture {
    init();
    let sim = SimEntra::start().await.unwrap();
    for tenant_id in tenant_ids {
        register(&sim, tenant_id, lifetime);
    }
    Fixture {
        sim,
        dir: tempfile::tempdir().unwrap(),
    }
}

/// Makes the simulated Entra ID know a different secret for the tenant's app than `SECRET`.
pub fn reject_secret(sim: &SimEntra, tenant_id: &str) {
    set_secret(sim, tenant_id, "a-different-secret");
}

/// Sets the secret the simulated Entra ID expects for the tenant's app.
pub fn set_secret(sim: &SimEntra, tenant_id: &str, secret: &str) {
    sim.set_app(
        tenant_id,
        SimApp {
            client_id: CLIENT_ID.to_owned(),
            secret: secret.to_owned(),
            secret_expired: false,
        },
    );
}

/// A daemon running in the background of a test.
pub struct Running {
    /// Where its admin server listens.
    pub addr: std::net::SocketAddr,
    /// Sends reloads and the shutdown.
    pub control: tokio::sync::mpsc::Sender<powerbi_tokend::Control>,
    task: tokio::task::JoinHandle<()>,
}

/// Starts the daemon (admin server included) in the background.
pub async fn start_daemon(config: Config) -> Running {
    let daemon = powerbi_tokend::Daemon::start(config)
        .await
        .expect("daemon starts");
    let addr = daemon.admin_addr();
    let (control, receiver) = tokio::sync::mpsc::channel(4);
    let task = tokio::spawn(async move { daemon.run(receiver).await.expect("daemon runs") });
    Running {
        addr,
        control,
        task,
    }
}

impl Running {
    /// Asks the daemon to stop and waits (at most 10 s) until it has.
    pub async fn stop(self) {
        self.control
            .send(powerbi_tokend::Control::Shutdown)
            .await
            .unwrap();
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("daemon stops")
            .unwrap();
    }

    /// GETs `path` every 20 ms until `accept(status, body)` holds, and returns that body;
    /// panics with `what` after 5 s. Status is updated after the sinks are written, so a
    /// test that saw a token file must wait for the status it checks, not assume it.
    pub async fn wait_for_get(
        &self,
        what: &str,
        path: &str,
        mut accept: impl FnMut(u16, &str) -> bool,
    ) -> String {
        let start = Instant::now();
        loop {
            let (code, body) = self.get(path).await;
            if accept(code, &body) {
                return body;
            }
            if start.elapsed() > Duration::from_secs(5) {
                panic!("timed out waiting for {what}; last {path} ({code}):\n{body}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// GETs an admin endpoint: (status, body).
    pub async fn get(&self, path: &str) -> (u16, String) {
        let response = reqwest::Client::builder()
            .no_proxy()
            .build()
            .unwrap()
            .get(format!("http://{}{path}", self.addr))
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.text().await.unwrap())
    }
}

/// The real binary as a child process (spawn, log, signals, memory).
/// A CA and a 127.0.0.1 server certificate for the simulator's HTTPS; the benchmark's own file,
/// so the benchmark and the tests make their certificates the same way.
#[path = "../../examples/common/pki.rs"]
pub mod pki;
pub mod process;
pub mod redis_server;
