//! powerbi-tokend keeps a fresh Microsoft Entra ID bearer token for the Power BI REST API for
//! every configured customer tenant, and writes it where applications read it.
//!
//! # Layout
//!
//! A token's way through the modules, from the config to the reader (each module below needs
//! only modules further down this list's path, never one above it):
//!
//! * [`config`]: the TOML file, `[defaults]` merged into each `[[tenant]]`, validated with lines.
//!   Plain data plus rules, one file per section (`server`, `daemon`, `tenant`, `credential`,
//!   `managed_identity`, `oauth2`, `key_vault`, `redis`, `fleet`, `powerbi`, `sink`),
//!   cross-tenant and not-applicable-key rules, and the loader that keeps going after a mistake.
//!   It reads the config file and nothing else. [`cloud`] says which authority host, Power BI
//!   resource, Fabric resource (where Fabric exists) and Key Vault resource belong to each
//!   sovereign cloud.
//! * `supervisor` keeps the tenants in a timetable, runs each one's step when due, and starts,
//!   stops and reconciles tenants on reload (restarting one that panicked).
//! * `tenant`: a tenant is a small composition: the refresher of its access token
//!   (`tenant/access.rs`: fetched through the request lanes, or adopted from the fleet), the
//!   Power BI calls made with that token ([`powerbi`]: `calls.rs` holds the access probe and the
//!   embed tokens' refreshers), and the check that its tokens are still in Redis.
//! * [`credential`]: how a tenant proves itself, one file per kind (secret, certificate,
//!   federated token, managed identity; `key_vault/`: the Azure Key Vault readers, one per
//!   identity, with the challenges they follow) and the credential's expiry;
//!   [`credential::Credential::fetch`] reads the secret, signs the assertion or reads Key Vault,
//!   and sends the request through [`client`]. [`credential::verify`] is what `check` uses.
//! * [`client`]: the daemon's HTTP client, one pool for every outbound call: the token protocols
//!   (Entra v1/v2, generic OAuth2, managed identity) and bearer calls to Power BI and Key Vault,
//!   with timeouts, a body cap, no redirects and a fresh request id per request. It knows no
//!   credential.
//! * [`token`]: the success body (v1 strings or v2 numbers) parsed into an [`token::AccessToken`]
//!   with bounded numbers (lifetime, `Retry-After`); `token/document.rs` renders it as the json
//!   document the sinks store and reads one back. [`error`] classifies failures of every token
//!   kind and of Power BI calls into one [`error::RefreshError`] (reason, class, server codes).
//! * `refresh`: one `Refresher` per token, whatever its kind (access token, embed
//!   token): the schedule, the backoff, the writes to its sinks (the files with the request
//!   permit, Redis in a step of its own, a failed write again soon), and what is reported to
//!   [`status`] and [`metrics`]. A token kind says only how it is fetched, bounded and rendered.
//!   `refresh/lanes.rs` holds the request lanes (main and slow), `refresh/shared.rs` what every
//!   tenant shares (client, semaphores, store, observer).
//! * [`schedule`]: pure functions deciding the next wake-up (refresh point, jitter, backoff,
//!   write retries, `Retry-After`, cron, the minimum interval between attempts).
//! * `fleet`: one claim, publish and release mechanism for every job a fleet of replicas does
//!   once (a tenant's access token, each embed token, the access probe): a replica adopts what
//!   another made, or does the job under a lease and shares it, through [`store`]. A job says
//!   only what its shared result is called, how to read it back and when it is worth taking
//!   (`tenant/access.rs` for the access token, `powerbi/jobs.rs` for the Power BI calls).
//! * [`sink`]: token-agnostic: writes a rendered document (bytes, expiry, owner) atomically to a
//!   file or to Redis ([`store`]: one multiplexed connection, newer-wins writes, notification).
//! * [`status`], [`metrics`] and [`http`]: each tenant's state, Prometheus metrics and the admin
//!   server (`/metrics`, `/healthz`, `/readyz`, `/status`; the admin page `/` in `http/page.rs`,
//!   `[server.tls]` in `http/tls.rs`, `[server.basic_auth]` in `http/auth.rs`, each needing only
//!   `config`, `status`, `safe_read` and the crates, never the server's own module); `notify`
//!   speaks sd_notify.
//! * [`clock`], `safe_read` and `rate`: the wall clock, reading files others control (size caps,
//!   regular-file checks, a deadline, off the async workers), and the request rate cap.
//! * `demo` (feature `demo`, on by default): the self-contained demonstration, against the
//!   simulated Entra ID, Power BI API and Key Vault of the `powerbi-tokend-sim` crate (in
//!   `sim/`), which the tests and the benchmarks use too. The simulator knows nothing of this
//!   crate; `cargo build --no-default-features` leaves it and `demo` out of the binary.
//!
//! There are no import circles, between modules or between the files of a folder: `config`
//! needs only `cloud` and `safe_read`; `token` needs only `clock` and `config`; `error` and
//! `schedule` need `token`'s bounded types; `client` needs `config`, `error`, `token` and
//! `schedule`; `credential` builds on `client`; `refresh` on `sink` and `store`; `powerbi` on
//! `refresh`, `client` and `credential` (an embed's datasource identity blobs are secrets, read
//! like a client secret); the tenant on all of these.
//!
//! The binary (`main.rs`) only parses the command line, sets up logging and signals, and calls
//! [`run`], [`once`] or [`check`].

#![forbid(unsafe_code)]
#![warn(missing_docs)]
// `RefreshError` carries Entra's diagnostics (about 150 bytes). It is returned at most once per
// refresh attempt, so boxing it would only add an allocation to every failure.
#![allow(clippy::result_large_err)]

pub mod client;
pub mod clock;
pub mod cloud;
pub mod config;
pub mod credential;
#[cfg(feature = "demo")]
pub mod demo;
pub mod error;
mod fleet;
pub mod http;
pub mod metrics;
mod notify;
pub mod powerbi;
mod rate;
mod refresh;
mod safe_read;
pub mod schedule;
pub mod sink;
pub mod status;
pub mod store;
mod supervisor;
mod tenant;
pub mod token;

use std::net::SocketAddr;
use std::sync::Arc;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use crate::client::{ClientError, TokenClient};
use crate::config::Config;
use crate::credential::CredentialExpiry;
use crate::credential::key_vault::{KeyVaultObserver, KeyVaults};
use crate::fleet::Fleet;
use crate::http::AdminState;
use crate::metrics::Metrics;
use crate::refresh::{Observer, RetryPolicy, Shared};
use crate::status::Registry;
use crate::store::Store;
use crate::supervisor::Supervisor;

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
    /// The admin address could not be bound.
    #[error("cannot listen on {addr} ([server] listen): {source}")]
    Listen {
        /// The configured address.
        addr: std::net::SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The metrics could not be registered.
    #[error("cannot set up metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// The admin server's certificate or key cannot be used.
    #[error("[server.tls] {}: {}", .0.key, .0)]
    AdminTls(#[from] http::tls::TlsProblem),
    /// The system's random generator failed.
    #[error("cannot make a random key for [server.basic_auth]")]
    Random,
}

/// What every tenant shares, for `config`; `metrics` counts what it is told (the daemon's),
/// `None` for `once`.
fn shared_for(config: &Config, metrics: Option<&Arc<Metrics>>) -> Result<Shared, ClientError> {
    let observer = metrics
        .cloned()
        .map(|metrics| -> Arc<dyn Observer> { metrics });
    let store = config
        .redis
        .as_ref()
        .map(|redis| Arc::new(Store::new(redis.clone(), config.daemon.ca_file.clone())));
    Ok(Shared {
        client: TokenClient::new(&config.daemon)?,
        key_vaults: config.key_vault.as_ref().map(|key_vault| {
            let observer = metrics
                .cloned()
                .map(|metrics| -> Arc<dyn KeyVaultObserver> { metrics });
            Arc::new(KeyVaults::new(key_vault, observer))
        }),
        limiter: Arc::new(Semaphore::new(config.daemon.max_concurrent_requests)),
        slow_lane: Arc::new(Semaphore::new(config.daemon.max_concurrent_requests)),
        slow_after: Arc::new(refresh::lanes::SlowAfter::new(
            refresh::lanes::SLOW_AFTER.min(config.daemon.request_timeout / 2),
        )),
        policy: RetryPolicy::from(&config.daemon),
        rate: config
            .daemon
            .max_requests_per_second
            .map(|per_second| Arc::new(rate::RateLimit::new(per_second))),
        store: store.clone(),
        fleet: match (&store, &config.fleet) {
            (Some(store), Some(fleet)) => Some(Arc::new(Fleet::new(store.clone(), fleet.clone()))),
            _ => None,
        },
        observer,
        once: false,
    })
}

/// A running daemon: tenant tasks plus the admin server.
pub struct Daemon {
    /// The configuration in effect (replaced by successful reloads).
    config: Config,
    /// Owns the tenant tasks.
    supervisor: Supervisor,
    /// Counters, histograms and scrape-time gauges.
    metrics: Arc<Metrics>,
    /// Where the admin server actually listens (`listen` may say port 0).
    admin_addr: SocketAddr,
    /// Cancelled when shutdown begins: `/healthz` turns 503.
    stopping: CancellationToken,
    /// Stops the admin server last, so it can be scraped while tenants finish.
    admin_stop: CancellationToken,
    /// The admin server task.
    admin_task: tokio::task::JoinHandle<()>,
    /// Hash of the config file's bytes, for `watch_config`.
    config_hash: Option<u64>,
    /// systemd's notification socket (does nothing outside systemd).
    notifier: Arc<notify::Notifier>,
    /// Every tenant's status, for readiness and the `STATUS=` line.
    registry: Registry,
    /// The admin server's basic auth, which a reload replaces.
    admin_auth: Arc<http::auth::Guard>,
}

/// The admin server, started.
struct Admin {
    /// Where it listens.
    addr: SocketAddr,
    /// Its task.
    task: tokio::task::JoinHandle<()>,
    /// Its basic auth.
    auth: Arc<http::auth::Guard>,
}

/// Binds the admin address, loads `[server.tls]` and starts serving until `admin_stop`.
async fn start_admin(
    config: &Config,
    state: AdminState,
    admin_stop: CancellationToken,
) -> Result<Admin, RunError> {
    let listen = config.server.listen;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|source| RunError::Listen {
            addr: listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| RunError::Listen {
        addr: listen,
        source,
    })?;
    for warning in config.server.warnings() {
        tracing::warn!("{warning}");
    }
    let auth = state.auth.clone();
    let task = tokio::spawn(http::serve(listener, state, admin_stop));
    let scheme = if config.server.tls.is_some() {
        "https"
    } else {
        "http"
    };
    tracing::info!(%addr, scheme, basic_auth = config.server.basic_auth.is_some(), "admin server listening");
    Ok(Admin { addr, task, auth })
}

impl Daemon {
    /// Binds the admin server, cleans up crash leftovers and starts every tenant.
    ///
    /// # Errors
    /// The admin address cannot be bound, or the HTTP client cannot be built.
    pub async fn start(mut config: Config) -> Result<Daemon, RunError> {
        let metrics = Arc::new(Metrics::new()?);
        metrics.set_per_tenant_metrics(config.server.per_tenant_metrics);
        let registry = Registry::new();
        let stopping = CancellationToken::new();
        let admin_stop = CancellationToken::new();
        let tls = match &config.server.tls {
            Some(files) => Some(http::tls::Reloading::start(files.clone()).await?),
            None => None,
        };
        let auth = http::auth::Guard::new(
            config.server.basic_auth.as_ref(),
            metrics.admin_auth_failures(),
        )
        .map_err(|_| RunError::Random)?;
        let state = AdminState {
            registry: registry.clone(),
            metrics: metrics.clone(),
            stopping: stopping.clone(),
            renderer: http::Renderer::start(metrics.clone(), registry.clone()),
            auth: Arc::new(auth),
            tls,
        };
        let admin = start_admin(&config, state, admin_stop.clone()).await?;
        let mut supervisor =
            Supervisor::new(shared_for(&config, Some(&metrics))?, registry.clone());
        let on_disk = sink::clean_up(&config.tenants).await;
        let started = supervisor
            .reconcile(&mut config.tenants, false, on_disk.as_ref())
            .await;
        drop(on_disk);
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
        let config_hash = file_hash(&config.path).await;
        Ok(Daemon {
            config,
            supervisor,
            metrics,
            admin_addr: admin.addr,
            stopping,
            admin_stop,
            admin_task: admin.task,
            admin_auth: admin.auth,
            config_hash,
            notifier: Arc::new(notify::Notifier::from_env()),
            registry,
        })
    }

    /// Where the admin server listens.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// Runs until [`Control::Shutdown`] arrives (or the channel closes), then shuts down.
    ///
    /// # Errors
    /// None today; the signature leaves room for fatal runtime conditions.
    pub async fn run(mut self, mut control: mpsc::Receiver<Control>) -> Result<(), RunError> {
        // systemd: READY=1 after the first pass, STATUS= now and then, the watchdog. Both tasks
        // end when shutdown begins.
        if self.notifier.enabled() {
            tokio::spawn(report_to_systemd(
                self.registry.clone(),
                self.notifier.clone(),
                self.stopping.clone(),
            ));
            if let Some(interval) = notify::watchdog_interval() {
                tokio::spawn(notify::watchdog(
                    self.notifier.clone(),
                    interval,
                    self.stopping.clone(),
                ));
            }
        }
        let mut watch = self
            .config
            .server
            .watch_config
            .then(|| tokio::time::interval(self.config.server.watch_interval));
        loop {
            let tick = async {
                match watch.as_mut() {
                    Some(interval) => {
                        interval.tick().await;
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                message = control.recv() => match message {
                    Some(Control::Reload) => self.reload("SIGHUP").await,
                    Some(Control::Shutdown) | None => break,
                },
                () = tick => {
                    let hash = file_hash(&self.config.path).await;
                    if hash.is_some() && hash != self.config_hash {
                        self.config_hash = hash;
                        self.reload("file change").await;
                    }
                }
            }
        }
        self.shutdown().await;
        Ok(())
    }

    /// Re-reads the config file; a bad file keeps the running configuration. systemd hears
    /// `RELOADING=1` before and `READY=1` after, whatever the outcome.
    pub async fn reload(&mut self, trigger: &str) {
        self.notifier.reloading();
        self.reload_config(trigger).await;
        if self.notifier.enabled() {
            self.notifier
                .send(&format!("READY=1\nSTATUS={}", status_line(&self.registry)));
        }
        // Accepted or rejected, the reload parsed the whole file, and what it built only to
        // compare is freed by now. On a thread of its own, not awaited: the hook walks the
        // allocator's free lists, and neither the next signal nor the blocking pool's file
        // writes should wait for it.
        if let Some(hook) = AFTER_RELOAD.get().copied() {
            let _ = std::thread::Builder::new()
                .name("after-reload".to_owned())
                .spawn(hook);
        }
    }

    async fn reload_config(&mut self, trigger: &str) {
        let mut new = match config::load_reusing(&self.config.path, &self.config.tenants).await {
            Ok(new) => new,
            Err(err) => {
                self.metrics.reload(false);
                for line in err.to_string().lines() {
                    tracing::error!(
                        trigger,
                        problem = line,
                        "reload rejected; the previous configuration stays in effect"
                    );
                }
                return;
            }
        };
        if new.server.listen != self.config.server.listen {
            tracing::warn!("[server] listen changes take effect after a restart");
        }
        let files = |server: &config::ServerConfig| {
            server
                .tls
                .as_ref()
                .map(|tls| (tls.cert_file.clone(), tls.key_file.clone()))
        };
        if files(&new.server) != files(&self.config.server) {
            tracing::warn!(
                "[server.tls] changes take effect after a restart (a changed certificate file is reloaded without one)"
            );
        }
        let restart_all = new.daemon != self.config.daemon
            || new.redis != self.config.redis
            || new.fleet != self.config.fleet
            || new.key_vault != self.config.key_vault;
        if restart_all {
            match shared_for(&new, Some(&self.metrics)) {
                // Every task must pick up the new knobs, so all restart; warm start keeps healthy
                // tenants from refetching.
                Ok(shared) => self.supervisor.set_shared(shared),
                Err(err) => {
                    self.metrics.reload(false);
                    tracing::error!(trigger, error = %err, "reload rejected; the previous configuration stays in effect");
                    return;
                }
            }
        }
        let on_disk = sink::clean_up(&new.tenants).await;
        let result = self
            .supervisor
            .reconcile(&mut new.tenants, restart_all, on_disk.as_ref())
            .await;
        drop(on_disk);
        // The next scrape follows the new per-tenant metrics mode, the next request the users.
        self.metrics
            .set_per_tenant_metrics(new.server.per_tenant_metrics);
        self.admin_auth.set(new.server.basic_auth.as_ref());
        self.metrics.reload(true);
        tracing::info!(
            trigger,
            added = ?result.added,
            removed = ?result.removed,
            changed = ?result.changed,
            unchanged = result.unchanged,
            "configuration reloaded"
        );
        self.config_hash = file_hash(&new.path).await;
        self.config = new;
    }

    async fn shutdown(self) {
        let grace = self.config.daemon.shutdown_grace;
        self.notifier.send("STOPPING=1");
        self.stopping.cancel();
        tracing::info!(grace = %humantime::format_duration(grace), "shutting down: no new refreshes, waiting for those in flight");
        if self.supervisor.shutdown(grace).await {
            tracing::info!("shutdown complete");
        } else {
            tracing::warn!(
                "shutdown grace period elapsed with refreshes still in flight; their files were not replaced"
            );
        }
        self.admin_stop.cancel();
        let _ = self.admin_task.await;
    }
}

/// Warnings about the host `check` runs on, as the user it runs as: a config file that others
/// may read or write, and token directories this user cannot create or write.
async fn local_warnings(config: &Config) -> Vec<String> {
    let path = config.path.clone();
    let mut directories: Vec<(String, std::path::PathBuf)> = Vec::new();
    for tenant in &config.tenants {
        for sink in &tenant.sinks {
            if let config::SinkConfig::File(file) = sink
                && let Some(dir) = file.path.parent()
                && !directories.iter().any(|(_, seen)| seen == dir)
            {
                directories.push((tenant.name.clone(), dir.to_owned()));
            }
        }
    }
    tokio::task::spawn_blocking(move || {
        let mut warnings = Vec::new();
        if let Ok(metadata) = std::fs::metadata(&path) {
            use std::os::unix::fs::PermissionsExt;
            let mode = metadata.permissions().mode() & 0o777;
            if mode & !0o640 != 0 {
                warnings.push(format!(
                    "{} is mode {mode:04o}; 0640 or narrower keeps other users from reading which secrets it names and from changing it",
                    path.display()
                ));
            }
        }
        let uid = rustix::process::getuid().as_raw();
        for (tenant, dir) in directories {
            if let Some(problem) = unwritable(&dir) {
                warnings.push(format!(
                    "tenant {tenant:?}: {problem} as uid {uid}; the token files cannot be written there (run check as the service's user)"
                ));
            }
        }
        warnings
    })
    .await
    .unwrap_or_default()
}

/// Why the current user cannot write files into `dir` (or create it), if it cannot.
fn unwritable(dir: &std::path::Path) -> Option<String> {
    use rustix::fs::{Access, access};
    let mut existing = dir;
    while !existing.exists() {
        existing = existing.parent()?;
    }
    if !existing.is_dir() {
        return Some(format!("{} is not a directory", existing.display()));
    }
    match access(existing, Access::WRITE_OK | Access::EXEC_OK) {
        Ok(()) => None,
        Err(err) if existing == dir => Some(format!(
            "cannot write the token directory {}: {err}",
            dir.display()
        )),
        Err(err) => Some(format!(
            "cannot create the token directory {} ({} is not writable: {err})",
            dir.display(),
            existing.display()
        )),
    }
}

/// `"9998/10000 healthy, 2 failing"` (and how many are still waiting for their first attempt).
fn status_line(registry: &Registry) -> String {
    use status::TenantState;
    let counts = registry.state_counts(std::time::SystemTime::now());
    let count = |state: TenantState| {
        TenantState::ALL
            .iter()
            .position(|s| *s == state)
            .map_or(0, |index| counts[index])
    };
    let total: usize = counts.iter().sum();
    let healthy = count(TenantState::Healthy);
    let pending = count(TenantState::Pending);
    let failing = total - healthy - pending;
    if pending > 0 {
        format!("{healthy}/{total} healthy, {failing} failing, {pending} starting")
    } else {
        format!("{healthy}/{total} healthy, {failing} failing")
    }
}

/// How often a slow start asks systemd for more time, and how much.
const EXTEND_EVERY: std::time::Duration = std::time::Duration::from_secs(10);
const EXTEND_BY: std::time::Duration = std::time::Duration::from_secs(30);

/// Tells systemd `READY=1` once every tenant has had its first attempt or warm start (failures
/// count: Entra being down at boot must not make systemd give up), then refreshes `STATUS=`
/// every [`notify::STATUS_INTERVAL`] until shutdown.
///
/// A start that takes long (thousands of tenants behind a hanging endpoint, each waiting for its
/// request timeout) asks systemd for more time with `EXTEND_TIMEOUT_USEC=` every
/// [`EXTEND_EVERY`], as long as tenants keep finishing their first attempts; a start that makes
/// no progress gets no extension, and systemd's start timeout applies.
async fn report_to_systemd(
    registry: Registry,
    notifier: Arc<notify::Notifier>,
    stop: CancellationToken,
) {
    let mut last_extension = tokio::time::Instant::now();
    let mut pending_then = usize::MAX;
    // Woken when the last pending tenant finishes its first attempt, and every EXTEND_EVERY
    // to ask for more time: nothing looks at the tenants in between.
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = registry.settled() => break,
            () = tokio::time::sleep_until(last_extension + EXTEND_EVERY) => {}
        }
        let pending = registry.pending();
        if pending < pending_then {
            notifier.send(&format!(
                "EXTEND_TIMEOUT_USEC={}\nSTATUS={}",
                EXTEND_BY.as_micros(),
                status_line(&registry)
            ));
        }
        pending_then = pending;
        last_extension = tokio::time::Instant::now();
    }
    notifier.send(&format!("READY=1\nSTATUS={}", status_line(&registry)));
    tracing::info!("told systemd the daemon is ready");
    let mut every = tokio::time::interval(notify::STATUS_INTERVAL);
    every.tick().await;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = every.tick() => notifier.send(&format!("STATUS={}", status_line(&registry))),
        }
    }
}

/// A hash of a file's bytes (following symlinks, so a ConfigMap's `..data` swap is seen).
async fn file_hash(path: &std::path::Path) -> Option<u64> {
    let bytes = safe_read::read(path, config::MAX_CONFIG_BYTES, safe_read::Symlinks::Follow)
        .await
        .ok()?;
    Some(token::fnv1a(&bytes))
}

/// What to run after a reload, once the replaced configuration is dropped (see
/// [`after_reload`]).
static AFTER_RELOAD: std::sync::OnceLock<fn()> = std::sync::OnceLock::new();

/// Sets what the daemon runs after each reload (accepted or rejected), on a thread of its own,
/// once the replaced configuration and what the reload built only to compare have been
/// dropped: the binary gives that memory back to the system there. A reload of a hundred
/// thousand tenants reads the whole file again next to the running configuration, and the
/// allocator would otherwise keep the freed hundred-odd megabytes mapped. (A changed or removed
/// tenant's old configuration lives on until its step in flight, if any, ends.) Only the first
/// call counts.
pub fn after_reload(hook: fn()) {
    let _ = AFTER_RELOAD.set(hook);
}

/// Runs the daemon until a [`Control::Shutdown`] arrives (or the channel closes).
///
/// # Errors
/// Only set-up failures; refresh failures are handled per tenant and never end the daemon.
pub async fn run(config: Config, control: mpsc::Receiver<Control>) -> Result<(), RunError> {
    Daemon::start(config).await?.run(control).await
}

/// Outcome of `once` for one tenant.
#[derive(Debug)]
pub struct OnceOutcome {
    /// Tenant name.
    pub tenant: String,
    /// Ok, or why not.
    pub result: Result<(), error::RefreshError>,
}

/// Fetches every tenant's token once and writes every sink (the `once` command): one attempt
/// per tenant, each failure final.
///
/// # Errors
/// Only set-up failures; per-tenant failures are in the outcomes.
pub async fn once(config: &Config) -> Result<Vec<OnceOutcome>, RunError> {
    let shared = Arc::new(Shared {
        once: true,
        ..shared_for(config, None)?
    });
    sink::clean_up(&config.tenants).await;
    let mut tasks = tokio::task::JoinSet::new();
    for tenant in &config.tenants {
        let refresher = tenant::Tenant::new(tenant.clone(), shared.clone(), Default::default());
        let name = tenant.name.clone();
        tasks.spawn(async move {
            OnceOutcome {
                tenant: name,
                result: refresher.once().await,
            }
        });
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

/// How far ahead `check` warns about an expiring credential.
pub const CREDENTIAL_WARNING_DAYS: i64 = 30;

/// The warning for a credential of `tenant` that expires within [`CREDENTIAL_WARNING_DAYS`] of
/// `now`, if it does.
pub fn expiry_warning(tenant: &str, expiry: CredentialExpiry, now: i64) -> Option<String> {
    let CredentialExpiry { expires_on, kind } = expiry;
    let days = expires_on.saturating_sub(now) / 86_400;
    (expires_on > now && days < CREDENTIAL_WARNING_DAYS).then(|| {
        format!(
            "tenant {tenant:?}: the {kind} expires on {} (in {days} day(s)); rotate it before then",
            clock::format_date(expires_on)
        )
    })
}

/// `check --online`: reads every Key Vault URL the tenants name, once per identity that reads
/// it, through the readers the daemon uses ([`KeyVaults`]): the same identity for each tenant,
/// the same challenges followed (to another cloud's vault, or to an allowed tenant) and the
/// same refusals. A problem is reported at the line of the tenant's credential key.
async fn check_key_vault(
    config: &Config,
    credentials: &[config::TenantCredential],
    now: i64,
    problems: &mut Vec<config::Problem>,
    warnings: &mut Vec<String>,
) {
    let Some(key_vault) = &config.key_vault else {
        return;
    };
    let client = match TokenClient::new(&config.daemon) {
        Ok(client) => client,
        Err(err) => {
            problems.push(config::Problem {
                column: None,
                line: None,
                key: Some("daemon.ca_file".to_owned()),
                message: err.to_string(),
            });
            return;
        }
    };
    let key_vaults = KeyVaults::new(key_vault, None);
    let mut seen = std::collections::HashSet::new();
    for tenant in &config.tenants {
        let Some((url, key, certificate)) = key_vault_reference(tenant) else {
            continue;
        };
        let Some(reader) = key_vaults.reader(tenant) else {
            continue;
        };
        if !seen.insert((reader.name().clone(), url.clone())) {
            continue;
        }
        let line = credentials
            .iter()
            .find(|credential| credential.tenant == tenant.name)
            .and_then(|credential| credential.line)
            .or(tenant.line);
        let problem = |message: String| config::Problem {
            column: None,
            line,
            key: Some(format!("tenant {:?}: {key}", tenant.name)),
            message,
        };
        match key_vault_expiry(reader, &client, url, certificate).await {
            Err(message) => problems.push(problem(message)),
            Ok(Some(CredentialExpiry { expires_on, kind })) if expires_on <= now => {
                problems.push(problem(format!(
                    "the {kind} in {url} expired on {}",
                    clock::format_date(expires_on)
                )));
            }
            Ok(Some(expiry)) => warnings.extend(expiry_warning(&tenant.name, expiry, now)),
            Ok(None) => {}
        }
    }
}

/// The Key Vault URL a tenant's credential is read from, the key that names it, and the
/// certificate's settings when the URL holds a certificate; `None` for a credential kept
/// anywhere else.
fn key_vault_reference(
    tenant: &config::TenantConfig,
) -> Option<(&String, &'static str, Option<&config::CertificateConfig>)> {
    match &tenant.credential {
        config::CredentialConfig::ClientSecret {
            source: config::SecretSource::KeyVault(url),
            ..
        } => Some((url, "client_secret", None)),
        config::CredentialConfig::Certificate(certificate) => certificate
            .key_vault
            .as_ref()
            .map(|url| (url, "client_certificate", Some(certificate))),
        _ => None,
    }
}

/// Reads the secret at `url` and tells when it expires: a certificate's `notAfter` (the
/// secret must then be its PEM with the key), else the secret's own expiry, if it has one.
/// `Err` is the problem to report.
async fn key_vault_expiry(
    key_vault: &credential::key_vault::KeyVault,
    client: &TokenClient,
    url: &str,
    certificate: Option<&config::CertificateConfig>,
) -> Result<Option<CredentialExpiry>, String> {
    use secrecy::ExposeSecret;
    let secret = key_vault
        .secret(client, url)
        .await
        .map_err(|err| err.to_string())?;
    let Some(certificate) = certificate else {
        return Ok(secret.expires_on.map(CredentialExpiry::client_secret));
    };
    secret.require_pem(url).map_err(|err| err.to_string())?;
    match credential::certificate::Certificate::from_pem(
        certificate,
        secret.value.expose_secret().as_bytes(),
        None,
    ) {
        Ok(loaded) => Ok(Some(CredentialExpiry::certificate(loaded.not_after()))),
        Err(err) => Err(format!(
            "{url} is not a PEM certificate with its key (content type {}): {err}",
            secret.content_type.as_deref().unwrap_or("none")
        )),
    }
}

/// `check`: the admin server's certificate and key load and fit each other; the problem names
/// the key of `[server.tls]` and its line.
async fn check_admin_tls(server: &config::ServerConfig) -> Option<config::Problem> {
    let tls = server.tls.as_ref()?;
    let problem = http::tls::verify(tls).await.err()?;
    let line = if problem.key == "key_file" {
        tls.lines[1]
    } else {
        tls.lines[0]
    };
    Some(config::Problem {
        line,
        column: None,
        key: Some(format!("server.tls.{}", problem.key)),
        message: problem.message,
    })
}

/// A configuration that passed `check`, with early warnings about expiring credentials.
#[derive(Debug)]
pub struct Checked {
    /// The configuration.
    pub config: Config,
    /// One line per credential that expires within [`CREDENTIAL_WARNING_DAYS`].
    pub warnings: Vec<String>,
}

/// Validates a config file and reads every secret, certificate and token file it names, without
/// contacting Entra; with `[redis]`, connects and asks for the server's time (a failure is a
/// warning). Every
/// well-formed credential is read, even in a tenant with other problems, so one run reports
/// everything.
///
/// # Errors
/// Every problem found, in file order.
///
/// With `online`, every secret and certificate kept in Azure Key Vault is read once with the
/// Key Vault identity of its tenant, as the daemon reads it: access problems (403, 404, a
/// challenge to a tenant the identity may not follow), expired secrets and certificates that
/// are not PEM are problems; secrets expiring soon are warnings.
pub async fn check(path: &std::path::Path, online: bool) -> Result<Checked, config::ConfigError> {
    let now = clock::unix_now();
    let (loaded, credentials) = config::load_for_check(path).await;
    let (config, mut err) = match loaded {
        Ok(config) => {
            let err = config::ConfigError {
                path: config.path.clone(),
                problems: Vec::new(),
            };
            (Some(config), err)
        }
        Err(err) => (None, err),
    };
    let mut warnings = Vec::new();
    for tenant in &credentials {
        let verified = credential::verify(tenant, now).await;
        err.problems.extend(verified.problems);
        warnings.extend(
            verified
                .expiry
                .and_then(|expiry| expiry_warning(&tenant.tenant, expiry, now)),
        );
    }
    if let Some(config) = &config {
        if config.tenants.is_empty() {
            err.problems.push(config::Problem {
                column: None,
                line: None,
                key: None,
                message: "no [[tenant]]: the daemon would have nothing to refresh; add at least one [[tenant]] table".to_owned(),
            });
        }
        warnings.extend(local_warnings(config).await);
        warnings.extend(config.server.warnings());
        err.problems.extend(check_admin_tls(&config.server).await);
    }
    if let Some(config) = &config
        && let Some(redis) = &config.redis
    {
        // The password is a secret reference like any other: unreadable is a problem. Redis
        // being unreachable from where `check` runs is only a warning: CI and build hosts often
        // cannot reach production Redis.
        if let Some(source) = &redis.password
            && let Err(cause) = credential::read_secret(source).await
        {
            err.problems.push(config::Problem {
                column: None,
                line: None,
                key: Some("redis.password".to_owned()),
                message: cause.to_string(),
            });
        } else {
            let store = Store::new(redis.clone(), config.daemon.ca_file.clone());
            if let Err(unreachable) = store.answers().await {
                warnings.push(format!(
                    "{unreachable}; tenants that write to Redis will fail with reason sink until it can be reached"
                ));
            }
        }
    }
    if online && let Some(config) = &config {
        check_key_vault(config, &credentials, now, &mut err.problems, &mut warnings).await;
    }
    match config {
        Some(config) if err.problems.is_empty() => Ok(Checked { config, warnings }),
        _ => {
            err.problems.sort_by_key(|p| p.line.unwrap_or(usize::MAX));
            Err(err)
        }
    }
}
