//! A view partition's checkpoint: its file format (magic, format version, what it belongs to,
//! the state as an rkyv archive), the formats still read, and the snapshot a checkpoint is taken
//! from a step at a time. The state itself is in the parent module.

use super::*;

const CHECKPOINT_MAGIC: u32 = u32::from_le_bytes(*b"KAPC");
/// Format 2: `Counters` counts skips by cause. Format 3: records whose user code panicked
/// (`panicked`). Format 4: `Sum` and `Mean` keep an exact sum (`ExactSum`), `Min`/`Max` order
/// zeros by sign. Format 5: the definition's revision and shape (`CheckpointOf`). Format 6: the
/// topic's incarnation. Formats 4 and 5 are still read (`decode_stored`, `Stored::establish`:
/// their state is laid out as now, and what they do not record is established from where they
/// lie, or they are refused); an older checkpoint is refused as unknown and the partition
/// replays from an older checkpoint or the start.
const CHECKPOINT_FORMAT: u16 = 6;
const CHECKPOINT_FORMAT_5: u16 = 5;
const CHECKPOINT_FORMAT_4: u16 = 4;
const CHECKPOINT_HEADER: usize = 32;

/// Groups as a checkpoint stores them: key, then (window start, cell) in order.
type StoredGroups = Vec<(Vec<u8>, Vec<(i64, Cell)>)>;

/// What a checkpoint belongs to: written into it, and compared with the version that would
/// resume from it (`runner::initial_state`), which ignores a checkpoint of another view,
/// version, partition or definition rather than continue a state it did not build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointOf {
    pub view: String,
    pub version: u32,
    pub partition: u32,
    /// The revision of the definition that built the state.
    pub revision: String,
    /// Its key, window and aggregate as text (`ViewDef::shape_text`, as in the version's
    /// `shape` file).
    pub shape: String,
    /// The incarnation of the topic it read (`TopicMeta::incarnation`): a topic deleted and
    /// created again under the same name holds other records at the same offsets.
    pub topic_incarnation: u64,
}

impl CheckpointOf {
    /// Whether the partition `ours` may continue this checkpoint's state: its own (view,
    /// version, partition, revision and shape all equal), or, for a version seeded from version
    /// `seed` (`Start::Checkpoint`), one of that version's with this view, partition and shape
    /// (the revision differs by design; the seed's definition was checked when the version was
    /// created).
    pub fn resumes(&self, ours: &CheckpointOf, seed: Option<u32>) -> bool {
        match seed {
            None => self == ours,
            Some(seed) => {
                self.version == seed
                    && self.view == ours.view
                    && self.partition == ours.partition
                    && self.shape == ours.shape
                    && self.topic_incarnation == ours.topic_incarnation
            }
        }
    }
}

impl std::fmt::Display for CheckpointOf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "view {:?} version {} partition {} (revision {:?}, shape {:?}, topic incarnation {:x})",
            self.view,
            self.version,
            self.partition,
            self.revision,
            self.shape,
            self.topic_incarnation
        )
    }
}

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub(super) struct CheckpointData {
    view: String,
    version: u32,
    partition: u32,
    revision: String,
    shape: String,
    topic_incarnation: u64,
    next_offset: u64,
    max_event_time: i64,
    counters: Counters,
    pub(super) groups: StoredGroups,
}

/// Format 5's archive: format 6 without the topic's incarnation.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
struct CheckpointDataV5 {
    view: String,
    version: u32,
    partition: u32,
    revision: String,
    shape: String,
    next_offset: u64,
    max_event_time: i64,
    counters: Counters,
    groups: StoredGroups,
}

/// Format 4's archive: neither the definition (revision, shape) nor the topic's incarnation.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
struct CheckpointDataV4 {
    view: String,
    version: u32,
    partition: u32,
    next_offset: u64,
    max_event_time: i64,
    counters: Counters,
    groups: StoredGroups,
}

/// What a checkpoint file says it belongs to, by format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stored {
    /// Format 6: everything `CheckpointOf` holds.
    Current(CheckpointOf),
    /// Format 5: no topic incarnation.
    Format5 { view: String, version: u32, partition: u32, revision: String, shape: String },
    /// Format 4: view, version and partition only.
    Format4 { view: String, version: u32, partition: u32 },
}

impl Stored {
    /// The checkpoint's full identity, where it can be established for a partition `ours`
    /// would resume it into; otherwise why not.
    ///
    /// Formats 4 and 5 predate topic incarnations: a topic whose definition records one
    /// (`ours.topic_incarnation != 0`) was created after such a checkpoint was written, so it
    /// is another topic of the same name, and the checkpoint is refused. A topic that records
    /// none (created before incarnations, as the checkpoint) is its topic: incarnation 0.
    /// Format 4 records no definition: its shape is the one its version's `shape` file held
    /// (`dir_shape`: for the version's own directory, the file as this start found it before
    /// rewriting it, that is, the definition the version last ran with), refused where there
    /// is none; its revision is the version's, which `meta.json` fixes per version number
    /// (`ours.revision` when it is the version's own; a seed's revision is not compared).
    pub fn establish(
        self,
        ours: &CheckpointOf,
        dir_shape: Option<&str>,
    ) -> Result<CheckpointOf, String> {
        let incarnation = |format: u16| {
            if ours.topic_incarnation != 0 {
                Err(format!(
                    "a format-{format} checkpoint predates topic incarnations, and the topic's \
                     definition records incarnation {:x}: another topic of that name",
                    ours.topic_incarnation
                ))
            } else {
                Ok(0)
            }
        };
        match self {
            Stored::Current(of) => Ok(of),
            Stored::Format5 { view, version, partition, revision, shape } => Ok(CheckpointOf {
                view,
                version,
                partition,
                revision,
                shape,
                topic_incarnation: incarnation(5)?,
            }),
            Stored::Format4 { view, version, partition } => {
                let topic_incarnation = incarnation(4)?;
                let Some(shape) = dir_shape else {
                    return Err("a format-4 checkpoint whose version has no shape file: its \
                                definition cannot be established"
                        .into());
                };
                Ok(CheckpointOf {
                    view,
                    version,
                    partition,
                    revision: ours.revision.clone(),
                    shape: shape.to_string(),
                    topic_incarnation,
                })
            }
        }
    }
}

/// A checkpoint file: 32-byte header (magic, format, payload length, xxh3 of the payload) and the
/// rkyv archive of the state. Written atomically (temp, fsync, rename, fsync dir) on the real
/// disk, blocking (tests and tools; shards use `Snapshot` and the async seam).
pub fn write_checkpoint(
    path: &Path,
    of: CheckpointOf,
    state: &PartitionState,
) -> Result<(), Error> {
    let bytes = encode_checkpoint(path, of, state)?;
    if let Some(dir) = path.parent() {
        kappa_storage::io::Disk::Dma.create_dir_all_blocking(dir)?;
    }
    kappa_storage::io::write_file_atomic(path, &bytes)?;
    Ok(())
}

/// The bytes of a checkpoint file of `state` (see `write_checkpoint`); `path` names errors.
pub fn encode_checkpoint(
    path: &Path,
    of: CheckpointOf,
    state: &PartitionState,
) -> Result<Vec<u8>, Error> {
    let mut snapshot = Snapshot::begin(of, state);
    loop {
        match snapshot.copy_more(state, usize::MAX) {
            Step::Done => return snapshot.encode(path),
            Step::More => {}
            // Not expected: `state` is borrowed for the whole copy, so nothing changes it between
            // steps. An error rather than a panic all the same, as everywhere a copy can move.
            Step::Moved => {
                return Err(Error::Meta {
                    path: path.to_path_buf(),
                    reason: "the state changed during its checkpoint copy".into(),
                })
            }
        }
    }
}

/// What one step of a `Snapshot` copy did (`Snapshot::copy_more`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum Step {
    /// Groups are left to copy: step again (after a yield, on a shard).
    More,
    /// Every group is copied: the snapshot can be encoded.
    Done,
    /// The state changed under the copy in a way `Snapshot::covers` does not see (the key or
    /// window a previous step stopped inside is gone): the copy is a cut of nothing. The caller
    /// drops the snapshot and skips this checkpoint, as it does when `covers` fails. Every later
    /// step says `Moved` again.
    Moved,
}

/// A copy of a partition's state taken a few groups at a time, then encoded as a checkpoint
/// file elsewhere (`encode`).
///
/// Why: a checkpoint of a large view (hundreds of thousands of groups) is a copy and an rkyv
/// archive of tens of MB, a fraction of a second of CPU. Done in one go on the shard, that
/// held its executor, and every partition and request of the shard, for as long
/// (`kappa-bench stall`). The shard copies a chunk of groups per step and yields between steps
/// (`copy_more`); the encoding needs no access to the live state and runs on another thread.
///
/// The copy is a consistent cut at `next_offset` only while nothing folds into the state between
/// the steps: the caller (the partition's own fold task, which is the only writer) checks that
/// `next_offset` has not moved (`covers`) after every yield, and drops the snapshot if it has,
/// or if a step finds the state changed in a way `covers` does not see (`Step::Moved`).
pub struct Snapshot {
    // `pub(super)`: the state's tests look at how far a snapshot has copied.
    pub(super) data: CheckpointData,
    /// Where the next step starts: after this key, or inside it after this window start (the
    /// key is then `data.groups`' last entry, partly copied).
    pub(super) after: Option<(Vec<u8>, Option<i64>)>,
    done: bool,
    /// A step found the state changed under the copy (`Step::Moved`).
    moved: bool,
}

impl Snapshot {
    /// Starts a snapshot of `state` (its offsets and counters now, its groups by `copy_more`).
    pub fn begin(of: CheckpointOf, state: &PartitionState) -> Snapshot {
        Snapshot {
            data: CheckpointData {
                view: of.view,
                version: of.version,
                partition: of.partition,
                revision: of.revision,
                shape: of.shape,
                topic_incarnation: of.topic_incarnation,
                next_offset: state.next_offset,
                max_event_time: state.max_event_time,
                counters: state.counters,
                groups: Vec::with_capacity(state.groups.len()),
            },
            after: None,
            done: false,
            moved: false,
        }
    }

    /// The offset the snapshot is a cut at: everything before it is folded in.
    pub fn next_offset(&self) -> u64 {
        self.data.next_offset
    }

    /// Whether `state` is still the state this snapshot started from (nothing folded since).
    pub fn covers(&self, state: &PartitionState) -> bool {
        state.next_offset == self.data.next_offset
            && state.counters == self.data.counters
            && state.max_event_time == self.data.max_event_time
    }

    /// Copies up to `max_cells` more (key, window) groups; `Step::Done` once every group is
    /// copied. `state` must be the state `begin` saw (see `covers`); where a step can tell that
    /// it is not (the key or window it resumes after is gone), it says `Step::Moved` instead of
    /// copying. `covers` compares the offsets and counters, not the groups, so a change that
    /// moves none of them (an eviction or compaction path) reaches this step unseen; a panic
    /// here would take the whole shard down for what is only a checkpoint that cannot be taken.
    /// A partial guard only: a key removed at a key boundary, keys inserted before the point the
    /// copy reached or cells changed in what was copied go unseen, and such a checkpoint would be
    /// wrong. Today nothing changes the groups without moving the counters (`fold` does;
    /// `merge_step` runs while no copy is in flight); a path that does (eviction, compaction)
    /// must give `covers` a generation of the groups to compare first.
    ///
    /// The step is bounded by groups, not keys: a key holds one group per window, and a view
    /// with many windows per key (a day of 1-minute windows) made a step of 2,048 keys copy
    /// hundreds of thousands of groups, 2-19 ms of the shard thread in one go (measured by
    /// `KAPPA_OVERRUN_TRACE_US` during `kappa-bench mixed`). A key with more windows than a step
    /// is copied over several steps.
    pub fn copy_more(&mut self, state: &PartitionState, max_cells: usize) -> Step {
        if self.moved {
            return Step::Moved;
        }
        if self.done {
            return Step::Done;
        }
        let max_cells = max_cells.max(1);
        let mut copied = 0;
        // The rest of a key a previous step stopped inside.
        if let Some((key, Some(window))) = self.after.take_if(|(_, window)| window.is_some()) {
            let Some(windows) =
                state.groups.get(key.as_slice()).filter(|windows| windows.contains_key(&window))
            else {
                self.moved = true;
                return Step::Moved;
            };
            // The snapshot's own bookkeeping, not the state: a step that stops inside a key has
            // just pushed that key's first windows.
            let (_, cells) = self.data.groups.last_mut().expect("the partly copied key is last");
            let mut last_copied = window;
            for (start, cell) in windows.range((Bound::Excluded(window), Bound::Unbounded)) {
                if copied == max_cells {
                    self.after = Some((key, Some(last_copied)));
                    return Step::More;
                }
                cells.push((*start, cell.clone()));
                last_copied = *start;
                copied += 1;
            }
            self.after = Some((key, None));
        }
        let from = match &self.after {
            Some((key, _)) => Bound::Excluded(key.as_slice()),
            None => Bound::Unbounded,
        };
        for (key, windows) in state.groups.range::<[u8], _>((from, Bound::Unbounded)) {
            if copied == max_cells {
                self.after = self.data.groups.last().map(|(k, _)| (k.clone(), None));
                return Step::More;
            }
            let take = windows.len().min(max_cells - copied);
            let cells: Vec<(i64, Cell)> =
                windows.iter().take(take).map(|(s, c)| (*s, c.clone())).collect();
            copied += take;
            let partial = (take < windows.len()).then(|| cells.last().expect("take >= 1").0);
            self.data.groups.push((key.clone(), cells));
            if partial.is_some() {
                self.after = Some((key.clone(), partial));
                return Step::More;
            }
        }
        self.done = true;
        Step::Done
    }

    /// The bytes of the checkpoint file (`path` names errors). Needs no access to the state: a
    /// thread other than the shard's runs it.
    pub fn encode(self, path: &Path) -> Result<Vec<u8>, Error> {
        debug_assert!(self.done, "a checkpoint of a partial snapshot");
        let payload = rkyv::to_bytes::<rancor::Error>(&self.data).map_err(|e| Error::Meta {
            path: path.to_path_buf(),
            reason: format!("encoding checkpoint: {e}"),
        })?;
        let mut bytes = Vec::with_capacity(CHECKPOINT_HEADER + payload.len());
        bytes.extend_from_slice(&CHECKPOINT_MAGIC.to_le_bytes());
        bytes.extend_from_slice(&CHECKPOINT_FORMAT.to_le_bytes());
        bytes.extend_from_slice(&[0u8; 2]);
        bytes.extend_from_slice(&(payload.len() as u64).to_le_bytes());
        bytes.extend_from_slice(&xxh3_64(&payload).to_le_bytes());
        bytes.resize(CHECKPOINT_HEADER, 0);
        bytes.extend_from_slice(&payload);
        Ok(bytes)
    }
}

/// Reads a checkpoint, verifying its checksum and archive; any damage is an error naming the file.
/// Returns what it belongs to beside the state: the caller checks it is its own.
pub fn read_checkpoint(path: &Path) -> Result<(CheckpointOf, PartitionState), Error> {
    let bytes = std::fs::read(path).map_err(|e| Error::Io {
        op: "read",
        path: path.to_path_buf(),
        source: e,
    })?;
    decode_checkpoint(path, &bytes)
}

/// A checkpoint's state, and what it belongs to, from its file's bytes (format 6 only); any
/// damage is an error naming `path`.
pub fn decode_checkpoint(
    path: &Path,
    bytes: &[u8],
) -> Result<(CheckpointOf, PartitionState), Error> {
    match decode_stored(path, bytes)? {
        (Stored::Current(of), state) => Ok((of, state)),
        _ => Err(Error::Meta {
            path: path.to_path_buf(),
            reason: "an older checkpoint format (see decode_stored)".into(),
        }),
    }
}

/// The next offset a checkpoint file records, in any format `decode_stored` reads.
pub fn checkpoint_next_offset(path: &Path, bytes: &[u8]) -> Result<u64, Error> {
    Ok(decode_stored(path, bytes)?.1.next_offset)
}

/// A checkpoint's state, and what it says it belongs to, from its file's bytes in format 4, 5
/// or 6 (`Stored::establish` completes an older one's identity); any damage is an error naming
/// `path`.
pub fn decode_stored(path: &Path, bytes: &[u8]) -> Result<(Stored, PartitionState), Error> {
    let corrupt = |reason: String| Error::Meta { path: path.to_path_buf(), reason };
    if bytes.len() < CHECKPOINT_HEADER || bytes[0..4] != CHECKPOINT_MAGIC.to_le_bytes() {
        return Err(corrupt("not a checkpoint (bad magic)".into()));
    }
    let format = u16::from_le_bytes([bytes[4], bytes[5]]);
    if ![CHECKPOINT_FORMAT, CHECKPOINT_FORMAT_5, CHECKPOINT_FORMAT_4].contains(&format) {
        return Err(corrupt(format!("unknown checkpoint format {format}")));
    }
    let mut len = [0u8; 8];
    len.copy_from_slice(&bytes[8..16]);
    let len = u64::from_le_bytes(len) as usize;
    let mut sum = [0u8; 8];
    sum.copy_from_slice(&bytes[16..24]);
    if bytes.len() != CHECKPOINT_HEADER.saturating_add(len) {
        return Err(corrupt(format!(
            "length {} does not match header ({len} payload bytes)",
            bytes.len()
        )));
    }
    let mut payload = AlignedVec::<16>::with_capacity(len);
    payload.extend_from_slice(&bytes[CHECKPOINT_HEADER..]);
    if xxh3_64(&payload) != u64::from_le_bytes(sum) {
        return Err(corrupt("checksum mismatch".into()));
    }
    let invalid = |e: rancor::Error| corrupt(format!("archive does not validate: {e}"));
    let (stored, next_offset, max_event_time, counters, groups) = match format {
        CHECKPOINT_FORMAT => {
            let d = rkyv::from_bytes::<CheckpointData, rancor::Error>(&payload).map_err(invalid)?;
            let of = CheckpointOf {
                view: d.view,
                version: d.version,
                partition: d.partition,
                revision: d.revision,
                shape: d.shape,
                topic_incarnation: d.topic_incarnation,
            };
            (Stored::Current(of), d.next_offset, d.max_event_time, d.counters, d.groups)
        }
        CHECKPOINT_FORMAT_5 => {
            let d =
                rkyv::from_bytes::<CheckpointDataV5, rancor::Error>(&payload).map_err(invalid)?;
            let stored = Stored::Format5 {
                view: d.view,
                version: d.version,
                partition: d.partition,
                revision: d.revision,
                shape: d.shape,
            };
            (stored, d.next_offset, d.max_event_time, d.counters, d.groups)
        }
        _ => {
            let d =
                rkyv::from_bytes::<CheckpointDataV4, rancor::Error>(&payload).map_err(invalid)?;
            let stored =
                Stored::Format4 { view: d.view, version: d.version, partition: d.partition };
            (stored, d.next_offset, d.max_event_time, d.counters, d.groups)
        }
    };
    let mut state = PartitionState::new(next_offset);
    state.max_event_time = max_event_time;
    state.counters = counters;
    state.groups = groups.into_iter().map(|(k, w)| (k, w.into_iter().collect())).collect();
    Ok((stored, state))
}

/// The bytes of a checkpoint file in format 4 or 5, as the code of those formats wrote them:
/// for tests of the upgrade path (`decode_stored`). Format 4 keeps view, version and partition
/// of `of`; format 5 also revision and shape; neither the topic incarnation.
#[doc(hidden)]
pub fn encode_old_checkpoint(format: u16, of: &CheckpointOf, state: &PartitionState) -> Vec<u8> {
    let groups: StoredGroups = state
        .groups
        .iter()
        .map(|(k, w)| (k.clone(), w.iter().map(|(s, c)| (*s, c.clone())).collect()))
        .collect();
    let payload = match format {
        CHECKPOINT_FORMAT_5 => rkyv::to_bytes::<rancor::Error>(&CheckpointDataV5 {
            view: of.view.clone(),
            version: of.version,
            partition: of.partition,
            revision: of.revision.clone(),
            shape: of.shape.clone(),
            next_offset: state.next_offset,
            max_event_time: state.max_event_time,
            counters: state.counters,
            groups,
        }),
        CHECKPOINT_FORMAT_4 => rkyv::to_bytes::<rancor::Error>(&CheckpointDataV4 {
            view: of.view.clone(),
            version: of.version,
            partition: of.partition,
            next_offset: state.next_offset,
            max_event_time: state.max_event_time,
            counters: state.counters,
            groups,
        }),
        other => panic!("format {other} is not an older format this writes"),
    }
    .expect("a checkpoint archives");
    let mut bytes = Vec::with_capacity(CHECKPOINT_HEADER + payload.len());
    bytes.extend_from_slice(&CHECKPOINT_MAGIC.to_le_bytes());
    bytes.extend_from_slice(&format.to_le_bytes());
    bytes.extend_from_slice(&[0u8; 2]);
    bytes.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    bytes.extend_from_slice(&xxh3_64(&payload).to_le_bytes());
    bytes.resize(CHECKPOINT_HEADER, 0);
    bytes.extend_from_slice(&payload);
    bytes
}
