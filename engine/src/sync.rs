//! The synchronization primitives of the engine's own cross-thread structures, swappable for
//! loom's: with `--cfg loom` these are `loom::sync` types, so the loom models (`loom_models`)
//! explore every interleaving and every weak-memory outcome of the production code that uses
//! them; otherwise they are `std::sync`, and a normal or release build has no loom cost.
//!
//! What goes through here: the view notifier (`view::wait::Notifier`), a view's served version
//! and versions (`view::Entry`, `view::Version`), the engine's shutdown flag and view registry
//! (`engine::Inner`), why a shard died (`shard::link::Life`), a consumer's gauges
//! (`shard::SubscriptionState`) and a rebuild's range-task cancel flag (`view::split`).
//! Structures that loom cannot model are not here: flume channels (third-party; a blocking wait
//! parks the OS thread), `OnceLock` (loom has none; std's is treated as one step), and
//! shard-local state (`Rc`, `Cell`: one thread).
//!
//! Under `--cfg loom` these types work only inside `loom::model`: the crate builds, but only the
//! loom models run (`cargo test -p kappa-engine --lib loom_models`, see `.ci/run`).

#[cfg(loom)]
pub(crate) use loom::sync::{atomic, Condvar, Mutex, MutexGuard, RwLock};
#[cfg(not(loom))]
pub(crate) use std::sync::{atomic, Condvar, Mutex, MutexGuard, RwLock};

#[cfg(all(test, not(loom)))]
mod tests {
    use crossbeam_utils::CachePadded;

    use super::atomic::AtomicU64;

    /// The cache line of a value that starts one (64 bytes; `CachePadded` aligns to 128 on
    /// x86-64, covering the adjacent-line prefetcher too).
    fn line<T>(value: &T) -> usize {
        let address = value as *const T as usize;
        assert_eq!(address % 64, 0, "not at the start of a cache line");
        address / 64
    }

    /// Counters that different threads write sit on cache lines of their own: a consumer's
    /// position (its thread) and its end offset (its shard), and each partition's folded offset
    /// (one shard each). The notifier's waiter count is checked in `view::wait`.
    #[test]
    fn counters_written_by_different_threads_do_not_share_cache_lines() {
        let state = crate::shard::SubscriptionState::new("t".into(), 0);
        assert_ne!(line(&*state.position), line(&*state.end_offset));
        // `Version::folded`'s element type: one line per partition.
        fn folded(version: &crate::view::Version) -> &CachePadded<AtomicU64> {
            &version.folded[0]
        }
        let _ = folded;
        let partitions: Box<[CachePadded<AtomicU64>]> =
            (0..2).map(|_| CachePadded::new(AtomicU64::new(0))).collect();
        assert_ne!(line(&*partitions[0]), line(&*partitions[1]));
    }
}
