//! The shard side of a view partition: fold the log into the state, checkpoint, catch up, follow.
//! Where the state starts and how a checkpoint is taken are in `runner/checkpoint.rs`.
//!
//! The same loop serves history and the live tail: it starts in the `replay` queue (low shares, so
//! the live queue preempts it), and when the reader reaches the readable end it records that offset
//! and continues in the `live` queue. Records are folded straight out of the read buffers.
//!
//! Every await is labelled (`Activity`), so the stall check (`monitor.rs`, `shard::watch_views`) can say what a partition that
//! stopped moving waits on: a disk read, a yield to other queues, the log's readable event, or a
//! checkpoint's sync or write (issue 9's unexplained 58.6 s catch-up).

use std::cell::{Cell as StdCell, RefCell};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;

use kappa_storage::{LogReader, PartitionLog, Seek};

use crate::shard::replay::{Chase, ChaseStep, ReplayMetrics};
use crate::shard::Shard;
use crate::view::state::{self, PartitionState, Poison};
use crate::view::{Failure, PartitionProgress, Version};

mod checkpoint;
pub(crate) use checkpoint::{checkpoint_in_background, final_checkpoint, initial_state};

/// What a view partition's task is doing or waiting on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activity {
    /// Created; its task has not run yet.
    Starting,
    /// Awaiting the next batch from the reader (a DMA read, or the tail cache).
    Reading,
    /// Yielded to other task queues (runnable, waiting for its share of the CPU).
    Yielding,
    /// Caught up, sleeping until the log has more readable records.
    WaitingReadable,
    /// Waiting for the log's fdatasync before a checkpoint.
    CheckpointSync,
    /// Taking a checkpoint: copying the state in steps, then encoding and writing the file (on
    /// glommio's blocking pool; the shard keeps running).
    CheckpointWrite,
    /// Waiting for the next range task (on this or another shard) to merge (`split.rs`).
    ReplayTasks,
    /// Stopped: dropped, failed or shut down.
    Stopped,
}

impl std::fmt::Display for Activity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Activity::Starting => "starting (task not run yet)",
            Activity::Reading => "reading (waiting for a disk read)",
            Activity::Yielding => "yielding (runnable, waiting for CPU share)",
            Activity::WaitingReadable => "waiting for readable records",
            Activity::CheckpointSync => "checkpoint: waiting for the log's sync",
            Activity::CheckpointWrite => "checkpoint: copying, encoding or writing the file",
            Activity::ReplayTasks => "waiting for a range task to merge",
            Activity::Stopped => "stopped",
        })
    }
}

/// A view partition behind its log and not moving for this long is reported.
pub(crate) const STALL_WARN: std::time::Duration = std::time::Duration::from_secs(1);

/// What the stall check remembers between its looks at a partition.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub(crate) struct Watch {
    /// The folded offset seen at the last look, and since when it has not moved while behind.
    offset: u64,
    since: Option<std::time::Instant>,
    warned: bool,
}

impl Watch {
    /// One look: the partition has folded up to `next` of a readable end `end`. Returns the new
    /// memory and, once per stall, how long the partition has been behind without moving when
    /// that reaches `STALL_WARN`.
    pub(crate) fn look(
        self,
        next: u64,
        end: u64,
        stopped: bool,
        now: std::time::Instant,
    ) -> (Watch, Option<std::time::Duration>) {
        if next >= end || stopped {
            return (Watch { offset: next, since: None, warned: false }, None);
        }
        if next != self.offset {
            // It moved since the last look: a stall, if any, starts now.
            return (Watch { offset: next, since: Some(now), warned: false }, None);
        }
        let since = self.since.unwrap_or(now);
        let stalled = now.duration_since(since);
        let warn = stalled >= STALL_WARN && !self.warned;
        (
            Watch { offset: next, since: Some(since), warned: self.warned || warn },
            warn.then_some(stalled),
        )
    }
}

/// One partition of one view version, on its shard.
pub(crate) struct ViewPartition {
    pub(crate) version: Arc<Version>,
    pub(crate) partition: u32,
    pub(crate) state: RefCell<PartitionState>,
    pub(crate) caught_up_at: StdCell<Option<u64>>,
    pub(crate) stopped: StdCell<bool>,
    pub(crate) error: RefCell<Option<String>>,
    pub(crate) failure: RefCell<Option<Failure>>,
    pub(crate) bytes_consumed: StdCell<u64>,
    pub(crate) activity: StdCell<Activity>,
    /// In the replay queue (true) or the live queue.
    pub(crate) replaying: StdCell<bool>,
    pub(crate) watch: StdCell<Watch>,
    pub(crate) stalls: StdCell<u64>,
    /// Range tasks of this partition's replay not merged yet (`split.rs`).
    pub(crate) replay_tasks: StdCell<usize>,
    since_checkpoint: StdCell<u64>,
    /// One permit: held by the checkpoint being written beside the fold
    /// (`checkpoint_in_background`); the final checkpoint at shutdown waits for it.
    pub(crate) checkpoint_slot: Rc<glommio::sync::Semaphore>,
    /// The next offset of the newest checkpoint written and synced (durable) by this partition.
    pub(crate) checkpointed: StdCell<Option<u64>>,
    /// The next offset of the checkpoint this partition resumed from, if any.
    pub(crate) resumed_from: Option<u64>,
    consumed_at_start: u64,
    /// When this partition started on the shard: progress rates only, never a decision.
    started: std::time::Instant,
}

impl ViewPartition {
    pub(crate) fn new(
        version: Arc<Version>,
        partition: u32,
        state: PartitionState,
        resumed_from: Option<u64>,
    ) -> Self {
        let consumed_at_start = state.counters.consumed;
        version.partition_folded(partition, state.next_offset);
        #[allow(clippy::disallowed_methods)] // Progress rates are observability, never decisions.
        let started = std::time::Instant::now();
        ViewPartition {
            version,
            partition,
            state: RefCell::new(state),
            caught_up_at: StdCell::new(None),
            stopped: StdCell::new(false),
            error: RefCell::new(None),
            failure: RefCell::new(None),
            bytes_consumed: StdCell::new(0),
            activity: StdCell::new(Activity::Starting),
            replaying: StdCell::new(true),
            watch: StdCell::new(Watch::default()),
            stalls: StdCell::new(0),
            replay_tasks: StdCell::new(0),
            since_checkpoint: StdCell::new(0),
            checkpoint_slot: Rc::new(glommio::sync::Semaphore::new(1)),
            checkpointed: StdCell::new(resumed_from),
            resumed_from,
            consumed_at_start,
            started,
        }
    }

    /// `replay`: the owning shard's controller figures (live p99 beside the budget, burn).
    pub(crate) fn progress(&self, log: &PartitionLog, replay: ReplayMetrics) -> PartitionProgress {
        let st = self.state.borrow();
        let end_offset = log.readable_end_offset();
        let lag = end_offset.saturating_sub(st.next_offset);
        let seconds = self.started.elapsed().as_secs_f64().max(1e-3);
        let rate = (st.counters.consumed - self.consumed_at_start) as f64 / seconds;
        let live = self.caught_up_at.get().is_some();
        PartitionProgress {
            partition: self.partition,
            next_offset: st.next_offset,
            end_offset,
            lag,
            watermark: st.watermark(self.version.def.allowed_lateness_ms),
            live,
            caught_up_at: self.caught_up_at.get(),
            counters: st.counters,
            bytes_consumed: self.bytes_consumed.get(),
            rate_records_s: rate,
            eta_s: if live || rate <= 0.0 { 0.0 } else { lag as f64 / rate },
            error: self.error.borrow().clone(),
            failure: self.failure.borrow().clone(),
            activity: self.activity.get(),
            stalls: self.stalls.get(),
            replay_tasks: self.replay_tasks.get(),
            checkpointed: self.checkpointed.get(),
            resumed_from: self.resumed_from,
            shard_replay: replay,
        }
    }

    pub(crate) fn add_since_checkpoint(&self, records: u64) {
        self.since_checkpoint.set(self.since_checkpoint.get() + records);
    }

    pub(crate) fn checkpoint_due(&self) -> bool {
        self.since_checkpoint.get() >= self.version.def.checkpoint_every_records
    }

    /// Records an error that stopped the partition, and tells waiters.
    fn fail(&self, reason: String) {
        self.stop_failed(Failure {
            partition: self.partition,
            offset: None,
            stage: None,
            message: reason,
            not_persisted: None,
        });
    }

    /// Marks the partition stopped by `failure` (its progress and metrics show it) and fails
    /// the version (its queries and waiters get the error).
    pub(crate) fn stop_failed(&self, failure: Failure) {
        self.stopped.set(true);
        self.activity.set(Activity::Stopped);
        *self.error.borrow_mut() = Some(failure_text(&failure));
        *self.failure.borrow_mut() = Some(failure.clone());
        self.version.partition_failed(failure);
    }

    /// A record on which user code panicked (`OnError::Fail`): the failure is written to the
    /// view's `meta.json` (on glommio's blocking pool, never on this thread), so a restart holds
    /// the partition stopped instead of running the record again, and only then does the version
    /// fail. That order is the guarantee: a caller who saw `Error::Poisoned` may shut down at once
    /// (or lose power) and the record still never runs again. This partition folds nothing
    /// meanwhile; its task is the one waiting.
    ///
    /// When that write fails, the version fails all the same (it cannot go past the record), but
    /// says the failure is not durable: queries and waiters get `Error::PoisonNotPersisted` with
    /// the I/O error, progress and metrics carry it (`Failure::not_persisted`), and it is logged.
    /// A restart then runs the record again, which fails the version again there (a panic in
    /// user code never takes the shard down) and tries the write again: no crash loop, and never
    /// silent.
    pub(crate) async fn poisoned(&self, poison: Poison) {
        tracing::error!(view = %self.version.view, version = self.version.number,
            partition = self.partition, offset = poison.offset, stage = poison.stage,
            message = %poison.message, "view user code panicked on a record; the version failed");
        let mut failure = Failure {
            partition: self.partition,
            offset: Some(poison.offset),
            stage: Some(poison.stage.to_string()),
            message: poison.message,
            not_persisted: None,
        };
        let entry = self.version.entry.clone();
        let number = self.version.number;
        let recorded = failure.clone();
        let written = glommio::executor()
            .spawn_blocking(move || {
                entry
                    .failed
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .entry(number)
                    .or_insert(recorded);
                crate::view::write_meta(&entry)
            })
            .await;
        if let Err(e) = written {
            tracing::error!(view = %self.version.view, version = number, error = %e,
                "recording a view version's failure failed; a restart will run the record again");
            failure.not_persisted = Some(e.to_string());
            // Before the version fails: no waiter may see `Poisoned` for it.
            self.version.failure_not_recorded(e);
        }
        self.stop_failed(failure);
    }
}

/// A failure as one line (progress and metrics).
pub(crate) fn failure_text(failure: &Failure) -> String {
    match (failure.offset, &failure.stage) {
        (Some(offset), Some(stage)) => match &failure.not_persisted {
            None => format!("{stage} panicked at offset {offset}: {}", failure.message),
            Some(error) => format!(
                "{stage} panicked at offset {offset}: {}; recording the failure failed \
                 ({error}), so a restart runs the record again",
                failure.message
            ),
        },
        _ => failure.message.clone(),
    }
}

impl ViewPartition {
    /// Whether a persisted failure holds this partition stopped (a restart after a poison record).
    pub(crate) fn failed_before(&self) -> Option<Failure> {
        self.version.failure().filter(|f| f.partition == self.partition && f.offset.is_some())
    }
}

/// Folds the log into the partition from `seek`: in the replay queue until caught up, then (a new
/// task) in the live queue for good.
pub(crate) async fn run(
    shard: Rc<Shard>,
    log: Rc<PartitionLog>,
    vp: Rc<ViewPartition>,
    seek: Seek,
    live: bool,
) {
    let mut seek = seek;
    if !live {
        // Sealed history first, as range tasks over every shard, where the view allows it.
        if let Some(next) = crate::view::split::replay_ranges(&shard, &log, &vp, seek).await {
            seek = next;
        }
        if vp.stopped.get() {
            // A range task's poison record failed the version, or the view was dropped.
            return;
        }
    }
    let control = shard.replay_control();
    let reader =
        log.reader(seek).map(|r| if live { r } else { r.with_read_ahead(control.read_ahead()) });
    match reader {
        Ok(reader) => {
            fold(shard, log, vp, reader, if live { Mode::Live } else { Mode::Replay }).await
        }
        Err(e) => vp.fail(e.to_string()),
    }
}

/// Records folded between two preemption checks: about 10-50 us of user code per step, so a
/// fold never holds the shard much past the live queue's preemption point.
pub(crate) const FOLD_STEP: usize = 64;

/// Where a fold runs and what it counts as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Not caught up, in the replay queue at the controller's pace.
    Replay,
    /// Not caught up, in the live queue: a replay that did not gain on the tail at the
    /// controller's full level (`shard::replay::Chase`).
    Chase,
    /// Caught up: following the tail in the live queue.
    Live,
}

/// The loop of `run` over a reader. The live task takes over the replay task's reader, so what
/// the reader still owes (a timestamp start that has not met its first record yet) carries over.
async fn fold(
    shard: Rc<Shard>,
    log: Rc<PartitionLog>,
    vp: Rc<ViewPartition>,
    mut reader: LogReader,
    mut mode: Mode,
) {
    vp.replaying.set(mode == Mode::Replay);
    let control = shard.replay_control().clone();
    // Whole-partition replay counts as replay work for the controller, and reads at its pace.
    let active = (mode == Mode::Replay).then(|| control.active());
    let lag = |reader: &LogReader| log.readable_end_offset().saturating_sub(reader.next_offset());
    let mut chase = Chase::new(control.ticks(), lag(&reader));
    let def = vp.version.def.clone();
    loop {
        if vp.stopped.get() {
            vp.activity.set(Activity::Stopped);
            return;
        }
        vp.activity.set(Activity::Reading);
        match reader.next_batch().await {
            Ok(Some(batch)) => {
                // A stored batch holds up to thousands of records (5-15 ms of JSON parsing on
                // a loaded core): folded whole, it would hold the shard past the live queue's
                // preemption point, and every live append behind it would wait. The fold
                // yields every `FOLD_STEP` records instead, releasing the state in between.
                let bytes = batch.batch.payload().len() as u64;
                let mut n = 0;
                let mut records = batch.records();
                let folded = loop {
                    let (more, next_offset, poison) = {
                        let mut st = vp.state.borrow_mut();
                        let before = st.counters.consumed;
                        let mut poison = None;
                        let mut more = false;
                        for (i, record) in records.by_ref().enumerate() {
                            if let Err(p) = st.apply(&def, &record) {
                                poison = Some(p);
                                break;
                            }
                            if i + 1 == FOLD_STEP {
                                more = true;
                                break;
                            }
                        }
                        n += st.counters.consumed - before;
                        (more, st.next_offset, poison)
                    };
                    if !more || poison.is_some() {
                        break Some((next_offset, poison));
                    }
                    probe!(vp.version, p => p.fold_yield());
                    if mode == Mode::Replay {
                        // Yields, or rests out the controller's duty cycle.
                        control.pace().await;
                    } else {
                        glommio::yield_if_needed().await;
                    }
                    if vp.stopped.get() {
                        break None;
                    }
                };
                // The iterator borrows the reader; the chase check below reads it again.
                drop(records);
                let Some((next_offset, poison)) = folded else {
                    vp.activity.set(Activity::Stopped);
                    return;
                };
                if let Some(poison) = poison {
                    vp.poisoned(poison).await;
                    return;
                }
                vp.version.partition_folded(vp.partition, next_offset);
                if mode == Mode::Replay {
                    control.folded(n);
                }
                vp.bytes_consumed.set(vp.bytes_consumed.get() + bytes);
                vp.since_checkpoint.set(vp.since_checkpoint.get() + n);
                if vp.since_checkpoint.get() >= def.checkpoint_every_records {
                    checkpoint_in_background(&shard, &log, &vp).await;
                }
                if mode == Mode::Replay {
                    match chase.look(control.ticks(), lag(&reader), control.level() >= 1.0) {
                        Some(ChaseStep::Behind) => control.mark_behind(),
                        Some(ChaseStep::Promote) => {
                            tracing::warn!(view = %vp.version.view, version = vp.version.number,
                                partition = vp.partition, lag = lag(&reader),
                                "view partition does not gain on the live tail at replay's full \
                                 share; it catches up in the live queue");
                            control.chased();
                            drop(active);
                            in_live_queue(&shard, &log, &vp, reader, Mode::Chase);
                            return;
                        }
                        Some(ChaseStep::Gaining) | None => {}
                    }
                }
                vp.activity.set(Activity::Yielding);
                if mode == Mode::Replay {
                    control.pace().await;
                } else {
                    glommio::yield_if_needed().await;
                }
            }
            Ok(None) => {
                // Everything below the reader's position is folded, or was before a timestamp
                // start and is not part of this version.
                let next = reader.next_offset().max(vp.state.borrow().next_offset);
                vp.version.partition_folded(vp.partition, next);
                if mode != Mode::Live {
                    // Caught up: from this exact offset on, the live queue follows the tail.
                    let offset = reader.next_offset();
                    vp.caught_up_at.set(Some(offset));
                    tracing::info!(view = %vp.version.view, version = vp.version.number, partition = vp.partition,
                        offset, "view partition caught up; following the live tail");
                    vp.version.partition_caught_up().await;
                }
                if mode == Mode::Replay {
                    drop(active);
                    // The same reader, not a new one at `offset`: a timestamp start that has not
                    // met a record at or after its time yet still skips older ones.
                    in_live_queue(&shard, &log, &vp, reader, Mode::Live);
                    return;
                }
                mode = Mode::Live;
                vp.activity.set(Activity::WaitingReadable);
                if log.wait_readable(reader.next_offset()).await.is_err() {
                    vp.activity.set(Activity::Stopped);
                    return;
                }
            }
            Err(e) => {
                tracing::error!(view = %vp.version.view, partition = vp.partition, error = %e, "view partition stopped");
                vp.fail(e.to_string());
                return;
            }
        }
    }
}

/// Continues a fold with `reader` as a new task in the live queue, at the log's read-ahead (no
/// longer the replay controller's).
fn in_live_queue(
    shard: &Rc<Shard>,
    log: &Rc<PartitionLog>,
    vp: &Rc<ViewPartition>,
    reader: LogReader,
    mode: Mode,
) {
    let task = fold(shard.clone(), log.clone(), vp.clone(), reader.with_log_read_ahead(), mode);
    glommio::spawn_local_into(task, shard.live_queue()).expect("the live queue exists").detach();
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::{Watch, STALL_WARN};

    #[test]
    fn a_stall_is_reported_once_after_a_second_behind_without_progress() {
        #[allow(clippy::disallowed_methods)] // A fixed origin; the test moves time by hand.
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let (w, warn) = Watch::default().look(10, 20, false, at(0));
        assert_eq!(warn, None, "first sight: it may have just fallen behind");
        let (w, warn) = w.look(10, 20, false, at(500));
        assert_eq!(warn, None);
        let (w, warn) = w.look(10, 25, false, at(1_000));
        assert_eq!(warn, Some(STALL_WARN), "behind and not moving for a second");
        let (w, warn) = w.look(10, 25, false, at(3_000));
        assert_eq!(warn, None, "once per stall");
        let (w, warn) = w.look(11, 25, false, at(3_250));
        assert_eq!(warn, None, "it moved: a new stall would start over");
        let (w, _) = w.look(11, 25, false, at(3_500));
        assert_eq!(w.look(11, 25, false, at(4_500)).1, Some(Duration::from_millis(1_250)));
        // Caught up (nothing to fold) or stopped is never a stall.
        let (w, _) = Watch::default().look(30, 30, false, at(0));
        assert_eq!(w.look(30, 30, false, at(5_000)).1, None);
        let (w, _) = Watch::default().look(1, 30, true, at(0));
        assert_eq!(w.look(1, 30, true, at(5_000)).1, None);
    }
}
