//! Incoming Kafka record batches (the bytes of one partition in a Produce request): checked,
//! split, and read as borrowed records for the log's encoder.
//!
//! Only RecordBatch v2 (magic 2) is accepted. Each batch's CRC32C is verified, its records are
//! parsed with every length checked against the bytes that are there, and the records are handed
//! to the log as `Record`s borrowing the request buffer (or, for a compressed batch, the
//! decompressed buffer): appending copies each record once, into the stored frame. Null values
//! (Kafka tombstones) are stored as empty values: the stored format has no null value, and kappa
//! has no log compaction for a tombstone to drive.

use kappa_storage::Header;

use super::codec::code;
use super::compression::{self, Codec, DecompressError};

/// The fixed RecordBatch v2 header.
pub(crate) const HEADER_SIZE: usize = 61;
const MAGIC_V2: i8 = 2;
const ATTR_LOG_APPEND_TIME: i16 = 1 << 3;
const ATTR_TRANSACTIONAL: i16 = 1 << 4;
const ATTR_CONTROL: i16 = 1 << 5;

/// One checked batch of a Produce request.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Batch<'a> {
    /// The whole batch, header included.
    pub(crate) bytes: &'a [u8],
    pub(crate) attributes: i16,
    pub(crate) base_timestamp: i64,
    pub(crate) producer_id: i64,
    pub(crate) producer_epoch: i16,
    pub(crate) base_sequence: i32,
    pub(crate) record_count: i32,
}

impl Batch<'_> {
    pub(crate) fn codec(&self) -> Result<Codec, BatchError> {
        Codec::from_attributes(self.attributes).map_err(BatchError::Decompress)
    }
    pub(crate) fn is_idempotent(&self) -> bool {
        self.producer_id >= 0
    }
}

/// Why a batch was refused; `code` maps it to the Kafka error a client understands.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub(crate) enum BatchError {
    #[error("record batch at byte {at}: {reason}")]
    Corrupt { at: usize, reason: &'static str },
    #[error(
        "record batch at byte {at} has magic {magic}: only RecordBatch v2 (magic 2) is accepted"
    )]
    Magic { at: usize, magic: i8 },
    #[error(
        "record batch at byte {at}: {what} batches are not supported (kappa has no transactions)"
    )]
    Unsupported { at: usize, what: &'static str },
    #[error("record {index} of the batch: {reason}")]
    Record { index: usize, reason: &'static str },
    #[error(transparent)]
    Decompress(DecompressError),
}

impl BatchError {
    pub(crate) fn code(&self) -> i16 {
        match self {
            BatchError::Corrupt { .. } => code::CORRUPT_MESSAGE,
            BatchError::Magic { .. } | BatchError::Unsupported { .. } => {
                code::UNSUPPORTED_FOR_MESSAGE_FORMAT
            }
            BatchError::Record { .. } => code::CORRUPT_MESSAGE,
            BatchError::Decompress(DecompressError::TooLarge { .. }) => code::MESSAGE_TOO_LARGE,
            BatchError::Decompress(_) => code::CORRUPT_MESSAGE,
        }
    }
}

fn be_i16(b: &[u8], at: usize) -> i16 {
    i16::from_be_bytes([b[at], b[at + 1]])
}
fn be_i32(b: &[u8], at: usize) -> i32 {
    i32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn be_i64(b: &[u8], at: usize) -> i64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[at..at + 8]);
    i64::from_be_bytes(v)
}

/// Splits a partition's bytes into checked batches (CRC, lengths, magic, attributes).
pub(crate) fn split(bytes: &[u8]) -> Result<Vec<Batch<'_>>, BatchError> {
    let mut batches = Vec::new();
    let mut at = 0;
    if bytes.is_empty() {
        return Err(BatchError::Corrupt { at, reason: "no record batch" });
    }
    while at < bytes.len() {
        let rest = &bytes[at..];
        if rest.len() < 17 {
            return Err(BatchError::Corrupt { at, reason: "truncated batch header" });
        }
        let magic = rest[16] as i8;
        if magic != MAGIC_V2 {
            return Err(BatchError::Magic { at, magic });
        }
        if rest.len() < HEADER_SIZE {
            return Err(BatchError::Corrupt { at, reason: "truncated batch header" });
        }
        let batch_length = be_i32(rest, 8);
        let total = usize::try_from(batch_length).ok().map(|l| l + 12);
        let total = match total {
            Some(t) if t >= HEADER_SIZE && t <= rest.len() => t,
            _ => return Err(BatchError::Corrupt { at, reason: "batch length out of bounds" }),
        };
        let batch = &rest[..total];
        let crc = u32::from_be_bytes([batch[17], batch[18], batch[19], batch[20]]);
        if crc32c::crc32c(&batch[21..]) != crc {
            return Err(BatchError::Corrupt { at, reason: "CRC32C mismatch" });
        }
        let attributes = be_i16(batch, 21);
        if attributes & ATTR_CONTROL != 0 {
            return Err(BatchError::Unsupported { at, what: "control" });
        }
        if attributes & ATTR_TRANSACTIONAL != 0 {
            return Err(BatchError::Unsupported { at, what: "transactional" });
        }
        let last_offset_delta = be_i32(batch, 23);
        let record_count = be_i32(batch, 57);
        if record_count <= 0 {
            return Err(BatchError::Corrupt { at, reason: "a batch holds no record" });
        }
        if last_offset_delta != record_count - 1 {
            return Err(BatchError::Corrupt { at, reason: "last offset delta is not count - 1" });
        }
        let parsed = Batch {
            bytes: batch,
            attributes,
            base_timestamp: be_i64(batch, 27),
            producer_id: be_i64(batch, 43),
            producer_epoch: be_i16(batch, 51),
            base_sequence: be_i32(batch, 53),
            record_count,
        };
        parsed.codec()?;
        batches.push(parsed);
        at += total;
    }
    Ok(batches)
}

/// One record's fields, borrowed; its headers are `headers[start..end]` of the shared list.
pub(crate) type Span<'a> = (i64, Option<&'a [u8]>, &'a [u8], usize, usize);

/// The records section of `batch`: its own bytes, or `scratch` holding them decompressed.
pub(crate) fn section<'a>(
    batch: &Batch<'a>,
    scratch: &'a mut Vec<u8>,
    limit: usize,
) -> Result<&'a [u8], BatchError> {
    let body = &batch.bytes[HEADER_SIZE..];
    match batch.codec()? {
        Codec::None => Ok(body),
        codec => {
            compression::decompress(codec, body, limit, scratch).map_err(BatchError::Decompress)?;
            Ok(scratch.as_slice())
        }
    }
}

/// Reads a zigzag varint (at most 10 bytes), advancing `pos`. `None` when truncated or past 64
/// bits: a tenth byte above 1 would decode to the value of another byte string of the same
/// length, and a batch stored as it arrived (`Incoming`) must hold the bytes encoding writes.
fn varint(bytes: &[u8], pos: &mut usize) -> Option<i64> {
    let mut result: u64 = 0;
    for shift in (0..70).step_by(7) {
        let b = *bytes.get(*pos)?;
        *pos += 1;
        if shift == 63 && b > 1 {
            return None;
        }
        result |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some(((result >> 1) as i64) ^ -((result & 1) as i64));
        }
    }
    None
}

/// A length field: -1 is null, other negatives are damage; the bytes must be there.
fn sized<'a>(body: &'a [u8], pos: &mut usize) -> Result<Option<&'a [u8]>, &'static str> {
    let len = varint(body, pos).ok_or("truncated length")?;
    if len == -1 {
        return Ok(None);
    }
    let len = usize::try_from(len).map_err(|_| "negative length")?;
    let bytes = body.get(*pos..*pos + len).ok_or("length past the record")?;
    *pos += len;
    Ok(Some(bytes))
}

/// Parses the records of `section` (as `batch` says: count, timestamps) into `spans` and
/// `headers`. `now_ms` stamps records of log-append-time batches and records without a time.
///
/// Returns whether the records may be stored as they are (`Incoming`): record attributes 0 and no
/// null value, the two things the stored form writes differently in the same number of bytes.
/// The log checks the rest itself: the batch header (attributes 0, a first timestamp delta of 0,
/// the maximum timestamp, ...) and the batch length, which a varint longer than its shortest
/// form changes. (A ten-byte varint with bits past 64, the same length as the shortest form of
/// the value it decodes to, is refused here: `varint`.)
pub(crate) fn read_records<'a>(
    batch: &Batch<'_>,
    section: &'a [u8],
    now_ms: i64,
    spans: &mut Vec<Span<'a>>,
    headers: &mut Vec<Header<'a>>,
) -> Result<bool, BatchError> {
    let mut stored_form = true;
    spans.clear();
    headers.clear();
    let count = batch.record_count as usize;
    // Every record takes at least 7 bytes: never reserve from the count alone.
    spans.reserve(count.min(section.len() / 7 + 1));
    let log_append_time = batch.attributes & ATTR_LOG_APPEND_TIME != 0 || batch.base_timestamp < 0;
    let mut pos = 0;
    for index in 0..count {
        let fail = |reason| BatchError::Record { index, reason };
        let len = varint(section, &mut pos).ok_or(fail("truncated record length"))?;
        let len = usize::try_from(len).map_err(|_| fail("negative record length"))?;
        let body = section.get(pos..pos + len).ok_or(fail("record length past the batch"))?;
        pos += len;
        let mut p = 1; // record attributes: unused in v2 (the stored form writes 0)
        if body.is_empty() {
            return Err(fail("empty record"));
        }
        stored_form &= body[0] == 0;
        let timestamp_delta =
            varint(body, &mut p).ok_or(fail("truncated or overflowing timestamp"))?;
        let offset_delta = varint(body, &mut p).ok_or(fail("truncated offset delta"))?;
        if offset_delta != index as i64 {
            return Err(fail("offset deltas are not 0, 1, 2, ..."));
        }
        let key = sized(body, &mut p).map_err(fail)?;
        let value = sized(body, &mut p).map_err(fail)?;
        // A null value is stored as an empty one (see the module doc): not the request's bytes.
        stored_form &= value.is_some();
        let value = value.unwrap_or(&[]);
        let header_count = varint(body, &mut p).ok_or(fail("truncated header count"))?;
        let header_count = usize::try_from(header_count).map_err(|_| fail("negative count"))?;
        if header_count > body.len() {
            return Err(fail("header count past the record"));
        }
        let start = headers.len();
        for _ in 0..header_count {
            let key = sized(body, &mut p).map_err(fail)?.ok_or(fail("null header key"))?;
            let value = sized(body, &mut p).map_err(fail)?;
            headers.push(Header { key, value });
        }
        if p != body.len() {
            return Err(fail("bytes left after the record's fields"));
        }
        let timestamp = if log_append_time {
            now_ms
        } else {
            batch.base_timestamp.wrapping_add(timestamp_delta)
        };
        spans.push((timestamp, key, value, start, headers.len()));
    }
    if pos != section.len() {
        return Err(BatchError::Corrupt { at: 0, reason: "bytes left after the last record" });
    }
    Ok(stored_form)
}

/// A request batch's records for the log: the parsed records, and the batch itself when the log
/// may store it as it is (uncompressed and in the stored form, `read_records`).
pub(crate) struct Incoming<'a> {
    pub(crate) records: &'a [kappa_storage::Record<'a>],
    pub(crate) encoded: Option<&'a [u8]>,
}

impl kappa_storage::Records for Incoming<'_> {
    fn count(&self) -> usize {
        self.records.len()
    }
    #[inline]
    fn record(&self, index: usize) -> (i64, Option<&[u8]>, &[u8], usize) {
        self.records.record(index)
    }
    #[inline]
    fn header(&self, index: usize, header: usize) -> Header<'_> {
        self.records.header(index, header)
    }
    fn encoded(&self) -> Option<&[u8]> {
        self.encoded
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kappa_storage::kafka::encode_batch;
    use kappa_storage::{ProducerInfo, Record};

    fn batch_bytes(records: &[Record<'_>], producer: ProducerInfo) -> Vec<u8> {
        let mut out = Vec::new();
        let mut directory = Vec::new();
        encode_batch(0, records, producer, &mut out, &mut directory);
        out
    }

    #[test]
    fn reads_back_what_the_storage_encoder_writes() {
        let headers = [Header { key: b"h", value: Some(b"v") }, Header { key: b"n", value: None }];
        let records = [
            Record { timestamp: 1000, key: Some(b"k1"), value: b"v1", headers: &headers },
            Record { timestamp: 1005, key: None, value: b"", headers: &[] },
        ];
        let producer = ProducerInfo { producer_id: 7, producer_epoch: 1, base_sequence: 40 };
        let mut bytes = batch_bytes(&records, producer);
        bytes.extend(batch_bytes(&records[..1], ProducerInfo::default()));
        let batches = split(&bytes).expect("valid");
        assert_eq!(batches.len(), 2);
        assert_eq!(
            (batches[0].producer_id, batches[0].producer_epoch, batches[0].base_sequence),
            (7, 1, 40)
        );
        let mut scratch = Vec::new();
        let section = section(&batches[0], &mut scratch, 1 << 20).expect("section");
        let (mut spans, mut hs) = (Vec::new(), Vec::new());
        read_records(&batches[0], section, 0, &mut spans, &mut hs).expect("records");
        assert_eq!(spans.len(), 2);
        assert_eq!(spans[0], (1000, Some(&b"k1"[..]), &b"v1"[..], 0, 2));
        assert_eq!(spans[1], (1005, None, &b""[..], 2, 2));
        assert_eq!(hs, headers);
    }

    /// The ways a producer's valid batch can differ from the stored form.
    #[derive(Default, Clone, Copy, Debug)]
    struct Knobs {
        record_attributes: u8,
        null_value: bool,
        /// Every varint one byte longer than its shortest form (still valid).
        padded_varints: bool,
        first_delta: i64,
        leader_epoch: i32,
        log_append_time: bool,
        /// The third record's timestamp delta far in the past: a ten-byte varint.
        huge_delta: bool,
        /// ... and its tenth byte 0x7f instead of 0x01: bits past 64 that decode to the same value.
        overflowing_varint: bool,
    }

    /// A batch of three records written by hand, as a producer might.
    fn hand_batch(knobs: Knobs) -> Vec<u8> {
        let put = |buf: &mut Vec<u8>, value: i64| {
            let mut tmp = [0u8; 10];
            let mut zz = ((value << 1) ^ (value >> 63)) as u64;
            let mut n = 0;
            while zz >= 0x80 {
                tmp[n] = (zz as u8) | 0x80;
                zz >>= 7;
                n += 1;
            }
            tmp[n] = zz as u8;
            if knobs.padded_varints {
                tmp[n] |= 0x80;
                n += 1;
                tmp[n] = 0;
            }
            buf.extend_from_slice(&tmp[..=n]);
        };
        let base_ts = 1_700_000_000_000i64;
        let third = if knobs.huge_delta { -(1i64 << 62) - 7 } else { 7 };
        let deltas = [knobs.first_delta, 40, third];
        let mut records = Vec::new();
        for (i, delta) in deltas.iter().enumerate() {
            let mut body = vec![knobs.record_attributes];
            put(&mut body, *delta);
            if knobs.overflowing_varint && i == 2 {
                *body.last_mut().expect("the tenth byte") |= 0x7e;
            }
            put(&mut body, i as i64);
            let key = format!("key-{i}");
            put(&mut body, key.len() as i64);
            body.extend_from_slice(key.as_bytes());
            let value = vec![i as u8; 300 * i];
            if knobs.null_value && i == 1 {
                put(&mut body, -1);
            } else {
                put(&mut body, value.len() as i64);
                body.extend_from_slice(&value);
            }
            put(&mut body, 1);
            put(&mut body, 1);
            body.extend_from_slice(b"h");
            put(&mut body, -1);
            put(&mut records, body.len() as i64);
            records.extend_from_slice(&body);
        }
        let mut b = Vec::new();
        b.extend_from_slice(&99i64.to_be_bytes());
        b.extend_from_slice(&((HEADER_SIZE - 12 + records.len()) as i32).to_be_bytes());
        b.extend_from_slice(&knobs.leader_epoch.to_be_bytes());
        b.push(2);
        b.extend_from_slice(&[0; 4]);
        let attributes: i16 = if knobs.log_append_time { ATTR_LOG_APPEND_TIME } else { 0 };
        b.extend_from_slice(&attributes.to_be_bytes());
        b.extend_from_slice(&2i32.to_be_bytes());
        b.extend_from_slice(&base_ts.to_be_bytes());
        let max = deltas.iter().max().expect("three");
        b.extend_from_slice(&(base_ts + max).to_be_bytes());
        b.extend_from_slice(&5i64.to_be_bytes());
        b.extend_from_slice(&1i16.to_be_bytes());
        b.extend_from_slice(&30i32.to_be_bytes());
        b.extend_from_slice(&3i32.to_be_bytes());
        b.extend_from_slice(&records);
        let crc = crc32c::crc32c(&b[21..]);
        b[17..21].copy_from_slice(&crc.to_be_bytes());
        b
    }

    #[test]
    fn a_batch_is_stored_as_it_arrived_only_when_that_is_the_stored_form() {
        use kappa_storage::{BatchEncoder, Limits, Record};
        let plain = Knobs { leader_epoch: -1, ..Knobs::default() };
        // (knobs, whether `read_records` offers the batch as it is, whether it is copied).
        let cases = [
            (plain, true, true),
            // Not covered by the CRC, written by the log: still copied.
            (Knobs { leader_epoch: 12, ..plain }, true, true),
            // A ten-byte varint in its shortest form: copied.
            (Knobs { huge_delta: true, ..plain }, true, true),
            (Knobs { record_attributes: 1, ..plain }, false, false),
            (Knobs { null_value: true, ..plain }, false, false),
            // Offered, but refused by the log (the length, the header).
            (Knobs { padded_varints: true, ..plain }, true, false),
            (Knobs { first_delta: 3, ..plain }, true, false),
            (Knobs { log_append_time: true, ..plain }, true, false),
        ];
        let producer =
            kappa_storage::ProducerInfo { producer_id: 5, producer_epoch: 1, base_sequence: 30 };
        for (knobs, offered, copied) in cases {
            let bytes = hand_batch(knobs);
            let batches = split(&bytes).expect("a valid batch");
            let batch = &batches[0];
            let mut scratch = Vec::new();
            let section = section(batch, &mut scratch, 1 << 20).expect("section");
            let (mut spans, mut hs) = (Vec::new(), Vec::new());
            let stored_form =
                read_records(batch, section, 1_800_000_000_000, &mut spans, &mut hs).expect("ok");
            assert_eq!(stored_form, offered, "{knobs:?}");
            let records: Vec<Record<'_>> = spans
                .iter()
                .map(|&(timestamp, key, value, start, end)| Record {
                    timestamp,
                    key,
                    value,
                    headers: &hs[start..end],
                })
                .collect();
            let mut encoder = BatchEncoder::new(Limits::default());
            encoder.encode(1_000, &records, producer).expect("encodes");
            let reference = encoder.frame().to_vec();
            let incoming =
                Incoming { records: &records, encoded: stored_form.then_some(batch.bytes) };
            encoder.encode_records(1_000, &incoming, producer).expect("encodes");
            // Every stored byte is what encoding the parsed records gives.
            assert_eq!(encoder.frame(), &reference[..], "{knobs:?}");
            // And where the batch was copied, its records are the request's bytes.
            let stored = kappa_storage::BatchRef::from_frame(encoder.frame()).expect("valid");
            let same = stored.kafka_bytes()[17..] == bytes[17..];
            assert_eq!(same, copied, "{knobs:?}");
        }
    }

    /// A varint whose tenth byte carries bits past 64 decodes to the same value as the shortest
    /// form in the same number of bytes: the log would copy bytes that differ from what encoding
    /// the records writes (and that `split`'s CRC check cannot catch: the producer computed the
    /// CRC over them). It is refused as damage. Fails when `varint` ignores the bits past 64.
    #[test]
    fn a_varint_past_64_bits_is_refused() {
        let knobs = Knobs {
            leader_epoch: -1,
            huge_delta: true,
            overflowing_varint: true,
            ..Knobs::default()
        };
        let bytes = hand_batch(knobs);
        let batches = split(&bytes).expect("the producer's CRC matches");
        let mut scratch = Vec::new();
        let section = section(&batches[0], &mut scratch, 1 << 20).expect("section");
        let (mut spans, mut hs) = (Vec::new(), Vec::new());
        let read = read_records(&batches[0], section, 0, &mut spans, &mut hs);
        assert_eq!(
            read,
            Err(BatchError::Record { index: 2, reason: "truncated or overflowing timestamp" })
        );
    }

    #[test]
    fn damage_is_named_and_never_panics() {
        let records = [Record::new(5, Some(b"key"), b"value")];
        let good = batch_bytes(&records, ProducerInfo::default());
        let mut crc = good.clone();
        crc[70] ^= 1;
        assert_eq!(split(&crc).expect_err("a bad CRC").code(), code::CORRUPT_MESSAGE);
        let mut magic = good.clone();
        magic[16] = 1;
        assert_eq!(
            split(&magic).expect_err("a bad magic").code(),
            code::UNSUPPORTED_FOR_MESSAGE_FORMAT
        );
        assert!(split(&good[..good.len() - 1]).is_err());
        assert!(split(&[]).is_err());
        // Every truncation and every single-byte change of a valid batch: an error or a valid
        // parse, never a panic (the CRC is recomputed so the record parser sees the damage).
        let mut scratch = Vec::new();
        for cut in 0..good.len() {
            let _ = split(&good[..cut]);
        }
        for at in 21..good.len() {
            for flip in [1u8, 0x80, 0xff] {
                let mut bad = good.clone();
                bad[at] ^= flip;
                let crc = crc32c::crc32c(&bad[21..]);
                bad[17..21].copy_from_slice(&crc.to_be_bytes());
                if let Ok(batches) = split(&bad) {
                    for b in &batches {
                        if let Ok(s) = section(b, &mut scratch, 1 << 16) {
                            let (mut spans, mut hs) = (Vec::new(), Vec::new());
                            let _ = read_records(b, s, 0, &mut spans, &mut hs);
                        }
                    }
                }
            }
        }
    }
}
