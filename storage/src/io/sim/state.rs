//! The simulated disk's state: inodes with live and durable contents, the operations on them,
//! and the fault decisions (one seeded generator, drawn in operation order).

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use super::{eio, FaultKind, FaultOptions, FaultRecord, SimStats};
use crate::io::{DirEntry, Metadata, SECTOR_SIZE};

pub(super) const ROOT: u64 = 1;

/// splitmix64: small, fast, and good enough to drive fault decisions reproducibly.
pub(super) struct Rng(u64);

impl Rng {
    pub(super) fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x5DEE_CE66_D1CE_4E5B)
    }

    pub(super) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n > 0`).
    pub(super) fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    pub(super) fn chance(&mut self, probability: f64) -> bool {
        probability > 0.0 && ((self.next() >> 11) as f64 / (1u64 << 53) as f64) < probability
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Status {
    Alive,
    /// Stopped by `freeze`/`freeze_after_ops`: operations fail, `power_cut` still works.
    Frozen,
    /// `power_cut` was called: this disk is gone.
    Cut,
}

/// An fdatasync between its start and its end.
pub(super) struct PendingSync {
    upto: u64,
    nth: u64,
}

/// A change to a file since its last sync.
pub(super) enum FileOp {
    Write { pos: u64, data: Vec<u8> },
    SetLen(u64),
}

pub(super) struct FileNode {
    pub(super) live: Vec<u8>,
    pub(super) durable: Vec<u8>,
    /// Changes not yet durable, oldest first, each with its sequence number.
    pub(super) pending: Vec<(u64, FileOp)>,
    next_seq: u64,
    /// Bytes reserved (size, or more after a `keep_size` preallocation).
    allocated: u64,
    fsyncs: u64,
}

/// A change to a directory since its last fsync.
pub(super) enum DirOp {
    Link(OsString, u64),
    Unlink(OsString),
    Rename(OsString, OsString),
}

pub(super) struct DirNode {
    pub(super) live: BTreeMap<OsString, u64>,
    pub(super) durable: BTreeMap<OsString, u64>,
    pub(super) pending: Vec<DirOp>,
    fsyncs: u64,
}

pub(super) enum Node {
    File(FileNode),
    Dir(DirNode),
}

impl FileNode {
    pub(super) fn with_contents(bytes: Vec<u8>) -> FileNode {
        FileNode {
            allocated: bytes.len() as u64,
            durable: bytes.clone(),
            live: bytes,
            pending: Vec::new(),
            next_seq: 0,
            fsyncs: 0,
        }
    }

    fn push(&mut self, op: FileOp) {
        self.pending.push((self.next_seq, op));
        self.next_seq += 1;
    }
}

impl DirNode {
    pub(super) fn with_entries(entries: BTreeMap<OsString, u64>) -> DirNode {
        DirNode { durable: entries.clone(), live: entries, pending: Vec::new(), fsyncs: 0 }
    }
}

/// Applies one file change to `bytes` (the durable image, or a replay of it).
pub(super) fn apply_file_op(bytes: &mut Vec<u8>, op: &FileOp) {
    match op {
        FileOp::Write { pos, data } => {
            let pos = *pos as usize;
            if bytes.len() < pos + data.len() {
                bytes.resize(pos + data.len(), 0);
            }
            bytes[pos..pos + data.len()].copy_from_slice(data);
        }
        FileOp::SetLen(len) => bytes.resize(*len as usize, 0),
    }
}

/// Applies one directory change to `entries`.
pub(super) fn apply_dir_op(entries: &mut BTreeMap<OsString, u64>, op: &DirOp) {
    match op {
        DirOp::Link(name, ino) => {
            entries.insert(name.clone(), *ino);
        }
        DirOp::Unlink(name) => {
            entries.remove(name);
        }
        DirOp::Rename(from, to) => {
            if let Some(ino) = entries.remove(from) {
                entries.insert(to.clone(), ino);
            }
        }
    }
}

pub(super) struct SimState {
    pub(super) seed: u64,
    pub(super) rng: Rng,
    pub(super) faults: FaultOptions,
    pub(super) nodes: BTreeMap<u64, Node>,
    pub(super) next_ino: u64,
    pub(super) status: Status,
    pub(super) stats: SimStats,
    pub(super) records: Vec<FaultRecord>,
}

fn not_found(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, what.to_string())
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, what.to_string())
}

impl SimState {
    pub(super) fn new(seed: u64, faults: FaultOptions) -> SimState {
        let mut nodes = BTreeMap::new();
        nodes.insert(ROOT, Node::Dir(DirNode::with_entries(BTreeMap::new())));
        SimState {
            seed,
            rng: Rng::new(seed),
            faults,
            nodes,
            next_ino: ROOT + 1,
            status: Status::Alive,
            stats: SimStats::default(),
            records: Vec::new(),
        }
    }

    /// Counts an operation; fails it if the disk is down (or goes down right here).
    fn begin(&mut self) -> io::Result<()> {
        if self.status != Status::Alive {
            return Err(eio());
        }
        if self.faults.freeze_after_ops.is_some_and(|n| self.stats.ops >= n) {
            self.status = Status::Frozen;
            return Err(eio());
        }
        self.stats.ops += 1;
        Ok(())
    }

    /// How many operations of `kind`'s class ran so far (the schedule's count).
    pub(super) fn class_count(&self, kind: FaultKind) -> u64 {
        match kind {
            FaultKind::WriteEio | FaultKind::ShortWrite | FaultKind::NoSpace => self.stats.writes,
            FaultKind::ReadEio => self.stats.reads,
            FaultKind::FsyncEio => self.stats.fsyncs,
            FaultKind::DirFsyncEio => self.stats.dir_fsyncs,
            FaultKind::Latency | FaultKind::RemoveEio => self.stats.ops,
        }
    }

    /// Whether the operation of `kind`'s class numbered `nth` gets the fault; records it if so.
    fn fault(&mut self, kind: FaultKind, probability: f64, nth: u64, path: &Path) -> bool {
        let scheduled = self.faults.schedule.iter().any(|s| s.kind == kind && s.nth == nth);
        // Always draw, so one fault's schedule does not shift every later random decision.
        let drawn = self.rng.chance(probability);
        let here = kind == FaultKind::Latency
            || self.faults.only_under.as_ref().is_none_or(|under| path.starts_with(under));
        let fires = here && (scheduled || drawn);
        if fires {
            self.records.push(FaultRecord { op: self.stats.ops, kind, path: path.to_path_buf() });
        }
        fires
    }

    /// A delay to sleep and a number of yields before an async operation.
    pub(super) fn latency(&mut self) -> (Option<Duration>, u32) {
        if self.status != Status::Alive {
            return (None, 0);
        }
        let yields = if self.rng.chance(self.faults.yield_probability) {
            1 + self.rng.below(4) as u32
        } else {
            0
        };
        let max = self.faults.latency_max;
        let probability = self.faults.latency_probability;
        let nth = self.stats.ops;
        if !self.fault(FaultKind::Latency, probability, nth, Path::new("")) {
            return (None, yields);
        }
        let micros = max.as_micros().max(1) as u64;
        (Some(Duration::from_micros(self.rng.below(micros) + 1)), yields)
    }

    fn node(&self, ino: u64) -> &Node {
        self.nodes.get(&ino).expect("inode numbers come from this disk")
    }

    fn node_mut(&mut self, ino: u64) -> &mut Node {
        self.nodes.get_mut(&ino).expect("inode numbers come from this disk")
    }

    fn file_mut(&mut self, ino: u64) -> &mut FileNode {
        match self.node_mut(ino) {
            Node::File(file) => file,
            Node::Dir(_) => panic!("inode {ino} is a directory"),
        }
    }

    fn dir_mut(&mut self, ino: u64) -> &mut DirNode {
        match self.node_mut(ino) {
            Node::Dir(dir) => dir,
            Node::File(_) => panic!("inode {ino} is a file"),
        }
    }

    /// The inode at `path` (absolute, no `..`), through live entries.
    fn resolve(&self, path: &Path) -> io::Result<Option<u64>> {
        if !path.is_absolute() {
            return Err(invalid("the simulated disk takes absolute paths"));
        }
        let mut ino = ROOT;
        for component in path.components() {
            match component {
                Component::RootDir | Component::CurDir => {}
                Component::Normal(name) => match self.node(ino) {
                    Node::Dir(dir) => match dir.live.get(name) {
                        Some(child) => ino = *child,
                        None => return Ok(None),
                    },
                    Node::File(_) => return Err(io::Error::from_raw_os_error(20)), // ENOTDIR
                },
                Component::ParentDir | Component::Prefix(_) => {
                    return Err(invalid("the simulated disk takes normalized paths"))
                }
            }
        }
        Ok(Some(ino))
    }

    /// The directory holding `path` and the entry name.
    fn resolve_parent(&self, path: &Path) -> io::Result<(u64, OsString)> {
        let name = path.file_name().ok_or_else(|| invalid("path has no file name"))?;
        let parent = path.parent().ok_or_else(|| invalid("path has no parent"))?;
        let ino = self.resolve(parent)?.ok_or_else(|| not_found("parent directory"))?;
        match self.node(ino) {
            Node::Dir(_) => Ok((ino, name.to_os_string())),
            Node::File(_) => Err(io::Error::from_raw_os_error(20)),
        }
    }

    pub(super) fn resolve_file(&self, path: &Path) -> io::Result<u64> {
        let ino = self.resolve(path)?.ok_or_else(|| not_found("no such file"))?;
        match self.node(ino) {
            Node::File(_) => Ok(ino),
            Node::Dir(_) => Err(io::Error::from_raw_os_error(21)), // EISDIR
        }
    }

    fn link(&mut self, dir: u64, name: OsString, ino: u64) {
        let dir = self.dir_mut(dir);
        dir.live.insert(name.clone(), ino);
        dir.pending.push(DirOp::Link(name, ino));
    }

    fn add_node(&mut self, node: Node) -> u64 {
        let ino = self.next_ino;
        self.next_ino += 1;
        self.nodes.insert(ino, node);
        ino
    }

    pub(super) fn mkdir(&mut self, path: &Path) -> io::Result<()> {
        self.begin()?;
        let (parent, name) = self.resolve_parent(path)?;
        if self.resolve(path)?.is_some() {
            return Err(io::Error::from(io::ErrorKind::AlreadyExists));
        }
        let ino = self.add_node(Node::Dir(DirNode::with_entries(BTreeMap::new())));
        self.link(parent, name, ino);
        Ok(())
    }

    pub(super) fn open(&mut self, path: &Path, create: bool) -> io::Result<u64> {
        self.begin()?;
        match self.resolve(path)? {
            Some(ino) => match self.node(ino) {
                Node::File(_) => Ok(ino),
                Node::Dir(_) => Err(io::Error::from_raw_os_error(21)),
            },
            None if create => {
                let (parent, name) = self.resolve_parent(path)?;
                let ino = self.add_node(Node::File(FileNode::with_contents(Vec::new())));
                self.link(parent, name, ino);
                Ok(ino)
            }
            None => Err(not_found("no such file")),
        }
    }

    pub(super) fn create_new(&mut self, path: &Path) -> io::Result<u64> {
        self.begin()?;
        let (parent, name) = self.resolve_parent(path)?;
        if self.resolve(path)?.is_some() {
            return Err(io::Error::from(io::ErrorKind::AlreadyExists));
        }
        let ino = self.add_node(Node::File(FileNode::with_contents(Vec::new())));
        self.link(parent, name, ino);
        Ok(ino)
    }

    pub(super) fn metadata(&mut self, path: &Path) -> io::Result<Option<Metadata>> {
        self.begin()?;
        Ok(self.resolve(path)?.map(|ino| match self.node(ino) {
            Node::File(file) => Metadata { len: file.live.len() as u64, is_dir: false },
            Node::Dir(_) => Metadata { len: 0, is_dir: true },
        }))
    }

    pub(super) fn list(&mut self, dir: &Path) -> io::Result<Vec<DirEntry>> {
        self.begin()?;
        let ino = self.resolve(dir)?.ok_or_else(|| not_found("no such directory"))?;
        let Node::Dir(node) = self.node(ino) else {
            return Err(io::Error::from_raw_os_error(20));
        };
        Ok(node
            .live
            .iter()
            .map(|(name, child)| DirEntry {
                name: name.clone(),
                is_dir: matches!(self.node(*child), Node::Dir(_)),
            })
            .collect())
    }

    pub(super) fn rename(&mut self, from: &Path, to: &Path) -> io::Result<()> {
        self.begin()?;
        let (from_dir, from_name) = self.resolve_parent(from)?;
        let (to_dir, to_name) = self.resolve_parent(to)?;
        let ino = self.resolve(from)?.ok_or_else(|| not_found("no such file"))?;
        if from_dir == to_dir {
            let dir = self.dir_mut(from_dir);
            dir.live.remove(&from_name);
            dir.live.insert(to_name.clone(), ino);
            dir.pending.push(DirOp::Rename(from_name, to_name));
        } else {
            let dir = self.dir_mut(from_dir);
            dir.live.remove(&from_name);
            dir.pending.push(DirOp::Unlink(from_name));
            self.link(to_dir, to_name, ino);
        }
        Ok(())
    }

    pub(super) fn remove(&mut self, path: &Path) -> io::Result<()> {
        self.begin()?;
        self.remove_fault(path)?;
        let (dir, name) = self.resolve_parent(path)?;
        let ino = self.resolve(path)?.ok_or_else(|| not_found("no such file"))?;
        if let Node::Dir(_) = self.node(ino) {
            return Err(io::Error::from_raw_os_error(21));
        }
        let dir = self.dir_mut(dir);
        dir.live.remove(&name);
        dir.pending.push(DirOp::Unlink(name));
        Ok(())
    }

    /// Removes an empty directory (`ENOTEMPTY` otherwise, `ENOTDIR` for a file).
    pub(super) fn remove_dir(&mut self, path: &Path) -> io::Result<()> {
        self.begin()?;
        self.remove_fault(path)?;
        let (dir, name) = self.resolve_parent(path)?;
        let ino = self.resolve(path)?.ok_or_else(|| not_found("no such directory"))?;
        match self.node(ino) {
            Node::Dir(d) if !d.live.is_empty() => return Err(io::Error::from_raw_os_error(39)),
            Node::Dir(_) => {}
            Node::File(_) => return Err(io::Error::from_raw_os_error(20)),
        }
        let dir = self.dir_mut(dir);
        dir.live.remove(&name);
        dir.pending.push(DirOp::Unlink(name));
        Ok(())
    }

    /// An injected EIO for an unlink or rmdir of `path` (before it changes anything).
    fn remove_fault(&mut self, path: &Path) -> io::Result<()> {
        let nth = self.stats.ops - 1;
        let probability = self.faults.remove_eio_probability;
        // Nothing drawn unless asked for: seeds recorded before this fault kind replay as before.
        let scheduled = self.faults.schedule.iter().any(|s| s.kind == FaultKind::RemoveEio);
        if (probability > 0.0 || scheduled)
            && self.fault(FaultKind::RemoveEio, probability, nth, path)
        {
            return Err(eio());
        }
        Ok(())
    }

    pub(super) fn sync_dir(&mut self, path: &Path) -> io::Result<()> {
        self.begin()?;
        let ino = self.resolve(path)?.ok_or_else(|| not_found("no such directory"))?;
        let nth = self.stats.dir_fsyncs;
        self.stats.dir_fsyncs += 1;
        let probability = self.faults.dir_fsync_eio_probability;
        if self.fault(FaultKind::DirFsyncEio, probability, nth, path) {
            return Err(eio());
        }
        let Node::Dir(dir) = self.node_mut(ino) else {
            // fsync of a file opened like a directory: it syncs the file.
            let upto = self.sync_begin_counted(ino);
            self.make_durable(ino, upto);
            return Ok(());
        };
        dir.durable = dir.live.clone();
        dir.pending.clear();
        dir.fsyncs += 1;
        Ok(())
    }

    /// Bytes reserved by linked files, for the capacity check.
    fn used_bytes(&self) -> u64 {
        let mut linked = std::collections::BTreeSet::new();
        for node in self.nodes.values() {
            if let Node::Dir(dir) = node {
                linked.extend(dir.live.values().copied());
            }
        }
        linked
            .iter()
            .filter_map(|ino| match self.nodes.get(ino) {
                Some(Node::File(file)) => Some(file.allocated),
                _ => None,
            })
            .sum()
    }

    fn record(&mut self, kind: FaultKind, path: &Path) {
        self.records.push(FaultRecord { op: self.stats.ops, kind, path: path.to_path_buf() });
    }

    /// Writes `data` at `pos`; may write a prefix (short write, full disk). `direct`: an O_DIRECT
    /// write (counted in `extending_writes` when it grows the file).
    pub(super) fn write(
        &mut self,
        ino: u64,
        path: &Path,
        data: &[u8],
        pos: u64,
        direct: bool,
    ) -> io::Result<usize> {
        self.begin()?;
        let nth = self.stats.writes;
        self.stats.writes += 1;
        let probability = self.faults.write_eio_probability;
        if self.fault(FaultKind::WriteEio, probability, nth, path) {
            return Err(eio());
        }
        if self.faults.schedule.iter().any(|s| s.kind == FaultKind::NoSpace && s.nth == nth) {
            self.record(FaultKind::NoSpace, path);
            return Err(io::Error::from_raw_os_error(28));
        }
        let sector = SECTOR_SIZE as u64;
        let mut len = data.len() as u64;
        let probability = self.faults.short_write_probability;
        if self.fault(FaultKind::ShortWrite, probability, nth, path) && len > 0 {
            len = (self.rng.below(len.div_ceil(sector)) * sector).min(len);
        }
        if let Some(capacity) = self.faults.capacity_bytes {
            let allocated = match self.node(ino) {
                Node::File(file) => file.allocated,
                Node::Dir(_) => 0,
            };
            let growth = (pos + len).saturating_sub(allocated);
            let free = capacity.saturating_sub(self.used_bytes());
            if growth > free {
                let fits = (allocated + free).saturating_sub(pos);
                len = len.min(fits - fits % sector);
                self.record(FaultKind::NoSpace, path);
                if len == 0 {
                    return Err(io::Error::from_raw_os_error(28));
                }
            }
        }
        let data = data[..len as usize].to_vec();
        self.stats.bytes_written += len;
        let file = self.file_mut(ino);
        let extends = pos + len > file.live.len() as u64;
        let op = FileOp::Write { pos, data };
        apply_file_op(&mut file.live, &op);
        file.allocated = file.allocated.max(file.live.len() as u64);
        file.push(op);
        self.stats.extending_writes += u64::from(direct && extends);
        Ok(len as usize)
    }

    pub(super) fn read(
        &mut self,
        ino: u64,
        path: &Path,
        pos: u64,
        len: usize,
    ) -> io::Result<Vec<u8>> {
        self.begin()?;
        let nth = self.stats.reads;
        self.stats.reads += 1;
        let probability = self.faults.read_eio_probability;
        if self.fault(FaultKind::ReadEio, probability, nth, path) {
            return Err(eio());
        }
        let Node::File(file) = self.node(ino) else {
            return Err(io::Error::from_raw_os_error(21));
        };
        let start = (pos as usize).min(file.live.len());
        let end = start.saturating_add(len).min(file.live.len());
        Ok(file.live[start..end].to_vec())
    }

    fn sync_begin_counted(&mut self, ino: u64) -> u64 {
        let file = self.file_mut(ino);
        file.fsyncs += 1;
        file.next_seq
    }

    /// The first half of an fdatasync: counts it and notes which changes it covers (those made
    /// before it started).
    pub(super) fn sync_begin(&mut self, ino: u64) -> io::Result<PendingSync> {
        self.begin()?;
        let nth = self.stats.fsyncs;
        self.stats.fsyncs += 1;
        Ok(PendingSync { upto: self.sync_begin_counted(ino), nth })
    }

    /// The second half, when the flush ends: it may fail (as a real one reports its error at the
    /// end), or the disk died meanwhile; otherwise the covered changes become durable.
    pub(super) fn sync_commit(
        &mut self,
        ino: u64,
        path: &Path,
        pending: PendingSync,
    ) -> io::Result<()> {
        if self.status != Status::Alive {
            return Err(eio());
        }
        let probability = self.faults.fsync_eio_probability;
        if self.fault(FaultKind::FsyncEio, probability, pending.nth, path) {
            return Err(eio());
        }
        self.make_durable(ino, pending.upto);
        Ok(())
    }

    fn make_durable(&mut self, ino: u64, upto: u64) {
        let file = self.file_mut(ino);
        let covered = file.pending.iter().take_while(|(seq, _)| *seq < upto).count();
        for (_, op) in file.pending.drain(..covered) {
            apply_file_op(&mut file.durable, &op);
        }
    }

    pub(super) fn file_size(&mut self, ino: u64) -> io::Result<u64> {
        self.begin()?;
        match self.node(ino) {
            Node::File(file) => Ok(file.live.len() as u64),
            Node::Dir(_) => Err(io::Error::from_raw_os_error(21)),
        }
    }

    pub(super) fn set_len(&mut self, ino: u64, size: u64) -> io::Result<()> {
        self.begin()?;
        let file = self.file_mut(ino);
        let op = FileOp::SetLen(size);
        apply_file_op(&mut file.live, &op);
        file.allocated = size;
        file.push(op);
        Ok(())
    }

    pub(super) fn pre_allocate(
        &mut self,
        ino: u64,
        path: &Path,
        size: u64,
        keep_size: bool,
    ) -> io::Result<()> {
        self.begin()?;
        let allocated = match self.node(ino) {
            Node::File(file) => file.allocated,
            Node::Dir(_) => return Err(io::Error::from_raw_os_error(21)),
        };
        if let Some(capacity) = self.faults.capacity_bytes {
            let growth = size.saturating_sub(allocated);
            if growth > capacity.saturating_sub(self.used_bytes()) {
                self.record(FaultKind::NoSpace, path);
                return Err(io::Error::from_raw_os_error(28));
            }
        }
        let file = self.file_mut(ino);
        file.allocated = file.allocated.max(size);
        if !keep_size && size > file.live.len() as u64 {
            let op = FileOp::SetLen(size);
            apply_file_op(&mut file.live, &op);
            file.push(op);
        }
        Ok(())
    }

    pub(super) fn fsync_count(&self, path: &Path) -> u64 {
        match self.resolve(path) {
            Ok(Some(ino)) => match self.node(ino) {
                Node::File(file) => file.fsyncs,
                Node::Dir(dir) => dir.fsyncs,
            },
            _ => 0,
        }
    }

    pub(super) fn file_bytes(&self, path: &Path) -> Option<Vec<u8>> {
        match self.node(self.resolve(path).ok()??) {
            Node::File(file) => Some(file.live.clone()),
            Node::Dir(_) => None,
        }
    }

    pub(super) fn corrupt(&mut self, path: &Path, pos: u64, mask: u8) -> io::Result<()> {
        let ino = self.resolve(path)?.ok_or_else(|| not_found("no such file"))?;
        let file = self.file_mut(ino);
        let pos = pos as usize;
        if pos >= file.live.len() {
            return Err(invalid("position past the end of the file"));
        }
        file.live[pos] ^= mask;
        if pos < file.durable.len() {
            file.durable[pos] ^= mask;
        }
        for (_, op) in &mut file.pending {
            if let FileOp::Write { pos: at, data } = op {
                let at = *at as usize;
                if (at..at + data.len()).contains(&pos) {
                    data[pos - at] ^= mask;
                }
            }
        }
        Ok(())
    }

    pub(super) fn files(&self) -> Vec<(PathBuf, u64)> {
        let mut out = Vec::new();
        let mut stack = vec![(PathBuf::from("/"), ROOT)];
        while let Some((path, ino)) = stack.pop() {
            match self.node(ino) {
                Node::Dir(dir) => {
                    for (name, child) in &dir.live {
                        stack.push((path.join(name), *child));
                    }
                }
                Node::File(file) => out.push((path, file.live.len() as u64)),
            }
        }
        out.sort();
        out
    }
}
