//! Single-pass frame encoding: a batch's records go from the caller's bytes straight into the
//! buffer that is written to disk, copied once.
//!
//! Why: the append path used to encode a frame into a scratch `Vec` (copy one), hash it, then copy
//! it into the DMA write buffer (copy two), and ran the Kafka CRC32C and the frame's xxh3 as two
//! more passes over the whole frame, which by then had left the core's caches (a 1 MiB frame is
//! twice the L2). Here every size is known before a byte is written (`kafka::plan_batch`: the log
//! decides a segment roll from it, and no length is patched afterwards), the records are copied
//! once into the destination, the CRC32C runs over what was just written in chunks of
//! `CRC_CHUNK` while those bytes are still in L1/L2, and the payload is hashed once at the end.
//! The two values that depend on the bytes (the Kafka CRC in the batch header and the frame
//! checksum) are patched in last, wherever the frame's first bytes landed.
//!
//! The xxh3 cannot run in the same pass: the payload starts with the Kafka header, whose CRC is
//! only known once the last record is written, and xxh3 is not incremental out of order. Changing
//! what the checksum covers would change the on-disk format; this keeps it byte for byte (tests
//! compare it with rkyv's own serialization and with an independent Kafka encoder).
//!
//! A caller that already holds the records as a canonical RecordBatch v2 (a Kafka producer's
//! uncompressed batch, `Records::encoded`) has it copied as it is: the CRC it carries covers
//! everything but the first 17 bytes (base offset, length, leader epoch, magic), which are
//! written here, so no record is re-encoded and no CRC recomputed; only the directory is derived
//! from the records' sizes. The frame is byte for byte the one encoding would give (tests).
//!
//! The destination is an `Out`: a growable sequence of buffers (`SliceOut`, one buffer sized to
//! the frame, for `BatchEncoder`; the log's chain of DMA write buffers, where a frame may span
//! several). The archive is written by hand in rkyv's layout (`BatchArchive`: the Kafka bytes,
//! padding to the directory's alignment, the directory entries, the root of two relative
//! pointers); a test checks it equals `rkyv::to_bytes` of the same archive.

use xxhash_rust::xxh3::{xxh3_64_with_seed, Xxh3};

use crate::batch::ArchivedBatchArchive;
use crate::format::{self, FrameHeader, FORMAT_VERSION, FRAME_HEADER_SIZE};
use crate::kafka::{
    self, ArchivedRecordEntry, BatchPlan, ProducerInfo, RecordEntry, Records, BATCH_HEADER_SIZE,
    CRC_START,
};

/// Where an encoded frame goes: a sequence of fixed buffers filled in order.
pub(crate) trait Out {
    /// The buffer being filled (all of it) and how many of its bytes are filled. `need` is how
    /// many bytes of the frame are still to come (to size a buffer taken now).
    fn current(&mut self, need: usize) -> (&mut [u8], &mut usize);
    /// The current buffer is full: move on to the next one.
    fn next(&mut self);
    /// Visits the frame's bytes written so far, in order, from its first byte.
    fn frame_parts(&mut self, visit: &mut dyn FnMut(&mut [u8]));
}

/// The CRC32C runs over what was just written every this many bytes (and at every buffer end): the
/// bytes are still in cache, and past 3 x 8 KiB the `crc32c` crate runs its three-way interleaved
/// loop over long blocks.
const CRC_CHUNK: usize = 24 * 1024;

/// Where the CRC32C lies in the Kafka batch header (it covers `CRC_START..`, not what is before).
const CRC_POS: usize = 17;

/// Bytes of one directory entry and of the archive's root, and their alignments (rkyv's layout).
const ENTRY_SIZE: usize = std::mem::size_of::<ArchivedRecordEntry>();
const ENTRY_ALIGN: usize = std::mem::align_of::<ArchivedRecordEntry>();
const ROOT_SIZE: usize = std::mem::size_of::<ArchivedBatchArchive>();
const ROOT_ALIGN: usize = std::mem::align_of::<ArchivedBatchArchive>();
const _: () = assert!(ENTRY_SIZE == 32 && ROOT_SIZE == 16 && ENTRY_ALIGN <= 16 && ROOT_ALIGN <= 16);

/// Where the parts of a frame lie, from the plan alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FrameLayout {
    /// Start of the directory in the payload.
    pub(crate) directory_pos: usize,
    /// Start of the archive's root in the payload.
    pub(crate) root_pos: usize,
    pub(crate) payload_len: usize,
    pub(crate) frame_len: usize,
}

impl FrameLayout {
    pub(crate) fn of(plan: &BatchPlan) -> Self {
        let directory_pos = plan.kafka_len.next_multiple_of(ENTRY_ALIGN);
        let root_pos =
            (directory_pos + plan.record_count as usize * ENTRY_SIZE).next_multiple_of(ROOT_ALIGN);
        let payload_len = root_pos + ROOT_SIZE;
        FrameLayout {
            directory_pos,
            root_pos,
            payload_len,
            frame_len: format::frame_len_for(payload_len),
        }
    }
}

/// Scratch memory kept between frames (the directory), so steady-state encoding allocates nothing.
#[derive(Default)]
pub(crate) struct Scratch {
    directory: Vec<RecordEntry>,
}

/// Encodes one frame of `records` (planned as `plan`) into `out`, starting at its current
/// position. Returns the frame's header (checksum included). `append_time`: the appender's
/// clock, or `None` (a caller without a clock): unknown (`i64::MIN`), never the records'
/// timestamps, which are producers' event times; age retention keeps such frames' segments.
#[allow(clippy::too_many_arguments)]
pub(crate) fn encode_frame<R: Records + ?Sized, O: Out>(
    out: &mut O,
    scratch: &mut Scratch,
    records: &R,
    plan: &BatchPlan,
    base_offset: u64,
    producer: ProducerInfo,
    synced_before: u32,
    append_time: Option<i64>,
) -> FrameHeader {
    let layout = FrameLayout::of(plan);
    let mut header = FrameHeader {
        version: FORMAT_VERSION,
        frame_len: layout.frame_len as u32,
        payload_len: layout.payload_len as u32,
        base_offset,
        record_count: plan.record_count,
        first_timestamp: plan.first_timestamp,
        max_timestamp: plan.max_timestamp,
        synced_before,
        append_time: append_time.unwrap_or(i64::MIN),
        checksum: 0,
    };
    let mut head = [0u8; FRAME_HEADER_SIZE];
    header.write_fields(&mut head);
    let seed = format::checksum_seed(&head[0..56]);

    let mut w = Writer { out, remaining: layout.frame_len, crc: None, crc_from: 0 };
    w.put(&head);

    let batch_head = kafka::batch_header(base_offset, plan, producer);
    let directory = &mut scratch.directory;
    directory.clear();
    directory.reserve(plan.record_count as usize);
    let as_is = records.encoded().filter(|bytes| {
        bytes.len() == plan.kafka_len
            && bytes[CRC_START..BATCH_HEADER_SIZE] == batch_head[CRC_START..]
    });
    let crc = match as_is {
        // The batch as the caller has it: bytes 0..17 ours (base offset, length, leader epoch,
        // magic), its CRC and everything it covers as they are, in one copy; the directory
        // from the records' sizes alone.
        Some(bytes) => {
            w.put(&batch_head[..CRC_POS]);
            w.put(&bytes[CRC_POS..]);
            let mut batch_pos = BATCH_HEADER_SIZE;
            for index in 0..plan.record_count as usize {
                let sizes = kafka::record_sizes(records, index, plan.first_timestamp);
                directory.push(record_entry(
                    records.record(index),
                    index,
                    plan.first_timestamp,
                    &sizes,
                    batch_pos,
                ));
                batch_pos += kafka::varint_len(sizes.body_len as i64) + sizes.body_len;
            }
            debug_assert_eq!(batch_pos, plan.kafka_len);
            let crc = u32::from_be_bytes([
                bytes[CRC_POS],
                bytes[CRC_POS + 1],
                bytes[CRC_POS + 2],
                bytes[CRC_POS + 3],
            ]);
            debug_assert_eq!(crc, crc32c::crc32c(&bytes[CRC_START..]), "the caller checks it");
            crc
        }
        // The Kafka batch: its header (CRC zero for now), then the records, CRC'd as they land.
        None => {
            w.put(&batch_head);
            w.start_crc(crc32c::crc32c(&batch_head[CRC_START..]));
            let mut batch_pos = BATCH_HEADER_SIZE;
            for index in 0..plan.record_count as usize {
                let entry = w.record(records, index, plan.first_timestamp, batch_pos);
                batch_pos += entry.1;
                directory.push(entry.0);
            }
            debug_assert_eq!(batch_pos, plan.kafka_len);
            w.stop_crc()
        }
    };

    // The rest of rkyv's archive: padding, the directory, the root; then the frame's padding.
    w.zeros(layout.directory_pos - plan.kafka_len);
    // In runs of entries through a stack buffer: one `put` per run, not per record.
    let mut run = [0u8; 64 * ENTRY_SIZE];
    for entries in directory.chunks(64) {
        for (slot, entry) in run.chunks_exact_mut(ENTRY_SIZE).zip(entries) {
            slot.copy_from_slice(&entry_bytes(entry));
        }
        w.put(&run[..entries.len() * ENTRY_SIZE]);
    }
    w.zeros(layout.root_pos - (layout.directory_pos + directory.len() * ENTRY_SIZE));
    w.put(&root_bytes(&layout, plan));
    w.zeros(layout.frame_len - FRAME_HEADER_SIZE - layout.payload_len);
    debug_assert_eq!(w.remaining, 0);

    patch(w.out, FRAME_HEADER_SIZE + CRC_POS, &crc.to_be_bytes());
    header.checksum = hash_payload(w.out, layout.payload_len, seed);
    patch(w.out, 56, &header.checksum.to_le_bytes());
    header
}

/// One `RecordEntry` as rkyv archives it (little-endian fields in declaration order).
fn entry_bytes(e: &RecordEntry) -> [u8; ENTRY_SIZE] {
    let mut b = [0u8; ENTRY_SIZE];
    b[0..8].copy_from_slice(&e.timestamp.to_le_bytes());
    b[8..12].copy_from_slice(&e.key_pos.to_le_bytes());
    b[12..16].copy_from_slice(&e.key_len.to_le_bytes());
    b[16..20].copy_from_slice(&e.value_pos.to_le_bytes());
    b[20..24].copy_from_slice(&e.value_len.to_le_bytes());
    b[24..28].copy_from_slice(&e.headers_pos.to_le_bytes());
    b[28..32].copy_from_slice(&e.headers_len.to_le_bytes());
    b
}

/// The archive's root: two `ArchivedVec`s (a relative pointer from the field to its data, and a
/// length), the Kafka bytes at payload position 0 and the directory.
fn root_bytes(layout: &FrameLayout, plan: &BatchPlan) -> [u8; ROOT_SIZE] {
    let root = layout.root_pos as i64;
    let mut b = [0u8; ROOT_SIZE];
    b[0..4].copy_from_slice(&((0 - root) as i32).to_le_bytes());
    b[4..8].copy_from_slice(&(plan.kafka_len as u32).to_le_bytes());
    b[8..12].copy_from_slice(&((layout.directory_pos as i64 - (root + 8)) as i32).to_le_bytes());
    b[12..16].copy_from_slice(&plan.record_count.to_le_bytes());
    b
}

/// Overwrites the frame's bytes at `pos` (wherever they landed) with `bytes`.
fn patch<O: Out>(out: &mut O, pos: usize, bytes: &[u8]) {
    let mut at = 0usize;
    let end = pos + bytes.len();
    out.frame_parts(&mut |part| {
        let part_end = at + part.len();
        let from = pos.max(at);
        let to = end.min(part_end);
        if from < to {
            part[from - at..to - at].copy_from_slice(&bytes[from - pos..to - pos]);
        }
        at = part_end;
    });
}

/// The frame checksum: xxh3 of the payload (after the header, `payload_len` bytes) with `seed`.
fn hash_payload<O: Out>(out: &mut O, payload_len: usize, seed: u64) -> u64 {
    let range = FRAME_HEADER_SIZE..FRAME_HEADER_SIZE + payload_len;
    let mut whole = None;
    let mut hasher: Option<Xxh3> = None;
    let mut at = 0usize;
    out.frame_parts(&mut |part| {
        let part_end = at + part.len();
        let from = range.start.max(at);
        let to = range.end.min(part_end);
        if from < to {
            let bytes = &part[from - at..to - at];
            if from == range.start && to == range.end {
                whole = Some(xxh3_64_with_seed(bytes, seed));
            } else {
                hasher.get_or_insert_with(|| Xxh3::with_seed(seed)).update(bytes);
            }
        }
        at = part_end;
    });
    match (whole, hasher) {
        (Some(hash), _) => hash,
        (None, Some(hasher)) => hasher.digest(),
        (None, None) => xxh3_64_with_seed(&[], seed),
    }
}

/// Something records are written into: a slice known to have room (the fast path), or the `Out`
/// itself, which moves on to the next buffer when one is full.
trait Put {
    fn put(&mut self, bytes: &[u8]);
    fn put_varint(&mut self, value: i64) {
        let mut tmp = [0u8; 10];
        let n = kafka::write_varint(&mut tmp, value);
        self.put(&tmp[..n]);
    }
}

/// The fast path: a record that fits in the rest of the current buffer is written here.
struct SliceCursor<'a> {
    buf: &'a mut [u8],
    pos: usize,
}

impl Put for SliceCursor<'_> {
    #[inline]
    fn put(&mut self, bytes: &[u8]) {
        self.buf[self.pos..self.pos + bytes.len()].copy_from_slice(bytes);
        self.pos += bytes.len();
    }
    #[inline]
    fn put_varint(&mut self, value: i64) {
        self.pos += kafka::write_varint(&mut self.buf[self.pos..], value);
    }
}

struct Writer<'o, O: Out> {
    out: &'o mut O,
    /// Bytes of the frame still to write.
    remaining: usize,
    /// The CRC so far, while the Kafka records are written; it covers the current buffer up to
    /// `crc_from`.
    crc: Option<u32>,
    crc_from: usize,
}

impl<O: Out> Put for Writer<'_, O> {
    fn put(&mut self, mut bytes: &[u8]) {
        loop {
            let need = self.remaining;
            let (buf, len) = self.out.current(need);
            let n = (buf.len() - *len).min(bytes.len());
            buf[*len..*len + n].copy_from_slice(&bytes[..n]);
            *len += n;
            self.remaining -= n;
            bytes = &bytes[n..];
            if *len < buf.len() {
                return;
            }
            // Full: the CRC takes what it has not seen of this buffer, then the next one starts.
            self.crc_up_to_here();
            self.out.next();
            self.crc_from = 0;
            if bytes.is_empty() {
                return;
            }
        }
    }
}

impl<O: Out> Writer<'_, O> {
    fn zeros(&mut self, mut n: usize) {
        const ZEROS: [u8; 64] = [0; 64];
        while n > 0 {
            let k = n.min(ZEROS.len());
            self.put(&ZEROS[..k]);
            n -= k;
        }
    }

    fn start_crc(&mut self, crc: u32) {
        let need = self.remaining;
        let (_, len) = self.out.current(need);
        self.crc_from = *len;
        self.crc = Some(crc);
    }

    fn stop_crc(&mut self) -> u32 {
        self.crc_up_to_here();
        self.crc.take().expect("started")
    }

    /// Runs the CRC over the current buffer's bytes it has not covered yet.
    fn crc_up_to_here(&mut self) {
        if let Some(crc) = self.crc {
            let need = self.remaining;
            let (buf, len) = self.out.current(need);
            self.crc = Some(crc32c::crc32c_append(crc, &buf[self.crc_from..*len]));
            self.crc_from = *len;
        }
    }

    /// Writes record `index` (at `batch_pos` in the batch) and returns its directory entry and
    /// its encoded length.
    #[inline]
    fn record<R: Records + ?Sized>(
        &mut self,
        records: &R,
        index: usize,
        first_timestamp: i64,
        batch_pos: usize,
    ) -> (RecordEntry, usize) {
        let sizes = kafka::record_sizes(records, index, first_timestamp);
        let total = kafka::varint_len(sizes.body_len as i64) + sizes.body_len;
        let need = self.remaining;
        let (buf, len) = self.out.current(need);
        let entry = if buf.len() - *len >= total {
            let start = *len;
            let mut cursor = SliceCursor { buf: &mut buf[start..start + total], pos: 0 };
            let entry =
                write_record(&mut cursor, records, index, first_timestamp, &sizes, batch_pos);
            debug_assert_eq!(cursor.pos, total);
            *len += total;
            self.remaining -= total;
            if *len - self.crc_from >= CRC_CHUNK {
                self.crc_up_to_here();
            }
            entry
        } else {
            write_record(self, records, index, first_timestamp, &sizes, batch_pos)
        };
        (entry, total)
    }
}

/// Writes one record's Kafka bytes and returns its directory entry (positions in the batch).
#[inline]
fn write_record<P: Put, R: Records + ?Sized>(
    p: &mut P,
    records: &R,
    index: usize,
    first_timestamp: i64,
    sizes: &kafka::RecordSizes,
    batch_pos: usize,
) -> RecordEntry {
    let (timestamp, key, value, header_count) = records.record(index);
    let key_len = key.map(<[u8]>::len);
    p.put_varint(sizes.body_len as i64);
    p.put(&[0]); // Record attributes: unused in v2.
    p.put_varint(timestamp.wrapping_sub(first_timestamp));
    p.put_varint(index as i64);
    p.put_varint(kafka::len_field(key_len));
    if let Some(key) = key {
        p.put(key);
    }
    p.put_varint(value.len() as i64);
    p.put(value);
    p.put_varint(header_count as i64);
    for h in 0..header_count {
        let header = records.header(index, h);
        p.put_varint(header.key.len() as i64);
        p.put(header.key);
        p.put_varint(kafka::len_field(header.value.map(<[u8]>::len)));
        if let Some(value) = header.value {
            p.put(value);
        }
    }
    record_entry((timestamp, key, value, header_count), index, first_timestamp, sizes, batch_pos)
}

/// The directory entry of record `index` encoded at `batch_pos` (positions in the batch), from
/// its sizes alone: what `write_record` writes, or what a batch copied as it is holds there.
/// Takes the record as `Records::record` gave it, so the writer does not fetch it twice.
#[inline]
fn record_entry(
    (timestamp, key, value, header_count): (i64, Option<&[u8]>, &[u8], usize),
    index: usize,
    first_timestamp: i64,
    sizes: &kafka::RecordSizes,
    batch_pos: usize,
) -> RecordEntry {
    let key_len = key.map(<[u8]>::len);
    let key_pos = batch_pos
        + kafka::varint_len(sizes.body_len as i64)
        + 1
        + kafka::varint_len(timestamp.wrapping_sub(first_timestamp))
        + kafka::varint_len(index as i64)
        + kafka::varint_len(kafka::len_field(key_len));
    let value_pos = key_pos + key_len.unwrap_or(0) + kafka::varint_len(value.len() as i64);
    let headers_pos = value_pos + value.len() + kafka::varint_len(header_count as i64);
    RecordEntry {
        timestamp,
        key_pos: key_pos as u32,
        key_len: key_len.map_or(-1, |l| l as i32),
        value_pos: value_pos as u32,
        value_len: value.len() as i32,
        headers_pos: headers_pos as u32,
        headers_len: sizes.headers_len as u32,
    }
}

/// One buffer sized to the frame (`BatchEncoder`'s): it never needs a next one.
pub(crate) struct SliceOut<'a> {
    pub(crate) buf: &'a mut [u8],
    pub(crate) len: usize,
}

impl Out for SliceOut<'_> {
    fn current(&mut self, _need: usize) -> (&mut [u8], &mut usize) {
        (self.buf, &mut self.len)
    }
    fn next(&mut self) {
        debug_assert_eq!(self.len, self.buf.len(), "the buffer is sized to the frame");
    }
    fn frame_parts(&mut self, visit: &mut dyn FnMut(&mut [u8])) {
        visit(&mut self.buf[..self.len]);
    }
}

#[cfg(test)]
mod tests;
