//! The synchronization primitives of the engine's own cross-thread structures, swappable for
//! loom's: with `--cfg loom` these are `loom::sync` types, so the loom models (`loom_models`)
//! explore every interleaving and every weak-memory outcome of the production code that uses
//! them; otherwise they are `std::sync`, and a normal or release build has no loom cost.
//!
//! What goes through here: the view notifier (`view::wait::Notifier`), a view's served version
//! and versions (`view::Entry`, `view::Version`), and the engine's shutdown flag and view
//! registry (`engine::Inner`). Structures that loom cannot model are not here: flume channels
//! (third-party; a blocking wait parks the OS thread), `OnceLock` (loom has none; std's is
//! treated as one step), and shard-local state (`Rc`, `Cell`: one thread).
//!
//! Under `--cfg loom` these types work only inside `loom::model`: the crate builds, but only the
//! loom models run (`cargo test -p kappa-engine --lib loom_models`, see `.ci/run`).

#[cfg(loom)]
pub(crate) use loom::sync::{atomic, Condvar, Mutex, MutexGuard, RwLock};
#[cfg(not(loom))]
pub(crate) use std::sync::{atomic, Condvar, Mutex, MutexGuard, RwLock};
