//! The real binary as a child process: spawn `run` with its JSON log in a file, find the admin
//! server in that log, send signals, wait for the exit without blocking the test's runtime (the
//! simulator runs on it), and read the child's resident memory.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::wait_for;

pub const BIN: &str = env!("CARGO_BIN_EXE_powerbi-tokend");

/// `powerbi-tokend run` in the background. Killed on drop if it is still running, so a failed
/// assertion does not leave a daemon behind.
pub struct Spawned {
    pub child: Child,
    /// Its stderr: the JSON log.
    pub log: PathBuf,
}

impl Spawned {
    /// Starts `run --log-format json --config <config>` with `RUST_LOG=<filter>` and `env`,
    /// stderr into `log`.
    pub fn run(config: &Path, log: &Path, filter: &str, env: &[(&str, &str)]) -> Spawned {
        let mut command = Command::new(BIN);
        command
            .args(["run", "--log-format", "json", "--config"])
            .arg(config)
            .env("RUST_LOG", filter)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap());
        for (key, value) in env {
            command.env(key, value);
        }
        Spawned {
            child: command.spawn().unwrap(),
            log: log.to_owned(),
        }
    }

    /// The log so far (lossy: a test asserting on bytes reads the file itself).
    pub fn log_text(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.log).unwrap_or_default()).into_owned()
    }

    /// The first log line containing `needle`, parsed.
    pub fn log_line(&self, needle: &str) -> Option<serde_json::Value> {
        self.log_text()
            .lines()
            .find(|line| line.contains(needle))
            .map(|line| {
                serde_json::from_str(line)
                    .unwrap_or_else(|err| panic!("log line is not JSON ({err}): {line}"))
            })
    }

    /// The admin server's address, from the "admin server listening" line (waits up to 10 s).
    pub async fn admin_addr(&self) -> SocketAddr {
        wait_for("the admin server", Duration::from_secs(10), || {
            self.log_line("admin server listening").is_some()
        })
        .await;
        let line = self.log_line("admin server listening").unwrap();
        line["addr"]
            .as_str()
            .unwrap_or_else(|| panic!("no addr in {line}"))
            .parse()
            .unwrap()
    }

    pub fn signal(&self, signal: &str) {
        signal_pid(self.child.id(), signal);
    }

    /// Waits (polling, so the runtime keeps serving) for the exit; panics after `timeout`.
    pub async fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        wait_exit(&mut self.child, timeout).await
    }

    /// Resident memory in KiB (`VmRSS` of /proc/<pid>/status); `None` once the process is gone.
    pub fn rss_kib(&self) -> Option<u64> {
        rss_kib(self.child.id())
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

pub fn signal_pid(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(status.success(), "kill -{signal} {pid}");
}

/// Waits for `child` to exit without blocking the runtime; kills it and panics after `timeout`.
pub async fn wait_exit(child: &mut Child, timeout: Duration) -> ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            panic!("process did not exit within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `VmRSS` of a process in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// GETs `http://<addr><path>` with a deadline: (status, body, how long it took).
pub async fn get(addr: SocketAddr, path: &str, timeout: Duration) -> (u16, String, Duration) {
    let started = Instant::now();
    let response = reqwest::Client::builder()
        .no_proxy()
        .timeout(timeout)
        .build()
        .unwrap()
        .get(format!("http://{addr}{path}"))
        .send()
        .await
        .unwrap_or_else(|err| panic!("GET {path} failed within {timeout:?}: {err}"));
    let status = response.status().as_u16();
    let body = response.text().await.unwrap();
    (status, body, started.elapsed())
}

/// `/status` parsed; panics if it is not 200 with a JSON document.
pub async fn status_json(addr: SocketAddr) -> serde_json::Value {
    let (code, body, _) = get(addr, "/status", Duration::from_secs(5)).await;
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap_or_else(|err| panic!("/status is not JSON ({err}): {body}"))
}

/// The `/status` entry of one tenant.
pub fn entry<'a>(status: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    status["tenants"]
        .as_array()
        .and_then(|tenants| tenants.iter().find(|t| t["name"] == name))
        .unwrap_or_else(|| panic!("{name} missing from /status: {status}"))
}

/// Polls `/status` every 20 ms until `condition` holds; panics with the last reply after
/// `timeout`.
pub async fn wait_for_status(
    addr: SocketAddr,
    what: &str,
    timeout: Duration,
    condition: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let start = Instant::now();
    loop {
        let status = status_json(addr).await;
        if condition(&status) {
            return status;
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}: {status}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
