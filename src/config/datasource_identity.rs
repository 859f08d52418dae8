//! `datasource_identities` of a `[[tenant.embed]]`: the identities (OAuth tokens for the data
//! source, read from a secret source) that DirectQuery data sources with single sign-on are
//! queried as, and the data sources each applies to. Only the shape is checked here; the blob
//! is read when an embed token is made (`crate::powerbi::embed`).

use super::loader::Loader;
use super::raw::{RawDatasource, RawDatasourceIdentity};
use super::types::{DatasourceIdentity, DatasourceSelector};

/// Most datasource identities one embed token is made with: each blob is up to 10 KiB, and a
/// token that needs more single sign-on sources than this is not a case we know of.
const IDENTITIES_MAX: usize = 16;

/// Most data sources one identity names (GenerateToken's limit per kind of item).
const DATASOURCES_MAX: usize = 50;

/// The longest `datasource_type`: Power BI's names are short identifiers (`Sql`, `Extension`).
const TYPE_MAX: usize = 64;

/// The longest connection detail: server names, URLs and paths, never documents.
const DETAIL_MAX: usize = 1024;

/// The connection details a data source may name: the config key, and GenerateToken's name of
/// the `DatasourceConnectionDetails` field. The others (`account`, `domain`, `emailAddress`,
/// `kind`, `loginServer`, `classInfo`, `sharePointSiteUrl`) select data sources that take no
/// single sign-on identity from an embed token.
const DETAILS: [(&str, &str); 6] = [
    ("server", "server"),
    ("database", "database"),
    ("url", "url"),
    ("path", "path"),
    ("extension_data_source_kind", "extensionDataSourceKind"),
    ("extension_data_source_path", "extensionDataSourcePath"),
];

impl Loader<'_> {
    /// `datasource_identities`: each reads its blob from a secret source and names the data
    /// sources it applies to. `key` is the embed's (`tenant "x": embed "y"`).
    pub(super) fn embed_datasource_identities(
        &mut self,
        at: usize,
        key: &str,
        raw: &[RawDatasourceIdentity],
    ) -> Vec<DatasourceIdentity> {
        if raw.len() > IDENTITIES_MAX {
            self.problem(
                Some(at),
                format!("{key}.datasource_identities"),
                format!(
                    "has {} entries; expected at most {IDENTITIES_MAX}",
                    raw.len()
                ),
            );
        }
        let mut identities = Vec::new();
        for (index, identity) in raw.iter().enumerate() {
            let key = format!("{key}.datasource_identities[{index}]");
            if let Some(identity) = self.datasource_identity(at, &key, identity) {
                identities.push(identity);
            }
        }
        identities
    }

    /// One `datasource_identities` entry.
    fn datasource_identity(
        &mut self,
        at: usize,
        key: &str,
        raw: &RawDatasourceIdentity,
    ) -> Option<DatasourceIdentity> {
        let before = self.problems.len();
        let identity_blob = match &raw.identity_blob {
            Some(secret) => self.secret_source(secret, at, &format!("{key}.identity_blob")),
            None => {
                self.problem(
                    Some(at),
                    format!("{key}.identity_blob"),
                    "missing; expected where the blob (the data source's OAuth token) is read from: { file = \"/path\" }, { env = \"VAR\" }, { systemd = \"name\" } or { key_vault = \"https://…/secrets/…\" }".to_owned(),
                );
                None
            }
        };
        if raw.datasources.is_empty() || raw.datasources.len() > DATASOURCES_MAX {
            self.problem(
                Some(at),
                format!("{key}.datasources"),
                format!(
                    "expected 1 to {DATASOURCES_MAX} data sources such as {{ datasource_type = \"Sql\", server = \"contoso.database.windows.net\", database = \"sales\" }}"
                ),
            );
        }
        let datasources: Vec<DatasourceSelector> = raw
            .datasources
            .iter()
            .enumerate()
            .filter_map(|(index, datasource)| {
                self.datasource(at, &format!("{key}.datasources[{index}]"), datasource)
            })
            .collect();
        (self.problems.len() == before).then_some(DatasourceIdentity {
            identity_blob: identity_blob?,
            datasources,
        })
    }

    /// One data source: a type, and at least one connection detail.
    fn datasource(
        &mut self,
        at: usize,
        key: &str,
        raw: &RawDatasource,
    ) -> Option<DatasourceSelector> {
        let before = self.problems.len();
        let datasource_type = raw.datasource_type.clone().unwrap_or_default();
        if datasource_type.is_empty()
            || datasource_type.len() > TYPE_MAX
            || !datasource_type.bytes().all(|b| b.is_ascii_alphanumeric())
        {
            self.problem(
                Some(at),
                format!("{key}.datasource_type"),
                format!(
                    "expected the type Power BI reports for the data source, letters and digits such as \"Sql\", got {datasource_type:?}"
                ),
            );
        }
        let values = [
            &raw.server,
            &raw.database,
            &raw.url,
            &raw.path,
            &raw.extension_data_source_kind,
            &raw.extension_data_source_path,
        ];
        let mut connection_details = Vec::new();
        for ((field, wire), value) in DETAILS.into_iter().zip(values) {
            let Some(value) = value else { continue };
            match check_detail(field, value) {
                Ok(()) => connection_details.push((wire, value.clone())),
                Err(message) => self.problem(Some(at), format!("{key}.{field}"), message),
            }
        }
        if connection_details.is_empty() && self.problems.len() == before {
            self.problem(
                Some(at),
                key.to_owned(),
                "names no connection detail; expected server and database, url, path or extension_data_source_kind and extension_data_source_path, as Power BI's Get Datasources reports them".to_owned(),
            );
        }
        (self.problems.len() == before).then_some(DatasourceSelector {
            datasource_type,
            connection_details,
        })
    }
}

/// A connection detail: 1 to [`DETAIL_MAX`] characters without control characters; a `url` is
/// an `http://` or `https://` URL.
fn check_detail(field: &str, value: &str) -> Result<(), String> {
    if value.is_empty() || value.chars().count() > DETAIL_MAX || value.chars().any(char::is_control)
    {
        return Err(format!(
            "expected 1 to {DETAIL_MAX} characters without control characters, as Power BI reports the data source's {field}"
        ));
    }
    if field == "url" && !(value.starts_with("https://") || value.starts_with("http://")) {
        return Err(format!(
            "expected an http:// or https:// URL, got {value:?}"
        ));
    }
    Ok(())
}
