//! The hook the binary uses to give a reload's freed memory back to the system runs after every
//! reload, accepted or rejected. A file of its own: the hook is process-wide, and no other test
//! may reload in this process.

mod common;

use common::*;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use powerbi_tokend::{Control, config};

/// Reloads the hook has seen.
static RELOADS: AtomicUsize = AtomicUsize::new(0);

fn count_reload() {
    RELOADS.fetch_add(1, Ordering::SeqCst);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_after_reload_hook_runs_after_accepted_and_rejected_reloads() {
    powerbi_tokend::after_reload(count_reload);
    let Fixture { sim, dir } = fixture(&["a.example.com"], Duration::from_secs(3600)).await;
    let path = dir.path().join("config.toml");
    std::fs::write(dir.path().join("secret"), format!("{SECRET}\n")).unwrap();
    let good = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nwatch_config = false\n\n[defaults]\nauthority_host = \"{}\"\nclient_id = \"{CLIENT_ID}\"\nclient_secret = {{ file = \"secret\" }}\nsinks = [ {{ type = \"file\", path = \"tokens/{{name}}.json\" }} ]\n\n[[tenant]]\nname = \"a\"\ntenant_id = \"a.example.com\"\n",
        sim.authority_host()
    );
    std::fs::write(&path, &good).unwrap();
    let daemon = start_daemon(config::load(&path).await.unwrap()).await;
    assert_eq!(
        RELOADS.load(Ordering::SeqCst),
        0,
        "start-up is not a reload"
    );

    std::fs::write(&path, "[[tenant]]\nname = 5\n").unwrap();
    reload_and_wait(&daemon, 1, "failure").await;
    std::fs::write(&path, &good).unwrap();
    reload_and_wait(&daemon, 2, "success").await;
    daemon.stop().await;
}

/// Sends a reload, waits until the hook has run `count` times in all, and checks the reload
/// was counted with `result` (once: each result happens once in the test).
async fn reload_and_wait(daemon: &Running, count: usize, result: &str) {
    daemon.control.send(Control::Reload).await.unwrap();
    wait_for(
        &format!("the hook after reload {count} ({result})"),
        Duration::from_secs(5),
        || RELOADS.load(Ordering::SeqCst) == count,
    )
    .await;
    let (_, metrics) = daemon.get("/metrics").await;
    assert!(
        metrics.contains(&format!(
            "powerbi_tokend_config_reloads_total{{result=\"{result}\"}} 1"
        )),
        "{metrics}"
    );
}
