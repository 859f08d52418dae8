//! Benchmark: do tenants whose endpoint hangs delay the healthy ones?
//!
//! ```text
//! cargo run --release --example bench_slow_lane -- [TENANTS] [SECONDS]
//! ```
//!
//! Runs the daemon in this process against the simulated Entra ID twice, with TENANTS tenants
//! (default 200) whose tokens live 4 s (so each refreshes about every 2 s), 16 requests in flight
//! at most and a 3 s request timeout: first with every tenant healthy (the floor), then with 10 %
//! of them hanging until the timeout. For the healthy tenants it reports the time until all have
//! their first token, and over SECONDS (default 20) the refreshes they managed and the mean
//! delay of a refresh behind its plan, and the ratio of the second run to the floor.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use powerbi_tokend::config::{Config, DaemonConfig, SecretSource, ServerConfig, TenantConfig};
use powerbi_tokend_sim::{Behavior, SimApp, SimEntra, SimTenant};

const CLIENT_ID: &str = "5d1e7c2a-3b4f-4a6d-8e9f-0a1b2c3d4e5f";
const SECRET: &str = "bench-secret-value";
const LIFETIME: Duration = Duration::from_secs(4);

/// What one run measured for the healthy tenants.
struct Run {
    first_tokens: Duration,
    refreshes: u64,
    per_tenant: f64,
    mean_delay: Duration,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let mut args = std::env::args().skip(1);
    let tenants: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(200);
    let seconds: u64 = args.next().map(|a| a.parse()).transpose()?.unwrap_or(20);
    let runtime = tokio::runtime::Runtime::new()?;
    let floor = runtime.block_on(run(tenants, 0, seconds))?;
    let hanging = tenants / 10;
    let with = runtime.block_on(run(tenants, hanging, seconds))?;
    println!("tenants: {tenants}, hanging in the second run: {hanging}, window: {seconds} s");
    for (name, run) in [("all healthy (floor)", &floor), ("10 % hanging", &with)] {
        println!(
            "{name:>20}: first tokens of the healthy after {:>7.3} s; {} refreshes ({:.2} per healthy tenant); mean delay behind plan {:>7.3} s",
            run.first_tokens.as_secs_f64(),
            run.refreshes,
            run.per_tenant,
            run.mean_delay.as_secs_f64()
        );
    }
    println!(
        "ratio (10 % hanging / floor): first tokens {:.2}, refreshes per healthy tenant {:.3}, added mean delay {:.3} s",
        with.first_tokens.as_secs_f64() / floor.first_tokens.as_secs_f64().max(1e-3),
        with.per_tenant / floor.per_tenant.max(1e-9),
        (with.mean_delay.as_secs_f64() - floor.mean_delay.as_secs_f64()).max(0.0)
    );
    Ok(())
}

async fn run(
    tenants: usize,
    hanging: usize,
    seconds: u64,
) -> Result<Run, Box<dyn std::error::Error>> {
    let sim = SimEntra::start().await?;
    let work = tempfile::tempdir()?;
    let mut configs = Vec::new();
    for i in 0..tenants {
        let tenant_id = format!("t{i}.example.com");
        sim.add_tenant(
            &tenant_id,
            SimTenant::new(SimApp::new(CLIENT_ID, SECRET), LIFETIME),
        );
        if i < hanging {
            sim.set_behavior(&tenant_id, Behavior::Hang);
        }
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
        daemon: DaemonConfig {
            request_timeout: Duration::from_secs(3),
            max_concurrent_requests: 16,
            ..DaemonConfig::default()
        },
        tenants: configs.into_iter().map(Arc::new).collect(),
    };
    let healthy: Vec<String> = (hanging..tenants)
        .map(|i| format!("t{i}.example.com"))
        .collect();
    let started = Instant::now();
    let daemon = powerbi_tokend::Daemon::start(config).await?;
    let (control, receiver) = tokio::sync::mpsc::channel(1);
    let task = tokio::spawn(daemon.run(receiver));
    while !healthy.iter().all(|t| sim.issued_count(t) >= 1) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let first_tokens = started.elapsed();
    let before: u64 = healthy.iter().map(|t| sim.issued_count(t)).sum();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let refreshes = healthy.iter().map(|t| sim.issued_count(t)).sum::<u64>() - before;
    control.send(powerbi_tokend::Control::Shutdown).await?;
    let _ = task.await;
    // Each tenant plans a refresh at half the lifetime (± its jitter, which averages out): a
    // tenant that is never late refreshes every LIFETIME / 2.
    let planned = LIFETIME.as_secs_f64() / 2.0;
    let per_tenant = refreshes as f64 / healthy.len() as f64;
    let period = seconds as f64 / per_tenant.max(1e-9);
    Ok(Run {
        first_tokens,
        refreshes,
        per_tenant,
        mean_delay: Duration::from_secs_f64((period - planned).max(0.0)),
    })
}

fn tenant(sim: &SimEntra, index: usize, dir: &Path) -> TenantConfig {
    TenantConfig::entra(
        &format!("t{index}"),
        &format!("t{index}.example.com"),
        CLIENT_ID,
        SecretSource::Inline(SECRET.to_owned().into()),
        &sim.authority_host(),
        dir.join(format!("t{index}.json")),
    )
}
