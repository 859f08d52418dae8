//! Benchmark: TENANTS tenants written to Redis only, against the file sink, in the same run.
//!
//! ```text
//! cargo build --release && cargo run --release --example bench_redis -- [TENANTS]
//! ```
//!
//! The release daemon must be built first (`cargo build --release`): this example runs
//! `target/release/powerbi-tokend`, found next to its own directory, and stops with a message if
//! it is missing. `redis-server` must be on the `PATH`.
//!
//! Starts the simulated Entra ID in this process with TENANTS tenants (default 10000) whose
//! tokens live one hour (nothing refreshes twice), and a `redis-server` of its own on a free
//! loopback port without persistence. Then it runs the daemon as a child process
//! (`run --config <file> --log-format json`, 16 requests in flight) once per sink setup:
//!
//! * `file`: every tenant writes `<tmp>/tokens/{name}.json`;
//! * `redis`: every tenant writes only the key `powerbi-tokend:{name}`;
//! * `file+redis`: both.
//!
//! For each run it reports the cold start (from spawn until `/readyz`, polled every 50 ms, is
//! 200 and `/metrics` then shows `powerbi_tokend_tenants{state="healthy"}` equal to TENANTS),
//! the child's peak RSS
//! (`VmHWM`) and RSS (`VmRSS`) read just before it is stopped with SIGTERM, and a check that the
//! work was done (token files counted, `DBSIZE` of Redis, which is flushed between runs). Token
//! files go to `$TMPDIR` (default `/tmp`); set `TMPDIR=/dev/shm` to measure on tmpfs.
//!
//! The floor is the least work the Redis run needs, measured in the same run, in this process:
//! for each tenant one token request to the simulator, its JSON parsed, and one
//! `SET key value PX ttl` on a single multiplexed Redis connection, 16 tenants at a time, timed
//! from the start to the last `SET`. The ratios printed are the Redis run against that floor,
//! and the Redis run against the file run.
//!
//! The scrapes of `/metrics` (only once the daemon is ready: each renders every tenant's series)
//! are counted and printed under the table.

use std::fs::File;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use powerbi_tokend_sim::{SimApp, SimEntra, SimTenant};

mod common;
use common::{CLIENT_ID, SECRET, daemon_binary, read_status_kib};
use redis::aio::MultiplexedConnection;

use common::BoxError;

const LIFETIME: Duration = Duration::from_secs(3600);
/// Requests in flight: the daemon's `max_concurrent_requests`, and the floor's workers.
const CONCURRENCY: usize = 16;
const KEY_PREFIX: &str = "powerbi-tokend:";
/// How often `/readyz` is polled during a cold start.
const POLL: Duration = Duration::from_millis(50);
/// A cold start that takes longer than this is reported as a failure.
const COLD_START_LIMIT: Duration = Duration::from_secs(600);
/// How long a SIGTERM'd daemon may take to exit before it is killed.
const STOP_LIMIT: Duration = Duration::from_secs(60);

/// Which sinks every tenant writes in one run.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Sinks {
    File,
    Redis,
    FileAndRedis,
}

impl Sinks {
    fn label(self) -> &'static str {
        match self {
            Sinks::File => "file",
            Sinks::Redis => "redis",
            Sinks::FileAndRedis => "file+redis",
        }
    }

    fn writes_files(self) -> bool {
        self != Sinks::Redis
    }

    fn writes_redis(self) -> bool {
        self != Sinks::File
    }
}

/// What one daemon run measured.
struct Measured {
    sinks: Sinks,
    cold_start: Duration,
    peak_kib: u64,
    rss_kib: u64,
    check: String,
    scrapes: usize,
    scrape_bytes: usize,
    exit: ExitStatus,
    /// Lines the daemon logged (RUST_LOG=warn: warnings and errors).
    log_lines: usize,
}

/// What the floor measured.
struct Floor {
    elapsed: Duration,
    keys: u64,
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("bench_redis: {err}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), BoxError> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let tenants: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(10_000);
    if tenants == 0 {
        return Err("TENANTS must be at least 1".into());
    }
    let binary = daemon_binary()?;
    redis_server_available()?;
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(bench(tenants, &binary))
}

async fn bench(tenants: usize, binary: &Path) -> Result<(), BoxError> {
    let sim = SimEntra::start().await?;
    for i in 0..tenants {
        sim.add_tenant(
            &format!("t{i}.example.com"),
            SimTenant::new(SimApp::new(CLIENT_ID, SECRET), LIFETIME),
        );
    }
    let work = tempfile::tempdir()?;
    let redis = RedisServer::start(&work.path().join("redis")).await?;
    let mut conn = redis::Client::open(redis.url.as_str())?
        .get_multiplexed_async_connection()
        .await?;
    println!("tenants: {tenants}");
    println!("daemon: {}", binary.display());
    println!("redis-server: {} (pid {})", redis.url, redis.child.id());

    let mut runs = Vec::new();
    for sinks in [Sinks::File, Sinks::Redis, Sinks::FileAndRedis] {
        flushall(&mut conn).await?;
        let measured = run_daemon(
            binary,
            &sim.authority_host(),
            tenants,
            sinks,
            &redis.url,
            work.path(),
            &mut conn,
        )
        .await?;
        runs.push(measured);
    }
    flushall(&mut conn).await?;
    let elapsed = floor(&sim.authority_host(), tenants, &redis.url).await?;
    let floor = Floor {
        elapsed,
        keys: dbsize(&mut conn).await?,
    };
    flushall(&mut conn).await?;

    print_table(tenants, &runs, &floor);
    Ok(())
}

/// Runs the release daemon with one sink setup until every tenant is healthy, then stops it.
async fn run_daemon(
    binary: &Path,
    authority: &str,
    tenants: usize,
    sinks: Sinks,
    redis_url: &str,
    work: &Path,
    conn: &mut MultiplexedConnection,
) -> Result<Measured, BoxError> {
    let dir = work.join(sinks.label());
    let tokens = dir.join("tokens");
    std::fs::create_dir_all(&dir)?;
    let admin_port = free_port()?;
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        config_text(authority, &tokens, tenants, admin_port, sinks, redis_url),
    )?;
    let log_path = dir.join("daemon.log");
    let log = File::create(&log_path)?;

    let started = Instant::now();
    let child = Command::new(binary)
        .args(["run", "--config"])
        .arg(&config)
        .args(["--log-format", "json"])
        .env("BENCH_SECRET", SECRET)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()?;
    let mut daemon = Daemon { child };
    let pid = daemon.child.id();

    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()?;
    let metrics = format!("http://127.0.0.1:{admin_port}/metrics");
    let readyz = format!("http://127.0.0.1:{admin_port}/readyz");
    let mut poll = tokio::time::interval(POLL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut scrapes = 0;
    let mut healthy = 0;
    let (cold_start, scrape_bytes) = loop {
        poll.tick().await;
        if let Some(status) = daemon.child.try_wait()? {
            return Err(format!(
                "{} run: the daemon exited early ({status}); the end of its log:\n{}",
                sinks.label(),
                log_tail(&log_path)
            )
            .into());
        }
        // Connection refused until the admin server listens. `/readyz` turns 200 once every
        // tenant has had its first attempt; it is cheap, unlike a scrape of every tenant's
        // series, which is only taken then, to count the healthy ones.
        let ready = client
            .get(&readyz)
            .send()
            .await
            .is_ok_and(|response| response.status().is_success());
        if ready
            && let Ok(response) = client.get(&metrics).send().await
            && let Ok(body) = response.text().await
        {
            scrapes += 1;
            healthy = healthy_tenants(&body).unwrap_or(0);
            if healthy >= tenants {
                break (started.elapsed(), body.len());
            }
        }
        if started.elapsed() > COLD_START_LIMIT {
            return Err(format!(
                "{} run: {healthy} of {tenants} tenants healthy after {} s; the end of its log:\n{}",
                sinks.label(),
                COLD_START_LIMIT.as_secs(),
                log_tail(&log_path)
            )
            .into());
        }
    };

    let mut checks = Vec::new();
    if sinks.writes_files() {
        let files = count_token_files(&tokens);
        checks.push(check_text(files as u64, tenants, "files"));
    }
    if sinks.writes_redis() {
        let keys = dbsize(conn).await?;
        checks.push(check_text(keys, tenants, "keys"));
    }
    let rss_kib = read_status_kib(pid, "VmRSS:")?;
    let peak_kib = read_status_kib(pid, "VmHWM:")?;
    let exit = daemon.stop().await?;
    let log_lines = std::fs::read_to_string(&log_path)?.lines().count();
    Ok(Measured {
        sinks,
        cold_start,
        peak_kib,
        rss_kib,
        check: checks.join(", "),
        scrapes,
        scrape_bytes,
        exit,
        log_lines,
    })
}

/// The least work the Redis run needs: per tenant one token request, its JSON parsed, one SET
/// with the token's lifetime, CONCURRENCY tenants at a time on one multiplexed connection.
async fn floor(authority: &str, tenants: usize, redis_url: &str) -> Result<Duration, BoxError> {
    let started = Instant::now();
    let http = reqwest::Client::builder().no_proxy().build()?;
    let conn = redis::Client::open(redis_url)?
        .get_multiplexed_async_connection()
        .await?;
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..CONCURRENCY {
        let http = http.clone();
        let mut conn = conn.clone();
        let next = Arc::clone(&next);
        let authority = authority.to_owned();
        workers.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= tenants {
                    return Ok::<(), BoxError>(());
                }
                floor_tenant(&http, &mut conn, &authority, i).await?;
            }
        });
    }
    while let Some(joined) = workers.join_next().await {
        joined??;
    }
    Ok(started.elapsed())
}

async fn floor_tenant(
    http: &reqwest::Client,
    conn: &mut MultiplexedConnection,
    authority: &str,
    index: usize,
) -> Result<(), BoxError> {
    let (value, expires_in) = common::floor_fetch(http, authority, index).await?;
    redis::cmd("SET")
        .arg(format!("{KEY_PREFIX}t{index}"))
        .arg(value)
        .arg("PX")
        .arg(expires_in.max(1) * 1000)
        .query_async::<()>(conn)
        .await?;
    Ok(())
}

fn print_table(tenants: usize, runs: &[Measured], floor: &Floor) {
    let mib = |kib: u64| kib as f64 / 1024.0;
    println!();
    println!(
        "{:<14}{:>11}{:>19}{:>12}   check",
        "sink", "cold start", "peak RSS (VmHWM)", "RSS after"
    );
    for run in runs {
        println!(
            "{:<14}{:>9.2} s{:>15.1} MiB{:>8.1} MiB   {}",
            run.sinks.label(),
            run.cold_start.as_secs_f64(),
            mib(run.peak_kib),
            mib(run.rss_kib),
            run.check
        );
    }
    println!(
        "{:<14}{:>9.2} s{:>19}{:>12}   {}",
        "floor (redis)",
        floor.elapsed.as_secs_f64(),
        "-",
        "-",
        check_text(floor.keys, tenants, "keys")
    );
    let find = |sinks: Sinks| runs.iter().find(|run| run.sinks == sinks);
    if let (Some(file), Some(redis)) = (find(Sinks::File), find(Sinks::Redis)) {
        println!(
            "ratio redis/floor: {:.2}; redis/file cold start {:.2}, peak RSS {:.2}",
            redis.cold_start.as_secs_f64() / floor.elapsed.as_secs_f64().max(1e-3),
            redis.cold_start.as_secs_f64() / file.cold_start.as_secs_f64().max(1e-3),
            redis.peak_kib as f64 / file.peak_kib.max(1) as f64
        );
    }
    for run in runs {
        println!(
            "{}: {} scrapes of /metrics while starting (last {:.1} KiB); exit after SIGTERM: {}; {} warning/error log lines",
            run.sinks.label(),
            run.scrapes,
            run.scrape_bytes as f64 / 1024.0,
            run.exit,
            run.log_lines
        );
    }
}

fn check_text(found: u64, tenants: usize, what: &str) -> String {
    if found == tenants as u64 {
        format!("{found} {what}")
    } else {
        format!("{found} {what} (expected {tenants})")
    }
}

fn config_text(
    authority: &str,
    tokens: &Path,
    tenants: usize,
    admin_port: u16,
    sinks: Sinks,
    redis_url: &str,
) -> String {
    let file = format!(
        "{{ type = \"file\", path = \"{}/{{name}}.json\" }}",
        tokens.display()
    );
    let redis = format!("{{ type = \"redis\", key = \"{KEY_PREFIX}{{name}}\" }}");
    let (sink_list, redis_section) = match sinks {
        Sinks::File => (file, String::new()),
        Sinks::Redis => (redis, format!("[redis]\nurl = \"{redis_url}\"\n\n")),
        Sinks::FileAndRedis => (
            format!("{file}, {redis}"),
            format!("[redis]\nurl = \"{redis_url}\"\n\n"),
        ),
    };
    let mut text = format!(
        "[server]\nlisten = \"127.0.0.1:{admin_port}\"\n\n\
         [daemon]\nmax_concurrent_requests = {CONCURRENCY}\n\n\
         {redis_section}\
         [defaults]\nclient_id = \"{CLIENT_ID}\"\nclient_secret = {{ env = \"BENCH_SECRET\" }}\n\
         authority_host = \"{authority}\"\nsinks = [ {sink_list} ]\n"
    );
    for i in 0..tenants {
        text.push_str(&format!(
            "\n[[tenant]]\nname = \"t{i}\"\ntenant_id = \"t{i}.example.com\"\n"
        ));
    }
    text
}

/// `powerbi_tokend_tenants{state="healthy"}` from a Prometheus text scrape.
fn healthy_tenants(metrics: &str) -> Option<usize> {
    metrics.lines().find_map(|line| {
        let value = line.strip_prefix("powerbi_tokend_tenants{state=\"healthy\"} ")?;
        let value: f64 = value.trim().parse().ok()?;
        Some(value as usize)
    })
}

fn redis_server_available() -> Result<(), BoxError> {
    match Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
    {
        Ok(_) => Ok(()),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Err(
            "redis-server not found on the PATH; this benchmark starts its own (install Redis, e.g. apt-get install redis-server)"
                .into(),
        ),
        Err(err) => Err(format!("cannot run redis-server: {err}").into()),
    }
}

/// A loopback port that was free a moment ago.
fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A `redis-server` of this benchmark's own, killed when dropped (error paths included).
struct RedisServer {
    child: Child,
    url: String,
}

impl RedisServer {
    async fn start(dir: &Path) -> Result<RedisServer, BoxError> {
        std::fs::create_dir_all(dir)?;
        let port = free_port()?;
        let log = File::create(dir.join("redis.log"))?;
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port"])
            .arg(port.to_string())
            .args(["--save", "", "--appendonly", "no", "--dir"])
            .arg(dir)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(Stdio::null())
            .spawn()?;
        let mut server = RedisServer {
            child,
            url: format!("redis://127.0.0.1:{port}"),
        };
        let started = Instant::now();
        loop {
            if let Some(status) = server.child.try_wait()? {
                return Err(format!(
                    "redis-server exited at start ({status}); the end of its log:\n{}",
                    log_tail(&dir.join("redis.log"))
                )
                .into());
            }
            if ping(&server.url).await.is_ok() {
                return Ok(server);
            }
            if started.elapsed() > Duration::from_secs(10) {
                return Err("redis-server did not answer PING within 10 s".into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The daemon child, killed when dropped unless it was stopped.
struct Daemon {
    child: Child,
}

impl Daemon {
    /// SIGTERM, then wait for the exit (SIGKILL after STOP_LIMIT).
    async fn stop(&mut self) -> Result<ExitStatus, BoxError> {
        let pid = i32::try_from(self.child.id())?;
        let pid = rustix::process::Pid::from_raw(pid).ok_or("daemon pid 0")?;
        rustix::process::kill_process(pid, rustix::process::Signal::TERM)?;
        let asked = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if asked.elapsed() > STOP_LIMIT {
                self.child.kill()?;
                return Err(format!(
                    "the daemon did not exit within {} s of SIGTERM",
                    STOP_LIMIT.as_secs()
                )
                .into());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

async fn ping(url: &str) -> Result<(), BoxError> {
    let mut conn = redis::Client::open(url)?
        .get_multiplexed_async_connection()
        .await?;
    redis::cmd("PING").query_async::<String>(&mut conn).await?;
    Ok(())
}

async fn flushall(conn: &mut MultiplexedConnection) -> Result<(), BoxError> {
    redis::cmd("FLUSHALL").query_async::<()>(conn).await?;
    Ok(())
}

async fn dbsize(conn: &mut MultiplexedConnection) -> Result<u64, BoxError> {
    Ok(redis::cmd("DBSIZE").query_async::<u64>(conn).await?)
}

fn count_token_files(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| {
                    let name = e.file_name();
                    let name = name.to_string_lossy();
                    name.ends_with(".json") && !name.starts_with('.')
                })
                .count()
        })
        .unwrap_or(0)
}

/// The last lines of a log, for an error message (the log itself is in the temporary
/// directory, which is removed when the benchmark exits).
fn log_tail(path: &Path) -> String {
    const LINES: usize = 20;
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let lines: Vec<&str> = text.lines().collect();
            let tail = lines[lines.len().saturating_sub(LINES)..].join("\n");
            if tail.is_empty() {
                "(empty)".to_owned()
            } else {
                tail
            }
        }
        Err(err) => format!("(cannot read {}: {err})", path.display()),
    }
}
