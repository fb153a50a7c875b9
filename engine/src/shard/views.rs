//! The view partitions a shard runs: starting one (from its newest checkpoint, in the replay
//! queue) and the stall check the engine's monitor asks for. Split from `mod.rs`, which is the
//! shard's request loop and log work.

use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::Shard;
use crate::view::runner::{self as view_runner, ViewPartition};
use crate::Error;

/// Starts one view partition from its newest checkpoint (or its start) in the replay queue.
/// Reading the checkpoints awaits the seam (the blocking pool), never blocks the shard.
pub(super) async fn start_view(
    shard: &Rc<Shard>,
    version: Arc<crate::view::Version>,
    partition: u32,
) -> Result<(), Error> {
    let key = (version.view.clone(), version.number, partition);
    if shard.views.borrow().contains_key(&key) {
        return Ok(());
    }
    let topic = version.def.topic.clone();
    let log =
        shard.log(&topic, partition).ok_or_else(|| Error::UnknownTopic { topic: topic.clone() })?;
    let (state, seek, resumed_from) = view_runner::initial_state(&version, partition, &log).await?;
    if shard.views.borrow().contains_key(&key) {
        return Ok(());
    }
    let vp = Rc::new(ViewPartition::new(version, partition, state, resumed_from));
    shard.views.borrow_mut().insert(key, (vp.clone(), log.clone()));
    if let Some(failure) = vp.failed_before() {
        // A poison record failed this partition before a restart: hold it stopped (its
        // progress shows why) rather than run the record again, until the version is rebuilt
        // or dropped.
        tracing::warn!(view = %vp.version.view, version = vp.version.number, partition,
            offset = failure.offset, "view partition failed on a poison record before; not resumed");
        vp.stop_failed(failure);
        return Ok(());
    }
    let task = view_runner::run(shard.clone(), log, vp, seek, false);
    glommio::spawn_local_into(task, shard.replay).expect("the replay queue exists").detach();
    Ok(())
}

/// One look at every view partition of the shard, asked for by the engine's monitor thread
/// (`Request::Watch`, about twice a second): a partition that is behind its log's readable end
/// and has not moved for a second is logged once per stall, with what its task waits on, and
/// counted in its progress and metrics. The look runs in the request loop, so a shard that does
/// not answer at all is what the monitor itself reports; no timer on the shard is needed.
pub(super) fn watch_views(shard: &Shard) {
    // Observability only: elapsed times are reported, never used to decide a view's state.
    #[allow(clippy::disallowed_methods)]
    let now = std::time::Instant::now();
    for ((view, version, partition), (vp, log)) in shard.views.borrow().iter() {
        // What the partition published as folded: the reader's position, which is ahead of
        // the state's next offset where a timestamp start skipped records.
        let next = vp.version.folded[*partition as usize].load(Ordering::Relaxed);
        let end = log.readable_end_offset();
        let (watch, stalled) = vp.watch.get().look(next, end, vp.stopped.get(), now);
        if let Some(stalled) = stalled {
            vp.stalls.set(vp.stalls.get() + 1);
            tracing::warn!(
                shard = shard.id.0, view = %view, version, partition,
                next_offset = next, readable_end = end,
                queue = if vp.replaying.get() { "replay" } else { "live" },
                waiting_on = %vp.activity.get(),
                stalled_ms = stalled.as_millis() as u64,
                "view partition behind its log has not moved"
            );
        }
        vp.watch.set(watch);
    }
}

/// The retention floor of one partition: the lowest offset a running view version on this shard
/// has not folded yet (`u64::MAX` when none reads it). Retention never deletes a segment holding
/// an offset at or after it, so a view never loses records it still has to fold. Stopped and
/// failed view partitions do not pin the log.
pub(super) fn retention_floor(shard: &Shard, topic: &str, partition: u32) -> u64 {
    shard
        .views
        .borrow()
        .iter()
        .filter(|((_, _, p), (vp, _))| {
            *p == partition
                && &*vp.version.def.topic == topic
                && !vp.stopped.get()
                && vp.error.borrow().is_none()
        })
        .map(|((_, _, p), (vp, _))| {
            let folded = vp.version.folded[*p as usize].load(Ordering::Relaxed);
            folded.min(vp.state.borrow().next_offset)
        })
        .min()
        .unwrap_or(u64::MAX)
}
