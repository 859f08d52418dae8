//! A tenant's use of the Power BI REST API: where the API is (`powerbi_api`, else the cloud's
//! root), the access probe (`probe`) and embed tokens (`[[tenant.embed]]`). The first two may be
//! set in `[defaults]`; a tenant's own value replaces the default whole (`probe = false` turns an
//! inherited probe off). Embed tokens belong to one tenant each.
//!
//! A tenant whose token is for Fabric (`resource = "fabric"`) uses the Fabric REST API instead:
//! `fabric_api` is its root and the probe calls Fabric; embed tokens, made by Power BI's
//! GenerateToken with a Power BI token, are not for it.

use std::time::Duration;

use super::loader::{Loader, Reported, TenantInput, inherited};
use super::raw::{RawEmbed, RawIdentity};
use super::types::{
    AccessLevel, EffectiveIdentity, EmbedConfig, PowerBiConfig, ProbeConfig, RestApi, SinkConfig,
};
use super::values::{check_authority_host, is_guid};
use crate::cloud::Cloud;

/// The shortest probe interval: below it the probe would be a load test.
const PROBE_INTERVAL_MIN: Duration = Duration::from_secs(1);

/// The longest: a day without knowing whether Power BI still accepts the tokens is the most an
/// alert that waits half an hour can be helped by.
const PROBE_INTERVAL_MAX: Duration = Duration::from_secs(24 * 3600);

/// GenerateToken's limit per kind of item.
const EMBED_ITEMS_MAX: usize = 50;

/// The longest `lifetimeInMinutes` worth asking for: an embed token never outlives the Entra
/// token it was made with, which lives about an hour.
const EMBED_LIFETIME_MAX: Duration = Duration::from_secs(60 * 60);

/// The longest user name, role name or custom data accepted in an effective identity: real ones
/// are user principal names and short role names.
const IDENTITY_TEXT_MAX: usize = 256;

/// A path longer than this is not a Power BI API call.
const PROBE_PATH_MAX: usize = 512;

impl Loader<'_> {
    /// The tenant's Power BI (or Fabric) settings: `Ok(None)` when it uses none.
    pub(super) fn powerbi(
        &mut self,
        input: &TenantInput<'_>,
        name: Option<&str>,
        cloud: Cloud,
        resource: Option<&str>,
    ) -> Result<Option<PowerBiConfig>, Reported> {
        let api = rest_api(resource);
        let api_root = self.api_root(input, cloud, api);
        let probe = self.probe(input, resource, api);
        let embeds = self.embeds(input, name, api);
        let (probe, embeds, api_root) =
            (probe?, embeds.ok_or(Reported)?, api_root.ok_or(Reported)?);
        if probe.is_none() && embeds.is_empty() {
            return Ok(None);
        }
        Ok(Some(PowerBiConfig {
            api,
            api_root: self.shared(api_root),
            probe,
            embeds,
        }))
    }

    /// Every `[[tenant.embed]]` of the tenant's own table (never inherited). An embed token is
    /// made with a Power BI token, so a tenant whose token is for Fabric has none.
    fn embeds(
        &mut self,
        input: &TenantInput<'_>,
        tenant: Option<&str>,
        api: RestApi,
    ) -> Option<Vec<EmbedConfig>> {
        let Some(list) = &input.raw.embed else {
            return Some(Vec::new());
        };
        if api == RestApi::Fabric {
            self.problem(
                Some(list.span().start),
                input.key("embed"),
                "embed tokens come from Power BI's GenerateToken, which takes a Power BI token, and this tenant's token is for Fabric (resource = \"fabric\"); keep the embeds on a tenant with the Power BI resource".to_owned(),
            );
            return None;
        }
        let tenant = tenant.unwrap_or("");
        let mut embeds = Vec::new();
        let mut ok = true;
        for (index, raw) in list.get_ref().iter().enumerate() {
            let at = raw.span().start;
            match self.embed(input, index, at, raw.get_ref(), tenant) {
                Some(embed) => {
                    if embeds
                        .iter()
                        .any(|other: &EmbedConfig| other.name == embed.name)
                    {
                        self.problem(
                            Some(at),
                            input.key(&format!("embed {:?}", embed.name)),
                            "duplicate embed name; each [[tenant.embed]] of a tenant needs its own"
                                .to_owned(),
                        );
                        ok = false;
                    }
                    embeds.push(embed);
                }
                None => ok = false,
            }
        }
        ok.then_some(embeds)
    }

    /// One `[[tenant.embed]]`.
    fn embed(
        &mut self,
        input: &TenantInput<'_>,
        index: usize,
        at: usize,
        raw: &RawEmbed,
        tenant: &str,
    ) -> Option<EmbedConfig> {
        let before = self.problems.len();
        let Some(name) = raw.name.clone() else {
            self.problem(
                Some(at),
                input.key(&format!("embed[{index}].name")),
                "missing; every [[tenant.embed]] needs a name (letters, digits, '.', '_', '-')"
                    .to_owned(),
            );
            return None;
        };
        let key = input.key(&format!("embed {name:?}"));
        if !super::tenant::is_valid_name(&name) {
            self.problem(
                Some(at),
                format!("{key}.name"),
                format!("{name:?} is not a valid name: use letters, digits, '.', '_' and '-' only"),
            );
        }
        self.embed_items(at, &key, raw);
        let access_level = self.embed_access_level(at, &key, raw);
        let lifetime = self.embed_lifetime(at, &key, raw);
        let identities = self.embed_identities(at, &key, raw);
        let datasource_identities =
            self.embed_datasource_identities(at, &key, &raw.datasource_identities);
        let xmla_read_only = self.embed_xmla(at, &key, raw);
        self.embed_workspace(at, &key, raw);
        let sinks = self.embed_sinks(at, &key, raw, tenant, &name);
        if self.problems.len() != before {
            return None;
        }
        Some(EmbedConfig {
            name,
            reports: raw.reports.clone(),
            datasets: raw.datasets.clone(),
            target_workspaces: raw.target_workspaces.clone(),
            access_level,
            lifetime,
            xmla_read_only,
            identities,
            workspace: raw.workspace.clone(),
            datasource_identities,
            sinks: sinks?,
        })
    }

    /// `workspace`: a GUID, the workspace the embed's reports are read from for their embed
    /// URLs; it is of no use to an embed without reports.
    fn embed_workspace(&mut self, at: usize, key: &str, raw: &RawEmbed) {
        let Some(workspace) = &raw.workspace else {
            return;
        };
        if !is_guid(workspace) {
            self.problem(
                Some(at),
                format!("{key}.workspace"),
                format!("expected a GUID (the id in the workspace's URL), got {workspace:?}"),
            );
        }
        if raw.reports.is_empty() {
            self.problem(
                Some(at),
                format!("{key}.workspace"),
                "is where the embed's reports are read from, and it lists none".to_owned(),
            );
        }
    }

    /// `reports`, `datasets` and `target_workspaces`: GUIDs, no more of each than GenerateToken
    /// takes, and a report or a dataset at least (a token for nothing cannot be asked for).
    fn embed_items(&mut self, at: usize, key: &str, raw: &RawEmbed) {
        if raw.reports.is_empty() && raw.datasets.is_empty() {
            self.problem(
                Some(at),
                key.to_owned(),
                "names no report and no dataset; expected reports = [\"<report id>\"] and/or datasets = [\"<dataset id>\"]".to_owned(),
            );
        }
        for (field, ids) in [
            ("reports", &raw.reports),
            ("datasets", &raw.datasets),
            ("target_workspaces", &raw.target_workspaces),
        ] {
            if ids.len() > EMBED_ITEMS_MAX {
                self.problem(
                    Some(at),
                    format!("{key}.{field}"),
                    format!(
                        "has {} ids; GenerateToken takes at most {EMBED_ITEMS_MAX}",
                        ids.len()
                    ),
                );
            }
            if let Some(bad) = ids.iter().find(|id| !is_guid(id)) {
                self.problem(
                    Some(at),
                    format!("{key}.{field}"),
                    format!("expected GUIDs (the id in the item's URL), got {bad:?}"),
                );
            }
        }
    }

    /// `access_level`: `View` unless set; `Create` needs the workspaces to save in, which
    /// GenerateToken would otherwise refuse at every refresh.
    fn embed_access_level(&mut self, at: usize, key: &str, raw: &RawEmbed) -> AccessLevel {
        let access_level = match raw.access_level.as_deref() {
            None | Some("View") => AccessLevel::View,
            Some("Edit") => AccessLevel::Edit,
            Some("Create") => AccessLevel::Create,
            Some(other) => {
                self.problem(
                    Some(at),
                    format!("{key}.access_level"),
                    format!("expected \"View\", \"Edit\" or \"Create\", got {other:?}"),
                );
                AccessLevel::View
            }
        };
        if access_level == AccessLevel::Create && raw.target_workspaces.is_empty() {
            self.problem(
                Some(at),
                format!("{key}.target_workspaces"),
                "access_level = \"Create\" needs the workspaces new content may be saved in"
                    .to_owned(),
            );
        }
        access_level
    }

    /// `lifetime`: whole minutes up to [`EMBED_LIFETIME_MAX`], the unit `lifetimeInMinutes`
    /// takes; `None` when unset (Power BI's default) or wrong (reported).
    fn embed_lifetime(&mut self, at: usize, key: &str, raw: &RawEmbed) -> Option<Duration> {
        match raw.lifetime.as_deref().map(humantime::parse_duration) {
            None => None,
            Some(Ok(lifetime))
                if lifetime >= Duration::from_secs(60)
                    && lifetime <= EMBED_LIFETIME_MAX
                    && lifetime.as_secs() % 60 == 0 =>
            {
                Some(lifetime)
            }
            Some(_) => {
                self.problem(
                    Some(at),
                    format!("{key}.lifetime"),
                    format!(
                        "expected whole minutes between 1m and 60m such as \"30m\", got {:?}",
                        raw.lifetime.as_deref().unwrap_or_default()
                    ),
                );
                None
            }
        }
    }

    /// `xmla_permissions`: `"ReadOnly"` or `"Off"` (the default), as GenerateToken spells them;
    /// it applies to the embed's datasets, so it needs some.
    fn embed_xmla(&mut self, at: usize, key: &str, raw: &RawEmbed) -> bool {
        let read_only = match raw.xmla_permissions.as_deref() {
            None | Some("Off") => false,
            Some("ReadOnly") => true,
            Some(other) => {
                self.problem(
                    Some(at),
                    format!("{key}.xmla_permissions"),
                    format!("expected \"ReadOnly\" or \"Off\", got {other:?}"),
                );
                false
            }
        };
        if read_only && raw.datasets.is_empty() {
            self.problem(
                Some(at),
                format!("{key}.xmla_permissions"),
                "applies to the embed's datasets, and it lists none".to_owned(),
            );
        }
        read_only
    }

    /// `identities`: each names a user and the embed's datasets it applies to (GenerateToken
    /// refuses an identity without datasets, and one naming an item the token does not cover
    /// would fail at every refresh), within GenerateToken's limits.
    fn embed_identities(&mut self, at: usize, key: &str, raw: &RawEmbed) -> Vec<EffectiveIdentity> {
        if raw.identities.len() > EMBED_ITEMS_MAX {
            self.problem(
                Some(at),
                format!("{key}.identities"),
                format!(
                    "has {} entries; GenerateToken takes at most {EMBED_ITEMS_MAX}",
                    raw.identities.len()
                ),
            );
        }
        let mut identities = Vec::new();
        for (index, identity) in raw.identities.iter().enumerate() {
            let key = format!("{key}.identities[{index}]");
            if let Some(identity) = self.embed_identity(at, &key, raw, identity) {
                identities.push(identity);
            }
        }
        identities
    }

    /// One `identities` entry (see [`Loader::embed_identities`]).
    fn embed_identity(
        &mut self,
        at: usize,
        key: &str,
        embed: &RawEmbed,
        raw: &RawIdentity,
    ) -> Option<EffectiveIdentity> {
        let before = self.problems.len();
        let username = raw.username.clone().unwrap_or_default();
        if username.is_empty() || username.len() > IDENTITY_TEXT_MAX {
            self.problem(
                Some(at),
                format!("{key}.username"),
                format!("expected the user the rows are filtered for, 1 to {IDENTITY_TEXT_MAX} characters"),
            );
        }
        if raw.datasets.is_empty() {
            self.problem(
                Some(at),
                format!("{key}.datasets"),
                "missing; expected the embed's datasets this identity applies to".to_owned(),
            );
        }
        for (field, ids, listed) in [
            ("datasets", &raw.datasets, &embed.datasets),
            ("reports", &raw.reports, &embed.reports),
        ] {
            if let Some(stray) = ids.iter().find(|id| !listed.contains(id)) {
                self.problem(
                    Some(at),
                    format!("{key}.{field}"),
                    format!(
                        "{stray:?} is not among the embed's {field}; expected one of {listed:?}"
                    ),
                );
            }
        }
        let out_of_bounds = |text: &String| text.is_empty() || text.len() > IDENTITY_TEXT_MAX;
        if raw.roles.len() > EMBED_ITEMS_MAX || raw.roles.iter().any(out_of_bounds) {
            self.problem(
                Some(at),
                format!("{key}.roles"),
                format!("expected at most {EMBED_ITEMS_MAX} role names of 1 to {IDENTITY_TEXT_MAX} characters"),
            );
        }
        if raw.custom_data.as_ref().is_some_and(out_of_bounds) {
            self.problem(
                Some(at),
                format!("{key}.custom_data"),
                format!("expected 1 to {IDENTITY_TEXT_MAX} characters"),
            );
        }
        (self.problems.len() == before).then(|| EffectiveIdentity {
            username,
            roles: raw.roles.clone(),
            datasets: raw.datasets.clone(),
            reports: raw.reports.clone(),
            custom_data: raw.custom_data.clone(),
        })
    }

    /// `sinks`: required, since an embed token nobody can read is of no use; `{embed}` in a
    /// path or key stands for the embed's name, `{name}` for the tenant's.
    fn embed_sinks(
        &mut self,
        at: usize,
        key: &str,
        raw: &RawEmbed,
        tenant: &str,
        name: &str,
    ) -> Option<Vec<SinkConfig>> {
        let Some(sinks) = &raw.sinks else {
            self.problem(
                Some(at),
                format!("{key}.sinks"),
                "missing; expected e.g. sinks = [{ type = \"file\", path = \"/var/lib/powerbi-tokend/{name}.{embed}.embed.json\" }]".to_owned(),
            );
            return None;
        };
        self.sink_list(
            sinks,
            at,
            &format!("{key}.sinks"),
            &|pattern| pattern.replace("{name}", tenant).replace("{embed}", name),
            tenant,
        )
    }

    /// The root of the API the tenant's token is for: `powerbi_api` or `fabric_api`, else the
    /// cloud's, under the same https-except-loopback rule as `authority_host` (the token is a
    /// credential too). The other API's key in the tenant's own table is a mistake (one in
    /// `[defaults]` serves other tenants).
    fn api_root(&mut self, input: &TenantInput<'_>, cloud: Cloud, api: RestApi) -> Option<String> {
        let (key, raw, other, default, example) = match api {
            RestApi::PowerBi => (
                "powerbi_api",
                inherited!(input, powerbi_api),
                ("fabric_api", &input.raw.fabric_api),
                cloud.power_bi_api(),
                "https://api.powerbi.com",
            ),
            RestApi::Fabric => (
                "fabric_api",
                inherited!(input, fabric_api),
                ("powerbi_api", &input.raw.powerbi_api),
                // Fabric exists in the public cloud only; another cloud was refused with
                // `resource`, and this root is never used.
                cloud.fabric_api().unwrap_or_default(),
                "https://api.fabric.microsoft.com",
            ),
        };
        if let (other, Some(value)) = other {
            self.problem(
                Some(value.span().start),
                input.key(other),
                format!(
                    "{other} does not apply to this tenant, whose token is for the {} API{}",
                    api.title(),
                    match api {
                        RestApi::PowerBi => "; fabric_api applies with resource = \"fabric\"",
                        RestApi::Fabric => " (resource = \"fabric\"): its root is fabric_api",
                    }
                ),
            );
        }
        let Some(raw) = raw else {
            return Some(default.to_owned());
        };
        match check_authority_host(raw.get_ref()) {
            Ok(root) => Some(root),
            Err(message) => {
                let message = message.replace("https://login.microsoftonline.com", example);
                self.problem(Some(raw.span().start), input.key(key), message);
                None
            }
        }
    }

    /// `probe`: `true`, `false`, or `{ interval = "15m", path = "/v1.0/…" }`; the default path
    /// is `api`'s.
    fn probe(
        &mut self,
        input: &TenantInput<'_>,
        resource: Option<&str>,
        api: RestApi,
    ) -> Result<Option<ProbeConfig>, Reported> {
        let Some(raw) = inherited!(input, probe) else {
            return Ok(None);
        };
        let at = Some(raw.span().start);
        let key = input.key("probe");
        let probe = match raw.get_ref() {
            toml::Value::Boolean(false) => return Ok(None),
            toml::Value::Boolean(true) => ProbeConfig {
                interval: ProbeConfig::DEFAULT_INTERVAL,
                path: api.default_probe_path().to_owned(),
            },
            toml::Value::Table(table) => self.probe_table(at, &key, table, api)?,
            other => {
                let message = format!("{PROBE_EXPECTED}, got a {}", other.type_str());
                self.problem(at, key, message);
                return Err(Reported);
            }
        };
        self.probe_resource(at, key, resource)?;
        Ok(Some(probe))
    }

    /// `probe = { interval, path }`: each key replaces its default; every key is checked
    /// before the table is given up on, so one run reports them all.
    fn probe_table(
        &mut self,
        at: Option<usize>,
        key: &str,
        table: &toml::Table,
        api: RestApi,
    ) -> Result<ProbeConfig, Reported> {
        let mut probe = ProbeConfig {
            interval: ProbeConfig::DEFAULT_INTERVAL,
            path: api.default_probe_path().to_owned(),
        };
        let mut ok = true;
        for (name, value) in table {
            match (name.as_str(), value) {
                ("interval", toml::Value::String(text)) => match probe_interval(text) {
                    Some(interval) => probe.interval = interval,
                    None => {
                        self.problem(
                            at,
                            format!("{key}.interval"),
                            format!(
                                "expected a duration between 1s and 24h such as \"15m\", got {text:?}"
                            ),
                        );
                        ok = false;
                    }
                },
                ("path", toml::Value::String(path)) => match check_probe_path(path) {
                    Ok(()) => probe.path.clone_from(path),
                    Err(message) => {
                        self.problem(at, format!("{key}.path"), message);
                        ok = false;
                    }
                },
                ("interval" | "path", other) => {
                    self.problem(
                        at,
                        format!("{key}.{name}"),
                        format!("expected a string, got a {}", other.type_str()),
                    );
                    ok = false;
                }
                (other, _) => {
                    self.problem(
                        at,
                        format!("{key}.{other}"),
                        format!("unknown key {other:?}; {PROBE_EXPECTED}"),
                    );
                    ok = false;
                }
            }
        }
        if ok { Ok(probe) } else { Err(Reported) }
    }

    /// A token for another resource would be refused by Power BI (and Fabric) whatever the
    /// tenant's settings: the probe would only ever report a configuration mistake of ours.
    fn probe_resource(
        &mut self,
        at: Option<usize>,
        key: String,
        resource: Option<&str>,
    ) -> Result<(), Reported> {
        if let Some(resource) = resource
            && !Cloud::ALL
                .iter()
                .any(|cloud| cloud.power_bi_resource() == resource.trim_end_matches('/'))
            && rest_api(Some(resource)) != RestApi::Fabric
        {
            self.problem(
                at,
                key,
                format!(
                    "the probe calls the Power BI API (or Fabric's, with resource = \"fabric\"), but this tenant's token is for {resource:?}; remove probe or the resource override"
                ),
            );
            return Err(Reported);
        }
        Ok(())
    }
}

/// The API a token for `resource` is for: Fabric for a cloud's Fabric resource (written as
/// `resource = "fabric"` or as its URI), else Power BI (another resource is the probe's
/// problem, [`Loader::probe_resource`]).
fn rest_api(resource: Option<&str>) -> RestApi {
    let is_fabric = resource.is_some_and(|resource| {
        Cloud::ALL
            .iter()
            .any(|cloud| cloud.fabric_resource() == Some(resource.trim_end_matches('/')))
    });
    if is_fabric {
        RestApi::Fabric
    } else {
        RestApi::PowerBi
    }
}

/// What `probe` may be, for the messages about a value it may not.
const PROBE_EXPECTED: &str =
    "expected true, false or { interval = \"15m\", path = \"/v1.0/myorg/groups?$top=1\" }";

/// A probe interval: a duration between [`PROBE_INTERVAL_MIN`] and [`PROBE_INTERVAL_MAX`].
fn probe_interval(text: &str) -> Option<Duration> {
    humantime::parse_duration(text)
        .ok()
        .filter(|interval| (PROBE_INTERVAL_MIN..=PROBE_INTERVAL_MAX).contains(interval))
}

/// A path and query under the API root: starts with `/`, printable ASCII, no scheme or host.
fn check_probe_path(path: &str) -> Result<(), String> {
    if !path.starts_with('/') || path.starts_with("//") {
        return Err(format!(
            "expected a path under the API root such as \"/v1.0/myorg/groups?$top=1\", got {path:?}"
        ));
    }
    if path.len() > PROBE_PATH_MAX {
        return Err(format!(
            "is {} bytes long; expected at most {PROBE_PATH_MAX}",
            path.len()
        ));
    }
    if !path.bytes().all(|b| b.is_ascii_graphic()) || path.contains('#') {
        return Err(format!(
            "expected printable ASCII without spaces or '#' (percent-encode them), got {path:?}"
        ));
    }
    Ok(())
}
