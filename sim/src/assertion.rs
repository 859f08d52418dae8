//! Client assertions (reference §3): a JWT the app signs with the key of a certificate registered
//! on it, and the choice between such an assertion and a federated token (`federated.rs`). Both
//! are decoded and their lifetimes checked in `jwt.rs`.

use rustls_pki_types::{CertificateDer, SignatureVerificationAlgorithm};
use serde_json::Value;

use super::federated::verify_federated_assertion;
use super::jwt::{DecodedJwt, check_assertion_lifetime, decode_base64_any};
use super::token_request::Rejection;
use super::{AppCredentials, RegisteredCertificate};

/// The only `client_assertion_type` Entra accepts (RFC 7523 §2.2).
pub(super) const JWT_BEARER_ASSERTION_TYPE: &str =
    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// A client assertion the simulator verified, decoded, so tests can check what the daemon
/// signs or forwards (algorithm, thumbprint encoding, claim types). The signature is not kept,
/// so a recorded assertion cannot be replayed.
#[derive(Clone, Debug, PartialEq)]
pub struct SimAssertion {
    /// The JOSE header as sent (`alg`, `typ`, `x5t#S256` or `x5t`, `kid`, …).
    pub header: Value,
    /// The claims as sent (`aud`, `iss`, `sub`, `jti`, `nbf`, `exp`, …); a claim sent as a
    /// string stays a string.
    pub claims: Value,
}

/// Entra's checks of a `client_assertion` for app `client_id` (reference §3 and §4).
///
/// An assertion with a thumbprint header is the app's own, signed with a certificate, unless
/// someone else issued it and the app has federated credentials: then, like an assertion
/// without a thumbprint, it is an external token to match against those credentials.
pub(super) fn verify_assertion(
    assertion: &str,
    client_id: &str,
    credentials: Option<&AppCredentials>,
    audience: &str,
    now: i64,
) -> Result<SimAssertion, Rejection> {
    let jwt = DecodedJwt::parse(assertion).ok_or_else(|| Rejection::new(50027))?;
    let (certificates, federated) = credentials.map_or((&[][..], &[][..]), |credentials| {
        (
            credentials.certificates.as_slice(),
            credentials.federated.as_slice(),
        )
    });
    let has_thumbprint = jwt.header.get("x5t#S256").is_some() || jwt.header.get("x5t").is_some();
    let issued_by_client = jwt
        .claim_str("iss")
        .is_some_and(|issuer| issuer.eq_ignore_ascii_case(client_id));
    if has_thumbprint && (issued_by_client || federated.is_empty()) {
        verify_certificate_assertion(&jwt, client_id, certificates, audience, now)?;
    } else {
        verify_federated_assertion(&jwt, federated, now)?;
    }
    Ok(SimAssertion {
        header: jwt.header,
        claims: jwt.claims,
    })
}

/// A certificate-signed assertion: algorithm, thumbprint, signature, then the claims.
fn verify_certificate_assertion(
    jwt: &DecodedJwt<'_>,
    client_id: &str,
    certificates: &[RegisteredCertificate],
    audience: &str,
    now: i64,
) -> Result<(), Rejection> {
    let algorithm: &dyn SignatureVerificationAlgorithm =
        match jwt.header.get("alg").and_then(Value::as_str) {
            Some("PS256") => webpki::aws_lc_rs::RSA_PSS_2048_8192_SHA256_LEGACY_KEY,
            Some("RS256") => webpki::aws_lc_rs::RSA_PKCS1_2048_8192_SHA256,
            // Entra's answer to other algorithms is not in the reference; a client that
            // sends one has a bug, which "malformed" (AADSTS50027) points at.
            _ => return Err(Rejection::new(50027)),
        };
    let certificate =
        registered_certificate(&jwt.header, certificates).ok_or_else(|| Rejection::new(700027))?;
    let der = CertificateDer::from(certificate.der.as_slice());
    let signed = webpki::EndEntityCert::try_from(&der).and_then(|cert| {
        cert.verify_signature(algorithm, jwt.signing_input.as_bytes(), &jwt.signature)
    });
    if signed.is_err() {
        return Err(Rejection::new(700027));
    }
    // Client ids are GUIDs, which Entra compares without regard to case.
    let names_client = |claim: &str| {
        jwt.claim_str(claim)
            .is_some_and(|value| value.eq_ignore_ascii_case(client_id))
    };
    if !names_client("iss") || !names_client("sub") {
        return Err(Rejection::new(700021));
    }
    // Case-insensitive: Microsoft's own example assertion spells the path `/oauth2/V2.0/token`.
    if !jwt
        .claim_str("aud")
        .is_some_and(|aud| aud.eq_ignore_ascii_case(audience))
    {
        return Err(Rejection::new(700023));
    }
    if jwt.claim_str("jti").is_none_or(str::is_empty) {
        return Err(Rejection::new(50027));
    }
    // Entra does not reject a reused `jti`: MSAL Python reuses one assertion for 540 s.
    check_assertion_lifetime(&jwt.claims, now)
}

/// The registered certificate a header's thumbprint names: `x5t#S256` when present, else
/// `x5t`, each in base64url or standard base64 (MSAL Go and Rust send the latter).
fn registered_certificate<'a>(
    header: &Value,
    certificates: &'a [RegisteredCertificate],
) -> Option<&'a RegisteredCertificate> {
    if let Some(thumbprint) = header.get("x5t#S256") {
        let thumbprint = decode_base64_any(thumbprint.as_str()?)?;
        return certificates
            .iter()
            .find(|certificate| certificate.sha256 == thumbprint);
    }
    let thumbprint = decode_base64_any(header.get("x5t")?.as_str()?)?;
    certificates
        .iter()
        .find(|certificate| certificate.sha1 == thumbprint)
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::super::wire::{REDACTED, random_guid, unix_now};
    use super::*;
    use aws_lc_rs::digest;
    use base64::Engine;
    use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};

    /// An RSA key and its self-signed certificate.
    struct TestKey {
        cert_der: Vec<u8>,
        key_pair: aws_lc_rs::signature::RsaKeyPair,
    }

    /// Two keys, made once per test run by the `openssl` command line (the crate has no
    /// certificate generator); key generation is the slow part, so both run at once.
    fn test_keys() -> &'static [TestKey; 2] {
        static KEYS: std::sync::OnceLock<[TestKey; 2]> = std::sync::OnceLock::new();
        KEYS.get_or_init(|| {
            let dir = tempfile::tempdir().expect("temp dir");
            let children: Vec<_> = (0..2)
                .map(|index| {
                    std::process::Command::new("openssl")
                        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout"])
                        .arg(dir.path().join(format!("key{index}.pem")))
                        .arg("-out")
                        .arg(dir.path().join(format!("cert{index}.pem")))
                        .args(["-days", "30", "-subj", "/CN=powerbi-tokend-sim-test"])
                        .stdout(std::process::Stdio::null())
                        .stderr(std::process::Stdio::piped())
                        .spawn()
                        .expect("openssl runs")
                })
                .collect();
            for child in children {
                let output = child.wait_with_output().expect("openssl finishes");
                assert!(
                    output.status.success(),
                    "{}",
                    String::from_utf8_lossy(&output.stderr)
                );
            }
            [0, 1].map(|index| load_test_key(dir.path(), index))
        })
    }

    fn load_test_key(dir: &std::path::Path, index: usize) -> TestKey {
        use rustls_pki_types::PrivateKeyDer;
        use rustls_pki_types::pem::PemObject;
        let cert_der = CertificateDer::from_pem_file(dir.join(format!("cert{index}.pem")))
            .expect("certificate PEM")
            .to_vec();
        let key =
            PrivateKeyDer::from_pem_file(dir.join(format!("key{index}.pem"))).expect("key PEM");
        let PrivateKeyDer::Pkcs8(key) = key else {
            panic!("openssl writes PKCS#8 keys");
        };
        let key_pair =
            aws_lc_rs::signature::RsaKeyPair::from_pkcs8(key.secret_pkcs8_der()).expect("RSA key");
        TestKey { cert_der, key_pair }
    }

    /// `x5t#S256` as MSAL.NET and Python send it: base64url SHA-256.
    fn sha256_thumbprint(key: &TestKey) -> String {
        URL_SAFE_NO_PAD.encode(digest::digest(&digest::SHA256, &key.cert_der))
    }

    /// `x5t` as the Rust SDK sends it: standard base64 SHA-1, padded.
    fn sha1_thumbprint_standard(key: &TestKey) -> String {
        STANDARD.encode(digest::digest(
            &digest::SHA1_FOR_LEGACY_USE_ONLY,
            &key.cert_der,
        ))
    }

    /// Signs with PSS when the header says PS256, else PKCS#1 v1.5.
    fn sign(key: &TestKey, header: &Value, claims: &Value) -> String {
        use aws_lc_rs::signature::{RSA_PKCS1_SHA256, RSA_PSS_SHA256, RsaEncoding};
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let encoding: &'static dyn RsaEncoding = if header["alg"] == "PS256" {
            &RSA_PSS_SHA256
        } else {
            &RSA_PKCS1_SHA256
        };
        let mut signature = vec![0; key.key_pair.public_modulus_len()];
        key.key_pair
            .sign(
                encoding,
                &aws_lc_rs::rand::SystemRandom::new(),
                input.as_bytes(),
                &mut signature,
            )
            .expect("signs");
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature))
    }

    fn ps256_header(key: &TestKey) -> Value {
        serde_json::json!({ "alg": "PS256", "typ": "JWT", "x5t#S256": sha256_thumbprint(key) })
    }

    /// The claims every library sends, valid for ten minutes from now.
    fn assertion_claims(audience: &str) -> Value {
        let now = unix_now();
        serde_json::json!({
            "aud": audience,
            "iss": APP,
            "sub": APP,
            "jti": random_guid(),
            "nbf": now,
            "exp": now + 600,
            "iat": now,
        })
    }

    #[tokio::test]
    #[cfg_attr(
        not(has_openssl),
        ignore = "skipped: needs openssl (Debian package openssl)"
    )]
    async fn certificate_assertion_with_ps256_and_sha256_thumbprint() {
        let Fixture { sim, http } = fixture().await;
        let key = &test_keys()[0];
        sim.add_certificate(TENANT, APP, key.cert_der.clone());
        let url = v2_url(&sim, TENANT);
        let header = ps256_header(key);
        // MSAL.NET writes `nbf` and `exp` as strings.
        let mut claims = assertion_claims(&url);
        let now = unix_now();
        claims["nbf"] = Value::from(now.to_string());
        claims["exp"] = Value::from((now + 600).to_string());

        let answer = post_assertion(&http, &url, &sign(key, &header, &claims)).await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        let token = answer.json()["access_token"]
            .as_str()
            .expect("token")
            .to_owned();
        assert_eq!(decode_claims(&token)["appid"], APP);
        let recorded = sim.last_assertion(TENANT).expect("assertion recorded");
        assert_eq!(recorded.header, header);
        assert_eq!(recorded.claims, claims);
        let request = sim.last_request(TENANT).expect("recorded");
        assert!(
            request
                .form
                .contains(&("client_assertion".to_owned(), REDACTED.to_owned()))
        );

        // The v1 endpoint wants its own URL as the audience.
        let v1 = v1_url(&sim, TENANT);
        let answer = post_assertion(&http, &v1, &sign(key, &header, &assertion_claims(&v1))).await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        assert_eq!(answer.json()["expires_in"], "3599");
        assert_eq!(sim.issued_count(TENANT), 2);
    }

    #[tokio::test]
    #[cfg_attr(
        not(has_openssl),
        ignore = "skipped: needs openssl (Debian package openssl)"
    )]
    async fn certificate_assertion_with_rs256_and_standard_base64_sha1_thumbprint() {
        let Fixture { sim, http } = fixture().await;
        let [old, new] = test_keys();
        // Key rollover: both certificates are registered, the new key signs.
        sim.add_certificate(TENANT, APP, old.cert_der.clone());
        sim.add_certificate(TENANT, &APP.to_ascii_uppercase(), new.cert_der.clone());
        let url = v2_url(&sim, TENANT);
        let thumbprint = sha1_thumbprint_standard(new);
        assert!(thumbprint.ends_with('='), "padded: {thumbprint}");
        let header = serde_json::json!({ "alg": "RS256", "typ": "JWT", "x5t": thumbprint });
        let answer =
            post_assertion(&http, &url, &sign(new, &header, &assertion_claims(&url))).await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        let recorded = sim.last_assertion(TENANT).expect("assertion recorded");
        assert_eq!(recorded.header["alg"], "RS256");
        assert!(recorded.claims["nbf"].is_number());
    }

    #[tokio::test]
    #[cfg_attr(
        not(has_openssl),
        ignore = "skipped: needs openssl (Debian package openssl)"
    )]
    async fn unregistered_certificate_or_bad_signature_gets_700027() {
        let Fixture { sim, http } = fixture().await;
        let [registered, stranger] = test_keys();
        sim.add_certificate(TENANT, APP, registered.cert_der.clone());
        let url = v2_url(&sim, TENANT);
        let claims = assertion_claims(&url);

        let unregistered = sign(stranger, &ps256_header(stranger), &claims);
        let answer = post_assertion(&http, &url, &unregistered).await;
        assert_entra_error(&answer, 401, "invalid_client", 700027);

        // The registered thumbprint, signed by another key.
        let forged = sign(stranger, &ps256_header(registered), &claims);
        let answer = post_assertion(&http, &url, &forged).await;
        assert_entra_error(&answer, 401, "invalid_client", 700027);

        // A valid assertion whose claims were changed after signing.
        let valid = sign(registered, &ps256_header(registered), &claims);
        let (header_part, rest) = valid.split_once('.').expect("JWT");
        let (_, signature_part) = rest.split_once('.').expect("JWT");
        let mut altered = claims.clone();
        altered["exp"] = Value::from(unix_now() + 86_400);
        let tampered = format!(
            "{header_part}.{}.{signature_part}",
            URL_SAFE_NO_PAD.encode(altered.to_string())
        );
        let answer = post_assertion(&http, &url, &tampered).await;
        assert_entra_error(&answer, 401, "invalid_client", 700027);

        // A PSS signature under a header that claims PKCS#1 v1.5.
        let mut header = ps256_header(registered);
        let pss = sign(registered, &header, &claims);
        header["alg"] = Value::from("RS256");
        let (_, pss_rest) = pss.split_once('.').expect("JWT");
        let relabelled = format!("{}.{pss_rest}", URL_SAFE_NO_PAD.encode(header.to_string()));
        let answer = post_assertion(&http, &url, &relabelled).await;
        assert_entra_error(&answer, 401, "invalid_client", 700027);
        assert!(sim.last_assertion(TENANT).is_none());

        assert_eq!(post_assertion(&http, &url, &valid).await.status, 200);
        sim.remove_certificates(TENANT, APP);
        let answer = post_assertion(&http, &url, &valid).await;
        assert_entra_error(&answer, 401, "invalid_client", 700027);
        assert_eq!(sim.issued_count(TENANT), 1);
    }

    #[tokio::test]
    #[cfg_attr(
        not(has_openssl),
        ignore = "skipped: needs openssl (Debian package openssl)"
    )]
    async fn assertion_lifetime_allows_five_minutes_of_skew() {
        let Fixture { sim, http } = fixture().await;
        let key = &test_keys()[0];
        sim.add_certificate(TENANT, APP, key.cert_der.clone());
        let url = v2_url(&sim, TENANT);
        let now = unix_now();
        let with_times = |nbf: Option<i64>, exp: Option<i64>| {
            let mut claims = assertion_claims(&url);
            let object = claims.as_object_mut().expect("object");
            object.remove("nbf");
            object.remove("exp");
            if let Some(nbf) = nbf {
                object.insert("nbf".to_owned(), Value::from(nbf));
            }
            if let Some(exp) = exp {
                object.insert("exp".to_owned(), Value::from(exp));
            }
            sign(key, &ps256_header(key), &claims)
        };

        let expired = with_times(Some(now - 1200), Some(now - 600));
        let answer = post_assertion(&http, &url, &expired).await;
        let body = assert_entra_error(&answer, 401, "invalid_client", 700024);
        assert!(
            body["error_description"]
                .as_str()
                .unwrap_or_default()
                .contains("not within its valid time range")
        );
        let early = with_times(Some(now + 600), Some(now + 1200));
        assert_entra_error(
            &post_assertion(&http, &url, &early).await,
            401,
            "invalid_client",
            700024,
        );
        let no_expiry = with_times(Some(now), None);
        assert_entra_error(
            &post_assertion(&http, &url, &no_expiry).await,
            400,
            "invalid_request",
            50027,
        );

        // Within the skew, and without `nbf` as MSAL Python sends it.
        let just_expired = with_times(Some(now - 600), Some(now - 60));
        assert_eq!(post_assertion(&http, &url, &just_expired).await.status, 200);
        let slightly_early = with_times(Some(now + 60), Some(now + 600));
        assert_eq!(
            post_assertion(&http, &url, &slightly_early).await.status,
            200
        );
        let without_nbf = with_times(None, Some(now + 600));
        assert_eq!(post_assertion(&http, &url, &without_nbf).await.status, 200);
    }

    #[tokio::test]
    #[cfg_attr(
        not(has_openssl),
        ignore = "skipped: needs openssl (Debian package openssl)"
    )]
    async fn assertion_audience_issuer_and_shape_errors() {
        let Fixture { sim, http } = fixture().await;
        let key = &test_keys()[0];
        sim.add_certificate(TENANT, APP, key.cert_der.clone());
        let url = v2_url(&sim, TENANT);
        let signed = |change: &dyn Fn(&mut Value)| {
            let mut claims = assertion_claims(&url);
            change(&mut claims);
            sign(key, &ps256_header(key), &claims)
        };
        let production = format!("https://login.microsoftonline.com/{TENANT}/oauth2/v2.0/token");
        // (claim, new value or removed, status, error, code)
        let cases = [
            (
                "aud",
                Some(v1_url(&sim, TENANT)),
                401,
                "invalid_client",
                700023,
            ),
            ("aud", Some(production), 401, "invalid_client", 700023),
            (
                "iss",
                Some("11111111-2222-4333-8444-555555555555".to_owned()),
                401,
                "invalid_client",
                700021,
            ),
            (
                "sub",
                Some("someone-else".to_owned()),
                401,
                "invalid_client",
                700021,
            ),
            ("jti", None, 400, "invalid_request", 50027),
        ];
        for (claim, value, status, error, code) in cases {
            let assertion = signed(&|claims| match &value {
                Some(value) => claims[claim] = Value::from(value.as_str()),
                None => {
                    claims.as_object_mut().map(|object| object.remove(claim));
                }
            });
            let answer = post_assertion(&http, &url, &assertion).await;
            assert_eq!(answer.status, status, "{claim}: {}", answer.body);
            assert_entra_error(&answer, status, error, code);
        }

        // The audience path is compared without regard to case, as in Microsoft's example.
        let upper = signed(&|claims| {
            claims["aud"] = Value::from(url.replace("v2.0", "V2.0"));
        });
        assert_eq!(post_assertion(&http, &url, &upper).await.status, 200);

        let symmetric = sign(
            key,
            &serde_json::json!({ "alg": "HS256", "x5t#S256": sha256_thumbprint(key) }),
            &assertion_claims(&url),
        );
        assert_entra_error(
            &post_assertion(&http, &url, &symmetric).await,
            400,
            "invalid_request",
            50027,
        );
        for garbage in ["not-a-jwt", "a.b.c", "eyJ9.e30.", "e30.e30.AA.AA"] {
            let answer = post_assertion(&http, &url, garbage).await;
            assert_entra_error(&answer, 400, "invalid_request", 50027);
        }

        let valid = signed(&|_| {});
        let without_type = [
            ("grant_type", "client_credentials"),
            ("client_id", APP),
            ("client_assertion", valid.as_str()),
            ("scope", POWER_BI_SCOPE),
        ];
        let answer = post(&http, &url, &without_type).await;
        let body = assert_entra_error(&answer, 400, "invalid_request", 900144);
        assert!(
            body["error_description"]
                .as_str()
                .unwrap_or_default()
                .contains("'client_assertion_type'")
        );
        assert!(!answer.body.contains(&valid));
        assert_eq!(sim.issued_count(TENANT), 1);
    }
}
