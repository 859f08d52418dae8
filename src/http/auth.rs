//! `[server.basic_auth]`: HTTP basic authentication for every admin route, as Prometheus'
//! exporter-toolkit does it (`basic_auth_users`: user names with bcrypt hashes), with
//! `/healthz` optionally left open for probes that carry no credentials.
//!
//! * A request without credentials, with malformed ones, with an unknown user or with a wrong
//!   password gets the same `401` with `WWW-Authenticate: Basic realm="powerbi-tokend"` and
//!   the same body. An unknown user costs a bcrypt verification too (against a hash of the
//!   same cost made for the purpose), so the answer's time does not tell whether the user
//!   exists; user names are compared in constant time.
//! * bcrypt is slow on purpose (tens of milliseconds at cost 10): it runs on the blocking pool,
//!   at most [`MAX_VERIFYING`] at once, so a flood of guesses costs that many cores at most
//!   and never an async worker.
//! * A successful verification is remembered for [`REMEMBER_FOR`], keyed by an HMAC (with a
//!   key made at start and never shown) of the user, the stored hash and the password: a
//!   scrape every 15 seconds then costs one bcrypt a minute, and neither the password nor a
//!   fast hash of it is kept. A changed hash (a reload) misses the old entries.
//! * Failures are counted in `powerbi_tokend_admin_auth_failures_total` by `reason`
//!   (`missing`, `malformed`, `wrong`), never by user.
//! * A reload replaces the users (or turns basic auth on or off) from the next request on.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};

use aws_lc_rs::hmac;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use prometheus::IntCounterVec;
use secrecy::{ExposeSecret, SecretSlice};

use crate::config::BasicAuthConfig;

/// The realm browsers show in their password prompt.
pub const CHALLENGE: &str = "Basic realm=\"powerbi-tokend\"";

/// The longest `Authorization` header read: a user and a password of a few hundred bytes.
/// bcrypt reads the first 72 bytes of a password anyway.
const MAX_AUTHORIZATION_BYTES: usize = 1024;

/// bcrypt verifications at once.
pub const MAX_VERIFYING: usize = 2;

/// How long a successful verification is remembered.
pub const REMEMBER_FOR: Duration = Duration::from_secs(60);

/// Verifications remembered at most (users × clients: a handful in practice).
const MAX_REMEMBERED: usize = 256;

/// The configured users, and the hash that an unknown user's password is checked against.
struct Users {
    config: BasicAuthConfig,
    /// Made on first use, at the cost of the first user's hash.
    decoy: OnceLock<String>,
}

/// The admin server's door: who may pass, and what has been verified lately.
pub struct Guard {
    /// `None`: basic auth is off.
    users: RwLock<Option<Arc<Users>>>,
    /// HMAC tag of (user, hash, password) → when the entry expires.
    remembered: Mutex<HashMap<Vec<u8>, Instant>>,
    /// The HMAC key of `remembered`, random per process.
    key: hmac::Key,
    /// Bounds the bcrypt verifications in flight.
    verifying: std::sync::Arc<tokio::sync::Semaphore>,
    /// `powerbi_tokend_admin_auth_failures_total`.
    failures: IntCounterVec,
}

impl std::fmt::Debug for Guard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guard").finish_non_exhaustive()
    }
}

/// Why a request was refused: the `reason` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Refusal {
    Missing,
    Malformed,
    Wrong,
}

impl Refusal {
    fn as_str(self) -> &'static str {
        match self {
            Refusal::Missing => "missing",
            Refusal::Malformed => "malformed",
            Refusal::Wrong => "wrong",
        }
    }
}

impl Guard {
    /// A guard for `config` (`None`: let everyone in), counting failures in `failures`.
    ///
    /// # Errors
    /// The system's random generator failed to make the HMAC key.
    pub fn new(
        config: Option<&BasicAuthConfig>,
        failures: IntCounterVec,
    ) -> Result<Guard, aws_lc_rs::error::Unspecified> {
        let key = hmac::Key::generate(hmac::HMAC_SHA256, &aws_lc_rs::rand::SystemRandom::new())?;
        let guard = Guard {
            users: RwLock::new(None),
            remembered: Mutex::new(HashMap::new()),
            key,
            verifying: std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_VERIFYING)),
            failures,
        };
        guard.set(config);
        Ok(guard)
    }

    /// Replaces the users (a reload); `None` turns basic auth off.
    pub fn set(&self, config: Option<&BasicAuthConfig>) {
        let users = config.map(|config| {
            let users = Arc::new(Users {
                config: config.clone(),
                decoy: OnceLock::new(),
            });
            // The decoy costs a bcrypt: made now, on a thread of its own, so that the first
            // unknown user is not slower than a known one. If the thread cannot start, the
            // first unknown user makes it.
            let warm = users.clone();
            let _ = std::thread::Builder::new()
                .name("bcrypt-decoy".to_owned())
                .spawn(move || {
                    warm.decoy();
                });
            users
        });
        *self
            .users
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = users;
    }

    fn users(&self) -> Option<Arc<Users>> {
        self.users
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Whether `user` and `password` are a configured user's.
    async fn verify(&self, users: Arc<Users>, user: &[u8], password: SecretSlice<u8>) -> bool {
        // Every name is compared, whichever matches, so the time does not depend on which.
        let mut hash = None;
        for (name, stored) in &users.config.users {
            let equal =
                aws_lc_rs::constant_time::verify_slices_are_equal(name.as_bytes(), user).is_ok();
            if equal && hash.is_none() {
                hash = Some(stored.clone());
            }
        }
        let tag = hash
            .as_deref()
            .map(|hash| self.tag(user, hash, password.expose_secret()));
        if let Some(tag) = &tag
            && self.remembers(tag)
        {
            return true;
        }
        // The permit goes with the work: a client that hangs up while its password is checked
        // frees its connection, not the bcrypt it started, so the cap must hold until that ends.
        let Ok(permit) = std::sync::Arc::clone(&self.verifying).acquire_owned().await else {
            return false;
        };
        let checked = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            match hash {
                Some(hash) => bcrypt::verify(password.expose_secret(), &hash).unwrap_or(false),
                None => {
                    let decoy = users.decoy();
                    let _ = bcrypt::verify(password.expose_secret(), decoy);
                    false
                }
            }
        })
        .await
        .unwrap_or(false);
        if checked && let Some(tag) = tag {
            self.remember(tag);
        }
        checked
    }

    fn tag(&self, user: &[u8], hash: &str, password: &[u8]) -> Vec<u8> {
        let mut context = hmac::Context::with_key(&self.key);
        for part in [user, hash.as_bytes(), password] {
            context.update(&(part.len() as u64).to_be_bytes());
            context.update(part);
        }
        context.sign().as_ref().to_vec()
    }

    fn remembered(&self) -> std::sync::MutexGuard<'_, HashMap<Vec<u8>, Instant>> {
        self.remembered
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn remembers(&self, tag: &[u8]) -> bool {
        self.remembered()
            .get(tag)
            .is_some_and(|until| Instant::now() < *until)
    }

    fn remember(&self, tag: Vec<u8>) {
        let now = Instant::now();
        let mut remembered = self.remembered();
        if remembered.len() >= MAX_REMEMBERED {
            remembered.retain(|_, until| now < *until);
            if remembered.len() >= MAX_REMEMBERED {
                remembered.clear();
            }
        }
        remembered.insert(tag, now + REMEMBER_FOR);
    }

    fn refuse(&self, refusal: Refusal) -> Response {
        self.failures.with_label_values(&[refusal.as_str()]).inc();
        (
            StatusCode::UNAUTHORIZED,
            [
                (header::WWW_AUTHENTICATE, CHALLENGE),
                (header::CACHE_CONTROL, "no-store"),
            ],
            "401 Unauthorized\n",
        )
            .into_response()
    }
}

impl Users {
    /// A hash of a random password at the cost of the first user's hash: what an unknown
    /// user's password is checked against, so that it costs what a known user's does.
    fn decoy(&self) -> &str {
        self.decoy.get_or_init(|| {
            let cost = self
                .config
                .users
                .values()
                .next()
                .and_then(|hash| hash.get(4..6))
                .and_then(|cost| cost.parse().ok())
                .unwrap_or(bcrypt::DEFAULT_COST);
            let password = uuid::Uuid::new_v4();
            bcrypt::hash(password.as_bytes(), cost).unwrap_or_default()
        })
    }
}

/// The user and password of an `Authorization: Basic` header.
fn credentials(headers: &HeaderMap) -> Result<(Vec<u8>, SecretSlice<u8>), Refusal> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let value = values.next().ok_or(Refusal::Missing)?;
    if values.next().is_some() || value.len() > MAX_AUTHORIZATION_BYTES {
        return Err(Refusal::Malformed);
    }
    let value = value.as_bytes();
    let (scheme, encoded) = value
        .iter()
        .position(|b| *b == b' ')
        .map(|space| value.split_at(space))
        .ok_or(Refusal::Malformed)?;
    if !scheme.eq_ignore_ascii_case(b"basic") {
        return Err(Refusal::Malformed);
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim_ascii())
        .map_err(|_| Refusal::Malformed)?;
    let decoded = SecretSlice::from(decoded);
    let colon = decoded
        .expose_secret()
        .iter()
        .position(|b| *b == b':')
        .ok_or(Refusal::Malformed)?;
    let (user, password) = decoded.expose_secret().split_at(colon);
    // `password` starts with the colon found above.
    let password = password.get(1..).unwrap_or_default();
    Ok((user.to_vec(), SecretSlice::from(password.to_vec())))
}

/// The middleware: lets a request through when basic auth is off, when it is for an open
/// `/healthz`, or when it carries a configured user's password; else `401`.
pub async fn require(State(guard): State<Arc<Guard>>, request: Request, next: Next) -> Response {
    let Some(users) = guard.users() else {
        return next.run(request).await;
    };
    if users.config.healthz_open && request.uri().path() == "/healthz" {
        return next.run(request).await;
    }
    let (user, password) = match credentials(request.headers()) {
        Ok(credentials) => credentials,
        Err(refusal) => return guard.refuse(refusal),
    };
    if guard.verify(users, &user, password).await {
        next.run(request).await
    } else {
        guard.refuse(Refusal::Wrong)
    }
}

#[cfg(test)]
mod tests;
