//! The daemon end to end, in process: simulated Entra ID on 127.0.0.1, real HTTP, real files.

mod common;

use common::*;
use std::time::{Duration, Instant};

use powerbi_tokend::config::{ApiVersion, DaemonConfig, FileFormat, FileSinkConfig, SinkConfig};
use powerbi_tokend_sim::{Behavior, RetryAfter, SimApp};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_json_contract_and_refreshes_at_half_life() {
    let Fixture { sim, dir } = fixture(&["contoso.onmicrosoft.com"], Duration::from_secs(3)).await;
    register(
        &sim,
        "7d1e4f2a-5b6c-4d8e-9f0a-1b2c3d4e5f60",
        Duration::from_secs(3600),
    );
    let v2 = tenant(&sim, "contoso", "contoso.onmicrosoft.com", dir.path());
    let mut v1 = tenant(
        &sim,
        "fabrikam",
        "7d1e4f2a-5b6c-4d8e-9f0a-1b2c3d4e5f60",
        dir.path(),
    );
    v1.api = ApiVersion::V1;
    v1.sinks.push(SinkConfig::File(FileSinkConfig {
        path: dir.path().join("fabrikam.token"),
        format: FileFormat::Raw,
        mode: 0o640,
    }));
    let daemon = start_daemon(config(vec![v2, v1], fast_daemon())).await;

    let contoso = dir.path().join("contoso.json");
    wait_for("contoso's first token", Duration::from_secs(5), || {
        contoso.exists()
    })
    .await;
    let first_written = Instant::now();
    let json = read_json(&contoso).unwrap();
    for key in [
        "access_token",
        "token_type",
        "expires_at",
        "tenant",
        "tenant_id",
        "client_id",
        "resource",
    ] {
        assert!(json[key].is_string(), "{key} missing in {json}");
    }
    assert!(
        json["expires_on"].is_i64(),
        "expires_on must be an integer: {json}"
    );
    assert_eq!(json["tenant"], "contoso");
    assert_eq!(json["tenant_id"], "contoso.onmicrosoft.com");
    assert_eq!(json["client_id"], CLIENT_ID);
    assert_eq!(json["resource"], "https://analysis.windows.net/powerbi/api");
    assert_eq!(json["token_type"], "Bearer");
    let expires_at =
        chrono::DateTime::parse_from_rfc3339(json["expires_at"].as_str().unwrap()).unwrap();
    assert_eq!(expires_at.timestamp(), json["expires_on"].as_i64().unwrap());

    // Refreshed at half of the 3 s lifetime, counted from the token's arrival to the
    // millisecond (the file's whole-second `issued_on` is not what the schedule uses), so no
    // earlier than the poll that saw the file allows.
    let first = token_in(&contoso).unwrap();
    wait_for("contoso's refresh", Duration::from_secs(5), || {
        token_in(&contoso).is_some_and(|t| t != first)
    })
    .await;
    let after = first_written.elapsed();
    assert!(
        after >= Duration::from_millis(1300) && after <= Duration::from_millis(2600),
        "refreshed after {after:?}, expected about 1.5 s"
    );
    assert_eq!(sim.request_count("7d1e4f2a-5b6c-4d8e-9f0a-1b2c3d4e5f60"), 1);

    // The v1 tenant: json and raw files hold the same token; raw has no newline, mode 0640.
    let raw_path = dir.path().join("fabrikam.token");
    wait_for("fabrikam's raw file", Duration::from_secs(5), || {
        raw_path.exists()
    })
    .await;
    let raw = std::fs::read_to_string(&raw_path).unwrap();
    assert_eq!(
        Some(raw.clone()),
        token_in(&dir.path().join("fabrikam.json"))
    );
    assert!(!raw.ends_with('\n'));
    use std::os::unix::fs::MetadataExt;
    assert_eq!(std::fs::metadata(&raw_path).unwrap().mode() & 0o777, 0o640);
    assert_eq!(std::fs::metadata(&contoso).unwrap().mode() & 0o777, 0o600);
    let request = sim
        .last_request("7d1e4f2a-5b6c-4d8e-9f0a-1b2c3d4e5f60")
        .unwrap();
    assert_eq!(request.version, powerbi_tokend_sim::ApiVersion::V1);
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_start_reuses_a_fresh_token_and_not_a_foreign_one() {
    let Fixture { sim, dir } =
        fixture(&["contoso.onmicrosoft.com"], Duration::from_secs(3600)).await;
    let contoso = tenant(&sim, "contoso", "contoso.onmicrosoft.com", dir.path());
    let path = dir.path().join("contoso.json");

    // A crash left a temp file behind (its writer, pid 4194305, cannot exist); start-up removes it.
    let leftover = dir
        .path()
        .join(".contoso.json.tmp-4194305-00000000deadbeef-7");
    std::fs::write(&leftover, "half a token").unwrap();
    let daemon = start_daemon(config(vec![contoso.clone()], fast_daemon())).await;
    wait_for("first token", Duration::from_secs(5), || path.exists()).await;
    daemon.stop().await;
    assert!(!leftover.exists(), "the crash leftover was not removed");
    let token = token_in(&path).unwrap();
    assert_eq!(sim.request_count("contoso.onmicrosoft.com"), 1);

    // Restart twice (a crash loop): no request to Entra, the file is untouched.
    for _ in 0..2 {
        let daemon = start_daemon(config(vec![contoso.clone()], fast_daemon())).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        daemon.stop().await;
    }
    assert_eq!(sim.request_count("contoso.onmicrosoft.com"), 1);
    assert_eq!(token_in(&path).unwrap(), token);

    // A different client ID (another app's token in the file) is not reused.
    let mut other_app = contoso.clone();
    other_app.client_id = Some("11111111-2222-3333-4444-555555555555".into());
    sim.set_app(
        "contoso.onmicrosoft.com",
        SimApp {
            client_id: other_app.client_id.as_deref().unwrap().to_owned(),
            secret: SECRET.to_owned(),
            secret_expired: false,
        },
    );
    let daemon = start_daemon(config(vec![other_app], fast_daemon())).await;
    wait_for("a fetch for the new app", Duration::from_secs(5), || {
        sim.request_count("contoso.onmicrosoft.com") == 2
    })
    .await;
    wait_for("the new app's token", Duration::from_secs(5), || {
        read_json(&path).is_some_and(|j| j["client_id"] == "11111111-2222-3333-4444-555555555555")
    })
    .await;
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permanent_failure_retries_slowly_and_recovers_without_restart() {
    let Fixture { sim, dir } = fixture(
        &["bad.example.com", "good.example.com"],
        Duration::from_secs(3600),
    )
    .await;
    // Entra knows a different secret than the one configured.
    reject_secret(&sim, "bad.example.com");
    let bad = tenant(&sim, "bad", "bad.example.com", dir.path());
    let good = tenant(&sim, "good", "good.example.com", dir.path());
    let mut daemon = fast_daemon();
    daemon.permanent_retry_interval = Duration::from_millis(1500);
    let daemon = start_daemon(config(vec![bad, good], daemon)).await;

    // The healthy tenant is not held up by the broken one.
    wait_for("good's token", Duration::from_secs(3), || {
        dir.path().join("good.json").exists()
    })
    .await;
    wait_for("bad's first attempt", Duration::from_secs(3), || {
        sim.request_count("bad.example.com") == 1
    })
    .await;
    let first_attempt = Instant::now();
    // Backoff for transient errors is 100-400 ms here; a permanent error waits the slow interval.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(sim.request_count("bad.example.com"), 1, "retried too fast");
    wait_for("bad's second attempt", Duration::from_secs(3), || {
        sim.request_count("bad.example.com") == 2
    })
    .await;
    assert!(first_attempt.elapsed() >= Duration::from_millis(1400));
    assert!(!dir.path().join("bad.json").exists());

    // Someone fixes the secret in Entra: picked up at the next slow retry, no restart.
    set_secret(&sim, "bad.example.com", SECRET);
    wait_for("bad's token after the fix", Duration::from_secs(4), || {
        dir.path().join("bad.json").exists()
    })
    .await;
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_failures_back_off_and_keep_the_old_token() {
    let Fixture { sim, dir } = fixture(&["contoso.onmicrosoft.com"], Duration::from_secs(2)).await;
    let path = dir.path().join("contoso.json");
    let daemon = start_daemon(config(
        vec![tenant(
            &sim,
            "contoso",
            "contoso.onmicrosoft.com",
            dir.path(),
        )],
        fast_daemon(),
    ))
    .await;
    wait_for("first token", Duration::from_secs(5), || path.exists()).await;
    let first = token_in(&path).unwrap();
    // The refresh at ~1 s fails three times in a row, with three different transient answers.
    sim.push_script(
        "contoso.onmicrosoft.com",
        [
            Behavior::ServerError {
                status: 503,
                json: false,
            },
            Behavior::Html,
            Behavior::Truncated,
        ],
    );
    wait_for("three failed attempts", Duration::from_secs(5), || {
        sim.request_count("contoso.onmicrosoft.com") >= 4
    })
    .await;
    assert_eq!(sim.issued_count("contoso.onmicrosoft.com"), 1);
    assert_eq!(
        token_in(&path).unwrap(),
        first,
        "a failed refresh must not touch the file"
    );
    wait_for("recovery", Duration::from_secs(5), || {
        token_in(&path).is_some_and(|t| t != first)
    })
    .await;
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_is_never_undercut() {
    let Fixture { sim, dir } =
        fixture(&["contoso.onmicrosoft.com"], Duration::from_secs(3600)).await;
    sim.push_script(
        "contoso.onmicrosoft.com",
        [Behavior::Throttle {
            retry_after: RetryAfter::Seconds(2),
            plain_text: true,
        }],
    );
    let path = dir.path().join("contoso.json");
    let daemon = start_daemon(config(
        vec![tenant(
            &sim,
            "contoso",
            "contoso.onmicrosoft.com",
            dir.path(),
        )],
        fast_daemon(),
    ))
    .await;
    wait_for("the throttled attempt", Duration::from_secs(3), || {
        sim.request_count("contoso.onmicrosoft.com") == 1
    })
    .await;
    let throttled = Instant::now();
    wait_for("the retry", Duration::from_secs(5), || path.exists()).await;
    let waited = throttled.elapsed();
    // Backoff alone would retry after 100-400 ms.
    assert!(
        waited >= Duration::from_millis(1900),
        "retried after {waited:?}"
    );
    assert_eq!(sim.request_count("contoso.onmicrosoft.com"), 2);
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sink_failure_is_retried_without_refetching() {
    let Fixture { sim, dir } =
        fixture(&["contoso.onmicrosoft.com"], Duration::from_secs(3600)).await;
    // The parent "directory" is a regular file: every write fails (ENOTDIR), even as root.
    let blocker = dir.path().join("blocked");
    std::fs::write(&blocker, "not a directory").unwrap();
    let contoso = tenant(&sim, "contoso", "contoso.onmicrosoft.com", &blocker);
    let path = blocker.join("contoso.json");
    let daemon = start_daemon(config(vec![contoso], fast_daemon())).await;
    wait_for("a fetched token", Duration::from_secs(3), || {
        sim.issued_count("contoso.onmicrosoft.com") == 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(!path.exists());
    // The disk is fixed: the token already fetched is written, Entra is not asked again.
    std::fs::remove_file(&blocker).unwrap();
    wait_for("the write after the fix", Duration::from_secs(3), || {
        path.exists()
    })
    .await;
    assert_eq!(sim.request_count("contoso.onmicrosoft.com"), 1);
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cron_schedule_forces_extra_refreshes() {
    let Fixture { sim, dir } =
        fixture(&["contoso.onmicrosoft.com"], Duration::from_secs(3600)).await;
    let mut contoso = tenant(&sim, "contoso", "contoso.onmicrosoft.com", dir.path());
    let expression = "* * * * * *";
    contoso.schedule = Some(Box::new(powerbi_tokend::config::CronSchedule {
        expression: expression.to_owned(),
        cron: powerbi_tokend::config::parse_cron(expression).unwrap(),
    }));
    let daemon = start_daemon(config(vec![contoso], fast_daemon())).await;
    // A one-hour token would not be refreshed for 30 minutes; the every-second cron forces it.
    wait_for("three tokens", Duration::from_secs(5), || {
        sim.issued_count("contoso.onmicrosoft.com") >= 3
    })
    .await;
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_tenant_does_not_delay_others_and_shutdown_is_bounded() {
    let Fixture { sim, dir } = fixture(
        &["slow.example.com", "fast.example.com"],
        Duration::from_secs(3600),
    )
    .await;
    sim.set_behavior("slow.example.com", Behavior::Hang);
    let mut daemon = fast_daemon();
    daemon.max_concurrent_requests = 1;
    daemon.request_timeout = Duration::from_millis(800);
    daemon.shutdown_grace = Duration::from_millis(500);
    let daemon = start_daemon(config(
        vec![
            tenant(&sim, "slow", "slow.example.com", dir.path()),
            tenant(&sim, "fast", "fast.example.com", dir.path()),
        ],
        daemon,
    ))
    .await;
    // Even with one request slot, the hanging tenant gives it up at the request timeout.
    wait_for("fast's token", Duration::from_secs(3), || {
        dir.path().join("fast.json").exists()
    })
    .await;
    wait_for("slow to time out and retry", Duration::from_secs(5), || {
        sim.request_count("slow.example.com") >= 2
    })
    .await;
    let stopping = Instant::now();
    daemon.stop().await;
    assert!(
        stopping.elapsed() < Duration::from_secs(2),
        "shutdown took {:?}",
        stopping.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_an_in_flight_refresh_finish() {
    let Fixture { sim, dir } =
        fixture(&["contoso.onmicrosoft.com"], Duration::from_secs(3600)).await;
    sim.set_behavior(
        "contoso.onmicrosoft.com",
        Behavior::Slow(Duration::from_millis(700)),
    );
    let path = dir.path().join("contoso.json");
    let daemon = start_daemon(config(
        vec![tenant(
            &sim,
            "contoso",
            "contoso.onmicrosoft.com",
            dir.path(),
        )],
        fast_daemon(),
    ))
    .await;
    wait_for(
        "the request to be in flight",
        Duration::from_secs(3),
        || sim.request_count("contoso.onmicrosoft.com") == 1,
    )
    .await;
    daemon.stop().await;
    assert!(path.exists(), "the in-flight refresh was abandoned");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_requests_per_second_holds_at_the_token_endpoint() {
    const TENANTS: u64 = 40;
    const RATE: u64 = 10;
    let ids: Vec<String> = (0..TENANTS).map(|i| format!("r{i}.example.com")).collect();
    let id_refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let Fixture { sim, dir } = fixture(&id_refs, Duration::from_secs(3600)).await;
    let tenants = ids
        .iter()
        .enumerate()
        .map(|(i, id)| tenant(&sim, &format!("r{i}"), id, dir.path()))
        .collect();
    let daemon = DaemonConfig {
        max_requests_per_second: Some(RATE as u32),
        ..fast_daemon()
    };
    let started = Instant::now();
    let running = start_daemon(config(tenants, daemon)).await;
    // Sampled every 10 ms: never more than the one-second burst plus the rate since the start.
    let mut samples = 0;
    loop {
        let served = sim.total_requests();
        let elapsed = started.elapsed().as_secs_f64();
        let allowed = RATE + (RATE as f64 * elapsed).floor() as u64;
        assert!(
            served <= allowed,
            "{served} requests {elapsed:.2} s after the start; the cap allows {allowed}"
        );
        samples += 1;
        if served == TENANTS {
            break;
        }
        assert!(
            elapsed < 10.0,
            "only {served} of {TENANTS} requests after 10 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Without the cap forty requests take well under a second; with it, the thirty beyond the
    // burst need three.
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(2900),
        "all {TENANTS} in {took:?}"
    );
    assert!(samples > 100);
    let (_, metrics) = running.get("/metrics").await;
    let waited: f64 = metrics
        .lines()
        .find_map(|line| line.strip_prefix("powerbi_tokend_rate_limit_wait_seconds_total "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(waited > 10.0, "waited {waited} s in all");
    running.stop().await;
}
