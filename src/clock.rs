//! Wall-clock helpers shared by the modules that stamp, compare or print Unix times. They sit
//! here, below everything else, so that no module has to import another just to read the clock.

use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds since the Unix epoch, now. A clock before 1970 reads 0 rather than failing.
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// `2027-03-01`, for messages about expiry dates; the raw number if it is not a date.
pub fn format_date(unix: i64) -> String {
    chrono::DateTime::from_timestamp(unix, 0)
        .map(|t| t.format("%Y-%m-%d").to_string())
        .unwrap_or_else(|| unix.to_string())
}
