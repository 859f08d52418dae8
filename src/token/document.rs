//! An access token as the sinks store it: the json document (or the raw token), and reading it
//! back for a warm start.
//!
//! Every sink gets exactly the same bytes for a format, so a consumer can switch between a file
//! and Redis without changing its parser, and warm start applies the same identity checks to
//! both. The fleet shares the same document, with the replica that fetched it.

use secrecy::ExposeSecret;

use super::{AccessToken, ClaimedExpiry};
use crate::clock;
use crate::config::{FileFormat, TenantConfig};

/// The file contents, held as a secret because they contain the token.
pub fn render(
    format: FileFormat,
    tenant: &TenantConfig,
    token: &AccessToken,
) -> secrecy::SecretString {
    match format {
        FileFormat::Raw => token.secret.clone(),
        FileFormat::Json => {
            let mut text = json_text(&Document::new(tenant, token));
            text.push('\n');
            secrecy::SecretString::from(text)
        }
    }
}

/// The json document: the token and what it was asked for. Its fields are in alphabetical
/// order, the order the document has always had. Written straight from the borrowed values, no
/// tree of owned values in between: at a cold start of ten thousand tenants every allocation
/// per write counts. Callers hold it only as long as they need to serialise it; it contains the
/// token.
#[derive(serde::Serialize)]
pub(crate) struct Document<'a> {
    /// The token itself.
    access_token: &'a str,
    /// The generic OAuth2 `audience` asked for.
    audience: Option<&'a str>,
    /// The client ID (`null` for a system-assigned managed identity).
    client_id: Option<&'a str>,
    /// The expiry in RFC 3339.
    expires_at: String,
    /// The expiry in Unix seconds.
    expires_on: i64,
    /// When the token arrived, in Unix seconds.
    issued_on: i64,
    /// The fleet replica that fetched it (Redis fleet documents only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refreshed_by: Option<&'a str>,
    /// The resource asked for.
    resource: Option<&'a str>,
    /// The scope asked for.
    scope: Option<String>,
    /// The tenant's name in the configuration.
    tenant: &'a str,
    /// The directory (tenant) ID.
    tenant_id: Option<&'a str>,
    /// `Bearer`, as the server said.
    token_type: &'a str,
}

impl<'a> Document<'a> {
    /// The document for `token`, fetched for `tenant`.
    pub fn new(tenant: &'a TenantConfig, token: &'a AccessToken) -> Self {
        Document {
            access_token: token.secret.expose_secret(),
            audience: tenant.requested_audience(),
            client_id: tenant.client_id.as_deref(),
            // Always printable: a token's expiry is within a year of its arrival.
            expires_at: clock::rfc3339_unix(token.expires_on()).unwrap_or_default(),
            expires_on: token.expires_on(),
            issued_on: token.issued_on(),
            refreshed_by: None,
            resource: non_empty(&tenant.resource),
            scope: tenant.requested_scope(),
            tenant: &tenant.name,
            tenant_id: tenant.tenant_id.as_deref(),
            token_type: &token.token_type,
        }
    }
}

/// `document` as json text.
pub(crate) fn json_text(document: &Document<'_>) -> String {
    // Serialising borrowed strings and numbers into a String cannot fail: no map has non-string
    // keys and no value has a failing `Serialize`.
    serde_json::to_string(document).unwrap_or_default()
}

/// `null` for a value that is empty (a generic OAuth2 server's resource when it sends none).
fn non_empty(value: &str) -> Option<&str> {
    (!value.is_empty()).then_some(value)
}

/// The json fields warm start needs.
#[derive(serde::Deserialize)]
struct ExistingFile {
    access_token: secrecy::SecretString,
    token_type: Option<String>,
    expires_on: i64,
    issued_on: i64,
    tenant_id: Option<String>,
    client_id: Option<String>,
    resource: Option<String>,
    #[serde(default)]
    scope: RecordedScope,
    audience: Option<String>,
}

/// What a token file says about the scope its token was asked with.
#[derive(Default, serde::Deserialize)]
#[serde(from = "Option<String>")]
enum RecordedScope {
    /// No `scope` field: a file written before the scope was recorded.
    #[default]
    NotRecorded,
    /// The scope asked (`null`: none was).
    Asked(Option<String>),
}

/// A `scope` field that is present, `null` included.
impl From<Option<String>> for RecordedScope {
    fn from(scope: Option<String>) -> Self {
        RecordedScope::Asked(scope)
    }
}

/// The token in a json file written for the same request, with the same bounds as a fresh
/// response ([`AccessToken::new`]): a file is outside input too (an older version, a hand edit,
/// a token from a broken server), so an absurd `expires_on` is not adopted by warm start.
pub fn parse_existing(bytes: &[u8], tenant: &TenantConfig) -> Option<AccessToken> {
    let file: ExistingFile = serde_json::from_slice(bytes).ok()?;
    // Files written before `scope` was recorded name only the resource; for them the resource
    // says everything that was asked.
    let same_scope = match &file.scope {
        RecordedScope::NotRecorded => true,
        RecordedScope::Asked(asked) => *asked == tenant.requested_scope(),
    };
    // An id written as "" is read as none, as it always was: the daemon writes `null` for an id
    // that does not apply.
    let id = |written: Option<String>| written.filter(|id| !id.is_empty());
    let same = id(file.tenant_id) == tenant.tenant_id
        && id(file.client_id).as_deref() == tenant.client_id.as_deref()
        && file.resource.unwrap_or_default() == *tenant.resource
        && same_scope
        && file.audience.as_deref() == tenant.requested_audience();
    if !same {
        return None;
    }
    AccessToken::new(
        file.access_token,
        file.token_type.unwrap_or_else(|| "Bearer".to_owned()),
        clock::unix_to_system(file.issued_on),
        ClaimedExpiry::At(file.expires_on),
        None,
    )
    .ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::FileFormat;

    /// A Power BI tenant writing `/t/contoso.json`.
    fn contoso() -> TenantConfig {
        TenantConfig::entra(
            "contoso",
            "contoso.onmicrosoft.com",
            "app",
            crate::config::SecretSource::Env("S".into()),
            "https://login.microsoftonline.com",
            "/t/contoso.json".into(),
        )
    }

    /// A token that arrived at `issued` (Unix seconds).
    fn token_at(issued: i64, expiry: ClaimedExpiry) -> AccessToken {
        AccessToken::new(
            secrecy::SecretString::from("eyJ.x.y"),
            "Bearer".into(),
            clock::unix_to_system(issued),
            expiry,
            None,
        )
        .unwrap()
    }

    #[test]
    fn warm_start_needs_the_same_request() {
        let mut tenant = contoso();
        let token = token_at(1_000, ClaimedExpiry::At(4_600));
        let written = render(FileFormat::Json, &tenant, &token);
        let bytes = written.expose_secret().as_bytes().to_vec();
        assert!(parse_existing(&bytes, &tenant).is_some());
        // v1 asks no scope: the file's `"scope": null` is not the v2 scope.
        let mut v1 = tenant.clone();
        v1.api = crate::config::ApiVersion::V1;
        assert!(parse_existing(&bytes, &v1).is_none());
        let v1_bytes = render(FileFormat::Json, &v1, &token)
            .expose_secret()
            .as_bytes()
            .to_vec();
        assert!(parse_existing(&v1_bytes, &v1).is_some());
        assert!(parse_existing(&v1_bytes, &tenant).is_none());
        // A file from before `scope` was recorded still counts, by its resource alone.
        let mut old: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        old.as_object_mut().unwrap().remove("scope");
        old.as_object_mut().unwrap().remove("audience");
        let old = serde_json::to_vec(&old).unwrap();
        assert!(parse_existing(&old, &tenant).is_some());
        tenant.resource = "https://other.example".into();
        assert!(parse_existing(&old, &tenant).is_none());
    }

    #[test]
    fn hardening_absurd_times_in_a_file_are_not_adopted() {
        let tenant = contoso();
        let token = token_at(1_767_225_600, ClaimedExpiry::In(3600));
        let written = render(FileFormat::Json, &tenant, &token);
        let good: serde_json::Value = serde_json::from_str(written.expose_secret()).unwrap();
        assert_eq!(good["expires_at"], "2026-01-01T01:00:00Z");
        let adopted = parse_existing(written.expose_secret().as_bytes(), &tenant).unwrap();
        assert_eq!(adopted.expires_on(), 1_767_229_200);
        assert_eq!(
            adopted.lifetime().get(),
            std::time::Duration::from_secs(3600)
        );
        let with = |issued_on: i64, expires_on: i64| {
            let mut file = good.clone();
            file["issued_on"] = issued_on.into();
            file["expires_on"] = expires_on.into();
            serde_json::to_vec(&file).unwrap()
        };
        for (issued_on, expires_on) in [
            // Some 31,700 years, and the end of i64.
            (1_767_225_600, 1_767_225_600 + 1_000_000_000_000),
            (1_767_225_600, i64::MAX),
            // Expired before it was issued, and times before 1970.
            (1_767_225_600, 1_767_225_000),
            (i64::MIN, i64::MIN + 10),
            (i64::MIN, 1_767_229_200),
        ] {
            assert!(
                parse_existing(&with(issued_on, expires_on), &tenant).is_none(),
                "{issued_on} {expires_on}"
            );
        }
    }
}
