//! Prometheus metrics. The names are a contract for dashboards and alerts (see README).
//!
//! Per-tenant gauges are filled from the status registry when `/metrics` is scraped, after a
//! reset: time to expiry is computed at that instant (nothing ticks), and a tenant that left the
//! configuration simply is not there any more. Counters are incremented as attempts finish and
//! their series are removed when a tenant leaves. The latency histogram has no tenant label, so a
//! fleet of ten thousand tenants costs one histogram, not ten thousand.

use prometheus::{
    Encoder, GaugeVec, Histogram, HistogramOpts, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use crate::error::{Reason, RefreshError};
use crate::schedule::system_to_unix_f64;
use crate::status::{self, TenantState};
use crate::tenant::Observer;

/// Every metric the daemon exports.
#[derive(Debug)]
pub struct Metrics {
    /// Our own registry (not the process-global default), so tests can run several daemons.
    registry: Registry,
    token_expiry: GaugeVec,
    time_to_expiry: GaugeVec,
    next_refresh: GaugeVec,
    last_success: GaugeVec,
    consecutive_failures: IntGaugeVec,
    credential_expiry: GaugeVec,
    tenant_state: IntGaugeVec,
    tenants: IntGaugeVec,
    refresh_total: IntCounterVec,
    refresh_failures: IntCounterVec,
    refresh_duration: Histogram,
    config_reloads: IntCounterVec,
    last_reload_ok: IntGauge,
    /// Serialises scrapes: the per-tenant gauges are reset and refilled on each one.
    scrape: Mutex<()>,
}

/// Latency buckets for the token endpoint: Entra answers in 50–500 ms; timeouts are 30 s.
const DURATION_BUCKETS: [f64; 12] = [
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0,
];

impl Metrics {
    /// Creates and registers every metric.
    ///
    /// # Errors
    /// Only on a programming error (duplicate or invalid metric names).
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let gauge =
            |name: &str, help: &str, labels: &[&str]| -> Result<GaugeVec, prometheus::Error> {
                let metric = GaugeVec::new(Opts::new(name, help), labels)?;
                registry.register(Box::new(metric.clone()))?;
                Ok(metric)
            };
        let int_gauge =
            |name: &str, help: &str, labels: &[&str]| -> Result<IntGaugeVec, prometheus::Error> {
                let metric = IntGaugeVec::new(Opts::new(name, help), labels)?;
                registry.register(Box::new(metric.clone()))?;
                Ok(metric)
            };
        let counter =
            |name: &str, help: &str, labels: &[&str]| -> Result<IntCounterVec, prometheus::Error> {
                let metric = IntCounterVec::new(Opts::new(name, help), labels)?;
                registry.register(Box::new(metric.clone()))?;
                Ok(metric)
            };
        let metrics = Metrics {
            token_expiry: gauge(
                "powerbi_tokend_token_expiry_timestamp_seconds",
                "Unix time the tenant's current token expires.",
                &["tenant"],
            )?,
            time_to_expiry: gauge(
                "powerbi_tokend_token_time_to_expiry_seconds",
                "Seconds until the tenant's current token expires, at scrape time; negative once expired.",
                &["tenant"],
            )?,
            next_refresh: gauge(
                "powerbi_tokend_next_refresh_timestamp_seconds",
                "Unix time of the tenant's next planned refresh attempt.",
                &["tenant"],
            )?,
            last_success: gauge(
                "powerbi_tokend_last_success_timestamp_seconds",
                "Unix time of the tenant's last successful refresh, every sink written.",
                &["tenant"],
            )?,
            credential_expiry: gauge(
                "powerbi_tokend_credential_expiry_timestamp_seconds",
                "Unix time the tenant's credential expires: certificate notAfter or client_secret_expires.",
                &["tenant", "kind"],
            )?,
            consecutive_failures: int_gauge(
                "powerbi_tokend_consecutive_failures",
                "Failed refresh attempts since the tenant's last success.",
                &["tenant"],
            )?,
            tenant_state: int_gauge(
                "powerbi_tokend_tenant_state",
                "1 for the tenant's current state (pending, healthy, retrying, misconfigured, expired).",
                &["tenant", "state"],
            )?,
            tenants: int_gauge(
                "powerbi_tokend_tenants",
                "Number of tenants in each state.",
                &["state"],
            )?,
            refresh_total: counter(
                "powerbi_tokend_refresh_total",
                "Refresh attempts by result.",
                &["tenant", "result"],
            )?,
            refresh_failures: counter(
                "powerbi_tokend_refresh_failures_total",
                "Failed refresh attempts by reason.",
                &["tenant", "reason"],
            )?,
            refresh_duration: {
                let metric = Histogram::with_opts(
                    HistogramOpts::new(
                        "powerbi_tokend_refresh_duration_seconds",
                        "Token endpoint request latency, all tenants.",
                    )
                    .buckets(DURATION_BUCKETS.to_vec()),
                )?;
                registry.register(Box::new(metric.clone()))?;
                metric
            },
            config_reloads: counter(
                "powerbi_tokend_config_reloads_total",
                "Configuration reloads (SIGHUP or file change) by result.",
                &["result"],
            )?,
            last_reload_ok: {
                let metric = IntGauge::new(
                    "powerbi_tokend_config_last_reload_successful",
                    "1 if the last configuration reload succeeded (or none was attempted), else 0.",
                )?;
                registry.register(Box::new(metric.clone()))?;
                metric
            },
            scrape: Mutex::new(()),
            registry,
        };
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
        metrics.registry.register(Box::new(build_info))?;
        metrics.registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        for result in ["success", "failure"] {
            metrics.config_reloads.with_label_values(&[result]);
        }
        metrics.last_reload_ok.set(1);
        Ok(metrics)
    }

    /// Records a configuration reload.
    pub fn reload(&self, ok: bool) {
        let result = if ok { "success" } else { "failure" };
        self.config_reloads.with_label_values(&[result]).inc();
        self.last_reload_ok.set(i64::from(ok));
    }

    /// Refreshes the per-tenant gauges from the registry and renders the text exposition.
    pub fn render(&self, tenants: &status::Registry) -> String {
        let _serial = self.scrape.lock().unwrap_or_else(|p| p.into_inner());
        let now = SystemTime::now();
        let now_unix = system_to_unix_f64(now);
        for vec in [
            &self.token_expiry,
            &self.time_to_expiry,
            &self.next_refresh,
            &self.last_success,
        ] {
            vec.reset();
        }
        self.consecutive_failures.reset();
        self.credential_expiry.reset();
        self.tenant_state.reset();
        let mut counts = [0i64; TenantState::ALL.len()];
        for (name, status) in tenants.snapshot() {
            let labels = [name.as_str()];
            if let Some(expires_on) = status.expires_on {
                self.token_expiry
                    .with_label_values(&labels)
                    .set(expires_on as f64);
                self.time_to_expiry
                    .with_label_values(&labels)
                    .set(expires_on as f64 - now_unix);
            }
            if let Some((expires_on, kind)) = status.credential_expiry {
                self.credential_expiry
                    .with_label_values(&[name.as_str(), kind])
                    .set(expires_on as f64);
            }
            if let Some(next) = status.next_refresh {
                self.next_refresh
                    .with_label_values(&labels)
                    .set(system_to_unix_f64(next));
            }
            if let Some(success) = status.last_success {
                self.last_success
                    .with_label_values(&labels)
                    .set(system_to_unix_f64(success));
            }
            self.consecutive_failures
                .with_label_values(&labels)
                .set(i64::from(status.consecutive_failures));
            let state = status.state(now);
            self.tenant_state
                .with_label_values(&[name.as_str(), state.as_str()])
                .set(1);
            if let Some(index) = TenantState::ALL.iter().position(|s| *s == state) {
                counts[index] += 1;
            }
        }
        for (state, count) in TenantState::ALL.iter().zip(counts) {
            self.tenants.with_label_values(&[state.as_str()]).set(count);
        }
        let mut out = Vec::new();
        // Encoding into a Vec cannot fail for I/O reasons; a failure would be an invalid metric,
        // which the tests rule out, so an empty body is an acceptable fallback.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

impl Observer for Metrics {
    fn tenant_started(&self, tenant: &str) {
        for result in ["success", "failure"] {
            self.refresh_total.with_label_values(&[tenant, result]);
        }
    }

    fn tenant_removed(&self, tenant: &str) {
        for result in ["success", "failure"] {
            let _ = self.refresh_total.remove_label_values(&[tenant, result]);
        }
        for reason in Reason::ALL {
            let _ = self
                .refresh_failures
                .remove_label_values(&[tenant, reason.as_str()]);
        }
    }

    fn attempt(&self, tenant: &str, result: Result<(), &RefreshError>, duration: Option<Duration>) {
        if let Some(duration) = duration {
            self.refresh_duration.observe(duration.as_secs_f64());
        }
        match result {
            Ok(()) => self
                .refresh_total
                .with_label_values(&[tenant, "success"])
                .inc(),
            Err(err) => {
                self.refresh_total
                    .with_label_values(&[tenant, "failure"])
                    .inc();
                self.refresh_failures
                    .with_label_values(&[tenant, err.reason.as_str()])
                    .inc();
            }
        }
    }
}
