//! The engine's monitor thread: it probes every shard twice a second with a request
//! (`Request::Watch`) that makes the shard look for view partitions behind their log and not
//! moving (logged with what they wait on), and it logs a shard that leaves a probe unanswered for
//! a second: its thread is blocked (a synchronous checkpoint write on the shard thread, say) or
//! its executor slept through a queued request. Stalls cannot hide.
//!
//! Why a thread outside the shards: a shard that is blocked or asleep cannot report itself. This
//! is how issue 9's unexplained 58.6 s catch-up was found: without the shards' heartbeat timer
//! (`shard::heartbeat`), every run of the integration tests here had a shard leave a probe
//! unanswered for 58.5-59.7 s, asleep with requests queued until retention's once-a-minute timer
//! woke it; with the heartbeat, none did.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use crate::shard::Request;

/// How often shards are probed.
const PROBE_INTERVAL: Duration = Duration::from_millis(500);
/// A probe unanswered this long is logged.
const PROBE_LATE: Duration = Duration::from_secs(1);

/// The monitor's shared state: per-shard counts of late probes, and the stop signal.
pub(crate) struct Monitor {
    late: Vec<AtomicU64>,
    stop: Mutex<bool>,
    wake: Condvar,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Monitor {
    /// Starts the monitor thread over the shards' request channels.
    pub(crate) fn start(senders: Vec<flume::Sender<Request>>) -> Arc<Monitor> {
        let monitor = Arc::new(Monitor {
            late: senders.iter().map(|_| AtomicU64::new(0)).collect(),
            stop: Mutex::new(false),
            wake: Condvar::new(),
            thread: Mutex::new(None),
        });
        let running = monitor.clone();
        let handle = std::thread::Builder::new()
            .name("kappa-monitor".into())
            .spawn(move || running.run(senders))
            .map_err(|e| tracing::error!(error = %e, "could not start the monitor thread"))
            .ok();
        *monitor.thread.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = handle;
        monitor
    }

    /// A monitor without a thread (the loom models' engine has no shards to probe).
    #[cfg(all(test, loom))]
    pub(crate) fn idle() -> Arc<Monitor> {
        Arc::new(Monitor {
            late: Vec::new(),
            stop: Mutex::new(false),
            wake: Condvar::new(),
            thread: Mutex::new(None),
        })
    }

    /// Probes a shard left unanswered for a second or more.
    pub(crate) fn late_probes(&self, shard: usize) -> u64 {
        self.late.get(shard).map_or(0, |n| n.load(Ordering::Relaxed))
    }

    /// Stops the thread and waits for it (before the shards shut down).
    pub(crate) fn stop(&self) {
        *self.stop.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = true;
        self.wake.notify_all();
        let handle = self.thread.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
        if let Some(handle) = handle {
            let _ = handle.join();
        }
    }

    fn run(&self, senders: Vec<flume::Sender<Request>>) {
        type Pending = (flume::Receiver<Result<(), crate::Error>>, std::time::Instant, bool);
        let mut pending: Vec<Option<Pending>> = senders.iter().map(|_| None).collect();
        loop {
            {
                let stop = self.stop.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                let (stop, _) = self
                    .wake
                    .wait_timeout_while(stop, PROBE_INTERVAL, |stop| !*stop)
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if *stop {
                    return;
                }
            }
            for (shard, sender) in senders.iter().enumerate() {
                if let Some((reply, sent, warned)) = &mut pending[shard] {
                    let waited = sent.elapsed();
                    match reply.try_recv() {
                        Err(flume::TryRecvError::Empty) => {
                            if waited >= PROBE_LATE && !*warned {
                                *warned = true;
                                self.late[shard].fetch_add(1, Ordering::Relaxed);
                                tracing::warn!(
                                    shard,
                                    waited_ms = waited.as_millis() as u64,
                                    queued_requests = sender.len(),
                                    "shard has not answered the monitor for a second: its thread \
                                     is blocked, or its executor slept through a queued request"
                                );
                            }
                            continue;
                        }
                        _ => {
                            if *warned {
                                tracing::warn!(
                                    shard,
                                    waited_ms = waited.as_millis() as u64,
                                    "shard answered the monitor again"
                                );
                            }
                            pending[shard] = None;
                        }
                    }
                }
                let (reply, receiver) = flume::bounded(1);
                match sender.try_send(Request::Watch { reply }) {
                    Ok(()) => {
                        // Observability only: the wait is reported, never used to decide state.
                        #[allow(clippy::disallowed_methods)]
                        let sent = std::time::Instant::now();
                        pending[shard] = Some((receiver, sent, false));
                    }
                    // A full queue is a busy shard, not a stalled one: probe next time.
                    Err(flume::TrySendError::Full(_)) => {}
                    Err(flume::TrySendError::Disconnected(_)) => return,
                }
            }
        }
    }
}
