//! `[daemon]`: process-wide knobs (concurrency, timeouts, backoff, trust anchors, logging).

use std::time::Duration;
use toml::Spanned;

use super::DEFAULT_IMDS_ENDPOINT;
use super::loader::{Loader, Reported};
use super::raw::{RawDaemon, RawDuration};
use super::types::DaemonConfig;

impl Loader<'_> {
    /// Every knob, its range, and `backoff_min <= backoff_max`.
    pub(super) fn daemon(&mut self, raw: RawDaemon) -> Option<DaemonConfig> {
        let defaults = DaemonConfig::default();
        let max_concurrent_requests = self.max_concurrent_requests(raw.max_concurrent_requests);
        let max_requests_per_second = self.max_requests_per_second(raw.max_requests_per_second);
        let connect_timeout = self.duration(
            raw.connect_timeout,
            "connect_timeout",
            defaults.connect_timeout,
        );
        let request_timeout = self.duration(
            raw.request_timeout,
            "request_timeout",
            defaults.request_timeout,
        );
        let backoff_min_offset = raw.backoff_min.as_ref().map(|s| s.span().start);
        let backoff_min = self.duration(raw.backoff_min, "backoff_min", defaults.backoff_min);
        let backoff_max = self.duration(raw.backoff_max, "backoff_max", defaults.backoff_max);
        let permanent_retry_interval = self.duration(
            raw.permanent_retry_interval,
            "permanent_retry_interval",
            defaults.permanent_retry_interval,
        );
        let shutdown_grace = self.duration(
            raw.shutdown_grace,
            "shutdown_grace",
            defaults.shutdown_grace,
        );
        if let (Some(min), Some(max)) = (backoff_min, backoff_max)
            && min > max
        {
            self.problem(
                backoff_min_offset,
                "daemon.backoff_min".to_owned(),
                format!(
                    "backoff_min ({}) must not exceed backoff_max ({})",
                    humantime::format_duration(min),
                    humantime::format_duration(max)
                ),
            );
            return None;
        }
        let ca_file = raw.ca_file.map(|ca| self.ca_file(ca));
        Some(DaemonConfig {
            max_concurrent_requests: max_concurrent_requests?,
            max_requests_per_second: max_requests_per_second.ok()?,
            connect_timeout: connect_timeout?,
            request_timeout: request_timeout?,
            backoff_min: backoff_min?,
            backoff_max: backoff_max?,
            permanent_retry_interval: permanent_retry_interval?,
            shutdown_grace: shutdown_grace?,
            ca_file,
            imds_endpoint: raw
                .imds_endpoint
                .map(|e| e.into_inner())
                .unwrap_or_else(|| DEFAULT_IMDS_ENDPOINT.to_owned()),
            log_format: raw.log_format.unwrap_or_default(),
        })
    }

    /// 1 to 10,000 requests in flight (the default when absent).
    fn max_concurrent_requests(&mut self, raw: Option<Spanned<i64>>) -> Option<usize> {
        let Some(value) = raw else {
            return Some(DaemonConfig::default().max_concurrent_requests);
        };
        match usize::try_from(*value.get_ref()) {
            Ok(n) if (1..=10_000).contains(&n) => Some(n),
            _ => {
                self.problem(
                    Some(value.span().start),
                    "daemon.max_concurrent_requests".to_owned(),
                    format!(
                        "expected a whole number from 1 to 10000, got {}",
                        value.get_ref()
                    ),
                );
                None
            }
        }
    }

    /// 1 to 100,000 requests a second, or absent (no cap).
    fn max_requests_per_second(
        &mut self,
        raw: Option<Spanned<i64>>,
    ) -> Result<Option<u32>, Reported> {
        let Some(value) = raw else {
            return Ok(None);
        };
        match u32::try_from(*value.get_ref()) {
            Ok(n) if (1..=100_000).contains(&n) => Ok(Some(n)),
            _ => {
                self.problem(
                    Some(value.span().start),
                    "daemon.max_requests_per_second".to_owned(),
                    format!(
                        "expected a whole number from 1 to 100000 (requests a second, all tenants together), got {}; leave it out for no cap",
                        value.get_ref()
                    ),
                );
                Err(Reported)
            }
        }
    }

    /// `ca_file`, relative to the config file, which must exist.
    fn ca_file(&mut self, ca: Spanned<std::path::PathBuf>) -> std::path::PathBuf {
        let offset = ca.span().start;
        let path = self.resolve_path(ca.into_inner());
        if let Err(err) = std::fs::metadata(&path) {
            self.problem(
                Some(offset),
                "daemon.ca_file".to_owned(),
                format!("cannot read {}: {err}", path.display()),
            );
        }
        path
    }

    /// A positive humantime duration (`5s`, `2m`, `1h 30m`), or `default` when absent. `key`
    /// without a dot is a `[daemon]` key.
    pub(super) fn duration(
        &mut self,
        raw: Option<Spanned<RawDuration>>,
        key: &str,
        default: Duration,
    ) -> Option<Duration> {
        let Some(raw) = raw else { return Some(default) };
        match humantime::parse_duration(raw.get_ref()) {
            Ok(duration) if !duration.is_zero() => Some(duration),
            _ => {
                self.problem(
                    Some(raw.span().start),
                    if key.contains('.') { key.to_owned() } else { format!("daemon.{key}") },
                    format!(
                        "expected a positive duration such as \"5s\", \"2m\" or \"1h 30m\", got {:?}",
                        raw.get_ref()
                    ),
                );
                None
            }
        }
    }
}
