//! Fleet mode: replicas with the same tenants share each job through Redis, so Entra and Power
//! BI see one request per tenant per job however many replicas run.
//!
//! A job is anything a replica would otherwise do for itself with the same outcome as every
//! other replica: fetch the tenant's access token, make one of its embed tokens, run its access
//! probe. Every job is shared the same way, one mechanism for all three ([`Fleet::claim`],
//! [`Fleet::publish`], [`Fleet::release`]); a [`Job`] says only what its shared result is called,
//! how to read it back, when it is worth taking, and how to write it.
//!
//! When a job falls due, a replica first reads the job's shared result. If another replica
//! already did the job (a result made for the same request, newer than this replica's, not yet
//! due), it adopts that result: writes its own sinks and status from it and plans from it,
//! without a request. Otherwise it takes the job's lease (`SET NX PX`, owner = this replica's id,
//! lasting one attempt), does the job, publishes the result to the shared key (newer wins, the
//! key expiring with the result), and releases the lease by a compare-and-delete script, so it
//! never frees a lease that expired and passed to another. A replica that finds the lease taken
//! looks again after [`BUSY_RETRY`], by which time the holder has usually published. A replica
//! that dies holding a lease delays the job by at most the lease's lifetime.
//!
//! When Redis cannot be reached, a replica does the job on its own: tokens stay fresh and probes
//! keep running during an outage, at the price of one request per replica instead of one per
//! fleet.
//!
//! Keys, all in the tenant's hash tag `{<name>}` so that a Redis Cluster keeps a tenant's keys
//! in one slot (the scripts touch one key each, but one slot per tenant keeps a tenant's jobs on
//! one node):
//!
//! | job | shared result | lease |
//! |---|---|---|
//! | access token | `<prefix>:{<name>}:token` | `<prefix>:{<name>}:lease` |
//! | embed token | `<prefix>:{<name>}:embed:<embed>` | `<prefix>:{<name>}:lease:embed:<embed>` |
//! | access probe | `<prefix>:{<name>}:probe` | `<prefix>:{<name>}:lease:probe` |
//!
//! Every shared result is a json document carrying `refreshed_by`, the replica that made it (the
//! access token's field since fleet mode began, so one reader serves every job and replicas of
//! different versions read each other's tokens).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use secrecy::{ExposeSecret, SecretString};

use crate::config::FleetConfig;
use crate::sink::MAX_DOCUMENT_BYTES;
use crate::store::{Store, StoreError};

/// How soon a replica looks again when another replica holds a job's lease: the holder's result
/// usually arrives within one request's time.
pub(crate) const BUSY_RETRY: Duration = Duration::from_secs(1);

/// The kinds of job, for the fleet metrics' `kind` label: three values, whatever the tenants.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A tenant's access token.
    Token,
    /// One of a tenant's embed tokens.
    Embed,
    /// A tenant's Power BI access probe.
    Probe,
}

impl Kind {
    /// Every kind, for series that start at zero.
    pub const ALL: [Kind; 3] = [Kind::Token, Kind::Embed, Kind::Probe];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Token => "token",
            Kind::Embed => "embed",
            Kind::Probe => "probe",
        }
    }
}

/// One job of one tenant, as the fleet shares it.
pub trait Job {
    /// What the job produces: a token, a probe's outcome.
    type Output;

    /// Which kind of job.
    fn kind(&self) -> Kind;

    /// The shared result's key after `<prefix>:{<name>}:` (`token`, `embed:<embed>`, `probe`).
    fn name(&self) -> String;

    /// The lease's key after `<prefix>:{<name>}:`: `lease:` and the result's name.
    fn lease(&self) -> String {
        format!("lease:{}", self.name())
    }

    /// A shared document read back: the result, if it was made for this job (the same tenant
    /// and request). The document came from Redis: anything in it is bounded here.
    fn read(&self, document: &str) -> Option<Self::Output>;

    /// Whether a shared result is worth taking at `now` instead of doing the job.
    fn adoptable(&self, output: &Self::Output, now: SystemTime) -> bool;

    /// The document to share, made by replica `by`, and the Unix second it stops being worth
    /// anything (the key expires then, and a later one wins over it).
    fn share(&self, output: &Self::Output, by: &str) -> (SecretString, i64);
}

/// The fleet as one replica sees it.
#[derive(Debug)]
pub struct Fleet {
    /// The shared Redis.
    store: Arc<Store>,
    /// `[fleet]`: the key prefix and the lease's lifetime.
    config: FleetConfig,
    /// This replica's name in leases, shared results and `/status`.
    replica_id: Arc<str>,
}

/// What a replica should do when a job falls due.
#[derive(Debug)]
pub enum Claim<T> {
    /// Another replica did the job: use its result.
    Adopt {
        /// The shared result.
        output: T,
        /// The replica that made it.
        by: Arc<str>,
    },
    /// This replica holds the lease: do the job, [`Fleet::publish`], then [`Fleet::release`].
    Lease,
    /// Another replica holds the lease: look again after [`BUSY_RETRY`].
    Busy,
    /// Redis cannot say: do the job without the fleet.
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

    /// Whether a result made by `by` came from another replica.
    pub fn adopted(&self, by: &str) -> bool {
        by != &*self.replica_id
    }

    /// The settings it runs with (reloads compare them).
    pub fn config(&self) -> &FleetConfig {
        &self.config
    }

    fn key(&self, tenant: &str, what: &str) -> String {
        key(&self.config.key_prefix, tenant, what)
    }

    /// Decides between adopting, doing `job` under its lease, and waiting.
    pub async fn claim<J: Job>(&self, tenant: &str, job: &J) -> Claim<J::Output> {
        match self.shared(tenant, job).await {
            Ok(Some((output, by))) => return Claim::Adopt { output, by },
            Ok(None) => {}
            Err(err) => return Claim::Unavailable(err),
        }
        let lease = self.key(tenant, &job.lease());
        match self
            .store
            .acquire(&lease, &self.replica_id, self.config.lease_ttl)
            .await
        {
            Ok(true) => {
                // A replica may have published and released between our read and our lease.
                match self.shared(tenant, job).await {
                    Ok(Some((output, by))) => {
                        self.release(tenant, job).await;
                        Claim::Adopt { output, by }
                    }
                    _ => Claim::Lease,
                }
            }
            Ok(false) => Claim::Busy,
            Err(err) => Claim::Unavailable(err),
        }
    }

    /// The job's shared result and who made it, if one is there that is worth adopting now.
    async fn shared<J: Job>(
        &self,
        tenant: &str,
        job: &J,
    ) -> Result<Option<(J::Output, Arc<str>)>, StoreError> {
        let max = usize::try_from(MAX_DOCUMENT_BYTES).unwrap_or(usize::MAX);
        let Some(text) = self.store.get(&self.key(tenant, &job.name()), max).await? else {
            return Ok(None);
        };
        let text = SecretString::from(text);
        let Some(output) = job.read(text.expose_secret()) else {
            return Ok(None);
        };
        if !job.adoptable(&output, SystemTime::now()) {
            return Ok(None);
        }
        Ok(Some((output, made_by(text.expose_secret()))))
    }

    /// Shares a result this replica made (newer-wins, expiring with the result).
    ///
    /// # Errors
    /// Redis unreachable or refusing.
    pub async fn publish<J: Job>(
        &self,
        tenant: &str,
        job: &J,
        output: &J::Output,
    ) -> Result<(), StoreError> {
        let (text, expires_on) = job.share(output, &self.replica_id);
        self.store
            .write_newer(
                &self.key(tenant, &job.name()),
                text.expose_secret(),
                expires_on,
                None,
                "",
            )
            .await
            .map(|_| ())
    }

    /// Gives the job's lease back if this replica still holds it; a failure only means the
    /// lease runs out on its own.
    pub async fn release<J: Job>(&self, tenant: &str, job: &J) {
        if let Err(err) = self
            .store
            .release(&self.key(tenant, &job.lease()), &self.replica_id)
            .await
        {
            tracing::debug!(tenant, kind = job.kind().as_str(), error = %err, "lease not released; it expires on its own");
        }
    }

    /// Whether the job's shared result is still in Redis (`None`: cannot tell).
    pub async fn present<J: Job>(&self, tenant: &str, job: &J) -> Option<bool> {
        self.store.exists(&self.key(tenant, &job.name())).await.ok()
    }
}

/// `<prefix>:{<tenant>}:<what>`: the braces are the Redis Cluster hash tag.
fn key(prefix: &str, tenant: &str, what: &str) -> String {
    format!("{prefix}:{{{tenant}}}:{what}")
}

/// The replica named in a shared document's `refreshed_by`, sanitised (it came from Redis);
/// empty when there is none.
fn made_by(document: &str) -> Arc<str> {
    #[derive(serde::Deserialize)]
    struct By {
        refreshed_by: Option<String>,
    }
    let by = serde_json::from_str::<By>(document)
        .ok()
        .and_then(|by| by.refreshed_by)
        .map(|by| crate::error::sanitise(&by, &[]));
    by.unwrap_or_default().into()
}

/// `document` (a json object, as a sink holds it) with `fields` added: what a shared result
/// carries beside what the sinks hold (the replica that made it, what it was made with).
pub(crate) fn with_fields(
    document: &SecretString,
    fields: impl IntoIterator<Item = (&'static str, serde_json::Value)>,
) -> SecretString {
    let mut object =
        match serde_json::from_str::<serde_json::Value>(document.expose_secret().trim_end()) {
            Ok(serde_json::Value::Object(object)) => object,
            // Every document a job shares is a json object it rendered itself.
            _ => serde_json::Map::new(),
        };
    for (name, value) in fields {
        object.insert(name.to_owned(), value);
    }
    SecretString::from(serde_json::Value::Object(object).to_string())
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

#[cfg(test)]
mod tests {
    use super::*;

    struct Named(&'static str);

    impl Job for Named {
        type Output = ();
        fn kind(&self) -> Kind {
            Kind::Probe
        }
        fn name(&self) -> String {
            self.0.to_owned()
        }
        fn read(&self, _: &str) -> Option<()> {
            None
        }
        fn adoptable(&self, (): &(), _: SystemTime) -> bool {
            false
        }
        fn share(&self, (): &(), _: &str) -> (SecretString, i64) {
            (SecretString::from(""), 0)
        }
    }

    #[test]
    fn every_key_of_a_tenant_is_in_its_hash_tag() {
        let prefix = "powerbi-tokend:fleet";
        let probe = Named("probe");
        assert_eq!(
            key(prefix, "contoso", &probe.name()),
            "powerbi-tokend:fleet:{contoso}:probe"
        );
        assert_eq!(
            key(prefix, "contoso", &probe.lease()),
            "powerbi-tokend:fleet:{contoso}:lease:probe"
        );
        let embed = Named("embed:sales");
        assert_eq!(
            key(prefix, "contoso", &embed.lease()),
            "powerbi-tokend:fleet:{contoso}:lease:embed:sales"
        );
    }

    #[test]
    fn the_maker_is_read_sanitised_and_fields_are_added_to_a_document() {
        assert_eq!(&*made_by(r#"{"refreshed_by":"replica-1"}"#), "replica-1");
        assert_eq!(&*made_by(r#"{"token":"x"}"#), "");
        assert_eq!(&*made_by("not json"), "");
        let hostile = made_by("{\"refreshed_by\":\"a\\u001b[31mb\\nforged\"}");
        assert!(
            !hostile.contains('\u{1b}') && !hostile.contains('\n'),
            "{hostile}"
        );

        let document = SecretString::from("{\"token\":\"t\",\"expires_on\":5}\n");
        let shared = with_fields(
            &document,
            [
                ("refreshed_by", serde_json::json!("replica-0")),
                ("access_token_issued_on", serde_json::json!(7)),
            ],
        );
        let value: serde_json::Value = serde_json::from_str(shared.expose_secret()).unwrap();
        assert_eq!(
            value,
            serde_json::json!({"token": "t", "expires_on": 5, "refreshed_by": "replica-0",
                "access_token_issued_on": 7})
        );
    }
}
