//! The access token: fetched from the token endpoint through the request lanes (or adopted from
//! the fleet), then handed to the tenant's [`Refresher`](crate::refresh::Refresher).

use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;

use super::Tenant;
use crate::clock;
use crate::config::TenantConfig;
use crate::error::RefreshError;
use crate::fleet::{self, Claim, Job, Kind};
use crate::refresh::{Progress, Record, Renderer, Report, Which, Written, lanes};
use crate::schedule;
use crate::status;
use crate::token::AccessToken;
use crate::token::document::{Document, json_text};

/// Where the access token's outcomes are reported: built from the tenant's fields one by one,
/// so that its refresher can be borrowed mutably beside it. The credential's expiry and its Key
/// Vault read are brought up to date first (a certificate or federated token may have been read
/// again, a vault may have failed or recovered).
macro_rules! access_report {
    ($tenant:ident) => {{
        let key_vault = $tenant.key_vault_status();
        let mut status = crate::status::lock(&$tenant.status);
        status.credential_expiry = $tenant.credential.expiry();
        status.key_vault = key_vault;
        drop(status);
        Report {
            shared: &$tenant.shared,
            status: &$tenant.status,
            record: Record::Access,
            owner: crate::sink::Owner::access(&$tenant.config.name),
            pending: $tenant.pending.as_deref(),
        }
    }};
}

/// The access token as a fleet job: shared at `<prefix>:{<name>}:token` under the lease
/// `<prefix>:{<name>}:lease` (the keys fleet mode has always used, so replicas of different
/// versions share one lease).
pub(super) struct AccessJob<'a> {
    /// The tenant: a shared token is adopted only if it was fetched for the same request.
    pub config: &'a TenantConfig,
    /// `issued_on` of the token this replica holds: a shared token is adopted only if newer.
    pub ours: Option<i64>,
    /// The tenant's stable jitter offset, for the shared token's refresh point.
    pub jitter: f64,
}

impl Job for AccessJob<'_> {
    type Output = AccessToken;

    fn kind(&self) -> Kind {
        Kind::Token
    }

    fn name(&self) -> String {
        "token".to_owned()
    }

    fn lease(&self) -> String {
        "lease".to_owned()
    }

    fn read(&self, document: &str) -> Option<AccessToken> {
        crate::token::document::parse_existing(document.as_bytes(), self.config)
    }

    /// Newer than the one this replica holds, and not yet due at the tenant's refresh point.
    fn adoptable(&self, token: &AccessToken, now: SystemTime) -> bool {
        self.ours.is_none_or(|ours| token.issued_on() > ours)
            && now < schedule::refresh_point(token, self.config.refresh_at, self.jitter)
    }

    fn share(&self, token: &AccessToken, by: &str) -> (secrecy::SecretString, i64) {
        let mut document = Document::new(self.config, token);
        document.refreshed_by = Some(by);
        (
            secrecy::SecretString::from(json_text(&document)),
            token.expires_on(),
        )
    }
}

impl Tenant {
    /// An attempt with its turn: in fleet mode the lease first (Redis, before any request
    /// permit is taken, so a slow Redis holds back no other tenant's request), then a permit of
    /// the lane. From the permit on, the attempt runs to completion, even if cancelled
    /// meanwhile. `None` when `cancel` fired first.
    pub(super) async fn claim_and_attempt(&mut self, cancel: &CancellationToken) -> Option<()> {
        let claim = match self.shared.fleet.clone() {
            Some(fleet) => Some(fleet.claim(&self.config.name, &self.job()).await),
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
                        self.release_lease(matches!(claim, Some(Claim::Lease))).await;
                        return None;
                    }
                    permit = lane.clone().acquire_owned() => permit.ok(),
                }
            }
        };
        self.attempt(claim, permit).await;
        Some(())
    }

    /// One attempt: fetch (or adopt the fleet's token, as `claim` says), write the local sinks
    /// while holding `permit`, and leave the rest (Redis) to a step of their own that follows
    /// at once.
    async fn attempt(
        &mut self,
        claim: Option<Claim<AccessToken>>,
        permit: Option<OwnedSemaphorePermit>,
    ) {
        let now = SystemTime::now();
        self.last_attempt = Some(now);
        let mut request_duration = None;
        let mut permit = permit;
        let (fetched, adopted_from, leased) = match claim {
            Some(Claim::Adopt { output, by }) => (Ok(output), Some(by), false),
            Some(Claim::Busy) => {
                if let Some(observer) = &self.shared.observer {
                    observer.fleet_lease_busy(Kind::Token);
                }
                self.access
                    .plan_at(Some(schedule::later(now, fleet::BUSY_RETRY)));
                return;
            }
            claim => {
                if let Some(Claim::Unavailable(err)) = &claim {
                    tracing::warn!(
                        tenant = %self.config.name,
                        error = %err,
                        "fleet: Redis cannot say whether another replica refreshed; fetching without the fleet"
                    );
                }
                let fetched = self
                    .fetch_in_lanes(&mut permit, &mut request_duration)
                    .await;
                (fetched, None, matches!(claim, Some(Claim::Lease)))
            }
        };
        if let (Some(observer), Some(duration)) = (&self.shared.observer, request_duration) {
            observer.request_finished(duration);
        }
        match fetched {
            Ok(token) => {
                let fetched_here = request_duration.is_some();
                self.fetched(token, adopted_from, fetched_here, permit, leased)
                    .await;
            }
            Err(err) => {
                drop(permit);
                self.release_lease(leased).await;
                let report = access_report!(self);
                self.access.request_failed(&err, &report, self.last_attempt);
            }
        }
    }

    /// A token came (fetched here, or adopted from the fleet): it is held, written to the local
    /// sinks while `permit` is still held, shared with the fleet, and the lease released.
    async fn fetched(
        &mut self,
        token: AccessToken,
        adopted_from: Option<Arc<str>>,
        fetched_here: bool,
        permit: Option<OwnedSemaphorePermit>,
        leased: bool,
    ) {
        let refresh_point = self.refresh_point_of(&token);
        let refreshed_by = match (&self.shared.fleet, adopted_from) {
            (_, Some(by)) => Some(by),
            (Some(fleet), None) => Some(fleet.replica_id().clone()),
            (None, None) => None,
        };
        let shared = (self.shared.fleet.is_some() && fetched_here).then(|| token.clone());
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
        if let (Some(fleet), Some(token)) = (&self.shared.fleet, &shared)
            && let Err(err) = fleet.publish(&self.config.name, &self.job(), token).await
        {
            tracing::warn!(tenant = %self.config.name, error = %err, "fleet: cannot share the token");
        }
        self.release_lease(leased).await;
        self.access_progress(progress);
    }

    /// Releases the fleet lease this attempt took, if it took one.
    async fn release_lease(&self, leased: bool) {
        if leased && let Some(fleet) = &self.shared.fleet {
            fleet.release(&self.config.name, &self.job()).await;
        }
    }

    /// The access token as the fleet shares it, judged against the token this tenant holds.
    pub(super) fn job(&self) -> AccessJob<'_> {
        AccessJob {
            config: &self.config,
            ours: self.current_issued_on,
            jitter: self.jitter_offset(),
        }
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

    /// The Key Vault identity that reads the tenant's credential and how its last read ended,
    /// for `/status`; `None` for a credential kept elsewhere.
    pub(super) fn key_vault_status(&self) -> Option<Box<status::KeyVaultStatus>> {
        let url = self.config.credential.key_vault_url()?;
        let reader = self.shared.key_vaults.as_deref()?.reader(&self.config)?;
        Some(Box::new(status::KeyVaultStatus {
            identity: Arc::clone(reader.name()),
            failure: reader.failure(url),
        }))
    }

    /// Asks the token endpoint, in the main lane or the slow one (see [`lanes::request`]).
    async fn fetch_in_lanes(
        &mut self,
        permit: &mut Option<OwnedSemaphorePermit>,
        request_duration: &mut Option<Duration>,
    ) -> Result<AccessToken, RefreshError> {
        let key_vault = self
            .shared
            .key_vaults
            .as_deref()
            .and_then(|key_vaults| key_vaults.reader(&self.config));
        let request = self
            .credential
            .fetch(&self.shared.client, key_vault, &self.config);
        let (fetched, took) = lanes::request(&self.shared, &mut self.slow, permit, request).await;
        *request_duration = Some(took);
        fetched
    }

    /// `once`: one attempt and one write of every sink, each failure final (the log says so).
    /// Returns the failure, if any.
    pub async fn once(mut self) -> Result<(), RefreshError> {
        let never = CancellationToken::new();
        let _ = self.claim_and_attempt(&never).await;
        // The shared sinks follow the files, once, unless the attempt failed already.
        if self.access.holds_unwritten() && status::lock(&self.status).token.last_error.is_none() {
            self.write_access().await;
        }
        let failure = status::lock(&self.status).token.last_error.take();
        failure.map_or(Ok(()), |err| Err(*err))
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
            owner: crate::sink::Owner::access(&config.name),
            render: &render,
            store: self.shared.store.as_ref(),
        };
        self.access.write(&config.sinks, &renderer, which).await
    }

    /// Acts on what a round of writes of the access token came to.
    fn access_progress(&mut self, progress: Progress<AccessToken>) {
        let recovered = status::lock(&self.status).token.consecutive_failures > 0;
        let report = access_report!(self);
        let Some(Written {
            token,
            refreshed_by,
            refresh_point,
        }) = self.access.settle(progress, &report)
        else {
            return;
        };
        let point = refresh_point.unwrap_or_else(SystemTime::now);
        let adopted = self.shared.adopted(refreshed_by.as_deref());
        self.current_issued_on = Some(token.issued_on());
        tracing::info!(
            tenant = %self.config.name,
            expires_at = %clock::display_time(schedule::unix_to_system(token.expires_on())),
            next_refresh = %clock::display_time(point),
            fingerprint = %token.fingerprint(),
            recovered,
            "{}",
            if adopted { "token adopted from the fleet" } else { "token refreshed" }
        );
        self.api.hold(&self.config, &token);
    }
}
