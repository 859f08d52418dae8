//! `[redis]` and `[fleet]`: the shared store and the replicas that share the refreshes.

use std::time::Duration;

use toml::Spanned;

use super::loader::{Loader, Reported};
use super::raw::{RawFleet, RawRedis, RawSecret, RawUrls};
use super::types::{DaemonConfig, FleetConfig, RedisConfig, SecretSource};

/// Longest accepted replica id, key prefix or channel name: they travel in every lease and
/// notification, and an operator reads them in `/status`.
const MAX_NAME_BYTES: usize = 200;

impl Loader<'_> {
    /// `[redis]`: URLs without credentials, the password as a secret reference, timeouts.
    pub(super) fn redis(&mut self, raw: RawRedis) -> Option<RedisConfig> {
        let defaults = RedisConfig::default();
        let before = self.problems.len();
        let cluster = raw.cluster.unwrap_or(false);
        let urls = match raw.url {
            None => {
                self.problem(
                    None,
                    "redis.url".to_owned(),
                    "missing; expected e.g. url = \"redis://127.0.0.1:6379\" (rediss:// for TLS)"
                        .to_owned(),
                );
                Vec::new()
            }
            Some(url) => self.redis_urls(url, cluster),
        };
        let username = raw.username.and_then(|name| self.redis_username(name));
        let password = raw
            .password
            .and_then(|password| self.redis_password(password));
        let connect_timeout = self.duration(
            raw.connect_timeout,
            "redis.connect_timeout",
            defaults.connect_timeout,
        );
        let command_timeout = self.duration(
            raw.command_timeout,
            "redis.command_timeout",
            defaults.command_timeout,
        );
        let check_interval = self.duration(
            raw.check_interval,
            "redis.check_interval",
            defaults.check_interval,
        );
        let channel = match raw.channel {
            None => Some(defaults.channel),
            Some(channel) => self.short_name(channel, "redis.channel"),
        };
        if self.problems.len() != before {
            return None;
        }
        Some(RedisConfig {
            urls,
            cluster,
            username,
            password,
            connect_timeout: connect_timeout?,
            command_timeout: command_timeout?,
            channel: channel?,
            check_interval: check_interval?,
        })
    }

    /// `username`: the ACL user, a name without spaces or control characters.
    fn redis_username(&mut self, name: Spanned<String>) -> Option<String> {
        let offset = name.span().start;
        let name = name.into_inner();
        if name.is_empty() || name.chars().any(|c| c.is_whitespace() || c.is_control()) {
            self.problem(
                Some(offset),
                "redis.username".to_owned(),
                "expected an ACL user name without spaces".to_owned(),
            );
            return None;
        }
        Some(name)
    }

    /// `password`: a reference to the secret, never the secret. Not in Key Vault: Redis is
    /// connected to before any Key Vault access exists.
    fn redis_password(&mut self, password: Spanned<RawSecret>) -> Option<SecretSource> {
        let offset = password.span().start;
        match password.into_inner() {
            RawSecret::Reference(SecretSource::File(path)) => {
                Some(SecretSource::File(self.resolve_path(path)))
            }
            RawSecret::Reference(SecretSource::KeyVault(_)) => {
                self.problem(
                    Some(offset),
                    "redis.password".to_owned(),
                    "is read before any Key Vault access exists; expected { env = \"VAR\" }, { file = \"/path\" } or { systemd = \"name\" }".to_owned(),
                );
                None
            }
            RawSecret::Reference(other) => Some(other),
            RawSecret::Literal => {
                self.problem(
                    Some(offset),
                    "redis.password".to_owned(),
                    "secrets are not written in the config file; expected { env = \"VAR\" }, { file = \"/path\" } or { systemd = \"name\" }".to_owned(),
                );
                None
            }
        }
    }

    /// One URL (several only with `cluster = true`), each `redis://` or `rediss://`, with host
    /// and port and nothing secret in it.
    fn redis_urls(&mut self, url: Spanned<RawUrls>, cluster: bool) -> Vec<String> {
        let offset = url.span().start;
        let urls = match url.into_inner() {
            RawUrls::One(url) => vec![url],
            RawUrls::Many(urls) => urls,
        };
        if urls.is_empty() {
            self.problem(
                Some(offset),
                "redis.url".to_owned(),
                "is empty; expected at least one redis:// or rediss:// URL".to_owned(),
            );
        }
        if urls.len() > 1 && !cluster {
            self.problem(
                Some(offset),
                "redis.url".to_owned(),
                "several URLs are Redis Cluster seed nodes; set cluster = true, or give one URL"
                    .to_owned(),
            );
        }
        let tls: Vec<bool> = urls
            .iter()
            .map(|url| url.starts_with("rediss://"))
            .collect();
        if tls.iter().any(|t| *t) && !tls.iter().all(|t| *t) {
            self.problem(
                Some(offset),
                "redis.url".to_owned(),
                "mixes redis:// and rediss://; every node of one Redis uses TLS or none does"
                    .to_owned(),
            );
        }
        for url in &urls {
            if let Err(message) = check_redis_url(url, cluster) {
                self.problem(Some(offset), "redis.url".to_owned(), message);
            }
        }
        urls
    }

    /// A non-empty name without spaces or control characters, at most [`MAX_NAME_BYTES`].
    fn short_name(&mut self, raw: Spanned<String>, key: &str) -> Option<String> {
        let offset = raw.span().start;
        let value = raw.into_inner();
        if value.is_empty()
            || value.len() > MAX_NAME_BYTES
            || value.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            self.problem(
                Some(offset),
                key.to_owned(),
                format!(
                    "expected 1 to {MAX_NAME_BYTES} bytes without spaces or control characters, got {value:?}"
                ),
            );
            return None;
        }
        Some(value)
    }

    /// `[fleet]`: `Ok(None)` unless `enabled = true`; it needs `[redis]`.
    pub(super) fn fleet(
        &mut self,
        raw: RawFleet,
        has_redis: bool,
        daemon: Option<&DaemonConfig>,
    ) -> Result<Option<FleetConfig>, Reported> {
        let before = self.problems.len();
        let enabled = raw.enabled.unwrap_or(false);
        if enabled && !has_redis {
            self.problem(
                None,
                "fleet.enabled".to_owned(),
                "fleet mode shares leases and tokens through Redis; add a [redis] section"
                    .to_owned(),
            );
        }
        let key_prefix = match raw.key_prefix {
            None => Some(DEFAULT_FLEET_PREFIX.to_owned()),
            Some(prefix) => self.short_name(prefix, "fleet.key_prefix"),
        };
        let replica_id = raw
            .replica_id
            .and_then(|id| self.short_name(id, "fleet.replica_id"));
        // One attempt: the request, its retries inside the attempt, and the sink writes.
        let request_timeout = daemon.map_or(DaemonConfig::default().request_timeout, |d| {
            d.request_timeout
        });
        let default_ttl = request_timeout.saturating_add(Duration::from_secs(15));
        let ttl_offset = raw.lease_ttl.as_ref().map(|t| t.span().start);
        let lease_ttl = self.duration(raw.lease_ttl, "fleet.lease_ttl", default_ttl);
        if let Some(ttl) = lease_ttl
            && ttl <= request_timeout
        {
            self.problem(
                ttl_offset,
                "fleet.lease_ttl".to_owned(),
                format!(
                    "must be longer than [daemon] request_timeout ({}), or a slow request would outlive its lease and a second replica would ask too",
                    humantime::format_duration(request_timeout)
                ),
            );
        }
        if self.problems.len() != before {
            return Err(Reported);
        }
        if !enabled {
            return Ok(None);
        }
        Ok(Some(FleetConfig {
            key_prefix: key_prefix.ok_or(Reported)?,
            lease_ttl: lease_ttl.ok_or(Reported)?,
            replica_id,
        }))
    }
}

/// Default prefix of the fleet's keys.
pub(crate) const DEFAULT_FLEET_PREFIX: &str = "powerbi-tokend:fleet";

/// `redis://host[:port][/db]` or `rediss://…`: no user or password (they have their own keys,
/// and a password in a URL ends up in logs and process listings), no `#insecure`, and only
/// database 0 in a cluster.
fn check_redis_url(url: &str, cluster: bool) -> Result<(), String> {
    let example = "expected e.g. redis://127.0.0.1:6379 or rediss://cache.example.com:6380";
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(format!("{example}, got {url:?}"));
    };
    if scheme != "redis" && scheme != "rediss" {
        return Err(format!("unsupported scheme {scheme:?}; {example}"));
    }
    if rest.contains('#') || rest.contains('?') {
        return Err(format!(
            "{url:?} has a query or fragment; TLS settings come from the scheme and [daemon] ca_file, and the server name is always verified"
        ));
    }
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    if authority.contains('@') {
        // Never echo the URL: its user part may be a password.
        return Err(
            "the URL carries credentials; put the user in `username` and the password in `password = { env | file | systemd = … }`".to_owned(),
        );
    }
    if authority.is_empty() || authority.starts_with(':') {
        return Err(format!("{url:?} has no host; {example}"));
    }
    if !path.is_empty() {
        match path.parse::<u32>() {
            Ok(0) => {}
            Ok(_) if cluster => {
                return Err(format!(
                    "{url:?} selects a database; Redis Cluster has only database 0"
                ));
            }
            Ok(_) => {}
            Err(_) => {
                return Err(format!(
                    "{url:?}: the path selects a database and must be a number such as /0"
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::check_redis_url;

    #[test]
    fn redis_urls() {
        assert!(check_redis_url("redis://127.0.0.1:6379", false).is_ok());
        assert!(check_redis_url("rediss://cache.example.com:6380/2", false).is_ok());
        assert!(check_redis_url("rediss://cache.example.com:6380/2", true).is_err());
        let with_password = check_redis_url("redis://:hunter2@host:6379", false).unwrap_err();
        assert!(!with_password.contains("hunter2"), "{with_password}");
        assert!(check_redis_url("redis://user@host", false).is_err());
        assert!(check_redis_url("http://host:6379", false).is_err());
        assert!(check_redis_url("rediss://host#insecure", false).is_err());
        assert!(check_redis_url("redis://:6379", false).is_err());
        assert!(check_redis_url("redis://host/x", false).is_err());
    }
}
