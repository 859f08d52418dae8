//! `powerbi-tokend demo`: the whole daemon against the built-in simulated Entra ID.
//!
//! Needs nothing but the binary: the simulator listens on 127.0.0.1, three tenants show the three
//! things a user wants to see — a v2 tenant and a v1 tenant refreshing every minute or so (tokens
//! live 120 s), and a tenant whose secret Entra rejects (AADSTS7000215), failing loudly without
//! ever printing the secret. Tokens land in `./demo-tokens/<name>.json`.

use secrecy::SecretString;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

use crate::config::SecretSource;
use crate::config::{ApiVersion, Config, DaemonConfig, ServerConfig, TenantConfig};
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
        },
        daemon: DaemonConfig {
            permanent_retry_interval: Duration::from_secs(60),
            shutdown_grace: Duration::from_secs(1),
            ..DaemonConfig::default()
        },
        tenants,
    }
}

/// Runs the demo until a shutdown message arrives.
///
/// # Errors
/// The simulator or the daemon could not start.
pub async fn run(
    listen: std::net::SocketAddr,
    control: mpsc::Receiver<Control>,
) -> Result<(), DemoError> {
    let sim = SimEntra::start().await?;
    let dir = PathBuf::from(DEMO_DIR);
    let config = demo_config(&sim, dir.clone(), listen);
    tracing::info!(
        simulated_entra = %sim.authority_host(),
        tokens = %dir.display(),
        lifetime = %humantime::format_duration(DEMO_LIFETIME),
        "demo: contoso (v2) and fabrikam (v1) refresh at about half their lifetime; northwind's secret is rejected (AADSTS7000215). Ctrl-C to stop"
    );
    crate::run(config, control).await?;
    drop(sim);
    Ok(())
}
