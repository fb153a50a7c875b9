//! The production backend of the seam: glommio DMA files for segment data, `std::fs` for the
//! namespace (run on glommio's blocking pool by `Disk`'s async methods), and the io_poll priming
//! glommio needs before the first DMA open on a device.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::io::{self, Write};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use glommio::io::{DmaFile, OpenOptions};

use super::{DirEntry, Metadata, Namespace, BLOCK_SIZE};
use crate::Error;

/// Name of the one-block file used to prime glommio's io_poll probe.
pub const SENTINEL_FILE: &str = ".kappa-iopoll-sentinel";

thread_local! {
    static PRIMED_DEVICES: RefCell<BTreeSet<u64>> = const { RefCell::new(BTreeSet::new()) };
}

/// Runs blocking `std::fs` work on glommio's blocking thread pool, so the shard keeps running.
pub(crate) async fn run_blocking<R: Send + 'static>(job: impl FnOnce() -> R + Send + 'static) -> R {
    glommio::executor().spawn_blocking(job).await
}

/// glommio probes a device for io_poll support by reading the first DMA file opened on it, from
/// each executor thread. If that file is empty the probe wrongly succeeds, and every later read on
/// a disk without polling (virtio) fails with EOPNOTSUPP. So before the first DMA open on a device,
/// this thread opens and reads a non-empty sentinel (written with `std::fs` on the blocking pool).
pub async fn prime_iopoll(dir: &Path) -> Result<(), Error> {
    let owned = dir.to_path_buf();
    let device = run_blocking(move || std::fs::metadata(&owned).map(|m| m.dev()))
        .await
        .map_err(|e| Error::io("stat", dir, e))?;
    prime_device(dir, device).await
}

/// `prime_iopoll` for a directory whose device the caller knows (from a `stat` it made anyway).
pub(crate) async fn prime_device(dir: &Path, device: u64) -> Result<(), Error> {
    if PRIMED_DEVICES.with(|p| p.borrow().contains(&device)) {
        return Ok(());
    }
    let sentinel = dir.join(SENTINEL_FILE);
    let owned = sentinel.clone();
    run_blocking(move || {
        let needs_write =
            std::fs::metadata(&owned).map(|m| m.len() < BLOCK_SIZE as u64).unwrap_or(true);
        if needs_write {
            std::fs::write(&owned, [0xA5u8; BLOCK_SIZE])?;
        }
        Ok::<(), io::Error>(())
    })
    .await
    .map_err(|e| Error::io("write", &sentinel, e))?;
    let file = DmaFile::open(&sentinel).await.map_err(|e| Error::io("open", &sentinel, e))?;
    file.read_at_aligned(0, BLOCK_SIZE).await.map_err(|e| Error::io("read", &sentinel, e))?;
    file.close().await.map_err(|e| Error::io("close", &sentinel, e))?;
    PRIMED_DEVICES.with(|p| p.borrow_mut().insert(device));
    Ok(())
}

/// The end of the last data range of the file behind `fd` (at most `len`): every byte after it
/// reads as zero (a hole, or an unwritten extent that preallocation reserved). Runs on the blocking
/// pool (`SEEK_DATA` and `SEEK_HOLE` may read the extent tree) over a duplicate of the descriptor,
/// so the job never touches a descriptor number the shard may have closed and reused. A file
/// system without these reports the whole file as data, and the answer is `len`.
pub(crate) async fn data_end(fd: std::os::fd::RawFd, len: u64) -> io::Result<u64> {
    use nix::unistd::{close, dup, lseek, Whence};
    let fd = dup(fd)?;
    run_blocking(move || {
        let mut end = 0u64;
        let result = loop {
            if end >= len {
                break Ok(len);
            }
            let data = match lseek(fd, end as i64, Whence::SeekData) {
                Ok(data) => data as u64,
                // No data at or after `end`.
                Err(nix::errno::Errno::ENXIO) => break Ok(end),
                Err(e) => break Err(io::Error::from(e)),
            };
            match lseek(fd, data as i64, Whence::SeekHole) {
                Ok(hole) => end = hole as u64,
                Err(e) => break Err(io::Error::from(e)),
            }
        };
        let _ = close(fd);
        result.map(|end| end.min(len))
    })
    .await
}

/// Opens a DMA file for reading and writing, creating it if needed.
pub async fn open_rw(path: &Path) -> Result<DmaFile, Error> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .dma_open(path)
        .await
        .map_err(|e| Error::io("open", path, e))
}

/// Opens a DMA file read-only.
pub async fn open_read(path: &Path) -> Result<DmaFile, Error> {
    DmaFile::open(path).await.map_err(|e| Error::io("open", path, e))
}

/// The namespace primitives as plain blocking `std::fs` calls.
pub(crate) struct StdFs;

impl Namespace for StdFs {
    fn mkdir(&self, path: &Path) -> io::Result<()> {
        std::fs::create_dir(path)
    }

    fn metadata(&self, path: &Path) -> io::Result<Option<Metadata>> {
        match std::fs::metadata(path) {
            Ok(meta) => Ok(Some(Metadata { len: meta.len(), is_dir: meta.is_dir() })),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<DirEntry>> {
        let mut entries = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            entries.push(DirEntry { name: entry.file_name(), is_dir: entry.file_type()?.is_dir() });
        }
        Ok(entries)
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        std::fs::read(path)
    }

    fn write_new(&self, path: &Path, bytes: &[u8]) -> io::Result<()> {
        let mut file = std::fs::OpenOptions::new().write(true).create_new(true).open(path)?;
        file.write_all(bytes)
    }

    fn sync_file(&self, path: &Path) -> io::Result<()> {
        std::fs::File::open(path)?.sync_all()
    }

    fn truncate(&self, path: &Path, len: u64) -> io::Result<()> {
        std::fs::OpenOptions::new().write(true).open(path)?.set_len(len)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }

    fn remove_dir(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_dir(path)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        std::fs::File::open(dir)?.sync_all()
    }
}
