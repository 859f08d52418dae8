//! What a successful token request gets: the v2 body (numbers as numbers), the v1 body (numbers
//! as strings, plus `expires_on`, `not_before`, `resource`), and a JWT-shaped access token that
//! is unique per issue. The managed identity endpoints mint their tokens with the same helpers.
//!
//! Every token is signed with the simulator's own HMAC key ([`sign`], [`verify`]), so the
//! simulated Power BI API can tell the tokens this simulator issued from forged or foreign ones,
//! as the real API checks Entra's signature.

use std::time::{SystemTime, UNIX_EPOCH};

use aws_lc_rs::{constant_time, hmac};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Serialize;
use serde_json::Value;

use super::ApiVersion;
use super::token_request::{Grant, Incoming, echo_request_id};
use super::wire::{json_headers, random_base64url, random_guid};

/// Entra backdates `nbf`/`not_before` by five minutes to absorb clock skew (compare the v1
/// example in the reference: `expires_on - not_before = expires_in + 300`).
pub(super) const NOT_BEFORE_BACKDATE_SECS: u64 = 300;

/// v2 success body: numbers as JSON numbers.
#[derive(Serialize)]
struct V2Token {
    token_type: &'static str,
    expires_in: u64,
    ext_expires_in: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    refresh_in: Option<u64>,
    access_token: String,
}

/// v1 success body: numbers as JSON strings.
#[derive(Serialize)]
struct V1Token {
    token_type: &'static str,
    expires_in: String,
    ext_expires_in: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    refresh_in: Option<String>,
    expires_on: String,
    not_before: String,
    resource: String,
    access_token: String,
}

pub(super) fn success_response(
    key: &hmac::Key,
    incoming: &Incoming,
    grant: &Grant,
    serial: u64,
) -> Response {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs());
    let lifetime = grant.lifetime.as_secs();
    let refresh_in = grant.refresh_in.map(|refresh| refresh.as_secs());
    let not_before = now.saturating_sub(NOT_BEFORE_BACKDATE_SECS);
    let expires_on = now + lifetime;
    let claims = app_token_claims(&incoming.tenant, grant, not_before, expires_on, serial);
    let access_token = jwt_shaped(key, &claims);
    // Serialising a struct of strings and integers cannot fail.
    let body = match incoming.version {
        ApiVersion::V2 => serde_json::to_vec(&V2Token {
            token_type: "Bearer",
            expires_in: lifetime,
            ext_expires_in: lifetime,
            refresh_in,
            access_token,
        }),
        ApiVersion::V1 => serde_json::to_vec(&V1Token {
            token_type: "Bearer",
            expires_in: lifetime.to_string(),
            ext_expires_in: lifetime.to_string(),
            refresh_in: refresh_in.map(|refresh| refresh.to_string()),
            expires_on: expires_on.to_string(),
            not_before: not_before.to_string(),
            resource: grant.resource.clone(),
            access_token,
        }),
    }
    .unwrap_or_default();
    let mut headers = json_headers();
    echo_request_id(&mut headers, incoming);
    (StatusCode::OK, headers, body).into_response()
}

/// The claims of a real app-only Power BI token; signed, they make a token about 1.3 KB long.
/// `uti` carries the issue serial so no two tokens are equal.
fn app_token_claims(
    tenant: &str,
    grant: &Grant,
    not_before: u64,
    expires_on: u64,
    serial: u64,
) -> Value {
    let issuer = format!("https://sts.windows.net/{tenant}/");
    let object_id = random_guid();
    serde_json::json!({
        "aud": grant.resource,
        "iss": issuer,
        "iat": not_before,
        "nbf": not_before,
        "exp": expires_on,
        "aio": random_base64url(72),
        "appid": grant.client_id,
        "appidacr": "1",
        "idp": issuer,
        "idtyp": "app",
        "oid": object_id,
        "rh": format!("0.{}.", random_base64url(60)),
        "sub": object_id,
        "tid": tenant,
        "uti": unique_token_id(serial),
        "ver": "1.0",
        "xms_idrel": "7 18",
        "xms_tcdt": 1_600_000_000_u64,
        "xms_rd": random_base64url(90),
    })
}

/// The `uti` claim: the issue serial plus random bytes, so no two tokens are equal.
pub(super) fn unique_token_id(serial: u64) -> String {
    let mut uti = [0u8; 16];
    uti[..8].copy_from_slice(&serial.to_be_bytes());
    fastrand::fill(&mut uti[8..]);
    URL_SAFE_NO_PAD.encode(uti)
}

/// Length of the signature part, in bytes: that of Entra's RS256 signatures (RSA-2048), so a
/// simulated token is as long as a real one and size-sensitive code (sinks, Redis values, the
/// benchmarks) pays what it pays in production.
const SIGNATURE_LEN: usize = 256;

/// A JWT with Entra's header, these claims, and the simulator's signature ([`sign`]).
///
/// The header still says `RS256` with a key id: a client must treat an access token as opaque,
/// so it should see what production sends; only the simulator itself checks the signature.
pub(super) fn jwt_shaped(key: &hmac::Key, payload: &Value) -> String {
    const HEADER: &str = r#"{"typ":"JWT","alg":"RS256","x5t":"c2ltdWxhdGVkLWVudHJhLWtleQ","kid":"c2ltdWxhdGVkLWVudHJhLWtleQ"}"#;
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(HEADER),
        URL_SAFE_NO_PAD.encode(payload.to_string())
    );
    let signature = sign(key, &signing_input);
    format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(signature))
}

/// The signature of `header.payload`: HMAC-SHA256 under the simulator's key, followed by seven
/// more HMAC blocks, each the MAC of the block before, to fill [`SIGNATURE_LEN`] bytes.
///
/// The filler is derived rather than random so that every byte of a token is covered: a token
/// changed anywhere, its signature's tail included, no longer verifies, and a test that forges
/// one cannot pass by accident.
fn sign(key: &hmac::Key, signing_input: &str) -> [u8; SIGNATURE_LEN] {
    let mut signature = [0u8; SIGNATURE_LEN];
    let mut block = hmac::sign(key, signing_input.as_bytes());
    for chunk in signature.chunks_mut(block.as_ref().len()) {
        chunk.copy_from_slice(&block.as_ref()[..chunk.len()]);
        block = hmac::sign(key, block.as_ref());
    }
    signature
}

/// The claims of `token` if this simulator (this key) signed it: three base64url parts, a
/// signature that matches, claims that are a JSON object. `None` for anything else, however
/// malformed; nothing here can panic on input.
pub(super) fn verify(key: &hmac::Key, token: &str) -> Option<Value> {
    let mut parts = token.split('.');
    let (header, payload, signature) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let signature = URL_SAFE_NO_PAD.decode(signature).ok()?;
    // `header.payload` is the token up to its second `.`, an ASCII byte, so the slice ends
    // inside the token and on a character boundary.
    let expected = sign(key, &token[..header.len() + 1 + payload.len()]);
    constant_time::verify_slices_are_equal(&signature, &expected).ok()?;
    let claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()?;
    claims.is_object().then_some(claims)
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::super::wire::JSON_CONTENT_TYPE;
    use super::super::{ApiVersion, SimApp, SimTenant};
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn v2_success_has_numeric_fields_and_a_jwt_shaped_token() {
        let Fixture { sim, http } = fixture().await;
        let answer = post(&http, &v2_url(&sim, TENANT), &v2_form()).await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        assert_eq!(answer.header("content-type"), Some(JSON_CONTENT_TYPE));
        let body = answer.json();
        assert_eq!(body["token_type"], "Bearer");
        assert_eq!(body["expires_in"], serde_json::json!(3599));
        assert_eq!(body["ext_expires_in"], serde_json::json!(3599));
        for absent in [
            "refresh_in",
            "expires_on",
            "not_before",
            "resource",
            "refresh_token",
        ] {
            assert!(body.get(absent).is_none(), "{absent} must not appear in v2");
        }
        let token = body["access_token"].as_str().expect("token");
        assert!((1000..2500).contains(&token.len()), "{}", token.len());
        let claims = decode_claims(token);
        assert_eq!(claims["aud"], POWER_BI);
        assert_eq!(claims["tid"], TENANT);
        assert_eq!(claims["appid"], APP);
        assert_eq!(claims["iss"], format!("https://sts.windows.net/{TENANT}/"));
        let exp = claims["exp"].as_u64().expect("exp");
        let nbf = claims["nbf"].as_u64().expect("nbf");
        assert_eq!(exp - nbf, 3599 + NOT_BEFORE_BACKDATE_SECS);
        assert_eq!(claims["iat"], claims["nbf"]);
        assert!(claims["uti"].is_string());
        assert_eq!(sim.issued_count(TENANT), 1);
    }

    #[tokio::test]
    async fn v1_success_sends_numbers_as_strings() {
        let Fixture { sim, http } = fixture().await;
        let answer = post(&http, &v1_url(&sim, TENANT), &v1_form()).await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        let body = answer.json();
        assert_eq!(body["token_type"], "Bearer");
        assert_eq!(body["expires_in"], "3599");
        assert_eq!(body["ext_expires_in"], "3599");
        assert_eq!(body["resource"], POWER_BI);
        let expires_on: u64 = body["expires_on"]
            .as_str()
            .expect("string")
            .parse()
            .expect("epoch");
        let not_before: u64 = body["not_before"]
            .as_str()
            .expect("string")
            .parse()
            .expect("epoch");
        assert_eq!(expires_on - not_before, 3599 + NOT_BEFORE_BACKDATE_SECS);
        assert!(body.get("refresh_in").is_none());
        let claims = decode_claims(body["access_token"].as_str().expect("token"));
        assert_eq!(claims["exp"].as_u64(), Some(expires_on));
        assert_eq!(
            sim.last_request(TENANT).map(|r| r.version),
            Some(ApiVersion::V1)
        );
    }

    #[tokio::test]
    async fn refresh_in_is_a_number_on_v2_and_a_string_on_v1() {
        let Fixture { sim, http } = fixture().await;
        let mut tenant = SimTenant::new(SimApp::new(APP, SECRET), Duration::from_secs(7200));
        tenant.refresh_in = Some(Duration::from_secs(3600));
        sim.add_tenant(TENANT, tenant);
        let v2 = post(&http, &v2_url(&sim, TENANT), &v2_form()).await.json();
        assert_eq!(v2["refresh_in"], serde_json::json!(3600));
        assert_eq!(v2["expires_in"], serde_json::json!(7200));
        let v1 = post(&http, &v1_url(&sim, TENANT), &v1_form()).await.json();
        assert_eq!(v1["refresh_in"], "3600");
    }

    #[test]
    fn signed_tokens_verify_under_their_own_key_only() {
        let random = aws_lc_rs::rand::SystemRandom::new();
        let key = hmac::Key::generate(hmac::HMAC_SHA256, &random).expect("key");
        let other = hmac::Key::generate(hmac::HMAC_SHA256, &random).expect("key");
        let claims = serde_json::json!({ "aud": POWER_BI, "tid": TENANT, "exp": 1 });
        let token = jwt_shaped(&key, &claims);
        assert_eq!(verify(&key, &token), Some(claims));
        assert_eq!(verify(&other, &token), None);

        let (signing_input, signature) = token.rsplit_once('.').expect("three parts");
        let signature = URL_SAFE_NO_PAD.decode(signature).expect("base64url");
        assert_eq!(signature.len(), SIGNATURE_LEN);
        assert_eq!(
            &signature[..32],
            hmac::sign(&key, signing_input.as_bytes()).as_ref(),
            "the signature starts with HMAC-SHA256 over header.payload"
        );
        for altered in [
            token.replacen('.', "x.", 1),
            format!("{token}A"),
            format!("{token}.x"),
            token[..token.len() - 1].to_owned(),
            String::new(),
            "..".to_owned(),
        ] {
            assert_eq!(verify(&key, &altered), None, "{altered}");
        }
    }

    #[tokio::test]
    async fn tokens_differ_on_every_issue() {
        let Fixture { sim, http } = fixture().await;
        let first = post(&http, &v2_url(&sim, TENANT), &v2_form()).await.json();
        let second = post(&http, &v2_url(&sim, TENANT), &v2_form()).await.json();
        assert_ne!(first["access_token"], second["access_token"]);
        let first = decode_claims(first["access_token"].as_str().expect("token"));
        let second = decode_claims(second["access_token"].as_str().expect("token"));
        assert_ne!(first["uti"], second["uti"]);
        assert_eq!(sim.issued_count(TENANT), 2);
    }
}
