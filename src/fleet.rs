//! Fleet mode: replicas with the same tenants share each refresh through Redis, so Entra sees
//! one request per tenant per refresh however many replicas run.
//!
//! At a planned refresh a replica first reads the tenant's shared token. If another replica
//! already refreshed it (a token newer than this replica's, not yet due), it adopts that token:
//! writes its own sinks from it and re-plans from its expiry, without calling Entra. Otherwise it
//! takes the tenant's lease (`SET NX PX`, owner = this replica's id, lasting one attempt),
//! fetches, publishes the token to the shared key, writes its sinks, and releases the lease by
//! a compare-and-delete script, so it never frees a lease that expired and passed to another.
//! A replica that dies holding a lease delays the tenant by at most the lease's lifetime.
//!
//! When Redis cannot be reached, a replica fetches on its own: tokens stay fresh during an
//! outage, at the price of one request per replica instead of one per fleet.
//!
//! Keys: `<prefix>:{<name>}:token` (the json document plus `refreshed_by`, expiring with the
//! token) and `<prefix>:{<name>}:lease`; the braces are a Redis Cluster hash tag, so both land
//! in one slot.

use std::sync::Arc;

use secrecy::ExposeSecret;

use crate::config::{FleetConfig, TenantConfig};
use crate::sink::MAX_DOCUMENT_BYTES;
use crate::store::{Store, StoreError};
use crate::token::AccessToken;
use crate::token::document::{Document, json_text, parse_existing};

/// The fleet as one replica sees it.
#[derive(Debug)]
pub struct Fleet {
    store: Arc<Store>,
    config: FleetConfig,
    replica_id: Arc<str>,
}

/// What a replica should do at a planned refresh.
#[derive(Debug)]
pub enum Claim {
    /// Another replica refreshed: use its token.
    Adopt {
        /// The shared token.
        token: AccessToken,
        /// The replica that fetched it.
        refreshed_by: Arc<str>,
    },
    /// This replica holds the lease: fetch, [`Fleet::publish`], then [`Fleet::release`].
    Lease,
    /// Another replica holds the lease: look again shortly.
    Busy,
    /// Redis cannot say: fetch without the fleet.
    Unavailable(StoreError),
}

impl Fleet {
    /// The fleet through `store`; the replica id is configured or made up of the host name and
    /// a random suffix (two pods of one Deployment can share a host name pattern, never both).
    pub fn new(store: Arc<Store>, config: FleetConfig) -> Self {
        let replica_id: Arc<str> = match &config.replica_id {
            Some(id) => id.as_str().into(),
            None => default_replica_id().into(),
        };
        Fleet {
            store,
            config,
            replica_id,
        }
    }

    /// This replica's id.
    pub fn replica_id(&self) -> &Arc<str> {
        &self.replica_id
    }

    /// The settings it runs with (reloads compare them).
    pub fn config(&self) -> &FleetConfig {
        &self.config
    }

    fn key(&self, tenant: &str, what: &str) -> String {
        format!("{}:{{{tenant}}}:{what}", self.config.key_prefix)
    }

    /// Decides between adopting, fetching under the lease, and waiting. A shared token is worth
    /// taking instead of refreshing when it is newer than the one this replica holds
    /// (`ours`, its `issued_on`) and not yet due at the tenant's refresh point (`jitter`, its
    /// stable offset).
    pub async fn claim(&self, tenant: &TenantConfig, ours: Option<i64>, jitter: f64) -> Claim {
        let now = std::time::SystemTime::now();
        let adoptable = |token: &AccessToken| {
            ours.is_none_or(|ours| token.issued_on() > ours)
                && now < crate::schedule::refresh_point(token, tenant.refresh_at, jitter)
        };
        match self.shared(tenant).await {
            Ok(Some((token, refreshed_by))) if adoptable(&token) => {
                return Claim::Adopt {
                    token,
                    refreshed_by,
                };
            }
            Ok(_) => {}
            Err(err) => return Claim::Unavailable(err),
        }
        let lease = self.key(&tenant.name, "lease");
        match self
            .store
            .acquire(&lease, &self.replica_id, self.config.lease_ttl)
            .await
        {
            Ok(true) => {
                // A replica may have published and released between our read and our lease.
                match self.shared(tenant).await {
                    Ok(Some((token, refreshed_by))) if adoptable(&token) => {
                        self.release(tenant).await;
                        Claim::Adopt {
                            token,
                            refreshed_by,
                        }
                    }
                    _ => Claim::Lease,
                }
            }
            Ok(false) => Claim::Busy,
            Err(err) => Claim::Unavailable(err),
        }
    }

    /// The shared token and who fetched it, if one is there for this tenant's request.
    async fn shared(
        &self,
        tenant: &TenantConfig,
    ) -> Result<Option<(AccessToken, Arc<str>)>, StoreError> {
        let max = usize::try_from(MAX_DOCUMENT_BYTES).unwrap_or(usize::MAX);
        let Some(text) = self
            .store
            .get(&self.key(&tenant.name, "token"), max)
            .await?
        else {
            return Ok(None);
        };
        let Some(token) = parse_existing(text.as_bytes(), tenant) else {
            return Ok(None);
        };
        #[derive(serde::Deserialize)]
        struct By {
            refreshed_by: Option<String>,
        }
        let by = serde_json::from_str::<By>(&text)
            .ok()
            .and_then(|by| by.refreshed_by)
            .map(|by| crate::error::sanitise(&by, &[]));
        Ok(Some((token, by.unwrap_or_default().into())))
    }

    /// Shares a token this replica fetched (newer-wins, expiring with the token).
    ///
    /// # Errors
    /// Redis unreachable or refusing.
    pub async fn publish(
        &self,
        tenant: &TenantConfig,
        token: &AccessToken,
    ) -> Result<(), StoreError> {
        let mut document = Document::new(tenant, token);
        document.refreshed_by = Some(&self.replica_id);
        let text = secrecy::SecretString::from(json_text(&document));
        drop(document);
        self.store
            .write_newer(
                &self.key(&tenant.name, "token"),
                text.expose_secret(),
                token.expires_on(),
                None,
                "",
            )
            .await
            .map(|_| ())
    }

    /// Gives the lease back if this replica still holds it; a failure only means the lease
    /// runs out on its own.
    pub async fn release(&self, tenant: &TenantConfig) {
        if let Err(err) = self
            .store
            .release(&self.key(&tenant.name, "lease"), &self.replica_id)
            .await
        {
            tracing::debug!(tenant = %tenant.name, error = %err, "lease not released; it expires on its own");
        }
    }

    /// Whether the tenant's shared token is still in Redis (`None`: cannot tell).
    pub async fn present(&self, tenant: &TenantConfig) -> Option<bool> {
        self.store
            .exists(&self.key(&tenant.name, "token"))
            .await
            .ok()
    }
}

/// `<host name>-<8 hex digits>`: readable in `/status`, unique per process, and the same for
/// the life of the process (a reload that rebuilds the fleet keeps its leases).
fn default_replica_id() -> String {
    static ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ID.get_or_init(make_replica_id).clone()
}

fn make_replica_id() -> String {
    let uname = rustix::system::uname();
    let host = uname.nodename().to_string_lossy();
    let host = if !host.is_empty() && host.len() <= 64 && host.chars().all(|c| c.is_ascii_graphic())
    {
        host.into_owned()
    } else {
        "replica".to_owned()
    };
    format!("{host}-{:08x}", fastrand::u32(..))
}
