//! Prometheus metrics. The names are a contract for dashboards and alerts (see docs/monitoring.md).
//!
//! Per-tenant series are written straight from the status registry at scrape time: time to
//! expiry is computed at that instant (nothing ticks), a tenant that left the configuration is
//! simply not there any more, and no per-tenant metric objects live between scrapes. That matters
//! at ten thousand tenants, where a metric object per tenant and series would cost tens of
//! megabytes. Fleet-wide metrics (latency histogram, reloads, build info, `process_*`) use the
//! `prometheus` crate; the latency histogram has no tenant label, so ten thousand tenants cost one
//! histogram. Those registered families live in `families.rs`, one group per concern; this file
//! owns the registry, the scrape and the per-tenant rows.
//!
//! # Per-tenant series and aggregates
//!
//! `[server] per_tenant_metrics` chooses which tenants get per-tenant series: `all`, only those
//! that [need attention](needs_attention) (`unhealthy`), or `none`. Whatever the mode, every
//! scrape carries the fleet-wide aggregates, so dashboards and the alerts' fallbacks can rely on
//! them: tenants by state, histograms of token and credential time to expiry (no tenant label),
//! and attempts by result and failures by reason summed over all tenants. Those counters are
//! counted where attempts end (the [`Observer`]), not summed from the statuses, so they keep
//! their count when a tenant leaves the configuration.
//!
//! # Rendering
//!
//! A scrape makes one pass over the registry ([`status::Registry::visit`], which locks the name
//! map a chunk of tenants at a time). Under each tenant's lock, held for a copy of a few numbers,
//! it adds the tenant to the aggregates and, when the mode shows the tenant, copies what the
//! families need into a `Row`, and the name into one shared buffer: a contiguous snapshot, two
//! allocations for the whole fleet and none per tenant. The families are then written from the
//! rows straight into the output, one family after the other as the text format requires: the
//! status is not locked again, nor the registry walked nine times (which, chasing every tenant's
//! status through the heap, took twice as long at ten thousand tenants). A tenant's refreshes
//! never wait for more than its own copy. `/metrics` renders on a thread of its own
//! ([`crate::http::Renderer`]), so a large fleet's scrape never holds up a runtime worker either.

mod families;

use prometheus::{Encoder, IntGaugeVec, Opts, Registry, TextEncoder};
use std::fmt::{Display, Write as _};
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use crate::config::PerTenantMetrics;
use crate::credential::key_vault::{KeyVaultObserver, KeyVaultReason};
use crate::credential::{CredentialExpiry, CredentialKind};
use crate::error::Reason;
use crate::fleet::Kind;
use crate::refresh::Observer;
use crate::schedule::system_to_unix_f64;
use crate::status::{self, TenantState, TenantStatus};
use families::{DaemonMetrics, FleetMetrics, Outcomes, ProbeMetrics, TokenMetrics, registered};

/// Fleet-wide metrics; per-tenant ones and the aggregates over tenants are rendered from the
/// status registry.
#[derive(Debug)]
pub struct Metrics {
    /// Our own registry (not the process-global default), so tests can run several daemons.
    registry: Registry,
    /// Tenants per state, refreshed at every scrape.
    tenants: IntGaugeVec,
    /// The daemon's own health: reloads and panicked tasks.
    daemon: DaemonMetrics,
    /// Token requests and attempts, all tenants.
    token: TokenMetrics,
    /// Fleet mode's traffic between replicas.
    fleet: FleetMetrics,
    /// Embed token refreshes of all tenants, by result and by reason (in the order of
    /// [`Reason::EMBED`]).
    embeds: Outcomes<{ Reason::EMBED.len() }>,
    /// Access probes (Power BI or Fabric API), all tenants.
    probe: ProbeMetrics,
    /// Reads of reports' embed URLs of all tenants, by result and by reason (in the order of
    /// [`Reason::API`]).
    embed_urls: Outcomes<{ Reason::API.len() }>,
    /// `powerbi_tokend_key_vault_reads_total{identity,result}`: reads of Azure Key Vault by
    /// identity (a configured name) and result (`success` or a [`KeyVaultReason`]).
    key_vault_reads: prometheus::IntCounterVec,
    /// `powerbi_tokend_per_tenant_metrics{mode}`: 1 on the mode in effect, 0 on the others, so an
    /// alert can tell "no tenant has a problem" from "no tenant is named".
    per_tenant_mode: IntGaugeVec,
    /// The mode in effect, as its index in [`PerTenantMetrics::ALL`]; a reload swaps it between
    /// scrapes.
    per_tenant: AtomicU8,
    /// The size of the last scrape: the next one reserves it up front, so a large fleet's text is
    /// not copied over and over while it grows.
    last_size: AtomicUsize,
    /// The number of rows of the last scrape, reserved up front for the same reason.
    last_rows: AtomicUsize,
}

/// Upper bounds of the time-to-expiry histogram over tenants, each with its `le` text. Tokens
/// live 60–90 minutes (some up to a day) and are refreshed at half their life; 0 holds the expired
/// ones and 600 is `PowerBITokendTokenExpiringSoon`'s threshold.
///
/// The `le` text is what Prometheus 3 turns any `le` into when it ingests a histogram (Go's
/// shortest float format, `.0` added to integers), so the rules' exact `le="600.0"` matchers mean
/// the same on Prometheus 2, which keeps the text as written, and on 3.
pub(crate) const TOKEN_BUCKETS: [(f64, &str); 11] = [
    (0.0, "0.0"),
    (60.0, "60.0"),
    (300.0, "300.0"),
    (600.0, "600.0"),
    (900.0, "900.0"),
    (1800.0, "1800.0"),
    (2700.0, "2700.0"),
    (3600.0, "3600.0"),
    (5400.0, "5400.0"),
    (7200.0, "7200.0"),
    (86400.0, "86400.0"),
];

/// Upper bounds of the credential time-to-expiry histogram: 0 (expired), a day, 7 days
/// (`PowerBITokendCredentialExpiringCritical`), 14, 30 (`PowerBITokendCredentialExpiring`), 60,
/// 90, 180 and 365 days. `le` text as for [`TOKEN_BUCKETS`]; a million and more is written with
/// an exponent there.
pub(crate) const CREDENTIAL_BUCKETS: [(f64, &str); 9] = [
    (0.0, "0.0"),
    (86_400.0, "86400.0"),
    (604_800.0, "604800.0"),
    (1_209_600.0, "1.2096e+06"),
    (2_592_000.0, "2.592e+06"),
    (5_184_000.0, "5.184e+06"),
    (7_776_000.0, "7.776e+06"),
    (15_552_000.0, "1.5552e+07"),
    (31_536_000.0, "3.1536e+07"),
];

/// How far ahead a credential's expiry makes its tenant need attention: the warning threshold of
/// `PowerBITokendCredentialExpiring`.
pub(crate) const CREDENTIAL_ATTENTION: Duration = Duration::from_secs(30 * 86_400);

impl Metrics {
    /// Creates and registers the fleet-wide metrics.
    ///
    /// # Errors
    /// Only on a programming error (duplicate or invalid metric names).
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let tenants = IntGaugeVec::new(
            Opts::new("powerbi_tokend_tenants", "Number of tenants in each state."),
            &["state"],
        )?;
        let per_tenant_mode = IntGaugeVec::new(
            Opts::new(
                "powerbi_tokend_per_tenant_metrics",
                "1 on the [server] per_tenant_metrics mode in effect (all, unhealthy, none), 0 on the others.",
            ),
            &["mode"],
        )?;
        let metrics = Metrics {
            tenants: registered(&registry, tenants)?,
            daemon: DaemonMetrics::register(&registry)?,
            token: TokenMetrics::register(&registry)?,
            fleet: FleetMetrics::register(&registry)?,
            embeds: Outcomes::register(
                &registry,
                Opts::new(
                    "powerbi_tokend_tenants_embed_refresh_total",
                    "Embed token refreshes of all tenants by result; keeps counting when a tenant leaves the configuration.",
                ),
                Opts::new(
                    "powerbi_tokend_tenants_embed_refresh_failures_total",
                    "Failed embed token refreshes of all tenants by reason; keeps counting when a tenant leaves the configuration.",
                ),
                Reason::EMBED,
            )?,
            probe: ProbeMetrics::register(&registry)?,
            embed_urls: Outcomes::register(
                &registry,
                Opts::new(
                    "powerbi_tokend_tenants_embed_url_reads_total",
                    "Reads of reports' embed URLs (Get Report) of all tenants by result; keeps counting when a tenant leaves the configuration.",
                ),
                Opts::new(
                    "powerbi_tokend_tenants_embed_url_read_failures_total",
                    "Failed reads of reports' embed URLs of all tenants by reason; keeps counting when a tenant leaves the configuration.",
                ),
                Reason::API,
            )?,
            key_vault_reads: registered(
                &registry,
                prometheus::IntCounterVec::new(
                    Opts::new(
                        "powerbi_tokend_key_vault_reads_total",
                        "Reads of Azure Key Vault (not of the daemon's cache) by Key Vault identity and result: success, or why the read failed.",
                    ),
                    &["identity", "result"],
                )?,
            )?,
            per_tenant_mode: registered(&registry, per_tenant_mode)?,
            registry,
            per_tenant: AtomicU8::new(0),
            last_size: AtomicUsize::new(0),
            last_rows: AtomicUsize::new(0),
        };
        metrics.set_per_tenant_metrics(PerTenantMetrics::default());
        Ok(metrics)
    }

    /// The counter of admin requests refused by basic auth, by reason, for the admin server's
    /// guard.
    pub fn admin_auth_failures(&self) -> prometheus::IntCounterVec {
        self.daemon.admin_auth_failures.clone()
    }

    /// Records a configuration reload.
    pub fn reload(&self, ok: bool) {
        let result = if ok { "success" } else { "failure" };
        self.daemon
            .config_reloads
            .with_label_values(&[result])
            .inc();
        self.daemon.last_reload_ok.set(i64::from(ok));
    }

    /// Chooses which tenants get per-tenant series, from the next scrape on.
    pub fn set_per_tenant_metrics(&self, mode: PerTenantMetrics) {
        for (index, each) in PerTenantMetrics::ALL.iter().enumerate() {
            let on = *each == mode;
            if on {
                // At most three modes: the index fits a u8.
                self.per_tenant.store(index as u8, Ordering::Relaxed);
            }
            self.per_tenant_mode
                .with_label_values(&[each.as_str()])
                .set(i64::from(on));
        }
    }

    /// The mode in effect.
    pub fn per_tenant_metrics(&self) -> PerTenantMetrics {
        let index = usize::from(self.per_tenant.load(Ordering::Relaxed));
        PerTenantMetrics::ALL
            .get(index)
            .copied()
            .unwrap_or_default()
    }

    /// Renders the text exposition: fleet-wide metrics, the aggregates over tenants, then the
    /// per-tenant families the mode asks for. Takes long at a large fleet (a few milliseconds
    /// per thousand tenants in mode `all`): the admin server calls it on a thread of its own.
    pub fn render(&self, tenants: &status::Registry) -> String {
        let now = SystemTime::now();
        let now_unix = system_to_unix_f64(now);
        let mode = self.per_tenant_metrics();
        let mut aggregates = Aggregates::default();
        let mut rows = Rows::with_capacity(match mode {
            PerTenantMetrics::All => self.last_rows.load(Ordering::Relaxed),
            PerTenantMetrics::Unhealthy | PerTenantMetrics::None => 0,
        });
        tenants.visit(|name, handle| {
            let status = status::lock(handle);
            let state = status.state(now);
            aggregates.add(&status, state, now_unix);
            let shown = match mode {
                PerTenantMetrics::All => true,
                PerTenantMetrics::Unhealthy => needs_attention(&status, state, now_unix),
                PerTenantMetrics::None => false,
            };
            if shown {
                rows.push(name, &status, state);
            }
        });
        if mode == PerTenantMetrics::All {
            self.last_rows.store(rows.rows.len(), Ordering::Relaxed);
        }
        for (state, count) in TenantState::ALL.iter().zip(aggregates.states) {
            self.tenants
                .with_label_values(&[state.as_str()])
                .set(i64::try_from(count).unwrap_or(i64::MAX));
        }
        let mut out = Vec::with_capacity(self.last_size.load(Ordering::Relaxed));
        // Encoding into a Vec cannot fail for I/O reasons; a failure would be an invalid metric,
        // which the tests rule out, so a missing fleet-wide section is an acceptable fallback.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        let mut text = String::from_utf8(out).unwrap_or_default();
        aggregates.write(&mut text);
        if mode != PerTenantMetrics::None {
            rows.write(&mut text, now_unix);
        }
        self.last_size.store(text.len(), Ordering::Relaxed);
        text
    }
}

/// Whether a tenant gets per-tenant series in mode `unhealthy`: whenever one of the shipped
/// alerts that name a tenant could fire for it, so those alerts keep naming it. That is when
///
/// * its state is anything but `healthy` (`pending`, `retrying`, `misconfigured`, `expired`:
///   `PowerBITokendTenantMisconfigured`), or
/// * it has consecutive failures (`PowerBITokendRefreshFailing`,
///   `PowerBITokendTokenExpiringSoon`), or
/// * it holds no token, or one that has expired at scrape time (`PowerBITokendTokenExpired`, which
///   does not ask why), or
/// * its credential expires within [`CREDENTIAL_ATTENTION`] (`PowerBITokendCredentialExpiring`
///   and `…Critical`).
///
/// A tenant that stops needing attention loses its series at the next scrape, which Prometheus
/// marks stale: its alerts resolve as they would on recovery in mode `all`.
pub(crate) fn needs_attention(status: &TenantStatus, state: TenantState, now_unix: f64) -> bool {
    state != TenantState::Healthy
        || status.token.consecutive_failures > 0
        || status
            .token
            .expires_on
            .is_none_or(|expires_on| expires_on as f64 <= now_unix)
        || status.credential_expiry.is_some_and(|expiry| {
            (expiry.expires_on as f64) - now_unix < CREDENTIAL_ATTENTION.as_secs_f64()
        })
}

/// A histogram of one scrape's values (not cumulative over time): counts per bucket of
/// `bounds`, the count above the last bound, and the sum.
#[derive(Clone, Copy)]
struct Distribution<const N: usize> {
    /// Values at or below each bound and above the previous one.
    counts: [u64; N],
    /// Values above the last bound (only in `+Inf`).
    above: u64,
    /// Sum of the values.
    sum: f64,
}

impl<const N: usize> Default for Distribution<N> {
    fn default() -> Self {
        Distribution {
            counts: [0; N],
            above: 0,
            sum: 0.0,
        }
    }
}

impl<const N: usize> Distribution<N> {
    fn observe(&mut self, bounds: &[(f64, &str); N], value: f64) {
        match bounds.iter().position(|(bound, _)| value <= *bound) {
            Some(index) => self.counts[index] += 1,
            None => self.above += 1,
        }
        self.sum += value;
    }

    /// The `_bucket`, `_sum` and `_count` lines under one `label="value"`.
    fn write(&self, out: &mut String, name: &str, label: (&str, &str), bounds: &[(f64, &str); N]) {
        let mut cumulative = 0;
        for ((_, le), count) in bounds.iter().zip(self.counts) {
            cumulative += count;
            write_bucket(out, name, label, le, cumulative);
        }
        cumulative += self.above;
        write_bucket(out, name, label, "+Inf", cumulative);
        out.push_str(name);
        out.push_str("_sum");
        sample(out, "", &[label], self.sum);
        out.push_str(name);
        out.push_str("_count");
        sample(out, "", &[label], cumulative);
    }
}

fn write_bucket(out: &mut String, name: &str, label: (&str, &str), le: &str, count: u64) {
    out.push_str(name);
    out.push_str("_bucket");
    sample(out, "", &[label, ("le", le)], count);
}

/// What one scrape adds up over all tenants.
#[derive(Default)]
struct Aggregates {
    /// Tenants per state, indexed like [`TenantState::ALL`].
    states: [u64; TenantState::ALL.len()],
    /// Time to expiry of the tenants holding a token, per state (indexed like
    /// [`TenantState::ALL`]).
    token_expiry: [Distribution<{ TOKEN_BUCKETS.len() }>; TenantState::ALL.len()],
    /// Time to expiry of the credentials with a known expiry, per kind (indexed like
    /// [`CredentialKind::ALL`]).
    credential_expiry: [Distribution<{ CREDENTIAL_BUCKETS.len() }>; CredentialKind::ALL.len()],
}

impl Aggregates {
    fn add(&mut self, status: &TenantStatus, state: TenantState, now_unix: f64) {
        let index = TenantState::ALL
            .iter()
            .position(|s| *s == state)
            .unwrap_or_default();
        self.states[index] += 1;
        if let Some(expires_on) = status.token.expires_on {
            self.token_expiry[index].observe(&TOKEN_BUCKETS, expires_on as f64 - now_unix);
        }
        if let Some(expiry) = status.credential_expiry {
            self.credential_expiry[expiry.kind.index()]
                .observe(&CREDENTIAL_BUCKETS, expiry.expires_on as f64 - now_unix);
        }
    }

    /// The two histograms. The state gauge is in the `prometheus` registry; the counters by
    /// result and reason are counted as attempts end.
    fn write(&self, out: &mut String) {
        const TOKEN: &str = "powerbi_tokend_tenants_token_time_to_expiry_seconds";
        const CREDENTIAL: &str = "powerbi_tokend_tenants_credential_time_to_expiry_seconds";
        let _ = writeln!(
            out,
            "# HELP {TOKEN} Seconds until the tenants' tokens expire, at scrape time, by tenant state; tenants without a token are not counted."
        );
        let _ = writeln!(out, "# TYPE {TOKEN} histogram");
        for (state, distribution) in TenantState::ALL.iter().zip(&self.token_expiry) {
            distribution.write(out, TOKEN, ("state", state.as_str()), &TOKEN_BUCKETS);
        }
        let _ = writeln!(
            out,
            "# HELP {CREDENTIAL} Seconds until the tenants' credentials expire (certificate notAfter, client_secret_expires), at scrape time; credentials without a known expiry are not counted."
        );
        let _ = writeln!(out, "# TYPE {CREDENTIAL} histogram");
        // Every kind, at zero when unused, so the series do not come and go.
        for (kind, distribution) in CredentialKind::ALL.iter().zip(&self.credential_expiry) {
            distribution.write(
                out,
                CREDENTIAL,
                ("kind", kind.as_str()),
                &CREDENTIAL_BUCKETS,
            );
        }
    }
}

/// What the per-tenant families show of one tenant, copied under its lock: plain numbers, so
/// the families are written from a consistent snapshot without locking anything again.
#[derive(Clone, Copy)]
struct Row {
    /// Where the tenant's name is in [`Rows::names`]: start and end.
    name: (usize, usize),
    /// The state at the scrape.
    state: TenantState,
    /// Unix seconds the token expires.
    expires_on: Option<i64>,
    /// Unix time of the next planned attempt.
    next_refresh: Option<f64>,
    /// Unix time of the last success.
    last_success: Option<f64>,
    /// Failures since the last success.
    consecutive_failures: u32,
    /// When the credential expires, and its kind.
    credential_expiry: Option<CredentialExpiry>,
    /// Successful attempts.
    successes: u64,
    /// Failed attempts.
    failures: u64,
    /// Failed attempts by reason, in the order of [`Reason::TOKEN`].
    failures_by_reason: [u64; Reason::TOKEN.len()],
    /// The access probe: Unix time of the last, whether it passed, failures by reason
    /// (in the order of [`Reason::API`]); `None` for tenants that have not probed.
    probe: Option<(f64, bool, [u64; Reason::API.len()])>,
}

/// One embed token of a tenant shown, copied like [`Row`].
#[derive(Clone, Copy)]
struct EmbedRow {
    /// Where the tenant's name is in [`Rows::names`].
    tenant: (usize, usize),
    /// Where the embed's name is in [`Rows::names`].
    embed: (usize, usize),
    /// Unix seconds the embed token expires.
    expires_on: Option<i64>,
    /// Embed tokens made and written.
    successes: u64,
    /// Failures by reason (in the order of [`Reason::EMBED`]).
    failures: [u64; Reason::EMBED.len()],
    /// Reports of the embed without an embed URL; `None` for an embed without reports.
    urls_missing: Option<usize>,
}

/// The tenants one scrape shows, in name order: their rows, and all their names in one buffer.
struct Rows {
    /// Every name, one after the other.
    names: String,
    /// One row per tenant.
    rows: Vec<Row>,
    /// One row per embed token of the tenants shown.
    embeds: Vec<EmbedRow>,
}

impl Rows {
    /// Room for `tenants` rows (and names of about 16 bytes), so a large fleet's snapshot is not
    /// copied while it grows.
    fn with_capacity(tenants: usize) -> Self {
        Rows {
            names: String::with_capacity(tenants.saturating_mul(16)),
            rows: Vec::with_capacity(tenants),
            embeds: Vec::new(),
        }
    }

    fn push(&mut self, name: &str, status: &TenantStatus, state: TenantState) {
        let start = self.names.len();
        self.names.push_str(name);
        // The tenant's name ends here: its embeds' names follow it in the buffer, so the end
        // is taken now, before they are pushed, and the row and the embed rows share it.
        let tenant = (start, self.names.len());
        for embed in &status.embeds {
            let embed_start = self.names.len();
            self.names.push_str(&embed.name);
            self.embeds.push(EmbedRow {
                tenant,
                embed: (embed_start, self.names.len()),
                expires_on: embed.token.expires_on,
                successes: embed.token.successes,
                failures: Reason::counts_in(&embed.token.failures_by_reason, &Reason::EMBED),
                urls_missing: embed.urls.as_ref().map(|urls| urls.missing.len()),
            });
        }
        self.rows.push(Row {
            name: tenant,
            state,
            expires_on: status.token.expires_on,
            next_refresh: status.token.next_refresh.map(system_to_unix_f64),
            last_success: status.token.last_success.map(system_to_unix_f64),
            consecutive_failures: status.token.consecutive_failures,
            credential_expiry: status.credential_expiry,
            successes: status.token.successes,
            failures: status.token.failures,
            failures_by_reason: Reason::counts_in(&status.token.failures_by_reason, &Reason::TOKEN),
            probe: status.api_probe.as_ref().map(|probe| {
                (
                    system_to_unix_f64(probe.last),
                    probe.failure.is_none(),
                    Reason::counts_in(&probe.failures_by_reason, &Reason::API),
                )
            }),
        });
    }

    /// Every per-tenant family: HELP and TYPE, then each row's samples.
    fn write(&self, out: &mut String, now_unix: f64) {
        for family in &FAMILIES {
            let _ = writeln!(out, "# HELP {} {}", family.name, family.help);
            let _ = writeln!(out, "# TYPE {} {}", family.name, family.kind);
            for row in &self.rows {
                let tenant = self.names.get(row.name.0..row.name.1).unwrap_or_default();
                (family.samples)(out, family.name, tenant, row, now_unix);
            }
        }
        self.write_embeds(out);
    }

    /// The embed token families: expiry, attempts by result, failures by reason, reports
    /// without an embed URL.
    fn write_embeds(&self, out: &mut String) {
        let name_of = |range: (usize, usize)| self.names.get(range.0..range.1).unwrap_or_default();
        let families: [(&str, &str, &str); 4] = [
            (
                "powerbi_tokend_embed_token_expiry_timestamp_seconds",
                "gauge",
                "Unix time the embed token in the sinks expires.",
            ),
            (
                "powerbi_tokend_embed_refresh_total",
                "counter",
                "Embed token refreshes by result.",
            ),
            (
                "powerbi_tokend_embed_refresh_failures_total",
                "counter",
                "Failed embed token refreshes by reason.",
            ),
            (
                "powerbi_tokend_embed_urls_missing",
                "gauge",
                "Reports of the embed whose embed URL is not in its document (not read yet, or the last read failed); absent for an embed without reports.",
            ),
        ];
        for (index, (family, kind, help)) in families.iter().enumerate() {
            let _ = writeln!(out, "# HELP {family} {help}");
            let _ = writeln!(out, "# TYPE {family} {kind}");
            for row in &self.embeds {
                let (tenant, embed) = (name_of(row.tenant), name_of(row.embed));
                match index {
                    0 => {
                        if let Some(expires_on) = row.expires_on {
                            sample(
                                out,
                                family,
                                &[("embed", embed), ("tenant", tenant)],
                                expires_on,
                            );
                        }
                    }
                    1 => {
                        let failed: u64 = row.failures.iter().sum();
                        for (result, count) in [("failure", failed), ("success", row.successes)] {
                            let labels = [("embed", embed), ("result", result), ("tenant", tenant)];
                            sample(out, family, &labels, count);
                        }
                    }
                    3 => {
                        if let Some(missing) = row.urls_missing {
                            let labels = [("embed", embed), ("tenant", tenant)];
                            sample(out, family, &labels, missing);
                        }
                    }
                    _ => {
                        for (reason, count) in Reason::EMBED.iter().zip(row.failures) {
                            if count > 0 {
                                let labels = [
                                    ("embed", embed),
                                    ("reason", reason.as_str()),
                                    ("tenant", tenant),
                                ];
                                sample(out, family, &labels, count);
                            }
                        }
                    }
                }
            }
        }
    }
}

/// One per-tenant family: HELP, TYPE, then one or more samples per tenant.
struct Family {
    name: &'static str,
    kind: &'static str,
    help: &'static str,
    /// Appends the tenant's samples (`name{labels} value` lines) to the output, given the Unix
    /// time of the scrape.
    samples: fn(&mut String, &'static str, &str, &Row, f64),
}

/// Writes one sample line; `name` may be empty when the caller has written it already (a
/// histogram's `_bucket` suffix). Tenant names are `[A-Za-z0-9._-]+` and the other label values
/// come from fixed sets, so no label value needs escaping.
/// Integers are written as integers: faster than through `f64`, and exact beyond 2^53.
fn sample(out: &mut String, name: &str, labels: &[(&str, &str)], value: impl Display) {
    out.push_str(name);
    out.push('{');
    for (index, (key, val)) in labels.iter().enumerate() {
        if index > 0 {
            out.push(',');
        }
        out.push_str(key);
        out.push_str("=\"");
        out.push_str(val);
        out.push('"');
    }
    let _ = writeln!(out, "}} {value}");
}
/// A `{tenant="…"}` sample, or nothing when the value is not known yet (absent, not zero).
fn per_tenant(out: &mut String, name: &str, tenant: &str, value: Option<impl Display>) {
    if let Some(value) = value {
        sample(out, name, &[("tenant", tenant)], value);
    }
}

const FAMILIES: [Family; 12] = [
    Family {
        name: "powerbi_tokend_token_expiry_timestamp_seconds",
        kind: "gauge",
        help: "Unix time the tenant's current token expires.",
        samples: |out, name, tenant, row, _| {
            per_tenant(out, name, tenant, row.expires_on);
        },
    },
    Family {
        name: "powerbi_tokend_token_time_to_expiry_seconds",
        kind: "gauge",
        help: "Seconds until the tenant's current token expires, at scrape time; negative once expired.",
        samples: |out, name, tenant, row, now| {
            let left = row.expires_on.map(|e| e as f64 - now);
            per_tenant(out, name, tenant, left);
        },
    },
    Family {
        name: "powerbi_tokend_next_refresh_timestamp_seconds",
        kind: "gauge",
        help: "Unix time of the tenant's next planned refresh attempt.",
        samples: |out, name, tenant, row, _| {
            per_tenant(out, name, tenant, row.next_refresh);
        },
    },
    Family {
        name: "powerbi_tokend_last_success_timestamp_seconds",
        kind: "gauge",
        help: "Unix time of the tenant's last successful refresh, every sink written.",
        samples: |out, name, tenant, row, _| {
            per_tenant(out, name, tenant, row.last_success);
        },
    },
    Family {
        name: "powerbi_tokend_consecutive_failures",
        kind: "gauge",
        help: "Failed refresh attempts since the tenant's last success.",
        samples: |out, name, tenant, row, _| {
            sample(out, name, &[("tenant", tenant)], row.consecutive_failures);
        },
    },
    Family {
        name: "powerbi_tokend_tenant_state",
        kind: "gauge",
        help: "1 for the tenant's current state (pending, healthy, retrying, misconfigured, expired, api_denied, api_failing).",
        samples: |out, name, tenant, row, _| {
            let state = row.state.as_str();
            sample(out, name, &[("state", state), ("tenant", tenant)], 1);
        },
    },
    Family {
        name: "powerbi_tokend_credential_expiry_timestamp_seconds",
        kind: "gauge",
        help: "Unix time the tenant's credential expires: certificate notAfter or client_secret_expires.",
        samples: |out, name, tenant, row, _| {
            if let Some(CredentialExpiry { expires_on, kind }) = row.credential_expiry {
                let kind = kind.as_str();
                sample(out, name, &[("kind", kind), ("tenant", tenant)], expires_on);
            }
        },
    },
    Family {
        name: "powerbi_tokend_refresh_total",
        kind: "counter",
        help: "Refresh attempts by result.",
        samples: |out, name, tenant, row, _| {
            sample(
                out,
                name,
                &[("result", "failure"), ("tenant", tenant)],
                row.failures,
            );
            sample(
                out,
                name,
                &[("result", "success"), ("tenant", tenant)],
                row.successes,
            );
        },
    },
    Family {
        name: "powerbi_tokend_refresh_failures_total",
        kind: "counter",
        help: "Failed refresh attempts by reason.",
        samples: |out, name, tenant, row, _| {
            for (reason, count) in Reason::TOKEN.iter().zip(row.failures_by_reason) {
                if count > 0 {
                    let labels = [("reason", reason.as_str()), ("tenant", tenant)];
                    sample(out, name, &labels, count);
                }
            }
        },
    },
    Family {
        name: "powerbi_tokend_api_probe_success",
        kind: "gauge",
        help: "1 if the last access probe (Power BI or Fabric API) with the tenant's token succeeded, else 0; absent for tenants without a probe.",
        samples: |out, name, tenant, row, _| {
            per_tenant(out, name, tenant, row.probe.map(|(_, ok, _)| u8::from(ok)));
        },
    },
    Family {
        name: "powerbi_tokend_api_probe_last_timestamp_seconds",
        kind: "gauge",
        help: "Unix time of the tenant's last access probe (Power BI or Fabric API).",
        samples: |out, name, tenant, row, _| {
            per_tenant(out, name, tenant, row.probe.map(|(last, _, _)| last));
        },
    },
    Family {
        name: "powerbi_tokend_api_probe_failures_total",
        kind: "counter",
        help: "Failed access probes (Power BI or Fabric API) by reason.",
        samples: |out, name, tenant, row, _| {
            let Some((_, _, failures)) = row.probe else {
                return;
            };
            for (reason, count) in Reason::API.iter().zip(failures) {
                if count > 0 {
                    let labels = [("reason", reason.as_str()), ("tenant", tenant)];
                    sample(out, name, &labels, count);
                }
            }
        },
    },
];

impl Observer for Metrics {
    fn request_finished(&self, duration: Duration) {
        self.token.refresh_duration.observe(duration.as_secs_f64());
    }

    fn attempt_finished(&self, result: Result<(), Reason>) {
        self.token.attempts.record(result);
    }

    fn task_panicked(&self) {
        self.daemon.task_panics.inc();
    }

    fn fleet_job(&self, kind: Kind, adopted: bool) {
        let source = if adopted { "adopted" } else { "fetched" };
        self.fleet
            .tokens
            .with_label_values(&[kind.as_str(), source])
            .inc();
    }

    fn fleet_lease_busy(&self, kind: Kind) {
        self.fleet
            .lease_busy
            .with_label_values(&[kind.as_str()])
            .inc();
    }

    fn rate_limited(&self, waited: Duration) {
        self.token.rate_limit_wait.inc_by(waited.as_secs_f64());
    }

    fn embed_finished(&self, result: Result<(), Reason>) {
        self.embeds.record(result);
    }

    fn embed_url_read(&self, result: Result<(), Reason>) {
        self.embed_urls.record(result);
    }

    fn probe_finished(&self, result: Result<(), Reason>, duration: Option<Duration>) {
        if let Some(duration) = duration {
            self.probe.duration.observe(duration.as_secs_f64());
        }
        if let Err(reason) = result
            && let Some(index) = Reason::API.iter().position(|r| *r == reason)
        {
            self.probe.failures[index].inc();
        }
    }
}

/// Identities are configured names, and results a fixed set: the family stays bounded.
impl KeyVaultObserver for Metrics {
    fn key_vault_read(&self, identity: &str, result: Result<(), KeyVaultReason>) {
        let result = result.err().map_or("success", KeyVaultReason::as_str);
        self.key_vault_reads
            .with_label_values(&[identity, result])
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_tenant_families_follow_the_registry() {
        let registry = status::Registry::new();
        let metrics = Metrics::new().unwrap();
        let contoso = registry.insert("contoso");
        {
            let mut status = status::lock(&contoso);
            status.first_attempt_done = true;
            status.token.expires_on = Some(4_000_000_000);
            status.token.successes = 3;
            status.token.failures = 2;
            status.token.failures_by_reason[Reason::Throttled.index()] = 2;
            status.credential_expiry = Some(CredentialExpiry::certificate(1_803_859_200));
        }
        registry.insert("gone");
        let text = metrics.render(&registry);
        for line in [
            "powerbi_tokend_token_expiry_timestamp_seconds{tenant=\"contoso\"} 4000000000",
            "powerbi_tokend_refresh_total{result=\"success\",tenant=\"contoso\"} 3",
            "powerbi_tokend_refresh_total{result=\"failure\",tenant=\"contoso\"} 2",
            "powerbi_tokend_refresh_failures_total{reason=\"throttled\",tenant=\"contoso\"} 2",
            "powerbi_tokend_credential_expiry_timestamp_seconds{kind=\"certificate\",tenant=\"contoso\"} 1803859200",
            "powerbi_tokend_tenant_state{state=\"healthy\",tenant=\"contoso\"} 1",
            "powerbi_tokend_tenant_state{state=\"pending\",tenant=\"gone\"} 1",
            "powerbi_tokend_tenants{state=\"pending\"} 1",
            "# TYPE powerbi_tokend_refresh_total counter",
            "powerbi_tokend_task_panics_total 0",
        ] {
            assert!(text.contains(line), "{line} missing:\n{text}");
        }
        assert!(!text.contains("reason=\"network\",tenant="));
        registry.remove("gone");
        let text = metrics.render(&registry);
        assert!(!text.contains("tenant=\"gone\""), "{text}");
        assert!(text.contains("powerbi_tokend_tenants{state=\"pending\"} 0"));
    }

    #[test]
    fn a_tenant_with_embed_tokens_keeps_its_own_name_in_every_family() {
        let registry = status::Registry::new();
        // `sales` has a report without an embed URL; `finance` has only datasets, so no URLs.
        let embed = |name: &str| status::EmbedStatus {
            name: name.to_owned(),
            token: status::TokenStatus {
                expires_on: Some(4_000_000_000),
                successes: 1,
                ..Default::default()
            },
            urls: (name == "sales").then(|| {
                Box::new(status::EmbedUrlsStatus {
                    count: 1,
                    missing: vec!["6c329889-0000-4b8a-9c7c-000000000007".to_owned()],
                    ..Default::default()
                })
            }),
        };
        for (name, embeds) in [
            ("contoso", vec![embed("sales"), embed("finance")]),
            ("fabrikam", vec![embed("sales")]),
            ("northwind", Vec::new()),
        ] {
            let handle = registry.insert(name);
            let mut status = status::lock(&handle);
            status.first_attempt_done = true;
            status.token.expires_on = Some(4_000_000_000);
            status.embeds = embeds.into();
        }
        let text = Metrics::new().unwrap().render(&registry);
        let mut tenants = std::collections::BTreeSet::new();
        for line in text.lines().filter(|line| !line.starts_with('#')) {
            if let Some((_, rest)) = line.split_once("tenant=\"") {
                tenants.insert(rest.split('"').next().unwrap_or_default());
            }
        }
        assert_eq!(
            tenants,
            ["contoso", "fabrikam", "northwind"].into(),
            "{text}"
        );
        for line in [
            "powerbi_tokend_tenant_state{state=\"healthy\",tenant=\"contoso\"} 1",
            "powerbi_tokend_tenant_state{state=\"healthy\",tenant=\"fabrikam\"} 1",
            "powerbi_tokend_embed_token_expiry_timestamp_seconds{embed=\"finance\",tenant=\"contoso\"} 4000000000",
            "powerbi_tokend_embed_refresh_total{embed=\"sales\",result=\"success\",tenant=\"fabrikam\"} 1",
            "powerbi_tokend_embed_urls_missing{embed=\"sales\",tenant=\"contoso\"} 1",
        ] {
            assert!(text.contains(line), "{line} missing:\n{text}");
        }
        // No report id in any label; no URL gauge for an embed without reports.
        assert!(!text.contains("6c329889"), "{text}");
        assert!(!text.contains("powerbi_tokend_embed_urls_missing{embed=\"finance\""));
    }

    #[test]
    fn embed_url_reads_are_counted_by_result_and_reason_over_all_tenants() {
        let metrics = Metrics::new().unwrap();
        let text = metrics.render(&status::Registry::new());
        for line in [
            "powerbi_tokend_tenants_embed_url_reads_total{result=\"success\"} 0",
            "powerbi_tokend_tenants_embed_url_read_failures_total{reason=\"not_found\"} 0",
        ] {
            assert!(text.contains(line), "{line} missing:\n{text}");
        }
        metrics.embed_url_read(Ok(()));
        metrics.embed_url_read(Ok(()));
        metrics.embed_url_read(Err(Reason::NotFound));
        let text = metrics.render(&status::Registry::new());
        for line in [
            "powerbi_tokend_tenants_embed_url_reads_total{result=\"success\"} 2",
            "powerbi_tokend_tenants_embed_url_reads_total{result=\"failure\"} 1",
            "powerbi_tokend_tenants_embed_url_read_failures_total{reason=\"not_found\"} 1",
            "powerbi_tokend_tenants_embed_url_read_failures_total{reason=\"network\"} 0",
        ] {
            assert!(text.contains(line), "{line} missing:\n{text}");
        }
    }

    /// A fleet with one tenant of each kind: `contoso` healthy with nothing due; `northwind`
    /// misconfigured (three failures, no token); `fabrikam` healthy with a certificate that
    /// expires in ten days; `tailspin` healthy by its last attempt but holding an expired token
    /// (a late refresh); `woodgrove` pending.
    fn fleet(now: SystemTime) -> status::Registry {
        let now = system_to_unix_f64(now) as i64;
        let registry = status::Registry::new();
        let healthy = |name: &str, expires_on: i64, credential: Option<CredentialExpiry>| {
            let handle = registry.insert(name);
            let mut status = status::lock(&handle);
            status.first_attempt_done = true;
            status.token.expires_on = Some(expires_on);
            status.token.successes = 5;
            status.credential_expiry = credential;
        };
        healthy(
            "contoso",
            now + 3000,
            Some(CredentialExpiry::certificate(now + 365 * 86_400)),
        );
        healthy(
            "fabrikam",
            now + 3000,
            Some(CredentialExpiry::certificate(now + 10 * 86_400)),
        );
        healthy("tailspin", now - 30, None);
        {
            let handle = registry.insert("northwind");
            let mut status = status::lock(&handle);
            status.first_attempt_done = true;
            status.token.consecutive_failures = 3;
            status.token.failures = 3;
            status.token.failures_by_reason[Reason::InvalidClient.index()] = 3;
            status.token.last_error = Some(Box::new(crate::error::RefreshError::local(
                crate::error::ErrorClass::Permanent,
                Reason::InvalidClient,
                "rejected",
            )));
        }
        registry.insert("woodgrove");
        registry
    }

    /// Lines every mode has: the aggregates over tenants.
    const AGGREGATES: [&str; 12] = [
        "powerbi_tokend_tenants{state=\"healthy\"} 3",
        "powerbi_tokend_tenants{state=\"misconfigured\"} 1",
        "powerbi_tokend_tenants{state=\"pending\"} 1",
        "powerbi_tokend_tenants_token_time_to_expiry_seconds_bucket{state=\"healthy\",le=\"0.0\"} 1",
        "powerbi_tokend_tenants_token_time_to_expiry_seconds_bucket{state=\"healthy\",le=\"2700.0\"} 1",
        "powerbi_tokend_tenants_token_time_to_expiry_seconds_bucket{state=\"healthy\",le=\"3600.0\"} 3",
        "powerbi_tokend_tenants_token_time_to_expiry_seconds_count{state=\"healthy\"} 3",
        "powerbi_tokend_tenants_token_time_to_expiry_seconds_count{state=\"misconfigured\"} 0",
        "powerbi_tokend_tenants_credential_time_to_expiry_seconds_bucket{kind=\"certificate\",le=\"604800.0\"} 0",
        "powerbi_tokend_tenants_credential_time_to_expiry_seconds_bucket{kind=\"certificate\",le=\"1.2096e+06\"} 1",
        "powerbi_tokend_tenants_credential_time_to_expiry_seconds_count{kind=\"client_secret\"} 0",
        "powerbi_tokend_tenants_refresh_failures_total{reason=\"invalid_client\"} 2",
    ];

    fn render_in(mode: PerTenantMetrics) -> String {
        let registry = fleet(SystemTime::now());
        let metrics = Metrics::new().unwrap();
        metrics.set_per_tenant_metrics(mode);
        metrics.attempt_finished(Err(Reason::InvalidClient));
        metrics.attempt_finished(Err(Reason::InvalidClient));
        metrics.attempt_finished(Ok(()));
        let text = metrics.render(&registry);
        for line in AGGREGATES {
            assert!(text.contains(line), "{mode:?}: {line} missing:\n{text}");
        }
        for each in PerTenantMetrics::ALL {
            let on = i32::from(each == mode);
            let line = format!(
                "powerbi_tokend_per_tenant_metrics{{mode=\"{}\"}} {on}",
                each.as_str()
            );
            assert!(text.contains(&line), "{mode:?}: {line} missing");
        }
        text
    }

    #[test]
    fn mode_all_names_every_tenant() {
        let text = render_in(PerTenantMetrics::All);
        for tenant in ["contoso", "fabrikam", "tailspin", "northwind", "woodgrove"] {
            let line = format!("powerbi_tokend_consecutive_failures{{tenant=\"{tenant}\"}}");
            assert!(text.contains(&line), "{line} missing");
        }
    }

    #[test]
    fn mode_unhealthy_names_only_tenants_an_alert_could_name() {
        let text = render_in(PerTenantMetrics::Unhealthy);
        assert!(!text.contains("tenant=\"contoso\""), "{text}");
        for line in [
            "powerbi_tokend_consecutive_failures{tenant=\"northwind\"} 3",
            "powerbi_tokend_tenant_state{state=\"misconfigured\",tenant=\"northwind\"} 1",
            "powerbi_tokend_refresh_failures_total{reason=\"invalid_client\",tenant=\"northwind\"} 3",
            "powerbi_tokend_tenant_state{state=\"pending\",tenant=\"woodgrove\"} 1",
            "powerbi_tokend_credential_expiry_timestamp_seconds{kind=\"certificate\",tenant=\"fabrikam\"}",
            "powerbi_tokend_token_time_to_expiry_seconds{tenant=\"tailspin\"} -",
            // Every family of a tenant that needs attention, not only the one that made it so.
            "powerbi_tokend_refresh_total{result=\"success\",tenant=\"tailspin\"} 5",
            "# TYPE powerbi_tokend_consecutive_failures gauge",
        ] {
            assert!(text.contains(line), "{line} missing:\n{text}");
        }
    }

    #[test]
    fn mode_unhealthy_with_a_healthy_fleet_is_aggregates_only() {
        let registry = status::Registry::new();
        let now = system_to_unix_f64(SystemTime::now()) as i64;
        for i in 0..3000 {
            let handle = registry.insert(&format!("t{i}"));
            let mut status = status::lock(&handle);
            status.first_attempt_done = true;
            status.token.expires_on = Some(now + 3000);
        }
        let metrics = Metrics::new().unwrap();
        metrics.set_per_tenant_metrics(PerTenantMetrics::Unhealthy);
        let text = metrics.render(&registry);
        assert!(!text.contains("tenant="), "{text}");
        assert!(text.contains("powerbi_tokend_tenants{state=\"healthy\"} 3000"));
        // Headers stay, so the families are known even while no tenant needs them.
        assert!(text.contains("# HELP powerbi_tokend_consecutive_failures "));
        // Independent of the fleet: the aggregates alone (a 3,000-tenant page would be 1.6 MB).
        assert!(text.len() < 32 * 1024, "{} bytes", text.len());
    }

    #[test]
    fn mode_none_names_no_tenant() {
        let text = render_in(PerTenantMetrics::None);
        assert!(!text.contains("tenant="), "{text}");
        assert!(
            !text.contains("powerbi_tokend_consecutive_failures"),
            "{text}"
        );
    }

    #[test]
    fn a_mode_change_shows_at_the_next_render() {
        let registry = fleet(SystemTime::now());
        let metrics = Metrics::new().unwrap();
        assert_eq!(metrics.per_tenant_metrics(), PerTenantMetrics::All);
        assert!(metrics.render(&registry).contains("tenant=\"contoso\""));
        metrics.set_per_tenant_metrics(PerTenantMetrics::None);
        assert_eq!(metrics.per_tenant_metrics(), PerTenantMetrics::None);
        assert!(!metrics.render(&registry).contains("tenant="));
    }

    #[test]
    fn fleet_wide_counters_outlive_a_removed_tenant() {
        let metrics = Metrics::new().unwrap();
        let registry = status::Registry::new();
        registry.insert("contoso");
        metrics.attempt_finished(Err(Reason::Throttled));
        metrics.attempt_finished(Ok(()));
        registry.remove("contoso");
        let text = metrics.render(&registry);
        for line in [
            "powerbi_tokend_tenants_refresh_failures_total{reason=\"throttled\"} 1",
            "powerbi_tokend_tenants_refresh_failures_total{reason=\"network\"} 0",
            "powerbi_tokend_tenants_refresh_total{result=\"failure\"} 1",
            "powerbi_tokend_tenants_refresh_total{result=\"success\"} 1",
        ] {
            assert!(text.contains(line), "{line} missing:\n{text}");
        }
    }

    #[test]
    fn fleet_counters_are_by_kind_of_job_from_zero() {
        let metrics = Metrics::new().unwrap();
        metrics.fleet_job(Kind::Probe, true);
        metrics.fleet_job(Kind::Embed, false);
        metrics.fleet_lease_busy(Kind::Embed);
        // An adopted probe outcome counts its failure but adds no latency: no call was made.
        metrics.probe_finished(Err(Reason::NotAuthorized), None);
        let text = metrics.render(&status::Registry::new());
        for line in [
            "powerbi_tokend_fleet_tokens_total{kind=\"probe\",source=\"adopted\"} 1",
            "powerbi_tokend_fleet_tokens_total{kind=\"probe\",source=\"fetched\"} 0",
            "powerbi_tokend_fleet_tokens_total{kind=\"embed\",source=\"fetched\"} 1",
            "powerbi_tokend_fleet_tokens_total{kind=\"token\",source=\"adopted\"} 0",
            "powerbi_tokend_fleet_lease_busy_total{kind=\"embed\"} 1",
            "powerbi_tokend_fleet_lease_busy_total{kind=\"token\"} 0",
            "powerbi_tokend_tenants_api_probe_failures_total{reason=\"not_authorized\"} 1",
            "powerbi_tokend_api_probe_duration_seconds_count 0",
        ] {
            assert!(text.contains(line), "{line} missing:\n{text}");
        }
    }

    #[test]
    fn needs_attention_follows_the_alerts() {
        let now = SystemTime::now();
        let now_unix = system_to_unix_f64(now);
        let mut fresh = TenantStatus {
            first_attempt_done: true,
            ..TenantStatus::default()
        };
        fresh.token.expires_on = Some(now_unix as i64 + 3000);
        let attention =
            |status: &TenantStatus| needs_attention(status, status.state(now), now_unix);
        assert!(!attention(&fresh));
        // Pending.
        assert!(attention(&TenantStatus::default()));
        // Failures with the token still valid (RefreshFailing, ExpiringSoon).
        let mut failing = fresh.clone();
        failing.token.consecutive_failures = 1;
        assert!(attention(&failing));
        failing.token.last_error = Some(Box::new(crate::error::RefreshError::local(
            crate::error::ErrorClass::Transient,
            Reason::Network,
            "x",
        )));
        assert!(attention(&failing));
        // Healthy by its last attempt, without a token or with an expired one (TokenExpired).
        let mut late = fresh.clone();
        late.token.expires_on = Some(now_unix as i64);
        assert!(attention(&late));
        late.token.expires_on = None;
        assert!(attention(&late));
        // A credential within CredentialExpiring's 30 days, not one beyond them.
        let mut rotating = fresh.clone();
        rotating.credential_expiry = Some(CredentialExpiry::client_secret(
            now_unix as i64 + 29 * 86_400,
        ));
        assert!(attention(&rotating));
        rotating.credential_expiry = Some(CredentialExpiry::client_secret(
            now_unix as i64 + 31 * 86_400,
        ));
        assert!(!attention(&rotating));
    }

    /// Go's shortest float format as Prometheus 3 writes `le`: an exponent from a million up.
    fn prometheus_le(value: f64) -> String {
        if value == 0.0 {
            return "0.0".to_owned();
        }
        let exponent = value.abs().log10().floor() as i32;
        if !(-4..6).contains(&exponent) {
            let text = format!("{value:e}");
            let (mantissa, exponent) = text.split_once('e').unwrap();
            let exponent: i32 = exponent.parse().unwrap();
            let sign = if exponent < 0 { '-' } else { '+' };
            return format!("{mantissa}e{sign}{:02}", exponent.abs());
        }
        let text = format!("{value}");
        if text.contains('.') {
            text
        } else {
            format!("{text}.0")
        }
    }

    #[test]
    fn le_texts_are_what_prometheus_3_stores() {
        for (bound, le) in TOKEN_BUCKETS.iter().chain(&CREDENTIAL_BUCKETS) {
            assert_eq!(prometheus_le(*bound), *le);
            assert_eq!(le.parse::<f64>().unwrap(), *bound);
        }
        assert_eq!(prometheus_le(2_592_000.0), "2.592e+06");
        assert_eq!(prometheus_le(600.0), "600.0");
    }

    #[test]
    fn hardening_counts_and_sums_survive_extreme_expiries() {
        let registry = status::Registry::new();
        for (name, expires_on) in [("past", i64::MIN), ("future", i64::MAX)] {
            let handle = registry.insert(name);
            let mut status = status::lock(&handle);
            status.first_attempt_done = true;
            status.token.expires_on = Some(expires_on);
            status.credential_expiry = Some(CredentialExpiry::certificate(expires_on));
        }
        let text = Metrics::new().unwrap().render(&registry);
        assert!(text.contains(
            "powerbi_tokend_tenants_token_time_to_expiry_seconds_bucket{state=\"healthy\",le=\"0.0\"} 1"
        ));
        assert!(text.contains(
            "powerbi_tokend_tenants_token_time_to_expiry_seconds_count{state=\"healthy\"} 2"
        ));
    }
}
