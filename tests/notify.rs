//! systemd's notification protocol, end to end: the real binary with `NOTIFY_SOCKET` pointing at
//! a datagram socket this test owns, and `WATCHDOG_USEC` set, as systemd would start it.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::process::{Spawned, status_json};
use common::*;

/// Every message received, with when it arrived.
type Inbox = Arc<Mutex<Vec<(Instant, String)>>>;

fn messages(inbox: &Inbox) -> Vec<(Instant, String)> {
    inbox.lock().unwrap().clone()
}

/// Waits (up to 10 s) for a message for which `matches` holds, and returns it.
async fn wait_message(
    inbox: &Inbox,
    what: &str,
    matches: impl Fn(&str) -> bool,
) -> (Instant, String) {
    let start = Instant::now();
    loop {
        if let Some(found) = messages(inbox).into_iter().find(|(_, m)| matches(m)) {
            return found;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no {what} within 10 s; received: {:?}",
            messages(inbox).iter().map(|(_, m)| m).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_status_watchdog_reloading_and_stopping_reach_systemd() {
    let Fixture { sim, dir } = fixture(
        &["contoso.onmicrosoft.com", "northwind.onmicrosoft.com"],
        Duration::from_secs(3600),
    )
    .await;
    // northwind's secret is rejected: a failing tenant must not hold readiness back.
    reject_secret(&sim, "northwind.onmicrosoft.com");
    let socket_path = dir.path().join("notify.sock");
    let socket = tokio::net::UnixDatagram::bind(&socket_path).unwrap();
    let inbox: Inbox = Arc::default();
    tokio::spawn({
        let inbox = inbox.clone();
        async move {
            let mut buffer = vec![0u8; 4096];
            while let Ok(n) = socket.recv(&mut buffer).await {
                let message = String::from_utf8_lossy(&buffer[..n]).into_owned();
                inbox.lock().unwrap().push((Instant::now(), message));
            }
        }
    });
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n\n[defaults]\nclient_id = \"{CLIENT_ID}\"\nclient_secret = {{ env = \"TEST_SECRET\" }}\nauthority_host = \"{}\"\nsinks = [ {{ type = \"file\", path = \"tokens/{{name}}.json\" }} ]\n\n[[tenant]]\nname = \"contoso\"\ntenant_id = \"contoso.onmicrosoft.com\"\n\n[[tenant]]\nname = \"northwind\"\ntenant_id = \"northwind.onmicrosoft.com\"\n",
            sim.authority_host()
        ),
    )
    .unwrap();
    let socket_env = socket_path.display().to_string();
    let mut daemon = Spawned::run(
        &config,
        &dir.path().join("log"),
        "info",
        &[
            ("TEST_SECRET", SECRET),
            ("NOTIFY_SOCKET", &socket_env),
            // One second: a ping every 500 ms.
            ("WATCHDOG_USEC", "1000000"),
        ],
    );

    // READY=1 after the first pass, with the summary; both tenants have had their attempt.
    let (ready_at, ready) = wait_message(&inbox, "READY=1", |m| m.starts_with("READY=1")).await;
    assert!(ready.contains("STATUS=1/2 healthy, 1 failing"), "{ready:?}");
    let addr = daemon.admin_addr().await;
    let status = status_json(addr).await;
    for tenant in status["tenants"].as_array().unwrap() {
        assert_ne!(tenant["state"], "pending", "READY=1 before {tenant}");
    }

    // WATCHDOG=1 at half the interval: about five in 2.5 s, never a gap systemd would punish.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let pings: Vec<Instant> = messages(&inbox)
        .into_iter()
        .filter(|(at, m)| m == "WATCHDOG=1" && *at >= ready_at)
        .map(|(at, _)| at)
        .collect();
    assert!(
        (3..=7).contains(&pings.len()),
        "{} watchdog pings in 2.5 s at a 500 ms cadence",
        pings.len()
    );
    let widest = pings
        .windows(2)
        .map(|pair| pair[1] - pair[0])
        .max()
        .unwrap();
    assert!(
        widest < Duration::from_secs(1),
        "a gap of {widest:?} between pings"
    );

    // SIGHUP: RELOADING=1 with the monotonic clock, then READY=1 again.
    let before_reload = messages(&inbox).len();
    daemon.signal("HUP");
    let (reloading_at, reloading) =
        wait_message(&inbox, "RELOADING=1", |m| m.starts_with("RELOADING=1")).await;
    let usec = reloading
        .lines()
        .find_map(|line| line.strip_prefix("MONOTONIC_USEC="))
        .unwrap_or_else(|| panic!("no MONOTONIC_USEC in {reloading:?}"));
    assert!(usec.parse::<u64>().unwrap() > 0);
    let after: Vec<(Instant, String)> = messages(&inbox).split_off(before_reload);
    let start = Instant::now();
    let ready_again = loop {
        let found = messages(&inbox)
            .into_iter()
            .find(|(at, m)| *at >= reloading_at && m.starts_with("READY=1"));
        if let Some(found) = found {
            break found;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no READY=1 after RELOADING=1: {after:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert!(ready_again.1.contains("STATUS="), "{:?}", ready_again.1);

    // SIGTERM: STOPPING=1, then a clean exit.
    daemon.signal("TERM");
    wait_message(&inbox, "STOPPING=1", |m| m == "STOPPING=1").await;
    let exit = daemon.wait_exit(Duration::from_secs(10)).await;
    assert!(exit.success(), "{exit}");
}
