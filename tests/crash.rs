//! `kill -9` at random moments while the daemon writes: no reader may ever find a torn, empty or
//! half-written token file, and the temp files the killed writers leave are all removed by the
//! next start — also when every incarnation has the same pid, as PID 1 in a container does.

mod common;

use common::*;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use powerbi_tokend_sim::SimEntra;

const BIN: &str = env!("CARGO_BIN_EXE_powerbi-tokend");
const TENANTS: usize = 30;
const KILLS: usize = 50;

/// A config with `TENANTS` tenants writing raw token files (raw files are never reused at
/// start-up, so every start rewrites every file: writes are in flight whenever the kill lands).
fn config_file(dir: &Path, sim: &SimEntra) -> PathBuf {
    let mut text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n\n[daemon]\nbackoff_min = \"100ms\"\nbackoff_max = \"200ms\"\n\n[defaults]\nauthority_host = \"{}\"\nclient_id = \"{CLIENT_ID}\"\nclient_secret = {{ env = \"THE_SECRET\" }}\nsinks = [ {{ type = \"file\", path = \"tokens/{{name}}.token\", format = \"raw\" }} ]\n",
        sim.authority_host()
    );
    for index in 0..TENANTS {
        text.push_str(&format!(
            "\n[[tenant]]\nname = \"t{index}\"\ntenant_id = \"t{index}.example.com\"\n"
        ));
    }
    let path = dir.join("config.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Every token file that exists is a whole token as the simulator issues them: three base64url
/// parts whose middle one decodes to a JSON object.
fn assert_no_torn_files(tokens: &Path) -> usize {
    use base64::Engine;
    let mut seen = 0;
    for entry in std::fs::read_dir(tokens).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        let token = std::fs::read_to_string(entry.path()).unwrap();
        let parts: Vec<&str> = token.split('.').collect();
        assert_eq!(parts.len(), 3, "{name} is torn: {} bytes", token.len());
        let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(parts[1])
            .unwrap_or_else(|err| panic!("{name} is torn: {err}"));
        let claims: serde_json::Value =
            serde_json::from_slice(&payload).unwrap_or_else(|err| panic!("{name} is torn: {err}"));
        assert!(claims.is_object(), "{name}");
        seen += 1;
    }
    seen
}

fn temp_files(tokens: &Path) -> Vec<String> {
    std::fs::read_dir(tokens)
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|name| name.contains(".tmp-"))
        .collect()
}

/// The daemon, directly or as PID 1 of a new pid namespace, in a process group of its own so
/// that [`kill_all`] reaches `unshare` and the daemon it forked alike. (`unshare --kill-child`
/// alone leaves a daemon behind when `unshare` dies before the child has armed its death
/// signal.)
fn spawn(config: &Path, as_pid_1: bool) -> Child {
    let mut command = if as_pid_1 {
        let mut command = Command::new("unshare");
        command.args(["--pid", "--fork", "--kill-child", "--mount-proc", BIN]);
        command
    } else {
        Command::new(BIN)
    };
    command
        .args(["run", "--config"])
        .arg(config)
        .env("THE_SECRET", SECRET)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .unwrap()
}

/// SIGKILL to the child's whole process group, then reaps the child and waits until its own
/// children (the daemon `unshare` forked) are dead too: a killed process keeps its file locks
/// until it has exited, and the next start must find the temp files of this one unlocked, or it
/// takes them for writes in flight and leaves them.
fn kill_all(child: &mut Child) {
    let children = children_of(child.id());
    let group = rustix::process::Pid::from_child(child);
    let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
    let _ = child.wait();
    let start = std::time::Instant::now();
    while children.iter().any(|pid| alive(*pid)) {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "processes {children:?} survived SIGKILL for 10 s"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The pids of a process's children, from /proc.
fn children_of(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|pid| pid.parse().ok())
        .collect()
}

/// Whether a process still runs: a zombie has exited (and released its locks) already.
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        // The state follows the command name, which is in parentheses and may hold spaces.
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X")
    })
}

async fn kill_loop(as_pid_1: bool) {
    let Fixture { sim, dir } = fixture(&[], Duration::from_secs(3600)).await;
    for index in 0..TENANTS {
        register(
            &sim,
            &format!("t{index}.example.com"),
            Duration::from_secs(3600),
        );
    }
    let config = config_file(dir.path(), &sim);
    let tokens = dir.path().join("tokens");
    let mut leftovers_seen = 0;
    for _ in 0..KILLS {
        let before = sim.total_requests();
        let mut child = spawn(&config, as_pid_1);
        // Once the first token requests are out, the writes follow within milliseconds: kill at
        // a different moment of them each round.
        wait_for("the first token requests", Duration::from_secs(10), || {
            sim.total_requests() > before
        })
        .await;
        let delay = Duration::from_micros(fastrand::u64(0..15_000));
        tokio::time::sleep(delay).await;
        kill_all(&mut child);
        assert_no_torn_files(&tokens);
        leftovers_seen += temp_files(&tokens).len();
    }
    // A last, clean start removes whatever the killed writers left, and writes every file.
    let mut child = spawn(&config, as_pid_1);
    wait_for("every token file", Duration::from_secs(20), || {
        assert_no_torn_files(&tokens) == TENANTS && temp_files(&tokens).is_empty()
    })
    .await;
    // No refresh is due for an hour: nothing is in flight, so even a SIGKILL (which `unshare`
    // passes on, unlike SIGTERM) leaves nothing behind.
    kill_all(&mut child);
    assert_eq!(temp_files(&tokens), Vec::<String>::new());
    assert_eq!(assert_no_torn_files(&tokens), TENANTS);
    // The kills did land in the middle of writes, or this test proved nothing.
    assert!(leftovers_seen > 0, "no kill interrupted a write");
    eprintln!("{KILLS} kills, {leftovers_seen} temp files seen between kills, all removed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_loop_leaves_no_torn_file_and_no_temp_file() {
    kill_loop(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(all(has_unshare, has_root)),
    ignore = "skipped: needs unshare (util-linux) and root"
)]
async fn hardening_8_kill_9_loop_as_pid_1_leaves_no_torn_file_and_no_temp_file() {
    kill_loop(true).await;
}
