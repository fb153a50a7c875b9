//! The storage seam: every file and directory operation of the log, its indexes and (through the
//! public API) the engine's metadata goes through `Disk` and `File`, so one switch decides whether
//! bytes reach the real device or a deterministic simulated one.
//!
//! * `Disk::Dma` is production: segment data moves through glommio `DmaFile`s (O_DIRECT over
//!   io_uring); namespace work (create dir, rename, unlink, directory fsync, small whole-file
//!   reads and writes) has no io_uring form worth having and runs as `std::fs` calls on glommio's
//!   blocking thread pool, so a shard never blocks in a syscall.
//! * `Disk::Sim` is `sim::SimDisk`: an in-memory disk that keeps what is durable apart from what is
//!   merely written, loses or tears unsynced writes at a seeded power cut, and injects faults.
//!
//! Why an enum and not a trait object or a generic parameter: there are exactly two backends, the
//! production arm is a direct `DmaFile` call (one predictable branch per I/O, never per record),
//! and `PartitionLog` stays one concrete type that the engine can name.
//!
//! Every operation exists in an async form for shard threads and, for namespace work, a
//! `*_blocking` form for threads without an executor (the engine's control thread, offline
//! tools). Composite operations (`create_dir_all`, `write_file_atomic`) are written once over the
//! `Namespace` primitives, so the simulator runs exactly the sequence of syscalls production runs:
//! deleting an fsync from that sequence is visible to simulator tests.

mod dma;
pub mod sim;

use std::ffi::OsString;
use std::io;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};

use glommio::io::{DmaBuffer, DmaFile, ReadResult};
use rkyv::util::AlignedVec;

use crate::Error;

pub use dma::{open_read, open_rw, prime_iopoll, SENTINEL_FILE};
pub use sim::{FaultKind, FaultOptions, FaultRecord, ScheduledFault, SimDisk, SimFile, SimStats};

/// Every DMA position and length is a multiple of this (the largest logical block we expect).
pub const BLOCK_SIZE: usize = 4096;
/// The smallest unit a device writes atomically, and the granularity O_DIRECT demands of
/// positions, lengths and buffer addresses on the devices we run on.
pub const SECTOR_SIZE: usize = 512;
const _: () = assert!(BLOCK_SIZE.is_multiple_of(SECTOR_SIZE));

/// Extension of the temporary files `write_file_atomic` renames into place. Leftovers of a crash
/// carry it and may be deleted by whoever owns the directory.
pub const TEMP_EXTENSION: &str = "kappa-tmp";

/// Where bytes go: the real device (the default) or a simulated disk. Cheap to clone, `Send` and
/// `Sync`: the engine keeps one in its configuration and every shard uses a clone.
#[derive(Clone, Default)]
pub enum Disk {
    /// glommio DMA files and `std::fs` on the blocking pool.
    #[default]
    Dma,
    /// A deterministic simulated disk (tests).
    Sim(SimDisk),
}

impl std::fmt::Debug for Disk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Disk::Dma => f.write_str("Disk::Dma"),
            Disk::Sim(sim) => write!(f, "Disk::Sim(seed {})", sim.seed()),
        }
    }
}

impl PartialEq for Disk {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Disk::Dma, Disk::Dma) => true,
            (Disk::Sim(a), Disk::Sim(b)) => a.same_disk(b),
            _ => false,
        }
    }
}

impl Eq for Disk {}

/// What `metadata` knows about a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Metadata {
    pub len: u64,
    pub is_dir: bool,
}

/// One entry of `list_dir`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct DirEntry {
    pub name: OsString,
    pub is_dir: bool,
}

/// The blocking namespace primitives both backends provide. Composite operations are written once
/// over these (see the module doc); errors are plain `io::Error`s, named by the caller.
pub(crate) trait Namespace {
    /// Creates one directory; `AlreadyExists` if the name is taken.
    fn mkdir(&self, path: &Path) -> io::Result<()>;
    /// `None` when nothing is at `path`.
    fn metadata(&self, path: &Path) -> io::Result<Option<Metadata>>;
    fn list(&self, dir: &Path) -> io::Result<Vec<DirEntry>>;
    fn read(&self, path: &Path) -> io::Result<Vec<u8>>;
    /// Creates a new file (`AlreadyExists` if the name is taken) holding `bytes`. Not synced.
    fn write_new(&self, path: &Path, bytes: &[u8]) -> io::Result<()>;
    /// fsyncs a file's data and size (not its directory entry).
    fn sync_file(&self, path: &Path) -> io::Result<()>;
    /// Cuts (or zero-extends) a file to `len`. Not synced.
    fn truncate(&self, path: &Path, len: u64) -> io::Result<()>;
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    fn remove(&self, path: &Path) -> io::Result<()>;
    /// Removes an empty directory.
    fn remove_dir(&self, path: &Path) -> io::Result<()>;
    /// fsyncs a directory: its entries (creates, renames, unlinks) become durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
}

fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    }
}

/// Creates `dir` and its missing parents; every directory entry it creates is made durable by an
/// fsync of the directory holding it, so a created path survives a power cut.
pub(crate) fn create_dir_all_in<N: Namespace>(ns: &N, dir: &Path) -> Result<(), Error> {
    let mut missing = Vec::new();
    let mut current = dir;
    loop {
        match ns.metadata(current).map_err(|e| Error::io("stat", current, e))? {
            Some(meta) if meta.is_dir => break,
            Some(_) => {
                return Err(Error::io(
                    "create dir",
                    current,
                    io::Error::new(io::ErrorKind::NotADirectory, "a file is in the way"),
                ))
            }
            None => missing.push(current),
        }
        match current.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => current = parent,
            _ => break,
        }
    }
    for created in missing.into_iter().rev() {
        match ns.mkdir(created) {
            Ok(()) => {}
            // Another creator won the race; its entry may not be durable yet, so sync anyway.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(Error::io("create dir", created, e)),
        }
        let parent = parent_of(created);
        ns.sync_dir(parent).map_err(|e| Error::io("fsync dir", parent, e))?;
    }
    Ok(())
}

/// Removes `dir` and everything under it (files, then the directories holding them, deepest
/// first). Nothing at `dir` is not an error. Not durable: the caller fsyncs `dir`'s parent.
pub(crate) fn remove_dir_all_in<N: Namespace>(ns: &N, dir: &Path) -> Result<(), Error> {
    let entries = match ns.list(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io("list", dir, e)),
    };
    for entry in entries {
        let path = dir.join(&entry.name);
        if entry.is_dir {
            remove_dir_all_in(ns, &path)?;
        } else {
            match ns.remove(&path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => {
                    return Err(Error::io("delete", &path, e))
                }
                _ => {}
            }
        }
    }
    match ns.remove_dir(dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(Error::io("delete dir", dir, e)),
        _ => Ok(()),
    }
}

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

#[cfg(test)]
thread_local! {
    /// Every range `File::pre_allocate_from` reserved on this thread, for tests.
    pub(crate) static PREALLOCATED_RANGES: std::cell::RefCell<Vec<(u64, u64)>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// `.<name>.<pid>.<counter>.kappa-tmp` beside `path`: unique per call in this process, and across
/// processes by the pid, so concurrent writers of one file never share a temp file.
pub(crate) fn temp_path_for(path: &Path) -> PathBuf {
    let name = path.file_name().map_or_else(|| OsString::from("file"), |n| n.to_os_string());
    let counter = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut temp = OsString::from(".");
    temp.push(name);
    temp.push(format!(".{}.{counter}.{TEMP_EXTENSION}", std::process::id()));
    parent_of(path).join(temp)
}

/// Writes `bytes` to `path` atomically and durably: a uniquely named temp file, its fsync, the
/// rename over `path`, and an fsync of the directory. A crash leaves the old or the new contents
/// (and maybe a temp file), never a mix.
pub(crate) fn write_file_atomic_in<N: Namespace>(
    ns: &N,
    path: &Path,
    bytes: &[u8],
) -> Result<(), Error> {
    let temp = temp_path_for(path);
    ns.write_new(&temp, bytes).map_err(|e| Error::io("write", &temp, e))?;
    if let Err(e) = ns.sync_file(&temp) {
        let _ = ns.remove(&temp);
        return Err(Error::io("fsync", &temp, e));
    }
    if let Err(e) = ns.rename(&temp, path) {
        let _ = ns.remove(&temp);
        return Err(Error::io("rename", path, e));
    }
    let dir = parent_of(path);
    ns.sync_dir(dir).map_err(|e| Error::io("fsync dir", dir, e))
}

/// Runs a blocking namespace operation: on the Dma backend on glommio's blocking pool (the shard
/// keeps running), on the simulator inline after its injected latency, if any.
macro_rules! namespace_op {
    ($disk:expr, |$ns:ident| $body:expr) => {
        match $disk {
            Disk::Dma => {
                dma::run_blocking(move || {
                    let $ns = &dma::StdFs;
                    $body
                })
                .await
            }
            Disk::Sim(sim) => {
                sim.latency().await;
                let $ns = sim;
                $body
            }
        }
    };
}

impl Disk {
    /// A simulated disk (tests).
    pub fn sim(sim: SimDisk) -> Disk {
        Disk::Sim(sim)
    }

    /// The simulated disk, if this is one.
    pub fn as_sim(&self) -> Option<&SimDisk> {
        match self {
            Disk::Dma => None,
            Disk::Sim(sim) => Some(sim),
        }
    }

    /// Prepares this thread to open DMA files under `dir` (see `prime_iopoll`); nothing to do on
    /// the simulator.
    pub async fn prime(&self, dir: &Path) -> Result<(), Error> {
        match self {
            Disk::Dma => prime_iopoll(dir).await,
            Disk::Sim(_) => Ok(()),
        }
    }

    /// Opens a file for reading and writing, creating it if needed. A created file's directory
    /// entry is not durable until the caller syncs the directory.
    pub async fn open_rw(&self, path: &Path) -> Result<File, Error> {
        match self {
            Disk::Dma => Ok(File::Dma(Rc::new(open_rw(path).await?))),
            Disk::Sim(sim) => {
                sim.latency().await;
                sim.open(path, true).map(File::Sim).map_err(|e| Error::io("open", path, e))
            }
        }
    }

    /// Opens an existing file for reading.
    pub async fn open_read(&self, path: &Path) -> Result<File, Error> {
        match self {
            Disk::Dma => Ok(File::Dma(Rc::new(open_read(path).await?))),
            Disk::Sim(sim) => {
                sim.latency().await;
                sim.open(path, false).map(File::Sim).map_err(|e| Error::io("open", path, e))
            }
        }
    }

    /// `create_dir_all` with an fsync of every directory that gained an entry.
    pub async fn create_dir_all(&self, dir: &Path) -> Result<(), Error> {
        let dir = dir.to_path_buf();
        namespace_op!(self, |ns| create_dir_all_in(ns, &dir))
    }

    /// What opening a partition does first, in one trip to the blocking pool instead of several
    /// (a reopen of 10,000 partitions made 30,000): `create_dir_all`, `prime` and `list_dir` of
    /// `dir`, and the small file `small_file` in it read whole, or created empty (not durable:
    /// the caller syncs `dir`) when it is missing. The simulated disk runs the same steps.
    pub async fn prepare_dir(&self, dir: &Path, small_file: &str) -> Result<PreparedDir, Error> {
        match self {
            Disk::Dma => {
                use std::os::unix::fs::MetadataExt;
                let owned = dir.to_path_buf();
                let small_file = small_file.to_string();
                let (device, prepared) = dma::run_blocking(move || {
                    create_dir_all_in(&dma::StdFs, &owned)?;
                    let meta =
                        std::fs::metadata(&owned).map_err(|e| Error::io("stat", &owned, e))?;
                    Ok::<_, Error>((meta.dev(), prepare_in(&dma::StdFs, &owned, &small_file)?))
                })
                .await?;
                dma::prime_device(dir, device).await?;
                Ok(prepared)
            }
            Disk::Sim(sim) => {
                self.create_dir_all(dir).await?;
                sim.latency().await;
                prepare_in(sim, dir, small_file)
            }
        }
    }

    /// The entries of a directory, sorted by name.
    pub async fn list_dir(&self, dir: &Path) -> Result<Vec<DirEntry>, Error> {
        let dir = dir.to_path_buf();
        namespace_op!(self, |ns| list_in(ns, &dir))
    }

    /// A whole (small) file.
    pub async fn read_file(&self, path: &Path) -> Result<Vec<u8>, Error> {
        let path = path.to_path_buf();
        namespace_op!(self, |ns| ns.read(&path).map_err(|e| Error::io("read", &path, e)))
    }

    /// Replaces `path` with `bytes` atomically and durably (temp file, fsync, rename, fsync dir).
    pub async fn write_file_atomic(&self, path: &Path, bytes: &[u8]) -> Result<(), Error> {
        let path = path.to_path_buf();
        match self {
            Disk::Dma => {
                let bytes = bytes.to_vec();
                dma::run_blocking(move || write_file_atomic_in(&dma::StdFs, &path, &bytes)).await
            }
            Disk::Sim(sim) => {
                sim.latency().await;
                write_file_atomic_in(sim, &path, bytes)
            }
        }
    }

    /// `write_file_atomic` with owned bytes: no copy for the blocking pool (view checkpoints).
    pub async fn write_file_atomic_owned(&self, path: &Path, bytes: Vec<u8>) -> Result<(), Error> {
        let path = path.to_path_buf();
        namespace_op!(self, |ns| write_file_atomic_in(ns, &path, &bytes))
    }

    pub async fn rename(&self, from: &Path, to: &Path) -> Result<(), Error> {
        let (from, to) = (from.to_path_buf(), to.to_path_buf());
        namespace_op!(self, |ns| ns.rename(&from, &to).map_err(|e| Error::io("rename", &from, e)))
    }

    /// Unlinks a file. Not durable until the directory is synced.
    pub async fn remove_file(&self, path: &Path) -> Result<(), Error> {
        let path = path.to_path_buf();
        namespace_op!(self, |ns| ns.remove(&path).map_err(|e| Error::io("delete", &path, e)))
    }

    /// Removes a directory tree (see `remove_dir_all_in`); not durable until the parent is synced.
    pub async fn remove_dir_all(&self, dir: &Path) -> Result<(), Error> {
        let dir = dir.to_path_buf();
        namespace_op!(self, |ns| remove_dir_all_in(ns, &dir))
    }

    /// fsyncs a directory so that creates, renames and deletes in it are durable.
    pub async fn sync_dir(&self, dir: &Path) -> Result<(), Error> {
        let dir = dir.to_path_buf();
        namespace_op!(self, |ns| ns.sync_dir(&dir).map_err(|e| Error::io("fsync dir", &dir, e)))
    }

    /// What is at `path`, or `None`.
    pub async fn metadata(&self, path: &Path) -> Result<Option<Metadata>, Error> {
        let path = path.to_path_buf();
        namespace_op!(self, |ns| ns.metadata(&path).map_err(|e| Error::io("stat", &path, e)))
    }

    /// `create_dir_all` for threads without an executor.
    pub fn create_dir_all_blocking(&self, dir: &Path) -> Result<(), Error> {
        match self {
            Disk::Dma => create_dir_all_in(&dma::StdFs, dir),
            Disk::Sim(sim) => create_dir_all_in(sim, dir),
        }
    }

    pub fn list_dir_blocking(&self, dir: &Path) -> Result<Vec<DirEntry>, Error> {
        match self {
            Disk::Dma => list_in(&dma::StdFs, dir),
            Disk::Sim(sim) => list_in(sim, dir),
        }
    }

    pub fn read_file_blocking(&self, path: &Path) -> Result<Vec<u8>, Error> {
        let result = match self {
            Disk::Dma => dma::StdFs.read(path),
            Disk::Sim(sim) => sim.read(path),
        };
        result.map_err(|e| Error::io("read", path, e))
    }

    pub fn write_file_atomic_blocking(&self, path: &Path, bytes: &[u8]) -> Result<(), Error> {
        match self {
            Disk::Dma => write_file_atomic_in(&dma::StdFs, path, bytes),
            Disk::Sim(sim) => write_file_atomic_in(sim, path, bytes),
        }
    }

    pub fn rename_blocking(&self, from: &Path, to: &Path) -> Result<(), Error> {
        let result = match self {
            Disk::Dma => dma::StdFs.rename(from, to),
            Disk::Sim(sim) => sim.rename(from, to),
        };
        result.map_err(|e| Error::io("rename", from, e))
    }

    pub fn remove_file_blocking(&self, path: &Path) -> Result<(), Error> {
        let result = match self {
            Disk::Dma => dma::StdFs.remove(path),
            Disk::Sim(sim) => sim.remove(path),
        };
        result.map_err(|e| Error::io("delete", path, e))
    }

    /// Cuts a file to `len` and fsyncs it, so the new size is durable (offline repair).
    pub fn truncate_file_blocking(&self, path: &Path, len: u64) -> Result<(), Error> {
        fn cut<N: Namespace>(ns: &N, path: &Path, len: u64) -> Result<(), Error> {
            ns.truncate(path, len).map_err(|e| Error::io("truncate", path, e))?;
            ns.sync_file(path).map_err(|e| Error::io("fsync", path, e))
        }
        match self {
            Disk::Dma => cut(&dma::StdFs, path, len),
            Disk::Sim(sim) => cut(sim, path, len),
        }
    }

    pub fn remove_dir_all_blocking(&self, dir: &Path) -> Result<(), Error> {
        match self {
            Disk::Dma => remove_dir_all_in(&dma::StdFs, dir),
            Disk::Sim(sim) => remove_dir_all_in(sim, dir),
        }
    }

    pub fn sync_dir_blocking(&self, dir: &Path) -> Result<(), Error> {
        let result = match self {
            Disk::Dma => dma::StdFs.sync_dir(dir),
            Disk::Sim(sim) => sim.sync_dir(dir),
        };
        result.map_err(|e| Error::io("fsync dir", dir, e))
    }

    pub fn metadata_blocking(&self, path: &Path) -> Result<Option<Metadata>, Error> {
        let result = match self {
            Disk::Dma => dma::StdFs.metadata(path),
            Disk::Sim(sim) => sim.metadata(path),
        };
        result.map_err(|e| Error::io("stat", path, e))
    }
}

/// What `Disk::prepare_dir` found in a directory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PreparedDir {
    /// The entries, sorted by name (before the small file was created, if it was).
    pub entries: Vec<DirEntry>,
    /// The small file's bytes; empty when it was just created.
    pub small_file: Vec<u8>,
    /// The small file was missing and was created (its directory entry is not durable yet).
    pub created: bool,
}

/// `Disk::prepare_dir` after `create_dir_all`: list `dir`, read `small_file` or create it empty.
fn prepare_in<N: Namespace>(ns: &N, dir: &Path, small_file: &str) -> Result<PreparedDir, Error> {
    let entries = list_in(ns, dir)?;
    let path = dir.join(small_file);
    if entries.iter().any(|e| !e.is_dir && e.name == small_file) {
        let bytes = ns.read(&path).map_err(|e| Error::io("read", &path, e))?;
        return Ok(PreparedDir { entries, small_file: bytes, created: false });
    }
    ns.write_new(&path, &[]).map_err(|e| Error::io("create", &path, e))?;
    Ok(PreparedDir { entries, small_file: Vec::new(), created: true })
}

fn list_in<N: Namespace>(ns: &N, dir: &Path) -> Result<Vec<DirEntry>, Error> {
    let mut entries = ns.list(dir).map_err(|e| Error::io("list", dir, e))?;
    entries.sort();
    Ok(entries)
}

/// Writes `bytes` to `path` atomically and durably on the real disk, from any thread (blocking).
/// Shard code uses `Disk::write_file_atomic`, which does not block the executor.
pub fn write_file_atomic(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    Disk::Dma.write_file_atomic_blocking(path, bytes)
}

/// An open file of either backend. Cheap to clone (the handle is shared); `!Send`, like the
/// executor-bound glommio file it wraps. Methods return `io::Error`; callers name the file.
#[derive(Clone)]
pub enum File {
    Dma(Rc<DmaFile>),
    Sim(SimFile),
}

impl File {
    /// A buffer suitable for DMA writes to this file.
    pub fn alloc_dma_buffer(&self, size: usize) -> DmaBuffer {
        match self {
            File::Dma(file) => file.alloc_dma_buffer(size),
            File::Sim(_) => glommio::allocate_dma_buffer(size),
        }
    }

    /// Writes a whole DMA buffer at `pos` (both sector aligned). May write less (`Ok(n)`).
    pub async fn write_rc_at(&self, buf: Rc<DmaBuffer>, pos: u64) -> io::Result<usize> {
        match self {
            File::Dma(file) => file.write_rc_at(buf, pos).await.map_err(io::Error::from),
            File::Sim(file) => file.write_at(buf.as_bytes(), pos).await,
        }
    }

    pub async fn write_at(&self, buf: DmaBuffer, pos: u64) -> io::Result<usize> {
        match self {
            File::Dma(file) => file.write_at(buf, pos).await.map_err(io::Error::from),
            File::Sim(file) => file.write_at(buf.as_bytes(), pos).await,
        }
    }

    /// Reads `[pos, pos + len)` (both sector aligned); fewer bytes at the end of the file.
    pub async fn read_at(&self, pos: u64, len: usize) -> io::Result<ReadBytes> {
        match self {
            File::Dma(file) => file
                .read_at_aligned(pos, len)
                .await
                .map(|r| ReadBytes(Repr::Dma(r)))
                .map_err(io::Error::from),
            File::Sim(file) => file.read_at(pos, len).await,
        }
    }

    /// Makes the file's written data and size durable (not its directory entry).
    pub async fn fdatasync(&self) -> io::Result<()> {
        match self {
            File::Dma(file) => file.fdatasync().await.map_err(io::Error::from),
            File::Sim(file) => file.fdatasync().await,
        }
    }

    pub async fn file_size(&self) -> io::Result<u64> {
        match self {
            File::Dma(file) => file.file_size().await.map_err(io::Error::from),
            File::Sim(file) => file.file_size(),
        }
    }

    pub async fn truncate(&self, size: u64) -> io::Result<()> {
        match self {
            File::Dma(file) => file.truncate(size).await.map_err(io::Error::from),
            File::Sim(file) => file.truncate(size).await,
        }
    }

    /// fallocate of [from, end): reserves those blocks (blocks before `from` are taken as
    /// reserved already); with `keep_size` false the file grows to `end` and the new range reads
    /// as zeros. Only the new range, never from 0: on tmpfs an fallocate walks every page of its
    /// range (allocated or not, under the inode lock a write needs too), so extending from 0 each
    /// time cost in proportion to the file.
    pub async fn pre_allocate_from(&self, from: u64, end: u64, keep_size: bool) -> io::Result<()> {
        if end <= from {
            return Ok(());
        }
        #[cfg(test)]
        PREALLOCATED_RANGES.with(|r| r.borrow_mut().push((from, end)));
        match self {
            File::Dma(file) => {
                file.pre_allocate_range(from, end - from, keep_size).await.map_err(io::Error::from)
            }
            File::Sim(file) => file.pre_allocate(end, keep_size).await,
        }
    }

    /// Where the file's data ends, given its length: every byte from there to `len` reads as
    /// zero (a hole or an unwritten, preallocated extent; see `ChunkSource::data_end`). The
    /// simulated disk keeps no extents and answers `len`.
    pub async fn data_end(&self, len: u64) -> io::Result<u64> {
        match self {
            File::Dma(file) => {
                use std::os::fd::AsRawFd;
                dma::data_end(file.as_raw_fd(), len).await
            }
            File::Sim(_) => Ok(len),
        }
    }

    /// Closes the file if this is the last handle to it; otherwise just drops this one.
    pub async fn close(self) -> io::Result<()> {
        match self {
            File::Dma(file) => match Rc::try_unwrap(file) {
                Ok(file) => file.close().await.map_err(io::Error::from),
                Err(_) => Ok(()),
            },
            File::Sim(_) => Ok(()),
        }
    }
}

/// Bytes read from a file. The first byte sits at a block aligned file position and at a 16-byte
/// aligned address (a DMA buffer, or an aligned heap copy on the simulator), so frames at 16-byte
/// aligned file positions are 16-byte aligned in memory, as rkyv needs.
pub struct ReadBytes(Repr);

enum Repr {
    Dma(ReadResult),
    Heap { bytes: Rc<AlignedVec<BLOCK_SIZE>>, start: usize, end: usize },
}

impl ReadBytes {
    pub(crate) fn heap(bytes: AlignedVec<BLOCK_SIZE>) -> ReadBytes {
        let end = bytes.len();
        ReadBytes(Repr::Heap { bytes: Rc::new(bytes), start: 0, end })
    }

    /// `len` bytes from `start` (clamped to what is there), sharing the buffer.
    pub fn slice(&self, start: usize, len: usize) -> ReadBytes {
        let start = start.min(self.len());
        let len = len.min(self.len() - start);
        match &self.0 {
            Repr::Dma(read) => ReadBytes(Repr::Dma(
                ReadResult::slice(read, start, len).expect("clamped to the read's length"),
            )),
            Repr::Heap { bytes, start: from, .. } => ReadBytes(Repr::Heap {
                bytes: bytes.clone(),
                start: from + start,
                end: from + start + len,
            }),
        }
    }
}

impl Deref for ReadBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match &self.0 {
            Repr::Dma(read) => read,
            Repr::Heap { bytes, start, end } => &bytes[*start..*end],
        }
    }
}

#[cfg(test)]
mod tests;
