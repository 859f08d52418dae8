//! The Redis sink and the shared connection against a real `redis-server` (and a real
//! three-master Redis Cluster), started by the tests on free loopback ports.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use redis::AsyncCommands;

use common::process::{Spawned, entry, status_json, wait_for_status};
use common::redis_server::{RedisCluster, RedisServer};
use common::*;
use powerbi_tokend::config::{
    Config, FileFormat, FleetConfig, RedisConfig, RedisSinkConfig, SinkConfig,
};
use powerbi_tokend::store::{Store, WriteOutcome};

/// The sink as `{ type = "redis" }` configures it for `name`.
fn redis_sink(name: &str, format: FileFormat) -> SinkConfig {
    SinkConfig::Redis(RedisSinkConfig {
        key: format!("powerbi-tokend:{{{name}}}"),
        format,
    })
}

/// `[redis]` for the given URLs, checking every second that tokens are still there.
fn redis_config(urls: Vec<String>) -> RedisConfig {
    RedisConfig {
        cluster: urls.len() > 1,
        urls,
        check_interval: Duration::from_secs(1),
        ..RedisConfig::default()
    }
}

/// A daemon config with `names` (tenant ids `<name>.example.com`), each writing its json file
/// and its Redis key.
fn daemon_config(
    sim: &powerbi_tokend_sim::SimEntra,
    dir: &Path,
    names: &[&str],
    urls: Vec<String>,
) -> Config {
    let tenants = names
        .iter()
        .map(|name| {
            let mut tenant = tenant(sim, name, &format!("{name}.example.com"), dir);
            tenant.sinks.push(redis_sink(name, FileFormat::Json));
            tenant
        })
        .collect();
    let mut config = config(tenants, fast_daemon());
    config.redis = Some(redis_config(urls));
    config
}

fn now() -> i64 {
    powerbi_tokend::clock::unix_now()
}

/// The value at `key` once it is there (the daemon writes its sinks in order); panics after 5 s.
async fn wait_for_key(conn: &mut impl redis::aio::ConnectionLike, key: &str) -> String {
    let start = Instant::now();
    loop {
        let value: Option<String> = redis::cmd("GET").arg(key).query_async(conn).await.unwrap();
        if let Some(value) = value {
            return value;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{key} never appeared"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The `/status` entry of `name`, if it is registered yet.
fn tenant_in<'a>(status: &'a serde_json::Value, name: &str) -> Option<&'a serde_json::Value> {
    status["tenants"]
        .as_array()
        .and_then(|tenants| tenants.iter().find(|t| t["name"] == name))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(has_redis_server),
    ignore = "skipped: needs redis-server (Debian package redis-server)"
)]
async fn redis_sink_holds_the_file_json_until_expiry_and_notifies_without_the_token() {
    let Fixture { sim, dir } = fixture(&["contoso.example.com"], Duration::from_secs(3600)).await;
    let server = RedisServer::start(&dir.path().join("redis"), &[]);
    let client = redis::Client::open(server.url()).unwrap();
    let mut pubsub = client.get_async_pubsub().await.unwrap();
    pubsub.subscribe("powerbi-tokend:tokens").await.unwrap();

    let daemon = start_daemon(daemon_config(
        &sim,
        dir.path(),
        &["contoso"],
        vec![server.url()],
    ))
    .await;
    let message = tokio::time::timeout(Duration::from_secs(10), pubsub.on_message().next())
        .await
        .expect("a notification within 10 s")
        .expect("the subscription stays open");
    let payload: String = message.get_payload().unwrap();
    let notification: serde_json::Value = serde_json::from_str(&payload).unwrap();
    assert_eq!(notification["tenant"], "contoso");
    assert_eq!(notification["key"], "powerbi-tokend:{contoso}");

    let path = dir.path().join("contoso.json");
    wait_for("the token file", Duration::from_secs(5), || path.exists()).await;
    let file = std::fs::read_to_string(&path).unwrap();
    let mut conn = server.connection().await;
    let value = wait_for_key(&mut conn, "powerbi-tokend:{contoso}").await;
    assert_eq!(value, file, "Redis holds what the file sink writes");
    let json: serde_json::Value = serde_json::from_str(&file).unwrap();
    let token = json["access_token"].as_str().unwrap().to_owned();
    assert_eq!(notification["expires_on"], json["expires_on"]);
    assert!(
        !payload.contains(&token),
        "the notification carries the token"
    );

    let expires_at_ms: i64 = redis::cmd("PEXPIRETIME")
        .arg("powerbi-tokend:{contoso}")
        .query_async(&mut conn)
        .await
        .unwrap();
    let expires_on_ms = json["expires_on"].as_i64().unwrap() * 1000;
    assert!(
        (expires_on_ms - 1..=expires_on_ms).contains(&expires_at_ms),
        "the key expires at {expires_at_ms}, the token at {expires_on_ms}"
    );
    daemon.stop().await;

    // A raw sink holds the bare token, under the same expiry.
    let raw_dir = dir.path().join("raw");
    let mut tenant = tenant(&sim, "contoso", "contoso.example.com", &raw_dir);
    tenant.sinks = vec![
        SinkConfig::File(powerbi_tokend::config::FileSinkConfig {
            path: raw_dir.join("contoso.json"),
            format: FileFormat::Json,
            mode: 0o600,
        }),
        SinkConfig::Redis(RedisSinkConfig {
            key: "raw:{contoso}".to_owned(),
            format: FileFormat::Raw,
        }),
    ];
    let mut config = config(vec![tenant], fast_daemon());
    config.redis = Some(redis_config(vec![server.url()]));
    let daemon = start_daemon(config).await;
    let raw_path = raw_dir.join("contoso.json");
    wait_for("the raw run's file", Duration::from_secs(5), || {
        raw_path.exists()
    })
    .await;
    let written = read_json(&raw_path).unwrap();
    // The Redis sink is written after the file.
    let raw = wait_for_key(&mut conn, "raw:{contoso}").await;
    assert_eq!(raw, written["access_token"].as_str().unwrap());
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(has_redis_server),
    ignore = "skipped: needs redis-server (Debian package redis-server)"
)]
async fn racing_writers_never_leave_the_older_token() {
    let dir = tempfile::tempdir().unwrap();
    let server = RedisServer::start(dir.path(), &[]);
    let store = std::sync::Arc::new(Store::new(redis_config(vec![server.url()]), None));
    let (older, newer) = (now() + 1800, now() + 3600);
    let mut conn = server.connection().await;
    for round in 0..50 {
        let key = format!("race:{{{round}}}");
        // Each round starts the two writes in a different order, on two tasks.
        let (first, second) = if round % 2 == 0 {
            (("older", older), ("newer", newer))
        } else {
            (("newer", newer), ("older", older))
        };
        let write = |(value, expires_on): (&'static str, i64)| {
            let (store, key) = (store.clone(), key.clone());
            tokio::spawn(async move { store.write_newer(&key, value, expires_on, None, "").await })
        };
        let (a, b) = (write(first), write(second));
        a.await.unwrap().unwrap();
        b.await.unwrap().unwrap();
        let value: String = conn.get(&key).await.unwrap();
        assert_eq!(value, "newer", "round {round}");
    }
    // In sequence: the older one is refused, the same one is not written again.
    assert_eq!(
        store
            .write_newer("seq:{x}", "newer", newer, None, "")
            .await
            .unwrap(),
        WriteOutcome::Written
    );
    assert_eq!(
        store
            .write_newer("seq:{x}", "older", older, None, "")
            .await
            .unwrap(),
        WriteOutcome::Newer
    );
    assert_eq!(
        store
            .write_newer("seq:{x}", "newer", newer, None, "")
            .await
            .unwrap(),
        WriteOutcome::Same
    );
    let value: String = conn.get("seq:{x}").await.unwrap();
    assert_eq!(value, "newer");
    // An expired token is never written.
    assert!(
        store
            .write_newer("seq:{y}", "gone", now() - 1, None, "")
            .await
            .is_err()
    );
    let exists: bool = conn.exists("seq:{y}").await.unwrap();
    assert!(!exists);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(has_redis_server),
    ignore = "skipped: needs redis-server (Debian package redis-server)"
)]
async fn acl_user_with_a_password_file_and_a_wrong_password_named_as_a_redis_sink_failure() {
    let Fixture { sim, dir } = fixture(&["contoso.example.com"], Duration::from_secs(3600)).await;
    let server = RedisServer::start(
        &dir.path().join("redis"),
        &[
            "--user",
            "default",
            "off",
            "--user",
            "tokend",
            "on",
            ">redis-pass-w0rd",
            "~powerbi-tokend:*",
            "&powerbi-tokend:*",
            "+@all",
        ],
    );
    let password_file = dir.path().join("redis-password");
    std::fs::write(&password_file, "redis-pass-w0rd\n").unwrap();
    let config_path = dir.path().join("config.toml");
    let write_config = |password_file: &Path| {
        std::fs::write(
            &config_path,
            format!(
                r#"[server]
listen = "127.0.0.1:0"

[daemon]
backoff_min = "100ms"
backoff_max = "400ms"

[redis]
url = "{url}"
username = "tokend"
password = {{ file = "{password}" }}

[[tenant]]
name = "contoso"
tenant_id = "contoso.example.com"
client_id = "{CLIENT_ID}"
client_secret = {{ env = "TEST_SECRET" }}
authority_host = "{authority}"
sinks = [
  {{ type = "file", path = "tokens/{{name}}.json" }},
  {{ type = "redis", key = "powerbi-tokend:{{name}}" }},
]
"#,
                url = server.url(),
                password = password_file.display(),
                authority = sim.authority_host(),
            ),
        )
        .unwrap();
    };
    write_config(&password_file);
    let log = dir.path().join("good.log");
    let mut good = Spawned::run(&config_path, &log, "info", &[("TEST_SECRET", SECRET)]);
    let addr = good.admin_addr().await;
    wait_for_status(addr, "contoso healthy", Duration::from_secs(10), |status| {
        tenant_in(status, "contoso").is_some_and(|t| t["state"] == "healthy")
    })
    .await;
    let mut conn = server_connection_as(&server, "tokend", "redis-pass-w0rd").await;
    let value: String = conn.get("powerbi-tokend:{contoso}").await.unwrap();
    let token = serde_json::from_str::<serde_json::Value>(&value).unwrap()["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    good.signal("TERM");
    good.wait_exit(Duration::from_secs(10)).await;
    let text = good.log_text();
    assert!(!text.contains(&token), "the access token is in the log");
    assert!(
        !text.contains("redis-pass-w0rd"),
        "the Redis password is in the log"
    );

    // A wrong password: the tenant fails with reason `sink`, the message names Redis and says
    // what to check; the file is written all the same.
    let wrong = dir.path().join("wrong-password");
    std::fs::write(&wrong, "not-the-password\n").unwrap();
    write_config(&wrong);
    std::fs::remove_dir_all(dir.path().join("tokens")).unwrap();
    let log = dir.path().join("bad.log");
    let mut bad = Spawned::run(&config_path, &log, "info", &[("TEST_SECRET", SECRET)]);
    let addr = bad.admin_addr().await;
    let status = wait_for_status(addr, "contoso failing", Duration::from_secs(10), |status| {
        tenant_in(status, "contoso").is_some_and(|t| t["last_error"]["reason"] == "sink")
    })
    .await;
    let message = entry(&status, "contoso")["last_error"]["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        message.contains(&format!("Redis at {}", server.url())),
        "{message}"
    );
    assert!(message.contains("authentication failed"), "{message}");
    assert!(!message.contains("not-the-password"), "{message}");
    assert!(
        dir.path().join("tokens/contoso.json").exists(),
        "the file sink is written although Redis refused"
    );
    bad.signal("TERM");
    bad.wait_exit(Duration::from_secs(10)).await;
    assert!(!bad.log_text().contains("not-the-password"));
}

/// A connection as an ACL user.
async fn server_connection_as(
    server: &RedisServer,
    user: &str,
    password: &str,
) -> redis::aio::MultiplexedConnection {
    redis::Client::open(format!(
        "redis://{user}:{password}@127.0.0.1:{}",
        server.port
    ))
    .unwrap()
    .get_multiplexed_async_connection()
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(has_redis_server),
    ignore = "skipped: needs redis-server (Debian package redis-server)"
)]
async fn redis_outage_of_20_s_keeps_files_fresh_reports_sink_and_recovers() {
    let names = ["a", "b", "c"];
    let ids: Vec<String> = names.iter().map(|n| format!("{n}.example.com")).collect();
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    // 6-second tokens: each tenant refreshes about every 3 s, so the outage spans several
    // refreshes, with room for a loaded machine.
    let Fixture { sim, dir } = fixture(&ids, Duration::from_secs(6)).await;
    let mut server = RedisServer::start(&dir.path().join("redis"), &[]);
    let daemon = start_daemon(daemon_config(&sim, dir.path(), &names, vec![server.url()])).await;
    daemon
        .wait_for_get("every tenant healthy", "/status", |_, body| {
            body.matches("\"state\":\"healthy\"").count() == names.len()
        })
        .await;

    server.stop();
    let outage = Instant::now();
    let mut saw_sink_failure = false;
    let mut checks = 0;
    while outage.elapsed() < Duration::from_secs(20) {
        let (code, _) = daemon.get("/healthz").await;
        assert_eq!(code, 200, "the daemon stays alive");
        // A Redis outage is listed but does not make the daemon unready: no restart or new node
        // would fix it, and unready replicas would drop out of monitoring.
        let (code, body) = daemon.get("/readyz").await;
        assert_eq!(code, 200, "{body}");
        for name in names {
            let json = read_json(&dir.path().join(format!("{name}.json")))
                .unwrap_or_else(|| panic!("{name}'s file is unreadable"));
            assert!(
                json["expires_on"].as_i64().unwrap() > now(),
                "{name}'s file holds an expired token during the outage at {} ({:?} into it): {}",
                now(),
                outage.elapsed(),
                json["issued_on"]
            );
        }
        let (_, status) = daemon.get("/status").await;
        let status: serde_json::Value = serde_json::from_str(&status).unwrap();
        for name in names {
            let error = &entry(&status, name)["last_error"];
            if !error.is_null() {
                assert_eq!(error["reason"], "sink", "{error}");
                assert!(
                    error["message"].as_str().unwrap().contains("Redis at"),
                    "{error}"
                );
                saw_sink_failure = true;
            }
        }
        checks += 1;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(
        saw_sink_failure,
        "no tenant reported the outage as a sink failure"
    );
    assert!(checks > 20);
    let (_, metrics) = daemon.get("/metrics").await;
    assert!(
        metrics.contains("powerbi_tokend_refresh_failures_total{reason=\"sink\",tenant=\"a\"}"),
        "{metrics}"
    );

    // Redis returns (empty); without a restart every tenant is healthy and in Redis again.
    server.restart();
    daemon
        .wait_for_get(
            "every tenant healthy after Redis returned",
            "/status",
            |_, body| body.matches("\"state\":\"healthy\"").count() == names.len(),
        )
        .await;
    let mut conn = server.connection().await;
    for name in names {
        let start = Instant::now();
        loop {
            let value: Option<String> = conn
                .get(format!("powerbi-tokend:{{{name}}}"))
                .await
                .unwrap();
            if value.is_some() {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "{name} not back in Redis"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(has_redis_server),
    ignore = "skipped: needs redis-server (Debian package redis-server)"
)]
async fn redis_restarted_empty_gets_every_token_back_with_one_request_per_tenant() {
    let names: Vec<String> = (0..10).map(|i| format!("t{i}")).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let ids: Vec<String> = names.iter().map(|n| format!("{n}.example.com")).collect();
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    let Fixture { sim, dir } = fixture(&ids, Duration::from_secs(3600)).await;
    let mut server = RedisServer::start(&dir.path().join("redis"), &[]);
    let daemon = start_daemon(daemon_config(&sim, dir.path(), &names, vec![server.url()])).await;
    daemon
        .wait_for_get("every tenant healthy", "/status", |_, body| {
            body.matches("\"state\":\"healthy\"").count() == names.len()
        })
        .await;
    let before: Vec<u64> = ids.iter().map(|id| sim.request_count(id)).collect();

    server.restart();
    let restarted = Instant::now();
    let mut conn = server.connection().await;
    loop {
        let mut back = 0;
        for name in &names {
            let exists: bool = conn
                .exists(format!("powerbi-tokend:{{{name}}}"))
                .await
                .unwrap();
            back += usize::from(exists);
        }
        if back == names.len() {
            break;
        }
        assert!(
            restarted.elapsed() < Duration::from_secs(60),
            "{back} of {} tokens back after 60 s",
            names.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let took = restarted.elapsed();
    // Settle: a tenant that would ask twice does so right away.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for (index, id) in ids.iter().enumerate() {
        let requests = sim.request_count(id) - before[index];
        assert_eq!(
            requests, 1,
            "{id} asked Entra {requests} times to refill Redis"
        );
    }
    println!(
        "all {} tokens back in Redis {took:?} after it restarted empty",
        names.len()
    );
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(all(has_redis_server, has_redis_cli)),
    ignore = "skipped: needs redis-server and redis-cli (Debian package redis-server)"
)]
async fn redis_cluster_sinks_and_fleet_leases_across_slots() {
    let names: Vec<String> = (0..12).map(|i| format!("c{i}")).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let ids: Vec<String> = names.iter().map(|n| format!("{n}.example.com")).collect();
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    let Fixture { sim, dir } = fixture(&ids, Duration::from_secs(3600)).await;
    let cluster = RedisCluster::start(&dir.path().join("cluster"));
    let mut config = daemon_config(&sim, dir.path(), &names, cluster.urls());
    config.fleet = Some(FleetConfig {
        key_prefix: "fleet".to_owned(),
        lease_ttl: Duration::from_secs(20),
        replica_id: Some("replica-one".to_owned()),
    });
    let daemon = start_daemon(config).await;
    daemon
        .wait_for_get("every tenant healthy", "/status", |_, body| {
            body.matches("\"state\":\"healthy\"").count() == names.len()
        })
        .await;
    let mut conn = cluster.connection().await;
    let mut slots = std::collections::HashSet::new();
    for name in &names {
        let file = std::fs::read_to_string(dir.path().join(format!("{name}.json"))).unwrap();
        let value: String = conn
            .get(format!("powerbi-tokend:{{{name}}}"))
            .await
            .unwrap();
        assert_eq!(value, file);
        let shared: String = conn.get(format!("fleet:{{{name}}}:token")).await.unwrap();
        let shared: serde_json::Value = serde_json::from_str(&shared).unwrap();
        assert_eq!(shared["refreshed_by"], "replica-one");
        // Released after the refresh.
        let lease: bool = conn
            .exists(format!("fleet:{{{name}}}:lease"))
            .await
            .unwrap();
        assert!(!lease, "{name}'s lease was not released");
        let slot: i64 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(format!("powerbi-tokend:{{{name}}}"))
            .query_async(&mut conn)
            .await
            .unwrap();
        slots.insert(slot * 3 / 16384);
    }
    assert!(
        slots.len() >= 2,
        "the tenants' keys all hashed to one node's range"
    );
    let status = status_json(daemon.addr).await;
    assert_eq!(entry(&status, "c0")["refreshed_by"], "replica-one");
    daemon.stop().await;
}

/// A CA and a server certificate for `localhost` signed by it, as PEM files in `dir`.
fn tls_files(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let openssl = |args: &[&str]| {
        let out = std::process::Command::new(program("openssl", "openssl"))
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "2",
        "-subj",
        "/CN=powerbi-tokend test CA",
    ]);
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=localhost",
    ]);
    std::fs::write(dir.join("san.ext"), "subjectAltName=DNS:localhost\n").unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.crt",
        "-days",
        "2",
        "-extfile",
        "san.ext",
    ]);
    (
        dir.join("ca.crt"),
        dir.join("server.crt"),
        dir.join("server.key"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(all(has_redis_server, has_openssl)),
    ignore = "skipped: needs redis-server and openssl"
)]
async fn rediss_trusts_the_ca_file_and_verifies_the_server_name() {
    let Fixture { sim, dir } = fixture(&["contoso.example.com"], Duration::from_secs(3600)).await;
    let pki = dir.path().join("pki");
    std::fs::create_dir_all(&pki).unwrap();
    let (ca, cert, key) = tls_files(&pki);
    let server = RedisServer::start_tls(&dir.path().join("redis"), &cert, &key, &ca);
    let run = |url: String, ca_file: Option<std::path::PathBuf>| {
        let files = dir.path().join(format!("run-{}", fastrand::u32(..)));
        let mut config = daemon_config(&sim, &files, &["contoso"], vec![url]);
        config.daemon.ca_file = ca_file;
        config
    };

    // The certificate names localhost and the CA is trusted: the token reaches Redis.
    let daemon = start_daemon(run(
        format!("rediss://localhost:{}", server.port),
        Some(ca.clone()),
    ))
    .await;
    daemon
        .wait_for_get("contoso healthy over TLS", "/status", |_, body| {
            body.contains("\"state\":\"healthy\"")
        })
        .await;
    daemon.stop().await;

    // The same server by IP address: the name does not match the certificate.
    let daemon = start_daemon(run(
        format!("rediss://127.0.0.1:{}", server.port),
        Some(ca.clone()),
    ))
    .await;
    let body = daemon
        .wait_for_get("a TLS failure", "/status", |_, body| {
            body.contains("\"reason\":\"sink\"")
        })
        .await;
    assert!(
        body.contains(&format!("Redis at rediss://127.0.0.1:{}", server.port)),
        "{body}"
    );
    daemon.stop().await;

    // Without the CA file the server's certificate is not trusted.
    let daemon = start_daemon(run(format!("rediss://localhost:{}", server.port), None)).await;
    let body = daemon
        .wait_for_get("a TLS failure", "/status", |_, body| {
            body.contains("\"reason\":\"sink\"")
        })
        .await;
    assert!(body.contains("Redis at rediss://localhost"), "{body}");
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(has_redis_server),
    ignore = "skipped: needs redis-server (Debian package redis-server)"
)]
async fn warm_start_from_redis_checks_the_identity_like_a_json_file() {
    let Fixture { sim, dir } = fixture(&["contoso.example.com"], Duration::from_secs(3600)).await;
    let server = RedisServer::start(&dir.path().join("redis"), &[]);
    let redis_only = |client_id: &str| {
        let mut config = daemon_config(&sim, dir.path(), &["contoso"], vec![server.url()]);
        let mut tenant = (*config.tenants[0]).clone();
        tenant
            .sinks
            .retain(|sink| matches!(sink, SinkConfig::Redis(_)));
        tenant.client_id = Some(client_id.into());
        config.tenants = vec![std::sync::Arc::new(tenant)];
        config
    };
    let daemon = start_daemon(redis_only(CLIENT_ID)).await;
    daemon
        .wait_for_get("the first token", "/status", |_, body| {
            body.contains("\"state\":\"healthy\"")
        })
        .await;
    daemon.stop().await;
    assert_eq!(sim.request_count("contoso.example.com"), 1);

    // Restarted: the token in Redis is reused, Entra is not asked.
    let daemon = start_daemon(redis_only(CLIENT_ID)).await;
    daemon
        .wait_for_get("the warm start", "/status", |_, body| {
            body.contains("\"state\":\"healthy\"")
        })
        .await;
    daemon.stop().await;
    assert_eq!(
        sim.request_count("contoso.example.com"),
        1,
        "warm start asked Entra"
    );

    // Another app: the token in Redis was issued to a different client and is not reused.
    let other_app = "0b0e5d52-7c3b-4f5e-9d2a-3c1f6e8a9b7d";
    sim.set_app(
        "contoso.example.com",
        powerbi_tokend_sim::SimApp {
            client_id: other_app.to_owned(),
            secret: SECRET.to_owned(),
            secret_expired: false,
        },
    );
    let daemon = start_daemon(redis_only(other_app)).await;
    daemon
        .wait_for_get("a token for the other app", "/status", |_, body| {
            body.contains("\"state\":\"healthy\"")
        })
        .await;
    daemon.stop().await;
    assert_eq!(sim.request_count("contoso.example.com"), 2);
    let mut conn = server.connection().await;
    let value: String = conn.get("powerbi-tokend:{contoso}").await.unwrap();
    assert!(value.contains(other_app));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(has_redis_server),
    ignore = "skipped: needs redis-server (Debian package redis-server)"
)]
async fn check_pings_redis_and_reads_its_password() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = RedisServer::start(&dir.path().join("redis"), &["--requirepass", "pw-1234"]);
    std::fs::write(dir.path().join("redis.pass"), "pw-1234\n").unwrap();
    let config = dir.path().join("config.toml");
    let url = server.url();
    let write = |password: &str| {
        std::fs::write(
            &config,
            format!(
                "[redis]\nurl = \"{url}\"\nconnect_timeout = \"2s\"\npassword = {{ file = \"{password}\" }}\n\n[[tenant]]\nname = \"contoso\"\ntenant_id = \"contoso.onmicrosoft.com\"\nclient_id = \"{CLIENT_ID}\"\nclient_secret = {{ env = \"TEST_SECRET\" }}\nsinks = [ {{ type = \"redis\" }} ]\n"
            ),
        )
        .unwrap();
    };
    let check = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_powerbi-tokend"))
            .args(["check", "--config"])
            .arg(&config)
            .env("TEST_SECRET", SECRET)
            .output()
            .unwrap()
    };
    write("redis.pass");
    let out = check();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.contains("Redis at"), "{stderr}");

    // Unreachable: a warning naming Redis, still exit 0.
    server.stop();
    let out = check();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("warning: Redis at {}", server.url())),
        "{stderr}"
    );

    // An unreadable password file is a problem (exit 2).
    write("missing.pass");
    let out = check();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("redis.password"), "{stderr}");
    assert!(!stderr.contains("pw-1234"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(has_redis_server),
    ignore = "skipped: needs redis-server (Debian package redis-server)"
)]
async fn a_hung_redis_times_out_and_a_rotated_password_is_read_at_reconnect() {
    let ids = ["a.example.com", "b.example.com"];
    // 6-second tokens: a refresh about every 3 s, several during the hang, each of which waits
    // up to a second for Redis.
    let Fixture { sim, dir } = fixture(&ids, Duration::from_secs(6)).await;
    let server = RedisServer::start(&dir.path().join("redis"), &["--requirepass", "first-pw-1"]);
    let password_file = dir.path().join("redis.pass");
    std::fs::write(&password_file, "first-pw-1\n").unwrap();
    let mut config = daemon_config(&sim, dir.path(), &["a", "b"], vec![server.url()]);
    if let Some(redis) = config.redis.as_mut() {
        redis.password = Some(powerbi_tokend::config::SecretSource::File(
            password_file.clone(),
        ));
        redis.command_timeout = Duration::from_millis(500);
        redis.connect_timeout = Duration::from_secs(1);
    }
    let daemon = start_daemon(config).await;
    daemon
        .wait_for_get("both healthy", "/status", |_, body| {
            body.matches("\"state\":\"healthy\"").count() == 2
        })
        .await;

    // SIGSTOP: Redis accepts nothing and answers nothing. Commands time out, the daemon stays
    // responsive, and the files keep fresh tokens.
    common::process::signal_pid(server.pid(), "STOP");
    let body = daemon
        .wait_for_get("a timeout reported", "/status", |_, body| {
            body.contains("\"reason\":\"sink\"") && body.contains("Redis at")
        })
        .await;
    assert!(
        body.contains("no answer within")
            || body.contains("timed out")
            || body.contains("connection"),
        "{body}"
    );
    let hung = Instant::now();
    while hung.elapsed() < Duration::from_secs(8) {
        let started = Instant::now();
        assert_eq!(daemon.get("/healthz").await.0, 200);
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "/healthz took {:?}",
            started.elapsed()
        );
        for name in ["a", "b"] {
            let json = read_json(&dir.path().join(format!("{name}.json"))).unwrap();
            assert!(
                json["expires_on"].as_i64().unwrap() > now(),
                "{name}'s file expired: {json} at {} after {:?}",
                now(),
                hung.elapsed()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    common::process::signal_pid(server.pid(), "CONT");
    daemon
        .wait_for_get("both healthy after SIGCONT", "/status", |_, body| {
            body.matches("\"state\":\"healthy\"").count() == 2
        })
        .await;

    // The password rotates: Redis gets the new one, the file too, and every connection is cut.
    // The daemon reconnects with the password it reads now.
    let mut admin = redis::Client::open(format!("redis://:first-pw-1@127.0.0.1:{}", server.port))
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("requirepass")
        .arg("second-pw-2")
        .query_async(&mut admin)
        .await
        .unwrap();
    std::fs::write(&password_file, "second-pw-2\n").unwrap();
    let _: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("normal")
        .query_async(&mut admin)
        .await
        .unwrap_or(0);
    let before = {
        let mut conn =
            redis::Client::open(format!("redis://:second-pw-2@127.0.0.1:{}", server.port))
                .unwrap()
                .get_multiplexed_async_connection()
                .await
                .unwrap();
        let _: () = conn.del("powerbi-tokend:{a}").await.unwrap();
        conn
    };
    let mut conn = before;
    let start = Instant::now();
    loop {
        let value: Option<String> = conn.get("powerbi-tokend:{a}").await.unwrap();
        if value.is_some() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "the daemon did not write again with the rotated password"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    daemon.stop().await;
}

/// The ACL rules the fleet chapter (docs/fleet.md) calls enough for the daemon, as written there.
fn readme_daemon_acl() -> Vec<String> {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/fleet.md")).unwrap();
    let flat = readme.split_whitespace().collect::<Vec<_>>().join(" ");
    let (_, after) = flat
        .split_once("these ACL rules are enough for the daemon: `")
        .expect("docs/fleet.md states the daemon's ACL rules");
    let (rules, _) = after.split_once('`').unwrap();
    rules.split(' ').map(str::to_owned).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(has_redis_server),
    ignore = "skipped: needs redis-server (Debian package redis-server)"
)]
async fn check_and_run_work_with_exactly_the_acl_readme_documents() {
    let rules = readme_daemon_acl();
    assert!(rules.iter().any(|rule| rule == "+evalsha"), "{rules:?}");
    let Fixture { sim, dir } = fixture(&["contoso.example.com"], Duration::from_secs(3600)).await;
    let mut args = vec![
        "--user",
        "default",
        "off",
        "--user",
        "tokend",
        "on",
        ">acl-pw-0451",
    ];
    args.extend(rules.iter().map(String::as_str));
    let server = RedisServer::start(&dir.path().join("redis"), &args);
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            r#"[server]
listen = "127.0.0.1:0"

[redis]
url = "{url}"
username = "tokend"
password = {{ env = "REDIS_PASSWORD" }}

[fleet]
enabled = true

[[tenant]]
name = "contoso"
tenant_id = "contoso.example.com"
client_id = "{CLIENT_ID}"
client_secret = {{ env = "TEST_SECRET" }}
authority_host = "{authority}"
sinks = [
  {{ type = "file", path = "tokens/{{name}}.json" }},
  {{ type = "redis" }},
]
"#,
            url = server.url(),
            authority = sim.authority_host(),
        ),
    )
    .unwrap();
    let env = [("TEST_SECRET", SECRET), ("REDIS_PASSWORD", "acl-pw-0451")];

    // `check` reaches Redis as this user without a warning.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_powerbi-tokend"))
        .args(["check", "--config"])
        .arg(&config)
        .envs(env)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.contains("Redis at"), "{stderr}");

    // `run` as this user: the sink, the fleet's shared token, lease and release all work.
    let mut daemon = Spawned::run(&config, &dir.path().join("daemon.log"), "info", &env);
    let addr = daemon.admin_addr().await;
    wait_for_status(addr, "contoso healthy", Duration::from_secs(10), |status| {
        tenant_in(status, "contoso").is_some_and(|t| t["state"] == "healthy")
    })
    .await;
    let mut conn = server_connection_as(&server, "tokend", "acl-pw-0451").await;
    let value: Option<String> = conn.get("powerbi-tokend:{contoso}").await.unwrap();
    assert!(value.is_some(), "the Redis sink was not written");
    let shared: Option<String> = conn
        .get("powerbi-tokend:fleet:{contoso}:token")
        .await
        .unwrap();
    assert!(shared.is_some(), "the fleet's shared token was not written");
    let lease: Option<String> = conn
        .get("powerbi-tokend:fleet:{contoso}:lease")
        .await
        .unwrap();
    assert_eq!(lease, None, "the lease was not released");
    daemon.signal("TERM");
    daemon.wait_exit(Duration::from_secs(10)).await;
    let log = daemon.log_text();
    assert!(!log.contains("NOPERM"), "{log}");
}

/// The presence check covers embed tokens: after a `FLUSHALL` (what a Redis restarted without
/// persistence looks like), the embed token comes back to its Redis key from the one the daemon
/// holds, the very same token, without another GenerateToken. The access token is kept in a
/// file only here: a lost access token is fetched again, and a new access token brings new
/// embed tokens by design.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(has_redis_server),
    ignore = "skipped: needs redis-server (Debian package redis-server)"
)]
async fn an_embed_token_lost_from_redis_is_written_again_without_a_new_generate_token() {
    use powerbi_tokend::config::{
        AccessLevel, EmbedConfig, FileSinkConfig, PowerBiConfig, RestApi,
    };
    use powerbi_tokend_sim::PowerBiEndpoint;

    let Fixture { sim, dir } = fixture(&["contoso.example.com"], Duration::from_secs(3600)).await;
    let server = RedisServer::start(&dir.path().join("redis"), &[]);
    let key = "powerbi-tokend:{contoso}:embed:sales";
    let mut tenant = tenant(&sim, "contoso", "contoso.example.com", dir.path());
    tenant.powerbi = Some(Box::new(PowerBiConfig {
        api: RestApi::PowerBi,
        api_root: sim.powerbi_api().into(),
        probe: None,
        embeds: vec![EmbedConfig {
            name: "sales".to_owned(),
            reports: vec!["5b218778-0000-4b8a-9c7c-000000000004".to_owned()],
            datasets: Vec::new(),
            target_workspaces: Vec::new(),
            access_level: AccessLevel::View,
            lifetime: None,
            xmla_read_only: false,
            identities: Vec::new(),
            datasource_identities: Vec::new(),
            workspace: None,
            sinks: vec![
                SinkConfig::File(FileSinkConfig {
                    path: dir.path().join("contoso.sales.embed.json"),
                    format: FileFormat::Json,
                    mode: 0o600,
                }),
                SinkConfig::Redis(RedisSinkConfig {
                    key: key.to_owned(),
                    format: FileFormat::Json,
                }),
            ],
        }],
    }));
    let mut config = config(vec![tenant], fast_daemon());
    config.redis = Some(redis_config(vec![server.url()]));
    let daemon = start_daemon(config).await;
    let mut conn = server.connection().await;
    let before: serde_json::Value =
        serde_json::from_str(&wait_for_key(&mut conn, key).await).unwrap();
    let made = sim.powerbi_request_count("contoso.example.com", PowerBiEndpoint::GenerateToken);
    assert_eq!(made, 1);

    let _: () = redis::cmd("FLUSHALL").query_async(&mut conn).await.unwrap();
    let flushed = Instant::now();
    let mut back = None;
    while back.is_none() {
        back = conn.get::<_, Option<String>>(key).await.unwrap();
        assert!(
            flushed.elapsed() < Duration::from_secs(10),
            "the embed token did not come back to Redis (check_interval is 1 s)"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let back: serde_json::Value = serde_json::from_str(&back.unwrap()).unwrap();
    assert_eq!(back["token_id"], before["token_id"], "the same embed token");
    assert_eq!(back["token"], before["token"]);
    let ttl: i64 = redis::cmd("PTTL")
        .arg(key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(ttl > 0, "the key expires with the token again ({ttl} ms)");
    assert_eq!(
        sim.powerbi_request_count("contoso.example.com", PowerBiEndpoint::GenerateToken),
        made,
        "no new GenerateToken"
    );
    daemon.stop().await;
}
