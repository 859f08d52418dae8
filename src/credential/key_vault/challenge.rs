//! Key Vault's 401 challenge: `WWW-Authenticate: Bearer
//! authorization="https://login.microsoftonline.com/<tenant>", resource="https://vault.azure.net"`
//! (newer vaults may send `authorization_uri=` and `scope=…/.default`), which says where a token
//! the vault accepts comes from (reference §10).
//!
//! Only two things are taken from it, each bounded and checked before use:
//! * the resource, when it is the Key Vault resource of a known cloud and, for a vault under a
//!   known cloud's vault domain (`*.vault.azure.cn`), that cloud's (as the Azure SDKs verify
//!   the challenge's resource against the vault's domain): a token is never asked for anything
//!   else, so a hostile answer cannot make the identity send a token elsewhere;
//! * the tenant, the first path segment of the authority, when it is a GUID (Key Vault names
//!   tenants by id).
//!
//! The authority's host is never followed: the identity asks its own configured authority (or
//! its managed identity endpoint), so a challenge cannot send a federated token to another
//! server.

use crate::cloud::Cloud;
use crate::config::is_guid;

/// A longer header is not a Key Vault challenge, and is not read.
const MAX_HEADER_BYTES: usize = 4096;

/// What a challenge asks for, as far as it may be followed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct Challenge {
    /// The Key Vault resource of a known cloud, allowed for this vault.
    pub(super) resource: Option<&'static str>,
    /// The tenant (a GUID, lower case).
    pub(super) tenant: Option<String>,
}

/// Reads the `WWW-Authenticate` header of a 401 from `vault` (its scheme and host). Anything
/// that is not a Bearer challenge, or a part of one that may not be followed, is left out.
pub(super) fn parse(header: &str, vault: &str) -> Challenge {
    let bounded = Some(header).filter(|header| header.len() <= MAX_HEADER_BYTES);
    let Some(rest) = bounded.and_then(|header| header.trim().strip_prefix("Bearer")) else {
        return Challenge::default();
    };
    let mut challenge = Challenge::default();
    for part in rest.split(',') {
        let Some((key, value)) = part.trim().split_once('=') else {
            continue;
        };
        let value = value.trim().trim_matches('"');
        match key.trim() {
            "resource" | "scope" => {
                challenge.resource = challenge.resource.or_else(|| resource(value, vault));
            }
            "authorization" | "authorization_uri" => {
                challenge.tenant = challenge.tenant.or_else(|| tenant(value));
            }
            _ => {}
        }
    }
    challenge
}

/// `https://vault.azure.net` (or `…/.default`) as the `&'static` resource of a known cloud,
/// when `vault` may be given a token for it.
fn resource(value: &str, vault: &str) -> Option<&'static str> {
    let value = value.trim_end_matches("/.default").trim_end_matches('/');
    let resource = Cloud::ALL
        .iter()
        .map(|cloud| cloud.key_vault_resource())
        .find(|known| known.eq_ignore_ascii_case(value))?;
    let host = host_of(vault).to_ascii_lowercase();
    let under_a_cloud = Cloud::ALL
        .iter()
        .map(|cloud| host_of(cloud.key_vault_resource()))
        .find(|domain| host.ends_with(&format!(".{domain}")));
    match under_a_cloud {
        Some(domain) if domain != host_of(resource) => None,
        // Private endpoints, custom domains and loopback: any cloud's vault resource.
        _ => Some(resource),
    }
}

/// The tenant of an authority URL (`https://login.microsoftonline.com/<tenant>[/…]`), if it is
/// a GUID.
fn tenant(authority: &str) -> Option<String> {
    let after_scheme = authority
        .split_once("://")
        .map_or(authority, |(_, rest)| rest);
    let tenant = after_scheme.split('/').nth(1)?;
    is_guid(tenant).then(|| tenant.to_ascii_lowercase())
}

/// The host of a URL, without scheme, port or path.
fn host_of(url: &str) -> &str {
    let after_scheme = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = after_scheme.split('/').next().unwrap_or_default();
    authority.split(':').next().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";

    #[test]
    fn the_resource_and_tenant_of_a_key_vault_challenge() {
        assert_eq!(
            parse(
                &format!(
                    r#"Bearer authorization="https://login.microsoftonline.com/{TENANT}", resource="https://vault.azure.net""#
                ),
                "https://kv1.vault.azure.net"
            ),
            Challenge {
                resource: Some("https://vault.azure.net"),
                tenant: Some(TENANT.to_owned()),
            }
        );
        let upper = TENANT.to_ascii_uppercase();
        assert_eq!(
            parse(
                &format!(
                    r#"Bearer authorization_uri="https://login.microsoftonline.us/{upper}/oauth2/authorize", scope="https://vault.usgovcloudapi.net/.default""#
                ),
                "https://kv1.vault.usgovcloudapi.net"
            ),
            Challenge {
                resource: Some("https://vault.usgovcloudapi.net"),
                tenant: Some(TENANT.to_owned()),
            }
        );
    }

    #[test]
    fn only_what_may_be_followed_is_taken() {
        // Not a Key Vault resource; a tenant that is not a GUID; not Bearer.
        assert_eq!(
            parse(
                r#"Bearer authorization="https://login.microsoftonline.com/contoso.com", resource="https://evil.example""#,
                "https://kv1.vault.azure.net"
            ),
            Challenge::default()
        );
        assert_eq!(
            parse("Basic realm=x", "https://kv1.vault.azure.net"),
            Challenge::default()
        );
        // A public vault never gets a token for the China cloud's resource; a private endpoint
        // or a loopback vault may follow any cloud's.
        assert_eq!(
            parse(
                r#"Bearer resource="https://vault.azure.cn""#,
                "https://kv1.vault.azure.net"
            )
            .resource,
            None
        );
        for vault in [
            "https://kv1.privatelink.vaultcore.azure.net",
            "http://127.0.0.1:8200",
            "https://kv1.vault.azure.cn",
        ] {
            assert_eq!(
                parse(r#"Bearer resource="https://vault.azure.cn""#, vault).resource,
                Some("https://vault.azure.cn"),
                "{vault}"
            );
        }
        // A header of hostile length is not read at all.
        let long = format!(
            r#"Bearer resource="https://vault.azure.net", x="{}""#,
            "a".repeat(MAX_HEADER_BYTES)
        );
        assert_eq!(
            parse(&long, "https://kv1.vault.azure.net"),
            Challenge::default()
        );
    }
}
