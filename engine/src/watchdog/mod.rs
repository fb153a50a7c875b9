//! The executor watchdog: a guard against a glommio executor that sleeps while it has work to do.
//!
//! Why it exists: glommio 0.9 can park an executor with runnable tasks. Its loop arms the preempt
//! timer in `poll_io`, then `run_task_queues` checks `need_preempt()` *before* running the first
//! task queue; when the thread lost the CPU for longer than the preempt timer in between (another
//! process on the core), the check is already true, `run_task_queues` returns "ran nothing", and
//! the loop parks with no timeout although the queue it skipped still holds runnable tasks. The
//! kernel has nothing of ours in flight then, so only an unrelated event (another completion, a
//! timer, a cross-thread wake, a signal) wakes the executor: with one I/O at a time it sleeps
//! for minutes. `tests/src/bin/uring_stress.rs` reproduces it and ARCHITECTURE.md has the details.
//!
//! Two layers, both cheap:
//! - **The pulse.** A task on every watched executor wakes every `pulse_interval` (a glommio
//!   timer) and bumps an atomic. It keeps two timers armed, an interval apart, so the reactor
//!   always holds a pending timer and never parks without a timeout: a stranded task waits at
//!   most about one interval. This alone bounds the glommio stall.
//! - **The watchdog.** One plain thread reads the pulses. A pulse that has not moved for
//!   `stall_after` means the executor thread has not come back to its scheduler: stranded before
//!   its pulse ever ran, stuck in a syscall (a wake-up lost in the kernel would look so), or in a
//!   task that blocks or never yields. The watchdog logs a warning naming the executor and the
//!   stall, counts it, and kicks the thread with a signal whose handler does nothing (installed
//!   without `SA_RESTART`): an `io_uring_enter` wait returns `EINTR`, glommio treats that as a
//!   wake-up and goes round its loop again, which is what a `kill -STOP`/`-CONT` did by hand.
//!   Blocking calls that cannot be interrupted (an fsync) are not harmed: the handler runs when
//!   they return.
//!
//! The race can strand an executor's very first task, before any pulse could be attached from
//! inside it, so `spawn_executor` registers the thread with the watchdog before the executor's
//! loop starts (the engine's shards and the bench harness's executors start this way).
//!
//! The decision is `Tracker::observe`, a pure function of the beat count and the time, so it is
//! unit-tested without threads or clocks.

mod kick;
pub(crate) mod overrun;
mod pulse;

pub use kick::{gettid, install_kick_handler, kick_signal, kick_thread};
pub(crate) use pulse::spawn_executor_reporting;
pub use pulse::{spawn_executor, Attached, ExecutorError, ExecutorHandle, Pulse, Registered};

use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};
use std::time::Duration;

/// How the pulses beat and when the watchdog acts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchdogConfig {
    /// Off: no pulse task, no watchdog thread (the glommio stall is then unbounded).
    pub enabled: bool,
    /// How often a watched executor's pulse task beats. It also bounds how long glommio can leave
    /// a runnable task parked, so keep it within the latency budget. Each beat wakes an idle
    /// executor once: measured about 1% of a core per idle executor at 5 ms (glommio's park and
    /// wake cost tens of microseconds), nothing noticeable on a busy one.
    pub pulse_interval: Duration,
    /// A pulse unchanged for this long is a stall: warn, count, and kick (then again every
    /// `stall_after` while it lasts).
    pub stall_after: Duration,
    /// Send the kick signal (otherwise only warn and count).
    pub kick: bool,
}

impl Default for WatchdogConfig {
    fn default() -> Self {
        WatchdogConfig {
            enabled: true,
            pulse_interval: Duration::from_millis(5),
            stall_after: Duration::from_millis(200),
            kick: true,
        }
    }
}

impl WatchdogConfig {
    pub(crate) fn validate(&self) -> Result<(), crate::Error> {
        if !self.enabled {
            return Ok(());
        }
        if self.pulse_interval.is_zero() {
            return Err(crate::Error::Config {
                field: "watchdog.pulse_interval",
                reason: "must be positive".into(),
            });
        }
        if self.stall_after < self.pulse_interval * 4 {
            return Err(crate::Error::Config {
                field: "watchdog.stall_after",
                reason: format!(
                    "{:?} is under four pulse intervals ({:?}): every late timer would be a stall",
                    self.stall_after, self.pulse_interval
                ),
            });
        }
        Ok(())
    }
}

/// What the watchdog makes of one look at a pulse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// The pulse moved recently.
    Healthy,
    /// Unchanged for `stalled`; `kick` says whether to signal now, `first` whether this stall
    /// was just detected.
    Stalled { stalled: Duration, kick: bool, first: bool },
    /// It moved again after a stall of about `stalled`.
    Resumed { stalled: Duration, kicks: u32 },
}

/// The watchdog's memory of one pulse: when its count last changed and whether it is in a stall.
#[derive(Debug, Clone, Default)]
pub(crate) struct Tracker {
    beats: u64,
    changed_at: Duration,
    /// In a stall: when the next kick is due, and kicks so far.
    stall: Option<(Duration, u32)>,
}

impl Tracker {
    /// Looks at `beats` at time `now` (any monotonic origin). A pulse unchanged for
    /// `stall_after` is a stall, kicked at once and then every `stall_after`.
    pub(crate) fn observe(&mut self, beats: u64, now: Duration, stall_after: Duration) -> Verdict {
        if beats != self.beats {
            self.beats = beats;
            let stalled = now.saturating_sub(self.changed_at);
            self.changed_at = now;
            return match self.stall.take() {
                Some((_, kicks)) => Verdict::Resumed { stalled, kicks },
                None => Verdict::Healthy,
            };
        }
        let stalled = now.saturating_sub(self.changed_at);
        if stalled < stall_after {
            return Verdict::Healthy;
        }
        match &mut self.stall {
            None => {
                self.stall = Some((now + stall_after, 1));
                Verdict::Stalled { stalled, kick: true, first: true }
            }
            Some((due, kicks)) if now >= *due => {
                *due = now + stall_after;
                *kicks += 1;
                Verdict::Stalled { stalled, kick: true, first: false }
            }
            Some(_) => Verdict::Stalled { stalled, kick: false, first: false },
        }
    }

    /// Forgets any stall (the thread stopped being watched) and restarts the clock at `now`.
    pub(crate) fn reset(&mut self, beats: u64, now: Duration) {
        *self = Tracker { beats, changed_at: now, stall: None };
    }
}

/// The thread that watches pulses. Dropping it stops the thread.
#[derive(Debug)]
pub struct Watchdog {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Watchdog {
    /// Starts watching `pulses`. With `config.kick`, installs the kick handler first; when the
    /// signal is taken by someone else, the watchdog warns and only logs and counts.
    pub fn start(
        name: &str,
        pulses: Vec<Arc<Pulse>>,
        config: WatchdogConfig,
    ) -> std::io::Result<Watchdog> {
        let kick = config.kick
            && match install_kick_handler() {
                Ok(()) => true,
                Err(e) => {
                    tracing::warn!(error = %e, "watchdog: cannot install the kick handler; stalls are only logged");
                    false
                }
            };
        let (stop, stopped) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name(format!("{name}-watchdog"))
            .spawn(move || watch(&pulses, &config, kick, &stopped))?;
        Ok(Watchdog { stop: Some(stop), thread: Some(thread) })
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

// The watchdog measures elapsed time on its own thread; it is observability, not engine logic.
#[allow(clippy::disallowed_methods)]
fn watch(pulses: &[Arc<Pulse>], config: &WatchdogConfig, kick: bool, stopped: &mpsc::Receiver<()>) {
    let origin = std::time::Instant::now();
    let period = (config.stall_after / 4).max(Duration::from_millis(1));
    let mut trackers: Vec<Tracker> = vec![Tracker::default(); pulses.len()];
    loop {
        match stopped.recv_timeout(period) {
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            _ => return,
        }
        let now = origin.elapsed();
        for (pulse, tracker) in pulses.iter().zip(trackers.iter_mut()) {
            let beats = pulse.beats();
            let tid = pulse.tid.load(Ordering::Acquire);
            if tid == 0 {
                tracker.reset(beats, now);
                continue;
            }
            match tracker.observe(beats, now, config.stall_after) {
                Verdict::Healthy => {}
                Verdict::Stalled { stalled, kick: due, first } => {
                    if first {
                        pulse.stalls.fetch_add(1, Ordering::Relaxed);
                        // Where the thread sleeps says why: `io_cqring_wait` is glommio parked
                        // (or the kernel holding a completion), a file system function is a
                        // blocking call on the executor, `0` is a thread that is not asleep: a
                        // task that does not yield, or no CPU for it (the kick is then moot but
                        // harmless, and reading wchan may fail, so it is sent regardless).
                        let wchan = std::fs::read_to_string(format!("/proc/self/task/{tid}/wchan"))
                            .unwrap_or_default();
                        tracing::warn!(
                            executor = %pulse.name(),
                            stalled_ms = stalled.as_millis() as u64,
                            wchan = %wchan,
                            kick,
                            "executor has not run its scheduler for {} ms{}",
                            stalled.as_millis(),
                            if kick { ": kicking its thread" } else { "" }
                        );
                    }
                    if due && kick {
                        pulse.kicks.fetch_add(1, Ordering::Relaxed);
                        if let Err(e) = kick_thread(tid) {
                            tracing::warn!(executor = %pulse.name(), error = %e, "watchdog kick failed");
                        }
                    }
                }
                Verdict::Resumed { stalled, kicks } => {
                    let ms = stalled.as_millis() as u64;
                    pulse.longest_stall_ms.fetch_max(ms, Ordering::Relaxed);
                    tracing::warn!(
                        executor = %pulse.name(),
                        stalled_ms = ms,
                        kicks,
                        "executor resumed after a stall of {ms} ms"
                    );
                }
            }
        }
    }
}

/// The engine's use of all this: one pulse per shard and one watchdog thread over them.
#[derive(Debug)]
pub(crate) struct ShardGuard {
    pulses: Vec<Arc<Pulse>>,
    enabled: bool,
    watchdog: std::sync::Mutex<Option<Watchdog>>,
}

impl ShardGuard {
    /// Starts the watchdog thread (before the shards, so a failure leaves nothing running).
    pub(crate) fn start(
        shards: usize,
        config: &WatchdogConfig,
        data_dir: &std::path::Path,
    ) -> Result<ShardGuard, crate::Error> {
        let pulses: Vec<_> = (0..shards)
            .map(|i| Pulse::new(format!("kappa-shard-{i}"), config.pulse_interval))
            .collect();
        let watchdog = if config.enabled {
            let watchdog = Watchdog::start("kappa", pulses.clone(), config.clone());
            Some(watchdog.map_err(|source| crate::Error::Io {
                op: "starting the watchdog thread",
                path: data_dir.to_path_buf(),
                source,
            })?)
        } else {
            None
        };
        Ok(ShardGuard {
            pulses,
            enabled: config.enabled,
            watchdog: std::sync::Mutex::new(watchdog),
        })
    }

    /// The pulse shard `index` attaches on its thread (`None` when the watchdog is off).
    pub(crate) fn pulse(&self, index: usize) -> Option<Arc<Pulse>> {
        self.enabled.then(|| self.pulses[index].clone())
    }

    /// Shard `shard`'s counters for `ShardMetrics`.
    pub(crate) fn metrics(&self, shard: u16) -> crate::metrics::WatchdogMetrics {
        let Some(pulse) = self.pulses.get(usize::from(shard)) else {
            return Default::default();
        };
        crate::metrics::WatchdogMetrics {
            pulse_beats: pulse.beats(),
            stalls: pulse.stalls(),
            kicks: pulse.kicks(),
            longest_stall_ms: pulse.longest_stall().as_millis() as u64,
        }
    }

    /// Stops the watchdog thread (after the shards stopped; idempotent).
    pub(crate) fn stop(&self) {
        drop(self.watchdog.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STALL: Duration = Duration::from_millis(200);

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[test]
    fn a_moving_pulse_is_never_kicked() {
        let mut t = Tracker::default();
        for step in 0..1000u64 {
            assert_eq!(t.observe(step, ms(step * 50), STALL), Verdict::Healthy);
        }
    }

    #[test]
    fn a_stale_pulse_is_kicked_once_per_period_and_its_resumption_reported() {
        let mut t = Tracker::default();
        assert_eq!(t.observe(7, ms(0), STALL), Verdict::Healthy);
        assert_eq!(t.observe(7, ms(150), STALL), Verdict::Healthy, "not yet stale");
        assert_eq!(
            t.observe(7, ms(200), STALL),
            Verdict::Stalled { stalled: ms(200), kick: true, first: true }
        );
        assert_eq!(
            t.observe(7, ms(250), STALL),
            Verdict::Stalled { stalled: ms(250), kick: false, first: false },
            "one kick per period"
        );
        assert_eq!(
            t.observe(7, ms(400), STALL),
            Verdict::Stalled { stalled: ms(400), kick: true, first: false }
        );
        assert_eq!(t.observe(8, ms(450), STALL), Verdict::Resumed { stalled: ms(450), kicks: 2 });
        assert_eq!(t.observe(8, ms(600), STALL), Verdict::Healthy, "the clock restarted");
        assert_eq!(
            t.observe(8, ms(650), STALL),
            Verdict::Stalled { stalled: ms(200), kick: true, first: true },
            "a new stall is a new first"
        );
    }

    #[test]
    fn an_unwatched_thread_starts_fresh() {
        let mut t = Tracker::default();
        t.observe(1, ms(0), STALL);
        assert!(matches!(t.observe(1, ms(300), STALL), Verdict::Stalled { .. }));
        t.reset(1, ms(1000));
        assert_eq!(t.observe(1, ms(1100), STALL), Verdict::Healthy);
    }

    #[test]
    fn the_config_refuses_a_stall_threshold_within_timer_jitter() {
        let bad = WatchdogConfig { stall_after: ms(10), ..WatchdogConfig::default() };
        assert!(bad.validate().is_err());
        let zero = WatchdogConfig { pulse_interval: Duration::ZERO, ..WatchdogConfig::default() };
        assert!(zero.validate().is_err());
        assert!(WatchdogConfig::default().validate().is_ok());
        assert!(WatchdogConfig { enabled: false, ..bad }.validate().is_ok());
    }
}
