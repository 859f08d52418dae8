//! The check that a tenant's tokens are still in Redis: a Redis restarted without persistence,
//! a `FLUSHALL` or an eviction loses them. A lost access token is refreshed at once (in fleet
//! mode the first replica to notice fetches, the others adopt); a lost embed token is written
//! again from the one in hand, without asking Power BI for another.

use std::time::{Duration, SystemTime};
use tokio_util::sync::CancellationToken;

use super::Tenant;
use crate::clock;
use crate::powerbi::Context;
use crate::refresh::sleep_until;
use crate::schedule;
use crate::status;

impl Tenant {
    /// The Check step: whether the tokens are still in Redis, planning the next check; a
    /// refresh falling due or a shutdown ends the check early, so a slow or hung Redis holds
    /// back neither. `None` when `cancel` fired.
    pub(super) async fn check_presence(&mut self, cancel: &CancellationToken) -> Option<()> {
        let check = self.next_check.unwrap_or_else(SystemTime::now);
        self.next_check = self
            .presence_check_interval()
            .map(|every| schedule::later(check.max(SystemTime::now()), every));
        // An access token failing already, or being written, goes to every sink anyway.
        let settled = !self.access.failing() && !self.access.holds_unwritten();
        let look = async {
            let lost = settled && self.lost_from_redis().await;
            let context = Context {
                shared: &self.shared,
                config: &self.config,
                status: &self.status,
            };
            self.api.restore_lost(&context).await;
            lost
        };
        let lost = tokio::select! {
            biased;
            () = cancel.cancelled() => return None,
            lost = look => lost,
            () = sleep_until(self.wake) => false,
        };
        if lost {
            tracing::warn!(
                tenant = %self.config.name,
                "the token is gone from Redis (restarted without persistence, or flushed); refreshing"
            );
            self.access.plan_at(Some(SystemTime::now()));
        }
        Some(())
    }

    /// How often to check that the tokens are still in Redis: only for tenants that keep one
    /// there (the access token, or an embed token).
    pub(super) fn presence_check_interval(&self) -> Option<Duration> {
        let embeds = self
            .config
            .powerbi
            .as_deref()
            .map_or(&[][..], |powerbi| &powerbi.embeds);
        let in_redis = self.shared.fleet.is_some()
            || self
                .config
                .sinks
                .iter()
                .chain(embeds.iter().flat_map(|embed| embed.sinks.iter()))
                .any(|sink| !crate::sink::is_local(sink));
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
            .token
            .expires_on
            .is_some_and(|exp| clock::unix_now() < exp);
        if !still_valid {
            return false;
        }
        if crate::refresh::lost(&self.config.sinks, self.shared.store.as_ref()).await {
            return true;
        }
        match &self.shared.fleet {
            Some(fleet) => fleet.present(&self.config.name, &self.job()).await == Some(false),
            None => false,
        }
    }
}
