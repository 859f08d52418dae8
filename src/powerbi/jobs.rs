//! A tenant's Power BI calls as fleet jobs ([`crate::fleet`]): each embed token and the access
//! probe is made by one replica and adopted by the others, as access tokens are.
//!
//! * An embed token is shared at `<prefix>:{<name>}:embed:<embed>`: the document its json sink
//!   holds, plus `refreshed_by` and `access_token_issued_on` (the access token it was made
//!   with), expiring with the embed token. It is adopted when it was made for the same items,
//!   access level and identities ([`embed::parse_existing`]), with the access token this
//!   replica holds or a newer one, and has not reached its refresh point: a single daemon would
//!   not make another one either.
//! * The probe's outcome is shared at `<prefix>:{<name>}:probe` until the next probe is due
//!   (the interval, or a longer `Retry-After`): when it ran, whether Power BI accepted the token,
//!   and if not the reason, status, error code, message and `RequestId`, all sanitised, never a
//!   token. It is adopted when it probed the same path with the access token this replica holds
//!   or a newer one and the next probe is not yet due; the adopting replica plans its next probe
//!   for when the shared one falls due, so the fleet keeps one probe schedule per tenant.
//!
//! The "access token or a newer one" rule keeps the single daemon's cadence: after each access
//! token refresh the tenant probes and makes its embed tokens again, so a result made with the
//! token before is not adopted.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use secrecy::SecretString;
use serde::{Deserialize, Serialize};

use super::Context;
use super::embed::{self, EmbedToken};
use crate::clock;
use crate::config::{EmbedConfig, ProbeConfig, TenantConfig};
use crate::error::{self, Reason, RefreshError};
use crate::fleet::{self, Claim, Job, Kind};
use crate::token::{AccessToken, MAX_RETRY_AFTER};

/// The longest text kept of a shared probe's error code and `RequestId`: Power BI's are short
/// identifiers and GUIDs.
const MAX_ID: usize = 96;

/// How far ahead of this host's clock a shared probe's time may be: the replicas' clocks differ
/// a little; a probe "from the future" beyond this is not believed.
const CLOCK_SLACK_MS: i64 = 5_000;

/// What a replica does when a Power BI job falls due.
pub(crate) enum Turn<T> {
    /// Do the job: alone, or under the job's lease (`leased`), to [`done`] afterwards.
    Make {
        /// This replica holds the job's lease.
        leased: bool,
    },
    /// Another replica did it: take its result.
    Adopt {
        /// The shared result.
        output: T,
        /// The replica that made it.
        by: Arc<str>,
    },
    /// Another replica is doing it: look again then.
    Later(SystemTime),
}

/// Decides how `job` is done: outside fleet mode, here; in fleet mode, as [`fleet::Fleet::claim`]
/// says. Redis out of reach means doing it here, as every replica then does.
pub(crate) async fn turn<J: Job>(context: &Context<'_>, job: &J) -> Turn<J::Output> {
    let Some(fleet) = &context.shared.fleet else {
        return Turn::Make { leased: false };
    };
    match fleet.claim(&context.config.name, job).await {
        Claim::Adopt { output, by } => Turn::Adopt { output, by },
        Claim::Lease => Turn::Make { leased: true },
        Claim::Busy => {
            if let Some(observer) = &context.shared.observer {
                observer.fleet_lease_busy(job.kind());
            }
            Turn::Later(crate::schedule::later(SystemTime::now(), fleet::BUSY_RETRY))
        }
        Claim::Unavailable(err) => {
            // The access token's attempt warns about the outage; one line per tenant is enough.
            tracing::debug!(
                tenant = %context.config.name,
                kind = job.kind().as_str(),
                error = %err,
                "fleet: Redis cannot say whether another replica did this; doing it without the fleet"
            );
            Turn::Make { leased: false }
        }
    }
}

/// After a job done here: shares `output` (when it succeeded) with the fleet and gives back
/// the lease, if this replica took it.
pub(crate) async fn done<J: Job>(
    context: &Context<'_>,
    job: &J,
    output: Option<&J::Output>,
    leased: bool,
) {
    let Some(fleet) = &context.shared.fleet else {
        return;
    };
    if let Some(output) = output
        && let Err(err) = fleet.publish(&context.config.name, job, output).await
    {
        // Under the lease Redis answered a moment ago, so its failure is news; without it,
        // Redis was out of reach already, which the access token's attempt reports.
        if leased {
            tracing::warn!(
                tenant = %context.config.name,
                kind = job.kind().as_str(),
                error = %err,
                "fleet: cannot share the result"
            );
        } else {
            tracing::debug!(
                tenant = %context.config.name,
                kind = job.kind().as_str(),
                error = %err,
                "fleet: cannot share the result"
            );
        }
    }
    if leased {
        fleet.release(&context.config.name, job).await;
    }
}

/// The replica to name as the maker of a result made here: this one in fleet mode.
pub(crate) fn made_here(context: &Context<'_>) -> Option<Arc<str>> {
    context
        .shared
        .fleet
        .as_ref()
        .map(|fleet| fleet.replica_id().clone())
}

/// One embed token of a tenant, as the fleet shares it.
pub(crate) struct EmbedJob<'a> {
    /// The tenant.
    tenant: &'a TenantConfig,
    /// The embed's settings: a shared token is adopted only if made for the same request.
    embed: &'a EmbedConfig,
    /// `issued_on` of the access token this replica would make it with.
    access_issued_on: i64,
}

/// An embed token in the fleet, and the access token it was made with.
pub(crate) struct SharedEmbed {
    /// The embed token.
    pub token: EmbedToken,
    /// `issued_on` of the access token it was made with.
    pub access_issued_on: i64,
}

impl<'a> EmbedJob<'a> {
    /// Embed `embed` of `tenant`, made with `entra`.
    pub fn new(tenant: &'a TenantConfig, embed: &'a EmbedConfig, entra: &AccessToken) -> Self {
        EmbedJob {
            tenant,
            embed,
            access_issued_on: entra.issued_on(),
        }
    }

    /// `token`, made here with the access token of this job, as the fleet shares it.
    pub fn made(&self, token: &EmbedToken) -> SharedEmbed {
        SharedEmbed {
            token: token.clone(),
            access_issued_on: self.access_issued_on,
        }
    }
}

impl Job for EmbedJob<'_> {
    type Output = SharedEmbed;

    fn kind(&self) -> Kind {
        Kind::Embed
    }

    fn name(&self) -> String {
        format!("embed:{}", self.embed.name)
    }

    fn read(&self, document: &str) -> Option<SharedEmbed> {
        #[derive(Deserialize)]
        struct MadeWith {
            access_token_issued_on: i64,
        }
        let made_with: MadeWith = serde_json::from_str(document).ok()?;
        Some(SharedEmbed {
            token: embed::parse_existing(document.as_bytes(), self.tenant, self.embed)?,
            access_issued_on: made_with.access_token_issued_on,
        })
    }

    fn adoptable(&self, shared: &SharedEmbed, now: SystemTime) -> bool {
        shared.access_issued_on >= self.access_issued_on
            && now < shared.token.refresh_point(self.tenant.refresh_at)
    }

    fn share(&self, shared: &SharedEmbed, by: &str) -> (SecretString, i64) {
        // Without embed URLs: each replica reads its own (once a day per report).
        let document = embed::document(
            self.tenant,
            self.embed,
            &shared.token,
            &super::embed_urls::EmbedUrls::default(),
        );
        let document = fleet::with_fields(
            &document,
            [
                ("refreshed_by", serde_json::json!(by)),
                (
                    "access_token_issued_on",
                    serde_json::json!(shared.access_issued_on),
                ),
            ],
        );
        (document, shared.token.expires_on)
    }
}

/// A tenant's access probe, as the fleet shares it.
pub(crate) struct ProbeJob<'a> {
    /// The tenant.
    tenant: &'a TenantConfig,
    /// Its probe: a shared outcome is adopted only for the same path.
    probe: &'a ProbeConfig,
    /// `issued_on` of the access token this replica would probe with.
    access_issued_on: i64,
}

/// A probe's outcome in the fleet.
#[derive(Debug)]
pub(crate) struct ProbeOutcome {
    /// When it ran.
    pub probed_at: SystemTime,
    /// When the next probe is due: the interval later, or a longer `Retry-After`.
    pub next_at: SystemTime,
    /// `issued_on` of the access token it probed with.
    pub access_issued_on: i64,
    /// Power BI's answer: `Ok`, or why not.
    pub outcome: Result<(), RefreshError>,
}

/// The shared document of a probe's outcome. Times in Unix milliseconds: whole seconds would
/// shift every adopting replica's schedule by up to a second per probe.
#[derive(Serialize, Deserialize)]
struct ProbeDocument {
    tenant: String,
    path: String,
    probed_at_ms: i64,
    next_probe_at_ms: i64,
    access_token_issued_on: i64,
    ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    http_status: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error_code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    trace_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    refreshed_by: Option<String>,
}

impl<'a> ProbeJob<'a> {
    /// The probe of `tenant`, run with `entra`.
    pub fn new(tenant: &'a TenantConfig, probe: &'a ProbeConfig, entra: &AccessToken) -> Self {
        ProbeJob {
            tenant,
            probe,
            access_issued_on: entra.issued_on(),
        }
    }

    /// The outcome of a probe run here at `probed_at` with this job's access token.
    pub fn made(
        &self,
        probed_at: SystemTime,
        next_at: SystemTime,
        outcome: Result<(), RefreshError>,
    ) -> ProbeOutcome {
        ProbeOutcome {
            probed_at,
            next_at,
            access_issued_on: self.access_issued_on,
            outcome,
        }
    }
}

impl Job for ProbeJob<'_> {
    type Output = ProbeOutcome;

    fn kind(&self) -> Kind {
        Kind::Probe
    }

    fn name(&self) -> String {
        "probe".to_owned()
    }

    fn read(&self, document: &str) -> Option<ProbeOutcome> {
        let document: ProbeDocument = serde_json::from_str(document).ok()?;
        if document.tenant != self.tenant.name || document.path != self.probe.path {
            return None;
        }
        let (probed_at_ms, next_at_ms) = (document.probed_at_ms, document.next_probe_at_ms);
        // A probe "from the future", or a next probe further off than the interval or the
        // longest `Retry-After` allow, would keep this replica from probing: not believed.
        let longest = self.probe.interval.max(MAX_RETRY_AFTER);
        let longest_ms = i64::try_from(longest.as_millis()).unwrap_or(i64::MAX);
        let now_ms = unix_ms(SystemTime::now());
        if probed_at_ms > now_ms.saturating_add(CLOCK_SLACK_MS)
            || next_at_ms < probed_at_ms
            || next_at_ms > probed_at_ms.saturating_add(longest_ms)
        {
            return None;
        }
        Some(ProbeOutcome {
            probed_at: from_unix_ms(probed_at_ms),
            next_at: from_unix_ms(next_at_ms),
            access_issued_on: document.access_token_issued_on,
            outcome: failure_of(&document)?,
        })
    }

    fn adoptable(&self, shared: &ProbeOutcome, now: SystemTime) -> bool {
        shared.access_issued_on >= self.access_issued_on && now < shared.next_at
    }

    fn share(&self, shared: &ProbeOutcome, by: &str) -> (SecretString, i64) {
        let failure = shared.outcome.as_ref().err();
        let document = ProbeDocument {
            tenant: self.tenant.name.clone(),
            path: self.probe.path.clone(),
            probed_at_ms: unix_ms(shared.probed_at),
            next_probe_at_ms: unix_ms(shared.next_at),
            access_token_issued_on: shared.access_issued_on,
            ok: failure.is_none(),
            reason: failure.map(|failure| failure.reason.as_str().to_owned()),
            http_status: failure.and_then(|failure| failure.status),
            error_code: failure.and_then(|failure| failure.oauth_error.clone()),
            message: failure.map(|failure| failure.message.clone()),
            trace_id: failure.and_then(|failure| failure.trace_id.clone()),
            refreshed_by: Some(by.to_owned()),
        };
        // Plain strings and numbers: serialising cannot fail.
        let text = serde_json::to_string(&document).unwrap_or_default();
        // The key outlives the next probe by the same span for every outcome (one interval plus
        // the longest Retry-After), so a later probe's document always expires later and wins
        // the store's newer-wins write; one ending at `next_at`, after a throttled probe, would
        // refuse every later one until then. Whether it is still worth adopting is `adoptable`'s
        // question, not the key's.
        let horizon = self.probe.interval.saturating_add(MAX_RETRY_AFTER);
        let expires_at = clock::unix_seconds(shared.probed_at)
            .saturating_add(i64::try_from(horizon.as_secs()).unwrap_or(i64::MAX));
        let expires_on = expires_at.max(unix_ms(shared.next_at).saturating_add(999) / 1000);
        (SecretString::from(text), expires_on)
    }
}

/// The outcome a shared probe document records, bounded and sanitised (it came from Redis);
/// `None` when it names no reason a probe can fail with.
fn failure_of(document: &ProbeDocument) -> Option<Result<(), RefreshError>> {
    if document.ok {
        return Some(Ok(()));
    }
    let reason = document.reason.as_deref()?;
    let reason = *Reason::API.iter().find(|known| known.as_str() == reason)?;
    let short = |text: &Option<String>| {
        text.as_deref()
            .filter(|text| text.chars().count() <= MAX_ID)
            .map(|text| error::sanitise(text, &[]))
            .filter(|text| !text.is_empty())
    };
    let message = document
        .message
        .as_deref()
        .map(|message| error::sanitise(message, &[]))
        .unwrap_or_default();
    Some(Err(RefreshError::api(
        reason,
        document.http_status,
        short(&document.error_code),
        short(&document.trace_id),
        message,
        None,
    )))
}

/// Unix milliseconds of `time` (0 before 1970).
fn unix_ms(time: SystemTime) -> i64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |since| {
            i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
        })
}

/// The instant `ms` Unix milliseconds name (negative: the epoch), saturating like
/// [`clock::unix_to_system`].
fn from_unix_ms(ms: i64) -> SystemTime {
    let seconds = clock::unix_to_system(ms.div_euclid(1000));
    let millis = u64::try_from(ms.rem_euclid(1000)).unwrap_or(0);
    crate::schedule::later(seconds, Duration::from_millis(millis))
}

#[cfg(test)]
mod tests {
    use super::super::embed::tests::{embed as embed_fixture, tenant};
    use super::*;
    use crate::config::AccessLevel;
    use secrecy::ExposeSecret;

    /// The embed fixture of the embed token tests.
    fn sales() -> EmbedConfig {
        embed_fixture(AccessLevel::View)
    }

    /// An access token received at `issued_on` (Unix seconds), valid for a day after it.
    fn access_token(issued_on: i64) -> AccessToken {
        AccessToken::new(
            SecretString::from("eyJhbGciOi.eyJzdWIiOi.c2lnbmF0dXJl"),
            "Bearer".to_owned(),
            clock::unix_to_system(issued_on),
            crate::token::ClaimedExpiry::At(clock::unix_now() + 86_400),
            None,
        )
        .expect("a token")
    }

    #[test]
    fn an_embed_token_is_adopted_only_if_made_with_the_same_or_a_newer_access_token_and_not_due() {
        let (tenant, sales) = (tenant(), sales());
        let now = clock::unix_now();
        let token = EmbedToken {
            secret: SecretString::from("H4sIsecret"),
            token_id: "49ae3742-0000-4c29-af52-000000000006".to_owned(),
            expires_on: now + 600,
            issued_on: now - 10,
        };
        let maker = EmbedJob::new(&tenant, &sales, &access_token(now - 20));
        let (document, expires_on) = maker.share(&maker.made(&token), "replica-0");
        assert_eq!(expires_on, token.expires_on);
        let text = document.expose_secret();
        let value: serde_json::Value = serde_json::from_str(text).unwrap();
        assert_eq!(value["refreshed_by"], "replica-0");
        assert_eq!(value["access_token_issued_on"], now - 20);
        assert_eq!(value["embed"], "sales", "the document the json sink holds");

        let at = SystemTime::now();
        let same = EmbedJob::new(&tenant, &sales, &access_token(now - 20));
        let shared = same.read(text).expect("read back");
        assert_eq!(shared.token.secret.expose_secret(), "H4sIsecret");
        assert!(same.adoptable(&shared, at));
        let older = EmbedJob::new(&tenant, &sales, &access_token(now - 3000));
        assert!(older.adoptable(&older.read(text).unwrap(), at));
        let newer = EmbedJob::new(&tenant, &sales, &access_token(now - 5));
        assert!(!newer.adoptable(&newer.read(text).unwrap(), at));
        // Past its refresh point (half of its 610 s), it is due: made again.
        let later = at + Duration::from_secs(400);
        assert!(!same.adoptable(&shared, later));
        // Made for other items: not this embed's token.
        let mut other = sales.clone();
        other
            .reports
            .push("f089354e-0000-4e18-aea3-000000000005".to_owned());
        assert!(
            EmbedJob::new(&tenant, &other, &access_token(now))
                .read(text)
                .is_none()
        );
        // A sink's document without the access token it was made with is not a shared one.
        let plain = embed::document(
            &tenant,
            &sales,
            &token,
            &crate::powerbi::embed_urls::EmbedUrls::default(),
        );
        assert!(same.read(plain.expose_secret()).is_none());
    }

    fn probe_config() -> ProbeConfig {
        ProbeConfig {
            interval: Duration::from_secs(60),
            path: "/v1.0/myorg/groups?$top=1".to_owned(),
        }
    }

    #[test]
    fn a_probe_outcome_travels_sanitised_and_is_adopted_until_the_next_probe_is_due() {
        let (tenant, probe) = (tenant(), probe_config());
        let base = clock::unix_now() - 100;
        let job = ProbeJob::new(&tenant, &probe, &access_token(base));
        let now = SystemTime::now();
        let failure = RefreshError::api(
            Reason::NotAuthorized,
            Some(401),
            Some("PowerBINotAuthorizedException".to_owned()),
            Some("6f1b9d8e-0000-4000-8000-000000000001".to_owned()),
            "HTTP 401".to_owned(),
            None,
        );
        let made = job.made(now, now + Duration::from_secs(60), Err(failure));
        let (document, expires_on) = job.share(&made, "replica-1");
        // The key lives one interval and the longest Retry-After past the probe, whatever its
        // outcome: a throttled probe's (next probe an hour away) expires before a later probe's.
        let horizon = i64::try_from((probe.interval + MAX_RETRY_AFTER).as_secs()).unwrap();
        assert_eq!(expires_on, clock::unix_seconds(now) + horizon);
        let throttled = job.made(now, now + MAX_RETRY_AFTER, Ok(()));
        let later = job.made(
            now + Duration::from_secs(5),
            now + Duration::from_secs(65),
            Ok(()),
        );
        assert!(job.share(&later, "replica-2").1 > job.share(&throttled, "replica-1").1);
        let back = job.read(document.expose_secret()).expect("read back");
        let err = back.outcome.as_ref().expect_err("the failure");
        assert_eq!(err.reason, Reason::NotAuthorized);
        assert_eq!(err.status, Some(401));
        assert_eq!(
            err.oauth_error.as_deref(),
            Some("PowerBINotAuthorizedException")
        );
        assert_eq!(
            err.trace_id.as_deref(),
            Some("6f1b9d8e-0000-4000-8000-000000000001")
        );
        assert_eq!(unix_ms(back.probed_at), unix_ms(now));
        assert!(job.adoptable(&back, now + Duration::from_secs(59)));
        assert!(!job.adoptable(&back, now + Duration::from_secs(60)));
        let newer = ProbeJob::new(&tenant, &probe, &access_token(base + 50));
        assert!(!newer.adoptable(&back, now));
        let mut elsewhere = probe_config();
        elsewhere.path = "/v1.0/myorg/reports".to_owned();
        let elsewhere = ProbeJob::new(&tenant, &elsewhere, &access_token(base));
        assert!(elsewhere.read(document.expose_secret()).is_none());
    }

    #[test]
    fn a_hostile_probe_document_is_bounded_or_refused() {
        let (tenant, probe) = (tenant(), probe_config());
        let base = clock::unix_now() - 100;
        let job = ProbeJob::new(&tenant, &probe, &access_token(base));
        let now_ms = unix_ms(SystemTime::now());
        let document = |fields: serde_json::Value| {
            let mut value = serde_json::json!({
                "tenant": "contoso", "path": "/v1.0/myorg/groups?$top=1",
                "probed_at_ms": now_ms, "next_probe_at_ms": now_ms + 60_000,
                "access_token_issued_on": base, "ok": false, "reason": "server_error",
            });
            for (key, field) in fields.as_object().unwrap() {
                value[key] = field.clone();
            }
            value.to_string()
        };
        let token = "eyJ0eXAiOiJKV1QifQ.eyJhdWQiOiJ4In0.c2lnbmF0dXJlc2lnbmF0dXJl";
        let echoed = job
            .read(&document(serde_json::json!({
                "message": format!("bad \u{1b}[31m {token}\nforged"),
                "error_code": "x".repeat(10_000),
                "trace_id": token,
            })))
            .expect("read");
        let err = echoed.outcome.expect_err("a failure");
        assert!(!err.message.contains(token) && !err.message.contains('\u{1b}'));
        assert!(!err.message.contains('\n'), "{}", err.message);
        assert_eq!(err.oauth_error, None, "too long to be a code");
        assert!(err.trace_id.is_none_or(|id| !id.contains(token)));
        for refused in [
            serde_json::json!({"reason": "invalid_client"}),
            serde_json::json!({"reason": "whatever"}),
            serde_json::json!({"reason": null}),
            serde_json::json!({"probed_at_ms": now_ms + 3_600_000}),
            serde_json::json!({"next_probe_at_ms": now_ms + 400 * 24 * 3_600_000_i64}),
            serde_json::json!({"next_probe_at_ms": now_ms - 1}),
            serde_json::json!({"tenant": "fabrikam"}),
            serde_json::json!({"http_status": 70_000}),
        ] {
            assert!(job.read(&document(refused.clone())).is_none(), "{refused}");
        }
        assert!(job.read("[]").is_none() && job.read("").is_none());
    }
}
