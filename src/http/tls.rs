//! `[server.tls]`: HTTPS for the admin server, with the certificate and key reloaded when their
//! files change.
//!
//! The files are read off the async workers ([`safe_read`], at most [`MAX_PEM_BYTES`] each,
//! symlinks followed: Kubernetes Secret volumes and cert-manager swap a `..data` link). Each new
//! connection looks at the files' metadata, at most once per [`RECHECK_EVERY`]; when it changed,
//! the pair is read again, and a pair that does not load (half-written, a key that is not the
//! certificate's) is logged with the reason and the previous pair stays in use until the files
//! change again. That is what Prometheus' exporter-toolkit promises (a renewed certificate is
//! picked up without a restart), without reading two files for every request.
//!
//! A client that speaks plain HTTP to the TLS port gets a `400` that says so, as Go's servers
//! (and so every Prometheus exporter) answer, instead of a handshake failure it cannot read.
//!
//! The crypto provider is aws-lc-rs, named here rather than taken from the process default, so
//! that a server can be built in `check` and in tests as in the daemon.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::config::ServerTls;
use crate::safe_read::{self, Symlinks};

/// The largest certificate or key file read: a chain with a few intermediates is a few KiB.
pub const MAX_PEM_BYTES: u64 = 1024 * 1024;

/// How often a new connection may look at the files for a change.
pub const RECHECK_EVERY: Duration = Duration::from_secs(1);

/// What a plain-HTTP request to the TLS port gets (Go's `net/http` says the same).
const PLAIN_HTTP_ANSWER: &[u8] = b"HTTP/1.0 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\nClient sent an HTTP request to an HTTPS server.\n";

/// The first byte of every TLS connection: a handshake record.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// Why the certificate or key cannot be used: which of the two keys of `[server.tls]`, and why
/// (the path and what is wrong, never the key's content).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct TlsProblem {
    /// `cert_file` or `key_file`.
    pub key: &'static str,
    /// What is wrong.
    pub message: String,
}

impl TlsProblem {
    fn cert(message: String) -> TlsProblem {
        TlsProblem {
            key: "cert_file",
            message,
        }
    }

    fn key(message: String) -> TlsProblem {
        TlsProblem {
            key: "key_file",
            message,
        }
    }
}

/// What says a file changed: device, inode, size and modification time (nanoseconds). A
/// replaced file (a rename, a Kubernetes `..data` swap) has a new inode even within the same
/// second; one rewritten in place has a new time or size.
type Fingerprint = (u64, u64, u64, i64, i64);

fn fingerprint(path: &Path) -> Option<Fingerprint> {
    let meta = std::fs::metadata(path).ok()?;
    Some((
        meta.dev(),
        meta.ino(),
        meta.size(),
        meta.mtime(),
        meta.mtime_nsec(),
    ))
}

/// Reads and checks the pair, blocking: the server's TLS configuration.
///
/// # Errors
/// The file that cannot be read or parsed, or a key that does not match the certificate.
pub fn load_blocking(files: &ServerTls) -> Result<Arc<rustls::ServerConfig>, TlsProblem> {
    let cert_pem = safe_read::read_blocking(&files.cert_file, MAX_PEM_BYTES, Symlinks::Follow)
        .map_err(|err| TlsProblem::cert(err.to_string()))?;
    let key_pem = safe_read::read_blocking(&files.key_file, MAX_PEM_BYTES, Symlinks::Follow)
        .map_err(|err| TlsProblem::key(err.to_string()))?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|err| {
            TlsProblem::cert(format!("{} is not PEM: {err}", files.cert_file.display()))
        })?;
    let Some(leaf) = chain.first() else {
        return Err(TlsProblem::cert(format!(
            "{} holds no CERTIFICATE block",
            files.cert_file.display()
        )));
    };
    webpki::EndEntityCert::try_from(leaf).map_err(|err| {
        TlsProblem::cert(format!(
            "{}: the first certificate does not parse: {err}",
            files.cert_file.display()
        ))
    })?;
    // The parser's error is not quoted: for a key whose line breaks were lost it prints the
    // bytes it could not read, which are the key.
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|_| {
        TlsProblem::key(format!(
            "{} holds no usable PEM private key (PKCS#8, PKCS#1 or SEC1, each line of it on a line of its own); its content is not shown",
            files.key_file.display()
        ))
    })?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|err| TlsProblem::cert(err.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|err| {
            TlsProblem::key(format!(
                "{} does not fit {}: {err}",
                files.key_file.display(),
                files.cert_file.display()
            ))
        })?;
    // The admin server speaks HTTP/1.1 only.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// [`load_blocking`] on the blocking pool: what `check` runs.
///
/// # Errors
/// As [`load_blocking`].
pub async fn verify(files: &ServerTls) -> Result<(), TlsProblem> {
    let owned = files.clone();
    safe_read::blocking(&files.cert_file, move || load_blocking(&owned).map(drop))
        .await
        .map_err(|err| TlsProblem::cert(err.to_string()))?
}

/// The pair in use and what its files looked like.
struct Current {
    acceptor: TlsAcceptor,
    /// The fingerprints of the files when last loaded (or last tried): a pair that failed to
    /// load is not tried again until the files change again.
    seen: [Option<Fingerprint>; 2],
    /// When the files were last looked at.
    checked: Instant,
}

/// The TLS side of the admin server: the acceptor in use, replaced when the files change.
pub struct Reloading {
    /// Where the pair is.
    files: ServerTls,
    /// The pair in use.
    current: Mutex<Current>,
    /// One look at the files at a time; other connections meanwhile use the pair in place.
    checking: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Reloading {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloading")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

impl Reloading {
    /// Loads the pair for the first time.
    ///
    /// # Errors
    /// As [`load_blocking`]: the daemon does not start without a usable pair.
    pub async fn start(files: ServerTls) -> Result<Arc<Reloading>, TlsProblem> {
        let loading = files.clone();
        let (config, seen) = safe_read::blocking(&files.cert_file, move || {
            let seen = [
                fingerprint(&loading.cert_file),
                fingerprint(&loading.key_file),
            ];
            load_blocking(&loading).map(|config| (config, seen))
        })
        .await
        .map_err(|err| TlsProblem::cert(err.to_string()))??;
        Ok(Arc::new(Reloading {
            files,
            current: Mutex::new(Current {
                acceptor: TlsAcceptor::from(config),
                seen,
                checked: Instant::now(),
            }),
            checking: tokio::sync::Mutex::new(()),
        }))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Current> {
        self.current
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The acceptor for a new connection, after a look at the files if the last one is over
    /// [`RECHECK_EVERY`] ago.
    async fn acceptor(&self) -> TlsAcceptor {
        let due = self.lock().checked.elapsed() >= RECHECK_EVERY;
        if due && let Ok(_checking) = self.checking.try_lock() {
            self.reload_if_changed().await;
        }
        self.lock().acceptor.clone()
    }

    async fn reload_if_changed(&self) {
        let seen = self.lock().seen;
        let files = self.files.clone();
        let outcome = safe_read::blocking(&self.files.cert_file, move || {
            let now = [fingerprint(&files.cert_file), fingerprint(&files.key_file)];
            if now == seen {
                return (now, None);
            }
            (now, Some(load_blocking(&files)))
        })
        .await;
        let mut current = self.lock();
        current.checked = Instant::now();
        let Ok((now, loaded)) = outcome else {
            return;
        };
        current.seen = now;
        match loaded {
            None => {}
            Some(Ok(config)) => {
                current.acceptor = TlsAcceptor::from(config);
                tracing::info!(cert_file = %self.files.cert_file.display(), "admin server certificate reloaded");
            }
            Some(Err(problem)) => {
                tracing::warn!(
                    key = %format_args!("server.tls.{}", problem.key),
                    problem = %problem,
                    "admin server certificate or key changed but cannot be used; the previous pair stays in use"
                );
            }
        }
    }

    /// The TLS stream of a new connection, or `None` when it is closed instead: a client that
    /// sent plain HTTP (answered with a `400`), one silent or slow past `timeout`, or a failed
    /// handshake.
    pub async fn accept(
        &self,
        stream: TcpStream,
        timeout: Duration,
    ) -> Option<TlsStream<TcpStream>> {
        let acceptor = self.acceptor().await;
        let mut first = [0_u8; 1];
        match tokio::time::timeout(timeout, stream.peek(&mut first)).await {
            Ok(Ok(1)) if first[0] == TLS_HANDSHAKE_RECORD => {}
            Ok(Ok(1)) => {
                let mut stream = stream;
                let _ = tokio::time::timeout(timeout, async {
                    stream.write_all(PLAIN_HTTP_ANSWER).await?;
                    stream.shutdown().await
                })
                .await;
                return None;
            }
            _ => return None,
        }
        match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
            Ok(Ok(stream)) => Some(stream),
            Ok(Err(err)) => {
                tracing::debug!(error = %err, "admin TLS handshake failed");
                None
            }
            Err(_) => None,
        }
    }
}
