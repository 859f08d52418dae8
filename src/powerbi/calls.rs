//! A tenant's calls to the Power BI API with its access token: the access probe and its embed
//! tokens. They run within the tenant's steps (right after a refresh, or when their own time
//! comes), take the same request permits and rate cap as token requests, and never touch the
//! access token itself.

use std::time::SystemTime;

use tokio_util::sync::CancellationToken;

use super::Context;
use super::embeds::Embeds;
use super::probe;
use crate::config::TenantConfig;
use crate::refresh::Which;
use crate::status::StatusHandle;
use crate::token::AccessToken;

/// The state of a tenant's Power BI calls between its steps.
pub(crate) struct Calls {
    /// The token the sinks hold, kept only for tenants that use the Power BI API with it (the
    /// access probe, embed tokens); `None` for every other tenant.
    token: Option<Box<AccessToken>>,
    /// When the next access probe is due; `None` without a probe or without a token yet.
    next_probe: Option<SystemTime>,
    /// The tenant's embed tokens, in config order (`[[tenant.embed]]`); empty for most.
    embeds: Embeds,
}

impl Calls {
    /// No call planned yet; the embed tokens get their place in `status`.
    pub fn new(config: &TenantConfig, status: &StatusHandle) -> Self {
        Calls {
            token: None,
            next_probe: None,
            embeds: Embeds::new(config, status),
        }
    }

    /// Keeps `token` for the Power BI API, for tenants that call it, and plans a probe and
    /// new embed tokens now: an embed token is made again after every access token refresh.
    pub fn hold(&mut self, config: &TenantConfig, token: &AccessToken) {
        let Some(powerbi) = config.powerbi.as_deref() else {
            return;
        };
        let now = SystemTime::now();
        self.token = Some(Box::new(token.clone()));
        if powerbi.probe.is_some() {
            self.next_probe = Some(now);
        }
        self.embeds.plan_all(now);
    }

    /// When the next call (probe or embed token) is due.
    pub fn next_call(&self) -> Option<SystemTime> {
        self.embeds
            .next_request()
            .into_iter()
            .chain(self.next_probe)
            .min()
    }

    /// When the embed token in hand written next is due.
    pub fn next_write(&self) -> Option<SystemTime> {
        self.embeds.next_write().map(|(at, _)| at)
    }

    /// Whether the embed write due first waits only for shared sinks (Redis).
    pub fn write_only_shared(&self, context: &Context<'_>) -> bool {
        self.embeds
            .next_write()
            .is_some_and(|(_, index)| self.embeds.only_shared_pending(context, index))
    }

    /// The Write step of the embed token whose write is due first.
    pub async fn write(&mut self, context: &Context<'_>) {
        if let Some((_, index)) = self.embeds.next_write() {
            self.embeds.write(context, index, Which::All).await;
        }
    }

    /// Every call that is due: the probe, then each embed token. Says whether Power BI found
    /// the access token expired; `None` when `cancel` fired while one waited for its turn.
    pub async fn make_due(
        &mut self,
        context: &Context<'_>,
        cancel: &CancellationToken,
    ) -> Option<bool> {
        let now = SystemTime::now();
        let Some(token) = self.token.clone() else {
            self.next_probe = None;
            return Some(false);
        };
        let mut expired = false;
        if self.next_probe.is_some_and(|at| at <= now) {
            let (next, said_expired) = probe::check(context, &token, cancel).await?;
            self.next_probe = next;
            expired |= said_expired;
        }
        expired |= self.embeds.make_due(context, &token, cancel).await?;
        Some(expired)
    }

    /// Writes each embed token again to its Redis sinks that lost it (see
    /// [`Embeds::restore_lost`]).
    pub async fn restore_lost(&self, context: &Context<'_>) {
        self.embeds.restore_lost(context).await;
    }

    /// Reuses the embed tokens in the sinks that were made with the warm-started access token
    /// (`entra_expires_on`) or an earlier one and are not yet due.
    pub async fn warm_start(&mut self, context: &Context<'_>, entra_expires_on: i64) {
        self.embeds.warm_start(context, entra_expires_on).await;
    }
}
