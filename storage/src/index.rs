//! The sparse per-segment index: offset -> byte position, and event time -> offset.
//!
//! One entry per frame that starts at least `index_interval_bytes` after the previous entry (and
//! always one for the first frame). Each entry holds the frame's offset (relative to the segment
//! base), its byte position, and the maximum timestamp of every frame *before* it. Offset lookups
//! find the last entry at or below the target; time lookups find the last entry whose preceding
//! maximum is below the target, because every record before that entry is older than the target.
//! Either way a read scans at most one interval of frames.
//!
//! The index of the active segment lives in memory and is rebuilt by the recovery scan. When a
//! segment is sealed its index is written to `<base>.index`:
//!
//! ```text
//!  0 magic "KAPI" u32 | 4 version u16 | 6 reserved u16 | 8 entry_count u32 | 12 interval u32
//! 16 base_offset u64  | 24 next_offset u64 | 32 size_bytes u64 | 40 max_timestamp i64
//! 48 append_time i64  | 56 checksum u64 = xxh3_64_with_seed(entries, xxh3_64(header[0..56]))
//! 64 entries, 16 bytes each: rel_offset u32 | position u32 | max_timestamp_before i64
//! ```
//!
//! Version 2 added `append_time` (the wall time of the segment's newest append, as its caller
//! gave it; `i64::MIN` when unknown) in what version 1 kept as a reserved zero. Version 1 files
//! are still read, with the append time unknown. An index rebuilt by a scan takes the append
//! time from the frames (version 3 frames carry theirs, see `format`).

use std::path::Path;

use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

use crate::Error;

const INDEX_MAGIC: u32 = u32::from_le_bytes(*b"KAPI");
const INDEX_VERSION: u16 = 2;
/// The first version, without the append time; still read.
const INDEX_VERSION_1: u16 = 1;
const INDEX_HEADER_SIZE: usize = 64;
const INDEX_ENTRY_SIZE: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexEntry {
    pub rel_offset: u32,
    pub position: u32,
    pub max_timestamp_before: i64,
}

/// The index and summary of one segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentIndex {
    pub base_offset: u64,
    /// The offset after the last record in the segment.
    pub next_offset: u64,
    /// Bytes of valid frames (the position after the last frame).
    pub size_bytes: u64,
    /// The largest record timestamp in the segment (`i64::MIN` when empty).
    pub max_timestamp: i64,
    /// The wall time (ms) of the newest append to the segment, as the appender gave it: what age
    /// retention measures. A scan takes it from the frames (version 3 frames carry it);
    /// `i64::MIN` when unknown (a version 1 index file, or frames older than version 3).
    pub append_time_ms: i64,
    pub entries: Vec<IndexEntry>,
    interval_bytes: u32,
}

impl SegmentIndex {
    pub fn new(base_offset: u64, interval_bytes: u32) -> Self {
        SegmentIndex {
            base_offset,
            next_offset: base_offset,
            size_bytes: 0,
            max_timestamp: i64::MIN,
            append_time_ms: i64::MIN,
            entries: Vec::new(),
            interval_bytes,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.next_offset == self.base_offset
    }

    /// Accounts for a frame appended at `position` (which must be the current size).
    pub fn push_frame(
        &mut self,
        base_offset: u64,
        record_count: u32,
        max_timestamp: i64,
        frame_len: u32,
    ) {
        debug_assert_eq!(base_offset, self.next_offset);
        let position = self.size_bytes;
        let due = match self.entries.last() {
            None => true,
            Some(last) => position >= u64::from(last.position) + u64::from(self.interval_bytes),
        };
        if due {
            self.entries.push(IndexEntry {
                rel_offset: (base_offset - self.base_offset) as u32,
                position: position as u32,
                max_timestamp_before: self.max_timestamp,
            });
        }
        self.next_offset = base_offset + u64::from(record_count);
        self.size_bytes += u64::from(frame_len);
        self.max_timestamp = self.max_timestamp.max(max_timestamp);
    }

    /// The time age retention measures: the append time, or `None` when it is unknown (a
    /// version 1 index file, frames older than version 3). Never the records' timestamps: those
    /// are producers' event times, and a producer replaying old events must not get its records
    /// deleted the moment they land. A segment of unknown age is kept by age retention (size
    /// retention still applies): never deleted earlier than its append time would allow.
    pub fn retention_time_ms(&self) -> Option<i64> {
        (self.append_time_ms != i64::MIN).then_some(self.append_time_ms)
    }

    /// The position of the frame holding `offset`, or of an earlier frame close to it.
    pub fn position_for_offset(&self, offset: u64) -> u64 {
        let rel = offset.saturating_sub(self.base_offset);
        let after = self.entries.partition_point(|e| u64::from(e.rel_offset) <= rel);
        if after == 0 {
            0
        } else {
            u64::from(self.entries[after - 1].position)
        }
    }

    /// A position from which a scan finds the first record with timestamp >= `timestamp`.
    pub fn position_for_timestamp(&self, timestamp: i64) -> u64 {
        let after = self.entries.partition_point(|e| e.max_timestamp_before < timestamp);
        if after == 0 {
            0
        } else {
            u64::from(self.entries[after - 1].position)
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut bytes =
            Vec::with_capacity(INDEX_HEADER_SIZE + self.entries.len() * INDEX_ENTRY_SIZE);
        bytes.extend_from_slice(&INDEX_MAGIC.to_le_bytes());
        bytes.extend_from_slice(&INDEX_VERSION.to_le_bytes());
        bytes.extend_from_slice(&0u16.to_le_bytes());
        bytes.extend_from_slice(&(self.entries.len() as u32).to_le_bytes());
        bytes.extend_from_slice(&self.interval_bytes.to_le_bytes());
        bytes.extend_from_slice(&self.base_offset.to_le_bytes());
        bytes.extend_from_slice(&self.next_offset.to_le_bytes());
        bytes.extend_from_slice(&self.size_bytes.to_le_bytes());
        bytes.extend_from_slice(&self.max_timestamp.to_le_bytes());
        bytes.extend_from_slice(&self.append_time_ms.to_le_bytes());
        let checksum_at = bytes.len();
        bytes.extend_from_slice(&0u64.to_le_bytes());
        for entry in &self.entries {
            bytes.extend_from_slice(&entry.rel_offset.to_le_bytes());
            bytes.extend_from_slice(&entry.position.to_le_bytes());
            bytes.extend_from_slice(&entry.max_timestamp_before.to_le_bytes());
        }
        let checksum = xxh3_64_with_seed(&bytes[INDEX_HEADER_SIZE..], xxh3_64(&bytes[..56]));
        bytes[checksum_at..checksum_at + 8].copy_from_slice(&checksum.to_le_bytes());
        bytes
    }

    /// Decodes an index file; `path` only names the file in errors.
    pub fn decode(path: &Path, bytes: &[u8]) -> Result<Self, Error> {
        let corrupt = |reason| Error::CorruptIndex { path: path.to_path_buf(), reason };
        if bytes.len() < INDEX_HEADER_SIZE {
            return Err(corrupt("shorter than its header"));
        }
        let u32_at = |at: usize| {
            u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
        };
        let u64_at = |at: usize| {
            let mut v = [0u8; 8];
            v.copy_from_slice(&bytes[at..at + 8]);
            u64::from_le_bytes(v)
        };
        if u32_at(0) != INDEX_MAGIC {
            return Err(corrupt("bad magic"));
        }
        let version = u16::from_le_bytes([bytes[4], bytes[5]]);
        if version != INDEX_VERSION && version != INDEX_VERSION_1 {
            return Err(corrupt("unknown index version"));
        }
        let count = u32_at(8) as usize;
        if bytes.len() != INDEX_HEADER_SIZE + count * INDEX_ENTRY_SIZE {
            return Err(corrupt("length does not match entry count"));
        }
        let checksum = xxh3_64_with_seed(&bytes[INDEX_HEADER_SIZE..], xxh3_64(&bytes[..56]));
        if checksum != u64_at(56) {
            return Err(corrupt("checksum mismatch"));
        }
        let mut index = SegmentIndex::new(u64_at(16), u32_at(12).max(1));
        index.next_offset = u64_at(24);
        index.size_bytes = u64_at(32);
        index.max_timestamp = u64_at(40) as i64;
        index.append_time_ms =
            if version == INDEX_VERSION_1 { i64::MIN } else { u64_at(48) as i64 };
        for i in 0..count {
            let at = INDEX_HEADER_SIZE + i * INDEX_ENTRY_SIZE;
            index.entries.push(IndexEntry {
                rel_offset: u32_at(at),
                position: u32_at(at + 4),
                max_timestamp_before: u64_at(at + 8) as i64,
            });
        }
        if index.next_offset < index.base_offset {
            return Err(corrupt("next offset below base offset"));
        }
        Ok(index)
    }
}

#[cfg(test)]
mod tests;
