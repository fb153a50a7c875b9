//! A partition's staged records in one buffer: the accumulator's staged batch.
//!
//! Why one buffer: with random keys over thousands of partitions each staged record lands in a
//! different staged batch, at a tail no cache holds. Kept as a `ProducerBatch` (bytes, a 48-byte
//! entry per record, and header entries), a record wrote to two such tails besides its slice's;
//! here it writes a 24-byte header and its bytes to one. `cargo bench -p kappa-engine --bench
//! staging` models the difference: one stream per partition took 0.60-0.63 of the time of the
//! separate vectors (paired rounds, 500 and 2,000 partitions).
//!
//! Layout of a record: a fixed header (key length or `NO_KEY`, value length, header count,
//! flags, timestamp), the key, the value, then per header its key length, its value length (or
//! `NO_VALUE`), its key and its value. The log's encoder reads the records in place
//! (`StampedStaged`, through `starts`, built once at flush): the bytes are copied once more, into
//! the log's write buffer, as a `ProducerBatch`'s are.

use kappa_storage::{Header, Records};

use crate::producer::ProducerBatch;

/// Bytes of a record's fixed header.
const HEADER: usize = 24;
/// A key length that means "no key" (a key of `u32::MAX` bytes is over every batch limit).
const NO_KEY: u32 = u32::MAX;
/// A header value length that means "no value".
const NO_VALUE: u32 = u32::MAX;
/// Flag: the record carries its own timestamp (otherwise it gets the append time).
const HAS_TIMESTAMP: u32 = 1;

/// Records of one partition waiting to be appended together.
#[derive(Debug, Default)]
pub(crate) struct StagedRecords {
    buf: Vec<u8>,
    /// Where each record starts in `buf`: built by `index` before the log reads the records.
    starts: Vec<u32>,
    count: usize,
    /// Key, value and header bytes of the records (what `ProducerBatch::size_of` counts).
    record_bytes: usize,
}

fn word(buf: &[u8], at: usize) -> u32 {
    let mut bytes = [0u8; 4];
    bytes.copy_from_slice(&buf[at..at + 4]);
    u32::from_le_bytes(bytes)
}

impl StagedRecords {
    pub(crate) fn len(&self) -> usize {
        self.count
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Key, value and header bytes of all records (the accumulator's bound counts these).
    pub(crate) fn data_len(&self) -> usize {
        self.record_bytes
    }

    /// Room for `records` more records of `bytes` key, value and header bytes in all.
    pub(crate) fn reserve(&mut self, records: usize, bytes: usize) {
        self.buf.reserve(bytes + records * HEADER);
    }

    /// The bytes its buffers hold (capacity, not length): what a spare staged batch keeps.
    pub(crate) fn footprint(&self) -> usize {
        self.buf.capacity() + self.starts.capacity() * std::mem::size_of::<u32>()
    }

    /// Empties it, keeping its buffers (the accumulator reuses them).
    pub(crate) fn clear(&mut self) {
        self.buf.clear();
        self.starts.clear();
        self.count = 0;
        self.record_bytes = 0;
    }

    /// Copies record `index` of `src` to the end.
    pub(crate) fn push_from(&mut self, src: &ProducerBatch, index: usize) {
        let (timestamp, key, value, headers) = src.staging_view(index);
        let start = self.buf.len();
        let mut header = [0u8; HEADER];
        header[0..4].copy_from_slice(&key.map_or(NO_KEY, |k| k.len() as u32).to_le_bytes());
        header[4..8].copy_from_slice(&(value.len() as u32).to_le_bytes());
        header[8..12].copy_from_slice(&(headers as u32).to_le_bytes());
        header[12..16]
            .copy_from_slice(&(if timestamp.is_some() { HAS_TIMESTAMP } else { 0 }).to_le_bytes());
        header[16..24].copy_from_slice(&timestamp.unwrap_or(0).to_le_bytes());
        self.buf.extend_from_slice(&header);
        let mut bytes = value.len();
        if let Some(key) = key {
            self.buf.extend_from_slice(key);
            bytes += key.len();
        }
        self.buf.extend_from_slice(value);
        for h in 0..headers {
            let Header { key, value } = src.header_at(index, h);
            self.buf.extend_from_slice(&(key.len() as u32).to_le_bytes());
            self.buf.extend_from_slice(&value.map_or(NO_VALUE, |v| v.len() as u32).to_le_bytes());
            self.buf.extend_from_slice(key);
            bytes += key.len();
            if let Some(value) = value {
                self.buf.extend_from_slice(value);
                bytes += value.len();
            }
        }
        debug_assert!(start <= u32::MAX as usize, "a staged batch is bounded by batch_size");
        self.count += 1;
        self.record_bytes += bytes;
    }

    /// Finds where each record starts (one pass, front to back): before the log reads them.
    pub(crate) fn index(&mut self) {
        self.starts.clear();
        self.starts.reserve(self.count);
        let mut at = 0;
        while at < self.buf.len() {
            self.starts.push(at as u32);
            let (key, value, headers) = self.lengths(at);
            at += HEADER + key + value;
            for _ in 0..headers {
                let (k, v) = (word(&self.buf, at) as usize, word(&self.buf, at + 4));
                at += 8 + k + if v == NO_VALUE { 0 } else { v as usize };
            }
        }
        debug_assert_eq!(self.starts.len(), self.count);
    }

    /// Key bytes (0 for none), value bytes and header count of the record at `at`.
    fn lengths(&self, at: usize) -> (usize, usize, usize) {
        let key = word(&self.buf, at);
        let key = if key == NO_KEY { 0 } else { key as usize };
        (key, word(&self.buf, at + 4) as usize, word(&self.buf, at + 8) as usize)
    }
}

/// Staged records as the log's encoder reads them: a record without a timestamp gets `now_ms`,
/// the append time (as `producer::Stamped`). `index` must have run since the last push.
pub(crate) struct StampedStaged<'a> {
    pub(crate) records: &'a StagedRecords,
    pub(crate) now_ms: i64,
}

impl Records for StampedStaged<'_> {
    fn count(&self) -> usize {
        debug_assert_eq!(self.records.starts.len(), self.records.count, "indexed");
        self.records.starts.len()
    }

    #[inline]
    fn record(&self, index: usize) -> (i64, Option<&[u8]>, &[u8], usize) {
        let staged = self.records;
        let at = staged.starts[index] as usize;
        let buf = &staged.buf;
        let key = word(buf, at);
        let value = word(buf, at + 4) as usize;
        let headers = word(buf, at + 8) as usize;
        let timestamp = if word(buf, at + 12) & HAS_TIMESTAMP != 0 {
            let mut bytes = [0u8; 8];
            bytes.copy_from_slice(&buf[at + 16..at + 24]);
            i64::from_le_bytes(bytes)
        } else {
            self.now_ms
        };
        let mut pos = at + HEADER;
        let key = if key == NO_KEY {
            None
        } else {
            let k = &buf[pos..pos + key as usize];
            pos += key as usize;
            Some(k)
        };
        (timestamp, key, &buf[pos..pos + value], headers)
    }

    fn header(&self, index: usize, header: usize) -> Header<'_> {
        let staged = self.records;
        let at = staged.starts[index] as usize;
        let (key, value, _) = staged.lengths(at);
        let buf = &staged.buf;
        let mut pos = at + HEADER + key + value;
        for _ in 0..header {
            let (k, v) = (word(buf, pos) as usize, word(buf, pos + 4));
            pos += 8 + k + if v == NO_VALUE { 0 } else { v as usize };
        }
        let (k, v) = (word(buf, pos) as usize, word(buf, pos + 4));
        let key = &buf[pos + 8..pos + 8 + k];
        let value = (v != NO_VALUE).then(|| &buf[pos + 8 + k..pos + 8 + k + v as usize]);
        Header { key, value }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every field of every record reads back as the producer's batch holds it: keys and no
    /// keys, empty values, headers with and without values, own timestamps and append time.
    #[test]
    fn staged_records_read_back_as_the_producer_batch_holds_them() {
        let mut src = ProducerBatch::new();
        src.push(Some(b"k1"), b"v1", Some(7));
        src.push(None, b"", None);
        src.push_with_headers(Some(b""), b"value", Some(-3), &[("a", Some(b"x")), ("b", None)]);
        src.push_with_headers(None, b"z", None, &[("", Some(b""))]);
        let mut staged = StagedRecords::default();
        for i in [2, 0, 3, 1] {
            staged.push_from(&src, i);
        }
        staged.index();
        let view = StampedStaged { records: &staged, now_ms: 99 };
        let reference = crate::producer::Stamped { records: &src, now_ms: 99 };
        assert_eq!(view.count(), 4);
        for (n, i) in [2, 0, 3, 1].into_iter().enumerate() {
            assert_eq!(view.record(n), reference.record(i), "record {i}");
            for h in 0..reference.record(i).3 {
                assert_eq!(view.header(n, h), reference.header(i, h), "record {i} header {h}");
            }
        }
        let bytes: usize = (0..src.len()).map(|i| src.size_of(i)).sum();
        assert_eq!(staged.data_len(), bytes);
        staged.clear();
        assert!(staged.is_empty());
        assert_eq!(staged.data_len(), 0);
    }
}
