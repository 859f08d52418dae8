//! A tenant's embed tokens, one [`Refresher`] each: made with the tenant's access token after
//! each of its refreshes and at their own refresh point, written to their sinks like the access
//! token (files with the request, Redis in a step of its own, failed sinks again soon), and
//! reported in the same shape.

use std::time::SystemTime;

use tokio_util::sync::CancellationToken;

use super::Context;
use super::embed::{self, EmbedToken};
use super::embed_urls::{self, EmbedUrls};
use super::jobs::{self, Turn};
use crate::clock;
use crate::config::{EmbedConfig, SinkConfig, TenantConfig};
use crate::error::Reason;
use crate::refresh::{self, Refresher, Renderer, Which};
use crate::sink::{self, Owner, Rendered, Sink};
use crate::status::{self, StatusHandle};
use crate::token::AccessToken;

/// A tenant's embed tokens, in config order.
#[derive(Default)]
pub(crate) struct Embeds {
    /// One per `[[tenant.embed]]`, in one allocation: a tenant without embeds pays for an empty
    /// slice only.
    embeds: Box<[Embed]>,
}

/// One embed's state between steps.
#[derive(Default)]
struct Embed {
    /// Its token's schedule, backoff and writes. The next request is `None` until there is an
    /// access token to make the embed token with (and again while the one made lasts as long
    /// as the access token: the next access token refresh makes the next one).
    refresher: Refresher<EmbedToken>,
    /// The embed URLs of its reports, read when a token is made and written with it.
    urls: EmbedUrls,
    /// The last token made, adopted or warm-started, kept only for embeds with a Redis sink:
    /// what the presence check writes again when Redis lost it (a restart without
    /// persistence, `FLUSHALL`), without asking Power BI for another.
    current: Option<EmbedToken>,
}

impl Embeds {
    /// The refreshers of a tenant's embed tokens, none planned yet, and their place in its
    /// status, in config order.
    pub fn new(config: &TenantConfig, status: &StatusHandle) -> Self {
        let configs = config
            .powerbi
            .as_deref()
            .map_or(&[][..], |powerbi| &powerbi.embeds);
        status::lock(status).embeds = configs
            .iter()
            .map(|embed| status::EmbedStatus {
                name: embed.name.clone(),
                token: status::TokenStatus::default(),
                urls: embed_urls::initial_status(embed),
            })
            .collect();
        Embeds {
            embeds: configs.iter().map(|_| Embed::default()).collect(),
        }
    }

    /// Plans every embed token at `at`: after an access token refresh, each is made again.
    pub(crate) fn plan_all(&mut self, at: SystemTime) {
        for embed in &mut self.embeds {
            embed.refresher.plan_at(Some(at));
        }
    }

    /// When the next embed token is to be made.
    pub(crate) fn next_request(&self) -> Option<SystemTime> {
        self.embeds
            .iter()
            .filter_map(|embed| embed.refresher.next())
            .min()
    }

    /// The embed token in hand written next, and when.
    pub(crate) fn next_write(&self) -> Option<(SystemTime, usize)> {
        self.embeds
            .iter()
            .enumerate()
            .filter_map(|(index, embed)| Some((embed.refresher.write_at()?, index)))
            .min()
    }

    /// Whether embed token `index` waits only for shared sinks (Redis).
    pub(crate) fn only_shared_pending(&self, context: &Context<'_>, index: usize) -> bool {
        match (self.embeds.get(index), context.embed(index)) {
            (Some(state), Some(embed)) => state.refresher.only_shared_pending(&embed.sinks),
            _ => false,
        }
    }

    /// Reuses the embed tokens in the sinks (a warm start) that were made with the warm-started
    /// access token (expiring at `entra_expires_on`) or an earlier one and are not yet due.
    pub(crate) async fn warm_start(&mut self, context: &Context<'_>, entra_expires_on: i64) {
        let Some(powerbi) = context.config.powerbi.as_deref() else {
            return;
        };
        let (now, refresh_at) = (SystemTime::now(), context.config.refresh_at);
        for (index, embed) in powerbi.embeds.iter().enumerate() {
            if let Some(state) = self.embeds.get_mut(index) {
                state.urls.warm_start(context, index).await;
            }
            let owner = Owner {
                tenant: &context.config.name,
                embed: Some(&embed.name),
            };
            let stored = refresh::stored(
                &embed.sinks,
                context.shared.store.as_ref(),
                owner,
                false,
                |bytes| embed::parse_existing(bytes, context.config, embed),
                |token| {
                    token.expires_on <= entra_expires_on && token.refresh_point(refresh_at) > now
                },
            );
            let Some(token) = stored.await else {
                continue;
            };
            let point = token.refresh_point(refresh_at);
            tracing::info!(
                tenant = %context.config.name,
                embed = %embed.name,
                token_id = %token.token_id,
                next_refresh = %clock::display_time(point),
                "warm start: reusing the embed token on disk"
            );
            if let Some(status) = status::lock(context.status).embeds.get_mut(index) {
                status.token.expires_on = Some(token.expires_on);
                status.token.next_refresh = Some(point);
            }
            if let Some(state) = self.embeds.get_mut(index) {
                state.refresher.plan_at(Some(point));
            }
            self.keep(embed, index, &token);
        }
    }

    /// Makes every embed token that is due with `entra`, the access token held. `None` when
    /// `cancel` fired while one waited for its turn; `Some(true)` when Power BI said the access
    /// token has expired (a fresh one settles it).
    pub(crate) async fn make_due(
        &mut self,
        context: &Context<'_>,
        entra: &AccessToken,
        cancel: &CancellationToken,
    ) -> Option<bool> {
        let now = SystemTime::now();
        let mut expired = false;
        for index in 0..self.embeds.len() {
            if self.embeds[index]
                .refresher
                .next()
                .is_some_and(|at| at <= now)
            {
                expired |= self.make(context, index, entra, cancel).await?;
            }
        }
        Some(expired)
    }

    /// Makes embed token `index` through the request limiter and rate cap, and writes its local
    /// sinks (the shared ones follow in a step of their own). Returns whether Power BI said the
    /// access token has expired; `None` when `cancel` fired first.
    async fn make(
        &mut self,
        context: &Context<'_>,
        index: usize,
        entra: &AccessToken,
        cancel: &CancellationToken,
    ) -> Option<bool> {
        let (Some(powerbi), Some(embed)) =
            (context.config.powerbi.as_deref(), context.embed(index))
        else {
            return Some(false);
        };
        let entra_expires_on = entra.expires_on();
        if entra_expires_on <= clock::unix_now() {
            // The access token refresh due anyway plans the next embed token.
            self.embeds[index].refresher.plan_at(None);
            return Some(false);
        }
        // Read before the fleet's lease and the request permit are taken: a slow file or Key
        // Vault must hold neither.
        let Some(blobs) = self.blobs(context, embed, index).await else {
            return Some(false);
        };
        let shared = context.shared;
        let job = jobs::EmbedJob::new(context.config, embed, entra);
        let (made, adopted_from, leased) = match jobs::turn(context, &job).await {
            Turn::Make { leased } => {
                let Some(permit) = shared.api_turn(cancel).await else {
                    jobs::done(context, &job, None, leased).await;
                    return None;
                };
                let (made, _) =
                    embed::generate(&shared.client, &powerbi.api_root, embed, entra, &blobs).await;
                drop(blobs);
                // The permit is for the request: a slow sink (a hung Redis) must not hold it.
                drop(permit);
                (made, None, leased)
            }
            Turn::Adopt { output, by } => (Ok(output.token), Some(by), false),
            Turn::Later(at) => {
                self.embeds[index].refresher.plan_at(Some(at));
                return Some(false);
            }
        };
        match made {
            Ok(token) => {
                // Shared and the lease given back at once: the lease lasts one request, and
                // what follows (embed URLs, sink writes) is this replica's own.
                let shared = (context.shared.fleet.is_some() && adopted_from.is_none())
                    .then(|| job.made(&token));
                jobs::done(context, &job, shared.as_ref(), leased).await;
                // The URLs due are read before the token is written, so it carries them.
                if let Some(state) = self.embeds.get_mut(index) {
                    state.urls.read_due(context, index, entra, cancel).await;
                }
                // An embed token capped at the access token's expiry is not made again before
                // the next access token refresh (which makes the next one): made with the same
                // access token, it would expire at the same moment.
                let capped = token.expires_on >= entra_expires_on;
                let next = (!capped).then(|| token.refresh_point(context.config.refresh_at));
                self.keep(embed, index, &token);
                let by = adopted_from.or_else(|| jobs::made_here(context));
                self.embeds[index]
                    .refresher
                    .fetched(token, next, by, embed.sinks.len());
                self.write(context, index, Which::Local).await;
                Some(false)
            }
            Err(err) => {
                jobs::done(context, &job, None, leased).await;
                let report = context.report(embed, index);
                self.embeds[index]
                    .refresher
                    .request_failed(&err, &report, None);
                Some(err.reason == Reason::TokenExpired)
            }
        }
    }

    /// The identity blobs of embed `index`'s datasource identities, read now; `None` after a
    /// failure, which is reported like a refusal: the embed token in the sinks stays.
    async fn blobs(
        &mut self,
        context: &Context<'_>,
        embed: &EmbedConfig,
        index: usize,
    ) -> Option<Vec<secrecy::SecretString>> {
        let shared = context.shared;
        let key_vault = shared
            .key_vaults
            .as_deref()
            .and_then(|key_vaults| key_vaults.reader(context.config));
        match embed::read_blobs(embed, &shared.client, key_vault).await {
            Ok(blobs) => Some(blobs),
            Err(err) => {
                let report = context.report(embed, index);
                self.embeds[index]
                    .refresher
                    .request_failed(&err, &report, None);
                None
            }
        }
    }

    /// Keeps `token` as embed `index`'s current one, if a Redis sink may lose it.
    fn keep(&mut self, embed: &EmbedConfig, index: usize, token: &EmbedToken) {
        if let Some(slot) = self.embeds.get_mut(index) {
            slot.current = (!embed.sinks.iter().all(sink::is_local)).then(|| token.clone());
        }
    }

    /// The presence check of the embed tokens: writes each one every sink should hold again to
    /// its Redis sinks that lost it (a Redis restarted without persistence, a `FLUSHALL`, an
    /// eviction), from the token kept, without asking Power BI for another. A token being
    /// written or failing is left to its own writes; a sink that cannot say counts as holding
    /// it, and a failed write is tried again at the next check.
    pub(crate) async fn restore_lost(&self, context: &Context<'_>) {
        let now = clock::unix_now();
        for (index, slot) in self.embeds.iter().enumerate() {
            let (Some(embed), Some(token)) = (context.embed(index), &slot.current) else {
                continue;
            };
            if slot.refresher.holds_unwritten()
                || slot.refresher.failing()
                || token.expires_on <= now
            {
                continue;
            }
            for config in embed.sinks.iter().filter(|config| !sink::is_local(config)) {
                restore(context, embed, config, token, &slot.urls).await;
            }
        }
    }

    /// Writes embed token `index` in hand to `which` of its sinks, and acts on the outcome.
    pub async fn write(&mut self, context: &Context<'_>, index: usize, which: Which) {
        let (
            Some(embed),
            Some(Embed {
                refresher, urls, ..
            }),
        ) = (context.embed(index), self.embeds.get_mut(index))
        else {
            return;
        };
        let urls = &*urls;
        let config = context.config;
        let render = |format, token: &EmbedToken| embed::render(format, config, embed, token, urls);
        let renderer = Renderer {
            owner: Owner {
                tenant: &config.name,
                embed: Some(&embed.name),
            },
            render: &render,
            store: context.shared.store.as_ref(),
        };
        let progress = refresher.write(&embed.sinks, &renderer, which).await;
        let Some(written) = refresher.settle(progress, &context.report(embed, index)) else {
            return;
        };
        let token = written.token;
        let next = written.refresh_point.map_or_else(
            || "with the next access token".to_owned(),
            clock::display_time,
        );
        tracing::info!(
            tenant = %config.name,
            embed = %embed.name,
            token_id = %token.token_id,
            expires_at = %clock::display_time(clock::unix_to_system(token.expires_on)),
            next_refresh = %next,
            "{}",
            if context.shared.adopted(written.refreshed_by.as_deref()) {
                "embed token adopted from the fleet"
            } else {
                "embed token refreshed"
            }
        );
    }
}

/// Writes `token` again to the Redis sink `config` of `embed` if its key is gone.
async fn restore(
    context: &Context<'_>,
    embed: &EmbedConfig,
    config: &SinkConfig,
    token: &EmbedToken,
    urls: &EmbedUrls,
) {
    let Some(sink) = Sink::from_config(config, context.shared.store.as_ref()) else {
        return;
    };
    if sink.present().await != Some(false) {
        return;
    }
    let owner = Owner {
        tenant: &context.config.name,
        embed: Some(&embed.name),
    };
    let document = Rendered {
        contents: embed::render(sink::format_of(config), context.config, embed, token, urls),
        expires_on: token.expires_on,
        owner,
    };
    match sink.write(&document).await {
        Ok(()) => tracing::warn!(
            tenant = %context.config.name,
            embed = %embed.name,
            token_id = %token.token_id,
            "the embed token was gone from Redis (restarted without persistence, or flushed); written again"
        ),
        Err(err) => tracing::warn!(
            tenant = %context.config.name,
            embed = %embed.name,
            error = %err.message,
            "the embed token is gone from Redis and could not be written again; trying at the next check"
        ),
    }
}
