//! The Redis sink: the same bytes the file sink writes, at a key that expires with the token.
//!
//! A write is one server-side script ([`Store::write_newer`]): it keeps a token that expires
//! later than the one offered (two writers racing never go backwards), sets the key to expire
//! at `expires_on` (a consumer can never read an expired token from Redis), and publishes a
//! notification that carries the tenant, the key and the expiry, never the token.

use std::sync::Arc;

use secrecy::ExposeSecret;

use crate::config::{FileFormat, RedisSinkConfig, TenantConfig};
use crate::store::{Store, StoreError, WriteOutcome};
use crate::token::AccessToken;

use super::file::MAX_TOKEN_FILE_BYTES;
use super::format::{parse_existing, render};

/// Writes one tenant's token to one key.
#[derive(Clone, Debug)]
pub struct RedisSink {
    config: RedisSinkConfig,
    store: Arc<Store>,
}

impl RedisSink {
    /// A sink for one configured key on the shared connection.
    pub fn new(config: RedisSinkConfig, store: Arc<Store>) -> Self {
        RedisSink { config, store }
    }

    /// The key written.
    pub fn key(&self) -> &str {
        &self.config.key
    }

    /// Renders and writes the token unless Redis holds a newer one.
    ///
    /// # Errors
    /// Redis unreachable, too slow, or refusing the write.
    pub async fn write(
        &self,
        tenant: &TenantConfig,
        token: &AccessToken,
    ) -> Result<WriteOutcome, StoreError> {
        let contents = render(self.config.format, tenant, token);
        let notification = serde_json::json!({
            "tenant": tenant.name,
            "key": self.config.key,
            "expires_on": token.expires_on(),
        })
        .to_string();
        let outcome = self
            .store
            .write_newer(
                &self.config.key,
                contents.expose_secret(),
                token.expires_on(),
                Some(self.store.channel()),
                &notification,
            )
            .await?;
        if outcome == WriteOutcome::Newer {
            tracing::info!(
                tenant = %tenant.name,
                key = %self.config.key,
                "Redis already holds a token that expires later; kept it"
            );
        }
        Ok(outcome)
    }

    /// A json token at the key written for the same tenant, client and resource (the checks the
    /// file sink's warm start makes).
    pub async fn read_existing(&self, tenant: &TenantConfig) -> Option<AccessToken> {
        if self.config.format != FileFormat::Json {
            return None;
        }
        let max = usize::try_from(MAX_TOKEN_FILE_BYTES).unwrap_or(usize::MAX);
        match self.store.get(&self.config.key, max).await {
            Ok(Some(text)) => parse_existing(text.as_bytes(), tenant),
            Ok(None) => None,
            Err(err) => {
                tracing::warn!(tenant = %tenant.name, error = %err, "not reusing the token in Redis");
                None
            }
        }
    }

    /// Whether the key is still there; `None` when Redis cannot say.
    pub async fn present(&self) -> Option<bool> {
        self.store.exists(&self.config.key).await.ok()
    }
}
