//! Outages of one sink, seen from outside the real binary with many tenants: a frozen Redis
//! must not hold back token requests or file writes, and a token directory that cannot be
//! written for a while gets the token in hand as soon as it can, without asking Entra again.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use common::process::{Spawned, signal_pid, status_json};
use common::redis_server::RedisServer;
use common::*;

/// Seconds each simulated token lives (the figure the outside reports used).
const LIFETIME: Duration = Duration::from_secs(30);

/// `[defaults]` jitter: each tenant refreshes at 0.4–0.6 of the lifetime after its first token.
const JITTER: f64 = 0.1;

/// The config of `count` tenants `t000`… writing `<dir>/tokens/<name>.json` (and their Redis
/// key when `redis` is set), with the daemon's default retry settings.
fn write_config(
    path: &Path,
    sim: &powerbi_tokend_sim::SimEntra,
    count: usize,
    redis: Option<&str>,
) {
    let mut text = String::from("[server]\nlisten = \"127.0.0.1:0\"\n\n");
    let mut sinks = String::from("{ type = \"file\", path = \"tokens/{name}.json\" }");
    if let Some(url) = redis {
        text.push_str(&format!("[redis]\nurl = \"{url}\"\n\n"));
        sinks.push_str(", { type = \"redis\" }");
    }
    text.push_str(&format!(
        "[defaults]\nclient_id = \"{CLIENT_ID}\"\nclient_secret = {{ env = \"TEST_SECRET\" }}\nauthority_host = \"{}\"\njitter = {JITTER}\nsinks = [ {sinks} ]\n",
        sim.authority_host()
    ));
    for name in names(count) {
        text.push_str(&format!(
            "\n[[tenant]]\nname = \"{name}\"\ntenant_id = \"{name}.example.com\"\n"
        ));
    }
    std::fs::write(path, text).unwrap();
}

fn names(count: usize) -> Vec<String> {
    (0..count).map(|i| format!("t{i:03}")).collect()
}

/// A simulator knowing `count` tenants with [`LIFETIME`] tokens.
async fn simulator(count: usize) -> Fixture {
    let ids: Vec<String> = names(count)
        .iter()
        .map(|name| format!("{name}.example.com"))
        .collect();
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    fixture(&ids, LIFETIME).await
}

/// What one look at every token file found: per tenant, the access token and the file's mtime.
fn look(dir: &Path, names: &[String]) -> Vec<Option<(String, SystemTime)>> {
    names
        .iter()
        .map(|name| {
            let path = dir.join(format!("{name}.json"));
            let modified = std::fs::metadata(&path).and_then(|m| m.modified()).ok()?;
            Some((token_in(&path)?, modified))
        })
        .collect()
}

/// Every token each tenant's file held, in order, with the mtime of the file when it was first
/// seen holding it; and the simulator's request count over time. Sampled every 50 ms.
#[derive(Default)]
struct Watch {
    tokens: HashMap<String, Vec<(String, SystemTime)>>,
    requests: Vec<(Instant, u64)>,
}

impl Watch {
    async fn sample(&mut self, sim: &powerbi_tokend_sim::SimEntra, dir: &Path, names: &[String]) {
        self.requests.push((Instant::now(), sim.total_requests()));
        let (dir, list) = (dir.to_owned(), names.to_vec());
        let seen = tokio::task::spawn_blocking(move || look(&dir, &list))
            .await
            .unwrap();
        for (name, seen) in names.iter().zip(seen) {
            let Some((token, modified)) = seen else {
                continue;
            };
            let history = self.tokens.entry(name.clone()).or_default();
            if history.last().is_none_or(|(last, _)| *last != token) {
                history.push((token, modified));
            }
        }
    }

    /// Samples for `length`.
    async fn run_for(
        &mut self,
        length: Duration,
        sim: &powerbi_tokend_sim::SimEntra,
        dir: &Path,
        names: &[String],
    ) {
        let start = Instant::now();
        while start.elapsed() < length {
            self.sample(sim, dir, names).await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Token requests in each whole second of `[from, from + seconds)`.
    fn requests_per_second(&self, from: Instant, seconds: u64) -> Vec<u64> {
        let at = |when: Instant| {
            self.requests
                .iter()
                .find(|(sampled, _)| *sampled >= when)
                .map_or(u64::MAX, |(_, count)| *count)
        };
        (0..seconds)
            .map(|second| {
                let start = from + Duration::from_secs(second);
                at(start + Duration::from_secs(1)).saturating_sub(at(start))
            })
            .collect()
    }

    /// How late each file write after a tenant's second token came, by its stable period
    /// (the first refresh has a random phase): `(tenant, written at, late by)`, for writes after
    /// `since`.
    fn lateness(&self, since: SystemTime) -> Vec<(String, SystemTime, f64)> {
        let mut late = Vec::new();
        for (name, history) in &self.tokens {
            let fraction = 0.5 + powerbi_tokend::schedule::tenant_jitter(name, JITTER);
            let period = LIFETIME.as_secs_f64() * fraction;
            for pair in history.windows(2).skip(1) {
                let (_, before) = &pair[0];
                let (_, after) = &pair[1];
                if *after < since {
                    continue;
                }
                let gap = after
                    .duration_since(*before)
                    .unwrap_or_default()
                    .as_secs_f64();
                late.push((name.clone(), *after, gap - period));
            }
        }
        late
    }
}

/// Runs the binary on `config` (its log beside it) and watches until every tenant's token file
/// is there.
async fn start(
    config: &Path,
    sim: &powerbi_tokend_sim::SimEntra,
    tokens: &Path,
    names: &[String],
) -> (Spawned, Watch) {
    let daemon = Spawned::run(
        config,
        &config.with_file_name("daemon.log"),
        "info",
        &[("TEST_SECRET", SECRET)],
    );
    let mut watch = Watch::default();
    let start = Instant::now();
    while watch.tokens.len() < names.len() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "only {} of {} token files after 20 s",
            watch.tokens.len(),
            names.len()
        );
        watch.sample(sim, tokens, names).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (daemon, watch)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(has_redis_server),
    ignore = "skipped: needs redis-server (Debian package redis-server)"
)]
async fn a_frozen_redis_holds_back_no_token_request_and_no_file_write() {
    const TENANTS: usize = 200;
    let Fixture { sim, dir } = simulator(TENANTS).await;
    let server = RedisServer::start(&dir.path().join("redis"), &[]);
    let config = dir.path().join("config.toml");
    write_config(&config, &sim, TENANTS, Some(&server.url()));
    let tokens = dir.path().join("tokens");
    let names = names(TENANTS);
    let (daemon, mut watch) = start(&config, &sim, &tokens, &names).await;
    // Tenants make their first refresh at a random point of 25-75 % of the lifetime, their
    // second one period (40-60 %) later: the freeze covers both kinds.
    watch
        .run_for(Duration::from_secs(12), &sim, &tokens, &names)
        .await;

    // SIGSTOP: the server accepts connections (the kernel does) but answers nothing.
    signal_pid(server.pid(), "STOP");
    let frozen = Instant::now();
    let frozen_at = SystemTime::now();
    watch
        .run_for(Duration::from_secs(20), &sim, &tokens, &names)
        .await;
    signal_pid(server.pid(), "CONT");
    let thawed_at = SystemTime::now();
    watch
        .run_for(Duration::from_secs(3), &sim, &tokens, &names)
        .await;

    let per_second = watch.requests_per_second(frozen, 20);
    println!("token requests per second while Redis was frozen: {per_second:?}");
    assert!(
        per_second.iter().all(|&count| count > 0),
        "seconds without a token request while Redis was frozen: {per_second:?}"
    );
    let late: Vec<_> = watch
        .lateness(frozen_at)
        .into_iter()
        .filter(|(_, at, _)| *at <= thawed_at)
        .collect();
    let worst = late.iter().map(|(_, _, by)| *by).fold(f64::MIN, f64::max);
    let over: Vec<_> = late.iter().filter(|(_, _, by)| *by > 1.0).collect();
    println!(
        "{} refreshes written to files while Redis was frozen; {} more than 1 s late; worst {worst:.2} s",
        late.len(),
        over.len()
    );
    assert!(
        late.len() >= 50,
        "only {} scheduled refreshes fell in the freeze: the test saw too little",
        late.len()
    );
    assert!(
        over.is_empty(),
        "file writes more than 1 s late while Redis was frozen: {over:?}"
    );

    // Redis answers again: every tenant is healthy and in Redis again.
    let addr = daemon.admin_addr().await;
    let start = Instant::now();
    loop {
        let status = status_json(addr).await;
        let healthy = status["tenants"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|tenant| tenant["state"] == "healthy")
            .count();
        if healthy == TENANTS {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "{healthy} of {TENANTS} healthy 15 s after Redis thawed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut conn = server.connection().await;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("powerbi-tokend:*")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(keys.len(), TENANTS, "{keys:?}");
    drop(daemon);
}

/// Replaces the token directory by a regular file (root may write any directory, so a mode
/// would not stop a test run as root): every write fails with "not a directory" until
/// [`Blocked::restore`].
struct Blocked {
    dir: PathBuf,
    aside: PathBuf,
}

impl Blocked {
    fn block(dir: &Path) -> Blocked {
        let aside = dir.with_extension("aside");
        std::fs::rename(dir, &aside).unwrap();
        std::fs::write(dir, b"not a directory").unwrap();
        Blocked {
            dir: dir.to_owned(),
            aside,
        }
    }

    fn restore(self) {
        std::fs::remove_file(&self.dir).unwrap();
        std::fs::rename(&self.aside, &self.dir).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_sink_outage_the_token_in_hand_is_written_again_at_once() {
    const TENANTS: usize = 100;
    let Fixture { sim, dir } = simulator(TENANTS).await;
    let config = dir.path().join("config.toml");
    write_config(&config, &sim, TENANTS, None);
    let tokens = dir.path().join("tokens");
    let names = names(TENANTS);
    let (daemon, mut watch) = start(&config, &sim, &tokens, &names).await;
    let addr = daemon.admin_addr().await;
    watch
        .run_for(Duration::from_secs(8), &sim, &tokens, &names)
        .await;

    // The directory cannot be written for 12 s: the refreshes falling due meanwhile fetch a
    // token and cannot write it.
    let requests_before: Vec<u64> = names
        .iter()
        .map(|name| sim.request_count(&format!("{name}.example.com")))
        .collect();
    let blocked = Blocked::block(&tokens);
    tokio::time::sleep(Duration::from_secs(12)).await;
    let status = status_json(addr).await;
    let failing = status["tenants"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|tenant| tenant["last_error"]["reason"] == "sink")
        .count();
    assert!(
        failing >= 10,
        "only {failing} tenants met the outage: the test saw too little"
    );
    blocked.restore();
    let restored = Instant::now();

    // Every tenant writes the token it holds soon (none is still failing): a write is tried
    // again at most a quarter of the file's token's remaining life later, and a first refresh
    // comes at 25-75 % of the lifetime, so at most 5.6 s apart here (give or take scheduling);
    // and for 10 s after that no file holds an expired token.
    loop {
        let status = status_json(addr).await;
        let failing: Vec<_> = status["tenants"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|tenant| tenant["state"] != "healthy")
            .map(|tenant| format!("{} {}", tenant["name"], tenant["state"]))
            .collect();
        if failing.is_empty() {
            break;
        }
        if restored.elapsed() > Duration::from_secs(6) {
            let log = daemon.log_text();
            let first = failing[0].split('"').nth(1).unwrap_or_default().to_owned();
            let lines: Vec<&str> = log
                .lines()
                .filter(|line| line.contains(&format!("\"tenant\":\"{first}\"")))
                .collect();
            panic!(
                "{} tenants still not healthy {:?} after the directory came back: {failing:?}; the log of {first}:\n{}",
                failing.len(),
                restored.elapsed(),
                lines.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "every tenant healthy again {:?} after the directory came back",
        restored.elapsed()
    );
    while restored.elapsed() < Duration::from_secs(16) {
        let now = powerbi_tokend::clock::unix_now();
        for name in &names {
            let expires_on = read_json(&tokens.join(format!("{name}.json")))
                .and_then(|json| json["expires_on"].as_i64());
            assert!(
                expires_on.is_some_and(|expires_on| expires_on > now),
                "{name}'s file holds an expired token {:?} after the directory came back",
                restored.elapsed()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // No tenant asked Entra again for the token it held: in these 28 s, at a 12-18 s period,
    // its schedule asks at most three times.
    let extra: Vec<_> = names
        .iter()
        .zip(&requests_before)
        .filter_map(|(name, before)| {
            let asked = sim.request_count(&format!("{name}.example.com")) - before;
            (asked > 3).then(|| format!("{name}: {asked}"))
        })
        .collect();
    assert!(
        extra.is_empty(),
        "tenants that asked Entra again for the token they held: {extra:?}"
    );
    drop(daemon);
}
