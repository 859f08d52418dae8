//! A tenant: a small composition of refreshers, stepped by the supervisor.
//!
//! A tenant holds the [`Refresher`] of its access token (`access.rs`: fetch through the request
//! lanes and the fleet), the Power BI calls made with that token ([`Calls`]: its access probe
//! and the refreshers of its embed tokens), and the check that its token is still in Redis
//! (`presence.rs`). Each [`Tenant::step`] does what [`Tenant::plan`] found due first and says
//! when the next step is due; the supervisor's timer keeps the sleeping tenants and runs each
//! step as its own task when it falls due. Between steps a tenant is only this struct, so a
//! hundred thousand sleeping tenants cost no task, timer or future each. Tenants share nothing
//! but the HTTP connection pool, the Redis connection and the semaphores that cap concurrent
//! requests, so one broken or slow tenant never delays another.
//!
//! Cancellation is honoured while waiting for the start-up turn and the semaphore, but not during
//! an attempt: an attempt that has started (request sent, sink being written) runs to completion,
//! so shutdown never abandons a half-done write. The supervisor bounds that wait with a grace
//! period.

mod access;
mod presence;

use std::sync::Arc;
use std::time::SystemTime;
use tokio_util::sync::CancellationToken;

use crate::clock;
use crate::config::TenantConfig;
use crate::credential::Credential;
use crate::powerbi::Context;
use crate::powerbi::calls::Calls;
use crate::refresh::{Refresher, Shared, lanes};
use crate::schedule;
use crate::sink::Owner;
use crate::status::{self, StatusHandle};
use crate::token::AccessToken;

/// One tenant's refreshers and their schedule.
pub struct Tenant {
    /// The tenant's settings (immutable; a changed tenant gets a new task).
    config: Arc<TenantConfig>,
    /// Process-wide pieces.
    shared: Arc<Shared>,
    /// Shown by `/status` and the metrics.
    status: StatusHandle,
    /// The access token's schedule, backoff and writes.
    access: Refresher<AccessToken>,
    /// When the last attempt began: the next one starts at least
    /// [`schedule::MIN_ATTEMPT_INTERVAL`] later, whatever asks for it.
    last_attempt: Option<SystemTime>,
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
    /// When the next attempt is due, everything considered (cron, the minimum interval,
    /// `Retry-After`).
    wake: SystemTime,
    /// When to check next that the token is still in Redis; `None` for tenants without Redis.
    next_check: Option<SystemTime>,
    /// The Power BI calls made with the access token: the probe, embed tokens.
    api: Calls,
    /// What the next step does, decided with its time by [`Tenant::plan`].
    due: Due,
}

/// What a tenant's next step does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Due {
    /// Fetch an access token (or adopt the fleet's) and write it.
    Attempt,
    /// Write a token in hand to the sinks that do not hold it yet.
    Write(Held),
    /// Look whether the token is still in Redis.
    Check,
    /// The Power BI calls: the access probe, embed tokens.
    Api,
}

/// Which token a write is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Held {
    /// The access token.
    Access,
    /// The embed token whose write is due first (`Embeds::next_write`): found again
    /// when the step runs, so that a sleeping tenant carries no index.
    Embed,
}

/// What the Power BI calls work with: built from the tenant's fields one by one, so that its
/// [`Calls`] can be borrowed mutably beside it.
macro_rules! api_context {
    ($tenant:ident) => {
        Context {
            shared: &$tenant.shared,
            config: &$tenant.config,
            status: &$tenant.status,
        }
    };
}

impl Tenant {
    /// The refreshers of one tenant.
    pub fn new(config: Arc<TenantConfig>, shared: Arc<Shared>, status: StatusHandle) -> Self {
        let credential = Credential::new(&config.credential);
        status::lock(&status).credential_expiry = credential.expiry();
        let tenant = Tenant {
            api: Calls::new(&config, &status),
            credential,
            config,
            shared,
            status,
            access: Refresher::default(),
            last_attempt: None,
            slow: false,
            current_issued_on: None,
            started: false,
            pending: None,
            files_absent: false,
            wake: SystemTime::UNIX_EPOCH,
            next_check: None,
            due: Due::Attempt,
        };
        // Which identity reads the credential shows from the start, a warm start's too.
        status::lock(&tenant.status).key_vault = tenant.key_vault_status();
        tenant
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

    /// The tenant's stable jitter, as a fraction of the lifetime: worked out from its name when
    /// needed (a hash of a few bytes per refresh) rather than kept by a sleeping tenant.
    fn jitter_offset(&self) -> f64 {
        schedule::tenant_jitter(&self.config.name, self.config.jitter)
    }

    /// Whose token the access token is, for the sinks and the log.
    fn owner(&self) -> Owner<'_> {
        Owner::access(&self.config.name)
    }

    /// Does what is due now and returns when the next step is due; `None` when `cancel` fired
    /// first. The first step is the warm start, and the first attempt too when that is due at
    /// once; after it, each step does what [`Tenant::plan`] found due first: an attempt, the
    /// writes of a token in hand, a check that the token is still in Redis, or the Power BI
    /// calls.
    pub async fn step(&mut self, cancel: &CancellationToken) -> Option<SystemTime> {
        if !self.started {
            // Warm starts take turns: the supervisor runs at most START_UP_READS at once.
            let first = Box::pin(self.start_up()).await;
            self.access.plan_at(Some(first));
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
            Due::Write(Held::Access) => Box::pin(self.write_access()).await,
            Due::Write(Held::Embed) => Box::pin(self.api.write(&api_context!(self))).await,
            Due::Check => Box::pin(self.check_presence(cancel)).await?,
            Due::Attempt => {
                // Boxed so that the many steps waiting for a permit at a cold start stay small:
                // only attempts in flight pay for the HTTP and file-write state.
                Box::pin(self.claim_and_attempt(cancel)).await?;
                if self
                    .api
                    .next_call()
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

    /// Which lane of the supervisor's its next step waits in: 0 the warm start, 1 the main
    /// lane, 2 the slow lane (its last request was slow or timed out), [`lanes::REDIS_LANE`] a step
    /// that only talks to Redis.
    pub fn lane(&self) -> usize {
        if !self.started {
            return 0;
        }
        let redis_only = match self.due {
            Due::Check => true,
            Due::Write(Held::Access) => self.access.only_shared_pending(&self.config.sinks),
            Due::Write(Held::Embed) => self.api.write_only_shared(&api_context!(self)),
            Due::Attempt | Due::Api => false,
        };
        match (redis_only, self.slow) {
            (true, _) => lanes::REDIS_LANE,
            (false, false) => 1,
            (false, true) => 2,
        }
    }

    /// Plans the next attempt (the refresh point, a cron activation, the minimum interval and
    /// `Retry-After` considered), shows it in the status, and returns when the next step is
    /// due: that attempt, or what falls before it (writes of a token in hand, a Power BI call, a
    /// presence check), noted in `due`.
    fn plan(&mut self) -> SystemTime {
        let cron = self
            .config
            .schedule
            .as_ref()
            .and_then(|s| schedule::cron_next(&s.cron, SystemTime::now()));
        let planned = self.access.next().unwrap_or_else(SystemTime::now);
        self.wake = schedule::next_wake(
            planned,
            cron,
            self.last_attempt,
            self.access.retry_not_before(),
        );
        status::lock(&self.status).token.next_refresh = Some(self.wake);
        let (at, due) = [
            self.access
                .write_at()
                .map(|at| (at, Due::Write(Held::Access))),
            self.api
                .next_write()
                .map(|at| (at, Due::Write(Held::Embed))),
            self.api.next_call().map(|at| (at, Due::Api)),
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

    /// Every Power BI call that is due (see [`Calls::make_due`]). `None` when `cancel` fired
    /// while one waited for its turn.
    async fn api_calls(&mut self, cancel: &CancellationToken) -> Option<()> {
        let context = api_context!(self);
        if self.api.make_due(&context, cancel).await? {
            // Power BI's clock says the token is over: a fresh one costs one request and
            // settles it (the minimum interval between attempts still applies).
            self.access.plan_at(Some(SystemTime::now()));
        }
        Some(())
    }

    /// Adopts a still-fresh token from a sink (warm start). Returns the first wake-up.
    async fn start_up(&mut self) -> SystemTime {
        let now = SystemTime::now();
        let config = Arc::clone(&self.config);
        let jitter = self.jitter_offset();
        let point = |token: &AccessToken| schedule::refresh_point(token, config.refresh_at, jitter);
        let Some(token) = crate::refresh::stored(
            &config.sinks,
            self.shared.store.as_ref(),
            self.owner(),
            self.files_absent,
            |bytes| crate::token::document::parse_existing(bytes, &config),
            |token| schedule::warm_token_usable(token, point(token), now),
        )
        .await
        else {
            return now;
        };
        let point = point(&token);
        tracing::info!(
            tenant = %config.name,
            expires_on = token.expires_on(),
            next_refresh = %clock::display_time(point),
            "warm start: reusing the token on disk"
        );
        self.current_issued_on = Some(token.issued_on());
        self.api.hold(&config, &token);
        let context = api_context!(self);
        self.api.warm_start(&context, token.expires_on()).await;
        let mut status = status::lock(&self.status);
        status.token.expires_on = Some(token.expires_on());
        status.first_attempt_finished(self.pending.as_deref());
        point
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
