//! Recovery skips what the file system reports as holes or unwritten extents (an active segment's
//! preallocated tail), and only that: data after a hole is still read, so damage there is found.

use super::*;

/// A log of 10 synced batches in a segment preallocated to 8 MiB (the default), closed.
fn small_log_in_a_big_segment(dir: &Path, config: &LogConfig) -> SegmentInfo {
    run(async {
        let log = PartitionLog::open(dir, config.clone()).await.expect("open");
        fill(&log, 10, 10, Durability::Synced).await;
        log.close().await.expect("close");
        log.segments().last().expect("segment").clone()
    })
}

fn config() -> LogConfig {
    LogConfig { preallocate_bytes: 8 << 20, segment_size_bytes_max: 64 << 20, ..small_config() }
}

/// Reopening a partition reads its frames, not the megabytes of preallocated zeros after them:
/// a reopen of 10,000 partitions read 512 KiB each at 256 KiB of preallocation (16 MiB each at
/// the default 8 MiB), all zeros, twice (the scan, then the check for bytes after the frames).
#[test]
fn recovery_reads_the_frames_not_the_preallocated_zeros() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config();
    let active = small_log_in_a_big_segment(dir.path(), &config);
    let on_disk = std::fs::metadata(&active.path).expect("stat").len();
    assert!(on_disk >= 8 << 20, "the segment is preallocated: {on_disk} bytes");
    run(async {
        let log = PartitionLog::open(dir.path(), config.clone()).await.expect("reopen");
        let recovery = log.recovery().clone();
        assert_eq!(log.end_offset(), 100);
        assert_eq!(recovery.truncated_bytes, 0);
        // The frames, with the re-reads of frames that straddle a chunk (8 KiB chunks here).
        let frames = recovery.scanned_bytes;
        assert!(
            recovery.read_bytes < 4 * frames + 64 * 1024,
            "recovery read {} bytes for {frames} bytes of frames in a file of {on_disk}",
            recovery.read_bytes
        );
        assert_eq!(read_all(&log, Seek::Beginning).await, (0..100).collect::<Vec<_>>());
        log.close().await.expect("close");
    });
}

/// Frees the blocks `[at, at + len)` of a file: they read as zeros and are reported as a hole.
fn punch_hole(path: &Path, at: u64, len: u64) {
    use std::os::fd::AsRawFd;
    let file = std::fs::OpenOptions::new().write(true).open(path).expect("open");
    // SAFETY: a plain syscall on a descriptor this function owns.
    let rc = unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            at as libc::off_t,
            len as libc::off_t,
        )
    };
    assert_eq!(rc, 0, "punching a hole: {}", std::io::Error::last_os_error());
}

/// A hole inside synced frames (a lost write, blocks freed under the file) followed by more
/// frames is corruption, as zeros written there are: recovery reads on past the hole to the end
/// of the last data range, not only to the first hole.
#[test]
fn a_hole_before_synced_frames_is_still_corruption() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config();
    let active = small_log_in_a_big_segment(dir.path(), &config);
    assert!(active.size_bytes > 3 * 4096, "frames past the hole: {}", active.size_bytes);
    punch_hole(&active.path, 4096, 4096);
    run(async {
        let result = PartitionLog::open(dir.path(), config.clone()).await;
        assert!(matches!(result, Err(Error::CorruptBeforeValid { .. })), "{:?}", result.err());
    });
}

/// Bytes written far into the preallocated tail, after a hole of unwritten blocks, are still
/// seen: garbage there is a torn tail and is cut, as before.
#[test]
fn bytes_far_into_the_preallocated_tail_are_still_seen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config();
    let active = small_log_in_a_big_segment(dir.path(), &config);
    {
        use std::os::unix::fs::FileExt;
        let file = std::fs::OpenOptions::new().write(true).open(&active.path).expect("open");
        file.write_all_at(&[0xEE; 100], 7 << 20).expect("write");
    }
    run(async {
        let log = PartitionLog::open(dir.path(), config.clone()).await.expect("reopen");
        let cut = log.recovery().tail_cut.clone().expect("the garbage is cut");
        assert_eq!(cut.position, active.size_bytes);
        assert_eq!(log.end_offset(), 100);
        log.close().await.expect("close");
    });
}
