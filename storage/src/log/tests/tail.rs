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
        close_reopen_and_read_all(log, dir.path(), &config).await;
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
        // Each extension reserves only the new range, from where the last one ended (tmpfs walks
        // every page of an fallocate's range: from 0 each time, the cost grew with the segment).
        let ranges = crate::io::PREALLOCATED_RANGES.with(|r| r.borrow().clone());
        assert!(ranges.len() >= 2, "{} preallocations: nothing was checked", ranges.len());
        // And leaves nothing between them unreserved (the simulated disk keeps one high-water
        // mark, so only the ranges show a gap).
        assert_eq!(ranges[0].0, 0, "the first reservation starts at the segment's start");
        for pair in ranges.windows(2) {
            assert!(pair[1].0 >= pair[0].1, "an extension reserved its range again: {pair:?}");
            assert!(pair[1].0 <= pair[0].1, "an extension left a gap unreserved: {pair:?}");
        }
        close_reopen_and_read_all(log, dir.path(), &config).await;
    });
}

/// Review 21 (hostile): frames larger than a write buffer (one write of up to two buffers, and
/// frames past two buffers) under the tightest unsynced bound `validate` allows (two write
/// buffers), with a slow fdatasync, cut by power at seeded points: the writer never leaves more
/// than the bound unsynced (and never stalls on a write as large as the bound), and every reopen
/// tells the torn tail from corruption (no refusal) and keeps every `synced` record.
#[test]
fn large_frames_under_the_tightest_unsynced_bound_survive_power_cuts() {
    let dir = std::path::PathBuf::from("/data/topics/t/0");
    for seed in 0..12u64 {
        let faults = crate::io::FaultOptions {
            freeze_after_ops: Some(15 + seed * 29 % 60),
            fsync_latency: std::time::Duration::from_millis(2),
            ..Default::default()
        };
        let sim = SimDisk::with_faults(seed, faults);
        let base = config(&sim);
        let config = LogConfig {
            unsynced_bytes_max: (crate::log::LARGE_FRAME_BUFFERS * base.write_buffer_size_bytes)
                as u64,
            preallocate_bytes: 64 * 1024,
            ..base
        };
        config.validate().expect("the tightest bound validate allows");
        let synced = run(async {
            let Ok(log) = PartitionLog::open(&dir, config.clone()).await else { return 0 };
            let mut synced = 0;
            'rounds: for round in 0..12u64 {
                for (per_batch, durability) in [
                    (130, Durability::Written),
                    (400, Durability::Written),
                    (150, Durability::Synced),
                ] {
                    let offset = log.end_offset();
                    let values: Vec<Vec<u8>> = (0..per_batch)
                        .map(|i| value_for(offset + i, 100 + ((i + round) as usize % 50)))
                        .collect();
                    let keys: Vec<String> =
                        (0..per_batch).map(|i| format!("key-{}", (offset + i) % 7)).collect();
                    let records: Vec<Record<'_>> = values
                        .iter()
                        .zip(&keys)
                        .enumerate()
                        .map(|(i, (v, k))| {
                            Record::new(1_000 + (offset + i as u64) as i64, Some(k.as_bytes()), v)
                        })
                        .collect();
                    match log.append(&records, durability).await {
                        Ok(_) if durability == Durability::Synced => synced = log.end_offset(),
                        Ok(_) => {}
                        Err(_) => break 'rounds,
                    }
                    let peak = log.stats().unsynced_bytes_peak;
                    assert!(peak <= config.unsynced_bytes_max, "seed {seed}: {peak} unsynced");
                }
            }
            synced
        });
        let after = sim.power_cut(seed);
        let config = LogConfig { disk: Disk::Sim(after), ..config };
        reopens_with_every_synced_record(&dir, config, seed, synced);
    }
}

/// The largest single write (a large frame's buffer: `LARGE_FRAME_BUFFERS` write buffers) must
/// fit under the unsynced bound, or the writer could never admit it: `validate` refuses a bound
/// below it (with `LARGE_FRAME_BUFFERS` at 3 and the old two-buffer check, the writer looped in
/// `bound_unsynced` without yielding on the first such frame).
#[test]
fn the_unsynced_bound_admits_the_largest_write() {
    let base = small_config();
    let wb = base.write_buffer_size_bytes;
    let largest = (crate::log::LARGE_FRAME_BUFFERS * wb) as u64;
    let config = LogConfig { unsynced_bytes_max: largest, ..base.clone() };
    config.validate().expect("a bound of the largest write");
    let config = LogConfig { unsynced_bytes_max: largest - crate::io::BLOCK_SIZE as u64, ..base };
    assert!(config.validate().is_err(), "a bound below the largest write is refused");
}
