//! Benchmark: the release daemon against the simulated Entra ID with many tenants.
//!
//! ```text
//! cargo build --release && cargo run --release --example bench_tenants -- [TENANTS] [IDLE_SECONDS]
//! ```
//!
//! Starts the simulator in this process, writes a config with TENANTS tenants (default 10000),
//! starts `target/release/powerbi-tokend run` as a child and reports, for the child alone:
//! the time from spawn until every token file exists, its peak RSS (VmHWM), and the CPU seconds it
//! uses over IDLE_SECONDS (default 60) of idling afterwards. Tokens live one hour, so no refresh
//! falls into the idle window. Then it scrapes `/metrics` four times, as Prometheus would, in each
//! `[server] per_tenant_metrics` mode (`all`, then `unhealthy` and `none` after a SIGHUP reload
//! each), and reports each mode's scrape size, latency and CPU cost, and the RSS afterwards.
//! Last, the floor in the same run against the same simulator: per tenant one token request, its
//! JSON parsed and the daemon's own atomic write, 16 at a time; and the daemon/floor ratio of the
//! cold start.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use powerbi_tokend::sim::{SimApp, SimEntra, SimTenant};

mod common;
use common::{CLIENT_ID, SECRET, daemon_binary, read_status_kib};

/// Requests in flight: the daemon's default `max_concurrent_requests`, and the floor's workers.
const CONCURRENCY: usize = 16;

fn main() -> Result<(), common::BoxError> {
    let mut args = std::env::args().skip(1);
    let tenants: usize = args
        .next()
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(10_000);
    let idle: u64 = args.next().map(|a| a.parse()).transpose()?.unwrap_or(60);
    let binary = daemon_binary()?;
    let runtime = tokio::runtime::Runtime::new()?;
    let sim = runtime.block_on(SimEntra::start())?;
    for i in 0..tenants {
        sim.add_tenant(
            &format!("t{i}.example.com"),
            SimTenant::new(
                SimApp {
                    client_id: CLIENT_ID.to_owned(),
                    secret: SECRET.to_owned(),
                    secret_expired: false,
                },
                Duration::from_secs(3600),
            ),
        );
    }
    let work = tempfile::tempdir()?;
    let tokens = work.path().join("tokens");
    let config = work.path().join("config.toml");
    let admin_port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    std::fs::write(
        &config,
        config_text(&sim.authority_host(), &tokens, tenants, admin_port),
    )?;

    println!("tenants: {tenants}, binary: {}", binary.display());
    let started = Instant::now();
    // BENCH_WRAP runs the daemon under a profiler, e.g. "heaptrack" or "valgrind --tool=massif".
    let wrap = std::env::var("BENCH_WRAP").unwrap_or_default();
    let mut words = wrap.split_whitespace();
    let mut child = match words.next() {
        Some(program) => {
            let mut command = Command::new(program);
            command.args(words).arg(&binary);
            command
        }
        None => Command::new(&binary),
    };
    let mut child = child
        .args(["run", "--config"])
        .arg(&config)
        .env("BENCH_SECRET", SECRET)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()?;
    let pid = child.id();
    loop {
        if count_tokens(&tokens) >= tenants {
            break;
        }
        if let Some(status) = child.try_wait()? {
            return Err(format!("daemon exited early: {status}").into());
        }
        if started.elapsed() > Duration::from_secs(300) {
            return Err("not all token files were written within 300 s".into());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let all_written = started.elapsed();
    let rss_after_start = read_status_kib(pid, "VmRSS:")?;
    let cpu_start = cpu_seconds(pid)?;
    let requests_before_idle = sim.total_requests();
    std::thread::sleep(Duration::from_secs(idle));
    let cpu_idle = cpu_seconds(pid)? - cpu_start;
    let peak_rss = read_status_kib(pid, "VmHWM:")?;
    let requests_during_idle = sim.total_requests() - requests_before_idle;

    // Scrapes: what monitoring costs with this many tenants, in each `per_tenant_metrics` mode:
    // the config starts in the default ("all"), a reload (SIGHUP) switches to the next.
    let mut scrapes = Vec::new();
    for mode in ["all", "unhealthy", "none"] {
        if mode != "all" {
            set_per_tenant_metrics(&config, mode)?;
            Command::new("kill")
                .arg("-HUP")
                .arg(pid.to_string())
                .status()?;
            let marker = format!("powerbi_tokend_per_tenant_metrics{{mode=\"{mode}\"}} 1");
            let reloaded = Instant::now();
            while !get_metrics(&runtime, admin_port)?.contains(&marker) {
                if reloaded.elapsed() > Duration::from_secs(120) {
                    return Err(format!("the reload to {mode} did not show within 120 s").into());
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        scrapes.push((mode, scrape(&runtime, admin_port, pid)?));
    }
    let rss_after_scrapes = read_status_kib(pid, "VmRSS:")?;
    let peak_with_scrapes = read_status_kib(pid, "VmHWM:")?;

    Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status()?;
    let exit = child.wait()?;

    println!(
        "all {tenants} token files written after: {:.2} s",
        all_written.as_secs_f64()
    );
    println!("token requests served: {requests_before_idle} (+{requests_during_idle} while idle)");
    println!(
        "RSS after start-up: {:.1} MiB",
        rss_after_start as f64 / 1024.0
    );
    println!("peak RSS (VmHWM): {:.1} MiB", peak_rss as f64 / 1024.0);
    println!("CPU over {idle} s idle: {cpu_idle:.3} s");
    for (mode, scrape) in &scrapes {
        println!(
            "/metrics, per_tenant_metrics = {mode:?}: {} bytes ({:.2} MiB), slowest of 4 scrapes {:.0} ms, {:.3} CPU-s per scrape; RSS before {:.1} MiB, after {:.1} MiB",
            scrape.bytes,
            scrape.bytes as f64 / 1_048_576.0,
            scrape.slowest.as_secs_f64() * 1000.0,
            scrape.cpu_each,
            scrape.rss_before_kib as f64 / 1024.0,
            scrape.rss_after_kib as f64 / 1024.0,
        );
    }
    println!(
        "RSS after the scrapes and the reloads between them: {:.1} MiB (peak {:.1} MiB)",
        rss_after_scrapes as f64 / 1024.0,
        peak_with_scrapes as f64 / 1024.0
    );
    println!("exit after SIGTERM: {exit}");

    // The floor, in the same run against the same simulator: the least work the cold start
    // needs, without the daemon around it.
    let floor_dir = work.path().join("floor");
    let floor = runtime.block_on(floor(&sim.authority_host(), tenants, &floor_dir))?;
    if count_tokens(&floor_dir) < tenants {
        return Err("the floor did not write every file".into());
    }
    println!(
        "floor (request, parse, the same atomic write; {CONCURRENCY} at a time): {:.2} s; daemon/floor: {:.2}",
        floor.as_secs_f64(),
        all_written.as_secs_f64() / floor.as_secs_f64().max(1e-9)
    );
    drop(runtime);
    Ok(())
}

/// One token request per tenant, its JSON parsed, and the daemon's own atomic write (temp file,
/// fsync, rename, directory fsync) of the document, [`CONCURRENCY`] tenants at a time; timed to
/// the last file.
async fn floor(authority: &str, tenants: usize, dir: &Path) -> Result<Duration, common::BoxError> {
    std::fs::create_dir_all(dir)?;
    let started = Instant::now();
    let http = reqwest::Client::builder().no_proxy().build()?;
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..CONCURRENCY {
        let (http, next) = (http.clone(), Arc::clone(&next));
        let (authority, dir) = (authority.to_owned(), dir.to_owned());
        workers.spawn(async move {
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                if index >= tenants {
                    return Ok::<(), common::BoxError>(());
                }
                let (value, _) = common::floor_fetch(&http, &authority, index).await?;
                let path = dir.join(format!("t{index}.json"));
                tokio::task::spawn_blocking(move || {
                    powerbi_tokend::sink::file::write_atomic(&path, value.as_bytes(), 0o600)
                })
                .await??;
            }
        });
    }
    while let Some(joined) = workers.join_next().await {
        joined??;
    }
    Ok(started.elapsed())
}

fn config_text(authority: &str, tokens: &Path, tenants: usize, admin_port: u16) -> String {
    let mut text = format!(
        "[server]\nlisten = \"127.0.0.1:{admin_port}\"\n\n[defaults]\nauthority_host = \"{authority}\"\nclient_id = \"{CLIENT_ID}\"\nclient_secret = {{ env = \"BENCH_SECRET\" }}\nsinks = [ {{ type = \"file\", path = \"{}/{{name}}.json\" }} ]\n",
        tokens.display()
    );
    for i in 0..tenants {
        text.push_str(&format!(
            "\n[[tenant]]\nname = \"t{i}\"\ntenant_id = \"t{i}.example.com\"\n"
        ));
    }
    text
}

/// What four scrapes in a row cost.
struct Scrape {
    /// Size of the last one.
    bytes: usize,
    /// The slowest, request to last byte.
    slowest: Duration,
    /// The daemon's CPU seconds per scrape.
    cpu_each: f64,
    /// The daemon's RSS before the first (after the reload that set the mode), in KiB.
    rss_before_kib: u64,
    /// The daemon's RSS after the last, in KiB.
    rss_after_kib: u64,
}

fn scrape(
    runtime: &tokio::runtime::Runtime,
    admin_port: u16,
    pid: u32,
) -> Result<Scrape, common::BoxError> {
    let rss_before_kib = read_status_kib(pid, "VmRSS:")?;
    let cpu_before = cpu_seconds(pid)?;
    let mut bytes = 0;
    let mut slowest = Duration::ZERO;
    for _ in 0..4 {
        let started = Instant::now();
        bytes = get_metrics(runtime, admin_port)?.len();
        slowest = slowest.max(started.elapsed());
    }
    Ok(Scrape {
        bytes,
        slowest,
        cpu_each: (cpu_seconds(pid)? - cpu_before) / 4.0,
        rss_before_kib,
        rss_after_kib: read_status_kib(pid, "VmRSS:")?,
    })
}

fn get_metrics(
    runtime: &tokio::runtime::Runtime,
    admin_port: u16,
) -> Result<String, common::BoxError> {
    Ok(runtime.block_on(async {
        let client = reqwest::Client::builder().no_proxy().build()?;
        client
            .get(format!("http://127.0.0.1:{admin_port}/metrics"))
            .send()
            .await?
            .text()
            .await
    })?)
}

/// Rewrites the config's `[server] per_tenant_metrics`, leaving the rest as it is.
fn set_per_tenant_metrics(config: &Path, mode: &str) -> Result<(), common::BoxError> {
    let text = std::fs::read_to_string(config)?;
    let kept: Vec<&str> = text
        .lines()
        .filter(|line| !line.starts_with("per_tenant_metrics = "))
        .collect();
    let text = kept.join("\n").replacen(
        "[server]\n",
        &format!("[server]\nper_tenant_metrics = \"{mode}\"\n"),
        1,
    );
    std::fs::write(config, text + "\n")?;
    Ok(())
}

fn count_tokens(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
                .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
                .count()
        })
        .unwrap_or(0)
}

/// utime + stime of a process, in seconds.
fn cpu_seconds(pid: u32) -> Result<f64, common::BoxError> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let after = stat.rsplit_once(')').ok_or("malformed stat")?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
    let hz = Command::new("getconf").arg("CLK_TCK").output()?;
    let hz: f64 = String::from_utf8(hz.stdout)?.trim().parse()?;
    Ok(ticks as f64 / hz)
}
