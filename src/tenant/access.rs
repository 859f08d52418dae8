//! The access token: fetched from the token endpoint through the request lanes (or adopted from
//! the fleet), then handed to the tenant's [`Refresher`](crate::refresh::Refresher).

use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;

use super::Tenant;
use crate::clock;
use crate::error::{Reason, RefreshError};
use crate::fleet::{Claim, Fleet};
use crate::refresh::{self, Progress, Renderer, Which, Written, lanes::in_lanes};
use crate::schedule;
use crate::status;
use crate::token::AccessToken;

/// Fleet mode: how soon to look again when another replica holds the tenant's lease. Its token
/// usually arrives within one request's time.
const FLEET_BUSY_RETRY: Duration = Duration::from_secs(1);

impl Tenant {
    /// An attempt with its turn: in fleet mode the lease first (Redis, before any request
    /// permit is taken, so a slow Redis holds back no other tenant's request), then a permit of
    /// the lane. From the permit on, the attempt runs to completion, even if cancelled
    /// meanwhile. `None` when `cancel` fired first.
    pub(super) async fn claim_and_attempt(&mut self, cancel: &CancellationToken) -> Option<()> {
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
        self.attempt(claim, permit).await;
        Some(())
    }

    /// Fleet mode: adopt the shared token, take the lease, or look again later.
    async fn claim(&self, fleet: &Fleet) -> Claim {
        let now = SystemTime::now();
        let (refresh_at, jitter, ours) = (
            self.config.refresh_at,
            self.jitter_offset(),
            self.current_issued_on,
        );
        let adoptable = |token: &AccessToken| {
            ours.is_none_or(|ours| token.issued_on() > ours)
                && now < schedule::refresh_point(token, refresh_at, jitter)
        };
        fleet.claim(&self.config, adoptable).await
    }

    /// One attempt: fetch (or adopt the fleet's token, as `claim` says), write the local sinks
    /// while holding `permit`, and leave the rest (Redis) to a step of their own that follows
    /// at once.
    async fn attempt(&mut self, claim: Option<Claim>, permit: Option<OwnedSemaphorePermit>) {
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
                self.access
                    .plan_at(Some(schedule::later(now, FLEET_BUSY_RETRY)));
                return;
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
                self.access_failed(err);
                return;
            }
        };
        let refresh_point = self.refresh_point_of(&token);
        let refreshed_by = match (&self.shared.fleet, adopted_from) {
            (_, Some(by)) => Some(by),
            (Some(fleet), None) => Some(fleet.replica_id().clone()),
            (None, None) => None,
        };
        let shared =
            (self.shared.fleet.is_some() && request_duration.is_some()).then(|| token.clone());
        self.access.fetched(
            token,
            Some(refresh_point),
            refreshed_by,
            self.config.sinks.len(),
        );
        // The permit is held through the local writes: when the disk is slower than Entra,
        // tenants wait before fetching rather than piling up fetched tokens in memory. Redis
        // is written without it, after the files.
        let progress = self.write_access_to(Which::Local).await;
        drop(permit);
        if let Some(fleet) = &self.shared.fleet {
            if let Some(token) = &shared
                && let Err(err) = fleet.publish(&self.config, token).await
            {
                tracing::warn!(tenant = %self.config.name, error = %err, "fleet: cannot share the token");
            }
            if leased {
                fleet.release(&self.config).await;
            }
        }
        self.access_progress(progress);
    }

    /// When to ask for the token after `token`: the first token since the tenant started
    /// without one (a cold start: every tenant at once) gets a random phase; the ones after it,
    /// the tenant's stable period.
    fn refresh_point_of(&self, token: &AccessToken) -> SystemTime {
        if self.current_issued_on.is_none() {
            schedule::first_refresh_point(
                token,
                self.config.refresh_at,
                self.config.jitter,
                fastrand::f64(),
            )
        } else {
            schedule::refresh_point(token, self.config.refresh_at, self.jitter_offset())
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

    /// The Write step: the access token in hand to every sink that does not hold it yet.
    pub(super) async fn write_access(&mut self) {
        let progress = self.write_access_to(Which::All).await;
        self.access_progress(progress);
    }

    /// Writes the access token in hand to `which` of its sinks.
    async fn write_access_to(&mut self, which: Which) -> Progress<AccessToken> {
        let config = Arc::clone(&self.config);
        let render =
            |format, token: &AccessToken| crate::token::document::render(format, &config, token);
        let renderer = Renderer {
            owner: crate::sink::Owner {
                tenant: &config.name,
                embed: None,
            },
            render: &render,
            store: self.shared.store.as_ref(),
        };
        self.access.write(&config.sinks, &renderer, which).await
    }

    /// Acts on what a round of writes of the access token came to.
    fn access_progress(&mut self, progress: Progress<AccessToken>) {
        match progress {
            Progress::Written(written) => self.access_written(written),
            Progress::Failed(err, local_failing) => {
                let in_sinks = status::lock(&self.status).token.expires_on;
                let delay = self.access.write_failed(in_sinks);
                let (_, consecutive) = {
                    let mut status = status::lock(&self.status);
                    status.credential_expiry = self.credential.expiry();
                    status.first_attempt_finished(self.pending.as_deref());
                    refresh::record_failure(&mut status.token, &err, local_failing)
                };
                if let Some(observer) = &self.shared.observer {
                    observer.attempt_finished(Err(err.reason));
                }
                let retry_in = (!self.shared.once).then_some(delay);
                refresh::log_failure(self.owner(), &err, retry_in, consecutive, false);
            }
            Progress::Pending | Progress::Idle => {}
        }
    }

    /// Every sink holds the access token: the refresh succeeded.
    fn access_written(&mut self, written: Written<AccessToken>) {
        let Written {
            token,
            refreshed_by,
            refresh_point,
        } = written;
        let point = refresh_point.unwrap_or_else(SystemTime::now);
        let adopted = match (&refreshed_by, &self.shared.fleet) {
            (Some(by), Some(fleet)) => by != fleet.replica_id(),
            _ => false,
        };
        if let Some(observer) = &self.shared.observer {
            observer.attempt_finished(Ok(()));
            if self.shared.fleet.is_some() {
                observer.fleet_token(adopted);
            }
        }
        self.current_issued_on = Some(token.issued_on());
        let recovered = {
            let mut status = status::lock(&self.status);
            let recovered = status.token.consecutive_failures > 0;
            refresh::record_success(&mut status.token, token.expires_on());
            status.credential_expiry = self.credential.expiry();
            status.refreshed_by = refreshed_by;
            status.first_attempt_finished(self.pending.as_deref());
            recovered
        };
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

    /// A token request failed: backs off and records it.
    fn access_failed(&mut self, err: RefreshError) {
        let now = SystemTime::now();
        let planned = self.access.fetch_failed(&err, &self.shared.policy);
        let (was_permanent, consecutive) = {
            let mut status = status::lock(&self.status);
            status.credential_expiry = self.credential.expiry();
            status.first_attempt_finished(self.pending.as_deref());
            refresh::record_failure(&mut status.token, &err, false)
        };
        if let Some(observer) = &self.shared.observer {
            observer.attempt_finished(Err(err.reason));
        }
        // What the log says is when the next attempt really comes: the minimum interval
        // between attempts may push it past the backoff.
        let wake = schedule::next_wake(
            planned,
            None,
            self.last_attempt,
            self.access.retry_not_before(),
        );
        let retry_in = wake
            .duration_since(now)
            .unwrap_or_else(|_| planned.duration_since(now).unwrap_or_default());
        refresh::log_failure(
            self.owner(),
            &err,
            (!self.shared.once).then_some(retry_in),
            consecutive,
            was_permanent,
        );
    }
}
