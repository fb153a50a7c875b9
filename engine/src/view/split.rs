//! Replay as tasks on any shard: a view partition's sealed history split into ranges that every
//! shard folds, merged on the owning shard in offset order.
//!
//! Why: replay on the owning shard alone makes a rebuild's parallelism min(partitions, shards),
//! and one big partition replays on one core. Sealed segments are immutable, so any shard can
//! read them with its own DMA file (`SegmentReader`); a range folds into a partial state from
//! empty (`RangeFold`), travels back through a channel and merges exactly
//! (`PartitionState::merge_range`). Views that cannot merge by range (sessions, custom
//! aggregates: `state::splittable`) and starts by timestamp replay whole on their shard.
//!
//! The plan covers `[start, sealed end)` with contiguous ranges of at least
//! `ReplayConfig::task_records_min` records, at most `tasks_per_shard` per shard, dealt round
//! robin starting with the next shard. Each shard folds at most the controller's concurrency of
//! them at once, in its replay queue. Partial states wait in their channels until merged: at most
//! `shards * tasks_per_shard` per rebuilding partition. The records after the sealed end (the
//! active segment) and everything appended during the rebuild replay on the owner as before, and
//! the hand-off to the live tail happens there, at one offset.

use std::rc::Rc;
use std::sync::Arc;

use kappa_storage::{PartitionLog, ReadAhead, SealedSegment, Seek, SegmentReader};

use crate::config::ReplayConfig;
use crate::shard::link::Life;
use crate::shard::{Shard, ShardJob};
use crate::sync::atomic::{AtomicBool, Ordering};
use crate::view::runner::{self, Activity, ViewPartition};
use crate::view::state::{self, Poison, RangeFold};

/// Keys merged between two preemption checks when a range task's state merges.
const MERGE_STEP: usize = 1024;
use crate::view::Version;

/// One range task: records `[from, to)`, read as pieces of sealed segments (by index into the
/// segment list the plan was made from).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RangePlan {
    pub(crate) from: u64,
    pub(crate) to: u64,
    /// (segment index, from, to), in offset order.
    pub(crate) pieces: Vec<(usize, u64, u64)>,
}

/// Splits `[start, end of the last sealed segment)` into range tasks; empty when the history
/// there is too short to split or does not start inside a sealed segment (retention moved past
/// `start`: the whole-partition replay reports that). `segments` are `(base, next)` offsets,
/// oldest first, contiguous.
pub(crate) fn plan(
    segments: &[(u64, u64)],
    start: u64,
    shards: usize,
    config: &ReplayConfig,
) -> Vec<RangePlan> {
    let Some(first) = segments.iter().position(|(base, next)| *base <= start && start < *next)
    else {
        return Vec::new();
    };
    let end = segments.last().map_or(start, |(_, next)| *next);
    let total = end - start;
    let min = config.task_records_min.max(1);
    if total < 2 * min {
        return Vec::new();
    }
    let tasks = (total / min).min((shards * config.tasks_per_shard) as u64).max(1);
    if tasks < 2 {
        return Vec::new();
    }
    let chunk = total.div_ceil(tasks);
    let mut out = Vec::with_capacity(tasks as usize);
    let mut from = start;
    while from < end {
        let to = (from + chunk).min(end);
        let pieces = segments
            .iter()
            .enumerate()
            .skip(first)
            .filter(|(_, (base, next))| *base < to && *next > from)
            .map(|(i, (base, next))| (i, from.max(*base), to.min(*next)))
            .collect();
        out.push(RangePlan { from, to, pieces });
        from = to;
    }
    out
}

/// When the range tasks of one rebuilding partition stop folding: their results will never be
/// merged. Shared by the owner (the shard merging them) and the tasks on every shard; a task
/// checks it before each batch (`stopped`), so it stops within one batch of any of:
/// - the owner is done with the tasks (it merged them all, stopped on a poison or an error, or
///   its task ended): `cancel`, which `CancelOnDrop` calls on every way out of `replay_ranges`,
///   the owner's future dropped mid-await included;
/// - the view version was dropped (`Engine::drop_view_version`, `delete_view` set
///   `Version::dropped` before they ask the shards to stop it): the owner may be waiting for one
///   task's result, and the others would otherwise fold their whole ranges first;
/// - the owner's shard died (`Life`): its executor is leaked, so nothing cancels.
///
/// Each is a flag that carries no data (the task only stops, sends an error the owner drops or
/// never reads): a relaxed load is enough, as long as it is read again before every batch. The
/// loom models `a_range_task_stops_when_*` (`crate::loom_models`) check each cause.
pub(crate) struct RangeCancel {
    cancelled: AtomicBool,
    version: Arc<Version>,
    /// The owner's life; `None` where the owner is not a peer (a model).
    owner: Option<Arc<Life>>,
}

impl RangeCancel {
    pub(crate) fn new(version: Arc<Version>, owner: Option<Arc<Life>>) -> Self {
        RangeCancel { cancelled: AtomicBool::new(false), version, owner }
    }

    /// The owner will merge no more results.
    pub(crate) fn cancel(&self) {
        self.cancelled.store(true, Ordering::Relaxed);
    }

    /// Why a range task should stop now, if it should.
    pub(crate) fn stopped(&self) -> Option<&'static str> {
        if self.cancelled.load(Ordering::Relaxed) {
            Some("cancelled by its owner")
        } else if self.version.dropped.load(Ordering::Relaxed) {
            Some("the view version was dropped")
        } else if self.owner.as_ref().is_some_and(|life| life.is_gone()) {
            Some("the owner's shard ended")
        } else {
            None
        }
    }
}

/// Cancels the range tasks when dropped: on every way out of `replay_ranges`.
pub(crate) struct CancelOnDrop(pub(crate) Arc<RangeCancel>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

/// What a range task sends back: the partial state and the archive bytes it read, or why it
/// stopped.
type RangeResult = Result<(RangeFold, u64), RangeError>;

/// Why a range task stopped before the end of its range.
enum RangeError {
    /// User code panicked on a record under `OnError::Fail`: the state folded up to and
    /// including that record (as a serial fold leaves it) and the poison. The owner merges it and
    /// fails the version, exactly as a serial fold reaching that record would.
    Poison(Box<(RangeFold, u64, Poison)>),
    /// Anything else (a read error, cancelled): the owner replays the rest on its own shard.
    Other(String),
}

impl From<String> for RangeError {
    fn from(reason: String) -> Self {
        RangeError::Other(reason)
    }
}

/// Folds one range on the shard it runs on, in its replay queue, within the controller's
/// concurrency.
async fn fold_range(
    shard: Rc<Shard>,
    version: Arc<Version>,
    pieces: Vec<(SealedSegment, u64, u64)>,
    from: u64,
    to: u64,
    cancel: Arc<RangeCancel>,
) -> RangeResult {
    let control = shard.replay_control().clone();
    let _active = control.active();
    let _slot = control.task_slot().await;
    let read_ahead: ReadAhead = control.read_ahead();
    let def = &version.def;
    let mut fold = RangeFold::new(from);
    let mut bytes = 0u64;
    for (segment, a, b) in pieces {
        let path = segment.path.clone();
        let mut reader = SegmentReader::open(segment, a, b, read_ahead.clone())
            .await
            .map_err(|e| format!("opening {} for [{a}, {b}): {e}", path.display()))?;
        loop {
            if let Some(reason) = cancel.stopped() {
                return Err(RangeError::Other(reason.into()));
            }
            let batch = match reader.next_batch().await {
                Ok(Some(batch)) => batch,
                Ok(None) => break,
                Err(e) => return Err(format!("reading {}: {e}", path.display()).into()),
            };
            let before = fold.state.counters.consumed;
            let mut poison = None;
            for (i, record) in batch.records().enumerate() {
                // Under `OnError::Skip` a panicking filter, key or map is counted (`panicked`)
                // inside `apply`, as in a serial fold; only a poison stops the range.
                if let Err(p) = fold.state.apply(def, &record) {
                    poison = Some(p);
                    break;
                }
                // As the whole-partition fold: never hold the shard for a whole batch.
                // Yields, or rests out the controller's duty cycle.
                if (i + 1) % runner::FOLD_STEP == 0 {
                    probe!(version, p => p.range_fold_yield());
                    control.pace().await;
                }
            }
            bytes += batch.batch.payload().len() as u64;
            control.folded(fold.state.counters.consumed - before);
            probe!(version, p => p.range_folded(fold.state.counters.consumed - before));
            if let Some(poison) = poison {
                return Err(RangeError::Poison(Box::new((fold, bytes, poison))));
            }
            control.pace().await;
        }
    }
    if fold.next_offset() != to {
        return Err(RangeError::Other(format!(
            "range [{from}, {to}) of topic {} folded only up to {}",
            version.def.topic,
            fold.next_offset()
        )));
    }
    Ok((fold, bytes))
}

/// Replays the sealed part of the partition's history as range tasks over every shard and
/// merges them into `vp` in offset order. Returns where the whole-partition replay continues,
/// or `None` when nothing was split (not splittable, too short, a timestamp start, one shard).
pub(crate) async fn replay_ranges(
    shard: &Rc<Shard>,
    log: &Rc<PartitionLog>,
    vp: &Rc<ViewPartition>,
    seek: Seek,
) -> Option<Seek> {
    let config = shard.config().replay;
    let def = vp.version.def.clone();
    let shards = shard.shard_count();
    if !config.split || shards < 2 || state::splittable(&def).is_err() {
        return None;
    }
    let start = vp.state.borrow().next_offset;
    match seek {
        Seek::Beginning => {}
        Seek::Offset(offset) if offset == start => {}
        _ => return None,
    }
    let segments = log.sealed_segments();
    let bounds: Vec<(u64, u64)> =
        segments.iter().map(|s| (s.base_offset(), s.next_offset())).collect();
    let plans = plan(&bounds, start, shards, &config);
    if plans.is_empty() {
        return None;
    }
    tracing::info!(view = %vp.version.view, version = vp.version.number, partition = vp.partition,
        from = start, to = plans.last().map_or(start, |p| p.to), tasks = plans.len(), shards,
        "view partition replays sealed history as range tasks on every shard");
    let owner = usize::from(shard.id().0);
    let cancel = Arc::new(RangeCancel::new(vp.version.clone(), shard.peer_life(owner)));
    let _cancel_on_drop = CancelOnDrop(cancel.clone());
    let mut results = Vec::with_capacity(plans.len());
    for (i, p) in plans.into_iter().enumerate() {
        let (tx, rx) = flume::bounded::<RangeResult>(1);
        let pieces: Vec<(SealedSegment, u64, u64)> =
            p.pieces.iter().map(|(s, a, b)| (segments[*s].clone(), *a, *b)).collect();
        let (version, cancel) = (vp.version.clone(), cancel.clone());
        let (from, to) = (p.from, p.to);
        let job: ShardJob = Box::new(move |shard: Rc<Shard>| {
            Box::pin(async move {
                let queue = shard.replay_queue();
                let task = async move {
                    // The owner merges the result; once it died nobody will (its executor is
                    // leaked, so the channel never disconnects): stop folding then.
                    let owner_gone = async {
                        shard.peer_gone(owner).await;
                        Err(RangeError::Other(format!("shard {owner} ended")))
                    };
                    let fold = fold_range(shard.clone(), version, pieces, from, to, cancel);
                    let result = futures_lite::future::or(fold, owner_gone).await;
                    // Never waits: the channel holds the one result.
                    let _ = tx.try_send(result);
                };
                glommio::spawn_local_into(task, queue).expect("the replay queue exists").detach();
            })
        });
        let target = (owner + 1 + i) % shards;
        if shard.run_on(target, job).await.is_err() {
            // Shutting down, or that shard died: the ranges sent so far still merge, the rest
            // replay here.
            break;
        }
        results.push((target, rx));
    }
    vp.replay_tasks.set(results.len());
    let _active = shard.replay_control().active();
    for (target, rx) in results {
        if vp.stopped.get() {
            break;
        }
        vp.activity.set(Activity::ReplayTasks);
        let result = shard.recv_from(target, &rx).await.unwrap_or_else(|| {
            Err(RangeError::Other(format!("shard {target} ended before the task did")))
        });
        vp.replay_tasks.set(vp.replay_tasks.get().saturating_sub(1));
        let (fold, bytes, poison) = match result {
            Ok((fold, bytes)) => (fold, bytes, None),
            Err(RangeError::Poison(poisoned)) => {
                let (fold, bytes, poison) = *poisoned;
                (fold, bytes, Some(poison))
            }
            Err(RangeError::Other(reason)) => {
                tracing::warn!(view = %vp.version.view, partition = vp.partition, %reason,
                    "a range task failed; the partition replays the rest on its own shard");
                break;
            }
        };
        // A range's state can hold hundreds of thousands of groups: it merges `MERGE_STEP`
        // keys at a time, with a preemption check between steps, so the live queue never
        // waits for a whole merge. This task is the state's only writer, and no checkpoint
        // copy is in flight (the fold waits for its copy), so nothing sees it half merged but
        // queries of this version, which is not served before it catches up.
        let mut pending = match vp.state.borrow().begin_merge(&def, fold) {
            Ok(pending) => pending,
            Err(e) => {
                tracing::error!(view = %vp.version.view, partition = vp.partition, error = %e,
                    "a range task's state does not merge; replaying the rest whole");
                break;
            }
        };
        #[cfg(any(test, feature = "test-hooks"))]
        let (groups, mut yields) = (pending.groups_left() as u64, 0u64);
        while !vp.state.borrow_mut().merge_step(&def, &mut pending, MERGE_STEP) {
            #[cfg(any(test, feature = "test-hooks"))]
            {
                yields += 1;
            }
            glommio::yield_if_needed().await;
        }
        probe!(vp.version, p => p.merged(groups, yields));
        let (n, next) = {
            let mut st = vp.state.borrow_mut();
            let before = st.counters.consumed;
            st.finish_merge(pending);
            (st.counters.consumed - before, st.next_offset)
        };
        if let Some(poison) = poison {
            // Every range before this one merged without a poison, so this is the first record
            // of the partition a serial fold would fail on: the version fails there, with the
            // partition and the record's offset, and the other tasks are cancelled.
            vp.bytes_consumed.set(vp.bytes_consumed.get() + bytes);
            cancel.cancel();
            vp.replay_tasks.set(0);
            vp.poisoned(poison).await;
            return None;
        }
        vp.version.partition_folded(vp.partition, next);
        vp.bytes_consumed.set(vp.bytes_consumed.get() + bytes);
        vp.add_since_checkpoint(n);
        if vp.checkpoint_due() {
            runner::checkpoint_in_background(shard, log, vp).await;
        }
    }
    cancel.cancel();
    vp.replay_tasks.set(0);
    Some(Seek::Offset(vp.state.borrow().next_offset))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(min: u64, per_shard: usize) -> ReplayConfig {
        ReplayConfig { task_records_min: min, tasks_per_shard: per_shard, ..Default::default() }
    }

    fn check(segments: &[(u64, u64)], start: u64, plans: &[RangePlan]) {
        let end = segments.last().expect("segments").1;
        assert_eq!(plans.first().expect("a plan").from, start);
        assert_eq!(plans.last().expect("a plan").to, end);
        for pair in plans.windows(2) {
            assert_eq!(pair[0].to, pair[1].from, "contiguous");
        }
        for p in plans {
            assert!(p.from < p.to);
            let mut at = p.from;
            for (s, a, b) in &p.pieces {
                let (base, next) = segments[*s];
                assert_eq!(*a, at, "pieces contiguous");
                assert!(base <= *a && *a < *b && *b <= next, "inside its segment");
                at = *b;
            }
            assert_eq!(at, p.to, "pieces cover the range");
        }
    }

    #[test]
    fn plans_cover_the_sealed_history_exactly_once() {
        let segments = [(0, 1000), (1000, 1500), (1500, 4000), (4000, 4001)];
        for start in [0, 1, 999, 1000, 1200, 3000] {
            for shards in 1..6 {
                for per_shard in 1..4 {
                    let plans = plan(&segments, start, shards, &config(100, per_shard));
                    if plans.is_empty() {
                        assert!(shards * per_shard < 2, "{start} {shards} {per_shard}");
                        continue;
                    }
                    assert!(plans.len() <= shards * per_shard);
                    check(&segments, start, &plans);
                }
            }
        }
    }

    #[test]
    fn short_histories_and_gaps_are_not_split() {
        let segments = [(100, 200), (200, 300)];
        assert!(plan(&segments, 100, 4, &config(101, 2)).is_empty(), "200 records, min 101");
        assert_eq!(plan(&segments, 100, 4, &config(100, 2)).len(), 2);
        assert_eq!(plan(&segments, 100, 4, &config(50, 2)).len(), 4);
        assert!(plan(&segments, 50, 4, &config(1, 2)).is_empty(), "start before the first");
        assert!(plan(&segments, 300, 4, &config(1, 2)).is_empty(), "start at the sealed end");
        assert!(plan(&[], 0, 4, &config(1, 2)).is_empty());
    }
}
