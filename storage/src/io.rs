//! The file I/O seam: glommio DMA helpers plus the small `std::fs` metadata writes.
//!
//! Segment data always moves through glommio `DmaFile`s (O_DIRECT over io_uring). Small metadata
//! files (a sealed segment's index) are written with `std::fs` through `write_file_atomic`: they are
//! written once per segment roll, are a few KiB, and need the temp-file + fsync + rename + fsync-dir
//! dance that buffered I/O makes simple.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use glommio::io::{DmaFile, OpenOptions};

use crate::Error;

/// Every DMA position and length is a multiple of this (the largest logical block we expect).
pub const BLOCK_SIZE: usize = 4096;

/// Name of the one-block file used to prime glommio's io_poll probe.
pub const SENTINEL_FILE: &str = ".kappa-iopoll-sentinel";

thread_local! {
    static PRIMED_DEVICES: RefCell<BTreeSet<u64>> = const { RefCell::new(BTreeSet::new()) };
}

/// glommio probes a device for io_poll support by reading the first DMA file opened on it, from
/// each executor thread. If that file is empty the probe wrongly succeeds, and every later read on
/// a disk without polling (virtio) fails with EOPNOTSUPP. So before the first DMA open on a device,
/// this thread opens and reads a non-empty sentinel written with `std::fs`.
pub async fn prime_iopoll(dir: &Path) -> Result<(), Error> {
    let device = std::fs::metadata(dir).map_err(|e| Error::io("stat", dir, e))?.dev();
    if PRIMED_DEVICES.with(|p| p.borrow().contains(&device)) {
        return Ok(());
    }
    let sentinel = dir.join(SENTINEL_FILE);
    let needs_write =
        std::fs::metadata(&sentinel).map(|m| m.len() < BLOCK_SIZE as u64).unwrap_or(true);
    if needs_write {
        std::fs::write(&sentinel, [0xA5u8; BLOCK_SIZE])
            .map_err(|e| Error::io("write", &sentinel, e))?;
    }
    let file = DmaFile::open(&sentinel).await.map_err(|e| Error::io("open", &sentinel, e))?;
    file.read_at_aligned(0, BLOCK_SIZE).await.map_err(|e| Error::io("read", &sentinel, e))?;
    file.close().await.map_err(|e| Error::io("close", &sentinel, e))?;
    PRIMED_DEVICES.with(|p| p.borrow_mut().insert(device));
    Ok(())
}

/// Opens a segment for reading and writing, creating it if needed.
pub async fn open_rw(path: &Path) -> Result<DmaFile, Error> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .dma_open(path)
        .await
        .map_err(|e| Error::io("open", path, e))
}

/// Opens a segment read-only.
pub async fn open_read(path: &Path) -> Result<DmaFile, Error> {
    DmaFile::open(path).await.map_err(|e| Error::io("open", path, e))
}

/// fsyncs a directory so that creates, renames and deletes in it are durable.
pub fn sync_dir(dir: &Path) -> Result<(), Error> {
    let handle = std::fs::File::open(dir).map_err(|e| Error::io("open dir", dir, e))?;
    handle.sync_all().map_err(|e| Error::io("fsync dir", dir, e))
}

/// Writes `bytes` to `path` atomically: temp file, fsync, rename, fsync the directory.
pub fn write_file_atomic(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    let temp = path.with_extension("kappa-tmp");
    let mut file = std::fs::File::create(&temp).map_err(|e| Error::io("create", &temp, e))?;
    file.write_all(bytes).map_err(|e| Error::io("write", &temp, e))?;
    file.sync_all().map_err(|e| Error::io("fsync", &temp, e))?;
    drop(file);
    std::fs::rename(&temp, path).map_err(|e| Error::io("rename", path, e))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    sync_dir(dir)
}
