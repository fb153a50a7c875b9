//! Test hooks: counts of what a view version's code does where no result shows it, so a test
//! can fail when the code that provides a guarantee is deleted. Compiled only for tests (this
//! crate's, or others' through the `test-hooks` feature); production builds have no field and
//! no counting.
//!
//! What each pins: a range's merge checks for preemption between steps (`merges`), a fold
//! checks every `FOLD_STEP` records (`fold_yields`, `range_fold_yields`), `progress` never
//! hashes the state (`digests`), and a dropped version's groups are freed on the blocking pool,
//! not on the shard (`freed`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::thread::ThreadId;

/// The counters of one view version (`ViewHandle::probes`).
#[derive(Debug, Default)]
pub struct Probes {
    /// Per merge of a range task's state on the owner: (groups the range brought, preemption
    /// checks between merge steps).
    merges: Mutex<Vec<(u64, u64)>>,
    /// Preemption checks inside a stored batch by a whole-partition fold (`runner::fold`).
    fold_yields: AtomicU64,
    /// Preemption checks inside a stored batch by range tasks (`split::fold_range`).
    range_fold_yields: AtomicU64,
    /// Records folded by range tasks.
    range_folded: AtomicU64,
    /// Whole-state digests computed by the owning shards.
    digests: AtomicU64,
    /// Per freed batch of a dropped version's groups: (the shard thread that dropped the
    /// version, the thread that freed them).
    freed: Mutex<Vec<(ThreadId, ThreadId)>>,
}

impl Probes {
    pub(crate) fn merged(&self, groups: u64, yields: u64) {
        self.merges
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push((groups, yields));
    }

    pub(crate) fn fold_yield(&self) {
        self.fold_yields.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn range_fold_yield(&self) {
        self.range_fold_yields.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn range_folded(&self, records: u64) {
        self.range_folded.fetch_add(records, Ordering::Relaxed);
    }

    pub(crate) fn digest(&self) {
        self.digests.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn record_freed(&self, shard: ThreadId) {
        let on = std::thread::current().id();
        self.freed.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push((shard, on));
    }

    /// (groups, preemption checks) of every range merged so far.
    pub fn merges(&self) -> Vec<(u64, u64)> {
        self.merges.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Preemption checks inside batches by whole-partition folds.
    pub fn fold_yields(&self) -> u64 {
        self.fold_yields.load(Ordering::Relaxed)
    }

    /// Preemption checks inside batches by range tasks.
    pub fn range_fold_yields(&self) -> u64 {
        self.range_fold_yields.load(Ordering::Relaxed)
    }

    /// Records folded by range tasks.
    pub fn range_folded_records(&self) -> u64 {
        self.range_folded.load(Ordering::Relaxed)
    }

    /// Whole-state digests computed.
    pub fn digests(&self) -> u64 {
        self.digests.load(Ordering::Relaxed)
    }

    /// (dropping shard thread, freeing thread) per freed batch of groups.
    pub fn freed(&self) -> Vec<(ThreadId, ThreadId)> {
        self.freed.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }
}
