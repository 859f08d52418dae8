//! Where tokens go, whatever their kind.
//!
//! A sink stores a [`Rendered`] document: the bytes a token kind made for the sink's format,
//! the expiry a key takes, and whose token it is (for a notification and the log). Sinks know
//! nothing of access or embed tokens: the file sink replaces a file atomically, the Redis sink
//! writes newer-wins with an expiry and publishes a notification, and both read their bytes back
//! for a warm start, which the token kind parses. A failed write is a refresh failure of class
//! `sink`, and whatever the sink held before stays intact.
//!
//! Sinks are a closed enum rather than trait objects: the set is small and known, dispatch needs
//! no boxing of futures, and each variant can still keep its own state.

pub mod file;
pub mod redis;

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;

use crate::config::{FileFormat, SinkConfig, TenantConfig};
use crate::error::{ErrorClass, Reason, RefreshError};
use crate::store::Store;

pub(crate) use file::FileSink;
pub(crate) use redis::RedisSink;

/// Largest stored token document read back at a warm start; a real one is a few KiB.
pub(crate) const MAX_DOCUMENT_BYTES: u64 = 256 * 1024;

/// Whose token a document holds: a tenant's access token, or one of its embed tokens.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Owner<'a> {
    /// The tenant's name.
    pub tenant: &'a str,
    /// The embed token's name, for embed tokens.
    pub embed: Option<&'a str>,
}

impl<'a> Owner<'a> {
    /// A tenant's access token.
    pub fn access(tenant: &'a str) -> Self {
        Owner {
            tenant,
            embed: None,
        }
    }
}

/// A token rendered for one sink's format.
pub(crate) struct Rendered<'a> {
    /// What the sink stores: the json document or the bare token.
    pub contents: secrecy::SecretString,
    /// Unix seconds the token expires: when a key expires, and what newer-wins compares.
    pub expires_on: i64,
    /// Whose token it is.
    pub owner: Owner<'a>,
}

/// A configured destination for one token.
#[derive(Clone, Debug)]
pub(crate) enum Sink {
    /// An atomically replaced file.
    File(FileSink),
    /// A key in the shared Redis.
    Redis(RedisSink),
}

impl Sink {
    /// Builds the sink from its configuration. A Redis sink without a store cannot happen
    /// with a validated config (it requires `[redis]`); it is `None` here rather than a panic.
    pub(crate) fn from_config(config: &SinkConfig, store: Option<&Arc<Store>>) -> Option<Sink> {
        match config {
            SinkConfig::File(file) => Some(Sink::File(FileSink::new(file.clone()))),
            SinkConfig::Redis(redis) => {
                store.map(|store| Sink::Redis(RedisSink::new(redis.clone(), store.clone())))
            }
        }
    }

    /// Writes a rendered token.
    ///
    /// # Errors
    /// A `sink` class error naming the destination and the cause.
    pub async fn write(&self, document: &Rendered<'_>) -> Result<(), RefreshError> {
        let result = match self {
            Sink::File(file) => file.write(document).await.map_err(|err| err.to_string()),
            // Redis futures are boxed (here and below): their connection and script state would
            // otherwise make every file-only tenant's futures as large as theirs, and at start-up
            // every tenant's warm-start read is alive at once.
            Sink::Redis(redis) => Box::pin(redis.write(document))
                .await
                .map(|_| ())
                .map_err(|err| err.to_string()),
        };
        result.map_err(|message| RefreshError::local(ErrorClass::Sink, Reason::Sink, message))
    }

    /// The json document this sink holds, for a warm start: `None` for a raw-format sink, one
    /// that holds nothing, or one that cannot be read (logged, naming `owner`).
    pub async fn read_json(&self, owner: Owner<'_>) -> Option<Vec<u8>> {
        match self {
            Sink::File(file) => file.read_json(owner).await,
            Sink::Redis(redis) => Box::pin(redis.read_json(owner)).await,
        }
    }

    /// For a Redis sink, whether its key is still there (`None`: cannot tell, or not Redis).
    pub(crate) async fn present(&self) -> Option<bool> {
        match self {
            Sink::File(_) => None,
            Sink::Redis(redis) => Box::pin(redis.present()).await,
        }
    }
}

/// Whether `config` is a sink on this host (a file), as opposed to a shared store: local sinks
/// are written while a request permit is held, and count for readiness.
pub(crate) fn is_local(config: &SinkConfig) -> bool {
    matches!(config, SinkConfig::File(_))
}

/// The format a configured sink stores.
pub(crate) fn format_of(config: &SinkConfig) -> FileFormat {
    match config {
        SinkConfig::File(file) => file.format,
        SinkConfig::Redis(redis) => redis.format,
    }
}

/// Removes leftovers of interrupted writes (temp files from a crash) next to every configured
/// file, reading each directory once however many tenants write into it, and narrows existing
/// token files whose mode is wider than configured. Returns the configured files that may exist
/// (see [`file::Scan::present`]): a tenant whose files are not among them has nothing on disk to
/// warm-start from. `None` if the look failed (read every file then).
pub(crate) async fn clean_up(tenants: &[Arc<TenantConfig>]) -> Option<HashSet<PathBuf>> {
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
