//! Wall-clock helpers shared by the modules that stamp, compare or print Unix times. They sit
//! here, below everything else, so that no module has to import another just to read the clock.
//!
//! Every conversion here is total: a time that the other representation cannot hold saturates
//! (or, when printed, becomes `None`), so no stored or received time can make a reader panic.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The last second RFC 3339 can write with its four-digit years: 9999-12-31T23:59:59Z.
pub const MAX_RFC3339_UNIX: i64 = 253_402_300_799;

/// The first second RFC 3339 can write: 0000-01-01T00:00:00Z.
pub(crate) const MIN_RFC3339_UNIX: i64 = -62_167_219_200;

/// Seconds since the Unix epoch, now. A clock before 1970 reads 0 rather than failing.
pub fn unix_now() -> i64 {
    unix_seconds(SystemTime::now()).max(0)
}

/// Whole Unix seconds of `time`, rounded down (also before 1970); saturates at the `i64` bounds.
pub fn unix_seconds(time: SystemTime) -> i64 {
    match time.duration_since(UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_secs()).unwrap_or(i64::MAX),
        Err(before) => {
            let before = before.duration();
            let whole = i64::try_from(before.as_secs()).unwrap_or(i64::MAX);
            // Rounding down: 0.5 s before the epoch is second -1. `-whole - 1` cannot overflow
            // because `whole` is at most `i64::MAX`.
            if before.subsec_nanos() > 0 {
                -whole - 1
            } else {
                -whole
            }
        }
    }
}

/// A Unix timestamp in seconds as a `SystemTime`, clamped to [1970, the end of year 9999]: a
/// time from a file or a server can then always be printed, and adding the daemon's bounded
/// durations to it can never overflow.
pub fn unix_to_system(seconds: i64) -> SystemTime {
    let clamped = seconds.clamp(0, MAX_RFC3339_UNIX);
    // `clamped` is within [0, MAX_RFC3339_UNIX], which every platform's SystemTime holds; the
    // fallback is only there so that this function has no panic path at all.
    UNIX_EPOCH
        .checked_add(Duration::from_secs(clamped.unsigned_abs()))
        .unwrap_or(UNIX_EPOCH)
}

/// `2026-01-01T00:00:00Z`, or `None` for a time RFC 3339 cannot write (after year 9999).
pub fn rfc3339_unix(unix: i64) -> Option<String> {
    if !(MIN_RFC3339_UNIX..=MAX_RFC3339_UNIX).contains(&unix) {
        return None;
    }
    chrono::DateTime::from_timestamp(unix, 0)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
}

/// [`rfc3339_unix`] of a `SystemTime` (whole seconds, rounded down).
pub(crate) fn rfc3339(time: SystemTime) -> Option<String> {
    rfc3339_unix(unix_seconds(time))
}

/// [`rfc3339`] for log lines: never fails, prints `out of range` for what RFC 3339 cannot hold.
pub(crate) fn display_time(time: SystemTime) -> String {
    rfc3339(time).unwrap_or_else(|| "out of range".to_owned())
}

/// `2027-03-01`, for messages about expiry dates; the raw number if it is not a date.
pub(crate) fn format_date(unix: i64) -> String {
    chrono::DateTime::from_timestamp(unix, 0)
        .map(|t| t.format("%Y-%m-%d").to_string())
        .unwrap_or_else(|| unix.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_prints_every_representable_year_and_refuses_the_rest() {
        assert_eq!(
            rfc3339_unix(1_767_225_600).as_deref(),
            Some("2026-01-01T00:00:00Z")
        );
        assert_eq!(
            rfc3339_unix(MAX_RFC3339_UNIX).as_deref(),
            Some("9999-12-31T23:59:59Z")
        );
        assert_eq!(
            rfc3339_unix(MIN_RFC3339_UNIX).as_deref(),
            Some("0000-01-01T00:00:00Z")
        );
        for unix in [
            MAX_RFC3339_UNIX + 1,
            MIN_RFC3339_UNIX - 1,
            i64::MAX,
            i64::MIN,
        ] {
            assert_eq!(rfc3339_unix(unix), None, "{unix}");
        }
        // The same text humantime writes, so /status and log lines do not change format.
        let now = UNIX_EPOCH + Duration::from_secs(1_767_225_600);
        assert_eq!(
            rfc3339(now + Duration::from_millis(999)),
            Some(humantime::format_rfc3339_seconds(now).to_string())
        );
        let far = UNIX_EPOCH + Duration::from_secs(1_000_000_000_000);
        assert_eq!(rfc3339(far), None);
        assert_eq!(display_time(far), "out of range");
        assert_eq!(
            rfc3339(UNIX_EPOCH - Duration::from_millis(500)).as_deref(),
            Some("1969-12-31T23:59:59Z")
        );
    }

    #[test]
    fn unix_conversions_saturate() {
        assert_eq!(unix_seconds(UNIX_EPOCH + Duration::from_millis(1_500)), 1);
        assert_eq!(unix_seconds(UNIX_EPOCH - Duration::from_millis(1_500)), -2);
        assert_eq!(unix_seconds(UNIX_EPOCH - Duration::from_secs(2)), -2);
        assert_eq!(unix_to_system(-5), UNIX_EPOCH);
        assert_eq!(unix_to_system(i64::MAX), unix_to_system(MAX_RFC3339_UNIX));
        assert_eq!(unix_seconds(unix_to_system(i64::MAX)), MAX_RFC3339_UNIX);
        assert_eq!(unix_seconds(unix_to_system(1_767_225_600)), 1_767_225_600);
        assert!(rfc3339(unix_to_system(i64::MAX)).is_some());
    }
}
