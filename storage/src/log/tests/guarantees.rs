//! The log's guarantees under damage and faults, each with a test that fails without it: torn tail
//! versus corruption, fences after a failed fdatasync, retention under readers and floors, append
//! time, group commit, the synced prefix, preallocation.

use std::path::PathBuf;

use super::*;
use crate::io::{Disk, FaultKind, FaultOptions, SimDisk};
use crate::ProducerInfo;

/// A config on a fresh simulated disk.
fn sim_config(sim: &SimDisk) -> LogConfig {
    LogConfig { disk: Disk::Sim(sim.clone()), ..small_config() }
}

fn sim_dir() -> PathBuf {
    PathBuf::from("/data/topics/t/0")
}

/// Regression (issue 8, defect 1): recovery took the first bad frame anywhere in the active
/// segment for a torn tail and cut everything after it. One flipped byte at position 300 of an
/// active segment of 500 synced records made `open` succeed with end offset 0: all 500 records
/// dropped with one warning. Damage followed by valid frames farther than a power cut can tear
/// is corruption now: `open` refuses with the file and position, and nothing is cut.
#[test]
fn a_flipped_byte_before_synced_records_is_corruption_and_nothing_is_cut() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = LogConfig { segment_size_bytes_max: 1 << 20, ..small_config() };
    let active = run(async {
        let log = PartitionLog::open(dir.path(), config.clone()).await.expect("open");
        fill(&log, 50, 10, Durability::Synced).await;
        assert_eq!(log.end_offset(), 500);
        log.close().await.expect("close");
        log.segments().last().expect("segment").clone()
    });
    assert!(active.size_bytes > config.torn_tail_window_bytes() + 2048, "{active:?}");
    let before = std::fs::read(&active.path).expect("read");
    flip_byte(&active.path, 300);
    run(async {
        match PartitionLog::open(dir.path(), config.clone()).await {
            Err(Error::CorruptBeforeValid { path, position, valid_at, .. }) => {
                assert_eq!(path, active.path);
                assert_eq!(position, 0, "the frame holding byte 300");
                assert!(valid_at > position);
            }
            Err(other) => panic!("wrong error: {other}"),
            Ok(log) => {
                panic!("opened with end offset {}: damage taken for a torn tail", log.end_offset())
            }
        }
    });
    let after = std::fs::read(&active.path).expect("read");
    assert_eq!(after.len(), before.len(), "nothing was truncated");
    assert_eq!(after.iter().zip(&before).filter(|(a, b)| a != b).count(), 1);
}

/// The same damage with the default unsynced bound (16 MiB, far larger than this whole log): the
/// window alone cannot tell, but the frames after the damage say how much was synced when they
/// were appended (`synced_before`), and that covers byte 300.
#[test]
fn damage_in_synced_bytes_is_corruption_whatever_the_window() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = LogConfig {
        segment_size_bytes_max: 1 << 20,
        unsynced_bytes_max: LogConfig::default().unsynced_bytes_max,
        ..small_config()
    };
    let active = run(async {
        let log = PartitionLog::open(dir.path(), config.clone()).await.expect("open");
        fill(&log, 50, 10, Durability::Synced).await;
        log.close().await.expect("close");
        log.segments().last().expect("segment").clone()
    });
    assert!(active.size_bytes < config.torn_tail_window_bytes());
    flip_byte(&active.path, 300);
    run(async {
        let result = PartitionLog::open(dir.path(), config.clone()).await;
        assert!(
            matches!(result, Err(Error::CorruptBeforeValid { position: 0, .. })),
            "{:?}",
            result.err()
        );
    });
}

/// A zeroed block (a lost write, a bad sector read back as zeros) in the synced middle of the
/// active segment looks like a clean end followed by garbage; it is corruption too.
#[test]
fn a_zeroed_block_before_synced_records_is_corruption() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = LogConfig { segment_size_bytes_max: 1 << 20, ..small_config() };
    let active = run(async {
        let log = PartitionLog::open(dir.path(), config.clone()).await.expect("open");
        fill(&log, 60, 10, Durability::Synced).await;
        log.close().await.expect("close");
        log.segments().last().expect("segment").clone()
    });
    {
        use std::os::unix::fs::FileExt;
        let file = std::fs::OpenOptions::new().write(true).open(&active.path).expect("open");
        file.write_all_at(&[0u8; 4096], 4096).expect("zero a block");
    }
    run(async {
        let result = PartitionLog::open(dir.path(), config.clone()).await;
        assert!(matches!(result, Err(Error::CorruptBeforeValid { .. })), "{:?}", result.err());
    });
}

/// The other side of the rule: damage in bytes that were never synced when the frames after it
/// were appended, within the window of the end, is a torn tail. It is cut, with the valid frames
/// after it (never synced: a power cut could have left the same hole).
#[test]
fn damage_in_unsynced_bytes_near_the_end_is_a_torn_tail_and_is_cut() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = LogConfig { segment_size_bytes_max: 1 << 20, ..small_config() };
    let (synced_end, active) = run(async {
        let log = PartitionLog::open(dir.path(), config.clone()).await.expect("open");
        fill(&log, 50, 10, Durability::Synced).await;
        let synced_end = log.segments().last().expect("segment").size_bytes;
        // 10 more batches, written but not synced (under half the unsynced bound, so no
        // background sync either): their frames say the segment was synced up to `synced_end`.
        fill(&log, 10, 10, Durability::Written).await;
        assert_eq!(log.synced_end_offset(), 500);
        // The process dies here: a close would sync those frames and record the sync in the
        // watermark, and damage in them would be corruption.
        (synced_end, log.segments().last().expect("segment").clone())
    });
    // A hole in the unsynced part, with valid frames after it.
    let hole = synced_end.next_multiple_of(4096) + 4096;
    assert!(hole + 8192 < active.size_bytes, "{hole} {active:?}");
    {
        use std::os::unix::fs::FileExt;
        let file = std::fs::OpenOptions::new().write(true).open(&active.path).expect("open");
        file.write_all_at(&[0u8; 4096], hole).expect("zero a block");
    }
    run(async {
        let log = PartitionLog::open(dir.path(), config.clone()).await.expect("torn tail");
        assert!(log.recovery().truncated_bytes > 0);
        let end = log.end_offset();
        assert!(end < 600 && end > 500, "cut at the hole, not before the synced end: {end}");
        assert_eq!(read_all(&log, Seek::Beginning).await, (0..end).collect::<Vec<_>>());
        // Appends continue at the cut, and a reopen is clean.
        fill(&log, 2, 10, Durability::Synced).await;
        log.close().await.expect("close");
        let log = PartitionLog::open(dir.path(), config.clone()).await.expect("reopen");
        assert_eq!(log.recovery().truncated_bytes, 0);
        assert_eq!(read_all(&log, Seek::Beginning).await, (0..end + 20).collect::<Vec<_>>());
        log.close().await.expect("close");
    });
}

/// The same hole in bytes that were synced is corruption, however near the end.
#[test]
fn damage_in_synced_bytes_near_the_end_is_corruption() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = LogConfig { segment_size_bytes_max: 1 << 20, ..small_config() };
    let active = run(async {
        let log = PartitionLog::open(dir.path(), config.clone()).await.expect("open");
        fill(&log, 60, 10, Durability::Synced).await;
        log.close().await.expect("close");
        log.segments().last().expect("segment").clone()
    });
    let hole = (active.size_bytes - 5000) / 4096 * 4096;
    {
        use std::os::unix::fs::FileExt;
        let file = std::fs::OpenOptions::new().write(true).open(&active.path).expect("open");
        file.write_all_at(&[0u8; 4096], hole).expect("zero a block");
    }
    run(async {
        let result = PartitionLog::open(dir.path(), config.clone()).await;
        assert!(matches!(result, Err(Error::CorruptBeforeValid { .. })), "{:?}", result.err());
    });
}

/// A failed fdatasync fences the partition: the failed append, every later append (even one whose
/// write completes) and every wait for more readable records get `Error::Fenced`; nothing more
/// becomes readable; what was readable before stays readable; a reopen recovers.
#[test]
fn a_failed_fdatasync_fences_the_partition_until_it_is_reopened() {
    let sim = SimDisk::new(17);
    let config = sim_config(&sim);
    run(async {
        let log = PartitionLog::open(&sim_dir(), config.clone()).await.expect("open");
        fill(&log, 3, 10, Durability::Synced).await;
        let readable = log.readable_end_offset();
        sim.fail_next(FaultKind::FsyncEio);
        // The record `fill` would append next, so `read_all` can check it if it is readable.
        let value = value_for(30, 100);
        let record = [Record::new(1_030, Some(b"key-2"), &value)];
        let error = log.append(&record, Durability::Synced).await.expect_err("fsync failed");
        match &error {
            Error::Fenced { cause: "fdatasync", source, .. } => {
                assert_eq!(source.raw_os_error(), Some(5));
            }
            other => panic!("wrong error: {other}"),
        }
        assert!(log.is_fenced());
        // No later write is acknowledged, whatever its durability.
        for durability in [Durability::Written, Durability::Synced] {
            let result = log.append(&record, durability).await;
            assert!(matches!(result, Err(Error::Fenced { .. })), "{durability}: {result:?}");
        }
        assert!(matches!(log.sync().await, Err(Error::Fenced { .. })));
        // Its write completed before the sync failed, so it may be readable; nothing after it is.
        let end = log.readable_end_offset();
        assert!(end <= readable + 1, "readable end moved from {readable} to {end}");
        assert!(matches!(log.wait_readable(end).await, Err(Error::Fenced { .. })));
        assert_eq!(read_all(&log, Seek::Beginning).await, (0..end).collect::<Vec<_>>());
        assert!(log.close().await.is_err(), "close reports the fence");

        let log = PartitionLog::open(&sim_dir(), config.clone()).await.expect("reopen");
        assert!(!log.is_fenced());
        let start = log.end_offset();
        fill(&log, 1, 10, Durability::Synced).await;
        assert_eq!(read_all(&log, Seek::Beginning).await, (0..start + 10).collect::<Vec<_>>());
        log.close().await.expect("close");
    });
}

/// A write that completes after the fence is not acknowledged and never becomes readable: the
/// kernel may have dropped the pages the failed fdatasync was flushing, so nothing written since
/// the last good sync can be vouched for.
#[test]
fn a_write_that_lands_after_a_failed_fdatasync_is_neither_readable_nor_acknowledged() {
    let sim = SimDisk::with_faults(
        29,
        crate::io::FaultOptions {
            fsync_latency: std::time::Duration::from_millis(5),
            write_latency: std::time::Duration::from_millis(30),
            ..crate::io::FaultOptions::default()
        },
    );
    let config = LogConfig { write_in_flight_max: 1, ..sim_config(&sim) };
    run(async {
        let log = Rc::new(PartitionLog::open(&sim_dir(), config).await.expect("open"));
        let writes_before = sim.stats().writes;
        sim.fail_next(FaultKind::FsyncEio);
        let first = [Record::new(0, None, b"synced, but its fdatasync fails")];
        let ticket =
            log.append_now(&first, ProducerInfo::default(), Durability::Synced, 0).expect("append");
        // As soon as the first record is written (its sync starts now), append the second: its
        // write is in flight while the sync fails, and lands after.
        let second = {
            let log = log.clone();
            glommio::spawn_local(async move {
                log.wait_readable(0).await.expect("the first record is written");
                let second = [Record::new(0, None, b"written after the fence")];
                let ticket = log
                    .append_now(&second, ProducerInfo::default(), Durability::Written, 0)
                    .expect("the log is not fenced yet");
                log.wait(ticket).await
            })
        };
        assert!(matches!(log.wait(ticket).await, Err(Error::Fenced { .. })));
        let second = second.await;
        assert!(matches!(second, Err(Error::Fenced { .. })), "acknowledged: {second:?}");
        // Closing waits for the writer, so the late write has landed by now.
        assert!(log.close().await.is_err());
        assert_eq!(
            sim.stats().writes - writes_before,
            2,
            "the second write was issued before the fence"
        );
        assert_eq!(log.readable_end_offset(), 1, "the late write became readable");
    });
}

/// A failed write fences the log the same way, and `written` appends behind it are refused even
/// when their own write completes.
#[test]
fn a_failed_write_fences_the_partition() {
    let sim = SimDisk::new(23);
    let config = sim_config(&sim);
    run(async {
        let log = PartitionLog::open(&sim_dir(), config).await.expect("open");
        fill(&log, 2, 10, Durability::Written).await;
        sim.fail_next(FaultKind::WriteEio);
        let record = [Record::new(0, None, b"x")];
        let error = log.append(&record, Durability::Written).await.expect_err("write failed");
        assert!(matches!(error, Error::Fenced { cause: "write", .. }), "{error}");
        assert!(matches!(log.append(&record, Durability::None).await, Err(Error::Fenced { .. })));
        assert_eq!(log.readable_end_offset(), 20);
        let _ = log.close().await;
    });
}

/// Regression (issue 8, defect 2): retention deleted the segment an open reader was on, and the
/// reader then reported "caught up" forever while `wait_readable` returned at once, so its
/// consumer spun the executor. Now the reader gets a typed error with the new start offset.
#[test]
fn retention_under_a_reader_is_offset_out_of_range_not_caught_up() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = small_config();
    config.retention = Retention { size_bytes_max: Some(64 * 1024), age_ms_max: None };
    run(async {
        let log = PartitionLog::open(dir.path(), config).await.expect("open");
        fill(&log, 80, 25, Durability::Written).await;
        let mut reader = log.reader(Seek::Beginning).expect("reader");
        let first = reader.next_batch().await.expect("read").expect("a batch");
        assert_eq!(first.batch.base_offset(), 0);
        let report = log.apply_retention(0, u64::MAX).await.expect("retention");
        assert!(report.segments_deleted > 1, "{report:?}");
        let start = log.start_offset();
        match reader.next_batch().await {
            Err(Error::OffsetOutOfRange { start: reported, requested, .. }) => {
                assert_eq!(reported, start);
                assert!(requested < start);
            }
            Ok(None) => panic!("a reader behind the log start reported caught up"),
            Ok(Some(b)) => panic!("read offset {} from a deleted segment", b.batch.base_offset()),
            Err(other) => panic!("wrong error: {other}"),
        }
        log.close().await.expect("close");
    });
}

/// A reader that read all of its segment, when retention deletes that segment under a floor at
/// exactly the reader's next offset (what a view pins), moves on to the next segment: it lost
/// nothing, so `OffsetOutOfRange` would be a lie (an engine test saw a view fail with "offset 100
/// is out of range: the log holds offsets 100..3000").
#[test]
fn a_reader_at_the_end_of_a_deleted_segment_moves_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = small_config();
    config.retention = Retention { size_bytes_max: Some(1), age_ms_max: None };
    run(async {
        let log = PartitionLog::open(dir.path(), config).await.expect("open");
        fill(&log, 80, 25, Durability::Written).await;
        let first_end = log.segments()[0].next_offset;
        let mut reader = log.reader(Seek::Beginning).expect("reader");
        while reader.next_offset() < first_end {
            reader.next_batch().await.expect("read").expect("a batch");
        }
        assert_eq!(reader.next_offset(), first_end, "frames end on the segment boundary");
        let report = log.apply_retention(0, first_end).await.expect("retention");
        assert_eq!(report.segments_deleted, 1);
        assert_eq!(log.start_offset(), first_end);
        let next = reader.next_batch().await.expect("no OffsetOutOfRange").expect("a batch");
        assert_eq!(next.first_offset, first_end);
        log.close().await.expect("close");
    });
}

/// Retention never deletes a segment holding an offset at or after the caller's floor.
#[test]
fn retention_keeps_everything_from_the_floor() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = small_config();
    config.retention = Retention { size_bytes_max: Some(1), age_ms_max: None };
    run(async {
        let log = PartitionLog::open(dir.path(), config).await.expect("open");
        fill(&log, 80, 25, Durability::Written).await;
        log.apply_retention(0, 700).await.expect("retention");
        let start = log.start_offset();
        assert!(start > 0 && start <= 700, "start {start}");
        let holding_700 = log.segments().into_iter().find(|s| s.next_offset > 700).expect("seg");
        assert!(holding_700.base_offset <= 700);
        assert_eq!(read_all(&log, Seek::Offset(700)).await, (700..2000).collect::<Vec<_>>());
        log.apply_retention(0, u64::MAX).await.expect("retention without a floor");
        assert_eq!(log.segments().len(), 1, "only the active segment is left");
        log.close().await.expect("close");
    });
}

/// Age retention measures the append time the appender gave, not the records' event times (a
/// producer replaying old events must not see them deleted the moment they land), and the append
/// time survives a reopen in the sealed index.
#[test]
fn age_retention_uses_the_append_time() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = small_config();
    config.retention = Retention { size_bytes_max: None, age_ms_max: Some(1_000) };
    let value = [5u8; 2000];
    let append = |log: &PartitionLog, now_ms: i64| {
        // Event times from 1970: far older than any retention horizon.
        let records: Vec<Record<'_>> = (0..10).map(|i| Record::new(i, None, &value)).collect();
        log.append_now(&records, ProducerInfo::default(), Durability::Written, now_ms)
            .expect("append")
    };
    run(async {
        let log = PartitionLog::open(dir.path(), config.clone()).await.expect("open");
        for _ in 0..8 {
            let ticket = append(&log, 50_000);
            log.wait(ticket).await.expect("wait");
        }
        for _ in 0..8 {
            let ticket = append(&log, 90_000);
            log.wait(ticket).await.expect("wait");
        }
        log.close().await.expect("close");
        let log = PartitionLog::open(dir.path(), config.clone()).await.expect("reopen");
        let sealed: Vec<_> = log.segments().into_iter().filter(|s| s.sealed).collect();
        assert!(sealed.len() >= 3, "{sealed:?}");
        assert!(sealed.iter().all(|s| s.append_time_ms == 50_000 || s.append_time_ms == 90_000));
        // At 50_500 nothing is a second old by append time, though every event is from 1970.
        let report = log.apply_retention(50_500, u64::MAX).await.expect("retention");
        assert_eq!(report.segments_deleted, 0);
        // At 60_000 the segments last appended to at 50_000 go, the later ones stay.
        let report = log.apply_retention(60_000, u64::MAX).await.expect("retention");
        assert!(report.segments_deleted > 0);
        assert!(log.segments().iter().all(|s| s.append_time_ms == 90_000 || !s.sealed));
        log.close().await.expect("close");
    });
}

/// Age retention after the sealed indexes are lost or damaged and rebuilt by a scan: the append
/// time comes back from the frames, never from the records' event times (all from 1970 here,
/// which would make every segment look decades old and go at once). Catches a scan that does not
/// take the frames' append time, and a retention that falls back to event times when the
/// append time is unknown.
#[test]
fn age_retention_keeps_the_append_time_when_indexes_are_rebuilt_by_a_scan() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = small_config();
    config.retention = Retention { size_bytes_max: None, age_ms_max: Some(1_000) };
    let value = [5u8; 2000];
    let append = |log: &PartitionLog, now_ms: i64| {
        let records: Vec<Record<'_>> = (0..10).map(|i| Record::new(i, None, &value)).collect();
        log.append_now(&records, ProducerInfo::default(), Durability::Written, now_ms)
            .expect("append")
    };
    let sealed = run(async {
        let log = PartitionLog::open(dir.path(), config.clone()).await.expect("open");
        for now_ms in [50_000, 90_000] {
            for _ in 0..8 {
                let ticket = append(&log, now_ms);
                log.wait(ticket).await.expect("wait");
            }
        }
        log.close().await.expect("close");
        log.segments().into_iter().filter(|s| s.sealed).collect::<Vec<_>>()
    });
    assert!(sealed.len() >= 3, "{sealed:?}");
    // Every sealed index lost or damaged: one flipped byte in the first, the others deleted.
    for (i, segment) in sealed.iter().enumerate() {
        let index = crate::paths::index_path(dir.path(), segment.base_offset);
        if i == 0 {
            flip_byte(&index, 70);
        } else {
            std::fs::remove_file(&index).expect("delete index");
        }
    }
    run(async {
        let log = PartitionLog::open(dir.path(), config.clone()).await.expect("reopen");
        assert_eq!(log.recovery().indexes_rebuilt, sealed.len());
        let times: Vec<i64> =
            log.segments().iter().filter(|s| s.sealed).map(|s| s.append_time_ms).collect();
        let expected: Vec<i64> = sealed.iter().map(|s| s.append_time_ms).collect();
        assert_eq!(times, expected, "the rebuilt indexes lost the append times");
        // At 50_500 nothing is a second old by append time, though every event is from 1970.
        let report = log.apply_retention(50_500, u64::MAX).await.expect("retention");
        assert_eq!(report.segments_deleted, 0, "deleted by event time");
        // At 60_000 the segments last appended to at 50_000 go, the later ones stay.
        let report = log.apply_retention(60_000, u64::MAX).await.expect("retention");
        assert!(report.segments_deleted > 0, "age retention stopped after the rebuild");
        assert!(log.segments().iter().all(|s| s.append_time_ms == 90_000 || !s.sealed));
        log.close().await.expect("close");
    });
    // The rebuilt index files were written with the append times: a second open reads them.
    run(async {
        let log = PartitionLog::open(dir.path(), config.clone()).await.expect("reopen");
        assert_eq!(log.recovery().indexes_rebuilt, 0);
        assert!(log.segments().iter().filter(|s| s.sealed).all(|s| s.append_time_ms == 90_000));
        log.close().await.expect("close");
    });
}

/// Group commit: many `synced` appenders at once share fdatasyncs (counted by the simulated disk
/// on the segment file itself, not by the log's own counter).
#[test]
fn group_commit_shares_fdatasyncs() {
    let sim = SimDisk::new(3);
    let config = sim_config(&sim);
    run(async {
        let log = Rc::new(PartitionLog::open(&sim_dir(), config).await.expect("open"));
        let segment = log.segments()[0].path.clone();
        let before = sim.fsync_count(&segment);
        let appenders = 64u64;
        let tasks: Vec<_> = (0..appenders)
            .map(|i| {
                let log = log.clone();
                glommio::spawn_local(async move {
                    let value = i.to_le_bytes();
                    log.append(&[Record::new(0, None, &value)], Durability::Synced).await
                })
            })
            .collect();
        for task in tasks {
            task.await.expect("synced append");
        }
        let fsyncs = sim.fsync_count(&segment) - before;
        assert!(fsyncs >= 1, "synced appends without an fdatasync");
        assert!(fsyncs <= appenders / 8, "{appenders} synced appends took {fsyncs} fdatasyncs");
        log.close().await.expect("close");
    });
}

/// By default readers see written records (which a power cut may take back); a synced-only
/// reader sees only what an fdatasync covered.
#[test]
fn a_synced_only_reader_sees_only_the_synced_prefix() {
    let sim = SimDisk::new(8);
    let config = LogConfig { unsynced_bytes_max: 1 << 20, ..sim_config(&sim) };
    run(async {
        let log = PartitionLog::open(&sim_dir(), config).await.expect("open");
        fill(&log, 2, 10, Durability::Synced).await;
        fill(&log, 3, 10, Durability::Written).await;
        assert_eq!(log.synced_end_offset(), 20);
        assert_eq!(log.readable_end_offset(), 50);
        let mut synced = log.reader(Seek::Beginning).expect("reader").synced_only();
        let mut seen = Vec::new();
        while let Some(batch) = synced.next_batch().await.expect("read") {
            seen.extend(batch.records().map(|r| r.offset()));
        }
        assert_eq!(seen, (0..20).collect::<Vec<_>>());
        assert_eq!(read_all(&log, Seek::Beginning).await, (0..50).collect::<Vec<_>>());
        // A power cut now may take 20..50 back; after a sync it may not.
        log.sync().await.expect("sync");
        synced.wait_readable().await.expect("wait");
        while let Some(batch) = synced.next_batch().await.expect("read") {
            seen.extend(batch.records().map(|r| r.offset()));
        }
        assert_eq!(seen, (0..50).collect::<Vec<_>>());
        log.close().await.expect("close");
    });
}

/// Without any `synced` appender the writer still syncs, and never lets more than
/// `unsynced_bytes_max` go unsynced, even when the device is slow to flush and writes outrun
/// fdatasyncs: that bound is what bounds a torn tail.
#[test]
fn written_load_never_leaves_more_than_the_bound_unsynced() {
    let sim = SimDisk::with_faults(
        12,
        crate::io::FaultOptions {
            fsync_latency: std::time::Duration::from_millis(3),
            ..crate::io::FaultOptions::default()
        },
    );
    let config = LogConfig { segment_size_bytes_max: 8 << 20, ..sim_config(&sim) };
    let max = config.unsynced_bytes_max;
    run(async {
        let log = PartitionLog::open(&sim_dir(), config).await.expect("open");
        let value = [9u8; 1000];
        let records: Vec<Record<'_>> = (0..10).map(|i| Record::new(i, None, &value)).collect();
        for _ in 0..100 {
            log.append(&records, Durability::Written).await.expect("append");
        }
        let stats = log.stats();
        assert!(stats.unsynced_bytes_peak > max / 2, "the load never reached the bound");
        assert!(
            stats.unsynced_bytes_peak <= max,
            "{} bytes were written but unsynced at once; the bound is {max}",
            stats.unsynced_bytes_peak
        );
        let fsyncs = sim.stats().fsyncs;
        assert!(
            fsyncs >= stats.appended_bytes / max,
            "{} bytes written with {fsyncs} fdatasyncs",
            stats.appended_bytes
        );
        log.close().await.expect("close");
    });
}

/// What recovery serves it has synced: records written before a process crash (on the device,
/// never fdatasynced) are reported synced after the reopen, so they must survive a power cut that
/// comes after it.
#[test]
fn recovery_makes_what_it_serves_durable() {
    for seed in 0..20 {
        let sim = SimDisk::new(seed);
        let config = LogConfig { unsynced_bytes_max: 1 << 20, ..sim_config(&sim) };
        // A process that wrote 300 records and died without a sync or a close.
        run(async {
            let log = PartitionLog::open(&sim_dir(), config.clone()).await.expect("open");
            fill(&log, 30, 10, Durability::Written).await;
            assert_eq!(log.synced_end_offset(), 0, "seed {seed}: nothing synced yet");
        });
        let recovered = run(async {
            let log = PartitionLog::open(&sim_dir(), config.clone()).await.expect("reopen");
            assert_eq!(log.synced_end_offset(), log.end_offset(), "seed {seed}");
            log.end_offset()
        });
        assert_eq!(recovered, 300, "seed {seed}: a process crash keeps written records");
        let after = sim.power_cut(seed);
        let config = LogConfig { disk: Disk::Sim(after), ..config };
        run(async {
            let log = PartitionLog::open(&sim_dir(), config).await.expect("after the cut");
            assert_eq!(log.end_offset(), recovered, "seed {seed}: recovered records lost");
            assert_eq!(read_all(&log, Seek::Beginning).await, (0..300).collect::<Vec<_>>());
        });
    }
}

/// Appends never grow the file write by write: the active segment is extended ahead of the
/// writer (fallocate), sealed segments are cut to their frames, and the zeros after the last
/// frame of the active segment are a clean end for recovery.
#[test]
fn segments_are_preallocated_and_sealed_to_size() {
    let sim = SimDisk::new(6);
    let config = LogConfig { preallocate_bytes: 32 * 1024, ..sim_config(&sim) };
    run(async {
        let log = PartitionLog::open(&sim_dir(), config.clone()).await.expect("open");
        let before = sim.stats().extending_writes;
        fill(&log, 40, 25, Durability::Written).await;
        assert_eq!(sim.stats().extending_writes - before, 0, "a write grew the file");
        let segments = log.segments();
        assert!(segments.len() > 2);
        for segment in &segments {
            let on_disk = sim.file_bytes(&segment.path).expect("segment").len() as u64;
            if segment.sealed {
                assert_eq!(on_disk, segment.size_bytes, "sealed segment cut to its frames");
            } else {
                assert!(on_disk > segment.size_bytes, "active segment preallocated");
            }
        }
        log.close().await.expect("close");
        let log = PartitionLog::open(&sim_dir(), config.clone()).await.expect("reopen");
        assert_eq!(log.recovery().truncated_bytes, 0, "zeros after the last frame are clean");
        assert_eq!(read_all(&log, Seek::Beginning).await, (0..1000).collect::<Vec<_>>());
        log.close().await.expect("close");
    });
    // Without preallocation, appends do grow the file (so the count above means something).
    let sim = SimDisk::new(6);
    let config = LogConfig { preallocate_bytes: 0, ..sim_config(&sim) };
    run(async {
        let log = PartitionLog::open(&sim_dir(), config).await.expect("open");
        fill(&log, 40, 25, Durability::Written).await;
        assert!(sim.stats().extending_writes > 10);
        log.close().await.expect("close");
    });
}

/// The log runs its whole life on the simulated disk: rolls, reopen, and every directory entry
/// it created is durable (its creation fsynced the parents).
#[test]
fn a_log_on_the_simulated_disk_survives_a_power_cut_after_a_clean_close() {
    for seed in 0..20 {
        let sim = SimDisk::new(seed);
        let config = sim_config(&sim);
        run(async {
            let log = PartitionLog::open(&sim_dir(), config).await.expect("open");
            fill(&log, 40, 25, Durability::Written).await;
            log.close().await.expect("close");
        });
        let after = sim.power_cut(seed);
        let config = sim_config(&after);
        run(async {
            let log = PartitionLog::open(&sim_dir(), config).await.expect("reopen");
            assert_eq!(log.recovery().indexes_rebuilt, 0, "seed {seed}: an index was lost");
            assert_eq!(read_all(&log, Seek::Beginning).await, (0..1000).collect::<Vec<_>>());
            log.close().await.expect("close");
        });
    }
}

/// A preallocation that fails (the disk is nearly full) costs only the optimisation: the log goes
/// on writing into the space left, the write that does not fit fences the log with the disk's own
/// error (ENOSPC), and every acknowledged record is there after a reopen.
#[test]
fn a_failed_preallocation_costs_only_the_optimisation() {
    let sim = SimDisk::new(31);
    // Room for the first reservation (32 KiB) and about 16 KiB more: the extension that starts
    // once half of the reservation is written asks for 32 KiB past the writes, and fails.
    sim.set_faults(FaultOptions { capacity_bytes: Some(48 * 1024), ..FaultOptions::default() });
    let config = LogConfig { segment_size_bytes_max: 1 << 20, ..sim_config(&sim) };
    let (acked, acked_at_first_fault) = run(async {
        let log = PartitionLog::open(&sim_dir(), config.clone()).await.expect("open");
        let mut acked_at_first_fault = None;
        let mut acked = 0;
        let error = loop {
            if acked_at_first_fault.is_none() && !sim.faults().is_empty() {
                acked_at_first_fault = Some(acked);
            }
            let base = log.end_offset();
            let values: Vec<Vec<u8>> = (0..10).map(|i| value_for(base + i, 100)).collect();
            let keys: Vec<String> = (0..10).map(|i| format!("key-{}", (base + i) % 7)).collect();
            let records: Vec<Record<'_>> = (0..10)
                .map(|i| {
                    let offset = base + i as u64;
                    Record::new(1_000 + offset as i64, Some(keys[i].as_bytes()), &values[i])
                })
                .collect();
            match log.append(&records, Durability::Synced).await {
                Ok(info) => {
                    assert_eq!(info.base_offset, base);
                    acked = info.last_offset + 1;
                }
                Err(error) => break error,
            }
            assert!(base < 10_000, "the disk never filled up");
        };
        match &error {
            Error::Fenced { cause: "write", source, .. } => {
                assert_eq!(source.raw_os_error(), Some(28), "the disk's own reason: {error}")
            }
            other => panic!("wrong error: {other}"),
        }
        let _ = log.close().await;
        (acked, acked_at_first_fault.expect("a preallocation failed"))
    });
    let faults = sim.faults();
    assert_eq!(faults[0].kind, FaultKind::NoSpace, "{faults:?}");
    assert!(
        acked >= acked_at_first_fault + 50,
        "appends stopped at the failed preallocation: {acked} acknowledged, {acked_at_first_fault} \
         when it failed"
    );
    sim.set_faults(FaultOptions::default());
    run(async {
        let log = PartitionLog::open(&sim_dir(), config).await.expect("reopen");
        assert_eq!(read_all(&log, Seek::Beginning).await, (0..acked).collect::<Vec<_>>());
        log.close().await.expect("close");
    });
}
