//! The shard's background tasks beside the request loop: the heartbeat that bounds a missed
//! wake-up of the executor, the stall probe that measures how late the live queue runs, and
//! retention (in the maintenance queue).

use super::*;

/// A timer that bounds a missed wake-up of the shard's executor.
///
/// Why: a full test run showed a shard asleep for 59.6 s with requests queued (issue 9's 58.6 s
/// catch-up), woken by retention's once-a-minute timer: glommio 0.9 can park its executor right
/// after a preemption check with work queued, and then requests from other threads do not wake it
/// (their eventfd wake-up is lost), while a timer does. This timer fires ten times a second, so
/// such a sleep lasts at most 100 ms; it costs one timer wake-up per 100 ms of an idle shard.
///
/// It runs until the shard's executor ends (it is cancelled when `run` returns), through shutdown
/// too: shutdown waits for file closes and syncs that complete from glommio's helper thread, the
/// same cross-thread wake-up that can be missed (a property-test run hung in `shutdown` when the
/// heartbeat stopped with the `stopping` flag).
pub(super) async fn heartbeat() {
    loop {
        glommio::timer::sleep(HEARTBEAT_INTERVAL).await;
    }
}

/// See `heartbeat`.
pub(super) const HEARTBEAT_INTERVAL: Duration = Duration::from_millis(100);

/// Measures executor stalls from inside the shard: a task in the live queue sleeps `interval`
/// over and over and records how late it wakes. A wake-up is late when the thread was blocked
/// (a syscall on the shard thread) or a task ran without yielding; either delays every live
/// request by as much. The histogram is `ShardMetrics::executor_stall_ns`; the monitor thread
/// (`monitor.rs`) sees only stalls of a second or more, this sees them all.
///
/// Why a timer in the live queue: that is where appends, tail delivery and queries run, so its
/// lateness is the delay they meet. One timer per interval per shard (1 ms by default: about
/// 1,000 cheap wake-ups a second) is the cost.
pub(super) async fn stall_probe(shard: Rc<Shard>, interval: Duration) {
    while !shard.stopping.get() {
        // Observability only: lateness is reported, never used to decide anything.
        #[allow(clippy::disallowed_methods)]
        let due = std::time::Instant::now() + interval;
        glommio::timer::sleep(interval).await;
        #[allow(clippy::disallowed_methods)]
        let late = std::time::Instant::now().saturating_duration_since(due);
        let mut counters = shard.counters.borrow_mut();
        counters.executor_stall_ns.saturating_record(late.as_nanos() as u64);
    }
}

/// Applies each partition's retention every `EngineConfig::retention_interval`, in the
/// maintenance queue.
pub(super) async fn retention_loop(shard: Rc<Shard>) {
    loop {
        glommio::timer::sleep(shard.config.retention_interval).await;
        if shard.stopping.get() {
            return;
        }
        let _ = apply_retention(&shard).await;
    }
}

/// One retention pass over the shard's partitions, each under its views' floor
/// (`views::retention_floor`). Unlinks and directory fsyncs run through the seam (the blocking
/// pool). Returns the segments deleted; the first error, after trying every partition.
pub(super) async fn apply_retention(shard: &Rc<Shard>) -> Result<u64, Error> {
    let logs: Vec<(Arc<str>, u32, Rc<PartitionLog>)> = shard
        .partitions
        .borrow()
        .iter()
        .flat_map(|(t, ps)| ps.iter().map(move |(p, l)| (t.clone(), *p, l.clone())))
        .collect();
    let now_ms = shard.config.clock.now_ms();
    let mut deleted = 0;
    let mut first_error = None;
    for (topic, partition, log) in logs {
        // The floor is read right before the pass: a view's folded offset only grows.
        let floor = views::retention_floor(shard, &topic, partition);
        match log.apply_retention(now_ms, floor).await {
            Ok(report) => deleted += report.segments_deleted as u64,
            Err(e) => {
                tracing::error!(shard = shard.id.0, dir = %log.dir().display(), error = %e, "retention failed");
                first_error.get_or_insert(Error::from(e));
            }
        }
    }
    first_error.map_or(Ok(deleted), Err)
}
