//! `[server]`: the admin HTTP server, and its optional `[server.tls]` and `[server.basic_auth]`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use toml::Spanned;

use super::DEFAULT_LISTEN;
use super::loader::Loader;
use super::raw::{RawBasicAuth, RawServer, RawServerTls};
use super::types::{BasicAuthConfig, ServerConfig, ServerTls};

/// The longest user name `[server.basic_auth] users` takes.
const MAX_USER_CHARS: usize = 128;

/// What a bcrypt hash looks like: how `check` explains one it refuses.
const BCRYPT_EXPECTED: &str = "expected a bcrypt hash: $2a$, $2b$ or $2y$, a cost from 04 to 31, $, then 53 characters of [./A-Za-z0-9] (60 in all), as `htpasswd -nbBC 10 \"\" 'password' | tr -d ':\\n'` prints";

impl Loader<'_> {
    /// `listen` (an address and port), the config-file watcher, which tenants `/metrics`
    /// names, and the admin server's TLS and basic auth. An unknown `per_tenant_metrics` is
    /// reported by serde with the expected values.
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
        );
        let tls = raw.tls.map(|tls| self.server_tls(tls));
        let basic_auth = raw.basic_auth.map(|auth| self.basic_auth(auth));
        Some(ServerConfig {
            listen,
            watch_config: raw.watch_config.unwrap_or(false),
            watch_interval: watch_interval?,
            per_tenant_metrics: raw.per_tenant_metrics.unwrap_or_default(),
            tls: tls.map(|tls| tls.ok_or(())).transpose().ok()?,
            basic_auth: basic_auth.map(|auth| auth.ok_or(())).transpose().ok()?,
        })
    }

    /// `[server.tls]`: both files named; relative paths are relative to the config file. Whether
    /// they exist and parse is `check`'s and the start's business (the files may be installed
    /// after the config).
    fn server_tls(&mut self, raw: Spanned<RawServerTls>) -> Option<ServerTls> {
        let offset = raw.span().start;
        let raw = raw.into_inner();
        let mut file = |value: Option<Spanned<std::path::PathBuf>>, key: &str| match value {
            Some(path) if !path.get_ref().as_os_str().is_empty() => {
                let line = self.line_of(path.span().start);
                Some((self.resolve_path(path.into_inner()), Some(line)))
            }
            _ => {
                self.problem(
                    Some(offset),
                    format!("server.tls.{key}"),
                    "missing: [server.tls] needs both cert_file (the PEM certificate chain) and key_file (its PEM private key)".to_owned(),
                );
                None
            }
        };
        let cert = file(raw.cert_file, "cert_file");
        let key = file(raw.key_file, "key_file");
        let ((cert_file, cert_line), (key_file, key_line)) = (cert?, key?);
        Some(ServerTls {
            cert_file,
            key_file,
            lines: [cert_line, key_line],
        })
    }

    /// `[server.basic_auth]`: at least one user, each a name RFC 7617 allows (no `:`, no
    /// control character) with a bcrypt hash. A refused hash is never quoted: it may be a
    /// password pasted by mistake.
    fn basic_auth(&mut self, raw: Spanned<RawBasicAuth>) -> Option<BasicAuthConfig> {
        let offset = raw.span().start;
        let raw = raw.into_inner();
        let Some(raw_users) = raw.users.filter(|users| !users.is_empty()) else {
            self.problem(
                Some(offset),
                "server.basic_auth.users".to_owned(),
                "missing: expected at least one user, as users = { prometheus = \"$2y$10$…\" }"
                    .to_owned(),
            );
            return None;
        };
        let mut users = BTreeMap::new();
        let mut all_good = true;
        for (name, hash) in raw_users {
            let key = format!("server.basic_auth.users.{}", name.get_ref());
            if let Some(problem) = user_name_problem(name.get_ref()) {
                self.problem(Some(name.span().start), key, problem);
                all_good = false;
            } else if let Some(problem) = bcrypt_problem(hash.get_ref()) {
                self.problem(Some(hash.span().start), key, problem);
                all_good = false;
            } else {
                users.insert(name.into_inner(), hash.into_inner());
            }
        }
        all_good.then_some(BasicAuthConfig {
            users,
            healthz_open: raw.healthz_open.unwrap_or(false),
        })
    }
}

/// Why a user name cannot be used with HTTP basic auth, if it cannot.
fn user_name_problem(name: &str) -> Option<String> {
    if name.is_empty() || name.chars().count() > MAX_USER_CHARS {
        Some(format!(
            "expected a user name of 1 to {MAX_USER_CHARS} characters"
        ))
    } else if name.contains(':') || name.contains(char::is_control) {
        Some(
            "a user name cannot hold ':' or a control character (RFC 7617: the colon ends the name)"
                .to_owned(),
        )
    } else {
        None
    }
}

/// Why `hash` is not a bcrypt hash, if it is not: `$2a$`, `$2b$` or `$2y$`, a two-digit cost
/// from 4 to 31, `$`, 22 characters of salt and 31 of hash in bcrypt's base64 alphabet.
pub(crate) fn bcrypt_problem(hash: &str) -> Option<String> {
    let bytes = hash.as_bytes();
    let prefix_ok = bytes.len() == 60
        && [&b"$2a$"[..], b"$2b$", b"$2y$"].contains(&&bytes[..4])
        && bytes[6] == b'$';
    let cost = hash
        .get(4..6)
        .filter(|digits| digits.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|digits| digits.parse::<u32>().ok());
    let alphabet_ok = bytes.get(7..).is_some_and(|rest| {
        rest.iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'/'))
    });
    match cost {
        _ if !prefix_ok || !alphabet_ok => Some(format!(
            "{BCRYPT_EXPECTED}; got a value of {} characters that is not one",
            hash.chars().count()
        )),
        Some(cost) if (4..=31).contains(&cost) => None,
        _ => Some(format!("{BCRYPT_EXPECTED}; the cost is not from 04 to 31")),
    }
}

impl ServerConfig {
    /// What `check` and the start warn about: credentials sent in clear text over a network.
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        if self.basic_auth.is_some() && self.tls.is_none() && !self.listen.ip().is_loopback() {
            warnings.push(format!(
                "[server.basic_auth] without [server.tls] on {}: passwords cross the network in clear text; add [server.tls] or listen on 127.0.0.1",
                self.listen
            ));
        }
        warnings
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bcrypt_hashes_are_recognised_by_shape() {
        let good = "$2b$10$Jd8I.ZesW6x/yyvkD0XYG.JXnboa6ao4pFnV/frdSBqnZjZcGxlb6";
        assert_eq!(bcrypt_problem(good), None);
        assert_eq!(bcrypt_problem(&good.replace("$2b$", "$2y$")), None);
        assert_eq!(bcrypt_problem(&good.replace("$2b$", "$2a$")), None);
        assert_eq!(bcrypt_problem(&good.replace("$10$", "$04$")), None);
        assert_eq!(bcrypt_problem(&good.replace("$10$", "$31$")), None);
        for bad in [
            "",
            "hunter2hunter2",
            &good.replace("$2b$", "$2x$"),
            &good[..59],
            &format!("{good}x"),
            &good.replace("$10$", "$1a$"),
            &good.replace("Jd8I", "Jd I"),
            &format!("{}ö", &good[..58]),
        ] {
            let problem = bcrypt_problem(bad).expect(bad);
            assert!(problem.contains("expected a bcrypt hash"), "{problem}");
            assert!(bad.is_empty() || !problem.contains(bad), "{problem}");
        }
        for cost in ["$03$", "$32$", "$99$"] {
            let problem = bcrypt_problem(&good.replace("$10$", cost)).unwrap();
            assert!(problem.contains("cost"), "{problem}");
        }
        // Multi-byte characters where the prefix belongs: no panic on a char boundary.
        assert!(bcrypt_problem(&format!("é{}", &good[2..])).is_some());
    }

    #[test]
    fn user_names_follow_rfc_7617() {
        assert_eq!(user_name_problem("prometheus"), None);
        assert!(user_name_problem("").is_some());
        assert!(user_name_problem("a:b").is_some());
        assert!(user_name_problem("a\u{7}").is_some());
        assert!(user_name_problem(&"a".repeat(129)).is_some());
    }
}
