//! Benchmark: `/metrics` size and render time for each `[server] per_tenant_metrics` mode.
//!
//! ```text
//! cargo run --release --example bench_metrics -- [TENANTS] [OUT_DIR]
//! ```
//!
//! Fills a status registry with TENANTS synthetic tenants (default 10000) named `tenant000001`…,
//! as a long-running fleet looks: every tenant healthy with a token of 30–60 minutes left, ten
//! successful refreshes and a certificate a year from expiry, except every 100th, which is
//! misconfigured (three failures, token still valid), and every 200th, whose client secret expires
//! in 20 days. Then renders the exposition in each mode, as a scrape does, and reports its size
//! and the fastest and the median of 5 renders. With OUT_DIR, writes each mode's text there
//! (`metrics-<mode>.txt`), e.g. for `promtool check metrics`.
//!
//! This measures the rendering alone, in process; `bench_tenants` measures scrapes of the running
//! daemon over HTTP.

use std::time::{Duration, Instant, SystemTime};

use powerbi_tokend::config::PerTenantMetrics;
use powerbi_tokend::credential::CredentialExpiry;
use powerbi_tokend::error::{ErrorClass, Reason, RefreshError};
use powerbi_tokend::metrics::Metrics;
use powerbi_tokend::schedule::system_to_unix_f64;
use powerbi_tokend::status::{self, Registry};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn main() -> Result<(), BoxError> {
    let mut args = std::env::args().skip(1);
    let tenants: usize = args
        .next()
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(10_000);
    let out_dir = args.next().map(std::path::PathBuf::from);
    let registry = fleet(tenants);
    let metrics = Metrics::new()?;
    println!("tenants: {tenants}");
    println!("mode       bytes       bytes/tenant  render: fastest, median of 5");
    for mode in PerTenantMetrics::ALL {
        metrics.set_per_tenant_metrics(mode);
        let mut times = Vec::new();
        let mut text = String::new();
        for _ in 0..5 {
            let started = Instant::now();
            text = metrics.render(&registry);
            times.push(started.elapsed());
        }
        times.sort();
        println!(
            "{:<10} {:>11} {:>13.1}  {:>8.2} ms {:>8.2} ms",
            mode.as_str(),
            text.len(),
            text.len() as f64 / tenants.max(1) as f64,
            ms(times[0]),
            ms(times[times.len() / 2])
        );
        if let Some(dir) = &out_dir {
            std::fs::create_dir_all(dir)?;
            std::fs::write(dir.join(format!("metrics-{}.txt", mode.as_str())), &text)?;
        }
    }
    Ok(())
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

/// The synthetic fleet described in the module documentation.
fn fleet(tenants: usize) -> Registry {
    let now = SystemTime::now();
    let now_unix = system_to_unix_f64(now) as i64;
    let registry = Registry::new();
    for i in 1..=tenants {
        let handle = registry.insert(&format!("tenant{i:06}"));
        let mut status = status::lock(&handle);
        let left = 1800 + (i as i64 * 7919) % 1800;
        status.first_attempt_done = true;
        status.token.expires_on = Some(now_unix + left);
        status.token.next_refresh = Some(now + Duration::from_secs(left as u64 / 2));
        status.token.last_success = Some(now - Duration::from_secs(600));
        status.token.successes = 10;
        status.credential_expiry = Some(CredentialExpiry::certificate(now_unix + 365 * 86_400));
        if i % 200 == 0 {
            status.credential_expiry =
                Some(CredentialExpiry::client_secret(now_unix + 20 * 86_400));
        }
        if i % 100 == 0 {
            status.token.consecutive_failures = 3;
            status.token.failures = 3;
            status.token.failures_by_reason[Reason::InvalidClient.index()] = 3;
            status.token.last_error = Some(Box::new(RefreshError::local(
                ErrorClass::Permanent,
                Reason::InvalidClient,
                "AADSTS7000215: Invalid client secret provided.",
            )));
        }
    }
    registry
}
