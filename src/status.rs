//! What every tenant is doing right now: the one place `/status`, the metrics and `once` read.
//!
//! Each tenant task owns a [`TenantStatus`] behind a mutex and updates it after every attempt;
//! readers take a snapshot. Time-dependent facts (time to expiry, "expired") are computed when
//! read, so nothing has to tick.

use serde::Serialize;
use std::collections::BTreeMap;
use std::collections::btree_map::Entry;
use std::ops::Bound;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use crate::error::{ErrorClass, Reason, RefreshError};
use crate::schedule::system_to_unix_f64;

/// A tenant's state, as shown in `/status` and the `tenants` gauge.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TenantState {
    /// No attempt has finished yet.
    Pending,
    /// The last attempt succeeded.
    Healthy,
    /// The last attempt failed transiently; the token in place (if any) is still valid.
    Retrying,
    /// The last attempt failed permanently (bad secret, app not in tenant…), whatever the token.
    Misconfigured,
    /// The last attempt failed transiently and the token we hold has expired.
    Expired,
    /// The token is fresh, but Power BI refuses it (the last access probe: `not_authorized`):
    /// the customer's Power BI settings, not Entra, stand in the way.
    #[serde(rename = "api_denied")]
    ApiDenied,
    /// The token is fresh, but the last access probe failed otherwise (Power BI failing,
    /// throttling, unreachable, or a wrong probe URL).
    #[serde(rename = "api_failing")]
    ApiFailing,
}

impl TenantState {
    /// Every state, for gauges that must show zero counts too.
    pub const ALL: [TenantState; 7] = [
        TenantState::Pending,
        TenantState::Healthy,
        TenantState::Retrying,
        TenantState::Misconfigured,
        TenantState::Expired,
        TenantState::ApiDenied,
        TenantState::ApiFailing,
    ];

    /// Label value.
    pub fn as_str(self) -> &'static str {
        match self {
            TenantState::Pending => "pending",
            TenantState::Healthy => "healthy",
            TenantState::Retrying => "retrying",
            TenantState::Misconfigured => "misconfigured",
            TenantState::Expired => "expired",
            TenantState::ApiDenied => "api_denied",
            TenantState::ApiFailing => "api_failing",
        }
    }
}

/// The record of one token (a tenant's access token, or one of its embed tokens): the same
/// shape for every kind, kept by its refresher.
#[derive(Clone, Debug, Default)]
pub struct TokenStatus {
    /// Unix seconds the token every sink holds expires (the newest one written, or
    /// warm-started).
    pub expires_on: Option<i64>,
    /// When the next attempt is planned; `None` when the next one follows another token's
    /// refresh (an embed token capped at its access token's expiry).
    pub next_refresh: Option<SystemTime>,
    /// Last successful refresh including every sink write.
    pub last_success: Option<SystemTime>,
    /// Failures since the last success.
    pub consecutive_failures: u32,
    /// The failure of the last attempt; `None` after a success (or before any attempt). Boxed:
    /// most tokens are healthy, and every one carries the field.
    pub last_error: Option<Box<RefreshError>>,
    /// Successful attempts since the tenant started (the `refresh_total` counter).
    pub successes: u64,
    /// Failed attempts since the tenant started.
    pub failures: u64,
    /// Failed attempts by reason, indexed by [`Reason::index`]; 32 bits (saturating) keep a
    /// hundred thousand tenants' records small, and last 136 years at one failure a second.
    pub failures_by_reason: [u32; Reason::ALL.len()],
    /// The last attempt could not write a local (file) sink: what readiness counts. A Redis
    /// outage is not among them: no restart or new node fixes it.
    pub local_sink_failing: bool,
    /// Fleet mode: the token in the sinks was made by another replica and adopted here.
    pub adopted: bool,
    /// Fleet mode: the replica that made the token in the sinks (this one or another).
    pub refreshed_by: Option<Arc<str>>,
}

/// The mutable record of one tenant.
#[derive(Clone, Debug, Default)]
pub struct TenantStatus {
    /// The tenant's access token.
    pub token: TokenStatus,
    /// Whether at least one attempt (or a warm start) has completed: readiness. Set with
    /// [`TenantStatus::first_attempt_finished`], which also counts it in the registry.
    pub first_attempt_done: bool,
    /// How often the tenant's task panicked (and was restarted by the supervisor). A panic is a
    /// bug; this makes it visible in `/status` long after the log line scrolled away.
    pub task_panics: u64,
    /// When the credential itself expires (certificate notAfter, `client_secret_expires`), and
    /// the credential kind.
    pub credential_expiry: Option<crate::credential::CredentialExpiry>,
    /// The access probe (of the Power BI or the Fabric API), for tenants that run one and
    /// have probed at least once. Boxed: opt-in.
    pub api_probe: Option<Box<ProbeStatus>>,
    /// The tenant's embed tokens, in config order; empty for tenants without any.
    pub embeds: Box<[EmbedStatus]>,
    /// For a credential kept in Azure Key Vault: the identity that reads it, and how its last
    /// read failed. Boxed: most tenants keep their credential elsewhere.
    pub key_vault: Option<Box<KeyVaultStatus>>,
}

/// Which Key Vault identity reads a tenant's credential, and how its last read of the vault
/// ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyVaultStatus {
    /// The identity's name (`default` for `[key_vault]`'s own).
    pub identity: Arc<str>,
    /// Why the last read failed; `None` once one succeeds. A failed re-read is shown too,
    /// although the tenant goes on with the value read before.
    pub failure: Option<crate::credential::key_vault::VaultFailure>,
}

/// One embed token of a tenant.
#[derive(Clone, Debug)]
pub struct EmbedStatus {
    /// The embed's name (the `embed` label).
    pub name: String,
    /// Its record.
    pub token: TokenStatus,
    /// The embed URLs of its reports; `None` for an embed without reports. Boxed, so an embed
    /// without reports carries one pointer.
    pub urls: Option<Box<EmbedUrlsStatus>>,
}

/// The embed URLs of an embed's reports (`embed_urls` in its document).
#[derive(Clone, Debug, Default)]
pub struct EmbedUrlsStatus {
    /// Reports with a URL.
    pub count: usize,
    /// Reports without one (ids as configured): the document's `embed_urls` lacks them.
    pub missing: Vec<String>,
    /// Unix seconds of the oldest read among the URLs held.
    pub read_at: Option<i64>,
    /// Why the last round of reads failed (the last failure of the round); `None` after a
    /// round in which every read succeeded.
    pub last_error: Option<Box<RefreshError>>,
}

impl EmbedStatus {
    /// Why a report of the embed has no URL, if one has none since a failed read: a browser
    /// cannot show that report, so the tenant needs attention as for a failed embed token. A
    /// failed re-read of URLs still held only shows under the embed.
    fn missing_urls_error(&self) -> Option<&RefreshError> {
        let urls = self.urls.as_deref()?;
        if urls.missing.is_empty() {
            return None;
        }
        urls.last_error.as_deref()
    }
}

/// What the access probe last found, and its failures so far.
#[derive(Clone, Debug)]
pub struct ProbeStatus {
    /// The API probed: what `/status` names, since one tenant's failure means another thing
    /// for Power BI than for Fabric.
    pub api: crate::config::RestApi,
    /// When the last probe ended.
    pub last: SystemTime,
    /// `None` when the API accepted the token.
    pub failure: Option<RefreshError>,
    /// Failed probes by reason, indexed by [`Reason::index`] (saturating, as the token's).
    pub failures_by_reason: [u32; Reason::ALL.len()],
    /// Fleet mode: the replica that ran the last probe (this one or another).
    pub probed_by: Option<Arc<str>>,
    /// Fleet mode: the last probe's outcome was adopted from another replica.
    pub adopted: bool,
}

impl TenantStatus {
    /// The state at `now`.
    pub fn state(&self, now: SystemTime) -> TenantState {
        if !self.first_attempt_done {
            return TenantState::Pending;
        }
        let Some(error) = &self.token.last_error else {
            let failures = self
                .api_probe
                .iter()
                .filter_map(|probe| probe.failure.as_ref())
                .chain(
                    self.embeds
                        .iter()
                        .filter_map(|embed| embed.token.last_error.as_deref()),
                )
                .chain(
                    self.embeds
                        .iter()
                        .filter_map(EmbedStatus::missing_urls_error),
                );
            let mut state = TenantState::Healthy;
            for failure in failures {
                if failure.reason == Reason::NotAuthorized {
                    return TenantState::ApiDenied;
                }
                state = TenantState::ApiFailing;
            }
            return state;
        };
        if error.class == ErrorClass::Permanent {
            return TenantState::Misconfigured;
        }
        let expired = self
            .token
            .expires_on
            .is_some_and(|exp| system_to_unix_f64(now) >= exp as f64);
        if expired {
            TenantState::Expired
        } else {
            TenantState::Retrying
        }
    }

    /// Records that the tenant's first attempt (or warm start) has completed and, the first
    /// time, takes it off its registry's count of pending tenants (`pending`, `None` for a
    /// tenant in no registry). Whoever sets `first_attempt_done` under the status lock (this, or
    /// the registry removing a pending tenant) is the one who counts it, so no tenant is
    /// counted off twice.
    pub(crate) fn first_attempt_finished(&mut self, pending: Option<&Pending>) {
        if !self.first_attempt_done {
            self.first_attempt_done = true;
            if let Some(pending) = pending {
                pending.one_less();
            }
        }
    }
}

/// How many of a registry's tenants still wait for their first attempt, and a wake-up for the
/// one who waits for none: systemd's `READY=1` is sent when the count reaches zero, without
/// looking at every tenant again and again.
#[derive(Debug, Default)]
pub(crate) struct Pending {
    /// Tenants inserted whose first attempt has not completed (and that were not removed).
    count: AtomicUsize,
    /// Notified when `count` reaches zero.
    settled: tokio::sync::Notify,
}

impl Pending {
    /// One tenant fewer pending; wakes the waiter when it was the last.
    fn one_less(&self) {
        if self.count.fetch_sub(1, Ordering::SeqCst) == 1 {
            // `notify_one` keeps the wake-up for a waiter that has not started waiting yet.
            self.settled.notify_one();
        }
    }
}

/// A shared handle to one tenant's status.
pub(crate) type StatusHandle = Arc<Mutex<TenantStatus>>;

/// Locks a status, recovering from a poisoned lock: the data is plain values, always consistent.
pub fn lock(status: &StatusHandle) -> MutexGuard<'_, TenantStatus> {
    status
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Tenants [`Registry::visit`] visits per lock of the name map: a fraction of a millisecond of a
/// metrics scrape's copying, short enough for a reload waiting on it.
pub(crate) const VISIT_CHUNK: usize = 1024;

/// All tenants' status handles by name.
#[derive(Clone, Debug, Default)]
pub struct Registry {
    /// Name → handle; a BTreeMap so `/status` lists tenants in a stable order.
    tenants: Arc<Mutex<BTreeMap<String, StatusHandle>>>,
    /// How many of them wait for their first attempt.
    pending: Arc<Pending>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Registry::default()
    }

    fn map(&self) -> MutexGuard<'_, BTreeMap<String, StatusHandle>> {
        self.tenants
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Adds (or returns the existing) handle for a tenant. A new tenant counts as pending until
    /// its first attempt finishes.
    pub fn insert(&self, name: &str) -> StatusHandle {
        match self.map().entry(name.to_owned()) {
            Entry::Occupied(entry) => entry.get().clone(),
            Entry::Vacant(entry) => {
                self.pending.count.fetch_add(1, Ordering::SeqCst);
                entry.insert(StatusHandle::default()).clone()
            }
        }
    }

    /// Forgets a tenant that left the configuration (no longer pending, if it was).
    pub fn remove(&self, name: &str) {
        let removed = self.map().remove(name);
        if let Some(handle) = removed {
            lock(&handle).first_attempt_finished(Some(&self.pending));
        }
    }

    /// The count of pending tenants, for the tenants to take themselves off
    /// ([`TenantStatus::first_attempt_finished`]).
    pub(crate) fn pending_count(&self) -> Arc<Pending> {
        self.pending.clone()
    }

    /// How many tenants have not finished their first attempt.
    pub fn pending(&self) -> usize {
        self.pending.count.load(Ordering::SeqCst)
    }

    /// Returns once no tenant is pending (at once if none is).
    pub async fn settled(&self) {
        while self.pending() > 0 {
            self.pending.settled.notified().await;
        }
    }

    /// How many tenants are in each state at `now`, indexed like [`TenantState::ALL`]; cheaper
    /// than a snapshot (nothing is copied but the handles).
    pub(crate) fn state_counts(&self, now: SystemTime) -> [usize; TenantState::ALL.len()] {
        let handles: Vec<StatusHandle> = self.map().values().cloned().collect();
        let mut counts = [0; TenantState::ALL.len()];
        for handle in handles {
            let state = lock(&handle).state(now);
            if let Some(index) = TenantState::ALL.iter().position(|s| *s == state) {
                counts[index] += 1;
            }
        }
        counts
    }

    /// Calls `visit` with every tenant's name and status handle, in name order, copying neither.
    /// The name map is locked for [`VISIT_CHUNK`] tenants at a time, so a reload adding or
    /// removing tenants waits for one chunk, never for a pass over a large fleet; tenant tasks
    /// never take the map lock. A tenant added or removed between two chunks may be seen or
    /// missed, as by a pass a moment earlier or later. `visit` may lock the handle, but must
    /// not call back into the registry: the map is locked while it runs.
    pub(crate) fn visit(&self, mut visit: impl FnMut(&str, &StatusHandle)) {
        let mut after: Option<String> = None;
        loop {
            let map = self.map();
            let lower = match &after {
                None => Bound::Unbounded,
                Some(last) => Bound::Excluded(last.as_str()),
            };
            let mut seen = 0;
            let mut last = None;
            for (name, handle) in map
                .range::<str, _>((lower, Bound::Unbounded))
                .take(VISIT_CHUNK)
            {
                visit(name, handle);
                seen += 1;
                last = Some(name);
            }
            if seen < VISIT_CHUNK {
                return;
            }
            after = last.cloned();
        }
    }

    /// A copy of every tenant's status, in name order.
    pub(crate) fn snapshot(&self) -> Vec<(String, TenantStatus)> {
        let handles: Vec<(String, StatusHandle)> = self
            .map()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        handles
            .into_iter()
            .map(|(name, handle)| (name, lock(&handle).clone()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn visit_sees_every_tenant_once_in_name_order_across_chunks() {
        let registry = Registry::new();
        let count = VISIT_CHUNK * 2 + 3;
        for i in 0..count {
            registry.insert(&format!("t{i:05}"));
        }
        let mut seen = Vec::new();
        registry.visit(|name, handle| {
            let _ = lock(handle).state(SystemTime::now());
            seen.push(name.to_owned());
        });
        assert_eq!(seen.len(), count);
        assert!(seen.windows(2).all(|pair| pair[0] < pair[1]));
        // Exactly one chunk: the loop ends after a full chunk with nothing after it.
        let registry = Registry::new();
        for i in 0..VISIT_CHUNK {
            registry.insert(&format!("t{i:05}"));
        }
        let mut visits = 0;
        registry.visit(|_, _| visits += 1);
        assert_eq!(visits, VISIT_CHUNK);
    }

    #[tokio::test]
    async fn the_registry_counts_pending_tenants_and_wakes_when_none_is_left() {
        let registry = Registry::new();
        tokio::time::timeout(Duration::from_secs(5), registry.settled())
            .await
            .expect("no tenant, nothing pending");
        let a = registry.insert("a");
        let b = registry.insert("b");
        let again = registry.insert("a");
        assert!(Arc::ptr_eq(&a, &again));
        assert_eq!(registry.pending(), 2, "a tenant inserted twice counts once");
        let waiter = tokio::spawn({
            let registry = registry.clone();
            async move { registry.settled().await }
        });
        let pending = registry.pending_count();
        lock(&a).first_attempt_finished(Some(&pending));
        lock(&a).first_attempt_finished(Some(&pending));
        assert_eq!(registry.pending(), 1, "a second finish counts once");
        assert!(!waiter.is_finished());
        // A tenant removed before its first attempt is no longer waited for.
        registry.remove("b");
        assert_eq!(registry.pending(), 0);
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("woken when the last pending tenant is gone")
            .unwrap();
        // A step of `b` still in flight finishing now counts nothing.
        lock(&b).first_attempt_finished(Some(&pending));
        assert_eq!(registry.pending(), 0);
        // A tenant added later is pending until its first attempt.
        let c = registry.insert("c");
        assert_eq!(registry.pending(), 1);
        lock(&c).first_attempt_finished(Some(&pending));
        tokio::time::timeout(Duration::from_secs(5), registry.settled())
            .await
            .expect("settled again");
    }

    #[test]
    fn state_machine() {
        let now = SystemTime::now();
        let in_an_hour = system_to_unix_f64(now + Duration::from_secs(3600)) as i64;
        let mut s = TenantStatus::default();
        assert_eq!(s.state(now), TenantState::Pending);
        s.first_attempt_done = true;
        s.token.expires_on = Some(in_an_hour);
        assert_eq!(s.state(now), TenantState::Healthy);
        s.token.last_error = Some(Box::new(RefreshError::local(
            ErrorClass::Transient,
            Reason::Network,
            "x",
        )));
        assert_eq!(s.state(now), TenantState::Retrying);
        s.token.last_error = Some(Box::new(RefreshError::local(
            ErrorClass::Permanent,
            Reason::InvalidClient,
            "x",
        )));
        assert_eq!(s.state(now), TenantState::Misconfigured);
        assert_eq!(
            s.state(now + Duration::from_secs(3601)),
            TenantState::Misconfigured
        );
        s.token.last_error = Some(Box::new(RefreshError::local(
            ErrorClass::Throttled,
            Reason::Throttled,
            "x",
        )));
        assert_eq!(
            s.state(now + Duration::from_secs(3601)),
            TenantState::Expired
        );
        s.token.expires_on = None;
        assert_eq!(s.state(now), TenantState::Retrying);
    }

    #[test]
    fn a_fresh_token_that_power_bi_refuses_is_its_own_state() {
        let now = SystemTime::now();
        let mut s = TenantStatus {
            first_attempt_done: true,
            ..TenantStatus::default()
        };
        s.token.expires_on = Some(system_to_unix_f64(now + Duration::from_secs(3600)) as i64);
        let failure =
            |reason| RefreshError::api(reason, Some(401), None, None, String::new(), None);
        let mut probe = ProbeStatus {
            api: crate::config::RestApi::PowerBi,
            last: now,
            failure: None,
            failures_by_reason: [0; Reason::ALL.len()],
            probed_by: None,
            adopted: false,
        };
        s.api_probe = Some(Box::new(probe.clone()));
        assert_eq!(s.state(now), TenantState::Healthy);
        probe.failure = Some(failure(Reason::NotAuthorized));
        s.api_probe = Some(Box::new(probe.clone()));
        assert_eq!(s.state(now), TenantState::ApiDenied);
        probe.failure = Some(failure(Reason::ServerError));
        s.api_probe = Some(Box::new(probe));
        assert_eq!(s.state(now), TenantState::ApiFailing);
        // A failing refresh says more than the probe: the token side comes first.
        s.token.last_error = Some(Box::new(RefreshError::local(
            ErrorClass::Permanent,
            Reason::InvalidClient,
            "x",
        )));
        assert_eq!(s.state(now), TenantState::Misconfigured);
    }
}
