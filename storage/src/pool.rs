//! The per-shard pool of DMA write buffers, and its counters.
//!
//! Why it exists: every partition log used to hold its own 1 MiB write buffer for its whole life,
//! plus a few recycled ones. glommio hands DMA buffers out of the executor's `io_memory` (the
//! memory it registers with io_uring, 64 MiB per shard in the engine); past about 60 partitions
//! per shard that memory was gone, and glommio silently fell back to ordinary allocations (an
//! mmap, page faults and an munmap per buffer) on the hot path. Now a log takes a buffer from this
//! pool when it has bytes to write and gives it back when the write completed (or when its tail
//! cache lets go of it), so an idle partition holds no buffer, and the memory a shard spends on
//! write buffers is shared by all its partitions.
//!
//! One pool per executor thread (`thread_local!`): a shard is one thread, `DmaBuffer`s are `!Send`,
//! and nothing here is ever locked. Buffers are plain `DmaBuffer`s (glommio's `write_rc_at` wants
//! an `Rc<DmaBuffer>`), so a log encodes into them directly; readers may still hold a buffer
//! through the tail cache when the log lets go of it, and then the buffer's memory returns to
//! glommio when the last reader drops it.
//!
//! Exhaustion of `io_memory` is never silent: a buffer glommio had to allocate outside it is
//! counted (`PoolStats::io_memory_misses`), and such buffers are not kept in the pool (they go
//! back to the allocator, so the next take tries `io_memory` again).
//!
//! The tail caches of all logs on a shard share one bound (`PoolConfig::tail_cache_bytes_max`):
//! a log caches a written buffer only while the shard's caches hold less than that, so thousands
//! of partitions cannot pin thousands of buffers for their tail readers.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;

use glommio::io::DmaBuffer;

use crate::MIB;

/// Bounds of a shard's pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolConfig {
    /// Bytes of idle buffers the pool keeps for reuse; more are returned to glommio.
    pub free_bytes_max: usize,
    /// Bytes of written buffers all tail caches of this shard may hold together.
    pub tail_cache_bytes_max: usize,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig { free_bytes_max: 16 * MIB as usize, tail_cache_bytes_max: 16 * MIB as usize }
    }
}

/// What a shard's pool did and holds. Counters since the thread started; gauges now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Buffers handed to logs.
    pub takes: u64,
    /// Of `takes`, those served from the pool's idle buffers.
    pub reuses: u64,
    /// Of `takes`, new buffers glommio allocated.
    pub allocations: u64,
    /// Of `allocations`, those glommio could not place in the executor's `io_memory` (the
    /// registered DMA pool was exhausted): each one is an ordinary allocation on the hot path.
    pub io_memory_misses: u64,
    /// Gauge: buffers logs hold now (filling, queued, in flight, in a tail cache).
    pub in_use: u64,
    /// Gauge: bytes of `in_use`.
    pub in_use_bytes: u64,
    /// Gauge: idle buffers kept for reuse, and their bytes.
    pub free: u64,
    pub free_bytes: u64,
    /// Gauge: bytes the tail caches hold (part of `in_use_bytes`).
    pub tail_cache_bytes: u64,
}

struct Pool {
    /// The executor the pooled buffers belong to: a buffer registered with one executor's ring
    /// must not be written through another's (a test thread may run executors one after another).
    executor: Cell<usize>,
    config: Cell<PoolConfig>,
    /// Idle buffers by size.
    free: RefCell<BTreeMap<usize, Vec<DmaBuffer>>>,
    stats: Cell<PoolStats>,
}

thread_local! {
    static POOL: Rc<Pool> = Rc::new(Pool {
        executor: Cell::new(0),
        config: Cell::new(PoolConfig::default()),
        free: RefCell::new(BTreeMap::new()),
        stats: Cell::new(PoolStats::default()),
    });
}

/// The pool, without looking at the executor: for gives and releases, which may run while an
/// executor tears its tasks down (when `glommio::executor()` would panic).
fn with<R>(f: impl FnOnce(&Pool) -> R) -> R {
    POOL.with(|pool| f(pool))
}

/// The pool of the executor running now (reset when a new executor runs on this thread).
fn with_current<R>(f: impl FnOnce(&Pool) -> R) -> R {
    POOL.with(|pool| {
        let executor = glommio::executor().id();
        if pool.executor.get() != executor {
            // A new executor on this thread: the old one's buffers and counts are not ours.
            pool.executor.set(executor);
            pool.free.borrow_mut().clear();
            pool.stats.set(PoolStats::default());
            pool.config.set(PoolConfig::default());
        }
        f(pool)
    })
}

fn update(pool: &Pool, f: impl FnOnce(&mut PoolStats)) {
    let mut stats = pool.stats.get();
    f(&mut stats);
    pool.stats.set(stats);
}

/// Sets this thread's pool bounds (a shard calls it once at start). Idle buffers past the new
/// bound are released.
pub fn configure(config: PoolConfig) {
    with_current(|pool| {
        pool.config.set(config);
        trim_free(pool);
    });
}

/// This thread's pool counters.
pub fn stats() -> PoolStats {
    with_current(|pool| pool.stats.get())
}

/// A buffer of `size` bytes for a log to fill: an idle one, or a new one from glommio.
pub(crate) fn take(size: usize) -> DmaBuffer {
    with_current(|pool| {
        let reused = pool.free.borrow_mut().get_mut(&size).and_then(Vec::pop);
        let buf = match reused {
            Some(buf) => {
                update(pool, |s| {
                    s.reuses += 1;
                    s.free -= 1;
                    s.free_bytes -= size as u64;
                });
                buf
            }
            None => {
                let buf = glommio::allocate_dma_buffer(size);
                let miss = !buf.is_io_memory();
                if miss {
                    tracing::debug!(
                        size,
                        "glommio's io_memory is exhausted: a write buffer outside the registered pool"
                    );
                }
                update(pool, |s| {
                    s.allocations += 1;
                    s.io_memory_misses += u64::from(miss);
                });
                buf
            }
        };
        update(pool, |s| {
            s.takes += 1;
            s.in_use += 1;
            s.in_use_bytes += size as u64;
        });
        buf
    })
}

/// Gives back a buffer `take` handed out. Kept for reuse when it lives in `io_memory` and the
/// pool has room, else released.
pub(crate) fn give(mut buf: DmaBuffer) {
    let size = buf.capacity();
    with(|pool| {
        update(pool, |s| {
            s.in_use = s.in_use.saturating_sub(1);
            s.in_use_bytes = s.in_use_bytes.saturating_sub(size as u64);
        });
        buf.restore_len();
        let config = pool.config.get();
        let stats = pool.stats.get();
        if buf.is_io_memory() && stats.free_bytes as usize + size <= config.free_bytes_max {
            pool.free.borrow_mut().entry(size).or_default().push(buf);
            update(pool, |s| {
                s.free += 1;
                s.free_bytes += size as u64;
            });
        }
    })
}

/// `give` for a buffer that readers may still share: when one does, the log lets go of it and
/// the last reader's drop returns its memory to glommio.
pub(crate) fn give_rc(buf: Rc<DmaBuffer>) {
    let size = buf.capacity();
    match Rc::try_unwrap(buf) {
        Ok(buf) => give(buf),
        Err(_) => with(|pool| {
            update(pool, |s| {
                s.in_use = s.in_use.saturating_sub(1);
                s.in_use_bytes = s.in_use_bytes.saturating_sub(size as u64);
            })
        }),
    }
}

/// Whether a tail cache may keep one more buffer of `size` bytes; if so, it is counted until
/// `tail_cache_release`.
pub(crate) fn tail_cache_admit(size: usize) -> bool {
    with(|pool| {
        let stats = pool.stats.get();
        let admit =
            stats.tail_cache_bytes as usize + size <= pool.config.get().tail_cache_bytes_max;
        if admit {
            update(pool, |s| s.tail_cache_bytes += size as u64);
        }
        admit
    })
}

/// A tail cache let go of a buffer `tail_cache_admit` counted.
pub(crate) fn tail_cache_release(size: usize) {
    with(|pool| {
        update(pool, |s| s.tail_cache_bytes = s.tail_cache_bytes.saturating_sub(size as u64))
    })
}

fn trim_free(pool: &Pool) {
    let max = pool.config.get().free_bytes_max;
    let mut free = pool.free.borrow_mut();
    while pool.stats.get().free_bytes as usize > max {
        let Some((&size, list)) = free.iter_mut().next_back() else { break };
        if list.pop().is_none() {
            free.remove(&size);
            continue;
        }
        update(pool, |s| {
            s.free -= 1;
            s.free_bytes -= size as u64;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn on_executor(f: impl FnOnce() + Send + 'static) {
        glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .io_memory(4 << 20)
            .spawn(move || async move { f() })
            .expect("executor starts")
            .join()
            .expect("executor ends");
    }

    #[test]
    fn buffers_are_reused_and_counted() {
        on_executor(|| {
            configure(PoolConfig { free_bytes_max: 1 << 20, tail_cache_bytes_max: 0 });
            let a = take(256 << 10);
            assert_eq!(stats().in_use, 1);
            give(a);
            let mut b = take(256 << 10);
            let s = stats();
            assert_eq!((s.takes, s.reuses, s.allocations, s.in_use), (2, 1, 1, 1));
            // A trimmed buffer (a partial write) comes back whole.
            b.trim_to_size(4096);
            give(b);
            assert_eq!(take(256 << 10).len(), 256 << 10);
        });
    }

    #[test]
    fn io_memory_exhaustion_is_counted_and_not_pooled() {
        on_executor(|| {
            configure(PoolConfig { free_bytes_max: 64 << 20, tail_cache_bytes_max: 0 });
            // 4 MiB of io_memory cannot hold eight 1 MiB buffers.
            let held: Vec<DmaBuffer> = (0..8).map(|_| take(1 << 20)).collect();
            let misses = stats().io_memory_misses;
            assert!(misses >= 4, "{:?}", stats());
            for buf in held {
                give(buf);
            }
            // Only buffers inside io_memory were kept.
            assert_eq!(stats().free, 8 - misses);
            assert_eq!(stats().in_use, 0);
        });
    }

    #[test]
    fn tail_cache_bound_is_shared() {
        on_executor(|| {
            configure(PoolConfig { free_bytes_max: 0, tail_cache_bytes_max: 2 << 20 });
            assert!(tail_cache_admit(1 << 20));
            assert!(tail_cache_admit(1 << 20));
            assert!(!tail_cache_admit(1 << 20));
            tail_cache_release(1 << 20);
            assert!(tail_cache_admit(1 << 20));
        });
    }
}
