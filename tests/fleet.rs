//! Fleet mode end to end: three daemon processes, one real `redis-server`, one simulated Entra
//! ID and Power BI. Entra and Power BI must see about as many requests as a single daemon
//! causes, every replica's local files must stay valid, a replica killed with SIGKILL must not
//! stop any tenant, and without Redis every replica does every job itself.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use redis::AsyncCommands;

use common::process::{Spawned, entry, wait_for_status};
use common::redis_server::RedisServer;
use common::*;
use powerbi_tokend_sim::{PowerBiEndpoint, SimEntra};

const TENANTS: usize = 200;
const LIFETIME: Duration = Duration::from_secs(20);
const WINDOW: Duration = Duration::from_secs(60);
const LEASE_TTL: &str = "8s";

fn tenant_ids() -> Vec<String> {
    (0..TENANTS).map(|i| format!("f{i}.example.com")).collect()
}

/// The sections before the tenants: `[server]`, `[daemon]` and `[defaults]` (plus the keys in
/// `defaults`), every tenant writing `<files>/{name}.json`; in fleet mode through `redis`
/// (url, replica id) if given, `[redis]` (plus `redis_keys`) and `[fleet]`.
fn config_head(
    sim: &SimEntra,
    files: &Path,
    defaults: &str,
    redis: Option<(&str, &str)>,
    redis_keys: &str,
) -> String {
    let mut text = format!(
        r#"[server]
listen = "127.0.0.1:0"

[daemon]
request_timeout = "5s"
backoff_min = "200ms"
backoff_max = "2s"

[defaults]
client_id = "{CLIENT_ID}"
client_secret = {{ env = "TEST_SECRET" }}
authority_host = "{authority}"
sinks = [ {{ type = "file", path = "{files}/{{name}}.json" }} ]
{defaults}
"#,
        authority = sim.authority_host(),
        files = files.display(),
    );
    if let Some((url, replica)) = redis {
        text.push_str(&format!(
            r#"
[redis]
url = "{url}"
{redis_keys}

[fleet]
enabled = true
lease_ttl = "{LEASE_TTL}"
replica_id = "{replica}"
"#
        ));
    }
    text
}

/// A config whose tenants write `<files>/{name}.json`, in fleet mode through `redis` if given.
fn write_config(path: &Path, sim: &SimEntra, files: &Path, redis: Option<(&str, &str)>) {
    let mut text = config_head(sim, files, "", redis, "check_interval = \"5s\"");
    for (index, id) in tenant_ids().iter().enumerate() {
        text.push_str(&format!(
            "\n[[tenant]]\nname = \"f{index}\"\ntenant_id = \"{id}\"\n"
        ));
    }
    std::fs::write(path, text).unwrap();
}

/// One simulator for the fleet and one for the single daemon it is compared with, each knowing
/// `ids` with tokens of `lifetime`.
async fn two_simulators(ids: &[String], lifetime: Duration) -> (SimEntra, SimEntra) {
    init();
    let fleet = SimEntra::start().await.unwrap();
    let single = SimEntra::start().await.unwrap();
    for id in ids {
        register(&fleet, id, lifetime);
        register(&single, id, lifetime);
    }
    (fleet, single)
}

/// The writer of a config: (path, simulator, files, fleet's Redis URL and replica id).
type WriteConfig = fn(&Path, &SimEntra, &Path, Option<(&str, &str)>);

/// The single daemon the fleet is compared with: `write`'s config for `sim` without the fleet,
/// its files in `<dir>/single`, logging at `filter`.
fn start_single(
    dir: &Path,
    sim: &SimEntra,
    write: WriteConfig,
    filter: &str,
) -> (std::path::PathBuf, Spawned) {
    let files = dir.join("single");
    let config = dir.join("single.toml");
    write(&config, sim, &files, None);
    let log = dir.join("single.log");
    let process = Spawned::run(&config, &log, filter, &[("TEST_SECRET", SECRET)]);
    (files, process)
}

/// Three replicas (`replica-0` to `replica-2`) of `write`'s config in fleet mode through the
/// Redis at `url`, each writing its files to `<dir>/<replica>`, logging at INFO: (name, files,
/// process).
fn start_replicas(
    dir: &Path,
    sim: &SimEntra,
    url: &str,
    write: WriteConfig,
) -> Vec<(String, std::path::PathBuf, Spawned)> {
    (0..3)
        .map(|index| {
            let name = format!("replica-{index}");
            let config = dir.join(format!("{name}.toml"));
            let files = dir.join(&name);
            write(&config, sim, &files, Some((url, &name)));
            let log = dir.join(format!("{name}.log"));
            let process = Spawned::run(&config, &log, "info", &[("TEST_SECRET", SECRET)]);
            (name, files, process)
        })
        .collect()
}

fn simulated_entra_requests(sim: &SimEntra) -> u64 {
    tenant_ids().iter().map(|id| sim.request_count(id)).sum()
}

/// Every tenant's file in `files` holds a token that has not expired.
fn check_files(files: &Path, replica: &str) {
    let now = powerbi_tokend::clock::unix_now();
    for index in 0..TENANTS {
        let path = files.join(format!("f{index}.json"));
        let json = read_json(&path)
            .unwrap_or_else(|| panic!("{replica}: {} is missing or torn", path.display()));
        let expires_on = json["expires_on"].as_i64().unwrap();
        assert!(
            expires_on > now,
            "{replica}: f{index}'s file holds a token that expired {} s ago",
            now - expires_on
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(has_redis_server),
    ignore = "skipped: needs redis-server (Debian package redis-server)"
)]
async fn three_replicas_ask_entra_once_per_refresh_and_survive_a_kill() {
    let dir = tempfile::tempdir().unwrap();
    let (fleet_sim, single_sim) = two_simulators(&tenant_ids(), LIFETIME).await;
    let server = RedisServer::start(&dir.path().join("redis"), &[]);
    let url = server.url();

    // The reference: one daemon alone, same tenants, same window, its own simulated Entra.
    let (single_files, mut single) = start_single(
        dir.path(),
        &single_sim,
        write_config,
        "warn,powerbi_tokend::http=info,powerbi_tokend=info",
    );
    let mut replicas = start_replicas(dir.path(), &fleet_sim, &url, write_config);
    let started = Instant::now();
    let mut addrs = Vec::new();
    for (name, _, process) in &replicas {
        let addr = process.admin_addr().await;
        wait_for_status(
            addr,
            &format!("{name}: every tenant healthy"),
            Duration::from_secs(30),
            |status| {
                status["tenants"].as_array().is_some_and(|t| {
                    t.len() == TENANTS && t.iter().all(|t| t["state"] == "healthy")
                })
            },
        )
        .await;
        addrs.push(addr);
    }
    let single_addr = single.admin_addr().await;
    wait_for_status(
        single_addr,
        "the single daemon healthy",
        Duration::from_secs(30),
        |status| {
            status["tenants"]
                .as_array()
                .is_some_and(|t| t.len() == TENANTS && t.iter().all(|t| t["state"] == "healthy"))
        },
    )
    .await;

    // Half-way, replica-2 dies with SIGKILL.
    let mut killed_at = None;
    let mut checks = 0;
    while started.elapsed() < WINDOW {
        for (name, files, process) in &replicas {
            if killed_at.is_some() && name == "replica-2" {
                continue;
            }
            let _ = process;
            check_files(files, name);
        }
        check_files(&single_files, "single");
        checks += 1;
        if killed_at.is_none() && started.elapsed() >= WINDOW / 2 {
            let (_, _, victim) = &mut replicas[2];
            victim.child.kill().unwrap();
            victim.child.wait().unwrap();
            killed_at = Some(Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(checks >= 60, "only {checks} rounds of file checks");

    // After the kill every tenant was refreshed again by the survivors: the shared token of each
    // tenant was issued after the kill (one refresh cycle is about 10 s, plus at most a lease).
    let killed_at = killed_at.expect("replica-2 was killed");
    let since_kill = killed_at.elapsed();
    assert!(since_kill > Duration::from_secs(20), "{since_kill:?}");
    let kill_unix = powerbi_tokend::clock::unix_now() - since_kill.as_secs() as i64;
    let mut conn = server.connection().await;
    for index in 0..TENANTS {
        let shared: String = conn
            .get(format!("powerbi-tokend:fleet:{{f{index}}}:token"))
            .await
            .unwrap();
        let shared: serde_json::Value = serde_json::from_str(&shared).unwrap();
        assert!(
            shared["issued_on"].as_i64().unwrap() >= kill_unix,
            "f{index} was not refreshed after replica-2 died: {}",
            shared["issued_on"]
        );
        assert_ne!(shared["refreshed_by"], "replica-2", "f{index}");
    }
    let status = common::process::status_json(addrs[0]).await;
    let by = entry(&status, "f0")["refreshed_by"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(by == "replica-0" || by == "replica-1", "{by}");

    let fleet_requests = simulated_entra_requests(&fleet_sim);
    let single_requests = simulated_entra_requests(&single_sim);
    let ratio = fleet_requests as f64 / single_requests as f64;
    println!(
        "Entra requests in {WINDOW:?}: three replicas {fleet_requests}, one daemon {single_requests}, ratio {ratio:.3}"
    );
    assert!(
        ratio <= 1.1,
        "three replicas asked {fleet_requests} times, one daemon {single_requests} (ratio {ratio:.3})"
    );
    let (_, metrics, _) = common::process::get(addrs[0], "/metrics", Duration::from_secs(5)).await;
    assert!(
        metrics.contains("powerbi_tokend_fleet_tokens_total{kind=\"token\",source=\"adopted\"}"),
        "{metrics}"
    );
    for (name, _, process) in replicas.iter_mut().take(2) {
        process.signal("TERM");
        let status = process.wait_exit(Duration::from_secs(15)).await;
        assert!(status.success(), "{name} exited with {status}");
    }
    single.signal("TERM");
    single.wait_exit(Duration::from_secs(15)).await;
}

// ---- The Power BI jobs: probes and embed tokens, once per fleet ----

const PBI_TENANTS: usize = 8;
/// Access token lifetime: refreshed every 3 s (`refresh_at` 0.5, `jitter` 0).
const PBI_LIFETIME: Duration = Duration::from_secs(6);
/// The measured window: five access token cycles.
const PBI_WINDOW: Duration = Duration::from_secs(15);
const REPORT: &str = "5b218778-0000-4b8a-9c7c-000000000004";
const OTHER_REPORT: &str = "6c329889-0000-4b8a-9c7c-000000000007";
const EMBEDS: [&str; 2] = ["sales", "finance"];

fn pbi_tenant_ids() -> Vec<String> {
    (0..PBI_TENANTS)
        .map(|i| format!("p{i}.example.com"))
        .collect()
}

/// A config whose tenants probe Power BI every 2 s and keep two embed tokens each, written to
/// `<files>/{name}.json` and `<files>/{name}.{embed}.embed.json`; in fleet mode through
/// `redis` (url, replica id) if given.
fn write_powerbi_config(path: &Path, sim: &SimEntra, files: &Path, redis: Option<(&str, &str)>) {
    let defaults = format!(
        "powerbi_api = \"{}\"\njitter = 0\nprobe = {{ interval = \"2s\" }}",
        sim.powerbi_api()
    );
    let redis_keys = "connect_timeout = \"500ms\"\ncommand_timeout = \"500ms\"";
    let mut text = config_head(sim, files, &defaults, redis, redis_keys);
    for index in 0..PBI_TENANTS {
        text.push_str(&format!(
            "\n[[tenant]]\nname = \"p{index}\"\ntenant_id = \"p{index}.example.com\"\n"
        ));
        for (embed, report) in EMBEDS.iter().zip([REPORT, OTHER_REPORT]) {
            text.push_str(&format!(
                r#"
[[tenant.embed]]
name = "{embed}"
reports = ["{report}"]
sinks = [ {{ type = "file", path = "{files}/{{name}}.{{embed}}.embed.json" }} ]
"#,
                files = files.display(),
            ));
        }
    }
    std::fs::write(path, text).unwrap();
}

/// GenerateToken and probe calls the simulated Power BI saw, all tenants together.
fn powerbi_calls(sim: &SimEntra) -> (u64, u64) {
    let count = |endpoint| {
        pbi_tenant_ids()
            .iter()
            .map(|id| sim.powerbi_request_count(id, endpoint))
            .sum::<u64>()
    };
    (
        count(PowerBiEndpoint::GenerateToken),
        count(PowerBiEndpoint::Groups),
    )
}

/// Every tenant's embed files in `files` hold an embed token that has not expired.
fn check_embed_files(files: &Path, replica: &str) {
    let now = powerbi_tokend::clock::unix_now();
    for index in 0..PBI_TENANTS {
        for embed in EMBEDS {
            let path = files.join(format!("p{index}.{embed}.embed.json"));
            let json = read_json(&path)
                .unwrap_or_else(|| panic!("{replica}: {} is missing or torn", path.display()));
            let expires_on = json["expires_on"].as_i64().unwrap();
            assert!(
                expires_on > now,
                "{replica}: {}'s embed token expired {} s ago",
                path.display(),
                now - expires_on
            );
        }
    }
}

/// The value of the sample `series` (name and labels, as exposed) in a metrics text.
fn sample_value(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
}

/// Every tenant healthy, probed, and with both embed tokens.
fn powerbi_ready(status: &serde_json::Value) -> bool {
    status["tenants"].as_array().is_some_and(|tenants| {
        tenants.len() == PBI_TENANTS
            && tenants.iter().all(|t| {
                t["state"] == "healthy"
                    && t["api_probe"]["ok"] == true
                    && t["embeds"]
                        .as_array()
                        .is_some_and(|e| e.iter().all(|e| e["expires_at"].is_string()))
            })
    })
}

/// Three replicas sharing one Redis make each Power BI call (a tenant's probe, each embed
/// token) once for the fleet: over the same window, with the same config, they make at most
/// 1.1 times the GenerateToken and probe calls of one daemon alone.
///
/// The window stands for three minutes, with time compressed twelve-fold: what the ratio needs
/// is enough calls in the window, not wall-clock time. Three minutes of 72-second access tokens
/// (a refresh every 36 s, each bringing a probe and two new embed tokens per tenant) and a
/// 24-second probe interval become 15 s of 6-second tokens and a 2-second probe. Either way the
/// window holds five access token cycles and, for eight tenants, about 160 calls of one daemon
/// alone. (With production lifetimes, an hour or more and a 15-minute probe, three minutes
/// would hold a tenth of a cycle: nothing to count.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(has_redis_server),
    ignore = "skipped: needs redis-server (Debian package redis-server)"
)]
async fn three_replicas_make_each_power_bi_call_once_for_the_fleet() {
    let dir = tempfile::tempdir().unwrap();
    let (fleet_sim, single_sim) = two_simulators(&pbi_tenant_ids(), PBI_LIFETIME).await;
    let server = RedisServer::start(&dir.path().join("redis"), &[]);
    let url = server.url();
    let (single_files, mut single) =
        start_single(dir.path(), &single_sim, write_powerbi_config, "info");
    let mut replicas = start_replicas(dir.path(), &fleet_sim, &url, write_powerbi_config);
    let mut addrs = Vec::new();
    for (name, _, process) in &replicas {
        let addr = process.admin_addr().await;
        wait_for_status(
            addr,
            &format!("{name} ready"),
            Duration::from_secs(20),
            powerbi_ready,
        )
        .await;
        addrs.push(addr);
    }
    let single_addr = single.admin_addr().await;
    wait_for_status(
        single_addr,
        "the single daemon ready",
        Duration::from_secs(20),
        powerbi_ready,
    )
    .await;

    // The window: both sides count from the same moment, their schedules aligned (`jitter`
    // 0, started together); meanwhile every replica's embed files stay valid.
    let (fleet_generate, fleet_probes) = powerbi_calls(&fleet_sim);
    let (single_generate, single_probes) = powerbi_calls(&single_sim);
    let started = Instant::now();
    while started.elapsed() < PBI_WINDOW {
        for (name, files, _) in &replicas {
            check_embed_files(files, name);
        }
        check_embed_files(&single_files, "single");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let (generate, probes) = powerbi_calls(&fleet_sim);
    let fleet = (generate - fleet_generate, probes - fleet_probes);
    let (generate, probes) = powerbi_calls(&single_sim);
    let alone = (generate - single_generate, probes - single_probes);
    let ratio = (fleet.0 + fleet.1) as f64 / (alone.0 + alone.1) as f64;
    println!(
        "Power BI calls in {PBI_WINDOW:?}: three replicas {} GenerateToken + {} probes, one daemon {} + {}, ratio {ratio:.3}",
        fleet.0, fleet.1, alone.0, alone.1
    );
    assert!(
        alone.0 >= 60 && alone.1 >= 60,
        "too few calls for the ratio to mean anything: {alone:?}"
    );
    assert!(
        ratio <= 1.1,
        "three replicas made {fleet:?} calls (GenerateToken, probes), one daemon {alone:?} (ratio {ratio:.3})"
    );

    // Each replica says who made what it holds; across the fleet, some of it was adopted.
    let mut adopted = 0;
    let mut adopted_by_kind = [0.0; 3];
    for (addr, (name, _, _)) in addrs.iter().zip(&replicas) {
        let status = common::process::status_json(*addr).await;
        for index in 0..PBI_TENANTS {
            let tenant = entry(&status, &format!("p{index}"));
            let mut made = vec![&tenant["api_probe"]["probed_by"]];
            let embeds = tenant["embeds"].as_array().unwrap();
            made.extend(embeds.iter().map(|embed| &embed["refreshed_by"]));
            let flags = [&tenant["api_probe"]["adopted"]]
                .into_iter()
                .chain(embeds.iter().map(|embed| &embed["adopted"]));
            for (by, flag) in made.into_iter().zip(flags) {
                let by = by.as_str().unwrap_or_else(|| panic!("{name}: {tenant}"));
                assert!(by.starts_with("replica-"), "{name}: {tenant}");
                assert_eq!(flag.as_bool(), Some(by != name), "{name}: {tenant}");
                adopted += usize::from(by != name);
            }
        }
        let (_, metrics, _) = common::process::get(*addr, "/metrics", Duration::from_secs(5)).await;
        for (index, kind) in ["token", "embed", "probe"].into_iter().enumerate() {
            adopted_by_kind[index] += sample_value(
                &metrics,
                &format!("powerbi_tokend_fleet_tokens_total{{kind=\"{kind}\",source=\"adopted\"}}"),
            )
            .unwrap_or_else(|| panic!("{name}: no {kind} adopted series: {metrics}"));
        }
    }
    assert!(
        adopted_by_kind.iter().all(|count| *count > 0.0),
        "adopted (token, embed, probe) across the fleet: {adopted_by_kind:?}"
    );
    assert!(adopted > 0, "no replica holds a result another one made");

    for (name, _, process) in &mut replicas {
        process.signal("TERM");
        let status = process.wait_exit(Duration::from_secs(15)).await;
        assert!(status.success(), "{name} exited with {status}");
    }
    single.signal("TERM");
    single.wait_exit(Duration::from_secs(15)).await;
}

/// Redis out of reach: the replicas cannot share, so each probes and makes every embed token
/// itself. Nothing is lost: every replica's embed files hold valid tokens it made, and each
/// tenant's probe runs on every replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_redis_every_replica_still_probes_and_makes_its_embed_tokens() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let sim = SimEntra::start().await.unwrap();
    for id in pbi_tenant_ids() {
        register(&sim, &id, PBI_LIFETIME);
    }
    // A port nobody listens on: every Redis command fails at once.
    let url = format!("redis://127.0.0.1:{}", common::redis_server::free_port());
    let mut replicas = start_replicas(dir.path(), &sim, &url, write_powerbi_config);
    for (name, files, process) in &replicas {
        let addr = process.admin_addr().await;
        let status = wait_for_status(
            addr,
            &format!("{name} ready without Redis"),
            Duration::from_secs(20),
            powerbi_ready,
        )
        .await;
        check_embed_files(files, name);
        for index in 0..PBI_TENANTS {
            let tenant = entry(&status, &format!("p{index}"));
            assert_eq!(tenant["api_probe"]["probed_by"], name.as_str(), "{tenant}");
            assert_eq!(tenant["api_probe"]["adopted"], false, "{tenant}");
            for embed in tenant["embeds"].as_array().unwrap() {
                assert_eq!(embed["refreshed_by"], name.as_str(), "{tenant}");
                assert_eq!(embed["adopted"], false, "{tenant}");
            }
        }
    }
    // Every replica made every tenant's embed tokens and probed it: three of each at least.
    for id in pbi_tenant_ids() {
        let generate = sim.powerbi_request_count(&id, PowerBiEndpoint::GenerateToken);
        let probes = sim.powerbi_request_count(&id, PowerBiEndpoint::Groups);
        assert!(
            generate >= 3 * EMBEDS.len() as u64 && probes >= 3,
            "{id}: {generate} GenerateToken, {probes} probes"
        );
    }
    for (name, _, process) in &mut replicas {
        process.signal("TERM");
        let status = process.wait_exit(Duration::from_secs(15)).await;
        assert!(status.success(), "{name} exited with {status}");
    }
}
