//! The global allocator of kappa's binaries (`kappa`, the tests' `kappa-it`, `kappa-bench`):
//! mimalloc, not the C library's malloc.
//!
//! Why: memory crosses threads on the data path. A shard frees what its clients allocated (a
//! producer's records, once appended, and their reply channels) and its clients free what a shard
//! allocated (each batch a consumer is handed). glibc's malloc gives a block freed by another
//! thread back to the arena that allocated it, under that arena's lock, once the freeing thread's
//! small cache of that size is full: the shard thread then took the lock of the client's arena
//! while the client allocated from it, and waited in `futex` whenever the lock was held, for as
//! long as the holder was preempted (the client threads share a CPU). Measured in `kappa-bench
//! tail` at 50% load on tmpfs (`perf record -e syscalls:sys_enter_futex --call-graph dwarf` on the
//! shard thread): about 1,100 futex waits a second, in `free` of a producer's `Payload` and in the
//! `malloc` of `OwnedBatch::copy_of`, and `perf sched timehist` put 0.8 s of 4 s of the shard
//! thread asleep in futex waits (p99 8 ms each) on a loaded machine. A shard must never block;
//! mimalloc frees a block from another thread with an atomic push onto its page's list, and takes
//! no lock on either side.
//!
//! Built with mimalloc's `no_thp` (workspace `Cargo.toml`): mimalloc 3 otherwise asks for
//! transparent huge pages on its arenas (`madvise(MADV_HUGEPAGE)`), so the first touch of each
//! 2 MiB region faults and zeroes all of it, and its purges (1 s after memory falls idle) hand
//! regions back only for the next burst to fault them in again. In `kappa-bench partitions`
//! (`perf record` of the timed part only, `KAPPA_BENCH_PERF_CTL`) that zeroing
//! (`do_huge_pmd_anonymous_page` -> `clear_page_erms`, from `mi_page_free_list_extend` under a staged
//! batch's growth and under glommio's DMA buffers past the registered pool) was 13.6% of the shard
//! threads' time, and the same records pre-grouped by partition went from 3.7 M to 5.4-6.3 M
//! records/s at 1,000 partitions without it (`MIMALLOC_ALLOW_THP=0`, alternated runs).
//! `no_thp` only skips that `madvise`: enough where the host's THP mode is `madvise`; where it is
//! `always` the kernel backs the arenas with huge pages anyway, and `MIMALLOC_ALLOW_THP=0`
//! (`prctl(PR_SET_THP_DISABLE)` for the process) is what turns them off.
//!
//! An embedding program chooses its own allocator; the README says why it should be one like this.

/// The allocator every kappa binary declares as `#[global_allocator]`.
pub type Allocator = mimalloc::MiMalloc;

/// The value to declare it with.
pub const ALLOCATOR: Allocator = mimalloc::MiMalloc;

/// True when `ptr` lies in mimalloc's heap: a binary's test asks it of a block from its global
/// allocator, so a binary that lost its `#[global_allocator]` line fails a test.
pub fn is_mimalloc_block(ptr: *const u8) -> bool {
    // SAFETY: mi_is_in_heap_region only compares the address with mimalloc's own regions; any
    // pointer value is allowed.
    unsafe { libmimalloc_sys::mi_is_in_heap_region(ptr.cast()) }
}
