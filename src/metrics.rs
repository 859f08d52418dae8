//! Prometheus metrics. The names are a contract for dashboards and alerts (see README).
//!
//! Per-tenant series are written straight from the status registry at scrape time: time to
//! expiry is computed at that instant (nothing ticks), a tenant that left the configuration is
//! simply not there any more, and no per-tenant metric objects live between scrapes. That matters
//! at ten thousand tenants, where a metric object per tenant and series would cost tens of
//! megabytes. Fleet-wide metrics (latency histogram, reloads, build info, `process_*`) use the
//! `prometheus` crate; the latency histogram has no tenant label, so ten thousand tenants cost one
//! histogram.

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};
use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

use crate::error::Reason;
use crate::schedule::system_to_unix_f64;
use crate::status::{self, TenantState, TenantStatus};
use crate::tenant::Observer;

/// Fleet-wide metrics; per-tenant ones are rendered from the status registry.
#[derive(Debug)]
pub struct Metrics {
    /// Our own registry (not the process-global default), so tests can run several daemons.
    registry: Registry,
    /// Tenants per state, refreshed at every scrape.
    tenants: IntGaugeVec,
    /// Token endpoint latency.
    refresh_duration: Histogram,
    /// Reloads by result.
    config_reloads: IntCounterVec,
    /// Whether the last reload succeeded.
    last_reload_ok: IntGauge,
    /// Tenant tasks that panicked and were restarted: always a bug. Fleet-wide (the tenant is in
    /// the ERROR log line and in `/status`), so it costs one series, not one per tenant.
    task_panics: IntCounter,
    /// Fleet mode: tokens this replica fetched vs adopted from another replica.
    fleet_tokens: IntCounterVec,
    /// Fleet mode: planned refreshes that found another replica holding the lease.
    fleet_lease_busy: IntCounter,
    /// Seconds token requests waited for `max_requests_per_second`.
    rate_limit_wait: prometheus::Counter,
}

/// Latency buckets for the token endpoint: Entra answers in 50–500 ms; timeouts are 30 s.
const DURATION_BUCKETS: [f64; 12] = [
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0,
];

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
        let refresh_duration = Histogram::with_opts(
            HistogramOpts::new(
                "powerbi_tokend_refresh_duration_seconds",
                "Token endpoint request latency, all tenants.",
            )
            .buckets(DURATION_BUCKETS.to_vec()),
        )?;
        let config_reloads = IntCounterVec::new(
            Opts::new(
                "powerbi_tokend_config_reloads_total",
                "Configuration reloads (SIGHUP or file change) by result.",
            ),
            &["result"],
        )?;
        let last_reload_ok = IntGauge::new(
            "powerbi_tokend_config_last_reload_successful",
            "1 if the last configuration reload succeeded (or none was attempted), else 0.",
        )?;
        let build_info = IntGaugeVec::new(
            Opts::new(
                "powerbi_tokend_build_info",
                "Always 1; the version is the label.",
            ),
            &["version"],
        )?;
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        let task_panics = IntCounter::new(
            "powerbi_tokend_task_panics_total",
            "Tenant refresh tasks that panicked and were restarted (a bug: report it with the log).",
        )?;
        let fleet_tokens = IntCounterVec::new(
            Opts::new(
                "powerbi_tokend_fleet_tokens_total",
                "Fleet mode: tokens this replica fetched from the token endpoint (source=\"fetched\") or took from another replica (source=\"adopted\").",
            ),
            &["source"],
        )?;
        let fleet_lease_busy = IntCounter::new(
            "powerbi_tokend_fleet_lease_busy_total",
            "Fleet mode: planned refreshes that found another replica holding the tenant's lease (contention).",
        )?;
        let rate_limit_wait = prometheus::Counter::new(
            "powerbi_tokend_rate_limit_wait_seconds_total",
            "Seconds token requests waited for [daemon] max_requests_per_second, all tenants together.",
        )?;
        registry.register(Box::new(rate_limit_wait.clone()))?;
        registry.register(Box::new(fleet_tokens.clone()))?;
        registry.register(Box::new(fleet_lease_busy.clone()))?;
        for source in ["fetched", "adopted"] {
            fleet_tokens.with_label_values(&[source]);
        }
        registry.register(Box::new(tenants.clone()))?;
        registry.register(Box::new(refresh_duration.clone()))?;
        registry.register(Box::new(config_reloads.clone()))?;
        registry.register(Box::new(last_reload_ok.clone()))?;
        registry.register(Box::new(build_info))?;
        registry.register(Box::new(task_panics.clone()))?;
        registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        for result in ["success", "failure"] {
            config_reloads.with_label_values(&[result]);
        }
        last_reload_ok.set(1);
        Ok(Metrics {
            registry,
            tenants,
            refresh_duration,
            config_reloads,
            last_reload_ok,
            task_panics,
            fleet_tokens,
            fleet_lease_busy,
            rate_limit_wait,
        })
    }

    /// Records a configuration reload.
    pub fn reload(&self, ok: bool) {
        let result = if ok { "success" } else { "failure" };
        self.config_reloads.with_label_values(&[result]).inc();
        self.last_reload_ok.set(i64::from(ok));
    }

    /// Renders the text exposition: fleet-wide metrics, then every per-tenant family.
    pub fn render(&self, tenants: &status::Registry) -> String {
        let now = SystemTime::now();
        let rows = tenants.snapshot();
        let mut counts = [0i64; TenantState::ALL.len()];
        for (_, status) in &rows {
            let state = status.state(now);
            if let Some(index) = TenantState::ALL.iter().position(|s| *s == state) {
                counts[index] += 1;
            }
        }
        for (state, count) in TenantState::ALL.iter().zip(counts) {
            self.tenants.with_label_values(&[state.as_str()]).set(count);
        }
        let mut out = Vec::new();
        // Encoding into a Vec cannot fail for I/O reasons; a failure would be an invalid metric,
        // which the tests rule out, so a missing fleet-wide section is an acceptable fallback.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        let mut text = String::from_utf8(out).unwrap_or_default();
        render_tenants(&mut text, &rows, now);
        text
    }
}

/// One per-tenant family: HELP, TYPE, then one or more samples per tenant.
struct Family {
    name: &'static str,
    kind: &'static str,
    help: &'static str,
    /// Appends the tenant's samples (`name{labels} value` lines) to the output.
    samples: fn(&mut String, &'static str, &str, &TenantStatus, SystemTime),
}

/// Writes one sample line. Tenant names are `[A-Za-z0-9._-]+` and the other label values come
/// from fixed sets, so no label value needs escaping.
fn sample(out: &mut String, name: &str, labels: &[(&str, &str)], value: f64) {
    out.push_str(name);
    out.push('{');
    for (index, (key, val)) in labels.iter().enumerate() {
        if index > 0 {
            out.push(',');
        }
        let _ = write!(out, "{key}=\"{val}\"");
    }
    let _ = writeln!(out, "}} {value}");
}

/// A `{tenant="…"}` sample, or nothing when the value is not known yet (absent, not zero).
fn per_tenant(out: &mut String, name: &str, tenant: &str, value: Option<f64>) {
    if let Some(value) = value {
        sample(out, name, &[("tenant", tenant)], value);
    }
}

const FAMILIES: [Family; 9] = [
    Family {
        name: "powerbi_tokend_token_expiry_timestamp_seconds",
        kind: "gauge",
        help: "Unix time the tenant's current token expires.",
        samples: |out, name, tenant, status, _| {
            per_tenant(out, name, tenant, status.expires_on.map(|e| e as f64));
        },
    },
    Family {
        name: "powerbi_tokend_token_time_to_expiry_seconds",
        kind: "gauge",
        help: "Seconds until the tenant's current token expires, at scrape time; negative once expired.",
        samples: |out, name, tenant, status, now| {
            let left = status
                .expires_on
                .map(|e| e as f64 - system_to_unix_f64(now));
            per_tenant(out, name, tenant, left);
        },
    },
    Family {
        name: "powerbi_tokend_next_refresh_timestamp_seconds",
        kind: "gauge",
        help: "Unix time of the tenant's next planned refresh attempt.",
        samples: |out, name, tenant, status, _| {
            per_tenant(
                out,
                name,
                tenant,
                status.next_refresh.map(system_to_unix_f64),
            );
        },
    },
    Family {
        name: "powerbi_tokend_last_success_timestamp_seconds",
        kind: "gauge",
        help: "Unix time of the tenant's last successful refresh, every sink written.",
        samples: |out, name, tenant, status, _| {
            per_tenant(
                out,
                name,
                tenant,
                status.last_success.map(system_to_unix_f64),
            );
        },
    },
    Family {
        name: "powerbi_tokend_consecutive_failures",
        kind: "gauge",
        help: "Failed refresh attempts since the tenant's last success.",
        samples: |out, name, tenant, status, _| {
            sample(
                out,
                name,
                &[("tenant", tenant)],
                f64::from(status.consecutive_failures),
            );
        },
    },
    Family {
        name: "powerbi_tokend_tenant_state",
        kind: "gauge",
        help: "1 for the tenant's current state (pending, healthy, retrying, misconfigured, expired).",
        samples: |out, name, tenant, status, now| {
            let state = status.state(now).as_str();
            sample(out, name, &[("state", state), ("tenant", tenant)], 1.0);
        },
    },
    Family {
        name: "powerbi_tokend_credential_expiry_timestamp_seconds",
        kind: "gauge",
        help: "Unix time the tenant's credential expires: certificate notAfter or client_secret_expires.",
        samples: |out, name, tenant, status, _| {
            if let Some((expires_on, kind)) = status.credential_expiry {
                sample(
                    out,
                    name,
                    &[("kind", kind), ("tenant", tenant)],
                    expires_on as f64,
                );
            }
        },
    },
    Family {
        name: "powerbi_tokend_refresh_total",
        kind: "counter",
        help: "Refresh attempts by result.",
        samples: |out, name, tenant, status, _| {
            sample(
                out,
                name,
                &[("result", "failure"), ("tenant", tenant)],
                status.failures as f64,
            );
            sample(
                out,
                name,
                &[("result", "success"), ("tenant", tenant)],
                status.successes as f64,
            );
        },
    },
    Family {
        name: "powerbi_tokend_refresh_failures_total",
        kind: "counter",
        help: "Failed refresh attempts by reason.",
        samples: |out, name, tenant, status, _| {
            for reason in Reason::ALL {
                let count = status.failures_by_reason[reason.index()];
                if count > 0 {
                    let labels = [("reason", reason.as_str()), ("tenant", tenant)];
                    sample(out, name, &labels, count as f64);
                }
            }
        },
    },
];

fn render_tenants(out: &mut String, rows: &[(String, TenantStatus)], now: SystemTime) {
    // About 100 bytes per sample; reserve once so a large fleet is not copied while growing.
    out.reserve(rows.len() * FAMILIES.len() * 100);
    for family in &FAMILIES {
        let _ = writeln!(out, "# HELP {} {}", family.name, family.help);
        let _ = writeln!(out, "# TYPE {} {}", family.name, family.kind);
        for (tenant, status) in rows {
            (family.samples)(out, family.name, tenant, status, now);
        }
    }
}

impl Observer for Metrics {
    fn request_finished(&self, duration: Duration) {
        self.refresh_duration.observe(duration.as_secs_f64());
    }

    fn task_panicked(&self) {
        self.task_panics.inc();
    }

    fn fleet_token(&self, adopted: bool) {
        let source = if adopted { "adopted" } else { "fetched" };
        self.fleet_tokens.with_label_values(&[source]).inc();
    }

    fn fleet_lease_busy(&self) {
        self.fleet_lease_busy.inc();
    }

    fn rate_limited(&self, waited: Duration) {
        self.rate_limit_wait.inc_by(waited.as_secs_f64());
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
            status.expires_on = Some(4_000_000_000);
            status.successes = 3;
            status.failures = 2;
            status.failures_by_reason[Reason::Throttled.index()] = 2;
            status.credential_expiry = Some((1_803_859_200, "certificate"));
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
        assert!(!text.contains("reason=\"network\""));
        registry.remove("gone");
        let text = metrics.render(&registry);
        assert!(!text.contains("tenant=\"gone\""), "{text}");
        assert!(text.contains("powerbi_tokend_tenants{state=\"pending\"} 0"));
    }
}
