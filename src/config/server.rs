//! `[server]`: the admin HTTP server.

use std::net::SocketAddr;
use std::time::Duration;

use super::DEFAULT_LISTEN;
use super::loader::Loader;
use super::raw::RawServer;
use super::types::ServerConfig;

impl Loader<'_> {
    /// `listen` (an address and port), the config-file watcher and which tenants `/metrics`
    /// names. An unknown `per_tenant_metrics` is reported by serde with the expected values.
    pub(super) fn server(&mut self, raw: RawServer) -> Option<ServerConfig> {
        let listen = match raw.listen {
            None => DEFAULT_LISTEN.parse().ok()?,
            Some(listen) => match listen.get_ref().parse::<SocketAddr>() {
                Ok(addr) => addr,
                Err(_) => {
                    self.problem(
                        Some(listen.span().start),
                        "server.listen".to_owned(),
                        format!(
                            "expected an IP address and port such as \"127.0.0.1:9464\", got {:?}",
                            listen.get_ref()
                        ),
                    );
                    return None;
                }
            },
        };
        let watch_interval = self.duration(
            raw.watch_interval,
            "server.watch_interval",
            Duration::from_secs(5),
        )?;
        Some(ServerConfig {
            listen,
            watch_config: raw.watch_config.unwrap_or(false),
            watch_interval,
            per_tenant_metrics: raw.per_tenant_metrics.unwrap_or_default(),
        })
    }
}
