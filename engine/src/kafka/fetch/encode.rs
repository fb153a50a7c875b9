//! The Fetch response, encoded by hand around the stored batches.
//!
//! `kafka-protocol` would copy every partition's records into its output buffer; here the
//! response is a list of frames in which each batch copied out of the log is a frame of its own,
//! written to the socket as it is. Versions 4-12 (12 is the first flexible one: compact lengths
//! and tagged-field sections). A test decodes the result with `kafka-protocol` in every version.

use bytes::{Bytes, BytesMut};

use crate::kafka::codec::{Width, Wire};

/// One partition of the response.
pub(crate) struct PartitionOut {
    pub(crate) partition: i32,
    pub(crate) error_code: i16,
    pub(crate) high_watermark: i64,
    pub(crate) last_stable_offset: i64,
    pub(crate) log_start_offset: i64,
    /// Whole stored batches, in offset order.
    pub(crate) batches: Vec<Bytes>,
}

/// One topic of the response.
pub(crate) struct TopicOut {
    pub(crate) name: String,
    pub(crate) partitions: Vec<PartitionOut>,
}

enum Segment {
    Head(BytesMut),
    Data(Bytes),
}

/// Encodes a whole response frame (size prefix included) as a list of buffers to write in
/// order. `error_code` and `session_id` are the top-level fields (v7+).
pub(crate) fn encode(
    version: i16,
    correlation_id: i32,
    error_code: i16,
    session_id: i32,
    topics: Vec<TopicOut>,
) -> Vec<Bytes> {
    let flexible = version >= 12;
    let mut segments = Vec::new();
    let mut head = BytesMut::with_capacity(256);
    {
        let mut w = Wire { buf: &mut head, flexible };
        w.i32(0); // size, patched below
        w.i32(correlation_id);
        w.tags(); // response header v1 (flexible versions)
        w.i32(0); // throttle_time_ms
        if version >= 7 {
            w.i16(error_code);
            w.i32(session_id);
        }
        w.len(Some(topics.len()), Width::I32);
    }
    for topic in topics {
        let mut w = Wire { buf: &mut head, flexible };
        w.string(&topic.name);
        w.len(Some(topic.partitions.len()), Width::I32);
        for p in topic.partitions {
            let mut w = Wire { buf: &mut head, flexible };
            w.i32(p.partition);
            w.i16(p.error_code);
            w.i64(p.high_watermark);
            w.i64(p.last_stable_offset);
            if version >= 5 {
                w.i64(p.log_start_offset);
            }
            w.len(Some(0), Width::I32); // aborted transactions: none
            if version >= 11 {
                w.i32(-1); // preferred read replica: none
            }
            let records: usize = p.batches.iter().map(Bytes::len).sum();
            w.len(Some(records), Width::I32);
            for batch in p.batches {
                segments.push(Segment::Head(head.split()));
                segments.push(Segment::Data(batch));
            }
            Wire { buf: &mut head, flexible }.tags(); // partition
        }
        Wire { buf: &mut head, flexible }.tags(); // topic
    }
    Wire { buf: &mut head, flexible }.tags(); // response
    segments.push(Segment::Head(head));
    let total: usize = segments
        .iter()
        .map(|s| match s {
            Segment::Head(b) => b.len(),
            Segment::Data(b) => b.len(),
        })
        .sum();
    let size = (total - 4) as i32;
    let mut frames = Vec::with_capacity(segments.len());
    for (i, segment) in segments.into_iter().enumerate() {
        match segment {
            Segment::Head(mut b) => {
                if i == 0 {
                    b[0..4].copy_from_slice(&size.to_be_bytes());
                }
                if !b.is_empty() {
                    frames.push(b.freeze());
                }
            }
            Segment::Data(b) => frames.push(b),
        }
    }
    frames
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::{FetchResponse, ResponseHeader};
    use kafka_protocol::protocol::Decodable;

    fn sample() -> Vec<TopicOut> {
        vec![
            TopicOut {
                name: "events".into(),
                partitions: vec![
                    PartitionOut {
                        partition: 0,
                        error_code: 0,
                        high_watermark: 42,
                        last_stable_offset: 42,
                        log_start_offset: 3,
                        batches: vec![Bytes::from_static(b"batch-one"), Bytes::from_static(b"two")],
                    },
                    PartitionOut {
                        partition: 1,
                        error_code: 1,
                        high_watermark: 7,
                        last_stable_offset: 7,
                        log_start_offset: 0,
                        batches: Vec::new(),
                    },
                ],
            },
            TopicOut { name: "other".into(), partitions: Vec::new() },
        ]
    }

    #[test]
    fn kafka_protocol_decodes_every_version() {
        for version in 4..=12i16 {
            let frames = encode(version, 99, 0, 0, sample());
            let whole: Vec<u8> = frames.iter().flat_map(|f| f.iter().copied()).collect();
            let size = i32::from_be_bytes([whole[0], whole[1], whole[2], whole[3]]) as usize;
            assert_eq!(size, whole.len() - 4, "v{version}");
            let mut buf = Bytes::from(whole).slice(4..);
            let header_version = if version >= 12 { 1 } else { 0 };
            let header = ResponseHeader::decode(&mut buf, header_version).expect("header");
            assert_eq!(header.correlation_id, 99);
            let response = FetchResponse::decode(&mut buf, version).expect("decodes");
            assert!(buf.is_empty(), "v{version}: {} bytes left", buf.len());
            assert_eq!(response.responses.len(), 2);
            let p0 = &response.responses[0].partitions[0];
            assert_eq!(response.responses[0].topic.0.as_str(), "events");
            assert_eq!((p0.high_watermark, p0.last_stable_offset), (42, 42));
            assert_eq!(p0.log_start_offset, if version >= 5 { 3 } else { -1 });
            assert_eq!(p0.records.as_deref(), Some(&b"batch-onetwo"[..]));
            let p1 = &response.responses[0].partitions[1];
            assert_eq!(p1.error_code, 1);
            assert_eq!(p1.records.as_deref(), Some(&b""[..]));
            if version >= 11 {
                assert_eq!(p0.preferred_read_replica.0, -1);
            }
        }
    }

    #[test]
    fn batches_are_frames_of_their_own() {
        let batch = Bytes::from(vec![7u8; 4096]);
        let frames = encode(
            12,
            1,
            0,
            0,
            vec![TopicOut {
                name: "t".into(),
                partitions: vec![PartitionOut {
                    partition: 0,
                    error_code: 0,
                    high_watermark: 1,
                    last_stable_offset: 1,
                    log_start_offset: 0,
                    batches: vec![batch.clone()],
                }],
            }],
        );
        assert!(frames.iter().any(|f| f.as_ptr() == batch.as_ptr()), "the batch was copied");
    }
}
