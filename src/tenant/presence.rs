//! The check that a tenant's token is still in Redis: a Redis restarted without persistence,
//! a `FLUSHALL` or an eviction loses it, and the tenant then refreshes at once.

use std::time::{Duration, SystemTime};
use tokio_util::sync::CancellationToken;

use super::Tenant;
use crate::clock;
use crate::refresh::sleep_until;
use crate::schedule;
use crate::status;

impl Tenant {
    /// The Check step: whether the token is still in Redis, planning the next check; a refresh
    /// falling due or a shutdown ends the check early, so a slow or hung Redis holds back
    /// neither. `None` when `cancel` fired.
    pub(super) async fn check_presence(&mut self, cancel: &CancellationToken) -> Option<()> {
        let check = self.next_check.unwrap_or_else(SystemTime::now);
        self.next_check = self
            .presence_check_interval()
            .map(|every| schedule::later(check.max(SystemTime::now()), every));
        if self.access.failing() || self.access.holds_unwritten() {
            // Failing already, or writing a token in hand: every sink is written again anyway.
            return Some(());
        }
        let lost = tokio::select! {
            biased;
            () = cancel.cancelled() => return None,
            lost = self.lost_from_redis() => lost,
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

    /// How often to check that the token is still in Redis: only for tenants that keep it there.
    pub(super) fn presence_check_interval(&self) -> Option<Duration> {
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
            Some(fleet) => fleet.present(&self.config).await == Some(false),
            None => false,
        }
    }
}
