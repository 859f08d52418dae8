//! The systemd notification protocol (`sd_notify`), by hand: one datagram per message to the
//! socket named by `$NOTIFY_SOCKET` (a path, or `@name` in the abstract namespace). The protocol is
//! a few lines; a crate would add a dependency for what `UnixDatagram::send_to` does.
//!
//! What the daemon says, and when:
//! * `READY=1` once the admin server is bound and every tenant has had its first attempt or warm
//!   start, failed or not: Entra being down at boot must not make systemd give up on us;
//! * `STATUS=<healthy>/<tenants> healthy, <n> failing` at start-up and every
//!   [`STATUS_INTERVAL`] after, shown by `systemctl status`;
//! * `RELOADING=1` with `MONOTONIC_USEC=` before a reload, and `READY=1` after it, so
//!   `systemctl reload` waits for the reload to finish (`Type=notify-reload` on systemd 253+);
//! * `STOPPING=1` when shutdown begins;
//! * `WATCHDOG=1` at half of `$WATCHDOG_USEC`, from a task on the runtime that first has a freshly
//!   spawned task run to completion: a ping proves that the scheduler still runs tasks. If every
//!   worker is blocked, no ping is sent and systemd restarts the service.
//!
//! Without `$NOTIFY_SOCKET` every call does nothing.

use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// How often `STATUS=` is refreshed while running.
pub const STATUS_INTERVAL: Duration = Duration::from_secs(10);

/// A connection to systemd's notification socket, if the service manager gave one.
#[derive(Debug, Default)]
pub struct Notifier {
    target: Option<(UnixDatagram, SocketAddr)>,
}

impl Notifier {
    /// From `$NOTIFY_SOCKET`; a missing or unusable socket gives a notifier that does nothing
    /// (logged once).
    pub fn from_env() -> Self {
        let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
            return Notifier::default();
        };
        match Self::connect(&path) {
            Ok(target) => Notifier {
                target: Some(target),
            },
            Err(err) => {
                tracing::warn!(socket = ?path, error = %err, "NOTIFY_SOCKET is set but unusable; not notifying systemd");
                Notifier::default()
            }
        }
    }

    fn connect(path: &std::ffi::OsStr) -> std::io::Result<(UnixDatagram, SocketAddr)> {
        use std::os::unix::ffi::OsStrExt;
        let bytes = path.as_bytes();
        let address = match bytes.strip_prefix(b"@") {
            Some(name) => {
                use std::os::linux::net::SocketAddrExt;
                SocketAddr::from_abstract_name(name)?
            }
            None => SocketAddr::from_pathname(std::path::Path::new(path))?,
        };
        let socket = UnixDatagram::unbound()?;
        // A full socket buffer drops a notification instead of stalling a worker.
        socket.set_nonblocking(true)?;
        Ok((socket, address))
    }

    /// Whether there is a service manager to talk to.
    pub fn enabled(&self) -> bool {
        self.target.is_some()
    }

    /// Sends one message (newline-separated `KEY=value` lines); failures are logged at debug.
    pub fn send(&self, message: &str) {
        if let Some((socket, address)) = &self.target
            && let Err(err) = socket.send_to_addr(message.as_bytes(), address)
        {
            tracing::debug!(error = %err, "cannot notify systemd");
        }
    }

    /// `RELOADING=1` with the monotonic clock, as `Type=notify-reload` requires.
    pub fn reloading(&self) {
        if self.enabled() {
            let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
            let usec = u64::try_from(now.tv_sec)
                .unwrap_or(0)
                .saturating_mul(1_000_000)
                .saturating_add(u64::try_from(now.tv_nsec).unwrap_or(0) / 1_000);
            self.send(&format!("RELOADING=1\nMONOTONIC_USEC={usec}"));
        }
    }
}

/// Half of `$WATCHDOG_USEC`, if the watchdog is on for this process (`$WATCHDOG_PID` unset or
/// ours).
pub fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID")
        && pid.parse::<u32>().ok() != Some(std::process::id())
    {
        return None;
    }
    (usec > 0).then(|| Duration::from_micros(usec) / 2)
}

/// Pings the watchdog every `interval` until `stop`, each time only after a freshly spawned task
/// has run: a runtime whose workers are all blocked sends nothing.
pub async fn watchdog(
    notifier: std::sync::Arc<Notifier>,
    interval: Duration,
    stop: CancellationToken,
) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let probe = tokio::spawn(async {});
        if tokio::time::timeout(interval, probe)
            .await
            .is_ok_and(|done| done.is_ok())
        {
            notifier.send("WATCHDOG=1");
        } else {
            tracing::warn!(
                "the runtime did not run a task within the watchdog interval; not pinging"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// A test-owned notification socket and a notifier pointed at it.
    fn socket() -> (tempfile::TempDir, UnixDatagram, Notifier) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let receiver = UnixDatagram::bind(&path).unwrap();
        receiver.set_nonblocking(true).unwrap();
        let notifier = Notifier {
            target: Some(Notifier::connect(path.as_os_str()).unwrap()),
        };
        (dir, receiver, notifier)
    }

    fn received(socket: &UnixDatagram) -> Vec<String> {
        let mut out = Vec::new();
        let mut buffer = [0u8; 512];
        while let Ok(n) = socket.recv(&mut buffer) {
            out.push(String::from_utf8_lossy(&buffer[..n]).into_owned());
        }
        out
    }

    #[test]
    fn reloading_carries_the_monotonic_clock() {
        let (_dir, receiver, notifier) = socket();
        notifier.reloading();
        let messages = received(&receiver);
        assert_eq!(messages.len(), 1);
        let (first, second) = messages[0].split_once('\n').unwrap();
        assert_eq!(first, "RELOADING=1");
        let usec: u64 = second
            .strip_prefix("MONOTONIC_USEC=")
            .unwrap()
            .parse()
            .unwrap();
        assert!(usec > 0);
    }

    #[test]
    fn without_a_socket_nothing_is_sent_and_nothing_fails() {
        let notifier = Notifier::default();
        assert!(!notifier.enabled());
        notifier.send("READY=1");
        notifier.reloading();
    }

    /// The watchdog's guarantee, with the runtime's only worker blocked: no ping while it is
    /// blocked, pings again once it is free.
    #[test]
    fn no_watchdog_ping_while_the_runtime_is_blocked() {
        let (_dir, receiver, notifier) = socket();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let stop = CancellationToken::new();
        let interval = Duration::from_millis(20);
        runtime.block_on(async {
            let watchdog = tokio::spawn(watchdog(Arc::new(notifier), interval, stop.clone()));
            tokio::time::sleep(interval * 5).await;
            let before = received(&receiver).len();
            assert!(before >= 2, "only {before} pings while the runtime ran");
            // Block the only worker for ten intervals.
            std::thread::sleep(interval * 10);
            let during = received(&receiver).len();
            assert_eq!(during, 0, "pinged while the runtime was blocked");
            tokio::time::sleep(interval * 5).await;
            assert!(
                !received(&receiver).is_empty(),
                "no ping after the runtime was free"
            );
            stop.cancel();
            watchdog.await.unwrap();
        });
    }
}
