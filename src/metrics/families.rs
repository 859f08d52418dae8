//! The families registered with the Prometheus registry, by group: the daemon's own, token
//! requests, the fleet, the probe, and the by-result and by-reason counters that token attempts
//! and embed refreshes share. Per-tenant families are not here: they are written at scrape time
//! from the status (see the parent module).

use prometheus::core::Collector;
use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

use crate::error::Reason;
use crate::fleet::Kind;

/// The daemon's own families: reloads, panics, the build and the process.
#[derive(Debug)]
pub(super) struct DaemonMetrics {
    /// Reloads by result.
    pub(super) config_reloads: IntCounterVec,
    /// Whether the last reload succeeded.
    pub(super) last_reload_ok: IntGauge,
    /// Tenant tasks that panicked and were restarted: always a bug. Fleet-wide (the tenant is in
    /// the ERROR log line and in `/status`), so it costs one series, not one per tenant.
    pub(super) task_panics: IntCounter,
    /// Admin requests refused by `[server.basic_auth]`, by reason (`missing`, `malformed`,
    /// `wrong`); never by user, which would name whoever is guessing.
    pub(super) admin_auth_failures: IntCounterVec,
}

impl DaemonMetrics {
    /// Registers the daemon's families, with `build_info` and the `process_*` collector, which
    /// are set once and never touched again. Both reload results start at 0, and the last
    /// reload counts as successful until one fails.
    pub(super) fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let config_reloads = counters_from_zero(
            Opts::new(
                "powerbi_tokend_config_reloads_total",
                "Configuration reloads (SIGHUP or file change) by result.",
            ),
            "result",
            &["success", "failure"],
        )?;
        let last_reload_ok = IntGauge::new(
            "powerbi_tokend_config_last_reload_successful",
            "1 if the last configuration reload succeeded (or none was attempted), else 0.",
        )?;
        last_reload_ok.set(1);
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
        registry.register(Box::new(build_info))?;
        registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        let admin_auth_failures = counters_from_zero(
            Opts::new(
                "powerbi_tokend_admin_auth_failures_total",
                "Admin requests refused by [server.basic_auth]: missing or malformed credentials, or a wrong user or password.",
            ),
            "reason",
            &["missing", "malformed", "wrong"],
        )?;
        Ok(DaemonMetrics {
            admin_auth_failures: registered(registry, admin_auth_failures)?,
            config_reloads: registered(registry, config_reloads)?,
            last_reload_ok: registered(registry, last_reload_ok)?,
            task_panics: registered(
                registry,
                IntCounter::new(
                    "powerbi_tokend_task_panics_total",
                    "Tenant refresh tasks that panicked and were restarted (a bug: report it with the log).",
                )?,
            )?,
        })
    }
}

/// Token requests of all tenants: what the token endpoint costs and how attempts end.
#[derive(Debug)]
pub(super) struct TokenMetrics {
    /// Token endpoint latency.
    pub(super) refresh_duration: Histogram,
    /// Seconds token requests waited for `max_requests_per_second`.
    pub(super) rate_limit_wait: prometheus::Counter,
    /// Attempts of all tenants by result, and the failures by reason in the order of
    /// [`Reason::TOKEN`]: what a dashboard and the alerts read when per-tenant series are off.
    pub(super) attempts: Outcomes<{ Reason::TOKEN.len() }>,
}

impl TokenMetrics {
    /// Registers the token families.
    pub(super) fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        Ok(TokenMetrics {
            refresh_duration: registered(
                registry,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "powerbi_tokend_refresh_duration_seconds",
                        "Token endpoint request latency, all tenants.",
                    )
                    .buckets(DURATION_BUCKETS.to_vec()),
                )?,
            )?,
            rate_limit_wait: registered(
                registry,
                prometheus::Counter::new(
                    "powerbi_tokend_rate_limit_wait_seconds_total",
                    "Seconds token requests waited for [daemon] max_requests_per_second, all tenants together.",
                )?,
            )?,
            attempts: Outcomes::register(
                registry,
                Opts::new(
                    "powerbi_tokend_tenants_refresh_total",
                    "Refresh attempts of all tenants by result; keeps counting when a tenant leaves the configuration.",
                ),
                Opts::new(
                    "powerbi_tokend_tenants_refresh_failures_total",
                    "Failed refresh attempts of all tenants by reason; keeps counting when a tenant leaves the configuration.",
                ),
                Reason::TOKEN,
            )?,
        })
    }
}

/// Fleet mode: where this replica's job results came from (access tokens, embed tokens, probes),
/// and how often a job's lease was taken. Labelled by the kind of job: three values.
#[derive(Debug)]
pub(super) struct FleetMetrics {
    /// Results this replica made vs adopted from another replica, by kind.
    pub(super) tokens: IntCounterVec,
    /// Jobs that found another replica holding their lease, by kind.
    pub(super) lease_busy: IntCounterVec,
}

impl FleetMetrics {
    /// Registers the fleet families, every kind and source starting at 0.
    pub(super) fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let tokens = IntCounterVec::new(
            Opts::new(
                "powerbi_tokend_fleet_tokens_total",
                "Fleet mode: job results this replica made itself (source=\"fetched\": an access token from the token endpoint, an embed token from GenerateToken, a probe) or took from another replica (source=\"adopted\"), by kind of job (kind=\"token\"|\"embed\"|\"probe\").",
            ),
            &["kind", "source"],
        )?;
        let lease_busy = IntCounterVec::new(
            Opts::new(
                "powerbi_tokend_fleet_lease_busy_total",
                "Fleet mode: jobs due that found another replica holding their lease (contention), by kind of job.",
            ),
            &["kind"],
        )?;
        for kind in Kind::ALL {
            lease_busy.with_label_values(&[kind.as_str()]);
            for source in ["fetched", "adopted"] {
                tokens.with_label_values(&[kind.as_str(), source]);
            }
        }
        Ok(FleetMetrics {
            tokens: registered(registry, tokens)?,
            lease_busy: registered(registry, lease_busy)?,
        })
    }
}

/// Access probes (of the Power BI or the Fabric API) of all tenants: latency, and failures by
/// reason.
#[derive(Debug)]
pub(super) struct ProbeMetrics {
    /// Probe latency.
    pub(super) duration: Histogram,
    /// Failed probes by reason (in the order of [`Reason::API`]).
    pub(super) failures: [IntCounter; Reason::API.len()],
}

impl ProbeMetrics {
    /// Registers the probe families.
    pub(super) fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let failures = registered(
            registry,
            IntCounterVec::new(
                Opts::new(
                    "powerbi_tokend_tenants_api_probe_failures_total",
                    "Failed access probes (Power BI or Fabric API) of all tenants by reason; keeps counting when a tenant leaves the configuration.",
                ),
                &["reason"],
            )?,
        )?;
        Ok(ProbeMetrics {
            duration: registered(
                registry,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "powerbi_tokend_api_probe_duration_seconds",
                        "Access probe latency (Power BI or Fabric API), all tenants.",
                    )
                    .buckets(DURATION_BUCKETS.to_vec()),
                )?,
            )?,
            failures: Reason::API.map(|reason| failures.with_label_values(&[reason.as_str()])),
        })
    }
}

/// How the attempts of one kind ended, all tenants together: by result, and the failures by
/// reason. Counted where attempts end, so the counts survive a tenant that leaves the
/// configuration; token attempts and embed token refreshes keep the same pair of families.
#[derive(Debug)]
pub(super) struct Outcomes<const N: usize> {
    /// The `result="success"` series, kept as a handle so counting is one atomic add.
    pub(super) succeeded: IntCounter,
    /// The `result="failure"` series.
    pub(super) failed: IntCounter,
    /// The reasons a failure is counted under, in the order of `by_reason`.
    pub(super) reasons: [Reason; N],
    /// One series per reason: every reason is there from the start, at 0.
    pub(super) by_reason: [IntCounter; N],
}

impl<const N: usize> Outcomes<N> {
    /// Registers the family by result (label `result`) and the one by reason (label `reason`).
    pub(super) fn register(
        registry: &Registry,
        results: Opts,
        failures: Opts,
        reasons: [Reason; N],
    ) -> Result<Self, prometheus::Error> {
        let results = registered(registry, IntCounterVec::new(results, &["result"])?)?;
        let failures = registered(registry, IntCounterVec::new(failures, &["reason"])?)?;
        Ok(Outcomes {
            succeeded: results.with_label_values(&["success"]),
            failed: results.with_label_values(&["failure"]),
            reasons,
            by_reason: reasons.map(|reason| failures.with_label_values(&[reason.as_str()])),
        })
    }

    /// Counts one attempt; a reason outside `reasons` counts as a failure only.
    pub(super) fn record(&self, result: Result<(), Reason>) {
        match result {
            Ok(()) => self.succeeded.inc(),
            Err(reason) => {
                self.failed.inc();
                if let Some(index) = self.reasons.iter().position(|r| *r == reason) {
                    self.by_reason[index].inc();
                }
            }
        }
    }
}

/// A counter family by `label` whose series for `values` exist from the start, at 0, so a
/// query finds every one of them before anything is counted.
pub(super) fn counters_from_zero(
    opts: Opts,
    label: &str,
    values: &[&str],
) -> Result<IntCounterVec, prometheus::Error> {
    let counters = IntCounterVec::new(opts, &[label])?;
    for value in values {
        counters.with_label_values(&[*value]);
    }
    Ok(counters)
}

/// `collector`, registered: the registry keeps one handle to gather from, the caller the other
/// to count with.
pub(super) fn registered<C: Collector + Clone + 'static>(
    registry: &Registry,
    collector: C,
) -> Result<C, prometheus::Error> {
    registry.register(Box::new(collector.clone()))?;
    Ok(collector)
}

/// Latency buckets for the token endpoint: Entra answers in 50–500 ms; timeouts are 30 s.
pub(super) const DURATION_BUCKETS: [f64; 12] = [
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0,
];
