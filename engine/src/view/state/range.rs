//! Folding one range of a partition's history on its own and merging the partial state into the
//! state of everything before it: what lets a rebuild split one big partition over every core.
//!
//! The merge is exact (the merged state equals a serial fold, digest and bits) under two
//! conditions, checked by `splittable`:
//! * the aggregate merges bit for bit in any split (every built-in one: counts add, `ExactSum`
//!   adds exactly, `Min`/`Max` take a total order, HyperLogLog registers their maximum). A custom
//!   aggregate's `mergeable` promises an exact combination of partial results, not bits equal to
//!   a serial fold, so custom aggregates replay whole partitions.
//! * the window is not a session window. A record's session depends on every earlier record of
//!   its key (joins and merges happen in offset order, and lateness is judged on the merged
//!   session), so sessions replay whole partitions.
//!
//! Lateness for `None`, tumbling and hopping windows: the watermark before record `i` of a range
//! is `max(P, m_i) - lateness`, where `P` is the largest event time before the range (unknown
//! while the range folds) and `m_i` the largest in the range up to `i`. A window ending at `end`
//! is closed for the record when `end <= m_i - lateness` (decided in the range, as serially) or
//! `end <= P - lateness`. The second condition depends only on the window, the same for every
//! record of a (key, window) cell: so the range folds every pair its own watermark leaves open
//! and counts them per window end (`undecided`); the merge, knowing `P`, finds the windows the
//! prefix closed and either drops their cells whole (`LatePolicy::Drop`: the cells hold nothing
//! else, pairs late within the range were never folded) or keeps them (`Update`), and moves
//! their undecided pairs to the late counters. Everything else (counters, the largest event
//! time, groups) adds or takes the maximum.

use std::collections::BTreeMap;

use crate::operator::{Aggregate, LatePolicy, Window};
use crate::view::def::ViewDef;

use super::{Counters, PartitionState};

/// Why a partial state cannot merge.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MergeError {
    #[error("the range starts at offset {range_from}, the state ends at {state_next}")]
    NotContiguous { state_next: u64, range_from: u64 },
    #[error("the view cannot be split by range: {0}")]
    NotSplittable(&'static str),
}

/// A range of one partition folded on its own, from an empty state.
#[derive(Debug, Clone)]
pub struct RangeFold {
    /// The first offset of the range.
    pub from: u64,
    pub state: PartitionState,
}

/// Whether views of this definition may replay a partition split into ranges; `Err` says why
/// not (such a view replays whole partitions).
pub fn splittable(def: &ViewDef) -> Result<(), &'static str> {
    if matches!(def.aggregate, Aggregate::Custom(_)) {
        return Err("a custom aggregate's merge is not known to equal a serial fold bit for bit");
    }
    if matches!(def.window, Window::Session { .. }) {
        return Err("sessions depend on every earlier record of their key");
    }
    Ok(())
}

impl RangeFold {
    /// An empty partial state for the range starting at `from`.
    pub fn new(from: u64) -> RangeFold {
        let mut state = PartitionState::new(from);
        state.undecided = Some(BTreeMap::new());
        RangeFold { from, state }
    }

    /// The offset after the last record folded.
    pub fn next_offset(&self) -> u64 {
        self.state.next_offset
    }
}

/// A range's partial state being merged in steps (`PartitionState::begin_merge`): the groups
/// not merged yet, and what the merge adds once they all are. Between steps the state holds
/// some of the range's groups but still its own `next_offset`, counters and event time, so
/// nothing that reads those (retention floors, progress, the next range's contiguity check)
/// sees the range as merged before it is.
pub struct PendingMerge {
    groups: std::collections::btree_map::IntoIter<Vec<u8>, BTreeMap<i64, super::Cell>>,
    rest: PartitionState,
}

impl PendingMerge {
    /// The range's keys not merged yet.
    pub fn groups_left(&self) -> usize {
        self.groups.len()
    }
}

impl PartitionState {
    /// Merges the partial state of the range that starts where this state ends. The result
    /// equals folding the range's records into this state one by one (module doc).
    pub fn merge_range(&mut self, def: &ViewDef, range: RangeFold) -> Result<(), MergeError> {
        let mut pending = self.begin_merge(def, range)?;
        while !self.merge_step(def, &mut pending, usize::MAX) {}
        self.finish_merge(pending);
        Ok(())
    }

    /// Checks that `range` merges here and decides its late records; its groups then merge
    /// with `merge_step` (as many keys a step as the caller allows, so a large range never
    /// holds a shard) and `finish_merge` completes it. The state must not fold records in
    /// between: the range's groups are only half in.
    pub fn begin_merge(&self, def: &ViewDef, range: RangeFold) -> Result<PendingMerge, MergeError> {
        splittable(def).map_err(MergeError::NotSplittable)?;
        if range.from != self.next_offset {
            return Err(MergeError::NotContiguous {
                state_next: self.next_offset,
                range_from: range.from,
            });
        }
        let RangeFold { state: mut part, .. } = range;
        let undecided = part.undecided.take().unwrap_or_default();
        // Windows the records before the range closed (`None` never closes: its end is i64::MAX).
        let closed = self.watermark(def.allowed_lateness_ms);
        let late: u64 = undecided.range(..=closed).map(|(_, n)| n).sum();
        if late > 0 {
            match def.late {
                LatePolicy::Update => part.counters.late_updated += late,
                LatePolicy::Drop => {
                    part.counters.late_dropped += late;
                    for windows in part.groups.values_mut() {
                        windows.retain(|_, cell| cell.end_ms > closed);
                    }
                    part.groups.retain(|_, windows| !windows.is_empty());
                }
            }
        }
        let groups = std::mem::take(&mut part.groups).into_iter();
        Ok(PendingMerge { groups, rest: part })
    }

    /// Merges up to `keys` more of the range's keys; true once all are merged.
    pub fn merge_step(&mut self, def: &ViewDef, pending: &mut PendingMerge, keys: usize) -> bool {
        for (key, windows) in pending.groups.by_ref().take(keys) {
            match self.groups.get_mut(&key) {
                None => {
                    self.groups.insert(key, windows);
                }
                Some(mine) => {
                    for (start, cell) in windows {
                        match mine.get_mut(&start) {
                            Some(have) => def.aggregate.merge(&mut have.agg, &cell.agg),
                            None => {
                                mine.insert(start, cell);
                            }
                        }
                    }
                }
            }
        }
        pending.groups.len() == 0
    }

    /// Completes a merge whose groups are all in: the counters, the event time and the offset.
    pub fn finish_merge(&mut self, pending: PendingMerge) {
        debug_assert_eq!(pending.groups.len(), 0, "finish_merge before every group merged");
        let part = pending.rest;
        self.max_event_time = self.max_event_time.max(part.max_event_time);
        // Exhaustive, so a new counter cannot be forgotten here.
        let Counters {
            consumed,
            applied,
            time_out_of_range,
            filtered,
            no_key,
            no_field,
            not_a_number,
            not_json,
            late_dropped,
            late_updated,
            panicked,
        } = part.counters;
        let c = &mut self.counters;
        c.consumed += consumed;
        c.applied += applied;
        c.time_out_of_range += time_out_of_range;
        c.filtered += filtered;
        c.no_key += no_key;
        c.no_field += no_field;
        c.not_a_number += not_a_number;
        c.not_json += not_json;
        c.late_dropped += late_dropped;
        c.late_updated += late_updated;
        c.panicked += panicked;
        self.next_offset = part.next_offset;
    }
}

#[cfg(test)]
mod tests;
