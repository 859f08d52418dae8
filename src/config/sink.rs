//! `sinks = [ … ]`: where a tenant's token is written.

use std::path::PathBuf;

use super::loader::{Loader, TenantInput, inherited};
use super::raw::{RawMode, RawSink};
use super::types::{DEFAULT_REDIS_KEY, FileSinkConfig, RedisSinkConfig, SinkConfig};

/// Longest token file name, in bytes. Linux allows 255 (`NAME_MAX`), and the temp file written
/// next to it adds its own suffix, so a longer name would pass here and fail every write.
pub(crate) const MAX_FILE_NAME_BYTES: usize = 200;

impl Loader<'_> {
    /// At least one sink; `{name}` expanded, paths relative to the config file, modes checked.
    pub(super) fn sinks(
        &mut self,
        input: &TenantInput<'_>,
        name: Option<&str>,
    ) -> Option<Vec<SinkConfig>> {
        let sinks = match inherited!(input, sinks) {
            None => {
                self.missing(
                    input,
                    &["sinks"],
                    "missing (in the tenant or in [defaults]); expected e.g. sinks = [{ type = \"file\", path = \"/var/lib/powerbi-tokend/{name}.json\" }]",
                );
                return None;
            }
            Some(sinks) => sinks,
        };
        let offset = sinks.span().start;
        let key = input.key("sinks");
        let name = name.unwrap_or("");
        self.sink_list(
            sinks.get_ref(),
            offset,
            &key,
            &|pattern| pattern.replace("{name}", name),
            name,
        )
    }

    /// A list of sinks (a tenant's, or an embed token's) at `offset`, reported under `key`:
    /// file paths through `expand`, Redis keys through `expand` with `{name}` kept as the hash
    /// tag of `tenant`.
    pub(super) fn sink_list(
        &mut self,
        sinks: &[RawSink],
        offset: usize,
        key: &str,
        expand: &dyn Fn(&str) -> String,
        tenant: &str,
    ) -> Option<Vec<SinkConfig>> {
        if sinks.is_empty() {
            self.problem(
                Some(offset),
                key.to_owned(),
                "is empty; at least one sink is needed".to_owned(),
            );
            return None;
        }
        let mut out = Vec::new();
        for sink in sinks {
            match sink {
                RawSink::File { path, format, mode } => {
                    let mode = match mode.as_ref().map_or(Ok(0o600), parse_mode) {
                        Ok(mode) => Some(mode),
                        Err(message) => {
                            self.problem(Some(offset), format!("{key}.mode"), message);
                            None
                        }
                    };
                    if path.trim().is_empty() {
                        self.problem(
                            Some(offset),
                            format!("{key}.path"),
                            "must not be empty".to_owned(),
                        );
                        continue;
                    }
                    let expanded = expand(path);
                    let file_name_bytes = std::path::Path::new(&expanded)
                        .file_name()
                        .map_or(0, |file| file.len());
                    if file_name_bytes > MAX_FILE_NAME_BYTES {
                        self.problem(
                            Some(offset),
                            format!("{key}.path"),
                            format!(
                                "the file name is {file_name_bytes} bytes; at most {MAX_FILE_NAME_BYTES} fit next to the temp file's suffix (use a shorter name or path pattern)"
                            ),
                        );
                        continue;
                    }
                    if let Some(mode) = mode {
                        out.push(SinkConfig::File(FileSinkConfig {
                            path: self.resolve_path(PathBuf::from(expanded)),
                            format: format.unwrap_or_default(),
                            mode,
                        }));
                    }
                }
                RawSink::Redis {
                    key: redis_key_pattern,
                    format,
                } => {
                    let pattern = expand_keeping_name(
                        expand,
                        redis_key_pattern.as_deref().unwrap_or(DEFAULT_REDIS_KEY),
                    );
                    match redis_key(&pattern, tenant) {
                        Ok(key) => out.push(SinkConfig::Redis(RedisSinkConfig {
                            key,
                            format: format.unwrap_or_default(),
                        })),
                        Err(message) => {
                            self.problem(Some(offset), format!("{key}.key"), message);
                        }
                    }
                }
            }
        }
        Some(out)
    }
}

/// `pattern` through `expand`, except `{name}`, which [`redis_key`] turns into a hash tag.
fn expand_keeping_name(expand: &dyn Fn(&str) -> String, pattern: &str) -> String {
    pattern
        .split("{name}")
        .map(expand)
        .collect::<Vec<_>>()
        .join("{name}")
}

/// Longest Redis key pattern, in bytes.
const MAX_REDIS_KEY_BYTES: usize = 512;

/// The key with `{name}` replaced by `{<name>}`: the braces stay, as a Redis Cluster hash tag,
/// so the tenant's token key and its fleet keys land in one slot. The pattern must name the
/// tenant (or every tenant would write one key) and may hold no other braces, which would
/// change the hash tag.
pub(super) fn redis_key(pattern: &str, name: &str) -> Result<String, String> {
    if pattern.len() > MAX_REDIS_KEY_BYTES
        || pattern.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(format!(
            "expected a key pattern of at most {MAX_REDIS_KEY_BYTES} bytes without spaces, such as \"powerbi-tokend:{{name}}\""
        ));
    }
    if pattern.matches("{name}").count() != 1 {
        return Err(format!(
            "{pattern:?} must contain {{name}} once: it becomes the tenant's name in braces, a Redis Cluster hash tag"
        ));
    }
    let rest = pattern.replacen("{name}", "", 1);
    if rest.contains(['{', '}']) {
        return Err(format!(
            "{pattern:?} has braces besides {{name}}; they would change the Redis Cluster hash tag"
        ));
    }
    Ok(pattern.replacen("{name}", &format!("{{{name}}}"), 1))
}

/// `"0600"`, `"0o600"` or `0o600`: at most rwx bits, and at least read and write for the daemon.
pub(super) fn parse_mode(mode: &RawMode) -> Result<u32, String> {
    let value = match mode {
        RawMode::Text(text) => u32::from_str_radix(text.trim_start_matches("0o"), 8)
            .map_err(|_| format!("expected an octal mode such as \"0600\", got {text:?}"))?,
        RawMode::Number(number) => u32::try_from(*number)
            .map_err(|_| format!("expected an octal mode such as \"0600\", got {number}"))?,
    };
    if value > 0o777 {
        return Err(format!(
            "mode {value:o} has bits beyond rwx for user/group/other; expected e.g. \"0600\" or \"0640\""
        ));
    }
    if value & 0o600 != 0o600 {
        return Err(format!(
            "mode {value:04o} does not let the daemon read and write its own file; expected at least 0600"
        ));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_keys_keep_the_name_as_a_hash_tag() {
        assert_eq!(
            redis_key("powerbi-tokend:{name}", "contoso").unwrap(),
            "powerbi-tokend:{contoso}"
        );
        assert!(redis_key("static", "contoso").is_err());
        assert!(redis_key("{name}:{name}", "contoso").is_err());
        assert!(redis_key("{x}:{name}", "contoso").is_err());
        assert!(redis_key("a b:{name}", "contoso").is_err());
    }

    #[test]
    fn modes() {
        assert_eq!(parse_mode(&RawMode::Text("0640".into())), Ok(0o640));
        assert_eq!(parse_mode(&RawMode::Number(0o600)), Ok(0o600));
        assert!(parse_mode(&RawMode::Text("0400".into())).is_err());
        assert!(parse_mode(&RawMode::Text("4755".into())).is_err());
        assert!(parse_mode(&RawMode::Text("rw".into())).is_err());
    }
}
