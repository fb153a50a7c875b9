//! `SimDisk`: a deterministic simulated disk for tests, with power cuts and injected faults.
//!
//! Why: a SIGKILL test cannot see a missing fsync (the page cache and completed O_DIRECT writes
//! survive it), and tmpfs turns O_DIRECT off. This disk keeps, per inode, the **live** bytes (what
//! reads see) apart from the **durable** bytes (what survives a power cut), and per directory the
//! live entries apart from the durable ones, and models POSIX strictly:
//!
//! * `fdatasync` of a file makes that inode's data and size durable, not its directory entry;
//! * an fsync of a directory makes its entries (creates, renames, unlinks) durable;
//! * a file created and synced in a directory that was never synced disappears at a power cut, and
//!   a rename not followed by a directory fsync may revert.
//!
//! `power_cut(seed)` returns a new disk holding the crash image and kills the old one (every later
//! operation on it or its files fails with EIO, so tasks of the "crashed process" cannot touch the
//! new image). The image takes each directory's durable entries plus a seeded subset of the
//! changes since its last fsync, applied in order, and each file's durable bytes plus, per 512-byte
//! sector written since the last sync, a seeded choice among the sector's versions: kept, dropped,
//! torn at a sector boundary, in any order. The size is any of the sizes the file had since the
//! last sync; bytes never written read as zeros.
//!
//! Faults (`FaultOptions`) are drawn from one seeded generator in operation order: EIO on write,
//! read, fdatasync and directory fsync, ENOSPC past a capacity, short writes, and latency (glommio
//! timer sleeps), by probability or on a schedule (`ScheduledFault`, `fail_next`). Every injected
//! fault is counted and recorded (`faults`). Without latency, the same seed and workload give the
//! same faults and the same crash image.
//!
//! DMA reads and writes assert the O_DIRECT rules a real device enforces (sector aligned positions,
//! lengths and buffers), so a test on the simulator fails where the device would refuse the I/O.
//!
//! The state sits behind one `Arc<Mutex<..>>`: any shard thread, or a plain thread using the
//! blocking forms, can use the same disk.
//!
//! Modelled after TigerBeetle's `src/testing/storage.zig` (faults) and redb's crash backend
//! (live versus durable).

mod crash;
mod state;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rkyv::util::AlignedVec;

use super::{DirEntry, Metadata, Namespace, ReadBytes, BLOCK_SIZE, SECTOR_SIZE};
use state::{Rng, SimState, Status};

/// Faults the simulator injects. Probabilities are per operation of the kind they name.
#[derive(Debug, Clone, Default)]
pub struct FaultOptions {
    /// A DMA or buffered write fails with EIO and changes nothing.
    pub write_eio_probability: f64,
    /// A read fails with EIO.
    pub read_eio_probability: f64,
    /// A file fdatasync/fsync fails with EIO; nothing becomes durable.
    pub fsync_eio_probability: f64,
    /// A directory fsync fails with EIO; no entry becomes durable.
    pub dir_fsync_eio_probability: f64,
    /// An unlink or rmdir fails with EIO and changes nothing.
    pub remove_eio_probability: f64,
    /// A write stores only a prefix (whole sectors) and reports the shorter count.
    pub short_write_probability: f64,
    /// An async operation sleeps up to `latency_max` first (real time: replays of a seed may
    /// interleave differently).
    pub latency_probability: f64,
    pub latency_max: Duration,
    /// Every file fdatasync takes at least this long (a device slow to flush its cache), in real
    /// time; it covers only the writes that completed before it started, and an injected EIO is
    /// reported at its end. A namespace file fsync (metadata written with `write_file_atomic`)
    /// sleeps its thread as long.
    pub fsync_latency: Duration,
    /// Every O_DIRECT write takes at least this long before it lands, in real time.
    pub write_latency: Duration,
    /// An async operation first yields to the other tasks of its executor one to four times:
    /// completions interleave differently, and a seed still replays exactly.
    pub yield_probability: f64,
    /// Bytes the disk holds: writes and preallocations past it fail with ENOSPC (a write that
    /// partly fits is first shortened, as a real device does).
    pub capacity_bytes: Option<u64>,
    /// Faults at fixed operation counts, whatever the probabilities.
    pub schedule: Vec<ScheduledFault>,
    /// When set, EIO and short-write faults (drawn or scheduled) strike only operations on paths
    /// under this one (say, one view's metadata directory, while the log's writes go through);
    /// the others run untouched. Latency, ENOSPC and freezes are not limited by it.
    pub only_under: Option<PathBuf>,
    /// The disk stops after this many operations (counted from its creation): every later one
    /// fails with EIO and changes nothing, as if the power went out right there. `power_cut` then
    /// gives the crash image.
    pub freeze_after_ops: Option<u64>,
}

/// The kinds of fault the simulator injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FaultKind {
    WriteEio,
    ReadEio,
    FsyncEio,
    DirFsyncEio,
    /// An unlink or rmdir (counted among all operations for a schedule).
    RemoveEio,
    ShortWrite,
    NoSpace,
    Latency,
}

/// Inject `kind` at the `nth` (0-based) operation of its class since the disk was created: writes
/// for `WriteEio`/`ShortWrite`/`NoSpace`, reads for `ReadEio`, file syncs for `FsyncEio`, directory
/// syncs for `DirFsyncEio`, any operation for `Latency` (which then sleeps `latency_max`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScheduledFault {
    pub kind: FaultKind,
    pub nth: u64,
}

/// One injected fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FaultRecord {
    /// The operation count at which it happened.
    pub op: u64,
    pub kind: FaultKind,
    pub path: PathBuf,
}

/// Operation counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SimStats {
    /// Every operation, namespace and file.
    pub ops: u64,
    pub writes: u64,
    pub reads: u64,
    /// File fdatasync/fsync calls.
    pub fsyncs: u64,
    /// Directory fsync calls.
    pub dir_fsyncs: u64,
    pub bytes_written: u64,
    /// O_DIRECT writes that grew their file (io_uring punts those to a kernel worker thread).
    pub extending_writes: u64,
}

/// A simulated disk. Clones share the disk. See the module doc.
#[derive(Clone)]
pub struct SimDisk {
    state: Arc<Mutex<SimState>>,
}

/// An open file of a `SimDisk`.
#[derive(Clone)]
pub struct SimFile {
    disk: SimDisk,
    ino: u64,
    path: PathBuf,
}

fn eio() -> io::Error {
    io::Error::from_raw_os_error(5)
}

/// The O_DIRECT rules: a real device refuses anything else with EINVAL.
#[track_caller]
fn assert_direct(what: &str, pos: u64, len: usize, address: Option<*const u8>, path: &Path) {
    let sector = SECTOR_SIZE as u64;
    assert!(
        pos.is_multiple_of(sector) && (len as u64).is_multiple_of(sector),
        "O_DIRECT {what} of {len} bytes at {pos} in {} is not {SECTOR_SIZE}-byte aligned",
        path.display()
    );
    if let Some(address) = address {
        assert!(
            (address as usize).is_multiple_of(SECTOR_SIZE),
            "O_DIRECT {what} buffer at {address:?} is not {SECTOR_SIZE}-byte aligned"
        );
    }
}

impl SimDisk {
    /// An empty disk (only `/` exists) without faults.
    pub fn new(seed: u64) -> SimDisk {
        SimDisk::with_faults(seed, FaultOptions::default())
    }

    pub fn with_faults(seed: u64, faults: FaultOptions) -> SimDisk {
        SimDisk { state: Arc::new(Mutex::new(SimState::new(seed, faults))) }
    }

    fn lock(&self) -> MutexGuard<'_, SimState> {
        // A panicking test thread must not take the disk down for the others.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(crate) fn same_disk(&self, other: &SimDisk) -> bool {
        Arc::ptr_eq(&self.state, &other.state)
    }

    /// The seed this disk was created with.
    pub fn seed(&self) -> u64 {
        self.lock().seed
    }

    /// Replaces the fault configuration (counters and the schedule's counts carry on).
    pub fn set_faults(&self, faults: FaultOptions) {
        self.lock().faults = faults;
    }

    /// Makes the next operation of `kind`'s class fail (see `ScheduledFault`).
    pub fn fail_next(&self, kind: FaultKind) {
        let mut st = self.lock();
        let nth = st.class_count(kind);
        st.faults.schedule.push(ScheduledFault { kind, nth });
    }

    /// Every fault injected so far, in order.
    pub fn faults(&self) -> Vec<FaultRecord> {
        self.lock().records.clone()
    }

    pub fn stats(&self) -> SimStats {
        self.lock().stats
    }

    /// fsyncs of the file or directory at `path` (0 if there is none).
    pub fn fsync_count(&self, path: &Path) -> u64 {
        self.lock().fsync_count(path)
    }

    /// False once the disk froze or was cut.
    pub fn is_alive(&self) -> bool {
        self.lock().status == Status::Alive
    }

    /// Stops the disk now: every later operation fails with EIO (see `freeze_after_ops`).
    pub fn freeze(&self) {
        let mut st = self.lock();
        if st.status == Status::Alive {
            st.status = Status::Frozen;
        }
    }

    /// Cuts the power: returns a new disk holding a crash image chosen by `seed` and kills this
    /// one (and every handle and file of it). The new disk has no faults configured.
    pub fn power_cut(&self, seed: u64) -> SimDisk {
        let mut st = self.lock();
        assert!(st.status != Status::Cut, "power_cut on a disk that was already cut");
        st.status = Status::Cut;
        let image = crash::image(&st, &mut Rng::new(seed));
        SimDisk { state: Arc::new(Mutex::new(image)) }
    }

    /// The live bytes of a file (what a read sees), without counting an operation.
    pub fn file_bytes(&self, path: &Path) -> Option<Vec<u8>> {
        self.lock().file_bytes(path)
    }

    /// Bit rot: flips `mask` into the byte at `pos` of a file, live and durable alike.
    pub fn corrupt(&self, path: &Path, pos: u64, mask: u8) -> io::Result<()> {
        self.lock().corrupt(path, pos, mask)
    }

    /// Every live file with its size, sorted by path (for test diagnostics).
    pub fn files(&self) -> Vec<(PathBuf, u64)> {
        self.lock().files()
    }

    /// Sleeps or yields if a latency fault fires (async operations only).
    pub(crate) async fn latency(&self) {
        let (delay, yields) = self.lock().latency();
        if let Some(delay) = delay {
            glommio::timer::sleep(delay).await;
        }
        for _ in 0..yields {
            futures_lite::future::yield_now().await;
        }
    }

    pub(crate) fn open(&self, path: &Path, create: bool) -> io::Result<SimFile> {
        let ino = self.lock().open(path, create)?;
        Ok(SimFile { disk: self.clone(), ino, path: path.to_path_buf() })
    }
}

impl Namespace for SimDisk {
    fn mkdir(&self, path: &Path) -> io::Result<()> {
        self.lock().mkdir(path)
    }

    fn metadata(&self, path: &Path) -> io::Result<Option<Metadata>> {
        self.lock().metadata(path)
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<DirEntry>> {
        self.lock().list(dir)
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        let mut st = self.lock();
        let ino = st.resolve_file(path)?;
        st.read(ino, path, 0, usize::MAX)
    }

    fn write_new(&self, path: &Path, bytes: &[u8]) -> io::Result<()> {
        let mut st = self.lock();
        let ino = st.create_new(path)?;
        let written = st.write(ino, path, bytes, 0, false)?;
        if written < bytes.len() {
            // A buffered write retries a short count; a device that is full then says so.
            return Err(io::Error::from_raw_os_error(28));
        }
        Ok(())
    }

    fn sync_file(&self, path: &Path) -> io::Result<()> {
        // A namespace fsync blocks its thread (glommio's blocking pool on the real path), so
        // `fsync_latency` sleeps it here, outside the lock.
        let slow = self.lock().faults.fsync_latency;
        if !slow.is_zero() {
            std::thread::sleep(slow);
        }
        let mut st = self.lock();
        let ino = st.resolve_file(path)?;
        let pending = st.sync_begin(ino)?;
        st.sync_commit(ino, path, pending)
    }

    fn truncate(&self, path: &Path, len: u64) -> io::Result<()> {
        let mut st = self.lock();
        let ino = st.resolve_file(path)?;
        st.set_len(ino, len)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.lock().rename(from, to)
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        self.lock().remove(path)
    }

    fn remove_dir(&self, path: &Path) -> io::Result<()> {
        self.lock().remove_dir(path)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.lock().sync_dir(dir)
    }
}

impl SimFile {
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) async fn write_at(&self, data: &[u8], pos: u64) -> io::Result<usize> {
        assert_direct("write", pos, data.len(), Some(data.as_ptr()), &self.path);
        let slow = self.disk.lock().faults.write_latency;
        if !slow.is_zero() {
            glommio::timer::sleep(slow).await;
        }
        self.disk.latency().await;
        self.disk.lock().write(self.ino, &self.path, data, pos, true)
    }

    pub(crate) async fn read_at(&self, pos: u64, len: usize) -> io::Result<ReadBytes> {
        assert_direct("read", pos, len, None, &self.path);
        self.disk.latency().await;
        let bytes = self.disk.lock().read(self.ino, &self.path, pos, len)?;
        let mut aligned = AlignedVec::<BLOCK_SIZE>::with_capacity(bytes.len());
        aligned.extend_from_slice(&bytes);
        Ok(ReadBytes::heap(aligned))
    }

    /// Covers the writes that completed before it started, as the kernel's does.
    pub(crate) async fn fdatasync(&self) -> io::Result<()> {
        let (pending, slow) = {
            let mut st = self.disk.lock();
            (st.sync_begin(self.ino)?, st.faults.fsync_latency)
        };
        if !slow.is_zero() {
            glommio::timer::sleep(slow).await;
        }
        self.disk.latency().await;
        self.disk.lock().sync_commit(self.ino, &self.path, pending)
    }

    pub(crate) fn file_size(&self) -> io::Result<u64> {
        self.disk.lock().file_size(self.ino)
    }

    pub(crate) async fn truncate(&self, size: u64) -> io::Result<()> {
        self.disk.latency().await;
        self.disk.lock().set_len(self.ino, size)
    }

    pub(crate) async fn pre_allocate(&self, size: u64, keep_size: bool) -> io::Result<()> {
        self.disk.latency().await;
        self.disk.lock().pre_allocate(self.ino, &self.path, size, keep_size)
    }
}

#[cfg(test)]
mod tests;
