//! The pulse: what a watched glommio executor shares with its watchdog (a beat counter, its
//! thread id, the watchdog's counters), the task that beats it, and `spawn_executor`, which
//! starts an executor thread that is watched from its first loop.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use glommio::timer::Timer;

use super::kick::{gettid, unblock_kick_signal};

/// What a watched executor thread shares with its watchdog.
#[derive(Debug)]
pub struct Pulse {
    name: String,
    interval: Duration,
    /// The watched thread's id while it is registered, 0 otherwise (never kicked then).
    pub(super) tid: AtomicI32,
    beats: AtomicU64,
    pub(super) kicks: AtomicU64,
    pub(super) stalls: AtomicU64,
    pub(super) longest_stall_ms: AtomicU64,
}

impl Pulse {
    /// A pulse that beats every `interval` once attached.
    pub fn new(name: impl Into<String>, interval: Duration) -> Arc<Pulse> {
        Arc::new(Pulse {
            name: name.into(),
            interval,
            tid: AtomicI32::new(0),
            beats: AtomicU64::new(0),
            kicks: AtomicU64::new(0),
            stalls: AtomicU64::new(0),
            longest_stall_ms: AtomicU64::new(0),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Marks progress. The pulse task calls it; other code on the thread may too.
    pub fn beat(&self) {
        self.beats.fetch_add(1, Ordering::Relaxed);
    }

    pub fn beats(&self) -> u64 {
        self.beats.load(Ordering::Relaxed)
    }

    /// Kick signals sent to this thread.
    pub fn kicks(&self) -> u64 {
        self.kicks.load(Ordering::Relaxed)
    }

    /// Stalls seen (each counted once, however many kicks it took).
    pub fn stalls(&self) -> u64 {
        self.stalls.load(Ordering::Relaxed)
    }

    /// The longest stall that ended, as the watchdog measured it (to its check period).
    pub fn longest_stall(&self) -> Duration {
        Duration::from_millis(self.longest_stall_ms.load(Ordering::Relaxed))
    }

    /// On a running glommio executor: registers the calling thread and starts the pulse task, in
    /// `queue` or the executor's default queue. The executor is watched while the guard lives.
    /// (An executor started with `spawn_executor` is registered before its loop starts.)
    pub fn attach(self: &Arc<Self>, queue: Option<glommio::TaskQueueHandle>) -> Attached {
        let registered = self.register_thread();
        Attached { _task: self.start_beating(queue), _registered: registered }
    }

    /// Registers the calling thread for kicks, without a pulse task (for a thread that calls
    /// `beat` itself as it makes progress). Unregistered when the guard drops.
    pub fn register_thread(self: &Arc<Self>) -> Registered {
        unblock_kick_signal();
        self.tid.store(gettid(), Ordering::Release);
        Registered { pulse: self.clone() }
    }

    fn start_beating(
        self: &Arc<Self>,
        queue: Option<glommio::TaskQueueHandle>,
    ) -> Option<glommio::Task<()>> {
        let task = match queue {
            Some(queue) => glommio::spawn_local_into(beat(self.clone()), queue).ok(),
            None => Some(glommio::spawn_local(beat(self.clone()))),
        };
        if task.is_none() {
            tracing::warn!(executor = %self.name, "no such task queue: the pulse is not running");
        }
        task
    }
}

/// The pulse task. It keeps two timers armed, due an interval apart, so while the task is
/// runnable after one fired the other is still pending in the reactor: glommio's race can strand
/// this task with the others, and a park with a pending timer has a timeout. The deadlines are
/// anchored to each other, not to when the task ran, so the two never drift into firing together.
async fn beat(pulse: Arc<Pulse>) {
    let interval = pulse.interval;
    let mut due = first_deadlines(monotonic_now(), interval);
    let mut timers = [Timer::new(interval), Timer::new(interval * 2)];
    loop {
        let fired = futures_lite::future::poll_fn(|cx| {
            // Poll both every time, so both stay registered with this task's waker.
            let first = Pin::new(&mut timers[0]).poll(cx);
            let second = Pin::new(&mut timers[1]).poll(cx);
            match (first, second) {
                (Poll::Ready(_), _) => Poll::Ready(0),
                (_, Poll::Ready(_)) => Poll::Ready(1),
                _ => Poll::Pending,
            }
        })
        .await;
        pulse.beat();
        let now = monotonic_now();
        due[fired] = next_deadline(due, fired, now, interval);
        timers[fired] = Timer::new(due[fired].saturating_duration_since(now));
    }
}

fn first_deadlines(now: Instant, interval: Duration) -> [Instant; 2] {
    [now + interval, now + interval * 2]
}

/// The new deadline of timer `fired`: one interval after the other timer's, or after `now`
/// when that one is overdue too (the task ran late), which staggers them again.
fn next_deadline(due: [Instant; 2], fired: usize, now: Instant, interval: Duration) -> Instant {
    due[1 - fired].max(now) + interval
}

/// The pulse schedules its timers against the monotonic clock, as glommio's timers do.
#[allow(clippy::disallowed_methods)]
fn monotonic_now() -> Instant {
    Instant::now()
}

/// A watched executor: its pulse task and its registration; see `Pulse::attach`.
#[derive(Debug)]
pub struct Attached {
    // Dropped first: the task stops beating before the thread is unregistered.
    _task: Option<glommio::Task<()>>,
    _registered: Registered,
}

/// A thread registered for kicks; see `Pulse::register_thread`.
#[derive(Debug)]
pub struct Registered {
    pulse: Arc<Pulse>,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.pulse.tid.store(0, Ordering::Release);
    }
}

/// An executor thread started by `spawn_executor`.
#[derive(Debug)]
pub struct ExecutorHandle<T> {
    thread: std::thread::JoinHandle<Result<T, String>>,
}

/// An executor that could not be built, or whose thread panicked.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ExecutorError(String);

impl<T> ExecutorHandle<T> {
    /// Waits for the executor's future to finish and returns its output.
    pub fn join(self) -> Result<T, ExecutorError> {
        match self.thread.join() {
            Ok(result) => result.map_err(ExecutorError),
            Err(panic) => {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a panic".to_string());
                Err(ExecutorError(format!("executor thread panicked: {what}")))
            }
        }
    }
}

/// Like `LocalExecutorBuilder::spawn`, on a thread named `thread_name`, but watched by `pulse`
/// (when given) from before its loop first runs: glommio's race can park an executor before its
/// first task was ever polled, and a pulse attached inside that task would then never start.
/// The thread is registered after the executor is built (building it registers buffers, which a
/// kick must not interrupt) and the pulse task starts with the future.
pub fn spawn_executor<G, F, T>(
    thread_name: String,
    builder: glommio::LocalExecutorBuilder,
    pulse: Option<Arc<Pulse>>,
    fut_gen: G,
) -> std::io::Result<ExecutorHandle<T>>
where
    G: FnOnce() -> F + Send + 'static,
    F: Future<Output = T> + 'static,
    T: Send + 'static,
{
    spawn_executor_reporting(thread_name, builder, pulse, fut_gen, |_| {})
}

/// `spawn_executor`, and `on_exit` runs on the thread as it ends: with `None` after the future
/// finished, with the panic message when the executor panicked. A panicking executor is caught
/// (so the message can be told before the thread ends) and then leaked, not dropped: its tasks
/// were interrupted at unknown points, and their destructors could panic again and abort the
/// process. The thread still ends with an error that `join` returns.
pub(crate) fn spawn_executor_reporting<G, F, T>(
    thread_name: String,
    builder: glommio::LocalExecutorBuilder,
    pulse: Option<Arc<Pulse>>,
    fut_gen: G,
    on_exit: impl FnOnce(Option<String>) + Send + 'static,
) -> std::io::Result<ExecutorHandle<T>>
where
    G: FnOnce() -> F + Send + 'static,
    F: Future<Output = T> + 'static,
    T: Send + 'static,
{
    let thread = std::thread::Builder::new().name(thread_name).spawn(move || {
        let executor = match builder.make() {
            Ok(executor) => executor,
            Err(e) => {
                let message = format!("building the executor: {e}");
                on_exit(Some(message.clone()));
                return Err(message);
            }
        };
        let registered = pulse.as_ref().map(|p| p.register_thread());
        let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            executor.run(async move {
                let _beating = pulse.as_ref().map(|p| p.start_beating(None));
                fut_gen().await
            })
        }));
        drop(registered);
        match run {
            Ok(output) => {
                on_exit(None);
                Ok(output)
            }
            Err(panic) => {
                let message = crate::view::state::panic_message(&*panic);
                on_exit(Some(message.clone()));
                std::mem::forget(executor);
                Err(format!("executor thread panicked: {message}"))
            }
        }
    })?;
    Ok(ExecutorHandle { thread })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pulse_timers_stay_an_interval_apart_and_restagger_after_a_late_run() {
        let t = Duration::from_millis(5);
        let start = first_deadlines(monotonic_now(), t);
        let mut due = start;
        // On time: the fired timer goes one interval after the other, so one always remains
        // pending while the task is runnable.
        for step in 0..10u32 {
            let fired = (step % 2) as usize;
            let now = due[fired] + Duration::from_micros(300);
            due[fired] = next_deadline(due, fired, now, t);
            assert!(due[1 - fired] > now, "the other timer is still pending");
            assert_eq!(due[fired] - due[1 - fired], t);
        }
        // Late by more than an interval: both fired; the rescheduled one goes after `now`, and
        // the next restores the stagger.
        let now = due[1] + Duration::from_millis(20);
        due[0] = next_deadline(due, 0, now, t);
        assert_eq!(due[0], now + t);
        due[1] = next_deadline(due, 1, now, t);
        assert_eq!(due[1], now + 2 * t);
    }
}
