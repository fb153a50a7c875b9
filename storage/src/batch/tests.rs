//! Encoding batches into frames, reading them back zero-copy, and decoding the stored Kafka bytes
//! with the `kafka-protocol` crate.

use super::*;
use crate::kafka::Header;

fn records() -> Vec<(i64, Option<Vec<u8>>, Vec<u8>)> {
    vec![
        (1_000, Some(b"user-1".to_vec()), b"{\"page\":\"/\"}".to_vec()),
        (999, None, vec![]),
        (1_500, Some(vec![]), vec![7u8; 300]),
    ]
}

fn encode(base: u64) -> (BatchEncoder, FrameHeader) {
    let owned = records();
    let headers =
        [Header { key: b"trace", value: Some(b"abc") }, Header { key: b"empty", value: None }];
    let mut refs: Vec<Record<'_>> =
        owned.iter().map(|(ts, k, v)| Record::new(*ts, k.as_deref(), v)).collect();
    refs[0].headers = &headers;
    let mut encoder = BatchEncoder::new(Limits::default());
    let header = *encoder.encode(base, &refs, ProducerInfo::default()).expect("encodes");
    (encoder, header)
}

#[test]
fn frame_reads_back_through_the_directory() {
    let (encoder, header) = encode(77);
    assert_eq!(header.record_count, 3);
    assert_eq!(header.first_timestamp, 1_000);
    assert_eq!(header.max_timestamp, 1_500);
    let mut aligned = AlignedVec::<16>::new();
    aligned.extend_from_slice(encoder.frame());
    let batch = BatchRef::from_frame(&aligned).expect("valid");
    let got: Vec<_> =
        batch.records().map(|r| (r.offset(), r.timestamp(), r.key(), r.value().len())).collect();
    assert_eq!(
        got,
        vec![
            (77, 1_000, Some(&b"user-1"[..]), 12),
            (78, 999, None, 0),
            (79, 1_500, Some(&b""[..]), 300)
        ]
    );
    let headers: Vec<_> = batch.record(0).expect("record 0").headers().collect();
    assert_eq!(
        headers,
        vec![Header { key: b"trace", value: Some(b"abc") }, Header { key: b"empty", value: None }]
    );
    assert_eq!(batch.record(1).expect("record 1").headers().count(), 0);
    assert_eq!(batch.records_from(79).map(|r| r.offset()).collect::<Vec<_>>(), vec![79]);
    let payload = &aligned[crate::format::FRAME_HEADER_SIZE..][..header.payload_len as usize];
    BatchRef::check_archive(payload).expect("deep check passes");
}

#[test]
fn kafka_protocol_decodes_the_stored_bytes() {
    let (encoder, _) = encode(5_000);
    let mut aligned = AlignedVec::<16>::new();
    aligned.extend_from_slice(encoder.frame());
    let batch = BatchRef::from_frame(&aligned).expect("valid");
    let mut bytes = batch.kafka_bytes();
    let set =
        kafka_protocol::records::RecordBatchDecoder::decode(&mut bytes).expect("kafka decodes");
    assert_eq!(set.version, 2);
    let decoded: Vec<_> = set
        .records
        .iter()
        .map(|r| {
            (
                r.offset,
                r.timestamp,
                r.key.as_ref().map(|k| k.to_vec()),
                r.value.as_ref().map(|v| v.len()),
            )
        })
        .collect();
    assert_eq!(
        decoded,
        vec![
            (5_000, 1_000, Some(b"user-1".to_vec()), Some(12)),
            (5_001, 999, None, Some(0)),
            (5_002, 1_500, Some(vec![]), Some(300)),
        ]
    );
    assert_eq!(set.records[0].headers.len(), 2);
    assert!(crate::kafka::crc_matches(batch.kafka_bytes()));
}

#[test]
fn bad_input_is_refused_with_typed_errors() {
    let mut encoder = BatchEncoder::new(Limits {
        record_size_bytes_max: 10,
        batch_size_bytes_max: 25,
        batch_record_count_max: 3,
    });
    assert!(matches!(encoder.encode(0, &[], ProducerInfo::default()), Err(Error::EmptyBatch)));
    let big = [0u8; 11];
    let small = [0u8; 10];
    let err = encoder.encode(
        0,
        &[Record::new(0, None, &small), Record::new(0, None, &big)],
        ProducerInfo::default(),
    );
    assert!(matches!(
        err,
        Err(Error::RecordTooLarge { index: 1, size_bytes: 11, size_bytes_max: 10 })
    ));
    let three = [Record::new(0, None, &small); 3];
    assert!(matches!(
        encoder.encode(0, &three, ProducerInfo::default()),
        Err(Error::BatchTooLarge { .. })
    ));
    let four = [Record::new(0, None, &[]); 4];
    assert!(matches!(
        encoder.encode(0, &four, ProducerInfo::default()),
        Err(Error::BatchTooLarge { .. })
    ));
}

#[test]
fn misaligned_payload_is_an_error_not_undefined_behaviour() {
    let (encoder, _) = encode(0);
    let mut aligned = AlignedVec::<16>::new();
    aligned.push(0);
    aligned.extend_from_slice(encoder.frame());
    assert!(BatchRef::from_frame(&aligned[1..]).is_err());
}

#[test]
fn in_place_archive_matches_the_plain_archive_byte_for_byte() {
    let (encoder, header) = encode(9);
    let mut aligned = AlignedVec::<16>::new();
    aligned.extend_from_slice(encoder.frame());
    let batch = BatchRef::from_frame(&aligned).expect("valid");
    let directory: Vec<RecordEntry> = batch
        .archive
        .directory
        .iter()
        .map(|e| rkyv::deserialize::<RecordEntry, rancor::Error>(e).expect("deserializes"))
        .collect();
    let plain = BatchArchive { kafka: batch.kafka_bytes().to_vec(), directory };
    let bytes = rkyv::to_bytes::<rancor::Error>(&plain).expect("serializes");
    let payload = &aligned[crate::format::FRAME_HEADER_SIZE..][..header.payload_len as usize];
    assert_eq!(payload, &bytes[..]);
}
