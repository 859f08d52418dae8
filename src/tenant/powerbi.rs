//! A tenant's calls to the Power BI API with its access token: the access probe, and its embed
//! tokens, each kept by a [`Refresher`] like the access token. They run within the tenant's
//! steps (right after a refresh, or when their own time comes), take the same request permits
//! and rate cap as token requests, and never touch the access token itself.

use std::sync::Arc;
use std::time::SystemTime;

use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;

use super::Tenant;
use crate::clock;
use crate::config::EmbedConfig;
use crate::error::{Reason, RefreshError};
use crate::powerbi::embed::EmbedToken;
use crate::refresh::{self, Progress, Refresher, Renderer, Which, Written};
use crate::status;
use crate::token::AccessToken;

/// What of an embed token failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Failed {
    /// Its request: the next one backs off.
    Request,
    /// A write of the token in hand; `local_failing`: a file is among the sinks without it.
    Write { local_failing: bool },
}

/// One embed token: its refresher, whose next request is `None` until there is an access token
/// to make it with (and again while the one made lasts as long as the access token: the next
/// access token refresh makes the next one).
#[derive(Default)]
pub(super) struct EmbedState {
    refresher: Refresher<EmbedToken>,
}

impl Tenant {
    /// The tenant's access probe settings, when it has a probe.
    fn probe_config(&self) -> Option<(&str, &crate::config::ProbeConfig)> {
        let powerbi = self.config.powerbi.as_deref()?;
        Some((&powerbi.api_root, powerbi.probe.as_ref()?))
    }

    /// Embed `index`'s settings.
    fn embed_config(&self, index: usize) -> Option<&EmbedConfig> {
        self.config.powerbi.as_deref()?.embeds.get(index)
    }

    /// Keeps `token` for the Power BI API, for tenants that call it, and plans a probe and
    /// new embed tokens now: an embed token is made again after every access token refresh.
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
            embed.refresher.plan_at(Some(now));
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
            .filter_map(|embed| embed.refresher.next())
            .chain(self.next_probe)
            .min()
    }

    /// The embed token in hand written next, and when.
    pub(super) fn next_embed_write(&self) -> Option<(SystemTime, usize)> {
        self.embeds
            .iter()
            .enumerate()
            .filter_map(|(index, embed)| Some((embed.refresher.write_at()?, index)))
            .min()
    }

    /// Whether embed token `index` waits only for shared sinks (Redis).
    pub(super) fn embed_only_shared_pending(&self, index: usize) -> bool {
        match (self.embeds.get(index), self.embed_config(index)) {
            (Some(state), Some(embed)) => state.refresher.only_shared_pending(&embed.sinks),
            _ => false,
        }
    }

    /// Every Power BI call that is due: the probe, then each embed token. `None` when `cancel`
    /// fired while one waited for its turn.
    pub(super) async fn api_calls(&mut self, cancel: &CancellationToken) -> Option<()> {
        let now = SystemTime::now();
        if self.next_probe.is_some_and(|at| at <= now) {
            self.probe(cancel).await?;
        }
        for index in 0..self.embeds.len() {
            if self.embeds[index]
                .refresher
                .next()
                .is_some_and(|at| at <= now)
            {
                self.refresh_embed(index, cancel).await?;
            }
        }
        Some(())
    }

    /// Reuses the embed tokens in the sinks (a warm start) that were made with the warm-started
    /// access token or an earlier one and are not yet due.
    pub(super) async fn warm_start_embeds(&mut self) {
        let config = Arc::clone(&self.config);
        let (Some(powerbi), Some(entra)) = (config.powerbi.as_deref(), self.token.as_deref())
        else {
            return;
        };
        let entra_expires_on = entra.expires_on();
        let now = SystemTime::now();
        for (index, embed) in powerbi.embeds.iter().enumerate() {
            let Some(token) = self.read_embed(embed).await else {
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
                status.token.expires_on = Some(token.expires_on);
                status.token.next_refresh = Some(point);
            }
            self.embeds[index].refresher.plan_at(Some(point));
        }
    }

    /// The newest embed token in the json sinks of `embed` made for this tenant and items.
    async fn read_embed(&self, embed: &EmbedConfig) -> Option<EmbedToken> {
        let owner = crate::sink::Owner {
            tenant: &self.config.name,
            embed: Some(&embed.name),
        };
        let mut found: Option<EmbedToken> = None;
        for config in &embed.sinks {
            let Some(sink) = crate::sink::Sink::from_config(config, self.shared.store.as_ref())
            else {
                continue;
            };
            let Some(bytes) = sink.read_json(owner).await else {
                continue;
            };
            if let Some(token) = crate::powerbi::embed::parse_existing(&bytes, &self.config, embed)
                && found
                    .as_ref()
                    .is_none_or(|best| token.expires_on > best.expires_on)
            {
                found = Some(token);
            }
        }
        found
    }

    /// Makes embed token `index` with the access token held, through the request limiter and
    /// rate cap, and writes its local sinks (the shared ones follow in a step of their own).
    /// `None` when `cancel` fired while it waited for its turn.
    async fn refresh_embed(&mut self, index: usize, cancel: &CancellationToken) -> Option<()> {
        let config = Arc::clone(&self.config);
        let Some(powerbi) = config.powerbi.as_deref() else {
            return Some(());
        };
        let (Some(embed), Some(entra)) = (powerbi.embeds.get(index), self.token.as_deref()) else {
            return Some(());
        };
        let entra_expires_on = entra.expires_on();
        if entra_expires_on <= clock::unix_now() {
            // The access token refresh due anyway plans the next embed token.
            self.embeds[index].refresher.plan_at(None);
            return Some(());
        }
        let permit = self.api_turn(cancel).await?;
        let (made, _) =
            crate::powerbi::embed::generate(&self.shared.client, &powerbi.api_root, embed, entra)
                .await;
        // The permit is for the request: a slow sink (a hung Redis) must not hold it.
        drop(permit);
        match made {
            Ok(token) => {
                // An embed token capped at the access token's expiry is not made again before
                // the next access token refresh (which makes the next one): made with the same
                // access token, it would expire at the same moment.
                let capped = token.expires_on >= entra_expires_on;
                let next = (!capped).then(|| token.refresh_point(self.config.refresh_at));
                self.embeds[index]
                    .refresher
                    .fetched(token, next, None, embed.sinks.len());
                self.write_embed(index, Which::Local).await;
            }
            Err(err) => self.embed_failed(index, err, Failed::Request),
        }
        Some(())
    }

    /// Writes embed token `index` in hand to `which` of its sinks, and acts on the outcome.
    pub(super) async fn write_embed(&mut self, index: usize, which: Which) {
        let config = Arc::clone(&self.config);
        let Some(embed) = config
            .powerbi
            .as_deref()
            .and_then(|powerbi| powerbi.embeds.get(index))
        else {
            return;
        };
        let render = |format, token: &EmbedToken| {
            crate::powerbi::embed::render(format, &config, embed, token)
        };
        let renderer = Renderer {
            owner: crate::sink::Owner {
                tenant: &config.name,
                embed: Some(&embed.name),
            },
            render: &render,
            store: self.shared.store.as_ref(),
        };
        let Some(state) = self.embeds.get_mut(index) else {
            return;
        };
        match state.refresher.write(&embed.sinks, &renderer, which).await {
            Progress::Written(written) => self.embed_written(index, embed, written),
            Progress::Failed(err, local_failing) => {
                let in_sinks = status::lock(&self.status)
                    .embeds
                    .get(index)
                    .and_then(|status| status.token.expires_on);
                self.embeds[index].refresher.write_failed(in_sinks);
                self.embed_failed(index, err, Failed::Write { local_failing });
            }
            Progress::Pending | Progress::Idle => {}
        }
    }

    /// Every sink of embed token `index` holds the new one.
    fn embed_written(&mut self, index: usize, embed: &EmbedConfig, written: Written<EmbedToken>) {
        let token = written.token;
        if let Some(observer) = &self.shared.observer {
            observer.embed_finished(Ok(()));
        }
        if let Some(status) = status::lock(&self.status).embeds.get_mut(index) {
            refresh::record_success(&mut status.token, token.expires_on);
            status.token.next_refresh = written.refresh_point;
        }
        tracing::info!(
            tenant = %self.config.name,
            embed = %embed.name,
            token_id = %token.token_id,
            expires_at = %clock::display_time(clock::unix_to_system(token.expires_on)),
            next_refresh = %written.refresh_point.map_or_else(|| "with the next access token".to_owned(), clock::display_time),
            "embed token refreshed"
        );
    }

    /// Embed token `index` was not made (the request backs off) or not written (the write is
    /// tried again soon): counted, recorded and logged like an access token's failure.
    fn embed_failed(&mut self, index: usize, err: RefreshError, what: Failed) {
        let now = SystemTime::now();
        let Some(state) = self.embeds.get_mut(index) else {
            return;
        };
        let (retry_at, local) = match what {
            Failed::Request => (
                Some(state.refresher.fetch_failed(&err, &self.shared.policy)),
                false,
            ),
            Failed::Write { local_failing } => (state.refresher.write_at(), local_failing),
        };
        if let Some(observer) = &self.shared.observer {
            observer.embed_finished(Err(err.reason));
        }
        let (was_permanent, consecutive) = {
            let mut status = status::lock(&self.status);
            let Some(embed_status) = status.embeds.get_mut(index) else {
                return;
            };
            if what == Failed::Request {
                embed_status.token.next_refresh = retry_at;
            }
            refresh::record_failure(&mut embed_status.token, &err, local)
        };
        let owner = crate::sink::Owner {
            tenant: &self.config.name,
            embed: self.embed_config(index).map(|embed| embed.name.as_str()),
        };
        let retry_in = retry_at.and_then(|at| at.duration_since(now).ok());
        refresh::log_failure(owner, &err, retry_in, consecutive, was_permanent);
        if err.reason == Reason::TokenExpired {
            // Power BI's clock says the access token is over: a fresh one costs one request
            // and settles it (the minimum interval between attempts still applies).
            self.access.plan_at(Some(now));
        }
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
        self.next_probe = Some(crate::powerbi::probe::next_probe(
            now,
            probe.interval,
            &outcome,
        ));
        if let Some(observer) = &self.shared.observer {
            observer.probe_finished(
                outcome
                    .as_ref()
                    .map(|_| ())
                    .map_err(|failure| failure.reason),
                took,
            );
        }
        let previous = self.record_probe(now, &outcome);
        self.log_probe(now, &outcome, previous);
        Some(())
    }

    /// Records a probe's outcome in the status; returns the reason of the one before, if it
    /// failed.
    fn record_probe(&self, now: SystemTime, outcome: &Result<(), RefreshError>) -> Option<Reason> {
        let mut status = status::lock(&self.status);
        let probe_status = status.api_probe.get_or_insert_with(|| {
            Box::new(status::ProbeStatus {
                last: now,
                failure: None,
                failures_by_reason: [0; Reason::ALL.len()],
            })
        });
        let previous = probe_status.failure.as_ref().map(|failure| failure.reason);
        probe_status.last = now;
        if let Err(failure) = outcome {
            let count = &mut probe_status.failures_by_reason[failure.reason.index()];
            *count = count.saturating_add(1);
        }
        probe_status.failure = outcome.as_ref().err().cloned();
        previous
    }

    /// One log line per change of the probe's outcome (a repeat is at DEBUG).
    fn log_probe(
        &mut self,
        now: SystemTime,
        outcome: &Result<(), RefreshError>,
        previous: Option<Reason>,
    ) {
        match outcome {
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
                        request_id = failure.trace_id.as_deref().unwrap_or("-"),
                        next_probe = %next,
                        "Power BI access probe still failing"
                    );
                } else {
                    tracing::warn!(
                        tenant = %self.config.name,
                        reason = failure.reason.as_str(),
                        status = failure.status.unwrap_or(0),
                        code = failure.oauth_error.as_deref().unwrap_or("-"),
                        request_id = failure.trace_id.as_deref().unwrap_or("-"),
                        error = %failure.message,
                        next_probe = %next,
                        "Power BI access probe failed ({}): {}",
                        failure.reason.as_str(),
                        failure.reason.advice().unwrap_or_default()
                    );
                }
                if failure.reason == Reason::TokenExpired {
                    // Power BI's clock says the token is over: a fresh one costs one request
                    // and settles it (the minimum interval between attempts still applies).
                    self.access.plan_at(Some(now));
                }
            }
        }
    }
}
