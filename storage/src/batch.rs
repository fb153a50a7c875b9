//! Batches: the archive inside a frame, the encoder that builds frames, and zero-copy views.
//!
//! The archive (`BatchArchive`, rkyv) holds the batch's Kafka RecordBatch v2 bytes and the per-record
//! directory. Readers get a `BatchRef` straight over the bytes of a DMA read buffer: after the frame
//! checksum is verified once, records are read through the directory with no parsing, no copy and no
//! allocation.

use rkyv::rancor;
use rkyv::util::AlignedVec;

use crate::format::{
    self, FrameDefect, FrameHeader, FORMAT_VERSION, FRAME_ALIGN, FRAME_HEADER_SIZE,
};
use crate::kafka::{self, ArchivedRecordEntry, HeaderIter, ProducerInfo, Record, RecordEntry};
use crate::{Error, Limits};

/// The payload of a frame.
#[derive(Debug, Default, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct BatchArchive {
    /// Kafka RecordBatch v2 bytes, base offset already assigned (bytes 0..8).
    pub kafka: Vec<u8>,
    /// One entry per record, in offset order.
    pub directory: Vec<RecordEntry>,
}

/// The Kafka bytes of a batch, already written into the output buffer (right after the frame
/// header) by `kafka::encode_batch`. Archiving it only records where they are: the bytes are
/// written once, in place, instead of being copied from a scratch `Vec` by the serializer.
struct InPlaceBytes {
    pos: usize,
    len: usize,
}

impl rkyv::Archive for InPlaceBytes {
    type Archived = rkyv::vec::ArchivedVec<u8>;
    type Resolver = rkyv::vec::VecResolver;

    fn resolve(&self, resolver: Self::Resolver, out: rkyv::Place<Self::Archived>) {
        rkyv::vec::ArchivedVec::resolve_from_len(self.len, resolver, out);
    }
}

impl<S: rkyv::rancor::Fallible + ?Sized> rkyv::Serialize<S> for InPlaceBytes {
    fn serialize(&self, _: &mut S) -> Result<Self::Resolver, S::Error> {
        Ok(rkyv::vec::VecResolver::from_pos(self.pos))
    }
}

/// What the encoder serializes: the same archived layout as `BatchArchive` (a test checks the bytes
/// are identical), with the Kafka bytes in place.
#[derive(rkyv::Archive, rkyv::Serialize)]
struct BatchArchiveInPlace {
    kafka: InPlaceBytes,
    directory: Vec<RecordEntry>,
}

const _: () = assert!(
    std::mem::size_of::<ArchivedBatchArchiveInPlace>()
        == std::mem::size_of::<ArchivedBatchArchive>()
);

/// Builds frames. Owns its scratch buffers, so steady-state encoding reuses memory.
pub struct BatchEncoder {
    directory: Vec<RecordEntry>,
    frame: AlignedVec<FRAME_ALIGN>,
    header: FrameHeader,
    limits: Limits,
}

impl BatchEncoder {
    pub fn new(limits: Limits) -> Self {
        BatchEncoder {
            directory: Vec::new(),
            frame: AlignedVec::new(),
            header: FrameHeader {
                version: FORMAT_VERSION,
                frame_len: 0,
                payload_len: 0,
                base_offset: 0,
                record_count: 0,
                first_timestamp: 0,
                max_timestamp: 0,
                synced_before: 0,
                checksum: 0,
            },
            limits,
        }
    }

    /// Checks `records` against the limits without encoding anything.
    pub fn check(&self, records: &[Record<'_>]) -> Result<(), Error> {
        if records.is_empty() {
            return Err(Error::EmptyBatch);
        }
        if records.len() > self.limits.batch_record_count_max as usize {
            return Err(Error::BatchTooLarge {
                size_bytes: records.len() as u64,
                size_bytes_max: u64::from(self.limits.batch_record_count_max),
                what: "records",
            });
        }
        let mut total = 0u64;
        for (index, record) in records.iter().enumerate() {
            let size = record.size_bytes() as u64;
            if size > u64::from(self.limits.record_size_bytes_max) {
                return Err(Error::RecordTooLarge {
                    index,
                    size_bytes: size,
                    size_bytes_max: u64::from(self.limits.record_size_bytes_max),
                });
            }
            total += size;
        }
        if total > u64::from(self.limits.batch_size_bytes_max) {
            return Err(Error::BatchTooLarge {
                size_bytes: total,
                size_bytes_max: u64::from(self.limits.batch_size_bytes_max),
                what: "bytes",
            });
        }
        Ok(())
    }

    /// Encodes one frame for `records` with offsets starting at `base_offset`. The frame stays in
    /// the encoder until the next call (`frame()`).
    pub fn encode(
        &mut self,
        base_offset: u64,
        records: &[Record<'_>],
        producer: ProducerInfo,
    ) -> Result<&FrameHeader, Error> {
        self.check(records)?;
        let mut frame = std::mem::take(&mut self.frame);
        frame.clear();
        frame.extend_from_slice(&[0u8; FRAME_HEADER_SIZE]);
        let kafka_len =
            kafka::encode_batch(base_offset, records, producer, &mut frame, &mut self.directory);
        let archive = BatchArchiveInPlace {
            kafka: InPlaceBytes { pos: FRAME_HEADER_SIZE, len: kafka_len },
            directory: std::mem::take(&mut self.directory),
        };
        let serialized = rkyv::api::high::to_bytes_in::<_, rancor::Error>(&archive, frame);
        self.directory = archive.directory;
        let mut frame =
            serialized.map_err(|_| Error::Encode { what: "rkyv archive of a batch" })?;
        let payload_len = frame.len() - FRAME_HEADER_SIZE;
        let frame_len = format::frame_len_for(payload_len);
        frame.resize(frame_len, 0);

        let first_timestamp = records[0].timestamp;
        let max_timestamp = records.iter().map(|r| r.timestamp).max().unwrap_or(first_timestamp);
        self.header.frame_len = frame_len as u32;
        self.header.payload_len = payload_len as u32;
        self.header.base_offset = base_offset;
        self.header.record_count = records.len() as u32;
        self.header.first_timestamp = first_timestamp;
        self.header.max_timestamp = max_timestamp;
        let (head, rest) = frame.split_at_mut(FRAME_HEADER_SIZE);
        let head: &mut [u8; FRAME_HEADER_SIZE] =
            head.try_into().expect("split_at_mut gives exactly FRAME_HEADER_SIZE bytes");
        self.header.write(head, &rest[..payload_len]);
        self.frame = frame;
        Ok(&self.header)
    }

    /// The `synced_before` the next encoded frames carry (see `format`).
    pub fn set_synced_before(&mut self, position: u32) {
        self.header.synced_before = position;
    }

    /// Rewrites the last frame's `synced_before` (its header and checksum; the payload is
    /// hashed again). For a frame that moved to a new segment after it was encoded.
    pub fn restamp_synced_before(&mut self, position: u32) -> &FrameHeader {
        self.header.synced_before = position;
        let payload_len = self.header.payload_len as usize;
        let (head, rest) = self.frame.split_at_mut(FRAME_HEADER_SIZE);
        let head: &mut [u8; FRAME_HEADER_SIZE] =
            head.try_into().expect("split_at_mut gives exactly FRAME_HEADER_SIZE bytes");
        self.header.write(head, &rest[..payload_len]);
        &self.header
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
