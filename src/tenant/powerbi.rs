//! A tenant's calls to the Power BI API with its token: the access probe and embed tokens. They
//! run within the tenant's steps (right after a refresh, or when their own time comes), take the
//! same request permits and rate cap as token requests, and never touch the token itself.

use std::sync::Arc;
use std::time::SystemTime;

use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;

use super::Tenant;
use crate::clock;
use crate::powerbi::embed::EmbedToken;
use crate::powerbi::probe::ProbeReason;
use crate::schedule;
use crate::status;
use crate::token::AccessToken;

/// One embed token's refresher state.
#[derive(Debug, Default)]
pub(super) struct EmbedState {
    /// The embed token the sinks hold.
    pub(super) token: Option<EmbedToken>,
    /// When to make the next one; `None` until there is an Entra token to make it with.
    pub(super) next: Option<SystemTime>,
    /// Failures in a row, for the backoff.
    pub(super) failures: u32,
}

impl Tenant {
    /// The tenant's access probe settings, when it has a probe.
    fn probe_config(&self) -> Option<(&str, &crate::config::ProbeConfig)> {
        let powerbi = self.config.powerbi.as_deref()?;
        Some((&powerbi.api_root, powerbi.probe.as_ref()?))
    }

    /// Keeps `token` for the Power BI API, for tenants that call it, and plans a probe and
    /// new embed tokens now: an embed token is made again after every Entra refresh.
    pub(super) fn hold_for_api(&mut self, token: &AccessToken) {
        if self.config.powerbi.is_none() {
            return;
        }
        let now = SystemTime::now();
        self.token = Some(Box::new(token.clone()));
        if self.probe_config().is_some() {
            self.next_probe = Some(now);
        }
        for embed in &mut self.embeds {
            embed.next = Some(now);
        }
    }

    /// A Power BI call's turn: a permit of the request limiter, then the rate cap, as token
    /// requests take theirs. `None` when `cancel` fires first.
    async fn api_turn(
        &self,
        cancel: &CancellationToken,
    ) -> Option<Result<OwnedSemaphorePermit, tokio::sync::AcquireError>> {
        let permit = tokio::select! {
            biased;
            () = cancel.cancelled() => return None,
            permit = self.shared.limiter.clone().acquire_owned() => permit,
        };
        if let Some(rate) = &self.shared.rate {
            let waited = tokio::select! {
                biased;
                () = cancel.cancelled() => return None,
                waited = rate.acquire() => waited,
            };
            if let (Some(observer), false) = (&self.shared.observer, waited.is_zero()) {
                observer.rate_limited(waited);
            }
        }
        Some(permit)
    }

    /// When the next Power BI call (probe or embed token) is due.
    pub(super) fn next_api_call(&self) -> Option<SystemTime> {
        self.embeds
            .iter()
            .filter_map(|embed| embed.next)
            .chain(self.next_probe)
            .min()
    }

    /// Every Power BI call that is due: the probe, then each embed token. `None` when `cancel`
    /// fired while one waited for its turn.
    pub(super) async fn api_calls(&mut self, cancel: &CancellationToken) -> Option<()> {
        let now = SystemTime::now();
        if self.next_probe.is_some_and(|at| at <= now) {
            self.probe(cancel).await?;
        }
        for index in 0..self.embeds.len() {
            if self.embeds[index].next.is_some_and(|at| at <= now) {
                self.refresh_embed(index, cancel).await?;
            }
        }
        Some(())
    }

    /// Reuses the embed tokens in the sinks (a warm start) that were made with the warm-started
    /// Entra token or an earlier one and are not yet due.
    pub(super) async fn warm_start_embeds(&mut self) {
        let config = Arc::clone(&self.config);
        let (Some(powerbi), Some(entra)) = (config.powerbi.as_deref(), self.token.as_deref())
        else {
            return;
        };
        let entra_expires_on = entra.expires_on();
        let now = SystemTime::now();
        for (index, embed) in powerbi.embeds.iter().enumerate() {
            let store = self.shared.store.as_ref();
            let Some(token) =
                crate::powerbi::embed::read_existing(&self.config, embed, store).await
            else {
                continue;
            };
            let point = token.refresh_point(self.config.refresh_at);
            if token.expires_on > entra_expires_on || point <= now {
                continue;
            }
            tracing::info!(
                tenant = %self.config.name,
                embed = %embed.name,
                token_id = %token.token_id,
                next_refresh = %clock::display_time(point),
                "warm start: reusing the embed token on disk"
            );
            if let Some(status) = status::lock(&self.status).embeds.get_mut(index) {
                status.expires_on = Some(token.expires_on);
                status.next_refresh = Some(point);
            }
            self.embeds[index] = EmbedState {
                token: Some(token),
                next: Some(point),
                failures: 0,
            };
        }
    }

    /// Makes and writes embed token `index` with the Entra token held, through the request
    /// limiter and rate cap. `None` when `cancel` fired while it waited for its turn.
    async fn refresh_embed(&mut self, index: usize, cancel: &CancellationToken) -> Option<()> {
        let now = SystemTime::now();
        let config = Arc::clone(&self.config);
        let Some(powerbi) = config.powerbi.as_deref() else {
            return Some(());
        };
        let (Some(embed), Some(entra)) = (powerbi.embeds.get(index), self.token.as_deref()) else {
            return Some(());
        };
        let entra_expires_on = entra.expires_on();
        if entra_expires_on <= clock::unix_seconds(now) {
            // The refresh due anyway plans the next embed token.
            self.embeds[index].next = None;
            return Some(());
        }
        let permit = self.api_turn(cancel).await?;
        let (made, took) =
            crate::powerbi::embed::generate(&self.shared.client, &powerbi.api_root, embed, entra)
                .await;
        // The permit is for the request: a slow sink (a hung Redis) must not hold it.
        drop(permit);
        let outcome = match made {
            Ok(token) => {
                match crate::powerbi::embed::write(
                    &self.config,
                    embed,
                    &token,
                    self.shared.store.as_ref(),
                )
                .await
                {
                    Ok(()) => Ok(token),
                    Err(message) => Err(crate::powerbi::probe::ProbeFailure {
                        reason: ProbeReason::Sink,
                        status: None,
                        code: None,
                        request_id: None,
                        message,
                        retry_after: None,
                    }),
                }
            }
            Err(failure) => Err(failure),
        };
        if let Some(observer) = &self.shared.observer {
            observer.embed_finished(
                outcome
                    .as_ref()
                    .map(|_| ())
                    .map_err(|failure| failure.reason),
                took,
            );
        }
        let now = SystemTime::now();
        let policy = self.shared.policy;
        let state = &mut self.embeds[index];
        let next = match &outcome {
            Ok(token) => {
                state.failures = 0;
                token.refresh_point(self.config.refresh_at)
            }
            Err(failure) => {
                state.failures = state.failures.saturating_add(1);
                let delay = match failure.reason {
                    ProbeReason::NotAuthorized | ProbeReason::NotFound => {
                        policy.permanent_retry_interval
                    }
                    _ => schedule::backoff(
                        state.failures - 1,
                        policy.backoff_min,
                        policy.backoff_max,
                        fastrand::f64(),
                    ),
                };
                schedule::later(now, delay.max(failure.retry_after.unwrap_or_default()))
            }
        };
        // An embed token capped at the Entra token's expiry is not made again before the next
        // Entra refresh (which makes the next one): made with the same Entra token, it would
        // expire at the same moment.
        let capped = matches!(&outcome, Ok(token) if token.expires_on >= entra_expires_on);
        state.next = (!capped).then_some(next);
        let previous = {
            let mut status = status::lock(&self.status);
            let Some(embed_status) = status.embeds.get_mut(index) else {
                return Some(());
            };
            let previous = embed_status.failure.as_ref().map(|failure| failure.reason);
            embed_status.next_refresh = (!capped).then_some(next);
            match &outcome {
                Ok(token) => {
                    embed_status.expires_on = Some(token.expires_on);
                    embed_status.last_success = Some(now);
                    embed_status.successes = embed_status.successes.saturating_add(1);
                    embed_status.failure = None;
                }
                Err(failure) => {
                    let count = &mut embed_status.failures_by_reason[failure.reason.index()];
                    *count = count.saturating_add(1);
                    embed_status.failure = Some(failure.clone());
                }
            }
            previous
        };
        match outcome {
            Ok(token) => {
                tracing::info!(
                    tenant = %self.config.name,
                    embed = %embed.name,
                    token_id = %token.token_id,
                    expires_at = %clock::display_time(clock::unix_to_system(token.expires_on)),
                    next_refresh = %clock::display_time(next),
                    "embed token refreshed"
                );
                self.embeds[index].token = Some(token);
            }
            Err(failure) => {
                let log_level_warn = previous != Some(failure.reason);
                if log_level_warn {
                    tracing::warn!(
                        tenant = %self.config.name,
                        embed = %embed.name,
                        reason = failure.reason.as_str(),
                        status = failure.status.unwrap_or(0),
                        code = failure.code.as_deref().unwrap_or("-"),
                        request_id = failure.request_id.as_deref().unwrap_or("-"),
                        error = %failure.message,
                        retry_at = %clock::display_time(next),
                        "embed token not refreshed: {}",
                        failure.reason.advice()
                    );
                } else {
                    tracing::debug!(
                        tenant = %self.config.name,
                        embed = %embed.name,
                        reason = failure.reason.as_str(),
                        retry_at = %clock::display_time(next),
                        "embed token still not refreshed"
                    );
                }
                if failure.reason == ProbeReason::TokenExpired {
                    self.next = self.next.min(now);
                }
            }
        }
        Some(())
    }

    /// One access probe with the token held, through the same request limiter and rate cap as
    /// token requests. `None` when `cancel` fired while it waited for its turn.
    async fn probe(&mut self, cancel: &CancellationToken) -> Option<()> {
        let now = SystemTime::now();
        let (Some((api_root, probe)), Some(token)) = (self.probe_config(), self.token.as_deref())
        else {
            self.next_probe = None;
            return Some(());
        };
        if token.expires_on() <= clock::unix_seconds(now) {
            // An expired token proves nothing about access; the refresh due anyway plans the
            // next probe.
            self.next_probe = None;
            return Some(());
        }
        let permit = self.api_turn(cancel).await?;
        let (outcome, took) =
            crate::powerbi::probe::run(&self.shared.client, api_root, probe, token).await;
        drop(permit);
        let now = SystemTime::now();
        let interval = probe.interval;
        self.next_probe = Some(crate::powerbi::probe::next_probe(now, interval, &outcome));
        if let Some(observer) = &self.shared.observer {
            observer.probe_finished(
                outcome
                    .as_ref()
                    .map(|_| ())
                    .map_err(|failure| failure.reason),
                took,
            );
        }
        let previous = {
            let mut status = status::lock(&self.status);
            let probe_status = status.api_probe.get_or_insert_with(|| {
                Box::new(status::ProbeStatus {
                    last: now,
                    failure: None,
                    failures_by_reason: [0; ProbeReason::ALL.len()],
                })
            });
            let previous = probe_status.failure.as_ref().map(|failure| failure.reason);
            probe_status.last = now;
            if let Err(failure) = &outcome {
                let count = &mut probe_status.failures_by_reason[failure.reason.index()];
                *count = count.saturating_add(1);
            }
            probe_status.failure = outcome.as_ref().err().cloned();
            previous
        };
        match &outcome {
            Ok(()) if previous.is_some() => tracing::info!(
                tenant = %self.config.name,
                "Power BI accepts the tenant's token again"
            ),
            Ok(()) => tracing::debug!(tenant = %self.config.name, "Power BI access probe passed"),
            Err(failure) => {
                let next = clock::display_time(self.next_probe.unwrap_or(now));
                if previous == Some(failure.reason) {
                    tracing::debug!(
                        tenant = %self.config.name,
                        reason = failure.reason.as_str(),
                        request_id = failure.request_id.as_deref().unwrap_or("-"),
                        next_probe = %next,
                        "Power BI access probe still failing"
                    );
                } else {
                    tracing::warn!(
                        tenant = %self.config.name,
                        reason = failure.reason.as_str(),
                        status = failure.status.unwrap_or(0),
                        code = failure.code.as_deref().unwrap_or("-"),
                        request_id = failure.request_id.as_deref().unwrap_or("-"),
                        error = %failure.message,
                        next_probe = %next,
                        "Power BI access probe failed ({}): {}",
                        failure.reason.as_str(),
                        failure.reason.advice()
                    );
                }
                if failure.reason == ProbeReason::TokenExpired {
                    // Power BI's clock says the token is over: a fresh one costs one request
                    // and settles it (the minimum interval between attempts still applies).
                    self.next = self.next.min(now);
                }
            }
        }
        Some(())
    }
}
