//! A tenant's calls to the Power BI API with its access token: the access probe and its embed
//! tokens ([`crate::powerbi`]). They run within the tenant's steps (right after a refresh, or
//! when their own time comes), take the same request permits and rate cap as token requests,
//! and never touch the access token itself.

use std::time::SystemTime;

use tokio_util::sync::CancellationToken;

use super::Tenant;
use crate::powerbi::{Context, probe};
use crate::refresh::Which;
use crate::token::AccessToken;

/// What the Power BI calls work with: built from the tenant's fields one by one, so that its
/// embed refreshers can be borrowed mutably beside it.
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
    /// Keeps `token` for the Power BI API, for tenants that call it, and plans a probe and
    /// new embed tokens now: an embed token is made again after every access token refresh.
    pub(super) fn hold_for_api(&mut self, token: &AccessToken) {
        let Some(powerbi) = self.config.powerbi.as_deref() else {
            return;
        };
        let now = SystemTime::now();
        self.token = Some(Box::new(token.clone()));
        if powerbi.probe.is_some() {
            self.next_probe = Some(now);
        }
        self.embeds.plan_all(now);
    }

    /// When the next Power BI call (probe or embed token) is due.
    pub(super) fn next_api_call(&self) -> Option<SystemTime> {
        self.embeds
            .next_request()
            .into_iter()
            .chain(self.next_probe)
            .min()
    }

    /// Whether the embed write due first waits only for shared sinks (Redis).
    pub(super) fn embed_write_only_shared(&self) -> bool {
        self.embeds
            .next_write()
            .is_some_and(|(_, index)| self.embeds.only_shared_pending(&api_context!(self), index))
    }

    /// The Write step of the embed token whose write is due first.
    pub(super) async fn write_embed(&mut self) {
        if let Some((_, index)) = self.embeds.next_write() {
            let context = api_context!(self);
            self.embeds.write(&context, index, Which::All).await;
        }
    }

    /// Every Power BI call that is due: the probe, then each embed token. `None` when `cancel`
    /// fired while one waited for its turn.
    pub(super) async fn api_calls(&mut self, cancel: &CancellationToken) -> Option<()> {
        let now = SystemTime::now();
        let Some(token) = self.token.clone() else {
            self.next_probe = None;
            return Some(());
        };
        let context = api_context!(self);
        let mut expired = false;
        if self.next_probe.is_some_and(|at| at <= now) {
            let (next, said_expired) = probe::check(&context, &token, cancel).await?;
            self.next_probe = next;
            expired |= said_expired;
        }
        expired |= self.embeds.make_due(&context, &token, cancel).await?;
        if expired {
            // Power BI's clock says the token is over: a fresh one costs one request and
            // settles it (the minimum interval between attempts still applies).
            self.access.plan_at(Some(SystemTime::now()));
        }
        Some(())
    }

    /// Reuses the embed tokens in the sinks that were made with the warm-started access token
    /// (`entra_expires_on`) or an earlier one and are not yet due.
    pub(super) async fn warm_start_embeds(&mut self, entra_expires_on: i64) {
        let context = api_context!(self);
        self.embeds.warm_start(&context, entra_expires_on).await;
    }
}
