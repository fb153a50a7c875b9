//! The `kappa` CLI against real data dirs: gen, inspect, verify, and corruption reports.

use std::os::unix::fs::FileExt;

use kappa_tools::cli::{main_with_args, EXIT_CORRUPT, EXIT_ERROR, EXIT_OK};

fn kappa(args: &[&str]) -> i32 {
    let mut all = vec!["kappa"];
    all.extend_from_slice(args);
    main_with_args(all)
}

#[test]
fn gen_then_verify_and_inspect() {
    let temp = tempfile::tempdir().expect("tempdir");
    let dir = temp.path().to_str().expect("utf-8");
    let gen = [
        "gen",
        dir,
        "--topic",
        "t",
        "--partitions",
        "3",
        "--records",
        "5000",
        "--value-size",
        "300",
        "--segment-mib",
        "1",
        "--durability",
        "synced",
        "--batch",
        "100",
    ];
    assert_eq!(kappa(&gen), EXIT_OK);
    assert_eq!(kappa(&["verify", dir]), EXIT_OK);
    assert_eq!(kappa(&["verify", "--strict", dir]), EXIT_OK);
    assert_eq!(kappa(&["inspect", dir]), EXIT_OK);
    assert_eq!(kappa(&["inspect", "--json", dir]), EXIT_OK);
    let partitions = kappa_storage::verify::scan_data_dir(temp.path()).expect("scan");
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
    let gen = [
        "gen",
        dir,
        "--topic",
        "t",
        "--records",
        "5000",
        "--value-size",
        "300",
        "--segment-mib",
        "1",
        "--batch",
        "50",
    ];
    assert_eq!(kappa(&gen), EXIT_OK);
    let segment = temp.path().join("topics/t/0/00000000000000000000.log");
    let file = std::fs::OpenOptions::new().read(true).write(true).open(&segment).expect("open");
    let mut byte = [0u8];
    file.read_exact_at(&mut byte, 300_000).expect("read");
    file.write_all_at(&[byte[0] ^ 1], 300_000).expect("write");
    drop(file);
    assert_eq!(kappa(&["verify", dir]), EXIT_CORRUPT);
    let partitions = kappa_storage::verify::scan_data_dir(temp.path()).expect("scan");
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
    let partitions = kappa_storage::verify::scan_data_dir(std::path::Path::new(dir)).expect("scan");
    assert!(!partitions.is_empty());
    assert!(partitions.iter().all(|p| p.segments.last().is_some_and(|s| s.next_offset > 0)));
}
