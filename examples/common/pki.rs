//! A certificate authority and a server certificate for `127.0.0.1`, made at run time, so the
//! simulated Entra ID can serve HTTPS (`SimEntra::start_tls`) that a client trusts through one
//! extra CA, as the daemon does with `[daemon] ca_file`. Nothing is kept on disk between runs and
//! nothing expires while a run lasts. The benchmark and the tests share this file
//! (`tests/common/mod.rs` includes it by path).

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// A fresh CA and the server certificate it signed, all PEM. The keys are ECDSA P-256 (rcgen's
/// default): handshakes cost what a modern server's do, and key generation is instant.
pub struct LoopbackPki {
    /// The CA certificate: the trust anchor a client adds (the daemon's `ca_file`).
    pub ca_pem: String,
    /// The server certificate for `127.0.0.1` (IP subject alternative name), signed by the CA:
    /// the chain the simulator presents.
    pub cert_pem: String,
    /// The server certificate's private key (PKCS#8).
    pub key_pem: String,
}

/// Makes a CA and a server certificate for `127.0.0.1`.
///
/// # Errors
/// Key generation or signing failed in aws-lc-rs.
pub fn loopback_pki() -> Result<LoopbackPki, rcgen::Error> {
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.distinguished_name
        .push(DnType::CommonName, "powerbi-tokend simulated Entra CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca, ca_key);

    let key = KeyPair::generate()?;
    // A name that parses as an IP address becomes an IP SAN, which is what a client connecting
    // to https://127.0.0.1:PORT checks.
    let mut server = CertificateParams::new(vec!["127.0.0.1".to_owned()])?;
    server
        .distinguished_name
        .push(DnType::CommonName, "127.0.0.1");
    server.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let cert = server.signed_by(&key, &issuer)?;
    Ok(LoopbackPki {
        ca_pem: ca_cert.pem(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}
