//! The state of one view partition: groups keyed by (key, window start), the watermark, counters,
//! and the operator pipeline that folds records into it. Also its digest and checkpoint encoding.
//!
//! Everything here is deterministic: `BTreeMap` order, no clock, no randomness, records in offset
//! order. So a partition rebuilt by replay has the same groups, the same bits and the same digest as
//! the one maintained live.

use std::collections::BTreeMap;
use std::path::Path;

use kappa_storage::RecordRef;
use rkyv::rancor;
use rkyv::util::AlignedVec;
use xxhash_rust::xxh3::{xxh3_64, Xxh3};

use crate::operator::{AggState, Aggregate, KeyBy, LatePolicy, Window};
use crate::view::def::ViewDef;
use crate::Error;

/// One (key, window) group.
#[derive(Debug, Clone, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Cell {
    pub agg: AggState,
    /// Window end (exclusive); for sessions, the last event time plus the gap.
    pub end_ms: i64,
}

/// Counters of what the pipeline did with the records it consumed.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize,
)]
pub struct Counters {
    pub consumed: u64,
    pub applied: u64,
    /// Dropped by the filter, or without a key or mapped value.
    pub skipped: u64,
    /// (record, window) pairs that arrived after the window closed, per policy.
    pub late_dropped: u64,
    pub late_updated: u64,
}

pub type Groups = BTreeMap<Vec<u8>, BTreeMap<i64, Cell>>;

/// One partition of one view version.
#[derive(Debug, Clone, PartialEq)]
pub struct PartitionState {
    pub groups: Groups,
    /// The next offset to consume: everything before it is folded in.
    pub next_offset: u64,
    pub max_event_time: i64,
    pub counters: Counters,
    key: Vec<u8>,
}

impl PartitionState {
    pub fn new(next_offset: u64) -> Self {
        PartitionState {
            groups: BTreeMap::new(),
            next_offset,
            max_event_time: i64::MIN,
            counters: Counters::default(),
            key: Vec::new(),
        }
    }

    /// Largest event time seen minus the allowed lateness: windows ending at or before it are closed.
    pub fn watermark(&self, allowed_lateness_ms: i64) -> i64 {
        self.max_event_time.saturating_sub(allowed_lateness_ms)
    }

    /// Folds one record in. No allocation unless the record opens a new key.
    pub fn apply(&mut self, def: &ViewDef, record: &RecordRef<'_>) {
        self.next_offset = record.offset() + 1;
        self.counters.consumed += 1;
        if let Some(filter) = &def.filter {
            if !filter(record) {
                self.counters.skipped += 1;
                return;
            }
        }
        self.key.clear();
        let keyed = match &def.key {
            KeyBy::RecordKey => match record.key() {
                Some(key) => {
                    self.key.extend_from_slice(key);
                    true
                }
                None => false,
            },
            KeyBy::Derived(f) => f(record, &mut self.key),
        };
        if !keyed {
            self.counters.skipped += 1;
            return;
        }
        let value = match &def.map {
            Some(map) => match map(record) {
                Some(v) => Some(v),
                None => {
                    self.counters.skipped += 1;
                    return;
                }
            },
            None => None,
        };
        let ts = record.timestamp();
        let watermark = self.watermark(def.allowed_lateness_ms);
        self.max_event_time = self.max_event_time.max(ts);
        self.counters.applied += 1;
        if !self.groups.contains_key(self.key.as_slice()) {
            self.groups.insert(self.key.clone(), BTreeMap::new());
        }
        let counters = &mut self.counters;
        let windows = self.groups.get_mut(self.key.as_slice()).expect("inserted above");
        match def.window {
            Window::Session { gap_ms } => {
                if ts.saturating_add(gap_ms) <= watermark {
                    match def.late {
                        LatePolicy::Drop => {
                            counters.late_dropped += 1;
                            return;
                        }
                        LatePolicy::Update => counters.late_updated += 1,
                    }
                }
                apply_session(windows, &def.aggregate, record, value, ts, gap_ms);
            }
            window => window.assign(ts, |start, end| {
                if end <= watermark {
                    match def.late {
                        LatePolicy::Drop => {
                            counters.late_dropped += 1;
                            return;
                        }
                        LatePolicy::Update => counters.late_updated += 1,
                    }
                }
                let cell = windows
                    .entry(start)
                    .or_insert_with(|| Cell { agg: def.aggregate.init(), end_ms: end });
                def.aggregate.update(&mut cell.agg, record, value);
            }),
        }
    }

    /// A digest of the whole state: equal digests mean equal groups, bits and offsets.
    pub fn digest(&self) -> u64 {
        let mut h = Xxh3::new();
        h.update(&self.next_offset.to_le_bytes());
        h.update(&self.max_event_time.to_le_bytes());
        let c = self.counters;
        for n in [c.consumed, c.applied, c.skipped, c.late_dropped, c.late_updated] {
            h.update(&n.to_le_bytes());
        }
        for (key, windows) in &self.groups {
            h.update(&(key.len() as u64).to_le_bytes());
            h.update(key);
            for (start, cell) in windows {
                h.update(&start.to_le_bytes());
                h.update(&cell.end_ms.to_le_bytes());
                hash_agg(&mut h, &cell.agg);
            }
        }
        h.digest()
    }
}

fn hash_agg(h: &mut Xxh3, agg: &AggState) {
    match agg {
        AggState::Count(n) => {
            h.update(&[0]);
            h.update(&n.to_le_bytes());
        }
        AggState::Sum(v) | AggState::Min(v) | AggState::Max(v) => {
            h.update(&[1]);
            h.update(&v.to_bits().to_le_bytes());
        }
        AggState::Mean { sum, count } => {
            h.update(&[2]);
            h.update(&sum.to_bits().to_le_bytes());
            h.update(&count.to_le_bytes());
        }
        AggState::Hll(bytes) | AggState::Custom(bytes) => {
            h.update(&[3]);
            h.update(&(bytes.len() as u64).to_le_bytes());
            h.update(bytes);
        }
    }
}

/// Merges the record into the key's sessions: a session is a run of events closer than `gap_ms`;
/// the new event's session swallows every existing one it now touches. No allocation.
fn apply_session(
    sessions: &mut BTreeMap<i64, Cell>,
    aggregate: &Aggregate,
    record: &RecordRef<'_>,
    value: Option<f64>,
    ts: i64,
    gap_ms: i64,
) {
    let mut start = ts;
    let mut end = ts.saturating_add(gap_ms);
    let mut agg = aggregate.init();
    aggregate.update(&mut agg, record, value);
    loop {
        // The latest session starting at or before our end; sessions are disjoint and ordered, so
        // if it does not reach our start, no earlier one does.
        let hit =
            sessions.range(..=end).next_back().filter(|(_, c)| c.end_ms >= start).map(|(s, _)| *s);
        let Some(hit) = hit else { break };
        let cell = sessions.remove(&hit).expect("the key was just found");
        start = start.min(hit);
        end = end.max(cell.end_ms);
        // Merge order fixed (older state into the new one) for deterministic bits.
        let mut merged = cell.agg;
        aggregate.merge(&mut merged, &agg);
        agg = merged;
    }
    sessions.insert(start, Cell { agg, end_ms: end });
}

const CHECKPOINT_MAGIC: u32 = u32::from_le_bytes(*b"KAPC");
const CHECKPOINT_FORMAT: u16 = 1;
const CHECKPOINT_HEADER: usize = 32;

/// Groups as a checkpoint stores them: key, then (window start, cell) in order.
type StoredGroups = Vec<(Vec<u8>, Vec<(i64, Cell)>)>;

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
struct CheckpointData {
    view: String,
    version: u32,
    partition: u32,
    next_offset: u64,
    max_event_time: i64,
    counters: Counters,
    groups: StoredGroups,
}

/// A checkpoint file: 32-byte header (magic, format, payload length, xxh3 of the payload) and the
/// rkyv archive of the state. Written atomically (temp, fsync, rename, fsync dir).
pub fn write_checkpoint(
    path: &Path,
    view: &str,
    version: u32,
    partition: u32,
    state: &PartitionState,
) -> Result<(), Error> {
    let data = CheckpointData {
        view: view.to_string(),
        version,
        partition,
        next_offset: state.next_offset,
        max_event_time: state.max_event_time,
        counters: state.counters,
        groups: state
            .groups
            .iter()
            .map(|(k, w)| (k.clone(), w.iter().map(|(s, c)| (*s, c.clone())).collect()))
            .collect(),
    };
    let payload = rkyv::to_bytes::<rancor::Error>(&data).map_err(|e| Error::Meta {
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
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| Error::Io {
            op: "create dir",
            path: dir.to_path_buf(),
            source: e,
        })?;
    }
    kappa_storage::io::write_file_atomic(path, &bytes)?;
    Ok(())
}

/// Reads a checkpoint, verifying its checksum and archive; any damage is an error naming the file.
pub fn read_checkpoint(path: &Path) -> Result<PartitionState, Error> {
    let corrupt = |reason: String| Error::Meta { path: path.to_path_buf(), reason };
    let bytes = std::fs::read(path).map_err(|e| Error::Io {
        op: "read",
        path: path.to_path_buf(),
        source: e,
    })?;
    if bytes.len() < CHECKPOINT_HEADER || bytes[0..4] != CHECKPOINT_MAGIC.to_le_bytes() {
        return Err(corrupt("not a checkpoint (bad magic)".into()));
    }
    if u16::from_le_bytes([bytes[4], bytes[5]]) != CHECKPOINT_FORMAT {
        return Err(corrupt("unknown checkpoint format".into()));
    }
    let mut len = [0u8; 8];
    len.copy_from_slice(&bytes[8..16]);
    let len = u64::from_le_bytes(len) as usize;
    let mut sum = [0u8; 8];
    sum.copy_from_slice(&bytes[16..24]);
    if bytes.len() != CHECKPOINT_HEADER + len {
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
    let data = rkyv::from_bytes::<CheckpointData, rancor::Error>(&payload)
        .map_err(|e| corrupt(format!("archive does not validate: {e}")))?;
    let mut state = PartitionState::new(data.next_offset);
    state.max_event_time = data.max_event_time;
    state.counters = data.counters;
    state.groups = data.groups.into_iter().map(|(k, w)| (k, w.into_iter().collect())).collect();
    Ok(state)
}

#[cfg(test)]
mod tests;
