//! Small helpers the endpoints share: form and HTTP Basic decoding, tenant and client keys,
//! syntax checks, GUIDs and base64, the clock, Entra's JSON headers, and redaction.

use std::time::{SystemTime, UNIX_EPOCH};

use axum::http::header::{self, HeaderMap, HeaderValue};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};

/// The `Content-Type` Entra uses for its JSON answers.
pub(super) const JSON_CONTENT_TYPE: &str = "application/json; charset=utf-8";

/// Stands in for credential values in [`SimEntra::last_request`](super::SimEntra::last_request).
pub(super) const REDACTED: &str = "[REDACTED]";

pub(super) fn json_headers() -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(JSON_CONTENT_TYPE),
    );
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-store, no-cache"),
    );
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    headers
}

/// Header names and values, the values of `secret` names replaced by `[REDACTED]`.
pub(super) fn redacted_headers(headers: &HeaderMap, secret: &[&str]) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(name, value)| {
            let value = if secret.contains(&name.as_str()) {
                REDACTED.to_owned()
            } else {
                String::from_utf8_lossy(value.as_bytes()).into_owned()
            };
            (name.as_str().to_owned(), value)
        })
        .collect()
}

/// The key of an app's credentials: client ids are GUIDs, matched case-insensitively.
pub(super) fn client_key(client_id: &str) -> String {
    client_id.to_ascii_lowercase()
}

/// Seconds since the Unix epoch, for assertion lifetimes.
pub(super) fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| {
            i64::try_from(since.as_secs()).unwrap_or(i64::MAX)
        })
}

/// The registry key of a tenant path segment: Entra treats GUIDs and domains
/// case-insensitively.
pub(super) fn tenant_key(tenant_id: &str) -> String {
    tenant_id.to_ascii_lowercase()
}

pub(super) fn is_guid(text: &str) -> bool {
    text.len() == 36
        && text.bytes().enumerate().all(|(index, byte)| match index {
            8 | 13 | 18 | 23 => byte == b'-',
            _ => byte.is_ascii_hexdigit(),
        })
}

/// A DNS name: dot-separated labels of 1-63 letters, digits and inner hyphens.
pub(super) fn is_dns_like(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 253
        && text.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-')
        })
}

/// Decodes `application/x-www-form-urlencoded` pairs; a field without `=` has an empty value.
pub(super) fn parse_form(body: &[u8]) -> Vec<(String, String)> {
    body.split(|&byte| byte == b'&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = match pair.iter().position(|&byte| byte == b'=') {
                Some(at) => (&pair[..at], &pair[at + 1..]),
                None => (pair, &[][..]),
            };
            (decode_component(key, true), decode_component(value, true))
        })
        .collect()
}

/// Percent-decodes (and, in form data, turns `+` into a space); malformed escapes stay as
/// they are, invalid UTF-8 becomes U+FFFD.
pub(super) fn decode_component(bytes: &[u8], plus_is_space: bool) -> String {
    fn hex(byte: u8) -> Option<u8> {
        char::from(byte)
            .to_digit(16)
            .and_then(|digit| u8::try_from(digit).ok())
    }
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        let byte = bytes[index];
        let escaped = (byte == b'%')
            .then(|| {
                let high = hex(*bytes.get(index + 1)?)?;
                let low = hex(*bytes.get(index + 2)?)?;
                Some(high << 4 | low)
            })
            .flatten();
        match escaped {
            Some(value) => {
                decoded.push(value);
                index += 3;
            }
            None => {
                decoded.push(if plus_is_space && byte == b'+' {
                    b' '
                } else {
                    byte
                });
                index += 1;
            }
        }
    }
    String::from_utf8_lossy(&decoded).into_owned()
}

/// `Authorization: Basic base64(urlencode(client_id) ":" urlencode(secret))` (RFC 6749
/// §2.3.1).
pub(super) fn parse_basic(value: &str) -> Option<(String, String)> {
    let (scheme, credentials) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = STANDARD.decode(credentials.trim()).ok()?;
    let at = decoded.iter().position(|&byte| byte == b':')?;
    Some((
        decode_component(&decoded[..at], true),
        decode_component(&decoded[at + 1..], true),
    ))
}

/// A random version-4 GUID in Entra's lower-case hyphenated form.
pub(super) fn random_guid() -> String {
    format_guid(fastrand::u128(..))
}

/// 128 bits as a version-4 (random) GUID: the version and variant bits are overwritten.
pub(super) fn format_guid(bits: u128) -> String {
    let bits = bits & !(0xf << 76) & !(0x3 << 62) | (0x4 << 76) | (0x2 << 62);
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        bits >> 96,
        (bits >> 80) & 0xffff,
        (bits >> 64) & 0xffff,
        (bits >> 48) & 0xffff,
        bits & 0xffff_ffff_ffff
    )
}

pub(super) fn random_base64url(bytes: usize) -> String {
    let mut buffer = vec![0u8; bytes];
    fastrand::fill(&mut buffer);
    URL_SAFE_NO_PAD.encode(buffer)
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::*;

    #[test]
    fn tenant_syntax() {
        assert!(is_guid(TENANT));
        assert!(!is_guid("8c3f2b1e-0d4a-4e6b-9f7a-1a2b3c4d5e6"));
        assert!(is_dns_like("contoso.onmicrosoft.com"));
        assert!(is_dns_like("tenant-1"));
        assert!(!is_dns_like("bad_segment"));
        assert!(!is_dns_like("-x.com"));
        assert!(!is_dns_like("a..b"));
        assert!(!is_dns_like(""));
    }

    #[test]
    fn form_and_basic_decoding() {
        assert_eq!(
            parse_form(b"a=1+2&b=%2B%3D%26&flag&&c=%zz"),
            vec![
                ("a".to_owned(), "1 2".to_owned()),
                ("b".to_owned(), "+=&".to_owned()),
                ("flag".to_owned(), String::new()),
                ("c".to_owned(), "%zz".to_owned()),
            ]
        );
        let header = format!("basic {}", STANDARD.encode("id%3A1:p%3Aw+d"));
        assert_eq!(
            parse_basic(&header),
            Some(("id:1".to_owned(), "p:w d".to_owned()))
        );
        assert_eq!(parse_basic("Bearer abc"), None);
    }

    #[test]
    fn random_guids_are_version_4() {
        for _ in 0..100 {
            let guid = random_guid();
            assert!(looks_like_guid(&guid), "{guid}");
            assert_eq!(&guid[14..15], "4");
            assert!(matches!(&guid[19..20], "8" | "9" | "a" | "b"), "{guid}");
        }
    }
}
