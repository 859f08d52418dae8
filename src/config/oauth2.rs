//! `provider = "oauth2"`: any OAuth 2.0 server with the client-credentials grant.

use toml::Spanned;

use super::loader::{Loader, Reported, TenantInput, inherited};
use super::raw::RawResource;
use super::types::{CredentialConfig, OAuth2Config};
use super::values::check_url;

impl Loader<'_> {
    /// `provider = "oauth2"`: the token endpoint and what to ask for.
    pub(super) fn oauth2(
        &mut self,
        input: &TenantInput<'_>,
        credential: &Option<CredentialConfig>,
    ) -> Option<OAuth2Config> {
        let (raw, defaults, offset) = (input.raw, input.defaults, input.offset);
        let token_url = match raw.token_url.as_ref().or(defaults.token_url.as_ref()) {
            None => {
                self.missing(
                    input,
                    &["token_url"],
                    "missing; provider = \"oauth2\" needs the server's token endpoint",
                );
                None
            }
            Some(url) => match check_url(url.get_ref(), true) {
                Ok(url) => Some(url),
                Err(message) => {
                    self.problem(Some(url.span().start), input.key("token_url"), message);
                    None
                }
            },
        };
        if let Some(credential) = credential
            && !matches!(credential, CredentialConfig::ClientSecret { .. })
        {
            self.problem(
                Some(offset),
                input.key("credential"),
                format!(
                    "provider = \"oauth2\" authenticates with client_secret; {} is for Entra ID",
                    credential.kind()
                ),
            );
        }
        let text = |value: Option<&Spanned<String>>| {
            value
                .map(|v| v.get_ref().trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        let resource = self.resource_indicator(input);
        Some(OAuth2Config {
            token_url: token_url?,
            scope: text(raw.scope.as_ref().or(defaults.scope.as_ref())),
            audience: text(raw.audience.as_ref().or(defaults.audience.as_ref())),
            resource: resource.ok()?,
            auth: inherited!(input, auth).map_or_else(Default::default, |a| *a.get_ref()),
        })
    }

    /// `resource`: one RFC 8707 resource indicator, an absolute URI without a fragment (§2), or
    /// none (`Ok(None)`). Only the tenant's own: in `[defaults]`, `resource` is the Entra
    /// tenants' App ID URI, which a third-party server must not be sent.
    ///
    /// One only: RFC 8707 lets a server refuse several, and conforming servers do for client
    /// credentials (oidc-provider: `invalid_target`, "only a single resource indicator value is
    /// supported for this grant type"), so a list could only ever fail at the server, attempt
    /// after attempt. It is refused here, where the line is known.
    fn resource_indicator(&mut self, input: &TenantInput<'_>) -> Result<Option<String>, Reported> {
        let Some(resource) = input.raw.resource.as_ref() else {
            return Ok(None);
        };
        let message = match resource.get_ref() {
            RawResource::One(one) if is_resource_indicator(one.trim()) => {
                return Ok(Some(one.trim().to_owned()));
            }
            RawResource::One(one) => format!(
                "expected one absolute URI without a fragment (RFC 8707) such as \"https://api.partner.example\"; got {one:?}"
            ),
            RawResource::Many(many) => format!(
                "expected one absolute URI (RFC 8707) such as \"https://api.partner.example\", not a list (of {}): OAuth2 servers refuse several resource indicators in a client-credentials request (invalid_target)",
                many.len()
            ),
        };
        self.problem(Some(resource.span().start), input.key("resource"), message);
        Err(Reported)
    }
}

/// An absolute URI (a scheme, then `:`, then something) with no fragment and no whitespace.
fn is_resource_indicator(value: &str) -> bool {
    let Some((scheme, rest)) = value.split_once(':') else {
        return false;
    };
    let scheme_ok = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    scheme_ok && !rest.is_empty() && !value.contains('#') && !value.contains(char::is_whitespace)
}

#[cfg(test)]
mod tests {
    use super::is_resource_indicator;

    #[test]
    fn resource_indicators_are_absolute_uris_without_fragments() {
        assert!(is_resource_indicator("https://api.partner.example"));
        assert!(is_resource_indicator("urn:partner:reports"));
        assert!(!is_resource_indicator("reports.read"));
        assert!(!is_resource_indicator("https://api.partner.example/#x"));
        assert!(!is_resource_indicator("https://a b"));
        assert!(!is_resource_indicator("1http://x"));
    }
}
