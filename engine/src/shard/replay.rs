//! The live-latency controller of one shard: how much of the shard replay may take.
//!
//! Why: replay and the live tail share each shard's CPU and its one io_uring. Left alone, replay
//! makes the thread 100% busy and queues its read-ahead in front of live writes (issue 10 saw
//! the live p99 go from 1.1 ms to 9.6 ms). The shard measures live latency in two sliding windows
//! of one second: appends (from the shard taking one to its acknowledgement) and tail deliveries
//! (from the shard taking an append to a consumer at the tail being handed its records,
//! `shard::tail`). Every tick an AIMD controller moves one level in `[FLOOR, 1]`: halved when
//! either window's p99 is over the budget, raised by a step when every window it can judge is
//! under three quarters of it (a window with fewer than `SAMPLES_MIN` samples has no say).
//! The level scales three knobs from their ceilings in `ReplayConfig`: the replay task queue's
//! shares (glommio dynamic shares; the live queue has 1000), the range tasks the shard folds at
//! once, and the depth of the shard's replay read budget: the disk reads all its replay readers
//! keep in flight together, one while a live write is in flight (`kappa_storage::ReadAhead`: live
//! writes stay ahead of replay reads in the shared io_uring). Replay never starves: while the
//! shard has replay work and its replay rate over the last second is below
//! `ReplayConfig::min_records_per_s`, the level is not lowered.
//!
//! The shard-side windows cannot see what a client waits for outside the shard's tasks: its
//! request in the shard's channel, its own thread's wait for a CPU. So a third window judges
//! the client-visible latency: each producer handle records, from any thread, its send to the
//! caller holding the acknowledgement (`shard::client`), and every tick the controller drains it.
//!
//! Below the floor, shares and depths have nothing left to give: they only split the shard
//! thread's own time, and the io_uring workers and client threads that share its CPU wait all the
//! same. So at the floor and still over budget, the controller may raise a **duty**: replay
//! tasks rest (a glommio timer, never a spin) `duty` percent of the time: having run a
//! `DUTY_PERIOD`'s share since their last rest, they rest in proportion to how long they ran
//! (`pause_after`), so the CPU goes idle unless live work runs. The duty falls by `DUTY_DOWN` per
//! tick under three quarters of the budget, or while replay runs below its minimum rate; the
//! level climbs again only once the duty is gone. `ReplayMetrics::paused_fraction` shows it.
//!
//! Pausing only helps when replay is what makes the live tail slow. The windows cannot tell
//! replay's share of the latency from the disk's or the machine's own (a virtio disk's append
//! p99 alone was past the 5 ms budget, and a duty that rose on every tick over budget cut the
//! rebuild to a sixth of its rate for nothing). So the duty moves by **trials**: for
//! `TRIAL_TICKS` ticks the duty in force alternates between two neighbouring duties (`DUTY_UP`
//! apart, in the order lo, hi, hi, lo, ... so a latency drifting over the trial favours
//! neither), each tick's samples count for the duty that was in force, and at the end the
//! higher duty is kept only when its p99 is at least `TRIAL_GAIN` below the lower one's.
//! A duty that helps is kept and the next trial probes one step above it (at once while its
//! p99 was still over budget, else once a whole window at it is over); one that does not help
//! falls back to the lower duty and settles there; when even the first step above zero buys
//! nothing, the duty stays at zero. After settling (and at `duty_max_percent`, where there is
//! nothing higher to probe) the next trial waits `BACKOFF_MIN_TICKS`, doubling each time up to
//! `BACKOFF_MAX_TICKS` (a helping trial resets it), so
//! a rebuild whose live latency is the disk's keeps its rate (a trial costs at most half a
//! step of pause for under a second). `ReplayConfig::duty_trials` off restores the old rule
//! (the duty rises by `DUTY_UP` every tick at the floor and over budget, up to
//! `ReplayConfig::duty_max_percent`; below 100: replay never stops).
//!
//! A busy replay queue also delays live work, whatever the level: glommio submits queued disk
//! I/O, reaps completions, fires timers and takes wakes from other threads only when it polls
//! its reactor, between task queues, and a replay queue that never runs dry lets it poll once
//! per preempt timer (1 ms at the default budget). Two things keep the live tail out of that
//! wait:
//! - a task of the live queue woken from another thread (a client's request, a consumer taking
//!   its batch) makes glommio preempt at once (its eventfd, because the live queue's latency
//!   matters), and the live queue woken at that reactor turn runs *before* replay: a patch of
//!   the vendored glommio (`third_party/glommio/KAPPA-PATCH.md`, the fifth); upstream ran
//!   replay one more whole preempt slice first, about 1 ms per request;
//! - while a live log write waits on the shard (`kappa_storage::writes_pending`: neither its
//!   submission nor its completion on the main ring wakes the executor), replay sleeps a few
//!   microseconds at least every `IO_TURN_EVERY` (`ReplayControl::io_turn`, all replay tasks
//!   together), and the reactor runs in between (`ReplayMetrics::io_turns`).
//!
//! Replay always catches up, however fast the producers: a fold chasing the live tail that has
//! not gained on it over a second (`Chase`) marks the shard behind, and the level climbs for the
//! next second whatever the live latency (the duty drops at once); one that still does not gain at the full level goes on
//! in the live queue, on an equal footing with the live versions, which keep up by definition.
//! Live latency then pays for a finite catch-up; the alternative is a rebuild that never ends.
//!
//! Everything here is `Rc`/`Cell`: it lives on the shard and is touched only by its tasks.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use glommio::SharesManager;
use kappa_storage::ReadAhead;

use super::client::ClientLatency;
use crate::config::ReplayConfig;

mod chase;
mod duty;
mod window;

pub(crate) use chase::{Chase, ChaseStep, CHASE_TICKS};
#[cfg(test)]
use duty::{pause_after, PAUSE_MAX};
use window::histogram;
pub(crate) use window::LiveWindow;

/// How often the controller looks and the window moves.
pub(crate) const TICK: Duration = Duration::from_millis(100);
/// Slots of the sliding window (one per tick): one second.
const SLOTS: usize = 10;
/// Below this many appends in the window there is no signal: replay may grow.
const SAMPLES_MIN: u64 = 20;
/// The lowest level (a fraction of every ceiling; each knob stays at least 1).
const FLOOR: f64 = 1.0 / 64.0;
/// The additive step per tick under budget.
const STEP: f64 = 1.0 / 16.0;
/// Replay's duty cycle: in every period, replay tasks sleep for its last `duty` percent.
/// Short enough that a live request arriving in replay's part of a period is not held long
/// (replay yields at the live queue's preemption point anyway); long enough that the pause
/// is worth a timer.
pub(crate) const DUTY_PERIOD: Duration = Duration::from_millis(10);
/// The duty's rise per tick at the floor and over budget, and its fall per tick under budget
/// or below the minimum rate (percent): up fast, down gently, as the level moves.
const DUTY_UP: u32 = 10;
const DUTY_DOWN: u32 = 5;
/// The highest duty a config may ask for: replay keeps at least this share of each period.
pub const DUTY_MAX_PERCENT: u32 = 95;
/// Ticks of one duty trial, half at each of its two duties (lo, hi, hi, lo, lo, hi, hi, lo).
pub(crate) const TRIAL_TICKS: u64 = 8;
/// How much lower (a fraction) the higher duty's p99 must be for its pause to count as bought.
const TRIAL_GAIN: f64 = 0.1;
/// While a live log write waits on the shard (`kappa_storage::writes_pending`), replay hands
/// glommio's reactor a turn at least this often: glommio submits queued disk I/O and reaps its
/// completions only when it polls its rings, which a busy replay queue allows once per preempt
/// timer (a fifth of the budget, 1 ms by default). A live append met that wait twice (its write
/// submitted at the next poll, its completion seen at the one after): about 2 ms of every
/// acknowledgement during a rebuild, budget or not.
pub(crate) const IO_TURN_EVERY: Duration = Duration::from_micros(100);
/// How long replay sleeps for such a turn: only long enough to be asleep when the executor
/// looks (a timer that has already expired when polled does not suspend the task).
const IO_TURN: Duration = Duration::from_micros(5);
/// After a trial found that no pause helps, ticks until the next one: doubled each time.
pub(crate) const BACKOFF_MIN_TICKS: u64 = 20;
pub(crate) const BACKOFF_MAX_TICKS: u64 = 160;

/// The replay queue's shares, read by glommio at each adjustment period.
#[derive(Debug)]
pub(crate) struct DynamicShares(Cell<usize>);

impl SharesManager for DynamicShares {
    fn shares(&self) -> usize {
        self.0.get()
    }
    fn adjustment_period(&self) -> Duration {
        TICK
    }
}

/// What the controller decided and saw, for metrics and progress.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReplayMetrics {
    /// The controller's level in (0, 1]: the fraction of the ceilings replay gets.
    pub level: f64,
    pub shares: usize,
    /// Range tasks this shard may fold at once.
    pub concurrency: usize,
    /// Disk reads all replay readers of the shard may keep in flight together (the budget's
    /// depth; one while a live write is in flight).
    pub read_ahead: usize,
    /// The replay read budget's counters: reads in flight now and at most, reads started while a
    /// live write was in flight, waits for room.
    pub read_budget: kappa_storage::ReadBudgetStats,
    /// Range tasks folding on this shard now, and finished so far.
    pub tasks_running: usize,
    pub tasks_done: u64,
    /// Records folded by replay on this shard (range tasks and whole-partition replay).
    pub records: u64,
    /// Replay records per second over the last second.
    pub records_per_s: f64,
    /// Live latency p99 over the last second: the largest of the append, tail-delivery and
    /// client-visible p99s (what the controller holds to the budget), their samples together,
    /// and the budget.
    pub live_p99_us: u64,
    pub live_samples: u64,
    pub budget_us: u64,
    /// Append latency (shard taking an append to its acknowledgement) over the last second.
    pub append_p99_us: u64,
    pub append_samples: u64,
    /// Tail-delivery latency (shard taking an append to a consumer at the tail being handed its
    /// records) over the last second.
    pub tail_p99_us: u64,
    pub tail_samples: u64,
    /// Folds that did not gain on the live tail at replay's full level and went on in the live
    /// queue (`Chase`).
    pub chases: u64,
    /// Ticks with replay work whose window p99 was over the budget, and all ticks with replay
    /// work: their ratio is the budget burn.
    pub ticks_over_budget: u64,
    pub ticks_replaying: u64,
    /// Client-visible latency over the last second: a producer's send to its caller holding the
    /// acknowledgement (`shard::client`), and its samples.
    pub client_p99_us: u64,
    pub client_samples: u64,
    /// The client-visible latency's first stage over the last second: an append request's wait
    /// in the shard's channel before the request loop took it.
    pub queue_p99_us: u64,
    pub queue_samples: u64,
    /// Replay's duty now: the percent of the time replay tasks rest, as the controller settled
    /// it (0 above the floor; a trial moves the one in force around it), and the fraction of
    /// the last second replay was paused by it.
    pub duty_percent: u32,
    pub paused_fraction: f64,
    /// Time replay was paused by the duty, in all.
    pub paused_ms: u64,
    /// Duty trials judged at the floor, and those whose higher duty lowered the live p99 (the
    /// pause was kept); the others fell back to the lower duty.
    pub duty_trials: u64,
    pub duty_trials_helped: u64,
    /// Turns replay handed the reactor because a live write waited on it (`IO_TURN_EVERY`).
    pub io_turns: u64,
}

impl ReplayMetrics {
    /// The share of replaying time the live p99 spent over its budget.
    pub fn budget_burn(&self) -> f64 {
        if self.ticks_replaying == 0 {
            0.0
        } else {
            self.ticks_over_budget as f64 / self.ticks_replaying as f64
        }
    }
}

pub(crate) struct ReplayControl {
    config: ReplayConfig,
    budget_ns: u64,
    level: Cell<f64>,
    shares: Rc<DynamicShares>,
    read_ahead: ReadAhead,
    permits: glommio::sync::Semaphore,
    concurrency: Cell<usize>,
    /// Permits to keep (not hand back) as tasks finish: a lowered concurrency.
    owed: Cell<usize>,
    /// Append latencies and tail-delivery latencies of the last second.
    append: RefCell<LiveWindow>,
    tail: RefCell<LiveWindow>,
    /// What clients recorded (any thread), drained into `client_window` each tick.
    client: Arc<ClientLatency>,
    client_window: RefCell<LiveWindow>,
    /// Append requests' waits in the channel (a stage of the client's latency; reported only).
    queue: RefCell<LiveWindow>,
    /// Replay's duty in force (percent of each `DUTY_PERIOD` its tasks sleep: what `pace`
    /// reads).
    duty: Cell<u32>,
    /// The duty the controller settled on; a trial moves the one in force around it.
    duty_base: Cell<u32>,
    /// The duty trial in progress, its samples per duty, and what the trials decided.
    trial: Cell<Option<Trial>>,
    arms: RefCell<[Arm; 2]>,
    /// The next trial probes above the settled duty (else below it).
    climbing: Cell<bool>,
    /// No trial before this tick, and the next back-off.
    trial_after: Cell<u64>,
    backoff: Cell<u64>,
    trials: Cell<u64>,
    trials_helped: Cell<u64>,
    /// Time paused by the duty, and until when it is counted (tasks pause together).
    paused_ns: Cell<u64>,
    paused_until: Cell<Instant>,
    /// `paused_ns` at each of the last `SLOTS` ticks.
    paused_at: RefCell<[u64; SLOTS]>,
    /// Until when replay sleeps for the reactor's turn (tasks sleep together), and the turns.
    turn_until: Cell<Instant>,
    io_turns: Cell<u64>,
    chases: Cell<u64>,
    /// Range tasks and whole-partition replays active on the shard.
    replaying: Cell<usize>,
    tasks_running: Cell<usize>,
    tasks_done: Cell<u64>,
    records: Cell<u64>,
    /// `records` at each of the last `SLOTS` ticks, for the rate over one second.
    records_at: RefCell<[u64; SLOTS]>,
    metrics: Cell<Option<ReplayMetrics>>,
    ticks_over: Cell<u64>,
    ticks_replaying: Cell<u64>,
    /// Ticks so far: the clock of `Chase`.
    ticks: Cell<u64>,
    /// Until this tick a replay on the shard is behind the live tail (`mark_behind`): the level
    /// climbs as for a starving replay.
    behind_until: Cell<u64>,
}

/// A duty trial (see the module's doc): its two duties, and the ticks judged so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Trial {
    duties: [u32; 2],
    ticks: u64,
}

impl Trial {
    /// The arm (0: the lower duty, 1: the higher) in force on the trial's tick `tick`: lo, hi,
    /// hi, lo, repeated, so a trend over the trial weighs on both arms alike.
    fn arm(tick: u64) -> usize {
        usize::from(matches!(tick % 4, 1 | 2))
    }
}

/// The samples of one trial arm, per window (append, tail, client), as in the live windows.
struct Arm([hdrhistogram::Histogram<u64>; 3]);

impl Arm {
    fn new() -> Arm {
        Arm([histogram(), histogram(), histogram()])
    }

    /// The p99 the controller would judge over these samples: the worst of the windows with
    /// enough samples to say anything; `None` when none has.
    fn judged(&self) -> Option<u64> {
        self.0.iter().filter(|h| h.len() >= SAMPLES_MIN).map(|h| h.value_at_quantile(0.99)).max()
    }
}

/// Now, for the duty cycle's schedule (pacing, never a record's time).
#[allow(clippy::disallowed_methods)]
fn now() -> Instant {
    Instant::now()
}

impl ReplayControl {
    pub(crate) fn new(
        config: ReplayConfig,
        budget: Duration,
        client: Arc<ClientLatency>,
    ) -> ReplayControl {
        let epoch = now();
        let control = ReplayControl {
            config,
            budget_ns: budget.as_nanos() as u64,
            level: Cell::new(1.0),
            shares: Rc::new(DynamicShares(Cell::new(config.shares_max))),
            read_ahead: ReadAhead::new(config.read_ahead_max),
            permits: glommio::sync::Semaphore::new(config.concurrency_max as u64),
            concurrency: Cell::new(config.concurrency_max),
            owed: Cell::new(0),
            append: RefCell::new(LiveWindow::new()),
            tail: RefCell::new(LiveWindow::new()),
            client,
            client_window: RefCell::new(LiveWindow::new()),
            queue: RefCell::new(LiveWindow::new()),
            duty: Cell::new(0),
            duty_base: Cell::new(0),
            trial: Cell::new(None),
            arms: RefCell::new([Arm::new(), Arm::new()]),
            climbing: Cell::new(true),
            trial_after: Cell::new(0),
            backoff: Cell::new(BACKOFF_MIN_TICKS),
            trials: Cell::new(0),
            trials_helped: Cell::new(0),
            paused_ns: Cell::new(0),
            paused_until: Cell::new(epoch),
            paused_at: RefCell::new([0; SLOTS]),
            turn_until: Cell::new(epoch),
            io_turns: Cell::new(0),
            chases: Cell::new(0),
            replaying: Cell::new(0),
            tasks_running: Cell::new(0),
            tasks_done: Cell::new(0),
            records: Cell::new(0),
            records_at: RefCell::new([0; SLOTS]),
            metrics: Cell::new(None),
            ticks_over: Cell::new(0),
            ticks_replaying: Cell::new(0),
            ticks: Cell::new(0),
            behind_until: Cell::new(0),
        };
        control.metrics.set(Some(control.snapshot(&Windows::default(), 0.0, 0.0)));
        control
    }

    /// The shares manager of the replay task queue.
    pub(crate) fn shares(&self) -> Rc<DynamicShares> {
        self.shares.clone()
    }

    /// The read budget every replay reader on this shard shares (the controller moves its depth).
    pub(crate) fn read_ahead(&self) -> ReadAhead {
        self.read_ahead.clone()
    }

    /// Controller ticks so far (`TICK` apart).
    pub(crate) fn ticks(&self) -> u64 {
        self.ticks.get()
    }

    /// The level now: 1.0 is everything the ceilings allow.
    pub(crate) fn level(&self) -> f64 {
        self.level.get()
    }

    /// A replay on this shard did not gain on the live tail over the last second: for the next
    /// second the level climbs as for a starving replay.
    pub(crate) fn mark_behind(&self) {
        self.behind_until.set(self.ticks.get() + CHASE_TICKS);
    }

    /// One append latency sample (from the shard taking the append to its acknowledgement).
    pub(crate) fn record_live(&self, ns: u64) {
        self.append.borrow_mut().record(ns);
    }

    /// One tail-delivery latency sample (from the shard taking an append to a consumer at the
    /// tail being handed its records).
    pub(crate) fn record_tail(&self, ns: u64) {
        self.tail.borrow_mut().record(ns);
    }

    /// One append request's wait in the shard's channel.
    pub(crate) fn record_queue(&self, ns: u64) {
        self.queue.borrow_mut().record(ns);
    }

    /// A fold went on in the live queue (`ChaseStep::Promote`).
    pub(crate) fn chased(&self) {
        self.chases.set(self.chases.get() + 1);
    }

    /// Records folded by replay on this shard.
    pub(crate) fn folded(&self, records: u64) {
        self.records.set(self.records.get() + records);
    }

    /// Marks replay work active on the shard until the guard drops.
    pub(crate) fn active(self: &Rc<Self>) -> Active {
        self.replaying.set(self.replaying.get() + 1);
        Active(self.clone())
    }

    /// Waits for one of the shard's range task slots (the controller's concurrency).
    pub(crate) async fn task_slot(self: &Rc<Self>) -> TaskSlot {
        // The semaphore is never closed, so acquiring cannot fail.
        let _ = self.permits.acquire(1).await;
        self.tasks_running.set(self.tasks_running.get() + 1);
        TaskSlot(self.clone())
    }

    fn release_slot(&self) {
        self.tasks_running.set(self.tasks_running.get() - 1);
        self.tasks_done.set(self.tasks_done.get() + 1);
        if self.owed.get() > 0 {
            self.owed.set(self.owed.get() - 1);
        } else {
            self.permits.signal(1);
        }
    }

    fn set_concurrency(&self, target: usize) {
        let now = self.concurrency.get();
        if target > now {
            let mut more = target - now;
            let forgiven = more.min(self.owed.get());
            self.owed.set(self.owed.get() - forgiven);
            more -= forgiven;
            self.permits.signal(more as u64);
        } else {
            for _ in target..now {
                // A free permit is taken back now; one held by a running task when it finishes.
                if !matches!(self.permits.try_acquire(1), Ok(true)) {
                    self.owed.set(self.owed.get() + 1);
                }
            }
        }
        self.concurrency.set(target);
    }

    /// One controller step: read the window, move the level, set the knobs, move the window.
    pub(crate) fn tick(&self) {
        {
            let mut window = self.client_window.borrow_mut();
            self.client.ack.drain(|ns, count| window.record_n(ns, count));
        }
        if let Some(trial) = self.trial.get() {
            // This tick's samples were taken under the trial's duty in force: they count for it.
            let mut arms = self.arms.borrow_mut();
            let arm = &mut arms[Trial::arm(trial.ticks)];
            let _ = arm.0[0].add(self.append.borrow().slot());
            let _ = arm.0[1].add(self.tail.borrow().slot());
            let _ = arm.0[2].add(self.client_window.borrow().slot());
        }
        let windows = Windows {
            append: self.append.borrow_mut().advance(),
            tail: self.tail.borrow_mut().advance(),
            client: self.client_window.borrow_mut().advance(),
            queue: self.queue.borrow_mut().advance(),
        };
        // The live p99 the controller judges: the worst of the windows with enough samples to
        // say anything (a tail nobody follows, or a second without appends, has no say).
        let judged = [windows.append, windows.tail, windows.client]
            .into_iter()
            .filter(|(_, samples)| *samples >= SAMPLES_MIN)
            .map(|(p99, _)| p99)
            .max();
        let records = self.records.get();
        let rate = {
            let mut at = self.records_at.borrow_mut();
            let oldest = at[0];
            at.rotate_left(1);
            at[SLOTS - 1] = records;
            (records - oldest) as f64 / (TICK.as_secs_f64() * SLOTS as f64)
        };
        let replaying = self.replaying.get() > 0;
        let over = judged.is_some_and(|p99| p99 > self.budget_ns);
        if replaying {
            self.ticks_replaying.set(self.ticks_replaying.get() + 1);
            if over {
                self.ticks_over.set(self.ticks_over.get() + 1);
            }
        }
        let paused = {
            let mut at = self.paused_at.borrow_mut();
            let oldest = at[0];
            at.rotate_left(1);
            at[SLOTS - 1] = self.paused_ns.get();
            ((self.paused_ns.get() - oldest) as f64 / (TICK.as_nanos() as f64 * SLOTS as f64))
                .min(1.0)
        };
        self.ticks.set(self.ticks.get() + 1);
        let behind = replaying && self.ticks.get() <= self.behind_until.get();
        let slow = replaying && rate < self.config.min_records_per_s as f64;
        let under = judged.is_none_or(|p99| p99 < self.budget_ns / 4 * 3);
        let duty_max = self.config.duty_max_percent.min(DUTY_MAX_PERCENT);
        let (level, duty) = (self.level.get(), self.duty_base.get());
        // Over budget implies not under it: the branch below that rests replay.
        let at_floor_over = over && !behind && !slow && level <= FLOOR;
        if !at_floor_over || !replaying || !self.config.duty_trials {
            // A trial runs only at the floor and over budget, without interruption.
            self.trial.set(None);
        }
        let (level, duty) = if behind {
            // Replay must gain on the tail: everything back, whatever the live latency.
            ((level + STEP).min(1.0), 0)
        } else if slow || (under && !over) {
            // Room (or a starving replay): first the duty goes, then the level climbs.
            if duty > 0 {
                (level, duty.saturating_sub(DUTY_DOWN))
            } else {
                ((level + STEP).min(1.0), 0)
            }
        } else if over && level > FLOOR {
            ((level / 2.0).max(FLOOR), duty)
        } else if over && !self.config.duty_trials {
            // At the floor and still over: shares cannot give the CPU away; rest replay.
            (FLOOR, (duty + DUTY_UP).min(duty_max))
        } else if over {
            // At the floor and still over: rest replay, as far as resting buys latency.
            (FLOOR, duty)
        } else {
            (level, duty)
        };
        self.level.set(level);
        // Nothing to pace without replay work.
        let duty = if replaying { duty } else { 0 };
        if !replaying {
            self.climbing.set(true);
            self.backoff.set(BACKOFF_MIN_TICKS);
            self.trial_after.set(0);
        }
        let duty = if at_floor_over && replaying && self.config.duty_trials && duty_max > 0 {
            self.trial_step(duty, duty_max)
        } else {
            duty
        };
        self.duty_base.set(duty);
        let in_force = match self.trial.get() {
            Some(trial) => trial.duties[Trial::arm(trial.ticks)],
            None => duty,
        };
        self.duty.set(in_force);
        let scaled = |max: usize| ((max as f64 * level).round() as usize).clamp(1, max);
        self.shares.0.set(scaled(self.config.shares_max));
        self.read_ahead.set(scaled(self.config.read_ahead_max));
        self.set_concurrency(scaled(self.config.concurrency_max));
        self.metrics.set(Some(self.snapshot(&windows, rate, paused)));
    }

    fn snapshot(&self, windows: &Windows, rate: f64, paused: f64) -> ReplayMetrics {
        let Windows { append, tail, client, queue } = *windows;
        ReplayMetrics {
            level: self.level.get(),
            shares: self.shares.0.get(),
            concurrency: self.concurrency.get(),
            read_ahead: self.read_ahead.get(),
            read_budget: self.read_ahead.stats(),
            tasks_running: self.tasks_running.get(),
            tasks_done: self.tasks_done.get(),
            records: self.records.get(),
            records_per_s: rate,
            live_p99_us: append.0.max(tail.0).max(client.0) / 1_000,
            live_samples: append.1 + tail.1 + client.1,
            budget_us: self.budget_ns / 1_000,
            append_p99_us: append.0 / 1_000,
            append_samples: append.1,
            tail_p99_us: tail.0 / 1_000,
            tail_samples: tail.1,
            chases: self.chases.get(),
            ticks_over_budget: self.ticks_over.get(),
            ticks_replaying: self.ticks_replaying.get(),
            client_p99_us: client.0 / 1_000,
            client_samples: client.1,
            queue_p99_us: queue.0 / 1_000,
            queue_samples: queue.1,
            duty_percent: self.duty_base.get(),
            paused_fraction: paused,
            paused_ms: self.paused_ns.get() / 1_000_000,
            duty_trials: self.trials.get(),
            duty_trials_helped: self.trials_helped.get(),
            io_turns: self.io_turns.get(),
        }
    }

    /// The last tick's figures, with the current task and record counts.
    pub(crate) fn metrics(&self) -> ReplayMetrics {
        let mut m = self.metrics.get().expect("set at creation");
        m.tasks_running = self.tasks_running.get();
        m.tasks_done = self.tasks_done.get();
        m.records = self.records.get();
        m.chases = self.chases.get();
        m.read_budget = self.read_ahead.stats();
        m.paused_ms = self.paused_ns.get() / 1_000_000;
        m.io_turns = self.io_turns.get();
        m
    }
}

/// Each window's (p99 ns, samples) at one tick.
#[derive(Debug, Clone, Copy, Default)]
struct Windows {
    append: (u64, u64),
    tail: (u64, u64),
    client: (u64, u64),
    queue: (u64, u64),
}

/// Replay work active on a shard (see `ReplayControl::active`).
pub(crate) struct Active(Rc<ReplayControl>);

impl Drop for Active {
    fn drop(&mut self) {
        self.0.replaying.set(self.0.replaying.get() - 1);
    }
}

/// A range task's slot; handed back (or kept, if the concurrency was lowered) on drop.
pub(crate) struct TaskSlot(Rc<ReplayControl>);

impl Drop for TaskSlot {
    fn drop(&mut self) {
        self.0.release_slot();
    }
}

/// Runs the controller every tick until the shard stops.
pub(crate) async fn control_loop(control: Rc<ReplayControl>, stopping: impl Fn() -> bool) {
    loop {
        glommio::timer::sleep(TICK).await;
        if stopping() {
            return;
        }
        control.tick();
    }
}

#[cfg(test)]
pub(crate) mod tests;
