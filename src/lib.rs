//! powerbi-tokend keeps a fresh Microsoft Entra ID bearer token for the Power BI REST API for
//! every configured customer tenant, and writes it where applications read it.
//!
//! # Layout
//!
//! A token flows through the modules in this order:
//!
//! * [`config`]: the TOML file, `[defaults]` merged into each `[[tenant]]`, validated with lines.
//! * [`cloud`]: which authority host and Power BI resource belong to each sovereign cloud.
//! * [`credential`]: how a tenant proves itself (client secret sources).
//! * [`client`]: the HTTP call to the token endpoint, with timeouts, a body cap and no redirects.
//! * [`token`]: the success body (v1 strings or v2 numbers) and expiry math.
//! * [`error`]: failures classified as transient, throttled, permanent or sink.
//! * [`schedule`]: pure functions deciding the next wake-up (refresh point, jitter, backoff,
//!   `Retry-After`, cron).
//! * [`tenant`]: the per-tenant loop; [`supervisor`] starts, stops and reconciles those loops.
//! * [`sink`]: where tokens are written (atomic files).
//! * [`status`]: each tenant's current state, read by `once` and the admin endpoints.
//! * [`sim`]: a simulated Entra ID for `demo`, the tests and the benchmark.
//! * [`demo`]: the self-contained demonstration.
//!
//! The binary (`main.rs`) only parses the command line, sets up logging and signals, and calls
//! [`run`], [`once`] or [`check`].

#![forbid(unsafe_code)]
#![warn(missing_docs)]
// `RefreshError` carries Entra's diagnostics (about 150 bytes). It is returned at most once per
// refresh attempt, so boxing it would only add an allocation to every failure.
#![allow(clippy::result_large_err)]

pub mod client;
pub mod cloud;
pub mod config;
pub mod credential;
pub mod demo;
pub mod error;
pub mod schedule;
pub mod sim;
pub mod sink;
pub mod status;
pub mod supervisor;
pub mod tenant;
pub mod token;

use std::sync::Arc;
use tokio::sync::{Semaphore, mpsc};

use crate::client::{ClientError, TokenClient};
use crate::config::Config;
use crate::status::Registry;
use crate::supervisor::Supervisor;
use crate::tenant::{OnceOutcome, RetryPolicy, Shared};

/// Messages from the process (signals) to the running daemon.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Control {
    /// Re-read the configuration file (SIGHUP).
    Reload,
    /// Stop gracefully (SIGTERM, SIGINT).
    Shutdown,
}

/// Why the daemon could not run.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The HTTP client could not be built.
    #[error(transparent)]
    Client(#[from] ClientError),
}

fn shared_for(config: &Config) -> Result<Shared, ClientError> {
    Ok(Shared {
        client: TokenClient::new(&config.daemon)?,
        limiter: Arc::new(Semaphore::new(config.daemon.max_concurrent_requests)),
        policy: RetryPolicy::from(&config.daemon),
        observer: None,
    })
}

/// Runs the daemon until a [`Control::Shutdown`] arrives (or the channel closes).
///
/// # Errors
/// Only set-up failures; refresh failures are handled per tenant and never end the daemon.
pub async fn run(config: Config, mut control: mpsc::Receiver<Control>) -> Result<(), RunError> {
    let registry = Registry::new();
    let mut supervisor = Supervisor::new(shared_for(&config)?, registry.clone());
    sink::clean_up(&config.tenants).await;
    let started = supervisor.reconcile(&config.tenants, false).await;
    tracing::info!(
        tenants = started.added.len(),
        config = %config.path.display(),
        "powerbi-tokend started"
    );
    if config.tenants.is_empty() {
        tracing::warn!(
            "the configuration has no [[tenant]]; nothing to refresh until a reload adds one"
        );
    }
    let mut config = config;
    while let Some(message) = control.recv().await {
        match message {
            Control::Shutdown => break,
            Control::Reload => reload(&mut config, &mut supervisor).await,
        }
    }
    let grace = config.daemon.shutdown_grace;
    tracing::info!(grace = %humantime::format_duration(grace), "shutting down: no new refreshes, waiting for those in flight");
    if supervisor.shutdown(grace).await {
        tracing::info!("shutdown complete");
    } else {
        tracing::warn!(
            "shutdown grace period elapsed with refreshes still in flight; their files were not replaced"
        );
    }
    Ok(())
}

/// Re-reads the config file; a bad file keeps the running configuration.
async fn reload(config: &mut Config, supervisor: &mut Supervisor) {
    let new = match config::load(&config.path) {
        Ok(new) => new,
        Err(err) => {
            for line in err.to_string().lines() {
                tracing::error!(
                    problem = line,
                    "reload rejected; the previous configuration stays in effect"
                );
            }
            return;
        }
    };
    if new.server != config.server {
        tracing::warn!("[server] changes take effect after a restart");
    }
    let restart_all = new.daemon != config.daemon;
    if restart_all {
        match shared_for(&new) {
            // Every task must pick up the new knobs, so all restart; warm start keeps healthy
            // tenants from refetching.
            Ok(shared) => supervisor.set_shared(shared),
            Err(err) => {
                tracing::error!(error = %err, "reload rejected; the previous configuration stays in effect");
                return;
            }
        }
    }
    let result = supervisor.reconcile(&new.tenants, restart_all).await;
    tracing::info!(
        added = ?result.added,
        removed = ?result.removed,
        changed = ?result.changed,
        unchanged = result.unchanged,
        "configuration reloaded"
    );
    *config = new;
}

/// Fetches every tenant's token once and writes every sink (the `once` command).
///
/// # Errors
/// Only set-up failures; per-tenant failures are in the outcomes.
pub async fn once(config: &Config) -> Result<Vec<OnceOutcome>, RunError> {
    let shared = shared_for(config)?;
    sink::clean_up(&config.tenants).await;
    let mut tasks = tokio::task::JoinSet::new();
    for tenant in &config.tenants {
        tasks.spawn(tenant::refresh_once(tenant.clone(), shared.clone()));
    }
    let mut outcomes = Vec::with_capacity(config.tenants.len());
    while let Some(joined) = tasks.join_next().await {
        if let Ok(outcome) = joined {
            outcomes.push(outcome);
        }
    }
    outcomes.sort_by(|a, b| a.tenant.cmp(&b.tenant));
    Ok(outcomes)
}

/// Validates a config file and every referenced secret, without contacting Entra.
///
/// # Errors
/// Every problem found.
pub fn check(path: &std::path::Path) -> Result<Config, config::ConfigError> {
    config::load_strict(path)
}
