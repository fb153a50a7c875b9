//! The partition log on a real glommio executor: append, read, durability, rolls, recovery,
//! corruption and retention.

use std::path::Path;

use super::*;
use crate::reader::Seek;
use crate::Record;
use crate::Retention;

pub(crate) fn run<T>(future: impl std::future::Future<Output = T>) -> T {
    glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .io_memory(4 << 20)
        .make()
        .expect("executor")
        .run(future)
}

mod budget;
mod guarantees;
mod holes;
mod sealed;
mod tail;
mod watermark;

pub(super) fn small_config() -> LogConfig {
    LogConfig {
        segment_size_bytes_max: 64 * 1024,
        index_interval_bytes: 4096,
        write_buffer_size_bytes: 16 * 1024,
        read_buffer_size_bytes: 8 * 1024,
        unsynced_bytes_max: 32 * 1024,
        preallocate_bytes: 32 * 1024,
        ..LogConfig::default()
    }
}

fn value_for(offset: u64, len: usize) -> Vec<u8> {
    (0..len).map(|i| (offset as usize * 31 + i) as u8).collect()
}

/// Appends `batches` batches of `per_batch` records whose values encode their offsets.
pub(super) async fn fill(
    log: &PartitionLog,
    batches: u64,
    per_batch: u64,
    durability: Durability,
) -> u64 {
    let mut last = 0;
    for _ in 0..batches {
        let base = log.end_offset();
        let values: Vec<Vec<u8>> =
            (0..per_batch).map(|i| value_for(base + i, 100 + (i as usize % 50))).collect();
        let keys: Vec<String> = (0..per_batch).map(|i| format!("key-{}", (base + i) % 7)).collect();
        let records: Vec<Record<'_>> = values
            .iter()
            .zip(&keys)
            .enumerate()
            .map(|(i, (v, k))| Record::new(1_000 + (base + i as u64) as i64, Some(k.as_bytes()), v))
            .collect();
        let info = log.append(&records, durability).await.expect("append");
        assert_eq!(info.base_offset, base);
        last = info.last_offset;
    }
    last
}

/// Reads everything from `seek` and checks every record's bytes; returns the offsets seen.
/// Closes `log`, reopens it from `dir` and checks that every record it had reads back whole.
pub(super) async fn close_reopen_and_read_all(log: PartitionLog, dir: &Path, config: &LogConfig) {
    let end = log.end_offset();
    log.close().await.expect("close");
    let log = PartitionLog::open(dir, config.clone()).await.expect("reopen");
    assert_eq!(read_all(&log, Seek::Beginning).await, (0..end).collect::<Vec<u64>>());
    log.close().await.expect("close");
}

/// After power cut `seed`: the log at `dir` reopens (a torn tail is cut, never refused as
/// corruption), keeps every one of the `synced` records, and reads back whole.
pub(super) fn reopens_with_every_synced_record(
    dir: &Path,
    config: LogConfig,
    seed: u64,
    synced: u64,
) {
    run(async {
        let log = match PartitionLog::open(dir, config).await {
            Ok(log) => log,
            Err(e) => panic!("seed {seed}: refused after a power cut: {e}"),
        };
        let end = log.end_offset();
        assert!(end >= synced, "seed {seed}: synced records lost: end {end} < {synced}");
        assert_eq!(read_all(&log, Seek::Beginning).await, (0..end).collect::<Vec<_>>());
        log.close().await.expect("close");
    });
}

pub(super) async fn read_all(log: &PartitionLog, seek: Seek) -> Vec<u64> {
    let mut reader = log.reader(seek).expect("reader");
    let mut seen = Vec::new();
    while let Some(batch) = reader.next_batch().await.expect("read") {
        for record in batch.records() {
            let offset = record.offset();
            assert_eq!(
                record.value(),
                &value_for(offset, record.value().len())[..],
                "bytes of {offset}"
            );
            assert_eq!(record.key(), Some(format!("key-{}", offset % 7).as_bytes()));
            assert_eq!(record.timestamp(), 1_000 + offset as i64);
            seen.push(offset);
        }
    }
    seen
}

#[test]
fn append_read_reopen_across_rolls() {
    let dir = tempfile::tempdir().expect("tempdir");
    run(async {
        let log = PartitionLog::open(dir.path(), small_config()).await.expect("open");
        let last = fill(&log, 40, 25, Durability::Written).await;
        assert_eq!(last, 999);
        assert!(log.segments().len() >= 3, "segments rolled: {}", log.segments().len());
        assert_eq!(read_all(&log, Seek::Beginning).await, (0..1000).collect::<Vec<_>>());
        assert_eq!(read_all(&log, Seek::Offset(537)).await, (537..1000).collect::<Vec<_>>());
        assert!(read_all(&log, Seek::End).await.is_empty());
        log.close().await.expect("close");

        let log = PartitionLog::open(dir.path(), small_config()).await.expect("reopen");
        assert_eq!(log.recovery().truncated_bytes, 0);
        assert_eq!(log.end_offset(), 1000);
        assert_eq!(read_all(&log, Seek::Offset(999)).await, vec![999]);
        fill(&log, 4, 25, Durability::Synced).await;
        assert_eq!(read_all(&log, Seek::Beginning).await, (0..1100).collect::<Vec<_>>());
        log.close().await.expect("close");
    });
    // Every sealed segment has its index file.
    let segments = crate::paths::list_segments(dir.path()).expect("list");
    for (base, _) in &segments[..segments.len() - 1] {
        assert!(crate::paths::index_path(dir.path(), *base).exists());
    }
}

#[test]
fn seek_by_timestamp_finds_the_first_newer_record() {
    let dir = tempfile::tempdir().expect("tempdir");
    run(async {
        let log = PartitionLog::open(dir.path(), small_config()).await.expect("open");
        fill(&log, 40, 25, Durability::None).await;
        log.sync().await.expect("sync");
        assert_eq!(
            read_all(&log, Seek::Timestamp(1_000 + 700)).await,
            (700..1000).collect::<Vec<_>>()
        );
        assert_eq!(read_all(&log, Seek::Timestamp(0)).await, (0..1000).collect::<Vec<_>>());
        assert!(read_all(&log, Seek::Timestamp(1_000_000)).await.is_empty());
        log.close().await.expect("close");
    });
}

#[test]
fn a_timestamp_seek_past_every_record_still_skips_older_records_appended_later() {
    let dir = tempfile::tempdir().expect("tempdir");
    run(async {
        let log = PartitionLog::open(dir.path(), small_config()).await.expect("open");
        fill(&log, 2, 10, Durability::Written).await;
        // Offsets 0..20 hold times 1_000..1_020; nothing is at or after 1_030 yet.
        let mut reader = log.reader(Seek::Timestamp(1_030)).expect("reader");
        assert!(reader.next_batch().await.expect("read").is_none());
        // Times 1_020..1_030 (older than the seek), then 1_030..1_040 in a later batch.
        fill(&log, 1, 10, Durability::Written).await;
        assert!(reader.next_batch().await.expect("read").is_none(), "older records are skipped");
        fill(&log, 1, 10, Durability::Written).await;
        let mut seen = Vec::new();
        while let Some(batch) = reader.next_batch().await.expect("read") {
            seen.extend(batch.records().map(|r| r.offset()));
        }
        assert_eq!(seen, (30..40).collect::<Vec<_>>(), "from the first record at or after 1_030");
        log.close().await.expect("close");
    });
}

#[test]
fn concurrent_synced_appends_share_fsyncs_and_all_land() {
    let dir = tempfile::tempdir().expect("tempdir");
    run(async {
        let log = Rc::new(PartitionLog::open(dir.path(), small_config()).await.expect("open"));
        let mut tasks = Vec::new();
        for producer in 0..8u8 {
            let log = log.clone();
            tasks.push(glommio::spawn_local(async move {
                let mut offsets = Vec::new();
                for i in 0..50u32 {
                    let value = [producer, (i % 256) as u8];
                    let info = log
                        .append(&[Record::new(i64::from(i), None, &value)], Durability::Synced)
                        .await
                        .expect("append");
                    offsets.push(info.base_offset);
                }
                offsets
            }));
        }
        let mut all = Vec::new();
        for task in tasks {
            let offsets = task.await;
            assert!(offsets.windows(2).all(|w| w[0] < w[1]), "per-producer order");
            all.extend(offsets);
        }
        all.sort_unstable();
        assert_eq!(all, (0..400).collect::<Vec<_>>());
        let mut reader = log.reader(Seek::Beginning).expect("reader");
        let mut next_per_producer = [0u8; 8];
        while let Some(batch) = reader.next_batch().await.expect("read") {
            for record in batch.records() {
                let v = record.value();
                assert_eq!(v[1], next_per_producer[v[0] as usize]);
                next_per_producer[v[0] as usize] += 1;
            }
        }
        assert_eq!(next_per_producer, [50u8; 8]);
        log.close().await.expect("close");
    });
}

#[test]
fn tail_reader_wakes_on_new_records() {
    let dir = tempfile::tempdir().expect("tempdir");
    run(async {
        let log = Rc::new(PartitionLog::open(dir.path(), small_config()).await.expect("open"));
        let tail = {
            let log = log.clone();
            glommio::spawn_local(async move {
                let mut reader = log.reader(Seek::End).expect("reader");
                let mut seen = Vec::new();
                while seen.len() < 300 {
                    log.wait_readable(reader.next_offset()).await.expect("wait");
                    while let Some(batch) = reader.next_batch().await.expect("read") {
                        seen.extend(batch.records().map(|r| r.offset()));
                    }
                }
                seen
            })
        };
        fill(&log, 30, 10, Durability::None).await;
        let seen = tail.await;
        assert_eq!(seen, (0..300).collect::<Vec<_>>());
        log.close().await.expect("close");
    });
}

/// Fills a log in `dir` past a few segment rolls, closes it, and returns its first (sealed) segment.
fn first_sealed_segment(dir: &Path) -> SegmentInfo {
    run(async {
        let log = PartitionLog::open(dir, small_config()).await.expect("open");
        fill(&log, 20, 25, Durability::Written).await;
        log.close().await.expect("close");
        log.segments()[0].clone()
    })
}

pub(super) fn flip_byte(path: &Path, position: u64) {
    use std::os::unix::fs::FileExt;
    let file = std::fs::OpenOptions::new().read(true).write(true).open(path).expect("open");
    let mut byte = [0u8];
    file.read_exact_at(&mut byte, position).expect("read");
    byte[0] ^= 0x04;
    file.write_all_at(&byte, position).expect("write");
}

#[test]
fn torn_tail_is_truncated_and_appends_continue() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = LogConfig { segment_size_bytes_max: 1 << 20, ..small_config() };
    let active = run(async {
        let log = PartitionLog::open(dir.path(), config.clone()).await.expect("open");
        fill(&log, 9, 10, Durability::Synced).await;
        fill(&log, 1, 10, Durability::Written).await;
        // The process dies before its close (which would sync the last batch and record that
        // sync in the watermark: a tear in it would then be corruption).
        log.segments().last().expect("segment").clone()
    });
    // Tear the last frame: keep only part of it, as a crash mid-write would.
    let file = std::fs::OpenOptions::new().write(true).open(&active.path).expect("open");
    let torn_len = active.size_bytes - 40;
    file.set_len(torn_len).expect("truncate");
    drop(file);
    run(async {
        let log = PartitionLog::open(dir.path(), config.clone()).await.expect("reopen after tear");
        assert_eq!(log.end_offset(), 90, "the torn batch of 10 is gone");
        assert!(log.recovery().truncated_bytes > 0);
        // The report names the first offset dropped even though the torn frame's header (and so
        // its record count) cannot be trusted.
        let cut = log.recovery().tail_cut.clone().expect("a cut is reported");
        assert_eq!(cut.first_dropped_offset, 90, "{cut:?}");
        fill(&log, 2, 10, Durability::Synced).await;
        assert_eq!(read_all(&log, Seek::Beginning).await, (0..110).collect::<Vec<_>>());
        log.close().await.expect("close");
    });
    // Garbage after the last frame (a write that landed out of order) is cut too.
    let active = crate::paths::list_segments(dir.path()).expect("list").pop().expect("segment").1;
    let len = std::fs::metadata(&active).expect("stat").len();
    {
        use std::os::unix::fs::FileExt;
        let file = std::fs::OpenOptions::new().write(true).open(&active).expect("open");
        file.write_all_at(&[0xEE; 100], len.next_multiple_of(4096) + 8192).expect("write");
    }
    run(async {
        let log =
            PartitionLog::open(dir.path(), config.clone()).await.expect("reopen after garbage");
        assert!(log.recovery().truncated_bytes > 0);
        assert_eq!(read_all(&log, Seek::Beginning).await, (0..110).collect::<Vec<_>>());
        log.close().await.expect("close");
    });
}

#[test]
fn flipped_bit_in_a_sealed_segment_is_an_error_with_its_position() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sealed = first_sealed_segment(dir.path());
    assert!(sealed.size_bytes > 5000);
    flip_byte(&sealed.path, 5000);
    run(async {
        // Open trusts the sealed segment's index; the damage shows when the bytes are read.
        let log = PartitionLog::open(dir.path(), small_config()).await.expect("open");
        let mut reader = log.reader(Seek::Beginning).expect("reader");
        let error = loop {
            match reader.next_batch().await {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("corruption was not reported"),
                Err(e) => break e,
            }
        };
        match &error {
            Error::Corrupt { path, position, .. } => {
                assert_eq!(path, &sealed.path);
                assert!(*position <= 5000, "frame position {position} holds byte 5000");
            }
            other => panic!("wrong error: {other}"),
        }
        log.close().await.expect("close");
    });
    // Without its index, opening rescans the sealed segment and refuses it.
    std::fs::remove_file(crate::paths::index_path(dir.path(), sealed.base_offset))
        .expect("rm index");
    run(async {
        match PartitionLog::open(dir.path(), small_config()).await {
            Err(Error::Corrupt { path, .. }) => assert_eq!(path, sealed.path),
            Err(other) => panic!("wrong error: {other}"),
            Ok(_) => panic!("a corrupt sealed segment was accepted"),
        }
    });
}

#[test]
fn retention_deletes_whole_sealed_segments_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    run(async {
        let mut config = small_config();
        config.retention = Retention { size_bytes_max: Some(150 * 1024), age_ms_max: None };
        let log = PartitionLog::open(dir.path(), config).await.expect("open");
        fill(&log, 80, 25, Durability::Written).await;
        let before = log.segments();
        assert!(before.len() > 4, "{before:?}");
        let report = log.apply_retention(0, u64::MAX).await.expect("retention");
        assert!(report.segments_deleted > 0);
        assert!(log.size_bytes() <= 150 * 1024 + 64 * 1024);
        let start = log.start_offset();
        assert_eq!(start, report.start_offset);
        assert_eq!(start, before[report.segments_deleted].base_offset);
        assert!(matches!(log.reader(Seek::Offset(0)), Err(Error::OffsetOutOfRange { .. })));
        assert_eq!(read_all(&log, Seek::Beginning).await, (start..2000).collect::<Vec<_>>());
        log.close().await.expect("close");
        let reopened = PartitionLog::open(dir.path(), small_config()).await.expect("reopen");
        assert_eq!(reopened.start_offset(), start);
        reopened.close().await.expect("close");
    });
    run(async {
        let mut config = small_config();
        config.retention = Retention { size_bytes_max: None, age_ms_max: Some(1_000) };
        let log = PartitionLog::open(dir.path(), config).await.expect("open");
        // `fill` appends without a clock, so the segments' append times are unknown. Event
        // times run 1_000..3_000; at "now" 3_700 they would say most segments are older than
        // a second, but age retention never judges by producers' event times: a segment of
        // unknown age is kept (size retention still applies).
        let before = log.segments().len();
        let report = log.apply_retention(3_700, u64::MAX).await.expect("retention");
        assert_eq!(report.segments_deleted, 0, "age retention judged by event times");
        assert_eq!(log.segments().len(), before);
        log.close().await.expect("close");
    });
}

#[test]
fn default_retention_keeps_everything() {
    let dir = tempfile::tempdir().expect("tempdir");
    run(async {
        let log = PartitionLog::open(dir.path(), small_config()).await.expect("open");
        fill(&log, 40, 25, Durability::Written).await;
        let report = log.apply_retention(i64::MAX, u64::MAX).await.expect("retention");
        assert_eq!(report.segments_deleted, 0);
        assert_eq!(log.start_offset(), 0);
        log.close().await.expect("close");
    });
}

#[test]
fn bad_input_leaves_the_log_intact() {
    let dir = tempfile::tempdir().expect("tempdir");
    run(async {
        let mut config = small_config();
        config.limits.record_size_bytes_max = 1000;
        let log = PartitionLog::open(dir.path(), config.clone()).await.expect("open");
        fill(&log, 2, 10, Durability::Synced).await;
        assert!(matches!(log.append(&[], Durability::Synced).await, Err(Error::EmptyBatch)));
        let big = vec![1u8; 1001];
        let result = log.append(&[Record::new(0, None, &big)], Durability::Synced).await;
        assert!(matches!(result, Err(Error::RecordTooLarge { .. })));
        assert_eq!(log.end_offset(), 20);
        fill(&log, 1, 10, Durability::Synced).await;
        log.close().await.expect("close");
        let log = PartitionLog::open(dir.path(), config).await.expect("reopen");
        assert_eq!(read_all(&log, Seek::Beginning).await, (0..30).collect::<Vec<_>>());
        log.close().await.expect("close");
        assert!(matches!(
            PartitionLog::open(
                dir.path(),
                LogConfig { write_buffer_size_bytes: 1000, ..LogConfig::default() }
            )
            .await,
            Err(Error::Config { field: "write_buffer_size_bytes" })
        ));
    });
}

#[test]
fn unknown_format_version_is_reported() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sealed = first_sealed_segment(dir.path());
    // Byte 4 of the first frame is the low byte of the version.
    flip_byte(&sealed.path, 4);
    std::fs::remove_file(crate::paths::index_path(dir.path(), 0)).expect("rm index");
    run(async {
        match PartitionLog::open(dir.path(), small_config()).await {
            Err(Error::Corrupt {
                position: 0,
                defect: crate::format::FrameDefect::UnknownVersion { .. },
                ..
            }) => {}
            Err(other) => panic!("wrong error: {other}"),
            Ok(_) => panic!("accepted a frame of an unknown version"),
        }
    });
}

#[test]
fn truncated_sealed_segment_is_a_typed_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sealed = first_sealed_segment(dir.path());
    // Cut the sealed segment in the middle of a frame.
    let file = std::fs::OpenOptions::new().write(true).open(&sealed.path).expect("open");
    file.set_len(sealed.size_bytes - 100).expect("truncate");
    drop(file);
    run(async {
        match PartitionLog::open(dir.path(), small_config()).await {
            Err(Error::Corrupt {
                path,
                defect: crate::format::FrameDefect::Truncated { .. },
                ..
            }) => {
                assert_eq!(path, sealed.path);
            }
            Err(other) => panic!("wrong error: {other}"),
            Ok(_) => panic!("a truncated sealed segment was accepted"),
        }
    });
}

/// Write buffers come from the shard's pool: a reopened partition holds none, one that went idle
/// gives its tail cache back, and many partitions share a few buffers instead of one each.
#[test]
fn idle_partitions_hold_no_write_buffer() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = LogConfig {
        tail_cache_idle_release: std::time::Duration::from_millis(20),
        ..small_config()
    };
    let partitions = 40;
    run(async {
        let mut logs = Vec::new();
        for p in 0..partitions {
            let log = PartitionLog::open(&dir.path().join(p.to_string()), config.clone())
                .await
                .expect("open");
            logs.push(log);
        }
        assert_eq!(crate::pool::stats().in_use, 0, "freshly opened logs hold no buffer");
        for log in &logs {
            fill(log, 3, 10, Durability::Written).await;
        }
        // Written, hence idle: at most the tail caches hold buffers, then they go back too.
        glommio::timer::sleep(std::time::Duration::from_millis(200)).await;
        let stats = crate::pool::stats();
        assert_eq!(stats.in_use, 0, "idle logs gave every buffer back: {stats:?}");
        assert!(stats.reuses > 0, "buffers were reused: {stats:?}");
        assert!(stats.allocations < partitions as u64, "fewer buffers than partitions: {stats:?}");
        for log in &logs {
            log.close().await.expect("close");
        }
    });
    // Reopened (the partial tail block carried, not a buffer): still none, and appends go on.
    run(async {
        let mut logs = Vec::new();
        for p in 0..partitions {
            let log = PartitionLog::open(&dir.path().join(p.to_string()), config.clone())
                .await
                .expect("reopen");
            logs.push(log);
        }
        assert_eq!(crate::pool::stats().in_use, 0, "reopened logs hold no buffer");
        for log in &logs {
            let last = fill(log, 1, 5, Durability::Synced).await;
            assert_eq!(last, 34);
            assert_eq!(read_all(log, Seek::Beginning).await, (0..35).collect::<Vec<u64>>());
            log.close().await.expect("close");
        }
    });
}

/// Frames encoded straight into the write buffers, many of them spanning several 4 KiB buffers
/// (their header and Kafka CRC patched in a buffer queued before the frame's end), read back byte
/// for byte, survive a reopen (recovery scans the active segment, sealed ones load their index),
/// and pass `verify`'s deep scan (frame checksums, rkyv bytecheck, every batch's Kafka CRC32C).
#[test]
fn frames_spanning_write_buffers_read_back_recover_and_verify() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = LogConfig {
        write_buffer_size_bytes: 4096,
        segment_size_bytes_max: 128 * 1024,
        ..small_config()
    };
    let path = dir.path().to_path_buf();
    let end = run(async move {
        let log = PartitionLog::open(&path, config.clone()).await.expect("open");
        // From one record (a frame inside one buffer) to 90 (about 13 KiB: four buffers).
        for (i, per_batch) in
            [1u64, 90, 7, 33, 2, 61, 1, 45, 90, 3].iter().cycle().take(60).enumerate()
        {
            let durability = if i % 3 == 0 { Durability::Synced } else { Durability::Written };
            fill(&log, 1, *per_batch, durability).await;
        }
        let end = log.end_offset();
        assert!(log.segments().len() > 2, "the frames cross segment rolls");
        assert_eq!(read_all(&log, Seek::Beginning).await, (0..end).collect::<Vec<_>>());
        log.close().await.expect("close");

        let log = PartitionLog::open(&path, config).await.expect("reopen");
        assert_eq!(log.recovery().truncated_bytes, 0, "nothing torn after a clean close");
        assert_eq!(log.end_offset(), end);
        assert_eq!(read_all(&log, Seek::Beginning).await, (0..end).collect::<Vec<_>>());
        log.close().await.expect("close");
        end
    });
    let (segments, problems) =
        crate::verify::scan_partition(dir.path(), crate::verify::default_window_bytes())
            .expect("verify scans");
    assert!(problems.is_empty(), "verify found {problems:?}");
    assert_eq!(segments.last().expect("segments").next_offset, end);
}

/// The sealed segments of a reopened log: (entries loaded, entry count) per segment.
fn loaded(log: &PartitionLog) -> Vec<(bool, usize)> {
    let st = log.shared.state.borrow();
    let sealed = st.segments.len() - 1;
    st.segments[..sealed].iter().map(|s| (s.entries_loaded, s.index.entries.len())).collect()
}

/// A reopened log keeps only the summaries of its sealed segments' indexes; a reader loads a
/// segment's sparse index when it first reads there, and reads through it.
#[test]
fn sealed_indexes_load_lazily_and_reads_go_through_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    run(async {
        let log = PartitionLog::open(dir.path(), small_config()).await.expect("open");
        fill(&log, 80, 25, Durability::Written).await;
        log.close().await.expect("close");
    });
    let segments = crate::paths::list_segments(dir.path()).expect("list");
    assert!(segments.len() >= 4, "segments rolled: {}", segments.len());
    let (second_base, _) = segments[1];
    let on_disk = SegmentIndex::decode(
        &crate::paths::index_path(dir.path(), second_base),
        &std::fs::read(crate::paths::index_path(dir.path(), second_base)).expect("read index"),
    )
    .expect("decode");
    assert!(on_disk.entries.len() > 2, "a sparse index worth loading: {}", on_disk.entries.len());
    run(async {
        let log = PartitionLog::open(dir.path(), small_config()).await.expect("reopen");
        assert!(
            loaded(&log).iter().all(|&(l, n)| !l && n == 0),
            "open keeps only summaries: {:?}",
            loaded(&log)
        );
        assert_eq!(log.stats().index_loads, 0);
        // An offset past the second segment's third indexed frame.
        let target = second_base + u64::from(on_disk.entries[2].rel_offset) + 1;
        assert_eq!(read_all(&log, Seek::Offset(target)).await, (target..2000).collect::<Vec<_>>());
        let state = loaded(&log);
        assert_eq!(state[0], (false, 0), "the first segment was not read: {state:?}");
        assert_eq!(state[1], (true, on_disk.entries.len()), "the second one's index: {state:?}");
        assert!(log.stats().index_loads >= 1);
        // The reader started at the indexed frame before the target, not at the segment start.
        let mut reader = log.reader(Seek::Offset(target)).expect("reader");
        let first = reader.next_batch().await.expect("read").expect("a batch");
        assert!(
            first.batch.base_offset() >= second_base + u64::from(on_disk.entries[2].rel_offset),
            "read from the indexed position: batch at {}",
            first.batch.base_offset()
        );
        drop(reader);
        // A timestamp seek into a segment whose index is not loaded is still exact.
        let log2_ts = 1_000 + second_base as i64 - 3;
        let expected: Vec<u64> = (second_base - 3..2000).collect();
        assert_eq!(read_all(&log, Seek::Timestamp(log2_ts)).await, expected);
        assert_eq!(read_all(&log, Seek::Beginning).await, (0..2000).collect::<Vec<_>>());
        assert!(loaded(&log).iter().all(|&(l, n)| l && n > 0), "all loaded: {:?}", loaded(&log));
        log.close().await.expect("close");
    });
}

/// The lazy load checks the index again: an index damaged after open is rebuilt by a checked
/// scan when a reader first needs it, and the reads stay exact.
#[test]
fn an_index_damaged_after_open_is_rebuilt_when_first_loaded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sealed = first_sealed_segment(dir.path());
    let index_path = crate::paths::index_path(dir.path(), sealed.base_offset);
    let original = std::fs::read(&index_path).expect("read index");
    run(async {
        let log = PartitionLog::open(dir.path(), small_config()).await.expect("open");
        assert_eq!(log.recovery().indexes_rebuilt, 0);
        flip_byte(&index_path, 70);
        assert_eq!(read_all(&log, Seek::Offset(30)).await, (30..500).collect::<Vec<_>>());
        assert_eq!(log.stats().index_loads, 1);
        log.close().await.expect("close");
    });
    let rebuilt = std::fs::read(&index_path).expect("read index");
    let rebuilt = SegmentIndex::decode(&index_path, &rebuilt).expect("the rebuilt index is whole");
    let original = SegmentIndex::decode(&index_path, &original).expect("the original index");
    assert_eq!(rebuilt.entries, original.entries);
    assert_eq!(
        (rebuilt.next_offset, rebuilt.size_bytes),
        (original.next_offset, original.size_bytes)
    );
}

/// The queue of frames awaiting an fdatasync grows with the unsynced bound (one entry per frame)
/// and is given back once a sync drains it: a partition that was busy once keeps no large queue.
#[test]
fn a_drained_sync_queue_gives_its_memory_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = LogConfig { unsynced_bytes_max: 64 << 20, ..LogConfig::default() };
    run(async {
        let log = PartitionLog::open(dir.path(), config).await.expect("open");
        fill(&log, 5_000, 1, Durability::Written).await;
        let queued = log.shared.state.borrow().pending_sync.capacity();
        assert!(queued > PENDING_SYNC_KEEP, "the test needs a long queue: {queued}");
        log.sync().await.expect("sync");
        let (len, kept) = {
            let st = log.shared.state.borrow();
            (st.pending_sync.len(), st.pending_sync.capacity())
        };
        assert_eq!(len, 0, "every frame synced");
        assert!(kept <= PENDING_SYNC_KEEP, "a drained queue keeps {kept} entries (from {queued})");
        log.close().await.expect("close");
    });
}

/// Every log on a thread (a shard's executor) records its fdatasync latencies into one histogram,
/// not a 27 KB one per log built at its first sync, and a closed log's syncs stay in it.
#[test]
fn fsync_latency_is_one_histogram_per_thread() {
    let dir = tempfile::tempdir().expect("tempdir");
    run(async {
        assert!(fsync_latency_ns().is_none(), "nothing synced on this thread yet");
        let mut syncs = 0;
        for name in ["a", "b", "c"] {
            let log =
                PartitionLog::open(&dir.path().join(name), small_config()).await.expect("open");
            let record = [Record::new(0, None, b"v")];
            log.append(&record, Durability::Synced).await.expect("append");
            log.close().await.expect("close");
            syncs += log.stats().fsync_count;
        }
        assert!(syncs >= 3, "each log synced: {syncs}");
        let latency = fsync_latency_ns().expect("a histogram once a log synced");
        assert_eq!(latency.len(), syncs, "every sync of every log, closed ones included");
    });
}

/// Review 21: the fdatasync of a segment roll is counted in `fsync_count` and recorded in the
/// thread's latency histogram like every other (it was counted but not recorded).
#[test]
fn a_rolls_fdatasync_is_in_the_latency_histogram() {
    let dir = tempfile::tempdir().expect("tempdir");
    run(async {
        let log = PartitionLog::open(dir.path(), small_config()).await.expect("open");
        fill(&log, 40, 25, Durability::Written).await;
        assert!(log.segments().len() >= 3, "segments rolled: {}", log.segments().len());
        log.close().await.expect("close");
        let syncs = log.stats().fsync_count;
        let latency = fsync_latency_ns().expect("a histogram");
        assert_eq!(latency.len(), syncs, "every fdatasync counted is recorded");
    });
}
