//! Workload identity federation (reference §4): an external token (a Kubernetes service account
//! token, a GitHub OIDC token, a managed identity token) accepted in place of a secret when it
//! matches one of the app's federated identity credentials.

use serde_json::Value;

use super::jwt::{DecodedJwt, check_assertion_lifetime};
use super::token_request::Rejection;

/// A federated identity credential (FIC) on an app registration: Entra accepts, instead of a
/// secret, a token from `issuer` about `subject` for `audience` (reference §4).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimFederatedCredential {
    /// The external token's `iss`, compared exactly (a trailing slash matters), e.g. an AKS
    /// cluster's OIDC issuer URL.
    pub issuer: String,
    /// The external token's `sub`, compared exactly and case-sensitively, e.g.
    /// `system:serviceaccount:powerbi:tokend`.
    pub subject: String,
    /// A value the external token's `aud` (a string or an array) must contain, e.g.
    /// `api://AzureADTokenExchange`.
    pub audience: String,
}

/// A token from an external issuer, matched against the app's federated credentials. Its
/// signature is not checked: the simulator has no signing keys of external issuers
/// (Kubernetes clusters, GitHub), so a test can present any well-formed token.
pub(super) fn verify_federated_assertion(
    jwt: &DecodedJwt<'_>,
    federated: &[SimFederatedCredential],
    now: i64,
) -> Result<(), Rejection> {
    check_assertion_lifetime(&jwt.claims, now)?;
    let issuer = jwt.claim_str("iss");
    let subject = jwt.claim_str("sub");
    let has_audience = |wanted: &str| match jwt.claims.get("aud") {
        Some(Value::String(audience)) => audience == wanted,
        Some(Value::Array(audiences)) => audiences.iter().any(|audience| audience == wanted),
        _ => false,
    };
    let matched = federated.iter().any(|fic| {
        issuer == Some(fic.issuer.as_str())
            && subject == Some(fic.subject.as_str())
            && has_audience(&fic.audience)
    });
    if matched {
        Ok(())
    } else {
        Err(Rejection::new(70021))
    }
}

#[cfg(test)]
mod tests {
    use super::super::managed_identity::managed_identity_object_id;
    use super::super::test_support::*;
    use super::super::wire::{random_base64url, unix_now};
    use super::*;
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    const AKS_ISSUER: &str =
        "https://oidc.prod-aks.azure.com/1b2c3d4e-0000-4000-8000-5f6a7b8c9d0e/";
    const AKS_SUBJECT: &str = "system:serviceaccount:powerbi:tokend";
    const TOKEN_EXCHANGE: &str = "api://AzureADTokenExchange";

    /// A token from an external issuer, with a signature of random bytes.
    fn federated_token(issuer: &str, subject: &str, audience: Value, expires: i64) -> String {
        let header = serde_json::json!({ "alg": "RS256", "kid": "cluster-key-1" });
        let claims = serde_json::json!({
            "iss": issuer,
            "sub": subject,
            "aud": audience,
            "exp": expires,
            "iat": unix_now(),
            "nbf": unix_now(),
        });
        format!(
            "{}.{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string()),
            random_base64url(256)
        )
    }

    #[tokio::test]
    async fn federated_token_must_match_a_federated_credential() {
        let Fixture { sim, http } = fixture().await;
        sim.add_federated_credential(
            TENANT,
            APP,
            SimFederatedCredential {
                issuer: AKS_ISSUER.to_owned(),
                subject: AKS_SUBJECT.to_owned(),
                audience: TOKEN_EXCHANGE.to_owned(),
            },
        );
        let url = v2_url(&sim, TENANT);
        let later = unix_now() + 3600;

        let token = federated_token(
            AKS_ISSUER,
            AKS_SUBJECT,
            serde_json::json!([TOKEN_EXCHANGE]),
            later,
        );
        let answer = post_assertion(&http, &url, &token).await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        let recorded = sim.last_assertion(TENANT).expect("assertion recorded");
        assert_eq!(recorded.claims["sub"], AKS_SUBJECT);
        assert_eq!(recorded.header["kid"], "cluster-key-1");
        let token = federated_token(AKS_ISSUER, AKS_SUBJECT, Value::from(TOKEN_EXCHANGE), later);
        assert_eq!(post_assertion(&http, &url, &token).await.status, 200);

        let mismatches = [
            federated_token(
                AKS_ISSUER,
                &AKS_SUBJECT.to_ascii_uppercase(),
                Value::from(TOKEN_EXCHANGE),
                later,
            ),
            federated_token(
                AKS_ISSUER.trim_end_matches('/'),
                AKS_SUBJECT,
                Value::from(TOKEN_EXCHANGE),
                later,
            ),
            federated_token(
                AKS_ISSUER,
                AKS_SUBJECT,
                serde_json::json!(["api://other"]),
                later,
            ),
        ];
        for token in &mismatches {
            let answer = post_assertion(&http, &url, token).await;
            assert_entra_error(&answer, 400, "invalid_request", 70021);
        }

        let stale = federated_token(
            AKS_ISSUER,
            AKS_SUBJECT,
            Value::from(TOKEN_EXCHANGE),
            unix_now() - 3600,
        );
        let answer = post_assertion(&http, &url, &stale).await;
        assert_entra_error(&answer, 401, "invalid_client", 700024);

        sim.remove_federated_credentials(TENANT, APP);
        let token = federated_token(AKS_ISSUER, AKS_SUBJECT, Value::from(TOKEN_EXCHANGE), later);
        let answer = post_assertion(&http, &url, &token).await;
        assert_entra_error(&answer, 400, "invalid_request", 70021);
        assert_eq!(sim.issued_count(TENANT), 2);
    }

    #[tokio::test]
    async fn managed_identity_token_works_as_a_federated_credential() {
        let Fixture { sim, http } = fixture().await;
        sim.set_managed_identity(host_identity());
        let query = [
            ("api-version", "2019-08-01"),
            ("resource", TOKEN_EXCHANGE),
            ("client_id", USER_ASSIGNED),
        ];
        let body = imds_get(&http, &sim, &query).await.json();
        let mi_token = body["access_token"].as_str().expect("token").to_owned();
        let claims = decode_claims(&mi_token);
        assert_eq!(claims["aud"], TOKEN_EXCHANGE);
        assert_eq!(claims["appid"], USER_ASSIGNED);
        assert_eq!(claims["sub"], managed_identity_object_id(USER_ASSIGNED));
        sim.add_federated_credential(
            TENANT,
            APP,
            SimFederatedCredential {
                issuer: claims["iss"].as_str().expect("iss").to_owned(),
                subject: claims["sub"].as_str().expect("sub").to_owned(),
                audience: TOKEN_EXCHANGE.to_owned(),
            },
        );
        let answer = post_assertion(&http, &v2_url(&sim, TENANT), &mi_token).await;
        assert_eq!(answer.status, 200, "{}", answer.body);

        // The same identity, selected by object id, has the same subject.
        let object_id = managed_identity_object_id(USER_ASSIGNED);
        let query = [
            ("api-version", "2018-02-01"),
            ("resource", TOKEN_EXCHANGE),
            ("object_id", object_id.as_str()),
        ];
        let again = imds_get(&http, &sim, &query).await.json();
        assert_eq!(again["client_id"], USER_ASSIGNED);
    }
}
