//! Starts, stops and reconciles tenants, and wakes each one when its next step is due.
//!
//! A sleeping tenant is not a task: it is its [`Tenant`] in a table, with one entry in a queue
//! ordered by when its next step is due. One timer task sleeps until the earliest entry, then
//! runs every due step as its own task; a finished step puts its tenant back with its next
//! instant. A hundred thousand tenants thus cost one timer, not a hundred thousand tasks, futures
//! and timers, while each step still runs on its own (one slow tenant never delays another).
//!
//! Shutdown follows mini-redis: notify every task (a shared `CancellationToken`), then wait for
//! every task to finish (a `TaskTracker`), bounded by a grace period. Reload is a reconcile: a
//! removed tenant leaves the table (a step in flight is cancelled and awaited), a new tenant is
//! added, a changed tenant's old step is cancelled and awaited before the new tenant is added (so
//! two steps never write one file), and an unchanged tenant is not touched at all — it keeps
//! its token and its schedule.
//!
//! A step that panics (a bug: no input is meant to reach a panic) loses its tenant; a fresh one
//! takes its place after [`restart_delay`], which doubles from [`RESTART_DELAY_MIN`] to
//! [`RESTART_DELAY_MAX`] while the tenant keeps panicking. The fresh tenant warm-starts from its
//! token file like a restarted process would, so one tenant's bug neither kills that tenant for
//! good nor, through a failing liveness probe, every other tenant with it. Each panic is logged at
//! ERROR with its message, counted in `powerbi_tokend_task_panics_total` and in the tenant's
//! `/status` `task_panics`.

use futures_util::FutureExt;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::TenantConfig;
use crate::refresh::{Observer, Shared};
use crate::schedule;
use crate::status::{self, Registry, StatusHandle};
use crate::tenant::Tenant;

/// The wait before the first restart of a tenant whose step panicked: long enough that a tenant
/// panicking at start-up costs one log line a second at most, short enough that a one-off
/// panic goes unnoticed by the tenant's consumers.
pub const RESTART_DELAY_MIN: Duration = Duration::from_secs(1);

/// The longest wait between restarts of a tenant that keeps panicking; also how long a restarted
/// tenant must run before its next panic counts as a new one (the delay starts over).
pub const RESTART_DELAY_MAX: Duration = Duration::from_secs(300);

/// The wait before restarting a tenant that panicked after running for `ran_for`, given the wait
/// before its previous restart (`None` if it never panicked before).
///
/// Doubling from [`RESTART_DELAY_MIN`] up to [`RESTART_DELAY_MAX`] while it keeps panicking
/// soon after each restart; back to the minimum once it ran longer than the maximum.
pub fn restart_delay(previous: Option<Duration>, ran_for: Duration) -> Duration {
    match previous {
        Some(previous) if ran_for < RESTART_DELAY_MAX => previous
            .saturating_mul(2)
            .clamp(RESTART_DELAY_MIN, RESTART_DELAY_MAX),
        _ => RESTART_DELAY_MIN,
    }
}

/// A step's future: boxed, because each runs as its own task.
pub type StepFuture<'a> = Pin<Box<dyn Future<Output = Option<SystemTime>> + Send + 'a>>;

/// What the timer drives: a tenant's refresher, or a stand-in in tests.
pub trait Stepper: Send + 'static {
    /// What a fresh stepper is made from, kept for as long as the tenant is in the table.
    type Seed: Send + 'static;

    /// A fresh stepper: the first, and the one replacing a stepper lost to a panic.
    fn fresh(seed: &Self::Seed) -> Self;

    /// The tenant's name, for the log.
    fn name(seed: &Self::Seed) -> &str;

    /// Does what is due and returns when the next step is due; `None` once `cancel` fired.
    fn step<'a>(&'a mut self, cancel: &'a CancellationToken) -> StepFuture<'a>;

    /// Which lane its next step waits in (below [`LANES`]): steps in flight are bounded per lane.
    fn lane(&self) -> usize;
}

/// Lanes of steps: the warm start, the main lane, the slow lane, the Redis lane (see
/// [`Tenant::lane`]).
pub const LANES: usize = 4;

/// What a tenant is made from.
pub struct TenantSeed {
    /// Its settings.
    config: Arc<TenantConfig>,
    /// The daemon's shared pieces as they were when the tenant was added.
    shared: Arc<Shared>,
    /// Its status record.
    status: StatusHandle,
    /// The registry's count of tenants waiting for their first attempt.
    pending: Arc<crate::status::Pending>,
}

impl Stepper for Tenant {
    type Seed = TenantSeed;

    fn fresh(seed: &TenantSeed) -> Self {
        Tenant::new(
            seed.config.clone(),
            seed.shared.clone(),
            seed.status.clone(),
        )
        .counted_in(seed.pending.clone())
    }

    fn name(seed: &TenantSeed) -> &str {
        &seed.config.name
    }

    fn step<'a>(&'a mut self, cancel: &'a CancellationToken) -> StepFuture<'a> {
        Box::pin(Tenant::step(self, cancel))
    }

    fn lane(&self) -> usize {
        Tenant::lane(self)
    }
}

/// A tenant in the table.
struct Slot<T: Stepper> {
    /// What a replacement is made from after a panic.
    seed: T::Seed,
    /// Its status: panics are counted there.
    status: StatusHandle,
    /// Tells this tenant's queue entries and steps from those of an earlier occupant of the slot.
    generation: u32,
    /// The sleeping stepper; `None` while a step runs (the step task owns it).
    stepper: Option<Box<T>>,
    /// The step running now: cancelled and awaited when the tenant is removed.
    running: Option<(CancellationToken, JoinHandle<()>)>,
    /// When the current stepper was made (or is due, after a restart), for [`restart_delay`].
    born: Instant,
    /// The wait before the last restart, while the tenant keeps panicking.
    previous_delay: Option<Duration>,
}

/// A queue entry: slot `slot`'s next step is due at `at`, if the slot still holds `generation`.
/// Entries of removed tenants stay until they fall due and are then skipped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Due {
    /// When, on the monotonic clock: a step's wall-clock instant is turned into a delay when the
    /// step ends, as a sleeping task's timer would.
    at: Instant,
    /// Which slot.
    slot: u32,
    /// Which occupant of the slot.
    generation: u32,
}

/// Where a step in flight belongs.
#[derive(Clone, Copy, Debug)]
struct Place {
    /// Its tenant's slot.
    slot: u32,
    /// Its tenant's generation in the slot.
    generation: u32,
    /// The lane it was started in, whose place it frees when it ends.
    lane: usize,
}

/// Every tenant, and when each is due.
struct Table<T: Stepper> {
    /// Tenants by slot number; `None` for free slots.
    slots: Vec<Option<Slot<T>>>,
    /// Free slot numbers, reused before the table grows.
    free: Vec<u32>,
    /// Sleeping tenants by when their next step is due, earliest first.
    queue: BinaryHeap<Reverse<Due>>,
    /// Per lane, tenants that are due but wait for a place in flight, in the order they fell due.
    ready: [VecDeque<(u32, u32)>; LANES],
    /// Per lane, steps in flight.
    in_flight: [usize; LANES],
    /// Per lane, how many steps may be in flight. A step waits for its semaphore inside; the
    /// bound keeps ten thousand tenants falling due together (a cold start) from becoming ten
    /// thousand waiting tasks at once, while every lane keeps enough in flight to stay busy.
    budget: [usize; LANES],
    /// The next generation handed out.
    generation: u32,
}

impl<T: Stepper> Table<T> {
    /// The tenant in `slot`, if it is still the occupant `generation` names.
    fn entry(&mut self, slot: u32, generation: u32) -> Option<&mut Slot<T>> {
        self.slots
            .get_mut(slot as usize)
            .and_then(Option::as_mut)
            .filter(|entry| entry.generation == generation)
    }

    /// Whether a queue entry still stands for a tenant in the table.
    fn current(&self, due: &Due) -> bool {
        self.slots
            .get(due.slot as usize)
            .and_then(Option::as_ref)
            .is_some_and(|entry| entry.generation == due.generation)
    }
}

/// What the timer, the steps and the supervisor share.
struct Timetable<T: Stepper> {
    /// The table, locked briefly (never across an await).
    table: Mutex<Table<T>>,
    /// Wakes the timer: an entry earlier than the one it sleeps for was queued.
    wake: Notify,
    /// Parent of every step's cancel token: cancelling it stops the timer and every step.
    root: CancellationToken,
    /// Lets shutdown wait for the timer and every step.
    tracker: TaskTracker,
    /// Told about panics.
    observer: Option<Arc<dyn Observer>>,
}

impl<T: Stepper> Timetable<T> {
    /// An empty timetable whose timer is running, with `budget` steps in flight per lane.
    fn start(observer: Option<Arc<dyn Observer>>, budget: [usize; LANES]) -> Arc<Self> {
        let timetable = Arc::new(Timetable {
            table: Mutex::new(Table {
                slots: Vec::new(),
                free: Vec::new(),
                queue: BinaryHeap::new(),
                ready: Default::default(),
                in_flight: [0; LANES],
                budget: budget.map(|b| b.max(1)),
                generation: 0,
            }),
            wake: Notify::new(),
            root: CancellationToken::new(),
            tracker: TaskTracker::new(),
            observer,
        });
        timetable.tracker.spawn(timer(Arc::clone(&timetable)));
        timetable
    }

    fn lock(&self) -> MutexGuard<'_, Table<T>> {
        // A panic never happens while the lock is held (plain bookkeeping), and the table stays
        // consistent if one did: recover rather than stop every tenant.
        self.table
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Adds a tenant whose first step is due at once; returns its slot.
    #[cfg(test)]
    fn add(&self, seed: T::Seed, status: StatusHandle) -> u32 {
        let stepper = Box::new(T::fresh(&seed));
        self.add_made(seed, status, stepper)
    }

    /// Adds a tenant, made from `seed` by the caller, whose first step is due at once; returns
    /// its slot.
    fn add_made(&self, seed: T::Seed, status: StatusHandle, stepper: Box<T>) -> u32 {
        let now = Instant::now();
        let slot = {
            let mut table = self.lock();
            table.generation = table.generation.wrapping_add(1);
            let generation = table.generation;
            let entry = Slot {
                seed,
                status,
                generation,
                stepper: Some(stepper),
                running: None,
                born: now,
                previous_delay: None,
            };
            let slot = match table.free.pop() {
                Some(slot) => {
                    table.slots[slot as usize] = Some(entry);
                    slot
                }
                None => {
                    table.slots.push(Some(entry));
                    // Slot numbers fit: a table of 2^32 tenants does not fit in memory first.
                    u32::try_from(table.slots.len() - 1).unwrap_or(u32::MAX)
                }
            };
            table.queue.push(Reverse(Due {
                at: now,
                slot,
                generation,
            }));
            slot
        };
        self.wake.notify_one();
        slot
    }

    /// Removes a tenant: a step in flight is cancelled (an attempt already under way runs to
    /// completion) and awaited, so the tenant's files are no longer written when this returns.
    async fn remove(&self, slot: u32) {
        let running = {
            let mut table = self.lock();
            let Some(entry) = table.slots.get_mut(slot as usize).and_then(Option::take) else {
                return;
            };
            table.free.push(slot);
            // A removed tenant's queue entry stays until it falls due, possibly an hour away;
            // after reloads that replace many tenants, drop the stale entries at once rather
            // than hold them that long.
            let live = table.slots.len() - table.free.len();
            if table.queue.len() > 2 * live + 1024 {
                let mut queue = std::mem::take(&mut table.queue);
                queue.retain(|Reverse(due)| table.current(due));
                table.queue = queue;
            }
            entry.running
        };
        if let Some((cancel, task)) = running {
            cancel.cancel();
            let _ = task.await;
        }
    }

    /// Starts every step that is due, as far as its lane's budget allows; returns when the next
    /// one falls due.
    fn dispatch(self: &Arc<Self>) -> Option<Instant> {
        let now = Instant::now();
        let mut guard = self.lock();
        let table = &mut *guard;
        let mut next = None;
        while let Some(Reverse(due)) = table.queue.peek().copied() {
            if due.at > now {
                next = Some(due.at);
                break;
            }
            table.queue.pop();
            let Some(stepper) = table
                .entry(due.slot, due.generation)
                .and_then(|entry| entry.stepper.as_ref())
            else {
                continue;
            };
            let lane = stepper.lane().min(LANES - 1);
            table.ready[lane].push_back((due.slot, due.generation));
        }
        self.start_ready(table);
        next
    }

    /// Starts steps that wait in a lane's ready queue, as far as the lane's budget allows.
    fn start_ready(self: &Arc<Self>, table: &mut Table<T>) {
        if self.root.is_cancelled() {
            // Stopping: nothing new starts.
            return;
        }
        for lane in 0..LANES {
            while table.in_flight[lane] < table.budget[lane] {
                let Some((slot, generation)) = table.ready[lane].pop_front() else {
                    break;
                };
                let Some(entry) = table.entry(slot, generation) else {
                    continue;
                };
                let Some(stepper) = entry.stepper.take() else {
                    continue;
                };
                let cancel = self.root.child_token();
                let task = self.tracker.spawn(run_step(
                    Arc::clone(self),
                    Place {
                        slot,
                        generation,
                        lane,
                    },
                    stepper,
                    cancel.clone(),
                ));
                entry.running = Some((cancel, task));
                table.in_flight[lane] += 1;
            }
        }
    }

    /// A step ended for good (its tenant is leaving): frees its place in flight.
    fn release(self: &Arc<Self>, place: Place) {
        let mut table = self.lock();
        self.finished(&mut table, place.lane);
    }

    /// Sets how many steps may be in flight per lane.
    fn set_budget(&self, budget: [usize; LANES]) {
        self.lock().budget = budget.map(|b| b.max(1));
        self.wake.notify_one();
    }

    /// A step of `lane` ended: its place in flight goes to a waiting step at once, started by
    /// the task that ends rather than by the timer, which would have to be woken for it.
    fn finished(self: &Arc<Self>, table: &mut Table<T>, lane: usize) {
        table.in_flight[lane] = table.in_flight[lane].saturating_sub(1);
        if !table.ready[lane].is_empty() {
            self.start_ready(table);
        }
    }

    /// A step ended: puts its stepper back, due at `when` (`None`: cancelled, the tenant is
    /// leaving).
    fn requeue(self: &Arc<Self>, place: Place, stepper: Box<T>, when: Option<SystemTime>) {
        let Place {
            slot,
            generation,
            lane,
        } = place;
        let mut table = self.lock();
        let mut wake = false;
        if let (Some(when), Some(entry)) = (when, table.entry(slot, generation)) {
            entry.stepper = Some(stepper);
            entry.running = None;
            let at = monotonic(when);
            wake = table
                .queue
                .peek()
                .is_none_or(|Reverse(first)| at < first.at);
            table.queue.push(Reverse(Due {
                at,
                slot,
                generation,
            }));
        }
        self.finished(&mut table, lane);
        drop(table);
        if wake {
            self.wake.notify_one();
        }
    }

    /// A step panicked: counts it, and queues a fresh stepper after [`restart_delay`].
    fn restart(self: &Arc<Self>, place: Place, message: &str) {
        let Place {
            slot,
            generation,
            lane,
        } = place;
        let mut table = self.lock();
        self.finished(&mut table, lane);
        let Some(entry) = table.entry(slot, generation) else {
            return;
        };
        let now = Instant::now();
        let delay = restart_delay(
            entry.previous_delay,
            now.saturating_duration_since(entry.born),
        );
        entry.previous_delay = Some(delay);
        entry.running = None;
        let at = now + delay;
        {
            let mut status = status::lock(&entry.status);
            status.task_panics = status.task_panics.saturating_add(1);
            status.token.next_refresh = Some(schedule::later(SystemTime::now(), delay));
        }
        // Made now, not when due, so that a panic while making it is the supervisor's to see at
        // once rather than a silent loss; `born` counts from the restart.
        entry.stepper = Some(Box::new(T::fresh(&entry.seed)));
        entry.born = at;
        let name = T::name(&entry.seed).to_owned();
        table.queue.push(Reverse(Due {
            at,
            slot,
            generation,
        }));
        drop(table);
        self.wake.notify_one();
        if let Some(observer) = &self.observer {
            observer.task_panicked();
        }
        tracing::error!(
            tenant = %name,
            panic = %message,
            restart_in = %humantime::format_duration(delay),
            "refresh task panicked (a bug: please report it with this line); restarting it"
        );
    }
}

/// The longest a step may be put off: far beyond any token's lifetime or cron period, and far
/// from the monotonic clock's limits.
const LONGEST_SLEEP: Duration = Duration::from_secs(10 * 366 * 24 * 3600);

/// `when` on the monotonic clock: the delay from now (none if it has passed).
fn monotonic(when: SystemTime) -> Instant {
    let delay = when
        .duration_since(SystemTime::now())
        .unwrap_or(Duration::ZERO)
        .min(LONGEST_SLEEP);
    Instant::now() + delay
}

/// The timer: sleeps until the earliest due step (or until woken for an earlier one), starts
/// every due step, until shutdown.
async fn timer<T: Stepper>(timetable: Arc<Timetable<T>>) {
    loop {
        let next = timetable.dispatch();
        tokio::select! {
            biased;
            () = timetable.root.cancelled() => return,
            () = timetable.wake.notified() => {}
            () = async {
                match next {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            } => {}
        }
    }
}

/// One step of one tenant, as its own task: the stepper goes back into the table with its next
/// instant, or is replaced after a panic.
async fn run_step<T: Stepper>(
    timetable: Arc<Timetable<T>>,
    place: Place,
    mut stepper: Box<T>,
    cancel: CancellationToken,
) {
    let outcome = AssertUnwindSafe(async {
        let next = stepper.step(&cancel).await;
        (stepper, next)
    })
    .catch_unwind()
    .await;
    match outcome {
        // `None`: cancelled, the tenant is being removed or the daemon stops.
        Ok((stepper, next)) => timetable.requeue(place, stepper, next),
        Err(panic) => {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            drop(panic);
            if cancel.is_cancelled() {
                tracing::error!(panic = %message, "refresh task panicked while stopping");
                timetable.release(place);
                return;
            }
            timetable.restart(place, &message);
        }
    }
}

/// Steps in flight per lane: the warm start as many as read at once; each request lane four
/// times its permits, so a lane never idles for want of a started step, and the steps that wait
/// for its permits stay few; the Redis lane [`REDIS_STEPS`].
fn budget(shared: &Shared) -> [usize; LANES] {
    // Called with a fresh semaphore, none of whose permits is taken yet: all of them are
    // available.
    let permits = shared.limiter.available_permits();
    [
        START_UP_READS,
        permits.saturating_mul(4),
        permits.saturating_mul(4),
        REDIS_STEPS,
    ]
}

/// How many tenants read their existing tokens at once at start-up (the warm-start lane's
/// budget): enough to keep the disk or Redis busy, few enough that ten thousand reads in flight
/// at a cold start (file reads queued for the blocking pool, GETs pipelined to Redis) do not
/// each hold their buffers at the same moment, the daemon's peak.
const START_UP_READS: usize = 64;

/// Steps in flight in the Redis lane. Their commands share one multiplexed connection, so many
/// cost little; while Redis hangs, each waits at most its command timeout before the store
/// answers the next ones at once, so the lane drains within seconds of a freeze.
const REDIS_STEPS: usize = 256;

/// A tenant the supervisor runs, found by its name: the settings it was started with (to
/// detect changes on reload) are the key, so the name is not copied once more per tenant.
struct Running(Arc<TenantConfig>);

impl std::hash::Hash for Running {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.name.as_str().hash(state);
    }
}

impl PartialEq for Running {
    fn eq(&self, other: &Self) -> bool {
        self.0.name == other.0.name
    }
}

impl Eq for Running {}

impl std::borrow::Borrow<str> for Running {
    fn borrow(&self) -> &str {
        &self.0.name
    }
}

/// What a reconcile did, for the log.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Reconciled {
    /// Tenants started.
    pub added: Vec<String>,
    /// Tenants stopped for good.
    pub removed: Vec<String>,
    /// Tenants restarted with new settings.
    pub changed: Vec<String>,
    /// Tenants left running as they were.
    pub unchanged: usize,
}

/// Owns every tenant.
pub struct Supervisor {
    /// Handed to every tenant added from now on.
    shared: Arc<Shared>,
    /// Status of every tenant, shared with the admin server.
    registry: Registry,
    /// The tenants, their timer and their steps.
    timetable: Arc<Timetable<Tenant>>,
    /// Tenants by name, with their slots in the timetable.
    running: HashMap<Running, u32>,
}

impl Supervisor {
    /// A supervisor with no tenants yet.
    pub fn new(shared: Shared, registry: Registry) -> Self {
        let timetable = Timetable::start(shared.observer.clone(), budget(&shared));
        Supervisor {
            shared: Arc::new(shared),
            registry,
            timetable,
            running: HashMap::new(),
        }
    }

    /// Replaces the shared pieces used by tenants added from now on (a reload with new knobs).
    pub fn set_shared(&mut self, shared: Shared) {
        self.timetable.set_budget(budget(&shared));
        self.shared = Arc::new(shared);
    }

    /// Makes the running set match `tenants`. With `restart_all`, running tenants are restarted
    /// even when unchanged (new daemon-wide knobs); warm start keeps them from refetching.
    ///
    /// An unchanged tenant's entry in `tenants` is replaced by the settings it runs with (equal
    /// by value), so the reloaded copy is freed at once instead of living on beside it.
    ///
    /// `on_disk`: the token files that may exist (from [`crate::sink::clean_up`]); a tenant
    /// started now none of whose files is among them skips reading them for its warm start.
    /// `None`: unknown, every tenant reads its files.
    pub async fn reconcile(
        &mut self,
        tenants: &mut [Arc<TenantConfig>],
        restart_all: bool,
        on_disk: Option<&HashSet<PathBuf>>,
    ) -> Reconciled {
        let mut result = Reconciled::default();
        let wanted: HashMap<&str, &Arc<TenantConfig>> =
            tenants.iter().map(|t| (t.name.as_str(), t)).collect();
        let gone: Vec<String> = self
            .running
            .keys()
            .filter(|running| !wanted.contains_key(running.0.name.as_str()))
            .map(|running| running.0.name.clone())
            .collect();
        for name in gone {
            if let Some(slot) = self.running.remove(name.as_str()) {
                self.timetable.remove(slot).await;
            }
            // Its status, and so every metric series of it, goes with it.
            self.registry.remove(&name);
            result.removed.push(name);
        }
        for tenant in tenants.iter_mut() {
            match self.running.get_key_value(tenant.name.as_str()) {
                // The same Arc when the reload reused the running tenant (the usual case): no
                // field-by-field comparison.
                Some((running, _))
                    if (Arc::ptr_eq(&running.0, tenant) || running.0 == *tenant)
                        && !restart_all =>
                {
                    *tenant = running.0.clone();
                    result.unchanged += 1;
                    continue;
                }
                Some(_) => {
                    if let Some(slot) = self.running.remove(tenant.name.as_str()) {
                        self.timetable.remove(slot).await;
                    }
                    result.changed.push(tenant.name.clone());
                }
                None => result.added.push(tenant.name.clone()),
            }
            self.start(tenant.clone(), on_disk);
        }
        result.removed.sort();
        result
    }

    fn start(&mut self, config: Arc<TenantConfig>, on_disk: Option<&HashSet<PathBuf>>) {
        let status = self.registry.insert(&config.name);
        // The tenant is made here, not in its first step, so its status (credential expiry) is
        // filled in before `reconcile` returns.
        let seed = TenantSeed {
            config: config.clone(),
            shared: self.shared.clone(),
            status: status.clone(),
            pending: self.registry.pending_count(),
        };
        let mut tenant = Box::new(Tenant::fresh(&seed));
        if let Some(present) = on_disk {
            tenant.note_files_on_disk(present);
        }
        let slot = self.timetable.add_made(seed, status, tenant);
        self.running.insert(Running(config), slot);
    }

    /// Stops every tenant: no new steps start; attempts in flight get `grace` to finish.
    /// Returns whether every attempt finished in time.
    pub async fn shutdown(self, grace: Duration) -> bool {
        self.timetable.root.cancel();
        self.timetable.tracker.close();
        tokio::time::timeout(grace, self.timetable.tracker.wait())
            .await
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

    #[test]
    fn restart_delay_doubles_while_crash_looping_and_starts_over_after_a_long_run() {
        let quick = Duration::from_millis(10);
        assert_eq!(restart_delay(None, quick), RESTART_DELAY_MIN);
        let mut delay = None;
        let mut seen = Vec::new();
        for _ in 0..12 {
            let next = restart_delay(delay, quick);
            seen.push(next.as_secs());
            delay = Some(next);
        }
        assert_eq!(seen, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300]);
        // A task that ran longer than the longest delay panicked anew: back to the minimum.
        assert_eq!(
            restart_delay(Some(RESTART_DELAY_MAX), RESTART_DELAY_MAX),
            RESTART_DELAY_MIN
        );
        assert_eq!(restart_delay(Some(Duration::MAX), quick), RESTART_DELAY_MAX);
        assert_eq!(
            restart_delay(Some(Duration::ZERO), quick),
            RESTART_DELAY_MIN
        );
    }

    #[derive(Debug, Default)]
    struct CountingObserver {
        panics: AtomicU64,
    }

    impl Observer for CountingObserver {
        fn request_finished(&self, _: Duration) {}

        fn task_panicked(&self) {
            self.panics.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// What the stand-in steppers share: how many were made, when each first stepped, and how
    /// many of them panic.
    struct Script {
        /// Steppers made so far.
        made: AtomicU32,
        /// The first `panicking` steppers panic in their first step; the rest wait for cancel.
        panicking: u32,
        /// Receives the instant of every first step.
        started: tokio::sync::mpsc::UnboundedSender<tokio::time::Instant>,
    }

    /// No input is known to reach a panic any more, so the panic is provoked by a stand-in.
    struct StandIn {
        /// Which stepper this is, from 0.
        number: u32,
        /// The shared script.
        script: Arc<Script>,
    }

    impl Stepper for StandIn {
        type Seed = Arc<Script>;

        fn fresh(script: &Arc<Script>) -> Self {
            StandIn {
                number: script.made.fetch_add(1, Ordering::SeqCst),
                script: script.clone(),
            }
        }

        fn name(_: &Arc<Script>) -> &str {
            "contoso"
        }

        fn step<'a>(&'a mut self, cancel: &'a CancellationToken) -> StepFuture<'a> {
            Box::pin(async move {
                let _ = self.script.started.send(tokio::time::Instant::now());
                if self.number < self.script.panicking {
                    panic!("stand-in panic {}", self.number);
                }
                cancel.cancelled().await;
                None
            })
        }

        fn lane(&self) -> usize {
            0
        }
    }

    fn script(
        panicking: u32,
    ) -> (
        Arc<Script>,
        tokio::sync::mpsc::UnboundedReceiver<tokio::time::Instant>,
    ) {
        let (started, starts) = tokio::sync::mpsc::unbounded_channel();
        let script = Arc::new(Script {
            made: AtomicU32::new(0),
            panicking,
            started,
        });
        (script, starts)
    }

    #[tokio::test(start_paused = true)]
    async fn hardening_panicked_tenant_is_restarted() {
        let status = StatusHandle::default();
        let observer = Arc::new(CountingObserver::default());
        let timetable =
            Timetable::<StandIn>::start(Some(observer.clone() as Arc<dyn Observer>), [2; LANES]);
        let (script, mut starts) = script(2);
        let slot = timetable.add(script.clone(), status.clone());
        let first = starts.recv().await.unwrap();
        let second = starts.recv().await.unwrap();
        let third = starts.recv().await.unwrap();
        assert_eq!(second - first, RESTART_DELAY_MIN);
        assert_eq!(third - second, RESTART_DELAY_MIN * 2);
        assert_eq!(status::lock(&status).task_panics, 2);
        assert_eq!(observer.panics.load(Ordering::SeqCst), 2);
        // The third stepper is alive; removing the tenant cancels its step and waits for it,
        // without a restart.
        timetable.remove(slot).await;
        assert_eq!(script.made.load(Ordering::SeqCst), 3);
        assert!(timetable.lock().slots[slot as usize].is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_removed_tenant_waiting_for_its_restart_is_not_restarted() {
        let status = StatusHandle::default();
        let timetable = Timetable::<StandIn>::start(None, [2; LANES]);
        let (script, mut starts) = script(u32::MAX);
        let slot = timetable.add(script.clone(), status.clone());
        starts.recv().await.unwrap();
        // Await the condition: the step panics, the panic is counted, a restart is queued.
        while status::lock(&status).task_panics == 0 {
            tokio::task::yield_now().await;
        }
        timetable.remove(slot).await;
        tokio::time::sleep(RESTART_DELAY_MAX).await;
        assert!(starts.try_recv().is_err(), "a removed tenant was restarted");
        // The first stepper and the replacement made at the panic; no step of the latter ran.
        assert_eq!(script.made.load(Ordering::SeqCst), 2);
    }

    /// Steps become due in their own order, each at its instant, and a step queued earlier than
    /// the one the timer sleeps for wakes it.
    #[tokio::test(start_paused = true)]
    async fn each_step_runs_when_it_is_due() {
        struct Ticker {
            /// Every step's (tenant, instant).
            log: tokio::sync::mpsc::UnboundedSender<(u32, tokio::time::Instant)>,
            /// This tenant's number, also its period in seconds.
            number: u32,
        }
        impl Stepper for Ticker {
            type Seed = (
                u32,
                tokio::sync::mpsc::UnboundedSender<(u32, tokio::time::Instant)>,
            );
            fn fresh(seed: &Self::Seed) -> Self {
                Ticker {
                    number: seed.0,
                    log: seed.1.clone(),
                }
            }
            fn name(_: &Self::Seed) -> &str {
                "ticker"
            }
            fn step<'a>(&'a mut self, _: &'a CancellationToken) -> StepFuture<'a> {
                Box::pin(async move {
                    let _ = self.log.send((self.number, tokio::time::Instant::now()));
                    Some(SystemTime::now() + Duration::from_secs(u64::from(self.number)))
                })
            }
            fn lane(&self) -> usize {
                1
            }
        }
        let (log, mut steps) = tokio::sync::mpsc::unbounded_channel();
        let timetable = Timetable::<Ticker>::start(None, [2; LANES]);
        let begin = tokio::time::Instant::now();
        timetable.add((7, log.clone()), StatusHandle::default());
        timetable.add((3, log.clone()), StatusHandle::default());
        let mut seen = Vec::new();
        while seen.len() < 6 {
            let (number, at) = steps.recv().await.unwrap();
            seen.push((number, (at - begin).as_secs_f64().round() as u64));
        }
        seen.sort();
        assert_eq!(seen, [(3, 0), (3, 3), (3, 6), (3, 9), (7, 0), (7, 7)]);
    }

    /// Fifty tenants falling due at once (a cold start) become at most the lane's budget of
    /// steps in flight, and every one of them still steps.
    #[tokio::test(start_paused = true)]
    async fn steps_in_flight_stay_within_the_lane_budget() {
        #[derive(Default)]
        struct Load {
            /// Steps running now.
            now: AtomicU32,
            /// The most that ran at once.
            most: AtomicU32,
            /// Steps finished.
            done: AtomicU32,
        }
        struct Busy(Arc<Load>);
        impl Stepper for Busy {
            type Seed = Arc<Load>;
            fn fresh(load: &Arc<Load>) -> Self {
                Busy(load.clone())
            }
            fn name(_: &Arc<Load>) -> &str {
                "busy"
            }
            fn step<'a>(&'a mut self, _: &'a CancellationToken) -> StepFuture<'a> {
                Box::pin(async move {
                    let running = self.0.now.fetch_add(1, Ordering::SeqCst) + 1;
                    self.0.most.fetch_max(running, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    self.0.now.fetch_sub(1, Ordering::SeqCst);
                    self.0.done.fetch_add(1, Ordering::SeqCst);
                    Some(SystemTime::now() + Duration::from_secs(3600))
                })
            }
            fn lane(&self) -> usize {
                1
            }
        }
        let load = Arc::new(Load::default());
        let timetable = Timetable::<Busy>::start(None, [1, 3, 1, 1]);
        for _ in 0..50 {
            timetable.add(load.clone(), StatusHandle::default());
        }
        while load.done.load(Ordering::SeqCst) < 50 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(load.most.load(Ordering::SeqCst), 3);
        let table = timetable.lock();
        assert_eq!(table.in_flight, [0; LANES]);
        assert!(table.ready.iter().all(VecDeque::is_empty));
    }

    /// A reload that leaves a tenant as it was keeps one copy of its settings: the reloaded
    /// one is swapped for the running one, not kept beside it.
    #[tokio::test]
    async fn an_unchanged_tenant_keeps_one_copy_of_its_settings() {
        let daemon = crate::config::DaemonConfig::default();
        let shared = Shared {
            client: crate::client::TokenClient::new(&daemon).unwrap(),
            key_vaults: None,
            limiter: Arc::new(tokio::sync::Semaphore::new(1)),
            slow_lane: Arc::new(tokio::sync::Semaphore::new(1)),
            slow_after: Arc::new(crate::refresh::lanes::SlowAfter::new(
                Duration::from_millis(500),
            )),
            policy: crate::refresh::RetryPolicy::from(&daemon),
            rate: None,
            store: None,
            fleet: None,
            observer: None,
            once: false,
        };
        let dir = tempfile::tempdir().unwrap();
        let config = || {
            Arc::new(TenantConfig::entra(
                "contoso",
                "contoso.example.com",
                "00000000-0000-0000-0000-000000000001",
                crate::config::SecretSource::Env("POWERBI_TOKEND_TEST_UNSET".into()),
                // Nothing listens there: the attempt fails at once, without leaving the host.
                "http://127.0.0.1:1",
                dir.path().join("contoso.json"),
            ))
        };
        let mut supervisor = Supervisor::new(shared, Registry::new());
        let mut first = vec![config()];
        supervisor.reconcile(&mut first, false, None).await;
        let mut reloaded = vec![config()];
        assert!(!Arc::ptr_eq(&first[0], &reloaded[0]));
        let result = supervisor.reconcile(&mut reloaded, false, None).await;
        assert_eq!(result.unchanged, 1);
        assert!(Arc::ptr_eq(&first[0], &reloaded[0]));
        assert!(supervisor.shutdown(Duration::from_secs(5)).await);
    }

    /// Removed tenants' queue entries do not pile up over reloads that replace many tenants.
    #[tokio::test(start_paused = true)]
    async fn removed_tenants_leave_no_pile_of_queue_entries() {
        struct Sleeper;
        impl Stepper for Sleeper {
            type Seed = ();
            fn fresh(_: &()) -> Self {
                Sleeper
            }
            fn name(_: &()) -> &str {
                "sleeper"
            }
            fn step<'a>(&'a mut self, _: &'a CancellationToken) -> StepFuture<'a> {
                Box::pin(async { Some(SystemTime::now() + Duration::from_secs(3600)) })
            }
            fn lane(&self) -> usize {
                1
            }
        }
        let timetable = Timetable::<Sleeper>::start(None, [64; LANES]);
        for _ in 0..3 {
            let slots: Vec<u32> = (0..1000)
                .map(|_| timetable.add((), StatusHandle::default()))
                .collect();
            for slot in slots {
                timetable.remove(slot).await;
            }
        }
        let table = timetable.lock();
        assert!(
            table.queue.len() <= 1024 + 1,
            "{} entries",
            table.queue.len()
        );
        assert_eq!(table.slots.len(), 1000);
    }
}
