//! The state of one view partition: groups keyed by (key, window start), the watermark, counters,
//! and the operator pipeline that folds records into it, and its digest. Its checkpoint file is in
//! `state/checkpoint.rs`, range folds for replay split over shards in `state/range.rs`.
//!
//! Everything here is deterministic: `BTreeMap` order, no clock, no randomness, records in offset
//! order. So a partition rebuilt by replay has the same groups, the same bits and the same digest as
//! the one maintained live.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::path::Path;

use kappa_storage::RecordRef;
use rkyv::rancor;
use rkyv::util::AlignedVec;
use xxhash_rust::xxh3::{xxh3_64, Xxh3};

use crate::operator::window::{EVENT_TIME_MAX, EVENT_TIME_MIN};
use crate::operator::{AggState, Aggregate, KeyBy, LatePolicy, Skip, Window};
use crate::view::def::{OnError, ViewDef};
use crate::Error;

/// One (key, window) group.
#[derive(Debug, Clone, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Cell {
    pub agg: AggState,
    /// Window end (exclusive); for sessions, the last event time plus the gap.
    pub end_ms: i64,
}

/// What the pipeline did with the records it consumed. Every consumed record is counted exactly
/// once in `applied` or in one skip cause; late counts are (record, window) pairs among `applied`.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize,
)]
pub struct Counters {
    pub consumed: u64,
    /// Records that reached the windows (kept by the filter, with a key and a value).
    pub applied: u64,
    /// Event time outside `[EVENT_TIME_MIN, EVENT_TIME_MAX]`; such records do not move the watermark.
    pub time_out_of_range: u64,
    /// Dropped by the view's filter.
    pub filtered: u64,
    /// No record key (or the key function gave none).
    pub no_key: u64,
    /// The map found no value (for JSON: no such field).
    pub no_field: u64,
    /// The map's field holds no number (a string, boolean, null, object or array).
    pub not_a_number: u64,
    /// The value is not well-formed JSON (`map_json`).
    pub not_json: u64,
    /// (record, window) pairs whose window was closed, left out (`LatePolicy::Drop`).
    pub late_dropped: u64,
    /// (record, window) pairs whose window was closed, folded in anyway (`LatePolicy::Update`).
    pub late_updated: u64,
    /// Records whose filter, key or map closure panicked, skipped under `OnError::Skip`.
    pub panicked: u64,
}

impl Counters {
    /// Records skipped for any cause (everything consumed but not applied).
    pub fn skipped(&self) -> u64 {
        self.time_out_of_range
            + self.filtered
            + self.no_key
            + self.no_field
            + self.not_a_number
            + self.not_json
            + self.panicked
    }

    fn all(&self) -> [u64; 11] {
        [
            self.consumed,
            self.applied,
            self.time_out_of_range,
            self.filtered,
            self.no_key,
            self.no_field,
            self.not_a_number,
            self.not_json,
            self.late_dropped,
            self.late_updated,
            self.panicked,
        ]
    }
}

pub type Groups = BTreeMap<Vec<u8>, BTreeMap<i64, Cell>>;

/// A record on which a view's user code panicked: where, in which step, and the panic message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Poison {
    pub offset: u64,
    /// `filter`, `key function`, `map` or `custom aggregate`.
    pub stage: &'static str,
    pub message: String,
}

/// Runs user code, turning a panic into its message. `AssertUnwindSafe`: the callers pass
/// closures that only read the record, or (a custom aggregate) whose state is discarded with the
/// failed version.
fn guarded<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|p| panic_message(&*p))
}

/// The text of a panic payload (`&str` or `String`, as `panic!` makes them).
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic with a non-text payload".to_string())
}

/// One partition of one view version.
#[derive(Debug, Clone, PartialEq)]
pub struct PartitionState {
    pub groups: Groups,
    /// The next offset to consume: everything before it is folded in.
    pub next_offset: u64,
    pub max_event_time: i64,
    pub counters: Counters,
    key: Vec<u8>,
    /// Only in a partial state that a replay range task folds (`range.rs`): per window end, the
    /// (record, window) pairs folded in that the range's own watermark did not close. Whether
    /// they were late depends on the event times before the range, known when it is merged.
    undecided: Option<BTreeMap<i64, u64>>,
}

impl PartitionState {
    pub fn new(next_offset: u64) -> Self {
        PartitionState {
            groups: BTreeMap::new(),
            next_offset,
            max_event_time: i64::MIN,
            counters: Counters::default(),
            key: Vec::new(),
            undecided: None,
        }
    }

    /// The largest in-range event time consumed minus the allowed lateness: windows ending at or
    /// before it are closed.
    pub fn watermark(&self, allowed_lateness_ms: i64) -> i64 {
        self.max_event_time.saturating_sub(allowed_lateness_ms)
    }

    /// Folds one record in (docs/semantics.md). No allocation unless the record opens a new
    /// group (a new key, window or session).
    ///
    /// User code (the filter, key and map closures, a custom aggregate) runs under
    /// `catch_unwind`, each call at the smallest scope that leaves the state whole: the closures
    /// only read the record (the key closure writes a scratch buffer cleared before each use), so
    /// a panic there leaves the groups untouched and `OnError::Skip` can count the record and go
    /// on. A panic inside the aggregate may leave a group half updated, so it is always an
    /// `Err(Poison)`, whatever the policy. On `Err` the record is consumed (`next_offset` is past
    /// it) and the caller fails the version.
    pub fn apply(&mut self, def: &ViewDef, record: &RecordRef<'_>) -> Result<(), Poison> {
        self.next_offset = record.offset() + 1;
        self.counters.consumed += 1;
        let ts = record.timestamp();
        if !(EVENT_TIME_MIN..=EVENT_TIME_MAX).contains(&ts) {
            self.counters.time_out_of_range += 1;
            return Ok(());
        }
        // Event time moves with every record the partition holds, whether or not this view uses
        // it: the watermark tracks the stream, not the view's selection of it.
        self.max_event_time = self.max_event_time.max(ts);
        let watermark = self.watermark(def.allowed_lateness_ms);
        if let Some(filter) = &def.filter {
            match guarded(|| filter(record)) {
                Ok(true) => {}
                Ok(false) => {
                    self.counters.filtered += 1;
                    return Ok(());
                }
                Err(message) => return self.user_panic(def, record, "filter", message),
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
            KeyBy::Derived(f) => {
                let key = &mut self.key;
                match guarded(|| f(record, key)) {
                    Ok(keyed) => keyed,
                    Err(message) => return self.user_panic(def, record, "key function", message),
                }
            }
            KeyBy::Json(path) => match path.key_into(record.value(), &mut self.key) {
                Ok(()) => true,
                Err(Skip::NotJson) => {
                    self.counters.not_json += 1;
                    return Ok(());
                }
                Err(Skip::NoField | Skip::NotANumber) => false,
            },
        };
        if !keyed {
            self.counters.no_key += 1;
            return Ok(());
        }
        let value = match &def.map {
            Some(map) => match guarded(|| map(record)) {
                Ok(Ok(v)) => Some(v),
                Ok(Err(skip)) => {
                    match skip {
                        Skip::NoField => self.counters.no_field += 1,
                        Skip::NotANumber => self.counters.not_a_number += 1,
                        Skip::NotJson => self.counters.not_json += 1,
                    }
                    return Ok(());
                }
                Err(message) => return self.user_panic(def, record, "map", message),
            },
            None => None,
        };
        if let Aggregate::Custom(_) = def.aggregate {
            // Only a custom aggregate runs user code here; the built-ins do not panic.
            guarded(|| self.fold(def, record, value, ts, watermark)).map_err(|message| Poison {
                offset: record.offset(),
                stage: "custom aggregate",
                message,
            })
        } else {
            self.fold(def, record, value, ts, watermark);
            Ok(())
        }
    }

    /// A panic in a filter, key or map closure: skip and count the record, or fail.
    fn user_panic(
        &mut self,
        def: &ViewDef,
        record: &RecordRef<'_>,
        stage: &'static str,
        message: String,
    ) -> Result<(), Poison> {
        match def.on_error {
            OnError::Skip => {
                self.counters.panicked += 1;
                Ok(())
            }
            OnError::Fail => Err(Poison { offset: record.offset(), stage, message }),
        }
    }

    /// Folds a record that passed the filter, has a key and a value into its group(s).
    fn fold(
        &mut self,
        def: &ViewDef,
        record: &RecordRef<'_>,
        value: Option<f64>,
        ts: i64,
        watermark: i64,
    ) {
        self.counters.applied += 1;
        if !self.groups.contains_key(self.key.as_slice()) {
            self.groups.insert(self.key.clone(), BTreeMap::new());
        }
        let counters = &mut self.counters;
        let undecided = &mut self.undecided;
        let windows = self.groups.get_mut(self.key.as_slice()).expect("inserted above");
        match def.window {
            Window::Session { gap_ms } => {
                let session = Session { aggregate: &def.aggregate, record, value, ts, gap_ms };
                session.apply(windows, counters, watermark, def.late);
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
                } else if let Some(undecided) = undecided {
                    *undecided.entry(end).or_insert(0) += 1;
                }
                let cell = windows
                    .entry(start)
                    .or_insert_with(|| Cell { agg: def.aggregate.init(), end_ms: end });
                def.aggregate.update(&mut cell.agg, record, value);
            }),
        }
        if windows.is_empty() {
            // A new key whose only record was late and dropped: it has no group.
            self.groups.remove(self.key.as_slice());
        }
    }

    /// A digest of the whole state: equal digests mean equal groups, bits and offsets.
    pub fn digest(&self) -> u64 {
        let mut h = Xxh3::new();
        h.update(&self.next_offset.to_le_bytes());
        h.update(&self.max_event_time.to_le_bytes());
        for n in self.counters.all() {
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
        AggState::Min(v) | AggState::Max(v) => {
            h.update(&[1]);
            h.update(&v.to_bits().to_le_bytes());
        }
        AggState::Sum(sum) => {
            // The canonical bytes: the same value, however its partial sums were merged.
            h.update(&[4]);
            sum.write_canonical(|bytes| h.update(bytes));
        }
        AggState::Mean { sum, count } => {
            h.update(&[2]);
            sum.write_canonical(|bytes| h.update(bytes));
            h.update(&count.to_le_bytes());
        }
        AggState::Hll(bytes) | AggState::Custom(bytes) => {
            h.update(&[3]);
            h.update(&(bytes.len() as u64).to_le_bytes());
            h.update(bytes);
        }
    }
}

/// One record on its way into a key's sessions.
struct Session<'a, 'r> {
    aggregate: &'a Aggregate,
    record: &'a RecordRef<'r>,
    value: Option<f64>,
    ts: i64,
    gap_ms: i64,
}

impl Session<'_, '_> {
    /// Merges the record into the key's sessions: the record's interval `[ts, ts + gap)` joins
    /// every session it overlaps (half-open: touching is not overlapping), and they become one.
    /// The record is late only when that merged session would end at or before the watermark,
    /// so a record touching a session that is still open is always merged in. Sessions of a key
    /// are disjoint, so the ones overlapping the record are a run ending at the last session that
    /// starts before `ts + gap`. No allocation unless the record opens a new session.
    fn apply(
        self,
        sessions: &mut BTreeMap<i64, Cell>,
        counters: &mut Counters,
        watermark: i64,
        late: LatePolicy,
    ) {
        let Session { aggregate, record, value, ts, gap_ms } = self;
        let end = ts + gap_ms;
        let mut first = None;
        let mut merged_end = end;
        let mut touched = 0usize;
        for (start, cell) in sessions.range(..end).rev() {
            if cell.end_ms <= ts {
                break;
            }
            first = Some(*start);
            merged_end = merged_end.max(cell.end_ms);
            touched += 1;
        }
        if merged_end <= watermark {
            match late {
                LatePolicy::Drop => {
                    counters.late_dropped += 1;
                    return;
                }
                LatePolicy::Update => counters.late_updated += 1,
            }
        }
        let Some(first) = first else {
            let mut agg = aggregate.init();
            aggregate.update(&mut agg, record, value);
            sessions.insert(ts, Cell { agg, end_ms: end });
            return;
        };
        // Fold the later sessions into the earliest one, oldest first (a fixed order keeps the
        // bits deterministic), then the record; in place, so extending a session allocates
        // nothing.
        for _ in 1..touched {
            let next = sessions
                .range((Bound::Excluded(first), Bound::Unbounded))
                .next()
                .map(|(s, _)| *s)
                .expect("a touched session follows");
            let later = sessions.remove(&next).expect("found above");
            let cell = sessions.get_mut(&first).expect("found above");
            aggregate.merge(&mut cell.agg, &later.agg);
        }
        let cell = sessions.get_mut(&first).expect("found above");
        aggregate.update(&mut cell.agg, record, value);
        cell.end_ms = merged_end;
        if ts < first {
            // The record starts the session earlier: its start is its key in the map.
            let cell = sessions.remove(&first).expect("found above");
            sessions.insert(ts, cell);
        }
    }
}

mod checkpoint;
pub use checkpoint::{
    checkpoint_next_offset, decode_checkpoint, decode_stored, encode_checkpoint,
    encode_old_checkpoint, read_checkpoint, write_checkpoint, CheckpointOf, Snapshot, Step, Stored,
};

#[cfg(test)]
mod tests;

mod range;
pub use range::{splittable, MergeError, PendingMerge, RangeFold};
