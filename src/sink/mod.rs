//! Where tokens go.
//!
//! A sink receives every new token of a tenant. A failed write is a refresh failure of class
//! `sink`: the tenant retries with backoff, and whatever the sink held before stays intact.
//! Sinks are a closed enum rather than trait objects: the set is small and known, dispatch needs
//! no boxing of futures, and each variant can still keep its own state.

pub mod file;
pub mod format;
pub mod redis;

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;

use crate::config::{SinkConfig, TenantConfig};
use crate::error::{ErrorClass, Reason, RefreshError};
use crate::store::Store;
use crate::token::AccessToken;

pub use file::FileSink;
pub use redis::RedisSink;

/// A configured destination for one tenant's token.
#[derive(Clone, Debug)]
pub enum Sink {
    /// An atomically replaced file.
    File(FileSink),
    /// A key in the shared Redis.
    Redis(RedisSink),
}

impl Sink {
    /// Builds the sink from its configuration. A Redis sink without a store cannot happen
    /// with a validated config (it requires `[redis]`); it is `None` here rather than a panic.
    pub fn from_config(config: &SinkConfig, store: Option<&Arc<Store>>) -> Option<Sink> {
        match config {
            SinkConfig::File(file) => Some(Sink::File(FileSink::new(file.clone()))),
            SinkConfig::Redis(redis) => {
                store.map(|store| Sink::Redis(RedisSink::new(redis.clone(), store.clone())))
            }
        }
    }

    /// Writes a token.
    ///
    /// # Errors
    /// A `sink` class error naming the destination and the cause.
    pub async fn write(
        &self,
        tenant: &TenantConfig,
        token: &AccessToken,
    ) -> Result<(), RefreshError> {
        match self {
            Sink::File(file) => file.write(tenant, token).await.map_err(|err| {
                RefreshError::local(ErrorClass::Sink, Reason::Sink, err.to_string())
            }),
            // Redis futures are boxed (here and below): their connection and script state would
            // otherwise make every file-only tenant's futures as large as theirs, and at start-up
            // every tenant's warm-start read is alive at once.
            Sink::Redis(redis) => Box::pin(redis.write(tenant, token))
                .await
                .map(|_| ())
                .map_err(|err| {
                    RefreshError::local(ErrorClass::Sink, Reason::Sink, err.to_string())
                }),
        }
    }

    /// A token this sink already holds for this tenant, if it can be trusted at start-up.
    pub async fn read_existing(&self, tenant: &TenantConfig) -> Option<AccessToken> {
        match self {
            Sink::File(file) => file.read_existing(tenant).await,
            Sink::Redis(redis) => Box::pin(redis.read_existing(tenant)).await,
        }
    }

    /// For a Redis sink, whether its key is still there (`None`: cannot tell, or not Redis).
    pub async fn present(&self) -> Option<bool> {
        match self {
            Sink::File(_) => None,
            Sink::Redis(redis) => Box::pin(redis.present()).await,
        }
    }
}

/// Removes leftovers of interrupted writes (temp files from a crash) next to every configured
/// file, reading each directory once however many tenants write into it, and narrows existing
/// token files whose mode is wider than configured. Returns the configured files that may exist
/// (see [`file::Scan::present`]): a tenant whose files are not among them has nothing on disk to
/// warm-start from. `None` if the look failed (read every file then).
pub async fn clean_up(tenants: &[Arc<TenantConfig>]) -> Option<HashSet<PathBuf>> {
    let files: Vec<(PathBuf, u32)> = tenants
        .iter()
        .flat_map(|tenant| tenant.sinks.iter())
        .filter_map(|sink| match sink {
            SinkConfig::File(file) => Some((file.path.clone(), file.mode)),
            SinkConfig::Redis(_) => None,
        })
        .collect();
    let (removed, tightened, present) = tokio::task::spawn_blocking(move || {
        let paths: Vec<_> = files.iter().map(|(path, _)| path.clone()).collect();
        let file::Scan { removed, present } = file::scan(&paths);
        let mut tightened = 0;
        for (path, mode) in files.iter().filter(|(path, _)| present.contains(path)) {
            match file::tighten_mode(path, *mode) {
                Ok(changed) => tightened += usize::from(changed),
                Err(err) => {
                    tracing::warn!(path = %path.display(), error = %err, "cannot narrow the token file's mode");
                }
            }
        }
        (removed, tightened, Some(present))
    })
    .await
    .unwrap_or((0, 0, None));
    if removed > 0 {
        tracing::info!(removed, "removed temp files left by an interrupted write");
    }
    if tightened > 0 {
        tracing::info!(
            tightened,
            "narrowed token files whose mode was wider than configured"
        );
    }
    present
}
