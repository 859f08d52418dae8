//! Value syntax shared by several sections: URLs (Key Vault secret URLs among them), GUIDs,
//! domains, dates and cron expressions.

use std::net::IpAddr;
use std::str::FromStr;

/// `2027-03-01` (midnight UTC), a TOML date, or an RFC 3339 date-time, as Unix seconds.
pub(super) fn parse_expiry(value: &toml::Value) -> Result<i64, String> {
    let text = match value {
        toml::Value::String(text) => text.clone(),
        toml::Value::Datetime(datetime) => datetime.to_string(),
        other => {
            return Err(format!(
                "expected a date such as \"2027-03-01\", got a {}",
                other.type_str()
            ));
        }
    };
    if let Ok(date) = chrono::NaiveDate::parse_from_str(&text, "%Y-%m-%d") {
        return Ok(date.and_time(chrono::NaiveTime::MIN).and_utc().timestamp());
    }
    chrono::DateTime::parse_from_rfc3339(&text)
        .map(|t| t.timestamp())
        .map_err(|_| {
            format!("expected a date such as \"2027-03-01\" or an RFC 3339 date-time, got {text:?}")
        })
}

/// Parses a cron expression with optional seconds (5 or 6 fields), evaluated in UTC.
///
/// # Errors
/// A message naming the expression and what croner objected to.
pub fn parse_cron(expression: &str) -> Result<croner::Cron, String> {
    // Counted here so that the message states one rule: croner alone would also accept a
    // seventh (year) field and say so.
    let fields = expression.split_whitespace().count();
    if !expression.trim_start().starts_with('@') && !matches!(fields, 5 | 6) {
        return Err(format!(
            "invalid cron expression {expression:?}: it has {fields} field(s); expected 5 (min hour day month weekday) or 6 (sec min hour day month weekday), in UTC, such as \"0 0 6 * * *\""
        ));
    }
    croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Optional)
        .build()
        .parse(expression)
        .map_err(|err| {
            format!(
                "invalid cron expression {expression:?}: {err}; for example \"0 0 6 * * *\" (sec min hour day month weekday, UTC)"
            )
        })
}

/// `https://host[:port]`, or `http://` for loopback only; returns the host without trailing slash.
pub(super) fn check_authority_host(raw: &str) -> Result<String, String> {
    check_url(raw, false)
}

/// An https URL (http only for loopback hosts); with `allow_path`, a path may follow the host.
pub(super) fn check_url(raw: &str, allow_path: bool) -> Result<String, String> {
    let trimmed = raw.trim().trim_end_matches('/');
    let (scheme, rest) = trimmed.split_once("://").ok_or_else(|| {
        format!("expected a URL such as https://login.microsoftonline.com, got {raw:?}")
    })?;
    let (authority, path) = match rest.find('/') {
        Some(at) if allow_path => (&rest[..at], &rest[at..]),
        _ => (rest, ""),
    };
    if authority.is_empty() || authority.contains(['/', '?', '#', '@']) || path.contains('#') {
        return Err(if allow_path {
            format!("expected a URL such as https://auth.example.com/oauth2/token, got {raw:?}")
        } else {
            format!(
                "expected scheme and host only (e.g. https://login.microsoftonline.com), got {raw:?}"
            )
        });
    }
    let rest = authority;
    match scheme.to_ascii_lowercase().as_str() {
        "https" => Ok(trimmed.to_owned()),
        "http" if is_loopback_authority(rest) => Ok(trimmed.to_owned()),
        "http" => Err(format!(
            "{raw:?} uses http; credentials are only sent over https (http is allowed for loopback hosts only)"
        )),
        other => Err(format!(
            "unsupported scheme {other:?} in {raw:?}; expected https"
        )),
    }
}

/// `localhost`, `127.x.y.z` or `[::1]`, with an optional port. Also the rule for URLs from
/// outside that may use http (embed URLs read from Power BI).
pub(crate) fn is_loopback_authority(authority: &str) -> bool {
    let host = if let Some(rest) = authority.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        authority
            .rsplit_once(':')
            .map_or(authority, |(host, _)| host)
    };
    host.eq_ignore_ascii_case("localhost")
        || IpAddr::from_str(host).is_ok_and(|ip| ip.is_loopback())
}

/// `8-4-4-4-12` hex digits.
pub(crate) fn is_guid(text: &str) -> bool {
    let groups: Vec<&str> = text.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(group, len)| group.len() == len && group.chars().all(|c| c.is_ascii_hexdigit()))
}

/// A DNS name: dot-separated labels of letters, digits and inner hyphens.
pub(super) fn is_domain(text: &str) -> bool {
    text.len() <= 253
        && text.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// A Key Vault secret URL: `https://<vault host>/secrets/<name>` or `…/<name>/<version>` (http
/// for loopback only, as for `authority_host`), without a query. Any host: private endpoints and
/// sovereign clouds have their own.
pub(super) fn check_key_vault_url(raw: &str) -> Result<String, String> {
    let expected =
        "expected https://<vault>.vault.azure.net/secrets/<name> (or …/<name>/<version>)";
    let url = check_url(raw, true).map_err(|message| format!("{message}; {expected}"))?;
    let Some((_, rest)) = url.split_once("://") else {
        return Err(format!("{expected}, got {raw:?}"));
    };
    let path = rest.find('/').map_or("", |at| &rest[at..]);
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    let (name, version) = match segments.as_slice() {
        ["secrets", name] => (*name, None),
        ["secrets", name, version] => (*name, Some(*version)),
        _ => return Err(format!("{expected}, got {raw:?}")),
    };
    let name_ok = !name.is_empty()
        && name.len() <= 127
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    let version_ok = version.is_none_or(|version| {
        !version.is_empty()
            && version.len() <= 64
            && version.bytes().all(|b| b.is_ascii_alphanumeric())
    });
    if !name_ok || !version_ok || path.contains(['?', '#']) {
        return Err(format!(
            "{expected}: a secret name of 1 to 127 letters, digits and '-', and a version of letters and digits; got {raw:?}"
        ));
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cron_messages_state_one_rule() {
        assert!(parse_cron("0 0 6 * * *").is_ok());
        assert!(parse_cron("*/5 * * * *").is_ok());
        assert!(parse_cron("@daily").is_ok());
        assert!(parse_cron("@hourly").is_ok());
        for (expression, says) in [
            ("not a cron", "it has 3 field(s); expected 5"),
            ("0 0 6 * * * 2027", "it has 7 field(s); expected 5"),
            ("0 0 25 * * *", "invalid cron expression \"0 0 25 * * *\": "),
        ] {
            let err = parse_cron(expression).unwrap_err();
            assert!(err.contains(says), "{expression}: {err}");
            assert!(!err.contains("between 5 and 7"), "{expression}: {err}");
        }
    }

    #[test]
    fn tenant_id_syntax() {
        assert!(is_guid("8c3f2b1e-0d4a-4e6b-9f7a-1a2b3c4d5e6f"));
        assert!(!is_guid("8c3f2b1e-0d4a-4e6b-9f7a"));
        assert!(is_domain("contoso.onmicrosoft.com"));
        assert!(!is_domain("bad domain"));
    }

    #[test]
    fn secret_urls() {
        assert_eq!(
            check_key_vault_url("https://kv1.vault.azure.net/secrets/app-secret/").unwrap(),
            "https://kv1.vault.azure.net/secrets/app-secret"
        );
        assert!(
            check_key_vault_url("https://kv1.privatelink.vaultcore.azure.net/secrets/s/0123abcd")
                .is_ok()
        );
        assert!(check_key_vault_url("http://127.0.0.1:8200/secrets/s").is_ok());
        for bad in [
            "http://kv1.vault.azure.net/secrets/s",
            "https://kv1.vault.azure.net/keys/s",
            "https://kv1.vault.azure.net/secrets/",
            "https://kv1.vault.azure.net/secrets/a_b",
            "https://kv1.vault.azure.net/secrets/s/v/x",
            "https://kv1.vault.azure.net/secrets/s?api-version=7.5",
            "kv1.vault.azure.net/secrets/s",
        ] {
            assert!(check_key_vault_url(bad).is_err(), "{bad}");
        }
    }
}
