//! One token's life, whatever its kind: when to ask for the next one, how to back off, how to
//! get it into every sink, and what its status says.
//!
//! A token kind (the access token, an embed token) says only how to fetch one, how to bound
//! what came back ([`crate::token::AccessToken::new`], `powerbi::embed::parse_response`) and how
//! to render it for a sink's format; the [`Refresher`] does the rest the same way for every kind:
//!
//! * a fetched token is held until every sink has it; the local sinks (files) are written at
//!   once, the shared ones (Redis) right after, in a step of their own;
//! * a sink that fails gets the token in hand again on a short schedule of its own
//!   ([`crate::schedule::write_retry`]), without another request, until the token's refresh
//!   point;
//! * a failed request backs off ([`crate::schedule::backoff`]), waits the permanent-failure
//!   interval for a configuration problem, and never undercuts a `Retry-After`;
//! * the outcome lands in the token's [`TokenStatus`] and in one log line per failure.
//!
//! The refresher does no I/O of its own but the sink writes; fetching, and when to run a step,
//! stay with the tenant that composes the refreshers.

pub mod lanes;
pub mod shared;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use secrecy::SecretString;

use crate::config::{FileFormat, SinkConfig};
use crate::error::{ErrorClass, RefreshError};
use crate::schedule;
use crate::sink::{self, Owner, Rendered, Sink};
use crate::status::{self, StatusHandle, TenantStatus, TokenStatus};
use crate::store::Store;

pub use shared::{Observer, RetryPolicy, Shared};

/// What a refresher needs to know of the token it keeps.
pub trait Token: Clone {
    /// Unix seconds it expires.
    fn expires_on(&self) -> i64;
}

impl Token for crate::token::AccessToken {
    fn expires_on(&self) -> i64 {
        crate::token::AccessToken::expires_on(self)
    }
}

/// A token that some of its sinks do not hold yet.
struct Unwritten<T> {
    /// The token.
    token: T,
    /// Fleet mode: the replica that fetched it.
    refreshed_by: Option<Arc<str>>,
    /// When to ask for the next one, planned when it came; `None` when the next one follows
    /// another token's refresh.
    refresh_point: Option<SystemTime>,
    /// The sinks (indices into the token's configured sinks) that do not hold it yet.
    sinks: Vec<usize>,
    /// Failed writes of it so far.
    tries: u32,
    /// When to write it next.
    write_at: SystemTime,
}

/// A token every sink holds now.
pub struct Written<T> {
    /// The token.
    pub token: T,
    /// Fleet mode: the replica that made it (this one, or another whose token was adopted).
    pub refreshed_by: Option<Arc<str>>,
    /// When to ask for the next one.
    pub refresh_point: Option<SystemTime>,
}

/// What a round of writes came to.
pub enum Progress<T> {
    /// Every sink holds the token.
    Written(Written<T>),
    /// The sinks written so far took it; others wait for their turn (Redis after the files).
    Pending,
    /// A sink failed: the failure, and whether a local sink is among those still without it.
    Failed(RefreshError, bool),
    /// Nothing to write (no token in hand, or it expired meanwhile and was dropped).
    Idle,
}

/// Which of the sinks a round of writes covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Which {
    /// Only the local ones (files): written while the request permit is still held.
    Local,
    /// Every sink that does not hold the token yet.
    All,
}

/// How a kind renders its token for a sink's format, and whose token it is.
pub struct Renderer<'a, T> {
    /// Whose token (for notifications and the log).
    pub owner: Owner<'a>,
    /// The document for a format.
    pub render: &'a (dyn Fn(FileFormat, &T) -> SecretString + Sync),
    /// The shared Redis, for Redis sinks.
    pub store: Option<&'a Arc<Store>>,
}

/// Which of a tenant's tokens a refresher keeps: where its status record is, and which
/// daemon-wide counters its outcomes go to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Record {
    /// The access token: `TenantStatus.token`, the refresh counters.
    Access,
    /// Embed token `n`: `TenantStatus.embeds[n].token`, the embed counters.
    Embed(usize),
}

impl Record {
    /// The kind of fleet job the token is.
    fn kind(self) -> crate::fleet::Kind {
        match self {
            Record::Access => crate::fleet::Kind::Token,
            Record::Embed(_) => crate::fleet::Kind::Embed,
        }
    }

    /// The token's record in a tenant's status.
    fn of(self, status: &mut TenantStatus) -> Option<&mut TokenStatus> {
        match self {
            Record::Access => Some(&mut status.token),
            Record::Embed(index) => status.embeds.get_mut(index).map(|embed| &mut embed.token),
        }
    }
}

/// Where a refresher reports: its tenant's status, the observer, the log.
pub struct Report<'a> {
    /// The daemon's shared pieces (the observer, the retry policy, `once`).
    pub shared: &'a Shared,
    /// The tenant's status.
    pub status: &'a StatusHandle,
    /// The token's record in it.
    pub record: Record,
    /// Whose token, for the log.
    pub owner: Owner<'a>,
    /// The registry's count of tenants waiting for their first attempt, which the access token's
    /// first outcome takes the tenant off; `None` outside a registry (`once`).
    pub pending: Option<&'a status::Pending>,
}

impl Report<'_> {
    /// Counts an outcome daemon-wide.
    fn count(&self, result: Result<(), crate::error::Reason>) {
        if let Some(observer) = &self.shared.observer {
            match self.record {
                Record::Access => observer.attempt_finished(result),
                Record::Embed(_) => observer.embed_finished(result),
            }
        }
    }

    /// Records a failure and logs it; `retry_at`: when the next try comes.
    fn failure(&self, err: &RefreshError, local_failing: bool, retry_at: Option<SystemTime>) {
        let now = SystemTime::now();
        let recorded = {
            let mut status = status::lock(self.status);
            if self.record == Record::Access {
                status.first_attempt_finished(self.pending);
            }
            self.record.of(&mut status).map(|token| {
                // A write tried again does not move the token's next refresh.
                if err.class != ErrorClass::Sink {
                    token.next_refresh = retry_at.or(token.next_refresh);
                }
                record_failure(token, err, local_failing)
            })
        };
        self.count(Err(err.reason));
        let Some((was_permanent, consecutive)) = recorded else {
            return;
        };
        let retry_in = retry_at
            .filter(|_| !self.shared.once)
            .map(|at| at.duration_since(now).unwrap_or_default());
        log_failure(self.owner, err, retry_in, consecutive, was_permanent);
    }
}

/// The first usable token the json sinks among `sinks` hold (a warm start), in their order:
/// `parse` reads a document made for this token, `usable` says whether it is still worth
/// keeping. Local sinks are skipped when `skip_local` (none of their files exists).
pub async fn stored<T>(
    sinks: &[SinkConfig],
    store: Option<&Arc<Store>>,
    owner: Owner<'_>,
    skip_local: bool,
    parse: impl Fn(&[u8]) -> Option<T>,
    usable: impl Fn(&T) -> bool,
) -> Option<T> {
    for config in sinks {
        if skip_local && sink::is_local(config) {
            continue;
        }
        let Some(sink) = Sink::from_config(config, store) else {
            continue;
        };
        let Some(token) = sink.read_json(owner).await.and_then(|bytes| parse(&bytes)) else {
            continue;
        };
        if usable(&token) {
            return Some(token);
        }
    }
    None
}

/// Whether a shared sink among `sinks` (a Redis key) no longer holds its token: Redis restarted
/// without persistence, a `FLUSHALL`, an eviction. A sink that cannot say counts as holding it.
pub async fn lost(sinks: &[SinkConfig], store: Option<&Arc<Store>>) -> bool {
    for config in sinks {
        if let Some(sink) = Sink::from_config(config, store)
            && sink.present().await == Some(false)
        {
            return true;
        }
    }
    false
}

/// Sleeps until a wall-clock instant (immediately if it has passed).
pub async fn sleep_until(when: SystemTime) {
    let delay = when
        .duration_since(SystemTime::now())
        .unwrap_or(Duration::ZERO);
    tokio::time::sleep(delay).await;
}

/// One token's schedule, backoff and writes.
pub struct Refresher<T> {
    /// Failed requests in a row, for the backoff exponent.
    failures: u32,
    /// When the next request is planned by the token's refresh point or the backoff; `None`
    /// while another token's refresh plans it.
    next: Option<SystemTime>,
    /// Until when the server's last `Retry-After` holds.
    retry_not_before: Option<SystemTime>,
    /// A token fetched that not every sink holds yet. Boxed: most refreshers hold none.
    unwritten: Option<Box<Unwritten<T>>>,
}

impl<T> Default for Refresher<T> {
    fn default() -> Self {
        Refresher {
            failures: 0,
            next: None,
            retry_not_before: None,
            unwritten: None,
        }
    }
}

impl<T: Token> Refresher<T> {
    /// When the next request is planned.
    pub fn next(&self) -> Option<SystemTime> {
        self.next
    }

    /// Plans the next request at `at` (a refresh point, a warm start's, "now").
    pub fn plan_at(&mut self, at: Option<SystemTime>) {
        self.next = at;
    }

    /// Until when a `Retry-After` holds.
    pub fn retry_not_before(&self) -> Option<SystemTime> {
        self.retry_not_before
    }

    /// Whether the last request failed.
    pub fn failing(&self) -> bool {
        self.failures > 0
    }

    /// When the token in hand is to be written next, if there is one.
    pub fn write_at(&self) -> Option<SystemTime> {
        self.unwritten.as_ref().map(|held| held.write_at)
    }

    /// Whether a token is in hand that some sink does not hold yet.
    pub fn holds_unwritten(&self) -> bool {
        self.unwritten.is_some()
    }

    /// Whether every sink still without the token in hand is a shared one (Redis).
    pub fn only_shared_pending(&self, sinks: &[SinkConfig]) -> bool {
        self.unwritten.as_ref().is_some_and(|held| {
            held.sinks
                .iter()
                .all(|&index| sinks.get(index).is_some_and(|sink| !sink::is_local(sink)))
        })
    }

    /// A request brought `token`: it is held until every one of `sinks` sinks has it, and the
    /// next request is planned at `refresh_point`.
    pub fn fetched(
        &mut self,
        token: T,
        refresh_point: Option<SystemTime>,
        refreshed_by: Option<Arc<str>>,
        sinks: usize,
    ) {
        self.failures = 0;
        self.retry_not_before = None;
        self.next = refresh_point;
        self.unwritten = Some(Box::new(Unwritten {
            token,
            refreshed_by,
            refresh_point,
            sinks: (0..sinks).collect(),
            tries: 0,
            write_at: SystemTime::now(),
        }));
    }

    /// Writes the token in hand to `which` of the sinks that do not hold it yet (every one even
    /// after one failed: a Redis outage must not keep the token from the local file). A token
    /// that expired meanwhile is dropped: the sinks keep what they hold.
    pub async fn write(
        &mut self,
        sinks: &[SinkConfig],
        renderer: &Renderer<'_, T>,
        which: Which,
    ) -> Progress<T> {
        let Some(held) = self.unwritten.as_mut() else {
            return Progress::Idle;
        };
        if held.token.expires_on() <= crate::clock::unix_now() {
            self.unwritten = None;
            return Progress::Idle;
        }
        let mut first_error = None;
        let mut still = Vec::new();
        for &index in &held.sinks {
            let Some(config) = sinks.get(index) else {
                continue;
            };
            if which == Which::Local && !sink::is_local(config) {
                still.push(index);
                continue;
            }
            let Some(sink) = Sink::from_config(config, renderer.store) else {
                continue;
            };
            let document = Rendered {
                contents: (renderer.render)(sink::format_of(config), &held.token),
                expires_on: held.token.expires_on(),
                owner: renderer.owner,
            };
            if let Err(err) = sink.write(&document).await {
                still.push(index);
                first_error.get_or_insert(err);
            }
        }
        held.sinks = still;
        if let Some(err) = first_error {
            let local = held
                .sinks
                .iter()
                .any(|&index| sinks.get(index).is_some_and(sink::is_local));
            return Progress::Failed(err, local);
        }
        if !held.sinks.is_empty() {
            return Progress::Pending;
        }
        match self.unwritten.take() {
            Some(held) => Progress::Written(Written {
                token: held.token,
                refreshed_by: held.refreshed_by,
                refresh_point: held.refresh_point,
            }),
            None => Progress::Idle,
        }
    }

    /// A write of the token in hand failed: it is tried again after
    /// [`schedule::write_retry`], counted against whichever runs out first, the token the sinks
    /// hold (`in_sinks`, Unix seconds) or the one in hand. Returns the wait.
    pub fn write_failed(&mut self, in_sinks: Option<i64>) -> Duration {
        let now = SystemTime::now();
        let Some(held) = self.unwritten.as_mut() else {
            return Duration::ZERO;
        };
        held.tries = held.tries.saturating_add(1);
        let runs_out = in_sinks.map_or(held.token.expires_on(), |exp| {
            exp.min(held.token.expires_on())
        });
        let remaining = schedule::unix_to_system(runs_out)
            .duration_since(now)
            .unwrap_or(Duration::ZERO);
        let delay = schedule::write_retry(held.tries, remaining);
        held.write_at = schedule::later(now, delay);
        delay
    }

    /// Acts on a round of writes: a token every sink holds is recorded and counted as a
    /// success and returned (the kind logs it); a failed write is recorded, counted, logged and
    /// tried again soon ([`Refresher::write_failed`]).
    pub fn settle(&mut self, progress: Progress<T>, report: &Report<'_>) -> Option<Written<T>> {
        match progress {
            Progress::Written(written) => {
                let adopted = report.shared.adopted(written.refreshed_by.as_deref());
                {
                    let mut status = status::lock(report.status);
                    if report.record == Record::Access {
                        status.first_attempt_finished(report.pending);
                    }
                    if let Some(token) = report.record.of(&mut status) {
                        record_success(token, written.token.expires_on());
                        token.refreshed_by.clone_from(&written.refreshed_by);
                        token.adopted = adopted;
                        if report.record != Record::Access {
                            token.next_refresh = written.refresh_point;
                        }
                    }
                }
                report.count(Ok(()));
                if let (Some(observer), Some(_)) = (&report.shared.observer, &report.shared.fleet) {
                    observer.fleet_job(report.record.kind(), adopted);
                }
                Some(written)
            }
            Progress::Failed(err, local_failing) => {
                let in_sinks = {
                    let mut status = status::lock(report.status);
                    report
                        .record
                        .of(&mut status)
                        .and_then(|token| token.expires_on)
                };
                let delay = self.write_failed(in_sinks);
                let retry_at = schedule::later(SystemTime::now(), delay);
                report.failure(&err, local_failing, Some(retry_at));
                None
            }
            Progress::Pending | Progress::Idle => None,
        }
    }

    /// A request failed: backs off, records, counts and logs it; returns when to ask again.
    /// `last_attempt`: when the tenant's last attempt began, for the log to say when the next
    /// one really comes (the minimum interval between attempts may push it past the backoff).
    pub fn request_failed(
        &mut self,
        err: &RefreshError,
        report: &Report<'_>,
        last_attempt: Option<SystemTime>,
    ) -> SystemTime {
        let planned = self.fetch_failed(err, &report.shared.policy);
        let wake = schedule::next_wake(planned, None, last_attempt, self.retry_not_before);
        report.failure(err, false, Some(wake));
        planned
    }

    /// A request failed: backs off (or waits the permanent-failure interval) and never
    /// undercuts the server's `Retry-After`. A token in hand that never reached its sinks is
    /// past its refresh point by now (requests come no earlier) and is dropped. Returns when to
    /// ask again.
    pub fn fetch_failed(&mut self, err: &RefreshError, policy: &RetryPolicy) -> SystemTime {
        self.failures = self.failures.saturating_add(1);
        self.unwritten = None;
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
        let planned = schedule::later(now, delay);
        self.next = Some(planned);
        planned
    }
}

/// Records a success in a token's status: every sink holds a token expiring at `expires_on`.
pub fn record_success(status: &mut TokenStatus, expires_on: i64) {
    status.expires_on = Some(expires_on);
    status.last_success = Some(SystemTime::now());
    status.consecutive_failures = 0;
    status.last_error = None;
    status.local_sink_failing = false;
    status.successes = status.successes.saturating_add(1);
}

/// Records a failure in a token's status; `local_failing`: a local sink is among those that do
/// not hold the token. Returns whether the token was already failing permanently, and the
/// failures in a row now.
pub fn record_failure(
    status: &mut TokenStatus,
    err: &RefreshError,
    local_failing: bool,
) -> (bool, u32) {
    let was_permanent = status.last_error.as_ref().map(|e| e.class) == Some(ErrorClass::Permanent);
    status.consecutive_failures = status.consecutive_failures.saturating_add(1);
    status.last_error = Some(Box::new(err.clone()));
    status.local_sink_failing = local_failing;
    status.failures = status.failures.saturating_add(1);
    let count = &mut status.failures_by_reason[err.reason.index()];
    *count = count.saturating_add(1);
    (was_permanent, status.consecutive_failures)
}

/// One line per failure with everything needed to open a support case; ERROR only when a token
/// enters the permanent state, so a misconfigured tenant does not flood the log. `retry_in`:
/// when the next try comes; `None` in `once`, where a failure is final.
pub fn log_failure(
    owner: Owner<'_>,
    err: &RefreshError,
    retry_in: Option<Duration>,
    failures: u32,
    was_permanent: bool,
) {
    let tenant = owner.tenant;
    let embed = owner.embed;
    let aadsts = err.aadsts_code().unwrap_or_default();
    let error_code = err.oauth_error.as_deref().unwrap_or("");
    let trace_id = err.trace_id.as_deref().unwrap_or("");
    let correlation_id = err.correlation_id.as_deref().unwrap_or("");
    let client_request_id = err.client_request_id.as_deref().unwrap_or("");
    let status = err.status.unwrap_or(0);
    let class = err.class.as_str();
    let reason = err.reason.as_str();
    let message = err.message.as_str();
    let advice = err.reason.advice();
    let Some(retry_in) = retry_in else {
        tracing::error!(
            tenant, embed, class, reason, error_code, aadsts = %aadsts, status, trace_id,
            correlation_id, client_request_id, error = message, advice, "refresh failed"
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
                tenant, embed, class, reason, error_code, aadsts = %aadsts, status, trace_id,
                correlation_id, client_request_id, retry_in = %retry_in,
                consecutive_failures = failures, error = message, advice, $text
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
