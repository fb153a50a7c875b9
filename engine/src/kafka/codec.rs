//! Framing, the advertised API versions, error codes, and response encoding.
//!
//! Requests and responses are decoded and encoded with `kafka-protocol`; this module holds what
//! sits around them: the table of API versions we advertise (exactly the ranges real clients were
//! verified against, see `NOTES-kafka.md`), the response header, the size prefix, and the
//! primitives for the one response encoded by hand (Fetch, so stored batches are not copied).

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::{ApiKey, ApiVersionsResponse, ResponseHeader};
use kafka_protocol::protocol::Encodable;

/// (API key, lowest, highest version) advertised in ApiVersions. Produce 0-2 is advertised
/// because librdkafka before 2.11.1 turns compression off unless Produce v0 is listed; those
/// versions (message formats v0/v1) are refused when used.
pub const SUPPORTED_APIS: &[(i16, i16, i16)] = &[
    (0, 0, 12), // Produce
    (1, 4, 12), // Fetch
    (2, 1, 7),  // ListOffsets
    (3, 0, 12), // Metadata
    (8, 2, 8),  // OffsetCommit
    (9, 1, 7),  // OffsetFetch
    (10, 0, 4), // FindCoordinator
    (11, 0, 9), // JoinGroup
    (12, 0, 4), // Heartbeat
    (13, 0, 5), // LeaveGroup
    (14, 0, 5), // SyncGroup
    (15, 0, 5), // DescribeGroups
    (16, 0, 4), // ListGroups
    (18, 0, 4), // ApiVersions
    (19, 2, 7), // CreateTopics
    (20, 1, 6), // DeleteTopics
    (22, 0, 4), // InitProducerId
    (32, 1, 4), // DescribeConfigs
];

/// The advertised range of an API key.
pub(crate) fn supported(api_key: i16) -> Option<(i16, i16)> {
    SUPPORTED_APIS.iter().find(|(k, _, _)| *k == api_key).map(|&(_, min, max)| (min, max))
}

/// Kafka error codes we answer with (`org.apache.kafka.common.protocol.Errors`).
pub(crate) mod code {
    pub const NONE: i16 = 0;
    pub const UNKNOWN_SERVER_ERROR: i16 = -1;
    pub const OFFSET_OUT_OF_RANGE: i16 = 1;
    pub const CORRUPT_MESSAGE: i16 = 2;
    pub const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
    pub const MESSAGE_TOO_LARGE: i16 = 10;
    pub const OFFSET_METADATA_TOO_LARGE: i16 = 12;
    pub const COORDINATOR_NOT_AVAILABLE: i16 = 15;
    pub const INVALID_TOPIC_EXCEPTION: i16 = 17;
    pub const INVALID_REQUIRED_ACKS: i16 = 21;
    pub const ILLEGAL_GENERATION: i16 = 22;
    pub const INCONSISTENT_GROUP_PROTOCOL: i16 = 23;
    pub const INVALID_GROUP_ID: i16 = 24;
    pub const UNKNOWN_MEMBER_ID: i16 = 25;
    pub const INVALID_SESSION_TIMEOUT: i16 = 26;
    pub const REBALANCE_IN_PROGRESS: i16 = 27;
    pub const UNSUPPORTED_VERSION: i16 = 35;
    pub const TOPIC_ALREADY_EXISTS: i16 = 36;
    pub const INVALID_PARTITIONS: i16 = 37;
    pub const INVALID_REPLICATION_FACTOR: i16 = 38;
    pub const INVALID_REPLICA_ASSIGNMENT: i16 = 39;
    pub const INVALID_CONFIG: i16 = 40;
    pub const INVALID_REQUEST: i16 = 42;
    pub const UNSUPPORTED_FOR_MESSAGE_FORMAT: i16 = 43;
    pub const POLICY_VIOLATION: i16 = 44;
    pub const OUT_OF_ORDER_SEQUENCE_NUMBER: i16 = 45;
    pub const INVALID_PRODUCER_EPOCH: i16 = 47;
    pub const KAFKA_STORAGE_ERROR: i16 = 56;
    pub const FETCH_SESSION_ID_NOT_FOUND: i16 = 70;
    pub const INVALID_RECORD: i16 = 87;
}

/// Our only broker: every partition's leader and every group's coordinator.
pub(crate) const NODE_ID: i32 = 0;
/// The leader epoch we report: there is one leader forever.
pub(crate) const LEADER_EPOCH: i32 = 0;

/// A response our own code built in a shape its version cannot carry: a bug, reported to the
/// client as a closed connection and logged.
#[derive(Debug, thiserror::Error)]
#[error("encoding a {api:?} v{version} response: {reason}")]
pub(crate) struct EncodeError {
    pub(crate) api: ApiKey,
    pub(crate) version: i16,
    pub(crate) reason: String,
}

/// Encodes a whole response frame: size prefix, response header, body.
pub(crate) fn encode_response<R: Encodable>(
    api_key: ApiKey,
    version: i16,
    correlation_id: i32,
    body: &R,
) -> Result<Bytes, EncodeError> {
    let fail = |reason: String| EncodeError { api: api_key, version, reason };
    let header = ResponseHeader::default().with_correlation_id(correlation_id);
    let mut buf = BytesMut::with_capacity(64);
    buf.put_i32(0);
    header
        .encode(&mut buf, api_key.response_header_version(version))
        .map_err(|e| fail(e.to_string()))?;
    body.encode(&mut buf, version).map_err(|e| fail(e.to_string()))?;
    let size = i32::try_from(buf.len() - 4).map_err(|e| fail(e.to_string()))?;
    buf[0..4].copy_from_slice(&size.to_be_bytes());
    Ok(buf.freeze())
}

/// The ApiVersions answer: our table, or `UNSUPPORTED_VERSION` with the table (which the caller
/// encodes in the v0 layout, as the protocol requires for a version it does not know).
pub(crate) fn api_versions(error_code: i16) -> ApiVersionsResponse {
    let api_keys = SUPPORTED_APIS
        .iter()
        .map(|&(key, min, max)| {
            ApiVersion::default().with_api_key(key).with_min_version(min).with_max_version(max)
        })
        .collect();
    ApiVersionsResponse::default()
        .with_error_code(error_code)
        .with_api_keys(api_keys)
        .with_finalized_features_epoch(-1)
}

/// Writes protocol primitives in either the classic or the flexible (compact) layout.
pub(crate) struct Wire<'a> {
    pub(crate) buf: &'a mut BytesMut,
    pub(crate) flexible: bool,
}

impl Wire<'_> {
    pub(crate) fn i16(&mut self, v: i16) {
        self.buf.put_i16(v);
    }
    pub(crate) fn i32(&mut self, v: i32) {
        self.buf.put_i32(v);
    }
    pub(crate) fn i64(&mut self, v: i64) {
        self.buf.put_i64(v);
    }
    pub(crate) fn uvarint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.buf.put_u8((v as u8) | 0x80);
            v >>= 7;
        }
        self.buf.put_u8(v as u8);
    }
    /// An array (or string, bytes) length; `None` is null.
    pub(crate) fn len(&mut self, len: Option<usize>, classic_width: Width) {
        if self.flexible {
            self.uvarint(len.map_or(0, |l| l as u64 + 1));
        } else {
            let v = len.map_or(-1, |l| l as i64);
            match classic_width {
                Width::I16 => self.i16(v as i16),
                Width::I32 => self.i32(v as i32),
            }
        }
    }
    pub(crate) fn string(&mut self, s: &str) {
        self.len(Some(s.len()), Width::I16);
        self.buf.put_slice(s.as_bytes());
    }
    /// An empty tagged-field section (flexible versions only).
    pub(crate) fn tags(&mut self) {
        if self.flexible {
            self.uvarint(0);
        }
    }
}

/// How a length is written in classic (non-flexible) versions.
#[derive(Clone, Copy)]
pub(crate) enum Width {
    I16,
    I32,
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::protocol::Decodable;

    #[test]
    fn advertised_ranges_are_ones_the_codec_supports() {
        for &(key, min, max) in SUPPORTED_APIS {
            let api = ApiKey::try_from(key).expect("a known API key");
            let valid = api.valid_versions();
            // Produce 0-2 is the deliberate exception: advertised for old librdkafka, refused.
            let min = if api == ApiKey::Produce { 3 } else { min };
            assert!(valid.min <= min && max <= valid.max, "{api:?} {min}-{max} vs {valid:?}");
        }
    }

    #[test]
    fn api_versions_round_trips_in_every_version() {
        for version in 0..=4 {
            let frame = encode_response(ApiKey::ApiVersions, version, 7, &api_versions(0))
                .expect("encodes");
            let mut body = frame.slice(4..);
            let header = ResponseHeader::decode(&mut body, 0).expect("header v0");
            assert_eq!(header.correlation_id, 7);
            let decoded = ApiVersionsResponse::decode(&mut body, version).expect("decodes");
            assert_eq!(decoded.api_keys.len(), SUPPORTED_APIS.len());
            assert!(body.is_empty());
        }
    }
}
