//! Criterion bench for the CPU cost of one append per record: `PartitionLog::append_now` of a batch
//! of 1000 records (16-byte keys, 1 KiB or 100-byte values) into the log's DMA write buffer, with
//! the wait for the disk outside the timer (the writer task runs between timed appends, on the
//! same executor, and `reserve` waits for room untimed). What is timed is what a shard spends per
//! record: offsets, the Kafka encoding, both checksums and the copy into the write buffer.
//!
//! The log lives on the real device in a temporary directory (`KAPPA_BENCH_DIR`, else `target`),
//! with size retention applied between samples so the bench never fills the disk.
//!
//! The clock is the thread's CPU time (`CLOCK_THREAD_CPUTIME_ID`) by default: the machines this
//! runs on are shared, and wall time would count the time the thread spent descheduled while other
//! processes ran. `KAPPA_BENCH_CLOCK=wall` times with the wall clock instead.

// Timing is what a bench does.
#![allow(clippy::disallowed_methods)]

use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use glommio::{LocalExecutor, LocalExecutorBuilder, Placement};
use kappa_storage::{Durability, LogConfig, PartitionLog, ProducerInfo, Record, Retention, MIB};

const RECORDS: usize = 1000;
const KEY_SIZE: usize = 16;

fn scratch() -> tempfile::TempDir {
    let base = std::env::var_os("KAPPA_BENCH_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"), PathBuf::from);
    std::fs::create_dir_all(&base).expect("bench dir");
    tempfile::tempdir_in(base).expect("tempdir")
}

/// A point in time on the bench's clock (see the module doc).
fn now(cpu: bool) -> Duration {
    if cpu {
        let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: a valid clock id and a valid pointer to a timespec.
        let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
        assert_eq!(rc, 0, "clock_gettime");
        Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
    } else {
        Instant::now().duration_since(*START.get_or_init(Instant::now))
    }
}

static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();

fn executor() -> LocalExecutor {
    // The engine's (and `kappa-bench storage`'s) 64 MiB of registered DMA memory: with glommio's
    // 10 MiB default the write buffers spill out of it, and every fresh buffer's page faults
    // would be timed as append cost.
    LocalExecutorBuilder::new(Placement::Unbound)
        .io_memory(64 << 20)
        .spin_before_park(Duration::from_millis(0))
        .make()
        .expect("executor")
}

fn config() -> LogConfig {
    LogConfig {
        segment_size_bytes_max: 64 * MIB,
        retention: Retention { size_bytes_max: Some(256 * MIB), age_ms_max: None },
        ..LogConfig::default()
    }
}

fn bench(c: &mut Criterion) {
    let cpu = std::env::var("KAPPA_BENCH_CLOCK").map_or(true, |v| v != "wall");
    let dir = scratch();
    let ex = executor();
    for value_size in [1024usize, 100] {
        let log_dir = dir.path().join(format!("v{value_size}"));
        let log = Rc::new(ex.run(PartitionLog::open(&log_dir, config())).expect("open"));
        let keys: Vec<[u8; KEY_SIZE]> = (0..RECORDS)
            .map(|i| {
                let mut k = [b'k'; KEY_SIZE];
                k[..8].copy_from_slice(&(i as u64).to_le_bytes());
                k
            })
            .collect();
        let values: Vec<u8> = (0..value_size * RECORDS).map(|i| (i * 31 % 251) as u8).collect();
        let records: Vec<Record<'_>> = (0..RECORDS)
            .map(|i| {
                Record::new(
                    1_700_000_000_000 + i as i64,
                    Some(&keys[i][..]),
                    &values[i * value_size..(i + 1) * value_size],
                )
            })
            .collect();
        let mut group = c.benchmark_group(format!("append_{value_size}B"));
        group.throughput(Throughput::Elements(RECORDS as u64));
        group.sample_size(30);
        group.measurement_time(Duration::from_secs(8));
        group.bench_function("append_now_batch_1000", |b| {
            b.iter_custom(|iters| {
                ex.run(async {
                    let mut timed = Duration::ZERO;
                    for _ in 0..iters {
                        if !log.has_room() {
                            log.reserve().await;
                        }
                        let start = now(cpu);
                        let ticket = log
                            .append_now(&records, ProducerInfo::default(), Durability::None, 0)
                            .expect("append");
                        timed += now(cpu) - start;
                        let _ = std::hint::black_box(ticket);
                        // Let the writer run (untimed), as a shard's other tasks would.
                        glommio::yield_if_needed().await;
                    }
                    if log.size_bytes() > 192 * MIB {
                        log.sync().await.expect("sync");
                        log.apply_retention(0, u64::MAX).await.expect("retention");
                    }
                    timed
                })
            })
        });
        group.finish();
        ex.run(async { log.close().await.expect("close") });
        let pool = ex.run(async { kappa_storage::pool::stats() });
        eprintln!(
            "pool: {} takes, {} allocations, {} io_memory misses",
            pool.takes, pool.allocations, pool.io_memory_misses
        );
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
