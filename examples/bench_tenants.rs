//! Benchmark: the release daemon against the simulated Entra ID with many tenants, and the floor.
//!
//! ```text
//! cargo build --release && cargo build --release --example bench_tenants
//! target/release/examples/bench_tenants [TENANTS] [IDLE_SECONDS] [--tls] [--runs N] [--dir PATH]
//! ```
//!
//! Starts the simulator in this process, writes a config with TENANTS tenants (default 10000),
//! starts `target/release/powerbi-tokend run` as a child and reports, for the child alone:
//! the time from spawn until every token file exists, its peak RSS (VmHWM), and the CPU seconds it
//! uses over IDLE_SECONDS (default 60) of idling afterwards. Tokens live one hour, so no refresh
//! falls into the idle window. Then it scrapes `/metrics` four times, as Prometheus would, in each
//! `[server] per_tenant_metrics` mode (`all`, then `unhealthy` and `none` after a SIGHUP reload
//! each), and reports each mode's scrape size, latency and CPU cost, and the RSS afterwards.
//! Last, the floor in the
//! same run against the same simulator: per tenant one token request, its JSON parsed and the
//! daemon's own atomic write, 16 at a time; and the daemon/floor ratio of the cold start. The
//! floor runs twice per run: inside this process (sharing the simulator's runtime), and as a
//! process of its own started like the daemon (this binary, re-run with a hidden argument). Each
//! run also prints the CPU seconds the daemon, the floor process and the simulator used, and when
//! (and after how much CPU) the daemon sent its first token request: its start-up.
//!
//! * `--tls`: the simulator serves HTTPS with a CA and a `127.0.0.1` certificate made for this
//!   run. The daemon trusts the CA through `[daemon] ca_file`, the floor's client adds the same
//!   CA to its roots the same way (`tls_certs_merge`), so both pay for the same handshakes.
//! * `--runs N` (default 1): the daemon's cold start and the floor alternate N times (daemon,
//!   floor, daemon, floor, …), each on a fresh token directory, so a drift of the machine (disk,
//!   other load) falls on both alike. Each pair is printed, then the median daemon time, the
//!   median floor time and the median of the per-pair ratios. Peak RSS, idle CPU and the scrapes
//!   are measured once, in the first daemon run.
//! * `--dir PATH` (default: the system's temporary directory): where the token directories go,
//!   in a fresh directory under PATH that is removed at the end; e.g. `/dev/shm` for tmpfs or
//!   `/var/tmp` for the disk. Its file system type is printed.
//!
//! The cold start ends when the last token file exists. Until the simulator has answered as
//! many token requests as there are tenants, only its request counter is watched; the token
//! directory is listed (every 5 ms) only after that, so listing 10,000 files does not take CPU
//! from the daemon it measures. Before each timed phase, `sync` flushes the previous phase's
//! writes, and each phase's token directory is removed after its pair, so neither lands on the
//! next.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use powerbi_tokend_sim::{SimApp, SimEntra, SimTenant};

mod common;
use common::{BoxError, CLIENT_ID, SECRET, daemon_binary, read_status_kib};

/// Requests in flight: the daemon's default `max_concurrent_requests`, and the floor's workers.
const CONCURRENCY: usize = 16;

/// The longest a cold start (daemon or floor) may take before the benchmark gives up.
const COLD_START_LIMIT: Duration = Duration::from_secs(300);

const USAGE: &str = "usage: bench_tenants [TENANTS] [IDLE_SECONDS] [--tls] [--runs N] [--dir PATH]";

/// The command line.
struct Options {
    /// Tenants in the config and in the simulator.
    tenants: usize,
    /// Seconds of idling measured after the first cold start.
    idle: u64,
    /// Whether the simulator serves HTTPS.
    tls: bool,
    /// Daemon/floor pairs.
    runs: usize,
    /// Where the token directories go; `None` for the system's temporary directory.
    dir: Option<PathBuf>,
}

impl Options {
    fn parse(args: impl IntoIterator<Item = String>) -> Result<Options, BoxError> {
        let mut options = Options {
            tenants: 10_000,
            idle: 60,
            tls: false,
            runs: 1,
            dir: None,
        };
        let mut positional = 0;
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            let (flag, inline) = match arg.split_once('=') {
                Some((flag, value)) if flag.starts_with("--") => (flag.to_owned(), Some(value)),
                _ => (arg.clone(), None),
            };
            let mut value = |name: &str| {
                inline
                    .map(str::to_owned)
                    .or_else(|| args.next())
                    .ok_or_else(|| format!("{name} needs a value\n{USAGE}"))
            };
            match flag.as_str() {
                "--tls" => options.tls = true,
                "--runs" => {
                    options.runs = value("--runs")?.parse()?;
                    if options.runs == 0 {
                        return Err(format!("--runs must be at least 1\n{USAGE}").into());
                    }
                }
                "--dir" => options.dir = Some(PathBuf::from(value("--dir")?)),
                "-h" | "--help" => return Err(USAGE.into()),
                other if other.starts_with('-') => {
                    return Err(format!("unknown option {other}\n{USAGE}").into());
                }
                _ => {
                    match positional {
                        0 => options.tenants = arg.parse()?,
                        1 => options.idle = arg.parse()?,
                        _ => return Err(format!("unexpected argument {arg}\n{USAGE}").into()),
                    }
                    positional += 1;
                }
            }
        }
        Ok(options)
    }
}

/// What every cold start of the run shares.
struct Bench {
    /// The release daemon.
    binary: PathBuf,
    /// The simulated Entra ID, with every tenant registered.
    sim: SimEntra,
    /// Tenants in the config.
    tenants: usize,
    /// The CA file the daemon's config names and the floor trusts, with `--tls`.
    ca_file: Option<PathBuf>,
    /// The run's own directory under `--dir`: configs and token directories.
    work: PathBuf,
}

fn main() -> Result<(), BoxError> {
    let mut args = std::env::args().skip(1).peekable();
    if args.peek().map(String::as_str) == Some(FLOOR_CHILD) {
        return floor_child(args.skip(1).collect());
    }
    let options = Options::parse(std::env::args().skip(1))?;
    let tenants = options.tenants;
    let binary = daemon_binary()?;
    let runtime = tokio::runtime::Runtime::new()?;
    let work = match &options.dir {
        Some(dir) => tempfile::Builder::new()
            .prefix("bench_tenants.")
            .tempdir_in(dir)?,
        None => tempfile::Builder::new()
            .prefix("bench_tenants.")
            .tempdir()?,
    };
    let (sim, ca_file) = if options.tls {
        let pki = common::pki::loopback_pki()?;
        let ca_file = work.path().join("ca.pem");
        std::fs::write(&ca_file, &pki.ca_pem)?;
        let sim = runtime.block_on(SimEntra::start_tls(
            pki.cert_pem.as_bytes(),
            pki.key_pem.as_bytes(),
        ))?;
        (sim, Some(ca_file))
    } else {
        (runtime.block_on(SimEntra::start())?, None)
    };
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
    let bench = Bench {
        binary,
        sim,
        tenants,
        ca_file,
        work: work.path().to_owned(),
    };

    println!(
        "tenants: {tenants}, {}, runs: {}, binary: {}",
        if options.tls { "HTTPS" } else { "plain HTTP" },
        options.runs,
        bench.binary.display()
    );
    println!(
        "token directories under {} ({})",
        bench.work.display(),
        file_system(&bench.work).unwrap_or_else(|| "file system unknown".to_owned())
    );
    let mut pairs = Vec::with_capacity(options.runs);
    for run in 1..=options.runs {
        let idle = (run == 1).then_some(options.idle);
        sync()?;
        let own_before = cpu_seconds(std::process::id())?;
        let (daemon, daemon_cpu) = daemon_cold_start(&bench, &runtime, run, idle)?;
        let sim_cpu = cpu_seconds(std::process::id())? - own_before;
        sync()?;
        let own_before = cpu_seconds(std::process::id())?;
        let floor_dir = bench.work.join(format!("floor-{run}"));
        let floor = runtime.block_on(floor(
            &bench.sim.authority_host(),
            bench.ca_file.as_deref(),
            tenants,
            &floor_dir,
        ))?;
        let floor_cpu = cpu_seconds(std::process::id())? - own_before;
        sync()?;
        let child_dir = bench.work.join(format!("floor-process-{run}"));
        let own_before = cpu_seconds(std::process::id())?;
        let (floor_process, floor_process_cpu) = floor_process(&bench, &child_dir)?;
        let sim_cpu_child = cpu_seconds(std::process::id())? - own_before;
        println!(
            "  floor as its own process: {:.2} s, daemon/floor {:.2}; CPU {floor_process_cpu:.2} s (simulator meanwhile {sim_cpu_child:.2} s)",
            floor_process.as_secs_f64(),
            daemon.as_secs_f64() / floor_process.as_secs_f64()
        );
        std::fs::remove_dir_all(&child_dir)?;
        if count_tokens(&floor_dir) < tenants {
            return Err("the floor did not write every file".into());
        }
        let ratio = daemon.as_secs_f64() / floor.as_secs_f64().max(1e-9);
        println!(
            "run {run}/{}: daemon {:.2} s, floor (request, parse, the same atomic write; {CONCURRENCY} at a time) {:.2} s, daemon/floor {ratio:.2}",
            options.runs,
            daemon.as_secs_f64(),
            floor.as_secs_f64(),
        );
        println!(
            "  CPU: daemon {daemon_cpu:.2} s (simulator meanwhile {sim_cpu:.2} s); floor and simulator together {floor_cpu:.2} s"
        );
        pairs.push((daemon.as_secs_f64(), floor.as_secs_f64(), ratio));
        std::fs::remove_dir_all(bench.work.join(format!("daemon-{run}")))?;
        std::fs::remove_dir_all(&floor_dir)?;
    }
    if options.runs > 1 {
        let median_of = |pick: fn(&(f64, f64, f64)) -> f64| median(pairs.iter().map(pick));
        println!(
            "median of {} runs: daemon {:.2} s, floor {:.2} s, daemon/floor {:.2} (median of the per-run ratios)",
            options.runs,
            median_of(|pair| pair.0),
            median_of(|pair| pair.1),
            median_of(|pair| pair.2),
        );
    }
    drop(bench);
    drop(runtime);
    work.close()?;
    Ok(())
}

/// One cold start of the daemon on a fresh token directory `daemon-<run>`: spawn to the last
/// token file. With `idle` (the first run), also measures the idle CPU, the peak RSS and four
/// scrapes, and prints them. The daemon is stopped with SIGTERM before returning.
fn daemon_cold_start(
    bench: &Bench,
    runtime: &tokio::runtime::Runtime,
    run: usize,
    idle: Option<u64>,
) -> Result<(Duration, f64), BoxError> {
    let tenants = bench.tenants;
    let tokens = bench.work.join(format!("daemon-{run}"));
    let config = bench.work.join(format!("config-{run}.toml"));
    let admin_port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    std::fs::write(
        &config,
        config_text(
            &bench.sim.authority_host(),
            bench.ca_file.as_deref(),
            &tokens,
            tenants,
            admin_port,
        ),
    )?;

    let requests_before = bench.sim.total_requests();
    let started = Instant::now();
    // BENCH_WRAP runs the daemon under a profiler, e.g. "heaptrack" or "valgrind --tool=massif".
    let wrap = std::env::var("BENCH_WRAP").unwrap_or_default();
    let mut words = wrap.split_whitespace();
    let mut child = match words.next() {
        Some(program) => {
            let mut command = Command::new(program);
            command.args(words).arg(&bench.binary);
            command
        }
        None => Command::new(&bench.binary),
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
    let mut first_request = None;
    loop {
        if first_request.is_none() && bench.sim.total_requests() > requests_before {
            first_request = Some((started.elapsed(), cpu_seconds(pid)?));
        }
        // Listing the directory costs CPU the daemon would miss: wait on the simulator's
        // counter until every tenant has asked, then on the files.
        let asked = bench.sim.total_requests() - requests_before >= tenants as u64;
        if asked && count_tokens(&tokens) >= tenants {
            break;
        }
        if let Some(status) = child.try_wait()? {
            return Err(format!("daemon exited early: {status}").into());
        }
        if started.elapsed() > COLD_START_LIMIT {
            let _ = child.kill();
            return Err("not all token files were written within 300 s".into());
        }
        std::thread::sleep(Duration::from_millis(if asked { 5 } else { 10 }));
    }
    let all_written = started.elapsed();
    let cpu = cpu_seconds(pid)?;
    if let Some((at, cpu)) = first_request {
        println!(
            "  daemon: first token request after {:.2} s, {cpu:.2} CPU-s",
            at.as_secs_f64()
        );
    }
    if let Some(idle) = idle {
        idle_and_scrapes(bench, runtime, pid, admin_port, &config, idle, all_written)?;
    }

    Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status()?;
    let exit = child.wait()?;
    if idle.is_some() {
        println!("exit after SIGTERM: {exit}");
    } else if !exit.success() {
        return Err(format!("daemon exit after SIGTERM: {exit}").into());
    }
    Ok((all_written, cpu))
}

/// After a cold start: CPU over `idle` seconds, peak RSS, four scrapes of `/metrics`; printed.
fn idle_and_scrapes(
    bench: &Bench,
    runtime: &tokio::runtime::Runtime,
    pid: u32,
    admin_port: u16,
    config: &Path,
    idle: u64,
    all_written: Duration,
) -> Result<(), BoxError> {
    let tenants = bench.tenants;
    let requests_before_idle = bench.sim.total_requests();
    let rss_after_start = read_status_kib(pid, "VmRSS:")?;
    let cpu_start = cpu_seconds(pid)?;
    std::thread::sleep(Duration::from_secs(idle));
    let cpu_idle = cpu_seconds(pid)? - cpu_start;
    let peak_rss = read_status_kib(pid, "VmHWM:")?;
    let requests_during_idle = bench.sim.total_requests() - requests_before_idle;

    // Scrapes: what monitoring costs with this many tenants, in each `per_tenant_metrics` mode:
    // the config starts in the default ("all"), a reload (SIGHUP) switches to the next.
    let mut scrapes = Vec::new();
    for mode in ["all", "unhealthy", "none"] {
        if mode != "all" {
            set_per_tenant_metrics(config, mode)?;
            Command::new("kill")
                .arg("-HUP")
                .arg(pid.to_string())
                .status()?;
            let marker = format!("powerbi_tokend_per_tenant_metrics{{mode=\"{mode}\"}} 1");
            let reloaded = Instant::now();
            while !get_metrics(runtime, admin_port)?.contains(&marker) {
                if reloaded.elapsed() > Duration::from_secs(120) {
                    return Err(format!("the reload to {mode} did not show within 120 s").into());
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        scrapes.push((mode, scrape(runtime, admin_port, pid)?));
    }
    let rss_after_scrapes = read_status_kib(pid, "VmRSS:")?;
    let peak_with_scrapes = read_status_kib(pid, "VmHWM:")?;

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
    Ok(())
}

/// One token request per tenant, its JSON parsed, and the daemon's own atomic write (temp file,
/// fsync, rename, directory fsync) of the document, [`CONCURRENCY`] tenants at a time; timed to
/// the last file. With `ca_file`, the client trusts that CA on top of the system's roots, as the
/// daemon's client does with `[daemon] ca_file`.
async fn floor(
    authority: &str,
    ca_file: Option<&Path>,
    tenants: usize,
    dir: &Path,
) -> Result<Duration, BoxError> {
    std::fs::create_dir_all(dir)?;
    let started = Instant::now();
    let mut http = reqwest::Client::builder().no_proxy();
    if let Some(ca_file) = ca_file {
        http = http.tls_certs_merge(reqwest::Certificate::from_pem_bundle(&std::fs::read(
            ca_file,
        )?)?);
    }
    let http = http.build()?;
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..CONCURRENCY {
        let (http, next) = (http.clone(), Arc::clone(&next));
        let (authority, dir) = (authority.to_owned(), dir.to_owned());
        workers.spawn(async move {
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                if index >= tenants {
                    return Ok::<(), BoxError>(());
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
    let finished = tokio::time::timeout(COLD_START_LIMIT, async {
        while let Some(joined) = workers.join_next().await {
            joined??;
        }
        Ok::<(), BoxError>(())
    })
    .await;
    finished.map_err(|_| "the floor did not finish within 300 s")??;
    Ok(started.elapsed())
}

/// The hidden first argument that runs [`floor`] as a child process and exits.
const FLOOR_CHILD: &str = "--floor-child";

/// The floor in a process of its own, as the daemon runs: spawn to exit, and its CPU seconds.
fn floor_process(bench: &Bench, dir: &Path) -> Result<(Duration, f64), BoxError> {
    let started = Instant::now();
    let mut command = Command::new(std::env::current_exe()?);
    command
        .arg(FLOOR_CHILD)
        .arg(bench.sim.authority_host())
        .arg(bench.tenants.to_string())
        .arg(dir);
    if let Some(ca_file) = &bench.ca_file {
        command.arg(ca_file);
    }
    let output = command.stderr(Stdio::inherit()).output()?;
    let took = started.elapsed();
    if !output.status.success() {
        return Err(format!("the floor process failed: {}", output.status).into());
    }
    let cpu: f64 = String::from_utf8(output.stdout)?.trim().parse()?;
    Ok((took, cpu))
}

/// The child's side of [`floor_process`]: prints its own CPU seconds at the end.
fn floor_child(args: Vec<String>) -> Result<(), BoxError> {
    let [authority, tenants, dir, rest @ ..] = args.as_slice() else {
        return Err("floor child: AUTHORITY TENANTS DIR [CA_FILE]".into());
    };
    let ca_file = rest.first().map(PathBuf::from);
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(floor(
        authority,
        ca_file.as_deref(),
        tenants.parse()?,
        Path::new(dir),
    ))?;
    drop(runtime);
    println!("{}", cpu_seconds(std::process::id())?);
    Ok(())
}

fn config_text(
    authority: &str,
    ca_file: Option<&Path>,
    tokens: &Path,
    tenants: usize,
    admin_port: u16,
) -> String {
    let mut text = format!("[server]\nlisten = \"127.0.0.1:{admin_port}\"\n\n");
    if let Some(ca_file) = ca_file {
        text.push_str(&format!(
            "[daemon]\nca_file = \"{}\"\n\n",
            ca_file.display()
        ));
    }
    text.push_str(&format!(
        "[defaults]\nauthority_host = \"{authority}\"\nclient_id = \"{CLIENT_ID}\"\nclient_secret = {{ env = \"BENCH_SECRET\" }}\nsinks = [ {{ type = \"file\", path = \"{}/{{name}}.json\" }} ]\n",
        tokens.display()
    ));
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

/// The median; the mean of the middle two for an even count.
fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut values: Vec<f64> = values.collect();
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// Flushes every file system's dirty data, so one phase's writeback does not fall on the next.
fn sync() -> Result<(), BoxError> {
    let status = Command::new("sync").status()?;
    if !status.success() {
        return Err(format!("sync: {status}").into());
    }
    Ok(())
}

/// The type of the file system holding `path` ("tmpfs", "ext4", …): the longest mount point
/// in /proc/self/mountinfo that contains it.
fn file_system(path: &Path) -> Option<String> {
    let path = path.canonicalize().ok()?;
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    mountinfo
        .lines()
        .filter_map(|line| {
            // Fields: id parent dev root mount-point options [optional…] - type source options.
            let mount_point = line.split(' ').nth(4)?.replace("\\040", " ");
            let fs_type = line.split(" - ").nth(1)?.split(' ').next()?;
            path.starts_with(&mount_point)
                .then(|| (mount_point.len(), fs_type.to_owned()))
        })
        .max_by_key(|(length, _)| *length)
        .map(|(_, fs_type)| fs_type)
}

/// utime + stime of a process, in seconds.
fn cpu_seconds(pid: u32) -> Result<f64, BoxError> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let after = stat.rsplit_once(')').ok_or("malformed stat")?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
    let hz = Command::new("getconf").arg("CLK_TCK").output()?;
    let hz: f64 = String::from_utf8(hz.stdout)?.trim().parse()?;
    Ok(ticks as f64 / hz)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Options, BoxError> {
        Options::parse(args.iter().map(|arg| (*arg).to_owned()))
    }

    #[test]
    fn positional_arguments_and_options_mix() {
        let options = parse(&["2000", "--tls", "5", "--runs", "3", "--dir=/dev/shm"]).unwrap();
        assert_eq!((options.tenants, options.idle, options.runs), (2000, 5, 3));
        assert!(options.tls);
        assert_eq!(options.dir.as_deref(), Some(Path::new("/dev/shm")));
        let defaults = parse(&[]).unwrap();
        assert_eq!(
            (defaults.tenants, defaults.idle, defaults.runs),
            (10_000, 60, 1)
        );
        assert!(!defaults.tls && defaults.dir.is_none());
        assert!(parse(&["--runs", "0"]).is_err());
        assert!(parse(&["--runs"]).is_err());
        assert!(parse(&["--fast"]).is_err());
        assert!(parse(&["1", "2", "3"]).is_err());
    }

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median([3.0, 1.0, 2.0].into_iter()), 2.0);
        assert_eq!(median([4.0, 1.0, 3.0, 2.0].into_iter()), 2.5);
    }
}
