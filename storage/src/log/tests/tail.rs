//! The latency path of the log's tail: a frame larger than a write buffer is one write (not a
//! full buffer plus a tail written after it), a reader at the tail gets the newest frames from
//! memory (also when they lie in several written buffers), and preallocation runs ahead of the
//! writes instead of in front of one.

use super::*;
use crate::io::{Disk, SimDisk};

fn config(sim: &SimDisk) -> LogConfig {
    LogConfig {
        segment_size_bytes_max: 1 << 20,
        write_buffer_size_bytes: 16 * 1024,
        // Reads longer than a write buffer: a range at the tail spans written buffers.
        read_buffer_size_bytes: 64 * 1024,
        // No background sync and no preallocation: the counts below are the frames' writes.
        unsynced_bytes_max: 1 << 20,
        preallocate_bytes: 0,
        disk: Disk::Sim(sim.clone()),
        ..small_config()
    }
}

/// The bytes the newest frame of `log` occupies.
fn last_frame_len(log: &PartitionLog, before: u64) -> u64 {
    log.size_bytes() - before
}

#[test]
fn a_frame_larger_than_the_write_buffer_is_one_write() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sim = SimDisk::new(31);
    let config = config(&sim);
    run(async {
        let log = PartitionLog::open(dir.path(), config.clone()).await.expect("open");
        fill(&log, 1, 10, Durability::Written).await;
        for per_batch in [130, 100, 150] {
            let (writes, size) = (sim.stats().writes, log.size_bytes());
            fill(&log, 1, per_batch, Durability::Written).await;
            let frame = last_frame_len(&log, size);
            assert!(
                frame > config.write_buffer_size_bytes as u64
                    && frame < 2 * config.write_buffer_size_bytes as u64,
                "a frame between one and two write buffers: {frame} bytes"
            );
            assert_eq!(
                sim.stats().writes - writes,
                1,
                "a frame of {frame} bytes (write buffers of {}) went out in one write",
                config.write_buffer_size_bytes
            );
        }
        // Larger than two buffers: still written whole, in more than one write.
        fill(&log, 1, 400, Durability::Written).await;
        let end = log.end_offset();
        log.close().await.expect("close");
        let log = PartitionLog::open(dir.path(), config.clone()).await.expect("reopen");
        assert_eq!(read_all(&log, Seek::Beginning).await, (0..end).collect::<Vec<u64>>());
        log.close().await.expect("close");
    });
}

#[test]
fn a_reader_at_the_tail_reads_the_newest_frames_from_memory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sim = SimDisk::new(32);
    let config = config(&sim);
    assert_eq!(config.tail_cache_buffers_max, 2);
    run(async {
        let log = PartitionLog::open(dir.path(), config.clone()).await.expect("open");
        // Frames of about 10 KiB, each in a buffer of its own that starts at the block where
        // the one before ended: the cache keeps the last two buffers.
        for _ in 0..3 {
            fill(&log, 1, 55, Durability::Written).await;
        }
        let from = log.end_offset() - 55;
        // One larger than a write buffer.
        let large = log.end_offset();
        fill(&log, 1, 130, Durability::Written).await;
        let end = log.end_offset();
        let reads = sim.stats().reads;
        // The newest two frames lie in two buffers: copied from both, not read.
        let seen = read_all(&log, Seek::Offset(from)).await;
        assert_eq!(seen, (from..end).collect::<Vec<u64>>());
        assert_eq!(sim.stats().reads, reads, "the newest two frames were read from memory");
        let seen = read_all(&log, Seek::Offset(large)).await;
        assert_eq!(seen, (large..end).collect::<Vec<u64>>());
        assert_eq!(sim.stats().reads, reads, "the newest frame was read from memory");
        // The first frames are no longer cached: read from the disk, the same bytes.
        let seen = read_all(&log, Seek::Beginning).await;
        assert_eq!(seen, (0..end).collect::<Vec<u64>>());
        assert!(sim.stats().reads > reads, "the first frame was read from the disk");
        log.close().await.expect("close");
    });
}

/// Preallocation runs ahead of the writes: after every write the file already reserves at least
/// half of `preallocate_bytes` past it, so the write that crosses the old end finds it extended
/// instead of waiting for an fallocate (`Writer::preallocate`).
#[test]
fn preallocation_runs_ahead_of_the_writes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sim = SimDisk::new(33);
    let config = LogConfig { preallocate_bytes: 64 * 1024, ..config(&sim) };
    run(async {
        let log = PartitionLog::open(dir.path(), config.clone()).await.expect("open");
        for _ in 0..40 {
            fill(&log, 1, 20, Durability::Written).await;
            let active = log.segments().pop().expect("active segment");
            let (_, reserved) = sim
                .files()
                .into_iter()
                .find(|(path, _)| *path == active.path)
                .expect("the active segment's file");
            assert!(
                reserved >= active.size_bytes + config.preallocate_bytes / 2,
                "{reserved} bytes reserved for {} written",
                active.size_bytes
            );
        }
        let end = log.end_offset();
        log.close().await.expect("close");
        let log = PartitionLog::open(dir.path(), config.clone()).await.expect("reopen");
        assert_eq!(read_all(&log, Seek::Beginning).await, (0..end).collect::<Vec<u64>>());
        log.close().await.expect("close");
    });
}
