//! The `kappa` CLI against real data dirs: gen, inspect, verify, and corruption reports.

use std::os::unix::fs::FileExt;

use kappa_tools::cli::{main_with_args, EXIT_CORRUPT, EXIT_ERROR, EXIT_OK};

fn kappa(args: &[&str]) -> i32 {
    let mut all = vec!["kappa"];
    all.extend_from_slice(args);
    main_with_args(all)
}

/// The arguments of `kappa gen DIR --topic t` with `options` (split at white space) after them.
fn gen<'a>(dir: &'a str, options: &'a str) -> Vec<&'a str> {
    ["gen", dir, "--topic", "t"].into_iter().chain(options.split_whitespace()).collect()
}

/// What `verify` finds in every partition of `dir`, read back from the files.
fn scan(dir: &std::path::Path) -> Vec<kappa_storage::verify::PartitionSummary> {
    kappa_storage::verify::scan_data_dir(dir).expect("scan")
}

/// XORs the byte at `position` of `path` with `mask`.
fn flip(path: &std::path::Path, position: u64, mask: u8) {
    let file = std::fs::OpenOptions::new().read(true).write(true).open(path).expect("open");
    let mut byte = [0u8];
    file.read_exact_at(&mut byte, position).expect("read");
    file.write_all_at(&[byte[0] ^ mask], position).expect("write");
}

#[test]
fn gen_then_verify_and_inspect() {
    let temp = tempfile::tempdir().expect("tempdir");
    let dir = temp.path().to_str().expect("utf-8");
    let options = "--partitions 3 --records 5000 --value-size 300 --segment-mib 1 \
                   --durability synced --batch 100";
    let gen = gen(dir, options);
    assert_eq!(kappa(&gen), EXIT_OK);
    assert_eq!(kappa(&["verify", dir]), EXIT_OK);
    assert_eq!(kappa(&["verify", "--strict", dir]), EXIT_OK);
    assert_eq!(kappa(&["inspect", dir]), EXIT_OK);
    assert_eq!(kappa(&["inspect", "--json", dir]), EXIT_OK);
    let partitions = scan(temp.path());
    assert_eq!(partitions.len(), 3);
    for p in &partitions {
        assert_eq!(p.segments.last().expect("segment").next_offset, 5000);
        assert!(p.segments.len() > 1, "rolled at 1 MiB");
        assert!(p.problems.is_empty());
    }
}

#[test]
fn verify_reports_a_flipped_bit_with_its_position() {
    let temp = tempfile::tempdir().expect("tempdir");
    let dir = temp.path().to_str().expect("utf-8");
    let gen = gen(dir, "--records 5000 --value-size 300 --segment-mib 1 --batch 50");
    assert_eq!(kappa(&gen), EXIT_OK);
    let segment = temp.path().join("topics/t/0/00000000000000000000.log");
    flip(&segment, 300_000, 1);
    assert_eq!(kappa(&["verify", dir]), EXIT_CORRUPT);
    let partitions = scan(temp.path());
    let problem = &partitions[0].problems[0];
    assert_eq!(problem.path, segment);
    assert!(problem.position <= 300_000 && problem.position + 40_000 > 300_000, "{problem:?}");
    assert!(problem.what.contains("checksum"), "{problem:?}");
    assert!(!problem.recoverable);
}

#[test]
fn usage_and_io_errors_exit_2() {
    assert_eq!(kappa(&["verify", "/nonexistent/kappa/dir"]), EXIT_ERROR);
    assert_eq!(kappa(&["verify"]), EXIT_ERROR);
    assert_eq!(kappa(&["frobnicate"]), EXIT_ERROR);
}

#[test]
fn demo_runs_and_leaves_a_verifiable_data_dir() {
    let temp = tempfile::tempdir().expect("tempdir");
    let dir = temp.path().join("demo");
    let dir = dir.to_str().expect("utf-8");
    assert_eq!(kappa(&["demo", "--seconds", "1", "--data-dir", dir, "--shards", "2"]), EXIT_OK);
    // A second run reopens the log and appends after it.
    assert_eq!(
        kappa(&["demo", "--seconds", "1", "--data-dir", dir, "--durability", "synced"]),
        EXIT_OK
    );
    assert_eq!(kappa(&["verify", "--strict", dir]), EXIT_OK);
    let partitions = scan(std::path::Path::new(dir));
    assert!(!partitions.is_empty());
    assert!(partitions.iter().all(|p| p.segments.last().is_some_and(|s| s.next_offset > 0)));
}

/// Regression (issue 8, defect 1, through the CLI): `kappa gen` of 20,000 `synced` records, one
/// byte flipped at position 4096, then `kappa gen` into the same dir again: recovery took the
/// damage for a torn tail, dropped every record and handed offsets 0.. out again, so a consumer
/// that had read offset 5 would read a different record under it. Now the second `gen` fails
/// and changes nothing, `verify` says corrupt (exit 1), and only an explicit `repair` cuts.
#[test]
fn a_flipped_byte_in_the_active_segment_is_corruption_until_repaired() {
    let temp = tempfile::tempdir().expect("tempdir");
    let dir = temp.path().to_str().expect("utf-8");
    // The shape: 20,000 records of 1,000 bytes (about 20.5 MiB), one segment. Every frame
    // after the first says the first was synced before it was appended, so damage at byte 4096
    // cannot be a torn write.
    let gen = gen(dir, "--records 20000 --value-size 1000 --durability synced");
    assert_eq!(kappa(&gen), EXIT_OK);
    let segment = temp.path().join("topics/t/0/00000000000000000000.log");
    flip(&segment, 4096, 0x10);
    let damaged = std::fs::read(&segment).expect("read");

    assert_eq!(kappa(&gen), EXIT_ERROR, "gen appended after a corrupt frame");
    assert_eq!(std::fs::read(&segment).expect("read"), damaged, "the failed open changed the file");

    assert_eq!(kappa(&["verify", dir]), EXIT_CORRUPT);
    let partitions = scan(temp.path());
    let problem = &partitions[0].problems[0];
    assert!(!problem.recoverable, "{problem:?}");
    assert!(problem.what.contains("corrupt"), "{problem:?}");

    assert_eq!(kappa(&["repair", "--dry-run", dir]), EXIT_CORRUPT);
    assert_eq!(std::fs::read(&segment).expect("read"), damaged, "a dry run changed the file");
    let window = kappa_storage::verify::default_window_bytes();
    let cuts = kappa_storage::repair::plan(temp.path(), window).expect("plan");
    assert_eq!(cuts.len(), 1);
    assert_eq!(cuts[0].path, segment);
    assert_eq!(cuts[0].position, 0, "the frame holding byte 4096 starts at 0");
    assert_eq!((cuts[0].first_dropped_offset, cuts[0].dropped_offsets_end), (0, 20_000));
    let data = 20_000 * 1_000;
    assert!(cuts[0].dropped_bytes > data && cuts[0].dropped_bytes < data * 11 / 10, "{cuts:?}");

    assert_eq!(kappa(&["repair", dir]), EXIT_OK);
    assert_eq!(kappa(&["verify", "--strict", dir]), EXIT_OK);
    assert_eq!(kappa(&["repair", "--dry-run", dir]), EXIT_OK, "nothing left to repair");
}

/// A damaged sealed segment: `repair` cuts it at the damage and deletes every later segment, and
/// reports the offsets and bytes that go.
#[test]
fn repair_cuts_a_damaged_sealed_segment_and_everything_after_it() {
    let temp = tempfile::tempdir().expect("tempdir");
    let dir = temp.path().to_str().expect("utf-8");
    let gen = gen(dir, "--records 6000 --value-size 300 --segment-mib 1 --batch 50");
    assert_eq!(kappa(&gen), EXIT_OK);
    let partition = temp.path().join("topics/t/0");
    let segments = kappa_storage::paths::list_segments(&partition).expect("list");
    assert!(segments.len() >= 3, "{segments:?}");
    flip(&segments[1].1, 500_000, 0x10);
    assert_eq!(kappa(&["verify", dir]), EXIT_CORRUPT);
    let window = kappa_storage::verify::default_window_bytes();
    let cuts = kappa_storage::repair::plan(temp.path(), window).expect("plan");
    let cut = &cuts[0];
    assert_eq!(cut.path, segments[1].1);
    assert!(cut.position <= 500_000 && cut.position + 20_000 > 500_000, "{cut:?}");
    assert!(cut.first_dropped_offset > segments[1].0);
    assert_eq!(cut.dropped_offsets_end, 6000);
    assert!(cut.deleted_files.contains(&segments[2].1));
    assert_eq!(kappa(&["repair", dir]), EXIT_OK);
    assert_eq!(kappa(&["verify", "--strict", dir]), EXIT_OK);
    let partitions = scan(temp.path());
    let end = partitions[0].segments.last().expect("segment").next_offset;
    assert_eq!(end, cut.first_dropped_offset);
    // The repaired log opens and takes appends at the cut.
    assert_eq!(kappa(&gen), EXIT_OK);
    assert_eq!(kappa(&["verify", "--strict", dir]), EXIT_OK);
}

/// The wall clock in ms, for a test's time window.
#[allow(clippy::disallowed_methods)] // The window the test ran in, not engine time.
fn wall_ms() -> i64 {
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    since.expect("after 1970").as_millis() as i64
}

/// `kappa gen` stamps every frame with the wall clock at its append (format 3's `append_time`,
/// what age retention measures), not the generated records' event times (2023) nor the unknown
/// time of old frames: every frame of every segment, read back from the files, has an append
/// time inside the test's own wall-clock window.
#[test]
fn gen_stamps_frames_with_the_wall_clock() {
    let temp = tempfile::tempdir().expect("tempdir");
    let dir = temp.path().to_str().expect("utf-8");
    let before = wall_ms();
    assert_eq!(
        kappa(&gen(dir, "--records 2000 --segment-mib 1 --partitions 2 --batch 100")),
        EXIT_OK
    );
    let after = wall_ms();
    let mut frames = 0;
    for p in scan(temp.path()) {
        for segment in &p.segments {
            let bytes = std::fs::read(&segment.path).expect("segment");
            let mut at = 0;
            while let Ok(header) = kappa_storage::format::parse_header(&bytes[at..]) {
                assert_eq!(header.version, kappa_storage::format::FORMAT_VERSION);
                assert!(
                    (before..=after).contains(&header.append_time),
                    "{} at byte {at}: append time {} outside [{before}, {after}] (event time {})",
                    segment.path.display(),
                    header.append_time,
                    header.first_timestamp
                );
                frames += 1;
                at += header.frame_len as usize;
            }
        }
    }
    assert!(frames >= 20, "2000 records in batches of 100: {frames} frames");
}

/// Regression (review of issue 8, B1) through the CLI: damage in the last frame, which no later
/// frame's `synced_before` vouches for, after a `gen` whose records were all synced. The sync
/// watermark the clean shutdown wrote proves that sync: the next `gen` refuses to open the log,
/// `verify` says corrupt, and `repair` cuts there and lowers the watermark, after which the dir
/// verifies clean and takes appends again.
#[test]
fn damage_in_the_last_synced_frame_is_corruption_until_repaired() {
    let temp = tempfile::tempdir().expect("tempdir");
    let dir = temp.path().to_str().expect("utf-8");
    let gen = gen(dir, "--records 200 --value-size 300 --batch 50 --durability synced");
    assert_eq!(kappa(&gen), EXIT_OK);
    let partition = temp.path().join("topics/t/0");
    let scanned = scan(temp.path());
    let size = scanned[0].segments[0].size_bytes;
    let claim = kappa_storage::watermark::read_blocking(&partition).expect("read").expect("claim");
    assert_eq!((claim.segment_base, claim.synced), (0, size), "close recorded the last sync");
    let segment = partition.join("00000000000000000000.log");
    flip(&segment, size - 100, 0x10);

    assert_eq!(kappa(&gen), EXIT_ERROR, "synced records cut as a torn tail");
    assert_eq!(kappa(&["verify", dir]), EXIT_CORRUPT);
    let window = kappa_storage::verify::default_window_bytes();
    let cuts = kappa_storage::repair::plan(temp.path(), window).expect("plan");
    assert_eq!(cuts.len(), 1, "{cuts:?}");
    // The cut starts at the last frame (records 150..200); its own records are not counted in
    // `dropped_offsets_end`, since no valid frame follows to vouch for them.
    assert_eq!(cuts[0].first_dropped_offset, 150);
    assert!(cuts[0].position < size - 100 && cuts[0].dropped_bytes >= 100, "{cuts:?}");
    assert_eq!(cuts[0].watermark, (0, cuts[0].position));
    assert_eq!(kappa(&["repair", dir]), EXIT_OK);
    let claim = kappa_storage::watermark::read_blocking(&partition).expect("read").expect("claim");
    assert_eq!(claim.synced, cuts[0].position, "repair lowered the watermark to its cut");
    assert_eq!(kappa(&["verify", "--strict", dir]), EXIT_OK);
    assert_eq!(kappa(&gen), EXIT_OK, "the repaired log opens and takes appends");
}

/// Regression (issue 8, lifecycle review): `kappa repair` cut the log below a view's checkpoint
/// and left the checkpoint; once new appends grew the log past it again, the view resumed it,
/// counting records that were cut and missing the new ones that took their offsets. Now repair
/// lists (also in `--dry-run`) and durably removes every checkpoint of the partition past the
/// cut before it truncates; the reopened view's rows equal an independent count over what the
/// log holds now. Fails with the removal in `repair::run` skipped.
#[test]
fn repair_removes_view_checkpoints_past_its_cut() {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use kappa_engine::operator::Aggregate;
    use kappa_engine::{Durability, Engine, ProducerRecord, Seek, TopicConfig, ViewDef};

    let temp = tempfile::tempdir().expect("tempdir");
    let dir = temp.path().to_str().expect("utf-8");
    let start = || {
        Engine::builder()
            .data_dir(temp.path())
            .shards(1)
            .log_config(kappa_storage::LogConfig {
                segment_size_bytes_max: 16 * 1024,
                ..kappa_storage::LogConfig::default()
            })
            .stall_probe_interval(None)
            .build()
            .expect("engine starts")
    };
    let produce = |engine: &Engine, prefix: &str| {
        let producer = engine.producer().with_durability(Durability::Synced);
        for chunk in 0..100 {
            let records = (0..20)
                .map(|i| {
                    let n = chunk * 20 + i;
                    ProducerRecord::new(format!("value-{n:06}-{}", "x".repeat(40)))
                        .key(format!("{prefix}{}", n % 10))
                })
                .collect();
            producer.send_batch("t", records).expect("send");
        }
    };
    let def = || ViewDef::new("t").revision("a").aggregate(Aggregate::Count).checkpoint_every(100);

    let engine = start();
    engine.create_topic("t", TopicConfig::new(1)).expect("topic");
    produce(&engine, "old");
    let view = engine.create_view("v", def()).expect("view");
    view.wait_for(view.log_end().expect("end"), Duration::from_secs(60)).expect("folded");
    drop(view);
    // A clean shutdown takes a final checkpoint at the end (2000).
    engine.shutdown().expect("shutdown");
    drop(engine);

    let segments =
        kappa_storage::paths::list_segments(&temp.path().join("topics/t/0")).expect("list");
    assert!(segments.len() >= 3, "{segments:?}");
    flip(&segments[1].1, 1_000, 0x10);
    let window = kappa_storage::verify::default_window_bytes();
    let cuts = kappa_storage::repair::plan(temp.path(), window).expect("plan");
    let cut = cuts[0].first_dropped_offset;
    assert!(cut < 2000, "{cuts:?}");
    let disk = kappa_storage::io::Disk::Dma;
    let stale = kappa_engine::view::cut::checkpoints_past(&disk, temp.path(), "t", 0, cut)
        .expect("list checkpoints");
    assert!(!stale.is_empty(), "no checkpoint past the cut at {cut} (inconclusive)");
    assert!(stale.iter().all(|c| c.next_offset.is_some_and(|n| n > cut)), "{stale:?}");
    assert!(stale.iter().any(|c| c.next_offset == Some(2000)), "{stale:?}");
    assert_eq!(kappa(&["repair", "--dry-run", dir]), EXIT_CORRUPT);
    assert!(stale.iter().all(|c| c.path.exists()), "the dry run removed a checkpoint");
    assert_eq!(kappa(&["repair", dir]), EXIT_OK);
    for checkpoint in &stale {
        assert!(!checkpoint.path.exists(), "left past the cut: {}", checkpoint.path.display());
    }

    let engine = start();
    produce(&engine, "new");
    let end = engine.partition_offsets("t", 0).expect("offsets").end_offset;
    assert_eq!(end, cut + 2000);
    let mut expected: BTreeMap<Vec<u8>, f64> = BTreeMap::new();
    let mut consumer = engine.consumer("t", 0, Seek::Beginning).expect("consumer");
    while consumer.position() < end {
        let batch = consumer
            .next_batch_timeout(Duration::from_secs(10))
            .expect("read")
            .expect("a batch in time");
        for record in batch.records() {
            *expected.entry(record.key().expect("keyed").to_vec()).or_default() += 1.0;
        }
    }
    let view = engine.create_view("v", def()).expect("view");
    view.wait_for(view.log_end().expect("end"), Duration::from_secs(60)).expect("folded");
    let rows: BTreeMap<Vec<u8>, f64> =
        view.rows().expect("rows").into_iter().map(|r| (r.key, r.value)).collect();
    assert_eq!(rows, expected, "the view's counts differ from the log's records");
    drop(view);
    engine.shutdown().expect("shutdown");
}
