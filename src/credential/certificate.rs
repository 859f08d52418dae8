//! Certificate credentials: a client assertion (a JWT signed with the certificate's key) per
//! request, as Entra documents it (reference §3).
//!
//! * PS256 with an `x5t#S256` thumbprint by default; RS256 with a SHA-1 `x5t` for legacy
//!   registrations that still expect it.
//! * `aud` is the exact token endpoint URL, `iss` = `sub` = the client ID, a fresh random `jti`,
//!   `nbf` = `iat` = now, `exp` = now + 10 minutes; a new assertion for every request.
//! * `x5c` (the chain, base64 DER, leaf first) only when `send_x5c` is set, for apps registered
//!   with subject name + issuer.
//! * The files are checked (inode, size, mtime) before every request and re-read when they
//!   changed, so a rotated certificate is used without a restart.
//!
//! Signing uses aws-lc-rs, which rustls already builds; the key/certificate match check uses
//! webpki, so no second crypto library is linked.

use aws_lc_rs::digest;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{RSA_PKCS1_SHA256, RSA_PSS_SHA256, RsaKeyPair};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use secrecy::{ExposeSecret, SecretString};
use std::os::unix::fs::MetadataExt;

use crate::safe_read::{self, Symlinks};
use std::path::Path;

use super::secret::CredentialError;
use crate::config::{AssertionAlgorithm, CertificateConfig};

/// How long an assertion is valid: Entra's guidance is 5–10 minutes.
pub(crate) const ASSERTION_LIFETIME_SECONDS: i64 = 600;

/// A loaded certificate and its key, ready to sign assertions.
pub struct Certificate {
    /// The RSA key (zeroised by aws-lc on drop).
    key: RsaKeyPair,
    /// DER of every certificate in the file, leaf first.
    chain: Vec<Vec<u8>>,
    /// base64url SHA-256 of the leaf.
    x5t_s256: String,
    /// base64url SHA-1 of the leaf (legacy `x5t`).
    x5t: String,
    /// The leaf's `notAfter`, Unix seconds.
    not_after: i64,
}

impl std::fmt::Debug for Certificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Certificate")
            .field("x5t#S256", &self.x5t_s256)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// Largest certificate or key file read: a PEM chain is a few KiB.
const MAX_PEM_BYTES: u64 = 256 * 1024;

/// A certificate or key file, bounded like every file others control (symlinks followed:
/// Kubernetes Secret volumes are links).
fn read(path: &Path) -> Result<Vec<u8>, CredentialError> {
    Ok(safe_read::read_blocking(
        path,
        MAX_PEM_BYTES,
        Symlinks::Follow,
    )?)
}

fn invalid(path: &Path, message: impl Into<String>) -> CredentialError {
    CredentialError::Certificate {
        path: path.to_owned(),
        message: message.into(),
    }
}

impl Certificate {
    /// [`Certificate::load`] on the blocking pool, given up after [`safe_read::READ_TIMEOUT`]: what
    /// the daemon and `check` use, so a hung mount cannot stall the runtime.
    ///
    /// # Errors
    /// As [`Certificate::load`], or the files took too long.
    pub(crate) async fn load_async(
        config: &CertificateConfig,
    ) -> Result<Certificate, CredentialError> {
        let owned = config.clone();
        safe_read::blocking(&config.cert, move || Certificate::load(&owned)).await?
    }

    /// Reads and checks the PEM files: an RSA key, at least one certificate, and a key that
    /// matches the leaf certificate. Blocks; see [`Certificate::load_async`].
    ///
    /// # Errors
    /// A file is unreadable, not PEM, not RSA, or the key does not belong to the certificate.
    pub fn load(config: &CertificateConfig) -> Result<Certificate, CredentialError> {
        let cert_pem = read(&config.cert)?;
        let key_pem = if config.key == config.cert {
            None
        } else {
            Some(read(&config.key)?)
        };
        Certificate::from_pem(config, &cert_pem, key_pem.as_deref())
    }

    /// Checks PEM text (a certificate chain, and the key: in `key_pem`, or in `cert_pem` too
    /// when `None`), named in messages by `config`'s paths (a Key Vault URL for a certificate
    /// read from Key Vault).
    ///
    /// # Errors
    /// Not PEM, not RSA, or the key does not belong to the certificate.
    pub(crate) fn from_pem(
        config: &CertificateConfig,
        cert_pem: &[u8],
        key_pem: Option<&[u8]>,
    ) -> Result<Certificate, CredentialError> {
        let chain: Vec<Vec<u8>> = CertificateDer::pem_slice_iter(cert_pem)
            .map(|cert| cert.map(|c| c.to_vec()))
            .collect::<Result<_, _>>()
            .map_err(|err| invalid(&config.cert, format!("not a PEM certificate: {err}")))?;
        let leaf = chain
            .first()
            .ok_or_else(|| invalid(&config.cert, "no CERTIFICATE block found"))?
            .clone();
        let key_pem = key_pem.unwrap_or(cert_pem);
        let key = match PrivateKeyDer::from_pem_slice(key_pem) {
            Ok(PrivateKeyDer::Pkcs8(der)) => RsaKeyPair::from_pkcs8(der.secret_pkcs8_der()),
            Ok(PrivateKeyDer::Pkcs1(der)) => RsaKeyPair::from_der(der.secret_pkcs1_der()),
            Ok(_) => {
                return Err(invalid(
                    &config.key,
                    "not an RSA key; Entra client assertions are signed with RSA (PS256 or RS256)",
                ));
            }
            Err(err) => {
                return Err(invalid(
                    &config.key,
                    format!("no usable PEM private key: {err}"),
                ));
            }
        }
        .map_err(|err| invalid(&config.key, format!("RSA key rejected: {err}")))?;
        let not_after = super::x509::not_after(&leaf)
            .ok_or_else(|| invalid(&config.cert, "cannot read the certificate's validity"))?;
        let certificate = Certificate {
            x5t_s256: URL_SAFE_NO_PAD.encode(digest::digest(&digest::SHA256, &leaf)),
            x5t: URL_SAFE_NO_PAD.encode(digest::digest(&digest::SHA1_FOR_LEGACY_USE_ONLY, &leaf)),
            key,
            chain,
            not_after,
        };
        certificate.check_key_matches(config)?;
        Ok(certificate)
    }

    /// Signs a probe with the key and verifies it with the certificate's public key.
    fn check_key_matches(&self, config: &CertificateConfig) -> Result<(), CredentialError> {
        let probe = b"powerbi-tokend key check";
        let signature = self.sign(AssertionAlgorithm::Ps256, probe)?;
        let leaf = CertificateDer::from(self.chain[0].as_slice());
        let parsed = webpki::EndEntityCert::try_from(&leaf)
            .map_err(|err| invalid(&config.cert, format!("certificate not understood: {err:?}")))?;
        parsed
            .verify_signature(
                webpki::aws_lc_rs::RSA_PSS_2048_8192_SHA256_LEGACY_KEY,
                probe,
                &signature,
            )
            .map_err(|_| CredentialError::KeyMismatch {
                cert: config.cert.clone(),
                key: config.key.clone(),
            })
    }

    fn sign(
        &self,
        algorithm: AssertionAlgorithm,
        message: &[u8],
    ) -> Result<Vec<u8>, CredentialError> {
        let padding = match algorithm {
            AssertionAlgorithm::Ps256 => &RSA_PSS_SHA256,
            AssertionAlgorithm::Rs256 => &RSA_PKCS1_SHA256,
        };
        let mut signature = vec![0; self.key.public_modulus_len()];
        self.key
            .sign(padding, &SystemRandom::new(), message, &mut signature)
            .map_err(|_| CredentialError::Signing)?;
        Ok(signature)
    }

    /// The leaf's `notAfter`, Unix seconds.
    pub fn not_after(&self) -> i64 {
        self.not_after
    }

    /// base64url SHA-256 thumbprint of the leaf certificate (`x5t#S256`).
    pub fn thumbprint_sha256(&self) -> &str {
        &self.x5t_s256
    }

    /// A signed client assertion for one request.
    ///
    /// # Errors
    /// Signing failed (should not happen with a key that passed `load`).
    pub fn assertion(
        &self,
        algorithm: AssertionAlgorithm,
        send_x5c: bool,
        client_id: &str,
        audience: &str,
        now: i64,
    ) -> Result<SecretString, CredentialError> {
        let mut header = match algorithm {
            AssertionAlgorithm::Ps256 => {
                serde_json::json!({"alg": "PS256", "typ": "JWT", "x5t#S256": self.x5t_s256})
            }
            AssertionAlgorithm::Rs256 => {
                serde_json::json!({"alg": "RS256", "typ": "JWT", "x5t": self.x5t})
            }
        };
        if send_x5c {
            header["x5c"] = self.chain.iter().map(|der| STANDARD.encode(der)).collect();
        }
        let claims = serde_json::json!({
            "aud": audience,
            "iss": client_id,
            "sub": client_id,
            "jti": random_guid(),
            "nbf": now,
            "iat": now,
            "exp": now + ASSERTION_LIFETIME_SECONDS,
        });
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let signature = self.sign(algorithm, signing_input.as_bytes())?;
        Ok(SecretString::from(format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(signature)
        )))
    }
}

/// A random version-4 GUID for `jti`: never reused, so Entra's replay check never trips.
fn random_guid() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// Identity of a file's current content for change detection: inode, size, mtime.
type Stamp = (u64, u64, i64, i64);

/// Stamps of the certificate file and the key file, as last loaded.
type Stamps = (Option<Stamp>, Option<Stamp>);

fn stamp(path: &Path) -> Option<Stamp> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.ino(), meta.size(), meta.mtime(), meta.mtime_nsec()))
}

/// A tenant's certificate credential: reloads the files when they change.
pub struct CertificateCredential {
    /// Paths and options.
    config: CertificateConfig,
    /// The loaded certificate and the stamps of the files it came from.
    loaded: Option<(Stamps, Certificate)>,
    /// A certificate read from Key Vault, and a hash of the value it was parsed from.
    from_vault: Option<(u64, Certificate)>,
}

impl CertificateCredential {
    /// A credential that loads on first use.
    pub fn new(config: CertificateConfig) -> Self {
        CertificateCredential {
            config,
            loaded: None,
            from_vault: None,
        }
    }

    /// The certificate, reloaded if either file changed since it was read. Both the change check
    /// and the load run off the async workers.
    async fn current(&mut self) -> Result<&Certificate, CredentialError> {
        let (cert, key) = (self.config.cert.clone(), self.config.key.clone());
        let stamps =
            safe_read::blocking(&self.config.cert, move || (stamp(&cert), stamp(&key))).await?;
        let fresh = matches!(&self.loaded, Some((seen, _)) if *seen == stamps);
        if !fresh {
            let certificate = Certificate::load_async(&self.config).await?;
            if self.loaded.is_some() {
                tracing::info!(
                    cert = %self.config.cert.display(),
                    thumbprint = certificate.thumbprint_sha256(),
                    "certificate files changed; using the new certificate"
                );
            }
            self.loaded = Some((stamps, certificate));
        }
        match &self.loaded {
            Some((_, certificate)) => Ok(certificate),
            None => Err(CredentialError::Signing),
        }
    }

    /// A fresh assertion for `audience` (the token endpoint URL).
    ///
    /// # Errors
    /// The files cannot be read or do not hold a matching RSA key and certificate.
    pub async fn assertion(
        &mut self,
        client_id: &str,
        audience: &str,
    ) -> Result<SecretString, CredentialError> {
        let (algorithm, send_x5c) = (self.config.algorithm, self.config.send_x5c);
        let now = crate::clock::unix_now();
        self.current()
            .await?
            .assertion(algorithm, send_x5c, client_id, audience, now)
    }

    /// The certificate's expiry, from the last successful load.
    pub fn not_after(&self) -> Option<i64> {
        self.loaded
            .as_ref()
            .map(|(_, c)| c.not_after())
            .or_else(|| self.from_vault.as_ref().map(|(_, c)| c.not_after()))
    }

    /// The Key Vault URL of a certificate kept there.
    pub fn key_vault(&self) -> Option<&str> {
        self.config.key_vault.as_deref()
    }

    /// A fresh assertion with the certificate and key in `pem` (read from Key Vault, PEM content
    /// type): parsed again only when the value changed (a rotation).
    ///
    /// # Errors
    /// The value is not a PEM certificate chain with its matching RSA key.
    pub(crate) fn assertion_from_pem(
        &mut self,
        pem: &SecretString,
        client_id: &str,
        audience: &str,
    ) -> Result<SecretString, CredentialError> {
        let fingerprint = crate::token::fnv1a(pem.expose_secret().as_bytes());
        let fresh = matches!(&self.from_vault, Some((seen, _)) if *seen == fingerprint);
        if !fresh {
            let certificate =
                Certificate::from_pem(&self.config, pem.expose_secret().as_bytes(), None)?;
            if self.from_vault.is_some() {
                tracing::info!(
                    cert = %self.config.cert.display(),
                    thumbprint = certificate.thumbprint_sha256(),
                    "certificate in Key Vault changed; using the new certificate"
                );
            }
            self.from_vault = Some((fingerprint, certificate));
        }
        let (algorithm, send_x5c) = (self.config.algorithm, self.config.send_x5c);
        let now = crate::clock::unix_now();
        match &self.from_vault {
            Some((_, certificate)) => {
                certificate.assertion(algorithm, send_x5c, client_id, audience, now)
            }
            None => Err(CredentialError::Signing),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guids_are_v4_and_unique() {
        let a = random_guid();
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "4");
        // RFC 9562 variant: 10xx in the first digit of the fourth group.
        assert!(matches!(&a[19..20], "8" | "9" | "a" | "b"), "{a}");
        assert_ne!(a, random_guid());
    }
}
