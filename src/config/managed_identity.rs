//! `credential = "managed_identity"` and `managed_identity = …`: which of the host's identities a
//! tenant uses. The choice is explicit because the Entra app's `client_id` (often set in
//! `[defaults]` for every tenant) is not a managed identity: sent to IMDS, it names a
//! user-assigned identity that does not exist, and the request fails.

use toml::Spanned;

use super::loader::{Loader, TenantInput, inherited};
use super::types::{
    CredentialConfig, ManagedIdentityConfig, ManagedIdentityId, ManagedIdentitySource, Provider,
    SecretSource,
};
use super::values::is_guid;

/// What `managed_identity` accepts, for messages.
const EXPECTED: &str = "expected managed_identity = \"system\", { client_id = \"<guid>\" }, { object_id = \"<guid>\" } or { resource_id = \"/subscriptions/…/providers/Microsoft.ManagedIdentity/userAssignedIdentities/…\" }";

impl Loader<'_> {
    /// The managed identity credential: App Service when its environment is present, else IMDS;
    /// the identity from `managed_identity` (system-assigned when absent and unambiguous).
    pub(super) fn managed_identity(
        &mut self,
        kind_offset: usize,
        input: &TenantInput<'_>,
    ) -> Option<CredentialConfig> {
        let identity = match inherited!(input, managed_identity) {
            Some(value) => self.managed_identity_id(value, input)?,
            None => self.implicit_managed_identity(kind_offset, input)?,
        };
        let app_service =
            (self.env)("IDENTITY_ENDPOINT").filter(|_| (self.env)("IDENTITY_HEADER").is_some());
        let source = match app_service {
            Some(endpoint) => ManagedIdentitySource::AppService {
                endpoint,
                header: SecretSource::Env("IDENTITY_HEADER".to_owned()),
            },
            None => ManagedIdentitySource::Imds,
        };
        Some(CredentialConfig::ManagedIdentity(ManagedIdentityConfig {
            source,
            identity,
        }))
    }

    /// No `managed_identity` key: the system-assigned identity, unless a `client_id` is in
    /// sight, which earlier versions sent as a user-assigned identity. Guessing either way
    /// would pick the wrong identity for someone, so the tenant must say which it means.
    fn implicit_managed_identity(
        &mut self,
        kind_offset: usize,
        input: &TenantInput<'_>,
    ) -> Option<ManagedIdentityId> {
        if input.provider() == Provider::Oauth2 {
            // Not an Entra tenant at all: the OAuth2 rules say so.
            return Some(ManagedIdentityId::System);
        }
        let (at, whose) = match (&input.raw.client_id, &input.defaults.client_id) {
            (Some(own), _) => (own.span().start, "this tenant's client_id"),
            (None, Some(_)) => (kind_offset, "the client_id in [defaults]"),
            (None, None) => return Some(ManagedIdentityId::System),
        };
        self.problem(
            Some(at),
            input.key("managed_identity"),
            format!(
                "missing: {whose} no longer selects the managed identity; say which identity to use: managed_identity = \"system\" for the system-assigned one, or managed_identity = {{ client_id = \"…\" }} for a user-assigned one (object_id and resource_id work too)"
            ),
        );
        None
    }

    /// `"system"` or a table with exactly one of `client_id`, `object_id`, `resource_id`.
    fn managed_identity_id(
        &mut self,
        value: &Spanned<toml::Value>,
        input: &TenantInput<'_>,
    ) -> Option<ManagedIdentityId> {
        match parse_managed_identity(value.get_ref()) {
            Ok(identity) => Some(identity),
            Err(message) => {
                self.problem(
                    Some(value.span().start),
                    input.key("managed_identity"),
                    message,
                );
                None
            }
        }
    }
}

/// Parses a `managed_identity` value.
fn parse_managed_identity(value: &toml::Value) -> Result<ManagedIdentityId, String> {
    let table = match value {
        toml::Value::String(text) if text == "system" => return Ok(ManagedIdentityId::System),
        toml::Value::Table(table) => table,
        toml::Value::String(text) => return Err(format!("{EXPECTED}, got {text:?}")),
        other => return Err(format!("{EXPECTED}, got a {}", other.type_str())),
    };
    let mut entries = table.iter();
    let (Some((key, value)), None) = (entries.next(), entries.next()) else {
        return Err(format!(
            "{EXPECTED}: give exactly one of client_id, object_id or resource_id"
        ));
    };
    let Some(text) = value.as_str().map(str::trim) else {
        return Err(format!(
            "{key}: expected a string, got a {}",
            value.type_str()
        ));
    };
    match key.as_str() {
        "client_id" | "object_id" if !is_guid(text) => Err(format!(
            "{key}: expected a GUID such as 00000000-0000-0000-0000-000000000000, got {text:?}"
        )),
        "client_id" => Ok(ManagedIdentityId::ClientId(text.to_owned())),
        "object_id" => Ok(ManagedIdentityId::ObjectId(text.to_owned())),
        "resource_id" if !is_identity_resource_id(text) => Err(format!(
            "resource_id: expected /subscriptions/<id>/resourceGroups/<group>/providers/Microsoft.ManagedIdentity/userAssignedIdentities/<name>, got {text:?}"
        )),
        "resource_id" => Ok(ManagedIdentityId::ResourceId(text.to_owned())),
        other => Err(format!("unknown key {other:?}; {EXPECTED}")),
    }
}

/// The shape of a user-assigned identity's Azure resource ID (compared case-insensitively, as
/// Azure compares resource IDs).
fn is_identity_resource_id(text: &str) -> bool {
    let lower = text.to_ascii_lowercase();
    lower.starts_with("/subscriptions/")
        && lower.contains("/resourcegroups/")
        && lower.contains("/providers/microsoft.managedidentity/userassignedidentities/")
        && !lower.ends_with('/')
        && !text.contains(char::is_whitespace)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ManagedIdentityId, String> {
        let table: toml::Table = toml::from_str(&format!("v = {text}")).unwrap();
        parse_managed_identity(&table["v"])
    }

    #[test]
    fn selectors() {
        let guid = "33333333-3333-3333-3333-333333333333";
        let resource = "/subscriptions/5a1e0c3d-7b2f-4e6a-9d8c-1f0e2d3c4b5a/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/tokend";
        assert_eq!(parse("\"system\""), Ok(ManagedIdentityId::System));
        assert_eq!(
            parse(&format!("{{ client_id = \"{guid}\" }}")),
            Ok(ManagedIdentityId::ClientId(guid.into()))
        );
        assert_eq!(
            parse(&format!("{{ object_id = \"{guid}\" }}")),
            Ok(ManagedIdentityId::ObjectId(guid.into()))
        );
        assert_eq!(
            parse(&format!("{{ resource_id = \"{resource}\" }}")),
            Ok(ManagedIdentityId::ResourceId(resource.into()))
        );
        for (bad, says) in [
            ("\"user\"", "expected managed_identity = \"system\""),
            ("3", "got a integer"),
            ("{}", "exactly one of"),
            (
                &format!("{{ client_id = \"{guid}\", object_id = \"{guid}\" }}"),
                "exactly one of",
            ),
            ("{ client_id = \"not-a-guid\" }", "expected a GUID"),
            (
                "{ resource_id = \"/subscriptions/x\" }",
                "resource_id: expected",
            ),
            ("{ principal = \"x\" }", "unknown key \"principal\""),
        ] {
            let err = parse(bad).unwrap_err();
            assert!(err.contains(says), "{bad}: {err}");
        }
    }
}
