//! `[daemon] max_requests_per_second`: a token bucket in front of every token request.
//!
//! The bucket holds one second's worth of requests and refills continuously, so a cold start of
//! a hundred thousand tenants, or their recovery after an outage, reaches the token endpoint at
//! the configured rate at most (plus one second's burst), however many tenants are due at once.
//! Written as a "next free slot" clock (GCRA), which needs one timestamp and no refill task: a
//! request takes the next slot, at least `1/rate` after the previous one, and waits until it.
//! Nothing is held while waiting, so a shutdown or a cancelled tenant leaves nothing behind
//! except a slot not used.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// The shared bucket.
#[derive(Debug)]
pub struct RateLimit {
    /// Time between two requests at the configured rate.
    spacing: Duration,
    /// How far ahead of now slots may be handed out before a request waits: one second's worth
    /// of requests (less the one that starts now) is the burst.
    burst: Duration,
    /// The next free slot; requests up to `burst` ahead of it start at once.
    next: Mutex<Option<Instant>>,
}

impl RateLimit {
    /// At most `per_second` requests a second on average, with bursts of `per_second`.
    pub fn new(per_second: u32) -> Self {
        let per_second = per_second.max(1);
        let spacing = Duration::from_secs(1) / per_second;
        RateLimit {
            spacing,
            burst: spacing * per_second.saturating_sub(1),
            next: Mutex::new(None),
        }
    }

    /// How long the caller must wait before its request, taking a slot.
    pub fn reserve(&self) -> Duration {
        let now = Instant::now();
        // The lock guards a timestamp and is never held across an await; nothing in here
        // panics, so a poisoned lock cannot happen, and its value would be fine anyway.
        let mut next = self
            .next
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // An idle bucket is full, not owed: a slot in the past starts from now.
        let slot = next.map_or(now, |next| next.max(now));
        *next = Some(slot + self.spacing);
        // Up to a burst's worth of slots may be handed out ahead of time.
        slot.checked_sub(self.burst)
            .map_or(Duration::ZERO, |start| start.saturating_duration_since(now))
    }

    /// Waits for a slot; returns how long it waited.
    pub async fn acquire(&self) -> Duration {
        let wait = self.reserve();
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        wait
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_full_bucket_bursts_one_second_then_spaces_requests() {
        let limit = RateLimit::new(10);
        // Ten at once: the burst.
        for _ in 0..10 {
            assert_eq!(limit.reserve(), Duration::ZERO);
        }
        // Then one every 100 ms.
        assert_eq!(limit.reserve(), Duration::from_millis(100));
        assert_eq!(limit.reserve(), Duration::from_millis(200));
        // Over a long run the average is the rate: 1,000 more requests span 100 s.
        let mut last = Duration::ZERO;
        for _ in 0..1000 {
            last = limit.reserve();
        }
        assert_eq!(last, Duration::from_millis(100_200));
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_bucket_refills_but_saves_no_more_than_the_burst() {
        let limit = RateLimit::new(4);
        for _ in 0..4 {
            limit.reserve();
        }
        assert!(limit.reserve() > Duration::ZERO);
        tokio::time::advance(Duration::from_secs(60)).await;
        // A minute idle: the burst again, not 240 requests.
        for _ in 0..4 {
            assert_eq!(limit.reserve(), Duration::ZERO);
        }
        assert_eq!(limit.reserve(), Duration::from_millis(250));
    }

    #[tokio::test(start_paused = true)]
    async fn acquire_waits_for_its_slot() {
        let limit = RateLimit::new(2);
        let start = Instant::now();
        for _ in 0..6 {
            limit.acquire().await;
        }
        // Two at once, then one every 500 ms: the sixth starts at 2 s.
        assert_eq!(start.elapsed(), Duration::from_secs(2));
    }
}
