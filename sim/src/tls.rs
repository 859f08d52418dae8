//! HTTPS for the simulated Entra ID ([`SimEntra::start_tls`](super::SimEntra::start_tls)).
//!
//! Real Entra is only reached over TLS, and every new connection costs a client a handshake and a
//! certificate-chain check; a benchmark over plain HTTP leaves that cost out. This serves the
//! very router of the plain simulator behind rustls on aws-lc-rs, the one crypto provider of the
//! process.
//!
//! The accept loop is our own (hyper's HTTP/1.1 connection over a tokio-rustls stream) rather
//! than `axum::serve` with a listener that does the handshake in `accept`: there, one slow or
//! silent client would hold up every connection behind it. Here each connection is its own task:
//! the handshake, bounded by [`HANDSHAKE_TIMEOUT`], then HTTP/1.1 with keep-alive. A handshake
//! that fails (a client that does not trust the CA, plain HTTP sent to the port) ends that
//! connection only, and is logged at debug level.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

/// How long a client may take to complete the handshake before its connection is closed.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The server side of TLS: `cert_chain_pem` (the server certificate first, then any
/// intermediates) and the PEM private key of the first certificate (PKCS#8, SEC1 or PKCS#1).
/// Offers HTTP/1.1 by ALPN, the only protocol the simulator speaks.
///
/// # Errors
/// `InvalidInput` when the PEM holds no certificate or no key, or rustls refuses the pair (the
/// key does not match the certificate, an unsupported key type).
pub(super) fn acceptor(cert_chain_pem: &[u8], key_pem: &[u8]) -> io::Result<TlsAcceptor> {
    let invalid = |what: &str, error: &dyn std::fmt::Display| {
        io::Error::new(io::ErrorKind::InvalidInput, format!("{what}: {error}"))
    };
    let chain = CertificateDer::pem_slice_iter(cert_chain_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| invalid("certificate chain PEM", &error))?;
    if chain.is_empty() {
        return Err(invalid("certificate chain PEM", &"no certificate"));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|error| invalid("private key PEM", &error))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|error| invalid("TLS versions", &error))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|error| invalid("certificate and key", &error))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Serves `app` over TLS on `listener` until `stop` turns `true` (or its sender is gone), then
/// lets each open connection finish the request it is answering and waits for them.
pub(super) async fn serve(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    app: Router,
    mut stop: watch::Receiver<bool>,
) {
    let service = hyper_util::service::TowerToHyperService::new(app);
    let connections = tokio_util::task::TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            () = stopped(&mut stop) => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // EMFILE and friends: back off briefly instead of spinning on the error.
                tracing::warn!(%error, "simulated Entra ID cannot accept a connection");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // A response leaves as several TLS records; without this, Nagle's algorithm holds the
        // last one back until the client's delayed ACK, adding up to 40 ms to a request.
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, %peer, "simulated Entra ID cannot set TCP_NODELAY");
        }
        let (acceptor, service, mut stop) = (acceptor.clone(), service.clone(), stop.clone());
        connections.spawn(async move {
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await
            {
                Ok(Ok(tls)) => tls,
                Ok(Err(error)) => {
                    tracing::debug!(%error, %peer, "simulated Entra ID: TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "simulated Entra ID: TLS handshake timed out");
                    return;
                }
            };
            let connection = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(tls), service);
            let mut connection = std::pin::pin!(connection);
            let served = tokio::select! {
                served = connection.as_mut() => served,
                () = stopped(&mut stop) => {
                    // Requests held in Hang or Slow are released by the same signal and answer.
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(error) = served {
                tracing::debug!(%error, %peer, "simulated Entra ID: connection ended with an error");
            }
        });
    }
    connections.close();
    connections.wait().await;
}

/// Returns once `stop` is `true`, or its sender is gone, which is a shutdown too.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    // The guard the wait returns is dropped here: it must not live across an await.
    let _ = stop.wait_for(|&stopped| stopped).await;
}
