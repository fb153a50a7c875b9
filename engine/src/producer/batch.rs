//! The producer's record layouts: `ProducerRecord` (owned, one allocation per field) and
//! `ProducerBatch` (records packed into one buffer), and `Stamped`, which lets the log's encoder
//! read either in place. Separate from the handle (`producer`) because the shards read these
//! layouts too: the accumulator stages records out of one batch into another.

use kappa_storage::{Header, Records};

/// A record as a producer owns it before it reaches a shard.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ProducerRecord {
    pub key: Option<Vec<u8>>,
    pub value: Vec<u8>,
    /// Event time in ms since the epoch; `None` means append time (the engine's `Clock`).
    pub timestamp: Option<i64>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
}

impl ProducerRecord {
    pub fn new(value: impl Into<Vec<u8>>) -> Self {
        ProducerRecord { value: value.into(), ..ProducerRecord::default() }
    }
    pub fn key(mut self, key: impl Into<Vec<u8>>) -> Self {
        self.key = Some(key.into());
        self
    }
    pub fn timestamp(mut self, timestamp_ms: i64) -> Self {
        self.timestamp = Some(timestamp_ms);
        self
    }
    pub fn header(mut self, key: impl Into<String>, value: Option<Vec<u8>>) -> Self {
        self.headers.push((key.into(), value));
        self
    }
}

/// Records packed into one buffer: one allocation per batch instead of one per record, and the
/// shard reads keys and values straight out of it. All of a batch's records that route to the same
/// partition stay one stored batch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProducerBatch {
    data: Vec<u8>,
    entries: Vec<BatchEntry>,
    headers: Vec<HeaderEntry>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct BatchEntry {
    key: Option<(u32, u32)>,
    value: (u32, u32),
    timestamp: Option<i64>,
    /// Start and count in `headers`.
    headers: (u32, u32),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct HeaderEntry {
    key: (u32, u32),
    value: Option<(u32, u32)>,
}

impl ProducerBatch {
    pub fn new() -> Self {
        ProducerBatch::default()
    }

    /// Room for `records` records of `bytes` key and value bytes in all.
    pub fn with_capacity(records: usize, bytes: usize) -> Self {
        ProducerBatch {
            data: Vec::with_capacity(bytes),
            entries: Vec::with_capacity(records),
            headers: Vec::new(),
        }
    }

    fn put(&mut self, bytes: &[u8]) -> (u32, u32) {
        let start = self.data.len() as u32;
        self.data.extend_from_slice(bytes);
        (start, bytes.len() as u32)
    }

    /// Adds a record; `timestamp` `None` means append time.
    pub fn push(&mut self, key: Option<&[u8]>, value: &[u8], timestamp: Option<i64>) {
        self.push_with_headers(key, value, timestamp, &[]);
    }

    pub fn push_with_headers(
        &mut self,
        key: Option<&[u8]>,
        value: &[u8],
        timestamp: Option<i64>,
        headers: &[(&str, Option<&[u8]>)],
    ) {
        let key = key.map(|k| self.put(k));
        let value = self.put(value);
        let start = self.headers.len() as u32;
        for (k, v) in headers {
            let key = self.put(k.as_bytes());
            let value = v.map(|v| self.put(v));
            self.headers.push(HeaderEntry { key, value });
        }
        self.entries.push(BatchEntry {
            key,
            value,
            timestamp,
            headers: (start, headers.len() as u32),
        });
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Key, value and header bytes of all records.
    pub(crate) fn data_len(&self) -> usize {
        self.data.len()
    }

    /// Key, value and header bytes of record `index`.
    pub(crate) fn size_of(&self, index: usize) -> usize {
        let entry = &self.entries[index];
        let (start, count) = entry.headers;
        let headers: u32 = self.headers[start as usize..(start + count) as usize]
            .iter()
            .map(|h| h.key.1 + h.value.map_or(0, |v| v.1))
            .sum();
        (entry.key.map_or(0, |k| k.1) + entry.value.1 + headers) as usize
    }

    /// Room for `records` more records of `bytes` more key, value and header bytes, so that
    /// pushing them does not grow the buffers step by step (the accumulator sizes a staged batch
    /// to what its partition's batches usually hold).
    pub(crate) fn reserve(&mut self, records: usize, bytes: usize) {
        self.data.reserve(bytes);
        self.entries.reserve(records);
    }

    /// The bytes its buffers hold (capacity, not length): what a spare staged batch keeps.
    pub(crate) fn footprint(&self) -> usize {
        self.data.capacity()
            + self.entries.capacity() * std::mem::size_of::<BatchEntry>()
            + self.headers.capacity() * std::mem::size_of::<HeaderEntry>()
    }

    /// Empties the batch, keeping its buffers (the accumulator reuses them).
    pub(crate) fn clear(&mut self) {
        self.data.clear();
        self.entries.clear();
        self.headers.clear();
    }

    /// Asks the CPU for the lines where the next record's bytes and entry go (the accumulator
    /// stages into thousands of batches; see `shard::accumulate::stage`).
    #[inline(always)]
    pub(crate) fn prefetch_ends(&self) {
        prefetch(self.data.as_ptr().wrapping_add(self.data.len()));
        prefetch(self.entries.as_ptr().wrapping_add(self.entries.len()));
    }

    /// Copies record `index` of `src` to the end of this batch (no allocation past growth).
    pub(crate) fn push_from(&mut self, src: &ProducerBatch, index: usize) {
        let entry = src.entries[index];
        let key = entry.key.map(|k| self.put(src.slice(k)));
        let value = self.put(src.slice(entry.value));
        let (start, count) = entry.headers;
        let first = self.headers.len() as u32;
        for h in &src.headers[start as usize..(start + count) as usize] {
            let key = self.put(src.slice(h.key));
            let value = h.value.map(|v| self.put(src.slice(v)));
            self.headers.push(HeaderEntry { key, value });
        }
        self.entries.push(BatchEntry {
            key,
            value,
            timestamp: entry.timestamp,
            headers: (first, count),
        });
    }

    fn slice(&self, (start, len): (u32, u32)) -> &[u8] {
        &self.data[start as usize..(start + len) as usize]
    }

    pub(super) fn key(&self, index: usize) -> Option<&[u8]> {
        self.entries[index].key.map(|r| self.slice(r))
    }

    /// The records as the log's encoder reads them (`PartitionLog::append_records`), with
    /// `now_ms` for those without a timestamp: what a shard appends, copied once.
    pub fn records_at(&self, now_ms: i64) -> Stamped<'_, ProducerBatch> {
        Stamped { records: self, now_ms }
    }

    /// The records at `indexes`, copied into a batch of their own.
    pub(super) fn subset(&self, indexes: &[usize]) -> ProducerBatch {
        let mut out = ProducerBatch::new();
        for &i in indexes {
            let entry = self.entries[i];
            let (start, count) = entry.headers;
            let headers: Vec<(&str, Option<&[u8]>)> = self.headers
                [start as usize..(start + count) as usize]
                .iter()
                .map(|h| {
                    (
                        std::str::from_utf8(self.slice(h.key)).unwrap_or(""),
                        h.value.map(|v| self.slice(v)),
                    )
                })
                .collect();
            out.push_with_headers(self.key(i), self.slice(entry.value), entry.timestamp, &headers);
        }
        out
    }
}

/// A payload as the log's encoder reads it (`kappa_storage::Records`), in place: a record without
/// a timestamp gets `now_ms`, the append time. Nothing is built per record between the producer's
/// bytes and the log's write buffer (`ProducerBatch::records_at`).
pub struct Stamped<'a, T: ?Sized> {
    pub(crate) records: &'a T,
    pub(crate) now_ms: i64,
}

impl Records for Stamped<'_, ProducerBatch> {
    fn count(&self) -> usize {
        self.records.entries.len()
    }
    #[inline]
    fn record(&self, index: usize) -> (i64, Option<&[u8]>, &[u8], usize) {
        let batch = self.records;
        let entry = &batch.entries[index];
        (
            entry.timestamp.unwrap_or(self.now_ms),
            entry.key.map(|k| batch.slice(k)),
            batch.slice(entry.value),
            entry.headers.1 as usize,
        )
    }
    fn header(&self, index: usize, header: usize) -> Header<'_> {
        let batch = self.records;
        let h = &batch.headers[batch.entries[index].headers.0 as usize + header];
        Header { key: batch.slice(h.key), value: h.value.map(|v| batch.slice(v)) }
    }
}

impl Records for Stamped<'_, [ProducerRecord]> {
    fn count(&self) -> usize {
        self.records.len()
    }
    #[inline]
    fn record(&self, index: usize) -> (i64, Option<&[u8]>, &[u8], usize) {
        let r = &self.records[index];
        (r.timestamp.unwrap_or(self.now_ms), r.key.as_deref(), &r.value, r.headers.len())
    }
    fn header(&self, index: usize, header: usize) -> Header<'_> {
        let (key, value) = &self.records[index].headers[header];
        Header { key: key.as_bytes(), value: value.as_deref() }
    }
}

/// Asks the CPU to bring the line holding `ptr` into its caches; it reads nothing (any address is
/// allowed, a dangling one included).
#[inline(always)]
pub(crate) fn prefetch<T>(ptr: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is a hint: it dereferences nothing and cannot fault.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(ptr.cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = ptr;
}

/// A record into a packed batch.
pub(super) fn push_record(batch: &mut ProducerBatch, record: &ProducerRecord) {
    let headers: Vec<(&str, Option<&[u8]>)> =
        record.headers.iter().map(|(k, v)| (k.as_str(), v.as_deref())).collect();
    batch.push_with_headers(record.key.as_deref(), &record.value, record.timestamp, &headers);
}

/// Records into one packed batch.
pub(super) fn pack(records: &[ProducerRecord]) -> ProducerBatch {
    let bytes = records.iter().map(|r| r.value.len() + r.key.as_ref().map_or(0, Vec::len)).sum();
    let mut batch = ProducerBatch::with_capacity(records.len(), bytes);
    for record in records {
        push_record(&mut batch, record);
    }
    batch
}
