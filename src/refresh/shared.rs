//! What every refresher shares with the others: the HTTP client, the request lanes and the rate
//! cap, the retry knobs, Redis and the fleet, and the observer that counts for the metrics.

use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::client::TokenClient;
use crate::config::DaemonConfig;
use crate::error::Reason;
use crate::fleet::{Fleet, Kind};

use super::lanes::SlowAfter;

/// Retry knobs, copied from the daemon config.
#[derive(Clone, Copy, Debug)]
pub struct RetryPolicy {
    /// Backoff floor.
    pub backoff_min: Duration,
    /// Backoff ceiling.
    pub backoff_max: Duration,
    /// Interval between attempts while a tenant is misconfigured.
    pub permanent_retry_interval: Duration,
}

impl From<&DaemonConfig> for RetryPolicy {
    fn from(daemon: &DaemonConfig) -> Self {
        RetryPolicy {
            backoff_min: daemon.backoff_min,
            backoff_max: daemon.backoff_max,
            permanent_retry_interval: daemon.permanent_retry_interval,
        }
    }
}

/// What every refresher needs from the daemon.
#[derive(Clone, Debug)]
pub struct Shared {
    /// The HTTP client (shared pool).
    pub client: TokenClient,
    /// Reads secrets and certificates kept in Azure Key Vault (`[key_vault]`): a reader per
    /// identity, each tenant's chosen by its `key_vault_credential`.
    pub key_vaults: Option<Arc<crate::credential::key_vault::KeyVaults>>,
    /// Caps token requests in flight across all tenants: the lane healthy tenants use.
    pub limiter: Arc<Semaphore>,
    /// The slow lane, as large again: requests still running after `slow_after`, and every
    /// request of a tenant whose last one was slow or timed out, wait and run here, so an
    /// endpoint that hangs never holds the permits healthy tenants need.
    pub slow_lane: Arc<Semaphore>,
    /// When a request in the main lane moves to the slow lane.
    pub slow_after: Arc<SlowAfter>,
    /// Retry knobs.
    pub policy: RetryPolicy,
    /// `[daemon] max_requests_per_second`, when set.
    pub rate: Option<Arc<crate::rate::RateLimit>>,
    /// The shared Redis, when `[redis]` is configured.
    pub store: Option<Arc<crate::store::Store>>,
    /// Fleet mode, when enabled.
    pub fleet: Option<Arc<Fleet>>,
    /// Hook called after every finished attempt (metrics); `None` in `once` and tests.
    pub observer: Option<Arc<dyn Observer>>,
    /// `once`: one attempt per tenant, so failures are logged as final, with no retry planned.
    pub once: bool,
}

impl Shared {
    /// Fleet mode: whether a result made by replica `by` was adopted from another replica;
    /// `false` outside fleet mode or for a result of unknown origin.
    pub fn adopted(&self, by: Option<&str>) -> bool {
        match (&self.fleet, by) {
            (Some(fleet), Some(by)) => fleet.adopted(by),
            _ => false,
        }
    }

    /// A Power BI call's turn: a permit of the request limiter, then the rate cap, as token
    /// requests take theirs. `None` when `cancel` fires first; `Some(None)` when the limiter is
    /// closed (never: it lives as long as the daemon).
    pub async fn api_turn(
        &self,
        cancel: &CancellationToken,
    ) -> Option<Option<OwnedSemaphorePermit>> {
        let permit = tokio::select! {
            biased;
            () = cancel.cancelled() => return None,
            permit = self.limiter.clone().acquire_owned() => permit.ok(),
        };
        if let Some(rate) = &self.rate {
            let waited = tokio::select! {
                biased;
                () = cancel.cancelled() => return None,
                waited = rate.acquire() => waited,
            };
            if let (Some(observer), false) = (&self.observer, waited.is_zero()) {
                observer.rate_limited(waited);
            }
        }
        Some(permit)
    }
}

/// Told how long every token request took (the fleet-wide latency histogram), how every attempt
/// ended, and about tenant tasks that panicked. Per-tenant counts live in the tenant's status, so
/// they leave with the tenant; what the observer counts stays.
pub trait Observer: Send + Sync + std::fmt::Debug {
    /// A token request finished, successfully or not, after `duration`.
    fn request_finished(&self, duration: Duration);

    /// An attempt ended: `Ok` with every sink written, or `Err` with the failure's reason. Counted
    /// daemon-wide, so the totals never go backwards when a tenant leaves the configuration.
    fn attempt_finished(&self, result: Result<(), Reason>) {
        let _ = result;
    }

    /// Fleet mode: a job of `kind` was done by this replica (`adopted` false) or its result
    /// taken from another replica (`adopted` true).
    fn fleet_job(&self, kind: Kind, adopted: bool) {
        let _ = (kind, adopted);
    }

    /// Fleet mode: another replica held the lease of a job of `kind`.
    fn fleet_lease_busy(&self, kind: Kind) {
        let _ = kind;
    }

    /// A token request waited `waited` for `max_requests_per_second`.
    fn rate_limited(&self, waited: Duration) {
        let _ = waited;
    }

    /// A Power BI access probe ended: `Ok`, or why it failed; `duration`, how long the call
    /// took, `None` for a result adopted from another replica (no call was made).
    fn probe_finished(&self, result: Result<(), Reason>, duration: Option<Duration>) {
        let _ = (result, duration);
    }

    /// An embed token refresh ended: `Ok` with every sink written, or why not.
    fn embed_finished(&self, result: Result<(), Reason>) {
        let _ = result;
    }

    /// A read of a report's embed URL ended: `Ok`, or why it failed.
    fn embed_url_read(&self, result: Result<(), Reason>) {
        let _ = result;
    }

    /// A tenant task panicked; the supervisor restarts it.
    fn task_panicked(&self);
}
