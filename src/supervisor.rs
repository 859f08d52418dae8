//! Starts, stops and reconciles tenant tasks.
//!
//! Shutdown follows mini-redis: notify every task (a shared `CancellationToken`), then wait for
//! every task to finish (a `TaskTracker`), bounded by a grace period. Reload is a reconcile: a
//! removed tenant's task is cancelled, a new tenant gets a task, a changed tenant's old task is
//! cancelled and awaited before the new one starts (so two tasks never write one file), and an
//! unchanged tenant is not touched at all — it keeps its token and its schedule.

use futures_util::FutureExt;
use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::TenantConfig;
use crate::status::{self, Registry};
use crate::tenant::{Shared, Tenant};

/// A running tenant task.
struct Running {
    /// The settings it was started with, to detect changes on reload.
    config: Arc<TenantConfig>,
    /// Cancels just this tenant (a child of the supervisor's token).
    cancel: CancellationToken,
    /// Awaited when the tenant is replaced, so the old task is gone before the new one starts.
    task: JoinHandle<()>,
}

/// What a reconcile did, for the log.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Reconciled {
    /// Tenants started.
    pub added: Vec<String>,
    /// Tenants stopped for good.
    pub removed: Vec<String>,
    /// Tenants restarted with new settings.
    pub changed: Vec<String>,
    /// Tenants left running as they were.
    pub unchanged: usize,
}

/// Owns every tenant task.
pub struct Supervisor {
    /// Handed to every task.
    shared: Shared,
    /// Status of every tenant, shared with the admin server.
    registry: Registry,
    /// Parent of every tenant's cancel token: cancelling it stops all.
    root: CancellationToken,
    /// Lets shutdown wait for every task, including ones being replaced.
    tracker: TaskTracker,
    /// Tasks by tenant name.
    running: HashMap<String, Running>,
}

impl Supervisor {
    /// A supervisor with no tenants yet.
    pub fn new(shared: Shared, registry: Registry) -> Self {
        Supervisor {
            shared,
            registry,
            root: CancellationToken::new(),
            tracker: TaskTracker::new(),
            running: HashMap::new(),
        }
    }

    /// Replaces the shared pieces used by tasks started from now on (a reload with new knobs).
    pub fn set_shared(&mut self, shared: Shared) {
        self.shared = shared;
    }

    /// Makes the running set match `tenants`. With `restart_all`, running tenants are restarted
    /// even when unchanged (new daemon-wide knobs); warm start keeps them from refetching.
    pub async fn reconcile(
        &mut self,
        tenants: &[Arc<TenantConfig>],
        restart_all: bool,
    ) -> Reconciled {
        let mut result = Reconciled::default();
        let wanted: HashMap<&str, &Arc<TenantConfig>> =
            tenants.iter().map(|t| (t.name.as_str(), t)).collect();
        let gone: Vec<String> = self
            .running
            .keys()
            .filter(|name| !wanted.contains_key(name.as_str()))
            .cloned()
            .collect();
        for name in gone {
            if let Some(running) = self.running.remove(&name) {
                stop(running).await;
            }
            // Its status, and so every metric series of it, goes with it.
            self.registry.remove(&name);
            result.removed.push(name);
        }
        for tenant in tenants {
            match self.running.get(&tenant.name) {
                Some(running) if running.config == *tenant && !restart_all => {
                    result.unchanged += 1;
                    continue;
                }
                Some(_) => {
                    if let Some(running) = self.running.remove(&tenant.name) {
                        stop(running).await;
                    }
                    result.changed.push(tenant.name.clone());
                }
                None => result.added.push(tenant.name.clone()),
            }
            self.start(tenant.clone());
        }
        result.removed.sort();
        result
    }

    fn start(&mut self, config: Arc<TenantConfig>) {
        let status = self.registry.insert(&config.name);
        let cancel = self.root.child_token();
        let tenant = Tenant::new(config.clone(), self.shared.clone(), status.clone());
        let name = config.name.clone();
        // Boxed: captured by the async block below and then awaited, an unboxed future would be
        // laid out twice in the task (over a kilobyte per tenant).
        let run = Box::pin(AssertUnwindSafe(tenant.run(cancel.clone())).catch_unwind());
        let task = self.tracker.spawn(async move {
            // A panic is a bug; it must not take other tenants down, and it must be visible:
            // `/healthz` turns 503 so the process gets restarted.
            if let Err(panic) = run.await {
                let message = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                status::lock(&status).task_panicked = true;
                tracing::error!(tenant = %name, panic = %message, "refresh task panicked");
            }
        });
        self.running.insert(
            config.name.clone(),
            Running {
                config,
                cancel,
                task,
            },
        );
    }

    /// Stops every task: no new attempts start; attempts in flight get `grace` to finish.
    /// Returns whether every task finished in time.
    pub async fn shutdown(self, grace: Duration) -> bool {
        self.root.cancel();
        self.tracker.close();
        tokio::time::timeout(grace, self.tracker.wait())
            .await
            .is_ok()
    }
}

async fn stop(running: Running) {
    running.cancel.cancel();
    let _ = running.task.await;
}
