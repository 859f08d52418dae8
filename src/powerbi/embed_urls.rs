//! Embed URLs: what a browser needs besides the embed token. For every report of an embed the
//! daemon reads the report's `embedUrl` from Power BI, with Get Report In Group
//! (`GET {api}/v1.0/myorg/groups/{workspace}/reports/{id}`) when the embed names its
//! `workspace`, else with Get Report (`GET {api}/v1.0/myorg/reports/{id}`, "My workspace"), and
//! writes it with the embed token: a json document gains `"workspace"`,
//! `"embed_urls": {"<report id>": "<url>", …}` and `"embed_urls_read_at"` (Unix seconds of the
//! oldest read among those URLs, `null` while there is none).
//!
//! An embed URL changes rarely (it names the report, its workspace and the cluster that serves
//! it), so it is read once and again only after [`REREAD_AFTER`]. The reads ride along with an
//! embed token that is made anyway, before it is written, each through the same request permit
//! and rate cap as every Power BI call: no schedule of their own. A warm start takes the URLs of
//! a stored document made for the same tenant, embed and workspace, for the reports still
//! listed, when they were read less than [`REREAD_AFTER`] ago.
//!
//! A failed read loses nothing: the embed token is written with the URLs known before (a report
//! without one is simply absent from `embed_urls`), the failure is the embed's
//! `embed_urls.last_error` in `/status` (classified like the probe's), and the report is read
//! again with the next embed token. A URL from Power BI is hostile input until checked: https
//! (http only on loopback, for the simulator), at most [`MAX_EMBED_URL`] bytes, and only the
//! characters of RFC 3986 without `'` and `#` (so it is safe in an HTML attribute); anything else
//! is refused as `unexpected`.

use std::collections::BTreeMap;
use std::time::Duration;

use secrecy::ExposeSecret;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use super::Context;
use super::answer::{classify, unanswered};
use crate::client::TokenClient;
use crate::clock;
use crate::config::{EmbedConfig, TenantConfig, is_loopback_authority};
use crate::error::{Reason, RefreshError};
use crate::refresh;
use crate::sink::Owner;
use crate::status::{self, EmbedUrlsStatus};
use crate::token::AccessToken;

/// The longest embed URL accepted: real ones are about 300 bytes (the `config` parameter is a
/// short base64 JSON), and browsers handle URLs of this length everywhere.
pub const MAX_EMBED_URL: usize = 2048;

/// How long an embed URL is used before it is read again. A report moves between clusters or
/// workspaces rarely, and a stale URL keeps working through Power BI's redirects; a day keeps
/// the reads to one per report and day.
pub const REREAD_AFTER: Duration = Duration::from_secs(24 * 60 * 60);

/// How far ahead of this host's clock a stored read time may be and still count: the clock of
/// the host that wrote it may run a little ahead.
const CLOCK_SKEW_SECS: i64 = 5 * 60;

/// The embed URLs of one embed's reports, kept between its embed tokens.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EmbedUrls {
    /// Report id (as configured) → its URL and when it was read.
    known: BTreeMap<String, Known>,
}

/// One report's embed URL.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Known {
    /// The URL, checked by [`check_embed_url`].
    url: String,
    /// Unix seconds it was read.
    read_at: i64,
}

/// Whether a URL read at `read_at` is still used at `now` (both Unix seconds).
fn fresh(read_at: i64, now: i64) -> bool {
    let age = now.saturating_sub(read_at);
    let limit = i64::try_from(REREAD_AFTER.as_secs()).unwrap_or(i64::MAX);
    age > -CLOCK_SKEW_SECS && age < limit
}

impl EmbedUrls {
    /// The reports of `embed` whose URL is to be read at `now`: those without one, and those
    /// read [`REREAD_AFTER`] ago or more.
    pub fn due<'a>(&self, embed: &'a EmbedConfig, now: i64) -> Vec<&'a str> {
        embed
            .reports
            .iter()
            .filter(|report| {
                !self
                    .known
                    .get(report.as_str())
                    .is_some_and(|known| fresh(known.read_at, now))
            })
            .map(String::as_str)
            .collect()
    }

    /// The URL known for `report`.
    pub fn url(&self, report: &str) -> Option<&str> {
        self.known.get(report).map(|known| known.url.as_str())
    }

    /// `url` was read for `report` at `now` (it replaces the one known before).
    pub fn learned(&mut self, report: &str, url: String, now: i64) {
        self.known
            .insert(report.to_owned(), Known { url, read_at: now });
    }

    /// Unix seconds of the oldest read among the URLs of `embed`'s reports; `None` without any.
    pub fn read_at(&self, embed: &EmbedConfig) -> Option<i64> {
        embed
            .reports
            .iter()
            .filter_map(|report| self.known.get(report).map(|known| known.read_at))
            .min()
    }

    /// Adds `workspace`, `embed_urls` (the URLs of `embed`'s reports that are known) and
    /// `embed_urls_read_at` to a json document of the embed token.
    pub fn add_to(&self, embed: &EmbedConfig, document: &mut serde_json::Value) {
        let Some(fields) = document.as_object_mut() else {
            return;
        };
        let urls: serde_json::Map<String, serde_json::Value> = embed
            .reports
            .iter()
            .filter_map(|report| Some((report.clone(), self.url(report)?.into())))
            .collect();
        fields.insert("workspace".to_owned(), embed.workspace.clone().into());
        fields.insert("embed_urls".to_owned(), urls.into());
        fields.insert("embed_urls_read_at".to_owned(), self.read_at(embed).into());
    }

    /// What `/status` shows of them, after a round of reads that ended in `failure` (`None`:
    /// every read tried succeeded).
    fn record(
        &self,
        embed: &EmbedConfig,
        status: &mut EmbedUrlsStatus,
        failure: Option<RefreshError>,
    ) {
        status.missing = embed
            .reports
            .iter()
            .filter(|report| !self.known.contains_key(report.as_str()))
            .cloned()
            .collect();
        status.count = embed.reports.len().saturating_sub(status.missing.len());
        status.read_at = self.read_at(embed);
        status.last_error = failure.map(Box::new);
    }

    /// Reads the URLs that are due ([`EmbedUrls::due`]) of embed `index` with `entra`, one
    /// request permit and rate-cap turn each, and records the outcome in the embed's status.
    /// A report that does not exist (404) does not stop the others; any other failure (the
    /// token refused, throttling, Power BI failing or unreachable) ends the round, since the
    /// rest would meet the same. Stops early when `cancel` fires.
    pub(crate) async fn read_due(
        &mut self,
        context: &Context<'_>,
        index: usize,
        entra: &AccessToken,
        cancel: &CancellationToken,
    ) {
        let (Some(powerbi), Some(embed)) =
            (context.config.powerbi.as_deref(), context.embed(index))
        else {
            return;
        };
        let due = self.due(embed, clock::unix_now());
        if due.is_empty() {
            return;
        }
        let mut failure = None;
        for report in due {
            let Some(permit) = context.shared.api_turn(cancel).await else {
                break;
            };
            let workspace = embed.workspace.as_deref();
            let outcome = read(
                &context.shared.client,
                &powerbi.api_root,
                workspace,
                report,
                entra,
            )
            .await;
            drop(permit);
            if let Some(observer) = &context.shared.observer {
                observer.embed_url_read(outcome.as_ref().map(|_| ()).map_err(|err| err.reason));
            }
            match outcome {
                Ok(url) => self.learned(report, url, clock::unix_now()),
                Err(err) => {
                    let ends_round = err.reason != Reason::NotFound;
                    failure = Some(err);
                    if ends_round {
                        break;
                    }
                }
            }
        }
        let previous = self.publish(context, index, embed, failure.clone());
        log(
            context,
            embed,
            failure.as_ref(),
            previous,
            self.url_count(embed),
        );
    }

    /// How many of `embed`'s reports have a URL.
    fn url_count(&self, embed: &EmbedConfig) -> usize {
        embed
            .reports
            .iter()
            .filter(|report| self.known.contains_key(report.as_str()))
            .count()
    }

    /// Records them in embed `index`'s status; returns the reason of the failure recorded before.
    fn publish(
        &self,
        context: &Context<'_>,
        index: usize,
        embed: &EmbedConfig,
        failure: Option<RefreshError>,
    ) -> Option<Reason> {
        let mut status = status::lock(context.status);
        let urls = status.embeds.get_mut(index)?.urls.as_deref_mut()?;
        let previous = urls.last_error.as_ref().map(|err| err.reason);
        self.record(embed, urls, failure);
        previous
    }

    /// Takes the URLs of embed `index` from its sinks at a warm start (see
    /// [`parse_stored`]), so that a restart reads none that are still fresh.
    pub(crate) async fn warm_start(&mut self, context: &Context<'_>, index: usize) {
        let Some(embed) = context.embed(index) else {
            return;
        };
        if embed.reports.is_empty() {
            return;
        }
        let owner = Owner {
            tenant: &context.config.name,
            embed: Some(&embed.name),
        };
        let now = clock::unix_now();
        let stored = refresh::stored(
            &embed.sinks,
            context.shared.store.as_ref(),
            owner,
            false,
            |bytes| Some(parse_stored(bytes, context.config, embed, now)),
            |urls| !urls.known.is_empty(),
        )
        .await;
        let Some(stored) = stored else {
            return;
        };
        *self = stored;
        self.publish(context, index, embed, None);
        tracing::info!(
            tenant = %context.config.name,
            embed = %embed.name,
            urls = self.known.len(),
            "warm start: reusing the embed URLs on disk"
        );
    }
}

/// The status of an embed's URLs before any is read: every report without one. `None` for an
/// embed without reports, which has no URLs to show.
pub(crate) fn initial_status(embed: &EmbedConfig) -> Option<Box<EmbedUrlsStatus>> {
    (!embed.reports.is_empty()).then(|| {
        let mut status = Box::<EmbedUrlsStatus>::default();
        EmbedUrls::default().record(embed, &mut status, None);
        status
    })
}

/// One line per change of the outcome of the reads (a repeat of the same failure is at DEBUG).
fn log(
    context: &Context<'_>,
    embed: &EmbedConfig,
    failure: Option<&RefreshError>,
    previous: Option<Reason>,
    count: usize,
) {
    let (tenant, name) = (context.config.name.as_str(), embed.name.as_str());
    let total = embed.reports.len();
    match failure {
        None => tracing::debug!(tenant, embed = name, count, total, "embed URLs read"),
        Some(failure) if previous == Some(failure.reason) => tracing::debug!(
            tenant,
            embed = name,
            reason = failure.reason.as_str(),
            request_id = failure.trace_id.as_deref().unwrap_or("-"),
            count,
            total,
            "embed URL still not read"
        ),
        Some(failure) => tracing::warn!(
            tenant,
            embed = name,
            reason = failure.reason.as_str(),
            status = failure.status.unwrap_or(0),
            code = failure.oauth_error.as_deref().unwrap_or("-"),
            request_id = failure.trace_id.as_deref().unwrap_or("-"),
            error = %failure.message,
            count,
            total,
            "embed URL not read ({}), written without it and read again with the next embed token: {}",
            failure.reason.as_str(),
            failure.reason.advice().unwrap_or_default()
        ),
    }
}

/// The document fields a warm start reads the URLs from.
#[derive(Deserialize)]
struct Stored {
    tenant: String,
    embed: String,
    #[serde(default)]
    workspace: Option<String>,
    #[serde(default)]
    embed_urls: BTreeMap<String, String>,
    #[serde(default)]
    embed_urls_read_at: Option<i64>,
}

/// The URLs in a stored document (`bytes`) that a warm start at `now` may use: the document was
/// written for this tenant, embed and workspace, its URLs were read less than [`REREAD_AFTER`]
/// ago, and only those of reports still listed that pass [`check_embed_url`] are taken. Empty
/// when none qualifies (a document of an older version has none).
pub fn parse_stored(
    bytes: &[u8],
    tenant: &TenantConfig,
    embed: &EmbedConfig,
    now: i64,
) -> EmbedUrls {
    let Ok(stored) = serde_json::from_slice::<Stored>(bytes) else {
        return EmbedUrls::default();
    };
    let Some(read_at) = stored.embed_urls_read_at.filter(|at| fresh(*at, now)) else {
        return EmbedUrls::default();
    };
    if stored.tenant != tenant.name
        || stored.embed != embed.name
        || stored.workspace != embed.workspace
    {
        return EmbedUrls::default();
    }
    let mut urls = EmbedUrls::default();
    for report in &embed.reports {
        if let Some(url) = stored.embed_urls.get(report)
            && check_embed_url(url).is_ok()
        {
            urls.learned(report, url.clone(), read_at);
        }
    }
    urls
}

/// Where a report is read: Get Report In Group with a workspace, Get Report without.
pub fn report_url(api_root: &str, workspace: Option<&str>, report: &str) -> String {
    match workspace {
        Some(workspace) => format!("{api_root}/v1.0/myorg/groups/{workspace}/reports/{report}"),
        None => format!("{api_root}/v1.0/myorg/reports/{report}"),
    }
}

/// The fields of a Report that are read: its id (to be sure it is the report asked for) and
/// its embed URL. The others (`name`, `webUrl`, `datasetId`, `reportType`, …) are ignored.
#[derive(Deserialize)]
struct Report {
    id: Option<String>,
    #[serde(rename = "embedUrl")]
    embed_url: Option<String>,
}

/// A 200 answer of ours that cannot be used, classified like the probe's `unexpected`.
fn unusable(report: &str, message: &str) -> RefreshError {
    RefreshError::api(
        Reason::Unexpected,
        Some(200),
        None,
        None,
        format!("report {report}: {message}"),
        None,
    )
}

/// The embed URL of `report` from a 200 answer of Get Report (In Group).
pub fn parse_report(body: &[u8], report: &str) -> Result<String, RefreshError> {
    let answer: Report = serde_json::from_slice(body)
        .map_err(|_| unusable(report, "Get Report answered 200 without a report"))?;
    if answer
        .id
        .as_deref()
        .is_some_and(|id| !id.eq_ignore_ascii_case(report))
    {
        return Err(unusable(report, "Get Report answered with another report"));
    }
    let url = answer
        .embed_url
        .ok_or_else(|| unusable(report, "Get Report's answer has no embedUrl"))?;
    check_embed_url(&url).map_err(|why| unusable(report, &format!("embedUrl {why}")))?;
    Ok(url)
}

/// Whether `url` may be handed to a browser: https (http only for a loopback host), a host
/// without user information, at most [`MAX_EMBED_URL`] bytes, and only the characters of
/// RFC 3986 but `'` and `#`. The error says what is wrong, never the URL itself.
pub fn check_embed_url(url: &str) -> Result<(), &'static str> {
    if url.len() > MAX_EMBED_URL {
        return Err("is longer than 2048 bytes");
    }
    let allowed = |b: u8| b.is_ascii_alphanumeric() || b"-._~:/?[]@!$&()*+,;=%".contains(&b);
    if !url.bytes().all(allowed) {
        return Err("has characters other than printable ASCII allowed in a URL");
    }
    let (scheme, rest) = url.split_once("://").ok_or("is not an absolute URL")?;
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    if authority.is_empty() || authority.contains('@') {
        return Err("has no host, or user information before it");
    }
    match scheme {
        "https" => Ok(()),
        "http" if is_loopback_authority(authority) => Ok(()),
        _ => Err("is not https"),
    }
}

/// Reads the embed URL of `report` with the tenant's access token `entra`.
pub async fn read(
    client: &TokenClient,
    api_root: &str,
    workspace: Option<&str>,
    report: &str,
    entra: &AccessToken,
) -> Result<String, RefreshError> {
    let url = report_url(api_root, workspace, report);
    let secret = entra.secret.expose_secret();
    let named = |mut failure: RefreshError| {
        failure.message = format!("report {report}: {}", failure.message);
        failure
    };
    match client.api_get(&url, entra).await {
        Ok(answer) => {
            classify(&answer, &[secret]).map_err(named)?;
            parse_report(&answer.body, report).map_err(|mut failure| {
                failure.trace_id = answer.request_id.clone();
                failure
            })
        }
        Err(err) => Err(named(unanswered(&err.message, &[secret]))),
    }
}

#[cfg(test)]
mod tests {
    use super::super::embed::tests::tenant;
    use super::*;
    use crate::config::AccessLevel;

    const REPORT: &str = "5b218778-0000-4b8a-9c7c-000000000004";
    const OTHER: &str = "6c329889-0000-4b8a-9c7c-000000000007";
    const WORKSPACE: &str = "f089354e-0000-4e18-aea3-000000000005";
    const URL: &str = "https://app.powerbi.com/reportEmbed?reportId=5b218778-0000-4b8a-9c7c-000000000004&groupId=f089354e-0000-4e18-aea3-000000000005&w=2&config=eyJjbHVzdGVyVXJsIjoiaHR0cHM6Ly9XQUJJIn0%3d";
    const NOW: i64 = 2_000_000_000;
    const DAY: i64 = 24 * 60 * 60;

    fn embed() -> EmbedConfig {
        EmbedConfig {
            name: "sales".to_owned(),
            reports: vec![REPORT.to_owned(), OTHER.to_owned()],
            datasets: Vec::new(),
            target_workspaces: Vec::new(),
            access_level: AccessLevel::View,
            lifetime: None,
            xmla_read_only: false,
            identities: Vec::new(),
            datasource_identities: Vec::new(),
            workspace: Some(WORKSPACE.to_owned()),
            sinks: Vec::new(),
        }
    }

    #[test]
    fn the_workspace_chooses_get_report_in_group() {
        assert_eq!(
            report_url("https://api.powerbi.com", Some(WORKSPACE), REPORT),
            format!("https://api.powerbi.com/v1.0/myorg/groups/{WORKSPACE}/reports/{REPORT}")
        );
        assert_eq!(
            report_url("https://api.powerbi.com", None, REPORT),
            format!("https://api.powerbi.com/v1.0/myorg/reports/{REPORT}")
        );
    }

    #[test]
    fn a_report_answer_gives_its_embed_url() {
        let body = serde_json::json!({
            "@odata.context": "https://api.powerbi.com/v1.0/myorg/groups/x/$metadata#reports/$entity",
            "id": REPORT.to_ascii_uppercase(),
            "reportType": "PowerBIReport",
            "name": "SalesMarketing",
            "webUrl": format!("https://app.powerbi.com/groups/{WORKSPACE}/reports/{REPORT}"),
            "embedUrl": URL,
            "datasetId": "cfafbeb1-0000-4d0c-896e-000000000003",
            "users": [],
            "subscriptions": [],
        });
        assert_eq!(
            parse_report(body.to_string().as_bytes(), REPORT).expect("parsed"),
            URL
        );
        // The id is optional (a subset of the properties may come back), the URL is not.
        let without_id =
            serde_json::json!({ "embedUrl": "http://127.0.0.1:8080/reportEmbed?reportId=x" });
        assert!(parse_report(without_id.to_string().as_bytes(), REPORT).is_ok());
    }

    #[test]
    fn hostile_or_broken_answers_are_refused_as_unexpected() {
        let oversize = format!(
            "https://app.powerbi.com/reportEmbed?config={}",
            "A".repeat(MAX_EMBED_URL)
        );
        let cases: Vec<(String, &str)> = vec![
            ("not json".to_owned(), "without a report"),
            ("[]".to_owned(), "without a report"),
            (r#"{"id":42}"#.to_owned(), "without a report"),
            (format!(r#"{{"id":"{REPORT}"}}"#), "no embedUrl"),
            (
                format!(r#"{{"id":"{OTHER}","embedUrl":"{URL}"}}"#),
                "another report",
            ),
            (
                format!(r#"{{"embedUrl":"{oversize}"}}"#),
                "longer than 2048",
            ),
        ];
        for (body, expected) in &cases {
            let failure = parse_report(body.as_bytes(), REPORT).expect_err(body);
            assert_eq!(failure.reason, Reason::Unexpected, "{body}");
            assert_eq!(failure.status, Some(200));
            assert!(
                failure.message.contains(expected),
                "{body}: {}",
                failure.message
            );
            assert!(failure.message.starts_with(&format!("report {REPORT}: ")));
        }
        for hostile in [
            "http://app.powerbi.com/reportEmbed?reportId=x",
            "http://10.0.0.1/reportEmbed",
            "javascript:alert(1)",
            "javascript://app.powerbi.com/%0aalert(1)",
            "ftp://app.powerbi.com/reportEmbed",
            "HTTPS://app.powerbi.com/reportEmbed",
            "https://user:pass@app.powerbi.com/reportEmbed",
            "https://evil.example@app.powerbi.com/",
            "https:///reportEmbed",
            "https://app.powerbi.com/report Embed",
            "https://app.powerbi.com/reportEmbed?a=\"><script>",
            "https://app.powerbi.com/reportEmbed?a='x'",
            "https://app.powerbi.com/reportEmbed#frag",
            "https://app.powerbi.com/reportEmbed\n",
            "https://app.powerbi.com/reportEmbed\u{0}",
            "https://app.powerbi.com/répertoire",
            "/reportEmbed?reportId=x",
            "",
        ] {
            assert!(check_embed_url(hostile).is_err(), "{hostile:?} accepted");
            let body = serde_json::json!({ "embedUrl": hostile }).to_string();
            let failure = parse_report(body.as_bytes(), REPORT).expect_err(hostile);
            assert_eq!(failure.reason, Reason::Unexpected);
            // The refusal never repeats what a hostile server sent.
            assert!(
                hostile.is_empty() || !failure.message.contains(hostile),
                "{}",
                failure.message
            );
        }
        for fine in [
            URL,
            "http://127.0.0.1:41234/reportEmbed?reportId=x&w=2",
            "http://localhost/reportEmbed",
            "http://[::1]:8080/reportEmbed",
            "https://app.powerbigov.us/reportEmbed?reportId=x",
        ] {
            assert_eq!(check_embed_url(fine), Ok(()), "{fine}");
        }
        let longest = format!("https://a/{}", "b".repeat(MAX_EMBED_URL - 10));
        assert_eq!(longest.len(), MAX_EMBED_URL);
        assert_eq!(check_embed_url(&longest), Ok(()));
        assert!(check_embed_url(&format!("{longest}c")).is_err());
    }

    #[test]
    fn urls_are_due_when_missing_or_a_day_old() {
        let embed = embed();
        let mut urls = EmbedUrls::default();
        assert_eq!(urls.due(&embed, NOW), [REPORT, OTHER]);
        urls.learned(REPORT, URL.to_owned(), NOW);
        assert_eq!(urls.due(&embed, NOW), [OTHER]);
        assert_eq!(urls.due(&embed, NOW + DAY - 1), [OTHER]);
        assert_eq!(urls.due(&embed, NOW + DAY), [REPORT, OTHER]);
        // A read time far ahead of the clock is not trusted.
        assert_eq!(urls.due(&embed, NOW - 3600), [REPORT, OTHER]);
        assert_eq!(urls.due(&embed, NOW - 60), [OTHER]);
    }

    #[test]
    fn the_document_holds_the_urls_known_and_the_oldest_read() {
        let embed = embed();
        let mut urls = EmbedUrls::default();
        let mut document = serde_json::json!({ "token": "x" });
        urls.add_to(&embed, &mut document);
        assert_eq!(document["embed_urls"], serde_json::json!({}));
        assert!(document["embed_urls_read_at"].is_null());
        assert_eq!(document["workspace"], WORKSPACE);
        urls.learned(OTHER, format!("{URL}&o=1"), NOW);
        urls.learned(REPORT, URL.to_owned(), NOW - 10);
        // A report no longer listed is not written.
        urls.learned(WORKSPACE, URL.to_owned(), NOW - 100);
        urls.add_to(&embed, &mut document);
        assert_eq!(
            document["embed_urls"],
            serde_json::json!({ REPORT: URL, OTHER: format!("{URL}&o=1") })
        );
        assert_eq!(document["embed_urls_read_at"], NOW - 10);
        assert_eq!(document["token"], "x");
    }

    #[test]
    fn the_status_counts_the_urls_and_names_the_missing_reports() {
        let embed = embed();
        let mut status = initial_status(&embed).expect("an embed with reports");
        assert_eq!((status.count, status.missing.len()), (0, 2));
        let mut urls = EmbedUrls::default();
        urls.learned(REPORT, URL.to_owned(), NOW);
        let failure = unusable(OTHER, "x");
        urls.record(&embed, &mut status, Some(failure));
        assert_eq!(status.count, 1);
        assert_eq!(status.missing, [OTHER]);
        assert_eq!(status.read_at, Some(NOW));
        assert!(status.last_error.is_some());
        let mut datasets_only = embed.clone();
        datasets_only.reports.clear();
        assert!(initial_status(&datasets_only).is_none());
    }

    #[test]
    fn a_warm_start_takes_fresh_urls_of_the_same_embed_and_workspace() {
        let (tenant, embed) = (tenant(), embed());
        let mut urls = EmbedUrls::default();
        urls.learned(REPORT, URL.to_owned(), NOW - 3600);
        urls.learned(OTHER, URL.to_owned(), NOW - 60);
        let mut document = serde_json::json!({ "tenant": "contoso", "embed": "sales" });
        urls.add_to(&embed, &mut document);
        let bytes = document.to_string();
        let back = parse_stored(bytes.as_bytes(), &tenant, &embed, NOW);
        // Both URLs, with the oldest read time: they are read again together.
        assert_eq!(back.url(REPORT), Some(URL));
        assert_eq!(back.url(OTHER), Some(URL));
        assert_eq!(back.due(&embed, NOW), Vec::<&str>::new());
        assert_eq!(back.due(&embed, NOW - 3600 + DAY), [REPORT, OTHER]);
        // A day later, none.
        assert_eq!(
            parse_stored(bytes.as_bytes(), &tenant, &embed, NOW - 3600 + DAY),
            EmbedUrls::default()
        );
        // Another workspace, embed or tenant: none.
        let mut moved = embed.clone();
        moved.workspace = None;
        assert_eq!(
            parse_stored(bytes.as_bytes(), &tenant, &moved, NOW),
            EmbedUrls::default()
        );
        let mut renamed = embed.clone();
        renamed.name = "finance".to_owned();
        assert_eq!(
            parse_stored(bytes.as_bytes(), &tenant, &renamed, NOW),
            EmbedUrls::default()
        );
        let mut other_tenant = tenant.clone();
        other_tenant.name = "fabrikam".to_owned();
        assert_eq!(
            parse_stored(bytes.as_bytes(), &other_tenant, &embed, NOW),
            EmbedUrls::default()
        );
        // A report dropped from the embed: the others' URLs stay.
        let mut fewer = embed.clone();
        fewer.reports = vec![OTHER.to_owned()];
        let back = parse_stored(bytes.as_bytes(), &tenant, &fewer, NOW);
        assert_eq!((back.url(REPORT), back.url(OTHER)), (None, Some(URL)));
    }

    #[test]
    fn a_stored_document_is_hostile_input_too() {
        let (tenant, embed) = (tenant(), embed());
        for hostile in [
            serde_json::json!({ "tenant": "contoso", "embed": "sales", "workspace": WORKSPACE,
                "embed_urls": { REPORT: "javascript:alert(1)", OTHER: URL },
                "embed_urls_read_at": NOW }),
            serde_json::json!({ "tenant": "contoso", "embed": "sales", "workspace": WORKSPACE,
                "embed_urls": { REPORT: URL }, "embed_urls_read_at": i64::MIN }),
            serde_json::json!({ "tenant": "contoso", "embed": "sales", "workspace": WORKSPACE,
                "embed_urls": { REPORT: URL }, "embed_urls_read_at": i64::MAX }),
            serde_json::json!({ "tenant": "contoso", "embed": "sales", "workspace": WORKSPACE,
                "embed_urls": { REPORT: 7 }, "embed_urls_read_at": NOW }),
            serde_json::json!({ "tenant": "contoso", "embed": "sales", "workspace": WORKSPACE,
                "embed_urls": [URL], "embed_urls_read_at": NOW }),
        ] {
            let back = parse_stored(hostile.to_string().as_bytes(), &tenant, &embed, NOW);
            assert_eq!(back.url(REPORT), None, "{hostile}");
        }
        assert_eq!(
            parse_stored(b"\xff\xfe", &tenant, &embed, NOW),
            EmbedUrls::default()
        );
    }
}
