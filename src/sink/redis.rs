//! The Redis sink: the same bytes the file sink writes, at a key that expires with the token.
//!
//! A write is one server-side script ([`Store::write_newer`]): it keeps a token that expires
//! later than the one offered (two writers racing never go backwards), sets the key to expire
//! at `expires_on` (a consumer can never read an expired token from Redis), and publishes a
//! notification that carries the tenant, the key and the expiry, never the token.

use std::sync::Arc;

use secrecy::ExposeSecret;

use crate::config::{FileFormat, RedisSinkConfig};
use crate::store::{Store, StoreError, WriteOutcome};

use super::{MAX_DOCUMENT_BYTES, Owner, Rendered};

/// Writes one token to one key.
#[derive(Clone, Debug)]
pub(crate) struct RedisSink {
    config: RedisSinkConfig,
    store: Arc<Store>,
}

/// The notification published after a write: whose token, at which key, until when; never the
/// token. Fields in alphabetical order, the order the message has always had.
#[derive(serde::Serialize)]
struct Notification<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    embed: Option<&'a str>,
    expires_on: i64,
    key: &'a str,
    tenant: &'a str,
}

impl RedisSink {
    /// A sink for one configured key on the shared connection.
    pub fn new(config: RedisSinkConfig, store: Arc<Store>) -> Self {
        RedisSink { config, store }
    }

    /// Writes a rendered token unless Redis holds a newer one.
    ///
    /// # Errors
    /// Redis unreachable, too slow, or refusing the write.
    pub async fn write(&self, document: &Rendered<'_>) -> Result<WriteOutcome, StoreError> {
        let notification = serde_json::to_string(&Notification {
            embed: document.owner.embed,
            expires_on: document.expires_on,
            key: &self.config.key,
            tenant: document.owner.tenant,
        })
        // Strings and a number: serialising cannot fail.
        .unwrap_or_default();
        let outcome = self
            .store
            .write_newer(
                &self.config.key,
                document.contents.expose_secret(),
                document.expires_on,
                Some(self.store.channel()),
                &notification,
            )
            .await?;
        if outcome == WriteOutcome::Newer {
            tracing::info!(
                tenant = %document.owner.tenant,
                embed = document.owner.embed,
                key = %self.config.key,
                "Redis already holds a token that expires later; kept it"
            );
        }
        Ok(outcome)
    }

    /// The json document at the key, if there is one and Redis can say.
    pub async fn read_json(&self, owner: Owner<'_>) -> Option<Vec<u8>> {
        if self.config.format != FileFormat::Json {
            return None;
        }
        let max = usize::try_from(MAX_DOCUMENT_BYTES).unwrap_or(usize::MAX);
        match self.store.get(&self.config.key, max).await {
            Ok(text) => text.map(String::into_bytes),
            Err(err) => {
                tracing::warn!(tenant = %owner.tenant, embed = owner.embed, error = %err, "not reusing the token in Redis");
                None
            }
        }
    }

    /// Whether the key is still there; `None` when Redis cannot say.
    pub(crate) async fn present(&self) -> Option<bool> {
        self.store.exists(&self.config.key).await.ok()
    }
}
