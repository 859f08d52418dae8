//! `provider = "oauth2"`: any OAuth 2.0 server with the client-credentials grant.

use toml::Spanned;

use super::loader::Loader;
use super::tenant::TenantInput;
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
                self.problem(
                    Some(offset),
                    input.key("token_url"),
                    "missing; provider = \"oauth2\" needs the server's token endpoint".to_owned(),
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
        Some(OAuth2Config {
            token_url: token_url?,
            scope: text(raw.scope.as_ref().or(defaults.scope.as_ref())),
            audience: text(raw.audience.as_ref().or(defaults.audience.as_ref())),
            auth: raw.auth.or(defaults.auth).unwrap_or_default(),
        })
    }
}
