//! Batches: the archive inside a frame, the encoder that builds frames, and zero-copy views.
//!
//! The archive (`BatchArchive`, rkyv) holds the batch's Kafka RecordBatch v2 bytes and the per-record
//! directory. Readers get a `BatchRef` straight over the bytes of a DMA read buffer: after the frame
//! checksum is verified once, records are read through the directory with no parsing, no copy and no
//! allocation.

use rkyv::rancor;
use rkyv::util::AlignedVec;

use crate::encode::{self, FrameLayout, Scratch, SliceOut};
use crate::format::{self, FrameDefect, FrameHeader, FRAME_ALIGN};
use crate::kafka::{
    self, ArchivedRecordEntry, HeaderIter, ProducerInfo, Record, RecordEntry, Records,
};
use crate::{Error, Limits};

/// The payload of a frame.
#[derive(Debug, Default, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct BatchArchive {
    /// Kafka RecordBatch v2 bytes, base offset already assigned (bytes 0..8).
    pub kafka: Vec<u8>,
    /// One entry per record, in offset order.
    pub directory: Vec<RecordEntry>,
}

/// Builds frames into a buffer of its own (for tests, tools and benches; the log encodes straight
/// into its write buffers). Owns its scratch buffers, so steady-state encoding reuses memory.
pub struct BatchEncoder {
    scratch: Scratch,
    frame: AlignedVec<FRAME_ALIGN>,
    header: Option<FrameHeader>,
    synced_before: u32,
    limits: Limits,
}

impl BatchEncoder {
    pub fn new(limits: Limits) -> Self {
        BatchEncoder {
            scratch: Scratch::default(),
            frame: AlignedVec::new(),
            header: None,
            synced_before: 0,
            limits,
        }
    }

    /// Checks `records` against the limits without encoding anything.
    pub fn check(&self, records: &[Record<'_>]) -> Result<(), Error> {
        kafka::plan_batch(records, &self.limits).map(|_| ())
    }

    /// Encodes one frame for `records` with offsets starting at `base_offset`. The frame stays in
    /// the encoder until the next call (`frame()`).
    pub fn encode(
        &mut self,
        base_offset: u64,
        records: &[Record<'_>],
        producer: ProducerInfo,
    ) -> Result<&FrameHeader, Error> {
        self.encode_records(base_offset, records, producer)
    }

    /// `encode` for records in any layout.
    pub fn encode_records<R: Records + ?Sized>(
        &mut self,
        base_offset: u64,
        records: &R,
        producer: ProducerInfo,
    ) -> Result<&FrameHeader, Error> {
        let plan = kafka::plan_batch(records, &self.limits)?;
        let frame_len = FrameLayout::of(&plan).frame_len;
        self.frame.clear();
        self.frame.resize(frame_len, 0);
        let mut out = SliceOut { buf: &mut self.frame[..], len: 0 };
        let header = encode::encode_frame(
            &mut out,
            &mut self.scratch,
            records,
            &plan,
            base_offset,
            producer,
            self.synced_before,
            None,
        );
        debug_assert_eq!(out.len, frame_len);
        Ok(self.header.insert(header))
    }

    /// The `synced_before` the next encoded frames carry (see `format`).
    pub fn set_synced_before(&mut self, position: u32) {
        self.synced_before = position;
    }

    /// The bytes of the last encoded frame.
    pub fn frame(&self) -> &[u8] {
        &self.frame
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }
}

/// A verified batch inside a read buffer. Borrowing the buffer is what makes reads zero-copy.
#[derive(Clone, Copy)]
pub struct BatchRef<'a> {
    header: FrameHeader,
    archive: &'a ArchivedBatchArchive,
    payload: &'a [u8],
}

impl<'a> BatchRef<'a> {
    /// Verifies the frame at the start of `bytes` (checksum included) and views its archive.
    /// `bytes` must start 16-byte aligned, as every frame in a segment or read buffer does.
    pub fn from_frame(bytes: &'a [u8]) -> Result<Self, FrameDefect> {
        let (header, payload) = format::parse_frame(bytes)?;
        Self::from_verified(header, payload)
    }

    /// Views a payload whose checksum has been verified.
    pub fn from_verified(header: FrameHeader, payload: &'a [u8]) -> Result<Self, FrameDefect> {
        if !(payload.as_ptr() as usize).is_multiple_of(FRAME_ALIGN) {
            return Err(FrameDefect::BadHeader {
                reason: "payload is not 16-byte aligned in memory",
            });
        }
        if payload.len() < std::mem::size_of::<ArchivedBatchArchive>() {
            return Err(FrameDefect::BadHeader { reason: "payload shorter than its archive root" });
        }
        // SAFETY: the payload is the exact archive slice written by `BatchEncoder` (its length comes
        // from the header), it is 16-byte aligned (checked above) and its xxh3 checksum over header
        // and payload matched, so these are the bytes rkyv produced. `verify::check_archive` runs
        // the full bytecheck validation for untrusted or suspicious data.
        let archive = unsafe { rkyv::access_unchecked::<ArchivedBatchArchive>(payload) };
        if archive.directory.len() != header.record_count as usize {
            return Err(FrameDefect::BadHeader { reason: "directory length differs from header" });
        }
        Ok(BatchRef { header, archive, payload })
    }

    /// Validates the archive structure with bytecheck and every directory range. Used by `verify`.
    pub fn check_archive(payload: &[u8]) -> Result<(), &'static str> {
        let archive = rkyv::access::<ArchivedBatchArchive, rancor::Failure>(payload)
            .map_err(|_| "archive failed structural validation")?;
        let kafka = archive.kafka.as_slice();
        if !kafka::crc_matches(kafka) {
            return Err("Kafka batch CRC32C mismatch");
        }
        for entry in archive.directory.iter() {
            let ranges = [
                (entry.key_pos.to_native(), entry.key_len.to_native().max(0) as u32),
                (entry.value_pos.to_native(), entry.value_len.to_native().max(0) as u32),
                (entry.headers_pos.to_native(), entry.headers_len.to_native()),
            ];
            for (pos, len) in ranges {
                if pos as usize + len as usize > kafka.len() {
                    return Err("directory entry points outside the batch");
                }
            }
        }
        Ok(())
    }

    pub fn header(&self) -> &FrameHeader {
        &self.header
    }
    /// The archive bytes (what `OwnedBatch` copies).
    pub fn payload(&self) -> &'a [u8] {
        self.payload
    }
    pub fn base_offset(&self) -> u64 {
        self.header.base_offset
    }
    /// The offset after this batch's last record.
    pub fn next_offset(&self) -> u64 {
        self.header.next_offset()
    }
    pub fn record_count(&self) -> u32 {
        self.header.record_count
    }
    pub fn max_timestamp(&self) -> i64 {
        self.header.max_timestamp
    }
    /// The stored Kafka RecordBatch v2 bytes, exactly as a Kafka fetch sends them.
    pub fn kafka_bytes(&self) -> &'a [u8] {
        self.archive.kafka.as_slice()
    }

    /// The record at `index` in this batch.
    pub fn record(&self, index: usize) -> Option<RecordRef<'a>> {
        let entry = self.archive.directory.get(index)?;
        Some(RecordRef {
            offset: self.header.base_offset + index as u64,
            entry,
            kafka: self.archive.kafka.as_slice(),
        })
    }

    /// All records, in offset order.
    pub fn records(&self) -> impl Iterator<Item = RecordRef<'a>> + 'a {
        let kafka = self.archive.kafka.as_slice();
        let base = self.header.base_offset;
        self.archive.directory.iter().enumerate().map(move |(i, entry)| RecordRef {
            offset: base + i as u64,
            entry,
            kafka,
        })
    }

    /// Records at or after `offset` (a read that starts inside a batch skips the earlier ones).
    pub fn records_from(&self, offset: u64) -> impl Iterator<Item = RecordRef<'a>> + 'a {
        let skip = offset.saturating_sub(self.header.base_offset) as usize;
        self.records().skip(skip)
    }
}

/// A batch copied out of a read buffer, for a consumer on another thread: one copy per batch (not
/// per record), and records are then read through the same zero-copy directory.
#[derive(Debug, Clone)]
pub struct OwnedBatch {
    header: FrameHeader,
    payload: AlignedVec<FRAME_ALIGN>,
    first_offset: u64,
}

impl OwnedBatch {
    /// Copies `batch`; `first_offset` is the first record the receiver wants (a read that started
    /// inside the batch skips the earlier ones).
    pub fn copy_of(batch: &BatchRef<'_>, first_offset: u64) -> Self {
        let mut payload = AlignedVec::with_capacity(batch.payload.len());
        payload.extend_from_slice(batch.payload);
        OwnedBatch { header: batch.header, payload, first_offset }
    }

    /// The batch, viewed zero-copy over the owned bytes.
    pub fn batch(&self) -> BatchRef<'_> {
        BatchRef::from_verified(self.header, &self.payload)
            .expect("an owned batch is a copy of a verified batch")
    }

    /// The records at or after `first_offset`.
    pub fn records(&self) -> impl Iterator<Item = RecordRef<'_>> + '_ {
        self.batch().records_from(self.first_offset)
    }

    pub fn first_offset(&self) -> u64 {
        self.first_offset.max(self.header.base_offset)
    }

    /// The offset after the last record.
    pub fn next_offset(&self) -> u64 {
        self.header.next_offset()
    }

    /// Bytes held (the archive).
    pub fn size_bytes(&self) -> usize {
        self.payload.len()
    }
}

/// One record, read through the directory: every accessor is a bounds-checked slice, no parsing.
#[derive(Clone, Copy)]
pub struct RecordRef<'a> {
    offset: u64,
    entry: &'a ArchivedRecordEntry,
    kafka: &'a [u8],
}

impl<'a> RecordRef<'a> {
    pub fn offset(&self) -> u64 {
        self.offset
    }
    pub fn timestamp(&self) -> i64 {
        self.entry.timestamp.to_native()
    }
    fn slice(&self, pos: u32, len: i32) -> Option<&'a [u8]> {
        let len = usize::try_from(len).ok()?;
        let pos = pos as usize;
        self.kafka.get(pos..pos + len)
    }
    pub fn key(&self) -> Option<&'a [u8]> {
        self.slice(self.entry.key_pos.to_native(), self.entry.key_len.to_native())
    }
    /// The value; a null value (Kafka tombstone) reads as empty.
    pub fn value(&self) -> &'a [u8] {
        self.slice(self.entry.value_pos.to_native(), self.entry.value_len.to_native())
            .unwrap_or(&[])
    }
    pub fn headers(&self) -> HeaderIter<'a> {
        let bytes = self
            .slice(self.entry.headers_pos.to_native(), self.entry.headers_len.to_native() as i32)
            .unwrap_or(&[]);
        HeaderIter::new(bytes)
    }
}

#[cfg(test)]
mod tests;
