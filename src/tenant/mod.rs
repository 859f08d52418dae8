//! One tenant's refresher, as a sequence of steps.
//!
//! Each [`Tenant::step`] does what is due (the warm start, a check that the token is still in
//! Redis, a Power BI call in `powerbi.rs`, or an attempt) and says when the next step is due; the supervisor's timer keeps the
//! sleeping tenants and runs each step as its own task when it falls due. Between steps a tenant
//! is only this struct, so a hundred thousand sleeping tenants cost no task, timer or future
//! each. Tenants share nothing but the HTTP connection pool and a semaphore that caps concurrent
//! token requests, so one broken or slow tenant never delays another.
//!
//! Cancellation is honoured while waiting for the start-up turn and the semaphore, but not during
//! an attempt: an attempt that has started (request sent, sink being written) runs to completion,
//! so shutdown never abandons a half-done write. The supervisor bounds that wait with a grace
//! period.

mod powerbi;

use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::client::TokenClient;
use crate::clock;
use crate::config::{DaemonConfig, TenantConfig};
use crate::credential::Credential;
use crate::error::{ErrorClass, Reason, RefreshError};
use crate::fleet::{Claim, Fleet};
use crate::powerbi::probe::ProbeReason;
use crate::schedule;
use crate::sink::Sink;
use crate::status::{self, StatusHandle};
use crate::token::AccessToken;
use powerbi::EmbedState;

/// The longest a request may run in the main lane before it moves to the slow lane. Entra
/// answers in tens to hundreds of milliseconds; a request still running after this is waiting on
/// a struggling or hanging endpoint, and moving it costs nothing but a second permit pool.
pub const SLOW_AFTER: Duration = Duration::from_millis(500);

/// The shortest: below this, ordinary scheduling noise would move healthy requests.
pub const SLOW_AFTER_MIN: Duration = Duration::from_millis(25);

/// How many times the typical request a request may take before it counts as slow.
const SLOW_FACTOR: u32 = 8;

/// When a main-lane request moves to the slow lane: [`SLOW_FACTOR`] times the typical duration
/// of the requests that recently finished in the main lane, within [`SLOW_AFTER_MIN`] and a
/// ceiling. A fixed half second would let each hanging tenant hold a main permit that long at a
/// cold start, when no tenant is yet known to be slow; against a fast endpoint the threshold
/// follows it down, so hanging tenants give their permits back within a few typical requests.
#[derive(Debug)]
pub struct SlowAfter {
    ceiling: Duration,
    /// Moving average of main-lane request durations in microseconds; 0 until the first.
    typical_micros: std::sync::atomic::AtomicU64,
}

impl SlowAfter {
    /// A threshold that never exceeds `ceiling` (nor goes below [`SLOW_AFTER_MIN`]).
    pub fn new(ceiling: Duration) -> Self {
        SlowAfter {
            ceiling: ceiling.max(SLOW_AFTER_MIN),
            typical_micros: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// The threshold now. Before any request has finished it is the floor: moving a healthy
    /// request early costs a slow-lane permit, keeping a hanging one costs a main-lane permit.
    pub fn get(&self) -> Duration {
        let typical = self
            .typical_micros
            .load(std::sync::atomic::Ordering::Relaxed);
        Duration::from_micros(typical)
            .saturating_mul(SLOW_FACTOR)
            .clamp(SLOW_AFTER_MIN, self.ceiling)
    }

    /// Folds in a request that finished in the main lane without moving (weight 1/8).
    pub fn record(&self, took: Duration) {
        let took = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        let _ = self.typical_micros.fetch_update(
            std::sync::atomic::Ordering::Relaxed,
            std::sync::atomic::Ordering::Relaxed,
            |typical| {
                Some(if typical == 0 {
                    took
                } else {
                    typical - typical / 8 + took / 8
                })
            },
        );
    }
}

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

/// What a tenant task needs from the daemon.
#[derive(Clone, Debug)]
pub struct Shared {
    /// The HTTP client (shared pool).
    pub client: TokenClient,
    /// Reads secrets and certificates kept in Azure Key Vault (`[key_vault]`), for every tenant.
    pub key_vault: Option<Arc<crate::credential::key_vault::KeyVault>>,
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

    /// Fleet mode: a token was fetched by this replica (`adopted` false) or taken from the
    /// fleet (`adopted` true).
    fn fleet_token(&self, adopted: bool) {
        let _ = adopted;
    }

    /// Fleet mode: another replica held the tenant's lease.
    fn fleet_lease_busy(&self) {}

    /// A token request waited `waited` for `max_requests_per_second`.
    fn rate_limited(&self, waited: Duration) {
        let _ = waited;
    }

    /// A Power BI access probe ended, after `duration`: `Ok`, or why it failed.
    fn probe_finished(
        &self,
        result: Result<(), crate::powerbi::probe::ProbeReason>,
        duration: Duration,
    ) {
        let _ = (result, duration);
    }

    /// An embed token refresh ended, after `duration`: `Ok` with every sink written, or why not.
    fn embed_finished(&self, result: Result<(), ProbeReason>, duration: Duration) {
        let _ = (result, duration);
    }

    /// A tenant task panicked; the supervisor restarts it.
    fn task_panicked(&self);
}

/// One tenant's refresher.
pub struct Tenant {
    /// The tenant's settings (immutable; a changed tenant gets a new task).
    config: Arc<TenantConfig>,
    /// Process-wide pieces.
    shared: Arc<Shared>,
    /// Shown by `/status` and the metrics.
    status: StatusHandle,
    /// Stable jitter of this tenant, as a fraction of the lifetime.
    jitter_offset: f64,
    /// A token fetched or adopted that not every sink holds yet: written again on a short
    /// schedule of its own, without asking Entra for another one, until its refresh point.
    unwritten: Option<Box<Unwritten>>,
    /// Failed token requests in a row, for the backoff exponent.
    failures: u32,
    /// When the last attempt began: the next one starts at least
    /// [`schedule::MIN_ATTEMPT_INTERVAL`] later, whatever asks for it.
    last_attempt: Option<SystemTime>,
    /// Until when the server's last `Retry-After` holds; a cron activation must not undercut it.
    retry_not_before: Option<SystemTime>,
    /// The credential's runtime state (loaded certificate, cached federated token).
    credential: Credential,
    /// The last request was slow or timed out: the next one waits in the slow lane.
    slow: bool,
    /// `issued_on` of the token the sinks hold (fetched, adopted or warm-started): a fleet
    /// token is adopted only if it is newer.
    current_issued_on: Option<i64>,
    /// Whether the warm start (the first step) is done.
    started: bool,
    /// The registry's count of tenants waiting for their first attempt (systemd readiness);
    /// `None` outside a registry (`once`).
    pending: Option<Arc<status::Pending>>,
    /// None of its token files existed when the daemon looked at start-up (or reload): the warm
    /// start does not read them.
    files_absent: bool,
    /// When the next attempt is planned by the token's lifetime or the backoff, before cron,
    /// the minimum interval and `Retry-After` have their say.
    next: SystemTime,
    /// When the next attempt is due, everything considered: what [`Tenant::step`] acts on.
    wake: SystemTime,
    /// When to check next that the token is still in Redis; `None` for tenants without Redis.
    next_check: Option<SystemTime>,
    /// The token the sinks hold, kept only for tenants that use the Power BI API with it (the
    /// access probe); `None` for every other tenant.
    token: Option<Box<AccessToken>>,
    /// When the next access probe is due; `None` without a probe or without a token yet.
    next_probe: Option<SystemTime>,
    /// The tenant's embed tokens, in config order (`[[tenant.embed]]`); empty for most.
    embeds: Box<[EmbedState]>,
    /// What the next step does, decided with its time by [`Tenant::plan`].
    due: Due,
}

/// What a check of the token in Redis found.
enum Presence {
    /// Still there (or Redis cannot say).
    Kept,
    /// Gone: refresh now.
    Lost,
    /// Shutdown began during the check.
    Cancelled,
}

/// What a tenant's next step does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Due {
    /// Fetch a token (or adopt the fleet's) and write it.
    Attempt,
    /// Write the token in hand to the sinks that do not hold it yet.
    Write,
    /// Look whether the token is still in Redis.
    Check,
    /// The Power BI calls: the access probe, embed tokens.
    Api,
}

/// A token that some of the tenant's sinks do not hold yet: the Redis sinks right after a
/// refresh (they are written in a step of their own, so a slow Redis never holds a request
/// permit or a file write), or sinks whose write failed.
struct Unwritten {
    /// The token.
    token: AccessToken,
    /// Fleet mode: the replica that fetched it.
    refreshed_by: Option<Arc<str>>,
    /// When to ask Entra for the next one, planned when it came.
    refresh_point: SystemTime,
    /// The sinks (indices into the tenant's `sinks`) that do not hold it yet.
    sinks: Vec<usize>,
    /// Failed writes of it so far.
    tries: u32,
    /// When to write it next.
    write_at: SystemTime,
}

/// What writing a token to some sinks came to.
struct Written {
    /// The sinks (indices into the tenant's `sinks`) that failed.
    failed: Vec<usize>,
    /// The first failure.
    error: Option<RefreshError>,
}

/// The lane of steps that only talk to Redis (presence checks, Redis writes): its own budget
/// in the supervisor, so that a hung Redis fills this lane and never the ones token requests
/// and file writes wait in.
pub const REDIS_LANE: usize = 3;

/// How many tenants read their existing tokens at once at start-up (the supervisor's budget for
/// warm-start steps): enough to keep the disk or Redis busy, few enough that ten thousand reads
/// in flight at a cold start (file reads queued for the blocking pool, GETs pipelined to Redis)
/// do not each hold their buffers at the same moment, the daemon's peak.
pub const START_UP_READS: usize = 64;

/// Fleet mode: how soon to look again when another replica holds the tenant's lease. Its token
/// usually arrives within one request's time.
const FLEET_BUSY_RETRY: Duration = Duration::from_secs(1);

impl Tenant {
    /// A refresher for one tenant.
    pub fn new(config: Arc<TenantConfig>, shared: Arc<Shared>, status: StatusHandle) -> Self {
        let jitter_offset = schedule::tenant_jitter(&config.name, config.jitter);
        let credential = Credential::new(&config.credential);
        let embed_configs = config
            .powerbi
            .as_deref()
            .map_or(&[][..], |powerbi| &powerbi.embeds);
        let embeds = embed_configs
            .iter()
            .map(|_| EmbedState::default())
            .collect();
        {
            let mut status = status::lock(&status);
            status.credential_expiry = credential.expiry();
            status.embeds = embed_configs
                .iter()
                .map(|embed| status::EmbedStatus {
                    name: embed.name.clone(),
                    expires_on: None,
                    last_success: None,
                    next_refresh: None,
                    failure: None,
                    successes: 0,
                    failures_by_reason: [0; ProbeReason::ALL.len()],
                })
                .collect();
        }
        Tenant {
            credential,
            config,
            shared,
            status,
            jitter_offset,
            unwritten: None,
            failures: 0,
            last_attempt: None,
            retry_not_before: None,
            slow: false,
            current_issued_on: None,
            started: false,
            pending: None,
            files_absent: false,
            next: SystemTime::UNIX_EPOCH,
            wake: SystemTime::UNIX_EPOCH,
            next_check: None,
            token: None,
            next_probe: None,
            embeds,
            due: Due::Attempt,
        }
    }

    /// Counts the tenant's first attempt in `pending` (its registry's count).
    pub fn counted_in(mut self, pending: Arc<status::Pending>) -> Self {
        self.pending = Some(pending);
        self
    }

    /// Notes whether any of its token files is among those found on disk (`present`): if none
    /// is, its warm start does not read them. A cold start of ten thousand tenants thus hands
    /// the blocking pool ten thousand writes, not also ten thousand reads of absent files.
    pub fn note_files_on_disk(&mut self, present: &std::collections::HashSet<std::path::PathBuf>) {
        self.files_absent = !self.config.sinks.iter().any(|sink| match sink {
            crate::config::SinkConfig::File(file) => present.contains(&file.path),
            crate::config::SinkConfig::Redis(_) => false,
        });
    }

    /// The tenant's sinks, built for the moment they are used: a sleeping tenant keeps only
    /// its configuration.
    fn sinks(&self) -> Vec<Sink> {
        self.config
            .sinks
            .iter()
            .filter_map(|sink| Sink::from_config(sink, self.shared.store.as_ref()))
            .collect()
    }

    /// Does what is due now and returns when the next step is due; `None` when `cancel` fired
    /// first. The first step is the warm start, and the first attempt too when that is due at
    /// once; after it, each step does what [`Tenant::plan`] found due first: an attempt, the
    /// writes of a token in hand, a check that the token is still in Redis, or the Power BI
    /// calls.
    pub async fn step(&mut self, cancel: &CancellationToken) -> Option<SystemTime> {
        if !self.started {
            // Warm starts take turns: the supervisor runs at most START_UP_READS at once.
            self.next = Box::pin(self.start_up()).await;
            self.started = true;
            // Tenants that keep their token in Redis look now and then whether it is still
            // there (a restart without persistence, FLUSHALL); first at a random point of the
            // interval, so thousands of tenants spread their checks.
            self.next_check = self
                .presence_check_interval()
                .map(|every| schedule::later(SystemTime::now(), every.mul_f64(fastrand::f64())));
            let due = self.plan();
            if due > SystemTime::now() {
                return Some(due);
            }
            // What is due now (usually the first attempt, with nothing on disk to reuse)
            // follows in this step, so a cold start costs one task per tenant, not two.
        }
        match self.due {
            Due::Api => Box::pin(self.api_calls(cancel)).await?,
            Due::Write => Box::pin(self.write_held()).await,
            Due::Check => {
                let check = self.next_check.unwrap_or_else(SystemTime::now);
                self.next_check = self
                    .presence_check_interval()
                    .map(|every| schedule::later(check.max(SystemTime::now()), every));
                // Boxed, like the attempt: the step's future stays small while it waits.
                match Box::pin(self.check_presence(self.wake, cancel)).await {
                    Presence::Cancelled => return None,
                    Presence::Lost => self.next = SystemTime::now(),
                    Presence::Kept => {}
                }
            }
            Due::Attempt => {
                // Boxed so that the many steps waiting for a permit at a cold start stay small:
                // only attempts in flight pay for the HTTP and file-write state.
                self.next = Box::pin(self.claim_and_attempt(cancel)).await?;
                if self
                    .next_api_call()
                    .is_some_and(|at| at <= SystemTime::now() && at < self.wake)
                {
                    // Right after a refresh: does Power BI take the new token, and new embed
                    // tokens made with it.
                    Box::pin(self.api_calls(cancel)).await?;
                }
            }
        }
        Some(self.plan())
    }

    /// An attempt with its turn: in fleet mode the lease first (Redis, before any request
    /// permit is taken, so a slow Redis holds back no other tenant's request), then a permit of
    /// the lane. From the permit on, the attempt runs to completion, even if cancelled
    /// meanwhile. `None` when `cancel` fired first.
    async fn claim_and_attempt(&mut self, cancel: &CancellationToken) -> Option<SystemTime> {
        let claim = match self.shared.fleet.clone() {
            Some(fleet) => Some(self.claim(&fleet).await),
            None => None,
        };
        let permit = match &claim {
            // Adopting a token or looking again later needs no request.
            Some(Claim::Adopt { .. } | Claim::Busy) => None,
            _ => {
                let lane = if self.slow {
                    &self.shared.slow_lane
                } else {
                    &self.shared.limiter
                };
                tokio::select! {
                    biased;
                    () = cancel.cancelled() => {
                        if let (Some(Claim::Lease), Some(fleet)) = (&claim, &self.shared.fleet) {
                            fleet.release(&self.config).await;
                        }
                        return None;
                    }
                    permit = lane.clone().acquire_owned() => permit.ok(),
                }
            }
        };
        Some(self.attempt(claim, permit).await)
    }

    /// Fleet mode: adopt the shared token, take the lease, or look again later.
    async fn claim(&self, fleet: &Fleet) -> Claim {
        let now = SystemTime::now();
        let (refresh_at, jitter, ours) = (
            self.config.refresh_at,
            self.jitter_offset,
            self.current_issued_on,
        );
        let adoptable = |token: &AccessToken| {
            ours.is_none_or(|ours| token.issued_on() > ours)
                && now < schedule::refresh_point(token, refresh_at, jitter)
        };
        fleet.claim(&self.config, adoptable).await
    }

    /// Which lane of the supervisor's its next step waits in: 0 the warm start, 1 the main
    /// lane, 2 the slow lane (its last request was slow or timed out), [`REDIS_LANE`] a step
    /// that only talks to Redis.
    pub fn lane(&self) -> usize {
        if !self.started {
            return 0;
        }
        let redis_only = match self.due {
            Due::Check => true,
            Due::Write => self.unwritten.as_ref().is_some_and(|held| {
                held.sinks.iter().all(|&index| {
                    matches!(
                        self.config.sinks.get(index),
                        Some(crate::config::SinkConfig::Redis(_))
                    )
                })
            }),
            Due::Attempt | Due::Api => false,
        };
        match (redis_only, self.slow) {
            (true, _) => REDIS_LANE,
            (false, false) => 1,
            (false, true) => 2,
        }
    }

    /// Plans the next attempt (the refresh point, a cron activation, the minimum interval and
    /// `Retry-After` considered), shows it in the status, and returns when the next step is
    /// due: that attempt, or what falls before it (writes of the token in hand, a presence
    /// check, a Power BI call), noted in `due`.
    fn plan(&mut self) -> SystemTime {
        let cron = self
            .config
            .schedule
            .as_ref()
            .and_then(|s| schedule::cron_next(&s.cron, SystemTime::now()));
        self.wake = schedule::next_wake(self.next, cron, self.last_attempt, self.retry_not_before);
        status::lock(&self.status).next_refresh = Some(self.wake);
        let (at, due) = [
            self.unwritten
                .as_ref()
                .map(|held| (held.write_at, Due::Write)),
            self.next_api_call().map(|at| (at, Due::Api)),
            self.next_check.map(|at| (at, Due::Check)),
        ]
        .into_iter()
        .flatten()
        .filter(|(at, _)| *at < self.wake)
        // The first of equals: writes before calls before checks.
        .min_by_key(|(at, _)| *at)
        .unwrap_or((self.wake, Due::Attempt));
        self.due = due;
        at
    }

    /// Adopts a still-fresh token from disk (warm start). Returns the first wake-up.
    async fn start_up(&mut self) -> SystemTime {
        let now = SystemTime::now();
        for sink in self.sinks() {
            if self.files_absent && matches!(sink, Sink::File(_)) {
                continue;
            }
            let Some(token) = sink.read_existing(&self.config).await else {
                continue;
            };
            let point = schedule::refresh_point(&token, self.config.refresh_at, self.jitter_offset);
            if schedule::warm_token_usable(&token, point, now) {
                tracing::info!(
                    tenant = %self.config.name,
                    expires_on = token.expires_on(),
                    next_refresh = %clock::display_time(point),
                    "warm start: reusing the token on disk"
                );
                self.current_issued_on = Some(token.issued_on());
                self.hold_for_api(&token);
                self.warm_start_embeds().await;
                let mut status = status::lock(&self.status);
                status.expires_on = Some(token.expires_on());
                status.first_attempt_finished(self.pending.as_deref());
                return point;
            }
        }
        now
    }

    /// One attempt: fetch (or adopt the fleet's token, as `claim` says), write the local sinks
    /// while holding `permit`, and leave the rest (Redis) to a step of their own that follows
    /// at once. Returns when to ask for the next token.
    async fn attempt(
        &mut self,
        claim: Option<Claim>,
        permit: Option<OwnedSemaphorePermit>,
    ) -> SystemTime {
        let now = SystemTime::now();
        self.last_attempt = Some(now);
        let mut request_duration = None;
        let mut permit = permit;
        let mut leased = false;
        let mut adopted_from = None;
        let fetched = match claim {
            Some(Claim::Adopt {
                token,
                refreshed_by,
            }) => {
                adopted_from = Some(refreshed_by);
                Ok(token)
            }
            Some(Claim::Busy) => {
                if let Some(observer) = &self.shared.observer {
                    observer.fleet_lease_busy();
                }
                return schedule::later(now, FLEET_BUSY_RETRY);
            }
            Some(Claim::Unavailable(err)) => {
                tracing::warn!(
                    tenant = %self.config.name,
                    error = %err,
                    "fleet: Redis cannot say whether another replica refreshed; fetching without the fleet"
                );
                self.fetch_in_lanes(&mut permit, &mut request_duration)
                    .await
            }
            Some(Claim::Lease) => {
                leased = true;
                self.fetch_in_lanes(&mut permit, &mut request_duration)
                    .await
            }
            None => {
                self.fetch_in_lanes(&mut permit, &mut request_duration)
                    .await
            }
        };
        if let (Some(observer), Some(duration)) = (&self.shared.observer, request_duration) {
            observer.request_finished(duration);
        }
        let token = match fetched {
            Ok(token) => token,
            Err(err) => {
                drop(permit);
                if leased && let Some(fleet) = &self.shared.fleet {
                    fleet.release(&self.config).await;
                }
                // A token in hand that never reached its sinks is past its refresh point by now
                // (attempts come no earlier): the sinks keep what they hold.
                self.unwritten = None;
                self.count_attempt(Err(&err));
                return self.failed(err);
            }
        };
        self.failures = 0;
        self.retry_not_before = None;
        // The first token since the tenant started without one (a cold start: every tenant at
        // once) gets a random phase; the ones after it, the tenant's stable period.
        let refresh_point = if self.current_issued_on.is_none() {
            schedule::first_refresh_point(
                &token,
                self.config.refresh_at,
                self.config.jitter,
                fastrand::f64(),
            )
        } else {
            schedule::refresh_point(&token, self.config.refresh_at, self.jitter_offset)
        };
        let refreshed_by = match (&self.shared.fleet, adopted_from) {
            (_, Some(by)) => Some(by),
            (Some(fleet), None) => Some(fleet.replica_id().clone()),
            (None, None) => None,
        };
        // The permit is held through the local writes: when the disk is slower than Entra,
        // tenants wait before fetching rather than piling up fetched tokens in memory. Redis
        // is written without it, after the files.
        let all: Vec<usize> = (0..self.config.sinks.len()).collect();
        let (local, rest): (Vec<usize>, Vec<usize>) = all.into_iter().partition(|&index| {
            matches!(
                self.config.sinks.get(index),
                Some(crate::config::SinkConfig::File(_))
            )
        });
        let written = self.write_sinks(&token, &local).await;
        drop(permit);
        if let Some(fleet) = &self.shared.fleet {
            if request_duration.is_some()
                && let Err(err) = fleet.publish(&self.config, &token).await
            {
                tracing::warn!(tenant = %self.config.name, error = %err, "fleet: cannot share the token");
            }
            if leased {
                fleet.release(&self.config).await;
            }
        }
        let mut sinks = written.failed;
        sinks.extend(rest);
        self.unwritten = Some(Box::new(Unwritten {
            token,
            refreshed_by,
            refresh_point,
            sinks,
            tries: 0,
            write_at: SystemTime::now(),
        }));
        match written.error {
            // A local sink failed: the failure is recorded now, and its write tried again on
            // the short schedule, with Redis.
            Some(err) => self.write_failed(err),
            None if self
                .unwritten
                .as_ref()
                .is_some_and(|held| held.sinks.is_empty()) =>
            {
                self.written();
            }
            // Redis follows in a step of its own, due now.
            None => {}
        }
        refresh_point
    }

    /// Writes the token in hand to the sinks that do not hold it yet; Redis sinks in a step of
    /// their own (see [`Tenant::lane`]). A token that expired meanwhile is dropped: the sinks
    /// keep what they hold, and the next attempt fetches.
    async fn write_held(&mut self) {
        let Some(held) = self.unwritten.as_ref() else {
            return;
        };
        if held.token.expires_on() <= clock::unix_now() {
            self.unwritten = None;
            return;
        }
        let sinks = held.sinks.clone();
        let token = held.token.clone();
        let written = self.write_sinks(&token, &sinks).await;
        if let Some(held) = self.unwritten.as_mut() {
            held.sinks = written.failed;
        }
        match written.error {
            Some(err) => self.write_failed(err),
            None => self.written(),
        }
    }

    /// Every sink holds the token in hand: the refresh succeeded.
    fn written(&mut self) {
        let Some(held) = self.unwritten.take() else {
            return;
        };
        let Unwritten {
            token,
            refreshed_by,
            refresh_point,
            ..
        } = *held;
        status::lock(&self.status).local_sink_failing = false;
        self.count_attempt(Ok(()));
        if self.shared.fleet.is_some()
            && let Some(observer) = &self.shared.observer
        {
            let adopted = match (&refreshed_by, &self.shared.fleet) {
                (Some(by), Some(fleet)) => by != fleet.replica_id(),
                _ => false,
            };
            observer.fleet_token(adopted);
        }
        self.succeeded(token, refreshed_by, refresh_point);
    }

    /// A write of the token in hand failed: recorded like a failed attempt, and tried again
    /// after [`schedule::write_retry`], without asking Entra for another token.
    fn write_failed(&mut self, err: RefreshError) {
        let now = SystemTime::now();
        let Some(held) = self.unwritten.as_mut() else {
            return;
        };
        held.tries = held.tries.saturating_add(1);
        // The token the sinks still hold runs out first: its consumers are the ones waiting.
        let in_sinks = status::lock(&self.status).expires_on;
        let runs_out = in_sinks.map_or(held.token.expires_on(), |exp| {
            exp.min(held.token.expires_on())
        });
        let remaining = schedule::unix_to_system(runs_out)
            .duration_since(now)
            .unwrap_or(Duration::ZERO);
        let delay = schedule::write_retry(held.tries, remaining);
        held.write_at = schedule::later(now, delay);
        let local_failing = held.sinks.iter().any(|&index| {
            matches!(
                self.config.sinks.get(index),
                Some(crate::config::SinkConfig::File(_))
            )
        });
        let consecutive = {
            let mut status = status::lock(&self.status);
            status.local_sink_failing = local_failing;
            status.consecutive_failures = status.consecutive_failures.saturating_add(1);
            status.last_error = Some(Box::new(err.clone()));
            status.first_attempt_finished(self.pending.as_deref());
            status.consecutive_failures
        };
        self.count_attempt(Err(&err));
        let retry_in = (!self.shared.once).then_some(delay);
        log_failure(&self.config.name, &err, retry_in, consecutive, false);
    }

    /// Counts an attempt's (or a write's) outcome in the tenant's status and daemon-wide.
    fn count_attempt(&self, result: Result<(), &RefreshError>) {
        {
            let mut status = status::lock(&self.status);
            status.credential_expiry = self.credential.expiry();
            match result {
                Ok(()) => status.successes += 1,
                Err(err) => {
                    status.failures += 1;
                    status.failures_by_reason[err.reason.index()] += 1;
                }
            }
        }
        if let Some(observer) = &self.shared.observer {
            observer.attempt_finished(result.map_err(|err| err.reason));
        }
    }

    /// Asks the token endpoint, in the main lane or the slow one (see [`in_lanes`]).
    async fn fetch_in_lanes(
        &mut self,
        permit: &mut Option<OwnedSemaphorePermit>,
        request_duration: &mut Option<Duration>,
    ) -> Result<AccessToken, RefreshError> {
        if let Some(rate) = &self.shared.rate {
            let waited = rate.acquire().await;
            if let (Some(observer), false) = (&self.shared.observer, waited.is_zero()) {
                observer.rate_limited(waited);
            }
        }
        let started = std::time::Instant::now();
        let key_vault = self.shared.key_vault.as_deref();
        let request = self
            .credential
            .fetch(&self.shared.client, key_vault, &self.config);
        let main_lane = !self.slow;
        let slow_after = self.shared.slow_after.get();
        let (fetched, kept, moved) = in_lanes(
            request,
            permit.take(),
            main_lane,
            &self.shared.slow_lane,
            slow_after,
        )
        .await;
        *permit = kept;
        let took = started.elapsed();
        let timed_out = matches!(&fetched, Err(err) if err.reason == Reason::Timeout);
        self.slow = moved || timed_out || (!main_lane && took >= slow_after);
        if main_lane && !moved && fetched.is_ok() {
            self.shared.slow_after.record(took);
        }
        *request_duration = Some(took);
        fetched
    }

    /// Whether the token is still in Redis; a refresh falling due (`wake`) or a shutdown ends the
    /// check early: a slow or hung Redis must not hold either back.
    async fn check_presence(&self, wake: SystemTime, cancel: &CancellationToken) -> Presence {
        if self.failures > 0 || self.unwritten.is_some() {
            // Failing already, or writing a token in hand: every sink is written again anyway.
            return Presence::Kept;
        }
        let lost = tokio::select! {
            biased;
            () = cancel.cancelled() => return Presence::Cancelled,
            lost = self.lost_from_redis() => lost,
            () = sleep_until(wake) => false,
        };
        if !lost {
            return Presence::Kept;
        }
        tracing::warn!(
            tenant = %self.config.name,
            "the token is gone from Redis (restarted without persistence, or flushed); refreshing"
        );
        Presence::Lost
    }

    /// How often to check that the token is still in Redis: only for tenants that keep it there.
    fn presence_check_interval(&self) -> Option<Duration> {
        let in_redis = self.shared.fleet.is_some()
            || self
                .config
                .sinks
                .iter()
                .any(|sink| matches!(sink, crate::config::SinkConfig::Redis(_)));
        match &self.shared.store {
            Some(store) if in_redis => Some(store.config().check_interval),
            _ => None,
        }
    }

    /// Whether a token this tenant still holds has vanished from Redis (a sink's key, or the
    /// fleet's shared token). Unknown (Redis unreachable) counts as not lost: the next write
    /// reports the outage.
    async fn lost_from_redis(&self) -> bool {
        let still_valid = status::lock(&self.status)
            .expires_on
            .is_some_and(|exp| clock::unix_now() < exp);
        if !still_valid {
            return false;
        }
        for sink in self.sinks() {
            if sink.present().await == Some(false) {
                return true;
            }
        }
        match &self.shared.fleet {
            Some(fleet) => fleet.present(&self.config).await == Some(false),
            None => false,
        }
    }

    /// Writes the sinks `indices` (of the tenant's `sinks`), every one even after one failed:
    /// a Redis outage must not keep the token from the local file. Returns those that failed
    /// and the first failure.
    async fn write_sinks(&self, token: &AccessToken, indices: &[usize]) -> Written {
        let mut written = Written {
            failed: Vec::new(),
            error: None,
        };
        for &index in indices {
            let Some(sink) = self
                .config
                .sinks
                .get(index)
                .and_then(|sink| Sink::from_config(sink, self.shared.store.as_ref()))
            else {
                continue;
            };
            if let Err(err) = sink.write(&self.config, token).await {
                written.failed.push(index);
                written.error.get_or_insert(err);
            }
        }
        written
    }

    /// Every sink holds `token`, to be refreshed at `point`.
    fn succeeded(&mut self, token: AccessToken, refreshed_by: Option<Arc<str>>, point: SystemTime) {
        let recovered = status::lock(&self.status).consecutive_failures > 0;
        self.current_issued_on = Some(token.issued_on());
        let adopted = match (&refreshed_by, &self.shared.fleet) {
            (Some(by), Some(fleet)) => by != fleet.replica_id(),
            _ => false,
        };
        {
            let mut status = status::lock(&self.status);
            status.refreshed_by = refreshed_by;
            status.expires_on = Some(token.expires_on());
            status.last_success = Some(SystemTime::now());
            status.consecutive_failures = 0;
            status.last_error = None;
            status.first_attempt_finished(self.pending.as_deref());
        }
        tracing::info!(
            tenant = %self.config.name,
            expires_at = %clock::display_time(schedule::unix_to_system(token.expires_on())),
            next_refresh = %clock::display_time(point),
            fingerprint = %token.fingerprint(),
            recovered,
            "{}",
            if adopted { "token adopted from the fleet" } else { "token refreshed" }
        );
        self.hold_for_api(&token);
    }

    /// A token request failed: backs off (or waits the permanent-failure interval, or the
    /// server's `Retry-After`) and returns when to ask again.
    fn failed(&mut self, err: RefreshError) -> SystemTime {
        self.failures = self.failures.saturating_add(1);
        let policy = self.shared.policy;
        let delay = match err.class {
            ErrorClass::Permanent => policy.permanent_retry_interval,
            ErrorClass::Transient | ErrorClass::Throttled | ErrorClass::Sink => schedule::backoff(
                self.failures - 1,
                policy.backoff_min,
                policy.backoff_max,
                fastrand::f64(),
            ),
        };
        let delay = schedule::respect_retry_after(delay, err.retry_after);
        let now = SystemTime::now();
        self.retry_not_before = err
            .retry_after
            .map(|retry_after| schedule::later(now, retry_after.get()));
        let (was_permanent, consecutive) = {
            let mut status = status::lock(&self.status);
            let was = status.last_error.as_ref().map(|e| e.class) == Some(ErrorClass::Permanent);
            status.consecutive_failures = status.consecutive_failures.saturating_add(1);
            status.last_error = Some(Box::new(err.clone()));
            status.first_attempt_finished(self.pending.as_deref());
            (was, status.consecutive_failures)
        };
        let planned = schedule::later(now, delay);
        // What the log says is when the next attempt really comes: the minimum interval
        // between attempts may push it past the backoff.
        let wake = schedule::next_wake(planned, None, self.last_attempt, self.retry_not_before);
        let retry_in = wake.duration_since(now).unwrap_or(delay);
        log_failure(
            &self.config.name,
            &err,
            (!self.shared.once).then_some(retry_in),
            consecutive,
            was_permanent,
        );
        planned
    }
}

/// Runs a token request holding `permit`. A request in the main lane still running after
/// `slow_after` trades its permit for one of the slow lane (waiting for it while the request goes
/// on), so requests to an endpoint that hangs stop taking main-lane permits within `slow_after`,
/// instead of for the whole request timeout. Returns the output, the permit now held, and whether
/// the request moved.
async fn in_lanes<F: std::future::Future>(
    request: F,
    permit: Option<OwnedSemaphorePermit>,
    main_lane: bool,
    slow_lane: &Arc<Semaphore>,
    slow_after: Duration,
) -> (F::Output, Option<OwnedSemaphorePermit>, bool) {
    let mut request = std::pin::pin!(request);
    if !main_lane {
        return (request.await, permit, false);
    }
    tokio::select! {
        output = &mut request => return (output, permit, false),
        () = tokio::time::sleep(slow_after) => {}
    }
    let slow = tokio::select! {
        output = &mut request => return (output, permit, false),
        slow = slow_lane.clone().acquire_owned() => slow.ok(),
    };
    drop(permit);
    (request.await, slow, true)
}

/// One line per failure with everything needed to open a support case; ERROR only when a tenant
/// enters the permanent state, so a misconfigured tenant does not flood the log. `retry_in`:
/// when the next try comes; `None` in `once`, where a failure is final.
fn log_failure(
    tenant: &str,
    err: &RefreshError,
    retry_in: Option<Duration>,
    failures: u32,
    was_permanent: bool,
) {
    let aadsts = err.aadsts_code().unwrap_or_default();
    let error_code = err.oauth_error.as_deref().unwrap_or("");
    let trace_id = err.trace_id.as_deref().unwrap_or("");
    let correlation_id = err.correlation_id.as_deref().unwrap_or("");
    let client_request_id = err.client_request_id.as_deref().unwrap_or("");
    let status = err.status.unwrap_or(0);
    let class = err.class.as_str();
    let reason = err.reason.as_str();
    let message = err.message.as_str();
    let Some(retry_in) = retry_in else {
        tracing::error!(
            tenant, class, reason, error_code, aadsts = %aadsts, status, trace_id,
            correlation_id, client_request_id, error = message, "refresh failed"
        );
        return;
    };
    // Whole seconds, except for the short waits of fast backoffs, which would all read "0s".
    let shown = if retry_in < Duration::from_secs(10) {
        Duration::from_millis(u64::try_from(retry_in.as_millis()).unwrap_or(u64::MAX))
    } else {
        Duration::from_secs(retry_in.as_secs())
    };
    let retry_in = humantime::format_duration(shown).to_string();
    macro_rules! emit {
        ($level:ident, $text:literal) => {
            tracing::$level!(
                tenant, class, reason, error_code, aadsts = %aadsts, status, trace_id,
                correlation_id, client_request_id,
                retry_in = %retry_in, consecutive_failures = failures, error = message, $text
            )
        };
    }
    match err.class {
        ErrorClass::Permanent if !was_permanent => {
            emit!(
                error,
                "refresh failed: configuration problem, retrying slowly until fixed"
            )
        }
        ErrorClass::Permanent => emit!(info, "refresh still failing: configuration problem"),
        ErrorClass::Sink => emit!(warn, "token not written, will write it again"),
        _ => emit!(warn, "refresh failed, will retry"),
    }
}

/// Sleeps until a wall-clock instant (immediately if it has passed).
pub(crate) async fn sleep_until(when: SystemTime) {
    let delay = when
        .duration_since(SystemTime::now())
        .unwrap_or(Duration::ZERO);
    tokio::time::sleep(delay).await;
}

/// Outcome of `once` for one tenant.
#[derive(Debug)]
pub struct OnceOutcome {
    /// Tenant name.
    pub tenant: String,
    /// Ok, or why not.
    pub result: Result<(), RefreshError>,
}

/// Fetches and writes one token for one tenant, without scheduling (the `once` command): one
/// attempt and one write of every sink, each failure final.
pub async fn refresh_once(config: Arc<TenantConfig>, shared: Arc<Shared>) -> OnceOutcome {
    let status = StatusHandle::default();
    let mut tenant = Tenant::new(config.clone(), shared.clone(), status.clone());
    let never = CancellationToken::new();
    let _ = tenant.claim_and_attempt(&never).await;
    if tenant
        .unwritten
        .as_ref()
        .is_some_and(|held| held.tries == 0)
    {
        tenant.write_held().await;
    }
    let last_error = status::lock(&status).last_error.take().map(|err| *err);
    OnceOutcome {
        tenant: config.name.clone(),
        result: match last_error {
            Some(err) => Err(err),
            None => Ok(()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn hardening_11_a_hanging_request_gives_its_main_permit_back() {
        let main = Arc::new(Semaphore::new(1));
        let slow = Arc::new(Semaphore::new(1));
        let permit = main.clone().acquire_owned().await.ok();
        let hanging = tokio::time::sleep(Duration::from_secs(30));
        let run = tokio::spawn({
            let slow = slow.clone();
            async move { in_lanes(hanging, permit, true, &slow, SLOW_AFTER).await }
        });
        // Before SLOW_AFTER the request holds the main lane...
        tokio::time::sleep(SLOW_AFTER / 2).await;
        assert_eq!(main.available_permits(), 0);
        // ...after it, the slow lane.
        tokio::time::sleep(SLOW_AFTER).await;
        assert_eq!(main.available_permits(), 1);
        assert_eq!(slow.available_permits(), 0);
        let ((), kept, moved) = run.await.unwrap();
        assert!(moved);
        drop(kept);
        assert_eq!(slow.available_permits(), 1);
    }

    /// A sleeping tenant is its `Tenant` alone, what a hundred thousand tenants cost each
    /// besides their configuration and status: the attempt's and the checks' state exists only
    /// while they run.
    #[test]
    fn a_sleeping_tenant_is_small() {
        let size = std::mem::size_of::<Tenant>();
        println!(
            "Tenant {size} bytes; Credential {} AccessToken {}",
            std::mem::size_of::<Credential>(),
            std::mem::size_of::<AccessToken>()
        );
        assert!(size <= 256, "a sleeping tenant takes {size} bytes");
    }

    #[test]
    fn the_slow_threshold_follows_the_typical_request_within_its_bounds() {
        let threshold = SlowAfter::new(SLOW_AFTER);
        assert_eq!(threshold.get(), SLOW_AFTER_MIN, "nothing measured yet");
        threshold.record(Duration::from_millis(10));
        assert_eq!(threshold.get(), Duration::from_millis(80));
        for _ in 0..100 {
            threshold.record(Duration::from_secs(30));
        }
        assert_eq!(threshold.get(), SLOW_AFTER, "capped at the ceiling");
        for _ in 0..200 {
            threshold.record(Duration::ZERO);
        }
        assert_eq!(threshold.get(), SLOW_AFTER_MIN, "never below the floor");
        threshold.record(Duration::MAX);
        assert_eq!(threshold.get(), SLOW_AFTER);
        assert_eq!(
            SlowAfter::new(Duration::ZERO).get(),
            SLOW_AFTER_MIN,
            "a ceiling below the floor is the floor"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_quick_request_stays_in_its_lane() {
        let main = Arc::new(Semaphore::new(1));
        let slow = Arc::new(Semaphore::new(1));
        let permit = main.clone().acquire_owned().await.ok();
        let quick = tokio::time::sleep(SLOW_AFTER / 4);
        let ((), kept, moved) = in_lanes(quick, permit, true, &slow, SLOW_AFTER).await;
        assert!(!moved && kept.is_some());
        assert_eq!(slow.available_permits(), 1);
        // A request already in the slow lane never moves.
        let permit = slow.clone().acquire_owned().await.ok();
        let long = tokio::time::sleep(SLOW_AFTER * 4);
        let ((), _kept, moved) = in_lanes(long, permit, false, &slow, SLOW_AFTER).await;
        assert!(!moved);
    }
}
