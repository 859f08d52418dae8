//! `powerbi-tokend demo`: the whole daemon against the built-in simulated Entra ID.
//!
//! Needs nothing but the binary: the simulator listens on 127.0.0.1, three tenants show the three
//! things a user wants to see — a v2 tenant and a v1 tenant refreshing every minute or so (tokens
//! live 120 s), and a tenant whose secret Entra rejects (AADSTS7000215), failing loudly without
//! ever printing the secret. Tokens land in `./demo-tokens/<name>.json`.
//!
//! `demo --redis` also starts a `redis-server` from PATH on a free loopback port (no persistence,
//! stopped with the demo) and writes every token there too, in fleet mode, so the shared store
//! can be watched with `redis-cli`.

use secrecy::SecretString;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

use crate::config::SecretSource;
use crate::config::{
    ApiVersion, Config, DaemonConfig, FileFormat, FleetConfig, RedisConfig, RedisSinkConfig,
    ServerConfig, SinkConfig, TenantConfig,
};
use crate::sim::{SimApp, SimEntra, SimTenant};
use crate::{Control, RunError};

/// Token lifetime the simulator grants in the demo: short, so refreshes are visible.
pub const DEMO_LIFETIME: Duration = Duration::from_secs(120);

/// Where the demo writes tokens, relative to the working directory.
pub const DEMO_DIR: &str = "demo-tokens";

/// Why the demo could not start.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// The simulator could not bind 127.0.0.1.
    #[error("cannot start the simulated Entra ID: {0}")]
    Simulator(#[from] std::io::Error),
    /// The daemon could not start.
    #[error(transparent)]
    Run(#[from] RunError),
    /// `--redis` without a usable `redis-server`.
    #[error("demo --redis: {0}")]
    Redis(String),
}

/// A random secret per run, so nothing in the demo looks like a reusable credential.
fn random_secret(tag: &str) -> String {
    let mut text = format!("demo~{tag}~");
    text.extend(std::iter::repeat_with(fastrand::alphanumeric).take(32));
    text
}

/// Builds the demo tenants and registers them with the simulator.
pub fn demo_config(sim: &SimEntra, dir: PathBuf, listen: std::net::SocketAddr) -> Config {
    let specs = [
        ("contoso", "contoso.onmicrosoft.com", ApiVersion::V2, true),
        (
            "fabrikam",
            "7d1e4f2a-5b6c-4d8e-9f0a-1b2c3d4e5f60",
            ApiVersion::V1,
            true,
        ),
        (
            "northwind",
            "northwind.onmicrosoft.com",
            ApiVersion::V2,
            false,
        ),
    ];
    let tenants = specs
        .iter()
        .enumerate()
        .map(|(index, (name, tenant_id, api, secret_matches))| {
            let client_id = format!("5d1e7c2a-3b4f-4a6d-8e9f-0a1b2c3d4e5{index}");
            let registered = random_secret(name);
            let configured = if *secret_matches {
                registered.clone()
            } else {
                random_secret("wrong")
            };
            sim.add_tenant(
                tenant_id,
                SimTenant::new(
                    SimApp {
                        client_id: client_id.clone(),
                        secret: registered,
                        secret_expired: false,
                    },
                    DEMO_LIFETIME,
                ),
            );
            let mut tenant = TenantConfig::entra(
                name,
                tenant_id,
                &client_id,
                SecretSource::Inline(SecretString::from(configured)),
                &sim.authority_host(),
                dir.join(format!("{name}.json")),
            );
            tenant.api = *api;
            Arc::new(tenant)
        })
        .collect();
    Config {
        redis: None,
        fleet: None,
        path: PathBuf::from("<demo>"),
        server: ServerConfig {
            listen,
            watch_config: false,
            watch_interval: Duration::from_secs(5),
            per_tenant_metrics: Default::default(),
        },
        daemon: DaemonConfig {
            permanent_retry_interval: Duration::from_secs(60),
            shutdown_grace: Duration::from_secs(1),
            ..DaemonConfig::default()
        },
        tenants,
    }
}

/// Runs the demo until a shutdown message arrives; with `redis`, against a `redis-server` of
/// its own as well.
///
/// # Errors
/// The simulator, the Redis server or the daemon could not start.
pub async fn run(
    listen: std::net::SocketAddr,
    redis: bool,
    control: mpsc::Receiver<Control>,
) -> Result<(), DemoError> {
    let sim = SimEntra::start().await?;
    let dir = PathBuf::from(DEMO_DIR);
    let mut config = demo_config(&sim, dir.clone(), listen);
    let server = if redis {
        let server = DemoRedis::start().await?;
        with_redis(&mut config, server.url());
        tracing::info!(
            redis = %server.url(),
            "demo: tokens also go to Redis; try: redis-cli -p {} GET 'powerbi-tokend:{{contoso}}', or SUBSCRIBE powerbi-tokend:tokens",
            server.port
        );
        Some(server)
    } else {
        None
    };
    tracing::info!(
        simulated_entra = %sim.authority_host(),
        tokens = %dir.display(),
        lifetime = %humantime::format_duration(DEMO_LIFETIME),
        "demo: contoso (v2) and fabrikam (v1) refresh at about half their lifetime; northwind's secret is rejected (AADSTS7000215). Ctrl-C to stop"
    );
    let result = crate::run(config, control).await;
    if let Some(server) = server {
        server.stop().await;
    }
    drop(sim);
    result.map_err(DemoError::from)
}

/// Adds `[redis]` at `url`, a Redis sink to every tenant, and fleet mode.
pub fn with_redis(config: &mut Config, url: String) {
    config.redis = Some(RedisConfig {
        urls: vec![url],
        ..RedisConfig::default()
    });
    config.fleet = Some(FleetConfig {
        key_prefix: crate::config::DEFAULT_FLEET_PREFIX.to_owned(),
        lease_ttl: config.daemon.request_timeout + Duration::from_secs(15),
        replica_id: Some("demo".to_owned()),
    });
    for tenant in &mut config.tenants {
        let mut changed = (**tenant).clone();
        changed.sinks.push(SinkConfig::Redis(RedisSinkConfig {
            key: format!("powerbi-tokend:{{{}}}", changed.name),
            format: FileFormat::Json,
        }));
        *tenant = Arc::new(changed);
    }
}

/// The demo's own `redis-server`: loopback, a free port, no persistence, a fresh directory.
struct DemoRedis {
    port: u16,
    child: std::process::Child,
    dir: PathBuf,
}

impl DemoRedis {
    async fn start() -> Result<DemoRedis, DemoError> {
        let port = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await?
            .local_addr()?
            .port();
        let dir = std::env::temp_dir().join(format!(
            "powerbi-tokend-demo-redis-{}-{port}",
            std::process::id()
        ));
        let spawn_dir = dir.clone();
        let child = tokio::task::spawn_blocking(move || {
            std::fs::create_dir_all(&spawn_dir)?;
            std::process::Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no"])
                .arg("--dir")
                .arg(&spawn_dir)
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
        })
        .await
        .map_err(|err| DemoError::Redis(err.to_string()))?
        .map_err(|err| {
            DemoError::Redis(format!(
                "cannot start redis-server ({err}); install it (Debian: apt-get install redis-server) or run the demo without --redis"
            ))
        })?;
        let server = DemoRedis { port, child, dir };
        for _ in 0..250 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return Ok(server);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        server.stop().await;
        Err(DemoError::Redis(format!(
            "redis-server did not listen on 127.0.0.1:{port} within 5 s"
        )))
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    async fn stop(mut self) {
        let dir = self.dir.clone();
        let _ = tokio::task::spawn_blocking(move || {
            let _ = self.child.kill();
            let _ = self.child.wait();
            let _ = std::fs::remove_dir_all(dir);
        })
        .await;
    }
}
