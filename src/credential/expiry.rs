//! When a credential itself expires: a certificate's notAfter, `client_secret_expires`, or a Key
//! Vault secret's `attributes.exp`. It travels from here to `/status`, the expiry metrics and
//! `check`'s warnings, each of which names the kind its own way.

use std::fmt;

/// The kinds of credential whose expiry the daemon knows. A workload or managed identity has
/// none: its tokens are issued by the platform, which rotates what stands behind them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CredentialKind {
    /// A certificate (local or in Key Vault): its notAfter.
    Certificate,
    /// A client secret: `client_secret_expires`, or its `attributes.exp` in Key Vault.
    ClientSecret,
}

impl CredentialKind {
    /// Every kind, in the order the expiry histogram writes them; it always writes all of them
    /// (at zero when unused), so its series do not come and go.
    pub const ALL: [CredentialKind; 2] =
        [CredentialKind::Certificate, CredentialKind::ClientSecret];

    /// The `kind` label value of the expiry metrics; dashboards and alerts select on it.
    pub fn as_str(self) -> &'static str {
        match self {
            CredentialKind::Certificate => "certificate",
            CredentialKind::ClientSecret => "client_secret",
        }
    }

    /// Where the kind is in [`CredentialKind::ALL`], for per-kind arrays.
    pub fn index(self) -> usize {
        match self {
            CredentialKind::Certificate => 0,
            CredentialKind::ClientSecret => 1,
        }
    }
}

/// The kind in words, for messages: "the client secret expires on …".
impl fmt::Display for CredentialKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CredentialKind::Certificate => "certificate",
            CredentialKind::ClientSecret => "client secret",
        })
    }
}

/// When a credential expires, and what kind it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CredentialExpiry {
    /// Unix seconds. As the certificate or the configuration says: not bounded, so readers
    /// format it with the fallible RFC 3339 writer and compare it with saturating arithmetic.
    pub expires_on: i64,
    /// What expires.
    pub kind: CredentialKind,
}

impl CredentialExpiry {
    /// A certificate that expires at `expires_on`.
    pub fn certificate(expires_on: i64) -> Self {
        CredentialExpiry {
            expires_on,
            kind: CredentialKind::Certificate,
        }
    }

    /// A client secret that expires at `expires_on`.
    pub fn client_secret(expires_on: i64) -> Self {
        CredentialExpiry {
            expires_on,
            kind: CredentialKind::ClientSecret,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_have_a_label_and_words() {
        let labels: Vec<&str> = CredentialKind::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(labels, ["certificate", "client_secret"]);
        let words: Vec<String> = CredentialKind::ALL.iter().map(|k| k.to_string()).collect();
        assert_eq!(words, ["certificate", "client secret"]);
        for (index, kind) in CredentialKind::ALL.iter().enumerate() {
            assert_eq!(kind.index(), index);
        }
    }
}
