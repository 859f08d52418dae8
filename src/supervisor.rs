//! Starts, stops and reconciles tenant tasks.
//!
//! Shutdown follows mini-redis: notify every task (a shared `CancellationToken`), then wait for
//! every task to finish (a `TaskTracker`), bounded by a grace period. Reload is a reconcile: a
//! removed tenant's task is cancelled, a new tenant gets a task, a changed tenant's old task is
//! cancelled and awaited before the new one starts (so two tasks never write one file), and an
//! unchanged tenant is not touched at all — it keeps its token and its schedule.
//!
//! A tenant task that panics (a bug: no input is meant to reach a panic) is restarted after
//! [`restart_delay`], which doubles from [`RESTART_DELAY_MIN`] to [`RESTART_DELAY_MAX`] while
//! the task keeps panicking. The restarted task warm-starts from its token file like a restarted
//! process would, so one tenant's bug neither kills that tenant for good nor, through a failing
//! liveness probe, every other tenant with it. Each panic is logged at ERROR with its message,
//! counted in `powerbi_tokend_task_panics_total` and in the tenant's `/status` `task_panics`.

use futures_util::FutureExt;
use std::collections::HashMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::TenantConfig;
use crate::schedule;
use crate::status::{self, Registry, StatusHandle};
use crate::tenant::{Observer, Shared, Tenant};

/// The wait before the first restart of a tenant task that panicked: long enough that a task
/// panicking at start-up costs one log line a second at most, short enough that a one-off
/// panic goes unnoticed by the tenant's consumers.
pub const RESTART_DELAY_MIN: Duration = Duration::from_secs(1);

/// The longest wait between restarts of a task that keeps panicking; also how long a restarted
/// task must run before its next panic counts as a new one (the delay starts over).
pub const RESTART_DELAY_MAX: Duration = Duration::from_secs(300);

/// The wait before restarting a task that panicked after running for `ran_for`, given the wait
/// before its previous restart (`None` if it never panicked before).
///
/// Doubling from [`RESTART_DELAY_MIN`] up to [`RESTART_DELAY_MAX`] while it keeps panicking
/// soon after each restart; back to the minimum once it ran longer than the maximum.
pub fn restart_delay(previous: Option<Duration>, ran_for: Duration) -> Duration {
    match previous {
        Some(previous) if ran_for < RESTART_DELAY_MAX => previous
            .saturating_mul(2)
            .clamp(RESTART_DELAY_MIN, RESTART_DELAY_MAX),
        _ => RESTART_DELAY_MIN,
    }
}

/// One run of a tenant task, boxed so a sleeping tenant's task stays small (only the running
/// attempt's state lives on the heap, once).
type TenantRun = Pin<Box<dyn Future<Output = ()> + Send>>;

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
        // The first run's tenant is built here, not in the task, so its status (credential
        // expiry) is filled in before `reconcile` returns, as it always was.
        let mut first = Some(Box::new(Tenant::new(
            config.clone(),
            self.shared.clone(),
            status.clone(),
        )));
        let shared = self.shared.clone();
        let observer = self.shared.observer.clone();
        let run = {
            let (config, status, cancel) = (config.clone(), status.clone(), cancel.clone());
            move || -> TenantRun {
                let tenant = match first.take() {
                    Some(tenant) => *tenant,
                    None => Tenant::new(config.clone(), shared.clone(), status.clone()),
                };
                Box::pin(tenant.run(cancel.clone()))
            }
        };
        let task = self.tracker.spawn(supervise(
            config.name.clone(),
            status,
            observer,
            cancel.clone(),
            run,
        ));
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

/// Runs a tenant's task until `cancel` fires, restarting it after each panic (see the module
/// doc). `run` builds a fresh tenant and runs it until cancelled; a fresh one because the old one
/// was lost with the panic, and because its state (a half-written token, a backoff) is exactly
/// what may have led to the panic.
async fn supervise<F>(
    name: String,
    status: StatusHandle,
    observer: Option<Arc<dyn Observer>>,
    cancel: CancellationToken,
    mut run: F,
) where
    F: FnMut() -> TenantRun,
{
    let mut previous_delay = None;
    loop {
        let started = tokio::time::Instant::now();
        // `run()` is called inside the guarded future, so a panic while building the tenant is
        // caught too.
        let outcome = AssertUnwindSafe(async { run().await }).catch_unwind().await;
        let Err(panic) = outcome else {
            return;
        };
        let message = panic
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        drop(panic);
        let delay = restart_delay(previous_delay, started.elapsed());
        previous_delay = Some(delay);
        {
            let mut status = status::lock(&status);
            status.task_panics = status.task_panics.saturating_add(1);
            status.next_refresh = Some(schedule::later(SystemTime::now(), delay));
        }
        if let Some(observer) = &observer {
            observer.task_panicked();
        }
        if cancel.is_cancelled() {
            tracing::error!(tenant = %name, panic = %message, "refresh task panicked while stopping");
            return;
        }
        tracing::error!(
            tenant = %name,
            panic = %message,
            restart_in = %humantime::format_duration(delay),
            "refresh task panicked (a bug: please report it with this line); restarting it"
        );
        tokio::select! {
            biased;
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(delay) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

    #[test]
    fn restart_delay_doubles_while_crash_looping_and_starts_over_after_a_long_run() {
        let quick = Duration::from_millis(10);
        assert_eq!(restart_delay(None, quick), RESTART_DELAY_MIN);
        let mut delay = None;
        let mut seen = Vec::new();
        for _ in 0..12 {
            let next = restart_delay(delay, quick);
            seen.push(next.as_secs());
            delay = Some(next);
        }
        assert_eq!(seen, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300]);
        // A task that ran longer than the longest delay panicked anew: back to the minimum.
        assert_eq!(
            restart_delay(Some(RESTART_DELAY_MAX), RESTART_DELAY_MAX),
            RESTART_DELAY_MIN
        );
        assert_eq!(restart_delay(Some(Duration::MAX), quick), RESTART_DELAY_MAX);
        assert_eq!(
            restart_delay(Some(Duration::ZERO), quick),
            RESTART_DELAY_MIN
        );
    }

    #[derive(Debug, Default)]
    struct CountingObserver {
        panics: AtomicU64,
    }

    impl Observer for CountingObserver {
        fn request_finished(&self, _: Duration) {}

        fn task_panicked(&self) {
            self.panics.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// No input is known to reach a panic any more, so the panic is provoked by a stand-in
    /// tenant run: it panics twice, then runs until cancelled.
    #[tokio::test(start_paused = true)]
    async fn hardening_panicked_tenant_is_restarted() {
        let status = StatusHandle::default();
        let cancel = CancellationToken::new();
        let observer = Arc::new(CountingObserver::default());
        let (started, mut starts) = tokio::sync::mpsc::unbounded_channel();
        let runs = Arc::new(AtomicU32::new(0));
        let run = {
            let (cancel, runs) = (cancel.clone(), runs.clone());
            move || -> TenantRun {
                let run = runs.fetch_add(1, Ordering::SeqCst);
                let (started, cancel) = (started.clone(), cancel.clone());
                Box::pin(async move {
                    let _ = started.send(tokio::time::Instant::now());
                    if run < 2 {
                        panic!("stand-in panic {run}");
                    }
                    cancel.cancelled().await;
                })
            }
        };
        let task = tokio::spawn(supervise(
            "contoso".to_owned(),
            status.clone(),
            Some(observer.clone() as Arc<dyn Observer>),
            cancel.clone(),
            run,
        ));
        let first = starts.recv().await.unwrap();
        let second = starts.recv().await.unwrap();
        let third = starts.recv().await.unwrap();
        assert_eq!(second - first, RESTART_DELAY_MIN);
        assert_eq!(third - second, RESTART_DELAY_MIN * 2);
        assert_eq!(status::lock(&status).task_panics, 2);
        assert_eq!(observer.panics.load(Ordering::SeqCst), 2);
        // The third run is alive; cancelling it ends the supervision without a restart.
        assert!(!task.is_finished());
        cancel.cancel();
        task.await.unwrap();
        assert_eq!(runs.load(Ordering::SeqCst), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancelled_tenant_waiting_for_its_restart_stops_at_once() {
        let status = StatusHandle::default();
        let cancel = CancellationToken::new();
        let runs = Arc::new(AtomicU32::new(0));
        let run = {
            let runs = runs.clone();
            move || -> TenantRun {
                runs.fetch_add(1, Ordering::SeqCst);
                Box::pin(async { panic!("always") })
            }
        };
        let task = tokio::spawn(supervise(
            "contoso".to_owned(),
            status.clone(),
            None,
            cancel.clone(),
            run,
        ));
        // Await the condition: the task panics, counts it, then waits a second to restart.
        while status::lock(&status).task_panics == 0 {
            tokio::task::yield_now().await;
        }
        cancel.cancel();
        task.await.unwrap();
        assert_eq!(runs.load(Ordering::SeqCst), 1);
    }
}
