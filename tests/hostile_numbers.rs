//! Numbers from a hostile or broken server, end to end: the daemon runs in process against the
//! simulated Entra ID, which answers with [`Behavior::Raw`] exactly what no real server sends.
//! Every test here failed before the numbers were bounded at the edge: a panicking tenant task,
//! an empty `/status` reply, a token trusted for 31,700 years, a refresh storm.

mod common;

use common::process::{entry, status_json, wait_for_status};
use common::*;
use powerbi_tokend::clock::unix_now;
use std::time::{Duration, Instant};

use powerbi_tokend_sim::Behavior;

/// A 200 answer with this JSON body, as a raw answer (no Entra validation, no other header).
fn raw_json(body: &str) -> Behavior {
    Behavior::Raw {
        status: 200,
        headers: vec![("Content-Type".to_owned(), "application/json".to_owned())],
        body: body.as_bytes().to_vec(),
    }
}

/// Unix seconds of an RFC 3339 string in `/status`.
fn unix_of(value: &serde_json::Value) -> i64 {
    let text = value
        .as_str()
        .unwrap_or_else(|| panic!("not a string: {value}"));
    chrono::DateTime::parse_from_rfc3339(text)
        .unwrap_or_else(|err| panic!("{text} is not RFC 3339: {err}"))
        .timestamp()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hardening_1_huge_retry_after_or_refresh_in_does_not_kill_the_tenant() {
    let Fixture { sim, dir } = fixture(
        &["retry.example.com", "hint.example.com"],
        Duration::from_secs(3),
    )
    .await;
    // u64::MAX seconds: adding it to the clock used to panic the tenant task.
    sim.push_script(
        "retry.example.com",
        [Behavior::Raw {
            status: 429,
            headers: vec![("Retry-After".to_owned(), u64::MAX.to_string())],
            body: b"Too Many Requests".to_vec(),
        }],
    );
    // i64::MAX seconds of `refresh_in` on an otherwise fine token; then the server is normal.
    sim.push_script(
        "hint.example.com",
        [raw_json(&format!(
            r#"{{"access_token":"hostile-hint","token_type":"Bearer","expires_in":3,"refresh_in":{}}}"#,
            i64::MAX
        ))],
    );
    let daemon = start_daemon(config(
        vec![
            tenant(&sim, "retry", "retry.example.com", dir.path()),
            tenant(&sim, "hint", "hint.example.com", dir.path()),
        ],
        fast_daemon(),
    ))
    .await;

    // The throttled tenant is alive and waits the capped hour, not 584 billion years.
    let status = wait_for_status(
        daemon.addr,
        "retry's throttled attempt",
        Duration::from_secs(5),
        |s| entry(s, "retry")["last_error"]["reason"] == "throttled",
    )
    .await;
    let retry = entry(&status, "retry");
    assert_eq!(retry["state"], "retrying", "{retry}");
    let wait = unix_of(&retry["next_refresh_at"]) - unix_now();
    assert!(
        (3500..=3601).contains(&wait),
        "retry in {wait} s, expected the one-hour cap: {retry}"
    );

    // The tenant with the absurd hint keeps its token, refreshes at half life as usual, and so
    // gets the (now normal) server's token.
    let hint = dir.path().join("hint.json");
    wait_for("the hostile hint's token", Duration::from_secs(5), || {
        token_in(&hint).is_some()
    })
    .await;
    wait_for(
        "a normal token after the hint",
        Duration::from_secs(6),
        || token_in(&hint).is_some_and(|t| t != "hostile-hint"),
    )
    .await;
    assert!(sim.request_count("hint.example.com") >= 2);

    let status = status_json(daemon.addr).await;
    for name in ["retry", "hint"] {
        assert_eq!(entry(&status, name)["task_panics"], 0, "{status}");
    }
    assert_eq!(entry(&status, "hint")["state"], "healthy", "{status}");
    let (code, body) = daemon.get("/healthz").await;
    assert_eq!(code, 200, "{body}");
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hardening_2_far_future_expiry_keeps_status_valid_and_is_not_trusted() {
    let Fixture { sim, dir } = fixture(
        &[
            "absurd.example.com",
            "normal.example.com",
            "stale.example.com",
        ],
        Duration::from_secs(3600),
    )
    .await;
    // 10^12 seconds is about 31,700 years: past year 9999, where RFC 3339 stops.
    sim.set_behavior(
        "absurd.example.com",
        raw_json(r#"{"access_token":"absurd","token_type":"Bearer","expires_in":1000000000000}"#),
    );
    // A token file from a broken run (or a broken server) claiming the same absurd expiry: warm
    // start must not adopt it.
    let stale = tenant(&sim, "stale", "stale.example.com", dir.path());
    let now = unix_now();
    let planted = serde_json::json!({
        "access_token": "planted",
        "token_type": "Bearer",
        "expires_on": now + 1_000_000_000_000,
        "expires_at": "",
        "issued_on": now,
        "tenant": "stale",
        "tenant_id": stale.tenant_id,
        "client_id": stale.client_id.as_deref(),
        "resource": &*stale.resource,
        "scope": stale.requested_scope(),
        "audience": null,
    });
    let stale_path = dir.path().join("stale.json");
    std::fs::write(&stale_path, planted.to_string()).unwrap();
    let daemon = start_daemon(config(
        vec![
            tenant(&sim, "absurd", "absurd.example.com", dir.path()),
            tenant(&sim, "normal", "normal.example.com", dir.path()),
            stale,
        ],
        fast_daemon(),
    ))
    .await;

    let status = wait_for_status(
        daemon.addr,
        "every tenant's first attempt",
        Duration::from_secs(5),
        |s| {
            entry(s, "absurd")["last_error"]["reason"] == "bad_response"
                && entry(s, "normal")["state"] == "healthy"
                && entry(s, "stale")["state"] == "healthy"
        },
    )
    .await;
    assert_eq!(status["tenants"].as_array().unwrap().len(), 3, "{status}");
    let absurd = entry(&status, "absurd");
    assert_eq!(absurd["state"], "retrying", "{absurd}");
    assert!(absurd["expires_at"].is_null(), "{absurd}");
    assert!(
        !dir.path().join("absurd.json").exists(),
        "the absurd token was written"
    );

    // The planted file was not trusted: a token was fetched and replaced it.
    assert_eq!(sim.request_count("stale.example.com"), 1);
    let written = read_json(&stale_path).unwrap();
    assert_ne!(written["access_token"], "planted");
    let expires_on = written["expires_on"].as_i64().unwrap();
    assert!(expires_on <= unix_now() + 3600, "{written}");
    for name in ["normal", "stale"] {
        let expires_at = unix_of(&entry(&status, name)["expires_at"]);
        assert!(expires_at > now && expires_at <= now + 3700, "{status}");
    }
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hardening_3_one_second_tokens_do_not_storm() {
    // Every token lives one second (`"expires_in": 1`). Whole-second receipt times used to put
    // the refresh point in the past on arrival: about 13 requests a second, forever.
    let Fixture { sim, dir } = fixture(&["storm.example.com"], Duration::from_secs(1)).await;
    let daemon = start_daemon(config(
        vec![tenant(&sim, "storm", "storm.example.com", dir.path())],
        fast_daemon(),
    ))
    .await;
    wait_for("the first token", Duration::from_secs(5), || {
        dir.path().join("storm.json").exists()
    })
    .await;
    let counted = Instant::now();
    let before = sim.request_count("storm.example.com");
    // Four more requests: the tenant keeps refreshing (it is not stuck), and at most one
    // attempt a second means they cannot come sooner than three seconds apart end to end.
    wait_for("four more refreshes", Duration::from_secs(8), || {
        sim.request_count("storm.example.com") >= before + 4
    })
    .await;
    let took = counted.elapsed();
    assert!(
        took >= Duration::from_millis(2500),
        "four refreshes of a one-second token within {took:?}"
    );
    let (code, _) = daemon.get("/healthz").await;
    assert_eq!(code, 200);
    daemon.stop().await;
}
