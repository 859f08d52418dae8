//! The two request lanes: a request still running after [`SlowAfter::get`] in the main lane
//! trades its permit for one of the slow lane, so an endpoint that hangs never holds the permits
//! healthy tenants need.

use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The supervisor's lane of steps that only talk to Redis (presence checks, Redis writes): its
/// own budget, so that a hung Redis fills this lane and never the ones token requests and file
/// writes wait in.
pub const REDIS_LANE: usize = 3;

/// The longest a request may run in the main lane before it moves to the slow lane. Entra
/// answers in tens to hundreds of milliseconds; a request still running after this is waiting on
/// a struggling or hanging endpoint, and moving it costs nothing but a second permit pool.
pub const SLOW_AFTER: Duration = Duration::from_millis(500);

/// The shortest: below this, ordinary scheduling noise would move healthy requests.
pub const SLOW_AFTER_MIN: Duration = Duration::from_millis(25);

/// How many times the typical request a request may take before it counts as slow.
const SLOW_FACTOR: u32 = 8;

/// When a main-lane request moves to the slow lane: [`SLOW_FACTOR`] times the typical duration
/// of the requests that recently finished in the main lane, within [`SLOW_AFTER_MIN`] and a
/// ceiling. A fixed half second would let each hanging tenant hold a main permit that long at a
/// cold start, when no tenant is yet known to be slow; against a fast endpoint the threshold
/// follows it down, so hanging tenants give their permits back within a few typical requests.
#[derive(Debug)]
pub struct SlowAfter {
    ceiling: Duration,
    /// Moving average of main-lane request durations in microseconds; 0 until the first.
    typical_micros: std::sync::atomic::AtomicU64,
}

impl SlowAfter {
    /// A threshold that never exceeds `ceiling` (nor goes below [`SLOW_AFTER_MIN`]).
    pub fn new(ceiling: Duration) -> Self {
        SlowAfter {
            ceiling: ceiling.max(SLOW_AFTER_MIN),
            typical_micros: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// The threshold now. Before any request has finished it is the floor: moving a healthy
    /// request early costs a slow-lane permit, keeping a hanging one costs a main-lane permit.
    pub fn get(&self) -> Duration {
        let typical = self
            .typical_micros
            .load(std::sync::atomic::Ordering::Relaxed);
        Duration::from_micros(typical)
            .saturating_mul(SLOW_FACTOR)
            .clamp(SLOW_AFTER_MIN, self.ceiling)
    }

    /// Folds in a request that finished in the main lane without moving (weight 1/8).
    pub fn record(&self, took: Duration) {
        let took = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        let _ = self.typical_micros.fetch_update(
            std::sync::atomic::Ordering::Relaxed,
            std::sync::atomic::Ordering::Relaxed,
            |typical| {
                Some(if typical == 0 {
                    took
                } else {
                    typical - typical / 8 + took / 8
                })
            },
        );
    }
}

/// Runs a token request holding `permit`. A request in the main lane still running after
/// `slow_after` trades its permit for one of the slow lane (waiting for it while the request goes
/// on), so requests to an endpoint that hangs stop taking main-lane permits within `slow_after`,
/// instead of for the whole request timeout. Returns the output, the permit now held, and whether
/// the request moved.
async fn in_lanes<F: std::future::Future>(
    request: F,
    permit: Option<OwnedSemaphorePermit>,
    main_lane: bool,
    slow_lane: &Arc<Semaphore>,
    slow_after: Duration,
) -> (F::Output, Option<OwnedSemaphorePermit>, bool) {
    let mut request = std::pin::pin!(request);
    if !main_lane {
        return (request.await, permit, false);
    }
    tokio::select! {
        output = &mut request => return (output, permit, false),
        () = tokio::time::sleep(slow_after) => {}
    }
    let slow = tokio::select! {
        output = &mut request => return (output, permit, false),
        slow = slow_lane.clone().acquire_owned() => slow.ok(),
    };
    drop(permit);
    (request.await, slow, true)
}

/// Runs a request with its turn: the rate cap (`[daemon] max_requests_per_second`), then the
/// main lane holding `permit`, moving to the slow lane when it runs long (see [`in_lanes`]), or
/// the slow lane from the start when the last request was slow. `slow` says that, and is
/// updated: a request that moved, timed out, or ran long in the slow lane sends the next one
/// there. Returns the outcome and how long the request took; `permit` is the one held after.
pub async fn request<T>(
    shared: &super::Shared,
    slow: &mut bool,
    permit: &mut Option<OwnedSemaphorePermit>,
    request: impl std::future::Future<Output = Result<T, crate::error::RefreshError>>,
) -> (Result<T, crate::error::RefreshError>, Duration) {
    if let Some(rate) = &shared.rate {
        let waited = rate.acquire().await;
        if let (Some(observer), false) = (&shared.observer, waited.is_zero()) {
            observer.rate_limited(waited);
        }
    }
    let started = std::time::Instant::now();
    let main_lane = !*slow;
    let slow_after = shared.slow_after.get();
    let (outcome, kept, moved) = in_lanes(
        request,
        permit.take(),
        main_lane,
        &shared.slow_lane,
        slow_after,
    )
    .await;
    *permit = kept;
    let took = started.elapsed();
    let timed_out = matches!(&outcome, Err(err) if err.reason == crate::error::Reason::Timeout);
    *slow = moved || timed_out || (!main_lane && took >= slow_after);
    if main_lane && !moved && outcome.is_ok() {
        shared.slow_after.record(took);
    }
    (outcome, took)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn hardening_11_a_hanging_request_gives_its_main_permit_back() {
        let main = Arc::new(Semaphore::new(1));
        let slow = Arc::new(Semaphore::new(1));
        let permit = main.clone().acquire_owned().await.ok();
        let hanging = tokio::time::sleep(Duration::from_secs(30));
        let run = tokio::spawn({
            let slow = slow.clone();
            async move { in_lanes(hanging, permit, true, &slow, SLOW_AFTER).await }
        });
        // Before SLOW_AFTER the request holds the main lane...
        tokio::time::sleep(SLOW_AFTER / 2).await;
        assert_eq!(main.available_permits(), 0);
        // ...after it, the slow lane.
        tokio::time::sleep(SLOW_AFTER).await;
        assert_eq!(main.available_permits(), 1);
        assert_eq!(slow.available_permits(), 0);
        let ((), kept, moved) = run.await.unwrap();
        assert!(moved);
        drop(kept);
        assert_eq!(slow.available_permits(), 1);
    }

    #[test]
    fn the_slow_threshold_follows_the_typical_request_within_its_bounds() {
        let threshold = SlowAfter::new(SLOW_AFTER);
        assert_eq!(threshold.get(), SLOW_AFTER_MIN, "nothing measured yet");
        threshold.record(Duration::from_millis(10));
        assert_eq!(threshold.get(), Duration::from_millis(80));
        for _ in 0..100 {
            threshold.record(Duration::from_secs(30));
        }
        assert_eq!(threshold.get(), SLOW_AFTER, "capped at the ceiling");
        for _ in 0..200 {
            threshold.record(Duration::ZERO);
        }
        assert_eq!(threshold.get(), SLOW_AFTER_MIN, "never below the floor");
        threshold.record(Duration::MAX);
        assert_eq!(threshold.get(), SLOW_AFTER);
        assert_eq!(
            SlowAfter::new(Duration::ZERO).get(),
            SLOW_AFTER_MIN,
            "a ceiling below the floor is the floor"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_quick_request_stays_in_its_lane() {
        let main = Arc::new(Semaphore::new(1));
        let slow = Arc::new(Semaphore::new(1));
        let permit = main.clone().acquire_owned().await.ok();
        let quick = tokio::time::sleep(SLOW_AFTER / 4);
        let ((), kept, moved) = in_lanes(quick, permit, true, &slow, SLOW_AFTER).await;
        assert!(!moved && kept.is_some());
        assert_eq!(slow.available_permits(), 1);
        // A request already in the slow lane never moves.
        let permit = slow.clone().acquire_owned().await.ok();
        let long = tokio::time::sleep(SLOW_AFTER * 4);
        let ((), _kept, moved) = in_lanes(long, permit, false, &slow, SLOW_AFTER).await;
        assert!(!moved);
    }
}
