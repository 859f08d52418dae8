//! The daemon's one connection to Redis, shared by every Redis sink and by the fleet.
//!
//! One multiplexed connection (or one cluster connection) carries every tenant's commands:
//! redis-rs pipelines concurrent requests on it, so ten thousand tenants do not need ten
//! thousand sockets. The connection is made lazily and made again after it breaks, with
//! exponential backoff, reading the password again each time so a rotated one is picked up.
//!
//! A connection attempt runs as a task of its own, never under the lock callers take to find
//! the connection. Callers wait for it only while Redis is in good standing (the first
//! connection, or one after a clean disconnect such as a server restart). Once Redis has
//! failed to connect or left a command unanswered (a hung or frozen server), callers get an
//! error at once until an attempt in the background succeeds: a Redis outage is a `sink`
//! failure of the tenants that write there, never a queue of callers behind a dead server.
//!
//! The scripts live here too: the newer-wins token write and the lease release are single
//! server-side scripts, so two writers racing cannot leave an older token behind, and a replica
//! can only release a lease it still owns.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};
use secrecy::ExposeSecret;
use tokio::sync::watch;

use crate::config::RedisConfig;
use crate::safe_read::{self, Symlinks};

/// Shortest wait before connecting again after a failure.
const RECONNECT_MIN: Duration = Duration::from_millis(250);

/// Longest wait before connecting again: a Redis that comes back is used within this. An
/// attempt costs a connect (or a socket that waits `connect_timeout` on a hung server) and no
/// log line, so it can be short.
const RECONNECT_MAX: Duration = Duration::from_secs(2);

/// How long the caller that starts a connection attempt while Redis is in bad standing waits
/// for it: long enough for a refused connection or one to a server that is back, short enough
/// that a hung server costs that caller little.
const QUICK_CONNECT: Duration = Duration::from_millis(200);

/// Largest `ca_file` read for Redis TLS.
const MAX_CA_BYTES: u64 = 1024 * 1024;

/// A failed Redis operation, worded for an operator: it names Redis and the server, and never
/// the password or a value.
#[derive(Clone, Debug, thiserror::Error)]
#[error("Redis at {server}: {message}")]
pub struct StoreError {
    /// The URL (or first seed node) as configured; it carries no credentials.
    pub server: Arc<str>,
    /// What went wrong.
    pub message: String,
}

/// A connection to one server or to a cluster; both multiplex every caller's commands.
#[derive(Clone)]
pub(crate) enum Conn {
    /// One Redis server.
    Single(MultiplexedConnection),
    /// Redis Cluster: commands are routed by key slot.
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(conn) => conn.req_packed_command(cmd),
            Conn::Cluster(conn) => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(conn) => conn.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(conn) => conn.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(conn) => conn.get_db(),
            Conn::Cluster(conn) => conn.get_db(),
        }
    }
}

/// The shared Redis connection.
pub struct Store {
    /// What a connection is made from; shared with the connecting task.
    settings: Arc<Settings>,
    /// The connection and its standing, locked only briefly (never across an await).
    state: Arc<Mutex<State>>,
}

/// What every connection attempt needs.
struct Settings {
    config: RedisConfig,
    /// The trust anchors for `rediss://` when set (the daemon's `ca_file`); the system's
    /// otherwise. Unlike for HTTPS they replace the system's: redis-rs takes one root store, and
    /// a Redis with TLS is typically signed by a private CA.
    ca_file: Option<std::path::PathBuf>,
    /// For messages: the first URL.
    server: Arc<str>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("server", &self.settings.server)
            .finish_non_exhaustive()
    }
}

#[derive(Default)]
struct State {
    /// The connection in use, and its generation (so that only the first caller to see it
    /// fail drops it).
    conn: Option<(Conn, u64)>,
    generation: u64,
    /// Failed connection attempts and unanswered commands since the last good connection: the
    /// backoff's exponent, and while above zero, callers do not wait for a connection attempt.
    failures: u32,
    /// No connection attempt before this.
    not_before: Option<Instant>,
    /// Why Redis is not usable now, repeated to callers until a connection succeeds.
    last_error: Option<String>,
    /// The attempt in flight: it sends `true` when it has ended, whatever its outcome.
    connecting: Option<watch::Receiver<bool>>,
}

/// What the newer-wins write did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteOutcome {
    /// Written (and the notification published, if any).
    Written,
    /// Redis already held this very value: nothing written, nothing published.
    Same,
    /// Redis holds a token that expires later: it stays.
    Newer,
}

/// `KEYS[1]` the token key. `ARGV`: value, expires_on in Unix milliseconds, channel (empty for
/// none), notification. Compares against the key's own expiry (server time plus `PTTL`), which
/// is the stored token's `expires_on`: the value itself may be a raw token without one. Half a
/// second of slack absorbs the millisecond rounding of `PTTL`; `expires_on` is whole seconds.
///
/// The expiry is set as `PX` from the server's `TIME`, rounded up, so the key vanishes at
/// `expires_on` or up to a millisecond before, never after. `PXAT` would say it directly but
/// needs Redis 6.2, and Azure Cache for Redis 6 is 6.0; this works from Redis 5 on.
const WRITE_SCRIPT: &str = r"
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.ceil(tonumber(now[2]) / 1000)
local expires = tonumber(ARGV[2])
if expires <= now_ms then return 'expired' end
local ttl = redis.call('PTTL', KEYS[1])
if ttl > 0 then
  if now_ms + ttl > expires + 500 then return 'newer' end
  if redis.call('GET', KEYS[1]) == ARGV[1] then return 'same' end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', expires - now_ms)
if ARGV[3] ~= '' then redis.call('PUBLISH', ARGV[3], ARGV[4]) end
return 'written'
";

/// Deletes the lease `KEYS[1]` only if `ARGV[1]` (this replica) still owns it.
const RELEASE_SCRIPT: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
";

impl Store {
    /// A store for `config`; nothing is connected until the first command.
    pub fn new(config: RedisConfig, ca_file: Option<std::path::PathBuf>) -> Self {
        let server: Arc<str> = config.urls.first().map_or("", String::as_str).into();
        Store {
            settings: Arc::new(Settings {
                config,
                ca_file,
                server,
            }),
            state: Arc::new(Mutex::new(State::default())),
        }
    }

    /// The configuration it was made from (reloads compare it).
    pub fn config(&self) -> &RedisConfig {
        &self.settings.config
    }

    /// The notification channel.
    pub fn channel(&self) -> &str {
        &self.settings.config.channel
    }

    fn error(&self, message: impl Into<String>) -> StoreError {
        self.settings.error(message)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// The current connection. Without one, starts a connection attempt (unless one is under
    /// way or the backoff holds) and waits for it, but only while Redis is in good standing:
    /// after a failure, callers are told at once and the attempt goes on without them.
    async fn connection(&self) -> Result<(Conn, u64), StoreError> {
        let (mut attempt, wait) = {
            let mut state = self.lock();
            if let Some((conn, generation)) = &state.conn {
                return Ok((conn.clone(), *generation));
            }
            // An attempt whose task is gone (it cannot panic, but if it did) no longer counts.
            let under_way = state
                .connecting
                .as_ref()
                .filter(|attempt| !*attempt.borrow() && attempt.has_changed().is_ok())
                .cloned();
            let (attempt, started) = match under_way {
                Some(attempt) => (attempt, false),
                None if state
                    .not_before
                    .is_some_and(|not_before| Instant::now() < not_before) =>
                {
                    return Err(self.unusable(&state));
                }
                None => (self.start_connecting(&mut state), true),
            };
            if state.failures > 0 && !started {
                return Err(self.unusable(&state));
            }
            // In bad standing, the caller that started the attempt waits only briefly: a
            // server that is back answers within that, a hung one does not hold it long.
            let wait = (state.failures > 0).then_some(QUICK_CONNECT);
            (attempt, wait)
        };
        // The attempt is bounded by `connect_timeout` and always reports its end; if its task
        // vanished, the channel closes and the wait ends too.
        match wait {
            None => {
                let _ = attempt.wait_for(|ended| *ended).await;
            }
            Some(wait) => {
                let _ = tokio::time::timeout(wait, attempt.wait_for(|ended| *ended)).await;
            }
        }
        let state = self.lock();
        match &state.conn {
            Some((conn, generation)) => Ok((conn.clone(), *generation)),
            None => Err(self.unusable(&state)),
        }
    }

    /// The error for a caller while there is no connection: why, and that an attempt follows.
    fn unusable(&self, state: &State) -> StoreError {
        let why = state.last_error.as_deref().unwrap_or("not connected yet");
        self.error(format!("{why} (connecting again in the background)"))
    }

    /// Starts a connection attempt as a task of its own, which records its outcome in the
    /// state; returns what reports its end.
    fn start_connecting(&self, state: &mut State) -> watch::Receiver<bool> {
        let (ended, attempt) = watch::channel(false);
        state.connecting = Some(attempt.clone());
        let settings = self.settings.clone();
        let shared = self.state.clone();
        tokio::spawn(async move {
            let timeout = settings.config.connect_timeout;
            let result = match tokio::time::timeout(timeout, settings.connect()).await {
                Ok(result) => result,
                Err(_) => Err(format!(
                    "no connection within {} (redis.connect_timeout)",
                    humantime::format_duration(timeout)
                )),
            };
            {
                let mut state = lock(&shared);
                state.connecting = None;
                match result {
                    Ok(conn) => {
                        state.generation += 1;
                        state.failures = 0;
                        state.not_before = None;
                        state.last_error = None;
                        state.conn = Some((conn, state.generation));
                        tracing::info!(server = %settings.server, "connected to Redis");
                    }
                    Err(message) => failed(&mut state, message),
                }
            }
            let _ = ended.send(true);
        });
        attempt
    }

    /// Runs one operation on the shared connection, within `command_timeout`. A connection
    /// that fails (I/O, dropped) is put aside, so the next caller connects anew; one that leaves
    /// a command unanswered also puts Redis in bad standing, so callers stop waiting on it.
    async fn run<T, F, Fut>(&self, operation: F) -> Result<T, StoreError>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let (conn, generation) = self.connection().await?;
        // The connection's own response timeout applies per command; this bounds the whole
        // operation (a script load and its call) as well.
        let limit = self.settings.config.command_timeout.saturating_mul(2);
        let outcome = tokio::time::timeout(limit, operation(conn)).await;
        let err = match outcome {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(err)) => err,
            Err(_) => {
                let message = format!(
                    "no answer within {} (redis.command_timeout)",
                    humantime::format_duration(limit)
                );
                self.drop_connection(generation, Some(&message));
                return Err(self.error(message));
            }
        };
        let message = describe(&err);
        if err.is_timeout() {
            self.drop_connection(generation, Some(&message));
        } else if err.is_io_error() || err.is_connection_dropped() || err.is_unrecoverable_error() {
            self.drop_connection(generation, None);
        }
        Err(self.error(message))
    }

    /// Puts the connection of `generation` aside, if it is still the one in use. `hung`: why
    /// it left a command unanswered; callers then stop waiting for connection attempts.
    fn drop_connection(&self, generation: u64, hung: Option<&str>) {
        let mut state = self.lock();
        if state.conn.as_ref().is_some_and(|(_, g)| *g == generation) {
            state.conn = None;
            if let Some(message) = hung {
                failed(&mut state, message.to_owned());
                // The first attempt may start at once; only callers stop waiting.
                state.not_before = None;
            }
            tracing::warn!(server = %self.settings.server, "Redis connection lost; connecting again");
        }
    }

    /// Writes `value` at `key` unless Redis holds a token that expires later, with the key
    /// expiring at `expires_on`, and publishes `notification` on `channel` if it wrote.
    ///
    /// # Errors
    /// Redis unreachable, too slow, or refusing (ACL, read-only replica, out of memory).
    pub async fn write_newer(
        &self,
        key: &str,
        value: &str,
        expires_on: i64,
        channel: Option<&str>,
        notification: &str,
    ) -> Result<WriteOutcome, StoreError> {
        static SCRIPT: std::sync::OnceLock<redis::Script> = std::sync::OnceLock::new();
        let script = SCRIPT.get_or_init(|| redis::Script::new(WRITE_SCRIPT));
        let expires_ms = expires_on.saturating_mul(1000);
        let answer: String = self
            .run(|mut conn| async move {
                script
                    .key(key)
                    .arg(value)
                    .arg(expires_ms)
                    .arg(channel.unwrap_or(""))
                    .arg(notification)
                    .invoke_async(&mut conn)
                    .await
            })
            .await?;
        match answer.as_str() {
            "written" => Ok(WriteOutcome::Written),
            "same" => Ok(WriteOutcome::Same),
            "newer" => Ok(WriteOutcome::Newer),
            "expired" => Err(self.error(
                "the token has already expired by Redis's clock; is one of the clocks wrong?",
            )),
            other => Err(self.error(format!(
                "unexpected answer from the write script: {other:?}"
            ))),
        }
    }

    /// The value at `key`, if any, read as text of at most `max_bytes`.
    ///
    /// # Errors
    /// Redis unreachable or refusing; a value that is too large or not UTF-8.
    pub async fn get(&self, key: &str, max_bytes: usize) -> Result<Option<String>, StoreError> {
        let value: Option<Vec<u8>> = self
            .run(|mut conn| async move { redis::cmd("GET").arg(key).query_async(&mut conn).await })
            .await?;
        match value {
            None => Ok(None),
            Some(bytes) if bytes.len() > max_bytes => Err(self.error(format!(
                "the value at {key} is {} bytes, more than the {max_bytes} a token needs",
                bytes.len()
            ))),
            Some(bytes) => String::from_utf8(bytes)
                .map(Some)
                .map_err(|_| self.error(format!("the value at {key} is not UTF-8 text"))),
        }
    }

    /// Connects (if not connected) and asks for the server's `TIME`: `check` uses it to say
    /// whether Redis answers. `TIME` rather than `PING`: the write script needs it, so every
    /// ACL user the daemon can work as may run it, while `PING` is not among the commands the
    /// daemon needs.
    ///
    /// # Errors
    /// Redis unreachable, refusing the credentials, or not answering.
    pub async fn answers(&self) -> Result<(), StoreError> {
        self.run(|mut conn| async move {
            redis::cmd("TIME")
                .query_async::<(String, String)>(&mut conn)
                .await
                .map(|_| ())
        })
        .await
    }

    /// Whether `key` exists.
    ///
    /// # Errors
    /// Redis unreachable or refusing.
    pub async fn exists(&self, key: &str) -> Result<bool, StoreError> {
        self.run(|mut conn| async move {
            redis::cmd("EXISTS")
                .arg(key)
                .query_async::<i64>(&mut conn)
                .await
                .map(|n| n > 0)
        })
        .await
    }

    /// `SET key owner NX PX ttl`: true if this caller now holds the lease.
    ///
    /// # Errors
    /// Redis unreachable or refusing.
    pub(crate) async fn acquire(
        &self,
        key: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        self.run(|mut conn| async move {
            redis::cmd("SET")
                .arg(key)
                .arg(owner)
                .arg("NX")
                .arg("PX")
                .arg(ttl_ms)
                .query_async::<Option<String>>(&mut conn)
                .await
                .map(|answer| answer.is_some())
        })
        .await
    }

    /// Releases the lease at `key` if `owner` still holds it; true if it did.
    ///
    /// # Errors
    /// Redis unreachable or refusing.
    pub async fn release(&self, key: &str, owner: &str) -> Result<bool, StoreError> {
        static SCRIPT: std::sync::OnceLock<redis::Script> = std::sync::OnceLock::new();
        let script = SCRIPT.get_or_init(|| redis::Script::new(RELEASE_SCRIPT));
        self.run(|mut conn| async move {
            script
                .key(key)
                .arg(owner)
                .invoke_async::<i64>(&mut conn)
                .await
                .map(|n| n > 0)
        })
        .await
    }
}

impl Settings {
    fn error(&self, message: impl Into<String>) -> StoreError {
        StoreError {
            server: self.server.clone(),
            message: message.into(),
        }
    }

    /// Connects: reads the password (a rotated one is picked up here) and the CA file, then
    /// opens the multiplexed or cluster connection.
    async fn connect(&self) -> Result<Conn, String> {
        let password = match &self.config.password {
            None => None,
            Some(source) => Some(
                crate::credential::read_secret(source)
                    .await
                    .map_err(|err| format!("cannot read redis.password: {err}"))?,
            ),
        };
        let tls = self
            .config
            .urls
            .iter()
            .any(|url| url.starts_with("rediss://"));
        let root_cert = match (&self.ca_file, tls) {
            (Some(path), true) => Some(
                safe_read::read(path, MAX_CA_BYTES, Symlinks::Follow)
                    .await
                    .map_err(|err| format!("cannot read [daemon] ca_file: {err}"))?,
            ),
            _ => None,
        };
        let certificates = redis::TlsCertificates {
            client_tls: None,
            root_cert,
        };
        let describe = |err: redis::RedisError| describe(&err);
        if self.config.cluster {
            let mut builder = redis::cluster::ClusterClient::builder(self.config.urls.clone())
                .connection_timeout(self.config.connect_timeout)
                .response_timeout(self.config.command_timeout)
                .retries(2);
            if let Some(username) = &self.config.username {
                builder = builder.username(username);
            }
            if let Some(password) = &password {
                builder = builder.password(password.expose_secret());
            }
            if tls {
                builder = builder.certs(certificates);
            }
            let client = builder.build().map_err(describe)?;
            let conn = client.get_async_connection().await.map_err(describe)?;
            Ok(Conn::Cluster(conn))
        } else {
            let url = self.config.urls.first().map_or("", String::as_str);
            let info = redis::IntoConnectionInfo::into_connection_info(url).map_err(describe)?;
            let mut settings = info.redis_settings().clone();
            if let Some(username) = &self.config.username {
                settings = settings.set_username(username);
            }
            if let Some(password) = &password {
                settings = settings.set_password(password.expose_secret());
            }
            let info = info.set_redis_settings(settings);
            let client = if tls {
                redis::Client::build_with_tls(info, certificates)
            } else {
                redis::Client::open(info)
            }
            .map_err(describe)?;
            let options = redis::AsyncConnectionConfig::new()
                .set_connection_timeout(Some(self.config.connect_timeout))
                .set_response_timeout(Some(self.config.command_timeout));
            let conn = client
                .get_multiplexed_async_connection_with_config(&options)
                .await
                .map_err(describe)?;
            Ok(Conn::Single(conn))
        }
    }
}

/// Locks the state; a panic never happens while it is held (plain bookkeeping), so a poisoned
/// lock still holds consistent state.
fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Records a failed attempt or an unanswered command: callers are told `message` at once, and
/// the next attempt waits for the backoff.
fn failed(state: &mut State, message: String) {
    state.failures = state.failures.saturating_add(1);
    let backoff = RECONNECT_MIN
        .saturating_mul(1 << (state.failures - 1).min(8))
        .min(RECONNECT_MAX);
    state.not_before = Some(Instant::now() + backoff);
    state.last_error = Some(message);
}

/// An operator's reading of a redis-rs error: the kind and the server's words (which never
/// contain a password: redis-rs and Redis do not echo `AUTH` arguments).
fn describe(err: &redis::RedisError) -> String {
    use redis::ErrorKind;
    let text = crate::error::sanitise(&err.to_string(), &[]);
    match err.kind() {
        ErrorKind::AuthenticationFailed => {
            format!("authentication failed (check redis.username and redis.password): {text}")
        }
        _ if err.code() == Some("WRONGPASS") => {
            format!("authentication failed (check redis.username and redis.password): {text}")
        }
        _ if err.code() == Some("NOAUTH") => {
            format!("the server requires a password (set redis.password): {text}")
        }
        _ if err.code() == Some("NOPERM") => {
            format!("the ACL user may not run this command or touch this key: {text}")
        }
        _ if err.is_connection_refusal() => format!("connection refused: {text}"),
        _ => text,
    }
}
