//! When to wake up next: pure functions, tested without I/O or clocks.
//!
//! * A fresh token is refreshed after `refresh_at` of its lifetime, moved by a per-tenant jitter
//!   that is derived from the tenant's name, so it is the same after every restart and thousands
//!   of tenants configured at once still spread out. Entra's `refresh_in` hint wins when earlier.
//!   The lifetime counts from the token's arrival to the nanosecond, and is the bounded
//!   [`TokenLifetime`](crate::token::TokenLifetime), never the raw claim.
//! * A transient failure is retried with exponential backoff and full jitter, never sooner than
//!   the floor and never sooner than the server's `Retry-After` (capped at
//!   [`MAX_RETRY_AFTER`](crate::token::MAX_RETRY_AFTER)).
//! * A permanent failure is retried at a slow fixed interval, so a fixed secret or a new consent
//!   is picked up without a restart but a broken tenant does not hammer Entra.
//! * An optional cron schedule adds forced refreshes; the earlier of the two wins.
//! * Whatever the above say, [`next_wake`] keeps one tenant's attempts at least
//!   [`MIN_ATTEMPT_INTERVAL`] apart and never before a `Retry-After` has passed.
//!
//! Every instant is computed with [`later`], which saturates: no input can make the schedule
//! panic.

use chrono::{DateTime, Utc};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::token::{AccessToken, RetryAfter, fnv1a};

pub use crate::clock::unix_to_system;

/// The least time between the starts of two attempts of one tenant, whatever asked for the
/// second one: a refresh point of a token that lives a second, a cron expression firing every
/// second, a `Retry-After: 0`, a `backoff_min` of a millisecond.
///
/// One second keeps a hostile or broken server (`"expires_in": 1`) to one request a second
/// per tenant instead of a loop, and is below everything a real tenant meets: Entra's tokens
/// live an hour and the default `backoff_min` is a second. It is not larger because the tests
/// (and the simulator's `demo`) use tokens of two or three seconds and backoffs of 100 ms, whose
/// meaning a floor of several seconds would change; configured backoffs under a second are
/// raised to it.
pub(crate) const MIN_ATTEMPT_INTERVAL: Duration = Duration::from_secs(1);

/// The longest wait [`later`] plans: a year. Longer configured intervals
/// (`permanent_retry_interval = "500 years"`) are shortened to it, which keeps every planned
/// instant printable and far from the end of `SystemTime`.
pub(crate) const MAX_WAIT: Duration = Duration::from_secs(366 * 24 * 3600);

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

/// `time + delay`, with `delay` capped at [`MAX_WAIT`]; `time` itself in the (unreachable) case
/// that even that does not fit in a `SystemTime`.
pub fn later(time: SystemTime, delay: Duration) -> SystemTime {
    time.checked_add(delay.min(MAX_WAIT)).unwrap_or(time)
}

/// When a token should be refreshed (wall-clock).
///
/// `refresh_at + jitter_offset` is validated to lie strictly inside (0, 1); it is clamped to
/// [0.01, 0.99] all the same (and a non-finite value means one half), so the result is always
/// after the token arrived and before it expires.
pub fn refresh_point(token: &AccessToken, refresh_at: f64, jitter_offset: f64) -> SystemTime {
    let received = token.received_at();
    let fraction = refresh_at + jitter_offset;
    let fraction = if fraction.is_finite() {
        fraction.clamp(0.01, 0.99)
    } else {
        0.5
    };
    // The lifetime is at most a day and the fraction below one: `mul_f64` cannot overflow.
    let by_fraction = later(received, token.lifetime().get().mul_f64(fraction));
    match token.refresh_in() {
        Some(hint) => by_fraction.min(later(received, hint)),
        None => by_fraction,
    }
}

/// The refresh point of the first token a tenant fetches after starting without one: a random
/// point of a window one refresh period wide around the usual point (`unit` uniform in [0, 1)).
///
/// Every tenant of a cold start fetches at the same moment; with a fixed per-tenant jitter
/// alone their refreshes come back in waves for many cycles (the k-th refreshes of all tenants
/// bunch within `k × 2 × jitter × lifetime`). A random phase for the first cycle makes the
/// refreshes that follow as spread as they will ever be; the per-tenant jitter (stable across
/// restarts) still sets each tenant's period from then on. The window is ±0.25 of the lifetime
/// at `refresh_at = 0.5`, narrower when `refresh_at` is near either end; with `jitter = 0` (a
/// schedule asked to be exact) there is none.
pub(crate) fn first_refresh_point(
    token: &AccessToken,
    refresh_at: f64,
    jitter: f64,
    unit: f64,
) -> SystemTime {
    // NaN counts as no jitter, like zero.
    if jitter.is_nan() || jitter <= 0.0 {
        return refresh_point(token, refresh_at, 0.0);
    }
    let refresh_at = if refresh_at.is_finite() {
        refresh_at.clamp(0.01, 0.99)
    } else {
        0.5
    };
    let unit = if unit.is_finite() {
        unit.clamp(0.0, 1.0)
    } else {
        0.5
    };
    let half_window = 0.25f64.min(refresh_at / 2.0).min((1.0 - refresh_at) / 2.0);
    let offset = (unit * 2.0 - 1.0) * half_window;
    refresh_point(token, refresh_at, offset)
}

/// Exponential backoff with full jitter: uniform between `min` and `min × 2^attempt` (capped at
/// `max`). `unit` is a uniform random number in `[0, 1)`, passed in so the function stays pure.
pub(crate) fn backoff(attempt: u32, min: Duration, max: Duration, unit: f64) -> Duration {
    let ceiling = min
        .checked_mul(1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX))
        .unwrap_or(max)
        .min(max)
        .max(min);
    let unit = if unit.is_finite() {
        unit.clamp(0.0, 1.0)
    } else {
        0.0
    };
    min + (ceiling - min).mul_f64(unit)
}

/// The delay before the next attempt after a failure: the computed delay, but never less than the
/// server's `Retry-After` (itself at most an hour).
pub(crate) fn respect_retry_after(delay: Duration, retry_after: Option<RetryAfter>) -> Duration {
    match retry_after {
        Some(server) => delay.max(server.get()),
        None => delay,
    }
}

/// Parses a `Retry-After` value: delay-seconds or an HTTP-date (all three RFC 9110 forms),
/// capped at [`MAX_RETRY_AFTER`](crate::token::MAX_RETRY_AFTER). A date in the past means "now"
/// (zero); delay-seconds too large for any integer type mean the cap, as they say "very long".
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<RetryAfter> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        let seconds = value.parse::<u64>().unwrap_or(u64::MAX);
        return Some(RetryAfter::capped(Duration::from_secs(seconds)));
    }
    let date = httpdate::parse_http_date(value).ok()?;
    Some(RetryAfter::capped(
        date.duration_since(now).unwrap_or(Duration::ZERO),
    ))
}

/// The next wake-up of a tenant: the `planned` attempt, or the `cron` activation when earlier,
/// but not before [`MIN_ATTEMPT_INTERVAL`] after the `previous` attempt began, nor before
/// `retry_not_before` (the end of the last `Retry-After`, which a cron activation must not
/// undercut either).
pub(crate) fn next_wake(
    planned: SystemTime,
    cron: Option<SystemTime>,
    previous: Option<SystemTime>,
    retry_not_before: Option<SystemTime>,
) -> SystemTime {
    let wanted = cron.map_or(planned, |cron| cron.min(planned));
    let floor = previous.map(|started| later(started, MIN_ATTEMPT_INTERVAL));
    [floor, retry_not_before]
        .into_iter()
        .flatten()
        .fold(wanted, SystemTime::max)
}

/// The first wait before writing a token in hand again to a sink that could not take it.
pub(crate) const WRITE_RETRY_MIN: Duration = Duration::from_secs(1);

/// The longest wait between writes of a token in hand.
pub(crate) const WRITE_RETRY_MAX: Duration = Duration::from_secs(60);

/// When to write a token in hand again after its `tries`-th failed write (1 or more), while
/// the token the sinks hold (or the one in hand, if it expires first) has `remaining` of its
/// life left: 1 s, 2 s, 4 s… but never more than a quarter of that (the nearer the consumers'
/// token is to its end, the more often the write is tried, so they get the new one soon after
/// the sink takes it) nor more than [`WRITE_RETRY_MAX`], and never less than [`WRITE_RETRY_MIN`].
/// Unlike the backoff of token requests, nothing here costs Entra a request.
pub(crate) fn write_retry(tries: u32, remaining: Duration) -> Duration {
    let doubling = 1u32
        .checked_shl(tries.saturating_sub(1))
        .unwrap_or(u32::MAX);
    WRITE_RETRY_MIN
        .saturating_mul(doubling)
        .min(remaining / 4)
        .min(WRITE_RETRY_MAX)
        .max(WRITE_RETRY_MIN)
}

/// The next cron activation strictly after `after`, in UTC.
pub(crate) fn cron_next(cron: &croner::Cron, after: SystemTime) -> Option<SystemTime> {
    // `DateTime::from(SystemTime)` panics outside chrono's range; go through whole seconds.
    let after = DateTime::<Utc>::from_timestamp(crate::clock::unix_seconds(after), 0)?;
    cron.find_next_occurrence(&after, false)
        .ok()
        .map(SystemTime::from)
}

/// Whether a token found on disk at start-up can be used instead of fetching a new one: it
/// arrived in the past (a file "issued" in the future is a clock that moved back, or a forged
/// file, and trusting it could postpone the first refresh indefinitely) and its refresh point
/// has not come yet.
pub(crate) fn warm_token_usable(
    token: &AccessToken,
    refresh_point: SystemTime,
    now: SystemTime,
) -> bool {
    token.received_at() <= now && now < refresh_point
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
    use crate::token::{ClaimedExpiry, MAX_RETRY_AFTER, MAX_SCHEDULED_LIFETIME};
    use secrecy::SecretString;

    fn token(issued_on: i64, lifetime: i64, refresh_in: Option<i64>) -> AccessToken {
        AccessToken::new(
            SecretString::from("t"),
            "Bearer".into(),
            unix_to_system(issued_on),
            ClaimedExpiry::In(lifetime),
            refresh_in,
        )
        .unwrap()
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
        let server = Some(RetryAfter::capped(Duration::from_secs(60)));
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
        let parse = |value: &str| parse_retry_after(value, now).map(RetryAfter::get);
        assert_eq!(parse("60"), Some(Duration::from_secs(60)));
        assert_eq!(parse(" 0 "), Some(Duration::ZERO));
        let later = now + Duration::from_secs(120);
        let date = httpdate::fmt_http_date(later);
        assert_eq!(parse(&date), Some(Duration::from_secs(120)));
        // RFC 850 and asctime forms are still valid HTTP-dates.
        assert_eq!(
            parse("Thursday, 01-Jan-26 00:02:00 GMT"),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse("Thu Jan  1 00:02:00 2026"),
            Some(Duration::from_secs(120))
        );
        let past = httpdate::fmt_http_date(now - Duration::from_secs(30));
        assert_eq!(parse(&past), Some(Duration::ZERO));
        assert_eq!(parse("soon"), None);
        assert_eq!(parse("-5"), None);
        assert_eq!(parse(""), None);
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
        assert!(warm_token_usable(&t, point, unix_to_system(1_001_000)));
        assert!(!warm_token_usable(&t, point, unix_to_system(1_001_800)));
        // A file "issued" after now (the clock moved back, or a forged file) is not trusted.
        assert!(!warm_token_usable(&t, point, unix_to_system(999_999)));
    }

    #[test]
    fn hardening_10_year_long_retry_after_is_capped() {
        let now = unix_to_system(1_767_225_600);
        let year = 365 * 24 * 3600;
        let cases = [
            year.to_string(),
            u64::MAX.to_string(),
            "99999999999999999999999999".to_owned(),
            httpdate::fmt_http_date(now + Duration::from_secs(year)),
            "Fri, 31 Dec 9999 23:59:59 GMT".to_owned(),
        ];
        for value in &cases {
            let retry_after = parse_retry_after(value, now).unwrap();
            assert_eq!(retry_after.get(), MAX_RETRY_AFTER, "{value}");
            // The next attempt after that failure: an hour from now, not a year.
            let delay = respect_retry_after(Duration::from_secs(1), Some(retry_after));
            assert_eq!(
                later(now, delay),
                now + Duration::from_secs(3600),
                "{value}"
            );
        }
        // Under the cap, the server's value stands.
        assert_eq!(
            parse_retry_after("3599", now).map(RetryAfter::get),
            Some(Duration::from_secs(3599))
        );
    }

    #[test]
    fn hardening_later_saturates() {
        let now = unix_to_system(1_767_225_600);
        assert_eq!(later(now, Duration::MAX), now + MAX_WAIT);
        assert_eq!(
            later(now, Duration::from_secs(5)),
            now + Duration::from_secs(5)
        );
        let end = unix_to_system(i64::MAX);
        let _ = later(end, Duration::MAX);
    }

    #[test]
    fn hardening_refresh_point_of_hostile_tokens() {
        // `refresh_in` of i64::MAX: bounded by the lifetime, so the fraction decides.
        let t = token(1_000_000, 3600, Some(i64::MAX));
        assert_eq!(refresh_point(&t, 0.5, 0.0), unix_to_system(1_001_800));
        // A week-long claim is scheduled as a day (and five minutes).
        let t = token(1_000_000, 7 * 86_400, None);
        assert_eq!(
            refresh_point(&t, 0.5, 0.0),
            unix_to_system(1_000_000) + MAX_SCHEDULED_LIFETIME / 2
        );
        // Fractions from nowhere still give a point inside the lifetime.
        for fraction in [f64::NAN, f64::INFINITY, -1.0, 7.0] {
            let point = refresh_point(&t, fraction, 0.0);
            assert!(point > unix_to_system(1_000_000), "{fraction}");
            assert!(
                point < unix_to_system(1_000_000) + MAX_SCHEDULED_LIFETIME,
                "{fraction}"
            );
        }
    }

    #[test]
    fn the_first_refresh_after_a_cold_start_spreads_over_one_period() {
        let arrived = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let token = AccessToken::new(
            secrecy::SecretString::from("t"),
            "Bearer".to_owned(),
            arrived,
            crate::token::ClaimedExpiry::In(3600),
            None,
        )
        .unwrap();
        let at = |unit: f64| {
            first_refresh_point(&token, 0.5, 0.1, unit)
                .duration_since(arrived)
                .unwrap()
        };
        assert_eq!(at(0.0), Duration::from_secs(900));
        assert_eq!(at(0.5), Duration::from_secs(1800));
        assert_eq!(at(1.0), Duration::from_secs(2700));
        // refresh_at near the end: the window stays inside the lifetime.
        let late = first_refresh_point(&token, 0.9, 0.1, 1.0)
            .duration_since(arrived)
            .unwrap();
        assert_eq!(late, Duration::from_secs(3420));
        // An exact schedule stays exact.
        assert_eq!(
            first_refresh_point(&token, 0.5, 0.0, 0.0),
            refresh_point(&token, 0.5, 0.0)
        );
    }

    #[test]
    fn refresh_point_counts_from_the_precise_arrival() {
        // A one-second token that arrived 900 ms into a second: half its life is 500 ms after
        // arrival, not 500 ms into the second (which had passed before it arrived).
        let arrival = unix_to_system(1_000_000) + Duration::from_millis(900);
        let t = AccessToken::new(
            SecretString::from("t"),
            "Bearer".into(),
            arrival,
            ClaimedExpiry::In(1),
            None,
        )
        .unwrap();
        assert_eq!(
            refresh_point(&t, 0.5, 0.0),
            arrival + Duration::from_millis(500)
        );
    }

    #[test]
    fn next_wake_keeps_the_minimum_interval_and_retry_after() {
        let t0 = unix_to_system(1_000_000);
        let s = Duration::from_secs;
        // Nothing to hold it back: the planned instant, or cron when earlier.
        assert_eq!(next_wake(t0 + s(60), None, None, None), t0 + s(60));
        assert_eq!(
            next_wake(t0 + s(60), Some(t0 + s(10)), None, None),
            t0 + s(10)
        );
        assert_eq!(
            next_wake(t0 + s(60), Some(t0 + s(90)), None, None),
            t0 + s(60)
        );
        // A refresh point already past (a one-second token), right after an attempt began:
        // one interval after that attempt.
        assert_eq!(
            next_wake(t0, None, Some(t0), None),
            t0 + MIN_ATTEMPT_INTERVAL
        );
        // The floor counts from the previous attempt, so a late plan is not delayed further.
        assert_eq!(next_wake(t0 + s(60), None, Some(t0), None), t0 + s(60));
        // A cron activation every second cannot undercut a Retry-After.
        assert_eq!(
            next_wake(t0 + s(3600), Some(t0 + s(1)), Some(t0), Some(t0 + s(60))),
            t0 + s(60)
        );
        // Nor can an already-due plan.
        assert_eq!(next_wake(t0, None, Some(t0), Some(t0 + s(30))), t0 + s(30));
    }

    #[test]
    fn backoff_survives_a_bad_unit() {
        let min = Duration::from_secs(1);
        let max = Duration::from_secs(300);
        for unit in [f64::NAN, f64::INFINITY, -3.0] {
            let d = backoff(5, min, max, unit);
            assert!(d >= min && d <= max, "{unit}: {d:?}");
        }
    }

    #[test]
    fn writes_of_a_token_in_hand_are_retried_soon_and_ever_sooner_near_its_end() {
        let hour = Duration::from_secs(3600);
        let tries: Vec<u64> = (1..=8).map(|n| write_retry(n, hour).as_secs()).collect();
        assert_eq!(tries, [1, 2, 4, 8, 16, 32, 60, 60]);
        // A 30-s token with 16 s left: at most 4 s apart; with 3 s left, the floor.
        assert_eq!(
            write_retry(5, Duration::from_secs(16)),
            Duration::from_secs(4)
        );
        assert_eq!(write_retry(3, Duration::from_secs(3)), WRITE_RETRY_MIN);
        assert_eq!(write_retry(1, Duration::ZERO), WRITE_RETRY_MIN);
        assert_eq!(write_retry(0, hour), WRITE_RETRY_MIN);
        assert_eq!(write_retry(u32::MAX, Duration::MAX), WRITE_RETRY_MAX);
    }
}
