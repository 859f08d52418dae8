//! `powerbi-tokend demo`: the whole daemon against the built-in simulated Entra ID and Power BI
//! REST API.
//!
//! Needs nothing but the binary: the simulator listens on 127.0.0.1, and four tenants show the
//! four things a user wants to see:
//!
//! * `contoso` (v2 endpoint) and `fabrikam` (v1 endpoint) refresh every minute or so (tokens
//!   live 120 s), and Power BI accepts their tokens (the access probe passes);
//! * `contoso` also keeps an embed token (`sales`: one report and its dataset) fresh next to its
//!   access token, made again after every refresh; `fabrikam`'s (`stores`) is for a dataset
//!   with row-level security, made for one effective identity (a store manager, role `Store`);
//! * `northwind`'s secret is rejected by Entra (AADSTS7000215): it fails loudly without ever
//!   printing the secret;
//! * `tailspin` gets its tokens from Entra, but Power BI refuses its service principal (as when
//!   the customer's Fabric admin has not let service principals use the APIs): the access probe
//!   says so and `/status` shows the tenant as `api_denied`, which Entra alone would never
//!   reveal.
//!
//! Every tenant probes Power BI after each refresh and every 30 s. Tokens land in
//! `./demo-tokens/<name>.json`, embed tokens in `./demo-tokens/<name>.<embed>.embed.json`; the
//! demo prints where the embed token is and how to see the denied tenant in `/status`.
//!
//! `demo --redis` also starts a `redis-server` from PATH on a free loopback port (no persistence,
//! stopped with the demo) and writes every access token there too, in fleet mode, so the shared
//! store can be watched with `redis-cli`.

use powerbi_tokend_sim::{PowerBiBehavior, SimApp, SimEntra, SimTenant};
use secrecy::SecretString;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

use crate::config::SecretSource;
use crate::config::{
    AccessLevel, ApiVersion, Config, DaemonConfig, EffectiveIdentity, EmbedConfig, FileFormat,
    FileSinkConfig, FleetConfig, PowerBiConfig, ProbeConfig, RedisConfig, RedisSinkConfig, RestApi,
    ServerConfig, SinkConfig, TenantConfig,
};
use crate::{Control, Daemon, RunError};

/// Token lifetime the simulator grants in the demo: short, so refreshes are visible.
pub const DEMO_LIFETIME: Duration = Duration::from_secs(120);

/// Where the demo writes tokens, relative to the working directory.
pub const DEMO_DIR: &str = "demo-tokens";

/// Time between access probes besides the one after every refresh: short, so a change of the
/// simulator's Power BI behaviour shows in `/status` while one watches.
pub const DEMO_PROBE_INTERVAL: Duration = Duration::from_secs(30);

/// One demo tenant and what it is there to show.
struct DemoTenant {
    /// The daemon's name for it: file names, logs, `/status`.
    name: &'static str,
    /// A verified domain or a GUID, to show that both work in the token URL.
    tenant_id: &'static str,
    /// Which token endpoint; the two answer in different shapes.
    api: ApiVersion,
    /// Whether the configured secret is the registered one; `false` shows Entra's rejection.
    secret_matches: bool,
    /// How the simulated Power BI API treats the tenant's tokens; anything but `Ok` shows a
    /// tenant whose Entra tokens are fine and whose API calls still fail.
    powerbi: PowerBiBehavior,
    /// The embed token kept for the tenant, if any.
    embed: Option<DemoEmbed>,
}

/// An embed token of the demo. The simulator accepts any GUIDs, so the ids are made up; fixed,
/// so a warm start after a restart of the demo reuses the token on disk.
struct DemoEmbed {
    /// The embed's name (`[[tenant.embed]] name`).
    name: &'static str,
    /// The report the token opens.
    report: &'static str,
    /// The report's dataset.
    dataset: &'static str,
    /// The report's workspace, where its embed URL is read (`None`: "My workspace").
    workspace: Option<&'static str>,
    /// For a dataset with row-level security: the user (with role `Store`) the token filters
    /// rows for; the simulator refuses the token without it.
    rls_user: Option<&'static str>,
}

const TENANTS: [DemoTenant; 4] = [
    DemoTenant {
        name: "contoso",
        tenant_id: "contoso.onmicrosoft.com",
        api: ApiVersion::V2,
        secret_matches: true,
        powerbi: PowerBiBehavior::Ok,
        embed: Some(DemoEmbed {
            name: "sales",
            report: "8a4f2c61-93d7-4b5e-a0c8-1f6e2d9b7a34",
            dataset: "c37e9b05-2d14-4f8a-b6e1-5a0d9c4f2e78",
            workspace: Some("2b6d9f40-8c1e-4a73-b5d2-6e0f3a9c1d85"),
            rls_user: None,
        }),
    },
    DemoTenant {
        name: "fabrikam",
        tenant_id: "7d1e4f2a-5b6c-4d8e-9f0a-1b2c3d4e5f60",
        api: ApiVersion::V1,
        secret_matches: true,
        powerbi: PowerBiBehavior::Ok,
        embed: Some(DemoEmbed {
            name: "stores",
            report: "4e8b1d27-6a3c-4f95-b0d2-7c9e1a5f3b46",
            dataset: "a95c3e18-7b2d-4c6f-8e01-3d4b5a6c7e89",
            workspace: None,
            rls_user: Some("store-17@fabrikam.example"),
        }),
    },
    DemoTenant {
        name: "northwind",
        tenant_id: "northwind.onmicrosoft.com",
        api: ApiVersion::V2,
        secret_matches: false,
        powerbi: PowerBiBehavior::Ok,
        embed: None,
    },
    DemoTenant {
        name: "tailspin",
        tenant_id: "tailspintoys.onmicrosoft.com",
        api: ApiVersion::V2,
        secret_matches: true,
        powerbi: PowerBiBehavior::NotAuthorized,
        embed: None,
    },
];

/// Why the demo could not start.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// The simulator could not bind 127.0.0.1.
    #[error("cannot start the simulated Entra ID: {0}")]
    Simulator(#[from] std::io::Error),
    /// The daemon could not start.
    #[error(transparent)]
    Run(#[from] RunError),
    /// `--listen` names an address that cannot be bound.
    #[error(
        "demo --listen {addr}: cannot listen there: {source}; pass another address, e.g. --listen 127.0.0.1:0 for any free port"
    )]
    Listen {
        /// The address given.
        addr: std::net::SocketAddr,
        /// Why.
        source: std::io::Error,
    },
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

/// The config of a demo embed token, written to `<dir>/<tenant>.<embed>.embed.json`.
fn demo_embed(tenant: &str, embed: &DemoEmbed, dir: &std::path::Path) -> EmbedConfig {
    EmbedConfig {
        name: embed.name.to_owned(),
        reports: vec![embed.report.to_owned()],
        datasets: vec![embed.dataset.to_owned()],
        target_workspaces: Vec::new(),
        access_level: AccessLevel::View,
        lifetime: None,
        xmla_read_only: false,
        workspace: embed.workspace.map(str::to_owned),
        identities: embed
            .rls_user
            .map(|username| EffectiveIdentity {
                username: username.to_owned(),
                roles: vec!["Store".to_owned()],
                datasets: vec![embed.dataset.to_owned()],
                reports: Vec::new(),
                custom_data: None,
            })
            .into_iter()
            .collect(),
        datasource_identities: Vec::new(),
        sinks: vec![SinkConfig::File(FileSinkConfig {
            path: dir.join(format!("{tenant}.{}.embed.json", embed.name)),
            format: FileFormat::Json,
            mode: 0o600,
        })],
    }
}

/// Builds the demo tenants and registers them, and their Power BI behaviour, with the
/// simulator.
pub fn demo_config(sim: &SimEntra, dir: PathBuf, listen: std::net::SocketAddr) -> Config {
    let tenants = TENANTS
        .iter()
        .enumerate()
        .map(|(index, spec)| {
            let client_id = format!("5d1e7c2a-3b4f-4a6d-8e9f-0a1b2c3d4e5{index}");
            let registered = random_secret(spec.name);
            let configured = if spec.secret_matches {
                registered.clone()
            } else {
                random_secret("wrong")
            };
            sim.add_tenant(
                spec.tenant_id,
                SimTenant::new(
                    SimApp {
                        client_id: client_id.clone(),
                        secret: registered,
                        secret_expired: false,
                    },
                    DEMO_LIFETIME,
                ),
            );
            sim.set_powerbi_behavior(spec.tenant_id, spec.powerbi);
            if let Some(DemoEmbed {
                dataset,
                rls_user: Some(_),
                ..
            }) = &spec.embed
            {
                sim.set_rls_datasets(spec.tenant_id, &[dataset]);
            }
            let mut tenant = TenantConfig::entra(
                spec.name,
                spec.tenant_id,
                &client_id,
                SecretSource::Inline(SecretString::from(configured)),
                &sim.authority_host(),
                dir.join(format!("{}.json", spec.name)),
            );
            tenant.api = spec.api;
            tenant.powerbi = Some(Box::new(PowerBiConfig {
                api: RestApi::PowerBi,
                api_root: sim.powerbi_api().into(),
                probe: Some(ProbeConfig {
                    interval: DEMO_PROBE_INTERVAL,
                    path: ProbeConfig::DEFAULT_PATH.to_owned(),
                }),
                embeds: spec
                    .embed
                    .iter()
                    .map(|embed| demo_embed(spec.name, embed, &dir))
                    .collect(),
            }));
            Arc::new(tenant)
        })
        .collect();
    Config {
        redis: None,
        fleet: None,
        key_vault: None,
        path: PathBuf::from("<demo>"),
        server: ServerConfig {
            listen,
            watch_config: false,
            watch_interval: Duration::from_secs(5),
            per_tenant_metrics: Default::default(),
            tls: None,
            basic_auth: None,
        },
        daemon: DaemonConfig {
            permanent_retry_interval: Duration::from_secs(60),
            shutdown_grace: Duration::from_secs(1),
            ..DaemonConfig::default()
        },
        tenants,
    }
}

/// Every embed token file in `config`: `("<tenant>/<embed>", path)`, for the start-up message.
fn embed_files(config: &Config) -> Vec<(String, PathBuf)> {
    config
        .tenants
        .iter()
        .flat_map(|tenant| {
            let embeds = tenant
                .powerbi
                .as_deref()
                .map_or(&[][..], |powerbi| &powerbi.embeds);
            embeds.iter().flat_map(move |embed| {
                embed.sinks.iter().filter_map(move |sink| match sink {
                    SinkConfig::File(file) => {
                        Some((format!("{}/{}", tenant.name, embed.name), file.path.clone()))
                    }
                    SinkConfig::Redis(_) => None,
                })
            })
        })
        .collect()
}

/// Runs the demo until a shutdown message arrives; with `redis`, against a `redis-server` of
/// its own as well.
///
/// # Errors
/// The simulator, the Redis server or the daemon could not start.
pub async fn run(
    listen: Option<std::net::SocketAddr>,
    redis: bool,
    control: mpsc::Receiver<Control>,
) -> Result<(), DemoError> {
    let sim = SimEntra::start().await?;
    let dir = PathBuf::from(DEMO_DIR);
    let mut config = demo_config(&sim, dir.clone(), listen.unwrap_or_else(default_listen));
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
    let embeds = embed_files(&config);
    // The daemon is started before the hints are printed: `--listen` may name port 0, and the
    // `/status` hint needs the port actually bound.
    let result = match start(config, listen.is_some()).await {
        Ok(daemon) => {
            announce(&sim, &dir, &embeds, daemon.admin_addr());
            daemon.run(control).await.map_err(DemoError::from)
        }
        Err(err) => Err(err),
    };
    if let Some(server) = server {
        server.stop().await;
    }
    drop(sim);
    result
}

/// The demo's admin address when `--listen` is not given: the daemon's default.
fn default_listen() -> std::net::SocketAddr {
    // DEFAULT_LISTEN is a literal address, which the config tests parse.
    crate::config::DEFAULT_LISTEN
        .parse()
        .expect("DEFAULT_LISTEN is an address")
}

/// Starts the daemon. Without `--listen` (`explicit` false), a default port that is taken
/// (another demo, an installed daemon) is no reason to stop: the demo takes a free loopback port
/// and says which. An address the user chose is theirs: failing to bind it says how to choose
/// another.
async fn start(config: Config, explicit: bool) -> Result<Daemon, DemoError> {
    let wanted = config.server.listen;
    let mut fallback = config.clone();
    match Daemon::start(config).await {
        Ok(daemon) => Ok(daemon),
        Err(RunError::Listen { source, .. }) if explicit => Err(DemoError::Listen {
            addr: wanted,
            source,
        }),
        Err(RunError::Listen { source, .. }) if source.kind() == std::io::ErrorKind::AddrInUse => {
            fallback.server.listen = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
            let daemon = Daemon::start(fallback).await?;
            tracing::warn!(
                taken = %wanted,
                listen = %daemon.admin_addr(),
                "demo: {wanted} is taken (another demo or an installed daemon?); the demo listens on {} instead (choose with --listen)",
                daemon.admin_addr()
            );
            Ok(daemon)
        }
        Err(err) => Err(err.into()),
    }
}

/// Prints what the demo shows and where to look: the token directory, each embed token's file,
/// and the `/status` query that shows the tenant Power BI refuses.
fn announce(
    sim: &SimEntra,
    dir: &std::path::Path,
    embeds: &[(String, PathBuf)],
    admin: std::net::SocketAddr,
) {
    tracing::info!(
        simulated_entra = %sim.authority_host(),
        tokens = %dir.display(),
        lifetime = %humantime::format_duration(DEMO_LIFETIME),
        "demo: contoso (v2) and fabrikam (v1) refresh at about half their lifetime and Power BI accepts their tokens; northwind's secret is rejected (AADSTS7000215); tailspin's tokens are issued but Power BI refuses them. Ctrl-C to stop"
    );
    for (embed, path) in embeds {
        tracing::info!("demo: embed token for {embed}: {}", path.display());
    }
    for tenant in TENANTS
        .iter()
        .filter(|tenant| tenant.powerbi == PowerBiBehavior::NotAuthorized)
    {
        tracing::info!(
            "demo: Power BI refuses {name}'s service principal (Entra issues its tokens), so /status shows {name} as api_denied: curl -s http://{admin}/status | jq '.tenants[] | select(.name == \"{name}\") | {{state, api_probe}}'",
            name = tenant.name
        );
    }
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
