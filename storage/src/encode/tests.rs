//! The single-pass encoder against independent references: rkyv's own serialization of the same
//! archive, the simple Kafka encoder (`kafka::encode_batch`), a CRC32C computed over the whole
//! batch at once, the frame parser's checksum, and the same frame written into buffers of every
//! awkward size (so frames span buffers and patches land in earlier ones).

use rkyv::rancor;
use rkyv::util::AlignedVec;

use super::*;
use crate::batch::{BatchArchive, BatchRef};
use crate::kafka::{Header, Record};
use crate::{BatchEncoder, Limits};

/// Records with every shape the layout has: null and empty keys, empty values, headers with and
/// without values, and sizes that move the directory's padding through every remainder.
fn shapes(value_len: usize) -> (Vec<Vec<u8>>, Vec<Option<Vec<u8>>>) {
    let values = (0..9).map(|i| vec![(i * 7) as u8; value_len + i * 3]).collect();
    let keys = (0..9)
        .map(|i| match i % 3 {
            0 => None,
            1 => Some(vec![]),
            _ => Some(format!("key-{i}").into_bytes()),
        })
        .collect();
    (values, keys)
}

const HEADERS: [Header<'static>; 2] =
    [Header { key: b"trace", value: Some(b"abc") }, Header { key: b"empty", value: None }];

fn records<'a>(values: &'a [Vec<u8>], keys: &'a [Option<Vec<u8>>]) -> Vec<Record<'a>> {
    values
        .iter()
        .zip(keys)
        .enumerate()
        .map(|(i, (v, k))| {
            // Timestamps out of order (max is not the last), some far from the first.
            let ts = 1_700_000_000_000 + [0i64, -5, 900_000, 3, 1 << 40, 7, -1, 2, 9][i];
            let mut r = Record::new(ts, k.as_deref(), v);
            if i % 4 == 1 {
                r.headers = &HEADERS;
            }
            r
        })
        .collect()
}

fn producer() -> ProducerInfo {
    ProducerInfo { producer_id: 42, producer_epoch: 3, base_sequence: 17 }
}

/// The frame from `BatchEncoder` (one buffer sized to the frame).
fn encode_one(base: u64, records: &[Record<'_>]) -> (FrameHeader, AlignedVec<16>) {
    let mut encoder = BatchEncoder::new(Limits::default());
    encoder.set_synced_before(4096);
    let header = *encoder.encode(base, records, producer()).expect("encodes");
    let mut frame = AlignedVec::<16>::new();
    frame.extend_from_slice(encoder.frame());
    (header, frame)
}

#[test]
fn the_payload_is_rkyvs_serialization_and_the_kafka_bytes_the_simple_encoders() {
    for value_len in [0usize, 1, 2, 3, 5, 100, 1021, 1024] {
        let (values, keys) = shapes(value_len);
        let records = records(&values, &keys);
        for count in 1..=records.len() {
            let records = &records[..count];
            let (header, frame) = encode_one(1_234, records);
            let parsed = format::parse_frame(&frame).expect("the frame parses, checksum matches");
            assert_eq!(parsed.0, header);
            assert_eq!(header.synced_before, 4096);
            assert_eq!(header.first_timestamp, records[0].timestamp);
            assert_eq!(
                header.max_timestamp,
                records.iter().map(|r| r.timestamp).max().expect("records")
            );

            // Reference: the simple encoder (a Vec, patched afterwards) and rkyv itself.
            let mut kafka_ref = Vec::new();
            let mut directory = Vec::new();
            kafka::encode_batch(1_234, records, producer(), &mut kafka_ref, &mut directory);
            let archive = BatchArchive { kafka: kafka_ref.clone(), directory };
            let rkyv_ref = rkyv::to_bytes::<rancor::Error>(&archive).expect("rkyv");
            assert_eq!(parsed.1, &rkyv_ref[..], "payload of {count} records of {value_len} B");
            // The frame's padding is zeros.
            assert!(frame[FRAME_HEADER_SIZE + parsed.1.len()..].iter().all(|b| *b == 0));
            let batch = BatchRef::from_frame(&frame).expect("valid");
            assert_eq!(batch.kafka_bytes(), &kafka_ref[..]);
            BatchRef::check_archive(parsed.1).expect("bytecheck passes");
        }
    }
}

#[test]
fn the_crc_is_crc32c_of_the_whole_batch() {
    // Large enough for several CRC chunks, with a record straddling each chunk boundary.
    let values: Vec<Vec<u8>> =
        (0..300).map(|i| (0..1000 + i % 37).map(|j| (i * 13 + j) as u8).collect()).collect();
    let records: Vec<Record<'_>> =
        values.iter().enumerate().map(|(i, v)| Record::new(i as i64, Some(b"k"), v)).collect();
    let (_, frame) = encode_one(9, &records);
    let batch = BatchRef::from_frame(&frame).expect("valid");
    let kafka = batch.kafka_bytes();
    assert!(kafka.len() > 4 * CRC_CHUNK);
    let stored = u32::from_be_bytes(kafka[17..21].try_into().expect("4 bytes"));
    assert_eq!(stored, crc32c::crc32c(&kafka[CRC_START..]), "CRC32C over bytes 21..");
    let mut bytes = kafka;
    let set = kafka_protocol::records::RecordBatchDecoder::decode(&mut bytes).expect("decodes");
    assert_eq!(set.records.len(), 300);
    assert_eq!(set.records[299].value.as_deref(), Some(&values[299][..]));
    assert_eq!(set.records[5].offset, 14);
}

/// A chain of fixed-size buffers with some bytes before the frame, like the log's write buffers.
struct Chain {
    size: usize,
    full: Vec<Vec<u8>>,
    current: Vec<u8>,
    len: usize,
    frame_start: usize,
    first_full: usize,
}

impl Out for Chain {
    fn current(&mut self, _need: usize) -> (&mut [u8], &mut usize) {
        (&mut self.current, &mut self.len)
    }
    fn next(&mut self) {
        assert_eq!(self.len, self.size, "only full buffers move on");
        let full = std::mem::replace(&mut self.current, vec![0xEE; self.size]);
        self.full.push(full);
        self.len = 0;
    }
    fn frame_parts(&mut self, visit: &mut dyn FnMut(&mut [u8])) {
        let mut from = self.frame_start;
        for buf in &mut self.full[self.first_full..] {
            visit(&mut buf[from..]);
            from = 0;
        }
        visit(&mut self.current[from..self.len]);
    }
}

#[test]
fn a_frame_split_over_buffers_of_any_size_is_the_same_frame() {
    let values: Vec<Vec<u8>> =
        (0..80).map(|i| (0..700 + i * 11).map(|j| (i + j) as u8).collect()).collect();
    let keys: Vec<Option<Vec<u8>>> = (0..80).map(|i| Some(vec![i as u8; i % 5])).collect();
    let mut records: Vec<Record<'_>> = values
        .iter()
        .zip(&keys)
        .enumerate()
        .map(|(i, (v, k))| Record::new(i as i64 * 3, k.as_deref(), v))
        .collect();
    records[3].headers = &HEADERS;
    let (_, reference) = encode_one(500, &records);
    let plan = kafka::plan_batch(&records[..], &Limits::default()).expect("plan");
    // Buffer sizes below a header, around a record, around a CRC chunk; a prefix moves the frame
    // start so its header and the Kafka CRC land across buffer boundaries.
    for size in [16usize, 48, 80, 100, 1024, 4096, 24 * 1024 + 16, 64 * 1024, 1 << 20] {
        for prefix in [0usize, 16, 32, 48, 64, 96] {
            if prefix >= size {
                continue;
            }
            let mut chain = Chain {
                size,
                full: Vec::new(),
                current: vec![0xEE; size],
                len: prefix,
                frame_start: prefix,
                first_full: 0,
            };
            let mut scratch = Scratch::default();
            let header = encode_frame(
                &mut chain,
                &mut scratch,
                &records[..],
                &plan,
                500,
                producer(),
                4096,
                None,
            );
            let mut bytes: Vec<u8> = chain.full.concat();
            bytes.extend_from_slice(&chain.current[..chain.len]);
            assert_eq!(&bytes[prefix..], &reference[..], "buffers of {size}, prefix {prefix}");
            assert_eq!(u64::from(header.frame_len), reference.len() as u64);
        }
    }
}

#[test]
fn the_layout_predicts_the_frame() {
    for value_len in [0usize, 1, 7, 1024] {
        let (values, keys) = shapes(value_len);
        let records = records(&values, &keys);
        let plan = kafka::plan_batch(&records[..], &Limits::default()).expect("plan");
        let (header, frame) = encode_one(0, &records);
        let layout = FrameLayout::of(&plan);
        assert_eq!(layout.frame_len, frame.len());
        assert_eq!(layout.payload_len, header.payload_len as usize);
        assert_eq!(plan.record_bytes, records.iter().map(|r| r.size_bytes() as u64).sum::<u64>());
    }
}

/// Records that say they are already encoded (`Records::encoded`) as `bytes`.
struct Encoded<'a> {
    records: &'a [Record<'a>],
    bytes: Vec<u8>,
}

impl Records for Encoded<'_> {
    fn count(&self) -> usize {
        self.records.len()
    }
    fn record(&self, index: usize) -> (i64, Option<&[u8]>, &[u8], usize) {
        self.records.record(index)
    }
    fn header(&self, index: usize, header: usize) -> Header<'_> {
        self.records.header(index, header)
    }
    fn encoded(&self) -> Option<&[u8]> {
        Some(&self.bytes)
    }
}

fn encode_any<R: Records + ?Sized>(base: u64, records: &R) -> AlignedVec<16> {
    let mut encoder = BatchEncoder::new(Limits::default());
    encoder.set_synced_before(4096);
    encoder.encode_records(base, records, producer()).expect("encodes");
    let mut frame = AlignedVec::<16>::new();
    frame.extend_from_slice(encoder.frame());
    frame
}

#[test]
fn a_batch_copied_as_it_is_is_the_frame_encoding_gives() {
    for value_len in [0usize, 1, 3, 1021, 1024] {
        let (values, keys) = shapes(value_len);
        let records = records(&values, &keys);
        for count in 1..=records.len() {
            let records = &records[..count];
            let (_, reference) = encode_one(77, records);
            // The batch as a producer sent it: another base offset and a leader epoch, which the
            // CRC does not cover and the stored frame does not keep.
            let mut bytes = Vec::new();
            kafka::encode_batch(5, records, producer(), &mut bytes, &mut Vec::new());
            bytes[12..16].copy_from_slice(&7i32.to_be_bytes());
            let frame = encode_any(77, &Encoded { records, bytes });
            assert_eq!(&frame[..], &reference[..], "{count} records of {value_len} B");
        }
    }
}

#[test]
fn a_batch_is_copied_only_when_its_header_is_the_one_encoding_writes() {
    let (values, keys) = shapes(100);
    let records = records(&values, &keys);
    let (_, reference) = encode_one(3, &records);
    let mut good = Vec::new();
    kafka::encode_batch(3, &records, producer(), &mut good, &mut Vec::new());
    // Copied as it is: a byte changed in a record value (CRC fixed up) shows in the frame.
    let mut marked = good.clone();
    let at = good.len() - 20;
    marked[at] ^= 0xff;
    let crc = crc32c::crc32c(&marked[CRC_START..]);
    marked[17..21].copy_from_slice(&crc.to_be_bytes());
    let frame = encode_any(3, &Encoded { records: &records, bytes: marked });
    assert_ne!(&frame[..], &reference[..], "the given bytes were copied");
    let kafka = BatchRef::from_frame(&frame).expect("valid frame").kafka_bytes().to_vec();
    assert_eq!(kafka[at], good[at] ^ 0xff);
    // Any header field from the attributes on that differs from what encoding writes (here
    // each byte of 21..61), or another length: the records are encoded instead.
    for pos in CRC_START..BATCH_HEADER_SIZE {
        let mut bad = good.clone();
        bad[pos] ^= 0x01;
        let frame = encode_any(3, &Encoded { records: &records, bytes: bad });
        assert_eq!(&frame[..], &reference[..], "header byte {pos} changed");
    }
    let mut longer = good.clone();
    longer.push(0);
    let frame = encode_any(3, &Encoded { records: &records, bytes: longer });
    assert_eq!(&frame[..], &reference[..], "a longer batch");
}
