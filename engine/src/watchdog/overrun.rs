//! A diagnostic: which code holds a shard's executor past its preemption point.
//!
//! Why: the live tail's latency during a rebuild is made of the stretches in which the shard
//! thread runs one task queue without coming back to its scheduler (where it polls the reactor
//! and lets the live queue in). glommio's stall detector arms a timer when a task queue starts
//! and, if the queue is still running `threshold` past its preemption point, interrupts the
//! thread and takes a backtrace of what runs then. `KAPPA_OVERRUN_TRACE_US=N` turns it on for
//! every shard with a threshold of N us (off by default: each task queue run arms and disarms a
//! timerfd, two syscalls). Each overrun prints one line to stderr: the queue, how long it ran
//! past its budget, and the engine's innermost frames, which say which code it was.

use std::time::Duration;

use glommio::TaskQueueHandle;
use glommio::{StallDetection, StallDetectionHandler};

/// The threshold from `KAPPA_OVERRUN_TRACE_US`, when set to a number.
pub(crate) fn threshold_from_env() -> Option<Duration> {
    let us: u64 = std::env::var("KAPPA_OVERRUN_TRACE_US").ok()?.parse().ok()?;
    Some(Duration::from_micros(us))
}

/// Prints a compact line per overrun (see the module doc).
#[derive(Debug)]
pub(crate) struct OverrunTrace {
    pub(crate) shard: usize,
    pub(crate) threshold: Duration,
    /// The executor thread's CPU time when its current task queue started (ns): an overrun
    /// counts only if the queue ran that long *on the CPU* (a thread preempted by other
    /// processes overruns in wall time without holding anything up itself).
    pub(crate) cpu_at_start: std::sync::atomic::AtomicU64,
}

/// This thread's CPU time, ns.
fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid pointer to a timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

impl StallDetectionHandler for OverrunTrace {
    fn threshold(&self, _queue: TaskQueueHandle, _expected: Duration) -> Option<Duration> {
        // Called on the executor thread as each task queue starts to run.
        self.cpu_at_start.store(thread_cpu_ns(), std::sync::atomic::Ordering::Relaxed);
        Some(self.threshold)
    }

    fn stall(&self, detection: StallDetection<'_>) {
        // The detection's fields are private; its text holds the queue, the overage and the
        // resolved frames (`fn: "name"` lines), of which the engine's and storage's say where.
        let cpu_ns = thread_cpu_ns()
            .saturating_sub(self.cpu_at_start.load(std::sync::atomic::Ordering::Relaxed));
        let text = detection.to_string();
        let (head, trace) = text.split_once(" Backtrace:").unwrap_or((&text, ""));
        // Frames print as `N: symbol`; the innermost ones are the signal handler's own.
        let frames: Vec<&str> = trace
            .lines()
            .filter_map(|line| line.trim().split_once(": "))
            .filter(|(n, _)| n.parse::<u32>().is_ok())
            .map(|(_, symbol)| symbol)
            .filter(|f| {
                !["backtrace", "signal_hook", "glommio::executor::stall", "__restore_rt", "libc"]
                    .iter()
                    .any(|skip| f.contains(skip))
            })
            .take(12)
            .collect();
        eprintln!(
            "OVERRUN shard {} cpu {} us {head} | {}",
            self.shard,
            cpu_ns / 1000,
            frames.join(" < ")
        );
    }
}
