//! When to wake up next: pure functions, tested without I/O or clocks.
//!
//! * A fresh token is refreshed after `refresh_at` of its lifetime, moved by a per-tenant jitter
//!   that is derived from the tenant's name, so it is the same after every restart and thousands
//!   of tenants configured at once still spread out. Entra's `refresh_in` hint wins when earlier.
//! * A transient failure is retried with exponential backoff and full jitter, never sooner than
//!   the floor and never sooner than the server's `Retry-After`.
//! * A permanent failure is retried at a slow fixed interval, so a fixed secret or a new consent
//!   is picked up without a restart but a broken tenant does not hammer Entra.
//! * An optional cron schedule adds forced refreshes; the earlier of the two wins.

use chrono::{DateTime, Utc};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::token::{AccessToken, fnv1a};

/// The stable jitter of one tenant, as a signed fraction of the lifetime in `[-jitter, +jitter]`.
pub fn tenant_jitter(name: &str, jitter: f64) -> f64 {
    let unit = mix64(fnv1a(name.as_bytes())) as f64 / u64::MAX as f64;
    (unit * 2.0 - 1.0) * jitter
}

/// The murmur3 finalizer: FNV alone leaves the high bits of similar names ("tenant-1",
/// "tenant-2") correlated; this spreads every input bit over the whole output.
fn mix64(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^ (x >> 33)
}

/// When a token should be refreshed (wall-clock).
///
/// `refresh_at + jitter_offset` is validated to lie strictly inside (0, 1), so the result is
/// always after the token arrived and before it expires.
pub fn refresh_point(token: &AccessToken, refresh_at: f64, jitter_offset: f64) -> SystemTime {
    let issued = unix_to_system(token.issued_on);
    let fraction = (refresh_at + jitter_offset).clamp(0.01, 0.99);
    let by_fraction = issued + token.lifetime().mul_f64(fraction);
    match token.refresh_in {
        Some(hint) => by_fraction.min(issued + hint),
        None => by_fraction,
    }
}

/// Exponential backoff with full jitter: uniform between `min` and `min × 2^attempt` (capped at
/// `max`). `unit` is a uniform random number in `[0, 1)`, passed in so the function stays pure.
pub fn backoff(attempt: u32, min: Duration, max: Duration, unit: f64) -> Duration {
    let ceiling = min
        .checked_mul(1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX))
        .unwrap_or(max)
        .min(max)
        .max(min);
    min + (ceiling - min).mul_f64(unit.clamp(0.0, 1.0))
}

/// The delay before the next attempt after a failure: the computed delay, but never less than the
/// server's `Retry-After`.
pub fn respect_retry_after(delay: Duration, retry_after: Option<Duration>) -> Duration {
    match retry_after {
        Some(server) => delay.max(server),
        None => delay,
    }
}

/// Parses a `Retry-After` value: delay-seconds or an HTTP-date (all three RFC 9110 forms).
/// A date in the past means "now" (zero).
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let date = httpdate::parse_http_date(value).ok()?;
    Some(date.duration_since(now).unwrap_or(Duration::ZERO))
}

/// The next cron activation strictly after `after`, in UTC.
pub fn cron_next(cron: &croner::Cron, after: SystemTime) -> Option<SystemTime> {
    let after: DateTime<Utc> = after.into();
    cron.find_next_occurrence(&after, false)
        .ok()
        .map(SystemTime::from)
}

/// Whether a token found on disk at start-up can be used instead of fetching a new one.
pub fn warm_token_usable(refresh_point: SystemTime, now: SystemTime) -> bool {
    now < refresh_point
}

/// A Unix timestamp in seconds as a `SystemTime` (negative values clamp to the epoch).
pub fn unix_to_system(seconds: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(u64::try_from(seconds).unwrap_or(0))
}

/// A `SystemTime` as fractional Unix seconds, for metrics and JSON.
pub fn system_to_unix_f64(time: SystemTime) -> f64 {
    match time.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs_f64(),
        Err(e) => -e.duration().as_secs_f64(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::SecretString;

    fn token(issued_on: i64, lifetime: i64, refresh_in: Option<u64>) -> AccessToken {
        AccessToken {
            secret: SecretString::from("t"),
            token_type: "Bearer".into(),
            issued_on,
            expires_on: issued_on + lifetime,
            refresh_in: refresh_in.map(Duration::from_secs),
        }
    }

    #[test]
    fn refresh_at_half_life_plus_jitter() {
        let t = token(1_000_000, 3600, None);
        assert_eq!(
            refresh_point(&t, 0.5, 0.0),
            unix_to_system(1_000_000 + 1800)
        );
        assert_eq!(
            refresh_point(&t, 0.5, 0.1),
            unix_to_system(1_000_000 + 2160)
        );
        assert_eq!(
            refresh_point(&t, 0.5, -0.1),
            unix_to_system(1_000_000 + 1440)
        );
    }

    #[test]
    fn refresh_in_wins_when_earlier() {
        let t = token(1_000_000, 3600, Some(600));
        assert_eq!(refresh_point(&t, 0.5, 0.0), unix_to_system(1_000_600));
        let t = token(1_000_000, 3600, Some(3000));
        assert_eq!(refresh_point(&t, 0.5, 0.0), unix_to_system(1_001_800));
    }

    #[test]
    fn jitter_is_stable_bounded_and_spread() {
        assert_eq!(tenant_jitter("contoso", 0.1), tenant_jitter("contoso", 0.1));
        let values: Vec<f64> = (0..1000)
            .map(|i| tenant_jitter(&format!("tenant-{i}"), 0.1))
            .collect();
        assert!(values.iter().all(|v| (-0.1..=0.1).contains(v)));
        let below = values.iter().filter(|v| **v < 0.0).count();
        assert!((400..600).contains(&below), "{below} of 1000 below zero");
        let spread = values.iter().cloned().fold(f64::MIN, f64::max)
            - values.iter().cloned().fold(f64::MAX, f64::min);
        assert!(spread > 0.18, "spread {spread}");
        assert_eq!(tenant_jitter("contoso", 0.0), 0.0);
    }

    #[test]
    fn backoff_bounds() {
        let min = Duration::from_secs(1);
        let max = Duration::from_secs(300);
        for attempt in 0..64 {
            for unit in [0.0, 0.3, 0.999, 1.0] {
                let d = backoff(attempt, min, max, unit);
                assert!(d >= min && d <= max, "attempt {attempt} unit {unit}: {d:?}");
            }
        }
        assert_eq!(backoff(0, min, max, 1.0), min);
        assert_eq!(backoff(3, min, max, 1.0), Duration::from_secs(8));
        assert_eq!(backoff(3, min, max, 0.0), min);
        assert_eq!(backoff(20, min, max, 1.0), max);
        assert_eq!(
            backoff(u32::MAX, min, max, 0.5),
            min + (max - min).mul_f64(0.5)
        );
    }

    #[test]
    fn retry_after_is_never_undercut() {
        let server = Some(Duration::from_secs(60));
        assert_eq!(
            respect_retry_after(Duration::from_secs(2), server),
            Duration::from_secs(60)
        );
        assert_eq!(
            respect_retry_after(Duration::from_secs(90), server),
            Duration::from_secs(90)
        );
        assert_eq!(
            respect_retry_after(Duration::from_secs(2), None),
            Duration::from_secs(2)
        );
    }

    #[test]
    fn retry_after_both_forms() {
        let now = unix_to_system(1_767_225_600);
        assert_eq!(parse_retry_after("60", now), Some(Duration::from_secs(60)));
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        let later = now + Duration::from_secs(120);
        let date = httpdate::fmt_http_date(later);
        assert_eq!(
            parse_retry_after(&date, now),
            Some(Duration::from_secs(120))
        );
        // RFC 850 and asctime forms are still valid HTTP-dates.
        assert_eq!(
            parse_retry_after("Thursday, 01-Jan-26 00:02:00 GMT", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Thu Jan  1 00:02:00 2026", now),
            Some(Duration::from_secs(120))
        );
        let past = httpdate::fmt_http_date(now - Duration::from_secs(30));
        assert_eq!(parse_retry_after(&past, now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-5", now), None);
    }

    #[test]
    fn cron_next_in_utc() {
        let cron = crate::config::parse_cron("0 0 6 * * *").unwrap();
        // 2026-01-01T00:00:00Z -> 06:00 the same day
        let now = unix_to_system(1_767_225_600);
        assert_eq!(
            cron_next(&cron, now),
            Some(unix_to_system(1_767_225_600 + 6 * 3600))
        );
        // exactly at an activation -> the next day's
        let at = unix_to_system(1_767_225_600 + 6 * 3600);
        assert_eq!(
            cron_next(&cron, at),
            Some(unix_to_system(1_767_225_600 + 30 * 3600))
        );
        let five_fields = crate::config::parse_cron("*/15 * * * *").unwrap();
        assert_eq!(
            cron_next(&five_fields, unix_to_system(1_767_225_600 + 1)),
            Some(unix_to_system(1_767_225_600 + 900))
        );
    }

    #[test]
    fn warm_start_rule() {
        let t = token(1_000_000, 3600, None);
        let point = refresh_point(&t, 0.5, 0.0);
        assert!(warm_token_usable(point, unix_to_system(1_001_000)));
        assert!(!warm_token_usable(point, unix_to_system(1_001_800)));
    }
}
