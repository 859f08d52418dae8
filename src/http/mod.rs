//! The admin HTTP server (`[server] listen`, default 127.0.0.1:9464).
//!
//! * `GET /` — the admin page ([`page`]): tenants by state, a filterable table of tenants with
//!   the failing ones first, links to the other endpoints. HTML without script.
//! * `GET /metrics` — Prometheus text exposition; per-tenant gauges are computed at scrape time,
//!   for the tenants `[server] per_tenant_metrics` asks for, and aggregates over all tenants.
//! * `GET /healthz` — 200 while the runtime answers; 503 once shutdown has begun. A tenant task
//!   that panics is restarted by the supervisor with backoff (and logged at ERROR, counted in
//!   `powerbi_tokend_task_panics_total` and `/status`'s `task_panics`), so it does not fail the
//!   probe: restarting the process would do no more for that tenant than the supervisor's
//!   restart does, and would interrupt every other tenant.
//! * `GET /readyz` — 200 once every tenant has finished its first attempt (or warm-started),
//!   unless at least half of the tenants cannot write their sinks ([`sinks_make_unready`]). A
//!   tenant's *authentication* failure does not make the daemon
//!   unready: an unready pod drops out of Prometheus' Kubernetes service discovery, and the alerts
//!   about that very failure would go blind.
//! * `GET /status` — JSON, one entry per tenant: state, expiry, next refresh, last success,
//!   consecutive failures and the last error with the server's OAuth error code, Entra's AADSTS
//!   code, trace and correlation IDs.
//!   Never a secret or a token.
//!
//! With `[server.basic_auth]`, every route asks for a user and password ([`auth`]; `/healthz`
//! may be left open); with `[server.tls]`, the server speaks HTTPS only, with a certificate
//! reloaded when its files change ([`tls`]).
//!
//! At most [`MAX_CONNECTIONS`] connections are served at once (more are closed on accept), a
//! request's headers must arrive within [`HEADER_READ_TIMEOUT`], and a connection lives at most
//! [`CONNECTION_LIFETIME`]: slow or idle clients cannot hold the file descriptors that token
//! writes need.

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio_util::sync::CancellationToken;

use crate::clock;
use crate::error::{ErrorClass, RefreshError};
use crate::metrics::Metrics;
use crate::schedule::system_to_unix_f64;
use crate::status::{Registry, TenantState, TenantStatus};

pub mod auth;
pub mod page;
pub mod tls;

/// What the handlers read.
#[derive(Clone, Debug)]
pub struct AdminState {
    /// Every tenant's status.
    pub registry: Registry,
    /// The metrics to render.
    pub metrics: Arc<Metrics>,
    /// Cancelled when shutdown begins: `/healthz` turns 503.
    pub stopping: CancellationToken,
    /// Renders `/metrics` off the async runtime.
    pub renderer: Renderer,
    /// `[server.basic_auth]`, replaced on reload; lets everyone in when it is off.
    pub auth: Arc<auth::Guard>,
    /// `[server.tls]`: `None` serves plain HTTP.
    pub tls: Option<Arc<tls::Reloading>>,
}

/// A request for one rendering of `/metrics`: where to send the text.
type RenderRequest = tokio::sync::oneshot::Sender<String>;

/// Renders `/metrics` on a thread of its own, one scrape at a time.
///
/// Not on the async runtime: with every tenant's series, a scrape of 100,000 tenants takes a
/// third of a second of CPU, which would hold up a worker and the refreshes queued on it. Nor
/// with `spawn_blocking` or `block_in_place`: they render on whichever thread is at hand, each
/// allocates the multi-megabyte text from its own malloc arena, and each arena keeps its share
/// (scrapes of 10,000 tenants left 20–30 MiB more resident than rendering on one thread did). One
/// thread keeps to one arena, and serialises concurrent scrapes, so two never hold two texts at
/// once.
#[derive(Clone, Debug)]
pub struct Renderer {
    /// The rendering thread's queue; `None` if the thread could not be started, and then each
    /// scrape renders where it is.
    requests: Option<std::sync::mpsc::Sender<RenderRequest>>,
    /// What is rendered, for the inline fallback.
    metrics: Arc<Metrics>,
    /// Every tenant's status, for the inline fallback.
    registry: Registry,
}

impl Renderer {
    /// Starts the rendering thread; it ends when the last clone of the renderer is dropped.
    pub fn start(metrics: Arc<Metrics>, registry: Registry) -> Renderer {
        let (requests, incoming) = std::sync::mpsc::channel::<RenderRequest>();
        let (thread_metrics, thread_registry) = (metrics.clone(), registry.clone());
        let spawned = std::thread::Builder::new()
            .name("metrics".to_owned())
            .spawn(move || {
                for reply in incoming {
                    let _ = reply.send(thread_metrics.render(&thread_registry));
                }
            });
        let requests = match spawned {
            Ok(_) => Some(requests),
            Err(err) => {
                tracing::warn!(error = %err, "cannot start the metrics thread; scrapes render on the async runtime");
                None
            }
        };
        Renderer {
            requests,
            metrics,
            registry,
        }
    }

    /// The text exposition, from the rendering thread (or here, if it is gone).
    pub async fn render(&self) -> String {
        if let Some(requests) = &self.requests {
            let (reply, answer) = tokio::sync::oneshot::channel();
            if requests.send(reply).is_ok()
                && let Ok(text) = answer.await
            {
                return text;
            }
        }
        self.metrics.render(&self.registry)
    }
}

/// The router; separate from serving so tests can drive it without a socket.
pub(crate) fn router(state: AdminState) -> Router {
    Router::new()
        .route("/", get(admin_page))
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/status", get(status))
        .layer(axum::middleware::from_fn_with_state(
            state.auth.clone(),
            auth::require,
        ))
        .with_state(state)
}

/// Most admin connections open at once. Prometheus, a probe or two and an operator need a
/// handful; the cap keeps a flood of idle or slow clients from taking the file descriptors the
/// token writes need. A connection over the cap is closed at once.
pub const MAX_CONNECTIONS: usize = 64;

/// How long a client may take to send a request's headers (slowloris).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// The longest an admin connection stays open, idle keep-alive included; a scraper reconnects.
pub(crate) const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);

/// Serves until `stop` is cancelled: every connection under [`MAX_CONNECTIONS`], with
/// [`HEADER_READ_TIMEOUT`] (for the TLS handshake too) and [`CONNECTION_LIFETIME`].
pub async fn serve(listener: tokio::net::TcpListener, state: AdminState, stop: CancellationToken) {
    let tls = state.tls.clone();
    let service = hyper_util::service::TowerToHyperService::new(router(state));
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let connections = tokio_util::task::TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(err) => {
                // EMFILE and friends: back off briefly instead of spinning on the error.
                tracing::warn!(error = %err, "admin server cannot accept a connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            drop(stream);
            continue;
        };
        let service = service.clone();
        let stop = stop.clone();
        let tls = tls.clone();
        connections.spawn(async move {
            match tls {
                None => serve_connection(stream, service, stop).await,
                Some(tls) => {
                    let handshake = tls.accept(stream, HEADER_READ_TIMEOUT);
                    let stream = tokio::select! {
                        stream = handshake => stream,
                        () = stop.cancelled() => None,
                    };
                    if let Some(stream) = stream {
                        serve_connection(stream, service, stop).await;
                    }
                }
            }
            drop(slot);
        });
    }
    connections.close();
    connections.wait().await;
}

/// The router as hyper serves it.
type Service = hyper_util::service::TowerToHyperService<Router>;

/// Serves one connection (plain or TLS) until it closes, its lifetime is over, or `stop`.
async fn serve_connection<I>(io: I, service: Service, stop: CancellationToken)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    let connection = builder.serve_connection(hyper_util::rt::TokioIo::new(io), service);
    let mut connection = std::pin::pin!(connection);
    tokio::select! {
        _ = connection.as_mut() => {}
        () = tokio::time::sleep(CONNECTION_LIFETIME) => {}
        () = stop.cancelled() => {
            // Let a request in flight finish (a last scrape), then close.
            connection.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(HEADER_READ_TIMEOUT, connection).await;
        }
    }
}

async fn metrics(State(state): State<AdminState>) -> Response {
    let body = state.renderer.render().await;
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

/// `GET /`: rendered on the blocking pool, since a pass over a hundred thousand tenants takes
/// milliseconds of CPU that the refreshes on this worker should not wait for.
async fn admin_page(
    State(state): State<AdminState>,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
) -> Response {
    let query = page::PageQuery::parse(query.as_deref());
    let registry = state.registry.clone();
    let rendered =
        tokio::task::spawn_blocking(move || page::render(&registry, &query, SystemTime::now()))
            .await;
    let Ok(body) = rendered else {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            "the page could not be rendered\n",
        )
            .into_response();
    };
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
            (
                header::CONTENT_SECURITY_POLICY,
                page::CONTENT_SECURITY_POLICY,
            ),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        body,
    )
        .into_response()
}

async fn healthz(State(state): State<AdminState>) -> Response {
    if state.stopping.is_cancelled() {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response();
    }
    (StatusCode::OK, "ok\n").into_response()
}

/// Whether failing sinks make the daemon unready: when at least half of the tenants cannot write
/// (a full, read-only or missing volume, which a restart or a new node can fix). A minority is a
/// per-tenant problem (one bad path or permission); it stays visible in this body, in `/status`
/// and as `reason="sink"` failures, without taking every healthy tenant's consumers out of service.
pub(crate) fn sinks_make_unready(failing: usize, tenants: usize) -> bool {
    failing > 0 && failing.saturating_mul(2) >= tenants
}

/// `/readyz` body.
#[derive(Serialize)]
struct Readiness {
    ready: bool,
    /// Tenants whose first attempt has not finished.
    pending: Vec<String>,
    /// Tenants whose last attempt could not write a local (file) sink.
    sink_failing: Vec<String>,
    /// Tenants whose last attempt could not write to Redis. Listed, never counted: a Redis
    /// outage is the same for every replica, and unready replicas would only drop out of
    /// monitoring.
    redis_failing: Vec<String>,
}

async fn readyz(State(state): State<AdminState>) -> Response {
    let mut readiness = Readiness {
        ready: true,
        pending: Vec::new(),
        sink_failing: Vec::new(),
        redis_failing: Vec::new(),
    };
    let snapshot = state.registry.snapshot();
    let tenants = snapshot.len();
    for (name, status) in snapshot {
        if !status.first_attempt_done {
            readiness.pending.push(name);
        } else if status.token.last_error.as_ref().map(|e| e.class) == Some(ErrorClass::Sink) {
            if status.token.local_sink_failing {
                readiness.sink_failing.push(name);
            } else {
                readiness.redis_failing.push(name);
            }
        }
    }
    readiness.ready =
        readiness.pending.is_empty() && !sinks_make_unready(readiness.sink_failing.len(), tenants);
    let code = if readiness.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(readiness)).into_response()
}

/// One tenant in `/status`.
#[derive(Serialize)]
pub(crate) struct TenantView {
    /// Configured name.
    pub name: String,
    /// pending | healthy | retrying | misconfigured | expired | api_denied | api_failing.
    pub state: TenantState,
    /// RFC 3339 expiry of the current token. Every time in this view is `null` when RFC 3339
    /// cannot write it (after year 9999), so one odd value never breaks the whole reply.
    pub expires_at: Option<String>,
    /// Seconds left at the time of the request (negative once expired).
    pub time_to_expiry_seconds: Option<f64>,
    /// RFC 3339 time of the next planned attempt.
    pub next_refresh_at: Option<String>,
    /// RFC 3339 time of the last success.
    pub last_success_at: Option<String>,
    /// Failures since the last success.
    pub consecutive_failures: u32,
    /// RFC 3339 expiry of the credential itself (certificate or `client_secret_expires`).
    pub credential_expires_at: Option<String>,
    /// The most recent failure, if the tenant is failing.
    pub last_error: Option<ErrorView>,
    /// How often the tenant's task panicked and was restarted (a bug to report).
    pub task_panics: u64,
    /// Fleet mode: the replica that fetched the current token; absent outside fleet mode.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refreshed_by: Option<String>,
    /// Fleet mode: whether the current token was adopted from that replica rather than fetched
    /// here; absent outside fleet mode.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub adopted: Option<bool>,
    /// The last access probe (Power BI or Fabric); absent for tenants without a probe or before
    /// the first.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_probe: Option<ProbeView>,
    /// The tenant's embed tokens; absent for tenants without any.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub embeds: Vec<EmbedView>,
    /// For a credential kept in Azure Key Vault: the identity that reads it and how its last
    /// read failed; absent for a credential kept elsewhere.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_vault: Option<KeyVaultView>,
}

/// The Key Vault read of a tenant's credential in `/status`: names, never a value or a token.
#[derive(Serialize)]
pub(crate) struct KeyVaultView {
    /// The Key Vault identity's name (`default` for `[key_vault]`'s own).
    pub identity: String,
    /// Why the last read of the vault failed; `null` once one succeeds.
    pub last_error: Option<KeyVaultErrorView>,
}

/// Why a read of Key Vault failed.
#[derive(Serialize)]
pub(crate) struct KeyVaultErrorView {
    /// `tenant_not_allowed`, `identity`, `unauthorized`, `forbidden`, `not_found`,
    /// `throttled`, `server_error`, `unreachable` or `bad_secret` (the metric's `result`).
    pub reason: &'static str,
    /// Key Vault's words and ours, with the call's `x-ms-client-request-id`.
    pub message: String,
}

/// One embed token in `/status`, in the shape of the access token's fields. Never the token
/// itself.
#[derive(Serialize)]
pub(crate) struct EmbedView {
    /// The embed's name.
    pub name: String,
    /// RFC 3339 expiry of the embed token in the sinks.
    pub expires_at: Option<String>,
    /// RFC 3339 time of the next planned refresh; `null` when the next one follows the next
    /// access token refresh (a token capped at the access token's expiry).
    pub next_refresh_at: Option<String>,
    /// RFC 3339 time of the last embed token written.
    pub last_success_at: Option<String>,
    /// Failures since the last success.
    pub consecutive_failures: u32,
    /// Why the last attempt failed, as for the access token; `null` after a success.
    pub last_error: Option<ErrorView>,
    /// Fleet mode: the replica that made the embed token in the sinks; absent outside fleet
    /// mode.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refreshed_by: Option<String>,
    /// Fleet mode: whether it was adopted from that replica rather than made here.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub adopted: Option<bool>,
    /// The embed URLs of its reports; absent for an embed without reports.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub embed_urls: Option<EmbedUrlsView>,
}

/// An embed's URLs in `/status`: how many of its reports have one, which have none, and why
/// the last read failed. Never the URLs themselves (the document has them).
#[derive(Serialize)]
pub(crate) struct EmbedUrlsView {
    /// Reports with an embed URL.
    pub count: usize,
    /// Reports without one (their ids).
    pub missing: Vec<String>,
    /// RFC 3339 time of the oldest read among the URLs held; `null` without any.
    pub read_at: Option<String>,
    /// Why the last round of reads failed (as for the embed token); `null` after a round in
    /// which every read succeeded.
    pub last_error: Option<ErrorView>,
}

/// The last access probe in `/status`.
#[derive(Serialize)]
pub(crate) struct ProbeView {
    /// The API probed: `powerbi` or `fabric` (`resource = "fabric"`).
    pub api: &'static str,
    /// RFC 3339 time of the last probe.
    pub last_probe_at: Option<String>,
    /// Whether the API accepted the token.
    pub ok: bool,
    /// Why not, with Power BI's status (`http_status`), error code (`error_code`) and
    /// `RequestId` (`trace_id`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure: Option<ErrorView>,
    /// What to do about the failure.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub advice: Option<&'static str>,
    /// Fleet mode: the replica that ran the last probe; absent outside fleet mode.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub probed_by: Option<String>,
    /// Fleet mode: whether its outcome was adopted from that replica rather than probed here.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub adopted: Option<bool>,
}

/// A failure in `/status`: what Microsoft support asks for, never a secret.
#[derive(Serialize)]
pub(crate) struct ErrorView {
    /// transient | throttled | permanent | sink.
    pub class: &'static str,
    /// The metric reason label.
    pub reason: &'static str,
    /// The server's OAuth `error` code (`invalid_client`, `invalid_target`, …), which the reason
    /// does not always keep; only the characters RFC 6749 allows in one.
    pub error_code: Option<String>,
    /// `AADSTSnnnn`, when Entra sent one.
    pub aadsts: Option<String>,
    /// HTTP status of the token endpoint's answer.
    pub http_status: Option<u16>,
    /// First line of Entra's description, or the transport error.
    pub message: String,
    /// Entra trace ID.
    pub trace_id: Option<String>,
    /// Entra correlation ID.
    pub correlation_id: Option<String>,
    /// The `client-request-id` the daemon sent; `null` when no request was sent.
    pub client_request_id: Option<String>,
    /// What to do about a failed Power BI call; absent for token failures, whose message says.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub advice: Option<&'static str>,
}

impl ErrorView {
    /// The view of a failure.
    fn of(err: &RefreshError) -> Self {
        ErrorView {
            class: err.class.as_str(),
            reason: err.reason.as_str(),
            error_code: err.oauth_error.clone(),
            aadsts: err.aadsts_code(),
            http_status: err.status,
            message: err.message.clone(),
            trace_id: err.trace_id.clone(),
            correlation_id: err.correlation_id.clone(),
            client_request_id: err.client_request_id.clone(),
            advice: err.reason.advice(),
        }
    }
}

/// Builds the `/status` entry of one tenant at `now`.
pub(crate) fn view(name: String, status: &TenantStatus, now: SystemTime) -> TenantView {
    let token = &status.token;
    TenantView {
        state: status.state(now),
        expires_at: token.expires_on.and_then(clock::rfc3339_unix),
        time_to_expiry_seconds: token
            .expires_on
            .map(|e| (e as f64 - system_to_unix_f64(now)).round()),
        next_refresh_at: token.next_refresh.and_then(clock::rfc3339),
        last_success_at: token.last_success.and_then(clock::rfc3339),
        consecutive_failures: token.consecutive_failures,
        credential_expires_at: status
            .credential_expiry
            .and_then(|expiry| clock::rfc3339_unix(expiry.expires_on)),
        last_error: token.last_error.as_deref().map(ErrorView::of),
        task_panics: status.task_panics,
        refreshed_by: token.refreshed_by.as_deref().map(str::to_owned),
        adopted: token.refreshed_by.as_ref().map(|_| token.adopted),
        api_probe: status.api_probe.as_ref().map(|probe| ProbeView {
            api: probe.api.as_str(),
            last_probe_at: clock::rfc3339(probe.last),
            ok: probe.failure.is_none(),
            failure: probe.failure.as_ref().map(ErrorView::of),
            advice: probe
                .failure
                .as_ref()
                .and_then(|failure| failure.reason.advice()),
            probed_by: probe.probed_by.as_deref().map(str::to_owned),
            adopted: probe.probed_by.as_ref().map(|_| probe.adopted),
        }),
        embeds: status
            .embeds
            .iter()
            .map(|embed| EmbedView {
                name: embed.name.clone(),
                expires_at: embed.token.expires_on.and_then(clock::rfc3339_unix),
                next_refresh_at: embed.token.next_refresh.and_then(clock::rfc3339),
                last_success_at: embed.token.last_success.and_then(clock::rfc3339),
                consecutive_failures: embed.token.consecutive_failures,
                last_error: embed.token.last_error.as_deref().map(ErrorView::of),
                refreshed_by: embed.token.refreshed_by.as_deref().map(str::to_owned),
                adopted: embed
                    .token
                    .refreshed_by
                    .as_ref()
                    .map(|_| embed.token.adopted),
                embed_urls: embed.urls.as_deref().map(|urls| EmbedUrlsView {
                    count: urls.count,
                    missing: urls.missing.clone(),
                    read_at: urls.read_at.and_then(clock::rfc3339_unix),
                    last_error: urls.last_error.as_deref().map(ErrorView::of),
                }),
            })
            .collect(),
        key_vault: status.key_vault.as_ref().map(|key_vault| KeyVaultView {
            identity: key_vault.identity.to_string(),
            last_error: key_vault.failure.as_ref().map(|failure| KeyVaultErrorView {
                reason: failure.reason.as_str(),
                message: failure.message.clone(),
            }),
        }),
        name,
    }
}

/// `/status` body.
#[derive(Serialize)]
struct StatusBody {
    tenants: Vec<TenantView>,
}

async fn status(State(state): State<AdminState>) -> Json<StatusBody> {
    let now = SystemTime::now();
    Json(StatusBody {
        tenants: state
            .registry
            .snapshot()
            .into_iter()
            .map(|(name, status)| view(name, &status, now))
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn hardening_status_view_survives_times_past_year_9999() {
        let far = UNIX_EPOCH + Duration::from_secs(1_000_000_000_000);
        let status = TenantStatus {
            token: crate::status::TokenStatus {
                expires_on: Some(i64::MAX),
                next_refresh: Some(far),
                last_success: Some(far),
                ..Default::default()
            },
            credential_expiry: Some(crate::credential::CredentialExpiry::certificate(i64::MIN)),
            first_attempt_done: true,
            ..TenantStatus::default()
        };
        let view = view("contoso".to_owned(), &status, UNIX_EPOCH);
        assert_eq!(view.expires_at, None);
        assert_eq!(view.next_refresh_at, None);
        assert_eq!(view.last_success_at, None);
        assert_eq!(view.credential_expires_at, None);
        let json = serde_json::to_value(&view).unwrap();
        assert!(json["expires_at"].is_null(), "{json}");
        assert!(json["time_to_expiry_seconds"].is_number(), "{json}");

        let in_range = TenantStatus {
            token: crate::status::TokenStatus {
                expires_on: Some(1_767_225_600),
                next_refresh: Some(UNIX_EPOCH + Duration::from_secs(1_767_225_600)),
                ..Default::default()
            },
            ..TenantStatus::default()
        };
        let view = view_of(&in_range);
        assert_eq!(view.expires_at.as_deref(), Some("2026-01-01T00:00:00Z"));
        assert_eq!(
            view.next_refresh_at.as_deref(),
            Some("2026-01-01T00:00:00Z")
        );
    }

    fn view_of(status: &TenantStatus) -> TenantView {
        view("contoso".to_owned(), status, UNIX_EPOCH)
    }

    #[test]
    fn a_minority_of_failing_sinks_keeps_the_daemon_ready() {
        assert!(!sinks_make_unready(0, 10));
        assert!(!sinks_make_unready(1, 10));
        assert!(!sinks_make_unready(4, 10));
        assert!(sinks_make_unready(5, 10));
        assert!(sinks_make_unready(1, 2));
        assert!(sinks_make_unready(1, 1));
    }
}
