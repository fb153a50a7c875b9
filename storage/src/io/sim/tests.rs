//! Tests of the simulated disk: the POSIX durability model, power cuts, faults, O_DIRECT rules.

use std::path::Path;

use super::*;
use crate::io::{Disk, File};

fn run<T>(future: impl std::future::Future<Output = T>) -> T {
    glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .io_memory(1 << 20)
        .make()
        .expect("executor")
        .run(future)
}

fn p(path: &str) -> &Path {
    Path::new(path)
}

/// A DMA buffer of `len` bytes, all `byte`.
fn buffer(file: &File, len: usize, byte: u8) -> glommio::io::DmaBuffer {
    let mut buf = file.alloc_dma_buffer(len);
    buf.as_bytes_mut().fill(byte);
    buf
}

#[test]
fn a_synced_file_in_an_unsynced_directory_may_vanish_at_a_power_cut() {
    run(async {
        let mut vanished = 0;
        for seed in 0..50 {
            let sim = SimDisk::new(seed);
            let disk = Disk::Sim(sim.clone());
            disk.create_dir_all(p("/d")).await.expect("mkdir");
            let file = disk.open_rw(p("/d/f")).await.expect("create");
            file.write_at(buffer(&file, 4096, 7), 0).await.expect("write");
            file.fdatasync().await.expect("sync");
            let after = sim.power_cut(seed);
            // The data was synced, the entry never was: POSIX promises nothing, so neither do we.
            match after.file_bytes(p("/d/f")) {
                None => vanished += 1,
                Some(bytes) => assert_eq!(bytes, vec![7; 4096], "seed {seed}: synced data"),
            }
            assert!(Disk::Sim(after).metadata(p("/d")).await.expect("stat").is_some());
        }
        assert!(vanished > 10, "the unsynced entry vanished in only {vanished} of 50 cuts");
    });
}

#[test]
fn a_synced_file_in_a_synced_directory_survives_every_power_cut() {
    run(async {
        for seed in 0..50 {
            let sim = SimDisk::new(seed);
            let disk = Disk::Sim(sim.clone());
            disk.create_dir_all(p("/d")).await.expect("mkdir");
            let file = disk.open_rw(p("/d/f")).await.expect("create");
            disk.sync_dir(p("/d")).await.expect("sync dir");
            file.write_at(buffer(&file, 8192, 7), 0).await.expect("write");
            file.fdatasync().await.expect("sync");
            // Unsynced: rewrite the second block and grow the file.
            file.write_at(buffer(&file, 8192, 9), 4096).await.expect("write");
            let image = sim.power_cut(seed).file_bytes(p("/d/f")).expect("file survives");
            assert!(image.len() == 8192 || image.len() == 12288, "seed {seed}: {}", image.len());
            assert!(image[..4096].iter().all(|b| *b == 7), "seed {seed}: synced bytes changed");
            for sector in image[4096..].chunks(SECTOR_SIZE) {
                // Every sector holds one of its versions whole: never a mix inside a sector.
                let first = sector[0];
                assert!(sector.iter().all(|b| *b == first), "seed {seed}: torn inside a sector");
                assert!([0, 7, 9].contains(&first), "seed {seed}: invented byte {first}");
            }
        }
    });
}

#[test]
fn unsynced_writes_are_kept_dropped_or_torn_depending_on_the_seed() {
    run(async {
        let mut kept = 0;
        let mut dropped = 0;
        let mut torn = 0;
        for seed in 0..200 {
            let sim = SimDisk::new(seed);
            let disk = Disk::Sim(sim.clone());
            let file = disk.open_rw(p("/f")).await.expect("create");
            disk.sync_dir(p("/")).await.expect("sync dir");
            file.write_at(buffer(&file, 16384, 3), 0).await.expect("write");
            let image = sim.power_cut(seed).file_bytes(p("/f")).expect("file");
            let threes = image.iter().filter(|b| **b == 3).count();
            match threes {
                16384 => kept += 1,
                0 => dropped += 1,
                _ => torn += 1,
            }
        }
        assert!(
            kept > 10 && dropped > 10 && torn > 10,
            "{kept} kept, {dropped} dropped, {torn} torn"
        );
    });
}

#[test]
fn a_rename_without_a_directory_fsync_may_revert() {
    let mut reverted = 0;
    let mut renamed = 0;
    for seed in 0..100 {
        let sim = SimDisk::new(seed);
        let disk = Disk::Sim(sim.clone());
        disk.write_file_atomic_blocking(p("/meta"), b"old").expect("write old");
        disk.write_file_atomic_blocking(p("/meta.next"), b"new").expect("write new");
        disk.rename_blocking(p("/meta.next"), p("/meta")).expect("rename");
        let after = sim.power_cut(seed);
        match after.file_bytes(p("/meta")).as_deref() {
            Some(b"old") => reverted += 1,
            Some(b"new") => renamed += 1,
            other => panic!("seed {seed}: /meta is {other:?}"),
        }
    }
    assert!(reverted > 10 && renamed > 10, "{reverted} reverted, {renamed} renamed");
    // With the directory synced, the rename is durable.
    for seed in 0..20 {
        let sim = SimDisk::new(seed);
        let disk = Disk::Sim(sim.clone());
        disk.write_file_atomic_blocking(p("/meta"), b"old").expect("write old");
        disk.write_file_atomic_blocking(p("/meta"), b"new").expect("write new");
        assert_eq!(sim.power_cut(seed).file_bytes(p("/meta")).as_deref(), Some(&b"new"[..]));
    }
}

#[test]
fn create_dir_all_makes_every_created_directory_durable() {
    for seed in 0..30 {
        let sim = SimDisk::new(seed);
        let disk = Disk::Sim(sim.clone());
        disk.create_dir_all_blocking(p("/a/b/c")).expect("mkdir");
        assert_eq!(sim.fsync_count(p("/")), 1);
        assert_eq!(sim.fsync_count(p("/a")), 1);
        assert_eq!(sim.fsync_count(p("/a/b")), 1);
        let after = Disk::Sim(sim.power_cut(seed));
        let meta = after.metadata_blocking(p("/a/b/c")).expect("stat");
        assert!(meta.is_some_and(|m| m.is_dir), "seed {seed}: /a/b/c lost");
    }
}

#[test]
fn the_same_seed_gives_the_same_crash_image() {
    let image = |seed: u64| {
        run(async move {
            let sim = SimDisk::new(1);
            let disk = Disk::Sim(sim.clone());
            let file = disk.open_rw(p("/f")).await.expect("create");
            for i in 0..8u8 {
                file.write_at(buffer(&file, 4096, i + 1), u64::from(i) * 4096).await.expect("w");
            }
            sim.power_cut(seed).file_bytes(p("/f"))
        })
    };
    assert_eq!(image(42), image(42));
    assert!((0..20).any(|seed| image(seed) != image(42)), "the seed changes nothing");
}

#[test]
fn a_cut_disk_and_its_files_refuse_everything() {
    run(async {
        let sim = SimDisk::new(5);
        let disk = Disk::Sim(sim.clone());
        let file = disk.open_rw(p("/f")).await.expect("create");
        disk.sync_dir(p("/")).await.expect("sync dir");
        let after = sim.power_cut(5);
        let error = file.write_at(buffer(&file, 512, 1), 0).await.expect_err("write after cut");
        assert_eq!(error.raw_os_error(), Some(5));
        assert!(file.fdatasync().await.is_err());
        assert!(disk.open_rw(p("/g")).await.is_err());
        assert!(disk.list_dir_blocking(p("/")).is_err());
        assert!(!sim.is_alive());
        // The new disk is untouched by the old handles.
        assert_eq!(after.file_bytes(p("/f")), Some(Vec::new()));
        assert!(after.file_bytes(p("/g")).is_none());
    });
}

#[test]
fn freeze_after_ops_stops_the_disk_at_that_operation() {
    let sim = SimDisk::with_faults(
        3,
        FaultOptions { freeze_after_ops: Some(5), ..FaultOptions::default() },
    );
    let disk = Disk::Sim(sim.clone());
    disk.create_dir_all_blocking(p("/a")).expect("2 stats, mkdir, fsync: 4 operations");
    assert!(disk.metadata_blocking(p("/a")).is_ok(), "operation 5");
    assert!(disk.metadata_blocking(p("/a")).is_err(), "operation 6 is past the freeze");
    assert!(!sim.is_alive());
    let after = Disk::Sim(sim.power_cut(1));
    assert!(after.metadata_blocking(p("/a")).expect("stat").is_some());
}

#[test]
fn scheduled_and_random_faults_are_injected_counted_and_recorded() {
    run(async {
        let sim = SimDisk::new(11);
        let disk = Disk::Sim(sim.clone());
        let file = disk.open_rw(p("/f")).await.expect("create");
        sim.fail_next(FaultKind::FsyncEio);
        assert_eq!(file.fdatasync().await.expect_err("fsync").raw_os_error(), Some(5));
        file.fdatasync().await.expect("only the next one fails");
        sim.fail_next(FaultKind::DirFsyncEio);
        assert!(disk.sync_dir(p("/")).await.is_err());
        sim.fail_next(FaultKind::ReadEio);
        assert!(file.read_at(0, 512).await.is_err());

        sim.set_faults(FaultOptions { write_eio_probability: 0.5, ..FaultOptions::default() });
        let mut failed = 0;
        for i in 0..100u64 {
            if file.write_at(buffer(&file, 512, 1), i * 512).await.is_err() {
                failed += 1;
            }
        }
        assert!((20..80).contains(&failed), "{failed} of 100 writes failed at p=0.5");
        let records = sim.faults();
        assert_eq!(records.len(), 3 + failed);
        assert_eq!(records[0].kind, FaultKind::FsyncEio);
        assert_eq!(records[0].path, p("/f"));
        assert_eq!(records[1].kind, FaultKind::DirFsyncEio);
        assert_eq!(records[2].kind, FaultKind::ReadEio);
        assert!(records[3..].iter().all(|r| r.kind == FaultKind::WriteEio));
    });
}

/// `only_under` keeps the faults to one part of the tree: there every write, fsync and directory
/// fsync fails, elsewhere nothing does.
#[test]
fn faults_only_under_a_path_leave_the_rest_alone() {
    run(async {
        let sim = SimDisk::with_faults(
            5,
            FaultOptions {
                write_eio_probability: 1.0,
                fsync_eio_probability: 1.0,
                dir_fsync_eio_probability: 1.0,
                only_under: Some(p("/meta").to_path_buf()),
                ..FaultOptions::default()
            },
        );
        let disk = Disk::Sim(sim.clone());
        disk.create_dir_all(p("/log")).await.expect("the log's directory");
        let file = disk.open_rw(p("/log/f")).await.expect("create");
        assert_eq!(file.write_at(buffer(&file, 512, 1), 0).await.expect("write"), 512);
        file.fdatasync().await.expect("fdatasync");
        disk.sync_dir(p("/log")).await.expect("fsync dir");
        assert!(sim.faults().is_empty(), "{:?}", sim.faults());
        // Creating /meta fsyncs `/`, which is not under it.
        disk.create_dir_all(p("/meta")).await.expect("mkdir");
        assert!(disk.sync_dir(p("/meta")).await.is_err());
        assert!(disk.write_file_atomic(p("/meta/m"), b"x").await.is_err());
        disk.write_file_atomic(p("/log/m"), b"x").await.expect("outside /meta");
        assert!(sim.faults().iter().all(|r| r.path.starts_with("/meta")), "{:?}", sim.faults());
    });
}

#[test]
fn a_full_disk_shortens_a_write_then_refuses_with_enospc() {
    run(async {
        let sim = SimDisk::with_faults(
            2,
            FaultOptions { capacity_bytes: Some(10_000), ..FaultOptions::default() },
        );
        let disk = Disk::Sim(sim.clone());
        let file = disk.open_rw(p("/f")).await.expect("create");
        assert_eq!(file.write_at(buffer(&file, 8192, 1), 0).await.expect("fits"), 8192);
        let short = file.write_at(buffer(&file, 4096, 1), 8192).await.expect("partly fits");
        assert_eq!(short, 1536, "what fits, in whole sectors");
        let error = file.write_at(buffer(&file, 512, 1), 9728).await.expect_err("full");
        assert_eq!(error.raw_os_error(), Some(28));
        assert!(file.pre_allocate_from(0, 1 << 20, false).await.is_err());
        assert!(sim.faults().iter().all(|r| r.kind == FaultKind::NoSpace));
    });
}

#[test]
fn short_writes_store_a_sector_prefix() {
    run(async {
        let sim = SimDisk::with_faults(
            9,
            FaultOptions { short_write_probability: 1.0, ..FaultOptions::default() },
        );
        let disk = Disk::Sim(sim.clone());
        let file = disk.open_rw(p("/f")).await.expect("create");
        let n = file.write_at(buffer(&file, 8192, 4), 0).await.expect("short write");
        assert!(n < 8192 && n % SECTOR_SIZE == 0, "{n}");
        assert_eq!(sim.file_bytes(p("/f")).expect("file").len(), n);
    });
}

#[test]
fn misaligned_direct_io_is_refused_like_the_device_would() {
    let path = p("/f");
    let caught = |f: fn()| std::panic::catch_unwind(f).is_err();
    assert!(caught(|| assert_direct("write", 100, 512, None, Path::new("/f"))));
    assert!(caught(|| assert_direct("write", 0, 100, None, Path::new("/f"))));
    assert!(caught(|| assert_direct("read", 0, 512, Some(8 as *const u8), Path::new("/f"))));
    assert_direct("write", 4096, 1024, Some(4096 as *const u8), path);
}

#[test]
fn fsync_counters_follow_files_and_directories() {
    run(async {
        let sim = SimDisk::new(1);
        let disk = Disk::Sim(sim.clone());
        let file = disk.open_rw(p("/f")).await.expect("create");
        for _ in 0..3 {
            file.fdatasync().await.expect("sync");
        }
        disk.sync_dir(p("/")).await.expect("sync dir");
        assert_eq!(sim.fsync_count(p("/f")), 3);
        assert_eq!(sim.fsync_count(p("/")), 1);
        assert_eq!(sim.stats().fsyncs, 3);
        assert_eq!(sim.stats().dir_fsyncs, 1);
    });
}

#[test]
fn the_disk_works_from_several_threads() {
    let sim = SimDisk::new(4);
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let disk = Disk::Sim(sim.clone());
            std::thread::spawn(move || {
                let dir = format!("/t{t}");
                disk.create_dir_all_blocking(Path::new(&dir)).expect("mkdir");
                for i in 0..20 {
                    let path = format!("{dir}/{i}");
                    disk.write_file_atomic_blocking(Path::new(&path), &[t; 10]).expect("write");
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().expect("thread");
    }
    assert_eq!(sim.files().len(), 80);
}

/// `write_file_atomic` is what index files and (through the engine) metadata rely on: once it
/// returns, a power cut leaves the new contents, whole. Without its file fsync the new name can
/// point at an empty or torn file; without its directory fsync the rename can revert.
#[test]
fn write_file_atomic_survives_every_power_cut() {
    for seed in 0..200 {
        let sim = SimDisk::new(seed);
        let disk = Disk::Sim(sim.clone());
        disk.create_dir_all_blocking(p("/m")).expect("mkdir");
        let old = vec![1u8; 3000];
        let new = vec![2u8; 5000];
        disk.write_file_atomic_blocking(p("/m/meta"), &old).expect("old");
        disk.write_file_atomic_blocking(p("/m/meta"), &new).expect("new");
        let after = sim.power_cut(seed);
        assert_eq!(after.file_bytes(p("/m/meta")), Some(new), "seed {seed}");
    }
}
