//! The Power BI REST API itself, beyond the token: the access probe and embed tokens.
//!
//! Entra issuing a token proves the app and its credential; it does not prove that Power BI
//! accepts the token. A customer's Fabric admin can leave "Service principals can use Fabric
//! APIs" off, or the service principal can miss the allowed security group or the workspace, and
//! every API call then fails with 401 `PowerBINotAuthorizedException` while the token refreshes
//! happily. The probe makes that visible per tenant, before the application's users see it. A
//! tenant whose token is for Microsoft Fabric (`resource = "fabric"`) is probed on the Fabric
//! REST API instead (`GET /v1/workspaces`), whose answers are classified the same way.
//!
//! Embed tokens are what "app owns data" backends hand to browsers. They expire too, never later
//! than the Entra token they were made with, so they are kept fresh here, next to it, and
//! written with the embed URLs of their reports, which the browser needs as well.
//!
//! # Files
//!
//! * `answer.rs`: the classification of an API answer (the probe's, an embed token's, an embed
//!   URL's).
//! * `probe.rs`: the probe call.
//! * `embed.rs`: the embed token kind: the `GenerateToken` request (with the blobs of its
//!   datasource identities, read from their secret sources for every token), the answer, the
//!   document.
//! * `embed_urls.rs`: the embed URLs of an embed's reports (Get Report, Get Report In Group),
//!   read when an embed token is made and written with it.
//! * `embeds.rs`: a tenant's embed tokens, one [`crate::refresh::Refresher`] each.
//! * `calls.rs`: what a tenant keeps between its steps for these calls (the access token they
//!   use, the probe's schedule, the embed tokens) and the steps themselves.
//! * `jobs.rs`: the probe and each embed token as fleet jobs: made by one replica, adopted by
//!   the others.

pub mod answer;
pub mod calls;
pub mod embed;
pub mod embed_urls;
pub mod embeds;
mod jobs;
pub mod probe;

use std::sync::Arc;

use crate::config::{EmbedConfig, TenantConfig};
use crate::refresh::{Record, Report, Shared};
use crate::sink::Owner;
use crate::status::StatusHandle;

/// What a tenant's Power BI calls work with.
pub struct Context<'a> {
    /// The daemon's shared pieces.
    pub shared: &'a Shared,
    /// The tenant's settings.
    pub config: &'a Arc<TenantConfig>,
    /// The tenant's status.
    pub status: &'a StatusHandle,
}

impl Context<'_> {
    /// The settings of embed `index`.
    pub(crate) fn embed(&self, index: usize) -> Option<&EmbedConfig> {
        self.config.powerbi.as_deref()?.embeds.get(index)
    }

    /// Where embed `index` reports.
    pub(crate) fn report<'a>(&'a self, embed: &'a EmbedConfig, index: usize) -> Report<'a> {
        Report {
            shared: self.shared,
            status: self.status,
            record: Record::Embed(index),
            owner: Owner {
                tenant: &self.config.name,
                embed: Some(&embed.name),
            },
            pending: None,
        }
    }
}
