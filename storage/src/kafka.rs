//! Kafka RecordBatch v2 bytes: the record layout stored inside every frame.
//!
//! The appliance speaks the Kafka wire protocol, and Kafka consumers fetch whole record batches. So
//! each stored batch keeps its records in RecordBatch v2 layout (magic 2, uncompressed, CRC32C from
//! the attributes to the end, base offset in bytes 0..8 which the CRC does not cover), and a fetch
//! can send the stored bytes unchanged.
//!
//! Why our own encoder rather than `kafka_protocol::records::RecordBatchEncoder`: that encoder takes
//! owned `Record` values (`Bytes`, an `IndexMap` of headers) and allocates per record, while this one
//! writes straight from borrowed slices into a reused buffer, and emits the per-record directory
//! (positions of key, value and headers) in the same pass. The format is small and fixed; a test
//! decodes our bytes with `kafka-protocol` to keep us honest.
//!
//! ```text
//!  0 baseOffset i64 | 8 batchLength i32 | 12 partitionLeaderEpoch i32 | 16 magic i8 (=2)
//! 17 crc u32 (CRC32C of bytes 21..) | 21 attributes i16 | 23 lastOffsetDelta i32
//! 27 baseTimestamp i64 | 35 maxTimestamp i64 | 43 producerId i64 | 51 producerEpoch i16
//! 53 baseSequence i32 | 57 recordCount i32 | 61 records...
//! record: length varint | attributes i8 | timestampDelta varlong | offsetDelta varint
//!         | keyLength varint (-1 = null) | key | valueLength varint (-1 = null) | value
//!         | headerCount varint | (headerKeyLength varint | key | headerValueLength varint | value)*
//! ```
//! Fixed fields are big-endian; varints are zigzag-encoded as in protobuf.

use crate::{Error, Limits};

/// Size of the fixed RecordBatch v2 header.
pub const BATCH_HEADER_SIZE: usize = 61;
/// Where the CRC32C coverage starts (the attributes field).
pub const CRC_START: usize = 21;
const MAGIC_V2: u8 = 2;

/// One header of a record: a UTF-8 key (by Kafka's convention) and optional value bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header<'a> {
    pub key: &'a [u8],
    pub value: Option<&'a [u8]>,
}

/// A record as a producer hands it to the log: borrowed, so appending copies it exactly once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record<'a> {
    /// Event time in milliseconds since the Unix epoch.
    pub timestamp: i64,
    pub key: Option<&'a [u8]>,
    pub value: &'a [u8],
    pub headers: &'a [Header<'a>],
}

impl<'a> Record<'a> {
    pub fn new(timestamp: i64, key: Option<&'a [u8]>, value: &'a [u8]) -> Self {
        Record { timestamp, key, value, headers: &[] }
    }

    /// The bytes this record contributes to the size limit: key, value and headers.
    pub fn size_bytes(&self) -> usize {
        self.key.map_or(0, <[u8]>::len)
            + self.value.len()
            + self
                .headers
                .iter()
                .map(|h| h.key.len() + h.value.map_or(0, <[u8]>::len))
                .sum::<usize>()
    }
}

/// Idempotent-producer fields kept verbatim in the batch header (-1 when not used).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProducerInfo {
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
}

impl Default for ProducerInfo {
    fn default() -> Self {
        ProducerInfo { producer_id: -1, producer_epoch: -1, base_sequence: -1 }
    }
}

/// Where one record's fields lie inside the v2 bytes (the per-record directory stored next to them).
/// Positions are byte offsets into the batch; operators read fields through it with no varint parsing.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize,
)]
pub struct RecordEntry {
    pub timestamp: i64,
    pub key_pos: u32,
    /// -1 for a null key.
    pub key_len: i32,
    pub value_pos: u32,
    /// -1 for a null value (a tombstone).
    pub value_len: i32,
    /// Start of the first header (after the header count).
    pub headers_pos: u32,
    /// Bytes of all headers together, without the count.
    pub headers_len: u32,
}

/// Records as the frame encoder reads them, by index: a slice of `Record`s, or a caller's own
/// packed layout read in place (the engine's producer batches), so nothing is built per record
/// between the producer's bytes and the write buffer. The encoder reads every record twice: once
/// for its sizes (`plan_batch`), once for its bytes.
pub trait Records {
    /// Number of records.
    fn count(&self) -> usize;
    /// Record `index`: its timestamp (ms), key, value and number of headers.
    fn record(&self, index: usize) -> (i64, Option<&[u8]>, &[u8], usize);
    /// Header `header` of record `index`.
    fn header(&self, index: usize, header: usize) -> Header<'_>;
    /// These records already encoded, when the caller has them so: a whole RecordBatch v2 (a
    /// Kafka producer's uncompressed batch, as it arrived) whose CRC32C the caller checked and
    /// whose records decode to exactly `record(0..count)` with record attributes 0 and no null
    /// value (the two things this module writes differently in the same number of bytes). The
    /// frame encoder checks the rest: its fixed header from the attributes on
    /// (`CRC_START..BATCH_HEADER_SIZE`: attributes, offset delta, timestamps, producer, count)
    /// must be the one encoding writes, and its length the planned one (a varint longer than its
    /// shortest form makes it longer); then it is copied as it is, CRC included, and only the
    /// first 17 bytes (base offset, length, leader epoch, magic: the CRC does not cover them)
    /// are written by the encoder. Otherwise the records are encoded as usual. `None` (the
    /// default): the records are encoded.
    fn encoded(&self) -> Option<&[u8]> {
        None
    }
}

impl Records for [Record<'_>] {
    fn count(&self) -> usize {
        self.len()
    }
    #[inline]
    fn record(&self, index: usize) -> (i64, Option<&[u8]>, &[u8], usize) {
        let r = &self[index];
        (r.timestamp, r.key, r.value, r.headers.len())
    }
    #[inline]
    fn header(&self, index: usize, header: usize) -> Header<'_> {
        self[index].headers[header]
    }
}

/// A batch's sizes and timestamps, known before a byte is written: the log decides on a segment
/// roll from them, and the encoder writes the lengths up front instead of patching them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchPlan {
    pub record_count: u32,
    /// Bytes of the RecordBatch v2 encoding.
    pub kafka_len: usize,
    /// Key, value and header bytes of all records (what the size limits count).
    pub record_bytes: u64,
    pub first_timestamp: i64,
    pub max_timestamp: i64,
}

/// The largest batch encoding: positions inside a batch are `u32`, lengths `i32`.
const KAFKA_LEN_MAX: usize = i32::MAX as usize / 2;

/// Checks `records` against `limits` and computes the batch's sizes, without writing anything:
/// an append that fails here has changed nothing.
pub fn plan_batch<R: Records + ?Sized>(records: &R, limits: &Limits) -> Result<BatchPlan, Error> {
    let count = records.count();
    if count == 0 {
        return Err(Error::EmptyBatch);
    }
    if count > limits.batch_record_count_max as usize {
        return Err(Error::BatchTooLarge {
            size_bytes: count as u64,
            size_bytes_max: u64::from(limits.batch_record_count_max),
            what: "records",
        });
    }
    let record_max = u64::from(limits.record_size_bytes_max);
    let first_timestamp = records.record(0).0;
    let mut max_timestamp = first_timestamp;
    let mut record_bytes = 0u64;
    let mut kafka_len = BATCH_HEADER_SIZE;
    for index in 0..count {
        let (timestamp, key, value, _) = records.record(index);
        max_timestamp = max_timestamp.max(timestamp);
        let sizes = record_sizes(records, index, first_timestamp);
        let size = (key.map_or(0, <[u8]>::len) + value.len()) as u64 + sizes.header_bytes;
        if size > record_max {
            return Err(Error::RecordTooLarge {
                index,
                size_bytes: size,
                size_bytes_max: record_max,
            });
        }
        record_bytes += size;
        kafka_len += varint_len(sizes.body_len as i64) + sizes.body_len;
    }
    if record_bytes > u64::from(limits.batch_size_bytes_max) || kafka_len > KAFKA_LEN_MAX {
        return Err(Error::BatchTooLarge {
            size_bytes: record_bytes,
            size_bytes_max: u64::from(limits.batch_size_bytes_max),
            what: "bytes",
        });
    }
    Ok(BatchPlan {
        record_count: count as u32,
        kafka_len,
        record_bytes,
        first_timestamp,
        max_timestamp,
    })
}

/// The encoded sizes of one record.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RecordSizes {
    /// The record's bytes after its length varint.
    pub(crate) body_len: usize,
    /// Encoded headers, without their count.
    pub(crate) headers_len: usize,
    /// Key and value bytes of the headers (what the size limit counts).
    pub(crate) header_bytes: u64,
}

#[inline]
pub(crate) fn record_sizes<R: Records + ?Sized>(
    records: &R,
    index: usize,
    first_timestamp: i64,
) -> RecordSizes {
    let (timestamp, key, value, header_count) = records.record(index);
    let mut headers_len = 0usize;
    let mut header_bytes = 0u64;
    for h in 0..header_count {
        let header = records.header(index, h);
        let value_len = header.value.map(<[u8]>::len);
        header_bytes += (header.key.len() + value_len.unwrap_or(0)) as u64;
        headers_len += varint_len(header.key.len() as i64)
            + header.key.len()
            + varint_len(len_field(value_len))
            + value_len.unwrap_or(0);
    }
    let key_len = key.map(<[u8]>::len);
    let body_len = 1
        + varint_len(timestamp.wrapping_sub(first_timestamp))
        + varint_len(index as i64)
        + varint_len(len_field(key_len))
        + key_len.unwrap_or(0)
        + varint_len(value.len() as i64)
        + value.len()
        + varint_len(header_count as i64)
        + headers_len;
    RecordSizes { body_len, headers_len, header_bytes }
}

/// The fixed RecordBatch v2 header of a planned batch, with a zero CRC (the encoder fills it in).
pub(crate) fn batch_header(
    base_offset: u64,
    plan: &BatchPlan,
    producer: ProducerInfo,
) -> [u8; BATCH_HEADER_SIZE] {
    let mut header = [0u8; BATCH_HEADER_SIZE];
    header[0..8].copy_from_slice(&(base_offset as i64).to_be_bytes());
    header[8..12].copy_from_slice(&((plan.kafka_len - 12) as i32).to_be_bytes());
    header[12..16].copy_from_slice(&(-1i32).to_be_bytes()); // partitionLeaderEpoch: no leader.
    header[16] = MAGIC_V2;
    // 17..21: the CRC. 21..23: attributes 0 (uncompressed, create time).
    header[23..27].copy_from_slice(&(plan.record_count as i32 - 1).to_be_bytes());
    header[27..35].copy_from_slice(&plan.first_timestamp.to_be_bytes());
    header[35..43].copy_from_slice(&plan.max_timestamp.to_be_bytes());
    header[43..51].copy_from_slice(&producer.producer_id.to_be_bytes());
    header[51..53].copy_from_slice(&producer.producer_epoch.to_be_bytes());
    header[53..57].copy_from_slice(&producer.base_sequence.to_be_bytes());
    header[57..61].copy_from_slice(&(plan.record_count as i32).to_be_bytes());
    header
}

/// Writes the zigzag varint of `value` into `out` (at least 10 bytes), returning its length.
#[inline]
pub(crate) fn write_varint(out: &mut [u8], value: i64) -> usize {
    let mut zz = ((value << 1) ^ (value >> 63)) as u64;
    let mut n = 0;
    while zz >= 0x80 {
        out[n] = (zz as u8) | 0x80;
        zz >>= 7;
        n += 1;
    }
    out[n] = zz as u8;
    n + 1
}

#[inline]
pub(crate) fn varint_len(value: i64) -> usize {
    let zz = ((value << 1) ^ (value >> 63)) as u64;
    // 7 bits per byte: the significant bits (at least one), rounded up to sevens.
    let bits = 64 - (zz | 1).leading_zeros() as usize;
    bits.div_ceil(7)
}

fn put_varint<S: Sink>(buf: &mut S, value: i64) {
    let mut zz = ((value << 1) ^ (value >> 63)) as u64;
    let mut bytes = [0u8; 10];
    let mut n = 0;
    while zz >= 0x80 {
        bytes[n] = (zz as u8) | 0x80;
        zz >>= 7;
        n += 1;
    }
    bytes[n] = zz as u8;
    buf.put(&bytes[..=n]);
}

/// Reads a zigzag varint at `*pos`, advancing it. `None` on truncation or overflow.
pub(crate) fn get_varint(bytes: &[u8], pos: &mut usize) -> Option<i64> {
    let mut result: u64 = 0;
    let mut shift = 0;
    loop {
        let b = *bytes.get(*pos)?;
        *pos += 1;
        result |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            break;
        }
        shift += 7;
        if shift > 63 {
            return None;
        }
    }
    Some(((result >> 1) as i64) ^ -((result & 1) as i64))
}

pub(crate) fn len_field(len: Option<usize>) -> i64 {
    len.map_or(-1, |l| l as i64)
}

/// A growable byte buffer the encoder appends to: a `Vec<u8>`, or the aligned frame buffer itself
/// (so the batch bytes are written once, in place, with no copy into the archive).
pub trait Sink: std::ops::DerefMut<Target = [u8]> {
    fn put(&mut self, bytes: &[u8]);
    fn put_byte(&mut self, byte: u8);
}

impl Sink for Vec<u8> {
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
    fn put_byte(&mut self, byte: u8) {
        self.push(byte);
    }
}

impl<const ALIGN: usize> Sink for rkyv::util::AlignedVec<ALIGN> {
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
    fn put_byte(&mut self, byte: u8) {
        self.push(byte);
    }
}

/// Appends `records` as one uncompressed RecordBatch v2 to `out`, and one `RecordEntry` per record
/// to `directory` (cleared first), with positions relative to the start of the batch. `records`
/// must be non-empty; the caller (the batch encoder) checks that and the size limits. Returns the
/// batch's length in bytes.
pub fn encode_batch<S: Sink>(
    base_offset: u64,
    records: &[Record<'_>],
    producer: ProducerInfo,
    out: &mut S,
    directory: &mut Vec<RecordEntry>,
) -> usize {
    assert!(!records.is_empty(), "encode_batch needs at least one record");
    directory.clear();
    let start = out.len();
    let first_timestamp = records[0].timestamp;
    let max_timestamp = records.iter().map(|r| r.timestamp).max().unwrap_or(first_timestamp);
    let last_offset_delta = (records.len() - 1) as i32;

    out.put(&(base_offset as i64).to_be_bytes());
    out.put(&0i32.to_be_bytes()); // batchLength, patched below.
    out.put(&(-1i32).to_be_bytes()); // partitionLeaderEpoch: no leader here.
    out.put_byte(MAGIC_V2);
    out.put(&0u32.to_be_bytes()); // crc, patched below.
    out.put(&0i16.to_be_bytes()); // attributes: uncompressed, create time.
    out.put(&last_offset_delta.to_be_bytes());
    out.put(&first_timestamp.to_be_bytes());
    out.put(&max_timestamp.to_be_bytes());
    out.put(&producer.producer_id.to_be_bytes());
    out.put(&producer.producer_epoch.to_be_bytes());
    out.put(&producer.base_sequence.to_be_bytes());
    out.put(&(records.len() as i32).to_be_bytes());
    debug_assert_eq!(out.len() - start, BATCH_HEADER_SIZE);

    for (delta, record) in records.iter().enumerate() {
        let timestamp_delta = record.timestamp.wrapping_sub(first_timestamp);
        let key_len = record.key.map(<[u8]>::len);
        let headers_len: usize = record
            .headers
            .iter()
            .map(|h| {
                let value_len = h.value.map(<[u8]>::len);
                varint_len(h.key.len() as i64)
                    + h.key.len()
                    + varint_len(len_field(value_len))
                    + value_len.unwrap_or(0)
            })
            .sum();
        let body_len = 1
            + varint_len(timestamp_delta)
            + varint_len(delta as i64)
            + varint_len(len_field(key_len))
            + key_len.unwrap_or(0)
            + varint_len(record.value.len() as i64)
            + record.value.len()
            + varint_len(record.headers.len() as i64)
            + headers_len;
        put_varint(out, body_len as i64);
        let body_start = out.len();
        out.put_byte(0); // Record attributes: unused in v2.
        put_varint(out, timestamp_delta);
        put_varint(out, delta as i64);
        put_varint(out, len_field(key_len));
        let key_pos = (out.len() - start) as u32;
        if let Some(key) = record.key {
            out.put(key);
        }
        put_varint(out, record.value.len() as i64);
        let value_pos = (out.len() - start) as u32;
        out.put(record.value);
        put_varint(out, record.headers.len() as i64);
        let headers_pos = (out.len() - start) as u32;
        for header in record.headers {
            put_varint(out, header.key.len() as i64);
            out.put(header.key);
            put_varint(out, len_field(header.value.map(<[u8]>::len)));
            if let Some(value) = header.value {
                out.put(value);
            }
        }
        debug_assert_eq!(out.len() - body_start, body_len);
        directory.push(RecordEntry {
            timestamp: record.timestamp,
            key_pos,
            key_len: key_len.map_or(-1, |l| l as i32),
            value_pos,
            value_len: record.value.len() as i32,
            headers_pos,
            headers_len: headers_len as u32,
        });
    }

    let batch = &mut out[start..];
    let batch_length = (batch.len() - 12) as i32;
    batch[8..12].copy_from_slice(&batch_length.to_be_bytes());
    let crc = crc32c::crc32c(&batch[CRC_START..]);
    batch[17..21].copy_from_slice(&crc.to_be_bytes());
    batch.len()
}

/// Checks the CRC32C of stored v2 bytes (the check a Kafka consumer makes).
pub fn crc_matches(batch: &[u8]) -> bool {
    if batch.len() < BATCH_HEADER_SIZE {
        return false;
    }
    let stored = u32::from_be_bytes([batch[17], batch[18], batch[19], batch[20]]);
    crc32c::crc32c(&batch[CRC_START..]) == stored
}

/// Iterates the headers of one record, parsing lazily from the stored bytes (headers are rare on
/// hot paths, so they are not in the directory one by one).
pub struct HeaderIter<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> HeaderIter<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        HeaderIter { bytes, pos: 0 }
    }
}

impl<'a> Iterator for HeaderIter<'a> {
    type Item = Header<'a>;

    fn next(&mut self) -> Option<Header<'a>> {
        if self.pos >= self.bytes.len() {
            return None;
        }
        let key_len = usize::try_from(get_varint(self.bytes, &mut self.pos)?).ok()?;
        let key = self.bytes.get(self.pos..self.pos + key_len)?;
        self.pos += key_len;
        let value_len = get_varint(self.bytes, &mut self.pos)?;
        let value = if value_len < 0 {
            None
        } else {
            let value_len = value_len as usize;
            let value = self.bytes.get(self.pos..self.pos + value_len)?;
            self.pos += value_len;
            Some(value)
        };
        Some(Header { key, value })
    }
}
