//! Benchmark: how evenly do refreshes spread once the start-up burst is over?
//!
//! ```text
//! cargo run --release --example bench_steady -- [TENANTS] [MINUTES] [LIFETIME_SECONDS]
//! ```
//!
//! Runs the daemon in this process against the simulated Entra ID with TENANTS tenants (default
//! 1000) whose tokens live LIFETIME_SECONDS (default 30), default `refresh_at` (0.5) and jitter
//! (0.1), for MINUTES (default 15). Every tenant fetches at once at start-up; the benchmark counts
//! the requests the simulator served in each second and reports, after the first cycle (one
//! token lifetime), the mean per second and the busiest 1-second and 10-second windows against
//! that mean. A schedule that falls back into step shows as peaks well above the mean.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use powerbi_tokend::config::{Config, DaemonConfig, SecretSource, ServerConfig, TenantConfig};
use powerbi_tokend_sim::{SimApp, SimEntra, SimTenant};

const CLIENT_ID: &str = "5d1e7c2a-3b4f-4a6d-8e9f-0a1b2c3d4e5f";
const SECRET: &str = "bench-secret-value";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let mut args = std::env::args().skip(1);
    let tenants: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(1000);
    let minutes: u64 = args.next().map(|a| a.parse()).transpose()?.unwrap_or(15);
    let lifetime: u64 = args.next().map(|a| a.parse()).transpose()?.unwrap_or(30);
    let runtime = tokio::runtime::Runtime::new()?;
    let per_second = runtime.block_on(run(tenants, minutes * 60, Duration::from_secs(lifetime)))?;
    // After the first cycle: the start-up burst and its first echo are not the steady state.
    let steady = per_second.get(lifetime as usize..).unwrap_or(&[]);
    if steady.len() < 10 {
        return Err("the window is shorter than one token lifetime plus 10 s".into());
    }
    let total: u64 = steady.iter().sum();
    let mean = total as f64 / steady.len() as f64;
    let peak_1s = steady.iter().copied().max().unwrap_or(0);
    let peak_10s = steady
        .windows(10)
        .map(|w| w.iter().sum::<u64>())
        .max()
        .unwrap_or(0);
    println!(
        "tenants: {tenants}, tokens live {lifetime} s, window {minutes} min; first cycle ({lifetime} s) left out"
    );
    println!(
        "requests after the first cycle: {total} in {} s, mean {mean:.1}/s",
        steady.len()
    );
    println!(
        "busiest second: {peak_1s} ({:.2}× the mean); busiest 10 s: {peak_10s} ({:.2}× the mean)",
        peak_1s as f64 / mean.max(1e-9),
        peak_10s as f64 / (10.0 * mean).max(1e-9)
    );
    let first: u64 = per_second.iter().take(lifetime as usize).sum();
    println!(
        "first cycle: {first} requests, busiest second {}",
        per_second
            .iter()
            .take(lifetime as usize)
            .max()
            .unwrap_or(&0)
    );
    Ok(())
}

/// Requests served in each second of the run.
async fn run(
    tenants: usize,
    seconds: u64,
    lifetime: Duration,
) -> Result<Vec<u64>, Box<dyn std::error::Error>> {
    let sim = SimEntra::start().await?;
    let work = tempfile::tempdir()?;
    let mut configs = Vec::new();
    for i in 0..tenants {
        let tenant_id = format!("t{i}.example.com");
        sim.add_tenant(
            &tenant_id,
            SimTenant::new(SimApp::new(CLIENT_ID, SECRET), lifetime),
        );
        configs.push(tenant(&sim, i, work.path()));
    }
    let config = Config {
        redis: None,
        fleet: None,
        key_vault: None,
        path: "<bench>".into(),
        server: ServerConfig {
            listen: "127.0.0.1:0".parse()?,
            watch_config: false,
            watch_interval: Duration::from_secs(5),
            per_tenant_metrics: Default::default(),
            tls: None,
            basic_auth: None,
        },
        daemon: DaemonConfig::default(),
        tenants: configs.into_iter().map(Arc::new).collect(),
    };
    let daemon = powerbi_tokend::Daemon::start(config).await?;
    let (control, receiver) = tokio::sync::mpsc::channel(1);
    let task = tokio::spawn(daemon.run(receiver));
    let started = Instant::now();
    let mut per_second = Vec::new();
    let mut counted = 0;
    let mut ticks = tokio::time::interval(Duration::from_secs(1));
    ticks.tick().await;
    for _ in 0..seconds {
        ticks.tick().await;
        let served = sim.total_requests();
        per_second.push(served - counted);
        counted = served;
    }
    control.send(powerbi_tokend::Control::Shutdown).await?;
    let _ = task.await;
    eprintln!("ran {:?}", started.elapsed());
    Ok(per_second)
}

fn tenant(sim: &SimEntra, index: usize, dir: &Path) -> TenantConfig {
    // Default refresh_at and jitter, as a user would have them.
    TenantConfig::entra(
        &format!("t{index}"),
        &format!("t{index}.example.com"),
        CLIENT_ID,
        SecretSource::Inline(SECRET.to_owned().into()),
        &sim.authority_host(),
        dir.join(format!("t{index}.json")),
    )
}
