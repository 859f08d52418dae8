//! Line tracking, per-section deserialization that keeps going after an error, and the order in
//! which the file's sections are read. The rules of each section live in their own files.

use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use toml::Spanned;
use toml::de::{DeValue, ValueDeserializer};

use super::raw::{RawDaemon, RawFleet, RawKeyVaultSection, RawRedis, RawServer, RawTenant};
use super::types::Destination;
use super::types::{Config, Provider, TenantConfig, TenantCredential};
use super::{ConfigError, Problem};

/// Parses and validates with `env` as the environment (workload identity and App Service
/// settings come from it); tests inject their own.
pub(super) fn parse_with_env(
    text: &str,
    path: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigError> {
    parse_reusing(text, path, env, &[])
}

/// Like [`parse_with_env`], for a reload: a tenant equal to one of `previous` (the running
/// configuration's) is that tenant's `Arc`, not a new copy, so a reload of a large file does not
/// hold a second copy of every unchanged tenant until the supervisor compares them. Equal means
/// equal but for `line`: a reused tenant keeps the line it had, as the supervisor's running copy
/// always did.
pub(super) fn parse_reusing(
    text: &str,
    path: &Path,
    env: &dyn Fn(&str) -> Option<String>,
    previous: &[Arc<TenantConfig>],
) -> Result<Config, ConfigError> {
    parse_inner(text, path, env, false, previous).0
}

/// Like [`parse_with_env`], and also returns every well-formed credential, of valid tenants and
/// of tenants with other problems alike, for `check` to read.
pub(super) fn parse_collecting(
    text: &str,
    path: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> (Result<Config, ConfigError>, Vec<TenantCredential>) {
    parse_inner(text, path, env, true, &[])
}

/// The parse itself; the credentials are collected only when asked for (`check`): a copy of
/// every tenant's credential is work and memory the daemon has no use for.
fn parse_inner(
    text: &str,
    path: &Path,
    env: &dyn Fn(&str) -> Option<String>,
    collect_credentials: bool,
    previous: &[Arc<TenantConfig>],
) -> (Result<Config, ConfigError>, Vec<TenantCredential>) {
    let line_starts = std::iter::once(0)
        .chain(text.match_indices('\n').map(|(at, _)| at + 1))
        .collect();
    let mut loader = Loader {
        text,
        line_starts,
        base: 0,
        base_dir: path.parent().map(Path::to_owned).unwrap_or_default(),
        problems: Vec::new(),
        defaults_broken: false,
        defaults_broken_keys: Vec::new(),
        seen: Vec::new(),
        key_vault_names: None,
        resolved: Vec::new(),
        credentials: Vec::new(),
        collect_credentials,
        previous,
        previous_by_name: None,
        env,
        strings: std::collections::HashSet::new(),
    };
    let config = loader.load(path);
    let mut problems = std::mem::take(&mut loader.problems);
    let result = match config {
        Some(config) if problems.is_empty() => Ok(config),
        _ => {
            problems.sort_by_key(|p| p.line.unwrap_or(usize::MAX));
            Err(ConfigError {
                path: path.to_owned(),
                problems,
            })
        }
    };
    (result, loader.credentials)
}

/// One `[[tenant]]` being validated: its own table, `[defaults]`, and how messages name it.
pub(super) struct TenantInput<'r> {
    /// The tenant's own table.
    pub(super) raw: &'r RawTenant,
    /// `[defaults]`, for every key the tenant leaves out.
    pub(super) defaults: &'r RawTenant,
    /// Byte offset of the `[[tenant]]` table, for problems about missing keys.
    pub(super) offset: usize,
    /// The tenant's name, or `tenant[i]` when it has none.
    pub(super) label: String,
    /// Keys of the tenant's table removed as unreadable (already reported).
    pub(super) broken: &'r [String],
    /// Set for a section that borrows the tenant rules (`[key_vault]`,
    /// `[key_vault.identities.<name>]`): problems are named `<section>.<key>`.
    pub(super) section: Option<&'r str>,
}

impl TenantInput<'_> {
    /// The tenant's provider, else `[defaults]`', else Entra.
    pub(super) fn provider(&self) -> Provider {
        inherited!(self, provider).map_or_else(Provider::default, |p| *p.get_ref())
    }

    /// The key path of a problem: `tenant "contoso": client_id`.
    pub(super) fn key(&self, key: &str) -> String {
        match self.section {
            Some(section) => format!("{section}.{key}"),
            None => format!("tenant {:?}: {key}", self.label),
        }
    }
}

/// Picks the tenant's value of a key, else `[defaults]`'.
macro_rules! inherited {
    ($input:expr, $key:ident) => {
        $input.raw.$key.as_ref().or($input.defaults.$key.as_ref())
    };
}
pub(super) use inherited;

/// A rule found a problem and recorded it in [`Loader::problems`]: what it was reading has no
/// value to give, and the configuration will not be built.
///
/// Rules whose value may rightly be absent (a section left out, a setting switched off, an id
/// that does not apply) return `Result<Option<T>, Reported>`, so that "absent" and "wrong" are
/// two different words; the other rules return `Option<T>`, where `None` means `Reported`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Reported;

/// The Key Vault identities a tenant's `key_vault_credential` may name, known from the
/// `[key_vault]` section as written, before (and whether or not) its rules pass: a tenant that
/// names an identity with a problem of its own is not also blamed for naming an unknown one.
#[derive(Debug)]
pub(super) struct KeyVaultNames {
    /// `[key_vault]` sets identity keys of its own: the default identity exists.
    pub(super) default: bool,
    /// The `<name>` of every `[key_vault.identities.<name>]`, in name order.
    pub(super) named: Vec<String>,
    /// Every table was read: a name not among them is unknown rather than unreadable.
    pub(super) complete: bool,
}

impl KeyVaultNames {
    /// The names of a `[key_vault]` section as read.
    fn of(section: &Result<RawKeyVaultSection, Reported>) -> KeyVaultNames {
        match section {
            Ok(section) => KeyVaultNames {
                default: !section.identity.is_empty(),
                named: section
                    .identities
                    .iter()
                    .map(|named| named.name.get_ref().clone())
                    .collect(),
                complete: section.complete,
            },
            // Unreadable (and reported): assume an identity of its own and names unknown, so
            // that no tenant is blamed for what [key_vault] could not say.
            Err(Reported) => KeyVaultNames {
                default: true,
                named: Vec::new(),
                complete: false,
            },
        }
    }

    /// Whether a tenant may name `name`.
    pub(super) fn knows(&self, name: &str) -> bool {
        (self.default && name == super::KeyVaultConfig::DEFAULT_IDENTITY)
            || self.named.iter().any(|named| named == name)
    }

    /// The names in a message: `"default", "partner" or "eu"`.
    pub(super) fn listed(&self) -> String {
        let names: Vec<String> = self
            .default
            .then_some(super::KeyVaultConfig::DEFAULT_IDENTITY)
            .into_iter()
            .chain(self.named.iter().map(String::as_str))
            .map(|name| format!("{name:?}"))
            .collect();
        match names.as_slice() {
            [] => "none".to_owned(),
            [one] => one.clone(),
            [rest @ .., last] => format!("{} or {last}", rest.join(", ")),
        }
    }
}

/// The state of one parse: the text, where lines start, and every problem found so far.
pub(super) struct Loader<'a> {
    /// The whole file.
    pub(super) text: &'a str,
    /// Byte offset where each line starts (line 1 at index 0).
    pub(super) line_starts: Vec<usize>,
    /// Added to every offset but `[defaults]`' (see [`DEFAULTS_ORIGIN`]): where the text being
    /// read starts in the file (a `[[tenant]]` table parsed on its own), 0 otherwise.
    pub(super) base: usize,
    /// Relative paths in the file are relative to the file's directory.
    pub(super) base_dir: PathBuf,
    /// Every problem found so far, in the order found.
    pub(super) problems: Vec<Problem>,
    /// `[defaults]` could not be read: do not also blame every tenant for missing keys.
    pub(super) defaults_broken: bool,
    /// Keys of `[defaults]` removed as unreadable: not "missing" in any tenant.
    pub(super) defaults_broken_keys: Vec<String>,
    /// (name, line, sink paths) of every tenant read, valid or not, for cross-tenant rules.
    pub(super) seen: Vec<(String, Option<usize>, Vec<Destination>)>,
    /// The Key Vault identities tenants may name, when the file has a `[key_vault]` section (a
    /// secret in Key Vault needs one).
    pub(super) key_vault_names: Option<KeyVaultNames>,
    /// Tenants that passed every rule, in file order.
    pub(super) resolved: Vec<Arc<TenantConfig>>,
    /// Every credential that was well-formed, for `check`.
    pub(super) credentials: Vec<TenantCredential>,
    /// Whether to fill `credentials`.
    pub(super) collect_credentials: bool,
    /// The running configuration's tenants on a reload (else empty): an equal tenant is reused.
    previous: &'a [Arc<TenantConfig>],
    /// `previous` by name, made on the first tenant not found at its own index (most reloads
    /// keep the order, and then never need it).
    previous_by_name: Option<std::collections::HashMap<&'a str, &'a Arc<TenantConfig>>>,
    /// Environment lookup (workload identity and App Service settings); injectable for tests.
    pub(super) env: &'a dyn Fn(&str) -> Option<String>,
    /// One copy of each client ID, authority host and resource, shared by every tenant that
    /// has it (most tenants share all three).
    pub(super) strings: std::collections::HashSet<Arc<str>>,
}

impl<'a> Loader<'a> {
    /// 1-based line of a byte offset: a binary search over the line starts, because a config
    /// with ten thousand tenants asks this for every tenant.
    pub(super) fn line_of(&self, offset: usize) -> usize {
        let offset = match offset.checked_sub(DEFAULTS_ORIGIN) {
            // A key of `[defaults]`: where it is in the file, whichever tenant inherited it.
            Some(in_file) => in_file,
            None => offset.saturating_add(self.base),
        };
        self.line_starts.partition_point(|start| *start <= offset)
    }

    /// `text` as a shared string: the copy other tenants already hold, if any.
    pub(super) fn shared(&mut self, text: String) -> Arc<str> {
        if let Some(shared) = self.strings.get(text.as_str()) {
            return shared.clone();
        }
        let shared: Arc<str> = text.into();
        self.strings.insert(shared.clone());
        shared
    }

    /// Records a problem at a byte offset of the file.
    pub(super) fn problem(
        &mut self,
        offset: Option<usize>,
        key: impl Into<Option<String>>,
        message: String,
    ) {
        let line = offset.map(|o| self.line_of(o));
        self.problems.push(Problem {
            column: None,
            line,
            key: key.into().map(|key| visible(&key)),
            message: visible(&message),
        });
    }

    /// Reports the first of `keys` missing in a tenant, unless one of them was present but
    /// unreadable (in the tenant or in `[defaults]`): that is already reported.
    pub(super) fn missing(&mut self, input: &TenantInput<'_>, keys: &[&str], message: &str) {
        if self.defaults_broken || self.is_broken(input, keys) {
            return;
        }
        self.problem(Some(input.offset), input.key(keys[0]), message.to_owned());
    }

    /// Whether any of `keys` was present but unreadable, in the tenant or in `[defaults]`.
    pub(super) fn is_broken(&self, input: &TenantInput<'_>, keys: &[&str]) -> bool {
        let broken = |list: &[String]| list.iter().any(|key| keys.contains(&key.as_str()));
        broken(input.broken) || broken(&self.defaults_broken_keys)
    }

    /// Deserializes one section, recording errors (with their lines) instead of stopping.
    ///
    /// A key that is unknown or whose value has the wrong type or an unknown variant is
    /// reported, removed and the section parsed again, so one mistake does not hide the section's
    /// other problems. Returns the section and the names of the keys removed (whose absence must
    /// not be reported again as "missing"); `None` if an error cannot be pinned to a key.
    pub(super) fn section<'v, T: for<'de> Deserialize<'de>>(
        &mut self,
        mut value: Spanned<DeValue<'v>>,
        label: &str,
    ) -> Option<(T, Vec<String>)> {
        let start = value.span().start;
        let mut removed = Vec::new();
        loop {
            let err = match T::deserialize(ValueDeserializer::from(value.clone())) {
                Ok(parsed) => return Some((parsed, removed)),
                Err(err) => err,
            };
            let offset = err.span().map_or(start, |s| s.start);
            let span = value.span();
            let culprit = match (value.get_ref(), err.span()) {
                (DeValue::Table(table), Some(at)) => table
                    .iter()
                    .find(|(key, item)| key.span() == at || item.span().contains(&at.start))
                    .map(|(key, _)| key.clone()),
                _ => None,
            };
            let Some(culprit) = culprit else {
                self.problem(Some(offset), label.to_owned(), err.message().to_owned());
                return None;
            };
            let name = culprit.get_ref().to_string();
            let path = if err.message().starts_with("unknown field") {
                label.to_owned()
            } else if label.starts_with("tenant") {
                format!("{label}: {name}")
            } else {
                format!("{label}.{name}")
            };
            self.problem(Some(offset), path, redacted_message(&name, err.message()));
            let DeValue::Table(table) = value.get_ref() else {
                return None;
            };
            let mut table = table.clone();
            table.remove(&culprit);
            removed.push(name);
            value = Spanned::new(span, DeValue::Table(table));
        }
    }

    /// Reads every section, then every tenant against `[defaults]`, then the cross-tenant rules.
    ///
    /// A file of many tenants is read one `[[tenant]]` table at a time (see [`split_tenants`]),
    /// so that the parsed document of a hundred thousand tenants never exists at once: only the
    /// configuration it becomes. Should the split be in doubt (a table that does not parse on
    /// its own, a `tenant` key outside the tables), the whole file is read at once instead, and
    /// what it says is the same.
    pub(super) fn load(&mut self, path: &Path) -> Option<Config> {
        if let Some(split) = split_tenants(self.text) {
            if let Ok(config) = self.load_from(path, Some(&split)) {
                return config;
            }
            self.problems.clear();
            self.defaults_broken = false;
            self.defaults_broken_keys.clear();
            self.seen.clear();
            self.resolved.clear();
            self.credentials.clear();
            self.base = 0;
        }
        // The whole text is never in doubt.
        self.load_from(path, None).unwrap_or(None)
    }

    /// [`Loader::load`] from the whole text, or from `split`: the configuration, `None` if it
    /// has problems (recorded).
    fn load_from(
        &mut self,
        path: &Path,
        split: Option<&Split>,
    ) -> Result<Option<Config>, SplitInDoubt> {
        let text = split.map_or(self.text, |split| split.rest.as_str());
        let Some(mut sections) = self.read_sections(text, split.is_some())? else {
            return Ok(None);
        };
        let server = sections.server.map(|raw| self.server(raw));
        let daemon = sections.daemon.map(|raw| self.daemon(raw));
        let redis = sections
            .redis
            .map(|raw| raw.and_then(|raw| self.redis(raw).ok_or(Reported)));
        let fleet = sections.fleet.map(|raw| {
            self.fleet(
                raw,
                redis.is_some(),
                daemon.as_ref().and_then(Option::as_ref),
            )
        });
        self.key_vault_names = sections.key_vault.as_ref().map(KeyVaultNames::of);
        let key_vault = sections
            .key_vault
            .map(|raw| raw.and_then(|raw| self.key_vault(raw).ok_or(Reported)));
        let defaults = sections.defaults.unwrap_or_default();
        self.defaults_key_vault_credential(&defaults);
        for (index, (offset, raw, broken)) in sections.tenants.into_iter().enumerate() {
            self.resolve(index, offset, raw, &broken, &defaults);
        }
        if let Some(split) = split
            && !self.resolve_split(split, &defaults)?
        {
            sections.tenants_complete = false;
        }
        self.cross_tenant_rules(redis.is_some());
        if !sections.tenants_complete {
            return Ok(None);
        }
        let tenants = std::mem::take(&mut self.resolved);
        // `None` at the first section that could not be read or has a problem (recorded).
        let config = || {
            Some(Config {
                path: path.to_owned(),
                server: server??,
                daemon: daemon??,
                redis: redis.transpose().ok()?,
                fleet: fleet?.ok()?,
                key_vault: key_vault.transpose().ok()?,
                tenants,
            })
        };
        Ok(config())
    }

    /// Parses `text` and reads each top-level section as its raw table; `None` when the text is
    /// not TOML (recorded). In the rest of a split file, text that does not parse or still has a
    /// `tenant` key puts the split in doubt.
    fn read_sections(
        &mut self,
        text: &str,
        in_split: bool,
    ) -> Result<Option<Sections>, SplitInDoubt> {
        let root = match toml::de::DeTable::parse(text) {
            Ok(root) => root.into_inner(),
            Err(_) if in_split => return Err(SplitInDoubt),
            Err(err) => {
                let offset = err.span().map(|s| s.start);
                self.problem(offset, None, format!("not valid TOML: {}", err.message()));
                if let (Some(offset), Some(problem)) = (offset, self.problems.last_mut()) {
                    problem.column = Some(column_of(text, offset));
                }
                return Ok(None);
            }
        };
        let mut sections = Sections::default();
        for (key, value) in root {
            let key_offset = key.span().start;
            match key.get_ref().as_ref() {
                "server" => sections.server = self.section(value, "server").map(|(s, _)| s),
                "daemon" => sections.daemon = self.section(value, "daemon").map(|(d, _)| d),
                "redis" => {
                    let read = self.section(value, "redis").map(|(r, _)| r);
                    sections.redis = Some(read.ok_or(Reported));
                }
                "fleet" => sections.fleet = self.section(value, "fleet").map(|(f, _)| f),
                "key_vault" => sections.key_vault = Some(self.key_vault_section(value)),
                "defaults" => sections.defaults = self.defaults(value),
                "tenant" if in_split => return Err(SplitInDoubt),
                "tenant" => {
                    let (tenants, all_read) = self.tenant_tables(key_offset, &value);
                    sections.tenants = tenants;
                    sections.tenants_complete = all_read;
                }
                other => {
                    let message = match super::hints::closest(other, SECTIONS.into_iter()) {
                        Some(meant) => format!("unknown section; did you mean [{meant}]?"),
                        None => format!(
                            "unknown section; expected one of {}",
                            SECTIONS.map(|name| format!("`{name}`")).join(", ")
                        ),
                    };
                    self.problem(Some(key_offset), other.to_owned(), message);
                }
            }
        }
        Ok(Some(sections))
    }

    /// Resolves the `[[tenant]]` tables of a split file, one at a time, each parsed from its own
    /// bytes; whether every one could be read.
    fn resolve_split(&mut self, split: &Split, defaults: &RawTenant) -> Result<bool, SplitInDoubt> {
        let mut all_read = true;
        self.resolved.reserve_exact(split.tenants.len());
        for (index, range) in split.tenants.iter().enumerate() {
            self.base = range.start;
            let item = tenant_item(&self.text[range.clone()]).ok_or(SplitInDoubt)?;
            let offset = item.span().start;
            // Read straight from the parsed table: no copy to fall back on, since nearly every
            // tenant reads cleanly. One that does not is parsed again (the same bytes give the
            // same table) and gets the error-by-error treatment of `section`.
            match RawTenant::deserialize(ValueDeserializer::from(item)) {
                Ok(raw) => self.resolve(index, offset, raw, &[], defaults),
                Err(_) => {
                    let item = tenant_item(&self.text[range.clone()]).ok_or(SplitInDoubt)?;
                    let label = tenant_label(&item, index);
                    match self.section::<RawTenant>(item, &label) {
                        Some((raw, broken)) => {
                            self.resolve(index, offset, raw, &broken, defaults);
                        }
                        None => all_read = false,
                    }
                }
            }
            self.base = 0;
        }
        Ok(all_read)
    }

    /// Resolves one tenant table against `[defaults]`; a valid tenant joins `resolved`.
    fn resolve(
        &mut self,
        index: usize,
        offset: usize,
        raw: RawTenant,
        broken: &[String],
        defaults: &RawTenant,
    ) {
        if let Some(tenant) = self.tenant(index, offset, raw, broken, defaults) {
            // Straight into an Arc: collecting a Vec<TenantConfig> into Vec<Arc<_>> later
            // would reuse (and keep) the large buffer, megabytes at ten thousand tenants.
            let tenant = match self.previous_equal(index, &tenant) {
                Some(running) => running,
                None => Arc::new(tenant),
            };
            self.resolved.push(tenant);
        }
    }

    /// The running configuration's tenant equal to `tenant`, if any: looked for at the same
    /// index first, then by name.
    fn previous_equal(&mut self, index: usize, tenant: &TenantConfig) -> Option<Arc<TenantConfig>> {
        let previous = self.previous;
        if previous.is_empty() {
            return None;
        }
        let running = match previous.get(index) {
            Some(running) if running.name == tenant.name => running,
            _ => self
                .previous_by_name
                .get_or_insert_with(|| {
                    previous
                        .iter()
                        .map(|running| (running.name.as_str(), running))
                        .collect()
                })
                .get(tenant.name.as_str())?,
        };
        (**running == *tenant).then(|| Arc::clone(running))
    }

    /// `[defaults]`: a tenant table without the keys only a tenant may have. Its offsets are
    /// moved up to [`DEFAULTS_ORIGIN`] first.
    fn defaults(&mut self, value: Spanned<DeValue<'_>>) -> Option<RawTenant> {
        let value = moved_up(value, DEFAULTS_ORIGIN);
        let Some((parsed, broken)) = self.section::<RawTenant>(value, "defaults") else {
            self.defaults_broken = true;
            return None;
        };
        self.defaults_broken_keys = broken;
        for (present, name) in [
            (parsed.name.as_ref().map(|s| s.span().start), "name"),
            (
                parsed.tenant_id.as_ref().map(|s| s.span().start),
                "tenant_id",
            ),
            (parsed.embed.as_ref().map(|s| s.span().start), "embed"),
        ] {
            if let Some(offset) = present {
                self.problem(
                    Some(offset),
                    format!("defaults.{name}"),
                    format!("`{name}` belongs in a [[tenant]], not in [defaults]"),
                );
            }
        }
        Some(parsed)
    }

    /// Every `[[tenant]]` table that could be read, with its byte offset, and whether all could.
    fn tenant_tables(
        &mut self,
        key_offset: usize,
        value: &Spanned<DeValue<'_>>,
    ) -> (Vec<TenantTable>, bool) {
        let Some(items) = value.get_ref().as_array() else {
            self.problem(
                Some(key_offset),
                "tenant".to_owned(),
                "expected an array of tables: write each tenant as [[tenant]]".to_owned(),
            );
            return (Vec::new(), false);
        };
        let mut tenants = Vec::with_capacity(items.len());
        let mut all_read = true;
        for (index, item) in items.iter().enumerate() {
            let offset = item.span().start;
            let label = tenant_label(item, index);
            match self.section::<RawTenant>(item.clone(), &label) {
                Some((parsed, broken)) => tenants.push((offset, parsed, broken)),
                None => all_read = false,
            }
        }
        (tenants, all_read)
    }

    /// A path from the file: relative paths are relative to the file's directory.
    pub(super) fn resolve_path(&self, path: PathBuf) -> PathBuf {
        if path.is_absolute() {
            path
        } else {
            self.base_dir.join(path)
        }
    }
}

/// Where the offsets of `[defaults]` start: its table is moved this far up once, when it is read.
///
/// A tenant read table by table has offsets that count from its own table (and [`Loader::base`]
/// moves them into the file), while the keys it inherits carry `[defaults]`' offsets, which count
/// from the start of the file; the rules report both kinds while they read one tenant. Moved
/// this far up, past any file (read at most [`super::MAX_CONFIG_BYTES`]) and any table in it,
/// a `[defaults]` offset says what it is by its size, and [`Loader::line_of`] leaves `base` out
/// of it. Moving every tenant's table into the file instead would rebuild each table: reading
/// 10,000 tenants took 10-15% longer that way.
const DEFAULTS_ORIGIN: usize = usize::MAX / 2;

/// `value` with every offset in it (its own, its keys', its items') moved up by `by`.
fn moved_up(value: Spanned<DeValue<'_>>, by: usize) -> Spanned<DeValue<'_>> {
    let move_span =
        |span: std::ops::Range<usize>| span.start.saturating_add(by)..span.end.saturating_add(by);
    let span = move_span(value.span());
    // Recursion as deep as the value's nesting, which the TOML parser limits.
    let value = match value.into_inner() {
        DeValue::Array(items) => {
            DeValue::Array(items.into_iter().map(|item| moved_up(item, by)).collect())
        }
        DeValue::Table(table) => DeValue::Table(
            table
                .into_iter()
                .map(|(key, item)| {
                    let key = Spanned::new(move_span(key.span()), key.into_inner());
                    (key, moved_up(item, by))
                })
                .collect(),
        ),
        other => other,
    };
    Spanned::new(span, value)
}

/// A message with its control characters written out (`\t`, `\u{1b}`): messages quote keys
/// and values from the file, and a control character there must not forge or garble the lines
/// `check` prints and the reload log writes.
pub(super) fn visible(message: &str) -> String {
    if !message.chars().any(char::is_control) {
        return message.to_owned();
    }
    message
        .chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// serde's message about a key's value, unless the key may hold a secret: serde quotes the
/// value it rejects, and a PEM key or a secret pasted where a reference belongs must not reach
/// `check`'s output or the reload log.
fn redacted_message(key: &str, message: &str) -> String {
    match key {
        "client_secret" => "expected { env = \"VAR\" }, { file = \"/path\" } { systemd = \"name\" } or { key_vault = \"https://…/secrets/…\" } (the value is not shown: it may be a secret)".to_owned(),
        "client_certificate" => "expected { cert = \"/path/app.crt\", key = \"/path/app.key\" } (the value is not shown: it may be a key)".to_owned(),
        _ => super::hints::explain(message),
    }
}

/// The sections of a configuration file.
const SECTIONS: [&str; 7] = [
    "server",
    "daemon",
    "redis",
    "fleet",
    "key_vault",
    "defaults",
    "tenant",
];

/// The 1-based column, in characters, of byte `offset` of `text`.
fn column_of(text: &str, offset: usize) -> usize {
    let Some(before) = text.get(..offset.min(text.len())) else {
        return 1;
    };
    // The byte after a '\n' always starts a character.
    let line = before.rfind('\n').map_or(before, |at| &before[at + 1..]);
    line.chars().count() + 1
}

/// A tenant table's name in messages: its name when it has one ("tenant[7]" means little in a
/// file with hundreds of tenants).
fn tenant_label(item: &Spanned<DeValue<'_>>, index: usize) -> String {
    match item
        .get_ref()
        .as_table()
        .and_then(|t| t.get("name"))
        .and_then(|name| name.get_ref().as_str())
    {
        Some(name) => format!("tenant {name:?}"),
        None => format!("tenant[{index}]"),
    }
}

/// The one `[[tenant]]` table of a split tenant's bytes; `None` if they do not parse on their
/// own as exactly that (the split is then in doubt).
fn tenant_item(text: &str) -> Option<Spanned<DeValue<'_>>> {
    let mut table = toml::de::DeTable::parse(text).ok()?.into_inner();
    let Some(DeValue::Array(items)) = table.remove("tenant").map(Spanned::into_inner) else {
        return None;
    };
    let mut items = items.into_iter();
    match (items.next(), items.next(), table.is_empty()) {
        (Some(item), None, true) => Some(item),
        _ => None,
    }
}

/// Read table by table, the file might not say what it says read whole (see [`split_tenants`]):
/// it is read whole instead.
struct SplitInDoubt;

/// A file split into its `[[tenant]]` tables and the rest.
#[derive(Debug, PartialEq)]
pub(super) struct Split {
    /// The file with every `[[tenant]]` table blanked out (newlines kept, so offsets and lines
    /// are the file's).
    pub(super) rest: String,
    /// Each `[[tenant]]` table's bytes: its header line up to the next table header that is not
    /// one of its own sub-tables (`[tenant.x]`, `[[tenant.sinks]]`).
    pub(super) tenants: Vec<std::ops::Range<usize>>,
}

/// Splits a file at its `[[tenant]]` headers, when that is certain to read the same as the
/// whole: `None` when the file has no `[[tenant]]`, has a multi-line string (whose lines could
/// look like headers), or has a line starting with `[` that is not a plain table header
/// (`[a.b]`, `[[a.b]]`, bare keys, an optional comment) — a quoted key or an array value
/// continued on a new line.
pub(super) fn split_tenants(text: &str) -> Option<Split> {
    if text.contains("\"\"\"") || text.contains("'''") {
        return None;
    }
    let mut tenants: Vec<std::ops::Range<usize>> = Vec::new();
    let mut open: Option<usize> = None;
    let mut at = 0;
    for line in text.split_inclusive('\n') {
        let start = at;
        at += line.len();
        let trimmed = line.trim_start_matches([' ', '\t']);
        if !trimmed.starts_with('[') {
            continue;
        }
        let (array, key) = header(trimmed)?;
        if key == "tenant" {
            if !array {
                return None;
            }
            if let Some(begun) = open.replace(start) {
                tenants.push(begun..start);
            }
        } else if key.starts_with("tenant.") {
            open?;
        } else if let Some(begun) = open.take() {
            tenants.push(begun..start);
        }
    }
    if let Some(begun) = open {
        tenants.push(begun..text.len());
    }
    if tenants.is_empty() {
        return None;
    }
    let mut rest = text.as_bytes().to_vec();
    for range in &tenants {
        for byte in &mut rest[range.clone()] {
            if *byte != b'\n' {
                *byte = b' ';
            }
        }
    }
    // Only ASCII bytes of whole lines were replaced by spaces: still UTF-8.
    let rest = String::from_utf8(rest).ok()?;
    Some(Split { rest, tenants })
}

/// A table header line's key and whether it is an array-of-tables header; `None` if the line is
/// not a plain header (see [`split_tenants`]).
fn header(line: &str) -> Option<(bool, &str)> {
    let (array, inner, close) = match line.strip_prefix("[[") {
        Some(inner) => (true, inner, "]]"),
        None => (false, line.strip_prefix('[')?, "]"),
    };
    let end = inner.find(close)?;
    let key = inner[..end].trim_matches([' ', '\t']);
    let after = inner[end + close.len()..].trim_matches([' ', '\t', '\r', '\n']);
    let plain = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    (plain && (after.is_empty() || after.starts_with('#'))).then_some((array, key))
}

/// A `[[tenant]]` table as read: its byte offset, its keys, and the keys removed as unreadable.
type TenantTable = (usize, RawTenant, Vec<String>);

/// The top-level sections as read. `None` inside means the section was present but could not be
/// read (its problems are recorded); a missing section is its default.
struct Sections {
    /// `[server]`.
    server: Option<RawServer>,
    /// `[daemon]`.
    daemon: Option<RawDaemon>,
    /// `[redis]`, when the file has one: an `Err` when it could not be read.
    redis: Option<Result<RawRedis, Reported>>,
    /// `[key_vault]` with its named identities, when the file has one: an `Err` when it could
    /// not be read.
    key_vault: Option<Result<RawKeyVaultSection, Reported>>,
    /// `[fleet]`.
    fleet: Option<RawFleet>,
    /// `[defaults]`.
    defaults: Option<RawTenant>,
    /// The `[[tenant]]` tables that could be read.
    tenants: Vec<TenantTable>,
    /// Whether every `[[tenant]]` table could be read.
    tenants_complete: bool,
}

impl Default for Sections {
    fn default() -> Self {
        Sections {
            server: Some(RawServer::default()),
            daemon: Some(RawDaemon::default()),
            redis: None,
            key_vault: None,
            fleet: Some(RawFleet::default()),
            defaults: Some(RawTenant::default()),
            tenants: Vec::new(),
            tenants_complete: true,
        }
    }
}
