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

use std::time::{Duration, Instant};

use powerbi_tokend::config::PerTenantMetrics;
use powerbi_tokend::metrics::Metrics;

#[path = "common/fleet.rs"]
mod fleet;
use fleet::{BoxError, fleet};

fn main() -> Result<(), BoxError> {
    let (tenants, out_dir) = fleet::arguments(10_000)?;
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
