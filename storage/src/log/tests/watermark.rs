//! The durable sync watermark (`crate::watermark`): damage in the frames of the last fdatasync,
//! which no later frame's `synced_before` vouches for, is corruption once the watermark records
//! that sync; a torn slot leaves the other slot's proof; a watermark that says more than the data
//! holds is refused; repair lowers it; an idle log records its last sync.

use std::path::{Path, PathBuf};
use std::rc::Rc;

use super::*;
use crate::io::{Disk, SimDisk};
use crate::watermark::{self, Watermark, SLOT_SIZE};

/// The claims in both slots of a partition's watermark file (real disk).
fn slots(dir: &Path) -> [Option<Watermark>; 2] {
    let bytes = std::fs::read(watermark::path(dir)).expect("watermark file");
    assert_eq!(bytes.len(), 2 * SLOT_SIZE, "two slots");
    [Watermark::decode(&bytes[..SLOT_SIZE]), Watermark::decode(&bytes[SLOT_SIZE..])]
}

/// Tears a slot: one flipped byte inside its claim.
fn tear_slot(dir: &Path, slot: u64) {
    flip_byte(&watermark::path(dir), slot * SLOT_SIZE as u64 + 20);
}

fn truncate(path: &Path, len: u64) {
    let file = std::fs::OpenOptions::new().write(true).open(path).expect("open");
    file.set_len(len).expect("truncate");
}

/// Regression (review of issue 8, B1): `Written` appends, one `sync()`, a clean close, one
/// flipped byte at 300. No frame after the damage was appended after that sync, so no
/// `synced_before` proves it, and recovery cut all 50 acknowledged records as a torn tail ("end 0
/// of 50"). The watermark `close` writes proves it: corruption, nothing cut.
#[test]
fn damage_in_the_last_synced_group_is_corruption_not_a_torn_tail() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = LogConfig { segment_size_bytes_max: 1 << 20, ..small_config() };
    let (active, end) = run(async {
        let log = PartitionLog::open(dir.path(), config.clone()).await.expect("open");
        fill(&log, 5, 10, Durability::Written).await;
        log.sync().await.expect("every record is durable now");
        let end = log.end_offset();
        log.close().await.expect("close");
        (log.segments().last().expect("segment").clone(), end)
    });
    let before = std::fs::read(&active.path).expect("read");
    flip_byte(&active.path, 300);
    run(async {
        match PartitionLog::open(dir.path(), config.clone()).await {
            Err(Error::SyncedDataMissing { path, position, defect, synced, watermark }) => {
                assert_eq!(path, active.path);
                assert!(position <= 300, "the frame holding byte 300 starts at {position}");
                assert!(defect.is_some());
                assert_eq!(synced, active.size_bytes);
                assert_eq!(watermark, watermark::path(dir.path()));
            }
            Err(other) => panic!("wrong error: {other}"),
            Ok(log) => panic!(
                "synced records cut as a torn tail: end {} of {end}, cut {:?}",
                log.end_offset(),
                log.recovery().tail_cut
            ),
        }
    });
    let after = std::fs::read(&active.path).expect("read");
    assert_eq!(after.len(), before.len(), "nothing was truncated");
    // `kappa verify` calls it corrupt too.
    let (_, problems) =
        crate::verify::scan_partition(dir.path(), config.torn_tail_window_bytes()).expect("verify");
    assert!(problems.iter().any(|p| !p.recoverable && p.position <= 300), "{problems:?}");
}

/// Regression (review of issue 8, B1): eight `Synced` appends sharing one fdatasync (group
/// commit), a clean close, one flipped byte at 300: "end 0 of 8" before the watermark.
#[test]
fn damage_in_a_group_commit_is_corruption_not_a_torn_tail() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = LogConfig { segment_size_bytes_max: 1 << 20, ..small_config() };
    let (active, end, fsyncs) = run(async {
        let log = Rc::new(PartitionLog::open(dir.path(), config.clone()).await.expect("open"));
        let tasks: Vec<_> = (0..8u8)
            .map(|i| {
                let log = log.clone();
                glommio::spawn_local(async move {
                    let value = vec![i; 400];
                    let records = [Record::new(0, None, &value)];
                    log.append(&records, Durability::Synced).await.expect("synced")
                })
            })
            .collect();
        for task in tasks {
            task.await;
        }
        let end = log.end_offset();
        let fsyncs = log.stats().fsync_count;
        log.close().await.expect("close");
        (log.segments().last().expect("segment").clone(), end, fsyncs)
    });
    flip_byte(&active.path, 300);
    run(async {
        match PartitionLog::open(dir.path(), config.clone()).await {
            Err(Error::SyncedDataMissing { path, synced, .. }) => {
                assert_eq!(path, active.path);
                assert_eq!(synced, active.size_bytes);
            }
            Err(other) => panic!("wrong error: {other}"),
            Ok(log) => panic!(
                "{fsyncs} fdatasyncs acknowledged {end} synced records; cut as a torn tail: \
                 end {} of {end}, cut {:?}",
                log.end_offset(),
                log.recovery().tail_cut
            ),
        }
    });
}

/// Two sessions write two claims into the two slots. With the newer slot torn, the older slot's
/// proof still stands: a segment cut below it (group 2 gone, group 1's last frame torn) is
/// refused. With both slots torn there is no proof, and recovery falls back to the frame rule
/// (a torn tail, cut): a torn watermark never makes a log unopenable.
#[test]
fn a_torn_watermark_slot_leaves_the_other_slots_proof() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = LogConfig { segment_size_bytes_max: 1 << 20, ..small_config() };
    let session = |batches| {
        run(async {
            let log = PartitionLog::open(dir.path(), config.clone()).await.expect("open");
            fill(&log, batches, 10, Durability::Written).await;
            log.close().await.expect("close");
            log.segments().last().expect("segment").clone()
        })
    };
    let first = session(5);
    let second = session(5);
    let [a, b] = slots(dir.path());
    let (older, newer) = if a.expect("slot 0").sequence < b.expect("slot 1").sequence {
        (a.expect("slot 0"), b.expect("slot 1"))
    } else {
        (b.expect("slot 1"), a.expect("slot 0"))
    };
    assert_eq!((older.synced, newer.synced), (first.size_bytes, second.size_bytes));
    assert_eq!(newer.sequence, older.sequence + 1);
    truncate(&first.path, first.size_bytes - 40);
    tear_slot(dir.path(), newer.slot());
    run(async {
        match PartitionLog::open(dir.path(), config.clone()).await {
            Err(Error::SyncedDataMissing { synced, .. }) => assert_eq!(synced, older.synced),
            Err(other) => panic!("wrong error: {other}"),
            Ok(log) => panic!("the older slot's proof was ignored: end {}", log.end_offset()),
        }
    });
    tear_slot(dir.path(), older.slot());
    run(async {
        let log = PartitionLog::open(dir.path(), config.clone()).await.expect("no proof left");
        assert_eq!(log.end_offset(), 40, "the torn frame is cut by the frame rule");
        assert!(log.recovery().tail_cut.is_some());
        log.close().await.expect("close");
    });
}

/// A segment shorter than its watermark (truncated: the valid data ends before the synced
/// position) is refused, and so is a watermark naming a segment that is gone.
#[test]
fn a_watermark_past_the_end_of_valid_data_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = small_config();
    let segments = run(async {
        let log = PartitionLog::open(dir.path(), config.clone()).await.expect("open");
        fill(&log, 30, 25, Durability::Synced).await;
        log.close().await.expect("close");
        log.segments()
    });
    assert!(segments.len() >= 2, "{segments:?}");
    let active = segments.last().expect("active").clone();
    assert!(active.size_bytes > 8192, "{active:?}");
    // Cut at a block boundary: to the frame rule alone, a torn tail.
    let cut = 4096;
    truncate(&active.path, cut);
    run(async {
        match PartitionLog::open(dir.path(), config.clone()).await {
            Err(Error::SyncedDataMissing { path, position, synced, .. }) => {
                assert_eq!(path, active.path);
                assert!(position <= cut);
                assert_eq!(synced, active.size_bytes);
            }
            Err(other) => panic!("wrong error: {other}"),
            Ok(log) => panic!("a truncated synced segment opened: end {}", log.end_offset()),
        }
    });
    // The active segment gone altogether: the watermark names a segment that is missing.
    std::fs::remove_file(&active.path).expect("remove");
    run(async {
        match PartitionLog::open(dir.path(), config.clone()).await {
            Err(Error::SyncedDataMissing { path, .. }) => assert_eq!(path, active.path),
            Err(other) => panic!("wrong error: {other}"),
            Ok(log) => panic!("a lost segment went unnoticed: end {}", log.end_offset()),
        }
    });
}

/// `repair` cuts where the watermark's proof fails and lowers the watermark to the cut, so the
/// next open succeeds and appends continue; its plan says what the watermark becomes.
#[test]
fn repair_lowers_the_watermark_and_the_next_open_succeeds() {
    let data = tempfile::tempdir().expect("tempdir");
    let dir = crate::paths::partition_dir(data.path(), "t", 0);
    let config = LogConfig { segment_size_bytes_max: 1 << 20, ..small_config() };
    let active = run(async {
        let log = PartitionLog::open(&dir, config.clone()).await.expect("open");
        fill(&log, 5, 10, Durability::Written).await;
        log.sync().await.expect("sync");
        log.close().await.expect("close");
        log.segments().last().expect("segment").clone()
    });
    flip_byte(&active.path, 300);
    run(async {
        let result = PartitionLog::open(&dir, config.clone()).await;
        assert!(matches!(result, Err(Error::SyncedDataMissing { .. })), "{:?}", result.err());
    });
    let window = config.torn_tail_window_bytes();
    let cuts = crate::repair::plan(data.path(), window).expect("plan");
    assert_eq!(cuts.len(), 1, "{cuts:?}");
    let cut = &cuts[0];
    assert_eq!(cut.path, active.path);
    assert!(cut.position <= 300);
    assert_eq!(cut.watermark, (0, cut.position), "lowered to the cut");
    assert_eq!(cut.dropped_offsets_end, 50);
    crate::repair::apply(&cuts).expect("apply");
    let lowered = watermark::read_blocking(&dir).expect("read").expect("a claim");
    assert_eq!((lowered.segment_base, lowered.synced), (0, cut.position));
    assert!(crate::repair::plan(data.path(), window).expect("plan").is_empty(), "repaired");
    run(async {
        let log = PartitionLog::open(&dir, config.clone()).await.expect("open after repair");
        assert_eq!(log.end_offset(), cut.first_dropped_offset);
        fill(&log, 2, 10, Durability::Synced).await;
        log.close().await.expect("close");
    });
}

/// An idle log records its last completed sync in the watermark on its own (no close): after a
/// power cut, damage in that last group is refused. Nothing new synced, nothing written again.
#[test]
fn an_idle_log_records_its_last_sync_in_the_watermark() {
    let sim = SimDisk::new(3);
    let dir = PathBuf::from("/data/topics/t/0");
    let config = LogConfig {
        disk: Disk::Sim(sim.clone()),
        segment_size_bytes_max: 1 << 20,
        ..small_config()
    };
    let wm = watermark::path(&dir);
    let claim = || sim.file_bytes(&wm).and_then(|b| Watermark::decode(&b));
    let size = run(async {
        let log = PartitionLog::open(&dir, config.clone()).await.expect("open");
        fill(&log, 5, 10, Durability::Synced).await;
        let size = log.segments().last().expect("segment").size_bytes;
        // The delay is ~100 ms; give a loaded machine far longer before calling it missing.
        for _ in 0..200 {
            if claim().is_some_and(|c| c.synced == size) {
                break;
            }
            glommio::timer::sleep(std::time::Duration::from_millis(50)).await;
        }
        assert_eq!(claim().map(|c| (c.segment_base, c.synced)), Some((0, size)), "idle write");
        let fsyncs = sim.fsync_count(&wm);
        glommio::timer::sleep(std::time::Duration::from_millis(400)).await;
        assert_eq!(sim.fsync_count(&wm), fsyncs, "nothing new synced: no second write");
        size
        // No close: the process dies here.
    });
    let after = sim.power_cut(3);
    // A byte of the last frame: no later frame vouches for its sync, only the watermark.
    let segment = crate::paths::segment_path(&dir, 0);
    after.corrupt(&segment, size - 100, 0x04).expect("flip");
    let config = LogConfig { disk: Disk::Sim(after), ..config };
    run(async {
        match PartitionLog::open(&dir, config).await {
            Err(Error::SyncedDataMissing { synced, .. }) => assert_eq!(synced, size),
            Err(other) => panic!("wrong error: {other}"),
            Ok(log) => panic!("synced records cut as a torn tail: end {}", log.end_offset()),
        }
    });
}

/// Power cuts at seeded points of a log that appends in bursts (`synced`, then `written`) and
/// goes idle in between, so the watermark is written, and sometimes cut mid-write: the reopen
/// never refuses (the watermark never claims more than a completed fdatasync covered, and a
/// torn slot leaves the other) and keeps every `synced`-acknowledged record.
#[test]
fn power_cuts_around_watermark_writes_never_refuse_and_keep_synced_records() {
    let dir = PathBuf::from("/data/topics/t/0");
    let mut watermark_writes = 0;
    for seed in 0..16u64 {
        let faults = crate::io::FaultOptions {
            freeze_after_ops: Some(20 + seed * 37 % 70),
            ..Default::default()
        };
        let sim = SimDisk::with_faults(seed, faults);
        let config = LogConfig {
            disk: Disk::Sim(sim.clone()),
            segment_size_bytes_max: 1 << 20,
            ..small_config()
        };
        let synced = run(async {
            let Ok(log) = PartitionLog::open(&dir, config.clone()).await else { return 0 };
            let mut synced = 0;
            'bursts: for _ in 0..5 {
                for durability in [Durability::Synced, Durability::Synced, Durability::Written] {
                    // A record `read_all` checks: value, key and timestamp from its offset.
                    let offset = log.end_offset();
                    let value = value_for(offset, 700);
                    let key = format!("key-{}", offset % 7);
                    let record = Record::new(1_000 + offset as i64, Some(key.as_bytes()), &value);
                    match log.append(&[record], durability).await {
                        Ok(info) if durability == Durability::Synced => {
                            synced = info.last_offset + 1
                        }
                        Ok(_) => {}
                        Err(_) => break 'bursts,
                    }
                }
                // Idle: the writer records the last sync in the watermark.
                glommio::timer::sleep(std::time::Duration::from_millis(130)).await;
            }
            synced
        });
        watermark_writes += sim.fsync_count(&watermark::path(&dir));
        let after = sim.power_cut(seed);
        let config = LogConfig { disk: Disk::Sim(after), ..config };
        reopens_with_every_synced_record(&dir, config, seed, synced);
    }
    assert!(watermark_writes > 10, "the rounds wrote the watermark only {watermark_writes} times");
}

/// Review 19 (hostile): power cuts over several generations of the same partition, with segment
/// rolls, torn-tail cuts by recovery, and idle watermark writes between bursts. Every reopen must
/// succeed (no false corruption) and keep every `synced`-acknowledged record of every generation.
#[test]
fn generations_of_power_cuts_with_rolls_never_refuse_and_keep_synced() {
    let dir = PathBuf::from("/data/topics/t/0");
    let seeds: u64 =
        std::env::var("KAPPA_POWERCUT_ROUNDS").ok().and_then(|s| s.parse().ok()).unwrap_or(24);
    for seed in 0..seeds {
        let mut disk = SimDisk::with_faults(seed, Default::default());
        let mut synced = 0u64;
        for generation in 0..4u64 {
            let mix = seed * 7 + generation * 13;
            disk.set_faults(crate::io::FaultOptions {
                freeze_after_ops: Some(15 + mix * 29 % 120),
                ..Default::default()
            });
            let config = LogConfig {
                disk: Disk::Sim(disk.clone()),
                segment_size_bytes_max: 16 * 1024,
                ..small_config()
            };
            let acked = run(async {
                let log = match PartitionLog::open(&dir, config.clone()).await {
                    Ok(log) => log,
                    Err(crate::Error::Io { .. }) => return 0, // the frozen disk
                    Err(e) => {
                        panic!("seed {seed} gen {generation}: refused after a power cut: {e:?}")
                    }
                };
                assert!(
                    log.end_offset() >= synced,
                    "seed {seed} gen {generation}: end {} < synced {synced}",
                    log.end_offset()
                );
                let mut acked = 0;
                'bursts: for burst in 0..3u64 {
                    for step in 0..4u64 {
                        let durability = if (step + burst + generation) % 3 == 2 {
                            Durability::Written
                        } else {
                            Durability::Synced
                        };
                        let base = log.end_offset();
                        let values: Vec<Vec<u8>> =
                            (0..6).map(|i| value_for(base + i, 600)).collect();
                        let keys: Vec<String> =
                            (0..6).map(|i| format!("key-{}", (base + i) % 7)).collect();
                        let records: Vec<Record<'_>> = values
                            .iter()
                            .zip(&keys)
                            .enumerate()
                            .map(|(i, (v, k))| {
                                Record::new(1_000 + (base + i as u64) as i64, Some(k.as_bytes()), v)
                            })
                            .collect();
                        match log.append(&records, durability).await {
                            Ok(info) if durability == Durability::Synced => {
                                acked = info.last_offset + 1
                            }
                            Ok(_) => {}
                            Err(_) => break 'bursts,
                        }
                    }
                    glommio::timer::sleep(std::time::Duration::from_millis(120)).await;
                }
                if generation % 2 == 1 {
                    let _ = log.close().await;
                }
                acked
            });
            synced = synced.max(acked);
            disk = disk.power_cut(seed * 100 + generation);
        }
        let config = LogConfig {
            disk: Disk::Sim(disk),
            segment_size_bytes_max: 16 * 1024,
            ..small_config()
        };
        run(async {
            let log = match PartitionLog::open(&dir, config).await {
                Ok(log) => log,
                Err(e) => panic!("seed {seed}: final open refused: {e:?}"),
            };
            let end = log.end_offset();
            eprintln!(
                "r19 seed {seed}: end {end} synced {synced} segments {} cut {:?}",
                log.recovery.segment_count,
                log.recovery.tail_cut.as_ref().map(|c| c.dropped_bytes)
            );
            assert!(end >= synced, "seed {seed}: synced records lost: end {end} < {synced}");
            assert_eq!(
                read_all(&log, Seek::Beginning).await,
                (0..end).collect::<Vec<_>>(),
                "seed {seed}"
            );
            log.close().await.expect("close");
        });
    }
}

/// Review 19 (hostile): `close` promises the last sync's proof is made durable ("always in
/// close"). When the idle watermark write failed once (a transient EIO), the writer marks that
/// claim as written anyway, so `close` finds nothing due, returns Ok, and the watermark never
/// records the last sync: damage in those synced frames is then cut as a torn tail.
#[test]
fn close_records_the_last_sync_after_a_failed_idle_watermark_write() {
    let dir = PathBuf::from("/data/topics/t/0");
    let sim = SimDisk::new(5);
    let config = LogConfig { disk: Disk::Sim(sim.clone()), ..small_config() };
    let wm = watermark::path(&dir);
    let scanned = run(async {
        let log = PartitionLog::open(&dir, config.clone()).await.expect("open");
        fill(&log, 4, 10, Durability::Synced).await;
        sim.set_faults(crate::io::FaultOptions {
            write_eio_probability: 1.0,
            only_under: Some(wm.clone()),
            ..Default::default()
        });
        // Idle: the watermark write fails once.
        glommio::timer::sleep(std::time::Duration::from_millis(300)).await;
        sim.set_faults(Default::default());
        assert!(!sim.faults().is_empty(), "no fault was injected (inconclusive)");
        let end = log.shared.state.borrow().readable.position_end;
        log.close().await.expect("close");
        end
    });
    let claim = Watermark::decode(&sim.file_bytes(&wm).expect("watermark file"));
    // The consequence: one flipped byte in the last synced frame is cut as a torn tail.
    sim.corrupt(&crate::paths::segment_path(&dir, 0), scanned - 20, 0x40).expect("flip");
    let config = LogConfig { disk: Disk::Sim(sim.clone()), ..small_config() };
    let opened = run(async {
        match PartitionLog::open(&dir, config).await {
            Ok(log) => {
                let end = (log.end_offset(), log.recovery.tail_cut.clone());
                log.close().await.expect("close");
                Some(end)
            }
            Err(_) => None,
        }
    });
    assert_eq!(
        claim.map(|c| c.synced),
        Some(scanned),
        "close returned Ok but the watermark does not record the last sync (claim {claim:?}); \
         a flipped byte in the last synced frame then opens as: {opened:?} (40 synced records)"
    );
}

/// Review 19 (hostile): `kappa repair` interrupted part way (a crash after the truncation, after
/// some of the unlinks, or before the watermark is lowered) must leave a data dir that a second
/// repair finishes: then `open` succeeds with the first plan's end, `verify` finds nothing, and
/// the log reads and appends on.
#[test]
fn an_interrupted_repair_is_finished_by_the_next_one() {
    for stop_after in 0..4usize {
        let data = tempfile::tempdir().expect("tempdir");
        let dir = crate::paths::partition_dir(data.path(), "t", 0);
        let config = LogConfig { segment_size_bytes_max: 16 * 1024, ..small_config() };
        let segments = run(async {
            let log = PartitionLog::open(&dir, config.clone()).await.expect("open");
            fill(&log, 40, 10, Durability::Synced).await;
            log.close().await.expect("close");
            log.segments()
        });
        assert!(segments.len() >= 4, "{} segments", segments.len());
        // Bit rot in the second (sealed) segment.
        flip_byte(&segments[1].path, 500);
        let window = config.torn_tail_window_bytes();
        let cuts = crate::repair::plan(data.path(), window).expect("plan");
        assert_eq!(cuts.len(), 1, "{cuts:?}");
        let cut = cuts[0].clone();
        // The first steps of `apply`, then a crash.
        truncate(&cut.path, cut.position);
        let deletions = match stop_after {
            0 => 0,
            1 => 1,
            2 => cut.deleted_files.len() - 1,
            _ => cut.deleted_files.len(),
        };
        for file in &cut.deleted_files[..deletions] {
            std::fs::remove_file(file).expect("unlink");
        }
        let again = crate::repair::plan(data.path(), window)
            .unwrap_or_else(|e| panic!("stop {stop_after}: the second plan fails: {e}"));
        crate::repair::apply(&again).expect("second apply");
        let problems: Vec<_> = crate::verify::scan_data_dir_with(data.path(), window)
            .expect("verify")
            .into_iter()
            .flat_map(|p| p.problems)
            .collect();
        assert!(problems.is_empty(), "stop {stop_after}: verify after repair: {problems:?}");
        run(async {
            let log = match PartitionLog::open(&dir, config.clone()).await {
                Ok(log) => log,
                Err(e) => panic!("stop {stop_after}: open after the second repair: {e:?}"),
            };
            assert_eq!(log.end_offset(), cut.first_dropped_offset, "stop {stop_after}");
            assert_eq!(
                read_all(&log, Seek::Beginning).await.len() as u64,
                cut.first_dropped_offset
            );
            fill(&log, 30, 10, Durability::Synced).await;
            let end = log.end_offset();
            log.close().await.expect("close");
            let log = PartitionLog::open(&dir, config.clone()).await.expect("reopen");
            assert_eq!(log.end_offset(), end);
            assert_eq!(read_all(&log, Seek::Beginning).await, (0..end).collect::<Vec<_>>());
            log.close().await.expect("close");
        });
    }
}

/// Review 19 (hostile): `verify` and `open` must agree. Seeded damage (a flipped byte anywhere in
/// a segment, an index or the watermark; a truncated active segment or watermark; a deleted
/// index or segment) to a closed multi-segment log: `open` fails exactly when `verify` reports a
/// problem that is not recoverable.
#[test]
fn verify_agrees_with_open_on_seeded_damage() {
    fn copy_dir(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).expect("mkdir");
        for entry in std::fs::read_dir(from).expect("read_dir") {
            let entry = entry.expect("entry");
            let target = to.join(entry.file_name());
            if entry.file_type().expect("type").is_dir() {
                copy_dir(&entry.path(), &target);
            } else {
                std::fs::copy(entry.path(), &target).expect("copy");
            }
        }
    }
    let template = tempfile::tempdir().expect("tempdir");
    let tdir = crate::paths::partition_dir(template.path(), "t", 0);
    let config = LogConfig { segment_size_bytes_max: 16 * 1024, ..small_config() };
    run(async {
        let log = PartitionLog::open(&tdir, config.clone()).await.expect("open");
        fill(&log, 30, 10, Durability::Synced).await;
        fill(&log, 3, 10, Durability::Written).await;
        log.close().await.expect("close");
    });
    let window = config.torn_tail_window_bytes();
    let rounds: u64 = std::env::var("R19_ROUNDS").ok().and_then(|s| s.parse().ok()).unwrap_or(150);
    let mut disagreements = Vec::new();
    for seed in 0..rounds {
        let data = tempfile::tempdir().expect("tempdir");
        copy_dir(template.path(), data.path());
        let dir = crate::paths::partition_dir(data.path(), "t", 0);
        let mut files: Vec<PathBuf> =
            std::fs::read_dir(&dir).expect("ls").map(|e| e.expect("e").path()).collect();
        files.sort();
        let mut rng = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let file = files[(next() % files.len() as u64) as usize].clone();
        let len = std::fs::metadata(&file).expect("meta").len();
        let what = match next() % 6 {
            0..=2 if len > 0 => {
                let at = next() % len;
                flip_byte(&file, at);
                format!("flip {} @{at}", file.display())
            }
            3 if len > 0 => {
                let at = next() % len;
                truncate(&file, at);
                format!("truncate {} to {at}", file.display())
            }
            4 => {
                std::fs::remove_file(&file).expect("rm");
                format!("remove {}", file.display())
            }
            _ => continue,
        };
        let verdict = crate::verify::scan_data_dir_with(data.path(), window);
        let refused_by_verify = match &verdict {
            Ok(parts) => parts.iter().flat_map(|p| &p.problems).any(|p| !p.recoverable),
            Err(_) => true,
        };
        let opened = run(async {
            match PartitionLog::open(&dir, config.clone()).await {
                Ok(log) => {
                    // Open accepted it: then every offset must read back, or the read must fail.
                    let mut reader = log.reader(Seek::Beginning).expect("reader");
                    let mut seen = log.start_offset();
                    let end = log.end_offset();
                    let result = loop {
                        match reader.next_batch().await {
                            Ok(Some(batch)) => {
                                for record in batch.records() {
                                    if record.offset() != seen {
                                        break;
                                    }
                                    seen += 1;
                                }
                            }
                            Ok(None) => break Ok(seen),
                            Err(e) => break Err(format!("read at {seen}: {e}")),
                        }
                    };
                    let _ = log.close().await;
                    match result {
                        Ok(n) if n == end => Ok(()),
                        Ok(n) => Err(format!(
                            "SILENT: open Ok, reader stops at {n} of {end} without error"
                        )),
                        Err(e) => Err(e),
                    }
                }
                Err(e) => Err(format!("{e}")),
            }
        });
        if refused_by_verify != opened.is_err() {
            disagreements
                .push(format!("seed {seed}: {what}: verify {verdict:?} / open {opened:?}"));
        }
    }
    assert!(
        disagreements.is_empty(),
        "{} disagreements:\n{}",
        disagreements.len(),
        disagreements.join("\n")
    );
}
