//! Fleet mode end to end: three daemon processes, one real `redis-server`, one simulated Entra
//! ID. Entra must see about as many requests as a single daemon causes, every replica's local
//! files must stay valid, and a replica killed with SIGKILL must not stop any tenant.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use redis::AsyncCommands;

use common::process::{Spawned, entry, wait_for_status};
use common::redis_server::RedisServer;
use common::*;
use powerbi_tokend_sim::SimEntra;

const TENANTS: usize = 200;
const LIFETIME: Duration = Duration::from_secs(20);
const WINDOW: Duration = Duration::from_secs(60);
const LEASE_TTL: &str = "8s";

fn tenant_ids() -> Vec<String> {
    (0..TENANTS).map(|i| format!("f{i}.example.com")).collect()
}

/// A config whose tenants write `<files>/{name}.json`, in fleet mode through `redis` if given.
fn write_config(path: &Path, sim: &SimEntra, files: &Path, redis: Option<(&str, &str)>) {
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
"#,
        authority = sim.authority_host(),
        files = files.display(),
    );
    if let Some((url, replica)) = redis {
        text.push_str(&format!(
            r#"
[redis]
url = "{url}"
check_interval = "5s"

[fleet]
enabled = true
lease_ttl = "{LEASE_TTL}"
replica_id = "{replica}"
"#
        ));
    }
    for (index, id) in tenant_ids().iter().enumerate() {
        text.push_str(&format!(
            "\n[[tenant]]\nname = \"f{index}\"\ntenant_id = \"{id}\"\n"
        ));
    }
    std::fs::write(path, text).unwrap();
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
    init();
    let dir = tempfile::tempdir().unwrap();
    let fleet_sim = SimEntra::start().await.unwrap();
    let single_sim = SimEntra::start().await.unwrap();
    for id in tenant_ids() {
        register(&fleet_sim, &id, LIFETIME);
        register(&single_sim, &id, LIFETIME);
    }
    let server = RedisServer::start(&dir.path().join("redis"), &[]);
    let url = server.url();

    // The reference: one daemon alone, same tenants, same window, its own simulated Entra.
    let single_files = dir.path().join("single");
    write_config(
        &dir.path().join("single.toml"),
        &single_sim,
        &single_files,
        None,
    );
    let mut single = Spawned::run(
        &dir.path().join("single.toml"),
        &dir.path().join("single.log"),
        "warn,powerbi_tokend::http=info,powerbi_tokend=info",
        &[("TEST_SECRET", SECRET)],
    );
    let mut replicas = Vec::new();
    for index in 0..3 {
        let name = format!("replica-{index}");
        let config = dir.path().join(format!("{name}.toml"));
        let files = dir.path().join(&name);
        write_config(&config, &fleet_sim, &files, Some((&url, &name)));
        let process = Spawned::run(
            &config,
            &dir.path().join(format!("{name}.log")),
            "info",
            &[("TEST_SECRET", SECRET)],
        );
        replicas.push((name, files, process));
    }
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
        metrics.contains("powerbi_tokend_fleet_tokens_total{source=\"adopted\"}"),
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
